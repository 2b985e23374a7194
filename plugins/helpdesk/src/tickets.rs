//! `update_ticket` and `link_to_problem`. Inputs and outputs are our types; Zendesk's
//! ticket document is read into a separate one, fields used here only.

use crate::zendesk;
use casework_sdk::http::Method;
use casework_sdk::{log, Context, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Zendesk's ticket statuses an update may set.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    New,
    Open,
    Pending,
    Hold,
    Solved,
    Closed,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

/// Input of `update_ticket`: every field but the ticket is optional; at least one is given.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInput {
    /// Zendesk's ticket id, e.g. `35436` (text or a number).
    pub ticket_id: Value,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub priority: Option<Priority>,
    /// The group the ticket is assigned to (Zendesk's numeric group id).
    #[serde(default)]
    pub group_id: Option<u64>,
    #[serde(default)]
    pub add_tags: Vec<String>,
    #[serde(default)]
    pub remove_tags: Vec<String>,
    /// An internal note for the agents (never shown to the customer).
    #[serde(default)]
    pub note: Option<String>,
}

/// Input of `link_to_problem`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkInput {
    /// The follow-up ticket.
    pub ticket_id: Value,
    /// The problem ticket that tracks the outage.
    pub problem_id: Value,
}

/// The ticket after the change.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TicketOutput {
    pub ticket_id: u64,
    pub status: String,
    pub priority: Option<String>,
    pub group_id: Option<u64>,
    pub tags: Vec<String>,
    /// A note was given and added by this call.
    pub note_added: bool,
    /// A note was given and an earlier try had added it already.
    pub note_replayed: bool,
}

#[derive(Deserialize)]
struct TicketEnvelope {
    ticket: Ticket,
}

#[derive(Deserialize)]
struct Ticket {
    id: u64,
    status: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    group_id: Option<u64>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct Comments {
    comments: Vec<Comment>,
}

#[derive(Deserialize)]
struct Comment {
    #[serde(default)]
    body: String,
}

/// A ticket id as Zendesk's number: `35436` or `"35436"`.
fn ticket_number(v: &Value, field: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or_else(|| {
        Error::invalid_input(format!(
            "`{field}` must be a Zendesk ticket number, e.g. 35436"
        ))
    })
}

/// The line that ends a note: what a retry looks for.
fn marker(ctx: &Context) -> String {
    format!("(casework {})", ctx.idempotency_key)
}

fn output(t: Ticket, note_added: bool, note_replayed: bool) -> TicketOutput {
    TicketOutput {
        ticket_id: t.id,
        status: t.status,
        priority: t.priority,
        group_id: t.group_id,
        tags: t.tags,
        note_added,
        note_replayed,
    }
}

pub fn update(input: UpdateInput, ctx: &Context) -> Result<TicketOutput> {
    let id = ticket_number(&input.ticket_id, "ticket_id")?;
    let note = input
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if input.status.is_none()
        && input.priority.is_none()
        && input.group_id.is_none()
        && input.add_tags.is_empty()
        && input.remove_tags.is_empty()
        && note.is_none()
    {
        return Err(Error::invalid_input(
            "say what changes: status, priority, group_id, add_tags, remove_tags or note",
        ));
    }
    let mut ticket = Map::new();
    if let Some(s) = input.status {
        ticket.insert("status".into(), json!(s));
    }
    if let Some(p) = input.priority {
        ticket.insert("priority".into(), json!(p));
    }
    if let Some(g) = input.group_id {
        ticket.insert("group_id".into(), json!(g));
    }
    if !input.add_tags.is_empty() {
        ticket.insert("additional_tags".into(), json!(input.add_tags));
    }
    if !input.remove_tags.is_empty() {
        ticket.insert("remove_tags".into(), json!(input.remove_tags));
    }
    let mut replayed = false;
    if let Some(note) = note {
        let marker = marker(ctx);
        // An earlier try may have added it (its answer lost): look among the newest.
        let recent: Comments = zendesk::send(
            zendesk::request(
                Method::Get,
                &format!("/api/v2/tickets/{id}/comments.json?sort_order=desc&per_page=100"),
            )?,
            "reading the ticket's comments",
        )?;
        replayed = recent.comments.iter().any(|c| c.body.contains(&marker));
        if !replayed {
            ticket.insert(
                "comment".into(),
                json!({"body": format!("{note}\n\n{marker}"), "public": false}),
            );
        }
    }
    let answer: TicketEnvelope = if ticket.is_empty() {
        // Only the note was asked for, and it is there already.
        zendesk::send(
            zendesk::request(Method::Get, &format!("/api/v2/tickets/{id}.json"))?,
            "reading the ticket",
        )?
    } else {
        zendesk::send(
            zendesk::request(Method::Put, &format!("/api/v2/tickets/{id}.json"))?
                .json(&json!({ "ticket": ticket })),
            "updating the ticket",
        )?
    };
    log::info(format_args!(
        "ticket {id} updated: status {}, group {:?}",
        answer.ticket.status, answer.ticket.group_id
    ));
    Ok(output(answer.ticket, note.is_some() && !replayed, replayed))
}

pub fn link(input: LinkInput, _ctx: &Context) -> Result<TicketOutput> {
    let id = ticket_number(&input.ticket_id, "ticket_id")?;
    let problem = ticket_number(&input.problem_id, "problem_id")?;
    if id == problem {
        return Err(Error::invalid_input(
            "a ticket cannot be an incident of itself",
        ));
    }
    let answer: TicketEnvelope = zendesk::send(
        zendesk::request(Method::Put, &format!("/api/v2/tickets/{id}.json"))?
            .json(&json!({"ticket": {"type": "incident", "problem_id": problem}})),
        "linking the ticket to its problem",
    )?;
    Ok(output(answer.ticket, false, false))
}

#[cfg(test)]
mod tests {
    use crate::Helpdesk;
    use casework_sdk::http::{Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::{json, Value};

    const BASE: &str = "http://127.0.0.1:18140/api/v2/tickets";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("zendesk_base_url", "http://127.0.0.1:18140/");
        host.config("zendesk_email", "bot@example.com");
        host.secret("zendesk_api_token", "zd_SECRET_token");
        host
    }

    fn ticket(status: &str, group: u64, tags: &[&str]) -> Value {
        json!({"ticket": {"id": 35436, "status": status, "priority": "high", "group_id": group,
                          "tags": tags, "subject": "Cannot log in", "requester_id": 7}})
    }

    #[test]
    fn an_update_sends_the_fields_and_a_private_note_ending_with_the_step_key() {
        let host = host();
        host.respond(
            Method::Get,
            &format!("{BASE}/35436/comments.json?sort_order=desc&per_page=100"),
            Response::from_json(
                200,
                &json!({"comments": [{"body": "first reply", "public": true}]}),
            ),
        );
        host.respond(
            Method::Put,
            &format!("{BASE}/35436.json"),
            Response::from_json(200, &ticket("open", 360002, &["tier-2"])),
        );
        let out = host
            .invoke::<Helpdesk>("update_ticket", &json!({
                "ticket_id": "35436", "status": "open", "priority": "high", "group_id": 360002,
                "add_tags": ["tier-2"], "remove_tags": ["tier-1"], "note": "Escalated: first response breached."}))
            .unwrap();
        assert_eq!(
            out,
            json!({"ticket_id": 35436, "status": "open", "priority": "high", "group_id": 360002,
                               "tags": ["tier-2"], "note_added": true, "note_replayed": false})
        );
        let put = &host.requests()[1];
        // base64("bot@example.com/token:zd_SECRET_token")
        assert_eq!(
            put.header("authorization"),
            Some("Basic Ym90QGV4YW1wbGUuY29tL3Rva2VuOnpkX1NFQ1JFVF90b2tlbg==")
        );
        assert_eq!(
            put.body_json(),
            json!({"ticket": {
            "status": "open", "priority": "high", "group_id": 360002,
            "additional_tags": ["tier-2"], "remove_tags": ["tier-1"],
            "comment": {"body": "Escalated: first response breached.\n\n(casework inst-1:step-1)", "public": false}}})
        );
        assert!(host.logs().iter().all(|l| !l.message.contains("SECRET")));
    }

    #[test]
    fn a_retry_that_finds_its_note_does_not_add_it_again() {
        let host = host();
        host.respond(Method::Get, &format!("{BASE}/35436/comments.json?sort_order=desc&per_page=100"),
            Response::from_json(200, &json!({"comments": [{"body": "Escalated.\n\n(casework inst-1:step-1)", "public": false}]})));
        host.respond(
            Method::Put,
            &format!("{BASE}/35436.json"),
            Response::from_json(200, &ticket("open", 360002, &[])),
        );
        let out = host
            .invoke::<Helpdesk>(
                "update_ticket",
                &json!({"ticket_id": 35436, "group_id": 360002, "note": "Escalated."}),
            )
            .unwrap();
        assert_eq!(
            (out["note_added"].clone(), out["note_replayed"].clone()),
            (json!(false), json!(true))
        );
        assert_eq!(
            host.requests()[1].body_json(),
            json!({"ticket": {"group_id": 360002}})
        );
        // Only a note, already there: nothing is written.
        let host = self::host();
        host.respond(
            Method::Get,
            &format!("{BASE}/35436/comments.json?sort_order=desc&per_page=100"),
            Response::from_json(
                200,
                &json!({"comments": [{"body": "x\n\n(casework inst-1:step-1)"}]}),
            ),
        );
        host.respond(
            Method::Get,
            &format!("{BASE}/35436.json"),
            Response::from_json(200, &ticket("open", 1, &[])),
        );
        host.invoke::<Helpdesk>("update_ticket", &json!({"ticket_id": 35436, "note": "x"}))
            .unwrap();
        assert!(host.requests().iter().all(|r| r.method == Method::Get));
    }

    #[test]
    fn linking_makes_the_ticket_an_incident_of_its_problem() {
        let host = host();
        host.respond(Method::Put, &format!("{BASE}/35437.json"), Response::from_json(200, &json!({"ticket": {"id": 35437, "status": "open", "type": "incident", "problem_id": 35436}})));
        let out = host
            .invoke::<Helpdesk>(
                "link_to_problem",
                &json!({"ticket_id": 35437, "problem_id": "35436"}),
            )
            .unwrap();
        assert_eq!(out["ticket_id"], 35437);
        assert_eq!(
            host.requests()[0].body_json(),
            json!({"ticket": {"type": "incident", "problem_id": 35436}})
        );
    }

    #[test]
    fn bad_input_and_failures_are_clear_without_the_token() {
        for input in [
            json!({"ticket_id": "T-1", "status": "open"}),
            json!({"ticket_id": 1}),
            json!({"ticket_id": 1, "status": "escalated"}),
        ] {
            let err = host()
                .invoke::<Helpdesk>("update_ticket", &input)
                .unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{input}");
        }
        for (status, code, retryable) in [
            (401, "authentication_failed", false),
            (403, "permission_denied", false),
            (404, "not_found", false),
            (409, "conflict", true),
            (422, "invalid_ticket_update", false),
            (429, "rate_limited", true),
            (503, "provider_unavailable", true),
        ] {
            let host = host();
            host.respond(
                Method::Put,
                &format!("{BASE}/9.json"),
                Response::from_json(
                    status,
                    &json!({"error": "RecordInvalid", "description": "Record validation errors"}),
                ),
            );
            let err = host
                .invoke::<Helpdesk>("update_ticket", &json!({"ticket_id": 9, "status": "open"}))
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}"
            );
            assert!(!err.message().contains("SECRET"));
        }
    }
}
