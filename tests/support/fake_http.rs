//! A fake HTTP provider on 127.0.0.1 for plugin tests: records every request
//! exactly as it arrived and answers from a queue of canned responses.

#![allow(dead_code)] // each test binary uses a different part of it

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One request as the provider saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// `application/x-www-form-urlencoded` body as ordered pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// A canned answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Never answer (the connection stays open): a provider that hangs.
    pub hang: bool,
}

impl Answer {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            hang: false,
        }
    }

    /// A JSON answer written out as `body`, byte for byte (numbers as a provider writes
    /// them, which a `serde_json::Value` would round).
    pub fn raw_json(status: u16, body: &str) -> Self {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            hang: false,
        }
    }

    /// A plain-text answer (`text/plain`), e.g. Slack's `ok` or an HTML error page.
    pub fn text(status: u16, body: &str) -> Self {
        Answer {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
            hang: false,
        }
    }

    /// Adds a response header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn redirect(to: &str) -> Self {
        Answer {
            status: 302,
            headers: vec![("location".into(), to.into())],
            body: String::new(),
            hang: false,
        }
    }

    pub fn hang() -> Self {
        Answer {
            status: 200,
            headers: vec![],
            body: String::new(),
            hang: true,
        }
    }
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    answers: Mutex<VecDeque<Answer>>,
}

/// A running fake provider.
#[derive(Clone)]
pub struct FakeProvider {
    shared: Arc<Shared>,
    pub port: u16,
}

impl FakeProvider {
    /// Starts on an ephemeral port of 127.0.0.1 within the current tokio runtime.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider { shared, port }
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The grant string for a plugin manifest.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn answer(&self, answer: Answer) {
        self.shared.answers.lock().unwrap().push_back(answer);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
    });
    let answer = shared.answers.lock().unwrap().pop_front();
    match answer {
        None => (StatusCode::NOT_FOUND, "no canned answer").into_response(),
        Some(a) if a.hang => {
            // Longer than any plugin time limit used in tests, but bounded.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            (StatusCode::GATEWAY_TIMEOUT, "hung").into_response()
        }
        Some(a) => {
            let mut response = Response::builder().status(a.status);
            for (k, v) in &a.headers {
                response = response.header(k, v);
            }
            response.body(axum::body::Body::from(a.body)).unwrap()
        }
    }
}
