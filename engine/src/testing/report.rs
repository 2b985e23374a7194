//! What `casework test` prints: one line per test, the reasons a test failed (with the path
//! as a diff), what the instance did, and a summary.

use super::runner::CaseResult;
use crate::definition::Duration;

/// Lines of the step-by-step trace shown under a failed test (first and last half).
const TRACE_LINES: usize = 40;

/// Counts for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub filtered_out: usize,
    /// Test files that could not be read (syntax or structure errors), or paths that name
    /// no test file.
    pub broken_files: usize,
    /// `--filter` was given and no test name matched it: nothing ran.
    pub nothing_matched: bool,
    pub elapsed: std::time::Duration,
}

impl Summary {
    pub fn add(&mut self, r: &CaseResult) {
        if r.passed() {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// 0 when every test passed, 1 when one failed, 2 when the tests could not run: a test
    /// file could not be read, a path names none, or the filter matched no test.
    pub fn exit_code(&self) -> u8 {
        if self.broken_files > 0 || self.nothing_matched {
            2
        } else if self.failed > 0 {
            1
        } else {
            0
        }
    }
}

/// The heading printed before the tests of one file.
pub fn file_heading(file: &str, workflow: &str) -> String {
    format!("{file} (workflow {workflow})")
}

/// `ok    name (3 ms, 3d virtual)`, or `FAIL  name ...` followed by why and what happened.
pub fn case_lines(r: &CaseResult) -> Vec<String> {
    let timing = format!(
        "({} ms, {} virtual)",
        r.elapsed.as_millis(),
        Duration::from_millis(r.virtual_ms.max(0) as u64)
    );
    if r.passed() {
        return vec![format!("  ok    {} {timing}", r.name)];
    }
    let mut out = vec![format!("  FAIL  {} {timing}", r.name)];
    for f in &r.failures {
        out.push(format!("        {}", f.title));
        for l in &f.lines {
            out.push(format!("          {l}"));
        }
    }
    if !r.trace.is_empty() {
        out.push("        what happened:".into());
        let t = &r.trace;
        if t.len() <= TRACE_LINES {
            out.extend(t.iter().map(|l| format!("          {l}")));
        } else {
            let half = TRACE_LINES / 2;
            out.extend(t[..half].iter().map(|l| format!("          {l}")));
            out.push(format!(
                "          ... {} more lines ...",
                t.len() - 2 * half
            ));
            out.extend(t[t.len() - half..].iter().map(|l| format!("          {l}")));
        }
    }
    out
}

/// `test result: ok. 7 passed; 0 failed; 0 filtered out; finished in 0.21 s`.
pub fn summary_line(s: &Summary) -> String {
    let verdict = if s.exit_code() == 0 { "ok" } else { "FAILED" };
    let mut line = format!(
        "test result: {verdict}. {} passed; {} failed; {} filtered out",
        s.passed, s.failed, s.filtered_out
    );
    if s.broken_files > 0 {
        line.push_str(&format!(
            "; {} test file(s) could not be read (see errors above)",
            s.broken_files
        ));
    }
    if s.nothing_matched {
        line.push_str("; no test matched the filter");
    }
    line.push_str(&format!("; finished in {:.2} s", s.elapsed.as_secs_f64()));
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::expect::Failure;

    #[test]
    fn failures_show_why_and_what_happened() {
        let r = CaseResult {
            name: "approved".into(),
            failures: vec![Failure::new("path differs (- expected, + actual):")
                .line("  route")
                .line("- pay")
                .line("+ reject")],
            trace: vec!["2026-01-05T09:00:00.000Z  started refund v1".into()],
            elapsed: std::time::Duration::from_millis(4),
            virtual_ms: 3 * 86_400_000,
        };
        let lines = case_lines(&r);
        assert_eq!(lines[0], "  FAIL  approved (4 ms, 3d virtual)");
        assert_eq!(lines[3], "          - pay");
        assert!(lines.contains(&"        what happened:".to_string()));
        let mut s = Summary::default();
        s.add(&r);
        assert_eq!(s.exit_code(), 1);
        assert!(summary_line(&s).starts_with("test result: FAILED. 0 passed; 1 failed"));
    }

    #[test]
    fn a_filter_that_matches_nothing_is_not_a_pass() {
        let s = Summary {
            filtered_out: 3,
            nothing_matched: true,
            ..Summary::default()
        };
        assert_eq!(s.exit_code(), 2);
        let line = summary_line(&s);
        assert!(
            line.starts_with("test result: FAILED. 0 passed; 0 failed; 3 filtered out; no test matched the filter"),
            "{line}"
        );
    }
}
