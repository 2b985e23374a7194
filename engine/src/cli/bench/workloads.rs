//! W1 and W2 of the peer comparison, measured as it was: a real `casework serve` in a
//! process of its own (this binary, on a scratch data directory, with the test plugin
//! for the call), driven over HTTP by clients in this process.
//!
//! - **W1**: workflows of three steps (a rule, a call of the plugin's trivial `count`
//!   action, a rule) started by 32 clients. Each client starts one with `?wait=10s`
//!   and takes the answer, which comes once the instance has completed, as the
//!   end-to-end latency; the start latency is from a second pass whose clients only
//!   start (the instances run on in the background meanwhile). The daemon's CPU time
//!   (user + system, from `/proc`) over the first pass, per workflow.
//! - **W2**: a fresh daemon; instances that park on an event, started by the clients
//!   (each start waits until its instance has parked); the daemon's resident memory
//!   before and after, the data directory's growth per instance, then the time for 64
//!   senders to deliver every instance's event.

use super::{pct, rss_mb_of, PARKED};
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const W1: &str = r#"workflow: w1
version: 1
input:
  n: { type: integer, required: true }
steps:
  - id: decide
    rule: vars.amount = input.n * 100
    next: count
  - id: count
    call: bench.count
    with: { amount: "${vars.amount}" }
    save_as: counted
    next: record
  - id: record
    rule: vars.done = true
    next: end
  - id: end
    complete: { output: { done: "${vars.done}" } }
"#;

/// What the workloads are run with.
pub struct Workloads<'a> {
    pub w1_workflows: usize,
    pub w2_parked: usize,
    pub clients: usize,
    pub senders: usize,
    /// Folder holding `hostile.wasm` and its `plugin.toml`.
    pub hostile: &'a Path,
}

/// One W1 pass: per request, when it was sent and how long its answer took (ms).
struct Pass {
    secs: f64,
    latencies: Vec<f64>,
}

/// A `casework serve` child on a scratch directory; killed when dropped.
struct Daemon {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Daemon {
    fn start(name: &str, hostile: &Path) -> Result<Daemon> {
        let dir =
            std::env::temp_dir().join(format!("casework-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("workflows"))?;
        std::fs::write(dir.join("workflows/w1.yaml"), W1)?;
        std::fs::write(dir.join("workflows/w2.yaml"), PARKED)?;
        let plugin = dir.join("plugins/bench");
        std::fs::create_dir_all(&plugin)?;
        let wasm = hostile.join("hostile.wasm");
        std::fs::copy(&wasm, plugin.join("bench.wasm")).with_context(|| {
            format!(
                "{} is missing; run `bash plugins/build.sh` first",
                wasm.display()
            )
        })?;
        let manifest = std::fs::read_to_string(hostile.join("plugin.toml"))?
            .replace("name = \"hostile\"", "name = \"bench\"");
        std::fs::write(plugin.join("plugin.toml"), manifest)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--workflows")
            .arg(dir.join("workflows"))
            .arg("--plugins")
            .arg(dir.join("plugins"))
            .arg("--no-reload")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("CASEWORK_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().context("starting `casework serve`")?;
        let daemon = Daemon {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = ureq::get(&format!("{}/readyz", daemon.addr)).call() {
                if r.status() == 200 {
                    return Ok(daemon);
                }
            }
            if Instant::now() > deadline {
                return Err(anyhow!("the daemon did not become ready within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory, MiB.
    fn rss_mib(&self) -> f64 {
        rss_mb_of(&self.child.id().to_string())
    }

    /// CPU time used so far (user + system), seconds.
    fn cpu_secs(&self) -> f64 {
        crate::daemon::process::usage(&self.child.id().to_string()).map_or(0.0, |u| u.cpu_seconds)
    }

    /// Journal flushes so far and the seconds they took, from `/metrics`.
    fn flushes(&self) -> (f64, f64) {
        let text = ureq::get(&format!("{}/metrics", self.addr))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            value("casework_journal_flush_duration_seconds_count"),
            value("casework_journal_flush_duration_seconds_sum"),
        )
    }

    fn data_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => {
                        use std::os::unix::fs::MetadataExt;
                        // Blocks in use, not the apparent size: sled preallocates.
                        m.blocks() * 512
                    }
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir.join("data"))
    }
}

/// Runs `per_client` requests on each of `clients` threads with keep-alive agents;
/// `request(agent, client, i)` returns an error text for an answer that is not what
/// was asked.
fn run_clients(
    clients: usize,
    total: usize,
    request: impl Fn(&ureq::Agent, usize, usize) -> Result<()> + Send + Sync + 'static,
) -> Result<Pass> {
    let request = std::sync::Arc::new(request);
    let per_client = total.div_ceil(clients);
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let request = request.clone();
            std::thread::spawn(move || -> Result<Vec<f64>> {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let mut lat = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let t = Instant::now();
                    request(&agent, c, i)?;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(lat)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for t in threads {
        latencies.extend(
            t.join()
                .map_err(|_| anyhow!("a client thread panicked"))??,
        );
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(Pass {
        secs: t0.elapsed().as_secs_f64(),
        latencies,
    })
}

fn post(agent: &ureq::Agent, url: &str, body: &Value, expect: u16) -> Result<Value> {
    let mut resp = agent
        .post(url)
        .send_json(body)
        .map_err(|e| anyhow!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    if status != expect {
        return Err(anyhow!("{url} answered {status} (expected {expect}): {v}"));
    }
    Ok(v)
}

/// Runs W1 and W2 and prints the table.
pub fn run(w: &Workloads<'_>) -> Result<()> {
    let clients = w.clients.max(1);
    let mut rows: Vec<(String, String)> = Vec::new();

    let d = Daemon::start("w1", w.hostile)?;
    // Warm-up: the plugin's first calls fault in its memory slots.
    run_clients(4, 200, {
        let url = format!("{}/v1/workflows/w1/instances?wait=10s", d.addr);
        move |a, _, i| post(a, &url, &json!({"n": i}), 200).map(|_| ())
    })?;
    let cpu0 = d.cpu_secs();
    let flushes0 = d.flushes();
    let waited = run_clients(clients, w.w1_workflows, {
        let url = format!("{}/v1/workflows/w1/instances?wait=10s", d.addr);
        move |a, _, i| {
            let v = post(a, &url, &json!({"n": i}), 200)?;
            if v["status"] != "completed" {
                return Err(anyhow!("a W1 instance ended {}: {v}", v["status"]));
            }
            Ok(())
        }
    })?;
    let cpu = d.cpu_secs() - cpu0;
    let n = waited.latencies.len();
    let flushes = d.flushes();
    let (flushes, flush_secs) = (flushes.0 - flushes0.0, flushes.1 - flushes0.1);
    println!(
        "w1: {flushes:.0} journal flushes for {n} workflows ({:.2} per workflow, {:.2} ms each on average)",
        flushes / n.max(1) as f64,
        flush_secs * 1000.0 / flushes.max(1.0)
    );
    let started = run_clients(clients, w.w1_workflows, {
        let url = format!("{}/v1/workflows/w1/instances", d.addr);
        move |a, _, i| post(a, &url, &json!({"n": i}), 201).map(|_| ())
    })?;
    drop(d);
    rows.push((
        format!("W1: {n} workflows (rule, plugin call, rule), {clients} clients: workflows/s"),
        format!("{:.0}", n as f64 / waited.secs),
    ));
    rows.push((
        "W1 start p50 / p99".into(),
        format!(
            "{:.1} / {:.1} ms",
            pct(&started.latencies, 0.5),
            pct(&started.latencies, 0.99)
        ),
    ));
    rows.push((
        "W1 start → completion p50 / p99".into(),
        format!(
            "{:.1} / {:.1} ms",
            pct(&waited.latencies, 0.5),
            pct(&waited.latencies, 0.99)
        ),
    ));
    rows.push((
        "engine CPU per W1 workflow".into(),
        format!("{:.2} ms", cpu * 1000.0 / n.max(1) as f64),
    ));

    let d = Daemon::start("w2", w.hostile)?;
    let rss0 = d.rss_mib();
    let disk0 = d.data_bytes();
    let parked = run_clients(clients, w.w2_parked, {
        let url = format!("{}/v1/workflows/bench-parked/instances?wait=10s", d.addr);
        move |a, c, i| {
            let v = post(a, &url, &json!({"key": format!("k{c}-{i}")}), 200)?;
            if v["status"] != "parked" {
                return Err(anyhow!("a W2 instance is {}: {v}", v["status"]));
            }
            Ok(())
        }
    })?;
    let count = parked.latencies.len();
    // sled writes its log in the background after a flush; give it a moment to settle.
    std::thread::sleep(Duration::from_secs(2));
    let rss = d.rss_mib();
    let disk = d.data_bytes().saturating_sub(disk0);
    let per_client = w.w2_parked.div_ceil(clients);
    let senders = w.senders.max(1);
    let keys: Vec<String> = (0..clients)
        .flat_map(|c| (0..per_client).map(move |i| format!("k{c}-{i}")))
        .collect();
    let keys = std::sync::Arc::new(keys);
    let released = run_clients(senders, keys.len(), {
        let url = format!("{}/v1/events", d.addr);
        let per_sender = keys.len().div_ceil(senders);
        move |a, s, i| {
            let Some(key) = keys.get(s * per_sender + i) else {
                return Ok(());
            };
            let v = post(a, &url, &json!({"type": "go", "key": key}), 200)?;
            if v["woken"].as_array().map_or(0, Vec::len) != 1 {
                return Err(anyhow!("the event for {key} woke {}", v["woken"]));
            }
            Ok(())
        }
    })?;
    drop(d);
    rows.push((
        format!("W2: {count} instances parked on an event: RSS"),
        format!("{rss:.1} MiB ({rss0:.1} MiB before parking)"),
    ));
    rows.push((
        "W2 disk per parked instance".into(),
        format!("{:.2} KiB", disk as f64 / 1024.0 / count.max(1) as f64),
    ));
    rows.push((
        format!("W2 release all {count} by events ({senders} concurrent senders)"),
        format!("{:.2} s", released.secs),
    ));

    println!("\n| workload | Casework |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}
