//! Commands that act on a running daemon over its HTTP API: `list`, `cancel`, `retry`,
//! `send-event`, `inbox`, `pause`, `resume`. Requests go through [`super::client`].

use super::client::{Client, DaemonArgs};
use crate::compile::rules::format_ms;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::Write;

// The statuses `GET /v1/instances?status=` filters on.
use crate::runtime::INDEX_STATUSES as STATUSES;

/// Largest page the API answers.
const MAX_PAGE: usize = 1000;

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only instances of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only instances with this status.
    #[arg(long, value_parser = STATUSES)]
    pub status: Option<String>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Print at most this many instances.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Print every matching instance, however many (pages through the API).
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Print the API's JSON (`{"instances": [...], "next_cursor": ...}`) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Filters by business attributes and start time, for `list` and `bulk`.
#[derive(clap::Args, Debug, Default)]
pub struct SearchArgs {
    /// Only instances whose search attribute NAME (the workflow's `search:`) is VALUE;
    /// repeat for several attributes (needs --workflow).
    #[arg(long = "where", value_name = "NAME=VALUE", value_parser = attribute)]
    pub attributes: Vec<(String, String)>,
    /// Only instances started at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub started_after: Option<String>,
    /// Only instances started before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub started_before: Option<String>,
}

impl SearchArgs {
    /// The filters as query parameters (`GET /v1/instances`).
    fn query(&self) -> Vec<(&str, &str)> {
        let mut q: Vec<(&str, &str)> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some(t) = &self.started_after {
            q.push(("started_after", t));
        }
        if let Some(t) = &self.started_before {
            q.push(("started_before", t));
        }
        q
    }

    /// The filters as fields of a `POST /v1/bulk` body.
    fn add_to(&self, body: &mut Value) {
        if !self.attributes.is_empty() {
            let search: serde_json::Map<String, Value> = self
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            body["search"] = Value::Object(search);
        }
        if let Some(t) = &self.started_after {
            body["started_after"] = json!(t);
        }
        if let Some(t) = &self.started_before {
            body["started_before"] = json!(t);
        }
    }
}

fn attribute(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!(
            "`{text}` is not NAME=VALUE; for example --where ticket_id=T-1042"
        )),
    }
}

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The instance to cancel (an id from `casework list`).
    pub id: String,
    /// Why, kept in the journal (`cancel requested: REASON`).
    #[arg(long, default_value = "cancelled from the command line")]
    pub reason: String,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    /// The failed instance whose failed step runs again (an id from `casework list --status failed`).
    pub id: String,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// What `casework bulk` does to each instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkAction {
    Retry,
    Cancel,
    Pause,
    Resume,
}

impl BulkAction {
    fn as_str(self) -> &'static str {
        match self {
            BulkAction::Retry => "retry",
            BulkAction::Cancel => "cancel",
            BulkAction::Pause => "pause",
            BulkAction::Resume => "resume",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BulkArgs {
    /// What to do to each matching instance: retry, cancel, pause or resume.
    #[arg(value_enum)]
    pub action: BulkAction,
    /// The workflow whose instances it is done to.
    #[arg(long, value_name = "NAME")]
    pub workflow: String,
    /// Only instances with this status (e.g. `failed` for retry).
    #[arg(long)]
    pub status: Option<String>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Why, kept in each instance's journal (needed for cancel, pause and resume).
    #[arg(long)]
    pub reason: Option<String>,
    /// Instances to act on at most, over all the requests it makes.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Print the API's JSON answers.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `casework bulk`: `POST /v1/bulk` page after page until `--limit` instances were acted
/// on or none match; prints what was done and what was refused, and exits 1 if anything
/// was refused.
pub fn bulk(args: BulkArgs) -> Result<u8> {
    let client = Client::new(&args.daemon)?;
    let mut body = json!({"action": args.action.as_str(), "workflow": args.workflow});
    if let Some(r) = &args.reason {
        body["reason"] = json!(r);
    }
    let (mut done, mut refused) = (0usize, 0usize);
    bulk_pages(
        &client,
        body,
        &args.status,
        &args.search,
        args.limit,
        args.json,
        |answer| {
            let ids = answer["done"].as_array().map_or(0, Vec::len);
            done += ids;
            let mut seen = ids;
            for r in answer["refused"].as_array().into_iter().flatten() {
                refused += 1;
                seen += 1;
                if !args.json {
                    out(&format!(
                        "refused {}: {} ({})",
                        r["id"].as_str().unwrap_or("?"),
                        r["message"].as_str().unwrap_or(""),
                        r["code"].as_str().unwrap_or("")
                    ));
                }
            }
            seen
        },
    )?;
    if !args.json {
        let verb = match args.action {
            BulkAction::Retry => "retrying",
            BulkAction::Cancel => "cancelling",
            BulkAction::Pause => "paused",
            BulkAction::Resume => "resumed",
        };
        out(&format!(
            "{verb} {done} instance(s) of {}{}; {refused} refused",
            args.workflow,
            args.status
                .as_deref()
                .map(|s| format!(" (status {s})"))
                .unwrap_or_default()
        ));
    }
    Ok(u8::from(refused > 0))
}

#[derive(clap::Args, Debug)]
pub struct RerunArgs {
    /// The ended instance to run again (an id from `casework list`).
    pub id: String,
    /// The top-level step the new instance begins at.
    #[arg(long, value_name = "STEP")]
    pub from: String,
    /// A variable to change, as NAME=JSON (e.g. --set 'amount_minor=1500'); NAME=null
    /// removes it. The others are the ended instance's.
    #[arg(long = "set", value_name = "NAME=JSON")]
    pub set: Vec<String>,
    /// Why, kept in both journals with the token's name.
    #[arg(long)]
    pub reason: String,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `casework rerun`: `POST /v1/instances/{id}/rerun`.
pub fn rerun(args: RerunArgs) -> Result<u8> {
    let mut vars = serde_json::Map::new();
    for s in &args.set {
        let Some((name, value)) = s.split_once('=') else {
            anyhow::bail!("--set {s}: write NAME=JSON, e.g. --set 'amount_minor=1500'");
        };
        let value: Value = serde_json::from_str(value).map_err(|e| {
            anyhow::anyhow!(
                "--set {s}: the value is not JSON ({e}); quote text: --set '{name}=\"text\"'"
            )
        })?;
        vars.insert(name.trim().to_string(), value);
    }
    let client = Client::new(&args.daemon)?;
    let answer = client.post(
        &["v1", "instances", &args.id, "rerun"],
        Some(&json!({"from": args.from, "vars": vars, "reason": args.reason})),
    )?;
    if args.json {
        print_json(&answer)?;
    } else {
        out(&format!(
            "{} runs {} again from step {}{}",
            answer["id"].as_str().unwrap_or("?"),
            args.id,
            args.from,
            if answer["created"] == json!(false) {
                " (asked before: the same new instance)"
            } else {
                ""
            }
        ));
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The workflow whose waiting instances move to its newest loaded version, where that
    /// version's `migrate:` rules allow.
    #[arg(value_name = "WORKFLOW")]
    pub workflow: String,
    /// Only list which instances would move, and why the others would not.
    #[arg(long)]
    pub dry_run: bool,
    /// Why, kept in each moved instance's journal (needed unless --dry-run).
    #[arg(long, required_unless_present = "dry_run")]
    pub reason: Option<String>,
    /// Only instances with this status (default: parked, the only ones that can move).
    #[arg(long)]
    pub status: Option<String>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Instances to look at at most, over all the requests it makes.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Print the API's JSON answers.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `casework migrate`: `POST /v1/bulk` with `"action": "migrate"`, page after page;
/// prints each instance that moves (or would) and why each other one stays.
pub fn migrate(args: MigrateArgs) -> Result<u8> {
    let client = Client::new(&args.daemon)?;
    let mut body = json!({"action": "migrate", "workflow": args.workflow, "dry_run": args.dry_run});
    if let Some(r) = &args.reason {
        body["reason"] = json!(r);
    }
    let (mut moved, mut stays, mut handed) = (0usize, 0usize, 0usize);
    bulk_pages(
        &client,
        body,
        &args.status,
        &args.search,
        args.limit,
        args.json,
        |answer| {
            let before = moved + stays + handed;
            for m in answer["moves"].as_array().into_iter().flatten() {
                let id = m["id"].as_str().unwrap_or("?");
                if m["handed_over"].as_bool() == Some(true) {
                    handed += 1;
                    if !args.json {
                        out(&format!(
                            "handed over {id}: the daemon that owns it moves it to version {}",
                            m["to_version"]
                        ));
                    }
                    continue;
                }
                moved += 1;
                if !args.json {
                    out(&format!(
                        "{} {id}: version {} at {} → version {} at {}",
                        if args.dry_run { "would move" } else { "moved" },
                        m["from_version"],
                        m["from_step"].as_str().unwrap_or("?"),
                        m["to_version"],
                        m["to_step"].as_str().unwrap_or("?"),
                    ));
                }
            }
            for r in answer["refused"].as_array().into_iter().flatten() {
                stays += 1;
                if !args.json {
                    out(&format!(
                        "stays {}: {} ({})",
                        r["id"].as_str().unwrap_or("?"),
                        r["message"].as_str().unwrap_or(""),
                        r["code"].as_str().unwrap_or("")
                    ));
                }
            }
            moved + stays + handed - before
        },
    )?;
    if !args.json {
        let verb = if args.dry_run { "would move" } else { "moved" };
        let handed = if handed > 0 {
            format!(", {handed} handed to the daemons that own them")
        } else {
            String::new()
        };
        out(&format!(
            "{verb} {moved} instance(s) of {}{handed}; {stays} stay on the version they run",
            args.workflow
        ));
    }
    Ok(0)
}

/// `POST /v1/bulk` with `body` (plus the status, search attributes, page size and cursor)
/// page after page, until `limit` instances were looked at or none are left; `page` reads
/// each answer and says how many instances it covered. An overloaded daemon stops it with
/// an error that says when to go on.
fn bulk_pages(
    client: &Client,
    body: Value,
    status: &Option<String>,
    search: &SearchArgs,
    limit: usize,
    json: bool,
    mut page: impl FnMut(&Value) -> usize,
) -> Result<()> {
    let mut seen = 0usize;
    let mut cursor: Option<String> = None;
    while seen < limit {
        let mut body = body.clone();
        body["limit"] = json!((limit - seen).min(10_000));
        if let Some(s) = status {
            body["status"] = json!(s);
        }
        search.add_to(&mut body);
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let answer = client.post(&["v1", "bulk"], Some(&body))?;
        if json {
            print_json(&answer)?;
        }
        seen += page(&answer);
        if let Some(stop) = answer["stopped"].as_object() {
            anyhow::bail!(
                "stopped after {seen} instance(s): {} ({}); run the same command again in {} s to go on",
                stop.get("message").and_then(|m| m.as_str()).unwrap_or(""),
                stop.get("code").and_then(|m| m.as_str()).unwrap_or(""),
                stop.get("retry_after_s").and_then(|m| m.as_u64()).unwrap_or(1)
            );
        }
        match answer["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    /// The instance (an id from `casework list`).
    #[arg(required_unless_present = "workflow", conflicts_with = "workflow")]
    pub id: Option<String>,
    /// A whole workflow instead: its open instances hold, and starts while it is paused
    /// wait (created held) until it is resumed.
    #[arg(long, value_name = "NAME")]
    pub workflow: Option<String>,
    /// Why, kept in the journal with the token's name.
    #[arg(long)]
    pub reason: String,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(clap::Args, Debug)]
pub struct SendEventArgs {
    /// The event type, as in a wait step's `event:` (e.g. refund.approved).
    #[arg(value_name = "TYPE")]
    pub event_type: String,
    /// The correlation key, as in a wait step's `key:` (e.g. ORD-1).
    pub key: String,
    /// The event's data as JSON, or @file.json.
    #[arg(long)]
    pub data: Option<String>,
    /// A deduplication id: sending the same id again wakes and starts nothing (the daemon
    /// answers as it did the first time).
    #[arg(long, value_name = "EVENT_ID")]
    pub id: Option<String>,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum InboxCommand {
    /// List buffered events, oldest first (keys and data are not shown; give --type and
    /// --key to see the events one wait would take).
    List {
        /// Only events of this type (with --key).
        #[arg(long = "type", value_name = "TYPE", requires = "key")]
        event_type: Option<String>,
        /// Only events with this correlation key (with --type).
        #[arg(long, requires = "event_type")]
        key: Option<String>,
        /// Print at most this many events.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Remove buffered events: by number (SEQ from `casework inbox list`), or every one
    /// of a type and key.
    Purge {
        /// Numbers of the events to remove.
        #[arg(
            value_name = "SEQ",
            required_unless_present = "event_type",
            conflicts_with = "event_type"
        )]
        seqs: Vec<u64>,
        /// Remove every event of this type (with --key).
        #[arg(long = "type", value_name = "TYPE", requires = "key")]
        event_type: Option<String>,
        /// ... and this correlation key.
        #[arg(long, requires = "event_type")]
        key: Option<String>,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// A closed stdout (piped into `head`) must not turn into a panic.
fn out(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn print_json(v: &Value) -> Result<()> {
    out(&serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn list(args: ListArgs) -> Result<u8> {
    let client = Client::new(&args.daemon)?;
    let want = (!args.all).then_some(args.limit as usize);
    let mut instances: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_size = want
            .map(|w| (w - instances.len()).min(MAX_PAGE))
            .unwrap_or(MAX_PAGE)
            .to_string();
        let mut query: Vec<(&str, &str)> = vec![("limit", page_size.as_str())];
        if let Some(w) = &args.workflow {
            query.push(("workflow", w.as_str()));
        }
        if let Some(s) = &args.status {
            query.push(("status", s.as_str()));
        }
        query.extend(args.search.query());
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let page = client.get(&["v1", "instances"], &query)?;
        instances.extend(page["instances"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || want.is_some_and(|w| instances.len() >= w) {
            break;
        }
    }
    if args.json {
        return print_json(&json!({"instances": instances, "next_cursor": cursor})).map(|_| 0);
    }
    if instances.is_empty() {
        eprintln!("casework: no instances match");
        return Ok(0);
    }
    out(&table(&instances));
    if cursor.is_some() {
        eprintln!(
            "casework: showing the first {}; there may be more (--limit N or --all)",
            instances.len()
        );
    }
    Ok(0)
}

/// Instances as an aligned table, one per line.
fn table(instances: &[Value]) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    // RFC 3339 from the daemon; epoch milliseconds from an older one.
    let time = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.as_i64().map(format_ms).unwrap_or_default(),
    };
    let mut rows = vec![[
        "ID".to_string(),
        "WORKFLOW".to_string(),
        "VERSION".to_string(),
        "STATUS".to_string(),
        "CREATED".to_string(),
        "UPDATED".to_string(),
    ]];
    for i in instances {
        rows.push([
            text(&i["id"]),
            text(&i["workflow"]),
            text(&i["version"]),
            text(&i["status"]),
            time(&i["created_at"]),
            time(&i["updated_at"]),
        ]);
    }
    align(&rows)
}

pub fn cancel(args: CancelArgs) -> Result<u8> {
    let client = Client::new(&args.daemon)?;
    let answer = client.post(
        &["v1", "instances", &args.id, "cancel"],
        Some(&json!({"reason": args.reason})),
    )?;
    if args.json {
        return print_json(&answer).map(|_| 0);
    }
    out(&format!("instance {} is being cancelled", args.id));
    Ok(0)
}

pub fn retry(args: RetryArgs) -> Result<u8> {
    let client = Client::new(&args.daemon)?;
    let answer = client.post(&["v1", "instances", &args.id, "retry"], None)?;
    if args.json {
        return print_json(&answer).map(|_| 0);
    }
    out(&format!(
        "instance {} is retrying: its failed step runs again",
        args.id
    ));
    Ok(0)
}

/// `pause` (hold) or `resume` an instance.
pub fn hold(args: HoldArgs, pause: bool) -> Result<u8> {
    let client = Client::new(&args.daemon)?;
    let verb = if pause { "pause" } else { "resume" };
    let body = json!({"reason": args.reason});
    if let Some(workflow) = &args.workflow {
        let answer = client.post(&["v1", "workflows", workflow, verb], Some(&body))?;
        if args.json {
            return print_json(&answer).map(|_| 0);
        }
        let n = answer["instances"].as_u64().unwrap_or(0);
        out(&if pause {
            format!("workflow {workflow} is paused: {n} open instance(s) held; starts wait until `casework resume --workflow {workflow}`")
        } else {
            format!("workflow {workflow} goes on: {n} instance(s) it held go on")
        });
        return Ok(0);
    }
    let id = args.id.as_deref().unwrap_or_default();
    let answer = client.post(&["v1", "instances", id, verb], Some(&body))?;
    if args.json {
        return print_json(&answer).map(|_| 0);
    }
    out(&match (pause, answer["changed"] == json!(true)) {
        (true, true) => {
            format!("instance {id} is paused: no step begins until `casework resume {id}`")
        }
        (true, false) => format!("instance {id} was paused already"),
        (false, true) => format!("instance {id} goes on"),
        (false, false) => format!("instance {id} was not paused"),
    });
    Ok(0)
}

pub fn send_event(args: SendEventArgs) -> Result<u8> {
    let client = Client::new(&args.daemon)?;
    let mut body = json!({"type": args.event_type, "key": args.key});
    if let Some(d) = &args.data {
        body["data"] = super::run::json_arg(d).context("--data")?;
    }
    if let Some(id) = &args.id {
        body["id"] = json!(id);
    }
    let answer = client.post(&["v1", "events"], Some(&body))?;
    if args.json {
        return print_json(&answer).map(|_| 0);
    }
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let woken = ids(&answer["woken"]);
    if answer["buffered"] == json!(true) {
        out(&format!(
            "no instance waits for {} with key {} yet: the event is kept in the inbox (number {}) for the first wait that begins later",
            args.event_type, args.key, answer["inbox_seq"]
        ));
    } else if woken.is_empty() {
        out(&format!(
            "no instance was waiting for {} with key {}",
            args.event_type, args.key
        ));
    } else {
        out(&format!("woke {}", woken.join(", ")));
    }
    for s in answer["started"].as_array().into_iter().flatten() {
        if let Some(seq) = s["queued"]["seq"].as_u64() {
            out(&format!(
                "queued a start of {} (inbox number {seq}): it starts when the open instance for its key finishes",
                s["workflow"].as_str().unwrap_or("")
            ));
            continue;
        }
        if s["attached"] == json!(true) && s["created"] != json!(true) {
            out(&format!(
                "gave it to {} ({}), open for the same key",
                s["id"].as_str().unwrap_or(""),
                s["workflow"].as_str().unwrap_or("")
            ));
            continue;
        }
        let created = if s["created"] == json!(false) {
            " (already started by this event)"
        } else {
            ""
        };
        out(&format!(
            "started {} ({}){created}",
            s["id"].as_str().unwrap_or(""),
            s["workflow"].as_str().unwrap_or("")
        ));
    }
    for c in answer["counted"].as_array().into_iter().flatten() {
        out(&format!(
            "counted for {} `{}`: {} of {}",
            c["workflow"].as_str().unwrap_or(""),
            c["key"].as_str().unwrap_or(""),
            c["count"],
            c["at_least"]
        ));
    }
    let errors = answer["trigger_errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in &errors {
        eprintln!(
            "casework: the trigger of {} did not start: {}",
            e["workflow"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        );
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

pub fn inbox(command: InboxCommand) -> Result<u8> {
    match command {
        InboxCommand::List {
            event_type,
            key,
            limit,
            json,
            daemon,
        } => {
            let client = Client::new(&daemon)?;
            let limit = limit.to_string();
            let mut query: Vec<(&str, &str)> = vec![("limit", limit.as_str())];
            if let (Some(t), Some(k)) = (&event_type, &key) {
                query.push(("type", t.as_str()));
                query.push(("key", k.as_str()));
            }
            let page = client.get(&["v1", "inbox"], &query)?;
            if json {
                return print_json(&page).map(|_| 0);
            }
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                eprintln!("casework: the inbox is empty");
                return Ok(0);
            }
            let mut rows = vec![[
                "SEQ".to_string(),
                "TYPE".to_string(),
                "ARRIVED".to_string(),
                "UNTIL".to_string(),
            ]];
            let text = |v: &Value| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            };
            for e in &events {
                rows.push([
                    text(&e["seq"]),
                    text(&e["type"]),
                    text(&e["arrived"]),
                    text(&e["until"]),
                ]);
            }
            out(&align(&rows));
            if !page["next_after"].is_null() {
                eprintln!(
                    "casework: showing the oldest {}; there are more (--limit up to 1000)",
                    events.len()
                );
            }
            Ok(0)
        }
        InboxCommand::Purge {
            seqs,
            event_type,
            key,
            daemon,
        } => {
            let client = Client::new(&daemon)?;
            let mut purged = 0;
            if let (Some(t), Some(k)) = (&event_type, &key) {
                loop {
                    let answer = client.delete(
                        &["v1", "inbox"],
                        &[("type", t.as_str()), ("key", k.as_str())],
                    )?;
                    let n = answer["purged"].as_u64().unwrap_or(0);
                    purged += n;
                    if n < MAX_PAGE as u64 {
                        break;
                    }
                }
            }
            for seq in &seqs {
                let answer = client.delete(&["v1", "inbox", &seq.to_string()], &[])?;
                purged += answer["purged"].as_u64().unwrap_or(0);
            }
            out(&format!("purged {purged} buffered event(s)"));
            Ok(0)
        }
    }
}

/// Rows as aligned columns.
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_formats_times() {
        let t = table(&[
            json!({"id": "a1", "workflow": "refund", "version": 3, "status": "parked",
                   "created_at": 0, "updated_at": 1000}),
            json!({"id": "b22222", "workflow": "hold", "version": 1, "status": "failed",
                   "created_at": "1970-01-01T00:00:00.000Z", "updated_at": 0}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ID      WORKFLOW  VERSION  STATUS"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("a1      refund    3        parked  1970-01-01T00:00:00.000Z"),
            "{t}"
        );
        assert!(lines[1].ends_with("1970-01-01T00:00:01.000Z"), "{t}");
    }
}
