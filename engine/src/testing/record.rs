//! `casework test --record <instance>`: a real instance's journal turned into a test
//! file, so an incident becomes a regression test. The test starts the instance with
//! the input it had, at the time it started; every plugin answer becomes a mock (in
//! order, matched on the call's input, used once); every event it received is
//! delivered when it received it; and what it did (status, path, output or error, the
//! calls) becomes the expectation.
//!
//! It is built from the instance's redacted view (the API's, or `inspect`'s): a
//! sensitive input shows as `[redacted]` in the file, and the recording says so.

use super::runner::path_of;
use crate::compile::{CompiledWorkflow, Kind};
use crate::definition::Duration;
use crate::journal::Record;
use serde_json::Value;
use serde_yaml::{Mapping, Value as Yaml};

/// What the recording could not carry over, said at the top of the file.
fn notes(records: &[Record], redacted: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if redacted {
        out.push(
            "Values shown as [redacted] were sensitive inputs: put made-up ones in their place.",
        );
    }
    if records
        .iter()
        .any(|r| matches!(r, Record::SubStarted { .. }))
    {
        out.push("Subworkflow instances are not recorded: add mocks for their plugin calls, or record them too.");
    }
    if records.iter().any(|r| matches!(r, Record::Paused { .. })) {
        out.push(
            "An operator paused this instance; tests do not pause, so timers fire on time here.",
        );
    }
    if records.iter().any(|r| {
        matches!(
            r,
            Record::RetryRequested { .. } | Record::CancelRequested { .. }
        )
    }) {
        out.push("An operator retried or cancelled this instance; the test shows what happened before that.");
    }
    out
}

fn after(ms: i64) -> String {
    Duration::from_millis(ms.max(0) as u64).to_string()
}

fn yaml(v: &Value) -> Yaml {
    serde_yaml::to_value(v).unwrap_or(Yaml::Null)
}

fn map(pairs: Vec<(&str, Yaml)>) -> Yaml {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Yaml::String(k.to_string()), v);
    }
    Yaml::Mapping(m)
}

fn s(text: &str) -> Yaml {
    Yaml::String(text.to_string())
}

/// The test file for instance `id` of `wf`, from its view (`status`, `output`,
/// `error`, `version`) and its journal.
pub fn test_file(
    id: &str,
    view: &Value,
    wf: &CompiledWorkflow,
    records: &[Record],
) -> Result<String, String> {
    let Some(Record::Started {
        input, at: start, ..
    }) = records.first()
    else {
        return Err(format!(
            "instance `{id}` has no `started` record to record from"
        ));
    };
    let start = *start;
    let target = |step: &str| match wf.step(step).map(|(_, s)| &s.kind) {
        Some(Kind::Call { plugin, action, .. }) => format!("{plugin}.{action}"),
        _ => "?.?".into(),
    };
    // Every answer, in the order the instance got them. Calls are matched by their
    // input, so branches calling at once get their own answers whatever order they come in.
    let mut pending: Vec<((u32, String, u32), Value)> = Vec::new();
    let mut mocks = Vec::new();
    let mut events = Vec::new();
    let mut calls = Vec::new();
    for r in records {
        match r {
            Record::CallStarted {
                frame,
                step,
                attempt,
                input,
                ..
            } => {
                pending.push(((*frame, step.clone(), *attempt), input.clone()));
                calls.push(map(vec![
                    ("call", s(&target(step))),
                    ("step", s(step)),
                    ("attempt", Yaml::Number((*attempt).into())),
                ]));
            }
            Record::CallSucceeded {
                frame,
                step,
                attempt,
                output,
                ..
            } => {
                let key = (*frame, step.clone(), *attempt);
                let when = take(&mut pending, &key);
                mocks.push(mock(&target(step), &when, ("reply", yaml(output))));
            }
            Record::CallFailed {
                frame,
                step,
                attempt,
                error,
                ..
            } => {
                let key = (*frame, step.clone(), *attempt);
                let when = take(&mut pending, &key);
                let answer = if error.code == "timeout" {
                    ("timeout", Yaml::Bool(true))
                } else {
                    (
                        "error",
                        map(vec![
                            ("code", s(&error.code)),
                            ("message", s(&error.message)),
                            ("retryable", Yaml::Bool(error.retryable)),
                        ]),
                    )
                };
                mocks.push(mock(&target(step), &when, answer));
            }
            Record::EventReceived { event, at, .. } => {
                let mut e = vec![
                    ("after", s(&after(at - start))),
                    ("type", s(&event.event_type)),
                    ("key", s(&event.key)),
                ];
                if !event.data.is_null() {
                    e.push(("data", yaml(&event.data)));
                }
                if let Some(i) = &event.id {
                    e.push(("id", s(i)));
                }
                events.push(map(e));
            }
            _ => {}
        }
    }
    let status = match view["status"].as_str().unwrap_or("") {
        s @ ("completed" | "failed" | "cancelled") => s.to_string(),
        _ => "waiting".to_string(),
    };
    let mut expect = vec![("status", s(&status))];
    let path: Vec<Yaml> = path_of(wf, id, records).iter().map(|p| s(p)).collect();
    expect.push(("path", Yaml::Sequence(path)));
    if status == "completed" {
        if let Some(o) = view.get("output").filter(|o| !o.is_null()) {
            expect.push(("output", yaml(o)));
        }
    }
    if let Some(code) = view["error"]["code"].as_str() {
        expect.push(("error", s(code)));
    }
    expect.push(("calls", Yaml::Sequence(calls)));
    let last = records.iter().map(Record::at).max().unwrap_or(start);
    let mut test = vec![
        (
            "name",
            s(&format!(
                "recorded from instance {id} ({} v{}, {status})",
                wf.name, wf.version
            )),
        ),
        ("input", yaml(input)),
    ];
    if !mocks.is_empty() {
        test.push(("mocks", Yaml::Sequence(mocks)));
    }
    if !events.is_empty() {
        test.push(("events", Yaml::Sequence(events)));
    }
    if status == "waiting" {
        // Still running when recorded: the test runs as far as the journal went.
        test.push(("stop_after", s(&after(last - start))));
    }
    test.push(("expect", map(expect)));
    let file = map(vec![
        ("workflow", s(&wf.name)),
        ("start", s(&crate::calendar::time::format_ms(start))),
        ("tests", Yaml::Sequence(vec![map(test)])),
    ]);
    let body = serde_yaml::to_string(&file).map_err(|e| e.to_string())?;
    let redacted = view.to_string().contains(crate::daemon::view::REDACTED);
    let mut out = format!(
        "# Recorded from instance {id} of {} v{} with `casework test --record`.\n\
         # Save it as workflows/{}.test.yaml (or add its test to that file) and run `casework test`.\n",
        wf.name, wf.version, wf.name
    );
    for n in notes(records, redacted) {
        out.push_str(&format!("# {n}\n"));
    }
    out.push_str(&body);
    Ok(out)
}

/// A mock answering one call of `target` with `input` (matched on it when it has one).
fn mock(target: &str, input: &Value, answer: (&str, Yaml)) -> Yaml {
    let mut m = vec![("call", s(target))];
    if !input.is_null() {
        m.push(("when", yaml(input)));
    }
    m.push(answer);
    m.push(("times", Yaml::Number(1.into())));
    map(m)
}

/// The input of the call that `key` (frame, step, attempt) answers.
fn take(pending: &mut Vec<((u32, String, u32), Value)>, key: &(u32, String, u32)) -> Value {
    match pending.iter().position(|(k, _)| k == key) {
        Some(i) => pending.remove(i).1,
        None => Value::Null,
    }
}
