//! One workflow instance: its variables, its frames (threads of execution) and its status.

use crate::journal::*;
use crate::compile::rules::Bindings;
use crate::compile::{CompiledWorkflow, Kind, Sleep};
use crate::definition::Join;
use serde_json::{json, Map, Value};
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

type Outcome = Result<Record, StepError>;

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

    // ---------------------------------------------------------------- apply

    /// Fold one record into the state. Total: a record that does not fit is ignored.
    pub fn apply(&mut self, wf: &CompiledWorkflow, record: &Record) {
        self.records += 1;
        self.updated_at = record.at();
        match record {
            Record::Started {
                workflow,
                version,
                hash,
                input,
                idempotency_key,
                parent,
                at,
            } => {
                self.workflow = workflow.clone();
                self.version = *version;
                self.hash = hash.clone();
                self.input = input.clone();
                self.idempotency_key = idempotency_key.clone();
                self.parent = parent.clone();
                self.started_at = *at;
                self.new_frame(None, wf.entry, Map::new(), false);
            }
            Record::StepCompleted {
                frame,
                step,
                vars,
                output,
                next,
                ..
            } => {
                self.transitions += 1;
                if let Some(v) = vars {
                    self.vars = v.clone();
                }
                let save_as = wf.step(step).and_then(|(_, s)| s.save_as.clone());
                let compensate = wf
                    .step(step)
                    .and_then(|(_, s)| s.compensate)
                    .map(|c| wf.steps[c].id.clone());
                if let (Some(name), Some(out)) = (save_as, output) {
                    self.vars.insert(name, out.clone());
                }
                if let Some(c) = compensate {
                    self.compensable.push((step.clone(), c));
                }
                self.step_ended(*frame, step, true);
                // A join that settled (first branch done, or all) ends its branches: with
                // `join: first` the others are cancelled, their timers, waits and calls
                // dropped (a late call result finds no frame and is ignored).
                self.drop_children(*frame);
                self.move_on(wf, *frame, output.clone(), next.as_deref());
            }
            Record::CallStarted {
                frame,
                step,
                attempt,
                key,
                input,
                ..
            } => {
                self.transitions += 1;
                if *attempt == 1 {
                    *self.visits.entry(step.clone()).or_default() += 1;
                }
                self.set_state(
                    *frame,
                    FrameState::Calling {
                        attempt: *attempt,
                        key: key.clone(),
                        input: input.clone(),
                    },
                );
            }
            Record::CallSucceeded {
                frame,
                step,
                output,
                ..
            } => {
                // Same bookkeeping as a completed step: save the output, move on.
                self.complete_step(wf, *frame, step, Some(output.clone()), record.at());
            }
            Record::CallFailed {
                frame,
                retry_at,
                attempt,
                ..
            } => {
                if let (Some(until), Some(FrameState::Calling { key, .. })) =
                    (retry_at, self.frames.get(frame).map(|f| &f.state))
                {
                    let key = key.clone();
                    self.set_state(
                        *frame,
                        FrameState::Backoff {
                            attempt: attempt + 1,
                            key,
                            until: *until,
                        },
                    );
                }
            }
            Record::WaitStarted {
                frame,
                events,
                key,
                deadline,
                ..
            } => {
                self.transitions += 1;
                self.set_state(
                    *frame,
                    FrameState::Waiting {
                        events: events.clone(),
                        key: key.clone(),
                        deadline: *deadline,
                    },
                );
            }
            Record::EventReceived {
                frame,
                step,
                event,
                at,
            } => {
                let out = json!({"type": event.event_type, "key": event.key, "data": event.data, "id": event.id, "at": crate::compile::rules::format_ms(*at)});
                self.complete_step(wf, *frame, step, Some(out), *at);
            }
            Record::SleepStarted { frame, until, .. } => {
                self.transitions += 1;
                self.set_state(*frame, FrameState::Sleeping { until: *until });
            }
            Record::TimerFired {
                frame,
                step,
                next,
                at,
            } => match self.frames.get(frame).map(|f| f.state.clone()) {
                Some(FrameState::Backoff { attempt, key, .. }) => {
                    // The retry begins: `advance` issues the CallStarted.
                    if let Some(f) = self.frames.get_mut(frame) {
                        f.state = FrameState::Ready;
                        f.locals
                            .insert("__retry".into(), json!({"attempt": attempt, "key": key}));
                    }
                }
                Some(FrameState::Sleeping { .. }) => {
                    self.complete_step(wf, *frame, step, None, *at);
                }
                Some(FrameState::Waiting { .. }) => {
                    let rec = Record::StepCompleted {
                        frame: *frame,
                        step: step.clone(),
                        vars: None,
                        output: Some(json!({"timed_out": true})),
                        next: next.clone(),
                        reason: Some("wait timed out".into()),
                        at: *at,
                    };
                    self.records -= 1;
                    self.apply(wf, &rec);
                }
                _ => {}
            },
            Record::ChildrenStarted {
                frame,
                step,
                children,
                items,
                ..
            } => {
                self.transitions += 1;
                let Some((_, s)) = wf.step(step) else { return };
                if !matches!(
                    self.frames.get(frame).map(|f| &f.state),
                    Some(FrameState::Joining(_))
                ) {
                    let (join, foreach, total, concurrency, slot_names, items) = match &s.kind {
                        Kind::Parallel { join, branches } => (
                            *join,
                            false,
                            branches.len(),
                            branches.len(),
                            branches.iter().map(|b| b.0.clone()).collect(),
                            Vec::new(),
                        ),
                        Kind::Foreach { concurrency, .. } => {
                            let items = items.clone().unwrap_or_default();
                            (
                                Join::All,
                                true,
                                items.len(),
                                *concurrency as usize,
                                Vec::new(),
                                items,
                            )
                        }
                        _ => return,
                    };
                    self.set_state(
                        *frame,
                        FrameState::Joining(Join_ {
                            join,
                            foreach,
                            children: BTreeMap::new(),
                            results: BTreeMap::new(),
                            items,
                            next_item: 0,
                            total,
                            concurrency,
                            slot_names,
                        }),
                    );
                }
                for c in children {
                    let start = wf.index.get(&c.step).copied().unwrap_or(usize::MAX);
                    let id = self.new_frame(Some((*frame, c.slot)), start, c.locals.clone(), false);
                    debug_assert_eq!(id, c.frame);
                    if let Some(FrameState::Joining(j)) =
                        self.frames.get_mut(frame).map(|f| &mut f.state)
                    {
                        j.children.insert(c.slot, id);
                        j.next_item = j.next_item.max(c.slot + 1);
                    }
                }
            }
            Record::SubStarted {
                frame,
                child,
                workflow,
                input,
                ..
            } => {
                self.transitions += 1;
                *self.visits.entry(format!("sub:{}", child)).or_default() += 1;
                self.set_state(
                    *frame,
                    FrameState::Sub {
                        child: child.clone(),
                        workflow: workflow.clone(),
                        input: input.clone(),
                    },
                );
            }
            Record::SubFinished {
                frame,
                step,
                result,
                at,
                ..
            } => {
                if let Ok(out) = result {
                    self.complete_step(wf, *frame, step, Some(out.clone()), *at);
                }
                // A failed child is followed by a StepFailed record.
            }
            Record::StepFailed {
                frame,
                step,
                error,
                next,
                ..
            } => {
                self.transitions += 1;
                self.vars.insert(
                    "error".into(),
                    serde_json::to_value(error.clone().at(step)).unwrap_or(Value::Null),
                );
                self.step_ended(*frame, step, false);
                let main_frame = self
                    .frames
                    .get(frame)
                    .is_some_and(|f| f.parent.is_none() && !f.compensation);
                // Only a failure that ends the instance or goes to the workflow's own
                // `on_error` counts; a step's `on_error` is a path of its own.
                let to_handler = next.is_none()
                    || next.as_ref().and_then(|n| wf.index.get(n)).copied() == wf.on_error;
                if main_frame && to_handler {
                    self.failure_origin.get_or_insert_with(|| step.clone());
                }
                match next {
                    Some(n) => {
                        let at = wf.index.get(n).copied().unwrap_or(usize::MAX);
                        let now = self.updated_at;
                        self.drop_children(*frame);
                        if let Some(f) = self.frames.get_mut(frame) {
                            f.at = at;
                            f.state = FrameState::Ready;
                            f.locals.remove("__retry");
                            f.entered_at = now;
                        }
                    }
                    None => {
                        let error = error.clone().at(step);
                        self.drop_children(*frame);
                        match self.frames.get(frame).map(|f| (f.parent, f.compensation)) {
                            Some((Some(_), _)) => {
                                self.set_state(*frame, FrameState::Errored(error))
                            }
                            Some((None, true)) => {
                                // A failed compensation is recorded; the others still run.
                                self.frames.remove(frame);
                            }
                            _ => {
                                self.frames.remove(frame);
                                self.final_error.get_or_insert(error);
                            }
                        }
                    }
                }
            }
            Record::CancelRequested { reason, .. } => {
                self.cancel_reason = Some(reason.clone());
                self.frames.clear();
            }
            Record::RetryRequested { step, .. } => {
                self.status = Status::Running;
                self.error = None;
                self.final_error = None;
                self.output = None;
                self.failure_origin = None;
                self.frames.clear();
                let at = wf.index.get(step).copied().unwrap_or(usize::MAX);
                self.new_frame(None, at, Map::new(), false);
            }
            Record::CompensationStarted { steps, error, .. } => {
                self.compensated = true;
                self.status = Status::Compensating;
                self.frames.clear();
                self.final_error.get_or_insert(error.clone());
                self.pending_compensations = steps.iter().rev().cloned().collect();
                self.start_next_compensation(wf);
            }
            Record::Completed { output, .. } => {
                self.status = Status::Completed;
                self.output = Some(output.clone());
                self.frames.clear();
            }
            Record::Failed { error, .. } => {
                self.status = Status::Failed;
                self.error = Some(error.clone());
                self.frames.clear();
            }
            Record::Cancelled { reason, .. } => {
                self.status = Status::Cancelled;
                self.error = Some(StepError::new("cancelled", reason.clone()));
                self.frames.clear();
            }
        }
    }

    /// A step finished with `output`: continue at its declared `next`, as a `step_completed` would.
    fn complete_step(
        &mut self,
        wf: &CompiledWorkflow,
        frame: u32,
        step: &str,
        output: Option<Value>,
        at: Millis,
    ) {
        let next = wf
            .step(step)
            .and_then(|(_, s)| s.next.first().copied())
            .map(|i| wf.steps[i].id.clone());
        let rec = Record::StepCompleted {
            frame,
            step: step.to_string(),
            vars: None,
            output,
            next,
            reason: None,
            at,
        };
        // The derived record is not a journal entry of its own.
        self.records -= 1;
        self.apply(wf, &rec);
    }

    fn new_frame(
        &mut self,
        parent: Option<(u32, usize)>,
        at: usize,
        locals: Map<String, Value>,
        compensation: bool,
    ) -> u32 {
        let id = self.next_frame;
        self.next_frame += 1;
        self.frames.insert(
            id,
            Frame {
                parent,
                at,
                state: FrameState::Ready,
                locals,
                output: Value::Null,
                compensation,
                entered_at: self.updated_at,
            },
        );
        id
    }

    /// Note how long `frame` spent in `step` (only while timings are collected).
    fn step_ended(&mut self, frame: u32, step: &str, ok: bool) {
        let now = self.updated_at;
        if let (Some(timings), Some(f)) = (self.timings.as_mut(), self.frames.get(&frame)) {
            timings.push(StepTiming {
                step: step.to_string(),
                millis: (now - f.entered_at).max(0),
                ok,
            });
        }
    }

    fn set_state(&mut self, frame: u32, state: FrameState) {
        if let Some(f) = self.frames.get_mut(&frame) {
            f.state = state;
        }
    }

    fn drop_children(&mut self, frame: u32) {
        let children: Vec<u32> = self
            .frames
            .iter()
            .filter(|(_, f)| f.parent.map(|p| p.0) == Some(frame))
            .map(|(id, _)| *id)
            .collect();
        for c in children {
            self.drop_children(c);
            self.frames.remove(&c);
        }
    }

    fn start_next_compensation(&mut self, wf: &CompiledWorkflow) {
        if let Some(step) = self.pending_compensations.pop() {
            if let Some(&at) = wf.index.get(&step) {
                self.new_frame(None, at, Map::new(), true);
            }
        }
    }

    /// After a step completes: go to `next`, or end the frame.
    fn move_on(
        &mut self,
        wf: &CompiledWorkflow,
        frame: u32,
        output: Option<Value>,
        next: Option<&str>,
    ) {
        let now = self.updated_at;
        let Some(f) = self.frames.get_mut(&frame) else {
            return;
        };
        f.locals.remove("__retry");
        if let Some(o) = output {
            f.output = o;
        }
        match next.and_then(|n| wf.index.get(n)) {
            Some(&at) => {
                f.at = at;
                f.state = FrameState::Ready;
                f.entered_at = now;
            }
            None => {
                let out = f.output.clone();
                match f.parent {
                    Some(_) => f.state = FrameState::Done(out),
                    None if f.compensation => {
                        self.frames.remove(&frame);
                        self.start_next_compensation(wf);
                    }
                    None => {
                        self.frames.remove(&frame);
                        self.output.get_or_insert(out);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- decide

    fn bindings<'a>(&'a self, frame: &'a Frame, now: Millis) -> Bindings<'a> {
        Bindings {
            input: &self.input,
            vars: &self.vars,
            locals: &frame.locals,
            now_ms: now,
            instance: Some(&self.id),
        }
    }

    /// Idempotency key of a call: instance, step and how many times the step was entered.
    fn call_key(&self, step: &str) -> String {
        let visit = self.visits.get(step).copied().unwrap_or(0) + 1;
        format!("{}:{}:{}", self.id, step, visit)
    }

    /// Run every frame that can make progress now. Returns the records produced (already applied).
    pub fn advance(&mut self, wf: &CompiledWorkflow, now: Millis) -> Vec<Record> {
        let mut out = Vec::new();
        while !self.status.is_final() {
            let Some(rec) = self.next_record(wf, now) else {
                break;
            };
            self.apply(wf, &rec);
            out.push(rec);
        }
        out
    }

    fn next_record(&mut self, wf: &CompiledWorkflow, now: Millis) -> Option<Record> {
        if self.transitions >= MAX_TRANSITIONS && self.final_error.is_none() {
            return Some(Record::Failed {
                error: StepError::new(
                    "too_many_steps",
                    format!("instance ran {MAX_TRANSITIONS} steps; is a loop missing its exit?"),
                ),
                at: now,
            });
        }
        if self.frames.len() > MAX_FRAMES {
            return Some(Record::Failed {
                error: StepError::new(
                    "too_many_branches",
                    format!("more than {MAX_FRAMES} branches or items at once"),
                ),
                at: now,
            });
        }
        // The instance has nothing left to run: undo completed work if it is failing, then end it.
        if self.frames.is_empty() {
            let (error, end) = match (&self.cancel_reason, &self.final_error) {
                (Some(reason), _) => (
                    StepError::new("cancelled", reason.clone()),
                    Record::Cancelled {
                        reason: reason.clone(),
                        at: now,
                    },
                ),
                (None, Some(error)) => (
                    error.clone(),
                    Record::Failed {
                        error: error.clone(),
                        at: now,
                    },
                ),
                (None, None) => {
                    return Some(Record::Completed {
                        output: self.output.clone().unwrap_or(Value::Null),
                        at: now,
                    })
                }
            };
            if self.status == Status::Running && !self.compensable.is_empty() {
                let steps = self.compensable.iter().rev().map(|c| c.1.clone()).collect();
                return Some(Record::CompensationStarted {
                    steps,
                    error,
                    at: now,
                });
            }
            return Some(end);
        }
        let ids: Vec<u32> = self.frames.keys().copied().collect();
        for id in ids {
            let frame = self.frames.get(&id)?.clone();
            let rec = match &frame.state {
                FrameState::Ready => Some(self.run_step(wf, id, &frame, now)),
                FrameState::Joining(j) => self.check_join(wf, id, &frame, j, now),
                _ => None,
            };
            if let Some(r) = rec {
                return Some(r);
            }
        }
        None
    }

    /// Where a failure at `step` goes: the step's `on_error`, else the workflow's (top level only).
    fn route_failure(
        &self,
        wf: &CompiledWorkflow,
        frame_id: u32,
        frame: &Frame,
        step: usize,
        error: StepError,
        now: Millis,
    ) -> Record {
        let s = &wf.steps[step];
        let in_handler = wf.on_error == Some(frame.at);
        let next = s.on_error.or(
            if frame.parent.is_none()
                && !frame.compensation
                && !in_handler
                // Once the workflow's handler has been entered, a failure on its path ends
                // the instance instead of entering the handler again (which would loop).
                && self.failure_origin.is_none()
                && self.final_error.is_none()
            {
                wf.on_error
            } else {
                None
            },
        );
        Record::StepFailed {
            frame: frame_id,
            step: s.id.clone(),
            error,
            next: next.map(|n| wf.steps[n].id.clone()),
            at: now,
        }
    }

    fn run_step(&self, wf: &CompiledWorkflow, id: u32, frame: &Frame, now: Millis) -> Record {
        let Some(step) = wf.steps.get(frame.at) else {
            return Record::Failed {
                error: StepError::new("internal", "frame points at no step"),
                at: now,
            };
        };
        match self.decide(wf, id, frame, step, now) {
            Ok(r) => r,
            Err(e) => self.route_failure(wf, id, frame, frame.at, e.at(&step.id), now),
        }
    }

    fn decide(
        &self,
        wf: &CompiledWorkflow,
        id: u32,
        frame: &Frame,
        step: &crate::compile::Step,
        now: Millis,
    ) -> Outcome {
        let rules = &wf.rules;
        let b = self.bindings(frame, now);
        let rule_err =
            |e: crate::compile::rules::RuleError| StepError::new("rule_error", e.message);
        let next_id = |i: Option<&usize>| i.map(|&i| wf.steps[i].id.clone());
        let done = |vars: Option<Map<String, Value>>,
                    output: Option<Value>,
                    next: Option<String>,
                    reason: Option<String>| Record::StepCompleted {
            frame: id,
            step: step.id.clone(),
            vars,
            output,
            next,
            reason,
            at: now,
        };
        Ok(match &step.kind {
            Kind::Rule(ast) => {
                let (value, vars) = rules.eval(ast, &b).map_err(rule_err)?;
                let (next, reason) = if step.next.len() > 1 {
                    let chosen = value
                        .as_str()
                        .and_then(|v| step.next.iter().find(|&&n| wf.steps[n].id == v));
                    match chosen {
                        Some(&n) => (
                            Some(wf.steps[n].id.clone()),
                            Some(format!("rule chose `{}`", wf.steps[n].id)),
                        ),
                        None => {
                            let options: Vec<&str> =
                                step.next.iter().map(|&n| wf.steps[n].id.as_str()).collect();
                            return Err(StepError::new("rule_error", format!("rule must end with one of {} to choose the next step, but gave {value}", options.join(", "))));
                        }
                    }
                } else {
                    (next_id(step.next.first()), None)
                };
                let changed = (vars != self.vars).then_some(vars);
                done(changed, None, next, reason)
            }
            Kind::Switch { cases, default } => {
                for (i, (ast, goto)) in cases.iter().enumerate() {
                    match rules.eval(ast, &b).map_err(rule_err)?.0 {
                        Value::Bool(true) => {
                            return Ok(done(
                                None,
                                None,
                                Some(wf.steps[*goto].id.clone()),
                                Some(format!("case {} matched", i + 1)),
                            ))
                        }
                        Value::Bool(false) | Value::Null => {}
                        other => {
                            return Err(StepError::new(
                                "rule_error",
                                format!("case {} must be true or false, but gave {other}", i + 1),
                            ))
                        }
                    }
                }
                match default {
                    Some(d) => done(
                        None,
                        None,
                        Some(wf.steps[*d].id.clone()),
                        Some("no case matched: default".into()),
                    ),
                    None => {
                        return Err(StepError::new(
                            "no_case_matched",
                            "no case matched and the switch has no `default`",
                        ))
                    }
                }
            }
            Kind::Set(entries) => {
                let mut vars = self.vars.clone();
                for (k, t) in entries {
                    vars.insert(k.clone(), t.render(rules, &b).map_err(rule_err)?);
                }
                done(Some(vars), None, next_id(step.next.first()), None)
            }
            Kind::Call { with, .. } => {
                let (attempt, key) = match frame.locals.get("__retry") {
                    Some(r) => (
                        r["attempt"].as_u64().unwrap_or(2) as u32,
                        r["key"].as_str().unwrap_or_default().to_string(),
                    ),
                    None => (1, self.call_key(&step.id)),
                };
                let input = match with {
                    Some(t) => t.render(rules, &b).map_err(rule_err)?,
                    None => Value::Object(Map::new()),
                };
                Record::CallStarted {
                    frame: id,
                    step: step.id.clone(),
                    attempt,
                    key,
                    input,
                    at: now,
                }
            }
            Kind::Wait {
                events,
                key,
                timeout_ms,
                until,
                ..
            } => {
                let key = match rules.eval(key, &b).map_err(rule_err)?.0 {
                    Value::String(s) => s,
                    Value::Null => {
                        return Err(StepError::new(
                            "rule_error",
                            "wait `key` gave nothing; check that the variable it reads is set",
                        ))
                    }
                    other => other.to_string(),
                };
                Record::WaitStarted {
                    frame: id,
                    step: step.id.clone(),
                    events: events.clone(),
                    key,
                    deadline: match until {
                        Some(ast) => {
                            let v = rules.eval(ast, &b).map_err(rule_err)?.0;
                            // `()` (e.g. the deadline of a paused SLA clock) waits without one.
                            if v.is_null() {
                                None
                            } else {
                                Some(instant_of(&v, "wait `until`")?)
                            }
                        }
                        None => timeout_ms.map(|t| now + t as i64),
                    },
                    at: now,
                }
            }
            Kind::Sleep(Sleep::For(ms)) => Record::SleepStarted {
                frame: id,
                step: step.id.clone(),
                until: now + *ms as i64,
                at: now,
            },
            Kind::Sleep(Sleep::Until(ast)) => {
                let v = rules.eval(ast, &b).map_err(rule_err)?.0;
                let until = instant_of(&v, "sleep `until`")?;
                Record::SleepStarted {
                    frame: id,
                    step: step.id.clone(),
                    until: until.max(now),
                    at: now,
                }
            }
            Kind::Parallel { branches, .. } => {
                let children = branches
                    .iter()
                    .enumerate()
                    .map(|(slot, (_, first))| ChildFrame {
                        frame: self.next_frame + slot as u32,
                        slot,
                        step: wf.steps[*first].id.clone(),
                        locals: Map::new(),
                    })
                    .collect();
                Record::ChildrenStarted {
                    frame: id,
                    step: step.id.clone(),
                    children,
                    items: None,
                    at: now,
                }
            }
            Kind::Foreach {
                items,
                item_name,
                concurrency,
                body,
            } => {
                let list = match rules.eval(items, &b).map_err(rule_err)?.0 {
                    Value::Array(a) => a,
                    Value::Null => Vec::new(),
                    other => {
                        return Err(StepError::new(
                            "rule_error",
                            format!(
                                "foreach `items` must give a list, but gave {}",
                                crate::validate::input::json_kind(&other)
                            ),
                        ))
                    }
                };
                if list.len() > MAX_FOREACH_ITEMS {
                    return Err(StepError::new(
                        "too_many_items",
                        format!(
                            "foreach over {} items; the limit is {MAX_FOREACH_ITEMS}",
                            list.len()
                        ),
                    ));
                }
                if list.is_empty() {
                    return Ok(done(
                        None,
                        Some(Value::Array(Vec::new())),
                        next_id(step.next.first()),
                        Some("no items".into()),
                    ));
                }
                let n = list.len().min(*concurrency as usize);
                let children = (0..n)
                    .map(|slot| ChildFrame {
                        frame: self.next_frame + slot as u32,
                        slot,
                        step: wf.steps[*body].id.clone(),
                        locals: item_locals(item_name, slot, &list[slot]),
                    })
                    .collect();
                Record::ChildrenStarted {
                    frame: id,
                    step: step.id.clone(),
                    children,
                    items: Some(list),
                    at: now,
                }
            }
            Kind::Subworkflow { workflow, with } => {
                let input = match with {
                    Some(t) => t.render(rules, &b).map_err(rule_err)?,
                    None => Value::Object(Map::new()),
                };
                let visit = self
                    .visits
                    .iter()
                    .filter(|(k, _)| k.starts_with(&format!("sub:{}.{}.", self.id, step.id)))
                    .count()
                    + 1;
                let child = format!("{}.{}.{}", self.id, step.id, visit);
                Record::SubStarted {
                    frame: id,
                    step: step.id.clone(),
                    child,
                    workflow: workflow.clone(),
                    input,
                    at: now,
                }
            }
            Kind::Complete(output) => {
                let out = match output {
                    Some(t) => t.render(rules, &b).map_err(rule_err)?,
                    None => Value::Null,
                };
                if frame.parent.is_none() && !frame.compensation {
                    Record::Completed {
                        output: out,
                        at: now,
                    }
                } else {
                    done(None, Some(out), None, None)
                }
            }
            Kind::Fail { code, message } => {
                let msg = match message.render(rules, &b).map_err(rule_err)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                return Err(StepError::new(code, msg));
            }
        })
    }

    fn check_join(
        &self,
        wf: &CompiledWorkflow,
        id: u32,
        frame: &Frame,
        j: &Join_,
        now: Millis,
    ) -> Option<Record> {
        let step = &wf.steps[frame.at];
        // Reap finished children first: a failed child fails the whole step.
        let mut results = j.results.clone();
        for (&slot, child) in &j.children {
            match self.frames.get(child).map(|f| &f.state) {
                Some(FrameState::Errored(e)) => {
                    return Some(self.route_failure(wf, id, frame, frame.at, e.clone(), now))
                }
                Some(FrameState::Done(v)) => {
                    results.insert(slot, v.clone());
                }
                _ => {}
            }
        }
        let finished = results.len();
        let settled = match j.join {
            Join::First => finished >= 1,
            Join::All => finished == j.total,
        };
        let next = step.next.first().map(|&n| wf.steps[n].id.clone());
        if settled {
            let output = if j.foreach {
                Value::Array(results.into_values().collect())
            } else {
                let map: Map<String, Value> = results
                    .into_iter()
                    .map(|(slot, v)| (j.slot_names[slot].clone(), v))
                    .collect();
                Value::Object(map)
            };
            let reason = match j.join {
                Join::First => Some("first branch finished; the others were cancelled".to_string()),
                Join::All => None,
            };
            return Some(Record::StepCompleted {
                frame: id,
                step: step.id.clone(),
                vars: None,
                output: Some(output),
                next,
                reason,
                at: now,
            });
        }
        // Foreach: start the next items while under the concurrency bound.
        let running = j
            .children
            .keys()
            .filter(|s| !results.contains_key(s))
            .count();
        if j.foreach && j.next_item < j.total && running < j.concurrency {
            let Kind::Foreach {
                item_name, body, ..
            } = &step.kind
            else {
                return None;
            };
            let free = (j.concurrency - running).min(j.total - j.next_item);
            let children = (0..free)
                .map(|k| {
                    let slot = j.next_item + k;
                    ChildFrame {
                        frame: self.next_frame + k as u32,
                        slot,
                        step: wf.steps[*body].id.clone(),
                        locals: item_locals(item_name, slot, &j.items[slot]),
                    }
                })
                .collect();
            return Some(Record::ChildrenStarted {
                frame: id,
                step: step.id.clone(),
                children,
                items: None,
                at: now,
            });
        }
        None
    }

    // ---------------------------------------------------------------- inputs from outside

    /// A plugin call returned. Stale results (the frame moved on) produce nothing.
    pub fn on_call_result(
        &mut self,
        wf: &CompiledWorkflow,
        frame: u32,
        attempt: u32,
        result: Result<Value, StepError>,
        now: Millis,
    ) -> Vec<Record> {
        let Some(f) = self.frames.get(&frame).cloned() else {
            return Vec::new();
        };
        let FrameState::Calling { attempt: a, .. } = &f.state else {
            return Vec::new();
        };
        if *a != attempt {
            return Vec::new();
        }
        let step = &wf.steps[f.at];
        let rec = match result {
            Ok(output) => Record::CallSucceeded {
                frame,
                step: step.id.clone(),
                attempt,
                output,
                at: now,
            },
            Err(error) => {
                let Kind::Call { retry, .. } = &step.kind else {
                    return Vec::new();
                };
                let wants_retry = retry
                    .on
                    .iter()
                    .any(|c| c == &error.code || (c == "retryable" && error.retryable));
                let retry_at = (wants_retry && attempt < retry.max_attempts)
                    .then(|| now + backoff_ms(retry, attempt, &self.id, &step.id) as i64);
                let failed = Record::CallFailed {
                    frame,
                    step: step.id.clone(),
                    attempt,
                    error: error.clone(),
                    retry_at,
                    at: now,
                };
                if retry_at.is_none() {
                    self.apply(wf, &failed);
                    let routed = self.route_failure(wf, frame, &f, f.at, error.at(&step.id), now);
                    self.apply(wf, &routed);
                    return vec![failed, routed];
                }
                failed
            }
        };
        self.apply(wf, &rec);
        vec![rec]
    }

    /// A timer came due. Timers for a state the frame has left produce nothing.
    pub fn on_timer(&mut self, wf: &CompiledWorkflow, frame: u32, now: Millis) -> Vec<Record> {
        let Some(f) = self.frames.get(&frame).cloned() else {
            return Vec::new();
        };
        let due = match &f.state {
            FrameState::Backoff { until, .. } | FrameState::Sleeping { until } => *until,
            FrameState::Waiting {
                deadline: Some(d), ..
            } => *d,
            _ => return Vec::new(),
        };
        if due > now {
            return Vec::new();
        }
        let step = &wf.steps[f.at];
        let rec = match (&f.state, &step.kind) {
            (FrameState::Waiting { .. }, Kind::Wait { on_timeout, .. }) => match on_timeout {
                Some(t) => Record::TimerFired {
                    frame,
                    step: step.id.clone(),
                    next: Some(wf.steps[*t].id.clone()),
                    at: now,
                },
                None => {
                    let routed = self.route_failure(
                        wf,
                        frame,
                        &f,
                        f.at,
                        StepError::new(
                            "timeout",
                            "no matching event arrived before the wait timed out",
                        )
                        .at(&step.id),
                        now,
                    );
                    self.apply(wf, &routed);
                    return vec![routed];
                }
            },
            _ => Record::TimerFired {
                frame,
                step: step.id.clone(),
                next: None,
                at: now,
            },
        };
        self.apply(wf, &rec);
        vec![rec]
    }

    /// Deliver an event to every frame waiting for its type and key.
    pub fn on_event(&mut self, wf: &CompiledWorkflow, event: &Event, now: Millis) -> Vec<Record> {
        let waiting: Vec<(u32, usize)> = self
            .frames
            .iter()
            .filter(|(_, f)| matches!(&f.state, FrameState::Waiting { events, key, .. } if key == &event.key && events.contains(&event.event_type)))
            .map(|(id, f)| (*id, f.at))
            .collect();
        let mut out = Vec::new();
        for (frame, at) in waiting {
            let rec = Record::EventReceived {
                frame,
                step: wf.steps[at].id.clone(),
                event: event.clone(),
                at: now,
            };
            self.apply(wf, &rec);
            out.push(rec);
        }
        out
    }

    /// A subworkflow instance ended.
    pub fn on_child_finished(
        &mut self,
        wf: &CompiledWorkflow,
        child: &str,
        result: Result<Value, StepError>,
        now: Millis,
    ) -> Vec<Record> {
        let Some((frame, f)) = self
            .frames
            .iter()
            .find(|(_, f)| matches!(&f.state, FrameState::Sub { child: c, .. } if c == child))
            .map(|(i, f)| (*i, f.clone()))
        else {
            return Vec::new();
        };
        let step = wf.steps[f.at].id.clone();
        let rec = Record::SubFinished {
            frame,
            step: step.clone(),
            child: child.to_string(),
            result: result.clone(),
            at: now,
        };
        self.apply(wf, &rec);
        let mut out = vec![rec];
        if let Err(e) = result {
            let routed = self.route_failure(
                wf,
                frame,
                &f,
                f.at,
                StepError {
                    step: Some(step),
                    ..e
                },
                now,
            );
            self.apply(wf, &routed);
            out.push(routed);
        }
        out
    }

    /// Run a failed instance's failed step again, with the variables it had. Refused for an
    /// instance that is not failed, whose failure was not in a step (a limit), whose
    /// compensations already undid its work, or that is a subworkflow (retry its parent).
    pub fn retry(
        &mut self,
        wf: &CompiledWorkflow,
        now: Millis,
    ) -> Result<Vec<Record>, RetryRefused> {
        if self.status != Status::Failed {
            return Err(RetryRefused::NotFailed(self.status.as_str()));
        }
        if self.parent.is_some() {
            return Err(RetryRefused::NotRetryable(
                "this is a subworkflow instance; retry its parent instance".into(),
            ));
        }
        if self.compensated {
            return Err(RetryRefused::NotRetryable(
                "its compensations already undid the completed steps; start a new instance".into(),
            ));
        }
        let Some(step) = self
            .failure_origin
            .clone()
            .filter(|s| wf.index.contains_key(s))
        else {
            let code = self
                .error
                .as_ref()
                .map(|e| e.code.as_str())
                .unwrap_or("unknown");
            return Err(RetryRefused::NotRetryable(format!(
                "the instance did not fail in a step ({code}); start a new instance"
            )));
        };
        let rec = Record::RetryRequested { step, at: now };
        self.apply(wf, &rec);
        Ok(vec![rec])
    }

    /// Cancel the instance: compensations run, then it ends as cancelled.
    pub fn cancel(&mut self, wf: &CompiledWorkflow, reason: &str, now: Millis) -> Vec<Record> {
        if self.status.is_final() || self.cancel_reason.is_some() {
            return Vec::new();
        }
        let rec = Record::CancelRequested {
            reason: reason.to_string(),
            at: now,
        };
        self.apply(wf, &rec);
        vec![rec]
    }

    // ---------------------------------------------------------------- effects

    /// The effects the current state needs: used after new records and after a restart.
    pub fn effects(&self, wf: &CompiledWorkflow) -> Vec<Effect> {
        if self.status.is_final() {
            return vec![Effect::Finished];
        }
        let mut out = Vec::new();
        for (&id, f) in &self.frames {
            let Some(step) = wf.steps.get(f.at) else {
                continue;
            };
            match (&f.state, &step.kind) {
                (
                    FrameState::Calling {
                        attempt,
                        key,
                        input,
                    },
                    Kind::Call {
                        plugin,
                        action,
                        timeout_ms,
                        ..
                    },
                ) => out.push(Effect::Call {
                    frame: id,
                    step: step.id.clone(),
                    plugin: plugin.clone(),
                    action: action.clone(),
                    input: input.clone(),
                    key: key.clone(),
                    attempt: *attempt,
                    timeout_ms: *timeout_ms,
                }),
                (FrameState::Backoff { until, .. }, _) | (FrameState::Sleeping { until }, _) => out
                    .push(Effect::Timer {
                        frame: id,
                        step: step.id.clone(),
                        at: *until,
                    }),
                (
                    FrameState::Waiting {
                        events,
                        key,
                        deadline,
                    },
                    _,
                ) => {
                    out.push(Effect::Wait {
                        frame: id,
                        events: events.clone(),
                        key: key.clone(),
                    });
                    if let Some(d) = deadline {
                        out.push(Effect::Timer {
                            frame: id,
                            step: step.id.clone(),
                            at: *d,
                        });
                    }
                }
                (
                    FrameState::Sub {
                        child,
                        workflow,
                        input,
                    },
                    _,
                ) => {
                    out.push(Effect::StartChild {
                        frame: id,
                        step: step.id.clone(),
                        child: child.clone(),
                        workflow: workflow.clone(),
                        input: input.clone(),
                    });
                }
                _ => {}
            }
        }
        out
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

fn item_locals(name: &str, index: usize, item: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(name.to_string(), item.clone());
    m.insert("index".into(), json!(index));
    m
}

/// Delay before retry number `attempt + 1`: exponential, capped, with deterministic jitter.
///
/// Jitter is derived from the instance and step so that a replay computes the same delay
/// and concurrent instances still spread out.
pub fn backoff_ms(r: &crate::definition::Retry, attempt: u32, instance: &str, step: &str) -> u64 {
    let base = r
        .backoff
        .as_millis()
        .saturating_mul((r.multiplier as u64).saturating_pow(attempt.saturating_sub(1)));
    let capped = base.min(r.max_delay.as_millis());
    if r.jitter_percent == 0 || capped == 0 {
        return capped;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (instance, step, attempt).hash(&mut h);
    let spread = capped * r.jitter_percent as u64 / 100;
    capped - spread + h.finish() % (spread + 1)
}

/// An instant given by an expression: RFC 3339 text (like `now`) or epoch milliseconds.
fn instant_of(v: &Value, what: &str) -> Result<Millis, StepError> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
        .or_else(|| v.as_i64())
        .ok_or_else(|| {
            StepError::new(
                "rule_error",
                format!("{what} must give a time like \"2026-03-06T16:00:00Z\", but gave {v}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::rules::Rules;

    fn compile(src: &str) -> CompiledWorkflow {
        let (wf, diags) =
            crate::compile::load("t.yaml", src, &Default::default(), &Rules::shared());
        wf.unwrap_or_else(|| panic!("{diags:#?}"))
    }

    const PAY: &str = r#"
workflow: pay
version: 1
steps:
  - id: prepare
    set: { tries: 1 }
    next: charge
  - id: charge
    call: payments.charge
    next: done
  - id: done
    complete: { output: { paid: true } }
"#;

    /// Runs `inst` until it waits on a call; returns the journal so far.
    fn call_key(inst: &Instance) -> (u32, u32, String) {
        inst.frames
            .iter()
            .find_map(|(&id, f)| match &f.state {
                FrameState::Calling { attempt, key, .. } => Some((id, *attempt, key.clone())),
                _ => None,
            })
            .expect("a call in flight")
    }

    #[test]
    fn a_failed_step_is_retried_from_where_it_failed_and_replays_the_same() {
        let wf = compile(PAY);
        let start = Instance::start_record(&wf, json!({}), None, None, 1_000);
        let mut inst = Instance::start("i1", &wf, start.clone());
        let mut journal = vec![start];
        journal.extend(inst.advance(&wf, 1_000));
        let (frame, attempt, key) = call_key(&inst);
        assert_eq!((attempt, key.as_str()), (1, "i1:charge:1"));
        journal.extend(inst.on_call_result(
            &wf,
            frame,
            attempt,
            Err(StepError::new("card_declined", "declined")),
            2_000,
        ));
        journal.extend(inst.advance(&wf, 2_000));
        assert_eq!(inst.status, Status::Failed);

        let retried = inst.retry(&wf, 3_000).unwrap();
        assert_eq!(
            retried,
            vec![Record::RetryRequested {
                step: "charge".into(),
                at: 3_000
            }]
        );
        journal.extend(retried);
        assert_eq!(inst.status, Status::Running);
        assert_eq!(inst.error, None);
        journal.extend(inst.advance(&wf, 3_000));
        // A new visit of the step: a new idempotency key, so the provider does not
        // answer with the cached failure.
        let (frame, attempt, key) = call_key(&inst);
        assert_eq!((attempt, key.as_str()), (1, "i1:charge:2"));
        assert_eq!(inst.vars["tries"], json!(1), "variables are kept");
        journal.extend(inst.on_call_result(&wf, frame, attempt, Ok(json!({"id": "ch_1"})), 4_000));
        journal.extend(inst.advance(&wf, 4_000));
        assert_eq!(inst.status, Status::Completed);
        assert_eq!(inst.output, Some(json!({"paid": true})));

        let replayed = Instance::replay("i1", &wf, &journal);
        assert_eq!(replayed.status, Status::Completed);
        assert_eq!(replayed.records, inst.records);
        assert_eq!(replayed.records, journal.len() as u64);
        let back: Vec<Record> = journal
            .iter()
            .map(|r| serde_json::from_value(serde_json::to_value(r).unwrap()).unwrap())
            .collect();
        assert_eq!(back, journal, "the new record round-trips through JSON");
    }

    #[test]
    fn only_failed_instances_whose_step_failed_can_be_retried() {
        let wf = compile(PAY);
        let start = Instance::start_record(&wf, json!({}), None, None, 0);
        let mut running = Instance::start("i2", &wf, start);
        running.advance(&wf, 0);
        assert_eq!(
            running.retry(&wf, 1),
            Err(RetryRefused::NotFailed("running"))
        );

        let compensated = compile(
            r#"
workflow: comp
version: 1
steps:
  - id: reserve
    call: stock.reserve
    compensate: release
    next: ship
  - id: ship
    call: shipping.send
compensations:
  - id: release
    set: { released: true }
"#,
        );
        let start = Instance::start_record(&compensated, json!({}), None, None, 0);
        let mut inst = Instance::start("i3", &compensated, start);
        inst.advance(&compensated, 0);
        let (f, a, _) = call_key(&inst);
        inst.on_call_result(&compensated, f, a, Ok(json!({})), 1);
        inst.advance(&compensated, 1);
        let (f, a, _) = call_key(&inst);
        inst.on_call_result(&compensated, f, a, Err(StepError::new("down", "down")), 2);
        inst.advance(&compensated, 2);
        assert_eq!(inst.status, Status::Failed);
        assert!(matches!(
            inst.retry(&compensated, 3),
            Err(RetryRefused::NotRetryable(m)) if m.contains("compensations")
        ));
    }

    #[test]
    fn a_failure_handled_by_the_workflow_handler_retries_the_step_that_failed() {
        let wf = compile(
            r#"
workflow: handled
version: 1
on_error: notify
steps:
  - id: charge
    call: payments.charge
    next: done
  - id: done
    complete: {}
  - id: notify
    fail: { code: gave_up, message: "charge failed" }
"#,
        );
        let start = Instance::start_record(&wf, json!({}), None, None, 0);
        let mut inst = Instance::start("i4", &wf, start);
        inst.advance(&wf, 0);
        let (f, a, _) = call_key(&inst);
        inst.on_call_result(&wf, f, a, Err(StepError::new("declined", "no")), 1);
        inst.advance(&wf, 1);
        assert_eq!(inst.status, Status::Failed);
        assert_eq!(inst.error.as_ref().unwrap().code, "gave_up");
        let r = inst.retry(&wf, 2).unwrap();
        assert!(matches!(&r[0], Record::RetryRequested { step, .. } if step == "charge"));
    }

    #[test]
    fn step_durations_are_collected_in_journal_time_only_on_request() {
        let wf = compile(PAY);
        let start = Instance::start_record(&wf, json!({}), None, None, 0);
        let mut inst = Instance::start("i5", &wf, start);
        inst.advance(&wf, 0);
        assert_eq!(inst.timings, None);
        inst.timings = Some(Vec::new());
        let (f, a, _) = call_key(&inst);
        inst.on_call_result(&wf, f, a, Ok(json!({})), 250);
        inst.advance(&wf, 250);
        let timings = inst.timings.take().unwrap();
        assert_eq!(
            timings[0],
            StepTiming {
                step: "charge".into(),
                millis: 250,
                ok: true
            }
        );
    }
}
