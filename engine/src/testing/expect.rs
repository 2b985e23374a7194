//! Comparing what a test expected with what the instance did.

use super::model::{Expect, ExpectedCall, ExpectedCount};
use crate::runtime::Record;
use serde_json::Value;

/// One unmet expectation: a headline and the lines that explain it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub title: String,
    pub lines: Vec<String>,
}

impl Failure {
    pub fn new(title: impl Into<String>) -> Self {
        Failure {
            title: title.into(),
            lines: Vec::new(),
        }
    }

    pub fn line(mut self, l: impl Into<String>) -> Self {
        self.lines.push(l.into());
        self
    }
}

/// A plugin call attempt as the journal recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActualCall {
    pub frame: u32,
    pub target: String,
    pub step: String,
    pub attempt: u32,
    pub key: String,
    pub input: Value,
}

/// What a test run observed.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub root_id: String,
    /// `completed`, `failed`, `cancelled`, or `waiting` (not finished).
    pub status: String,
    /// For `waiting`: what each current step is doing, e.g. `wait_for_approval (waiting for event)`.
    pub current: Vec<String>,
    pub output: Option<Value>,
    pub vars: Value,
    pub error: Option<crate::runtime::StepError>,
    pub path: Vec<String>,
    pub calls: Vec<ActualCall>,
    /// Every record of every instance of the test (the instance and its subworkflows).
    pub journal: Vec<(String, Record)>,
    /// Log lines the engine wrote during the test, and the step-by-step trace.
    pub logs: Vec<String>,
    /// Calls no mock answered.
    pub unanswered: Vec<(String, Value)>,
    /// Virtual time when the test ended, for SLA states.
    pub ended_at: i64,
    /// The calendars the run used, for SLA states.
    pub calendars: std::sync::Arc<crate::calendar::Calendars>,
    /// Instances in the test's store, by workflow name (subworkflows' included).
    pub instances: std::collections::BTreeMap<String, u32>,
}

/// Partial match: a mapping matches when every key it lists matches (at every depth; `null`
/// matches a missing key); a list matches a list of the same length item by item; numbers
/// match by value (`2500` matches `2500.0`); anything else must be equal.
pub fn matches(expected: &Value, actual: &Value) -> bool {
    mismatch(expected, actual, "").is_none()
}

/// Where `actual` first differs from `expected`, in words; `None` if it matches.
pub fn mismatch(expected: &Value, actual: &Value, at: &str) -> Option<String> {
    let mut all = Vec::new();
    differences(expected, actual, at, &mut all, 1);
    all.into_iter().next()
}

/// Every place `actual` differs from `expected` (at most [`MAX_DIFFERENCES`]), so a test
/// shows all its mismatches at once.
pub fn mismatches(expected: &Value, actual: &Value) -> Vec<String> {
    let mut all = Vec::new();
    differences(expected, actual, "", &mut all, MAX_DIFFERENCES);
    all
}

/// Differences reported per expectation; more are counted, not listed.
pub const MAX_DIFFERENCES: usize = 20;

fn differences(expected: &Value, actual: &Value, at: &str, out: &mut Vec<String>, max: usize) {
    if out.len() >= max {
        return;
    }
    let here = if at.is_empty() {
        String::new()
    } else {
        format!("at `{at}`: ")
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match a.get(k) {
                    Some(av) => differences(ev, av, &path, out, max),
                    None if ev.is_null() => {}
                    None if out.len() < max => {
                        out.push(format!("`{path}` is missing (expected {})", short(ev)))
                    }
                    None => {}
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!(
                    "{here}expected a list of {} item(s), got {}: {}",
                    e.len(),
                    a.len(),
                    short(actual)
                ));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                differences(ev, av, &format!("{at}[{i}]"), out, max);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let same = match (e.as_i64(), a.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => e.as_f64() == a.as_f64(),
            };
            if !same {
                out.push(format!(
                    "{here}expected {}, got {}",
                    short(expected),
                    short(actual)
                ));
            }
        }
        (e, a) if e == a => {}
        _ => out.push(format!(
            "{here}expected {}, got {}",
            short(expected),
            short(actual)
        )),
    }
}

/// Compact JSON, cut to a readable length.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        let cut: String = s.chars().take(157).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Every unmet expectation of `e`, in the order they are written in the file format.
pub fn check(e: &Expect, o: &Observed) -> Vec<Failure> {
    let mut out = Vec::new();
    if let Some(s) = &e.status {
        let want = s.value.as_str();
        if want != o.status {
            let mut f = Failure::new(format!("status: expected {want}, got {}", o.status));
            if let Some(err) = &o.error {
                f = f.line(format!("error: {err}"));
            }
            if !o.current.is_empty() {
                f = f.line(format!("still at: {}", o.current.join(", ")));
            }
            out.push(f);
        }
    }
    if let Some(path) = &e.path {
        let want: Vec<&str> = path.iter().map(|s| s.value.as_str()).collect();
        let got: Vec<&str> = o.path.iter().map(String::as_str).collect();
        if want != got {
            let mut f = Failure::new("path differs (- expected, + actual):");
            f.lines = path_diff(&want, &got);
            out.push(f);
        }
    }
    if let Some(want) = &e.output {
        match &o.output {
            None => out.push(Failure::new(format!(
                "output: expected {}, but the instance has no output (it is {})",
                short(want),
                o.status
            ))),
            Some(got) => {
                let all = mismatches(want, got);
                if let Some((first, rest)) = all.split_first() {
                    let mut f = Failure::new(format!("output: {first}"));
                    for why in rest {
                        f = f.line(format!("output: {why}"));
                    }
                    out.push(f.line(format!("actual output: {}", short(got))));
                }
            }
        }
    }
    if let Some(want) = &e.vars {
        let all = mismatches(want, &o.vars);
        if let Some((first, rest)) = all.split_first() {
            let mut f = Failure::new(format!("vars: {first}"));
            for why in rest {
                f = f.line(format!("vars: {why}"));
            }
            out.push(f);
        }
    }
    if let Some(code) = &e.error {
        match &o.error {
            Some(err) if &err.code == code => {}
            Some(err) => out.push(Failure::new(format!(
                "error: expected code `{code}`, got `{}` ({err})",
                err.code
            ))),
            None => out.push(Failure::new(format!(
                "error: expected code `{code}`, but the instance has no error (it is {})",
                o.status
            ))),
        }
    }
    for want in &e.called {
        out.extend(check_count(want, &o.calls));
    }
    if let Some(calls) = &e.calls {
        out.extend(check_calls(calls, &o.calls));
    }
    if e.retries_reuse_idempotency_key {
        out.extend(check_retry_keys(&o.calls));
    }
    for want in &e.sla {
        if let Some(f) = check_sla(want, o) {
            out.push(f);
        }
    }
    for text in &e.not_in_journal {
        if let Some(f) = find_text(text, o) {
            out.push(f);
        }
    }
    for (workflow, want) in &e.instances {
        let got = o.instances.get(&workflow.value).copied().unwrap_or(0);
        if got != *want {
            let mut f = Failure::new(format!(
                "instances of `{}`: expected {want}, got {got}",
                workflow.value
            ));
            let all: Vec<String> = o
                .instances
                .iter()
                .map(|(w, n)| format!("{w}: {n}"))
                .collect();
            f = f.line(if all.is_empty() {
                "no instance was started".to_string()
            } else {
                format!("instances by workflow: {}", all.join(", "))
            });
            out.push(f);
        }
    }
    if !out.is_empty() {
        for (target, input) in &o.unanswered {
            out.push(Failure::new(format!(
                "note: no mock answered a call to `{target}` with input {}",
                short(input)
            )));
        }
    }
    out
}

fn describe_call(c: &ActualCall) -> String {
    format!(
        "{} (step {}, attempt {}, key {}) with {}",
        c.target,
        c.step,
        c.attempt,
        c.key,
        short(&c.input)
    )
}

fn check_sla(want: &super::model::ExpectedSla, o: &Observed) -> Option<Failure> {
    use crate::calendar::sla::{SlaClock, SlaState};
    let name = &want.clock;
    let Some(raw) = o.vars.get(name) else {
        return Some(Failure::new(format!(
            "sla: there is no variable `{name}`; keep the clock in one, e.g. `vars.{name} = sla_start(...)`"
        )));
    };
    let clock: SlaClock = match serde_json::from_value(raw.clone()) {
        Ok(c) => c,
        Err(_) => {
            return Some(Failure::new(format!(
                "sla: `vars.{name}` is not an SLA clock (made with sla_start): {}",
                short(raw)
            )))
        }
    };
    let status = match clock.status(&o.calendars, o.ended_at, want.warn_percent) {
        Ok(s) => s,
        Err(e) => return Some(Failure::new(format!("sla: `{name}`: {e}"))),
    };
    let got = match status.state {
        SlaState::Running => "running",
        SlaState::Paused => "paused",
        SlaState::Warned => "warned",
        SlaState::Breached => "breached",
    };
    (got != want.state).then(|| {
        let mut f = Failure::new(format!(
            "sla: `{name}` expected {}, got {got} at {}",
            want.state,
            crate::compile::rules::format_ms(o.ended_at)
        ))
        .line(format!(
            "used {} of {} (warning at {}%)",
            crate::definition::Duration::from_millis(status.used_ms.max(0) as u64),
            crate::definition::Duration::from_millis(clock.target_ms.max(0) as u64),
            want.warn_percent
        ));
        if let Some(d) = status.deadline {
            f = f.line(format!("deadline {}", crate::compile::rules::format_ms(d)));
        }
        f
    })
}

/// A `called:` entry: how many attempts match, against its bounds.
fn check_count(want: &ExpectedCount, got: &[ActualCall]) -> Option<Failure> {
    let n = got
        .iter()
        .filter(|g| {
            g.target == want.target
                && want.step.as_ref().is_none_or(|s| *s == g.step)
                && want.with.as_ref().is_none_or(|w| matches(w, &g.input))
        })
        .count() as u32;
    let low = want.at_least.is_some_and(|lo| n < lo);
    let high = want.at_most.is_some_and(|hi| n > hi);
    if !low && !high {
        return None;
    }
    let bound = match (want.at_least, want.at_most) {
        (Some(lo), Some(hi)) if lo == hi => format!("exactly {lo}"),
        (Some(lo), Some(hi)) => format!("{lo} to {hi}"),
        (Some(lo), None) => format!("at least {lo}"),
        (None, Some(hi)) => format!("at most {hi}"),
        (None, None) => "any number".into(),
    };
    let mut what = format!("`{}`", want.target);
    if let Some(s) = &want.step {
        what.push_str(&format!(" from step `{s}`"));
    }
    if let Some(w) = &want.with {
        what.push_str(&format!(" with {}", short(w)));
    }
    let mut f = Failure::new(format!(
        "called: expected {bound} call attempt(s) of {what}, the instance made {n}"
    ));
    f.lines.push("calls made:".into());
    if got.is_empty() {
        f.lines.push("  (none)".into());
    }
    for (i, c) in got.iter().enumerate() {
        f.lines.push(format!("  {}. {}", i + 1, describe_call(c)));
    }
    Some(f)
}

fn check_calls(want: &[ExpectedCall], got: &[ActualCall]) -> Vec<Failure> {
    let mut problems = Vec::new();
    for (i, w) in want.iter().enumerate() {
        let Some(g) = got.get(i) else { break };
        let mut why = Vec::new();
        if w.target != g.target {
            why.push(format!("expected `{}`, got `{}`", w.target, g.target));
        }
        if let Some(step) = &w.step {
            if step.value != g.step {
                why.push(format!("expected step `{}`, got `{}`", step.value, g.step));
            }
        }
        if let Some(a) = w.attempt {
            if a != g.attempt {
                why.push(format!("expected attempt {a}, got {}", g.attempt));
            }
        }
        if let Some(with) = &w.with {
            if let Some(m) = mismatch(with, &g.input, "") {
                why.push(format!("input {m}"));
            }
        }
        if let Some(j) = w.idempotency_key_same_as {
            if let Some(other) = got.get(j - 1) {
                if other.key != g.key {
                    why.push(format!(
                        "idempotency key `{}` differs from call {j}'s `{}`",
                        g.key, other.key
                    ));
                }
            }
        }
        if !why.is_empty() {
            problems.push(format!("call {}: {}", i + 1, why.join("; ")));
        }
    }
    if want.len() != got.len() {
        problems.push(format!(
            "expected {} call(s), the instance made {}",
            want.len(),
            got.len()
        ));
    }
    if problems.is_empty() {
        return Vec::new();
    }
    let mut f = Failure::new("calls differ:");
    f.lines.extend(problems);
    f.lines.push("calls made:".into());
    if got.is_empty() {
        f.lines.push("  (none)".into());
    }
    for (i, c) in got.iter().enumerate() {
        f.lines.push(format!("  {}. {}", i + 1, describe_call(c)));
    }
    vec![f]
}

/// Every attempt of one step visit must carry the key of its first attempt.
fn check_retry_keys(calls: &[ActualCall]) -> Vec<Failure> {
    let mut first: std::collections::HashMap<(u32, &str), &ActualCall> = Default::default();
    let mut retries = 0;
    let mut out = Vec::new();
    for c in calls {
        if c.attempt <= 1 {
            first.insert((c.frame, c.step.as_str()), c);
            continue;
        }
        retries += 1;
        match first.get(&(c.frame, c.step.as_str())) {
            Some(f) if f.key == c.key => {}
            Some(f) => out.push(
                Failure::new(format!(
                    "retries_reuse_idempotency_key: attempt {} of step `{}` used key `{}`, attempt 1 used `{}`",
                    c.attempt, c.step, c.key, f.key
                )),
            ),
            None => out.push(Failure::new(format!(
                "retries_reuse_idempotency_key: attempt {} of step `{}` has no first attempt in the journal",
                c.attempt, c.step
            ))),
        }
    }
    if retries == 0 {
        out.push(
            Failure::new(
                "retries_reuse_idempotency_key: no call was retried, so no key was reused",
            )
            .line(
                "make a mock fail first, e.g. `{ call: payments.refund, timeout: true, times: 2 }`",
            ),
        );
    }
    out
}

/// Look for `text` in every journal record and log line. The instance's own input, in its
/// `started` record, is not searched: the engine must keep it to run the instance.
fn find_text(text: &str, o: &Observed) -> Option<Failure> {
    for (n, (id, r)) in o.journal.iter().enumerate() {
        let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
        if id == &o.root_id && matches!(r, Record::Started { .. }) {
            if let Some(m) = v.as_object_mut() {
                m.remove("input");
            }
        }
        if let Some(at) = locate(&v, text, "") {
            let step = v
                .get("step")
                .and_then(Value::as_str)
                .map(|s| format!(", step `{s}`"))
                .unwrap_or_default();
            let whose = if id == &o.root_id {
                String::new()
            } else {
                format!(" of subworkflow instance {id}")
            };
            return Some(
                Failure::new(format!("`{text}` is in the journal")).line(format!(
                    "record {} (`{}`{step}){whose}, at `{at}`",
                    n + 1,
                    r.kind()
                )),
            );
        }
    }
    o.logs.iter().find(|l| l.contains(text)).map(|l| {
        Failure::new(format!("`{text}` is in the log"))
            .line(l.chars().take(300).collect::<String>())
    })
}

/// The JSON path of the first string (or key) containing `text`.
fn locate(v: &Value, text: &str, at: &str) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::String(s) if s.contains(text) => Some(if at.is_empty() {
            "(value)".into()
        } else {
            at.to_string()
        }),
        Value::Number(n) if n.to_string() == text => Some(at.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| locate(x, text, &format!("{at}[{i}]"))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            if k.contains(text) {
                Some(join(k))
            } else {
                locate(x, text, &join(k))
            }
        }),
        _ => None,
    }
}

/// A line diff of two step lists: `  ` both, `- ` expected only, `+ ` actual only.
pub fn path_diff(want: &[&str], got: &[&str]) -> Vec<String> {
    // Longest common subsequence; paths are short.
    let (n, m) = (want.len(), got.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if want[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && want[i] == got[j] {
            out.push(format!("  {}", want[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", want[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", got[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn call_counts_hold_in_any_order() {
        let call = |target: &str, template: &str| ActualCall {
            frame: 0,
            target: target.into(),
            step: "s".into(),
            attempt: 1,
            key: "k".into(),
            input: json!({"data": {"template": template}}),
        };
        let got = [
            call("paging.send_webhook", "refund_paid"),
            call("payments.refund", ""),
            call("paging.send_webhook", "refund_paid"),
        ];
        let count = |target: &str, with: Option<Value>, lo: Option<u32>, hi: Option<u32>| {
            check_count(
                &ExpectedCount {
                    span: Default::default(),
                    target: target.into(),
                    step: None,
                    with,
                    at_least: lo,
                    at_most: hi,
                },
                &got,
            )
            .map(|f| f.title)
        };
        assert_eq!(count("payments.refund", None, Some(1), Some(1)), None);
        assert_eq!(
            count("paging.send_webhook", Some(json!({"data": {"template": "refund_paid"}})), None, Some(1)),
            Some("called: expected at most 1 call attempt(s) of `paging.send_webhook` with {\"data\":{\"template\":\"refund_paid\"}}, the instance made 2".into())
        );
        assert_eq!(
            count("crm.get_customer", None, Some(1), None),
            Some("called: expected at least 1 call attempt(s) of `crm.get_customer`, the instance made 0".into())
        );
        assert_eq!(count("crm.get_customer", None, Some(0), Some(0)), None);
    }

    #[test]
    fn every_difference_is_listed() {
        let actual = json!({"a": 1, "b": {"c": "x", "d": [1, 2]}, "e": true});
        assert_eq!(
            mismatches(
                &json!({"a": 2, "b": {"c": "y", "d": [1, 3]}, "e": true, "f": 1}),
                &actual
            ),
            [
                "at `a`: expected 2, got 1",
                "at `b.c`: expected \"y\", got \"x\"",
                "at `b.d[1]`: expected 3, got 2",
                "`f` is missing (expected 1)",
            ]
        );
        assert!(mismatches(&json!({"a": 1}), &actual).is_empty());
        let many: serde_json::Map<String, Value> =
            (0..50).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(
            mismatches(&Value::Object(many), &json!({})).len(),
            MAX_DIFFERENCES
        );
    }

    #[test]
    fn partial_match_at_every_depth() {
        let actual =
            json!({"status": "refunded", "refund": {"id": "re_1", "amount": 2500}, "list": [1, 2]});
        assert!(matches(&json!({"refund": {"id": "re_1"}}), &actual));
        assert!(matches(
            &json!({"refund": {"amount": 2500.0}, "gone": null}),
            &actual
        ));
        assert_eq!(
            mismatch(&json!({"refund": {"id": "re_2"}}), &actual, ""),
            Some("at `refund.id`: expected \"re_2\", got \"re_1\"".into())
        );
        assert!(mismatch(&json!({"missing": 1}), &actual, "")
            .unwrap()
            .contains("`missing` is missing"));
        assert!(!matches(&json!({"list": [1]}), &actual));
    }

    #[test]
    fn path_diff_marks_expected_and_actual() {
        let d = path_diff(
            &["check", "route", "wait", "pay", "refunded"],
            &["check", "route", "pay", "failed"],
        );
        assert_eq!(
            d,
            vec![
                "  check",
                "  route",
                "- wait",
                "  pay",
                "- refunded",
                "+ failed"
            ]
        );
    }

    #[test]
    fn finds_secrets_outside_the_own_input() {
        let started = Record::Started {
            workflow: "w".into(),
            version: 1,
            hash: "h".into(),
            input: json!({"email": "ann@example.com"}),
            idempotency_key: None,
            parent: None,
            at: 0,
        };
        let leaked = Record::CallStarted {
            frame: 0,
            step: "notify".into(),
            attempt: 1,
            key: "k".into(),
            input: json!({"to": ["ann@example.com"]}),
            at: 0,
        };
        let mut o = Observed {
            root_id: "i".into(),
            journal: vec![("i".into(), started)],
            ..Observed::default()
        };
        assert_eq!(find_text("ann@example.com", &o), None);
        o.journal.push(("i".into(), leaked));
        let f = find_text("ann@example.com", &o).unwrap();
        assert_eq!(
            f.lines,
            vec!["record 2 (`call_started`, step `notify`), at `input.to[0]`"]
        );
        o.journal.pop();
        o.logs.push("sent code 123456 to ann@example.com".into());
        assert!(find_text("123456", &o)
            .unwrap()
            .title
            .contains("in the log"));
    }
}
