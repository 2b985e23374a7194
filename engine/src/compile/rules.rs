//! The Rhai sandbox: one shared engine with limits, helper functions, and evaluation.
//!
//! Rules have no I/O: no file or module access, no `eval`, no clock (time comes in as the
//! `now` variable, taken from the journal record, so replays are deterministic).

use crate::calendar::{Calendars, SharedCalendars};
use crate::diagnostic::{BlockStart, Span};
use chrono::{DateTime, SecondsFormat, Utc};
use rhai::{Dynamic, Engine, EvalAltResult, Map, Scope, AST};
use std::sync::{Arc, OnceLock};

/// Budgets a single evaluation may not exceed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_bytes: usize,
    pub max_array_len: usize,
    pub max_map_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 200_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_bytes: 64 * 1024,
            max_array_len: 10_000,
            max_map_len: 10_000,
        }
    }
}

/// A rule failed while running.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub message: String,
}

/// A script that did not compile, with its position inside the script (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl SyntaxError {
    /// Where this error is in the YAML file, given where the script starts.
    pub fn span_in_file(&self, start: Span, block: BlockStart) -> Span {
        start.within(block, self.line, self.col)
    }
}

/// The shared, sandboxed Rhai engine.
pub struct Rules {
    engine: Engine,
    limits: Limits,
    /// Business calendars that rules name, e.g. `business_add("support-hours", now, "4h")`.
    calendars: SharedCalendars,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("limits", &self.limits)
            .finish()
    }
}

/// The values a rule sees.
pub struct Bindings<'a> {
    pub input: &'a serde_json::Value,
    pub vars: &'a serde_json::Map<String, serde_json::Value>,
    /// Frame-local names (a foreach item, its index).
    pub locals: &'a serde_json::Map<String, serde_json::Value>,
    pub now_ms: i64,
}

impl Rules {
    /// The process-wide engine with default limits.
    pub fn shared() -> Arc<Rules> {
        static SHARED: OnceLock<Arc<Rules>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(Rules::new(Limits::default())))
            .clone()
    }

    pub fn new(limits: Limits) -> Self {
        let mut engine = Engine::new();
        engine.set_max_operations(limits.max_operations);
        engine.set_max_call_levels(limits.max_call_levels);
        engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth / 2);
        engine.set_max_string_size(limits.max_string_bytes);
        engine.set_max_array_size(limits.max_array_len);
        engine.set_max_map_size(limits.max_map_len);
        engine.set_max_modules(0);
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        engine.disable_symbol("import");
        engine.on_print(|s| tracing::info!(target: "casework::rule", "{s}"));
        engine.on_debug(|s, _, pos| tracing::debug!(target: "casework::rule", ?pos, "{s}"));
        super::helpers::register(&mut engine);
        let calendars = SharedCalendars::default();
        crate::calendar::functions::register(&mut engine, calendars.clone());
        crate::calendar::functions::register_sla(&mut engine, calendars.clone());
        Rules {
            engine,
            limits,
            calendars,
        }
    }

    /// Replace the calendars rules can name (done when calendar files are loaded).
    pub fn install_calendars(&self, calendars: Calendars) {
        self.calendars.replace(calendars);
    }

    pub fn calendars(&self) -> Arc<Calendars> {
        self.calendars.get()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compile a script of statements (a `rule:` step).
    pub fn compile_script(&self, text: &str) -> Result<AST, SyntaxError> {
        self.engine.compile(text).map_err(syntax_error)
    }

    /// Compile a single expression (conditions, keys, templates).
    pub fn compile_expression(&self, text: &str) -> Result<AST, SyntaxError> {
        self.engine.compile_expression(text).map_err(syntax_error)
    }

    /// Evaluate `ast`, returning its value and the (possibly changed) `vars`.
    pub fn eval(
        &self,
        ast: &AST,
        b: &Bindings<'_>,
    ) -> Result<
        (
            serde_json::Value,
            serde_json::Map<String, serde_json::Value>,
        ),
        RuleError,
    > {
        let mut scope = Scope::new();
        scope.push_constant("input", to_dynamic(b.input)?);
        scope.push(
            "vars",
            to_dynamic(&serde_json::Value::Object(b.vars.clone()))?,
        );
        scope.push_constant("now", Dynamic::from(format_ms(b.now_ms)));
        for (k, v) in b.locals {
            scope.push_constant(k.as_str(), to_dynamic(v)?);
        }
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, ast)
            .map_err(|e| runtime_error(&e, &self.limits))?;
        let vars_dyn = scope
            .get_value::<Dynamic>("vars")
            .unwrap_or_else(|| Dynamic::from(Map::new()));
        let vars = match from_dynamic(&vars_dyn)? {
            serde_json::Value::Object(m) => m,
            _ => {
                return Err(RuleError {
                    message:
                        "`vars` must stay a map; assign to its fields instead (vars.name = ...)"
                            .into(),
                })
            }
        };
        Ok((from_dynamic(&result)?, vars))
    }
}

fn to_dynamic(v: &serde_json::Value) -> Result<Dynamic, RuleError> {
    rhai::serde::to_dynamic(v).map_err(|e| RuleError {
        message: format!("cannot pass value to rule: {e}"),
    })
}

fn from_dynamic(d: &Dynamic) -> Result<serde_json::Value, RuleError> {
    if d.is_unit() {
        return Ok(serde_json::Value::Null);
    }
    rhai::serde::from_dynamic(d).map_err(|e| RuleError {
        message: format!("rule produced a value that cannot be stored: {e}"),
    })
}

fn syntax_error(e: rhai::ParseError) -> SyntaxError {
    let pos = e.position();
    SyntaxError {
        line: pos.line().unwrap_or(1) as u32,
        col: pos.position().unwrap_or(1) as u32,
        message: e.err_type().to_string(),
    }
}

fn runtime_error(e: &EvalAltResult, limits: &Limits) -> RuleError {
    let message = match e {
        EvalAltResult::ErrorTooManyOperations(_) => format!(
            "rule stopped after {} operations (an endless loop?); simplify it or split it into steps",
            limits.max_operations
        ),
        EvalAltResult::ErrorStackOverflow(_) => format!(
            "rule nested function calls deeper than {} levels (endless recursion?)",
            limits.max_call_levels
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => format!(
            "rule built a {what} larger than allowed (strings {} bytes, lists {} items, maps {} keys)",
            limits.max_string_bytes, limits.max_array_len, limits.max_map_len
        ),
        other => {
            let pos = other.position();
            match (pos.line(), pos.position()) {
                (Some(l), Some(c)) => format!("{} (line {l}, column {c} of the rule)", strip_pos(other)),
                _ => strip_pos(other),
            }
        }
    };
    RuleError { message }
}

fn strip_pos(e: &EvalAltResult) -> String {
    let text = e.to_string();
    // Rhai appends " (line L, position C)"; the caller reports the position itself.
    match text.rfind(" (line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC text, the form instants take in variables.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str) -> Result<serde_json::Value, RuleError> {
        run_with_vars(src).map(|(v, _)| v)
    }

    fn run_with_vars(
        src: &str,
    ) -> Result<
        (
            serde_json::Value,
            serde_json::Map<String, serde_json::Value>,
        ),
        RuleError,
    > {
        let rules = Rules::shared();
        let ast = rules.compile_script(src).expect("compiles");
        let input = json!({"amount_minor": 25000});
        rules.eval(
            &ast,
            &Bindings {
                input: &input,
                vars: &serde_json::Map::new(),
                locals: &serde_json::Map::new(),
                now_ms: 0,
            },
        )
    }

    #[test]
    fn infinite_loop_is_stopped() {
        let err = run("loop { }").unwrap_err();
        assert!(
            err.message.contains("stopped after 200000 operations"),
            "{err}"
        );
    }

    #[test]
    fn deep_recursion_is_stopped() {
        let err = run("fn f(x) { f(x + 1) } f(0)").unwrap_err();
        assert!(err.message.contains("deeper than 32 levels"), "{err}");
    }

    #[test]
    fn huge_string_is_stopped() {
        let err = run("let s = \"x\"; loop { s += s; }").unwrap_err();
        assert!(err.message.contains("larger than allowed"), "{err}");
    }

    #[test]
    fn no_eval_and_no_imports() {
        let rules = Rules::shared();
        assert!(rules.compile_script("eval(\"1\")").is_err());
        assert!(rules.compile_script("import \"x\" as y;").is_err());
    }

    #[test]
    fn writes_to_vars_come_back() {
        let (v, vars) =
            run_with_vars("vars.approved = input.amount_minor <= 20000; \"next_step\"").unwrap();
        assert_eq!(v, json!("next_step"));
        assert_eq!(vars["approved"], json!(false));
    }

    #[test]
    fn syntax_error_position_maps_into_yaml() {
        let err = Rules::shared()
            .compile_script("let x = 1;\nlet = 2;")
            .unwrap_err();
        assert_eq!(err.line, 2);
        let span = err.span_in_file(Span::new(10, 11), BlockStart::NextLine { indent: 6 });
        assert_eq!(span.line, 11);
        assert_eq!(span.col, 6 + err.col);
    }
}
