//! What users see of an instance (`casework inspect`, `GET /v1/instances/{id}`), with
//! sensitive values redacted.
//!
//! These are the API's own response types: built from the runtime's state and the
//! journal by explicit conversions, never by serializing journal types, so the journal
//! format can change (a `journal::v2`) while what clients read stays as `openapi.json`
//! describes it.

use crate::compile::CompiledWorkflow;
use crate::journal::{Record, StepError};
use crate::runtime::Instance;
use serde::Serialize;
use serde_json::{json, Map, Value};

pub const REDACTED: &str = "[redacted]";

/// One instance in `GET /v1/instances`: its index entry, with times in RFC 3339 like
/// every other time the API gives (the store keeps epoch milliseconds).
#[derive(Debug, Serialize)]
pub struct InstanceSummary<'a> {
    pub id: &'a str,
    pub workflow: &'a str,
    pub version: u32,
    pub hash: &'a str,
    pub status: &'a str,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<&'a str>,
}

impl<'a> From<&'a crate::store::InstanceMeta> for InstanceSummary<'a> {
    fn from(m: &'a crate::store::InstanceMeta) -> Self {
        use crate::calendar::time::format_ms;
        InstanceSummary {
            id: &m.id,
            workflow: &m.workflow,
            version: m.version,
            hash: &m.hash,
            status: &m.status,
            created_at: format_ms(m.created_at),
            updated_at: format_ms(m.updated_at),
            parent: m.parent.as_deref(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub status: String,
    pub current: Vec<CurrentStep>,
    /// What the instance waits for and until when (empty unless it waits).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WaitingView>,
    /// Set while an operator holds the instance: who, why, since when (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<PausedView>,
    pub input: Value,
    pub vars: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepErrorView>,
    pub journal: Vec<JournalEntry>,
}

/// One step's wait: the event types it waits for, and when it gives up (RFC 3339), or
/// when a sleep or a retry's backoff ends.
#[derive(Debug, Serialize)]
pub struct WaitingView {
    pub step: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PausedView {
    pub by: String,
    pub reason: String,
    pub since: String,
}

#[derive(Debug, Serialize)]
pub struct CurrentStep {
    pub step: String,
    pub doing: &'static str,
}

/// A step's failure as the API shows it (the `StepError` schema in `openapi.json`).
///
/// Its own type rather than the journal's [`StepError`], so that a change in the journal
/// format does not change what clients read.
#[derive(Debug, Serialize)]
pub struct StepErrorView {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl From<&StepError> for StepErrorView {
    fn from(e: &StepError) -> Self {
        StepErrorView {
            code: e.code.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
            step: e.step.clone(),
        }
    }
}

/// One journal record as the API shows it: an object whose `record` names the kind and
/// whose `at` is when it happened, with the record's own fields beside them.
///
/// The journal format is a storage promise and may gain a new version (`journal::v2`);
/// this is an API promise and stays as it is. So it is built field by field from a
/// [`Record`] instead of serializing the record: a new journal version changes this
/// mapping, not what clients read. Today every entry has exactly the JSON of the v1
/// record it came from, which is what the API has always shown.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct JournalEntry(Map<String, Value>);

impl JournalEntry {
    /// The entry with every sensitive value replaced, in any field (see [`redact`]).
    fn redacted(self, secrets: &[String]) -> JournalEntry {
        JournalEntry(
            self.0
                .into_iter()
                .map(|(k, v)| (k, redact(v, secrets)))
                .collect(),
        )
    }
}

/// The fields of a journal entry that hold an instant.
const TIME_FIELDS: &[&str] = &["at", "retry_at", "deadline", "until"];

/// The record a journal entry shows, for clients of this crate that describe entries
/// (`casework inspect`): the entry with its RFC 3339 times back in epoch milliseconds.
/// `None` when it is no record this build knows (a newer daemon's, say).
pub fn record_of_entry(entry: &Value) -> Option<Record> {
    let mut fields = entry.as_object()?.clone();
    for key in TIME_FIELDS {
        if let Some(Value::String(t)) = fields.get(*key) {
            let ms = chrono::DateTime::parse_from_rfc3339(t)
                .ok()?
                .timestamp_millis();
            fields.insert((*key).to_string(), ms.into());
        }
    }
    serde_json::from_value(Value::Object(fields)).ok()
}

impl From<&Record> for JournalEntry {
    fn from(r: &Record) -> Self {
        let mut e = Entry(Map::new());
        match r {
            Record::Started {
                workflow,
                version,
                hash,
                input,
                idempotency_key,
                parent,
                at,
            } => {
                e.put("record", "started");
                e.put("workflow", workflow);
                e.put("version", version);
                e.put("hash", hash);
                e.put("input", input);
                e.put_some("idempotency_key", idempotency_key);
                if let Some(p) = parent {
                    e.put(
                        "parent",
                        json!({"instance": p.instance, "frame": p.frame, "step": p.step}),
                    );
                }
                e.time("at", *at);
            }
            Record::StepCompleted {
                frame,
                step,
                vars,
                output,
                next,
                reason,
                at,
            } => {
                e.put("record", "step_completed");
                e.frame_step(*frame, step);
                e.put_some("vars", vars);
                e.put_some("output", output);
                e.put_some("next", next);
                e.put_some("reason", reason);
                e.time("at", *at);
            }
            Record::CallStarted {
                frame,
                step,
                attempt,
                key,
                input,
                at,
            } => {
                e.put("record", "call_started");
                e.frame_step(*frame, step);
                e.put("attempt", attempt);
                e.put("key", key);
                e.put("input", input);
                e.time("at", *at);
            }
            Record::CallSucceeded {
                frame,
                step,
                attempt,
                output,
                at,
            } => {
                e.put("record", "call_succeeded");
                e.frame_step(*frame, step);
                e.put("attempt", attempt);
                e.put("output", output);
                e.time("at", *at);
            }
            Record::CallFailed {
                frame,
                step,
                attempt,
                error,
                retry_at,
                at,
            } => {
                e.put("record", "call_failed");
                e.frame_step(*frame, step);
                e.put("attempt", attempt);
                e.error("error", error);
                e.time_some("retry_at", *retry_at);
                e.time("at", *at);
            }
            Record::WaitStarted {
                frame,
                step,
                events,
                key,
                deadline,
                at,
            } => {
                e.put("record", "wait_started");
                e.frame_step(*frame, step);
                e.put("events", events);
                e.put("key", key);
                e.time_some("deadline", *deadline);
                e.time("at", *at);
            }
            Record::EventReceived {
                frame,
                step,
                event,
                at,
            } => {
                e.put("record", "event_received");
                e.frame_step(*frame, step);
                let mut ev = Entry(Map::new());
                ev.put("type", &event.event_type);
                ev.put("key", &event.key);
                ev.put("data", &event.data);
                ev.put_some("id", &event.id);
                e.put("event", ev.0);
                e.time("at", *at);
            }
            Record::SleepStarted {
                frame,
                step,
                until,
                at,
            } => {
                e.put("record", "sleep_started");
                e.frame_step(*frame, step);
                e.time("until", *until);
                e.time("at", *at);
            }
            Record::TimerFired {
                frame,
                step,
                next,
                at,
            } => {
                e.put("record", "timer_fired");
                e.frame_step(*frame, step);
                e.put_some("next", next);
                e.time("at", *at);
            }
            Record::ChildrenStarted {
                frame,
                step,
                children,
                items,
                at,
            } => {
                e.put("record", "children_started");
                e.frame_step(*frame, step);
                let children: Vec<Value> = children
                    .iter()
                    .map(|c| {
                        json!({"frame": c.frame, "slot": c.slot, "step": c.step, "locals": c.locals})
                    })
                    .collect();
                e.put("children", children);
                e.put_some("items", items);
                e.time("at", *at);
            }
            Record::SubStarted {
                frame,
                step,
                child,
                workflow,
                input,
                at,
            } => {
                e.put("record", "sub_started");
                e.frame_step(*frame, step);
                e.put("child", child);
                e.put("workflow", workflow);
                e.put("input", input);
                e.time("at", *at);
            }
            Record::SubFinished {
                frame,
                step,
                child,
                result,
                at,
            } => {
                e.put("record", "sub_finished");
                e.frame_step(*frame, step);
                e.put("child", child);
                // `{"Ok": output}` or `{"Err": error}`, as the API has always shown it.
                let mut outcome = Entry(Map::new());
                match result {
                    Ok(v) => outcome.put("Ok", v),
                    Err(err) => outcome.error("Err", err),
                }
                e.put("result", outcome.0);
                e.time("at", *at);
            }
            Record::StepFailed {
                frame,
                step,
                error,
                next,
                at,
            } => {
                e.put("record", "step_failed");
                e.frame_step(*frame, step);
                e.error("error", error);
                e.put_some("next", next);
                e.time("at", *at);
            }
            Record::CancelRequested { reason, at } => {
                e.put("record", "cancel_requested");
                e.put("reason", reason);
                e.time("at", *at);
            }
            Record::Cancelled { reason, at } => {
                e.put("record", "cancelled");
                e.put("reason", reason);
                e.time("at", *at);
            }
            Record::Paused { by, reason, at } => {
                e.put("record", "paused");
                e.put("by", by);
                e.put("reason", reason);
                e.time("at", *at);
            }
            Record::Resumed { by, reason, at } => {
                e.put("record", "resumed");
                e.put("by", by);
                e.put("reason", reason);
                e.time("at", *at);
            }
            Record::RerunOf {
                instance,
                step,
                vars,
                by,
                reason,
                at,
            } => {
                e.put("record", "rerun_of");
                e.put("instance", instance);
                e.put("step", step);
                e.put("vars", vars);
                e.put("by", by);
                e.put("reason", reason);
                e.time("at", *at);
            }
            // The client's idempotency key is left out, as a start's header is.
            Record::RerunAs {
                instance,
                step,
                vars,
                key: _,
                by,
                reason,
                at,
            } => {
                e.put("record", "rerun_as");
                e.put("instance", instance);
                e.put("step", step);
                e.put("vars", vars);
                e.put("by", by);
                e.put("reason", reason);
                e.time("at", *at);
            }
            Record::Migrated {
                frame,
                from_version,
                from_hash,
                from_step,
                to_version,
                to_hash,
                to_step,
                vars,
                by,
                reason,
                at,
            } => {
                e.put("record", "migrated");
                e.put("frame", frame);
                e.put("from_version", from_version);
                e.put("from_hash", from_hash);
                e.put("from_step", from_step);
                e.put("to_version", to_version);
                e.put("to_hash", to_hash);
                e.put("to_step", to_step);
                e.put_some("vars", vars);
                e.put("by", by);
                e.put("reason", reason);
                e.time("at", *at);
            }
            Record::RetryRequested { step, at } => {
                e.put("record", "retry_requested");
                e.put("step", step);
                e.time("at", *at);
            }
            Record::CompensationStarted { steps, error, at } => {
                e.put("record", "compensation_started");
                e.put("steps", steps);
                e.error("error", error);
                e.time("at", *at);
            }
            Record::Completed { output, at } => {
                e.put("record", "completed");
                e.put("output", output);
                e.time("at", *at);
            }
            Record::Failed { error, at } => {
                e.put("record", "failed");
                e.error("error", error);
                e.time("at", *at);
            }
        }
        JournalEntry(e.0)
    }
}

/// An object being filled in, field by field.
struct Entry(Map<String, Value>);

impl Entry {
    fn put(&mut self, key: &str, value: impl Serialize) {
        self.0.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// An instant, in RFC 3339 like every other time the API gives (the journal keeps
    /// epoch milliseconds).
    fn time(&mut self, key: &str, ms: crate::journal::Millis) {
        self.put(key, crate::calendar::time::format_ms(ms));
    }

    fn time_some(&mut self, key: &str, ms: Option<crate::journal::Millis>) {
        if let Some(ms) = ms {
            self.time(key, ms);
        }
    }

    /// A field left out when it has no value.
    fn put_some<T: Serialize>(&mut self, key: &str, value: &Option<T>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    fn frame_step(&mut self, frame: u32, step: &str) {
        self.put("frame", frame);
        self.put("step", step);
    }

    fn error(&mut self, key: &str, error: &StepError) {
        self.put(key, StepErrorView::from(error));
    }
}

/// Build the view of an instance from its journal.
pub fn instance_view(
    id: &str,
    status: &str,
    inst: &Instance,
    wf: &CompiledWorkflow,
    journal: &[Record],
) -> InstanceView {
    let secrets = sensitive_values(wf, inst.input());
    let redact = |v: Value| redact(v, &secrets);
    InstanceView {
        id: id.to_string(),
        workflow: inst.workflow().to_string(),
        version: inst.version(),
        status: status.to_string(),
        current: inst
            .current_steps(wf)
            .into_iter()
            .map(|(_, step, doing)| CurrentStep { step, doing })
            .collect(),
        waiting: inst
            .waiting(wf)
            .into_iter()
            .map(|w| WaitingView {
                step: w.step,
                events: w.events,
                until: w.until.map(crate::calendar::time::format_ms),
            })
            .collect(),
        paused: inst.hold().map(|h| PausedView {
            by: h.by.clone(),
            reason: h.reason.clone(),
            since: crate::calendar::time::format_ms(h.at),
        }),
        input: redact(inst.input().clone()),
        vars: redact(Value::Object(inst.vars().clone())),
        output: inst.output().cloned().map(redact),
        error: inst.error().map(StepErrorView::from),
        journal: journal
            .iter()
            .map(|r| JournalEntry::from(r).redacted(&secrets))
            .collect(),
    }
}

/// The values of inputs marked `sensitive: true` (strings and numbers worth hiding).
pub fn sensitive_values(wf: &CompiledWorkflow, input: &Value) -> Vec<String> {
    wf.sensitive_inputs()
        .filter_map(|name| match input.get(name)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
        .collect()
}

/// Replace every occurrence of a sensitive value, wherever it was copied to, and every
/// write-only token ([`crate::daemon::driver::write_only`]).
pub fn redact(mut v: Value, secrets: &[String]) -> Value {
    crate::daemon::driver::write_only::redact(&mut v);
    if secrets.is_empty() {
        return v;
    }
    redact_values(v, secrets)
}

fn redact_values(v: Value, secrets: &[String]) -> Value {
    match v {
        Value::String(s) => {
            let mut out = s;
            for secret in secrets {
                if out.contains(secret.as_str()) {
                    out = out.replace(secret.as_str(), REDACTED);
                }
            }
            Value::String(out)
        }
        Value::Number(n) if secrets.contains(&n.to_string()) => Value::String(REDACTED.into()),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| redact_values(i, secrets))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, redact_values(v, secrets)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{ChildFrame, Event, ParentRef};

    fn error(step: Option<&str>) -> StepError {
        StepError {
            code: "declined".into(),
            message: "card declined".into(),
            retryable: true,
            step: step.map(str::to_string),
        }
    }

    /// One record of every kind, each optional field both set and left out.
    fn every_kind() -> Vec<Record> {
        let vars: Map<String, Value> = json!({"n": 1}).as_object().unwrap().clone();
        vec![
            Record::Started {
                workflow: "w".into(),
                version: 2,
                hash: "ab".into(),
                input: json!({"x": 1}),
                idempotency_key: Some("k".into()),
                parent: Some(ParentRef {
                    instance: "p".into(),
                    frame: 3,
                    step: "s".into(),
                }),
                at: 1,
            },
            Record::Started {
                workflow: "w".into(),
                version: 1,
                hash: "ab".into(),
                input: Value::Null,
                idempotency_key: None,
                parent: None,
                at: 1,
            },
            Record::StepCompleted {
                frame: 0,
                step: "a".into(),
                vars: Some(vars.clone()),
                output: Some(json!([1])),
                next: Some("b".into()),
                reason: Some("case 1 matched".into()),
                at: 2,
            },
            Record::StepCompleted {
                frame: 0,
                step: "a".into(),
                vars: None,
                output: None,
                next: None,
                reason: None,
                at: 2,
            },
            Record::CallStarted {
                frame: 1,
                step: "c".into(),
                attempt: 1,
                key: "i:c:1".into(),
                input: json!({"amount": 5}),
                at: 3,
            },
            Record::CallSucceeded {
                frame: 1,
                step: "c".into(),
                attempt: 1,
                output: json!({"id": "ch"}),
                at: 4,
            },
            Record::CallFailed {
                frame: 1,
                step: "c".into(),
                attempt: 2,
                error: error(Some("c")),
                retry_at: Some(9),
                at: 5,
            },
            Record::CallFailed {
                frame: 1,
                step: "c".into(),
                attempt: 3,
                error: error(None),
                retry_at: None,
                at: 5,
            },
            Record::WaitStarted {
                frame: 0,
                step: "w".into(),
                events: vec!["approved".into()],
                key: "T-1".into(),
                deadline: Some(60),
                at: 6,
            },
            Record::WaitStarted {
                frame: 0,
                step: "w".into(),
                events: vec![],
                key: "T-1".into(),
                deadline: None,
                at: 6,
            },
            Record::EventReceived {
                frame: 0,
                step: "w".into(),
                event: Event {
                    event_type: "approved".into(),
                    key: "T-1".into(),
                    data: json!({"by": "ann"}),
                    id: Some("e1".into()),
                },
                at: 7,
            },
            Record::EventReceived {
                frame: 0,
                step: "w".into(),
                event: Event {
                    event_type: "approved".into(),
                    key: "T-1".into(),
                    data: Value::Null,
                    id: None,
                },
                at: 7,
            },
            Record::SleepStarted {
                frame: 0,
                step: "z".into(),
                until: 100,
                at: 8,
            },
            Record::TimerFired {
                frame: 0,
                step: "z".into(),
                next: Some("late".into()),
                at: 100,
            },
            Record::TimerFired {
                frame: 0,
                step: "z".into(),
                next: None,
                at: 100,
            },
            Record::ChildrenStarted {
                frame: 0,
                step: "each".into(),
                children: vec![ChildFrame {
                    frame: 4,
                    slot: 0,
                    step: "body".into(),
                    locals: vars.clone(),
                }],
                items: Some(vec![json!("a")]),
                at: 9,
            },
            Record::ChildrenStarted {
                frame: 0,
                step: "par".into(),
                children: vec![],
                items: None,
                at: 9,
            },
            Record::SubStarted {
                frame: 0,
                step: "sub".into(),
                child: "i.sub.1".into(),
                workflow: "child".into(),
                input: json!({}),
                at: 10,
            },
            Record::SubFinished {
                frame: 0,
                step: "sub".into(),
                child: "i.sub.1".into(),
                result: Ok(json!({"done": true})),
                at: 11,
            },
            Record::SubFinished {
                frame: 0,
                step: "sub".into(),
                child: "i.sub.1".into(),
                result: Err(error(Some("inner"))),
                at: 11,
            },
            Record::StepFailed {
                frame: 0,
                step: "c".into(),
                error: error(None),
                next: Some("notify".into()),
                at: 12,
            },
            Record::StepFailed {
                frame: 0,
                step: "c".into(),
                error: error(Some("c")),
                next: None,
                at: 12,
            },
            Record::CancelRequested {
                reason: "customer".into(),
                at: 13,
            },
            Record::RetryRequested {
                step: "c".into(),
                at: 14,
            },
            Record::CompensationStarted {
                steps: vec!["release".into()],
                error: error(None),
                at: 15,
            },
            Record::Completed {
                output: json!({"ok": true}),
                at: 16,
            },
            Record::Failed {
                error: error(Some("c")),
                at: 17,
            },
            Record::Cancelled {
                reason: "customer".into(),
                at: 18,
            },
            Record::Paused {
                by: "token:ops".into(),
                reason: "customer asked to wait".into(),
                at: 19,
            },
            Record::Resumed {
                by: "token:ops".into(),
                reason: "go ahead".into(),
                at: 20,
            },
            Record::RerunOf {
                instance: "old".into(),
                step: "charge".into(),
                vars: vars.clone(),
                by: "token:ops".into(),
                reason: "card updated".into(),
                at: 22,
            },
            Record::RerunAs {
                instance: "new".into(),
                step: "charge".into(),
                vars: vars.clone(),
                key: None,
                by: "token:ops".into(),
                reason: "card updated".into(),
                at: 23,
            },
            Record::Migrated {
                frame: 0,
                from_version: 2,
                from_hash: "h2".into(),
                from_step: "wait_for_approval".into(),
                to_version: 3,
                to_hash: "h3".into(),
                to_step: "await_approval".into(),
                vars: Some(Map::from_iter([("tier".to_string(), json!("manager"))])),
                by: "token:ops".into(),
                reason: "new approval tiers".into(),
                at: 21,
            },
        ]
    }

    #[test]
    fn a_journal_entry_shows_the_v1_record_with_its_times_in_rfc_3339() {
        // The view used to put each record through `serde_json::to_value` (keys sorted);
        // its own type must not change anything of that but the times, which the API
        // gives in RFC 3339 everywhere. A journal v2 will make this comparison moot: then
        // the entries stay as they are here, not as the new records serialize.
        for r in every_kind() {
            let entry = serde_json::to_value(JournalEntry::from(&r)).unwrap();
            let mut record = serde_json::to_value(&r).unwrap();
            for key in TIME_FIELDS {
                if let Some(ms) = record.get(*key).and_then(Value::as_i64) {
                    record[*key] = crate::calendar::time::format_ms(ms).into();
                }
            }
            assert_eq!(entry, record, "{}", r.kind());
            assert!(entry["at"].as_str().unwrap().ends_with('Z'), "{entry}");
        }
    }

    #[test]
    fn inspect_reads_every_entry_back_as_the_record_it_shows() {
        for r in every_kind() {
            let entry = serde_json::to_value(JournalEntry::from(&r)).unwrap();
            assert_eq!(record_of_entry(&entry).as_ref(), Some(&r), "{entry}");
        }
        let unknown = json!({"record": "from_the_future", "at": "2026-01-01T00:00:00Z"});
        assert_eq!(record_of_entry(&unknown), None);
        let bad_time = json!({"record": "cancelled", "reason": "x", "at": "yesterday"});
        assert_eq!(record_of_entry(&bad_time), None);
    }

    #[test]
    fn a_journal_entry_is_the_shape_clients_read() {
        let entry = |r: &Record| serde_json::to_value(JournalEntry::from(r)).unwrap();
        let all = every_kind();
        assert_eq!(
            entry(&all[6]),
            json!({"record": "call_failed", "frame": 1, "step": "c", "attempt": 2,
                   "error": {"code": "declined", "message": "card declined", "retryable": true, "step": "c"},
                   "retry_at": "1970-01-01T00:00:00.009Z", "at": "1970-01-01T00:00:00.005Z"})
        );
        assert_eq!(
            entry(&all[19]),
            json!({"record": "sub_finished", "frame": 0, "step": "sub", "child": "i.sub.1",
                   "result": {"Err": {"code": "declined", "message": "card declined", "retryable": true, "step": "inner"}},
                   "at": "1970-01-01T00:00:00.011Z"})
        );
        assert_eq!(
            serde_json::to_value(StepErrorView::from(&error(None))).unwrap(),
            json!({"code": "declined", "message": "card declined", "retryable": true})
        );
    }
}
