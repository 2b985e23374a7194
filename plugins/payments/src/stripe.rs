//! Stripe's wire conventions: bearer auth, form bodies, the error object and
//! how each failure maps to retryable or permanent.

use casework_sdk::{config, http, secrets, Error, Result};
use serde::Deserialize;

const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
const SECRET_KEY: &str = "stripe_secret_key";

/// Starts a request to `path` (which begins with `/v1/`) with auth and the
/// pinned API version.
pub fn request(method: http::Method, path: &str) -> Result<http::RequestBuilder> {
    let key = secrets::get(SECRET_KEY)?;
    let url = format!(
        "{}{path}",
        config::base_url("stripe_base_url", DEFAULT_BASE_URL)
    );
    let mut builder = http::request(method, url).bearer_auth(key.expose());
    if let Some(version) = config::get("stripe_version") {
        builder = builder.header("stripe-version", version);
    }
    Ok(builder)
}

/// Sends a request, turning transport failures and non-2xx answers into
/// plugin errors.
pub fn send(builder: http::RequestBuilder, what: &str) -> Result<http::Response> {
    let response = builder.send().map_err(|err| {
        let retryable = err.is_retryable();
        let base: Error = err.into();
        if retryable {
            // The request may have reached Stripe; only a retry with the same
            // idempotency key is safe, and that is what the engine does.
            Error::retryable(
                base.code(),
                format!("{what}: {}; outcome unknown", base.message()),
            )
        } else {
            Error::permanent(base.code(), format!("{what}: {}", base.message()))
        }
    })?;
    if response.is_success() {
        Ok(response)
    } else {
        Err(map_error(&response, what))
    }
}

/// `{"error": {"type": ..., "code": ..., "message": ..., "param": ...}}`
#[derive(Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    error: Body,
}

#[derive(Deserialize, Default)]
struct Body {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
}

fn map_error(response: &http::Response, what: &str) -> Error {
    let body = response.json::<Envelope>().unwrap_or_default().error;
    let status = response.status;
    let kind = body.kind.as_deref().unwrap_or("");
    let code = body.code.as_deref().unwrap_or("");

    let mut detail = format!("{what}: Stripe answered HTTP {status}");
    for part in [
        body.kind.as_deref(),
        body.code.as_deref(),
        body.decline_code.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        detail.push_str(&format!(" {part}"));
    }
    if let Some(param) = &body.param {
        detail.push_str(&format!(" (param `{param}`)"));
    }
    if let Some(message) = body.message.as_deref().filter(|m| !mentions_key(m)) {
        detail.push_str(&format!(": {message}"));
    }

    match (status, kind, code) {
        (429, _, _) => Error::retryable("rate_limited", detail),
        (500..=599, _, _) => Error::retryable("provider_unavailable", detail),
        (409, _, _) | (_, "idempotency_error", _) => {
            Error::permanent("idempotency_conflict", detail)
        }
        (401, _, _) => Error::permanent("authentication_failed", detail),
        (403, _, _) => Error::permanent("permission_denied", detail),
        (404, _, _) | (_, _, "resource_missing") => Error::permanent("not_found", detail),
        (_, _, "charge_already_refunded") => Error::permanent("already_refunded", detail),
        (_, _, "amount_too_large") => Error::permanent("amount_exceeds_refundable", detail),
        (_, _, "charge_disputed") => Error::permanent("charge_disputed", detail),
        (402, _, _) | (_, "card_error", _) => Error::permanent("card_error", detail),
        _ => Error::permanent("invalid_request", detail),
    }
}

/// Stripe masks keys in messages (`sk_test_****abcd`), but even a masked
/// key does not belong in a journal.
fn mentions_key(message: &str) -> bool {
    ["sk_", "rk_", "pk_", "whsec_"]
        .iter()
        .any(|prefix| message.contains(prefix))
}
