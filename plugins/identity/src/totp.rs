//! TOTP per RFC 6238 (HOTP per RFC 4226 over 30-second steps), checked in
//! constant time against the current step and one step either side.

use casework_sdk::{clock, log, secrets, Context, Error, Result, Sensitive};
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha1::Sha1;

const STEP_SECS: u64 = 30;
const DIGITS: u32 = 6;
/// Steps accepted on each side of the current one (clock drift, slow typing).
const DRIFT_STEPS: u64 = 1;
/// Only seeds under this prefix are read, so an input cannot point
/// `secret_ref` at an API key or token.
const SEED_PREFIX: &str = "totp_seed/";

/// Input of `verify_totp`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyInput {
    /// Name of the secret holding the customer's base32 seed, e.g.
    /// `totp_seed/cus_42`.
    pub secret_ref: String,
    /// The 6 digits the customer read from their authenticator.
    pub code: Sensitive<String>,
    /// `matched_step` of the last code accepted for this seed; a code from
    /// that step or earlier is refused as reused (RFC 6238 section 5.2).
    #[serde(default)]
    pub last_used_step: Option<u64>,
}

/// Outcome of `verify_totp`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct VerifyOutput {
    /// Whether the code proves possession of the seed.
    pub approved: bool,
    /// `approved`, `rejected` (wrong, malformed or expired) or `reused`.
    pub status: Status,
    /// The time step (Unix seconds / 30) the code belongs to, when it
    /// matched; keep it and pass it as `last_used_step` next time.
    pub matched_step: Option<u64>,
}

/// Result of a TOTP check.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The code is valid and fresh.
    Approved,
    /// The code is wrong, malformed or outside the drift window.
    Rejected,
    /// The code is valid but its step was already used.
    Reused,
}

pub fn verify(input: VerifyInput, _ctx: &Context) -> Result<VerifyOutput> {
    if !input.secret_ref.starts_with(SEED_PREFIX) || input.secret_ref.len() == SEED_PREFIX.len() {
        return Err(Error::invalid_input(format!(
            "`secret_ref` must look like `{SEED_PREFIX}<id>`"
        )));
    }
    let seed = secrets::get(&input.secret_ref)?;
    let key = decode_seed(seed.expose()).ok_or_else(|| {
        Error::permanent(
            "invalid_seed",
            format!(
                "secret `{}` is not a base32 TOTP seed of at least 10 bytes",
                input.secret_ref
            ),
        )
    })?;
    let now_step = clock::now_secs() / STEP_SECS;
    let matched_step = match parse_code(input.code.expose()) {
        Some(code) => find_step(&key, code, now_step),
        None => None,
    };
    let status = match (matched_step, input.last_used_step) {
        (None, _) => Status::Rejected,
        (Some(step), Some(last)) if step <= last => Status::Reused,
        (Some(_), _) => Status::Approved,
    };
    log::info(format_args!(
        "totp check for `{}`: {:?}",
        input.secret_ref, status
    ));
    Ok(VerifyOutput {
        approved: status == Status::Approved,
        status,
        matched_step: if status == Status::Approved {
            matched_step
        } else {
            None
        },
    })
}

/// Accepts the seed as authenticator apps show it: any case, spaces, with or
/// without `=` padding. RFC 4226 requires at least 128 bits; 80 is the
/// common floor in practice, so anything shorter is refused.
fn decode_seed(seed: &str) -> Option<Vec<u8>> {
    let cleaned: String = seed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let key = data_encoding::BASE32_NOPAD
        .decode(cleaned.as_bytes())
        .ok()?;
    (key.len() >= 10).then_some(key)
}

fn parse_code(code: &str) -> Option<u32> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// The step in `now ± DRIFT_STEPS` whose code equals `code`. Every candidate
/// is computed and compared without early exit, so timing does not reveal
/// which step (if any) matched.
fn find_step(key: &[u8], code: u32, now_step: u64) -> Option<u64> {
    let mut matched = None;
    for step in now_step.saturating_sub(DRIFT_STEPS)..=now_step.saturating_add(DRIFT_STEPS) {
        let candidate = hotp(key, step, DIGITS);
        if constant_time_eq(candidate, code) && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

fn constant_time_eq(a: u32, b: u32) -> bool {
    let diff = a ^ b;
    // Fold every bit into bit 0 without branching on the value.
    let folded = (diff | diff.wrapping_neg()) >> 31;
    folded == 0
}

/// HOTP (RFC 4226 section 5.3): HMAC-SHA1 of the big-endian counter, dynamic
/// truncation, modulo 10^digits.
fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[19] & 0x0f);
    let binary = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    binary % 10u32.pow(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use casework_sdk::testing::FakeHost;
    use serde_json::json;

    /// RFC 6238 appendix B uses the ASCII seed "12345678901234567890" for SHA1.
    const RFC_SEED_BASE32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    const RFC_VECTORS: [(u64, u32); 6] = [
        (59, 94_287_082),
        (1_111_111_109, 7_081_804),
        (1_111_111_111, 14_050_471),
        (1_234_567_890, 89_005_924),
        (2_000_000_000, 69_279_037),
        (20_000_000_000, 65_353_130),
    ];

    #[test]
    fn hotp_matches_rfc_6238_appendix_b_sha1_vectors() {
        let key = decode_seed(RFC_SEED_BASE32).unwrap();
        assert_eq!(key, b"12345678901234567890");
        for (time, expected) in RFC_VECTORS {
            assert_eq!(hotp(&key, time / STEP_SECS, 8), expected, "T = {time}");
        }
    }

    #[test]
    fn hotp_matches_rfc_4226_appendix_d() {
        let expected = [
            755_224, 287_082, 359_152, 969_429, 338_314, 254_676, 287_922, 162_583, 399_871,
            520_489,
        ];
        for (counter, code) in expected.into_iter().enumerate() {
            assert_eq!(
                hotp(b"12345678901234567890", counter as u64, 6),
                code,
                "counter {counter}"
            );
        }
    }

    fn host_at(time_secs: u64) -> FakeHost {
        let host = FakeHost::new();
        host.secret(
            "totp_seed/cus_42",
            "gezd gnbv gy3t qojq gezd gnbv gy3t qojq",
        );
        host.set_now_ms(time_secs * 1000);
        host
    }

    fn check(code: &str) -> serde_json::Value {
        json!({"secret_ref": "totp_seed/cus_42", "code": code})
    }

    #[test]
    fn approves_the_six_digit_rfc_codes_through_the_action() {
        for (time, eight_digits) in RFC_VECTORS {
            let host = host_at(time);
            let code = format!("{:06}", eight_digits % 1_000_000);
            let out = host
                .invoke::<Identity>("verify_totp", &check(&code))
                .unwrap();
            assert_eq!(
                out,
                json!({"approved": true, "status": "approved", "matched_step": time / 30}),
                "T = {time}"
            );
        }
    }

    #[test]
    fn accepts_one_step_of_drift_and_no_more() {
        // 081804 belongs to step 37037036 (T = 1111111109).
        let step = 1_111_111_109 / 30;
        for (now, approved) in [
            (step * 30 - 30, true),
            (step * 30 + 59, true),
            (step * 30 - 31, false),
            (step * 30 + 60, false),
        ] {
            let host = host_at(now);
            let out = host
                .invoke::<Identity>("verify_totp", &check("081804"))
                .unwrap();
            assert_eq!(out["approved"], approved, "now = {now}");
        }
    }

    #[test]
    fn wrong_or_malformed_codes_are_rejected_without_echo() {
        for code in ["081805", "81804", "0818044", "08180a", ""] {
            let host = host_at(1_111_111_109);
            let out = host
                .invoke::<Identity>("verify_totp", &check(code))
                .unwrap();
            assert_eq!(
                out,
                json!({"approved": false, "status": "rejected", "matched_step": null}),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_code_from_an_already_used_step_is_refused() {
        let host = host_at(1_111_111_109);
        let step = 1_111_111_109 / 30;
        let mut input = check("081804");
        input["last_used_step"] = json!(step);
        let out = host.invoke::<Identity>("verify_totp", &input).unwrap();
        assert_eq!(
            out,
            json!({"approved": false, "status": "reused", "matched_step": null})
        );
        input["last_used_step"] = json!(step - 1);
        assert_eq!(
            host.invoke::<Identity>("verify_totp", &input).unwrap()["approved"],
            true
        );
    }

    #[test]
    fn code_and_seed_never_reach_logs_or_errors() {
        let host = host_at(59);
        host.invoke::<Identity>("verify_totp", &check("287082"))
            .unwrap();
        let logs = host.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(
            logs[0].message,
            "totp check for `totp_seed/cus_42`: Approved"
        );

        // A code of the wrong JSON type: the decode error names the field only.
        let err = host
            .invoke::<Identity>(
                "verify_totp",
                &json!({"secret_ref": "totp_seed/cus_42", "code": 287082}),
            )
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(!err.message().contains("287082"), "{err}");

        host.secret("totp_seed/bad", "not base32!!");
        let err = host
            .invoke::<Identity>(
                "verify_totp",
                &json!({"secret_ref": "totp_seed/bad", "code": "123456"}),
            )
            .unwrap_err();
        assert_eq!(err.code(), "invalid_seed");
        assert!(
            !err.message().contains("base32!!") && !err.message().contains("123456"),
            "{err}"
        );
    }

    #[test]
    fn secret_ref_must_name_a_totp_seed() {
        let host = host_at(59);
        host.secret("twilio_auth_token", "tok");
        let err = host
            .invoke::<Identity>(
                "verify_totp",
                &json!({"secret_ref": "twilio_auth_token", "code": "123456"}),
            )
            .unwrap_err();
        assert_eq!((err.code(), err.is_retryable()), ("invalid_input", false));
        let err = host
            .invoke::<Identity>(
                "verify_totp",
                &json!({"secret_ref": "totp_seed/cus_missing", "code": "123456"}),
            )
            .unwrap_err();
        assert_eq!(err.code(), "secret_missing");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        for (a, b) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (u32::MAX, u32::MAX),
            (u32::MAX, 0),
            (287_082, 287_083),
        ] {
            assert_eq!(constant_time_eq(a, b), a == b, "{a} {b}");
        }
    }
}
