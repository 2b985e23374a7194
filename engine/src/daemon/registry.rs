//! Loaded workflows: the newest version of each name for new instances, and every
//! version by source hash so running instances keep the definition they started with.

use crate::calendar::Calendars;
use crate::compile::{self, rules::Rules, CompiledWorkflow};
use crate::diagnostic::Diagnostic;
use crate::store::{Store, StoredDefinition};
use crate::validate;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub struct Registry {
    latest: RwLock<BTreeMap<String, Arc<CompiledWorkflow>>>,
    by_hash: RwLock<HashMap<String, Arc<CompiledWorkflow>>>,
    /// Problems of files that failed to load, by file.
    pub problems: RwLock<BTreeMap<String, Vec<Diagnostic>>>,
    /// When each version (by hash) was installed in this process.
    loaded_at: RwLock<HashMap<String, crate::runtime::Millis>>,
    /// Warnings about a version (by hash), e.g. its source changed but `version:` did not.
    warnings: RwLock<HashMap<String, String>>,
}

/// Workflow files in a directory (`*.yaml`/`*.yml`, not test files), sorted for determinism,
/// followed by the calendar files in its `calendars/` folder.
pub fn workflow_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if p.is_file() && is_yaml && !name.contains(".test.") {
            files.push(p);
        }
    }
    files.sort();
    files.extend(crate::calendar::calendar_files(&dir.join("calendars"))?);
    Ok(files)
}

/// Read, validate and compile a set of files together (so subworkflow references resolve).
///
/// Files in a `calendars/` folder are business calendars; they are installed into `rules`
/// as they are, counting on the loaded version for all time (see [`load_files_in_time`]).
pub fn load_files(
    files: &[PathBuf],
    catalog: Option<validate::Catalog>,
    rules: &Arc<Rules>,
) -> (Vec<CompiledWorkflow>, Vec<Diagnostic>) {
    load_files_in_time(files, catalog, rules, |c| c)
}

/// [`load_files`], with the calendars passed through `in_time` before rules see them: the
/// daemon puts each calendar's earlier versions behind it there
/// ([`crate::calendar::history`]).
pub fn load_files_in_time(
    files: &[PathBuf],
    catalog: Option<validate::Catalog>,
    rules: &Arc<Rules>,
    in_time: impl FnOnce(Calendars) -> Calendars,
) -> (Vec<CompiledWorkflow>, Vec<Diagnostic>) {
    let (calendar_files, files): (Vec<PathBuf>, Vec<PathBuf>) = files
        .iter()
        .cloned()
        .partition(|f| crate::calendar::is_calendar_file(f));
    let (calendars, mut diags) = crate::calendar::load_files(&calendar_files);
    rules.install_calendars(in_time(calendars));
    let mut sources = Vec::new();
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => sources.push((name, text)),
            Err(e) => diags.push(Diagnostic::error(
                &name,
                Default::default(),
                format!("cannot read file: {e}"),
            )),
        }
    }
    // Names first, so `subworkflow:` can refer to any file in the set.
    let names: BTreeSet<String> = sources
        .iter()
        .filter_map(|(f, t)| crate::definition::read(f, t).0.map(|d| d.name.value))
        .collect();
    let ctx = validate::Context {
        catalog,
        workflows: Some(names),
    };
    let mut out: Vec<CompiledWorkflow> = Vec::new();
    for (file, text) in &sources {
        let (wf, d) = compile::load(file, text, &ctx, rules);
        diags.extend(d);
        if let Some(wf) = wf {
            if let Some(other) = out.iter().find(|o| o.name == wf.name) {
                diags.push(
                    Diagnostic::error(
                        file,
                        Default::default(),
                        format!("workflow `{}` is also defined in {}", wf.name, other.file),
                    )
                    .with_hint("each workflow name must be used by one file; rename one of them"),
                );
                continue;
            }
            out.push(wf);
        }
    }
    (out, diags)
}

impl Registry {
    /// Make `wf` the newest version of its name, pinning its source in the store.
    pub fn install(
        &self,
        store: &dyn Store,
        wf: CompiledWorkflow,
    ) -> crate::store::Result<Arc<CompiledWorkflow>> {
        store.put_definition(
            &wf.hash,
            &StoredDefinition {
                name: wf.name.clone(),
                version: wf.version,
                file: wf.file.clone(),
                source: wf.source.clone(),
            },
        )?;
        let wf = Arc::new(wf);
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(wf.hash.clone(), wf.clone());
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(wf.name.clone(), wf.clone());
        Ok(wf)
    }

    /// Notes when the version with `hash` was installed.
    pub fn mark_loaded(&self, hash: &str, at: crate::runtime::Millis) {
        self.loaded_at
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_string(), at);
    }

    /// How long an event of `event_type` is kept in the inbox, when a loaded workflow that
    /// waits for it says (`inbox_keep:`): the longest of theirs, so none loses an event it
    /// could still take.
    pub fn inbox_keep(&self, event_type: &str) -> Option<u64> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|wf| wf.waits_for(event_type))
            .filter_map(|wf| wf.inbox_keep_ms)
            .max()
    }

    /// Remembers a warning about the version with `hash`, for `GET /v1/workflows`.
    pub fn warn(&self, hash: &str, warning: String) {
        self.warnings
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_string(), warning);
    }

    pub fn warning(&self, hash: &str) -> Option<String> {
        self.warnings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    /// When the version with `hash` was installed in this process, if it was.
    pub fn loaded_at(&self, hash: &str) -> Option<crate::runtime::Millis> {
        self.loaded_at
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .copied()
    }

    /// Stops new instances of `name` (its file was deleted). Running instances keep
    /// their pinned version. Returns whether it was loaded.
    pub fn retire(&self, name: &str) -> bool {
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some()
    }

    pub fn latest(&self, name: &str) -> Option<Arc<CompiledWorkflow>> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The `search:` attributes any loaded version of workflow `name` declares, sorted:
    /// instances of older versions are found by the attributes their version had.
    pub fn search_attributes(&self, name: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .chain(self.latest(name).as_ref())
            .filter(|w| w.name == name)
            .flat_map(|w| w.search.iter().map(|a| a.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn all_latest(&self) -> Vec<Arc<CompiledWorkflow>> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// What is wrong with `wf`'s `migrate:` rules against the versions of its workflow the
    /// store has run: a `from` version it never had (when it has had any: on a new store
    /// nothing can move, and a shipped file must still load), or an `at` step that is not
    /// a wait of that version. Each at the rule's line.
    pub fn migration_problems(
        &self,
        store: &dyn Store,
        wf: &CompiledWorkflow,
        rules: &Arc<Rules>,
    ) -> Vec<Diagnostic> {
        if wf.migrations.is_empty() {
            return Vec::new();
        }
        let stored: Vec<(String, StoredDefinition)> = match store.definitions() {
            Ok(all) => all.into_iter().filter(|(_, d)| d.name == wf.name).collect(),
            Err(e) => {
                return vec![Diagnostic::error(
                    &wf.file,
                    wf.migrations[0].from_span,
                    format!("cannot read the stored versions to check `migrate:` against: {e}"),
                )]
            }
        };
        if stored.is_empty() {
            return Vec::new();
        }
        let mut versions: Vec<u32> = stored.iter().map(|(_, d)| d.version).collect();
        versions.sort_unstable();
        versions.dedup();
        let mut out = Vec::new();
        for m in &wf.migrations {
            let olds: Vec<&String> = stored
                .iter()
                .filter(|(_, d)| d.version == m.from)
                .map(|(h, _)| h)
                .collect();
            if olds.is_empty() {
                let had = versions
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(
                    Diagnostic::error(
                        &wf.file,
                        m.from_span,
                        format!("version {} of `{}` never ran here (versions run: {had})", m.from, wf.name),
                    )
                    .with_hint("a migration moves instances of a version this daemon's store has run; correct `from:` or remove the rule"),
                );
                continue;
            }
            for hash in olds {
                let Ok(old) = self.pinned(store, hash, rules) else {
                    continue;
                };
                let waits: Vec<&str> = old
                    .steps
                    .iter()
                    .filter(|s| matches!(s.kind, compile::Kind::Wait { .. }))
                    .map(|s| s.id.as_str())
                    .collect();
                for (step, span) in &m.at {
                    if waits.contains(&step.as_str()) {
                        continue;
                    }
                    let what = if old.index.contains_key(step) {
                        "is not a wait"
                    } else {
                        "is not a step"
                    };
                    out.push(
                        Diagnostic::error(
                            &wf.file,
                            *span,
                            format!("`{step}` {what} of version {} of `{}`", m.from, wf.name),
                        )
                        .with_hint(if waits.is_empty() {
                            format!("version {} has no wait, so none of its instances can move", m.from)
                        } else {
                            format!("an instance moves only while it waits; the waits of version {} are: {}", m.from, waits.join(", "))
                        }),
                    );
                }
            }
        }
        out.dedup_by(|a, b| a.message == b.message && a.span == b.span);
        out
    }

    /// An instance rebuilt from its journal (read from the store), each record with the
    /// version it was written under, and the version it runs now: the one its index entry
    /// names, unless a crash left the entry behind a move (`Record::Migrated`).
    pub fn replay(
        &self,
        store: &dyn Store,
        meta: &crate::store::InstanceMeta,
        rules: &Arc<Rules>,
    ) -> Result<(crate::runtime::Instance, Arc<CompiledWorkflow>), String> {
        let journal = store.journal(&meta.id).map_err(|e| e.to_string())?;
        self.replay_journal(store, meta, &journal, rules)
    }

    /// [`Registry::replay`] of a journal read already.
    pub fn replay_journal(
        &self,
        store: &dyn Store,
        meta: &crate::store::InstanceMeta,
        journal: &[crate::runtime::Record],
        rules: &Arc<Rules>,
    ) -> Result<(crate::runtime::Instance, Arc<CompiledWorkflow>), String> {
        crate::runtime::Instance::replay_pinned(&meta.id, &meta.hash, journal, |hash| {
            self.pinned(store, hash, rules)
        })
    }

    /// The exact version with this hash, compiled from the store if it is no longer loaded.
    pub fn pinned(
        &self,
        store: &dyn Store,
        hash: &str,
        rules: &Arc<Rules>,
    ) -> Result<Arc<CompiledWorkflow>, String> {
        if let Some(wf) = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            return Ok(wf.clone());
        }
        let def = store
            .definition(hash)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the workflow version {hash} this instance started with is missing from the store"))?;
        let parsed = crate::definition::read(&def.file, &def.source)
            .0
            .ok_or("stored workflow no longer parses")?;
        let (wf, diags) = compile::compile(&parsed, &def.source, rules);
        if diags.iter().any(Diagnostic::is_error) {
            return Err(format!("stored workflow {} no longer compiles", def.name));
        }
        let wf = Arc::new(wf);
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_string(), wf.clone());
        Ok(wf)
    }
}
