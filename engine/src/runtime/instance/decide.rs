//! Deciding: for every frame that can run now, the record that says what its step did
//! (a rule's result, a switch case, a call to start, a wait, a sleep, children, the end).

use super::join::item_locals;
use super::{Frame, FrameState, Instance, Status, MAX_FOREACH_ITEMS, MAX_FRAMES, MAX_TRANSITIONS};
use crate::compile::rules::Bindings;
use crate::compile::{CompiledWorkflow, Kind, Sleep};
use crate::journal::{ChildFrame, Millis, Record, StepError};
use serde_json::{Map, Value};

type Outcome = Result<Record, StepError>;

impl Instance {
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
        // A held instance runs nothing until it is resumed (a cancel lifts the hold).
        while !self.status.is_final() && self.hold().is_none() {
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
    pub(super) fn route_failure(
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
            Kind::Decide { columns, rows } => {
                let mut values = Vec::with_capacity(columns.len());
                for ast in columns {
                    values.push(rules.eval(ast, &b).map_err(rule_err)?.0);
                }
                let decision = rows
                    .decide(&values)
                    .map_err(|(code, m)| StepError::new(code, m))?;
                let mut vars = self.vars.clone();
                for (name, value) in decision.outputs {
                    vars.insert(name, value);
                }
                let reason = match decision.rows.as_slice() {
                    [] if rows.hit == crate::definition::HitPolicy::Collect => {
                        "no row matched".to_string()
                    }
                    [] => "no row matched: default".to_string(),
                    [r] => format!("row {r} matched"),
                    many => format!(
                        "rows {} matched",
                        many.iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                done(Some(vars), None, next_id(step.next.first()), Some(reason))
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
                let Some(key) = crate::runtime::key_text(rules.eval(key, &b).map_err(rule_err)?.0)
                else {
                    return Err(StepError::new(
                        "rule_error",
                        "wait `key` gave nothing; check that the variable it reads is set",
                    ));
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
