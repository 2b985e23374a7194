//! `casework graph`: a Mermaid flowchart of a workflow, for READMEs and reviews.

use crate::definition::{StepDef, StepKind, WorkflowDef};
use std::fmt::Write;

/// Render the workflow as a Mermaid `flowchart TD`.
pub fn mermaid(def: &WorkflowDef) -> String {
    let mut out = String::from("flowchart TD\n");
    block(&mut out, &def.steps, "  ");
    if !def.compensations.is_empty() {
        out.push_str("  subgraph compensations\n");
        block(&mut out, &def.compensations, "    ");
        out.push_str("  end\n");
        for s in def.all_steps() {
            if let Some(c) = &s.compensate {
                let _ = writeln!(out, "  {} -. undo .-> {}", s.id.value, c.value);
            }
        }
    }
    if let (Some(h), Some(first)) = (&def.on_error, def.steps.first()) {
        let _ = writeln!(out, "  {} -. any error .-> {}", first.id.value, h.value);
    }
    out
}

fn label(s: &StepDef) -> String {
    let what = match &s.kind {
        StepKind::Call { plugin, action, .. } => format!("call {}.{}", plugin.value, action.value),
        StepKind::Wait { events, .. } => format!(
            "wait {}",
            events
                .iter()
                .map(|e| e.value.as_str())
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        StepKind::Subworkflow { workflow, .. } => format!("subworkflow {}", workflow.value),
        StepKind::Decide(t) => {
            let names = |v: Vec<&str>| v.join(", ");
            format!(
                "decide {} by {}<br/>{} rows, {}",
                names(t.outputs.iter().map(|o| o.value.as_str()).collect()),
                names(t.inputs.iter().map(|c| c.name.value.as_str()).collect()),
                t.rows.len(),
                match t.hit {
                    crate::definition::HitPolicy::First => "first match",
                    crate::definition::HitPolicy::Unique => "one match",
                    crate::definition::HitPolicy::Collect => "every match",
                }
            )
        }
        k => k.keyword().to_string(),
    };
    format!("{}<br/><small>{}</small>", s.id.value, what)
}

fn block(out: &mut String, steps: &[StepDef], indent: &str) {
    for s in steps {
        let shape = match s.kind {
            StepKind::Switch { .. } => format!("{{\"{}\"}}", label(s)),
            StepKind::Complete { .. } | StepKind::Fail { .. } => format!("([\"{}\"])", label(s)),
            StepKind::Wait { .. } | StepKind::Sleep(_) => format!("[/\"{}\"/]", label(s)),
            _ => format!("[\"{}\"]", label(s)),
        };
        let _ = writeln!(out, "{indent}{}{shape}", s.id.value);
        match &s.kind {
            StepKind::Switch { cases, default } => {
                for c in cases {
                    let _ = writeln!(
                        out,
                        "{indent}{} -->|\"{}\"| {}",
                        s.id.value,
                        c.when.text.trim().replace('"', "'"),
                        c.goto.value
                    );
                }
                if let Some(d) = default {
                    let _ = writeln!(out, "{indent}{} -->|default| {}", s.id.value, d.value);
                }
            }
            StepKind::Wait {
                on_timeout: Some(t),
                ..
            } => {
                let _ = writeln!(out, "{indent}{} -->|timeout| {}", s.id.value, t.value);
            }
            StepKind::Parallel { branches, .. } => {
                for b in branches {
                    let _ = writeln!(
                        out,
                        "{indent}subgraph {}_{}[\"branch {}\"]",
                        s.id.value, b.id.value, b.id.value
                    );
                    block(out, &b.steps, &format!("{indent}  "));
                    let _ = writeln!(out, "{indent}end");
                    if let Some(first) = b.steps.first() {
                        let _ = writeln!(out, "{indent}{} --> {}", s.id.value, first.id.value);
                    }
                }
            }
            StepKind::Foreach { steps: body, .. } => {
                let _ = writeln!(
                    out,
                    "{indent}subgraph {}_each[\"for each item\"]",
                    s.id.value
                );
                block(out, body, &format!("{indent}  "));
                let _ = writeln!(out, "{indent}end");
                if let Some(first) = body.first() {
                    let _ = writeln!(out, "{indent}{} --> {}", s.id.value, first.id.value);
                }
            }
            _ => {}
        }
        for n in &s.next {
            let _ = writeln!(out, "{indent}{} --> {}", s.id.value, n.value);
        }
        if let Some(e) = &s.on_error {
            let _ = writeln!(out, "{indent}{} -.->|error| {}", s.id.value, e.value);
        }
    }
}
