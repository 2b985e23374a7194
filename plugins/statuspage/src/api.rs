//! Statuspage's wire conventions: `Authorization: OAuth <key>`, JSON bodies, the page in
//! the path, and how each failure maps to retryable or permanent.

use casework_sdk::http::encode_path_segment;
use casework_sdk::{config, http, secrets, Error, Result};
use serde::de::DeserializeOwned;

const DEFAULT_BASE_URL: &str = "https://api.statuspage.io";
const API_KEY: &str = "statuspage_api_key";

/// `{base}/v1/pages/{page_id}{rest}`.
fn url(rest: &str) -> Result<String> {
    let page = config::require("page_id")?;
    if page.trim().is_empty() {
        return Err(Error::permanent(
            "config_missing",
            "set `page_id` in the statuspage plugin's [config] to your page's id",
        ));
    }
    Ok(format!(
        "{}/v1/pages/{}{rest}",
        config::base_url("statuspage_base_url", DEFAULT_BASE_URL),
        encode_path_segment(page.trim())
    ))
}

/// A request to the page's `rest` path with the API key.
pub fn request(method: http::Method, rest: &str) -> Result<http::RequestBuilder> {
    let key = secrets::get(API_KEY)?;
    Ok(http::request(method, url(rest)?)
        .header("authorization", format!("OAuth {}", key.expose()))
        .header("accept", "application/json"))
}

/// Sends and reads a JSON answer, mapping failures.
pub fn send<T: DeserializeOwned>(builder: http::RequestBuilder, what: &str) -> Result<T> {
    let response = builder
        .send()
        .map_err(|err| Error::from(err).context(what))?;
    let status = response.status;
    let detail = || {
        // `{"error": "..."}` or `{"message": "..."}`; never the request's key.
        let body: serde_json::Value = response.json().unwrap_or_default();
        let text = body["error"]
            .as_str()
            .or(body["message"].as_str())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        format!("{what}: Statuspage answered HTTP {status}{text}")
    };
    match status {
        200..=299 => response.json().map_err(|e| e.context(what)),
        401 => Err(Error::permanent("authentication_failed", detail())),
        403 => Err(Error::permanent("permission_denied", detail())),
        404 => Err(Error::permanent("not_found", detail())),
        420 | 429 => Err(Error::retryable("rate_limited", detail())),
        500..=599 => Err(Error::retryable("provider_unavailable", detail())),
        _ => Err(Error::permanent("invalid_request", detail())),
    }
}

/// An incident id as one path segment.
pub fn incident_path(id: &str) -> String {
    format!("/incidents/{}", encode_path_segment(id))
}
