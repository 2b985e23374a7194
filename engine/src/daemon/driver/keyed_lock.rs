//! One async lock per key (duplicate event ids delivered one after the other).

use super::*;

/// One async lock per key, held only while in use (the map holds keys in flight only).
#[derive(Default)]
pub(super) struct KeyedLock {
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key of a [`KeyedLock`]; the entry goes when the last holder or waiter does.
pub(super) struct KeyGuard<'a> {
    lock: &'a KeyedLock,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLock {
    pub(super) async fn hold(&self, key: &str) -> KeyGuard<'_> {
        let m = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let guard = m.lock_owned().await;
        KeyGuard {
            lock: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.lock.held.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds it now: nobody holds or waits for this key.
        if held
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            held.remove(&self.key);
        }
    }
}
