//! Payments plugin: refunds through a Stripe-compatible API, with the step's
//! idempotency key on every write so a retried refund cannot pay out twice.

mod fx;
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
            Action::new(
                "exchange_rate",
                "What one unit of `from` is worth in `to` (`GET {fx_base_url}/latest?from=&to=`, \
                 ECB reference rates through Frankfurter's API), as exact decimal text for \
                 `convert_money`, with its source, reference date and fetch time for the audit. \
                 A currency the service has no rate for fails with the permanent code \
                 `unknown_currency`; an outage with the retryable `fx_unavailable`.",
                fx::get,
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
