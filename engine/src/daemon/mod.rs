//! The long-running side: the driver that carries out effects, the HTTP API, `serve`.

pub mod auth;
pub mod config;
pub mod console;
pub mod driver;
pub mod http;
pub mod metrics;
pub mod process;
pub mod registry;
pub mod reload;
pub mod report;
pub mod selection;
pub mod triggers;
pub mod view;
pub mod window;

pub use driver::Driver;
