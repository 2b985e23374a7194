//! `exchange_rate`: what one unit of a currency is worth in another, from a service
//! with Frankfurter's API (the European Central Bank's reference rates), as exact
//! decimal text. A JSON number read as a float would round the rate, and money is
//! never converted through floats: the rate is taken from the response as written.

use casework_sdk::{clock, config, http, log, Context, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

const DEFAULT_BASE_URL: &str = "https://api.frankfurter.app";
const DEFAULT_SOURCE: &str = "ECB reference rates (Frankfurter)";
/// Digits a rate may have in all: more is no rate a provider publishes.
const MAX_DIGITS: usize = 18;

/// Input of `exchange_rate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateInput {
    /// ISO 4217 code of the currency converted from, e.g. `JPY`.
    pub from: String,
    /// ISO 4217 code of the currency converted to, e.g. `USD`.
    pub to: String,
}

/// A rate, ready for the audit and for `convert_money`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct RateOutput {
    /// Units of `to` one unit of `from` is worth, as decimal text (e.g. `"0.0067"`),
    /// exactly as the provider published it.
    pub rate: String,
    pub from: String,
    pub to: String,
    /// Where the rate came from (the `fx_source` setting).
    pub source: String,
    /// The provider's reference date of the rate (`YYYY-MM-DD`).
    pub date: String,
    /// When it was fetched (RFC 3339, UTC).
    pub at: String,
}

/// Frankfurter's answer: `{"amount": 1.0, "base": "JPY", "date": "2026-11-20", "rates": {"USD": 0.0067}}`.
#[derive(Deserialize)]
struct Latest {
    base: String,
    date: String,
    amount: Box<RawValue>,
    rates: BTreeMap<String, Box<RawValue>>,
}

fn currency(code: &str, field: &str) -> Result<String> {
    let code = code.trim();
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code.to_string())
    } else {
        Err(Error::invalid_input(format!(
            "`{field}` must be an ISO 4217 code of three capital letters, e.g. USD; got `{code}`"
        )))
    }
}

pub fn get(input: RateInput, _ctx: &Context) -> Result<RateOutput> {
    let from = currency(&input.from, "from")?;
    let to = currency(&input.to, "to")?;
    let source = config::get("fx_source").unwrap_or_else(|| DEFAULT_SOURCE.to_string());
    let at = clock::rfc3339(clock::now_ms());
    if from == to {
        let date = at[..10].to_string();
        return Ok(RateOutput {
            rate: "1".into(),
            from,
            to,
            source,
            date,
            at,
        });
    }
    let url = format!(
        "{}/latest?from={from}&to={to}",
        config::base_url("fx_base_url", DEFAULT_BASE_URL)
    );
    let response = http::get(url).header("accept", "application/json").send()?;
    let status = response.status;
    match status {
        200..=299 => {}
        // Frankfurter answers 404 `{"message": "not found"}` for a currency it has no rate for.
        404 | 422 => {
            return Err(Error::permanent(
                "unknown_currency",
                format!("the rate service has no rate from {from} to {to} (HTTP {status})"),
            ))
        }
        429 | 500..=599 => {
            return Err(Error::retryable(
                "fx_unavailable",
                format!("the rate service answered HTTP {status}"),
            ))
        }
        _ => {
            return Err(Error::permanent(
                "fx_error",
                format!("the rate service answered HTTP {status}"),
            ))
        }
    }
    let bad =
        |why: String| Error::permanent("bad_response", format!("the rate service's answer {why}"));
    let latest: Latest = serde_json::from_slice(&response.body)
        .map_err(|e| bad(format!("is not the expected document: {e}")))?;
    if latest.base != from {
        return Err(bad(format!("is for {}, not {from}", latest.base)));
    }
    if decimal_text(latest.amount.get()).as_deref() != Some("1") {
        return Err(bad(format!(
            "is for an amount of {}, not 1",
            latest.amount.get()
        )));
    }
    if clock::parse_rfc3339(&format!("{}T00:00:00Z", latest.date)).is_none() {
        return Err(bad(format!("has no date (`{}`)", latest.date)));
    }
    let raw = latest
        .rates
        .get(&to)
        .ok_or_else(|| bad(format!("has no rate for {to}")))?;
    let rate = decimal_text(raw.get())
        .filter(|r| r != "0")
        .ok_or_else(|| {
            bad(format!(
                "gives the rate `{}`, not a positive decimal",
                raw.get()
            ))
        })?;
    log::info(format_args!("rate {from}→{to} of {}: {rate}", latest.date));
    Ok(RateOutput {
        rate,
        from,
        to,
        source,
        date: latest.date,
        at,
    })
}

/// A non-negative JSON number as plain decimal text, exactly: `6.7e-3` → `0.0067`,
/// `1.0` → `1`, `1E+2` → `100`. `None` for anything else (a sign, a string, too many
/// digits).
fn decimal_text(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let (mantissa, exp) = match raw.find(['e', 'E']) {
        Some(i) => (&raw[..i], raw[i + 1..].parse::<i32>().ok()?),
        None => (raw, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{whole}{frac}");
    // The decimal point sits after `point` digits of `digits`.
    let point = whole.len() as i32 + exp;
    if digits.len() > MAX_DIGITS || !(-(MAX_DIGITS as i32)..=MAX_DIGITS as i32).contains(&point) {
        return None;
    }
    let (int, fraction) = if point <= 0 {
        (
            String::new(),
            format!("{}{digits}", "0".repeat((-point) as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        (
            digits[..point as usize].to_string(),
            digits[point as usize..].to_string(),
        )
    };
    let int = int.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    Some(if fraction.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{fraction}")
    })
}

#[cfg(test)]
mod tests {
    use super::decimal_text;
    use crate::Payments;
    use casework_sdk::http::{Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::json;

    const URL: &str = "http://127.0.0.1:18120/latest?from=JPY&to=USD";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("fx_base_url", "http://127.0.0.1:18120/");
        // 2026-11-20T09:00:00Z
        host.set_now_ms(1_795_165_200_000);
        host
    }

    fn answer(body: &str) -> Response {
        let mut r = Response::new(200);
        r.headers
            .push(("content-type".into(), "application/json".into()));
        r.body = body.as_bytes().to_vec();
        r
    }

    #[test]
    fn a_rate_is_taken_as_written_not_through_a_float() {
        let host = host();
        host.respond(
            Method::Get,
            URL,
            answer(
                r#"{"amount":1.0,"base":"JPY","date":"2026-11-19","rates":{"USD":0.0066666667}}"#,
            ),
        );
        let out = host
            .invoke::<Payments>("exchange_rate", &json!({"from": "JPY", "to": "USD"}))
            .unwrap();
        assert_eq!(
            out,
            json!({"rate": "0.0066666667", "from": "JPY", "to": "USD",
                   "source": "ECB reference rates (Frankfurter)", "date": "2026-11-19",
                   "at": "2026-11-20T09:00:00.000Z"})
        );
        let sent = &host.requests()[0];
        assert_eq!((sent.method, sent.url.as_str()), (Method::Get, URL));
        assert_eq!(sent.header("accept"), Some("application/json"));
    }

    #[test]
    fn numbers_become_plain_decimal_text_exactly() {
        for (raw, text) in [
            ("0.0067", Some("0.0067")),
            ("6.7e-3", Some("0.0067")),
            ("6.7E-3", Some("0.0067")),
            ("1.0", Some("1")),
            ("1E+2", Some("100")),
            ("150.120", Some("150.12")),
            ("0.1000000000000000055511151231257827", None),
            ("-1.2", None),
            ("\"1.2\"", None),
            ("1e400", None),
        ] {
            assert_eq!(decimal_text(raw).as_deref(), text, "{raw}");
        }
    }

    #[test]
    fn the_same_currency_is_one_without_asking() {
        let host = host();
        let out = host
            .invoke::<Payments>("exchange_rate", &json!({"from": "EUR", "to": "EUR"}))
            .unwrap();
        assert_eq!(out["rate"], "1");
        assert!(host.requests().is_empty());
    }

    #[test]
    fn failures_and_odd_answers_are_clear() {
        for (status, body, code, retryable) in [
            (404, r#"{"message":"not found"}"#, "unknown_currency", false),
            (503, "", "fx_unavailable", true),
            (429, "", "fx_unavailable", true),
            (400, "", "fx_error", false),
            (
                200,
                r#"{"amount":1.0,"base":"EUR","date":"2026-11-19","rates":{"USD":1.1}}"#,
                "bad_response",
                false,
            ),
            (
                200,
                r#"{"amount":100,"base":"JPY","date":"2026-11-19","rates":{"USD":0.67}}"#,
                "bad_response",
                false,
            ),
            (
                200,
                r#"{"amount":1,"base":"JPY","date":"2026-11-19","rates":{"GBP":0.005}}"#,
                "bad_response",
                false,
            ),
            (
                200,
                r#"{"amount":1,"base":"JPY","date":"2026-11-19","rates":{"USD":0}}"#,
                "bad_response",
                false,
            ),
            (
                200,
                r#"{"amount":1,"base":"JPY","date":"yesterday","rates":{"USD":0.0067}}"#,
                "bad_response",
                false,
            ),
        ] {
            let host = host();
            let mut r = answer(body);
            r.status = status;
            host.respond(Method::Get, URL, r);
            let err = host
                .invoke::<Payments>("exchange_rate", &json!({"from": "JPY", "to": "USD"}))
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "{status} {body}: {err}"
            );
        }
        let err = FakeHost::new()
            .invoke::<Payments>("exchange_rate", &json!({"from": "yen", "to": "USD"}))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
    }
}
