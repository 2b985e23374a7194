//! A wrapper for input values that must never be echoed, logged or journaled.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

/// An input value such as a one-time code or a password.
///
/// It deserializes like `T`, but it does not implement `Serialize` (so it
/// cannot end up in an output), its `Debug` prints `<redacted>`, and its
/// schema carries `"writeOnly": true` and `"x-casework-sensitive": true`,
/// which tell the host to redact the field from its journal and logs.
///
/// ```
/// use casework_sdk::Sensitive;
/// use serde::Deserialize;
///
/// #[derive(Debug, Deserialize)]
/// struct Check {
///     code: Sensitive<String>,
/// }
///
/// let check: Check = serde_json::from_str(r#"{"code": "492039"}"#).unwrap();
/// assert_eq!(check.code.expose(), "492039");
/// assert_eq!(format!("{check:?}"), "Check { code: <redacted> }");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value, for the one place that needs it (a comparison, a request
    /// body to the provider).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sensitive<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Sensitive)
    }
}

impl<T: JsonSchema> JsonSchema for Sensitive<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Sensitive_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = generator.subschema_for::<T>();
        schema.insert("writeOnly".into(), true.into());
        schema.insert("x-casework-sensitive".into(), true.into());
        schema
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Login {
        user: String,
        password: Sensitive<String>,
    }

    #[test]
    fn schema_marks_only_the_sensitive_field() {
        let schema = serde_json::to_value(schemars::schema_for!(Login)).unwrap();
        assert_eq!(
            schema["properties"]["password"],
            json!({"type": "string", "writeOnly": true, "x-casework-sensitive": true})
        );
        assert_eq!(schema["properties"]["user"], json!({"type": "string"}));
    }
}
