//! Casework: a durable workflow engine for customer-support operations.
//!
//! The data flows down this list; each stage is its own module and depends only on those above it:
//! - [`definition`]: workflow files as written (YAML with positions);
//! - [`validate`]: every semantic problem at once, with `file:line:col`;
//! - [`compile`]: Rhai compiled once, steps resolved, a deterministic [`compile::CompiledWorkflow`];
//! - [`runtime`]: the instance state machine, `apply(record)` and `advance(now)`, no I/O;
//!   the records it reads and writes are the versioned [`journal`] format;
//! - [`daemon`]: the driver that carries out effects, the HTTP API, the CLI's `serve`.
//!
//! The outside world has one door each: [`store::Store`] (sled), [`plugin_host::PluginHost`]
//! (integrations) and [`clock::Clock`] (time).

pub mod calendar;
pub mod clock;
pub mod compile;
pub mod daemon;
pub mod definition;
pub mod diagnostic;
pub mod journal;
#[cfg(test)]
mod log_capture;
pub mod plugin_host;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod validate;

pub mod cli;
