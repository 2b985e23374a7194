//! `casework run`: try a workflow on a temporary store with a virtual clock.

use crate::clock::{Clock, ManualClock};
use crate::compile::rules::format_ms;
use crate::daemon::registry::{load_files, workflow_files};
use crate::daemon::Driver;
use crate::plugin_host::{Canned, PluginError};
use crate::runtime::{Event, Record};
use crate::store::sled::SledStore;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The workflow file (other workflows in its folder are loaded for subworkflows).
    pub file: PathBuf,
    /// Input as JSON, or @file.json.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// An event to deliver when the instance waits for it: TYPE[:KEY][=JSON or @file]. Repeatable, in order.
    #[arg(long = "event")]
    pub events: Vec<String>,
    /// A canned plugin answer: PLUGIN.ACTION=JSON (or @file), or PLUGIN.ACTION=error:CODE[:retryable]. Repeatable.
    #[arg(long = "mock")]
    pub mocks: Vec<String>,
    /// Virtual start time (RFC 3339). Default: now.
    #[arg(long)]
    pub start: Option<String>,
}

pub(crate) fn json_arg(text: &str) -> Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        }
        None => text.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| anyhow!("not valid JSON ({e}): {text}"))
}

struct PendingEvent {
    event_type: String,
    key: Option<String>,
    data: Value,
}

fn parse_event(spec: &str) -> Result<PendingEvent> {
    let (head, data) = match spec.split_once('=') {
        Some((h, d)) => (h, json_arg(d)?),
        None => (spec, Value::Null),
    };
    let (event_type, key) = match head.split_once(':') {
        Some((t, k)) => (t.to_string(), Some(k.to_string())),
        None => (head.to_string(), None),
    };
    if event_type.is_empty() {
        bail!("--event needs a type, e.g. --event approval.granted or --event approval.granted:ORDER-1={{\"by\":\"lead\"}}");
    }
    Ok(PendingEvent {
        event_type,
        key,
        data,
    })
}

fn canned(mocks: &[String]) -> Result<Canned> {
    let mut host = Canned::new();
    for m in mocks {
        let (target, answer) = m
            .split_once('=')
            .ok_or_else(|| anyhow!("--mock {m}: write PLUGIN.ACTION=JSON"))?;
        if !target.contains('.') {
            bail!("--mock {m}: the target must be PLUGIN.ACTION, e.g. payments.refund");
        }
        let result = match answer.strip_prefix("error:") {
            Some(rest) => {
                let (code, retryable) = match rest.strip_suffix(":retryable") {
                    Some(c) => (c, true),
                    None => (rest, false),
                };
                Err(PluginError {
                    code: code.into(),
                    message: format!("mocked error `{code}`"),
                    retryable,
                })
            }
            None => Ok(json_arg(answer)?),
        };
        host.answer(target, result);
    }
    Ok(host)
}

/// Run and print; returns the process exit code (0 completed, 1 failed, 2 stuck waiting).
pub async fn run(args: RunArgs) -> Result<i32> {
    let input = json_arg(&args.input).context("--input")?;
    let mut events: Vec<PendingEvent> = args
        .events
        .iter()
        .map(|e| parse_event(e))
        .collect::<Result<_>>()?;
    events.reverse();
    let start_ms = match &args.start {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|_| anyhow!("--start must look like 2026-03-06T16:00:00Z"))?
            .timestamp_millis(),
        None => crate::clock::SystemClock.now_ms(),
    };
    let dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The file as the user named it, not as the folder listing spells it: `r.yaml` is listed
    // as `./r.yaml`, and the two are different `Path`s, so the workflow would not be found.
    let mut files = workflow_files(dir).unwrap_or_default();
    match files
        .iter_mut()
        .find(|f| f.file_name() == args.file.file_name())
    {
        Some(listed) => *listed = args.file.clone(),
        None => files.push(args.file.clone()),
    }
    let rules = crate::compile::rules::Rules::shared();
    let (workflows, diags) = load_files(&files, None, &rules);
    let target_name = args.file.display().to_string();
    let own: Vec<_> = diags
        .iter()
        .filter(|d| Path::new(&d.file) == args.file || d.file == target_name)
        .collect();
    for d in &own {
        eprintln!("{d}");
    }
    if own.iter().any(|d| d.is_error()) {
        bail!("{} has errors; fix them and run again", args.file.display());
    }
    let clock = Arc::new(ManualClock::new(start_ms));
    let store = Arc::new(SledStore::temporary()?);
    let host = Arc::new(canned(&args.mocks)?);
    let observer = Arc::new(move |id: &str, r: &Record| {
        let line = describe(id, r);
        // A closed stdout (e.g. piped into `head`) must not take the instance down with it.
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    });
    let driver = Driver::new(store.clone(), host.clone(), clock.clone(), Some(observer));
    let mut name = None;
    for wf in workflows {
        if Path::new(&wf.file) == args.file {
            name = Some(wf.name.clone());
        }
        driver.install(wf).map_err(|e| anyhow!(e))?;
    }
    let name = name.ok_or_else(|| anyhow!("{} did not load", args.file.display()))?;
    let started = match driver.start(&name, input, None).await {
        Ok(s) => s,
        Err(crate::daemon::driver::StartError::InvalidInput(problems)) => {
            for p in problems {
                eprintln!("casework: {p}");
            }
            bail!(
                "the input does not match `input:` in {}",
                args.file.display()
            );
        }
        Err(e) => bail!("{e}"),
    };
    loop {
        let d = driver.clone();
        let id = started.id.clone();
        let event_types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
        // Run until finished, or until the instance waits for the next event we hold.
        let waiting_for = Arc::new(Mutex::new(None));
        let wf2 = waiting_for.clone();
        d.run_virtual(|| {
            let Some(inst) = driver.snapshot(&id) else {
                return true;
            };
            if inst.status().is_final() {
                return true;
            }
            let next_type = event_types.last();
            if let Some(key) = next_type.and_then(|t| inst.waiting_key(t)) {
                *wf2.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.to_string());
                return true;
            }
            false
        })
        .await
        .map_err(|e| anyhow!(e))?;
        let key = waiting_for.lock().unwrap_or_else(|e| e.into_inner()).take();
        match (key, events.pop()) {
            (Some(waiting_key), Some(ev)) => {
                let event = Event {
                    event_type: ev.event_type,
                    key: ev.key.unwrap_or(waiting_key),
                    data: ev.data,
                    id: None,
                };
                println!(
                    "{}  event {} (key {}) delivered",
                    format_ms(clock.now_ms()),
                    event.event_type,
                    event.key
                );
                let delivered = driver
                    .deliver_with(event, async |_| false)
                    .await
                    .map_err(|e| anyhow!(e))?;
                if delivered.buffered.is_some() {
                    println!("  (nothing waits for it yet: kept in the inbox for the first wait that begins later)");
                } else if delivered.woken.is_empty() {
                    println!("  (no instance was waiting for that key)");
                }
            }
            (_, rest) => {
                if let Some(ev) = rest {
                    events.push(ev);
                }
                break;
            }
        }
    }
    driver.wait_idle().await;
    let inst = driver
        .snapshot(&started.id)
        .ok_or_else(|| anyhow!("instance vanished"))?;
    let code = match inst.status() {
        crate::runtime::Status::Completed => {
            println!(
                "result: completed\noutput: {}",
                serde_json::to_string_pretty(inst.output().unwrap_or(&Value::Null))?
            );
            0
        }
        crate::runtime::Status::Failed | crate::runtime::Status::Cancelled => {
            let e = inst.error().map(|e| e.to_string()).unwrap_or_default();
            println!("result: {}\nerror: {e}", inst.status().as_str());
            1
        }
        _ => {
            let wf = driver
                .inner()
                .registry
                .latest(&name)
                .ok_or_else(|| anyhow!("workflow vanished"))?;
            let doing: Vec<String> = inst
                .current_steps(&wf)
                .into_iter()
                .map(|(_, s, d)| format!("{s} ({d})"))
                .collect();
            println!("result: still running — {}", doing.join(", "));
            println!("hint: deliver the events it waits for with --event TYPE[:KEY][=JSON]");
            2
        }
    };
    if !events.is_empty() {
        eprintln!(
            "casework: {} --event value(s) were never used: nothing waited for them",
            events.len()
        );
    }
    Ok(code)
}

/// One line per journal record, as `casework run` prints it.
pub fn describe(id: &str, r: &Record) -> String {
    let t = format_ms(r.at());
    let who = if id.contains('.') {
        format!("[{id}] ")
    } else {
        String::new()
    };
    let what = match r {
        Record::Started {
            workflow, version, ..
        } => format!("started {workflow} v{version}"),
        Record::StepCompleted {
            step, next, reason, ..
        } => {
            let mut s = format!("step {step} done");
            if let Some(n) = next {
                s.push_str(&format!(" → {n}"));
            }
            if let Some(r) = reason {
                s.push_str(&format!(" ({r})"));
            }
            s
        }
        Record::CallStarted {
            step, attempt, key, ..
        } => format!("step {step} calls plugin (attempt {attempt}, idempotency key {key})"),
        Record::CallSucceeded { step, .. } => format!("step {step} plugin answered"),
        Record::CallFailed {
            step,
            attempt,
            error,
            retry_at,
            ..
        } => match retry_at {
            Some(at) => format!(
                "step {step} attempt {attempt} failed ({}: {}), retry at {}",
                error.code,
                error.message,
                format_ms(*at)
            ),
            None => format!(
                "step {step} attempt {attempt} failed ({}: {})",
                error.code, error.message
            ),
        },
        Record::WaitStarted {
            step,
            events,
            key,
            deadline,
            ..
        } => {
            let until = deadline
                .map(|d| format!(" until {}", format_ms(d)))
                .unwrap_or_default();
            format!(
                "step {step} waits for {} (key {key}){until}",
                events.join(" or ")
            )
        }
        Record::EventReceived { step, event, .. } => {
            format!("step {step} received {}", event.event_type)
        }
        Record::SleepStarted { step, until, .. } => {
            format!("step {step} sleeps until {}", format_ms(*until))
        }
        Record::TimerFired { step, next, .. } => match next {
            Some(n) => format!("step {step} timed out → {n}"),
            None => format!("step {step} timer fired"),
        },
        Record::ChildrenStarted { step, children, .. } => {
            format!("step {step} started {} branch(es)", children.len())
        }
        Record::SubStarted {
            step,
            child,
            workflow,
            ..
        } => format!("step {step} started subworkflow {workflow} ({child})"),
        Record::SubFinished { step, result, .. } => format!(
            "step {step} subworkflow {}",
            if result.is_ok() {
                "completed"
            } else {
                "failed"
            }
        ),
        Record::StepFailed {
            step, error, next, ..
        } => match next {
            Some(n) => format!(
                "step {step} failed ({}: {}) → {n}",
                error.code, error.message
            ),
            None => format!("step {step} failed ({}: {})", error.code, error.message),
        },
        Record::CancelRequested { reason, .. } => format!("cancel requested: {reason}"),
        Record::RetryRequested { step, .. } => format!("retry requested: step {step} runs again"),
        Record::Paused { by, reason, .. } => format!("paused by {by}: {reason}"),
        Record::Resumed { by, reason, .. } => format!("resumed by {by}: {reason}"),
        Record::RerunOf {
            instance,
            step,
            by,
            reason,
            ..
        } => format!("runs {instance} again from step {step} (by {by}: {reason})"),
        Record::RerunAs {
            instance,
            step,
            by,
            reason,
            ..
        } => format!("run again from step {step} as {instance} (by {by}: {reason})"),
        Record::Migrated {
            from_version,
            from_step,
            to_version,
            to_step,
            by,
            reason,
            ..
        } => format!(
            "moved by {by} from version {from_version} at {from_step} to version {to_version} at {to_step}: {reason}"
        ),
        Record::CompensationStarted { steps, .. } => format!("compensating: {}", steps.join(", ")),
        Record::Completed { .. } => "completed".into(),
        Record::Failed { error, .. } => format!("failed: {error}"),
        Record::Cancelled { reason, .. } => format!("cancelled: {reason}"),
    };
    format!("{t}  {who}{what}")
}
