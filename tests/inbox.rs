//! The inbox against the real daemon: an event that beats the workflow to its wait is
//! kept and handed to the wait once it begins, whichever of the two comes first; in
//! arrival order, once per event id, within its bounds and its time, across a SIGKILL,
//! and across two daemons on one PostgreSQL database.

use casework::store::seal::JournalKey;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::http::{call, ended, metric, received};
use support::postgres::TestDb;

mod support {
    pub mod daemon;
    pub mod http;
    pub mod postgres;
}

/// Waits for `go` at once (the event races the start's first step).
const QUICK: &str = r#"workflow: quick
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: hold
    wait: { event: go, key: input.key, timeout: 1h, on_timeout: late }
    save_as: got
    next: done
  - id: done
    complete: { output: { by: "${vars.got.data.by}" } }
  - id: late
    complete: { output: { by: nobody } }
"#;

/// Naps first: an event sent right after the start comes before the wait.
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

/// Two waits for the same event type and key, one after the other.
const TWICE: &str = r#"workflow: twice
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: one
    wait: { event: go, key: input.key, timeout: 1h, on_timeout: late }
    save_as: a
    next: two
  - id: two
    wait: { event: go, key: input.key, timeout: 1h, on_timeout: late }
    save_as: b
    next: done
  - id: done
    complete: { output: { a: "${vars.a.data.by}", b: "${vars.b.data.by}" } }
  - id: late
    complete: { output: late }
"#;

/// Gives up after a second.
const BRIEF: &str = r#"workflow: brief
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: hold
    wait: { event: go, key: input.key, timeout: 1s, on_timeout: late }
    save_as: got
    next: done
  - id: done
    complete: { output: { by: "${vars.got.data.by}" } }
  - id: late
    complete: { output: { by: nobody } }
"#;

fn workflows(dir: &Path) {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    for (name, text) in [
        ("quick", QUICK),
        ("nap", NAP),
        ("twice", TWICE),
        ("brief", BRIEF),
    ] {
        std::fs::write(wf.join(format!("{name}.yaml")), text).unwrap();
    }
}

fn spawn(dir: &Path, extra: &[&str]) -> Daemon {
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload").args(extra);
    daemon::start(c, port)
}

fn send(addr: &str, key: &str, by: &str, id: Option<&str>) -> (u16, Value) {
    let mut body = json!({"type": "go", "key": key, "data": {"by": by}});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    call("POST", &format!("{addr}/v1/events"), Some(&body))
}

fn start(addr: &str, workflow: &str, key: &str) -> String {
    let (s, body) = call(
        "POST",
        &format!("{addr}/v1/workflows/{workflow}/instances"),
        Some(&json!({"key": key})),
    );
    assert_eq!(s, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn inbox(addr: &str, query: &str) -> Vec<Value> {
    let (s, v) = call("GET", &format!("{addr}/v1/inbox{query}"), None);
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

/// 160 instances, each sent its event (twice at once, under one id) right after its start
/// answered: for some the event comes before the wait, for others after. Every instance
/// takes its own event, once, and nothing is left behind.
#[test]
fn events_racing_their_wait_are_taken_once_whichever_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path(), &[]);
    const THREADS: usize = 16;
    const EACH: usize = 10;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = d.addr.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut out = Vec::new();
                for i in 0..EACH {
                    let key = format!("K-{t}-{i}");
                    let workflow = if i % 2 == 0 { "quick" } else { "nap" };
                    let id = start(&addr, workflow, &key);
                    // The same event twice at once: one delivery.
                    let twins: Vec<_> = (0..2)
                        .map(|_| {
                            let (addr, key) = (addr.clone(), key.clone());
                            std::thread::spawn(move || {
                                send(&addr, &key, &key, Some(&format!("ev-{key}")))
                            })
                        })
                        .collect();
                    for twin in twins {
                        let (s, answer) = twin.join().unwrap();
                        assert_eq!(s, 200, "{answer}");
                        out.push((id.clone(), key.clone(), answer));
                    }
                }
                out
            })
        })
        .collect();
    let answers: Vec<(String, String, Value)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut buffered = 0;
    let mut woken = 0;
    for (id, _, answer) in &answers {
        if answer["buffered"] == json!(true) {
            buffered += 1;
            assert!(answer["inbox_seq"].is_u64(), "{answer}");
        } else {
            assert_eq!(answer["woken"], json!([id]), "{answer}");
            woken += 1;
        }
    }
    // Both races happened: some events came first, some waits did.
    assert!(buffered > 0, "no event came before its wait");
    assert!(woken > 0, "no wait came before its event");
    let mut seen = BTreeMap::new();
    for (id, key, _) in &answers {
        if seen.insert(id.clone(), key.clone()).is_some() {
            continue;
        }
        let view = ended(&d.addr, id);
        assert_eq!(view["status"], "completed", "{view}");
        assert_eq!(
            view["output"],
            json!({"by": key}),
            "{id} took another's event"
        );
        assert_eq!(received(&view), 1, "{id}: {view}");
    }
    assert_eq!(seen.len(), THREADS * EACH);
    assert!(inbox(&d.addr, "").is_empty(), "events left behind");
    let kept = metric(&d.addr, "casework_inbox_events_total{outcome=\"buffered\"}");
    let handed = metric(
        &d.addr,
        "casework_inbox_events_total{outcome=\"handed_over\"}",
    );
    assert!(kept > 0);
    assert_eq!(kept, handed, "every buffered event was handed to its wait");
}

/// Events that came first are taken in arrival order, one per wait; a duplicate id is
/// kept once; what no wait takes stays, listed by type and key.
#[test]
fn buffered_events_go_to_later_waits_in_arrival_order_once_each() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path(), &[]);
    let mut seqs = Vec::new();
    for (by, id) in [("first", "e1"), ("second", "e2"), ("third", "e3")] {
        let (s, answer) = send(&d.addr, "T-1", by, Some(id));
        assert_eq!(s, 200, "{answer}");
        assert_eq!(answer["buffered"], json!(true), "{answer}");
        assert_eq!(answer["woken"], json!([]));
        seqs.push(answer["inbox_seq"].as_u64().unwrap());
    }
    let (_, again) = send(&d.addr, "T-1", "first", Some("e1"));
    assert_eq!(again["inbox_seq"], json!(seqs[0]), "the duplicate: {again}");
    assert_eq!(inbox(&d.addr, "?type=go&key=T-1").len(), 3);
    assert_eq!(inbox(&d.addr, "?type=go&key=T-2").len(), 0);
    // Keys and data never show in the list.
    let listed = serde_json::to_string(&inbox(&d.addr, "")).unwrap();
    assert!(
        !listed.contains("T-1") && !listed.contains("first"),
        "{listed}"
    );

    let id = start(&d.addr, "twice", "T-1");
    let view = ended(&d.addr, &id);
    assert_eq!(
        view["output"],
        json!({"a": "first", "b": "second"}),
        "{view}"
    );
    let left = inbox(&d.addr, "?type=go&key=T-1");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["seq"], json!(seqs[2]));
    // The same ids sent again after they were taken: nothing new is kept or woken.
    let (_, again) = send(&d.addr, "T-1", "second", Some("e2"));
    assert_eq!(again["inbox_seq"], json!(seqs[1]), "{again}");
    assert_eq!(inbox(&d.addr, "?type=go&key=T-1").len(), 1);
}

/// The bounds refuse with a clear error and keep nothing; purging makes room again;
/// the CLI lists and purges; bad requests are clear errors.
#[test]
fn a_full_inbox_refuses_clearly_and_purging_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path(), &["--inbox-per-key", "2", "--inbox-total", "3"]);
    for by in ["a1", "a2"] {
        assert_eq!(send(&d.addr, "A", by, None).1["buffered"], json!(true));
    }
    let (s, e) = send(&d.addr, "A", "a3", None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (429, Some("inbox_full")),
        "{e}"
    );
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("inbox_per_key") && message.contains('2'),
        "{message}"
    );
    assert_eq!(send(&d.addr, "B", "b1", None).1["buffered"], json!(true));
    let (s, e) = send(&d.addr, "C", "c1", None);
    assert_eq!(s, 429, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inbox_total"),
        "{e}"
    );
    assert_eq!(inbox(&d.addr, "").len(), 3);

    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_casework"))
            .args(args)
            .args(["--url", &d.addr])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, listed, _) = cli(&["inbox", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        listed.lines().count(),
        4,
        "a header and three events:\n{listed}"
    );
    assert!(listed.starts_with("SEQ"), "{listed}");
    let (code, said, _) = cli(&["inbox", "purge", "--type", "go", "--key", "A"]);
    assert_eq!(code, Some(0));
    assert!(said.contains("purged 2"), "{said}");
    assert_eq!(send(&d.addr, "C", "c1", None).1["buffered"], json!(true));
    let seq = inbox(&d.addr, "?type=go&key=C")[0]["seq"].as_u64().unwrap();
    let (code, said, _) = cli(&["inbox", "purge", &seq.to_string()]);
    assert_eq!((code, said.trim()), (Some(0), "purged 1 buffered event(s)"));
    let (code, _, err) = cli(&["inbox", "purge", &seq.to_string()]);
    assert_ne!(code, Some(0), "purging it again fails");
    assert!(
        err.contains("buffered_event_not_found") || err.contains("no buffered event"),
        "{err}"
    );

    let (s, e) = call("GET", &format!("{}/v1/inbox?type=go", d.addr), None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (s, e) = call("DELETE", &format!("{}/v1/inbox", d.addr), None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (s, e) = call("DELETE", &format!("{}/v1/inbox/not-a-number", d.addr), None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("buffered_event_not_found"))
    );
    // A bad setting stops the daemon before it starts, naming it.
    let out = daemon::command(dir.path(), daemon::free_port())
        .args(["--inbox-keep", "soon"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--inbox-keep"));
}

/// An event kept past its time is not handed out, and is dropped.
#[test]
fn an_event_past_its_time_in_the_inbox_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path(), &["--inbox-keep", "500ms", "--lease-ms", "1000"]);
    assert_eq!(send(&d.addr, "X", "old", None).1["buffered"], json!(true));
    std::thread::sleep(Duration::from_millis(800));
    let id = start(&d.addr, "brief", "X");
    assert_eq!(ended(&d.addr, &id)["output"], json!({"by": "nobody"}));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !inbox(&d.addr, "").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the expired event was never dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(&d.addr, "casework_inbox_events_total{outcome=\"expired\"}"),
        1
    );
}

/// Kept events are durable: a daemon killed with SIGKILL hands them out after its restart.
#[test]
fn buffered_events_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let mut d = spawn(dir.path(), &[]);
    for (key, by) in [("S-1", "one"), ("S-2", "two")] {
        assert_eq!(send(&d.addr, key, by, Some(key)).1["buffered"], json!(true));
    }
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let d = spawn(dir.path(), &[]);
    assert_eq!(inbox(&d.addr, "").len(), 2);
    // The client's resend after the kill finds the first answer.
    assert_eq!(
        send(&d.addr, "S-1", "one", Some("S-1")).1["buffered"],
        json!(true)
    );
    assert_eq!(inbox(&d.addr, "").len(), 2);
    for (key, by) in [("S-1", "one"), ("S-2", "two")] {
        let id = start(&d.addr, "quick", key);
        assert_eq!(ended(&d.addr, &id)["output"], json!({"by": by}));
    }
    assert!(inbox(&d.addr, "").is_empty());
}

/// Two daemons on one database: events sent to either before their waits, instances
/// started on the other, all at once. Each instance takes its own event once.
#[test]
fn postgres_daemons_share_one_inbox() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let key = JournalKey::random().unwrap().to_hex();
    let a = daemon::serve_postgres(dir.path(), "data-a", db.url(), &key);
    let b = daemon::serve_postgres(dir.path(), "data-b", db.url(), &key);
    let addrs = [a.addr.clone(), b.addr.clone()];
    const N: usize = 40;
    let handles: Vec<_> = (0..N)
        .map(|n| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let key = format!("P-{n}");
                let (s, answer) = send(&addrs[n % 2], &key, &key, Some(&key));
                assert_eq!(s, 200, "{answer}");
                let workflow = if n % 3 == 0 { "nap" } else { "quick" };
                (start(&addrs[(n + 1) % 2], workflow, &key), key)
            })
        })
        .collect();
    for (n, h) in handles.into_iter().enumerate() {
        let (id, key) = h.join().unwrap();
        let view = ended(&addrs[n % 2], &id);
        assert_eq!(view["output"], json!({"by": key}), "{view}");
        assert_eq!(received(&view), 1, "{view}");
    }
    assert!(inbox(&a.addr, "").is_empty());
    assert!(inbox(&b.addr, "").is_empty());
}

/// A workflow's own `inbox_keep:` decides how long the events it waits for are kept (the
/// longest, when several wait for one type); other events keep the daemon's setting. An
/// expired event is not handed to a later wait.
#[test]
fn a_workflow_says_how_long_its_early_events_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let wf = dir.path().join("workflows");
    for (name, keep) in [("short", "300ms"), ("shorter", "200ms")] {
        std::fs::write(
            wf.join(format!("{name}.yaml")),
            format!(
                "workflow: {name}\nversion: 1\ninbox_keep: {keep}\ninput:\n  key: {{ type: string, required: true }}\nsteps:\n  - id: hold\n    wait: {{ event: approval, key: input.key, timeout: 1s, on_timeout: late }}\n    next: done\n  - id: done\n    complete: {{ output: {{ got: true }} }}\n  - id: late\n    complete: {{ output: {{ got: false }} }}\n"
            ),
        )
        .unwrap();
    }
    let d = spawn(dir.path(), &["--lease-ms", "1000"]);
    let (s, a) = call(
        "POST",
        &format!("{}/v1/events", d.addr),
        Some(&json!({"type": "approval", "key": "A"})),
    );
    assert_eq!((s, &a["buffered"]), (200, &json!(true)), "{a}");
    assert_eq!(send(&d.addr, "G", "x", None).1["buffered"], json!(true));
    let kept_for = |t: &str, k: &str| {
        let e = inbox(&d.addr, &format!("?type={t}&key={k}"));
        let at = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(e[0][k].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        };
        at("until") - at("arrived")
    };
    assert_eq!(
        kept_for("approval", "A"),
        300,
        "the longer of the two workflows' inbox_keep"
    );
    assert_eq!(kept_for("go", "G"), 24 * 3_600_000, "the daemon's default");
    std::thread::sleep(Duration::from_millis(600));
    let id = start(&d.addr, "short", "A");
    assert_eq!(ended(&d.addr, &id)["output"], json!({"got": false}));
}
