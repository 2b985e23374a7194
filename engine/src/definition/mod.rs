//! Workflow files as the author wrote them: plain types with source positions, no Rhai, no I/O.
//!
//! [`read`] turns YAML text into a [`WorkflowDef`], reporting every structural problem
//! (syntax, unknown or misspelled fields, wrong types) at once. Semantic checks live in
//! `validate`.

pub mod duration;
pub mod read;
pub mod schema;
pub mod value;
pub mod yaml;

pub use duration::Duration;
pub use read::read;

use crate::diagnostic::{BlockStart, Span};

/// A value with the position it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

/// A Rhai expression or script as written, with where its text starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Script {
    pub text: String,
    pub span: Span,
    pub block: BlockStart,
}

/// One workflow file.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowDef {
    /// The file it came from, as given on the command line.
    pub file: String,
    pub name: Spanned<String>,
    pub version: Spanned<u32>,
    pub description: Option<String>,
    pub input: Vec<InputField>,
    pub on_error: Option<Spanned<String>>,
    pub steps: Vec<StepDef>,
    pub compensations: Vec<StepDef>,
    /// What starts the workflow besides the API: events and schedules.
    pub triggers: Vec<TriggerDef>,
    /// `key:` and `concurrency:`: at most one open instance per key.
    pub concurrency: Option<ConcurrencyDef>,
    /// `inbox_keep:` how long an event this workflow waits for is kept in the inbox when
    /// it comes before its wait (the daemon's `inbox_keep` otherwise).
    pub inbox_keep: Option<Spanned<Duration>>,
    /// `search:` business attributes the instance can be found by, in the order written.
    pub search: Vec<SearchDef>,
    /// `migrate:` which instances of older versions may move to this one, and where.
    pub migrate: Vec<MigrationDef>,
}

/// One `migrate:` rule: instances of version `from` parked at one of the waits `at`
/// move to step `to` of this version, with `set` variables worked out at the move.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationDef {
    pub from: Spanned<u32>,
    pub at: Vec<Spanned<String>>,
    pub to: Spanned<String>,
    /// Variable name → expression over `input` and `vars` (as they were before the move).
    pub set: Vec<(Spanned<String>, Script)>,
}

/// One `search:` attribute: its name (the query parameter) and the expression over
/// `input` and `vars` that gives its value.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchDef {
    pub name: Spanned<String>,
    pub value: Script,
}

/// One open instance per business key (`key:` with `concurrency:`).
#[derive(Clone, Debug, PartialEq)]
pub struct ConcurrencyDef {
    /// Expression over `input` giving the key, e.g. `input.ticket_id`.
    pub key: Script,
    pub on_conflict: OnConflict,
    /// Open instances allowed per key value (1 unless `on_conflict: reject`).
    pub limit: u32,
}

/// What a start does while an instance with its key is open.
#[derive(Clone, Debug, PartialEq)]
pub enum OnConflict {
    /// Answer `409` naming the open instance.
    Reject,
    /// Answer with the open instance and deliver the start's input to it as an event of
    /// this type, keyed by the concurrency key (signal-with-start).
    Attach { event: Spanned<String> },
    /// Keep the start in the key's queue (first in, first out) and start it when an
    /// open instance with the key finishes.
    Queue,
}

/// One `triggers:` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerDef {
    pub span: Span,
    pub source: TriggerSource,
    /// The new instance's input; `${event...}` (event triggers) and `${now}` are available.
    pub input: Option<Template>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TriggerSource {
    /// An event delivered to `POST /v1/events`, optionally filtered by a Rhai expression.
    Event {
        event: Spanned<String>,
        when: Option<Script>,
        /// `count:` (with `key:`): start once when enough events come close together.
        window: Option<WindowDef>,
    },
    /// A cron schedule in a time zone.
    Schedule {
        cron: Spanned<String>,
        timezone: Spanned<String>,
    },
}

/// `count: { at_least, within }` of an event trigger, and its `key:`.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowDef {
    /// Expression over `event` naming what is counted together (one window per value);
    /// without it every matching event counts in one window.
    pub key: Option<Script>,
    pub at_least: u32,
    pub within: Spanned<Duration>,
}

/// The type of an input field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    List,
    /// An RFC 3339 instant, e.g. `2026-03-06T16:00:00Z`.
    Timestamp,
}

impl FieldType {
    pub const NAMES: [&'static str; 7] = [
        "string",
        "integer",
        "number",
        "boolean",
        "object",
        "list",
        "timestamp",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => FieldType::String,
            "integer" => FieldType::Integer,
            "number" => FieldType::Number,
            "boolean" => FieldType::Boolean,
            "object" => FieldType::Object,
            "list" => FieldType::List,
            "timestamp" => FieldType::Timestamp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One declared input of a workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct InputField {
    pub name: Spanned<String>,
    pub ty: FieldType,
    pub required: bool,
    /// Personal data or a secret: redacted in `inspect`, the API and logs.
    pub sensitive: bool,
    pub description: Option<String>,
    /// Allowed values, if restricted.
    pub one_of: Vec<serde_json::Value>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub default: Option<serde_json::Value>,
}

/// One step as written.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDef {
    pub id: Spanned<String>,
    pub span: Span,
    pub description: Option<String>,
    pub kind: StepKind,
    /// Where to go next. A rule may list several and choose by returning a step id.
    pub next: Vec<Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
    pub compensate: Option<Spanned<String>>,
    pub save_as: Option<Spanned<String>>,
}

/// A value mapping: YAML whose strings may contain `${ expression }` templates.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub node: yaml::Node,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    Rule {
        script: Script,
    },
    Switch {
        cases: Vec<Case>,
        default: Option<Spanned<String>>,
    },
    Call {
        plugin: Spanned<String>,
        action: Spanned<String>,
        with: Option<Template>,
        timeout: Option<Spanned<Duration>>,
        retry: Option<Retry>,
    },
    Wait {
        events: Vec<Spanned<String>>,
        key: Script,
        timeout: Option<Spanned<Duration>>,
        /// An instant to wait until (e.g. an SLA deadline), instead of `timeout`.
        until: Option<Script>,
        on_timeout: Option<Spanned<String>>,
        /// Fields of the event's `data` that are write-only (one-time codes): sealed as
        /// the event arrives, shown nowhere, opened only for a plugin field marked sensitive.
        write_only: Vec<Spanned<String>>,
    },
    Sleep(SleepFor),
    Parallel {
        join: Join,
        branches: Vec<Branch>,
    },
    Foreach {
        items: Script,
        item_name: Spanned<String>,
        concurrency: u32,
        steps: Vec<StepDef>,
    },
    Set {
        values: Template,
    },
    Subworkflow {
        workflow: Spanned<String>,
        with: Option<Template>,
    },
    /// A decision table: support ops change a policy by editing rows, not Rhai.
    Decide(TableDef),
    Complete {
        output: Option<Template>,
    },
    Fail {
        code: String,
        message: Template,
    },
}

impl StepKind {
    /// The YAML key that names this kind of step.
    pub fn keyword(&self) -> &'static str {
        match self {
            StepKind::Rule { .. } => "rule",
            StepKind::Switch { .. } => "switch",
            StepKind::Call { .. } => "call",
            StepKind::Wait { .. } => "wait",
            StepKind::Sleep(_) => "sleep",
            StepKind::Parallel { .. } => "parallel",
            StepKind::Foreach { .. } => "foreach",
            StepKind::Set { .. } => "set",
            StepKind::Subworkflow { .. } => "subworkflow",
            StepKind::Decide(_) => "decide",
            StepKind::Complete { .. } => "complete",
            StepKind::Fail { .. } => "fail",
        }
    }

    pub const KEYWORDS: [&'static str; 12] = [
        "rule",
        "switch",
        "decide",
        "call",
        "wait",
        "sleep",
        "parallel",
        "foreach",
        "set",
        "subworkflow",
        "complete",
        "fail",
    ];
}

#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub when: Script,
    pub goto: Spanned<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SleepFor {
    Duration(Spanned<Duration>),
    Until(Script),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    All,
    First,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub id: Spanned<String>,
    pub steps: Vec<StepDef>,
}

/// When and how a failed plugin call is tried again.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub multiplier: u32,
    pub max_delay: Duration,
    /// Fraction of each delay that is randomised, in percent (0–100).
    pub jitter_percent: u32,
    /// Error codes that are retried; `retryable` means "whatever the plugin marks retryable".
    pub on: Vec<String>,
    pub span: Span,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 1,
            backoff: Duration::from_millis(1_000),
            multiplier: 2,
            max_delay: Duration::from_millis(60_000),
            jitter_percent: 20,
            on: vec!["retryable".into(), "timeout".into()],
            span: Span::default(),
        }
    }
}

impl WorkflowDef {
    /// Every step, including those nested in parallel branches and foreach bodies, and compensations.
    pub fn all_steps(&self) -> Vec<&StepDef> {
        fn walk<'a>(steps: &'a [StepDef], out: &mut Vec<&'a StepDef>) {
            for s in steps {
                out.push(s);
                match &s.kind {
                    StepKind::Parallel { branches, .. } => {
                        for b in branches {
                            walk(&b.steps, out)
                        }
                    }
                    StepKind::Foreach { steps, .. } => walk(steps, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.steps, &mut out);
        walk(&self.compensations, &mut out);
        out
    }
}

/// A `decide:` table as written: each input column's type and expression, the output
/// columns, how matching rows are used, and the rows with their cells left as YAML (the
/// compiler reads each cell against its column's type, so a mistake is reported there).
#[derive(Clone, Debug, PartialEq)]
pub struct TableDef {
    pub span: Span,
    pub inputs: Vec<ColumnDef>,
    pub outputs: Vec<Spanned<String>>,
    pub hit: HitPolicy,
    pub rows: Vec<RowDef>,
    /// Where `rows:` is, for problems of the table as a whole (a gap in a `unique` table).
    pub rows_span: Span,
    /// The outputs when no row matches (not with `hit: collect`).
    pub default: Option<RowDef>,
}

/// An input column: `amount: { type: integer, value: input.amount_minor }`.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnDef {
    pub name: Spanned<String>,
    pub ty: ColumnType,
    pub value: Script,
}

/// What an input column holds. Money is `integer` minor units, never a decimal number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    String,
    Boolean,
}

impl ColumnType {
    pub const NAMES: [&'static str; 3] = ["integer", "string", "boolean"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "integer" => ColumnType::Integer,
            "string" => ColumnType::String,
            "boolean" => ColumnType::Boolean,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Which matching rows count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitPolicy {
    /// The first row that matches, top to bottom.
    First,
    /// Exactly one row matches any input; checked when the file loads.
    Unique,
    /// Every row that matches: each output becomes a list.
    Collect,
}

impl HitPolicy {
    pub const NAMES: [&'static str; 3] = ["first", "unique", "collect"];
}

/// One row: cells by column name, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct RowDef {
    pub span: Span,
    pub cells: Vec<(Spanned<String>, yaml::Node)>,
}
