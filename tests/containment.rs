//! Containment: guest code runs on the plugin pool, apart from the threads that drive
//! instances; each plugin stays within its concurrency limit and its bounded queue, and
//! all of them within one memory budget. Needs `bash plugins/build.sh` first.
//!
//! Nothing here measures speed (`casework bench` does). Each test builds a state that
//! only holds if the limit works — calls running and waiting as counted by
//! `WasmHost::stats`, which call finished while which was still going, what an error
//! says — and waits for a state with a bound far above what it needs, so a broken
//! limit fails the test instead of hanging it.

mod support {
    pub mod hostile;
    pub mod logs;
}

use casework::clock::SystemClock;
use casework::compile::{self, rules::Rules};
use casework::daemon::Driver;
use casework::plugin_host::pool::{LimitsOverride, PoolConfig, PoolStats};
use casework::plugin_host::secrets::Secrets;
use casework::plugin_host::wasm::WasmHost;
use casework::plugin_host::{CallContext, PluginError, PluginHost};
use casework::runtime::Record;
use casework::store::memory::MemoryStore;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::hostile::install_as;
use tokio::task::JoinHandle;

/// The longest any state is waited for: far above what each needs, so only a broken
/// limit gets there.
const PATIENCE: Duration = Duration::from_secs(60);

/// A manifest edit giving the plugin a time limit no test waits out: its calls end
/// only when something stops them.
fn forever(manifest: String) -> String {
    manifest.replace("timeout_ms = 2000", "timeout_ms = 300000")
}

fn pool(threads: usize, concurrency: usize, queue: usize, memory_mib: u32) -> PoolConfig {
    PoolConfig {
        threads,
        concurrency,
        queue,
        memory_mib,
        ..PoolConfig::default()
    }
}

type Edit = fn(String) -> String;

/// A host with the hostile plugin installed once per `(name, manifest edit)`.
async fn host_with(
    pool: PoolConfig,
    plugins: &[(&str, Edit)],
) -> (Arc<WasmHost>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, edit) in plugins {
        install_as(dir.path(), name, &[], edit);
    }
    let host = WasmHost::with_pool(Secrets::new(), Arc::new(SystemClock), None, pool).unwrap();
    host.load_dir(dir.path()).await;
    assert_eq!(host.problems(), Vec::<String>::new());
    (Arc::new(host), dir)
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

async fn call(host: &WasmHost, plugin: &str, action: &str) -> Result<Value, PluginError> {
    host.call(plugin, action, json!({}), ctx(action)).await
}

fn spawn_call(
    host: &Arc<WasmHost>,
    plugin: &str,
    action: &str,
) -> JoinHandle<Result<Value, PluginError>> {
    let (host, plugin, action) = (host.clone(), plugin.to_string(), action.to_string());
    tokio::spawn(async move { call(&host, &plugin, &action).await })
}

/// Waits until the pool's counts satisfy `want`.
async fn until(host: &WasmHost, what: &str, want: impl Fn(PoolStats) -> bool) {
    let began = Instant::now();
    while !want(host.stats()) {
        assert!(
            began.elapsed() < PATIENCE,
            "{what}: the pool stayed at {:?}",
            host.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn idle(s: PoolStats) -> bool {
    s == PoolStats::default()
}

fn busy(result: Result<Value, PluginError>) -> PluginError {
    match result {
        Ok(v) => panic!("expected plugin_busy, got {v}"),
        Err(e) => {
            assert_eq!(e.code, "plugin_busy", "{}", e.message);
            assert!(e.retryable, "a call that never ran can be retried");
            e
        }
    }
}

const RULE_ONLY: &str = r#"
workflow: rules
version: 1
input:
  amount: integer
steps:
  - id: double
    rule: vars.twice = input.amount * 2
    next: done
  - id: done
    complete: { output: { twice: "${vars.twice}" } }
"#;

#[tokio::test]
async fn a_saturated_plugin_pool_delays_only_plugin_calls() {
    let (host, _dir) = host_with(
        pool(1, 4, 8, 1024),
        &[("hostile", forever), ("other", |m| m)],
    )
    .await;
    let spinners: Vec<_> = (0..8)
        .map(|_| spawn_call(&host, "hostile", "spin"))
        .collect();
    until(&host, "four spinning, four waiting", |s| {
        s.running == 4 && s.queued == 4
    })
    .await;

    // A rule-only workflow through the driver completes while every spinner goes on.
    let (finished, mut finals) = tokio::sync::mpsc::unbounded_channel();
    let observer = Arc::new(move |id: &str, r: &Record| {
        if r.is_final() {
            let _ = finished.send((id.to_string(), r.clone()));
        }
    });
    let driver = Driver::new(
        Arc::new(MemoryStore::new()),
        host.clone(),
        Arc::new(SystemClock),
        Some(observer),
    );
    let (wf, diags) = compile::load(
        "rules.yaml",
        RULE_ONLY,
        &Default::default(),
        &Rules::shared(),
    );
    driver
        .install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
        .unwrap();
    let started = driver
        .start("rules", json!({"amount": 21}), None)
        .await
        .unwrap();
    let (id, last) = tokio::time::timeout(PATIENCE, finals.recv())
        .await
        .expect("the rule-only workflow must finish while plugins spin")
        .unwrap();
    assert_eq!(id, started.id);
    assert!(matches!(last, Record::Completed { .. }), "{last:?}");
    assert!(
        spinners.iter().all(|s| !s.is_finished()),
        "the workflow must finish while the spinners still run"
    );

    // So does a quick call of another plugin, on the same single pool thread.
    let echoed = host
        .call("other", "echo", json!({"value": 5}), ctx("echo"))
        .await
        .unwrap();
    assert_eq!(echoed["value"], 5);
    assert!(spinners.iter().all(|s| !s.is_finished()));

    for s in &spinners {
        s.abort();
    }
    until(&host, "abandoned calls give back their slots", idle).await;
}

#[tokio::test]
async fn a_plugin_runs_no_more_calls_at_once_than_its_concurrency_limit() {
    let (host, _dir) = host_with(
        pool(2, 2, 8, 1024),
        &[("hostile", forever), ("other", forever)],
    )
    .await;
    let mut spinners: Vec<_> = (0..2)
        .map(|_| spawn_call(&host, "hostile", "spin"))
        .collect();
    until(&host, "two running", |s| s.running == 2).await;
    spinners.extend((0..2).map(|_| spawn_call(&host, "hostile", "spin")));
    until(&host, "two running, two waiting", |s| {
        s.running == 2 && s.queued == 2
    })
    .await;

    // The limit is per plugin: another plugin's call starts at once.
    spinners.push(spawn_call(&host, "other", "spin"));
    until(&host, "the other plugin's call runs", |s| {
        s.running == 3 && s.queued == 2
    })
    .await;

    // One running call given up: exactly one waiting call takes its place.
    spinners[0].abort();
    until(&host, "a waiting call takes the free permit", |s| {
        s.running == 3 && s.queued == 1
    })
    .await;
    assert_eq!(host.stats().running, 3, "hostile: 2 running, other: 1");

    for s in &spinners {
        s.abort();
    }
    until(&host, "abandoned calls give back their slots", idle).await;
}

/// `limits.concurrency` and `limits.rate` in a plugin's own `plugin.toml`, for a
/// provider's published limits: its calls wait, in the bounded queue, instead of failing.
#[tokio::test]
async fn a_plugin_toml_s_own_concurrency_and_rate_hold_its_calls() {
    fn one_at_a_time(m: String) -> String {
        forever(m.replace("timeout_ms = 2000", "timeout_ms = 2000\nconcurrency = 1"))
    }
    fn two_per_second(m: String) -> String {
        m.replace("timeout_ms = 2000", "timeout_ms = 300\nrate = \"2/s\"")
    }
    let (host, _dir) = host_with(
        pool(2, 8, 8, 1024),
        &[("single", one_at_a_time), ("slow", two_per_second)],
    )
    .await;
    let first = spawn_call(&host, "single", "spin");
    until(&host, "one running", |s| s.running == 1).await;
    let second = spawn_call(&host, "single", "spin");
    until(&host, "the second waits though the pool has room", |s| {
        s.running == 1 && s.queued == 1
    })
    .await;
    first.abort();
    until(&host, "the second runs once the first is gone", |s| {
        s.running == 1 && s.queued == 0
    })
    .await;
    second.abort();
    until(&host, "idle", idle).await;

    // 2/s: the first call starts now, the next in 500 ms, past its 300 ms limit.
    call(&host, "slow", "count").await.unwrap();
    let waited = busy(call(&host, "slow", "count").await);
    assert!(
        waited
            .message
            .contains("its turn under the plugin's rate of 2/s (its limits.rate)"),
        "{}",
        waited.message
    );
    until(&host, "idle", idle).await;
}

/// `limits.key`: the plugin's rate holds per value of an input field (a chat provider's
/// one message per second per channel), so a burst to one channel waits while another
/// channel's message goes at once; and the operator's `plugin_limits` replace what a
/// plugin's own `plugin.toml` says, from the next load.
#[tokio::test]
async fn a_rate_per_key_holds_each_value_apart_and_the_operator_s_limits_replace_the_plugin_s() {
    fn per_channel(m: String) -> String {
        m.replace(
            "timeout_ms = 2000",
            "timeout_ms = 300\nrate = \"1/s\"\nkey = \"value.channel\"",
        )
    }
    fn unlimited(m: String) -> String {
        m.replace("timeout_ms = 2000", "timeout_ms = 300")
    }
    let (host, dir) = host_with(
        pool(2, 8, 8, 1024),
        &[("chat", per_channel), ("plain", unlimited)],
    )
    .await;
    let send = |plugin: &'static str, channel: &'static str| {
        let host = host.clone();
        async move {
            host.call(
                plugin,
                "echo",
                json!({"value": {"channel": channel}}),
                ctx("send"),
            )
            .await
        }
    };
    send("chat", "#ops").await.unwrap();
    let waited = busy(send("chat", "#ops").await);
    assert!(
        waited
            .message
            .contains("its turn under the plugin's rate of 1/s for one value of `value.channel`"),
        "{}",
        waited.message
    );
    assert!(!waited.message.contains("#ops"), "{}", waited.message);
    send("chat", "#support")
        .await
        .expect("another channel has a turn of its own");
    send("plain", "#ops").await.unwrap();
    send("plain", "#ops").await.expect("no limits of its own");

    host.set_limit_overrides(
        [(
            "plain".to_string(),
            LimitsOverride {
                rate: Some("1/s".into()),
                key: Some("value.channel".into()),
                ..LimitsOverride::default()
            },
        )]
        .into(),
    );
    host.load_dir(dir.path()).await;
    assert_eq!(host.problems(), Vec::<String>::new());
    send("plain", "#ops").await.unwrap();
    busy(send("plain", "#ops").await);
    send("plain", "#support").await.unwrap();
    until(&host, "idle", idle).await;
}

#[tokio::test]
async fn a_full_queue_refuses_a_call_at_once_with_plugin_busy() {
    let (host, _dir) = host_with(
        pool(1, 1, 1, 1024),
        &[("hostile", forever), ("other", |m| m)],
    )
    .await;
    let running = spawn_call(&host, "hostile", "spin");
    until(&host, "one running", |s| s.running == 1).await;
    let waiting = spawn_call(&host, "hostile", "spin");
    until(&host, "one waiting", |s| s.queued == 1).await;

    let refused = busy(call(&host, "hostile", "echo").await);
    assert_eq!(
        refused.message,
        "plugin `hostile` already has 1 calls waiting (plugin_queue) behind the ones running; the call was refused without running, try again later"
    );
    assert!(
        !running.is_finished() && !waiting.is_finished(),
        "the refusal must not wait for the queue to move"
    );
    // The queue is per plugin: another plugin's call still runs.
    assert!(call(&host, "other", "count").await.is_ok());

    running.abort();
    waiting.abort();
    until(&host, "abandoned calls give back their slots", idle).await;
}

#[tokio::test]
async fn a_call_its_caller_gives_up_on_stops_running() {
    let (host, _dir) = host_with(pool(1, 1, 4, 1024), &[("hostile", forever)]).await;
    // As the driver does when a step's own timeout is shorter than the plugin's.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), call(&host, "hostile", "spin")).await;
    assert!(
        gave_up.is_err(),
        "the spin must still be running: {gave_up:?}"
    );
    // Its limit is 300 s: only stopping the guest frees the pool's one slot for it.
    until(&host, "the abandoned guest stops", idle).await;
    let counted = call(&host, "hostile", "count").await.unwrap();
    assert_eq!(counted["detail"], "1");
}

#[tokio::test]
async fn a_call_spinning_past_its_time_limit_is_stopped_and_frees_its_thread() {
    let (host, _dir) = host_with(pool(1, 1, 4, 1024), &[("hostile", |m| m)]).await;
    let err = call(&host, "hostile", "spin").await.unwrap_err();
    assert_eq!(err.code, "plugin_timeout");
    until(&host, "the timed-out guest gives back its slot", idle).await;
    // With one thread and one permit, this runs only if the spinner is gone.
    assert_eq!(
        call(&host, "hostile", "count").await.unwrap()["detail"],
        "1"
    );
}

#[tokio::test]
async fn calls_whose_memory_does_not_fit_the_budget_together_run_one_after_the_other() {
    fn big(m: String) -> String {
        forever(m).replace("memory_mb = 32", "memory_mb = 64")
    }
    let (host, _dir) = host_with(pool(2, 4, 8, 100), &[("hostile", big)]).await;
    let first = spawn_call(&host, "hostile", "spin");
    until(&host, "the first call holds 64 MiB", |s| {
        s.running == 1 && s.memory_reserved_mib == 64
    })
    .await;
    let second = spawn_call(&host, "hostile", "spin");
    until(&host, "the second call waits for memory", |s| s.queued == 1).await;
    assert_eq!(
        host.stats().running,
        1,
        "a concurrency of 4 allows it; only the budget holds it back"
    );

    first.abort();
    until(
        &host,
        "the second call starts when the first is gone",
        |s| s.running == 1 && s.queued == 0 && s.memory_reserved_mib == 64,
    )
    .await;
    second.abort();
    until(&host, "all memory returned", idle).await;
}

#[tokio::test]
async fn a_call_that_waits_out_its_time_limit_says_what_it_waited_for() {
    fn big(m: String) -> String {
        forever(m).replace("memory_mb = 32", "memory_mb = 64")
    }
    fn big_and_quick(m: String) -> String {
        m.replace("memory_mb = 32", "memory_mb = 64")
            .replace("timeout_ms = 2000", "timeout_ms = 300")
    }
    let (host, _dir) = host_with(
        pool(2, 4, 8, 100),
        &[("hostile", big), ("quick", big_and_quick)],
    )
    .await;
    let holder = spawn_call(&host, "hostile", "spin");
    until(&host, "the first call holds 64 MiB", |s| {
        s.memory_reserved_mib == 64
    })
    .await;

    let waited = busy(call(&host, "quick", "count").await);
    assert_eq!(
        waited.message,
        "plugin `quick` could not start within its 300 ms limit (limits.timeout_ms): it waited for 64 MiB (its limits.memory_mb) of the 100 MiB all plugin calls may use together (plugin_memory_mib); it did not run, so a retry is safe"
    );
    assert!(!holder.is_finished());
    holder.abort();
    until(&host, "all memory returned", idle).await;
}

#[tokio::test]
async fn a_plugin_whose_memory_limit_exceeds_the_whole_budget_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    install_as(dir.path(), "hostile", &[], |m| m);
    let host = WasmHost::with_pool(
        Secrets::new(),
        Arc::new(SystemClock),
        None,
        pool(1, 4, 8, 16),
    )
    .unwrap();
    host.load_dir(dir.path()).await;
    let why = "plugin `hostile` may use up to 32 MiB (limits.memory_mb) but all plugin calls together may use 16 MiB (plugin_memory_mib); raise plugin_memory_mib or lower the plugin's limits.memory_mb";
    assert_eq!(host.problems(), vec![why.to_string()]);
    let err = call(&host, "hostile", "count").await.unwrap_err();
    assert_eq!(err.code, "plugin_unavailable");
    assert!(err.message.contains(why), "{}", err.message);
}

#[tokio::test]
async fn a_log_flood_is_handled_on_the_plugin_pool_and_capped() {
    let (host, _dir) = host_with(
        pool(1, 4, 8, 1024),
        &[("hostile", |m| {
            m.replace("timeout_ms = 2000", "timeout_ms = 300")
        })],
    )
    .await;
    let logs = support::logs::capture();
    let err = logs.run(call(&host, "hostile", "flood")).await.unwrap_err();
    assert_eq!(err.code, "plugin_timeout");
    let text = logs.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("zzzzzzzz")).collect();
    assert_eq!(lines.len(), 100, "MAX_LOG_LINES per call");
    assert!(
        lines.iter().all(|l| l.contains("casework-plugin")),
        "guest log lines must be written from the plugin pool's threads: {}",
        lines[0]
    );
    assert_eq!(
        text.matches("plugin log limit reached; dropping further lines of this call")
            .count(),
        1,
        "{text}"
    );
}
