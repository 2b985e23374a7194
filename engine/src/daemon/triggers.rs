//! Triggers: workflows that start themselves, on an event or on a schedule.
//!
//! Event triggers run when `POST /v1/events` delivers an event of their type and
//! their `when:` filter is true; an event with an `id` starts each workflow at most
//! once however often it is delivered (the id becomes the start's idempotency key).
//!
//! Schedules are durable: the last occurrence handled is stored, so a schedule
//! missed while the daemon was down fires once on restart — for the latest missed
//! occurrence — not once per missed occurrence. A schedule seen for the first time
//! does not fire for occurrences before it was loaded.

use super::driver::StartError;
use super::window::{self, Decision, Window};
use super::Driver;
use crate::compile::rules::{format_ms, Bindings};
use crate::compile::{CompiledWorkflow, Trigger, TriggerKind, TriggerWindow};
use crate::runtime::{Event, Millis};
use chrono::TimeZone;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// An instance a trigger started (or found already started, `created: false`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TriggerStart {
    pub workflow: String,
    pub id: String,
    pub created: bool,
    /// Given to the open instance with the workflow's key instead (`on_conflict: attach`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// Kept in the key's queue instead (`on_conflict: queue`); `id` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<super::driver::queue::Queued>,
}

/// A trigger that matched but could not start its workflow; the message says why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TriggerFailure {
    pub workflow: String,
    pub message: String,
}

/// An event a windowed trigger counted without reaching its count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WindowCount {
    pub workflow: String,
    pub key: String,
    pub count: u32,
    pub at_least: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TriggerOutcome {
    pub started: Vec<TriggerStart>,
    pub failed: Vec<TriggerFailure>,
    pub counted: Vec<WindowCount>,
    /// A trigger took the event as a start's input, so it need not be kept for a wait.
    /// Events a window only counted, or gave to its open instance, are not taken.
    #[serde(skip)]
    pub consumed: bool,
}

/// Starts every workflow with an event trigger matching `event`.
pub async fn start_for_event(driver: &Driver, event: &Event) -> TriggerOutcome {
    let mut outcome = TriggerOutcome::default();
    let now = driver.inner().clock.now_ms();
    let mut locals = Map::new();
    locals.insert(
        "event".into(),
        json!({"type": event.event_type, "key": event.key, "data": event.data, "id": event.id}),
    );
    for wf in driver.inner().registry.all_latest() {
        for (i, trigger) in wf.triggers.iter().enumerate() {
            let TriggerKind::Event {
                event_type,
                when,
                window,
            } = &trigger.kind
            else {
                continue;
            };
            if event_type != &event.event_type {
                continue;
            }
            let b = Bindings {
                input: &Value::Null,
                vars: &Map::new(),
                locals: &locals,
                now_ms: now,
                instance: None,
            };
            if let Some(when) = when {
                match wf.rules.eval(when, &b) {
                    Ok((Value::Bool(true), _)) => {}
                    Ok((Value::Bool(false), _)) => continue,
                    Ok((other, _)) => {
                        outcome.failed.push(TriggerFailure {
                            workflow: wf.name.clone(),
                            message: format!(
                                "trigger {} `when:` must be true or false, got {other}",
                                i + 1
                            ),
                        });
                        continue;
                    }
                    Err(e) => {
                        outcome.failed.push(TriggerFailure {
                            workflow: wf.name.clone(),
                            message: format!("trigger {} `when:` failed: {}", i + 1, e.message),
                        });
                        continue;
                    }
                }
            }
            if let Some(window) = window {
                windowed(
                    driver,
                    &wf,
                    i,
                    trigger,
                    window,
                    event,
                    &locals,
                    now,
                    &mut outcome,
                )
                .await;
                continue;
            }
            let key = event.id.as_ref().map(|id| format!("event:{id}:{i}"));
            start(
                driver,
                &wf,
                trigger,
                &b,
                event.data.clone(),
                key,
                &mut outcome,
            )
            .await;
        }
    }
    for f in &outcome.failed {
        tracing::warn!(workflow = %f.workflow, event = %event.event_type, "trigger did not start: {}", f.message);
    }
    outcome
}

async fn start(
    driver: &Driver,
    wf: &CompiledWorkflow,
    trigger: &Trigger,
    b: &Bindings<'_>,
    default_input: Value,
    key: Option<String>,
    outcome: &mut TriggerOutcome,
) {
    let input = match &trigger.input {
        Some(template) => match template.render(&wf.rules, b) {
            Ok(v) => v,
            Err(e) => {
                outcome.failed.push(TriggerFailure {
                    workflow: wf.name.clone(),
                    message: format!("trigger `input:` failed: {}", e.message),
                });
                return;
            }
        },
        None => default_input,
    };
    match driver.start(&wf.name, input, key).await {
        Ok(s) => {
            outcome.consumed = true;
            outcome.started.push(TriggerStart {
                workflow: wf.name.clone(),
                id: s.id,
                created: s.created,
                attached: s.attached,
                queued: s.queued,
            })
        }
        Err(e) => outcome.failed.push(TriggerFailure {
            workflow: wf.name.clone(),
            message: start_failure(&e),
        }),
    }
}

/// Why a trigger's start failed, with every input problem named (the sender has no other
/// way to see which field its event lacked).
fn start_failure(e: &StartError) -> String {
    match e {
        StartError::InvalidInput(problems) => {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            format!("{e}: {}", list.join("; "))
        }
        _ => e.to_string(),
    }
}

/// An event for a trigger with `count:`: counted in its key's window; the count reached
/// starts the workflow (once per round, see [`window`]); while that instance is open, the
/// event is given to it with the window's key instead.
#[allow(clippy::too_many_arguments)]
async fn windowed(
    driver: &Driver,
    wf: &CompiledWorkflow,
    index: usize,
    trigger: &Trigger,
    w_def: &TriggerWindow,
    event: &Event,
    locals: &Map<String, Value>,
    now: Millis,
    outcome: &mut TriggerOutcome,
) {
    let fail = |outcome: &mut TriggerOutcome, message: String| {
        outcome.failed.push(TriggerFailure {
            workflow: wf.name.clone(),
            message,
        })
    };
    let b = Bindings {
        input: &Value::Null,
        vars: &Map::new(),
        locals,
        now_ms: now,
        instance: None,
    };
    let key = match &w_def.key {
        None => String::new(),
        Some(ast) => match wf.rules.eval(ast, &b) {
            Ok((v, _)) => match crate::runtime::key_text(v).filter(|k| !k.is_empty()) {
                Some(k) => k,
                None => {
                    let why = format!("trigger {} `key:` gave nothing; check that the event has the field it reads", index + 1);
                    return fail(outcome, why);
                }
            },
            Err(e) => {
                let why = format!("trigger {} `key:` failed: {}", index + 1, e.message);
                return fail(outcome, why);
            }
        },
    };
    let store = &driver.inner().store;
    let slot = window::slot(&wf.name, &w_def.identity, &key);
    // Twice at most: the second time after finding the open round's instance finished.
    for _ in 0..2 {
        let mut decision = Err(String::new());
        let counted = store.update_event_answer(&slot, &mut |stored| {
            match Window::read(stored.clone()) {
                Ok(w) => {
                    let (next, d) = w.add(event.id.as_deref(), now, w_def.threshold);
                    decision = Ok(d);
                    next.to_value()
                }
                // Left as it is, for an operator to look at; counting on is refused.
                Err(e) => {
                    decision = Err(e);
                    stored.unwrap_or_default()
                }
            }
        });
        let decision = match (counted, decision) {
            (Ok(_), Ok(d)) => d,
            (Err(e), _) => return fail(outcome, format!("cannot count the event: {e}")),
            (Ok(_), Err(e)) => {
                return fail(outcome, format!("cannot count the event for `{key}`: {e}"))
            }
        };
        let (open, fired) = match decision {
            Decision::Counted { count } => {
                outcome.counted.push(WindowCount {
                    workflow: wf.name.clone(),
                    key,
                    count,
                    at_least: w_def.threshold.at_least,
                });
                return;
            }
            Decision::Fire(open) => (open, true),
            Decision::Open(open) => (open, false),
        };
        let close = |round: u64| {
            store.update_event_answer(&slot, &mut |stored| match Window::read(stored.clone()) {
                Ok(w) => w.finished(round).to_value(),
                Err(_) => stored.unwrap_or_default(),
            })
        };
        let mut locals = locals.clone();
        locals.insert(
            "window".into(),
            json!({
                "key": key,
                "count": open.count,
                "first_at": format_ms(open.first_at),
                "round": open.round,
            }),
        );
        let b = Bindings {
            locals: &locals,
            ..b
        };
        let input = match &trigger.input {
            Some(template) => match template.render(&wf.rules, &b) {
                Ok(v) => Ok(v),
                Err(e) => Err(format!("trigger `input:` failed: {}", e.message)),
            },
            None => Ok(event.data.clone()),
        };
        // The round's key: a start lost to a crash after the count was kept happens now,
        // once; a round started already answers with its instance.
        let start_key = window::start_key(&w_def.identity, &key, &open);
        // A start that can never succeed (the input does not fit, the workflow is gone)
        // closes the round, so counting starts afresh rather than every later event
        // failing the same way; one that may succeed later (an overloaded daemon, a store
        // error) leaves it open for the next event.
        let started = match input {
            Ok(input) => driver
                .start(&wf.name, input, Some(start_key))
                .await
                .map_err(|e| {
                    let transient =
                        matches!(e, StartError::Overloaded(_) | StartError::Internal(_));
                    (start_failure(&e), transient)
                }),
            Err(why) => Err((why, false)),
        };
        let started = match started {
            Ok(s) => s,
            Err((why, true)) => return fail(outcome, why),
            Err((why, false)) => {
                let why = match close(open.round) {
                    Ok(_) => format!("{why}; the count starts afresh"),
                    Err(e) => format!("{why} (and the count could not start afresh: {e})"),
                };
                return fail(outcome, why);
            }
        };
        if fired {
            tracing::info!(workflow = %wf.name, key = %key, count = open.count, "windowed trigger reached its count");
            outcome.consumed = true;
            outcome.started.push(TriggerStart {
                workflow: wf.name.clone(),
                id: started.id,
                created: started.created,
                attached: started.attached,
                queued: started.queued,
            });
            return;
        }
        // Created here (the start was lost to a crash, or this event overtook the one that
        // completed the count): it is open, and this event comes after the count.
        let finished = !started.created
            && match store.instance(&started.id) {
                Ok(meta) => meta.is_none_or(|m| m.is_final()),
                Err(e) => {
                    return fail(outcome, format!("cannot read instance {}: {e}", started.id))
                }
            };
        if finished {
            if let Err(e) = close(open.round) {
                return fail(outcome, format!("cannot count the event: {e}"));
            }
            continue;
        }
        // The event that completed the count is the instance's input already; an event
        // with the window's key reached the instance's waits as it was sent; a workflow
        // that never waits for this type has no use for it (and keeping it for a wait
        // that never comes would only fill the inbox).
        let fired_by_this = open.fired_by.is_some() && open.fired_by == event.id;
        if !fired_by_this && event.key != key && wf.waits_for(&event.event_type) {
            let given = Event {
                event_type: event.event_type.clone(),
                key: key.clone(),
                data: event.data.clone(),
                id: event
                    .id
                    .as_ref()
                    .map(|id| format!("window:{}:{index}:{id}", wf.name)),
            };
            if let Err(e) = driver.deliver(given).await {
                return fail(
                    outcome,
                    format!("cannot give the event to {}: {e}", started.id),
                );
            }
        }
        outcome.started.push(TriggerStart {
            workflow: wf.name.clone(),
            id: started.id,
            created: started.created,
            attached: true,
            queued: None,
        });
        return;
    }
    fail(
        outcome,
        format!("the count for `{key}` kept changing while the event was counted; send it again"),
    );
}

/// Where the last handled occurrence of a schedule is kept. The pattern is part of
/// the slot so an edited schedule starts afresh rather than firing for the old one.
fn schedule_slot(workflow: &str, index: usize, pattern: &str) -> String {
    format!("\u{0}schedule/{workflow}/{index}/{pattern}")
}

/// Fires every schedule whose latest occurrence (at or before now) has not been
/// handled. Returns what started and when the next occurrence is due.
pub async fn fire_due_schedules(
    driver: &Driver,
) -> Result<(TriggerOutcome, Option<Millis>), String> {
    let inner = driver.inner();
    let now = inner.clock.now_ms();
    let mut outcome = TriggerOutcome::default();
    let mut next_due: Option<Millis> = None;
    for wf in inner.registry.all_latest() {
        for (i, trigger) in wf.triggers.iter().enumerate() {
            let TriggerKind::Schedule {
                cron,
                pattern,
                timezone,
            } = &trigger.kind
            else {
                continue;
            };
            let Some(now_local) = timezone.timestamp_millis_opt(now).single() else {
                continue;
            };
            if let Ok(next) = cron.find_next_occurrence(&now_local, false) {
                let at = next.timestamp_millis();
                next_due = Some(next_due.map_or(at, |n| n.min(at)));
            }
            let Ok(latest) = cron.find_previous_occurrence(&now_local, true) else {
                continue;
            };
            let latest = latest.timestamp_millis();
            let slot = schedule_slot(&wf.name, i, pattern);
            let handled = inner
                .store
                .event_answer(&slot)
                .map_err(|e| e.to_string())?
                .and_then(|v| v["last"].as_i64());
            let due = match handled {
                // First sight: nothing before now was missed.
                None => false,
                Some(last) => latest > last,
            };
            if due {
                let mut locals = Map::new();
                locals.insert(
                    "schedule".into(),
                    json!({"at": format_ms(latest), "pattern": pattern}),
                );
                let b = Bindings {
                    input: &Value::Null,
                    vars: &Map::new(),
                    locals: &locals,
                    now_ms: now,
                    instance: None,
                };
                // Keyed by occurrence: firing again after a crash finds the same instance.
                let key = format!("schedule:{i}:{latest}");
                let before = outcome.failed.len();
                start(driver, &wf, trigger, &b, json!({}), Some(key), &mut outcome).await;
                if outcome.failed.len() > before {
                    continue;
                }
                tracing::info!(workflow = %wf.name, schedule = %pattern, at = %format_ms(latest), "schedule fired");
            }
            if handled != Some(latest) {
                inner
                    .store
                    .put_event_answer(&slot, &json!({"last": latest}))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    for f in &outcome.failed {
        tracing::warn!(workflow = %f.workflow, "schedule did not start: {}", f.message);
    }
    Ok((outcome, next_due))
}

/// Fires schedules for as long as the daemon runs. Wakes at least once a minute so
/// schedules in reloaded workflows are picked up.
pub async fn run_schedules(driver: Driver) {
    loop {
        let wait = match fire_due_schedules(&driver).await {
            Ok((_, Some(next))) => {
                let now = driver.inner().clock.now_ms();
                Duration::from_millis((next - now).clamp(10, 60_000) as u64)
            }
            Ok((_, None)) => Duration::from_secs(60),
            Err(e) => {
                tracing::error!("schedules: {e}; retrying in 10 s");
                Duration::from_secs(10)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
