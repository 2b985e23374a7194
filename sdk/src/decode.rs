//! JSON decoding whose error messages name the failing field but never echo
//! the offending value, which may be a code, a token or personal data.

use serde::de::DeserializeOwned;

/// Why a JSON document did not match the expected type, without its values.
#[derive(Debug)]
pub(crate) struct DecodeError {
    path: String,
    reason: String,
}

impl DecodeError {
    /// Renders the error after `what`, e.g. "invalid input for `x` at `a.b`: ...".
    pub(crate) fn describe(&self, what: &str) -> String {
        if self.path == "." {
            format!("{what}: {}", self.reason)
        } else {
            format!("{what} at `{}`: {}", self.path, self.reason)
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("invalid JSON"))
    }
}

pub(crate) fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|err| {
        // Where a syntax error sits in the tree is meaningless; the line and
        // column in the reason say it better.
        let path = if err.inner().is_data() {
            err.path().to_string()
        } else {
            ".".to_string()
        };
        DecodeError {
            path,
            reason: describe(err.inner()),
        }
    })?;
    de.end().map_err(|err| DecodeError {
        path: ".".to_string(),
        reason: describe(&err),
    })?;
    Ok(value)
}

/// Keeps the parts of serde_json's message that come from the Rust type
/// (field names, expected shapes) and drops the parts that quote the input.
fn describe(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let full = err.to_string();
    let position = format!("line {} column {}", err.line(), err.column());
    match err.classify() {
        Category::Syntax | Category::Eof => format!("not valid JSON ({position})"),
        Category::Io => "could not read the document".to_string(),
        Category::Data => {
            // "missing field `x`" and "unknown field `x`, expected one of ..."
            // name schema fields only; everything else may quote the value.
            let message = full.split(" at line ").next().unwrap_or(&full);
            if message.starts_with("missing field") || message.starts_with("unknown field") {
                message.to_string()
            } else if let Some(expected) = message.split(", expected ").nth(1) {
                format!("the value is not accepted: expected {expected}")
            } else {
                "the value is not accepted".to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Check {
        code: u32,
        channel: Channel,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Channel {
        Sms,
        Email,
    }

    #[test]
    fn wrong_type_names_the_path_but_not_the_value() {
        let err = json::<Check>(br#"{"code": "99-4711", "channel": "sms"}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("invalid JSON at `code`: the value is not accepted: expected u32"),
            "{text}"
        );
        assert!(!text.contains("4711"), "{text}");
    }

    #[test]
    fn unknown_variant_does_not_echo_the_input() {
        let err = json::<Check>(br#"{"code": 1, "channel": "s3cr3t"}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`channel`") && text.contains("`sms`"),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let err = json::<Check>(br#"{"channel": "sms"}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid JSON: missing field `code`");
        let err = json::<Check>(br#"{"code": 1, "channel": "email", "cod": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `cod`"), "{err}");
    }

    #[test]
    fn syntax_errors_give_a_position_only() {
        let err = json::<Check>(br#"{"code": 123456"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid JSON: not valid JSON (line 1"),
            "{err}"
        );
        assert!(!err.to_string().contains("123456"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        assert!(json::<u32>(b"1 2").is_err());
    }
}
