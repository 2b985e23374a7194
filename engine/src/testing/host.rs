//! The plugin host of a workflow test: answers calls from the test's `mocks:`, in order.

use super::expect::matches;
use super::model::{Answer, Mock};
use crate::clock::Clock;
use crate::compile::{CompiledWorkflow, Kind, DEFAULT_CALL_TIMEOUT_MS};
use crate::plugin_host::{CallContext, CallFuture, PluginError, PluginHost};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Answers each call with the first mock whose `call` and `when` match and whose `times`
/// is not used up. A call no mock answers fails with `plugin_unavailable` (not retryable)
/// and is remembered, so the report can say which mock is missing.
pub struct ScriptedHost {
    mocks: Vec<Mock>,
    used: Mutex<Vec<u32>>,
    clock: Arc<dyn Clock>,
    /// `timeout:` of each call step, by (`plugin.action`, step id).
    timeouts: HashMap<(String, String), u64>,
    unanswered: Mutex<Vec<(String, Value)>>,
}

impl ScriptedHost {
    /// `workflows` are searched for the `timeout:` of the calling step: a mocked timeout
    /// moves the virtual clock on by that much, as a real one would take that long.
    pub fn new(mocks: Vec<Mock>, clock: Arc<dyn Clock>, workflows: &[&CompiledWorkflow]) -> Self {
        let mut timeouts = HashMap::new();
        for wf in workflows {
            for s in &wf.steps {
                if let Kind::Call {
                    plugin,
                    action,
                    timeout_ms,
                    ..
                } = &s.kind
                {
                    timeouts
                        .entry((format!("{plugin}.{action}"), s.id.clone()))
                        .or_insert(*timeout_ms);
                }
            }
        }
        ScriptedHost {
            used: Mutex::new(vec![0; mocks.len()]),
            mocks,
            clock,
            timeouts,
            unanswered: Mutex::new(Vec::new()),
        }
    }

    /// Calls no mock answered: (`plugin.action`, input).
    pub fn unanswered(&self) -> Vec<(String, Value)> {
        self.unanswered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn answer(&self, target: &str, input: &Value, ctx: &CallContext) -> Result<Value, PluginError> {
        let chosen = {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            let found = self.mocks.iter().enumerate().position(|(i, m)| {
                m.target == target
                    && m.when.as_ref().is_none_or(|w| matches(w, input))
                    && m.times.is_none_or(|t| used[i] < t)
            });
            if let Some(i) = found {
                used[i] += 1;
            }
            found.map(|i| self.mocks[i].answer.clone())
        };
        match chosen {
            Some(Answer::Reply(v)) => Ok(v),
            Some(Answer::Error {
                code,
                message,
                retryable,
            }) => Err(PluginError {
                code,
                message,
                retryable,
            }),
            Some(Answer::Timeout) => {
                let timeout_ms = self
                    .timeouts
                    .get(&(target.to_string(), ctx.step_id.clone()))
                    .copied()
                    .unwrap_or(DEFAULT_CALL_TIMEOUT_MS);
                self.clock
                    .advance_to(self.clock.now_ms() + timeout_ms as i64);
                // The same error the driver gives a call that exceeds its timeout.
                Err(PluginError {
                    code: "timeout".into(),
                    message: format!("`{target}` did not answer within {timeout_ms} ms"),
                    retryable: true,
                })
            }
            None => {
                // Shown in the test's failure: a write-only value as every view shows it.
                let mut shown = input.clone();
                hide(&mut shown, &ctx.scrub);
                self.unanswered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((target.to_string(), shown));
                Err(PluginError {
                    code: "plugin_unavailable".into(),
                    message: format!(
                        "no mock in this test answers `{target}` (attempt {}); add one under `mocks:`",
                        ctx.attempt
                    ),
                    retryable: false,
                })
            }
        }
    }
}

/// Replace each string of `v` that is one of `values` (opened write-only values).
fn hide(v: &mut Value, values: &[String]) {
    match v {
        Value::String(s) if values.contains(s) => {
            *s = crate::daemon::driver::write_only::SHOWN_AS.into()
        }
        Value::Array(items) => items.iter_mut().for_each(|i| hide(i, values)),
        Value::Object(m) => m.values_mut().for_each(|i| hide(i, values)),
        _ => {}
    }
}

impl PluginHost for ScriptedHost {
    fn call<'a>(
        &'a self,
        plugin: &'a str,
        action: &'a str,
        input: Value,
        ctx: CallContext,
    ) -> CallFuture<'a> {
        let result = self.answer(&format!("{plugin}.{action}"), &input, &ctx);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use serde_json::json;

    fn ctx(attempt: u32) -> CallContext {
        CallContext {
            scrub: Vec::new(),
            instance_id: "i".into(),
            step_id: "pay".into(),
            attempt,
            idempotency_key: "i:pay:1".into(),
        }
    }

    #[test]
    fn times_and_when_script_retries() {
        let mock = |when: Option<Value>, answer, times| Mock {
            span: Default::default(),
            target: "payments.refund".into(),
            when,
            answer,
            times,
        };
        let clock = Arc::new(ManualClock::new(0));
        let host = ScriptedHost::new(
            vec![
                mock(
                    Some(json!({"amount": 1})),
                    Answer::Reply(json!("one")),
                    None,
                ),
                mock(None, Answer::Timeout, Some(2)),
                mock(None, Answer::Reply(json!("ok")), None),
            ],
            clock.clone(),
            &[],
        );
        let input = json!({"amount": 5});
        let a1 = host.answer("payments.refund", &input, &ctx(1)).unwrap_err();
        assert_eq!((a1.code.as_str(), a1.retryable), ("timeout", true));
        assert_eq!(clock.now_ms(), DEFAULT_CALL_TIMEOUT_MS as i64);
        assert!(host.answer("payments.refund", &input, &ctx(2)).is_err());
        assert_eq!(
            host.answer("payments.refund", &input, &ctx(3)),
            Ok(json!("ok"))
        );
        assert_eq!(
            host.answer("payments.refund", &json!({"amount": 1}), &ctx(1)),
            Ok(json!("one"))
        );
        let none = host.answer("crm.note", &input, &ctx(1)).unwrap_err();
        assert_eq!(none.code, "plugin_unavailable");
        assert_eq!(host.unanswered().len(), 1);

        // An opened write-only value is not shown in what the failure lists.
        let mut opened = ctx(1);
        opened.scrub = vec!["493817".into()];
        let code = json!({"code": "493817", "to": "ann@example.com"});
        assert!(host.answer("identity.check_code", &code, &opened).is_err());
        assert_eq!(
            host.unanswered()[1].1,
            json!({"code": "[write-only]", "to": "ann@example.com"})
        );
    }
}
