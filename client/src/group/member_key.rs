//! Member keys (`whitepaper/groups.md` §4): the hybrid X25519 + ML-KEM-768 key each member
//! device publishes in the group mailbox, signed under its account-certified device key, to
//! which admins wrap epoch keys.

use std::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::{GroupError, kind, labels, sign_device, verify_device};
use crate::session::codec::Reader;
use crate::session::crypto::{self, DhSecret, KemKeyPair};
use crate::session::{
    CERT_LEN, DeviceCert, DeviceKeys, KEM_EK_LEN, KEM_SEED_LEN, KEY_LEN, SIGNATURE_LEN, VERSION,
};

/// Length of an encoded [`MemberKey`].
pub const MEMBER_KEY_LEN: usize = 1 + KEY_LEN + CERT_LEN + 8 + KEY_LEN + KEM_EK_LEN + SIGNATURE_LEN;

const SIGNED_LEN: usize = MEMBER_KEY_LEN - SIGNATURE_LEN;
const X_AT: usize = 1 + KEY_LEN + CERT_LEN + 8;

/// A member device's published group key.
///
/// ```text
/// 0x02 || group (32) || device cert (173) || u64be(created_at) || X25519 key (32)
///      || ML-KEM-768 ek (1184) || Ed25519(device, "allium/v1/group/member-key" || the above)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct MemberKey {
    bytes: Box<[u8; MEMBER_KEY_LEN]>,
    cert: DeviceCert,
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberKey")
            .field("device", &self.cert)
            .field("created_at", &self.created_at())
            .finish_non_exhaustive()
    }
}

impl MemberKey {
    /// Decodes and checks a member key: the certificate (account signature), a valid X25519
    /// key, a valid encapsulation key, and the device's signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes, "member key");
        r.version(kind::MEMBER_KEY)?;
        let _group = r.take(KEY_LEN)?;
        let cert = DeviceCert::decode(r.take(CERT_LEN)?)?;
        let _created_at = r.u64()?;
        let x = r.array::<KEY_LEN>()?;
        let ek = r.take(KEM_EK_LEN)?;
        let sig = r.array::<SIGNATURE_LEN>()?;
        r.finish()?;
        crypto::check_x25519_public(&x)?;
        let mut ek_arr = [0u8; KEM_EK_LEN];
        ek_arr.copy_from_slice(ek);
        crypto::check_kem_ek(&ek_arr)?;
        verify_device(
            &cert.signing_key(),
            &[labels::MEMBER_KEY, &bytes[..SIGNED_LEN]],
            &sig,
        )?;
        let mut b = Box::new([0u8; MEMBER_KEY_LEN]);
        b.copy_from_slice(bytes);
        Ok(MemberKey { bytes: b, cert })
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The group it is for.
    pub fn group(&self) -> [u8; KEY_LEN] {
        let mut g = [0u8; KEY_LEN];
        g.copy_from_slice(&self.bytes[1..1 + KEY_LEN]);
        g
    }

    /// The device's certificate.
    pub fn cert(&self) -> &DeviceCert {
        &self.cert
    }

    /// When the device made it (its clock, Unix ms): the newest of a device wins.
    pub fn created_at(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[X_AT - 8..X_AT]);
        u64::from_be_bytes(b)
    }

    /// The X25519 public key.
    pub fn x25519(&self) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&self.bytes[X_AT..X_AT + KEY_LEN]);
        k
    }

    /// The ML-KEM-768 encapsulation key.
    pub fn ek(&self) -> &[u8; KEM_EK_LEN] {
        let at = X_AT + KEY_LEN;
        match <&[u8; KEM_EK_LEN]>::try_from(&self.bytes[at..at + KEM_EK_LEN]) {
            Ok(ek) => ek,
            // The slice has the length of the array by construction.
            Err(_) => &[0u8; KEM_EK_LEN],
        }
    }
}

/// Length of an encoded [`MemberSecret`].
pub const MEMBER_SECRET_LEN: usize = 1 + KEY_LEN + KEM_SEED_LEN + 8;

/// The secret halves of a member key, kept by the device.
///
/// Encoding (105 bytes): `0x01 || X25519 secret (32) || ML-KEM seed d || z (64) ||
/// u64be(created_at)`.
#[derive(Clone)]
pub struct MemberSecret {
    pub(crate) x: DhSecret,
    pub(crate) kem: KemKeyPair,
    created_at: u64,
}

impl fmt::Debug for MemberSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberSecret")
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl MemberSecret {
    /// A new member key: draws the X25519 secret (32 bytes), then the ML-KEM seed (64).
    pub fn generate(created_at: u64, rng: &mut impl CryptoRngCore) -> Self {
        let x = crypto::random_secret(rng);
        let kem = KemKeyPair::generate(rng);
        MemberSecret { x, kem, created_at }
    }

    /// The public member key for `group`, signed by `device`.
    pub fn public(
        &self,
        group: &[u8; KEY_LEN],
        device: &DeviceKeys,
    ) -> Result<MemberKey, GroupError> {
        let mut b = Vec::with_capacity(MEMBER_KEY_LEN);
        b.push(kind::MEMBER_KEY);
        b.extend_from_slice(group);
        b.extend_from_slice(device.cert().as_bytes());
        b.extend_from_slice(&self.created_at.to_be_bytes());
        b.extend_from_slice(&crypto::dh_public(&self.x));
        b.extend_from_slice(self.kem.ek());
        let sig = sign_device(device, &[labels::MEMBER_KEY, &b]);
        b.extend_from_slice(&sig);
        MemberKey::decode(&b)
    }

    /// When it was made.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The encoding, for the device's state. Wiped on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(MEMBER_SECRET_LEN));
        out.push(VERSION);
        out.extend_from_slice(self.x.as_ref());
        out.extend_from_slice(self.kem.seed());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes, "member secret");
        r.version(VERSION)?;
        let x = Zeroizing::new(r.array::<KEY_LEN>()?);
        let seed = Zeroizing::new(r.array::<KEM_SEED_LEN>()?);
        let created_at = r.u64()?;
        r.finish()?;
        Ok(MemberSecret {
            x,
            kem: KemKeyPair::from_seed(seed),
            created_at,
        })
    }
}

/// A device's member secrets for one group, oldest first, under the replacement rule of
/// `whitepaper/groups.md` §4.2: a device makes a new member key each time a new epoch reaches
/// it through its newest one (so at every membership change and every timed rekey), and erases
/// a secret once an epoch came through a newer one. A copy of the secrets taken at any time
/// therefore opens at most the rekeys up to the first one wrapped to a key made after it.
#[derive(Clone, Default)]
pub struct MemberSecrets {
    secrets: Vec<MemberSecret>,
}

impl fmt::Debug for MemberSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.secrets.iter().map(MemberSecret::created_at))
            .finish()
    }
}

impl MemberSecrets {
    /// The secrets kept, ordered by creation (as a device's file holds them).
    pub fn from_vec(mut secrets: Vec<MemberSecret>) -> Self {
        secrets.sort_by_key(MemberSecret::created_at);
        MemberSecrets { secrets }
    }

    /// The secrets held, oldest first.
    pub fn as_slice(&self) -> &[MemberSecret] {
        &self.secrets
    }

    /// The newest secret's creation time.
    pub fn newest(&self) -> Option<u64> {
        self.secrets.last().map(MemberSecret::created_at)
    }

    /// Makes a new member secret (created at `now`, or just after the newest held, so the new
    /// key is always the one admins pick) and returns its public key, signed by `device`, to
    /// store in the group mailbox. Draws as [`MemberSecret::generate`].
    pub fn replace(
        &mut self,
        group: &[u8; KEY_LEN],
        device: &DeviceKeys,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<MemberKey, GroupError> {
        let at = self.newest().map_or(now, |n| now.max(n.saturating_add(1)));
        let secret = MemberSecret::generate(at, rng);
        let key = secret.public(group, device)?;
        self.secrets.push(secret);
        Ok(key)
    }

    /// Opens a rekey with these secrets; the secrets older than the one that opened it are
    /// erased (an admin has seen the newer key, and every rekey before is opened or
    /// abandoned). Returns the epoch, and whether it came through the newest secret: then a
    /// replacement is due ([`Self::replace`]).
    pub fn open(
        &mut self,
        parts: &[super::RekeyPart],
        list: &super::MembershipList,
        device: &DeviceKeys,
    ) -> Result<(super::Epoch, bool), GroupError> {
        let (epoch, used) = super::Epoch::open_with(parts, list, device, &self.secrets)?;
        let at = self.secrets[used].created_at();
        Ok((epoch, self.retire_before(at)))
    }

    /// After an epoch reached this device through the secret created at `used` (opened, or
    /// made by this device as an admin wrapping to its own newest key): erases every older
    /// secret. Returns whether `used` is the newest.
    pub fn retire_before(&mut self, used: u64) -> bool {
        // Dropping a secret wipes it (its halves are zeroized on drop).
        self.secrets.retain(|s| s.created_at() >= used);
        self.newest() == Some(used)
    }

    /// Erases secrets other than the newest that are older than `max_age_ms` at `now`: every
    /// rekey wrapped to them has left the mailbox by then.
    pub fn expire(&mut self, now: u64, max_age_ms: u64) {
        let newest = self.newest();
        self.secrets.retain(|s| {
            Some(s.created_at()) == newest || s.created_at().saturating_add(max_age_ms) > now
        });
    }
}
