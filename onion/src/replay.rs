//! The replay filter: a Bloom filter per onion-key epoch.
//!
//! A node remembers the replay tag of every layer it peeled for as long as the onion key that
//! accepted it is valid. Memory is fixed when the filter is made: for a capacity of `n` tags and a
//! target false-positive rate `p`, the filter has `m = ceil(-n ln p / (ln 2)^2)` bits and
//! `k = round((m / n) ln 2)` probes (9.59 bits and 7 probes per tag for p = 1 %). There are no
//! false negatives: a replay is always caught. Past its capacity the filter keeps working and its
//! false-positive rate rises (`(1 - e^(-k·t/m))^k` after `t` tags); [`ReplayFilter::load`] reports
//! how full it is so operators can size it.
//!
//! Tags are PRF outputs of secret keys, so their bits are uniform and an attacker cannot aim at
//! particular bits: probes are taken from the tag itself (Kirsch–Mitzenmacher double hashing).

use std::collections::BTreeMap;

use crate::epoch::Epoch;
use crate::kdf::ReplayTag;

/// The false-positive rate filters are sized for.
pub const TARGET_FALSE_POSITIVE_RATE: f64 = 0.01;

/// Filters kept at once: one per accepted epoch (previous, current, next).
pub const MAX_EPOCHS: usize = 3;

/// A fixed-size Bloom filter of replay tags.
#[derive(Debug, Clone)]
pub struct ReplayFilter {
    bits: Vec<u64>,
    m: u64,
    k: u32,
    capacity: u64,
    inserted: u64,
}

impl ReplayFilter {
    /// A filter for `capacity` tags at [`TARGET_FALSE_POSITIVE_RATE`].
    pub fn with_capacity(capacity: u64) -> Self {
        Self::with_rate(capacity, TARGET_FALSE_POSITIVE_RATE)
    }

    /// A filter for `capacity` tags at false-positive rate `p` (clamped to `[1e-9, 0.5]`).
    pub fn with_rate(capacity: u64, p: f64) -> Self {
        let n = capacity.max(1) as f64;
        let p = p.clamp(1e-9, 0.5);
        let ln2 = std::f64::consts::LN_2;
        let m = (-n * p.ln() / (ln2 * ln2)).ceil().max(64.0) as u64;
        let k = ((m as f64 / n) * ln2).round().clamp(1.0, 32.0) as u32;
        ReplayFilter {
            bits: vec![0; m.div_ceil(64) as usize],
            m,
            k,
            capacity: capacity.max(1),
            inserted: 0,
        }
    }

    /// Bytes of memory the bit array takes.
    pub fn memory_bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// Number of probes per tag.
    pub fn probes(&self) -> u32 {
        self.k
    }

    /// Tags inserted divided by capacity; above 1.0 the false-positive rate exceeds its target.
    pub fn load(&self) -> f64 {
        self.inserted as f64 / self.capacity as f64
    }

    /// The false-positive rate expected at the current fill.
    pub fn expected_false_positive_rate(&self) -> f64 {
        let k = f64::from(self.k);
        (1.0 - (-k * self.inserted as f64 / self.m as f64).exp()).powf(k)
    }

    /// Records `tag`; returns `false` if it was (probably) seen before, `true` if it is new.
    pub fn check_and_insert(&mut self, tag: &ReplayTag) -> bool {
        let b = tag.as_bytes();
        let h1 = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let h2 = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]) | 1;
        let mut new = false;
        for i in 0..u64::from(self.k) {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % self.m;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if self.bits[word] & mask == 0 {
                new = true;
                self.bits[word] |= mask;
            }
        }
        if new {
            self.inserted += 1;
        }
        new
    }
}

/// Replay filters for the epochs a node accepts. At most [`MAX_EPOCHS`] filters exist at once,
/// so memory is bounded by three filters' size whatever arrives.
#[derive(Debug)]
pub struct ReplayWindow {
    capacity: u64,
    filters: BTreeMap<Epoch, ReplayFilter>,
    replays: u64,
}

impl ReplayWindow {
    /// Filters sized for `capacity` packets per epoch.
    pub fn new(capacity: u64) -> Self {
        ReplayWindow {
            capacity,
            filters: BTreeMap::new(),
            replays: 0,
        }
    }

    /// Records the tag of a layer peeled under `epoch`'s key; `false` means replay: drop it.
    ///
    /// A filter for a new epoch evicts the oldest when [`MAX_EPOCHS`] are held: by then the
    /// oldest epoch's key is no longer accepted, so its packets cannot be peeled anyway.
    pub fn check_and_insert(&mut self, epoch: Epoch, tag: &ReplayTag) -> bool {
        if !self.filters.contains_key(&epoch) {
            while self.filters.len() >= MAX_EPOCHS {
                self.filters.pop_first();
            }
            self.filters
                .insert(epoch, ReplayFilter::with_capacity(self.capacity));
        }
        let fresh = self
            .filters
            .get_mut(&epoch)
            .is_some_and(|f| f.check_and_insert(tag));
        if !fresh {
            self.replays += 1;
        }
        fresh
    }

    /// Forgets the filters of epochs for which `keep` is false (call when keys are deleted).
    pub fn retain(&mut self, mut keep: impl FnMut(Epoch) -> bool) {
        self.filters.retain(|e, _| keep(*e));
    }

    /// Replays refused so far.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// The filter of `epoch`, if one exists.
    pub fn filter(&self, epoch: Epoch) -> Option<&ReplayFilter> {
        self.filters.get(&epoch)
    }

    /// Memory of all filters held.
    pub fn memory_bytes(&self) -> usize {
        self.filters.values().map(ReplayFilter::memory_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    fn tag(rng: &mut ChaCha20Rng) -> ReplayTag {
        let mut t = [0u8; 32];
        rng.fill_bytes(&mut t);
        ReplayTag(t)
    }

    #[test]
    fn sized_as_stated() {
        let f = ReplayFilter::with_capacity(1_000_000);
        // 9.585 bits per tag at 1 %, 7 probes.
        assert_eq!(f.probes(), 7);
        assert!((1_198_000..=1_199_000).contains(&f.memory_bytes()));
    }

    #[test]
    fn every_replay_is_caught_and_false_positives_stay_under_target() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let n = 20_000;
        let mut f = ReplayFilter::with_capacity(n);
        let tags: Vec<_> = (0..n).map(|_| tag(&mut rng)).collect();
        let mut false_positives = 0;
        for t in &tags {
            if !f.check_and_insert(t) {
                false_positives += 1;
            }
        }
        for t in &tags {
            assert!(!f.check_and_insert(t), "a replay passed");
        }
        // Fresh tags probed against a full filter: the false-positive rate at capacity.
        let probes = 50_000;
        let fp = (0..probes)
            .filter(|_| !f.clone().check_and_insert(&tag(&mut rng)))
            .count();
        let rate = fp as f64 / probes as f64;
        assert!(rate < 0.013, "false-positive rate {rate}");
        assert!(false_positives < (n as usize) / 100);
    }

    #[test]
    fn window_holds_at_most_three_epochs() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let mut w = ReplayWindow::new(1000);
        let one = ReplayFilter::with_capacity(1000).memory_bytes();
        for e in 0..10 {
            assert!(w.check_and_insert(Epoch(e), &tag(&mut rng)));
            assert!(w.memory_bytes() <= MAX_EPOCHS * one);
        }
        assert!(w.filter(Epoch(6)).is_none());
        assert!(w.filter(Epoch(9)).is_some());
        let t = tag(&mut rng);
        assert!(w.check_and_insert(Epoch(9), &t));
        assert!(!w.check_and_insert(Epoch(9), &t));
        // The same tag under another epoch's key is another layer.
        assert!(w.check_and_insert(Epoch(8), &t));
        assert_eq!(w.replays(), 1);
        w.retain(|e| e == Epoch(9));
        assert!(w.filter(Epoch(8)).is_none());
    }
}
