//! The runtime's one entry point for the driver: [`Instance::step`] takes what happened
//! (an [`Input`]) and the time, and returns everything the instance decided as a [`Step`]:
//! the records to journal, the index changes (timers, waits, status) and the effects to
//! carry out. The driver persists and carries out; it does not work out from the
//! instance's state what changed.
//!
//! The one thing the runtime cannot know is the outside world, so the driver passes it in:
//! the results of children that ended while nobody was listening (read from the store).

use super::instance::{
    Effect, FrameState, HoldRefused, Instance, MigrateRefused, Move, RerunLink, RetryRefused,
    Status, StepTiming,
};
use crate::compile::CompiledWorkflow;
use crate::journal::{Event, Millis, Record, StepError};
use serde_json::Value;
use std::collections::HashSet;

/// A due timer in the index: wake `frame` of `instance` at `at`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Timer {
    pub at: Millis,
    pub instance: String,
    pub frame: u32,
}

/// A waiting frame in the index: `instance`'s `frame` waits for `event_type` with `key`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Wait {
    pub event_type: String,
    pub key: String,
    pub instance: String,
    pub frame: u32,
}

/// What happened to an instance.
#[derive(Clone, Debug)]
pub enum Input {
    /// Nothing new: loaded after a restart or a failed write, go on from the journal.
    Resume,
    CallResult {
        frame: u32,
        attempt: u32,
        result: Result<Value, StepError>,
    },
    Timer(Timer),
    Event(Event),
    ChildFinished {
        child: String,
        result: Result<Value, StepError>,
    },
    Cancel {
        reason: String,
    },
    Retry,
    /// An operator holds the instance (`by`: who, for the journal).
    Pause {
        by: String,
        reason: String,
    },
    /// An operator lets a held instance go on.
    Unpause {
        by: String,
        reason: String,
    },
    /// This ended instance runs again: journal the link, once per new instance and per
    /// client key, and only while the instance is still ended.
    RerunAs(RerunLink),
}

/// What the caller of an input is told.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    None,
    /// The event was taken by a waiting step.
    Woken(bool),
    /// The cancel was accepted (false: the instance had already ended).
    Cancelled(bool),
    Retried(Result<(), RetryRefused>),
    /// A pause or resume: whether it changed anything, or why it was refused.
    Held(Result<bool, HoldRefused>),
    /// The instance moved to another version.
    Migrated(Move),
    /// The link to the instance that runs this one again (journaled now or before), or
    /// why there is none.
    Linked(Result<RerunLink, String>),
}

/// A correlation key as a rule computed it: text as it is, numbers and the rest as JSON
/// (`42`), nothing when the rule gave null. Waits and a workflow's `key:` both use it, so
/// an event keyed `42` finds either.
pub fn key_text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Every status an instance's index entry can show, so callers can refuse a filter that
/// could never match.
pub const INDEX_STATUSES: [&str; 7] = [
    "running",
    "parked",
    "paused",
    "compensating",
    "completed",
    "failed",
    "cancelled",
];

/// Index changes of one step: entries to add and remove, and the status to index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexDelta {
    pub timers_add: Vec<Timer>,
    pub timers_remove: Vec<Timer>,
    pub waits_add: Vec<Wait>,
    pub waits_remove: Vec<Wait>,
    /// running, parked, compensating, completed, failed or cancelled.
    pub status: &'static str,
    /// The instance's `search:` attributes after the step, by name: (name, value).
    pub search: Vec<(String, String)>,
    /// Attribute values the step gave or changed, and those it changed or dropped.
    pub search_add: Vec<(String, String)>,
    pub search_remove: Vec<(String, String)>,
}

/// Everything one input made the instance decide.
#[derive(Clone, Debug)]
pub struct Step {
    /// Already applied to the instance; journal them before acting on anything below.
    pub records: Vec<Record>,
    pub index: IndexDelta,
    /// Effects not handed out before (after a load: everything in hand, so calls in
    /// flight when the process stopped are made again with the same idempotency key).
    pub effects: Vec<Effect>,
    pub reply: Reply,
    /// Steps that ended, for metrics.
    pub timings: Vec<StepTiming>,
}

impl Instance {
    /// A new instance from its start record, and its first step (whose records begin
    /// with the start record).
    pub fn create(
        id: &str,
        wf: &CompiledWorkflow,
        record: Record,
        now: Millis,
    ) -> (Instance, Step) {
        Instance::create_then(id, wf, record, Vec::new(), now)
    }

    /// [`Instance::create`] with `then` applied before the first step: a `RerunOf` record
    /// (it begins where an ended instance is run again from), and a `Paused` one (started
    /// while its workflow is paused: the first step waits for the resume).
    pub fn create_then(
        id: &str,
        wf: &CompiledWorkflow,
        record: Record,
        then: Vec<Record>,
        now: Millis,
    ) -> (Instance, Step) {
        let mut inst = Instance::start(id, wf, record.clone());
        let mut records = vec![record];
        for then in then {
            inst.apply(wf, &then);
            records.push(then);
        }
        let before = Index::default();
        let step = inst.conclude(wf, before, records, Reply::None, None, &[], now);
        (inst, step)
    }

    /// Frames waiting on a child: the children whose end the instance waits for.
    pub fn children_waited_on(&self) -> Vec<String> {
        self.frames
            .values()
            .filter_map(|f| match &f.state {
                FrameState::Sub { child, .. } => Some(child.clone()),
                _ => None,
            })
            .collect()
    }

    /// The child `frame` waits on, if it waits on one.
    pub fn child_of_frame(&self, frame: u32) -> Option<String> {
        match self.frames.get(&frame).map(|f| &f.state) {
            Some(FrameState::Sub { child, .. }) => Some(child.clone()),
            _ => None,
        }
    }

    /// Handles one input: `finished` are results of children that have ended (the driver
    /// reads them for a freshly loaded instance and for a timer on a frame waiting on a
    /// child); then the instance advances as far as it can without outside help.
    pub fn step(
        &mut self,
        wf: &CompiledWorkflow,
        input: Input,
        finished: &[(String, Result<Value, StepError>)],
        now: Millis,
    ) -> Step {
        let before = Index::of(self);
        self.timings = Some(Vec::new());
        let mut records = Vec::new();
        let mut reply = Reply::None;
        let mut fired = None;
        match input {
            Input::Resume => {}
            Input::CallResult {
                frame,
                attempt,
                result,
            } => records.extend(self.on_call_result(wf, frame, attempt, result, now)),
            Input::Timer(t) => {
                // A frame waiting on a child is woken by the child's end (in `finished`).
                if self.child_of_frame(t.frame).is_none() {
                    records.extend(self.on_timer(wf, t.frame, now));
                }
                fired = Some(t);
            }
            Input::Event(event) => {
                // Received before: it counts as delivered here, and is not taken again.
                let had = event
                    .id
                    .as_ref()
                    .is_some_and(|id| self.received.contains(id));
                if !had {
                    records.extend(self.on_event(wf, &event, now));
                }
                reply = Reply::Woken(had || !records.is_empty());
            }
            Input::ChildFinished { child, result } => {
                records.extend(self.on_child_finished(wf, &child, result, now))
            }
            Input::Cancel { reason } => {
                records.extend(self.cancel(wf, &reason, now));
                reply = Reply::Cancelled(!records.is_empty());
            }
            Input::Pause { by, reason } => {
                let r = self.pause(wf, &by, &reason, now);
                reply = Reply::Held(r.as_ref().map(|r| !r.is_empty()).map_err(Clone::clone));
                records.extend(r.unwrap_or_default());
            }
            Input::Unpause { by, reason } => {
                let r = self.unhold(wf, &by, &reason, now);
                reply = Reply::Held(r.as_ref().map(|r| !r.is_empty()).map_err(Clone::clone));
                records.extend(r.unwrap_or_default());
            }
            Input::RerunAs(link) => {
                let same = self
                    .reruns
                    .iter()
                    .find(|l| l.instance == link.instance || l.key.is_some() && l.key == link.key);
                reply = Reply::Linked(if let Some(l) = same {
                    Ok(l.clone())
                } else if !self.status().is_final() {
                    // A retry came first: the instance runs again itself.
                    Err(format!(
                        "the instance is {} again (retried meanwhile); it is not run a second time",
                        self.status().as_str()
                    ))
                } else {
                    records.push(Record::RerunAs {
                        instance: link.instance.clone(),
                        step: link.step.clone(),
                        vars: link.vars.clone(),
                        key: link.key.clone(),
                        by: link.by.clone(),
                        reason: link.reason.clone(),
                        at: now,
                    });
                    self.apply(wf, records.last().expect("just pushed"));
                    Ok(self.reruns.last().expect("just applied").clone())
                });
            }
            Input::Retry => match self.retry(wf, now) {
                Ok(r) => {
                    records.extend(r);
                    reply = Reply::Retried(Ok(()));
                }
                Err(e) => reply = Reply::Retried(Err(e)),
            },
        }
        self.conclude(wf, before, records, reply, fired, finished, now)
    }

    /// Moves the instance from `from` to version `to` of its workflow at a safe point
    /// ([`Instance::migration`]): one `Migrated` record, then the instance goes on from the
    /// rule's `to` step as if it had just arrived there (a wait there begins afresh). The
    /// caller runs the instance with `to` from now on.
    pub fn migrate(
        &mut self,
        from: &CompiledWorkflow,
        to: &CompiledWorkflow,
        by: &str,
        reason: &str,
        now: Millis,
    ) -> Result<Step, MigrateRefused> {
        let mv = self.migration(from, to)?;
        let vars = self.migrated_vars(to, now)?;
        let before = Index::of(self);
        self.timings = Some(Vec::new());
        let record = Record::Migrated {
            frame: mv.frame,
            from_version: mv.from_version,
            from_hash: self.hash().to_string(),
            from_step: mv.from_step.clone(),
            to_version: mv.to_version,
            to_hash: to.hash.clone(),
            to_step: mv.to_step.clone(),
            vars,
            by: by.to_string(),
            reason: reason.to_string(),
            at: now,
        };
        self.apply(to, &record);
        Ok(self.conclude(
            to,
            before,
            vec![record],
            Reply::Migrated(mv),
            None,
            &[],
            now,
        ))
    }

    /// The part of every step after its input: children's results, advancing, and working
    /// out what changed.
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &mut self,
        wf: &CompiledWorkflow,
        before: Index,
        mut records: Vec<Record>,
        reply: Reply,
        fired: Option<Timer>,
        finished: &[(String, Result<Value, StepError>)],
        now: Millis,
    ) -> Step {
        if self.timings.is_none() {
            self.timings = Some(Vec::new());
        }
        for (child, result) in finished {
            records.extend(self.on_child_finished(wf, child, result.clone(), now));
        }
        records.extend(self.advance(wf, now));
        self.search = self.search_values(wf, now);
        let after = Index::of(self);
        let mut index = IndexDelta {
            search: after.search.clone(),
            search_add: after
                .search
                .iter()
                .filter(|a| !before.search.contains(a))
                .cloned()
                .collect(),
            search_remove: before
                .search
                .iter()
                .filter(|a| !after.search.contains(a))
                .cloned()
                .collect(),
            timers_add: after.timers.difference(&before.timers).cloned().collect(),
            timers_remove: before.timers.difference(&after.timers).cloned().collect(),
            waits_add: after.waits.difference(&before.waits).cloned().collect(),
            waits_remove: before.waits.difference(&after.waits).cloned().collect(),
            status: self.index_status(),
        };
        if let Some(t) = fired {
            if !after.timers.contains(&t) {
                index.timers_remove.push(t);
            }
        }
        if self.status().is_final() {
            index.waits_remove.extend(after.waits.iter().cloned());
            // Wake the parent durably: a timer due now survives a crash before the
            // message reaches it.
            if let Some(p) = self.parent() {
                index.timers_add.push(Timer {
                    at: now,
                    instance: p.instance.clone(),
                    frame: p.frame,
                });
            }
        }
        // A child is started only after this step is journaled, and a parent waiting on
        // a child is parked: if the process dies in between, nothing would load the parent
        // again to start the child. A timer due now does (on a load the start is issued
        // again, a no-op if the child exists); once fired it is removed like any stale one.
        for r in &records {
            if let Record::SubStarted { frame, .. } = r {
                index.timers_add.push(Timer {
                    at: now,
                    instance: self.id().to_string(),
                    frame: *frame,
                });
            }
        }
        let in_hand = self.effects(wf);
        let effects = in_hand
            .iter()
            .filter(|e| !self.issued.contains(e))
            .cloned()
            .collect();
        self.issued = in_hand;
        Step {
            records,
            index,
            effects,
            reply,
            timings: self.timings.take().unwrap_or_default(),
        }
    }

    /// The values of the workflow's `search:` attributes now, by name. An attribute whose
    /// expression gives null, an object or a list, or fails, has no value (and no index
    /// entry): search is how people find the instance, never a reason for it to fail.
    pub(in crate::runtime) fn search_values(
        &self,
        wf: &CompiledWorkflow,
        now: Millis,
    ) -> Vec<(String, String)> {
        if wf.search.is_empty() {
            return Vec::new();
        }
        let locals = serde_json::Map::new();
        let b = crate::compile::rules::Bindings {
            input: self.input(),
            vars: self.vars(),
            locals: &locals,
            now_ms: now,
            instance: None,
        };
        wf.search
            .iter()
            .filter_map(|a| {
                let (value, _) = wf.rules.eval(&a.value, &b).ok()?;
                match value {
                    Value::Object(_) | Value::Array(_) => None,
                    v => key_text(v).map(|v| (a.name.clone(), v)),
                }
            })
            .collect()
    }

    /// The status the index shows: `parked` when nothing can happen without outside help.
    /// Always one of [`INDEX_STATUSES`].
    pub fn index_status(&self) -> &'static str {
        if self.hold().is_some() && !self.status().is_final() {
            "paused"
        } else if self.status().is_final()
            || self.status() == Status::Compensating && !self.is_parked()
        {
            self.status().as_str()
        } else if self.is_parked() {
            "parked"
        } else {
            "running"
        }
    }
}

/// The timers and waits an instance's state implies.
#[derive(Default)]
struct Index {
    timers: HashSet<Timer>,
    waits: HashSet<Wait>,
    search: Vec<(String, String)>,
}

impl Index {
    fn of(inst: &Instance) -> Index {
        let mut index = Index {
            search: inst.search.clone(),
            ..Index::default()
        };
        // Held: nothing may wake it. Its timers come back on resume (due ones fire then)
        // and events for its waits are kept in the inbox meanwhile.
        if inst.hold().is_some() {
            return index;
        }
        for (&frame, f) in &inst.frames {
            match &f.state {
                FrameState::Backoff { until: at, .. }
                | FrameState::Sleeping { until: at }
                | FrameState::Waiting {
                    deadline: Some(at), ..
                } => {
                    index.timers.insert(Timer {
                        at: *at,
                        instance: inst.id().to_string(),
                        frame,
                    });
                }
                _ => {}
            }
            if let FrameState::Waiting { events, key, .. } = &f.state {
                for e in events {
                    index.waits.insert(Wait {
                        event_type: e.clone(),
                        key: key.clone(),
                        instance: inst.id().to_string(),
                        frame,
                    });
                }
            }
        }
        index
    }
}
