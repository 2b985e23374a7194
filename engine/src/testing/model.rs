//! A workflow test file as the author wrote it: plain types with positions, no I/O.

use crate::definition::Spanned;
use crate::diagnostic::Span;
use crate::runtime::Millis;
use serde_json::Value;

/// Start time of a test that does not give one: Monday 5 January 2026, 09:00 UTC.
pub const DEFAULT_START: &str = "2026-01-05T09:00:00Z";

/// How far the virtual clock may run after the last event when a test gives no
/// `stop_after`: long enough for any approval or retry ladder, short enough that a workflow
/// which loops on a timer forever still ends.
pub const DEFAULT_HORIZON_MS: u64 = 366 * 24 * 3_600_000;

/// One `*.test.yaml` file.
#[derive(Clone, Debug, PartialEq)]
pub struct TestFile {
    /// The file, as given on the command line.
    pub file: String,
    /// The name of the workflow under test (`workflow: refund`).
    pub workflow: Spanned<String>,
    pub tests: Vec<TestCase>,
}

/// One test: start an instance, answer its plugin calls, deliver events, check what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct TestCase {
    pub name: Spanned<String>,
    /// The file's shared `input:` with this test's `input:` laid over it (key by key).
    pub input: Value,
    /// Virtual start time, epoch milliseconds UTC.
    pub start_ms: Millis,
    /// This test's mocks first, then the file's shared ones.
    pub mocks: Vec<Mock>,
    /// In time order (stable for events at the same time).
    pub events: Vec<TimedEvent>,
    /// End the test this long after the start (timers due by then still fire).
    pub stop_after_ms: Option<u64>,
    /// What must hold part-way through (`checkpoints:`), in time order.
    pub checkpoints: Vec<Checkpoint>,
    /// Files of the workflow folder changed part-way through (`edits:`), in time order.
    pub edits: Vec<FileEdit>,
    pub expect: Expect,
    /// `started_by: triggers`: the test starts no instance; its events start instances
    /// through the loaded workflows' `triggers:` (windowed counts included), and the
    /// instance under test is the first one of the file's workflow they started.
    pub started_by_triggers: bool,
}

/// `- { at: 2h, expect: {...} }`: the instance as it is `at` after the start, once
/// everything due by then (events and timers) has happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub span: Span,
    pub at_ms: u64,
    pub expect: Expect,
}

/// `- { after: 3h, file: calendars/support-hours.yaml, content: ... }`: at that time the
/// file of the workflow folder (a calendar or a workflow) is replaced, or added, and the
/// folder is reloaded as a running daemon reloads it: a calendar counts from then on,
/// a workflow's new version is for instances started after.
#[derive(Clone, Debug, PartialEq)]
pub struct FileEdit {
    pub span: Span,
    pub after_ms: u64,
    /// Relative to the test file's folder.
    pub file: String,
    pub content: String,
}

/// A canned answer to plugin calls of one `plugin.action`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mock {
    pub span: Span,
    /// `plugin.action`.
    pub target: String,
    /// Answer only calls whose input matches this partially (see [`crate::testing::expect::matches`]).
    pub when: Option<Value>,
    pub answer: Answer,
    /// Answer only the first N matching calls; later calls fall through to the next mock.
    pub times: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The plugin's output.
    Reply(Value),
    /// A typed plugin error.
    Error {
        code: String,
        message: String,
        retryable: bool,
    },
    /// The call does not answer in time: the error the driver gives a call that exceeds its
    /// `timeout:` (code `timeout`, retryable), after that much virtual time.
    Timeout,
}

/// An event delivered `after` the start.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedEvent {
    pub span: Span,
    pub after_ms: u64,
    pub event_type: String,
    pub key: String,
    pub data: Value,
    pub id: Option<String>,
}

/// What a test checks. Every field is optional; a test needs at least one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expect {
    pub span: Span,
    pub status: Option<Spanned<ExpectedStatus>>,
    /// The steps the instance went through, in order, compared exactly.
    pub path: Option<Vec<Spanned<String>>>,
    /// Partial match on the instance's output.
    pub output: Option<Value>,
    /// Partial match on the instance's variables.
    pub vars: Option<Value>,
    /// The code of the instance's error.
    pub error: Option<String>,
    /// Every plugin call attempt of the instance, in order.
    pub calls: Option<Vec<ExpectedCall>>,
    /// How many call attempts match each entry, in any order (`called:`).
    pub called: Vec<ExpectedCount>,
    /// Every attempt of one call step (one visit) used the same idempotency key, and at
    /// least one call was retried.
    pub retries_reuse_idempotency_key: bool,
    /// Text that must appear in no journal record and no log line.
    pub not_in_journal: Vec<String>,
    /// SLA clocks kept in variables, and the state each must be in when the test ends.
    pub sla: Vec<ExpectedSla>,
    /// How many instances of each named workflow exist (`instances: { emergency: 1 }`).
    pub instances: Vec<(Spanned<String>, u32)>,
}

/// `sla: { first_response: breached }` or `sla: { resolution: { state: warned, warn_percent: 80 } }`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedSla {
    pub span: Span,
    /// The variable holding the clock (made with `sla_start`).
    pub clock: String,
    /// `running`, `paused`, `warned` or `breached`.
    pub state: String,
    /// The share of the target at which a running clock counts as warned.
    pub warn_percent: u32,
}

impl ExpectedSla {
    pub const STATES: [&'static str; 4] = ["running", "paused", "warned", "breached"];
    pub const DEFAULT_WARN_PERCENT: u32 = 75;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedStatus {
    Completed,
    Failed,
    Cancelled,
    /// Not finished when the test ended: parked on an event, a timer or a retry.
    Waiting,
}

impl ExpectedStatus {
    pub const NAMES: [&'static str; 4] = ["completed", "failed", "cancelled", "waiting"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "completed" => ExpectedStatus::Completed,
            "failed" => ExpectedStatus::Failed,
            "cancelled" => ExpectedStatus::Cancelled,
            "waiting" => ExpectedStatus::Waiting,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExpectedStatus::Completed => "completed",
            ExpectedStatus::Failed => "failed",
            ExpectedStatus::Cancelled => "cancelled",
            ExpectedStatus::Waiting => "waiting",
        }
    }
}

/// `called:` entry: the call attempts matching `target` (and `step`, and `with` as a
/// partial match), counted.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedCount {
    pub span: Span,
    pub target: String,
    pub step: Option<String>,
    pub with: Option<Value>,
    /// At least, at most (both set for an exact `count`).
    pub at_least: Option<u32>,
    pub at_most: Option<u32>,
}

/// One expected plugin call attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedCall {
    pub span: Span,
    /// `plugin.action`.
    pub target: String,
    pub step: Option<Spanned<String>>,
    pub attempt: Option<u32>,
    /// Partial match on the call's input.
    pub with: Option<Value>,
    /// 1-based position of another entry of `calls:` whose idempotency key this call shares.
    pub idempotency_key_same_as: Option<usize>,
}
