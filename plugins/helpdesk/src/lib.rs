//! Helpdesk plugin: Zendesk Support tickets, as the support workflows change them.
//! Field changes are idempotent by nature (setting a status twice is setting it once);
//! an internal note is not, so each carries the step's idempotency key and a retry that
//! finds it among the ticket's comments does not add it again.

mod tickets;
mod zendesk;

use casework_sdk::{Action, Plugin};

/// The `helpdesk` plugin.
pub struct Helpdesk;

impl Plugin for Helpdesk {
    fn actions() -> Vec<Action> {
        vec![
            Action::new(
                "update_ticket",
                "Changes a ticket (`PUT /api/v2/tickets/{id}.json`): status, priority, group, tags \
                 to add and to remove, and an internal note (never public). The note ends with the \
                 step's idempotency key: a retry that finds it among the ticket's comments \
                 applies the other changes again (harmless) without adding the note twice \
                 (`note_replayed: true`).",
                tickets::update,
            ),
            Action::new(
                "link_to_problem",
                "Makes a ticket an incident of a problem ticket (`type: incident`, `problem_id`), \
                 so solving the problem solves it too: how follow-up tickets of an outage are \
                 linked to the ticket that tracks it.",
                tickets::link,
            ),
        ]
    }
}

casework_sdk::export_plugin!(Helpdesk);

#[cfg(test)]
mod tests {
    use super::Helpdesk;

    #[test]
    fn manifest_lists_exactly_the_described_actions() {
        let manifest = casework_sdk::testing::assert_manifest_matches::<Helpdesk>(include_str!(
            "../plugin.toml"
        ));
        assert!(manifest
            .grants
            .allows_url(&manifest.config["zendesk_base_url"]));
        assert!(manifest.grants.allows_secret("zendesk_api_token"));
    }
}
