//! Functions registered into Rhai for support workflows: time, money, text.
//!
//! Instants are RFC 3339 strings in UTC; durations are text like `4h`; money is integer
//! minor units with an ISO 4217 currency code. None of these read the system clock.

use crate::definition::Duration;
use chrono::{DateTime, SecondsFormat, Utc};
use rhai::{Array, Engine, EvalAltResult, Position, INT};

type Res<T> = Result<T, Box<EvalAltResult>>;

fn fail<T>(msg: String) -> Res<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        msg.into(),
        Position::NONE,
    )))
}

fn instant(s: &str) -> Res<DateTime<Utc>> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => Ok(t.with_timezone(&Utc)),
        Err(_) => fail(format!(
            "`{s}` is not a time; write it like 2026-03-06T16:00:00Z"
        )),
    }
}

fn duration_ms(s: &str) -> Res<i64> {
    Duration::parse(s)
        .map(|d| d.as_millis() as i64)
        .or_else(fail)
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Digits after the decimal point for a currency (ISO 4217). Most use 2.
pub fn currency_exponent(code: &str) -> Option<u32> {
    let code = code.to_ascii_uppercase();
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    Some(match code.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    })
}

/// Parse "12.34" in `currency` to minor units (1234), exactly, without floating point.
pub fn to_minor(amount: &str, currency: &str) -> Result<i64, String> {
    let exp = currency_exponent(currency)
        .ok_or_else(|| format!("`{currency}` is not an ISO 4217 currency code"))?;
    let amount = amount.trim();
    let (neg, digits) = match amount.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, amount),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let bad = || format!("`{amount}` is not an amount in {currency}");
    if whole.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > exp as usize {
        return Err(format!(
            "`{amount}` has more than {exp} decimals for {currency}"
        ));
    }
    let scale = 10i64.pow(exp);
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().map_err(|_| bad())? * 10i64.pow(exp - frac.len() as u32)
    };
    let v = whole
        .parse::<i64>()
        .ok()
        .and_then(|w| w.checked_mul(scale))
        .and_then(|w| w.checked_add(frac_val))
        .ok_or_else(bad)?;
    Ok(if neg { -v } else { v })
}

/// Format minor units for people: `format_money(1234, "USD")` → `12.34 USD`.
pub fn format_money(minor: i64, currency: &str) -> Result<String, String> {
    let exp = currency_exponent(currency)
        .ok_or_else(|| format!("`{currency}` is not an ISO 4217 currency code"))?;
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let cur = currency.to_ascii_uppercase();
    if exp == 0 {
        return Ok(format!("{sign}{abs} {cur}"));
    }
    let scale = 10u64.pow(exp);
    Ok(format!(
        "{sign}{}.{:0width$} {cur}",
        abs / scale,
        abs % scale,
        width = exp as usize
    ))
}

/// Convert `minor` units of `from` into minor units of `to` at `rate` (units of `to` per
/// unit of `from`, written as decimal text such as `"0.0067"`), exactly, then rounded away
/// from zero to a whole minor unit: a converted amount is never smaller than the exact
/// one, so an amount just over a threshold stays over it.
///
/// ```
/// use casework::compile::helpers::convert_money;
/// assert_eq!(convert_money(30_000, "JPY", "0.006666667", "USD"), Ok(20_001)); // 200.00001 USD
/// assert_eq!(convert_money(1_000, "EUR", "1.1", "USD"), Ok(1_100));
/// ```
pub fn convert_money(minor: i64, from: &str, rate: &str, to: &str) -> Result<i64, String> {
    let exp = |c: &str| {
        currency_exponent(c).ok_or_else(|| format!("`{c}` is not an ISO 4217 currency code"))
    };
    let (from_exp, to_exp) = (exp(from)?, exp(to)?);
    let bad = || {
        format!("the exchange rate `{rate}` must be a positive decimal written as text, e.g. \"0.0067\"")
    };
    let text = rate.trim();
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole
            .chars()
            .chain(frac.chars())
            .all(|c| c.is_ascii_digit())
        || whole.len() + frac.len() > 18
    {
        return Err(bad());
    }
    let mantissa: i128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
    if mantissa == 0 {
        return Err(bad());
    }
    // minor / 10^from_exp units × mantissa / 10^frac ... × 10^to_exp minor units.
    let numerator = i128::from(minor)
        .checked_mul(mantissa)
        .and_then(|n| n.checked_mul(10i128.pow(to_exp)))
        .ok_or_else(|| "the converted amount is too large".to_string())?;
    let denominator = 10i128.pow(from_exp + frac.len() as u32);
    let (q, r) = (numerator / denominator, numerator % denominator);
    let rounded = if r == 0 { q } else { q + numerator.signum() };
    i64::try_from(rounded).map_err(|_| "the converted amount is too large".to_string())
}

fn glob(text: &str, pattern: &str) -> bool {
    // Iterative wildcard match; `*` any run, `?` one character. Case-insensitive, as ops expect.
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let (mut ti, mut pi, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

pub fn register(engine: &mut Engine) {
    // Time.
    engine.register_fn("add_duration", |t: &str, d: &str| -> Res<String> {
        let t = instant(t)?;
        Ok(text(t + chrono::Duration::milliseconds(duration_ms(d)?)))
    });
    engine.register_fn("sub_duration", |t: &str, d: &str| -> Res<String> {
        let t = instant(t)?;
        Ok(text(t - chrono::Duration::milliseconds(duration_ms(d)?)))
    });
    engine.register_fn("duration_ms", |d: &str| duration_ms(d));
    engine.register_fn("ms_between", |a: &str, b: &str| -> Res<INT> {
        Ok((instant(b)? - instant(a)?).num_milliseconds())
    });
    engine.register_fn("minutes_between", |a: &str, b: &str| -> Res<INT> {
        Ok((instant(b)? - instant(a)?).num_minutes())
    });
    engine.register_fn("hours_between", |a: &str, b: &str| -> Res<INT> {
        Ok((instant(b)? - instant(a)?).num_hours())
    });
    engine.register_fn("days_between", |a: &str, b: &str| -> Res<INT> {
        Ok((instant(b)? - instant(a)?).num_days())
    });
    engine.register_fn("is_before", |a: &str, b: &str| -> Res<bool> {
        Ok(instant(a)? < instant(b)?)
    });
    engine.register_fn("is_time", |a: &str| DateTime::parse_from_rfc3339(a).is_ok());
    // Money (integer minor units).
    engine.register_fn("to_minor", |amount: &str, currency: &str| {
        to_minor(amount, currency).or_else(fail)
    });
    engine.register_fn("format_money", |minor: INT, currency: &str| {
        format_money(minor, currency).or_else(fail)
    });
    engine.register_fn(
        "convert_money",
        |minor: INT, from: &str, rate: &str, to: &str| {
            convert_money(minor, from, rate, to).or_else(fail)
        },
    );
    engine.register_fn(
        "convert_money",
        |_: INT, _: &str, rate: rhai::FLOAT, _: &str| -> Res<INT> {
            fail(format!(
                "the exchange rate {rate} is a number with a fraction, which cannot be exact; write it as text, e.g. \"{rate}\""
            ))
        },
    );
    engine.register_fn("percent_of", |minor: INT, percent: INT| -> Res<INT> {
        // Rounds toward zero so a computed limit never exceeds the policy.
        minor
            .checked_mul(percent)
            .map(|v| v / 100)
            .map_or_else(|| fail("amount too large".into()), Ok)
    });
    // Text.
    engine.register_fn("matches", |text: &str, pattern: &str| glob(text, pattern));
    engine.register_fn("contains_any", |text: &str, words: Array| {
        let lower = text.to_lowercase();
        words.iter().any(|w| {
            w.clone()
                .into_string()
                .is_ok_and(|w| lower.contains(&w.to_lowercase()))
        })
    });
    engine.register_fn("mask", |text: &str, keep: INT| {
        let chars: Vec<char> = text.chars().collect();
        let keep = (keep.max(0) as usize).min(chars.len());
        let hidden = chars.len() - keep;
        "*".repeat(hidden) + chars[hidden..].iter().collect::<String>().as_str()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_is_exact_and_rounds_away_from_zero() {
        assert_eq!(convert_money(20_000, "JPY", "0.01", "USD"), Ok(20_000));
        assert_eq!(convert_money(20_001, "JPY", "0.01", "USD"), Ok(20_001));
        // 200.00001 USD: over the 200.00 threshold, so it stays over it.
        assert_eq!(
            convert_money(30_000, "JPY", "0.006666667", "USD"),
            Ok(20_001)
        );
        assert_eq!(
            convert_money(-30_000, "JPY", "0.006666667", "USD"),
            Ok(-20_001)
        );
        assert_eq!(convert_money(1_000, "KWD", "3.25", "USD"), Ok(325));
        assert_eq!(convert_money(1, "USD", "150", "JPY"), Ok(2), "1.5 yen is 2");
        for bad in ["", ".", "0", "0.000", "-1", "1e3", "1,5", "abc", "1.2.3"] {
            assert!(convert_money(100, "EUR", bad, "USD").is_err(), "{bad:?}");
        }
        assert!(convert_money(100, "XX", "1", "USD").is_err());
        assert!(convert_money(i64::MAX, "JPY", "99999", "KWD").is_err());
    }

    #[test]
    fn money_is_exact() {
        assert_eq!(to_minor("12.34", "USD"), Ok(1234));
        assert_eq!(to_minor("12.3", "eur"), Ok(1230));
        assert_eq!(to_minor("500", "JPY"), Ok(500));
        assert_eq!(to_minor("1.005", "KWD"), Ok(1005));
        assert!(to_minor("1.005", "USD")
            .unwrap_err()
            .contains("more than 2 decimals"));
        assert!(to_minor("abc", "USD").is_err());
        assert!(to_minor("1", "DOLLARS").is_err());
        assert_eq!(format_money(1234, "usd").unwrap(), "12.34 USD");
        assert_eq!(format_money(-5, "EUR").unwrap(), "-0.05 EUR");
        assert_eq!(format_money(500, "JPY").unwrap(), "500 JPY");
    }

    #[test]
    fn glob_matches() {
        assert!(glob("Payment failed at checkout", "*payment*"));
        assert!(glob("login", "log?n"));
        assert!(!glob("logout", "login*"));
    }

    #[test]
    fn time_helpers_in_rules() {
        let mut e = Engine::new();
        register(&mut e);
        let v: String = e
            .eval(r#"add_duration("2026-03-06T16:00:00Z", "4h")"#)
            .unwrap();
        assert_eq!(v, "2026-03-06T20:00:00.000Z");
        let d: INT = e
            .eval(r#"days_between("2026-01-01T00:00:00Z", "2026-01-31T00:00:00Z")"#)
            .unwrap();
        assert_eq!(d, 30);
        assert!(e
            .eval::<String>(r#"add_duration("yesterday", "4h")"#)
            .is_err());
    }
}
