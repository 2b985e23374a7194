//! The WebAssembly component host: the only module that touches wasmtime.
//!
//! Life of a plugin: `plugin.toml` (manifest, what the operator granted) →
//! [`Component`] compiled once and cached on disk by content hash and engine
//! fingerprint → `IntegrationPre` (imports resolved, kept per plugin version) →
//! a fresh [`Store`] and instance for every call, dropped afterwards, so nothing a
//! plugin keeps in memory survives into the next customer's call and a trapped
//! instance is never reused.
//!
//! Guest code, and the host's work on what a guest hands over (its log lines, its
//! output), runs on the plugin pool ([`super::pool`]): a runtime of its own, never the
//! daemon's, entered through a per-plugin FIFO limit, a bounded queue and a shared
//! memory budget. The caller waits on the daemon's runtime for the answer.
//!
//! Every limit is enforced here, on the host side: memory (a [`ResourceLimiter`] per
//! call, the pool's budget across calls), CPU time (epoch interruption against a
//! deadline counted from when the call arrived, so waiting in the queue uses it up;
//! the guest yields to the pool's scheduler every tick, so calls on one pool thread
//! interleave and a cancelled call stops at the next tick), optional fuel, a timeout
//! around the whole call on the caller's side (a plugin blocked in a host call, or a
//! call still waiting, is given up and its job aborted), input/output/log size caps,
//! and the outbound HTTP grant check in [`super::egress`].

use super::directory::{PluginDirectory, PluginFiles};
use super::egress::{self, EgressError};
use super::pool::{
    LimitsOverride, PluginLimits, Pool, PoolConfig, PoolStats, Stage, StageWatch, Ticket,
};
use super::secrets::Secrets;
use super::{CallContext, CallFuture, PluginError, PluginHost};
use crate::clock::Clock;
use crate::validate::Catalog;
use casework_sdk::manifest::Manifest;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "integration",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::casework::plugin::{clock, config, http, log, random, secrets};
use bindings::exports::casework::plugin::actions;
use bindings::IntegrationPre;

/// Largest JSON input handed to a plugin.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Largest JSON output accepted from a plugin.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Log lines kept per call; more are counted and dropped.
const MAX_LOG_LINES: u32 = 100;
/// Characters kept per log line or error message.
const MAX_MESSAGE_CHARS: usize = 2048;
/// Bytes of a plugin's stderr kept per call (panic messages).
const STDERR_BYTES: usize = 16 * 1024;
/// Outbound requests per call.
const MAX_HTTP_REQUESTS: u32 = 50;
/// How often the epoch ticks; also how often a busy plugin yields to the pool's
/// scheduler.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Concurrent plugin instances; sized for a small machine, each slot reserves
/// address space (not memory) in the pooling allocator. Also the largest
/// `plugin_concurrency`: more could never run at once.
pub const SLOTS: u32 = 64;
/// The most linear memory any one plugin may ask for.
const MAX_MEMORY_MB: u32 = 512;
/// Linear memory a pooled slot keeps resident (reset in place) after a call: about
/// what a small call dirties, so resetting it needs no madvise. Idle slots keep at most
/// `SLOTS * 2 * KEEP_RESIDENT` (128 MiB) in all. Without PAGEMAP_SCAN (Linux < 6.7)
/// the whole first KEEP_RESIDENT is reset after every call, dirty or not.
const KEEP_RESIDENT: usize = 1024 * 1024;
/// The same for tables, which are small (`SLOTS * 8 * TABLE_KEEP_RESIDENT`, 32 MiB, at
/// most).
const TABLE_KEEP_RESIDENT: usize = 64 * 1024;

/// What a loaded plugin says about one action.
#[derive(Clone, Debug)]
pub struct ActionInfo {
    pub doc: String,
    pub input_schema: Value,
    pub output_schema: Value,
    /// Top-level input fields the schema marks sensitive: write-only values are opened
    /// for these and no others ([`PluginHost::sensitive_fields`]).
    pub sensitive: BTreeSet<String>,
}

/// The top-level properties of an input schema marked `x-casework-sensitive` or
/// `writeOnly` (what the SDK's `Sensitive<T>` publishes).
fn sensitive_of(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, p)| p["x-casework-sensitive"] == true || p["writeOnly"] == true)
        .map(|(name, _)| name.clone())
        .collect()
}

/// A plugin ready to run: manifest plus pre-linked component.
struct LoadedPlugin {
    manifest: Arc<Manifest>,
    sha256: String,
    pre: IntegrationPre<CallState>,
    actions: BTreeMap<String, ActionInfo>,
}

/// What a loaded plugin looks like from outside (CLI listing, API).
#[derive(Clone, Debug)]
pub struct PluginSummary {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub actions: BTreeMap<String, ActionInfo>,
}

/// The WebAssembly [`PluginHost`].
pub struct WasmHost {
    sandbox: Sandbox,
    linker: Linker<CallState>,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    problems: RwLock<Vec<String>>,
    cache_dir: Option<PathBuf>,
    pool: Pool,
    /// The operator's `[plugin_limits.NAME]`, applied to each manifest as it is loaded.
    limit_overrides: RwLock<BTreeMap<String, LimitsOverride>>,
}

/// What a job on the pool needs to build a call's store; cheap to clone.
#[derive(Clone)]
struct Sandbox {
    engine: Engine,
    secrets: Arc<Secrets>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHost")
            .field("plugins", &self.plugin_names())
            .finish_non_exhaustive()
    }
}

impl WasmHost {
    /// A host with no plugins yet and the default pool. `cache_dir` keeps compiled
    /// components across restarts (`None` compiles on every load).
    pub fn new(
        secrets: Secrets,
        clock: Arc<dyn Clock>,
        cache_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        Self::with_pool(secrets, clock, cache_dir, PoolConfig::default())
    }

    /// As [`WasmHost::new`], with the plugin pool sized by `pool`.
    pub fn with_pool(
        secrets: Secrets,
        clock: Arc<dyn Clock>,
        cache_dir: Option<PathBuf>,
        pool: PoolConfig,
    ) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(true);
        // Deep recursion in a plugin is a trap, far below the host thread's stack.
        config.max_wasm_stack(512 * 1024);
        config.async_stack_size(2 * 1024 * 1024);
        let mut slots = PoolingAllocationConfig::new();
        slots
            .total_component_instances(SLOTS)
            .total_core_instances(SLOTS * 8)
            .max_core_instances_per_component(16)
            .total_memories(SLOTS * 2)
            .max_memories_per_component(4)
            .total_tables(SLOTS * 8)
            .max_tables_per_component(16)
            .total_stacks(SLOTS)
            .max_memory_size(MAX_MEMORY_MB as usize * 1024 * 1024)
            // After a call, up to KEEP_RESIDENT of its dirty pages (found with
            // PAGEMAP_SCAN where the kernel has it) are reset in place and the rest is
            // returned to the OS at once (no decommit batching). A small call then
            // costs no madvise, whose TLB shootdowns on every core were the largest
            // cost of a call in profiles, and a call that used 512 MiB does not leave
            // it resident: what idle slots keep is at most KEEP_RESIDENT each.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(slots));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked because std's wasm32-wasip2 target imports it, but the
        // context is empty: no preopened directories, no environment, no arguments,
        // no sockets or name lookup, stdin empty and stdout/stderr discarded.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Integration::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        spawn_epoch_ticker(&engine);
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(WasmHost {
            sandbox: Sandbox {
                engine,
                secrets: Arc::new(secrets),
                clock,
            },
            linker,
            plugins: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(Vec::new()),
            cache_dir,
            pool: Pool::new(pool, SLOTS as usize)?,
            limit_overrides: RwLock::new(BTreeMap::new()),
        })
    }

    /// Calls waiting and running on the plugin pool, and the memory they reserved.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The operator's limits for plugins by name (`[plugin_limits.NAME]`), which replace
    /// the fields they set in each plugin's own `[limits]` from the next [`WasmHost::load_dir`].
    pub fn set_limit_overrides(&self, overrides: BTreeMap<String, LimitsOverride>) {
        *self
            .limit_overrides
            .write()
            .unwrap_or_else(|e| e.into_inner()) = overrides;
    }

    /// Loads every plugin in `dir`, replacing what was loaded before. A plugin whose
    /// files did not change is kept as is; one that fails to load is reported by
    /// [`WasmHost::problems`] and, if an earlier version was loaded, that one stays.
    pub async fn load_dir(&self, dir: &Path) {
        let mut found = PluginDirectory::scan(dir);
        {
            let overrides = self
                .limit_overrides
                .read()
                .unwrap_or_else(|e| e.into_inner());
            for files in &mut found.plugins {
                if let Some(o) = overrides.get(&files.manifest.name) {
                    o.apply(&mut files.manifest.limits);
                }
            }
        }
        let mut problems = found.problems.clone();
        let previous = self
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut loaded = BTreeMap::new();
        for files in &found.plugins {
            let unchanged = previous.get(&files.manifest.name).filter(|p| {
                *p.manifest == files.manifest
                    && std::fs::read(&files.wasm_path)
                        .is_ok_and(|b| hex::encode(Sha256::digest(&b)) == p.sha256)
            });
            if let Some(plugin) = unchanged {
                loaded.insert(files.manifest.name.clone(), plugin.clone());
                continue;
            }
            match self.load_plugin(files).await {
                Ok(plugin) => {
                    tracing::info!(
                        plugin = %plugin.manifest.name,
                        version = %plugin.manifest.version,
                        sha256 = %&plugin.sha256[..12],
                        "plugin loaded"
                    );
                    loaded.insert(plugin.manifest.name.clone(), Arc::new(plugin));
                }
                Err(why) => {
                    tracing::error!(plugin = %files.manifest.name, "{why}");
                    // A broken update must not take a working plugin away.
                    if let Some(old) = previous.get(&files.manifest.name) {
                        problems.push(format!(
                            "{why} (version {} stays active)",
                            old.manifest.version
                        ));
                        loaded.insert(files.manifest.name.clone(), old.clone());
                    } else {
                        problems.push(why);
                    }
                }
            }
        }
        *self.plugins.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        *self.problems.write().unwrap_or_else(|e| e.into_inner()) = problems;
    }

    /// Why plugins found on disk are not running.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Loaded plugins with their versions, hashes and action schemas.
    pub fn summaries(&self) -> Vec<PluginSummary> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| PluginSummary {
                name: p.manifest.name.clone(),
                version: p.manifest.version.clone(),
                sha256: p.sha256.clone(),
                actions: p.actions.clone(),
            })
            .collect()
    }

    async fn load_plugin(&self, files: &PluginFiles) -> Result<LoadedPlugin, String> {
        let name = &files.manifest.name;
        let bytes = std::fs::read(&files.wasm_path).map_err(|e| {
            format!(
                "plugin `{name}`: cannot read {}: {e}; build it with `bash plugins/build.sh`",
                files.wasm_path.display()
            )
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = &files.manifest.sha256 {
            if !expected.eq_ignore_ascii_case(&sha256) {
                return Err(format!(
                    "plugin `{name}`: {} has sha256 {sha256} but {} pins {expected}; refusing to load a component the operator did not approve",
                    files.wasm_path.display(),
                    files.manifest_path.display()
                ));
            }
        }
        if files.manifest.limits.memory_mb > MAX_MEMORY_MB {
            return Err(format!(
                "plugin `{name}`: limits.memory_mb = {} is more than this host allows ({MAX_MEMORY_MB})",
                files.manifest.limits.memory_mb
            ));
        }
        let budget = self.pool.config().memory_mib;
        if files.manifest.limits.memory_mb > budget {
            // Refused now rather than at every call: no call of it could ever start.
            return Err(super::pool::over_budget_text(
                name,
                files.manifest.limits.memory_mb,
                budget,
            ));
        }
        let component = self
            .compile(bytes, &sha256)
            .await
            .map_err(|e| format!("plugin `{name}`: not a valid component: {e:#}"))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(IntegrationPre::new)
            .map_err(|e| {
                format!(
                    "plugin `{name}`: does not fit the casework:plugin@0.1.0 `integration` world (imports something the host does not offer?): {e:#}"
                )
            })?;
        let mut plugin = LoadedPlugin {
            manifest: Arc::new(files.manifest.clone()),
            sha256,
            pre,
            actions: BTreeMap::new(),
        };
        plugin.actions = self.describe(&plugin).await?;
        let exported: BTreeSet<&String> = plugin.actions.keys().collect();
        let declared: BTreeSet<&String> = plugin.manifest.actions.iter().collect();
        if exported != declared {
            return Err(format!(
                "plugin `{name}`: plugin.toml lists actions {declared:?} but the component describes {exported:?}; make them match"
            ));
        }
        Ok(plugin)
    }

    /// Compiles a component, or loads it from the on-disk cache.
    async fn compile(&self, bytes: Vec<u8>, sha256: &str) -> anyhow::Result<Component> {
        let engine = self.sandbox.engine.clone();
        let cache_path = self.cache_dir.as_ref().map(|dir| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
        });
        // On the pool's blocking threads: compiling is seconds of CPU at the pool's
        // priority, not the daemon's.
        self.pool
            .spawn_blocking(move || {
                if let Some(path) = &cache_path {
                    if path.is_file() {
                        // SAFETY: the file was written by `Component::serialize` below, into
                        // the daemon's own data directory, under a name that binds it to the
                        // source's hash and this engine's compatibility fingerprint.
                        // Anyone who can write the data directory can already change
                        // the journal; see SECURITY.md.
                        match unsafe { Component::deserialize_file(&engine, path) } {
                            Ok(c) => return Ok(c),
                            Err(e) => tracing::warn!(
                                path = %path.display(),
                                "ignoring unusable compiled plugin cache entry: {e}"
                            ),
                        }
                    }
                }
                let component = Component::new(&engine, &bytes)?;
                if let Some(path) = &cache_path {
                    // Unique per writer: two hosts compiling the same plugin must not share it.
                    let tmp = path.with_extension(format!(
                        "{}.{}.tmp",
                        std::process::id(),
                        rand::random::<u64>()
                    ));
                    let written = component
                        .serialize()
                        .map_err(anyhow::Error::from)
                        .and_then(|b| Ok(std::fs::write(&tmp, b)?))
                        .and_then(|_| Ok(std::fs::rename(&tmp, path)?));
                    if let Err(e) = written {
                        tracing::warn!(path = %path.display(), "cannot cache compiled plugin: {e}");
                    }
                }
                Ok(component)
            })
            .await?
    }

    async fn describe(
        &self,
        plugin: &LoadedPlugin,
    ) -> Result<BTreeMap<String, ActionInfo>, String> {
        let name = plugin.manifest.name.clone();
        let arrived = Instant::now();
        let deadline = arrived + time_limit(&plugin.manifest);
        let (sandbox, pre, manifest) = (
            self.sandbox.clone(),
            plugin.pre.clone(),
            plugin.manifest.clone(),
        );
        let list = self
            .on_pool(&plugin.manifest, None, arrived, false, move |ticket| {
                run_describe(sandbox, pre, manifest, ticket, deadline)
            })
            .await
            .map_err(|e| format!("plugin `{name}`: describe() failed: {}", e.message))?;
        let mut actions = BTreeMap::new();
        for info in list {
            let parse = |what: &str, text: &str| {
                serde_json::from_str::<Value>(text).map_err(|e| {
                    format!(
                        "plugin `{name}`: action `{}` has an invalid {what} schema: {e}",
                        info.name
                    )
                })
            };
            let input_schema = parse("input", &info.input_schema)?;
            let action = ActionInfo {
                doc: info.doc.clone(),
                sensitive: sensitive_of(&input_schema),
                input_schema,
                output_schema: parse("output", &info.output_schema)?,
            };
            actions.insert(info.name.clone(), action);
        }
        Ok(actions)
    }

    /// Runs the job `start` makes from the call's ticket on the plugin pool, and waits
    /// for its answer here, on the caller's runtime, until the plugin's time limit
    /// (counted from `arrived`) plus a margin. Giving up drops the job, which aborts it.
    async fn on_pool<T, F>(
        &self,
        manifest: &Manifest,
        key: Option<String>,
        arrived: Instant,
        paced: bool,
        start: impl FnOnce(Ticket) -> F,
    ) -> Result<T, PluginError>
    where
        F: std::future::Future<Output = Result<T, PluginError>> + Send + 'static,
        T: Send + 'static,
    {
        use tracing::instrument::{Instrument, WithSubscriber};
        let plugin = manifest.name.as_str();
        let limits = limits_of(manifest);
        let ticket = self.pool.enqueue_limited(
            plugin,
            key.as_deref(),
            manifest.limits.memory_mb,
            limits,
            paced,
        )?;
        let stage = ticket.stage();
        // The job's log lines (the guest's included) keep the caller's span and
        // subscriber: instance, step and attempt, and a test's capture.
        let job = self.pool.spawn(
            start(ticket)
                .instrument(tracing::Span::current())
                .with_current_subscriber(),
        );
        let give_up = arrived + time_limit(manifest) + HOST_MARGIN;
        match tokio::time::timeout_at(give_up.into(), job).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(failed)) if failed.is_cancelled() => Err(error(
                "plugin_unavailable",
                "the plugin host is shutting down",
                true,
            )),
            Ok(Err(failed)) => Err(error(
                "plugin_host_failed",
                format!(
                    "the plugin host failed while running plugin `{plugin}`: {failed}; the provider may or may not have acted, and a retry reuses the same idempotency key"
                ),
                true,
            )),
            Err(_) => Err(gave_up(plugin, manifest, &stage, self.pool.config())),
        }
    }

    async fn invoke(
        &self,
        plugin_name: &str,
        action: &str,
        input: Value,
        ctx: CallContext,
    ) -> Result<Value, PluginError> {
        // The call's time starts now: waiting for the pool uses it up.
        let arrived = Instant::now();
        let plugin = self
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin_name)
            .cloned()
            .ok_or_else(|| {
                let problems = self.problems();
                let why = problems
                    .iter()
                    .find(|p| p.contains(&format!("`{plugin_name}`")))
                    .map(|p| format!(": {p}"))
                    .unwrap_or_else(|| {
                        format!("; loaded plugins: {}", self.plugin_names().join(", "))
                    });
                error(
                    "plugin_unavailable",
                    format!("plugin `{plugin_name}` is not loaded{why}"),
                    false,
                )
            })?;
        if !plugin.actions.contains_key(action) {
            return Err(error(
                "unknown_action",
                format!(
                    "plugin `{plugin_name}` has no action `{action}`; it has: {}",
                    plugin
                        .actions
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                false,
            ));
        }
        let deadline = arrived + time_limit(&plugin.manifest);
        let key = plugin.manifest.limits.key_of(&input);
        let call = Call {
            sandbox: self.sandbox.clone(),
            pre: plugin.pre.clone(),
            manifest: plugin.manifest.clone(),
            action: action.to_string(),
            input,
            ctx,
            deadline,
        };
        self.on_pool(&plugin.manifest, key, arrived, true, move |ticket| {
            call.run(ticket)
        })
        .await
    }
}

impl Sandbox {
    /// A fresh store for one call of `manifest`'s plugin, interrupted at `deadline`.
    fn store(
        &self,
        manifest: &Manifest,
        step: &str,
        ctx: Option<&CallContext>,
        deadline: Instant,
    ) -> Store<CallState> {
        // stderr is kept (bounded) so a panic message reaches the error and the log;
        // everything else in the WASI context stays empty.
        let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(STDERR_BYTES);
        let state = CallState {
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            stderr,
            table: ResourceTable::new(),
            limits: CallLimits {
                memory_bytes: manifest.limits.memory_mb as usize * 1024 * 1024,
                memory_exceeded: false,
            },
            plugin: manifest.name.clone(),
            config: manifest.config.clone(),
            grants: manifest.grants.clone(),
            secrets: self.secrets.clone(),
            handed_out: ctx.map(|c| c.scrub.clone()).unwrap_or_default(),
            clock: self.clock.clone(),
            deadline,
            log_lines: 0,
            http_requests: 0,
            timed_out: false,
            instance: ctx.map(|c| c.instance_id.clone()).unwrap_or_default(),
            step: ctx
                .map(|c| c.step_id.clone())
                .unwrap_or_else(|| step.to_string()),
            attempt: ctx.map(|c| c.attempt).unwrap_or(0),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Fuel is on for the whole engine; a plugin without a budget gets all of it.
        let _ = store.set_fuel(manifest.limits.fuel.unwrap_or(u64::MAX));
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if Instant::now() >= deadline {
                ctx.data_mut().timed_out = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// One action call, moved onto the plugin pool whole: everything the host does with
/// it, from serialising the input to parsing the output, happens on the pool.
struct Call {
    sandbox: Sandbox,
    pre: IntegrationPre<CallState>,
    manifest: Arc<Manifest>,
    action: String,
    input: Value,
    ctx: CallContext,
    deadline: Instant,
}

impl Call {
    async fn run(self, ticket: Ticket) -> Result<Value, PluginError> {
        let Call {
            sandbox,
            pre,
            manifest,
            action,
            input,
            ctx,
            deadline,
        } = self;
        let plugin_name = manifest.name.as_str();
        let input_text = input.to_string();
        drop(input);
        if input_text.len() > MAX_INPUT_BYTES {
            return Err(error(
                "input_too_large",
                format!(
                    "the input to `{plugin_name}.{action}` is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    input_text.len()
                ),
                false,
            ));
        }
        let running = admitted_in_time(ticket, &manifest, deadline).await?;

        let mut store = sandbox.store(&manifest, &ctx.step_id, Some(&ctx), deadline);
        let wit_ctx = actions::Context {
            instance_id: ctx.instance_id.clone(),
            step_id: ctx.step_id.clone(),
            attempt: ctx.attempt,
            idempotency_key: ctx.idempotency_key.clone(),
        };
        let outcome = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance
                .casework_plugin_actions()
                .call_invoke(&mut store, &action, &input_text, &wit_ctx)
                .await
        }
        .await;
        let state = store.data();
        let said = state.stderr_text();
        if !said.trim().is_empty() {
            tracing::warn!(plugin = %plugin_name, "plugin wrote to stderr: {}", state.scrub(&truncate(said.trim())));
        }
        let result = match outcome {
            Err(trap) if state.timed_out => {
                drop(trap);
                Err(timeout_error(plugin_name, &manifest))
            }
            Err(trap) => Err(trap_error(plugin_name, state, &trap)),
            Ok(Err(e)) => Err(PluginError {
                code: if is_code(&e.code) {
                    e.code
                } else {
                    "plugin_error".into()
                },
                message: state.scrub(&truncate(&e.message)),
                retryable: e.retryable,
            }),
            Ok(Ok(output)) => state.accept_output(plugin_name, &action, output),
        };
        // The instance slot, memory and plugin permit go back only once the guest's
        // store is gone, so the next call can have them.
        drop(store);
        drop(running);
        result
    }
}

/// `describe()` of a plugin being loaded, on the pool like any call.
async fn run_describe(
    sandbox: Sandbox,
    pre: IntegrationPre<CallState>,
    manifest: Arc<Manifest>,
    ticket: Ticket,
    deadline: Instant,
) -> Result<Vec<actions::ActionInfo>, PluginError> {
    let running = admitted_in_time(ticket, &manifest, deadline).await?;
    let mut store = sandbox.store(&manifest, "describe", None, deadline);
    let described = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .casework_plugin_actions()
            .call_describe(&mut store)
            .await
    }
    .await;
    let answer = match described {
        Ok(list) => Ok(list),
        Err(_) if store.data().timed_out => Err(timeout_error(&manifest.name, &manifest)),
        Err(trap) => Err(error("plugin_trapped", trap_text(&trap), false)),
    };
    drop(store);
    drop(running);
    answer
}

/// Waits for the ticket's permits; a call admitted only after its deadline does not
/// start (it would be interrupted at once) and says what it waited for.
async fn admitted_in_time(
    ticket: Ticket,
    manifest: &Manifest,
    deadline: Instant,
) -> Result<super::pool::Running, PluginError> {
    let pool = ticket.config();
    let running = ticket.admitted().await?;
    if Instant::now() >= deadline {
        return Err(waited_too_long(
            &manifest.name,
            manifest,
            running.waited_on(),
            pool,
        ));
    }
    Ok(running)
}

/// A plugin's time limit, which covers waiting on the pool and running.
fn time_limit(manifest: &Manifest) -> Duration {
    Duration::from_millis(u64::from(manifest.limits.timeout_ms))
}

/// How long after a plugin's time limit the caller gives up on a call, so the epoch
/// interrupt (whose error names the cause, and which keeps the guest's stderr) normally
/// answers first.
const HOST_MARGIN: Duration = Duration::from_millis(100);

/// The caller's answer when the call's time ran out before the pool answered.
fn gave_up(plugin: &str, manifest: &Manifest, stage: &StageWatch, pool: PoolConfig) -> PluginError {
    match stage.get() {
        Stage::Running => timeout_error(plugin, manifest),
        waiting => waited_too_long(plugin, manifest, waiting, pool),
    }
}

/// What the pool holds the plugin's calls to, from its `plugin.toml`.
fn limits_of(manifest: &Manifest) -> PluginLimits {
    PluginLimits {
        concurrency: manifest.limits.concurrency.map(|c| c as usize),
        rate: manifest.limits.rate(),
    }
}

/// How a limit held per `limits.key` value is described (without the value, which may be
/// personal data).
fn per_key(manifest: &Manifest) -> String {
    manifest
        .limits
        .key
        .as_deref()
        .map_or(String::new(), |k| format!(" for one value of `{k}`"))
}

/// A call that never started: its whole time limit went waiting on the pool.
fn waited_too_long(
    plugin: &str,
    manifest: &Manifest,
    stage: Stage,
    pool: PoolConfig,
) -> PluginError {
    let waited_for = match stage {
        Stage::Plugin => match manifest.limits.concurrency {
            Some(c) if (c as usize) < pool.concurrency => format!(
                "one of the {c} calls of this plugin{} that may run at once (its limits.concurrency)",
                per_key(manifest)
            ),
            _ => format!(
                "one of the {} calls of this plugin that may run at once (plugin_concurrency)",
                pool.concurrency
            ),
        },
        Stage::Rate => format!(
            "its turn under the plugin's rate of {}{} (its limits.rate): more calls came at once than that rate starts within the time limit",
            manifest.limits.rate.as_deref().unwrap_or(""),
            per_key(manifest)
        ),
        Stage::Memory => format!(
            "{} MiB (its limits.memory_mb) of the {} MiB all plugin calls may use together (plugin_memory_mib)",
            manifest.limits.memory_mb, pool.memory_mib
        ),
        Stage::Slot | Stage::Running => format!("one of the host's {SLOTS} instance slots"),
    };
    error(
        "plugin_busy",
        format!(
            "plugin `{plugin}` could not start within its {} ms limit (limits.timeout_ms): it waited for {waited_for}; it did not run, so a retry is safe",
            manifest.limits.timeout_ms
        ),
        true,
    )
}

fn timeout_error(plugin: &str, manifest: &Manifest) -> PluginError {
    error(
        "plugin_timeout",
        format!(
            "plugin `{plugin}` did not finish within its {} ms limit (limits.timeout_ms); the provider may or may not have acted, and a retry reuses the same idempotency key",
            manifest.limits.timeout_ms
        ),
        true,
    )
}

fn trap_error(plugin: &str, state: &CallState, trap: &wasmtime::Error) -> PluginError {
    if state.limits.memory_exceeded {
        return error(
            "plugin_out_of_memory",
            format!(
                "plugin `{plugin}` tried to use more than its {} MiB memory limit (limits.memory_mb)",
                state.limits.memory_bytes / (1024 * 1024)
            ),
            false,
        );
    }
    match trap.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => error(
            "plugin_out_of_fuel",
            format!("plugin `{plugin}` used up its CPU budget (limits.fuel)"),
            false,
        ),
        Some(Trap::StackOverflow) => error(
            "plugin_trapped",
            format!("plugin `{plugin}` overflowed its stack (runaway recursion)"),
            false,
        ),
        _ => error(
            "plugin_trapped",
            format!(
                "plugin `{plugin}` crashed: {}",
                state.scrub(&trap_text(trap))
            ),
            false,
        ),
    }
}

/// A one-line reason for a trap, without the wasm backtrace.
fn trap_text(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => truncate(&e.to_string()),
    }
}

fn error(code: &str, message: impl Into<String>, retryable: bool) -> PluginError {
    PluginError {
        code: code.to_string(),
        message: message.into(),
        retryable,
    }
}

fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Ticks every engine's epoch until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("casework-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

struct CallLimits {
    memory_bytes: usize,
    memory_exceeded: bool,
}

impl ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // A trap, not a failed grow: a plugin that keeps allocating must stop here
            // rather than limp on with allocation failures.
            self.memory_exceeded = true;
            wasmtime::bail!("memory limit reached");
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Everything one call can see. Built fresh per call, dropped afterwards.
struct CallState {
    wasi: WasiCtx,
    stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    table: ResourceTable,
    limits: CallLimits,
    plugin: String,
    config: BTreeMap<String, String>,
    grants: casework_sdk::manifest::Grants,
    secrets: Arc<Secrets>,
    /// Values given to the plugin in this call, scrubbed from everything it says.
    handed_out: Vec<String>,
    clock: Arc<dyn Clock>,
    deadline: Instant,
    log_lines: u32,
    http_requests: u32,
    timed_out: bool,
    instance: String,
    step: String,
    attempt: u32,
}

impl CallState {
    /// What the plugin wrote to stderr in this call, bounded.
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.handed_out {
            if secret.len() >= 4 {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }

    fn accept_output(
        &self,
        plugin: &str,
        action: &str,
        output: String,
    ) -> Result<Value, PluginError> {
        if output.len() > MAX_OUTPUT_BYTES {
            return Err(error(
                "output_too_large",
                format!(
                    "`{plugin}.{action}` returned {} bytes; the limit is {MAX_OUTPUT_BYTES}",
                    output.len()
                ),
                false,
            ));
        }
        if self.scrub(&output) != output {
            return Err(error(
                "secret_in_output",
                format!(
                    "`{plugin}.{action}` returned one of its secrets in its output; the output was discarded so it never reaches the journal"
                ),
                false,
            ));
        }
        serde_json::from_str(&output).map_err(|e| {
            error(
                "bad_output",
                format!("`{plugin}.{action}` returned output that is not JSON: {e}"),
                false,
            )
        })
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for CallState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin log limit reached; dropping further lines of this call");
            }
            return Ok(());
        }
        let message = self.scrub(&truncate(&message));
        let (plugin, instance, step, attempt) =
            (&self.plugin, &self.instance, &self.step, self.attempt);
        match level {
            log::Level::Trace => tracing::trace!(plugin, instance, step, attempt, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, instance, step, attempt, "{message}"),
            log::Level::Info => tracing::info!(plugin, instance, step, attempt, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, instance, step, attempt, "{message}"),
            log::Level::Error => tracing::error!(plugin, instance, step, attempt, "{message}"),
        }
        Ok(())
    }
}

impl config::Host for CallState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}

impl secrets::Host for CallState {
    async fn get(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<String, secrets::SecretError>> {
        if !self.grants.allows_secret(&name) {
            tracing::warn!(plugin = %self.plugin, secret = %name, "plugin asked for a secret it is not granted");
            return Ok(Err(secrets::SecretError::NotGranted));
        }
        match self.secrets.get(&self.plugin, &name) {
            Some(value) => {
                self.handed_out.push(value.clone());
                Ok(Ok(value))
            }
            None => Ok(Err(secrets::SecretError::NotFound)),
        }
    }
}

impl http::Host for CallState {
    async fn send(
        &mut self,
        request: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        self.http_requests += 1;
        if self.http_requests > MAX_HTTP_REQUESTS {
            return Ok(Err(http::HttpError::InvalidRequest(format!(
                "more than {MAX_HTTP_REQUESTS} requests in one call"
            ))));
        }
        let method = match request.method {
            http::Method::Get => "GET",
            http::Method::Head => "HEAD",
            http::Method::Post => "POST",
            http::Method::Put => "PUT",
            http::Method::Patch => "PATCH",
            http::Method::Delete => "DELETE",
            http::Method::Options => "OPTIONS",
        };
        let mut headers = request.headers;
        // The call's span goes on with the request (when traces are exported), unless the
        // plugin names a trace of its own.
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
        {
            if let Some(parent) = crate::telemetry::current_traceparent() {
                headers.push(("traceparent".to_string(), parent));
            }
        }
        let checked = match egress::check(
            method,
            &request.url,
            headers,
            request.body,
            &self.grants.http,
        ) {
            Ok(checked) => checked,
            Err(e) => {
                if let EgressError::Denied(origin) = &e {
                    tracing::warn!(plugin = %self.plugin, %origin, "plugin request to a host it is not granted was refused");
                }
                return Ok(Err(wit_http_error(e)));
            }
        };
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(Err(http::HttpError::Timeout));
        }
        let sent = tokio::task::spawn_blocking(move || egress::send(checked, remaining)).await;
        Ok(match sent {
            Ok(Ok(r)) => Ok(http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Ok(Err(e)) => Err(wit_http_error(e)),
            Err(_) => Err(http::HttpError::Connection(
                "the request was cancelled".into(),
            )),
        })
    }
}

fn wit_http_error(e: EgressError) -> http::HttpError {
    match e {
        EgressError::Denied(origin) => http::HttpError::Denied(format!(
            "{origin} is not granted to this plugin (grants.http in plugin.toml)"
        )),
        EgressError::Invalid(why) => http::HttpError::InvalidRequest(why),
        EgressError::Timeout => http::HttpError::Timeout,
        EgressError::Connection(why) => http::HttpError::Connection(why),
        EgressError::TooLarge => http::HttpError::ResponseTooLarge,
    }
}

impl clock::Host for CallState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.clock.now_ms()).unwrap_or(0))
    }
}

impl random::Host for CallState {
    async fn get_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        use rand::RngCore;
        let mut bytes = vec![0u8; len.min(64 * 1024) as usize];
        rand::rng().fill_bytes(&mut bytes);
        Ok(bytes)
    }
}

impl PluginHost for WasmHost {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(self.invoke(plugin, action, input, ctx))
    }

    fn provides(&self, plugin: &str, action: &str) -> bool {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .is_some_and(|p| p.actions.contains_key(action))
    }

    fn sensitive_fields(&self, plugin: &str, action: &str) -> Option<BTreeSet<String>> {
        // An action this host does not have opens nothing (the call fails anyway).
        Some(
            self.plugins
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(plugin)
                .and_then(|p| p.actions.get(action))
                .map(|a| a.sensitive.clone())
                .unwrap_or_default(),
        )
    }

    fn catalog(&self) -> Option<Catalog> {
        let mut catalog = Catalog::default();
        for (name, plugin) in self
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            catalog
                .plugins
                .insert(name.clone(), plugin.actions.keys().cloned().collect());
        }
        Some(catalog)
    }
}
