//! The HTTP API (axum). Errors are JSON with a stable `code`.

use super::driver::{Driver, StartError};
use super::view;
use crate::runtime::Event;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An API error: fixed status, stable code, human message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(d) = self.details {
            body["error"]["details"] = d;
        }
        (self.status, Json(body)).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

pub fn router(driver: Driver) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/workflows", get(list_workflows))
        .route("/v1/workflows/{name}/instances", post(start))
        .route("/v1/instances/{id}", get(get_instance))
        .route("/v1/instances", get(list_instances))
        .route("/v1/instances/{id}/cancel", post(cancel))
        .route("/v1/events", post(deliver))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(driver)
}

async fn list_workflows(State(d): State<Driver>) -> Json<Value> {
    let reg = &d.inner().registry;
    let workflows: Vec<Value> = reg
        .all_latest()
        .iter()
        .map(|w| json!({"name": w.name, "version": w.version, "hash": w.hash, "file": w.file, "description": w.description}))
        .collect();
    let problems: Vec<Value> = reg
        .problems
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(file, diags)| json!({"file": file, "errors": diags.iter().map(|d| d.to_string()).collect::<Vec<_>>()}))
        .collect();
    Json(json!({"workflows": workflows, "failed": problems}))
}

async fn start(
    State(d): State<Driver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Result<Response, ApiError> {
    let input = body.map(|Json(v)| v).unwrap_or(Value::Null);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match d.start(&name, input, key).await {
        Ok(s) => {
            let status = if s.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(json!({"id": s.id, "created": s.created}))).into_response())
        }
        Err(StartError::UnknownWorkflow(w)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "workflow_not_found",
            format!("no workflow named `{w}` is loaded"),
        )),
        Err(StartError::InvalidInput(problems)) => Err(ApiError {
            details: Some(json!(problems)),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!("{} problem(s) with the input", problems.len()),
            )
        }),
        Err(StartError::Internal(e)) => Err(internal(e)),
    }
}

async fn get_instance(
    State(d): State<Driver>,
    Path(id): Path<String>,
) -> Result<Json<view::InstanceView>, ApiError> {
    instance_view(&d, &id).map(Json)
}

/// The redacted view of one instance.
pub fn instance_view(d: &Driver, id: &str) -> Result<view::InstanceView, ApiError> {
    let inner = d.inner();
    let meta = inner.store.instance(id).map_err(internal)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "instance_not_found",
            format!("no instance `{id}`"),
        )
    })?;
    let wf = inner
        .registry
        .pinned(inner.store.as_ref(), &meta.hash, &inner.rules)
        .map_err(internal)?;
    let journal = inner.store.journal(id).map_err(internal)?;
    Ok(view::instance_view(id, &meta.status, &wf, &journal))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_instances(
    State(d): State<Driver>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut out = Vec::new();
    let mut cursor = q.cursor.clone();
    // Scan forward in pages until the filtered page is full or the end is reached.
    loop {
        let page = d
            .inner()
            .store
            .instances(cursor.as_deref(), 1000)
            .map_err(internal)?;
        let exhausted = page.len() < 1000;
        for m in page {
            cursor = Some(m.id.clone());
            if q.workflow.as_ref().is_some_and(|w| &m.workflow != w)
                || q.status.as_ref().is_some_and(|s| &m.status != s)
            {
                continue;
            }
            out.push(m);
            if out.len() == limit {
                let next = out.last().map(|m| m.id.clone());
                return Ok(Json(json!({"instances": out, "next_cursor": next})));
            }
        }
        if exhausted {
            return Ok(Json(json!({"instances": out, "next_cursor": null})));
        }
    }
}

async fn cancel(State(d): State<Driver>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if d.inner().store.instance(&id).map_err(internal)?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "instance_not_found",
            format!("no instance `{id}`"),
        ));
    }
    if d.cancel(&id, "cancelled through the API").await {
        Ok(Json(json!({"id": id, "cancelling": true})))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "instance_finished",
            format!("instance `{id}` has already ended"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    #[serde(rename = "type")]
    event_type: String,
    key: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    id: Option<String>,
}

async fn deliver(
    State(d): State<Driver>,
    body: Result<Json<EventBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(b) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", e.body_text()))?;
    let event = Event {
        event_type: b.event_type,
        key: b.key,
        data: b.data,
        id: b.id,
    };
    let woken = d.deliver(event.clone()).await.map_err(internal)?;
    let triggered = super::triggers::start_for_event(&d, &event).await;
    Ok(Json(json!({
        "woken": woken,
        "started": triggered.started,
        "trigger_errors": triggered.failed,
    })))
}
