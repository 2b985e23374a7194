//! `on_conflict: queue`: a start that finds every place of its key held waits in the
//! key's queue, first in, first out, and is started when an open instance with the key
//! finishes.
//!
//! A queued start is an inbox entry of type `casework.queue.<workflow>` keyed by the
//! concurrency key, holding the start's input and idempotency key, and kept until taken
//! (it never expires; an operator can list and purge it like any inbox entry). Taking it
//! is a start like any other and then the entry's removal, in that order: the start is
//! idempotent (the client's key, or `queue:<entry number>`), so a crash between the two
//! makes the next taker find the instance and only remove the entry. What takes the head
//! of a key's queue: the end of an instance with that key (`Effect::Finished`), and the
//! ownership round, which goes round the inbox (`Driver::offer_inbox`), for a finish a
//! crash interrupted. A taker that finds every place held again leaves the entry where
//! it is.

use super::{Inner, StartError};
use crate::runtime::{Event, Millis};
use crate::store::{Buffered, Inboxed};
use serde_json::{json, Value};
use std::sync::Arc;

/// How long a claim to queue a start (of a daemon that then crashed) keeps a duplicate
/// from queueing it instead.
const CLAIM_FOR_MS: Millis = 10_000;

/// Event types of queued starts begin with this; clients cannot send such events.
pub const QUEUE_TYPE_PREFIX: &str = "casework.queue.";

/// Where a queued start waits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Queued {
    /// Its number in the inbox (`GET /v1/inbox`, `casework inbox purge N`).
    pub seq: u64,
    /// The open instance it waits behind, when the start found one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind: Option<String>,
}

/// The inbox type of `workflow`'s queued starts.
pub fn queue_type(workflow: &str) -> String {
    format!("{QUEUE_TYPE_PREFIX}{workflow}")
}

/// The workflow whose queued starts events of `event_type` are, if they are.
pub fn queued_workflow(event_type: &str) -> Option<&str> {
    event_type.strip_prefix(QUEUE_TYPE_PREFIX)
}

/// Takes queued starts whose key may have a free place, one key at a time, for as long
/// as the driver lives (a task of its own: a start cannot spawn the start it queues).
pub(super) async fn run(
    inner: std::sync::Weak<Inner>,
    mut keys: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    while let Some((workflow, key)) = keys.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.dequeue(&workflow, &key).await;
        inner.done_one();
    }
}

impl Inner {
    /// Have the queue task look at `workflow`'s key `key` (counted as work in hand, so
    /// `wait_idle` waits for it).
    pub(super) fn wake_queue(&self, workflow: &str, key: &str) {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self
            .queue_wake
            .send((workflow.to_string(), key.to_string()))
            .is_err()
        {
            self.done_one();
        }
    }

    /// The oldest start waiting for `workflow`'s key `key`.
    pub(super) fn queue_head(&self, workflow: &str, key: &str) -> Result<Option<Buffered>, String> {
        Ok(self
            .store
            .buffered(&queue_type(workflow), key, Millis::MIN, 1)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next())
    }

    /// Keep a start in the queue of `workflow`'s key `key`; durable when it returns. A
    /// start sent again with the same idempotency key is kept once.
    pub(super) async fn enqueue(
        self: &Arc<Self>,
        workflow: &str,
        key: &str,
        input: &Value,
        idempotency_key: Option<&str>,
        behind: Option<String>,
    ) -> Result<super::Started, StartError> {
        let internal = |e: crate::store::Error| StartError::Internal(e.to_string());
        // NUL starts the engine's own ids: no client event id or Idempotency-Key has one.
        let id = idempotency_key.map(|k| format!("\u{0}queue\u{0}{workflow}\u{0}{k}"));
        let _in_flight = match &id {
            Some(id) => Some(self.events_in_flight.hold(id).await),
            None => None,
        };
        let queued = |seq| super::Started {
            id: String::new(),
            created: false,
            attached: false,
            queued: Some(Queued {
                seq,
                behind: behind.clone(),
            }),
        };
        if let Some(id) = &id {
            // Across daemons the lock above is not enough: the first to claim the start's
            // id queues it, a duplicate finds its number. A claim a crash left behind is
            // taken over once it is older than CLAIM_FOR_MS.
            let now = self.clock.now_ms();
            let token = super::new_id(now);
            let kept = self
                .store
                .update_event_answer(id, &mut |old| match old {
                    Some(v)
                        if v["queue_claim"].is_string()
                            && v["at"].as_i64().is_some_and(|at| at + CLAIM_FOR_MS < now) =>
                    {
                        json!({"queue_claim": token, "at": now})
                    }
                    Some(v) => v,
                    None => json!({"queue_claim": token, "at": now}),
                })
                .map_err(internal)?;
            if let Some(seq) = kept["buffered"].as_u64() {
                return Ok(queued(seq));
            }
            if kept["queue_claim"] != json!(token) {
                // Another daemon is queueing this very start: its number comes at once.
                for _ in 0..50 {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    if let Some(seq) = self
                        .store
                        .event_answer(id)
                        .map_err(internal)?
                        .and_then(|a| a["buffered"].as_u64())
                    {
                        return Ok(queued(seq));
                    }
                }
                return Err(StartError::Overloaded(super::Overloaded {
                    pending: 0,
                    retry_after_s: 1,
                }));
            }
        }
        let event = Event {
            event_type: queue_type(workflow),
            key: key.to_string(),
            data: json!({"input": input, "idempotency_key": idempotency_key}),
            id,
        };
        let now = self.clock.now_ms();
        let seq = match self
            .store
            .buffer(&event, now, Millis::MAX, self.inbox_settings().bounds)
            .map_err(internal)?
        {
            Inboxed::Kept(seq) => seq,
            Inboxed::Full { per_key, limit } => {
                self.metrics.inbox("refused", 1);
                return Err(StartError::QueueFull(if per_key {
                    format!(
                        "{limit} starts already wait for this key of `{workflow}` (inbox_per_key); the start was not kept. \
                         Try again once the open instance has finished"
                    )
                } else {
                    format!(
                        "the inbox, which holds queued starts, is full ({limit} entries, inbox_total); the start was not kept"
                    )
                }));
            }
        };
        self.commit().await.map_err(StartError::Internal)?;
        self.metrics.inbox("queued", 1);
        tracing::info!(
            workflow,
            seq,
            "start queued behind the open instance with its key"
        );
        // Kept first, then looked at: the instance it waits behind may have finished
        // (and found the queue empty) since this start found its key held.
        self.wake_queue(workflow, key);
        Ok(queued(seq))
    }

    /// Start the oldest starts waiting for `workflow`'s key `key` while places are free
    /// (at most the key's `limit` of them, then the next finish or round goes on).
    pub(super) async fn dequeue(self: &Arc<Self>, workflow: &str, key: &str) {
        let places = self
            .registry
            .latest(workflow)
            .and_then(|wf| wf.concurrency.as_ref().map(|c| c.limit.max(1)))
            .unwrap_or(1);
        for _ in 0..places {
            if !self.dequeue_one(workflow, key).await {
                return;
            }
        }
    }

    /// Start the oldest start waiting for `workflow`'s key `key`, if a place is free.
    /// Whether it took the entry (started it, found it started already, or dropped it).
    async fn dequeue_one(self: &Arc<Self>, workflow: &str, key: &str) -> bool {
        let head = match self.queue_head(workflow, key) {
            Ok(Some(h)) => h,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(workflow, "could not read the queue of a key: {e}");
                return false;
            }
        };
        let seq = head.stamp.seq;
        let idempotency_key = head.event.data["idempotency_key"]
            .as_str()
            .map_or_else(|| format!("\u{0}queue\u{0}{seq}"), str::to_string);
        let input = head.event.data["input"].clone();
        let started = self
            .start(
                workflow,
                input,
                Some(idempotency_key),
                None,
                None,
                super::StartMode::Dequeued,
            )
            .await;
        let take = match &started {
            Ok(s) => {
                if s.created {
                    tracing::info!(workflow, seq, instance = %s.id, "queued start started");
                }
                true
            }
            // Every place is held again: it stays first in line.
            Err(StartError::Open { .. }) | Err(StartError::Overloaded(_)) => false,
            Err(StartError::Internal(e)) => {
                tracing::warn!(workflow, seq, "a queued start could not start yet: {e}");
                false
            }
            Err(StartError::UnknownWorkflow(_)) => {
                tracing::warn!(
                    workflow,
                    seq,
                    "a queued start waits for a workflow that is not loaded; it stays queued (purge it with `casework inbox purge {seq}`)"
                );
                false
            }
            // The workflow changed so that this input no longer starts it: it never
            // will, and holding it would stop the queue behind it.
            Err(e) => {
                tracing::error!(workflow, seq, "a queued start was dropped: {e}");
                self.metrics.inbox("dropped", 1);
                true
            }
        };
        if take {
            if let Err(e) = self.store.purge(seq) {
                tracing::warn!(
                    workflow,
                    seq,
                    "could not remove a queued start it took: {e}"
                );
            }
            // Its removal need not be durable before anything else: a crash that loses it
            // leaves an entry whose start finds its instance.
            self.metrics.inbox("dequeued", 1);
        }
        take
    }
}
