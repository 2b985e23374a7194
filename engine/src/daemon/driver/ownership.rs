//! Ownership: heartbeats, mail, orphans, and what this daemon leaves to others (see
//! the ownership rules at [`Store`] and ARCHITECTURE.md, "Ownership").

use super::*;

impl Driver {
    /// Restart every instance that should be running and that no live daemon owns (at a
    /// process start: every instance that was running when it stopped).
    pub fn resume_all(&self) -> Result<usize, String> {
        let now = self.inner.clock.now_ms();
        let orphans = self
            .inner
            .store
            .orphans(now, usize::MAX)
            .map_err(|e| e.to_string())?;
        for id in &orphans {
            self.inner.send(id, Msg::Resume);
        }
        Ok(orphans.len())
    }

    /// Whether this daemon's last heartbeat reached the store.
    pub fn store_reachable(&self) -> bool {
        self.inner.store_reachable.load(Ordering::SeqCst)
    }

    /// Renew this daemon's heartbeat now (also part of [`Driver::tick_ownership`]).
    pub fn heartbeat(&self) {
        self.inner.heartbeat();
    }

    /// Plugin actions this daemon lacks, with how many instances it leaves to other
    /// daemons because of each (as of the last lease; `/readyz` shows it).
    pub fn cannot_run(&self) -> std::collections::BTreeMap<String, usize> {
        let now = self.inner.clock.now_ms();
        let mut counts = std::collections::BTreeMap::new();
        for (call, until) in self
            .inner
            .cannot_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if *until > now {
                *counts.entry(call.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    pub fn lease_ms(&self) -> Millis {
        self.inner.lease_ms.load(Ordering::Relaxed)
    }

    /// One round of ownership work: renew this daemon's heartbeat, wake instances with
    /// mail (its own, and any no live daemon owns), and take over orphans (instances that
    /// should be running whose owner's lease lapsed). Returns how many instances it woke.
    pub fn tick_ownership(&self) -> Result<usize, String> {
        let inner = &self.inner;
        inner.heartbeat();
        let now = inner.clock.now_ms();
        let skipped = inner.lacking_plugins(now);
        let mut woken = self.wake_mailed_except(now, &skipped)?;
        if let Err(e) = self.expire_inbox() {
            tracing::error!(error = %e, "could not drop expired events from the inbox");
        }
        if let Err(e) = self.offer_inbox() {
            tracing::error!(error = %e, "could not give kept events to their waits");
        }
        let orphans = inner
            .store
            .orphans(now, OWNERSHIP_BATCH)
            .map_err(|e| e.to_string())?;
        for id in orphans {
            // One of this daemon's own actors running while its heartbeat lapsed (a
            // virtual clock that jumped) is not an orphan.
            if !inner.has_actor(&id) && !skipped.contains(&id) {
                inner.send(&id, Msg::Resume);
                woken += 1;
            }
        }
        inner
            .held_elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until > now);
        inner
            .cannot_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, until)| *until > now);
        Ok(woken)
    }

    /// Wake the instances with mail that this daemon owns or that nobody alive owns.
    /// Returns how many it woke.
    pub fn wake_mailed(&self) -> Result<usize, String> {
        let now = self.inner.clock.now_ms();
        self.wake_mailed_except(now, &self.inner.lacking_plugins(now))
    }

    /// [`Driver::wake_mailed`], leaving out the instances in `skipped`.
    fn wake_mailed_except(&self, now: Millis, skipped: &HashSet<String>) -> Result<usize, String> {
        let inner = &self.inner;
        let mailed = inner
            .store
            .mailed(&inner.daemon, now, OWNERSHIP_BATCH)
            .map_err(|e| e.to_string())?;
        let mut woken = 0;
        for id in mailed.iter().filter(|id| !skipped.contains(*id)) {
            inner.send(id, Msg::Mail);
            woken += 1;
        }
        Ok(woken)
    }

    /// Run [`Driver::tick_ownership`] against the real clock until the process ends, and
    /// read mail at once whenever the store hints that some came (the poll is the
    /// fallback: hints can be lost).
    pub async fn run_ownership(self) {
        let hint = self.inner.mail_hint.clone();
        loop {
            if let Err(e) = self.tick_ownership() {
                tracing::error!(error = %e, "could not renew this daemon's claims or read its mail");
            }
            let period = (self.lease_ms() / 3).clamp(50, 5_000);
            let next_tick = tokio::time::sleep(std::time::Duration::from_millis(period as u64));
            tokio::pin!(next_tick);
            loop {
                tokio::select! {
                    _ = &mut next_tick => break,
                    _ = hint.notified() => {
                        if let Err(e) = self.wake_mailed() {
                            tracing::error!(error = %e, "could not read this daemon's mail");
                        }
                    }
                }
            }
        }
    }
}

impl Inner {
    pub(super) fn heartbeat(&self) {
        let until = self.clock.now_ms() + self.lease_ms.load(Ordering::Relaxed);
        let ok = match self.store.heartbeat(&self.daemon, until) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "could not renew this daemon's heartbeat");
                false
            }
        };
        if self.store_reachable.swap(ok, Ordering::SeqCst) != ok && ok {
            tracing::info!("the store answers again");
        }
    }

    /// Instances whose timers this daemon leaves to others for now: held by another live
    /// daemon, or calling a plugin this daemon lacks.
    pub(super) fn left_to_others(&self, now: Millis) -> HashSet<String> {
        let mut ids = self.lacking_plugins(now);
        ids.extend(
            self.held_elsewhere
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(id, _)| id.clone()),
        );
        ids
    }

    /// Instances this daemon does not take over for now, orphaned or with mail, because
    /// they call a plugin it lacks. (Not those seen held elsewhere: an orphan's owner is
    /// gone, whatever was seen of it earlier.)
    fn lacking_plugins(&self, now: Millis) -> HashSet<String> {
        self.cannot_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether this daemon may take `id` over: false (noted, and logged once) when its
    /// workflow calls a plugin action this daemon does not have, so that a daemon that has
    /// it runs the instance instead of this one failing its calls. An instance that cannot
    /// be read is for the caller to report. Gives the index entry it read, for the load
    /// that follows (the load replays the journal, which names every version it ran).
    pub(super) fn can_run(&self, id: &str, now: Millis) -> (bool, Option<InstanceMeta>) {
        let Ok(Some(meta)) = self.store.instance(id) else {
            return (true, None);
        };
        let Ok(wf) = self
            .registry
            .pinned(self.store.as_ref(), &meta.hash, &self.rules)
        else {
            return (true, Some(meta));
        };
        let Some((plugin, action)) = wf.calls().find(|(p, a)| !self.plugins.provides(p, a)) else {
            return (true, Some(meta));
        };
        let call = format!("{plugin}.{action}");
        let until = now + self.lease_ms.load(Ordering::Relaxed);
        self.cannot_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), (call.clone(), until));
        // Once per missing action, not per instance and lease.
        let first = self
            .missing_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call.clone());
        if first {
            tracing::warn!(
                workflow = %wf.name,
                version = wf.version,
                call = %call,
                "this daemon has no plugin for `{call}`, which the instance calls; it leaves the instance to a daemon that has it (install the plugin in this daemon's plugins folder to run it here)"
            );
        }
        (false, None)
    }
}

/// Handles the instance's mail, oldest first. Returns how many letters were handled.
pub(super) async fn read_mail(inner: &Arc<Inner>, id: &str, own: &mut Owned) -> usize {
    if own.fence.is_none() {
        if !inner.can_run(id, inner.clock.now_ms()).0 {
            return 0;
        }
        match inner.store.claim(id, &inner.daemon, inner.clock.now_ms()) {
            Ok(Ownership::Mine(f)) => {
                own.fence = Some(f);
                own.state = None;
            }
            // Its owner reads it; or the instance is gone.
            Ok(Ownership::Held { .. }) | Ok(Ownership::Unknown) => return 0,
            Err(e) => {
                tracing::error!(error = %e, "could not claim the instance to read its mail");
                return 0;
            }
        }
    }
    let letters = match inner.store.mail(id, 64) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "could not read the instance's mail");
            return 0;
        }
    };
    let mut handled = 0;
    for (seq, letter) in letters {
        let mut from = FromMail { seq, event: None };
        let msg = match letter {
            Mail::Event { event, buffered } => {
                from.event = Some((event.clone(), buffered));
                Msg::Event {
                    event,
                    reply: oneshot::channel().0,
                }
            }
            Mail::ChildFinished { child, result } => Msg::ChildFinished { child, result },
            Mail::Cancel { reason } => Msg::Cancel {
                reason,
                reply: oneshot::channel().0,
            },
            Mail::Retry => Msg::Retry {
                reply: oneshot::channel().0,
            },
            Mail::Pause { by, reason } => Msg::Hold {
                hold: true,
                by,
                reason,
                reply: oneshot::channel().0,
            },
            Mail::Unpause { by, reason } => Msg::Hold {
                hold: false,
                by,
                reason,
                reply: oneshot::channel().0,
            },
            Mail::Migrate {
                to_hash,
                by,
                reason,
            } => match inner
                .registry
                .pinned(inner.store.as_ref(), &to_hash, &inner.rules)
            {
                Ok(to) => Msg::Migrate {
                    to,
                    by,
                    reason,
                    reply: oneshot::channel().0,
                },
                // The version is in the store (it was pinned before the move was asked
                // for), so this is a store failure: the letter stays for the next read.
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the version a move asks for");
                    break;
                }
            },
        };
        handle(inner, id, own, msg, Some(from)).await;
        handled += 1;
        if own.fence.is_none() {
            break;
        }
    }
    handled
}

/// The message as mail for the instance's owner, if it is one an owner must get (a timer
/// is fired by its owner, a call result is redone by it, a resume is its own business).
pub(super) fn letter_of(msg: &Msg) -> Option<Mail> {
    match msg {
        Msg::Event { event, .. } => Some(Mail::Event {
            event: event.clone(),
            buffered: None,
        }),
        Msg::ChildFinished { child, result } => Some(Mail::ChildFinished {
            child: child.clone(),
            result: result.clone(),
        }),
        Msg::Cancel { reason, .. } => Some(Mail::Cancel {
            reason: reason.clone(),
        }),
        Msg::Retry { .. } => Some(Mail::Retry),
        Msg::Hold {
            hold, by, reason, ..
        } => Some(if *hold {
            Mail::Pause {
                by: by.clone(),
                reason: reason.clone(),
            }
        } else {
            Mail::Unpause {
                by: by.clone(),
                reason: reason.clone(),
            }
        }),
        // The rerun needs its answer before it creates anything: the caller asks again.
        Msg::RerunAs { .. } => None,
        Msg::Migrate { to, by, reason, .. } => Some(Mail::Migrate {
            to_hash: to.hash.clone(),
            by: by.clone(),
            reason: reason.clone(),
        }),
        Msg::Start { .. } | Msg::Resume | Msg::CallResult { .. } | Msg::Timer(_) | Msg::Mail => {
            None
        }
    }
}

/// Another daemon owns the instance: leave it the message as mail and answer that it was
/// handed over (an event counts as delivered, a cancel or retry as requested).
pub(super) async fn forward(
    inner: &Arc<Inner>,
    id: &str,
    letter: Option<Mail>,
    answer: Option<Answer>,
) {
    let posted = match &letter {
        Some(l) => match inner.store.post(id, l) {
            Ok(()) => inner.commit().await,
            Err(e) => Err(e.to_string()),
        },
        None => Ok(()),
    };
    if let Err(e) = &posted {
        tracing::error!(error = %e, "could not leave mail for the instance's owner");
    }
    let ok = posted.is_ok();
    match answer {
        Some(Answer::Event(r)) | Some(Answer::Cancel(r)) => {
            let _ = r.send(ok);
        }
        Some(Answer::Linked(r)) => {
            let _ = r.send(Err(
                "another daemon is working on the instance this moment; ask again".into(),
            ));
        }
        Some(Answer::Retry(r)) => {
            let _ = r.send(if ok {
                Ok(())
            } else {
                Err(RetryRefused::NotRetryable(
                    "could not hand the retry to the daemon that owns the instance; try again"
                        .into(),
                ))
            });
        }
        Some(Answer::Hold(r)) if ok => {
            let _ = r.send(Ok(true));
        }
        Some(Answer::Migrate(r)) if ok => {
            let _ = r.send(Ok(None));
        }
        // Dropped when the mail could not be left: the caller reports the failure.
        Some(Answer::Hold(_)) | Some(Answer::Migrate(_)) => {}
        None => {}
    }
}

/// The reply channel of a message, for [`forward`].
pub(super) fn answer_of(msg: Msg) -> Option<Answer> {
    match msg {
        Msg::Event { reply, .. } => Some(Answer::Event(reply)),
        Msg::Cancel { reply, .. } => Some(Answer::Cancel(reply)),
        Msg::Retry { reply } => Some(Answer::Retry(reply)),
        Msg::Hold { reply, .. } => Some(Answer::Hold(reply)),
        Msg::Migrate { reply, .. } => Some(Answer::Migrate(reply)),
        Msg::RerunAs { reply, .. } => Some(Answer::Linked(reply)),
        Msg::Start { reply, .. } => {
            let _ = reply.send(Err("the instance exists already".into()));
            None
        }
        _ => None,
    }
}
