//! Semantic checks on a [`WorkflowDef`]: references, reachability, loops, inputs. No I/O.

pub mod input;

use crate::definition::{FieldType, StepDef, StepKind, WorkflowDef};
use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Plugins and their actions, when the plugin directory is known.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub plugins: BTreeMap<String, BTreeSet<String>>,
}

/// What validation needs to know beyond the file itself.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Known plugins; `None` skips plugin checks (no plugin directory given).
    pub catalog: Option<Catalog>,
    /// Names of all workflows being loaded together, for `subworkflow:` references.
    pub workflows: Option<BTreeSet<String>>,
}

/// Check everything that can be checked without running. Returns every problem found.
pub fn check(def: &WorkflowDef, ctx: &Context) -> Vec<Diagnostic> {
    let mut v = Validator {
        def,
        diags: Vec::new(),
    };
    v.unique_ids();
    v.scope(&def.steps, true);
    for c in &def.compensations {
        if !c.next.is_empty() {
            v.err(
                c.next[0].span,
                format!("compensation step `{}` cannot have `next`", c.id.value),
            )
            .hint = Some(
                "a compensation runs alone; chain the work inside one step or a subworkflow".into(),
            );
        }
    }
    for step in def.all_steps() {
        v.step_fields(step, ctx);
    }
    v.concurrency_key();
    v.search_attributes();
    v.migrations();
    v.diags
}

/// The names a script reads after `root.` (`input.ticket` gives `ticket`), outside
/// string literals. A scan rather than a walk of Rhai's AST, which Rhai exposes only with
/// its unstable `internals` feature.
fn fields_read<'t>(text: &'t str, root: &str) -> Vec<&'t str> {
    // Bytes, not chars: every byte compared is ASCII, so the slices taken fall on char
    // boundaries even when comments or strings hold other text.
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let (bytes, root) = (text.as_bytes(), root.as_bytes());
    let mut found = Vec::new();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'`' || c == b'\'' => quote = Some(c),
            None if bytes[i..].starts_with(b"//") => {
                i += bytes[i..].iter().take_while(|b| **b != b'\n').count();
                continue;
            }
            None if bytes[i..].starts_with(root)
                && bytes.get(i + root.len()) == Some(&b'.')
                && (i == 0 || !ident(bytes[i - 1])) =>
            {
                let start = i + root.len() + 1;
                let len = bytes[start..].iter().take_while(|b| ident(**b)).count();
                if len > 0 {
                    found.push(&text[start..start + len]);
                }
                i = start + len;
                continue;
            }
            None => {}
        }
        i += 1;
    }
    found
}

struct Validator<'a> {
    def: &'a WorkflowDef,
    diags: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn err(&mut self, span: Span, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::error(&self.def.file, span, msg));
        self.diags.last_mut().expect("just pushed")
    }

    /// A workflow's `key:` is worked out from the start's input alone, before the
    /// instance exists: it may read only inputs the workflow declares.
    fn concurrency_key(&mut self) {
        let Some(c) = &self.def.concurrency else {
            return;
        };
        let span = c.key.span;
        if !fields_read(&c.key.text, "vars").is_empty() {
            self.err(span, "`key:` reads `vars`, which is empty when the key is worked out")
                .hint = Some("the key is computed from the start's input before any step runs: use `input.<field>`".into());
        }
        if self.def.input.is_empty() {
            return;
        }
        let known: Vec<&str> = self
            .def
            .input
            .iter()
            .map(|f| f.name.value.as_str())
            .collect();
        for name in fields_read(&c.key.text, "input") {
            if known.contains(&name) {
                continue;
            }
            let hint = match crate::diagnostic::did_you_mean(name, known.iter().copied()) {
                Some(s) => format!("did you mean `input.{s}`?"),
                None => format!("the inputs are: {}", known.join(", ")),
            };
            self.err(
                span,
                format!("`key:` reads `input.{name}`, which is not an input of this workflow"),
            )
            .hint = Some(hint);
        }
    }

    /// A `search:` attribute reads declared inputs (or `vars`) and names one value, so
    /// it can be an index entry: an input that is an object or a list cannot be.
    fn search_attributes(&mut self) {
        let def = self.def;
        for attr in &def.search {
            let span = attr.value.span;
            let text = attr.value.text.trim();
            if let Some(field) = text
                .strip_prefix("input.")
                .and_then(|f| def.input.iter().find(|i| i.name.value == f))
            {
                if matches!(field.ty, FieldType::Object | FieldType::List) {
                    self.err(
                        span,
                        format!(
                            "search attribute `{}` is `input.{}`, which is {}: an attribute must be one value",
                            attr.name.value,
                            field.name.value,
                            if field.ty == FieldType::List { "a list" } else { "an object" }
                        ),
                    )
                    .hint = Some(format!(
                        "name one field inside it, e.g. `input.{}.id`, or a text, number or boolean input",
                        field.name.value
                    ));
                }
            }
            if def.input.is_empty() {
                continue;
            }
            let known: Vec<&str> = def.input.iter().map(|f| f.name.value.as_str()).collect();
            for name in fields_read(&attr.value.text, "input") {
                if known.contains(&name) {
                    continue;
                }
                let hint = match did_you_mean(name, known.iter().copied()) {
                    Some(s) => format!("did you mean `input.{s}`?"),
                    None => format!("the inputs are: {}", known.join(", ")),
                };
                self.err(
                    span,
                    format!(
                        "search attribute `{}` reads `input.{name}`, which is not an input of this workflow",
                        attr.name.value
                    ),
                )
                .hint = Some(hint);
            }
        }
    }

    /// A `migrate:` rule's `to` is a step on this version's main path: an instance moves
    /// with one thread of execution, which goes on from there. (Its `from` and `at` are
    /// checked against the stored versions when a daemon loads the file.)
    fn migrations(&mut self) {
        let def = self.def;
        let top: Vec<&str> = def.steps.iter().map(|s| s.id.value.as_str()).collect();
        for m in &def.migrate {
            if top.contains(&m.to.value.as_str()) {
                continue;
            }
            let nested = def.all_steps().iter().any(|s| s.id.value == m.to.value);
            let hint = if nested {
                "a migrated instance goes on from a step of the top-level `steps:`, not one inside a branch, a foreach or `compensations:`".to_string()
            } else {
                match did_you_mean(&m.to.value, top.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the top-level steps are: {}", top.join(", ")),
                }
            };
            self.err(
                m.to.span,
                format!(
                    "`to: {}` is not a top-level step of this workflow",
                    m.to.value
                ),
            )
            .hint = Some(hint);
        }
    }

    fn unique_ids(&mut self) {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for step in self.def.all_steps() {
            if let Some(first) = seen.get(step.id.value.as_str()) {
                let hint = format!(
                    "the first `{}` is at line {}; step ids must be unique in the file",
                    step.id.value, first.line
                );
                self.err(
                    step.id.span,
                    format!("duplicate step id `{}`", step.id.value),
                )
                .hint = Some(hint);
            } else {
                seen.insert(&step.id.value, step.id.span);
            }
        }
    }

    /// Check references, reachability and loops within one list of steps.
    fn scope(&mut self, steps: &[StepDef], top: bool) {
        let ids: Vec<&str> = steps.iter().map(|s| s.id.value.as_str()).collect();
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        let mut resolve = |v: &mut Self,
                           from: usize,
                           target: &crate::definition::Spanned<String>,
                           field: &str| {
            match index.get(target.value.as_str()) {
                Some(&to) => edges[from].push(to),
                None => {
                    let elsewhere = v.def.all_steps().iter().any(|s| s.id.value == target.value);
                    let hint = if elsewhere {
                        "that step is in another block (a parallel branch, a foreach body, or the main steps); a step can only go to steps in its own block".to_string()
                    } else {
                        match did_you_mean(&target.value, ids.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!("steps here: {}", ids.join(", ")),
                        }
                    };
                    v.err(
                        target.span,
                        format!("`{field}` refers to unknown step `{}`", target.value),
                    )
                    .hint = Some(hint);
                }
            }
        };
        for (i, s) in steps.iter().enumerate() {
            for n in &s.next {
                resolve(self, i, n, "next");
            }
            if let Some(t) = &s.on_error {
                resolve(self, i, t, "on_error");
            }
            match &s.kind {
                StepKind::Switch { cases, default } => {
                    for c in cases {
                        resolve(self, i, &c.goto, "goto");
                    }
                    if let Some(d) = default {
                        resolve(self, i, d, "default");
                    }
                }
                StepKind::Wait {
                    on_timeout: Some(t),
                    ..
                } => resolve(self, i, t, "on_timeout"),
                StepKind::Parallel { branches, .. } => {
                    let mut seen = BTreeSet::new();
                    for b in branches {
                        if !seen.insert(b.id.value.as_str()) {
                            self.err(b.id.span, format!("duplicate branch id `{}`", b.id.value));
                        }
                        if b.steps.is_empty() {
                            self.err(b.id.span, format!("branch `{}` has no steps", b.id.value));
                        }
                        self.scope(&b.steps, false);
                    }
                    if branches.is_empty() {
                        self.err(
                            s.span,
                            format!("parallel step `{}` has no branches", s.id.value),
                        );
                    }
                }
                StepKind::Foreach { steps: body, .. } => {
                    if body.is_empty() {
                        self.err(
                            s.span,
                            format!("foreach step `{}` has no steps", s.id.value),
                        );
                    }
                    self.scope(body, false);
                }
                _ => {}
            }
        }
        let mut entry = vec![0usize];
        if top {
            if let Some(t) = &self.def.on_error {
                match index.get(t.value.as_str()) {
                    Some(&i) => entry.push(i),
                    None => {
                        let hint = did_you_mean(&t.value, ids.iter().copied()).map_or_else(
                            || format!("steps: {}", ids.join(", ")),
                            |s| format!("did you mean `{s}`?"),
                        );
                        self.err(
                            t.span,
                            format!("workflow `on_error` refers to unknown step `{}`", t.value),
                        )
                        .hint = Some(hint);
                    }
                }
            }
        }
        if steps.is_empty() {
            return;
        }
        // Reachability from the first step (and the workflow's error handler).
        let mut reached = vec![false; steps.len()];
        let mut stack = entry;
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut reached[i], true) {
                stack.extend(edges[i].iter().copied());
            }
        }
        for (i, s) in steps.iter().enumerate() {
            if !reached[i] {
                self.err(s.id.span, format!("step `{}` can never run", s.id.value)).hint =
                    Some("no step leads to it: add it to another step's `next`, `goto` or `on_error`, or remove it".into());
            }
        }
        self.loops(steps, &edges);
    }

    /// Report cycles in which no step waits or sleeps: they would spin forever.
    fn loops(&mut self, steps: &[StepDef], edges: &[Vec<usize>]) {
        let pauses = |s: &StepDef| matches!(s.kind, StepKind::Wait { .. } | StepKind::Sleep(_));
        // Remove pausing steps, then any remaining cycle is an infinite loop.
        let n = steps.len();
        let live: Vec<bool> = steps.iter().map(|s| !pauses(s)).collect();
        let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        let mut reported = BTreeSet::new();
        for start in 0..n {
            if !live[start] || state[start] != 0 {
                continue;
            }
            // Iterative DFS keeping the path so the loop can be named.
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some(&mut (node, ref mut next_edge)) = path.last_mut() {
                if let Some(&to) = edges[node].get(*next_edge) {
                    *next_edge += 1;
                    if !live[to] {
                        continue;
                    }
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            path.push((to, 0));
                        }
                        1 => {
                            let pos = path.iter().position(|(p, _)| *p == to).expect("on stack");
                            let cycle: Vec<usize> = path[pos..].iter().map(|(p, _)| *p).collect();
                            let key: BTreeSet<usize> = cycle.iter().copied().collect();
                            if reported.insert(key.into_iter().collect::<Vec<_>>()) {
                                let mut names: Vec<&str> =
                                    cycle.iter().map(|i| steps[*i].id.value.as_str()).collect();
                                names.push(&steps[to].id.value);
                                let span = steps[to].id.span;
                                self.err(span, format!("steps loop forever: {}", names.join(" → "))).hint = Some(
                                    "a loop must contain a `wait` or `sleep` step, or leave through a condition that becomes true".into(),
                                );
                            }
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    path.pop();
                }
            }
        }
    }

    fn step_fields(&mut self, s: &StepDef, ctx: &Context) {
        let kind = s.kind.keyword();
        match &s.kind {
            StepKind::Rule { .. } => {}
            _ if s.next.len() > 1 => {
                self.err(s.next[1].span, format!("a {kind} step can have only one `next`")).hint =
                    Some("only a `rule` step may list several and choose one by returning its id; use a `switch` to branch".into());
            }
            _ => {}
        }
        let ends = matches!(
            s.kind,
            StepKind::Complete { .. } | StepKind::Fail { .. } | StepKind::Switch { .. }
        );
        if ends && !s.next.is_empty() {
            let hint = if kind == "switch" {
                "use `default:` for the step to go to when no case matches"
            } else {
                "remove `next`: this step ends the workflow"
            };
            self.err(s.next[0].span, format!("a {kind} step cannot have `next`"))
                .hint = Some(hint.into());
        }
        let produces = matches!(
            s.kind,
            StepKind::Call { .. }
                | StepKind::Wait { .. }
                | StepKind::Parallel { .. }
                | StepKind::Foreach { .. }
                | StepKind::Subworkflow { .. }
        );
        if let (false, Some(sa)) = (produces, &s.save_as) {
            self.err(sa.span, format!("a {kind} step has no result to `save_as`"))
                .hint = Some(if kind == "rule" {
                "assign inside the rule instead: `vars.name = ...`".into()
            } else {
                "remove `save_as`".into()
            });
        }
        if let Some(c) = &s.compensate {
            if !self.def.compensations.iter().any(|x| x.id.value == c.value) {
                let known: Vec<&str> = self
                    .def
                    .compensations
                    .iter()
                    .map(|x| x.id.value.as_str())
                    .collect();
                let hint = match did_you_mean(&c.value, known.iter().copied()) {
                    Some(x) => format!("did you mean `{x}`?"),
                    None => "define it under `compensations:` at the end of the file".into(),
                };
                self.err(
                    c.span,
                    format!(
                        "`compensate` refers to unknown compensation step `{}`",
                        c.value
                    ),
                )
                .hint = Some(hint);
            }
        }
        if let StepKind::Call { plugin, action, .. } = &s.kind {
            if let Some(catalog) = &ctx.catalog {
                match catalog.plugins.get(&plugin.value) {
                    None => {
                        let hint = match did_you_mean(
                            &plugin.value,
                            catalog.plugins.keys().map(String::as_str),
                        ) {
                            Some(p) => format!("did you mean `{p}`?"),
                            None => format!(
                                "installed plugins: {}",
                                catalog
                                    .plugins
                                    .keys()
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        self.err(plugin.span, format!("unknown plugin `{}`", plugin.value))
                            .hint = Some(hint);
                    }
                    Some(actions) if !actions.contains(&action.value) => {
                        let hint =
                            match did_you_mean(&action.value, actions.iter().map(String::as_str)) {
                                Some(a) => format!("did you mean `{}.{a}`?", plugin.value),
                                None => format!(
                                    "`{}` offers: {}",
                                    plugin.value,
                                    actions.iter().cloned().collect::<Vec<_>>().join(", ")
                                ),
                            };
                        self.err(
                            action.span,
                            format!("plugin `{}` has no action `{}`", plugin.value, action.value),
                        )
                        .hint = Some(hint);
                    }
                    Some(_) => {}
                }
            }
        }
        if let StepKind::Subworkflow { workflow, .. } = &s.kind {
            if let Some(known) = &ctx.workflows {
                if !known.contains(&workflow.value) {
                    let hint = match did_you_mean(&workflow.value, known.iter().map(String::as_str))
                    {
                        Some(w) => format!("did you mean `{w}`?"),
                        None => "subworkflows must be in the same workflow directory".into(),
                    };
                    self.err(
                        workflow.span,
                        format!("unknown workflow `{}`", workflow.value),
                    )
                    .hint = Some(hint);
                }
            }
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::fields_read;

    #[test]
    fn fields_read_outside_strings_and_names_only() {
        assert_eq!(fields_read("input.ticket", "input"), ["ticket"]);
        assert_eq!(
            fields_read("input.a + \"input.b\" + my_input.c + input.d_2", "input"),
            ["a", "d_2"]
        );
        assert_eq!(
            fields_read("input.w // für input.z\n+ `ü ${input.y}`", "input"),
            ["w"]
        );
        assert!(fields_read("inputs.a", "input").is_empty());
        assert!(fields_read("\"ü\" + input", "input").is_empty());
    }
}
