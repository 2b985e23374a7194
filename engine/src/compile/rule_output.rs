//! What rules print: `print(...)` and `debug(...)` go to the log, within budgets.
//!
//! A rule runs up to its operation limit, so without a bound one evaluation printing a
//! 32 KiB string in a loop writes gigabytes of log. Each evaluation may write
//! [`MAX_RULE_OUTPUT_BYTES_PER_EVAL`] bytes in [`MAX_RULE_OUTPUT_LINES_PER_EVAL`] lines,
//! and all evaluations of one instance together [`MAX_RULE_OUTPUT_BYTES_PER_INSTANCE`]
//! bytes in [`MAX_RULE_OUTPUT_LINES_PER_INSTANCE`] lines (a line is one `print` or `debug`
//! call). A line that does not fit is cut at the byte budget and ends with `…`; lines
//! after the budget are dropped. One marker line per evaluation says how much was
//! dropped, and once an instance has used up its own budget the rest of its output is
//! dropped without further markers. Dropped bytes and lines are counted for `/metrics`.
//!
//! The print hook is installed once on the shared engine, but evaluations are
//! synchronous (no `.await` inside a rule), so the running evaluation's budget lives in
//! a thread-local set around each evaluation. An instance's usage is kept by instance
//! id for as long as the process runs (an instance leaves memory whenever it parks, so
//! the instance itself cannot hold it) and forgotten when the instance ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes one evaluation (a rule step, a condition, one template expression) may print.
pub const MAX_RULE_OUTPUT_BYTES_PER_EVAL: usize = 4 * 1024;
/// `print`/`debug` calls one evaluation may have logged.
pub const MAX_RULE_OUTPUT_LINES_PER_EVAL: u32 = 20;
/// Bytes all evaluations of one instance may print.
pub const MAX_RULE_OUTPUT_BYTES_PER_INSTANCE: usize = 64 * 1024;
/// `print`/`debug` calls all evaluations of one instance may have logged.
pub const MAX_RULE_OUTPUT_LINES_PER_INSTANCE: u32 = 500;
/// Unfinished instances whose usage is remembered; past this, one is forgotten (its
/// budget starts again) so the table stays bounded however many instances print.
pub const MAX_RULE_OUTPUT_INSTANCES_TRACKED: usize = 100_000;

/// How much was printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    bytes: usize,
    lines: u32,
}

impl Usage {
    fn exhausts_instance(self) -> bool {
        self.bytes >= MAX_RULE_OUTPUT_BYTES_PER_INSTANCE
            || self.lines >= MAX_RULE_OUTPUT_LINES_PER_INSTANCE
    }
}

/// One instance's output so far.
#[derive(Clone, Copy, Debug, Default)]
struct Account {
    used: Usage,
    /// The marker saying this instance's budget is used up has been logged.
    closed: bool,
}

/// What happens to one printed line.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Whole,
    /// Only this many bytes (a char boundary) fit.
    Prefix(usize),
    Dropped,
}

/// The running evaluation's budget.
struct Evaluation {
    instance: Option<String>,
    /// The instance's account before this evaluation, read at its first print.
    earlier: Option<Account>,
    printed: Usage,
    dropped: Usage,
}

impl Evaluation {
    fn admit(&mut self, ledger: &Ledger, text: &str) -> Admit {
        let earlier = match (&self.instance, self.earlier) {
            (Some(id), None) => self.earlier.insert(ledger.account(id)).used,
            (_, earlier) => earlier.unwrap_or_default().used,
        };
        let mut lines_left = MAX_RULE_OUTPUT_LINES_PER_EVAL.saturating_sub(self.printed.lines);
        let mut bytes_left = MAX_RULE_OUTPUT_BYTES_PER_EVAL.saturating_sub(self.printed.bytes);
        if self.instance.is_some() {
            let used = earlier.lines + self.printed.lines;
            lines_left = lines_left.min(MAX_RULE_OUTPUT_LINES_PER_INSTANCE.saturating_sub(used));
            let used = earlier.bytes + self.printed.bytes;
            bytes_left = bytes_left.min(MAX_RULE_OUTPUT_BYTES_PER_INSTANCE.saturating_sub(used));
        }
        if lines_left == 0 || (bytes_left == 0 && !text.is_empty()) {
            self.dropped.lines += 1;
            self.dropped.bytes += text.len();
            return Admit::Dropped;
        }
        self.printed.lines += 1;
        if text.len() <= bytes_left {
            self.printed.bytes += text.len();
            return Admit::Whole;
        }
        let cut = floor_char_boundary(text, bytes_left);
        self.printed.bytes += cut;
        self.dropped.bytes += text.len() - cut;
        Admit::Prefix(cut)
    }
}

/// The largest index `<= at` that starts a character of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

thread_local! {
    static RUNNING: RefCell<Option<Evaluation>> = const { RefCell::new(None) };
}

/// Output usage by instance, and what was dropped, for one rule engine.
#[derive(Default)]
pub(super) struct Ledger {
    instances: Mutex<HashMap<String, Account>>,
    dropped_bytes: AtomicU64,
    dropped_lines: AtomicU64,
}

impl Ledger {
    fn account(&self, instance: &str) -> Account {
        let instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        instances.get(instance).copied().unwrap_or_default()
    }

    fn record(&self, instance: &str, account: Account) {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if !instances.contains_key(instance) && instances.len() >= MAX_RULE_OUTPUT_INSTANCES_TRACKED
        {
            if let Some(any) = instances.keys().next().cloned() {
                instances.remove(&any);
            }
        }
        instances.insert(instance.to_string(), account);
    }

    pub(super) fn forget(&self, instance: &str) {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        instances.remove(instance);
    }

    /// Bytes and lines dropped so far by every evaluation of this engine.
    pub(super) fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_bytes.load(Ordering::Relaxed),
            self.dropped_lines.load(Ordering::Relaxed),
        )
    }

    /// Install the budget of one evaluation for `instance` (None: not an instance's rule,
    /// e.g. a trigger's `when:`); it ends when the guard is dropped.
    pub(super) fn begin(self: &Arc<Self>, instance: Option<&str>) -> EvaluationGuard {
        RUNNING.with(|r| {
            *r.borrow_mut() = Some(Evaluation {
                instance: instance.map(str::to_string),
                earlier: None,
                printed: Usage::default(),
                dropped: Usage::default(),
            })
        });
        EvaluationGuard {
            ledger: self.clone(),
        }
    }

    /// A line printed by the running evaluation: written through `write` as far as the
    /// budgets allow.
    pub(super) fn line(&self, text: &str, write: impl FnOnce(&str)) {
        let admit = RUNNING.with(|r| {
            r.borrow_mut()
                .as_mut()
                .map(|evaluation| evaluation.admit(self, text))
        });
        match admit {
            Some(Admit::Whole) => write(text),
            Some(Admit::Prefix(cut)) => write(&format!("{}…", &text[..cut])),
            Some(Admit::Dropped) => {}
            // Only `Rules::eval` runs rules, and it always installs a budget first.
            None => debug_assert!(false, "a rule printed outside an evaluation"),
        }
    }

    fn finish(&self, evaluation: Evaluation) {
        let Evaluation {
            instance,
            earlier,
            printed,
            dropped,
        } = evaluation;
        let earlier = earlier.unwrap_or_default();
        let used = Usage {
            bytes: earlier.used.bytes + printed.bytes,
            lines: earlier.used.lines + printed.lines,
        };
        let exhausted = instance.is_some() && used.exhausts_instance();
        let cut = dropped != Usage::default();
        if let Some(id) = &instance {
            if printed != Usage::default() || cut {
                let closed = earlier.closed || (cut && exhausted);
                self.record(id, Account { used, closed });
            }
        }
        if !cut {
            return;
        }
        self.dropped_bytes
            .fetch_add(dropped.bytes as u64, Ordering::Relaxed);
        self.dropped_lines
            .fetch_add(u64::from(dropped.lines), Ordering::Relaxed);
        // The marker for the instance's whole budget is already in the log.
        if earlier.closed {
            return;
        }
        tracing::warn!(
            target: "casework::rule",
            "{}",
            truncation_marker(dropped, exhausted)
        );
    }
}

/// The line logged once per evaluation whose output was cut.
fn truncation_marker(dropped: Usage, instance_exhausted: bool) -> String {
    let lines = match dropped.lines {
        1 => "1 line".to_string(),
        n => format!("{n} lines"),
    };
    let what = format!(
        "… [rule output truncated: {} bytes dropped, {lines} not shown;",
        dropped.bytes
    );
    if instance_exhausted {
        format!(
            "{what} an instance may print {MAX_RULE_OUTPUT_BYTES_PER_INSTANCE} bytes in \
             {MAX_RULE_OUTPUT_LINES_PER_INSTANCE} lines, and this one's later output is dropped]"
        )
    } else {
        format!(
            "{what} one evaluation may print {MAX_RULE_OUTPUT_BYTES_PER_EVAL} bytes in \
             {MAX_RULE_OUTPUT_LINES_PER_EVAL} lines]"
        )
    }
}

/// Ends the running evaluation's budget (also when the evaluation fails or panics).
pub(super) struct EvaluationGuard {
    ledger: Arc<Ledger>,
}

impl Drop for EvaluationGuard {
    fn drop(&mut self) {
        if let Some(evaluation) = RUNNING.with(|r| r.borrow_mut().take()) {
            self.ledger.finish(evaluation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::rules::{Bindings, Limits, Rules};
    use serde_json::{json, Map};

    /// Log lines (message only) written while `f` runs on this thread.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        let buffer = crate::log_capture::Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buffer.text();
        text.lines().map(str::to_string).collect()
    }

    /// Runs `script` as one evaluation of `instance`.
    fn eval(rules: &Rules, instance: Option<&str>, script: &str) {
        let ast = rules.compile_script(script).expect("compiles");
        rules
            .eval(
                &ast,
                &Bindings {
                    input: &json!({}),
                    vars: &Map::new(),
                    locals: &Map::new(),
                    now_ms: 0,
                    instance,
                },
            )
            .expect("runs");
    }

    fn fresh() -> Rules {
        Rules::new(Limits::default())
    }

    #[test]
    fn one_evaluation_prints_at_most_4096_bytes_and_says_how_much_it_dropped() {
        let rules = fresh();
        let lines = logged(|| {
            eval(
                &rules,
                None,
                r#"let s = ""; s.pad(10000, 'x'); print(s); print("gone");"#,
            )
        });
        assert_eq!(
            lines,
            [
                format!("{}…", "x".repeat(MAX_RULE_OUTPUT_BYTES_PER_EVAL)),
                "… [rule output truncated: 5908 bytes dropped, 1 line not shown; one evaluation \
                 may print 4096 bytes in 20 lines]"
                    .to_string(),
            ]
        );
        assert_eq!(rules.output_dropped(), (5908, 1));
    }

    #[test]
    fn a_line_cut_at_the_budget_keeps_whole_characters() {
        let rules = fresh();
        // 4095 bytes of `a`, then `ü` (2 bytes) would end one byte past the budget.
        let lines = logged(|| {
            eval(
                &rules,
                None,
                r#"let s = ""; s.pad(4095, 'a'); print(s + "üz");"#,
            )
        });
        assert_eq!(lines[0], format!("{}…", "a".repeat(4095)));
        assert_eq!(rules.output_dropped(), (3, 0));
    }

    #[test]
    fn one_evaluation_prints_at_most_20_lines() {
        let rules = fresh();
        let lines = logged(|| eval(&rules, None, r#"for i in 0..25 { print(`line ${i}`); }"#));
        assert_eq!(lines.len(), MAX_RULE_OUTPUT_LINES_PER_EVAL as usize + 1);
        assert_eq!(lines[19], "line 19");
        assert_eq!(
            lines[20],
            "… [rule output truncated: 35 bytes dropped, 5 lines not shown; one evaluation may \
             print 4096 bytes in 20 lines]"
        );
        assert_eq!(rules.output_dropped(), (35, 5));
    }

    #[test]
    fn an_endless_printing_loop_writes_one_budget_not_gigabytes() {
        let rules = fresh();
        let ast = rules
            .compile_script(r#"let s = ""; s.pad(32768, 'y'); loop { print(s); }"#)
            .unwrap();
        let b = Bindings {
            input: &json!({}),
            vars: &Map::new(),
            locals: &Map::new(),
            now_ms: 0,
            instance: Some("inst-loop"),
        };
        let lines = logged(|| {
            let err = rules.eval(&ast, &b).unwrap_err();
            assert!(err.message.contains("operations"), "{err}");
        });
        let written: usize = lines.iter().map(String::len).sum();
        assert_eq!(lines.len(), 2, "one cut line and the marker");
        assert!(
            written < 2 * MAX_RULE_OUTPUT_BYTES_PER_EVAL,
            "{written} bytes"
        );
        let (bytes, dropped_lines) = rules.output_dropped();
        assert!(dropped_lines > 1000, "{dropped_lines}");
        assert_eq!(bytes, (dropped_lines + 1) * 32768 - 4096);
    }

    #[test]
    fn an_instance_prints_at_most_65536_bytes_then_one_marker_then_nothing() {
        let rules = fresh();
        let full = r#"let s = ""; s.pad(4096, 'z'); print(s);"#;
        let lines = logged(|| {
            for _ in 0..16 {
                eval(&rules, Some("inst-a"), full);
            }
            eval(&rules, Some("inst-a"), r#"print("more");"#);
            eval(&rules, Some("inst-a"), r#"print("again");"#);
            eval(&rules, Some("inst-b"), r#"print("other instance");"#);
            eval(&rules, None, r#"print("a trigger");"#);
        });
        assert_eq!(lines.len(), 16 + 1 + 2);
        assert!(lines[..16].iter().all(|l| l == &"z".repeat(4096)));
        assert_eq!(
            lines[16],
            "… [rule output truncated: 4 bytes dropped, 1 line not shown; an instance may \
             print 65536 bytes in 500 lines, and this one's later output is dropped]"
        );
        assert_eq!(lines[17..], ["other instance", "a trigger"]);
        assert_eq!(rules.output_dropped(), (4 + 5, 2));

        // An ended instance's account is closed; its id starts afresh (retried instances
        // keep their id, so the driver forgets only on a final status).
        rules.forget_instance("inst-a");
        let lines = logged(|| eval(&rules, Some("inst-a"), r#"print("after");"#));
        assert_eq!(lines, ["after"]);
    }

    #[test]
    fn an_instance_prints_at_most_500_lines() {
        let rules = fresh();
        let twenty = r#"for i in 0..20 { print("l"); }"#;
        let lines = logged(|| {
            for _ in 0..25 {
                eval(&rules, Some("inst-c"), twenty);
            }
            eval(&rules, Some("inst-c"), r#"print("l"); print("l");"#);
        });
        assert_eq!(lines.len(), MAX_RULE_OUTPUT_LINES_PER_INSTANCE as usize + 1);
        assert_eq!(
            lines[500],
            "… [rule output truncated: 2 bytes dropped, 2 lines not shown; an instance may \
             print 65536 bytes in 500 lines, and this one's later output is dropped]"
        );
        assert_eq!(rules.output_dropped(), (2, 2));
    }

    #[test]
    fn output_the_log_level_hides_uses_no_budget() {
        let rules = fresh();
        // `debug` is below the captured level (info): nothing is written or counted.
        let lines = logged(|| {
            eval(&rules, Some("inst-d"), r#"for i in 0..600 { debug("d"); }"#);
            eval(&rules, Some("inst-d"), r#"print("still shown");"#);
        });
        assert_eq!(lines, ["still shown"]);
        assert_eq!(rules.output_dropped(), (0, 0));
    }

    #[test]
    fn the_table_of_instances_is_bounded() {
        let ledger = Ledger::default();
        for i in 0..MAX_RULE_OUTPUT_INSTANCES_TRACKED + 10 {
            ledger.record(&format!("inst-{i}"), Account::default());
        }
        let tracked = ledger.instances.lock().unwrap().len();
        assert_eq!(tracked, MAX_RULE_OUTPUT_INSTANCES_TRACKED);
    }
}
