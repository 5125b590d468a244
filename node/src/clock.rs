//! The node's wall clock: the system clock, shifted by `fault.clock_offset_ms` when a test
//! injects a wrong clock (BAD_INPUTS 24, 33). Every wall-clock reading of the node goes through
//! here, so a shifted node is wrong everywhere at once, as one with a bad clock is. Intervals
//! and time-outs use monotonic time and are not shifted.

use std::sync::atomic::{AtomicI64, Ordering};

use allium_proto::{Clock, SystemClock, UnixMillis};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts every later reading by `offset_ms` (set once, at start).
pub fn set_offset(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// Unix milliseconds as this node reads them.
pub fn now_ms() -> UnixMillis {
    let offset = OFFSET_MS.load(Ordering::Relaxed);
    let system = SystemClock.now();
    if offset >= 0 {
        system.saturating_add(offset.unsigned_abs())
    } else {
        system.saturating_sub(offset.unsigned_abs())
    }
}

/// Unix seconds as this node reads them.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// [`now_ms`] as a [`Clock`], for the store's sweeper and the storage service.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeClock;

impl Clock for NodeClock {
    fn now(&self) -> UnixMillis {
        now_ms()
    }
}
