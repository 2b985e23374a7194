//! A YAML tree that remembers where every node came from, so diagnostics can point at it.
//!
//! serde-based YAML loaders drop positions after parsing; support-ops authors need
//! `file:line:col` for every problem, so the workflow reader walks this tree instead.

use crate::diagnostic::{did_you_mean, BlockStart, Diagnostic, Span};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML node with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string, with where its text starts (for mapping script errors into the file).
    Str(String, BlockStart),
    Seq(Vec<Node>),
    /// Keys keep their own positions, for "unknown field" diagnostics.
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

/// A YAML syntax error with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
}

/// Limits so a hostile or accidental file cannot exhaust memory while loading.
const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 200_000;

impl Node {
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(..) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// Convert to JSON for data that is passed through (e.g. inputs, canned outputs).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s, _) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Parse one YAML document. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        stack: Vec::new(),
        root: None,
        nodes: 0,
        error: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        span: span_of(e.marker()),
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        span: Span::new(1, 1),
        value: Value::Null,
    }))
}

fn span_of(m: &Marker) -> Span {
    // yaml-rust2 lines are 1-based and columns 0-based.
    Span::new(m.line() as u32, m.col() as u32 + 1)
}

enum Frame {
    Seq(Span, Vec<Node>),
    Map(Span, Vec<(Key, Node)>, Option<Key>),
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    nodes: usize,
    error: Option<SyntaxError>,
    documents: usize,
}

impl Builder {
    fn fail(&mut self, span: Span, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                span,
                message: message.into(),
            });
        }
    }

    fn push_node(&mut self, node: Node) {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.fail(node.span, format!("file has more than {MAX_NODES} values"));
            return;
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    let name = match node.value {
                        Value::Str(s, _) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".into(),
                        _ => {
                            let span = node.span;
                            self.fail(span, "a mapping key must be a plain name");
                            return;
                        }
                    };
                    if entries.iter().any(|(k, _)| k.name == name) {
                        let span = node.span;
                        self.fail(span, format!("duplicate key `{name}`"));
                        return;
                    }
                    *pending = Some(Key {
                        name,
                        span: node.span,
                    });
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let span = span_of(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(
                        span,
                        "a workflow file holds one YAML document; remove the second `---`",
                    );
                }
            }
            Event::Alias(_) => self.fail(
                span,
                "YAML aliases (`*name`) are not supported; write the value out",
            ),
            Event::Scalar(text, style, _, _) => {
                let value = match style {
                    TScalarStyle::Plain => plain_scalar(text),
                    // The mark of a block scalar is the start of its first text line.
                    TScalarStyle::Literal | TScalarStyle::Folded => Value::Str(
                        text,
                        BlockStart::NextLine {
                            indent: mark.col() as u32,
                        },
                    ),
                    // Quoted scalars start one column after the quote.
                    _ => Value::Str(text, BlockStart::Inline),
                };
                let span = match (&value, style) {
                    (Value::Str(..), TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted) => {
                        Span::new(span.line, span.col + 1)
                    }
                    _ => span,
                };
                self.push_node(Node { span, value });
            }
            Event::SequenceStart(..) => {
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(span, format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                self.stack.push(Frame::Seq(span, Vec::new()))
            }
            Event::MappingStart(..) => {
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(span, format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                self.stack.push(Frame::Map(span, Vec::new(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(span, items)) => Node {
                        span,
                        value: Value::Seq(items),
                    },
                    // A mapping's own mark is unreliable; its first key is where a reader looks.
                    Some(Frame::Map(span, entries, _)) => Node {
                        span: entries.first().map_or(span, |(k, _)| k.span),
                        value: Value::Map(entries),
                    },
                    None => return,
                };
                self.push_node(node);
            }
            _ => {}
        }
    }
}

fn plain_scalar(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text, BlockStart::Inline)
}

/// Parses a whole file, reporting a syntax error as a diagnostic with its position.
/// Every reader of YAML files (workflows, calendars, tests) starts here.
pub fn parse_file(file: &str, text: &str, diags: &mut Vec<Diagnostic>) -> Option<Node> {
    match parse(text) {
        Ok(root) => Some(root),
        Err(e) => {
            let (span, message, hint) = explain(text, e);
            diags.push(Diagnostic::error(file, span, message).with_hint(hint));
            None
        }
    }
}

/// The parser's error in the words of someone who writes YAML by hand: where a common
/// mistake is recognisable (a tab, a quote left open), say that, at the place to fix it.
fn explain(text: &str, e: SyntaxError) -> (Span, String, String) {
    let line = |n: u32| text.lines().nth(n.saturating_sub(1) as usize).unwrap_or("");
    // A tab in the indentation of the line the parser stopped at, or next to it (the
    // parser may stop at the `key:` before the tab, or on the line after it).
    if e.message.contains("tab") {
        for n in [e.span.line, e.span.line + 1, e.span.line.saturating_sub(1)] {
            let indent: String = line(n).chars().take_while(|c| c.is_whitespace()).collect();
            if let Some(i) = indent.chars().position(|c| c == '\t') {
                return (
                    Span::new(n, i as u32 + 1),
                    "a tab in the indentation: YAML indents with spaces only".into(),
                    "use spaces instead of the tab (two per level, like the lines around it)"
                        .into(),
                );
            }
        }
        return (
            e.span,
            "a tab where YAML needs spaces".into(),
            "use spaces instead of the tab".into(),
        );
    }
    if e.message.contains("quoted scalar") {
        match open_quote(text, e.span) {
            Some(Quote::Unclosed(at, q)) => {
                return (
                    at,
                    "missing closing quote".into(),
                    format!(
                        "the text that starts with {q} here is not closed; add {q} at its end, or write the text without quotes"
                    ),
                );
            }
            Some(Quote::Unindented(at)) => {
                return (
                    at,
                    "a quoted text goes on at the start of a line".into(),
                    "indent the lines it goes on over more than the key it belongs to, or keep it on one line".into(),
                );
            }
            None => {}
        }
    }
    (
        e.span,
        format!("invalid YAML: {}", e.message),
        "check indentation and that every `key:` is followed by a space".into(),
    )
}

enum Quote {
    /// The opening quote, which nothing closes.
    Unclosed(Span, char),
    /// The line, indented no more than the key, on which the text goes on and closes.
    Unindented(Span),
}

/// The opening quote at or before `at`, and whether its text closes before the next line
/// indented no more than the line it opens on (where a key or item begins again).
fn open_quote(text: &str, at: Span) -> Option<Quote> {
    let lines: Vec<&str> = text.lines().collect();
    let n = at.line.checked_sub(1)? as usize;
    // The parser points at the opening quote, or at the place it gave up further on: look
    // for the last quote that opens a value on the lines up to there.
    for (i, l) in lines.iter().enumerate().take(n + 1).rev() {
        let Some((col, q)) = opening_quote(l) else {
            continue;
        };
        let indent = l.len() - l.trim_start().len();
        let rest = &l[col + 1..];
        // Columns count characters, as the parser's positions do.
        let opened = Span::new(i as u32 + 1, l[..col].chars().count() as u32 + 1);
        if closes(rest, q) {
            return None;
        }
        for (j, next) in lines.iter().enumerate().skip(i + 1) {
            let next_indent = next.len() - next.trim_start().len();
            if !next.trim().is_empty() && next_indent <= indent {
                // A line like `line"` goes on with the text; `key: "x"` is a new key.
                let goes_on = closing(next, q).is_some_and(|at| !next[..at].contains(": "));
                return Some(if goes_on {
                    Quote::Unindented(Span::new(j as u32 + 1, 1))
                } else {
                    Quote::Unclosed(opened, q)
                });
            }
            if closes(next, q) {
                return None;
            }
        }
        return Some(Quote::Unclosed(opened, q));
    }
    None
}

/// Where a quoted value begins on a line: after `key: `, `- `, `[`, `{` or `,`, or at the
/// start of the line.
fn opening_quote(line: &str) -> Option<(usize, char)> {
    let bytes = line.as_bytes();
    for (i, c) in line.char_indices() {
        if c != '"' && c != '\'' {
            continue;
        }
        let before = line[..i].trim_end();
        let opens = before.is_empty()
            || before.ends_with(':') && bytes.get(i.wrapping_sub(1)) == Some(&b' ')
            || before.ends_with('-')
            || before.ends_with('[')
            || before.ends_with('{')
            || before.ends_with(',');
        if opens {
            return Some((i, c));
        }
    }
    None
}

/// Whether `s` holds the closing `q` of a quoted text.
fn closes(s: &str, q: char) -> bool {
    closing(s, q).is_some()
}

/// Where in `s` the closing `q` of a quoted text is (`\"` and `''` do not close).
fn closing(s: &str, q: char) -> Option<usize> {
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if q == '"' && c == '\\' {
            chars.next();
        } else if c == q {
            if q == '\'' && chars.peek().is_some_and(|(_, c)| *c == '\'') {
                chars.next();
                continue;
            }
            return Some(i);
        }
    }
    None
}

/// A mapping whose keys were checked against the allowed ones.
pub struct Fields<'n> {
    pub node: &'n Node,
    pub entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    /// Where `name` is written, or the mapping itself when it is absent.
    pub fn key_span(&self, name: &str) -> Span {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map_or(self.node.span, |(k, _)| k.span)
    }
}

/// Checks that `node` is a mapping whose keys are all in `allowed`, reporting every
/// unknown key (with "did you mean") into `diags`. `None` when it is not a mapping.
pub fn fields<'n>(
    file: &str,
    node: &'n Node,
    what: &str,
    allowed: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Option<Fields<'n>> {
    let Some(entries) = node.as_map() else {
        diags.push(
            Diagnostic::error(
                file,
                node.span,
                format!(
                    "{what} must be a mapping of `key: value` lines, found {}",
                    node.kind_name()
                ),
            )
            .with_hint(format!("allowed keys: {}", allowed.join(", "))),
        );
        return None;
    };
    for (k, _) in entries {
        if !allowed.contains(&k.name.as_str()) {
            let hint = match did_you_mean(&k.name, allowed.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("allowed here: {}", allowed.join(", ")),
            };
            diags.push(
                Diagnostic::error(
                    file,
                    k.span,
                    format!("unknown field `{}` in {what}", k.name),
                )
                .with_hint(hint),
            );
        }
    }
    Some(Fields { node, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax_error(text: &str) -> String {
        let mut diags = Vec::new();
        assert!(parse_file("f.yaml", text, &mut diags).is_none(), "{text}");
        diags[0].to_string()
    }

    #[test]
    fn common_mistakes_are_named_where_they_are() {
        let cases = [
            (
                "a: 1\nb: \"open\nc: 2\n",
                "f.yaml:2:4: error: missing closing quote",
            ),
            (
                "a: 1\nb: 'it''s open\nc: 2\n",
                "f.yaml:2:4: error: missing closing quote",
            ),
            (
                "a: { b: \"x }\n",
                "f.yaml:1:9: error: missing closing quote",
            ),
            (
                "a: { café: 1, b: \"x }\n",
                "f.yaml:1:18: error: missing closing quote",
            ),
            (
                "a: \"open\nb: \"closed\"\n",
                "f.yaml:1:4: error: missing closing quote",
            ),
            (
                "a: \"two\nlines\"\nb: 1\n",
                "f.yaml:2:1: error: a quoted text goes on at the start of a line",
            ),
            (
                "steps:\n\t- id: a\n",
                "f.yaml:2:1: error: a tab in the indentation: YAML indents with spaces only",
            ),
            (
                "a:\n  b: 1\n  \tc: 2\n",
                "f.yaml:3:3: error: a tab in the indentation: YAML indents with spaces only",
            ),
        ];
        for (text, want) in cases {
            let got = syntax_error(text);
            assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
        }
        // Quoted text over several properly indented lines is fine.
        assert!(parse("a: \"two\n  lines\"\nb: 1\n").is_ok());
        // Anything else keeps the parser's words.
        assert!(syntax_error("a: [1, 2\n").contains("invalid YAML"));
    }

    #[test]
    fn positions_are_one_based() {
        let doc =
            parse("name: refund\nsteps:\n  - id: a\n    rule: |\n      vars.x = 1\n").unwrap();
        let (k, v) = &doc.as_map().unwrap()[0];
        assert_eq!(k.span, Span::new(1, 1));
        assert_eq!(v.span, Span::new(1, 7));
        let steps = doc.get("steps").unwrap();
        let Value::Seq(items) = &steps.value else {
            panic!()
        };
        let rule = items[0].get("rule").unwrap();
        assert_eq!(
            rule.value,
            Value::Str("vars.x = 1\n".into(), BlockStart::NextLine { indent: 6 })
        );
        assert_eq!(rule.span, Span::new(5, 7));
    }

    #[test]
    fn scalars_are_typed() {
        let doc = parse("a: 3\nb: '3'\nc: 2.5\nd: true\ne:\nf: 1h").unwrap();
        assert_eq!(doc.get("a").unwrap().value, Value::Int(3));
        assert_eq!(doc.get("b").unwrap().as_str(), Some("3"));
        assert_eq!(doc.get("c").unwrap().value, Value::Float(2.5));
        assert_eq!(doc.get("d").unwrap().value, Value::Bool(true));
        assert_eq!(doc.get("e").unwrap().value, Value::Null);
        assert_eq!(doc.get("f").unwrap().as_str(), Some("1h"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.span.line >= 1, "{err:?}");
        let dup = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(dup.span, Span::new(2, 1));
        assert!(dup.message.contains("duplicate key"));
    }
}
