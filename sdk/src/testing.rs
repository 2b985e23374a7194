//! A fake host for native unit tests: set config and secrets, queue canned
//! HTTP responses keyed by method and URL, pin the clock, then inspect the
//! requests and log lines the plugin produced.
//!
//! State is per thread and [`FakeHost::new`] resets it, so tests run in
//! parallel under `cargo test` without seeing each other.
//!
//! ```
//! use casework_sdk::{http, testing::{self, FakeHost}, Action, Context, Plugin, Result};
//! use serde_json::json;
//!
//! fn ping(_: serde_json::Value, ctx: &Context) -> Result<u16> {
//!     let url = format!("{}/ping", casework_sdk::config::require("base_url")?);
//!     let response = http::post(url).header("idempotency-key", &ctx.idempotency_key).send()?;
//!     Ok(response.status)
//! }
//!
//! struct Pinger;
//! impl Plugin for Pinger {
//!     fn actions() -> Vec<Action> {
//!         vec![Action::new("ping", "Pings.", ping)]
//!     }
//! }
//!
//! let host = FakeHost::new();
//! host.config("base_url", "http://127.0.0.1:9");
//! host.respond(http::Method::Post, "http://127.0.0.1:9/ping", http::Response::new(204));
//!
//! assert_eq!(host.invoke::<Pinger>("ping", &json!({})).unwrap(), json!(204));
//! let sent = host.requests();
//! assert_eq!(sent.len(), 1);
//! assert_eq!(sent[0].header("idempotency-key"), Some(testing::context().idempotency_key.as_str()));
//! ```

use crate::http::{self, Method, Response};
use crate::log::Level;
use crate::manifest::Manifest;
use crate::{Context, Plugin};

/// A request the plugin sent through the fake host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method.
    pub method: Method,
    /// Full URL as the plugin built it.
    pub url: String,
    /// Headers in the order the plugin added them.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first header called `name`, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }

    /// Every value of header `name`, case-insensitively.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as UTF-8. Panics if it is not.
    pub fn body_text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("request body is not UTF-8")
    }

    /// The body parsed as JSON. Panics if it is not JSON.
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is not JSON")
    }

    /// The body parsed as `application/x-www-form-urlencoded` pairs, in order.
    pub fn body_form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// A log line the plugin wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: Level,
    /// Text.
    pub message: String,
}

/// The context [`FakeHost::invoke`] passes: instance `inst-1`, step
/// `step-1`, attempt 1, idempotency key `inst-1:step-1`.
pub fn context() -> Context {
    Context::new("inst-1", "step-1", 1, "inst-1:step-1")
}

/// Handle to this thread's fake host.
///
/// Creating one resets the thread's state; keep it alive for the test and use
/// it to configure and inspect.
pub struct FakeHost {
    // The state is thread-local: the handle must not move to another thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl FakeHost {
    /// Resets this thread's fake host: no config, no secrets, no canned
    /// responses, clock at 2024-01-01T00:00:00Z.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        fake::STATE.with(|s| *s.borrow_mut() = fake::State::default());
        Self {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Sets config `key`.
    pub fn config(&self, key: &str, value: &str) -> &Self {
        fake::with(|s| s.config.insert(key.to_string(), value.to_string()));
        self
    }

    /// Loads every `[config]` entry of a manifest, as the host would.
    pub fn config_from_manifest(&self, manifest: &Manifest) -> &Self {
        for (key, value) in &manifest.config {
            self.config(key, value);
        }
        self
    }

    /// Stores secret `name`.
    pub fn secret(&self, name: &str, value: &str) -> &Self {
        fake::with(|s| s.secrets.insert(name.to_string(), Ok(value.to_string())));
        self
    }

    /// Makes lookups of `name` fail as the real host would for an ungranted
    /// name.
    pub fn deny_secret(&self, name: &str) -> &Self {
        fake::with(|s| {
            s.secrets.insert(
                name.to_string(),
                Err(crate::secrets::LookupError::NotGranted),
            )
        });
        self
    }

    /// Queues a response for `method url` (exact URL, query included).
    /// Queued answers are served in order; the last one repeats.
    pub fn respond(&self, method: Method, url: &str, response: Response) -> &Self {
        self.answer(method, url, Ok(response))
    }

    /// Queues a transport failure (timeout, refused connection, ...) for
    /// `method url`.
    pub fn fail(&self, method: Method, url: &str, error: http::Error) -> &Self {
        self.answer(method, url, Err(error))
    }

    fn answer(&self, method: Method, url: &str, answer: fake::Answer) -> &Self {
        fake::with(|s| {
            s.routes
                .entry((method, url.to_string()))
                .or_default()
                .push_back(answer)
        });
        self
    }

    /// Pins the clock.
    pub fn set_now_ms(&self, now_ms: u64) -> &Self {
        fake::with(|s| s.now_ms = now_ms);
        self
    }

    /// Every request sent so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        fake::with(|s| s.requests.clone())
    }

    /// Every log line written so far, oldest first.
    pub fn logs(&self) -> Vec<LogLine> {
        fake::with(|s| s.logs.clone())
    }

    /// Runs `action` of `P` with a JSON input and [`context()`], through the
    /// same JSON decoding and encoding as the component export.
    pub fn invoke<P: Plugin>(
        &self,
        action: &str,
        input: &serde_json::Value,
    ) -> crate::Result<serde_json::Value> {
        self.invoke_with::<P>(action, input, &context())
    }

    /// Like [`invoke`](Self::invoke) with an explicit context.
    pub fn invoke_with<P: Plugin>(
        &self,
        action: &str,
        input: &serde_json::Value,
        ctx: &Context,
    ) -> crate::Result<serde_json::Value> {
        let out = crate::action::invoke::<P>(action, input.to_string().as_bytes(), ctx)?;
        Ok(serde_json::from_str(&out).expect("the SDK always emits JSON"))
    }
}

/// What the component's `describe` export returns for `P`.
pub fn describe<P: Plugin>() -> Vec<crate::ActionInfo> {
    crate::action::describe::<P>()
}

/// Asserts that a manifest parses, validates, and lists exactly the actions
/// `P` describes (in any order). Put it in every plugin's tests with
/// `include_str!("../plugin.toml")`.
pub fn assert_manifest_matches<P: Plugin>(manifest_toml: &str) -> Manifest {
    let manifest = Manifest::parse(manifest_toml).unwrap_or_else(|err| panic!("{err}"));
    let mut declared: Vec<&str> = manifest.actions.iter().map(String::as_str).collect();
    let actions = P::actions();
    let mut described: Vec<&str> = actions.iter().map(|a| a.name()).collect();
    declared.sort_unstable();
    described.sort_unstable();
    assert_eq!(
        declared, described,
        "plugin.toml `actions` must match what the plugin describes"
    );
    manifest
}

pub(crate) mod fake {
    //! The thread-local state behind [`FakeHost`](super::FakeHost), and the
    //! host functions the SDK calls on native targets.
    use super::{LogLine, RecordedRequest};
    use crate::host::OutgoingRequest;
    use crate::http::{self, Method, Response};
    use crate::log::Level;
    use crate::secrets::LookupError;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, VecDeque};

    pub(super) type Answer = Result<Response, http::Error>;

    pub(crate) struct State {
        pub(super) config: BTreeMap<String, String>,
        pub(super) secrets: BTreeMap<String, Result<String, LookupError>>,
        pub(super) routes: BTreeMap<(Method, String), VecDeque<Answer>>,
        pub(super) requests: Vec<RecordedRequest>,
        pub(super) logs: Vec<LogLine>,
        pub(super) now_ms: u64,
        random_state: u64,
    }

    impl Default for State {
        fn default() -> Self {
            Self {
                config: BTreeMap::new(),
                secrets: BTreeMap::new(),
                routes: BTreeMap::new(),
                requests: Vec::new(),
                logs: Vec::new(),
                now_ms: 1_704_067_200_000,
                random_state: 0x9E37_79B9_7F4A_7C15,
            }
        }
    }

    thread_local! {
        pub(super) static STATE: RefCell<State> = RefCell::new(State::default());
    }

    pub(super) fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
        STATE.with(|s| f(&mut s.borrow_mut()))
    }

    pub(crate) fn log(level: Level, message: &str) {
        with(|s| {
            s.logs.push(LogLine {
                level,
                message: message.to_string(),
            })
        });
    }

    pub(crate) fn config_get(key: &str) -> Option<String> {
        with(|s| s.config.get(key).cloned())
    }

    pub(crate) fn secret_get(name: &str) -> Result<String, LookupError> {
        with(|s| {
            s.secrets
                .get(name)
                .cloned()
                .unwrap_or(Err(LookupError::NotFound))
        })
    }

    pub(crate) fn http_send(request: OutgoingRequest) -> Result<Response, http::Error> {
        with(|s| {
            s.requests.push(RecordedRequest {
                method: request.method,
                url: request.url.clone(),
                headers: request.headers,
                body: request.body,
            });
            let key = (request.method, request.url);
            match s.routes.get_mut(&key) {
                Some(queue) if queue.len() > 1 => queue.pop_front().expect("queue is not empty"),
                Some(queue) if !queue.is_empty() => queue[0].clone(),
                _ => Err(http::Error::Denied(format!(
                    "fake host has no response for {} {}; add one with FakeHost::respond",
                    key.0, key.1
                ))),
            }
        })
    }

    pub(crate) fn now_ms() -> u64 {
        with(|s| s.now_ms)
    }

    /// Deterministic bytes (SplitMix64) so tests that use randomness replay.
    pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
        with(|s| {
            let mut out = Vec::with_capacity(len as usize);
            while out.len() < len as usize {
                s.random_state = s.random_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s.random_state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                out.extend_from_slice(&z.to_le_bytes());
            }
            out.truncate(len as usize);
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_answers_are_served_in_order_and_the_last_repeats() {
        let host = FakeHost::new();
        let url = "http://127.0.0.1:1/x";
        host.fail(Method::Get, url, http::Error::Timeout);
        host.respond(Method::Get, url, Response::new(200));
        assert_eq!(http::get(url).send(), Err(http::Error::Timeout));
        assert_eq!(http::get(url).send().unwrap().status, 200);
        assert_eq!(http::get(url).send().unwrap().status, 200);
        assert_eq!(host.requests().len(), 3);
    }

    #[test]
    fn unknown_routes_are_denied_and_still_recorded() {
        let host = FakeHost::new();
        host.respond(Method::Get, "http://127.0.0.1:1/x", Response::new(200));
        let err = http::post("http://127.0.0.1:1/x").send().unwrap_err();
        assert!(
            matches!(err, http::Error::Denied(ref m) if m.contains("POST http://127.0.0.1:1/x")),
            "{err}"
        );
        assert_eq!(host.requests()[0].method, Method::Post);
    }

    #[test]
    fn new_resets_state() {
        let host = FakeHost::new();
        host.config("k", "v").secret("s", "x");
        crate::log::info("hello");
        assert_eq!(host.logs().len(), 1);
        let host = FakeHost::new();
        assert_eq!(crate::config::get("k"), None);
        assert_eq!(
            crate::secrets::get("s").unwrap_err().code(),
            "secret_missing"
        );
        assert!(host.logs().is_empty());
    }

    #[test]
    fn denied_secret_is_a_permanent_not_granted() {
        let host = FakeHost::new();
        host.deny_secret("root");
        let err = crate::secrets::get("root").unwrap_err();
        assert_eq!(err.code(), "secret_not_granted");
        assert!(!err.is_retryable());
    }

    #[test]
    fn random_is_deterministic_per_test_and_sized() {
        let _host = FakeHost::new();
        let a = crate::random::bytes(5000);
        let _host = FakeHost::new();
        let b = crate::random::bytes(5000);
        assert_eq!(a.len(), 5000);
        assert_eq!(a, b);
        assert_ne!(a[..8], a[8..16]);
    }
}
