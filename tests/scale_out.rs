//! Three `casework serve` processes on one PostgreSQL database (start it with
//! `bash tests/postgres.sh`), running the shipped refund workflow with the real payments
//! plugin against a Stripe-compatible fake on 127.0.0.1 that counts refunds per
//! idempotency key. While 500 refunds run (some started twice at once on two daemons,
//! some waiting for an approval sent to any daemon), a random daemon is SIGKILLed and
//! restarted 20 times. Every refund must end paid, exactly once, whichever daemon held it.

use casework::store::seal::JournalKey;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::daemon::{self, Daemon};
use support::postgres::TestDb;
use support::refunds::{self, refund_input};

mod support {
    pub mod daemon;
    pub mod postgres;
    pub mod refunds;
}

const SECRET_KEY: &str = "sk_test_scale_3c2b1a";
const REFUNDS: usize = 500;
/// Refunds above the agent limit: each waits for an approval event.
const APPROVALS: usize = 25;
const KILLS: usize = 20;
/// Short, so 20 failovers fit in a test; the default is 10 s.
const LEASE_MS: u64 = 1_000;

/// One of the three daemons: its port and data folder stay the same across restarts.
struct Node {
    name: String,
    port: u16,
    daemon: Option<Daemon>,
    starts: u32,
    /// Its plugins folder, under the test's folder.
    plugins: &'static str,
}

impl Node {
    /// A daemon not started yet, on a free port, with its plugins from `plugins`.
    fn new(name: &str, plugins: &'static str) -> Node {
        Node {
            name: name.to_string(),
            port: daemon::free_port(),
            daemon: None,
            starts: 0,
            plugins,
        }
    }
}

fn spawn(dir: &Path, node: &mut Node, url: &str, key: &str) {
    node.starts += 1;
    let log = dir.join(format!("{}-{}.log", node.name, node.starts));
    let mut c = Command::new(env!("CARGO_BIN_EXE_casework"));
    c.args(["serve", "--listen", &format!("127.0.0.1:{}", node.port)])
        .arg("--data")
        .arg(dir.join(&node.name))
        .arg("--workflows")
        .arg(dir.join("workflows"))
        .arg("--plugins")
        .arg(dir.join(node.plugins))
        .arg("--secrets")
        .arg(dir.join("secrets.toml"))
        .args(["--store", url, "--no-reload"])
        .args(["--lease-ms", &LEASE_MS.to_string()])
        .env("CASEWORK_JOURNAL_KEY", key)
        .env("CASEWORK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    node.daemon = Some(daemon::start(c, node.port));
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// POST to the daemons from `first` on until one answers 2xx; a killed daemon refuses the
/// connection, an overloaded one says 503.
fn post_any(ports: &[u16], first: usize, path: &str, body: &Value, key: Option<&str>) -> Value {
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = first;
    loop {
        assert!(Instant::now() < deadline, "no daemon accepted POST {path}");
        let port = ports[i % ports.len()];
        let mut req = agent.post(&format!("http://127.0.0.1:{port}{path}"));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Ok(mut resp) = req.send_json(body) {
            if resp.status().is_success() {
                return resp.body_mut().read_json().unwrap();
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get_any(ports: &[u16], path: &str) -> Option<Value> {
    let agent = agent();
    for port in ports {
        if let Ok(mut resp) = agent.get(&format!("http://127.0.0.1:{port}{path}")).call() {
            if resp.status().is_success() {
                return resp.body_mut().read_json().ok();
            }
        }
    }
    None
}

#[test]
fn three_daemons_on_postgres_pay_every_refund_once_through_twenty_sigkills() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Up to 40 ms per request: a window in which a daemon can die with a payment in flight.
    let (stripe, stripe_port) = runtime.block_on(refunds::start(SECRET_KEY, 0..40));
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    refunds::install(dir.path(), stripe_port, SECRET_KEY);
    let key = JournalKey::random().unwrap().to_hex();
    let nodes: Vec<Arc<Mutex<Node>>> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let mut node = Node::new(name, "plugins");
            spawn(dir.path(), &mut node, db.url(), &key);
            Arc::new(Mutex::new(node))
        })
        .collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.lock().unwrap().port).collect();

    // The killer: SIGKILL a random daemon at a random moment, restart it, 20 times.
    let killer = {
        let (nodes, url, key, dir) = (
            nodes.clone(),
            db.url().to_string(),
            key.clone(),
            dir.path().to_path_buf(),
        );
        std::thread::spawn(move || {
            let mut rng = rand::rng();
            for _ in 0..KILLS {
                std::thread::sleep(Duration::from_millis(rng.random_range(100..600)));
                let mut node = nodes[rng.random_range(0..nodes.len())].lock().unwrap();
                if let Some(mut d) = node.daemon.take() {
                    d.child.kill().unwrap();
                    d.child.wait().unwrap();
                }
                // Sometimes the others run alone past the lease before it comes back.
                if rng.random_bool(0.3) {
                    std::thread::sleep(Duration::from_millis(LEASE_MS * 2));
                }
                spawn(&dir, &mut node, &url, &key);
            }
        })
    };

    // Clients: every refund once, a tenth of them twice at the same moment on two daemons.
    let ids: Arc<Mutex<BTreeMap<usize, BTreeSet<String>>>> = Default::default();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (ports, ids) = (ports.clone(), ids.clone());
            std::thread::spawn(move || {
                for n in (c..REFUNDS).step_by(8) {
                    let amount = if n < APPROVALS {
                        45_000
                    } else {
                        1_000 + n as u64
                    };
                    let body = refund_input(&format!("ord-{n}"), amount);
                    let k = format!("refund-{n}");
                    let twice = n % 10 == 0;
                    let starts: Vec<_> = (0..if twice { 2 } else { 1 })
                        .map(|i| {
                            let (ports, body, k) = (ports.clone(), body.clone(), k.clone());
                            std::thread::spawn(move || {
                                post_any(
                                    &ports,
                                    n + i,
                                    "/v1/workflows/refund/instances",
                                    &body,
                                    Some(&k),
                                )
                            })
                        })
                        .collect();
                    for s in starts {
                        let started = s.join().unwrap();
                        let id = started["id"].as_str().expect("an instance id").to_string();
                        ids.lock().unwrap().entry(n).or_default().insert(id);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let ids = ids.lock().unwrap().clone();
    for (n, got) in &ids {
        assert_eq!(
            got.len(),
            1,
            "refund {n} was answered with two instances: {got:?}"
        );
    }
    assert_eq!(ids.len(), REFUNDS);
    let id_of = |n: usize| ids[&n].iter().next().unwrap().clone();

    // Approvals, each sent to some daemon once its refund waits for one; whichever daemon
    // holds the refund must get it.
    let status = |id: &str| {
        get_any(&ports, &format!("/v1/instances/{id}"))
            .map(|v| v["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    // Whether refund `n`'s journal shows its approval taken: a daemon killed after the
    // delivery was journaled but before it answered leaves the resent approval nobody
    // waiting (`woken: []`, and never kept: the engine's at-most-once window), while the
    // refund has gone on.
    let took_approval = |n: usize| {
        get_any(&ports, &format!("/v1/instances/{}", id_of(n))).is_some_and(|v| {
            v["journal"].as_array().is_some_and(|j| {
                j.iter().any(|r| {
                    r["record"] == "event_received"
                        && r["event"]["id"] == json!(format!("approval-{n}"))
                })
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut approved = BTreeSet::new();
    let mut sent = BTreeSet::new();
    while approved.len() < APPROVALS {
        assert!(
            Instant::now() < deadline,
            "refunds waiting for approval never parked or never took it: {:?}",
            (0..APPROVALS)
                .filter(|n| !approved.contains(n))
                .map(|n| (n, status(&id_of(n)), sent.contains(&n)))
                .collect::<Vec<_>>()
        );
        for n in 0..APPROVALS {
            if approved.contains(&n) {
                continue;
            }
            if sent.contains(&n) && took_approval(n) {
                approved.insert(n);
                continue;
            }
            if status(&id_of(n)) != "parked" {
                continue;
            }
            let mut event = refunds::approval(&format!("ord-{n}"), 45_000);
            event["id"] = json!(format!("approval-{n}"));
            let answer = post_any(&ports, n, "/v1/events", &event, None);
            sent.insert(n);
            if answer["woken"] == json!([id_of(n)]) {
                approved.insert(n);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Everything ends, whoever held it when its daemon died.
    for n in 0..REFUNDS {
        let id = id_of(n);
        let view = loop {
            assert!(
                Instant::now() < deadline,
                "refund {n} ({id}) never finished: {}",
                status(&id)
            );
            match get_any(&ports, &format!("/v1/instances/{id}")) {
                Some(v) if v["status"] != "running" && v["status"] != "parked" => break v,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        assert_eq!(view["status"], "completed", "refund {n}: {view}");
        assert_eq!(view["output"]["status"], "refunded", "refund {n}: {view}");
        // Each timer fired once: a frame's timer firing is never followed by another
        // firing with nothing in between that could have set a new timer.
        let mut last: BTreeMap<u64, Value> = BTreeMap::new();
        for r in view["journal"].as_array().expect("the journal") {
            let Some(frame) = r["frame"].as_u64() else {
                continue;
            };
            if r["record"] == "timer_fired" {
                if let Some(prev) = last.get(&frame) {
                    assert!(
                        !(prev["record"] == "timer_fired" && prev["step"] == r["step"]),
                        "refund {n}: a timer fired twice: {prev} then {r}"
                    );
                }
            }
            last.insert(frame, r.clone());
        }
    }
    killer.join().unwrap();

    // Each refund paid exactly once, under one key per refund, whatever was repeated.
    let created = stripe.created.lock().unwrap().clone();
    assert_eq!(
        created.len(),
        REFUNDS,
        "one refund at the provider per request"
    );
    let requests = stripe.requests_per_key();
    assert!(
        requests.values().any(|&n| n > 1),
        "no payment was sent twice: no daemon died with one in flight, so the test proved nothing about failover"
    );
    assert_eq!(*stripe.bad_auth.lock().unwrap(), 0);
    for n in 0..REFUNDS {
        let view = get_any(&ports, &format!("/v1/instances/{}", id_of(n))).unwrap();
        let refund_id = view["output"]["refund_id"].as_str().unwrap_or_default();
        let times = created.values().filter(|(r, _)| r == refund_id).count();
        assert_eq!(
            times, 1,
            "refund {n} reports {refund_id}, which the provider created {times} times"
        );
    }
    // The secret key never reaches a log.
    for node in &nodes {
        let node = node.lock().unwrap();
        for run in 1..=node.starts {
            let log = std::fs::read_to_string(dir.path().join(format!("{}-{run}.log", node.name)))
                .unwrap_or_default();
            assert!(
                !log.contains(SECRET_KEY),
                "secret key in {}-{run}.log",
                node.name
            );
        }
    }
}

/// A daemon that lacks the payments plugin must not take over a refund (it would fail the
/// payment): it leaves the refund, and the approval sent to it, to a daemon that has the
/// plugin, and says so in `/readyz`.
#[test]
fn a_daemon_without_the_payments_plugin_leaves_refunds_to_one_that_has_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stripe, stripe_port) = runtime.block_on(refunds::start(SECRET_KEY, 0..1));
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    refunds::install(dir.path(), stripe_port, SECRET_KEY);
    // B has the other plugins of refund.yaml, not payments.
    for plugin in ["crm", "paging"] {
        let (from, to) = (
            dir.path().join("plugins").join(plugin),
            dir.path().join("plugins-b").join(plugin),
        );
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let key = JournalKey::random().unwrap().to_hex();
    let (mut a, mut b) = (Node::new("a", "plugins"), Node::new("b", "plugins-b"));
    spawn(dir.path(), &mut a, db.url(), &key);
    spawn(dir.path(), &mut b, db.url(), &key);

    // Refunds above the agent limit park, waiting for an approval; A started them.
    let orders: Vec<String> = (0..5).map(|n| format!("ord-lack-{n}")).collect();
    let ids: Vec<String> = orders
        .iter()
        .map(|o| {
            post_any(
                &[a.port],
                0,
                "/v1/workflows/refund/instances",
                &refund_input(o, 45_000),
                Some(o),
            )["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let status = |port: u16, id: &str| {
        get_any(&[port], &format!("/v1/instances/{id}"))
            .map(|v| v["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("the refunds never parked", &|| {
        ids.iter().all(|id| status(a.port, id) == "parked")
    });

    // A dies; the approvals go to B, the one daemon left.
    let mut d = a.daemon.take().unwrap();
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    for o in &orders {
        let answer = post_any(
            &[b.port],
            0,
            "/v1/events",
            &{
                let mut event = refunds::approval(o, 45_000);
                event["id"] = json!(format!("approval-{o}"));
                event
            },
            None,
        );
        assert_eq!(
            answer["woken"].as_array().map(Vec::len),
            Some(1),
            "{answer}"
        );
    }
    // B says what it cannot run, and runs none of it: after many of its ownership rounds
    // (a third of the lease each) every refund still waits, unpaid.
    until("B's /readyz never named the missing plugin", &|| {
        get_any(&[b.port], "/readyz").is_some_and(|r| {
            r["cannot_run"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["call"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("payments."))
                })
            })
        })
    });
    std::thread::sleep(Duration::from_millis(LEASE_MS * 3));
    for id in &ids {
        let view = get_any(&[b.port], &format!("/v1/instances/{id}")).unwrap();
        assert_eq!(
            view["status"],
            json!("parked"),
            "B ran a refund it cannot pay: {view}"
        );
    }
    assert!(
        stripe.requests_per_key().is_empty(),
        "paid while only B ran"
    );

    // Long polls on B for what A is about to do: B learns it from the shared store.
    let polls: Vec<_> = ids
        .iter()
        .map(|id| {
            let (id, port) = (id.clone(), b.port);
            let mut seen = get_any(&[port], &format!("/v1/instances/{id}")).unwrap()["journal"]
                .as_array()
                .unwrap()
                .len();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                for _ in 0..10 {
                    let url =
                        format!("http://127.0.0.1:{port}/v1/instances/{id}?wait=30s&after={seen}");
                    let view: Value = agent
                        .get(&url)
                        .call()
                        .unwrap()
                        .body_mut()
                        .read_json()
                        .unwrap();
                    if view["status"] == "completed" {
                        return view;
                    }
                    seen = view["journal"].as_array().unwrap().len();
                }
                panic!("{id} never completed");
            })
        })
        .collect();
    // A comes back: it finds the approvals waiting as mail and pays each refund once.
    spawn(dir.path(), &mut a, db.url(), &key);
    for p in polls {
        let view = p.join().unwrap();
        assert_eq!(view["status"], json!("completed"), "{view}");
    }
    until("the refunds never completed once A was back", &|| {
        ids.iter().all(|id| status(b.port, id) == "completed")
    });
    let paid = stripe.requests_per_key();
    assert_eq!(paid.len(), orders.len(), "{paid:?}");
    assert!(paid.values().all(|n| *n == 1), "{paid:?}");
}
