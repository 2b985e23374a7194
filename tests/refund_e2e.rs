//! The shipped refund workflow, run by the real daemon with the real payments plugin
//! (WebAssembly) against a Stripe-compatible fake on 127.0.0.1 — killed with SIGKILL
//! mid-payment and restarted. Every refund must be created exactly once, with the
//! same Idempotency-Key on every attempt, and every instance must finish.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::refunds::{self, refund_input};

mod support {
    pub mod daemon;
    pub mod refunds;
}

const SECRET_KEY: &str = "sk_test_e2e_9f8e7d6c5b4a";

fn spawn(dir: &Path, port: u16, run: u32) -> Daemon {
    let log = dir.join(format!("daemon-{run}.log"));
    let mut c = refunds::command(dir, port);
    c.env("CASEWORK_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    daemon::start(c, port)
}

fn post(addr: &str, path: &str, body: Value) -> Value {
    let mut resp = ureq::post(&format!("{addr}{path}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(&body)
        .unwrap();
    resp.body_mut().read_json().unwrap()
}

fn get(addr: &str, path: &str) -> Value {
    ureq::get(&format!("{addr}{path}"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn refunds_are_paid_exactly_once_across_sigkill_and_approvals_wake_only_their_refund() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Each request is held 300 ms: the window in which the test kills the daemon.
    let (stripe, stripe_port) = runtime.block_on(refunds::start(SECRET_KEY, 300..300));
    let dir = tempfile::tempdir().unwrap();
    refunds::install(dir.path(), stripe_port, SECRET_KEY);
    let port = daemon::free_port();

    let mut daemon = spawn(dir.path(), port, 1);
    let mut ids = Vec::new();
    for n in 0..4 {
        let started = post(
            &daemon.addr,
            "/v1/workflows/refund/instances",
            refund_input(&format!("ord-{n}"), 1500 + n),
        );
        ids.push(started["id"].as_str().expect("an instance id").to_string());
    }
    // Above the agent limit: waits for a lead's approval.
    let big = post(
        &daemon.addr,
        "/v1/workflows/refund/instances",
        refund_input("ord-big", 45000),
    );
    let big_id = big["id"].as_str().unwrap().to_string();

    // Kill the daemon while at least one payment is in flight at the provider.
    wait_until("a refund request at the provider", || {
        !stripe.requests.lock().unwrap().is_empty()
    });
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();

    let daemon = spawn(dir.path(), port, 2);
    let status = |id: &str| get(&daemon.addr, &format!("/v1/instances/{id}"))["status"].clone();
    // After the restart the big refund resumes and parks on its approval again.
    wait_until("the big refund to wait for its approval", || {
        status(&big_id) == "parked"
    });
    // An approval for another order must not wake this refund.
    let other = post(
        &daemon.addr,
        "/v1/events",
        json!({"type": "refund.approved", "key": "ord-other", "data": {"by": "lead-1"}}),
    );
    assert_eq!(other["woken"], json!([]), "{other}");
    assert_eq!(
        status(&big_id),
        "parked",
        "an approval for another order woke it"
    );
    let woke = post(
        &daemon.addr,
        "/v1/events",
        refunds::approval("ord-big", 45000),
    );
    assert_eq!(woke["woken"], json!([big_id]), "{woke}");
    ids.push(big_id);

    for id in &ids {
        wait_until(&format!("{id} to finish"), || {
            status(id) != "running" && status(id) != "parked"
        });
        let view = get(&daemon.addr, &format!("/v1/instances/{id}"));
        assert_eq!(view["status"], "completed", "{view}");
        assert_eq!(view["output"]["status"], "refunded", "{view}");
        // Personal data stays redacted in the API view.
        assert!(!view.to_string().contains("jane.doe@example.com"), "{view}");
    }

    let created = stripe.created.lock().unwrap().clone();
    assert_eq!(
        created.len(),
        ids.len(),
        "one refund per instance: {created:?}"
    );
    let per_key: BTreeMap<String, u32> = stripe.requests_per_key();
    for key in per_key.keys() {
        assert!(created.contains_key(key), "unknown key {key}");
    }
    // The call cut by SIGKILL was sent again after the restart, with the same key.
    assert!(
        per_key.values().any(|n| *n >= 2),
        "no request was repeated, so the kill did not land mid-payment: {per_key:?}"
    );
    assert_eq!(
        *stripe.bad_auth.lock().unwrap(),
        0,
        "a request lacked the secret key"
    );
    for id in &ids {
        let view = get(&daemon.addr, &format!("/v1/instances/{id}"));
        let refund_id = view["output"]["refund_id"].as_str().unwrap().to_string();
        assert!(
            created.values().any(|(rid, _)| rid == &refund_id),
            "{id} reports {refund_id}, which the provider never created"
        );
    }
    // The big refund's form carries the amount in minor units and the order metadata.
    let (_, form) = created
        .values()
        .find(|(_, form)| form.iter().any(|(k, v)| k == "amount" && v == "45000"))
        .expect("the approved refund was paid")
        .clone();
    assert!(
        form.contains(&("metadata[order_id]".to_string(), "ord-big".to_string())),
        "{form:?}"
    );

    // The secret never reaches the daemon's logs.
    drop(daemon);
    for run in [1, 2] {
        let log = std::fs::read_to_string(dir.path().join(format!("daemon-{run}.log"))).unwrap();
        assert!(!log.contains(SECRET_KEY), "secret key in daemon log {run}");
        assert!(
            !log.contains("jane.doe@example.com"),
            "email in daemon log {run}"
        );
    }
}
