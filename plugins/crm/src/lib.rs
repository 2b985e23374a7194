//! CRM plugin: reads the customer facts that support workflows decide on
//! (tier, plan, refund history, account age, contact points on record).

mod customer;

use casework_sdk::{Action, Plugin};

/// The `crm` plugin.
pub struct Crm;

impl Plugin for Crm {
    fn actions() -> Vec<Action> {
        vec![Action::new(
            "get_customer",
            "Fetches a customer (`GET {crm_base_url}/customers/{id}` with a bearer token): tier, plan, \
             refunds in the last 90 days, account creation time and age, and contact points. An \
             unknown id fails with the permanent code `not_found`.",
            customer::get,
        )]
    }
}

casework_sdk::export_plugin!(Crm);

#[cfg(test)]
mod tests {
    use super::Crm;

    #[test]
    fn manifest_lists_exactly_the_described_actions() {
        let manifest =
            casework_sdk::testing::assert_manifest_matches::<Crm>(include_str!("../plugin.toml"));
        let base = &manifest.config["crm_base_url"];
        assert!(
            manifest.grants.allows_url(base),
            "the default base URL must be granted"
        );
    }
}
