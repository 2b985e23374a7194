//! The test plugin `tests/hostile` installed in a temporary plugin folder. Needs
//! `bash plugins/build.sh` first.

#![allow(dead_code)] // each test binary uses a different part of it

use std::path::{Path, PathBuf};

pub fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hostile")
}

/// Installs the hostile plugin into `plugins` under the name `name`, granted exactly
/// `origins`, with its manifest passed through `edit`.
pub fn install_as(plugins: &Path, name: &str, origins: &[String], edit: impl Fn(String) -> String) {
    let wasm = hostile_dir().join("hostile.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run `bash plugins/build.sh` first",
        wasm.display()
    );
    let plugin = plugins.join(name);
    std::fs::create_dir(&plugin).unwrap();
    std::fs::copy(&wasm, plugin.join(format!("{name}.wasm"))).unwrap();
    let grants = origins
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let manifest = std::fs::read_to_string(hostile_dir().join("plugin.toml"))
        .unwrap()
        .replace("name = \"hostile\"", &format!("name = \"{name}\""))
        .replace("http = []", &format!("http = [{grants}]"));
    std::fs::write(plugin.join("plugin.toml"), edit(manifest)).unwrap();
}

/// A plugin folder holding the hostile plugin, granted exactly `origins`.
pub fn install(origins: &[String], edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    install_as(dir.path(), "hostile", origins, edit);
    dir
}
