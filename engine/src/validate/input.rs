//! Check an instance's input JSON against the workflow's declared input fields.

use crate::definition::{FieldType, InputField};
use serde_json::{Map, Value};

/// One problem with an input, naming the field (never echoing a sensitive value).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InputProblem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for InputProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "input `{}`: {}", self.field, self.message)
    }
}

/// Validate `input`, filling in defaults. Returns the completed input or every problem.
pub fn check(fields: &[InputField], input: &Value) -> Result<Value, Vec<InputProblem>> {
    let mut problems = Vec::new();
    let empty = Map::new();
    let given = match input {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => {
            return Err(vec![InputProblem {
                field: "(input)".into(),
                message: format!("must be a JSON object, found {}", json_kind(other)),
            }])
        }
    };
    let mut out = Map::new();
    for (name, _) in given {
        if !fields.iter().any(|f| &f.name.value == name) {
            let known: Vec<&str> = fields.iter().map(|f| f.name.value.as_str()).collect();
            let message = match crate::diagnostic::did_you_mean(name, known.iter().copied()) {
                Some(s) => format!("is not an input of this workflow (did you mean `{s}`?)"),
                None => format!(
                    "is not an input of this workflow (inputs: {})",
                    known.join(", ")
                ),
            };
            problems.push(InputProblem {
                field: name.clone(),
                message,
            });
        }
    }
    for f in fields {
        let name = &f.name.value;
        let value = match given.get(name) {
            Some(Value::Null) | None => match &f.default {
                Some(d) => d.clone(),
                None if f.required => {
                    problems.push(InputProblem {
                        field: name.clone(),
                        message: format!("is required ({})", f.ty.name()),
                    });
                    continue;
                }
                None => continue,
            },
            Some(v) => v.clone(),
        };
        if let Err(message) = check_value(f, &value) {
            problems.push(InputProblem {
                field: name.clone(),
                message,
            });
            continue;
        }
        out.insert(name.clone(), value);
    }
    if problems.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(problems)
    }
}

fn check_value(f: &InputField, v: &Value) -> Result<(), String> {
    let ok = match f.ty {
        FieldType::String => v.is_string(),
        FieldType::Integer => v.is_i64(),
        FieldType::Number => v.is_number(),
        FieldType::Boolean => v.is_boolean(),
        FieldType::Object => v.is_object(),
        FieldType::List => v.is_array(),
        FieldType::Timestamp => v
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
    };
    if !ok {
        let extra = match f.ty {
            FieldType::Timestamp => " like \"2026-03-06T16:00:00Z\"",
            FieldType::Integer => " (money is in minor units: 1999 for 19.99)",
            _ => "",
        };
        // Never echo the value: it may be personal data.
        return Err(format!(
            "must be {} {}{extra}, found {}",
            article(f.ty),
            f.ty.name(),
            json_kind(v)
        ));
    }
    if !f.one_of.is_empty() && !f.one_of.contains(v) {
        let allowed: Vec<String> = f.one_of.iter().map(|x| x.to_string()).collect();
        return Err(format!("must be one of {}", allowed.join(", ")));
    }
    if let Some(i) = v.as_i64() {
        if f.min.is_some_and(|m| i < m) {
            return Err(format!("must be at least {}", f.min.unwrap_or_default()));
        }
        if f.max.is_some_and(|m| i > m) {
            return Err(format!("must be at most {}", f.max.unwrap_or_default()));
        }
    }
    Ok(())
}

fn article(t: FieldType) -> &'static str {
    match t {
        FieldType::Integer | FieldType::Object => "an",
        _ => "a",
    }
}

pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
