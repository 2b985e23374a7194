//! Validated definition → [`CompiledWorkflow`]: Rhai compiled once, steps resolved to indices.
//!
//! Compilation is deterministic: the same source text always yields the same workflow,
//! so an instance pinned to a source hash runs the same program after a restart.

pub mod helpers;
pub mod rule_output;
pub mod rules;
pub mod table;
pub mod template;

use crate::definition::{
    self, InputField, Join, Retry, Script, SleepFor, StepDef, StepKind, WorkflowDef,
};
use crate::diagnostic::{Diagnostic, Span};
use crate::validate;
use rhai::AST;
use rules::Rules;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
pub use template::Template;

/// A workflow ready to run.
#[derive(Debug)]
pub struct CompiledWorkflow {
    pub name: String,
    pub version: u32,
    /// SHA-256 of the source text: the identity an instance is pinned to.
    pub hash: String,
    pub source: String,
    pub file: String,
    pub description: Option<String>,
    pub inputs: Vec<InputField>,
    pub steps: Vec<Step>,
    pub index: HashMap<String, usize>,
    pub entry: usize,
    pub on_error: Option<usize>,
    pub rules: Arc<Rules>,
    pub triggers: Vec<Trigger>,
    /// At most one open instance per key (`key:` and `concurrency:`).
    pub concurrency: Option<Concurrency>,
    /// How long an event it waits for is kept in the inbox (`inbox_keep:`).
    pub inbox_keep_ms: Option<u64>,
    /// `search:` attributes, in the order written.
    pub search: Vec<SearchAttribute>,
    /// `migrate:` rules, one per older version.
    pub migrations: Vec<Migration>,
}

/// Instances of version `from` parked at a wait in `at` may move to step `to` (an index
/// into this version's steps), with `set` variables worked out at the move.
#[derive(Debug)]
pub struct Migration {
    pub from: u32,
    /// Where `from:` is written, for problems found against the stored versions.
    pub from_span: crate::diagnostic::Span,
    pub at: Vec<(String, crate::diagnostic::Span)>,
    pub to: usize,
    pub set: Vec<(String, AST)>,
}

impl CompiledWorkflow {
    /// The rule that moves instances of `version` here, if there is one.
    pub fn migration_from(&self, version: u32) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.from == version)
    }
}

/// A business attribute instances are indexed by: its value is worked out from `input`
/// and `vars` after every step (see `Instance::search`).
#[derive(Debug)]
pub struct SearchAttribute {
    pub name: String,
    pub value: AST,
}

impl CompiledWorkflow {
    /// Whether a wait step of this workflow waits for events of `event_type`.
    pub fn waits_for(&self, event_type: &str) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(&s.kind, Kind::Wait { events, .. } if events.iter().any(|e| e == event_type)))
    }
}

/// One open instance per business key.
#[derive(Debug)]
pub struct Concurrency {
    /// Expression over `input` giving the key.
    pub key: AST,
    pub on_conflict: OnConflict,
    /// Open instances allowed per key value.
    pub limit: u32,
}

/// What a start does while an instance with its key is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnConflict {
    Reject,
    /// Deliver the start's input to the open instance as an event of this type.
    Attach {
        event: String,
    },
    /// Keep the start in the key's queue; start it when an open instance finishes.
    Queue,
}

impl CompiledWorkflow {
    /// Every `plugin.action` the workflow's steps call, in step order (repeats included).
    pub fn calls(&self) -> impl Iterator<Item = (&str, &str)> {
        self.steps.iter().filter_map(|s| match &s.kind {
            Kind::Call { plugin, action, .. } => Some((plugin.as_str(), action.as_str())),
            _ => None,
        })
    }
}

/// What starts a workflow besides the API.
#[derive(Debug)]
pub struct Trigger {
    pub kind: TriggerKind,
    /// Renders the new instance's input; without it the event's data is the input.
    pub input: Option<Template>,
}

#[derive(Debug)]
pub enum TriggerKind {
    Event {
        event_type: String,
        when: Option<AST>,
        /// `count:`: start once per burst (see [`crate::daemon::window`]).
        window: Option<TriggerWindow>,
    },
    Schedule {
        cron: Box<croner::Cron>,
        pattern: String,
        timezone: chrono_tz::Tz,
    },
}

/// `count:` and `key:` of an event trigger.
#[derive(Debug)]
pub struct TriggerWindow {
    /// What names its counts in the store: its event type, `when:`, `key:` and `count:`
    /// (hashed), not its place in the list, so adding or moving other triggers keeps the
    /// counts, and changing this one starts them afresh.
    pub identity: String,
    /// Over `event`; none counts every matching event in one window.
    pub key: Option<AST>,
    pub threshold: crate::daemon::window::Threshold,
}

#[derive(Debug)]
pub struct Step {
    pub id: String,
    /// On the top-level `steps:` (not in a branch, a foreach or `compensations:`): where
    /// a rerun or a migration may begin.
    pub top_level: bool,
    pub kind: Kind,
    pub next: Vec<usize>,
    pub on_error: Option<usize>,
    pub compensate: Option<usize>,
    pub save_as: Option<String>,
}

#[derive(Debug)]
pub enum Kind {
    Rule(AST),
    /// A decision table: each input column's expression, then the checked rows.
    Decide {
        columns: Vec<AST>,
        rows: table::Rows,
    },
    Switch {
        cases: Vec<(AST, usize)>,
        default: Option<usize>,
    },
    Call {
        plugin: String,
        action: String,
        with: Option<Template>,
        timeout_ms: u64,
        retry: Retry,
    },
    Wait {
        events: Vec<String>,
        key: AST,
        timeout_ms: Option<u64>,
        until: Option<AST>,
        on_timeout: Option<usize>,
        /// Fields of the event's `data` sealed as write-only when the event arrives.
        write_only: Vec<String>,
    },
    Sleep(Sleep),
    Parallel {
        join: Join,
        branches: Vec<(String, usize)>,
    },
    Foreach {
        items: AST,
        item_name: String,
        concurrency: u32,
        body: usize,
    },
    Set(Vec<(String, Template)>),
    Subworkflow {
        workflow: String,
        with: Option<Template>,
    },
    Complete(Option<Template>),
    Fail {
        code: String,
        message: Template,
    },
}

#[derive(Debug)]
pub enum Sleep {
    For(u64),
    Until(AST),
}

/// Default time a plugin call may take before it counts as a (retryable) timeout.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 30_000;

impl CompiledWorkflow {
    pub fn step(&self, id: &str) -> Option<(usize, &Step)> {
        self.index.get(id).map(|&i| (i, &self.steps[i]))
    }

    /// Names of inputs marked `sensitive: true`.
    pub fn sensitive_inputs(&self) -> impl Iterator<Item = &str> {
        self.inputs
            .iter()
            .filter(|f| f.sensitive)
            .map(|f| f.name.value.as_str())
    }

    /// Id of the workflow version: `name@version#hash-prefix`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Read, validate and compile one file. Every problem is returned; the workflow only if none is an error.
pub fn load(
    file: &str,
    source: &str,
    ctx: &validate::Context,
    rules: &Arc<Rules>,
) -> (Option<CompiledWorkflow>, Vec<Diagnostic>) {
    let (def, mut diags) = definition::read(file, source);
    let Some(def) = def else { return (None, diags) };
    diags.extend(validate::check(&def, ctx));
    let (compiled, script_diags) = compile(&def, source, rules);
    diags.extend(script_diags);
    if diags.iter().any(Diagnostic::is_error) {
        return (None, diags);
    }
    (Some(compiled), diags)
}

/// Compile a definition that passed validation. Script errors are returned as diagnostics.
pub fn compile(
    def: &WorkflowDef,
    source: &str,
    rules: &Arc<Rules>,
) -> (CompiledWorkflow, Vec<Diagnostic>) {
    let mut c = Compiler {
        def,
        rules,
        diags: Vec::new(),
        steps: Vec::new(),
        index: HashMap::new(),
    };
    // Give every step its index first so forward references resolve.
    let all = def.all_steps();
    for (i, s) in all.iter().enumerate() {
        c.index.entry(s.id.value.clone()).or_insert(i);
    }
    for s in &all {
        let step = c.step(s);
        c.steps.push(step);
    }
    for s in &def.steps {
        if let Some(&i) = c.index.get(&s.id.value) {
            c.steps[i].top_level = true;
        }
    }
    let triggers = def.triggers.iter().filter_map(|t| c.trigger(t)).collect();
    let concurrency = def.concurrency.as_ref().map(|k| Concurrency {
        key: c.script(&k.key, true),
        on_conflict: match &k.on_conflict {
            definition::OnConflict::Reject => OnConflict::Reject,
            definition::OnConflict::Attach { event } => OnConflict::Attach {
                event: event.value.clone(),
            },
            definition::OnConflict::Queue => OnConflict::Queue,
        },
        limit: k.limit,
    });
    let search = def
        .search
        .iter()
        .map(|a| SearchAttribute {
            name: a.name.value.clone(),
            value: c.script(&a.value, true),
        })
        .collect();
    let migrations = def
        .migrate
        .iter()
        .map(|m| Migration {
            from: m.from.value,
            from_span: m.from.span,
            at: m.at.iter().map(|s| (s.value.clone(), s.span)).collect(),
            to: c.idx(&m.to.value),
            set: m
                .set
                .iter()
                .map(|(name, e)| (name.value.clone(), c.script(e, true)))
                .collect(),
        })
        .collect();
    let hash = hex::encode(Sha256::digest(source.as_bytes()));
    let Compiler {
        diags,
        steps,
        index,
        ..
    } = c;
    let on_error = def
        .on_error
        .as_ref()
        .and_then(|s| index.get(&s.value).copied());
    (
        CompiledWorkflow {
            name: def.name.value.clone(),
            version: def.version.value,
            hash,
            source: source.to_string(),
            file: def.file.clone(),
            description: def.description.clone(),
            inputs: def.input.clone(),
            steps,
            index,
            entry: 0,
            on_error,
            rules: rules.clone(),
            triggers,
            concurrency,
            inbox_keep_ms: def.inbox_keep.as_ref().map(|d| d.value.as_millis()),
            search,
            migrations,
        },
        diags,
    )
}

struct Compiler<'a> {
    def: &'a WorkflowDef,
    rules: &'a Arc<Rules>,
    diags: Vec<Diagnostic>,
    steps: Vec<Step>,
    index: HashMap<String, usize>,
}

impl Compiler<'_> {
    fn idx(&self, id: &str) -> usize {
        // Unknown references were reported by validation; usize::MAX never resolves to a step.
        self.index.get(id).copied().unwrap_or(usize::MAX)
    }

    fn script(&mut self, s: &Script, expression: bool) -> AST {
        let r = if expression {
            self.rules.compile_expression(&s.text)
        } else {
            self.rules.compile_script(&s.text)
        };
        r.unwrap_or_else(|e| {
            let span = e.span_in_file(s.span, s.block);
            self.diags.push(
                Diagnostic::error(
                    &self.def.file,
                    span,
                    format!("rule does not compile: {}", e.message),
                )
                .with_hint(
                    "rules are Rhai: see docs/workflows.md for syntax and the helper functions",
                ),
            );
            AST::empty()
        })
    }

    fn template(&mut self, node: &definition::yaml::Node) -> Template {
        let mut errors = Vec::new();
        let t = template::compile(self.rules, node, &mut errors);
        for e in errors {
            let span = Span::new(
                e.node_span.line,
                e.node_span.col + e.offset + e.error.col.saturating_sub(1),
            );
            self.diags.push(
                Diagnostic::error(&self.def.file, span, format!("template expression does not compile: {}", e.error.message))
                    .with_hint("write `${ expression }`, e.g. `${input.order_id}`; use `$${` for a literal `${`"),
            );
        }
        t
    }

    fn trigger(&mut self, t: &definition::TriggerDef) -> Option<Trigger> {
        let kind = match &t.source {
            definition::TriggerSource::Event {
                event,
                when,
                window,
            } => TriggerKind::Event {
                event_type: event.value.clone(),
                when: when.as_ref().map(|w| self.script(w, true)),
                window: window.as_ref().map(|w| TriggerWindow {
                    identity: crate::daemon::window::identity(
                        &event.value,
                        when.as_ref().map(|s| s.text.as_str()),
                        w.key.as_ref().map(|k| k.text.as_str()),
                        w.at_least,
                        w.within.value.as_millis(),
                    ),
                    key: w.key.as_ref().map(|k| self.script(k, true)),
                    threshold: crate::daemon::window::Threshold {
                        at_least: w.at_least,
                        within_ms: w.within.value.as_millis() as crate::runtime::Millis,
                    },
                }),
            },
            definition::TriggerSource::Schedule { cron, timezone } => TriggerKind::Schedule {
                // The reader checked both parse.
                cron: Box::new(cron.value.parse().ok()?),
                pattern: cron.value.clone(),
                timezone: timezone.value.parse().ok()?,
            },
        };
        Some(Trigger {
            kind,
            input: t.input.as_ref().map(|i| self.template(&i.node)),
        })
    }

    fn step(&mut self, s: &StepDef) -> Step {
        let kind = match &s.kind {
            StepKind::Rule { script } => Kind::Rule(self.script(script, false)),
            StepKind::Switch { cases, default } => Kind::Switch {
                cases: cases
                    .iter()
                    .map(|c| (self.script(&c.when, true), self.idx(&c.goto.value)))
                    .collect(),
                default: default.as_ref().map(|d| self.idx(&d.value)),
            },
            StepKind::Call {
                plugin,
                action,
                with,
                timeout,
                retry,
            } => Kind::Call {
                plugin: plugin.value.clone(),
                action: action.value.clone(),
                with: with.as_ref().map(|t| self.template(&t.node)),
                timeout_ms: timeout
                    .as_ref()
                    .map_or(DEFAULT_CALL_TIMEOUT_MS, |t| t.value.as_millis()),
                retry: retry.clone().unwrap_or_default(),
            },
            StepKind::Wait {
                events,
                key,
                timeout,
                until,
                on_timeout,
                write_only,
            } => Kind::Wait {
                events: events.iter().map(|e| e.value.clone()).collect(),
                key: self.script(key, true),
                timeout_ms: timeout.as_ref().map(|t| t.value.as_millis()),
                until: until.as_ref().map(|u| self.script(u, true)),
                on_timeout: on_timeout.as_ref().map(|t| self.idx(&t.value)),
                write_only: write_only.iter().map(|f| f.value.clone()).collect(),
            },
            StepKind::Sleep(SleepFor::Duration(d)) => Kind::Sleep(Sleep::For(d.value.as_millis())),
            StepKind::Sleep(SleepFor::Until(e)) => Kind::Sleep(Sleep::Until(self.script(e, true))),
            StepKind::Parallel { join, branches } => Kind::Parallel {
                join: *join,
                branches: branches
                    .iter()
                    .map(|b| {
                        (
                            b.id.value.clone(),
                            b.steps
                                .first()
                                .map_or(usize::MAX, |f| self.idx(&f.id.value)),
                        )
                    })
                    .collect(),
            },
            StepKind::Foreach {
                items,
                item_name,
                concurrency,
                steps,
            } => Kind::Foreach {
                items: self.script(items, true),
                item_name: item_name.value.clone(),
                concurrency: *concurrency,
                body: steps.first().map_or(usize::MAX, |f| self.idx(&f.id.value)),
            },
            StepKind::Set { values } => {
                let entries = values.node.as_map().unwrap_or_default();
                Kind::Set(
                    entries
                        .iter()
                        .map(|(k, v)| (k.name.clone(), self.template(v)))
                        .collect(),
                )
            }
            StepKind::Subworkflow { workflow, with } => Kind::Subworkflow {
                workflow: workflow.value.clone(),
                with: with.as_ref().map(|t| self.template(&t.node)),
            },
            StepKind::Decide(def) => {
                let columns = def
                    .inputs
                    .iter()
                    .map(|c| self.script(&c.value, true))
                    .collect();
                match table::read(def, &self.def.file, &mut self.diags) {
                    Some(rows) => Kind::Decide { columns, rows },
                    // Reported; the workflow is not installed.
                    None => Kind::Fail {
                        code: "invalid_table".into(),
                        message: Template::Literal(serde_json::Value::Null),
                    },
                }
            }
            StepKind::Complete { output } => {
                Kind::Complete(output.as_ref().map(|t| self.template(&t.node)))
            }
            StepKind::Fail { code, message } => Kind::Fail {
                code: code.clone(),
                message: self.template(&message.node),
            },
        };
        Step {
            id: s.id.value.clone(),
            top_level: false,
            kind,
            next: s.next.iter().map(|n| self.idx(&n.value)).collect(),
            on_error: s.on_error.as_ref().map(|n| self.idx(&n.value)),
            compensate: s.compensate.as_ref().map(|n| self.idx(&n.value)),
            save_as: s.save_as.as_ref().map(|n| n.value.clone()),
        }
    }
}
