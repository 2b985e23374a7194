//! Decision tables (`decide:` steps): cells read against their column's type, `unique`
//! tables checked for overlaps and gaps when the file loads, and the match at run time.
//!
//! A cell is a condition on its input column:
//!
//! | column type | cell | matches |
//! |---|---|---|
//! | any | `"*"` or no cell | anything |
//! | integer | `5000`, `"= 5000"` | exactly 5000 |
//! | integer | `"< 5000"`, `"<= 5000"`, `"> 5000"`, `">= 5000"` | the comparison |
//! | integer | `"5000..50000"` | from 5000 up to but not including 50000 |
//! | string | `USD` | exactly `USD` |
//! | string, integer | `[USD, EUR]` | any of them |
//! | string, integer | `"not USD"`, `"not [USD, EUR]"` | anything else |
//! | boolean | `true`, `false` | that value |
//!
//! Why the overlap and gap checks enumerate instead of reasoning about intervals: every
//! condition is constant between the values its column's cells mention, so trying one
//! value from each stretch (and one "other" string) decides every input there is. The
//! number of combinations is bounded ([`MAX_COMBINATIONS`]); a table past it is refused.

use crate::definition::{yaml, ColumnType, HitPolicy, RowDef, TableDef};
use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use serde_json::Value;

/// Combinations of column values a `unique` or `first` table is checked over.
pub const MAX_COMBINATIONS: usize = 100_000;
/// Rows in one table.
pub const MAX_ROWS: usize = 1_000;

/// One cell's condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    Any,
    Int(IntTest),
    Ints(Vec<i64>),
    Strs(Vec<String>),
    Bool(bool),
    Not(Box<Condition>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IntTest {
    Lt(i64),
    Le(i64),
    Gt(i64),
    Ge(i64),
    /// `from..until`: from inclusive, until exclusive.
    Range(i64, i64),
}

/// A value tried for a column when checking a table: an integer, a string (None: any
/// string no cell names) or a boolean.
#[derive(Clone, Debug, PartialEq)]
enum Probe {
    Int(i64),
    Str(Option<String>),
    Bool(bool),
}

impl Condition {
    fn matches(&self, v: &Probe) -> bool {
        match (self, v) {
            (Condition::Any, _) => true,
            (Condition::Not(c), v) => !c.matches(v),
            (Condition::Int(t), Probe::Int(x)) => match *t {
                IntTest::Lt(n) => *x < n,
                IntTest::Le(n) => *x <= n,
                IntTest::Gt(n) => *x > n,
                IntTest::Ge(n) => *x >= n,
                IntTest::Range(a, b) => a <= *x && *x < b,
            },
            (Condition::Ints(list), Probe::Int(x)) => list.contains(x),
            (Condition::Strs(list), Probe::Str(Some(s))) => list.contains(s),
            (Condition::Strs(_), Probe::Str(None)) => false,
            (Condition::Bool(b), Probe::Bool(x)) => b == x,
            _ => false,
        }
    }

    /// The values where this condition can change, for building probes.
    fn edges(&self, out: &mut Vec<i64>) {
        match self {
            Condition::Int(IntTest::Lt(n) | IntTest::Ge(n)) => out.push(*n),
            Condition::Int(IntTest::Le(n) | IntTest::Gt(n)) => out.push(n.saturating_add(1)),
            Condition::Int(IntTest::Range(a, b)) => out.extend([*a, *b]),
            Condition::Ints(list) => {
                for n in list {
                    out.extend([*n, n.saturating_add(1)]);
                }
            }
            Condition::Not(c) => c.edges(out),
            _ => {}
        }
    }

    fn strings<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Condition::Strs(list) => out.extend(list.iter().map(String::as_str)),
            Condition::Not(c) => c.strings(out),
            _ => {}
        }
    }
}

/// A row ready to match: a condition per input column, a value per output column.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub line: u32,
    pub conditions: Vec<Condition>,
    pub outputs: Vec<Value>,
}

/// The rows of a table, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    pub types: Vec<ColumnType>,
    pub names: Vec<String>,
    pub outputs: Vec<String>,
    pub hit: HitPolicy,
    pub rows: Vec<Row>,
    pub default: Option<Vec<Value>>,
}

/// What a table decided: the rows that matched (1-based), and each output's value.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub rows: Vec<usize>,
    pub outputs: Vec<(String, Value)>,
}

struct Reader<'a> {
    file: &'a str,
    diags: &'a mut Vec<Diagnostic>,
}

impl Reader<'_> {
    fn err(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, span, msg).with_hint(hint));
    }
}

const INT_HINT: &str = "write a whole number (money in minor units: 4999 for 49.99), a comparison such as `\"< 5000\"`, a range `\"5000..50000\"` (50000 not included), a list `[1, 2]`, or `\"*\"` for any";

/// Reads and checks a table's rows. Problems are reported at the cell (or row) to fix;
/// `None` if there are any.
pub fn read(def: &TableDef, file: &str, diags: &mut Vec<Diagnostic>) -> Option<Rows> {
    let before = diags.len();
    let mut r = Reader { file, diags };
    let names: Vec<String> = def.inputs.iter().map(|c| c.name.value.clone()).collect();
    let types: Vec<ColumnType> = def.inputs.iter().map(|c| c.ty).collect();
    let outputs: Vec<String> = def.outputs.iter().map(|o| o.value.clone()).collect();
    for (i, o) in def.outputs.iter().enumerate() {
        if def.outputs[..i].iter().any(|e| e.value == o.value) {
            r.err(
                o.span,
                format!("output `{}` is listed twice", o.value),
                "list each output once",
            );
        }
        if names.contains(&o.value) {
            r.err(
                o.span,
                format!("`{}` is both an input and an output column", o.value),
                "give the output another name",
            );
        }
    }
    if def.rows.len() > MAX_ROWS {
        r.err(
            def.rows_span,
            format!(
                "a table has at most {MAX_ROWS} rows, this one {}",
                def.rows.len()
            ),
            "split the policy into several tables",
        );
        return None;
    }
    if def.rows.is_empty() {
        r.err(
            def.rows_span,
            "the table has no rows",
            "add at least one row",
        );
        return None;
    }
    let mut rows = Vec::new();
    for row in &def.rows {
        if let Some(row) = read_row(&mut r, def, row, &names, &types, &outputs, true) {
            rows.push(row);
        }
    }
    let default = match (&def.default, def.hit) {
        (Some(d), HitPolicy::Collect) => {
            r.err(
                d.span,
                "a `collect` table has no `default`",
                "with `hit: collect` no match gives empty lists; remove `default`",
            );
            None
        }
        (Some(d), _) => {
            read_row(&mut r, def, d, &names, &types, &outputs, false).map(|r| r.outputs)
        }
        (None, _) => None,
    };
    if r.diags.len() > before {
        return None;
    }
    let table = Rows {
        types,
        names,
        outputs,
        hit: def.hit,
        rows,
        default,
    };
    table.check(def, &mut r);
    let failed = r.diags[before..].iter().any(Diagnostic::is_error);
    (!failed).then_some(table)
}

fn read_row(
    r: &mut Reader<'_>,
    def: &TableDef,
    row: &RowDef,
    names: &[String],
    types: &[ColumnType],
    outputs: &[String],
    with_conditions: bool,
) -> Option<Row> {
    let mut conditions = vec![Condition::Any; names.len()];
    let mut values: Vec<Option<Value>> = vec![None; outputs.len()];
    let mut ok = true;
    for (col, cell) in &row.cells {
        if let Some(i) = names.iter().position(|n| *n == col.value) {
            if !with_conditions {
                r.err(
                    col.span,
                    format!(
                        "`default` gives outputs only, not the input `{}`",
                        col.value
                    ),
                    "remove it: `default` applies when no row matches",
                );
                ok = false;
                continue;
            }
            match condition(r, types[i], &col.value, cell) {
                Some(c) => conditions[i] = c,
                None => ok = false,
            }
        } else if let Some(i) = outputs.iter().position(|n| *n == col.value) {
            values[i] = Some(cell.to_json());
        } else {
            let known = names.iter().chain(outputs).map(String::as_str);
            let hint = match did_you_mean(&col.value, known) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!(
                    "the columns are: {}",
                    names
                        .iter()
                        .chain(outputs)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            r.err(col.span, format!("unknown column `{}`", col.value), hint);
            ok = false;
        }
    }
    let missing: Vec<&str> = outputs
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        let what = if with_conditions {
            "this row"
        } else {
            "`default`"
        };
        r.err(
            row.span,
            format!("{what} gives no `{}`", missing.join("`, `")),
            format!(
                "every row gives every output: {}",
                def.outputs
                    .iter()
                    .map(|o| o.value.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        ok = false;
    }
    ok.then(|| Row {
        line: row.span.line,
        conditions,
        outputs: values
            .into_iter()
            .map(|v| v.unwrap_or(Value::Null))
            .collect(),
    })
}

/// One cell against its column's type.
fn condition(
    r: &mut Reader<'_>,
    ty: ColumnType,
    col: &str,
    cell: &yaml::Node,
) -> Option<Condition> {
    use yaml::Value as Y;
    if let Some(text) = cell.as_str() {
        let text = text.trim();
        if text == "*" {
            return Some(Condition::Any);
        }
        if let Some(rest) = text.strip_prefix("not ") {
            // What follows `not` is read as its column reads a cell written alone.
            let item = |x: &str| yaml::Node {
                span: cell.span,
                value: scalar(ty, x.trim()),
            };
            let inner = yaml::Node {
                span: cell.span,
                value: match rest
                    .trim()
                    .strip_prefix('[')
                    .and_then(|x| x.strip_suffix(']'))
                {
                    Some(list) => Y::Seq(list.split(',').map(item).collect()),
                    None => item(rest).value,
                },
            };
            return condition(r, ty, col, &inner).map(|c| Condition::Not(Box::new(c)));
        }
    }
    match ty {
        ColumnType::Integer => int_condition(r, col, cell),
        ColumnType::String => match &cell.value {
            Y::Str(s, _) => Some(Condition::Strs(vec![s.trim().to_string()])),
            Y::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => out.push(s.trim().to_string()),
                        None => {
                            r.err(
                                item.span,
                                format!("column `{col}` holds text, not {}", item.kind_name()),
                                "write the text, quoted if it looks like a number: `\"42\"`",
                            );
                            return None;
                        }
                    }
                }
                Some(Condition::Strs(out))
            }
            _ => {
                r.err(cell.span, format!("column `{col}` holds text, not {}", cell.kind_name()), "write the text, quoted if it looks like a number: `\"42\"`, or `\"*\"` for any");
                None
            }
        },
        ColumnType::Boolean => match &cell.value {
            Y::Bool(b) => Some(Condition::Bool(*b)),
            _ => {
                r.err(
                    cell.span,
                    format!("column `{col}` is true or false, not {}", cell.kind_name()),
                    "write `true`, `false` or `\"*\"`",
                );
                None
            }
        },
    }
}

fn scalar(ty: ColumnType, text: &str) -> yaml::Value {
    let as_text = || yaml::Value::Str(text.to_string(), crate::diagnostic::BlockStart::Inline);
    match (ty, text) {
        (ColumnType::Integer, _) => text
            .parse::<i64>()
            .map_or_else(|_| as_text(), yaml::Value::Int),
        (ColumnType::Boolean, "true") => yaml::Value::Bool(true),
        (ColumnType::Boolean, "false") => yaml::Value::Bool(false),
        _ => as_text(),
    }
}

fn int_condition(r: &mut Reader<'_>, col: &str, cell: &yaml::Node) -> Option<Condition> {
    use yaml::Value as Y;
    let decimal = |r: &mut Reader<'_>, shown: &str| {
        r.err(
            cell.span,
            format!("`{shown}` is a decimal number, but column `{col}` takes whole numbers"),
            "money is in minor units: write 4999 for 49.99",
        );
        None
    };
    match &cell.value {
        Y::Int(n) => Some(Condition::Ints(vec![*n])),
        Y::Float(f) => decimal(r, &f.to_string()),
        Y::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                match &item.value {
                    Y::Int(n) => out.push(*n),
                    Y::Float(f) => return decimal(r, &f.to_string()),
                    _ => {
                        r.err(
                            item.span,
                            format!(
                                "column `{col}` holds whole numbers, not {}",
                                item.kind_name()
                            ),
                            INT_HINT,
                        );
                        return None;
                    }
                }
            }
            Some(Condition::Ints(out))
        }
        Y::Str(s, _) => {
            let t = s.trim();
            // Err(Some(true)): a decimal number; Err(Some(false)): a whole number too
            // large; Err(None): not a number.
            let number = |x: &str| -> Result<i64, Option<bool>> {
                let x = x.trim().replace('_', "");
                x.parse::<i64>().map_err(|_| {
                    let digits = !x.is_empty()
                        && x.trim_start_matches('-')
                            .chars()
                            .all(|c| c.is_ascii_digit());
                    if digits {
                        Some(false)
                    } else {
                        x.parse::<f64>().is_ok().then_some(true)
                    }
                })
            };
            let parsed = if let Some((a, b)) = t.split_once("..") {
                match (number(a), number(b)) {
                    (Ok(a), Ok(b)) if a < b => Ok(Condition::Int(IntTest::Range(a, b))),
                    (Ok(a), Ok(b)) => {
                        r.err(cell.span, format!("`{t}` is empty: {b} is not after {a}"), "a range `from..until` includes `from` and not `until`, so `until` must be larger");
                        return None;
                    }
                    (Err(d), _) | (_, Err(d)) => Err(d),
                }
            } else {
                let (op, rest) = ["<=", ">=", "<", ">", "="]
                    .iter()
                    .find_map(|op| t.strip_prefix(op).map(|rest| (*op, rest)))
                    .unwrap_or(("=", t));
                number(rest).map(|n| match op {
                    "<" => Condition::Int(IntTest::Lt(n)),
                    "<=" => Condition::Int(IntTest::Le(n)),
                    ">" => Condition::Int(IntTest::Gt(n)),
                    ">=" => Condition::Int(IntTest::Ge(n)),
                    _ => Condition::Ints(vec![n]),
                })
            };
            match parsed {
                Ok(c) => Some(c),
                Err(Some(true)) => decimal(r, t),
                Err(Some(false)) => {
                    r.err(
                        cell.span,
                        format!("`{t}` is too large: whole numbers go up to {}", i64::MAX),
                        INT_HINT,
                    );
                    None
                }
                Err(None) => {
                    r.err(
                        cell.span,
                        format!("`{t}` is not a condition on whole numbers"),
                        INT_HINT,
                    );
                    None
                }
            }
        }
        _ => {
            r.err(
                cell.span,
                format!(
                    "column `{col}` holds whole numbers, not {}",
                    cell.kind_name()
                ),
                INT_HINT,
            );
            None
        }
    }
}

impl Rows {
    /// `unique`: every input matches exactly one row. `first`: every row can match.
    fn check(&self, def: &TableDef, r: &mut Reader<'_>) {
        if self.hit == HitPolicy::Collect {
            return;
        }
        let Some(probes) = self.probes() else {
            if self.hit == HitPolicy::Unique {
                r.err(
                    def.rows_span,
                    format!("this table has more than {MAX_COMBINATIONS} combinations of column values to check"),
                    "use `hit: first`, or split the table into smaller ones",
                );
            }
            return;
        };
        let mut reachable = vec![false; self.rows.len()];
        let mut gap: Option<Vec<Probe>> = None;
        let mut overlaps: Vec<(usize, usize, Vec<Probe>)> = Vec::new();
        let mut combo = vec![0usize; probes.len()];
        loop {
            let values: Vec<Probe> = combo
                .iter()
                .zip(&probes)
                .map(|(i, p)| p[*i].clone())
                .collect();
            let hits: Vec<usize> = (0..self.rows.len())
                .filter(|i| {
                    self.rows[*i]
                        .conditions
                        .iter()
                        .zip(&values)
                        .all(|(c, v)| c.matches(v))
                })
                .collect();
            if let Some(first) = hits.first() {
                reachable[*first] = true;
            }
            match hits.as_slice() {
                [] if gap.is_none() => gap = Some(values),
                [a, b, ..] if !overlaps.iter().any(|(_, later, _)| later == b) => {
                    overlaps.push((*a, *b, values));
                }
                _ => {}
            }
            // Next combination, like an odometer.
            let mut k = 0;
            loop {
                if k == combo.len() {
                    return self.report(def, r, &reachable, gap, overlaps);
                }
                combo[k] += 1;
                if combo[k] < probes[k].len() {
                    break;
                }
                combo[k] = 0;
                k += 1;
            }
        }
    }

    fn report(
        &self,
        def: &TableDef,
        r: &mut Reader<'_>,
        reachable: &[bool],
        gap: Option<Vec<Probe>>,
        overlaps: Vec<(usize, usize, Vec<Probe>)>,
    ) {
        if self.hit == HitPolicy::Unique {
            let mut overlaps = overlaps;
            overlaps.sort_by_key(|(a, b, _)| (*b, *a));
            for (a, b, values) in overlaps {
                r.err(
                    self.cell_span(def, b),
                    format!("rows {} and {} both match {}", a + 1, b + 1, self.describe(&values)),
                    "in a `unique` table one row matches each input: narrow one of the rows, or use `hit: first`",
                );
            }
            if let (Some(values), None) = (gap, &self.default) {
                r.err(
                    def.rows_span,
                    format!("no row matches {}", self.describe(&values)),
                    "in a `unique` table every input needs a row: add one, or give the table a `default`",
                );
            }
        } else {
            for (i, reached) in reachable.iter().enumerate() {
                if !reached {
                    r.diags.push(
                        Diagnostic::warning(
                            r.file,
                            self.cell_span(def, i),
                            format!("row {} can never match: the rows above it match everything it does", i + 1),
                        )
                        .with_hint("move it up, or remove it"),
                    );
                }
            }
        }
    }

    /// Where to point at a row: its first cell that is not `*`, else the row.
    fn cell_span(&self, def: &TableDef, row: usize) -> Span {
        let d = &def.rows[row];
        d.cells
            .iter()
            .find(|(col, cell)| self.names.contains(&col.value) && cell.as_str() != Some("*"))
            .map_or(d.span, |(_, cell)| cell.span)
    }

    fn describe(&self, values: &[Probe]) -> String {
        self.names
            .iter()
            .zip(values)
            .map(|(n, v)| match v {
                Probe::Int(x) => format!("{n} = {x}"),
                Probe::Str(Some(s)) => format!("{n} = {s}"),
                Probe::Str(None) => format!("{n} = any other text"),
                Probe::Bool(b) => format!("{n} = {b}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One value from each stretch where no condition changes, per column; None past the bound.
    fn probes(&self) -> Option<Vec<Vec<Probe>>> {
        let mut all = Vec::new();
        let mut total: usize = 1;
        for (i, ty) in self.types.iter().enumerate() {
            let conditions = self.rows.iter().map(|r| &r.conditions[i]);
            let probes: Vec<Probe> = match ty {
                ColumnType::Integer => {
                    let mut edges = Vec::new();
                    for c in conditions {
                        c.edges(&mut edges);
                    }
                    edges.sort_unstable();
                    edges.dedup();
                    let mut p: Vec<Probe> = edges.iter().map(|e| Probe::Int(*e)).collect();
                    p.push(Probe::Int(edges.first().map_or(0, |e| e.saturating_sub(1))));
                    p
                }
                ColumnType::String => {
                    let mut strings = Vec::new();
                    for c in conditions {
                        c.strings(&mut strings);
                    }
                    strings.sort_unstable();
                    strings.dedup();
                    let mut p: Vec<Probe> = strings
                        .into_iter()
                        .map(|s| Probe::Str(Some(s.to_string())))
                        .collect();
                    p.push(Probe::Str(None));
                    p
                }
                ColumnType::Boolean => vec![Probe::Bool(false), Probe::Bool(true)],
            };
            total = total.checked_mul(probes.len())?;
            if total > MAX_COMBINATIONS {
                return None;
            }
            all.push(probes);
        }
        Some(all)
    }

    /// The match for the column values an instance computed. An error is a code
    /// (`table_input`: a value of the wrong type; `no_row_matched`) and a message.
    pub fn decide(&self, values: &[Value]) -> Result<Decision, (&'static str, String)> {
        let probes = self.probes_of(values).map_err(|m| ("table_input", m))?;
        self.matching(&probes).map_err(|m| ("no_row_matched", m))
    }

    fn probes_of(&self, values: &[Value]) -> Result<Vec<Probe>, String> {
        let mut probes = Vec::with_capacity(values.len());
        for ((name, ty), v) in self.names.iter().zip(&self.types).zip(values) {
            let p = match (ty, v) {
                (ColumnType::Integer, Value::Number(n)) if n.is_i64() => Probe::Int(n.as_i64().unwrap_or_default()),
                (ColumnType::String, Value::String(s)) => Probe::Str(Some(s.clone())),
                (ColumnType::Boolean, Value::Bool(b)) => Probe::Bool(*b),
                (ColumnType::Integer, Value::Number(n)) if n.is_u64() => {
                    return Err(format!(
                        "column `{name}` takes whole numbers up to {}, but its value is {n}",
                        i64::MAX
                    ))
                }
                (ColumnType::Integer, Value::Number(n)) => {
                    return Err(format!("column `{name}` takes whole numbers, but its value is {n} (money is in minor units: 4999 for 49.99)"))
                }
                (ty, v) => {
                    return Err(format!(
                        "column `{name}` takes {}, but its value is {}",
                        match ty {
                            ColumnType::Integer => "whole numbers",
                            ColumnType::String => "text",
                            ColumnType::Boolean => "true or false",
                        },
                        kind_of(v)
                    ))
                }
            };
            probes.push(p);
        }
        Ok(probes)
    }

    fn matching(&self, probes: &[Probe]) -> Result<Decision, String> {
        let hits: Vec<usize> = (0..self.rows.len())
            .filter(|i| {
                self.rows[*i]
                    .conditions
                    .iter()
                    .zip(probes)
                    .all(|(c, v)| c.matches(v))
            })
            .collect();
        let outputs = match (self.hit, hits.as_slice()) {
            (HitPolicy::Collect, _) => self
                .outputs
                .iter()
                .enumerate()
                .map(|(o, name)| {
                    (
                        name.clone(),
                        Value::Array(
                            hits.iter()
                                .map(|h| self.rows[*h].outputs[o].clone())
                                .collect(),
                        ),
                    )
                })
                .collect(),
            (HitPolicy::Unique, [_, _, ..]) => {
                return Err(format!(
                    "rows {} all match; a unique table needs exactly one",
                    hits.iter()
                        .map(|h| (h + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            (_, [h, ..]) => self
                .outputs
                .iter()
                .cloned()
                .zip(self.rows[*h].outputs.iter().cloned())
                .collect(),
            (_, []) => match &self.default {
                Some(d) => self
                    .outputs
                    .iter()
                    .cloned()
                    .zip(d.iter().cloned())
                    .collect(),
                None => return Err(format!("no row matches {}", self.describe(probes))),
            },
        };
        let rows = match self.hit {
            HitPolicy::Collect => hits.iter().map(|h| h + 1).collect(),
            _ => hits.first().map(|h| vec![h + 1]).unwrap_or_default(),
        };
        Ok(Decision { rows, outputs })
    }
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "missing (null)".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the text {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::StepKind;
    use serde_json::json;

    /// The table of a one-step workflow whose `decide:` body is `table` (indented 6).
    fn table(table: &str) -> (Option<Rows>, Vec<String>) {
        let text = format!(
            "workflow: t\nversion: 1\nsteps:\n  - id: pick\n    decide:\n{table}    next: end\n  - id: end\n    complete: {{}}\n"
        );
        let (def, diags) = crate::definition::read("t.yaml", &text);
        assert!(diags.is_empty(), "{diags:?}");
        let def = def.unwrap();
        let StepKind::Decide(t) = &def.steps[0].kind else {
            panic!("not a table")
        };
        let mut diags = Vec::new();
        let rows = read(t, "t.yaml", &mut diags);
        (rows, diags.iter().map(|d| d.to_string()).collect())
    }

    const TIERS: &str = "      inputs:
        amount: { type: integer, value: input.amount }
        plan: { type: string, value: input.plan }
      outputs: [tier]
      hit: unique
      rows:
        - { amount: \"< 5000\", plan: \"*\", tier: agent }
        - { amount: \"5000..50000\", plan: \"*\", tier: lead }
        - { amount: \">= 50000\", plan: [enterprise, business], tier: finance }
        - { amount: \">= 50000\", plan: \"not [enterprise, business]\", tier: director }
";

    #[test]
    fn a_unique_table_picks_its_one_row() {
        let (rows, diags) = table(TIERS);
        assert!(diags.is_empty(), "{diags:?}");
        let rows = rows.unwrap();
        let pick = |amount: i64, plan: &str| rows.decide(&[json!(amount), json!(plan)]).unwrap();
        assert_eq!(
            pick(4999, "free").outputs,
            [("tier".into(), json!("agent"))]
        );
        assert_eq!(pick(5000, "free").rows, [2], "5000 starts the second range");
        assert_eq!(pick(49_999, "free").rows, [2]);
        assert_eq!(pick(50_000, "business").outputs[0].1, json!("finance"));
        assert_eq!(pick(50_000, "startup").outputs[0].1, json!("director"));
        assert_eq!(pick(-3, "x").rows, [1]);
    }

    #[test]
    fn overlaps_and_gaps_in_a_unique_table_are_named_at_the_cell() {
        let overlapping = TIERS.replace("\"5000..50000\"", "\"<= 50000\"");
        let (rows, diags) = table(&overlapping);
        assert!(rows.is_none());
        assert_eq!(
            diags,
            [
                "t.yaml:13:22: error: rows 1 and 2 both match amount = 4999, plan = business\n  hint: in a `unique` table one row matches each input: narrow one of the rows, or use `hit: first`",
                "t.yaml:14:22: error: rows 2 and 3 both match amount = 50000, plan = business\n  hint: in a `unique` table one row matches each input: narrow one of the rows, or use `hit: first`",
                "t.yaml:15:22: error: rows 2 and 4 both match amount = 50000, plan = any other text\n  hint: in a `unique` table one row matches each input: narrow one of the rows, or use `hit: first`",
            ]
        );
        let gap = TIERS.replace("\"not [enterprise, business]\"", "startup");
        let (rows, diags) = table(&gap);
        assert!(rows.is_none());
        assert_eq!(
            diags,
            ["t.yaml:11:7: error: no row matches amount = 50000, plan = any other text\n  hint: in a `unique` table every input needs a row: add one, or give the table a `default`"]
        );
        // A default closes the gap.
        let (rows, diags) = table(&gap.replace(
            "      rows:",
            "      default: { tier: manual }\n      rows:",
        ));
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            rows.unwrap()
                .decide(&[json!(60_000), json!("x")])
                .unwrap()
                .rows,
            Vec::<usize>::new()
        );
    }

    #[test]
    fn cells_are_checked_against_their_column() {
        let (rows, diags) = table(
            "      inputs:
        amount: { type: integer, value: input.amount }
        vip: { type: boolean, value: input.vip }
      outputs: [tier]
      rows:
        - { amount: 49.99, vip: true, tier: a }
        - { amount: \"< 49.99\", vip: yes, tier: b }
        - { amount: \"5000..100\", tier: c }
        - { amount: \"lots\", tire: d }
        - { vip: false }
",
        );
        assert!(rows.is_none());
        let want = [
            "t.yaml:11:21: error: `49.99` is a decimal number, but column `amount` takes whole numbers",
            "t.yaml:12:22: error: `< 49.99` is a decimal number, but column `amount` takes whole numbers",
            "t.yaml:12:37: error: column `vip` is true or false, not a string",
            "t.yaml:13:22: error: `5000..100` is empty: 100 is not after 5000",
            "t.yaml:14:22: error: `lots` is not a condition on whole numbers",
            "t.yaml:14:29: error: unknown column `tire`",
            "t.yaml:14:13: error: this row gives no `tier`",
            "t.yaml:15:13: error: this row gives no `tier`",
        ];
        assert_eq!(diags.len(), want.len(), "{diags:#?}");
        for (got, want) in diags.iter().zip(want) {
            assert!(got.starts_with(want), "{got}\n  wanted {want}");
        }
        assert!(diags[5].contains("did you mean `tier`?"), "{}", diags[5]);
    }

    #[test]
    fn first_warns_of_rows_that_never_match_and_collect_gives_lists() {
        let (rows, diags) = table(
            "      inputs:
        amount: { type: integer, value: input.amount }
      outputs: [tier]
      rows:
        - { amount: \">= 100\", tier: big }
        - { amount: \">= 500\", tier: huge }
        - { amount: \"*\", tier: small }
",
        );
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(
            diags[0].starts_with("t.yaml:11:22: warning: row 2 can never match"),
            "{diags:?}"
        );
        let rows = rows.unwrap();
        assert_eq!(rows.decide(&[json!(600)]).unwrap().rows, [1]);
        assert_eq!(
            rows.decide(&[json!(6)]).unwrap().outputs[0].1,
            json!("small")
        );
        let (code, err) = rows.decide(&[json!(49.99)]).unwrap_err();
        assert_eq!(code, "table_input");
        assert!(err.contains("minor units"), "{err}");
        let (_, err) = rows.decide(&[json!(null)]).unwrap_err();
        assert_eq!(
            err,
            "column `amount` takes whole numbers, but its value is missing (null)"
        );

        let (rows, diags) = table(
            "      inputs:
        breach: { type: boolean, value: input.breach }
        percent: { type: integer, value: input.percent }
      outputs: [reason]
      hit: collect
      rows:
        - { breach: true, reason: security breach }
        - { percent: \"> 5\", reason: many customers }
",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let rows = rows.unwrap();
        let both = rows.decide(&[json!(true), json!(10)]).unwrap();
        assert_eq!(both.rows, [1, 2]);
        assert_eq!(
            both.outputs[0].1,
            json!(["security breach", "many customers"])
        );
        assert_eq!(
            rows.decide(&[json!(false), json!(1)]).unwrap().outputs[0].1,
            json!([])
        );
    }

    #[test]
    fn not_reads_what_follows_as_its_column_does() {
        let (rows, diags) = table(
            "      inputs:
        zip: { type: string, value: input.zip }
        vip: { type: boolean, value: input.vip }
      outputs: [tier]
      rows:
        - { zip: \"not [10001, 10002]\", vip: \"not true\", tier: a }
        - { zip: [not applicable], tier: b }
        - { tier: c }
",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let rows = rows.unwrap();
        let pick = |zip: &str, vip: bool| rows.decide(&[json!(zip), json!(vip)]).unwrap().rows;
        assert_eq!(pick("10003", false), [1]);
        assert_eq!(pick("10001", false), [3]);
        assert_eq!(pick("10003", true), [3]);
        assert_eq!(
            pick("not applicable", true),
            [2],
            "a list item is literal text"
        );
    }

    #[test]
    fn outputs_twice_and_numbers_too_large_are_named() {
        let (rows, diags) = table(
            "      inputs:
        amount: { type: integer, value: input.amount }
      outputs: [tier, tier]
      rows:
        - { amount: \"> 99999999999999999999\", tier: a }
",
        );
        assert!(rows.is_none());
        assert!(
            diags[0].starts_with("t.yaml:8:23: error: output `tier` is listed twice"),
            "{diags:?}"
        );
        assert!(
            diags
                .iter()
                .any(|d| d.contains("is too large: whole numbers go up to 9223372036854775807")),
            "{diags:?}"
        );
    }

    #[test]
    fn a_table_too_large_to_check_is_refused_when_unique() {
        let mut text = String::from(
            "      inputs:
        a: { type: integer, value: input.a }
        b: { type: integer, value: input.b }
      outputs: [x]
      hit: unique
      rows:
",
        );
        for i in 0..400 {
            text.push_str(&format!("        - {{ a: {i}, b: {i}, x: 1 }}\n"));
        }
        let (rows, diags) = table(&text);
        assert!(rows.is_none());
        assert!(
            diags[0].contains("more than 100000 combinations"),
            "{diags:?}"
        );
    }
}
