//! Carrying out what a journaled step decided: plugin calls (each on a task of its
//! own, its result sent back to the instance), child instances, results for parents.

use super::*;

/// Carries out the effects a step decided (its records are durable by now).
pub(super) fn carry_out(
    inner: &Arc<Inner>,
    id: &str,
    inst: &Instance,
    wf: &CompiledWorkflow,
    effects: Vec<Effect>,
) {
    for e in effects {
        match e {
            Effect::Call {
                frame,
                step,
                plugin,
                action,
                input,
                key,
                attempt,
                timeout_ms,
            } => {
                let ctx = CallContext {
                    scrub: Vec::new(),
                    instance_id: id.to_string(),
                    step_id: step,
                    attempt,
                    idempotency_key: key,
                };
                spawn_call(
                    inner.clone(),
                    id.to_string(),
                    frame,
                    plugin,
                    action,
                    input,
                    ctx,
                    timeout_ms,
                );
            }
            Effect::StartChild {
                frame,
                step,
                child,
                workflow,
                input,
            } => {
                let inner2 = inner.clone();
                let parent = ParentRef {
                    instance: id.to_string(),
                    frame,
                    step,
                };
                inner.busy.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let started = inner2
                        .start(
                            &workflow,
                            input,
                            None,
                            Some(parent.clone()),
                            Some(child.clone()),
                            StartMode::New,
                        )
                        .await;
                    if let Err(e) = started {
                        let err = StepError::new(
                            "subworkflow_failed",
                            format!("could not start `{workflow}`: {e}"),
                        );
                        inner2.send(
                            &parent.instance,
                            Msg::ChildFinished {
                                child,
                                result: Err(err),
                            },
                        );
                    }
                    inner2.done_one();
                });
            }
            Effect::Finished => {
                // A place of its key is free: the oldest start queued for it goes next.
                if let (None, Some(c)) = (inst.parent(), wf.concurrency.as_ref()) {
                    if c.on_conflict == crate::compile::OnConflict::Queue {
                        // At its start's time, as the key was worked out when it was claimed.
                        if let Ok(key) =
                            super::concurrency_key(wf, c, inst.input(), inst.started_at())
                        {
                            inner.wake_queue(&wf.name, &key);
                        }
                    }
                }
                if let Some(p) = inst.parent() {
                    let result = match (inst.status(), inst.output(), inst.error()) {
                        (crate::runtime::Status::Completed, o, _) => {
                            Ok(o.cloned().unwrap_or(Value::Null))
                        }
                        (_, _, e) => Err(e
                            .cloned()
                            .unwrap_or_else(|| StepError::new("failed", "subworkflow failed"))),
                    };
                    inner.send(
                        &p.instance,
                        Msg::ChildFinished {
                            child: id.to_string(),
                            result,
                        },
                    );
                }
            }
            Effect::Timer { .. } | Effect::Wait { .. } => {}
        }
    }
}

pub(super) fn child_result(inner: &Arc<Inner>, child: &str) -> Option<Result<Value, StepError>> {
    let meta = inner.store.instance(child).ok()??;
    let journal = inner.store.journal(child).ok()?;
    if !meta.is_final() {
        // The index can lag the journal (a crash between the two writes of the child's last
        // batch). Then reload the child: it repairs its entry and reports to its parent.
        if journal.last().is_some_and(Record::is_final) {
            inner.send(child, Msg::Resume);
        }
        return None;
    }
    journal.iter().rev().find_map(|r| match r {
        Record::Completed { output, .. } => Some(Ok(output.clone())),
        Record::Failed { error, .. } => Some(Err(error.clone())),
        Record::Cancelled { reason, .. } => Some(Err(StepError::new("cancelled", reason.clone()))),
        _ => None,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_call(
    inner: Arc<Inner>,
    id: String,
    frame: u32,
    plugin: String,
    action: String,
    input: Value,
    ctx: CallContext,
    timeout_ms: u64,
) {
    inner.busy.fetch_add(1, Ordering::SeqCst);
    // A child of the instance span: log lines of the call (the plugin's own included)
    // carry instance, workflow, version, step and attempt.
    let span = tracing::info_span!(
        "step",
        step = %ctx.step_id,
        call = %format!("{plugin}.{action}"),
        attempt = ctx.attempt
    );
    let call_task = async move {
        let attempt = ctx.attempt;
        let began = std::time::Instant::now();
        let opened = super::write_only::open(
            input,
            (&plugin, &action),
            || inner.plugins.sensitive_fields(&plugin, &action),
            inner.store.write_only_sealer(),
            inner.clock.now_ms(),
        );
        let answer = match opened {
            Ok((input, plain)) => {
                let mut ctx = ctx;
                ctx.scrub.extend(plain);
                let call = inner.plugins.call(&plugin, &action, input, ctx);
                tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), call).await
            }
            Err(refused) => Ok(Err(crate::plugin_host::PluginError {
                code: refused.code,
                message: refused.message,
                retryable: false,
            })),
        };
        let outcome = match &answer {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        inner
            .metrics
            .plugin_call(&plugin, &action, outcome, began.elapsed());
        let result = match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StepError::from(e)),
            Err(_) => Err(StepError {
                code: "timeout".into(),
                message: format!("`{plugin}.{action}` did not answer within {timeout_ms} ms"),
                retryable: true,
                step: None,
            }),
        };
        inner.send(
            &id,
            Msg::CallResult {
                frame,
                attempt,
                result,
            },
        );
        inner.done_one();
    };
    tokio::spawn(tracing::Instrument::instrument(call_task, span));
}

pub(super) fn log_record(wf: &CompiledWorkflow, r: &Record) {
    // Only names and outcomes are logged: values may hold personal data.
    match r {
        Record::StepCompleted { step, next, .. } => {
            tracing::debug!(workflow = %wf.name, version = wf.version, step = %step, next = ?next, "step completed")
        }
        Record::CallStarted { step, attempt, .. } => {
            tracing::debug!(workflow = %wf.name, step = %step, attempt, "plugin call started")
        }
        Record::CallFailed {
            step,
            attempt,
            error,
            retry_at,
            ..
        } => {
            tracing::warn!(workflow = %wf.name, step = %step, attempt, code = %error.code, will_retry = retry_at.is_some(), "plugin call failed")
        }
        Record::StepFailed {
            step, error, next, ..
        } => {
            tracing::warn!(workflow = %wf.name, step = %step, code = %error.code, handler = ?next, "step failed")
        }
        Record::Completed { .. } => {
            tracing::info!(workflow = %wf.name, version = wf.version, "instance completed")
        }
        Record::Failed { error, .. } => {
            tracing::warn!(workflow = %wf.name, code = %error.code, "instance failed")
        }
        _ => {}
    }
}
