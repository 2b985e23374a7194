//! `get_customer`: the CRM's customer document in, the facts workflows use
//! out. The CRM's document is a separate type so its shape can change
//! without changing the published output.

use casework_sdk::http::encode_path_segment;
use casework_sdk::{clock, config, http, log, secrets, Context, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const MS_PER_DAY: u64 = 86_400_000;

/// Input of `get_customer`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetInput {
    /// The CRM's customer id.
    pub customer_id: String,
}

/// Kind of contact point.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    /// Email address.
    Email,
    /// Phone number (E.164).
    Phone,
    /// Authenticator app enrolled for TOTP.
    Authenticator,
}

/// A way to reach or challenge the customer that is on record.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContactPoint {
    /// What it is.
    pub kind: ContactKind,
    /// Address or number; for an authenticator, the secret name of its seed
    /// (e.g. `totp_seed/cus_42`), never the seed itself.
    pub value: String,
    /// Whether the customer proved they control it.
    #[serde(default)]
    pub verified: bool,
}

/// The customer facts workflows use.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CustomerOutput {
    /// The CRM's id.
    pub customer_id: String,
    /// Support tier, e.g. `standard`, `vip`.
    pub tier: String,
    /// Plan, e.g. `free`, `pro`, `enterprise`.
    pub plan: String,
    /// Refunds issued to this customer in the last 90 days.
    pub refunds_last_90_days: u32,
    /// When the account was created (RFC 3339, as the CRM gave it).
    pub account_created: String,
    /// Whole days since `account_created`, by the host clock.
    pub account_age_days: u64,
    /// Contact points on record.
    pub contact_points: Vec<ContactPoint>,
}

/// The CRM's customer document (fields used here; others are ignored).
#[derive(Deserialize)]
struct CrmCustomer {
    id: String,
    tier: String,
    plan: String,
    refunds_last_90_days: u32,
    account_created: String,
    #[serde(default)]
    contacts: Vec<ContactPoint>,
}

pub fn get(input: GetInput, _ctx: &Context) -> Result<CustomerOutput> {
    if input.customer_id.trim().is_empty() {
        return Err(Error::invalid_input("`customer_id` must not be empty"));
    }
    let base = config::require("crm_base_url")?;
    let token = secrets::get("crm_token")?;
    let url = format!(
        "{}/customers/{}",
        base.trim_end_matches('/'),
        encode_path_segment(&input.customer_id)
    );
    let response = http::get(url)
        .bearer_auth(token.expose())
        .header("accept", "application/json")
        .send()?;
    let status = response.status;
    match status {
        200..=299 => {}
        404 => {
            return Err(Error::permanent(
                "not_found",
                format!("the CRM has no customer `{}`", input.customer_id),
            ))
        }
        401 | 403 => {
            return Err(Error::permanent(
                "authentication_failed",
                format!("the CRM refused the `crm_token` credentials (HTTP {status})"),
            ))
        }
        429 | 500..=599 => {
            return Err(Error::retryable(
                "crm_unavailable",
                format!("the CRM answered HTTP {status}"),
            ))
        }
        _ => {
            return Err(Error::permanent(
                "crm_error",
                format!("the CRM answered HTTP {status}"),
            ))
        }
    }
    let customer: CrmCustomer = response.json()?;
    let created_ms = clock::parse_rfc3339(&customer.account_created).ok_or_else(|| {
        Error::permanent(
            "bad_response",
            "the CRM's `account_created` is not an RFC 3339 timestamp",
        )
    })?;
    // A creation time in the future (clock skew) counts as a brand-new account.
    let account_age_days = clock::now_ms().saturating_sub(created_ms) / MS_PER_DAY;
    log::info(format_args!(
        "customer {} found: tier {}, plan {}",
        customer.id, customer.tier, customer.plan
    ));
    Ok(CustomerOutput {
        customer_id: customer.id,
        tier: customer.tier,
        plan: customer.plan,
        refunds_last_90_days: customer.refunds_last_90_days,
        account_created: customer.account_created,
        account_age_days,
        contact_points: customer.contacts,
    })
}

#[cfg(test)]
mod tests {
    use crate::Crm;
    use casework_sdk::http::{self, Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::{json, Value};

    const URL: &str = "http://127.0.0.1:18110/api/customers/cus_42";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("crm_base_url", "http://127.0.0.1:18110/api/");
        host.secret("crm_token", "crm_SECRET_token");
        // 2024-01-11T00:00:00Z
        host.set_now_ms(1_704_931_200_000);
        host
    }

    fn customer() -> Value {
        json!({
            "id": "cus_42", "tier": "vip", "plan": "enterprise", "refunds_last_90_days": 3,
            "account_created": "2024-01-04T12:00:00Z", "region": "eu-west",
            "contacts": [
                {"kind": "email", "value": "ada@example.com", "verified": true},
                {"kind": "phone", "value": "+442071838750", "verified": false},
                {"kind": "authenticator", "value": "totp_seed/cus_42", "verified": true}
            ]
        })
    }

    #[test]
    fn fetches_with_bearer_token_and_maps_the_document() {
        let host = host();
        host.respond(Method::Get, URL, Response::from_json(200, &customer()));
        let out = host
            .invoke::<Crm>("get_customer", &json!({"customer_id": "cus_42"}))
            .unwrap();
        assert_eq!(
            out,
            json!({
                "customer_id": "cus_42", "tier": "vip", "plan": "enterprise", "refunds_last_90_days": 3,
                "account_created": "2024-01-04T12:00:00Z", "account_age_days": 6,
                "contact_points": [
                    {"kind": "email", "value": "ada@example.com", "verified": true},
                    {"kind": "phone", "value": "+442071838750", "verified": false},
                    {"kind": "authenticator", "value": "totp_seed/cus_42", "verified": true}
                ]
            })
        );
        let sent = &host.requests()[0];
        assert_eq!((sent.method, sent.url.as_str()), (Method::Get, URL));
        assert_eq!(
            sent.header("authorization"),
            Some("Bearer crm_SECRET_token")
        );
        assert_eq!(sent.header("accept"), Some("application/json"));
        assert!(host.logs().iter().all(|l| !l.message.contains("SECRET")));
    }

    #[test]
    fn unknown_customer_is_a_permanent_not_found() {
        let host = host();
        let url = "http://127.0.0.1:18110/api/customers/cus%2F..%2Fadmin";
        host.respond(
            Method::Get,
            url,
            Response::from_json(404, &json!({"error": "not found"})),
        );
        let err = host
            .invoke::<Crm>("get_customer", &json!({"customer_id": "cus/../admin"}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("not_found", false));
        assert_eq!(host.requests()[0].url, url);
    }

    #[test]
    fn http_errors_map_to_retryable_or_permanent() {
        for (status, code, retryable) in [
            (401, "authentication_failed", false),
            (403, "authentication_failed", false),
            (429, "crm_unavailable", true),
            (500, "crm_unavailable", true),
            (400, "crm_error", false),
        ] {
            let host = host();
            host.respond(Method::Get, URL, Response::new(status));
            let err = host
                .invoke::<Crm>("get_customer", &json!({"customer_id": "cus_42"}))
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}"
            );
            assert!(!err.message().contains("SECRET"));
        }
        let host = host();
        host.fail(Method::Get, URL, http::Error::Connection("refused".into()));
        let err = host
            .invoke::<Crm>("get_customer", &json!({"customer_id": "cus_42"}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("http_connection", true));
    }

    #[test]
    fn malformed_documents_are_bad_responses() {
        let mut no_tier = customer();
        no_tier.as_object_mut().unwrap().remove("tier");
        let mut bad_date = customer();
        bad_date["account_created"] = json!("04/01/2024");
        let mut float_count = customer();
        float_count["refunds_last_90_days"] = json!(2.5);
        for (body, needle) in [
            (no_tier, "missing field `tier`"),
            (bad_date, "account_created"),
            (float_count, "refunds_last_90_days"),
        ] {
            let host = host();
            host.respond(Method::Get, URL, Response::from_json(200, &body));
            let err = host
                .invoke::<Crm>("get_customer", &json!({"customer_id": "cus_42"}))
                .unwrap_err();
            assert_eq!(err.code(), "bad_response");
            assert!(err.message().contains(needle), "{err}");
        }
    }

    #[test]
    fn missing_base_url_is_a_config_error() {
        let host = FakeHost::new();
        let err = host
            .invoke::<Crm>("get_customer", &json!({"customer_id": "c"}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("config_missing", false));
    }
}
