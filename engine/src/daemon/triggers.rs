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

use super::Driver;
use crate::compile::rules::{format_ms, Bindings};
use crate::compile::{CompiledWorkflow, Trigger, TriggerKind};
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
}

/// A trigger that matched but could not start its workflow; the message says why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TriggerFailure {
    pub workflow: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TriggerOutcome {
    pub started: Vec<TriggerStart>,
    pub failed: Vec<TriggerFailure>,
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
            let TriggerKind::Event { event_type, when } = &trigger.kind else {
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
        Ok(s) => outcome.started.push(TriggerStart {
            workflow: wf.name.clone(),
            id: s.id,
            created: s.created,
            attached: s.attached,
        }),
        Err(e) => outcome.failed.push(TriggerFailure {
            workflow: wf.name.clone(),
            message: e.to_string(),
        }),
    }
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
