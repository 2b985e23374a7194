//! Time as the host sees it. Read time here, never through WASI or `std`, so
//! the engine can pin it for replays and tests.
//!
//! ```
//! use casework_sdk::{clock, testing::FakeHost};
//!
//! let host = FakeHost::new();
//! host.set_now_ms(1_700_000_000_123);
//! assert_eq!(clock::now_ms(), 1_700_000_000_123);
//! assert_eq!(clock::now_secs(), 1_700_000_000);
//! assert_eq!(clock::rfc3339(clock::now_ms()), "2023-11-14T22:13:20.123Z");
//! ```

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> u64 {
    crate::host::now_ms()
}

/// Whole seconds since the Unix epoch, UTC.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC with millisecond
/// precision, e.g. `2024-02-29T23:59:59.999Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses an RFC 3339 timestamp (`2024-02-29T23:59:59Z`,
/// `2024-03-01T01:59:59.5+02:00`) into milliseconds since the epoch, UTC.
/// Returns `None` for anything malformed or before 1970.
///
/// ```
/// use casework_sdk::clock::parse_rfc3339;
///
/// assert_eq!(parse_rfc3339("2024-03-01T01:59:59.5+02:00"), Some(1_709_251_199_500));
/// assert_eq!(parse_rfc3339("2024-02-30T00:00:00Z"), None);
/// ```
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        let digits = text.get(from..to)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Keep millisecond precision; finer digits are dropped, not rounded.
        let ms_digits = &fraction[..digits.min(3)];
        millis = ms_digits.parse::<u64>().ok()? * 10u64.pow(3 - ms_digits.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_secs: i64 = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            if ![h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let days = i64::try_from(days_from_civil(year, month, day)?).ok()?;
    let local_secs =
        days * 86_400 + i64::try_from(hour * 3600 + minute * 60 + second.min(59)).ok()?;
    let utc_secs = u64::try_from(local_secs - offset_secs).ok()?;
    Some(utc_secs * 1000 + millis)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Inverse of [`civil_from_days`] (Howard Hinnant's `days_from_civil`);
/// `None` before 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`), restricted to non-negative days so it stays in u64.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{parse_rfc3339, rfc3339};

    #[test]
    fn parse_is_the_inverse_of_format() {
        for ms in [
            0,
            951_782_400_000,
            1_709_251_199_999,
            4_102_444_800_000,
            1_111_111_109_123,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn parse_handles_offsets_and_rejects_garbage() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-12-31T19:00:00-05:00"),
            Some(1_704_067_200_000)
        );
        assert_eq!(
            parse_rfc3339("2023-12-31T19:00:00.123456-05:00"),
            Some(1_704_067_200_123)
        );
        for bad in [
            "",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "1969-12-31T23:59:59Z",
            "2024-01-01T00:00:00+01:00x",
            "2024-01-01T0a:00:00Z",
            "2024-01-01T00:00:00+0/:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_111_111_109_000), "2005-03-18T01:58:29.000Z");
    }
}
