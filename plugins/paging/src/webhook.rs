//! Generic outbound webhook: a JSON event, HMAC-SHA256 signed, so receivers
//! (status pages, chat bridges, in-house tools) can verify it came from us.
//!
//! Headers sent:
//! - `X-Casework-Timestamp`: Unix seconds when signed.
//! - `X-Casework-Signature`: `sha256=` + lowercase hex HMAC-SHA256 with the
//!   `webhook_signing_secret`. By default over `"{timestamp}.{body}"` so a
//!   captured request cannot be replayed later with a fresh timestamp; set
//!   config `webhook_signed_content = "body"` for receivers that sign the raw
//!   body only.
//! - `Idempotency-Key`: the step's key, identical on retries, for dedup.

use casework_sdk::{clock, config, http, log, secrets, Context, Error, Result};
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const SIGNING_SECRET: &str = "webhook_signing_secret";

/// Input of `send_webhook`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendInput {
    /// Event type, e.g. `incident.declared`.
    pub event: String,
    /// Event data, sent as is.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The receiver accepted the event.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SendOutput {
    /// HTTP status the receiver answered (2xx).
    pub status: u16,
    /// The `id` sent in the body (the step's idempotency key).
    pub id: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    event: &'a str,
    instance_id: &'a str,
    step_id: &'a str,
    sent_at: String,
    data: &'a serde_json::Value,
}

/// What the signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignedContent {
    TimestampDotBody,
    Body,
}

pub fn send(input: SendInput, ctx: &Context) -> Result<SendOutput> {
    if input.event.trim().is_empty() {
        return Err(Error::invalid_input("`event` must not be empty"));
    }
    let url = config::require("webhook_url")?;
    let signed_content = match config::get_or("webhook_signed_content", "timestamp.body").as_str() {
        "timestamp.body" => SignedContent::TimestampDotBody,
        "body" => SignedContent::Body,
        other => {
            return Err(Error::permanent(
                "config_invalid",
                format!(
                    "config `webhook_signed_content` is `{other}`; use `timestamp.body` or `body`"
                ),
            ))
        }
    };
    let secret = secrets::get(SIGNING_SECRET)?;
    let now_ms = clock::now_ms();
    let timestamp = (now_ms / 1000).to_string();
    let envelope = Envelope {
        id: &ctx.idempotency_key,
        event: &input.event,
        instance_id: &ctx.instance_id,
        step_id: &ctx.step_id,
        sent_at: clock::rfc3339(now_ms),
        data: &input.data,
    };
    let body = serde_json::to_vec(&envelope).map_err(|err| {
        Error::permanent("internal", format!("could not encode the event: {err}"))
    })?;
    let signature = sign(
        secret.expose().as_bytes(),
        &timestamp,
        &body,
        signed_content,
    );

    let response = http::post(&url)
        .header("content-type", "application/json")
        .header("x-casework-timestamp", &timestamp)
        .header("x-casework-signature", format!("sha256={signature}"))
        .header("idempotency-key", &ctx.idempotency_key)
        .body(body)
        .send()?;
    match response.status {
        200..=299 => {
            log::info(format_args!(
                "webhook {} delivered (HTTP {})",
                input.event, response.status
            ));
            Ok(SendOutput {
                status: response.status,
                id: ctx.idempotency_key.clone(),
            })
        }
        408 | 425 | 429 | 500..=599 => Err(Error::retryable(
            "receiver_unavailable",
            format!("webhook receiver answered HTTP {}", response.status),
        )),
        status => Err(Error::permanent(
            "webhook_rejected",
            format!("webhook receiver rejected the event with HTTP {status}"),
        )),
    }
}

fn sign(key: &[u8], timestamp: &str, body: &[u8], content: SignedContent) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    if content == SignedContent::TimestampDotBody {
        mac.update(timestamp.as_bytes());
        mac.update(b".");
    }
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::{sign, SignedContent};
    use crate::Paging;
    use casework_sdk::http::{Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::json;

    const URL: &str = "http://127.0.0.1:18082/hooks/casework";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("webhook_url", URL);
        host.secret("webhook_signing_secret", "whsec_test");
        host.set_now_ms(1_700_000_000_250);
        host
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = sign(
            b"Jefe",
            "",
            b"what do ya want for nothing?",
            SignedContent::Body,
        );
        assert_eq!(
            mac,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sends_signed_timestamped_event() {
        let host = host();
        host.respond(Method::Post, URL, Response::new(204));
        let out = host
            .invoke::<Paging>(
                "send_webhook",
                &json!({"event": "incident.declared", "data": {"sev": 1}}),
            )
            .unwrap();
        assert_eq!(out, json!({"status": 204, "id": "inst-1:step-1"}));

        let sent = &host.requests()[0];
        assert_eq!((sent.method, sent.url.as_str()), (Method::Post, URL));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("x-casework-timestamp"), Some("1700000000"));
        assert_eq!(sent.header("idempotency-key"), Some("inst-1:step-1"));
        assert_eq!(
            sent.body_json(),
            json!({
                "id": "inst-1:step-1",
                "event": "incident.declared",
                "instance_id": "inst-1",
                "step_id": "step-1",
                "sent_at": "2023-11-14T22:13:20.250Z",
                "data": {"sev": 1}
            })
        );
        // Recompute as a receiver would, from the exact bytes on the wire.
        let mut signed = b"1700000000.".to_vec();
        signed.extend_from_slice(&sent.body);
        let expected = sign(b"whsec_test", "", &signed, SignedContent::Body);
        assert_eq!(
            sent.header("x-casework-signature"),
            Some(format!("sha256={expected}").as_str())
        );
    }

    #[test]
    fn body_only_signatures_when_configured() {
        let host = host();
        host.config("webhook_signed_content", "body");
        host.respond(Method::Post, URL, Response::new(200));
        host.invoke::<Paging>("send_webhook", &json!({"event": "e"}))
            .unwrap();
        let sent = &host.requests()[0];
        let expected = sign(b"whsec_test", "", &sent.body, SignedContent::Body);
        assert_eq!(
            sent.header("x-casework-signature"),
            Some(format!("sha256={expected}").as_str())
        );

        host.config("webhook_signed_content", "sha1");
        let err = host
            .invoke::<Paging>("send_webhook", &json!({"event": "e"}))
            .unwrap_err();
        assert_eq!(err.code(), "config_invalid");
    }

    #[test]
    fn receiver_errors_and_missing_config() {
        for (status, code, retryable) in [
            (503, "receiver_unavailable", true),
            (429, "receiver_unavailable", true),
            (401, "webhook_rejected", false),
        ] {
            let host = host();
            host.respond(Method::Post, URL, Response::new(status));
            let err = host
                .invoke::<Paging>("send_webhook", &json!({"event": "e"}))
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}"
            );
            assert!(!err.message().contains("whsec_test"));
        }
        let _host = FakeHost::new();
        let err = _host
            .invoke::<Paging>("send_webhook", &json!({"event": "e"}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("config_missing", false));
    }
}
