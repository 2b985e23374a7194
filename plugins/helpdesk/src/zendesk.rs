//! Zendesk's wire conventions: `{email}/token` basic authentication, JSON bodies under
//! `ticket`, and how each failure maps to retryable or permanent.

use casework_sdk::{config, http, secrets, Error, Result};
use serde::de::DeserializeOwned;

const TOKEN: &str = "zendesk_api_token";

/// A request to `{zendesk_base_url}{path}` (path from `/api/v2/`) as the configured agent.
pub fn request(method: http::Method, path: &str) -> Result<http::RequestBuilder> {
    let base = config::require("zendesk_base_url")?;
    let email = config::require("zendesk_email")?;
    let token = secrets::get(TOKEN)?;
    Ok(
        http::request(method, format!("{}{path}", base.trim_end_matches('/')))
            .basic_auth(&format!("{email}/token"), token.expose())
            .header("accept", "application/json"),
    )
}

/// Sends and reads a JSON answer, mapping failures.
pub fn send<T: DeserializeOwned>(builder: http::RequestBuilder, what: &str) -> Result<T> {
    let response = builder
        .send()
        .map_err(|err| Error::from(err).context(what))?;
    let status = response.status;
    let detail = || {
        // `{"error": "RecordInvalid", "description": "...", "details": {...}}`.
        let body: serde_json::Value = response.json().unwrap_or_default();
        let mut text = format!("{what}: Zendesk answered HTTP {status}");
        for key in ["error", "description"] {
            if let Some(s) = body[key].as_str() {
                text.push_str(&format!(" {s}"));
            }
        }
        if let Some(d) = body.get("details").filter(|d| d.is_object()) {
            text.push_str(&format!(" {d}"));
        }
        text
    };
    match status {
        200..=299 => response.json().map_err(|e| e.context(what)),
        401 => Err(Error::permanent("authentication_failed", detail())),
        403 => Err(Error::permanent("permission_denied", detail())),
        404 => Err(Error::permanent("not_found", detail())),
        // A concurrent update of the same ticket: trying again applies this one.
        409 => Err(Error::retryable("conflict", detail())),
        422 => Err(Error::permanent("invalid_ticket_update", detail())),
        429 => Err(Error::retryable("rate_limited", detail())),
        500..=599 => Err(Error::retryable("provider_unavailable", detail())),
        _ => Err(Error::permanent("invalid_request", detail())),
    }
}
