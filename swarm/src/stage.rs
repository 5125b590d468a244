//! Marks of a request's stages, to measure where a delivery's time goes (`allium-bench
//! --breakdown`, whitepaper/performance.md §4). A mark is a TRACE event on the [`TARGET`]
//! target with the wall-clock time in microseconds, so that the marks of several processes on
//! one machine line up. It names a stage only: no mailbox, message, key or address.
//!
//! Off (any filter that leaves [`TARGET`] below TRACE, as every default does), a mark costs
//! the callsite's cached filter check: the clock is read only when the event is enabled.

use std::time::{SystemTime, UNIX_EPOCH};

/// The tracing target of every mark.
pub const TARGET: &str = "allium_stage";

/// Wall-clock microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Marks that this process reached `stage` now.
pub fn mark(stage: &'static str) {
    tracing::trace!(target: TARGET, at_us = now_us(), stage);
}
