//! The replay filter: Bloom filters per onion-key epoch, in generations.
//!
//! A node remembers the replay tag of every layer it peeled for as long as the onion key that
//! accepted it is valid. A filter's memory is fixed when it is made: for a capacity of `n` tags
//! and a false-positive rate `p`, it has `m = ceil(-n ln p / (ln 2)^2)` bits and
//! `k = round((m / n) ln 2)` probes. There are no false negatives: a replay is always caught.
//!
//! An attacker can insert tags at the rate the node peels (each costs it one X25519), so one
//! fixed filter filled past its capacity would refuse honest packets as replays. Instead, each
//! epoch's filters grow in generations (Almeida et al., "Scalable Bloom Filters", 2007): the
//! first holds the design load at half the target rate; when a generation is full, a new one of
//! twice the capacity at half the rate takes the inserts while the older ones are still looked
//! up. The rates sum to less than the target however many generations there are, so honest
//! traffic sees at most [`TARGET_FALSE_POSITIVE_RATE`]. Generations stop at a ceiling of tags
//! per epoch, sized by the node from what it can peel in a key's lifetime, so memory stays
//! bounded; past it the newest generation keeps filling and reports saturation.
//!
//! Tags are PRF outputs of secret keys, so their bits are uniform and an attacker cannot aim at
//! particular bits: probes are taken from the tag itself (Kirsch–Mitzenmacher double hashing).

use std::collections::BTreeMap;

use crate::epoch::Epoch;
use crate::kdf::ReplayTag;

/// The false-positive rate honest traffic meets, over all generations of an epoch's filters.
pub const TARGET_FALSE_POSITIVE_RATE: f64 = 0.01;

/// The rate of an epoch's first generation; each later one has half its predecessor's, so the
/// rates of all sum to less than [`TARGET_FALSE_POSITIVE_RATE`].
const FIRST_RATE: f64 = TARGET_FALSE_POSITIVE_RATE / 2.0;

/// Filters kept at once: one per accepted epoch (previous, current, next).
pub const MAX_EPOCHS: usize = 3;

/// A fixed-size Bloom filter of replay tags.
#[derive(Debug, Clone)]
pub struct ReplayFilter {
    bits: Vec<u64>,
    m: u64,
    k: u32,
    capacity: u64,
    rate: f64,
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
        let m = bits_for(capacity, p);
        let k = ((m as f64 / n) * std::f64::consts::LN_2)
            .round()
            .clamp(1.0, 32.0) as u32;
        ReplayFilter {
            bits: vec![0; m.div_ceil(64) as usize],
            m,
            k,
            capacity: capacity.max(1),
            rate: p,
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

    /// The bits `tag` probes: (word, mask) pairs.
    fn probes_of(&self, tag: &ReplayTag) -> impl Iterator<Item = (usize, u64)> + use<> {
        let b = tag.as_bytes();
        let h1 = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let h2 = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]) | 1;
        let m = self.m;
        (0..u64::from(self.k)).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    /// Whether `tag` was (probably) recorded, without recording it.
    pub fn contains(&self, tag: &ReplayTag) -> bool {
        self.probes_of(tag)
            .all(|(word, mask)| self.bits[word] & mask != 0)
    }

    /// Records `tag`; returns `false` if it was (probably) seen before, `true` if it is new.
    pub fn check_and_insert(&mut self, tag: &ReplayTag) -> bool {
        let mut new = false;
        for (word, mask) in self.probes_of(tag) {
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

/// Bits of a filter for `capacity` tags at rate `p`, as [`ReplayFilter::with_rate`] makes it.
fn bits_for(capacity: u64, p: f64) -> u64 {
    let n = capacity.max(1) as f64;
    let ln2 = std::f64::consts::LN_2;
    (-n * p.clamp(1e-9, 0.5).ln() / (ln2 * ln2))
        .ceil()
        .max(64.0) as u64
}

/// The filters of one epoch: generation 0 first, inserts going to the last.
#[derive(Debug, Clone)]
struct Generations {
    filters: Vec<ReplayFilter>,
    /// Tags inserted in all generations.
    inserted: u64,
    /// No generation may be added: the newest is filling past its capacity.
    saturated: bool,
}

/// What recording one tag did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The tag was new: peel on. `false` means replay: drop the layer.
    pub fresh: bool,
    /// The newest generation reached its capacity and a new one was added (the count of
    /// generations of the epoch, from then on). Log and count it.
    pub rolled: Option<usize>,
    /// The newest generation reached its capacity and no generation could be added (the
    /// ceiling of tags per epoch is reached): from now on the false-positive rate rises.
    pub saturated: bool,
}

/// Replay filters for the epochs a node accepts. At most [`MAX_EPOCHS`] epochs are held at once,
/// each in generations whose total capacity stops at a ceiling, so memory is bounded whatever
/// arrives.
#[derive(Debug)]
pub struct ReplayWindow {
    capacity: u64,
    max_tags: u64,
    filters: BTreeMap<Epoch, Generations>,
    replays: u64,
}

impl ReplayWindow {
    /// Filters whose first generation holds `capacity` packets per epoch, growing up to 63 times
    /// that (six generations).
    pub fn new(capacity: u64) -> Self {
        Self::with_ceiling(capacity, capacity.saturating_mul(63))
    }

    /// Filters whose first generation holds `capacity` packets per epoch, adding generations
    /// while their total capacity stays within `max_tags` (at least the first is made).
    pub fn with_ceiling(capacity: u64, max_tags: u64) -> Self {
        ReplayWindow {
            capacity: capacity.max(1),
            max_tags,
            filters: BTreeMap::new(),
            replays: 0,
        }
    }

    /// Memory the filters of one epoch take at the ceiling, bytes: what a node must be able to
    /// spare for each of the [`MAX_EPOCHS`] epochs.
    pub fn ceiling_bytes(&self) -> u64 {
        let (mut total, mut bytes, mut n, mut p) = (0u64, 0u64, self.capacity, FIRST_RATE);
        loop {
            bytes += bits_for(n, p).div_ceil(64) * 8;
            total = total.saturating_add(n);
            n = n.saturating_mul(2);
            p /= 2.0;
            if total.saturating_add(n) > self.max_tags {
                return bytes;
            }
        }
    }

    /// Records the tag of a layer peeled under `epoch`'s key; `false` means replay: drop it.
    pub fn check_and_insert(&mut self, epoch: Epoch, tag: &ReplayTag) -> bool {
        self.record(epoch, tag).fresh
    }

    /// Records the tag of a layer peeled under `epoch`'s key, saying whether it was fresh and
    /// whether the epoch's filters grew.
    ///
    /// A filter for a new epoch evicts the oldest when [`MAX_EPOCHS`] are held: by then the
    /// oldest epoch's key is no longer accepted, so its packets cannot be peeled anyway.
    pub fn record(&mut self, epoch: Epoch, tag: &ReplayTag) -> Recorded {
        if !self.filters.contains_key(&epoch) {
            while self.filters.len() >= MAX_EPOCHS {
                self.filters.pop_first();
            }
            self.filters.insert(
                epoch,
                Generations {
                    filters: vec![ReplayFilter::with_rate(self.capacity, FIRST_RATE)],
                    inserted: 0,
                    saturated: false,
                },
            );
        }
        let mut out = Recorded {
            fresh: false,
            rolled: None,
            saturated: false,
        };
        let max_tags = self.max_tags;
        let Some(g) = self.filters.get_mut(&epoch) else {
            return out;
        };
        let (newest, older) = match g.filters.split_last_mut() {
            Some(split) => split,
            None => return out,
        };
        if older.iter().any(|f| f.contains(tag)) || !newest.check_and_insert(tag) {
            self.replays += 1;
            return out;
        }
        out.fresh = true;
        g.inserted += 1;
        if newest.load() >= 1.0 && !g.saturated {
            let total: u64 = g.filters.iter().map(|f| f.capacity).sum();
            let last = &g.filters[g.filters.len() - 1];
            let (n, p) = (last.capacity.saturating_mul(2), last.rate / 2.0);
            if total.saturating_add(n) <= max_tags {
                g.filters.push(ReplayFilter::with_rate(n, p));
                out.rolled = Some(g.filters.len());
            } else {
                g.saturated = true;
                out.saturated = true;
            }
        }
        out
    }

    /// Forgets the filters of epochs for which `keep` is false (call when keys are deleted).
    pub fn retain(&mut self, mut keep: impl FnMut(Epoch) -> bool) {
        self.filters.retain(|e, _| keep(*e));
    }

    /// Replays refused so far.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Tags recorded under `epoch` as a share of the design load (the first generation's
    /// capacity); above 1.0 the epoch has more than one generation.
    pub fn load(&self, epoch: Epoch) -> Option<f64> {
        let g = self.filters.get(&epoch)?;
        Some(g.inserted as f64 / self.capacity as f64)
    }

    /// Generations of `epoch`'s filters, if it has any.
    pub fn generations(&self, epoch: Epoch) -> Option<usize> {
        self.filters.get(&epoch).map(|g| g.filters.len())
    }

    /// The false-positive rate a fresh tag of `epoch` meets now: that of any generation
    /// claiming it.
    pub fn expected_false_positive_rate(&self, epoch: Epoch) -> f64 {
        self.filters.get(&epoch).map_or(0.0, |g| {
            1.0 - g
                .filters
                .iter()
                .map(|f| 1.0 - f.expected_false_positive_rate())
                .product::<f64>()
        })
    }

    /// Memory of all filters held.
    pub fn memory_bytes(&self) -> usize {
        self.filters
            .values()
            .flat_map(|g| &g.filters)
            .map(ReplayFilter::memory_bytes)
            .sum()
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
        let one = ReplayFilter::with_rate(1000, FIRST_RATE).memory_bytes();
        for e in 0..10 {
            assert!(w.check_and_insert(Epoch(e), &tag(&mut rng)));
            assert!(w.memory_bytes() <= MAX_EPOCHS * one);
        }
        assert!(w.generations(Epoch(6)).is_none());
        assert_eq!(w.generations(Epoch(9)), Some(1));
        let t = tag(&mut rng);
        assert!(w.check_and_insert(Epoch(9), &t));
        assert!(!w.check_and_insert(Epoch(9), &t));
        // The same tag under another epoch's key is another layer.
        assert!(w.check_and_insert(Epoch(8), &t));
        assert_eq!(w.replays(), 1);
        w.retain(|e| e == Epoch(9));
        assert!(w.generations(Epoch(8)).is_none());
    }

    /// An attacker pays one X25519 per tag it makes a node record. Ten times the design load
    /// used to make one fixed filter refuse nearly every honest packet; generations keep the
    /// honest false-positive rate under the target.
    #[test]
    #[allow(clippy::print_stdout)] // the figures before and after, for the record
    fn ten_times_the_design_load_does_not_make_honest_packets_replays() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let n = 10_000;
        let mut fixed = ReplayFilter::with_capacity(n);
        let mut window = ReplayWindow::new(n);
        let junk: Vec<_> = (0..10 * n).map(|_| tag(&mut rng)).collect();
        let mut rolls = Vec::new();
        for t in &junk {
            fixed.check_and_insert(t);
            let r = window.record(Epoch(1), t);
            rolls.extend(r.rolled);
            assert!(!r.saturated);
        }
        let honest: Vec<_> = (0..200).map(|_| tag(&mut rng)).collect();
        let dropped_fixed = honest.iter().filter(|t| !fixed.check_and_insert(t)).count();
        let dropped_now = honest
            .iter()
            .filter(|t| !window.check_and_insert(Epoch(1), t))
            .count();
        println!(
            "after {} junk tags (10x the design load): honest packets dropped as replays: \
             one fixed filter {dropped_fixed}/200, generations {dropped_now}/200 \
             ({} generations, {} KiB, expected false-positive rate {:.4})",
            junk.len(),
            window.generations(Epoch(1)).unwrap(),
            window.memory_bytes() / 1024,
            window.expected_false_positive_rate(Epoch(1)),
        );
        assert!(dropped_fixed > 190, "the fixed filter was not saturated");
        assert!(dropped_now <= 4, "{dropped_now} honest packets dropped");
        assert_eq!(rolls, vec![2, 3, 4], "one roll per full generation");
        assert!(window.expected_false_positive_rate(Epoch(1)) < TARGET_FALSE_POSITIVE_RATE);
        // No replay gets through, whichever generation holds it.
        assert!(junk.iter().all(|t| !window.check_and_insert(Epoch(1), t)));
        assert!(honest.iter().all(|t| !window.check_and_insert(Epoch(1), t)));
        // An empirical rate over fresh tags, below the target.
        let probes = 20_000;
        let fp = (0..probes)
            .filter(|_| !window.check_and_insert(Epoch(1), &tag(&mut rng)))
            .count();
        assert!(
            (fp as f64) < probes as f64 * TARGET_FALSE_POSITIVE_RATE,
            "{fp} of {probes}"
        );
    }

    #[test]
    fn generations_stop_at_the_ceiling_and_memory_with_them() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        // Room for generations of 100, 200 and 400 tags, not for one of 800 more.
        let mut w = ReplayWindow::with_ceiling(100, 1000);
        let mut saturated = 0;
        for _ in 0..2000 {
            let r = w.record(Epoch(3), &tag(&mut rng));
            saturated += usize::from(r.saturated);
        }
        assert_eq!(w.generations(Epoch(3)), Some(3));
        assert_eq!(saturated, 1, "saturation is reported once");
        assert_eq!(w.memory_bytes() as u64, w.ceiling_bytes());
        // Past the ceiling it keeps recording, with a rising false-positive rate.
        assert!(w.load(Epoch(3)).unwrap() > 7.0);
        assert!(w.expected_false_positive_rate(Epoch(3)) > TARGET_FALSE_POSITIVE_RATE);
    }
}
