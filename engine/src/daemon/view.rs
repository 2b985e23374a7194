//! What users see of an instance (`casework inspect`, `GET /v1/instances/{id}`), with
//! sensitive values redacted.

use crate::compile::CompiledWorkflow;
use crate::runtime::{Instance, Record};
use serde::Serialize;
use serde_json::Value;

pub const REDACTED: &str = "[redacted]";

#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub status: String,
    pub current: Vec<CurrentStep>,
    pub input: Value,
    pub vars: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::runtime::StepError>,
    pub journal: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct CurrentStep {
    pub step: String,
    pub doing: &'static str,
}

/// Build the view of an instance from its journal.
pub fn instance_view(
    id: &str,
    status: &str,
    wf: &CompiledWorkflow,
    journal: &[Record],
) -> InstanceView {
    let inst = Instance::replay(id, wf, journal);
    let secrets = sensitive_values(wf, inst.input());
    let redact = |v: Value| redact(v, &secrets);
    InstanceView {
        id: id.to_string(),
        workflow: inst.workflow().to_string(),
        version: inst.version(),
        status: status.to_string(),
        current: inst
            .current_steps(wf)
            .into_iter()
            .map(|(_, step, doing)| CurrentStep { step, doing })
            .collect(),
        input: redact(inst.input().clone()),
        vars: redact(Value::Object(inst.vars().clone())),
        output: inst.output().cloned().map(redact),
        error: inst.error().cloned(),
        journal: journal
            .iter()
            .map(|r| redact(serde_json::to_value(r).unwrap_or(Value::Null)))
            .collect(),
    }
}

/// The values of inputs marked `sensitive: true` (strings and numbers worth hiding).
pub fn sensitive_values(wf: &CompiledWorkflow, input: &Value) -> Vec<String> {
    wf.sensitive_inputs()
        .filter_map(|name| match input.get(name)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
        .collect()
}

/// Replace every occurrence of a sensitive value, wherever it was copied to.
pub fn redact(v: Value, secrets: &[String]) -> Value {
    if secrets.is_empty() {
        return v;
    }
    match v {
        Value::String(s) => {
            let mut out = s;
            for secret in secrets {
                if out.contains(secret.as_str()) {
                    out = out.replace(secret.as_str(), REDACTED);
                }
            }
            Value::String(out)
        }
        Value::Number(n) if secrets.contains(&n.to_string()) => Value::String(REDACTED.into()),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|i| redact(i, secrets)).collect())
        }
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, redact(v, secrets)))
                .collect(),
        ),
        other => other,
    }
}
