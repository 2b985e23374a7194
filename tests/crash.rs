//! Kill the real daemon with SIGKILL while instances run (mid plugin call, mid wait), restart
//! it, and check every instance completes with each idempotency key applied exactly once.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};

mod support {
    pub mod daemon;
}

const WORKFLOW: &str = r#"
workflow: crashy
version: 1
input: { n: integer }
steps:
  - id: charge
    call: ledger.charge
    with: { n: "${input.n}", delay_ms: 150 }
    retry: { max_attempts: 10, backoff: 100ms, max_delay: 1s }
    next: approval
  - id: approval
    wait: { event: go, key: input.n }
    next: notify
  - id: notify
    call: ledger.notify
    with: { n: "${input.n}", delay_ms: 100, fail: true }
    retry: { max_attempts: 10, backoff: 100ms, max_delay: 1s }
    next: done
  - id: done
    complete: { output: "${input.n}" }
"#;

fn spawn(dir: &Path, port: u16) -> Daemon {
    let mut c = daemon::command(dir, port);
    c.arg("--test-ledger").arg(dir.join("ledger.txt"));
    daemon::start(c, port)
}

fn post(addr: &str, path: &str, body: Value) -> Option<Value> {
    let mut resp = ureq::post(&format!("{addr}{path}")).send_json(&body).ok()?;
    resp.body_mut().read_json().ok()
}

fn status(addr: &str, id: &str) -> Option<String> {
    let mut resp = ureq::get(&format!("{addr}/v1/instances/{id}"))
        .call()
        .ok()?;
    let v: Value = resp.body_mut().read_json().ok()?;
    v["status"].as_str().map(str::to_string)
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_repeats_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/crashy.yaml"), WORKFLOW).unwrap();
    let port = 17_000 + (std::process::id() % 2_000) as u16;
    let n = 30;
    let mut d = spawn(dir.path(), port);
    let mut ids = BTreeMap::new();
    for i in 0..n {
        let v = post(&d.addr, "/v1/workflows/crashy/instances", json!({"n": i})).expect("start");
        ids.insert(i, v["id"].as_str().unwrap().to_string());
    }
    // Kill three times at pseudo-random moments (mid call and mid wait), delivering events in between.
    let mut seed = std::process::id() as u64;
    for round in 0..3 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(50 + (seed >> 33) % 300));
        for i in (round..n).step_by(3) {
            let _ = post(
                &d.addr,
                "/v1/events",
                json!({"type": "go", "key": i.to_string()}),
            );
        }
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        d = spawn(dir.path(), port);
    }
    // Keep delivering the approval until every instance has finished (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: Vec<_> = ids
            .iter()
            .filter(|(_, id)| status(&d.addr, id).as_deref() != Some("completed"))
            .map(|(i, _)| *i)
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instances never finished: {pending:?}"
        );
        for i in pending {
            let _ = post(
                &d.addr,
                "/v1/events",
                json!({"type": "go", "key": i.to_string()}),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    d.child.kill().unwrap();
    let _ = d.child.wait();
    // Every instance charged and notified under one key each; retries reused the key.
    let ledger = std::fs::read_to_string(dir.path().join("ledger.txt")).unwrap();
    let keys: BTreeSet<&str> = ledger.lines().filter_map(|l| l.split(' ').next()).collect();
    for id in ids.values() {
        for step in ["charge", "notify"] {
            let key = format!("{id}:{step}:1");
            assert!(keys.contains(key.as_str()), "{key} never applied");
        }
    }
    assert_eq!(
        keys.len(),
        2 * n as usize,
        "an effect ran under an unexpected key:\n{ledger}"
    );
}
