//! One tokio task per live instance: it claims the instance, loads it, turns each
//! message into a `runtime::Input`, asks the instance for its `Step` and hands that to
//! `commit::finish`; with nothing in hand it gives the instance up and leaves memory.

use super::*;

pub(super) async fn run(inner: Arc<Inner>, id: String, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut own = Owned::default();
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(_) => {
                // Nothing queued: leave memory if there is nothing in hand.
                let parked = own
                    .state
                    .as_ref()
                    .is_none_or(|(i, _)| i.is_parked() || i.status().is_final());
                if parked {
                    // Give the instance up first, so whichever daemon wakes it next may
                    // claim it; mail that waits is handled before.
                    if let Some(fence) = own.fence.take() {
                        match inner.store.release(&id, &fence) {
                            Ok(false) => {
                                own.fence = Some(fence);
                                let read = read_mail(&inner, &id, &mut own).await;
                                // Mail that could not be read, or whose handling could not
                                // be journaled (the state was dropped): keep the claim and
                                // leave; the next ownership tick tries again. Trying again
                                // at once would spin for as long as the store fails.
                                if read == 0 || own.state.is_none() {
                                    own.fence = None;
                                } else {
                                    // Let others run (and a runtime shutting down stop us).
                                    tokio::task::yield_now().await;
                                    continue;
                                }
                            }
                            Ok(true) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "could not give up the instance; it is free again when this daemon's lease lapses");
                            }
                        }
                        own.state = None;
                    }
                    let mut actors = inner.actors.lock().unwrap_or_else(|e| e.into_inner());
                    match rx.try_recv() {
                        Ok(m) => m,
                        Err(_) => {
                            actors.remove(&id);
                            return;
                        }
                    }
                } else {
                    let m = rx.recv().await;
                    match m {
                        Some(m) => m,
                        None => return,
                    }
                }
            }
        };
        match msg {
            Msg::Mail => {
                read_mail(&inner, &id, &mut own).await;
            }
            msg => handle(&inner, &id, &mut own, msg, None).await,
        }
        inner.done_one();
    }
}

pub(super) async fn handle(
    inner: &Arc<Inner>,
    id: &str,
    own: &mut Owned,
    msg: Msg,
    mail: Option<FromMail>,
) {
    // A start for an instance that exists already (a parent reloaded while its child's first
    // start was in flight re-issues it) must not begin it again: that would rewrite its
    // journal from record 0. Messages to one id are handled in order, so by now the first
    // start has been journaled (or has failed, and this one goes ahead).
    let msg = match msg {
        Msg::Start { reply, .. }
            if own.state.is_some() || matches!(inner.store.instance(id), Ok(Some(_))) =>
        {
            let _ = reply.send(Ok(Begun::Started(Started {
                id: id.to_string(),
                created: false,
                attached: false,
                queued: None,
            })));
            return;
        }
        m => m,
    };
    let now = inner.clock.now_ms();
    // Once handled (or failed), the timer may fire again if it is still in the index.
    let _fired = match &msg {
        Msg::Timer(t) => Some(Firing(inner, t.clone())),
        _ => None,
    };
    // Mail that came from the store stays there until handled; anything else is posted
    // again if this daemon turns out to have lost the instance.
    let letter = if mail.is_none() {
        letter_of(&msg)
    } else {
        None
    };
    let mut known = None;
    if own.fence.is_none() && !matches!(msg, Msg::Start { .. }) {
        let (runnable, meta) = inner.can_run(id, now);
        known = meta;
        if !runnable {
            // Events, cancels and retries wait as mail for a daemon that can run it.
            forward(inner, id, letter, answer_of(msg)).await;
            return;
        }
        match inner.store.claim(id, &inner.daemon, now) {
            Ok(Ownership::Mine(f)) => {
                own.fence = Some(f);
                own.state = None;
            }
            Ok(Ownership::Held { daemon }) => {
                tracing::debug!(owner = %daemon, "another daemon owns the instance");
                if matches!(msg, Msg::Timer(_)) {
                    inner
                        .held_elsewhere
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.to_string(), now + inner.lease_ms.load(Ordering::Relaxed));
                }
                forward(inner, id, letter, answer_of(msg)).await;
                return;
            }
            // Handled below, as an instance that cannot be loaded.
            Ok(Ownership::Unknown) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not claim the instance");
                reply_false(msg);
                return;
            }
        }
    }
    let mut fresh = false;
    if own.state.is_none() && !matches!(msg, Msg::Start { .. }) {
        match inner.load_from(id, known) {
            Ok(s) => {
                own.state = Some(s);
                fresh = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load instance");
                if let Msg::Timer(t) = &msg {
                    drop_timer_of_unknown_instance(inner, id, t);
                }
                reply_false(msg);
                return;
            }
        }
    }
    if let Some((_, wf)) = own.state.as_ref() {
        let span = tracing::Span::current();
        span.record("workflow", tracing::field::display(&wf.name));
        span.record("version", wf.version);
    }
    // What the instance is told, and what of the outside world it needs to know: the
    // results of children that ended (for a fresh load, any it waits on).
    let mut start = None;
    let mut reply = None;
    let step = match msg {
        Msg::Start {
            record,
            then,
            wf,
            claims,
            reply,
        } => {
            let span = tracing::Span::current();
            span.record("workflow", tracing::field::display(&wf.name));
            span.record("version", wf.version);
            let (inst, step) = Instance::create_then(id, &wf, record, then, now);
            own.state = Some((inst, wf));
            start = Some((claims, reply));
            step
        }
        Msg::Migrate {
            to,
            by,
            reason,
            reply: r,
        } => {
            let (inst, wf) = own.state.as_mut().expect("loaded");
            // This daemon runs the instance on from the move: it needs what `to` calls.
            let lacking = to.calls().find(|(p, a)| !inner.plugins.provides(p, a));
            let moved = match lacking {
                Some((p, a)) => Err(MigrateRefused {
                    code: "cannot_run",
                    message: format!(
                        "version {} calls {p}.{a}, which this daemon does not have; move it from a daemon that has the plugin",
                        to.version
                    ),
                }),
                None => inst.migrate(wf, &to, &by, &reason, now),
            };
            match moved {
                Ok(step) => {
                    // From the move on the instance runs the new version.
                    *wf = to;
                    reply = Some(Answer::Migrate(r));
                    step
                }
                Err(refused) => {
                    if mail.is_some() {
                        tracing::warn!(
                            code = refused.code,
                            "a move asked on another daemon is refused: {refused}"
                        );
                    }
                    let _ = r.send(Err(refused));
                    // Nothing to journal, unless the request came as mail (its letter goes,
                    // or it is read again and again) or the load is fresh (what it has in
                    // hand is handed out).
                    if !fresh && mail.is_none() {
                        return;
                    }
                    let finished: Vec<_> = inst
                        .children_waited_on()
                        .into_iter()
                        .filter_map(|child| child_result(inner, &child).map(|r| (child, r)))
                        .collect();
                    inst.step(wf, Input::Resume, &finished, now)
                }
            }
        }
        msg => {
            let (inst, wf) = own.state.as_mut().expect("loaded");
            let mut waited: Vec<String> = if fresh {
                inst.children_waited_on()
            } else {
                Vec::new()
            };
            let input = match msg {
                Msg::Start { .. } | Msg::Migrate { .. } => unreachable!("handled above"),
                // The actor reads mail itself (`read_mail`); this is never sent here.
                Msg::Mail => Input::Resume,
                Msg::Resume => Input::Resume,
                Msg::CallResult {
                    frame,
                    attempt,
                    result,
                } => Input::CallResult {
                    frame,
                    attempt,
                    result,
                },
                Msg::Timer(t) => {
                    waited.extend(inst.child_of_frame(t.frame));
                    Input::Timer(t)
                }
                Msg::Event { event, reply: r } => {
                    reply = Some(Answer::Event(r));
                    Input::Event(event)
                }
                Msg::ChildFinished { child, result } => Input::ChildFinished { child, result },
                Msg::Cancel { reason, reply: r } => {
                    reply = Some(Answer::Cancel(r));
                    Input::Cancel { reason }
                }
                Msg::Retry { reply: r } => {
                    reply = Some(Answer::Retry(r));
                    Input::Retry
                }
                Msg::RerunAs { link, reply: r } => {
                    reply = Some(Answer::Linked(r));
                    Input::RerunAs(link)
                }
                Msg::Hold {
                    hold,
                    by,
                    reason,
                    reply: r,
                } => {
                    reply = Some(Answer::Hold(r));
                    if hold {
                        Input::Pause { by, reason }
                    } else {
                        Input::Unpause { by, reason }
                    }
                }
            };
            waited.sort();
            waited.dedup();
            let finished: Vec<_> = waited
                .into_iter()
                .filter_map(|child| child_result(inner, &child).map(|r| (child, r)))
                .collect();
            inst.step(wf, input, &finished, now)
        }
    };
    commit::finish(
        inner,
        id,
        own,
        step,
        Handled {
            start,
            reply,
            letter,
            mail,
            fresh,
        },
    )
    .await;
}

/// A timer being handled: [`Driver::fire_due_timers`] skips it until this is dropped.
pub(super) struct Firing<'a>(&'a Inner, Timer);

impl Drop for Firing<'_> {
    fn drop(&mut self) {
        self.0
            .firing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Where the answer to a message goes.
pub(super) enum Answer {
    Event(oneshot::Sender<bool>),
    Cancel(oneshot::Sender<bool>),
    Retry(oneshot::Sender<Result<(), RetryRefused>>),
    Hold(oneshot::Sender<Result<bool, HoldRefused>>),
    Migrate(oneshot::Sender<Result<Option<Move>, MigrateRefused>>),
    Linked(oneshot::Sender<Result<RerunLink, String>>),
}

/// A crash between writing a new instance's timer and its index entry (the sled store
/// writes a new instance one piece at a time, the entry last) leaves a timer for an
/// instance that never existed. Nothing would ever consume it: it would fire again at every tick
/// and, once enough piled up, hide the real timers behind it.
pub(super) fn drop_timer_of_unknown_instance(inner: &Arc<Inner>, id: &str, t: &Timer) {
    if matches!(inner.store.instance(id), Ok(None)) {
        let stale = Batch {
            instance: id.to_string(),
            timers_remove: vec![t.clone()],
            ..Batch::default()
        };
        if inner.store.write(&stale).is_ok() {
            tracing::warn!("dropped a timer of an instance that was never journaled");
        }
    }
}

pub(super) fn reply_false(msg: Msg) {
    match msg {
        Msg::Event { reply, .. } | Msg::Cancel { reply, .. } => {
            let _ = reply.send(false);
        }
        Msg::Start { reply, .. } => {
            let _ = reply.send(Err("instance could not be loaded".into()));
        }
        // Dropped: the caller reports that it could not be loaded.
        _ => {}
    }
}
