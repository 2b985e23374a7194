//! SIGTERM while the daemon is under load: it stops accepting requests, exits
//! cleanly within a bounded time, and the next start finishes every accepted
//! instance with each side effect applied once.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};

mod support {
    pub mod daemon;
}

const WORKFLOW: &str = r#"
workflow: slow
version: 1
input: { n: integer }
steps:
  - id: charge
    call: ledger.charge
    with: { n: "${input.n}", delay_ms: 400 }
    retry: { max_attempts: 10, backoff: 100ms, max_delay: 1s }
    next: done
  - id: done
    complete: { output: "${input.n}" }
"#;

fn spawn(dir: &Path, port: u16) -> Daemon {
    let mut c = daemon::command(dir, port);
    c.arg("--test-ledger").arg(dir.join("ledger.txt"));
    daemon::start(c, port)
}

fn status(port: u16, id: &str) -> Option<String> {
    let mut resp = ureq::get(&format!("http://127.0.0.1:{port}/v1/instances/{id}"))
        .call()
        .ok()?;
    let v: Value = resp.body_mut().read_json().ok()?;
    v["status"].as_str().map(str::to_string)
}

#[test]
fn sigterm_under_load_exits_cleanly_and_the_next_start_finishes_everything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/slow.yaml"), WORKFLOW).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = spawn(dir.path(), port);

    // Load: clients keep starting instances while the signal arrives.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let n = c * 1000 + i;
                    let sent = ureq::post(&format!(
                        "http://127.0.0.1:{port}/v1/workflows/slow/instances"
                    ))
                    .send_json(json!({"n": n}));
                    match sent {
                        Ok(mut resp) => {
                            let v: Value = resp.body_mut().read_json().unwrap();
                            accepted
                                .lock()
                                .unwrap()
                                .push(v["id"].as_str().unwrap().to_string());
                        }
                        // The daemon stopped accepting: this client is done.
                        Err(_) => return,
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "no load reached the daemon");
        std::thread::sleep(Duration::from_millis(10));
    }
    let term = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "SIGTERM should be a clean exit, got {exit:?}"
    );
    for c in clients {
        c.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(!accepted.is_empty());

    let mut daemon = spawn(dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &accepted {
        while status(port, id).as_deref() != Some("completed") {
            assert!(
                Instant::now() < deadline,
                "{id} never completed after restart"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    daemon.child.kill().unwrap();
    let _ = daemon.child.wait();

    let ledger = std::fs::read_to_string(dir.path().join("ledger.txt")).unwrap();
    let keys: BTreeSet<&str> = ledger.lines().filter_map(|l| l.split(' ').next()).collect();
    for id in &accepted {
        let key = format!("{id}:charge:1");
        assert!(keys.contains(key.as_str()), "{key} was never applied");
    }
    assert_eq!(
        keys.len(),
        accepted.len(),
        "every accepted instance charges under exactly one key"
    );
}
