//! The console's HTML. Pure functions from what the API answered (and what the driver
//! knows) to markup; maud escapes every value, so nothing a workflow, a customer or an
//! operator wrote can become markup or script.

use super::clocks::{ClockView, WARN_PERCENT};
use super::{Action, ListFilter, Viewer, Visit};
use crate::calendar::sla::SlaState;
use crate::calendar::time::format_ms;
use crate::compile::{CompiledWorkflow, Kind};
use crate::daemon::report::{Durations, WorkflowReport};
use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub const STYLESHEET: &str = include_str!("console.css");

/// Statuses an instance can have, as the list filter offers them.
const STATUSES: &[&str] = &[
    "running",
    "parked",
    "paused",
    "completed",
    "failed",
    "cancelled",
];

/// A short message shown at the top of a page, named in the query string (`?flash=`)
/// so no text from the URL is ever shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flash {
    TokenRefused,
    SignedOut,
    StaleForm,
    Retried,
    Cancelled,
    Paused,
    Resumed,
    Delivered,
    WorkflowPaused,
    WorkflowResumed,
}

impl Flash {
    const ALL: [Flash; 10] = [
        Flash::WorkflowPaused,
        Flash::WorkflowResumed,
        Flash::TokenRefused,
        Flash::SignedOut,
        Flash::StaleForm,
        Flash::Retried,
        Flash::Cancelled,
        Flash::Paused,
        Flash::Resumed,
        Flash::Delivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flash::TokenRefused => "token_refused",
            Flash::SignedOut => "signed_out",
            Flash::StaleForm => "stale_form",
            Flash::Retried => "retried",
            Flash::Cancelled => "cancelled",
            Flash::Paused => "paused",
            Flash::Resumed => "resumed",
            Flash::Delivered => "delivered",
            Flash::WorkflowPaused => "workflow_paused",
            Flash::WorkflowResumed => "workflow_resumed",
        }
    }

    pub fn parse(s: &str) -> Option<Flash> {
        Flash::ALL.into_iter().find(|f| f.as_str() == s)
    }

    pub fn text(self) -> &'static str {
        match self {
            Flash::TokenRefused => "Your token is no longer accepted (it may have been removed from the daemon's configuration, or the daemon restarted with other tokens). Sign in again.",
            Flash::SignedOut => "You are signed out.",
            Flash::StaleForm => "This form is out of date (the page was open across a sign-in or from another site). Reload the page and try again.",
            Flash::Retried => "Retry requested: the failed step runs again.",
            Flash::Cancelled => "Cancel requested: compensations run, then the instance ends as cancelled.",
            Flash::Paused => "Paused: no step begins until the instance is resumed.",
            Flash::Resumed => "Resumed.",
            Flash::Delivered => "Event delivered.",
            Flash::WorkflowPaused => "Workflow paused: its open instances are held, and new ones start held, until it is resumed.",
            Flash::WorkflowResumed => "Workflow resumed: its instances go on.",
        }
    }

    fn is_problem(self) -> bool {
        matches!(self, Flash::TokenRefused | Flash::StaleForm)
    }
}

/// Why the API refused, as it said.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

/// Instances by status for the list page.
#[derive(Debug, Default)]
pub struct Counts {
    pub by_status: BTreeMap<String, u64>,
    /// Only the first index entries were counted.
    pub partial: bool,
    /// The store did not answer.
    pub unavailable: bool,
}

/// How many instances a bulk action's filter matches now.
#[derive(Debug, Default)]
pub struct Matching {
    pub n: u64,
    /// Only part of the index was read: at least `n`.
    pub partial: bool,
    /// The store did not answer.
    pub unavailable: bool,
}

/// A filter as query pairs for links (workflow, status, creation range, `where.*`).
fn filter_pairs<'a>(
    workflow: Option<&'a str>,
    status: Option<&'a str>,
    from: &'a Option<String>,
    to: &'a Option<String>,
    attributes: &'a BTreeMap<String, String>,
) -> Vec<(&'a str, &'a str)> {
    let mut q = Vec::new();
    for (k, v) in [
        ("workflow", workflow),
        ("status", status),
        ("from", ListFilter::non_empty(from)),
        ("to", ListFilter::non_empty(to)),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    for (k, v) in attributes {
        if k.starts_with(super::WHERE) && !v.trim().is_empty() {
            q.push((k.as_str(), v.trim()));
        }
    }
    q
}

fn query_of(pairs: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// What an action's form holds (kept when the API refuses, so nothing typed is lost).
pub struct ActionForm {
    pub event_type: Option<String>,
    pub reason: String,
    pub data: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Instances,
    Workflows,
    Reports,
    None,
}

fn layout(
    viewer: Option<&Viewer>,
    visit: &Visit,
    title: &str,
    nav: Nav,
    refresh_s: Option<u32>,
    body: Markup,
) -> Markup {
    let item = |href: &str, label: &str, this: Nav| {
        html! {
            li { a href=(href) aria-current=[(nav == this).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh_s {
                    // Live without script: the page reloads itself while the instance runs.
                    meta http-equiv="refresh" content=(s);
                }
                title { (title) " · Casework" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "Casework" }
                    @if let Some(v) = viewer {
                        nav aria-label="Console" {
                            ul {
                                (item("/ui/instances", "Instances", Nav::Instances))
                                (item("/ui/workflows", "Workflows", Nav::Workflows))
                                (item("/ui/reports", "Reports", Nav::Reports))
                            }
                        }
                        span.who { (v.describe()) }
                        @if v.signed_in() {
                            form.inline method="post" action="/ui/sign-out" {
                                input type="hidden" name="csrf" value=(visit.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

fn flash_box(flash: Option<super::Flash>) -> Markup {
    html! {
        @if let Some(f) = flash {
            p class=(if f.is_problem() { "flash problem" } else { "flash" }) role="status" { (f.text()) }
        }
    }
}

fn refusal_box(r: &Refusal) -> Markup {
    html! {
        div.refusal role="alert" {
            p { strong { "The daemon refused: " } (r.message) }
            p.small { "HTTP " (r.status.as_u16()) ", error code " code { (r.code) } }
        }
    }
}

/// A time the API gave (RFC 3339) as the console shows it: UTC, to the second.
fn when(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(d) => d
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        Err(_) => t.to_string(),
    }
}

fn when_ms(ms: i64) -> String {
    when(&format_ms(ms))
}

/// A length of time for people: `3h 30m`, `2d 4h`, `45s`.
fn span(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let s = ms.unsigned_abs() / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let text = match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    };
    format!("{sign}{text}")
}

fn status_badge(status: &str) -> Markup {
    html! { span class={"badge " (status)} { (status) } }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub fn sign_in(visit: &Visit, next: &str, flash: Option<Flash>, error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        (flash_box(flash))
        @if let Some(e) = error {
            div.refusal role="alert" { p { (e) } }
        }
        p { "Sign in with an API token of this daemon. A " strong { "read" } " token can look; an " strong { "admin" } " token can also retry, cancel, pause and deliver events." }
        form.card method="post" action="/ui/sign-in" {
            input type="hidden" name="csrf" value=(visit.csrf);
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input id="token" name="token" type="password" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
        p.small { "The token is kept in a cookie only this console can read, until you sign out or close the browser." }
    };
    layout(None, visit, "Sign in", Nav::None, None, body)
}

pub fn refused(viewer: &Viewer, visit: &Visit, r: &Refusal) -> Markup {
    let title = match r.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::BAD_REQUEST => "Cannot show this",
        _ => "Something went wrong",
    };
    let body = html! {
        h1 { (title) }
        (refusal_box(r))
        p { a href="/ui/instances" { "Back to the instances" } }
    };
    layout(Some(viewer), visit, title, Nav::None, None, body)
}

pub fn workflows(
    viewer: &Viewer,
    visit: &Visit,
    answer: &Value,
    loaded: &[Arc<CompiledWorkflow>],
    flash: Option<Flash>,
) -> Markup {
    let empty = Vec::new();
    let list = answer["workflows"].as_array().unwrap_or(&empty);
    let failed = answer["failed"].as_array().unwrap_or(&empty);
    let calendars = answer["calendars"].as_array().unwrap_or(&empty);
    let body = html! {
        h1 { "Workflows" }
        (flash_box(flash))
        @if !failed.is_empty() {
            section.problems aria-labelledby="failed" {
                h2 id="failed" { "Files that did not load" }
                p { "These files were not loaded; the version loaded before (if any) keeps running. Fix each problem and save: the daemon reloads the folder." }
                @for f in failed {
                    h3 { code { (f["file"].as_str().unwrap_or("?")) } }
                    ul {
                        @for e in f["errors"].as_array().unwrap_or(&empty) {
                            li { code { (e.as_str().unwrap_or("")) } }
                        }
                    }
                }
            }
        }
        table {
            caption { "Loaded workflows (the latest version of each; older versions keep running their instances)" }
            thead { tr {
                th scope="col" { "Workflow" } th scope="col" { "Version" } th scope="col" { "Loaded" }
                th scope="col" { "File" } th scope="col" { "State" }
                @if viewer.may_act() { th scope="col" { "Action" } }
            } }
            tbody {
                @for w in list {
                    @let name = w["name"].as_str().unwrap_or("?");
                    tr {
                        td {
                            a href={"/ui/instances?workflow=" (super::encode(name))} { (name) }
                            @if let Some(d) = w["description"].as_str() { br; span.small { (d) } }
                            @let search: Vec<&str> = w["search"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                            @if !search.is_empty() { br; span.small { "Found by: " (search.join(", ")) } }
                        }
                        td { (w["version"]) }
                        td { (w["loaded_at"].as_str().map(when).unwrap_or_default()) }
                        td { code { (w["file"].as_str().unwrap_or("")) } }
                        td {
                            @if w["paused"].is_object() {
                                span class="badge paused" { "paused" }
                                " by " (w["paused"]["by"].as_str().unwrap_or("?")) ": " (w["paused"]["reason"].as_str().unwrap_or(""))
                            } @else { "running" }
                            @if let Some(warn) = w["warning"].as_str() { br; span.small { "Warning: " (warn) } }
                        }
                        @if viewer.may_act() {
                            td {
                                @if w["paused"].is_object() { a.button href={"/ui/workflows/" (super::encode(name)) "/resume"} { "Resume…" } }
                                @else { a.button href={"/ui/workflows/" (super::encode(name)) "/pause"} { "Pause…" } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Steps" }
        @for wf in loaded {
            details {
                summary { (wf.name) " v" (wf.version) " · " (wf.steps.len()) " steps" }
                (diagram(wf, &BTreeSet::new(), &BTreeSet::new()))
                (step_map(wf, &BTreeSet::new(), &BTreeSet::new()))
            }
        }
        h2 { "Calendars" }
        @if calendars.is_empty() { p { "No calendars are loaded." } }
        @else {
            table {
                thead { tr { th scope="col" { "Calendar" } th scope="col" { "Version" } th scope="col" { "In force since" } th scope="col" { "Earlier versions" } th scope="col" { "File" } } }
                tbody {
                    @for c in calendars {
                        tr {
                            td { (c["name"].as_str().unwrap_or("?")) }
                            td { (c["version"]) }
                            td { (c["since"].as_str().map(when).unwrap_or_else(|| "always".into())) }
                            td {
                                @for e in c["earlier_versions"].as_array().unwrap_or(&empty) {
                                    "v" (e["version"]) " since " (e["since"].as_str().map(when).unwrap_or_else(|| "always".into())) br;
                                }
                            }
                            td { code { (c["file"].as_str().unwrap_or("")) } }
                        }
                    }
                }
            }
        }
    };
    layout(Some(viewer), visit, "Workflows", Nav::Workflows, None, body)
}

/// What a compiled step does, in the words of the workflow file.
fn kind_text(k: &Kind) -> String {
    match k {
        Kind::Rule(_) => "rule".into(),
        Kind::Decide { .. } => "decision table".into(),
        Kind::Switch { .. } => "switch".into(),
        Kind::Call { plugin, action, .. } => format!("call {plugin}.{action}"),
        Kind::Wait { events, .. } => format!("wait for {}", events.join(" / ")),
        Kind::Sleep(_) => "sleep".into(),
        Kind::Parallel { .. } => "parallel".into(),
        Kind::Foreach { .. } => "for each".into(),
        Kind::Set(_) => "set".into(),
        Kind::Subworkflow { workflow, .. } => format!("subworkflow {workflow}"),
        Kind::Complete(_) => "complete".into(),
        Kind::Fail { code, .. } => format!("fail ({code})"),
    }
}

/// Where a step can go: (target, how), in the order `casework graph` draws them.
fn edges(wf: &CompiledWorkflow, at: usize) -> Vec<(usize, &'static str)> {
    let s = &wf.steps[at];
    let mut out: Vec<(usize, &'static str)> = s.next.iter().map(|&t| (t, "next")).collect();
    if let Kind::Wait {
        on_timeout: Some(t),
        ..
    } = &s.kind
    {
        out.push((*t, "timeout"));
    }
    if let Some(t) = s.on_error {
        out.push((t, "error"));
    }
    out.retain(|(t, _)| *t < wf.steps.len());
    out
}

/// The workflow drawn as a diagram on the server (SVG, so no script is needed): steps
/// top to bottom in file order, an arrow down to the step after, arcs on the right for
/// other jumps (dashed: on timeout or error). Passed steps and the arrows between them are
/// green, the steps it is at blue. The list after it says the same in text.
fn diagram(
    wf: &CompiledWorkflow,
    visited: &BTreeSet<String>,
    current: &BTreeSet<String>,
) -> Markup {
    const X: i64 = 8;
    const W: i64 = 320;
    const H: i64 = 30;
    const ROW: i64 = 46;
    let n = wf.steps.len() as i64;
    let mid = |i: usize| 8 + i as i64 * ROW + H / 2;
    let bend = |i: usize, j: usize| (24 + 10 * (i.abs_diff(j) as i64)).min(180);
    let widest = (0..wf.steps.len())
        .flat_map(|i| edges(wf, i).into_iter().map(move |(j, _)| (i, j)))
        .filter(|(i, j)| *j != i + 1)
        .map(|(i, j)| bend(i, j))
        .max()
        .unwrap_or(0);
    let width = X + W + widest + 16;
    let height = 8 + n * ROW;
    let passed = |i: usize| {
        let id = &wf.steps[i].id;
        visited.contains(id) || current.contains(id)
    };
    let short = |t: String| {
        if t.chars().count() > 34 {
            format!("{}…", t.chars().take(33).collect::<String>())
        } else {
            t
        }
    };
    html! {
        svg.diagram role="img" aria-label={"Diagram of the " (wf.steps.len()) " steps of " (wf.name) "; the list below gives the same steps in text"}
            width=(width) height=(height) viewBox={"0 0 " (width) " " (height)} {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#57606a" {}
                }
                marker id="arrow-passed" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#0f6b2f" {}
                }
            }
            @for i in 0..wf.steps.len() {
                @for (j, how) in edges(wf, i) {
                    @let taken = passed(i) && passed(j);
                    @let stroke = if taken { "#0f6b2f" } else { "#8c959f" };
                    @let marker = if taken { "url(#arrow-passed)" } else { "url(#arrow)" };
                    @let dash = if how == "next" { "none" } else { "5 4" };
                    @if j == i + 1 && how == "next" {
                        line x1=(X + W / 2) y1=(mid(i) + H / 2) x2=(X + W / 2) y2=(mid(j) - H / 2 - 1)
                            stroke=(stroke) stroke-width=(if taken { 2 } else { 1 }) marker-end=(marker) {}
                    } @else {
                        @let (y1, y2, d) = (mid(i), mid(j), bend(i, j));
                        path d={"M " (X + W) " " (y1) " C " (X + W + d) " " (y1) ", " (X + W + d) " " (y2) ", " (X + W + 1) " " (y2)}
                            fill="none" stroke=(stroke) stroke-width=(if taken { 2 } else { 1 }) stroke-dasharray=(dash) marker-end=(marker) {
                            title { (wf.steps[i].id) " → " (wf.steps[j].id) @if how != "next" { " (on " (how) ")" } }
                        }
                    }
                }
            }
            @for (i, s) in wf.steps.iter().enumerate() {
                @let (fill, stroke) = if current.contains(&s.id) { ("#dbe7fd", "#0b57d0") } else if visited.contains(&s.id) { ("#e6f4ea", "#0f6b2f") } else { ("#ffffff", "#8c959f") };
                g {
                    title { (s.id) ": " (kind_text(&s.kind)) }
                    rect x=(X) y=(mid(i) - H / 2) width=(W) height=(H) rx="5" fill=(fill) stroke=(stroke) stroke-width=(if current.contains(&s.id) { 2 } else { 1 }) {}
                    text x=(X + 10) y=(mid(i) + 5) font-size="13" fill="#1b1f24" font-family="ui-monospace, Menlo, monospace" font-weight="600" { (s.id) }
                    text x=(X + W - 10) y=(mid(i) + 5) font-size="12" fill="#4a5461" text-anchor="end" font-family="system-ui, sans-serif" { (short(kind_text(&s.kind))) }
                }
            }
        }
    }
}

/// The workflow's steps in file order with where each goes next; the steps an instance
/// has been through and is at are marked (its path through the workflow).
fn step_map(
    wf: &CompiledWorkflow,
    visited: &BTreeSet<String>,
    current: &BTreeSet<String>,
) -> Markup {
    html! {
        ol.steps {
            @for s in &wf.steps {
                @let class = if current.contains(&s.id) { "step current" } else if visited.contains(&s.id) { "step visited" } else { "step" };
                li class=(class) {
                    span.step-id { (s.id) }
                    " "
                    span.small { (kind_text(&s.kind)) }
                    @if current.contains(&s.id) { " " span.badge.running { "here now" } }
                    @else if visited.contains(&s.id) { " " span.visually-hidden { "(passed)" } }
                    @let next: Vec<&str> = s.next.iter().filter_map(|i| wf.steps.get(*i)).map(|t| t.id.as_str()).collect();
                    @if !next.is_empty() { span.next { " → " (next.join(", ")) } }
                    @if let Kind::Wait { on_timeout: Some(t), .. } = &s.kind {
                        @if let Some(t) = wf.steps.get(*t) { span.next { " · on timeout → " (t.id) } }
                    }
                    @if let Some(e) = s.on_error.and_then(|i| wf.steps.get(i)) { span.next { " · on error → " (e.id) } }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn instances(
    viewer: &Viewer,
    visit: &Visit,
    filter: &ListFilter,
    shown: &[Value],
    next: Option<&str>,
    counts: &Counts,
    workflows: &[String],
    attributes: &[String],
) -> Markup {
    let chosen_wf = ListFilter::non_empty(&filter.workflow);
    let chosen_status = ListFilter::non_empty(&filter.status);
    let pairs = filter_pairs(
        chosen_wf,
        chosen_status,
        &filter.from,
        &filter.to,
        &filter.attributes,
    );
    let next_link = next.map(|cursor| {
        let mut q = pairs.clone();
        q.push(("cursor", cursor));
        format!("/ui/instances?{}", query_of(&q))
    });
    let body = html! {
        h1 { "Instances" }
        form.filters method="get" action="/ui/instances" {
            div {
                label for="workflow" { "Workflow" }
                select id="workflow" name="workflow" {
                    option value="" selected[chosen_wf.is_none()] { "All workflows" }
                    @for w in workflows {
                        option value=(w) selected[chosen_wf == Some(w.as_str())] { (w) }
                    }
                }
            }
            div {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" selected[chosen_status.is_none()] { "Any status" }
                    @for s in STATUSES {
                        option value=(s) selected[chosen_status == Some(*s)] { (s) }
                    }
                }
            }
            div {
                label for="from" { "Created from" }
                input id="from" name="from" type="date" value=[ListFilter::non_empty(&filter.from)];
            }
            div {
                label for="to" { "Created before" }
                input id="to" name="to" type="date" value=[ListFilter::non_empty(&filter.to)];
            }
            @for name in attributes {
                @let field = format!("{}{name}", super::WHERE);
                div {
                    label for=(field) { (name.replace('_', " ")) }
                    input id=(field) name=(field) type="search" value=[filter.attributes.get(&field).map(|v| v.trim()).filter(|v| !v.is_empty())];
                }
            }
            button type="submit" { "Show" }
        }
        p.counts aria-label="Counts by status" {
            @if counts.unavailable { "Counts are not available: the store did not answer." }
            @else {
                @for (status, n) in &counts.by_status {
                    span.count { (status_badge(status)) " " (n) }
                }
                @if counts.by_status.is_empty() { "No instances yet." }
                @if counts.partial { " (of the first 100,000 instances)" }
            }
        }
        @if shown.is_empty() {
            p { "No instance matches these filters." }
        } @else {
            table {
                caption { "Instances, oldest first, as of loading this page (an instance's own page updates itself while it runs)" }
                thead { tr {
                    th scope="col" { "Instance" } th scope="col" { "Workflow" } th scope="col" { "Status" }
                    th scope="col" { "Created" } th scope="col" { "Last change" }
                } }
                tbody {
                    @for i in shown {
                        @let id = i["id"].as_str().unwrap_or("?");
                        tr {
                            td { a href={"/ui/instances/" (super::encode(id))} { code { (id) } } }
                            td { (i["workflow"].as_str().unwrap_or("?")) " v" (i["version"]) }
                            td { (status_badge(i["status"].as_str().unwrap_or("?"))) }
                            td { (i["created_at"].as_str().map(when).unwrap_or_default()) }
                            td { (i["updated_at"].as_str().map(when).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        @if let Some(href) = next_link {
            p { a href=(href) rel="next" { "Next page" } }
        }
        @if viewer.may_act() && chosen_wf.is_some() {
            @let q = query_of(&pairs);
            section aria-labelledby="bulk" {
                h2 id="bulk" { "Every matching instance" }
                ul.actions {
                    @if chosen_status == Some("failed") { li { a.button href={"/ui/bulk?action=retry&" (q)} { "Retry all…" } } }
                    li { a.button href={"/ui/bulk?action=pause&" (q)} { "Pause all…" } }
                    li { a.button href={"/ui/bulk?action=resume&" (q)} { "Resume all…" } }
                    li { a.button.danger href={"/ui/bulk?action=cancel&" (q)} { "Cancel all…" } }
                }
            }
        }
    };
    // No self-reload here: it would reset filters being chosen. Counts are as of loading.
    layout(Some(viewer), visit, "Instances", Nav::Instances, None, body)
}

/// One journal entry in a line: what happened, for people.
fn entry_text(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    let error = |k: &str| {
        let err = &e[k];
        format!(
            "{}: {}",
            err["code"].as_str().unwrap_or("error"),
            err["message"].as_str().unwrap_or("")
        )
    };
    match e["record"].as_str().unwrap_or("") {
        "started" => {
            let mut t = format!("{} v{}", s("workflow"), e["version"]);
            if let Some(k) = e["idempotency_key"].as_str() {
                t.push_str(&format!(", idempotency key {k}"));
            }
            t
        }
        "step_completed" => {
            let mut t = String::new();
            if let Some(r) = e["reason"].as_str() {
                t.push_str(&format!("chosen because: {r}"));
            }
            if let Some(n) = e["next"].as_str() {
                if !t.is_empty() {
                    t.push_str("; ");
                }
                t.push_str(&format!("next {n}"));
            }
            t
        }
        "call_started" => format!("attempt {}, idempotency key {}", e["attempt"], s("key")),
        "call_succeeded" => format!("attempt {} succeeded", e["attempt"]),
        "call_failed" => {
            let mut t = format!("attempt {}: {}", e["attempt"], error("error"));
            if let Some(r) = e["retry_at"].as_str() {
                t.push_str(&format!("; retries at {}", when(r)));
            }
            t
        }
        "wait_started" => {
            let events: Vec<&str> = e["events"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut t = format!("for {}", events.join(" / "));
            if let Some(d) = e["deadline"].as_str() {
                t.push_str(&format!(" until {}", when(d)));
            }
            t
        }
        "event_received" => {
            let mut t = e["event"]["type"].as_str().unwrap_or("?").to_string();
            if let Some(id) = e["event"]["id"].as_str() {
                t.push_str(&format!(" (id {id})"));
            }
            t
        }
        "sleep_started" => format!("until {}", when(&s("until"))),
        "timer_fired" => e["next"]
            .as_str()
            .map(|n| format!("next {n}"))
            .unwrap_or_default(),
        "step_failed" | "failed" => error("error"),
        "compensation_started" => format!("undoing {}", e["steps"]),
        "cancel_requested" | "cancelled" => s("reason"),
        "paused" | "resumed" => format!("by {}: {}", s("by"), s("reason")),
        "retry_requested" => format!("step {}", s("step")),
        "rerun_of" => format!(
            "runs {} again from {}, by {}: {}",
            s("instance"),
            s("step"),
            s("by"),
            s("reason")
        ),
        "rerun_as" => format!(
            "run again from {} as {}, by {}: {}",
            s("step"),
            s("instance"),
            s("by"),
            s("reason")
        ),
        "migrated" => format!(
            "version {} at {} → version {} at {}, by {}: {}",
            e["from_version"],
            s("from_step"),
            e["to_version"],
            s("to_step"),
            s("by"),
            s("reason")
        ),
        "sub_started" => format!("{} as {}", s("workflow"), s("child")),
        "sub_finished" => s("child"),
        _ => String::new(),
    }
}

/// A journal entry as the timeline shows it in full: without the key a wait listens on,
/// which can be personal data (an email address, a phone number).
fn shown(e: &Value) -> Value {
    let mut e = e.clone();
    match e["record"].as_str() {
        Some("wait_started") => {
            if let Some(m) = e.as_object_mut() {
                m.remove("key");
            }
        }
        Some("event_received") => {
            if let Some(m) = e["event"].as_object_mut() {
                m.remove("key");
            }
        }
        _ => {}
    }
    e
}

fn record_label(r: &str) -> String {
    r.replace('_', " ")
}

fn clock_state(c: &ClockView) -> Markup {
    match &c.reading {
        Err(e) => html! { span.badge.failed { "unreadable" } " " (e) },
        Ok(r) => {
            let (class, text) = match r.state {
                SlaState::Running => ("running", "running"),
                SlaState::Paused => ("paused", "paused"),
                SlaState::Warned => ("warned", "warned"),
                SlaState::Breached => ("failed", "breached"),
            };
            html! { span class={"badge " (class)} { (text) } }
        }
    }
}

pub fn instance(
    viewer: &Viewer,
    visit: &Visit,
    view: &Value,
    wf: Option<&CompiledWorkflow>,
    clocks: &[ClockView],
    flash: Option<Flash>,
) -> Markup {
    let empty = Vec::new();
    let id = view["id"].as_str().unwrap_or("?");
    let status = view["status"].as_str().unwrap_or("?");
    let journal = view["journal"].as_array().unwrap_or(&empty);
    let waiting = view["waiting"].as_array().unwrap_or(&empty);
    let current: BTreeSet<String> = view["current"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|c| c["step"].as_str().map(str::to_string))
        .collect();
    // A step was passed when a record names it, or names it as where the path went next
    // (a `complete` step leaves no record of its own).
    let visited: BTreeSet<String> = journal
        .iter()
        .flat_map(|e| [e["step"].as_str(), e["next"].as_str()])
        .flatten()
        .map(str::to_string)
        .collect();
    let final_ = matches!(status, "completed" | "failed" | "cancelled");
    let waited_events: Vec<&str> = waiting
        .iter()
        .flat_map(|w| w["events"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let base = format!("/ui/instances/{}", super::encode(id));
    let body = html! {
        p.small { a href="/ui/instances" { "← Instances" } }
        h1 { "Instance " code { (id) } }
        (flash_box(flash))
        dl.facts {
            dt { "Workflow" } dd { a href={"/ui/instances?workflow=" (super::encode(view["workflow"].as_str().unwrap_or("")))} { (view["workflow"].as_str().unwrap_or("?")) } " v" (view["version"]) }
            dt { "Status" } dd id="status" { (status_badge(status)) }
            @if view["paused"].is_object() {
                dt { "Held" } dd { "by " (view["paused"]["by"].as_str().unwrap_or("?")) " since " (view["paused"]["since"].as_str().map(when).unwrap_or_default()) ": " (view["paused"]["reason"].as_str().unwrap_or("")) }
            }
            @if !current.is_empty() {
                dt { "At" } dd { (current.iter().cloned().collect::<Vec<_>>().join(", ")) }
            }
            @if view["error"].is_object() {
                dt { "Error" } dd.error-text { code { (view["error"]["code"].as_str().unwrap_or("")) } ": " (view["error"]["message"].as_str().unwrap_or("")) @if let Some(s) = view["error"]["step"].as_str() { " (in step " (s) ")" } }
            }
        }
        @if !waiting.is_empty() {
            section aria-labelledby="waiting" {
                h2 id="waiting" { "Waiting" }
                ul {
                    @for w in waiting {
                        @let events: Vec<&str> = w["events"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                        li {
                            "Step " strong { (w["step"].as_str().unwrap_or("?")) }
                            @if events.is_empty() { " sleeps" } @else { " waits for " (events.join(" or ")) }
                            @if let Some(u) = w["until"].as_str() { " until " (when(u)) }
                        }
                    }
                }
            }
        }
        @if !clocks.is_empty() {
            section aria-labelledby="sla" {
                h2 id="sla" { "SLA clocks" }
                table {
                    caption {
                        "In business time on each clock's calendar, read "
                        (if final_ { "when the instance ended" } else { "now" })
                        "; warned from " (WARN_PERCENT) "% of the target"
                    }
                    thead { tr {
                        th scope="col" { "Clock" } th scope="col" { "Calendar" } th scope="col" { "Target" }
                        th scope="col" { "Used" } th scope="col" { "Remaining" } th scope="col" { "Due" } th scope="col" { "State" } th scope="col" { "Paused spells" }
                    } }
                    tbody {
                        @for c in clocks {
                            tr {
                                th scope="row" { (c.name) }
                                td { (c.calendar) }
                                td { (span(c.target_ms)) }
                                @match &c.reading {
                                    Ok(r) => {
                                        td { (span(r.used_ms)) }
                                        td { (span(r.remaining_ms)) }
                                        td { (r.deadline.map(when_ms).unwrap_or_else(|| "— (paused)".into())) }
                                    }
                                    Err(_) => { td { "?" } td { "?" } td { "?" } }
                                }
                                td { (clock_state(c)) }
                                td {
                                    @if c.pauses.is_empty() { "none" }
                                    @for (from, until, why) in &c.pauses {
                                        (when_ms(*from)) " – " (until.map(when_ms).unwrap_or_else(|| "now".into())) ": " (why) br;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="actions" {
            h2 id="actions" { "Actions" }
            @if !viewer.may_act() {
                p { "Your token has read scope: sign in with an admin token to retry, cancel, pause or deliver events." }
            } @else if final_ && status != "failed" {
                p { "This instance has ended; there is nothing to do." }
            } @else {
                ul.actions {
                    @if status == "failed" { li { a.button href={(base) "/retry"} { "Retry…" } } }
                    @if !final_ {
                        @for ev in &waited_events {
                            li { a.button href={(base) "/event?type=" (super::encode(ev))} { "Deliver " (ev) "…" } }
                        }
                        @if view["paused"].is_object() { li { a.button href={(base) "/resume"} { "Resume…" } } }
                        @else { li { a.button href={(base) "/pause"} { "Pause…" } } }
                        li { a.button.danger href={(base) "/cancel"} { "Cancel…" } }
                    }
                }
            }
        }
        @if let Some(wf) = wf {
            section aria-labelledby="path" {
                h2 id="path" { "Path through " (wf.name) " v" (wf.version) }
                (diagram(wf, &visited, &current))
                details { summary { "The steps as text" } (step_map(wf, &visited, &current)) }
            }
        }
        section aria-labelledby="timeline" {
            h2 id="timeline" { "Timeline" }
            table.timeline {
                caption { (journal.len()) " journal records, oldest first" }
                thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Step" } th scope="col" { "Details" } } }
                tbody {
                    @for e in journal {
                        @let record = e["record"].as_str().unwrap_or("?");
                        tr class={"record " (record)} {
                            td { (e["at"].as_str().map(when).unwrap_or_default()) }
                            td { (record_label(record)) }
                            td { (e["step"].as_str().unwrap_or("")) }
                            td {
                                (entry_text(e))
                                details { summary { "record" } pre { (pretty(&shown(e))) } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="data" {
            h2 id="data" { "Data" }
            p.small { "Inputs marked sensitive are shown as [redacted], wherever they were copied." }
            h3 { "Input" } pre { (pretty(&view["input"])) }
            h3 { "Variables" } pre { (pretty(&view["vars"])) }
            @if !view["output"].is_null() { h3 { "Output" } pre { (pretty(&view["output"])) } }
        }
    };
    // Live while it runs; an instance parked on an event or a timer changes rarely, and
    // each reload is an API request on the viewer's rate limit.
    let refresh = match status {
        "running" | "compensating" => Some(3),
        _ if final_ => None,
        _ => Some(15),
    };
    layout(
        Some(viewer),
        visit,
        &format!("Instance {id}"),
        Nav::Instances,
        refresh,
        body,
    )
}

fn action_title(a: Action) -> &'static str {
    match a {
        Action::Retry => "Retry the failed step",
        Action::Cancel => "Cancel the instance",
        Action::Pause => "Pause the instance",
        Action::Resume => "Resume the instance",
        Action::Event => "Deliver an event",
    }
}

fn action_explained(a: Action) -> &'static str {
    match a {
        Action::Retry => "The step that failed runs again with the variables it had. A plugin call runs with a new attempt number; the payment provider sees the same idempotency key.",
        Action::Cancel => "Compensations of the completed steps run (refunds are reversed, pages withdrawn as the workflow says), then the instance ends as cancelled. This cannot be undone.",
        Action::Pause => "No step begins and no timer fires until the instance is resumed; events sent meanwhile wait in the inbox.",
        Action::Resume => "The instance goes on; timers that fell due while it was held fire once.",
        Action::Event => "The event goes to the step waiting for it, exactly as if the helpdesk had sent it.",
    }
}

pub fn confirm(
    viewer: &Viewer,
    visit: &Visit,
    view: &Value,
    action: Action,
    form: &ActionForm,
    refusal: Option<&Refusal>,
) -> Markup {
    let empty = Vec::new();
    let id = view["id"].as_str().unwrap_or("?");
    let base = format!("/ui/instances/{}", super::encode(id));
    let waited: Vec<&str> = view["waiting"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .flat_map(|w| w["events"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let title = action_title(action);
    let body = html! {
        p.small { a href=(base) { "← Instance " (id) } }
        h1 { (title) }
        p { "Instance " code { (id) } " of " (view["workflow"].as_str().unwrap_or("?")) " is " (status_badge(view["status"].as_str().unwrap_or("?"))) "." }
        p { (action_explained(action)) }
        @if let Some(r) = refusal { (refusal_box(r)) }
        form.card method="post" action={(base) "/" (action.as_str())} {
            input type="hidden" name="csrf" value=(visit.csrf);
            @if action.needs_reason() {
                label for="reason" { "Why (kept in the journal)" }
                textarea id="reason" name="reason" rows="2" required { (form.reason) }
            }
            @if action == Action::Event {
                label for="type" { "Event" }
                select id="type" name="type" required {
                    @for ev in &waited {
                        option value=(ev) selected[form.event_type.as_deref() == Some(*ev)] { (ev) }
                    }
                }
                @if waited.is_empty() { p { "The instance waits for no event now." } }
                label for="data" { "Event data (JSON)" }
                textarea id="data" name="data" rows="6" spellcheck="false" { (form.data) }
            }
            div.buttons {
                button type="submit" class=(if action == Action::Cancel { "danger" } else { "" }) { "Confirm: " (title.to_lowercase()) }
                " "
                a href=(base) { "Go back without doing anything" }
            }
        }
    };
    layout(Some(viewer), visit, title, Nav::Instances, None, body)
}

/// The page that asks to confirm pausing or resuming a whole workflow.
pub fn confirm_workflow(
    viewer: &Viewer,
    visit: &Visit,
    workflow: &Value,
    pause: bool,
    reason: &str,
    refusal: Option<&Refusal>,
) -> Markup {
    let name = workflow["name"].as_str().unwrap_or("?");
    let (title, verb, explained) = if pause {
        ("Pause the workflow", "pause", "Every open instance of this workflow is held (no step begins, no timer fires; events wait in the inbox) and new instances start held, until the workflow is resumed. Use it to stop a workflow that is doing harm while you fix it.")
    } else {
        ("Resume the workflow", "resume", "Its held instances go on (timers that fell due fire once, events kept meanwhile are taken) and new instances start as usual. Instances paused one by one stay paused.")
    };
    let body = html! {
        p.small { a href="/ui/workflows" { "← Workflows" } }
        h1 { (title) " " code { (name) } }
        p { (explained) }
        @if let Some(r) = refusal { (refusal_box(r)) }
        form.card method="post" action={"/ui/workflows/" (super::encode(name)) "/" (verb)} {
            input type="hidden" name="csrf" value=(visit.csrf);
            label for="reason" { "Why (kept in each instance's journal)" }
            textarea id="reason" name="reason" rows="2" required { (reason) }
            div.buttons {
                button type="submit" { "Confirm: " (title.to_lowercase()) }
                " "
                a href="/ui/workflows" { "Go back without doing anything" }
            }
        }
    };
    layout(Some(viewer), visit, title, Nav::Workflows, None, body)
}

fn bulk_title(a: &str) -> &'static str {
    match a {
        "retry" => "Retry",
        "cancel" => "Cancel",
        "pause" => "Pause",
        _ => "Resume",
    }
}

fn bulk_query(f: &super::BulkForm) -> String {
    query_of(&filter_pairs(
        Some(&f.workflow),
        ListFilter::non_empty(&f.status),
        &f.from,
        &f.to,
        &f.attributes,
    ))
}

/// The page that asks to confirm a bulk action over the list's filter.
pub fn confirm_bulk(
    viewer: &Viewer,
    visit: &Visit,
    f: &super::BulkForm,
    matching: &Matching,
    refusal: Option<&Refusal>,
) -> Markup {
    let status = ListFilter::non_empty(&f.status);
    let search = ListFilter::search(&f.attributes);
    let hidden = filter_pairs(None, None, &f.from, &f.to, &f.attributes);
    let title = format!("{} every matching instance", bulk_title(&f.action));
    let needs_reason = f.action != "retry";
    let body = html! {
        p.small { a href={"/ui/instances?" (bulk_query(f))} { "← The instances" } }
        h1 { (title) }
        p {
            @if matching.unavailable { "The store did not say how many" } @else {
                @if matching.partial { "At least " }
                strong { (matching.n) }
            }
            " instance(s) of " code { (f.workflow) }
            @if let Some(s) = status { " with status " (status_badge(s)) }
            @for (name, value) in &search { ", " (name.replace('_', " ")) " " code { (value) } }
            " match now; at most 1,000 are acted on per confirmation, each exactly as if you had done it on its own page (instances that cannot be are listed afterwards)."
        }
        @if let Some(r) = refusal { (refusal_box(r)) }
        form.card method="post" action="/ui/bulk" {
            input type="hidden" name="csrf" value=(visit.csrf);
            input type="hidden" name="action" value=(f.action);
            input type="hidden" name="workflow" value=(f.workflow);
            @if let Some(s) = status { input type="hidden" name="status" value=(s); }
            @for (k, v) in &hidden { input type="hidden" name=(k) value=(v); }
            @if needs_reason {
                label for="reason" { "Why (kept in each instance's journal)" }
                textarea id="reason" name="reason" rows="2" required { (f.reason) }
            }
            div.buttons {
                button type="submit" class=(if f.action == "cancel" { "danger" } else { "" }) { "Confirm: " (title.to_lowercase()) }
                " "
                a href={"/ui/instances?" (bulk_query(f))} { "Go back without doing anything" }
            }
        }
    };
    layout(Some(viewer), visit, &title, Nav::Instances, None, body)
}

/// What a bulk action did.
pub fn bulk_done(viewer: &Viewer, visit: &Visit, f: &super::BulkForm, report: &Value) -> Markup {
    let empty = Vec::new();
    let done = report["done"].as_array().unwrap_or(&empty);
    let refused = report["refused"].as_array().unwrap_or(&empty);
    let body = html! {
        p.small { a href={"/ui/instances?" (bulk_query(f))} { "← The instances" } }
        h1 { (bulk_title(&f.action)) ": done" }
        p.flash role="status" { (done.len()) " instance(s) done, " (refused.len()) " refused." }
        @if report["next_cursor"].is_string() { p { "More instances may match: confirm again to go on." } }
        @if report["stopped"].is_object() { div.refusal role="alert" { p { "Stopped early: " (report["stopped"]["message"].as_str().unwrap_or("")) } } }
        @if !refused.is_empty() {
            table {
                caption { "Refused, with the reason each one's own page would have given" }
                thead { tr { th scope="col" { "Instance" } th scope="col" { "Why" } } }
                tbody {
                    @for r in refused {
                        @let id = r["id"].as_str().unwrap_or("?");
                        tr { td { a href={"/ui/instances/" (super::encode(id))} { code { (id) } } } td { (r["message"].as_str().unwrap_or("")) " (" code { (r["code"].as_str().unwrap_or("")) } ")" } }
                    }
                }
            }
        }
    };
    layout(
        Some(viewer),
        visit,
        "Bulk action",
        Nav::Instances,
        None,
        body,
    )
}

fn durations(d: &Option<Durations>) -> Markup {
    match d {
        None => html! { td colspan="3" { "not recorded" } },
        Some(d) => html! { td { (span(d.p50_ms)) } td { (span(d.p90_ms)) } td { (d.count) } },
    }
}

/// A bar chart drawn on the server (SVG: no script), one bar per week; `None` is a week
/// without the measure. The numbers are in the bars' titles and in a table beside it.
fn bar_chart(title: &str, weeks: &[(String, Option<i64>, String)]) -> Markup {
    const BAR: i64 = 22;
    const HEIGHT: i64 = 120;
    let max = weeks
        .iter()
        .filter_map(|(_, v, _)| *v)
        .max()
        .unwrap_or(0)
        .max(1);
    let width = BAR * weeks.len().max(1) as i64;
    let summary: Vec<String> = weeks
        .iter()
        .map(|(week, _, text)| format!("week of {week}: {text}"))
        .collect();
    html! {
        figure.chart {
            figcaption { (title) }
            svg role="img" aria-label={(title) ": " (summary.join("; "))} width=(width) height=(HEIGHT + 2) viewBox={"0 0 " (width) " " (HEIGHT + 2)} {
                line x1="0" y1=(HEIGHT) x2=(width) y2=(HEIGHT) stroke="#8c959f" {}
                @for (i, (week, v, text)) in weeks.iter().enumerate() {
                    @if let Some(v) = v {
                        @let h = (v.max(&0) * (HEIGHT - 4) / max).max(1);
                        rect x=(i as i64 * BAR + 3) y=(HEIGHT - h) width=(BAR - 6) height=(h) fill="#0b57d0" {
                            title { "week of " (week) ": " (text) }
                        }
                    }
                }
            }
            p.small { (weeks.first().map(|w| w.0.as_str()).unwrap_or("")) " … " (weeks.last().map(|w| w.0.as_str()).unwrap_or("")) }
        }
    }
}

fn weekly(r: &WorkflowReport) -> Markup {
    let sla: Vec<(String, Option<i64>, String)> = r
        .by_week
        .iter()
        .map(|w| match &w.sla {
            Some(a) => (
                w.week.clone(),
                Some(a.percent as i64),
                format!("{}% ({} of {})", a.percent, a.met, a.measured),
            ),
            None => (w.week.clone(), None, "not recorded".into()),
        })
        .collect();
    let resolution: Vec<(String, Option<i64>, String)> = r
        .by_week
        .iter()
        .map(|w| match &w.resolution {
            Some(d) => (
                w.week.clone(),
                Some(d.p50_ms),
                format!("p50 {} ({} resolved)", span(d.p50_ms), d.count),
            ),
            None => (w.week.clone(), None, "none resolved".into()),
        })
        .collect();
    html! {
        @if !r.by_week.is_empty() {
            section.weekly aria-label={(r.workflow) " by week"} {
                h2 { (r.workflow) " by week" }
                div.charts {
                    @if sla.iter().any(|w| w.1.is_some()) { (bar_chart("SLA met, percent", &sla)) }
                    @if resolution.iter().any(|w| w.1.is_some()) { (bar_chart("Time to resolution, p50", &resolution)) }
                }
                details {
                    summary { "The numbers" }
                    table {
                        thead { tr { th scope="col" { "Week of" } th scope="col" { "Started" } th scope="col" { "SLA met" } th scope="col" { "Resolution p50" } th scope="col" { "First response p50" } } }
                        tbody {
                            @for w in &r.by_week {
                                tr {
                                    td { (w.week) }
                                    td { (w.instances) }
                                    td { (w.sla.as_ref().map(|a| format!("{}% ({} of {})", a.percent, a.met, a.measured)).unwrap_or_else(|| "—".into())) }
                                    td { (w.resolution.as_ref().map(|d| span(d.p50_ms)).unwrap_or_else(|| "—".into())) }
                                    td { (w.first_response.as_ref().map(|d| span(d.p50_ms)).unwrap_or_else(|| "—".into())) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn reports(viewer: &Viewer, visit: &Visit, reports: &[WorkflowReport]) -> Markup {
    let body = html! {
        h1 { "Reports" }
        p { "From what each workflow recorded with " code { "report:" } " in its steps; the same figures as " code { "casework report" } "." }
        @if reports.is_empty() { p { "Nothing is recorded yet." } }
        table {
            thead {
                tr {
                    th scope="col" rowspan="2" { "Workflow" } th scope="col" rowspan="2" { "Instances" }
                    th scope="colgroup" colspan="3" { "First response" } th scope="colgroup" colspan="3" { "Resolution" }
                    th scope="col" rowspan="2" { "SLA met" } th scope="col" rowspan="2" { "Surveys" }
                }
                tr { th scope="col" { "p50" } th scope="col" { "p90" } th scope="col" { "n" } th scope="col" { "p50" } th scope="col" { "p90" } th scope="col" { "n" } }
            }
            tbody {
                @for r in reports {
                    tr {
                        th scope="row" { (r.workflow) }
                        td { (r.instances) }
                        (durations(&r.first_response))
                        (durations(&r.resolution))
                        td {
                            @match &r.sla {
                                Some(a) => {
                                    meter min="0" max="100" value=(a.percent) aria-label={"SLA met " (a.percent) "%"} {}
                                    " " (a.percent) "% (" (a.met) " of " (a.measured) ")"
                                }
                                None => { "not recorded" }
                            }
                        }
                        td {
                            @for (q, s) in &r.surveys { (q) ": " (s.average) " (" (s.answers) ")" br; }
                        }
                    }
                }
            }
        }
        @for r in reports { (weekly(r)) }
    };
    layout(Some(viewer), visit, "Reports", Nav::Reports, None, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_of_time_read_as_people_say_them() {
        assert_eq!(span(45_000), "45s");
        assert_eq!(span(3 * 3_600_000 + 30 * 60_000), "3h 30m");
        assert_eq!(span(2 * 86_400_000 + 4 * 3_600_000), "2d 4h");
        assert_eq!(span(-90 * 60_000), "-1h 30m");
    }

    #[test]
    fn every_flash_reads_back_from_its_name() {
        for f in Flash::ALL {
            assert_eq!(Flash::parse(f.as_str()), Some(f));
        }
        assert_eq!(Flash::parse("<script>"), None);
    }
}
