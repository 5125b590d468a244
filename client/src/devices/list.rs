//! The device list (`whitepaper/devices.md` §3): the devices an account certifies now, signed by
//! the account key and published as record type 2 in the account's public namespace.
//!
//! ```text
//! list = 0x01 || A (32) || u64be(version) || u64be(issued_at) || u8(n) || n × cert (173)
//!             || Ed25519(account, "allium/v1/devices/list" || the above)
//! ```
//!
//! `1 ≤ n ≤ 8`, certificates in ascending `device_id`, no id and no signing key twice, each
//! certified by `A`. Senders encrypt only to the devices of the newest list they have seen, and
//! never go back to an older one.

use std::cmp::Ordering;
use std::fmt;

use super::{DeviceError, MAX_DEVICES, labels};
use crate::identity::{Address, Identity};
use crate::session::codec::Reader;
use crate::session::{CERT_LEN, DeviceCert, KEY_LEN, SIGNATURE_LEN, crypto};

/// Version byte of a device list.
pub const VERSION: u8 = 1;
/// Record type of a device list in the public namespace (next to bundles, type 1).
pub const RECORD_LIST: u8 = 2;
/// Bytes of a list before its certificates.
const HEAD_LEN: usize = 1 + KEY_LEN + 8 + 8 + 1;
/// Longest encoded list: eight certificates.
pub const MAX_LIST_LEN: usize = HEAD_LEN + MAX_DEVICES * CERT_LEN + SIGNATURE_LEN;

/// A verified device list.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceList {
    bytes: Vec<u8>,
    certs: Vec<DeviceCert>,
}

impl fmt::Debug for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceList")
            .field("version", &self.version())
            .field(
                "devices",
                &self
                    .certs
                    .iter()
                    .map(DeviceCert::device_id)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

impl DeviceList {
    /// Signs a list of `certs` (any order; sorted here) as `version`, issued at `issued_at`.
    /// Refuses an empty list, more than eight devices, a certificate of another account, and
    /// a device id or signing key twice.
    pub fn sign(
        account: &Identity,
        version: u64,
        issued_at: u64,
        certs: &[DeviceCert],
    ) -> Result<Self, DeviceError> {
        let mut certs = certs.to_vec();
        certs.sort_by_key(DeviceCert::device_id);
        check_certs(&account.public().to_bytes(), &certs)?;
        let mut bytes = Vec::with_capacity(HEAD_LEN + certs.len() * CERT_LEN + SIGNATURE_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(account.public().as_bytes());
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&issued_at.to_be_bytes());
        // At most MAX_DEVICES (8), checked above.
        bytes.push(u8::try_from(certs.len()).map_err(|_| DeviceError::TooManyDevices)?);
        for c in &certs {
            bytes.extend_from_slice(c.as_bytes());
        }
        let sig = account
            .keypair()
            .sign(&[labels::DEVICE_LIST, bytes.as_slice()].concat());
        bytes.extend_from_slice(&sig);
        Ok(DeviceList { bytes, certs })
    }

    /// Decodes a list and verifies it: the account key, every certificate, the rules on them,
    /// and the account's strict signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, DeviceError> {
        let mut r = Reader::new(bytes, "device list");
        r.version(VERSION)?;
        let account: [u8; KEY_LEN] = r.array()?;
        let _version = r.u64()?;
        let _issued_at = r.u64()?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_DEVICES {
            return Err(DeviceError::TooManyDevices);
        }
        let mut certs = Vec::with_capacity(n);
        for _ in 0..n {
            certs.push(DeviceCert::decode(r.take(CERT_LEN)?)?);
        }
        let sig: [u8; SIGNATURE_LEN] = r.array()?;
        r.finish()?;
        let ascending = certs
            .windows(2)
            .all(|w| w[0].device_id() < w[1].device_id());
        if !ascending {
            return Err(DeviceError::Malformed("device list (ids not ascending)"));
        }
        check_certs(&account, &certs)?;
        let key = Address::from_key_bytes(&account)
            .map_err(|_| DeviceError::Session(crate::session::SessionError::WeakKey))?
            .public_key();
        let signed = &bytes[..bytes.len() - SIGNATURE_LEN];
        key.verify(&[labels::DEVICE_LIST, signed].concat(), &sig)
            .map_err(|_| DeviceError::BadListSignature)?;
        Ok(DeviceList {
            bytes: bytes.to_vec(),
            certs,
        })
    }

    /// [`Self::decode`], and the list must be `account`'s.
    pub fn verify(bytes: &[u8], account: &Address) -> Result<Self, DeviceError> {
        let list = Self::decode(bytes)?;
        if !crypto::ct_eq(&list.account_key(), account.public_key().as_bytes()) {
            return Err(DeviceError::WrongAccount);
        }
        Ok(list)
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record published in the public namespace: `0x02 || list`.
    pub fn record(&self) -> Vec<u8> {
        [&[RECORD_LIST], self.bytes.as_slice()].concat()
    }

    /// The account's key.
    pub fn account_key(&self) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&self.bytes[1..1 + KEY_LEN]);
        k
    }

    /// The version: a later list has a larger one.
    pub fn version(&self) -> u64 {
        u64_at(&self.bytes, 1 + KEY_LEN)
    }

    /// When the account signed it (the primary's clock, Unix ms).
    pub fn issued_at(&self) -> u64 {
        u64_at(&self.bytes, 1 + KEY_LEN + 8)
    }

    /// The certificates, in ascending device id.
    pub fn certs(&self) -> &[DeviceCert] {
        &self.certs
    }

    /// Whether the device of this signing key is on the list.
    pub fn contains(&self, signing_key: &[u8; KEY_LEN]) -> bool {
        self.certs.iter().any(|c| &c.signing_key() == signing_key)
    }

    /// The certificate of a device on the list, by signing key.
    pub fn cert(&self, signing_key: &[u8; KEY_LEN]) -> Option<&DeviceCert> {
        self.certs.iter().find(|c| &c.signing_key() == signing_key)
    }

    /// The order in which lists replace each other: version, then issue time, then the bytes
    /// (two lists of one version come only from two primaries, after a restore; every reader
    /// picks the same one).
    pub fn newer_than(&self, other: &DeviceList) -> bool {
        let key = |l: &DeviceList| (l.version(), l.issued_at());
        match key(self).cmp(&key(other)) {
            Ordering::Equal => self.bytes > other.bytes,
            o => o == Ordering::Greater,
        }
    }
}

fn check_certs(account: &[u8; KEY_LEN], certs: &[DeviceCert]) -> Result<(), DeviceError> {
    if certs.is_empty() || certs.len() > MAX_DEVICES {
        return Err(DeviceError::TooManyDevices);
    }
    for (i, c) in certs.iter().enumerate() {
        if &c.account_key() != account {
            return Err(DeviceError::WrongAccount);
        }
        let repeated = certs[..i]
            .iter()
            .any(|o| o.device_id() == c.device_id() || o.signing_key() == c.signing_key());
        if repeated {
            return Err(DeviceError::Malformed("device list (a device twice)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::session::DeviceKeys;

    fn devices(account: &Identity, ids: &[u32]) -> Vec<DeviceCert> {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        ids.iter()
            .map(|&id| {
                DeviceKeys::generate(account, id, 1000 + u64::from(id), &mut rng)
                    .cert()
                    .clone()
            })
            .collect()
    }

    #[test]
    fn a_list_round_trips_sorted_and_verifies() {
        let account = Identity::from_seed(&[3; 32]);
        let certs = devices(&account, &[9, 2, 5]);
        let list = DeviceList::sign(&account, 7, 1234, &certs).unwrap();
        assert_eq!(
            list.certs()
                .iter()
                .map(DeviceCert::device_id)
                .collect::<Vec<_>>(),
            vec![2, 5, 9]
        );
        let back = DeviceList::verify(list.as_bytes(), &account.address()).unwrap();
        assert_eq!(back, list);
        assert_eq!((back.version(), back.issued_at()), (7, 1234));
        assert!(back.contains(&certs[0].signing_key()));
        assert_eq!(
            list.as_bytes().len(),
            HEAD_LEN + 3 * CERT_LEN + SIGNATURE_LEN
        );
        let other = Identity::from_seed(&[4; 32]);
        assert_eq!(
            DeviceList::verify(list.as_bytes(), &other.address()).err(),
            Some(DeviceError::WrongAccount)
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        let account = Identity::from_seed(&[3; 32]);
        let other = Identity::from_seed(&[4; 32]);
        let certs = devices(&account, &[1, 2]);
        assert_eq!(
            DeviceList::sign(&account, 1, 1, &[]).err(),
            Some(DeviceError::TooManyDevices)
        );
        assert_eq!(
            DeviceList::sign(
                &account,
                1,
                1,
                &devices(&account, &[1, 2, 3, 4, 5, 6, 7, 8, 9])
            )
            .err(),
            Some(DeviceError::TooManyDevices)
        );
        assert_eq!(
            DeviceList::sign(&account, 1, 1, &devices(&other, &[1])).err(),
            Some(DeviceError::WrongAccount)
        );
        let twice = [certs[0].clone(), certs[0].clone()];
        assert!(DeviceList::sign(&account, 1, 1, &twice).is_err());
        let list = DeviceList::sign(&account, 1, 1, &certs).unwrap();
        // A flipped bit anywhere fails: a certificate, a field, or the signature.
        for at in [0, 5, 40, 60, 200, list.as_bytes().len() - 1] {
            let mut b = list.as_bytes().to_vec();
            b[at] ^= 1;
            assert!(DeviceList::decode(&b).is_err(), "byte {at}");
        }
        // Certificates out of order, re-signed: refused as not canonical.
        let mut swapped = list.as_bytes()[..HEAD_LEN].to_vec();
        swapped.extend_from_slice(certs[1].as_bytes());
        swapped.extend_from_slice(certs[0].as_bytes());
        let sig = account
            .keypair()
            .sign(&[labels::DEVICE_LIST, swapped.as_slice()].concat());
        swapped.extend_from_slice(&sig);
        assert_eq!(
            DeviceList::decode(&swapped).err(),
            Some(DeviceError::Malformed("device list (ids not ascending)"))
        );
    }

    #[test]
    fn newer_lists_win_by_version_then_time_then_bytes() {
        let account = Identity::from_seed(&[3; 32]);
        let certs = devices(&account, &[1, 2]);
        let a = DeviceList::sign(&account, 2, 10, &certs[..1]).unwrap();
        let b = DeviceList::sign(&account, 3, 5, &certs[..1]).unwrap();
        let c = DeviceList::sign(&account, 3, 6, &certs[..1]).unwrap();
        let d = DeviceList::sign(&account, 3, 6, &certs).unwrap();
        assert!(b.newer_than(&a) && !a.newer_than(&b));
        assert!(c.newer_than(&b));
        assert!(c.newer_than(&d) != d.newer_than(&c));
        assert!(!c.newer_than(&c));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = DeviceList::decode(&bytes);
        }

        #[test]
        fn mutated_lists_never_panic(at in 0usize..600, bit in 0u8..8, cut in 0usize..600) {
            let account = Identity::from_seed(&[3; 32]);
            let list = DeviceList::sign(&account, 1, 1, &devices(&account, &[1, 2, 3])).unwrap();
            let mut b = list.as_bytes().to_vec();
            let at = at % b.len();
            b[at] ^= 1 << bit;
            b.truncate(b.len() - cut % b.len());
            prop_assert!(DeviceList::decode(&b).is_err());
        }
    }
}
