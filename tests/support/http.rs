//! Plain HTTP to a test daemon: every status is an answer (never an error), bodies are
//! JSON, and nothing waits longer than 90 s.

#![allow(dead_code)] // each test binary uses a different part of it

use serde_json::Value;
use std::time::{Duration, Instant};

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into()
}

/// `method url` with an optional JSON body and extra headers: the status and the body
/// (`null` when it is not JSON).
pub fn request(
    method: &str,
    url: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let a = agent();
    let resp = match method {
        "POST" => {
            let mut r = a.post(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            match body {
                Some(b) => r.send_json(b),
                None => r.send_empty(),
            }
        }
        "DELETE" => {
            let mut r = a.delete(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = a.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
    };
    let mut resp = resp.unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_json().unwrap_or(Value::Null),
    )
}

/// [`request`] without extra headers.
pub fn call(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    request(method, url, body, &[])
}

/// The instance's view once it has ended (long-polling, at most a minute).
pub fn ended(addr: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = 0;
    loop {
        let (s, v) = call(
            "GET",
            &format!("{addr}/v1/instances/{id}?wait=10s&after={after}"),
            None,
        );
        assert_eq!(s, 200, "{v}");
        if ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        after = v["journal"].as_array().map_or(0, Vec::len);
        assert!(Instant::now() < deadline, "{id} never ended: {v}");
    }
}

/// How many events the instance's journal shows it received.
pub fn received(view: &Value) -> usize {
    view["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "event_received")
        .count()
}

/// The value of one series on `/metrics` (0 when absent).
pub fn metric(addr: &str, series: &str) -> u64 {
    let text = agent()
        .get(&format!("{addr}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}
