//! Ownership of instances in memory: which daemon may write which instance, and until
//! when each daemon counts as alive. Used by the stores whose data one process holds
//! (sled, whose directory lock admits one daemon; [`super::memory::MemoryStore`], whose
//! handles several simulated daemons may share). The PostgreSQL store keeps the same
//! facts in its tables; the rules are the same and are written down at [`super::Store`].
//!
//! Nothing here is durable, on purpose: a process that restarts is a new daemon, and the
//! instances its predecessor owned are orphans at once, as before ownership existed.

use super::{Error, Fence, Ownership, Result};
use crate::runtime::Millis;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Leases {
    /// Until when each daemon counts as alive (its last heartbeat plus the lease time).
    alive_until: HashMap<String, Millis>,
    /// Instances with an owner, and the epoch of that owner's claim.
    owners: HashMap<String, Fence>,
    /// Last epoch handed out. One counter for all instances, so an epoch is never reused
    /// even after an instance was released and its entry forgotten.
    epoch: u64,
}

impl Leases {
    pub fn heartbeat(&mut self, daemon: &str, until: Millis) {
        let e = self.alive_until.entry(daemon.to_string()).or_insert(until);
        *e = (*e).max(until);
    }

    fn alive(&self, daemon: &str, now: Millis) -> bool {
        self.alive_until.get(daemon).is_some_and(|&t| t > now)
    }

    /// Whether `instance` has no owner that is alive at `now`.
    pub fn is_orphan(&self, instance: &str, now: Millis) -> bool {
        self.owners
            .get(instance)
            .is_none_or(|f| !self.alive(&f.daemon, now))
    }

    /// The claim of a newly created instance.
    pub fn create(&mut self, instance: &str, daemon: &str) -> Fence {
        self.epoch += 1;
        let fence = Fence {
            daemon: daemon.to_string(),
            epoch: self.epoch,
        };
        self.owners.insert(instance.to_string(), fence.clone());
        fence
    }

    /// See [`super::Store::claim`]; the caller has checked that the instance exists.
    pub fn claim(&mut self, instance: &str, daemon: &str, now: Millis) -> Ownership {
        match self.owners.get(instance) {
            Some(f) if f.daemon == daemon => return Ownership::Mine(f.clone()),
            Some(f) if self.alive(&f.daemon, now) => {
                return Ownership::Held {
                    daemon: f.daemon.clone(),
                }
            }
            _ => {}
        }
        Ownership::Mine(self.create(instance, daemon))
    }

    /// Refuses a write under a fence that is no longer the instance's newest claim.
    pub fn check(&self, instance: &str, fence: &Fence) -> Result<()> {
        match self.owners.get(instance) {
            Some(f) if f == fence => Ok(()),
            _ => Err(Error::Fenced {
                instance: instance.to_string(),
                epoch: fence.epoch,
            }),
        }
    }

    /// Gives the instance up if `fence` is its owner's claim; false if it was not.
    pub fn release(&mut self, instance: &str, fence: &Fence) -> bool {
        if self.owners.get(instance) == Some(fence) {
            self.owners.remove(instance);
            true
        } else {
            false
        }
    }

    /// Instances whose owner's heartbeat lapsed before `now`, in id order.
    pub fn lapsed_claims(&self, now: Millis) -> Vec<String> {
        let mut out: Vec<String> = self
            .owners
            .iter()
            .filter(|(_, f)| !self.alive(&f.daemon, now))
            .map(|(i, _)| i.clone())
            .collect();
        out.sort();
        out
    }

    /// The newest claim on `instance`, if it has an owner.
    pub fn owner(&self, instance: &str) -> Option<&Fence> {
        self.owners.get(instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_keeps_its_instances_while_alive_and_loses_them_when_it_lapses() {
        let mut l = Leases::default();
        l.heartbeat("a", 100);
        l.heartbeat("b", 100);
        let Ownership::Mine(fa) = l.claim("x", "a", 0) else {
            panic!("a free instance is claimed")
        };
        assert_eq!(l.claim("x", "a", 10), Ownership::Mine(fa.clone()));
        assert_eq!(
            l.claim("x", "b", 99),
            Ownership::Held { daemon: "a".into() }
        );
        // a stops renewing: at 100 it owns nothing, and b's claim fences a's writes.
        let Ownership::Mine(fb) = l.claim("x", "b", 100) else {
            panic!("a lapsed owner's instance is claimed")
        };
        assert!(fb.epoch > fa.epoch);
        assert!(matches!(l.check("x", &fa), Err(Error::Fenced { .. })));
        assert!(l.check("x", &fb).is_ok());
        // a wakes up and renews: that gives it back nothing it lost.
        l.heartbeat("a", 500);
        assert!(matches!(l.check("x", &fa), Err(Error::Fenced { .. })));
        assert!(!l.release("x", &fa));
        assert!(l.release("x", &fb));
        assert!(l.is_orphan("x", 0));
        // A released instance claimed again gets a new epoch.
        let Ownership::Mine(fa2) = l.claim("x", "a", 200) else {
            panic!()
        };
        assert!(fa2.epoch > fb.epoch);
    }
}
