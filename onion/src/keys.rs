//! Typed keys: the Ed25519 identity of a node or user, the X25519 onion key a node publishes for
//! one epoch (certified by its identity), and the single-use ephemeral keys a sender makes for each
//! layer.
//!
//! Secret keys are zeroized on drop, print as `<redacted>`, and compare in constant time.

use std::fmt;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::epoch::Epoch;
use crate::error::KeyError;

/// Domain string of the signature that certifies an onion key.
pub const ONION_CERT_DOMAIN: &[u8] = b"allium/v1/onion-key-cert";

/// Length of every public key, secret key and shared secret here.
pub const KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

macro_rules! redacted_debug {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    };
}

fn array32(bytes: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
    bytes.try_into().map_err(|_| KeyError::BadLength {
        expected: KEY_LEN,
        got: bytes.len(),
    })
}

/// A node's (or a user's) long-term Ed25519 public key. It names the node: the routing slot of
/// a packet carries it, the link pins it, the roster lists it.
#[derive(Clone, Copy)]
pub struct IdentityPublicKey(VerifyingKey);

impl IdentityPublicKey {
    /// Parses 32 bytes, refusing encodings that are not a point on the curve.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(&array32(bytes)?)
            .map(IdentityPublicKey)
            .map_err(|_| KeyError::BadIdentityKey)
    }

    /// Parses 32 bytes as a key that names someone: a point on the curve, in its one canonical
    /// encoding, not of small order. Keys read from files (a network file's authorities) go
    /// through this: a small-order key can sign nothing the strict verifier accepts, so listing
    /// one is a mistake or an attack, and a non-canonical spelling would make two files that
    /// differ name the same key.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let bytes = array32(bytes)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadIdentityKey)?;
        if key.is_weak() {
            return Err(KeyError::SmallOrderIdentityKey);
        }
        if key.to_edwards().compress().to_bytes() != bytes {
            return Err(KeyError::NonCanonicalIdentityKey);
        }
        Ok(IdentityPublicKey(key))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// Whether the key is a canonically encoded point of large order
    /// ([`Self::from_canonical_bytes`] would accept its bytes).
    pub fn is_canonical(&self) -> bool {
        !self.0.is_weak() && self.0.to_edwards().compress().to_bytes() == self.to_bytes()
    }

    /// Borrow the 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// Verifies `signature` over `message` with the strict rules (no small-order keys, canonical
    /// `S`), so that one signature cannot be valid for two keys.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let sig =
            ed25519_dalek::Signature::from_slice(signature).map_err(|_| KeyError::BadSignature)?;
        self.0
            .verify_strict(message, &sig)
            .map_err(|_| KeyError::BadSignature)
    }

    /// This key as a node's name.
    pub fn node_id(&self) -> crate::NodeId {
        crate::NodeId::from(self)
    }

    /// The underlying verifying key, for code that needs the `ed25519-dalek` type.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl ConstantTimeEq for IdentityPublicKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.as_bytes().ct_eq(other.as_bytes())
    }
}

impl PartialEq for IdentityPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}
impl Eq for IdentityPublicKey {}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({:?})", self.node_id())
    }
}

/// 64 hex digits, as [`Id`](crate::Id) prints.
impl fmt::Display for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.node_id(), f)
    }
}

/// A long-term Ed25519 keypair.
#[derive(ZeroizeOnDrop)]
pub struct IdentityKeypair(SigningKey);

redacted_debug!(IdentityKeypair);

impl IdentityKeypair {
    /// A fresh random keypair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        IdentityKeypair(SigningKey::generate(rng))
    }

    /// The keypair of a 32-byte seed (RFC 8032 secret key).
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        IdentityKeypair(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for storing the key. Zeroized when dropped.
    pub fn seed(&self) -> zeroize::Zeroizing<[u8; KEY_LEN]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.0.verifying_key())
    }

    /// An Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }
}

impl ConstantTimeEq for IdentityKeypair {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.as_bytes().ct_eq(other.0.as_bytes())
    }
}

/// The X25519 public onion key a node publishes for one epoch.
#[derive(Clone, Copy)]
pub struct OnionPublicKey(pub(crate) x25519_dalek::PublicKey);

impl OnionPublicKey {
    /// Parses 32 bytes. Any 32 bytes are an X25519 u-coordinate; low-order points are caught when
    /// they give a non-contributory shared secret.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        Ok(OnionPublicKey(x25519_dalek::PublicKey::from(array32(
            bytes,
        )?)))
    }

    /// Borrow the 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }
}

impl From<[u8; KEY_LEN]> for OnionPublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        OnionPublicKey(x25519_dalek::PublicKey::from(bytes))
    }
}

impl ConstantTimeEq for OnionPublicKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.as_bytes().ct_eq(other.as_bytes())
    }
}
impl PartialEq for OnionPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}
impl Eq for OnionPublicKey {}

impl fmt::Debug for OnionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.as_bytes();
        write!(
            f,
            "OnionPublicKey({:02x}{:02x}{:02x}{:02x}…)",
            b[0], b[1], b[2], b[3]
        )
    }
}

/// A node's X25519 onion secret key for one epoch. Deleting it (dropping it, which zeroizes it)
/// makes every packet recorded under it impossible to open.
///
/// Key agreement runs on aws-lc-rs (AWS-LC's formally verified x86-64 and AArch64 X25519), about
/// twice as fast here as curve25519-dalek's ladder (whitepaper performance.md, "X25519
/// backends"); the scalar is also kept as x25519-dalek's `StaticSecret` for storing and comparing
/// it. AWS-LC cleanses the key's memory when it is freed.
#[derive(ZeroizeOnDrop)]
pub struct OnionSecretKey {
    #[zeroize(skip)]
    epoch: Epoch,
    secret: StaticSecret,
    #[zeroize(skip)]
    agreement: PrivateKey,
    #[zeroize(skip)]
    public: OnionPublicKey,
}

redacted_debug!(OnionSecretKey);

impl OnionSecretKey {
    /// A fresh random key for `epoch`.
    pub fn generate(epoch: Epoch, rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_bytes(epoch, &bytes)
    }

    /// The key with secret scalar `bytes` (clamped as RFC 7748 says) for `epoch`.
    pub fn from_bytes(epoch: Epoch, bytes: &[u8; KEY_LEN]) -> Self {
        let (agreement, public) = agreement_key(bytes);
        OnionSecretKey {
            epoch,
            secret: StaticSecret::from(*bytes),
            agreement,
            public: OnionPublicKey::from(public),
        }
    }

    /// The 32 secret bytes, for storing the key. Zeroized when dropped.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; KEY_LEN]> {
        zeroize::Zeroizing::new(self.secret.to_bytes())
    }

    /// The epoch this key serves.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The public half.
    pub fn public(&self) -> &OnionPublicKey {
        &self.public
    }

    /// X25519 with a sender's ephemeral public key, refusing an all-zero result.
    pub(crate) fn diffie_hellman(
        &self,
        ephemeral: &[u8; KEY_LEN],
    ) -> Result<SharedSecret, KeyError> {
        SharedSecret::agree(&self.agreement, ephemeral)
    }
}

impl ConstantTimeEq for OnionSecretKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.secret.as_bytes().ct_eq(other.secret.as_bytes()) & self.epoch.0.ct_eq(&other.epoch.0)
    }
}

/// A single-use X25519 key a sender makes for one layer. `diffie_hellman` consumes it, so it
/// cannot serve two layers.
///
/// Its secret lives only inside AWS-LC, which cleanses it when the key is dropped.
pub struct EphemeralSecret {
    agreement: PrivateKey,
    public: [u8; KEY_LEN],
}

redacted_debug!(EphemeralSecret);

impl EphemeralSecret {
    /// A fresh random ephemeral key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_bytes(&bytes)
    }

    /// The ephemeral key with secret scalar `bytes`; for test vectors.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let (agreement, public) = agreement_key(bytes);
        EphemeralSecret { agreement, public }
    }

    /// The public key that travels in the packet.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// X25519 with a node's onion key, refusing an all-zero result. Consumes the key.
    pub fn diffie_hellman(self, onion_key: &OnionPublicKey) -> Result<SharedSecret, KeyError> {
        SharedSecret::agree(&self.agreement, onion_key.as_bytes())
    }
}

/// An X25519 private key for AWS-LC with scalar `bytes` (clamped there as RFC 7748 says), and
/// its public key.
#[allow(
    clippy::expect_used,
    reason = "AWS-LC refuses an X25519 private key only for a length other than 32, and the \
              public key of a valid one always exists: a failure is a bug, never bad input"
)]
fn agreement_key(bytes: &[u8; KEY_LEN]) -> (PrivateKey, [u8; KEY_LEN]) {
    let key = PrivateKey::from_private_key(&X25519, bytes).expect("32-byte X25519 private key");
    let public = key
        .compute_public_key()
        .expect("public key of a valid X25519 private key");
    let public = <[u8; KEY_LEN]>::try_from(public.as_ref()).expect("32-byte X25519 public key");
    (key, public)
}

/// The result of one X25519 exchange, known to the sender and one node.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; KEY_LEN]);

redacted_debug!(SharedSecret);

impl SharedSecret {
    /// X25519 of `private` with the u-coordinate `public`, refusing an all-zero result.
    fn agree(private: &PrivateKey, public: &[u8; KEY_LEN]) -> Result<Self, KeyError> {
        let peer = UnparsedPublicKey::new(&X25519, public);
        // RFC 7748 §6.1: an all-zero output means the peer's point had small order. AWS-LC
        // refuses it itself (its only failure for a 32-byte key); the check here keeps the rule
        // independent of that.
        agreement::agree(private, peer, KeyError::NonContributory, |shared| {
            let shared =
                <[u8; KEY_LEN]>::try_from(shared).map_err(|_| KeyError::NonContributory)?;
            let out = SharedSecret(shared);
            if bool::from(out.0.ct_eq(&[0u8; KEY_LEN])) {
                Err(KeyError::NonContributory)
            } else {
                Ok(out)
            }
        })
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// The certificate binding a node's onion key for one epoch to its identity key.
///
/// Encoding (132 bytes): `identity (32) || epoch (u32 big-endian) || onion_key (32) || signature (64)`;
/// the signature is Ed25519 by `identity` over
/// `"allium/v1/onion-key-cert" || identity || epoch || onion_key`.
#[derive(Clone, PartialEq, Eq)]
pub struct OnionKeyCert {
    identity: IdentityPublicKey,
    epoch: Epoch,
    onion_key: OnionPublicKey,
    signature: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for OnionKeyCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnionKeyCert")
            .field("identity", &self.identity)
            .field("epoch", &self.epoch)
            .field("onion_key", &self.onion_key)
            .finish_non_exhaustive()
    }
}

impl OnionKeyCert {
    /// Encoded length.
    pub const LEN: usize = KEY_LEN + 4 + KEY_LEN + SIGNATURE_LEN;

    fn signed_message(
        identity: &IdentityPublicKey,
        epoch: Epoch,
        onion_key: &OnionPublicKey,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(ONION_CERT_DOMAIN.len() + KEY_LEN + 4 + KEY_LEN);
        m.extend_from_slice(ONION_CERT_DOMAIN);
        m.extend_from_slice(identity.as_bytes());
        m.extend_from_slice(&epoch.0.to_be_bytes());
        m.extend_from_slice(onion_key.as_bytes());
        m
    }

    /// Certifies `onion`'s public key with `identity`.
    pub fn sign(identity: &IdentityKeypair, onion: &OnionSecretKey) -> Self {
        let id = identity.public();
        let signature = identity.sign(&Self::signed_message(&id, onion.epoch, &onion.public));
        OnionKeyCert {
            identity: id,
            epoch: onion.epoch,
            onion_key: onion.public,
            signature,
        }
    }

    /// Parses and verifies a certificate.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let cert = Self::parse(bytes, None)?;
        cert.verify()?;
        Ok(cert)
    }

    /// Parses a certificate by `owner` without verifying its signature: only for bytes that
    /// something verified vouches for — a roster's certificates, covered by the signatures of
    /// the authorities that checked them at registration (whitepaper roster.md §4.2). The key
    /// encodings are still checked. A certificate by another key than `owner` is refused
    /// (compared as bytes, which spares decoding the key a second time).
    pub fn from_bytes_vouched(bytes: &[u8], owner: &IdentityPublicKey) -> Result<Self, KeyError> {
        Self::parse(bytes, Some(owner))
    }

    /// Verifies the signature by the certified identity (strict Ed25519): what
    /// [`Self::from_bytes`] checks, for a certificate parsed with [`Self::from_bytes_vouched`]
    /// and audited later.
    pub fn verify(&self) -> Result<(), KeyError> {
        self.identity.verify(
            &Self::signed_message(&self.identity, self.epoch, &self.onion_key),
            &self.signature,
        )
    }

    fn parse(bytes: &[u8], owner: Option<&IdentityPublicKey>) -> Result<Self, KeyError> {
        if bytes.len() != Self::LEN {
            return Err(KeyError::BadLength {
                expected: Self::LEN,
                got: bytes.len(),
            });
        }
        let (id, rest) = bytes.split_at(KEY_LEN);
        let (epoch, rest) = rest.split_at(4);
        let (onion, sig) = rest.split_at(KEY_LEN);
        let identity = match owner {
            Some(o) if o.as_bytes().as_slice() == id => *o,
            Some(_) => return Err(KeyError::BadSignature),
            None => IdentityPublicKey::from_bytes(id)?,
        };
        let epoch = Epoch(u32::from_be_bytes(epoch.try_into().map_err(|_| {
            KeyError::BadLength {
                expected: 4,
                got: epoch.len(),
            }
        })?));
        let onion_key = OnionPublicKey::from_bytes(onion)?;
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(sig);
        Ok(OnionKeyCert {
            identity,
            epoch,
            onion_key,
            signature,
        })
    }

    /// The 132-byte encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(self.identity.as_bytes());
        out[32..36].copy_from_slice(&self.epoch.0.to_be_bytes());
        out[36..68].copy_from_slice(self.onion_key.as_bytes());
        out[68..].copy_from_slice(&self.signature);
        out
    }

    /// The certifying identity.
    pub fn identity(&self) -> &IdentityPublicKey {
        &self.identity
    }

    /// The epoch the onion key serves.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The certified onion key.
    pub fn onion_key(&self) -> &OnionPublicKey {
        &self.onion_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let id = IdentityKeypair::generate(&mut rng);
        let onion = OnionSecretKey::generate(Epoch(7), &mut rng);
        let eph = EphemeralSecret::generate(&mut rng);
        let seed_hex = hex::encode(*id.seed());
        let onion_hex = hex::encode(*onion.to_bytes());
        for shown in [format!("{id:?}"), format!("{onion:?}"), format!("{eph:?}")] {
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(!shown.contains(&seed_hex[..8]));
            assert!(!shown.contains(&onion_hex[..8]));
        }
        let shared = eph.diffie_hellman(onion.public()).unwrap();
        assert_eq!(format!("{shared:?}"), "SharedSecret(<redacted>)");
    }

    #[test]
    fn constant_time_equality_distinguishes_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let a = OnionSecretKey::generate(Epoch(1), &mut rng);
        let a2 = OnionSecretKey::from_bytes(Epoch(1), &a.to_bytes());
        let a_other_epoch = OnionSecretKey::from_bytes(Epoch(2), &a.to_bytes());
        let b = OnionSecretKey::generate(Epoch(1), &mut rng);
        assert!(bool::from(a.ct_eq(&a2)));
        assert!(!bool::from(a.ct_eq(&b)));
        assert!(!bool::from(a.ct_eq(&a_other_epoch)));
        assert_eq!(a.public(), a2.public());
        assert_ne!(a.public(), b.public());
    }

    #[test]
    fn certificate_round_trips_and_rejects_any_change() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let id = IdentityKeypair::generate(&mut rng);
        let onion = OnionSecretKey::generate(Epoch(500), &mut rng);
        let cert = OnionKeyCert::sign(&id, &onion);
        let bytes = cert.to_bytes();
        assert_eq!(OnionKeyCert::from_bytes(&bytes).unwrap(), cert);
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 0x01;
            assert!(
                OnionKeyCert::from_bytes(&bad).is_err(),
                "flip at byte {i} accepted"
            );
        }
        assert!(OnionKeyCert::from_bytes(&bytes[..131]).is_err());

        // Vouched for by something else: parsed without the signature, which `verify` checks.
        let mut bad_sig = bytes;
        bad_sig[100] ^= 0x01;
        let vouched = OnionKeyCert::from_bytes_vouched(&bad_sig, &id.public()).unwrap();
        assert_eq!(vouched.to_bytes(), bad_sig);
        assert_eq!(vouched.verify(), Err(KeyError::BadSignature));
        assert_eq!(
            OnionKeyCert::from_bytes_vouched(&bytes, &id.public()).unwrap(),
            cert
        );
        assert!(cert.verify().is_ok());
        let other = IdentityKeypair::from_seed(&[0x42; 32]).public();
        assert!(OnionKeyCert::from_bytes_vouched(&bytes, &other).is_err());
    }

    #[test]
    fn keys_named_in_files_are_canonical_points_of_large_order() {
        let refused = |hex_key: &str| {
            IdentityPublicKey::from_canonical_bytes(&hex::decode(hex_key).unwrap()).unwrap_err()
        };
        // The neutral element, the point of order 2, a point of order 8.
        for small in [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        ] {
            assert_eq!(refused(small), KeyError::SmallOrderIdentityKey, "{small}");
            // The lenient parser takes them: only the strict one knows.
            let lenient = IdentityPublicKey::from_bytes(&hex::decode(small).unwrap()).unwrap();
            assert!(!lenient.is_canonical());
        }
        // y = p + 3: the point y = 3 (of large order) spelt with an unreduced coordinate.
        let unreduced = "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f";
        assert!(IdentityPublicKey::from_bytes(&hex::decode(unreduced).unwrap()).is_ok());
        assert_eq!(refused(unreduced), KeyError::NonCanonicalIdentityKey);
        let mut reduced = [0u8; 32];
        reduced[0] = 3;
        assert!(IdentityPublicKey::from_canonical_bytes(&reduced).is_ok());
        // A real key passes, and bytes that are no point stay refused.
        let real = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(9)).public();
        assert_eq!(
            IdentityPublicKey::from_canonical_bytes(real.as_bytes()).unwrap(),
            real
        );
        assert!(real.is_canonical());
        let mut two = [0u8; 32];
        two[0] = 2;
        assert_eq!(
            IdentityPublicKey::from_canonical_bytes(&two).unwrap_err(),
            KeyError::BadIdentityKey
        );
    }

    #[test]
    fn low_order_points_are_non_contributory() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let onion = OnionSecretKey::generate(Epoch(1), &mut rng);
        // The all-zero point, the point of order 1 (u = 1), and an order-8 point.
        let order8 =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap();
        for point in [
            [0u8; 32].to_vec(),
            {
                let mut one = [0u8; 32];
                one[0] = 1;
                one.to_vec()
            },
            order8,
        ] {
            let p: [u8; 32] = point.try_into().unwrap();
            assert_eq!(
                onion.diffie_hellman(&p).unwrap_err(),
                KeyError::NonContributory
            );
            let eph = EphemeralSecret::generate(&mut rng);
            assert_eq!(
                eph.diffie_hellman(&OnionPublicKey::from(p)).unwrap_err(),
                KeyError::NonContributory
            );
        }
    }
}
