//! Waiting for an instance to change (`?wait=` on starts and reads): a client holds one
//! request open instead of polling.
//!
//! The actor that journals a step tells the watchers of its instance once the step is
//! durable ([`Watchers::changed`]). A watcher then reads the store again and checks its
//! own condition. Because an instance may run on another daemon (PostgreSQL), a watcher
//! also looks at the store every [`RECHECK`] without being told. What a watcher read is
//! made durable ([`Inner::commit`]) before it is answered: a local store shows writes
//! before their flush, and a later step may have been written since the one it was told
//! of. Only when it was told that the instance's final step is durable is there nothing
//! left to flush: a finished instance never changes.

use super::*;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

/// Longest a client may hold a request open.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Requests that may wait at once; past it a request that asks to wait is refused
/// ([`WaitError::TooManyWaiting`]) before it starts anything.
pub const MAX_WATCHERS: usize = 10_000;
/// How often a watcher looks at the store without being told of a change.
const RECHECK: Duration = Duration::from_millis(250);

#[derive(Default)]
pub(super) struct Watchers {
    count: AtomicUsize,
    by_id: Mutex<HashMap<String, (Arc<Told>, usize)>>,
    /// Set when the daemon stops: every wait ends at once with what it has.
    closing: Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// What watchers of one instance are told.
#[derive(Default)]
pub(super) struct Told {
    notify: Notify,
    /// The instance's final step is durable: it never changes again, so what a watcher
    /// reads of it now needs no flush.
    final_durable: std::sync::atomic::AtomicBool,
}

/// A registration; dropping it unregisters.
pub(super) struct Watch<'a> {
    watchers: &'a Watchers,
    id: String,
    told: Arc<Told>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut by_id = self
            .watchers
            .by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = by_id.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                by_id.remove(&self.id);
            }
        }
        self.watchers.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watchers {
    fn watch(&self, id: &str) -> Result<Watch<'_>, WaitError> {
        if self.count.fetch_add(1, Ordering::SeqCst) >= MAX_WATCHERS {
            self.count.fetch_sub(1, Ordering::SeqCst);
            return Err(WaitError::TooManyWaiting);
        }
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let entry = by_id
            .entry(id.to_string())
            .or_insert_with(|| (Arc::new(Told::default()), 0));
        entry.1 += 1;
        Ok(Watch {
            watchers: self,
            id: id.to_string(),
            told: entry.0.clone(),
        })
    }

    /// Whether another wait may begin now (checked before a start that will wait).
    pub(super) fn has_room(&self) -> bool {
        self.count.load(Ordering::SeqCst) < MAX_WATCHERS
    }

    /// A step of `id` is durable (its last, if `is_final`): wake its watchers.
    pub(super) fn changed(&self, id: &str, is_final: bool) {
        // The common case, nobody waiting, costs one atomic load.
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((told, _)) = by_id.get(id) {
            if is_final {
                told.final_durable.store(true, Ordering::SeqCst);
            }
            told.notify.notify_waiters();
        }
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
    }
}

/// Why a wait could not be held.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{MAX_WATCHERS} requests are waiting already (the daemon's bound); ask again without `wait`, or later")]
    TooManyWaiting,
    #[error("{0}")]
    Internal(String),
}

/// What a wait ended with: the instance's index entry when its condition held (read
/// from durable state), or the last one read when the time ran out or the daemon stopped.
pub struct Waited<T> {
    pub value: T,
    pub settled: bool,
}

impl Driver {
    /// Whether a request may wait now (see [`MAX_WATCHERS`]).
    pub fn can_wait(&self) -> bool {
        self.inner.watchers.has_room()
    }

    /// Ends every wait at once (the daemon is stopping).
    pub fn stop_waiting(&self) {
        self.inner.watchers.close();
    }

    /// Wait up to `timeout` (at most [`MAX_WAIT`]) until `look` finds what it waits for in
    /// the store: `look` reads the instance and returns `Ok((value, done))`. Returns
    /// the last value read.
    pub async fn wait_for<T>(
        &self,
        id: &str,
        timeout: Duration,
        look: impl Fn(&Inner) -> Result<(T, bool), String>,
    ) -> Result<Waited<T>, WaitError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        let watch = inner.watchers.watch(id)?;
        loop {
            // Registered before the read, so a change between the read and the wait wakes it.
            let changed = watch.told.notify.notified();
            let closing = inner.watchers.closing.notified();
            tokio::pin!(changed, closing);
            changed.as_mut().enable();
            closing.as_mut().enable();
            let (value, done) = look(inner).map_err(WaitError::Internal)?;
            let over = tokio::time::Instant::now() >= deadline
                || inner.watchers.closed.load(Ordering::SeqCst);
            if done || over {
                if !watch.told.final_durable.load(Ordering::SeqCst) {
                    inner.commit().await.map_err(WaitError::Internal)?;
                }
                return Ok(Waited {
                    value,
                    settled: done,
                });
            }
            let recheck = (tokio::time::Instant::now() + RECHECK).min(deadline);
            tokio::select! {
                _ = &mut changed => {}
                _ = &mut closing => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
        }
    }
}
