//! The shipped refund workflow against a Stripe-compatible fake on 127.0.0.1: the fake
//! (it honours idempotency keys like Stripe: a repeated key returns the first answer and
//! creates nothing), a folder with the workflow, its calendars and the real plugins
//! pointed at the fake, and a refund request.

#![allow(dead_code)] // each test binary uses a different part of it

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A refund the fake created: its id and the form it was created from.
pub type Created = (String, Vec<(String, String)>);

pub struct FakeStripe {
    secret: String,
    /// How long a request is held before it is answered (a window in which the test can
    /// kill a daemon with a payment in flight), drawn from this range of milliseconds.
    delay_ms: std::ops::Range<u64>,
    /// Idempotency-Key → (refund id, request form).
    pub created: Mutex<BTreeMap<String, Created>>,
    /// The Idempotency-Key of every request, in arrival order.
    pub requests: Mutex<Vec<String>>,
    /// The `traceparent` header of every request that had one, in arrival order.
    pub traceparents: Mutex<Vec<String>>,
    pub bad_auth: Mutex<u32>,
}

impl FakeStripe {
    /// Requests per Idempotency-Key.
    pub fn requests_per_key(&self) -> BTreeMap<String, u32> {
        let mut per_key = BTreeMap::new();
        for key in self.requests.lock().unwrap().iter() {
            *per_key.entry(key.clone()).or_insert(0) += 1;
        }
        per_key
    }
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
    if header("authorization") != format!("Bearer {}", stripe.secret) {
        *stripe.bad_auth.lock().unwrap() += 1;
        return (StatusCode::UNAUTHORIZED, "{}".to_string());
    }
    let key = header("idempotency-key");
    stripe.requests.lock().unwrap().push(key.clone());
    if headers.contains_key("traceparent") {
        stripe
            .traceparents
            .lock()
            .unwrap()
            .push(header("traceparent"));
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let delay = if stripe.delay_ms.is_empty() {
        stripe.delay_ms.start
    } else {
        rand::rng().random_range(stripe.delay_ms.clone())
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
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

/// Starts the fake on a free port of 127.0.0.1 (on the current tokio runtime), accepting
/// `secret` as its API key and holding each request for a time drawn from `delay_ms`.
pub async fn start(secret: &str, delay_ms: std::ops::Range<u64>) -> (Arc<FakeStripe>, u16) {
    let stripe = Arc::new(FakeStripe {
        secret: secret.to_string(),
        delay_ms,
        created: Default::default(),
        requests: Default::default(),
        traceparents: Default::default(),
        bad_auth: Default::default(),
    });
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

/// DIR/workflows with refund.yaml and its calendars, DIR/plugins with the real payments
/// component pointed at the fake on `port` (plus crm and paging, which refund.yaml also
/// calls; unconfigured, their calls fail and the workflow records the failed notice), and
/// DIR/secrets.toml with `secret` as the Stripe key.
pub fn install(dir: &Path, port: u16, secret: &str) {
    let origin = format!("http://127.0.0.1:{port}");
    for plugin in ["payments", "crm", "paging"] {
        let source = repo().join("plugins").join(plugin);
        let target = dir.join("plugins").join(plugin);
        std::fs::create_dir_all(&target).unwrap();
        let wasm = format!("{plugin}.wasm");
        std::fs::copy(source.join(&wasm), target.join(&wasm)).unwrap_or_else(|e| {
            panic!("plugins/{plugin}/{wasm}: {e}; run `bash plugins/build.sh` first")
        });
        let manifest = std::fs::read_to_string(source.join("plugin.toml"))
            .unwrap()
            .replace("\"https://api.stripe.com:443\"", &format!("\"{origin}\""))
            .replace("\"https://api.stripe.com\"", &format!("\"{origin}\""));
        std::fs::write(target.join("plugin.toml"), manifest).unwrap();
    }
    std::fs::write(
        dir.join("secrets.toml"),
        format!("[payments]\nstripe_secret_key = \"{secret}\"\n"),
    )
    .unwrap();
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

/// `casework serve` on `port` for what [`install`] put in `dir`: its workflows, plugins
/// and secrets ([`super::daemon::command`] plus `--plugins` and `--secrets`).
pub fn command(dir: &Path, port: u16) -> std::process::Command {
    let mut c = super::daemon::command(dir, port);
    c.arg("--plugins")
        .arg(dir.join("plugins"))
        .arg("--secrets")
        .arg(dir.join("secrets.toml"));
    c
}

/// A lead's approval of the refund `refund_input(order, amount)` asks for, naming what it
/// approves as the shipped workflow requires (the amount, currency and policy version).
pub fn approval(order: &str, amount: u64) -> Value {
    json!({
        "type": "refund.approved", "key": order,
        "data": {"by": "lead-1", "amount_minor": amount, "currency": "USD", "policy_version": "refund-policy-v4"}
    })
}

/// A refund request for `order`; amounts above the agent limit wait for an approval.
pub fn refund_input(order: &str, amount: u64) -> Value {
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
