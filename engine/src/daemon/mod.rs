//! The long-running side: the driver that carries out effects, the HTTP API, `serve`.

pub mod driver;
pub mod http;
pub mod registry;
pub mod reload;
pub mod report;
pub mod triggers;
pub mod view;

pub use driver::Driver;
