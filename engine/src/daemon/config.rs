//! `casework serve` settings. Each one comes from, highest first: a command-line flag,
//! a `CASEWORK_*` environment variable, the config file, the embedded default.
//!
//! The config file is `--config FILE` (or `CASEWORK_CONFIG`), else `./casework.toml` if
//! it exists; relative paths in it are relative to the file. Every problem names its key
//! (or variable, or flag) and stops the daemon before it opens anything: see
//! `casework.example.toml` at the repository root for every key.

use super::auth::{ApiToken, RateLimit, Scope};
use crate::plugin_host::pool::{self, LimitsOverride, PoolConfig, Priority};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
pub const DEFAULT_CONFIG_FILE: &str = "casework.toml";
/// Largest request body accepted unless configured.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
const MAX_MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// Leases shorter than this would need heartbeats more often than a loaded store answers.
const MIN_LEASE_MS: u64 = 500;
/// An hour: past it a dead daemon's emergencies would wait too long for anyone to page.
const MAX_LEASE_MS: u64 = 3_600_000;
/// Longest time the inbox may keep an event (`inbox_keep`), the same bound a workflow's
/// own `inbox_keep` has.
const MAX_INBOX_KEEP_MS: u64 = crate::definition::read::MAX_INBOX_KEEP_MS;
/// Bounds past which the inbox would hold more than a store should scan per key or keep.
const MAX_INBOX_PER_KEY: usize = 10_000;
const MAX_INBOX_TOTAL: usize = 10_000_000;

/// A bound past which `max_pending` no longer protects memory (a million tasks in hand).
const MAX_MAX_PENDING: u64 = 1_000_000;
/// Shortest token secret accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty when stderr is a terminal, JSON lines otherwise.
    #[default]
    Auto,
    Pretty,
    Json,
}

impl LogFormat {
    fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "auto" => Some(LogFormat::Auto),
            "pretty" => Some(LogFormat::Pretty),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Flags of `casework serve`. Each is optional here: an absent flag lets the variable,
/// the file or the default decide.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Flags {
    /// Config file (TOML). Default: ./casework.toml if it exists. [env: CASEWORK_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for the HTTP API [default: 127.0.0.1:7420] [env: CASEWORK_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where instances are stored (sled) [default: data] [env: CASEWORK_DATA]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Store instances in PostgreSQL instead of sled, so several daemons can share them:
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB. Every daemon on one database needs the same
    /// journal key (CASEWORK_JOURNAL_KEY or --journal-key-file). Prefer CASEWORK_STORE or
    /// the config file for a URL with a password: command lines are visible to other
    /// users of the machine. [default: sled in --data] [env: CASEWORK_STORE]
    #[arg(long, value_name = "URL", value_parser = parse_store_flag)]
    pub store: Option<StoreUrl>,
    /// Folder of workflow files [default: workflows] [env: CASEWORK_WORKFLOWS]
    #[arg(long, value_name = "DIR")]
    pub workflows: Option<PathBuf>,
    /// Folder of plugins, one sub-folder each with `plugin.toml` and `<name>.wasm`
    /// [default: plugins] [env: CASEWORK_PLUGINS]
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// TOML file of plugin secrets (`[plugin] name = "value"`); a variable
    /// CASEWORK_SECRET__<PLUGIN>__<NAME> overrides one value. [env: CASEWORK_SECRETS_FILE]
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// File holding the journal encryption key (64 hex characters). Default: the key in
    /// CASEWORK_JOURNAL_KEY, else DATA/journal.key (created on first start).
    /// [env: CASEWORK_JOURNAL_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    pub journal_key_file: Option<PathBuf>,
    /// Log format [default: auto: pretty on a terminal, JSON otherwise] [env: CASEWORK_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level or tracing filter, e.g. `info` or `info,casework=debug` [default: info]
    /// [env: CASEWORK_LOG]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// API token as NAME:SCOPE:SECRET (scope read, start or admin); repeat for more.
    /// Replaces the tokens of the file and of CASEWORK_TOKENS. Prefer the file or the
    /// variable: command lines are visible to other users of the machine.
    #[arg(long = "token", value_name = "NAME:SCOPE:SECRET", value_parser = parse_token_flag)]
    pub tokens: Vec<TokenSpec>,
    /// Largest request body in bytes [default: 1048576] [env: CASEWORK_MAX_BODY_BYTES]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Requests per second per client (token, or IP address when the API is open);
    /// 0 turns the limit off [default: 0] [env: CASEWORK_RATE_LIMIT]
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Requests a client may make at once above the rate [default: the rate]
    /// [env: CASEWORK_RATE_BURST]
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Do not watch the workflow and plugin folders for changes. [env: CASEWORK_NO_RELOAD]
    #[arg(long)]
    pub no_reload: bool,
    /// Work the engine may have in hand (queued messages and plugin calls in flight);
    /// past it starts, events and retries get 503 with Retry-After [default: 10000]
    /// [env: CASEWORK_MAX_PENDING]
    #[arg(long, value_name = "N")]
    pub max_pending: Option<u64>,
    /// How long an event that no step waits for yet is kept for a wait that begins later,
    /// like 24h or 90m [default: 24h] [env: CASEWORK_INBOX_KEEP]
    #[arg(long, value_name = "DURATION")]
    pub inbox_keep: Option<String>,
    /// Events kept for one event type and key; past it such events get 429 inbox_full
    /// [default: 100] [env: CASEWORK_INBOX_PER_KEY]
    #[arg(long, value_name = "N")]
    pub inbox_per_key: Option<usize>,
    /// Events kept in all [default: 100000] [env: CASEWORK_INBOX_TOTAL]
    #[arg(long, value_name = "N")]
    pub inbox_total: Option<usize>,
    /// How long this daemon keeps its instances after its last heartbeat, in ms: when it
    /// stops (killed, paused, cut off), other daemons on the same store take its running
    /// instances over after this long [default: 10000] [env: CASEWORK_LEASE_MS]
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// Threads that run plugin code, apart from the daemon's [default: cores - 1, at
    /// least 1] [env: CASEWORK_PLUGIN_THREADS]
    #[arg(long, value_name = "N")]
    pub plugin_threads: Option<usize>,
    /// Calls of one plugin that run at once [default: 16] [env: CASEWORK_PLUGIN_CONCURRENCY]
    #[arg(long, value_name = "N")]
    pub plugin_concurrency: Option<usize>,
    /// Calls of one plugin that may wait to run; more fail at once with plugin_busy
    /// [default: 256] [env: CASEWORK_PLUGIN_QUEUE]
    #[arg(long, value_name = "N")]
    pub plugin_queue: Option<usize>,
    /// Guest memory all running plugin calls may reserve together, in MiB; a call
    /// reserves its plugin's limits.memory_mb [default: 1024] [env: CASEWORK_PLUGIN_MEMORY_MIB]
    #[arg(long, value_name = "MIB")]
    pub plugin_memory_mib: Option<u32>,
    /// Scheduling priority of plugin threads: normal, low (nice +10) or idle
    /// (SCHED_IDLE, for hosts that run only the daemon) [default: low]
    /// [env: CASEWORK_PLUGIN_PRIORITY]
    #[arg(long, value_name = "PRIORITY", value_parser = parse_priority_flag)]
    pub plugin_priority: Option<Priority>,
    /// Export traces over OTLP/HTTP to this receiver, like http://127.0.0.1:4318 (an
    /// OpenTelemetry Collector, Jaeger or Tempo; spans go to /v1/traces under it)
    /// [default: off] [env: CASEWORK_OTLP_ENDPOINT]
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// A store URL as given. Checked in [`Layer::check`], not here: clap's message for a bad
/// value repeats the value, and this one may hold a password.
fn parse_store_flag(s: &str) -> Result<StoreUrl, String> {
    Ok(StoreUrl(s.to_string()))
}

/// Where instances are stored when not in sled: a `postgres://` URL. Its password never
/// shows: `Debug` and `Display` print it as `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(String);

impl StoreUrl {
    pub fn new(url: impl Into<String>) -> StoreUrl {
        StoreUrl(url.into())
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        crate::store::postgres::redact_url(&self.0)
    }

    fn check(&self) -> Result<(), &'static str> {
        let text = self.0.trim();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err("is not a postgres:// URL");
        }
        match url::Url::parse(text) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
            Ok(_) => Err("has no host"),
            Err(_) => Err("is not a valid URL"),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn parse_priority_flag(s: &str) -> Result<Priority, String> {
    Priority::parse(s).ok_or_else(|| format!("`{s}` is not normal, low or idle"))
}

/// A token as configured: a secret value or the hex SHA-256 of one.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub name: String,
    pub scope: Scope,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// `NAME:SCOPE:SECRET`; the secret is everything after the second colon.
fn parse_token_spec(s: &str) -> Result<TokenSpec, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(name), Some(scope), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("must be NAME:SCOPE:SECRET, e.g. ops:admin:<secret>".into());
    };
    let scope = Scope::parse(scope.trim())
        .ok_or_else(|| format!("scope `{}` is not one of read, start, admin", scope.trim()))?;
    Ok(TokenSpec {
        name: name.trim().to_string(),
        scope,
        token: Some(secret.to_string()),
        sha256: None,
    })
}

fn parse_token_flag(s: &str) -> Result<TokenSpec, String> {
    parse_token_spec(s)
}

/// One source of settings; `None` leaves the setting to the sources below.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub store: Option<StoreUrl>,
    pub workflows: Option<PathBuf>,
    pub plugins: Option<PathBuf>,
    pub secrets: Option<PathBuf>,
    pub journal_key_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub tokens: Option<Vec<TokenSpec>>,
    pub max_body_bytes: Option<u64>,
    pub rate_limit: Option<u32>,
    pub rate_burst: Option<u32>,
    pub no_reload: Option<bool>,
    pub max_pending: Option<u64>,
    pub inbox_keep: Option<String>,
    pub inbox_per_key: Option<usize>,
    pub inbox_total: Option<usize>,
    pub lease_ms: Option<u64>,
    pub plugin_threads: Option<usize>,
    pub plugin_concurrency: Option<usize>,
    pub plugin_queue: Option<usize>,
    pub plugin_memory_mib: Option<u32>,
    pub plugin_priority: Option<Priority>,
    pub otlp_endpoint: Option<String>,
    /// `[plugin_limits.NAME]`: the operator's limits for a plugin (file only).
    pub plugin_limits: Option<BTreeMap<String, LimitsOverride>>,
}

/// Keys of the config file, for messages.
const KEYS: &[&str] = &[
    "listen",
    "data",
    "store",
    "workflows",
    "plugins",
    "secrets",
    "journal_key_file",
    "log_format",
    "log_level",
    "tokens",
    "max_body_bytes",
    "rate_limit",
    "rate_burst",
    "no_reload",
    "max_pending",
    "inbox_keep",
    "inbox_per_key",
    "inbox_total",
    "lease_ms",
    "plugin_threads",
    "plugin_concurrency",
    "plugin_queue",
    "plugin_memory_mib",
    "plugin_priority",
    "otlp_endpoint",
    "plugin_limits",
];

/// What a key expects, added to a message about a bad value.
fn expects(key: &str) -> Option<&'static str> {
    Some(match key {
        "listen" => "an IP address and port, like \"127.0.0.1:7420\"",
        "data" | "workflows" | "plugins" => "a folder path",
        "store" => "a PostgreSQL URL, like \"postgres://casework@db.internal:5432/casework\"",
        "secrets" | "journal_key_file" => "a file path",
        "log_format" => "\"auto\", \"pretty\" or \"json\"",
        "log_level" => "a level or filter, like \"info\" or \"info,casework=debug\"",
        "tokens" => "[[tokens]] tables with name, scope and token (or sha256)",
        "max_body_bytes" => "a whole number of bytes",
        "rate_limit" | "rate_burst" => "a whole number of requests",
        "no_reload" => "true or false",
        "max_pending" => "a whole number of units of work",
        "inbox_keep" => "a duration, like \"24h\" or \"90m\"",
        "inbox_per_key" | "inbox_total" => "a whole number of events",
        "lease_ms" => "a whole number of milliseconds",
        "plugin_threads" => "a whole number of threads",
        "plugin_concurrency" | "plugin_queue" => "a whole number of calls",
        "plugin_memory_mib" => "a whole number of MiB",
        "plugin_priority" => "\"normal\", \"low\" or \"idle\"",
        "otlp_endpoint" => "an http:// URL of an OTLP receiver, like \"http://127.0.0.1:4318\"",
        "plugin_limits" => "a table per plugin, like [plugin_limits.paging] with rate = \"1/s\", concurrency = 2, key = \"channel\"",
        "scope" => "\"read\", \"start\" or \"admin\"",
        _ => return None,
    })
}

impl Layer {
    /// The highest source wins, setting by setting (tokens as a whole list).
    fn under(self, upper: Layer) -> Layer {
        Layer {
            listen: upper.listen.or(self.listen),
            data: upper.data.or(self.data),
            store: upper.store.or(self.store),
            workflows: upper.workflows.or(self.workflows),
            plugins: upper.plugins.or(self.plugins),
            secrets: upper.secrets.or(self.secrets),
            journal_key_file: upper.journal_key_file.or(self.journal_key_file),
            log_format: upper.log_format.or(self.log_format),
            log_level: upper.log_level.or(self.log_level),
            tokens: upper.tokens.or(self.tokens),
            max_body_bytes: upper.max_body_bytes.or(self.max_body_bytes),
            rate_limit: upper.rate_limit.or(self.rate_limit),
            rate_burst: upper.rate_burst.or(self.rate_burst),
            no_reload: upper.no_reload.or(self.no_reload),
            max_pending: upper.max_pending.or(self.max_pending),
            inbox_keep: upper.inbox_keep.or(self.inbox_keep),
            inbox_per_key: upper.inbox_per_key.or(self.inbox_per_key),
            inbox_total: upper.inbox_total.or(self.inbox_total),
            lease_ms: upper.lease_ms.or(self.lease_ms),
            plugin_threads: upper.plugin_threads.or(self.plugin_threads),
            plugin_concurrency: upper.plugin_concurrency.or(self.plugin_concurrency),
            plugin_queue: upper.plugin_queue.or(self.plugin_queue),
            plugin_memory_mib: upper.plugin_memory_mib.or(self.plugin_memory_mib),
            plugin_priority: upper.plugin_priority.or(self.plugin_priority),
            otlp_endpoint: upper.otlp_endpoint.or(self.otlp_endpoint),
            plugin_limits: upper.plugin_limits.or(self.plugin_limits),
        }
    }

    fn from_flags(f: &Flags) -> Layer {
        Layer {
            listen: f.listen,
            data: f.data.clone(),
            store: f.store.clone(),
            workflows: f.workflows.clone(),
            plugins: f.plugins.clone(),
            secrets: f.secrets.clone(),
            journal_key_file: f.journal_key_file.clone(),
            log_format: f.log_format,
            log_level: f.log_level.clone(),
            tokens: (!f.tokens.is_empty()).then(|| f.tokens.clone()),
            max_body_bytes: f.max_body_bytes,
            rate_limit: f.rate_limit,
            rate_burst: f.rate_burst,
            no_reload: f.no_reload.then_some(true),
            max_pending: f.max_pending,
            inbox_keep: f.inbox_keep.clone(),
            inbox_per_key: f.inbox_per_key,
            inbox_total: f.inbox_total,
            lease_ms: f.lease_ms,
            plugin_threads: f.plugin_threads,
            plugin_concurrency: f.plugin_concurrency,
            plugin_queue: f.plugin_queue,
            plugin_memory_mib: f.plugin_memory_mib,
            plugin_priority: f.plugin_priority,
            otlp_endpoint: f.otlp_endpoint.clone(),
            plugin_limits: None,
        }
    }

    /// Settings from `CASEWORK_*` variables; `env` reads one (empty counts as unset).
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer, String> {
        let get = |var: &str| env(var).filter(|v| !v.trim().is_empty());
        let path = |var: &str| get(var).map(PathBuf::from);
        fn num<T: std::str::FromStr>(
            var: &str,
            v: Option<String>,
            what: &str,
        ) -> Result<Option<T>, String> {
            v.map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("{var}: `{v}` is not {what}"))
            })
            .transpose()
        }
        let tokens = match get("CASEWORK_TOKENS") {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .enumerate()
                    .map(|(i, s)| {
                        // The entry is not echoed: it holds a secret.
                        parse_token_spec(s)
                            .map_err(|e| format!("CASEWORK_TOKENS: entry {}: {e}", i + 1))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Layer {
            listen: get("CASEWORK_LISTEN")
                .map(|v| {
                    v.trim().parse().map_err(|_| {
                        format!(
                            "CASEWORK_LISTEN: `{v}` is not {}",
                            expects("listen").unwrap_or("")
                        )
                    })
                })
                .transpose()?,
            data: path("CASEWORK_DATA"),
            store: get("CASEWORK_STORE").map(StoreUrl),
            workflows: path("CASEWORK_WORKFLOWS"),
            plugins: path("CASEWORK_PLUGINS"),
            secrets: path("CASEWORK_SECRETS_FILE"),
            journal_key_file: path("CASEWORK_JOURNAL_KEY_FILE"),
            log_format: get("CASEWORK_LOG_FORMAT")
                .map(|v| {
                    LogFormat::parse(v.trim()).ok_or_else(|| {
                        format!("CASEWORK_LOG_FORMAT: `{v}` is not auto, pretty or json")
                    })
                })
                .transpose()?,
            log_level: get("CASEWORK_LOG"),
            tokens,
            max_body_bytes: num(
                "CASEWORK_MAX_BODY_BYTES",
                get("CASEWORK_MAX_BODY_BYTES"),
                "a whole number of bytes",
            )?,
            rate_limit: num(
                "CASEWORK_RATE_LIMIT",
                get("CASEWORK_RATE_LIMIT"),
                "a whole number",
            )?,
            rate_burst: num(
                "CASEWORK_RATE_BURST",
                get("CASEWORK_RATE_BURST"),
                "a whole number",
            )?,
            no_reload: get("CASEWORK_NO_RELOAD")
                .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err(format!("CASEWORK_NO_RELOAD: `{v}` is not true or false")),
                })
                .transpose()?,
            max_pending: num(
                "CASEWORK_MAX_PENDING",
                get("CASEWORK_MAX_PENDING"),
                "a whole number",
            )?,
            inbox_keep: get("CASEWORK_INBOX_KEEP"),
            inbox_per_key: num(
                "CASEWORK_INBOX_PER_KEY",
                get("CASEWORK_INBOX_PER_KEY"),
                "a whole number",
            )?,
            inbox_total: num(
                "CASEWORK_INBOX_TOTAL",
                get("CASEWORK_INBOX_TOTAL"),
                "a whole number",
            )?,
            lease_ms: num(
                "CASEWORK_LEASE_MS",
                get("CASEWORK_LEASE_MS"),
                "a whole number of milliseconds",
            )?,
            plugin_threads: num(
                "CASEWORK_PLUGIN_THREADS",
                get("CASEWORK_PLUGIN_THREADS"),
                "a whole number",
            )?,
            plugin_concurrency: num(
                "CASEWORK_PLUGIN_CONCURRENCY",
                get("CASEWORK_PLUGIN_CONCURRENCY"),
                "a whole number",
            )?,
            plugin_queue: num(
                "CASEWORK_PLUGIN_QUEUE",
                get("CASEWORK_PLUGIN_QUEUE"),
                "a whole number",
            )?,
            plugin_memory_mib: num(
                "CASEWORK_PLUGIN_MEMORY_MIB",
                get("CASEWORK_PLUGIN_MEMORY_MIB"),
                "a whole number of MiB",
            )?,
            plugin_priority: get("CASEWORK_PLUGIN_PRIORITY")
                .map(|v| {
                    Priority::parse(v.trim()).ok_or_else(|| {
                        format!("CASEWORK_PLUGIN_PRIORITY: `{v}` is not normal, low or idle")
                    })
                })
                .transpose()?,
            otlp_endpoint: get("CASEWORK_OTLP_ENDPOINT"),
            plugin_limits: None,
        })
    }

    /// Reads a config file. Relative paths in it are made relative to its folder.
    fn from_file(path: &Path) -> Result<Layer, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {shown}: {e}"))?;
        let mut layer: Layer =
            toml::from_str(&text).map_err(|e| file_error(&shown.to_string(), &text, &e))?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut layer.data,
            &mut layer.workflows,
            &mut layer.plugins,
            &mut layer.secrets,
            &mut layer.journal_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(layer)
    }

    /// Checks values that parse but make no sense; `name` says where a key came from.
    fn check(&self, name: &dyn Fn(&str) -> String) -> Result<(), String> {
        if let Some(store) = &self.store {
            if let Err(why) = store.check() {
                // Shown redacted: the URL may hold a password.
                return Err(format!(
                    "{}: `{store}` {why}; give {}",
                    name("store"),
                    expects("store").unwrap_or("")
                ));
            }
        }
        if let Some(n) = self.max_body_bytes {
            if n == 0 || n > MAX_MAX_BODY_BYTES {
                return Err(format!(
                    "{}: {n} is out of range (1 to {MAX_MAX_BODY_BYTES} bytes)",
                    name("max_body_bytes")
                ));
            }
        }
        if let Some(n) = self.max_pending {
            if n == 0 || n > MAX_MAX_PENDING {
                return Err(format!(
                    "{}: {n} is out of range (1 to {MAX_MAX_PENDING})",
                    name("max_pending")
                ));
            }
        }
        if let Some(n) = self.lease_ms {
            if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&n) {
                return Err(format!(
                    "{}: {n} is out of range ({MIN_LEASE_MS} to {MAX_LEASE_MS} ms); shorter leases fail over sooner but need heartbeats that often",
                    name("lease_ms")
                ));
            }
        }
        if let Some(keep) = &self.inbox_keep {
            match crate::definition::Duration::parse(keep) {
                Ok(d) if d.as_millis() > 0 && d.as_millis() <= MAX_INBOX_KEEP_MS => {}
                Ok(_) => {
                    return Err(format!(
                        "{}: `{keep}` is out of range (1ms to 30d)",
                        name("inbox_keep")
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "{}: {e}; give {}",
                        name("inbox_keep"),
                        expects("inbox_keep").unwrap_or("")
                    ))
                }
            }
        }
        for (key, value, max) in [
            ("inbox_per_key", self.inbox_per_key, MAX_INBOX_PER_KEY),
            ("inbox_total", self.inbox_total, MAX_INBOX_TOTAL),
        ] {
            if let Some(n) = value {
                if n == 0 || n > max {
                    return Err(format!(
                        "{}: {n} is out of range (1 to {max} events)",
                        name(key)
                    ));
                }
            }
        }
        if self.rate_burst == Some(0) {
            return Err(format!("{}: must be at least 1", name("rate_burst")));
        }
        let slots = crate::plugin_host::wasm::SLOTS as u64;
        for (key, value, max, unit) in [
            (
                "plugin_threads",
                self.plugin_threads.map(|n| n as u64),
                pool::MAX_THREADS as u64,
                "threads",
            ),
            // More could never run at once: the host has this many instance slots.
            (
                "plugin_concurrency",
                self.plugin_concurrency.map(|n| n as u64),
                slots,
                "calls",
            ),
            (
                "plugin_queue",
                self.plugin_queue.map(|n| n as u64),
                pool::MAX_QUEUE as u64,
                "calls",
            ),
            (
                "plugin_memory_mib",
                self.plugin_memory_mib.map(u64::from),
                u64::from(pool::MAX_MEMORY_MIB),
                "MiB",
            ),
        ] {
            if let Some(n) = value {
                if n == 0 || n > max {
                    return Err(format!(
                        "{}: {n} is out of range (1 to {max} {unit})",
                        name(key)
                    ));
                }
            }
        }
        for (plugin, limits) in self.plugin_limits.iter().flatten() {
            let problems = limits.problems();
            if !problems.is_empty() {
                return Err(format!(
                    "{} for `{plugin}`: {}",
                    name("plugin_limits"),
                    problems.join("; ")
                ));
            }
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            if let Err(why) = crate::telemetry::traces_url(endpoint) {
                return Err(format!(
                    "{}: `{endpoint}` {why}; it must be {}",
                    name("otlp_endpoint"),
                    expects("otlp_endpoint").unwrap_or("")
                ));
            }
        }
        if let Some(level) = &self.log_level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                return Err(format!(
                    "{}: `{level}` is not {}: {e}",
                    name("log_level"),
                    expects("log_level").unwrap_or("")
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.tokens.iter().flatten().enumerate() {
            let at = format!("{} (token {}, `{}`)", name("tokens"), i + 1, t.name);
            if t.name.trim().is_empty() {
                return Err(format!(
                    "{}: token {} has an empty name",
                    name("tokens"),
                    i + 1
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("{at}: the name is used twice"));
            }
            match (&t.token, &t.sha256) {
                (Some(_), Some(_)) => {
                    return Err(format!("{at}: give `token` or `sha256`, not both"))
                }
                (None, None) => return Err(format!("{at}: give `token` or `sha256`")),
                (Some(secret), None) if secret.chars().count() < MIN_TOKEN_LEN => {
                    return Err(format!(
                        "{at}: the secret is shorter than {MIN_TOKEN_LEN} characters; \
                         make one with `openssl rand -hex 32`"
                    ))
                }
                (None, Some(h)) if ApiToken::from_sha256_hex(&t.name, t.scope, h).is_none() => {
                    return Err(format!("{at}: `sha256` must be 64 hex characters"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Byte offset to 1-based line and column.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Names in backticks, in order: the keys or values a serde message lists.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// A config file error naming the key: unknown keys get a suggestion, bad values say
/// what was expected.
fn file_error(file: &str, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    let line = e.span().map(|s| line_col(text, s.start).0);
    let at = match line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_string(),
    };
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (key, after) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(after);
        let section = if known.contains(&"scope") {
            " in [[tokens]]"
        } else {
            ""
        };
        let hint = match crate::diagnostic::did_you_mean(key, known.iter().copied()) {
            Some(k) => format!(" (did you mean `{k}`?)"),
            None => format!(" (known keys: {})", known.join(", ")),
        };
        return format!("{at}: key `{key}`{section} is unknown{hint}");
    }
    // Only token entries have required keys.
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        return format!("{at}: key `{key}` is missing in [[tokens]]");
    }
    // The key is on the line the error points at: `key = value`.
    let key = line
        .and_then(|l| text.lines().nth(l - 1))
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace));
    match key {
        Some(key) => {
            let hint = expects(&key)
                .filter(|_| KEYS.contains(&key.as_str()) || key == "scope")
                .filter(|_| !msg.contains("expected one of"))
                .map(|x| format!("; give {x}"))
                .unwrap_or_default();
            format!("{at}: key `{key}`: {msg}{hint}")
        }
        None => format!("{at}: {msg}"),
    }
}

/// The settings `casework serve` runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// PostgreSQL instead of sled in `data`.
    pub store: Option<StoreUrl>,
    pub workflows: PathBuf,
    pub plugins: PathBuf,
    pub secrets: Option<PathBuf>,
    pub journal_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Hashed; empty means the API is open (loopback only).
    pub tokens: Vec<ApiToken>,
    pub max_body_bytes: usize,
    /// `None`: no rate limit.
    pub rate_limit: Option<RateLimit>,
    pub no_reload: bool,
    pub max_pending: usize,
    /// Events kept for waits that begin later.
    pub inbox: crate::daemon::driver::InboxSettings,
    /// See [`crate::daemon::driver::DEFAULT_LEASE_MS`].
    pub lease_ms: i64,
    /// Sizes of the plugin pool.
    pub plugin_pool: PoolConfig,
    /// Where traces go over OTLP/HTTP; `None`: not exported.
    pub otlp_endpoint: Option<String>,
    /// The operator's limits by plugin name, replacing what each plugin's own sets.
    pub plugin_limits: BTreeMap<String, LimitsOverride>,
}

impl Config {
    /// Settings from the flags, the process environment and the config file.
    pub fn load(flags: &Flags) -> Result<Config, String> {
        Config::load_with(flags, &|var| std::env::var(var).ok())
    }

    /// As [`Config::load`], reading variables through `env`.
    pub fn load_with(
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let named = flags.config.clone().or_else(|| {
            env("CASEWORK_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let file = match named {
            Some(p) if !p.exists() || p.is_dir() => {
                return Err(format!("the config file {} does not exist", p.display()))
            }
            Some(p) => Some(p),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
        };
        let file_layer = match &file {
            Some(p) => {
                let layer = Layer::from_file(p)?;
                let shown = p.display().to_string();
                layer.check(&|k| format!("{shown}: key `{k}`"))?;
                layer
            }
            None => Layer::default(),
        };
        let env_layer = Layer::from_env(env)?;
        env_layer.check(&|k| {
            format!(
                "CASEWORK_{}",
                match k {
                    "log_level" => "LOG".to_string(),
                    "secrets" => "SECRETS_FILE".to_string(),
                    other => other.to_ascii_uppercase(),
                }
            )
        })?;
        let flag_layer = Layer::from_flags(flags);
        flag_layer.check(&|k| match k {
            "tokens" => "--token".to_string(),
            other => format!("--{}", other.replace('_', "-")),
        })?;
        let l = file_layer.under(env_layer).under(flag_layer);
        Config::resolve(l, file)
    }

    fn resolve(l: Layer, file: Option<PathBuf>) -> Result<Config, String> {
        let listen = l
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address"));
        let tokens: Vec<ApiToken> = l
            .tokens
            .unwrap_or_default()
            .iter()
            .filter_map(|t| match (&t.token, &t.sha256) {
                (Some(secret), _) => Some(ApiToken::from_secret(&t.name, t.scope, secret)),
                (None, Some(h)) => ApiToken::from_sha256_hex(&t.name, t.scope, h),
                (None, None) => None,
            })
            .collect();
        if tokens.is_empty() && !listen.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {listen} without API tokens: anyone who can reach it \
                 could start, cancel and read instances. Configure tokens ([[tokens]] in the \
                 config file, CASEWORK_TOKENS or --token), or listen on 127.0.0.1"
            ));
        }
        let rate = l.rate_limit.unwrap_or(0);
        Ok(Config {
            file,
            listen,
            data: l.data.unwrap_or_else(|| "data".into()),
            store: l.store,
            workflows: l.workflows.unwrap_or_else(|| "workflows".into()),
            plugins: l.plugins.unwrap_or_else(|| "plugins".into()),
            secrets: l.secrets,
            journal_key_file: l.journal_key_file,
            log_format: l.log_format.unwrap_or_default(),
            log_level: l.log_level.unwrap_or_else(|| "info".into()),
            tokens,
            max_body_bytes: l.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES) as usize,
            rate_limit: (rate > 0).then(|| RateLimit {
                per_second: rate,
                burst: l.rate_burst.unwrap_or(rate),
            }),
            no_reload: l.no_reload.unwrap_or(false),
            max_pending: l
                .max_pending
                .map_or(crate::daemon::driver::DEFAULT_MAX_PENDING, |n| n as usize),
            inbox: {
                use crate::daemon::driver as d;
                d::InboxSettings {
                    keep_ms: l
                        .inbox_keep
                        .as_deref()
                        .and_then(|k| crate::definition::Duration::parse(k).ok())
                        .map_or(d::DEFAULT_INBOX_KEEP_MS, |k| k.as_millis() as i64),
                    bounds: crate::store::InboxBounds {
                        per_key: l.inbox_per_key.unwrap_or(d::DEFAULT_INBOX_PER_KEY),
                        total: l.inbox_total.unwrap_or(d::DEFAULT_INBOX_TOTAL),
                    },
                }
            },
            lease_ms: l
                .lease_ms
                .map_or(crate::daemon::driver::DEFAULT_LEASE_MS, |n| n as i64),
            plugin_pool: {
                let default = PoolConfig::default();
                PoolConfig {
                    threads: l.plugin_threads.unwrap_or(default.threads),
                    concurrency: l.plugin_concurrency.unwrap_or(default.concurrency),
                    queue: l.plugin_queue.unwrap_or(default.queue),
                    memory_mib: l.plugin_memory_mib.unwrap_or(default.memory_mib),
                    priority: l.plugin_priority.unwrap_or(default.priority),
                }
            },
            otlp_endpoint: l.otlp_endpoint,
            plugin_limits: l.plugin_limits.unwrap_or_default(),
        })
    }
}

/// What [`init_tracing`] installed.
pub struct Tracing {
    /// Whether the log is JSON (a fatal error is then logged as a JSON line too).
    pub json: bool,
    /// The trace export, when `otlp_endpoint` is set: shut it down at a graceful stop to
    /// send the spans still batched.
    pub export: Option<crate::telemetry::Export>,
}

/// Installs the log subscriber for the daemon (values were checked by [`Config::load`]),
/// and the trace export if `otlp_endpoint` is set. The operator's log filter applies to the
/// log only: spans are exported at `info` whatever the log shows.
pub fn init_tracing(
    format: LogFormat,
    level: &str,
    color: clap::ColorChoice,
    otlp_endpoint: Option<&str>,
) -> Result<Tracing, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let pretty = match format {
        LogFormat::Pretty => true,
        LogFormat::Json => false,
        LogFormat::Auto => std::io::stderr().is_terminal(),
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(match color {
            clap::ColorChoice::Always => true,
            clap::ColorChoice::Never => false,
            clap::ColorChoice::Auto => std::io::stderr().is_terminal(),
        });
    let log = if pretty {
        log.with_filter(filter).boxed()
    } else {
        log.json().flatten_event(true).with_filter(filter).boxed()
    };
    let export = otlp_endpoint
        .map(crate::telemetry::Export::start)
        .transpose()?;
    // A subscriber may already be set (tests running serve in-process): keep it.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(export.as_ref().map(|e| e.layer()))
        .with(library_log_cap())
        .try_init();
    Ok(Tracing {
        json: !pretty,
        export,
    })
}

/// Lets only Casework's own targets log below `warn`, whatever the operator's filter says.
///
/// Libraries log what they send and receive at debug and trace: ureq_proto dumps every
/// request's bytes (the `Authorization: Bearer` header with a plugin's Stripe key among
/// them) and rustls its handshakes. No level an operator picks (`log_level = "trace"`,
/// `CASEWORK_LOG=ureq_proto=trace`) may turn that on. This is a filter layer of its own,
/// combined with the operator's filter by "both must agree", rather than `ureq=warn`
/// appended to their directives: an EnvFilter lets the most specific directive win, so
/// `ureq::run=trace` would beat an appended `ureq=warn`. It is a list of who may speak,
/// not of who may not, so a new dependency that logs request data is covered without
/// being named here.
pub fn library_log_cap() -> tracing_subscriber::filter::FilterFn {
    fn may_log(meta: &tracing::Metadata<'_>) -> bool {
        let target = meta.target();
        let ours = target == "casework" || target.starts_with("casework::");
        // More verbose levels compare greater: this is `warn` and `error`.
        ours || *meta.level() <= tracing::Level::WARN
    }
    tracing_subscriber::filter::FilterFn::new(may_log as fn(&tracing::Metadata<'_>) -> bool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn libraries_log_at_most_warn_whatever_the_filter_enables() {
        use tracing_subscriber::layer::SubscriberExt;
        let buffer = crate::log_capture::Buffer::default();
        let writer = buffer.clone();
        // The operator asks for everything, and for the HTTP client by name.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("trace,ureq=trace,ureq_proto::util=trace,rustls=debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish()
            .with(library_log_cap());
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "ureq_proto::util", "4175 7468 Authorization: Bearer");
            tracing::debug!(target: "ureq::run", "Request headers");
            tracing::info!(target: "rustls::client", "handshake");
            tracing::trace!(target: "caseworker", "a crate that only looks like ours");
            tracing::warn!(target: "ureq::pool", "library warning");
            tracing::error!(target: "rustls", "library error");
            tracing::trace!(target: "casework::plugin_host::wasm", "our trace");
            tracing::debug!(target: "casework::rule", "our debug");
        });
        let text = buffer.text();
        let messages: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit(": ").next().unwrap_or(l))
            .collect();
        assert_eq!(
            messages,
            ["library warning", "library error", "our trace", "our debug"],
            "{text}"
        );
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("casework.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn flags_with(file: &Path) -> Flags {
        Flags {
            config: Some(file.to_path_buf()),
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_work_without_any_source() {
        let c = Config::load_with(&Flags::default(), &env_of(&[])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data, PathBuf::from("data"));
        assert_eq!(c.workflows, PathBuf::from("workflows"));
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES as usize);
        assert_eq!(c.rate_limit, None);
        assert!(c.tokens.is_empty());
        assert!(!c.no_reload);
        assert_eq!(c.plugin_pool, PoolConfig::default());
        assert!(c.plugin_pool.threads >= 1);
    }

    #[test]
    fn the_lease_comes_from_every_source_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "lease_ms = 3000\n");
        let c = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap();
        assert_eq!(c.lease_ms, 3000);
        let env = env_of(&[("CASEWORK_LEASE_MS", "4000")]);
        assert_eq!(
            Config::load_with(&flags_with(&file), &env)
                .unwrap()
                .lease_ms,
            4000
        );
        let mut flags = flags_with(&file);
        flags.lease_ms = Some(5000);
        assert_eq!(Config::load_with(&flags, &env).unwrap().lease_ms, 5000);
        let short = write(dir.path(), "lease_ms = 10\n");
        let err = Config::load_with(&flags_with(&short), &env_of(&[])).unwrap_err();
        assert!(
            err.contains("key `lease_ms`: 10 is out of range (500 to 3600000 ms)"),
            "{err}"
        );
    }

    #[test]
    fn plugin_pool_sizes_come_from_every_source_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "plugin_threads = 3\nplugin_concurrency = 4\nplugin_queue = 5\nplugin_memory_mib = 600\nplugin_priority = \"normal\"\n",
        );
        let env = env_of(&[
            ("CASEWORK_PLUGIN_QUEUE", "50"),
            ("CASEWORK_PLUGIN_PRIORITY", "idle"),
        ]);
        let mut flags = flags_with(&file);
        flags.plugin_memory_mib = Some(700);
        let c = Config::load_with(&flags, &env).unwrap();
        assert_eq!(
            c.plugin_pool,
            PoolConfig {
                threads: 3,
                concurrency: 4,
                queue: 50,
                memory_mib: 700,
                priority: Priority::Idle,
            }
        );
        let cases = [
            (
                "plugin_threads = 0\n",
                "key `plugin_threads`: 0 is out of range (1 to 256 threads)",
            ),
            (
                "plugin_concurrency = 65\n",
                "key `plugin_concurrency`: 65 is out of range (1 to 64 calls)",
            ),
            (
                "plugin_queue = 0\n",
                "key `plugin_queue`: 0 is out of range (1 to 100000 calls)",
            ),
            (
                "plugin_memory_mib = -1\n",
                "casework.toml:1: key `plugin_memory_mib`:",
            ),
            (
                "plugin_priority = \"lowest\"\n",
                "key `plugin_priority`: unknown variant `lowest`",
            ),
            (
                "plugin_memroy_mib = 5\n",
                "key `plugin_memroy_mib` is unknown (did you mean `plugin_memory_mib`?)",
            ),
        ];
        for (text, want) in cases {
            let file = write(dir.path(), text);
            let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = Config::load_with(
            &Flags::default(),
            &env_of(&[("CASEWORK_PLUGIN_THREADS", "many")]),
        )
        .unwrap_err();
        assert_eq!(e, "CASEWORK_PLUGIN_THREADS: `many` is not a whole number");
        let e = Config::load_with(
            &Flags::default(),
            &env_of(&[("CASEWORK_PLUGIN_PRIORITY", "high")]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "CASEWORK_PLUGIN_PRIORITY: `high` is not normal, low or idle"
        );
        let e = Config::load_with(
            &Flags::default(),
            &env_of(&[("CASEWORK_PLUGIN_MEMORY_MIB", "0")]),
        )
        .unwrap_err();
        assert!(
            e.starts_with("CASEWORK_PLUGIN_MEMORY_MIB: 0 is out of range"),
            "{e}"
        );
        let flags = Flags {
            plugin_concurrency: Some(0),
            ..Flags::default()
        };
        let e = Config::load_with(&flags, &env_of(&[])).unwrap_err();
        assert!(
            e.starts_with("--plugin-concurrency: 0 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn flags_beat_variables_beat_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "listen = \"127.0.0.1:1001\"\ndata = \"d\"\nworkflows = \"/abs/wf\"\nmax_body_bytes = 10\nrate_limit = 5\n",
        );
        let env = env_of(&[
            ("CASEWORK_LISTEN", "127.0.0.1:1002"),
            ("CASEWORK_MAX_BODY_BYTES", "20"),
        ]);
        let mut flags = flags_with(&file);
        let c = Config::load_with(&flags, &env).unwrap();
        assert_eq!(c.listen.port(), 1002, "variable over file");
        assert_eq!(c.max_body_bytes, 20);
        assert_eq!(c.data, dir.path().join("d"), "relative to the file");
        assert_eq!(c.workflows, PathBuf::from("/abs/wf"));
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                per_second: 5,
                burst: 5
            })
        );
        assert_eq!(c.plugins, PathBuf::from("plugins"), "default");
        flags.listen = Some("127.0.0.1:1003".parse().unwrap());
        let c = Config::load_with(&flags, &env).unwrap();
        assert_eq!(c.listen.port(), 1003, "flag over variable");
    }

    #[test]
    fn an_unknown_key_is_named_with_a_suggestion() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "data = \"d\"\nlistn = \"127.0.0.1:1\"\n");
        let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
        assert!(
            e.ends_with("casework.toml:2: key `listn` is unknown (did you mean `listen`?)"),
            "{e}"
        );
        let file = write(
            dir.path(),
            "[[tokens]]\nname = \"a\"\nscpoe = \"read\"\ntoken = \"0123456789abcdef\"\n",
        );
        let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
        assert!(
            e.contains(":3: key `scpoe` in [[tokens]] is unknown (did you mean `scope`?)"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key_variable_or_flag() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("listen = \"nope\"\n", "casework.toml:1: key `listen`:"),
            (
                "max_body_bytes = \"big\"\n",
                "casework.toml:1: key `max_body_bytes`:",
            ),
            (
                "max_body_bytes = 0\n",
                "key `max_body_bytes`: 0 is out of range",
            ),
            (
                "log_format = \"xml\"\n",
                "key `log_format`: unknown variant `xml`",
            ),
            ("log_level = \"info,[\"\n", "key `log_level`"),
            ("no_reload = \"yes\"\n", "key `no_reload`"),
            (
                "[[tokens]]\nname = \"a\"\nscope = \"root\"\ntoken = \"0123456789abcdef\"\n",
                "casework.toml:3: key `scope`: unknown variant `root`",
            ),
            (
                "[[tokens]]\nscope = \"read\"\ntoken = \"0123456789abcdef\"\n",
                "key `name` is missing in [[tokens]]",
            ),
            (
                "[[tokens]]\nname = \"a\"\nscope = \"read\"\ntoken = \"short\"\n",
                "key `tokens` (token 1, `a`): the secret is shorter than 16",
            ),
        ];
        for (text, want) in cases {
            let file = write(dir.path(), text);
            let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = Config::load_with(
            &Flags::default(),
            &env_of(&[("CASEWORK_MAX_BODY_BYTES", "x")]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "CASEWORK_MAX_BODY_BYTES: `x` is not a whole number of bytes"
        );
        let e = Config::load_with(
            &Flags::default(),
            &env_of(&[("CASEWORK_TOKENS", "ops:root:supersecretvalue123")]),
        )
        .unwrap_err();
        assert!(
            e.starts_with("CASEWORK_TOKENS: entry 1: scope `root`"),
            "{e}"
        );
        assert!(!e.contains("supersecret"), "the secret is not echoed: {e}");
        let flags = Flags {
            max_body_bytes: Some(0),
            ..Flags::default()
        };
        let e = Config::load_with(&flags, &env_of(&[])).unwrap_err();
        assert!(e.starts_with("--max-body-bytes: 0 is out of range"), "{e}");
    }

    #[test]
    fn plugin_limits_come_from_the_file_per_plugin_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[plugin_limits.paging]\nrate = \"1/s\"\nkey = \"channel\"\n[plugin_limits.crm]\nconcurrency = 2\n",
        );
        let c = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap();
        assert_eq!(
            c.plugin_limits["paging"],
            LimitsOverride {
                rate: Some("1/s".into()),
                key: Some("channel".into()),
                concurrency: None,
            }
        );
        assert_eq!(c.plugin_limits["crm"].concurrency, Some(2));
        let file = write(
            dir.path(),
            "[plugin_limits.paging]\nrate = \"fast\"\nconcurrency = 0\n",
        );
        let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
        assert!(e.contains("key `plugin_limits` for `paging`: "), "{e}");
        assert!(
            e.contains("limits.concurrency = 0 must be between 1 and 1000"),
            "{e}"
        );
        assert!(e.contains("limits.rate = \"fast\""), "{e}");
        let file = write(dir.path(), "[plugin_limits.paging]\nburst = 3\n");
        let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
        assert!(e.contains("burst"), "{e}");
    }

    #[test]
    fn the_otlp_endpoint_is_off_by_default_and_checked_from_every_source() {
        let c = Config::load_with(&Flags::default(), &env_of(&[])).unwrap();
        assert_eq!(
            c.otlp_endpoint, None,
            "traces are not exported unless asked"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "otlp_endpoint = \"http://127.0.0.1:4318\"\n");
        let c = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        let file = write(
            dir.path(),
            "otlp_endpoint = \"https://otel.example:4318\"\n",
        );
        let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
        assert!(
            e.contains(
                "key `otlp_endpoint`: `https://otel.example:4318` scheme `https` is not supported"
            ),
            "{e}"
        );
        let e = Config::load_with(
            &Flags::default(),
            &env_of(&[("CASEWORK_OTLP_ENDPOINT", "collector:4318")]),
        )
        .unwrap_err();
        assert!(
            e.starts_with("CASEWORK_OTLP_ENDPOINT: `collector:4318`"),
            "{e}"
        );
        let flags = Flags {
            otlp_endpoint: Some("http://u:secretpw@c:4318".into()),
            ..Flags::default()
        };
        let e = Config::load_with(&flags, &env_of(&[])).unwrap_err();
        assert!(e.starts_with("--otlp-endpoint:"), "{e}");
    }

    #[test]
    fn the_store_comes_from_every_source_and_its_password_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load_with(&Flags::default(), &env_of(&[])).unwrap();
        assert_eq!(c.store, None, "sled by default");
        let file = write(
            dir.path(),
            "store = \"postgres://casework:file-secret-1@db:5432/cw\"\n",
        );
        let c = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap();
        assert_eq!(
            c.store.as_ref().unwrap().expose(),
            "postgres://casework:file-secret-1@db:5432/cw"
        );
        let shown = format!("{c:?} {}", c.store.as_ref().unwrap());
        assert!(!shown.contains("file-secret-1"), "{shown}");
        assert!(
            shown.contains("postgres://casework:***@db:5432/cw"),
            "{shown}"
        );
        let env = env_of(&[("CASEWORK_STORE", "postgres://env@db2/cw")]);
        let c = Config::load_with(&flags_with(&file), &env).unwrap();
        assert_eq!(c.store.unwrap().expose(), "postgres://env@db2/cw");
        let mut flags = flags_with(&file);
        flags.store = Some(StoreUrl::new("postgresql://flag@db3:6543/cw"));
        let c = Config::load_with(&flags, &env).unwrap();
        assert_eq!(c.store.unwrap().expose(), "postgresql://flag@db3:6543/cw");
        // Bad values name their source and never echo the password.
        let file = write(dir.path(), "store = \"mysql://root:file-secret-2@db/x\"\n");
        let e = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap_err();
        assert!(
            e.contains("key `store`: `mysql://root:***@db/x` is not a postgres:// URL"),
            "{e}"
        );
        assert!(!e.contains("file-secret-2"), "{e}");
        let e = Config::load_with(
            &Flags::default(),
            &env_of(&[("CASEWORK_STORE", "postgres://:env-secret-3@/cw")]),
        )
        .unwrap_err();
        assert!(e.starts_with("CASEWORK_STORE: "), "{e}");
        assert!(!e.contains("env-secret-3"), "{e}");
        let flags = Flags {
            store: Some(StoreUrl::new("sled:data")),
            ..Flags::default()
        };
        let e = Config::load_with(&flags, &env_of(&[])).unwrap_err();
        assert!(e.starts_with("--store: "), "{e}");
    }

    #[test]
    fn a_named_config_file_must_exist() {
        let flags = Flags {
            config: Some("/nonexistent/casework.toml".into()),
            ..Flags::default()
        };
        let e = Config::load_with(&flags, &env_of(&[])).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn anything_but_loopback_needs_tokens() {
        let flags = Flags {
            listen: Some("0.0.0.0:7420".parse().unwrap()),
            ..Flags::default()
        };
        let e = Config::load_with(&flags, &env_of(&[])).unwrap_err();
        assert!(
            e.starts_with("refusing to listen on 0.0.0.0:7420 without API tokens"),
            "{e}"
        );
        let c = Config::load_with(
            &flags,
            &env_of(&[(
                "CASEWORK_TOKENS",
                "ops:admin:0123456789abcdef0123, bot:start:fedcba9876543210fe",
            )]),
        )
        .unwrap();
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.tokens[1].name, "bot");
        assert_eq!(c.tokens[1].scope, Scope::Start);
        let v6 = Flags {
            listen: Some("[::1]:7420".parse().unwrap()),
            ..Flags::default()
        };
        assert!(
            Config::load_with(&v6, &env_of(&[])).is_ok(),
            "::1 is loopback"
        );
    }

    #[test]
    fn tokens_can_be_given_as_their_sha256_and_never_show_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "ed7002b439e9ac845f22357d822bac1444730fbdb6016d3ec9432297b9ec9f73";
        let file = write(
            dir.path(),
            &format!(
                "[[tokens]]\nname = \"a\"\nscope = \"admin\"\nsha256 = \"{hash}\"\n\
                 [[tokens]]\nname = \"b\"\nscope = \"read\"\ntoken = \"visible-secret-0123\"\n"
            ),
        );
        let c = Config::load_with(&flags_with(&file), &env_of(&[])).unwrap();
        assert_eq!(c.tokens.len(), 2);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("visible-secret") && !shown.contains(hash),
            "{shown}"
        );
    }

    #[test]
    fn the_example_file_at_the_repository_root_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../casework.example.toml");
        let layer = Layer::from_file(&example).unwrap();
        layer.check(&|k| k.to_string()).unwrap();
        assert_eq!(layer.listen.unwrap().to_string(), DEFAULT_LISTEN);
    }
}
