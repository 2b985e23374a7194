//! Events that come before their wait: kept in the store's inbox and handed to the first
//! wait for their type and key that begins later (see the inbox rules at [`Store`]).
//!
//! Two writers race for each event: the delivery that keeps it, and a step that begins
//! a wait for it. Each writes first and looks second: the delivery keeps the event and
//! then looks for waiters, the step writes its wait and then looks in the inbox. So at
//! least one of them sees the other, and [`Store::hand_over`] lets only one of them move
//! the event into the instance's mail.

use super::*;
use crate::store::{Buffered, InboxBounds, Inboxed, Stamp};

/// Default time an event waits in the inbox for its wait.
pub const DEFAULT_INBOX_KEEP_MS: Millis = 24 * 60 * 60 * 1000;
/// Default bound on events kept for one type and key.
pub const DEFAULT_INBOX_PER_KEY: usize = 100;
/// Default bound on events kept in all.
pub const DEFAULT_INBOX_TOTAL: usize = 100_000;
/// Expired events removed per ownership tick.
const EXPIRE_BATCH: usize = 1024;
/// Buffered events one ownership round looks at for waits that missed them.
const SWEEP_BATCH: usize = 256;
/// Buffered events a new wait looks at (skipping ones taken meanwhile by another wait).
const TAKE_TRIES: usize = 8;

/// How long events are kept and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxSettings {
    pub keep_ms: Millis,
    pub bounds: InboxBounds,
}

impl Default for InboxSettings {
    fn default() -> Self {
        InboxSettings {
            keep_ms: DEFAULT_INBOX_KEEP_MS,
            bounds: InboxBounds {
                per_key: DEFAULT_INBOX_PER_KEY,
                total: DEFAULT_INBOX_TOTAL,
            },
        }
    }
}

/// What became of an event ([`Driver::deliver_with`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Instances that received it.
    pub woken: Vec<String>,
    /// Kept in the inbox for a wait that begins later (under this number).
    pub buffered: Option<u64>,
}

impl Delivered {
    /// What is kept as the answer for the event's id.
    pub(super) fn answer(&self) -> Value {
        serde_json::json!({"woken": self.woken, "buffered": self.buffered})
    }

    /// What is kept for an event id while it is being delivered.
    pub(super) fn intent() -> Value {
        serde_json::json!({"delivering": true})
    }

    pub(super) fn is_intent(v: &Value) -> bool {
        v["delivering"] == Value::Bool(true)
    }

    /// An answer kept before: `{woken, buffered}`, or the bare list of woken instances
    /// that answers were before the inbox.
    pub(super) fn from_answer(v: Value) -> Delivered {
        match v {
            Value::Array(_) => Delivered {
                woken: serde_json::from_value(v).unwrap_or_default(),
                buffered: None,
            },
            v => Delivered {
                woken: serde_json::from_value(v["woken"].clone()).unwrap_or_default(),
                buffered: v["buffered"].as_u64(),
            },
        }
    }
}

/// The inbox is full: the event was not kept, and nothing was delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", full_message(*per_key, *limit))]
pub struct InboxFull {
    pub per_key: bool,
    pub limit: usize,
}

fn full_message(per_key: bool, limit: usize) -> String {
    if per_key {
        format!(
            "no step waits for this event and the inbox already keeps {limit} events of its type and key (inbox_per_key); it was not kept. Start the workflow that waits for them, purge old ones (casework inbox purge), or raise the bound"
        )
    } else {
        format!(
            "no step waits for this event and the inbox is full ({limit} events, inbox_total); it was not kept. Purge what is not needed (casework inbox purge) or raise the bound"
        )
    }
}

impl Driver {
    pub fn set_inbox(&self, settings: InboxSettings) {
        *self.inner.inbox.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    pub fn inbox_settings(&self) -> InboxSettings {
        self.inner.inbox_settings()
    }

    /// Buffered events, oldest first, after number `after`; only those of `filter` (type,
    /// key) when given.
    pub fn inbox(
        &self,
        filter: Option<(&str, &str)>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Buffered>, String> {
        let store = &self.inner.store;
        match filter {
            Some((t, k)) => Ok(store
                .buffered(t, k, Millis::MIN, limit.saturating_add(1_000))
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|b| after.is_none_or(|a| b.stamp.seq > a))
                .take(limit)
                .collect()),
            None => store.inbox(after, limit).map_err(|e| e.to_string()),
        }
    }

    /// Remove buffered events by number; how many were there. Durable when it returns.
    pub async fn purge(&self, seqs: &[u64]) -> Result<usize, String> {
        let mut n = 0;
        for seq in seqs {
            if self.inner.store.purge(*seq).map_err(|e| e.to_string())? {
                n += 1;
            }
        }
        self.inner.commit().await?;
        self.inner.metrics.inbox("purged", n as u64);
        Ok(n)
    }

    /// Give buffered events to the waits there are for them now, looking at up to
    /// `SWEEP_BATCH` of them per call and going round the whole inbox over calls.
    ///
    /// A step that begins a wait takes what the inbox holds for it once its records are
    /// durable (`take_for`). A crash between the two, or a backup taken then, leaves the
    /// instance waiting and its event kept: nothing would ever join them again. Returns
    /// how many events it handed over.
    pub fn offer_inbox(&self) -> Result<usize, String> {
        let inner = &self.inner;
        let mut cursor = inner.inbox_sweep.lock().unwrap_or_else(|e| e.into_inner());
        let page = inner
            .store
            .inbox(*cursor, SWEEP_BATCH)
            .map_err(|e| e.to_string())?;
        *cursor = if page.len() < SWEEP_BATCH {
            None
        } else {
            page.last().map(|b| b.stamp.seq)
        };
        drop(cursor);
        let mut handed = 0;
        let mut queues = std::collections::BTreeSet::new();
        for b in page {
            if let Some(workflow) = super::queue::queued_workflow(&b.event.event_type) {
                // A queued start: taken by a start once a place of its key is free (the
                // finish that should have taken it may have been cut short by a crash).
                queues.insert((workflow.to_string(), b.event.key.clone()));
                continue;
            }
            if inner.offer(b.stamp.seq, &b.event, None)?.is_some() {
                handed += 1;
            }
        }
        for (workflow, key) in queues {
            inner.wake_queue(&workflow, &key);
        }
        if handed > 0 {
            tracing::info!(
                events = handed,
                "gave kept events to waits that began before a restart"
            );
        }
        Ok(handed)
    }

    /// Drop the events whose time in the inbox ran out. Returns how many.
    pub fn expire_inbox(&self) -> Result<usize, String> {
        let inner = &self.inner;
        let n = inner
            .store
            .expire(inner.clock.now_ms(), EXPIRE_BATCH)
            .map_err(|e| e.to_string())?;
        if n > 0 {
            inner.metrics.inbox("expired", n as u64);
            tracing::info!(
                events = n,
                "dropped events nothing waited for within the inbox's time"
            );
        }
        Ok(n)
    }
}

impl Inner {
    pub(super) fn inbox_settings(&self) -> InboxSettings {
        *self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long an event of this type is kept: as the workflows waiting for it say, else
    /// the daemon's setting.
    fn keep_ms(&self, event_type: &str) -> Millis {
        self.registry
            .inbox_keep(event_type)
            .and_then(|ms| Millis::try_from(ms).ok())
            .unwrap_or_else(|| self.inbox_settings().keep_ms)
    }

    /// Keep an event nobody waited for, then give it to a wait that began meanwhile.
    pub(super) async fn keep(self: &Arc<Self>, event: &Event) -> Result<Delivered, DeliverError> {
        let settings = self.inbox_settings();
        let now = self.clock.now_ms();
        let kept = self
            .store
            .buffer(
                event,
                now,
                now.saturating_add(self.keep_ms(&event.event_type)),
                settings.bounds,
            )
            .map_err(|e| DeliverError::Internal(e.to_string()))?;
        let seq = match kept {
            Inboxed::Kept(seq) => seq,
            Inboxed::Full { per_key, limit } => {
                self.metrics.inbox("refused", 1);
                return Err(DeliverError::InboxFull(InboxFull { per_key, limit }));
            }
        };
        self.metrics.inbox("buffered", 1);
        let taker = self
            .offer(seq, event, None)
            .map_err(DeliverError::Internal)?;
        Ok(match taker {
            Some(id) => Delivered {
                woken: vec![id],
                buffered: None,
            },
            None => Delivered {
                woken: Vec::new(),
                buffered: Some(seq),
            },
        })
    }

    /// Give buffered event `seq` to the first instance now waiting for it, if any: its
    /// mail, which it is told to read. Returns that instance.
    pub(super) fn offer(
        self: &Arc<Self>,
        seq: u64,
        event: &Event,
        except: Option<&str>,
    ) -> Result<Option<String>, String> {
        let waiters = self
            .store
            .waiters(&event.event_type, &event.key)
            .map_err(|e| e.to_string())?;
        let instances: BTreeSet<String> = waiters
            .into_iter()
            .map(|w| w.instance)
            .filter(|i| Some(i.as_str()) != except)
            .collect();
        // The first waiter that exists gets it: a wait entry of an instance never
        // indexed (a start torn by a crash) is left behind stale, and its mail would be
        // read by nobody. If the event is gone, it was taken meanwhile (by the wait
        // itself, or purged): nothing left to give.
        let mut live = None;
        for i in instances {
            let meta = self.store.instance(&i).map_err(|e| e.to_string())?;
            if meta.is_some_and(|m| !m.is_final()) {
                live = Some(i);
                break;
            }
        }
        let Some(id) = live else {
            return Ok(None);
        };
        if !self.store.hand_over(seq, &id).map_err(|e| e.to_string())? {
            return Ok(None);
        }
        self.metrics.inbox("handed_over", 1);
        self.send(&id, Msg::Mail);
        Ok(Some(id))
    }

    /// A step of `id` began waits for these (event type, key): move the oldest buffered
    /// event one of them takes into its mail, and tell it to read it. Called after the
    /// step is durable.
    pub(super) fn take_for(self: &Arc<Self>, id: &str, begun: &[(&str, &str)]) {
        let now = self.clock.now_ms();
        let kinds: BTreeSet<(&str, &str)> = begun.iter().copied().collect();
        let mut candidates = Vec::new();
        for (event_type, key) in kinds {
            match self.store.buffered(event_type, key, now, TAKE_TRIES) {
                Ok(found) => candidates.extend(found),
                Err(e) => {
                    tracing::error!(error = %e, "could not look in the inbox for the events this step waits for; they stay there");
                    return;
                }
            }
        }
        // Arrival order across every event the step waits for.
        candidates.sort_by_key(|b| b.stamp.seq);
        for b in candidates {
            match self.store.hand_over(b.stamp.seq, id) {
                Ok(true) => {
                    self.metrics.inbox("handed_over", 1);
                    self.send(id, Msg::Mail);
                    return;
                }
                // Taken by another wait a moment ago: try the next.
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "could not take a buffered event; it stays in the inbox");
                    return;
                }
            }
        }
    }

    /// Mail `mail_seq` of `id` brought an event the instance no longer waits for: put it
    /// back in the inbox (in its old place, if it came from there) and offer it to
    /// whoever waits for it now.
    pub(super) async fn give_back(
        self: &Arc<Self>,
        id: &str,
        mail_seq: u64,
        event: &Event,
        stamp: Option<Stamp>,
    ) {
        let now = self.clock.now_ms();
        let stamp = stamp.unwrap_or(Stamp {
            seq: 0,
            arrived: now,
            until: now.saturating_add(self.keep_ms(&event.event_type)),
        });
        let seq = match self.store.hand_back(id, mail_seq, event, stamp) {
            Ok(Some(seq)) => seq,
            // Gone: handled by whoever holds the instance now.
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "could not return an event to the inbox; it stays in the instance's mail");
                return;
            }
        };
        self.metrics.inbox("returned", 1);
        if let Err(e) = self.commit().await {
            tracing::error!(error = %e, "could not make the inbox durable");
        }
        if let Err(e) = self.offer(seq, event, Some(id)) {
            tracing::error!(error = %e, "could not offer a returned event to the waits for it; it stays in the inbox");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_kept_before_the_inbox_still_read() {
        let old = Delivered::from_answer(serde_json::json!(["i-1"]));
        assert_eq!(old.woken, vec!["i-1".to_string()]);
        assert_eq!(old.buffered, None);
        let new = Delivered {
            woken: vec![],
            buffered: Some(7),
        };
        assert_eq!(Delivered::from_answer(new.answer()), new);
    }
}
