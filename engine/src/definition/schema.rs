//! The JSON Schema of workflow files, for editor autocompletion and checks as you type.
//!
//! Built from the same field lists the reader accepts, so the two cannot drift apart
//! (a test in `tests/` checks the published `workflow.schema.json` matches).

use super::read::{INPUT_FIELDS, STEP_COMMON, WORKFLOW_FIELDS};
use super::{FieldType, StepKind};
use serde_json::{json, Map, Value};

fn name() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]*$"})
}

fn duration() -> Value {
    json!({"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w))+$", "description": "e.g. 30s, 5m, 4h, 2d, 1h30m"})
}

fn expr(doc: &str) -> Value {
    json!({"type": "string", "description": doc})
}

fn kind_schema(kind: &str) -> Value {
    match kind {
        "rule" => expr("Rhai script; assign `vars.name = ...`; with several `next`, end with the id of the step to go to"),
        "switch" => json!({"type": "array", "items": {"type": "object", "additionalProperties": false, "required": ["when", "goto"],
            "properties": {"when": expr("condition (Rhai)"), "goto": name()}}}),
        "call" => json!({"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]*\\.[A-Za-z][A-Za-z0-9_-]*$", "description": "plugin.action"}),
        "wait" => json!({"type": "object", "additionalProperties": false, "required": ["event", "key"], "properties": {
            "event": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "key": expr("expression giving the correlation key, e.g. input.order_id"),
            "timeout": duration(),
            "until": expr("expression giving the instant to stop waiting, e.g. sla_deadline(vars.first_response)"),
            "on_timeout": name(),
            "write_only": {"type": "array", "items": name(), "description": "fields of the event's data (one-time codes) sealed on arrival, shown nowhere, given only to plugin fields marked sensitive"}}}),
        "sleep" => json!({"oneOf": [duration(), {"type": "object", "additionalProperties": false, "required": ["until"], "properties": {"until": expr("expression giving an RFC 3339 time")}}]}),
        "parallel" => json!({"type": "object", "additionalProperties": false, "required": ["branches"], "properties": {
            "join": {"enum": ["all", "first"]},
            "branches": {"type": "array", "items": {"type": "object", "additionalProperties": false, "required": ["id", "steps"],
                "properties": {"id": name(), "steps": {"$ref": "#/$defs/steps"}}}}}}),
        "foreach" => json!({"type": "object", "additionalProperties": false, "required": ["items", "steps"], "properties": {
            "items": expr("expression giving a list"), "as": name(), "concurrency": {"type": "integer", "minimum": 1, "maximum": 64},
            "steps": {"$ref": "#/$defs/steps"}}}),
        "set" => json!({"type": "object", "description": "variable: value (strings may contain ${ expression })"}),
        "subworkflow" => name(),
        "decide" => json!({"type": "object", "additionalProperties": false, "required": ["inputs", "outputs", "rows"], "properties": {
            "inputs": {"type": "object", "description": "input columns: name: { type, value }", "additionalProperties": {
                "type": "object", "additionalProperties": false, "required": ["type", "value"], "properties": {
                    "type": {"enum": crate::definition::ColumnType::NAMES, "description": "money is integer minor units"},
                    "value": expr("expression giving the column's value, e.g. input.amount_minor")}}},
            "outputs": {"oneOf": [name(), {"type": "array", "items": name()}], "description": "the variables the table sets"},
            "hit": {"enum": crate::definition::HitPolicy::NAMES, "description": "first (default): the first row that matches; unique: exactly one row matches any input, checked at load; collect: every row that matches, each output a list"},
            "rows": {"type": "array", "items": {"type": "object", "description": "column: condition (\"*\", 5000, \"< 5000\", \"5000..50000\", [a, b], \"not a\") and output: value"}},
            "default": {"type": "object", "description": "the outputs when no row matches"}}}),
        "complete" => json!({"type": ["object", "null"], "additionalProperties": false, "properties": {"output": {}}}),
        "fail" => json!({"type": "object", "additionalProperties": false, "required": ["message"], "properties": {"code": name(), "message": {}}}),
        _ => json!({}),
    }
}

/// The schema as JSON.
pub fn workflow_schema() -> Value {
    let mut step_variants = Vec::new();
    for kind in StepKind::KEYWORDS {
        let mut props = Map::new();
        for f in STEP_COMMON {
            let v = match *f {
                "id" | "on_error" | "compensate" | "save_as" => name(),
                "next" => json!({"oneOf": [name(), {"type": "array", "items": name()}]}),
                _ => json!({"type": "string"}),
            };
            props.insert((*f).into(), v);
        }
        props.insert(kind.into(), kind_schema(kind));
        match kind {
            "switch" => {
                props.insert("default".into(), name());
            }
            "call" => {
                props.insert("with".into(), json!({}));
                props.insert("timeout".into(), duration());
                props.insert("retry".into(), json!({"type": "object", "additionalProperties": false, "properties": {
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100}, "backoff": duration(),
                    "multiplier": {"type": "integer", "minimum": 1, "maximum": 10}, "max_delay": duration(),
                    "jitter": {"type": "string", "pattern": "^[0-9]{1,3}%$"}, "on": {"type": "array", "items": {"type": "string"}}}}));
            }
            "subworkflow" => {
                props.insert("with".into(), json!({}));
            }
            _ => {}
        }
        step_variants.push(json!({"type": "object", "additionalProperties": false, "required": ["id", kind], "properties": props}));
    }
    let mut input_props = Map::new();
    for f in INPUT_FIELDS {
        let v = match *f {
            "type" => json!({"enum": FieldType::NAMES}),
            "required" | "sensitive" => json!({"type": "boolean"}),
            "min" | "max" => json!({"type": "integer"}),
            "one_of" => json!({"type": "array"}),
            "description" => json!({"type": "string"}),
            _ => json!({}),
        };
        input_props.insert((*f).into(), v);
    }
    let mut top = Map::new();
    for f in WORKFLOW_FIELDS {
        let v = match *f {
            "workflow" | "on_error" => name(),
            "version" => json!({"type": "integer", "minimum": 1}),
            "description" => json!({"type": "string"}),
            "input" => json!({"type": "object", "additionalProperties": {"oneOf": [
                {"enum": FieldType::NAMES},
                {"type": "object", "additionalProperties": false, "required": ["type"], "properties": input_props}]}}),
            "triggers" => json!({"type": "array", "items": {"oneOf": [
                {"type": "object", "additionalProperties": false, "required": ["event"], "properties": {
                    "event": {"type": "string", "description": "Event type, e.g. ticket.created"},
                    "when": expr("Rhai filter over `event` (type, key, data, id)"),
                    "key": expr("with count: expression over `event` naming what is counted together, e.g. event.data.component"),
                    "count": {"type": "object", "additionalProperties": false, "required": ["at_least", "within"], "properties": {
                        "at_least": {"type": "integer", "minimum": 1, "maximum": crate::daemon::window::MAX_AT_LEAST, "description": "events with one key that start the workflow once"},
                        "within": duration()},
                        "description": "start once when at_least matching events with one key come within `within`; later ones go to the open instance"},
                    "input": {"description": "The new instance's input; `${event.data...}` templates, and `${window.key}`, `${window.count}`, `${window.first_at}` with count"}}},
                {"type": "object", "additionalProperties": false, "required": ["schedule", "timezone"], "properties": {
                    "schedule": {"type": "string", "description": "Cron pattern, e.g. \"0 9 * * MON-FRI\""},
                    "timezone": {"type": "string", "description": "IANA time zone, e.g. Europe/London"},
                    "input": {"description": "The new instance's input; `${schedule.at}` is the occurrence"}}}]}}),
            "key" => expr("expression over `input` naming what has one open instance at a time, e.g. input.ticket_id"),
            "search" => json!({"type": "object", "maxProperties": crate::definition::read::MAX_SEARCH_ATTRIBUTES,
                "propertyNames": {"pattern": "^[A-Za-z][A-Za-z0-9_-]*$", "not": {"enum": crate::definition::read::RESERVED_SEARCH_NAMES}},
                "additionalProperties": expr("expression over `input` and `vars` giving the attribute's value, e.g. input.ticket_id"),
                "description": "business attributes instances can be found by: GET /v1/instances?workflow=...&<name>=<value>"}),
            "migrate" => json!({"type": "array", "maxItems": crate::definition::read::MAX_MIGRATIONS,
                "description": "move instances of older versions, parked at a listed wait, to a step of this version (casework migrate); pinning stays the default",
                "items": {"type": "object", "additionalProperties": false, "required": ["from", "at", "to"], "properties": {
                    "from": {"type": "integer", "minimum": 1, "description": "the older version whose instances move"},
                    "at": {"type": "array", "minItems": 1, "items": {"type": "string"}, "description": "waits of that version where an instance may move (its only step in progress)"},
                    "to": {"type": "string", "description": "the step of this version the instance goes on from"},
                    "set": {"type": "object", "additionalProperties": expr("expression over `input` and `vars` (before the move) giving the variable's new value")}}}}),
            "inbox_keep" => json!({"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w))+$", "description": "how long an event this workflow waits for is kept when it comes before the wait (at most 30d; the daemon's inbox_keep otherwise)"}),
            "concurrency" => json!({"type": "object", "additionalProperties": false, "properties": {
                "limit": {"type": "integer", "minimum": 1, "maximum": crate::definition::read::MAX_OPEN_PER_KEY, "description": "open instances per key (more than 1 with on_conflict: reject or queue)"},
                "on_conflict": {"enum": ["attach", "queue", "reject"], "description": "attach: the open instance receives the start as `event`; queue: the start waits in the key's queue and starts when an open instance finishes; reject: 409 with the open instance's id"},
                "event": {"type": "string", "description": "with attach: the event type the open instance receives, keyed by `key`"}}}),
            _ => json!({"$ref": "#/$defs/steps"}),
        };
        top.insert((*f).into(), v);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Casework workflow",
        "type": "object",
        "additionalProperties": false,
        "required": ["workflow", "version", "steps"],
        "properties": top,
        "$defs": {"steps": {"type": "array", "items": {"oneOf": step_variants}}}
    })
}
