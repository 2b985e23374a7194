//! SLA clocks and business time, end to end through `casework test` on the workflows and
//! calendar in tests/sla/: the DST weekend, a holiday, a reply in time, a pause that
//! resumes with the remaining time, and business days and time counted back (a call back
//! over Easter, from a Saturday, on a Christmas Eve that closes at noon), and a holiday added while a clock runs.

use std::process::Command;

#[test]
fn sla_deadlines_pauses_and_breaches_come_out_right() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sla");
    let out = Command::new(env!("CARGO_BIN_EXE_casework"))
        .arg("test")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("  ok ").count(), 8, "{stdout}");
}
