//! The shipped refund workflow, run by the real daemon with the real payments plugin
//! (WebAssembly) against a Stripe-compatible fake on 127.0.0.1 — killed with SIGKILL
//! mid-payment and restarted. Every refund must be created exactly once, with the
//! same Idempotency-Key on every attempt, and every instance must finish.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};

mod support {
    pub mod daemon;
}

const SECRET_KEY: &str = "sk_test_e2e_9f8e7d6c5b4a";

/// A refund the fake created: its id and the form it was created from.
type Created = (String, Vec<(String, String)>);

/// A Stripe-compatible refunds endpoint that honours idempotency keys like Stripe
/// does: a repeated key returns the first answer and creates nothing.
#[derive(Default)]
struct FakeStripe {
    /// Idempotency-Key → (refund id, request form)
    created: Mutex<BTreeMap<String, Created>>,
    requests: Mutex<Vec<String>>,
    bad_auth: Mutex<u32>,
}

async fn refunds(
    State(stripe): State<Arc<FakeStripe>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if header("authorization") != format!("Bearer {SECRET_KEY}") {
        *stripe.bad_auth.lock().unwrap() += 1;
        return (StatusCode::UNAUTHORIZED, "{}".to_string());
    }
    let key = header("idempotency-key");
    stripe.requests.lock().unwrap().push(key.clone());
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // An in-flight window in which the test kills the daemon.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = {
        let mut created = stripe.created.lock().unwrap();
        let next = format!("re_{}", created.len() + 1);
        created
            .entry(key)
            .or_insert_with(|| (next, form.clone()))
            .0
            .clone()
    };
    let amount: u64 = form
        .iter()
        .find(|(k, _)| k == "amount")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let refund = json!({
        "id": id, "object": "refund", "amount": amount, "currency": "usd",
        "payment_intent": "pi_1", "charge": "ch_1", "status": "succeeded",
        "created": 1_700_000_000, "metadata": {}
    });
    (StatusCode::OK, refund.to_string())
}

async fn start_stripe() -> (Arc<FakeStripe>, u16) {
    let stripe = Arc::new(FakeStripe::default());
    let app = axum::Router::new()
        .route("/v1/refunds", axum::routing::post(refunds))
        .with_state(stripe.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (stripe, port)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Plugin folder with the real payments component, pointed at the fake.
fn install_payments(dir: &Path, port: u16) {
    let source = repo().join("plugins/payments");
    assert!(
        source.join("payments.wasm").is_file(),
        "plugins/payments/payments.wasm is missing: run `bash plugins/build.sh` first"
    );
    let target = dir.join("plugins/payments");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(source.join("payments.wasm"), target.join("payments.wasm")).unwrap();
    let origin = format!("http://127.0.0.1:{port}");
    let manifest = std::fs::read_to_string(source.join("plugin.toml"))
        .unwrap()
        .replace("\"https://api.stripe.com:443\"", &format!("\"{origin}\""))
        .replace("\"https://api.stripe.com\"", &format!("\"{origin}\""));
    std::fs::write(target.join("plugin.toml"), manifest).unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        format!("[payments]\nstripe_secret_key = \"{SECRET_KEY}\"\n"),
    )
    .unwrap();
    // refund.yaml also calls crm (refund history) and paging (approver and customer
    // notices); the daemon loads a workflow only if every plugin it calls is installed.
    // Unconfigured, their calls fail and the workflow records the failed notice.
    for other in ["crm", "paging"] {
        let source = repo().join("plugins").join(other);
        let target = dir.join("plugins").join(other);
        std::fs::create_dir_all(&target).unwrap();
        for file in ["plugin.toml".to_string(), format!("{other}.wasm")] {
            std::fs::copy(source.join(&file), target.join(&file)).unwrap_or_else(|e| {
                panic!("plugins/{other}/{file}: {e}; run `bash plugins/build.sh`")
            });
        }
    }
    std::fs::create_dir_all(dir.join("workflows")).unwrap();
    std::fs::copy(
        repo().join("workflows/refund.yaml"),
        dir.join("workflows/refund.yaml"),
    )
    .unwrap();
    // The approval clock counts business hours of a calendar in workflows/calendars/.
    let calendars = dir.join("workflows/calendars");
    std::fs::create_dir_all(&calendars).unwrap();
    for entry in std::fs::read_dir(repo().join("workflows/calendars")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, calendars.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn spawn(dir: &Path, port: u16, run: u32) -> Daemon {
    let log = dir.join(format!("daemon-{run}.log"));
    let mut c = daemon::command(dir, port);
    c.arg("--plugins")
        .arg(dir.join("plugins"))
        .arg("--secrets")
        .arg(dir.join("secrets.toml"))
        .env("CASEWORK_LOG", "info")
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

fn refund_input(order: &str, amount: u64) -> Value {
    json!({
        "order_id": order,
        "payment_ref": "pi_1",
        "amount_minor": amount,
        "refundable_minor": 100000,
        "currency": "USD",
        "order_date": chrono::Utc::now().to_rfc3339(),
        "reason": "requested_by_customer",
        "customer_email": "jane.doe@example.com",
        "requested_by": "agent-7",
        // Finish right after paying instead of watching 10 days for a late
        // `refund.failed` webhook (that path is tested in workflows/refund.test.yaml).
        "late_failure_watch": "0s"
    })
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
    let (stripe, stripe_port) = runtime.block_on(start_stripe());
    let dir = tempfile::tempdir().unwrap();
    install_payments(dir.path(), stripe_port);
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
        json!({"type": "refund.approved", "key": "ord-big", "data": {"by": "lead-1"}}),
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
    let requests = stripe.requests.lock().unwrap().clone();
    for key in &requests {
        assert!(created.contains_key(key), "unknown key {key}");
    }
    // The call cut by SIGKILL was sent again after the restart, with the same key.
    let mut per_key = BTreeMap::new();
    for key in &requests {
        *per_key.entry(key.clone()).or_insert(0) += 1;
    }
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
