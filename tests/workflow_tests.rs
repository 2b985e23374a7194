//! `casework test`: the shipped workflow tests pass, and the runner reports failures and
//! malformed test files the way support ops can read them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent")
        .to_path_buf()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn casework(args: &[&str], dir: &Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_casework"))
        .args(args)
        .current_dir(dir)
        .env_remove("CASEWORK_LOG")
        .output()
        .expect("run casework");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A folder holding the frozen fixture refund workflow and the given test file.
fn folder_with(test_file: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        repo().join("tests/fixtures/refund.yaml"),
        dir.path().join("refund.yaml"),
    )
    .expect("copy refund.yaml");
    std::fs::write(dir.path().join("refund.test.yaml"), test_file).expect("write test file");
    dir
}

const INPUT: &str = "input: { order_id: ORD-1, payment_ref: pi_1, amount_minor: 25000, refundable_minor: 30000, currency: USD, order_date: 2026-11-10T10:00:00Z, reason: damaged, requested_by: agent-7 }";

#[test]
fn shipped_workflow_tests_pass() {
    let r = casework(&["test", "workflows/"], &repo());
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r
        .stdout
        .contains("workflows/refund.test.yaml (workflow refund)"));
    assert!(r
        .stdout
        .contains("  ok    small refund is paid without approval"));
    assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
    assert!(
        r.stdout.contains("test result: ok. ") && r.stdout.contains(" 0 failed"),
        "{}",
        r.stdout
    );
}

#[test]
fn filter_runs_matching_tests_only() {
    let r = casework(
        &["test", "workflows/refund.yaml", "--filter", "TIMES OUT"],
        &repo(),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("test result: ok. 1 passed; 0 failed;"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stdout.matches("  ok    ").count(), 1, "{}", r.stdout);
}

#[test]
fn a_failing_test_exits_1_with_a_readable_path_diff() {
    let dir = folder_with(&format!(
        r#"workflow: refund
start: 2026-11-20T10:00:00Z
{INPUT}
tests:
  - name: expects payment but nobody approves
    mocks:
      - {{ call: payments.refund, reply: {{ id: re_1 }} }}
    expect:
      status: completed
      path: [check_eligibility, route, wait_for_approval, approval_decision, pay, refunded]
      output: {{ status: refunded }}
  - name: waits for approval
    stop_after: 1h
    expect: {{ status: waiting, path: [check_eligibility, route] }}
"#
    ));
    let r = casework(&["test", "."], dir.path());
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let expected = "  FAIL  expects payment but nobody approves (";
    assert!(r.stdout.contains(expected), "{}", r.stdout);
    let diff = "\
        path differs (- expected, + actual):
            check_eligibility
            route
            wait_for_approval
          - approval_decision
          - pay
          - refunded
          + expire
";
    assert!(r.stdout.contains(diff), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("output: at `status`: expected \"refunded\", got \"expired\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("step wait_for_approval timed out → expire"),
        "what happened is shown: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("  ok    waits for approval"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("test result: FAILED. 1 passed; 1 failed; 0 filtered out"),
        "{}",
        r.stdout
    );
}

/// Checkpoints look part-way through: one that holds passes, one that does not fails the
/// test naming its time, and one after `stop_after` is an error in the file.
#[test]
fn checkpoints_check_part_way_through_and_name_their_time() {
    let dir = folder_with(&format!(
        r#"workflow: refund
start: 2026-11-20T10:00:00Z
{INPUT}
tests:
  - name: waits for approval, then expires
    checkpoints:
      - {{ at: 1h, expect: {{ status: waiting, path: [check_eligibility, route] }} }}
      - {{ at: 2h, expect: {{ status: completed }} }}
    expect: {{ output: {{ status: expired }} }}
"#
    ));
    let r = casework(&["test", "."], dir.path());
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("\n        at 2h: status"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("at 1h:"),
        "the first checkpoint holds: {}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("output:"),
        "the end state holds: {}",
        r.stdout
    );

    let late = folder_with(&format!(
        r#"workflow: refund
start: 2026-11-20T10:00:00Z
{INPUT}
tests:
  - name: looks too late
    stop_after: 1h
    checkpoints:
      - {{ at: 2h, expect: {{ status: waiting }} }}
    expect: {{ status: waiting }}
"#
    ));
    let r = casework(&["test", "."], late.path());
    assert_eq!(r.code, 2, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains(
            "refund.test.yaml:8:11: error: this checkpoint comes after the test's `stop_after`"
        ),
        "{all}"
    );
}

#[test]
fn retries_and_secrets_are_checked() {
    let dir = folder_with(&format!(
        r#"workflow: refund
start: 2026-11-20T10:00:00Z
{INPUT}
tests:
  - name: a leak through the reason
    input: {{ amount_minor: 100, reason: "call ann@example.com" }}
    mocks:
      - {{ call: payments.refund, error: {{ code: rate_limited, retryable: true }}, times: 1 }}
      - {{ call: payments.refund, reply: {{ id: re_1 }} }}
    expect:
      calls:
        - {{ call: payments.refund, attempt: 1 }}
        - {{ call: payments.refund, attempt: 2, idempotency_key_same_as: 1 }}
      retries_reuse_idempotency_key: true
      not_in_journal: [ann@example.com]
"#
    ));
    let r = casework(&["test", "refund.test.yaml"], dir.path());
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("`ann@example.com` is in the journal")
            && r.stdout
                .contains("record 4 (`call_started`, step `pay`), at `input.reason`"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("calls differ"), "{}", r.stdout);
    assert!(!r.stdout.contains("retries_reuse"), "{}", r.stdout);
}

#[test]
fn a_malformed_test_file_gives_file_line_col_errors_and_exit_2() {
    let dir = folder_with(
        "workflow: refund\ntests:\n  - name: typo\n    expcet:\n      status: done\n  - name: bad mock\n    mocks:\n      - { call: payments.refund }\n    expect:\n      sla: { first_response: met }\n",
    );
    let r = casework(&["test", "."], dir.path());
    assert_eq!(r.code, 2, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    for want in [
        "./refund.test.yaml:4:5: error: unknown field `expcet` in a test\n  hint: did you mean `expect`?",
        "./refund.test.yaml:3:5: error: a test is missing `expect:`",
        "./refund.test.yaml:8:11: error: a mock needs an answer",
        "./refund.test.yaml:10:30: error: `met` is not an SLA state",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?} in:\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains("1 test file(s) could not be read"),
        "{}",
        r.stdout
    );

    // Broken YAML: the position of the syntax error.
    std::fs::write(
        dir.path().join("refund.test.yaml"),
        "workflow: refund\ntests:\n  - name: [unclosed\n",
    )
    .unwrap();
    let r = casework(&["test", "refund.test.yaml"], dir.path());
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("refund.test.yaml:") && r.stdout.contains(": error: invalid YAML"),
        "{}",
        r.stdout
    );

    // An unknown workflow name points at the `workflow:` value.
    std::fs::write(
        dir.path().join("refund.test.yaml"),
        "workflow: refnd\ntests:\n  - { name: x, expect: { status: completed } }\n",
    )
    .unwrap();
    let r = casework(&["test", "refund.test.yaml"], dir.path());
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "refund.test.yaml:1:11: error: no workflow named `refnd` is loaded\n  hint: did you mean `refund`?"
        ),
        "{}",
        r.stdout
    );
}

#[test]
fn validate_checks_test_files_and_serve_ignores_them() {
    let r = casework(&["validate", "workflows"], &repo());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let dir =
        folder_with("workflow: refund\ntests:\n  - name: x\n    expect: { stauts: completed }\n");
    let r = casework(&["validate", "."], dir.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "./refund.test.yaml:4:15: error: unknown field `stauts` in `expect`\n  hint: did you mean `status`?"
        ),
        "{}",
        r.stdout
    );
    let files = casework::daemon::registry::workflow_files(dir.path()).unwrap();
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".test.yaml")),
        "{files:?}"
    );
}
