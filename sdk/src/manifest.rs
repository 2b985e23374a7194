//! The `plugin.toml` format: what a plugin is, what it may touch, and its
//! resource limits. Native only: the host and the SDK's tests read it, a
//! plugin never does.
//!
//! ```
//! use casework_sdk::manifest::Manifest;
//!
//! let manifest = Manifest::parse(r#"
//!     name = "paging"
//!     version = "0.1.0"
//!     description = "Pages on-call engineers."
//!     actions = ["trigger"]
//!
//!     [grants]
//!     http = ["https://events.pagerduty.com:443"]
//!     secrets = ["routing_key"]
//!
//!     [config]
//!     events_base_url = "https://events.pagerduty.com"
//!
//!     [limits]
//!     memory_mb = 16
//!     timeout_ms = 10000
//! "#).unwrap();
//!
//! assert!(manifest.grants.allows_url("https://events.pagerduty.com/v2/enqueue"));
//! assert!(!manifest.grants.allows_url("https://events.pagerduty.com:8443/v2/enqueue"));
//! assert!(manifest.grants.allows_secret("routing_key"));
//! assert_eq!(manifest.limits.fuel, None);
//! ```

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A parsed and validated `plugin.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name as used in workflows (`call: <name>.<action>`), and the
    /// file stem of the component (`<name>.wasm`).
    pub name: String,
    /// Semantic version of the plugin.
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// Every action the component exports; must match its `describe()`.
    pub actions: Vec<String>,
    /// Optional pin: the SHA-256 (hex) of `<name>.wasm`. When set, the host refuses
    /// a component with any other content, so a swapped file never runs.
    #[serde(default)]
    pub sha256: Option<String>,
    /// What the plugin may reach. Everything not granted is denied.
    #[serde(default)]
    pub grants: Grants,
    /// Default configuration, readable with `config::get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Resource limits per invocation.
    pub limits: Limits,
}

/// Capabilities granted to the plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Origins the plugin may send HTTP requests to, each exactly
    /// `scheme://host:port` with scheme `http` or `https` and an explicit port.
    #[serde(default)]
    pub http: Vec<String>,
    /// Secret names the plugin may read. A trailing `*` grants every name
    /// with that prefix (`"totp_seed/*"`), for per-customer secrets.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// Limits the host enforces on each invocation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Maximum linear memory, in MiB (1 to 4096).
    pub memory_mb: u32,
    /// Wall-clock budget for one `invoke`, HTTP waits included, in
    /// milliseconds (1 to 300000).
    pub timeout_ms: u32,
    /// Optional wasmtime fuel budget for one `invoke` (CPU work, not time).
    pub fuel: Option<u64>,
    /// Most calls of this plugin running at once in one daemon (1 to 1000), e.g. a
    /// provider that allows 4 connections; below the operator's `plugin_concurrency`.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Most calls of this plugin started per second, minute or hour in one daemon, e.g.
    /// `"25/s"` for a provider's published rate. Calls are spaced evenly; a call over
    /// the rate waits its turn (in the bounded queue) instead of failing.
    #[serde(default)]
    pub rate: Option<String>,
    /// An input field (a dotted path such as `channel` or `data.channel`) whose value
    /// has `concurrency` and `rate` of its own: calls for different values do not wait
    /// for each other, e.g. a chat provider's one message per second per channel. Calls
    /// without the field share one limit.
    #[serde(default)]
    pub key: Option<String>,
}

impl Limits {
    /// What is wrong with `concurrency`, `rate` and `key`, one problem per item.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(c) = self.concurrency {
            if !(1..=1000).contains(&c) {
                problems.push(format!(
                    "limits.concurrency = {c} must be between 1 and 1000"
                ));
            }
        }
        if let Some(Err(e)) = self.rate.as_deref().map(Rate::parse) {
            problems.push(e);
        }
        if let Some(k) = &self.key {
            if !is_field_path(k) {
                problems.push(format!(
                    "limits.key = \"{k}\" must name an input field, e.g. \"channel\" or \"data.channel\""
                ));
            } else if self.rate.is_none() && self.concurrency.is_none() {
                problems.push(format!(
                    "limits.key = \"{k}\" has nothing to apply per value: add limits.rate or limits.concurrency"
                ));
            }
        }
        problems
    }

    /// The value of `key` in a call's input, as text (`None`: no key, or the field is
    /// absent or null).
    pub fn key_of(&self, input: &serde_json::Value) -> Option<String> {
        let mut v = input;
        for part in self.key.as_deref()?.split('.') {
            v = v.get(part)?;
        }
        match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// Whether `key` is a dotted path of field names (`channel`, `data.channel`).
fn is_field_path(key: &str) -> bool {
    key.split('.').all(|part| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// `limits.rate`: `count` calls per `per_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per_ms: u64,
}

impl Rate {
    /// Reads `25/s`, `600/m` or `1000/h`.
    ///
    /// ```
    /// use casework_sdk::manifest::Rate;
    /// assert_eq!(Rate::parse("25/s"), Ok(Rate { count: 25, per_ms: 1000 }));
    /// assert!(Rate::parse("fast").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!("limits.rate = \"{text}\" must be a count per s, m or h, e.g. \"25/s\" or \"600/m\"")
        };
        let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per_ms = match per.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if !(1..=100_000).contains(&count) {
            return Err(format!(
                "limits.rate = \"{text}\": the count must be between 1 and 100000"
            ));
        }
        Ok(Rate { count, per_ms })
    }

    /// The time between two calls' starts.
    pub fn interval(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.per_ms * 1000 / u64::from(self.count))
    }
}

impl Limits {
    /// `rate`, read (checked by [`Manifest::parse`]).
    pub fn rate(&self) -> Option<Rate> {
        self.rate.as_deref().and_then(|r| Rate::parse(r).ok())
    }
}

/// Every problem found in a manifest, reported together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "casework: plugin.toml is invalid:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|err| ManifestError {
            problems: vec![err.to_string().trim_end().to_string()],
        })?;
        let problems = manifest.problems();
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError { problems })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !is_identifier(&self.name) {
            problems.push(format!(
                "name `{}` must be lowercase letters, digits and `_`, starting with a letter",
                self.name
            ));
        }
        if !is_semver(&self.version) {
            problems.push(format!("version `{}` must look like `1.2.3`", self.version));
        }
        if self.description.trim().is_empty() {
            problems.push("description must not be empty".to_string());
        }
        if self.actions.is_empty() {
            problems.push("actions must list at least one action".to_string());
        }
        for action in &self.actions {
            if !is_identifier(action) {
                problems.push(format!(
                    "action `{action}` must be lowercase letters, digits and `_`"
                ));
            }
        }
        push_duplicates(&mut problems, "actions", &self.actions);
        if let Some(hash) = &self.sha256 {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!(
                    "sha256 `{hash}` must be 64 hexadecimal digits (`sha256sum <name>.wasm`)"
                ));
            }
        }
        for origin in &self.grants.http {
            if let Err(why) = parse_origin_grant(origin) {
                problems.push(format!("grants.http `{origin}`: {why}"));
            }
        }
        push_duplicates(&mut problems, "grants.http", &self.grants.http);
        for name in &self.grants.secrets {
            let stem = name.strip_suffix('*').unwrap_or(name);
            let valid = !stem.is_empty()
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-./".contains(&b));
            if !valid {
                problems.push(format!(
                    "grants.secrets `{name}` must be lowercase letters, digits, `_-./`, optionally ending in `*`"
                ));
            }
        }
        push_duplicates(&mut problems, "grants.secrets", &self.grants.secrets);
        for key in self.config.keys() {
            if !is_identifier(key) {
                problems.push(format!(
                    "config key `{key}` must be lowercase letters, digits and `_`"
                ));
            }
        }
        if !(1..=4096).contains(&self.limits.memory_mb) {
            problems.push(format!(
                "limits.memory_mb = {} must be between 1 and 4096",
                self.limits.memory_mb
            ));
        }
        if !(1..=300_000).contains(&self.limits.timeout_ms) {
            problems.push(format!(
                "limits.timeout_ms = {} must be between 1 and 300000",
                self.limits.timeout_ms
            ));
        }
        if self.limits.fuel == Some(0) {
            problems.push("limits.fuel must be positive when set".to_string());
        }
        problems.extend(self.limits.problems());
        problems
    }
}

impl Grants {
    /// Whether a request to `url` is allowed: its origin, with the default
    /// port made explicit, must be listed exactly.
    pub fn allows_url(&self, url: &str) -> bool {
        match origin_of(url) {
            Some(origin) => self.http.contains(&origin),
            None => false,
        }
    }

    /// Whether secret `name` may be read.
    pub fn allows_secret(&self, name: &str) -> bool {
        self.secrets
            .iter()
            .any(|granted| match granted.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix) && name.len() > prefix.len(),
                None => granted == name,
            })
    }
}

/// The origin of an absolute URL as `scheme://host:port`, lowercased, with
/// the scheme's default port filled in; `None` for anything but http(s) or
/// for URLs with credentials.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    Some(format!("{scheme}://{}:{port}", host.to_ascii_lowercase()))
}

fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        let end = rest.find(']')?;
        let host = &authority[..end + 2];
        return match &rest[end + 1..] {
            "" => Some((host, None)),
            tail => Some((host, Some(tail.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

fn parse_origin_grant(grant: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = grant.split_once("://") else {
        return Err("must be `scheme://host:port`");
    };
    if scheme != "http" && scheme != "https" {
        return Err("scheme must be `http` or `https`");
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err("must be an origin only: no path, query or credentials");
    }
    let (host, port) = split_host_port(rest).ok_or("host is malformed")?;
    let port = port.ok_or("the port must be explicit, e.g. `:443`")?;
    if port.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
        return Err("port must be 1 to 65535");
    }
    if host != host.to_ascii_lowercase() {
        return Err("host must be lowercase");
    }
    Ok(())
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && s.len() <= 64
}

fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn push_duplicates(problems: &mut Vec<String>, field: &str, items: &[String]) {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(item) {
            problems.push(format!("{field} lists `{item}` twice"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        name = "crm"
        version = "0.1.0"
        description = "Customer lookup."
        actions = ["get_customer"]
        [grants]
        http = ["http://127.0.0.1:8080", "https://[::1]:443"]
        secrets = ["crm_token", "totp_seed/*"]
        [config]
        base_url = "http://127.0.0.1:8080"
        [limits]
        memory_mb = 32
        timeout_ms = 5000
        fuel = 1000000
        concurrency = 4
        rate = "25/s"
        key = "channel"
    "#;

    #[test]
    fn valid_manifest_parses_with_every_field() {
        let m = Manifest::parse(VALID).unwrap();
        assert_eq!(m.name, "crm");
        assert_eq!(
            m.limits,
            Limits {
                memory_mb: 32,
                timeout_ms: 5000,
                fuel: Some(1_000_000),
                concurrency: Some(4),
                rate: Some("25/s".into()),
                key: Some("channel".into()),
            }
        );
        assert_eq!(m.config["base_url"], "http://127.0.0.1:8080");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = VALID
            .replace(r#"name = "crm""#, r#"name = "My CRM""#)
            .replace(
                r#""http://127.0.0.1:8080","#,
                r#""https://crm.example.com/api", "ftp://x:21","#,
            )
            .replace("memory_mb = 32", "memory_mb = 0")
            .replace("concurrency = 4", "concurrency = 0")
            .replace(r#"rate = "25/s""#, r#"rate = "25 per second""#)
            .replace(r#"key = "channel""#, r#"key = "data..channel""#)
            .replace(r#"["get_customer"]"#, r#"["get_customer", "get_customer"]"#);
        let err = Manifest::parse(&text).unwrap_err();
        assert_eq!(
            err.problems,
            vec![
                "name `My CRM` must be lowercase letters, digits and `_`, starting with a letter",
                "actions lists `get_customer` twice",
                "grants.http `https://crm.example.com/api`: must be an origin only: no path, query or credentials",
                "grants.http `ftp://x:21`: scheme must be `http` or `https`",
                "limits.memory_mb = 0 must be between 1 and 4096",
                "limits.concurrency = 0 must be between 1 and 1000",
                "limits.rate = \"25 per second\" must be a count per s, m or h, e.g. \"25/s\" or \"600/m\"",
                "limits.key = \"data..channel\" must name an input field, e.g. \"channel\" or \"data.channel\"",
            ]
        );
        assert!(err
            .to_string()
            .starts_with("casework: plugin.toml is invalid:\n  - name"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            Manifest::parse(&VALID.replace("fuel = 1000000", "fuel = 1\ncpu = 2")).unwrap_err();
        assert!(err.problems[0].contains("unknown field `cpu`"), "{err}");
    }

    #[test]
    fn implicit_port_in_a_grant_is_rejected() {
        let err = Manifest::parse(&VALID.replace("http://127.0.0.1:8080\",", "https://a.test\","))
            .unwrap_err();
        assert_eq!(
            err.problems,
            vec!["grants.http `https://a.test`: the port must be explicit, e.g. `:443`"]
        );
    }

    #[test]
    fn url_checks_use_the_exact_origin() {
        let m = Manifest::parse(VALID).unwrap();
        assert!(m.grants.allows_url("http://127.0.0.1:8080/customers/1"));
        assert!(m.grants.allows_url("HTTPS://[::1]/x"));
        assert!(!m.grants.allows_url("http://127.0.0.1:8081/"));
        assert!(!m.grants.allows_url("https://127.0.0.1:8080/"));
        assert!(!m.grants.allows_url("http://user@127.0.0.1:8080/"));
        assert!(!m.grants.allows_url("http://127.0.0.1:8080.evil.test/"));
    }

    #[test]
    fn secret_prefix_grants_need_a_suffix() {
        let m = Manifest::parse(VALID).unwrap();
        assert!(m.grants.allows_secret("crm_token"));
        assert!(m.grants.allows_secret("totp_seed/cus_1"));
        assert!(!m.grants.allows_secret("totp_seed/"));
        assert!(!m.grants.allows_secret("crm_token2"));
    }
}
