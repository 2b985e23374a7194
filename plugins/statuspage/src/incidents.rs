//! The three incident actions. Inputs and outputs are our types; Statuspage's documents
//! are read into separate ones, fields used here only.

use crate::api;
use casework_sdk::http::Method;
use casework_sdk::{log, Context, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The statuses an incident goes through, as customers see them.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

/// How a component is shown on the page.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ComponentStatus {
    Operational,
    DegradedPerformance,
    PartialOutage,
    MajorOutage,
    UnderMaintenance,
}

/// The incident's impact, when it should not follow from the components.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    None,
    Minor,
    Major,
    Critical,
}

fn yes() -> bool {
    true
}

fn investigating() -> IncidentStatus {
    IncidentStatus::Investigating
}

/// Input of `create_incident`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInput {
    /// The incident's title, e.g. `Login failures`.
    pub name: String,
    /// Where it starts (not `resolved`).
    #[serde(default = "investigating")]
    pub status: IncidentStatus,
    /// The first message customers read.
    pub body: String,
    #[serde(default)]
    pub impact: Option<Impact>,
    /// Component id → how it is shown while the incident is open.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Tell the page's subscribers (email, SMS, webhooks).
    #[serde(default = "yes")]
    pub notify_subscribers: bool,
}

/// Input of `update_incident`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInput {
    pub incident_id: String,
    /// The new status (use `resolve_incident` to resolve).
    pub status: IncidentStatus,
    /// The update's message.
    pub body: String,
    #[serde(default)]
    pub components: BTreeMap<String, ComponentStatus>,
    #[serde(default = "yes")]
    pub notify_subscribers: bool,
}

/// Input of `resolve_incident`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveInput {
    pub incident_id: String,
    /// The closing message.
    pub body: String,
    /// Components to show as operational again.
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default = "yes")]
    pub notify_subscribers: bool,
}

/// An incident after the action.
#[derive(Debug, Serialize, JsonSchema)]
pub struct IncidentOutput {
    pub incident_id: String,
    pub status: String,
    /// The incident's short public link, when Statuspage gives one.
    pub shortlink: Option<String>,
    /// The action had been done already (a retry): nothing was sent this time.
    pub replayed: bool,
}

/// Statuspage's incident document (fields used here).
#[derive(Deserialize)]
struct Incident {
    id: String,
    status: String,
    #[serde(default)]
    shortlink: Option<String>,
    #[serde(default)]
    metadata: Value,
    /// Newest first.
    #[serde(default)]
    incident_updates: Vec<IncidentUpdate>,
}

#[derive(Deserialize)]
struct IncidentUpdate {
    status: String,
    #[serde(default)]
    body: Option<String>,
}

impl Incident {
    fn output(self, replayed: bool) -> IncidentOutput {
        IncidentOutput {
            incident_id: self.id,
            status: self.status,
            shortlink: self.shortlink,
            replayed,
        }
    }

    /// Whether its newest update is this status and message.
    fn last_update_is(&self, status: IncidentStatus, body: &str) -> bool {
        self.incident_updates
            .first()
            .is_some_and(|u| u.status == status_text(status) && u.body.as_deref() == Some(body))
    }
}

fn status_text(s: IncidentStatus) -> &'static str {
    match s {
        IncidentStatus::Investigating => "investigating",
        IncidentStatus::Identified => "identified",
        IncidentStatus::Monitoring => "monitoring",
        IncidentStatus::Resolved => "resolved",
    }
}

fn not_empty(value: &str, field: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(Error::invalid_input(format!("`{field}` must not be empty")))
    } else {
        Ok(())
    }
}

/// `components` and the `component_ids` Statuspage wants beside them.
fn component_fields(
    incident: &mut serde_json::Map<String, Value>,
    components: &BTreeMap<String, ComponentStatus>,
) {
    if components.is_empty() {
        return;
    }
    incident.insert(
        "component_ids".into(),
        json!(components.keys().collect::<Vec<_>>()),
    );
    incident.insert("components".into(), json!(components));
}

fn fetch(id: &str) -> Result<Incident> {
    api::send(
        api::request(Method::Get, &api::incident_path(id))?,
        "reading the incident",
    )
}

pub fn create(input: CreateInput, ctx: &Context) -> Result<IncidentOutput> {
    not_empty(&input.name, "name")?;
    not_empty(&input.body, "body")?;
    if input.status == IncidentStatus::Resolved {
        return Err(Error::invalid_input(
            "an incident is opened as investigating, identified or monitoring, not resolved",
        ));
    }
    // Statuspage takes no idempotency key: find this step's incident if an earlier try
    // opened it (the key is in its metadata), before opening one.
    let open: Vec<Incident> = api::send(
        api::request(Method::Get, "/incidents/unresolved")?,
        "listing the unresolved incidents",
    )?;
    if let Some(found) = open
        .into_iter()
        .find(|i| i.metadata["casework"]["idempotency_key"] == ctx.idempotency_key.as_str())
    {
        log::info(format_args!(
            "incident {} was opened by an earlier try",
            found.id
        ));
        return Ok(found.output(true));
    }
    let mut incident = serde_json::Map::new();
    incident.insert("name".into(), json!(input.name));
    incident.insert("status".into(), json!(input.status));
    incident.insert("body".into(), json!(input.body));
    if let Some(impact) = input.impact {
        incident.insert("impact_override".into(), json!(impact));
    }
    component_fields(&mut incident, &input.components);
    incident.insert(
        "deliver_notifications".into(),
        json!(input.notify_subscribers),
    );
    incident.insert(
        "metadata".into(),
        json!({"casework": {"idempotency_key": ctx.idempotency_key}}),
    );
    let created: Incident = api::send(
        api::request(Method::Post, "/incidents")?.json(&json!({ "incident": incident })),
        "opening the incident",
    )?;
    log::info(format_args!(
        "incident {} opened ({})",
        created.id, created.status
    ));
    Ok(created.output(false))
}

pub fn update(input: UpdateInput, _ctx: &Context) -> Result<IncidentOutput> {
    not_empty(&input.incident_id, "incident_id")?;
    not_empty(&input.body, "body")?;
    if input.status == IncidentStatus::Resolved {
        return Err(Error::invalid_input(
            "use `resolve_incident` to resolve an incident",
        ));
    }
    let current = fetch(&input.incident_id)?;
    if current.last_update_is(input.status, &input.body) {
        return Ok(current.output(true));
    }
    if current.status == "resolved" {
        return Err(Error::permanent(
            "incident_resolved",
            format!("incident {} is resolved; open a new one", input.incident_id),
        ));
    }
    let mut incident = serde_json::Map::new();
    incident.insert("status".into(), json!(input.status));
    incident.insert("body".into(), json!(input.body));
    component_fields(&mut incident, &input.components);
    incident.insert(
        "deliver_notifications".into(),
        json!(input.notify_subscribers),
    );
    let updated: Incident = api::send(
        api::request(Method::Patch, &api::incident_path(&input.incident_id))?
            .json(&json!({ "incident": incident })),
        "updating the incident",
    )?;
    Ok(updated.output(false))
}

pub fn resolve(input: ResolveInput, _ctx: &Context) -> Result<IncidentOutput> {
    not_empty(&input.incident_id, "incident_id")?;
    not_empty(&input.body, "body")?;
    let current = fetch(&input.incident_id)?;
    if current.status == "resolved" {
        return Ok(current.output(true));
    }
    let mut incident = serde_json::Map::new();
    incident.insert("status".into(), json!("resolved"));
    incident.insert("body".into(), json!(input.body));
    let back: BTreeMap<String, ComponentStatus> = input
        .components
        .iter()
        .map(|c| (c.clone(), ComponentStatus::Operational))
        .collect();
    component_fields(&mut incident, &back);
    incident.insert(
        "deliver_notifications".into(),
        json!(input.notify_subscribers),
    );
    let resolved: Incident = api::send(
        api::request(Method::Patch, &api::incident_path(&input.incident_id))?
            .json(&json!({ "incident": incident })),
        "resolving the incident",
    )?;
    log::info(format_args!("incident {} resolved", resolved.id));
    Ok(resolved.output(false))
}

#[cfg(test)]
mod tests {
    use crate::Statuspage;
    use casework_sdk::http::{Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::{json, Value};

    const BASE: &str = "http://127.0.0.1:18130/v1/pages/pg_1";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("statuspage_base_url", "http://127.0.0.1:18130/");
        host.config("page_id", "pg_1");
        host.secret("statuspage_api_key", "sp_SECRET_key");
        host
    }

    fn incident(id: &str, status: &str, key: Option<&str>, updates: Value) -> Value {
        json!({"id": id, "name": "Login failures", "status": status, "shortlink": "https://stspg.io/x1",
               "metadata": key.map(|k| json!({"casework": {"idempotency_key": k}})).unwrap_or(json!({})),
               "incident_updates": updates})
    }

    #[test]
    fn create_sends_the_incident_with_its_key_in_metadata() {
        let host = host();
        host.respond(
            Method::Get,
            &format!("{BASE}/incidents/unresolved"),
            Response::from_json(
                200,
                &json!([incident(
                    "other",
                    "investigating",
                    Some("someone-else"),
                    json!([])
                )]),
            ),
        );
        host.respond(
            Method::Post,
            &format!("{BASE}/incidents"),
            Response::from_json(
                201,
                &incident("inc_1", "investigating", Some("inst-1:step-1"), json!([])),
            ),
        );
        let out = host
            .invoke::<Statuspage>(
                "create_incident",
                &json!({
                "name": "Login failures", "body": "We are looking into failed logins.",
                "impact": "major", "components": {"cmp_login": "major_outage"}}),
            )
            .unwrap();
        assert_eq!(
            out,
            json!({"incident_id": "inc_1", "status": "investigating", "shortlink": "https://stspg.io/x1", "replayed": false})
        );
        let sent = &host.requests()[1];
        assert_eq!(sent.header("authorization"), Some("OAuth sp_SECRET_key"));
        assert_eq!(
            sent.body_json(),
            json!({"incident": {
            "name": "Login failures", "status": "investigating", "body": "We are looking into failed logins.",
            "impact_override": "major", "component_ids": ["cmp_login"], "components": {"cmp_login": "major_outage"},
            "deliver_notifications": true, "metadata": {"casework": {"idempotency_key": "inst-1:step-1"}}}})
        );
        assert!(host.logs().iter().all(|l| !l.message.contains("SECRET")));
    }

    #[test]
    fn a_retried_create_finds_its_incident_and_opens_none() {
        let host = host();
        host.respond(
            Method::Get,
            &format!("{BASE}/incidents/unresolved"),
            Response::from_json(
                200,
                &json!([incident(
                    "inc_1",
                    "investigating",
                    Some("inst-1:step-1"),
                    json!([])
                )]),
            ),
        );
        let out = host
            .invoke::<Statuspage>(
                "create_incident",
                &json!({"name": "Login failures", "body": "b"}),
            )
            .unwrap();
        assert_eq!(out["replayed"], json!(true));
        assert_eq!(out["incident_id"], "inc_1");
        assert_eq!(host.requests().len(), 1, "only the lookup");
    }

    #[test]
    fn an_update_already_posted_is_not_posted_again() {
        let host = host();
        let url = format!("{BASE}/incidents/inc_1");
        host.respond(
            Method::Get,
            &url,
            Response::from_json(
                200,
                &incident(
                    "inc_1",
                    "investigating",
                    None,
                    json!([
            {"status": "investigating", "body": "first"}]),
                ),
            ),
        );
        host.respond(
            Method::Patch,
            &url,
            Response::from_json(
                200,
                &incident(
                    "inc_1",
                    "identified",
                    None,
                    json!([
            {"status": "identified", "body": "Found it."}]),
                ),
            ),
        );
        let input = json!({"incident_id": "inc_1", "status": "identified", "body": "Found it.", "components": {"cmp_login": "partial_outage"}});
        let out = host
            .invoke::<Statuspage>("update_incident", &input)
            .unwrap();
        assert_eq!(out["replayed"], json!(false));
        assert_eq!(
            host.requests()[1].body_json(),
            json!({"incident": {
            "status": "identified", "body": "Found it.", "component_ids": ["cmp_login"],
            "components": {"cmp_login": "partial_outage"}, "deliver_notifications": true}})
        );
        // Retried: the newest update is this one.
        let host2 = self::host();
        host2.respond(Method::Get, &url, Response::from_json(200, &incident("inc_1", "identified", None, json!([
            {"status": "identified", "body": "Found it."}, {"status": "investigating", "body": "first"}]))));
        let out = host2
            .invoke::<Statuspage>("update_incident", &input)
            .unwrap();
        assert_eq!(out["replayed"], json!(true));
        assert_eq!(host2.requests().len(), 1);
    }

    #[test]
    fn resolving_sets_components_operational_and_a_resolved_incident_is_left_alone() {
        let host = host();
        let url = format!("{BASE}/incidents/inc_1");
        host.respond(
            Method::Get,
            &url,
            Response::from_json(200, &incident("inc_1", "monitoring", None, json!([]))),
        );
        host.respond(
            Method::Patch,
            &url,
            Response::from_json(200, &incident("inc_1", "resolved", None, json!([]))),
        );
        let out = host
            .invoke::<Statuspage>(
                "resolve_incident",
                &json!({"incident_id": "inc_1", "body": "Fixed.", "components": ["cmp_login"]}),
            )
            .unwrap();
        assert_eq!(out["status"], "resolved");
        assert_eq!(
            host.requests()[1].body_json(),
            json!({"incident": {
            "status": "resolved", "body": "Fixed.", "component_ids": ["cmp_login"],
            "components": {"cmp_login": "operational"}, "deliver_notifications": true}})
        );
        let host = self::host();
        host.respond(
            Method::Get,
            &url,
            Response::from_json(200, &incident("inc_1", "resolved", None, json!([]))),
        );
        let out = host
            .invoke::<Statuspage>(
                "resolve_incident",
                &json!({"incident_id": "inc_1", "body": "Fixed."}),
            )
            .unwrap();
        assert_eq!(out["replayed"], json!(true));
        assert_eq!(host.requests().len(), 1);
    }

    #[test]
    fn failures_map_to_retryable_or_permanent_without_the_key() {
        for (status, code, retryable) in [
            (401, "authentication_failed", false),
            (403, "permission_denied", false),
            (404, "not_found", false),
            (420, "rate_limited", true),
            (429, "rate_limited", true),
            (503, "provider_unavailable", true),
            (422, "invalid_request", false),
        ] {
            let host = host();
            host.respond(
                Method::Get,
                &format!("{BASE}/incidents/inc_1"),
                Response::from_json(status, &json!({"error": "nope"})),
            );
            let err = host
                .invoke::<Statuspage>(
                    "resolve_incident",
                    &json!({"incident_id": "inc_1", "body": "b"}),
                )
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}"
            );
            assert!(!err.message().contains("SECRET"));
        }
        let host = FakeHost::new();
        host.secret("statuspage_api_key", "k");
        host.config("page_id", "");
        let err = host
            .invoke::<Statuspage>("create_incident", &json!({"name": "n", "body": "b"}))
            .unwrap_err();
        assert_eq!(err.code(), "config_missing");
        let err = self::host()
            .invoke::<Statuspage>(
                "create_incident",
                &json!({"name": "n", "body": "b", "status": "resolved"}),
            )
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
    }
}
