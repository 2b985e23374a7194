//! Log lines written while a step runs carry the instance, workflow, version, step and
//! attempt, so an operator can follow one instance through the daemon's logs; the
//! values of sensitive inputs never appear.

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
