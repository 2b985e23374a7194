//! The only door to integrations: [`PluginHost`]. The WebAssembly host implements it; so
//! do the canned responses of `casework run --mock` and the fakes used by tests.

pub mod directory;
pub mod egress;
pub mod pool;
pub mod secrets;
pub mod wasm;

use crate::runtime::StepError;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// What a plugin is told about the call it is serving.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CallContext {
    pub instance_id: String,
    pub step_id: String,
    pub attempt: u32,
    /// Same for every attempt of one step visit, so providers can deduplicate.
    pub idempotency_key: String,
    /// Values in the input the plugin must never say back (opened write-only values):
    /// scrubbed from its log lines and errors, and an output holding one is refused.
    #[serde(skip)]
    pub scrub: Vec<String>,
}

/// A plugin's typed error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl From<PluginError> for StepError {
    fn from(e: PluginError) -> Self {
        StepError {
            code: e.code,
            message: e.message,
            retryable: e.retryable,
            step: None,
        }
    }
}

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, PluginError>> + Send + 'a>>;

pub trait PluginHost: Send + Sync + 'static {
    /// Invoke `plugin.action`. Timeouts are enforced by the caller as well.
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a>;

    /// Known plugins and actions, for validation; `None` when unknown.
    fn catalog(&self) -> Option<crate::validate::Catalog> {
        None
    }

    /// The top-level input fields of `plugin.action` its schema marks sensitive
    /// (`x-casework-sensitive` or `writeOnly`): the only fields a write-only value is
    /// opened for. `None` when the host cannot tell (canned and scripted answers), and
    /// then every write-only value in the input is opened.
    fn sensitive_fields(&self, _plugin: &str, _action: &str) -> Option<BTreeSet<String>> {
        None
    }

    /// Whether this host can run `plugin.action`. A daemon does not take over instances
    /// whose workflow calls something it cannot run; another daemon that can does. A host
    /// that cannot tell (no catalog) says yes.
    fn provides(&self, plugin: &str, action: &str) -> bool {
        self.catalog()
            .is_none_or(|c| c.plugins.get(plugin).is_some_and(|a| a.contains(action)))
    }
}

/// No plugins are installed: every call fails, saying so. Nothing pretends a plugin ran.
#[derive(Debug, Default)]
pub struct NoPlugins;

impl PluginHost for NoPlugins {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        _input: Value,
        _ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            Err(PluginError {
                code: "plugin_unavailable".into(),
                message: format!(
                    "no plugin host is configured, so `{plugin}.{action}` cannot run; with `casework run`, answer it with `--mock {plugin}.{action}='{{...}}'`"
                ),
                retryable: false,
            })
        })
    }
}

/// Canned answers by `plugin.action`, for trying workflows (`casework run --mock`).
/// Every call is recorded so the caller can show what would have been sent.
#[derive(Debug, Default)]
pub struct Canned {
    answers: HashMap<String, Result<Value, PluginError>>,
    pub calls: Mutex<Vec<(String, Value, CallContext)>>,
}

impl Canned {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn answer(&mut self, target: &str, result: Result<Value, PluginError>) {
        self.answers.insert(target.to_string(), result);
    }
}

impl PluginHost for Canned {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        let target = format!("{plugin}.{action}");
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((target.clone(), input, ctx));
        let answer = self.answers.get(&target).cloned();
        Box::pin(async move {
            answer.unwrap_or_else(|| {
                Err(PluginError {
                    code: "plugin_unavailable".into(),
                    message: format!(
                        "`{target}` has no mocked answer; add `--mock {target}='{{...}}'`"
                    ),
                    retryable: false,
                })
            })
        })
    }
}

/// A fake payment-like integration for crash tests (`casework serve --test-ledger FILE`).
///
/// Every call appends `key attempt` to the ledger file and fsyncs it before answering, so a
/// test can count how often each idempotency key was applied. Like a real provider, the
/// effect of a key is applied once: a repeat returns the first answer.
#[derive(Debug)]
pub struct Ledger {
    path: std::path::PathBuf,
    lock: Mutex<()>,
}

impl Ledger {
    pub fn new(path: std::path::PathBuf) -> Self {
        Ledger {
            path,
            lock: Mutex::new(()),
        }
    }
}

fn unwritable(e: std::io::Error) -> PluginError {
    PluginError {
        code: "ledger_unwritable".into(),
        message: e.to_string(),
        retryable: true,
    }
}

impl PluginHost for Ledger {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            // An in-flight window, so a test can kill the daemon in the middle of a call.
            let delay = input
                .get("delay_ms")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(5_000);
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            if input.get("fail").and_then(Value::as_bool) == Some(true) && ctx.attempt < 2 {
                return Err(PluginError {
                    code: "unavailable".into(),
                    message: "provider is briefly unavailable".into(),
                    retryable: true,
                });
            }
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let seen = std::fs::read_to_string(&self.path).unwrap_or_default();
            let first = !seen
                .lines()
                .any(|l| l.split(' ').next() == Some(ctx.idempotency_key.as_str()));
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(unwritable)?;
            writeln!(
                f,
                "{} {} {}.{}",
                ctx.idempotency_key, ctx.attempt, plugin, action
            )
            .and_then(|_| f.sync_all())
            .map_err(unwritable)?;
            Ok(serde_json::json!({"applied": first, "key": ctx.idempotency_key}))
        })
    }
}
