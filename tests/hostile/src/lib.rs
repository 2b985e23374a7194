//! A plugin that tries everything a plugin must not be able to do, so the host's
//! tests can prove each attempt is stopped. Built with the shipped plugins, never
//! installed by them.

use casework_sdk::{Action, Context, Error, Plugin, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Deserialize, JsonSchema)]
pub struct Nothing {}

#[derive(Deserialize, JsonSchema)]
pub struct Target {
    /// A path, host:port, URL or secret name depending on the action.
    pub target: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

#[derive(Serialize, JsonSchema)]
pub struct Report {
    pub ok: bool,
    pub detail: String,
}

fn report(ok: bool, detail: impl Into<String>) -> Result<Report> {
    Ok(Report {
        ok,
        detail: detail.into(),
    })
}

fn spin(_: Nothing, _: &Context) -> Result<Report> {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn grow(_: Nothing, _: &Context) -> Result<Report> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1024 * 1024]);
        std::hint::black_box(&hoard);
    }
}

#[allow(unconditional_recursion)]
fn deeper(n: u64) -> u64 {
    std::hint::black_box(deeper(std::hint::black_box(n + 1)) + 1)
}

fn recurse(_: Nothing, _: &Context) -> Result<Report> {
    report(true, deeper(0).to_string())
}

fn panic(_: Nothing, _: &Context) -> Result<Report> {
    panic!("hostile plugin panics on purpose")
}

static CALLS: AtomicU64 = AtomicU64::new(0);

/// Counts calls in a global: with a fresh instance per call it is always 1.
fn count(_: Nothing, _: &Context) -> Result<Report> {
    let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    report(true, n.to_string())
}

fn read_file(input: Target, _: &Context) -> Result<Report> {
    match std::fs::read(&input.target) {
        Ok(bytes) => report(true, format!("read {} bytes", bytes.len())),
        Err(e) => report(false, e.to_string()),
    }
}

fn env(_: Nothing, _: &Context) -> Result<Report> {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args: Vec<String> = std::env::args().collect();
    report(
        vars.is_empty() && args.is_empty(),
        format!("vars={vars:?} args={args:?}"),
    )
}

fn connect(input: Target, _: &Context) -> Result<Report> {
    match std::net::TcpStream::connect(&input.target) {
        Ok(_) => report(true, "connected"),
        Err(e) => report(false, e.to_string()),
    }
}

fn fetch(input: Target, _: &Context) -> Result<Report> {
    let mut request = casework_sdk::http::get(input.target);
    for (name, value) in input.headers {
        request = request.header(name, value);
    }
    match request.send() {
        Ok(response) => report(true, format!("{} {}", response.status, response.text())),
        Err(e) => report(false, format!("{e:?}")),
    }
}

fn secret(input: Target, _: &Context) -> Result<Report> {
    match casework_sdk::secrets::lookup(&input.target) {
        Ok(s) => report(true, format!("{} characters", s.expose().len())),
        Err(e) => report(false, format!("{e:?}")),
    }
}

/// Tries every way of getting a secret out: a log line, an error message, and (with
/// `target` = "output") the output itself.
fn leak_secret(input: Target, _: &Context) -> Result<Report> {
    let s = casework_sdk::secrets::get("granted_token")?;
    casework_sdk::log::warn(format!("the token is {}", s.expose()));
    if input.target == "output" {
        return report(true, s.expose().to_string());
    }
    Err(Error::permanent(
        "leaky",
        format!("failed with token {}", s.expose()),
    ))
}

#[derive(Deserialize, JsonSchema)]
pub struct Size {
    /// MiB of output; 2 when absent.
    #[serde(default)]
    pub mib: Option<usize>,
}

fn big_output(input: Size, _: &Context) -> Result<Report> {
    report(true, "x".repeat(input.mib.unwrap_or(2) * 1024 * 1024))
}

/// Writes 2 KiB log lines until stopped: the host must keep only its bounded share.
fn flood(_: Nothing, _: &Context) -> Result<Report> {
    let line = "z".repeat(2048);
    loop {
        casework_sdk::log::info(&line);
    }
}

#[derive(Deserialize, Serialize, JsonSchema)]
pub struct Echo {
    pub value: serde_json::Value,
}

fn echo(input: Echo, ctx: &Context) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "value": input.value,
        "instance_id": ctx.instance_id,
        "step_id": ctx.step_id,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
        "now_ms": casework_sdk::clock::now_ms(),
    }))
}

pub struct Hostile;

impl Plugin for Hostile {
    fn actions() -> Vec<Action> {
        vec![
            Action::new("spin", "Loops forever.", spin),
            Action::new("grow", "Allocates until stopped.", grow),
            Action::new("recurse", "Recurses without end.", recurse),
            Action::new("panic", "Panics.", panic),
            Action::new("count", "Counts calls in a global.", count),
            Action::new("read_file", "Reads a file.", read_file),
            Action::new("env", "Lists environment variables and arguments.", env),
            Action::new("connect", "Opens a raw TCP socket.", connect),
            Action::new("fetch", "GETs a URL through the host.", fetch),
            Action::new("secret", "Looks up a secret by name.", secret),
            Action::new("leak_secret", "Tries to leak a secret.", leak_secret),
            Action::new("big_output", "Returns `mib` MiB (default 2).", big_output),
            Action::new("flood", "Logs 2 KiB lines until stopped.", flood),
            Action::new("echo", "Echoes input and context.", echo),
        ]
    }
}

casework_sdk::export_plugin!(Hostile);
