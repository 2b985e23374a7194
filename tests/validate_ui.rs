//! Broken workflow files paired with the exact messages users see (`tests/ui/invalid`).
//!
//! Run with `CASEWORK_BLESS=1` to rewrite the `.err` files after an intended wording change.

use std::path::Path;
use std::process::Command;

#[test]
fn invalid_workflows_report_expected_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "corpus is missing files");
    let mut failures = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_casework"))
            .current_dir(&dir)
            .args(["validate", &name])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name} should be rejected");
        let actual = String::from_utf8(out.stdout).unwrap();
        let expected_path = f.with_extension("err");
        if std::env::var("CASEWORK_BLESS").is_ok() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "--- {name}\nexpected:\n{expected}\nactual:\n{actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Broken calendar files (`tests/ui/invalid/calendars`), checked the same way. They sit in a
/// `calendars/` folder because that is how `casework validate` tells calendars from workflows.
#[test]
fn invalid_calendars_report_expected_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/invalid");
    let mut files: Vec<_> = std::fs::read_dir(dir.join("calendars"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "calendar corpus is missing files");
    let mut failures = Vec::new();
    for f in files {
        let name = format!("calendars/{}", f.file_name().unwrap().to_str().unwrap());
        let out = Command::new(env!("CARGO_BIN_EXE_casework"))
            .current_dir(&dir)
            .args(["validate", &name])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name} should be rejected");
        let actual = String::from_utf8(out.stdout).unwrap();
        let expected_path = f.with_extension("err");
        if std::env::var("CASEWORK_BLESS").is_ok() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "--- {name}\nexpected:\n{expected}\nactual:\n{actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_workflows_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_casework"))
        .current_dir(&root)
        .arg("validate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn published_schema_matches_the_reader() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_casework"))
        .arg("schema")
        .output()
        .unwrap();
    let published = std::fs::read_to_string(root.join("workflow.schema.json")).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        published,
        "run `casework schema > workflow.schema.json`"
    );
}
