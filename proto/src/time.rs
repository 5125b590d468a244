//! Time as a parameter: the rules never read a clock, callers pass `now`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC), as carried on the wire.
pub type UnixMillis = u64;

/// A source of wall-clock time. Only the node daemon and tests create one; rules take `now`.
pub trait Clock: Send + Sync {
    /// Current wall-clock time.
    fn now(&self) -> UnixMillis;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        // A clock before 1970 is a misconfigured host; 0 makes every window check refuse.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to: for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: UnixMillis) -> Self {
        Self(AtomicU64::new(start))
    }
    /// Sets the clock, also backwards (to simulate a clock step).
    pub fn set(&self, t: UnixMillis) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Never runs backwards: a step back of the inner clock holds time still until the inner clock
/// catches up. Message timestamps and cursors rely on node time being monotone (whitepaper §7).
#[derive(Debug, Default)]
pub struct MonotoneFloor(AtomicU64);

impl MonotoneFloor {
    /// A floor starting at `start` (e.g. the store's persisted high-water mark).
    pub fn new(start: UnixMillis) -> Self {
        Self(AtomicU64::new(start))
    }
    /// `max(now, every earlier result)`.
    pub fn clamp(&self, now: UnixMillis) -> UnixMillis {
        let prev = self.0.fetch_max(now, Ordering::SeqCst);
        prev.max(now)
    }
}
