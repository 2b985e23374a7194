//! YAML text → [`WorkflowDef`], collecting every structural problem with its position.

use super::yaml::{self, Fields, Key, Node, Value};
use super::*;
use crate::diagnostic::{did_you_mean, Diagnostic};

/// Read a workflow file. Returns the definition if the structure is sound, and every problem found.
pub fn read(file: &str, text: &str) -> (Option<WorkflowDef>, Vec<Diagnostic>) {
    let mut r = Reader {
        file,
        diags: Vec::new(),
    };
    let Some(root) = yaml::parse_file(file, text, &mut r.diags) else {
        return (None, r.diags);
    };
    let def = r.workflow(&root);
    let ok = !r.diags.iter().any(Diagnostic::is_error);
    (def.filter(|_| ok), r.diags)
}

pub(crate) const WORKFLOW_FIELDS: &[&str] = &[
    "workflow",
    "version",
    "description",
    "input",
    "on_error",
    "steps",
    "compensations",
    "triggers",
    "key",
    "concurrency",
    "inbox_keep",
    "search",
    "migrate",
];
pub(crate) const MIGRATION_FIELDS: &[&str] = &["from", "at", "to", "set"];
/// The most `migrate:` rules a workflow may declare, and variables one rule may set.
pub const MAX_MIGRATIONS: usize = 32;
/// The most `search:` attributes a workflow may declare: each is an index entry per
/// instance and an expression run after every step that changes the instance.
pub const MAX_SEARCH_ATTRIBUTES: usize = 8;
/// Query parameters of `GET /v1/instances` that are not search attributes.
pub const RESERVED_SEARCH_NAMES: &[&str] = &[
    "workflow",
    "status",
    "limit",
    "cursor",
    "started_after",
    "started_before",
];
/// The longest `inbox_keep` a workflow may ask for (the daemon's own bound).
pub const MAX_INBOX_KEEP_MS: u64 = 30 * 24 * 3_600_000;
pub(crate) const CONCURRENCY_FIELDS: &[&str] = &["limit", "on_conflict", "event"];
/// The most open instances `concurrency.limit` allows per key: a start tries the key's
/// places one by one, so this bounds the writes a refused start costs.
pub const MAX_OPEN_PER_KEY: u32 = 50;
pub(crate) const TRIGGER_FIELDS: &[&str] = &[
    "event", "when", "schedule", "timezone", "input", "key", "count",
];
pub(crate) const COUNT_FIELDS: &[&str] = &["at_least", "within"];
/// The longest `count.within` a windowed trigger may ask for (30 days).
const MAX_WINDOW_MS: u64 = 30 * 24 * 3_600_000;
pub(crate) const STEP_COMMON: &[&str] = &[
    "id",
    "description",
    "next",
    "on_error",
    "compensate",
    "save_as",
];
pub(crate) const INPUT_FIELDS: &[&str] = &[
    "type",
    "required",
    "sensitive",
    "description",
    "one_of",
    "min",
    "max",
    "default",
];

struct Reader<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn err(&mut self, span: Span, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(self.file, span, msg));
        self.diags.last_mut().expect("just pushed")
    }

    fn hint(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, span, msg).with_hint(hint));
    }

    /// Check that `node` is a mapping whose keys are all in `allowed`.
    fn fields<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        yaml::fields(self.file, node, what, allowed, &mut self.diags)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        super::value::string(self.file, node, what, &mut self.diags)
            .map(|s| Spanned::new(s, node.span))
    }

    fn name(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        super::value::name(self.file, node, what, &mut self.diags)
            .map(|s| Spanned::new(s, node.span))
    }

    fn script(&mut self, node: &Node, what: &str) -> Option<Script> {
        match &node.value {
            Value::Str(s, block) if !s.trim().is_empty() => Some(Script {
                text: s.clone(),
                span: node.span,
                block: *block,
            }),
            Value::Bool(b) => Some(Script {
                text: b.to_string(),
                span: node.span,
                block: BlockStart::Inline,
            }),
            _ => {
                self.hint(
                    node.span,
                    format!(
                        "{what} must be a Rhai expression written as a string, found {}",
                        node.kind_name()
                    ),
                    "for example: `input.amount_minor > 20000`",
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Spanned<Duration>> {
        super::value::duration(self.file, node, what, &mut self.diags)
            .map(|d| Spanned::new(d, node.span))
    }

    fn uint(&mut self, node: &Node, what: &str, min: i64, max: i64) -> Option<u32> {
        super::value::whole(self.file, node, what, min, max, &mut self.diags)
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        super::value::boolean(self.file, node, what, &mut self.diags)
    }

    fn workflow(&mut self, root: &Node) -> Option<WorkflowDef> {
        let f = self.fields(root, "the workflow file", WORKFLOW_FIELDS)?;
        let name = match f.get("workflow") {
            Some(n) => self.name(n, "`workflow`"),
            None => {
                self.hint(
                    root.span,
                    "missing `workflow:` (the workflow's name)",
                    "add e.g. `workflow: refund` at the top",
                );
                None
            }
        };
        let version = match f.get("version") {
            Some(n) => self
                .uint(n, "`version`", 1, u32::MAX as i64)
                .map(|v| Spanned::new(v, n.span)),
            None => {
                self.hint(
                    root.span,
                    "missing `version:`",
                    "add `version: 1` and raise it when you change the workflow",
                );
                None
            }
        };
        let description = f
            .get("description")
            .and_then(|n| n.as_str().map(str::to_string));
        let input = f.get("input").map(|n| self.input(n)).unwrap_or_default();
        let on_error = f.get("on_error").and_then(|n| self.name(n, "`on_error`"));
        let steps = match f.get("steps") {
            Some(n) => self.steps(n, "`steps`"),
            None => {
                self.hint(
                    root.span,
                    "missing `steps:`",
                    "a workflow needs at least one step",
                );
                Vec::new()
            }
        };
        let compensations = match f.get("compensations") {
            Some(n) => self.steps(n, "`compensations`"),
            None => Vec::new(),
        };
        let triggers = f
            .get("triggers")
            .map(|n| self.triggers(n))
            .unwrap_or_default();
        let concurrency = self.concurrency(&f);
        let inbox_keep = f.get("inbox_keep").and_then(|n| {
            let d = self.duration(n, "`inbox_keep`")?;
            let ms = d.value.as_millis();
            if ms == 0 || ms > MAX_INBOX_KEEP_MS {
                self.hint(
                    n.span,
                    "`inbox_keep` must be more than 0 and at most 30d",
                    "how long an event this workflow waits for is kept when it comes before the wait, e.g. `inbox_keep: 2h`",
                );
                return None;
            }
            Some(d)
        });
        let search = f.get("search").map(|n| self.search(n)).unwrap_or_default();
        let migrate = f
            .get("migrate")
            .map(|n| self.migrations(n, version.as_ref().map(|v| v.value)))
            .unwrap_or_default();
        Some(WorkflowDef {
            file: self.file.to_string(),
            name: name?,
            version: version?,
            description,
            input,
            on_error,
            steps,
            compensations,
            triggers,
            concurrency,
            inbox_keep,
            search,
            migrate,
        })
    }

    /// `migrate:`: a list of `{from, at, to, set}` rules.
    fn migrations(&mut self, node: &Node, version: Option<u32>) -> Vec<MigrationDef> {
        let example = "for example:\n    migrate:\n      - from: 2\n        at: [wait_for_approval]\n        to: wait_for_approval";
        let Value::Seq(items) = &node.value else {
            self.hint(
                node.span,
                format!("`migrate` must be a list, found {}", node.kind_name()),
                example,
            );
            return Vec::new();
        };
        if items.len() > MAX_MIGRATIONS {
            self.hint(
                node.span,
                format!("more than {MAX_MIGRATIONS} `migrate` rules"),
                "keep rules for the versions that still have instances waiting",
            );
            return Vec::new();
        }
        let mut out: Vec<MigrationDef> = Vec::new();
        for item in items {
            let Some(f) = self.fields(item, "a `migrate` rule", MIGRATION_FIELDS) else {
                continue;
            };
            let from = match f.get("from") {
                Some(n) => self
                    .uint(n, "`from`", 1, i64::from(u32::MAX))
                    .map(|v| Spanned::new(v, n.span)),
                None => {
                    self.hint(
                        item.span,
                        "a `migrate` rule without `from`",
                        "name the older version whose instances move, e.g. `from: 2`",
                    );
                    None
                }
            };
            if let (Some(from), Some(version)) = (&from, version) {
                if from.value >= version {
                    self.hint(
                        from.span,
                        format!("`from: {}` is not older than this file's `version: {version}`", from.value),
                        "a migration moves instances of an older version to this one; raise `version:` or name an older one",
                    );
                }
                if out.iter().any(|m| m.from.value == from.value) {
                    self.hint(
                        from.span,
                        format!("a second `migrate` rule for version {}", from.value),
                        "list every step of that version in one rule's `at:`; each version has one rule",
                    );
                }
            }
            let at = match f.get("at") {
                Some(Node {
                    value: Value::Seq(steps),
                    span,
                }) => {
                    let at: Vec<_> = steps
                        .iter()
                        .filter_map(|n| self.name(n, "a step in `at`"))
                        .collect();
                    if steps.is_empty() {
                        self.hint(*span, "`at` lists no step", "name the waits of the older version where its instances may move, e.g. `at: [wait_for_approval]`");
                    }
                    at
                }
                Some(n) => {
                    self.hint(
                        n.span,
                        "`at` must be a list of step ids",
                        "for example: `at: [wait_for_approval]`",
                    );
                    Vec::new()
                }
                None => {
                    self.hint(item.span, "a `migrate` rule without `at`", "name the waits of the older version where its instances may move, e.g. `at: [wait_for_approval]`");
                    Vec::new()
                }
            };
            let to = match f.get("to") {
                Some(n) => self.name(n, "`to`"),
                None => {
                    self.hint(item.span, "a `migrate` rule without `to`", "name the step of this version the instances go on from, e.g. `to: wait_for_approval`");
                    None
                }
            };
            let mut set = Vec::new();
            if let Some(n) = f.get("set") {
                match n.as_map() {
                    Some(entries) => {
                        for (key, expr) in entries {
                            let name = Spanned::new(key.name.clone(), key.span);
                            if let Some(e) = self.script(expr, &format!("`set.{}`", key.name)) {
                                set.push((name, e));
                            }
                        }
                    }
                    None => self.hint(
                        n.span,
                        format!(
                            "`set` must map variable names to expressions, found {}",
                            n.kind_name()
                        ),
                        r#"for example: `set: { approval_tier: '"manager"' }`"#,
                    ),
                }
            }
            if let (Some(from), Some(to)) = (from, to) {
                out.push(MigrationDef { from, at, to, set });
            }
        }
        out
    }

    /// `search:`: attribute names mapped to expressions, e.g. `ticket_id: input.ticket_id`.
    fn search(&mut self, node: &Node) -> Vec<SearchDef> {
        let example =
            "for example:\n    search:\n      ticket_id: input.ticket_id\n      tier: vars.tier";
        let Some(entries) = node.as_map() else {
            self.hint(
                node.span,
                format!(
                    "`search` must map attribute names to expressions, found {}",
                    node.kind_name()
                ),
                example,
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, expr) in entries {
            let Some(name) = self.name(
                &Node {
                    span: key.span,
                    value: Value::Str(key.name.clone(), BlockStart::Inline),
                },
                "search attribute",
            ) else {
                continue;
            };
            if RESERVED_SEARCH_NAMES.contains(&name.value.as_str()) {
                self.hint(
                    key.span,
                    format!(
                        "`{}` cannot be a search attribute: the instance list already has a filter of that name",
                        name.value
                    ),
                    format!(
                        "choose another name; these are taken: {}",
                        RESERVED_SEARCH_NAMES.join(", ")
                    ),
                );
                continue;
            }
            if out.len() == MAX_SEARCH_ATTRIBUTES {
                self.hint(
                    key.span,
                    format!("more than {MAX_SEARCH_ATTRIBUTES} search attributes"),
                    "keep the attributes people look instances up by (ticket, customer, order); the rest is in the instance's data",
                );
                break;
            }
            if let Some(value) = self.script(expr, &format!("search attribute `{}`", name.value)) {
                let braced = value.text.trim();
                if braced.starts_with("${") && braced.ends_with('}') {
                    self.hint(
                        expr.span,
                        format!(
                            "search attribute `{}` is written as a template; it is an expression",
                            name.value
                        ),
                        format!(
                            "write it without `${{ }}`: `{}: {}`",
                            name.value,
                            braced[2..braced.len() - 1].trim()
                        ),
                    );
                    continue;
                }
                out.push(SearchDef { name, value });
            }
        }
        out
    }

    /// `key:` and `concurrency:` of the workflow. `key:` alone means one open instance
    /// per key, refusing the others.
    fn concurrency(&mut self, f: &Fields<'_>) -> Option<ConcurrencyDef> {
        let key = f.get("key");
        let conc = f.get("concurrency");
        let Some(key) = key else {
            if let Some(c) = conc {
                self.hint(
                    c.span,
                    "`concurrency` without a `key`",
                    "add `key: <expression>` at the top level naming what must have one open instance at a time, e.g. `key: input.ticket_id`",
                );
            }
            return None;
        };
        let key = self.script(key, "`key`");
        let mut on_conflict = Some(OnConflict::Reject);
        let mut limit = Some(1);
        if let Some(c) = conc {
            let cf = self.fields(c, "`concurrency`", CONCURRENCY_FIELDS)?;
            if let Some(l) = cf.get("limit") {
                limit = self.uint(l, "`limit`", 1, i64::from(MAX_OPEN_PER_KEY));
            }
            let event = cf.get("event").and_then(|n| self.string(n, "`event`"));
            on_conflict = match cf.get("on_conflict") {
                None => Some(OnConflict::Reject),
                Some(n) => match n.as_str() {
                    Some("reject") => Some(OnConflict::Reject),
                    Some("attach") => match event.clone() {
                        Some(event) => Some(OnConflict::Attach { event }),
                        None => {
                            self.hint(
                                n.span,
                                "`on_conflict: attach` needs an `event`",
                                "name the event the open instance receives, e.g. `event: ticket.updated`; a `wait` for it with the same key as the workflow's `key` takes it",
                            );
                            None
                        }
                    },
                    Some("queue") => Some(OnConflict::Queue),
                    _ => {
                        self.hint(
                            n.span,
                            "`on_conflict` must be `attach`, `queue` or `reject`",
                            "`attach` gives the start to the open instance as an event; `queue` starts it when the open instance finishes; `reject` refuses it with 409",
                        );
                        None
                    }
                },
            };
            if let (Some(OnConflict::Attach { .. }), Some(l @ 2..)) = (&on_conflict, limit) {
                self.hint(
                    cf.key_span("limit"),
                    format!("`limit: {l}` with `on_conflict: attach`: with several open instances there is no one instance to give the start to"),
                    "use `on_conflict: reject` to allow several open instances per key, or `limit: 1` to attach",
                );
                limit = None;
            }
            if event.is_some() && !matches!(on_conflict, Some(OnConflict::Attach { .. })) {
                self.hint(
                    cf.key_span("event"),
                    "`event` is used only with `on_conflict: attach`",
                    "remove `event`, or set `on_conflict: attach`",
                );
            }
        }
        Some(ConcurrencyDef {
            key: key?,
            on_conflict: on_conflict?,
            limit: limit?,
        })
    }

    fn triggers(&mut self, node: &Node) -> Vec<TriggerDef> {
        let Value::Seq(items) = &node.value else {
            self.hint(
                node.span,
                format!("`triggers` must be a list, found {}", node.kind_name()),
                "for example:\n    triggers:\n      - event: ticket.created\n        when: event.data.priority == \"urgent\"",
            );
            return Vec::new();
        };
        items.iter().filter_map(|item| self.trigger(item)).collect()
    }

    fn trigger(&mut self, node: &Node) -> Option<TriggerDef> {
        let f = self.fields(node, "a trigger", TRIGGER_FIELDS)?;
        let input = f.get("input").map(|n| Template { node: n.clone() });
        let source = match (f.get("event"), f.get("schedule")) {
            (Some(event), None) => {
                if f.get("timezone").is_some() {
                    self.hint(
                        f.key_span("timezone"),
                        "`timezone` belongs to a `schedule:` trigger",
                        "remove it, or make this a schedule trigger",
                    );
                }
                let window = match (f.get("count"), f.get("key")) {
                    (Some(count), key) => Some(self.window(count, key)?),
                    (None, Some(_)) => {
                        self.hint(
                            f.key_span("key"),
                            "`key` on a trigger is used with `count:`",
                            "add e.g. `count: { at_least: 10, within: 15m }` to start once when ten events with one key come within 15 minutes, or remove `key`",
                        );
                        return None;
                    }
                    (None, None) => None,
                };
                TriggerSource::Event {
                    event: self.string(event, "`event`")?,
                    when: f.get("when").and_then(|n| self.script(n, "`when`")),
                    window,
                }
            }
            (None, Some(schedule)) => {
                for field in ["count", "key"] {
                    if f.get(field).is_some() {
                        self.hint(
                            f.key_span(field),
                            format!("`{field}` belongs to an `event:` trigger"),
                            "a schedule fires at its times; remove it",
                        );
                    }
                }
                if f.get("when").is_some() {
                    self.hint(
                        f.key_span("when"),
                        "`when` belongs to an `event:` trigger",
                        "a schedule fires at its times; decide what to do in the first step",
                    );
                }
                let cron = self.string(schedule, "`schedule`")?;
                if let Err(e) = <croner::Cron as std::str::FromStr>::from_str(&cron.value) {
                    self.hint(
                        cron.span,
                        format!("`schedule` is not a valid cron pattern: {e}"),
                        "five fields: minute hour day-of-month month day-of-week, e.g. \"0 9 * * MON-FRI\" for 09:00 on weekdays",
                    );
                    return None;
                }
                let timezone = match f.get("timezone") {
                    Some(n) => self.string(n, "`timezone`")?,
                    None => {
                        self.hint(
                            node.span,
                            "a schedule trigger needs `timezone:`",
                            "name an IANA time zone, e.g. `timezone: Europe/London` (or `UTC`)",
                        );
                        return None;
                    }
                };
                if timezone.value.parse::<chrono_tz::Tz>().is_err() {
                    self.hint(
                        timezone.span,
                        format!("unknown time zone `{}`", timezone.value),
                        "use an IANA name such as Europe/London, America/New_York or UTC",
                    );
                    return None;
                }
                TriggerSource::Schedule { cron, timezone }
            }
            (Some(_), Some(_)) => {
                self.hint(
                    node.span,
                    "a trigger has both `event` and `schedule`",
                    "make two triggers: one for the event, one for the schedule",
                );
                return None;
            }
            (None, None) => {
                self.hint(
                    node.span,
                    "a trigger needs `event:` or `schedule:`",
                    "e.g. `- event: ticket.created` or `- schedule: \"0 9 * * MON-FRI\"`",
                );
                return None;
            }
        };
        Some(TriggerDef {
            span: node.span,
            source,
            input,
        })
    }

    /// `count: { at_least, within }` and the `key:` beside it.
    fn window(&mut self, count: &Node, key: Option<&Node>) -> Option<WindowDef> {
        let cf = self.fields(count, "`count`", COUNT_FIELDS)?;
        let max = i64::from(crate::daemon::window::MAX_AT_LEAST);
        let at_least = match cf.get("at_least") {
            Some(n) => self.uint(n, "`at_least`", 1, max),
            None => {
                self.hint(
                    count.span,
                    "`count` needs `at_least`",
                    "e.g. `count: { at_least: 10, within: 15m }`",
                );
                None
            }
        };
        let within = match cf.get("within") {
            Some(n) => self.duration(n, "`within`").and_then(|d| {
                if d.value.as_millis() == 0 || d.value.as_millis() > MAX_WINDOW_MS {
                    self.hint(
                        n.span,
                        "`within` must be more than 0 and at most 30d",
                        "how close together the events must come, e.g. `within: 15m`",
                    );
                    return None;
                }
                Some(d)
            }),
            None => {
                self.hint(
                    count.span,
                    "`count` needs `within`",
                    "e.g. `count: { at_least: 10, within: 15m }`",
                );
                None
            }
        };
        let key = match key {
            Some(k) => Some(self.script(k, "`key`")?),
            None => None,
        };
        Some(WindowDef {
            key,
            at_least: at_least?,
            within: within?,
        })
    }

    fn input(&mut self, node: &Node) -> Vec<InputField> {
        let Some(entries) = node.as_map() else {
            self.hint(
                node.span,
                format!(
                    "`input` must map field names to their types, found {}",
                    node.kind_name()
                ),
                "for example:\n    input:\n      order_id: { type: string, required: true }",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, spec) in entries {
            let Some(name) = self.name(
                &Node {
                    span: key.span,
                    value: Value::Str(key.name.clone(), BlockStart::Inline),
                },
                "input field",
            ) else {
                continue;
            };
            // Shorthand: `order_id: string`.
            if let Some(t) = spec.as_str() {
                match FieldType::parse(t) {
                    Some(ty) => out.push(InputField {
                        name,
                        ty,
                        required: false,
                        sensitive: false,
                        description: None,
                        one_of: Vec::new(),
                        min: None,
                        max: None,
                        default: None,
                    }),
                    None => self.unknown_type(spec.span, t),
                }
                continue;
            }
            let Some(f) = self.fields(spec, &format!("input field `{}`", name.value), INPUT_FIELDS)
            else {
                continue;
            };
            let ty = match f.get("type") {
                Some(t) => match t.as_str().and_then(FieldType::parse) {
                    Some(ty) => Some(ty),
                    None => {
                        self.unknown_type(t.span, t.as_str().unwrap_or("?"));
                        None
                    }
                },
                None => {
                    self.hint(
                        f.node.span,
                        format!("input field `{}` has no `type`", name.value),
                        format!("use one of: {}", FieldType::NAMES.join(", ")),
                    );
                    None
                }
            };
            let required = f
                .get("required")
                .and_then(|n| self.boolean(n, "`required`"))
                .unwrap_or(false);
            let sensitive = f
                .get("sensitive")
                .and_then(|n| self.boolean(n, "`sensitive`"))
                .unwrap_or(false);
            let one_of = match f.get("one_of") {
                Some(Node {
                    value: Value::Seq(items),
                    ..
                }) => items.iter().map(Node::to_json).collect(),
                Some(n) => {
                    self.err(n.span, "`one_of` must be a list of allowed values");
                    Vec::new()
                }
                None => Vec::new(),
            };
            let int = |r: &mut Self, key: &str| match f.get(key) {
                Some(Node {
                    value: Value::Int(i),
                    ..
                }) => Some(*i),
                Some(n) => {
                    r.err(
                        n.span,
                        format!("`{key}` must be a whole number, found {}", n.kind_name()),
                    );
                    None
                }
                None => None,
            };
            let min = int(self, "min");
            let max = int(self, "max");
            if let Some(ty) = ty {
                out.push(InputField {
                    name,
                    ty,
                    required,
                    sensitive,
                    description: f
                        .get("description")
                        .and_then(|n| n.as_str().map(str::to_string)),
                    one_of,
                    min,
                    max,
                    default: f.get("default").map(Node::to_json),
                });
            }
        }
        out
    }

    fn unknown_type(&mut self, span: Span, t: &str) {
        let hint = match did_you_mean(t, FieldType::NAMES) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("use one of: {}", FieldType::NAMES.join(", ")),
        };
        self.hint(span, format!("unknown type `{t}`"), hint);
    }

    fn steps(&mut self, node: &Node, what: &str) -> Vec<StepDef> {
        let Value::Seq(items) = &node.value else {
            self.hint(
                node.span,
                format!("{what} must be a list of steps, found {}", node.kind_name()),
                "start each step with `- id: ...`",
            );
            return Vec::new();
        };
        items.iter().filter_map(|n| self.step(n)).collect()
    }

    fn step(&mut self, node: &Node) -> Option<StepDef> {
        let entries = match node.as_map() {
            Some(e) => e,
            None => {
                self.hint(
                    node.span,
                    format!("a step must be a mapping, found {}", node.kind_name()),
                    "start each step with `- id: ...`",
                );
                return None;
            }
        };
        let kinds: Vec<&Key> = entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| StepKind::KEYWORDS.contains(&k.name.as_str()))
            .collect();
        let id_node = entries.iter().find(|(k, _)| k.name == "id").map(|(_, v)| v);
        let id = match id_node {
            Some(n) => self.name(n, "step `id`"),
            None => {
                self.hint(
                    node.span,
                    "step has no `id`",
                    "give every step a unique `id:`, e.g. `id: check_eligibility`",
                );
                None
            }
        };
        let label = id
            .as_ref()
            .map_or("step".to_string(), |i| format!("step `{}`", i.value));
        let kind_key = match kinds.as_slice() {
            [k] => Some((*k).clone()),
            [] => {
                self.hint(
                    node.span,
                    format!("{label} does not say what it does"),
                    format!("add exactly one of: {}", StepKind::KEYWORDS.join(", ")),
                );
                None
            }
            [_, second, ..] => {
                self.hint(
                    second.span,
                    format!(
                        "{label} has more than one kind (`{}` and `{}`)",
                        kinds[0].name, second.name
                    ),
                    "split it into two steps and link them with `next:`",
                );
                None
            }
        };
        let extra: &[&str] = match kind_key.as_ref().map(|k| k.name.as_str()) {
            Some("switch") => &["default"],
            Some("call") => &["with", "timeout", "retry"],
            Some("subworkflow") => &["with"],
            Some(k) => &[k][..0],
            None => &[],
        };
        let mut allowed: Vec<&str> = STEP_COMMON.to_vec();
        allowed.extend_from_slice(extra);
        if let Some(k) = &kind_key {
            allowed.push(
                StepKind::KEYWORDS
                    .iter()
                    .copied()
                    .find(|kw| *kw == k.name)
                    .expect("kind key is a keyword"),
            );
        } else {
            allowed.extend_from_slice(&StepKind::KEYWORDS);
        }
        let f = self.fields(node, &label, &allowed)?;
        let kind = kind_key.and_then(|k| self.step_kind(&f, &k.name, &label));
        let next = match f.get("next") {
            None => Vec::new(),
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => items
                .iter()
                .filter_map(|n| self.name(n, "`next`"))
                .collect(),
            Some(n) => self.name(n, "`next`").into_iter().collect(),
        };
        let on_error = f.get("on_error").and_then(|n| self.name(n, "`on_error`"));
        let compensate = f
            .get("compensate")
            .and_then(|n| self.name(n, "`compensate`"));
        let save_as = f.get("save_as").and_then(|n| self.name(n, "`save_as`"));
        Some(StepDef {
            id: id?,
            span: node.span,
            description: f
                .get("description")
                .and_then(|n| n.as_str().map(str::to_string)),
            kind: kind?,
            next,
            on_error,
            compensate,
            save_as,
        })
    }

    /// A `decide:` table; its cells are read by the compiler, against their column types.
    fn table(&mut self, body: &Node, label: &str) -> Option<TableDef> {
        let tf = self.fields(
            body,
            &format!("`decide` of {label}"),
            &["inputs", "outputs", "hit", "rows", "default"],
        )?;
        let mut inputs = Vec::new();
        match tf.get("inputs") {
            Some(n) => {
                let Some(entries) = n.as_map() else {
                    self.hint(
                        n.span,
                        "`inputs` must map column names to `{ type, value }`",
                        "for example `inputs: { amount: { type: integer, value: input.amount_minor } }`",
                    );
                    return None;
                };
                for (key, col) in entries {
                    let name = self.name(&Node { span: key.span, value: Value::Str(key.name.clone(), BlockStart::Inline) }, "a column name")?;
                    let cf = self.fields(col, &format!("column `{}`", key.name), &["type", "value"])?;
                    let ty = match cf.get("type") {
                        Some(t) => match t.as_str().and_then(ColumnType::parse) {
                            Some(ty) => ty,
                            None => {
                                self.hint(
                                    t.span,
                                    format!("column `{}` has an unknown type", key.name),
                                    format!("use one of: {} (money is integer minor units, e.g. 4999 for 49.99)", ColumnType::NAMES.join(", ")),
                                );
                                continue;
                            }
                        },
                        None => {
                            self.hint(col.span, format!("column `{}` has no `type`", key.name), format!("add `type:` with one of: {}", ColumnType::NAMES.join(", ")));
                            continue;
                        }
                    };
                    let value = match cf.get("value") {
                        Some(v) => self.script(v, "`value`"),
                        None => {
                            self.hint(col.span, format!("column `{}` has no `value`", key.name), "add `value: <expression>`, e.g. `value: input.amount_minor`");
                            None
                        }
                    };
                    if let Some(value) = value {
                        inputs.push(ColumnDef { name, ty, value });
                    }
                }
            }
            None => self.hint(body.span, "`decide` has no `inputs`", "name the columns the rows test, e.g. `inputs: { amount: { type: integer, value: input.amount_minor } }`"),
        }
        let outputs: Vec<Spanned<String>> = match tf.get("outputs") {
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => items
                .iter()
                .filter_map(|n| self.name(n, "an output column"))
                .collect(),
            Some(n) => self.name(n, "an output column").into_iter().collect(),
            None => {
                self.hint(
                    body.span,
                    "`decide` has no `outputs`",
                    "list the variables the table sets, e.g. `outputs: [tier, reason]`",
                );
                Vec::new()
            }
        };
        let hit = match tf.get("hit") {
            None => HitPolicy::First,
            Some(h) => match h.as_str() {
                Some("first") => HitPolicy::First,
                Some("unique") => HitPolicy::Unique,
                Some("collect") => HitPolicy::Collect,
                _ => {
                    self.hint(h.span, "unknown `hit` policy", "use `first` (the first row that matches, the default), `unique` (exactly one row matches any input, checked at load) or `collect` (every row that matches)");
                    return None;
                }
            },
        };
        let row = |r: &mut Self, n: &Node, what: &str| -> Option<RowDef> {
            let Some(entries) = n.as_map() else {
                r.hint(
                    n.span,
                    format!("{what} must be a mapping of column: value"),
                    "for example `- { amount: \"< 5000\", tier: agent }`",
                );
                return None;
            };
            Some(RowDef {
                span: n.span,
                cells: entries
                    .iter()
                    .map(|(k, v)| (Spanned::new(k.name.clone(), k.span), v.clone()))
                    .collect(),
            })
        };
        let (rows, rows_span) = match tf.get("rows") {
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => (
                items.iter().filter_map(|n| row(self, n, "a row")).collect(),
                tf.key_span("rows"),
            ),
            Some(n) => {
                self.hint(
                    n.span,
                    "`rows` must be a list",
                    "write one `- { column: condition, ..., output: value }` per row",
                );
                return None;
            }
            None => {
                self.hint(
                    body.span,
                    "`decide` has no `rows`",
                    "add `rows:` with one `- { column: condition, ..., output: value }` per row",
                );
                return None;
            }
        };
        let default = tf.get("default").and_then(|n| row(self, n, "`default`"));
        if inputs.is_empty() || outputs.is_empty() {
            return None;
        }
        Some(TableDef {
            span: body.span,
            inputs,
            outputs,
            hit,
            rows,
            rows_span,
            default,
        })
    }

    fn step_kind(&mut self, f: &Fields<'_>, kind: &str, label: &str) -> Option<StepKind> {
        let body = f.get(kind).expect("kind key present");
        match kind {
            "rule" => Some(StepKind::Rule {
                script: self.script(body, "`rule`")?,
            }),
            "decide" => self.table(body, label).map(StepKind::Decide),
            "switch" => {
                let Value::Seq(items) = &body.value else {
                    self.hint(
                        body.span,
                        "`switch` must be a list of cases",
                        "write cases as `- when: <expression>` with `goto: <step id>`",
                    );
                    return None;
                };
                let mut cases = Vec::new();
                for item in items {
                    let Some(cf) = self.fields(item, "a switch case", &["when", "goto"]) else {
                        continue;
                    };
                    let when = match cf.get("when") {
                        Some(n) => self.script(n, "`when`"),
                        None => {
                            self.hint(
                                item.span,
                                "switch case has no `when`",
                                "add `when: <expression>`",
                            );
                            None
                        }
                    };
                    let goto = match cf.get("goto") {
                        Some(n) => self.name(n, "`goto`"),
                        None => {
                            self.hint(
                                item.span,
                                "switch case has no `goto`",
                                "add `goto: <step id>`",
                            );
                            None
                        }
                    };
                    if let (Some(when), Some(goto)) = (when, goto) {
                        cases.push(Case { when, goto });
                    }
                }
                let default = f.get("default").and_then(|n| self.name(n, "`default`"));
                Some(StepKind::Switch { cases, default })
            }
            "call" => {
                let target = self.string(body, "`call`")?;
                let Some((plugin, action)) = target.value.split_once('.') else {
                    self.hint(
                        body.span,
                        format!("`call: {}` must name a plugin action", target.value),
                        "write `plugin.action`, e.g. `payments.refund`",
                    );
                    return None;
                };
                let retry = f.get("retry").and_then(|n| self.retry(n));
                let timeout = f.get("timeout").and_then(|n| self.duration(n, "`timeout`"));
                let col = body.span.col + plugin.len() as u32 + 1;
                Some(StepKind::Call {
                    plugin: Spanned::new(plugin.to_string(), body.span),
                    action: Spanned::new(action.to_string(), Span::new(body.span.line, col)),
                    with: f.get("with").map(|n| Template { node: n.clone() }),
                    timeout,
                    retry,
                })
            }
            "wait" => {
                let wf = self.fields(
                    body,
                    &format!("`wait` of {label}"),
                    &[
                        "event",
                        "key",
                        "timeout",
                        "until",
                        "on_timeout",
                        "write_only",
                    ],
                )?;
                let events = match wf.get("event") {
                    Some(Node {
                        value: Value::Seq(items),
                        ..
                    }) => items
                        .iter()
                        .filter_map(|n| self.string(n, "`event`"))
                        .collect(),
                    Some(n) => self.string(n, "`event`").into_iter().collect(),
                    None => {
                        self.hint(
                            body.span,
                            "`wait` has no `event`",
                            "name the event type to wait for, e.g. `event: approval.granted`",
                        );
                        Vec::new()
                    }
                };
                let key = match wf.get("key") {
                    Some(n) => self.script(n, "`key`"),
                    None => {
                        self.hint(
                            body.span,
                            "`wait` has no `key`",
                            "add `key: <expression>` that identifies this case, e.g. `key: input.order_id`, so events for other cases do not wake it",
                        );
                        None
                    }
                };
                let timeout = wf
                    .get("timeout")
                    .and_then(|n| self.duration(n, "`timeout`"));
                let on_timeout = wf
                    .get("on_timeout")
                    .and_then(|n| self.name(n, "`on_timeout`"));
                let until = wf.get("until").and_then(|n| self.script(n, "`until`"));
                if timeout.is_some() && until.is_some() {
                    self.hint(
                        wf.key_span("until"),
                        "a `wait` has both `timeout` and `until`",
                        "keep one: `timeout: 72h` waits a duration, `until: <expression>` waits until an instant (e.g. an SLA deadline)",
                    );
                }
                if on_timeout.is_some() && timeout.is_none() && until.is_none() {
                    self.hint(
                        wf.key_span("on_timeout"),
                        "`on_timeout` without a `timeout`",
                        "add `timeout: 72h` (or another duration), or `until: <expression>`",
                    );
                }
                let write_only = match wf.get("write_only") {
                    Some(Node {
                        value: Value::Seq(items),
                        ..
                    }) => items
                        .iter()
                        .filter_map(|n| self.name(n, "a `write_only` field"))
                        .collect(),
                    Some(n) => {
                        self.hint(
                            n.span,
                            "`write_only` must be a list of the event's data fields",
                            "for example: `write_only: [code]` for an event whose `data` has a one-time `code`",
                        );
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                Some(StepKind::Wait {
                    events,
                    key: key?,
                    timeout,
                    until,
                    on_timeout,
                    write_only,
                })
            }
            "sleep" => match &body.value {
                Value::Str(..) | Value::Int(_) => Some(StepKind::Sleep(SleepFor::Duration(
                    self.duration(body, "`sleep`")?,
                ))),
                Value::Map(_) => {
                    let sf = self.fields(body, "`sleep`", &["until"])?;
                    let until = sf.get("until").and_then(|n| self.script(n, "`until`"));
                    if until.is_none() && sf.get("until").is_none() {
                        self.hint(
                            body.span,
                            "`sleep` needs a duration or `until:`",
                            "write `sleep: 5m` or `sleep: { until: <expression> }`",
                        );
                    }
                    Some(StepKind::Sleep(SleepFor::Until(until?)))
                }
                _ => {
                    self.hint(
                        body.span,
                        "`sleep` needs a duration or `until:`",
                        "write `sleep: 5m` or `sleep: { until: <expression> }`",
                    );
                    None
                }
            },
            "parallel" => {
                let pf = self.fields(
                    body,
                    &format!("`parallel` of {label}"),
                    &["join", "branches"],
                )?;
                let join = match pf.get("join").map(|n| (n, n.as_str())) {
                    None => Join::All,
                    Some((_, Some("all"))) => Join::All,
                    Some((_, Some("first"))) => Join::First,
                    Some((n, _)) => {
                        self.hint(n.span, "`join` must be `all` or `first`", "`all` waits for every branch; `first` continues when one finishes and cancels the rest");
                        Join::All
                    }
                };
                let mut branches = Vec::new();
                match pf.get("branches") {
                    Some(Node {
                        value: Value::Seq(items),
                        ..
                    }) => {
                        for item in items {
                            let Some(bf) = self.fields(item, "a branch", &["id", "steps"]) else {
                                continue;
                            };
                            let id = bf.get("id").and_then(|n| self.name(n, "branch `id`"));
                            let steps = match bf.get("steps") {
                                Some(n) => self.steps(n, "branch `steps`"),
                                None => {
                                    self.hint(
                                        item.span,
                                        "branch has no `steps`",
                                        "give each branch a `steps:` list",
                                    );
                                    Vec::new()
                                }
                            };
                            match id {
                                Some(id) => branches.push(Branch { id, steps }),
                                None if bf.get("id").is_none() => {
                                    self.hint(item.span, "branch has no `id`", "add `id: <name>`")
                                }
                                None => {}
                            }
                        }
                    }
                    Some(n) => self.hint(
                        n.span,
                        "`branches` must be a list",
                        "write `- id: ...` with `steps:` for each branch",
                    ),
                    None => self.hint(
                        body.span,
                        "`parallel` has no `branches`",
                        "add `branches:` with at least two branches",
                    ),
                }
                Some(StepKind::Parallel { join, branches })
            }
            "foreach" => {
                let ff = self.fields(
                    body,
                    &format!("`foreach` of {label}"),
                    &["items", "as", "concurrency", "steps"],
                )?;
                let items = match ff.get("items") {
                    Some(n) => self.script(n, "`items`"),
                    None => {
                        self.hint(body.span, "`foreach` has no `items`", "add `items: <expression giving a list>`, e.g. `items: vars.responders`");
                        None
                    }
                };
                let item_name = match ff.get("as") {
                    Some(n) => self.name(n, "`as`"),
                    None => Some(Spanned::new("item".to_string(), body.span)),
                };
                let concurrency = ff
                    .get("concurrency")
                    .and_then(|n| self.uint(n, "`concurrency`", 1, 64))
                    .unwrap_or(1);
                let steps = match ff.get("steps") {
                    Some(n) => self.steps(n, "`foreach` steps"),
                    None => {
                        self.hint(
                            body.span,
                            "`foreach` has no `steps`",
                            "add the `steps:` to run for each item",
                        );
                        Vec::new()
                    }
                };
                Some(StepKind::Foreach {
                    items: items?,
                    item_name: item_name?,
                    concurrency,
                    steps,
                })
            }
            "set" => {
                if body.as_map().is_none() {
                    self.hint(body.span, "`set` must map variable names to values", "for example: `set: { status: approved, amount: \"${input.amount_minor}\" }`");
                    return None;
                }
                Some(StepKind::Set {
                    values: Template { node: body.clone() },
                })
            }
            "subworkflow" => Some(StepKind::Subworkflow {
                workflow: self.name(body, "`subworkflow`")?,
                with: f.get("with").map(|n| Template { node: n.clone() }),
            }),
            "complete" => Some(StepKind::Complete {
                output: match &body.value {
                    Value::Null | Value::Bool(true) => None,
                    Value::Map(_) => {
                        let cf = self.fields(body, "`complete`", &["output"])?;
                        cf.get("output").map(|n| Template { node: n.clone() })
                    }
                    _ => {
                        self.hint(body.span, "`complete` takes an optional `output:`", "write `complete: {}` or `complete: { output: { refund_id: \"${vars.refund.id}\" } }`");
                        return None;
                    }
                },
            }),
            "fail" => {
                let ff = self.fields(body, "`fail`", &["code", "message"])?;
                let code = ff
                    .get("code")
                    .and_then(|n| self.name(n, "`code`"))
                    .map(|s| s.value);
                let message = match ff.get("message") {
                    Some(n) => Template { node: n.clone() },
                    None => {
                        self.hint(
                            body.span,
                            "`fail` has no `message`",
                            "say why the workflow fails, e.g. `message: refund window has passed`",
                        );
                        return None;
                    }
                };
                Some(StepKind::Fail {
                    code: code.unwrap_or_else(|| "failed".into()),
                    message,
                })
            }
            _ => unreachable!("kind keys are filtered against StepKind::KEYWORDS"),
        }
    }

    fn retry(&mut self, node: &Node) -> Option<Retry> {
        let f = self.fields(
            node,
            "`retry`",
            &[
                "max_attempts",
                "backoff",
                "multiplier",
                "max_delay",
                "jitter",
                "on",
            ],
        )?;
        let mut r = Retry {
            span: node.span,
            max_attempts: 3,
            ..Retry::default()
        };
        if let Some(n) = f.get("max_attempts") {
            r.max_attempts = self.uint(n, "`max_attempts`", 1, 100)?;
        }
        if let Some(n) = f.get("backoff") {
            r.backoff = self.duration(n, "`backoff`")?.value;
        }
        if let Some(n) = f.get("multiplier") {
            r.multiplier = self.uint(n, "`multiplier`", 1, 10)?;
        }
        if let Some(n) = f.get("max_delay") {
            r.max_delay = self.duration(n, "`max_delay`")?.value;
        }
        if let Some(n) = f.get("jitter") {
            let text = n.as_str().unwrap_or("");
            match text
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| *p <= 100)
            {
                Some(p) => r.jitter_percent = p,
                None => {
                    self.hint(
                        n.span,
                        "`jitter` must be a percentage",
                        "write e.g. `jitter: 20%` (0% turns it off)",
                    );
                    return None;
                }
            }
        }
        if let Some(n) = f.get("on") {
            r.on = match &n.value {
                Value::Seq(items) => items
                    .iter()
                    .filter_map(|i| self.string(i, "`on`").map(|s| s.value))
                    .collect(),
                _ => {
                    self.hint(
                        n.span,
                        "`on` must be a list of error codes",
                        "e.g. `on: [retryable, timeout, rate_limited]`",
                    );
                    return None;
                }
            };
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        read("wf.yaml", text)
            .1
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn reads_a_small_workflow() {
        let (def, diags) = read(
            "wf.yaml",
            "workflow: demo\nversion: 1\nsteps:\n  - id: a\n    rule: vars.x = 1\n    next: b\n  - id: b\n    complete: {}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let def = def.unwrap();
        assert_eq!(def.name.value, "demo");
        assert_eq!(def.steps.len(), 2);
        assert_eq!(def.steps[0].next[0].value, "b");
    }

    #[test]
    fn unknown_field_suggests_the_right_one() {
        let errs = errors("workflow: demo\nversion: 1\nstpes: []\n");
        assert!(
            errs[0].starts_with("wf.yaml:3:1: error: unknown field `stpes`"),
            "{errs:?}"
        );
        assert!(errs[0].contains("did you mean `steps`?"));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let errs = errors("workflow: demo\nversion: one\nsteps:\n  - id: a\n    rule: vars.x = 1\n    nxt: b\n  - id: b\n    sleep: 5\n");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("wf.yaml:2:10:"));
        assert!(errs[1].starts_with("wf.yaml:6:5: error: unknown field `nxt`"));
        assert!(errs[2].starts_with("wf.yaml:8:12: error: `sleep` needs a unit"));
    }
}
