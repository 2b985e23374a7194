//! Writing steps: the group-commit task that flushes the store for every writer at
//! once, and `finish`, which journals a step before anything it decided is carried out.

use super::*;

pub(super) async fn committer(
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let store = store.clone();
        let began = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        metrics.flush(began.elapsed());
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "journal flush failed");
        }
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}

/// The index entry of an instance, with the status and search attributes its last step
/// decided (each attribute's value as the store's id of it).
pub(super) fn meta_of(
    inst: &Instance,
    status: &str,
    search: std::collections::BTreeMap<String, String>,
) -> InstanceMeta {
    InstanceMeta {
        id: inst.id().to_string(),
        workflow: inst.workflow().to_string(),
        version: inst.version(),
        hash: inst.hash().to_string(),
        status: status.to_string(),
        created_at: inst.started_at(),
        updated_at: inst.updated_at(),
        parent: inst.parent().map(|p| p.instance.clone()),
        search,
    }
}

/// A step's search attribute changes as index entries, each value as the store's id.
fn search_entries(
    store: &dyn Store,
    inst: &Instance,
    attributes: Vec<(String, String)>,
) -> Vec<crate::store::Searched> {
    attributes
        .into_iter()
        .map(|(attribute, value)| crate::store::Searched {
            workflow: inst.workflow().to_string(),
            id: store.search_id(&attribute, &value),
            attribute,
            instance: inst.id().to_string(),
        })
        .collect()
}

/// The places of the concurrency key a step that retries a failed instance must take
/// one of back ([`Store::reopen`]): its workflow's `key:`, as it was when the instance
/// started, at each of `concurrency.limit` places.
fn reopening(wf: &CompiledWorkflow, inst: &Instance, decided: &Reply) -> Option<Vec<Claim>> {
    let (Reply::Retried(Ok(())), Some(c), None) = (decided, &wf.concurrency, inst.parent()) else {
        return None;
    };
    match concurrency_key(wf, c, inst.input(), inst.started_at()) {
        Ok(k) => Some(
            (0..c.limit.max(1))
                .map(|place| Claim::open_at(&wf.name, &k, place))
                .collect(),
        ),
        Err(e) => {
            // It gave a key at the start with the same definition and input, so this
            // cannot happen; if it does, the retry goes on without the key.
            tracing::warn!(error = %e, "a retried instance's key could not be worked out");
            None
        }
    }
}

/// Where a start's answer goes.
pub(super) type StartReply = oneshot::Sender<Result<Begun, String>>;

/// A message that came as mail: its number, and the event it brought (with its place in
/// the inbox, if it came from there).
pub(super) struct FromMail {
    pub seq: u64,
    pub event: Option<(Event, Option<Stamp>)>,
}

/// What the actor knew of the message a step answers, for writing and answering it.
pub(super) struct Handled {
    /// A start's key claim and reply: the write creates the instance.
    pub start: Option<(Vec<Claim>, StartReply)>,
    pub reply: Option<Answer>,
    /// The message as mail, posted again if the write turns out to be fenced.
    pub letter: Option<Mail>,
    /// The mail this step handles, removed in the same write.
    pub mail: Option<FromMail>,
    /// Whether the instance was loaded from its journal for this message.
    pub fresh: bool,
}

/// Write what a step decided (group commit), and only then carry out its effects and
/// answer: the driver persists and carries out, it decides nothing here.
pub(super) async fn finish(
    inner: &Arc<Inner>,
    id: &str,
    own: &mut Owned,
    step: Step,
    handled: Handled,
) {
    let Handled {
        start,
        reply,
        letter,
        mail,
        fresh,
    } = handled;
    let (inst, wf) = own.state.as_mut().expect("loaded");
    let Step {
        records,
        index,
        effects,
        reply: decided,
        timings,
    } = step;
    // Mail that brought an event the instance does not wait for (any more) goes back to
    // the inbox instead of being dropped; its wait index entries for that event are stale
    // (left by a crash, or raced by the step that ended the wait) and go in this write.
    let give_back = match (&mail, &decided) {
        (
            Some(FromMail {
                seq,
                event: Some((event, stamp)),
            }),
            Reply::Woken(false),
        ) => Some((*seq, event.clone(), *stamp)),
        _ => None,
    };
    let mut waits_remove = index.waits_remove;
    if let Some((_, event, _)) = &give_back {
        if let Ok(stale) = inner.store.waiters(&event.event_type, &event.key) {
            waits_remove.extend(stale.into_iter().filter(|w| w.instance == id));
        }
    }
    let mail_seq = match &give_back {
        Some(_) => None,
        None => mail.as_ref().map(|m| m.seq),
    };
    let store = inner.store.as_ref();
    let search = index
        .search
        .iter()
        .map(|(a, v)| (a.clone(), store.search_id(a, v)))
        .collect();
    let touches_search = !index.search_add.is_empty() || !index.search_remove.is_empty();
    let batch = Batch {
        instance: id.to_string(),
        first_seq: inst.records() - records.len() as u64,
        meta: Some(meta_of(inst, index.status, search)),
        search_add: search_entries(store, inst, index.search_add),
        search_remove: search_entries(store, inst, index.search_remove),
        timers_add: index.timers_add,
        timers_remove: index.timers_remove,
        waits_add: index.waits_add,
        waits_remove,
        records,
        fence: own.fence.clone(),
        mail_done: mail_seq.into_iter().collect(),
    };
    // A crash can keep a batch's records but lose the index entry written after them, so
    // the index may say `running` for an instance whose journal has ended (or parked it).
    // On a fresh load the journal is the truth: rewrite a stale entry.
    let stale_meta = fresh && inner.store.instance(id).ok().flatten() != batch.meta;
    let touches_timers = !batch.timers_add.is_empty() || !batch.timers_remove.is_empty();
    // Giving mail back writes too: the write checks this daemon still holds the instance.
    if !batch.records.is_empty()
        || touches_timers
        || stale_meta
        || !batch.mail_done.is_empty()
        || touches_search
        || give_back.is_some()
    {
        let written = match (&start, reopening(wf, inst, &decided)) {
            // The first write of a new instance: records and key claim together, or nothing.
            (Some((claim, _)), _) => inner.store.create(&batch, claim, &inner.daemon).map(Some),
            // A retry takes the instance's key back in the same write, or writes nothing.
            (None, Some(places)) => match inner.store.reopen(&batch, &places) {
                Ok(None) => Ok(None),
                Ok(Some(holder)) => {
                    // A refused retry that came as mail is done with: its letter goes, or
                    // it would be read again at every ownership round.
                    if !batch.mail_done.is_empty() {
                        tracing::warn!(holder = %holder, "a retry asked on another daemon is refused: instance {holder} holds the key open; retry once it has finished");
                        let done = Batch {
                            instance: batch.instance.clone(),
                            mail_done: batch.mail_done.clone(),
                            fence: own.fence.clone(),
                            ..Batch::default()
                        };
                        if let Err(e) = inner.store.write(&done) {
                            tracing::warn!(error = %e, "could not remove a refused retry's letter; it is read again later");
                        }
                    }
                    own.state = None;
                    // Answered once what it saw of the holder is durable; a failed
                    // flush drops the reply, which the caller reports as internal.
                    if let (Ok(()), Some(Answer::Retry(r))) = (inner.commit().await, reply) {
                        let _ = r.send(Err(RetryRefused::KeyOpen(holder)));
                    }
                    return;
                }
                Err(e) => Err(e),
            },
            (None, None) => inner.store.write(&batch).map(|()| None),
        };
        let committed = match written {
            Ok(Some(Created::New(fence))) => {
                own.fence = Some(fence);
                inner.commit().await
            }
            Ok(None) => inner.commit().await,
            Err(StoreError::Fenced { epoch, .. }) => {
                // Another daemon claimed the instance while this one held it (paused or
                // cut off past its lease): drop everything, hand the message over.
                tracing::warn!(
                    epoch,
                    "another daemon took the instance over; leaving it to its new owner"
                );
                inner.stats.fenced.fetch_add(1, Ordering::Relaxed);
                own.state = None;
                own.fence = None;
                if let Some((_, r)) = start {
                    let _ = r.send(Err("the instance was taken over by another daemon".into()));
                }
                forward(inner, id, letter, reply).await;
                return;
            }
            Ok(Some(found @ (Created::Existing(_) | Created::Open(_)))) => {
                // Another start won a key (or the instance exists): this one leaves
                // nothing behind and answers with the winner, once the winner is durable.
                own.state = None;
                let begun = match found {
                    Created::Open(holder) => Begun::Open(holder),
                    Created::Existing(holder) => Begun::Started(Started {
                        id: holder,
                        created: false,
                        attached: false,
                        queued: None,
                    }),
                    Created::New(_) => unreachable!("matched above"),
                };
                let answer = inner.commit().await.map(|()| begun);
                if let Some((_, r)) = start {
                    let _ = r.send(answer);
                }
                return;
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = committed {
            // Nothing was acknowledged: drop the in-memory state and reload from the journal later.
            tracing::error!(error = %e, "could not journal; the instance will be retried from its journal");
            own.state = None;
            if let Some((_, r)) = start {
                let _ = r.send(Err(e));
            }
            return;
        }
        inner
            .stats
            .records
            .fetch_add(batch.records.len() as i64, Ordering::Relaxed);
        for t in &timings {
            inner.metrics.step(&wf.name, &t.step, t.ok, t.millis);
        }
        for r in &batch.records {
            if let Record::StepFailed { error, .. } = r {
                if error.code == "rule_error" {
                    inner.metrics.rule_error(&wf.name);
                }
            }
        }
        if !batch.timers_add.is_empty() {
            inner.timer_wake.notify_one();
        }
        inner.watchers.changed(id, inst.status().is_final());
        // Waits this step began (a wait that follows a wait on the same frame, type and
        // key changes no index entry, so the records say it, not the index).
        let begun: Vec<(&str, &str)> = batch
            .records
            .iter()
            .filter_map(|r| match r {
                Record::WaitStarted { events, key, .. } => Some((events, key)),
                _ => None,
            })
            .flat_map(|(events, key)| events.iter().map(move |e| (e.as_str(), key.as_str())))
            .collect();
        // And waits back in the index (a held instance resumed).
        let mut begun = begun;
        begun.extend(
            batch
                .waits_add
                .iter()
                .map(|w| (w.event_type.as_str(), w.key.as_str())),
        );
        if !begun.is_empty() {
            inner.take_for(id, &begun);
        }
        if let Some((seq, event, stamp)) = &give_back {
            inner.give_back(id, *seq, event, *stamp).await;
        }
    }
    if let Some(obs) = &inner.observer {
        for r in &batch.records {
            obs(id, r);
        }
    }
    for r in &batch.records {
        log_record(wf, r);
    }
    if inst.status().is_final() {
        wf.rules.forget_instance(id);
    }
    carry_out(inner, id, inst, wf, effects);
    if let Some((_, r)) = start {
        let _ = r.send(Ok(Begun::Started(Started {
            id: id.to_string(),
            created: true,
            attached: false,
            queued: None,
        })));
    }
    match (reply, decided) {
        (Some(Answer::Event(r)), Reply::Woken(v))
        | (Some(Answer::Cancel(r)), Reply::Cancelled(v)) => {
            let _ = r.send(v);
        }
        (Some(Answer::Retry(r)), Reply::Retried(v)) => {
            let _ = r.send(v);
        }
        (Some(Answer::Hold(r)), Reply::Held(v)) => {
            let _ = r.send(v);
        }
        (Some(Answer::Migrate(r)), Reply::Migrated(m)) => {
            let _ = r.send(Ok(Some(m)));
        }
        (Some(Answer::Linked(r)), Reply::Linked(v)) => {
            let _ = r.send(v);
        }
        _ => {}
    }
}
