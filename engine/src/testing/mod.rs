//! Workflow tests without code: `workflows/<name>.test.yaml` files run by `casework test`.
//!
//! A test file names the workflow under test and lists tests. Each test gives an input, a
//! virtual start time, canned plugin answers (`mocks:`), events at virtual times after the
//! start, and what must happen (`expect:`). Tests run on a temporary store with a virtual
//! clock, so days of waiting take milliseconds. The format is in `docs/workflows.md`
//! ("Testing workflows without code").
//!
//! - [`reader`]: YAML → [`model::TestFile`], every problem as `file:line:col` with a hint;
//! - [`host`]: the plugin host that answers from the mocks;
//! - [`runner`]: one test on a fresh engine, events delivered at their virtual times;
//! - [`expect`]: expected vs observed, the path diff;
//! - [`report`]: what `casework test` prints.

pub mod expect;
pub mod host;
pub mod model;
pub mod reader;
pub mod record;
pub mod report;
pub mod runner;
pub mod schema;

pub use reader::read;

use crate::compile::{CompiledWorkflow, Kind};
use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use model::TestFile;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Whether `path` is named like a test file (`*.test.yaml` or `*.test.yml`).
pub fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}

/// The test files in a folder (not its subfolders), sorted.
pub fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_file() && is_test_file(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Check a test file against the loaded workflows: the workflow it names must exist (an
/// error); steps, calls and event types it mentions that the workflow does not have are
/// warnings with "did you mean" (the tests still run, and fail if the name is wrong).
pub fn check_against(file: &TestFile, workflows: &[&CompiledWorkflow]) -> Vec<Diagnostic> {
    let f = file.file.as_str();
    let Some(wf) = workflows.iter().find(|w| w.name == file.workflow.value) else {
        let names: Vec<&str> = workflows.iter().map(|w| w.name.as_str()).collect();
        let hint = match did_you_mean(&file.workflow.value, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if names.is_empty() => {
                "no workflow loaded from this folder; a test file sits next to its workflow"
                    .to_string()
            }
            None => format!("workflows in this folder: {}", names.join(", ")),
        };
        return vec![Diagnostic::error(
            f,
            file.workflow.span,
            format!("no workflow named `{}` is loaded", file.workflow.value),
        )
        .with_hint(hint)];
    };
    let targets: BTreeSet<String> = workflows
        .iter()
        .flat_map(|w| w.steps.iter())
        .filter_map(|s| match &s.kind {
            Kind::Call { plugin, action, .. } => Some(format!("{plugin}.{action}")),
            _ => None,
        })
        .collect();
    let awaited: BTreeSet<String> = workflows
        .iter()
        .flat_map(|w| w.steps.iter())
        .filter_map(|s| match &s.kind {
            Kind::Wait { events, .. } => Some(events.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let triggered: BTreeSet<String> = workflows
        .iter()
        .flat_map(|w| w.triggers.iter())
        .filter_map(|t| match &t.kind {
            crate::compile::TriggerKind::Event { event_type, .. } => Some(event_type.clone()),
            crate::compile::TriggerKind::Schedule { .. } => None,
        })
        .collect();
    let steps: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut warn = |span: Span, name: &str, msg: String, known: &[&str], fallback: String| {
        if !seen.insert((span, msg.clone())) {
            return;
        }
        let hint = match did_you_mean(name, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => fallback,
        };
        out.push(Diagnostic::warning(f, span, msg).with_hint(hint));
    };
    let target_list: Vec<&str> = targets.iter().map(String::as_str).collect();
    let awaited_list: Vec<&str> = awaited.iter().map(String::as_str).collect();
    let heard: BTreeSet<&str> = awaited_list
        .iter()
        .copied()
        .chain(triggered.iter().map(String::as_str))
        .collect();
    let heard_list: Vec<&str> = heard.into_iter().collect();
    let step_hint = format!("steps of `{}`: {}", wf.name, steps.join(", "));
    for t in &file.tests {
        let e = &t.expect;
        for s in e.path.iter().flatten() {
            if !wf.index.contains_key(&s.value) {
                warn(
                    s.span,
                    &s.value,
                    format!("`{}` is not a step of workflow `{}`", s.value, wf.name),
                    &steps,
                    step_hint.clone(),
                );
            }
        }
        for c in e.calls.iter().flatten() {
            if let Some(s) = &c.step {
                if !wf.index.contains_key(&s.value) {
                    warn(
                        s.span,
                        &s.value,
                        format!("`{}` is not a step of workflow `{}`", s.value, wf.name),
                        &steps,
                        step_hint.clone(),
                    );
                }
            }
            if !targets.contains(&c.target) {
                warn(
                    c.span,
                    &c.target,
                    format!("`{}` is not called by any loaded workflow", c.target),
                    &target_list,
                    format!("calls made: {}", target_list.join(", ")),
                );
            }
        }
        for m in &t.mocks {
            if !targets.contains(&m.target) {
                warn(
                    m.span,
                    &m.target,
                    format!("`{}` is not called by any loaded workflow", m.target),
                    &target_list,
                    format!("calls made: {}", target_list.join(", ")),
                );
            }
        }
        for ev in &t.events {
            // With `started_by: triggers` an event may be there to start instances.
            let starts = t.started_by_triggers && triggered.contains(&ev.event_type);
            if !awaited.contains(&ev.event_type) && !starts {
                let (msg, known, fallback) = if t.started_by_triggers {
                    (
                        format!("`{}` is not awaited by any `wait:` step, and no trigger starts a workflow for it", ev.event_type),
                        &heard_list,
                        format!("events waited for or triggering: {}", heard_list.join(", ")),
                    )
                } else {
                    (
                        format!("`{}` is not awaited by any `wait:` step", ev.event_type),
                        &awaited_list,
                        format!("events waited for: {}", awaited_list.join(", ")),
                    )
                };
                warn(ev.span, &ev.event_type, msg, known, fallback);
            }
        }
    }
    out
}
