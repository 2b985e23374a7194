//! Typed actions and the dispatcher that turns JSON in/out into calls.

use crate::{decode, Context, Error, Result};
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Serialize};

/// A plugin: a fixed list of actions.
///
/// Implement it on a unit struct and pass that struct to
/// [`export_plugin!`](crate::export_plugin). The list is rebuilt on every
/// call, so keep `actions` free of side effects.
pub trait Plugin {
    /// Every action this plugin offers, in the order `describe` lists them.
    fn actions() -> Vec<Action>;
}

type Handler = Box<dyn Fn(&[u8], &Context) -> Result<String>>;

/// One named operation: typed input, typed output, and the function between
/// them.
pub struct Action {
    name: &'static str,
    doc: &'static str,
    input_schema: fn() -> String,
    output_schema: fn() -> String,
    handler: Handler,
}

impl Action {
    /// Declares an action.
    ///
    /// `name` is what workflows write after the plugin name
    /// (`call: paging.trigger`); use `snake_case`. The input and output
    /// schemas are derived from `I` and `O`, so doc comments and serde
    /// attributes on those types become the published contract. Mark
    /// sensitive input fields with [`Sensitive`](crate::Sensitive).
    ///
    /// ```
    /// use casework_sdk::{Action, Context, Error, Result};
    /// use schemars::JsonSchema;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Deserialize, JsonSchema)]
    /// struct Input {
    ///     /// Amount in minor units (cents).
    ///     amount: u64,
    /// }
    ///
    /// #[derive(Serialize, JsonSchema)]
    /// struct Output {
    ///     doubled: u64,
    /// }
    ///
    /// fn double(input: Input, _ctx: &Context) -> Result<Output> {
    ///     let doubled = input
    ///         .amount
    ///         .checked_mul(2)
    ///         .ok_or_else(|| Error::invalid_input("amount too large"))?;
    ///     Ok(Output { doubled })
    /// }
    ///
    /// let action = Action::new("double", "Doubles an amount.", double);
    /// assert_eq!(action.info().name, "double");
    /// assert!(action.info().input_schema.contains("minor units"));
    /// ```
    pub fn new<I, O, F>(name: &'static str, doc: &'static str, handler: F) -> Self
    where
        I: DeserializeOwned + JsonSchema,
        O: Serialize + JsonSchema,
        F: Fn(I, &Context) -> Result<O> + 'static,
    {
        Self {
            name,
            doc,
            input_schema: schema_of::<I>,
            output_schema: schema_of::<O>,
            handler: Box::new(move |input, ctx| {
                let input: I = decode::json(input).map_err(|err| {
                    Error::invalid_input(err.describe(&format!("invalid input for `{name}`")))
                })?;
                let output = handler(input, ctx)?;
                serde_json::to_string(&output).map_err(|err| {
                    Error::permanent(
                        "internal",
                        format!("could not encode the output of `{name}`: {err}"),
                    )
                })
            }),
        }
    }

    /// The action's name, docs and schemas as the host sees them.
    pub fn info(&self) -> ActionInfo {
        ActionInfo {
            name: self.name.to_string(),
            doc: self.doc.to_string(),
            input_schema: (self.input_schema)(),
            output_schema: (self.output_schema)(),
        }
    }

    /// The action's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// What `describe` reports for one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionInfo {
    /// Name used in workflows.
    pub name: String,
    /// Human description.
    pub doc: String,
    /// JSON Schema (2020-12) of the input, serialized.
    pub input_schema: String,
    /// JSON Schema (2020-12) of the output, serialized.
    pub output_schema: String,
}

fn schema_of<T: JsonSchema>() -> String {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    // A schema is a JSON value with string keys: serializing cannot fail.
    serde_json::to_string(&schema).unwrap_or_else(|_| "true".to_string())
}

/// All actions of `P`, as `describe` returns them.
pub(crate) fn describe<P: Plugin>() -> Vec<ActionInfo> {
    P::actions().iter().map(Action::info).collect()
}

/// Runs `action` of `P` on a JSON input; the one entry point used both by the
/// component export and by the native test host.
pub(crate) fn invoke<P: Plugin>(action: &str, input: &[u8], ctx: &Context) -> Result<String> {
    let actions = P::actions();
    match actions.iter().find(|a| a.name == action) {
        Some(found) => (found.handler)(input, ctx),
        None => {
            let known: Vec<&str> = actions.iter().map(|a| a.name).collect();
            Err(Error::permanent(
                "unknown_action",
                format!(
                    "no action `{action}`; this plugin has: {}",
                    known.join(", ")
                ),
            ))
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub mod export {
    //! Conversions between the SDK types and the generated export types.
    use super::Plugin;
    use crate::__bindings::exports::casework::plugin::actions as wit;
    use crate::Context;

    pub fn describe<P: Plugin>() -> Vec<wit::ActionInfo> {
        super::describe::<P>()
            .into_iter()
            .map(|a| wit::ActionInfo {
                name: a.name,
                doc: a.doc,
                input_schema: a.input_schema,
                output_schema: a.output_schema,
            })
            .collect()
    }

    pub fn invoke<P: Plugin>(
        action: String,
        input: String,
        ctx: wit::Context,
    ) -> Result<String, wit::PluginError> {
        let ctx = Context {
            instance_id: ctx.instance_id,
            step_id: ctx.step_id,
            attempt: ctx.attempt,
            idempotency_key: ctx.idempotency_key,
        };
        super::invoke::<P>(&action, input.as_bytes(), &ctx).map_err(|err| wit::PluginError {
            code: err.code().to_string(),
            message: err.message().to_string(),
            retryable: err.is_retryable(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct AddInput {
        a: u32,
        b: u32,
    }

    #[derive(Serialize, JsonSchema)]
    struct AddOutput {
        sum: u64,
        attempt: u32,
    }

    fn add(input: AddInput, ctx: &Context) -> Result<AddOutput> {
        Ok(AddOutput {
            sum: u64::from(input.a) + u64::from(input.b),
            attempt: ctx.attempt,
        })
    }

    fn refuse(_: AddInput, _: &Context) -> Result<AddOutput> {
        Err(Error::retryable("busy", "try later"))
    }

    struct Calc;
    impl Plugin for Calc {
        fn actions() -> Vec<Action> {
            vec![
                Action::new("add", "Adds.", add),
                Action::new("refuse", "Always busy.", refuse),
            ]
        }
    }

    fn ctx() -> Context {
        Context::new("i", "s", 3, "k")
    }

    #[test]
    fn dispatches_by_name_and_passes_the_context() {
        let out = invoke::<Calc>("add", br#"{"a": 2, "b": 40}"#, &ctx()).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            json!({"sum": 42, "attempt": 3})
        );
    }

    #[test]
    fn unknown_action_lists_the_known_ones() {
        let err = invoke::<Calc>("sub", b"{}", &ctx()).unwrap_err();
        assert_eq!(err.code(), "unknown_action");
        assert_eq!(
            err.message(),
            "no action `sub`; this plugin has: add, refuse"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn bad_input_is_a_permanent_invalid_input() {
        let err = invoke::<Calc>("add", br#"{"a": 2}"#, &ctx()).unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert_eq!(err.message(), "invalid input for `add`: missing field `b`");
        assert!(!err.is_retryable());
    }

    #[test]
    fn handler_errors_pass_through_unchanged() {
        let err = invoke::<Calc>("refuse", br#"{"a": 1, "b": 1}"#, &ctx()).unwrap_err();
        assert_eq!(err, Error::retryable("busy", "try later"));
    }

    #[test]
    fn describe_publishes_2020_12_schemas() {
        let infos = describe::<Calc>();
        assert_eq!(
            infos.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["add", "refuse"]
        );
        let input: serde_json::Value = serde_json::from_str(&infos[0].input_schema).unwrap();
        assert_eq!(
            input["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(input["required"], json!(["a", "b"]));
        assert_eq!(input["additionalProperties"], json!(false));
        let output: serde_json::Value = serde_json::from_str(&infos[0].output_schema).unwrap();
        assert_eq!(output["properties"]["sum"]["type"], "integer");
    }
}
