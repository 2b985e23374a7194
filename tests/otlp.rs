//! Traces over OTLP against the real daemon: `casework serve --otlp-endpoint` sends its
//! spans to a local OTLP/HTTP receiver (protobuf, decoded with the OpenTelemetry proto
//! types). A refund started with a caller's `traceparent` is one trace from the request to
//! the payment plugin's HTTP call at the provider, which gets the step's `traceparent`; an
//! approval event sent with another trace continues the parked refund in that trace; a
//! malformed `traceparent` is ignored; no secret or personal data is exported.

mod support {
    pub mod daemon;
    pub mod http;
    pub mod refunds;
}

use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::http::request;
use support::refunds::{self, refund_input};

const SECRET_KEY: &str = "sk_test_otlp_7d41c9";

/// One exported span, ids in lowercase hex as in a `traceparent`.
#[derive(Clone, Debug)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

#[derive(Default)]
struct Receiver {
    spans: Mutex<Vec<Span>>,
    bodies: Mutex<Vec<Vec<u8>>>,
}

async fn traces(
    State(receiver): State<Arc<Receiver>>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Vec<u8>) {
    let Ok(export) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
    };
    receiver.bodies.lock().unwrap().push(body.to_vec());
    let mut spans = receiver.spans.lock().unwrap();
    for rs in export.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        let v = match kv.value.as_ref()?.value.as_ref()? {
                            any_value::Value::StringValue(v) => v.clone(),
                            any_value::Value::IntValue(v) => v.to_string(),
                            any_value::Value::BoolValue(v) => v.to_string(),
                            other => format!("{other:?}"),
                        };
                        Some((kv.key.clone(), v))
                    })
                    .collect();
                spans.push(Span {
                    trace: hex::encode(&s.trace_id),
                    id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    name: s.name,
                    attributes,
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse.
    (axum::http::StatusCode::OK, Vec::new())
}

async fn start_receiver() -> (Arc<Receiver>, u16) {
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (receiver, port)
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Waits (at most a minute) until `found` sees what it looks for in the spans so far.
fn until<T>(receiver: &Receiver, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = found(&receiver.spans.lock().unwrap()) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; spans received: {:#?}",
            receiver.spans.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most a minute) until instance `id` completes. (A start's `?wait=` answers
/// as soon as it parks, and a refund parks for a moment in its watch after paying.)
fn completed(base: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, view) = request("GET", &format!("{base}/v1/instances/{id}"), None, &[]);
        if view["status"] == "completed" {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never completed: {view}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_refund_is_one_trace_from_the_request_to_the_provider_and_an_approval_continues_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, otlp_port) = runtime.block_on(start_receiver());
    let (stripe, stripe_port) = runtime.block_on(refunds::start(SECRET_KEY, 0..1));
    let dir = tempfile::tempdir().unwrap();
    refunds::install(dir.path(), stripe_port, SECRET_KEY);
    let port = support::daemon::free_port();
    let mut c = refunds::command(dir.path(), port);
    c.args(["--otlp-endpoint", &format!("http://127.0.0.1:{otlp_port}")])
        // Batches leave every 200 ms instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let daemon = support::daemon::start(c, port);
    let base = &daemon.addr;

    // A refund within the agent's limit runs to the end inside the caller's trace.
    let (trace, caller) = (random_hex(16), random_hex(8));
    let parent = format!("00-{trace}-{caller}-01");
    let (status, started) = request(
        "POST",
        &format!("{base}/v1/workflows/refund/instances?wait=30s"),
        Some(&refund_input("ord-otlp-1", 1_000)),
        &[("traceparent", &parent), ("x-request-id", "req-otlp-1")],
    );
    assert_eq!(status, 200, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    completed(base, &id);

    let (http, instance, step) = until(
        &receiver,
        "the refund's spans never reached the receiver in the caller's trace",
        |spans| {
            let ours: Vec<&Span> = spans.iter().filter(|s| s.trace == trace).collect();
            let http = ours.iter().find(|s| s.name == "http")?;
            let instance = ours
                .iter()
                .find(|s| s.name == "instance" && s.attributes.get("id") == Some(&id))?;
            let step = ours.iter().find(|s| {
                s.name == "step"
                    && s.attributes.get("call").map(String::as_str) == Some("payments.refund")
            })?;
            Some(((*http).clone(), (*instance).clone(), (*step).clone()))
        },
    );
    assert_eq!(
        http.parent, caller,
        "the request's span is the caller's child"
    );
    assert_eq!(
        http.attributes.get("request_id").map(String::as_str),
        Some("req-otlp-1")
    );
    assert_eq!(
        instance.parent, http.id,
        "the instance runs in a child of the request that started it"
    );
    assert_eq!(
        step.attributes.get("step").map(String::as_str),
        Some("pay"),
        "{step:?}"
    );
    // The provider saw the payment step's span as its parent.
    let sent = stripe.traceparents.lock().unwrap().clone();
    assert!(
        sent.iter()
            .any(|tp| tp == &format!("00-{trace}-{}-01", step.id)),
        "the payment request did not carry the step's traceparent: {sent:?} (step {})",
        step.id
    );

    // A refund above the limit parks in the start's trace; the approval, sent in a trace
    // of its own, continues it there: the payment is in the approval's trace.
    let start_trace = random_hex(16);
    let (status, parked) = request(
        "POST",
        &format!("{base}/v1/workflows/refund/instances?wait=30s"),
        Some(&refund_input("ord-otlp-2", 45_000)),
        &[(
            "traceparent",
            &format!("00-{start_trace}-{}-01", random_hex(8)),
        )],
    );
    assert_eq!(status, 200, "{parked}");
    assert_eq!(parked["status"], "parked", "{parked}");
    let parked_id = parked["id"].as_str().unwrap().to_string();
    let approval_trace = random_hex(16);
    let (status, answer) = request(
        "POST",
        &format!("{base}/v1/events"),
        Some(&{
            let mut approval = refunds::approval("ord-otlp-2", 45_000);
            approval["id"] = json!("approval-otlp-2");
            approval
        }),
        &[(
            "traceparent",
            &format!("00-{approval_trace}-{}-01", random_hex(8)),
        )],
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["woken"], json!([parked_id]), "{answer}");
    completed(base, &parked_id);
    until(
        &receiver,
        "the parked refund's instance span is not in the start's trace",
        |spans| {
            spans
                .iter()
                .any(|s| {
                    s.trace == start_trace
                        && s.name == "instance"
                        && s.attributes.get("id") == Some(&parked_id)
                })
                .then_some(())
        },
    );
    let paid = until(
        &receiver,
        "the payment after the approval is not in the approval's trace",
        |spans| {
            spans
                .iter()
                .find(|s| {
                    s.trace == approval_trace
                        && s.name == "step"
                        && s.attributes.get("call").map(String::as_str) == Some("payments.refund")
                })
                .cloned()
        },
    );
    assert!(
        stripe
            .traceparents
            .lock()
            .unwrap()
            .iter()
            .any(|tp| tp.contains(&format!("{approval_trace}-{}", paid.id))),
        "the approved payment's request did not carry the approval's trace"
    );

    // A malformed traceparent is ignored: the request is answered and traced on its own.
    let (status, answer) = request(
        "POST",
        &format!("{base}/v1/events"),
        Some(&json!({"type": "nothing.waits", "key": "k", "data": {}})),
        &[
            ("traceparent", "00-not-a-trace-01"),
            ("x-request-id", "req-otlp-bad"),
        ],
    );
    assert_eq!(status, 200, "{answer}");
    let own = until(
        &receiver,
        "the request with a malformed traceparent was not traced",
        |spans| {
            spans
                .iter()
                .find(|s| {
                    s.attributes.get("request_id").map(String::as_str) == Some("req-otlp-bad")
                })
                .cloned()
        },
    );
    assert_eq!(
        own.parent, "",
        "a malformed parent starts a trace of its own: {own:?}"
    );
    assert_ne!(own.trace, "0".repeat(32));

    // What is exported is held to the log's rules: no secret, no customer data.
    for body in receiver.bodies.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains(SECRET_KEY),
            "the provider's key was exported"
        );
        assert!(
            !text.contains("jane.doe@example.com"),
            "a sensitive input was exported"
        );
    }
    drop(daemon);
}

/// A daemon without `otlp_endpoint` exports nothing and sends no `traceparent` to
/// providers, even when the caller sends one.
#[test]
fn without_an_endpoint_nothing_is_exported_and_no_traceparent_leaves() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stripe, stripe_port) = runtime.block_on(refunds::start(SECRET_KEY, 0..1));
    let dir = tempfile::tempdir().unwrap();
    refunds::install(dir.path(), stripe_port, SECRET_KEY);
    let port = support::daemon::free_port();
    let daemon = support::daemon::start(refunds::command(dir.path(), port), port);
    let (status, started) = request(
        "POST",
        &format!("{}/v1/workflows/refund/instances?wait=30s", daemon.addr),
        Some(&refund_input("ord-otlp-off", 1_000)),
        &[(
            "traceparent",
            &format!("00-{}-{}-01", random_hex(16), random_hex(8)),
        )],
    );
    assert_eq!(status, 200, "{started}");
    completed(&daemon.addr, started["id"].as_str().unwrap());
    assert_eq!(
        stripe.requests.lock().unwrap().len(),
        1,
        "the refund was paid"
    );
    assert_eq!(
        stripe.traceparents.lock().unwrap().clone(),
        Vec::<String>::new(),
        "the caller's trace is not passed on when traces are off"
    );
}
