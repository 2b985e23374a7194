//! [`Store`] on sled: one tree per index, records as versioned JSON, sealed at rest.
//!
//! Every value that can hold instance data (journal records, pinned definitions, event
//! answers) is sealed with the journal key ([`super::seal`]), bound to its tree and key.
//! Client-chosen strings in index keys (wait correlation keys, idempotency keys, event ids)
//! are stored as keyed hashes. What stays clear holds only ids, names, status and times:
//! the instance index (so `runnable` can scan it cheaply), timer keys and instance ids.

use super::lease::Leases;
use super::seal::{self, JournalKey, KeySource, OpenError, Sealer};
use super::*;
use crate::runtime::record::{Stored, VERSION};
use std::path::Path;

pub struct SledStore {
    db: ::sled::Db,
    sealer: Sealer,
    journal: ::sled::Tree,
    instances: ::sled::Tree,
    definitions: ::sled::Tree,
    /// Each calendar's versions (sealed), by name.
    calendars: ::sled::Tree,
    keys: ::sled::Tree,
    timers: ::sled::Tree,
    waits: ::sled::Tree,
    /// workflow \0 attribute \0 value id \0 instance → nothing (see `search_key`).
    search: ::sled::Tree,
    events: ::sled::Tree,
    mail: ::sled::Tree,
    /// Buffered events by number (sealed), and by type and key hash then number (empty).
    inbox: ::sled::Tree,
    inbox_keys: ::sled::Tree,
    /// How many events the inbox holds, counted at first use (sled's `len` walks the
    /// tree); held while the inbox changes.
    inbox_count: std::sync::Mutex<Option<usize>>,
    /// Whether `orphans` has scanned the whole index once.
    orphans_scanned: std::sync::atomic::AtomicBool,
    /// Since then: instances that became runnable with no owner (written without a claim,
    /// or released while running), the other way to become an orphan.
    loose: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Ownership lives in memory: the directory lock admits one process, so one daemon,
    /// and a restarted process owns nothing of its predecessor's (see `store::lease`).
    leases: std::sync::Mutex<Leases>,
    /// Every method that changes what is stored holds this for reading; a backup holds
    /// it for writing, so it sees no write half done.
    gate: std::sync::RwLock<()>,
    /// Added to sled's id counter (mail and inbox numbers): a store restored from a
    /// backup starts sled's counter afresh, below the numbers it already holds.
    id_offset: u64,
}

fn io(e: ::sled::Error) -> Error {
    Error::Io(e.to_string())
}

/// Opening the data directory failed for another reason than a lock: the message names it
/// (sled's own says only "Permission denied" or "Not a directory").
fn unusable_dir(dir: &Path, e: ::sled::Error) -> Error {
    Error::Io(format!(
        "cannot open the data directory {}: {e}; it must be a directory this user can read \
         and write (pass another with --data)",
        dir.display()
    ))
}

/// Tree and key of the sealed check value that tells a wrong key at open.
const SEAL_TREE: &str = "seal";
const CHECK_KEY: &[u8] = b"check";
const CHECK_TEXT: &[u8] = b"casework journal key check v1";
/// Trees whose content says the data directory is in use.
const DATA_TREES: [&str; 12] = [
    "journal",
    "instances",
    "definitions",
    "calendars",
    "idempotency",
    "timers",
    "waits",
    "events",
    "mail",
    "inbox",
    "inbox_keys",
    "search",
];

/// Where a backup records the next id (see `SledStore::id_offset`).
const IDS_TREE: &str = "ids";
const NEXT_ID: &[u8] = b"next";

impl SledStore {
    /// Open (or create) the store in `dir`, with the key file of the data directory
    /// (`<dir>/journal.key`, created on first open). See [`SledStore::open_with`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, KeySource::DataDir)
    }

    /// Open (or create) the store in `dir`, sealed with the key from `source`. A key that does
    /// not match the one the directory was created with is [`Error::WrongKey`].
    pub fn open_with(dir: &Path, source: KeySource) -> Result<Self> {
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                ::sled::Error::Io(ref ioe)
                    if ioe.kind() == std::io::ErrorKind::WouldBlock
                        || ioe.to_string().contains("lock") =>
                {
                    Error::Locked {
                        path: dir.display().to_string(),
                    }
                }
                other => unusable_dir(dir, other),
            })?;
        let sealed = db
            .open_tree(SEAL_TREE)
            .map_err(|e| unusable_dir(dir, e))?
            .contains_key(CHECK_KEY)
            .map_err(|e| unusable_dir(dir, e))?;
        if !sealed {
            refuse_unsealed_data(&db, dir)?;
        }
        let key = match source {
            KeySource::Explicit(k) => k,
            KeySource::DataDir => {
                let path = seal::key_file(dir);
                if path.exists() {
                    seal::check_key_file_mode(&path);
                    JournalKey::from_file(&path)?
                } else if !sealed {
                    let key = seal::create_key_file(dir)?;
                    tracing::info!(
                        file = %path.display(),
                        "created a journal key; for production move it to a secret store and pass it as CASEWORK_JOURNAL_KEY"
                    );
                    key
                } else {
                    return Err(Error::Key(format!(
                        "the data directory {} is encrypted but no journal key was given: pass it as CASEWORK_JOURNAL_KEY or --journal-key-file, or restore {}",
                        dir.display(),
                        path.display()
                    )));
                }
            }
        };
        Self::from_db(db, &key, &dir.display().to_string())
    }

    /// A store that lives only as long as the process (for `casework run` and tests), with a random key.
    pub fn temporary() -> Result<Self> {
        let db = ::sled::Config::new().temporary(true).open().map_err(io)?;
        Self::from_db(db, &JournalKey::random()?, "(temporary)")
    }

    fn from_db(db: ::sled::Db, key: &JournalKey, path: &str) -> Result<Self> {
        let t = |name: &str| db.open_tree(name).map_err(io);
        let sealer = Sealer::new(key);
        let seal_tree = t(SEAL_TREE)?;
        match seal_tree.get(CHECK_KEY).map_err(io)? {
            Some(v) => match sealer.open(SEAL_TREE, CHECK_KEY, &v) {
                Ok(text) if text == CHECK_TEXT => {}
                Ok(_) | Err(OpenError::Auth) | Err(OpenError::Truncated) => {
                    return Err(Error::WrongKey { path: path.into() })
                }
                Err(e @ OpenError::UnknownFormat(_)) => {
                    return Err(Error::Key(format!("the data directory {path}: {e}")))
                }
            },
            None => {
                seal_tree
                    .insert(CHECK_KEY, sealer.seal(SEAL_TREE, CHECK_KEY, CHECK_TEXT)?)
                    .map_err(io)?;
                db.flush().map_err(io)?;
            }
        }
        let floor = t(IDS_TREE)?
            .get(NEXT_ID)
            .map_err(io)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let id_offset = floor.saturating_sub(db.generate_id().map_err(io)?);
        Ok(SledStore {
            gate: Default::default(),
            id_offset,
            journal: t("journal")?,
            instances: t("instances")?,
            definitions: t("definitions")?,
            calendars: t("calendars")?,
            keys: t("idempotency")?,
            timers: t("timers")?,
            waits: t("waits")?,
            search: t("search")?,
            events: t("events")?,
            mail: t("mail")?,
            inbox: t("inbox")?,
            inbox_keys: t("inbox_keys")?,
            inbox_count: Default::default(),
            orphans_scanned: Default::default(),
            loose: Default::default(),
            leases: Default::default(),
            sealer,
            db,
        })
    }

    fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id().map_err(io)? + self.id_offset)
    }

    /// Held by every method that changes what is stored (see `gate`).
    fn changing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes every tree to `out` as one consistent snapshot (see [`super::backup`]):
    /// writes wait while it runs. Values stay sealed; the journal key is not included.
    fn write_backup(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        let _all = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let failed = |e: std::io::Error| Error::Io(format!("writing the backup: {e}"));
        let mut w = super::backup::Writer::new(out).map_err(failed)?;
        for name in std::iter::once(SEAL_TREE).chain(DATA_TREES) {
            w.tree(name).map_err(failed)?;
            for kv in self.db.open_tree(name).map_err(io)?.iter() {
                let (k, v) = kv.map_err(io)?;
                w.entry(&k, &v).map_err(failed)?;
            }
        }
        // Every number given out so far is below this; the restored store continues above.
        w.tree(IDS_TREE).map_err(failed)?;
        w.entry(NEXT_ID, &(self.next_id()? + 1).to_be_bytes())
            .map_err(failed)?;
        w.finish().map(|(n, _)| n).map_err(failed)
    }

    /// Restores the backup `file` into the data directory `dir`, which must not exist or
    /// be empty; `key` must be the journal key of the store it was taken from. The file
    /// is checked whole first and written into a directory beside `dir` that is renamed
    /// into place only once complete, so a failure leaves `dir` as it was.
    pub fn restore(file: &Path, dir: &Path, key: &JournalKey) -> Result<u64> {
        use super::backup::{read, Item};
        let named = |e: super::backup::ReadError| {
            Error::Io(format!("cannot restore {}: {e}", file.display()))
        };
        let open = || {
            std::fs::File::open(file)
                .map(std::io::BufReader::new)
                .map_err(|e| Error::Io(format!("cannot read {}: {e}", file.display())))
        };
        read(open()?, |_| Ok(())).map_err(named)?;
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(|e| Error::Io(format!("cannot read {}: {e}", dir.display())))?
                .next()
                .is_some()
        {
            return Err(Error::Io(format!(
                "the data directory {} is not empty; restore into a new directory (nothing was changed)",
                dir.display()
            )));
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = dir.with_file_name(format!(".{name}.restoring"));
        let _ = std::fs::remove_dir_all(&staging);
        let restored = (|| {
            let db = ::sled::Config::new()
                .path(&staging)
                .open()
                .map_err(|e| unusable_dir(&staging, e))?;
            let mut tree: Option<::sled::Tree> = None;
            let mut put = |item: Item| -> std::io::Result<()> {
                let other = |e: ::sled::Error| std::io::Error::other(e.to_string());
                match item {
                    Item::Tree(n) => tree = Some(db.open_tree(n).map_err(other)?),
                    Item::Entry(k, v) => {
                        if let Some(t) = &tree {
                            t.insert(k, v).map_err(other)?;
                        }
                    }
                }
                Ok(())
            };
            let n = read(open()?, &mut put).map_err(named)?;
            db.flush().map_err(io)?;
            // Refuses a key that is not the one the backup was sealed with.
            let store = Self::from_db(db, key, &file.display().to_string())?;
            store.flush()?;
            Ok(n)
        })();
        match restored {
            Ok(n) => {
                if dir.exists() {
                    std::fs::remove_dir(dir)
                        .map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
                }
                std::fs::rename(&staging, dir).map_err(|e| {
                    Error::Io(format!(
                        "moving the restored store to {}: {e}",
                        dir.display()
                    ))
                })?;
                Ok(n)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        self.sealer.seal(tree, key, plain)
    }

    fn wait_prefix(&self, event_type: &str, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(event_type.len() + 17);
        k.extend_from_slice(event_type.as_bytes());
        k.push(0);
        k.extend_from_slice(&self.sealer.index_id("wait", key));
        k
    }

    fn wait_key(&self, w: &Wait) -> Vec<u8> {
        let mut k = self.wait_prefix(&w.event_type, &w.key);
        k.extend_from_slice(w.instance.as_bytes());
        k.push(0);
        k.extend_from_slice(&w.frame.to_be_bytes());
        k
    }

    /// A batch's records as one journal value under the key of its first record: one
    /// insert is atomic by itself, while a sled batch or transaction seals and writes the
    /// log buffer on sled's thread pool (waking all its threads) every time.
    fn sealed_records(&self, b: &Batch) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if b.records.is_empty() {
            return Ok(None);
        }
        let stored: Vec<Stored> = b
            .records
            .iter()
            .map(|r| Stored {
                v: VERSION,
                record: r.clone(),
            })
            .collect();
        let key = journal_key(&b.instance, b.first_seq);
        let value = self.seal("journal", &key, &json(&stored)?)?;
        Ok(Some((key, value)))
    }

    /// A batch's writes, one at a time in this order (the caller holds the lease lock).
    /// Index entries go first: after a crash an index entry without its record is
    /// harmless (the instance ignores a stale timer or wait), the reverse would lose a
    /// wakeup. The instance's index entry comes after its records (a reopen writes a
    /// provisional one first: see [`provisional_meta`]).
    fn put(&self, b: &Batch) -> Result<()> {
        for t in &b.timers_add {
            self.timers.insert(timer_key(t), &[]).map_err(io)?;
        }
        for w in &b.waits_add {
            self.waits.insert(self.wait_key(w), &[]).map_err(io)?;
        }
        for e in &b.search_add {
            self.search.insert(search_key(e), &[]).map_err(io)?;
        }
        let records = self.sealed_records(b)?;
        if let (Some(m), Some(_)) = (searched_meta(b), &records) {
            self.instances
                .insert(m.id.as_bytes(), json(&m)?)
                .map_err(io)?;
        }
        if let Some((key, value)) = records {
            self.journal.insert(key, value).map_err(io)?;
        }
        self.put_meta(b)?;
        for t in &b.timers_remove {
            self.timers.remove(timer_key(t)).map_err(io)?;
        }
        for w in &b.waits_remove {
            self.waits.remove(self.wait_key(w)).map_err(io)?;
        }
        for e in &b.search_remove {
            self.search.remove(search_key(e)).map_err(io)?;
        }
        for seq in &b.mail_done {
            self.mail
                .remove(journal_key(&b.instance, *seq))
                .map_err(io)?;
        }
        Ok(())
    }

    fn put_meta(&self, b: &Batch) -> Result<()> {
        if let Some(m) = &b.meta {
            self.instances
                .insert(m.id.as_bytes(), json(m)?)
                .map_err(io)?;
        }
        Ok(())
    }

    fn loose(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.loose.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fenced write's records and index, the fence checked by the caller under
    /// `leases`, which it holds until this returns.
    fn put_fenced(&self, b: &Batch, leases: &Leases) -> Result<()> {
        self.put(b)?;
        if let Some(m) = &b.meta {
            let mut loose = self.loose();
            if is_runnable(m) && leases.owner(&b.instance).is_none() {
                loose.insert(b.instance.clone());
            } else {
                loose.remove(&b.instance);
            }
        }
        Ok(())
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_mail(&self, instance: &str) -> Result<bool> {
        Ok(self
            .mail
            .scan_prefix(instance_prefix(instance))
            .next()
            .transpose()
            .map_err(io)?
            .is_some())
    }

    fn claim_id(&self, c: &Claim) -> Vec<u8> {
        let mut k = c.workflow.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&self.sealer.index_id(&c.domain(), &c.key));
        k
    }
}

/// A search index key. The value id is a keyed hash ([`Store::search_id`]), so the tree
/// holds no attribute value.
fn search_key(e: &Searched) -> Vec<u8> {
    let mut k = search_prefix(&e.workflow, &e.attribute, &e.id);
    k.extend_from_slice(e.instance.as_bytes());
    k
}

fn search_prefix(workflow: &str, attribute: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(workflow.len() + attribute.len() + id.len() + 3);
    for part in [workflow, attribute, id] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k
}

/// A data directory written before journal encryption: refuse rather than mix clear and sealed data.
fn refuse_unsealed_data(db: &::sled::Db, dir: &Path) -> Result<()> {
    for name in DATA_TREES {
        if !db.open_tree(name).map_err(io)?.is_empty() {
            return Err(Error::Key(format!(
                "the data directory {} was written by a casework without journal encryption; start from an empty data directory",
                dir.display()
            )));
        }
    }
    Ok(())
}

fn is_runnable(m: &InstanceMeta) -> bool {
    m.status == "running" || m.status == "compensating"
}

/// Why a transaction over the inbox stopped.
enum Abort {
    Gone,
    Io(Error),
}

fn tx_error(e: ::sled::transaction::TransactionError<Abort>) -> Abort {
    match e {
        ::sled::transaction::TransactionError::Abort(a) => a,
        ::sled::transaction::TransactionError::Storage(e) => Abort::Io(io(e)),
    }
}

impl SledStore {
    fn inbox_key(&self, event_type: &str, key: &str, seq: u64) -> Vec<u8> {
        let mut k = self.wait_prefix(event_type, key);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    fn open_buffered(&self, k: &[u8], v: &[u8]) -> Result<Buffered> {
        let corrupt = |detail: String| Error::Corrupt {
            instance: "(inbox)".into(),
            detail,
        };
        let plain = self
            .sealer
            .open("inbox", k, v)
            .map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))
    }

    /// The inbox count, counted now if it never was; the guard is held while it changes.
    fn inbox_count(&self) -> Result<std::sync::MutexGuard<'_, Option<usize>>> {
        let mut g = self.inbox_count.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(self.inbox.len());
        }
        Ok(g)
    }

    fn unbuffer(&self, seq: u64, count: &mut Option<usize>) -> Result<bool> {
        let k = seq.to_be_bytes();
        let Some(v) = self.inbox.get(k).map_err(io)? else {
            return Ok(false);
        };
        // The value first: a key entry left without it is skipped and cleaned up.
        let b = self.open_buffered(&k, &v)?;
        self.inbox.remove(k).map_err(io)?;
        self.inbox_keys
            .remove(self.inbox_key(&b.event.event_type, &b.event.key, seq))
            .map_err(io)?;
        if let Some(c) = count {
            *c = c.saturating_sub(1);
        }
        Ok(true)
    }
}

fn instance_prefix(instance: &str) -> Vec<u8> {
    let mut k = instance.as_bytes().to_vec();
    k.push(0);
    k
}

fn journal_key(instance: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(instance.len() + 9);
    k.extend_from_slice(instance.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn timer_key(t: &Timer) -> Vec<u8> {
    // Flip the sign bit so negative instants sort before positive ones.
    let mut k = ((t.at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(t.instance.as_bytes());
    k.push(0);
    k.extend_from_slice(&t.frame.to_be_bytes());
    k
}

fn parse_timer_key(k: &[u8]) -> Option<Timer> {
    let at = (u64::from_be_bytes(k.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64;
    let rest = &k[8..];
    let (inst, frame) = rest.split_at(rest.len().checked_sub(5)?);
    Some(Timer {
        at,
        instance: String::from_utf8(inst.to_vec()).ok()?,
        frame: u32::from_be_bytes(frame[1..].try_into().ok()?),
    })
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Io(e.to_string()))
}

impl Store for SledStore {
    fn backup(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        self.write_backup(out)
    }

    fn write(&self, b: &Batch) -> Result<()> {
        let _changing = self.changing();
        // Held for the whole write, so no claim slips between the check and the write.
        let leases = self.leases();
        if let Some(fence) = &b.fence {
            leases.check(&b.instance, fence)?;
        }
        self.put_fenced(b, &leases)?;
        drop(leases);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn journal(&self, instance: &str) -> Result<Vec<Record>> {
        let mut prefix = instance.as_bytes().to_vec();
        prefix.push(0);
        let corrupt = |detail: String| Error::Corrupt {
            instance: instance.into(),
            detail,
        };
        let mut out = Vec::new();
        for kv in self.journal.scan_prefix(prefix) {
            let (k, v) = kv.map_err(io)?;
            let plain = self
                .sealer
                .open("journal", &k, &v)
                .map_err(|e| corrupt(e.to_string()))?;
            // A batch's records (one value per step), or one record as stores before
            // 0.2 wrote them.
            let stored: Vec<Stored> = if plain.first() == Some(&b'[') {
                serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?
            } else {
                vec![serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?]
            };
            for s in stored {
                if s.v != VERSION {
                    return Err(corrupt(format!(
                        "journal version {} is newer than this casework understands",
                        s.v
                    )));
                }
                out.push(s.record);
            }
        }
        Ok(out)
    }

    fn instance(&self, id: &str) -> Result<Option<InstanceMeta>> {
        match self.instances.get(id.as_bytes()).map_err(io)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    instance: id.into(),
                    detail: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    fn instances(&self, after: Option<&str>, limit: usize) -> Result<Vec<InstanceMeta>> {
        let iter = match after {
            Some(a) => {
                let mut start = a.as_bytes().to_vec();
                start.push(0);
                self.instances.range(start..)
            }
            None => self.instances.iter(),
        };
        iter.take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                    instance: String::from_utf8_lossy(&k).into(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    fn runnable(&self) -> Result<Vec<InstanceMeta>> {
        let mut out = Vec::new();
        for kv in self.instances.iter() {
            let (_, v) = kv.map_err(io)?;
            // Cheap pre-filter: most instances are finished or parked.
            let has = |needle: &[u8]| v.windows(needle.len()).any(|w| w == needle);
            if has(br#""status":"running""#) || has(br#""status":"compensating""#) {
                if let Ok(m) = serde_json::from_slice::<InstanceMeta>(&v) {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    fn put_definition(&self, hash: &str, def: &StoredDefinition) -> Result<()> {
        let _changing = self.changing();
        let value = self.seal("definitions", hash.as_bytes(), &json(def)?)?;
        self.definitions
            .insert(hash.as_bytes(), value)
            .map_err(io)?;
        Ok(())
    }

    fn add_calendar_version(&self, v: &CalendarVersion) -> Result<Vec<CalendarVersion>> {
        // Every other write waits: this happens once per calendar edit, and makes the
        // read, decide and write one step.
        let _only = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let key = v.name.as_bytes();
        let old: Vec<CalendarVersion> = match self.calendars.get(key).map_err(io)? {
            Some(sealed) => {
                let plain = self
                    .sealer
                    .open("calendars", key, &sealed)
                    .map_err(|e| Error::Io(format!("stored calendar {}: {e}", v.name)))?;
                serde_json::from_slice(&plain)
                    .map_err(|e| Error::Io(format!("stored calendar {}: {e}", v.name)))?
            }
            None => Vec::new(),
        };
        let history = crate::calendar::history::append(old.clone(), v.clone());
        if history != old {
            let value = self.seal("calendars", key, &json(&history)?)?;
            self.calendars.insert(key, value).map_err(io)?;
            self.db.flush().map_err(io)?;
        }
        Ok(history)
    }

    fn definition(&self, hash: &str) -> Result<Option<StoredDefinition>> {
        match self.definitions.get(hash.as_bytes()).map_err(io)? {
            Some(v) => {
                let plain = self
                    .sealer
                    .open("definitions", hash.as_bytes(), &v)
                    .map_err(|e| Error::Io(format!("stored definition {hash}: {e}")))?;
                serde_json::from_slice(&plain)
                    .map(Some)
                    .map_err(|e| Error::Io(e.to_string()))
            }
            None => Ok(None),
        }
    }

    fn definitions(&self) -> Result<Vec<(String, StoredDefinition)>> {
        let mut all = Vec::new();
        for entry in self.definitions.iter() {
            let (k, _) = entry.map_err(io)?;
            let hash = String::from_utf8_lossy(&k).into_owned();
            if let Some(d) = self.definition(&hash)? {
                all.push((hash, d));
            }
        }
        Ok(all)
    }

    fn create(&self, b: &Batch, claims: &[Claim], daemon: &str) -> Result<Created> {
        let _changing = self.changing();
        // Under the lease lock, like every write: creates and writes of this process (the
        // only one with the data directory open) are one at a time, so checking the id
        // and the key and then writing cannot race. No sled transaction: it would seal
        // and write the log buffer on sled's thread pool for every start. A crash keeps a
        // prefix of the writes below (sled recovers its log in order), and every prefix
        // is harmless: a claim whose instance has no index entry is free, a timer of an
        // instance never indexed is dropped, and records without the index entry written
        // last belong to an instance nobody was told of and nothing lists.
        let mut leases = self.leases();
        let id = b.instance.as_bytes();
        if self.instances.get(id).map_err(io)?.is_some() {
            return Ok(Created::Existing(b.instance.clone()));
        }
        let mut taken = Vec::with_capacity(claims.len());
        for c in claims {
            let k = self.claim_id(c);
            if let Some(holder) = self.keys.get(&k).map_err(io)? {
                let holder = String::from_utf8_lossy(&holder).into_owned();
                let status = self.instance(&holder)?.map(|m| m.status);
                if let Some(refused) = c.scope.refusal(&holder, status.as_deref()) {
                    return Ok(refused);
                }
            }
            taken.push(k);
        }
        for k in taken {
            self.keys.insert(k, id).map_err(io)?;
        }
        // The index entry that makes the instance exist comes after its records.
        self.put(b)?;
        Ok(Created::New(leases.create(&b.instance, daemon)))
    }

    fn reopen(&self, b: &Batch, places: &[Claim]) -> Result<Option<String>> {
        let _changing = self.changing();
        // Under the lease lock, like `create`: a start's check of the key and this write
        // cannot interleave. A crash keeps a prefix: claims naming this instance while
        // its index entry still says failed are free to the next start, as before.
        let leases = self.leases();
        if let Some(fence) = &b.fence {
            leases.check(&b.instance, fence)?;
        }
        let mut holders = Vec::with_capacity(places.len());
        for c in places {
            let holder = match self.keys.get(self.claim_id(c)).map_err(io)? {
                Some(holder) => {
                    let holder = String::from_utf8_lossy(&holder).into_owned();
                    let status = self.instance(&holder)?.map(|m| m.status);
                    Some((holder, status))
                }
                None => None,
            };
            holders.push(holder);
        }
        match reopen_place(&b.instance, &holders) {
            Ok(i) => {
                self.keys
                    .insert(self.claim_id(&places[i]), b.instance.as_bytes())
                    .map_err(io)?;
            }
            Err(open) => return Ok(Some(open)),
        }
        if let Some(m) = provisional_meta(b) {
            self.put_meta(&Batch {
                meta: Some(m),
                ..Batch::default()
            })?;
        }
        self.put_fenced(b, &leases)?;
        drop(leases);
        Ok(None)
    }

    fn key_holder(&self, workflow: &str, key: &str) -> Result<Option<String>> {
        let Some(holder) = self
            .keys
            .get(self.claim_id(&Claim::idempotency(workflow, key)))
            .map_err(io)?
        else {
            return Ok(None);
        };
        let holder = String::from_utf8_lossy(&holder).into_owned();
        Ok(self.instance(&holder)?.is_some().then_some(holder))
    }

    fn write_only_sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn search_id(&self, attribute: &str, value: &str) -> String {
        self.sealer.search_id(attribute, value)
    }

    fn search(
        &self,
        workflow: &str,
        attribute: &str,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let prefix = search_prefix(workflow, attribute, id);
        let mut from = prefix.clone();
        if let Some(a) = after {
            from.extend_from_slice(a.as_bytes());
            from.push(0);
        }
        let mut out = Vec::new();
        for kv in self.search.range(from..).take(limit) {
            let (k, _) = kv.map_err(io)?;
            let Some(instance) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            out.push(String::from_utf8_lossy(instance).into_owned());
        }
        Ok(out)
    }

    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<Timer>> {
        let mut out = Vec::new();
        for kv in self.timers.iter() {
            let (k, _) = kv.map_err(io)?;
            let Some(t) = parse_timer_key(&k) else {
                continue;
            };
            if t.at > now || out.len() >= limit {
                break;
            }
            out.push(t);
        }
        Ok(out)
    }

    fn next_timer(&self) -> Result<Option<Millis>> {
        Ok(self
            .timers
            .first()
            .map_err(io)?
            .and_then(|(k, _)| parse_timer_key(&k))
            .map(|t| t.at))
    }

    fn waiters(&self, event_type: &str, key: &str) -> Result<Vec<Wait>> {
        let prefix = self.wait_prefix(event_type, key);
        self.waits
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, _) = kv.map_err(io)?;
                let rest = &k[prefix.len()..];
                let split = rest.len().saturating_sub(5);
                Ok(Wait {
                    event_type: event_type.into(),
                    key: key.into(),
                    instance: String::from_utf8_lossy(&rest[..split]).into_owned(),
                    frame: u32::from_be_bytes(rest[split + 1..].try_into().unwrap_or([0; 4])),
                })
            })
            .collect()
    }

    fn event_answer(&self, event_id: &str) -> Result<Option<serde_json::Value>> {
        let k = self.sealer.index_id("event", event_id);
        match self.events.get(k).map_err(io)? {
            Some(v) => Ok(self
                .sealer
                .open("events", &k, &v)
                .ok()
                .and_then(|plain| serde_json::from_slice(&plain).ok())),
            None => Ok(None),
        }
    }

    fn put_event_answer(&self, event_id: &str, answer: &serde_json::Value) -> Result<()> {
        let _changing = self.changing();
        let k = self.sealer.index_id("event", event_id);
        let value = self.seal("events", &k, &json(answer)?)?;
        self.events.insert(k, value).map_err(io)?;
        Ok(())
    }

    fn update_event_answer(
        &self,
        slot: &str,
        change: &mut dyn FnMut(Option<serde_json::Value>) -> serde_json::Value,
    ) -> Result<serde_json::Value> {
        let _changing = self.changing();
        let k = self.sealer.index_id("event", slot);
        loop {
            let old = self.events.get(k).map_err(io)?;
            let current = match &old {
                Some(v) => Some(self.sealer.open_answer(&k, v)?),
                None => None,
            };
            let answer = change(current);
            let value = self.seal("events", &k, &json(&answer)?)?;
            // Written only if the slot still holds what `change` saw (else read again).
            if self
                .events
                .compare_and_swap(k, old, Some(value))
                .map_err(io)?
                .is_ok()
            {
                self.db.flush().map_err(io)?;
                return Ok(answer);
            }
        }
    }

    fn heartbeat(&self, daemon: &str, until: Millis) -> Result<()> {
        self.leases().heartbeat(daemon, until);
        Ok(())
    }

    fn claim(&self, instance: &str, daemon: &str, now: Millis) -> Result<Ownership> {
        if self.instance(instance)?.is_none() {
            return Ok(Ownership::Unknown);
        }
        let claimed = self.leases().claim(instance, daemon, now);
        if matches!(claimed, Ownership::Mine(_)) {
            self.loose().remove(instance);
        }
        Ok(claimed)
    }

    fn release(&self, instance: &str, fence: &Fence) -> Result<bool> {
        let mut leases = self.leases();
        if leases.check(instance, fence).is_err() {
            return Ok(true);
        }
        if self.has_mail(instance)? {
            return Ok(false);
        }
        leases.release(instance, fence);
        if self.instance(instance)?.as_ref().is_some_and(is_runnable) {
            self.loose().insert(instance.to_string());
        }
        Ok(true)
    }

    fn orphans(&self, now: Millis, limit: usize) -> Result<Vec<String>> {
        // Only this process writes here: after the first call (the scan at start-up, which
        // finds what the previous process left running) every orphan is either claimed by a
        // daemon in this process whose heartbeat lapsed, or in `loose`. That keeps the
        // periodic takeover check off the whole index.
        if !self
            .orphans_scanned
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let runnable = self.runnable()?;
            let leases = self.leases();
            return Ok(runnable
                .into_iter()
                .filter(|m| leases.is_orphan(&m.id, now))
                .take(limit)
                .map(|m| m.id)
                .collect());
        }
        let mut candidates: std::collections::BTreeSet<String> =
            self.leases().lapsed_claims(now).into_iter().collect();
        candidates.extend(self.loose().iter().cloned());
        let mut out = Vec::new();
        for id in candidates {
            if out.len() >= limit {
                break;
            }
            if self.instance(&id)?.as_ref().is_some_and(is_runnable)
                && self.leases().is_orphan(&id, now)
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn post(&self, instance: &str, mail: &Mail) -> Result<()> {
        let _changing = self.changing();
        let seq = self.next_id()?;
        let key = journal_key(instance, seq);
        let value = self.seal("mail", &key, &json(mail)?)?;
        self.mail.insert(key, value).map_err(io)?;
        Ok(())
    }

    fn mail(&self, instance: &str, limit: usize) -> Result<Vec<(u64, Mail)>> {
        let prefix = instance_prefix(instance);
        let corrupt = |detail: String| Error::Corrupt {
            instance: instance.into(),
            detail,
        };
        self.mail
            .scan_prefix(&prefix)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                let seq = k[prefix.len()..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("a mail key is cut short".into()))?;
                let plain = self
                    .sealer
                    .open("mail", &k, &v)
                    .map_err(|e| corrupt(e.to_string()))?;
                let mail = serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?;
                Ok((seq, mail))
            })
            .collect()
    }

    fn mailed(&self, daemon: &str, now: Millis, limit: usize) -> Result<Vec<String>> {
        let leases = self.leases();
        let mut out: Vec<String> = Vec::new();
        for kv in self.mail.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, _) = kv.map_err(io)?;
            let Some(split) = k.len().checked_sub(9) else {
                continue;
            };
            let instance = String::from_utf8_lossy(&k[..split]).into_owned();
            if out.last() == Some(&instance) {
                continue;
            }
            let mine = leases.owner(&instance).is_some_and(|f| f.daemon == daemon);
            if mine || leases.is_orphan(&instance, now) {
                out.push(instance);
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
        let _changing = self.changing();
        let mut count = self.inbox_count()?;
        if count.unwrap_or(0) >= bounds.total {
            return Ok(Inboxed::Full {
                per_key: false,
                limit: bounds.total,
            });
        }
        let prefix = self.wait_prefix(&event.event_type, &event.key);
        if self
            .inbox_keys
            .scan_prefix(&prefix)
            .take(bounds.per_key)
            .count()
            >= bounds.per_key
        {
            return Ok(Inboxed::Full {
                per_key: true,
                limit: bounds.per_key,
            });
        }
        let seq = self.next_id()? + 1;
        let entry = Buffered {
            event: event.clone(),
            stamp: Stamp {
                seq,
                arrived,
                until,
            },
        };
        let k = seq.to_be_bytes();
        let index = self.inbox_key(&event.event_type, &event.key, seq);
        let value = self.seal("inbox", &k, &json(&entry)?)?;
        let answer = match &event.id {
            Some(id) => {
                let ak = self.sealer.index_id("event", id);
                let av = self.seal("events", &ak, &json(&buffered_answer(seq))?)?;
                Some((ak, av))
            }
            None => None,
        };
        {
            use ::sled::Transactional;
            (&self.inbox, &self.inbox_keys, &self.events)
                .transaction(|(inbox, keys, events)| {
                    keys.insert(index.clone(), &[])?;
                    inbox.insert(&k, value.clone())?;
                    if let Some((ak, av)) = &answer {
                        events.insert(&ak[..], av.clone())?;
                    }
                    Ok::<(), ::sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    ::sled::transaction::TransactionError::Storage(e) => io(e),
                    ::sled::transaction::TransactionError::Abort(()) => {
                        Error::Io("the inbox write was aborted".into())
                    }
                })?;
        }
        *count = Some(count.unwrap_or(0) + 1);
        Ok(Inboxed::Kept(seq))
    }

    fn buffered(
        &self,
        event_type: &str,
        key: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Buffered>> {
        let prefix = self.wait_prefix(event_type, key);
        let mut out = Vec::new();
        for kv in self.inbox_keys.scan_prefix(&prefix) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = kv.map_err(io)?;
            let Some(seq) = k.get(prefix.len()..).and_then(|s| s.try_into().ok()) else {
                continue;
            };
            let seq = u64::from_be_bytes(seq);
            let Some(v) = self.inbox.get(seq.to_be_bytes()).map_err(io)? else {
                continue;
            };
            let b = self.open_buffered(&seq.to_be_bytes(), &v)?;
            if b.stamp.until >= now {
                out.push(b);
            }
        }
        Ok(out)
    }

    fn inbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<Buffered>> {
        let from = after.map_or(0, |a| a.saturating_add(1)).to_be_bytes();
        self.inbox
            .range(from..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                self.open_buffered(&k, &v)
            })
            .collect()
    }

    fn hand_over(&self, seq: u64, instance: &str) -> Result<bool> {
        let _changing = self.changing();
        use ::sled::Transactional;
        let mut count = self.inbox_count()?;
        let mail_seq = self.next_id()?;
        let k = seq.to_be_bytes();
        let mail_key = journal_key(instance, mail_seq);
        let moved =
            (&self.inbox, &self.inbox_keys, &self.mail).transaction(|(inbox, keys, mail)| {
                let Some(v) = inbox.get(k)? else {
                    return ::sled::transaction::abort(Abort::Gone);
                };
                let b = self.open_buffered(&k, &v).map_err(|e| {
                    ::sled::transaction::ConflictableTransactionError::Abort(Abort::Io(e))
                })?;
                let letter = Mail::Event {
                    event: b.event.clone(),
                    buffered: Some(b.stamp),
                };
                let sealed = json(&letter)
                    .and_then(|plain| self.seal("mail", &mail_key, &plain))
                    .map_err(|e| {
                        ::sled::transaction::ConflictableTransactionError::Abort(Abort::Io(e))
                    })?;
                inbox.remove(&k)?;
                keys.remove(self.inbox_key(&b.event.event_type, &b.event.key, seq))?;
                mail.insert(mail_key.clone(), sealed)?;
                Ok(())
            });
        match moved.map_err(tx_error) {
            Ok(()) => {
                if let Some(c) = count.as_mut() {
                    *c = c.saturating_sub(1);
                }
                Ok(true)
            }
            Err(Abort::Gone) => Ok(false),
            Err(Abort::Io(e)) => Err(e),
        }
    }

    fn hand_back(
        &self,
        instance: &str,
        mail_seq: u64,
        event: &Event,
        stamp: Stamp,
    ) -> Result<Option<u64>> {
        let _changing = self.changing();
        use ::sled::Transactional;
        let mut count = self.inbox_count()?;
        let mut stamp = stamp;
        if stamp.seq == 0 {
            stamp.seq = self.next_id()? + 1;
        }
        let entry = Buffered {
            event: event.clone(),
            stamp,
        };
        let k = stamp.seq.to_be_bytes();
        let sealed = self.seal("inbox", &k, &json(&entry)?)?;
        let index = self.inbox_key(&event.event_type, &event.key, stamp.seq);
        let mail_key = journal_key(instance, mail_seq);
        let moved =
            (&self.inbox, &self.inbox_keys, &self.mail).transaction(|(inbox, keys, mail)| {
                if mail.remove(mail_key.clone())?.is_none() {
                    return ::sled::transaction::abort(Abort::Gone);
                }
                keys.insert(index.clone(), &[])?;
                inbox.insert(&k, sealed.clone())?;
                Ok(())
            });
        match moved.map_err(tx_error) {
            Ok(()) => {
                *count = Some(count.unwrap_or(0) + 1);
                Ok(Some(stamp.seq))
            }
            Err(Abort::Gone) => Ok(None),
            Err(Abort::Io(e)) => Err(e),
        }
    }

    fn purge(&self, seq: u64) -> Result<bool> {
        let _changing = self.changing();
        let mut count = self.inbox_count()?;
        self.unbuffer(seq, &mut count)
    }

    fn expire(&self, now: Millis, limit: usize) -> Result<usize> {
        let _changing = self.changing();
        let mut count = self.inbox_count()?;
        // Arrival order is expiry order under one time to live; after a change the scan
        // stops at the first event still alive, so one kept longer only delays the ones
        // behind it (delivery checks the time itself).
        let mut old = Vec::new();
        for kv in self.inbox.iter() {
            if old.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(io)?;
            let b = self.open_buffered(&k, &v)?;
            if b.stamp.until >= now {
                break;
            }
            old.push(b.stamp.seq);
        }
        let mut n = 0;
        for seq in old {
            if self.unbuffer(seq, &mut count)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restored store starts sled's id counter afresh: its new inbox numbers must still
    /// come after the ones it holds, or a new event would replace a kept one.
    #[test]
    fn a_restored_store_numbers_new_events_after_the_ones_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let key = JournalKey::random().unwrap();
        let bounds = InboxBounds {
            per_key: 10,
            total: 10,
        };
        let ev = |n: u64| Event {
            event_type: "go".into(),
            key: "k".into(),
            data: serde_json::json!(n),
            id: None,
        };
        let file = dir.path().join("b");
        let old = {
            let s = SledStore::open_with(&dir.path().join("a"), KeySource::Explicit(key.clone()))
                .unwrap();
            // Push sled's counter past where a fresh one starts (about a million ahead
            // after two opens).
            for _ in 0..3_000_000 {
                s.next_id().unwrap();
            }
            let Inboxed::Kept(seq) = s.buffer(&ev(1), 0, i64::MAX, bounds).unwrap() else {
                panic!("kept")
            };
            s.backup(&mut std::fs::File::create(&file).unwrap())
                .unwrap();
            seq
        };
        let to = dir.path().join("restored");
        SledStore::restore(&file, &to, &key).unwrap();
        let s = SledStore::open_with(&to, KeySource::Explicit(key)).unwrap();
        let Inboxed::Kept(new) = s.buffer(&ev(2), 0, i64::MAX, bounds).unwrap() else {
            panic!("kept")
        };
        assert!(new > old, "{new} after {old}");
        let kept: Vec<_> = s
            .inbox(None, 10)
            .unwrap()
            .into_iter()
            .map(|b| b.event.data)
            .collect();
        assert_eq!(kept, [serde_json::json!(1), serde_json::json!(2)]);
    }

    #[test]
    fn timers_come_out_in_time_order() {
        let s = SledStore::temporary().unwrap();
        let mk = |at, i: &str| Timer {
            at,
            instance: i.into(),
            frame: 1,
        };
        let b = Batch {
            instance: "x".into(),
            timers_add: vec![mk(300, "c"), mk(-5, "a"), mk(100, "b")],
            ..Batch::default()
        };
        s.write(&b).unwrap();
        let due = s.due_timers(200, 10).unwrap();
        assert_eq!(due, vec![mk(-5, "a"), mk(100, "b")]);
        assert_eq!(s.next_timer().unwrap(), Some(-5));
    }

    #[test]
    fn runnable_lists_only_running_instances() {
        let s = SledStore::temporary().unwrap();
        for (id, status) in [
            ("a", "running"),
            ("b", "parked"),
            ("c", "completed"),
            ("d", "compensating"),
        ] {
            let meta = InstanceMeta {
                id: id.into(),
                workflow: "w".into(),
                version: 1,
                hash: "h".into(),
                status: status.into(),
                created_at: 0,
                updated_at: 0,
                parent: None,
                search: Default::default(),
            };
            s.write(&Batch {
                instance: id.into(),
                meta: Some(meta),
                ..Batch::default()
            })
            .unwrap();
        }
        let ids: Vec<String> = s.runnable().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, vec!["a", "d"]);
    }

    #[test]
    fn a_claim_left_without_its_instance_is_free() {
        // Stores written before claims and instances were one write can hold a claim
        // whose instance never got journaled.
        let s = SledStore::temporary().unwrap();
        s.keys
            .insert(
                s.claim_id(&Claim::idempotency("refund", "k1")),
                b"ghost".as_slice(),
            )
            .unwrap();
        assert_eq!(s.key_holder("refund", "k1").unwrap(), None);
        let claim = Claim::idempotency("refund", "k1");
        let first = Batch {
            instance: "i2".into(),
            meta: Some(meta("i2")),
            ..Batch::default()
        };
        assert!(matches!(
            s.create(&first, std::slice::from_ref(&claim), "d1").unwrap(),
            Created::New(Fence { daemon, .. }) if daemon == "d1"
        ));
        assert_eq!(s.key_holder("refund", "k1").unwrap(), Some("i2".into()));
    }

    fn meta(id: &str) -> InstanceMeta {
        InstanceMeta {
            id: id.into(),
            workflow: "w".into(),
            version: 1,
            hash: "h".into(),
            status: "parked".into(),
            created_at: 0,
            updated_at: 0,
            parent: None,
            search: Default::default(),
        }
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let s = SledStore::open(&data).unwrap();
            s.put_event_answer("e1", &serde_json::json!(["a"])).unwrap();
            s.flush().unwrap();
        }
        let file = seal::key_file(&data);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let s = SledStore::open(&data).unwrap();
        assert_eq!(
            s.event_answer("e1").unwrap(),
            Some(serde_json::json!(["a"]))
        );
        drop(s);
        // The same key given explicitly opens it too; the file can then be removed.
        let key = JournalKey::from_file(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        let s = SledStore::open_with(&data, KeySource::Explicit(key)).unwrap();
        assert!(s.event_answer("e1").unwrap().is_some());
        drop(s);
        // Without any key, an encrypted directory is a clear error, and no new key is made up.
        let err = SledStore::open(&data).err().unwrap().to_string();
        assert!(err.contains("no journal key was given"), "{err}");
        assert!(!file.exists());
    }

    #[test]
    fn wrong_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        drop(SledStore::open(&data).unwrap());
        let other = JournalKey::random().unwrap();
        let err = SledStore::open_with(&data, KeySource::Explicit(other))
            .err()
            .expect("a wrong key must not open the store");
        assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("journal key does not match this data directory"),
            "{err}"
        );
    }

    #[test]
    fn a_record_moved_to_another_key_is_refused() {
        let s = SledStore::temporary().unwrap();
        let rec = Record::Cancelled {
            reason: "r".into(),
            at: 1,
        };
        s.write(&Batch {
            instance: "a".into(),
            records: vec![rec.clone(), rec.clone()],
            meta: Some(meta("a")),
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(s.journal("a").unwrap().len(), 2);
        // Copy a's first record under b's key: authentication fails, with no plaintext in the error.
        let v = s.journal.get(journal_key("a", 0)).unwrap().unwrap();
        s.journal.insert(journal_key("b", 0), v).unwrap();
        let err = s.journal("b").unwrap_err().to_string();
        assert!(err.contains("failed authentication"), "{err}");
    }

    /// Stores written before one value per batch hold one record per key; both read as
    /// one journal, in order.
    #[test]
    fn a_journal_of_single_records_and_batches_reads_in_order() {
        let s = SledStore::temporary().unwrap();
        let rec = |reason: &str| Record::Cancelled {
            reason: reason.into(),
            at: 1,
        };
        for (seq, r) in [(0, rec("old-0")), (1, rec("old-1"))] {
            let key = journal_key("a", seq);
            let plain = json(&Stored {
                v: VERSION,
                record: r,
            })
            .unwrap();
            let value = s.seal("journal", &key, &plain).unwrap();
            s.journal.insert(key, value).unwrap();
        }
        s.write(&Batch {
            instance: "a".into(),
            first_seq: 2,
            records: vec![rec("new-2"), rec("new-3")],
            meta: Some(meta("a")),
            ..Batch::default()
        })
        .unwrap();
        let reasons: Vec<String> = s
            .journal("a")
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Record::Cancelled { reason, .. } => reason,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons, ["old-0", "old-1", "new-2", "new-3"]);
        // One value for the batch: a step's records are written (and lost) together.
        assert_eq!(s.journal.scan_prefix(b"a\0").count(), 3);
    }

    #[test]
    fn waits_and_claims_work_through_keyed_hashes() {
        let s = SledStore::temporary().unwrap();
        let w = Wait {
            event_type: "approved".into(),
            key: "jane@example.com".into(),
            instance: "i1".into(),
            frame: 7,
        };
        s.write(&Batch {
            instance: "i1".into(),
            waits_add: vec![w.clone()],
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(
            s.waiters("approved", "jane@example.com").unwrap(),
            vec![w.clone()]
        );
        assert!(s
            .waiters("approved", "john@example.com")
            .unwrap()
            .is_empty());
        let raw: Vec<u8> = s.waits.iter().next().unwrap().unwrap().0.to_vec();
        assert!(!raw.windows(4).any(|x| x == b"jane"));
        s.write(&Batch {
            instance: "i1".into(),
            waits_remove: vec![w],
            ..Batch::default()
        })
        .unwrap();
        assert!(s
            .waiters("approved", "jane@example.com")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unsealed_data_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let db = ::sled::open(&data).unwrap();
            db.open_tree("instances")
                .unwrap()
                .insert("a", json(&meta("a")).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(&data).err().unwrap().to_string();
        assert!(err.contains("without journal encryption"), "{err}");
        assert!(!seal::key_file(&data).exists());
    }
}
