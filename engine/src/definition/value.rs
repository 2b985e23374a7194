//! Typed values as every YAML reader accepts them (workflows, tests, calendars): one
//! function per kind, each reporting a problem at the value with the same words, so the
//! three formats cannot disagree about what a duration or a name is.

use super::yaml::{Node, Value};
use super::Duration;
use crate::diagnostic::Diagnostic;

const DURATION_HINT: &str = "write e.g. `30s`, `5m`, `4h`, `2d` or `1h30m`";

fn err(file: &str, node: &Node, msg: String, diags: &mut Vec<Diagnostic>) {
    diags.push(Diagnostic::error(file, node.span, msg));
}

fn hint(file: &str, node: &Node, msg: String, hint: &str, diags: &mut Vec<Diagnostic>) {
    diags.push(Diagnostic::error(file, node.span, msg).with_hint(hint));
}

/// Non-empty text; a whole number is taken as its digits.
pub fn string(file: &str, node: &Node, what: &str, diags: &mut Vec<Diagnostic>) -> Option<String> {
    match &node.value {
        Value::Str(s, _) if !s.trim().is_empty() => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => {
            let found = node.kind_name();
            err(
                file,
                node,
                format!("{what} must be a non-empty string, found {found}"),
                diags,
            );
            None
        }
    }
}

/// Letters, digits, `_` and `-`, starting with a letter.
pub fn name(file: &str, node: &Node, what: &str, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let s = string(file, node, what, diags)?;
    let valid = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        hint(
            file,
            node,
            format!("{what} `{s}` is not a valid name"),
            "use letters, digits, `_` and `-`, starting with a letter",
            diags,
        );
        return None;
    }
    Some(s)
}

pub fn boolean(file: &str, node: &Node, what: &str, diags: &mut Vec<Diagnostic>) -> Option<bool> {
    match node.value {
        Value::Bool(b) => Some(b),
        _ => {
            let found = node.kind_name();
            hint(
                file,
                node,
                format!("{what} must be true or false, found {found}"),
                "write `true` or `false`",
                diags,
            );
            None
        }
    }
}

/// A whole number from `min` to `max`.
pub fn whole(
    file: &str,
    node: &Node,
    what: &str,
    min: i64,
    max: i64,
    diags: &mut Vec<Diagnostic>,
) -> Option<u32> {
    match node.value {
        Value::Int(i) if (min..=max).contains(&i) => u32::try_from(i).ok(),
        Value::Int(i) => {
            err(
                file,
                node,
                format!("{what} must be between {min} and {max}, found {i}"),
                diags,
            );
            None
        }
        _ => {
            let found = node.kind_name();
            err(
                file,
                node,
                format!("{what} must be a whole number, found {found}"),
                diags,
            );
            None
        }
    }
}

/// A length of time like `30s` or `1h30m`; a bare `0` is nothing (it needs no unit), any
/// other bare number is refused for want of one.
pub fn duration(
    file: &str,
    node: &Node,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    let text = match &node.value {
        Value::Str(s, _) => s.clone(),
        Value::Int(0) => return Some(Duration::from_millis(0)),
        Value::Int(_) => {
            hint(
                file,
                node,
                format!("{what} needs a unit"),
                DURATION_HINT,
                diags,
            );
            return None;
        }
        _ => {
            let found = node.kind_name();
            hint(
                file,
                node,
                format!("{what} must be a duration like `30s`, found {found}"),
                DURATION_HINT,
                diags,
            );
            return None;
        }
    };
    match Duration::parse(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            hint(
                file,
                node,
                format!("invalid {what}: {e}"),
                DURATION_HINT,
                diags,
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        super::super::yaml::parse(&format!("v: {yaml}"))
            .unwrap()
            .get("v")
            .unwrap()
            .clone()
    }

    #[test]
    fn one_reading_of_each_kind() {
        let mut d = Vec::new();
        assert_eq!(
            duration("f", &node("0"), "`t`", &mut d),
            Some(Duration::from_millis(0))
        );
        assert_eq!(
            duration("f", &node("1h30m"), "`t`", &mut d).map(|d| d.as_millis()),
            Some(5_400_000)
        );
        assert!(d.is_empty());
        assert_eq!(duration("f", &node("5"), "`t`", &mut d), None);
        assert_eq!(
            d[0].to_string(),
            "f:1:4: error: `t` needs a unit\n  hint: write e.g. `30s`, `5m`, `4h`, `2d` or `1h30m`"
        );
        assert_eq!(name("f", &node("9lives"), "`id`", &mut d), None);
        assert_eq!(whole("f", &node("7"), "`n`", 1, 5, &mut d), None);
        assert_eq!(boolean("f", &node("yes"), "`b`", &mut d), None);
        assert_eq!(
            string("f", &node("42"), "`s`", &mut d).as_deref(),
            Some("42")
        );
        assert_eq!(d.len(), 4);
    }
}
