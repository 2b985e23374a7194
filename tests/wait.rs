//! `?wait=` against the real daemon: a start that answers with the result instead of an
//! id to poll, a read that long-polls for the next journal entry, duplicates that wait on
//! one instance, an event racing the wait, bad values, and a stop while requests wait.

use serde_json::{json, Value};
use std::sync::{Arc, Barrier};
use support::daemon::{self, Daemon};

mod support {
    pub mod daemon;
    pub mod hostile;
}

const QUICK: &str = r#"workflow: quick
version: 1
input:
  n: { type: integer, required: true }
steps:
  - id: double
    rule: vars.twice = input.n * 2
    next: done
  - id: done
    complete: { output: { twice: "${vars.twice}" } }
"#;

const HOLD: &str = r#"workflow: hold
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: hold
    wait: { event: go, key: input.key, timeout: 1h, on_timeout: done }
    next: done
  - id: done
    complete: { output: { ok: true } }
"#;

/// A call that spins until its time limit: the instance is running, not parked.
const BUSY: &str = r#"workflow: busy
version: 1
steps:
  - id: spin
    call: hostile.spin
    retry: { max_attempts: 1 }
    next: done
  - id: done
    complete: {}
"#;

fn spawn(plugins: Option<&std::path::Path>) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("quick.yaml"), QUICK).unwrap();
    std::fs::write(wf.join("hold.yaml"), HOLD).unwrap();
    if plugins.is_some() {
        std::fs::write(wf.join("busy.yaml"), BUSY).unwrap();
    }
    let port = daemon::free_port();
    let mut c = daemon::command(dir.path(), port);
    c.arg("--no-reload");
    if let Some(p) = plugins {
        c.arg("--plugins").arg(p);
    }
    let d = daemon::start(c, port);
    (dir, d)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Far above every wait here: a request that is never answered fails the test.
        .timeout_global(Some(std::time::Duration::from_secs(90)))
        .build()
        .into()
}

fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    let mut r = agent().post(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let mut resp = r.send_json(body).unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_json().unwrap_or(Value::Null),
    )
}

fn get(url: &str) -> (u16, Value) {
    let mut resp = agent().get(url).call().unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_json().unwrap_or(Value::Null),
    )
}

#[test]
fn a_waited_start_answers_with_the_output_of_the_completed_instance() {
    let (_dir, d) = spawn(None);
    let (s, body) = post(
        &format!("{}/v1/workflows/quick/instances?wait=10s", d.addr),
        &[],
        &json!({"n": 21}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["created"], true);
    assert_eq!(body["output"], json!({"twice": 42}));
    // What the wait answered is what the instance says.
    let id = body["id"].as_str().unwrap();
    let (_, view) = get(&format!("{}/v1/instances/{id}", d.addr));
    assert_eq!(view["status"], "completed");
    assert_eq!(view["output"], body["output"]);
}

#[test]
fn a_waited_start_that_parks_says_what_it_waits_for_and_a_read_waits_for_the_event() {
    let (_dir, d) = spawn(None);
    let (s, body) = post(
        &format!("{}/v1/workflows/hold/instances?wait=10s", d.addr),
        &[],
        &json!({"key": "T-1"}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "parked", "{body}");
    let waiting = &body["waiting"][0];
    assert_eq!(waiting["step"], "hold", "{body}");
    assert_eq!(waiting["events"], json!(["go"]));
    assert!(waiting["until"].as_str().unwrap().ends_with('Z'), "{body}");
    assert!(
        !body.to_string().contains("T-1"),
        "the wait's key is not shown: {body}"
    );
    let id = body["id"].as_str().unwrap().to_string();
    let (_, view) = get(&format!("{}/v1/instances/{id}", d.addr));
    let seen = view["journal"].as_array().unwrap().len();

    // A long poll from the position the client has seen, while the event is sent.
    let url = format!("{}/v1/instances/{id}?wait=30s&after={seen}", d.addr);
    let polling = std::thread::spawn(move || get(&url));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (s, woke) = post(
        &format!("{}/v1/events", d.addr),
        &[],
        &json!({"type": "go", "key": "T-1"}),
    );
    assert_eq!(s, 200, "{woke}");
    let (s, after) = polling.join().unwrap();
    assert_eq!(s, 200, "{after}");
    assert!(
        after["journal"].as_array().unwrap().len() > seen,
        "the long poll answers with the entries after {seen}: {after}"
    );
    // Once it has ended, a wait answers at once with the end.
    let (_, done) = get(&format!("{}/v1/instances/{id}?wait=30s", d.addr));
    assert_eq!(done["status"], "completed", "{done}");
}

#[test]
fn duplicate_waited_starts_sent_at_once_wait_on_one_instance() {
    let (_dir, d) = spawn(None);
    const COPIES: usize = 16;
    let barrier = Arc::new(Barrier::new(COPIES));
    let threads: Vec<_> = (0..COPIES)
        .map(|_| {
            let (barrier, addr) = (barrier.clone(), d.addr.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post(
                    &format!("{addr}/v1/workflows/quick/instances?wait=20s"),
                    &[("Idempotency-Key", "double-click")],
                    &json!({"n": 5}),
                )
            })
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ids: std::collections::BTreeSet<_> = answers
        .iter()
        .map(|(_, b)| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one instance: {answers:?}");
    let created = answers.iter().filter(|(_, b)| b["created"] == true).count();
    assert_eq!(created, 1, "{answers:?}");
    for (s, b) in &answers {
        assert_eq!(*s, 200, "{b}");
        assert_eq!(b["status"], "completed", "{b}");
        assert_eq!(b["output"], json!({"twice": 10}), "{b}");
    }
}

#[test]
fn a_wait_that_runs_out_answers_202_with_the_status() {
    let plugins = support::hostile::install(&[], |m| m);
    let (_dir, d) = spawn(Some(plugins.path()));
    let (s, body) = post(
        &format!("{}/v1/workflows/busy/instances?wait=300ms", d.addr),
        &[],
        &json!({}),
    );
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["status"], "running", "{body}");
    assert!(body["id"].is_string());
    assert!(body.get("output").is_none(), "{body}");
}

#[test]
fn bad_waits_are_refused_with_a_clear_error() {
    let (_dir, d) = spawn(None);
    let start = |q: &str| {
        post(
            &format!("{}/v1/workflows/quick/instances?{q}", d.addr),
            &[],
            &json!({"n": 1}),
        )
    };
    for q in ["wait=2m", "wait=soon", "wait=10", "linger=1s"] {
        let (s, body) = start(q);
        assert_eq!(s, 400, "{q}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{q}: {body}");
    }
    let (_, msg) = start("wait=2m");
    assert!(
        msg["error"]["message"].as_str().unwrap().contains("60s"),
        "{msg}"
    );
    // Nothing was started by a refused request.
    let (_, list) = get(&format!("{}/v1/instances", d.addr));
    assert_eq!(list["instances"], json!([]), "{list}");

    let (s, body) = get(&format!("{}/v1/instances/nope?wait=30s", d.addr));
    assert_eq!(s, 404, "{body}");
    let (_, started) = start("wait=5s");
    let id = started["id"].as_str().unwrap();
    let (s, body) = get(&format!("{}/v1/instances/{id}?after=1", d.addr));
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("wait"),
        "{body}"
    );
}

#[test]
#[cfg(unix)]
fn a_stopping_daemon_answers_the_requests_that_wait() {
    let (_dir, mut d) = spawn(None);
    let (_, body) = post(
        &format!("{}/v1/workflows/hold/instances", d.addr),
        &[],
        &json!({"key": "T-2"}),
    );
    let id = body["id"].as_str().unwrap().to_string();
    let (_, view) = get(&format!("{}/v1/instances/{id}", d.addr));
    let seen = view["journal"].as_array().unwrap().len();
    let url = format!("{}/v1/instances/{id}?wait=60s&after={seen}", d.addr);
    // Gives up long before the 60 s wait would run out: only the stop can answer in time.
    let polling = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(20)))
            .build()
            .into();
        let mut resp = agent
            .get(&url)
            .call()
            .expect("answered when the daemon stopped");
        (
            resp.status().as_u16(),
            resp.body_mut().read_json::<Value>().unwrap(),
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = d.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (s, answer) = polling.join().unwrap();
    assert_eq!(s, 200, "{answer}");
    assert_eq!(
        answer["journal"].as_array().unwrap().len(),
        seen,
        "nothing happened: the answer is the journal as it was"
    );
    let status = d.child.wait().unwrap();
    assert!(status.success(), "a graceful stop: {status:?}");
}
