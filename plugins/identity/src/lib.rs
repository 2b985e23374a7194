//! Identity plugin: proves a caller holds a factor already on record, either
//! an authenticator app (TOTP) or a code sent by a Verify-style API. Codes go
//! in, only outcomes come out; no code is ever logged or returned.

mod totp;
mod verify;

use casework_sdk::{Action, Plugin};

/// The `identity` plugin.
pub struct Identity;

impl Plugin for Identity {
    fn actions() -> Vec<Action> {
        vec![
            Action::new(
                "verify_totp",
                "Checks a 6-digit TOTP code (RFC 6238, HMAC-SHA1, 30 s step, one step of drift either \
                 way) against the customer's seed, read from the secret named by `secret_ref`. \
                 Pass the previous `matched_step` as `last_used_step` to refuse a reused code.",
                totp::verify,
            ),
            Action::new(
                "send_code",
                "Sends a one-time code to a contact point on record through the Verify API \
                 (`POST /v2/Services/{sid}/Verifications`). Resending within the code's lifetime \
                 resends the same code.",
                verify::send_code,
            ),
            Action::new(
                "check_code",
                "Checks a code the customer received (`POST /v2/Services/{sid}/VerificationCheck`). \
                 A wrong, expired or exhausted code is `approved: false` with a status, not an error.",
                verify::check_code,
            ),
        ]
    }
}

casework_sdk::export_plugin!(Identity);

#[cfg(test)]
mod tests {
    use super::Identity;
    use serde_json::Value;

    #[test]
    fn manifest_lists_exactly_the_described_actions() {
        let manifest = casework_sdk::testing::assert_manifest_matches::<Identity>(include_str!(
            "../plugin.toml"
        ));
        assert!(manifest.grants.allows_secret("totp_seed/cus_42"));
    }

    #[test]
    fn codes_are_marked_sensitive_in_the_published_schemas() {
        for info in casework_sdk::testing::describe::<Identity>() {
            let schema: Value = serde_json::from_str(&info.input_schema).unwrap();
            if let Some(code) = schema["properties"].get("code") {
                assert_eq!(code["writeOnly"], true, "{}", info.name);
                assert_eq!(code["x-casework-sensitive"], true, "{}", info.name);
            }
            assert!(
                !info.output_schema.contains("\"code\""),
                "{} must not output a code",
                info.name
            );
        }
    }
}
