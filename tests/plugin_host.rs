//! The WebAssembly host against a plugin that misbehaves on purpose
//! (tests/hostile): every escape it tries must fail, every limit must hold, and the
//! daemon must carry on. Needs `bash plugins/build.sh` first (the README's test
//! command runs it).

mod support {
    pub mod fake_http;
    pub mod hostile;
    pub mod logs;
}

use casework::clock::SystemClock;
use casework::plugin_host::pool::PoolConfig;
use casework::plugin_host::secrets::Secrets;
use casework::plugin_host::wasm::WasmHost;
use casework::plugin_host::{CallContext, PluginError, PluginHost};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use support::fake_http::{Answer, FakeProvider};
use support::hostile::install;

const TOKEN: &str = "tok_SuperSecret_8d1f";

async fn host_for(dir: &Path) -> WasmHost {
    let mut secrets = Secrets::new();
    secrets.insert("hostile", "granted_token", TOKEN);
    secrets.insert("hostile", "other_token", "tok_NotYours_123");
    let host = WasmHost::new(secrets, Arc::new(SystemClock), None).unwrap();
    host.load_dir(dir).await;
    host
}

async fn host(origins: &[String]) -> (WasmHost, tempfile::TempDir) {
    let dir = install(origins, |m| m);
    let host = host_for(dir.path()).await;
    assert_eq!(host.problems(), Vec::<String>::new());
    (host, dir)
}

fn ctx(step: &str) -> CallContext {
    CallContext {
        scrub: Vec::new(),
        instance_id: "inst-1".into(),
        step_id: step.into(),
        attempt: 1,
        idempotency_key: format!("inst-1:{step}:1"),
    }
}

async fn call(host: &WasmHost, action: &str, input: Value) -> Result<Value, PluginError> {
    host.call("hostile", action, input, ctx(action)).await
}

fn code(result: Result<Value, PluginError>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e.code,
    }
}

#[tokio::test]
async fn a_plugin_that_loops_forever_is_stopped_and_marked_retryable() {
    let (host, _dir) = host(&[]).await;
    let err = call(&host, "spin", json!({})).await.unwrap_err();
    assert_eq!(err.code, "plugin_timeout");
    assert!(err.retryable);
    assert!(err.message.contains("2000 ms"), "{}", err.message);
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_plugin_does_not_block_other_calls_on_the_same_pool_thread() {
    let dir = install(&[], |m| m);
    let one_thread = PoolConfig {
        threads: 1,
        ..PoolConfig::default()
    };
    let host =
        WasmHost::with_pool(Secrets::new(), Arc::new(SystemClock), None, one_thread).unwrap();
    host.load_dir(dir.path()).await;
    let host = Arc::new(host);
    let spinner = {
        let host = host.clone();
        tokio::spawn(async move { call(&host, "spin", json!({})).await })
    };
    tokio::task::yield_now().await;
    // With one pool thread this only finishes if the spinning plugin yields.
    let echoed = call(&host, "echo", json!({"value": 7})).await.unwrap();
    assert_eq!(echoed["value"], 7);
    assert!(
        !spinner.is_finished(),
        "the spinner should still be running when the echo returns"
    );
    assert_eq!(code(spinner.await.unwrap()), "plugin_timeout");
}

#[tokio::test]
async fn a_plugin_that_keeps_allocating_hits_its_memory_limit() {
    let (host, _dir) = host(&[]).await;
    let err = call(&host, "grow", json!({})).await.unwrap_err();
    assert_eq!(err.code, "plugin_out_of_memory");
    assert!(!err.retryable);
    assert!(err.message.contains("32 MiB"), "{}", err.message);
}

#[tokio::test]
async fn runaway_recursion_is_a_trap_not_a_crash() {
    let (host, _dir) = host(&[]).await;
    let err = call(&host, "recurse", json!({})).await.unwrap_err();
    assert_eq!(err.code, "plugin_trapped");
    assert!(err.message.contains("stack"), "{}", err.message);
    // The host is still fine.
    assert_eq!(
        call(&host, "echo", json!({"value": 1})).await.unwrap()["value"],
        1
    );
}

#[tokio::test]
async fn a_panic_is_a_trap_and_the_next_call_gets_a_fresh_instance() {
    let (host, _dir) = host(&[]).await;
    assert_eq!(
        code(call(&host, "panic", json!({})).await),
        "plugin_trapped"
    );
    for _ in 0..3 {
        let counted = call(&host, "count", json!({})).await.unwrap();
        assert_eq!(counted["detail"], "1", "state leaked between calls");
    }
}

#[tokio::test]
async fn no_files_no_environment_no_sockets() {
    let (host, _dir) = host(&[]).await;
    for path in ["/etc/passwd", "Cargo.toml", "."] {
        let read = call(&host, "read_file", json!({"target": path}))
            .await
            .unwrap();
        assert_eq!(read["ok"], false, "{path}: {read}");
    }
    let env = call(&host, "env", json!({})).await.unwrap();
    assert_eq!(env["ok"], true, "{env}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connected = call(&host, "connect", json!({"target": addr}))
        .await
        .unwrap();
    assert_eq!(connected["ok"], false, "{connected}");
    assert!(
        listener.accept().is_err(),
        "a raw socket reached the listener"
    );
}

#[tokio::test]
async fn http_reaches_granted_origins_only() {
    let granted = FakeProvider::start().await;
    let other = FakeProvider::start().await;
    let (host, _dir) = host(&[granted.origin()]).await;
    granted.answer(Answer::json(200, json!({"hello": "world"})));

    let ok = call(
        &host,
        "fetch",
        json!({"target": format!("{}/ping?x=1", granted.base_url())}),
    )
    .await
    .unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(ok["detail"].as_str().unwrap().starts_with("200 "), "{ok}");
    assert_eq!(granted.seen()[0].path_and_query, "/ping?x=1");

    let denied = [
        format!("{}/", other.base_url()),
        format!("http://localhost:{}/", granted.port),
        format!(
            "http://user@127.0.0.1:{}@127.0.0.1:{}/",
            granted.port, other.port
        ),
        format!("https://127.0.0.1:{}/", granted.port),
        format!("http://[::1]:{}/", granted.port),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ];
    for url in &denied {
        let refused = call(&host, "fetch", json!({"target": url})).await.unwrap();
        assert_eq!(refused["ok"], false, "{url}: {refused}");
    }
    // A forged Host header is refused before anything is sent.
    let forged = call(
        &host,
        "fetch",
        json!({"target": granted.base_url(), "headers": [["Host", "evil.example"]]}),
    )
    .await
    .unwrap();
    assert_eq!(forged["ok"], false, "{forged}");
    assert!(
        forged["detail"]
            .as_str()
            .unwrap()
            .contains("InvalidRequest"),
        "{forged}"
    );

    assert!(other.seen().is_empty(), "an ungranted origin was reached");
    assert_eq!(granted.seen().len(), 1, "refused requests must not be sent");
}

#[tokio::test]
async fn redirects_are_handed_back_not_followed() {
    let granted = FakeProvider::start().await;
    let other = FakeProvider::start().await;
    let (host, _dir) = host(&[granted.origin()]).await;
    granted.answer(Answer::redirect(&format!("{}/steal", other.base_url())));
    let got = call(&host, "fetch", json!({"target": granted.base_url()}))
        .await
        .unwrap();
    assert!(got["detail"].as_str().unwrap().starts_with("302"), "{got}");
    assert!(other.seen().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_plugin_blocked_in_a_host_call_is_cancelled_at_its_time_limit() {
    let hung = FakeProvider::start().await;
    let (host, _dir) = host(&[hung.origin()]).await;
    hung.answer(Answer::hang());
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        call(&host, "fetch", json!({"target": hung.base_url()})),
    )
    .await
    .expect("the call must end at the plugin's time limit, not the provider's");
    match outcome {
        Err(e) => assert_eq!(e.code, "plugin_timeout"),
        Ok(report) => {
            assert_eq!(report["ok"], false, "{report}");
            assert!(
                report["detail"].as_str().unwrap().contains("Timeout"),
                "{report}"
            );
        }
    }
}

#[tokio::test]
async fn secrets_only_by_grant_and_never_in_errors_logs_or_output() {
    let (host, _dir) = host(&[]).await;
    let granted = call(&host, "secret", json!({"target": "granted_token"}))
        .await
        .unwrap();
    assert_eq!(granted["ok"], true);
    assert_eq!(granted["detail"], format!("{} characters", TOKEN.len()));
    let refused = call(&host, "secret", json!({"target": "other_token"}))
        .await
        .unwrap();
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["detail"], "NotGranted");

    let logs = support::logs::capture();
    let err = logs
        .run(call(&host, "leak_secret", json!({"target": "error"})))
        .await
        .unwrap_err();
    assert_eq!(err.code, "leaky");
    assert!(!err.message.contains(TOKEN), "{}", err.message);
    assert!(err.message.contains("[redacted]"), "{}", err.message);
    let written = logs.text();
    assert!(written.contains("the token is [redacted]"), "{written}");
    assert!(!written.contains(TOKEN), "{written}");

    let err = call(&host, "leak_secret", json!({"target": "output"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "secret_in_output");
    assert!(!err.message.contains(TOKEN));
}

#[tokio::test]
async fn oversized_output_and_input_are_refused() {
    let (host, _dir) = host(&[]).await;
    assert_eq!(
        code(call(&host, "big_output", json!({})).await),
        "output_too_large"
    );
    let huge = "y".repeat(2 * 1024 * 1024);
    assert_eq!(
        code(call(&host, "echo", json!({"value": huge})).await),
        "input_too_large"
    );
}

#[tokio::test]
async fn context_reaches_the_plugin_and_output_comes_back_as_json() {
    let (host, _dir) = host(&[]).await;
    let out = host
        .call(
            "hostile",
            "echo",
            json!({"value": {"a": [1, 2]}}),
            ctx("refund"),
        )
        .await
        .unwrap();
    assert_eq!(out["value"], json!({"a": [1, 2]}));
    assert_eq!(out["instance_id"], "inst-1");
    assert_eq!(out["step_id"], "refund");
    assert_eq!(out["attempt"], 1);
    assert_eq!(out["idempotency_key"], "inst-1:refund:1");
    assert!(out["now_ms"].as_u64().unwrap() > 1_700_000_000_000);
}

#[tokio::test]
async fn unknown_plugins_and_actions_say_what_exists() {
    let (host, _dir) = host(&[]).await;
    let err = host
        .call("nope", "x", json!({}), ctx("s"))
        .await
        .unwrap_err();
    assert_eq!(err.code, "plugin_unavailable");
    assert!(err.message.contains("hostile"), "{}", err.message);
    let err = call(&host, "fly", json!({})).await.unwrap_err();
    assert_eq!(err.code, "unknown_action");
    assert!(err.message.contains("echo"), "{}", err.message);
    let catalog = host.catalog().unwrap();
    assert!(catalog.plugins["hostile"].contains("spin"));
}

#[tokio::test]
async fn a_pinned_hash_that_does_not_match_refuses_the_component() {
    let dir = install(&[], |m| {
        m.replace(
            "actions =",
            &format!("sha256 = \"{}\"\nactions =", "ab".repeat(32)),
        )
    });
    let host = host_for(dir.path()).await;
    assert!(host.plugin_names().is_empty());
    let problems = host.problems();
    assert!(problems[0].contains("sha256"), "{problems:?}");
    let err = host
        .call("hostile", "echo", json!({}), ctx("s"))
        .await
        .unwrap_err();
    assert!(err.message.contains("sha256"), "{}", err.message);
}

#[tokio::test]
async fn a_manifest_that_lists_other_actions_than_the_component_is_refused() {
    let dir = install(&[], |m| m.replace("\"echo\"]", "\"echo\", \"teleport\"]"));
    let host = host_for(dir.path()).await;
    assert!(host.plugin_names().is_empty());
    assert!(
        host.problems()[0].contains("teleport"),
        "{:?}",
        host.problems()
    );
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk_and_reused() {
    let dir = install(&[], |m| m);
    let cache = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let host = WasmHost::new(
            Secrets::new(),
            Arc::new(SystemClock),
            Some(cache.path().to_path_buf()),
        )
        .unwrap();
        host.load_dir(dir.path()).await;
        assert_eq!(host.plugin_names(), vec!["hostile".to_string()]);
        assert_eq!(
            call(&host, "count", json!({})).await.unwrap()["detail"],
            "1"
        );
    }
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].ends_with(".cwasm"));
}
