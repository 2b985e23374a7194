//! The only door to durable state: [`Store`]. Only `store::sled` imports sled; only
//! `store::postgres` imports tokio-postgres.

pub mod backup;
pub mod lease;
pub mod memory;
pub mod postgres;
pub mod seal;
pub mod sled;

pub use crate::calendar::history::CalendarVersion;
use crate::runtime::{Event, Millis, Record, StepError};
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
    #[error("casework: the journal key does not match the one the database {target} was created with; every daemon on it must use that same key (CASEWORK_JOURNAL_KEY or --journal-key-file)")]
    WrongDatabaseKey { target: String },
    #[error("casework: {0}")]
    Key(String),
    /// The store cannot do what was asked; the message says what to use instead.
    #[error("casework: {0}")]
    Unsupported(String),
    /// The write came from a claim that is no longer the instance's newest: another daemon
    /// took it over (this one was paused or cut off past its lease). Nothing was written.
    #[error("casework: instance {instance} is owned by another daemon now (this daemon's claim, epoch {epoch}, lapsed); it left the instance to its new owner")]
    Fenced { instance: String, epoch: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What is known about an instance without reading its journal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The instance's `search:` attributes now: name → the value's id
    /// ([`Store::search_id`]), never the value itself. A search checks a hit against this,
    /// so an index entry a crash left behind after the value changed is not a hit.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub search: std::collections::BTreeMap<String, String>,
}

impl InstanceMeta {
    pub fn is_final(&self) -> bool {
        is_final_status(&self.status)
    }
}

/// Whether an index status is an end: completed, failed or cancelled.
pub fn is_final_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
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
    /// The claim this batch is written under; a batch whose fence is not the instance's
    /// newest claim is refused whole with [`Error::Fenced`]. `None` only for an instance
    /// that does not exist (cleaning up an index entry left without one).
    pub fence: Option<Fence>,
    /// Mail this batch has handled (see [`Store::mail`]), removed in the same write so a
    /// crash either keeps the message and not its effect, or both.
    pub mail_done: Vec<u64>,
    /// Search index entries: added with the other index entries before the records,
    /// removed after them.
    pub search_add: Vec<Searched>,
    pub search_remove: Vec<Searched>,
}

/// A search index entry: `instance` of `workflow` has `attribute` with the value whose
/// id ([`Store::search_id`]) is `id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Searched {
    pub workflow: String,
    pub attribute: String,
    pub id: String,
    pub instance: String,
}

/// A daemon's claim on an instance: only the newest claim may write the instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub daemon: String,
    /// Grows with every claim of the instance by a different daemon (or after a release).
    pub epoch: u64,
}

/// What [`Store::claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The instance is this daemon's, under this fence.
    Mine(Fence),
    /// Another daemon that is alive owns it: leave it mail instead.
    Held { daemon: String },
    /// No such instance.
    Unknown,
}

/// A message for an instance another daemon owns, kept in the store until its owner has
/// handled it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mail", rename_all = "snake_case")]
pub enum Mail {
    Event {
        event: Event,
        /// Set when the event came out of the inbox: where it goes back to, in its place
        /// in arrival order, if the instance turns out not to wait for it any more.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        buffered: Option<Stamp>,
    },
    ChildFinished {
        child: String,
        result: std::result::Result<serde_json::Value, StepError>,
    },
    Cancel {
        reason: String,
    },
    Retry,
    Pause {
        by: String,
        reason: String,
    },
    Unpause {
        by: String,
        reason: String,
    },
    /// Move the instance to the workflow version with `to_hash` (`casework migrate`).
    Migrate {
        to_hash: String,
        by: String,
        reason: String,
    },
}

/// An event kept because nothing waited for its type and key when it came, until a wait
/// that starts later takes it ([`Store::hand_over`]) or it expires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffered {
    pub event: Event,
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// Where a buffered event stands in the inbox: its number (arrival order) and lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Grows with arrival: lower numbers are delivered first.
    pub seq: u64,
    pub arrived: Millis,
    /// Dropped after this instant (the inbox's time to live).
    pub until: Millis,
}

/// How much the inbox holds before it refuses ([`Inboxed::Full`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxBounds {
    /// Events kept for one type and key.
    pub per_key: usize,
    /// Events kept in all.
    pub total: usize,
}

/// What [`Store::buffer`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inboxed {
    /// Kept under this number.
    Kept(u64),
    /// Nothing was written: a bound is reached. `per_key` says which one.
    Full { per_key: bool, limit: usize },
}

/// The answer kept for an event id when the event went to the inbox as number `seq`.
pub fn buffered_answer(seq: u64) -> serde_json::Value {
    serde_json::json!({"woken": [], "buffered": seq})
}

/// A key claimed by the first write of the instance it starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    pub workflow: String,
    pub key: String,
    pub scope: ClaimScope,
    /// Which of the key's places a [`ClaimScope::WhileOpen`] claim takes, for a workflow
    /// that allows several open instances per key (always 0 for idempotency keys).
    pub place: u32,
}

impl Claim {
    /// An idempotency key: the instance keeps it for good.
    pub fn idempotency(workflow: &str, key: &str) -> Claim {
        Claim {
            workflow: workflow.to_string(),
            key: key.to_string(),
            scope: ClaimScope::Forever,
            place: 0,
        }
    }

    /// A workflow's concurrency key: held while the instance is open.
    pub fn open(workflow: &str, key: &str) -> Claim {
        Claim::open_at(workflow, key, 0)
    }

    /// Place `place` of a workflow's concurrency key (`concurrency.limit` places).
    pub fn open_at(workflow: &str, key: &str, place: u32) -> Claim {
        Claim {
            workflow: workflow.to_string(),
            key: key.to_string(),
            scope: ClaimScope::WhileOpen,
            place,
        }
    }

    /// The name space the key is kept under: the scope's, and for a key's places after
    /// the first, the place too (`open.2`), so places are claimed independently and
    /// place 0 is the claim a workflow with one open instance per key always had.
    pub fn domain(&self) -> std::borrow::Cow<'static, str> {
        match self.place {
            0 => self.scope.domain().into(),
            p => format!("{}.{p}", self.scope.domain()).into(),
        }
    }
}

/// How long a [`Claim`] is held. The two scopes are separate name spaces: an idempotency
/// key and a concurrency key with the same text never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimScope {
    /// For as long as the instance exists (idempotency: a duplicate start finds it).
    Forever,
    /// Until the instance is completed, failed or cancelled (one open instance per key).
    /// The claim is not removed when the holder finishes: the next create that finds a
    /// finished holder takes the claim over in its own atomic write, so no crash between
    /// "finished" and "released" can leave a key held by nobody alive.
    WhileOpen,
}

impl ClaimScope {
    /// What [`Store::create`] answers when a claim of this scope names `holder`, whose
    /// index status is `status` (`None`: no index entry); `None` when the claim is free
    /// to take over. A claim without its instance is left by a crash before the
    /// instance's index entry (or by a store from before claims), so it is free; so is a
    /// while-open claim whose holder has finished. Every store decides with this.
    pub fn refusal(self, holder: &str, status: Option<&str>) -> Option<Created> {
        match (status, self) {
            (None, _) => None,
            (Some(_), ClaimScope::Forever) => Some(Created::Existing(holder.to_string())),
            (Some(s), ClaimScope::WhileOpen) if !is_final_status(s) => {
                Some(Created::Open(holder.to_string()))
            }
            (Some(_), ClaimScope::WhileOpen) => None,
        }
    }

    /// The domain a key is hashed under in the stores' indexes.
    pub fn domain(self) -> &'static str {
        match self {
            ClaimScope::Forever => "idempotency",
            ClaimScope::WhileOpen => "open",
        }
    }
}

/// Which place [`Store::reopen`] of `instance` takes, given each place's holder and
/// the holder's index status (`None`: nobody holds it): `Ok(index)`, or `Err(holder)`
/// when every place is held by another open instance (the first place's holder). Every
/// store decides with this.
pub fn reopen_place(
    instance: &str,
    holders: &[Option<(String, Option<String>)>],
) -> std::result::Result<usize, String> {
    if let Some(i) = holders
        .iter()
        .position(|h| matches!(h, Some((holder, _)) if holder == instance))
    {
        return Ok(i);
    }
    let mut open = None;
    for (i, h) in holders.iter().enumerate() {
        match h {
            None => return Ok(i),
            Some((holder, status)) => {
                match ClaimScope::WhileOpen.refusal(holder, status.as_deref()) {
                    Some(_) => {
                        open.get_or_insert_with(|| holder.clone());
                    }
                    None => return Ok(i),
                }
            }
        }
    }
    Err(open.unwrap_or_default())
}

/// The index entry a store that writes a batch one piece at a time puts first when it
/// reopens an instance ([`Store::reopen`]) into a state it is not resumed from (parked
/// on its next wait, say): `running`, so a crash before the records leaves an entry that
/// the next start resumes and, finding the journal still failed, repairs; never a failed
/// entry with a journal that runs on, which nothing would look at again.
pub fn provisional_meta(b: &Batch) -> Option<InstanceMeta> {
    b.meta
        .as_ref()
        .filter(|m| m.status != "running" && m.status != "compensating")
        .map(|m| InstanceMeta {
            status: "running".into(),
            ..m.clone()
        })
}

/// The index entry a store that writes a batch one piece at a time puts before the
/// records of a step that changes search attributes: the new entry, as `running` if it is
/// not. A search hit is checked against the instance entry alone (not the journal), so a
/// crash must not keep the records and lose the entry after them, which for an instance
/// that parks would stay stale until its next step. With this entry first, that crash
/// leaves a `running` instance nobody owns, which the next start resumes from its
/// journal and whose entry it rewrites ([`Store::orphans`]).
///
/// Not for an instance's first batch: an entry before its records would be an instance
/// without a journal, and a search hit is checked against the entry, which a new
/// instance has only once its records are written.
pub fn searched_meta(b: &Batch) -> Option<InstanceMeta> {
    if b.first_seq == 0 || b.search_add.is_empty() && b.search_remove.is_empty() {
        return None;
    }
    b.meta.as_ref().map(|m| match m.status.as_str() {
        "running" | "compensating" => m.clone(),
        _ => InstanceMeta {
            status: "running".into(),
            ..m.clone()
        },
    })
}

/// What [`Store::create`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The batch was written, the key (if any) now belongs to the new instance, and the
    /// instance is owned by the creating daemon under this fence.
    New(Fence),
    /// Nothing was written: this instance already exists, or holds the idempotency key.
    Existing(String),
    /// Nothing was written: this open instance holds a [`ClaimScope::WhileOpen`] key.
    Open(String),
}

/// A stored workflow version, so instances can run the exact definition they started with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDefinition {
    pub name: String,
    pub version: u32,
    pub file: String,
    pub source: String,
}

/// # Ownership
///
/// Several daemons may share one store. Each live instance has at most one owner, the
/// only daemon that may append to its journal:
///
/// - A daemon is alive while its heartbeat ([`Store::heartbeat`]) has not lapsed.
/// - [`Store::create`] makes the creating daemon the owner of a new instance;
///   [`Store::claim`] makes a daemon the owner of an instance nobody alive owns, with a
///   higher epoch than any claim before.
/// - Every batch carries the fence it was decided under and is written only if that is
///   still the instance's newest claim, checked in the same atomic write. An owner that
///   was paused past its lease finds its writes refused ([`Error::Fenced`]) once
///   another daemon has claimed the instance.
/// - An owner gives an instance up when it parks ([`Store::release`]), so whichever daemon
///   fires its timer or receives its event next claims it.
/// - A message for an instance another daemon owns is left as mail ([`Store::post`]);
///   the owner reads it ([`Store::mailed`], [`Store::mail`]) and removes it in the batch
///   that handles it, and cannot release the instance while mail waits. Mail that races
///   a release is found by any daemon polling [`Store::mailed`].
/// - Instances that should be running but whose owner is gone are orphans
///   ([`Store::orphans`]): any daemon claims and resumes them from their journal.
///
/// Time is the caller's (`now`, `until`): daemons' clocks must agree to well within the
/// lease time. Correctness does not rest on it: the epoch check does.
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
    /// Every pinned definition, by hash (one per version ever installed: a few hundred).
    fn definitions(&self) -> Result<Vec<(String, StoredDefinition)>>;
    /// Record that a calendar version was loaded, as
    /// [`crate::calendar::history::append`] decides (a version already newest adds
    /// nothing), atomically across daemons; durable before it returns. Answers that
    /// calendar's versions, oldest first.
    fn add_calendar_version(&self, version: &CalendarVersion) -> Result<Vec<CalendarVersion>>;
    /// Write the first batch of a new instance and take its claims in one atomic write:
    /// either the records, index entries and claims are all stored, or — when the
    /// instance exists already or another instance holds one of the keys — nothing is,
    /// and the holder is named. Claims are looked at in order; a [`ClaimScope::WhileOpen`]
    /// claim whose holder has finished is free. Like [`Store::write`], durable only after
    /// a flush. This is what makes concurrent duplicate starts create one instance, and
    /// concurrent starts for one concurrency key create one open instance.
    /// The new instance is owned by `daemon` ([`Created::New`] gives the fence); the
    /// batch's own `fence` is not looked at.
    fn create(&self, batch: &Batch, claims: &[Claim], daemon: &str) -> Result<Created>;
    /// A fenced write (as [`Store::write`]) that makes a finished instance open again
    /// (an operator's retry), taking one of `places` (the [`ClaimScope::WhileOpen`]
    /// places of its key) back in the same atomic write: the place this instance still
    /// holds, else the first whose holder has finished (or that nobody holds). When
    /// another open instance holds every place, nothing is written and the first place's
    /// holder is named. This is what keeps a key's open instances within its limit when
    /// a retry races starts for the place the failed instance let go.
    fn reopen(&self, batch: &Batch, places: &[Claim]) -> Result<Option<String>>;
    /// The instance that holds an idempotency key, if any (a read: claims happen in
    /// [`Store::create`]).
    fn key_holder(&self, workflow: &str, key: &str) -> Result<Option<String>>;
    /// The id a search attribute's value is indexed under: a keyed hash in stores that
    /// seal, so neither the index nor the instance entry holds the value.
    fn search_id(&self, attribute: &str, value: &str) -> String;
    /// What seals write-only values (one-time codes) carried in events and variables:
    /// under the journal key in stores that seal, so any daemon of the cluster can open
    /// them for a plugin; under a key of this process in the memory store.
    fn write_only_sealer(&self) -> &seal::Sealer;
    /// Instances of `workflow` indexed with `attribute` = the value with `id`, in id
    /// order after `after`, at most `limit`. Entries may be stale: check each hit's
    /// [`InstanceMeta::search`].
    fn search(
        &self,
        workflow: &str,
        attribute: &str,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;
    /// Timers due at or before `now`, earliest first.
    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<Timer>>;
    fn next_timer(&self) -> Result<Option<Millis>>;
    fn waiters(&self, event_type: &str, key: &str) -> Result<Vec<Wait>>;
    /// The answer given for an event id before, if any (event deduplication).
    fn event_answer(&self, event_id: &str) -> Result<Option<serde_json::Value>>;
    fn put_event_answer(&self, event_id: &str, answer: &serde_json::Value) -> Result<()>;
    /// Replace the answer kept under `slot` by `change`'s answer to the one kept now, as
    /// one atomic step across daemons, durable before it returns; answers what is kept.
    /// `change` may be called more than once (when another daemon changed the slot in
    /// between), so it must only compute. What a windowed trigger counts lives here.
    fn update_event_answer(
        &self,
        slot: &str,
        change: &mut dyn FnMut(Option<serde_json::Value>) -> serde_json::Value,
    ) -> Result<serde_json::Value>;
    /// Renew `daemon`'s liveness until `until` (never shortens it).
    fn heartbeat(&self, daemon: &str, until: Millis) -> Result<()>;
    /// Claim `instance` for `daemon`: its own already ([`Ownership::Mine`] with the same
    /// fence), or free or owned by a daemon whose liveness lapsed before `now` (a new fence
    /// with a higher epoch), or owned by a live daemon ([`Ownership::Held`]).
    fn claim(&self, instance: &str, daemon: &str, now: Millis) -> Result<Ownership>;
    /// Give up the claim `fence` on `instance`. Returns false, and keeps the claim, when
    /// mail waits for the instance (handle it first); true when released or when the claim
    /// was not the newest any more (nothing to give up).
    fn release(&self, instance: &str, fence: &Fence) -> Result<bool>;
    /// Instances that should be running (status running or compensating) but that no
    /// daemon alive at `now` owns, oldest first.
    fn orphans(&self, now: Millis, limit: usize) -> Result<Vec<String>>;
    /// Leave mail for `instance` (durable after [`Store::flush`]).
    fn post(&self, instance: &str, mail: &Mail) -> Result<()>;
    /// Mail waiting for `instance`, in the order it was posted.
    fn mail(&self, instance: &str, limit: usize) -> Result<Vec<(u64, Mail)>>;
    /// Instances with mail waiting that `daemon` owns or that no daemon alive at `now`
    /// owns (mail posted while its owner was releasing the instance lands there; whoever
    /// finds it claims the instance and handles it).
    fn mailed(&self, daemon: &str, now: Millis, limit: usize) -> Result<Vec<String>>;
    /// Call `wake` when mail may have been posted for an instance `daemon` owns, so the
    /// owner reads [`Store::mailed`] at once instead of at its next poll. A hint only: it
    /// may come without mail and may be lost (a reconnect), so owners keep polling. Stores
    /// that share nothing with another process (sled, memory) have nobody to hear from and
    /// never call it.
    fn on_mail(&self, daemon: &str, wake: MailHint) {
        let _ = (daemon, wake);
    }

    // The inbox: events that came before anything waited for them.
    //
    // An event nobody waits for is kept ([`Store::buffer`]); whoever delivers it later
    // moves it into one instance's mail ([`Store::hand_over`], atomic: of two takers one
    // gets it), and the instance's batch that handles it removes the mail as any other.
    // An instance that turns out not to wait for it any more puts it back in its place
    // ([`Store::hand_back`], atomic too). So an event is, at every moment and across any
    // crash, in exactly one place: the inbox or one instance's mail or its journal.

    /// Keep `event` in the inbox until `until`, unless a bound is reached. An event with an
    /// id gets its answer (see [`Store::event_answer`]), [`buffered_answer`], in the same
    /// atomic write: a crash cannot keep the event without it, so the client's resend
    /// after that crash finds the answer instead of keeping the event twice.
    fn buffer(
        &self,
        event: &Event,
        arrived: Millis,
        until: Millis,
        bounds: InboxBounds,
    ) -> Result<Inboxed>;
    /// Buffered events of a type and key not expired at `now`, oldest first.
    fn buffered(
        &self,
        event_type: &str,
        key: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Buffered>>;
    /// Every buffered event, oldest first, starting after number `after`.
    fn inbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<Buffered>>;
    /// Move buffered event `seq` into `instance`'s mail, in one atomic write. False when
    /// it is gone (another instance took it, it was purged or expired).
    fn hand_over(&self, seq: u64, instance: &str) -> Result<bool>;
    /// Move mail `mail_seq` of `instance` (an event it did not wait for) into the inbox
    /// under `stamp`, in one atomic write. A stamp with number 0 gets a fresh number. No
    /// bound is checked: the event was admitted once already. The number it is kept
    /// under, or None when the mail was gone (handled or handed back already).
    fn hand_back(
        &self,
        instance: &str,
        mail_seq: u64,
        event: &Event,
        stamp: Stamp,
    ) -> Result<Option<u64>>;
    /// Remove buffered event `seq`. False when it was not there.
    fn purge(&self, seq: u64) -> Result<bool>;
    /// Remove up to `limit` events whose time ran out before `now`; how many.
    fn expire(&self, now: Millis, limit: usize) -> Result<usize>;

    /// Write a consistent snapshot of everything stored to `out` (see [`backup`]); the
    /// number of entries. Stores that are backed up by their own tools refuse.
    fn backup(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        let _ = out;
        Err(Error::Unsupported(
            "this store cannot be backed up by Casework".into(),
        ))
    }
}

/// What [`Store::on_mail`] calls: cheap, never blocking (it runs on the store's threads).
pub type MailHint = std::sync::Arc<dyn Fn() + Send + Sync>;
