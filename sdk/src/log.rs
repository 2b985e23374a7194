//! Log lines written through the host, which tags them with the plugin,
//! instance, step and attempt.
//!
//! Never log codes, passwords, tokens, card data or secrets; log the event,
//! the outcome and identifiers instead.
//!
//! ```
//! use casework_sdk::log;
//!
//! let refund_id = "re_123";
//! log::info(format_args!("refund {refund_id} created"));
//! ```

use std::fmt::Display;

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Diagnostics for developers.
    Debug,
    /// Normal events worth keeping.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// A failure.
    Error,
}

/// Writes one line at `level`.
pub fn log(level: Level, message: impl Display) {
    crate::host::log(level, &message.to_string());
}

/// Writes a trace line.
pub fn trace(message: impl Display) {
    log(Level::Trace, message);
}

/// Writes a debug line.
pub fn debug(message: impl Display) {
    log(Level::Debug, message);
}

/// Writes an info line.
pub fn info(message: impl Display) {
    log(Level::Info, message);
}

/// Writes a warning.
pub fn warn(message: impl Display) {
    log(Level::Warn, message);
}

/// Writes an error line.
pub fn error(message: impl Display) {
    log(Level::Error, message);
}
