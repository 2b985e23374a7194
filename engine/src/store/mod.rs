//! The only door to durable state: [`Store`]. Only `store::sled` imports sled.

pub mod memory;
pub mod seal;
pub mod sled;

use crate::runtime::{Millis, Record};
pub use crate::runtime::{Timer, Wait};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("casework: storage error: {0}")]
    Io(String),
    #[error("casework: the data directory {path} is in use by another casework process; stop it or pass a different --data directory")]
    Locked { path: String },
    #[error("casework: corrupt record in the journal of {instance}: {detail}")]
    Corrupt { instance: String, detail: String },
    #[error("casework: journal key does not match this data directory ({path}); pass the key it was created with (CASEWORK_JOURNAL_KEY or --journal-key-file), or restore its journal.key")]
    WrongKey { path: String },
    #[error("casework: {0}")]
    Key(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What is known about an instance without reading its journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceMeta {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub hash: String,
    /// running, parked (waiting on a timer, event or child), compensating, completed, failed, cancelled.
    pub status: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl InstanceMeta {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// Everything one step of one instance changes, written together (indexes first).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub instance: String,
    /// Sequence number of the first record.
    pub first_seq: u64,
    pub records: Vec<Record>,
    pub meta: Option<InstanceMeta>,
    pub timers_add: Vec<Timer>,
    pub timers_remove: Vec<Timer>,
    pub waits_add: Vec<Wait>,
    pub waits_remove: Vec<Wait>,
}

/// An idempotency key, claimed by the first write of the instance it starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    pub workflow: String,
    pub key: String,
}

/// What [`Store::create`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The batch was written and the key (if any) now belongs to the new instance.
    New,
    /// Nothing was written: this instance already exists, or holds the key.
    Existing(String),
}

/// A stored workflow version, so instances can run the exact definition they started with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDefinition {
    pub name: String,
    pub version: u32,
    pub file: String,
    pub source: String,
}

pub trait Store: Send + Sync + 'static {
    /// Write a batch; it is durable only after [`Store::flush`].
    fn write(&self, batch: &Batch) -> Result<()>;
    /// Make every write so far durable (one fsync for all writers: group commit).
    fn flush(&self) -> Result<()>;
    fn journal(&self, instance: &str) -> Result<Vec<Record>>;
    fn instance(&self, id: &str) -> Result<Option<InstanceMeta>>;
    /// Instances in id order (ids sort by creation time), starting after `after`.
    fn instances(&self, after: Option<&str>, limit: usize) -> Result<Vec<InstanceMeta>>;
    /// Instances that were running (not parked, not finished) when the process stopped.
    fn runnable(&self) -> Result<Vec<InstanceMeta>>;
    fn put_definition(&self, hash: &str, def: &StoredDefinition) -> Result<()>;
    fn definition(&self, hash: &str) -> Result<Option<StoredDefinition>>;
    /// Write the first batch of a new instance and claim its idempotency key in one atomic
    /// write: either the records, index entries and claim are all stored, or — when the
    /// instance exists already or another instance holds the key — nothing is, and the
    /// existing instance is named. Like [`Store::write`], durable only after a flush. This
    /// is what makes concurrent duplicate starts create one instance.
    fn create(&self, batch: &Batch, claim: Option<&Claim>) -> Result<Created>;
    /// The instance that holds an idempotency key, if any (a read: claims happen in
    /// [`Store::create`]).
    fn key_holder(&self, workflow: &str, key: &str) -> Result<Option<String>>;
    /// Timers due at or before `now`, earliest first.
    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<Timer>>;
    fn next_timer(&self) -> Result<Option<Millis>>;
    fn waiters(&self, event_type: &str, key: &str) -> Result<Vec<Wait>>;
    /// The answer given for an event id before, if any (event deduplication).
    fn event_answer(&self, event_id: &str) -> Result<Option<serde_json::Value>>;
    fn put_event_answer(&self, event_id: &str, answer: &serde_json::Value) -> Result<()>;
}
