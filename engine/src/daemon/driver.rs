//! The driver: runs instances as actors, journals their records with group commit, and
//! carries out their effects (plugin calls, timers, waits, child instances).
//!
//! Each live instance is one tokio task owning its state; messages (call results, timers,
//! events) reach it through its inbox. An instance with nothing to do leaves memory and is
//! reloaded from its journal when a timer, event or child wakes it: parked instances cost
//! disk, not RAM.
//!
//! Several drivers (daemons) may share one store. An actor writes only under its claim on
//! the instance (a [`Fence`]): it claims the instance when it wakes it, gives it up when it
//! parks, and stops at once when the store says another daemon has claimed it since (see
//! the ownership rules at [`Store`]). A message for an instance another live daemon owns
//! becomes mail in the store; [`Driver::tick_ownership`] renews this daemon's heartbeat,
//! reads its mail and takes over orphans.

use super::metrics::Metrics;
use super::registry::Registry;
use crate::clock::Clock;
use crate::compile::{rules::Rules, CompiledWorkflow};
use crate::plugin_host::{CallContext, PluginHost};
use crate::runtime::{
    Effect, Event, Input, Instance, Millis, ParentRef, Record, Reply, RetryRefused, Step, StepError,
};
use crate::store::{
    Batch, Claim, Created, Error as StoreError, Fence, InstanceMeta, Mail, Ownership, Store, Timer,
};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Notify};

/// Called with every record journaled, after it is durable (used by `casework run` to print steps).
pub type Observer = Arc<dyn Fn(&str, &Record) + Send + Sync>;

#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

pub struct Inner {
    /// This daemon's name in the store's ownership records: unique per process.
    pub daemon: String,
    /// How long a heartbeat keeps this daemon's claims (ms).
    lease_ms: AtomicI64,
    /// Whether the last heartbeat reached the store (`/readyz` says so when it did not).
    store_reachable: std::sync::atomic::AtomicBool,
    /// Instances found owned by another live daemon, until when to leave their timers to it.
    held_elsewhere: Mutex<HashMap<String, Millis>>,
    /// Instances whose workflow calls a plugin action this daemon does not have: left to
    /// a daemon that has it, until when (then looked at again; plugins may be added).
    cannot_run: Mutex<HashMap<String, (String, Millis)>>,
    /// Plugin actions found missing (each is logged once).
    missing_calls: Mutex<HashSet<String>>,
    /// Set when the store hints that mail came for this daemon ([`Store::on_mail`]).
    mail_hint: Arc<Notify>,
    pub store: Arc<dyn Store>,
    pub plugins: Arc<dyn PluginHost>,
    pub clock: Arc<dyn Clock>,
    pub registry: Registry,
    pub rules: Arc<Rules>,
    actors: Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    busy: AtomicI64,
    /// Admission bound on `busy`: past it, starts, events and retries are refused
    /// with [`Overloaded`] instead of queueing without end.
    max_pending: AtomicI64,
    idle: Notify,
    commits: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
    timer_wake: Notify,
    firing: Mutex<HashSet<Timer>>,
    events_in_flight: KeyedLock,
    observer: Option<Observer>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
}

/// Counters for benchmarks and metrics.
#[derive(Default)]
pub struct Stats {
    pub records: AtomicI64,
    pub flushes: AtomicI64,
    /// Writes refused because another daemon had claimed the instance since.
    pub fenced: AtomicI64,
}

enum Msg {
    Start {
        record: Record,
        wf: Arc<CompiledWorkflow>,
        /// The idempotency key, claimed in the same write as the instance's first records.
        claim: Option<Claim>,
        reply: oneshot::Sender<Result<Started, String>>,
    },
    Resume,
    CallResult {
        frame: u32,
        attempt: u32,
        result: Result<Value, StepError>,
    },
    Timer(Timer),
    Event {
        event: Event,
        reply: oneshot::Sender<bool>,
    },
    ChildFinished {
        child: String,
        result: Result<Value, StepError>,
    },
    Cancel {
        reason: String,
        reply: oneshot::Sender<bool>,
    },
    Retry {
        reply: oneshot::Sender<Result<(), RetryRefused>>,
    },
    /// Read the instance's mail (messages left while another daemon owned it).
    Mail,
}

/// Default lease: how long a daemon that stops renewing keeps its instances before other
/// daemons take them over. Heartbeats run at a third of it.
pub const DEFAULT_LEASE_MS: Millis = 10_000;
/// Mail and orphans read per ownership tick.
const OWNERSHIP_BATCH: usize = 1024;

/// Default bound on work in hand (queued messages, plugin calls and child starts in
/// flight, across all instances). Each unit costs a message and, for calls, a task: at this
/// bound that is a few megabytes, far from exhausting memory, while a burst that exceeds it
/// is told to come back (`503` with `Retry-After`) rather than queued without limit.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// The engine has as much work in hand as it may queue; try again shortly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the engine has {pending} units of work in hand, its limit (max_pending); try again in {retry_after_s} s")]
pub struct Overloaded {
    pub pending: usize,
    pub retry_after_s: u64,
}

/// Why an event could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("{0}")]
    Internal(String),
}

/// Why a retry did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no instance `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] RetryRefused),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("{0}")]
    Internal(String),
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no workflow named `{0}` is loaded")]
    UnknownWorkflow(String),
    #[error("the input does not match the workflow's `input:` section")]
    InvalidInput(Vec<crate::validate::input::InputProblem>),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("{0}")]
    Internal(String),
}

/// Result of a start: the instance, and whether this call created it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Started {
    pub id: String,
    pub created: bool,
}

impl Driver {
    /// A driver over `store` with the default lease. Call [`Driver::resume_all`] after
    /// loading workflows.
    pub fn new(
        store: Arc<dyn Store>,
        plugins: Arc<dyn PluginHost>,
        clock: Arc<dyn Clock>,
        observer: Option<Observer>,
    ) -> Driver {
        Driver::with_lease(store, plugins, clock, observer, DEFAULT_LEASE_MS)
    }

    /// A driver whose claims outlive its last heartbeat by `lease_ms` (see
    /// [`DEFAULT_LEASE_MS`]). Fixed for the driver's life: a heartbeat never shortens a
    /// lease, so a lease set after the first heartbeat would hold the first one's length.
    pub fn with_lease(
        store: Arc<dyn Store>,
        plugins: Arc<dyn PluginHost>,
        clock: Arc<dyn Clock>,
        observer: Option<Observer>,
        lease_ms: Millis,
    ) -> Driver {
        let lease_ms = lease_ms.max(1);
        let (commits, rx) = mpsc::unbounded_channel();
        let daemon = format!("d-{}", new_id(clock.now_ms()));
        // Alive from the first instant, so this daemon's first claims count.
        if let Err(e) = store.heartbeat(&daemon, clock.now_ms() + lease_ms) {
            tracing::error!(error = %e, "could not record this daemon's heartbeat");
        }
        let mail_hint = Arc::new(Notify::new());
        store.on_mail(&daemon, {
            let hint = mail_hint.clone();
            Arc::new(move || hint.notify_one())
        });
        let inner = Arc::new(Inner {
            daemon,
            mail_hint,
            lease_ms: AtomicI64::new(lease_ms),
            held_elsewhere: Mutex::new(HashMap::new()),
            cannot_run: Mutex::new(HashMap::new()),
            missing_calls: Mutex::new(HashSet::new()),
            store_reachable: std::sync::atomic::AtomicBool::new(true),
            store,
            plugins,
            clock,
            registry: Registry::default(),
            rules: Rules::shared(),
            actors: Mutex::new(HashMap::new()),
            busy: AtomicI64::new(0),
            max_pending: AtomicI64::new(DEFAULT_MAX_PENDING as i64),
            idle: Notify::new(),
            commits,
            timer_wake: Notify::new(),
            firing: Mutex::new(HashSet::new()),
            events_in_flight: KeyedLock::default(),
            observer,
            stats: Arc::new(Stats::default()),
            metrics: Arc::new(Metrics::default()),
        });
        tokio::spawn(committer(
            inner.store.clone(),
            inner.stats.clone(),
            inner.metrics.clone(),
            rx,
        ));
        Driver { inner }
    }

    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The instance as its journal says it is now (None if unknown).
    pub fn snapshot(&self, id: &str) -> Option<Instance> {
        self.inner.load(id).ok().map(|(i, _)| i)
    }

    /// Install a compiled workflow as the newest version of its name.
    pub fn install(&self, wf: CompiledWorkflow) -> Result<Arc<CompiledWorkflow>, String> {
        let wf = self
            .inner
            .registry
            .install(self.inner.store.as_ref(), wf)
            .map_err(|e| e.to_string())?;
        self.inner
            .registry
            .mark_loaded(&wf.hash, self.inner.clock.now_ms());
        Ok(wf)
    }

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
        let mut woken = self.wake_mailed()?;
        let orphans = inner
            .store
            .orphans(now, OWNERSHIP_BATCH)
            .map_err(|e| e.to_string())?;
        let skipped = inner.left_to_others(now);
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
        let inner = &self.inner;
        let mailed = inner
            .store
            .mailed(&inner.daemon, inner.clock.now_ms(), OWNERSHIP_BATCH)
            .map_err(|e| e.to_string())?;
        let skipped = inner.left_to_others(inner.clock.now_ms());
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

    /// Start an instance of the newest version of `workflow`.
    pub async fn start(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<Started, StartError> {
        self.inner.admit()?;
        self.inner
            .start(workflow, input, idempotency_key, None, None)
            .await
    }

    /// Bound the work in hand (see [`DEFAULT_MAX_PENDING`]).
    pub fn set_max_pending(&self, max: usize) {
        self.inner
            .max_pending
            .store(max.min(i64::MAX as usize) as i64, Ordering::Relaxed);
    }

    /// Start an instance with a chosen id (used by benchmarks and tests to await it).
    pub async fn start_as(
        &self,
        workflow: &str,
        input: Value,
        id: String,
    ) -> Result<Started, StartError> {
        self.inner
            .start(workflow, input, None, None, Some(id))
            .await
    }

    /// Deliver an event to every instance waiting for its type and key. Returns the ids woken.
    pub async fn deliver(&self, event: Event) -> Result<Vec<String>, DeliverError> {
        let inner = &self.inner;
        inner.admit()?;
        // Duplicates of one event id sent at once are delivered one after the other, so
        // the second finds the first's answer instead of waking the instance again.
        let _in_flight = match &event.id {
            Some(id) => Some(inner.events_in_flight.hold(id).await),
            None => None,
        };
        if let Some(id) = &event.id {
            if let Some(answer) = inner
                .store
                .event_answer(id)
                .map_err(|e| DeliverError::Internal(e.to_string()))?
            {
                return Ok(serde_json::from_value(answer).unwrap_or_default());
            }
        }
        let waiters = inner
            .store
            .waiters(&event.event_type, &event.key)
            .map_err(|e| DeliverError::Internal(e.to_string()))?;
        let instances: BTreeSet<String> = waiters.into_iter().map(|w| w.instance).collect();
        let mut woken = Vec::new();
        for id in instances {
            let (reply, rx) = oneshot::channel();
            inner.send(
                &id,
                Msg::Event {
                    event: event.clone(),
                    reply,
                },
            );
            if rx.await.unwrap_or(false) {
                woken.push(id);
            }
        }
        if let Some(id) = &event.id {
            inner
                .store
                .put_event_answer(id, &serde_json::json!(woken))
                .map_err(|e| DeliverError::Internal(e.to_string()))?;
            inner.commit().await.map_err(DeliverError::Internal)?;
        }
        Ok(woken)
    }

    /// Ask an instance to stop; its compensations run first. Returns false if it had already ended.
    pub async fn cancel(&self, id: &str, reason: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        self.inner.send(
            id,
            Msg::Cancel {
                reason: reason.into(),
                reply,
            },
        );
        rx.await.unwrap_or(false)
    }

    /// Run a failed instance's failed step again (see [`Instance::retry`]). Returns once
    /// the retry is journaled.
    pub async fn retry(&self, id: &str) -> Result<(), RetryError> {
        self.inner.admit()?;
        if self
            .inner
            .store
            .instance(id)
            .map_err(|e| RetryError::Internal(e.to_string()))?
            .is_none()
        {
            return Err(RetryError::NotFound(id.to_string()));
        }
        let (reply, rx) = oneshot::channel();
        self.inner.send(id, Msg::Retry { reply });
        match rx.await {
            Ok(r) => r.map_err(RetryError::Refused),
            Err(_) => Err(RetryError::Internal(
                "the instance could not be loaded or journaled; see the log".into(),
            )),
        }
    }

    /// Fire the timers that are due now. Returns how many were sent.
    pub fn fire_due_timers(&self) -> Result<usize, String> {
        let inner = &self.inner;
        let due = inner
            .store
            .due_timers(inner.clock.now_ms(), 1024)
            .map_err(|e| e.to_string())?;
        let mut sent = 0;
        let held = inner.left_to_others(inner.clock.now_ms());
        for t in due {
            // Another live daemon owns the instance (its own timer loop fires this), or
            // the instance calls a plugin this daemon lacks.
            if held.contains(&t.instance) {
                continue;
            }
            if inner
                .firing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t.clone())
            {
                inner.send(&t.instance.clone(), Msg::Timer(t));
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Run timers against the real clock until the process ends.
    pub async fn run_timers(self) {
        loop {
            if let Err(e) = self.fire_due_timers() {
                tracing::error!(error = %e, "could not read timers");
            }
            let now = self.inner.clock.now_ms();
            let wait_ms = match self.inner.store.next_timer() {
                Ok(Some(at)) => (at - now).clamp(5, 1_000),
                _ => 1_000,
            };
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait_ms as u64)) => {}
                _ = self.inner.timer_wake.notified() => {}
            }
        }
    }

    /// Wait until no instance has work in hand (no message queued, no call in flight).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.busy.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// With a virtual clock: run until nothing can happen, jumping the clock to each next timer.
    /// `stop` is checked whenever the engine is idle.
    pub async fn run_virtual(&self, mut stop: impl FnMut() -> bool) -> Result<(), String> {
        loop {
            self.wait_idle().await;
            if stop() {
                return Ok(());
            }
            if self.fire_due_timers()? > 0 {
                continue;
            }
            match self.inner.store.next_timer().map_err(|e| e.to_string())? {
                Some(at) if at > self.inner.clock.now_ms() => self.inner.clock.advance_to(at),
                Some(_) => tokio::task::yield_now().await,
                None => return Ok(()),
            }
        }
    }
}

impl Inner {
    fn heartbeat(&self) {
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

    /// Instances this daemon leaves to others for now: held by another live daemon, or
    /// calling a plugin this daemon lacks.
    fn left_to_others(&self, now: Millis) -> HashSet<String> {
        let mut ids: HashSet<String> = self
            .held_elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, _)| id.clone())
            .collect();
        ids.extend(
            self.cannot_run
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, (_, until))| *until > now)
                .map(|(id, _)| id.clone()),
        );
        ids
    }

    /// Whether this daemon may take `id` over: false (noted, and logged once) when its
    /// workflow calls a plugin action this daemon does not have, so that a daemon that has
    /// it runs the instance instead of this one failing its calls. An instance that cannot
    /// be read is for the caller to report. Gives the index entry it read, for the load
    /// that follows (its pinned hash never changes).
    fn can_run(&self, id: &str, now: Millis) -> (bool, Option<InstanceMeta>) {
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

    fn has_actor(&self, id: &str) -> bool {
        self.actors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Refuses new work from outside while the work in hand is at its bound. Work the
    /// engine gives itself (call results, timers, child results) is never refused: it is
    /// bounded by what was admitted, and dropping it would lose a state change.
    fn admit(&self) -> Result<(), Overloaded> {
        let pending = self.busy.load(Ordering::SeqCst);
        if pending >= self.max_pending.load(Ordering::Relaxed) {
            self.metrics.overloaded();
            return Err(Overloaded {
                pending: pending.max(0) as usize,
                retry_after_s: 1,
            });
        }
        Ok(())
    }

    fn send(self: &Arc<Self>, id: &str, msg: Msg) {
        let mut actors = self.actors.lock().unwrap_or_else(|e| e.into_inner());
        self.busy.fetch_add(1, Ordering::SeqCst);
        let msg = match actors.get(id) {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::error::SendError(m)) => m,
            },
            None => msg,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(msg).ok();
        actors.insert(id.to_string(), tx);
        let span = tracing::info_span!(
            "instance",
            id = %id,
            workflow = tracing::field::Empty,
            version = tracing::field::Empty
        );
        tokio::spawn(tracing::Instrument::instrument(
            actor(self.clone(), id.to_string(), rx),
            span,
        ));
    }

    fn done_one(&self) {
        if self.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Wait until everything written so far is durable (shared flush).
    async fn commit(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send(tx)
            .map_err(|_| "the commit task has stopped".to_string())?;
        rx.await
            .map_err(|_| "the commit task has stopped".to_string())?
    }

    async fn start(
        self: &Arc<Self>,
        workflow: &str,
        input: Value,
        key: Option<String>,
        parent: Option<ParentRef>,
        id: Option<String>,
    ) -> Result<Started, StartError> {
        let wf = self
            .registry
            .latest(workflow)
            .ok_or_else(|| StartError::UnknownWorkflow(workflow.to_string()))?;
        let input =
            crate::validate::input::check(&wf.inputs, &input).map_err(StartError::InvalidInput)?;
        let id = id.unwrap_or_else(|| new_id(self.clock.now_ms()));
        let claim = key.as_ref().map(|k| Claim {
            workflow: workflow.to_string(),
            key: k.clone(),
        });
        // A duplicate of a start that has committed answers without running anything. One
        // racing a start still in flight is settled by the store: the key is claimed in the
        // same atomic write as the instance (see `Store::create`), so only one can win.
        if let Some(c) = &claim {
            if let Some(existing) = self
                .store
                .key_holder(&c.workflow, &c.key)
                .map_err(|e| StartError::Internal(e.to_string()))?
            {
                return Ok(Started {
                    id: existing,
                    created: false,
                });
            }
        }
        if parent.is_some()
            && self
                .store
                .instance(&id)
                .map_err(|e| StartError::Internal(e.to_string()))?
                .is_some()
        {
            return Ok(Started { id, created: false });
        }
        let record = Instance::start_record(&wf, input, key, parent, self.clock.now_ms());
        let (reply, rx) = oneshot::channel();
        self.send(
            &id,
            Msg::Start {
                record,
                wf,
                claim,
                reply,
            },
        );
        rx.await
            .map_err(|_| StartError::Internal("instance task stopped".into()))?
            .map_err(StartError::Internal)
    }

    fn load(&self, id: &str) -> Result<(Instance, Arc<CompiledWorkflow>), String> {
        self.load_from(id, None)
    }

    /// [`Inner::load`] with the instance's index entry if it was read already.
    fn load_from(
        &self,
        id: &str,
        meta: Option<InstanceMeta>,
    ) -> Result<(Instance, Arc<CompiledWorkflow>), String> {
        let meta = match meta {
            Some(m) => m,
            None => self
                .store
                .instance(id)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no instance `{id}`"))?,
        };
        let wf = self
            .registry
            .pinned(self.store.as_ref(), &meta.hash, &self.rules)?;
        let journal = self.store.journal(id).map_err(|e| e.to_string())?;
        Ok((Instance::replay(id, &wf, &journal), wf))
    }
}

/// One async lock per key, held only while in use (the map holds keys in flight only).
#[derive(Default)]
struct KeyedLock {
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key of a [`KeyedLock`]; the entry goes when the last holder or waiter does.
struct KeyGuard<'a> {
    lock: &'a KeyedLock,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLock {
    async fn hold(&self, key: &str) -> KeyGuard<'_> {
        let m = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let guard = m.lock_owned().await;
        KeyGuard {
            lock: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.lock.held.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds it now: nobody holds or waits for this key.
        if held
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            held.remove(&self.key);
        }
    }
}

/// A new instance id: sortable by creation time, unique.
pub fn new_id(now: Millis) -> String {
    format!("{:011x}{:08x}", now.max(0), rand::random::<u32>())
}

async fn committer(
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

/// The index entry of an instance, with the status its last step decided.
fn meta_of(inst: &Instance, status: &str) -> InstanceMeta {
    InstanceMeta {
        id: inst.id().to_string(),
        workflow: inst.workflow().to_string(),
        version: inst.version(),
        hash: inst.hash().to_string(),
        status: status.to_string(),
        created_at: inst.started_at(),
        updated_at: inst.updated_at(),
        parent: inst.parent().map(|p| p.instance.clone()),
    }
}

/// What an actor holds: the instance as its journal says (once loaded) and the claim it
/// may write under.
#[derive(Default)]
struct Owned {
    state: Option<(Instance, Arc<CompiledWorkflow>)>,
    fence: Option<Fence>,
}

async fn actor(inner: Arc<Inner>, id: String, mut rx: mpsc::UnboundedReceiver<Msg>) {
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
                                if read_mail(&inner, &id, &mut own).await == 0 {
                                    // Unreadable mail: keep the claim and leave; the next
                                    // ownership tick tries again.
                                    own.fence = None;
                                } else {
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

/// Handles the instance's mail, oldest first. Returns how many letters were handled.
async fn read_mail(inner: &Arc<Inner>, id: &str, own: &mut Owned) -> usize {
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
        let msg = match letter {
            Mail::Event { event } => Msg::Event {
                event,
                reply: oneshot::channel().0,
            },
            Mail::ChildFinished { child, result } => Msg::ChildFinished { child, result },
            Mail::Cancel { reason } => Msg::Cancel {
                reason,
                reply: oneshot::channel().0,
            },
            Mail::Retry => Msg::Retry {
                reply: oneshot::channel().0,
            },
        };
        handle(inner, id, own, msg, Some(seq)).await;
        handled += 1;
        if own.fence.is_none() {
            break;
        }
    }
    handled
}

/// The message as mail for the instance's owner, if it is one an owner must get (a timer
/// is fired by its owner, a call result is redone by it, a resume is its own business).
fn letter_of(msg: &Msg) -> Option<Mail> {
    match msg {
        Msg::Event { event, .. } => Some(Mail::Event {
            event: event.clone(),
        }),
        Msg::ChildFinished { child, result } => Some(Mail::ChildFinished {
            child: child.clone(),
            result: result.clone(),
        }),
        Msg::Cancel { reason, .. } => Some(Mail::Cancel {
            reason: reason.clone(),
        }),
        Msg::Retry { .. } => Some(Mail::Retry),
        Msg::Start { .. } | Msg::Resume | Msg::CallResult { .. } | Msg::Timer(_) | Msg::Mail => {
            None
        }
    }
}

/// Another daemon owns the instance: leave it the message as mail and answer that it was
/// handed over (an event counts as delivered, a cancel or retry as requested).
async fn forward(inner: &Arc<Inner>, id: &str, letter: Option<Mail>, answer: Option<Answer>) {
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
        None => {}
    }
}

/// The reply channel of a message, for [`forward`].
fn answer_of(msg: Msg) -> Option<Answer> {
    match msg {
        Msg::Event { reply, .. } => Some(Answer::Event(reply)),
        Msg::Cancel { reply, .. } => Some(Answer::Cancel(reply)),
        Msg::Retry { reply } => Some(Answer::Retry(reply)),
        Msg::Start { reply, .. } => {
            let _ = reply.send(Err("the instance exists already".into()));
            None
        }
        _ => None,
    }
}

async fn handle(inner: &Arc<Inner>, id: &str, own: &mut Owned, msg: Msg, mail_seq: Option<u64>) {
    // A start for an instance that exists already (a parent reloaded while its child's first
    // start was in flight re-issues it) must not begin it again: that would rewrite its
    // journal from record 0. Messages to one id are handled in order, so by now the first
    // start has been journaled (or has failed, and this one goes ahead).
    let msg = match msg {
        Msg::Start { reply, .. }
            if own.state.is_some() || matches!(inner.store.instance(id), Ok(Some(_))) =>
        {
            let _ = reply.send(Ok(Started {
                id: id.to_string(),
                created: false,
            }));
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
    let letter = if mail_seq.is_none() {
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
            wf,
            claim,
            reply,
        } => {
            let span = tracing::Span::current();
            span.record("workflow", tracing::field::display(&wf.name));
            span.record("version", wf.version);
            let (inst, step) = Instance::create(id, &wf, record, now);
            own.state = Some((inst, wf));
            start = Some((claim, reply));
            step
        }
        msg => {
            let (inst, wf) = own.state.as_mut().expect("loaded");
            let mut waited: Vec<String> = if fresh {
                inst.children_waited_on()
            } else {
                Vec::new()
            };
            let input = match msg {
                Msg::Start { .. } => unreachable!("handled above"),
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
    let (inst, wf) = own.state.as_mut().expect("loaded");
    let Step {
        records,
        index,
        effects,
        reply: decided,
        timings,
    } = step;
    let batch = Batch {
        instance: id.to_string(),
        first_seq: inst.records() - records.len() as u64,
        meta: Some(meta_of(inst, index.status)),
        timers_add: index.timers_add,
        timers_remove: index.timers_remove,
        waits_add: index.waits_add,
        waits_remove: index.waits_remove,
        records,
        fence: own.fence.clone(),
        mail_done: mail_seq.into_iter().collect(),
    };
    // A crash can keep a batch's records but lose the index entry written after them, so
    // the index may say `running` for an instance whose journal has ended (or parked it).
    // On a fresh load the journal is the truth: rewrite a stale entry.
    let stale_meta = fresh && inner.store.instance(id).ok().flatten() != batch.meta;
    let touches_timers = !batch.timers_add.is_empty() || !batch.timers_remove.is_empty();
    if !batch.records.is_empty() || touches_timers || stale_meta || !batch.mail_done.is_empty() {
        let written = match &start {
            // The first write of a new instance: records and key claim together, or nothing.
            Some((claim, _)) => inner
                .store
                .create(&batch, claim.as_ref(), &inner.daemon)
                .map(Some),
            None => inner.store.write(&batch).map(|()| None),
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
            Ok(Some(Created::Existing(holder))) => {
                // Another start won the key (or the instance exists): this one leaves
                // nothing behind and answers with the winner, once the winner is durable.
                own.state = None;
                let answer = inner.commit().await.map(|()| Started {
                    id: holder,
                    created: false,
                });
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
    carry_out(inner, id, inst, effects);
    if let Some((_, r)) = start {
        let _ = r.send(Ok(Started {
            id: id.to_string(),
            created: true,
        }));
    }
    match (reply, decided) {
        (Some(Answer::Event(r)), Reply::Woken(v))
        | (Some(Answer::Cancel(r)), Reply::Cancelled(v)) => {
            let _ = r.send(v);
        }
        (Some(Answer::Retry(r)), Reply::Retried(v)) => {
            let _ = r.send(v);
        }
        _ => {}
    }
}

/// A timer being handled: [`Driver::fire_due_timers`] skips it until this is dropped.
struct Firing<'a>(&'a Inner, Timer);

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
enum Answer {
    Event(oneshot::Sender<bool>),
    Cancel(oneshot::Sender<bool>),
    Retry(oneshot::Sender<Result<(), RetryRefused>>),
}

/// A crash between writing a new instance's timer and its first records (possible only in
/// stores written before instance creation was atomic) leaves a timer for an instance
/// that never existed. Nothing would ever consume it: it would fire again at every tick
/// and, once enough piled up, hide the real timers behind it.
fn drop_timer_of_unknown_instance(inner: &Arc<Inner>, id: &str, t: &Timer) {
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

/// Carries out the effects a step decided (its records are durable by now).
fn carry_out(inner: &Arc<Inner>, id: &str, inst: &Instance, effects: Vec<Effect>) {
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

fn reply_false(msg: Msg) {
    match msg {
        Msg::Event { reply, .. } | Msg::Cancel { reply, .. } => {
            let _ = reply.send(false);
        }
        Msg::Start { reply, .. } => {
            let _ = reply.send(Err("instance could not be loaded".into()));
        }
        _ => {}
    }
}

fn child_result(inner: &Arc<Inner>, child: &str) -> Option<Result<Value, StepError>> {
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
fn spawn_call(
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
        let call = inner.plugins.call(&plugin, &action, input, ctx);
        let answer = tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), call).await;
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

fn log_record(wf: &CompiledWorkflow, r: &Record) {
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
