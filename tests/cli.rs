//! The command line as a user drives it: `list`, `send-event`, `cancel`, `retry`,
//! `inspect` and `report` against a real daemon that requires tokens (with the right,
//! a wrong, a too weak and no token, and with no daemon at all); completions, the man page
//! and `--color`; and the bugs that were found in `run`, `test`, `validate` and `serve`.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};

mod support {
    pub mod daemon;
}

/// Waits for `go` keyed by its input, then completes.
const HOLD: &str = r#"workflow: hold
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: hold
    wait: { event: go, key: input.key }
    next: done
  - id: done
    complete: { output: { ok: true } }
"#;

/// One plugin call, answered by the daemon's ledger fake.
const PAY: &str = r#"workflow: pay
version: 1
steps:
  - id: charge
    call: payments.charge
    retry: { max_attempts: 1 }
    next: done
  - id: done
    complete: { output: { paid: true } }
"#;

/// Completes at once.
const QUICK: &str = r#"workflow: quick
version: 1
steps:
  - id: done
    complete: { output: { ok: true } }
"#;

const ADMIN: &str = "admin-secret-0123456789abcdef";
const VIEWER: &str = "viewer-secret-0123456789abcdef";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `casework ARGS` in `dir` with no CASEWORK_* variables but `env`.
fn casework(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_casework"));
    c.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("CASEWORK_") {
            c.env_remove(k);
        }
    }
    c.env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run casework");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A folder with `workflows/` holding these files.
fn folder(workflows: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    for (name, text) in workflows {
        std::fs::write(dir.path().join("workflows").join(name), text).unwrap();
    }
    dir
}

/// The daemon with an admin and a read-only token; plugin calls go to the ledger fake at
/// DIR/ledger.
fn token_daemon(dir: &Path) -> Daemon {
    let port = daemon::free_port();
    let mut c = daemon::command(dir, port);
    for (k, _) in std::env::vars() {
        if k.starts_with("CASEWORK_") {
            c.env_remove(k);
        }
    }
    c.arg("--token")
        .arg(format!("ops:admin:{ADMIN}"))
        .arg("--token")
        .arg(format!("viewer:read:{VIEWER}"))
        .arg("--test-ledger")
        .arg(dir.join("ledger"))
        .arg("--no-reload")
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
    daemon::start(c, port)
}

/// The API directly, for what the CLI has no command for (starting an instance).
fn start_instance(d: &Daemon, workflow: &str, input: Value) -> String {
    let mut resp = ureq::post(&format!("{}/v1/workflows/{workflow}/instances", d.addr))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .send_json(input)
        .unwrap();
    let body: Value = resp.body_mut().read_json().unwrap();
    body["id"].as_str().unwrap().to_string()
}

fn status(d: &Daemon, id: &str) -> String {
    let mut resp = ureq::get(&format!("{}/v1/instances/{id}", d.addr))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap();
    let v: Value = resp.body_mut().read_json().unwrap();
    v["status"].as_str().unwrap_or("").to_string()
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_client_commands_drive_a_daemon_with_tokens() {
    let dir = folder(&[("hold.yaml", HOLD), ("pay.yaml", PAY)]);
    let root = dir.path();
    // The ledger fake cannot write while its path is a folder: the charge fails.
    std::fs::create_dir(root.join("ledger")).unwrap();
    let d = token_daemon(root);
    let url = d.addr.as_str();
    let admin: &[(&str, &str)] = &[("CASEWORK_URL", url), ("CASEWORK_TOKEN", ADMIN)];
    let viewer: &[(&str, &str)] = &[("CASEWORK_URL", url), ("CASEWORK_TOKEN", VIEWER)];

    let a = start_instance(&d, "hold", json!({"key": "ORD-1"}));
    let b = start_instance(&d, "hold", json!({"key": "ORD-2"}));
    eventually("a and b wait", || {
        status(&d, &a) == "parked" && status(&d, &b) == "parked"
    });

    // list: a table with both, filters, JSON; flags work as well as the environment.
    let r = casework(root, &["list", "--url", url, "--token", VIEWER], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS"),
        "{r:?}"
    );
    for id in [&a, &b] {
        let row = lines.iter().find(|l| l.starts_with(id.as_str()));
        assert!(
            row.is_some_and(|l| l.contains("hold") && l.contains("parked") && l.ends_with('Z')),
            "{r:?}"
        );
    }
    // One page of one: the first only, and a note that there are more; --all pages on.
    let r = casework(root, &["list", "--limit", "1"], viewer);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 2, "header and one row: {r:?}");
    assert!(
        r.stderr.contains("there may be more (--limit N or --all)"),
        "{r:?}"
    );
    let r = casework(root, &["list", "--all"], viewer);
    assert_eq!(r.stdout.lines().count(), 3, "header and both rows: {r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    let r = casework(root, &["list", "--status", "completed", "--json"], viewer);
    assert_eq!(r.code, 0, "{r:?}");
    let listed: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed["instances"], json!([]), "{r:?}");
    let r = casework(root, &["list", "--status", "parkd"], viewer);
    assert_eq!(
        r.code, 2,
        "a status the API does not know is refused: {r:?}"
    );
    assert!(r.stderr.contains("parked"), "{r:?}");

    // send-event wakes a, which completes; the same event id again wakes nothing.
    let r = casework(
        root,
        &[
            "send-event",
            "go",
            "ORD-1",
            "--data",
            r#"{"by":"lead-2"}"#,
            "--id",
            "evt-1",
        ],
        admin,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("woke {a}")), "{r:?}");
    eventually("a completes", || status(&d, &a) == "completed");
    // The same event id again: the first answer, nothing delivered twice.
    let r = casework(root, &["send-event", "go", "ORD-1", "--id", "evt-1"], admin);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("woke {a}")), "{r:?}");
    let r = casework(root, &["send-event", "go", "ORD-1"], admin);
    assert_eq!(r.code, 0, "{r:?}");
    // Nobody waits any more: it is kept for a wait that begins later.
    assert!(
        r.stdout.contains(
            "no instance waits for go with key ORD-1 yet: the event is kept in the inbox"
        ),
        "{r:?}"
    );
    let r = casework(
        root,
        &["send-event", "go", "ORD-1", "--data", "{not json"],
        admin,
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("--data"), "{r:?}");
    let r = casework(root, &["list", "--status", "completed", "--json"], viewer);
    let listed: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed["instances"][0]["id"], json!(a), "{r:?}");

    // A read-only token cannot cancel: the API's message and code, and what to do.
    let r = casework(
        root,
        &["cancel", &b, "--reason", "duplicate ticket"],
        viewer,
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .starts_with("casework: this token has scope `read`")
            && r.stderr.contains("(forbidden)"),
        "{r:?}"
    );
    assert_eq!(status(&d, &b), "parked");

    // cancel with the admin token; the reason is in the journal, shown by inspect (which
    // asks the daemon: it holds the data directory).
    let r = casework(root, &["cancel", &b, "--reason", "duplicate ticket"], admin);
    assert_eq!(r.code, 0, "{r:?}");
    eventually("b is cancelled", || status(&d, &b) == "cancelled");
    let r = casework(root, &["cancel", &b], admin);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with(&format!(
            "casework: instance `{b}` has already ended or is being cancelled (instance_finished)"
        )),
        "{r:?}"
    );
    let r = casework(root, &["inspect", &b, "--data", "data"], viewer);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("status cancelled"), "{r:?}");
    assert!(
        r.stdout.contains("cancel requested: duplicate ticket"),
        "{r:?}"
    );

    // retry: refused for an instance that did not fail, then a real failed one.
    let r = casework(root, &["retry", &a], admin);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("(not_failed)"), "{r:?}");
    let p = start_instance(&d, "pay", json!({}));
    eventually("the charge fails", || status(&d, &p) == "failed");
    let r = casework(
        root,
        &["list", "--workflow", "pay", "--status", "failed"],
        viewer,
    );
    assert!(r.stdout.lines().any(|l| l.starts_with(p.as_str())), "{r:?}");
    std::fs::remove_dir(root.join("ledger")).unwrap();
    let r = casework(root, &["retry", &p], admin);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("instance {p} is retrying")),
        "{r:?}"
    );
    eventually("the retried charge completes", || {
        status(&d, &p) == "completed"
    });
    let r = casework(root, &["inspect", &p, "--json"], viewer);
    assert_eq!(r.code, 0, "{r:?}");
    let view: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(view["status"], json!("completed"), "{r:?}");

    // report through the daemon, with the older --addr spelling (HOST:PORT).
    let hostport = url.trim_start_matches("http://");
    let r = casework(
        root,
        &["report", "--json", "--addr", hostport, "--token", VIEWER],
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let reports: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(reports.is_array(), "{r:?}");

    // No token: 401 with a hint naming the variable to set; a wrong one: not accepted.
    for args in [
        vec!["list"],
        vec!["inspect", a.as_str()],
        vec!["report"],
        vec!["cancel", a.as_str()],
    ] {
        let r = casework(root, &args, &[("CASEWORK_URL", url)]);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(
            r.stderr.starts_with("casework: ") && r.stderr.contains("(unauthorized)"),
            "{args:?}: {r:?}"
        );
        assert!(
            r.stderr.contains("CASEWORK_TOKEN") && r.stderr.contains(url),
            "{args:?}: {r:?}"
        );
    }
    let r = casework(
        root,
        &["list", "--token", "not-the-token-at-all-0000"],
        &[("CASEWORK_URL", url)],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("(unauthorized)") && r.stderr.contains("did not accept the token"),
        "{r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn no_daemon_at_the_url_says_which_url_and_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let url = format!("http://127.0.0.1:{}", daemon::free_port());
    for args in [
        vec!["list"],
        vec!["retry", "abc"],
        vec!["send-event", "go", "k"],
    ] {
        let r = casework(dir.path(), &args, &[("CASEWORK_URL", &url)]);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(
            r.stderr
                .starts_with(&format!("casework: no casework daemon answered at {url}")),
            "{args:?}: {r:?}"
        );
        assert!(r.stderr.contains("casework serve"), "{r:?}");
    }
    let r = casework(dir.path(), &["list", "--url", "ftp://example.com"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--url ftp://example.com"), "{r:?}");
}

#[test]
fn inspect_falls_back_to_the_daemon_and_names_the_directory_when_it_does_not_answer() {
    let dir = folder(&[("hold.yaml", HOLD)]);
    let d = token_daemon(dir.path());
    let id = start_instance(&d, "hold", json!({"key": "k"}));
    let nobody = format!("127.0.0.1:{}", daemon::free_port());
    let r = casework(
        dir.path(),
        &["inspect", &id, "--addr", &nobody, "--token", ADMIN],
        &[],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("the data directory data is in use")
            && r.stderr.contains(&format!("http://{nobody}")),
        "{r:?}"
    );
    let r = casework(
        dir.path(),
        &["inspect", &id, "--url", &d.addr],
        &[("CASEWORK_TOKEN", ADMIN)],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("status parked"), "{r:?}");
}

#[test]
fn completions_man_page_and_color() {
    let dir = tempfile::tempdir().unwrap();
    let r = casework(dir.path(), &["completions", "bash"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    for word in ["_casework", "send-event", "--token", "completions"] {
        assert!(r.stdout.contains(word), "{word} missing: {r:?}");
    }
    let r = casework(dir.path(), &["completions", "zsh"], &[]);
    assert!(
        r.code == 0 && r.stdout.contains("#compdef casework"),
        "{r:?}"
    );
    let r = casework(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(r.code, 2, "{r:?}");

    let r = casework(dir.path(), &["man"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with(".ie"), "{r:?}");
    assert!(r.stdout.contains(".TH casework 1"), "{r:?}");
    assert!(r.stdout.contains("send\\-event"), "{r:?}");

    let r = casework(dir.path(), &["--color", "always", "nosuchcommand"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("\u{1b}["), "{r:?}");
    let r = casework(dir.path(), &["--color=never", "nosuchcommand"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!r.stderr.contains('\u{1b}'), "{r:?}");
    assert!(r.stderr.contains("nosuchcommand"), "{r:?}");
}

#[test]
fn run_accepts_a_bare_file_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), QUICK).unwrap();
    for name in ["r.yaml", "./r.yaml"] {
        let r = casework(dir.path(), &["run", name], &[]);
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert!(r.stdout.contains("result: completed"), "{name}: {r:?}");
    }
    // Its errors are shown under the name as given, too.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "workflow: bad\nversion: 1\nsteps:\n  - id: a\n    wiat: {}\n",
    )
    .unwrap();
    let r = casework(dir.path(), &["run", "bad.yaml"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("bad.yaml:"), "{r:?}");
    assert!(r.stderr.contains("has errors"), "{r:?}");
}

/// A folder with QUICK and one passing test.
fn tested_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quick.yaml"), QUICK).unwrap();
    std::fs::write(
        dir.path().join("quick.test.yaml"),
        "workflow: quick\ntests:\n  - name: completes at once\n    expect: { status: completed }\n",
    )
    .unwrap();
    dir
}

#[test]
fn a_test_filter_that_matches_nothing_fails() {
    let dir = tested_folder();
    let r = casework(dir.path(), &["test", ".", "--filter", "AT ONCE"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("1 passed; 0 failed; 0 filtered out"),
        "{r:?}"
    );
    let r = casework(dir.path(), &["test", ".", "--filter", "expires"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("casework: no test name contains `expires`"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("test result: FAILED. 0 passed; 0 failed; 1 filtered out"),
        "{r:?}"
    );
}

#[test]
fn test_and_validate_agree_on_exit_codes() {
    let dir = tested_folder();
    // A missing path: could not run, 2 for both.
    for cmd in ["test", "validate"] {
        let r = casework(dir.path(), &[cmd, "nowhere"], &[]);
        assert_eq!(r.code, 2, "{cmd}: {r:?}");
        assert!(
            r.stderr.contains("casework: nowhere does not exist"),
            "{cmd}: {r:?}"
        );
    }
    // Ran and found nothing wrong: 0 for both.
    for cmd in ["test", "validate"] {
        let r = casework(dir.path(), &[cmd, "."], &[]);
        assert_eq!(r.code, 0, "{cmd}: {r:?}");
    }
    // Ran and found a failure: 1 for both.
    std::fs::write(
        dir.path().join("quick.test.yaml"),
        "workflow: quick\ntests:\n  - name: wrong\n    expect: { status: failed }\n",
    )
    .unwrap();
    let r = casework(dir.path(), &["test", "."], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    std::fs::write(
        dir.path().join("broken.yaml"),
        "workflow: broken\nversion: 1\nsteps:\n  - id: a\n    wiat: {}\n",
    )
    .unwrap();
    let r = casework(dir.path(), &["validate", "broken.yaml"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
}

#[test]
fn serve_on_an_occupied_port_stops_before_creating_the_data_directory() {
    let dir = folder(&[("quick.yaml", QUICK)]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let r = casework(
        dir.path(),
        &[
            "serve",
            "--listen",
            &addr,
            "--data",
            "data",
            "--workflows",
            "workflows",
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("cannot listen on {addr}")) && r.stderr.contains("--listen"),
        "{r:?}"
    );
    assert!(!data.exists(), "the data directory was created: {r:?}");

    // With JSON logs the fatal error is a JSON line too, and nothing else is printed.
    let r = casework(
        dir.path(),
        &["serve", "--listen", &addr, "--data", "data"],
        &[("CASEWORK_LOG_FORMAT", "json")],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let lines: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let fatal = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .expect("an error line");
    assert!(
        fatal["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("cannot listen on {addr}"))),
        "{fatal}"
    );
    assert!(
        fatal["message"].is_string(),
        "the message at the top level: {fatal}"
    );
}

#[test]
fn an_unusable_data_directory_is_named() {
    let dir = folder(&[("quick.yaml", QUICK)]);
    // A file where the directory should be: no user, root included, can open it.
    std::fs::write(dir.path().join("taken"), "not a directory").unwrap();
    let port = daemon::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let r = casework(
        dir.path(),
        &[
            "serve",
            "--listen",
            &listen,
            "--data",
            "taken",
            "--workflows",
            "workflows",
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("cannot open the data directory taken"),
        "{r:?}"
    );
    let r = casework(dir.path(), &["inspect", "abc", "--data", "taken/data"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("cannot open the data directory taken/data"),
        "{r:?}"
    );

    // A read-only directory; root can write anyway, so this part is checked only where the
    // permission holds.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(ro.join("probe"), "x").is_err() {
            let r = casework(
                dir.path(),
                &[
                    "serve",
                    "--listen",
                    &listen,
                    "--data",
                    "ro",
                    "--workflows",
                    "workflows",
                ],
                &[],
            );
            assert_eq!(r.code, 1, "{r:?}");
            assert!(
                r.stderr.contains("cannot open the data directory ro"),
                "{r:?}"
            );
        } else {
            eprintln!("running with write access to read-only folders: skipped the 0555 case");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Waits for an approval, charges through the ledger fake, completes with both.
const APPROVE: &str = r#"workflow: approve
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: wait_for_approval
    wait: { event: approved, key: input.key, timeout: 1d, on_timeout: expired }
    save_as: approval
    next: charge
  - id: charge
    call: payments.charge
    with: { key: "${input.key}", by: "${vars.approval.data.by}" }
    retry: { max_attempts: 1 }
    save_as: charged
    next: done
  - id: done
    complete: { output: { by: "${vars.approval.data.by}", charged: "${vars.charged}" } }
  - id: expired
    complete: { output: { by: nobody } }
"#;

#[test]
fn a_real_instance_is_recorded_as_a_test_that_passes_and_catches_a_change() {
    let dir = folder(&[("approve.yaml", APPROVE)]);
    let d = token_daemon(dir.path());
    let id = start_instance(&d, "approve", json!({"key": "ORD-9"}));
    eventually("it waits", || status(&d, &id) == "parked");
    let sent = casework(
        dir.path(),
        &[
            "send-event",
            "approved",
            "ORD-9",
            "--data",
            r#"{"by":"lead-2"}"#,
            "--url",
            &d.addr,
            "--token",
            ADMIN,
        ],
        &[],
    );
    assert_eq!(sent.code, 0, "{sent:?}");
    eventually("it completes", || status(&d, &id) == "completed");

    // The data directory is the daemon's, so the recording asks the daemon.
    let rec = casework(
        dir.path(),
        &[
            "test",
            "--record",
            &id,
            "workflows",
            "--url",
            &d.addr,
            "--token",
            VIEWER,
        ],
        &[],
    );
    assert_eq!(rec.code, 0, "{rec:?}");
    for part in [
        "workflow: approve",
        "call: payments.charge",
        "times: 1",
        "type: approved",
        "key: ORD-9",
        "by: lead-2",
        "- wait_for_approval",
        "status: completed",
    ] {
        assert!(
            rec.stdout.contains(part),
            "`{part}` missing from:\n{}",
            rec.stdout
        );
    }
    std::fs::write(dir.path().join("workflows/approve.test.yaml"), &rec.stdout).unwrap();
    let run = casework(dir.path(), &["test", "workflows"], &[]);
    assert_eq!(
        run.code, 0,
        "the recording fails against the workflow it came from: {run:?}\n{}",
        rec.stdout
    );
    assert!(run.stdout.contains("1 passed"), "{run:?}");

    // Edited so that the charge says something else: the recorded answer is for the call
    // the instance made, so the recorded test says what changed.
    let edited = APPROVE.replace(
        r#"by: "${vars.approval.data.by}" }"#,
        r#"by: "approver ${vars.approval.data.by}" }"#,
    );
    assert_ne!(edited, APPROVE);
    std::fs::write(dir.path().join("workflows/approve.yaml"), edited).unwrap();
    let run = casework(dir.path(), &["test", "workflows"], &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("no mock answered a call to `payments.charge`"),
        "{run:?}"
    );

    // An unknown instance is an error, not an empty test.
    let none = casework(
        dir.path(),
        &[
            "test",
            "--record",
            "no-such-id",
            "--url",
            &d.addr,
            "--token",
            VIEWER,
        ],
        &[],
    );
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("no-such-id"), "{none:?}");
}

fn journal_count(d: &Daemon, id: &str, record: &str) -> usize {
    let mut resp = ureq::get(&format!("{}/v1/instances/{id}", d.addr))
        .header("authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap();
    let v: Value = resp.body_mut().read_json().unwrap();
    v["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["record"] == json!(record))
        .count()
}

#[test]
fn bulk_actions_do_each_instance_once_even_when_sent_twice_at_once() {
    let dir = folder(&[("hold.yaml", HOLD), ("quick.yaml", QUICK)]);
    let d = token_daemon(dir.path());
    let ids: Vec<String> = (0..20)
        .map(|i| start_instance(&d, "hold", json!({"key": format!("k{i}")})))
        .collect();
    for id in &ids {
        eventually("parked", || status(&d, id) == "parked");
    }
    let bulk = |args: &[&str], token: &str| {
        let mut all = vec!["bulk"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--url", &d.addr, "--token", token]);
        casework(dir.path(), &all, &[])
    };

    // Bad requests change nothing.
    let r = bulk(&["cancel", "--workflow", "hold"], ADMIN);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("say why"), "{r:?}");
    let r = bulk(&["cancel", "--workflow", "hold", "--reason", "x"], VIEWER);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("forbidden"), "{r:?}");
    let r = bulk(&["retry", "--workflow", "nope"], ADMIN);
    assert!(r.stderr.contains("no workflow named `nope`"), "{r:?}");

    // Bounded: five paused, then resumed.
    let r = bulk(
        &[
            "pause",
            "--workflow",
            "hold",
            "--reason",
            "checking",
            "--limit",
            "5",
        ],
        ADMIN,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("paused 5 instance(s) of hold"), "{r:?}");
    let paused = ids.iter().filter(|id| status(&d, id) == "paused").count();
    assert_eq!(paused, 5);
    let r = bulk(
        &[
            "resume",
            "--workflow",
            "hold",
            "--status",
            "paused",
            "--reason",
            "checked",
        ],
        ADMIN,
    );
    assert!(r.stdout.contains("resumed 5 instance(s)"), "{r:?}");

    // The same cancel sent twice at once: every instance is cancelled exactly once.
    let (a, b) = std::thread::scope(|s| {
        let run = || {
            bulk(
                &["cancel", "--workflow", "hold", "--reason", "outage over"],
                ADMIN,
            )
        };
        let a = s.spawn(run);
        let b = s.spawn(run);
        (a.join().unwrap(), b.join().unwrap())
    });
    let done = |o: &Out| -> usize {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix("cancelling "))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no summary: {o:?}"))
    };
    assert_eq!(done(&a) + done(&b), 20, "{a:?}\n{b:?}");
    for id in &ids {
        eventually("cancelled", || status(&d, id) == "cancelled");
        assert_eq!(journal_count(&d, id, "cancel_requested"), 1, "{id}");
    }
    // What the other one found already cancelled is refused with the reason.
    if done(&a) < 20 && done(&b) < 20 {
        assert!(a.stdout.contains("instance_finished") || b.stdout.contains("instance_finished"));
    }
}
