//! `casework serve`: the daemon.

use crate::clock::SystemClock;
use crate::daemon::config::{self, Config};
use crate::daemon::http::{Api, ApiOptions};
use crate::daemon::reload::Reloader;
use crate::daemon::Driver;
use crate::plugin_host::secrets::Secrets;
use crate::plugin_host::wasm::WasmHost;
use crate::plugin_host::{Ledger, PluginHost};
use crate::store::{postgres::PgStore, seal::KeySource, sled::SledStore, Store};
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub const DEFAULT_LISTEN: &str = config::DEFAULT_LISTEN;

/// `casework serve`: every setting is also a `CASEWORK_*` variable and a key of the config
/// file (see `casework.example.toml`); flags win over variables, variables over the file.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: config::Flags,
    /// Testing only: answer every plugin call with a fake that appends its idempotency key to FILE.
    #[arg(long, hide = true)]
    pub test_ledger: Option<PathBuf>,
    /// The global `--color`, for the logs (set by `cli::execute`).
    #[arg(skip)]
    pub color: clap::ColorChoice,
}

/// A fatal error the daemon has already written to its JSON log: `main` exits 1 without
/// printing it again, so a log collector reading stderr sees JSON lines only.
#[derive(Debug, thiserror::Error)]
#[error("casework: the daemon stopped; the reason is in the log")]
pub struct Logged;

pub async fn serve(args: ServeArgs) -> Result<()> {
    // Settings first: a bad one stops here, before anything is opened or created (and
    // before the log exists, so it is printed as text).
    let cfg = Config::load(&args.config).map_err(|e| anyhow!("casework: {e}"))?;
    let logging = config::init_tracing(
        cfg.log_format,
        &cfg.log_level,
        args.color,
        cfg.otlp_endpoint.as_deref(),
    )
    .map_err(|e| anyhow!("casework: {e}"))?;
    let json = logging.json;
    let outcome = run(cfg, args).await;
    if let Some(export) = logging.export {
        // Blocks while the last spans are sent (at most the export timeout).
        tokio::task::spawn_blocking(move || export.shutdown())
            .await
            .ok();
    }
    match outcome {
        Err(e) if json => {
            let reason = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            tracing::error!(error = %reason.trim_start_matches("casework: "), "casework could not go on and stopped");
            Err(Logged.into())
        }
        other => other,
    }
}

async fn run(cfg: Config, args: ServeArgs) -> Result<()> {
    if let Some(file) = &cfg.file {
        tracing::info!(file = %file.display(), "configuration read");
    }
    if cfg.tokens.is_empty() {
        tracing::warn!(addr = %cfg.listen, "no API tokens configured: the API is open to anyone who can reach this loopback address");
    }
    if !cfg.workflows.is_dir() {
        return Err(anyhow!(
            "casework: workflow folder {} does not exist; pass --workflows DIR",
            cfg.workflows.display()
        ));
    }
    // The port before the store: an address in use stops here, before the data directory
    // (or a database schema) is created. Connections wait in the backlog until serving.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                "; another process (another `casework serve`?) listens there: stop it or pass --listen HOST:PORT"
            } else {
                ""
            };
            anyhow!("casework: cannot listen on {}: {e}{hint}", cfg.listen)
        })?;
    let key = KeySource::from_env(cfg.journal_key_file.as_deref()).map_err(|e| anyhow!("{e}"))?;
    let store: Arc<dyn Store> = match &cfg.store {
        Some(url) => {
            tracing::info!(store = %url, "opening the PostgreSQL store");
            let url = url.clone();
            // Opening waits on the store's own runtime: not on this one's worker thread.
            let opened = tokio::task::spawn_blocking(move || PgStore::open(url.expose(), key))
                .await
                .map_err(|e| anyhow!("casework: opening the PostgreSQL store: {e}"))?;
            Arc::new(opened.map_err(|e| anyhow!("{e}"))?)
        }
        None => Arc::new(SledStore::open_with(&cfg.data, key).map_err(|e| anyhow!("{e}"))?),
    };
    let stored_in = match &cfg.store {
        Some(url) => url.redacted(),
        None => format!("data in {}", cfg.data.display()),
    };
    let clock = Arc::new(SystemClock);
    let (plugins, wasm): (Arc<dyn PluginHost>, Option<Arc<WasmHost>>) = match &args.test_ledger {
        Some(path) => (Arc::new(Ledger::new(path.clone())), None),
        None => {
            let host = Arc::new(load_plugins(&cfg, clock.clone()).await?);
            (host.clone(), Some(host))
        }
    };
    let driver = Driver::with_lease(store, plugins, clock, None, cfg.lease_ms);
    driver.set_max_pending(cfg.max_pending);
    driver.set_inbox(cfg.inbox);
    let reloader = Reloader::new(
        driver.clone(),
        cfg.workflows.clone(),
        wasm.map(|host| (cfg.plugins.clone(), host)),
    );
    let api = Api::new(
        driver.clone(),
        ApiOptions {
            tokens: cfg.tokens.clone(),
            max_body_bytes: cfg.max_body_bytes,
            rate_limit: cfg.rate_limit,
            reload_stats: Some(reloader.stats.clone()),
        },
    );
    let report = reloader.reload_workflows();
    for wf in driver.inner().registry.all_latest() {
        tracing::info!(workflow = %wf.name, version = wf.version, file = %wf.file, "workflow loaded");
    }
    if !report.rejected.is_empty() {
        tracing::error!(
            rejected = report.rejected.len(),
            "some workflow files have errors and were not loaded; see GET /v1/workflows"
        );
    }
    if !cfg.no_reload {
        tokio::spawn(reloader.clone().watch());
    }
    let resumed = driver.resume_all().map_err(|e| anyhow!(e))?;
    tracing::info!(resumed, "instances resumed");
    {
        let driver = driver.clone();
        tokio::spawn(async move { driver.complete_pauses().await });
    }
    api.set_ready();
    tokio::spawn(driver.clone().run_timers());
    tokio::spawn(driver.clone().run_ownership());
    tokio::spawn(crate::daemon::triggers::run_schedules(driver.clone()));
    // The bound address: with port 0 the system picked one.
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    tracing::info!(addr = %addr, store = %stored_in, "casework is serving");
    println!("casework: serving on http://{addr} ({stored_in})");
    let app = api
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let stopping = driver.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Requests held open by `?wait=` answer now, so the stop does not wait for them.
            stopping.stop_waiting();
        })
        .await?;
    // In-flight steps are already journaled; waiting for idle lets their records flush.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), driver.wait_idle()).await;
    tracing::info!("casework stopped");
    Ok(())
}

/// Loads the plugin folder. A plugin that fails to load is logged and left out (its
/// workflows fail validation with the reason); it never stops the daemon.
async fn load_plugins(args: &Config, clock: Arc<SystemClock>) -> Result<WasmHost> {
    let secrets = match &args.secrets {
        Some(path) => Secrets::from_file(path).map_err(|e| anyhow!("casework: {e}"))?,
        None => Secrets::new(),
    };
    let host = WasmHost::with_pool(
        secrets,
        clock,
        Some(args.data.join("plugin-cache")),
        args.plugin_pool,
    )
    .context("starting the WebAssembly plugin host")?;
    host.set_limit_overrides(args.plugin_limits.clone());
    host.load_dir(&args.plugins).await;
    for problem in host.problems() {
        tracing::error!(target: "casework::plugins", "{problem}");
    }
    let names = host.plugin_names();
    for (plugin, limits) in &args.plugin_limits {
        if names.contains(plugin) {
            tracing::info!(plugin = %plugin, limits = ?limits, "the operator's plugin_limits replace the plugin's own");
        } else {
            tracing::warn!(plugin = %plugin, "plugin_limits names a plugin that is not loaded; check the name (it applies once the plugin is installed)");
        }
    }
    let pool = args.plugin_pool;
    tracing::info!(
        plugins = ?host.plugin_names(),
        dir = %args.plugins.display(),
        threads = pool.threads,
        concurrency = pool.concurrency,
        queue = pool.queue,
        memory_mib = pool.memory_mib,
        priority = ?pool.priority,
        "plugins loaded"
    );
    Ok(host)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
