//! A node's onion keys across epochs: made ahead of time, used while accepted, deleted after.

use std::collections::BTreeMap;

use rand_core::CryptoRngCore;

use crate::epoch::{Epoch, EpochSchedule};
use crate::error::PeelError;
use crate::keys::OnionSecretKey;
use crate::packet::{Peeled, packet_epoch, peel};
use crate::replay::ReplayWindow;

/// The onion secret keys a node holds.
#[derive(Debug)]
pub struct OnionKeyRing {
    schedule: EpochSchedule,
    keys: BTreeMap<Epoch, OnionSecretKey>,
}

impl OnionKeyRing {
    /// An empty ring.
    pub fn new(schedule: EpochSchedule) -> Self {
        OnionKeyRing {
            schedule,
            keys: BTreeMap::new(),
        }
    }

    /// The schedule keys rotate on.
    pub fn schedule(&self) -> &EpochSchedule {
        &self.schedule
    }

    /// Adds a key (for example one loaded from disk). Keys the schedule no longer accepts at
    /// `now` are refused and returned.
    pub fn insert(&mut self, key: OnionSecretKey, now: u64) -> Result<(), OnionSecretKey> {
        if self.schedule.epoch_at(now) > key.epoch() && !self.schedule.accepts(key.epoch(), now) {
            return Err(key);
        }
        self.keys.insert(key.epoch(), key);
        Ok(())
    }

    /// Makes the keys that must exist at `now` (current and next epoch) and returns the epochs it
    /// made, so the caller can store and publish them.
    pub fn ensure(&mut self, now: u64, rng: &mut impl CryptoRngCore) -> Vec<Epoch> {
        let mut made = Vec::new();
        for epoch in self.schedule.epochs_to_publish(now) {
            self.keys.entry(epoch).or_insert_with(|| {
                made.push(epoch);
                OnionSecretKey::generate(epoch, rng)
            });
        }
        made
    }

    /// Deletes (and zeroizes) every key no longer accepted at `now`; returns their epochs so the
    /// caller can delete them from disk and drop their replay filters.
    pub fn prune(&mut self, now: u64) -> Vec<Epoch> {
        let expired: Vec<Epoch> = self
            .keys
            .keys()
            .copied()
            .filter(|&e| now >= self.schedule.delete_at(e))
            .collect();
        for e in &expired {
            self.keys.remove(e);
        }
        expired
    }

    /// The key for `epoch` if it is accepted at `now`.
    pub fn get(&self, epoch: Epoch, now: u64) -> Option<&OnionSecretKey> {
        self.keys
            .get(&epoch)
            .filter(|_| self.schedule.accepts(epoch, now))
    }

    /// All keys held, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &OnionSecretKey> {
        self.keys.values()
    }

    /// Peels `packet` at time `now` with the key its epoch names, checking `replay`.
    pub fn peel<'a>(
        &self,
        now: u64,
        packet: &'a mut [u8],
        replay: &mut ReplayWindow,
    ) -> Result<Peeled<'a>, PeelError> {
        let epoch = packet_epoch(packet)?;
        let key = self.get(epoch, now).ok_or(PeelError::UnknownEpoch(epoch))?;
        peel(key, packet, |e, tag| replay.check_and_insert(e, tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn keys_are_made_ahead_and_deleted_after_grace() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let s = EpochSchedule::new(100).unwrap();
        let mut ring = OnionKeyRing::new(s);
        let t0 = 100 * 50;
        assert_eq!(ring.ensure(t0, &mut rng), vec![Epoch(50), Epoch(51)]);
        assert!(ring.ensure(t0 + 10, &mut rng).is_empty());
        assert!(ring.get(Epoch(50), t0).is_some());
        assert!(ring.get(Epoch(51), t0).is_some());
        // One epoch later: 52 is made, 50 is still accepted as the previous epoch.
        assert_eq!(ring.ensure(t0 + 100, &mut rng), vec![Epoch(52)]);
        assert!(ring.prune(t0 + 100).is_empty());
        assert!(ring.get(Epoch(50), t0 + 199).is_some());
        // At the start of epoch 52, key 50 is deleted.
        assert_eq!(ring.prune(t0 + 200), vec![Epoch(50)]);
        assert!(ring.get(Epoch(50), t0 + 200).is_none());
        assert_eq!(ring.keys().count(), 2);
    }

    #[test]
    fn expired_keys_are_refused_on_insert() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let s = EpochSchedule::new(100).unwrap();
        let mut ring = OnionKeyRing::new(s);
        let old = OnionSecretKey::generate(Epoch(10), &mut rng);
        assert!(ring.insert(old, 100 * 12).is_err());
        let ok = OnionSecretKey::generate(Epoch(11), &mut rng);
        assert!(ring.insert(ok, 100 * 12).is_ok());
    }
}
