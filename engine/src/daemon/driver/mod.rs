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

mod actor;
mod commit;
mod effects;
mod inbox;
mod keyed_lock;
mod ownership;
mod paused;
pub mod queue;
mod watch;
pub mod write_only;

use actor::{handle, Answer};
use commit::{committer, FromMail, Handled};
use effects::{carry_out, child_result, log_record};
pub use inbox::{
    Delivered, InboxFull, InboxSettings, DEFAULT_INBOX_KEEP_MS, DEFAULT_INBOX_PER_KEY,
    DEFAULT_INBOX_TOTAL,
};
use keyed_lock::KeyedLock;
use ownership::{answer_of, forward, letter_of, read_mail};
pub use paused::{WorkflowHold, WorkflowPause};
pub use watch::{WaitError, Waited, MAX_WAIT, MAX_WATCHERS};

use super::metrics::Metrics;
use super::registry::Registry;
use crate::clock::Clock;
use crate::compile::rules::{Limits, Rules};
use crate::compile::{CompiledWorkflow, Concurrency, OnConflict};
use crate::plugin_host::{CallContext, PluginHost};
use crate::runtime::{
    Effect, Event, HoldRefused, Input, Instance, MigrateRefused, Millis, Move, ParentRef, Record,
    Reply, RerunLink, RetryRefused, Step, StepError,
};
use crate::store::{
    Batch, Claim, Created, Error as StoreError, Fence, InstanceMeta, Mail, Ownership, Stamp, Store,
    Timer,
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
    /// Where the next look through the inbox for events someone waits for starts
    /// (see `Driver::offer_inbox`).
    inbox_sweep: Mutex<Option<u64>>,
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
    /// Requests waiting for an instance to change (`?wait=`).
    watchers: watch::Watchers,
    /// How long the inbox keeps events nobody waited for yet, and how many.
    inbox: Mutex<InboxSettings>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
    /// Keys whose queued starts may have a free place (`queue::run` takes them).
    queue_wake: mpsc::UnboundedSender<(String, String)>,
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
        /// Journaled after the start record, before any step: a `RerunOf` record for a
        /// rerun, a `Paused` one when the workflow is paused.
        then: Vec<Record>,
        wf: Arc<CompiledWorkflow>,
        /// The idempotency and concurrency keys, claimed in the same write as the
        /// instance's first records.
        claims: Vec<Claim>,
        reply: oneshot::Sender<Result<Begun, String>>,
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
    /// Hold (`hold: true`) or let go an instance, for an operator `by`.
    Hold {
        hold: bool,
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<bool, HoldRefused>>,
    },
    /// Move the instance to version `to` of its workflow, for operator `by`.
    Migrate {
        to: Arc<CompiledWorkflow>,
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<Option<Move>, MigrateRefused>>,
    },
    /// Journal in this ended instance that it runs again (see [`Driver::rerun`]).
    RerunAs {
        link: RerunLink,
        reply: oneshot::Sender<Result<RerunLink, String>>,
    },
    /// Read the instance's mail (messages left while another daemon owned it).
    Mail,
}

/// How [`Inner::start`] begins an instance.
pub(crate) enum StartMode {
    /// A start from a client, a trigger or a parent.
    New,
    /// A queued start, taken from its key's queue: it does not queue again.
    Dequeued,
    /// An ended instance run again from a step: the version it ran, and the `RerunOf`
    /// record that says where the new one begins.
    Rerun {
        wf: Arc<CompiledWorkflow>,
        of: Box<Record>,
    },
}

/// What an actor holds: the instance as its journal says (once loaded) and the claim it
/// may write under.
#[derive(Default)]
struct Owned {
    state: Option<(Instance, Arc<CompiledWorkflow>)>,
    fence: Option<Fence>,
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
    #[error(transparent)]
    InboxFull(#[from] InboxFull),
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

/// Why a pause or resume did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("no instance `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] HoldRefused),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("{0}")]
    Internal(String),
}

/// Why an ended instance was not run again.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    #[error("no instance `{0}`")]
    NotFound(String),
    /// The message says why and what to do instead.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("{0}")]
    Internal(String),
}

/// Why an instance was not moved to another version.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("no instance `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] MigrateRefused),
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
    /// The workflow's `key:` expression could not be evaluated on this input.
    #[error("the workflow's `key` could not be worked out from the input: {0}")]
    Key(String),
    /// The workflow allows one open instance per key and refuses the rest
    /// (`on_conflict: reject`); this one is open.
    #[error("instance {open} of `{workflow}` is still open for this key")]
    Open { workflow: String, open: String },
    /// The key's queue (`on_conflict: queue`) or the inbox it is kept in is at a bound.
    #[error("{0}")]
    QueueFull(String),
    #[error("{0}")]
    Internal(String),
}

/// What an instance task answers to a start.
enum Begun {
    Started(Started),
    /// Nothing was started: this open instance holds the workflow's concurrency key.
    Open(String),
}

/// Result of a start: the instance, and whether this call created it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Started {
    pub id: String,
    pub created: bool,
    /// The start was given to the open instance with its key as an event
    /// (`on_conflict: attach`); `id` is that instance.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// The start waits in its key's queue (`on_conflict: queue`): no instance was
    /// created yet, and `id` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<queue::Queued>,
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
        let (queue_wake, queue_keys) = mpsc::unbounded_channel();
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
            inbox_sweep: Mutex::new(None),
            cannot_run: Mutex::new(HashMap::new()),
            missing_calls: Mutex::new(HashSet::new()),
            store_reachable: std::sync::atomic::AtomicBool::new(true),
            store,
            plugins,
            clock,
            registry: Registry::default(),
            // Its own rule engine, so the calendars one daemon loads are not another's
            // (two drivers in one process, as in the simulation and `casework bench`).
            rules: Arc::new(Rules::new(Limits::default())),
            actors: Mutex::new(HashMap::new()),
            busy: AtomicI64::new(0),
            max_pending: AtomicI64::new(DEFAULT_MAX_PENDING as i64),
            idle: Notify::new(),
            commits,
            timer_wake: Notify::new(),
            firing: Mutex::new(HashSet::new()),
            events_in_flight: KeyedLock::default(),
            observer,
            watchers: watch::Watchers::default(),
            inbox: Mutex::new(InboxSettings::default()),
            stats: Arc::new(Stats::default()),
            metrics: Arc::new(Metrics::default()),
            queue_wake,
        });
        tokio::spawn(queue::run(Arc::downgrade(&inner), queue_keys));
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
        // Before the workflow can wait for one: the declaration is what seals the field.
        write_only::declare(self.inner.store.as_ref(), &wf)?;
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

    /// Start an instance of the newest version of `workflow`.
    pub async fn start(
        &self,
        workflow: &str,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<Started, StartError> {
        self.inner.admit()?;
        self.inner
            .start(workflow, input, idempotency_key, None, None, StartMode::New)
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
            .start(workflow, input, None, None, Some(id), StartMode::New)
            .await
    }

    /// Deliver an event to every instance waiting for its type and key, or keep it in the
    /// inbox for a wait that begins later. Returns the ids woken.
    pub async fn deliver(&self, event: Event) -> Result<Vec<String>, DeliverError> {
        Ok(self.deliver_with(event, async |_| false).await?.woken)
    }

    /// [`Driver::deliver`], where `consumed` (say, a trigger that started a workflow for
    /// it) may take an event no instance waited for, so it is not kept. Durable when it
    /// returns; an event id given before gets the first answer again, and `consumed`
    /// runs again for it (it must be idempotent per event id).
    pub async fn deliver_with(
        &self,
        event: Event,
        consumed: impl AsyncFnOnce(&Event) -> bool,
    ) -> Result<Delivered, DeliverError> {
        let inner = &self.inner;
        inner.admit()?;
        let mut event = event;
        // Every installed workflow's declarations are in the store (`install` records
        // them first), and so are those of versions and daemons not loaded here.
        let sealed = write_only::declared(inner.store.as_ref(), &event.event_type)
            .map_err(|e| DeliverError::Internal(e.to_string()))?;
        if !sealed.is_empty() {
            // Before anything is written: the value must never reach a store in the clear.
            write_only::seal(
                &mut event.data,
                &sealed,
                inner.store.write_only_sealer(),
                inner.clock.now_ms(),
            )
            .map_err(|e| DeliverError::Internal(e.to_string()))?;
        }
        // Duplicates of one event id sent at once are delivered one after the other, so
        // the second finds the first's answer instead of waking the instance again.
        let _in_flight = match &event.id {
            Some(id) => Some(inner.events_in_flight.hold(id).await),
            None => None,
        };
        let internal = |e: StoreError| DeliverError::Internal(e.to_string());
        // An event sent again after a crash interrupted its delivery (the intent below was
        // kept, the answer was not) may have reached an instance already: it goes to the
        // waits there are now (an instance never takes one event twice), and is never
        // kept, since the wait that took it may be gone. At most once, in that window.
        let mut interrupted = false;
        if let Some(id) = &event.id {
            match inner.store.event_answer(id).map_err(internal)? {
                Some(answer) if Delivered::is_intent(&answer) => interrupted = true,
                Some(answer) => {
                    consumed(&event).await;
                    return Ok(Delivered::from_answer(answer));
                }
                None => {
                    // Written before any instance can journal the event, so a crash that
                    // keeps the instance's record keeps this too (stores keep a prefix).
                    inner
                        .store
                        .put_event_answer(id, &Delivered::intent())
                        .map_err(internal)?;
                }
            }
        }
        let waiters = inner
            .store
            .waiters(&event.event_type, &event.key)
            .map_err(internal)?;
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
        let consumed = consumed(&event).await;
        let kept = woken.is_empty() && !consumed && !interrupted;
        let delivered = if kept {
            inner.keep(&event).await?
        } else {
            Delivered {
                woken,
                buffered: None,
            }
        };
        if let Some(id) = &event.id {
            inner
                .store
                .put_event_answer(id, &delivered.answer())
                .map_err(internal)?;
        }
        if event.id.is_some() || kept {
            inner.commit().await.map_err(DeliverError::Internal)?;
        }
        Ok(delivered)
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

    /// Hold an instance (`hold`) or let it go on, for operator `by` with `reason`; both
    /// journaled. Returns whether it changed (false: it was held, or going on, already).
    pub async fn hold(
        &self,
        id: &str,
        hold: bool,
        by: &str,
        reason: &str,
    ) -> Result<bool, HoldError> {
        self.inner.admit()?;
        if self
            .inner
            .store
            .instance(id)
            .map_err(|e| HoldError::Internal(e.to_string()))?
            .is_none()
        {
            return Err(HoldError::NotFound(id.to_string()));
        }
        let (reply, rx) = oneshot::channel();
        self.inner.send(
            id,
            Msg::Hold {
                hold,
                by: by.to_string(),
                reason: reason.to_string(),
                reply,
            },
        );
        match rx.await {
            Ok(r) => r.map_err(HoldError::Refused),
            Err(_) => Err(HoldError::Internal(
                "the instance could not be loaded or journaled; see the log".into(),
            )),
        }
    }

    /// Run an ended instance again from `step` of the version it ran, as a new instance with
    /// its input and its variables with `edits` applied (a null removes a variable), for
    /// operator `by` with `reason`.
    ///
    /// The decision is journaled first, in the ended instance (`RerunAs`: the new id, the
    /// step and the variables), by its own task, which refuses it if a retry made the
    /// instance run again meanwhile (and a retry is refused once it is there): the case
    /// runs once, in one of them. Only then is the new instance created (its journal begins
    /// with `RerunOf`), under a key made from the link, so it is created once. A crash
    /// between the two leaves a link without its instance: the next rerun request for the
    /// instance creates it first (and, without an `idempotency_key`, answers with it).
    /// With the same `idempotency_key`, every request answers with one new instance.
    pub async fn rerun(
        &self,
        id: &str,
        step: &str,
        edits: serde_json::Map<String, Value>,
        by: &str,
        reason: &str,
        idempotency_key: Option<String>,
    ) -> Result<(Started, RerunLink), RerunError> {
        let inner = &self.inner;
        inner.admit()?;
        let internal = |e: String| RerunError::Internal(e);
        let meta = inner
            .store
            .instance(id)
            .map_err(|e| internal(e.to_string()))?
            .ok_or_else(|| RerunError::NotFound(id.to_string()))?;
        if !meta.is_final() {
            return Err(RerunError::Refused(format!(
                "the instance is {}; only an ended instance runs again from a step (retry a failed one; cancel an open one first)",
                meta.status
            )));
        }
        let (old, wf) = inner
            .registry
            .replay(inner.store.as_ref(), &meta, &inner.rules)
            .map_err(internal)?;
        if old.parent().is_some() {
            return Err(RerunError::Refused(
                "a subworkflow's instance is part of its parent's run; run the parent again instead".into(),
            ));
        }
        if !wf.index.get(step).is_some_and(|&i| wf.steps[i].top_level) {
            let top: Vec<&str> = wf
                .steps
                .iter()
                .filter(|s| s.top_level)
                .map(|s| s.id.as_str())
                .collect();
            return Err(RerunError::Refused(format!(
                "`{step}` is not a top-level step of version {} of `{}`; the top-level steps are: {}",
                wf.version,
                wf.name,
                top.join(", ")
            )));
        }
        // Links a crash (or a request still under way) left without their instance are
        // carried out first.
        let mut pending: Vec<(Started, RerunLink)> = Vec::new();
        for l in old.reruns() {
            let exists = inner
                .store
                .instance(&l.instance)
                .map_err(|e| internal(e.to_string()))?
                .is_some();
            if !exists {
                pending.push((self.start_rerun(&wf, &old, l).await?, l.clone()));
            }
        }
        if let Some(k) = &idempotency_key {
            if let Some(l) = old.reruns().iter().find(|l| l.key.as_ref() == Some(k)) {
                if let Some(done) = pending.iter().find(|(_, p)| p.instance == l.instance) {
                    return Ok(done.clone());
                }
                return Ok((self.start_rerun(&wf, &old, l).await?, l.clone()));
            }
        } else if let Some(found) = pending.into_iter().rev().find(|(_, l)| l.key.is_none()) {
            return Ok(found);
        }
        let mut vars = old.vars().clone();
        for (k, v) in edits {
            if v.is_null() {
                vars.remove(&k);
            } else {
                vars.insert(k, v);
            }
        }
        let now = inner.clock.now_ms();
        let (reply, rx) = oneshot::channel();
        inner.send(
            id,
            Msg::RerunAs {
                link: RerunLink {
                    instance: new_id(now),
                    step: step.to_string(),
                    vars,
                    key: idempotency_key,
                    by: by.to_string(),
                    reason: reason.to_string(),
                    at: now,
                },
                reply,
            },
        );
        let link = rx
            .await
            .map_err(|_| {
                internal("the instance could not be loaded or journaled; see the log".into())
            })?
            .map_err(RerunError::Refused)?;
        Ok((self.start_rerun(&wf, &old, &link).await?, link))
    }

    /// The instance a rerun link names, created if it is not there yet.
    async fn start_rerun(
        &self,
        wf: &Arc<CompiledWorkflow>,
        old: &Instance,
        link: &RerunLink,
    ) -> Result<Started, RerunError> {
        let of = Record::RerunOf {
            instance: old.id().to_string(),
            step: link.step.clone(),
            vars: link.vars.clone(),
            by: link.by.clone(),
            reason: link.reason.clone(),
            at: self.inner.clock.now_ms(),
        };
        // A NUL cannot come in an HTTP header, so no client's start can take this key.
        let key = format!("\0rerun\0{}\0{}", old.id(), link.instance);
        Ok(self
            .inner
            .start(
                &wf.name,
                old.input().clone(),
                Some(key),
                None,
                Some(link.instance.clone()),
                StartMode::Rerun {
                    wf: wf.clone(),
                    of: Box::new(of),
                },
            )
            .await?)
    }

    /// Where the instance would move if it moved to version `to` now, or why it would not
    /// (`casework migrate --dry-run`): read from the store, nothing written.
    pub fn migration(&self, id: &str, to: &CompiledWorkflow) -> Result<Move, MigrateError> {
        let inner = &self.inner;
        let meta = inner
            .store
            .instance(id)
            .map_err(|e| MigrateError::Internal(e.to_string()))?
            .ok_or_else(|| MigrateError::NotFound(id.to_string()))?;
        let (inst, from) = inner
            .registry
            .replay(inner.store.as_ref(), &meta, &inner.rules)
            .map_err(MigrateError::Internal)?;
        Ok(inst.migration(&from, to)?)
    }

    /// Move the instance to version `to` of its workflow at a safe point, for operator `by`
    /// with `reason` (see [`Instance::migrate`]). Returns the move once it is journaled, or
    /// `None` when another daemon owns the instance and was left the request as mail.
    pub async fn migrate(
        &self,
        id: &str,
        to: Arc<CompiledWorkflow>,
        by: &str,
        reason: &str,
    ) -> Result<Option<Move>, MigrateError> {
        self.inner.admit()?;
        if self
            .inner
            .store
            .instance(id)
            .map_err(|e| MigrateError::Internal(e.to_string()))?
            .is_none()
        {
            return Err(MigrateError::NotFound(id.to_string()));
        }
        let (reply, rx) = oneshot::channel();
        self.inner.send(
            id,
            Msg::Migrate {
                to,
                by: by.to_string(),
                reason: reason.to_string(),
                reply,
            },
        );
        match rx.await {
            Ok(r) => r.map_err(MigrateError::Refused),
            Err(_) => Err(MigrateError::Internal(
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
            actor::run(self.clone(), id.to_string(), rx),
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
        mode: StartMode,
    ) -> Result<Started, StartError> {
        let wf = match &mode {
            StartMode::Rerun { wf, .. } => wf.clone(),
            _ => self
                .registry
                .latest(workflow)
                .ok_or_else(|| StartError::UnknownWorkflow(workflow.to_string()))?,
        };
        let input =
            crate::validate::input::check(&wf.inputs, &input).map_err(StartError::InvalidInput)?;
        let id = id.unwrap_or_else(|| new_id(self.clock.now_ms()));
        // Started while its workflow is paused: created held, it runs when the workflow
        // resumes (a trigger's start waits rather than being lost).
        let held = self
            .workflow_pause(workflow)
            .map_err(StartError::Internal)?
            .map(|p| p.record(workflow, self.clock.now_ms()));
        let mut claims = Vec::new();
        // A duplicate of a start that has committed answers without running anything. One
        // racing a start still in flight is settled by the store: the key is claimed in the
        // same atomic write as the instance (see `Store::create`), so only one can win.
        if let Some(k) = &key {
            if let Some(existing) = self
                .store
                .key_holder(workflow, k)
                .map_err(|e| StartError::Internal(e.to_string()))?
            {
                return Ok(Started {
                    id: existing,
                    created: false,
                    attached: false,
                    queued: None,
                });
            }
            claims.push(Claim::idempotency(workflow, k));
        }
        // A child belongs to its parent's run (the parent's own key says which case it
        // is), so a child is not held to its workflow's concurrency key.
        let open_key = match (&wf.concurrency, &parent) {
            (Some(c), None) => {
                let k = concurrency_key(&wf, c, &input, self.clock.now_ms())?;
                claims.push(Claim::open(workflow, &k));
                Some(k)
            }
            _ => None,
        };
        if parent.is_some()
            && self
                .store
                .instance(&id)
                .map_err(|e| StartError::Internal(e.to_string()))?
                .is_some()
        {
            return Ok(Started {
                id,
                created: false,
                attached: false,
                queued: None,
            });
        }
        let queues = matches!(mode, StartMode::New)
            && matches!(
                wf.concurrency.as_ref().map(|c| &c.on_conflict),
                Some(OnConflict::Queue)
            );
        if let (true, Some(k)) = (queues, &open_key) {
            // First in, first out: while starts wait for the key, a new one waits behind
            // them even if a place is free this moment (the next finish or the ownership
            // round starts the oldest).
            if self
                .queue_head(workflow, k)
                .map_err(StartError::Internal)?
                .is_some()
            {
                return self
                    .enqueue(workflow, k, &input, key.as_deref(), None)
                    .await;
            }
        }
        // What an open key does with the start: delivered as an event (attach) or queued.
        let conflict_input = open_key.as_ref().map(|_| input.clone());
        let rerun = matches!(mode, StartMode::Rerun { .. });
        let then: Vec<Record> = match mode {
            StartMode::Rerun { of, .. } => Some(*of),
            _ => None,
        }
        .into_iter()
        .chain(held.clone())
        .collect();
        let record = Instance::start_record(&wf, input, key.clone(), parent, self.clock.now_ms());
        // A key with several places (`concurrency.limit`) is tried place by place: each
        // place is claimed atomically, so starts racing for the last free place make one
        // instance; the start is refused only once every place is held open.
        let places = open_key
            .as_ref()
            .and(wf.concurrency.as_ref())
            .map_or(1, |c| c.limit.max(1));
        let mut open = None;
        for place in 0..places {
            let mut claims = claims.clone();
            if let (Some(k), Some(last)) = (&open_key, claims.last_mut()) {
                *last = Claim::open_at(workflow, k, place);
            }
            let (reply, rx) = oneshot::channel();
            self.send(
                &id,
                Msg::Start {
                    record: record.clone(),
                    then: then.clone(),
                    wf: wf.clone(),
                    claims,
                    reply,
                },
            );
            let begun = rx
                .await
                .map_err(|_| StartError::Internal("instance task stopped".into()))?
                .map_err(StartError::Internal)?;
            match begun {
                Begun::Started(s) => {
                    if s.created {
                        self.pause_changed_since(workflow, &s.id, held.is_some())
                            .await;
                    }
                    return Ok(s);
                }
                // The oldest place's holder is the one a refusal names.
                Begun::Open(holder) => {
                    open.get_or_insert(holder);
                }
            }
        }
        let open = open.unwrap_or_default();
        if let (true, Some(k)) = (queues, &open_key) {
            let input = conflict_input.unwrap_or(Value::Null);
            return self
                .enqueue(workflow, k, &input, key.as_deref(), Some(open))
                .await;
        }
        // A rerun is an operator's: it neither joins the open instance nor waits for it.
        let attach = match wf.concurrency.as_ref().map(|c| &c.on_conflict) {
            Some(OnConflict::Attach { event }) if !rerun => Some(event),
            _ => None,
        };
        let Some(event) = attach else {
            return Err(StartError::Open {
                workflow: workflow.to_string(),
                open,
            });
        };
        let event = Event {
            event_type: event.clone(),
            key: open_key.unwrap_or_default(),
            data: conflict_input.unwrap_or(Value::Null),
            // A resent start (same idempotency key) is the same event: the open instance
            // receives it once.
            id: key.map(|k| format!("attach:{workflow}:{k}")),
        };
        let driver = Driver {
            inner: self.clone(),
        };
        driver
            .deliver_with(event, async |_| false)
            .await
            .map_err(|e| match e {
                DeliverError::Overloaded(o) => StartError::Overloaded(o),
                e => StartError::Internal(e.to_string()),
            })?;
        Ok(Started {
            id: open,
            created: false,
            attached: true,
            queued: None,
        })
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
        self.registry
            .replay(self.store.as_ref(), &meta, &self.rules)
    }
}

/// The workflow's concurrency key for this input, as a wait's key (`key_text`), but never empty.
fn concurrency_key(
    wf: &CompiledWorkflow,
    c: &Concurrency,
    input: &Value,
    now_ms: Millis,
) -> Result<String, StartError> {
    let b = crate::compile::rules::Bindings {
        input,
        vars: &serde_json::Map::new(),
        locals: &serde_json::Map::new(),
        now_ms,
        instance: None,
    };
    let (value, _) = wf
        .rules
        .eval(&c.key, &b)
        .map_err(|e| StartError::Key(e.message))?;
    crate::runtime::key_text(value)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            StartError::Key("it gave nothing; check that the input has the field it reads".into())
        })
}

/// A new instance id: sortable by creation time, unique.
pub fn new_id(now: Millis) -> String {
    format!("{:011x}{:08x}", now.max(0), rand::random::<u32>())
}
