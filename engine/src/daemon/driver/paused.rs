//! Pausing a whole workflow (`POST /v1/workflows/{name}/pause`): its running instances
//! hold at their next step, and instances started while it is paused (by the API or a
//! trigger) are created held; resuming lets both go on. Timers that fell due meanwhile
//! fire once on resume, and events are kept, as for one held instance.
//!
//! The pause is kept in the store (an event-answer slot per workflow), so every daemon
//! sharing the store sees it. A start that read "not paused" just before a pause looks
//! again once its instance exists and holds it; the pause lists the workflow's open
//! instances only after it is kept. So of a start and a pause racing, one sees the other.

use super::*;
use serde::{Deserialize, Serialize};

/// Who paused a workflow, why, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowPause {
    pub by: String,
    pub reason: String,
    pub at: Millis,
}

impl WorkflowPause {
    /// The `Paused` record an instance of `workflow` gets from this pause.
    pub(super) fn record(&self, workflow: &str, at: Millis) -> Record {
        Record::Paused {
            by: self.by.clone(),
            reason: held_reason(workflow, &self.reason),
            at,
        }
    }
}

/// What a workflow pause or resume did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkflowHold {
    pub workflow: String,
    pub paused: bool,
    /// Open instances it held (pause) or let go on (resume).
    pub instances: usize,
}

/// Instances listed per store read while pausing or resuming.
const PAGE: usize = 1000;

fn slot(workflow: &str) -> String {
    format!("\u{0}paused/{workflow}")
}

/// The hold reason of an instance held by its workflow's pause; resuming the workflow
/// lets go on exactly the instances whose reason starts like this (one an operator paused
/// on its own stays paused).
fn held_reason(workflow: &str, reason: &str) -> String {
    format!("{}{reason}", marker(workflow))
}

fn marker(workflow: &str) -> String {
    format!("workflow {workflow} paused: ")
}

impl Inner {
    /// The workflow's pause, if it is paused.
    pub(super) fn workflow_pause(&self, workflow: &str) -> Result<Option<WorkflowPause>, String> {
        let stored = self
            .store
            .event_answer(&slot(workflow))
            .map_err(|e| e.to_string())?;
        // A resumed workflow keeps `null`.
        Ok(stored.and_then(|v| serde_json::from_value(v).ok()))
    }

    /// A start that found the workflow not paused: if a pause came meanwhile, it may have
    /// listed the open instances before this one existed, so this one holds itself.
    pub(super) async fn held_if_paused_since(
        self: &Arc<Self>,
        workflow: &str,
        id: &str,
    ) -> Result<(), StartError> {
        let Some(pause) = self
            .workflow_pause(workflow)
            .map_err(StartError::Internal)?
        else {
            return Ok(());
        };
        let driver = Driver {
            inner: self.clone(),
        };
        match driver
            .hold(id, true, &pause.by, &held_reason(workflow, &pause.reason))
            .await
        {
            Ok(_) | Err(HoldError::Refused(_)) => Ok(()),
            Err(HoldError::Overloaded(o)) => Err(StartError::Overloaded(o)),
            Err(e) => Err(StartError::Internal(e.to_string())),
        }
    }
}

impl Driver {
    /// The workflow's pause, if it is paused.
    pub fn workflow_pause(&self, workflow: &str) -> Result<Option<WorkflowPause>, String> {
        self.inner.workflow_pause(workflow)
    }

    /// Pause `workflow` (`pause`) or resume it: keep the pause (durably, before acting on
    /// it), then hold or let go on each of its open instances.
    pub async fn hold_workflow(
        &self,
        workflow: &str,
        pause: bool,
        by: &str,
        reason: &str,
    ) -> Result<WorkflowHold, HoldError> {
        let inner = &self.inner;
        inner.admit()?;
        if inner.registry.latest(workflow).is_none() {
            return Err(HoldError::NotFound(workflow.to_string()));
        }
        let kept = if pause {
            serde_json::to_value(WorkflowPause {
                by: by.to_string(),
                reason: reason.to_string(),
                at: inner.clock.now_ms(),
            })
            .unwrap_or_default()
        } else {
            Value::Null
        };
        inner
            .store
            .put_event_answer(&slot(workflow), &kept)
            .map_err(|e| HoldError::Internal(e.to_string()))?;
        inner.commit().await.map_err(HoldError::Internal)?;
        let action = if pause { "paused" } else { "resumed" };
        tracing::info!(%workflow, %by, %reason, "workflow {action}");
        let mut instances = 0;
        let mut after: Option<String> = None;
        loop {
            let page = inner
                .store
                .instances(after.as_deref(), PAGE)
                .map_err(|e| HoldError::Internal(e.to_string()))?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let done = page.len() < PAGE;
            for meta in page
                .into_iter()
                .filter(|m| m.workflow == workflow && !m.is_final())
            {
                if !pause && !held_by_pause(inner, workflow, &meta.id) {
                    continue;
                }
                let why = if pause {
                    held_reason(workflow, reason)
                } else {
                    reason.to_string()
                };
                match self.hold(&meta.id, pause, by, &why).await {
                    Ok(true) => instances += 1,
                    // Already held, or it finished meanwhile.
                    Ok(false) | Err(HoldError::Refused(_)) | Err(HoldError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if done {
                break;
            }
        }
        Ok(WorkflowHold {
            workflow: workflow.to_string(),
            paused: pause,
            instances,
        })
    }
}

/// Whether instance `id` is held by its workflow's pause (not by an operator's own).
fn held_by_pause(inner: &Arc<Inner>, workflow: &str, id: &str) -> bool {
    inner
        .load(id)
        .ok()
        .and_then(|(inst, _)| inst.hold().map(|h| h.reason.starts_with(&marker(workflow))))
        .unwrap_or(false)
}
