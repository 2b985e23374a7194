//! Journal records, version 1: the facts an instance's state is rebuilt from.
//!
//! Records are persisted, so their JSON shape is a compatibility promise: add fields
//! with `#[serde(default)]`, never rename; a breaking change gets a new version beside
//! this one (see [`crate::journal`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Journal format version written with every record.
pub const VERSION: u32 = 1;

/// A failure of a step, as shown to users and stored in `vars.error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
    /// The step that failed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl StepError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        StepError {
            code: code.into(),
            message: message.into(),
            retryable: false,
            step: None,
        }
    }

    pub fn at(mut self, step: &str) -> Self {
        self.step.get_or_insert_with(|| step.to_string());
        self
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(s) => write!(f, "step `{s}` failed ({}): {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

/// An event delivered from outside (an approval, an acknowledgement, a webhook).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    pub key: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Where a child frame came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildFrame {
    pub frame: u32,
    /// Slot in the parent's results: branch number or item index.
    pub slot: usize,
    pub step: String,
    #[serde(default)]
    pub locals: Map<String, Value>,
}

/// The parent of a subworkflow instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub instance: String,
    pub frame: u32,
    pub step: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Started {
        workflow: String,
        version: u32,
        hash: String,
        input: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRef>,
        at: Millis,
    },
    /// A step finished; `vars` is the whole variable map after it, if it changed.
    StepCompleted {
        frame: u32,
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vars: Option<Map<String, Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        /// Why this path was taken (the switch case or rule result), for "why" questions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        at: Millis,
    },
    /// Written and flushed before the plugin is called.
    CallStarted {
        frame: u32,
        step: String,
        attempt: u32,
        key: String,
        input: Value,
        at: Millis,
    },
    CallSucceeded {
        frame: u32,
        step: String,
        attempt: u32,
        output: Value,
        at: Millis,
    },
    CallFailed {
        frame: u32,
        step: String,
        attempt: u32,
        error: StepError,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Millis>,
        at: Millis,
    },
    WaitStarted {
        frame: u32,
        step: String,
        events: Vec<String>,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<Millis>,
        at: Millis,
    },
    EventReceived {
        frame: u32,
        step: String,
        event: Event,
        at: Millis,
    },
    SleepStarted {
        frame: u32,
        step: String,
        until: Millis,
        at: Millis,
    },
    /// A sleep ended, a retry delay passed, or a wait timed out.
    TimerFired {
        frame: u32,
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        at: Millis,
    },
    ChildrenStarted {
        frame: u32,
        step: String,
        children: Vec<ChildFrame>,
        /// For foreach: the whole list (only on the first record of the step).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        items: Option<Vec<Value>>,
        at: Millis,
    },
    SubStarted {
        frame: u32,
        step: String,
        child: String,
        workflow: String,
        input: Value,
        at: Millis,
    },
    SubFinished {
        frame: u32,
        step: String,
        child: String,
        result: Result<Value, StepError>,
        at: Millis,
    },
    /// A step failed for good; `next` is the `on_error` step taken, if any.
    StepFailed {
        frame: u32,
        step: String,
        error: StepError,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        at: Millis,
    },
    CancelRequested {
        reason: String,
        at: Millis,
    },
    /// An operator asked to run a failed instance's failed step again (`POST
    /// /v1/instances/{id}/retry`): the instance is running again from `step`, with the
    /// variables it had when it failed.
    RetryRequested {
        step: String,
        at: Millis,
    },
    /// An operator held the instance (`POST /v1/instances/{id}/pause`): no step begins, no
    /// timer fires and no event is taken until it is resumed.
    Paused {
        by: String,
        reason: String,
        at: Millis,
    },
    /// An operator let a held instance go on: timers that fell due meanwhile fire now.
    Resumed {
        by: String,
        reason: String,
        at: Millis,
    },
    /// This instance runs an ended one again (`POST /v1/instances/{id}/rerun`): the second
    /// record of its journal. Its one path begins at `step` (instead of the first step),
    /// with `vars` as its variables: the ended instance's, with the operator's edits.
    RerunOf {
        instance: String,
        step: String,
        #[serde(default)]
        vars: Map<String, Value>,
        by: String,
        reason: String,
        at: Millis,
    },
    /// This ended instance runs again from `step` as `instance` (see `RerunOf`), with
    /// `vars`: written before `instance` is created, so whoever asks again after a crash
    /// creates it from here. `key` is the client's idempotency key, if one came.
    RerunAs {
        instance: String,
        step: String,
        #[serde(default)]
        vars: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        by: String,
        reason: String,
        at: Millis,
    },
    /// An operator moved the instance to another version of its workflow (`casework
    /// migrate`): `frame`, parked at `from_step` of the version with `from_hash`, goes on
    /// from `to_step` of the version with `to_hash`, with `vars` (when the move set any) as
    /// the whole variable map. Records after this one belong to the new version.
    Migrated {
        frame: u32,
        from_version: u32,
        from_hash: String,
        from_step: String,
        to_version: u32,
        to_hash: String,
        to_step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vars: Option<Map<String, Value>>,
        by: String,
        reason: String,
        at: Millis,
    },
    /// Completed steps are undone, in this order (newest first), before the instance ends.
    CompensationStarted {
        steps: Vec<String>,
        error: StepError,
        at: Millis,
    },
    Completed {
        output: Value,
        at: Millis,
    },
    Failed {
        error: StepError,
        at: Millis,
    },
    Cancelled {
        reason: String,
        at: Millis,
    },
}

impl Record {
    pub fn at(&self) -> Millis {
        match self {
            Record::Started { at, .. }
            | Record::StepCompleted { at, .. }
            | Record::CallStarted { at, .. }
            | Record::CallSucceeded { at, .. }
            | Record::CallFailed { at, .. }
            | Record::WaitStarted { at, .. }
            | Record::EventReceived { at, .. }
            | Record::SleepStarted { at, .. }
            | Record::TimerFired { at, .. }
            | Record::ChildrenStarted { at, .. }
            | Record::SubStarted { at, .. }
            | Record::SubFinished { at, .. }
            | Record::StepFailed { at, .. }
            | Record::CancelRequested { at, .. }
            | Record::RetryRequested { at, .. }
            | Record::Paused { at, .. }
            | Record::Resumed { at, .. }
            | Record::Migrated { at, .. }
            | Record::RerunOf { at, .. }
            | Record::RerunAs { at, .. }
            | Record::CompensationStarted { at, .. }
            | Record::Completed { at, .. }
            | Record::Failed { at, .. }
            | Record::Cancelled { at, .. } => *at,
        }
    }

    /// The record's kind, as written in its `record` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Started { .. } => "started",
            Record::StepCompleted { .. } => "step_completed",
            Record::CallStarted { .. } => "call_started",
            Record::CallSucceeded { .. } => "call_succeeded",
            Record::CallFailed { .. } => "call_failed",
            Record::WaitStarted { .. } => "wait_started",
            Record::EventReceived { .. } => "event_received",
            Record::SleepStarted { .. } => "sleep_started",
            Record::TimerFired { .. } => "timer_fired",
            Record::ChildrenStarted { .. } => "children_started",
            Record::SubStarted { .. } => "sub_started",
            Record::SubFinished { .. } => "sub_finished",
            Record::StepFailed { .. } => "step_failed",
            Record::CancelRequested { .. } => "cancel_requested",
            Record::RetryRequested { .. } => "retry_requested",
            Record::Paused { .. } => "paused",
            Record::Resumed { .. } => "resumed",
            Record::Migrated { .. } => "migrated",
            Record::RerunOf { .. } => "rerun_of",
            Record::RerunAs { .. } => "rerun_as",
            Record::CompensationStarted { .. } => "compensation_started",
            Record::Completed { .. } => "completed",
            Record::Failed { .. } => "failed",
            Record::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether this record ends the instance.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Record::Completed { .. } | Record::Failed { .. } | Record::Cancelled { .. }
        )
    }
}

/// A record as stored: the format version plus the record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub v: u32,
    #[serde(flatten)]
    pub record: Record,
}
