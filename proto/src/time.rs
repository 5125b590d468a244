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

/// `S` (whitepaper storage §1): the bound on the difference between two swarm members' clocks
/// that the cursor overlap assumes.
pub const CLOCK_BOUND_MS: u64 = 10_000;

/// How far a member's node time may be from its swarm peers' before it serves no mailbox
/// (storage §8.3): half of [`CLOCK_BOUND_MS`], so that two members both within it of a common
/// reference are within `S` of each other.
pub const FAR_MS: u64 = CLOCK_BOUND_MS / 2;

/// One reading of a peer's node time: asked at this node's time `sent`, answered with `peer`,
/// received at `received`. The peer read its clock somewhere between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// This node's time when it sent the request.
    pub sent: UnixMillis,
    /// The peer's time in its answer.
    pub peer: UnixMillis,
    /// This node's time when the answer arrived.
    pub received: UnixMillis,
}

impl ClockSample {
    /// How far this node's clock is ahead of the peer's, in ms (negative: behind), measured at
    /// the middle of the exchange.
    pub fn offset(&self) -> i64 {
        let middle = (i128::from(self.sent) + i128::from(self.received)) / 2;
        saturate(middle - i128::from(self.peer))
    }

    /// How wrong [`Self::offset`] may be: half the exchange's duration.
    pub fn uncertainty(&self) -> u64 {
        self.received.saturating_sub(self.sent) / 2
    }
}

fn saturate(x: i128) -> i64 {
    i64::try_from(x).unwrap_or(if x < 0 { i64::MIN } else { i64::MAX })
}

/// What readings of the swarm peers' clocks say about this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockVerdict {
    /// No peer answered: nothing to compare with.
    Unknown,
    /// Within `far_ms` of the peers; `offset` as [`ClockSample::offset`] of the median reading.
    Agrees {
        /// This node's clock minus the peers' median, ms.
        offset: i64,
    },
    /// Further than `far_ms` from the peers, beyond what the exchange's duration explains.
    Far {
        /// This node's clock minus the peers' median, ms.
        offset: i64,
    },
}

impl ClockVerdict {
    /// Whether the node must not serve.
    pub fn is_far(&self) -> bool {
        matches!(self, ClockVerdict::Far { .. })
    }

    /// The offset measured, if any.
    pub fn offset(&self) -> Option<i64> {
        match self {
            ClockVerdict::Unknown => None,
            ClockVerdict::Agrees { offset } | ClockVerdict::Far { offset } => Some(*offset),
        }
    }
}

/// Judges this node's clock against one reading per peer (storage §8.3): the median reading
/// (of an even number, the middle one nearer to agreement) decides, so a minority of peers
/// with wrong clocks neither makes a right clock look far nor a wrong one look right. The clock
/// is far when that reading's offset exceeds `far_ms` by more than its uncertainty.
pub fn judge(samples: &[ClockSample], far_ms: u64) -> ClockVerdict {
    let mut sorted: Vec<&ClockSample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.offset());
    let n = sorted.len();
    let median = match n {
        0 => return ClockVerdict::Unknown,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => {
            let (low, high) = (sorted[n / 2 - 1], sorted[n / 2]);
            if low.offset().unsigned_abs() <= high.offset().unsigned_abs() {
                low
            } else {
                high
            }
        }
    };
    let offset = median.offset();
    let limit = far_ms.saturating_add(median.uncertainty());
    if offset.unsigned_abs() > limit {
        ClockVerdict::Far { offset }
    } else {
        ClockVerdict::Agrees { offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(me: UnixMillis, peer: UnixMillis, rtt: u64) -> ClockSample {
        ClockSample {
            sent: me,
            peer,
            received: me + rtt,
        }
    }

    #[test]
    fn offsets_are_measured_at_the_middle_of_the_exchange() {
        let s = reading(1_000_000, 1_000_050, 100);
        assert_eq!(s.offset(), 0);
        assert_eq!(s.uncertainty(), 50);
        assert_eq!(reading(1_200_000, 1_000_000, 0).offset(), 200_000);
        assert_eq!(reading(1_000_000, 1_200_000, 0).offset(), -200_000);
        assert_eq!(reading(0, u64::MAX, 0).offset(), i64::MIN);
    }

    #[test]
    fn the_median_peer_decides() {
        let now = 1_700_000_000_000;
        assert_eq!(judge(&[], FAR_MS), ClockVerdict::Unknown);
        // One peer 200 s behind among agreeing ones: this clock agrees.
        let v = judge(
            &[
                reading(now, now - 200_000, 2),
                reading(now, now + 1, 2),
                reading(now, now + 2, 2),
            ],
            FAR_MS,
        );
        assert_eq!(v, ClockVerdict::Agrees { offset: 0 });
        // This clock 200 s ahead of every peer: far.
        let v = judge(
            &[
                reading(now, now - 200_000, 2),
                reading(now, now - 199_990, 2),
            ],
            FAR_MS,
        );
        assert!(v.is_far(), "{v:?}");
        // Two peers split: the one nearer to agreement decides.
        let v = judge(
            &[reading(now, now - 200_000, 2), reading(now, now + 3, 2)],
            FAR_MS,
        );
        assert!(!v.is_far(), "{v:?}");
        // The only peer disagrees: far, whichever is wrong.
        assert!(judge(&[reading(now, now + 6_000, 0)], FAR_MS).is_far());
    }

    #[test]
    fn a_slow_exchange_is_not_taken_for_a_far_clock() {
        let now = 1_700_000_000_000;
        // The answer reads 8 s past the request's time, but the exchange took 4 s: measured
        // at its middle that is 6 s, give or take 2 s, so possibly within the 5 s.
        assert!(!judge(&[reading(now, now + 8_000, 4_000)], FAR_MS).is_far());
        assert!(judge(&[reading(now, now + 8_000, 2_000)], FAR_MS).is_far());
    }
}
