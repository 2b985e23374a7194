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

impl Inner {
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
        let id = idempotency_key.map(|k| format!("queue:{workflow}:{k}"));
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
            if let Some(answer) = self.store.event_answer(id).map_err(internal)? {
                if let Some(seq) = answer["buffered"].as_u64() {
                    return Ok(queued(seq));
                }
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
        Ok(queued(seq))
    }

    /// Start the oldest start waiting for `workflow`'s key `key`, if a place is free.
    /// Whether it started one (or found it started already and removed the entry).
    pub(super) async fn dequeue(self: &Arc<Self>, workflow: &str, key: &str) -> bool {
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
            .map_or_else(|| format!("queue:{seq}"), str::to_string);
        let input = head.event.data["input"].clone();
        let started = self
            .start(workflow, input, Some(idempotency_key), None, None, true)
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
        take && started.is_ok_and(|s| s.created)
    }
}
