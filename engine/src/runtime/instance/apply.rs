//! Folding one journal record into the state, and the state helpers that folding uses.
//! Replay and live execution both go through here, so a replayed journal rebuilds the
//! same state.

use super::{Frame, FrameState, Hold, Instance, Join_, Status, StepTiming};
use crate::compile::{CompiledWorkflow, Kind};
use crate::definition::Join;
use crate::journal::{Millis, Record, StepError};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

impl Instance {
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
                if let Some(id) = &event.id {
                    self.received.insert(id.clone());
                }
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
            Record::Paused { by, reason, at } => {
                self.hold = Some(Hold {
                    by: by.clone(),
                    reason: reason.clone(),
                    at: *at,
                });
            }
            Record::Resumed { .. } => {
                self.hold = None;
            }
            Record::RerunOf { step, vars, .. } => {
                self.frames.clear();
                self.vars = vars.clone();
                let at = wf.index.get(step).copied().unwrap_or(usize::MAX);
                self.new_frame(None, at, Map::new(), false);
            }
            // A link for people; the state it ended in stays as it is.
            Record::RerunAs {
                instance,
                step,
                vars,
                key,
                by,
                reason,
                at,
            } => {
                self.reruns.push(super::RerunLink {
                    instance: instance.clone(),
                    step: step.clone(),
                    vars: vars.clone(),
                    key: key.clone(),
                    by: by.clone(),
                    reason: reason.clone(),
                    at: *at,
                });
            }
            // `wf` is the version moved to (see `Instance::replay_pinned`).
            Record::Migrated {
                frame,
                to_version,
                to_hash,
                to_step,
                vars,
                at,
                ..
            } => {
                self.version = *to_version;
                self.hash = to_hash.clone();
                if let Some(v) = vars {
                    self.vars = v.clone();
                }
                let step = wf.index.get(to_step).copied().unwrap_or(usize::MAX);
                if let Some(f) = self.frames.get_mut(frame) {
                    f.at = step;
                    f.state = FrameState::Ready;
                    f.entered_at = *at;
                }
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
}
