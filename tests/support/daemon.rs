//! The real `casework serve` for tests: a free port on 127.0.0.1, the usual folder
//! layout (DIR/data, DIR/workflows) and a bounded wait until it answers.

#![allow(dead_code)] // each test binary uses a different part of it

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon; killed when dropped so a failing test leaves no process behind.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `casework serve` on `port` with DIR/data and DIR/workflows and quiet output; add
/// arguments, environment or a log file before passing it to [`start`].
pub fn command(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_casework"));
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--workflows")
        .arg(dir.join("workflows"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Spawns `command` and waits (at most a minute) until `/healthz` answers.
pub fn start(mut command: Command, port: u16) -> Daemon {
    let child = command.spawn().unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{addr}/healthz")).call().is_err() {
        assert!(Instant::now() < deadline, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon { child, addr }
}

/// `casework serve` on the PostgreSQL database at `url`, with its own data directory
/// DIR/NAME and the shared DIR/workflows, sealing with `key`.
pub fn serve_postgres(dir: &Path, name: &str, url: &str, key: &str) -> Daemon {
    let (c, port) = postgres_command(dir, name, url, key);
    start(c, port)
}

/// The command [`serve_postgres`] runs, on a free port, not started yet.
pub fn postgres_command(dir: &Path, name: &str, url: &str, key: &str) -> (Command, u16) {
    let port = free_port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_casework"));
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(dir.join(name))
        .arg("--workflows")
        .arg(dir.join("workflows"))
        .args(["--store", url, "--no-reload"])
        .env("CASEWORK_JOURNAL_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (c, port)
}
