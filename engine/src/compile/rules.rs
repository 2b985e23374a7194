//! The Rhai sandbox: one shared engine with limits, helper functions, and evaluation.
//!
//! Rules have no I/O: no file or module access, no `eval`, no clock (time comes in as the
//! `now` variable, taken from the journal record, so replays are deterministic).

use super::rule_output::Ledger;
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
    /// What rules print, within budgets (see `rule_output`).
    output: Arc<Ledger>,
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
    /// The instance whose rule this is, whose output budget `print` draws on (None for a
    /// trigger's `when:` or input, which run before there is an instance).
    pub instance: Option<&'a str>,
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
        let mut engine = sandboxed_engine();
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
        let output = Arc::new(Ledger::default());
        // Output the log would not keep is not written, so it uses no budget.
        let ledger = output.clone();
        engine.on_print(move |s| {
            if tracing::enabled!(target: "casework::rule", tracing::Level::INFO) {
                ledger.line(s, |line| tracing::info!(target: "casework::rule", "{line}"));
            }
        });
        let ledger = output.clone();
        engine.on_debug(move |s, _, pos| {
            if tracing::enabled!(target: "casework::rule", tracing::Level::DEBUG) {
                ledger.line(
                    s,
                    |line| tracing::debug!(target: "casework::rule", ?pos, "{line}"),
                );
            }
        });
        super::helpers::register(&mut engine);
        let calendars = SharedCalendars::default();
        crate::calendar::functions::register(&mut engine, calendars.clone());
        crate::calendar::functions::register_sla(&mut engine, calendars.clone());
        Rules {
            engine,
            limits,
            calendars,
            output,
        }
    }

    /// An instance ended: its output budget is no longer needed.
    pub fn forget_instance(&self, instance: &str) {
        self.output.forget(instance);
    }

    /// Bytes and lines of rule output dropped by the budgets so far (for `/metrics`).
    pub fn output_dropped(&self) -> (u64, u64) {
        self.output.dropped()
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
        let budget = self.output.begin(b.instance);
        // A function the engine gives rules that panics (a bug of ours, on some input)
        // fails this step, not the instance's task and everything queued behind it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast)
        }));
        drop(budget);
        let result = match result {
            Ok(r) => r.map_err(|e| runtime_error(&e, &self.limits))?,
            Err(_) => {
                return Err(RuleError {
                    message: "a function this rule called failed inside Casework (a bug: please report it with the workflow); the step fails instead".into(),
                })
            }
        };
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
        EvalAltResult::ErrorFunctionNotFound(signature, pos) => {
            let at = match (pos.line(), pos.position()) {
                (Some(l), Some(c)) => format!(" (line {l}, column {c} of the rule)"),
                _ => String::new(),
            };
            format!(
                "unknown function `{signature}`{at}: rules can call the helpers in \
                 docs/workflows.md and Rhai's operators and string, list, map and math \
                 functions, but nothing that reads the clock, sleeps or does I/O \
                 (time comes in as `now`; to wait, use a `sleep:` step)"
            )
        }
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

/// A Rhai engine with only the packages rules need.
///
/// `Engine::new()` registers Rhai's whole standard library, which includes `sleep` (it
/// blocks the thread, and with it a tokio worker of the daemon) and `timestamp`/`elapsed`
/// (the system clock, which would make replays disagree). Both live in packages that also
/// hold harmless functions (`sleep` in `LanguageCorePackage`, with `parse_json`, `exit`
/// and `tag`), and Rhai cannot unregister one function; disabling the symbol would only
/// stop the parser, not `Fn("sleep").call(1)`. So the engine starts raw and gets the
/// packages below, none of which touches time, threads or I/O. What a rule can call is
/// pinned by `rhai_surface.txt` (see the test `the_functions_rules_can_call_are_the_listed_ones`).
fn sandboxed_engine() -> Engine {
    use rhai::packages::{
        ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage,
        BasicMapPackage, BasicMathPackage, BasicStringPackage, LogicPackage, MoreStringPackage,
        Package,
    };
    let mut engine = Engine::new_raw();
    // `Engine::new()` turns the interner on; rules build many small strings (`vars` keys).
    engine.set_max_strings_interned(256);
    for package in [
        ArithmeticPackage::new().as_shared_module(),
        LogicPackage::new().as_shared_module(),
        BasicStringPackage::new().as_shared_module(),
        MoreStringPackage::new().as_shared_module(),
        BasicIteratorPackage::new().as_shared_module(),
        BasicFnPackage::new().as_shared_module(),
        BasicMathPackage::new().as_shared_module(),
        BasicArrayPackage::new().as_shared_module(),
        BasicMapPackage::new().as_shared_module(),
    ] {
        engine.register_global_module(package);
    }
    engine
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

    #[test]
    fn a_function_that_panics_fails_the_rule_not_the_caller() {
        let mut rules = Rules::new(Limits::default());
        rules
            .engine
            .register_fn("boom", || -> rhai::INT { panic!("a bug in a helper") });
        let (input, none) = (json!({}), serde_json::Map::new());
        let run = |src: &str| {
            let ast = rules.compile_expression(src).unwrap();
            let b = Bindings {
                input: &input,
                vars: &none,
                locals: &none,
                now_ms: 0,
                instance: None,
            };
            rules.eval(&ast, &b)
        };
        let err = run("1 + boom()").unwrap_err();
        assert!(err.message.contains("failed inside Casework"), "{err:?}");
        // The engine still works afterwards.
        assert!(run("1 + 1").is_ok());
    }

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
                instance: None,
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

    /// Every function a rule can call, Rhai's and ours, is listed in `rhai_surface.txt`:
    /// a function that appears (a new package, a Rhai upgrade, a new helper) is a visible
    /// diff to review, not a silent widening of the sandbox. `CASEWORK_BLESS=1` rewrites
    /// the file. Keywords the parser handles itself (`print`, `debug`, `type_of`, `Fn`,
    /// `call`, `curry`, `is_def_var`, `is_def_fn`, `is_shared`) are not functions and are
    /// not listed.
    #[test]
    fn the_functions_rules_can_call_are_the_listed_ones() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/compile/rhai_surface.txt");
        let mut signatures: Vec<String> = Rules::shared()
            .engine
            .gen_fn_signatures(true)
            .iter()
            .map(|s| callable_signature(s))
            .collect();
        signatures.sort();
        signatures.dedup();
        let mut actual = String::from(SURFACE_HEADER);
        for s in &signatures {
            actual.push_str(s);
            actual.push('\n');
        }
        if std::env::var_os("CASEWORK_BLESS").is_some() {
            std::fs::write(path, &actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(path).unwrap_or_default();
        let listed: std::collections::BTreeSet<&str> =
            expected.lines().filter(|l| !l.starts_with('#')).collect();
        let callable: std::collections::BTreeSet<&str> =
            signatures.iter().map(String::as_str).collect();
        let added: Vec<_> = callable.difference(&listed).collect();
        let removed: Vec<_> = listed.difference(&callable).collect();
        assert!(
            added.is_empty() && removed.is_empty(),
            "the functions rules can call changed (review, then rerun with CASEWORK_BLESS=1)\n\
             callable but not listed: {added:#?}\nlisted but not callable: {removed:#?}"
        );
        for banned in ["sleep(", "timestamp(", "elapsed(", "parse_json(", "exit("] {
            assert!(
                !signatures.iter().any(|s| s.starts_with(banned)),
                "{banned} must not be callable from rules"
            );
        }
    }

    /// `contains(string: string, match_string: string) -> bool` as `contains(string, string)`:
    /// the name and parameter types are what a rule can call. Parameter names are
    /// documentation, and return types of our own functions print as Rust type names,
    /// which change between compiler versions.
    fn callable_signature(signature: &str) -> String {
        let signature = signature.split(" -> ").next().unwrap_or(signature);
        let Some((name, params)) = signature.split_once('(') else {
            return signature.to_string();
        };
        let params = params.strip_suffix(')').unwrap_or(params);
        let types: Vec<&str> = params
            .split(", ")
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once(": ").map_or(p, |(_, ty)| ty))
            .collect();
        format!("{name}({})", types.join(", "))
    }

    const SURFACE_HEADER: &str = "\
# Every function a Casework rule can call: Rhai's packages chosen in
# engine/src/compile/rules.rs (`sandboxed_engine`) plus our helpers, calendar and SLA
# functions. Checked by `the_functions_rules_can_call_are_the_listed_ones`; after an
# intended change, rerun it with CASEWORK_BLESS=1 and review the diff.
";

    #[test]
    fn rules_cannot_sleep_or_read_the_clock() {
        let err = run("sleep(1)").unwrap_err();
        assert_eq!(
            err.message,
            "unknown function `sleep (i64)` (line 1, column 1 of the rule): rules can call the \
             helpers in docs/workflows.md and Rhai's operators and string, list, map and math \
             functions, but nothing that reads the clock, sleeps or does I/O (time comes in as \
             `now`; to wait, use a `sleep:` step)"
        );
        for script in [
            "sleep(0.5)",
            "timestamp()",
            // Through a function pointer the parser never sees the name.
            "Fn(\"sleep\").call(1)",
            "call(Fn(\"timestamp\"))",
            "parse_json(\"{}\")",
        ] {
            let err = run(script).unwrap_err();
            assert!(
                err.message.starts_with("unknown function"),
                "{script}: {err}"
            );
        }
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
