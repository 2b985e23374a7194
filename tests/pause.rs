//! Pause and resume against the real daemon: a held instance runs nothing, its events
//! wait in the inbox and its due timers fire once on resume; who and why are journaled;
//! a SIGKILL keeps it held; pauses racing events lose none; bad requests are clear.

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};

mod support {
    pub mod daemon;
}

/// Naps, then waits for `go`.
const NAP: &str = r#"workflow: nap
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: first
    sleep: 300ms
    next: hold
  - id: hold
    wait: { event: go, key: input.key, timeout: 1h, on_timeout: late }
    save_as: got
    next: done
  - id: done
    complete: { output: { by: "${vars.got.data.by}" } }
  - id: late
    complete: { output: { by: nobody } }
"#;

const ADMIN: &str = "ops-admin-secret-0123456789";
const READER: &str = "ops-read-secret-0123456789";

fn spawn(dir: &Path) -> Daemon {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("nap.yaml"), NAP).unwrap();
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload")
        .args(["--token", &format!("ops:admin:{ADMIN}")])
        .args(["--token", &format!("viewer:read:{READER}")]);
    daemon::start(c, port)
}

fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let resp = match body {
        Some(b) => agent.post(url).header("authorization", &auth).send_json(b),
        None if method == "POST" => agent.post(url).header("authorization", &auth).send_empty(),
        None => agent.get(url).header("authorization", &auth).call(),
    };
    let mut resp = resp.unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_json().unwrap_or(Value::Null),
    )
}

fn start(addr: &str, key: &str) -> String {
    let (s, b) = call(
        "POST",
        &format!("{}/v1/workflows/nap/instances", addr),
        ADMIN,
        Some(json!({"key": key})),
    );
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

fn hold(addr: &str, id: &str, verb: &str, reason: &str) -> (u16, Value) {
    call(
        "POST",
        &format!("{}/v1/instances/{id}/{verb}", addr),
        ADMIN,
        Some(json!({"reason": reason})),
    )
}

fn view(addr: &str, id: &str) -> Value {
    call("GET", &format!("{}/v1/instances/{id}", addr), READER, None).1
}

fn send(addr: &str, key: &str) -> Value {
    let (s, b) = call(
        "POST",
        &format!("{}/v1/events", addr),
        ADMIN,
        Some(json!({"type": "go", "key": key, "data": {"by": key}})),
    );
    assert_eq!(s, 200, "{b}");
    b
}

fn ended(addr: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = call(
            "GET",
            &format!("{}/v1/instances/{id}?wait=5s", addr),
            READER,
            None,
        );
        if v["status"] == "completed" || v["status"] == "failed" {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} never ended: {v}");
    }
}

fn kinds(v: &Value) -> Vec<String> {
    v["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_paused_instance_holds_and_goes_on_where_it_was_when_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let id = start(&d.addr, "A");
    let (s, b) = hold(&d.addr, &id, "pause", "customer asked to wait");
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"id": id, "paused": true, "changed": true}));
    // Its nap ends while it is held: nothing happens.
    std::thread::sleep(Duration::from_millis(800));
    let v = view(&d.addr, &id);
    assert_eq!(v["status"], "paused", "{v}");
    assert_eq!(v["paused"]["by"], "token:ops");
    assert_eq!(v["paused"]["reason"], "customer asked to wait");
    assert!(!kinds(&v).contains(&"timer_fired".to_string()), "{v}");
    let listed = call(
        "GET",
        &format!("{}/v1/instances?status=paused", d.addr),
        READER,
        None,
    )
    .1;
    assert_eq!(listed["instances"][0]["id"], json!(id), "{listed}");
    // Its event comes meanwhile: kept for it.
    assert_eq!(send(&d.addr, "A")["buffered"], json!(true));
    // Pausing again changes nothing.
    assert_eq!(
        hold(&d.addr, &id, "pause", "again").1["changed"],
        json!(false)
    );
    let (s, b) = hold(&d.addr, &id, "resume", "go ahead");
    assert_eq!((s, &b["changed"]), (200, &json!(true)), "{b}");
    let v = ended(&d.addr, &id);
    assert_eq!(v["output"], json!({"by": "A"}), "{v}");
    let k = kinds(&v);
    let at = |kind: &str| k.iter().position(|x| x == kind).unwrap();
    assert!(
        at("paused") < at("resumed") && at("resumed") < at("timer_fired"),
        "{k:?}"
    );
    assert_eq!(k.iter().filter(|x| *x == "timer_fired").count(), 1, "{k:?}");
    // Ended: refused.
    let (s, e) = hold(&d.addr, &id, "pause", "too late");
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("instance_finished")),
        "{e}"
    );
}

#[test]
fn bad_pause_requests_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let id = start(&d.addr, "B");
    let url = format!("{}/v1/instances/{id}/pause", d.addr);
    let (s, e) = call("POST", &url, ADMIN, None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{e}"
    );
    let (s, e) = call("POST", &url, ADMIN, Some(json!({"reason": "  "})));
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("reason"),
        "{e}"
    );
    let (s, e) = call(
        "POST",
        &url,
        ADMIN,
        Some(json!({"reason": "x", "until": 5})),
    );
    assert_eq!(s, 400, "{e}");
    let (s, e) = call("POST", &url, READER, Some(json!({"reason": "x"})));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    let (s, e) = hold(&d.addr, "no-such-instance", "pause", "x");
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("instance_not_found"))
    );
    assert_ne!(view(&d.addr, &id)["status"], "paused", "nothing was held");
}

#[test]
fn a_paused_instance_stays_paused_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = spawn(dir.path());
    let id = start(&d.addr, "C");
    assert_eq!(hold(&d.addr, &id, "pause", "audit").0, 200);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let d = spawn(dir.path());
    std::thread::sleep(Duration::from_millis(800));
    let v = view(&d.addr, &id);
    assert_eq!(v["status"], "paused", "a restart does not resume it: {v}");
    assert_eq!(send(&d.addr, "C")["buffered"], json!(true));
    assert_eq!(hold(&d.addr, &id, "resume", "audit done").0, 200);
    assert_eq!(ended(&d.addr, &id)["output"], json!({"by": "C"}));
}

/// A pause and the event sent at the same moment, for 24 instances at once: whichever
/// comes first, every instance takes its event exactly once after its resume.
#[test]
fn pauses_racing_events_lose_none() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let addr = d.addr.clone();
    let ids: Vec<(String, String)> = (0..24)
        .map(|n| {
            let key = format!("R-{n}");
            (start(&d.addr, &key), key)
        })
        .collect();
    // Let the naps end, so the events race waits that have begun.
    std::thread::sleep(Duration::from_millis(500));
    let handles: Vec<_> = ids
        .iter()
        .cloned()
        .map(|(id, key)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let pause = {
                    let (addr, id) = (addr.clone(), id.clone());
                    std::thread::spawn(move || hold(&addr, &id, "pause", "race"))
                };
                send(&addr, &key);
                let (s, b) = pause.join().unwrap();
                // Taken before the hold (then it may have ended) or kept for after it.
                assert!(s == 200 || s == 409, "{s} {b}");
                if s == 200 {
                    assert_eq!(hold(&addr, &id, "resume", "race over").0, 200);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for (id, key) in &ids {
        let v = ended(&d.addr, id);
        assert_eq!(v["output"], json!({"by": key}), "{v}");
        let received = kinds(&v).iter().filter(|k| *k == "event_received").count();
        assert_eq!(received, 1, "{v}");
    }
}

fn hold_workflow(addr: &str, verb: &str, reason: &str, token: &str) -> (u16, Value) {
    call(
        "POST",
        &format!("{addr}/v1/workflows/nap/{verb}"),
        token,
        Some(json!({"reason": reason})),
    )
}

/// A paused workflow: its running instances hold, starts while it is paused (and starts
/// racing the pause) are created held and run nothing, an instance an operator paused on
/// its own stays paused after the workflow resumes, and the rest go on where they were.
#[test]
fn a_paused_workflow_holds_its_instances_and_its_new_starts_until_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let a = start(&d.addr, "A");
    let b = start(&d.addr, "B");
    assert_eq!(hold(&d.addr, &b, "pause", "on its own").0, 200);

    let (s, e) = hold_workflow(&d.addr, "pause", "provider outage", READER);
    assert_eq!(s, 403, "a read token cannot pause: {e}");
    let (s, e) = call(
        "POST",
        &format!("{}/v1/workflows/nope/pause", d.addr),
        ADMIN,
        Some(json!({"reason": "x"})),
    );
    assert_eq!(
        (s, &e["error"]["code"]),
        (404, &json!("workflow_not_found")),
        "{e}"
    );

    // Starts sent while the pause is made: whichever side of it they fall on, none runs.
    let racers: Vec<String> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..8)
            .map(|n| {
                let addr = &d.addr;
                s.spawn(move || start(addr, &format!("R-{n}")))
            })
            .collect();
        let (st, paused) = hold_workflow(&d.addr, "pause", "provider outage", ADMIN);
        assert_eq!(st, 200, "{paused}");
        assert_eq!(paused["paused"], json!(true));
        starts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let c = start(&d.addr, "C");
    let (_, list) = call("GET", &format!("{}/v1/workflows", d.addr), READER, None);
    assert_eq!(
        list["workflows"][0]["paused"]["reason"], "provider outage",
        "{list}"
    );

    // Naps (300 ms) end while paused: nothing moves on.
    std::thread::sleep(Duration::from_millis(800));
    for id in racers.iter().chain([&a, &b, &c]) {
        let v = view(&d.addr, id);
        assert_eq!(v["status"], "paused", "{id}: {v}");
    }
    let vc = view(&d.addr, &c);
    assert_eq!(
        kinds(&vc),
        ["started", "paused"],
        "started while paused runs nothing: {vc}"
    );

    // Resumed with the CLI, as an operator would, while more starts come in: whichever
    // side of the resume they fall on, none stays held.
    let (resumed, late): (Value, Vec<String>) = std::thread::scope(|s| {
        let starts: Vec<_> = (0..8)
            .map(|n| {
                let addr = &d.addr;
                s.spawn(move || start(addr, &format!("L-{n}")))
            })
            .collect();
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_casework"))
            .args([
                "resume",
                "--workflow",
                "nap",
                "--reason",
                "provider back",
                "--json",
            ])
            .args(["--url", &d.addr])
            .env("CASEWORK_TOKEN", ADMIN)
            .output()
            .unwrap();
        assert!(
            cli.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        let late = starts.into_iter().map(|h| h.join().unwrap()).collect();
        (serde_json::from_slice(&cli.stdout).unwrap(), late)
    });
    for id in &late {
        let deadline = Instant::now() + Duration::from_secs(30);
        while view(&d.addr, id)["status"] != "parked" {
            assert!(
                Instant::now() < deadline,
                "{id} stayed held: {}",
                view(&d.addr, id)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(resumed["failed"], json!([]), "{resumed}");
    let let_go = resumed["instances"].as_u64().unwrap() as usize;
    // All but B, and any late start that was created held before the resume was kept.
    assert!(
        (racers.len() + 2..=racers.len() + 2 + late.len()).contains(&let_go),
        "all but B: {resumed}"
    );
    for (id, key) in [(&a, "A"), (&c, "C")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while view(&d.addr, id)["status"] != "parked" {
            assert!(Instant::now() < deadline, "{id} did not go on");
            std::thread::sleep(Duration::from_millis(50));
        }
        send(&d.addr, key);
        assert_eq!(ended(&d.addr, id)["output"], json!({"by": key}));
    }
    assert_eq!(
        view(&d.addr, &b)["status"],
        "paused",
        "B was paused on its own"
    );
    let (_, list) = call("GET", &format!("{}/v1/workflows", d.addr), READER, None);
    assert_eq!(list["workflows"][0]["paused"], Value::Null, "{list}");
}
