//! Bounds on what one burst or one request can make the daemon do. When the engine holds
//! `max_pending` units of work (queued messages, plugin calls in flight), new starts and
//! events are refused with a clear, retryable error — over HTTP `503 overloaded` with
//! `Retry-After` — instead of queueing without limit; once the work drains, they are
//! accepted again. A filtered list reads a bounded part of the index per request.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use casework::clock::ManualClock;
use casework::compile::{self, rules::Rules};
use casework::daemon::driver::{DeliverError, StartError};
use casework::daemon::Driver;
use casework::plugin_host::{CallContext, CallFuture, PluginHost};
use casework::runtime::Event;
use casework::store::memory::MemoryStore;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

const CALL: &str = r#"workflow: call
version: 1
steps:
  - id: charge
    call: payments.charge
    next: done
  - id: done
    complete: {}
"#;

/// Holds every call until released.
struct Gate(tokio::sync::Semaphore);

impl PluginHost for Gate {
    fn call<'a>(
        &'a self,
        _plugin: &'a str,
        _action: &'a str,
        _input: Value,
        _ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let _permit = self.0.acquire().await;
            Ok(json!({}))
        })
    }
}

fn driver(gate: Arc<Gate>) -> Driver {
    let d = Driver::new(
        Arc::new(MemoryStore::new()),
        gate,
        Arc::new(ManualClock::new(0)),
        None,
    );
    let (wf, diags) = compile::load("call.yaml", CALL, &Default::default(), &Rules::shared());
    d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
        .unwrap();
    d
}

#[tokio::test]
async fn past_max_pending_starts_and_events_are_refused_until_the_work_drains() {
    const MAX: usize = 8;
    let gate = Arc::new(Gate(tokio::sync::Semaphore::new(0)));
    let d = driver(gate.clone());
    d.set_max_pending(MAX);
    // Each started instance holds one call in flight.
    for i in 0..MAX {
        d.start("call", json!({}), Some(format!("k{i}")))
            .await
            .unwrap_or_else(|e| panic!("start {i} within the bound: {e}"));
    }
    let refused = d.start("call", json!({}), None).await.unwrap_err();
    let StartError::Overloaded(o) = &refused else {
        panic!("expected Overloaded, got {refused:?}")
    };
    assert_eq!(o.pending, MAX);
    assert_eq!(
        refused.to_string(),
        "the engine has 8 units of work in hand, its limit (max_pending); try again in 1 s"
    );
    let event = Event {
        event_type: "go".into(),
        key: "k".into(),
        data: json!({}),
        id: None,
    };
    assert!(matches!(
        d.deliver(event.clone()).await,
        Err(DeliverError::Overloaded(_))
    ));

    // Over HTTP: 503 with a stable code and Retry-After.
    let app = casework::daemon::http::router(d.clone());
    let resp = app
        .oneshot(
            Request::post("/v1/workflows/call/instances")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");

    // Let the calls finish: the engine takes work again.
    gate.0.add_permits(MAX);
    d.wait_idle().await;
    d.start("call", json!({}), None).await.unwrap();
    assert!(d.deliver(event).await.is_ok());
}

async fn get_json(app: &axum::Router, uri: &str) -> Value {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A filter that matches little of a large index must not read all of it in one
/// request: the page comes back short with a cursor, and following it finds the rest.
#[tokio::test]
async fn a_filtered_list_reads_a_bounded_part_of_the_index_per_request() {
    use casework::store::{Batch, InstanceMeta, Store};
    let store = MemoryStore::new();
    let meta = |id: String, workflow: &str| InstanceMeta {
        id,
        workflow: workflow.into(),
        version: 1,
        hash: "h".into(),
        status: "completed".into(),
        created_at: 0,
        updated_at: 0,
        parent: None,
        search: Default::default(),
    };
    for i in 0..45_000 {
        let id = format!("{i:08}");
        store
            .write(&Batch {
                instance: id.clone(),
                meta: Some(meta(id, "noise")),
                ..Batch::default()
            })
            .unwrap();
    }
    store
        .write(&Batch {
            instance: "99999999".into(),
            meta: Some(meta("99999999".into(), "rare")),
            ..Batch::default()
        })
        .unwrap();
    let d = Driver::new(
        Arc::new(store),
        Arc::new(Gate(tokio::sync::Semaphore::new(0))),
        Arc::new(ManualClock::new(0)),
        None,
    );
    let app = casework::daemon::http::router(d);
    let mut uri = "/v1/instances?workflow=rare".to_string();
    let mut requests = 0;
    let found = loop {
        requests += 1;
        let page = get_json(&app, &uri).await;
        let ids: Vec<&str> = page["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        if !ids.is_empty() {
            assert_eq!(page["next_cursor"], Value::Null, "{page}");
            break ids.join(",");
        }
        let cursor = page["next_cursor"]
            .as_str()
            .expect("a cursor to go on from");
        uri = format!("/v1/instances?workflow=rare&cursor={cursor}");
    };
    assert_eq!(found, "99999999");
    assert_eq!(requests, 3, "20,000 entries per request, 45,001 in all");
}

/// A daemon whose store stops answering says so on `/readyz` (so a load balancer sends
/// work elsewhere) from its next heartbeat on.
#[tokio::test]
async fn readyz_reports_a_store_that_stopped_answering() {
    let store = MemoryStore::new();
    let handle = store.connect();
    let d = Driver::new(
        Arc::new(handle.clone()),
        Arc::new(Gate(tokio::sync::Semaphore::new(0))),
        Arc::new(ManualClock::new(0)),
        None,
    );
    let app = casework::daemon::http::router(d.clone());
    let readyz = |app: axum::Router| async move {
        let resp = app
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    d.tick_ownership().unwrap();
    assert!(d.store_reachable());
    let (_, before) = readyz(app.clone()).await;
    assert_ne!(before["error"]["code"], "store_unavailable", "{before}");
    // The database goes away under this daemon.
    handle.kill();
    assert!(d.tick_ownership().is_err());
    let (status, after) = readyz(app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(after["error"]["code"], "store_unavailable", "{after}");
}
