//! A plugin directory on disk: one folder per plugin holding `plugin.toml` and
//! `<name>.wasm` (the component `plugins/build.sh` copies there). Reading
//! manifests needs no WebAssembly, so `casework validate` uses this alone to know
//! which `plugin.action` names exist.

use crate::validate::Catalog;
use casework_sdk::manifest::Manifest;
use std::path::{Path, PathBuf};

/// One plugin found on disk, manifest parsed and checked.
#[derive(Clone, Debug)]
pub struct PluginFiles {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    pub wasm_path: PathBuf,
}

/// Everything found in a plugin directory: the usable plugins and, for each folder
/// that could not be used, a message saying why and what to do.
#[derive(Clone, Debug, Default)]
pub struct PluginDirectory {
    pub plugins: Vec<PluginFiles>,
    pub problems: Vec<String>,
}

impl PluginDirectory {
    /// Scans `dir`. A missing directory is an empty one: a daemon without plugins runs.
    pub fn scan(dir: &Path) -> Self {
        let mut found = PluginDirectory::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return found;
        };
        let mut folders: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("plugin.toml").is_file())
            .collect();
        folders.sort();
        for folder in folders {
            let manifest_path = folder.join("plugin.toml");
            let text = match std::fs::read_to_string(&manifest_path) {
                Ok(text) => text,
                Err(e) => {
                    found
                        .problems
                        .push(format!("{}: cannot read: {e}", manifest_path.display()));
                    continue;
                }
            };
            let manifest = match Manifest::parse(&text) {
                Ok(m) => m,
                Err(e) => {
                    found.problems.push(format!(
                        "{}: {}",
                        manifest_path.display(),
                        e.problems.join("; ")
                    ));
                    continue;
                }
            };
            if found
                .plugins
                .iter()
                .any(|p| p.manifest.name == manifest.name)
            {
                found.problems.push(format!(
                    "{}: a plugin named `{}` is already loaded from another folder; plugin names must be unique",
                    manifest_path.display(),
                    manifest.name
                ));
                continue;
            }
            let wasm_path = folder.join(format!("{}.wasm", manifest.name));
            found.plugins.push(PluginFiles {
                manifest,
                manifest_path,
                wasm_path,
            });
        }
        found
    }

    /// Plugin and action names, for validating `call:` steps.
    pub fn catalog(&self) -> Catalog {
        let mut catalog = Catalog::default();
        for p in &self.plugins {
            catalog.plugins.insert(
                p.manifest.name.clone(),
                p.manifest.actions.iter().cloned().collect(),
            );
        }
        catalog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
name = "payments"
version = "0.1.0"
description = "Refunds."
actions = ["refund"]
[limits]
memory_mb = 16
timeout_ms = 1000
"#;

    #[test]
    fn scan_finds_manifests_and_reports_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("payments")).unwrap();
        std::fs::write(dir.path().join("payments/plugin.toml"), MANIFEST).unwrap();
        std::fs::create_dir(dir.path().join("broken")).unwrap();
        std::fs::write(dir.path().join("broken/plugin.toml"), "name = 3").unwrap();
        std::fs::create_dir(dir.path().join("not-a-plugin")).unwrap();

        let found = PluginDirectory::scan(dir.path());
        assert_eq!(found.plugins.len(), 1);
        assert_eq!(
            found.plugins[0].wasm_path,
            dir.path().join("payments/payments.wasm")
        );
        assert_eq!(found.problems.len(), 1);
        assert!(
            found.problems[0].contains("broken/plugin.toml"),
            "{:?}",
            found.problems
        );
        assert!(found.catalog().plugins["payments"].contains("refund"));
    }
}
