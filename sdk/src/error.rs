//! The error a plugin returns, and whether the engine may retry it.

use std::fmt;

/// Shorthand for results whose error is a plugin [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An action's failure as the engine sees it.
///
/// `code` is stable and `snake_case` so workflows can branch on it;
/// `message` is for humans. Neither may contain a secret, a one-time code, a
/// token or card data: both end up in the engine's journal and logs.
///
/// ```
/// use casework_sdk::Error;
///
/// let busy = Error::retryable("rate_limited", "provider asked us to slow down");
/// assert!(busy.is_retryable());
///
/// let gone = Error::permanent("not_found", "no customer `c_42`");
/// assert_eq!(gone.code(), "not_found");
/// assert!(!gone.is_retryable());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    code: String,
    message: String,
    retryable: bool,
}

impl Error {
    /// A failure that may succeed if the engine retries the step with the same
    /// idempotency key: timeouts, rate limits, provider outages.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that a retry cannot fix: bad input, missing grant, a provider
    /// that said no.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// The bad-input error used when an action rejects its own input after
    /// deserialization (for example two mutually exclusive fields).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::permanent("invalid_input", message)
    }

    /// The same error, its message prefixed with what was being done, e.g.
    /// `Error::from(http_error).context("opening the incident")`.
    ///
    /// ```
    /// use casework_sdk::Error;
    ///
    /// let e = Error::retryable("http_timeout", "timed out").context("reading the ticket");
    /// assert_eq!((e.code(), e.message(), e.is_retryable()), ("http_timeout", "reading the ticket: timed out", true));
    /// ```
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the engine may retry.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable {
            "retryable"
        } else {
            "permanent"
        };
        write!(f, "Error({kind} {}: {})", self.code, self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
