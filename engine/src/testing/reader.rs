//! YAML text → [`TestFile`], collecting every problem with its position, like the workflow
//! reader: `file:line:col: error: message` plus a hint, "did you mean" for unknown fields.

use super::model::*;
use crate::definition::yaml::{self, Fields, Node, Value};
use crate::definition::{Duration, Spanned};
use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use serde_json::{Map, Value as Json};

pub const FILE_FIELDS: &[&str] = &[
    "workflow",
    "description",
    "start",
    "input",
    "mocks",
    "tests",
];
pub const TEST_FIELDS: &[&str] = &[
    "name",
    "description",
    "input",
    "start",
    "mocks",
    "events",
    "stop_after",
    "checkpoints",
    "edits",
    "expect",
    "started_by",
];
pub const CHECKPOINT_FIELDS: &[&str] = &["at", "expect"];
pub const EDIT_FIELDS: &[&str] = &["after", "file", "content"];
pub const MOCK_FIELDS: &[&str] = &["call", "when", "reply", "error", "timeout", "times"];
pub const MOCK_ERROR_FIELDS: &[&str] = &["code", "message", "retryable"];
pub const EVENT_FIELDS: &[&str] = &["after", "type", "key", "data", "id"];
pub const EXPECT_FIELDS: &[&str] = &[
    "status",
    "path",
    "output",
    "vars",
    "error",
    "calls",
    "called",
    "retries_reuse_idempotency_key",
    "not_in_journal",
    "sla",
    "instances",
];
pub const CALL_FIELDS: &[&str] = &["call", "step", "attempt", "with", "idempotency_key_same_as"];
pub const CALLED_FIELDS: &[&str] = &["call", "step", "with", "count", "at_least", "at_most"];

/// Expectation fields that are part of the format but not checked yet: (field, hint).
/// Empty today; a new field starts here so a test never passes by ignoring it.
pub const NOT_SUPPORTED_YET: &[(&str, &str)] = &[];

pub const SLA_FIELDS: &[&str] = &["state", "warn_percent"];

/// Read a test file. Returns it if it is sound, and every problem found.
pub fn read(file: &str, text: &str) -> (Option<TestFile>, Vec<Diagnostic>) {
    let mut r = Reader {
        file,
        diags: Vec::new(),
    };
    let Some(root) = yaml::parse_file(file, text, &mut r.diags) else {
        return (None, r.diags);
    };
    let tests = r.file(&root);
    let ok = !r.diags.iter().any(Diagnostic::is_error);
    (tests.filter(|_| ok), r.diags)
}

struct Reader<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(self.file, span, msg));
    }

    fn hint(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, span, msg).with_hint(hint));
    }

    /// Check that `node` is a mapping whose keys are all in `allowed`.
    fn fields<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        yaml::fields(self.file, node, what, allowed, &mut self.diags)
    }

    fn required<'n>(
        &mut self,
        f: &Fields<'n>,
        name: &str,
        what: &str,
        hint: &str,
    ) -> Option<&'n Node> {
        let n = f.get(name);
        if n.is_none() {
            self.hint(f.node.span, format!("{what} is missing `{name}:`"), hint);
        }
        n
    }

    /// An optional field: `Ok(None)` when absent, `Err(())` when present but wrong (reported).
    fn optional<T>(
        &mut self,
        node: Option<&Node>,
        read: impl FnOnce(&mut Self, &Node) -> Option<T>,
    ) -> Result<Option<T>, ()> {
        match node {
            None => Ok(None),
            Some(n) => read(self, n).map(Some).ok_or(()),
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        crate::definition::value::string(self.file, node, what, &mut self.diags)
    }

    fn target(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        match s.split_once('.') {
            Some((p, a)) if !p.is_empty() && !a.is_empty() => Some(s),
            _ => {
                self.hint(
                    node.span,
                    format!("{what} `{s}` must name a plugin and an action"),
                    "write it as in the workflow's `call:`, e.g. `payments.refund`",
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        crate::definition::value::boolean(self.file, node, what, &mut self.diags)
    }

    fn count(&mut self, node: &Node, what: &str, max: i64) -> Option<u32> {
        crate::definition::value::whole(self.file, node, what, 1, max, &mut self.diags)
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<u64> {
        crate::definition::value::duration(self.file, node, what, &mut self.diags)
            .map(|d| d.as_millis())
    }

    fn time(&mut self, node: &Node, what: &str) -> Option<i64> {
        let parsed = node
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        match parsed {
            Some(t) => Some(t.timestamp_millis()),
            None => {
                self.hint(
                    node.span,
                    format!("{what} must be an RFC 3339 time"),
                    format!("for example `{DEFAULT_START}` (UTC) or `2026-03-06T16:00:00+01:00`"),
                );
                None
            }
        }
    }

    fn mapping(&mut self, node: &Node, what: &str, example: &str) -> Option<Map<String, Json>> {
        match node.to_json() {
            Json::Object(m) => Some(m),
            _ => {
                self.hint(
                    node.span,
                    format!("{what} must be a mapping, found {}", node.kind_name()),
                    format!("for example: {example}"),
                );
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str, example: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            _ => {
                self.hint(
                    node.span,
                    format!("{what} must be a list, found {}", node.kind_name()),
                    format!("write one `- ` line per item, e.g.\n{example}"),
                );
                &[]
            }
        }
    }

    // ------------------------------------------------------------------ the file

    fn file(&mut self, root: &Node) -> Option<TestFile> {
        let f = self.fields(root, "the test file", FILE_FIELDS)?;
        let workflow = self
            .required(
                &f,
                "workflow",
                "the test file",
                "name the workflow under test at the top, e.g. `workflow: refund`",
            )
            .and_then(|n| Some(Spanned::new(self.string(n, "`workflow`")?, n.span)));
        let start = match f.get("start") {
            Some(n) => self.time(n, "`start`"),
            None => Some(default_start()),
        };
        let input = match f.get("input") {
            Some(n) => self.mapping(n, "`input`", "`input: { order_id: ORD-1 }`"),
            None => Some(Map::new()),
        };
        let shared_mocks = match f.get("mocks") {
            Some(n) => self.mocks(n),
            None => Vec::new(),
        };
        let mut tests = Vec::new();
        if let Some(n) = self.required(
            &f,
            "tests",
            "the test file",
            "add `tests:` with one `- name: ...` entry per test",
        ) {
            let items = self.list(
                n,
                "`tests`",
                "  tests:\n    - name: small refund is paid\n      ...",
            );
            if items.is_empty() && matches!(n.value, Value::Seq(_)) {
                self.err(n.span, "`tests` is empty; add at least one test");
            }
            for item in items {
                if let Some(t) = self.test(
                    item,
                    start.unwrap_or_else(default_start),
                    input.as_ref(),
                    &shared_mocks,
                ) {
                    if let Some(first) = tests
                        .iter()
                        .find(|o: &&TestCase| o.name.value == t.name.value)
                    {
                        self.hint(
                            t.name.span,
                            format!("a test named `{}` is already defined", t.name.value),
                            format!(
                                "the first one is at line {}; give each test its own name",
                                first.name.span.line
                            ),
                        );
                    }
                    tests.push(t);
                }
            }
        }
        Some(TestFile {
            file: self.file.to_string(),
            workflow: workflow?,
            tests,
        })
    }

    fn test(
        &mut self,
        node: &Node,
        file_start: i64,
        file_input: Option<&Map<String, Json>>,
        shared_mocks: &[Mock],
    ) -> Option<TestCase> {
        let f = self.fields(node, "a test", TEST_FIELDS)?;
        let name = self
            .required(
                &f,
                "name",
                "a test",
                "start each test with `- name: what it shows`",
            )
            .and_then(|n| Some(Spanned::new(self.string(n, "`name`")?, n.span)));
        let start = match f.get("start") {
            Some(n) => self.time(n, "`start`"),
            None => Some(file_start),
        };
        let mut input = file_input.cloned().unwrap_or_default();
        if let Some(n) = f.get("input") {
            if let Some(own) = self.mapping(n, "`input`", "`input: { amount_minor: 2500 }`") {
                input.extend(own);
            }
        }
        let mut mocks = match f.get("mocks") {
            Some(n) => self.mocks(n),
            None => Vec::new(),
        };
        mocks.extend(shared_mocks.iter().cloned());
        let mut events = Vec::new();
        if let Some(n) = f.get("events") {
            let example = "  events:\n    - { after: 2h, type: refund.approved, key: ORD-1 }";
            for item in self.list(n, "`events`", example) {
                if let Some(e) = self.event(item) {
                    events.push(e);
                }
            }
        }
        events.sort_by_key(|e: &TimedEvent| e.after_ms);
        let stop_after = self.optional(f.get("stop_after"), |r, n| r.duration(n, "`stop_after`"));
        if let Ok(Some(stop)) = stop_after {
            for e in events.iter().filter(|e| e.after_ms > stop) {
                self.hint(
                    e.span,
                    "this event comes after the test's `stop_after`, so it would never be delivered",
                    format!(
                        "deliver it by {} or raise `stop_after`",
                        Duration::from_millis(stop)
                    ),
                );
            }
        }
        let mut checkpoints = Vec::new();
        if let Some(n) = f.get("checkpoints") {
            let example = "  checkpoints:\n    - { at: 2h, expect: { status: waiting, sla: { first_response: { state: warning } } } }";
            for item in self.list(n, "`checkpoints`", example) {
                if let Some(c) = self.checkpoint(item) {
                    checkpoints.push(c);
                }
            }
        }
        checkpoints.sort_by_key(|c: &Checkpoint| c.at_ms);
        let mut edits = Vec::new();
        if let Some(n) = f.get("edits") {
            let example = "  edits:\n    - after: 3h\n      file: calendars/support-hours.yaml\n      content: |\n        calendar: support-hours\n        ...";
            for item in self.list(n, "`edits`", example) {
                if let Some(e) = self.file_edit(item) {
                    edits.push(e);
                }
            }
        }
        edits.sort_by_key(|e: &FileEdit| e.after_ms);
        if let Ok(Some(stop)) = stop_after {
            for e in edits.iter().filter(|e| e.after_ms > stop) {
                self.hint(
                    e.span,
                    "this edit comes after the test's `stop_after`, so it would never be made",
                    format!(
                        "make it by {} or raise `stop_after`",
                        Duration::from_millis(stop)
                    ),
                );
            }
        }
        if let Ok(Some(stop)) = stop_after {
            for c in checkpoints.iter().filter(|c| c.at_ms > stop) {
                self.hint(
                    c.span,
                    "this checkpoint comes after the test's `stop_after`, so it would never be looked at",
                    format!(
                        "check by {} or raise `stop_after`",
                        Duration::from_millis(stop)
                    ),
                );
            }
        }
        let expect = match f.get("expect") {
            Some(n) => self.expect(n),
            None => {
                self.hint(
                    f.node.span,
                    "a test is missing `expect:`",
                    "say what must happen, e.g. `expect: { status: completed, path: [...] }`",
                );
                None
            }
        };
        let started_by_triggers = match f.get("started_by") {
            None => Some(false),
            Some(n) => match self.string(n, "`started_by`") {
                Some(v) if v == "triggers" => {
                    if let Some(i) = f.get("input") {
                        self.hint(
                            i.span,
                            "a test `started_by: triggers` starts no instance itself, so its `input:` would not be used",
                            "give the input in the events' data, which the triggers map to each workflow's input",
                        );
                    }
                    Some(true)
                }
                Some(_) => {
                    self.hint(
                        n.span,
                        "`started_by` can only be `triggers`",
                        "write `started_by: triggers` to let the events start instances through the workflows' `triggers:`, or leave it out to start one instance with `input:`",
                    );
                    None
                }
                None => None,
            },
        };
        Some(TestCase {
            name: name?,
            input: Json::Object(input),
            start_ms: start?,
            mocks,
            events,
            stop_after_ms: stop_after.ok()?,
            checkpoints,
            edits,
            expect: expect?,
            started_by_triggers: started_by_triggers?,
        })
    }

    fn file_edit(&mut self, node: &Node) -> Option<FileEdit> {
        let f = self.fields(node, "an edit", EDIT_FIELDS)?;
        let after = self
            .required(
                &f,
                "after",
                "an edit",
                "how long after the start the file changes, e.g. `after: 3h`",
            )
            .and_then(|n| self.duration(n, "`after`"));
        let file = self
            .required(
                &f,
                "file",
                "an edit",
                "the file of this folder that changes, e.g. `file: calendars/support-hours.yaml`",
            )
            .and_then(|n| {
                let text = self.string(n, "`file`")?;
                let plain = text.ends_with(".yaml")
                    && !text.contains(".test.")
                    && !text.starts_with('/')
                    && text
                        .split('/')
                        .all(|part| !part.is_empty() && part != "." && part != "..");
                let depth_ok = matches!(
                    text.split('/').collect::<Vec<_>>().as_slice(),
                    [_] | ["calendars", _]
                );
                if !plain || !depth_ok {
                    self.hint(
                        n.span,
                        format!("`file: {text}` is not a workflow or calendar file of this folder"),
                        "name a workflow file beside the test file (`escalation.yaml`) or a calendar in its `calendars/` folder (`calendars/support-hours.yaml`)",
                    );
                    return None;
                }
                Some(text)
            });
        let content = self
            .required(
                &f,
                "content",
                "an edit",
                "the file's new text, e.g. `content: |` followed by the calendar, indented",
            )
            .and_then(|n| self.string(n, "`content`"));
        Some(FileEdit {
            span: f.node.span,
            after_ms: after?,
            file: file?,
            content: content?,
        })
    }

    fn checkpoint(&mut self, node: &Node) -> Option<Checkpoint> {
        let f = self.fields(node, "a checkpoint", CHECKPOINT_FIELDS)?;
        let at = self
            .required(
                &f,
                "at",
                "a checkpoint",
                "how long after the start to look, e.g. `at: 2h`",
            )
            .and_then(|n| self.duration(n, "`at`"));
        let expect = self
            .required(
                &f,
                "expect",
                "a checkpoint",
                "what must hold then, e.g. `expect: { status: waiting }`",
            )
            .and_then(|n| self.expect(n));
        Some(Checkpoint {
            span: f.node.span,
            at_ms: at?,
            expect: expect?,
        })
    }

    fn mocks(&mut self, node: &Node) -> Vec<Mock> {
        let example = "  mocks:\n    - { call: payments.refund, reply: { id: re_1 } }";
        let mut out = Vec::new();
        for item in self.list(node, "`mocks`", example) {
            if let Some(m) = self.mock(item) {
                out.push(m);
            }
        }
        out
    }

    fn mock(&mut self, node: &Node) -> Option<Mock> {
        let f = self.fields(node, "a mock", MOCK_FIELDS)?;
        let target = self
            .required(
                &f,
                "call",
                "a mock",
                "name the call it answers: `call: payments.refund`",
            )
            .and_then(|n| self.target(n, "`call`"));
        let when = self.optional(f.get("when"), |r, n| {
            r.mapping(
                n,
                "`when`",
                "`when: { amount_minor: 2500 }` (answers only calls whose input has these values)",
            )
            .map(Json::Object)
        });
        let times = self.optional(f.get("times"), |r, n| r.count(n, "`times`", 1_000_000));
        let given: Vec<&str> = ["reply", "error", "timeout"]
            .into_iter()
            .filter(|k| f.get(k).is_some())
            .collect();
        let answer = match given.as_slice() {
            [] => {
                self.hint(
                    f.node.span,
                    "a mock needs an answer",
                    "add one of `reply: {...}` (the plugin's output), `error: { code: ..., retryable: true }` or `timeout: true`",
                );
                None
            }
            [one] => match *one {
                "reply" => f.get("reply").map(|n| Answer::Reply(n.to_json())),
                "error" => self.mock_error(f.get("error")?),
                _ => {
                    let n = f.get("timeout")?;
                    match self.boolean(n, "`timeout`")? {
                        true => Some(Answer::Timeout),
                        false => {
                            self.hint(
                                n.span,
                                "`timeout: false` answers nothing",
                                "write `timeout: true`, or give `reply:` or `error:` instead",
                            );
                            None
                        }
                    }
                }
            },
            [_, second, ..] => {
                self.hint(
                    f.key_span(second),
                    format!("a mock gives one answer, but this one also has `{second}`"),
                    "use two mocks with `times:` to answer calls differently, e.g. `times: 2` timeouts, then a reply",
                );
                None
            }
        };
        Some(Mock {
            span: f.node.span,
            target: target?,
            when: when.ok()?,
            answer: answer?,
            times: times.ok()?,
        })
    }

    fn mock_error(&mut self, node: &Node) -> Option<Answer> {
        let f = self.fields(node, "`error`", MOCK_ERROR_FIELDS)?;
        let code = self
            .required(
                &f,
                "code",
                "`error`",
                "e.g. `error: { code: card_declined, retryable: false }`",
            )
            .and_then(|n| self.string(n, "`code`"));
        let message = self.optional(f.get("message"), |r, n| r.string(n, "`message`"));
        let retryable = self.optional(f.get("retryable"), |r, n| r.boolean(n, "`retryable`"));
        let code = code?;
        Some(Answer::Error {
            message: message
                .ok()?
                .unwrap_or_else(|| format!("mocked error `{code}`")),
            code,
            retryable: retryable.ok()?.unwrap_or(false),
        })
    }

    fn event(&mut self, node: &Node) -> Option<TimedEvent> {
        let f = self.fields(node, "an event", EVENT_FIELDS)?;
        let after = match f.get("after") {
            Some(n) => self.duration(n, "`after`"),
            None => Some(0),
        };
        let event_type = self
            .required(&f, "type", "an event", "e.g. `type: refund.approved`")
            .and_then(|n| self.string(n, "`type`"));
        let key = self
            .required(
                &f,
                "key",
                "an event",
                "only waits for this type *and* key wake up, e.g. `key: ORD-1`",
            )
            .and_then(|n| self.string(n, "`key`"));
        let id = self.optional(f.get("id"), |r, n| r.string(n, "`id`"));
        Some(TimedEvent {
            span: f.node.span,
            after_ms: after?,
            event_type: event_type?,
            key: key?,
            data: f.get("data").map_or(Json::Null, Node::to_json),
            id: id.ok()?,
        })
    }

    fn expect(&mut self, node: &Node) -> Option<Expect> {
        let f = self.fields(node, "`expect`", EXPECT_FIELDS)?;
        let mut ok = true;
        let mut e = Expect {
            span: f.node.span,
            ..Expect::default()
        };
        for (field, hint) in NOT_SUPPORTED_YET {
            if f.get(field).is_some() {
                self.hint(
                    f.key_span(field),
                    format!("`{field}` expectations are not supported yet"),
                    *hint,
                );
                ok = false;
            }
        }
        if f.entries.is_empty() {
            self.hint(
                f.node.span,
                "`expect` checks nothing",
                "add e.g. `status: completed` or `path: [...]`",
            );
            ok = false;
        }
        if let Some(n) = f.get("status") {
            match n.as_str().and_then(ExpectedStatus::parse) {
                Some(s) => e.status = Some(Spanned::new(s, n.span)),
                None => {
                    let hint = match n
                        .as_str()
                        .and_then(|s| did_you_mean(s, ExpectedStatus::NAMES))
                    {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("one of: {}", ExpectedStatus::NAMES.join(", ")),
                    };
                    self.hint(n.span, "`status` is not a status", hint);
                    ok = false;
                }
            }
        }
        if let Some(n) = f.get("path") {
            let example = "  path: [check_eligibility, route, pay, refunded]";
            let mut path = Vec::new();
            if !matches!(n.value, Value::Seq(_)) {
                ok = false;
            }
            for item in self.list(n, "`path`", example) {
                match self.string(item, "a step in `path`") {
                    Some(s) => path.push(Spanned::new(s, item.span)),
                    None => ok = false,
                }
            }
            e.path = Some(path);
        }
        e.output = f.get("output").map(Node::to_json);
        if let Some(n) = f.get("vars") {
            match self.mapping(n, "`vars`", "`vars: { eligible: true }`") {
                Some(m) => e.vars = Some(Json::Object(m)),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("error") {
            match self.string(n, "`error` (the error code)") {
                Some(code) => e.error = Some(code),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("calls") {
            let example = "  calls:\n    - { call: payments.refund, with: { amount_minor: 2500 } }";
            let items = self.list(n, "`calls`", example);
            let mut calls = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match self.call(item, i + 1, items.len()) {
                    Some(c) => calls.push(c),
                    None => ok = false,
                }
            }
            e.calls = Some(calls);
        }
        if let Some(n) = f.get("called") {
            let example = "  called:\n    - { call: payments.refund, count: 1 }";
            for item in self.list(n, "`called`", example) {
                match self.called(item) {
                    Some(c) => e.called.push(c),
                    None => ok = false,
                }
            }
        }
        if let Some(n) = f.get("retries_reuse_idempotency_key") {
            match self.boolean(n, "`retries_reuse_idempotency_key`") {
                Some(b) => e.retries_reuse_idempotency_key = b,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("sla") {
            match self.sla(n) {
                Some(list) => e.sla = list,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("instances") {
            match &n.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let count = crate::definition::value::whole(
                            self.file,
                            v,
                            "a count in `instances`",
                            0,
                            1_000_000,
                            &mut self.diags,
                        );
                        match count {
                            Some(c) => e.instances.push((Spanned::new(k.name.clone(), k.span), c)),
                            None => ok = false,
                        }
                    }
                }
                _ => {
                    self.hint(
                        n.span,
                        format!(
                            "`instances` must map workflow names to counts, found {}",
                            n.kind_name()
                        ),
                        "e.g. `instances: { emergency: 1, escalation: 12 }`",
                    );
                    ok = false;
                }
            }
        }
        if let Some(n) = f.get("not_in_journal") {
            let items: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![n],
            };
            for item in items {
                match self.string(item, "an entry of `not_in_journal`") {
                    Some(s) => e.not_in_journal.push(s),
                    None => ok = false,
                }
            }
        }
        ok.then_some(e)
    }

    fn sla(&mut self, node: &Node) -> Option<Vec<ExpectedSla>> {
        let Value::Map(entries) = &node.value else {
            self.hint(
                node.span,
                format!(
                    "`sla` must map clock variables to states, found {}",
                    node.kind_name()
                ),
                "e.g. `sla: { first_response: breached, resolution: running }`",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (key, spec) in entries {
            let (state_node, warn_percent) = match &spec.value {
                Value::Map(_) => {
                    let f = self.fields(spec, "an SLA expectation", SLA_FIELDS)?;
                    let Some(state) = f.get("state") else {
                        self.hint(
                            spec.span,
                            format!("the SLA expectation for `{}` has no `state`", key.name),
                            "add `state: running`, `paused`, `warned` or `breached`",
                        );
                        ok = false;
                        continue;
                    };
                    let pct = match f.get("warn_percent") {
                        Some(n) => match self.count(n, "`warn_percent`", 100) {
                            Some(p) => p,
                            None => {
                                ok = false;
                                continue;
                            }
                        },
                        None => ExpectedSla::DEFAULT_WARN_PERCENT,
                    };
                    (state, pct)
                }
                _ => (spec, ExpectedSla::DEFAULT_WARN_PERCENT),
            };
            let Some(state) = self.string(state_node, "an SLA state") else {
                ok = false;
                continue;
            };
            if !ExpectedSla::STATES.contains(&state.as_str()) {
                self.hint(
                    state_node.span,
                    format!("`{state}` is not an SLA state"),
                    "write one of: running, paused, warned, breached",
                );
                ok = false;
                continue;
            }
            out.push(ExpectedSla {
                span: spec.span,
                clock: key.name.clone(),
                state,
                warn_percent,
            });
        }
        ok.then_some(out)
    }

    /// One `called:` entry: a call, what it must match, and how many times.
    fn called(&mut self, node: &Node) -> Option<ExpectedCount> {
        let f = self.fields(node, "an expected call count", CALLED_FIELDS)?;
        let target = self
            .required(
                &f,
                "call",
                "an expected call count",
                "e.g. `call: payments.refund`",
            )
            .and_then(|n| self.target(n, "`call`"));
        let step = self.optional(f.get("step"), |r, n| r.string(n, "`step`"));
        let with = self.optional(f.get("with"), |r, n| {
            r.mapping(n, "`with`", "`with: { amount_minor: 2500 }`")
                .map(Json::Object)
        });
        // 0 is a count like any other here: "never called".
        let number = |r: &mut Self, n: &Node, what: &str| match n.value {
            Value::Int(i) if (0..=100_000).contains(&i) => Some(i as u32),
            _ => {
                r.err(
                    n.span,
                    format!("{what} must be a whole number from 0 to 100000"),
                );
                None
            }
        };
        let count = self.optional(f.get("count"), |r, n| number(r, n, "`count`"));
        let at_least = self.optional(f.get("at_least"), |r, n| number(r, n, "`at_least`"));
        let at_most = self.optional(f.get("at_most"), |r, n| number(r, n, "`at_most`"));
        let (count, at_least, at_most) = (count.ok()?, at_least.ok()?, at_most.ok()?);
        let (at_least, at_most) = match (count, at_least, at_most) {
            (Some(c), None, None) => (Some(c), Some(c)),
            (None, None, None) => {
                self.hint(
                    f.node.span,
                    "an expected call count says how many",
                    "add `count: 1` (exactly), `at_least: 1` or `at_most: 1`",
                );
                return None;
            }
            (Some(_), _, _) => {
                self.hint(
                    f.node.span,
                    "`count` is exact: it goes without `at_least` and `at_most`",
                    "keep `count`, or give a range with `at_least` and `at_most`",
                );
                return None;
            }
            (None, lo, hi) => {
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    if lo > hi {
                        self.hint(
                            f.node.span,
                            format!("`at_least: {lo}` is more than `at_most: {hi}`"),
                            "swap them",
                        );
                        return None;
                    }
                }
                (lo, hi)
            }
        };
        Some(ExpectedCount {
            span: f.node.span,
            target: target?,
            step: step.ok()?,
            with: with.ok()?,
            at_least,
            at_most,
        })
    }

    fn call(&mut self, node: &Node, position: usize, total: usize) -> Option<ExpectedCall> {
        let f = self.fields(node, "an expected call", CALL_FIELDS)?;
        let target = self
            .required(
                &f,
                "call",
                "an expected call",
                "e.g. `call: payments.refund`",
            )
            .and_then(|n| self.target(n, "`call`"));
        let step = self.optional(f.get("step"), |r, n| {
            Some(Spanned::new(r.string(n, "`step`")?, n.span))
        });
        let attempt = self.optional(f.get("attempt"), |r, n| r.count(n, "`attempt`", 1_000));
        let with = self.optional(f.get("with"), |r, n| {
            r.mapping(n, "`with`", "`with: { amount_minor: 2500 }`")
                .map(Json::Object)
        });
        let same_as = self.optional(f.get("idempotency_key_same_as"), |r, n| {
            let i = r.count(n, "`idempotency_key_same_as`", total.max(1) as i64)? as usize;
            if i == position {
                r.hint(
                    n.span,
                    "a call cannot share its idempotency key with itself",
                    format!("give the position (1 to {total}) of another entry of `calls:`"),
                );
                return None;
            }
            Some(i)
        });
        Some(ExpectedCall {
            span: f.node.span,
            target: target?,
            step: step.ok()?,
            attempt: attempt.ok()?,
            with: with.ok()?,
            idempotency_key_same_as: same_as.ok()?,
        })
    }
}

fn default_start() -> i64 {
    chrono::DateTime::parse_from_rfc3339(DEFAULT_START)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
workflow: refund
start: 2026-11-20T10:00:00Z
input: { order_id: ORD-1, amount_minor: 2500 }
mocks:
  - { call: payments.refund, reply: { id: re_1 } }
tests:
  - name: retried
    input: { amount_minor: 25000 }
    mocks:
      - { call: payments.refund, timeout: true, times: 2 }
    events:
      - { after: 25h, type: refund.approved, key: ORD-1 }
      - { after: 2h, type: refund.approved, key: ORD-2, id: e1 }
    expect:
      status: completed
      path: [a, b]
      calls:
        - { call: payments.refund, attempt: 1 }
        - { call: payments.refund, idempotency_key_same_as: 1 }
      not_in_journal: ann@example.com
"#;

    #[test]
    fn reads_a_full_file() {
        let (file, diags) = read("t.test.yaml", GOOD);
        assert!(diags.is_empty(), "{diags:?}");
        let file = file.unwrap();
        let t = &file.tests[0];
        assert_eq!(file.workflow.value, "refund");
        assert_eq!(t.input["order_id"], "ORD-1");
        assert_eq!(t.input["amount_minor"], 25000);
        assert_eq!(t.mocks.len(), 2);
        assert_eq!(t.mocks[0].answer, Answer::Timeout);
        assert_eq!(t.mocks[0].times, Some(2));
        assert_eq!(t.events[0].key, "ORD-2", "events are sorted by time");
        assert_eq!(t.events[1].after_ms, 25 * 3_600_000);
        assert_eq!(
            t.expect.calls.as_ref().unwrap()[1].idempotency_key_same_as,
            Some(1)
        );
        assert_eq!(t.expect.not_in_journal, vec!["ann@example.com"]);
    }

    fn errors(text: &str) -> Vec<String> {
        let (file, diags) = read("t.test.yaml", text);
        assert!(file.is_none());
        diags.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn unknown_fields_get_did_you_mean_with_positions() {
        let e =
            errors("workflow: refund\ntests:\n  - name: x\n    expcet: { status: completed }\n");
        assert!(
            e.iter().any(|d| d
                .starts_with("t.test.yaml:4:5: error: unknown field `expcet` in a test")
                && d.contains("did you mean `expect`?")),
            "{e:?}"
        );
    }

    #[test]
    fn sla_states_are_checked_when_read() {
        let e = errors(
            "workflow: refund\ntests:\n  - name: x\n    expect:\n      sla: { first_response: met, resolution: { state: warned, warn_percent: 101 } }\n",
        );
        assert!(
            e.iter()
                .any(|d| d.starts_with("t.test.yaml:5:30: error: `met` is not an SLA state")),
            "{e:?}"
        );
        assert!(e.iter().any(|d| d.contains("`warn_percent`")), "{e:?}");
    }

    #[test]
    fn tests_started_by_triggers_count_instances() {
        let (file, diags) = read(
            "t.test.yaml",
            "workflow: emergency\ntests:\n  - name: x\n    started_by: triggers\n    events: [ { type: ticket.created, key: T-1 } ]\n    expect: { instances: { emergency: 1, escalation: 0 } }\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let t = &file.unwrap().tests[0];
        assert!(t.started_by_triggers);
        let counts: Vec<(&str, u32)> = t
            .expect
            .instances
            .iter()
            .map(|(w, n)| (w.value.as_str(), *n))
            .collect();
        assert_eq!(counts, [("emergency", 1), ("escalation", 0)]);
        let e = errors("workflow: w\ntests:\n  - name: x\n    started_by: hand\n    input: { a: 1 }\n    expect: { instances: { w: -1 } }\n");
        assert!(
            e.iter()
                .any(|d| d
                    .starts_with("t.test.yaml:4:17: error: `started_by` can only be `triggers`")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|d| d.contains("a count in `instances`")),
            "{e:?}"
        );
        let e = errors("workflow: w\ntests:\n  - name: x\n    started_by: triggers\n    input: { a: 1 }\n    expect: { instances: { w: 1 } }\n");
        assert!(
            e.iter()
                .any(|d| d.contains("its `input:` would not be used")),
            "{e:?}"
        );
    }

    #[test]
    fn mocks_need_exactly_one_answer() {
        let e = errors("workflow: w\ntests:\n  - name: x\n    mocks:\n      - { call: a.b }\n      - { call: a.b, reply: 1, timeout: true }\n    expect: { status: completed }\n");
        assert!(
            e.iter().any(|d| d.contains("a mock needs an answer")),
            "{e:?}"
        );
        assert!(e.iter().any(|d| d.contains("also has `timeout`")), "{e:?}");
    }

    #[test]
    fn bad_values_are_reported_together() {
        let e = errors("workflow: w\nstart: tomorrow\ntests:\n  - name: x\n    events: [{ after: 5, type: t, key: k }]\n    expect: { status: done, calls: [{ call: pay, idempotency_key_same_as: 1 }] }\n");
        assert!(
            e.iter()
                .any(|d| d.starts_with("t.test.yaml:2:8: error: `start` must be an RFC 3339 time")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|d| d.contains("`after` needs a unit")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|d| d.contains("`status` is not a status")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|d| d.contains("must name a plugin and an action")),
            "{e:?}"
        );
        assert!(e.iter().any(|d| d.contains("with itself")), "{e:?}");
    }
}
