//! `casework serve --store postgres://...`: two daemons on one PostgreSQL database (the
//! server `CASEWORK_TEST_POSTGRES` names; start it with `bash tests/postgres.sh`) share
//! instances, idempotency keys and events; a daemon with another journal key, or none,
//! refuses to start and says why.

use casework::store::seal::JournalKey;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::postgres::TestDb;

mod support {
    pub mod daemon;
    pub mod postgres;
}

const WORKFLOW: &str = r#"
workflow: approve
version: 1
input:
  order: { type: string, required: true }
steps:
  - id: wait
    wait: { event: approved, key: input.order }
    save_as: ok
    next: done
  - id: done
    complete: { output: "${vars.ok.data.by}" }
"#;

/// `casework serve` on a free port with its own data folder `name`, on the store `url`.
fn serve(dir: &Path, name: &str, url: &str, key: &str) -> (Command, u16) {
    daemon::postgres_command(dir, name, url, key)
}

fn start(dir: &Path, name: &str, url: &str, key: &str) -> Daemon {
    let (c, port) = serve(dir, name, url, key);
    daemon::start(c, port)
}

/// Runs `serve` expecting it to stop at startup; its output.
fn refused(dir: &Path, url: &str, key: &str) -> String {
    let (mut c, _) = serve(dir, "data-refused", url, key);
    let out = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn post(addr: &str, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut req = ureq::post(&format!("{addr}{path}"))
        .config()
        .http_status_as_error(false)
        .build();
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let mut resp = req.send_json(body).unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_json().unwrap_or(Value::Null))
}

fn get(addr: &str, path: &str) -> Value {
    ureq::get(&format!("{addr}{path}"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

#[test]
fn two_daemons_share_one_postgres_store() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/approve.yaml"), WORKFLOW).unwrap();
    let key = JournalKey::random().unwrap().to_hex();
    let a = start(dir.path(), "data-a", db.url(), &key);
    let b = start(dir.path(), "data-b", db.url(), &key);

    let (status, started) = post(
        &a.addr,
        "/v1/workflows/approve/instances",
        json!({"order": "ORD-7"}),
        Some("ORD-7-approve"),
    );
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    // The same key on the other daemon: the same instance, not a second one.
    let (status, again) = post(
        &b.addr,
        "/v1/workflows/approve/instances",
        json!({"order": "ORD-7"}),
        Some("ORD-7-approve"),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], json!(id));
    assert_eq!(again["created"], json!(false));

    // Parked on a, the event arrives at b, which finishes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(&b.addr, &format!("/v1/instances/{id}"));
        if v["status"] == "parked" {
            break;
        }
        assert!(Instant::now() < deadline, "never parked: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, answer) = post(
        &b.addr,
        "/v1/events",
        json!({"type": "approved", "key": "ORD-7", "data": {"by": "lead-2"}}),
        None,
    );
    assert!(status < 300, "{status} {answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(&a.addr, &format!("/v1/instances/{id}"));
        if v["status"] == "completed" {
            assert_eq!(v["output"], json!("lead-2"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "never completed: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing went to sled.
    assert!(!dir.path().join("data-a/journal.key").exists());
    drop((a, b));

    // `inspect` and `report` read the database directly, with the daemons' key.
    let cli = |args: &[&str], key: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_casework"))
            .args(args)
            .args(["--store", db.url()])
            .env("CASEWORK_JOURNAL_KEY", key)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = cli(&["inspect", &id, "--json"], &key);
    assert!(ok, "{err}");
    let view: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["status"], json!("completed"), "{view}");
    assert_eq!(view["output"], json!("lead-2"), "{view}");
    let (ok, out, err) = cli(&["report", "--json"], &key);
    assert!(ok, "{err}");
    assert!(out.contains("\"approve\""), "{out}");
    let (ok, _, err) = cli(&["inspect", "no-such-id"], &key);
    assert!(!ok && err.contains("no instance `no-such-id`"), "{err}");
    assert!(err.contains("casework_test_"), "names the database: {err}");
    let (ok, _, err) = cli(&["inspect", &id], &JournalKey::random().unwrap().to_hex());
    assert!(!ok && err.contains("journal key does not match"), "{err}");

    // Another key, or none: refused at startup, saying why.
    let other = JournalKey::random().unwrap().to_hex();
    let text = refused(dir.path(), db.url(), &other);
    assert!(text.contains("journal key does not match"), "{text}");
    let text = refused(dir.path(), db.url(), "");
    assert!(
        text.contains("every daemon on the database must use the same key"),
        "{text}"
    );
}

const SLOW: &str = r#"
workflow: slow
version: 1
input: { n: integer }
steps:
  - id: charge
    call: ledger.charge
    with: { n: "${input.n}", delay_ms: 5000 }
    next: done
  - id: done
    complete: { output: "${input.n}" }
"#;

#[test]
fn a_killed_daemons_running_instance_is_finished_by_the_other() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/slow.yaml"), SLOW).unwrap();
    let key = JournalKey::random().unwrap().to_hex();
    let ledger = dir.path().join("ledger.txt");
    let with_ledger = |name: &str| {
        let (mut c, port) = serve(dir.path(), name, db.url(), &key);
        c.arg("--test-ledger").arg(&ledger);
        daemon::start(c, port)
    };
    let mut a = with_ledger("data-a");
    let b = with_ledger("data-b");
    let (status, started) = post(
        &a.addr,
        "/v1/workflows/slow/instances",
        json!({"n": 7}),
        None,
    );
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    // a is in the middle of the call (5 s): SIGKILL it. Its lease lapses within 10 s and
    // b, polling for orphans, resumes the instance from its journal.
    std::thread::sleep(Duration::from_millis(500));
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get(&b.addr, &format!("/v1/instances/{id}"));
        if v["status"] == "completed" {
            assert_eq!(v["output"], json!(7), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "b never finished it: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The call was made with one idempotency key, however often it was tried.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let keys: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(keys.len(), 1, "{text}");
}

#[test]
fn an_unreachable_database_stops_serve_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let key = JournalKey::random().unwrap().to_hex();
    let all = refused(
        dir.path(),
        "postgres://casework:s3cret-pw-77@127.0.0.1:1/ledger",
        &key,
    );
    assert!(
        all.contains("127.0.0.1:1") && all.contains("ledger"),
        "{all}"
    );
    assert!(!all.contains("s3cret-pw-77"), "{all}");
}
