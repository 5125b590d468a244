//! Devices and their prekeys (`whitepaper/sessions.md` §2–§3): the device certificate signed by
//! the account, the prekey bundle signed by the device, and the secret halves a device keeps.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::codec::Reader;
use super::crypto::{self, DhSecret, KemKeyPair};
use super::{
    KEM_EK_LEN, KEM_SEED_LEN, KEY_LEN, LIVE_PREKEYS, MAX_MAILBOX_TTL_MS, MAX_PREKEY_SETS,
    SIGNATURE_LEN, SessionError, VERSION, labels,
};
use crate::identity::{Address, Identity};

/// Length of an encoded [`DeviceCert`].
pub const CERT_LEN: usize = 1 + 3 * KEY_LEN + 4 + 8 + SIGNATURE_LEN;

/// Length of an encoded [`PrekeyBundle`].
pub const BUNDLE_LEN: usize = 1 + CERT_LEN + 4 + KEY_LEN + 4 + KEM_EK_LEN + 8 + 8 + SIGNATURE_LEN;

const CERT_SIGNED_LEN: usize = CERT_LEN - SIGNATURE_LEN;
const BUNDLE_SIGNED_LEN: usize = BUNDLE_LEN - SIGNATURE_LEN;

/// An Ed25519 public key that is canonical and not of small order, as addresses require.
pub fn check_ed25519(bytes: &[u8; KEY_LEN]) -> Result<VerifyingKey, SessionError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| SessionError::WeakKey)?;
    if key.is_weak() || key.to_edwards().compress().to_bytes() != *bytes {
        return Err(SessionError::WeakKey);
    }
    Ok(key)
}

fn verify(key: &VerifyingKey, message: &[&[u8]], sig: &[u8; SIGNATURE_LEN]) -> bool {
    let m: Vec<u8> = message.concat();
    key.verify_strict(&m, &Signature::from_bytes(sig)).is_ok()
}

/// Certificates that passed [`DeviceCert::decode`]'s checks in this process, by their bytes.
/// Every envelope from a device carries the same certificate, and its checks (two key
/// validations, one of them an X25519, and an Ed25519 verification: about half of opening a
/// session message) give the same answer for the same bytes, so a pass is remembered. Only
/// passes are: a refused certificate is checked again every time.
mod verified {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};

    use super::CERT_LEN;

    /// Enough for every device a client talks to; past it the set starts again.
    const MAX: usize = 4096;

    static PASSED: Mutex<Option<HashSet<[u8; CERT_LEN]>>> = Mutex::new(None);

    pub(super) fn passed(bytes: &[u8; CERT_LEN]) -> bool {
        PASSED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|set| set.contains(bytes))
    }

    pub(super) fn remember(bytes: &[u8; CERT_LEN]) {
        let mut guard = PASSED.lock().unwrap_or_else(PoisonError::into_inner);
        let set = guard.get_or_insert_with(HashSet::new);
        if set.len() >= MAX {
            set.clear();
        }
        set.insert(*bytes);
    }
}

/// A device certificate: the account's signature over a device's two public keys.
///
/// ```text
/// 0x01 || account (32) || signing key (32) || identity key X25519 (32) || u32be(device_id)
///      || u64be(created_at) || Ed25519(account, "allium/v1/session/device-cert" || the above)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCert {
    bytes: [u8; CERT_LEN],
}

impl fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCert")
            .field("account", &self.account())
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

impl DeviceCert {
    fn sign(
        account: &Identity,
        signing: &[u8; KEY_LEN],
        ik: &[u8; KEY_LEN],
        id: u32,
        at: u64,
    ) -> Self {
        let mut bytes = [0u8; CERT_LEN];
        bytes[0] = VERSION;
        bytes[1..33].copy_from_slice(account.public().as_bytes());
        bytes[33..65].copy_from_slice(signing);
        bytes[65..97].copy_from_slice(ik);
        bytes[97..101].copy_from_slice(&id.to_be_bytes());
        bytes[101..109].copy_from_slice(&at.to_be_bytes());
        let sig = account
            .keypair()
            .sign(&[labels::DEVICE_CERT, &bytes[..CERT_SIGNED_LEN]].concat());
        bytes[CERT_SIGNED_LEN..].copy_from_slice(&sig);
        DeviceCert { bytes }
    }

    /// The account certifies a device of other keys (a device being linked, which keeps its
    /// secrets to itself): checks both keys as [`Self::decode`] does, then signs.
    pub fn issue(
        account: &Identity,
        signing: &[u8; KEY_LEN],
        ik: &[u8; KEY_LEN],
        id: u32,
        at: u64,
    ) -> Result<Self, SessionError> {
        check_ed25519(signing)?;
        crypto::check_x25519_public(ik)?;
        Ok(Self::sign(account, signing, ik, id, at))
    }

    /// Decodes and verifies a certificate: version, canonical non-weak keys, and the account's
    /// strict signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let mut r = Reader::new(bytes, "device certificate");
        r.version(VERSION)?;
        let rest = r.take(CERT_LEN - 1)?;
        r.finish()?;
        let mut cert = DeviceCert {
            bytes: [0u8; CERT_LEN],
        };
        cert.bytes[0] = VERSION;
        cert.bytes[1..].copy_from_slice(rest);
        if verified::passed(&cert.bytes) {
            return Ok(cert);
        }
        let account = Address::from_key_bytes(&cert.account_key())
            .map_err(|_| SessionError::WeakKey)?
            .public_key();
        check_ed25519(&cert.signing_key())?;
        crypto::check_x25519_public(&cert.identity_key())?;
        let message = [labels::DEVICE_CERT, &cert.bytes[..CERT_SIGNED_LEN]].concat();
        account
            .verify(&message, &cert.bytes[CERT_SIGNED_LEN..])
            .map_err(|_| SessionError::BadCertSignature)?;
        verified::remember(&cert.bytes);
        Ok(cert)
    }

    /// The 173-byte encoding.
    pub fn as_bytes(&self) -> &[u8; CERT_LEN] {
        &self.bytes
    }

    fn field(&self, at: usize) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&self.bytes[at..at + KEY_LEN]);
        k
    }

    /// The account's Ed25519 public key.
    pub fn account_key(&self) -> [u8; KEY_LEN] {
        self.field(1)
    }

    /// The account's address.
    pub fn account(&self) -> Option<Address> {
        Address::from_key_bytes(&self.account_key()).ok()
    }

    /// The device's Ed25519 signing key (signs its prekey bundles).
    pub fn signing_key(&self) -> [u8; KEY_LEN] {
        self.field(33)
    }

    /// The device's X25519 identity key `IK`.
    pub fn identity_key(&self) -> [u8; KEY_LEN] {
        self.field(65)
    }

    /// The device id the account gave it.
    pub fn device_id(&self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[97..101]);
        u32::from_be_bytes(b)
    }

    /// When the account certified it (Unix ms, the account's claim).
    pub fn created_at(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[101..109]);
        u64::from_be_bytes(b)
    }
}

/// A device's secrets: its signing key, its X25519 identity key, and its certificate.
///
/// Encoding (238 bytes): `0x01 || signing seed (32) || identity secret (32) || cert (173)`.
#[derive(Clone)]
pub struct DeviceKeys {
    signing: SigningKey,
    identity: DhSecret,
    cert: DeviceCert,
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// Length of an encoded [`DeviceKeys`].
pub const DEVICE_KEYS_LEN: usize = 1 + 2 * KEY_LEN + CERT_LEN;

/// The two secrets of a device that has no certificate yet: a device being linked makes them,
/// sends their public halves to the account's primary device, and becomes [`DeviceKeys`] once
/// the certificate comes back.
#[derive(Clone)]
pub struct DeviceSecrets {
    signing: SigningKey,
    identity: DhSecret,
}

impl fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecrets(<redacted>)")
    }
}

impl DeviceSecrets {
    /// Draws the signing seed, then the identity secret, as [`DeviceKeys::generate`] does.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let seed = crypto::random_secret(rng);
        let identity = crypto::random_secret(rng);
        DeviceSecrets {
            signing: SigningKey::from_bytes(&seed),
            identity,
        }
    }

    /// The Ed25519 signing public key `D_sig`.
    pub fn signing_public(&self) -> [u8; KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// The X25519 identity public key `IK`.
    pub fn identity_public(&self) -> [u8; KEY_LEN] {
        crypto::dh_public(&self.identity)
    }

    /// The device's keys once the account certified them; refuses a certificate of other keys.
    pub fn certified(self, cert: DeviceCert) -> Result<DeviceKeys, SessionError> {
        let mine = crypto::ct_eq(&self.signing_public(), &cert.signing_key())
            && crypto::ct_eq(&self.identity_public(), &cert.identity_key());
        if !mine {
            return Err(SessionError::Malformed {
                what: "device certificate (of other keys)",
            });
        }
        Ok(DeviceKeys {
            signing: self.signing,
            identity: self.identity,
            cert,
        })
    }
}

impl DeviceKeys {
    /// A new device of `account`: draws the signing seed, then the identity secret, from `rng`.
    pub fn generate(
        account: &Identity,
        device_id: u32,
        created_at: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let seed = crypto::random_secret(rng);
        let identity = crypto::random_secret(rng);
        let signing = SigningKey::from_bytes(&seed);
        let cert = DeviceCert::sign(
            account,
            signing.verifying_key().as_bytes(),
            &crypto::dh_public(&identity),
            device_id,
            created_at,
        );
        DeviceKeys {
            signing,
            identity,
            cert,
        }
    }

    /// The certificate others verify.
    pub fn cert(&self) -> &DeviceCert {
        &self.cert
    }

    /// The device's Ed25519 signing key: it signs requests as the account's delegate on a
    /// linked device (devices.md §2.1).
    pub(crate) fn signing_secret(&self) -> &SigningKey {
        &self.signing
    }

    pub(crate) fn identity_secret(&self) -> &[u8; KEY_LEN] {
        &self.identity
    }

    /// The device's Ed25519 signing key (its public half is in the certificate).
    pub(crate) fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The secret encoding, for the device's key file. Wiped on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(DEVICE_KEYS_LEN));
        out.push(VERSION);
        out.extend_from_slice(self.signing.as_bytes());
        out.extend_from_slice(self.identity.as_ref());
        out.extend_from_slice(self.cert.as_bytes());
        out
    }

    /// Decodes [`DeviceKeys::encode`], checking that the certificate names these keys.
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let mut r = Reader::new(bytes, "device keys");
        r.version(VERSION)?;
        let seed = Zeroizing::new(r.array::<KEY_LEN>()?);
        let identity = Zeroizing::new(r.array::<KEY_LEN>()?);
        let cert = DeviceCert::decode(r.take(CERT_LEN)?)?;
        r.finish()?;
        let signing = SigningKey::from_bytes(&seed);
        let mine = crypto::ct_eq(signing.verifying_key().as_bytes(), &cert.signing_key())
            && crypto::ct_eq(&crypto::dh_public(&identity), &cert.identity_key());
        if !mine {
            return Err(SessionError::Malformed {
                what: "device keys (certificate of other keys)",
            });
        }
        Ok(DeviceKeys {
            signing,
            identity,
            cert,
        })
    }
}

/// A device's signed prekeys: an X25519 prekey `SPK` and an ML-KEM-768 prekey `PQSPK`, with the
/// device certificate and a validity interval, signed by the device signing key.
///
/// ```text
/// 0x01 || cert (173) || u32be(spk_id) || SPK (32) || u32be(pqspk_id) || PQSPK (1184)
///      || u64be(valid_from) || u64be(expires)
///      || Ed25519(device signing key, "allium/v1/session/prekey-bundle" || the above)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    bytes: Box<[u8; BUNDLE_LEN]>,
    cert: DeviceCert,
    pqspk: Box<[u8; KEM_EK_LEN]>,
}

impl fmt::Debug for PrekeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeyBundle")
            .field("cert", &self.cert)
            .field("spk_id", &self.spk_id())
            .field("pqspk_id", &self.pqspk_id())
            .field("valid_from", &self.valid_from())
            .field("expires", &self.expires())
            .finish()
    }
}

impl PrekeyBundle {
    /// Decodes a bundle and checks everything that does not depend on time or on whom it is
    /// expected from: the certificate, the device's signature, the keys. See [`Self::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let mut r = Reader::new(bytes, "prekey bundle");
        r.version(VERSION)?;
        let cert = DeviceCert::decode(r.take(CERT_LEN)?)?;
        r.take(BUNDLE_LEN - 1 - CERT_LEN)?;
        r.finish()?;
        let mut b = Box::new([0u8; BUNDLE_LEN]);
        b.copy_from_slice(bytes);
        let bundle = PrekeyBundle::from_parts(b, cert);
        let device = check_ed25519(&bundle.cert.signing_key())?;
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(&bundle.bytes[BUNDLE_SIGNED_LEN..]);
        if !verify(
            &device,
            &[labels::PREKEY_BUNDLE, &bundle.bytes[..BUNDLE_SIGNED_LEN]],
            &sig,
        ) {
            return Err(SessionError::BadBundleSignature);
        }
        crypto::check_x25519_public(&bundle.spk())?;
        crypto::check_kem_ek(bundle.pqspk())?;
        if bundle.valid_from() > bundle.expires() {
            return Err(SessionError::Malformed {
                what: "prekey bundle (valid_from after expires)",
            });
        }
        Ok(bundle)
    }

    fn from_parts(bytes: Box<[u8; BUNDLE_LEN]>, cert: DeviceCert) -> Self {
        let at = 1 + CERT_LEN + 8 + KEY_LEN;
        let mut pqspk = Box::new([0u8; KEM_EK_LEN]);
        pqspk.copy_from_slice(&bytes[at..at + KEM_EK_LEN]);
        PrekeyBundle { bytes, cert, pqspk }
    }

    /// Decodes (as [`Self::decode`]) and checks that the bundle belongs to `account` and is
    /// valid at `now` (Unix ms): `valid_from ≤ now < expires`.
    pub fn verify(bytes: &[u8], account: &Address, now: u64) -> Result<Self, SessionError> {
        let bundle = Self::decode(bytes)?;
        if !crypto::ct_eq(&bundle.cert.account_key(), account.public_key().as_bytes()) {
            return Err(SessionError::WrongAccount);
        }
        bundle.check_time(now)?;
        Ok(bundle)
    }

    /// `valid_from ≤ now < expires`, else [`SessionError::BundleNotYetValid`] or
    /// [`SessionError::BundleExpired`].
    pub fn check_time(&self, now: u64) -> Result<(), SessionError> {
        // The publisher's clock may run ahead of the sender's by up to the network's window.
        if now.saturating_add(super::CLOCK_SKEW_MS) < self.valid_from() {
            return Err(SessionError::BundleNotYetValid);
        }
        if now >= self.expires() {
            return Err(SessionError::BundleExpired);
        }
        Ok(())
    }

    /// The encoding (1478 bytes).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The device certificate inside.
    pub fn cert(&self) -> &DeviceCert {
        &self.cert
    }

    fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_be_bytes(b)
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_be_bytes(b)
    }

    /// Id of the X25519 prekey.
    pub fn spk_id(&self) -> u32 {
        self.u32_at(1 + CERT_LEN)
    }

    /// The X25519 prekey `SPK`.
    pub fn spk(&self) -> [u8; KEY_LEN] {
        let at = 1 + CERT_LEN + 4;
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&self.bytes[at..at + KEY_LEN]);
        k
    }

    /// Id of the ML-KEM prekey.
    pub fn pqspk_id(&self) -> u32 {
        self.u32_at(1 + CERT_LEN + 4 + KEY_LEN)
    }

    /// The ML-KEM-768 encapsulation key `PQSPK`.
    pub fn pqspk(&self) -> &[u8; KEM_EK_LEN] {
        &self.pqspk
    }

    /// Start of validity (Unix ms).
    pub fn valid_from(&self) -> u64 {
        self.u64_at(BUNDLE_SIGNED_LEN - 16)
    }

    /// End of validity (Unix ms): senders stop using the bundle then.
    pub fn expires(&self) -> u64 {
        self.u64_at(BUNDLE_SIGNED_LEN - 8)
    }
}

/// The secret halves of one published bundle.
///
/// Encoding (120 bytes): `u32be(spk_id) || SPK secret (32) || u32be(pqspk_id) || PQSPK seed
/// d || z (64) || u64be(valid_from) || u64be(expires)`.
#[derive(Clone)]
pub struct PrekeySecrets {
    pub(crate) spk_id: u32,
    pub(crate) spk: DhSecret,
    /// `pub(spk)`, kept to spare an X25519 base multiplication per envelope tried.
    pub(crate) spk_pub: [u8; KEY_LEN],
    pub(crate) pqspk_id: u32,
    pub(crate) pqspk: KemKeyPair,
    pub(crate) valid_from: u64,
    pub(crate) expires: u64,
}

impl fmt::Debug for PrekeySecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeySecrets")
            .field("spk_id", &self.spk_id)
            .field("pqspk_id", &self.pqspk_id)
            .field("valid_from", &self.valid_from)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

const SECRETS_LEN: usize = 4 + KEY_LEN + 4 + KEM_SEED_LEN + 8 + 8;

impl PrekeySecrets {
    /// The bundle these secrets belong to, signed by `device`.
    pub fn bundle(&self, device: &DeviceKeys) -> PrekeyBundle {
        let mut b = Box::new([0u8; BUNDLE_LEN]);
        b[0] = VERSION;
        let mut at = 1;
        for part in [
            device.cert.as_bytes().as_slice(),
            &self.spk_id.to_be_bytes(),
            &self.spk_pub,
            &self.pqspk_id.to_be_bytes(),
            self.pqspk.ek(),
            &self.valid_from.to_be_bytes(),
            &self.expires.to_be_bytes(),
        ] {
            b[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let sig = device
            .signing
            .sign(&[labels::PREKEY_BUNDLE, &b[..BUNDLE_SIGNED_LEN]].concat());
        b[BUNDLE_SIGNED_LEN..].copy_from_slice(&sig.to_bytes());
        PrekeyBundle::from_parts(b, device.cert.clone())
    }

    /// Until when the secrets are kept: a start message sealed to them just before `expires`
    /// may wait in a mailbox for the longest TTL.
    pub fn retained_until(&self) -> u64 {
        self.expires.saturating_add(MAX_MAILBOX_TTL_MS)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spk_id.to_be_bytes());
        out.extend_from_slice(self.spk.as_ref());
        out.extend_from_slice(&self.pqspk_id.to_be_bytes());
        out.extend_from_slice(self.pqspk.seed());
        out.extend_from_slice(&self.valid_from.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, SessionError> {
        let spk_id = r.u32()?;
        let spk = Zeroizing::new(r.array::<KEY_LEN>()?);
        let pqspk_id = r.u32()?;
        let seed = Zeroizing::new(r.array::<KEM_SEED_LEN>()?);
        let valid_from = r.u64()?;
        let expires = r.u64()?;
        Ok(PrekeySecrets {
            spk_id,
            spk_pub: crypto::dh_public(&spk),
            spk,
            pqspk_id,
            pqspk: KemKeyPair::from_seed(seed),
            valid_from,
            expires,
        })
    }
}

/// The prekey secrets a device keeps, oldest first. The caller persists it (before publishing a
/// new bundle, so that no published prekey is ever missing its secret) and rotates it on its
/// own schedule (every [`super::PREKEY_ROTATION_MS`]).
///
/// Encoding: `0x01 || u32be(next_id) || u8(n) || n × 120-byte secrets`, ascending ids.
#[derive(Clone, Debug, Default)]
pub struct PrekeyStore {
    next_id: u32,
    sets: Vec<PrekeySecrets>,
}

impl PrekeyStore {
    /// An empty store; the first prekeys get id 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a new prekey set valid from `now` for `lifetime` ms (draws the X25519 secret, then
    /// the ML-KEM seed), keeps it, drops sets past retention, and returns the signed bundle to
    /// publish. Both halves get the same id, the next in sequence.
    pub fn rotate(
        &mut self,
        device: &DeviceKeys,
        now: u64,
        lifetime: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<PrekeyBundle, SessionError> {
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(SessionError::CounterExhausted)?;
        let spk = crypto::random_secret(rng);
        let pqspk = KemKeyPair::generate(rng);
        let set = PrekeySecrets {
            spk_id: id,
            spk_pub: crypto::dh_public(&spk),
            spk,
            pqspk_id: id,
            pqspk,
            valid_from: now,
            expires: now.saturating_add(lifetime),
        };
        let bundle = set.bundle(device);
        self.sets.push(set);
        self.prune(now);
        if self.sets.len() > MAX_PREKEY_SETS {
            let excess = self.sets.len() - MAX_PREKEY_SETS;
            self.sets.drain(..excess);
        }
        Ok(bundle)
    }

    /// Deletes the sets whose retention ended (`expires + MAX_MAILBOX_TTL ≤ now`): from then on
    /// a start message sealed to them is refused, and a thief can no longer open one.
    pub fn prune(&mut self, now: u64) {
        self.sets.retain(|s| s.retained_until() > now);
    }

    /// The sets kept, oldest first.
    pub fn sets(&self) -> &[PrekeySecrets] {
        &self.sets
    }

    /// The newest set (the bundle to publish or republish).
    pub fn current(&self) -> Option<&PrekeySecrets> {
        self.sets.last()
    }

    /// The sets an envelope's outer layer is tried with, newest first: at most
    /// [`LIVE_PREKEYS`] (the next one being published, the current, the previous).
    pub(crate) fn live(&self, now: u64) -> impl Iterator<Item = &PrekeySecrets> {
        self.sets
            .iter()
            .rev()
            .filter(move |s| s.retained_until() > now)
            .take(LIVE_PREKEYS)
    }

    /// The set a start message names, if it is still kept at `now`.
    pub(crate) fn find(
        &self,
        spk_id: u32,
        pqspk_id: u32,
        now: u64,
    ) -> Result<&PrekeySecrets, SessionError> {
        match self
            .sets
            .iter()
            .find(|s| s.spk_id == spk_id && s.pqspk_id == pqspk_id)
        {
            Some(s) if s.retained_until() > now => Ok(s),
            Some(_) => Err(SessionError::PrekeyExpired),
            // Ids are handed out in sequence: a lower id than the next one was ours and is gone.
            None if spk_id < self.next_id && pqspk_id < self.next_id => {
                Err(SessionError::PrekeyExpired)
            }
            None => Err(SessionError::UnknownPrekey),
        }
    }

    /// The encoding, for the device's state. Wiped on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(6 + self.sets.len() * SECRETS_LEN));
        out.push(VERSION);
        out.extend_from_slice(&self.next_id.to_be_bytes());
        // At most MAX_PREKEY_SETS (32) sets, enforced by rotate and decode.
        out.push(u8::try_from(self.sets.len()).unwrap_or(u8::MAX));
        for s in &self.sets {
            s.encode_into(&mut out);
        }
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let mut r = Reader::new(bytes, "prekey store");
        r.version(VERSION)?;
        let next_id = r.u32()?;
        let n = usize::from(r.u8()?);
        if n > MAX_PREKEY_SETS {
            return Err(SessionError::Malformed {
                what: "prekey store (too many sets)",
            });
        }
        let mut sets: Vec<PrekeySecrets> = Vec::with_capacity(n);
        for _ in 0..n {
            let s = PrekeySecrets::decode_from(&mut r)?;
            let ascending = sets.last().is_none_or(|p| p.spk_id < s.spk_id);
            if !ascending || s.spk_id >= next_id || s.pqspk_id >= next_id {
                return Err(SessionError::Malformed {
                    what: "prekey store (ids out of order)",
                });
            }
            sets.push(s);
        }
        r.finish()?;
        Ok(PrekeyStore { next_id, sets })
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let account = Identity::from_seed(&[4; 32]);
        let keys = DeviceKeys::generate(&account, 7, 1, &mut rng);
        let mut store = PrekeyStore::new();
        let bundle = store.rotate(&keys, 1, 10, &mut rng);
        assert!(bundle.is_ok());
        let enc = keys.encode();
        let secret_hex = hex::encode(&enc[1..33]);
        let identity_hex = hex::encode(&enc[33..65]);
        for shown in [format!("{keys:?}"), format!("{store:?}")] {
            assert!(!shown.contains(&secret_hex) && !shown.contains(&identity_hex));
            assert!(!shown.contains("[") || !shown.contains(", 0, "));
        }
        let spk_hex = hex::encode(&store.encode()[9..41]);
        assert!(!format!("{store:?}").contains(&spk_hex));
    }

    #[test]
    fn a_remembered_pass_never_admits_other_bytes() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let account = Identity::from_seed(&[5; 32]);
        let keys = DeviceKeys::generate(&account, 3, 1, &mut rng);
        let good = *keys.cert().as_bytes();
        // Checked and remembered, then answered from memory: the same certificate.
        assert_eq!(DeviceCert::decode(&good).as_ref(), Ok(keys.cert()));
        assert!(verified::passed(&good));
        assert_eq!(DeviceCert::decode(&good).as_ref(), Ok(keys.cert()));
        // One flipped bit of the signature or of a signed field is checked afresh and refused,
        // however often the original passed.
        for at in [CERT_LEN - 1, 100] {
            let mut bad = good;
            bad[at] ^= 1;
            assert_eq!(
                DeviceCert::decode(&bad),
                Err(SessionError::BadCertSignature)
            );
            assert!(!verified::passed(&bad));
        }
    }

    #[test]
    fn store_keeps_sets_until_retention_and_tries_three() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let account = Identity::from_seed(&[4; 32]);
        let keys = DeviceKeys::generate(&account, 7, 1, &mut rng);
        let mut store = PrekeyStore::new();
        let day = 24 * 3600 * 1000;
        for i in 0..20u64 {
            assert!(store.rotate(&keys, i * 2 * day, 14 * day, &mut rng).is_ok());
        }
        // Made every 2 days, kept 14 + 14 days: the last 14 sets.
        assert_eq!(store.sets().len(), 14);
        assert_eq!(store.live(38 * day).count(), LIVE_PREKEYS);
        assert_eq!(store.live(38 * day).next().map(|s| s.spk_id), Some(19));
        assert_eq!(store.find(19, 19, 38 * day).map(|s| s.spk_id), Ok(19));
        assert_eq!(
            store.find(2, 2, 38 * day).err(),
            Some(SessionError::PrekeyExpired)
        );
        assert_eq!(
            store.find(20, 20, 38 * day).err(),
            Some(SessionError::UnknownPrekey)
        );
        assert_eq!(
            store.find(19, 18, 38 * day).err(),
            Some(SessionError::PrekeyExpired)
        );
    }
}
