//! Hot reload: saving a workflow, calendar or plugin file makes it live without a
//! restart.
//!
//! A changed folder is re-read as a whole and validated before anything changes. A
//! valid workflow becomes the newest version for new instances (running instances
//! stay pinned to the version they started with); a file with errors is rejected —
//! its problems are logged and shown by `GET /v1/workflows` — and the previous
//! version of its workflow stays active; a deleted file stops new instances of its
//! workflow while running ones finish. Plugins follow the same rule: a plugin that no
//! longer loads keeps its previous version running.

use super::registry::{load_files_in_time, workflow_files};
use super::Driver;
use crate::calendar::history::{self, CalendarVersion};
use crate::calendar::Calendars;
use crate::diagnostic::Diagnostic;
use crate::plugin_host::wasm::WasmHost;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the folders must be quiet before a reload: editors save in several steps.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// What one reload did, for logs, metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// `name vN` of workflows that got a new version.
    pub installed: Vec<String>,
    /// Workflows whose file was deleted: no new instances.
    pub retired: Vec<String>,
    /// Files rejected, with their first problem.
    pub rejected: Vec<String>,
    /// `name version` of calendars that got a new version (in effect from this reload).
    pub calendars: Vec<String>,
    /// Installed, with something to fix (e.g. a changed source under the same version).
    pub warnings: Vec<String>,
}

/// The warning for a workflow whose source changed while its `version:` stayed.
fn same_version(wf: &crate::compile::CompiledWorkflow) -> Diagnostic {
    let span = crate::definition::read(&wf.file, &wf.source)
        .0
        .map(|d| d.version.span)
        .unwrap_or_default();
    Diagnostic::warning(
        &wf.file,
        span,
        format!(
            "workflow `{}` changed but its version is still {}",
            wf.name, wf.version
        ),
    )
    .with_hint(
        "raise `version:` with every change, so instances, reports and logs can tell the two apart (instances already running keep the source they started with)",
    )
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub reloads: AtomicU64,
    pub failures: AtomicU64,
}

/// Re-reads the workflow and plugin folders into a running driver.
#[derive(Clone)]
pub struct Reloader {
    driver: Driver,
    workflows: PathBuf,
    plugins: Option<(PathBuf, Arc<WasmHost>)>,
    pub stats: Arc<ReloadStats>,
}

impl Reloader {
    pub fn new(
        driver: Driver,
        workflows: PathBuf,
        plugins: Option<(PathBuf, Arc<WasmHost>)>,
    ) -> Self {
        Reloader {
            driver,
            workflows,
            plugins,
            stats: Arc::new(ReloadStats::default()),
        }
    }

    /// Loads the workflow folder: installs what is new and valid, keeps the previous
    /// version of anything rejected, retires workflows whose file is gone.
    pub fn reload_workflows(&self) -> ReloadReport {
        let inner = self.driver.inner();
        let mut report = ReloadReport::default();
        let files = match workflow_files(&self.workflows) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %self.workflows.display(), "cannot read the workflow folder: {e}; keeping every loaded workflow");
                report
                    .rejected
                    .push(format!("{}: {e}", self.workflows.display()));
                self.count(&report);
                return report;
            }
        };
        let catalog = inner.plugins.catalog();
        let (workflows, diags) = load_files_in_time(&files, catalog, &inner.rules, |c| {
            self.calendars_in_time(c, &mut report)
        });

        let mut problems: BTreeMap<String, Vec<Diagnostic>> = BTreeMap::new();
        for d in diags.into_iter().filter(Diagnostic::is_error) {
            problems.entry(d.file.clone()).or_default().push(d);
        }
        for (file, list) in &problems {
            for d in list {
                tracing::error!(target: "casework::load", "{d}");
            }
            report.rejected.push(format!(
                "{file}: {}",
                list.first().map(|d| d.message.as_str()).unwrap_or("")
            ));
        }

        let mut defined = BTreeSet::new();
        for wf in workflows {
            defined.insert(wf.name.clone());
            let current = inner.registry.latest(&wf.name);
            if current.as_ref().is_some_and(|c| c.hash == wf.hash) {
                continue;
            }
            if current.is_some_and(|c| c.version == wf.version) {
                let d = same_version(&wf);
                tracing::warn!(target: "casework::load", "{d}");
                inner.registry.warn(&wf.hash, d.to_string());
                report.warnings.push(d.to_string());
            }
            let label = format!("{} v{}", wf.name, wf.version);
            let wrong = inner
                .registry
                .migration_problems(inner.store.as_ref(), &wf, &inner.rules);
            if !wrong.is_empty() {
                for d in &wrong {
                    tracing::error!(target: "casework::load", "{d}");
                }
                report
                    .rejected
                    .push(format!("{}: {}", wf.file, wrong[0].message));
                problems.entry(wf.file.clone()).or_default().extend(wrong);
                continue;
            }
            match self.driver.install(wf) {
                Ok(_) => {
                    tracing::info!(workflow = %label, "workflow version installed; running instances keep theirs");
                    report.installed.push(label);
                }
                Err(e) => {
                    tracing::error!(workflow = %label, "cannot install: {e}");
                    report.rejected.push(format!("{label}: {e}"));
                }
            }
        }
        let on_disk: BTreeSet<String> = files.iter().map(|f| f.display().to_string()).collect();
        for wf in inner.registry.all_latest() {
            // A workflow whose file has errors keeps its previous version; only a file
            // that is gone (or no longer defines the name) retires it.
            let still_there = defined.contains(&wf.name)
                || (on_disk.contains(&wf.file) && problems.contains_key(&wf.file));
            if !still_there && inner.registry.retire(&wf.name) {
                tracing::warn!(workflow = %wf.name, file = %wf.file, "workflow file removed: no new instances; running ones finish");
                report.retired.push(wf.name.clone());
            }
        }
        *inner
            .registry
            .problems
            .write()
            .unwrap_or_else(|e| e.into_inner()) = problems;
        self.count(&report);
        report
    }

    /// Each loaded calendar recorded in the store as in effect from now (unless it is the
    /// newest version already), with its earlier versions put behind it, so an edit counts
    /// from this reload on and time counted before it stays as it was.
    fn calendars_in_time(&self, loaded: Calendars, report: &mut ReloadReport) -> Calendars {
        let inner = self.driver.inner();
        let now = inner.clock.now_ms();
        let before = inner.rules.calendars();
        let mut histories = BTreeMap::new();
        let mut unrecorded = BTreeMap::new();
        for cal in loaded.iter() {
            let version = CalendarVersion {
                name: cal.name.clone(),
                version: cal.version.clone(),
                from: now,
                source: cal.source.clone(),
            };
            let history = match inner.store.add_calendar_version(&version) {
                Ok(history) => history,
                Err(e) => {
                    // Not recorded, so not used: counting on it now would recount the past
                    // of running clocks on it after a restart.
                    let kept = before.get(&cal.name).ok().cloned();
                    tracing::error!(calendar = %cal.name, version = %cal.version, "cannot record the calendar's version: {e}; {} until it is recorded (save the file again, or restart)", if kept.is_some() { "the previous version stays in effect" } else { "it counts for all earlier time too" });
                    report.rejected.push(format!("{}: {e}", cal.file));
                    if let Some(kept) = kept {
                        unrecorded.insert(cal.name.clone(), kept);
                    }
                    continue;
                }
            };
            let since = history
                .last()
                .map(|v| v.from)
                .filter(|from| *from != i64::MIN);
            let known = before.get(&cal.name).ok().map(|c| c.version.clone());
            if known.as_deref() != Some(cal.version.as_str()) {
                let since = since.map_or("always".to_string(), crate::calendar::time::format_ms);
                if known.is_some() {
                    tracing::info!(calendar = %cal.name, version = %cal.version, %since, "calendar version in effect; time counted before it keeps the version it was counted on");
                } else {
                    tracing::info!(calendar = %cal.name, version = %cal.version, %since, earlier_versions = history.len() - 1, "calendar loaded");
                }
                report
                    .calendars
                    .push(format!("{} {}", cal.name, cal.version));
            }
            histories.insert(cal.name.clone(), history);
        }
        let (set, problems) = history::chain(loaded, &histories);
        for p in problems {
            tracing::warn!(target: "casework::load", "{p}");
        }
        let mut set = set.map(|cal| unrecorded.remove(&cal.name).unwrap_or(cal));
        // A calendar file with errors keeps its previous version, like a workflow file.
        for old in before.iter() {
            if set.failed_files().contains(&old.file) {
                tracing::warn!(calendar = %old.name, file = %old.file, "calendar file has errors: its previous version stays in effect");
                set.keep(old.clone());
            }
        }
        set
    }

    fn count(&self, report: &ReloadReport) {
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        if !report.rejected.is_empty() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reloads plugins (if this daemon hosts any), then workflows, whose `call:`
    /// steps are checked against the plugins now loaded.
    pub async fn reload_all(&self) -> ReloadReport {
        if let Some((dir, host)) = &self.plugins {
            host.load_dir(dir).await;
        }
        self.reload_workflows()
    }

    /// Watches both folders and reloads after each burst of changes. Runs until the
    /// process ends; a watcher that cannot start is logged and reload is off.
    pub async fn watch(self) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res {
                    if !changes_content(&event.kind) {
                        return;
                    }
                    for path in event.paths {
                        let _ = tx.send(path);
                    }
                }
            }) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("hot reload is off: cannot watch files: {e}");
                    return;
                }
            };
        let mut dirs = vec![self.workflows.clone()];
        if let Some((dir, _)) = &self.plugins {
            dirs.push(dir.clone());
        }
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
                tracing::warn!(dir = %dir.display(), "not watching for changes: {e}");
            }
        }
        let mut seen = self.fingerprint();
        while let Some(first) = rx.recv().await {
            let mut changed = vec![first];
            // Collect the rest of the burst.
            while let Ok(Some(path)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                changed.push(path);
            }
            // A burst that leaves every file as it was (a save of the same bytes, a
            // temporary file come and gone) reloads nothing.
            let now = self.fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            let plugins_changed = self.plugins.as_ref().is_some_and(|(dir, _)| {
                changed
                    .iter()
                    .any(|p| is_under(p, dir) && is_plugin_file(p))
            });
            let workflows_changed = changed
                .iter()
                .any(|p| is_under(p, &self.workflows) && is_workflow_file(p));
            let report = if plugins_changed {
                self.reload_all().await
            } else if workflows_changed {
                self.reload_workflows()
            } else {
                continue;
            };
            tracing::info!(
                installed = ?report.installed,
                calendars = ?report.calendars,
                retired = ?report.retired,
                rejected = report.rejected.len(),
                "reloaded"
            );
        }
        drop(watcher);
    }
}

impl Reloader {
    /// What a reload would read now: each workflow, calendar and plugin file with a hash of
    /// its bytes. Reading files raises only access events, which the watcher ignores.
    fn fingerprint(&self) -> BTreeMap<PathBuf, [u8; 32]> {
        let mut files = workflow_files(&self.workflows).unwrap_or_default();
        if let Some((dir, _)) = &self.plugins {
            // One folder per plugin, holding its plugin.toml and <name>.wasm.
            for plugin in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                for file in std::fs::read_dir(plugin.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if is_plugin_file(&file.path()) {
                        files.push(file.path());
                    }
                }
            }
        }
        files
            .into_iter()
            .filter_map(|f| {
                let bytes = std::fs::read(&f).ok()?;
                Some((f, Sha256::digest(&bytes).into()))
            })
            .collect()
    }
}

/// Whether a file-system event can have changed what a file holds. Reads (open, close
/// without writing) and metadata changes cannot: reacting to them made the daemon reload
/// itself in a loop, since each reload reads every file.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

fn is_under(path: &Path, dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let path = path
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .map(|p| p.join(path.file_name().unwrap_or_default()))
        .unwrap_or_else(|| path.to_path_buf());
    path.starts_with(&dir)
}

fn is_workflow_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yaml") || name.ends_with(".yml")) && !name.contains(".test.")
}

fn is_plugin_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "plugin.toml" || name.ends_with(".wasm")
}
