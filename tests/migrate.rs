//! Moving waiting instances to a new workflow version against the real daemon: a dry run
//! lists who would move and why the others stay, and changes nothing; a move is journaled
//! (old hash, new hash, mapping), the instance goes on along the new version's path, and a
//! second migration takes it back; moves racing events lose and repeat none; a SIGKILL in
//! the middle of a migration moves every instance once; wrong rules are refused at load
//! with their line.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::http::{call, ended, received};

mod support {
    pub mod daemon;
    pub mod http;
    pub mod postgres;
}

/// Waits for the approval, then (for some) for the payment.
const V1: &str = r#"workflow: approve
version: 1
input:
  key: { type: string, required: true }
  pay: { type: boolean, default: false }
steps:
  - id: wait_for_approval
    wait: { event: approval, key: input.key, timeout: 1h, on_timeout: late }
    save_as: got
    next: route
  - id: route
    switch:
      - when: input.pay
        goto: wait_for_payment
    default: done
  - id: wait_for_payment
    wait: { event: payment, key: input.key, timeout: 1h, on_timeout: late }
    next: done
  - id: done
    complete: { output: { version: 1, by: "${vars.got.data.by}" } }
  - id: late
    complete: { output: { by: nobody } }
"#;

/// The approval wait renamed, and a tier set for moved instances.
const V2: &str = r#"workflow: approve
version: 2
migrate:
  - from: 1
    at: [wait_for_approval]
    to: await_approval
    set: { tier: '"manager"' }
input:
  key: { type: string, required: true }
  pay: { type: boolean, default: false }
steps:
  - id: await_approval
    wait: { event: approval, key: input.key, timeout: 1h, on_timeout: late }
    save_as: got
    next: done
  - id: done
    complete: { output: { version: 2, tier: "${vars.tier}", by: "${vars.got.data.by}" } }
  - id: late
    complete: { output: { by: nobody } }
"#;

/// Version 1's steps again, taking version 2's instances back: the undo.
fn v3() -> String {
    V1.replace(
        "version: 1\n",
        "version: 3\nmigrate:\n  - from: 2\n    at: [await_approval]\n    to: wait_for_approval\n",
    )
    .replace("version: 1, by", "version: 3, by")
}

fn write(dir: &Path, source: &str) {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("approve.yaml"), source).unwrap();
}

fn spawn(dir: &Path) -> Daemon {
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload");
    daemon::start(c, port)
}

fn start(addr: &str, key: &str, pay: bool) -> String {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/workflows/approve/instances"),
        Some(&json!({"key": key, "pay": pay})),
    );
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

fn send(addr: &str, event: &str, key: &str) -> Value {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/events"),
        Some(&json!({"type": event, "key": key, "data": {"by": key}})),
    );
    assert_eq!(s, 200, "{b}");
    b
}

fn view(addr: &str, id: &str) -> Value {
    call("GET", &format!("{addr}/v1/instances/{id}"), None).1
}

/// The instance once it waits again (its view shows a wait).
fn parked(addr: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = view(addr, id);
        if v["status"] == "parked" {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} never parked: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn migrations(v: &Value) -> Vec<Value> {
    v["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "migrated")
        .cloned()
        .collect()
}

fn bulk_migrate(addr: &str, dry_run: bool) -> Value {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/bulk"),
        Some(
            &json!({"action": "migrate", "workflow": "approve", "dry_run": dry_run, "reason": "approval renamed"}),
        ),
    );
    assert_eq!(s, 200, "{b}");
    b
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_casework"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn waiting_instances_move_along_the_new_version_and_a_second_migration_takes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), V1);
    let mut d = spawn(dir.path());
    let a = start(&d.addr, "A", false);
    let b = start(&d.addr, "B", false);
    // Past the listed wait: it waits for its payment, a step no rule lists.
    let p = start(&d.addr, "P", true);
    send(&d.addr, "approval", "P");
    let v1_hash = parked(&d.addr, &a)["journal"][0]["hash"].clone();
    parked(&d.addr, &b);
    assert_eq!(
        parked(&d.addr, &p)["current"][0]["step"],
        "wait_for_payment"
    );
    d.child.kill().unwrap();
    d.child.wait().unwrap();

    write(dir.path(), V2);
    let d = spawn(dir.path());
    // The dry run names who would move and why the other stays, and writes nothing.
    let (code, out, err) = cli(&["migrate", "approve", "--dry-run", "--url", &d.addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "would move {a}: version 1 at wait_for_approval → version 2 at await_approval"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("would move {b}:")), "{out}");
    assert!(
        out.contains(&format!("stays {p}: instance `{p}` does not move to version 2: the instance is at step `wait_for_payment`; it can move only while it waits at `wait_for_approval` (not_at_safe_point)")),
        "{out}"
    );
    assert!(
        out.contains("would move 2 instance(s) of approve; 1 stay"),
        "{out}"
    );
    for id in [&a, &b, &p] {
        let v = view(&d.addr, id);
        assert_eq!(v["version"], 1, "a dry run moved {id}: {v}");
        assert!(migrations(&v).is_empty(), "{v}");
    }
    // A move without a reason is refused; with one, it is journaled.
    let (code, _, err) = cli(&["migrate", "approve", "--url", &d.addr]);
    assert_ne!(code, 0);
    assert!(err.contains("--reason"), "{err}");
    let (code, out, err) = cli(&[
        "migrate",
        "approve",
        "--reason",
        "approval renamed",
        "--url",
        &d.addr,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("moved 2 instance(s) of approve; 1 stay"),
        "{out}"
    );

    let v = parked(&d.addr, &a);
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["current"][0]["step"], "await_approval", "{v}");
    let m = migrations(&v);
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["from_version"], 1);
    assert_eq!(m[0]["from_hash"], v1_hash);
    assert_eq!(m[0]["from_step"], "wait_for_approval");
    assert_eq!(m[0]["to_version"], 2);
    assert_ne!(m[0]["to_hash"], v1_hash);
    assert_eq!(m[0]["to_step"], "await_approval");
    assert_eq!(m[0]["reason"], "approval renamed");
    // Moving again finds it there already.
    let (s, again) = call(
        "POST",
        &format!("{}/v1/instances/{a}/migrate", d.addr),
        Some(&json!({"reason": "twice"})),
    );
    assert_eq!(
        (s, again["error"]["code"].as_str()),
        (409, Some("already_there")),
        "{again}"
    );

    send(&d.addr, "approval", "A");
    let done = ended(&d.addr, &a);
    assert_eq!(
        done["output"],
        json!({"version": 2, "tier": "manager", "by": "A"}),
        "{done}"
    );
    // The one that stayed finishes on version 1's path.
    send(&d.addr, "payment", "P");
    assert_eq!(
        ended(&d.addr, &p)["output"],
        json!({"version": 1, "by": "P"})
    );
    drop(d);

    // The undo: a version 3 with version 1's steps takes B back to the old wait.
    write(dir.path(), &v3());
    let d = spawn(dir.path());
    let report = bulk_migrate(&d.addr, false);
    assert_eq!(report["done"], json!([b.clone()]), "{report}");
    let v = parked(&d.addr, &b);
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(v["current"][0]["step"], "wait_for_approval", "{v}");
    let m = migrations(&v);
    assert_eq!(m.len(), 2, "{v}");
    assert_eq!(m[1]["from_hash"], m[0]["to_hash"], "{v}");
    send(&d.addr, "approval", "B");
    let done = ended(&d.addr, &b);
    assert_eq!(done["output"], json!({"version": 3, "by": "B"}), "{done}");
    assert_eq!(received(&done), 1);
}

/// A migration and the approval sent at the same moment, for 16 instances: each is either
/// approved on version 1 (then it has ended and stays) or moved and approved on version 2,
/// and takes its approval exactly once.
#[test]
fn moves_racing_events_lose_and_repeat_none() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), V1);
    let mut d = spawn(dir.path());
    let keys: Vec<String> = (0..16).map(|n| format!("R-{n}")).collect();
    let ids: Vec<String> = keys.iter().map(|k| start(&d.addr, k, false)).collect();
    for id in &ids {
        parked(&d.addr, id);
    }
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    write(dir.path(), V2);
    let d = spawn(dir.path());
    let addr = d.addr.clone();
    let senders: Vec<_> = keys
        .iter()
        .cloned()
        .map(|k| {
            let addr = addr.clone();
            std::thread::spawn(move || send(&addr, "approval", &k))
        })
        .collect();
    let report = bulk_migrate(&d.addr, false);
    for s in senders {
        s.join().unwrap();
    }
    let moved = report["done"].as_array().unwrap().len();
    for r in report["refused"].as_array().unwrap() {
        assert!(
            ["ended", "not_at_safe_point"].contains(&r["code"].as_str().unwrap()),
            "{report}"
        );
    }
    let mut on_v2 = 0;
    for (id, key) in ids.iter().zip(&keys) {
        let v = ended(&d.addr, id);
        assert_eq!(received(&v), 1, "{v}");
        assert_eq!(v["output"]["by"], json!(key), "{v}");
        let m = migrations(&v).len();
        assert!(m <= 1, "{v}");
        if m == 1 {
            on_v2 += 1;
            assert_eq!(v["output"]["version"], 2, "{v}");
        } else {
            assert_eq!(v["output"]["version"], 1, "{v}");
        }
    }
    assert_eq!(on_v2, moved, "{report}");
}

/// SIGKILL while a migration of 40 instances is under way, at a different moment each
/// round: after a restart and the same migration again, every instance has moved exactly
/// once and finishes on the new version.
#[test]
fn a_sigkill_during_a_migration_moves_each_instance_once() {
    for (round, pause_ms) in [5u64, 40, 120].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), V1);
        let mut d = spawn(dir.path());
        let keys: Vec<String> = (0..40).map(|n| format!("K{round}-{n}")).collect();
        let ids: Vec<String> = keys.iter().map(|k| start(&d.addr, k, false)).collect();
        for id in &ids {
            parked(&d.addr, id);
        }
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        write(dir.path(), V2);
        let mut d = spawn(dir.path());
        let addr = d.addr.clone();
        // Its connection dies with the daemon: whatever it answers is not looked at.
        let migrating = std::thread::spawn(move || {
            let _ = ureq::post(&format!("{addr}/v1/bulk"))
                .send_json(json!({"action": "migrate", "workflow": "approve", "reason": "r"}));
        });
        std::thread::sleep(Duration::from_millis(pause_ms));
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        let _ = migrating.join();
        let d = spawn(dir.path());
        // Those moved before the kill are there already; the others move now.
        let report = bulk_migrate(&d.addr, false);
        let refused = report["refused"].as_array().unwrap();
        assert!(
            refused.iter().all(|r| r["code"] == "already_there"),
            "{report}"
        );
        assert_eq!(
            refused.len() + report["done"].as_array().unwrap().len(),
            ids.len(),
            "{report}"
        );
        for (id, key) in ids.iter().zip(&keys) {
            let v = parked(&d.addr, id);
            assert_eq!(migrations(&v).len(), 1, "round {round}: {v}");
            assert_eq!(v["version"], 2, "{v}");
            send(&d.addr, "approval", key);
            let v = ended(&d.addr, id);
            assert_eq!(v["output"]["version"], 2, "{v}");
            assert_eq!(received(&v), 1, "{v}");
        }
    }
}

#[test]
fn a_rule_that_does_not_fit_the_stored_versions_is_refused_at_load_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), V1);
    let mut d = spawn(dir.path());
    let id = start(&d.addr, "W", false);
    parked(&d.addr, &id);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    // A version that never ran here.
    let never = V2
        .replace("from: 1", "from: 7")
        .replace("version: 2", "version: 8");
    write(dir.path(), &never);
    let port = daemon::free_port();
    let log = dir.path().join("serve.log");
    let mut c = daemon::command(dir.path(), port);
    c.arg("--no-reload")
        .stderr(std::fs::File::create(&log).unwrap());
    let d = daemon::start(c, port);
    let (_, wfs) = call("GET", &format!("{}/v1/workflows", d.addr), None);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(
            "approve.yaml:4:11: error: version 7 of `approve` never ran here (versions run: 1)"
        ),
        "{text}"
    );
    assert!(wfs.to_string().contains("never ran here"), "{wfs}");
    drop(d);
    let not_a_wait = V2.replace("at: [wait_for_approval]", "at: [route, wait_for_approval]");
    write(dir.path(), &not_a_wait);
    let port = daemon::free_port();
    let mut c = daemon::command(dir.path(), port);
    c.arg("--no-reload")
        .stderr(std::fs::File::create(&log).unwrap());
    let d = daemon::start(c, port);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("approve.yaml:5:10: error: `route` is not a wait of version 1 of `approve`"),
        "{text}"
    );
    assert!(
        text.contains("the waits of version 1 are: wait_for_approval, wait_for_payment"),
        "{text}"
    );
    // Version 1 stays loaded, so its instance still runs.
    send(&d.addr, "approval", "W");
    assert_eq!(ended(&d.addr, &id)["output"]["version"], 1);
}

/// Two daemons on one PostgreSQL store: a migration through one of them, while the other
/// is sent half of the instances' approvals at the same moment, moves each instance at
/// most once and loses no approval; the dry run through either sees the same instances.
#[test]
fn daemons_on_one_postgres_store_move_each_instance_once() {
    let db = support::postgres::TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), V1);
    let key = casework::store::seal::JournalKey::random()
        .unwrap()
        .to_hex();
    let a = daemon::serve_postgres(dir.path(), "data-a", db.url(), &key);
    let keys: Vec<String> = (0..12).map(|n| format!("PG-{n}")).collect();
    let ids: Vec<String> = keys.iter().map(|k| start(&a.addr, k, false)).collect();
    for id in &ids {
        parked(&a.addr, id);
    }
    drop(a);
    write(dir.path(), V2);
    let a = daemon::serve_postgres(dir.path(), "data-a", db.url(), &key);
    let b = daemon::serve_postgres(dir.path(), "data-b", db.url(), &key);
    let (code, out, err) = cli(&["migrate", "approve", "--dry-run", "--url", &b.addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("would move 12 instance(s) of approve; 0 stay"),
        "{out}"
    );
    let addr = a.addr.clone();
    let early: Vec<String> = keys.iter().step_by(2).cloned().collect();
    let senders: Vec<_> = early
        .iter()
        .cloned()
        .map(|k| {
            let addr = addr.clone();
            std::thread::spawn(move || send(&addr, "approval", &k))
        })
        .collect();
    let report = bulk_migrate(&b.addr, false);
    for s in senders {
        s.join().unwrap();
    }
    for r in report["refused"].as_array().unwrap() {
        assert!(
            ["ended", "not_at_safe_point"].contains(&r["code"].as_str().unwrap()),
            "{report}"
        );
    }
    for k in keys.iter().skip(1).step_by(2) {
        send(&b.addr, "approval", k);
    }
    for (id, key) in ids.iter().zip(&keys) {
        let v = ended(&a.addr, id);
        assert_eq!(received(&v), 1, "{v}");
        assert_eq!(v["output"]["by"], json!(key), "{v}");
        let moved = migrations(&v).len();
        assert!(moved <= 1, "{v}");
        assert_eq!(
            v["output"]["version"],
            json!(if moved == 1 { 2 } else { 1 }),
            "{v}"
        );
        if keys.iter().skip(1).step_by(2).any(|k| k == key) {
            assert_eq!(
                moved, 1,
                "sent after the migration, it was on version 2: {v}"
            );
        }
    }
}
