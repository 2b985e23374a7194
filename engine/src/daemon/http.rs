//! The HTTP API (axum). Errors are JSON with a stable `code`; every route, the scope it
//! needs and every request, response and error shape are in `openapi.json`, served at
//! `GET /openapi.json` (a test keeps it and [`ROUTES`] in step).
//!
//! Each route passes a guard first: bearer token and scope (401 `unauthorized`, 403
//! `forbidden`), then the caller's rate limit (429 `rate_limited`), then the handler;
//! the answer is counted for `/metrics`. Bodies are size-limited (413 `body_too_large`)
//! and unknown JSON fields are rejected (400).

use super::auth::{ApiToken, Caller, Denied, RateLimit, RateLimiter, Scope, Tokens};
use super::driver::{
    DeliverError, Driver, HoldError, MigrateError, RerunError, RetryError, StartError, Started,
    WaitError, MAX_WAIT,
};
use super::metrics::{Metrics, Snapshot};
use super::reload::ReloadStats;
use super::selection::Selection;
use super::view;
use crate::runtime::{Event, RetryRefused};
use crate::store::InstanceMeta;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Largest request body accepted unless configured (`max_body_bytes`).
pub const MAX_BODY_BYTES: usize = super::config::DEFAULT_MAX_BODY_BYTES as usize;

/// Longest `Idempotency-Key` header or event `id` accepted, in bytes. Both are stored
/// as keyed hashes, so this bounds what a client can mean by a key, not storage.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// One route: method, path (axum syntax, as in the OpenAPI document) and the scope a
/// token needs (`None`: open to anyone, for probes and the API description).
#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub scope: Option<Scope>,
}

const fn route(method: &'static str, path: &'static str, scope: Option<Scope>) -> Route {
    Route {
        method,
        path,
        scope,
    }
}

/// Every route the daemon serves. The router is built from this list.
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", None),
    route("GET", "/readyz", None),
    route("GET", "/openapi.json", None),
    route("GET", "/metrics", Some(Scope::Read)),
    route("GET", "/v1/workflows", Some(Scope::Read)),
    route("POST", "/v1/workflows/{name}/instances", Some(Scope::Start)),
    route("POST", "/v1/workflows/{name}/pause", Some(Scope::Admin)),
    route("POST", "/v1/workflows/{name}/resume", Some(Scope::Admin)),
    route("GET", "/v1/instances", Some(Scope::Read)),
    route("GET", "/v1/instances/{id}", Some(Scope::Read)),
    route("POST", "/v1/instances/{id}/cancel", Some(Scope::Admin)),
    route("POST", "/v1/instances/{id}/retry", Some(Scope::Admin)),
    route("POST", "/v1/instances/{id}/pause", Some(Scope::Admin)),
    route("POST", "/v1/instances/{id}/resume", Some(Scope::Admin)),
    route("POST", "/v1/instances/{id}/migrate", Some(Scope::Admin)),
    route("POST", "/v1/instances/{id}/rerun", Some(Scope::Admin)),
    route("POST", "/v1/bulk", Some(Scope::Admin)),
    route("POST", "/v1/events", Some(Scope::Start)),
    route("GET", "/v1/inbox", Some(Scope::Read)),
    route("DELETE", "/v1/inbox", Some(Scope::Admin)),
    route("DELETE", "/v1/inbox/{seq}", Some(Scope::Admin)),
    route("GET", "/v1/reports", Some(Scope::Read)),
    route("GET", "/v1/backup", Some(Scope::Admin)),
];

fn handler(r: &Route) -> MethodRouter<Api> {
    match (r.method, r.path) {
        ("GET", "/healthz") => get(|| async { Json(json!({"status": "ok"})) }),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/openapi.json") => get(openapi),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/v1/workflows") => get(list_workflows),
        ("POST", "/v1/workflows/{name}/instances") => post(start),
        ("POST", "/v1/workflows/{name}/pause") => post(pause_workflow),
        ("POST", "/v1/workflows/{name}/resume") => post(resume_workflow),
        ("GET", "/v1/instances") => get(list_instances),
        ("GET", "/v1/instances/{id}") => get(get_instance),
        ("POST", "/v1/instances/{id}/cancel") => post(cancel),
        ("POST", "/v1/instances/{id}/retry") => post(retry),
        ("POST", "/v1/instances/{id}/pause") => post(pause),
        ("POST", "/v1/instances/{id}/resume") => post(resume),
        ("POST", "/v1/instances/{id}/migrate") => post(migrate),
        ("POST", "/v1/instances/{id}/rerun") => post(rerun),
        ("POST", "/v1/bulk") => post(bulk),
        ("POST", "/v1/events") => post(deliver),
        ("GET", "/v1/inbox") => get(list_inbox),
        ("DELETE", "/v1/inbox") => delete(purge_inbox),
        ("DELETE", "/v1/inbox/{seq}") => delete(purge_buffered),
        ("GET", "/v1/reports") => get(reports),
        ("GET", "/v1/backup") => get(backup),
        (m, p) => unreachable!("route {m} {p} has no handler"),
    }
}

/// An API error: fixed status, stable code, human message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(d) = self.details {
            body["error"]["details"] = d;
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// `503 overloaded` with `Retry-After`: the engine's work in hand is at its bound.
fn overloaded(e: crate::daemon::driver::Overloaded) -> ApiError {
    ApiError {
        retry_after: Some(e.retry_after_s),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn instance_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "instance_not_found",
        format!("no instance `{id}`"),
    )
}

/// How the API is set up; [`Default`] is open (no tokens), no rate limit, 1 MiB bodies.
#[derive(Clone)]
pub struct ApiOptions {
    pub tokens: Vec<ApiToken>,
    pub max_body_bytes: usize,
    pub rate_limit: Option<RateLimit>,
    /// The reloader's counters, for `/metrics`.
    pub reload_stats: Option<Arc<ReloadStats>>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            tokens: Vec::new(),
            max_body_bytes: MAX_BODY_BYTES,
            rate_limit: None,
            reload_stats: None,
        }
    }
}

/// The API: the driver plus auth, limits and readiness. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    driver: Driver,
    shared: Arc<Shared>,
}

struct Shared {
    tokens: Tokens,
    limiter: Option<RateLimiter>,
    max_body_bytes: usize,
    reload: Option<Arc<ReloadStats>>,
    ready: AtomicBool,
}

impl Api {
    pub fn new(driver: Driver, opts: ApiOptions) -> Api {
        Api {
            driver,
            shared: Arc::new(Shared {
                tokens: Tokens::new(opts.tokens),
                limiter: opts.rate_limit.map(RateLimiter::new),
                max_body_bytes: opts.max_body_bytes,
                reload: opts.reload_stats,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// Workflows are loaded and instances resumed: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.shared.ready.store(true, Ordering::SeqCst);
    }

    fn metrics(&self) -> &Metrics {
        &self.driver.inner().metrics
    }

    /// The configured tokens (the console signs in with them).
    pub(crate) fn tokens(&self) -> &Tokens {
        &self.shared.tokens
    }

    pub(crate) fn driver(&self) -> &Driver {
        &self.driver
    }

    /// Takes one request from a client's rate limit (by address) when one is
    /// configured; `Err` holds the seconds until one is free. For the console's sign-in.
    pub(crate) fn take_rate(&self, peer: Option<SocketAddr>) -> Result<(), u64> {
        let Some(limiter) = &self.shared.limiter else {
            return Ok(());
        };
        let key = match peer {
            Some(addr) => format!("ip:{}", addr.ip()),
            None => "anonymous".to_string(),
        };
        limiter
            .take(&key, Instant::now())
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// The router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so
    /// that an open API can rate-limit by client address.
    ///
    /// It serves the API and the operator console at `/ui`, a client of the same API.
    pub fn router(&self) -> Router {
        let api = self.api_routes();
        // The console's requests go to the API's routes directly: they already passed
        // the layers below as the console's own request.
        let console = super::console::routes(self.clone(), api.clone());
        console
            .merge(api)
            .layer(DefaultBodyLimit::max(self.shared.max_body_bytes))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(access_span)
                    .on_request(())
                    .on_response(access_line)
                    .on_body_chunk(())
                    .on_eos(())
                    .on_failure(()),
            )
            // Outermost: a client's own `x-request-id` is kept, otherwise one is made.
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
    }

    /// Every API route behind its guard, with the JSON answers for unknown routes.
    fn api_routes(&self) -> Router {
        let mut router = Router::new();
        for r in ROUTES {
            let guarded =
                handler(r).route_layer(middleware::from_fn_with_state((self.clone(), r), guard));
            router = router.route(r.path, guarded);
        }
        router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.clone())
    }
}

/// The span of one request for the access log: method, path and the request id (also
/// sent back as `x-request-id`); other lines logged while it runs carry them too. Never
/// the query string, headers or body: those can hold event keys, tokens and customer data.
fn access_span(req: &Request) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        // A client's id is printable ASCII (to_str); keep a line's length bounded.
        .map(|id| &id[..id.len().min(128)])
        .unwrap_or("");
    let span = tracing::info_span!(target: "casework::access", "http", method = %req.method(), path = %req.uri().path(), request_id = %id);
    // A caller's trace (W3C `traceparent`) is joined: the instance a start or an event
    // wakes runs in a child span of this one, and its plugins' requests carry it on.
    crate::telemetry::adopt_parent(&span, req.headers());
    span
}

/// One `casework::access` line per answered request. Silence it with
/// `log_level = "info,casework::access=off"`.
fn access_line(resp: &Response, took: std::time::Duration, _: &tracing::Span) {
    tracing::info!(target: "casework::access", status = resp.status().as_u16(), ms = took.as_secs_f64() * 1e3, "answered");
}

/// The API with default options, ready at once (tests and embedding).
pub fn router(driver: Driver) -> Router {
    let api = Api::new(driver, ApiOptions::default());
    api.set_ready();
    api.router()
}

/// Auth, rate limit, then the handler; counts the answer.
async fn guard(
    State((api, route)): State<(Api, &'static Route)>,
    mut req: Request,
    next: Next,
) -> Response {
    let arrived = Instant::now();
    let resp = match admit(&api, route, &req) {
        Ok(caller) => {
            // Handlers that journal who asked (pause, resume) read it from here.
            if let Some(c) = caller {
                req.extensions_mut().insert(c);
            }
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    api.metrics()
        .http_request(route.method, route.path, resp.status().as_u16());
    api.metrics()
        .http_latency(route.method, route.path, arrived.elapsed());
    resp
}

fn admit(api: &Api, route: &Route, req: &Request) -> Result<Option<Caller>, ApiError> {
    let Some(needed) = route.scope else {
        return Ok(None);
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let checked = api.shared.tokens.check(authorization, needed);
    if let Some(limiter) = &api.shared.limiter {
        let key = match &checked {
            Ok(Caller::Token { name, .. }) => format!("token:{name}"),
            _ => match req.extensions().get::<ConnectInfo<SocketAddr>>() {
                Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
                None => "anonymous".to_string(),
            },
        };
        if let Err(wait) = limiter.take(&key, Instant::now()) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(ApiError {
                retry_after: Some(secs),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests; retry in {secs} s"),
                )
            });
        }
    }
    match checked {
        Ok(caller) => Ok(Some(caller)),
        Err(Denied::Unauthorized) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid token as `Authorization: Bearer <token>`",
        )),
        Err(Denied::Forbidden { needed, has }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this token has scope `{}`; {} {} needs `{}`",
                has.as_str(),
                route.method,
                route.path,
                needed.as_str()
            ),
        )),
    }
}

async fn not_found(State(api): State<Api>, req: Request) -> ApiError {
    api.metrics()
        .http_request(req.method().as_str(), "(unmatched)", 404);
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!(
            "no route {} {}; see GET /openapi.json",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(State(api): State<Api>, req: Request) -> ApiError {
    api.metrics()
        .http_request(req.method().as_str(), "(unmatched)", 405);
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not accept {}; see GET /openapi.json",
            req.uri().path(),
            req.method()
        ),
    )
}

/// A JSON body that may be absent. Too large: 413 `body_too_large`; not JSON: 415
/// `unsupported_media_type`; malformed, wrong shape or unknown fields: 400 `invalid_body`.
pub struct JsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || v.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than this daemon accepts (max_body_bytes)",
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        if json_type != Some(true) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `content-type: application/json`",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(|v| JsonBody(Some(v)))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))
    }
}

async fn readyz(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    if !api.driver.store_reachable() {
        // A load balancer sends work elsewhere; this daemon keeps retrying the store, and
        // what it acknowledged before is in the store already.
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "this daemon's last heartbeat could not be written to the store; it retries every few seconds (see the log)",
        ))
    } else if api.shared.ready.load(Ordering::SeqCst) {
        let cannot_run = api.driver.cannot_run();
        if cannot_run.is_empty() {
            return Ok(Json(json!({"status": "ready"})));
        }
        // Ready for everything else: these instances wait for a daemon with the plugin.
        let calls: Vec<Value> = cannot_run
            .into_iter()
            .map(|(call, instances)| json!({"call": call, "instances": instances}))
            .collect();
        Ok(Json(json!({
            "status": "ready",
            "cannot_run": calls,
            "hint": "these instances call plugins this daemon does not have, so it leaves them to daemons that have them; install the plugins in this daemon's plugins folder to run them here",
        })))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "still loading workflows and resuming instances",
        ))
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// `GET /v1/backup`: a consistent snapshot of the store (`store::backup`). It is copied
/// into an unlinked temporary file first, so the store's writes wait for the copy only,
/// never for a slow client.
async fn backup(State(api): State<Api>) -> Result<Response, ApiError> {
    let inner = api.driver.inner().clone();
    let (file, entries) = tokio::task::spawn_blocking(move || {
        let failed = |e: std::io::Error| internal(format!("the backup failed: {e}"));
        let mut file = tempfile::tempfile().map_err(failed)?;
        let entries = {
            let mut out = std::io::BufWriter::new(&mut file);
            let n = inner.store.backup(&mut out).map_err(|e| match e {
                crate::store::Error::Unsupported(why) => {
                    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported", why)
                }
                e => internal(format!("the backup failed: {e}")),
            })?;
            std::io::Write::flush(&mut out).map_err(failed)?;
            n
        };
        std::io::Seek::rewind(&mut file).map_err(failed)?;
        Ok::<_, ApiError>((file, entries))
    })
    .await
    .map_err(internal)??;
    tracing::info!(entries, "backup taken");
    let name = format!(
        "casework-{}.backup",
        crate::calendar::time::format_ms(api.driver.inner().clock.now_ms()).replace(':', "")
    );
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(file),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

async fn metrics(State(api): State<Api>) -> Result<Response, ApiError> {
    let inner = api.driver.inner().clone();
    // Counting instances reads the whole index: off the async threads.
    let instances_by_status = tokio::task::spawn_blocking(move || {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = inner.store.instances(cursor.as_deref(), 1000)?;
            for m in &page {
                *counts.entry(m.status.clone()).or_default() += 1;
            }
            match page.last() {
                Some(last) if page.len() == 1000 => cursor = Some(last.id.clone()),
                _ => return Ok::<_, crate::store::Error>(counts),
            }
        }
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let inner = api.driver.inner();
    let (reloads, reload_failures) = api
        .shared
        .reload
        .as_ref()
        .map(|s| {
            (
                s.reloads.load(Ordering::Relaxed),
                s.failures.load(Ordering::Relaxed),
            )
        })
        .unwrap_or_default();
    let page = api
        .metrics()
        .render(&Snapshot {
            instances_by_status,
            workflows_loaded: inner.registry.all_latest().len(),
            journal_records: inner.stats.records.load(Ordering::Relaxed),
            reloads,
            reload_failures,
            ready: api.shared.ready.load(Ordering::SeqCst),
            rule_output_dropped: inner.rules.output_dropped(),
        })
        .map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], page).into_response())
}

async fn list_workflows(State(api): State<Api>) -> Json<Value> {
    let reg = &api.driver.inner().registry;
    let workflows: Vec<Value> = reg
        .all_latest()
        .iter()
        .map(|w| {
            json!({
                "name": w.name,
                "version": w.version,
                "hash": w.hash,
                "file": w.file,
                "description": w.description,
                "loaded_at": reg.loaded_at(&w.hash).map(crate::compile::rules::format_ms),
                "warning": reg.warning(&w.hash),
                // What `GET /v1/instances?workflow=NAME&ATTRIBUTE=VALUE` accepts: the
                // attributes of every loaded version.
                "search": reg.search_attributes(&w.name),
                // Unknown (the store did not answer) shows as not paused; starts look
                // again for themselves.
                "paused": api.driver.workflow_pause(&w.name).ok().flatten().map(|p| json!({
                    "by": p.by,
                    "reason": p.reason,
                    "at": crate::compile::rules::format_ms(p.at),
                })),
            })
        })
        .collect();
    let problems: Vec<Value> = reg
        .problems
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(file, diags)| json!({"file": file, "errors": diags.iter().map(|d| d.to_string()).collect::<Vec<_>>()}))
        .collect();
    let calendars: Vec<Value> = api
        .driver
        .inner()
        .rules
        .calendars()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "version": c.version,
                "file": c.file,
                "since": (c.effective_from != i64::MIN)
                    .then(|| crate::compile::rules::format_ms(c.effective_from)),
                "earlier_versions": c
                    .earlier_versions()
                    .map(|e| json!({
                        "version": e.version,
                        "since": (e.effective_from != i64::MIN)
                            .then(|| crate::compile::rules::format_ms(e.effective_from)),
                    }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"workflows": workflows, "calendars": calendars, "failed": problems}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartQuery {
    wait: Option<String>,
}

/// `?wait=` as a length of time, at most [`MAX_WAIT`].
fn wait_of(wait: Option<&str>) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(text) = wait else {
        return Ok(None);
    };
    let refuse = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "wait: {why}; give a length of time up to {}s, such as `wait=10s` or `wait=500ms`",
                MAX_WAIT.as_secs()
            ),
        )
    };
    let d = crate::definition::Duration::parse(text).map_err(refuse)?;
    let d = std::time::Duration::from_millis(d.as_millis());
    if d > MAX_WAIT {
        return Err(refuse(format!("`{text}` is longer than the limit")));
    }
    Ok(Some(d))
}

fn too_many_waiting() -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_waiting",
            WaitError::TooManyWaiting.to_string(),
        )
    }
}

fn wait_failed(e: WaitError) -> ApiError {
    match e {
        WaitError::TooManyWaiting => too_many_waiting(),
        WaitError::Internal(e) => internal(e),
    }
}

fn start_failed(e: StartError) -> ApiError {
    match e {
        StartError::UnknownWorkflow(w) => ApiError::new(
            StatusCode::NOT_FOUND,
            "workflow_not_found",
            format!("no workflow named `{w}` is loaded"),
        ),
        StartError::InvalidInput(problems) => ApiError {
            details: Some(json!(problems)),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!("{} problem(s) with the input", problems.len()),
            )
        },
        e @ StartError::Key(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", e.to_string())
        }
        StartError::Open { workflow, open } => ApiError {
            details: Some(json!({"id": open})),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "instance_open",
                format!(
                    "instance {open} of `{workflow}` is open for this key and the workflow \
                     allows one at a time; send to it as an event, or start again once it has finished"
                ),
            )
        },
        StartError::QueueFull(why) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", why)
        }
        StartError::Overloaded(e) => overloaded(e),
        StartError::Internal(e) => internal(e),
    }
}

/// The first fields of a start's answer.
fn started_body(s: &Started) -> Value {
    if let Some(q) = &s.queued {
        return json!({"created": false, "queued": true, "queue_seq": q.seq, "behind": q.behind});
    }
    let mut body = json!({"id": s.id, "created": s.created});
    if s.attached {
        body["attached"] = json!(true);
    }
    body
}

/// A waited-on instance's index entry as the store has it now.
fn meta_now(inner: &super::driver::Inner, id: &str) -> Result<InstanceMeta, String> {
    inner
        .store
        .instance(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("instance `{id}` vanished"))
}

/// An instance is settled for a waiting start once it has ended or parked.
fn settled(meta: &InstanceMeta) -> bool {
    meta.is_final() || meta.status == "parked"
}

async fn start(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<StartQuery>, QueryRejection>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let wait = wait_of(q.wait.as_deref())?;
    // Refused before anything starts: a start must not happen and then fail to be waited on.
    if wait.is_some() && !api.driver.can_wait() {
        return Err(too_many_waiting());
    }
    let input = body.unwrap_or(Value::Null);
    refuse_write_only_marker(&input, "input")?;
    let key = idempotency_key(&headers)?;
    let s = api
        .driver
        .start(&name, input, key)
        .await
        .map_err(start_failed)?;
    if s.queued.is_some() {
        // Nothing to wait on yet: the instance does not exist until a place is free.
        return Ok((StatusCode::ACCEPTED, Json(started_body(&s))).into_response());
    }
    let Some(wait) = wait else {
        let status = if s.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(started_body(&s))).into_response());
    };
    // A duplicate start waits on the instance the first one created.
    let waited = api
        .driver
        .wait_for(&s.id, wait, |inner| {
            let meta = meta_now(inner, &s.id)?;
            let done = settled(&meta);
            Ok((meta, done))
        })
        .await
        .map_err(wait_failed)?;
    if !waited.settled {
        let mut body = started_body(&s);
        body["status"] = json!(waited.value.status);
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let v = instance_view(&api.driver, &s.id)?;
    let mut body = started_body(&s);
    body["status"] = json!(v.status);
    if let Some(o) = v.output {
        body["output"] = o;
    }
    if let Some(e) = v.error {
        body["error"] = serde_json::to_value(e).map_err(internal)?;
    }
    if !v.waiting.is_empty() {
        body["waiting"] = serde_json::to_value(&v.waiting).map_err(internal)?;
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Only the daemon makes write-only tokens: one a client sent (copied from elsewhere)
/// would be opened for this instance's plugin.
fn refuse_write_only_marker(v: &Value, what: &str) -> Result<(), ApiError> {
    if super::driver::write_only::carries_marker(v) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reserved_field",
            format!(
                "the {what} has a field named `{}`, which Casework keeps for the write-only \
                 values it seals itself; send the plain value (a wait that lists the field under \
                 `write_only` seals it on arrival)",
                super::driver::write_only::MARKER
            ),
        ));
    }
    Ok(())
}

/// The client's `Idempotency-Key`, compared byte for byte. A key the daemon cannot use
/// is refused: ignoring it would start a second instance where the client asked for one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let refuse = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!(
                "{why}; send one Idempotency-Key header of 1 to \
                 {MAX_IDEMPOTENCY_KEY_BYTES} bytes of UTF-8 text"
            ),
        )
    };
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(refuse(
            "there is more than one Idempotency-Key header".into(),
        ));
    }
    // Header values may carry any byte but controls; UTF-8 is what a client means by text
    // (`refund:ORD-ü:1500`), other bytes have no agreed meaning.
    let key = std::str::from_utf8(value.as_bytes())
        .map_err(|_| refuse("the Idempotency-Key is not UTF-8".into()))?;
    check_key_length(key).map_err(|why| refuse(format!("the Idempotency-Key {why}")))?;
    Ok(Some(key.to_string()))
}

/// A client-chosen key (idempotency key, event id) is 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`]
/// bytes: an empty one would make every keyless-looking request the same request.
fn check_key_length(key: &str) -> Result<(), String> {
    match key.len() {
        0 => Err("is empty".into()),
        n if n > MAX_IDEMPOTENCY_KEY_BYTES => Err(format!("is {n} bytes long")),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceQuery {
    wait: Option<String>,
    /// Journal entries the client has seen (the length of `journal` it last read).
    after: Option<usize>,
}

async fn get_instance(
    State(api): State<Api>,
    Path(id): Path<String>,
    query: Result<Query<InstanceQuery>, QueryRejection>,
) -> Result<Json<view::InstanceView>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let Some(wait) = wait_of(q.wait.as_deref())? else {
        if q.after.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "`after` needs `wait` (for example `?wait=30s&after=12`)",
            ));
        }
        return instance_view(&api.driver, &id).map(Json);
    };
    // 404 at once for an unknown id, rather than after the wait.
    if api
        .driver
        .inner()
        .store
        .instance(&id)
        .map_err(internal)?
        .is_none()
    {
        return Err(instance_not_found(&id));
    }
    api.driver
        .wait_for(&id, wait, |inner| {
            let meta = meta_now(inner, &id)?;
            // With `after`: the next journal entry; without: the instance ends or parks.
            let done = match q.after {
                Some(after) => {
                    meta.is_final()
                        || inner.store.journal(&id).map_err(|e| e.to_string())?.len() > after
                }
                None => settled(&meta),
            };
            Ok(((), done))
        })
        .await
        .map_err(wait_failed)?;
    instance_view(&api.driver, &id).map(Json)
}

/// The redacted view of one instance.
pub fn instance_view(d: &Driver, id: &str) -> Result<view::InstanceView, ApiError> {
    let inner = d.inner();
    let meta = inner
        .store
        .instance(id)
        .map_err(internal)?
        .ok_or_else(|| instance_not_found(id))?;
    let journal = inner.store.journal(id).map_err(internal)?;
    let (inst, wf) = inner
        .registry
        .replay_journal(inner.store.as_ref(), &meta, &journal, &inner.rules)
        .map_err(internal)?;
    Ok(view::instance_view(id, &meta.status, &inst, &wf, &journal))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    workflow: Option<String>,
    since: Option<String>,
}

/// Support metrics per workflow (see `daemon/report.rs`).
async fn reports(
    State(api): State<Api>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let since = match &q.since {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        "`since` must look like 2026-11-01T00:00:00Z",
                    )
                })?
                .timestamp_millis(),
        ),
        None => None,
    };
    let inner = api.driver.inner();
    let built = super::report::build(
        inner.store.as_ref(),
        &inner.rules,
        q.workflow.as_deref(),
        since,
    )
    .map_err(internal)?;
    Ok(Json(json!({ "workflows": built })))
}

/// `GET /v1/instances`: the filters, and every other parameter a search attribute.
async fn list_instances(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let mut q = BTreeMap::new();
    for (k, v) in pairs {
        if q.contains_key(&k) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("`{k}` is given twice; give each filter once (several attributes together must all match)"),
            ));
        }
        q.insert(k, v);
    }
    let limit = match q.remove("limit") {
        None => 100,
        Some(l) => l.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("`limit` must be a whole number (1 to {MAX_LIST_LIMIT}); `{l}` is not one"),
            )
        })?,
    }
    .clamp(1, MAX_LIST_LIMIT);
    let cursor = q.remove("cursor");
    let (workflow, status) = (q.remove("workflow"), q.remove("status"));
    let (after, before) = (q.remove("started_after"), q.remove("started_before"));
    let selection = select(
        &api,
        workflow,
        status,
        (after.as_deref(), before.as_deref()),
        &q,
        "invalid_query",
    )?;
    let store = api.driver.inner().store.clone();
    let page = tokio::task::spawn_blocking(move || {
        selection.page(store.as_ref(), cursor.as_deref(), limit)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(instance_page(&page.found, page.next))
}

/// A [`Selection`] of instances, or the caller's mistake as a 400 with `code`.
fn select(
    api: &Api,
    workflow: Option<String>,
    status: Option<String>,
    started: (Option<&str>, Option<&str>),
    search: &BTreeMap<String, String>,
    code: &'static str,
) -> Result<Selection, ApiError> {
    let inner = api.driver.inner();
    Selection::new(
        inner.store.as_ref(),
        |w| inner.registry.search_attributes(w),
        workflow,
        status,
        started,
        search,
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, code, e.0))
}

fn instance_page(found: &[InstanceMeta], next_cursor: Option<String>) -> Json<Value> {
    let instances: Vec<view::InstanceSummary> = found.iter().map(Into::into).collect();
    Json(json!({"instances": instances, "next_cursor": next_cursor}))
}

/// The most instances one page of the list gives.
const MAX_LIST_LIMIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn cancel(
    State(api): State<Api>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CancelBody>,
) -> Result<Json<Value>, ApiError> {
    let d = &api.driver;
    if d.inner().store.instance(&id).map_err(internal)?.is_none() {
        return Err(instance_not_found(&id));
    }
    let reason = body
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "cancelled through the API".into());
    if d.cancel(&id, &reason).await {
        Ok(Json(json!({"id": id, "cancelling": true})))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "instance_finished",
            format!("instance `{id}` has already ended or is being cancelled"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {}

async fn retry(
    State(api): State<Api>,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<RetryBody>,
) -> Result<Json<Value>, ApiError> {
    match api.driver.retry(&id).await {
        Ok(()) => Ok(Json(json!({"id": id, "retrying": true}))),
        Err(RetryError::NotFound(_)) => Err(instance_not_found(&id)),
        Err(RetryError::Refused(e @ RetryRefused::NotFailed(_))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_failed",
            format!("instance `{id}` cannot be retried: {e}"),
        )),
        Err(RetryError::Refused(e @ RetryRefused::NotRetryable(_))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_retryable",
            format!("instance `{id}` cannot be retried: {e}"),
        )),
        Err(RetryError::Refused(RetryRefused::KeyOpen(open))) => Err(ApiError {
            details: Some(json!({ "id": open })),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "instance_open",
                format!(
                    "instance `{id}` cannot be retried: {}",
                    RetryRefused::KeyOpen(open.clone())
                ),
            )
        }),
        Err(RetryError::Overloaded(e)) => Err(overloaded(e)),
        Err(RetryError::Internal(e)) => Err(internal(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    reason: String,
}

/// Who asked, as the journal records it.
fn asker(caller: Option<&Caller>) -> String {
    match caller {
        Some(Caller::Token { name, .. }) => format!("token:{name}"),
        // No tokens: only loopback clients can reach the API.
        Some(Caller::Open) | None => "loopback".to_string(),
    }
}

/// The reason a pause or resume must give, for the journal; `path` names the endpoint in
/// the error.
fn hold_reason(body: Option<HoldBody>, path: &str) -> Result<String, ApiError> {
    body.map(|b| b.reason.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("say why, for the journal: {{\"reason\": \"...\"}} (POST {path})"),
            )
        })
}

async fn hold(
    api: Api,
    caller: Option<axum::Extension<Caller>>,
    id: String,
    body: Option<HoldBody>,
    pause: bool,
) -> Result<Json<Value>, ApiError> {
    let verb = if pause { "pause" } else { "resume" };
    let reason = hold_reason(body, &format!("/v1/instances/{{id}}/{verb}"))?;
    let by = asker(caller.as_ref().map(|c| &c.0));
    match api.driver.hold(&id, pause, &by, &reason).await {
        Ok(changed) => Ok(Json(json!({"id": id, "paused": pause, "changed": changed}))),
        Err(HoldError::NotFound(_)) => Err(instance_not_found(&id)),
        Err(HoldError::Refused(e)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "instance_finished",
            format!("instance `{id}` cannot be {verb}d: {e}"),
        )),
        Err(HoldError::Overloaded(e)) => Err(overloaded(e)),
        Err(HoldError::Internal(e)) => Err(internal(e)),
    }
}

async fn hold_workflow(
    api: Api,
    caller: Option<axum::Extension<Caller>>,
    name: String,
    body: Option<HoldBody>,
    pause: bool,
) -> Result<Json<Value>, ApiError> {
    let verb = if pause { "pause" } else { "resume" };
    let reason = hold_reason(body, &format!("/v1/workflows/{{name}}/{verb}"))?;
    let by = asker(caller.as_ref().map(|c| &c.0));
    match api.driver.hold_workflow(&name, pause, &by, &reason).await {
        Ok(done) => Ok(Json(json!(done))),
        Err(HoldError::NotFound(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "workflow_not_found",
            format!("no workflow named `{name}` is loaded; GET /v1/workflows lists them"),
        )),
        Err(HoldError::Overloaded(e)) => Err(overloaded(e)),
        Err(HoldError::Refused(e)) => Err(internal(e.to_string())),
        Err(HoldError::Internal(e)) => Err(internal(e)),
    }
}

async fn pause_workflow(
    State(api): State<Api>,
    caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<HoldBody>,
) -> Result<Json<Value>, ApiError> {
    hold_workflow(api, caller, name, body, true).await
}

async fn resume_workflow(
    State(api): State<Api>,
    caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<HoldBody>,
) -> Result<Json<Value>, ApiError> {
    hold_workflow(api, caller, name, body, false).await
}

async fn pause(
    State(api): State<Api>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<HoldBody>,
) -> Result<Json<Value>, ApiError> {
    hold(api, caller, id, body, true).await
}

async fn resume(
    State(api): State<Api>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<HoldBody>,
) -> Result<Json<Value>, ApiError> {
    hold(api, caller, id, body, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerunBody {
    /// The top-level step the new instance begins at.
    from: String,
    /// Variables to change (a null removes one); the others are the ended instance's.
    #[serde(default)]
    vars: serde_json::Map<String, Value>,
    /// Why, for both journals.
    reason: String,
}

/// `POST /v1/instances/{id}/rerun`: run an ended instance again from a step, as a new
/// instance linked to it in both journals.
async fn rerun(
    State(api): State<Api>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RerunBody>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let b = body
        .filter(|b| !b.reason.trim().is_empty() && !b.from.trim().is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "say where it begins and why: {\"from\": \"<step>\", \"reason\": \"...\", \"vars\": {...}}",
            )
        })?;
    let by = asker(caller.as_ref().map(|c| &c.0));
    match api
        .driver
        .rerun(&id, b.from.trim(), b.vars, &by, b.reason.trim(), key)
        .await
    {
        // What the new instance was asked with: this request's, or the first one's when
        // this asks again (its key, or a crash before the instance was created).
        Ok((s, link)) => {
            let status = if s.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({"id": s.id, "created": s.created, "rerun_of": id, "from": link.step});
            Ok((status, Json(body)).into_response())
        }
        Err(RerunError::NotFound(_)) => Err(instance_not_found(&id)),
        Err(RerunError::Refused(why)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_rerunnable",
            format!("instance `{id}` cannot run again: {why}"),
        )),
        Err(RerunError::Start(e)) => Err(start_failed(e)),
        Err(RerunError::Overloaded(e)) => Err(overloaded(e)),
        Err(RerunError::Internal(e)) => Err(internal(e)),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    /// Why, for the journal (not needed for a dry run).
    #[serde(default)]
    reason: String,
    /// Only say where the instance would move, or why it would not.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/instances/{id}/migrate`: move the instance to the newest loaded version of
/// its workflow, at a safe point its `migrate:` rule names.
async fn migrate(
    State(api): State<Api>,
    caller: Option<axum::Extension<Caller>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<MigrateBody>,
) -> Result<Json<Value>, ApiError> {
    let b = body.unwrap_or_default();
    migrate_one(
        &api,
        caller.as_ref().map(|c| &c.0),
        &id,
        &b.reason,
        b.dry_run,
    )
    .await
    .map(Json)
}

async fn migrate_one(
    api: &Api,
    caller: Option<&Caller>,
    id: &str,
    reason: &str,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let reason = reason.trim();
    if !dry_run && reason.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "say why, for the journal: {\"reason\": \"...\"}, or ask for {\"dry_run\": true}",
        ));
    }
    let inner = api.driver.inner();
    let meta = inner
        .store
        .instance(id)
        .map_err(internal)?
        .ok_or_else(|| instance_not_found(id))?;
    let to = inner.registry.latest(&meta.workflow).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "workflow_not_loaded",
            format!(
                "workflow `{}` is not loaded, so there is no version to move to",
                meta.workflow
            ),
        )
    })?;
    let refused = |e: crate::runtime::MigrateRefused| {
        ApiError::new(
            StatusCode::CONFLICT,
            e.code,
            format!(
                "instance `{id}` does not move to version {}: {e}",
                to.version
            ),
        )
    };
    let moved = if dry_run {
        match api.driver.migration(id, &to) {
            Ok(m) => Some(m),
            Err(MigrateError::Refused(e)) => return Err(refused(e)),
            Err(e) => return Err(migrate_error(id, e)),
        }
    } else {
        let by = asker(caller);
        match api.driver.migrate(id, to.clone(), &by, reason).await {
            Ok(m) => m,
            Err(MigrateError::Refused(e)) => return Err(refused(e)),
            Err(e) => return Err(migrate_error(id, e)),
        }
    };
    Ok(match moved {
        Some(m) => json!({
            "id": id, "dry_run": dry_run, "moved": !dry_run,
            "from_version": m.from_version, "from_step": m.from_step,
            "to_version": m.to_version, "to_step": m.to_step,
        }),
        // Another daemon owns it: it moves it when it reads the request.
        None => {
            json!({"id": id, "dry_run": false, "moved": false, "handed_over": true, "to_version": to.version})
        }
    })
}

fn migrate_error(id: &str, e: MigrateError) -> ApiError {
    match e {
        MigrateError::NotFound(_) => instance_not_found(id),
        MigrateError::Overloaded(e) => overloaded(e),
        MigrateError::Refused(e) => internal(e.to_string()),
        MigrateError::Internal(e) => internal(e),
    }
}

/// Instances one bulk request acts on at most (`limit`, default 1000).
pub const MAX_BULK: usize = 10_000;

#[derive(Deserialize, serde::Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum BulkAction {
    Retry,
    Cancel,
    Pause,
    Resume,
    Migrate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    action: BulkAction,
    /// Required: a bulk action is about one workflow's instances.
    workflow: String,
    status: Option<String>,
    started_after: Option<String>,
    started_before: Option<String>,
    /// `search:` attributes and the values to match, e.g. `{"ticket_id": "T-1"}`.
    #[serde(default)]
    search: BTreeMap<String, String>,
    /// Why, for the journal (cancel, pause and resume need one).
    reason: Option<String>,
    limit: Option<usize>,
    /// Where the previous request stopped (its `next_cursor`).
    cursor: Option<String>,
    /// With `migrate`: only say which instances would move and why others would not.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/bulk`: retry, cancel, pause or resume every instance of a workflow (with a
/// status) in index order, at most `limit` of them, each exactly as its own request
/// would (the same checks, errors and journal records); answers what was done and what
/// was refused, and where to go on from.
async fn bulk(
    State(api): State<Api>,
    caller: Option<axum::Extension<Caller>>,
    JsonBody(body): JsonBody<BulkBody>,
) -> Result<Json<Value>, ApiError> {
    let b = body.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "say what to do and to which instances: {\"action\": \"retry\", \"workflow\": \"refund\", \"status\": \"failed\"}",
        )
    })?;
    if b.dry_run && b.action != BulkAction::Migrate {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "`dry_run` goes with `\"action\": \"migrate\"`",
        ));
    }
    // Only waiting instances can move: by default a migration looks at those.
    let status = match (&b.status, b.action) {
        (None, BulkAction::Migrate) => Some("parked".to_string()),
        (s, _) => s.clone(),
    };
    let selection = select(
        &api,
        Some(b.workflow.clone()),
        status,
        (b.started_after.as_deref(), b.started_before.as_deref()),
        &b.search,
        "invalid_body",
    )?;
    let limit = b.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_BULK {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("`limit` must be 1 to {MAX_BULK}"),
        ));
    }
    let needs_reason = b.action != BulkAction::Retry && !b.dry_run;
    let reason = b.reason.as_deref().map(str::trim).unwrap_or("").to_string();
    if needs_reason && reason.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "say why, for each instance's journal: {\"reason\": \"...\"}",
        ));
    }
    if !api
        .driver
        .inner()
        .registry
        .all_latest()
        .iter()
        .any(|w| w.name == b.workflow)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "workflow_not_found",
            format!(
                "no workflow named `{}` is loaded; GET /v1/workflows lists them",
                b.workflow
            ),
        ));
    }
    let mut done: Vec<String> = Vec::new();
    let mut moves: Vec<Value> = Vec::new();
    let mut refused: Vec<Value> = Vec::new();
    let mut stopped: Option<Value> = None;
    let store = api.driver.inner().store.clone();
    let from = b.cursor.clone();
    let page =
        tokio::task::spawn_blocking(move || selection.page(store.as_ref(), from.as_deref(), limit))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    let mut cursor = page.next;
    // The last instance handled: where a stopped request goes on from.
    let mut last = b.cursor.clone();
    for m in page.found {
        let id = m.id.clone();
        let answer = match b.action {
            BulkAction::Retry => retry(State(api.clone()), Path(id.clone()), JsonBody(None))
                .await
                .map(|_| ()),
            BulkAction::Cancel => cancel(
                State(api.clone()),
                Path(id.clone()),
                JsonBody(Some(CancelBody {
                    reason: Some(reason.clone()),
                })),
            )
            .await
            .map(|_| ()),
            BulkAction::Pause | BulkAction::Resume => hold(
                api.clone(),
                caller.clone(),
                id.clone(),
                Some(HoldBody {
                    reason: reason.clone(),
                }),
                b.action == BulkAction::Pause,
            )
            .await
            .map(|_| ()),
            BulkAction::Migrate => {
                migrate_one(&api, caller.as_ref().map(|c| &c.0), &id, &reason, b.dry_run)
                    .await
                    .map(|m| moves.push(m))
            }
        };
        match answer {
            Ok(()) => done.push(id.clone()),
            // The engine's work in hand is at its bound: stop here, the client goes on
            // from the instance before this one after `retry_after_s`.
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                stopped = Some(
                    json!({"code": e.code, "message": e.message, "retry_after_s": e.retry_after}),
                );
                cursor = last;
                break;
            }
            Err(e) => refused.push(json!({"id": id, "code": e.code, "message": e.message})),
        }
        last = Some(id);
    }
    let more = cursor.is_some();
    let mut report = json!({
        "action": b.action,
        "workflow": b.workflow,
        "done": done,
        "refused": refused,
        "stopped": stopped,
        "next_cursor": if more { cursor } else { None },
    });
    if b.action == BulkAction::Migrate {
        report["dry_run"] = b.dry_run.into();
        report["moves"] = moves.into();
    }
    Ok(Json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    #[serde(rename = "type")]
    event_type: String,
    key: String,
    #[serde(default)]
    data: Value,
    /// May be left out, but not `null`: the document says string, and a `null` that
    /// silently meant "no id" would turn off deduplication the sender asked for.
    #[serde(default, deserialize_with = "present")]
    id: Option<String>,
}

/// Reads a field that may be absent (`#[serde(default)]` gives `None`) but, when
/// present, must be a string.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

async fn deliver(
    State(api): State<Api>,
    JsonBody(body): JsonBody<EventBody>,
) -> Result<Json<Value>, ApiError> {
    let b = body.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "send the event as JSON: {\"type\": ..., \"key\": ..., \"data\": {...}}",
        )
    })?;
    if let Some(id) = &b.id {
        // NUL starts the engine's own slots (schedules, windowed counts) in the same space.
        check_key_length(id)
            .and_then(|()| {
                if id.contains('\u{0}') {
                    Err("holds a NUL character".to_string())
                } else {
                    Ok(())
                }
            })
            .map_err(|why| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_event_id",
                    format!(
                        "the event `id` {why}; an `id` is 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes \
                     of text, or leave it out"
                    ),
                )
            })?;
    }
    refuse_write_only_marker(&b.data, "event's `data`")?;
    if b.event_type.starts_with("casework.") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event_type",
            "event types starting with `casework.` are the engine's own (such as queued starts); \
             name the event after what happened, e.g. `ticket.updated`",
        ));
    }
    let event = Event {
        event_type: b.event_type,
        key: b.key,
        data: b.data,
        id: b.id,
    };
    let d = &api.driver;
    let mut triggered = None;
    let delivered = d
        .deliver_with(event, async |e: &Event| {
            let t = super::triggers::start_for_event(d, e).await;
            let consumed = t.consumed;
            triggered = Some(t);
            consumed
        })
        .await
        .map_err(|e| match e {
            DeliverError::Overloaded(o) => overloaded(o),
            DeliverError::InboxFull(f) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "inbox_full", f.to_string())
            }
            DeliverError::Internal(e) => internal(e),
        })?;
    let triggered = triggered.unwrap_or_default();
    Ok(Json(json!({
        "woken": delivered.woken,
        "buffered": delivered.buffered.is_some(),
        "inbox_seq": delivered.buffered,
        "started": triggered.started,
        "trigger_errors": triggered.failed,
        "counted": triggered.counted,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    key: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

impl InboxQuery {
    /// The type and key to filter by: both or neither (a key alone matches nothing known).
    fn filter(&self) -> Result<Option<(&str, &str)>, ApiError> {
        match (&self.event_type, &self.key) {
            (Some(t), Some(k)) => Ok(Some((t, k))),
            (None, None) => Ok(None),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "give both `type` and `key` to pick the events of one wait, or neither",
            )),
        }
    }
}

/// Most buffered events one list request answers, and one purge request removes.
const INBOX_PAGE_MAX: usize = 1000;

fn inbox_query(query: Result<Query<InboxQuery>, QueryRejection>) -> Result<InboxQuery, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    Ok(q)
}

/// Buffered events, oldest first. The key and data are not shown (they may be personal
/// data); ask with `type` and `key` to see the events of one wait.
async fn list_inbox(
    State(api): State<Api>,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = inbox_query(query)?;
    let limit = q.limit.unwrap_or(100).clamp(1, INBOX_PAGE_MAX);
    let events = api
        .driver
        .inbox(q.filter()?, q.after, limit)
        .map_err(internal)?;
    let next = (events.len() == limit)
        .then(|| events.last().map(|b| b.stamp.seq))
        .flatten();
    let format = crate::calendar::time::format_ms;
    let events: Vec<Value> = events
        .iter()
        .map(|b| {
            json!({
                "seq": b.stamp.seq,
                "type": b.event.event_type,
                "arrived": format(b.stamp.arrived),
                "until": format(b.stamp.until),
            })
        })
        .collect();
    Ok(Json(json!({"events": events, "next_after": next})))
}

/// Purge the buffered events of one type and key (up to [`INBOX_PAGE_MAX`] per request).
async fn purge_inbox(
    State(api): State<Api>,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = inbox_query(query)?;
    let Some(filter) = q.filter()? else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "name the events to purge with `type` and `key`, or purge one with DELETE /v1/inbox/{seq}",
        ));
    };
    let d = &api.driver;
    let seqs: Vec<u64> = d
        .inbox(Some(filter), None, INBOX_PAGE_MAX)
        .map_err(internal)?
        .iter()
        .map(|b| b.stamp.seq)
        .collect();
    let purged = d.purge(&seqs).await.map_err(internal)?;
    Ok(Json(json!({"purged": purged})))
}

async fn purge_buffered(
    State(api): State<Api>,
    Path(seq): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "buffered_event_not_found",
            format!("no buffered event `{seq}` (delivered, purged or expired already?); list them with GET /v1/inbox"),
        )
    };
    let n: u64 = seq.parse().map_err(|_| not_found())?;
    match api.driver.purge(&[n]).await.map_err(internal)? {
        0 => Err(not_found()),
        _ => Ok(Json(json!({"purged": 1}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::INDEX_STATUSES;
    use std::collections::BTreeSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn documented() -> BTreeSet<(String, String)> {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        assert_eq!(
            doc["components"]["schemas"]["InstanceStatus"]["enum"],
            json!(INDEX_STATUSES),
            "the documented statuses are the ones the list accepts"
        );
        doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .expect("operations")
                    .keys()
                    .filter(|k| {
                        ["get", "post", "put", "patch", "delete", "head", "options"]
                            .contains(&k.as_str())
                    })
                    .map(|m| (m.to_ascii_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(routed, documented());
    }

    #[test]
    fn the_document_describes_each_operation_fully() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let text = OPENAPI;
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(op["operationId"].is_string(), "{} {}", r.method, r.path);
            assert!(op["responses"].is_object(), "{} {}", r.method, r.path);
            // Scoped routes document their auth errors; open ones declare no security.
            match r.scope {
                Some(scope) => {
                    let desc = op["description"].as_str().unwrap_or("");
                    assert!(
                        desc.contains(&format!("Scope: `{}`", scope.as_str())),
                        "{} {} must say its scope",
                        r.method,
                        r.path
                    );
                    for code in ["401", "403", "429"] {
                        assert!(
                            op["responses"][code].is_object(),
                            "{} {} {code}",
                            r.method,
                            r.path
                        );
                    }
                }
                None => assert_eq!(op["security"], json!([]), "{} {}", r.method, r.path),
            }
        }
        // Every `$ref` resolves.
        for part in text.split("\"$ref\": \"#/").skip(1) {
            let pointer = part.split('"').next().unwrap();
            assert!(
                doc.pointer(&format!("/{pointer}")).is_some(),
                "dangling $ref #/{pointer}"
            );
        }
    }

    /// Every `code` an [`ApiError`] can carry (the string after its status in this file)
    /// is in the document's list of codes, so a client can switch on them.
    #[test]
    fn every_error_code_is_documented() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let listed: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
            ["properties"]["code"]["enum"]
            .as_array()
            .expect("a list of codes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let source = include_str!("http.rs");
        let mut used = BTreeSet::new();
        for part in source.split("StatusCode::").skip(1) {
            let after_status =
                part.trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_');
            let Some(rest) = after_status.strip_prefix(',') else {
                continue;
            };
            let rest = rest.trim_start();
            if let Some(code) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                used.insert(code);
            }
        }
        // The scan finds codes written over several lines and in every handler.
        for code in [
            "internal",
            "rate_limited",
            "invalid_body",
            "invalid_event_id",
        ] {
            assert!(used.contains(code), "{code} not found in {used:?}");
        }
        let missing: Vec<_> = used.difference(&listed).collect();
        assert!(missing.is_empty(), "codes not in openapi.json: {missing:?}");
    }

    async fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf);
        let status = text[9..12].parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn the_router_answers_exactly_the_documented_methods() {
        let store = Arc::new(crate::store::sled::SledStore::temporary().unwrap());
        let driver = Driver::new(
            store,
            Arc::new(crate::plugin_host::NoPlugins),
            Arc::new(crate::clock::ManualClock::new(0)),
            None,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(driver);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let documented = documented();
        for (_, path) in &documented {
            let concrete = path.replace("{name}", "nope").replace("{id}", "nope");
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                let (status, body) = raw(addr, method, &concrete).await;
                let listed = documented.contains(&(method.to_string(), path.clone()));
                assert_ne!(body["error"]["code"], "route_not_found", "{method} {path}");
                if listed {
                    assert_ne!(status, 405, "{method} {path} is documented but not routed");
                } else {
                    assert_eq!(status, 405, "{method} {path} is routed but not documented");
                    assert_eq!(body["error"]["code"], "method_not_allowed");
                }
            }
        }
        let (status, body) = raw(addr, "GET", "/v2/nothing").await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (404, json!("route_not_found"))
        );
    }
}
