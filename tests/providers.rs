//! The shipped plugins (plugins/{payments,paging,identity,crm,statuspage,helpdesk}), each run as its
//! real .wasm component through [`WasmHost`], against a local fake of its provider
//! that records every request exactly. Each test checks the wire format the
//! provider documents (method, path, auth, idempotency key, content type, the
//! whole body) and how the provider's answers map to outputs and errors, and that
//! no secret or one-time code ever comes back in an output or an error. Needs
//! `bash plugins/build.sh` first.

mod support {
    pub mod fake_http;
}

use casework::clock::{Clock, ManualClock};
use casework::plugin_host::secrets::Secrets;
use casework::plugin_host::wasm::WasmHost;
use casework::plugin_host::{CallContext, PluginError, PluginHost};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;
use support::fake_http::{Answer, FakeProvider, Seen};

const INSTANCE: &str = "inst-7f3a";
/// 2024-06-01T10:00:00Z
const NOW_MS: i64 = 1_717_236_000_000;

const STRIPE_KEY: &str = "sk_test_51PcwZ2SECRETkey0042";
const STRIPE_VERSION: &str = "2024-06-20";
const ROUTING_KEY: &str = "R0UT1NGKEYSECRET00000000000000a1";
const SLACK_PATH: &str = "/services/T0001/B0002/SlackSECRETtoken42";
const SIGNING_SECRET: &str = "whsec_SECRET_5f2b8c";
const TWILIO_SID: &str = "AC5ef8732a3c49700934481addd5ce1659";
const TWILIO_TOKEN: &str = "twilio_auth_SECRET_9f3c";
/// `base64("{TWILIO_SID}:{TWILIO_TOKEN}")`, computed with coreutils `base64`.
const TWILIO_BASIC: &str =
    "Basic QUM1ZWY4NzMyYTNjNDk3MDA5MzQ0ODFhZGRkNWNlMTY1OTp0d2lsaW9fYXV0aF9TRUNSRVRfOWYzYw==";
const VERIFY_SERVICE: &str = "VA0123456789abcdef0123456789abcdef";
/// RFC 6238 appendix B: the SHA-1 seed is ASCII "12345678901234567890".
const TOTP_SEED: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const CRM_TOKEN: &str = "crm_SECRET_token_77";
const STATUSPAGE_KEY: &str = "sp_SECRET_key_4e1d";
const ZENDESK_TOKEN: &str = "zd_SECRET_token_91b2";
/// `base64("ops-bot@example.com/token:{ZENDESK_TOKEN}")`, computed with coreutils `base64`.
const ZENDESK_BASIC: &str =
    "Basic b3BzLWJvdEBleGFtcGxlLmNvbS90b2tlbjp6ZF9TRUNSRVRfdG9rZW5fOTFiMg==";

/// Every secret any test hands out; none may come back in an output or error.
const ALL_SECRETS: &[&str] = &[
    STRIPE_KEY,
    ROUTING_KEY,
    "SlackSECRETtoken42",
    SIGNING_SECRET,
    TWILIO_SID,
    TWILIO_TOKEN,
    TOTP_SEED,
    CRM_TOKEN,
    STATUSPAGE_KEY,
    ZENDESK_TOKEN,
];

/// One shipped plugin loaded into a fresh host, granted only its fake provider.
struct Rig {
    host: WasmHost,
    fake: FakeProvider,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

/// Settings as `(name, value)` pairs.
type Pairs = Vec<(&'static str, String)>;

/// Copies `plugins/<plugin>` into a temporary plugin directory, grants it only the
/// fake's origin, and loads it into a host whose clock is pinned at `now_ms`.
/// `setup` gets the fake's base URL and returns the `[config]` values to set and
/// the secrets to store.
async fn rig(plugin: &str, now_ms: i64, setup: impl FnOnce(&str) -> (Pairs, Pairs)) -> Rig {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins")
        .join(plugin);
    let wasm = source.join(format!("{plugin}.wasm"));
    assert!(
        wasm.is_file(),
        "{} is missing: run `bash plugins/build.sh` first",
        wasm.display()
    );
    let fake = FakeProvider::start().await;
    let (config, secrets) = setup(&fake.base_url());
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(plugin);
    std::fs::create_dir(&target).unwrap();
    std::fs::copy(&wasm, target.join(format!("{plugin}.wasm"))).unwrap();
    let manifest = std::fs::read_to_string(source.join("plugin.toml")).unwrap();
    let manifest = rewrite_manifest(&manifest, &fake.origin(), &config);
    std::fs::write(target.join("plugin.toml"), manifest).unwrap();

    let mut store = Secrets::new();
    for (name, value) in secrets {
        store.insert(plugin, name, value);
    }
    let clock = Arc::new(ManualClock::new(now_ms));
    let host = WasmHost::new(store, clock.clone(), None).unwrap();
    host.load_dir(dir.path()).await;
    assert_eq!(host.problems(), Vec::<String>::new());
    assert_eq!(host.plugin_names(), vec![plugin.to_string()]);
    Rig {
        host,
        fake,
        clock,
        _dir: dir,
    }
}

/// Replaces `[grants] http` (one line or several) with exactly `origin`, and sets
/// each `[config]` key, keeping the manifest's other lines as they are.
fn rewrite_manifest(text: &str, origin: &str, config: &[(&'static str, String)]) -> String {
    fn key_of(line: &str) -> Option<&str> {
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        (!key.is_empty() && !key.starts_with('#')).then_some(key)
    }
    fn flush(out: &mut Vec<String>, pending: &mut Vec<(&str, String)>) {
        for (key, value) in pending.drain(..) {
            out.push(format!("{key} = {value:?}"));
        }
    }
    let mut pending = config.to_vec();
    let mut out = Vec::new();
    let mut section = String::new();
    let mut in_http_list = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if in_http_list {
            in_http_list = !trimmed.ends_with(']');
            continue;
        }
        if trimmed.starts_with('[') {
            if section == "config" {
                flush(&mut out, &mut pending);
            }
            section = trimmed.trim_matches(['[', ']']).to_string();
        } else if section == "grants" && key_of(trimmed) == Some("http") {
            out.push(format!("http = [{origin:?}]"));
            in_http_list = !trimmed.ends_with(']');
            continue;
        } else if section == "config" {
            if let Some(at) = key_of(trimmed).and_then(|k| pending.iter().position(|p| p.0 == k)) {
                let (key, value) = pending.remove(at);
                out.push(format!("{key} = {value:?}"));
                continue;
            }
        }
        out.push(line.to_string());
    }
    if !pending.is_empty() {
        if section != "config" {
            out.push("[config]".to_string());
        }
        flush(&mut out, &mut pending);
    }
    out.join("\n") + "\n"
}

/// The context of attempt `attempt` of the first visit of `step`.
fn ctx(step: &str, attempt: u32) -> CallContext {
    CallContext {
        scrub: Vec::new(),
        instance_id: INSTANCE.into(),
        step_id: step.into(),
        attempt,
        idempotency_key: format!("{INSTANCE}:{step}:1"),
    }
}

impl Rig {
    async fn call(
        &self,
        plugin: &str,
        action: &str,
        input: Value,
        ctx: CallContext,
    ) -> Result<Value, PluginError> {
        let result = self.host.call(plugin, action, input, ctx).await;
        match &result {
            Ok(output) => assert_no_secret(&output.to_string()),
            Err(e) => {
                assert_no_secret(&e.code);
                assert_no_secret(&e.message);
            }
        }
        result
    }

    async fn ok(&self, plugin: &str, action: &str, input: Value, ctx: CallContext) -> Value {
        match self.call(plugin, action, input, ctx).await {
            Ok(output) => output,
            Err(e) => panic!("{plugin}.{action} failed: {e:?}"),
        }
    }

    async fn err(&self, plugin: &str, action: &str, input: Value, ctx: CallContext) -> PluginError {
        match self.call(plugin, action, input, ctx).await {
            Ok(output) => panic!("{plugin}.{action} should have failed, got {output}"),
            Err(e) => e,
        }
    }

    /// The request after the first `already_checked`, which must be the last one.
    fn only_request(&self, already_checked: usize) -> Seen {
        let seen = self.fake.seen();
        assert_eq!(
            seen.len(),
            already_checked + 1,
            "expected exactly one new request: {seen:#?}"
        );
        seen[already_checked].clone()
    }
}

/// Neither the secret itself nor the host's redaction marker: the plugin must not
/// even try to put a secret into what it returns.
fn assert_no_secret(text: &str) {
    for secret in ALL_SECRETS {
        assert!(!text.contains(secret), "a secret leaked: {text}");
    }
    assert!(
        !text.contains("[redacted]"),
        "the plugin tried to return a secret (the host redacted it): {text}"
    );
}

fn assert_error(err: &PluginError, code: &str, retryable: bool) {
    assert_eq!(
        (err.code.as_str(), err.retryable),
        (code, retryable),
        "{err:?}"
    );
}

/// The headers the plugin chose, as sorted `(lowercase name, value)` pairs: the
/// transport's own (`host`, `content-length`, `user-agent`, `accept-encoding` and a
/// default `accept: */*`) are checked here and left out.
fn plugin_headers(seen: &Seen, fake: &FakeProvider) -> Vec<(String, String)> {
    assert_eq!(
        seen.header("host"),
        Some(&*format!("127.0.0.1:{}", fake.port))
    );
    assert_eq!(seen.header("user-agent"), Some("casework-plugin-host"));
    if let Some(length) = seen.header("content-length") {
        assert_eq!(length, seen.body.len().to_string());
    }
    let mut headers: Vec<(String, String)> = seen
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, v)| {
            let transport = matches!(
                k.as_str(),
                "host" | "content-length" | "user-agent" | "accept-encoding"
            );
            let default_accept = k == "accept" && v == "*/*";
            !transport && !default_accept
        })
        .collect();
    headers.sort();
    headers
}

fn assert_headers(seen: &Seen, fake: &FakeProvider, expected: &[(&str, &str)]) {
    let mut expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    expected.sort();
    assert_eq!(plugin_headers(seen, fake), expected, "{seen:#?}");
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// payments: Stripe refunds
// ---------------------------------------------------------------------------

async fn stripe() -> Rig {
    rig("payments", NOW_MS, |base| {
        let config = vec![
            ("stripe_base_url", base.to_string()),
            ("stripe_version", STRIPE_VERSION.to_string()),
        ];
        (config, vec![("stripe_secret_key", STRIPE_KEY.to_string())])
    })
    .await
}

fn stripe_refund(status: &str, amount: u64) -> Value {
    json!({
        "id": "re_3PcwZ2LkdIwHu7ix1", "object": "refund", "amount": amount,
        "balance_transaction": "txn_3PcwZ2LkdIwHu7ix1", "charge": "ch_3PcwZ2LkdIwHu7ix0",
        "created": 1_717_236_001, "currency": "usd", "metadata": {},
        "payment_intent": "pi_3PcwZ2LkdIwHu7ix0", "reason": "requested_by_customer",
        "receipt_number": null, "source_transfer_reversal": null, "status": status,
        "transfer_reversal": null
    })
}

fn stripe_error(status: u16, error: Value) -> Answer {
    Answer::json(status, json!({ "error": error }))
}

async fn fx() -> Rig {
    rig("payments", NOW_MS, |base| {
        let config = vec![("fx_base_url", base.to_string())];
        (config, vec![("stripe_secret_key", STRIPE_KEY.to_string())])
    })
    .await
}

#[tokio::test]
async fn an_exchange_rate_is_a_plain_get_and_the_rate_comes_back_exactly_as_written() {
    let rig = fx().await;
    // A float would make this 1 (and 0.0066666667 something else again).
    rig.fake.answer(Answer::raw_json(
        200,
        r#"{"amount":1.0,"base":"JPY","date":"2024-05-31","rates":{"USD":1.0000000000000001}}"#,
    ));
    let out = rig
        .ok(
            "payments",
            "exchange_rate",
            json!({"from": "JPY", "to": "USD"}),
            ctx("fetch_rate", 1),
        )
        .await;
    assert_eq!(
        out,
        json!({"rate": "1.0000000000000001", "from": "JPY", "to": "USD",
               "source": "ECB reference rates (Frankfurter)", "date": "2024-05-31",
               "at": "2024-06-01T10:00:00.000Z"})
    );
    let seen = rig.only_request(0);
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("GET", "/latest?from=JPY&to=USD")
    );
    // No credentials go to the rate service: the Stripe key is granted for Stripe only.
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert!(seen.body.is_empty());

    rig.fake
        .answer(Answer::json(404, json!({"message": "not found"})));
    let err = rig
        .err(
            "payments",
            "exchange_rate",
            json!({"from": "XTS", "to": "USD"}),
            ctx("fetch_rate", 1),
        )
        .await;
    assert_error(&err, "unknown_currency", false);
    rig.fake.answer(Answer::text(503, "maintenance"));
    let err = rig
        .err(
            "payments",
            "exchange_rate",
            json!({"from": "JPY", "to": "USD"}),
            ctx("fetch_rate", 2),
        )
        .await;
    assert_error(&err, "fx_unavailable", true);
}

fn assert_stripe_refund_request(seen: &Seen, fake: &FakeProvider, key: &str) {
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/v1/refunds");
    assert_headers(
        seen,
        fake,
        &[
            ("authorization", &format!("Bearer {STRIPE_KEY}")),
            ("content-type", "application/x-www-form-urlencoded"),
            ("idempotency-key", key),
            ("stripe-version", STRIPE_VERSION),
        ],
    );
}

#[tokio::test]
async fn stripe_refund_posts_the_exact_form_with_bearer_auth_and_the_step_idempotency_key() {
    let rig = stripe().await;
    rig.fake
        .answer(Answer::json(200, stripe_refund("succeeded", 4999)));
    let out = rig
        .ok(
            "payments",
            "refund",
            json!({
                "payment_ref": "pi_3PcwZ2LkdIwHu7ix0",
                "amount_minor": 4999,
                "currency": "USD",
                "reason": "requested_by_customer",
                "metadata": {"ticket": "T-1042", "policy": "v3/rule 7"}
            }),
            ctx("refund", 1),
        )
        .await;
    assert_eq!(
        out,
        json!({
            "id": "re_3PcwZ2LkdIwHu7ix1", "status": "succeeded", "amount_minor": 4999,
            "currency": "usd", "payment_intent": "pi_3PcwZ2LkdIwHu7ix0",
            "charge": "ch_3PcwZ2LkdIwHu7ix0", "failure_reason": null,
            "created": 1_717_236_001, "replayed": false
        })
    );

    let seen = rig.only_request(0);
    assert_stripe_refund_request(&seen, &rig.fake, &format!("{INSTANCE}:refund:1"));
    assert_eq!(
        seen.form(),
        pairs(&[
            ("payment_intent", "pi_3PcwZ2LkdIwHu7ix0"),
            ("amount", "4999"),
            ("reason", "requested_by_customer"),
            ("metadata[casework_instance_id]", INSTANCE),
            ("metadata[casework_step_id]", "refund"),
            ("metadata[policy]", "v3/rule 7"),
            ("metadata[ticket]", "T-1042"),
        ])
    );
    assert_eq!(
        seen.body_text(),
        "payment_intent=pi_3PcwZ2LkdIwHu7ix0&amount=4999&reason=requested_by_customer\
         &metadata%5Bcasework_instance_id%5D=inst-7f3a&metadata%5Bcasework_step_id%5D=refund\
         &metadata%5Bpolicy%5D=v3%2Frule+7&metadata%5Bticket%5D=T-1042"
    );
}

#[tokio::test]
async fn stripe_partial_refund_of_a_charge_keeps_a_free_text_reason_in_metadata() {
    let rig = stripe().await;
    let mut refund = stripe_refund("pending", 1250);
    refund["reason"] = Value::Null;
    rig.fake.answer(Answer::json(200, refund));
    let out = rig
        .ok(
            "payments",
            "refund",
            json!({
                "payment_ref": "ch_3PcwZ2LkdIwHu7ix0",
                "amount_minor": 1250,
                "reason": "parcel arrived 3 days late"
            }),
            ctx("partial_refund", 1),
        )
        .await;
    assert_eq!(
        (&out["status"], &out["amount_minor"], &out["charge"]),
        (
            &json!("pending"),
            &json!(1250),
            &json!("ch_3PcwZ2LkdIwHu7ix0")
        )
    );
    assert_eq!(out["replayed"], false);

    let seen = rig.only_request(0);
    assert_stripe_refund_request(&seen, &rig.fake, &format!("{INSTANCE}:partial_refund:1"));
    assert_eq!(
        seen.form(),
        pairs(&[
            ("charge", "ch_3PcwZ2LkdIwHu7ix0"),
            ("amount", "1250"),
            ("metadata[casework_instance_id]", INSTANCE),
            ("metadata[casework_step_id]", "partial_refund"),
            ("metadata[casework_reason]", "parcel arrived 3 days late"),
        ])
    );
}

#[tokio::test]
async fn stripe_retry_of_the_same_step_resends_identical_bytes_and_reports_the_replay() {
    let rig = stripe().await;
    let input = json!({"payment_ref": "pi_3PcwZ2LkdIwHu7ix0", "amount_minor": 4999});
    rig.fake.answer(stripe_error(
        429,
        json!({"type": "invalid_request_error", "code": "rate_limit",
               "message": "Too many requests hit the API too quickly."}),
    ));
    let err = rig
        .err("payments", "refund", input.clone(), ctx("refund", 1))
        .await;
    assert_error(&err, "rate_limited", true);

    rig.fake
        .answer(Answer::json(200, stripe_refund("succeeded", 4999)));
    let first = rig
        .ok("payments", "refund", input.clone(), ctx("refund", 2))
        .await;
    assert_eq!(first["replayed"], false);

    // A resume after a crash calls again with the same key: Stripe replays.
    rig.fake.answer(
        Answer::json(200, stripe_refund("succeeded", 4999))
            .with_header("Idempotent-Replayed", "true"),
    );
    let again = rig.ok("payments", "refund", input, ctx("refund", 3)).await;
    assert_eq!(again["replayed"], true);
    assert_eq!(again["id"], first["id"]);

    let seen = rig.fake.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_stripe_refund_request(request, &rig.fake, &format!("{INSTANCE}:refund:1"));
        assert_eq!(
            request.body, seen[0].body,
            "a retry must send the same bytes"
        );
    }
}

#[tokio::test]
async fn stripe_card_and_request_errors_are_permanent_with_stable_codes() {
    let rig = stripe().await;
    let cases = [
        (
            stripe_error(
                402,
                json!({"type": "card_error", "code": "card_declined",
                       "decline_code": "insufficient_funds",
                       "message": "Your card has insufficient funds.", "charge": "ch_1"}),
            ),
            "card_error",
            Some(
                "create refund: Stripe answered HTTP 402 card_error card_declined \
                 insufficient_funds: Your card has insufficient funds.",
            ),
        ),
        (
            stripe_error(
                400,
                json!({"type": "invalid_request_error", "code": "amount_too_large",
                       "param": "amount",
                       "message": "Refund amount ($49.99) is greater than unrefunded amount on charge ($12.50)"}),
            ),
            "amount_exceeds_refundable",
            Some(
                "create refund: Stripe answered HTTP 400 invalid_request_error amount_too_large \
                 (param `amount`): Refund amount ($49.99) is greater than unrefunded amount on \
                 charge ($12.50)",
            ),
        ),
        (
            stripe_error(
                400,
                json!({"type": "invalid_request_error", "code": "charge_already_refunded",
                       "message": "Charge ch_1 has already been refunded."}),
            ),
            "already_refunded",
            None,
        ),
        (
            stripe_error(
                400,
                json!({"type": "idempotency_error",
                       "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."}),
            ),
            "idempotency_conflict",
            None,
        ),
        (
            stripe_error(
                404,
                json!({"type": "invalid_request_error", "code": "resource_missing",
                       "param": "payment_intent", "message": "No such payment_intent: 'pi_x'"}),
            ),
            "not_found",
            None,
        ),
        // Stripe quotes (a masked form of) the key; none of it may come back.
        (
            stripe_error(
                401,
                json!({"type": "invalid_request_error",
                       "message": format!("Invalid API Key provided: {STRIPE_KEY}")}),
            ),
            "authentication_failed",
            Some("create refund: Stripe answered HTTP 401 invalid_request_error"),
        ),
    ];
    for (at, (answer, code, message)) in cases.into_iter().enumerate() {
        rig.fake.answer(answer);
        let err = rig
            .err(
                "payments",
                "refund",
                json!({"payment_ref": "ch_1xyz", "amount_minor": 4999}),
                ctx(&format!("refund_{at}"), 1),
            )
            .await;
        assert_error(&err, code, false);
        if let Some(message) = message {
            assert_eq!(err.message, message);
        }
        assert!(!err.message.contains("sk_"), "{err:?}");
    }
    assert_eq!(rig.fake.seen().len(), 6);
}

#[tokio::test]
async fn stripe_rate_limits_and_outages_are_retryable() {
    let rig = stripe().await;
    let cases = [
        (
            stripe_error(
                429,
                json!({"type": "invalid_request_error", "code": "rate_limit",
                       "message": "Too many requests"}),
            ),
            "rate_limited",
        ),
        (
            stripe_error(
                500,
                json!({"type": "api_error", "message": "Something went wrong on Stripe's end."}),
            ),
            "provider_unavailable",
        ),
        (
            Answer::text(503, "<html><body>upstream unavailable</body></html>"),
            "provider_unavailable",
        ),
    ];
    for (answer, code) in cases {
        rig.fake.answer(answer);
        let err = rig
            .err(
                "payments",
                "refund",
                json!({"payment_ref": "pi_3PcwZ2LkdIwHu7ix0", "amount_minor": 100}),
                ctx("refund", 1),
            )
            .await;
        assert_error(&err, code, true);
    }
}

#[tokio::test]
async fn stripe_get_refund_is_an_authenticated_get_and_maps_a_failed_refund() {
    let rig = stripe().await;
    let mut refund = stripe_refund("failed", 4999);
    refund["failure_reason"] = json!("expired_or_canceled_card");
    rig.fake.answer(Answer::json(200, refund));
    let out = rig
        .ok(
            "payments",
            "get_refund",
            json!({"refund_id": "re_3PcwZ2LkdIwHu7ix1"}),
            ctx("follow_up", 1),
        )
        .await;
    assert_eq!(
        (&out["status"], &out["failure_reason"], &out["replayed"]),
        (
            &json!("failed"),
            &json!("expired_or_canceled_card"),
            &json!(false)
        )
    );
    let seen = rig.only_request(0);
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("GET", "/v1/refunds/re_3PcwZ2LkdIwHu7ix1")
    );
    assert_headers(
        &seen,
        &rig.fake,
        &[
            ("authorization", &format!("Bearer {STRIPE_KEY}")),
            ("stripe-version", STRIPE_VERSION),
        ],
    );
    assert!(seen.body.is_empty());
}

// ---------------------------------------------------------------------------
// paging: PagerDuty Events API v2, Slack incoming webhook, signed webhook
// ---------------------------------------------------------------------------

const WEBHOOK_PATH: &str = "/hooks/casework";

async fn paging_with(signed_content: Option<&'static str>) -> Rig {
    rig("paging", NOW_MS, |base| {
        let mut config = vec![
            ("pagerduty_base_url", base.to_string()),
            ("webhook_url", format!("{base}{WEBHOOK_PATH}")),
        ];
        if let Some(content) = signed_content {
            config.push(("webhook_signed_content", content.to_string()));
        }
        let secrets = vec![
            ("routing_key", ROUTING_KEY.to_string()),
            ("webhook_signing_secret", SIGNING_SECRET.to_string()),
            // The Slack webhook URL is itself the credential; it points at the fake.
            ("slack_webhook_url", format!("{base}{SLACK_PATH}")),
        ];
        (config, secrets)
    })
    .await
}

async fn paging() -> Rig {
    paging_with(None).await
}

fn pagerduty_accepted(dedup_key: &str) -> Answer {
    Answer::json(
        202,
        json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
    )
}

fn assert_enqueue_request(seen: &Seen, fake: &FakeProvider) {
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("POST", "/v2/enqueue")
    );
    // The routing key travels in the body; there is no auth header.
    assert_headers(seen, fake, &[("content-type", "application/json")]);
}

#[tokio::test]
async fn pagerduty_trigger_sends_the_events_v2_body_with_the_pinned_clock_timestamp() {
    let rig = paging().await;
    rig.fake.answer(pagerduty_accepted("checkout-2024-06-01"));
    let out = rig
        .ok(
            "paging",
            "trigger",
            json!({
                "summary": "Checkout failing for 12% of customers",
                "source": "checkout-api",
                "severity": "critical",
                "dedup_key": "checkout-2024-06-01",
                "component": "payments",
                "group": "web",
                "class": "ticket_burst",
                "custom_details": {"tickets_last_15m": 42, "sample": ["T-1", "T-2"]}
            }),
            ctx("page_oncall", 1),
        )
        .await;
    assert_eq!(
        out,
        json!({"dedup_key": "checkout-2024-06-01", "status": "success", "message": "Event processed"})
    );
    let seen = rig.only_request(0);
    assert_enqueue_request(&seen, &rig.fake);
    assert_eq!(
        seen.json(),
        json!({
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "dedup_key": "checkout-2024-06-01",
            "payload": {
                "summary": "Checkout failing for 12% of customers",
                "source": "checkout-api",
                "severity": "critical",
                "timestamp": "2024-06-01T10:00:00.000Z",
                "component": "payments",
                "group": "web",
                "class": "ticket_burst",
                "custom_details": {"tickets_last_15m": 42, "sample": ["T-1", "T-2"]}
            }
        })
    );
}

#[tokio::test]
async fn pagerduty_trigger_retries_reuse_the_idempotency_key_as_dedup_key() {
    let rig = paging().await;
    let key = format!("{INSTANCE}:page_oncall:1");
    let input = json!({"summary": "Login failing", "source": "auth-api", "severity": "error"});
    rig.fake.answer(Answer::text(429, ""));
    let err = rig
        .err("paging", "trigger", input.clone(), ctx("page_oncall", 1))
        .await;
    assert_error(&err, "rate_limited", true);
    rig.clock.advance_to(NOW_MS + 5_000);
    rig.fake
        .answer(Answer::json(500, json!({"status": "error"})));
    let err = rig
        .err("paging", "trigger", input.clone(), ctx("page_oncall", 2))
        .await;
    assert_error(&err, "provider_unavailable", true);
    rig.clock.advance_to(NOW_MS + 10_000);
    rig.fake.answer(pagerduty_accepted(&key));
    let out = rig
        .ok("paging", "trigger", input, ctx("page_oncall", 3))
        .await;
    assert_eq!(out["dedup_key"], key);

    let seen = rig.fake.seen();
    assert_eq!(seen.len(), 3);
    for (request, timestamp) in seen.iter().zip([
        "2024-06-01T10:00:00.000Z",
        "2024-06-01T10:00:05.000Z",
        "2024-06-01T10:00:10.000Z",
    ]) {
        assert_enqueue_request(request, &rig.fake);
        assert_eq!(
            request.json(),
            json!({
                "routing_key": ROUTING_KEY,
                "event_action": "trigger",
                "dedup_key": key,
                "payload": {"summary": "Login failing", "source": "auth-api",
                            "severity": "error", "timestamp": timestamp}
            })
        );
    }
}

#[tokio::test]
async fn pagerduty_acknowledge_and_resolve_send_the_dedup_key_without_a_payload() {
    let rig = paging().await;
    for (at, action) in ["acknowledge", "resolve"].into_iter().enumerate() {
        rig.fake.answer(pagerduty_accepted("checkout-2024-06-01"));
        let out = rig
            .ok(
                "paging",
                action,
                json!({"dedup_key": "checkout-2024-06-01"}),
                ctx(action, 1),
            )
            .await;
        assert_eq!(
            out,
            json!({"dedup_key": "checkout-2024-06-01", "status": "success", "message": "Event processed"})
        );
        let seen = rig.only_request(at);
        assert_enqueue_request(&seen, &rig.fake);
        assert_eq!(
            seen.json(),
            json!({"routing_key": ROUTING_KEY, "event_action": action, "dedup_key": "checkout-2024-06-01"})
        );
    }
}

#[tokio::test]
async fn pagerduty_rejections_are_permanent_and_never_quote_the_routing_key() {
    let rig = paging().await;
    rig.fake.answer(Answer::json(
        400,
        json!({"status": "invalid event", "message": "Event object is invalid",
               "errors": ["Length of 'dedup_key' is incorrect"]}),
    ));
    let err = rig
        .err(
            "paging",
            "resolve",
            json!({"dedup_key": "checkout-2024-06-01"}),
            ctx("resolve", 1),
        )
        .await;
    assert_error(&err, "invalid_event", false);
    assert_eq!(
        err.message,
        "PagerDuty rejected the resolve event: Event object is invalid; Length of 'dedup_key' is incorrect"
    );
    rig.fake.answer(Answer::text(403, "Forbidden"));
    let err = rig
        .err(
            "paging",
            "acknowledge",
            json!({"dedup_key": "checkout-2024-06-01"}),
            ctx("acknowledge", 1),
        )
        .await;
    assert_error(&err, "provider_rejected", false);
}

#[tokio::test]
async fn pagerduty_refuses_to_send_another_secret_as_the_routing_key() {
    let rig = paging().await;
    for name in ["webhook_signing_secret", "slack_webhook_url"] {
        let err = rig
            .err(
                "paging",
                "resolve",
                json!({"dedup_key": "checkout-2024-06-01", "routing_key_secret": name}),
                ctx("resolve", 1),
            )
            .await;
        assert_error(&err, "invalid_input", false);
    }
    assert!(
        rig.fake.seen().is_empty(),
        "another provider's secret was sent to PagerDuty"
    );
}

#[tokio::test]
async fn slack_message_is_posted_as_json_to_the_secret_webhook_url() {
    let rig = paging().await;
    let blocks =
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*SEV1* checkout"}}]);
    rig.fake.answer(Answer::text(200, "ok"));
    let out = rig
        .ok(
            "paging",
            "notify_slack",
            json!({"text": "SEV1: checkout failing", "blocks": blocks}),
            ctx("tell_slack", 1),
        )
        .await;
    assert_eq!(out, json!({"delivered": true}));
    let seen = rig.only_request(0);
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("POST", SLACK_PATH)
    );
    assert_headers(&seen, &rig.fake, &[("content-type", "application/json")]);
    assert_eq!(
        seen.json(),
        json!({"text": "SEV1: checkout failing", "blocks": blocks})
    );
}

#[tokio::test]
async fn slack_failures_map_to_codes_without_quoting_the_webhook_url() {
    let rig = paging().await;
    for (answer, code, retryable) in [
        (Answer::text(404, "no_service"), "webhook_gone", false),
        (
            Answer::text(410, "channel_is_archived"),
            "webhook_gone",
            false,
        ),
        (
            Answer::text(400, "invalid_payload"),
            "slack_rejected",
            false,
        ),
        (Answer::text(429, "rate_limited"), "rate_limited", true),
        (
            Answer::text(503, "<html>bad gateway</html>"),
            "provider_unavailable",
            true,
        ),
    ] {
        rig.fake.answer(answer);
        let err = rig
            .err(
                "paging",
                "notify_slack",
                json!({"text": "hi"}),
                ctx("tell_slack", 1),
            )
            .await;
        assert_error(&err, code, retryable);
        assert!(!err.message.contains("/services/"), "{err:?}");
    }
}

fn hmac_sha256_hex(key: &str, content: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(content);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signed-webhook request as a receiver would, from the bytes on the wire.
fn assert_signed_webhook(
    seen: &Seen,
    fake: &FakeProvider,
    key: &str,
    unix_secs: u64,
    body_only: bool,
) {
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("POST", WEBHOOK_PATH)
    );
    let timestamp = unix_secs.to_string();
    let mut signed = Vec::new();
    if !body_only {
        signed.extend_from_slice(format!("{timestamp}.").as_bytes());
    }
    signed.extend_from_slice(&seen.body);
    let signature = format!("sha256={}", hmac_sha256_hex(SIGNING_SECRET, &signed));
    assert_headers(
        seen,
        fake,
        &[
            ("content-type", "application/json"),
            ("idempotency-key", key),
            ("x-casework-signature", &signature),
            ("x-casework-timestamp", &timestamp),
        ],
    );
}

#[tokio::test]
async fn signed_webhook_carries_an_hmac_over_timestamp_dot_body_and_a_stable_idempotency_key() {
    let rig = paging().await;
    let key = format!("{INSTANCE}:announce:1");
    let input =
        json!({"event": "incident.declared", "data": {"severity": "sev1", "ticket": "T-1042"}});
    rig.fake.answer(Answer::text(503, "busy"));
    let err = rig
        .err("paging", "send_webhook", input.clone(), ctx("announce", 1))
        .await;
    assert_error(&err, "receiver_unavailable", true);

    rig.clock.advance_to(NOW_MS + 30_250);
    rig.fake.answer(Answer::text(204, ""));
    let out = rig
        .ok("paging", "send_webhook", input, ctx("announce", 2))
        .await;
    assert_eq!(out, json!({"status": 204, "id": key}));

    let seen = rig.fake.seen();
    assert_eq!(seen.len(), 2);
    for (request, (unix_secs, sent_at)) in seen.iter().zip([
        (1_717_236_000, "2024-06-01T10:00:00.000Z"),
        (1_717_236_030, "2024-06-01T10:00:30.250Z"),
    ]) {
        assert_signed_webhook(request, &rig.fake, &key, unix_secs, false);
        assert_eq!(
            request.json(),
            json!({
                "id": key,
                "event": "incident.declared",
                "instance_id": INSTANCE,
                "step_id": "announce",
                "sent_at": sent_at,
                "data": {"severity": "sev1", "ticket": "T-1042"}
            })
        );
    }
}

#[tokio::test]
async fn signed_webhook_signs_the_raw_body_when_configured_and_maps_rejections() {
    let rig = paging_with(Some("body")).await;
    let key = format!("{INSTANCE}:announce:1");
    rig.fake
        .answer(Answer::json(200, json!({"received": true})));
    let out = rig
        .ok(
            "paging",
            "send_webhook",
            json!({"event": "incident.resolved"}),
            ctx("announce", 1),
        )
        .await;
    assert_eq!(out, json!({"status": 200, "id": key}));
    let seen = rig.only_request(0);
    assert_signed_webhook(&seen, &rig.fake, &key, 1_717_236_000, true);
    assert_eq!(seen.json()["data"], Value::Null);

    rig.fake.answer(Answer::text(401, "bad signature"));
    let err = rig
        .err(
            "paging",
            "send_webhook",
            json!({"event": "incident.resolved"}),
            ctx("announce", 2),
        )
        .await;
    assert_error(&err, "webhook_rejected", false);
}

// ---------------------------------------------------------------------------
// identity: TOTP (RFC 6238) and a Twilio-Verify-shaped API
// ---------------------------------------------------------------------------

async fn identity_at(now_ms: i64) -> Rig {
    rig("identity", now_ms, |base| {
        let config = vec![
            ("verify_base_url", base.to_string()),
            ("verify_service_sid", VERIFY_SERVICE.to_string()),
        ];
        let secrets = vec![
            ("twilio_account_sid", TWILIO_SID.to_string()),
            ("twilio_auth_token", TWILIO_TOKEN.to_string()),
            ("totp_seed/cus_42", TOTP_SEED.to_string()),
            ("totp_seed/cus_bad", BAD_SEED.to_string()),
        ];
        (config, secrets)
    })
    .await
}

const BAD_SEED: &str = "NOT-A-SEED!!";

fn totp(code: &str) -> Value {
    json!({"secret_ref": "totp_seed/cus_42", "code": code})
}

#[tokio::test]
async fn totp_approves_rfc_6238_vectors_at_the_pinned_clock_and_never_returns_the_code() {
    let rig = identity_at(59_000).await;
    // RFC 6238 appendix B SHA-1 codes (last six of the eight digits) and their steps.
    for (unix_secs, code, step) in [
        (59_i64, "287082", 1),
        (1_111_111_109, "081804", 37_037_036),
        (1_234_567_890, "005924", 41_152_263),
        (2_000_000_000, "279037", 66_666_666),
    ] {
        rig.clock.advance_to(unix_secs * 1000);
        assert_eq!(rig.clock.now_ms(), unix_secs * 1000);
        let out = rig
            .ok("identity", "verify_totp", totp(code), ctx("verify", 1))
            .await;
        assert_eq!(
            out,
            json!({"approved": true, "status": "approved", "matched_step": step}),
            "T = {unix_secs}"
        );
        assert!(!out.to_string().contains(code), "{out}");
    }
    assert!(rig.fake.seen().is_empty(), "TOTP needs no provider");
}

#[tokio::test]
async fn totp_rejects_wrong_stale_and_reused_codes_without_echoing_them() {
    // 081804 belongs to step 37037036, which starts at 1111111080.
    let rig = identity_at(1_111_111_109_000).await;
    let rejected = json!({"approved": false, "status": "rejected", "matched_step": null});
    let out = rig
        .ok("identity", "verify_totp", totp("081805"), ctx("verify", 1))
        .await;
    assert_eq!(out, rejected);

    let mut reused = totp("081804");
    reused["last_used_step"] = json!(37_037_036);
    let out = rig
        .ok("identity", "verify_totp", reused, ctx("verify", 1))
        .await;
    assert_eq!(
        out,
        json!({"approved": false, "status": "reused", "matched_step": null})
    );

    // One step of drift is accepted, two are not.
    rig.clock.advance_to(1_111_111_139_000);
    let out = rig
        .ok("identity", "verify_totp", totp("081804"), ctx("verify", 1))
        .await;
    assert_eq!(out["matched_step"], 37_037_036);
    rig.clock.advance_to(1_111_111_140_000);
    let out = rig
        .ok("identity", "verify_totp", totp("081804"), ctx("verify", 1))
        .await;
    assert_eq!(out, rejected);
    assert!(!out.to_string().contains("081804"));
}

#[tokio::test]
async fn totp_errors_name_the_problem_but_never_the_code_or_the_seed() {
    let rig = identity_at(1_111_111_109_000).await;
    // A code of the wrong JSON type: the decode error names the field only.
    let err = rig
        .err(
            "identity",
            "verify_totp",
            json!({"secret_ref": "totp_seed/cus_42", "code": 81804}),
            ctx("verify", 1),
        )
        .await;
    assert_error(&err, "invalid_input", false);
    assert!(!err.message.contains("81804"), "{err:?}");

    let err = rig
        .err(
            "identity",
            "verify_totp",
            json!({"secret_ref": "totp_seed/cus_bad", "code": "081804"}),
            ctx("verify", 1),
        )
        .await;
    assert_error(&err, "invalid_seed", false);
    assert!(
        !err.message.contains("081804") && !err.message.contains(BAD_SEED),
        "{err:?}"
    );

    // `secret_ref` cannot point at another secret.
    let err = rig
        .err(
            "identity",
            "verify_totp",
            json!({"secret_ref": "twilio_auth_token", "code": "081804"}),
            ctx("verify", 1),
        )
        .await;
    assert_error(&err, "invalid_input", false);
    let err = rig
        .err(
            "identity",
            "verify_totp",
            json!({"secret_ref": "totp_seed/cus_unknown", "code": "081804"}),
            ctx("verify", 1),
        )
        .await;
    assert_error(&err, "secret_missing", false);
    assert!(!err.message.contains("081804"), "{err:?}");
}

const PHONE: &str = "+15017122661";

fn twilio_verification(status: &str, valid: bool) -> Value {
    json!({
        "sid": "VEd3e2b1c6a0f94b2e8a5c7d9f1e3b5a70", "service_sid": VERIFY_SERVICE,
        "account_sid": TWILIO_SID, "to": PHONE, "channel": "sms", "status": status,
        "valid": valid, "amount": null, "payee": null,
        "date_created": "2024-06-01T10:00:00Z", "date_updated": "2024-06-01T10:00:00Z",
        "url": format!("https://verify.twilio.com/v2/Services/{VERIFY_SERVICE}/Verifications/VEd3e2b1c6a0f94b2e8a5c7d9f1e3b5a70")
    })
}

fn twilio_error(status: u16, code: u32) -> Answer {
    Answer::json(
        status,
        json!({"code": code, "message": format!("Invalid parameter `To`: {PHONE}"),
               "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status}),
    )
}

fn assert_verify_request(seen: &Seen, fake: &FakeProvider, resource: &str) {
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path_and_query,
        format!("/v2/Services/{VERIFY_SERVICE}/{resource}")
    );
    assert_headers(
        seen,
        fake,
        &[
            ("authorization", TWILIO_BASIC),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
    );
}

#[tokio::test]
async fn verify_send_code_posts_to_and_channel_with_basic_auth() {
    let rig = identity_at(NOW_MS).await;
    rig.fake
        .answer(Answer::json(201, twilio_verification("pending", false)));
    let out = rig
        .ok(
            "identity",
            "send_code",
            json!({"to": PHONE, "channel": "sms"}),
            ctx("send_code", 1),
        )
        .await;
    assert_eq!(
        out,
        json!({"status": "pending", "verification_sid": "VEd3e2b1c6a0f94b2e8a5c7d9f1e3b5a70", "channel": "sms"})
    );
    let seen = rig.only_request(0);
    assert_verify_request(&seen, &rig.fake, "Verifications");
    assert_eq!(seen.form(), pairs(&[("To", PHONE), ("Channel", "sms")]));
    assert_eq!(seen.body_text(), "To=%2B15017122661&Channel=sms");
}

#[tokio::test]
async fn verify_check_code_maps_outcomes_and_never_returns_the_code() {
    let rig = identity_at(NOW_MS).await;
    let code = "492039";
    let cases = [
        (
            Answer::json(200, twilio_verification("approved", true)),
            json!({"approved": true, "status": "approved"}),
        ),
        (
            Answer::json(200, twilio_verification("pending", false)),
            json!({"approved": false, "status": "pending"}),
        ),
        (
            twilio_error(404, 20404),
            json!({"approved": false, "status": "expired"}),
        ),
        (
            twilio_error(429, 60202),
            json!({"approved": false, "status": "max_attempts_reached"}),
        ),
    ];
    for (at, (answer, expected)) in cases.into_iter().enumerate() {
        rig.fake.answer(answer);
        let out = rig
            .ok(
                "identity",
                "check_code",
                json!({"to": PHONE, "code": code}),
                ctx("check_code", 1),
            )
            .await;
        assert_eq!(out, expected);
        assert!(!out.to_string().contains(code), "{out}");
        let seen = rig.only_request(at);
        assert_verify_request(&seen, &rig.fake, "VerificationCheck");
        assert_eq!(seen.form(), pairs(&[("To", PHONE), ("Code", code)]));
    }
}

#[tokio::test]
async fn verify_failures_are_typed_and_quote_neither_recipient_code_nor_credentials() {
    let rig = identity_at(NOW_MS).await;
    let send = json!({"to": PHONE, "channel": "call"});
    for (answer, code, retryable) in [
        (twilio_error(429, 20429), "rate_limited", true),
        (
            Answer::text(503, "Service Unavailable"),
            "provider_unavailable",
            true,
        ),
        (twilio_error(401, 20003), "authentication_failed", false),
        (twilio_error(400, 60200), "invalid_request", false),
        (twilio_error(404, 20404), "not_found", false),
        (twilio_error(429, 60203), "max_send_attempts", false),
    ] {
        rig.fake.answer(answer);
        let err = rig
            .err("identity", "send_code", send.clone(), ctx("send_code", 1))
            .await;
        assert_error(&err, code, retryable);
        assert!(!err.message.contains("501712"), "{err:?}");
    }
    rig.fake.answer(twilio_error(500, 20500));
    let err = rig
        .err(
            "identity",
            "check_code",
            json!({"to": PHONE, "code": "492039"}),
            ctx("check_code", 1),
        )
        .await;
    assert_error(&err, "provider_unavailable", true);
    assert!(
        !err.message.contains("492039") && !err.message.contains("501712"),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------
// crm: customer lookup over REST
// ---------------------------------------------------------------------------

async fn crm() -> Rig {
    rig("crm", NOW_MS, |base| {
        let config = vec![("crm_base_url", format!("{base}/api"))];
        (config, vec![("crm_token", CRM_TOKEN.to_string())])
    })
    .await
}

fn assert_crm_request(seen: &Seen, fake: &FakeProvider, path: &str) {
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("GET", path)
    );
    assert_headers(
        seen,
        fake,
        &[
            ("accept", "application/json"),
            ("authorization", &format!("Bearer {CRM_TOKEN}")),
        ],
    );
    assert!(seen.body.is_empty());
}

#[tokio::test]
async fn crm_lookup_is_a_bearer_get_and_maps_the_customer_document() {
    let rig = crm().await;
    rig.fake.answer(Answer::json(
        200,
        json!({
            "id": "cus_42", "tier": "vip", "plan": "enterprise", "refunds_last_90_days": 2,
            "account_created": "2021-03-15T08:30:00Z", "region": "eu-west", "owner": "ada",
            "contacts": [
                {"kind": "email", "value": "ada@example.com", "verified": true},
                {"kind": "phone", "value": "+442071838750"},
                {"kind": "authenticator", "value": "totp_seed/cus_42", "verified": true}
            ]
        }),
    ));
    let out = rig
        .ok(
            "crm",
            "get_customer",
            json!({"customer_id": "cus_42"}),
            ctx("lookup", 1),
        )
        .await;
    assert_eq!(
        out,
        json!({
            "customer_id": "cus_42", "tier": "vip", "plan": "enterprise",
            "refunds_last_90_days": 2, "account_created": "2021-03-15T08:30:00Z",
            // 2021-03-15T08:30Z to the pinned 2024-06-01T10:00Z.
            "account_age_days": 1174,
            "contact_points": [
                {"kind": "email", "value": "ada@example.com", "verified": true},
                {"kind": "phone", "value": "+442071838750", "verified": false},
                {"kind": "authenticator", "value": "totp_seed/cus_42", "verified": true}
            ]
        })
    );
    let seen = rig.only_request(0);
    assert_crm_request(&seen, &rig.fake, "/api/customers/cus_42");
}

#[tokio::test]
async fn crm_unknown_customer_is_a_permanent_not_found_and_the_id_stays_one_segment() {
    let rig = crm().await;
    rig.fake
        .answer(Answer::json(404, json!({"error": "customer not found"})));
    let err = rig
        .err(
            "crm",
            "get_customer",
            json!({"customer_id": "cus/../admin"}),
            ctx("lookup", 1),
        )
        .await;
    assert_error(&err, "not_found", false);
    assert_eq!(err.message, "the CRM has no customer `cus/../admin`");
    let seen = rig.only_request(0);
    assert_crm_request(&seen, &rig.fake, "/api/customers/cus%2F..%2Fadmin");
}

#[tokio::test]
async fn crm_failures_map_to_retryable_or_permanent_without_the_token() {
    let rig = crm().await;
    for (answer, code, retryable) in [
        (
            Answer::json(401, json!({"error": "bad token"})),
            "authentication_failed",
            false,
        ),
        (
            Answer::json(403, json!({"error": "forbidden"})),
            "authentication_failed",
            false,
        ),
        (Answer::text(429, "slow down"), "crm_unavailable", true),
        (Answer::text(503, "maintenance"), "crm_unavailable", true),
        (
            Answer::json(400, json!({"error": "bad id"})),
            "crm_error",
            false,
        ),
        // A document without `tier` is the CRM's fault, not the customer's.
        (
            Answer::json(
                200,
                json!({"id": "cus_42", "plan": "pro", "refunds_last_90_days": 0,
                       "account_created": "2024-01-01T00:00:00Z"}),
            ),
            "bad_response",
            false,
        ),
    ] {
        rig.fake.answer(answer);
        let err = rig
            .err(
                "crm",
                "get_customer",
                json!({"customer_id": "cus_42"}),
                ctx("lookup", 1),
            )
            .await;
        assert_error(&err, code, retryable);
    }
}

async fn statuspage() -> Rig {
    rig("statuspage", NOW_MS, |base| {
        let config = vec![
            ("statuspage_base_url", base.to_string()),
            ("page_id", "pg_7".to_string()),
        ];
        (
            config,
            vec![("statuspage_api_key", STATUSPAGE_KEY.to_string())],
        )
    })
    .await
}

fn sp_incident(id: &str, status: &str, key: Option<&str>) -> Value {
    json!({"id": id, "name": "Login failures", "status": status, "shortlink": "https://stspg.io/abc",
           "impact": "major", "created_at": "2024-06-01T10:00:00.000Z",
           "metadata": key.map(|k| json!({"casework": {"idempotency_key": k}})).unwrap_or(json!({})),
           "incident_updates": []})
}

#[tokio::test]
async fn statuspage_create_looks_for_its_incident_then_posts_the_exact_document() {
    let rig = statuspage().await;
    let key = format!("{INSTANCE}:status_page:1");
    rig.fake.answer(Answer::json(200, json!([])));
    rig.fake.answer(Answer::json(
        201,
        sp_incident("inc_9", "investigating", Some(&key)),
    ));
    let input = json!({"name": "Login failures", "body": "We are investigating failed logins.",
                       "impact": "major", "components": {"cmp_login": "major_outage"}});
    let out = rig
        .ok(
            "statuspage",
            "create_incident",
            input.clone(),
            ctx("status_page", 1),
        )
        .await;
    assert_eq!(
        out,
        json!({"incident_id": "inc_9", "status": "investigating", "shortlink": "https://stspg.io/abc", "replayed": false})
    );
    let seen = rig.fake.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let auth = format!("OAuth {STATUSPAGE_KEY}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("GET", "/v1/pages/pg_7/incidents/unresolved")
    );
    assert_headers(
        &seen[0],
        &rig.fake,
        &[("accept", "application/json"), ("authorization", &auth)],
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path_and_query.as_str()),
        ("POST", "/v1/pages/pg_7/incidents")
    );
    assert_headers(
        &seen[1],
        &rig.fake,
        &[
            ("accept", "application/json"),
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(
        seen[1].body_text(),
        format!(
            r#"{{"incident":{{"body":"We are investigating failed logins.","component_ids":["cmp_login"],"components":{{"cmp_login":"major_outage"}},"deliver_notifications":true,"impact_override":"major","metadata":{{"casework":{{"idempotency_key":"{key}"}}}},"name":"Login failures","status":"investigating"}}}}"#
        )
    );
    // The same step again (its first outcome lost): the incident is found, none opened.
    rig.fake.answer(Answer::json(
        200,
        json!([sp_incident("inc_9", "investigating", Some(&key))]),
    ));
    let again = rig
        .ok(
            "statuspage",
            "create_incident",
            input,
            ctx("status_page", 2),
        )
        .await;
    assert_eq!(again["replayed"], json!(true));
    assert_eq!(again["incident_id"], "inc_9");
    let seen = rig.only_request(2);
    assert_eq!(seen.method.as_str(), "GET");
}

#[tokio::test]
async fn statuspage_resolve_patches_the_incident_and_failures_keep_the_key_out() {
    let rig = statuspage().await;
    rig.fake
        .answer(Answer::json(200, sp_incident("inc_9", "monitoring", None)));
    rig.fake
        .answer(Answer::json(200, sp_incident("inc_9", "resolved", None)));
    let out = rig
        .ok(
            "statuspage",
            "resolve_incident",
            json!({"incident_id": "inc_9", "body": "Logins work again.", "components": ["cmp_login"]}),
            ctx("close_out", 1),
        )
        .await;
    assert_eq!(out["status"], "resolved");
    let seen = rig.fake.seen();
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path_and_query.as_str()),
        ("PATCH", "/v1/pages/pg_7/incidents/inc_9")
    );
    assert_eq!(
        seen[1].body_text(),
        r#"{"incident":{"body":"Logins work again.","component_ids":["cmp_login"],"components":{"cmp_login":"operational"},"deliver_notifications":true,"status":"resolved"}}"#
    );
    for (answer, code, retryable) in [
        (
            Answer::json(401, json!({"error": "bad key"})),
            "authentication_failed",
            false,
        ),
        (
            Answer::json(420, json!({"error": "slow down"})),
            "rate_limited",
            true,
        ),
        (
            Answer::text(502, "bad gateway"),
            "provider_unavailable",
            true,
        ),
    ] {
        rig.fake.answer(answer);
        let err = rig
            .err(
                "statuspage",
                "resolve_incident",
                json!({"incident_id": "inc_9", "body": "b"}),
                ctx("close_out", 1),
            )
            .await;
        assert_error(&err, code, retryable);
    }
}

async fn zendesk() -> Rig {
    rig("helpdesk", NOW_MS, |base| {
        let config = vec![
            ("zendesk_base_url", base.to_string()),
            ("zendesk_email", "ops-bot@example.com".to_string()),
        ];
        (
            config,
            vec![("zendesk_api_token", ZENDESK_TOKEN.to_string())],
        )
    })
    .await
}

#[tokio::test]
async fn zendesk_update_reads_the_comments_then_puts_the_exact_ticket_and_a_retry_adds_no_second_note(
) {
    let rig = zendesk().await;
    rig.fake.answer(Answer::json(
        200,
        json!({"comments": [{"id": 1, "body": "Hello", "public": true}], "next_page": null}),
    ));
    rig.fake.answer(Answer::json(
        200,
        json!({"ticket": {"id": 35436, "status": "open", "priority": "high", "group_id": 360002,
                          "tags": ["login", "tier-2"], "subject": "Cannot log in"},
               "audit": {"id": 9}}),
    ));
    let input = json!({"ticket_id": "35436", "priority": "high", "group_id": 360002,
                       "add_tags": ["tier-2"], "remove_tags": ["tier-1"],
                       "note": "Escalated to Tier 2: first response breached."});
    let out = rig
        .ok(
            "helpdesk",
            "update_ticket",
            input.clone(),
            ctx("reassign_tier2", 1),
        )
        .await;
    assert_eq!(
        out,
        json!({"ticket_id": 35436, "status": "open", "priority": "high", "group_id": 360002,
               "tags": ["login", "tier-2"], "note_added": true, "note_replayed": false})
    );
    let seen = rig.fake.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        (
            "GET",
            "/api/v2/tickets/35436/comments.json?sort_order=desc&per_page=100"
        )
    );
    assert_headers(
        &seen[0],
        &rig.fake,
        &[
            ("accept", "application/json"),
            ("authorization", ZENDESK_BASIC),
        ],
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path_and_query.as_str()),
        ("PUT", "/api/v2/tickets/35436.json")
    );
    assert_headers(
        &seen[1],
        &rig.fake,
        &[
            ("accept", "application/json"),
            ("authorization", ZENDESK_BASIC),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(
        seen[1].body_text(),
        format!(
            r#"{{"ticket":{{"additional_tags":["tier-2"],"comment":{{"body":"Escalated to Tier 2: first response breached.\n\n(casework {INSTANCE}:reassign_tier2:1)","public":false}},"group_id":360002,"priority":"high","remove_tags":["tier-1"]}}}}"#
        )
    );
    // The same step again: its note is the newest comment, so only the fields go again.
    rig.fake.answer(Answer::json(
        200,
        json!({"comments": [{"id": 2, "public": false,
                             "body": format!("Escalated to Tier 2: first response breached.\n\n(casework {INSTANCE}:reassign_tier2:1)")}]}),
    ));
    rig.fake.answer(Answer::json(
        200,
        json!({"ticket": {"id": 35436, "status": "open", "priority": "high", "group_id": 360002, "tags": ["tier-2"]}}),
    ));
    let again = rig
        .ok("helpdesk", "update_ticket", input, ctx("reassign_tier2", 2))
        .await;
    assert_eq!(again["note_replayed"], json!(true));
    let seen = rig.fake.seen();
    assert_eq!(
        seen[3].body_text(),
        r#"{"ticket":{"additional_tags":["tier-2"],"group_id":360002,"priority":"high","remove_tags":["tier-1"]}}"#
    );
}

#[tokio::test]
async fn zendesk_failures_map_to_retryable_or_permanent_without_the_token() {
    let rig = zendesk().await;
    for (answer, code, retryable) in [
        (
            Answer::json(401, json!({"error": "Couldn't authenticate you"})),
            "authentication_failed",
            false,
        ),
        (
            Answer::json(
                422,
                json!({"error": "RecordInvalid", "description": "Record validation errors",
                       "details": {"group_id": [{"description": "Group: is invalid"}]}}),
            ),
            "invalid_ticket_update",
            false,
        ),
        (
            Answer::json(429, json!({"error": "TooManyRequests"})).with_header("retry-after", "30"),
            "rate_limited",
            true,
        ),
        (
            Answer::text(503, "maintenance"),
            "provider_unavailable",
            true,
        ),
    ] {
        rig.fake.answer(answer);
        let err = rig
            .err(
                "helpdesk",
                "link_to_problem",
                json!({"ticket_id": 35437, "problem_id": 35436}),
                ctx("link", 1),
            )
            .await;
        assert_error(&err, code, retryable);
    }
    let seen = rig.fake.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path_and_query.as_str()),
        ("PUT", "/api/v2/tickets/35437.json")
    );
    assert_eq!(
        seen[0].body_text(),
        r#"{"ticket":{"problem_id":35436,"type":"incident"}}"#
    );
}
