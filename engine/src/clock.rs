//! The only place that reads the system clock.

use crate::runtime::Millis;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of "now" in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
    /// A virtual clock advances by itself to the next timer when nothing else can happen.
    fn is_virtual(&self) -> bool {
        false
    }
    /// Move a virtual clock forward (never backward); real clocks ignore this.
    fn advance_to(&self, _ms: Millis) {}
}

/// Wall-clock time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to: hours of timers run in milliseconds.
///
/// ```
/// use casework::clock::{Clock, ManualClock};
/// let c = ManualClock::new(1_000);
/// c.advance_to(5_000);
/// assert_eq!(c.now_ms(), 5_000);
/// c.advance_to(10); // never goes backwards
/// assert_eq!(c.now_ms(), 5_000);
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    pub fn new(start_ms: Millis) -> Self {
        ManualClock {
            now: AtomicI64::new(start_ms),
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    fn is_virtual(&self) -> bool {
        true
    }

    fn advance_to(&self, ms: Millis) {
        self.now.fetch_max(ms, Ordering::SeqCst);
    }
}
