//! `casework serve`: the daemon.

use crate::clock::SystemClock;
use crate::daemon::registry::{load_files, workflow_files};
use crate::daemon::{http, Driver};
use crate::plugin_host::{Ledger, NoPlugins, PluginHost};
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
    let plugins: Arc<dyn PluginHost> = match &args.test_ledger {
        Some(path) => Arc::new(Ledger::new(path.clone())),
        None => Arc::new(NoPlugins),
    };
    let driver = Driver::new(store, plugins, Arc::new(SystemClock), None);
    let files = workflow_files(&args.workflows)
        .with_context(|| format!("reading {}", args.workflows.display()))?;
    let (workflows, diags) = load_files(&files, None, &driver.inner().rules);
    for d in diags.iter() {
        tracing::error!(target: "casework::load", "{d}");
    }
    {
        let mut problems = driver
            .inner()
            .registry
            .problems
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for d in diags.into_iter().filter(|d| d.is_error()) {
            problems.entry(d.file.clone()).or_default().push(d);
        }
    }
    for wf in workflows {
        tracing::info!(workflow = %wf.name, version = wf.version, file = %wf.file, "workflow loaded");
        driver.install(wf).map_err(|e| anyhow!(e))?;
    }
    let resumed = driver.resume_all().map_err(|e| anyhow!(e))?;
    tracing::info!(resumed, "instances resumed");
    tokio::spawn(driver.clone().run_timers());
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
