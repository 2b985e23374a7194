//! Duplicate requests sent at once, against the real daemon: whatever the timing, one
//! idempotency key (or one event id) starts one instance. Regression: starts raced, and
//! 4 to 10 of 50 keys got two instances, so a double-clicked refund could be paid twice.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use support::daemon::{self, Daemon};

mod support {
    pub mod daemon;
}

const KEYS: usize = 50;
const DUPLICATES: usize = 16;

/// Parks on a wait, so every instance it starts is still there to be counted.
const HOLD: &str = r#"workflow: hold
version: 1
input:
  key: { type: string, required: true }
triggers:
  - event: ticket.created
    input: { key: "${event.key}" }
steps:
  - id: check
    rule: 'vars.checked = true;'
    next: hold
  - id: hold
    wait: { event: go, key: input.key }
    next: done
  - id: done
    complete: { output: { ok: true } }
"#;

fn spawn() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/hold.yaml"), HOLD).unwrap();
    let port = daemon::free_port();
    let mut c = daemon::command(dir.path(), port);
    c.arg("--no-reload");
    let d = daemon::start(c, port);
    (dir, d)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    let mut r = agent.post(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let mut resp = r.send_json(body).unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_json().unwrap_or(Value::Null),
    )
}

/// Every instance of `hold` the daemon has, by id.
fn instances(d: &Daemon) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/instances?workflow=hold&limit=1000", d.addr);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = agent()
            .get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        for m in page["instances"].as_array().unwrap() {
            out.insert(m["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Sends `DUPLICATES` copies of each of `KEYS` requests, all copies of one key released
/// at the same instant from their own threads; returns the answers per key.
fn send_all_at_once(
    d: &Daemon,
    request: impl Fn(&ureq::Agent, &str, usize) -> (u16, Value) + Send + Sync + 'static,
) -> BTreeMap<usize, Vec<(u16, Value)>> {
    let request = Arc::new(request);
    let mut answers = BTreeMap::new();
    // Keys go in rounds of a few at a time so that each key's copies really overlap.
    for round in (0..KEYS).collect::<Vec<_>>().chunks(5) {
        let barrier = Arc::new(Barrier::new(round.len() * DUPLICATES));
        let mut threads = Vec::new();
        for &k in round {
            for _ in 0..DUPLICATES {
                let (barrier, request, addr) = (barrier.clone(), request.clone(), d.addr.clone());
                threads.push(std::thread::spawn(move || {
                    let agent = agent();
                    barrier.wait();
                    (k, request(&agent, &addr, k))
                }));
            }
        }
        for t in threads {
            let (k, answer) = t.join().unwrap();
            answers.entry(k).or_insert_with(Vec::new).push(answer);
        }
    }
    answers
}

#[test]
fn duplicate_starts_sent_at_once_create_one_instance_per_idempotency_key() {
    let (_dir, d) = spawn();
    let answers = send_all_at_once(&d, |agent, addr, k| {
        let key = format!("refund:ORD-{k}:1500");
        post(
            agent,
            &format!("{addr}/v1/workflows/hold/instances"),
            &[("Idempotency-Key", &key)],
            &json!({"key": format!("k{k}")}),
        )
    });
    let mut ids = BTreeSet::new();
    for (k, list) in &answers {
        let created: Vec<_> = list.iter().filter(|(s, _)| *s == 201).collect();
        assert_eq!(
            created.len(),
            1,
            "key {k}: exactly one start creates: {list:?}"
        );
        let id = &created[0].1["id"];
        for (status, body) in list {
            assert!(*status == 201 || *status == 200, "key {k}: {status} {body}");
            assert_eq!(&body["id"], id, "key {k}: every duplicate names the winner");
            assert_eq!(body["created"], json!(*status == 201), "key {k}: {body}");
        }
        ids.insert(id.as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), KEYS);
    assert_eq!(instances(&d), ids, "no instance beyond one per key");
}

#[test]
fn duplicate_events_sent_at_once_start_one_triggered_instance_per_event_id() {
    let (_dir, d) = spawn();
    let answers = send_all_at_once(&d, |agent, addr, k| {
        post(
            agent,
            &format!("{addr}/v1/events"),
            &[],
            &json!({"type": "ticket.created", "key": format!("T-{k}"), "id": format!("evt-{k}")}),
        )
    });
    let mut ids = BTreeSet::new();
    for (k, list) in &answers {
        let mut created = 0;
        let mut named = BTreeSet::new();
        for (status, body) in list {
            assert_eq!(*status, 200, "event {k}: {body}");
            let started = body["started"].as_array().unwrap();
            assert_eq!(started.len(), 1, "event {k}: {body}");
            named.insert(started[0]["id"].as_str().unwrap().to_string());
            if started[0]["created"] == json!(true) {
                created += 1;
            }
        }
        assert_eq!(created, 1, "event {k}: exactly one copy starts: {list:?}");
        assert_eq!(named.len(), 1, "event {k}: every copy names one instance");
        ids.extend(named);
    }
    assert_eq!(ids.len(), KEYS);
    assert_eq!(instances(&d), ids, "no instance beyond one per event id");
}
