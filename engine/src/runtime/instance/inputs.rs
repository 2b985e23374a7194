//! What arrives from outside the state machine: a plugin call's result, a due timer, an
//! event, a child instance's end, and an operator's retry or cancel. Each turns into
//! records (applied before they are returned); a stale input turns into none.

use super::{FrameState, HoldRefused, Instance, RetryRefused, Status};
use crate::compile::{CompiledWorkflow, Kind};
use crate::journal::{Event, Millis, Record, StepError};
use serde_json::Value;

impl Instance {
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
        if let Some(l) = self.reruns.last() {
            return Err(RetryRefused::NotRetryable(format!(
                "it runs again as instance {} (from step `{}`); follow or retry that one",
                l.instance, l.step
            )));
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
    /// Hold the instance: no step begins, no timer fires, no event is taken, until
    /// [`Instance::unhold`]. No records when it was held already.
    pub fn pause(
        &mut self,
        wf: &CompiledWorkflow,
        by: &str,
        reason: &str,
        now: Millis,
    ) -> Result<Vec<Record>, HoldRefused> {
        self.set_hold(wf, true, by, reason, now)
    }

    /// Let a held instance go on. No records when it was not held.
    pub fn unhold(
        &mut self,
        wf: &CompiledWorkflow,
        by: &str,
        reason: &str,
        now: Millis,
    ) -> Result<Vec<Record>, HoldRefused> {
        self.set_hold(wf, false, by, reason, now)
    }

    fn set_hold(
        &mut self,
        wf: &CompiledWorkflow,
        hold: bool,
        by: &str,
        reason: &str,
        now: Millis,
    ) -> Result<Vec<Record>, HoldRefused> {
        self.may_hold()?;
        if self.hold.is_some() == hold {
            return Ok(Vec::new());
        }
        let (by, reason) = (by.to_string(), reason.to_string());
        let rec = if hold {
            Record::Paused {
                by,
                reason,
                at: now,
            }
        } else {
            Record::Resumed {
                by,
                reason,
                at: now,
            }
        };
        self.apply(wf, &rec);
        Ok(vec![rec])
    }

    fn may_hold(&self) -> Result<(), HoldRefused> {
        if self.status.is_final() {
            return Err(HoldRefused::Ended(self.status.as_str()));
        }
        if self.cancel_reason.is_some() {
            return Err(HoldRefused::Cancelling);
        }
        Ok(())
    }

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
}

/// Delay before retry number `attempt + 1`: exponential, capped, with deterministic jitter.
///
/// Jitter is derived from the instance and step so that a replay computes the same delay
/// and concurrent instances still spread out.
fn backoff_ms(r: &crate::definition::Retry, attempt: u32, instance: &str, step: &str) -> u64 {
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
