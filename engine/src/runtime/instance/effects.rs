//! The effects the current state needs the driver to carry out: calls, timers, waits and
//! child starts.

use super::{Effect, FrameState, Instance};
use crate::compile::{CompiledWorkflow, Kind};

impl Instance {
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
}
