//! deploy/casework.service, the systemd unit: `systemd-analyze verify` reports nothing,
//! `systemd-analyze security` rates its exposure at most [`MAX_EXPOSURE`], and the unit's
//! own ExecStart command line (its flags, the credentials it reads) starts a daemon that
//! becomes ready and stops cleanly on SIGTERM within the unit's TimeoutStopSec.
//!
//! systemd-analyze comes with Debian's `systemd` package (.ci/run installs it when it is
//! missing). Without it these tests fail, saying so: like the PostgreSQL tests, they never
//! pass by skipping.

#![cfg(target_os = "linux")]

use casework::store::seal::JournalKey;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::daemon::Daemon;

mod support {
    pub mod daemon;
}

/// The most `systemd-analyze security --offline=true` may rate the unit. Measured: 1.2
/// ("OK") with systemd 252 (Debian 12). What it still counts is what the daemon needs:
/// network sockets, @resources (the plugin threads set their own priority), writable
/// executable memory (wasmtime), and RootDirectory=, ProcSubset=, IPAddressDeny=.
/// Dropping DynamicUser=, CapabilityBoundingSet=, SystemCallFilter=, RestrictNamespaces=,
/// RestrictAddressFamilies=, PrivateDevices=, PrivateUsers=, PrivateMounts=,
/// Protect{Kernel*,ControlGroups,Proc,Home,Clock}=, RestrictRealtime= or
/// SystemCallArchitectures= raises it to 1.3 to 3.0 (measured one at a time); NoNewPrivileges=,
/// ProtectSystem=, PrivateTmp=, RestrictSUIDSGID= and RemoveIPC= are implied by
/// DynamicUser=yes, and LockPersonality=, ProtectHostname= and UMask= weigh less than
/// the score's one decimal.
const MAX_EXPOSURE: f64 = 1.2;

/// Where the unit runs the binary; the tests put the one cargo built in its place.
const INSTALLED_BINARY: &str = "/usr/local/bin/casework";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit_text() -> String {
    let path = repo().join("deploy/casework.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key=` in the unit (the last one, as systemd reads a repeated setting).
fn setting(unit: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("deploy/casework.service has no {key}="))
        .trim()
        .to_string()
}

/// systemd-analyze, or a failure that says how to get it.
fn systemd_analyze() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "systemd-analyze is not installed, so deploy/casework.service cannot be checked; \
             install Debian's systemd package (`apt-get install systemd`, as .ci/run does)"
        )
    })
}

/// A copy of the unit, named casework.service, whose ExecStart runs the binary cargo built
/// (verify insists that it exists).
fn unit_copy(dir: &Path) -> PathBuf {
    let text = unit_text();
    assert!(
        text.contains(&format!("ExecStart={INSTALLED_BINARY} ")),
        "the unit's ExecStart no longer runs {INSTALLED_BINARY}; update tests/deploy.rs"
    );
    let text = text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_casework"));
    let path = dir.join("casework.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(mut c: Command) -> (Output, String) {
    let shown = format!("{c:?}");
    let out = c
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn systemd_analyze_verify_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let mut c = Command::new(systemd_analyze());
    c.arg("verify").arg(&unit);
    let (out, text) = run(c);
    // An unknown or misspelled key is only a warning (exit 0): any output counts.
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify deploy/casework.service ({}):\n{text}",
        out.status
    );
}

#[test]
fn systemd_analyze_security_rates_the_unit_low() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let mut c = Command::new(systemd_analyze());
    c.args(["security", "--offline=true"]).arg(&unit);
    let (out, text) = run(c);
    assert!(
        out.status.success(),
        "systemd-analyze security --offline=true ({}):\n{text}",
        out.status
    );
    // "→ Overall exposure level for casework.service: 1.2 OK 🙂"
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for casework.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "deploy/casework.service is rated {exposure}, more than {MAX_EXPOSURE}: a hardening \
         setting was dropped or weakened. The settings that count:\n{}",
        text.lines()
            .filter(|l| l.starts_with('✗'))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The unit's ExecStart, word by word, with its specifiers and fixed paths moved under
/// `root`: %S (StateDirectory's parent), %d (the credentials directory), /etc/casework.
fn exec_start(unit: &str, root: &Path) -> Vec<String> {
    let line = setting(unit, "ExecStart");
    assert!(
        !line.contains(['"', '\'', '\\', '$']),
        "ExecStart uses quoting or variables, which this test does not expand: {line}"
    );
    let dir = |name: &str| root.join(name).display().to_string();
    line.split_whitespace()
        .map(|w| {
            w.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_casework"))
                .replace("/etc/casework", &dir("etc"))
                .replace("%S", &dir("state"))
                .replace("%d", &dir("credentials"))
        })
        .inspect(|w| assert!(!w.contains('%'), "a specifier this test does not know: {w}"))
        .collect()
}

/// What TimeoutStopSec= says ("20", "20s" or "1min").
fn timeout_stop(unit: &str) -> Duration {
    let v = setting(unit, "TimeoutStopSec");
    let (number, unit_secs) = match v.strip_suffix("min") {
        Some(n) => (n, 60),
        None => (v.strip_suffix('s').unwrap_or(&v), 1),
    };
    let n: u64 = number.trim().parse().unwrap_or_else(|_| {
        panic!("TimeoutStopSec={v}: give whole seconds (20s) or minutes (1min)")
    });
    Duration::from_secs(n * unit_secs)
}

const WORKFLOW: &str = r#"
workflow: hello
version: 1
input:
  name: { type: string, required: true }
steps:
  - id: done
    complete: { output: "${input.name}" }
"#;

#[test]
fn the_units_command_line_starts_the_daemon_and_sigterm_stops_it_in_time() {
    let unit = unit_text();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = support::daemon::free_port();

    // What the installation steps of deploy/README.md leave in /etc/casework, and what
    // systemd makes before the start: the state directory and the credentials.
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("workflows")).unwrap();
    std::fs::create_dir_all(etc.join("plugins")).unwrap();
    std::fs::write(etc.join("workflows/hello.yaml"), WORKFLOW).unwrap();
    let example = std::fs::read_to_string(repo().join("casework.example.toml")).unwrap();
    let config = example.replace(
        "listen = \"127.0.0.1:7420\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    assert_ne!(
        config, example,
        "casework.example.toml sets no listen address"
    );
    std::fs::write(etc.join("casework.toml"), config).unwrap();
    let state = root.join("state/casework");
    std::fs::create_dir_all(&state).unwrap();
    let credentials = root.join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let key = JournalKey::random().unwrap();
    std::fs::write(credentials.join("journal.key"), key.to_hex()).unwrap();
    std::fs::write(credentials.join("secrets.toml"), "").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["journal.key", "secrets.toml"] {
            let p = credentials.join(f);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
    }

    let args = exec_start(&unit, root);
    let log_path = root.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // systemd starts a service with an empty environment (casework.env aside).
    let child = Command::new(&args[0])
        .args(&args[1..])
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed when dropped, so a failed assertion leaves no daemon behind.
    let mut daemon = Daemon {
        child,
        addr: format!("http://127.0.0.1:{port}"),
    };
    let logged = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let ready = format!("{}/readyz", daemon.addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            panic!(
                "the daemon stopped ({exit}) before it was ready:\n{}",
                logged()
            );
        }
        if ureq::get(&ready).call().is_ok() {
            break;
        }
        if Instant::now() > deadline {
            panic!("the daemon was not ready within a minute:\n{}", logged());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // It journals in the state directory, with the key from the credentials directory.
    let started = ureq::post(&format!(
        "{}/v1/workflows/hello/instances?wait=10s",
        daemon.addr
    ))
    .send_json(serde_json::json!({"name": "unit"}));
    let body: serde_json::Value = started
        .unwrap_or_else(|e| panic!("starting an instance: {e}\n{}", logged()))
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(body["status"], "completed", "{body}\n{}", logged());
    assert!(
        !state.join("journal.key").exists(),
        "the daemon made a key of its own instead of reading %d/journal.key"
    );
    assert!(
        std::fs::read_dir(&state).unwrap().next().is_some(),
        "nothing was written to the state directory"
    );

    let term = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let allowed = timeout_stop(&unit);
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            break exit;
        }
        if signalled.elapsed() > allowed {
            panic!(
                "the daemon did not stop within TimeoutStopSec ({allowed:?}) of SIGTERM:\n{}",
                logged()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "SIGTERM should be a clean exit, got {exit}:\n{}",
        logged()
    );
}
