//! Secrets by name, handed out by the host only when the manifest grants them.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show
//! `Secret(<name>)`. Call [`Secret::expose`] only where the value leaves the
//! plugin (an `Authorization` header, an HMAC key).
//!
//! ```
//! use casework_sdk::{secrets, testing::FakeHost};
//!
//! let host = FakeHost::new();
//! host.secret("api_key", "sk_test_123");
//!
//! let key = secrets::get("api_key").unwrap();
//! assert_eq!(key.expose(), "sk_test_123");
//! assert_eq!(format!("{key:?}"), "Secret(api_key)");
//! assert_eq!(secrets::get("other").unwrap_err().code(), "secret_missing");
//! ```

use crate::{Error, Result};
use std::fmt;

/// Why the host did not return a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// The manifest does not grant the name.
    NotGranted,
    /// Granted, but nothing is stored under the name.
    NotFound,
    /// The secret store could not be reached.
    Unavailable,
}

/// A secret value that does not show itself in logs or errors.
#[derive(Clone)]
pub struct Secret {
    name: String,
    value: String,
}

impl Secret {
    /// The name it was looked up by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value. Keep it out of logs, errors and outputs.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.name)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.name)
    }
}

/// Looks up `name`.
///
/// Errors: `secret_not_granted` (permanent: add the name to
/// `[grants] secrets`), `secret_missing` (permanent: the operator must store
/// it), `secret_store_unavailable` (retryable).
pub fn get(name: &str) -> Result<Secret> {
    lookup(name).map_err(|err| to_error(name, err))
}

/// Looks up `name` and keeps the host's answer as a [`LookupError`], for
/// plugins that treat a missing secret as "feature off".
pub fn lookup(name: &str) -> Result<Secret, LookupError> {
    crate::host::secret_get(name).map(|value| Secret {
        name: name.to_string(),
        value,
    })
}

fn to_error(name: &str, err: LookupError) -> Error {
    match err {
        LookupError::NotGranted => Error::permanent(
            "secret_not_granted",
            format!(
                "secret `{name}` is not granted; list it under [grants] secrets in plugin.toml"
            ),
        ),
        LookupError::NotFound => Error::permanent(
            "secret_missing",
            format!("secret `{name}` is granted but not set; ask the operator to store it"),
        ),
        LookupError::Unavailable => Error::retryable(
            "secret_store_unavailable",
            format!("the secret store did not answer for `{name}`"),
        ),
    }
}
