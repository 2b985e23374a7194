//! One workflow instance: its variables, its frames (threads of execution) and its status.
//!
//! This file holds the types, the constructors and the small queries; the rest of the
//! state machine is split by what it does:
//! - [`apply`]: folding a journal record into the state (replay and live alike);
//! - [`decide`]: working out the next record for a frame that can run;
//! - [`join`]: parallel and foreach steps waiting for their children;
//! - [`inputs`]: what arrives from outside (call results, timers, events, children,
//!   retry and cancel);
//! - [`effects`]: what the driver must carry out for the current state.

mod apply;
mod decide;
mod effects;
mod inputs;
mod join;
#[cfg(test)]
mod tests;

use crate::compile::CompiledWorkflow;
use crate::definition::Join;
use crate::journal::{Millis, ParentRef, Record, StepError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Upper bound on steps one instance may execute, so a loop through waits still ends.
pub const MAX_TRANSITIONS: u64 = 100_000;
/// Upper bound on concurrently live frames (parallel branches and foreach items).
pub const MAX_FRAMES: usize = 1_000;
/// Longest list a foreach may iterate.
pub const MAX_FOREACH_ITEMS: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Compensating,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_final(&self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// What a frame is doing at its current step.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameState {
    /// The step at `at` should run now.
    Ready,
    Calling {
        attempt: u32,
        key: String,
        input: Value,
    },
    Backoff {
        attempt: u32,
        key: String,
        until: Millis,
    },
    Waiting {
        events: Vec<String>,
        key: String,
        deadline: Option<Millis>,
    },
    Sleeping {
        until: Millis,
    },
    Joining(Join_),
    Sub {
        child: String,
        workflow: String,
        input: Value,
    },
    /// The frame reached its end with this output (children only; reaped by the parent).
    Done(Value),
    /// The frame failed (children only; the parent's step fails with it).
    Errored(StepError),
}

/// A parallel or foreach step waiting for its children.
#[derive(Clone, Debug, PartialEq)]
pub struct Join_ {
    pub join: Join,
    pub foreach: bool,
    /// Live child frame per slot.
    pub children: BTreeMap<usize, u32>,
    pub results: BTreeMap<usize, Value>,
    pub items: Vec<Value>,
    pub next_item: usize,
    pub total: usize,
    pub concurrency: usize,
    pub slot_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub parent: Option<(u32, usize)>,
    pub at: usize,
    pub state: FrameState,
    pub locals: Map<String, Value>,
    pub output: Value,
    /// A compensation frame: when it ends, the next compensation runs.
    pub compensation: bool,
    /// When the frame entered its current step (journal time), for step durations.
    pub entered_at: Millis,
}

/// A step that ended, in journal time (metrics). Collected only while
/// [`Instance::timings`] is `Some`, so replaying a long journal keeps nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepTiming {
    pub step: String,
    pub millis: Millis,
    pub ok: bool,
}

/// Why a failed instance cannot be retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetryRefused {
    #[error("the instance is {0}, not failed")]
    NotFailed(&'static str),
    #[error("{0}")]
    NotRetryable(String),
}

/// Something the driver must do outside the state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Call {
        frame: u32,
        step: String,
        plugin: String,
        action: String,
        input: Value,
        key: String,
        attempt: u32,
        timeout_ms: u64,
    },
    Timer {
        frame: u32,
        step: String,
        at: Millis,
    },
    Wait {
        frame: u32,
        events: Vec<String>,
        key: String,
    },
    StartChild {
        frame: u32,
        step: String,
        child: String,
        workflow: String,
        input: Value,
    },
    Finished,
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub hash: String,
    pub input: Value,
    pub vars: Map<String, Value>,
    pub frames: BTreeMap<u32, Frame>,
    pub next_frame: u32,
    pub status: Status,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    pub parent: Option<ParentRef>,
    pub idempotency_key: Option<String>,
    /// Completed steps with a compensation, oldest first: (step, compensation step).
    pub compensable: Vec<(String, String)>,
    pending_compensations: Vec<String>,
    final_error: Option<StepError>,
    cancel_reason: Option<String>,
    visits: BTreeMap<String, u32>,
    /// The top-level step whose failure took the instance off its path (a retry runs it again).
    failure_origin: Option<String>,
    /// Compensations ran: the completed work was undone, so a retry would be wrong.
    compensated: bool,
    /// Steps ended by the records applied since this was set to `Some` (metrics only).
    pub timings: Option<Vec<StepTiming>>,
    pub transitions: u64,
    pub records: u64,
    pub started_at: Millis,
    pub updated_at: Millis,
    /// Effects handed to the driver so far (not journaled: after a load nothing has been
    /// carried out in this process, so everything in hand is handed out again).
    pub(super) issued: Vec<Effect>,
}

impl Instance {
    /// The record that starts an instance.
    pub fn start_record(
        wf: &CompiledWorkflow,
        input: Value,
        idempotency_key: Option<String>,
        parent: Option<ParentRef>,
        at: Millis,
    ) -> Record {
        Record::Started {
            workflow: wf.name.clone(),
            version: wf.version,
            hash: wf.hash.clone(),
            input,
            idempotency_key,
            parent,
            at,
        }
    }

    /// Rebuild an instance from its journal.
    pub fn replay(id: &str, wf: &CompiledWorkflow, records: &[Record]) -> Instance {
        let mut inst = Instance::empty(id);
        for r in records {
            inst.apply(wf, r);
        }
        inst
    }

    fn empty(id: &str) -> Instance {
        Instance {
            id: id.to_string(),
            workflow: String::new(),
            version: 0,
            hash: String::new(),
            input: Value::Null,
            vars: Map::new(),
            frames: BTreeMap::new(),
            next_frame: 0,
            status: Status::Running,
            output: None,
            error: None,
            parent: None,
            idempotency_key: None,
            compensable: Vec::new(),
            pending_compensations: Vec::new(),
            final_error: None,
            cancel_reason: None,
            visits: BTreeMap::new(),
            failure_origin: None,
            compensated: false,
            timings: None,
            transitions: 0,
            records: 0,
            started_at: 0,
            updated_at: 0,
            issued: Vec::new(),
        }
    }

    /// Start a new instance: returns it with its first record applied.
    pub fn start(id: &str, wf: &CompiledWorkflow, record: Record) -> Instance {
        let mut inst = Instance::empty(id);
        inst.apply(wf, &record);
        inst
    }

    /// Nothing can happen until something from outside arrives (event, timer, call result).
    pub fn is_parked(&self) -> bool {
        !self.status.is_final()
            && self.frames.values().all(|f| {
                matches!(
                    f.state,
                    FrameState::Waiting { .. }
                        | FrameState::Sleeping { .. }
                        | FrameState::Backoff { .. }
                        | FrameState::Joining(_)
                        | FrameState::Sub { .. }
                        | FrameState::Done(_)
                )
            })
    }

    /// Current steps, for display: (frame, step id, what it is doing).
    pub fn current_steps(&self, wf: &CompiledWorkflow) -> Vec<(u32, String, &'static str)> {
        self.frames
            .iter()
            .filter_map(|(id, f)| {
                let what = match f.state {
                    FrameState::Ready => "ready",
                    FrameState::Calling { .. } => "calling",
                    FrameState::Backoff { .. } => "waiting to retry",
                    FrameState::Waiting { .. } => "waiting for event",
                    FrameState::Sleeping { .. } => "sleeping",
                    FrameState::Joining(_) => "joining",
                    FrameState::Sub { .. } => "waiting for subworkflow",
                    FrameState::Done(_) | FrameState::Errored(_) => return None,
                };
                Some((*id, wf.steps.get(f.at)?.id.clone(), what))
            })
            .collect()
    }
}
