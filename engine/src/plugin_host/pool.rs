//! Where guest code runs: the plugin pool, a tokio runtime of its own whose threads
//! never serve HTTP, drive instances or commit the journal, so a plugin that burns
//! CPU, floods its log or returns a huge output delays only other plugin calls.
//!
//! Life of a call here: [`Pool::enqueue`] takes what is free at once and counts the
//! call as waiting for the rest, or refuses it at once when its plugin's queue is full
//! (`plugin_busy`) → the job is spawned onto the pool, where it waits, in arrival order
//! (tokio's semaphores are FIFO), for a permit of its plugin (`plugin_concurrency`),
//! then for its plugin's whole memory limit from the shared budget
//! (`plugin_memory_mib`), then for one of the host's instance slots → it runs → every
//! permit comes back when the job ends, however it ends. The caller awaits the job
//! through [`Job`], which aborts it when dropped: a caller that gives up (its time
//! limit, a cancelled instance) never leaves guest code running.
//!
//! Nothing here knows about WebAssembly; `wasm.rs` builds and runs the guest.

use super::PluginError;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Calls of one plugin that run at once unless configured (`plugin_concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Calls of one plugin that may wait for a slot unless configured (`plugin_queue`);
/// each waiting call holds its input (at most 1 MiB).
pub const DEFAULT_QUEUE: usize = 256;
/// Guest memory all running calls may reserve together unless configured
/// (`plugin_memory_mib`): 64 calls of a 16 MiB plugin.
pub const DEFAULT_MEMORY_MIB: u32 = 1024;
/// Largest `plugin_threads`.
pub const MAX_THREADS: usize = 256;
/// Largest `plugin_queue`.
pub const MAX_QUEUE: usize = 100_000;
/// Largest `plugin_memory_mib` (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
/// How much nicer than the daemon's threads the pool's are at [`Priority::Low`]: the
/// scheduler then gives a daemon thread about ten times the CPU of a pool thread when
/// both want it.
const LOW_NICE: i32 = 10;

/// How the pool's threads compete for the CPU with everything else (`plugin_priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Like the daemon's own threads.
    Normal,
    /// Nice +10 over the daemon (Linux): when the CPU is short a plugin still gets about a tenth of what
    /// a daemon thread gets, but a daemon thread that wakes may wait for a pool
    /// thread's time slice (a few ms) before it runs.
    #[default]
    Low,
    /// SCHED_IDLE (Linux): any other thread that wakes takes the CPU from a plugin at
    /// once, so plugins cannot delay the daemon at all, but on a machine whose CPUs are
    /// kept busy by anything else plugin calls barely run and time out. For hosts that
    /// run only the daemon.
    Idle,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            "idle" => Some(Priority::Idle),
            _ => None,
        }
    }
}

/// Sizes of the plugin pool (`plugin_threads`, `plugin_concurrency`, `plugin_queue`,
/// `plugin_memory_mib`, `plugin_priority` in `casework serve`'s configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Threads that run guest code.
    pub threads: usize,
    /// Calls of one plugin running at once.
    pub concurrency: usize,
    /// Calls of one plugin waiting to run; one more fails at once with `plugin_busy`.
    pub queue: usize,
    /// Guest memory, in MiB, that running calls may reserve together; a call reserves
    /// its plugin's `limits.memory_mb` before it starts.
    pub memory_mib: u32,
    /// Scheduling priority of the pool's threads.
    pub priority: Priority,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: default_threads(),
            concurrency: DEFAULT_CONCURRENCY,
            queue: DEFAULT_QUEUE,
            memory_mib: DEFAULT_MEMORY_MIB,
            priority: Priority::default(),
        }
    }
}

/// One thread fewer than the machine has cores (at least one), so a saturated pool
/// leaves a core to the daemon.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

/// What the pool holds at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Calls waiting for a permit, memory or a slot.
    pub queued: usize,
    /// Calls holding everything they need: instantiating, running or cleaning up.
    pub running: usize,
    /// Memory reserved by running (and partly admitted) calls, in MiB.
    pub memory_reserved_mib: u32,
}

/// What a waiting call waits for; also what the caller names when the call's time
/// runs out before it could start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A permit of its plugin (`plugin_concurrency`).
    Plugin,
    /// Its memory reservation (`plugin_memory_mib`).
    Memory,
    /// One of the host's instance slots.
    Slot,
    /// Nothing: it has started.
    Running,
    /// Its turn under its plugin's `limits.rate`.
    Rate,
}

impl Stage {
    fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::Plugin,
            1 => Stage::Memory,
            2 => Stage::Slot,
            4 => Stage::Rate,
            _ => Stage::Running,
        }
    }
}

/// What a plugin's `plugin.toml` limits besides memory and time (`limits.concurrency`,
/// `limits.rate`): for a provider's published limits, within the pool's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PluginLimits {
    pub concurrency: Option<usize>,
    pub rate: Option<casework_sdk::manifest::Rate>,
}

/// An operator's limits for one plugin (`[plugin_limits.NAME]` in the daemon's config
/// file): each field set replaces the plugin's own `limits.*`, for a contract with the
/// provider that differs from what the plugin's author published.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub concurrency: Option<u32>,
    pub rate: Option<String>,
    pub key: Option<String>,
}

impl LimitsOverride {
    /// What is wrong with it, one problem per item (checked as `plugin.toml` is).
    pub fn problems(&self) -> Vec<String> {
        let mut limits = casework_sdk::manifest::Limits {
            memory_mb: 1,
            timeout_ms: 1,
            fuel: None,
            concurrency: None,
            rate: None,
            key: None,
        };
        self.apply(&mut limits);
        if limits.key.is_some() && limits.rate.is_none() && limits.concurrency.is_none() {
            // The plugin's own rate or concurrency may be what the key applies to.
            limits.concurrency = Some(1);
        }
        casework_sdk::manifest::Limits::problems(&limits)
    }

    /// `limits` with the fields this sets replaced.
    pub fn apply(&self, limits: &mut casework_sdk::manifest::Limits) {
        if let Some(c) = self.concurrency {
            limits.concurrency = Some(c);
        }
        if let Some(r) = &self.rate {
            limits.rate = Some(r.clone());
        }
        if let Some(k) = &self.key {
            limits.key = Some(k.clone());
        }
    }
}

/// Most lanes of `limits.key` values the pool keeps at once (each a few hundred bytes):
/// a burst over many keys (one per ticket, say) cannot grow the pool without end.
pub const MAX_KEYED_LANES: usize = 10_000;

/// Calls of one plugin (or of one `limits.key` value of it): its permits and how many of
/// its calls wait.
struct Lane {
    permits: Arc<Semaphore>,
    /// Calls of this lane waiting.
    waiting: AtomicUsize,
    /// Calls of the plugin waiting, in all its lanes: what `plugin_queue` bounds, so a
    /// plugin's calls spread over many keys wait no more than one lane's would.
    plugin_waiting: Arc<AtomicUsize>,
    /// Calls of the plugin running, in all its lanes: at most `plugin_concurrency`, so
    /// keys of their own never let one plugin take more of the pool than that.
    plugin_permits: Arc<Semaphore>,
    limits: PluginLimits,
    /// When the next call may start under `limits.rate`. A call reserves its turn once it
    /// holds its permits (which it gets in arrival order), so starts are spaced evenly
    /// however long each waited, and a call refused or given up before then takes none.
    next_turn: Mutex<Option<tokio::time::Instant>>,
}

impl Lane {
    /// Reserves the next turn under the rate: when this call may start (None: now).
    fn reserve_turn(&self) -> Option<tokio::time::Instant> {
        let rate = self.limits.rate?;
        let now = tokio::time::Instant::now();
        let mut next = self.next_turn.lock().unwrap_or_else(|e| e.into_inner());
        let turn = next.map_or(now, |n| n.max(now));
        *next = Some(turn + rate.interval());
        (turn > now).then_some(turn)
    }
}

#[derive(Default)]
struct Counts {
    queued: AtomicUsize,
    running: AtomicUsize,
}

/// The plugin pool. Dropping it stops its threads; jobs still on it are dropped.
pub struct Pool {
    runtime: Option<tokio::runtime::Runtime>,
    config: PoolConfig,
    slots: usize,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    /// Per plugin, its calls waiting and its running permits in all its lanes
    /// ([`Lane::plugin_waiting`], [`Lane::plugin_permits`]).
    #[allow(clippy::type_complexity)]
    per_plugin: Mutex<HashMap<String, (Arc<AtomicUsize>, Arc<Semaphore>)>>,
    memory: Arc<Semaphore>,
    instance_slots: Arc<Semaphore>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of `config.threads` threads; at most `slots` calls run at once in all.
    pub fn new(config: PoolConfig, slots: usize) -> std::io::Result<Pool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            // Blocking work of running calls (their HTTP requests) and compiles: at
            // most one request in flight per running call.
            .max_blocking_threads(slots.max(1))
            .thread_name("casework-plugin")
            .on_thread_start(move || set_priority(config.priority))
            .enable_all()
            .build()?;
        Ok(Pool {
            runtime: Some(runtime),
            config,
            slots,
            lanes: Mutex::new(HashMap::new()),
            per_plugin: Mutex::new(HashMap::new()),
            memory: Arc::new(Semaphore::new(config.memory_mib as usize)),
            instance_slots: Arc::new(Semaphore::new(slots)),
            counts: Arc::default(),
        })
    }

    pub fn config(&self) -> PoolConfig {
        self.config
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            queued: self.counts.queued.load(Ordering::SeqCst),
            running: self.counts.running.load(Ordering::SeqCst),
            memory_reserved_mib: self
                .config
                .memory_mib
                .saturating_sub(self.memory.available_permits() as u32),
        }
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken when the pool is dropped")
            .handle()
    }

    /// The lane of the plugin's calls (with `key`, of its calls for that `limits.key`
    /// value); a new one when its limits changed (a reloaded `plugin.toml`: calls
    /// already admitted finish under the old one). Keyed lanes are bounded: past
    /// [`MAX_KEYED_LANES`], idle ones are dropped, and if none is idle the call is refused.
    fn lane(
        &self,
        plugin: &str,
        key: Option<&str>,
        limits: PluginLimits,
    ) -> Result<Arc<Lane>, PluginError> {
        // A key is held as a hash: its value may be large, and it may be personal data.
        let name = match key {
            Some(k) => {
                use sha2::Digest;
                let h = sha2::Sha256::digest(k.as_bytes());
                format!("{plugin}\0{}", hex::encode(&h[..16]))
            }
            None => plugin.to_string(),
        };
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = lanes.get(&name).filter(|l| l.limits == limits) {
            return Ok(lane.clone());
        }
        if key.is_some() && lanes.len() >= MAX_KEYED_LANES {
            let now = tokio::time::Instant::now();
            let concurrency = |l: &Lane| self.concurrency_of(l.limits).max(1);
            lanes.retain(|n, l| {
                !n.contains('\0')
                    || l.waiting.load(Ordering::SeqCst) > 0
                    || l.permits.available_permits() < concurrency(l)
                    || l.next_turn
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_some_and(|t| t > now)
            });
            if lanes.len() >= MAX_KEYED_LANES {
                return Err(PluginError {
                    code: "plugin_busy".into(),
                    message: format!(
                        "plugin `{plugin}`: calls for {MAX_KEYED_LANES} different values of their limits.key are running or waiting their turn; the call was refused without running, try again later"
                    ),
                    retryable: true,
                });
            }
        }
        let (plugin_waiting, plugin_permits) = self
            .per_plugin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(plugin.to_string())
            .or_insert_with(|| {
                (
                    Arc::default(),
                    Arc::new(Semaphore::new(self.config.concurrency.max(1))),
                )
            })
            .clone();
        let lane = Arc::new(Lane {
            permits: Arc::new(Semaphore::new(self.concurrency_of(limits).max(1))),
            waiting: AtomicUsize::new(0),
            plugin_waiting,
            plugin_permits,
            limits,
            next_turn: Mutex::new(None),
        });
        lanes.insert(name, lane.clone());
        Ok(lane)
    }

    /// Calls of `plugin` that may run at once under `limits` and the pool's own limit.
    pub fn concurrency_of(&self, limits: PluginLimits) -> usize {
        limits
            .concurrency
            .map_or(self.config.concurrency, |c| c.min(self.config.concurrency))
    }

    /// Admits a call of `plugin` that needs `memory_mib` of guest memory: takes what is
    /// free now and, if something is not, counts the call as waiting, or refuses it
    /// when `plugin_queue` calls of this plugin already wait. Never blocks.
    pub fn enqueue(&self, plugin: &str, memory_mib: u32) -> Result<Ticket, PluginError> {
        self.enqueue_limited(plugin, None, memory_mib, PluginLimits::default(), false)
    }

    /// [`Pool::enqueue`] for a plugin with its own limits: at most `limits.concurrency`
    /// of its calls run at once, and a `paced` call (one that may reach the provider, not
    /// the host asking the plugin what it offers) starts no sooner than its turn under
    /// `limits.rate`, waited for once it holds its permits. With a `key` (the call's
    /// value of the plugin's `limits.key`), both limits hold per key.
    pub fn enqueue_limited(
        &self,
        plugin: &str,
        key: Option<&str>,
        memory_mib: u32,
        limits: PluginLimits,
        paced: bool,
    ) -> Result<Ticket, PluginError> {
        if memory_mib > self.config.memory_mib {
            // It would wait for ever: no amount of waiting frees more than the budget.
            return Err(over_budget(plugin, memory_mib, self.config.memory_mib));
        }
        let lane = self.lane(plugin, key, limits)?;
        let mut ticket = Ticket {
            plugin: plugin.to_string(),
            config: self.config,
            memory_mib,
            lane_permit: None,
            turn: None,
            plugin_permit: None,
            memory_permit: None,
            slot_permit: None,
            lane,
            memory: self.memory.clone(),
            instance_slots: self.instance_slots.clone(),
            counts: self.counts.clone(),
            stage: Arc::new(AtomicU8::new(Stage::Plugin as u8)),
            waiting: false,
            paced,
        };
        if ticket.try_take_all() {
            return Ok(ticket);
        }
        let queue = self.config.queue;
        let admitted = ticket
            .lane
            .plugin_waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < queue).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return Err(super::PluginError {
                code: "plugin_busy".into(),
                message: format!(
                    "plugin `{plugin}` already has {queue} calls waiting (plugin_queue) behind the ones running; the call was refused without running, try again later"
                ),
                retryable: true,
            });
        }
        ticket.lane.waiting.fetch_add(1, Ordering::SeqCst);
        self.counts.queued.fetch_add(1, Ordering::SeqCst);
        ticket.waiting = true;
        Ok(ticket)
    }

    /// Runs `job` on the pool's threads.
    pub fn spawn<F>(&self, job: F) -> Job<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Job(self.handle().spawn(job))
    }

    /// Runs blocking `work` (compiling a component) on the pool's blocking threads,
    /// which run at the pool's lower priority too.
    pub async fn spawn_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.handle().spawn_blocking(work).await
    }

    /// The number of instance slots the pool shares out.
    pub fn slots(&self) -> usize {
        self.slots
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Not `Runtime::drop`, which blocks and panics inside an async context (a host
        // dropped at the end of a test or of `serve`): jobs still there are dropped.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn over_budget(plugin: &str, memory_mib: u32, budget: u32) -> PluginError {
    PluginError {
        code: "plugin_over_memory_budget".into(),
        message: over_budget_text(plugin, memory_mib, budget),
        retryable: false,
    }
}

/// Why a plugin can never run with this budget, and which key to change.
pub fn over_budget_text(plugin: &str, memory_mib: u32, budget: u32) -> String {
    format!(
        "plugin `{plugin}` may use up to {memory_mib} MiB (limits.memory_mb) but all plugin calls together may use {budget} MiB (plugin_memory_mib); raise plugin_memory_mib or lower the plugin's limits.memory_mb"
    )
}

/// A call admitted to the pool: what it holds and what it still waits for.
pub struct Ticket {
    plugin: String,
    config: PoolConfig,
    memory_mib: u32,
    lane: Arc<Lane>,
    lane_permit: Option<OwnedSemaphorePermit>,
    /// Its turn under `limits.rate`, once reserved (with the lane permit, before any other).
    turn: Option<Option<tokio::time::Instant>>,
    plugin_permit: Option<OwnedSemaphorePermit>,
    memory_permit: Option<OwnedSemaphorePermit>,
    slot_permit: Option<OwnedSemaphorePermit>,
    memory: Arc<Semaphore>,
    instance_slots: Arc<Semaphore>,
    counts: Arc<Counts>,
    stage: Arc<AtomicU8>,
    /// Counted in its lane's and the pool's queue.
    waiting: bool,
    /// Waits for its turn under the plugin's `limits.rate` before it starts.
    paced: bool,
}

/// Where a ticket is, readable after the ticket moved onto the pool.
#[derive(Clone)]
pub struct StageWatch(Arc<AtomicU8>);

impl StageWatch {
    pub fn get(&self) -> Stage {
        Stage::from_u8(self.0.load(Ordering::SeqCst))
    }
}

impl Ticket {
    pub fn stage(&self) -> StageWatch {
        StageWatch(self.stage.clone())
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The sizes of the pool it was admitted to, for messages.
    pub fn config(&self) -> PoolConfig {
        self.config
    }

    fn set(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::SeqCst);
    }

    /// Takes, in order, every permit that is free now; true when it holds them all.
    fn try_take_all(&mut self) -> bool {
        fn take(
            got: Result<OwnedSemaphorePermit, TryAcquireError>,
            into: &mut Option<OwnedSemaphorePermit>,
        ) -> bool {
            match got {
                Ok(p) => {
                    *into = Some(p);
                    true
                }
                Err(_) => false,
            }
        }
        if self.lane_permit.is_none()
            && !take(
                self.lane.permits.clone().try_acquire_owned(),
                &mut self.lane_permit,
            )
        {
            return false;
        }
        // Its turn under the rate comes before anything shared: a call waiting for its
        // turn holds no memory, no instance slot and no place among the plugin's calls.
        if self.turn.is_none() {
            self.turn = Some(self.paced.then(|| self.lane.reserve_turn()).flatten());
        }
        if self
            .turn
            .is_some_and(|t| t.is_some_and(|t| t > tokio::time::Instant::now()))
        {
            self.set(Stage::Rate);
            return false;
        }
        if self.plugin_permit.is_none()
            && !take(
                self.lane.plugin_permits.clone().try_acquire_owned(),
                &mut self.plugin_permit,
            )
        {
            return false;
        }
        self.set(Stage::Memory);
        if self.memory_permit.is_none()
            && !take(
                self.memory.clone().try_acquire_many_owned(self.memory_mib),
                &mut self.memory_permit,
            )
        {
            return false;
        }
        self.set(Stage::Slot);
        if self.slot_permit.is_none()
            && !take(
                self.instance_slots.clone().try_acquire_owned(),
                &mut self.slot_permit,
            )
        {
            return false;
        }
        true
    }

    /// Waits, in arrival order, for what the call does not hold yet, then counts it as
    /// running. An error means the pool is shutting down.
    pub async fn admitted(mut self) -> Result<Running, PluginError> {
        let closed = |_| PluginError {
            code: "plugin_unavailable".into(),
            message: "the plugin host is shutting down".into(),
            retryable: true,
        };
        // The stage the call last had to wait for: the one that held it up most recently.
        let mut waited_on = Stage::Running;
        if self.lane_permit.is_none() {
            self.set(Stage::Plugin);
            waited_on = Stage::Plugin;
            self.lane_permit = Some(
                self.lane
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(closed)?,
            );
        }
        // Holding its lane's permit, in arrival order: now its turn under the rate.
        let turn = match self.turn {
            Some(t) => t,
            None => self.paced.then(|| self.lane.reserve_turn()).flatten(),
        };
        self.turn = Some(turn);
        if let Some(turn) = turn.filter(|t| *t > tokio::time::Instant::now()) {
            self.set(Stage::Rate);
            waited_on = Stage::Rate;
            tokio::time::sleep_until(turn).await;
        }
        if self.plugin_permit.is_none() {
            self.set(Stage::Plugin);
            waited_on = Stage::Plugin;
            self.plugin_permit = Some(
                self.lane
                    .plugin_permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(closed)?,
            );
        }
        if self.memory_permit.is_none() {
            self.set(Stage::Memory);
            waited_on = Stage::Memory;
            self.memory_permit = Some(
                self.memory
                    .clone()
                    .acquire_many_owned(self.memory_mib)
                    .await
                    .map_err(closed)?,
            );
        }
        if self.slot_permit.is_none() {
            self.set(Stage::Slot);
            waited_on = Stage::Slot;
            self.slot_permit = Some(
                self.instance_slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(closed)?,
            );
        }
        self.set(Stage::Running);
        self.leave_queue();
        self.counts.running.fetch_add(1, Ordering::SeqCst);
        Ok(Running {
            _permits: [
                self.lane_permit.take(),
                self.plugin_permit.take(),
                self.memory_permit.take(),
                self.slot_permit.take(),
            ],
            counts: self.counts.clone(),
            waited_on,
        })
    }

    fn leave_queue(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.lane.waiting.fetch_sub(1, Ordering::SeqCst);
            self.lane.plugin_waiting.fetch_sub(1, Ordering::SeqCst);
            self.counts.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A call given up while it waited leaves the queue; its permits drop with it.
        self.leave_queue();
    }
}

/// A running call's permits (plugin, memory, slot); dropping it returns them.
pub struct Running {
    _permits: [Option<OwnedSemaphorePermit>; 4],
    counts: Arc<Counts>,
    waited_on: Stage,
}

impl Running {
    /// What the call waited for last before it was admitted; [`Stage::Running`] if it
    /// never waited.
    pub fn waited_on(&self) -> Stage {
        self.waited_on
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.counts.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job on the pool. Await it for its output; drop it to abort the job, which stops
/// at its next await (a running guest yields at every epoch tick).
pub struct Job<T>(tokio::task::JoinHandle<T>);

impl<T> Future for Job<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Job<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets the calling thread's scheduling priority (Linux; elsewhere the pool's threads
/// keep normal priority and are still apart from the daemon's threads).
fn set_priority(priority: Priority) {
    #[cfg(target_os = "linux")]
    match priority {
        Priority::Normal => {}
        // On Linux both calls act on the calling thread alone (threads do not share a
        // nice value or policy, unlike POSIX says), and moving one's own thread down
        // needs no privilege. `nice` is relative, so a daemon started nicer than 0
        // keeps its pool below it (the kernel caps it at 19). A failure only leaves
        // the thread at the daemon's priority, so it is ignored.
        // SAFETY: both calls take plain values (and a pointer to a local that outlives
        // the call) and keep nothing.
        Priority::Low => unsafe {
            let _ = libc::nice(LOW_NICE);
        },
        Priority::Idle => unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            let _ = libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
        },
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(concurrency: usize, queue: usize, memory_mib: u32) -> PoolConfig {
        PoolConfig {
            threads: 1,
            concurrency,
            queue,
            memory_mib,
            priority: Priority::Low,
        }
    }

    #[tokio::test]
    async fn waiting_calls_are_admitted_in_arrival_order() {
        let pool = Pool::new(config(1, 8, 100), 4).unwrap();
        let first = pool.enqueue("p", 10).unwrap().admitted().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let ticket = pool.enqueue("p", 10).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let running = ticket.admitted().await.unwrap();
                tx.send(n).unwrap();
                drop(running);
            });
            // Let it take its place in the line before the next one arrives.
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.stats(),
            PoolStats {
                queued: 3,
                running: 1,
                memory_reserved_mib: 10
            }
        );
        drop(first);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(pool.stats(), PoolStats::default());
    }

    #[tokio::test]
    async fn a_full_queue_and_a_call_larger_than_the_budget_are_refused_at_once() {
        let pool = Pool::new(config(1, 1, 100), 4).unwrap();
        let _running = pool.enqueue("p", 10).unwrap().admitted().await.unwrap();
        let waiting = pool.enqueue("p", 10).unwrap();
        let refused = pool.enqueue("p", 10).err().unwrap();
        assert_eq!(refused.code, "plugin_busy");
        assert!(refused.retryable);
        assert!(refused.message.contains("1 calls waiting (plugin_queue)"));
        assert!(
            pool.enqueue("q", 10).is_ok(),
            "each plugin has its own queue"
        );

        let too_big = pool.enqueue("q", 101).err().unwrap();
        assert_eq!(too_big.code, "plugin_over_memory_budget");
        assert!(!too_big.retryable);
        assert!(
            too_big.message.contains("raise plugin_memory_mib"),
            "{}",
            too_big.message
        );
        drop(waiting);
        assert_eq!(pool.stats().queued, 0, "a dropped ticket leaves the queue");
    }

    #[tokio::test]
    async fn a_plugin_s_own_concurrency_limit_holds_its_calls_below_the_pool_s() {
        let pool = Pool::new(config(8, 8, 100), 8).unwrap();
        let two = PluginLimits {
            concurrency: Some(2),
            rate: None,
        };
        let a = pool.enqueue_limited("p", None, 1, two, true).unwrap();
        let b = pool.enqueue_limited("p", None, 1, two, true).unwrap();
        let third = pool.enqueue_limited("p", None, 1, two, true).unwrap();
        assert_eq!(
            (a.stage().get(), b.stage().get()),
            (Stage::Slot, Stage::Slot),
            "two run at once"
        );
        assert_eq!(third.stage().get(), Stage::Plugin, "the third waits");
        assert_eq!(
            pool.enqueue("q", 1).unwrap().stage().get(),
            Stage::Slot,
            "another plugin is not held"
        );
        let _a = a.admitted().await.unwrap();
        drop(b);
        let running = tokio::time::timeout(std::time::Duration::from_secs(10), third.admitted())
            .await
            .expect("admitted once one of the two is gone");
        assert!(running.is_ok());
        // A higher limit than the pool's is held to the pool's.
        let many = PluginLimits {
            concurrency: Some(100),
            rate: None,
        };
        assert_eq!(pool.concurrency_of(many), 8);
    }

    #[tokio::test]
    async fn calls_over_a_plugin_s_rate_start_spaced_evenly_in_arrival_order() {
        let pool = Pool::new(config(64, 64, 100), 64).unwrap();
        let limits = PluginLimits {
            concurrency: None,
            rate: Some(casework_sdk::manifest::Rate::parse("20/s").unwrap()),
        };
        let t0 = tokio::time::Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..5 {
            let ticket = pool.enqueue_limited("p", None, 1, limits, true).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let running = ticket.admitted().await.unwrap();
                tx.send((n, (tokio::time::Instant::now() - t0).as_millis()))
                    .unwrap();
                drop(running);
            });
            tokio::task::yield_now().await;
        }
        let mut starts = Vec::new();
        for _ in 0..5 {
            starts.push(rx.recv().await.unwrap());
        }
        assert_eq!(
            starts.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4],
            "in arrival order"
        );
        // Turns are 50 ms apart from the first start: no call starts before its turn (a
        // lower bound only: a busy machine may start any of them later).
        for (n, (_, at)) in starts.iter().enumerate() {
            assert!(
                *at >= 50 * n as u128,
                "call {n} started at {at} ms: {starts:?}"
            );
        }
        // A call that is not paced (the host asking what the plugin offers) takes no turn.
        let unpaced = pool.enqueue_limited("p", None, 1, limits, false).unwrap();
        assert_eq!(
            unpaced.admitted().await.unwrap().waited_on(),
            Stage::Running
        );
    }

    #[tokio::test]
    async fn each_key_has_its_own_turns_and_idle_keys_make_room_for_new_ones() {
        let pool = Pool::new(config(64, 64, 100), 64).unwrap();
        let hourly = PluginLimits {
            concurrency: None,
            rate: Some(casework_sdk::manifest::Rate::parse("1/h").unwrap()),
        };
        let first = pool
            .enqueue_limited("chat", Some("#ops"), 1, hourly, true)
            .unwrap();
        drop(first.admitted().await.unwrap());
        let again = pool
            .enqueue_limited("chat", Some("#ops"), 1, hourly, true)
            .unwrap();
        let stage = again.stage();
        let waiting = tokio::spawn(again.admitted());
        while stage.get() != Stage::Rate {
            tokio::task::yield_now().await;
        }
        let other = pool
            .enqueue_limited("chat", Some("#support"), 1, hourly, true)
            .unwrap();
        assert_eq!(
            other.admitted().await.unwrap().waited_on(),
            Stage::Running,
            "another key does not wait for #ops's turn"
        );
        waiting.abort();

        // Keys that still owe a turn are kept, so a burst over new keys is refused once
        // the pool holds MAX_KEYED_LANES of them...
        for n in 2..MAX_KEYED_LANES {
            let t = pool
                .enqueue_limited("chat", Some(&format!("k{n}")), 1, hourly, true)
                .unwrap();
            drop(t.admitted().await.unwrap());
        }
        let Err(refused) = pool.enqueue_limited("chat", Some("one too many"), 1, hourly, true)
        else {
            panic!("a key past the bound was let in");
        };
        assert_eq!(refused.code, "plugin_busy");
        assert!(
            !refused.message.contains("one too many"),
            "{}",
            refused.message
        );
        // ...while keys with nothing owed (a concurrency limit, all calls done) make room.
        let one_at_a_time = PluginLimits {
            concurrency: Some(1),
            rate: None,
        };
        let pool = Pool::new(config(64, 64, 100), 64).unwrap();
        for n in 0..MAX_KEYED_LANES + 10 {
            let t = pool
                .enqueue_limited("chat", Some(&format!("k{n}")), 1, one_at_a_time, true)
                .unwrap();
            drop(t.admitted().await.unwrap());
        }

        // `plugin_queue` bounds the plugin's waiting calls over all its keys together.
        let pool = Pool::new(config(64, 1, 100), 64).unwrap();
        let enqueue = |key: &str| pool.enqueue_limited("chat", Some(key), 1, one_at_a_time, true);
        let _a = enqueue("a").unwrap().admitted().await.unwrap();
        let _b = enqueue("b").unwrap().admitted().await.unwrap();
        let _a_waits = enqueue("a").unwrap();
        let Err(refused) = enqueue("b") else {
            panic!("a second waiting call of the plugin was let in under another key");
        };
        assert!(
            refused.message.contains("(plugin_queue)"),
            "{}",
            refused.message
        );

        // Keys of their own never give one plugin more than `plugin_concurrency` running.
        let pool = Pool::new(config(2, 8, 100), 64).unwrap();
        let enqueue = |key: &str| pool.enqueue_limited("chat", Some(key), 1, one_at_a_time, true);
        let _a = enqueue("a").unwrap().admitted().await.unwrap();
        let _b = enqueue("b").unwrap().admitted().await.unwrap();
        let third = enqueue("c").unwrap();
        assert_eq!(
            third.stage().get(),
            Stage::Plugin,
            "a third key waits for the plugin's cap"
        );
        assert_eq!(pool.stats().running, 2);
    }

    #[tokio::test]
    async fn the_stage_says_what_a_waiting_call_waits_for() {
        let pool = Pool::new(config(1, 8, 100), 1).unwrap();
        let held = pool.enqueue("p", 60).unwrap();
        assert_eq!(held.stage().get(), Stage::Slot, "took everything at once");
        let _held = held.admitted().await.unwrap();
        let lane = pool.enqueue("p", 1).unwrap();
        assert_eq!(lane.stage().get(), Stage::Plugin);
        let memory = pool.enqueue("q", 60).unwrap();
        assert_eq!(memory.stage().get(), Stage::Memory);
        let slot = pool.enqueue("r", 10).unwrap();
        assert_eq!(slot.stage().get(), Stage::Slot);
        assert_eq!(pool.stats().queued, 3);
    }

    #[tokio::test]
    async fn dropping_a_job_aborts_it_and_returns_its_permits() {
        let pool = Pool::new(config(1, 8, 100), 4).unwrap();
        let ticket = pool.enqueue("p", 50).unwrap();
        let (started, is_running) = tokio::sync::oneshot::channel();
        let job = pool.spawn(async move {
            let _running = ticket.admitted().await.unwrap();
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        is_running.await.unwrap();
        assert_eq!(pool.stats().running, 1);
        drop(job);
        // The abort happens on the pool's thread; wait for it (bounded).
        for _ in 0..10_000 {
            if pool.stats() == PoolStats::default() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("the aborted job kept its permits: {:?}", pool.stats());
    }

    /// Field `n` (1-based, as in proc(5)) of the calling thread's `stat`.
    #[cfg(target_os = "linux")]
    fn own_stat(n: usize) -> String {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) is in parentheses and may hold spaces.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(n - 3).unwrap().to_string()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn pool_threads_run_at_the_configured_priority() {
        const NICE: usize = 19;
        const POLICY: usize = 41;
        let here = (own_stat(NICE), own_stat(POLICY));
        let nicer = (here.0.parse::<i32>().unwrap() + LOW_NICE)
            .min(19)
            .to_string();
        for (priority, nice, policy) in [
            (Priority::Normal, here.0.as_str(), here.1.as_str()),
            (Priority::Low, nicer.as_str(), here.1.as_str()),
            (Priority::Idle, here.0.as_str(), "5"),
        ] {
            let pool = Pool::new(
                PoolConfig {
                    priority,
                    ..config(1, 1, 1)
                },
                1,
            )
            .unwrap();
            let seen = pool
                .spawn(async { (own_stat(NICE), own_stat(POLICY)) })
                .await
                .unwrap();
            assert_eq!(seen, (nice.to_string(), policy.to_string()), "{priority:?}");
        }
    }
}
