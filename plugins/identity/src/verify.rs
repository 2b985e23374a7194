//! One-time codes through a Twilio-Verify-shaped API: the provider creates,
//! sends and checks the code, so this plugin never sees a code it did not
//! receive as input, and never returns one.

use casework_sdk::http::{encode_path_segment, Response};
use casework_sdk::{config, http, log, secrets, Context, Error, Result, Sensitive};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const DEFAULT_BASE_URL: &str = "https://verify.twilio.com";

/// How the code reaches the customer.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Text message. Avoid after SIM-swap or number-port signals.
    Sms,
    /// Voice call reading the code.
    Call,
    /// Email.
    Email,
    /// WhatsApp message.
    Whatsapp,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Call => "call",
            Channel::Email => "email",
            Channel::Whatsapp => "whatsapp",
        }
    }
}

/// Input of `send_code`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendInput {
    /// A contact point already on record: E.164 phone number or email.
    pub to: String,
    /// Delivery channel.
    pub channel: Channel,
}

/// The code is on its way.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SendOutput {
    /// Provider status, `pending` until checked.
    pub status: String,
    /// Provider id of the verification, for the audit trail.
    pub verification_sid: String,
    /// Channel the provider used.
    pub channel: String,
}

/// Input of `check_code`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInput {
    /// The same contact point the code was sent to.
    pub to: String,
    /// The code the customer typed.
    pub code: Sensitive<String>,
}

/// Outcome of `check_code`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct CheckOutput {
    /// Whether the customer proved they hold the contact point.
    pub approved: bool,
    /// `approved`, `pending` (wrong code, tries left), `canceled`,
    /// `expired` (no pending verification: timed out, already used or never
    /// sent) or `max_attempts_reached`.
    pub status: String,
}

/// The provider's verification resource (fields used here).
#[derive(Deserialize)]
struct Verification {
    sid: String,
    status: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    valid: bool,
}

/// The provider's error body: `{"code": 60202, "message": ..., "status": 429}`.
#[derive(Deserialize, Default)]
struct ProviderError {
    #[serde(default)]
    code: Option<u32>,
}

// Twilio error codes with a meaning workflows care about.
const NOT_FOUND: u32 = 20404;
const MAX_CHECK_ATTEMPTS: u32 = 60202;
const MAX_SEND_ATTEMPTS: u32 = 60203;
const INVALID_PARAMETER: u32 = 60200;

pub fn send_code(input: SendInput, _ctx: &Context) -> Result<SendOutput> {
    check_recipient(&input.to)?;
    let form = [
        ("To", input.to.as_str()),
        ("Channel", input.channel.as_str()),
    ];
    let response = post("Verifications", &form)?;
    match response.status {
        200..=299 => {
            let verification: Verification = response.json()?;
            log::info(format_args!(
                "verification {} sent by {}: {}",
                verification.sid,
                input.channel.as_str(),
                verification.status
            ));
            Ok(SendOutput {
                status: verification.status,
                verification_sid: verification.sid,
                channel: verification
                    .channel
                    .unwrap_or_else(|| input.channel.as_str().to_string()),
            })
        }
        _ => Err(match provider_code(&response) {
            Some(MAX_SEND_ATTEMPTS) => Error::permanent(
                "max_send_attempts",
                "the provider refuses to send more codes to this recipient for now (error 60203)",
            ),
            code => map_error(&response, code, "send code"),
        }),
    }
}

pub fn check_code(input: CheckInput, _ctx: &Context) -> Result<CheckOutput> {
    check_recipient(&input.to)?;
    let form = [
        ("To", input.to.as_str()),
        ("Code", input.code.expose().as_str()),
    ];
    let response = post("VerificationCheck", &form)?;
    let outcome = match response.status {
        200..=299 => {
            let verification: Verification = response.json()?;
            CheckOutput {
                approved: verification.valid && verification.status == "approved",
                status: verification.status,
            }
        }
        // A missing verification and exhausted tries are answers about the
        // customer, not failures of the call: the workflow branches on them.
        _ => match provider_code(&response) {
            Some(NOT_FOUND) => CheckOutput {
                approved: false,
                status: "expired".to_string(),
            },
            Some(MAX_CHECK_ATTEMPTS) => CheckOutput {
                approved: false,
                status: "max_attempts_reached".to_string(),
            },
            None if response.status == 404 => CheckOutput {
                approved: false,
                status: "expired".to_string(),
            },
            code => return Err(map_error(&response, code, "check code")),
        },
    };
    log::info(format_args!(
        "code check: {} (approved: {})",
        outcome.status, outcome.approved
    ));
    Ok(outcome)
}

fn check_recipient(to: &str) -> Result<()> {
    if to.trim().is_empty() {
        return Err(Error::invalid_input("`to` must not be empty"));
    }
    Ok(())
}

fn post(resource: &str, form: &[(&str, &str)]) -> Result<Response> {
    let service = config::require("verify_service_sid")?;
    let account = secrets::get("twilio_account_sid")?;
    let token = secrets::get("twilio_auth_token")?;
    let url = format!(
        "{}/v2/Services/{}/{resource}",
        config::base_url("verify_base_url", DEFAULT_BASE_URL),
        encode_path_segment(&service)
    );
    let response = http::post(url)
        .basic_auth(account.expose(), token.expose())
        .form(form.iter().copied())
        .send()?;
    Ok(response)
}

fn provider_code(response: &Response) -> Option<u32> {
    response.json::<ProviderError>().ok().and_then(|e| e.code)
}

/// Maps the remaining failures. The provider's message is left out on
/// purpose: it can quote the recipient or the submitted parameters.
fn map_error(response: &Response, code: Option<u32>, what: &str) -> Error {
    let status = response.status;
    let detail = match code {
        Some(code) => format!("{what}: provider answered HTTP {status} with error {code}"),
        None => format!("{what}: provider answered HTTP {status}"),
    };
    match (status, code) {
        (429, _) => Error::retryable("rate_limited", detail),
        (500..=599, _) => Error::retryable("provider_unavailable", detail),
        (401, _) => Error::permanent("authentication_failed", detail),
        (403, _) => Error::permanent("permission_denied", detail),
        (404, _) => Error::permanent("not_found", format!("{detail}; check `verify_service_sid`")),
        (_, Some(INVALID_PARAMETER)) => {
            Error::permanent("invalid_request", format!("{detail} (invalid parameter)"))
        }
        _ => Error::permanent("invalid_request", detail),
    }
}

#[cfg(test)]
mod tests {
    use crate::Identity;
    use casework_sdk::http::{self, Method, Response};
    use casework_sdk::testing::FakeHost;
    use serde_json::json;

    const BASE: &str = "http://127.0.0.1:18100";
    const SEND: &str = "http://127.0.0.1:18100/v2/Services/VA0123/Verifications";
    const CHECK: &str = "http://127.0.0.1:18100/v2/Services/VA0123/VerificationCheck";
    const CODE: &str = "492039";

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.config("verify_base_url", BASE);
        host.config("verify_service_sid", "VA0123");
        host.secret("twilio_account_sid", "AC0001");
        host.secret("twilio_auth_token", "authtoken_SECRET");
        host
    }

    fn verification(status: &str, valid: bool) -> Response {
        Response::from_json(
            if status == "pending" && !valid {
                201
            } else {
                200
            },
            &json!({"sid": "VE9876", "service_sid": "VA0123", "account_sid": "AC0001",
                    "to": "+15017122661", "channel": "sms", "status": status, "valid": valid,
                    "date_created": "2024-06-01T10:00:00Z"}),
        )
    }

    fn twilio_error(status: u16, code: u32) -> Response {
        Response::from_json(
            status,
            &json!({"code": code, "message": "Invalid parameter `To`: +15017122661", "status": status,
                    "more_info": format!("https://www.twilio.com/docs/errors/{code}")}),
        )
    }

    #[test]
    fn send_code_posts_to_and_channel_with_basic_auth() {
        let host = host();
        host.respond(Method::Post, SEND, verification("pending", false));
        let out = host
            .invoke::<Identity>(
                "send_code",
                &json!({"to": "+15017122661", "channel": "sms"}),
            )
            .unwrap();
        assert_eq!(
            out,
            json!({"status": "pending", "verification_sid": "VE9876", "channel": "sms"})
        );

        let sent = &host.requests()[0];
        assert_eq!((sent.method, sent.url.as_str()), (Method::Post, SEND));
        // base64("AC0001:authtoken_SECRET")
        assert_eq!(
            sent.header("authorization"),
            Some("Basic QUMwMDAxOmF1dGh0b2tlbl9TRUNSRVQ=")
        );
        assert_eq!(
            sent.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(sent.body_text(), "To=%2B15017122661&Channel=sms");
    }

    #[test]
    fn check_code_approves_and_never_echoes_the_code() {
        let host = host();
        host.respond(Method::Post, CHECK, verification("approved", true));
        let out = host
            .invoke::<Identity>("check_code", &json!({"to": "+15017122661", "code": CODE}))
            .unwrap();
        assert_eq!(out, json!({"approved": true, "status": "approved"}));
        let sent = &host.requests()[0];
        assert_eq!(sent.url, CHECK);
        assert_eq!(
            sent.body_form(),
            [
                ("To".into(), "+15017122661".into()),
                ("Code".into(), CODE.to_string())
            ]
        );
        assert!(!out.to_string().contains(CODE));
        assert!(host.logs().iter().all(|l| !l.message.contains(CODE)));
        assert_eq!(
            host.logs()[0].message,
            "code check: approved (approved: true)"
        );
    }

    #[test]
    fn customer_outcomes_are_outputs_not_errors() {
        let cases = [
            (
                verification("pending", false),
                json!({"approved": false, "status": "pending"}),
            ),
            (
                verification("canceled", false),
                json!({"approved": false, "status": "canceled"}),
            ),
            // Defensive: "approved" without `valid` is not an approval.
            (
                verification("approved", false),
                json!({"approved": false, "status": "approved"}),
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
        for (response, expected) in cases {
            let host = host();
            host.respond(Method::Post, CHECK, response);
            let out = host
                .invoke::<Identity>("check_code", &json!({"to": "a@b.test", "code": CODE}))
                .unwrap();
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn provider_failures_map_to_retryable_or_permanent_without_pii() {
        let cases = [
            (twilio_error(429, 20429), "rate_limited", true),
            (Response::new(503), "provider_unavailable", true),
            (twilio_error(401, 20003), "authentication_failed", false),
            (twilio_error(400, 60200), "invalid_request", false),
            (twilio_error(404, 20404), "not_found", false),
            (twilio_error(429, 60203), "max_send_attempts", false),
        ];
        for (response, code, retryable) in cases {
            let host = host();
            let status = response.status;
            host.respond(Method::Post, SEND, response);
            let err = host
                .invoke::<Identity>(
                    "send_code",
                    &json!({"to": "+15017122661", "channel": "call"}),
                )
                .unwrap_err();
            assert_eq!(
                (err.code(), err.is_retryable()),
                (code, retryable),
                "HTTP {status}: {err}"
            );
            assert!(
                !err.message().contains("+1501") && !err.message().contains("SECRET"),
                "{err}"
            );
        }
        let host = host();
        host.fail(Method::Post, CHECK, http::Error::Timeout);
        let err = host
            .invoke::<Identity>("check_code", &json!({"to": "+1", "code": CODE}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("http_timeout", true));
        assert!(!err.message().contains(CODE));
    }

    #[test]
    fn missing_service_sid_is_a_config_error() {
        let host = FakeHost::new();
        let err = host
            .invoke::<Identity>("send_code", &json!({"to": "+1", "channel": "email"}))
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("config_missing", false));
        assert!(host.requests().is_empty());
    }

    #[test]
    fn unknown_channel_is_invalid_input() {
        let host = host();
        let err = host
            .invoke::<Identity>("send_code", &json!({"to": "+1", "channel": "pigeon"}))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.message().contains("`channel`"), "{err}");
    }
}
