//! Windowed triggers: a workflow that starts once when `at_least` matching events for one
//! key arrive within `within` (`count:` on an event trigger), e.g. ten tickets about one
//! component in fifteen minutes make an outage.
//!
//! What a window has counted is kept in the store (one slot per workflow, trigger and
//! key, changed atomically across daemons by [`crate::store::Store::update_event_answer`]),
//! so counts survive restarts and add up across daemons. This module only decides; the
//! caller (see `triggers.rs`) starts the instance and delivers events.
//!
//! A window that reaches its count records the round it fires in the same atomic change,
//! and the instance's idempotency key names that round. A crash between the change and the
//! start loses nothing: the next event for the key (or the resent one) finds the round
//! open and starts it with the same key, which creates the instance once. While the round's
//! instance is open, events are not counted but given to it; once it has finished,
//! counting starts afresh.

use crate::runtime::Millis;
use serde::{Deserialize, Serialize};

/// The most events a window may ask for (`count.at_least`): what a window keeps is bounded
/// by it.
pub const MAX_AT_LEAST: u32 = 1000;

/// `count:` of a trigger, as compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub at_least: u32,
    pub within_ms: Millis,
}

/// What a window has counted, as kept in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Events counted in the current round, oldest first: their ids (none for events sent
    /// without one) and when they arrived.
    #[serde(default)]
    pub counted: Vec<(Option<String>, Millis)>,
    /// The round whose instance was started and has not been seen finished.
    #[serde(default)]
    pub open: Option<Open>,
    /// Rounds fired so far (the next round's number).
    #[serde(default)]
    pub rounds: u64,
    /// Ids counted in the round that fired last, so their resends (the webhook did not
    /// hear back) are not counted again in the next round. At most `at_least`.
    #[serde(default)]
    pub fired_ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub round: u64,
    /// The event that completed the count (its resend is not given to the instance again).
    pub fired_by: Option<String>,
    pub count: u32,
    pub first_at: Millis,
}

/// What to do with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Counted (or counted before: a resent id), not yet enough.
    Counted { count: u32 },
    /// This event completed the count: start round `round`.
    Fire(Open),
    /// Round `open.round` is open: make sure it started, and give it the event.
    Open(Open),
}

impl Window {
    /// Reads a stored window (none stored: an empty one). A value in another shape is an
    /// error, not an empty window: starting again from round 0 could reuse an old
    /// round's instance key.
    pub fn read(stored: Option<serde_json::Value>) -> Result<Window, String> {
        match stored {
            None => Ok(Window::default()),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| format!("the stored count does not read: {e}")),
        }
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Counts the event `id` that arrived at `now`.
    pub fn add(mut self, id: Option<&str>, now: Millis, t: Threshold) -> (Window, Decision) {
        if let Some(open) = &self.open {
            let open = open.clone();
            return (self, Decision::Open(open));
        }
        // Only events inside the window count: it slides with each arrival.
        let since = now.saturating_sub(t.within_ms);
        self.counted.retain(|(_, at)| *at > since);
        let seen = id.is_some_and(|id| {
            self.counted.iter().any(|(c, _)| c.as_deref() == Some(id))
                || self.fired_ids.iter().any(|f| f == id)
        });
        if !seen {
            self.counted.push((id.map(str::to_string), now));
        }
        let count = self.counted.len() as u32;
        if count < t.at_least {
            return (self, Decision::Counted { count });
        }
        let open = Open {
            round: self.rounds,
            fired_by: id.map(str::to_string),
            count,
            first_at: self.counted.first().map_or(now, |(_, at)| *at),
        };
        self.rounds += 1;
        self.fired_ids = self.counted.drain(..).filter_map(|(id, _)| id).collect();
        self.open = Some(open.clone());
        (self, Decision::Fire(open))
    }

    /// Round `round`'s instance has finished: counting starts afresh (unless a later round
    /// is open already).
    pub fn finished(mut self, round: u64) -> Window {
        if self.open.as_ref().is_some_and(|o| o.round == round) {
            self.open = None;
        }
        self
    }
}

/// What names a windowed trigger's counts: a hash of what it counts (event type, `when:`,
/// `key:`) and how (`at_least`, `within`), never its place among the triggers.
pub fn identity(
    event_type: &str,
    when: Option<&str>,
    key: Option<&str>,
    at_least: u32,
    within_ms: u64,
) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::json!([event_type, when, key, at_least, within_ms]).to_string();
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The idempotency key of a round's instance: trigger, round, when its first event came,
/// and the window key (the time keeps keys apart should a window ever start over).
pub fn start_key(trigger: &str, key: &str, open: &Open) -> String {
    format!("window:{trigger}:{}:{}:{key}", open.round, open.first_at)
}

/// Where a window is kept (in the event-answer slots, whose names are hashed).
pub fn slot(workflow: &str, trigger: &str, key: &str) -> String {
    format!("\u{0}window/{workflow}/{trigger}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Threshold = Threshold {
        at_least: 3,
        within_ms: 60_000,
    };

    fn feed(w: Window, events: &[(Option<&str>, Millis)]) -> (Window, Vec<Decision>) {
        let mut w = w;
        let mut out = Vec::new();
        for (id, at) in events {
            let (next, d) = w.add(*id, *at, T);
            w = next;
            out.push(d);
        }
        (w, out)
    }

    #[test]
    fn fires_once_when_the_count_is_reached_inside_the_window() {
        let (w, d) = feed(
            Window::default(),
            &[(Some("a"), 0), (Some("b"), 10_000), (Some("c"), 20_000)],
        );
        assert_eq!(d[0], Decision::Counted { count: 1 });
        assert_eq!(d[1], Decision::Counted { count: 2 });
        let Decision::Fire(open) = &d[2] else {
            panic!("{d:?}")
        };
        assert_eq!((open.round, open.count, open.first_at), (0, 3, 0));
        assert_eq!(open.fired_by.as_deref(), Some("c"));
        // While the round is open, nothing more is counted and nothing fires again.
        let (w, d) = feed(
            w,
            &[
                (Some("d"), 21_000),
                (Some("e"), 22_000),
                (Some("f"), 23_000),
            ],
        );
        assert!(d
            .iter()
            .all(|d| matches!(d, Decision::Open(o) if o.round == 0)));
        assert!(w.counted.is_empty());
    }

    #[test]
    fn events_older_than_the_window_do_not_count() {
        let (_, d) = feed(
            Window::default(),
            &[
                (Some("a"), 0),
                (Some("b"), 30_000),
                (Some("c"), 60_000),
                (Some("d"), 70_000),
            ],
        );
        // At 60 s, `a` (60 s old) has left the window.
        assert_eq!(d[2], Decision::Counted { count: 2 });
        assert!(matches!(&d[3], Decision::Fire(o) if o.first_at == 30_000));
    }

    #[test]
    fn a_resent_event_counts_once_and_events_without_ids_each_count() {
        let (_, d) = feed(
            Window::default(),
            &[(Some("a"), 0), (Some("a"), 1), (Some("a"), 2)],
        );
        assert_eq!(d[2], Decision::Counted { count: 1 });
        let (_, d) = feed(Window::default(), &[(None, 0), (None, 1), (None, 2)]);
        assert!(matches!(d[2], Decision::Fire(_)));
    }

    #[test]
    fn a_resend_of_an_event_that_fired_a_round_does_not_count_in_the_next() {
        let (w, _) = feed(
            Window::default(),
            &[(Some("a"), 0), (Some("b"), 1), (Some("c"), 2)],
        );
        let w = w.finished(0);
        let (w, d) = feed(w, &[(Some("c"), 3), (Some("a"), 4), (Some("d"), 5)]);
        assert_eq!(d[0], Decision::Counted { count: 0 }, "{w:?}");
        assert_eq!(d[2], Decision::Counted { count: 1 });
    }

    #[test]
    fn counting_starts_afresh_after_the_round_finishes() {
        let (w, _) = feed(Window::default(), &[(None, 0), (None, 1), (None, 2)]);
        // An older round finishing does not close a newer one.
        let w = w.finished(7);
        assert!(w.open.is_some());
        let w = w.finished(0);
        let (w, d) = feed(w, &[(None, 3), (None, 4)]);
        assert_eq!(d[1], Decision::Counted { count: 2 });
        let (_, d) = feed(w, &[(None, 5)]);
        assert!(matches!(&d[0], Decision::Fire(o) if o.round == 1));
    }

    #[test]
    fn what_is_kept_is_bounded_by_the_count() {
        let mut w = Window::default();
        for i in 0..10_000 {
            let (next, _) = w.add(None, i, T);
            let last = next.rounds.saturating_sub(1);
            w = next.finished(last);
            assert!(w.counted.len() < T.at_least as usize);
        }
    }

    #[test]
    fn a_stored_window_reads_back_and_anything_else_is_an_error() {
        let (w, _) = feed(Window::default(), &[(Some("a"), 5)]);
        assert_eq!(Window::read(Some(w.to_value())), Ok(w));
        assert!(Window::read(Some(serde_json::json!("junk"))).is_err());
        assert_eq!(Window::read(None), Ok(Window::default()));
    }
}
