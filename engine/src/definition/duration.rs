//! Durations as support ops write them: `250ms`, `30s`, `5m`, `4h`, `2d`, `1h30m`.

use std::fmt;

/// A length of time in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    ms: u64,
}

/// Longest duration accepted anywhere (about ten years), so arithmetic never overflows.
pub const MAX_MS: u64 = 10 * 366 * 24 * 3_600_000;

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration { ms }
    }

    pub fn as_millis(self) -> u64 {
        self.ms
    }

    /// Parse `1h30m`-style text.
    ///
    /// ```
    /// use casework::definition::Duration;
    /// assert_eq!(Duration::parse("1h30m").unwrap().as_millis(), 5_400_000);
    /// assert!(Duration::parse("soon").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration".into());
        }
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!("`{text}` is not a duration"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{text}` is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let factor = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 7 * 86_400_000,
                "" => return Err(format!("`{text}` needs a unit (ms, s, m, h, d or w)")),
                other => {
                    return Err(format!(
                        "unknown unit `{other}` in `{text}`; use ms, s, m, h, d or w"
                    ))
                }
            };
            total = n
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .filter(|v| *v <= MAX_MS)
                .ok_or_else(|| format!("`{text}` is longer than ten years"))?;
        }
        Ok(Duration { ms: total })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.ms;
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2d", 172_800_000),
            ("1h30m", 5_400_000),
        ] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(d.as_millis(), ms);
            assert_eq!(d.to_string(), text);
        }
        assert!(Duration::parse("5").unwrap_err().contains("needs a unit"));
        assert!(Duration::parse("5 years").is_err());
        assert!(Duration::parse("99999999999d")
            .unwrap_err()
            .contains("ten years"));
    }
}
