//! Casework plugin SDK: write an integration as plain Rust, get a sandboxed
//! WebAssembly component for the Casework engine.
//!
//! A plugin is a set of typed actions. Each action takes a JSON input, gets a
//! [`Context`] (instance, step, attempt, idempotency key) and returns a JSON
//! output or an [`Error`] that says whether the engine may retry. Plugins
//! reach the outside world only through the host: [`config`], [`secrets`],
//! [`http`], [`clock`], [`random`] and [`log`].
//!
//! ```
//! use casework_sdk::{Action, Context, Plugin, Result};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct GreetInput {
//!     name: String,
//! }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct GreetOutput {
//!     greeting: String,
//! }
//!
//! fn greet(input: GreetInput, _ctx: &Context) -> Result<GreetOutput> {
//!     Ok(GreetOutput { greeting: format!("Hello, {}!", input.name) })
//! }
//!
//! pub struct Hello;
//!
//! impl Plugin for Hello {
//!     fn actions() -> Vec<Action> {
//!         vec![Action::new("greet", "Greets someone by name.", greet)]
//!     }
//! }
//!
//! casework_sdk::export_plugin!(Hello);
//! # fn main() {
//! # let host = casework_sdk::testing::FakeHost::new();
//! # let out = host.invoke::<Hello>("greet", &serde_json::json!({"name": "Ada"})).unwrap();
//! # assert_eq!(out["greeting"], "Hello, Ada!");
//! # }
//! ```

// Lets generated bindings name this crate by the path plugins use.
extern crate self as casework_sdk;

mod action;
pub mod clock;
pub mod config;
mod context;
mod decode;
mod error;
mod host;
pub mod http;
pub mod log;
pub mod random;
pub mod secrets;
mod sensitive;

#[cfg(not(target_arch = "wasm32"))]
pub mod manifest;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use action::{Action, ActionInfo, Plugin};
pub use context::Context;
pub use error::{Error, Result};
pub use sensitive::Sensitive;

/// Re-exported so plugins and the SDK agree on one version of the schema
/// traits; plugins still list `schemars` in their own dependencies because the
/// derive macro refers to `::schemars`.
pub use schemars;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __bindings {
    //! Generated component bindings; plugin code never names these.
    wit_bindgen::generate!({
        path: "wit",
        world: "integration",
        pub_export_macro: true,
        export_macro_name: "__export_integration",
        default_bindings_module: "::casework_sdk::__bindings",
        runtime_path: "::casework_sdk::__bindings::__wit_bindgen::rt",
    });

    #[doc(hidden)]
    pub use wit_bindgen as __wit_bindgen;
}

#[doc(hidden)]
pub mod __rt {
    //! Glue called by [`export_plugin!`](crate::export_plugin); not a public API.
    #[cfg(target_arch = "wasm32")]
    pub use crate::action::export::{describe, invoke};
}

/// Wires a [`Plugin`] to the component's exports.
///
/// Call it once, at the crate root of the plugin's `cdylib`. On native targets
/// it expands to nothing, so the same crate also builds for unit tests.
///
/// ```
/// # use casework_sdk::{Action, Plugin};
/// pub struct Noop;
/// impl Plugin for Noop {
///     fn actions() -> Vec<Action> {
///         Vec::new()
///     }
/// }
/// casework_sdk::export_plugin!(Noop);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__bindings::exports::casework::plugin::actions as __actions;

            struct __CaseworkGuest;

            impl __actions::Guest for __CaseworkGuest {
                fn describe() -> ::std::vec::Vec<__actions::ActionInfo> {
                    $crate::__rt::describe::<$plugin>()
                }

                fn invoke(
                    action: ::std::string::String,
                    input: ::std::string::String,
                    ctx: __actions::Context,
                ) -> ::std::result::Result<::std::string::String, __actions::PluginError> {
                    $crate::__rt::invoke::<$plugin>(action, input, ctx)
                }
            }

            $crate::__bindings::__export_integration!(__CaseworkGuest with_types_in $crate::__bindings);
        };
    };
}
