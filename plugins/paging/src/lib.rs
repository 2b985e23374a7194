//! Paging plugin: PagerDuty Events API v2, Slack incoming webhooks and a
//! generic HMAC-signed webhook, for emergencies and escalations.

mod pagerduty;
mod slack;
mod webhook;

use casework_sdk::{Action, Plugin};

/// The `paging` plugin.
pub struct Paging;

impl Plugin for Paging {
    fn actions() -> Vec<Action> {
        vec![
            Action::new(
                "trigger",
                "Opens (or adds to) a PagerDuty incident with a PagerDuty Events API v2 trigger. \
                 Events with the same dedup_key join one open incident; without one, the step's \
                 idempotency key is used so a retried step cannot page twice.",
                pagerduty::trigger,
            ),
            Action::new(
                "acknowledge",
                "Acknowledges the PagerDuty incident with this dedup_key, which stops its escalation.",
                pagerduty::acknowledge,
            ),
            Action::new(
                "resolve",
                "Resolves the PagerDuty incident with this dedup_key. A later trigger with the same \
                 key opens a new incident.",
                pagerduty::resolve,
            ),
            Action::new(
                "notify_slack",
                "Posts a message to Slack through an incoming webhook whose URL is a secret.",
                slack::notify,
            ),
            Action::new(
                "send_webhook",
                "POSTs a JSON event to the configured webhook URL, signed with HMAC-SHA256 \
                 (`X-Casework-Signature`) and timestamped (`X-Casework-Timestamp`).",
                webhook::send,
            ),
        ]
    }
}

casework_sdk::export_plugin!(Paging);

#[cfg(test)]
mod tests {
    use super::Paging;

    #[test]
    fn manifest_lists_exactly_the_described_actions() {
        let manifest = casework_sdk::testing::assert_manifest_matches::<Paging>(include_str!(
            "../plugin.toml"
        ));
        assert_eq!(manifest.name, "paging");
        assert!(manifest
            .grants
            .allows_url("https://events.pagerduty.com/v2/enqueue"));
    }
}
