//! `casework serve`: the daemon.

use crate::clock::SystemClock;
use crate::daemon::reload::Reloader;
use crate::daemon::{http, Driver};
use crate::plugin_host::secrets::Secrets;
use crate::plugin_host::wasm::WasmHost;
use crate::plugin_host::{Ledger, PluginHost};
use crate::store::{seal::KeySource, sled::SledStore};
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where instances are stored (sled).
    #[arg(long, env = "CASEWORK_DATA", default_value = "data")]
    pub data: PathBuf,
    /// Folder of workflow files.
    #[arg(long, env = "CASEWORK_WORKFLOWS", default_value = "workflows")]
    pub workflows: PathBuf,
    /// Address for the HTTP API.
    #[arg(long, env = "CASEWORK_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// File holding the journal encryption key (64 hex characters). Default: the key in the
    /// environment variable CASEWORK_JOURNAL_KEY, else DATA/journal.key (created on first start).
    #[arg(long, env = "CASEWORK_JOURNAL_KEY_FILE")]
    pub journal_key_file: Option<PathBuf>,
    /// Folder of plugins: one sub-folder per plugin with `plugin.toml` and `<name>.wasm`.
    #[arg(long, env = "CASEWORK_PLUGINS", default_value = "plugins")]
    pub plugins: PathBuf,
    /// TOML file of plugin secrets (`[plugin] name = "value"`); a variable
    /// CASEWORK_SECRET__<PLUGIN>__<NAME> overrides one value.
    #[arg(long, env = "CASEWORK_SECRETS_FILE")]
    pub secrets: Option<PathBuf>,
    /// Do not watch the workflow and plugin folders for changes.
    #[arg(long, env = "CASEWORK_NO_RELOAD")]
    pub no_reload: bool,
    /// Testing only: answer every plugin call with a fake that appends its idempotency key to FILE.
    #[arg(long, hide = true)]
    pub test_ledger: Option<PathBuf>,
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    if !args.workflows.is_dir() {
        return Err(anyhow!(
            "casework: workflow folder {} does not exist; pass --workflows DIR",
            args.workflows.display()
        ));
    }
    let key = KeySource::from_env(args.journal_key_file.as_deref()).map_err(|e| anyhow!("{e}"))?;
    let store = Arc::new(SledStore::open_with(&args.data, key).map_err(|e| anyhow!("{e}"))?);
    let clock = Arc::new(SystemClock);
    let (plugins, wasm): (Arc<dyn PluginHost>, Option<Arc<WasmHost>>) = match &args.test_ledger {
        Some(path) => (Arc::new(Ledger::new(path.clone())), None),
        None => {
            let host = Arc::new(load_plugins(&args, clock.clone()).await?);
            (host.clone(), Some(host))
        }
    };
    let driver = Driver::new(store, plugins, clock, None);
    let reloader = Reloader::new(
        driver.clone(),
        args.workflows.clone(),
        wasm.map(|host| (args.plugins.clone(), host)),
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
    if !args.no_reload {
        tokio::spawn(reloader.clone().watch());
    }
    let resumed = driver.resume_all().map_err(|e| anyhow!(e))?;
    tracing::info!(resumed, "instances resumed");
    tokio::spawn(driver.clone().run_timers());
    tokio::spawn(crate::daemon::triggers::run_schedules(driver.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %args.listen, data = %args.data.display(), "casework is serving");
    println!(
        "casework: serving on http://{} (data in {})",
        args.listen,
        args.data.display()
    );
    axum::serve(listener, http::router(driver.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // In-flight steps are already journaled; waiting for idle lets their records flush.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), driver.wait_idle()).await;
    tracing::info!("casework stopped");
    Ok(())
}

/// Loads the plugin folder. A plugin that fails to load is logged and left out (its
/// workflows fail validation with the reason); it never stops the daemon.
async fn load_plugins(args: &ServeArgs, clock: Arc<SystemClock>) -> Result<WasmHost> {
    let secrets = match &args.secrets {
        Some(path) => Secrets::from_file(path).map_err(|e| anyhow!("casework: {e}"))?,
        None => Secrets::new(),
    };
    let host = WasmHost::new(secrets, clock, Some(args.data.join("plugin-cache")))
        .context("starting the WebAssembly plugin host")?;
    host.load_dir(&args.plugins).await;
    for problem in host.problems() {
        tracing::error!(target: "casework::plugins", "{problem}");
    }
    tracing::info!(plugins = ?host.plugin_names(), dir = %args.plugins.display(), "plugins loaded");
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
