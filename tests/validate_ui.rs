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
fn published_schemas_match_the_readers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (of, file) in [
        ("workflow", "workflow.schema.json"),
        ("test", "test.schema.json"),
        ("calendar", "calendar.schema.json"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_casework"))
            .args(["schema", of])
            .output()
            .unwrap();
        let published = std::fs::read_to_string(root.join(file)).unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            published,
            "run `casework schema {of} > {file}`"
        );
    }
}

/// Where `v` breaks `schema`, for the parts of JSON Schema the published schemas use
/// (types, properties, required, items, enum, const, oneOf as "one of these fits",
/// additionalProperties); patterns are not checked.
fn schema_errors(
    schema: &serde_json::Value,
    v: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if let Some(options) = schema["oneOf"].as_array() {
        let fits = options.iter().any(|o| {
            let mut e = Vec::new();
            schema_errors(o, v, at, &mut e);
            e.is_empty()
        });
        if !fits {
            out.push(format!("{at}: fits none of the choices: {v}"));
        }
        return;
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            out.push(format!("{at}: expected {c}, got {v}"));
        }
    }
    if let Some(list) = schema["enum"].as_array() {
        if !list.contains(v) {
            out.push(format!("{at}: {v} is not one of {list:?}"));
        }
    }
    let type_ok = |t: &str| match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    };
    let ok = match &schema["type"] {
        Value::String(t) => type_ok(t),
        Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""))),
        _ => true,
    };
    if !ok {
        out.push(format!("{at}: expected {}, got {v}", schema["type"]));
        return;
    }
    if let Value::Object(m) = v {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !m.contains_key(r.as_str().unwrap_or("")) {
                out.push(format!("{at}: missing {r}"));
            }
        }
        for (k, item) in m {
            let path = format!("{at}.{k}");
            match schema["properties"].get(k) {
                Some(s) => schema_errors(s, item, &path, out),
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => out.push(format!("{path}: not allowed here")),
                    Value::Object(_) => {
                        schema_errors(&schema["additionalProperties"], item, &path, out)
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            schema_errors(s, item, &format!("{at}[{i}]"), out);
        }
    }
}

/// Every shipped workflow, test and calendar file is valid against its schema: an editor
/// using the published schemas (as the README sets them up) shows no false errors.
#[test]
fn shipped_files_fit_their_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let schema = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(f)).unwrap()).unwrap()
    };
    let (workflow, test, calendar) = (
        schema("workflow.schema.json"),
        schema("test.schema.json"),
        schema("calendar.schema.json"),
    );
    let mut checked = 0;
    for dir in ["workflows", "tests/sla"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.extend(
            std::fs::read_dir(root.join(dir).join("calendars"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
        for f in files {
            let name = f.display().to_string();
            if !name.ends_with(".yaml") {
                continue;
            }
            let s = if name.contains("/calendars/") {
                &calendar
            } else if name.ends_with(".test.yaml") {
                &test
            } else {
                &workflow
            };
            let text = std::fs::read_to_string(&f).unwrap();
            let doc = casework::definition::yaml::parse(&text).unwrap().to_json();
            let mut errors = Vec::new();
            schema_errors(s, &doc, "", &mut errors);
            assert!(errors.is_empty(), "{name}:\n{}", errors.join("\n"));
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked} files checked");
    // And the check can fail: a misspelled key in a test file is flagged.
    let doc =
        casework::definition::yaml::parse("workflow: w\ntests:\n  - name: t\n    expcet: {}\n")
            .unwrap()
            .to_json();
    let mut errors = Vec::new();
    schema_errors(&test, &doc, "", &mut errors);
    assert!(
        errors.iter().any(|e| e.contains("expcet: not allowed")),
        "{errors:?}"
    );
}
