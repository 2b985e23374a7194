//! `refund` and `get_refund`: the Stripe refund object in, a typed refund
//! out. Money is integer minor units end to end.

use crate::stripe;
use casework_sdk::http::{encode_path_segment, Method};
use casework_sdk::{log, Context, Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// Stripe's metadata limits.
const MAX_METADATA_KEYS: usize = 50;
const MAX_METADATA_KEY_CHARS: usize = 40;
const MAX_METADATA_VALUE_CHARS: usize = 500;
/// Keys this plugin adds to every refund (instance, step, free-text reason)
/// so an asynchronous refund webhook can be traced back to its instance.
const RESERVED_PREFIX: &str = "casework_";
const RESERVED_KEYS: usize = 3;
/// The `reason` values Stripe understands; anything else is kept in metadata.
const STRIPE_REASONS: [&str; 3] = ["duplicate", "fraudulent", "requested_by_customer"];

/// Input of `refund`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundInput {
    /// What to refund: a PaymentIntent (`pi_...`) or a charge (`ch_...`,
    /// `py_...`).
    pub payment_ref: String,
    /// Amount to refund in minor units (e.g. cents), at least 1. Less than
    /// the payment makes a partial refund.
    pub amount_minor: u64,
    /// ISO 4217 code the workflow expects (any case). The provider's
    /// currency is authoritative and returned; a mismatch is logged.
    #[serde(default)]
    pub currency: Option<String>,
    /// Why: `duplicate`, `fraudulent` and `requested_by_customer` are sent
    /// as Stripe's `reason`; any other text is stored as metadata
    /// `casework_reason` (first 500 characters).
    #[serde(default)]
    pub reason: Option<String>,
    /// Up to 47 extra key/value pairs stored on the refund (keys up to 40
    /// chars, no brackets, not starting with `casework_`; values up to 500).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Input of `get_refund`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetInput {
    /// The refund id, e.g. `re_3MtwBw...`.
    pub refund_id: String,
}

/// Refund status as Stripe reports it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Submitted, not final yet.
    Pending,
    /// The customer must act (some payment methods) before it proceeds.
    RequiresAction,
    /// Money is on its way back.
    Succeeded,
    /// The refund failed; see `failure_reason`. Run the compensation path.
    Failed,
    /// The refund was canceled.
    Canceled,
    /// A status this plugin does not know yet; follow up with `get_refund`.
    #[serde(other)]
    Unknown,
}

/// A refund.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RefundOutput {
    /// Provider refund id (`re_...`), for the audit trail and `get_refund`.
    pub id: String,
    /// Current status.
    pub status: Status,
    /// Refunded amount in minor units.
    pub amount_minor: u64,
    /// Three-letter ISO currency code, lowercase as the provider returns it.
    pub currency: String,
    /// The refunded PaymentIntent, if any.
    pub payment_intent: Option<String>,
    /// The refunded charge, if any.
    pub charge: Option<String>,
    /// Stripe's reason code when `status` is `failed`, e.g.
    /// `expired_or_canceled_card`, `lost_or_stolen_card`, `declined`.
    pub failure_reason: Option<String>,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// True when Stripe answered from its idempotency cache: this step
    /// already created the refund and no new money moved.
    pub replayed: bool,
}

/// The fields of Stripe's refund object that this plugin uses.
#[derive(Deserialize)]
struct StripeRefund {
    id: String,
    amount: u64,
    currency: String,
    status: Status,
    #[serde(default)]
    payment_intent: Option<String>,
    #[serde(default)]
    charge: Option<String>,
    #[serde(default)]
    failure_reason: Option<String>,
    created: i64,
}

pub fn create(input: RefundInput, ctx: &Context) -> Result<RefundOutput> {
    let target_field = match input.payment_ref.split('_').next() {
        Some("pi") if input.payment_ref.len() > 3 => "payment_intent",
        Some("ch" | "py") if input.payment_ref.len() > 3 => "charge",
        _ => return Err(Error::invalid_input(
            "`payment_ref` must be a PaymentIntent (`pi_...`) or charge (`ch_...`, `py_...`) id",
        )),
    };
    if input.amount_minor == 0 {
        return Err(Error::invalid_input(
            "`amount_minor` must be at least 1 (minor units)",
        ));
    }
    check_metadata(&input.metadata)?;

    // Stripe replays an idempotent request only if the parameters are
    // identical, so the body must be the same bytes on every retry: fixed
    // field order, sorted metadata, nothing time-dependent.
    let mut form: Vec<(String, String)> = vec![
        (target_field.to_string(), input.payment_ref.clone()),
        ("amount".to_string(), input.amount_minor.to_string()),
    ];
    let reason = input
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if let Some(reason) = reason.filter(|r| STRIPE_REASONS.contains(r)) {
        form.push(("reason".to_string(), reason.to_string()));
    }
    form.push((
        "metadata[casework_instance_id]".to_string(),
        ctx.instance_id.clone(),
    ));
    form.push((
        "metadata[casework_step_id]".to_string(),
        ctx.step_id.clone(),
    ));
    if let Some(reason) = reason.filter(|r| !STRIPE_REASONS.contains(r)) {
        let clipped: String = reason.chars().take(MAX_METADATA_VALUE_CHARS).collect();
        form.push(("metadata[casework_reason]".to_string(), clipped));
    }
    for (key, value) in &input.metadata {
        form.push((format!("metadata[{key}]"), value.clone()));
    }

    let request = stripe::request(Method::Post, "/v1/refunds")?
        .header("idempotency-key", &ctx.idempotency_key)
        .form(form);
    let response = stripe::send(request, "create refund")?;
    let replayed = response
        .header("idempotent-replayed")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let refund = output(response.json()?, replayed);
    log::info(format_args!(
        "refund {} for {} {} minor units: {}{}",
        refund.id,
        refund.currency,
        refund.amount_minor,
        status_name(refund.status),
        if replayed { " (replayed)" } else { "" }
    ));
    if refund.amount_minor != input.amount_minor {
        // Stripe rejects a replay with changed parameters, so a different
        // amount means the provider adjusted it; audit must see that.
        log::warn(format_args!(
            "refund {} amount {} differs from requested {}",
            refund.id, refund.amount_minor, input.amount_minor
        ));
    }
    if let Some(expected) = input.currency.as_deref() {
        if !expected.eq_ignore_ascii_case(&refund.currency) {
            log::warn(format_args!(
                "refund {} is in {} but the workflow expected {expected}",
                refund.id, refund.currency
            ));
        }
    }
    Ok(refund)
}

pub fn get(input: GetInput, _ctx: &Context) -> Result<RefundOutput> {
    if input.refund_id.trim().is_empty() {
        return Err(Error::invalid_input("`refund_id` must not be empty"));
    }
    let path = format!("/v1/refunds/{}", encode_path_segment(&input.refund_id));
    let response = stripe::send(stripe::request(Method::Get, &path)?, "get refund")?;
    Ok(output(response.json()?, false))
}

fn output(refund: StripeRefund, replayed: bool) -> RefundOutput {
    if refund.status == Status::Unknown {
        log::warn(format_args!(
            "refund {} has a status this plugin does not know",
            refund.id
        ));
    }
    RefundOutput {
        id: refund.id,
        status: refund.status,
        amount_minor: refund.amount,
        currency: refund.currency,
        payment_intent: refund.payment_intent,
        charge: refund.charge,
        failure_reason: refund.failure_reason,
        created: refund.created,
        replayed,
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Pending => "pending",
        Status::RequiresAction => "requires_action",
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
        Status::Canceled => "canceled",
        Status::Unknown => "unknown",
    }
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    let allowed = MAX_METADATA_KEYS - RESERVED_KEYS;
    if metadata.len() > allowed {
        return Err(Error::invalid_input(format!(
            "`metadata` has more than {allowed} keys"
        )));
    }
    for (key, value) in metadata {
        if key.is_empty()
            || key.chars().count() > MAX_METADATA_KEY_CHARS
            || key.contains(['[', ']'])
        {
            return Err(Error::invalid_input(format!(
                "metadata key `{key}` must be 1 to {MAX_METADATA_KEY_CHARS} characters without brackets"
            )));
        }
        if key.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid_input(format!(
                "metadata key `{key}` uses the reserved prefix `{RESERVED_PREFIX}`"
            )));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(Error::invalid_input(format!(
                "metadata value of `{key}` is longer than {MAX_METADATA_VALUE_CHARS} characters"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Payments;
    use casework_sdk::http::{self, Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::{json, Value};

    const REFUNDS: &str = "http://127.0.0.1:18090/v1/refunds";
    const KEY: &str = "sk_test_51Hx000SECRET";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("stripe_base_url", "http://127.0.0.1:18090");
        host.secret("stripe_secret_key", KEY);
        host
    }

    fn refund(status: &str, amount: u64) -> Value {
        json!({
            "id": "re_3MtwBw", "object": "refund", "amount": amount, "currency": "usd",
            "payment_intent": "pi_3Mtw", "charge": "ch_3Mtw", "status": status,
            "reason": "requested_by_customer", "created": 1_680_651_573,
            "metadata": {}, "balance_transaction": "txn_1", "receipt_number": null
        })
    }

    fn partial_refund_input() -> Value {
        json!({
            "payment_ref": "pi_3Mtw",
            "amount_minor": 1250,
            "currency": "USD",
            "reason": "requested_by_customer",
            "metadata": {"order_id": "ord 42", "policy": "v3/rule-7"}
        })
    }

    #[test]
    fn partial_refund_sends_form_auth_and_idempotency_key() {
        let host = host();
        host.config("stripe_version", "2024-06-20");
        host.respond(
            Method::Post,
            REFUNDS,
            Response::from_json(200, &refund("pending", 1250)),
        );
        let out = host
            .invoke::<Payments>("refund", &partial_refund_input())
            .unwrap();
        assert_eq!(
            out,
            json!({
                "id": "re_3MtwBw", "status": "pending", "amount_minor": 1250, "currency": "usd",
                "payment_intent": "pi_3Mtw", "charge": "ch_3Mtw", "failure_reason": null,
                "created": 1_680_651_573, "replayed": false
            })
        );

        let sent = host.requests();
        assert_eq!(sent.len(), 1);
        let sent = &sent[0];
        assert_eq!((sent.method, sent.url.as_str()), (Method::Post, REFUNDS));
        assert_eq!(
            sent.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(sent.header("idempotency-key"), Some("inst-1:step-1"));
        assert_eq!(sent.header("stripe-version"), Some("2024-06-20"));
        assert_eq!(
            sent.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            sent.body_text(),
            "payment_intent=pi_3Mtw&amount=1250&reason=requested_by_customer\
             &metadata%5Bcasework_instance_id%5D=inst-1&metadata%5Bcasework_step_id%5D=step-1\
             &metadata%5Border_id%5D=ord+42&metadata%5Bpolicy%5D=v3%2Frule-7"
        );
    }

    #[test]
    fn retry_sends_identical_bytes_and_reports_the_replay() {
        let host = host();
        host.fail(Method::Post, REFUNDS, http::Error::Timeout);
        host.respond(
            Method::Post,
            REFUNDS,
            Response::from_json(200, &refund("succeeded", 1250))
                .with_header("Idempotent-Replayed", "true"),
        );
        let err = host
            .invoke::<Payments>("refund", &partial_refund_input())
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("http_timeout", true));
        assert!(err.message().ends_with("outcome unknown"), "{err}");

        let out = host
            .invoke::<Payments>("refund", &partial_refund_input())
            .unwrap();
        assert_eq!(
            (out["status"].as_str(), out["replayed"].as_bool()),
            (Some("succeeded"), Some(true))
        );
        let sent = host.requests();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].body, sent[1].body);
        assert_eq!(
            sent[0].header("idempotency-key"),
            sent[1].header("idempotency-key")
        );
    }

    #[test]
    fn charge_refund_keeps_a_free_text_reason_in_metadata() {
        let host = host();
        host.respond(
            Method::Post,
            REFUNDS,
            Response::from_json(200, &refund("succeeded", 1)),
        );
        host.invoke::<Payments>(
            "refund",
            &json!({"payment_ref": "ch_1", "amount_minor": 1, "reason": "Item arrived damaged"}),
        )
        .unwrap();
        assert_eq!(
            host.requests()[0].body_form(),
            [
                ("charge".to_string(), "ch_1".to_string()),
                ("amount".to_string(), "1".to_string()),
                (
                    "metadata[casework_instance_id]".to_string(),
                    "inst-1".to_string()
                ),
                (
                    "metadata[casework_step_id]".to_string(),
                    "step-1".to_string()
                ),
                (
                    "metadata[casework_reason]".to_string(),
                    "Item arrived damaged".to_string()
                ),
            ]
        );
    }

    #[test]
    fn every_refund_status_maps_and_failure_reason_passes_through() {
        for status in [
            "pending",
            "requires_action",
            "succeeded",
            "failed",
            "canceled",
        ] {
            let host = host();
            let mut body = refund(status, 500);
            if status == "failed" {
                body["failure_reason"] = json!("expired_or_canceled_card");
            }
            host.respond(
                Method::Get,
                "http://127.0.0.1:18090/v1/refunds/re_3MtwBw",
                Response::from_json(200, &body),
            );
            let out = host
                .invoke::<Payments>("get_refund", &json!({"refund_id": "re_3MtwBw"}))
                .unwrap();
            assert_eq!(out["status"], status);
            let expected_reason = if status == "failed" {
                json!("expired_or_canceled_card")
            } else {
                Value::Null
            };
            assert_eq!(out["failure_reason"], expected_reason);
        }
    }

    #[test]
    fn an_unknown_future_status_is_reported_not_fatal() {
        let host = host();
        host.respond(
            Method::Post,
            REFUNDS,
            Response::from_json(200, &refund("in_review", 500)),
        );
        let out = host
            .invoke::<Payments>(
                "refund",
                &json!({"payment_ref": "ch_1", "amount_minor": 500}),
            )
            .unwrap();
        assert_eq!(out["status"], "unknown");
        assert!(host
            .logs()
            .iter()
            .any(|l| l.message.contains("status this plugin does not know")));
    }

    #[test]
    fn get_refund_authenticates_and_escapes_the_id() {
        let host = host();
        let url = "http://127.0.0.1:18090/v1/refunds/re_1%2F..%2Fcharges";
        host.respond(
            Method::Get,
            url,
            Response::from_json(200, &refund("succeeded", 10)),
        );
        host.invoke::<Payments>("get_refund", &json!({"refund_id": "re_1/../charges"}))
            .unwrap();
        let sent = &host.requests()[0];
        assert_eq!((sent.method, sent.url.as_str()), (Method::Get, url));
        assert_eq!(
            sent.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(sent.header("idempotency-key"), None);
        assert!(sent.body.is_empty());
    }

    fn stripe_error(status: u16, kind: &str, code: Option<&str>, message: &str) -> Response {
        let mut error = json!({"type": kind, "message": message});
        if let Some(code) = code {
            error["code"] = json!(code);
        }
        Response::from_json(status, &json!({"error": error}))
    }

    #[test]
    fn http_errors_map_to_retryable_or_permanent() {
        let cases = [
            (
                stripe_error(
                    429,
                    "invalid_request_error",
                    Some("rate_limit"),
                    "Too many requests",
                ),
                "rate_limited",
                true,
            ),
            (
                stripe_error(500, "api_error", None, "Something went wrong"),
                "provider_unavailable",
                true,
            ),
            (
                Response::new(503).with_body("<html>upstream</html>"),
                "provider_unavailable",
                true,
            ),
            (
                stripe_error(
                    409,
                    "idempotency_error",
                    None,
                    "Keys for idempotent requests can only be used with the same parameters",
                ),
                "idempotency_conflict",
                false,
            ),
            (
                stripe_error(
                    400,
                    "idempotency_error",
                    None,
                    "Keys for idempotent requests can only be used with the same parameters",
                ),
                "idempotency_conflict",
                false,
            ),
            (
                stripe_error(
                    400,
                    "invalid_request_error",
                    Some("charge_already_refunded"),
                    "Charge ch_1 has already been refunded.",
                ),
                "already_refunded",
                false,
            ),
            (
                stripe_error(
                    400,
                    "invalid_request_error",
                    Some("amount_too_large"),
                    "Refund amount is greater than unrefunded amount",
                ),
                "amount_exceeds_refundable",
                false,
            ),
            (
                stripe_error(
                    402,
                    "card_error",
                    Some("card_declined"),
                    "Your card was declined.",
                ),
                "card_error",
                false,
            ),
            (
                stripe_error(
                    400,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    "Invalid integer",
                ),
                "invalid_request",
                false,
            ),
            (
                stripe_error(
                    404,
                    "invalid_request_error",
                    Some("resource_missing"),
                    "No such payment_intent: 'pi_x'",
                ),
                "not_found",
                false,
            ),
            (
                stripe_error(
                    401,
                    "invalid_request_error",
                    None,
                    "Invalid API Key provided: sk_test_****CRET",
                ),
                "authentication_failed",
                false,
            ),
            (
                stripe_error(
                    403,
                    "invalid_request_error",
                    None,
                    "Restricted key lacks permission",
                ),
                "permission_denied",
                false,
            ),
        ];
        for (response, code, retryable) in cases {
            let host = host();
            let status = response.status;
            host.respond(Method::Post, REFUNDS, response);
            let err = host
                .invoke::<Payments>(
                    "refund",
                    &json!({"payment_ref": "ch_1", "amount_minor": 100}),
                )
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}: {err}"
            );
            assert!(!err.message().contains("sk_"), "{err}");
        }
    }

    #[test]
    fn error_message_carries_stripe_detail() {
        let host = host();
        host.respond(
            Method::Post,
            REFUNDS,
            Response::from_json(
                400,
                &json!({"error": {"type": "invalid_request_error", "code": "amount_too_large",
                                  "param": "amount", "message": "Refund amount ($20.00) is greater than unrefunded amount on charge ($12.50)"}}),
            ),
        );
        let err = host
            .invoke::<Payments>(
                "refund",
                &json!({"payment_ref": "ch_1", "amount_minor": 2000}),
            )
            .unwrap_err();
        assert_eq!(
            err.message(),
            "create refund: Stripe answered HTTP 400 invalid_request_error amount_too_large (param `amount`): \
             Refund amount ($20.00) is greater than unrefunded amount on charge ($12.50)"
        );
    }

    #[test]
    fn input_is_checked_before_any_request() {
        let host = host();
        let ref_error =
            "`payment_ref` must be a PaymentIntent (`pi_...`) or charge (`ch_...`, `py_...`) id";
        let bad = [
            (
                json!({"payment_ref": "ord_1", "amount_minor": 100}),
                ref_error,
            ),
            (
                json!({"payment_ref": "pi_", "amount_minor": 100}),
                ref_error,
            ),
            (
                json!({"payment_ref": "ch_1", "amount_minor": 0}),
                "`amount_minor` must be at least 1 (minor units)",
            ),
            (
                json!({"payment_ref": "ch_1", "amount_minor": 1, "metadata": {"casework_x": "y"}}),
                "metadata key `casework_x` uses the reserved prefix `casework_`",
            ),
            (
                json!({"payment_ref": "ch_1", "amount_minor": 1, "metadata": {"a[b]": "y"}}),
                "metadata key `a[b]` must be 1 to 40 characters without brackets",
            ),
        ];
        for (input, message) in bad {
            let err = host.invoke::<Payments>("refund", &input).unwrap_err();
            assert_eq!(
                (err.code(), err.message()),
                ("invalid_input", message),
                "{input}"
            );
        }
        // Floats are not money: 12.5 is rejected by the integer field.
        for amount in [json!(12.5), json!(-5), json!("1250")] {
            let input = json!({"payment_ref": "ch_1", "amount_minor": amount});
            let err = host.invoke::<Payments>("refund", &input).unwrap_err();
            assert_eq!(err.code(), "invalid_input");
            assert!(err.message().contains("`amount_minor`"), "{err}");
        }
        assert!(host.requests().is_empty());
    }

    #[test]
    fn a_currency_mismatch_is_logged_for_audit() {
        let host = host();
        host.respond(
            Method::Post,
            REFUNDS,
            Response::from_json(200, &refund("pending", 1250)),
        );
        let mut input = partial_refund_input();
        input["currency"] = json!("EUR");
        host.invoke::<Payments>("refund", &input).unwrap();
        let logs = host.logs();
        assert_eq!(
            logs[1].message,
            "refund re_3MtwBw is in usd but the workflow expected EUR"
        );
    }

    #[test]
    fn amount_schema_is_an_integer() {
        let infos = casework_sdk::testing::describe::<Payments>();
        let schema: Value = serde_json::from_str(&infos[0].input_schema).unwrap();
        assert_eq!(schema["properties"]["amount_minor"]["type"], "integer");
        assert_eq!(schema["required"], json!(["payment_ref", "amount_minor"]));
        let output: Value = serde_json::from_str(&infos[0].output_schema).unwrap();
        assert_eq!(output["properties"]["amount_minor"]["type"], "integer");
    }

    #[test]
    fn logs_have_ids_and_amounts_but_no_key() {
        let host = host();
        host.respond(
            Method::Post,
            REFUNDS,
            Response::from_json(200, &refund("pending", 1250)),
        );
        host.invoke::<Payments>("refund", &partial_refund_input())
            .unwrap();
        let logs = host.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(
            logs[0].message,
            "refund re_3MtwBw for usd 1250 minor units: pending"
        );
        assert!(logs.iter().all(|l| !l.message.contains(KEY)));
    }
}
