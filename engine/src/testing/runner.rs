//! Running one test: a temporary store, a virtual clock, the test's mocks as the only
//! plugins, its events delivered at their virtual times, then what happened is compared
//! with `expect:`.
//!
//! Each test runs on its own single-threaded tokio runtime, on a thread whose tracing
//! subscriber captures every log line, so `not_in_journal` can search the logs too.

use super::expect::{check, ActualCall, Failure, Observed};
use super::host::ScriptedHost;
use super::model::{Checkpoint, TestCase, DEFAULT_HORIZON_MS};
use crate::cli::run::describe;
use crate::clock::{Clock, ManualClock};
use crate::compile::rules::{format_ms, Limits, Rules};
use crate::compile::{CompiledWorkflow, Kind};
use crate::daemon::driver::{Observer, StartError};
use crate::daemon::registry::load_files;
use crate::daemon::Driver;
use crate::runtime::{Event, Instance, Record, Status};
use crate::store::sled::SledStore;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Id of the instance under test (each test has its own store, so ids never collide, and a
/// fixed id makes idempotency keys and retry jitter the same on every run).
pub const INSTANCE_ID: &str = "test";

/// Real time one test may take before it is stopped.
pub const REAL_TIME_LIMIT: Duration = Duration::from_secs(60);

/// Iterations of the timer loop at one virtual instant before the runner gives up (more than
/// the engine's own step limit, so that limit is what a runaway loop hits first).
const MAX_SPINS_AT_ONE_INSTANT: u32 = 250_000;

/// What the tests of one file run against.
#[derive(Clone, Debug)]
pub struct Suite {
    /// The test file's folder.
    pub folder: PathBuf,
    /// Workflow files loaded (and compiled afresh) for every test: those of `folder`.
    pub files: Vec<PathBuf>,
    /// The workflow under test.
    pub workflow: String,
}

/// The result of one test.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub failures: Vec<Failure>,
    /// Step by step, as `casework run` prints it, with the events delivered.
    pub trace: Vec<String>,
    pub elapsed: Duration,
    /// Virtual time from the start to the end of the test.
    pub virtual_ms: i64,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Run `tests` one after another and hand each result to `each` as soon as it is known.
///
/// Blocking; callable from inside or outside a tokio runtime (the tests run on a thread of
/// their own).
pub fn run_tests(suite: &Suite, tests: &[TestCase], mut each: impl FnMut(CaseResult)) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            let logs = LogBuffer::default();
            let _guard = tracing::subscriber::set_default(logs.subscriber());
            for case in tests {
                let result = run_one(suite, case, &logs);
                if tx.send(result).is_err() {
                    return;
                }
            }
        });
        for result in rx {
            each(result);
        }
    });
}

fn run_one(suite: &Suite, case: &TestCase, logs: &LogBuffer) -> CaseResult {
    let began = Instant::now();
    logs.clear();
    let trace = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = match runtime {
        Ok(rt) => rt.block_on(async {
            match tokio::time::timeout(REAL_TIME_LIMIT, run_case(suite, case, trace.clone(), logs))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Failure::new(format!(
                    "the test did not finish within {} s of real time",
                    REAL_TIME_LIMIT.as_secs()
                ))),
            }
        }),
        Err(e) => Err(Failure::new(format!("cannot start a runtime: {e}"))),
    };
    let trace = std::mem::take(&mut *lock(&trace));
    let (failures, virtual_ms) = match outcome {
        Ok((mut observed, virtual_ms, mut failures)) => {
            observed.logs = logs.lines();
            observed.logs.extend(trace.iter().cloned());
            failures.extend(check(&case.expect, &observed));
            (failures, virtual_ms)
        }
        Err(f) => (vec![f], 0),
    };
    CaseResult {
        name: case.name.value.clone(),
        failures,
        trace,
        elapsed: began.elapsed(),
        virtual_ms,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_case(
    suite: &Suite,
    case: &TestCase,
    trace: Arc<Mutex<Vec<String>>>,
    logs: &LogBuffer,
) -> Result<(Observed, i64, Vec<Failure>), Failure> {
    // A rule engine of its own, so the calendars this test loads are not those of a test
    // running beside it.
    let mut rules = Arc::new(Rules::new(Limits::default()));
    let (workflows, diags) = load_files(&suite.files, None, &rules);
    if !workflows.iter().any(|w| w.name == suite.workflow) {
        let mut f = Failure::new(format!("the workflow `{}` did not load", suite.workflow));
        f.lines = diags
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        return Err(f);
    }
    let clock = Arc::new(ManualClock::new(case.start_ms));
    let store = Arc::new(
        SledStore::temporary()
            .map_err(|e| Failure::new(format!("cannot create a temporary store: {e}")))?,
    );
    let refs: Vec<&CompiledWorkflow> = workflows.iter().collect();
    let host = Arc::new(ScriptedHost::new(case.mocks.clone(), clock.clone(), &refs));
    let journal = Arc::new(Mutex::new(Vec::new()));
    let observer: Observer = {
        let (journal, trace) = (journal.clone(), trace.clone());
        Arc::new(move |id: &str, r: &Record| {
            lock(&trace).push(describe(id, r));
            lock(&journal).push((id.to_string(), r.clone()));
        })
    };
    let driver = Driver::new(store, host.clone(), clock.clone(), Some(observer));
    // A test that edits files runs on a copy of the folder, loaded and reloaded as a
    // daemon's hot reload does (calendar versions in the store, counting from the edit).
    let edited = match case.edits.is_empty() {
        true => None,
        false => Some(EditedFolder::copy(suite)?),
    };
    match &edited {
        None => {
            for wf in workflows {
                driver
                    .install(wf)
                    .map_err(|e| Failure::new(format!("cannot install the workflow: {e}")))?;
            }
        }
        Some(folder) => {
            folder.reload(&driver, "loading the folder")?;
            rules = driver.inner().rules.clone();
        }
    }
    // The instance the test starts, unless its events start them (`started_by: triggers`).
    let started: Option<String> = if case.started_by_triggers {
        None
    } else {
        match driver
            .start_as(&suite.workflow, case.input.clone(), INSTANCE_ID.into())
            .await
        {
            Ok(s) => Some(s.id),
            Err(StartError::InvalidInput(problems)) => {
                let mut f = Failure::new(format!(
                    "the test's input does not match `input:` of workflow `{}`",
                    suite.workflow
                ));
                f.lines = problems.iter().map(ToString::to_string).collect();
                return Err(f);
            }
            Err(e) => return Err(Failure::new(format!("the instance did not start: {e}"))),
        }
    };
    // Nothing more can happen to what the test looks at: its instance has ended, or, when
    // the events start the instances, none is open.
    let finished = || match &started {
        Some(id) => driver
            .inner()
            .store
            .instance(id)
            .ok()
            .flatten()
            .is_none_or(|m| m.is_final()),
        None => all_instances(&driver).iter().all(|m| m.is_final()),
    };
    // The instance the expectations are about: the test's own, or the first instance of
    // the file's workflow that the events started.
    let under_test = || -> Option<String> {
        started.clone().or_else(|| {
            all_instances(&driver)
                .into_iter()
                .filter(|m| m.workflow == suite.workflow && m.parent.is_none())
                .min_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
                .map(|m| m.id)
        })
    };
    let engine_error = |e: String| Failure::new(format!("engine error: {e}"));
    let mut checkpoints = case.checkpoints.iter().peekable();
    let mut checkpoint_failures = Vec::new();
    // A checkpoint looks once everything due by its time has happened: timers due then,
    // and the events sent at that time.
    let look = async |cp: &Checkpoint, failures: &mut Vec<Failure>| -> Result<(), Failure> {
        let at = case.start_ms + cp.at_ms as i64;
        // An instance that has finished is looked at as it is, without moving the clock:
        // the test's own end (and its SLA states) stay where they were.
        if !finished() {
            advance(&driver, clock.as_ref(), at, true, &finished)
                .await
                .map_err(engine_error)?;
            if !finished() {
                clock.advance_to(at);
            }
        }
        driver.wait_idle().await;
        let journal = lock(&journal).clone();
        let mut observed = observe(&driver, under_test().as_deref(), &rules, &host, journal, at)?;
        observed.logs = logs.lines();
        observed.logs.extend(lock(&trace).iter().cloned());
        let when = crate::definition::Duration::from_millis(cp.at_ms);
        for mut f in check(&cp.expect, &observed) {
            f.title = format!("at {when}: {}", f.title);
            failures.push(f);
        }
        Ok(())
    };
    let mut edits = case.edits.iter().peekable();
    // An edit comes before an event sent at the same time, after a checkpoint at it.
    let make_edits = async |until: u64,
                            edits: &mut std::iter::Peekable<
        std::slice::Iter<'_, crate::testing::model::FileEdit>,
    >|
           -> Result<(), Failure> {
        while let Some(e) = edits.next_if(|e| e.after_ms <= until) {
            let at = case.start_ms + e.after_ms as i64;
            if !finished() {
                advance(&driver, clock.as_ref(), at, false, &finished)
                    .await
                    .map_err(engine_error)?;
            }
            clock.advance_to(at.max(clock.now_ms()));
            let folder = edited
                .as_ref()
                .expect("a test with edits has a folder copy");
            folder.write(e)?;
            lock(&trace).push(format!("{}  {} edited", format_ms(clock.now_ms()), e.file));
            folder.reload(
                &driver,
                &format!(
                    "the edit of {} at {}",
                    e.file,
                    crate::definition::Duration::from_millis(e.after_ms)
                ),
            )?;
        }
        Ok(())
    };
    for ev in &case.events {
        while let Some(cp) = checkpoints.next_if(|cp| cp.at_ms < ev.after_ms) {
            make_edits(cp.at_ms.saturating_sub(1), &mut edits).await?;
            look(cp, &mut checkpoint_failures).await?;
        }
        make_edits(ev.after_ms, &mut edits).await?;
        let at = case.start_ms + ev.after_ms as i64;
        if !finished() {
            advance(&driver, clock.as_ref(), at, false, &finished)
                .await
                .map_err(engine_error)?;
        }
        let when = format_ms(clock.now_ms().max(at));
        if started.is_some() && finished() {
            lock(&trace).push(format!(
                "{when}  event {} (key {}) not delivered: the instance had already finished",
                ev.event_type, ev.key
            ));
            continue;
        }
        lock(&trace).push(format!(
            "{when}  event {} (key {}) delivered",
            ev.event_type, ev.key
        ));
        let delivered = driver
            .deliver_with(
                Event {
                    event_type: ev.event_type.clone(),
                    key: ev.key.clone(),
                    data: ev.data.clone(),
                    id: ev.id.clone(),
                },
                async |e: &Event| {
                    if !case.started_by_triggers {
                        return false;
                    }
                    let t = crate::daemon::triggers::start_for_event(&driver, e).await;
                    let mut trace = lock(&trace);
                    for s in &t.started {
                        trace.push(format!(
                            "{when}  event {} (key {}) {} workflow {} (instance {})",
                            e.event_type,
                            e.key,
                            if s.queued.is_some() {
                                "queued a start of"
                            } else if s.attached {
                                "given to"
                            } else if s.created {
                                "started"
                            } else {
                                "matched the open"
                            },
                            s.workflow,
                            s.id
                        ));
                    }
                    for c in &t.counted {
                        trace.push(format!(
                            "{when}  event {} counted for workflow {} (key {}): {} of {}",
                            e.event_type, c.workflow, c.key, c.count, c.at_least
                        ));
                    }
                    for f in &t.failed {
                        trace.push(format!(
                            "{when}  event {} did not start workflow {}: {}",
                            e.event_type, f.workflow, f.message
                        ));
                    }
                    t.consumed
                },
            )
            .await
            .map_err(|e| engine_error(e.to_string()))?;
        if delivered.buffered.is_some() {
            lock(&trace).push(format!(
                "{when}  (nothing was waiting for {} with key {} yet: kept in the inbox for the first wait that begins later)",
                ev.event_type, ev.key
            ));
        } else if delivered.woken.is_empty() {
            lock(&trace).push(format!(
                "{when}  (nothing was waiting for {} with key {})",
                ev.event_type, ev.key
            ));
        }
    }
    for cp in checkpoints {
        make_edits(cp.at_ms.saturating_sub(1), &mut edits).await?;
        look(cp, &mut checkpoint_failures).await?;
    }
    make_edits(u64::MAX, &mut edits).await?;
    let limit = case.start_ms + case.stop_after_ms.unwrap_or(DEFAULT_HORIZON_MS) as i64;
    advance(&driver, clock.as_ref(), limit, true, &finished)
        .await
        .map_err(engine_error)?;
    if case.stop_after_ms.is_some() && !finished() {
        // The test ends at its stop time, however long before it the last timer was.
        clock.advance_to(limit);
    }
    driver.wait_idle().await;

    let journal = std::mem::take(&mut *lock(&journal));
    let observed = observe(
        &driver,
        under_test().as_deref(),
        &rules,
        &host,
        journal,
        clock.now_ms(),
    )?;
    Ok((
        observed,
        clock.now_ms() - case.start_ms,
        checkpoint_failures,
    ))
}

/// A copy of the test's folder for a test with `edits:`, removed with it.
struct EditedFolder {
    dir: tempfile::TempDir,
}

impl EditedFolder {
    fn copy(suite: &Suite) -> Result<EditedFolder, Failure> {
        let cannot = |e: std::io::Error| {
            Failure::new(format!("cannot copy the folder for the test's edits: {e}"))
        };
        let dir = tempfile::tempdir().map_err(cannot)?;
        for f in &suite.files {
            let relative = f.strip_prefix(&suite.folder).unwrap_or(f);
            let to = dir.path().join(relative);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(cannot)?;
            }
            std::fs::copy(f, &to).map_err(cannot)?;
        }
        Ok(EditedFolder { dir })
    }

    fn write(&self, e: &crate::testing::model::FileEdit) -> Result<(), Failure> {
        let to = self.dir.path().join(&e.file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|err| {
                Failure::new(format!("cannot make the edit of {}: {err}", e.file))
            })?;
        }
        std::fs::write(&to, &e.content)
            .map_err(|err| Failure::new(format!("cannot make the edit of {}: {err}", e.file)))
    }

    /// Reload the folder as the daemon does; a file it rejects fails the test.
    fn reload(&self, driver: &Driver, what: &str) -> Result<(), Failure> {
        let report = crate::daemon::reload::Reloader::new(
            driver.clone(),
            self.dir.path().to_path_buf(),
            None,
        )
        .reload_workflows();
        if report.rejected.is_empty() {
            return Ok(());
        }
        let root = format!("{}/", self.dir.path().display());
        let mut f = Failure::new(format!("{what}: a file was rejected"));
        f.lines = report
            .rejected
            .iter()
            .map(|r| r.replace(&root, ""))
            .collect();
        Err(f)
    }
}

/// Every instance in the test's store (a test makes few).
fn all_instances(driver: &Driver) -> Vec<crate::store::InstanceMeta> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = driver
            .inner()
            .store
            .instances(cursor.as_deref(), 1000)
            .unwrap_or_default();
        let full = page.len() == 1000;
        cursor = page.last().map(|m| m.id.clone());
        out.extend(page);
        if !full || out.len() >= 1_000_000 {
            return out;
        }
    }
}

/// The instance `id` as the test's expectations see it now (logs are added by the
/// caller); `None` when the events started no instance of the workflow under test.
fn observe(
    driver: &Driver,
    id: Option<&str>,
    rules: &Arc<Rules>,
    host: &ScriptedHost,
    journal: Vec<(String, Record)>,
    now: i64,
) -> Result<Observed, Failure> {
    let mut instances = std::collections::BTreeMap::new();
    for m in all_instances(driver) {
        *instances.entry(m.workflow).or_insert(0u32) += 1;
    }
    let Some(id) = id else {
        return Ok(Observed {
            status: "not started (no event started it)".to_string(),
            vars: Value::Null,
            journal,
            unanswered: host.unanswered(),
            ended_at: now,
            calendars: rules.calendars(),
            instances,
            ..Observed::default()
        });
    };
    let engine_error = |e: String| Failure::new(format!("engine error: {e}"));
    let inst = driver
        .snapshot(id)
        .ok_or_else(|| Failure::new("the instance vanished from the store"))?;
    let wf = driver
        .inner()
        .registry
        .pinned(driver.inner().store.as_ref(), inst.hash(), rules)
        .map_err(engine_error)?;
    let root_journal = driver
        .inner()
        .store
        .journal(id)
        .map_err(|e| engine_error(e.to_string()))?;
    let (status, current) = match inst.status() {
        Status::Completed | Status::Failed | Status::Cancelled => {
            (inst.status().as_str().to_string(), Vec::new())
        }
        Status::Running | Status::Compensating => (
            "waiting".to_string(),
            inst.current_steps(&wf)
                .into_iter()
                .map(|(_, step, doing)| format!("{step} ({doing})"))
                .collect(),
        ),
    };
    let observed = Observed {
        root_id: id.to_string(),
        status,
        current,
        output: inst.output().cloned(),
        vars: Value::Object(inst.vars().clone()),
        error: inst.error().cloned(),
        path: path_of(&wf, id, &root_journal),
        calls: calls_of(&wf, &root_journal),
        journal,
        logs: Vec::new(),
        unanswered: host.unanswered(),
        ended_at: now,
        calendars: rules.calendars(),
        instances,
    };
    Ok(observed)
}

/// Run the engine up to the virtual time `limit`: every timer due before it fires, the clock
/// jumping from timer to timer; then the clock is moved to `limit`. With `inclusive`, timers
/// due exactly at `limit` fire too and the clock stays at the last timer. Stops early once
/// `done()` holds while the engine is idle.
///
/// The public driver API is enough for this: `wait_idle`, `fire_due_timers`, and the
/// store's `next_timer`.
pub async fn advance(
    driver: &Driver,
    clock: &dyn Clock,
    limit: i64,
    inclusive: bool,
    done: &dyn Fn() -> bool,
) -> Result<(), String> {
    let mut spins = (clock.now_ms(), 0u32);
    loop {
        driver.wait_idle().await;
        if done() {
            return Ok(());
        }
        let now = clock.now_ms();
        if spins.0 == now {
            spins.1 += 1;
            if spins.1 > MAX_SPINS_AT_ONE_INSTANT {
                return Err(format!(
                    "timers keep firing at {} without the instance moving on",
                    format_ms(now)
                ));
            }
        } else {
            spins = (now, 0);
        }
        if driver.fire_due_timers()? > 0 {
            continue;
        }
        let next = driver
            .inner()
            .store
            .next_timer()
            .map_err(|e| e.to_string())?;
        match next {
            // Being fired right now: let it land.
            Some(at) if at <= now => tokio::task::yield_now().await,
            Some(at) if at < limit || (inclusive && at == limit) => clock.advance_to(at),
            _ => {
                if !inclusive {
                    clock.advance_to(limit);
                    driver.wait_idle().await;
                }
                return Ok(());
            }
        }
    }
}

/// The steps an instance went through, in the order they ended: a step is listed when it
/// completes, when a wait times out to its `on_timeout`, or when it fails (to its
/// `on_error`, or ending the instance); a `complete:` step that ends the instance is listed
/// last. Retries of a call are not separate steps.
pub fn path_of(wf: &CompiledWorkflow, id: &str, journal: &[Record]) -> Vec<String> {
    let mut inst = Instance::replay(id, wf, &[]);
    let mut path = Vec::new();
    for r in journal {
        match r {
            Record::StepCompleted { step, .. }
            | Record::CallSucceeded { step, .. }
            | Record::EventReceived { step, .. }
            | Record::StepFailed { step, .. }
            | Record::SubFinished {
                step,
                result: Ok(_),
                ..
            } => path.push(step.clone()),
            Record::TimerFired { frame, step, .. } if inst.timer_ends_step(*frame) => {
                path.push(step.clone())
            }
            Record::Completed { .. } => {
                let ending = inst
                    .main_step(wf)
                    .filter(|s| matches!(s.kind, Kind::Complete(_)));
                if let Some(s) = ending {
                    path.push(s.id.clone());
                }
            }
            _ => {}
        }
        inst.apply(wf, r);
    }
    path
}

/// Every plugin call attempt in the journal, in order.
pub fn calls_of(wf: &CompiledWorkflow, journal: &[Record]) -> Vec<ActualCall> {
    journal
        .iter()
        .filter_map(|r| match r {
            Record::CallStarted {
                frame,
                step,
                attempt,
                key,
                input,
                ..
            } => {
                let target = match wf.step(step).map(|(_, s)| &s.kind) {
                    Some(Kind::Call { plugin, action, .. }) => format!("{plugin}.{action}"),
                    _ => "?".into(),
                };
                Some(ActualCall {
                    frame: *frame,
                    target,
                    step: step.clone(),
                    attempt: *attempt,
                    key: key.clone(),
                    // As every view shows it: a test checks that a code went write-only
                    // (`code: "[write-only]"`); a mock's `when:` sees what the plugin sees.
                    input: {
                        let mut shown = input.clone();
                        crate::daemon::driver::write_only::redact(&mut shown);
                        shown
                    },
                })
            }
            _ => None,
        })
        .collect()
}

/// Log lines written through `tracing` on the test thread.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let buf = self.0.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,casework=trace"))
            .with_ansi(false)
            .without_time()
            .with_writer(move || LogWriter(buf.clone()))
            .finish()
    }

    fn clear(&self) {
        lock(&self.0).clear();
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&lock(&self.0))
            .lines()
            .map(str::to_string)
            .collect()
    }
}
