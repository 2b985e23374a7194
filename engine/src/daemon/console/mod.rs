//! The operator console: HTML pages at `/ui`, rendered on the server ([`page`], with
//! maud) and styled by one stylesheet embedded in the binary. The pages carry no
//! script, so the Content-Security-Policy allows nothing but that stylesheet and forms
//! posting back to the console.
//!
//! The console is a client of the API. Every read and every action is an in-process
//! request to the API's own router with the signed-in token, so scopes, rate limits,
//! error codes and the journal's "who asked" are exactly the API's. What the API does
//! not answer it reads from the driver: the steps of a workflow (the step map), the SLA
//! clocks in business time ([`clocks`]) and the key a wait listens on (never shown,
//! only used to deliver an event from the page).
//!
//! Sign-in: with tokens configured, a token is kept in an HttpOnly, SameSite=Strict
//! cookie scoped to `/ui`; without tokens (loopback only, as for the API) nobody signs
//! in, and pages are served only to loopback host names (so a site that rebinds its name
//! to 127.0.0.1 gets nothing). Every form carries a CSRF value: a keyed hash of a random
//! nonce kept in a cookie, keyed by the visitor's token (or, before sign-in and on an open
//! console, by a key of this process), so a page that can set cookies for this host (a
//! sibling port or subdomain) still cannot make one. A post whose `Origin` or
//! `Sec-Fetch-Site` says it came from another site is refused too.

mod clocks;
mod page;

use super::auth::{Caller, Denied, Scope, Tokens};
use super::http::Api;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;
use tower::ServiceExt;

pub use page::Flash;

/// The console's cookies. Scoped to `/ui`, so the API never sees them.
const TOKEN_COOKIE: &str = "casework_token";
const CSRF_COOKIE: &str = "casework_csrf";

/// Largest API answer the console reads (an instance with a long journal).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Instances one list page shows.
const LIST_PAGE: usize = 50;

/// Index entries read at most to count instances by status for the list page.
const MAX_COUNT_SCAN: usize = 100_000;

/// What every console page is sent with: no script, no frames, no foreign anything.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's state: the API (for the driver and tokens) and the API's router, which
/// the console sends its requests to.
#[derive(Clone)]
pub struct Console {
    api: Api,
    service: Router,
    /// Keys CSRF values where there is no token (the sign-in form, an open console).
    csrf_key: std::sync::Arc<[u8; 32]>,
}

/// The console's routes. `service` is the API router its requests go to.
pub fn routes(api: Api, service: Router) -> Router {
    let console = Console {
        api,
        service,
        csrf_key: std::sync::Arc::new(rand::random()),
    };
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/assets/console.css", get(stylesheet))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", axum::routing::post(sign_out))
        .route("/ui/workflows", get(workflows))
        .route(
            "/ui/workflows/{name}/{action}",
            get(confirm_workflow).post(act_workflow),
        )
        .route("/ui/instances", get(instances))
        .route("/ui/instances/{id}", get(instance))
        .route("/ui/instances/{id}/{action}", get(confirm).post(act))
        .route("/ui/bulk", get(confirm_bulk).post(act_bulk))
        .route("/ui/reports", get(reports))
        .route("/ui/{*rest}", get(unknown_page))
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Pages show customer cases: no shared cache keeps them, and Back re-asks.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The cookies and peer of one visit.
pub struct Visit {
    /// The signed-in token, as the cookie holds it.
    token: Option<String>,
    /// The CSRF nonce, as its cookie holds it.
    nonce: String,
    /// The CSRF value this visit's forms carry: a keyed hash of the nonce.
    csrf: String,
    /// The CSRF cookie is new: the answer sets it.
    fresh_csrf: bool,
    /// A browser said the request came from another site (`Sec-Fetch-Site`, `Origin`).
    cross_site: bool,
    /// The `Host` is a loopback name (what an open console answers to).
    loopback_host: bool,
    /// The request came over HTTPS (through a proxy that says so): cookies are `Secure`.
    https: bool,
    peer: Option<ConnectInfo<SocketAddr>>,
    /// Path and query of this page, to come back to after signing in.
    here: String,
}

impl FromRequestParts<Console> for Visit {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Infallible> {
        let token = cookie(&parts.headers, TOKEN_COOKIE).and_then(|v| {
            url::form_urlencoded::parse(format!("t={v}").as_bytes())
                .next()
                .map(|(_, t)| t.into_owned())
                .filter(|t| !t.is_empty())
        });
        let (nonce, fresh_csrf) = match cookie(&parts.headers, CSRF_COOKIE)
            .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            Some(c) => (c.to_string(), false),
            None => (hex::encode(rand::random::<[u8; 32]>()), true),
        };
        let key: &[u8] = match &token {
            Some(t) => t.as_bytes(),
            None => c.csrf_key.as_slice(),
        };
        let csrf = csrf_value(key, &nonce);
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let cross_site = cross_site(&parts.headers, host);
        let https = parts
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        Ok(Visit {
            token,
            nonce,
            csrf,
            fresh_csrf,
            cross_site,
            loopback_host: is_loopback_host(host),
            https,
            peer: parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
            here: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/ui/instances".into()),
        })
    }
}

/// The CSRF value of a nonce under a key (the visitor's token, or the process's key).
fn csrf_value(key: &[u8], nonce: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"casework-console-csrf\0");
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(nonce.as_bytes());
    hex::encode(h.finalize())
}

/// Whether a browser says the request comes from another site: `Sec-Fetch-Site` other
/// than `same-origin` (or `none`, typed by the user), or an `Origin` whose host is not
/// this one. Clients that send neither (curl, tests) are not browsers a site can drive.
fn cross_site(headers: &HeaderMap, host: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(origin) => {
            let rest = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            rest != Some(host)
        }
    }
}

/// `127.0.0.1`, `localhost`, `[::1]` (with any port): the names an open console answers.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One cookie's value from the `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl Visit {
    fn set_cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
        if self.https {
            c.push_str("; Secure");
        }
        if let Some(s) = max_age {
            c.push_str(&format!("; Max-Age={s}"));
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// A page, with the CSRF cookie when this visit made it.
    fn page(&self, status: StatusCode, markup: Markup) -> Response {
        let mut resp = (status, axum::response::Html(markup.into_string())).into_response();
        if self.fresh_csrf {
            resp.headers_mut().append(
                header::SET_COOKIE,
                self.set_cookie(CSRF_COOKIE, &self.nonce, None),
            );
        }
        resp
    }

    /// Whether a submitted form's CSRF value is this visitor's, from this site.
    fn csrf_ok(&self, submitted: &str) -> bool {
        !self.fresh_csrf
            && !self.cross_site
            && bool::from(self.csrf.as_bytes().ct_eq(submitted.as_bytes()))
    }
}

/// Who is looking: the API's caller for the visit's token.
#[derive(Clone, Debug)]
pub struct Viewer {
    caller: Caller,
}

impl Viewer {
    /// Whether the actions (admin scope) are offered.
    fn may_act(&self) -> bool {
        match &self.caller {
            Caller::Open => true,
            Caller::Token { scope, .. } => *scope >= Scope::Admin,
        }
    }

    fn describe(&self) -> String {
        match &self.caller {
            Caller::Open => "open console (loopback, no tokens configured)".into(),
            Caller::Token { name, scope } => {
                format!("signed in as {name} ({} scope)", scope.as_str())
            }
        }
    }

    fn signed_in(&self) -> bool {
        matches!(self.caller, Caller::Token { .. })
    }
}

/// A visit that cannot see pages yet: it must sign in first (and what to tell it), or it
/// came to an open console by a name that is not loopback.
pub enum MustSignIn {
    SignIn(Option<Flash>),
    ForeignHost,
}

impl MustSignIn {
    fn answer(self, visit: &Visit) -> Response {
        match self {
            MustSignIn::SignIn(why) => to_sign_in(visit, why),
            // Plain text: nothing of the console for a page that rebound its name.
            MustSignIn::ForeignHost => (
                StatusCode::FORBIDDEN,
                "This console has no tokens configured, so it answers only on loopback names (127.0.0.1, localhost); configure tokens to serve it under another name.",
            )
                .into_response(),
        }
    }
}

/// An answer of the API.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    /// The API's error code and message, when it refused.
    fn refusal(&self) -> Option<page::Refusal> {
        if self.status.is_success() {
            return None;
        }
        let e = &self.body["error"];
        Some(page::Refusal {
            status: self.status,
            code: e["code"].as_str().unwrap_or("error").to_string(),
            message: e["message"]
                .as_str()
                .unwrap_or("the daemon gave no reason")
                .to_string(),
        })
    }
}

impl Console {
    fn tokens(&self) -> &Tokens {
        self.api.tokens()
    }

    /// The viewer of a visit, or why they must sign in.
    fn viewer(&self, visit: &Visit) -> Result<Viewer, MustSignIn> {
        if self.tokens().is_open() {
            if !visit.loopback_host {
                return Err(MustSignIn::ForeignHost);
            }
            return Ok(Viewer {
                caller: Caller::Open,
            });
        }
        let Some(token) = &visit.token else {
            return Err(MustSignIn::SignIn(None));
        };
        match self
            .tokens()
            .check(Some(&format!("Bearer {token}")), Scope::Read)
        {
            Ok(caller) => Ok(Viewer { caller }),
            // Read is the smallest scope, so any known token passes; an unknown one was
            // removed from the configuration (or never was a token).
            Err(Denied::Unauthorized | Denied::Forbidden { .. }) => {
                Err(MustSignIn::SignIn(Some(Flash::TokenRefused)))
            }
        }
    }

    /// `GET /v1/instances/{id}` with the visit's token.
    async fn instance_view(&self, visit: &Visit, id: &str) -> Answer {
        let uri = format!("/v1/instances/{}", encode(id));
        self.call(visit, Method::GET, &uri, None).await
    }

    /// A loaded workflow's entry in `GET /v1/workflows`, or why there is none.
    async fn workflow_entry(&self, visit: &Visit, name: &str) -> Result<Value, page::Refusal> {
        let answer = self.call(visit, Method::GET, "/v1/workflows", None).await;
        if let Some(r) = answer.refusal() {
            return Err(r);
        }
        answer.body["workflows"]
            .as_array()
            .and_then(|l| l.iter().find(|w| w["name"] == json!(name)))
            .cloned()
            .ok_or_else(|| page::Refusal {
                status: StatusCode::NOT_FOUND,
                code: "workflow_not_found".into(),
                message: format!("no workflow named `{name}` is loaded"),
            })
    }

    /// An in-process request to the API with the visit's token.
    async fn call(&self, visit: &Visit, method: Method, uri: &str, body: Option<Value>) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = &visit.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        let mut req = match req {
            Ok(r) => r,
            Err(e) => return internal_answer(e),
        };
        // The API's rate limit counts the visitor, not the console.
        if let Some(peer) = &visit.peer {
            req.extensions_mut().insert(*peer);
        }
        let resp = match self.service.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        match axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES).await {
            Ok(bytes) => Answer {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            },
            Err(e) => internal_answer(e),
        }
    }
}

fn internal_answer(e: impl std::fmt::Display) -> Answer {
    Answer {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: json!({"error": {"code": "internal", "message": e.to_string()}}),
    }
}

/// Where to go back to after signing in: a console page, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.starts_with("/ui//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/ui/instances".into(),
    }
}

fn to_sign_in(visit: &Visit, why: Option<Flash>) -> Response {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("next", &safe_next(Some(&visit.here)));
    if let Some(f) = why {
        q.append_pair("flash", f.as_str());
    }
    let mut resp = Redirect::to(&format!("/ui/sign-in?{}", q.finish())).into_response();
    if why.is_some() {
        // The cookie holds a token the daemon no longer accepts: forget it.
        resp.headers_mut().append(
            header::SET_COOKIE,
            visit.set_cookie(TOKEN_COOKIE, "", Some(0)),
        );
    }
    resp
}

/// The API refused a read: a page saying so, or sign-in when the token stopped working.
fn refused(visit: &Visit, viewer: &Viewer, r: page::Refusal) -> Response {
    if r.status == StatusCode::UNAUTHORIZED {
        return to_sign_in(visit, Some(Flash::TokenRefused));
    }
    visit.page(r.status, page::refused(viewer, visit, &r))
}

async fn home() -> Redirect {
    Redirect::to("/ui/instances")
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        page::STYLESHEET,
    )
        .into_response()
}

async fn unknown_page(State(c): State<Console>, visit: Visit) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    visit.page(
        StatusCode::NOT_FOUND,
        page::refused(
            &viewer,
            &visit,
            &page::Refusal {
                status: StatusCode::NOT_FOUND,
                code: "page_not_found".into(),
                message: "there is no such console page".into(),
            },
        ),
    )
}

#[derive(Deserialize)]
struct SignInQuery {
    next: Option<String>,
    flash: Option<String>,
}

async fn sign_in_page(
    State(c): State<Console>,
    visit: Visit,
    Query(q): Query<SignInQuery>,
) -> Response {
    if c.tokens().is_open() {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    let flash = q.flash.as_deref().and_then(Flash::parse);
    visit.page(
        StatusCode::OK,
        page::sign_in(&visit, &safe_next(q.next.as_deref()), flash, None),
    )
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

async fn sign_in(State(c): State<Console>, visit: Visit, Form(f): Form<SignInForm>) -> Response {
    let next = safe_next(f.next.as_deref());
    if c.tokens().is_open() {
        return Redirect::to(&next).into_response();
    }
    if !visit.csrf_ok(&f.csrf) {
        return visit.page(
            StatusCode::FORBIDDEN,
            page::sign_in(&visit, &next, Some(Flash::StaleForm), None),
        );
    }
    // Guesses count against the API's rate limit for this client, as API requests do.
    if let Err(secs) = c.api.take_rate(visit.peer.map(|p| p.0)) {
        return visit.page(
            StatusCode::TOO_MANY_REQUESTS,
            page::sign_in(
                &visit,
                &next,
                None,
                Some(&format!(
                    "Too many attempts from here; wait {secs} s and try again."
                )),
            ),
        );
    }
    let token = f.token.trim();
    match c.tokens().check(Some(&format!("Bearer {token}")), Scope::Read) {
        Ok(_) => {
            let value: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
            let mut resp = Redirect::to(&next).into_response();
            resp.headers_mut()
                .append(header::SET_COOKIE, visit.set_cookie(TOKEN_COOKIE, &value, None));
            resp
        }
        Err(_) => visit.page(
            StatusCode::UNAUTHORIZED,
            page::sign_in(
                &visit,
                &next,
                None,
                Some("This daemon accepts no such token. Check it with whoever runs the daemon (tokens are set with --token or in casework.toml)."),
            ),
        ),
    }
}

/// Signing out needs no CSRF check: making someone sign out harms nothing, and a stale
/// form must still sign out.
async fn sign_out(visit: Visit) -> Response {
    let mut resp = Redirect::to("/ui/sign-in?flash=signed_out").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        visit.set_cookie(TOKEN_COOKIE, "", Some(0)),
    );
    resp
}

async fn workflows(
    State(c): State<Console>,
    visit: Visit,
    Query(q): Query<InstanceQuery>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let answer = c.call(&visit, Method::GET, "/v1/workflows", None).await;
    if let Some(r) = answer.refusal() {
        return refused(&visit, &viewer, r);
    }
    let loaded = c.api.driver().inner().registry.all_latest();
    let flash = q.flash.as_deref().and_then(Flash::parse);
    visit.page(
        StatusCode::OK,
        page::workflows(&viewer, &visit, &answer.body, &loaded, flash),
    )
}

/// Pausing or resuming a whole workflow: `true` for pause.
fn workflow_action(action: &str) -> Option<bool> {
    match action {
        "pause" => Some(true),
        "resume" => Some(false),
        _ => None,
    }
}

async fn confirm_workflow(
    State(c): State<Console>,
    visit: Visit,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let Some(pause) = workflow_action(&action) else {
        return unknown_page(State(c), visit).await;
    };
    match c.workflow_entry(&visit, &name).await {
        Ok(w) => visit.page(
            StatusCode::OK,
            page::confirm_workflow(&viewer, &visit, &w, pause, "", None),
        ),
        Err(r) => refused(&visit, &viewer, r),
    }
}

#[derive(Deserialize)]
struct ReasonForm {
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
}

async fn act_workflow(
    State(c): State<Console>,
    visit: Visit,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ReasonForm>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let Some(pause) = workflow_action(&action) else {
        return unknown_page(State(c), visit).await;
    };
    let w = match c.workflow_entry(&visit, &name).await {
        Ok(w) => w,
        Err(r) => return refused(&visit, &viewer, r),
    };
    let reason = f.reason.unwrap_or_default();
    let again = |r: page::Refusal| {
        visit.page(
            r.status,
            page::confirm_workflow(&viewer, &visit, &w, pause, &reason, Some(&r)),
        )
    };
    if !visit.csrf_ok(&f.csrf) {
        return again(stale_form());
    }
    let answer = c
        .call(
            &visit,
            Method::POST,
            &format!("/v1/workflows/{}/{action}", encode(&name)),
            Some(json!({"reason": reason.trim()})),
        )
        .await;
    if let Some(r) = answer.refusal() {
        if r.status == StatusCode::UNAUTHORIZED {
            return to_sign_in(&visit, Some(Flash::TokenRefused));
        }
        return again(r);
    }
    let flash = if pause {
        Flash::WorkflowPaused
    } else {
        Flash::WorkflowResumed
    };
    Redirect::to(&format!("/ui/workflows?flash={}", flash.as_str())).into_response()
}

fn stale_form() -> page::Refusal {
    page::Refusal {
        status: StatusCode::FORBIDDEN,
        code: "stale_form".into(),
        message: Flash::StaleForm.text().into(),
    }
}

/// The list page's filters, as the query string has them.
#[derive(Deserialize, Default)]
pub struct ListFilter {
    pub workflow: Option<String>,
    pub status: Option<String>,
    pub cursor: Option<String>,
    /// Created at or after (RFC 3339, or a date as a browser's date field sends it).
    pub from: Option<String>,
    /// Created before.
    pub to: Option<String>,
    /// Search attributes, as `where.NAME=VALUE` (see [`ListFilter::search`]).
    #[serde(flatten)]
    pub attributes: BTreeMap<String, String>,
}

/// A creation range and search attributes as the API takes them.
#[derive(Debug, Default)]
pub struct ApiFilters {
    /// RFC 3339.
    pub started_after: Option<String>,
    pub started_before: Option<String>,
    /// Attribute name → value.
    pub search: BTreeMap<String, String>,
}

impl ApiFilters {
    /// As query parameters of `GET /v1/instances`.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let range = [
            ("started_after", &self.started_after),
            ("started_before", &self.started_before),
        ];
        range
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .chain(self.search.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// The prefix of a search attribute's field in the list's filter form, so an attribute
/// named like another parameter of the page (`flash`, say) cannot be mistaken for it.
pub const WHERE: &str = "where.";

impl ListFilter {
    fn non_empty(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// The search attributes filled in: name → value.
    pub fn search(attributes: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        attributes
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(WHERE)?;
                let v = v.trim();
                (!v.is_empty()).then(|| (name.to_string(), v.to_string()))
            })
            .collect()
    }

    /// The API's filters for a creation range and search attributes (the workflow and
    /// status are the caller's), or the page's refusal when the range does not read.
    pub fn api_filters(
        from: &Option<String>,
        to: &Option<String>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<ApiFilters, page::Refusal> {
        let bad_query = |message: String| page::Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_query".into(),
            message,
        };
        let from = Self::bound(from, "from").map_err(bad_query)?;
        let to = Self::bound(to, "to").map_err(bad_query)?;
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                return Err(bad_query(
                    "`from` must be before `to` (the day after the last one you want)".into(),
                ));
            }
        }
        let rfc = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        Ok(ApiFilters {
            started_after: rfc(from),
            started_before: rfc(to),
            search: Self::search(attributes),
        })
    }

    /// A bound of the time range in epoch milliseconds; a date alone is its midnight UTC.
    fn bound(v: &Option<String>, field: &str) -> Result<Option<i64>, String> {
        let Some(t) = Self::non_empty(v) else {
            return Ok(None);
        };
        if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(d
                .and_hms_opt(0, 0, 0)
                .map(|dt| dt.and_utc().timestamp_millis()));
        }
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.timestamp_millis()))
            .map_err(|_| {
                format!(
                    "`{field}` must be a date like 2026-11-30 or a time like 2026-11-30T09:00:00Z"
                )
            })
    }
}

async fn instances(
    State(c): State<Console>,
    visit: Visit,
    Query(filter): Query<ListFilter>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let filters = match ListFilter::api_filters(&filter.from, &filter.to, &filter.attributes) {
        Ok(f) => f,
        Err(r) => return refused(&visit, &viewer, r),
    };
    // Pages of the API's list. A filter that matches little of a large store gives short
    // pages (the API reads a bounded part of its index per request): a few are read per
    // console page, and a cursor goes on from there.
    let mut shown: Vec<Value> = Vec::new();
    let mut cursor = ListFilter::non_empty(&filter.cursor).map(str::to_string);
    let mut next: Option<String> = None;
    for _ in 0..8 {
        // (The serializer is not Send: it may not live across the await.)
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &(LIST_PAGE - shown.len()).to_string());
            if let Some(w) = ListFilter::non_empty(&filter.workflow) {
                q.append_pair("workflow", w);
            }
            if let Some(s) = ListFilter::non_empty(&filter.status) {
                q.append_pair("status", s);
            }
            for (k, v) in filters.pairs() {
                q.append_pair(k, v);
            }
            if let Some(cur) = &cursor {
                q.append_pair("cursor", cur);
            }
            q.finish()
        };
        let answer = c
            .call(&visit, Method::GET, &format!("/v1/instances?{query}"), None)
            .await;
        if let Some(r) = answer.refusal() {
            return refused(&visit, &viewer, r);
        }
        let page_items = answer.body["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        shown.extend(page_items);
        next = answer.body["next_cursor"].as_str().map(str::to_string);
        if shown.len() >= LIST_PAGE || next.is_none() {
            break;
        }
        cursor = next.clone();
    }
    let counts = count_by_status(&c, ListFilter::non_empty(&filter.workflow)).await;
    let workflow_names: Vec<String> = c
        .api
        .driver()
        .inner()
        .registry
        .all_latest()
        .iter()
        .map(|w| w.name.clone())
        .collect();
    let attributes = ListFilter::non_empty(&filter.workflow)
        .map(|w| c.api.driver().inner().registry.search_attributes(w))
        .unwrap_or_default();
    visit.page(
        StatusCode::OK,
        page::instances(
            &viewer,
            &visit,
            &filter,
            &shown,
            next.as_deref(),
            &counts,
            &workflow_names,
            &attributes,
        ),
    )
}

/// Instances by status (of one workflow), from at most [`MAX_COUNT_SCAN`] index entries.
async fn count_by_status(c: &Console, workflow: Option<&str>) -> page::Counts {
    let inner = c.api.driver().inner().clone();
    let workflow = workflow.map(str::to_string);
    let counted = tokio::task::spawn_blocking(move || {
        let mut counts = page::Counts::default();
        let mut cursor: Option<String> = None;
        let mut scanned = 0;
        loop {
            let page = inner.store.instances(cursor.as_deref(), 1000)?;
            scanned += page.len();
            for m in &page {
                if workflow.as_ref().is_none_or(|w| &m.workflow == w) {
                    *counts.by_status.entry(m.status.clone()).or_default() += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == 1000 => {
                    if scanned >= MAX_COUNT_SCAN {
                        counts.partial = true;
                        return Ok::<_, crate::store::Error>(counts);
                    }
                    cursor = Some(last.id.clone());
                }
                _ => return Ok(counts),
            }
        }
    })
    .await;
    match counted {
        Ok(Ok(c)) => c,
        _ => page::Counts {
            unavailable: true,
            ..Default::default()
        },
    }
}

#[derive(Deserialize)]
struct InstanceQuery {
    flash: Option<String>,
}

async fn instance(
    State(c): State<Console>,
    visit: Visit,
    Path(id): Path<String>,
    Query(q): Query<InstanceQuery>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let answer = c.instance_view(&visit, &id).await;
    if let Some(r) = answer.refusal() {
        return refused(&visit, &viewer, r);
    }
    let wf = pinned(&c, &id);
    // An ended instance's clocks are read as they stood when it ended, not as they
    // would run on today.
    let ended_at = matches!(
        answer.body["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
    .then(|| {
        answer.body["journal"]
            .as_array()
            .and_then(|j| j.last())
            .and_then(|e| e["at"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    })
    .flatten();
    let now = ended_at.unwrap_or_else(|| c.api.driver().inner().clock.now_ms());
    let clocks = clocks::of_vars(
        &answer.body["vars"],
        &c.api.driver().inner().rules.calendars(),
        now,
    );
    let flash = q.flash.as_deref().and_then(Flash::parse);
    visit.page(
        StatusCode::OK,
        page::instance(&viewer, &visit, &answer.body, wf.as_deref(), &clocks, flash),
    )
}

/// The workflow version an instance is pinned to, for its step map.
fn pinned(c: &Console, id: &str) -> Option<std::sync::Arc<crate::compile::CompiledWorkflow>> {
    let inner = c.api.driver().inner();
    let meta = inner.store.instance(id).ok()??;
    inner
        .registry
        .replay(inner.store.as_ref(), &meta, &inner.rules)
        .ok()
        .map(|(_, wf)| wf)
}

/// One path segment, percent-encoded.
fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The actions the console offers on an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Retry,
    Cancel,
    Pause,
    Resume,
    Event,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "retry" => Action::Retry,
            "cancel" => Action::Cancel,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "event" => Action::Event,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Event => "event",
        }
    }

    /// Whether the operator must say why (the journal records it).
    pub fn needs_reason(self) -> bool {
        matches!(self, Action::Cancel | Action::Pause | Action::Resume)
    }

    fn done(self) -> Flash {
        match self {
            Action::Retry => Flash::Retried,
            Action::Cancel => Flash::Cancelled,
            Action::Pause => Flash::Paused,
            Action::Resume => Flash::Resumed,
            Action::Event => Flash::Delivered,
        }
    }
}

#[derive(Deserialize)]
struct ConfirmQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
}

/// The page that asks to confirm an action (and holds its form).
async fn confirm(
    State(c): State<Console>,
    visit: Visit,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<ConfirmQuery>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let Some(action) = Action::parse(&action) else {
        return unknown_page(State(c), visit).await;
    };
    let answer = c.instance_view(&visit, &id).await;
    if let Some(r) = answer.refusal() {
        return refused(&visit, &viewer, r);
    }
    let form = page::ActionForm {
        event_type: q.event_type,
        reason: String::new(),
        data: "{}".into(),
    };
    visit.page(
        StatusCode::OK,
        page::confirm(&viewer, &visit, &answer.body, action, &form, None),
    )
}

#[derive(Deserialize)]
struct ActForm {
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    data: Option<String>,
}

/// Carries out a confirmed action through the API; a refusal is shown on the form.
async fn act(
    State(c): State<Console>,
    visit: Visit,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActForm>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let Some(action) = Action::parse(&action) else {
        return unknown_page(State(c), visit).await;
    };
    let view = c.instance_view(&visit, &id).await;
    if let Some(r) = view.refusal() {
        return refused(&visit, &viewer, r);
    }
    let form = page::ActionForm {
        event_type: f.event_type.clone(),
        reason: f.reason.clone().unwrap_or_default(),
        data: f.data.clone().unwrap_or_else(|| "{}".into()),
    };
    let again = |status: StatusCode, r: page::Refusal| {
        visit.page(
            status,
            page::confirm(&viewer, &visit, &view.body, action, &form, Some(&r)),
        )
    };
    if !visit.csrf_ok(&f.csrf) {
        return again(StatusCode::FORBIDDEN, stale_form());
    }
    let path = format!("/v1/instances/{}", encode(&id));
    let reason = json!({"reason": form.reason.trim()});
    let answer = match action {
        Action::Retry => {
            c.call(&visit, Method::POST, &format!("{path}/retry"), None)
                .await
        }
        Action::Cancel => {
            c.call(
                &visit,
                Method::POST,
                &format!("{path}/cancel"),
                Some(reason),
            )
            .await
        }
        Action::Pause => {
            c.call(&visit, Method::POST, &format!("{path}/pause"), Some(reason))
                .await
        }
        Action::Resume => {
            c.call(
                &visit,
                Method::POST,
                &format!("{path}/resume"),
                Some(reason),
            )
            .await
        }
        Action::Event => match event_body(&c, &id, &form) {
            Ok(body) => c.call(&visit, Method::POST, "/v1/events", Some(body)).await,
            Err(message) => {
                let r = page::Refusal {
                    status: StatusCode::BAD_REQUEST,
                    code: "invalid_event".into(),
                    message,
                };
                return again(StatusCode::BAD_REQUEST, r);
            }
        },
    };
    if let Some(r) = answer.refusal() {
        if r.status == StatusCode::UNAUTHORIZED {
            return to_sign_in(&visit, Some(Flash::TokenRefused));
        }
        return again(r.status, r);
    }
    // The API delivers to every instance waiting with that type and key: say so unless
    // this one took it.
    if action == Action::Event {
        let took = answer.body["woken"]
            .as_array()
            .is_some_and(|w| w.iter().any(|i| i.as_str() == Some(id.as_str())));
        if !took {
            let message = if answer.body["buffered"] == json!(true) {
                "the event was kept in the inbox: the instance did not take it now (it may be paused); it takes it when it next waits for it"
            } else {
                "the instance did not take the event (it may have moved on meanwhile); reload it to see what it waits for"
            };
            let r = page::Refusal {
                status: StatusCode::CONFLICT,
                code: "not_taken".into(),
                message: message.into(),
            };
            return again(StatusCode::CONFLICT, r);
        }
    }
    Redirect::to(&format!(
        "/ui/instances/{}?flash={}",
        encode(&id),
        action.done().as_str()
    ))
    .into_response()
}

/// The event an operator delivers from the page: the type they chose among those the
/// instance waits for, the data they wrote, and the key the wait listens on (read from
/// the instance, so it is never shown or typed).
fn event_body(c: &Console, id: &str, form: &page::ActionForm) -> Result<Value, String> {
    let event_type = form
        .event_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("choose the event to deliver")?;
    let data: Value = serde_json::from_str(form.data.trim()).map_err(|e| {
        format!("the event data is not JSON ({e}); write an object such as {{\"by\": \"lead-2\"}}")
    })?;
    if !data.is_object() {
        return Err("the event data must be a JSON object, such as {\"by\": \"lead-2\"}".into());
    }
    let inner = c.api.driver().inner();
    let meta = inner
        .store
        .instance(id)
        .ok()
        .flatten()
        .ok_or("the instance's workflow version is not available")?;
    let journal = inner
        .store
        .journal(id)
        .map_err(|e| format!("the journal could not be read: {e}"))?;
    let (inst, _) = inner
        .registry
        .replay_journal(inner.store.as_ref(), &meta, &journal, &inner.rules)
        .map_err(|_| "the instance's workflow version is not available")?;
    let key = inst.waiting_key(event_type).ok_or_else(|| {
        format!("the instance no longer waits for `{event_type}`; reload the instance to see what it waits for")
    })?;
    // One id per wait: a double click or a resent form is delivered once.
    let wait = journal
        .iter()
        .rposition(|r| {
            matches!(r, crate::journal::Record::WaitStarted { events, .. } if events.iter().any(|e| e == event_type))
        })
        .unwrap_or(journal.len());
    let event_id = format!("console:{id}:{event_type}:{wait}");
    Ok(json!({"type": event_type, "key": key, "data": data, "id": event_id}))
}

/// A bulk action over the list's filter (`/ui/bulk?action=retry&workflow=refund&status=failed`).
#[derive(Deserialize)]
pub struct BulkForm {
    pub action: String,
    pub workflow: String,
    pub status: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Search attributes as the list's filter has them (`where.NAME`).
    #[serde(flatten)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    csrf: String,
}

impl BulkForm {
    fn action(&self) -> Option<Action> {
        Action::parse(&self.action).filter(|a| *a != Action::Event)
    }
}

async fn confirm_bulk(
    State(c): State<Console>,
    visit: Visit,
    Query(f): Query<BulkForm>,
) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    if f.action().is_none() {
        return unknown_page(State(c), visit).await;
    }
    let matching = match bulk_filters(&c, &f).await {
        Ok((_, matching)) => matching,
        Err((r, matching)) => {
            return visit.page(
                r.status,
                page::confirm_bulk(&viewer, &visit, &f, &matching, Some(&r)),
            )
        }
    };
    visit.page(
        StatusCode::OK,
        page::confirm_bulk(&viewer, &visit, &f, &matching, None),
    )
}

async fn act_bulk(State(c): State<Console>, visit: Visit, Form(f): Form<BulkForm>) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let Some(action) = f.action() else {
        return unknown_page(State(c), visit).await;
    };
    // A filter that does not read is refused, never dropped: dropped, the action would
    // reach every instance of the workflow with the status.
    let (filters, matching) = match bulk_filters(&c, &f).await {
        Ok(found) => found,
        Err((r, matching)) => {
            return visit.page(
                r.status,
                page::confirm_bulk(&viewer, &visit, &f, &matching, Some(&r)),
            )
        }
    };
    if !visit.csrf_ok(&f.csrf) {
        let r = stale_form();
        return visit.page(
            r.status,
            page::confirm_bulk(&viewer, &visit, &f, &matching, Some(&r)),
        );
    }
    let mut body = json!({"action": action.as_str(), "workflow": f.workflow, "limit": 1000});
    if let Some(s) = ListFilter::non_empty(&f.status) {
        body["status"] = json!(s);
    }
    for (k, v) in [
        ("started_after", &filters.started_after),
        ("started_before", &filters.started_before),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    if !filters.search.is_empty() {
        body["search"] = json!(filters.search);
    }
    if action.needs_reason() {
        body["reason"] = json!(f.reason.trim());
    }
    let answer = c.call(&visit, Method::POST, "/v1/bulk", Some(body)).await;
    if let Some(r) = answer.refusal() {
        if r.status == StatusCode::UNAUTHORIZED {
            return to_sign_in(&visit, Some(Flash::TokenRefused));
        }
        return visit.page(
            r.status,
            page::confirm_bulk(&viewer, &visit, &f, &matching, Some(&r)),
        );
    }
    visit.page(
        StatusCode::OK,
        page::bulk_done(&viewer, &visit, &f, &answer.body),
    )
}

/// A bulk action's range and attributes, and how many instances they match now; or the
/// refusal of a range that does not read (with no count: it would not be the action's).
async fn bulk_filters(
    c: &Console,
    f: &BulkForm,
) -> Result<(ApiFilters, page::Matching), (page::Refusal, page::Matching)> {
    let unavailable = page::Matching {
        unavailable: true,
        ..Default::default()
    };
    let filters =
        ListFilter::api_filters(&f.from, &f.to, &f.attributes).map_err(|r| (r, unavailable))?;
    let matching = bulk_matching(c, f, &filters).await;
    Ok((filters, matching))
}

/// How many instances a bulk action's filter matches now: by status from the counts, or,
/// with a time range or search attributes, counted through the same selection the action
/// makes (at most what one page of it reads: `partial` then).
async fn bulk_matching(c: &Console, f: &BulkForm, filters: &ApiFilters) -> page::Matching {
    let status = ListFilter::non_empty(&f.status).map(str::to_string);
    if filters.pairs().next().is_none() {
        let counts = count_by_status(c, Some(&f.workflow)).await;
        return page::Matching {
            n: match &status {
                Some(s) => counts.by_status.get(s).copied().unwrap_or(0),
                None => counts.by_status.values().sum(),
            },
            partial: counts.partial,
            unavailable: counts.unavailable,
        };
    }
    let inner = c.api.driver().inner().clone();
    let workflow = f.workflow.clone();
    let (after, before, search) = (
        filters.started_after.clone(),
        filters.started_before.clone(),
        filters.search.clone(),
    );
    let counted = tokio::task::spawn_blocking(move || {
        let selection = super::selection::Selection::new(
            inner.store.as_ref(),
            |w| inner.registry.search_attributes(w),
            Some(workflow),
            status,
            (after.as_deref(), before.as_deref()),
            &search,
        )
        .ok()?;
        let page = selection
            .page(inner.store.as_ref(), None, super::selection::MAX_SCAN)
            .ok()?;
        Some((page.found.len() as u64, page.next.is_some()))
    })
    .await;
    match counted {
        Ok(Some((n, partial))) => page::Matching {
            n,
            partial,
            unavailable: false,
        },
        _ => page::Matching {
            unavailable: true,
            ..Default::default()
        },
    }
}

async fn reports(State(c): State<Console>, visit: Visit) -> Response {
    let viewer = match c.viewer(&visit) {
        Ok(v) => v,
        Err(m) => return m.answer(&visit),
    };
    let answer = c.call(&visit, Method::GET, "/v1/reports", None).await;
    if let Some(r) = answer.refusal() {
        return refused(&visit, &viewer, r);
    }
    let reports: Vec<super::report::WorkflowReport> =
        serde_json::from_value(answer.body["workflows"].clone()).unwrap_or_default();
    visit.page(StatusCode::OK, page::reports(&viewer, &visit, &reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_pages_are_gone_back_to_after_sign_in() {
        assert_eq!(safe_next(Some("/ui/instances/abc")), "/ui/instances/abc");
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil",
            "/v1/backup",
            "/ui\\x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/instances", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/instances");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xcasework_token=no; casework_token=yes; other=1"),
        );
        assert_eq!(cookie(&h, TOKEN_COOKIE), Some("yes"));
        assert_eq!(cookie(&h, CSRF_COOKIE), None);
    }

    #[test]
    fn a_time_range_takes_dates_and_times_and_refuses_other_text() {
        let day = ListFilter::bound(&Some("2026-11-30".into()), "from").unwrap();
        let time = ListFilter::bound(&Some("2026-11-30T00:00:00Z".into()), "from").unwrap();
        assert_eq!(day, time);
        assert_eq!(ListFilter::bound(&Some(" ".into()), "from").unwrap(), None);
        let e = ListFilter::bound(&Some("yesterday".into()), "to").unwrap_err();
        assert!(e.contains("`to`"), "{e}");
    }
}
