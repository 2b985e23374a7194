//! The JSON Schema of calendar files (`workflows/calendars/*.yaml`), for editors, built
//! from the field lists the calendar reader accepts.

use super::read::{CALENDAR_FIELDS, DAY_KEYS, HOLIDAY_FIELDS};
use serde_json::{json, Map, Value};

pub fn calendar_schema() -> Value {
    let range = json!({"type": "string", "pattern": "^\\s*([0-9]{1,2}:[0-9]{2}(:[0-9]{2})?\\s*-\\s*[0-9]{1,2}:[0-9]{2}(:[0-9]{2})?(\\s*\\+1)?|closed)\\s*$",
        "description": "HH:MM-HH:MM (seconds optional), +1 for past midnight, or closed"});
    let ranges = json!({"oneOf": [range, {"type": "array", "items": range}]});
    let date = json!({"type": "string", "pattern": "^([0-9]{4}-)?[0-9]{2}-[0-9]{2}$", "description": "YYYY-MM-DD, or MM-DD for every year"});
    let days: Map<String, Value> = DAY_KEYS
        .iter()
        .map(|d| ((*d).to_string(), ranges.clone()))
        .collect();
    let holiday_props: Map<String, Value> = HOLIDAY_FIELDS
        .iter()
        .map(|f| {
            let v = if *f == "date" {
                date.clone()
            } else {
                json!({"type": "string"})
            };
            ((*f).to_string(), v)
        })
        .collect();
    let props: Map<String, Value> = CALENDAR_FIELDS
        .iter()
        .map(|f| {
            let v = match *f {
                "calendar" => json!({"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]*$", "description": "the name rules use"}),
                "timezone" => json!({"type": "string", "description": "an IANA name, e.g. Europe/London"}),
                "hours" => json!({"oneOf": [
                    {"const": "always"},
                    {"type": "object", "additionalProperties": false, "properties": days.clone()}]}),
                "dates" => json!({"type": "object", "description": "hours of their own on some dates", "propertyNames": date.clone(), "additionalProperties": ranges.clone()}),
                "holidays" => json!({"type": "array", "items": {"oneOf": [
                    date.clone(),
                    {"type": "object", "additionalProperties": false, "required": ["date"], "properties": holiday_props.clone()}]}}),
                _ => json!({"type": "string"}),
            };
            ((*f).to_string(), v)
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Casework business calendar",
        "type": "object",
        "additionalProperties": false,
        "required": ["calendar", "timezone", "hours"],
        "properties": props
    })
}
