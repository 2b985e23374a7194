//! [`Store`] in memory, with the durability of a disk store made explicit, for tests and
//! simulations.
//!
//! A [`MemoryStore`] is a cheap handle: clones share the same data, so a driver can be
//! dropped ("crashed") and a fresh one started over what it left. Writes are visible to
//! reads at once (as with sled) but only [`Store::flush`] makes them durable; the writes
//! since the last flush are kept as an ordered list of operations. [`MemoryStore::crash`]
//! keeps a prefix of that list (a log-structured store recovers a prefix of its writes; the
//! driver's ordering rules assume no more), throws the rest away, and returns a new handle.
//! Every handle from before the crash is dead: its reads and writes fail, so whatever the
//! crashed driver still had running cannot touch the data any more.
//!
//! Several simulated daemons can share one store: [`MemoryStore::connect`] gives a handle
//! of its own, which [`MemoryStore::kill`] stops without touching the data (a daemon
//! SIGKILLed while the database lives on). Ownership ([`super::lease::Leases`]) is kept
//! beside the data and survives a kill; a [`MemoryStore::crash`] starts it afresh, as a
//! restarted sled process does.
//!
//! Nothing leaves the process, so values are not sealed.

use super::lease::Leases;
use super::seal::{JournalKey, Sealer};
use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// Set by [`MemoryStore::kill`]: this handle (and its clones) is dead.
    killed: Arc<AtomicBool>,
    /// Write-only values are sealed even here, so nothing can come to rely on reading one.
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    generation: u64,
    /// Flushes succeed without making anything durable (see [`MemoryStore::hold_flushes`]).
    hold: bool,
    /// What reads see: durable data plus every write since the last flush.
    live: Data,
    durable: Data,
    /// Writes since the last flush, in the order a disk store would log them.
    pending: Vec<Op>,
    leases: Leases,
}

#[derive(Clone, Default)]
struct Data {
    journal: BTreeMap<(String, u64), Record>,
    instances: BTreeMap<String, InstanceMeta>,
    definitions: HashMap<String, StoredDefinition>,
    calendars: HashMap<String, Vec<CalendarVersion>>,
    keys: HashMap<(String, String), String>,
    timers: BTreeSet<(Millis, String, u32)>,
    waits: BTreeSet<(String, String, String, u32)>,
    /// (workflow, attribute, value id, instance).
    search: BTreeSet<(String, String, String, String)>,
    events: HashMap<String, Value>,
    mail: BTreeMap<(String, u64), Mail>,
    /// Last mail number handed out.
    mail_seq: u64,
    inbox: BTreeMap<u64, Buffered>,
    /// Last inbox number handed out.
    inbox_seq: u64,
}

#[derive(Clone)]
enum Op {
    TimerAdd(Timer),
    TimerRemove(Timer),
    WaitAdd(Wait),
    WaitRemove(Wait),
    SearchAdd(Searched),
    SearchRemove(Searched),
    /// One batch of records, atomic like sled's `apply_batch`.
    Journal(String, u64, Vec<Record>),
    Meta(InstanceMeta),
    Definition(String, StoredDefinition),
    /// A calendar's whole history, replaced.
    Calendar(String, Vec<CalendarVersion>),
    Key(String, String, String),
    EventAnswer(String, Value),
    Post(String, u64, Mail),
    MailDone(String, Vec<u64>),
    Buffer(Buffered),
    /// Inbox entry to an instance's mail (under this mail number), atomic like a sled
    /// transaction.
    HandOver(u64, String, u64),
    /// An instance's mail back to the inbox, atomic.
    HandBack(String, u64, Buffered),
    Unbuffer(u64),
}

fn timer_tuple(t: &Timer) -> (Millis, String, u32) {
    (t.at, t.instance.clone(), t.frame)
}

fn search_tuple(s: &Searched) -> (String, String, String, String) {
    (
        s.workflow.clone(),
        s.attribute.clone(),
        s.id.clone(),
        s.instance.clone(),
    )
}

fn wait_tuple(w: &Wait) -> (String, String, String, u32) {
    (
        w.event_type.clone(),
        w.key.clone(),
        w.instance.clone(),
        w.frame,
    )
}

impl Data {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::TimerAdd(t) => {
                self.timers.insert(timer_tuple(t));
            }
            Op::TimerRemove(t) => {
                self.timers.remove(&timer_tuple(t));
            }
            Op::WaitAdd(w) => {
                self.waits.insert(wait_tuple(w));
            }
            Op::WaitRemove(w) => {
                self.waits.remove(&wait_tuple(w));
            }
            Op::SearchAdd(e) => {
                self.search.insert(search_tuple(e));
            }
            Op::SearchRemove(e) => {
                self.search.remove(&search_tuple(e));
            }
            Op::Journal(instance, first, records) => {
                for (i, r) in records.iter().enumerate() {
                    self.journal
                        .insert((instance.clone(), first + i as u64), r.clone());
                }
            }
            Op::Meta(m) => {
                self.instances.insert(m.id.clone(), m.clone());
            }
            Op::Definition(hash, def) => {
                self.definitions.insert(hash.clone(), def.clone());
            }
            Op::Calendar(name, history) => {
                self.calendars.insert(name.clone(), history.clone());
            }
            Op::Key(workflow, key, id) => {
                self.keys
                    .insert((workflow.clone(), key.clone()), id.clone());
            }
            Op::EventAnswer(id, answer) => {
                self.events.insert(id.clone(), answer.clone());
            }
            Op::Post(instance, seq, mail) => {
                self.mail_seq = self.mail_seq.max(*seq);
                self.mail.insert((instance.clone(), *seq), mail.clone());
            }
            Op::MailDone(instance, seqs) => {
                for seq in seqs {
                    self.mail.remove(&(instance.clone(), *seq));
                }
            }
            Op::Buffer(b) => {
                self.inbox_seq = self.inbox_seq.max(b.stamp.seq);
                if let Some(id) = &b.event.id {
                    self.events.insert(id.clone(), buffered_answer(b.stamp.seq));
                }
                self.inbox.insert(b.stamp.seq, b.clone());
            }
            Op::HandOver(seq, instance, mail_seq) => {
                if let Some(b) = self.inbox.remove(seq) {
                    self.mail_seq = self.mail_seq.max(*mail_seq);
                    self.mail.insert(
                        (instance.clone(), *mail_seq),
                        Mail::Event {
                            event: b.event,
                            buffered: Some(b.stamp),
                        },
                    );
                }
            }
            Op::HandBack(instance, mail_seq, b) => {
                if self.mail.remove(&(instance.clone(), *mail_seq)).is_some() {
                    self.inbox_seq = self.inbox_seq.max(b.stamp.seq);
                    self.inbox.insert(b.stamp.seq, b.clone());
                }
            }
            Op::Unbuffer(seq) => {
                self.inbox.remove(seq);
            }
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// Claims taken for `b`'s instance, then `b`, one write at a time as the sled store
    /// writes them (the index entry after the records), so a crash may keep any prefix.
    /// A reopen's `provisional` index entry comes between the claims and the batch.
    fn take(&mut self, claims: &[Claim], provisional: Option<InstanceMeta>, b: &Batch) {
        let mut ops: Vec<Op> = claims
            .iter()
            .map(|c| {
                let (workflow, key) = key_of(c);
                Op::Key(workflow, key, b.instance.clone())
            })
            .collect();
        ops.extend(provisional.map(Op::Meta));
        ops.extend(batch_ops(b));
        for op in ops {
            self.live.apply(&op);
            self.pending.push(op);
        }
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            shared: Arc::new(Mutex::new(Shared::default())),
            generation: 0,
            killed: Arc::new(AtomicBool::new(false)),
            sealer: Arc::new(Sealer::new(&JournalKey::ephemeral())),
        }
    }

    /// Another handle on the same data, for another daemon: it dies alone with
    /// [`MemoryStore::kill`].
    pub fn connect(&self) -> MemoryStore {
        MemoryStore {
            shared: self.shared.clone(),
            generation: self.generation,
            killed: Arc::new(AtomicBool::new(false)),
            sealer: self.sealer.clone(),
        }
    }

    /// The daemon using this handle (and its clones) is gone: every later read and write
    /// through them fails. The data, including what it wrote, stays.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    /// Whether [`MemoryStore::kill`] stopped this handle.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Shared>> {
        let g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if self.killed.load(Ordering::SeqCst) {
            return Err(Error::Io(
                "this store handle belongs to a daemon that was killed".into(),
            ));
        }
        if g.generation != self.generation {
            return Err(Error::Io(
                "this store handle belongs to a process that crashed".into(),
            ));
        }
        Ok(g)
    }

    fn log(&self, ops: Vec<Op>) -> Result<()> {
        let mut g = self.lock()?;
        for op in ops {
            g.live.apply(&op);
            g.pending.push(op);
        }
        Ok(())
    }

    /// While `hold` is set, flushes report success but make nothing durable, so a test can
    /// crash at an exact write with [`MemoryStore::crash`].
    pub fn hold_flushes(&self, hold: bool) {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).hold = hold;
    }

    /// How many writes are not durable yet.
    pub fn pending_writes(&self) -> usize {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .len()
    }

    /// Simulate a crash: the first `keep` writes since the last flush survive (as if the disk
    /// had got that far), the rest are lost. Every existing handle stops working; the
    /// returned one sees what survived.
    pub fn crash(&self, keep: usize) -> MemoryStore {
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let pending = std::mem::take(&mut g.pending);
        for op in pending.iter().take(keep) {
            g.durable.apply(op);
        }
        g.live = g.durable.clone();
        g.generation += 1;
        g.hold = false;
        g.leases = Leases::default();
        MemoryStore {
            shared: self.shared.clone(),
            generation: g.generation,
            killed: Arc::new(AtomicBool::new(false)),
            // The key survives as a journal key does: a crash loses no write-only value.
            sealer: self.sealer.clone(),
        }
    }
}

/// A batch as the writes a disk store logs, in the sled store's order: indexes first,
/// then records, meta, removals.
fn batch_ops(b: &Batch) -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(b.timers_add.iter().cloned().map(Op::TimerAdd));
    ops.extend(b.waits_add.iter().cloned().map(Op::WaitAdd));
    ops.extend(b.search_add.iter().cloned().map(Op::SearchAdd));
    if !b.records.is_empty() {
        // As the sled store: see `searched_meta`.
        ops.extend(searched_meta(b).map(Op::Meta));
        ops.push(Op::Journal(
            b.instance.clone(),
            b.first_seq,
            b.records.clone(),
        ));
    }
    ops.extend(b.meta.iter().cloned().map(Op::Meta));
    ops.extend(b.timers_remove.iter().cloned().map(Op::TimerRemove));
    ops.extend(b.waits_remove.iter().cloned().map(Op::WaitRemove));
    ops.extend(b.search_remove.iter().cloned().map(Op::SearchRemove));
    if !b.mail_done.is_empty() {
        ops.push(Op::MailDone(b.instance.clone(), b.mail_done.clone()));
    }
    ops
}

/// Where a claim is kept: the scope's domain keeps the two name spaces apart.
fn key_of(c: &Claim) -> (String, String) {
    (c.workflow.clone(), format!("{}\0{}", c.domain(), c.key))
}

impl Store for MemoryStore {
    fn write(&self, b: &Batch) -> Result<()> {
        let mut g = self.lock()?;
        if let Some(fence) = &b.fence {
            g.leases.check(&b.instance, fence)?;
        }
        for op in batch_ops(b) {
            g.live.apply(&op);
            g.pending.push(op);
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut g = self.lock()?;
        if g.hold {
            return Ok(());
        }
        let pending = std::mem::take(&mut g.pending);
        for op in &pending {
            g.durable.apply(op);
        }
        Ok(())
    }

    fn journal(&self, instance: &str) -> Result<Vec<Record>> {
        let g = self.lock()?;
        Ok(g.live
            .journal
            .range((instance.to_string(), 0)..=(instance.to_string(), u64::MAX))
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn instance(&self, id: &str) -> Result<Option<InstanceMeta>> {
        Ok(self.lock()?.live.instances.get(id).cloned())
    }

    fn instances(&self, after: Option<&str>, limit: usize) -> Result<Vec<InstanceMeta>> {
        let g = self.lock()?;
        let iter: Box<dyn Iterator<Item = &InstanceMeta>> = match after {
            Some(a) => Box::new(
                g.live
                    .instances
                    .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    .map(|(_, m)| m),
            ),
            None => Box::new(g.live.instances.values()),
        };
        Ok(iter.take(limit).cloned().collect())
    }

    fn runnable(&self) -> Result<Vec<InstanceMeta>> {
        Ok(self
            .lock()?
            .live
            .instances
            .values()
            .filter(|m| is_runnable(m))
            .cloned()
            .collect())
    }

    fn put_definition(&self, hash: &str, def: &StoredDefinition) -> Result<()> {
        self.log(vec![Op::Definition(hash.to_string(), def.clone())])
    }

    fn definition(&self, hash: &str) -> Result<Option<StoredDefinition>> {
        Ok(self.lock()?.live.definitions.get(hash).cloned())
    }

    fn definitions(&self) -> Result<Vec<(String, StoredDefinition)>> {
        let g = self.lock()?;
        let mut all: Vec<_> = g
            .live
            .definitions
            .iter()
            .map(|(h, d)| (h.clone(), d.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn add_calendar_version(&self, v: &CalendarVersion) -> Result<Vec<CalendarVersion>> {
        let history = {
            let mut g = self.lock()?;
            let old = g.live.calendars.get(&v.name).cloned().unwrap_or_default();
            let history = crate::calendar::history::append(old, v.clone());
            let op = Op::Calendar(v.name.clone(), history.clone());
            g.live.apply(&op);
            g.pending.push(op);
            history
        };
        self.flush()?;
        Ok(history)
    }

    fn create(&self, b: &Batch, claims: &[Claim], daemon: &str) -> Result<Created> {
        let mut g = self.lock()?;
        if g.live.instances.contains_key(&b.instance) {
            return Ok(Created::Existing(b.instance.clone()));
        }
        for c in claims {
            if let Some(holder) = g.live.keys.get(&key_of(c)) {
                let status = g.live.instances.get(holder).map(|m| m.status.as_str());
                if let Some(refused) = c.scope.refusal(holder, status) {
                    return Ok(refused);
                }
            }
        }
        g.take(claims, None, b);
        Ok(Created::New(g.leases.create(&b.instance, daemon)))
    }

    fn reopen(&self, b: &Batch, places: &[Claim]) -> Result<Option<String>> {
        let mut g = self.lock()?;
        if let Some(fence) = &b.fence {
            g.leases.check(&b.instance, fence)?;
        }
        let holders: Vec<_> = places
            .iter()
            .map(|c| {
                g.live.keys.get(&key_of(c)).map(|holder| {
                    let status = g.live.instances.get(holder).map(|m| m.status.clone());
                    (holder.clone(), status)
                })
            })
            .collect();
        let taken = match reopen_place(&b.instance, &holders) {
            Ok(i) => &places[i..=i],
            Err(open) => return Ok(Some(open)),
        };
        g.take(taken, provisional_meta(b), b);
        Ok(None)
    }

    fn key_holder(&self, workflow: &str, key: &str) -> Result<Option<String>> {
        let g = self.lock()?;
        Ok(g.live
            .keys
            .get(&key_of(&Claim::idempotency(workflow, key)))
            .filter(|holder| g.live.instances.contains_key(*holder))
            .cloned())
    }

    fn write_only_sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn search_id(&self, attribute: &str, value: &str) -> String {
        // Nothing of the memory store outlives the process, so no key is needed; the
        // value is hashed all the same so no caller can come to rely on seeing it.
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(format!("{attribute}\0{value}").as_bytes())[..16])
    }

    fn search(
        &self,
        workflow: &str,
        attribute: &str,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let g = self.lock()?;
        let from = (
            workflow.to_string(),
            attribute.to_string(),
            id.to_string(),
            after.map(|a| format!("{a}\0")).unwrap_or_default(),
        );
        Ok(g.live
            .search
            .range(from..)
            .take_while(|(w, a, i, _)| w == workflow && a == attribute && i == id)
            .take(limit)
            .map(|(_, _, _, instance)| instance.clone())
            .collect())
    }

    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<Timer>> {
        Ok(self
            .lock()?
            .live
            .timers
            .iter()
            .take_while(|t| t.0 <= now)
            .take(limit)
            .map(|(at, instance, frame)| Timer {
                at: *at,
                instance: instance.clone(),
                frame: *frame,
            })
            .collect())
    }

    fn next_timer(&self) -> Result<Option<Millis>> {
        Ok(self.lock()?.live.timers.first().map(|t| t.0))
    }

    fn waiters(&self, event_type: &str, key: &str) -> Result<Vec<Wait>> {
        let g = self.lock()?;
        let from = (event_type.to_string(), key.to_string(), String::new(), 0);
        Ok(g.live
            .waits
            .range(from..)
            .take_while(|w| w.0 == event_type && w.1 == key)
            .map(|(event_type, key, instance, frame)| Wait {
                event_type: event_type.clone(),
                key: key.clone(),
                instance: instance.clone(),
                frame: *frame,
            })
            .collect())
    }

    fn event_answer(&self, event_id: &str) -> Result<Option<Value>> {
        Ok(self.lock()?.live.events.get(event_id).cloned())
    }

    fn put_event_answer(&self, event_id: &str, answer: &Value) -> Result<()> {
        self.log(vec![Op::EventAnswer(event_id.to_string(), answer.clone())])
    }

    fn update_event_answer(
        &self,
        slot: &str,
        change: &mut dyn FnMut(Option<Value>) -> Value,
    ) -> Result<Value> {
        let answer = {
            let mut g = self.lock()?;
            let answer = change(g.live.events.get(slot).cloned());
            let op = Op::EventAnswer(slot.to_string(), answer.clone());
            g.live.apply(&op);
            g.pending.push(op);
            answer
        };
        self.flush()?;
        Ok(answer)
    }

    fn heartbeat(&self, daemon: &str, until: Millis) -> Result<()> {
        self.lock()?.leases.heartbeat(daemon, until);
        Ok(())
    }

    fn claim(&self, instance: &str, daemon: &str, now: Millis) -> Result<Ownership> {
        let mut g = self.lock()?;
        if !g.live.instances.contains_key(instance) {
            return Ok(Ownership::Unknown);
        }
        Ok(g.leases.claim(instance, daemon, now))
    }

    fn release(&self, instance: &str, fence: &Fence) -> Result<bool> {
        let mut g = self.lock()?;
        if g.leases.check(instance, fence).is_err() {
            return Ok(true);
        }
        if has_mail(&g.live, instance) {
            return Ok(false);
        }
        g.leases.release(instance, fence);
        Ok(true)
    }

    fn orphans(&self, now: Millis, limit: usize) -> Result<Vec<String>> {
        let g = self.lock()?;
        Ok(g.live
            .instances
            .values()
            .filter(|m| is_runnable(m) && g.leases.is_orphan(&m.id, now))
            .take(limit)
            .map(|m| m.id.clone())
            .collect())
    }

    fn post(&self, instance: &str, mail: &Mail) -> Result<()> {
        let mut g = self.lock()?;
        let seq = g.live.mail_seq + 1;
        let op = Op::Post(instance.to_string(), seq, mail.clone());
        g.live.apply(&op);
        g.pending.push(op);
        Ok(())
    }

    fn mail(&self, instance: &str, limit: usize) -> Result<Vec<(u64, Mail)>> {
        let g = self.lock()?;
        Ok(g.live
            .mail
            .range((instance.to_string(), 0)..=(instance.to_string(), u64::MAX))
            .take(limit)
            .map(|((_, seq), m)| (*seq, m.clone()))
            .collect())
    }

    fn mailed(&self, daemon: &str, now: Millis, limit: usize) -> Result<Vec<String>> {
        let g = self.lock()?;
        let mut out: Vec<String> = Vec::new();
        for (instance, _) in g.live.mail.keys() {
            if out.len() >= limit {
                break;
            }
            if out.last() == Some(instance) {
                continue;
            }
            let mine = g.leases.owner(instance).is_some_and(|f| f.daemon == daemon);
            if mine || g.leases.is_orphan(instance, now) {
                out.push(instance.clone());
            }
        }
        Ok(out)
    }

    fn buffer(
        &self,
        event: &Event,
        arrived: Millis,
        until: Millis,
        bounds: InboxBounds,
    ) -> Result<Inboxed> {
        let mut g = self.lock()?;
        let inbox = &g.live.inbox;
        if inbox.len() >= bounds.total {
            return Ok(Inboxed::Full {
                per_key: false,
                limit: bounds.total,
            });
        }
        let same = inbox
            .values()
            .filter(|b| b.event.event_type == event.event_type && b.event.key == event.key)
            .count();
        if same >= bounds.per_key {
            return Ok(Inboxed::Full {
                per_key: true,
                limit: bounds.per_key,
            });
        }
        let seq = g.live.inbox_seq + 1;
        let stamp = Stamp {
            seq,
            arrived,
            until,
        };
        Self::push(
            &mut g,
            Op::Buffer(Buffered {
                event: event.clone(),
                stamp,
            }),
        );
        Ok(Inboxed::Kept(seq))
    }

    fn buffered(
        &self,
        event_type: &str,
        key: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Buffered>> {
        let g = self.lock()?;
        Ok(g.live
            .inbox
            .values()
            .filter(|b| {
                b.event.event_type == event_type && b.event.key == key && b.stamp.until >= now
            })
            .take(limit)
            .cloned()
            .collect())
    }

    fn inbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<Buffered>> {
        let g = self.lock()?;
        let from = after.map_or(0, |a| a.saturating_add(1));
        Ok(g.live
            .inbox
            .range(from..)
            .take(limit)
            .map(|(_, b)| b.clone())
            .collect())
    }

    fn hand_over(&self, seq: u64, instance: &str) -> Result<bool> {
        let mut g = self.lock()?;
        if !g.live.inbox.contains_key(&seq) {
            return Ok(false);
        }
        let mail_seq = g.live.mail_seq + 1;
        Self::push(&mut g, Op::HandOver(seq, instance.to_string(), mail_seq));
        Ok(true)
    }

    fn hand_back(
        &self,
        instance: &str,
        mail_seq: u64,
        event: &Event,
        stamp: Stamp,
    ) -> Result<Option<u64>> {
        let mut g = self.lock()?;
        if !g.live.mail.contains_key(&(instance.to_string(), mail_seq)) {
            return Ok(None);
        }
        let mut stamp = stamp;
        if stamp.seq == 0 {
            stamp.seq = g.live.inbox_seq + 1;
        }
        Self::push(
            &mut g,
            Op::HandBack(
                instance.to_string(),
                mail_seq,
                Buffered {
                    event: event.clone(),
                    stamp,
                },
            ),
        );
        Ok(Some(stamp.seq))
    }

    fn purge(&self, seq: u64) -> Result<bool> {
        let mut g = self.lock()?;
        if !g.live.inbox.contains_key(&seq) {
            return Ok(false);
        }
        Self::push(&mut g, Op::Unbuffer(seq));
        Ok(true)
    }

    fn expire(&self, now: Millis, limit: usize) -> Result<usize> {
        let mut g = self.lock()?;
        let old: Vec<u64> = g
            .live
            .inbox
            .values()
            .take_while(|b| b.stamp.until < now)
            .take(limit)
            .map(|b| b.stamp.seq)
            .collect();
        for seq in &old {
            Self::push(&mut g, Op::Unbuffer(*seq));
        }
        Ok(old.len())
    }
}

impl MemoryStore {
    fn push(g: &mut Shared, op: Op) {
        g.live.apply(&op);
        g.pending.push(op);
    }
}

fn is_runnable(m: &InstanceMeta) -> bool {
    m.status == "running" || m.status == "compensating"
}

fn has_mail(d: &Data, instance: &str) -> bool {
    d.mail
        .range((instance.to_string(), 0)..=(instance.to_string(), u64::MAX))
        .next()
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, status: &str) -> InstanceMeta {
        InstanceMeta {
            id: id.into(),
            workflow: "w".into(),
            version: 1,
            hash: "h".into(),
            status: status.into(),
            created_at: 0,
            updated_at: 0,
            parent: None,
            search: Default::default(),
        }
    }

    fn rec(at: Millis) -> Record {
        Record::Cancelled {
            reason: "r".into(),
            at,
        }
    }

    #[test]
    fn reads_see_writes_but_a_crash_keeps_only_what_was_flushed() {
        let s = MemoryStore::new();
        s.write(&Batch {
            instance: "a".into(),
            records: vec![rec(1)],
            meta: Some(meta("a", "running")),
            ..Batch::default()
        })
        .unwrap();
        s.flush().unwrap();
        s.write(&Batch {
            instance: "a".into(),
            first_seq: 1,
            records: vec![rec(2)],
            meta: Some(meta("a", "completed")),
            timers_add: vec![Timer {
                at: 5,
                instance: "a".into(),
                frame: 0,
            }],
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(s.journal("a").unwrap().len(), 2);
        assert_eq!(s.pending_writes(), 3);
        // Keep the timer only: the record and the meta after it are lost.
        let s2 = s.crash(1);
        assert!(s.journal("a").is_err(), "the old handle is dead");
        assert_eq!(s2.journal("a").unwrap(), vec![rec(1)]);
        assert_eq!(s2.instance("a").unwrap().unwrap().status, "running");
        assert_eq!(s2.next_timer().unwrap(), Some(5));
        assert_eq!(s2.runnable().unwrap().len(), 1);
        // Clones share data.
        let s3 = s2.clone();
        s3.put_event_answer("e", &serde_json::json!(1)).unwrap();
        assert!(s2.event_answer("e").unwrap().is_some());
    }

    #[test]
    fn waiters_timers_instances_and_claims() {
        let s = MemoryStore::new();
        let w = |k: &str, i: &str| Wait {
            event_type: "ev".into(),
            key: k.into(),
            instance: i.into(),
            frame: 1,
        };
        let t = |at, i: &str| Timer {
            at,
            instance: i.into(),
            frame: 1,
        };
        s.write(&Batch {
            instance: "x".into(),
            waits_add: vec![w("k", "b"), w("k", "a"), w("kk", "c")],
            timers_add: vec![t(300, "c"), t(-5, "a"), t(100, "b")],
            meta: Some(meta("b", "parked")),
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(
            s.waiters("ev", "k").unwrap(),
            vec![w("k", "a"), w("k", "b")]
        );
        assert_eq!(
            s.due_timers(200, 10).unwrap(),
            vec![t(-5, "a"), t(100, "b")]
        );
        assert_eq!(s.due_timers(200, 1).unwrap(), vec![t(-5, "a")]);
        s.write(&Batch {
            instance: "a".into(),
            meta: Some(meta("a", "running")),
            ..Batch::default()
        })
        .unwrap();
        let ids = |v: Vec<InstanceMeta>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(s.instances(None, 10).unwrap()), vec!["a", "b"]);
        assert_eq!(ids(s.instances(Some("a"), 10).unwrap()), vec!["b"]);
        assert_eq!(ids(s.runnable().unwrap()), vec!["a"]);
        let claim = Claim::idempotency("w", "k");
        let first = |id: &str| Batch {
            instance: id.into(),
            meta: Some(meta(id, "running")),
            ..Batch::default()
        };
        assert!(matches!(
            s.create(&first("c"), std::slice::from_ref(&claim), "d1")
                .unwrap(),
            Created::New(_)
        ));
        assert_eq!(
            s.create(&first("d"), std::slice::from_ref(&claim), "d1")
                .unwrap(),
            Created::Existing("c".into())
        );
        assert_eq!(s.instance("d").unwrap(), None, "the loser wrote nothing");
        assert_eq!(s.key_holder("w", "k").unwrap(), Some("c".into()));
    }
}
