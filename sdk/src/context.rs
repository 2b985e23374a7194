//! Where an invocation sits in the engine: instance, step, attempt and the
//! idempotency key.

/// Passed to every action alongside its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The workflow instance that runs this step.
    pub instance_id: String,
    /// The step inside the workflow.
    pub step_id: String,
    /// 1 on the first try, incremented on every retry of the same step.
    pub attempt: u32,
    /// The same on every retry of this step in this instance. Send it to
    /// providers that deduplicate (for example as `Idempotency-Key`) so a
    /// retried call whose first outcome was unknown cannot act twice.
    pub idempotency_key: String,
}

impl Context {
    /// Builds a context; the engine does this for real invocations, tests do
    /// it by hand.
    pub fn new(
        instance_id: impl Into<String>,
        step_id: impl Into<String>,
        attempt: u32,
        idempotency_key: impl Into<String>,
    ) -> Self {
        Self {
            instance_id: instance_id.into(),
            step_id: step_id.into(),
            attempt,
            idempotency_key: idempotency_key.into(),
        }
    }
}
