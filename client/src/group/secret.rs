//! The group's own identity (`whitepaper/groups.md` §2): a 32-byte seed whose Ed25519 key names
//! the group mailbox and authorises reading it, and from which the key sealing every stored item
//! is derived.

use std::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::{GroupError, MAX_ITEM_LEN, kind, labels, malformed};
use crate::identity::Identity;
use crate::session::KEY_LEN;
use crate::session::codec::Reader;
use crate::session::crypto::{self, Secret};

/// Version byte of the sealed layer.
const SEALED_VERSION: u8 = 1;

/// Bytes the sealed layer adds to an item: version, nonce, tag.
pub const ITEM_OVERHEAD: usize = 1 + 12 + 16;

/// The largest item inside the sealed layer.
pub const MAX_INNER_LEN: usize = MAX_ITEM_LEN - ITEM_OVERHEAD;

/// The group's seed, shared with every member: the mailbox identity and the item key.
pub struct GroupSecret {
    seed: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
    item_key: Secret,
}

impl fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSecret")
            .field("group", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl Clone for GroupSecret {
    fn clone(&self) -> Self {
        GroupSecret {
            seed: self.seed.clone(),
            public: self.public,
            item_key: self.item_key.clone(),
        }
    }
}

impl GroupSecret {
    /// A new group: draws the 32-byte seed.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Result<Self, GroupError> {
        Self::from_seed(&crypto::random_secret(rng))
    }

    /// The group of `seed`.
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Result<Self, GroupError> {
        let public = *Identity::from_seed(seed).public().as_bytes();
        let item_key = crypto::hkdf::<KEY_LEN>(&[0u8; KEY_LEN], &[seed], labels::MAILBOX_KEY)?;
        Ok(GroupSecret {
            seed: Zeroizing::new(*seed),
            public,
            item_key,
        })
    }

    /// The seed, for the state file and for invitations. Wiped on drop.
    pub fn seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.seed.clone()
    }

    /// The mailbox identity (signs the group mailbox's retrieve requests).
    pub fn identity(&self) -> Identity {
        Identity::from_seed(&self.seed)
    }

    /// The group's Ed25519 public key: its name and its mailbox.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// Seals an item for the mailbox: `0x01 || nonce (12) || AES-256-GCM(item key, nonce,
    /// "…/item" || group, item)`. Draws the nonce.
    pub fn seal_item(
        &self,
        item: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, GroupError> {
        if item.len() > MAX_INNER_LEN {
            return Err(GroupError::TooLarge);
        }
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let sealed = crypto::aead_seal(&self.item_key, &nonce, &self.item_ad(), item)?;
        let mut out = Vec::with_capacity(ITEM_OVERHEAD + item.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens [`Self::seal_item`] and returns the item's kind and the item.
    pub fn open_item(&self, bytes: &[u8]) -> Result<(u8, Zeroizing<Vec<u8>>), GroupError> {
        if bytes.len() > MAX_ITEM_LEN {
            return Err(malformed("group item (too long)"));
        }
        let mut r = Reader::new(bytes, "group item");
        r.version(SEALED_VERSION)?;
        let nonce = r.array::<12>()?;
        let item = crypto::aead_open(&self.item_key, &nonce, &self.item_ad(), r.rest())
            .map_err(|_| GroupError::Decrypt)?;
        match item.first().copied() {
            Some(k @ (kind::LIST | kind::MEMBER_KEY | kind::REKEY | kind::MESSAGE)) => {
                Ok((k, item))
            }
            Some(k) => Err(GroupError::UnknownKind(k)),
            None => Err(malformed("group item (empty)")),
        }
    }

    fn item_ad(&self) -> Vec<u8> {
        [labels::ITEM, &self.public].concat()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn group() -> GroupSecret {
        GroupSecret::from_seed(&[9; 32]).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn items_round_trip_and_are_bound_to_the_group() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let g = group();
        let sealed = g
            .seal_item(&[kind::MESSAGE, 1, 2, 3], &mut rng)
            .unwrap_or_default();
        assert_eq!(sealed.len(), 4 + ITEM_OVERHEAD);
        let (k, item) = g.open_item(&sealed).unwrap_or_else(|_| unreachable!());
        assert_eq!((k, item.as_slice()), (kind::MESSAGE, &[4u8, 1, 2, 3][..]));
        let other = GroupSecret::from_seed(&[8; 32]).unwrap_or_else(|_| unreachable!());
        assert_eq!(other.open_item(&sealed).err(), Some(GroupError::Decrypt));
        let unknown = g.seal_item(&[0x77], &mut rng).unwrap_or_default();
        assert_eq!(
            g.open_item(&unknown).err(),
            Some(GroupError::UnknownKind(0x77))
        );
        assert_eq!(
            g.seal_item(&vec![0; MAX_INNER_LEN + 1], &mut rng).err(),
            Some(GroupError::TooLarge)
        );
        assert!(!format!("{g:?}").contains(&hex::encode([9u8; 32])));
    }

    proptest! {
        #[test]
        fn open_item_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = group().open_item(&bytes);
        }
    }
}
