//! Slack incoming webhooks. The webhook URL is itself a credential, so it is
//! read from a secret and never appears in errors or logs.

use casework_sdk::{http, log, secrets, Context, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const DEFAULT_WEBHOOK_SECRET: &str = "slack_webhook_url";

/// Input of `notify_slack`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyInput {
    /// Message text (Slack mrkdwn). Also the notification fallback when
    /// `blocks` are given.
    pub text: String,
    /// Optional Block Kit blocks, passed through unchanged.
    #[serde(default)]
    pub blocks: Option<Vec<serde_json::Value>>,
    /// Name of the secret holding the webhook URL; defaults to
    /// `slack_webhook_url`. One webhook posts to one channel.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

/// Slack accepted the message.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NotifyOutput {
    /// Always true on success; failures are errors.
    pub delivered: bool,
}

#[derive(Serialize)]
struct Message<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<&'a Vec<serde_json::Value>>,
}

pub fn notify(input: NotifyInput, _ctx: &Context) -> Result<NotifyOutput> {
    if input.text.trim().is_empty() {
        return Err(Error::invalid_input("`text` must not be empty"));
    }
    let secret_name = input
        .webhook_secret
        .as_deref()
        .unwrap_or(DEFAULT_WEBHOOK_SECRET);
    let webhook = secrets::get(secret_name)?;
    let message = Message {
        text: &input.text,
        blocks: input.blocks.as_ref(),
    };
    let response = http::post(webhook.expose())
        .json(&message)
        .send()
        .map_err(|err| {
            // The transport error may quote the URL; keep only the kind.
            let mapped: Error = err.into();
            let message = format!(
                "Slack webhook `{secret_name}` unreachable ({})",
                mapped.code()
            );
            if mapped.is_retryable() {
                Error::retryable(mapped.code(), message)
            } else {
                Error::permanent(mapped.code(), message)
            }
        })?;
    // Slack answers with a short plain-text reason such as `no_service`.
    let reason: String = response
        .text()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    match response.status {
        200..=299 => {
            log::info(format_args!("slack message posted via `{secret_name}`"));
            Ok(NotifyOutput { delivered: true })
        }
        429 => Err(Error::retryable(
            "rate_limited",
            "Slack is rate limiting this webhook (HTTP 429)",
        )),
        500..=599 => Err(Error::retryable(
            "provider_unavailable",
            format!("Slack answered HTTP {} `{reason}`", response.status),
        )),
        404 | 410 => Err(Error::permanent(
            "webhook_gone",
            format!(
                "Slack webhook `{secret_name}` no longer works (HTTP {} `{reason}`)",
                response.status
            ),
        )),
        status => Err(Error::permanent(
            "slack_rejected",
            format!("Slack rejected the message (HTTP {status} `{reason}`)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::Paging;
    use casework_sdk::http::{self, Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::json;

    const HOOK: &str = "http://127.0.0.1:18081/services/T000/B000/XXXXSECRETXXXX";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.secret("slack_webhook_url", HOOK);
        host
    }

    #[test]
    fn posts_text_and_blocks_to_the_secret_url() {
        let host = host();
        host.respond(Method::Post, HOOK, Response::new(200).with_body("ok"));
        let blocks =
            json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*SEV1* login"}}]);
        let out = host
            .invoke::<Paging>(
                "notify_slack",
                &json!({"text": "SEV1: login failing", "blocks": blocks}),
            )
            .unwrap();
        assert_eq!(out, json!({"delivered": true}));
        let sent = &host.requests()[0];
        assert_eq!((sent.method, sent.url.as_str()), (Method::Post, HOOK));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(
            sent.body_json(),
            json!({"text": "SEV1: login failing", "blocks": blocks})
        );
        assert!(host.logs().iter().all(|l| !l.message.contains("SECRET")));
    }

    #[test]
    fn errors_never_quote_the_webhook_url() {
        let cases = [
            (
                Response::new(404).with_body("no_service"),
                "webhook_gone",
                false,
            ),
            (
                Response::new(410).with_body("channel_is_archived"),
                "webhook_gone",
                false,
            ),
            (
                Response::new(400).with_body("invalid_payload"),
                "slack_rejected",
                false,
            ),
            (Response::new(429), "rate_limited", true),
            (
                Response::new(502).with_body("<html>bad gateway</html>"),
                "provider_unavailable",
                true,
            ),
        ];
        for (response, code, retryable) in cases {
            let host = host();
            let status = response.status;
            host.respond(Method::Post, HOOK, response);
            let err = host
                .invoke::<Paging>("notify_slack", &json!({"text": "hi"}))
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}"
            );
            assert!(!err.message().contains("SECRET"), "{err}");
        }

        let host = host();
        host.fail(
            Method::Post,
            HOOK,
            http::Error::Connection(format!("connect to {HOOK} refused")),
        );
        let err = host
            .invoke::<Paging>("notify_slack", &json!({"text": "hi"}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("http_connection", true));
        assert_eq!(
            err.message(),
            "Slack webhook `slack_webhook_url` unreachable (http_connection)"
        );
    }

    #[test]
    fn reason_text_is_reduced_to_a_token() {
        let host = host();
        host.respond(
            Method::Post,
            HOOK,
            Response::new(403).with_body("action_prohibited\n"),
        );
        let err = host
            .invoke::<Paging>("notify_slack", &json!({"text": "hi"}))
            .unwrap_err();
        assert_eq!(
            err.message(),
            "Slack rejected the message (HTTP 403 `action_prohibited`)"
        );
    }
}
