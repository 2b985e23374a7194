//! `casework backup` and `casework restore` against the real daemon: a backup taken while
//! starts and events keep arriving holds every instance acknowledged before it began and
//! none acknowledged after it ended; the restored store resumes every instance it holds
//! to completion, with buffered events kept and no call's effect journaled twice. Bad
//! files, keys and directories are refused with nothing changed.

use casework::store::seal::JournalKey;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::http::{call, ended, request};
use support::postgres::TestDb;

mod support {
    pub mod daemon;
    pub mod http;
    pub mod postgres;
}

const JOB: &str = r#"workflow: job
version: 1
input:
  n: { type: integer, required: true }
steps:
  - id: charge
    call: payments.charge
    with: { n: "${input.n}" }
    next: hold
  - id: hold
    wait: { event: go, key: input.n, timeout: 1h, on_timeout: done }
    next: notify
  - id: notify
    call: payments.notify
    with: { n: "${input.n}" }
    next: done
  - id: done
    complete: {}
"#;

fn folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("workflows")).unwrap();
    std::fs::write(dir.join("workflows/job.yaml"), JOB).unwrap();
}

fn serve(dir: &Path) -> Daemon {
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    c.arg("--no-reload")
        .arg("--test-ledger")
        .arg(dir.join("ledger"));
    daemon::start(c, port)
}

fn casework(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_casework"))
        .args(args)
        .env_remove("CASEWORK_JOURNAL_KEY")
        .env_remove("CASEWORK_JOURNAL_KEY_FILE")
        .env_remove("CASEWORK_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn go(addr: &str, n: usize) -> u16 {
    call(
        "POST",
        &format!("{addr}/v1/events"),
        Some(&json!({"type": "go", "key": n.to_string(), "id": format!("go-{n}")})),
    )
    .0
}

/// One start as the client saw it: when it was sent and acknowledged, and when its
/// event was acknowledged.
struct Sent {
    n: usize,
    id: String,
    sent: Instant,
    acked: Instant,
    go_acked: Option<Instant>,
}

#[test]
fn a_backup_under_load_restores_what_was_acknowledged_and_every_instance_finishes() {
    let a_dir = tempfile::tempdir().unwrap();
    folder(a_dir.path());
    let a = serve(a_dir.path());
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    const CLIENTS: usize = 4;
    // Each client sends until told to stop (once starts were sent after the backup), at
    // most this many.
    const EACH: usize = 200;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, sent, stop) = (a.addr.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0..EACH {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let n = c * EACH + i;
                    let sent_at = Instant::now();
                    let (s, v) = request(
                        "POST",
                        &format!("{addr}/v1/workflows/job/instances"),
                        Some(&json!({"n": n})),
                        &[("idempotency-key", &format!("job-{n}"))],
                    );
                    assert_eq!(s, 201, "{v}");
                    let acked = Instant::now();
                    // Half get their event at once: it races the charge and often waits
                    // in the inbox for the wait to begin.
                    let go_acked = n.is_multiple_of(2).then(|| {
                        assert_eq!(go(&addr, n), 200);
                        Instant::now()
                    });
                    sent.lock().unwrap().push(Sent {
                        n,
                        id: v["id"].as_str().unwrap().to_string(),
                        sent: sent_at,
                        acked,
                        go_acked,
                    });
                }
            })
        })
        .collect();
    // Back up once the load is well under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    const BEFORE: usize = 40;
    while sent.lock().unwrap().len() < BEFORE {
        assert!(Instant::now() < deadline, "the load did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    let file = a_dir.path().join("a.backup");
    let began = Instant::now();
    let (code, err) = casework(&["backup", "--to", file.to_str().unwrap(), "--url", &a.addr]);
    let done = Instant::now();
    assert_eq!(code, 0, "{err}");
    let at_done = sent.lock().unwrap().len();
    while sent.lock().unwrap().len() < at_done + 2 * CLIENTS {
        assert!(Instant::now() < deadline, "the load stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in loaders {
        l.join().unwrap();
    }
    drop(a); // SIGKILL: the restored copy must not need anything the first daemon had

    let b_dir = tempfile::tempdir().unwrap();
    folder(b_dir.path());
    let key = a_dir.path().join("data/journal.key");
    let (code, err) = casework(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data",
        b_dir.path().join("data").to_str().unwrap(),
        "--journal-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let b = serve(b_dir.path());
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let mut restored = Vec::new();
    for s in &sent {
        let (status, _) = call("GET", &format!("{}/v1/instances/{}", b.addr, s.id), None);
        if s.acked < began {
            assert_eq!(status, 200, "{} was acknowledged before the backup", s.n);
        }
        if s.sent > done {
            assert_eq!(status, 404, "{} was started after the backup", s.n);
        }
        if status == 200 {
            restored.push(s);
        }
    }
    assert!(
        restored.len() >= BEFORE && restored.len() < sent.len(),
        "the backup fell inside the load: {} of {}",
        restored.len(),
        sent.len()
    );
    for s in &restored {
        // An event acknowledged before the backup is in it (taken or in the inbox); the
        // others are sent again, with the same id.
        if s.go_acked.is_none_or(|t| t > began) {
            assert_eq!(go(&b.addr, s.n), 200);
        }
    }
    for s in &restored {
        let view = ended(&b.addr, &s.id);
        assert_eq!(view["status"], "completed", "{view}");
        for step in ["charge", "notify"] {
            let succeeded = view["journal"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["record"] == "call_succeeded" && r["step"] == step)
                .count();
            assert_eq!(succeeded, 1, "{step} of {}: {view}", s.n);
        }
    }
    // A second start with a restored key finds its instance.
    let s = &restored[0];
    let (status, v) = request(
        "POST",
        &format!("{}/v1/workflows/job/instances", b.addr),
        Some(&json!({"n": s.n})),
        &[("idempotency-key", &format!("job-{}", s.n))],
    );
    assert_eq!(
        (status, v["id"].as_str()),
        (200, Some(s.id.as_str())),
        "{v}"
    );
}

#[test]
fn bad_backups_keys_and_directories_are_refused_with_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path());
    let a = serve(dir.path());
    let (s, v) = request(
        "POST",
        &format!("{}/v1/workflows/job/instances", a.addr),
        Some(&json!({"n": 1})),
        &[],
    );
    assert_eq!(s, 201, "{v}");
    let file = dir.path().join("a.backup");
    let f = file.to_str().unwrap();
    assert_eq!(casework(&["backup", "--to", f, "--url", &a.addr]).0, 0);
    let (code, err) = casework(&["backup", "--to", f, "--url", &a.addr]);
    assert!(code == 1 && err.contains("never overwrites"), "{err}");
    drop(a);
    let key = dir.path().join("data/journal.key");
    let key = key.to_str().unwrap();
    let target = dir.path().join("restored");
    let t = target.to_str().unwrap();

    // No key; a wrong key; a cut-short file: refused, and no directory is left behind.
    let (code, err) = casework(&["restore", "--from", f, "--data", t]);
    assert!(code == 1 && err.contains("--journal-key-file"), "{err}");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, JournalKey::random().unwrap().to_hex()).unwrap();
    let (code, err) = casework(&[
        "restore",
        "--from",
        f,
        "--data",
        t,
        "--journal-key-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(
        code == 1 && err.contains("journal key does not match"),
        "{err}"
    );
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    let (code, err) = casework(&[
        "restore",
        "--from",
        cut.to_str().unwrap(),
        "--data",
        t,
        "--journal-key-file",
        key,
    ]);
    assert!(code == 1 && err.contains("cut short or damaged"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restored"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // Into a directory that holds something: refused, the directory untouched.
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep"), "mine").unwrap();
    let (code, err) = casework(&[
        "restore",
        "--from",
        f,
        "--data",
        t,
        "--journal-key-file",
        key,
    ]);
    assert!(code == 1 && err.contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(target.join("keep")).unwrap(),
        "mine"
    );

    // A PostgreSQL store is backed up with pg_dump: the API says so.
    let db = TestDb::new();
    let pg = daemon::serve_postgres(
        dir.path(),
        "pg",
        db.url(),
        &JournalKey::random().unwrap().to_hex(),
    );
    let (s, v): (u16, Value) = call("GET", &format!("{}/v1/backup", pg.addr), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (501, Some("not_supported")),
        "{v}"
    );
    let (code, err) = casework(&[
        "backup",
        "--to",
        dir.path().join("pg.backup").to_str().unwrap(),
        "--url",
        &pg.addr,
    ]);
    assert!(code == 1 && err.contains("pg_dump"), "{err}");
    assert!(!dir.path().join("pg.backup").exists());
    assert!(!dir.path().join("pg.partial").exists());
}
