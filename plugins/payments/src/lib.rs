//! Payments plugin: refunds through a Stripe-compatible API, with the step's
//! idempotency key on every write so a retried refund cannot pay out twice.

mod refunds;
mod stripe;

use casework_sdk::{Action, Plugin};

/// The `payments` plugin.
pub struct Payments;

impl Plugin for Payments {
    fn actions() -> Vec<Action> {
        vec![
            Action::new(
                "refund",
                "Refunds part or all of a payment (`POST /v1/refunds`). The amount is in minor \
                 units (cents) and required, so a missing amount can never mean a full refund. \
                 Sends the step's idempotency key: a retry returns the first refund \
                 (`replayed: true`) instead of creating a second. A `failed` or `canceled` status \
                 is a successful call: branch on `status` to compensate.",
                refunds::create,
            ),
            Action::new(
                "get_refund",
                "Fetches a refund by id (`GET /v1/refunds/{id}`) to follow its status.",
                refunds::get,
            ),
        ]
    }
}

casework_sdk::export_plugin!(Payments);

#[cfg(test)]
mod tests {
    use super::Payments;

    #[test]
    fn manifest_lists_exactly_the_described_actions() {
        let manifest = casework_sdk::testing::assert_manifest_matches::<Payments>(include_str!(
            "../plugin.toml"
        ));
        assert!(manifest
            .grants
            .allows_url("https://api.stripe.com/v1/refunds"));
        assert!(manifest.grants.allows_secret("stripe_secret_key"));
    }
}
