//! The JSON Schema of test files (`*.test.yaml`), for editors, built from the field lists
//! the test reader accepts (like the workflow schema), so the two cannot drift apart.

use super::reader::{
    CALLED_FIELDS, CALL_FIELDS, CHECKPOINT_FIELDS, EDIT_FIELDS, EVENT_FIELDS, EXPECT_FIELDS,
    FILE_FIELDS, MOCK_ERROR_FIELDS, MOCK_FIELDS, TEST_FIELDS,
};
use serde_json::{json, Map, Value};

fn duration() -> Value {
    json!({"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w))+$", "description": "e.g. 30s, 5m, 4h, 2d, 1h30m"})
}

fn target() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]*\\.[A-Za-z][A-Za-z0-9_-]*$", "description": "plugin.action"})
}

fn count(min: u32) -> Value {
    json!({"type": "integer", "minimum": min})
}

/// An object of exactly `fields`, each described by `of`.
fn object(fields: &[&str], of: impl Fn(&str) -> Value, required: &[&str]) -> Value {
    let props: Map<String, Value> = fields.iter().map(|f| ((*f).to_string(), of(f))).collect();
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
}

pub fn test_schema() -> Value {
    let mock = object(
        MOCK_FIELDS,
        |f| match f {
            "call" => target(),
            "when" => {
                json!({"type": "object", "description": "answers only calls whose input has these values"})
            }
            "error" => object(
                MOCK_ERROR_FIELDS,
                |f| match f {
                    "retryable" => json!({"type": "boolean"}),
                    _ => json!({"type": "string"}),
                },
                &["code"],
            ),
            "timeout" => json!({"type": "boolean"}),
            "times" => count(1),
            _ => json!({"description": "the plugin's answer"}),
        },
        &["call"],
    );
    let event = object(
        EVENT_FIELDS,
        |f| match f {
            "after" => duration(),
            "key" => json!({"type": ["string", "integer"]}),
            "data" => json!({}),
            _ => json!({"type": "string"}),
        },
        &["type"],
    );
    let call = object(
        CALL_FIELDS,
        |f| match f {
            "call" => target(),
            "step" => json!({"type": "string"}),
            "attempt" | "idempotency_key_same_as" => count(1),
            _ => json!({"type": "object", "description": "partial match on the call's input"}),
        },
        &["call"],
    );
    let called = object(
        CALLED_FIELDS,
        |f| match f {
            "call" => target(),
            "step" => json!({"type": "string"}),
            "with" => json!({"type": "object", "description": "partial match on the call's input"}),
            _ => count(0),
        },
        &["call"],
    );
    let expect = object(
        EXPECT_FIELDS,
        |f| match f {
            "status" => json!({"enum": ["completed", "failed", "cancelled", "waiting"]}),
            "path" => json!({"type": "array", "items": {"type": "string"}}),
            "vars" | "sla" => json!({"type": "object"}),
            "error" => json!({"type": "string", "description": "the error code"}),
            "calls" => json!({"type": "array", "items": call}),
            "called" => json!({"type": "array", "items": called}),
            "retries_reuse_idempotency_key" => json!({"type": "boolean"}),
            "not_in_journal" => {
                json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
            }
            "instances" => {
                json!({"type": "object", "description": "how many instances of each named workflow exist, e.g. { emergency: 1 }", "additionalProperties": count(0)})
            }
            _ => json!({"description": "partial match on the output"}),
        },
        &[],
    );
    let checkpoint = object(
        CHECKPOINT_FIELDS,
        |f| match f {
            "at" => duration(),
            _ => expect.clone(),
        },
        CHECKPOINT_FIELDS,
    );
    let file_edit = object(
        EDIT_FIELDS,
        |f| match f {
            "after" => duration(),
            "file" => {
                json!({"type": "string", "pattern": "^(calendars/)?[^/]+\\.yaml$", "description": "a workflow file beside the test file, or a calendar in calendars/"})
            }
            _ => json!({"type": "string", "description": "the file's new text"}),
        },
        EDIT_FIELDS,
    );
    let test = object(
        TEST_FIELDS,
        |f| match f {
            "name" | "description" => json!({"type": "string"}),
            "start" => {
                json!({"type": "string", "description": "RFC 3339, e.g. 2026-11-20T10:00:00Z"})
            }
            "input" => json!({"type": "object"}),
            "mocks" => json!({"type": "array", "items": mock}),
            "events" => json!({"type": "array", "items": event}),
            "stop_after" => duration(),
            "started_by" => {
                json!({"enum": ["triggers"], "description": "the test starts no instance: its events start instances through the workflows' triggers"})
            }
            "checkpoints" => {
                json!({"type": "array", "description": "what must hold part-way through, once everything due by `at` has happened", "items": checkpoint})
            }
            "edits" => {
                json!({"type": "array", "description": "files of the folder replaced part-way through and reloaded as the daemon reloads them", "items": file_edit})
            }
            _ => expect.clone(),
        },
        &["name", "expect"],
    );
    let mut file = object(
        FILE_FIELDS,
        |f| match f {
            "workflow" | "description" => json!({"type": "string"}),
            "start" => {
                json!({"type": "string", "description": "RFC 3339, e.g. 2026-11-20T10:00:00Z"})
            }
            "input" => json!({"type": "object"}),
            "mocks" => json!({"type": "array", "items": mock}),
            _ => json!({"type": "array", "items": test}),
        },
        &["workflow", "tests"],
    );
    let m = file.as_object_mut().expect("an object");
    m.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    m.insert("title".into(), json!("Casework workflow tests"));
    file
}
