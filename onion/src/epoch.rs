//! Onion key epochs: which epoch a time falls in, which epochs a node accepts, and when a key
//! must be deleted.
//!
//! Time is always a parameter (seconds since the Unix epoch); nothing here reads a clock.

use std::fmt;

/// An onion-key epoch number: `floor(unix_seconds / epoch_length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u32);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Epoch {
    /// The following epoch (saturating).
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }

    /// The preceding epoch (saturating).
    pub fn prev(self) -> Epoch {
        Epoch(self.0.saturating_sub(1))
    }
}

/// The rotation schedule of onion keys.
///
/// During epoch `e` a node accepts packets for `e - 1`, `e` and `e + 1`, so that clocks and rosters
/// may be up to one epoch apart. The key of epoch `e` is therefore first used at the start of
/// `e - 1` and must be deleted at the start of `e + 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSchedule {
    length_secs: u64,
}

/// The default epoch length: one hour.
pub const DEFAULT_EPOCH_SECS: u64 = 3600;

impl Default for EpochSchedule {
    fn default() -> Self {
        EpochSchedule {
            length_secs: DEFAULT_EPOCH_SECS,
        }
    }
}

impl EpochSchedule {
    /// A schedule with epochs of `length_secs` seconds; `None` for zero.
    pub fn new(length_secs: u64) -> Option<Self> {
        (length_secs > 0).then_some(EpochSchedule { length_secs })
    }

    /// Epoch length in seconds.
    pub fn length_secs(&self) -> u64 {
        self.length_secs
    }

    /// The epoch that contains `unix_secs`.
    pub fn epoch_at(&self, unix_secs: u64) -> Epoch {
        Epoch(u32::try_from(unix_secs / self.length_secs).unwrap_or(u32::MAX))
    }

    /// First second of `epoch`.
    pub fn start_of(&self, epoch: Epoch) -> u64 {
        u64::from(epoch.0).saturating_mul(self.length_secs)
    }

    /// Whether a node accepts packets for `epoch` at `unix_secs`: the current epoch and its two
    /// neighbours.
    pub fn accepts(&self, epoch: Epoch, unix_secs: u64) -> bool {
        let now = self.epoch_at(unix_secs);
        epoch >= now.prev() && epoch <= now.next()
    }

    /// The second from which the key of `epoch` is no longer accepted and must be deleted.
    pub fn delete_at(&self, epoch: Epoch) -> u64 {
        self.start_of(epoch.next().next())
    }

    /// Epochs whose keys a node must hold (and publish) at `unix_secs`: the current one and the
    /// next. The previous epoch's key is kept, but no longer published, until [`Self::delete_at`].
    pub fn epochs_to_publish(&self, unix_secs: u64) -> [Epoch; 2] {
        let now = self.epoch_at(unix_secs);
        [now, now.next()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_window_is_previous_current_next() {
        let s = EpochSchedule::new(3600).unwrap();
        let t = 3600 * 100 + 17;
        assert_eq!(s.epoch_at(t), Epoch(100));
        assert!(s.accepts(Epoch(99), t));
        assert!(s.accepts(Epoch(100), t));
        assert!(s.accepts(Epoch(101), t));
        assert!(!s.accepts(Epoch(98), t));
        assert!(!s.accepts(Epoch(102), t));
    }

    #[test]
    fn key_is_deleted_exactly_when_no_longer_accepted() {
        let s = EpochSchedule::new(60).unwrap();
        let e = Epoch(1000);
        let d = s.delete_at(e);
        assert!(s.accepts(e, d - 1));
        assert!(!s.accepts(e, d));
        // First accepted one epoch before it starts.
        assert!(s.accepts(e, s.start_of(e) - 60));
        assert!(!s.accepts(e, s.start_of(e) - 61));
    }

    #[test]
    fn zero_length_is_refused() {
        assert!(EpochSchedule::new(0).is_none());
    }
}
