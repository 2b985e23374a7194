//! Log lines written while a step runs carry the instance, workflow, version, step and
//! attempt, so an operator can follow one instance through the daemon's logs; the
//! values of sensitive inputs never appear, and neither do secrets, at any log level.

mod support {
    pub mod daemon;
    pub mod fake_http;
}

use casework::clock::ManualClock;
use casework::compile::{self, rules::Rules};
use casework::daemon::Driver;
use casework::plugin_host::{CallContext, CallFuture, PluginHost};
use casework::store::sled::SledStore;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

struct Chatty;

impl PluginHost for Chatty {
    fn call<'a>(&'a self, _: &'a str, _: &'a str, _: Value, _: CallContext) -> CallFuture<'a> {
        Box::pin(async {
            tracing::info!("provider answered");
            Ok(json!({"ok": true}))
        })
    }
}

const WORKFLOW: &str = r#"
workflow: verify
version: 3
input:
  email: { type: string, sensitive: true }
steps:
  - id: send_code
    call: identity.send_code
    with: { to: "${input.email}" }
    next: done
  - id: done
    complete: {}
"#;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn step_logs_carry_instance_workflow_version_step_and_attempt() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let d = Driver::new(
        Arc::new(SledStore::temporary().unwrap()),
        Arc::new(Chatty),
        Arc::new(ManualClock::new(1_767_225_600_000)),
        None,
    );
    let (wf, diags) = compile::load(
        "verify.yaml",
        WORKFLOW,
        &Default::default(),
        &Rules::shared(),
    );
    d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
        .unwrap();
    let started = d
        .start("verify", json!({"email": "jane.doe@example.com"}), None)
        .await
        .unwrap();
    d.wait_idle().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("provider answered"))
        .unwrap_or_else(|| panic!("no plugin log line in:\n{logs}"));
    for part in [
        format!("id={}", started.id),
        "workflow=verify".to_string(),
        "version=3".to_string(),
        "step=send_code".to_string(),
        "call=identity.send_code".to_string(),
        "attempt=1".to_string(),
    ] {
        assert!(line.contains(&part), "missing {part} in: {line}");
    }
    assert!(!logs.contains("jane.doe@example.com"), "{logs}");
}

const STRIPE_KEY: &str = "sk_live_51TraceLevelSECRETkey77";

/// The daemon at `trace` (and the HTTP client's targets asked for by name) runs a real
/// payments call to a fake Stripe: the key goes over the wire in `Authorization: Bearer`,
/// and no part of it reaches the log. ureq_proto used to dump each request's bytes at
/// trace, 16 to a line, so the check looks for every 8-byte piece of the key (a 28-byte
/// key split over 16-byte lines leaves a piece of at least 8 on one of them) and for any
/// library line below `warn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_trace_level_no_secret_or_library_request_data_reaches_the_daemon_log() {
    use support::fake_http::{Answer, FakeProvider};
    let fake = FakeProvider::start().await;
    fake.answer(Answer::json(
        200,
        json!({"id": "re_1", "object": "refund", "amount": 4999, "currency": "usd",
               "payment_intent": "pi_1", "charge": "ch_1", "status": "succeeded",
               "created": 1_717_236_001, "metadata": {}}),
    ));
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = repo.join("plugins/payments");
    let plugin = dir.path().join("plugins/payments");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::copy(source.join("payments.wasm"), plugin.join("payments.wasm"))
        .expect("plugins/payments/payments.wasm: run `bash plugins/build.sh` first");
    let manifest = std::fs::read_to_string(source.join("plugin.toml"))
        .unwrap()
        .replace(
            "\"https://api.stripe.com:443\"",
            &format!("\"{}\"", fake.origin()),
        )
        .replace(
            "\"https://api.stripe.com\"",
            &format!("\"{}\"", fake.base_url()),
        );
    std::fs::write(plugin.join("plugin.toml"), manifest).unwrap();
    std::fs::write(
        dir.path().join("secrets.toml"),
        format!("[payments]\nstripe_secret_key = \"{STRIPE_KEY}\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/pay.yaml"),
        r#"workflow: pay
version: 1
steps:
  - id: refund
    call: payments.refund
    with: { payment_ref: pi_1, amount_minor: 4999, currency: USD }
    retry: { max_attempts: 1 }
    next: done
  - id: done
    complete: {}
"#,
    )
    .unwrap();

    let log = dir.path().join("daemon.log");
    let (root, log_file) = (dir.path().to_path_buf(), log.clone());
    let status = tokio::task::spawn_blocking(move || {
        let port = support::daemon::free_port();
        let mut command = support::daemon::command(&root, port);
        command
            .arg("--plugins")
            .arg(root.join("plugins"))
            .arg("--secrets")
            .arg(root.join("secrets.toml"))
            .env(
                "CASEWORK_LOG",
                "trace,ureq=trace,ureq_proto=trace,rustls=trace",
            )
            .env("CASEWORK_LOG_FORMAT", "json")
            .stderr(std::fs::File::create(&log_file).unwrap());
        let daemon = support::daemon::start(command, port);
        // The access log never has a query string: it can hold event keys.
        ureq::get(&format!(
            "{}/v1/inbox?type=refund.approved&key=KEY-NOT-LOGGED",
            daemon.addr
        ))
        .call()
        .unwrap();
        let started: Value = ureq::post(&format!("{}/v1/workflows/pay/instances", daemon.addr))
            .send_json(json!({}))
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let url = format!(
            "{}/v1/instances/{}",
            daemon.addr,
            started["id"].as_str().unwrap()
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let view: Value = ureq::get(&url)
                .call()
                .unwrap()
                .body_mut()
                .read_json()
                .unwrap();
            let status = view["status"].as_str().unwrap_or("").to_string();
            if status == "completed" || status == "failed" {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the refund did not finish: {view}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(status, "completed");
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(
        seen[0].header("authorization"),
        Some(&*format!("Bearer {STRIPE_KEY}")),
        "the key went over the wire"
    );

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("KEY-NOT-LOGGED"),
        "a query string was logged"
    );
    // One access line per request, with the message at the top level (flatten_event) and
    // the request id of the span it ran in.
    let access: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == "casework::access")
        .collect();
    let start = access
        .iter()
        .find(|e| e["span"]["path"] == "/v1/workflows/pay/instances")
        .unwrap_or_else(|| panic!("no access line for the start: {access:#?}"));
    assert_eq!(start["message"], "answered", "{start}");
    assert_eq!(start["status"], 201, "{start}");
    assert_eq!(start["span"]["method"], "POST", "{start}");
    assert!(
        start["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "a request id was made: {start}"
    );
    for piece in STRIPE_KEY.as_bytes().windows(8) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(
            !text.contains(piece),
            "`{piece}` of the secret is in the log"
        );
    }
    let mut ours_below_warn = 0;
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("{line}"));
        let target = entry["target"].as_str().unwrap_or("");
        let level = entry["level"].as_str().unwrap_or("");
        let quiet = matches!(level, "WARN" | "ERROR");
        if target == "casework" || target.starts_with("casework::") {
            ours_below_warn += usize::from(!quiet);
        } else {
            assert!(quiet, "a library logged at {level}: {line}");
        }
    }
    assert!(
        text.contains("\"level\":\"TRACE\"") || text.contains("\"level\":\"DEBUG\""),
        "the daemon did not log at trace, so the test proves nothing"
    );
    assert!(ours_below_warn > 0);
}
