//! Seeded simulation: many instances over a few workflows (call, retry, wait, sleep,
//! parallel), a fake integration that fails at random, events at random virtual times
//! (duplicates, and some for keys nobody waits on), and crashes at random points: the
//! driver is dropped with everything it had in flight, the in-memory store keeps only what
//! was flushed plus a random prefix of what was not, and a fresh driver resumes.
//!
//! At the end every instance must have finished, no idempotency key may have been used for
//! two different effects, every effect must have been journaled (`call_started`) before it
//! was applied, every acknowledged record must still be in the journal, and replaying each
//! journal must give the state the engine reports, also after one more restart.
//!
//! `CASEWORK_SIM_SEED=N` runs one seed; `CASEWORK_SIM_SEEDS=K` runs seeds 0..K (default 200).
//! Each seed runs one to three daemons (drivers) sharing the store, as several `casework
//! serve` processes share one database. Requests go to any daemon that answers. A daemon
//! can be SIGKILLed (its store handle dies, a new daemon joins) or paused past its lease
//! (its heartbeat stops and its plugin calls hang): the others take its instances over,
//! and when it wakes up every write it tries for them must be refused.
//!
//! A seed fixes the scenario (instances, events, crash times, what the integration answers);
//! task interleaving inside a tick is tokio's and may differ between runs.
//!
//! The tests after the simulation are deterministic: they hold every flush, then crash
//! keeping an exact prefix of the writes (each prefix in turn, for one request of each
//! workflow), which is where the simulation found the driver's recovery bugs.

use casework::clock::{Clock, ManualClock};
use casework::compile::{self, rules::Rules};
use casework::daemon::driver::{InboxSettings, Observer, StartError, DEFAULT_LEASE_MS};
use casework::daemon::Driver;
use casework::plugin_host::{CallContext, CallFuture, PluginError, PluginHost};
use casework::runtime::{Event, Instance, Millis, Record};
use casework::store::memory::MemoryStore;
use casework::store::{Batch, Store, Timer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

const T0: Millis = 1_767_225_600_000;
const MIN: Millis = 60_000;

const WORKFLOWS: [&str; 8] = [
    r#"
workflow: order
version: 1
input:
  n: { type: integer, required: true }
  card: { type: string, sensitive: true }
steps:
  - id: charge
    call: pay.charge
    with: { n: "${input.n}", card: "${input.card}" }
    retry: { max_attempts: 15, backoff: 2s, max_delay: 1m }
    save_as: charge
    on_error: declined
    next: approval
  - id: approval
    wait: { event: approve, key: input.n, timeout: 2h, on_timeout: expired }
    save_as: approval
    next: nap
  - id: nap
    sleep: 10m
    next: notify
  - id: notify
    call: mail.send
    with: { n: "${input.n}" }
    retry: { max_attempts: 15, backoff: 1s, max_delay: 1m }
    save_as: mail
    next: done
  - id: done
    complete: { output: { charge: "${vars.charge.v}", by: "${vars.approval.data.by}" } }
  - id: declined
    complete: { output: { declined: "${vars.error.code}" } }
  - id: expired
    complete: { output: expired }
"#,
    r#"
workflow: fanout
version: 1
input: { n: integer }
steps:
  - id: fan
    parallel:
      branches:
        - id: chat
          steps:
            - id: post
              call: chat.post
              with: { n: "${input.n}" }
              retry: { max_attempts: 15, backoff: 1s, max_delay: 1m }
        - id: mail
          steps:
            - { id: pause, sleep: 5m, next: send }
            - id: send
              call: mail.send
              with: { n: "${input.n}" }
              retry: { max_attempts: 15, backoff: 3s, max_delay: 1m }
    save_as: out
    next: done
  - id: done
    complete: { output: "${vars.out.keys().len()}" }
"#,
    r#"
workflow: race
version: 1
input: { n: integer }
steps:
  - id: race
    parallel:
      join: first
      branches:
        - id: ack
          steps:
            - { id: wait_ack, wait: { event: ack, key: input.n, timeout: 3h, on_timeout: late } }
            - { id: late, set: { late: true } }
        - id: clock
          steps:
            - { id: nap, sleep: 45m }
    save_as: first
    next: page
  - id: page
    call: paging.notify
    with: { n: "${input.n}" }
    retry: { max_attempts: 15, backoff: 1s, max_delay: 1m }
    next: done
  - id: done
    complete: { output: done }
"#,
    r#"
workflow: poll
version: 1
input: { n: integer }
steps:
  - id: check
    call: crm.status
    with: { n: "${input.n}" }
    retry: { max_attempts: 15, backoff: 1s, max_delay: 1m }
    save_as: st
    next: decide
  - id: decide
    switch:
      - when: vars.st.ready
        goto: done
    default: later
  - id: later
    sleep: 15m
    next: check
  - id: done
    complete: { output: "${vars.st.v}" }
"#,
    r#"
workflow: parent
version: 1
input: { n: integer }
steps:
  - id: prepare
    call: crm.open
    with: { n: "${input.n}" }
    retry: { max_attempts: 15, backoff: 1s, max_delay: 1m }
    next: child
  - id: child
    subworkflow: ask
    with: { n: "${input.n}" }
    save_as: answer
    next: done
  - id: done
    complete: { output: "${vars.answer}" }
"#,
    // No timeout: only the answer ends it (the client sends it until it wakes someone).
    r#"
workflow: ask
version: 1
input: { n: integer }
steps:
  - id: ask
    wait: { event: answer, key: input.n }
    save_as: a
    next: done
  - id: done
    complete: { output: "${vars.a.data.by}" }
"#,
    // One open instance per ticket, failing until `input.ready`: retried after it, it
    // goes on; only the deterministic tests start it.
    r#"
workflow: single_late
version: 1
input: { ticket: string, ready: string }
key: input.ticket
steps:
  - id: check
    rule: if now < input.ready { throw "not ready"; }
    next: hold
  - id: hold
    wait: { event: close, key: input.ticket }
    next: done
  - id: done
    complete: { output: closed }
"#,
    // One open instance per ticket; only the deterministic tests start it.
    r#"
workflow: single
version: 1
input: { ticket: string }
key: input.ticket
steps:
  - id: hold
    wait: { event: close, key: input.ticket }
    next: done
  - id: done
    complete: { output: closed }
"#,
];

const NAMES: [&str; 5] = ["order", "fanout", "race", "poll", "parent"];

/// A deterministic hash of the seed and some parts (FNV-1a, then a splitmix finish).
fn h(seed: u64, parts: &[&dyn std::fmt::Display]) -> u64 {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for p in parts {
        for b in p.to_string().bytes().chain([0xff]) {
            x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What the outside world saw of one idempotency key.
#[derive(Clone, Debug)]
struct Applied {
    target: String,
    input: Value,
    output: Value,
    instance: String,
}

#[derive(Default)]
struct WorldState {
    applied: BTreeMap<String, Applied>,
    requests: BTreeMap<String, u32>,
    /// A key used for two different effects (target or input differ).
    conflicts: Vec<String>,
}

/// The fake integrations: fail or answer by seed, apply each key's effect once (like a
/// provider that deduplicates on the idempotency key) and record every effect applied.
struct World {
    seed: u64,
    state: Mutex<WorldState>,
}

fn visit_of(key: &str) -> u32 {
    key.rsplit(':')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl PluginHost for World {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let seed = self.seed;
            let key = ctx.idempotency_key.clone();
            let target = format!("{plugin}.{action}");
            let n = input["n"].as_i64().unwrap_or(-1);
            let visit = visit_of(&key);
            let nth = {
                let mut s = self.state.lock().unwrap();
                let c = s.requests.entry(key.clone()).or_default();
                *c += 1;
                *c
            };
            // Let other tasks run, so a crash can land in the middle of a call.
            let yields = h(seed, &[&n, &target, &visit, &nth, &"yield"]) % 4;
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            if target == "pay.charge" && h(seed, &[&n, &"declined"]).is_multiple_of(10) {
                return Err(PluginError {
                    code: "card_declined".into(),
                    message: "declined".into(),
                    retryable: false,
                });
            }
            let roll = h(seed, &[&n, &target, &visit, &nth, &"roll"]) % 100;
            if roll < 25 {
                return Err(PluginError {
                    code: "unavailable".into(),
                    message: "try later".into(),
                    retryable: true,
                });
            }
            let output = {
                let mut s = self.state.lock().unwrap();
                match s.applied.get(&key).cloned() {
                    Some(a) => {
                        if a.target != target || a.input != input || a.instance != ctx.instance_id {
                            s.conflicts.push(format!(
                                "{key}: first {} {} for {}, now {target} {input} for {}",
                                a.target, a.input, a.instance, ctx.instance_id
                            ));
                        }
                        a.output
                    }
                    None => {
                        let ready =
                            visit >= 3 || h(seed, &[&n, &visit, &"ready"]).is_multiple_of(2);
                        let output = json!({
                            "v": h(seed, &[&n, &target, &visit, &"v"]) % 1000,
                            "ready": ready,
                        });
                        s.applied.insert(
                            key.clone(),
                            Applied {
                                target: target.clone(),
                                input: input.clone(),
                                output: output.clone(),
                                instance: ctx.instance_id.clone(),
                            },
                        );
                        output
                    }
                }
            };
            if roll < 40 {
                // Applied, but the answer never arrives: the engine must retry under the same key.
                return Err(PluginError {
                    code: "timeout".into(),
                    message: "no answer".into(),
                    retryable: true,
                });
            }
            Ok(output)
        })
    }
}

#[derive(Clone, Debug)]
enum Action {
    Start(usize),
    Deliver(Event),
    Crash {
        polls: u32,
    },
    /// SIGKILL one daemon; a new one takes its place.
    Kill {
        which: usize,
    },
    /// Stop one daemon (no heartbeat, no timers, plugin calls hang) for `asleep`, from
    /// the next burst of work sent to it.
    Pause {
        which: usize,
        asleep: Millis,
    },
    Wake {
        which: usize,
    },
    /// An operator holds request `n`'s instance (`pause: true`) or lets it go on.
    Hold {
        n: usize,
        pause: bool,
    },
}

/// A daemon's view of the outside world: the shared [`World`], unless the daemon is
/// paused, when its calls hang until it wakes.
struct Gate {
    world: Arc<World>,
    paused: tokio::sync::watch::Sender<bool>,
}

impl PluginHost for Gate {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let mut paused = self.paused.subscribe();
            let _ = paused.wait_for(|p| !*p).await;
            let answer = self.world.call(plugin, action, input, ctx).await;
            // Paused while the call was out: the answer arrives when the daemon wakes.
            let _ = paused.wait_for(|p| !*p).await;
            answer
        })
    }
}

/// One daemon of a life.
struct Daemon {
    driver: Driver,
    store: MemoryStore,
    gate: Arc<Gate>,
}

impl Daemon {
    fn paused(&self) -> bool {
        *self.gate.paused.borrow()
    }
}

/// Records seen by observers, by instance and daemon.
type Observed = Arc<Mutex<BTreeMap<(String, u64), Vec<Record>>>>;

/// Everything that outlives a crash: the scenario, the store, the outside world, the clock.
struct Sim {
    seed: u64,
    rng: StdRng,
    clock: Arc<ManualClock>,
    world: Arc<World>,
    store: MemoryStore,
    queue: VecDeque<(Millis, Action)>,
    kinds: BTreeMap<usize, &'static str>,
    /// Instance ids acknowledged to the "client", by request number.
    acked: BTreeMap<usize, String>,
    /// Starts sent but not acknowledged (retried by the client after a crash).
    unacked_starts: BTreeSet<usize>,
    /// Events sent but not acknowledged (redelivered after a crash).
    unacked_events: Vec<Event>,
    /// Every event ever sent, as (type, key, data).
    sent: Vec<(String, String, Value)>,
    /// Requests whose instance an operator paused (and must resume).
    held: BTreeSet<usize>,
    holds: u32,
    /// Times the clock moved on only so that a dead daemon's lease would lapse.
    lease_waits: u32,
    /// Ids of events sent again because a crash or kill left them unanswered.
    resent: BTreeSet<String>,
    /// Ids of every event sent with one.
    sent_ids: BTreeSet<String>,
    /// Records seen by observers: durable when seen.
    /// By instance and daemon: daemons journal concurrently, so only each one's own
    /// observations are in journal order.
    observed: Observed,
    crashes: u32,
    answer_rounds: u32,
    /// Crashes that lost writes not yet flushed.
    torn: u32,
    /// Daemons sharing the store in each life.
    daemons: usize,
    kills: u32,
    pauses: u32,
    /// Writes refused because their daemon had lost the instance.
    fenced: i64,
    /// A daemon to pause in the next burst of work, which goes to it, and for how long.
    pausing: Option<(usize, Millis)>,
}

enum End {
    Crashed,
    Finished,
}

fn plan(
    seed: u64,
    rng: &mut StdRng,
    daemons: usize,
) -> (VecDeque<(Millis, Action)>, BTreeMap<usize, &'static str>) {
    let mut actions: Vec<(Millis, Action)> = Vec::new();
    let mut kinds = BTreeMap::new();
    let count = rng.random_range(6..=12);
    for n in 0..count {
        let kind = NAMES[rng.random_range(0..NAMES.len())];
        kinds.insert(n, kind);
        let start = T0 + rng.random_range(0..60) * MIN;
        actions.push((start, Action::Start(n)));
        // A double click: the same start again at the same moment, racing the first.
        for _ in 0..rng.random_range(0..=2) {
            actions.push((start, Action::Start(n)));
        }
        // An operator holds some instances for a while, then lets them go on.
        if rng.random_bool(0.3) {
            let at = start + rng.random_range(0..120) * MIN + rng.random_range(0..MIN);
            actions.push((at, Action::Hold { n, pause: true }));
            let until = at + rng.random_range(1..180) * MIN;
            actions.push((until, Action::Hold { n, pause: false }));
        }
        let event_type = match kind {
            "order" => "approve",
            "race" => "ack",
            "parent" => "answer",
            _ => continue,
        };
        for k in 0..rng.random_range(0..=3u32) {
            let at = start + rng.random_range(0..200) * MIN + rng.random_range(0..MIN);
            let event = Event {
                event_type: event_type.into(),
                key: n.to_string(),
                data: json!({"by": format!("u{n}-{k}")}),
                id: rng.random_bool(0.6).then(|| format!("ev-{seed}-{n}-{k}")),
            };
            if rng.random_bool(0.3) {
                // A duplicate, later.
                actions.push((
                    at + rng.random_range(0..30) * MIN,
                    Action::Deliver(event.clone()),
                ));
            }
            actions.push((at, Action::Deliver(event)));
        }
    }
    // Noise: events nobody waits for.
    for k in 0..rng.random_range(0..4) {
        let at = T0 + rng.random_range(0..240) * MIN;
        let event = Event {
            event_type: ["approve", "ack", "other"][rng.random_range(0..3)].into(),
            key: (1000 + k).to_string(),
            data: json!({"by": "nobody"}),
            id: None,
        };
        actions.push((at, Action::Deliver(event)));
    }
    for _ in 0..rng.random_range(0..=5) {
        let at = T0 + rng.random_range(0..240) * MIN;
        actions.push((
            at,
            Action::Crash {
                polls: rng.random_range(0..40),
            },
        ));
    }
    if daemons > 1 {
        for _ in 0..rng.random_range(0..=4) {
            let at = T0 + rng.random_range(0..240) * MIN;
            let which = rng.random_range(0..daemons);
            actions.push((at, Action::Kill { which }));
        }
        for _ in 0..rng.random_range(1..=4) {
            // Mostly while requests still arrive and calls are made.
            let at = T0 + rng.random_range(0..120) * MIN;
            let which = rng.random_range(0..daemons);
            // Well past the lease (10 s), sometimes by hours.
            let asleep = rng.random_range(1..=180) * MIN;
            actions.push((at, Action::Pause { which, asleep }));
        }
    }
    // Stable order: by time, then as planned.
    actions.sort_by_key(|a| a.0);
    (actions.into(), kinds)
}

fn input_for(n: usize, kind: &str) -> Value {
    match kind {
        "order" => json!({"n": n, "card": format!("4111-{n:04}")}),
        _ => json!({"n": n}),
    }
}

fn new_driver(sim: &Sim) -> Driver {
    new_driver_on(sim, sim.store.clone(), sim.world.clone())
}

fn new_daemon(sim: &Sim) -> Daemon {
    let store = sim.store.connect();
    let gate = Arc::new(Gate {
        world: sim.world.clone(),
        paused: tokio::sync::watch::channel(false).0,
    });
    let driver = new_driver_on(sim, store.clone(), gate.clone());
    Daemon {
        driver,
        store,
        gate,
    }
}

fn new_driver_on(sim: &Sim, store: MemoryStore, host: Arc<dyn PluginHost>) -> Driver {
    static DAEMONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let daemon = DAEMONS.fetch_add(1, Ordering::Relaxed);
    let observed = sim.observed.clone();
    let observer: Observer = Arc::new(move |id: &str, r: &Record| {
        observed
            .lock()
            .unwrap()
            .entry((id.to_string(), daemon))
            .or_default()
            .push(r.clone());
    });
    let driver = Driver::new(Arc::new(store), host, sim.clock.clone(), Some(observer));
    // Kept past the end of every scenario: an event left in the inbox is still counted.
    driver.set_inbox(InboxSettings {
        keep_ms: 30 * 24 * 60 * MIN,
        ..InboxSettings::default()
    });
    for src in WORKFLOWS {
        let (wf, diags) = compile::load("sim.yaml", src, &Default::default(), &Rules::shared());
        driver
            .install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
            .unwrap();
    }
    driver
}

type Pending = Vec<tokio::task::JoinHandle<Done>>;

enum Done {
    Started(usize, String),
    Delivered(Event),
    /// The daemon died under the request; the client sends it again elsewhere.
    Lost,
}

fn spawn_start(d: &Daemon, n: usize, kind: &'static str, tasks: &mut Pending) {
    let (driver, store) = (d.driver.clone(), d.store.clone());
    tasks.push(tokio::spawn(async move {
        match driver
            .start(kind, input_for(n, kind), Some(format!("req-{n}")))
            .await
        {
            Ok(started) => Done::Started(n, started.id),
            Err(_) if store.is_killed() => Done::Lost,
            Err(e) => panic!("start of request {n} failed: {e}"),
        }
    }));
}

fn spawn_deliver(d: &Daemon, event: Event, tasks: &mut Pending) {
    let (driver, store) = (d.driver.clone(), d.store.clone());
    tasks.push(tokio::spawn(async move {
        match driver.deliver(event.clone()).await {
            Ok(_) => Done::Delivered(event),
            Err(_) if store.is_killed() => Done::Lost,
            Err(e) => panic!("delivery failed: {e}"),
        }
    }));
}

/// A daemon that answers requests: any that is not paused (one always is not).
fn pick(sim: &mut Sim, daemons: &[Daemon]) -> usize {
    if let Some((w, _)) = sim.pausing {
        if !daemons[w].paused() {
            return w;
        }
    }
    let awake: Vec<usize> = (0..daemons.len())
        .filter(|&i| !daemons[i].paused())
        .collect();
    awake[sim.rng.random_range(0..awake.len())]
}

/// One life of the processes: runs until a planned crash (of everything, store included)
/// or until nothing can happen.
async fn life(sim: &mut Sim) -> End {
    let mut daemons: Vec<Daemon> = (0..sim.daemons).map(|_| new_daemon(sim)).collect();
    for d in &daemons {
        d.driver.resume_all().unwrap();
    }
    let mut tasks: Pending = Vec::new();
    resend_unacked(sim, &daemons, &mut tasks);
    let mut spins = 0u32;
    // A planned crash waits for the next burst of work, so that it interrupts something.
    let mut armed: Option<u32> = None;
    let mut last_now = Millis::MIN;
    loop {
        let mut lost = false;
        for t in tasks.drain(..) {
            match t.await.expect("client task") {
                Done::Started(n, id) => {
                    sim.unacked_starts.remove(&n);
                    if let Some(old) = sim.acked.insert(n, id.clone()) {
                        assert_eq!(old, id, "request {n} was answered with two instances");
                    }
                }
                Done::Delivered(e) => {
                    if let Some(i) = sim.unacked_events.iter().position(|x| *x == e) {
                        sim.unacked_events.remove(i);
                    }
                }
                Done::Lost => lost = true,
            }
        }
        if lost {
            resend_unacked(sim, &daemons, &mut tasks);
            continue;
        }
        // Like the timer loop of a real process, due timers fire while work is in flight.
        let every = sim.rng.random_range(1..8);
        for d in daemons.iter().filter(|d| !d.paused()) {
            loop {
                tokio::select! {
                    _ = d.driver.wait_idle() => break,
                    _ = async {
                        for _ in 0..every {
                            tokio::task::yield_now().await;
                        }
                    } => {
                        for d in daemons.iter().filter(|d| !d.paused()) {
                            d.driver.fire_due_timers().unwrap();
                        }
                    }
                }
            }
        }
        // Heartbeats of every daemon awake first, then mail and takeovers: an awake
        // daemon's claims do not lapse only because the virtual clock jumped.
        for d in daemons.iter().filter(|d| !d.paused()) {
            d.driver.heartbeat();
        }
        let mut woken = 0;
        for d in daemons.iter().filter(|d| !d.paused()) {
            woken += d.driver.tick_ownership().unwrap();
        }

        let now = sim.clock.now_ms();
        while sim.queue.front().is_some_and(|(at, _)| *at <= now) {
            let (_, action) = sim.queue.pop_front().unwrap();
            match action {
                Action::Start(n) => {
                    sim.unacked_starts.insert(n);
                    let i = pick(sim, &daemons);
                    spawn_start(&daemons[i], n, sim.kinds[&n], &mut tasks);
                }
                Action::Deliver(e) => {
                    sim.sent
                        .push((e.event_type.clone(), e.key.clone(), e.data.clone()));
                    sim.sent_ids.extend(e.id.clone());
                    sim.unacked_events.push(e.clone());
                    let i = pick(sim, &daemons);
                    spawn_deliver(&daemons[i], e, &mut tasks);
                }
                Action::Crash { polls } => {
                    armed.get_or_insert(polls);
                }
                Action::Kill { which } => {
                    let d = &mut daemons[which];
                    let _ = d.gate.paused.send_replace(false);
                    sim.fenced += d.driver.inner().stats.fenced.load(Ordering::Relaxed);
                    d.store.kill();
                    *d = new_daemon(sim);
                    d.driver.resume_all().unwrap();
                    sim.kills += 1;
                }
                Action::Pause { which, asleep } => {
                    // Never the last daemon awake: someone must answer the client.
                    let awake = daemons.iter().filter(|d| !d.paused()).count();
                    if awake > 1 && !daemons[which].paused() {
                        sim.pausing.get_or_insert((which, asleep));
                    }
                }
                Action::Wake { which } => {
                    let _ = daemons[which].gate.paused.send_replace(false);
                }
                Action::Hold { n, pause } => {
                    // A resume only follows a pause that was taken; a pause only of an
                    // instance the client knows.
                    let Some(id) = sim.acked.get(&n).cloned() else {
                        continue;
                    };
                    if !pause && !sim.held.contains(&n) {
                        continue;
                    }
                    let i = pick(sim, &daemons);
                    let d = &daemons[i];
                    match d.driver.hold(&id, pause, "sim", "operator").await {
                        Ok(_) => {
                            sim.holds += 1;
                            if pause {
                                sim.held.insert(n);
                            } else {
                                sim.held.remove(&n);
                            }
                        }
                        Err(casework::daemon::driver::HoldError::Refused(_)) => {}
                        // Its daemon died under it: asked again in a moment.
                        Err(_) if d.store.is_killed() => {
                            sim.queue.push_front((now, Action::Hold { n, pause }));
                            break;
                        }
                        Err(e) => panic!("hold of request {n} failed: {e}"),
                    }
                }
            }
        }
        let mut fired = 0;
        if let Some((w, asleep)) = sim.pausing {
            // Due timers go to the daemon about to pause, too.
            fired += daemons[w].driver.fire_due_timers().unwrap();
            if !tasks.is_empty() || fired > 0 {
                // The pause lands in the middle of the work just sent to it: its calls
                // are out (or about to be) when it stops.
                for _ in 0..sim.rng.random_range(0..4) {
                    tokio::task::yield_now().await;
                }
                let _ = daemons[w].gate.paused.send_replace(true);
                let wake = now + asleep;
                let at = sim.queue.partition_point(|(t, _)| *t <= wake);
                sim.queue.insert(at, (wake, Action::Wake { which: w }));
                sim.pausing = None;
                sim.pauses += 1;
            }
        }
        for d in daemons.iter().filter(|d| !d.paused()) {
            fired += d.driver.fire_due_timers().unwrap();
        }
        if let Some(polls) = armed {
            if !tasks.is_empty() || fired > 0 {
                // The crash lands in the next burst of work: let it run a little, then die.
                for _ in 0..polls {
                    tokio::task::yield_now().await;
                }
                for d in &daemons {
                    sim.fenced += d.driver.inner().stats.fenced.load(Ordering::Relaxed);
                }
                return End::Crashed;
            }
        }
        if !tasks.is_empty() || woken > 0 {
            continue;
        }
        if fired > 0 {
            spins = if now == last_now { spins + 1 } else { 0 };
            last_now = now;
            assert!(
                spins < 10_000,
                "timers due at {now} fire over and over without being consumed: {:?}",
                sim.store
                    .due_timers(now, 10)
                    .unwrap()
                    .into_iter()
                    .map(|t| {
                        let meta = sim.store.instance(&t.instance).unwrap();
                        let journal = sim.store.journal(&t.instance).unwrap();
                        format!("{t:?}: {meta:?}, journal {journal:#?}")
                    })
                    .collect::<Vec<_>>()
            );
            continue;
        }
        let next_timer = sim.store.next_timer().unwrap();
        let next_action = sim.queue.front().map(|(at, _)| *at);
        let next = match (next_timer, next_action) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next {
            Some(at) if at > now => sim.clock.advance_to(at),
            // Due, but left to a daemon that owns it and is paused: time passes until its
            // lease lapses (or it wakes).
            Some(_) if daemons.iter().any(Daemon::paused) => sim.clock.advance_to(now + 1_000),
            Some(_) => tokio::task::yield_now().await,
            // Cannot happen (a paused daemon's wake-up is queued), but must not hang.
            None if daemons.iter().any(Daemon::paused) => {
                for d in &daemons {
                    d.gate.paused.send_replace(false);
                }
            }
            // Nothing is due, but instances that should be running wait for a dead
            // daemon's lease to lapse (it was killed holding them): time passes.
            None if !sim.store.runnable().unwrap().is_empty() && sim.lease_waits < 100 => {
                sim.lease_waits += 1;
                sim.clock.advance_to(now + DEFAULT_LEASE_MS + 1);
            }
            None => {
                // Nothing left to happen. The client answers every `ask` that is still
                // unanswered (an answer sent before the question was asked reaches nobody).
                // Like a person looking at the case: answered once the child's journal has it.
                let answered = |n: &usize| {
                    sim.acked.get(n).is_some_and(|id| {
                        sim.store
                            .journal(&format!("{id}.child.1"))
                            .unwrap()
                            .iter()
                            .any(|r| matches!(r, Record::EventReceived { .. }))
                    })
                };
                let unanswered: Vec<usize> = sim
                    .kinds
                    .iter()
                    .filter(|(n, k)| **k == "parent" && !answered(n))
                    .map(|(n, _)| *n)
                    .collect();
                if unanswered.is_empty() {
                    for d in &daemons {
                        sim.fenced += d.driver.inner().stats.fenced.load(Ordering::Relaxed);
                    }
                    return End::Finished;
                }
                sim.answer_rounds += 1;
                if sim.answer_rounds >= 50 {
                    let mut report = String::new();
                    for n in &unanswered {
                        let id = sim.acked.get(n).cloned().unwrap_or_default();
                        for m in sim.store.instances(None, usize::MAX).unwrap() {
                            if m.id.starts_with(&id) && !id.is_empty() {
                                report +=
                                    &format!("\n{m:?}\n{:#?}", sim.store.journal(&m.id).unwrap());
                            }
                        }
                    }
                    panic!("requests {unanswered:?} are never asked their question{report}");
                }
                for n in unanswered {
                    let e = Event {
                        event_type: "answer".into(),
                        key: n.to_string(),
                        data: json!({"by": format!("late-{n}")}),
                        id: None,
                    };
                    sim.queue.push_back((now + MIN, Action::Deliver(e)));
                }
            }
        }
    }
}

/// The client sends again what it got no answer for, each to a daemon that answers.
fn resend_unacked(sim: &mut Sim, daemons: &[Daemon], tasks: &mut Pending) {
    for n in sim.unacked_starts.clone() {
        let i = pick(sim, daemons);
        spawn_start(&daemons[i], n, sim.kinds[&n], tasks);
    }
    for e in sim.unacked_events.clone() {
        sim.resent.extend(e.id.clone());
        let i = pick(sim, daemons);
        spawn_deliver(&daemons[i], e, tasks);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Snapshots of every instance the store knows, by id.
fn snapshots(driver: &Driver, store: &MemoryStore) -> BTreeMap<String, String> {
    store
        .instances(None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|m| {
            let inst = driver.snapshot(&m.id).expect("loads");
            (m.id, format!("{inst:?}"))
        })
        .collect()
}

fn is_subsequence(small: &[Record], big: &[Record]) -> bool {
    let mut it = big.iter();
    small.iter().all(|s| it.any(|b| b == s))
}

fn run_seed(seed: u64) -> (String, i64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let daemons = 1 + (seed % 3) as usize;
    let (queue, kinds) = plan(seed, &mut rng, daemons);
    let mut sim = Sim {
        seed,
        rng,
        clock: Arc::new(ManualClock::new(T0)),
        world: Arc::new(World {
            seed,
            state: Mutex::new(WorldState::default()),
        }),
        store: MemoryStore::new(),
        queue,
        kinds,
        acked: BTreeMap::new(),
        unacked_starts: BTreeSet::new(),
        unacked_events: Vec::new(),
        sent: Vec::new(),
        resent: BTreeSet::new(),
        held: BTreeSet::new(),
        holds: 0,
        lease_waits: 0,
        sent_ids: BTreeSet::new(),
        observed: Arc::new(Mutex::new(BTreeMap::new())),
        crashes: 0,
        answer_rounds: 0,
        torn: 0,
        daemons,
        kills: 0,
        pauses: 0,
        fenced: 0,
        pausing: None,
    };
    loop {
        let rt = runtime();
        let end = rt.block_on(life(&mut sim));
        match end {
            End::Crashed => {
                let pending = sim.store.pending_writes();
                let keep = sim.rng.random_range(0..=pending);
                if keep < pending {
                    sim.torn += 1;
                }
                // Kill the store handles first, so nothing the dying runtime still does lands.
                sim.store = sim.store.crash(keep);
                rt.shutdown_background();
                sim.crashes += 1;
            }
            End::Finished => {
                rt.shutdown_background();
                break;
            }
        }
    }
    check(&mut sim);
    let applied = sim.world.state.lock().unwrap().applied.len();
    let summary = format!(
        "seed {seed}: {} instances, {} daemons, {} crashes ({} lost unflushed writes), {} kills, {} pauses, {} fenced writes, {} effects, {} events sent, {} holds, finished at +{} min",
        sim.acked.len(),
        sim.daemons,
        sim.crashes,
        sim.torn,
        sim.kills,
        sim.pauses,
        sim.fenced,
        applied,
        sim.sent.len(),
        sim.holds,
        (sim.clock.now_ms() - T0) / MIN
    );
    (summary, sim.fenced)
}

fn check(sim: &mut Sim) {
    let seed = sim.seed;
    let rt = runtime();
    // Everything the client asked for was answered and has finished.
    assert!(
        sim.unacked_starts.is_empty(),
        "unanswered starts: {:?}",
        sim.unacked_starts
    );
    assert_eq!(sim.acked.len(), sim.kinds.len());
    let metas = sim.store.instances(None, usize::MAX).unwrap();
    for m in &metas {
        assert!(
            m.is_final(),
            "instance {} of {} ended {}; its journal ends with {:#?}",
            m.id,
            m.workflow,
            m.status,
            sim.store
                .journal(&m.id)
                .unwrap()
                .iter()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
        );
    }
    let ids: BTreeSet<&String> = sim.acked.values().collect();
    assert_eq!(ids.len(), sim.acked.len(), "two requests got one instance");
    let top_level = metas.iter().filter(|m| m.parent.is_none()).count();
    assert_eq!(
        top_level,
        sim.kinds.len(),
        "one instance per request, however often it was sent"
    );
    for id in &ids {
        assert!(
            metas.iter().any(|m| &&m.id == id),
            "acknowledged instance {id} is missing"
        );
    }

    let world = sim.world.state.lock().unwrap();
    assert!(
        world.conflicts.is_empty(),
        "idempotency keys reused: {:#?}",
        world.conflicts
    );
    let driver = rt.block_on(async { new_driver(sim) });
    let sent: BTreeSet<String> = sim
        .sent
        .iter()
        .map(|(t, k, d)| format!("{t}/{k}/{d}"))
        .collect();
    let mut journaled_keys = BTreeSet::new();
    // Where each event with an id ended up: journals that received it, the inbox.
    let mut places: BTreeMap<String, usize> = BTreeMap::new();
    for m in &metas {
        assert!(
            sim.store.mail(&m.id, 10).unwrap().is_empty(),
            "{}: mail is left for an instance that has ended",
            m.id
        );
    }
    for b in sim.store.inbox(None, usize::MAX).unwrap() {
        if let Some(id) = &b.event.id {
            *places.entry(id.clone()).or_default() += 1;
        }
    }
    for m in &metas {
        let journal = sim.store.journal(&m.id).unwrap();
        let wf = driver
            .inner()
            .registry
            .pinned(&sim.store, &m.hash, &driver.inner().rules)
            .unwrap();
        // Replaying the journal gives the final state the index reports.
        let replayed = Instance::replay(&m.id, &wf, &journal);
        assert!(
            replayed.status().is_final(),
            "{}: replay ends {:?}",
            m.id,
            replayed.status()
        );
        assert_eq!(replayed.status().as_str(), m.status, "{}", m.id);
        assert_eq!(replayed.updated_at(), m.updated_at, "{}", m.id);
        assert_eq!(replayed.records() as usize, journal.len());
        // Records acknowledged (observed after their flush) were never lost or rewritten.
        let observed = sim.observed.lock().unwrap();
        let by_daemon = observed.range((m.id.clone(), 0)..=(m.id.clone(), u64::MAX));
        for ((_, daemon), seen) in by_daemon {
            assert!(
                is_subsequence(seen, &journal),
                "{}: records acknowledged by daemon {daemon} are missing from the journal\nobserved: {seen:#?}\njournal: {journal:#?}",
                m.id
            );
        }
        let mut started: BTreeMap<(u32, String, u32), String> = BTreeMap::new();
        for r in &journal {
            match r {
                Record::CallStarted {
                    frame,
                    step,
                    attempt,
                    key,
                    ..
                } => {
                    let mut parts = key.rsplitn(3, ':');
                    let (visit, kstep, kinst) = (parts.next(), parts.next(), parts.next());
                    assert!(visit.is_some_and(|v| v.parse::<u32>().is_ok()), "{key}");
                    assert_eq!(kstep, Some(step.as_str()), "{key}");
                    assert_eq!(kinst, Some(m.id.as_str()), "{key}");
                    started.insert((*frame, step.clone(), *attempt), key.clone());
                    journaled_keys.insert(key.clone());
                }
                Record::CallSucceeded {
                    frame,
                    step,
                    attempt,
                    output,
                    ..
                } => {
                    let key = started
                        .get(&(*frame, step.clone(), *attempt))
                        .unwrap_or_else(|| panic!("{}: success without a start", m.id));
                    let applied = world
                        .applied
                        .get(key)
                        .unwrap_or_else(|| panic!("{key} succeeded but was never applied"));
                    assert_eq!(
                        &applied.output, output,
                        "{key}: the journal saw another answer"
                    );
                }
                Record::EventReceived { event, .. } => {
                    let e = format!("{}/{}/{}", event.event_type, event.key, event.data);
                    assert!(
                        sent.contains(&e),
                        "{}: received an event never sent: {e}",
                        m.id
                    );
                    if let Some(id) = &event.id {
                        *places.entry(id.clone()).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
    }
    // An event id is taken at most once, by one wait of one instance, or kept in the
    // inbox; never both, never twice. One answered at its first sending is in exactly one
    // of those places; one sent again after a crash interrupted its delivery may be in
    // none (its wait may have ended meanwhile: at most once, as documented).
    for id in &sim.sent_ids {
        let n = places.get(id).copied().unwrap_or(0);
        assert!(
            n <= 1,
            "seed {seed}: event {id} was taken or kept {n} times"
        );
        if !sim.resent.contains(id) {
            assert_eq!(
                n, 1,
                "seed {seed}: event {id} was lost (in no journal, not in the inbox)"
            );
        }
    }
    // Every effect applied was journaled first (call_started is durable before the call).
    for (key, a) in &world.applied {
        assert!(
            journaled_keys.contains(key),
            "{key} ({}) was applied but no journal has its call_started",
            a.target
        );
    }
    // Each step visit used one key: visits of a step are 1, 2, 3... without gaps.
    let mut visits: BTreeMap<(String, String), BTreeSet<u32>> = BTreeMap::new();
    for key in &journaled_keys {
        let mut parts = key.rsplitn(3, ':');
        let visit: u32 = parts.next().unwrap().parse().unwrap();
        let step = parts.next().unwrap().to_string();
        let inst = parts.next().unwrap().to_string();
        visits.entry((inst, step)).or_default().insert(visit);
    }
    for ((inst, step), v) in &visits {
        let expected: BTreeSet<u32> = (1..=v.len() as u32).collect();
        assert_eq!(v, &expected, "{inst} step {step}: visits {v:?}");
    }
    drop(world);

    // One more restart from only what is durable changes nothing.
    let before = snapshots(&driver, &sim.store);
    drop(driver);
    rt.shutdown_background();
    sim.store = sim.store.crash(0);
    let rt = runtime();
    let after = rt.block_on(async {
        let driver = new_driver(sim);
        driver.resume_all().unwrap();
        driver.wait_idle().await;
        snapshots(&driver, &sim.store)
    });
    assert_eq!(before, after, "seed {seed}: state differs after a restart");
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("CASEWORK_SIM_SEED") {
        return vec![s
            .trim()
            .parse()
            .expect("CASEWORK_SIM_SEED must be a number")];
    }
    let n = std::env::var("CASEWORK_SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(200);
    (0..n).collect()
}

#[test]
fn seeded_crashes_lose_nothing_and_repeat_no_effect() {
    let started = std::time::Instant::now();
    let seeds = seeds();
    let mut fenced = 0;
    for &seed in &seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        match result {
            Ok((summary, f)) => {
                eprintln!("{summary}");
                fenced += f;
            }
            Err(e) => {
                eprintln!(
                    "simulation failed with seed {seed}; reproduce with CASEWORK_SIM_SEED={seed} cargo test -p casework --test simulation"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("simulation took {:?}", started.elapsed());
    if seeds.len() >= 30 {
        assert!(
            fenced > 0,
            "in {} seeds no daemon woke up to find its write refused: the simulation no longer tests fencing",
            seeds.len()
        );
    }
}

/// Always answers, at once.
struct AlwaysOk;

impl PluginHost for AlwaysOk {
    fn call<'a>(
        &'a self,
        _plugin: &'a str,
        _action: &'a str,
        _input: Value,
        _ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async { Ok(json!({"ready": true, "v": 1})) })
    }
}

fn fixed_driver(store: &MemoryStore, clock: &Arc<ManualClock>) -> Driver {
    let driver = Driver::new(
        Arc::new(store.clone()),
        Arc::new(AlwaysOk),
        clock.clone(),
        None,
    );
    for src in WORKFLOWS {
        let (wf, diags) = compile::load("sim.yaml", src, &Default::default(), &Rules::shared());
        driver
            .install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
            .unwrap();
    }
    driver
}

/// A driver on `store` whose plugins are `host`, with the one workflow `source` installed.
fn driver_running(
    store: &MemoryStore,
    host: Arc<dyn PluginHost>,
    clock: &Arc<ManualClock>,
    source: &str,
) -> Driver {
    let d = Driver::new(Arc::new(store.clone()), host, clock.clone(), None);
    let (wf, diags) = compile::load("sim.yaml", source, &Default::default(), &Rules::shared());
    d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
        .unwrap();
    d
}

/// Run a driver until nothing can happen, then report the status of `id` in the index.
async fn settle(driver: &Driver, store: &MemoryStore, id: &str) -> String {
    driver.resume_all().unwrap();
    driver.run_virtual(|| false).await.unwrap();
    store.instance(id).unwrap().unwrap().status
}

/// A child's last batch is torn: its wake-up timer for the parent and its records are on
/// disk, its index entry (still `parked`) is not. The parent must still get the result.
#[test]
fn a_child_whose_index_entry_was_lost_still_wakes_its_parent() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(T0));
    let rt = runtime();
    let parent = rt.block_on(async {
        let d = fixed_driver(&store, &clock);
        let id = d.start("parent", json!({"n": 1}), None).await.unwrap().id;
        d.wait_idle().await;
        let child = format!("{id}.child.1");
        assert_eq!(store.instance(&child).unwrap().unwrap().status, "parked");
        store.flush().unwrap();
        store.hold_flushes(true);
        d.deliver(Event {
            event_type: "answer".into(),
            key: "1".into(),
            data: json!({"by": "lead"}),
            id: None,
        })
        .await
        .unwrap();
        d.wait_idle().await;
        id
    });
    // Keep the child's first two writes: the parent's wake-up timer and the records.
    let store = store.crash(2);
    rt.shutdown_background();
    let child = format!("{parent}.child.1");
    assert_eq!(store.instance(&child).unwrap().unwrap().status, "parked");
    assert_eq!(
        store.journal(&child).unwrap().last().map(Record::kind),
        Some("completed")
    );
    let rt = runtime();
    let status =
        rt.block_on(async { settle(&fixed_driver(&store, &clock), &store, &parent).await });
    assert_eq!(status, "completed");
    assert_eq!(store.instance(&child).unwrap().unwrap().status, "completed");
}

/// Runs the engine until nothing can happen; false if it was still busy after 1,000 idle
/// rounds (something fires forever).
async fn comes_to_rest(d: &Driver) -> bool {
    let mut rounds = 0;
    d.run_virtual(|| {
        rounds += 1;
        rounds > 1_000
    })
    .await
    .unwrap();
    rounds <= 1_000
}

/// Start `workflow` with flushes held, then crash keeping the first `keep` writes.
fn start_then_tear(
    workflow: &str,
    input: Value,
    key: Option<&str>,
    keep: usize,
) -> (MemoryStore, Arc<ManualClock>, String, usize) {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(T0));
    let rt = runtime();
    let (id, writes) = rt.block_on(async {
        let d = fixed_driver(&store, &clock);
        store.flush().unwrap();
        store.hold_flushes(true);
        let id = d
            .start(workflow, input, key.map(String::from))
            .await
            .unwrap()
            .id;
        d.wait_idle().await;
        (id, store.pending_writes())
    });
    let store = store.crash(keep);
    rt.shutdown_background();
    (store, clock, id, writes)
}

/// A new instance's first batch is written one piece at a time (the key's claim, timers
/// and waits, records, and last the index entry that makes it exist), so a crash may keep
/// any prefix. Whatever it keeps, the instance exists with its journal or nobody can see
/// it; then the client's retry with the same key starts it afresh, and nothing it left
/// behind (a timer, a wait) fires forever.
#[test]
fn a_new_instance_torn_at_any_write_exists_whole_or_not_at_all() {
    let (_, _, _, writes) = start_then_tear("race", json!({"n": 1}), Some("req"), 0);
    let mut seen_absent = false;
    let mut seen_present = false;
    for keep in 0..=writes {
        let (store, clock, id, _) = start_then_tear("race", json!({"n": 1}), Some("req"), keep);
        if store.instance(&id).unwrap().is_some() {
            seen_present = true;
            assert!(!store.journal(&id).unwrap().is_empty(), "keep {keep}");
            continue;
        }
        seen_absent = true;
        let rt = runtime();
        rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            assert!(
                comes_to_rest(&d).await,
                "keep {keep}: a torn start's leftovers kept firing"
            );
            let again = d
                .start("race", json!({"n": 1}), Some("req".into()))
                .await
                .unwrap();
            assert!(again.created, "keep {keep}: the key's claim is free again");
            assert_ne!(again.id, id, "keep {keep}");
            d.wait_idle().await;
            assert!(store.instance(&again.id).unwrap().is_some());
        });
        rt.shutdown_background();
    }
    assert!(
        seen_absent && seen_present,
        "the crash points cover both outcomes"
    );
}

/// A start of a workflow with `key:` claims the key in the same atomic write as the new
/// instance. Torn at any write, either the instance exists and holds the key (a second
/// start is refused with its id until it ends, then a start creates one) or neither does
/// (a second start creates at once): a crash never leaves a key held by nobody.
#[test]
fn a_torn_start_holds_its_concurrency_key_exactly_when_the_instance_exists() {
    let input = json!({"ticket": "T-1"});
    let (_, _, _, writes) = start_then_tear("single", input.clone(), None, 0);
    let (mut seen_absent, mut seen_present) = (false, false);
    for keep in 0..=writes {
        let (store, clock, id, _) = start_then_tear("single", input.clone(), None, keep);
        let present = store.instance(&id).unwrap().is_some();
        let rt = runtime();
        rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            d.resume_all().unwrap();
            assert!(
                comes_to_rest(&d).await,
                "keep {keep}: leftovers kept firing"
            );
            if present {
                seen_present = true;
                match d.start("single", input.clone(), None).await {
                    Err(StartError::Open { open, .. }) => assert_eq!(open, id, "keep {keep}"),
                    other => panic!("keep {keep}: the open instance holds the key: {other:?}"),
                }
                assert!(d.cancel(&id, "test").await, "keep {keep}");
                d.wait_idle().await;
            } else {
                seen_absent = true;
            }
            let again = d.start("single", input.clone(), None).await.unwrap();
            assert!(again.created && again.id != id, "keep {keep}: {again:?}");
            d.wait_idle().await;
            assert_eq!(store.instance(&again.id).unwrap().unwrap().status, "parked");
        });
        rt.shutdown_background();
    }
    assert!(
        seen_absent && seen_present,
        "the crash points cover both outcomes"
    );
}

/// An operator's retry of a failed instance whose workflow has `key:` takes the key back
/// in its write, which a crash may tear at any point. Whatever it keeps, the instance is
/// either failed and holds nothing (a start for its ticket creates one, and the retry is
/// then refused naming it) or open again and holding the key (a start is refused naming
/// it): never open without its key, never failed in the index while its journal runs on.
#[test]
fn a_torn_retry_holds_its_key_exactly_when_the_instance_is_open_again() {
    let input = json!({"ticket": "T-1", "ready": "2026-01-01T00:00:01.000Z"});
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (id, writes) = rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            let id = d
                .start("single_late", input.clone(), None)
                .await
                .unwrap()
                .id;
            d.wait_idle().await;
            assert_eq!(store.instance(&id).unwrap().unwrap().status, "failed");
            store.flush().unwrap();
            clock.advance_to(T0 + 2_000);
            store.hold_flushes(true);
            d.retry(&id).await.unwrap();
            d.wait_idle().await;
            (id, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, id, writes)
    };
    let (_, _, _, writes) = tear(None);
    let (mut seen_failed, mut seen_open) = (false, false);
    for keep in 0..=writes {
        let (store, clock, id, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            d.resume_all().unwrap();
            assert!(
                comes_to_rest(&d).await,
                "keep {keep}: leftovers kept firing"
            );
            let journal_open = !store
                .journal(&id)
                .unwrap()
                .last()
                .is_some_and(|r| matches!(r, Record::Failed { .. }));
            let status = store.instance(&id).unwrap().unwrap().status;
            assert_eq!(
                status != "failed",
                journal_open,
                "keep {keep}: the index ({status}) says what the journal says"
            );
            let started = d.start("single_late", input.clone(), None).await;
            if journal_open {
                seen_open = true;
                match started {
                    Err(StartError::Open { open, .. }) => assert_eq!(open, id, "keep {keep}"),
                    other => panic!("keep {keep}: the retried instance holds the key: {other:?}"),
                }
            } else {
                seen_failed = true;
                let other = started.unwrap();
                assert!(other.created && other.id != id, "keep {keep}: {other:?}");
                d.wait_idle().await;
                match d.retry(&id).await {
                    Err(casework::daemon::driver::RetryError::Refused(
                        casework::runtime::RetryRefused::KeyOpen(open),
                    )) => assert_eq!(open, other.id, "keep {keep}"),
                    other => panic!("keep {keep}: the retry is refused: {other:?}"),
                }
            }
        });
        rt.shutdown_background();
    }
    assert!(
        seen_failed && seen_open,
        "the crash points cover both outcomes"
    );
}

/// A parked instance woken by its timer into a call (the `nap` of `order`, then
/// `notify`): the write that wakes it is torn at every point. Whatever it keeps, the next
/// start finds the instance and it completes: an index entry left at `parked` while the
/// journal has begun the call would leave it stuck, as nothing resumes a parked instance.
#[test]
fn a_wakeup_torn_at_any_write_still_completes() {
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (id, writes) = rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            let id = d.start("order", json!({"n": 7}), None).await.unwrap().id;
            d.wait_idle().await;
            let approve = Event {
                event_type: "approve".into(),
                key: "7".into(),
                data: json!({"by": "ops"}),
                id: None,
            };
            assert_eq!(d.deliver(approve).await.unwrap(), vec![id.clone()]);
            d.wait_idle().await;
            assert_eq!(store.instance(&id).unwrap().unwrap().status, "parked");
            store.flush().unwrap();
            store.hold_flushes(true);
            clock.advance_to(T0 + 11 * MIN);
            d.fire_due_timers().unwrap();
            d.wait_idle().await;
            (id, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, id, writes)
    };
    let (_, _, _, writes) = tear(None);
    assert!(writes > 2, "the wakeup and the call are several writes");
    for keep in 0..=writes {
        let (store, clock, id, _) = tear(Some(keep));
        let rt = runtime();
        let status = rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            settle(&d, &store, &id).await
        });
        rt.shutdown_background();
        assert_eq!(status, "completed", "keep {keep} of {writes}");
    }
}

/// A start torn before its index entry leaves a timer for an instance that does not exist.
/// Nothing would ever consume it: it must be dropped, not fire forever.
#[test]
fn a_timer_of_an_instance_never_journaled_is_dropped() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(T0));
    store
        .write(&Batch {
            instance: "ghost".into(),
            timers_add: vec![Timer {
                at: T0,
                instance: "ghost".into(),
                frame: 0,
            }],
            ..Batch::default()
        })
        .unwrap();
    store.flush().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let d = fixed_driver(&store, &clock);
        assert!(comes_to_rest(&d).await, "the stale timer kept firing");
    });
    assert_eq!(store.next_timer().unwrap(), None);
}

/// The last batch of an instance is torn after its records: the index still says `running`
/// for an instance whose journal has completed. The next start repairs the index.
#[test]
fn an_index_entry_behind_the_journal_is_repaired() {
    // The crash point that keeps the end's records but not its index entry.
    let (_, _, _, writes) = start_then_tear("poll", json!({"n": 1}), None, 0);
    let torn = (1..writes)
        .map(|keep| start_then_tear("poll", json!({"n": 1}), None, keep))
        .find(|(store, _, id, _)| {
            store.journal(id).unwrap().last().map(Record::kind) == Some("completed")
                && store
                    .instance(id)
                    .unwrap()
                    .is_some_and(|m| m.status == "running")
        });
    let (store, clock, id, _) =
        torn.expect("a crash point between the end's records and its index entry");
    let rt = runtime();
    let status = rt.block_on(async { settle(&fixed_driver(&store, &clock), &store, &id).await });
    assert_eq!(status, "completed");
}

/// What a client does for one request: start it (idempotently), run the engine until
/// nothing can happen, and answer its question until it has ended.
async fn drive(d: &Driver, store: &MemoryStore, kind: &str) -> String {
    let id = d
        .start(kind, input_for(1, kind), Some("req".into()))
        .await
        .unwrap()
        .id;
    for _ in 0..5 {
        let mut rounds = 0;
        d.run_virtual(|| {
            rounds += 1;
            rounds > 10_000
        })
        .await
        .unwrap();
        assert!(rounds <= 10_000, "{kind}: the engine never settles");
        if store.instance(&id).unwrap().is_some_and(|m| m.is_final()) {
            break;
        }
        let event_type = match kind {
            "order" => "approve",
            "race" => "ack",
            "parent" => "answer",
            _ => continue,
        };
        d.deliver(Event {
            event_type: event_type.into(),
            key: "1".into(),
            data: json!({"by": "lead"}),
            id: None,
        })
        .await
        .unwrap();
    }
    id
}

/// For each workflow: run one request to its end without anything becoming durable, then
/// crash keeping each possible prefix of its writes in turn; a fresh process and the
/// client's retries must always bring it to a clean end.
#[test]
fn every_torn_write_prefix_recovers() {
    for kind in NAMES {
        let mut keep = 0;
        loop {
            let store = MemoryStore::new();
            let clock = Arc::new(ManualClock::new(T0));
            let rt = runtime();
            rt.block_on(async {
                let d = fixed_driver(&store, &clock);
                store.flush().unwrap();
                store.hold_flushes(true);
                drive(&d, &store, kind).await;
            });
            let total = store.pending_writes();
            let store = store.crash(keep);
            rt.shutdown_background();
            let rt = runtime();
            let id = rt.block_on(async {
                let d = fixed_driver(&store, &clock);
                d.resume_all().unwrap();
                drive(&d, &store, kind).await
            });
            rt.shutdown_background();
            let context = format!("{kind}, keeping {keep} of {total} writes");
            assert!(
                store.instance(&id).unwrap().is_some_and(|m| m.is_final()),
                "{context}: {:?}",
                store.instance(&id).unwrap()
            );
            for m in store.instances(None, usize::MAX).unwrap() {
                let journal = store.journal(&m.id).unwrap();
                let last = journal.last().map(Record::kind);
                assert!(
                    m.is_final(),
                    "{context}: {} is {} ({last:?})",
                    m.id,
                    m.status
                );
            }
            assert_eq!(store.next_timer().unwrap(), None, "{context}: timers left");
            keep += 1;
            if keep > total {
                break;
            }
        }
    }
}

/// An event kept in the inbox is taken by a wait that begins later, in a write after the
/// wait's own. Torn between the two (a crash, or a backup taken then), the instance
/// waits and its event is kept; the next process must still bring them together.
#[test]
fn an_event_kept_for_a_wait_torn_before_it_was_taken_still_arrives() {
    let answer = || Event {
        event_type: "answer".into(),
        key: "1".into(),
        data: json!({"by": "lead"}),
        id: Some("answer-1".into()),
    };
    let mut keep = 0;
    loop {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let id = rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            assert!(d.deliver(answer()).await.unwrap().is_empty(), "kept");
            store.flush().unwrap();
            store.hold_flushes(true);
            let id = d
                .start("ask", json!({"n": 1}), Some("k".into()))
                .await
                .unwrap()
                .id;
            d.wait_idle().await;
            id
        });
        let total = store.pending_writes();
        let store = store.crash(keep);
        rt.shutdown_background();
        let rt = runtime();
        rt.block_on(async {
            let d = fixed_driver(&store, &clock);
            d.resume_all().unwrap();
            d.tick_ownership().unwrap();
            assert!(comes_to_rest(&d).await, "keep {keep}");
            let id = match store.instance(&id).unwrap() {
                Some(_) => id,
                // The start itself was torn away: the client's retry starts it afresh.
                None => {
                    let again = d.start("ask", json!({"n": 1}), Some("k".into())).await;
                    d.wait_idle().await;
                    assert!(comes_to_rest(&d).await, "keep {keep}");
                    again.unwrap().id
                }
            };
            let m = store.instance(&id).unwrap().unwrap();
            assert_eq!(m.status, "completed", "keeping {keep} of {total} writes");
        });
        rt.shutdown_background();
        keep += 1;
        if keep > total {
            break;
        }
    }
}

/// A start for an id that already exists (a parent re-issuing its child's start after a
/// reload, while the first start is still in flight) must not restart the instance.
#[test]
fn a_second_start_of_the_same_instance_changes_nothing() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(T0));
    let rt = runtime();
    rt.block_on(async {
        let d = fixed_driver(&store, &clock);
        d.start_as("ask", json!({"n": 1}), "x".into())
            .await
            .unwrap();
        d.wait_idle().await;
        let before = store.journal("x").unwrap();
        // Once while the instance is in memory, once after it left.
        clock.advance_to(T0 + MIN);
        let (a, b) = tokio::join!(
            d.start_as("ask", json!({"n": 2}), "x".into()),
            d.start_as("ask", json!({"n": 3}), "x".into()),
        );
        a.unwrap();
        b.unwrap();
        d.wait_idle().await;
        assert_eq!(store.journal("x").unwrap(), before);
        d.start_as("ask", json!({"n": 4}), "x".into())
            .await
            .unwrap();
        d.wait_idle().await;
        assert_eq!(store.journal("x").unwrap(), before);
    });
}

const CLOCKED: &str = r#"workflow: clocked
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: start
    rule: vars.sla = sla_start("desk", now, "40h")
    next: hold
  - id: hold
    wait: { event: go, key: input.key }
    next: done
  - id: done
    complete: { output: { used_ms: "${sla_used(vars.sla, now)}" } }
"#;

/// A calendar edit (today made a holiday, three hours into an SLA clock) whose recording
/// in the store is torn at every write: whether the new version survived or is recorded
/// again by the next start, the clock keeps the three hours it used before the edit and
/// counts nothing after it. Counting the whole day on the edited calendar, as before
/// calendar versions, would give 0.
#[test]
fn a_calendar_edit_torn_at_any_write_keeps_the_time_already_used() {
    use casework::daemon::reload::Reloader;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("calendars")).unwrap();
    std::fs::write(dir.path().join("clocked.yaml"), CLOCKED).unwrap();
    let calendar = dir.path().join("calendars/desk.yaml");
    let always = "calendar: desk\ntimezone: UTC\nhours: always\n";
    // T0 is 2026-01-01T00:00Z: the edit closes that day.
    let holiday = format!("{always}holidays: [2026-01-01]\n");
    const H: i64 = 3_600_000;
    let loaded = |d: &Driver| {
        let report = Reloader::new(d.clone(), dir.path().to_path_buf(), None).reload_workflows();
        assert!(report.rejected.is_empty(), "{report:?}");
    };
    let tear = |keep: Option<usize>| {
        std::fs::write(&calendar, always).unwrap();
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (id, writes) = rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            loaded(&d);
            let id = d
                .start("clocked", json!({"key": "k"}), None)
                .await
                .unwrap()
                .id;
            d.wait_idle().await;
            store.flush().unwrap();
            clock.advance_to(T0 + 3 * H);
            store.hold_flushes(true);
            std::fs::write(&calendar, &holiday).unwrap();
            loaded(&d);
            (id, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, id, writes)
    };
    let (_, _, _, writes) = tear(None);
    assert!(writes > 0, "the edit is recorded in the store");
    for keep in 0..=writes {
        let (store, clock, id, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            loaded(&d);
            d.resume_all().unwrap();
            clock.advance_to(T0 + 5 * H);
            d.deliver(Event {
                event_type: "go".into(),
                key: "k".into(),
                data: json!({}),
                id: None,
            })
            .await
            .unwrap();
            d.wait_idle().await;
            let out = d.snapshot(&id).and_then(|i| i.output().cloned());
            let used = out.as_ref().map(|o| o["used_ms"].to_string());
            assert_eq!(
                used.as_deref().map(|u| u.trim_matches('"').to_string()),
                Some((3 * H).to_string()),
                "keep {keep} of {writes}: {out:?}"
            );
        });
        rt.shutdown_background();
    }
}

/// A calendar edit the store cannot record is not used: the version before it stays in
/// effect (counting on an unrecorded version would recount running clocks' past after a
/// restart), and the reload reports the file.
#[test]
fn a_calendar_version_the_store_cannot_record_is_not_used() {
    use casework::daemon::reload::Reloader;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("calendars")).unwrap();
    std::fs::write(dir.path().join("clocked.yaml"), CLOCKED).unwrap();
    let calendar = dir.path().join("calendars/desk.yaml");
    std::fs::write(&calendar, "calendar: desk\ntimezone: UTC\nhours: always\n").unwrap();
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(T0));
    let rt = runtime();
    let _in_runtime = rt.enter();
    let d = Driver::new(Arc::new(store.clone()), Arc::new(AlwaysOk), clock, None);
    let reloader = Reloader::new(d.clone(), dir.path().to_path_buf(), None);
    assert!(reloader.reload_workflows().rejected.is_empty());
    let first = d
        .inner()
        .rules
        .calendars()
        .get("desk")
        .unwrap()
        .version
        .clone();
    // The store stops working (as after a crash), then the calendar is edited.
    let _survivor = store.crash(0);
    std::fs::write(
        &calendar,
        "calendar: desk\ntimezone: UTC\nhours: always\nholidays: [2026-01-01]\n",
    )
    .unwrap();
    let report = reloader.reload_workflows();
    assert!(
        report.rejected.iter().any(|r| r.contains("desk.yaml")),
        "{report:?}"
    );
    let now = d
        .inner()
        .rules
        .calendars()
        .get("desk")
        .unwrap()
        .version
        .clone();
    assert_eq!(now, first, "the unrecorded version is not in effect");
}

/// Two daemons in one process (as here and in `casework bench`) each count on the
/// calendars they loaded: one's reload does not change the other's time.
#[test]
fn daemons_in_one_process_keep_their_own_calendars() {
    use casework::daemon::reload::Reloader;
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut versions = Vec::new();
    let mut drivers = Vec::new();
    let mut dirs = Vec::new();
    for holidays in ["[]", "[2026-01-01]"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("calendars")).unwrap();
        std::fs::write(dir.path().join("clocked.yaml"), CLOCKED).unwrap();
        std::fs::write(
            dir.path().join("calendars/desk.yaml"),
            format!("calendar: desk\ntimezone: UTC\nhours: always\nholidays: {holidays}\n"),
        )
        .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let d = Driver::new(
            Arc::new(MemoryStore::new()),
            Arc::new(AlwaysOk),
            clock,
            None,
        );
        let reloader = Reloader::new(d.clone(), dir.path().to_path_buf(), None);
        assert!(reloader.reload_workflows().rejected.is_empty());
        versions.push(
            d.inner()
                .rules
                .calendars()
                .get("desk")
                .unwrap()
                .version
                .clone(),
        );
        drivers.push(d);
        dirs.push(dir);
    }
    assert_ne!(versions[0], versions[1], "the two files differ");
    for (d, version) in drivers.iter().zip(&versions) {
        let now = d
            .inner()
            .rules
            .calendars()
            .get("desk")
            .unwrap()
            .version
            .clone();
        assert_eq!(&now, version, "each daemon keeps the calendar it loaded");
    }
}

/// A burst: three tickets about one component start one outage (a windowed trigger).
const BURST: &str = r#"
workflow: outage
version: 1
input:
  component: { type: string, required: true }
  tickets: { type: integer, required: true }
triggers:
  - event: ticket.created
    key: event.data.component
    count: { at_least: 3, within: 1h }
    input: { component: "${window.key}", tickets: "${window.count}" }
steps:
  - id: resolved
    wait: { event: outage.resolved, key: input.component, timeout: 1d }
    next: done
  - id: done
    complete: {}
"#;

/// A burst whose writes are torn at any point (a crash keeps a prefix of them): the
/// webhook resends its tickets after the restart, and exactly one outage exists, started
/// by the count of three, never two and never none.
#[test]
fn a_burst_torn_at_any_write_starts_its_instance_once() {
    use casework::daemon::triggers::start_for_event;
    let ticket = |n: usize| Event {
        event_type: "ticket.created".into(),
        key: format!("T-{n}"),
        data: json!({"component": "db"}),
        id: Some(format!("e-{n}")),
    };
    let install = |d: &Driver| {
        let (wf, diags) = compile::load("burst.yaml", BURST, &Default::default(), &Rules::shared());
        d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
            .unwrap();
    };
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let writes = rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            install(&d);
            store.hold_flushes(true);
            for n in 1..=3 {
                let o = start_for_event(&d, &ticket(n)).await;
                assert!(o.failed.is_empty(), "{o:?}");
            }
            d.wait_idle().await;
            store.pending_writes()
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, writes)
    };
    let (_, _, writes) = tear(None);
    assert!(
        writes >= 4,
        "three counts and the instance: {writes} writes"
    );
    for keep in 0..=writes {
        let (store, clock, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            install(&d);
            d.resume_all().unwrap();
            // The webhook did not hear back: it sends every ticket again, then one more.
            for n in 1..=4 {
                let o = start_for_event(&d, &ticket(n)).await;
                assert!(o.failed.is_empty(), "keep {keep}: {o:?}");
            }
            d.wait_idle().await;
            let all = store.instances(None, 100).unwrap();
            assert_eq!(all.len(), 1, "keep {keep} of {writes}: {all:?}");
            let inst = d.snapshot(&all[0].id).unwrap();
            assert_eq!(inst.input()["tickets"], json!(3), "keep {keep}");
        });
        rt.shutdown_background();
    }
}

/// A workflow pause torn at every write (the daemon dies while it holds the instances one
/// by one): after the restart, whatever of the pause survived is finished at start-up, so
/// every open instance of a workflow the store says is paused holds, and none runs.
#[test]
fn a_workflow_pause_torn_at_any_write_is_finished_at_start_up() {
    const WAITS: &str = r#"workflow: waits
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: hold
    wait: { event: go, key: input.key }
    next: done
  - id: done
    complete: {}
"#;
    let install = |d: &Driver| {
        let (wf, diags) = compile::load("waits.yaml", WAITS, &Default::default(), &Rules::shared());
        d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
            .unwrap();
    };
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (ids, writes) = rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            install(&d);
            let mut ids = Vec::new();
            for n in 0..3 {
                ids.push(
                    d.start("waits", json!({"key": format!("k{n}")}), None)
                        .await
                        .unwrap()
                        .id,
                );
            }
            d.wait_idle().await;
            store.flush().unwrap();
            store.hold_flushes(true);
            d.hold_workflow("waits", true, "ops", "provider outage")
                .await
                .unwrap();
            d.wait_idle().await;
            (ids, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, ids, writes)
    };
    let (_, _, _, writes) = tear(None);
    assert!(writes >= 4, "the pause and three holds: {writes} writes");
    for keep in 0..=writes {
        let (store, clock, ids, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            install(&d);
            d.resume_all().unwrap();
            let paused = d.workflow_pause("waits").unwrap().is_some();
            d.complete_pauses().await;
            d.wait_idle().await;
            for (n, id) in ids.iter().enumerate() {
                let woken = d
                    .deliver(Event {
                        event_type: "go".into(),
                        key: format!("k{n}"),
                        data: json!({}),
                        id: None,
                    })
                    .await
                    .unwrap();
                d.wait_idle().await;
                let status = store.instance(id).unwrap().unwrap().status;
                let _ = woken;
                if paused {
                    assert_eq!(status, "paused", "keep {keep}: {id} went on while paused");
                } else {
                    assert_eq!(
                        status, "completed",
                        "keep {keep}: the pause was lost whole: {id}"
                    );
                }
            }
            // Resumed, each goes on with its event: nothing was lost while it was held.
            if paused {
                d.hold_workflow("waits", false, "ops", "provider back")
                    .await
                    .unwrap();
                d.wait_idle().await;
                for id in &ids {
                    let status = store.instance(id).unwrap().unwrap().status;
                    assert_eq!(status, "completed", "keep {keep}: {id} after the resume");
                }
            }
        });
        rt.shutdown_background();
    }
}

/// A step that changes a search attribute (`stage` from `new` to `triaged`) is torn at
/// every write. Whatever the crash keeps, once a new process has settled, a search finds
/// the instance by the value its journal says it has, and never by the other one: an
/// index entry a crash left behind for the old value is not a hit.
#[test]
fn a_search_attribute_change_torn_at_any_write_is_found_by_its_journaled_value() {
    use casework::daemon::selection::Selection;
    const STAGED: &str = r#"workflow: staged
version: 1
input:
  ticket: { type: string, required: true }
search:
  ticket: input.ticket
  stage: vars.stage
steps:
  - id: open
    rule: |
      vars.stage = "new";
    next: triage
  - id: triage
    wait: { event: triage, key: input.ticket }
    save_as: t
    next: mark
  - id: mark
    rule: |
      vars.stage = vars.t.data.stage;
    next: close
  - id: close
    wait: { event: close, key: input.ticket }
    next: done
  - id: done
    complete: {}
"#;
    let driver = |store: &MemoryStore, clock: &Arc<ManualClock>| {
        driver_running(store, Arc::new(AlwaysOk), clock, STAGED)
    };
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (id, writes) = rt.block_on(async {
            let d = driver(&store, &clock);
            let id = d
                .start("staged", json!({"ticket": "T-9"}), None)
                .await
                .unwrap()
                .id;
            d.wait_idle().await;
            store.flush().unwrap();
            store.hold_flushes(true);
            let triage = Event {
                event_type: "triage".into(),
                key: "T-9".into(),
                data: json!({"stage": "triaged"}),
                id: Some("triage-T-9".into()),
            };
            assert_eq!(d.deliver(triage).await.unwrap(), vec![id.clone()]);
            d.wait_idle().await;
            (id, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, id, writes)
    };
    let find = |store: &MemoryStore, attribute: &str, value: &str| -> Vec<String> {
        let search = [(attribute.to_string(), value.to_string())].into();
        let s = Selection::new(
            store,
            |_| vec!["stage".into(), "ticket".into()],
            Some("staged".into()),
            None,
            (None, None),
            &search,
        )
        .unwrap();
        s.page(store, None, 10)
            .unwrap()
            .found
            .into_iter()
            .map(|m| m.id)
            .collect()
    };
    // The start itself torn at every write: the instance exists whole, found by its
    // values, or not at all, and is never found without a journal.
    let tear_start = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let writes = rt.block_on(async {
            let d = driver(&store, &clock);
            store.hold_flushes(true);
            d.start("staged", json!({"ticket": "T-9"}), None)
                .await
                .unwrap();
            d.wait_idle().await;
            store.pending_writes()
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, writes)
    };
    let (_, _, writes) = tear_start(None);
    let mut whole = 0;
    for keep in 0..=writes {
        let (store, clock, _) = tear_start(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = driver(&store, &clock);
            d.resume_all().unwrap();
            d.run_virtual(|| false).await.unwrap();
        });
        rt.shutdown_background();
        let context = format!("start, keep {keep} of {writes}");
        let found = find(&store, "ticket", "T-9");
        for m in store.instances(None, usize::MAX).unwrap() {
            assert!(
                !store.journal(&m.id).unwrap().is_empty(),
                "{context}: {m:?} has no journal"
            );
            assert_eq!(m.workflow, "staged", "{context}: {m:?}");
        }
        match store.instances(None, usize::MAX).unwrap().as_slice() {
            [] => assert!(
                found.is_empty(),
                "{context}: found {found:?} without an instance"
            ),
            [m] => {
                assert_eq!(found, vec![m.id.clone()], "{context}");
                assert_eq!(
                    find(&store, "stage", "new"),
                    vec![m.id.clone()],
                    "{context}"
                );
                whole += 1;
            }
            more => panic!("{context}: {more:?}"),
        }
    }
    assert!(whole > 0, "some crash point keeps the start");

    let (_, _, _, writes) = tear(None);
    assert!(writes >= 1, "the triage is written");
    let (mut seen_old, mut seen_new) = (false, false);
    for keep in 0..=writes {
        let (store, clock, id, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = driver(&store, &clock);
            d.resume_all().unwrap();
            d.run_virtual(|| false).await.unwrap();
        });
        rt.shutdown_background();
        let triaged = store
            .journal(&id)
            .unwrap()
            .iter()
            .any(|r| serde_json::to_string(r).unwrap().contains("\"triaged\""));
        let context = format!("keep {keep} of {writes}");
        let (now, then) = if triaged {
            ("triaged", "new")
        } else {
            ("new", "triaged")
        };
        assert_eq!(find(&store, "stage", now), vec![id.clone()], "{context}");
        assert!(
            find(&store, "stage", then).is_empty(),
            "{context}: found by {then}"
        );
        assert_eq!(find(&store, "ticket", "T-9"), vec![id.clone()], "{context}");
        seen_old |= !triaged;
        seen_new |= triaged;
    }
    assert!(seen_old && seen_new, "the crash points cover both outcomes");
}

/// What a checker of one-time codes was given, call by call: (the input it saw, the
/// idempotency key). It marks `code` sensitive, as the identity plugin's schema does.
#[derive(Default)]
struct CodeChecker {
    seen: Mutex<Vec<(Value, String)>>,
}

impl PluginHost for CodeChecker {
    fn call<'a>(
        &'a self,
        _plugin: &'a str,
        _action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        let approved = input["code"] == "493817";
        self.seen.lock().unwrap().push((input, ctx.idempotency_key));
        Box::pin(async move { Ok(json!({"approved": approved})) })
    }

    fn sensitive_fields(&self, _plugin: &str, _action: &str) -> Option<BTreeSet<String>> {
        Some(["code".to_string()].into())
    }
}

/// A one-time code typed by the customer (`write_only: [code]`) is delivered, checked by
/// the plugin and the instance completes, torn at every write. Restarted at once, the
/// instance completes approved: a call the crash interrupted is repeated with the same
/// idempotency key and the plugin is given the code itself, every time. Restarted 31
/// minutes later, a call repeated from the journal would carry a code held past its time:
/// it fails with `write_only_expired` and the plugin is given nothing. In no case is the
/// code in any journal record.
#[test]
fn a_write_only_code_torn_at_any_write_reaches_the_plugin_in_time_or_not_at_all() {
    const CODE: &str = r#"workflow: code
version: 1
input:
  customer: { type: string, required: true }
steps:
  - id: ask
    wait: { event: code.entered, key: input.customer, write_only: [code] }
    save_as: got
    next: check
  - id: check
    call: idp.check
    with: { code: "${vars.got.data.code}", who: "${input.customer}" }
    save_as: result
    on_error: failed
    next: done
  - id: done
    complete: { output: { approved: "${vars.result.approved}" } }
  - id: failed
    complete: { output: { error: "${vars.error.code}" } }
"#;
    let driver = |store: &MemoryStore, clock: &Arc<ManualClock>, host: &Arc<CodeChecker>| {
        driver_running(store, host.clone(), clock, CODE)
    };
    let entered = || Event {
        event_type: "code.entered".into(),
        key: "cus_1".into(),
        data: json!({"code": "493817", "session": "s-1"}),
        id: Some("entered-1".into()),
    };
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let host = Arc::new(CodeChecker::default());
        let rt = runtime();
        let (id, writes) = rt.block_on(async {
            let d = driver(&store, &clock, &host);
            let id = d
                .start("code", json!({"customer": "cus_1"}), None)
                .await
                .unwrap()
                .id;
            d.wait_idle().await;
            store.flush().unwrap();
            store.hold_flushes(true);
            assert_eq!(d.deliver(entered()).await.unwrap(), vec![id.clone()]);
            d.wait_idle().await;
            (id, store.pending_writes())
        });
        assert_eq!(host.seen.lock().unwrap()[0].0["code"], "493817");
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, id, writes)
    };
    let (_, _, _, writes) = tear(None);
    assert!(
        writes > 2,
        "the delivery, the call and its answer are several writes"
    );
    let mut expired = 0;
    for later in [0, 31 * MIN] {
        for keep in 0..=writes {
            let (store, clock, id, _) = tear(Some(keep));
            clock.advance_to(T0 + later);
            let host = Arc::new(CodeChecker::default());
            let rt = runtime();
            let output = rt.block_on(async {
                let d = driver(&store, &clock, &host);
                if settle(&d, &store, &id).await != "completed" {
                    // The event was not kept: the sender, never answered, sends it again.
                    d.deliver(entered()).await.unwrap();
                    assert_eq!(settle(&d, &store, &id).await, "completed");
                }
                store.journal(&id).unwrap()
            });
            rt.shutdown_background();
            let at = format!(
                "keep {keep} of {writes}, restarted {} min later",
                later / MIN
            );
            let text = serde_json::to_string(&output).unwrap();
            assert!(!text.contains("493817"), "{at}: the code is in the journal");
            let Some(Record::Completed { output, .. }) = output.last() else {
                panic!("{at}: {output:?}");
            };
            let seen = host.seen.lock().unwrap();
            if output["approved"] == true {
                assert!(
                    seen.iter().all(|(input, _)| input["code"] == "493817"),
                    "{at}"
                );
                let keys: BTreeSet<&String> = seen.iter().map(|(_, k)| k).collect();
                assert!(keys.len() <= 1, "{at}: one idempotency key for the step");
            } else {
                assert_eq!(output["error"], "write_only_expired", "{at}: {output}");
                assert!(later > 0, "{at}: a fresh code expired");
                assert!(seen.is_empty(), "{at}: an expired code reached the plugin");
                expired += 1;
            }
        }
    }
    assert!(
        expired > 0,
        "some crash left a call to repeat from the journal"
    );
}

/// The finish of the instance holding a key, which starts the start queued behind it
/// (`on_conflict: queue`) and removes it from the queue, torn at every write. Whatever
/// the crash keeps, once the close is sent again (its sender was never answered) and a
/// new process has gone round its ownership round, the queued start has run exactly
/// once: one instance with its input, none lost, none twice, and the queue is empty.
#[test]
fn a_queued_start_torn_at_any_write_of_the_finish_before_it_runs_exactly_once() {
    const LINE: &str = r#"workflow: line
version: 1
input:
  ticket: { type: string, required: true }
  n: { type: integer, required: true }
key: input.ticket
concurrency: { limit: 1, on_conflict: queue }
steps:
  - id: hold
    wait: { event: line.close, key: input.ticket }
    next: done
  - id: done
    complete: { output: { n: "${input.n}" } }
"#;
    let driver = |store: &MemoryStore, clock: &Arc<ManualClock>| {
        driver_running(store, Arc::new(AlwaysOk), clock, LINE)
    };
    let close = || Event {
        event_type: "line.close".into(),
        key: "Q-1".into(),
        data: json!({}),
        id: Some("close-1".into()),
    };
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (first, writes) = rt.block_on(async {
            let d = driver(&store, &clock);
            let first = d
                .start("line", json!({"ticket": "Q-1", "n": 0}), None)
                .await
                .unwrap();
            assert!(first.created);
            let queued = d
                .start(
                    "line",
                    json!({"ticket": "Q-1", "n": 1}),
                    Some("second".into()),
                )
                .await
                .unwrap();
            assert!(queued.queued.is_some(), "{queued:?}");
            d.wait_idle().await;
            store.flush().unwrap();
            store.hold_flushes(true);
            assert_eq!(d.deliver(close()).await.unwrap(), vec![first.id.clone()]);
            d.wait_idle().await;
            (first.id, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, first, writes)
    };
    let (store, _, _, writes) = tear(None);
    assert_eq!(
        store.instances(None, 10).unwrap().len(),
        2,
        "the untorn run starts the queued one"
    );
    assert!(
        writes > 3,
        "the finish, the start and the removal are several writes"
    );
    for keep in 0..=writes {
        let (store, clock, first, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = driver(&store, &clock);
            if settle(&d, &store, &first).await != "completed" {
                d.deliver(close()).await.unwrap();
                assert_eq!(settle(&d, &store, &first).await, "completed", "keep {keep}");
            }
            d.tick_ownership().unwrap();
            d.wait_idle().await;
            let all = store.instances(None, 10).unwrap();
            let seconds: Vec<_> = all.iter().filter(|m| m.id != first).collect();
            assert_eq!(seconds.len(), 1, "keep {keep} of {writes}: {all:?}");
            let journal = store.journal(&seconds[0].id).unwrap();
            let Some(Record::Started { input, .. }) = journal.first() else {
                panic!("keep {keep}: {journal:?}");
            };
            assert_eq!(input["n"], 1, "keep {keep}");
            assert_eq!(seconds[0].status, "parked", "keep {keep}");
            assert_eq!(
                store.inbox(None, 10).unwrap(),
                vec![],
                "keep {keep}: the queue is empty"
            );
            // A resend of the queued start answers with the instance it became.
            let again = d
                .start(
                    "line",
                    json!({"ticket": "Q-1", "n": 1}),
                    Some("second".into()),
                )
                .await
                .unwrap();
            assert_eq!(
                (again.id.as_str(), again.created),
                (seconds[0].id.as_str(), false)
            );
        });
        rt.shutdown_background();
    }
}

/// A move to a new version (`migrate:`) torn at every write. Whatever the crash keeps, the
/// instance is on one version as its journal says — moved whole (the new wait in the index,
/// for its new event type) or not at all — and the same migration once more moves it or
/// finds it there; then the new version's event finishes it along the new path, having
/// moved exactly once.
#[test]
fn a_migration_torn_at_any_write_moves_the_instance_whole_or_not_at_all() {
    const V1: &str = r#"
workflow: moving
version: 1
input:
  key: { type: string, required: true }
steps:
  - id: ask
    wait: { event: approve, key: input.key, timeout: 1h, on_timeout: late }
    next: done
  - id: done
    complete: { output: { version: 1 } }
  - id: late
    complete: { output: late }
"#;
    const V2: &str = r#"
workflow: moving
version: 2
migrate:
  - { from: 1, at: [ask], to: ask_again, set: { tier: '"lead"' } }
input:
  key: { type: string, required: true }
steps:
  - id: ask_again
    wait: { event: approved, key: input.key, timeout: 1h, on_timeout: late }
    next: done
  - id: done
    complete: { output: { version: 2, tier: "${vars.tier}" } }
  - id: late
    complete: { output: late }
"#;
    let install = |d: &Driver, src: &str| {
        let (wf, diags) = compile::load("moving.yaml", src, &Default::default(), &Rules::shared());
        d.install(wf.unwrap_or_else(|| panic!("{diags:#?}")))
            .unwrap()
    };
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (id, writes) = rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            install(&d, V1);
            let id = d
                .start("moving", json!({"key": "k"}), None)
                .await
                .unwrap()
                .id;
            d.wait_idle().await;
            let v2 = install(&d, V2);
            store.flush().unwrap();
            store.hold_flushes(true);
            let moved = d.migrate(&id, v2, "ops", "new approvals").await.unwrap();
            assert!(moved.is_some());
            d.wait_idle().await;
            (id, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, id, writes)
    };
    let (_, _, _, writes) = tear(None);
    assert!(writes >= 2, "the move is several writes: {writes}");
    let (mut seen_moved, mut seen_not) = (false, false);
    for keep in 0..=writes {
        let (store, clock, id, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = Driver::new(
                Arc::new(store.clone()),
                Arc::new(AlwaysOk),
                clock.clone(),
                None,
            );
            install(&d, V1);
            let v2 = install(&d, V2);
            d.resume_all().unwrap();
            d.wait_idle().await;
            let journal = store.journal(&id).unwrap();
            let kept = journal.iter().any(|r| r.kind() == "migrated");
            if kept {
                seen_moved = true;
            } else {
                seen_not = true;
            }
            match d.migrate(&id, v2, "ops", "again").await {
                Ok(Some(_)) => assert!(!kept, "keep {keep}: moved twice"),
                Err(e) => {
                    assert!(kept, "keep {keep}: not moved and not movable: {e}");
                    assert!(e.to_string().contains("version 2 already"), "{e}");
                }
                Ok(None) => panic!("keep {keep}: handed over with one daemon"),
            }
            d.wait_idle().await;
            let woken = d
                .deliver(Event {
                    event_type: "approved".into(),
                    key: "k".into(),
                    data: json!({}),
                    id: None,
                })
                .await
                .unwrap();
            assert_eq!(
                woken,
                vec![id.clone()],
                "keep {keep}: the new wait is not in the index"
            );
            d.wait_idle().await;
            let meta = store.instance(&id).unwrap().unwrap();
            assert_eq!(meta.status, "completed", "keep {keep}");
            assert_eq!(meta.version, 2, "keep {keep}");
            let journal = store.journal(&id).unwrap();
            assert_eq!(
                journal.iter().filter(|r| r.kind() == "migrated").count(),
                1,
                "keep {keep}: {journal:?}"
            );
            match journal.last() {
                Some(Record::Completed { output, .. }) => {
                    assert_eq!(
                        output,
                        &json!({"version": 2, "tier": "lead"}),
                        "keep {keep}"
                    )
                }
                other => panic!("keep {keep}: {other:?}"),
            }
            // A replay through every version it ran gives what the engine reports.
            let d2 = d.inner();
            let (inst, wf) = d2.registry.replay(&store, &meta, &d2.rules).unwrap();
            assert_eq!(wf.version, 2);
            assert_eq!(inst.output(), Some(&json!({"version": 2, "tier": "lead"})));
        });
        rt.shutdown_background();
    }
    assert!(
        seen_moved && seen_not,
        "the tears kept the move and lost it"
    );
}

/// A move asked of a daemon while another one holds the instance is left as mail and
/// answered as handed over; whoever claims the instance next reads it and moves it once.
#[test]
fn a_migration_for_an_instance_held_elsewhere_is_carried_out_from_the_mail() {
    const V1: &str = "workflow: held\nversion: 1\ninput:\n  key: { type: string, required: true }\nsteps:\n  - id: ask\n    wait: { event: go, key: input.key }\n    next: done\n  - id: done\n    complete: { output: 1 }\n";
    let v2_src = V1
        .replace(
            "version: 1\n",
            "version: 2\nmigrate:\n  - { from: 1, at: [ask], to: ask }\n",
        )
        .replace("output: 1", "output: 2");
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(T0));
    let rt = runtime();
    rt.block_on(async {
        let d = driver_running(&store.connect(), Arc::new(AlwaysOk), &clock, V1);
        let id = d.start("held", json!({"key": "k"}), None).await.unwrap().id;
        d.wait_idle().await;
        let (wf, _) = compile::load("held.yaml", &v2_src, &Default::default(), &Rules::shared());
        let v2 = d.install(wf.unwrap()).unwrap();
        // Another daemon, alive, holds the instance.
        store.heartbeat("d-other", T0 + 60 * MIN).unwrap();
        let casework::store::Ownership::Mine(fence) = store.claim(&id, "d-other", T0).unwrap()
        else {
            panic!("the other daemon could not claim the instance");
        };
        assert_eq!(d.migrate(&id, v2.clone(), "ops", "move").await.unwrap(), None);
        assert_eq!(d.migrate(&id, v2.clone(), "ops", "again").await.unwrap(), None);
        d.wait_idle().await;
        assert_eq!(store.instance(&id).unwrap().unwrap().version, 1, "moved behind its owner's back");
        // The owner cannot give it up with mail waiting, and dies: once its lease has
        // lapsed, this daemon's round takes the instance and reads the mail.
        assert!(!store.release(&id, &fence).unwrap(), "a release with mail waiting is refused");
        clock.advance_to(T0 + 61 * MIN);
        d.heartbeat();
        d.tick_ownership().unwrap();
        d.wait_idle().await;
        let journal = store.journal(&id).unwrap();
        assert_eq!(journal.iter().filter(|r| r.kind() == "migrated").count(), 1, "{journal:?}");
        assert_eq!(store.instance(&id).unwrap().unwrap().version, 2);
        // The second request, read right after the first with the instance in memory, is
        // refused (it is there already): its letter goes, and the instance's task does not
        // read it again and again.
        assert!(store.mail(&id, 10).unwrap().is_empty(), "the refused letter stayed");
        assert!(comes_to_rest(&d).await, "the refused letter keeps the instance busy");
        d.deliver(Event { event_type: "go".into(), key: "k".into(), data: json!({}), id: None })
            .await
            .unwrap();
        d.wait_idle().await;
        assert!(matches!(store.journal(&id).unwrap().last(), Some(Record::Completed { output, .. }) if output == &json!(2)));
    });
    rt.shutdown_background();
}

/// A rerun (the link in the ended one's journal, then the new instance) torn at every
/// write. Whatever the crash keeps, asking again gives one new instance that runs the old
/// one again, linked in its journal exactly once, and it finishes.
#[test]
fn a_rerun_torn_at_any_write_links_one_new_instance_once_asked_again() {
    const FAILS: &str = r#"
workflow: redo
version: 1
input:
  n: { type: integer, required: true }
steps:
  - id: take
    set: { n: "${input.n}" }
    next: check
  - id: check
    switch:
      - when: vars.n > 10
        goto: no
    default: done
  - id: no
    fail: { code: too_big, message: too big }
  - id: done
    complete: { output: "${vars.n}" }
"#;
    let edits = || serde_json::Map::from_iter([("n".to_string(), json!(3))]);
    let tear = |keep: Option<usize>| {
        let store = MemoryStore::new();
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime();
        let (old, writes) = rt.block_on(async {
            let d = driver_running(&store, Arc::new(AlwaysOk), &clock, FAILS);
            let old = d.start("redo", json!({"n": 50}), None).await.unwrap().id;
            d.wait_idle().await;
            assert_eq!(store.instance(&old).unwrap().unwrap().status, "failed");
            store.flush().unwrap();
            store.hold_flushes(true);
            d.rerun(&old, "check", edits(), "ops", "smaller", None)
                .await
                .unwrap();
            d.wait_idle().await;
            (old, store.pending_writes())
        });
        let store = store.crash(keep.unwrap_or(writes));
        rt.shutdown_background();
        (store, clock, old, writes)
    };
    let (_, _, _, writes) = tear(None);
    assert!(
        writes >= 3,
        "the link and the new instance: {writes} writes"
    );
    for keep in 0..=writes {
        let (store, clock, old, _) = tear(Some(keep));
        let rt = runtime();
        rt.block_on(async {
            let d = driver_running(&store, Arc::new(AlwaysOk), &clock, FAILS);
            d.resume_all().unwrap();
            d.wait_idle().await;
            let (again, _) = d
                .rerun(&old, "check", edits(), "ops", "smaller", None)
                .await
                .unwrap();
            d.wait_idle().await;
            let linked: Vec<String> = store
                .journal(&old)
                .unwrap()
                .iter()
                .filter_map(|r| match r {
                    Record::RerunAs { instance, .. } => Some(instance.clone()),
                    _ => None,
                })
                .collect();
            let runs_it: Vec<String> = store
                .instances(None, 100)
                .unwrap()
                .into_iter()
                .filter(|m| {
                    matches!(store.journal(&m.id).unwrap().get(1),
                        Some(Record::RerunOf { instance, .. }) if instance == &old)
                })
                .map(|m| m.id)
                .collect();
            let (mut linked, mut runs_it) = (linked, runs_it);
            linked.sort();
            runs_it.sort();
            assert_eq!(
                linked, runs_it,
                "keep {keep}: each new instance linked once"
            );
            assert!(linked.contains(&again.id), "keep {keep}");
            assert!(linked.len() <= 2, "keep {keep}: {linked:?}");
            for id in &runs_it {
                let status = settle(&d, &store, id).await;
                assert_eq!(status, "completed", "keep {keep}: {id}");
            }
        });
        rt.shutdown_background();
    }
}
