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
mod migrate;
#[cfg(test)]
mod tests;

use crate::compile::CompiledWorkflow;
use crate::definition::Join;
use crate::journal::{Millis, ParentRef, Record, StepError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub use migrate::{MigrateRefused, Move};

/// Upper bound on steps one instance may execute, so a loop through waits still ends.
pub const MAX_TRANSITIONS: u64 = 100_000;
/// Upper bound on concurrently live frames (parallel branches and foreach items).
pub const MAX_FRAMES: usize = 1_000;
/// Longest list a foreach may iterate.
pub const MAX_FOREACH_ITEMS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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

/// What a frame is doing at its current step. Frames are the instance's own business:
/// outside `runtime` they are read only through `Instance`'s queries.
#[derive(Clone, Debug, PartialEq)]
pub(in crate::runtime) enum FrameState {
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

/// One step's wait, as [`Instance::waiting`] tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub step: String,
    /// Event types it waits for (empty for a sleep or a retry's backoff).
    pub events: Vec<String>,
    /// When the wait gives up, the sleep ends or the retry runs.
    pub until: Option<Millis>,
}

/// A parallel or foreach step waiting for its children.
#[derive(Clone, Debug, PartialEq)]
pub(in crate::runtime) struct Join_ {
    join: Join,
    foreach: bool,
    /// Live child frame per slot.
    children: BTreeMap<usize, u32>,
    results: BTreeMap<usize, Value>,
    items: Vec<Value>,
    next_item: usize,
    total: usize,
    concurrency: usize,
    slot_names: Vec<String>,
}

/// One thread of execution: the main path, a branch or item, or a compensation.
#[derive(Clone, Debug, PartialEq)]
pub(in crate::runtime) struct Frame {
    parent: Option<(u32, usize)>,
    at: usize,
    pub(in crate::runtime) state: FrameState,
    locals: Map<String, Value>,
    output: Value,
    /// A compensation frame: when it ends, the next compensation runs.
    compensation: bool,
    /// When the frame entered its current step (journal time), for step durations.
    entered_at: Millis,
}

/// A step that ended, in journal time (metrics). Collected only while an input is
/// handled ([`Instance::step`]), so replaying a long journal keeps nothing.
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
    /// The workflow allows one open instance per key, and another took this one's key
    /// after it failed.
    #[error(
        "instance {0} is open for this instance's key and the workflow allows one at a time; \
         retry once it has finished, or cancel it first"
    )]
    KeyOpen(String),
}

/// An ended instance's decision to run again as `instance` from `step` with `vars`
/// (`Record::RerunAs`), journaled before `instance` is created.
#[derive(Clone, Debug, PartialEq)]
pub struct RerunLink {
    pub instance: String,
    pub step: String,
    pub vars: Map<String, Value>,
    /// The client's idempotency key, if one came.
    pub key: Option<String>,
    pub by: String,
    pub reason: String,
    pub at: Millis,
}

/// Who held an instance, why and since when ([`Instance::hold`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub by: String,
    pub reason: String,
    pub at: Millis,
}

/// Why a pause or resume was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldRefused {
    #[error(
        "the instance has ended ({0}); only running or waiting instances can be paused or resumed"
    )]
    Ended(&'static str),
    #[error("the instance is being cancelled; it ends once its compensations have run")]
    Cancelling,
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
    id: String,
    workflow: String,
    version: u32,
    hash: String,
    input: Value,
    vars: Map<String, Value>,
    pub(in crate::runtime) frames: BTreeMap<u32, Frame>,
    next_frame: u32,
    status: Status,
    output: Option<Value>,
    error: Option<StepError>,
    parent: Option<ParentRef>,
    idempotency_key: Option<String>,
    /// Completed steps with a compensation, oldest first: (step, compensation step).
    compensable: Vec<(String, String)>,
    pending_compensations: Vec<String>,
    final_error: Option<StepError>,
    cancel_reason: Option<String>,
    visits: BTreeMap<String, u32>,
    /// Ids of the events this instance has received: the same event sent again (after a
    /// crash lost the daemon's answer to it) is not taken twice, by this wait or a later one.
    pub(in crate::runtime) received: std::collections::BTreeSet<String>,
    /// Instances that run this one again (`RerunAs` records), oldest first.
    pub(in crate::runtime) reruns: Vec<RerunLink>,
    /// Set while an operator holds the instance: nothing advances, its timers and waits
    /// are out of the index (events for it wait in the inbox) until it is resumed.
    pub(in crate::runtime) hold: Option<Hold>,
    /// The top-level step whose failure took the instance off its path (a retry runs it again).
    failure_origin: Option<String>,
    /// Compensations ran: the completed work was undone, so a retry would be wrong.
    compensated: bool,
    /// Steps ended by the records applied since this was set to `Some` (metrics only).
    pub(in crate::runtime) timings: Option<Vec<StepTiming>>,
    transitions: u64,
    records: u64,
    started_at: Millis,
    updated_at: Millis,
    /// The `search:` attribute values worked out at the end of the last step (not
    /// journaled: they follow from the state, so `replay` works them out again).
    pub(in crate::runtime) search: Vec<(String, String)>,
    /// Effects handed to the driver so far (not journaled: after a load nothing has been
    /// carried out in this process, so everything in hand is handed out again).
    pub(in crate::runtime) issued: Vec<Effect>,
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

    /// Rebuild an instance from its journal, each record with the version it was written
    /// under: the start's, then each `Migrated` record's. `pinned` gives the version with
    /// a hash (`hash` when the journal is empty). Returns the version it runs now.
    pub fn replay_pinned(
        id: &str,
        hash: &str,
        records: &[Record],
        mut pinned: impl FnMut(&str) -> Result<std::sync::Arc<CompiledWorkflow>, String>,
    ) -> Result<(Instance, std::sync::Arc<CompiledWorkflow>), String> {
        let first = match records.first() {
            Some(Record::Started { hash, .. }) => hash.as_str(),
            _ => hash,
        };
        let mut wf = pinned(first)?;
        let mut inst = Instance::empty(id);
        for r in records {
            if let Record::Migrated { to_hash, .. } = r {
                wf = pinned(to_hash)?;
            }
            inst.apply(&wf, r);
        }
        inst.search = inst.search_values(&wf, inst.updated_at);
        Ok((inst, wf))
    }

    /// Rebuild an instance from its journal, for a journal written under one version.
    pub fn replay(id: &str, wf: &CompiledWorkflow, records: &[Record]) -> Instance {
        let mut inst = Instance::empty(id);
        for r in records {
            inst.apply(wf, r);
        }
        // What its last step left in the index, so the next step removes what it changes.
        inst.search = inst.search_values(wf, inst.updated_at);
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
            received: Default::default(),
            reruns: Vec::new(),
            hold: None,
            failure_origin: None,
            compensated: false,
            timings: None,
            transitions: 0,
            records: 0,
            started_at: 0,
            updated_at: 0,
            search: Vec::new(),
            issued: Vec::new(),
        }
    }

    /// Start a new instance: returns it with its first record applied.
    pub fn start(id: &str, wf: &CompiledWorkflow, record: Record) -> Instance {
        let mut inst = Instance::empty(id);
        inst.apply(wf, &record);
        inst
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The workflow's name.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The instances that run this ended one again (its `RerunAs` records), oldest first.
    pub fn reruns(&self) -> &[RerunLink] {
        &self.reruns
    }

    /// The source hash the instance is pinned to.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn input(&self) -> &Value {
        &self.input
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    pub fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref()
    }

    pub fn vars(&self) -> &Map<String, Value> {
        &self.vars
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// What the instance completed with (`None` until it completes).
    pub fn output(&self) -> Option<&Value> {
        self.output.as_ref()
    }

    /// Why the instance failed or was cancelled (`None` while it has not).
    pub fn error(&self) -> Option<&StepError> {
        self.error.as_ref()
    }

    /// How many journal records have been applied: the journal's length.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// When the instance started (its start record's time).
    pub fn started_at(&self) -> Millis {
        self.started_at
    }

    /// The time of the newest record applied.
    pub fn updated_at(&self) -> Millis {
        self.updated_at
    }

    /// Nothing can happen until something from outside arrives (event, timer, call result).
    /// Held by an operator (and not being cancelled: a cancel ends a held instance).
    pub fn hold(&self) -> Option<&Hold> {
        self.hold.as_ref().filter(|_| self.cancel_reason.is_none())
    }

    pub fn is_parked(&self) -> bool {
        if self.hold().is_some() && !self.status.is_final() {
            // Only a call in flight can still happen: its result is journaled, then held.
            return !self
                .frames
                .values()
                .any(|f| matches!(f.state, FrameState::Calling { .. }));
        }
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

    /// What the instance waits for, per step that waits: the event types of a wait and
    /// when it gives up, or when a sleep or a retry's backoff ends. Keys are left out:
    /// they may be personal data.
    pub fn waiting(&self, wf: &CompiledWorkflow) -> Vec<Waiting> {
        self.frames
            .values()
            .filter_map(|f| {
                let (events, until) = match &f.state {
                    FrameState::Waiting {
                        events, deadline, ..
                    } => (events.clone(), *deadline),
                    FrameState::Sleeping { until } | FrameState::Backoff { until, .. } => {
                        (Vec::new(), Some(*until))
                    }
                    _ => return None,
                };
                Some(Waiting {
                    step: wf.steps.get(f.at)?.id.clone(),
                    events,
                    until,
                })
            })
            .collect()
    }

    /// The key a frame waits with for an event of `event_type`, if one waits for it (the
    /// first such frame): what `casework run` delivers its next event to.
    pub fn waiting_key(&self, event_type: &str) -> Option<&str> {
        self.frames.values().find_map(|f| match &f.state {
            FrameState::Waiting { events, key, .. } if events.iter().any(|e| e == event_type) => {
                Some(key.as_str())
            }
            _ => None,
        })
    }

    /// Whether a timer firing for `frame` now ends its step (a sleep that ends, a wait
    /// that times out), rather than starting a retry or finding nothing: the test
    /// runner's path lists such steps.
    pub fn timer_ends_step(&self, frame: u32) -> bool {
        matches!(
            self.frames.get(&frame).map(|f| &f.state),
            Some(FrameState::Sleeping { .. } | FrameState::Waiting { .. })
        )
    }

    /// The step the main path (the top-level frame that is not a compensation) is at.
    pub fn main_step<'w>(&self, wf: &'w CompiledWorkflow) -> Option<&'w crate::compile::Step> {
        self.frames
            .values()
            .find(|f| f.parent.is_none() && !f.compensation)
            .and_then(|f| wf.steps.get(f.at))
    }
}
