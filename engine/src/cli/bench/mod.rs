//! `casework bench`: throughput, latency, memory and restart time with durability on.
//!
//! Numbers vary by machine and load; the README records them with this exact command.

use crate::clock::SystemClock;
use crate::compile::{self, rules::Rules};
use crate::daemon::Driver;
use crate::plugin_host::NoPlugins;
use crate::runtime::Record;
use crate::store::sled::SledStore;
use anyhow::{anyhow, Result};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

mod workloads;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Concurrent instances for the throughput run.
    #[arg(long, default_value_t = 2_000)]
    pub instances: usize,
    /// Sequential runs for the latency measurement.
    #[arg(long, default_value_t = 500)]
    pub latency_runs: usize,
    /// Instances parked on a wait for the memory and restart measurement.
    #[arg(long, default_value_t = 100_000)]
    pub parked: usize,
    /// Plugin calls for the per-call latency measurement (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    pub plugin_calls: usize,
    /// Instance starts over HTTP for the API load measurement (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    pub http_starts: usize,
    /// Concurrent HTTP clients (each with its own keep-alive connection).
    #[arg(long, default_value_t = 32)]
    pub http_clients: usize,
    /// Plugin folder holding the shipped `identity` plugin (built by `bash plugins/build.sh`).
    #[arg(long, default_value = "plugins")]
    pub plugins: std::path::PathBuf,
    /// Rule-workflow runs (and as many `/healthz` requests) per containment load, each
    /// load capped at `CONTAINMENT_PHASE`; 0 skips the containment measurement.
    #[arg(long, default_value_t = 1_000)]
    pub containment_runs: usize,
    /// Concurrent misbehaving plugin calls per containment load (spin, log flood, huge output).
    #[arg(long, default_value_t = 8)]
    pub hostile_calls: usize,
    /// Concurrent calls of a plugin allowed 512 MiB that use all of it, for the guest
    /// memory measurement (0 skips it).
    #[arg(long, default_value_t = 8)]
    pub memory_calls: usize,
    /// Folder holding the test plugin `hostile.wasm` and its `plugin.toml` (built by
    /// `bash plugins/build.sh`).
    #[arg(long, default_value = "tests/hostile")]
    pub hostile: std::path::PathBuf,
    /// Scheduling priority of the plugin pool's threads in the containment and memory
    /// measurements: normal, low or idle (as `plugin_priority` of `casework serve`).
    #[arg(long, default_value = "low", value_parser = parse_priority)]
    pub plugin_priority: crate::plugin_host::pool::Priority,
    /// Starts of W1 (rule, plugin call, rule) over HTTP per store and daemon count (0
    /// skips the measurement): on sled, and with `--postgres` on PostgreSQL with 1, 2
    /// and 3 daemons.
    #[arg(long, default_value_t = 4_000)]
    pub w1_starts: usize,
    /// A PostgreSQL server to measure W1 and failover on (e.g. the one `bash
    /// tests/postgres.sh` starts: postgres://postgres@127.0.0.1:54329/postgres). Each run
    /// creates a database of its own there and drops it at the end, so the URL's user
    /// must be allowed to create databases.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// With `--postgres`: instances whose owner stops in the middle of a plugin call,
    /// to measure how long another daemon takes to finish them (0 skips it).
    #[arg(long, default_value_t = 200)]
    pub failover_instances: usize,
    /// W1 of the peer comparison against a `casework serve` process of its own: workflows
    /// started and waited for over HTTP (0 skips W1 and W2).
    #[arg(long, default_value_t = 2_000)]
    pub w1_workflows: usize,
    /// W2 of the peer comparison: instances parked on an event in a fresh daemon.
    #[arg(long, default_value_t = 10_000)]
    pub w2_parked: usize,
    /// Events sent before their wait for the inbox measurement (0 skips it): each is
    /// kept, then taken by the instance whose wait begins later.
    #[arg(long, default_value_t = 10_000)]
    pub inbox_events: usize,
    /// Parked instances with search attributes for the search measurement (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub search_instances: usize,
    /// W2: concurrent senders of the events that release the parked instances.
    #[arg(long, default_value_t = 64)]
    pub w2_senders: usize,
}

fn parse_priority(s: &str) -> Result<crate::plugin_host::pool::Priority, String> {
    crate::plugin_host::pool::Priority::parse(s)
        .ok_or_else(|| format!("`{s}` is not normal, low or idle"))
}

const FIVE_STEPS: &str = r#"
workflow: bench-five
version: 1
input:
  amount_minor: integer
steps:
  - id: a
    rule: vars.x = input.amount_minor
    next: b
  - id: b
    rule: vars.y = vars.x * 2
    next: c
  - id: c
    set: { z: "${vars.y + 1}" }
    next: d
  - id: d
    switch:
      - when: vars.z > 10
        goto: e
    default: e
  - id: e
    complete: { output: { z: "${vars.z}" } }
"#;

/// Parks on an event keyed by its input (also W2 of `workloads`).
const PARKED: &str = r#"
workflow: bench-parked
version: 1
input:
  key: string
steps:
  - id: wait
    wait: { event: go, key: input.key }
    next: done
  - id: done
    complete: {}
"#;

/// Parks like `bench-parked`, found by its ticket (one instance each) and its tier
/// (1 in 100 `gold`): the search measurement.
const SEARCHED: &str = r#"
workflow: bench-search
version: 1
input:
  ticket: string
  tier: string
search:
  ticket: input.ticket
  tier: input.tier
steps:
  - id: wait
    wait: { event: go, key: input.ticket }
    next: done
  - id: done
    complete: {}
"#;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

fn driver_at(dir: &std::path::Path, waiters: Waiters) -> Result<Driver> {
    driver_with(dir, waiters, Arc::new(NoPlugins))
}

fn driver_with(
    dir: &std::path::Path,
    waiters: Waiters,
    plugins: Arc<dyn crate::plugin_host::PluginHost>,
) -> Result<Driver> {
    let store = Arc::new(SledStore::open(dir).map_err(|e| anyhow!("{e}"))?);
    let observer = Arc::new(move |id: &str, r: &Record| {
        if r.is_final() {
            if let Some(tx) = waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
                let _ = tx.send(());
            }
        }
    });
    let d = Driver::new(store, plugins, Arc::new(SystemClock), Some(observer));
    for src in [FIVE_STEPS, PARKED, SEARCHED] {
        let (wf, diags) = compile::load("bench.yaml", src, &Default::default(), &Rules::shared());
        let wf = wf.ok_or_else(|| anyhow!("bench workflow invalid: {diags:?}"))?;
        d.install(wf).map_err(|e| anyhow!(e))?;
    }
    Ok(d)
}

/// Starts `n` instances, at most 1,000 in flight: `start(i)` gives the workflow, the
/// input and, for a start whose end someone awaits, its id.
async fn start_many(
    d: &Driver,
    n: usize,
    start: impl Fn(usize) -> (&'static str, serde_json::Value, Option<String>),
) -> Result<()> {
    let mut batch = Vec::new();
    for i in 0..n {
        let d = d.clone();
        let (workflow, input, id) = start(i);
        batch.push(tokio::spawn(async move {
            match id {
                Some(id) => d.start_as(workflow, input, id).await.map(|_| ()),
                None => d.start(workflow, input, None).await.map(|_| ()),
            }
        }));
        if batch.len() == 1_000 {
            for t in batch.drain(..) {
                t.await?.map_err(|e| anyhow!("{e}"))?;
            }
        }
    }
    for t in batch {
        t.await?.map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

fn rss_mb() -> f64 {
    rss_mb_of("self")
}

/// Resident memory of process `pid` (or `self`), MiB.
fn rss_mb_of(pid: &str) -> f64 {
    crate::daemon::process::usage(pid).map_or(0.0, |u| u.resident_bytes as f64 / 1048576.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn bench(args: BenchArgs) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("casework-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let d = driver_at(&tmp, waiters.clone())?;

    // 1. Throughput: many concurrent 5-step instances.
    let before = d
        .inner()
        .stats
        .records
        .load(std::sync::atomic::Ordering::Relaxed);
    let flushes_before = d
        .inner()
        .stats
        .flushes
        .load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.instances {
        let d = d.clone();
        let w = waiters.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = oneshot::channel();
            let id = crate::daemon::driver::new_id(i as i64);
            w.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), tx);
            // Start through the driver with a known id so completion can be awaited.
            if d.start_as("bench-five", json!({"amount_minor": i as i64}), id)
                .await
                .is_ok()
            {
                let _ = rx.await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let records = d
        .inner()
        .stats
        .records
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    let flushes = d
        .inner()
        .stats
        .flushes
        .load(std::sync::atomic::Ordering::Relaxed)
        - flushes_before;
    println!("throughput: {} instances, {records} journaled transitions in {secs:.2}s = {:.0} transitions/s ({flushes} flushes)", args.instances, records as f64 / secs);

    // 2. Latency: start to completion, one at a time.
    let mut lat = Vec::with_capacity(args.latency_runs);
    for i in 0..args.latency_runs {
        let (tx, rx) = oneshot::channel();
        let t = Instant::now();
        let id = crate::daemon::driver::new_id(1_000_000 + i as i64);
        waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        d.start_as("bench-five", json!({"amount_minor": 5}), id)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let _ = rx.await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "latency (5-step workflow, start to durable completion): p50 {:.2} ms, p99 {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    // 3. Memory with many parked instances.
    let rss0 = rss_mb();
    let t1 = Instant::now();
    start_many(&d, args.parked, |i| {
        ("bench-parked", json!({"key": format!("k{i}")}), None)
    })
    .await?;
    d.wait_idle().await;
    println!(
        "parked: {} instances waiting in {:.1}s; resident memory {:.0} MB (was {:.0} MB before parking)",
        args.parked,
        t1.elapsed().as_secs_f64(),
        rss_mb(),
        rss0
    );
    drop(d);

    // 4. Restart: reopen the store and make every parked instance resumable.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let t2 = Instant::now();
    let d2 = driver_at(&tmp, Arc::new(Mutex::new(HashMap::new())))?;
    let resumed = d2.resume_all().map_err(|e| anyhow!(e))?;
    d2.wait_idle().await;
    println!("restart: store reopened and {resumed} running instance(s) resumed in {:.2}s; parked instances wake on their event or timer", t2.elapsed().as_secs_f64());
    drop(d2);
    let _ = std::fs::remove_dir_all(&tmp);

    if args.inbox_events > 0 {
        inbox(args.inbox_events).await?;
    }
    if args.search_instances > 0 {
        search(args.search_instances).await?;
    }
    if args.http_starts > 0 {
        http_load(&args).await?;
    }
    if args.plugin_calls > 0 {
        plugin_calls(&args).await?;
    }
    if args.containment_runs > 0 {
        containment(&args).await?;
    }
    if args.memory_calls > 0 {
        guest_memory(&args).await?;
    }
    if args.w1_starts > 0 {
        w1(&args).await?;
    }
    if args.w1_workflows > 0 {
        let (w1_workflows, w2_parked, clients, senders, hostile) = (
            args.w1_workflows,
            args.w2_parked,
            args.http_clients,
            args.w2_senders,
            args.hostile.clone(),
        );
        tokio::task::spawn_blocking(move || {
            workloads::run(&workloads::Workloads {
                w1_workflows,
                w2_parked,
                clients,
                senders,
                hostile: &hostile,
            })
        })
        .await??;
    }
    if let Some(url) = &args.postgres {
        if args.failover_instances > 0 {
            failover(url, args.failover_instances).await?;
        }
    }
    Ok(())
}

/// Inbox: `n` events that come before their wait, from 64 senders at once (each kept in
/// the store's inbox, durable before its answer), then `n` instances whose one step
/// waits for its event (each takes its event from the inbox and completes); beside it the
/// same `n` the usual way round, instances parked first and their events after.
async fn inbox(n: usize) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("casework-bench-inbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let d = driver_at(&tmp, waiters.clone())?;
    d.set_inbox(crate::daemon::driver::InboxSettings {
        bounds: crate::store::InboxBounds {
            per_key: 100,
            total: n.max(100_000),
        },
        ..Default::default()
    });
    let event = |key: String, i: usize| crate::runtime::Event {
        event_type: "go".into(),
        key,
        data: json!({}),
        id: Some(format!("bench-inbox-{i}")),
    };
    // Senders in 64 lanes, each one event after another (as HTTP clients would).
    let send = |keys: Vec<(usize, String)>| {
        let d = d.clone();
        async move {
            let mut lanes = Vec::new();
            for lane in 0..64 {
                let d = d.clone();
                let mine: Vec<(usize, String)> = keys
                    .iter()
                    .filter(|(i, _)| i % 64 == lane)
                    .cloned()
                    .collect();
                lanes.push(tokio::spawn(async move {
                    let mut kept = 0usize;
                    for (i, k) in mine {
                        let out = d
                            .deliver_with(event(k, i), async |_| false)
                            .await
                            .map_err(|e| anyhow!("{e}"))?;
                        kept += usize::from(out.buffered.is_some());
                    }
                    Ok::<_, anyhow::Error>(kept)
                }));
            }
            let mut kept = 0;
            for l in lanes {
                kept += l.await??;
            }
            Ok::<_, anyhow::Error>(kept)
        }
    };
    let start_all = |prefix: &'static str| {
        let d = d.clone();
        let waiters = waiters.clone();
        async move {
            let mut done = Vec::with_capacity(n);
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let (tx, rx) = oneshot::channel();
                let id = crate::daemon::driver::new_id(i as i64);
                waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone(), tx);
                done.push(rx);
                ids.push(id);
            }
            start_many(&d, n, |i| {
                let input = json!({"key": format!("{prefix}{i}")});
                ("bench-parked", input, Some(ids[i].clone()))
            })
            .await?;
            Ok::<_, anyhow::Error>(done)
        }
    };
    // Events first: each is kept.
    let t0 = Instant::now();
    let kept = send((0..n).map(|i| (i, format!("early{i}"))).collect()).await?;
    let keep_s = t0.elapsed().as_secs_f64();
    if kept != n {
        return Err(anyhow!("{kept} of {n} early events were kept"));
    }
    let t1 = Instant::now();
    for rx in start_all("early").await? {
        let _ = rx.await;
    }
    let take_s = t1.elapsed().as_secs_f64();
    // The usual way round: instances park, then their events come.
    let t2 = Instant::now();
    let done = start_all("late").await?;
    d.wait_idle().await;
    let park_s = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    let kept = send((0..n).map(|i| (n + i, format!("late{i}"))).collect()).await?;
    for rx in done {
        let _ = rx.await;
    }
    let wake_s = t3.elapsed().as_secs_f64();
    if kept != 0 {
        return Err(anyhow!("{kept} late events were kept instead of delivered"));
    }
    println!(
        "inbox: {n} events before their wait kept in {keep_s:.2}s ({:.0}/s), then {n} instances started, each taking its event and completing, in {take_s:.2}s ({:.0}/s); the usual way round: {n} parked in {park_s:.2}s, their events delivered and all completed in {wake_s:.2}s ({:.0}/s)",
        n as f64 / keep_s,
        n as f64 / take_s,
        n as f64 / wake_s,
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Search: `n` parked instances with two search attributes, then queries as the API
/// answers them (`Selection::page` on the sled store, without HTTP): by a ticket (one
/// hit among `n`) and the first page of 100 of a tier that 1 in 100 instances have.
async fn search(n: usize) -> Result<()> {
    use crate::daemon::selection::Selection;
    let tmp = std::env::temp_dir().join(format!("casework-bench-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let d = driver_at(&tmp, Arc::new(Mutex::new(HashMap::new())))?;
    let t0 = Instant::now();
    start_many(&d, n, |i| {
        let tier = if i % 100 == 0 { "gold" } else { "basic" };
        let input = json!({"ticket": format!("T-{i}"), "tier": tier});
        ("bench-search", input, None)
    })
    .await?;
    d.wait_idle().await;
    let parked = t0.elapsed().as_secs_f64();
    let store = d.inner().store.clone();
    let known = |_: &str| vec!["ticket".to_string(), "tier".to_string()];
    let query = |attribute: &str, value: &str, limit: usize| -> Result<(usize, f64)> {
        let search = [(attribute.to_string(), value.to_string())].into();
        let t = Instant::now();
        let s = Selection::new(
            store.as_ref(),
            known,
            Some("bench-search".into()),
            Some("parked".into()),
            (None, None),
            &search,
        )
        .map_err(|e| anyhow!(e.0))?;
        let found = s
            .page(store.as_ref(), None, limit)
            .map_err(|e| anyhow!("{e}"))?;
        Ok((found.found.len(), t.elapsed().as_secs_f64() * 1000.0))
    };
    let mut by_ticket = Vec::new();
    for q in 0..1_000 {
        let (hits, ms) = query("ticket", &format!("T-{}", (q * 7_919) % n), 100)?;
        if hits != 1 {
            return Err(anyhow!("a ticket search found {hits} instances, not 1"));
        }
        by_ticket.push(ms);
    }
    let mut by_tier = Vec::new();
    for _ in 0..200 {
        let (hits, ms) = query("tier", "gold", 100)?;
        if hits != 100.min(n.div_ceil(100)) {
            return Err(anyhow!("a tier search found {hits} instances"));
        }
        by_tier.push(ms);
    }
    by_ticket.sort_by(|a, b| a.total_cmp(b));
    by_tier.sort_by(|a, b| a.total_cmp(b));
    println!(
        "search: {n} parked instances with 2 search attributes in {parked:.1}s; by ticket (1 hit): p50 {:.3} ms, p99 {:.3} ms; by tier (first 100 of {}): p50 {:.2} ms, p99 {:.2} ms",
        pct(&by_ticket, 0.5),
        pct(&by_ticket, 0.99),
        n.div_ceil(100),
        pct(&by_tier, 0.5),
        pct(&by_tier, 0.99),
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// W1: a rule, a plugin call (answered at once by a canned host, so the store and the
/// engine are what is measured) and a rule.
const W1: &str = r#"
workflow: bench-w1
version: 1
input:
  n: integer
steps:
  - id: decide
    rule: vars.amount = input.n * 100
    next: pay
  - id: pay
    call: bench.pay
    with: { amount: "${vars.amount}" }
    save_as: paid
    next: record
  - id: record
    rule: vars.done = vars.paid.ok
    next: end
  - id: end
    complete: { output: { done: "${vars.done}" } }
"#;

/// When each instance's final record became durable, by id.
type Finished = Arc<Mutex<HashMap<String, Instant>>>;

/// One W1 daemon on `store`, serving HTTP on a free loopback port.
async fn w1_daemon(
    store: Arc<dyn crate::store::Store>,
    finished: Finished,
) -> Result<(std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)> {
    let mut host = crate::plugin_host::Canned::new();
    host.answer("bench.pay", Ok(json!({"ok": true})));
    let observer = Arc::new(move |id: &str, r: &Record| {
        if r.is_final() {
            finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string(), Instant::now());
        }
    });
    let d = Driver::new(store, Arc::new(host), Arc::new(SystemClock), Some(observer));
    let (wf, diags) = compile::load("w1.yaml", W1, &Default::default(), &Rules::shared());
    d.install(wf.ok_or_else(|| anyhow!("W1 invalid: {diags:?}"))?)
        .map_err(|e| anyhow!(e))?;
    let timers = tokio::spawn(d.clone().run_timers());
    let ownership = tokio::spawn(d.clone().run_ownership());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, crate::daemon::http::router(d)).await;
    });
    Ok((addr, vec![timers, ownership, server]))
}

/// Stage 9: W1 started over HTTP by `http_clients` clients, spread over the daemons;
/// start latency (until the start is durable and answered) and end-to-end latency (until
/// the final record is durable).
async fn w1(args: &BenchArgs) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("casework-bench-w1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut runs: Vec<(String, Vec<Arc<dyn crate::store::Store>>)> = vec![(
        "sled".into(),
        vec![Arc::new(SledStore::open(&tmp).map_err(|e| anyhow!("{e}"))?)],
    )];
    // Each PostgreSQL run on a database of its own, dropped at the end.
    let mut scratch = Vec::new();
    if let Some(url) = &args.postgres {
        let key = crate::store::seal::JournalKey::random().map_err(|e| anyhow!("{e}"))?;
        for daemons in 1..=3 {
            let db =
                crate::store::postgres::ScratchDatabase::create(url).map_err(|e| anyhow!("{e}"))?;
            let url = db.url().to_string();
            scratch.push(db);
            let mut stores: Vec<Arc<dyn crate::store::Store>> = Vec::new();
            for _ in 0..daemons {
                let (url, key) = (url.clone(), key.clone());
                let store = tokio::task::spawn_blocking(move || {
                    crate::store::postgres::PgStore::open(
                        &url,
                        crate::store::seal::KeySource::Explicit(key),
                    )
                })
                .await?
                .map_err(|e| anyhow!("{e}"))?;
                stores.push(Arc::new(store));
            }
            runs.push((format!("postgres, {daemons} daemon(s)"), stores));
        }
    }
    let _scratch = scratch;
    for (name, stores) in runs {
        let finished: Finished = Arc::new(Mutex::new(HashMap::new()));
        let mut addrs = Vec::new();
        let mut servers = Vec::new();
        for store in stores {
            let (addr, tasks) = w1_daemon(store, finished.clone()).await?;
            addrs.push(addr);
            servers.extend(tasks);
        }
        let clients = args.http_clients.max(1);
        let per_client = args.w1_starts.div_ceil(clients);
        let addrs2 = addrs.clone();
        let t0 = Instant::now();
        let started =
            tokio::task::spawn_blocking(move || -> Result<Vec<(String, Instant, f64)>> {
                let handles: Vec<_> = (0..clients)
                    .map(|c| {
                        let addr = addrs2[c % addrs2.len()];
                        std::thread::spawn(move || -> Result<Vec<(String, Instant, f64)>> {
                            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                            let mut out = Vec::with_capacity(per_client);
                            for i in 0..per_client {
                                let t = Instant::now();
                                let mut resp = agent
                                    .post(&format!("http://{addr}/v1/workflows/bench-w1/instances"))
                                    .send_json(json!({"n": i}))
                                    .map_err(|e| anyhow!("start failed: {e}"))?;
                                let v: serde_json::Value = resp.body_mut().read_json()?;
                                let id = v["id"].as_str().unwrap_or_default().to_string();
                                out.push((id, t, t.elapsed().as_secs_f64() * 1000.0));
                            }
                            Ok(out)
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for h in handles {
                    all.extend(h.join().map_err(|_| anyhow!("client thread panicked"))??);
                }
                Ok(all)
            })
            .await??;
        // Wait (bounded) for every instance's end.
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let done = {
                let f = finished.lock().unwrap_or_else(|e| e.into_inner());
                started.iter().all(|(id, _, _)| f.contains_key(id))
            };
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let f = finished.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut starts: Vec<f64> = started.iter().map(|(_, _, ms)| *ms).collect();
        let mut ends: Vec<f64> = started
            .iter()
            .filter_map(|(id, t, _)| {
                f.get(id)
                    .map(|e| e.duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect();
        starts.sort_by(|a, b| a.total_cmp(b));
        ends.sort_by(|a, b| a.total_cmp(b));
        println!(
            "w1 on {name}: {} of {} instances ended in {secs:.2}s = {:.0} instances/s from {clients} clients; start p50 {:.2} ms, p99 {:.2} ms; end-to-end p50 {:.2} ms, p99 {:.2} ms",
            ends.len(),
            started.len(),
            ends.len() as f64 / secs,
            pct(&starts, 0.5),
            pct(&starts, 0.99),
            pct(&ends, 0.5),
            pct(&ends, 0.99)
        );
        for s in servers {
            s.abort();
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Stage 6, the HTTP API under load on loopback: clients start instances (each waits
/// for an event) and then deliver each one's event, with durability on.
async fn http_load(args: &BenchArgs) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("casework-bench-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let d = driver_at(&tmp, Arc::new(Mutex::new(HashMap::new())))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server =
        tokio::spawn(async move { axum::serve(listener, crate::daemon::http::router(d)).await });
    let clients = args.http_clients.max(1);
    let per_client = args.http_starts.div_ceil(clients);
    let load = tokio::task::spawn_blocking(move || -> Result<(Vec<f64>, Vec<f64>, f64, f64)> {
        let run_phase = |phase: &str,
                         ids: Option<&Vec<Vec<String>>>|
         -> Result<(Vec<f64>, Vec<Vec<String>>, f64)> {
            let t0 = Instant::now();
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let keys: Vec<String> = match ids {
                        Some(ids) => ids[c].clone(),
                        None => (0..per_client).map(|i| format!("c{c}-{i}")).collect(),
                    };
                    let phase = phase.to_string();
                    std::thread::spawn(move || -> Result<(Vec<f64>, Vec<String>)> {
                        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                        let mut lat = Vec::with_capacity(keys.len());
                        let mut out = Vec::with_capacity(keys.len());
                        for key in keys {
                            let t = Instant::now();
                            if phase == "start" {
                                let mut resp = agent
                                    .post(&format!(
                                        "http://{addr}/v1/workflows/bench-parked/instances"
                                    ))
                                    .send_json(json!({"key": key}))
                                    .map_err(|e| anyhow!("start failed: {e}"))?;
                                let _: serde_json::Value = resp.body_mut().read_json()?;
                            } else {
                                agent
                                    .post(&format!("http://{addr}/v1/events"))
                                    .send_json(json!({"type": "go", "key": key}))
                                    .map_err(|e| anyhow!("event failed: {e}"))?;
                            }
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                            out.push(key);
                        }
                        Ok((lat, out))
                    })
                })
                .collect();
            let mut lat = Vec::new();
            let mut keys = Vec::new();
            for h in handles {
                let (l, k) = h.join().map_err(|_| anyhow!("client thread panicked"))??;
                lat.extend(l);
                keys.push(k);
            }
            Ok((lat, keys, t0.elapsed().as_secs_f64()))
        };
        let (mut starts, keys, start_secs) = run_phase("start", None)?;
        let (mut events, _, event_secs) = run_phase("event", Some(&keys))?;
        starts.sort_by(|a, b| a.total_cmp(b));
        events.sort_by(|a, b| a.total_cmp(b));
        Ok((starts, events, start_secs, event_secs))
    })
    .await??;
    let (starts, events, start_secs, event_secs) = load;
    println!(
        "http: {} starts from {clients} clients in {start_secs:.2}s = {:.0} starts/s; start p50 {:.2} ms, p99 {:.2} ms",
        starts.len(),
        starts.len() as f64 / start_secs,
        pct(&starts, 0.5),
        pct(&starts, 0.99)
    );
    println!(
        "http: {} event deliveries in {event_secs:.2}s = {:.0} events/s; delivery p50 {:.2} ms, p99 {:.2} ms",
        events.len(),
        events.len() as f64 / event_secs,
        pct(&events, 0.5),
        pct(&events, 0.99)
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// One call at a time for latency, then 64 at once for throughput.
async fn measure_calls(
    host: &Arc<crate::plugin_host::wasm::WasmHost>,
    plugin: &str,
    action: &str,
    input: &serde_json::Value,
    calls: usize,
) -> Result<()> {
    use crate::plugin_host::{CallContext, PluginHost};
    let ctx = CallContext {
        scrub: Vec::new(),
        instance_id: "bench".into(),
        step_id: "step".into(),
        attempt: 1,
        idempotency_key: "bench:step:1".into(),
    };
    // Warm-up: first calls fault in the pooled memory slots.
    for _ in 0..50 {
        host.call(plugin, action, input.clone(), ctx.clone())
            .await
            .map_err(|e| anyhow!("{}: {}", e.code, e.message))?;
    }
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        host.call(plugin, action, input.clone(), ctx.clone())
            .await
            .map_err(|e| anyhow!("{}: {}", e.code, e.message))?;
        lat.push(t.elapsed().as_secs_f64() * 1_000_000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let host = host.clone();
            let (plugin, action, input, ctx) = (
                plugin.to_string(),
                action.to_string(),
                input.clone(),
                ctx.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..calls.div_ceil(64) {
                    let _ = host
                        .call(&plugin, &action, input.clone(), ctx.clone())
                        .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let total = 64 * calls.div_ceil(64);
    println!(
        "plugin call {plugin}.{action} (fresh instance per call): p50 {:.0} µs, p99 {:.0} µs; {:.0} calls/s with 64 concurrent callers",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        total as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stage 5, one plugin call through the WebAssembly host: a fresh store and instance from the
/// pre-linked component, a TOTP check in the guest (secret lookup, HMAC), output parsed.
async fn plugin_calls(args: &BenchArgs) -> Result<()> {
    use crate::plugin_host::{secrets::Secrets, wasm::WasmHost};
    let mut secrets = Secrets::new();
    // RFC 6238's test seed ("12345678901234567890" in base32).
    secrets.insert(
        "identity",
        "totp_seed/bench",
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
    );
    let host = WasmHost::new(secrets, Arc::new(SystemClock), None)?;
    // Only `identity` from the plugin folder: loading the folder whole would also
    // compile the Python and JavaScript examples (an interpreter each, minutes on a
    // small machine without the daemon's compile cache) for nothing.
    let only = std::env::temp_dir().join(format!("casework-bench-identity-{}", std::process::id()));
    let _ = std::fs::create_dir_all(only.join("identity"));
    for file in ["plugin.toml", "identity.wasm"] {
        let _ = std::fs::copy(
            args.plugins.join("identity").join(file),
            only.join("identity").join(file),
        );
    }
    host.load_dir(&only).await;
    let _ = std::fs::remove_dir_all(&only);
    if !host.plugin_names().iter().any(|p| p == "identity") {
        return Err(anyhow!(
            "the identity plugin is not loaded from {} ({}); run `bash plugins/build.sh` first",
            args.plugins.display(),
            host.problems().join("; ")
        ));
    }
    let host = Arc::new(host);
    let totp = json!({"secret_ref": "totp_seed/bench", "code": "000000"});
    measure_calls(&host, "identity", "verify_totp", &totp, args.plugin_calls).await?;

    // The trivial action of the test plugin (tests/hostile, built with the others).
    let trivial = WasmHost::new(Secrets::new(), Arc::new(SystemClock), None)?;
    trivial.load_dir(std::path::Path::new("tests")).await;
    if trivial.plugin_names().iter().any(|p| p == "hostile") {
        let trivial = Arc::new(trivial);
        measure_calls(&trivial, "hostile", "count", &json!({}), args.plugin_calls).await?;
    }
    Ok(())
}

/// Longest a containment load is measured for; the runs stop there if not done.
const CONTAINMENT_PHASE: std::time::Duration = std::time::Duration::from_secs(15);

/// The test plugin installed under `tmp/plugins` twice, with a 3 s time limit as in
/// the reported measurement: as `hostile` (32 MiB) and as `roomy` (512 MiB: room for a
/// 100 MiB output, which the guest builds and then encodes as JSON, and for the memory
/// measurement).
async fn hostile_host(
    args: &BenchArgs,
    tmp: &std::path::Path,
) -> Result<Arc<crate::plugin_host::wasm::WasmHost>> {
    use crate::plugin_host::{secrets::Secrets, wasm::WasmHost};
    let wasm = args.hostile.join("hostile.wasm");
    if !wasm.is_file() {
        return Err(anyhow!(
            "{} is missing; run `bash plugins/build.sh` first",
            wasm.display()
        ));
    }
    let _ = std::fs::remove_dir_all(tmp);
    for (name, memory_mb) in [("hostile", 32), ("roomy", 512)] {
        let plugin_dir = tmp.join("plugins").join(name);
        std::fs::create_dir_all(&plugin_dir)?;
        std::fs::copy(&wasm, plugin_dir.join(format!("{name}.wasm")))?;
        let manifest = std::fs::read_to_string(args.hostile.join("plugin.toml"))?
            .replace("name = \"hostile\"", &format!("name = \"{name}\""))
            .replace("timeout_ms = 2000", "timeout_ms = 3000")
            .replace("memory_mb = 32", &format!("memory_mb = {memory_mb}"));
        std::fs::write(plugin_dir.join("plugin.toml"), manifest)?;
    }
    let pool = crate::plugin_host::pool::PoolConfig {
        priority: args.plugin_priority,
        ..Default::default()
    };
    let host = WasmHost::with_pool(Secrets::new(), Arc::new(SystemClock), None, pool)?;
    host.load_dir(&tmp.join("plugins")).await;
    if host.plugin_names() != ["hostile", "roomy"] {
        return Err(anyhow!(
            "the hostile plugin did not load twice: {}",
            host.problems().join("; ")
        ));
    }
    Ok(Arc::new(host))
}

/// One misbehaving load: `calls` concurrent calls of `hostile.<action>`, each started
/// again as soon as it ends, for as long as the measurement runs.
struct Load {
    name: String,
    plugin: &'static str,
    action: &'static str,
    input: serde_json::Value,
    calls: usize,
}

/// Stage 7, containment: the latency of a rule-only workflow (start to durable
/// completion, through the driver) and of `GET /healthz` (over loopback) while plugin
/// calls misbehave: spin until their time limit, flood the log, return 100 MiB, or run
/// 50 at once as a foreach would. Guest code must only delay other plugin calls.
async fn containment(args: &BenchArgs) -> Result<()> {
    use crate::plugin_host::{CallContext, PluginHost};
    let tmp = std::env::temp_dir().join(format!("casework-bench-contain-{}", std::process::id()));
    let host = hostile_host(args, &tmp).await?;
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let d = driver_with(&tmp.join("data"), waiters.clone(), host.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = {
        let d = d.clone();
        tokio::spawn(async move { axum::serve(listener, crate::daemon::http::router(d)).await })
    };

    let n = args.hostile_calls;
    let loads = [
        None,
        Some(Load {
            name: format!("{n} spinning calls"),
            plugin: "hostile",
            action: "spin",
            input: json!({}),
            calls: n,
        }),
        Some(Load {
            name: format!("{n} log floods"),
            plugin: "hostile",
            action: "flood",
            input: json!({}),
            calls: n,
        }),
        Some(Load {
            name: format!("{n} calls returning 100 MiB"),
            plugin: "roomy",
            action: "big_output",
            input: json!({"mib": 100}),
            calls: n,
        }),
        Some(Load {
            name: "50 spinning calls (a foreach of 50)".into(),
            plugin: "hostile",
            action: "spin",
            input: json!({}),
            calls: 50,
        }),
    ];
    let mut idle_p99 = None;
    let mut run_id = 2_000_000i64;
    for load in loads {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outcomes: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
        let mut callers = Vec::new();
        for c in 0..load.as_ref().map_or(0, |l| l.calls) {
            let (host, stop, outcomes) = (host.clone(), stop.clone(), outcomes.clone());
            let load = load.as_ref().expect("calls > 0 only with a load");
            let (plugin, action, input) = (load.plugin, load.action, load.input.clone());
            callers.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ctx = CallContext {
                        scrub: Vec::new(),
                        instance_id: format!("load-{c}"),
                        step_id: action.into(),
                        attempt: 1,
                        idempotency_key: format!("load-{c}:{action}:1"),
                    };
                    let outcome = match host.call(plugin, action, input.clone(), ctx).await {
                        Ok(_) => "ok".to_string(),
                        Err(e) => e.code,
                    };
                    *outcomes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(outcome)
                        .or_default() += 1;
                }
            }));
        }
        // Let every load call get going before measuring.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;

        let runs = args.containment_runs;
        let health = std::thread::spawn(move || -> Result<Vec<f64>> {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            let began = Instant::now();
            let mut lat = Vec::with_capacity(runs);
            while lat.len() < runs && began.elapsed() < CONTAINMENT_PHASE {
                let t = Instant::now();
                agent
                    .get(&format!("http://{addr}/healthz"))
                    .call()
                    .map_err(|e| anyhow!("/healthz failed: {e}"))?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Ok(lat)
        });
        let began = Instant::now();
        let mut lat = Vec::with_capacity(runs);
        while lat.len() < runs && began.elapsed() < CONTAINMENT_PHASE {
            let (tx, rx) = oneshot::channel();
            run_id += 1;
            let id = crate::daemon::driver::new_id(run_id);
            waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), tx);
            let t = Instant::now();
            d.start_as("bench-five", json!({"amount_minor": 5}), id)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let _ = rx.await;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mut health = tokio::task::spawn_blocking(move || health.join())
            .await?
            .map_err(|_| anyhow!("the /healthz client panicked"))??;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in callers {
            c.await?;
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        health.sort_by(|a, b| a.total_cmp(b));
        let p99 = pct(&lat, 0.99);
        let name = match &load {
            None => {
                idle_p99 = Some(p99);
                "idle".to_string()
            }
            Some(l) => l.name.clone(),
        };
        let ratio = idle_p99
            .filter(|_| load.is_some())
            .map(|idle| format!(" ({:.1}x idle)", p99 / idle))
            .unwrap_or_default();
        let outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let outcomes = if outcomes.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
            format!("; plugin calls: {}", list.join(", "))
        };
        println!(
            "containment, {name}: rule workflow ({} runs) p50 {:.2} ms, p99 {p99:.2} ms{ratio}; /healthz ({} requests) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{outcomes}",
            lat.len(),
            pct(&lat, 0.5),
            health.len(),
            pct(&health, 0.5),
            pct(&health, 0.99),
            health.last().copied().unwrap_or(0.0),
        );
    }
    server.abort();
    drop(d);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Stage 8, guest memory: concurrent calls of a plugin allowed 512 MiB that allocate
/// until they hit it; resident memory is sampled every 10 ms during the calls, then
/// read right after them and again a second later (does the host give it back?).
async fn guest_memory(args: &BenchArgs) -> Result<()> {
    use crate::plugin_host::{CallContext, PluginHost};
    let tmp = std::env::temp_dir().join(format!("casework-bench-memory-{}", std::process::id()));
    let host = hostile_host(args, &tmp).await?;
    let before = rss_mb();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mb());
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let calls: Vec<_> = (0..args.memory_calls)
        .map(|c| {
            let host = host.clone();
            tokio::spawn(async move {
                let ctx = CallContext {
                    scrub: Vec::new(),
                    instance_id: format!("memory-{c}"),
                    step_id: "grow".into(),
                    attempt: 1,
                    idempotency_key: format!("memory-{c}:grow:1"),
                };
                match host.call("roomy", "grow", json!({}), ctx).await {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.code,
                }
            })
        })
        .collect();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for c in calls {
        *outcomes.entry(c.await?).or_default() += 1;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler
        .join()
        .map_err(|_| anyhow!("the memory sampler panicked"))?;
    let after = rss_mb();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let later = rss_mb();
    let list: Vec<String> = outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "guest memory, {} concurrent calls using their 512 MiB limit: resident {before:.0} MB before, peak {peak:.0} MB, {after:.0} MB right after, {later:.0} MB a second later; calls: {}",
        args.memory_calls,
        list.join(", ")
    );
    drop(host);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// A plugin host whose calls never answer: the daemon "dies" with every call in flight.
struct Unanswered;

impl crate::plugin_host::PluginHost for Unanswered {
    fn call<'a>(
        &'a self,
        _plugin: &'a str,
        _action: &'a str,
        _input: serde_json::Value,
        _ctx: crate::plugin_host::CallContext,
    ) -> crate::plugin_host::CallFuture<'a> {
        Box::pin(std::future::pending())
    }
}

/// Lease of the failover measurement: what a team would choose for fast takeover.
const FAILOVER_LEASE_MS: i64 = 2_000;

/// Stage 10, failover on PostgreSQL: daemon A starts `count` W1 instances whose plugin
/// call never answers, then stops renewing its lease (as if SIGKILLed: its tasks are
/// dropped, nothing is released); daemon B, live all along, takes them over once A's
/// lease lapses and finishes them. Prints the time from A's last heartbeat to each
/// instance's end.
async fn failover(url: &str, count: usize) -> Result<()> {
    let db = crate::store::postgres::ScratchDatabase::create(url).map_err(|e| anyhow!("{e}"))?;
    let url = db.url();
    let key = crate::store::seal::JournalKey::random().map_err(|e| anyhow!("{e}"))?;
    let open = |url: String, key: crate::store::seal::JournalKey| async move {
        tokio::task::spawn_blocking(move || {
            crate::store::postgres::PgStore::open(
                &url,
                crate::store::seal::KeySource::Explicit(key),
            )
        })
        .await?
        .map_err(|e| anyhow!("{e}"))
    };
    let (store_a, store_b) = (
        open(url.into(), key.clone()).await?,
        open(url.into(), key).await?,
    );
    let (wf_a, _) = compile::load("w1.yaml", W1, &Default::default(), &Rules::shared());
    let (wf_b, diags) = compile::load("w1.yaml", W1, &Default::default(), &Rules::shared());
    let a = Driver::with_lease(
        Arc::new(store_a),
        Arc::new(Unanswered),
        Arc::new(SystemClock),
        None,
        FAILOVER_LEASE_MS,
    );
    a.install(wf_a.ok_or_else(|| anyhow!("W1 invalid"))?)
        .map_err(|e| anyhow!(e))?;
    let finished: Finished = Arc::new(Mutex::new(HashMap::new()));
    let observer = {
        let finished = finished.clone();
        Arc::new(move |id: &str, r: &Record| {
            if r.is_final() {
                finished
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), Instant::now());
            }
        })
    };
    let mut host = crate::plugin_host::Canned::new();
    host.answer("bench.pay", Ok(json!({"ok": true})));
    let b = Driver::with_lease(
        Arc::new(store_b),
        Arc::new(host),
        Arc::new(SystemClock),
        Some(observer),
        FAILOVER_LEASE_MS,
    );
    b.install(wf_b.ok_or_else(|| anyhow!("W1 invalid: {diags:?}"))?)
        .map_err(|e| anyhow!(e))?;
    let b_ownership = tokio::spawn(b.clone().run_ownership());
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let started = a
            .start("bench-w1", json!({"n": n}), None)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        ids.push(started.id);
    }
    // A's last heartbeat; from now on nothing renews its claims.
    a.heartbeat();
    let stopped = Instant::now();
    drop(a);
    let deadline = stopped + std::time::Duration::from_secs(60);
    loop {
        let done = {
            let f = finished.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter().all(|id| f.contains_key(id))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    b_ownership.abort();
    let f = finished.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut took: Vec<f64> = ids
        .iter()
        .filter_map(|id| {
            f.get(id)
                .map(|t| t.duration_since(stopped).as_secs_f64() * 1000.0)
        })
        .collect();
    took.sort_by(|a, b| a.total_cmp(b));
    println!(
        "failover on postgres, lease {FAILOVER_LEASE_MS} ms: {} of {count} instances whose owner stopped mid-call finished on the other daemon; from the owner's last heartbeat: first {:.0} ms, p50 {:.0} ms, last {:.0} ms",
        took.len(),
        took.first().copied().unwrap_or(f64::NAN),
        pct(&took, 0.5),
        took.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
