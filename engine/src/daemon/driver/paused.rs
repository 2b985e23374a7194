//! Pausing a whole workflow (`POST /v1/workflows/{name}/pause`): its running instances
//! hold at their next step, and instances started while it is paused (by the API or a
//! trigger) are created held; resuming lets both go on. Timers that fell due meanwhile
//! fire once on resume, and events are kept, as for one held instance.
//!
//! The pause is kept in the store (an event-answer slot per workflow), so every daemon
//! sharing the store sees it. A start looks again once its instance exists: one that read
//! "not paused" just before a pause holds itself (its first step may have run by then),
//! and one created held just before a resume lets itself go on; the pause and the resume
//! list the workflow's open instances only after they are kept. So of a start and a pause
//! or resume racing, one sees the other.

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
    /// Instances it could not reach (see the log); pausing or resuming again tries them.
    pub failed: Vec<String>,
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

    /// A new instance, created `held` or not: if a pause or resume came meanwhile, it may
    /// have listed the open instances before this one existed, so this one follows it. The
    /// instance exists either way, so the start succeeds; a failure here is logged (pause
    /// or resume the workflow again to mend it).
    pub(super) async fn pause_changed_since(
        self: &Arc<Self>,
        workflow: &str,
        id: &str,
        held: bool,
    ) {
        let pause = match self.workflow_pause(workflow) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%workflow, instance = %id, "could not look at the workflow's pause again: {e}; pause or resume the workflow again if this instance should follow it");
                return;
            }
        };
        let driver = Driver {
            inner: self.clone(),
        };
        let changed = match (&pause, held) {
            (Some(p), false) => {
                driver
                    .hold(id, true, &p.by, &held_reason(workflow, &p.reason))
                    .await
            }
            (None, true) => {
                driver
                    .hold(
                        id,
                        false,
                        "casework",
                        "the workflow was resumed while it started",
                    )
                    .await
            }
            _ => return,
        };
        if let Err(e) = changed {
            if !matches!(e, HoldError::Refused(_)) {
                tracing::warn!(%workflow, instance = %id, "could not make the new instance follow the workflow's pause: {e}; pause or resume the workflow again");
            }
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
        // A workflow whose file was removed may still be resumed (its instances finish).
        let known = inner.registry.latest(workflow).is_some()
            || (!pause
                && inner
                    .workflow_pause(workflow)
                    .map_err(HoldError::Internal)?
                    .is_some());
        if !known {
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
        self.hold_open(workflow, pause, by, reason).await
    }

    /// Holds (or lets go on) each open instance of `workflow`, page by page.
    async fn hold_open(
        &self,
        workflow: &str,
        pause: bool,
        by: &str,
        reason: &str,
    ) -> Result<WorkflowHold, HoldError> {
        let inner = &self.inner;
        let mut instances = 0;
        let mut failed = Vec::new();
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
                    // One instance that cannot be reached does not stop the others.
                    Err(e) => {
                        let verb = if pause { "hold" } else { "resume" };
                        tracing::warn!(%workflow, instance = %meta.id, "could not {verb} the instance: {e}");
                        failed.push(meta.id.clone());
                    }
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
            failed,
        })
    }
}

impl Driver {
    /// At start-up: finishes every pause a daemon was cut short in (killed while it held
    /// the instances one by one), so open instances of a paused workflow hold without an
    /// operator pausing again. Returns how many instances it held.
    pub async fn complete_pauses(&self) -> usize {
        let mut held = 0;
        for wf in self.inner.registry.all_latest() {
            let pause = match self.inner.workflow_pause(&wf.name) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(workflow = %wf.name, "could not read the workflow's pause: {e}");
                    continue;
                }
            };
            match self
                .hold_open(&wf.name, true, &pause.by, &pause.reason)
                .await
            {
                Ok(done) => {
                    if done.instances > 0 {
                        tracing::info!(workflow = %wf.name, instances = done.instances, "the workflow is paused: held the open instances a pause cut short had not reached");
                    }
                    held += done.instances;
                }
                Err(e) => {
                    tracing::warn!(workflow = %wf.name, "could not finish the workflow's pause: {e}; pause it again")
                }
            }
        }
        held
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
