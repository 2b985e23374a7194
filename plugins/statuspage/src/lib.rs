//! Statuspage plugin: the incidents customers see on an Atlassian Statuspage page.
//! Statuspage takes no idempotency key, so each write first looks for its own earlier
//! effect (by a marker in the incident's metadata, or the incident's state) and does
//! nothing twice when a step is retried after an outcome it never learned.

mod api;
mod incidents;

use casework_sdk::{Action, Plugin};

/// The `statuspage` plugin.
pub struct Statuspage;

impl Plugin for Statuspage {
    fn actions() -> Vec<Action> {
        vec![
            Action::new(
                "create_incident",
                "Opens an incident (`POST /v1/pages/{page_id}/incidents`) with its name, status, \
                 first message and the affected components. The step's idempotency key is kept \
                 in the incident's metadata: a retry finds the incident among the page's \
                 unresolved ones and returns it (`replayed: true`) instead of opening another.",
                incidents::create,
            ),
            Action::new(
                "update_incident",
                "Posts an update to an incident (`PATCH /v1/pages/{page_id}/incidents/{id}`): a new \
                 status and message, and component statuses. A retry whose update is already the \
                 incident's latest returns it (`replayed: true`) instead of posting it twice.",
                incidents::update,
            ),
            Action::new(
                "resolve_incident",
                "Resolves an incident with a closing message, its components back to operational. \
                 An incident resolved already is returned as it is (`replayed: true`).",
                incidents::resolve,
            ),
        ]
    }
}

casework_sdk::export_plugin!(Statuspage);

#[cfg(test)]
mod tests {
    use super::Statuspage;

    #[test]
    fn manifest_lists_exactly_the_described_actions() {
        let manifest = casework_sdk::testing::assert_manifest_matches::<Statuspage>(include_str!(
            "../plugin.toml"
        ));
        assert!(manifest
            .grants
            .allows_url(&manifest.config["statuspage_base_url"]));
        assert!(manifest.grants.allows_secret("statuspage_api_key"));
    }
}
