//! One open instance per business key (`key:` with `concurrency:`), against the real
//! daemon: starts for one ticket sent at once make one instance; the others are given to
//! it as events (`attach`) or refused with its id (`reject`); triggers racing each other
//! do the same; the key is free again once the instance finishes; a SIGKILL keeps it
//! held; a retried instance takes it back, even racing starts; two daemons on one
//! PostgreSQL database share it.

use casework::store::seal::JournalKey;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::http::{call, ended, received, request};
use support::postgres::TestDb;

mod support {
    pub mod daemon;
    pub mod http;
    pub mod postgres;
}

/// Collects `case.more` events for its ticket until `case.close`; a start for an open
/// ticket becomes a `case.more` for it. `ticket.updated` starts it too.
const CASE: &str = r#"workflow: case
version: 1
input:
  ticket: { type: string, required: true }
  note: { type: string }
key: input.ticket
concurrency: { limit: 1, on_conflict: attach, event: case.more }
triggers:
  - event: ticket.updated
    input: { ticket: "${event.key}", note: "${event.data.note}" }
steps:
  - id: begin
    rule: vars.notes = 0;
    next: listen
  - id: listen
    wait: { event: [case.more, case.close], key: input.ticket, timeout: 1h, on_timeout: done }
    save_as: got
    next: route
  - id: route
    switch:
      - when: vars.got.type == "case.close"
        goto: done
    default: count
  - id: count
    rule: vars.notes += 1;
    next: listen
  - id: done
    complete: { output: { notes: "${vars.notes}" } }
"#;

/// One open instance per ticket; other starts are refused.
const SOLO: &str = r#"workflow: solo
version: 1
input:
  ticket: { type: string }
key: input.ticket
steps:
  - id: hold
    wait: { event: solo.close, key: input.ticket, timeout: 1h, on_timeout: done }
    next: done
  - id: done
    complete: {}
"#;

/// One open instance per ticket, refusing others; fails until `input.ready` (an RFC 3339
/// time), so a retry after it goes on and holds the ticket until `late.close`.
const LATE: &str = r#"workflow: late
version: 1
input:
  ticket: { type: string, required: true }
  ready: { type: string, required: true }
key: input.ticket
concurrency: { limit: 1, on_conflict: reject }
steps:
  - id: check
    rule: |
      if now < input.ready { throw "not ready until " + input.ready; }
    next: hold
  - id: hold
    wait: { event: late.close, key: input.ticket, timeout: 1h, on_timeout: done }
    next: done
  - id: done
    complete: {}
"#;

/// Two open instances per ticket at most (a second agent may work it); more are refused.
const PAIR: &str = r#"workflow: pair
version: 1
input:
  ticket: { type: string }
key: input.ticket
concurrency: { limit: 2, on_conflict: reject }
steps:
  - id: hold
    wait: { event: pair.close, key: input.ticket, timeout: 1h, on_timeout: done }
    next: done
  - id: done
    complete: {}
"#;

/// One instance per ticket at a time; further starts wait their turn in the queue.
const LINE: &str = r#"workflow: line
version: 1
input:
  ticket: { type: string, required: true }
  n: { type: integer, required: true }
key: input.ticket
concurrency: { limit: 1, on_conflict: queue }
steps:
  - id: hold
    wait: { event: line.close, key: input.ticket, timeout: 1h, on_timeout: done }
    next: done
  - id: done
    complete: { output: { n: "${input.n}" } }
"#;

fn workflows(dir: &Path) {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("line.yaml"), LINE).unwrap();
    std::fs::write(wf.join("case.yaml"), CASE).unwrap();
    std::fs::write(wf.join("solo.yaml"), SOLO).unwrap();
    std::fs::write(wf.join("late.yaml"), LATE).unwrap();
    std::fs::write(wf.join("pair.yaml"), PAIR).unwrap();
}

/// Starts `late` for `ticket`, ready `after` from now.
fn start_late(addr: &str, ticket: &str, after: Duration) -> (u16, Value) {
    let ready = (chrono::Utc::now() + after).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    call(
        "POST",
        &format!("{addr}/v1/workflows/late/instances"),
        Some(&json!({"ticket": ticket, "ready": ready})),
    )
}

/// Waits (at most a minute) until the instance has this status.
fn has_status(addr: &str, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = call("GET", &format!("{addr}/v1/instances/{id}"), None);
        if v["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "{id} is not {status}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn retry(addr: &str, id: &str) -> (u16, Value) {
    call(
        "POST",
        &format!("{addr}/v1/instances/{id}/retry"),
        Some(&json!({})),
    )
}

/// A failed instance lets its key go; retrying it takes the key back, or is refused
/// while another instance holds it open.
fn a_retry_takes_the_key_back(addrs: [String; 2]) {
    let (s, b) = start_late(&addrs[0], "L-1", Duration::from_millis(800));
    assert_eq!(s, 201, "{b}");
    let first = b["id"].as_str().unwrap().to_string();
    has_status(&addrs[0], &first, "failed");
    // The failed instance holds nothing: a new start takes the ticket.
    let (s, b) = start_late(&addrs[1], "L-1", Duration::ZERO);
    assert_eq!(s, 201, "{b}");
    let second = b["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(800));
    let (s, b) = retry(&addrs[0], &first);
    assert_eq!(
        (s, &b["error"]["code"]),
        (409, &json!("instance_open")),
        "{b}"
    );
    assert_eq!(b["error"]["details"]["id"], second, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains(&second),
        "{b}"
    );
    has_status(&addrs[0], &first, "failed");
    // Once the second has finished, the retry goes on and holds the ticket again.
    close(&addrs[1], "late.close", "L-1");
    ended(&addrs[1], &second);
    let (s, b) = retry(&addrs[0], &first);
    assert_eq!(s, 200, "{b}");
    has_status(&addrs[0], &first, "parked");
    let (s, b) = start_late(&addrs[1], "L-1", Duration::ZERO);
    assert_eq!(
        (s, &b["error"]["details"]["id"]),
        (409, &json!(first)),
        "{b}"
    );
}

/// Rounds of a retry of a failed instance sent at once with seven starts for its ticket:
/// whichever wins, one instance is open for the ticket, and every loser names it.
fn a_retry_racing_starts_leaves_one_open_instance(addrs: [String; 2]) {
    const ROUNDS: usize = 10;
    let failed: Vec<String> = (0..ROUNDS)
        .map(|r| {
            let (s, b) = start_late(&addrs[0], &format!("R-{r}"), Duration::from_millis(600));
            assert_eq!(s, 201, "{b}");
            b["id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in &failed {
        has_status(&addrs[0], id, "failed");
    }
    std::thread::sleep(Duration::from_millis(600));
    let mut retries_won = 0;
    for (r, id) in failed.iter().enumerate() {
        let (to, id2) = (addrs.clone(), id.clone());
        let answers = at_once(8, move |i| {
            if i == 0 {
                retry(&to[0], &id2)
            } else {
                // Later rounds give the retry a head start, so that both the retry and
                // a start win some rounds (a retry loads the failed instance first).
                std::thread::sleep(Duration::from_millis(2 * r as u64));
                start_late(&to[i % 2], &format!("R-{r}"), Duration::ZERO)
            }
        });
        let (retried, starts) = answers.split_first().unwrap();
        let created: Vec<&str> = starts
            .iter()
            .filter(|(s, _)| *s == 201)
            .map(|(_, b)| b["id"].as_str().unwrap())
            .collect();
        let open = if retried.0 == 200 {
            retries_won += 1;
            assert!(created.is_empty(), "retried and started: {answers:?}");
            id.as_str()
        } else {
            assert_eq!(created.len(), 1, "{answers:?}");
            assert_eq!(
                retried.1["error"]["details"]["id"], created[0],
                "{answers:?}"
            );
            created[0]
        };
        for (s, b) in starts.iter().filter(|(s, _)| *s != 201) {
            assert_eq!(
                (*s, &b["error"]["details"]["id"]),
                (409, &json!(open)),
                "{b}"
            );
        }
        has_status(&addrs[0], open, "parked");
        if open != id {
            has_status(&addrs[0], id, "failed");
        }
    }
    eprintln!("the retry won {retries_won} of {ROUNDS} rounds");
}

/// `limit: 2`: 10 starts for one ticket at once (to one daemon or two) open exactly two
/// instances; the others are refused naming one of them. Once both are closed the
/// ticket opens two again.
fn a_key_with_a_limit_of_two_opens_two(addrs: [String; 2]) {
    for round in 0..2 {
        let to = addrs.clone();
        let answers = at_once(10, move |i| start(&to[i % 2], "pair", "P-2", None));
        let created: Vec<String> = answers
            .iter()
            .filter(|(s, _)| *s == 201)
            .map(|(_, b)| b["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(created.len(), 2, "round {round}: two open: {answers:?}");
        for (s, b) in answers.iter().filter(|(s, _)| *s != 201) {
            assert_eq!(
                (*s, &b["error"]["code"]),
                (409, &json!("instance_open")),
                "{b}"
            );
            let named = b["error"]["details"]["id"].as_str().unwrap();
            assert!(created.iter().any(|c| c == named), "{b}");
        }
        close(&addrs[0], "pair.close", "P-2");
        for id in &created {
            ended(&addrs[0], id);
        }
    }
}

#[test]
fn a_key_with_a_limit_of_two_opens_two_instances_on_sled_and_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path());
    a_key_with_a_limit_of_two_opens_two([d.addr.clone(), d.addr.clone()]);
    let db = TestDb::new();
    let key = JournalKey::random().unwrap().to_hex();
    let a = daemon::serve_postgres(dir.path(), "data-a", db.url(), &key);
    let b = daemon::serve_postgres(dir.path(), "data-b", db.url(), &key);
    a_key_with_a_limit_of_two_opens_two([a.addr.clone(), b.addr.clone()]);
}

#[test]
fn a_retried_instance_takes_its_key_back_or_names_the_open_one() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path());
    a_retry_takes_the_key_back([d.addr.clone(), d.addr.clone()]);
    a_retry_racing_starts_leaves_one_open_instance([d.addr.clone(), d.addr.clone()]);
}

#[test]
fn postgres_daemons_keep_one_open_instance_when_a_retry_races_starts() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let key = JournalKey::random().unwrap().to_hex();
    let a = daemon::serve_postgres(dir.path(), "data-a", db.url(), &key);
    let b = daemon::serve_postgres(dir.path(), "data-b", db.url(), &key);
    a_retry_takes_the_key_back([a.addr.clone(), b.addr.clone()]);
    a_retry_racing_starts_leaves_one_open_instance([a.addr.clone(), b.addr.clone()]);
}

fn spawn(dir: &Path) -> Daemon {
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload");
    daemon::start(c, port)
}

/// Start `workflow` for `ticket`, with an Idempotency-Key when given.
fn start(addr: &str, workflow: &str, ticket: &str, key: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    request(
        "POST",
        &format!("{addr}/v1/workflows/{workflow}/instances"),
        Some(&json!({"ticket": ticket})),
        &headers,
    )
}

/// Runs `f(i)` on `n` threads released at the same instant, in index order.
fn at_once<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f) = (barrier.clone(), f.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Waits (at most a minute) until the instance has received `n` events.
fn has_received(addr: &str, id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = call("GET", &format!("{addr}/v1/instances/{id}"), None);
        if received(&v) >= n {
            assert_eq!(received(&v), n, "more events than starts: {v}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} received {} of {n}",
            received(&v)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn close(addr: &str, event: &str, ticket: &str) {
    let (s, v) = call(
        "POST",
        &format!("{addr}/v1/events"),
        Some(&json!({"type": event, "key": ticket})),
    );
    assert_eq!(s, 200, "{v}");
}

/// The one created id among the answers, checking every other answer names it.
fn the_one_created(answers: &[(u16, Value)], others: impl Fn(&(u16, Value), &str)) -> String {
    let created: Vec<&str> = answers
        .iter()
        .filter(|(s, b)| *s == 201 && b["created"] == true)
        .map(|(_, b)| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 1, "one instance is created: {answers:?}");
    let id = created[0].to_string();
    for a in answers {
        if a.0 != 201 {
            others(a, &id);
        }
    }
    id
}

/// 16 starts for one ticket at once, 15 distinct idempotency keys (two requests share
/// one): one instance is created; every other start is attached to it, except the twin
/// of the created one if it shares its key, which answers as a duplicate. The instance receives each distinct attached start once, whether it came
/// before its wait (the inbox) or during it. Once it has finished, the ticket starts a
/// new instance.
#[test]
fn starts_for_one_open_ticket_sent_at_once_attach_to_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path());
    let addr = d.addr.clone();
    let answers = at_once(16, move |i| {
        let key = if i < 2 {
            "dup".to_string()
        } else {
            format!("req-{i}")
        };
        start(&addr, "case", "T-1", Some(&key))
    });
    let id = the_one_created(&answers, |(s, b), id| {
        assert_eq!(*s, 200, "{b}");
        assert_eq!(b["id"], id, "{b}");
        assert_eq!(b["created"], false, "{b}");
    });
    let attached = answers
        .iter()
        .filter(|(_, b)| b["attached"] == true)
        .count();
    let winner_shared_its_key = answers[..2].iter().any(|(s, _)| *s == 201);
    let expected = if winner_shared_its_key { 14 } else { 15 };
    assert_eq!(attached, expected, "{answers:?}");
    // A resent attached start is the same event: it is not received twice.
    // (req-5 was created or attached; either way, sent again it adds nothing.)
    let (s, b) = start(&d.addr, "case", "T-1", Some("req-5"));
    assert_eq!((s, &b["id"]), (200, &json!(id)), "{b}");
    has_received(&d.addr, &id, 14);
    // Another ticket is another case.
    let (s, other) = start(&d.addr, "case", "T-2", None);
    assert_eq!((s, &other["created"]), (201, &json!(true)), "{other}");
    close(&d.addr, "case.close", "T-1");
    let view = ended(&d.addr, &id);
    assert_eq!(view["output"], json!({"notes": 14}), "{view}");
    // The ticket is free again: a new start makes a new instance.
    let (s, again) = start(&d.addr, "case", "T-1", None);
    assert_eq!(s, 201, "{again}");
    assert_ne!(again["id"], id.as_str());
}

/// Events that start the workflow, sent at once with distinct ids: one instance, the
/// rest attached to it; each event id resent at once counts once.
#[test]
fn trigger_events_racing_for_one_ticket_start_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let d = spawn(dir.path());
    let addr = d.addr.clone();
    let answers = at_once(12, move |i| {
        // Six event ids, each sent twice at once.
        let body = json!({"type": "ticket.updated", "key": "T-7", "id": format!("e-{}", i / 2), "data": {"note": "n"}});
        call("POST", &format!("{addr}/v1/events"), Some(&body))
    });
    let mut created = Vec::new();
    let mut attached = Vec::new();
    for (s, b) in &answers {
        assert_eq!(*s, 200, "{b}");
        let started = b["started"].as_array().unwrap();
        assert_eq!(started.len(), 1, "{b}");
        let st = &started[0];
        if st["created"] == true {
            created.push(st["id"].as_str().unwrap().to_string());
        } else {
            attached.push(st["id"].as_str().unwrap().to_string());
        }
    }
    created.dedup();
    assert_eq!(created.len(), 1, "{answers:?}");
    let id = created[0].clone();
    assert!(attached.iter().all(|a| *a == id), "{answers:?}");
    // Five other event ids were attached, whatever order the twelve arrived in.
    has_received(&d.addr, &id, 5);
    close(&d.addr, "case.close", "T-7");
    assert_eq!(ended(&d.addr, &id)["output"], json!({"notes": 5}));
}

/// `reject`: of eight starts at once one is created and seven are refused with 409
/// naming it; the refusal survives a SIGKILL of the daemon; the ticket is free once the
/// instance completes; a key the input cannot give is a clear 422.
#[test]
fn a_start_for_an_open_ticket_is_refused_with_the_open_instance_even_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let mut d = spawn(dir.path());
    let addr = d.addr.clone();
    let answers = at_once(8, move |_| start(&addr, "solo", "T-9", None));
    let id = the_one_created(&answers, |(s, b), id| {
        assert_eq!(*s, 409, "{b}");
        assert_eq!(b["error"]["code"], "instance_open", "{b}");
        assert_eq!(b["error"]["details"]["id"], id, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(id), "{b}");
    });
    // SIGKILL, then a fresh daemon on the same data: the key is still held.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let d = spawn(dir.path());
    let (s, b) = start(&d.addr, "solo", "T-9", None);
    assert_eq!((s, &b["error"]["details"]["id"]), (409, &json!(id)), "{b}");
    close(&d.addr, "solo.close", "T-9");
    ended(&d.addr, &id);
    let (s, b) = start(&d.addr, "solo", "T-9", None);
    assert_eq!(s, 201, "{b}");
    // No ticket, no key: refused before anything starts.
    let (s, b) = request(
        "POST",
        &format!("{}/v1/workflows/solo/instances", d.addr),
        Some(&json!({})),
        &[],
    );
    assert_eq!(
        (s, &b["error"]["code"]),
        (422, &json!("invalid_input")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("`key`"),
        "{b}"
    );
}

/// Two daemons on one database, starts for one ticket sent to both at once: one
/// instance between them; the rest are attached to it, wherever it runs.
#[test]
fn postgres_daemons_share_the_open_key() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let key = JournalKey::random().unwrap().to_hex();
    let a = daemon::serve_postgres(dir.path(), "data-a", db.url(), &key);
    let b = daemon::serve_postgres(dir.path(), "data-b", db.url(), &key);
    let addrs = [a.addr.clone(), b.addr.clone()];
    let answers = at_once(16, move |i| {
        start(&addrs[i % 2], "case", "P-1", Some(&format!("r-{i}")))
    });
    let id = the_one_created(&answers, |(s, b), id| {
        assert_eq!((*s, &b["attached"]), (200, &json!(true)), "{b}");
        assert_eq!(b["id"], id, "{b}");
    });
    has_received(&a.addr, &id, 15);
    close(&b.addr, "case.close", "P-1");
    assert_eq!(ended(&a.addr, &id)["output"], json!({"notes": 15}));
}

/// Start `line` number `n` for `ticket` with an Idempotency-Key.
fn start_line(addr: &str, ticket: &str, n: u64, key: &str) -> (u16, Value) {
    request(
        "POST",
        &format!("{addr}/v1/workflows/line/instances"),
        Some(&json!({"ticket": ticket, "n": n})),
        &[("idempotency-key", key)],
    )
}

/// The open (not ended) instances of `line`, by input number, waiting at most a minute
/// until there is exactly one.
fn the_open_line(addr: &str) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = call(
            "GET",
            &format!("{addr}/v1/instances?workflow=line&limit=100"),
            None,
        );
        let open: Vec<String> = list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                !["completed", "failed", "cancelled"].contains(&i["status"].as_str().unwrap())
            })
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        assert!(open.len() <= 1, "two open instances for one ticket: {list}");
        if let [id] = open.as_slice() {
            let (_, v) = call("GET", &format!("{addr}/v1/instances/{id}"), None);
            if v["status"] == "parked" {
                return (id.clone(), v["input"]["n"].as_u64().unwrap());
            }
        }
        assert!(Instant::now() < deadline, "no open instance came: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Instance 0 holds ticket Q-1; nine starts sent at once (two of them one request sent
/// twice with one Idempotency-Key) are queued, each once, visible in the inbox. Closing
/// the open instance starts the oldest queued one, one at a time, in queue order, and
/// every queued start runs exactly once, across `restart` (a SIGKILL and a fresh daemon,
/// or nothing) after the third. A start resent after it ran answers with its instance.
fn queued_starts_run_one_at_a_time_in_queue_order(
    addrs: [String; 2],
    restart: &mut dyn FnMut() -> [String; 2],
) {
    let (s, first) = start_line(&addrs[0], "Q-1", 0, "line-0");
    assert_eq!(s, 201, "{first}");
    let sent = addrs.clone();
    let answers = at_once(10, move |i| {
        let (n, key) = if i < 2 {
            (1, "line-dup".to_string())
        } else {
            (i as u64, format!("line-{i}"))
        };
        (n, start_line(&sent[i % 2], "Q-1", n, &key))
    });
    let mut order: Vec<(u64, u64)> = Vec::new();
    for (n, (s, b)) in &answers {
        assert_eq!(*s, 202, "{b}");
        assert_eq!(b["queued"], true, "{b}");
        let seq = b["queue_seq"].as_u64().unwrap();
        if !order.contains(&(seq, *n)) {
            order.push((seq, *n));
        }
    }
    order.sort();
    assert_eq!(
        order.len(),
        9,
        "the twin requests were kept once: {answers:?}"
    );
    let (_, inbox) = call(
        "GET",
        &format!("{}/v1/inbox?type=casework.queue.line&key=Q-1", addrs[1]),
        None,
    );
    assert_eq!(inbox["events"].as_array().unwrap().len(), 9, "{inbox}");

    let mut addrs = addrs;
    let (mut open, n) = the_open_line(&addrs[0]);
    assert_eq!(n, 0);
    for (turn, (_, expected)) in order.iter().enumerate() {
        close(&addrs[turn % 2], "line.close", "Q-1");
        if turn == 2 {
            addrs = restart();
        }
        assert_eq!(ended(&addrs[0], &open)["status"], "completed");
        let (next, n) = the_open_line(&addrs[1]);
        assert_eq!(n, *expected, "turn {turn}: queue order {order:?}");
        open = next;
    }
    close(&addrs[0], "line.close", "Q-1");
    ended(&addrs[0], &open);
    let (_, list) = call(
        "GET",
        &format!("{}/v1/instances?workflow=line&limit=100", addrs[0]),
        None,
    );
    assert_eq!(
        list["instances"].as_array().unwrap().len(),
        10,
        "each start ran once: {list}"
    );
    let (_, inbox) = call(
        "GET",
        &format!("{}/v1/inbox?type=casework.queue.line&key=Q-1", addrs[0]),
        None,
    );
    assert_eq!(inbox["events"], json!([]), "{inbox}");
    let (s, b) = start_line(&addrs[1], "Q-1", 5, "line-5");
    assert_eq!((s, b["created"].as_bool()), (200, Some(false)), "{b}");
    // Clients cannot make entries of the engine's own.
    let (s, b) = call(
        "POST",
        &format!("{}/v1/events", addrs[0]),
        Some(
            &json!({"type": "casework.queue.line", "key": "Q-1", "data": {"input": {"ticket": "Q-1", "n": 99}}}),
        ),
    );
    assert_eq!(
        (s, &b["error"]["code"]),
        (400, &json!("invalid_event_type")),
        "{b}"
    );
}

#[test]
fn queued_starts_run_in_order_once_each_across_a_sigkill_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let mut d = Some(spawn(dir.path()));
    let addr = d.as_ref().unwrap().addr.clone();
    let path = dir.path().to_path_buf();
    queued_starts_run_one_at_a_time_in_queue_order([addr.clone(), addr], &mut || {
        let mut old = d.take().unwrap();
        old.child.kill().unwrap();
        old.child.wait().unwrap();
        let fresh = spawn(&path);
        let addr = fresh.addr.clone();
        d = Some(fresh);
        [addr.clone(), addr]
    });
}

#[test]
fn postgres_daemons_share_one_queue_per_key() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    workflows(dir.path());
    let key = JournalKey::random().unwrap().to_hex();
    let a = daemon::serve_postgres(dir.path(), "data-a", db.url(), &key);
    let b = daemon::serve_postgres(dir.path(), "data-b", db.url(), &key);
    let addrs = [a.addr.clone(), b.addr.clone()];
    queued_starts_run_one_at_a_time_in_queue_order(addrs.clone(), &mut || addrs.clone());
}
