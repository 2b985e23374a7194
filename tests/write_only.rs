//! Write-only event fields (`write_only: [code]` on a wait) against the real daemon and
//! the real identity plugin (plugins/identity, built by `bash plugins/build.sh`): a
//! one-time code typed by the customer is checked by the plugin, a code used once is
//! refused the second time, duplicates sent at once are taken once, and the code is in no
//! view, no log line and no file of the data directory. A write-only value given to a
//! field the plugin does not mark sensitive fails the call, and no client can send one
//! of the daemon's tokens.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use support::daemon::{self, Daemon};
use support::http::{call, ended, received};

mod support {
    pub mod daemon;
    pub mod http;
}

/// RFC 6238's test seed ("12345678901234567890") in base32.
const SEED: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

/// Naps first, so the code sent right after the start comes before the wait (it is kept
/// in the inbox, sealed); then checks two codes, keeping the step of the one accepted.
const OTP: &str = r#"workflow: otp
version: 1
input:
  customer: { type: string, required: true }
steps:
  - id: first
    sleep: 300ms
    next: ask
  - id: ask
    wait: { event: otp.entered, key: input.customer, write_only: [code], timeout: 1h, on_timeout: late }
    save_as: got
    next: check
  - id: check
    call: identity.verify_totp
    with:
      secret_ref: "totp_seed/${input.customer}"
      code: "${vars.got.data.code}"
      last_used_step: "${vars.last_step}"
    retry: { max_attempts: 1 }
    save_as: result
    next: judge
  - id: judge
    rule: |
      if type_of(vars.outcomes) == "()" { vars.outcomes = []; }
      vars.outcomes.push(vars.result.status);
      if vars.result.approved { vars.last_step = vars.result.matched_step; }
      if vars.outcomes.len() < 2 { "ask" } else { "done" }
    next: [ask, done]
  - id: done
    complete: { output: { outcomes: "${vars.outcomes}" } }
  - id: late
    complete: { output: { late: true } }
"#;

/// Copies the code into a field the identity plugin does not mark sensitive.
const LEAK: &str = r#"workflow: leak
version: 1
input:
  customer: { type: string, required: true }
steps:
  - id: ask
    wait: { event: leak.entered, key: input.customer, write_only: [code], timeout: 1h, on_timeout: late }
    save_as: got
    next: check
  - id: check
    call: identity.verify_totp
    with: { secret_ref: "${vars.got.data.code}", code: "000000" }
    retry: { max_attempts: 1 }
    on_error: refused
    next: late
  - id: refused
    complete: { output: { error: "${vars.error.code}", message: "${vars.error.message}" } }
  - id: late
    complete: { output: { unexpected: true } }
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// DIR/plugins/identity with the built plugin, DIR/secrets.toml with cus_1's seed, the
/// two workflows; then the daemon, logging at trace level into DIR/daemon.log.
fn serve(dir: &Path) -> Daemon {
    let source = repo().join("plugins/identity");
    let to = dir.join("plugins/identity");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(source.join("identity.wasm"), to.join("identity.wasm"))
        .expect("plugins/identity/identity.wasm: run `bash plugins/build.sh` first");
    std::fs::copy(source.join("plugin.toml"), to.join("plugin.toml")).unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        format!("[identity]\n\"totp_seed/cus_1\" = \"{SEED}\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("workflows")).unwrap();
    std::fs::write(dir.join("workflows/otp.yaml"), OTP).unwrap();
    std::fs::write(dir.join("workflows/leak.yaml"), LEAK).unwrap();
    let port = daemon::free_port();
    let mut command = daemon::command(dir, port);
    command
        .arg("--plugins")
        .arg(dir.join("plugins"))
        .arg("--secrets")
        .arg(dir.join("secrets.toml"))
        .env("CASEWORK_LOG", "trace")
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
    daemon::start(command, port)
}

/// Starts `workflow` for customer cus_1; its instance id.
fn start_for_cus_1(addr: &str, workflow: &str) -> String {
    let (s, started) = call(
        "POST",
        &format!("{addr}/v1/workflows/{workflow}/instances"),
        Some(&json!({"customer": "cus_1"})),
    );
    assert_eq!(s, 201, "{started}");
    started["id"].as_str().unwrap().to_string()
}

/// The RFC 6238 code (HMAC-SHA1, 6 digits, 30 s steps) of [`SEED`] now.
fn totp_now() -> String {
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"12345678901234567890").unwrap();
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let o = (h[19] & 0xf) as usize;
    let bin = u32::from_be_bytes([h[o] & 0x7f, h[o + 1], h[o + 2], h[o + 3]]);
    format!("{:06}", bin % 1_000_000)
}

/// Every file under `dir`, read as bytes, holds none of `texts`.
fn assert_no_file_holds(dir: &Path, texts: &[&str]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_file_holds(&path, texts);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for t in texts {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "`{t}` is in {}",
                path.display()
            );
        }
    }
}

#[test]
fn a_typed_code_is_checked_by_the_plugin_refused_when_reused_and_shown_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = serve(dir.path());
    let id = start_for_cus_1(&d.addr, "otp");
    let code = totp_now();

    // The code races the wait, eight times at once under one event id: kept once.
    let go = Arc::new(Barrier::new(8));
    let answers: Vec<(u16, Value)> = (0..8)
        .map(|_| {
            let (go, url, code) = (go.clone(), format!("{}/v1/events", d.addr), code.clone());
            std::thread::spawn(move || {
                go.wait();
                call(
                    "POST",
                    &url,
                    Some(
                        &json!({"type": "otp.entered", "key": "cus_1", "id": "typed-1",
                                 "data": {"code": code, "session": "web-1"}}),
                    ),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (s, a) in &answers {
        assert_eq!(*s, 200, "{a}");
        assert!(
            !a.to_string().contains(&code),
            "an answer shows the code: {a}"
        );
    }
    // The same code typed again (a replay, or a second try within its 30 s step).
    let (s, a) = call(
        "POST",
        &format!("{}/v1/events", d.addr),
        Some(
            &json!({"type": "otp.entered", "key": "cus_1", "id": "typed-2",
                     "data": {"code": code, "session": "web-2"}}),
        ),
    );
    assert_eq!(s, 200, "{a}");

    let view = ended(&d.addr, &id);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["output"]["outcomes"],
        json!(["approved", "reused"]),
        "{view}"
    );
    assert_eq!(received(&view), 2, "each event id is taken once: {view}");
    let shown = view.to_string();
    assert!(!shown.contains(&code), "the view shows the code: {shown}");
    assert!(shown.contains("[write-only]"), "{shown}");
    assert!(
        !shown.contains("$write_only"),
        "the view shows the token: {shown}"
    );

    drop(d);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("plugin call started"),
        "the log is at trace level"
    );
    assert!(!log.contains(&code), "the code is in the daemon log");
    assert_no_file_holds(&dir.path().join("data"), &[&code]);
}

#[test]
fn a_write_only_value_reaches_no_field_the_plugin_does_not_mark_sensitive() {
    let dir = tempfile::tempdir().unwrap();
    let d = serve(dir.path());
    let id = start_for_cus_1(&d.addr, "leak");
    let (s, a) = call(
        "POST",
        &format!("{}/v1/events", d.addr),
        Some(&json!({"type": "leak.entered", "key": "cus_1", "data": {"code": "493817"}})),
    );
    assert_eq!(s, 200, "{a}");
    let view = ended(&d.addr, &id);
    assert_eq!(view["output"]["error"], "write_only_refused", "{view}");
    assert!(
        view["output"]["message"]
            .as_str()
            .unwrap()
            .contains("`secret_ref`"),
        "{view}"
    );
    assert!(!view.to_string().contains("493817"), "{view}");

    // A client cannot hand the daemon a token of its own (or one copied from elsewhere).
    let token = json!({"$write_only": "01ab"});
    let (s, e) = call(
        "POST",
        &format!("{}/v1/events", d.addr),
        Some(&json!({"type": "leak.entered", "key": "cus_2", "data": {"code": token}})),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("reserved_field")),
        "{e}"
    );
    let (s, e) = call(
        "POST",
        &format!("{}/v1/workflows/leak/instances", d.addr),
        Some(&json!({"customer": "cus_3", "note": [token]})),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("reserved_field")),
        "{e}"
    );
}

/// A field once declared write-only stays sealed when the workflow that declared it is
/// replaced by a version that no longer does: an instance parked on the old version (or
/// a daemon with older files) still gets the code sealed, never in clear.
#[test]
fn a_field_declared_write_only_stays_sealed_after_the_declaring_version_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = serve(dir.path());
    let id = start_for_cus_1(&d.addr, "otp");
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    // Version 2 forgets `write_only`, and nothing else of the folder declares it.
    let forgetful = OTP
        .replace("version: 1", "version: 2")
        .replace(", write_only: [code]", "");
    assert!(!forgetful.contains("write_only"));
    std::fs::write(dir.path().join("workflows/otp.yaml"), forgetful).unwrap();
    std::fs::remove_file(dir.path().join("workflows/leak.yaml")).unwrap();
    let port = daemon::free_port();
    let mut command = daemon::command(dir.path(), port);
    command
        .arg("--plugins")
        .arg(dir.path().join("plugins"))
        .arg("--secrets")
        .arg(dir.path().join("secrets.toml"));
    let d = daemon::start(command, port);
    let code = totp_now();
    for (n, session) in ["web-1", "web-2"].iter().enumerate() {
        let (s, a) = call(
            "POST",
            &format!("{}/v1/events", d.addr),
            Some(
                &json!({"type": "otp.entered", "key": "cus_1", "id": format!("late-{n}"),
                         "data": {"code": code, "session": session}}),
            ),
        );
        assert_eq!(s, 200, "{a}");
    }
    let view = ended(&d.addr, &id);
    assert_eq!(view["version"], 1, "{view}");
    assert_eq!(
        view["output"]["outcomes"],
        json!(["approved", "reused"]),
        "{view}"
    );
    assert!(
        !view.to_string().contains(&code),
        "the code is shown: {view}"
    );
    drop(d);
    assert_no_file_holds(&dir.path().join("data"), &[&code]);
}
