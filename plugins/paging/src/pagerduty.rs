//! PagerDuty Events API v2 (`POST /v2/enqueue`): trigger, acknowledge and
//! resolve, keyed by `dedup_key`.

use casework_sdk::{clock, config, http, log, secrets, Context, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const DEFAULT_BASE_URL: &str = "https://events.pagerduty.com";
const DEFAULT_ROUTING_KEY_SECRET: &str = "routing_key";
// Limits from the Events API v2 reference; checked here so a bad event fails
// as invalid input instead of a provider rejection after the fact.
const MAX_SUMMARY_CHARS: usize = 1024;
const MAX_DEDUP_KEY_CHARS: usize = 255;

/// PagerDuty severity of the affected system.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Service down or data at risk.
    Critical,
    /// Degraded, customers affected.
    Error,
    /// Could become an error.
    Warning,
    /// Informational.
    Info,
}

/// Input of `trigger`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerInput {
    /// One line shown in the page and the incident title (max 1024 chars).
    pub summary: String,
    /// The affected system, e.g. a hostname or `checkout-api`.
    pub source: String,
    /// How bad it is.
    pub severity: Severity,
    /// Incident key: events with the same key join one open incident (max
    /// 255 chars). Defaults to the step's idempotency key.
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// When the problem was detected (RFC 3339). Defaults to now.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Component of the source that is affected, e.g. `login`.
    #[serde(default)]
    pub component: Option<String>,
    /// Logical grouping of components, e.g. `auth`.
    #[serde(default)]
    pub group: Option<String>,
    /// Class or type of the event, e.g. `ticket_burst`.
    #[serde(default)]
    pub class: Option<String>,
    /// Free-form details shown on the incident (a JSON object).
    #[serde(default)]
    pub custom_details: Option<serde_json::Map<String, serde_json::Value>>,
    /// Name of the secret that holds the integration's routing key, for
    /// workflows that page different services: `routing_key` (the default)
    /// or a name starting with `routing_key_` or `routing_key/`.
    #[serde(default)]
    pub routing_key_secret: Option<String>,
}

/// Input of `acknowledge` and `resolve`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInput {
    /// The key the incident was triggered with.
    pub dedup_key: String,
    /// Name of the routing-key secret: `routing_key` (the default) or a name
    /// starting with `routing_key_` or `routing_key/`.
    #[serde(default)]
    pub routing_key_secret: Option<String>,
}

/// What PagerDuty answered.
#[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct EnqueueOutput {
    /// The incident key PagerDuty filed the event under.
    pub dedup_key: String,
    /// `success` when the event was accepted.
    pub status: String,
    /// PagerDuty's message, e.g. `Event processed`.
    pub message: String,
}

#[derive(Serialize)]
struct Event<'a> {
    routing_key: &'a str,
    event_action: &'a str,
    dedup_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload<'a>>,
}

#[derive(Serialize)]
struct Payload<'a> {
    summary: &'a str,
    source: &'a str,
    severity: Severity,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_details: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

pub fn trigger(input: TriggerInput, ctx: &Context) -> Result<EnqueueOutput> {
    if input.summary.trim().is_empty() || input.source.trim().is_empty() {
        return Err(Error::invalid_input(
            "`summary` and `source` must not be empty",
        ));
    }
    if input.summary.chars().count() > MAX_SUMMARY_CHARS {
        return Err(Error::invalid_input(format!(
            "`summary` is longer than {MAX_SUMMARY_CHARS} characters"
        )));
    }
    let dedup_key = input.dedup_key.as_deref().unwrap_or(&ctx.idempotency_key);
    check_dedup_key(dedup_key)?;
    let timestamp = input
        .timestamp
        .clone()
        .unwrap_or_else(|| clock::rfc3339(clock::now_ms()));
    let payload = Payload {
        summary: &input.summary,
        source: &input.source,
        severity: input.severity,
        timestamp,
        component: input.component.as_deref(),
        group: input.group.as_deref(),
        class: input.class.as_deref(),
        custom_details: input.custom_details.as_ref(),
    };
    enqueue(
        "trigger",
        dedup_key,
        Some(payload),
        input.routing_key_secret.as_deref(),
    )
}

pub fn acknowledge(input: UpdateInput, _ctx: &Context) -> Result<EnqueueOutput> {
    check_dedup_key(&input.dedup_key)?;
    enqueue(
        "acknowledge",
        &input.dedup_key,
        None,
        input.routing_key_secret.as_deref(),
    )
}

pub fn resolve(input: UpdateInput, _ctx: &Context) -> Result<EnqueueOutput> {
    check_dedup_key(&input.dedup_key)?;
    enqueue(
        "resolve",
        &input.dedup_key,
        None,
        input.routing_key_secret.as_deref(),
    )
}

fn check_dedup_key(key: &str) -> Result<()> {
    if key.is_empty() || key.chars().count() > MAX_DEDUP_KEY_CHARS {
        return Err(Error::invalid_input(format!(
            "`dedup_key` must be 1 to {MAX_DEDUP_KEY_CHARS} characters"
        )));
    }
    Ok(())
}

/// The secret to read the routing key from. Only `routing_key` and names under
/// it are accepted, so an input cannot make the plugin send another of its
/// secrets (the Slack webhook URL, the webhook signing secret) to PagerDuty.
fn routing_key_name(requested: Option<&str>) -> Result<&str> {
    let name = requested.unwrap_or(DEFAULT_ROUTING_KEY_SECRET);
    match name.strip_prefix(DEFAULT_ROUTING_KEY_SECRET) {
        Some("") => Ok(name),
        Some(rest) if rest.len() > 1 && (rest.starts_with('_') || rest.starts_with('/')) => {
            Ok(name)
        }
        _ => Err(Error::invalid_input(format!(
            "`routing_key_secret` must be `{DEFAULT_ROUTING_KEY_SECRET}` or start with \
             `{DEFAULT_ROUTING_KEY_SECRET}_` or `{DEFAULT_ROUTING_KEY_SECRET}/`"
        ))),
    }
}

fn enqueue(
    action: &str,
    dedup_key: &str,
    payload: Option<Payload<'_>>,
    routing_key_secret: Option<&str>,
) -> Result<EnqueueOutput> {
    let routing_key = secrets::get(routing_key_name(routing_key_secret)?)?;
    let url = format!(
        "{}/v2/enqueue",
        config::base_url("pagerduty_base_url", DEFAULT_BASE_URL)
    );
    let event = Event {
        routing_key: routing_key.expose(),
        event_action: action,
        dedup_key,
        payload,
    };
    let response = http::post(url).json(&event).send()?;
    match response.status {
        200..=299 => {
            let output: EnqueueOutput = response.json()?;
            log::info(format_args!(
                "pagerduty {action} accepted for dedup_key {}",
                output.dedup_key
            ));
            Ok(output)
        }
        400 => {
            let detail = response
                .json::<Rejection>()
                .map(|r| r.describe())
                .unwrap_or_default();
            Err(Error::permanent(
                "invalid_event",
                format!("PagerDuty rejected the {action} event{detail}"),
            ))
        }
        429 => Err(Error::retryable(
            "rate_limited",
            "PagerDuty is throttling events (HTTP 429)",
        )),
        500..=599 => Err(Error::retryable(
            "provider_unavailable",
            format!("PagerDuty answered HTTP {}", response.status),
        )),
        status => Err(Error::permanent(
            "provider_rejected",
            format!(
                "PagerDuty answered HTTP {status} to the {action} event; check the routing key"
            ),
        )),
    }
}

/// PagerDuty's 400 body: `{"status": "invalid event", "message": ..., "errors": [...]}`.
#[derive(Deserialize)]
struct Rejection {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<String>,
}

impl Rejection {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.message.is_empty() {
            parts.push(self.message.clone());
        }
        parts.extend(self.errors.iter().cloned());
        if parts.is_empty() {
            String::new()
        } else {
            format!(": {}", parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Paging;
    use casework_sdk::http::{self, Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::json;

    const BASE: &str = "http://127.0.0.1:18080";
    const ENQUEUE: &str = "http://127.0.0.1:18080/v2/enqueue";
    const KEY: &str = "R0UTINGKEY0000000000000000000001";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("pagerduty_base_url", &format!("{BASE}/"));
        host.secret("routing_key", KEY);
        host.set_now_ms(1_700_000_000_000);
        host
    }

    fn accepted(dedup_key: &str) -> Response {
        Response::from_json(
            202,
            &json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
        )
    }

    #[test]
    fn trigger_sends_the_events_v2_wire_format() {
        let host = host();
        host.respond(Method::Post, ENQUEUE, accepted("login-2024-06-01T10"));
        let out = host
            .invoke::<Paging>(
                "trigger",
                &json!({
                    "summary": "Login failing for 7% of customers",
                    "source": "auth-api",
                    "severity": "critical",
                    "dedup_key": "login-2024-06-01T10",
                    "component": "login",
                    "custom_details": {"tickets_last_15m": 12}
                }),
            )
            .unwrap();
        assert_eq!(
            out,
            json!({"dedup_key": "login-2024-06-01T10", "status": "success", "message": "Event processed"})
        );

        let sent = host.requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].method, Method::Post);
        assert_eq!(sent[0].url, ENQUEUE);
        assert_eq!(sent[0].header("content-type"), Some("application/json"));
        assert_eq!(
            sent[0].body_json(),
            json!({
                "routing_key": KEY,
                "event_action": "trigger",
                "dedup_key": "login-2024-06-01T10",
                "payload": {
                    "summary": "Login failing for 7% of customers",
                    "source": "auth-api",
                    "severity": "critical",
                    "timestamp": "2023-11-14T22:13:20.000Z",
                    "component": "login",
                    "custom_details": {"tickets_last_15m": 12}
                }
            })
        );
    }

    #[test]
    fn trigger_without_dedup_key_uses_the_idempotency_key_so_retries_do_not_page_twice() {
        let host = host();
        host.respond(Method::Post, ENQUEUE, accepted("inst-1:step-1"));
        host.invoke::<Paging>(
            "trigger",
            &json!({"summary": "s", "source": "x", "severity": "info", "timestamp": "2024-01-01T00:00:00Z"}),
        )
        .unwrap();
        let body = host.requests()[0].body_json();
        assert_eq!(body["dedup_key"], "inst-1:step-1");
        assert_eq!(body["payload"]["timestamp"], "2024-01-01T00:00:00Z");
    }

    #[test]
    fn acknowledge_and_resolve_send_no_payload() {
        let host = host();
        host.respond(Method::Post, ENQUEUE, accepted("inc-1"));
        host.secret("routing_key_tier2", "TIER2KEY");
        host.invoke::<Paging>("acknowledge", &json!({"dedup_key": "inc-1"}))
            .unwrap();
        host.invoke::<Paging>(
            "resolve",
            &json!({"dedup_key": "inc-1", "routing_key_secret": "routing_key_tier2"}),
        )
        .unwrap();
        let sent = host.requests();
        assert_eq!(
            sent[0].body_json(),
            json!({"routing_key": KEY, "event_action": "acknowledge", "dedup_key": "inc-1"})
        );
        assert_eq!(
            sent[1].body_json(),
            json!({"routing_key": "TIER2KEY", "event_action": "resolve", "dedup_key": "inc-1"})
        );
    }

    #[test]
    fn routing_key_secret_cannot_name_another_secret() {
        let host = host();
        host.secret("webhook_signing_secret", "whsec_test");
        host.secret(
            "slack_webhook_url",
            "https://hooks.slack.com/services/T/B/X",
        );
        for name in [
            "webhook_signing_secret",
            "slack_webhook_url",
            "routing_key_",
            "routing_keyX",
            "",
        ] {
            let err = host
                .invoke::<Paging>(
                    "resolve",
                    &json!({"dedup_key": "inc-1", "routing_key_secret": name}),
                )
                .unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{name:?}");
        }
        assert!(host.requests().is_empty());
        host.secret("routing_key/billing", "BILLINGKEY");
        host.respond(Method::Post, ENQUEUE, accepted("inc-1"));
        host.invoke::<Paging>(
            "resolve",
            &json!({"dedup_key": "inc-1", "routing_key_secret": "routing_key/billing"}),
        )
        .unwrap();
        assert_eq!(host.requests()[0].body_json()["routing_key"], "BILLINGKEY");
    }

    #[test]
    fn unknown_severity_is_invalid_input_before_any_request() {
        let host = host();
        let err = host
            .invoke::<Paging>(
                "trigger",
                &json!({"summary": "s", "source": "x", "severity": "sev1"}),
            )
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.message().contains("`severity`"), "{err}");
        assert!(host.requests().is_empty());
    }

    #[test]
    fn oversized_summary_and_dedup_key_are_rejected() {
        let host = host();
        let long = "x".repeat(1025);
        let err = host
            .invoke::<Paging>(
                "trigger",
                &json!({"summary": long, "source": "x", "severity": "info"}),
            )
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        let err = host
            .invoke::<Paging>("resolve", &json!({"dedup_key": "k".repeat(256)}))
            .unwrap_err();
        assert_eq!(err.message(), "`dedup_key` must be 1 to 255 characters");
        assert!(host.requests().is_empty());
    }

    #[test]
    fn http_errors_map_to_retryable_or_permanent() {
        let cases = [
            (429, "rate_limited", true),
            (500, "provider_unavailable", true),
            (503, "provider_unavailable", true),
            (404, "provider_rejected", false),
            (403, "provider_rejected", false),
        ];
        for (status, code, retryable) in cases {
            let host = host();
            host.respond(Method::Post, ENQUEUE, Response::new(status));
            let err = host
                .invoke::<Paging>("resolve", &json!({"dedup_key": "inc-1"}))
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}"
            );
            assert!(!err.message().contains(KEY));
        }
    }

    #[test]
    fn invalid_event_reports_pagerduty_errors_without_the_routing_key() {
        let host = host();
        host.respond(
            Method::Post,
            ENQUEUE,
            Response::from_json(
                400,
                &json!({"status": "invalid event", "message": "Event object is invalid",
                        "errors": ["'payload.source' is missing or blank"]}),
            ),
        );
        let err = host
            .invoke::<Paging>("acknowledge", &json!({"dedup_key": "inc-1"}))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_event");
        assert!(!err.is_retryable());
        assert_eq!(
            err.message(),
            "PagerDuty rejected the acknowledge event: Event object is invalid; 'payload.source' is missing or blank"
        );
    }

    #[test]
    fn timeouts_are_retryable_and_missing_secrets_are_permanent() {
        let host = host();
        host.fail(Method::Post, ENQUEUE, http::Error::Timeout);
        let err = host
            .invoke::<Paging>("resolve", &json!({"dedup_key": "inc-1"}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("http_timeout", true));

        let err = host
            .invoke::<Paging>(
                "resolve",
                &json!({"dedup_key": "inc-1", "routing_key_secret": "routing_key_nope"}),
            )
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("secret_missing", false));
    }

    #[test]
    fn logs_never_contain_the_routing_key() {
        let host = host();
        host.respond(Method::Post, ENQUEUE, accepted("inc-1"));
        host.invoke::<Paging>("resolve", &json!({"dedup_key": "inc-1"}))
            .unwrap();
        let logs = host.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(
            logs[0].message,
            "pagerduty resolve accepted for dedup_key inc-1"
        );
    }
}
