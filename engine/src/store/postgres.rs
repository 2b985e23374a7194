//! [`Store`] on PostgreSQL, so several daemons can share one store.
//!
//! The same contract as the sled store (see the ownership rules at [`Store`]), with the
//! facts `store::lease` keeps in memory kept in tables instead: each instance row holds its
//! owner and the epoch of that owner's claim, `casework_daemons` holds each daemon's lease.
//! Values that can hold instance data (journal records, pinned definitions, event answers,
//! mail) are sealed with the journal key exactly as in `store::sled` (bound to table and
//! key), and client-chosen strings in keys are keyed hashes ([`Sealer::index_id`]).
//!
//! Every [`Store::write`] and [`Store::create`] is one transaction, and a fenced write checks
//! its fence in that transaction (`SELECT ... FOR UPDATE` on the instance row), so a write
//! under a stale claim is refused whole. Every write commits before it returns, so
//! [`Store::flush`] has nothing left to do.
//!
//! The trait is synchronous and is called from tokio worker threads, from `spawn_blocking`
//! and from plain threads. `tokio-postgres` is asynchronous, and `Runtime::block_on` panics
//! on a thread that already runs a runtime; so a [`PgStore`] owns a small runtime of its own
//! (its own threads) that runs the connection pool, and each method sends its work there
//! and waits for the answer on a std channel.

use super::seal::{KeySource, OpenError, Sealer};
use super::*;
use crate::runtime::record::{Stored, VERSION};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// How long opening waits for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one store operation may take before it fails (the server hangs, or every
/// connection is in use).
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an operation waits for a free connection (less than [`OP_TIMEOUT`], so the
/// message says what happened).
const POOL_WAIT: Duration = Duration::from_secs(20);
/// Connections in the pool.
const POOL_SIZE: usize = 16;
/// Threads of the store's own runtime (it only waits on sockets).
const THREADS: usize = 2;
/// Tries of a transaction that PostgreSQL aborted as a serialization failure or deadlock.
const TRIES: usize = 8;
/// Key of the advisory lock migrations run under (any constant unique to casework).
const MIGRATION_LOCK: i64 = 0x6361_7365_776f_726b; // "casework"

/// The schema, one step per version; a database at version N has had steps 1..=N applied.
/// Append new steps, never edit one that was released.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE casework_meta (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    CREATE TABLE casework_instances (
        id TEXT COLLATE "C" PRIMARY KEY,
        workflow TEXT NOT NULL,
        version BIGINT NOT NULL,
        hash TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        parent TEXT,
        owner TEXT,
        epoch BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX casework_instances_live ON casework_instances (id)
        WHERE status IN ('running', 'compensating');
    CREATE TABLE casework_journal (
        instance TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (instance, seq)
    );
    CREATE TABLE casework_definitions (
        hash TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    CREATE TABLE casework_idempotency (
        workflow TEXT NOT NULL,
        key_hash BYTEA NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        UNIQUE (workflow, key_hash)
    );
    CREATE TABLE casework_timers (
        at BIGINT NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        frame BIGINT NOT NULL,
        PRIMARY KEY (at, instance, frame)
    );
    CREATE TABLE casework_waits (
        event_type TEXT COLLATE "C" NOT NULL,
        key_hash BYTEA NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        frame BIGINT NOT NULL,
        PRIMARY KEY (event_type, key_hash, instance, frame)
    );
    CREATE TABLE casework_events (
        id_hash BYTEA PRIMARY KEY,
        value BYTEA NOT NULL
    );
    CREATE TABLE casework_mail (
        seq BIGSERIAL PRIMARY KEY,
        instance TEXT COLLATE "C" NOT NULL,
        value BYTEA NOT NULL
    );
    CREATE INDEX casework_mail_instance ON casework_mail (instance, seq);
    CREATE TABLE casework_daemons (
        id TEXT PRIMARY KEY,
        alive_until BIGINT NOT NULL
    );
    CREATE SEQUENCE casework_epochs;
    "#,
    // 2: the inbox of events that came before their wait. The size row is the lock that
    // keeps the bounds across daemons (every change of the inbox updates it).
    r#"
    CREATE TABLE casework_inbox (
        seq BIGSERIAL PRIMARY KEY,
        event_type TEXT COLLATE "C" NOT NULL,
        key_hash BYTEA NOT NULL,
        until_at BIGINT NOT NULL,
        value BYTEA NOT NULL
    );
    CREATE INDEX casework_inbox_key ON casework_inbox (event_type, key_hash, seq);
    CREATE INDEX casework_inbox_until ON casework_inbox (until_at);
    CREATE TABLE casework_inbox_size (
        one BOOL PRIMARY KEY CHECK (one),
        n BIGINT NOT NULL
    );
    INSERT INTO casework_inbox_size VALUES (TRUE, 0);
    "#,
    // 3: each calendar's versions (sealed), so deadlines keep the time counted before an edit.
    r#"
    CREATE TABLE casework_calendars (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    "#,
    // 4: search attributes. The value id is a keyed hash, never the value; `search` on an
    // instance is its attributes now (JSON: name -> value id), to check hits against.
    r#"
    CREATE TABLE casework_search (
        workflow TEXT NOT NULL,
        attribute TEXT NOT NULL,
        value_id TEXT NOT NULL,
        instance TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (workflow, attribute, value_id, instance)
    );
    ALTER TABLE casework_instances ADD COLUMN search TEXT;
    "#,
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Name and plaintext of the sealed value that tells a wrong key at open.
const CHECK_NAME: &str = "seal_check";
const CHECK_TEXT: &[u8] = b"casework journal key check v1";

/// Where the database is, for messages: never the password.
#[derive(Clone, Debug)]
struct Target {
    host: String,
    port: u16,
    db: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PostgreSQL database {} at {}:{}",
            self.db, self.host, self.port
        )
    }
}

struct Shared {
    pool: Pool,
    sealer: Sealer,
    target: Target,
    /// For the connection that listens for mail notifications (outside the pool).
    config: tokio_postgres::Config,
    /// Who to wake when a daemon's mail notification comes ([`Store::on_mail`]).
    hints: std::sync::Mutex<HashMap<String, Vec<MailHint>>>,
    /// Whether the listening task runs (started by the first [`Store::on_mail`]).
    listening: std::sync::atomic::AtomicBool,
}

pub struct PgStore {
    /// Taken in `drop`: a runtime must not be dropped (which blocks) on a runtime thread.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.shared.target.to_string())
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An error inside a transaction: PostgreSQL's (maybe worth another try) or the store's.
enum TxError {
    Pg(tokio_postgres::Error),
    Store(Error),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Pg(e)
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Store(e)
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// PostgreSQL's own words for an error (the server's message, or the client's).
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Shared {
    fn db(&self, e: tokio_postgres::Error) -> Error {
        Error::Io(format!("{}: {}", self.target, describe(&e)))
    }

    fn tx(&self, e: TxError) -> Error {
        match e {
            TxError::Pg(e) => self.db(e),
            TxError::Store(e) => e,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| self.pool_error(e))
    }

    fn pool_error(&self, e: deadpool_postgres::PoolError) -> Error {
        use deadpool_postgres::PoolError;
        let why = match e {
            PoolError::Backend(e) => describe(&e),
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => format!(
                "all {POOL_SIZE} connections stayed busy for {} s",
                POOL_WAIT.as_secs()
            ),
            PoolError::Timeout(_) => format!(
                "the server did not accept a connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
            other => other.to_string(),
        };
        Error::Io(format!("cannot reach the {}: {why}", self.target))
    }

    fn seal(&self, table: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        self.sealer.seal(table, key, plain)
    }
}

/// The key a journal record or a mail message is sealed under: as in the sled store.
fn seq_key(instance: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(instance.len() + 9);
    k.extend_from_slice(instance.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Io(e.to_string()))
}

fn json_text<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Io(e.to_string()))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored u64 (sequence number, epoch) as PostgreSQL's BIGINT.
fn big(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::Io(format!("{n} is too large for the PostgreSQL store")))
}

fn meta_from(row: &tokio_postgres::Row) -> Result<InstanceMeta> {
    let id: String = row.try_get("id").map_err(col)?;
    let version: i64 = row.try_get("version").map_err(col)?;
    Ok(InstanceMeta {
        version: u32::try_from(version).map_err(|_| Error::Corrupt {
            instance: id.clone(),
            detail: format!("version {version} is out of range"),
        })?,
        workflow: row.try_get("workflow").map_err(col)?,
        hash: row.try_get("hash").map_err(col)?,
        status: row.try_get("status").map_err(col)?,
        created_at: row.try_get("created_at").map_err(col)?,
        updated_at: row.try_get("updated_at").map_err(col)?,
        parent: row.try_get("parent").map_err(col)?,
        search: match row.try_get::<_, Option<String>>("search").map_err(col)? {
            Some(text) => serde_json::from_str(&text).map_err(|e| Error::Corrupt {
                instance: id.clone(),
                detail: format!("its search attributes do not read: {e}"),
            })?,
            None => Default::default(),
        },
        id,
    })
}

fn col(e: tokio_postgres::Error) -> Error {
    Error::Io(format!("unexpected column in the PostgreSQL store: {e}"))
}

const META_COLUMNS: &str =
    "id, workflow, version, hash, status, created_at, updated_at, parent, search";

/// A batch with its values sealed (once: sealing draws random nonces, and a transaction
/// may be tried again).
struct Sealed {
    records: Vec<(i64, Vec<u8>)>,
    wait_hashes_add: Vec<Vec<u8>>,
    wait_hashes_remove: Vec<Vec<u8>>,
}

impl Shared {
    fn sealed(&self, b: &Batch) -> Result<Sealed> {
        let mut records = Vec::with_capacity(b.records.len());
        for (i, r) in b.records.iter().enumerate() {
            let seq = b.first_seq + i as u64;
            let stored = Stored {
                v: VERSION,
                record: r.clone(),
            };
            let value = self.seal("journal", &seq_key(&b.instance, seq), &json(&stored)?)?;
            records.push((big(seq)?, value));
        }
        let hash = |w: &Wait| self.sealer.index_id("wait", &w.key).to_vec();
        Ok(Sealed {
            records,
            wait_hashes_add: b.waits_add.iter().map(hash).collect(),
            wait_hashes_remove: b.waits_remove.iter().map(hash).collect(),
        })
    }
}

/// Timers as the columns `UNNEST` takes.
fn timer_columns(timers: &[Timer]) -> (Vec<i64>, Vec<&str>, Vec<i64>) {
    (
        timers.iter().map(|t| t.at).collect(),
        timers.iter().map(|t| t.instance.as_str()).collect(),
        timers.iter().map(|t| i64::from(t.frame)).collect(),
    )
}

/// Waits (with their keys' hashes) as the columns `UNNEST` takes.
struct WaitColumns<'a> {
    event_type: Vec<&'a str>,
    key_hash: Vec<&'a [u8]>,
    instance: Vec<&'a str>,
    frame: Vec<i64>,
}

fn wait_columns<'a>(waits: &'a [Wait], hashes: &'a [Vec<u8>]) -> WaitColumns<'a> {
    WaitColumns {
        event_type: waits.iter().map(|w| w.event_type.as_str()).collect(),
        key_hash: hashes.iter().map(Vec::as_slice).collect(),
        instance: waits.iter().map(|w| w.instance.as_str()).collect(),
        frame: waits.iter().map(|w| i64::from(w.frame)).collect(),
    }
}

/// Search entries as column arrays for `UNNEST`: workflow, attribute, value id, instance.
type SearchColumns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

fn search_columns(entries: &[Searched]) -> SearchColumns<'_> {
    let mut c: SearchColumns<'_> = Default::default();
    for e in entries {
        c.0.push(&e.workflow);
        c.1.push(&e.attribute);
        c.2.push(&e.id);
        c.3.push(&e.instance);
    }
    c
}

/// Everything of a batch but the fence check, inside the caller's transaction: one
/// statement per kind of change, each row list passed as arrays.
async fn apply_batch(
    t: &deadpool_postgres::Transaction<'_>,
    b: &Batch,
    sealed: &Sealed,
) -> std::result::Result<(), TxError> {
    // One transaction: the order inside it does not matter for crashes.
    if !b.timers_add.is_empty() {
        let (at, instance, frame) = timer_columns(&b.timers_add);
        let st = t
            .prepare_cached(
                "INSERT INTO casework_timers (at, instance, frame) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING",
            )
            .await?;
        t.execute(&st, &[&at, &instance, &frame]).await?;
    }
    if !b.waits_add.is_empty() {
        let w = wait_columns(&b.waits_add, &sealed.wait_hashes_add);
        let st = t
            .prepare_cached(
                "INSERT INTO casework_waits (event_type, key_hash, instance, frame) \
                 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::bigint[]) ON CONFLICT DO NOTHING",
            )
            .await?;
        t.execute(&st, &[&w.event_type, &w.key_hash, &w.instance, &w.frame])
            .await?;
    }
    if !b.search_add.is_empty() {
        let s = search_columns(&b.search_add);
        let st = t
            .prepare_cached(
                "INSERT INTO casework_search (workflow, attribute, value_id, instance) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
            )
            .await?;
        t.execute(&st, &[&s.0, &s.1, &s.2, &s.3]).await?;
    }
    if !sealed.records.is_empty() {
        let seqs: Vec<i64> = sealed.records.iter().map(|(seq, _)| *seq).collect();
        let values: Vec<&[u8]> = sealed.records.iter().map(|(_, v)| v.as_slice()).collect();
        let st = t
            .prepare_cached(
                "INSERT INTO casework_journal (instance, seq, value) \
                 SELECT $1, r.seq, r.value FROM UNNEST($2::bigint[], $3::bytea[]) AS r(seq, value) \
                 ON CONFLICT (instance, seq) DO UPDATE SET value = EXCLUDED.value",
            )
            .await?;
        t.execute(&st, &[&b.instance, &seqs, &values]).await?;
    }
    if let Some(m) = &b.meta {
        let search = match m.search.is_empty() {
            true => None,
            false => Some(json_text(&m.search)?),
        };
        let st = t
            .prepare_cached(
                "INSERT INTO casework_instances (id, workflow, version, hash, status, created_at, updated_at, parent, search) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (id) DO UPDATE SET workflow = EXCLUDED.workflow, version = EXCLUDED.version, \
                 hash = EXCLUDED.hash, status = EXCLUDED.status, created_at = EXCLUDED.created_at, \
                 updated_at = EXCLUDED.updated_at, parent = EXCLUDED.parent, search = EXCLUDED.search",
            )
            .await?;
        t.execute(
            &st,
            &[
                &m.id,
                &m.workflow,
                &i64::from(m.version),
                &m.hash,
                &m.status,
                &m.created_at,
                &m.updated_at,
                &m.parent,
                &search,
            ],
        )
        .await?;
    }
    if !b.timers_remove.is_empty() {
        let (at, instance, frame) = timer_columns(&b.timers_remove);
        let st = t
            .prepare_cached(
                "DELETE FROM casework_timers t \
                 USING UNNEST($1::bigint[], $2::text[], $3::bigint[]) AS r(at, instance, frame) \
                 WHERE t.at = r.at AND t.instance = r.instance AND t.frame = r.frame",
            )
            .await?;
        t.execute(&st, &[&at, &instance, &frame]).await?;
    }
    if !b.waits_remove.is_empty() {
        let w = wait_columns(&b.waits_remove, &sealed.wait_hashes_remove);
        let st = t
            .prepare_cached(
                "DELETE FROM casework_waits w \
                 USING UNNEST($1::text[], $2::bytea[], $3::text[], $4::bigint[]) AS r(event_type, key_hash, instance, frame) \
                 WHERE w.event_type = r.event_type AND w.key_hash = r.key_hash \
                 AND w.instance = r.instance AND w.frame = r.frame",
            )
            .await?;
        t.execute(&st, &[&w.event_type, &w.key_hash, &w.instance, &w.frame])
            .await?;
    }
    if !b.search_remove.is_empty() {
        let s = search_columns(&b.search_remove);
        let st = t
            .prepare_cached(
                "DELETE FROM casework_search x \
                 USING UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS r(workflow, attribute, value_id, instance) \
                 WHERE x.workflow = r.workflow AND x.attribute = r.attribute \
                 AND x.value_id = r.value_id AND x.instance = r.instance",
            )
            .await?;
        t.execute(&st, &[&s.0, &s.1, &s.2, &s.3]).await?;
    }
    if !b.mail_done.is_empty() {
        let seqs = b
            .mail_done
            .iter()
            .map(|s| big(*s))
            .collect::<Result<Vec<i64>>>()?;
        let st = t
            .prepare_cached("DELETE FROM casework_mail WHERE instance = $1 AND seq = ANY($2)")
            .await?;
        t.execute(&st, &[&b.instance, &seqs]).await?;
    }
    Ok(())
}

async fn write_tx(
    c: &mut deadpool_postgres::Client,
    b: &Batch,
    sealed: &Sealed,
) -> std::result::Result<(), TxError> {
    let t = c.transaction().await?;
    check_fence(&t, b).await?;
    apply_batch(&t, b, sealed).await?;
    t.commit().await?;
    Ok(())
}

/// `Store::reopen`: the fence checked as in `write_tx`, then every place's row locked as in
/// `create_tx` and the one place [`reopen_place`] picks taken, so a start that claims the
/// key concurrently either waits for this commit and finds the instance open again, or
/// commits first and is named.
async fn reopen_tx(
    c: &mut deadpool_postgres::Client,
    b: &Batch,
    sealed: &Sealed,
    places: &[(String, Vec<u8>, ClaimScope)],
) -> std::result::Result<Option<String>, TxError> {
    let t = c.transaction().await?;
    check_fence(&t, b).await?;
    // Every place's row locked in order (the order `create_tx` takes them in), so the
    // choice below sees no start commit in between.
    let mut holders = Vec::with_capacity(places.len());
    for (workflow, key_hash, _) in places {
        holders.push(claim_holder(&t, workflow, key_hash).await?);
    }
    let i = match reopen_place(&b.instance, &holders) {
        Ok(i) => i,
        Err(open) => {
            t.rollback().await?;
            return Ok(Some(open));
        }
    };
    let (workflow, key_hash, _) = &places[i];
    // A place nobody held has no row to lock: a start may insert it first, and then
    // holds it open.
    let taken = t
        .query_opt(
            "INSERT INTO casework_idempotency (workflow, key_hash, instance) VALUES ($1, $2, $3) \
             ON CONFLICT (workflow, key_hash) DO UPDATE SET instance = EXCLUDED.instance \
             WHERE casework_idempotency.instance = $3 OR $4 RETURNING instance",
            &[workflow, key_hash, &b.instance, &holders[i].is_some()],
        )
        .await?;
    if taken.is_none() {
        t.rollback().await?;
        let holder: Option<String> = c
            .query_opt(
                "SELECT instance FROM casework_idempotency WHERE workflow = $1 AND key_hash = $2",
                &[workflow, key_hash],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        return Ok(Some(holder.unwrap_or_default()));
    }
    apply_batch(&t, b, sealed).await?;
    t.commit().await?;
    Ok(None)
}

/// Who holds a claim row, and the holder's status, with the row locked until the
/// transaction ends; None when nobody has claimed it.
///
/// The status is asked after the lock, in a statement of its own (as in `claim`): a join
/// in the locking statement would be re-checked against the instances as they were before
/// waiting for the lock, and miss a holder created by the transaction waited for.
async fn claim_holder(
    t: &deadpool_postgres::Transaction<'_>,
    workflow: &str,
    key_hash: &[u8],
) -> std::result::Result<Option<(String, Option<String>)>, TxError> {
    let holder: Option<String> = t
        .query_opt(
            "SELECT instance FROM casework_idempotency \
             WHERE workflow = $1 AND key_hash = $2 FOR UPDATE",
            &[&workflow, &key_hash],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    let Some(holder) = holder else {
        return Ok(None);
    };
    let status: Option<String> = t
        .query_opt(
            "SELECT status FROM casework_instances WHERE id = $1",
            &[&holder],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(Some((holder, status)))
}

/// A fenced write goes on only while `b.fence` is the instance's newest claim; the row
/// stays locked until the transaction ends, so no claim slips in before the commit.
async fn check_fence(
    t: &deadpool_postgres::Transaction<'_>,
    b: &Batch,
) -> std::result::Result<(), TxError> {
    if let Some(fence) = &b.fence {
        let row = t
            .query_opt(
                "SELECT owner, epoch FROM casework_instances WHERE id = $1 FOR UPDATE",
                &[&b.instance],
            )
            .await?;
        let current = match &row {
            Some(r) => Some((r.try_get::<_, Option<String>>(0)?, r.try_get::<_, i64>(1)?)),
            None => None,
        };
        let ok = matches!(&current, Some((Some(owner), epoch))
            if *owner == fence.daemon && u64::try_from(*epoch).ok() == Some(fence.epoch));
        if !ok {
            return Err(TxError::Store(Error::Fenced {
                instance: b.instance.clone(),
                epoch: fence.epoch,
            }));
        }
    }
    Ok(())
}

async fn create_tx(
    c: &mut deadpool_postgres::Client,
    b: &Batch,
    sealed: &Sealed,
    claims: &[(String, Vec<u8>, ClaimScope)],
    daemon: &str,
) -> std::result::Result<Created, TxError> {
    let Some(m) = &b.meta else {
        return Err(TxError::Store(Error::Io(format!(
            "cannot create instance {}: its first batch has no instance record",
            b.instance
        ))));
    };
    let t = c.transaction().await?;
    // The instance row first: a concurrent create of the same id waits here for the
    // winner's commit, then finds the row.
    let inserted = t
        .query_opt(
            "INSERT INTO casework_instances (id, workflow, version, hash, status, created_at, updated_at, parent, owner, epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nextval('casework_epochs')) \
             ON CONFLICT (id) DO NOTHING RETURNING epoch",
            &[
                &b.instance,
                &m.workflow,
                &i64::from(m.version),
                &m.hash,
                &m.status,
                &m.created_at,
                &m.updated_at,
                &m.parent,
                &daemon,
            ],
        )
        .await?;
    let Some(row) = inserted else {
        t.rollback().await?;
        return Ok(Created::Existing(b.instance.clone()));
    };
    let epoch: i64 = row.try_get(0)?;
    for (workflow, key_hash, scope) in claims {
        // Under the unique constraint: of concurrent claims one inserts, the others wait
        // for its commit and then find its row. Claims are taken in the caller's order
        // (idempotency first), the same in every transaction, so two creates wait on each
        // other at most one way.
        let won = t
            .query_opt(
                "INSERT INTO casework_idempotency (workflow, key_hash, instance) VALUES ($1, $2, $3) \
                 ON CONFLICT (workflow, key_hash) DO NOTHING RETURNING instance",
                &[workflow, key_hash, &b.instance],
            )
            .await?;
        if won.is_some() {
            continue;
        }
        let Some((holder, status)) = claim_holder(&t, workflow, key_hash).await? else {
            // Deleted meanwhile: not possible today (claims are never deleted); try again.
            t.rollback().await?;
            return Err(TxError::Store(Error::Io(
                "an idempotency claim changed while it was being read".into(),
            )));
        };
        if let Some(refused) = scope.refusal(&holder, status.as_deref()) {
            t.rollback().await?;
            return Ok(refused);
        }
        t.execute(
            "UPDATE casework_idempotency SET instance = $3 WHERE workflow = $1 AND key_hash = $2",
            &[workflow, key_hash, &b.instance],
        )
        .await?;
    }
    // The instance row is written: the meta part of the batch is an update of it.
    apply_batch(&t, b, sealed).await?;
    t.commit().await?;
    Ok(Created::New(Fence {
        daemon: daemon.to_string(),
        epoch: u64::try_from(epoch).unwrap_or(0),
    }))
}

/// The parts of a `postgres://` URL the store needs, checked without echoing the URL
/// (it may hold a password).
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Target)> {
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::Io(
            "the store must be a postgres:// URL, like postgres://casework@db.internal:5432/casework".into(),
        ));
    }
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        Error::Io(format!(
            "the store URL {} is not a valid PostgreSQL URL: {e}",
            redact_url(url)
        ))
    })?;
    cfg.connect_timeout(CONNECT_TIMEOUT);
    cfg.application_name("casework");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    if cfg.get_hosts().is_empty() {
        cfg.host("localhost");
    }
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg
        .get_dbname()
        .or(cfg.get_user())
        .unwrap_or("postgres")
        .to_string();
    Ok((cfg, Target { host, port, db }))
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        // Not a URL: show its scheme at most.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://(unparsable)"),
            None => "(not a URL)".to_string(),
        },
    }
}

impl PgStore {
    /// Connect to the database at `url` (`postgres://user[:password]@host:port/db`), bring
    /// its schema up to date and check the journal key against the one it was created with.
    ///
    /// Every daemon on one database must use the same journal key, given explicitly
    /// ([`KeySource::Explicit`]); there is no key file beside a database.
    pub fn open(url: &str, key: KeySource) -> Result<PgStore> {
        let key = match key {
            KeySource::Explicit(k) => k,
            KeySource::DataDir => {
                return Err(Error::Key(
                    "the PostgreSQL store needs the journal key given explicitly: every daemon on the database must use the same key. Pass it as CASEWORK_JOURNAL_KEY (64 hex characters) or --journal-key-file (generate one with `openssl rand -hex 32`)".into(),
                ))
            }
        };
        let (cfg, target) = parse_url(url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("casework-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Io(format!("cannot start the PostgreSQL store's threads: {e}")))?;
        let handle = runtime.handle().clone();
        // Pool::builder with Runtime::Tokio1 spawns onto the current runtime: build it there.
        let pool = {
            let _guard = handle.enter();
            let manager = Manager::from_config(
                cfg.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| Error::Io(format!("cannot set up the connection pool: {e}")))?
        };
        let store = PgStore {
            runtime: Some(runtime),
            handle,
            shared: Arc::new(Shared {
                pool,
                sealer: Sealer::new(&key),
                target,
                config: cfg,
                hints: std::sync::Mutex::new(HashMap::new()),
                listening: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        store.run(|s| async move {
            let mut c = s.client().await?;
            migrate(&s, &mut c).await?;
            check_key(&s, &c).await
        })?;
        Ok(store)
    }

    /// Run `f` on the store's runtime and wait for it on this thread.
    fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        let target = shared.target.to_string();
        let fut = f(shared);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let r = match tokio::time::timeout(OP_TIMEOUT, fut).await {
                Ok(r) => r,
                Err(_) => Err(Error::Io(format!(
                    "the {target} did not answer within {} s",
                    OP_TIMEOUT.as_secs()
                ))),
            };
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| Error::Io("the PostgreSQL store has stopped".into()))?
    }

    /// Run a transaction, again when PostgreSQL aborted it as a serialization failure or a
    /// deadlock.
    fn transact<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Arc<Shared>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, TxError>> + Send,
        T: Send + 'static,
    {
        self.run(move |s| async move {
            let mut tries = 0;
            loop {
                tries += 1;
                match f(s.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(TxError::Pg(e)) if retryable(&e) && tries < TRIES => {
                        tokio::time::sleep(Duration::from_millis(5 * tries as u64)).await;
                    }
                    Err(e) => return Err(s.tx(e)),
                }
            }
        })
    }
}

/// Notifications buffered between the listening connection and the task that wakes
/// owners; past it, notifications are dropped (hints coalesce: one wake reads all mail).
const HINTS_BUFFERED: usize = 1024;
/// The longest pause between attempts to reconnect the listening connection.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keep a connection that `LISTEN`s on `casework_mail` and wake the daemons named in its
/// notifications, reconnecting with backoff for as long as the store lives. Notifications
/// sent while it was not listening are lost, so after every (re)connect every daemon is
/// woken once to read what may have come meanwhile.
async fn listen(s: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match s.config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(HINTS_BUFFERED);
                let reader = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                let _ = tx.try_send(n.payload().to_string());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return describe(&e),
                            None => return "the server closed the connection".to_string(),
                        }
                    }
                });
                match client.batch_execute("LISTEN casework_mail").await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        s.wake(None);
                        while let Some(daemon) = rx.recv().await {
                            s.wake(Some(&daemon));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(store = %s.target, error = %describe(&e), "could not listen for mail notifications; owners poll meanwhile");
                    }
                }
                reader.abort();
                if let Ok(why) = reader.await {
                    tracing::warn!(store = %s.target, error = %why, "lost the connection that listens for mail notifications; reconnecting (owners poll meanwhile)");
                }
            }
            Err(e) => {
                tracing::warn!(store = %s.target, error = %describe(&e), "cannot connect to listen for mail notifications; owners poll meanwhile");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

impl Shared {
    /// Wake `daemon`'s owners (every daemon of this process with `None`).
    fn wake(&self, daemon: Option<&str>) {
        let hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        let woken: Vec<&MailHint> = match daemon {
            Some(d) => hints.get(d).into_iter().flatten().collect(),
            None => hints.values().flatten().collect(),
        };
        for wake in woken {
            wake();
        }
    }
}

/// Apply the missing schema steps, under an advisory lock so concurrent opens do it once.
async fn migrate(s: &Shared, c: &mut deadpool_postgres::Client) -> Result<()> {
    let t = c.transaction().await.map_err(|e| s.db(e))?;
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| s.db(e))?;
    t.batch_execute("CREATE TABLE IF NOT EXISTS casework_schema (version INT NOT NULL)")
        .await
        .map_err(|e| s.db(e))?;
    let current: i32 = t
        .query_one("SELECT COALESCE(MAX(version), 0) FROM casework_schema", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| s.db(e))?;
    if current > SCHEMA_VERSION {
        return Err(Error::Io(format!(
            "the {} has schema version {current}, newer than this casework understands (up to {SCHEMA_VERSION}); run a casework at least as new as the one that upgraded it",
            s.target
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        t.batch_execute(step).await.map_err(|e| {
            Error::Io(format!(
                "{}: schema step {version} failed: {}",
                s.target,
                describe(&e)
            ))
        })?;
        t.execute("DELETE FROM casework_schema", &[])
            .await
            .map_err(|e| s.db(e))?;
        t.execute(
            "INSERT INTO casework_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| s.db(e))?;
        tracing::info!(version, database = %s.target, "PostgreSQL schema step applied");
    }
    t.commit().await.map_err(|e| s.db(e))
}

/// Check the journal key against the sealed check value, writing it on a new database.
async fn check_key(s: &Shared, c: &deadpool_postgres::Client) -> Result<()> {
    let sealed = s.seal("seal", b"check", CHECK_TEXT)?;
    // Of two daemons opening a new database at once, the first check value written stays.
    c.execute(
        "INSERT INTO casework_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&CHECK_NAME, &sealed],
    )
    .await
    .map_err(|e| s.db(e))?;
    let stored: Vec<u8> = c
        .query_one(
            "SELECT value FROM casework_meta WHERE name = $1",
            &[&CHECK_NAME],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| s.db(e))?;
    match s.sealer.open("seal", b"check", &stored) {
        Ok(text) if text == CHECK_TEXT => Ok(()),
        Ok(_) | Err(OpenError::Auth) | Err(OpenError::Truncated) => Err(Error::WrongDatabaseKey {
            target: s.target.to_string(),
        }),
        Err(e @ OpenError::UnknownFormat(_)) => Err(Error::Key(format!("the {}: {e}", s.target))),
    }
}

impl PgStore {
    /// Claims as their rows are keyed: workflow, the key's keyed hash, scope.
    fn claim_rows(&self, claims: &[Claim]) -> Vec<(String, Vec<u8>, ClaimScope)> {
        claims
            .iter()
            .map(|c| {
                (
                    c.workflow.clone(),
                    self.shared.sealer.index_id(&c.domain(), &c.key).to_vec(),
                    c.scope,
                )
            })
            .collect()
    }
}

impl Store for PgStore {
    fn write(&self, b: &Batch) -> Result<()> {
        let sealed = Arc::new(self.shared.sealed(b)?);
        let b = Arc::new(b.clone());
        self.transact(move |s| {
            let (b, sealed) = (b.clone(), sealed.clone());
            async move {
                let mut c = s.client().await?;
                write_tx(&mut c, &b, &sealed).await
            }
        })
    }

    /// Every write commits before it returns: nothing is left to make durable.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn journal(&self, instance: &str) -> Result<Vec<Record>> {
        let instance = instance.to_string();
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT seq, value FROM casework_journal WHERE instance = $1 ORDER BY seq",
                    &[&instance],
                )
                .await
                .map_err(|e| s.db(e))?;
            let corrupt = |detail: String| Error::Corrupt {
                instance: instance.clone(),
                detail,
            };
            rows.iter()
                .map(|r| {
                    let seq: i64 = r.try_get(0).map_err(col)?;
                    let value: Vec<u8> = r.try_get(1).map_err(col)?;
                    let seq = u64::try_from(seq)
                        .map_err(|_| corrupt(format!("negative sequence number {seq}")))?;
                    let plain = s
                        .sealer
                        .open("journal", &seq_key(&instance, seq), &value)
                        .map_err(|e| corrupt(e.to_string()))?;
                    let stored: Stored =
                        serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?;
                    if stored.v != VERSION {
                        return Err(corrupt(format!(
                            "journal version {} is newer than this casework understands",
                            stored.v
                        )));
                    }
                    Ok(stored.record)
                })
                .collect()
        })
    }

    fn instance(&self, id: &str) -> Result<Option<InstanceMeta>> {
        let id = id.to_string();
        self.run(move |s| async move {
            let c = s.client().await?;
            let row = c
                .query_opt(
                    &format!("SELECT {META_COLUMNS} FROM casework_instances WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(|e| s.db(e))?;
            row.as_ref().map(meta_from).transpose()
        })
    }

    fn instances(&self, after: Option<&str>, limit_: usize) -> Result<Vec<InstanceMeta>> {
        let after = after.map(str::to_string);
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {META_COLUMNS} FROM casework_instances \
                         WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2"
                    ),
                    &[&after, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            rows.iter().map(meta_from).collect()
        })
    }

    fn runnable(&self) -> Result<Vec<InstanceMeta>> {
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {META_COLUMNS} FROM casework_instances \
                         WHERE status IN ('running', 'compensating') ORDER BY id"
                    ),
                    &[],
                )
                .await
                .map_err(|e| s.db(e))?;
            rows.iter().map(meta_from).collect()
        })
    }

    fn put_definition(&self, hash: &str, def: &StoredDefinition) -> Result<()> {
        let value = self
            .shared
            .seal("definitions", hash.as_bytes(), &json(def)?)?;
        let hash = hash.to_string();
        self.run(move |s| async move {
            let c = s.client().await?;
            c.execute(
                "INSERT INTO casework_definitions (hash, value) VALUES ($1, $2) \
                 ON CONFLICT (hash) DO UPDATE SET value = EXCLUDED.value",
                &[&hash, &value],
            )
            .await
            .map_err(|e| s.db(e))?;
            Ok(())
        })
    }

    fn add_calendar_version(&self, v: &CalendarVersion) -> Result<Vec<CalendarVersion>> {
        let v = Arc::new(v.clone());
        self.transact(move |s| {
            let v = v.clone();
            async move {
                let mut c = s.client().await?;
                let t = c.transaction().await?;
                // The row is the lock: daemons loading calendars at once take turns.
                t.execute(
                    "INSERT INTO casework_calendars (name, value) VALUES ($1, '') \
                     ON CONFLICT (name) DO NOTHING",
                    &[&v.name],
                )
                .await?;
                let row = t
                    .query_one(
                        "SELECT value FROM casework_calendars WHERE name = $1 FOR UPDATE",
                        &[&v.name],
                    )
                    .await?;
                let sealed: Vec<u8> = row.try_get(0)?;
                let corrupt = |e: String| Error::Io(format!("stored calendar {}: {e}", v.name));
                let old: Vec<CalendarVersion> = if sealed.is_empty() {
                    Vec::new()
                } else {
                    let plain = s
                        .sealer
                        .open("calendars", v.name.as_bytes(), &sealed)
                        .map_err(|e| corrupt(e.to_string()))?;
                    serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?
                };
                let history = crate::calendar::history::append(old.clone(), (*v).clone());
                if history != old {
                    let value = s
                        .sealer
                        .seal("calendars", v.name.as_bytes(), &json(&history)?)?;
                    t.execute(
                        "UPDATE casework_calendars SET value = $2 WHERE name = $1",
                        &[&v.name, &value],
                    )
                    .await?;
                }
                t.commit().await?;
                Ok(history)
            }
        })
    }

    fn definitions(&self) -> Result<Vec<(String, StoredDefinition)>> {
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT hash, value FROM casework_definitions ORDER BY hash",
                    &[],
                )
                .await
                .map_err(|e| s.db(e))?;
            let mut all = Vec::new();
            for row in rows {
                let hash: String = row.try_get(0).map_err(col)?;
                let value: Vec<u8> = row.try_get(1).map_err(col)?;
                let plain = s
                    .sealer
                    .open("definitions", hash.as_bytes(), &value)
                    .map_err(|e| Error::Io(format!("stored definition {hash}: {e}")))?;
                let def = serde_json::from_slice(&plain)
                    .map_err(|e| Error::Io(format!("stored definition {hash}: {e}")))?;
                all.push((hash, def));
            }
            Ok(all)
        })
    }

    fn definition(&self, hash: &str) -> Result<Option<StoredDefinition>> {
        let hash = hash.to_string();
        self.run(move |s| async move {
            let c = s.client().await?;
            let Some(row) = c
                .query_opt(
                    "SELECT value FROM casework_definitions WHERE hash = $1",
                    &[&hash],
                )
                .await
                .map_err(|e| s.db(e))?
            else {
                return Ok(None);
            };
            let value: Vec<u8> = row.try_get(0).map_err(col)?;
            let plain = s
                .sealer
                .open("definitions", hash.as_bytes(), &value)
                .map_err(|e| Error::Io(format!("stored definition {hash}: {e}")))?;
            serde_json::from_slice(&plain)
                .map(Some)
                .map_err(|e| Error::Io(format!("stored definition {hash}: {e}")))
        })
    }

    fn backup(&self, _: &mut dyn std::io::Write) -> Result<u64> {
        Err(Error::Unsupported(
            "a PostgreSQL store is not backed up by Casework: back the database up with pg_dump, and keep the journal key (see README, Backup and restore)".into(),
        ))
    }

    fn create(&self, b: &Batch, claims: &[Claim], daemon: &str) -> Result<Created> {
        let sealed = Arc::new(self.shared.sealed(b)?);
        let claims = Arc::new(self.claim_rows(claims));
        let b = Arc::new(b.clone());
        let daemon = daemon.to_string();
        self.transact(move |s| {
            let (b, sealed, claims, daemon) =
                (b.clone(), sealed.clone(), claims.clone(), daemon.clone());
            async move {
                let mut c = s.client().await?;
                create_tx(&mut c, &b, &sealed, &claims, &daemon).await
            }
        })
    }

    fn reopen(&self, b: &Batch, places: &[Claim]) -> Result<Option<String>> {
        let sealed = Arc::new(self.shared.sealed(b)?);
        let claims = Arc::new(self.claim_rows(places));
        let b = Arc::new(b.clone());
        self.transact(move |s| {
            let (b, sealed, claims) = (b.clone(), sealed.clone(), claims.clone());
            async move {
                let mut c = s.client().await?;
                reopen_tx(&mut c, &b, &sealed, &claims).await
            }
        })
    }

    fn key_holder(&self, workflow: &str, key: &str) -> Result<Option<String>> {
        let workflow = workflow.to_string();
        let key_hash = self.shared.sealer.index_id("idempotency", key).to_vec();
        self.run(move |s| async move {
            let c = s.client().await?;
            let row = c
                .query_opt(
                    "SELECT k.instance FROM casework_idempotency k \
                     JOIN casework_instances i ON i.id = k.instance \
                     WHERE k.workflow = $1 AND k.key_hash = $2",
                    &[&workflow, &key_hash],
                )
                .await
                .map_err(|e| s.db(e))?;
            row.map(|r| r.try_get(0).map_err(col)).transpose()
        })
    }

    fn write_only_sealer(&self) -> &Sealer {
        &self.shared.sealer
    }

    fn search_id(&self, attribute: &str, value: &str) -> String {
        self.shared.sealer.search_id(attribute, value)
    }

    fn search(
        &self,
        workflow: &str,
        attribute: &str,
        id: &str,
        after: Option<&str>,
        limit_: usize,
    ) -> Result<Vec<String>> {
        let (workflow, attribute, id) =
            (workflow.to_string(), attribute.to_string(), id.to_string());
        let after = after.map(str::to_string);
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT instance FROM casework_search \
                     WHERE workflow = $1 AND attribute = $2 AND value_id = $3 \
                     AND ($4::text IS NULL OR instance > $4) ORDER BY instance LIMIT $5",
                    &[&workflow, &attribute, &id, &after, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            rows.iter().map(|r| r.try_get(0).map_err(col)).collect()
        })
    }

    fn due_timers(&self, now: Millis, limit_: usize) -> Result<Vec<Timer>> {
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT at, instance, frame FROM casework_timers WHERE at <= $1 \
                     ORDER BY at, instance, frame LIMIT $2",
                    &[&now, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            rows.iter()
                .map(|r| {
                    let frame: i64 = r.try_get(2).map_err(col)?;
                    Ok(Timer {
                        at: r.try_get(0).map_err(col)?,
                        instance: r.try_get(1).map_err(col)?,
                        frame: u32::try_from(frame)
                            .map_err(|_| Error::Io(format!("timer frame {frame} out of range")))?,
                    })
                })
                .collect()
        })
    }

    fn next_timer(&self) -> Result<Option<Millis>> {
        self.run(move |s| async move {
            let c = s.client().await?;
            c.query_one("SELECT MIN(at) FROM casework_timers", &[])
                .await
                .map_err(|e| s.db(e))?
                .try_get(0)
                .map_err(col)
        })
    }

    fn waiters(&self, event_type: &str, key: &str) -> Result<Vec<Wait>> {
        let event_type = event_type.to_string();
        let key = key.to_string();
        let key_hash = self.shared.sealer.index_id("wait", &key).to_vec();
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT instance, frame FROM casework_waits WHERE event_type = $1 AND key_hash = $2 \
                     ORDER BY instance, frame",
                    &[&event_type, &key_hash],
                )
                .await
                .map_err(|e| s.db(e))?;
            rows.iter()
                .map(|r| {
                    let frame: i64 = r.try_get(1).map_err(col)?;
                    Ok(Wait {
                        event_type: event_type.clone(),
                        key: key.clone(),
                        instance: r.try_get(0).map_err(col)?,
                        frame: u32::try_from(frame)
                            .map_err(|_| Error::Io(format!("wait frame {frame} out of range")))?,
                    })
                })
                .collect()
        })
    }

    fn event_answer(&self, event_id: &str) -> Result<Option<serde_json::Value>> {
        let id_hash = self.shared.sealer.index_id("event", event_id).to_vec();
        self.run(move |s| async move {
            let c = s.client().await?;
            let Some(row) = c
                .query_opt(
                    "SELECT value FROM casework_events WHERE id_hash = $1",
                    &[&id_hash],
                )
                .await
                .map_err(|e| s.db(e))?
            else {
                return Ok(None);
            };
            let value: Vec<u8> = row.try_get(0).map_err(col)?;
            s.sealer.open_answer(&id_hash, &value).map(Some)
        })
    }

    fn put_event_answer(&self, event_id: &str, answer: &serde_json::Value) -> Result<()> {
        let id_hash = self.shared.sealer.index_id("event", event_id).to_vec();
        let value = self.shared.seal("events", &id_hash, &json(answer)?)?;
        self.run(move |s| async move {
            let c = s.client().await?;
            c.execute(
                "INSERT INTO casework_events (id_hash, value) VALUES ($1, $2) \
                 ON CONFLICT (id_hash) DO UPDATE SET value = EXCLUDED.value",
                &[&id_hash, &value],
            )
            .await
            .map_err(|e| s.db(e))?;
            Ok(())
        })
    }

    fn update_event_answer(
        &self,
        slot: &str,
        change: &mut dyn FnMut(Option<serde_json::Value>) -> serde_json::Value,
    ) -> Result<serde_json::Value> {
        let id_hash = self.shared.sealer.index_id("event", slot).to_vec();
        // Compare and swap: `change` runs here, between a read and a write that takes
        // effect only if the row still holds what was read, so daemons counting at once
        // take turns without holding a transaction open across `change`.
        loop {
            let old: Option<Vec<u8>> = {
                let id_hash = id_hash.clone();
                self.run(move |s| async move {
                    let c = s.client().await?;
                    let row = c
                        .query_opt(
                            "SELECT value FROM casework_events WHERE id_hash = $1",
                            &[&id_hash],
                        )
                        .await
                        .map_err(|e| s.db(e))?;
                    row.map(|r| r.try_get(0).map_err(col)).transpose()
                })?
            };
            let current = match &old {
                Some(v) => Some(self.shared.sealer.open_answer(&id_hash, v)?),
                None => None,
            };
            let answer = change(current);
            let value = self.shared.seal("events", &id_hash, &json(&answer)?)?;
            let id_hash = id_hash.clone();
            let swapped = self.run(move |s| async move {
                let c = s.client().await?;
                let n = match old {
                    None => c
                        .execute(
                            "INSERT INTO casework_events (id_hash, value) VALUES ($1, $2) \
                             ON CONFLICT (id_hash) DO NOTHING",
                            &[&id_hash, &value],
                        )
                        .await
                        .map_err(|e| s.db(e))?,
                    Some(old) => c
                        .execute(
                            "UPDATE casework_events SET value = $2 \
                             WHERE id_hash = $1 AND value = $3",
                            &[&id_hash, &value, &old],
                        )
                        .await
                        .map_err(|e| s.db(e))?,
                };
                Ok(n == 1)
            })?;
            if swapped {
                return Ok(answer);
            }
        }
    }

    fn heartbeat(&self, daemon: &str, until: Millis) -> Result<()> {
        let daemon = daemon.to_string();
        self.run(move |s| async move {
            let c = s.client().await?;
            c.execute(
                "INSERT INTO casework_daemons (id, alive_until) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET alive_until = GREATEST(casework_daemons.alive_until, EXCLUDED.alive_until)",
                &[&daemon, &until],
            )
            .await
            .map_err(|e| s.db(e))?;
            Ok(())
        })
    }

    fn claim(&self, instance: &str, daemon: &str, now: Millis) -> Result<Ownership> {
        let instance = instance.to_string();
        let daemon = daemon.to_string();
        self.transact(move |s| {
            let (instance, daemon) = (instance.clone(), daemon.clone());
            async move {
                let mut c = s.client().await?;
                let t = c.transaction().await?;
                // The owner's lease is read in a statement of its own, after the row lock:
                // a claimer that waited for the lock gets the row as the winner left it,
                // but a join in the locking statement would be re-checked against the
                // daemons table as it was before the wait, find no lease for the new
                // owner and take the instance again.
                let Some(row) = t
                    .query_opt(
                        "SELECT owner, epoch FROM casework_instances WHERE id = $1 FOR UPDATE",
                        &[&instance],
                    )
                    .await?
                else {
                    t.rollback().await?;
                    return Ok(Ownership::Unknown);
                };
                let owner: Option<String> = row.try_get(0)?;
                let epoch: i64 = row.try_get(1)?;
                let alive_until: Option<i64> = match &owner {
                    Some(o) if *o != daemon => t
                        .query_opt(
                            "SELECT alive_until FROM casework_daemons WHERE id = $1",
                            &[o],
                        )
                        .await?
                        .map(|r| r.try_get(0))
                        .transpose()?,
                    _ => None,
                };
                match owner {
                    Some(o) if o == daemon => {
                        t.rollback().await?;
                        return Ok(Ownership::Mine(Fence {
                            daemon,
                            epoch: u64::try_from(epoch).unwrap_or(0),
                        }));
                    }
                    Some(o) if alive_until.is_some_and(|u| u > now) => {
                        t.rollback().await?;
                        return Ok(Ownership::Held { daemon: o });
                    }
                    _ => {}
                }
                let epoch: i64 = t
                    .query_one(
                        "UPDATE casework_instances SET owner = $2, epoch = nextval('casework_epochs') \
                         WHERE id = $1 RETURNING epoch",
                        &[&instance, &daemon],
                    )
                    .await?
                    .try_get(0)?;
                t.commit().await?;
                Ok(Ownership::Mine(Fence {
                    daemon,
                    epoch: u64::try_from(epoch).unwrap_or(0),
                }))
            }
        })
    }

    fn release(&self, instance: &str, fence: &Fence) -> Result<bool> {
        let instance = instance.to_string();
        let fence = fence.clone();
        self.transact(move |s| {
            let (instance, fence) = (instance.clone(), fence.clone());
            async move {
                let epoch = big(fence.epoch)?;
                let mut c = s.client().await?;
                let t = c.transaction().await?;
                // The row lock makes the check and the release one step for claims and
                // fenced writes; mail posted after the check finds a released instance,
                // which `mailed` reports to every daemon.
                let owned = t
                    .query_opt(
                        "SELECT 1 FROM casework_instances WHERE id = $1 AND owner = $2 AND epoch = $3 FOR UPDATE",
                        &[&instance, &fence.daemon, &epoch],
                    )
                    .await?;
                if owned.is_none() {
                    t.rollback().await?;
                    return Ok(true);
                }
                let mail = t
                    .query_opt(
                        "SELECT 1 FROM casework_mail WHERE instance = $1 LIMIT 1",
                        &[&instance],
                    )
                    .await?;
                if mail.is_some() {
                    t.rollback().await?;
                    return Ok(false);
                }
                t.execute(
                    "UPDATE casework_instances SET owner = NULL WHERE id = $1",
                    &[&instance],
                )
                .await?;
                t.commit().await?;
                Ok(true)
            }
        })
    }

    fn orphans(&self, now: Millis, limit_: usize) -> Result<Vec<String>> {
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT i.id FROM casework_instances i \
                     LEFT JOIN casework_daemons d ON d.id = i.owner \
                     WHERE i.status IN ('running', 'compensating') \
                     AND (i.owner IS NULL OR d.alive_until IS NULL OR d.alive_until <= $1) \
                     ORDER BY i.id LIMIT $2",
                    &[&now, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            rows.iter().map(|r| r.try_get(0).map_err(col)).collect()
        })
    }

    fn post(&self, instance: &str, mail: &Mail) -> Result<()> {
        let instance = instance.to_string();
        let plain = json(mail)?;
        self.run(move |s| async move {
            let c = s.client().await?;
            // The number first: the value is sealed bound to it.
            let seq: i64 = c
                .query_one(
                    "SELECT nextval(pg_get_serial_sequence('casework_mail', 'seq'))",
                    &[],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| s.db(e))?;
            let number = u64::try_from(seq)
                .map_err(|_| Error::Io(format!("{}: negative mail number {seq}", s.target)))?;
            let key = seq_key(&instance, number);
            let value = s.seal("mail", &key, &plain)?;
            // The owner is told in the same statement (a hint: it polls as well). A
            // notification is delivered when the statement's transaction commits.
            c.execute(
                "WITH m AS (INSERT INTO casework_mail (seq, instance, value) VALUES ($1, $2, $3)) \
                 SELECT pg_notify('casework_mail', owner) FROM casework_instances \
                 WHERE id = $2 AND owner IS NOT NULL",
                &[&seq, &instance, &value],
            )
            .await
            .map_err(|e| s.db(e))?;
            Ok(())
        })
    }

    fn mail(&self, instance: &str, limit_: usize) -> Result<Vec<(u64, Mail)>> {
        let instance = instance.to_string();
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT seq, value FROM casework_mail WHERE instance = $1 ORDER BY seq LIMIT $2",
                    &[&instance, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            let corrupt = |detail: String| Error::Corrupt {
                instance: instance.clone(),
                detail,
            };
            rows.iter()
                .map(|r| {
                    let seq: i64 = r.try_get(0).map_err(col)?;
                    let value: Vec<u8> = r.try_get(1).map_err(col)?;
                    let seq = u64::try_from(seq)
                        .map_err(|_| corrupt(format!("negative mail number {seq}")))?;
                    let plain = s
                        .sealer
                        .open("mail", &seq_key(&instance, seq), &value)
                        .map_err(|e| corrupt(e.to_string()))?;
                    let mail = serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?;
                    Ok((seq, mail))
                })
                .collect()
        })
    }

    fn on_mail(&self, daemon: &str, wake: MailHint) {
        self.shared
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(daemon.to_string())
            .or_default()
            .push(wake);
        if !self.shared.listening.swap(true, Ordering::SeqCst) {
            self.handle.spawn(listen(self.shared.clone()));
        }
    }

    fn mailed(&self, daemon: &str, now: Millis, limit_: usize) -> Result<Vec<String>> {
        let daemon = daemon.to_string();
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT m.instance FROM (SELECT DISTINCT instance FROM casework_mail) m \
                     LEFT JOIN casework_instances i ON i.id = m.instance \
                     LEFT JOIN casework_daemons d ON d.id = i.owner \
                     WHERE i.owner IS NULL OR i.owner = $1 OR d.alive_until IS NULL OR d.alive_until <= $2 \
                     ORDER BY m.instance LIMIT $3",
                    &[&daemon, &now, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            rows.iter().map(|r| r.try_get(0).map_err(col)).collect()
        })
    }

    fn buffer(
        &self,
        event: &Event,
        arrived: Millis,
        until: Millis,
        bounds: InboxBounds,
    ) -> Result<Inboxed> {
        let event = Arc::new(event.clone());
        let key_hash = self.shared.sealer.index_id("wait", &event.key).to_vec();
        self.transact(move |s| {
            let (event, key_hash) = (event.clone(), key_hash.clone());
            async move {
                let mut c = s.client().await?;
                let t = c.transaction().await?;
                let n = resize_inbox(&t, 1).await?;
                if n > limit(bounds.total) {
                    t.rollback().await?;
                    return Ok(Inboxed::Full {
                        per_key: false,
                        limit: bounds.total,
                    });
                }
                let same: i64 = t
                    .query_one(
                        "SELECT count(*) FROM (SELECT 1 FROM casework_inbox \
                         WHERE event_type = $1 AND key_hash = $2 LIMIT $3) k",
                        &[&event.event_type, &key_hash, &limit(bounds.per_key)],
                    )
                    .await?
                    .try_get(0)?;
                if same >= limit(bounds.per_key) {
                    t.rollback().await?;
                    return Ok(Inboxed::Full {
                        per_key: true,
                        limit: bounds.per_key,
                    });
                }
                let (seq, number) = next_number(&t, "casework_inbox").await?;
                let entry = Buffered {
                    event: (*event).clone(),
                    stamp: Stamp {
                        seq: number,
                        arrived,
                        until,
                    },
                };
                let value = s.seal("inbox", &inbox_seal_key(number), &json(&entry)?)?;
                t.execute(
                    "INSERT INTO casework_inbox (seq, event_type, key_hash, until_at, value) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&seq, &event.event_type, &key_hash, &until, &value],
                )
                .await?;
                if let Some(id) = &event.id {
                    let id_hash = s.sealer.index_id("event", id).to_vec();
                    let answer = s.seal("events", &id_hash, &json(&buffered_answer(number))?)?;
                    t.execute(
                        "INSERT INTO casework_events (id_hash, value) VALUES ($1, $2) \
                         ON CONFLICT (id_hash) DO UPDATE SET value = EXCLUDED.value",
                        &[&id_hash, &answer],
                    )
                    .await?;
                }
                t.commit().await?;
                Ok(Inboxed::Kept(number))
            }
        })
    }

    fn buffered(
        &self,
        event_type: &str,
        key: &str,
        now: Millis,
        limit_: usize,
    ) -> Result<Vec<Buffered>> {
        let event_type = event_type.to_string();
        let key_hash = self.shared.sealer.index_id("wait", key).to_vec();
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT seq, value FROM casework_inbox \
                     WHERE event_type = $1 AND key_hash = $2 AND until_at >= $3 \
                     ORDER BY seq LIMIT $4",
                    &[&event_type, &key_hash, &now, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            buffered_rows(&s, &rows)
        })
    }

    fn inbox(&self, after: Option<u64>, limit_: usize) -> Result<Vec<Buffered>> {
        let after = big(after.unwrap_or(0))?;
        self.run(move |s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    "SELECT seq, value FROM casework_inbox WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &limit(limit_)],
                )
                .await
                .map_err(|e| s.db(e))?;
            buffered_rows(&s, &rows)
        })
    }

    fn hand_over(&self, seq: u64, instance: &str) -> Result<bool> {
        let instance = instance.to_string();
        let seq = big(seq)?;
        self.transact(move |s| {
            let instance = instance.clone();
            async move {
                let mut c = s.client().await?;
                let t = c.transaction().await?;
                resize_inbox(&t, 0).await?;
                let Some(row) = t
                    .query_opt(
                        "DELETE FROM casework_inbox WHERE seq = $1 RETURNING value",
                        &[&seq],
                    )
                    .await?
                else {
                    t.rollback().await?;
                    return Ok(false);
                };
                resize_inbox(&t, -1).await?;
                let entry = open_buffered(&s, seq, &row.try_get::<_, Vec<u8>>(0)?)?;
                let (mail_seq, number) = next_number(&t, "casework_mail").await?;
                let letter = Mail::Event {
                    event: entry.event,
                    buffered: Some(entry.stamp),
                };
                let value = s.seal("mail", &seq_key(&instance, number), &json(&letter)?)?;
                // The owner is told as `post` tells it.
                t.execute(
                    "WITH m AS (INSERT INTO casework_mail (seq, instance, value) VALUES ($1, $2, $3)) \
                     SELECT pg_notify('casework_mail', owner) FROM casework_instances \
                     WHERE id = $2 AND owner IS NOT NULL",
                    &[&mail_seq, &instance, &value],
                )
                .await?;
                t.commit().await?;
                Ok(true)
            }
        })
    }

    fn hand_back(
        &self,
        instance: &str,
        mail_seq: u64,
        event: &Event,
        stamp: Stamp,
    ) -> Result<Option<u64>> {
        let instance = instance.to_string();
        let event = Arc::new(event.clone());
        let mail_seq = big(mail_seq)?;
        let key_hash = self.shared.sealer.index_id("wait", &event.key).to_vec();
        self.transact(move |s| {
            let (instance, event, key_hash) = (instance.clone(), event.clone(), key_hash.clone());
            async move {
                let mut c = s.client().await?;
                let t = c.transaction().await?;
                resize_inbox(&t, 0).await?;
                let gone = t
                    .execute(
                        "DELETE FROM casework_mail WHERE seq = $1 AND instance = $2",
                        &[&mail_seq, &instance],
                    )
                    .await?;
                if gone == 0 {
                    t.rollback().await?;
                    return Ok(None);
                }
                let mut stamp = stamp;
                if stamp.seq == 0 {
                    stamp.seq = next_number(&t, "casework_inbox").await?.1;
                }
                let entry = Buffered {
                    event: (*event).clone(),
                    stamp,
                };
                let value = s.seal("inbox", &inbox_seal_key(stamp.seq), &json(&entry)?)?;
                t.execute(
                    "INSERT INTO casework_inbox (seq, event_type, key_hash, until_at, value) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &big(stamp.seq)?,
                        &event.event_type,
                        &key_hash,
                        &stamp.until,
                        &value,
                    ],
                )
                .await?;
                resize_inbox(&t, 1).await?;
                t.commit().await?;
                Ok(Some(stamp.seq))
            }
        })
    }

    fn purge(&self, seq: u64) -> Result<bool> {
        let seq = big(seq)?;
        self.transact(move |s| async move {
            let mut c = s.client().await?;
            let t = c.transaction().await?;
            resize_inbox(&t, 0).await?;
            let gone = t
                .execute("DELETE FROM casework_inbox WHERE seq = $1", &[&seq])
                .await?;
            resize_inbox(&t, -(gone as i64)).await?;
            t.commit().await?;
            Ok(gone > 0)
        })
    }

    fn expire(&self, now: Millis, limit_: usize) -> Result<usize> {
        self.transact(move |s| async move {
            let mut c = s.client().await?;
            let t = c.transaction().await?;
            resize_inbox(&t, 0).await?;
            let gone = t
                .execute(
                    "DELETE FROM casework_inbox WHERE seq IN \
                     (SELECT seq FROM casework_inbox WHERE until_at < $1 ORDER BY until_at LIMIT $2)",
                    &[&now, &limit(limit_)],
                )
                .await?;
            resize_inbox(&t, -(gone as i64)).await?;
            t.commit().await?;
            Ok(gone as usize)
        })
    }
}

/// The inbox key a buffered event is sealed under: its number.
fn inbox_seal_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn open_buffered(s: &Shared, seq: i64, value: &[u8]) -> Result<Buffered> {
    let corrupt = |detail: String| Error::Corrupt {
        instance: "(inbox)".into(),
        detail,
    };
    let n = u64::try_from(seq).map_err(|_| corrupt(format!("negative inbox number {seq}")))?;
    let plain = s
        .sealer
        .open("inbox", &inbox_seal_key(n), value)
        .map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))
}

fn buffered_rows(s: &Shared, rows: &[tokio_postgres::Row]) -> Result<Vec<Buffered>> {
    rows.iter()
        .map(|r| {
            let seq: i64 = r.try_get(0).map_err(col)?;
            let value: Vec<u8> = r.try_get(1).map_err(col)?;
            open_buffered(s, seq, &value)
        })
        .collect()
}

/// Change the inbox size by `delta` in transaction `t`, taking the row lock every inbox
/// change holds until it commits.
async fn resize_inbox(
    t: &deadpool_postgres::Transaction<'_>,
    delta: i64,
) -> std::result::Result<i64, TxError> {
    Ok(t.query_one(
        "UPDATE casework_inbox_size SET n = GREATEST(n + $1, 0) WHERE one RETURNING n",
        &[&delta],
    )
    .await?
    .try_get(0)?)
}

/// The next number of `table`'s serial `seq` (mail, inbox), taken first in `t` because a
/// value is sealed bound to its number: as the column's type, and as stored.
async fn next_number(
    t: &deadpool_postgres::Transaction<'_>,
    table: &str,
) -> std::result::Result<(i64, u64), TxError> {
    let seq: i64 = t
        .query_one(
            "SELECT nextval(pg_get_serial_sequence($1, 'seq'))",
            &[&table],
        )
        .await?
        .try_get(0)?;
    let number =
        u64::try_from(seq).map_err(|_| Error::Io(format!("negative number {seq} in {table}")))?;
    Ok((seq, number))
}

/// A database of its own on a server, for `casework bench`: created empty, dropped with
/// the value, so a run never meets the instances (or the journal key) of another.
pub struct ScratchDatabase {
    server: tokio_postgres::Config,
    /// The server's own database, where the scratch one is created and dropped.
    target: Target,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Create `casework_bench_<random>` on the server of `url` (whose user may create
    /// databases).
    pub fn create(url: &str) -> Result<ScratchDatabase> {
        let (server, target) = parse_url(url)?;
        let name = format!("casework_bench_{:016x}", rand::random::<u64>());
        scratch_statement(&server, &target, &format!("CREATE DATABASE {name}"))?;
        let mut u = url::Url::parse(url.trim())
            .map_err(|e| Error::Io(format!("the store URL is not a URL: {e}")))?;
        u.set_path(&name);
        Ok(ScratchDatabase {
            server,
            target,
            name,
            url: u.to_string(),
        })
    }

    /// The new database's URL (with the password of the URL it was made from, if any).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = scratch_statement(&self.server, &self.target, &sql) {
            tracing::warn!(database = %self.name, error = %e, "could not drop the scratch database");
        }
    }
}

/// Run one statement on the server's own database, on a runtime of its own.
fn scratch_statement(server: &tokio_postgres::Config, target: &Target, sql: &str) -> Result<()> {
    let (server, target, sql) = (server.clone(), target.clone(), sql.to_string());
    // A thread of its own: the caller may be on a tokio runtime, where `block_on` panics.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(async {
            let (client, connection) = server
                .connect(NoTls)
                .await
                .map_err(|e| Error::Io(format!("cannot reach the {target}: {}", describe(&e))))?;
            let connection = tokio::spawn(connection);
            let done = client
                .batch_execute(&sql)
                .await
                .map_err(|e| Error::Io(format!("{target}: {}", describe(&e))));
            drop(client);
            let _ = connection.await;
            done
        })
    })
    .join()
    .map_err(|_| Error::Io("the scratch database thread panicked".into()))?
}

/// The test database helper, shared with the integration tests.
#[cfg(test)]
#[path = "../../../tests/support/postgres.rs"]
mod test_db;

#[cfg(test)]
mod tests {
    use super::test_db::TestDb;
    use super::*;
    use crate::store::seal::JournalKey;

    /// A random journal key, as the key itself and as a key source.
    fn key() -> (JournalKey, KeySource) {
        let k = JournalKey::random().expect("a random key");
        (k.clone(), KeySource::Explicit(k))
    }

    #[test]
    fn an_unreachable_server_is_named_without_its_password() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let err = PgStore::open(
            "postgres://casework:hunter2secret@127.0.0.1:1/ledgerdb",
            key().1,
        )
        .expect_err("nothing listens on port 1");
        let text = err.to_string();
        eprintln!("{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(text.contains("ledgerdb"), "{text}");
        assert!(!text.contains("hunter2"), "the password leaked: {text}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn a_host_that_does_not_answer_fails_within_the_connect_timeout() {
        // A loopback port that accepts connections and never answers (the kernel
        // completes the handshake for the listen backlog): opening must give up on its own.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Returning at all is the point (a hang would hang the test); how fast is not asserted.
        let err = PgStore::open(
            &format!("postgres://casework:pw-secret-9@127.0.0.1:{port}/silent"),
            key().1,
        )
        .expect_err("a server that never answers");
        let text = err.to_string();
        eprintln!("{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("silent"), "{text}");
        assert!(!text.contains("pw-secret-9"), "{text}");
        drop(listener);
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err = PgStore::open("mysql://root:topsecret@db/x", key().1)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("postgres:// URL"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
        assert_eq!(
            redact_url("postgres://u:topsecret@h:5/d"),
            "postgres://u:***@h:5/d"
        );
        assert_eq!(redact_url("postgres://u@h:5/d"), "postgres://u@h:5/d");
    }

    #[test]
    fn no_key_wrong_key_and_the_right_key() {
        let db = TestDb::new();
        let err = PgStore::open(db.url(), KeySource::DataDir)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("every daemon on the database must use the same key"),
            "{err}"
        );
        assert!(err.contains("CASEWORK_JOURNAL_KEY"), "{err}");
        let (k, source) = key();
        let s = PgStore::open(db.url(), source).unwrap();
        s.put_event_answer("e1", &serde_json::json!({"ok": true}))
            .unwrap();
        drop(s);
        let err = PgStore::open(db.url(), key().1).err().unwrap();
        assert!(matches!(err, Error::WrongDatabaseKey { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("every daemon on it must use that same key")
                && !message.contains("journal.key"),
            "{message}"
        );
        let s = PgStore::open(db.url(), KeySource::Explicit(k)).unwrap();
        assert_eq!(
            s.event_answer("e1").unwrap(),
            Some(serde_json::json!({"ok": true}))
        );
    }

    #[test]
    fn a_newer_schema_is_refused_and_opening_twice_migrates_once() {
        let db = TestDb::new();
        let (k, source) = key();
        drop(PgStore::open(db.url(), source).unwrap());
        // Reopening applies nothing again.
        drop(PgStore::open(db.url(), KeySource::Explicit(k.clone())).unwrap());
        let versions = db.raw_bytes("SELECT version::text::bytea FROM casework_schema");
        assert_eq!(versions, vec![SCHEMA_VERSION.to_string().into_bytes()]);
        db.execute(&format!(
            "UPDATE casework_schema SET version = {}",
            SCHEMA_VERSION + 1
        ));
        let err = PgStore::open(db.url(), KeySource::Explicit(k))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("newer than this casework understands"),
            "{err}"
        );
    }

    #[test]
    fn concurrent_opens_of_a_new_database_agree() {
        let db = TestDb::new();
        let (k, _) = key();
        let url = db.url().to_string();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (url, k) = (url.clone(), k.clone());
                std::thread::spawn(move || PgStore::open(&url, KeySource::Explicit(k)).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }

    /// Waits (bounded) until `count` reaches `at_least`; false if it never does.
    fn reaches(count: &std::sync::atomic::AtomicUsize, at_least: usize) -> bool {
        for _ in 0..300 {
            if count.load(Ordering::SeqCst) >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    #[test]
    fn the_owner_is_told_of_mail_and_again_after_its_listening_connection_drops() {
        use std::sync::atomic::AtomicUsize;
        let db = TestDb::new();
        let (k, source) = key();
        let owner = PgStore::open(db.url(), source).unwrap();
        let sender = PgStore::open(db.url(), KeySource::Explicit(k)).unwrap();
        db.execute(
            "INSERT INTO casework_instances (id, workflow, version, hash, status, created_at, updated_at, owner, epoch) \
             VALUES ('i1', 'w', 1, 'h', 'running', 0, 0, 'd-owner', 1), \
                    ('i2', 'w', 1, 'h', 'running', 0, 0, 'd-other', 2)",
        );
        let (mine, others) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for (daemon, count) in [("d-owner", &mine), ("d-other", &others)] {
            let count = count.clone();
            owner.on_mail(
                daemon,
                Arc::new(move || {
                    count.fetch_add(1, Ordering::SeqCst);
                }),
            );
        }
        // Listening: every daemon is woken once on connecting.
        assert!(reaches(&mine, 1) && reaches(&others, 1), "never listened");
        let (m0, o0) = (mine.load(Ordering::SeqCst), others.load(Ordering::SeqCst));
        let mail = Mail::Cancel {
            reason: "a test".into(),
        };
        sender.post("i1", &mail).unwrap();
        assert!(reaches(&mine, m0 + 1), "the owner was not told of its mail");
        assert_eq!(
            others.load(Ordering::SeqCst),
            o0,
            "a daemon that owns nothing with mail was woken"
        );
        // The listening connection is cut (a failover of the database, a restart): the
        // store reconnects, wakes everyone once (hints sent meanwhile are lost), and hears
        // new mail again.
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query = 'LISTEN casework_mail'",
        );
        assert!(reaches(&others, o0 + 1), "no wake-up after reconnecting");
        let m1 = mine.load(Ordering::SeqCst);
        sender.post("i1", &mail).unwrap();
        assert!(
            reaches(&mine, m1 + 1),
            "not told of mail after reconnecting"
        );
        assert_eq!(owner.mail("i1", 10).unwrap().len(), 2);
    }

    #[test]
    fn the_store_works_from_inside_a_tokio_runtime_and_drops_there() {
        let db = TestDb::new();
        let s = PgStore::open(db.url(), key().1).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            s.heartbeat("d1", 10).unwrap();
            assert_eq!(s.next_timer().unwrap(), None);
            let s = Arc::new(s);
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || s2.next_timer().unwrap())
                .await
                .unwrap();
            // The last handle is dropped on a runtime thread: must not panic.
            drop(s);
        });
    }
}
