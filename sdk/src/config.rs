//! The plugin's own configuration: the `[config]` table of its
//! `plugin.toml`, as overridden by the operator.
//!
//! ```
//! use casework_sdk::{config, testing::FakeHost};
//!
//! let host = FakeHost::new();
//! host.config("base_url", "http://127.0.0.1:8080/");
//!
//! assert_eq!(config::get_or("base_url", "https://api.example.com"), "http://127.0.0.1:8080/");
//! assert_eq!(config::base_url("base_url", "https://api.example.com"), "http://127.0.0.1:8080");
//! assert!(config::require("region").is_err());
//! ```

use crate::{Error, Result};

/// The value of `key`, if set.
pub fn get(key: &str) -> Option<String> {
    crate::host::config_get(key)
}

/// The value of `key`, or `default` when it is not set.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_string())
}

/// The value of `key`, or a permanent `config_missing` error naming the key,
/// for settings without a sensible default.
pub fn require(key: &str) -> Result<String> {
    get(key).ok_or_else(|| {
        Error::permanent(
            "config_missing",
            format!("config `{key}` is not set; add it to the plugin's [config] table"),
        )
    })
}

/// A base URL from `key` (or `default`) without trailing slashes, ready for
/// `format!("{base}/v1/...")`.
pub fn base_url(key: &str, default: &str) -> String {
    get_or(key, default).trim_end_matches('/').to_string()
}
