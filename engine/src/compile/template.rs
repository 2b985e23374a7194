//! `${ expression }` templates that map variables into step inputs.
//!
//! A string that is exactly one `${...}` keeps the expression's type (an integer stays an
//! integer, a map stays a map); any other string containing `${...}` is text with the
//! values interpolated. `$${` writes a literal `${`.

use super::rules::{Bindings, RuleError, Rules, SyntaxError};
use crate::definition::yaml::{Node, Value as Y};
use rhai::AST;
use serde_json::Value;

#[derive(Clone, Debug)]
pub enum Template {
    Literal(Value),
    /// The whole string was one expression.
    Expr(Box<AST>),
    Text(Vec<Part>),
    List(Vec<Template>),
    Map(Vec<(String, Template)>),
}

#[derive(Clone, Debug)]
pub enum Part {
    Text(String),
    Expr(Box<AST>),
}

/// A template problem at a node, with the position inside the string.
#[derive(Debug)]
pub struct TemplateError {
    pub node_span: crate::diagnostic::Span,
    pub offset: u32,
    pub error: SyntaxError,
}

pub fn compile(rules: &Rules, node: &Node, errors: &mut Vec<TemplateError>) -> Template {
    match &node.value {
        Y::Str(s, _) => compile_str(rules, s, node, errors),
        Y::Seq(items) => Template::List(items.iter().map(|n| compile(rules, n, errors)).collect()),
        Y::Map(entries) => Template::Map(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), compile(rules, v, errors)))
                .collect(),
        ),
        _ => Template::Literal(node.to_json()),
    }
}

fn compile_str(rules: &Rules, s: &str, node: &Node, errors: &mut Vec<TemplateError>) -> Template {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    let mut offset = 0usize;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            text.push_str(&rest[..pos - 1]);
            text.push_str("${");
            offset += pos + 2;
            rest = &rest[pos + 2..];
            continue;
        }
        text.push_str(&rest[..pos]);
        let body_start = pos + 2;
        let Some(len) = closing_brace(&rest[body_start..]) else {
            errors.push(TemplateError {
                node_span: node.span,
                offset: (offset + pos) as u32,
                error: SyntaxError {
                    line: 1,
                    col: 1,
                    message: "`${` is never closed with `}`".into(),
                },
            });
            return Template::Literal(Value::String(s.to_string()));
        };
        let expr = &rest[body_start..body_start + len];
        match rules.compile_expression(expr) {
            Ok(ast) => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Expr(Box::new(ast)));
            }
            Err(error) => errors.push(TemplateError {
                node_span: node.span,
                offset: (offset + body_start) as u32,
                error,
            }),
        }
        offset += body_start + len + 1;
        rest = &rest[body_start + len + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    match parts.len() {
        0 => Template::Literal(Value::String(String::new())),
        1 => match parts.pop().expect("one part") {
            Part::Expr(ast) => Template::Expr(ast),
            Part::Text(t) => Template::Literal(Value::String(t)),
        },
        _ => Template::Text(parts),
    }
}

/// Length of the expression up to its matching `}` (braces inside strings and maps count).
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => in_str = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

impl Template {
    /// Fill in the template's expressions.
    pub fn render(&self, rules: &Rules, b: &Bindings<'_>) -> Result<Value, RuleError> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Expr(ast) => rules.eval(ast, b)?.0,
            Template::Text(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(ast) => match rules.eval(ast, b)?.0 {
                            Value::String(s) => out.push_str(&s),
                            Value::Null => {}
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
            Template::List(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render(rules, b))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(rules, b)?)))
                    .collect::<Result<_, RuleError>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::yaml;
    use serde_json::json;

    fn render(src: &str) -> Value {
        let rules = Rules::shared();
        let node = yaml::parse(src).unwrap();
        let mut errors = Vec::new();
        let t = compile(&rules, &node, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let input = json!({"amount_minor": 1999, "order": "o_1"});
        let mut vars = serde_json::Map::new();
        vars.insert("refund".into(), json!({"id": "re_9"}));
        t.render(
            &rules,
            &Bindings {
                input: &input,
                vars: &vars,
                locals: &serde_json::Map::new(),
                now_ms: 0,
                instance: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn whole_expression_keeps_type() {
        assert_eq!(
            render("amount: ${input.amount_minor}"),
            json!({"amount": 1999})
        );
        assert_eq!(render("r: '${vars.refund}'"), json!({"r": {"id": "re_9"}}));
    }

    #[test]
    fn text_interpolates() {
        assert_eq!(
            render("msg: 'Refund ${vars.refund.id} for ${input.order}'"),
            json!({"msg": "Refund re_9 for o_1"})
        );
        assert_eq!(render("msg: 'cost $${x}'"), json!({"msg": "cost ${x}"}));
        assert_eq!(render("m: '${ #{a: 1}.a }'"), json!({"m": 1}));
    }

    #[test]
    fn bad_expression_is_reported_with_offset() {
        let node = yaml::parse("m: 'hello ${ 1 + }'").unwrap();
        let mut errors = Vec::new();
        compile(&Rules::shared(), node.get("m").unwrap(), &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].offset, 8);
    }
}
