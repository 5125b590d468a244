//! The primitives of sessions in one place: X25519 with its checks, ML-KEM-768 from
//! `libcrux-ml-kem`, HKDF-SHA-256 and HMAC-SHA-256 with the labels of `whitepaper/sessions.md`
//! §7, and AES-256-GCM under message keys that are consumed by use.

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use libcrux_ml_kem::mlkem768;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::{KEM_CT_LEN, KEM_EK_LEN, KEM_SEED_LEN, KEY_LEN, SessionError, TAG_LEN, labels};

/// An X25519 secret key (32 random bytes; X25519 clamps at use).
pub(crate) type DhSecret = Zeroizing<[u8; KEY_LEN]>;

/// 32 fresh random bytes, wiped on drop.
pub(crate) fn random_secret(rng: &mut impl CryptoRngCore) -> DhSecret {
    let mut s = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(s.as_mut());
    s
}

// X25519 runs on AWS-LC, as the onion layers do (its verified x86-64 and AArch64 code takes
// about half the time of curve25519-dalek's ladder, whitepaper/performance.md §6): a session
// message's envelope costs two on the sender's side and one on the receiver's, on the path
// of every delivery. The function is RFC 7748's either way; `tests` check the two agree.

/// An AWS-LC X25519 private key with scalar `secret` (clamped there, as RFC 7748 says).
#[allow(
    clippy::expect_used,
    reason = "AWS-LC refuses an X25519 private key only for a length other than 32: a failure \
              is a bug, never bad input"
)]
fn private_key(secret: &[u8; KEY_LEN]) -> PrivateKey {
    PrivateKey::from_private_key(&X25519, secret).expect("32-byte X25519 private key")
}

/// The public key of an X25519 secret.
#[allow(
    clippy::expect_used,
    reason = "the public key of a valid X25519 private key always exists and has 32 bytes"
)]
pub(crate) fn dh_public(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let public = private_key(secret)
        .compute_public_key()
        .expect("public key of a valid X25519 private key");
    <[u8; KEY_LEN]>::try_from(public.as_ref()).expect("32-byte X25519 public key")
}

/// `X25519(secret, public)`, refusing the all-zero output of a small-order `public` (RFC 7748
/// §6.1): a non-contributory exchange would let the peer fix the shared secret.
pub(crate) fn dh(secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> Result<DhSecret, SessionError> {
    let peer = UnparsedPublicKey::new(&X25519, public);
    // AWS-LC refuses an all-zero output itself (its only failure for 32-byte keys); the check
    // here keeps the rule independent of that.
    agreement::agree(
        &private_key(secret),
        peer,
        SessionError::NonContributory,
        |shared| {
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            if shared.len() != KEY_LEN {
                return Err(SessionError::NonContributory);
            }
            out.copy_from_slice(shared);
            if bool::from(out.ct_eq(&[0u8; KEY_LEN])) {
                return Err(SessionError::NonContributory);
            }
            Ok(out)
        },
    )
}

/// A published X25519 key must be canonical (`u < p`, top bit clear, so it has one encoding) and
/// not of small order (checked by an exchange with a fixed scalar, which gives zero exactly for
/// small-order points since clamped scalars are multiples of 8).
pub(crate) fn check_x25519_public(public: &[u8; KEY_LEN]) -> Result<(), SessionError> {
    let top_bit = public[31] & 0x80 != 0;
    // u ≥ p = 2^255 − 19 with the top bit clear: 0x7f, then 30 × 0xff, then a low byte ≥ 0xed.
    let at_least_p =
        public[31] == 0x7f && public[1..31].iter().all(|&b| b == 0xff) && public[0] >= 0xed;
    if top_bit || at_least_p {
        return Err(SessionError::WeakKey);
    }
    dh(&[0x42; KEY_LEN], public)
        .map(|_| ())
        .map_err(|_| SessionError::WeakKey)
}

/// An ML-KEM-768 key pair held as its 64-byte seed `d || z` (FIPS 203 `KeyGen_internal`), with
/// its encapsulation key. The 2400-byte decapsulation key is re-derived when it is needed (once
/// per received chain), so the state stores 64 secret bytes instead of 2400.
#[derive(Clone)]
pub(crate) struct KemKeyPair {
    seed: Zeroizing<[u8; KEM_SEED_LEN]>,
    ek: Box<[u8; KEM_EK_LEN]>,
}

impl fmt::Debug for KemKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KemKeyPair(<redacted>)")
    }
}

impl KemKeyPair {
    pub(crate) fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(seed)
    }

    pub(crate) fn from_seed(seed: Zeroizing<[u8; KEM_SEED_LEN]>) -> Self {
        let (sk, pk) = mlkem768::generate_key_pair(*seed).into_parts();
        wipe_private(sk);
        KemKeyPair {
            seed,
            ek: Box::new(*pk.as_slice()),
        }
    }

    pub(crate) fn seed(&self) -> &[u8; KEM_SEED_LEN] {
        &self.seed
    }

    pub(crate) fn ek(&self) -> &[u8; KEM_EK_LEN] {
        &self.ek
    }

    /// ML-KEM-768 decapsulation. A ciphertext that was not made for this key gives a
    /// pseudorandom secret (implicit rejection), caught later by the AEAD.
    pub(crate) fn decapsulate(&self, ct: &[u8; KEM_CT_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
        let (sk, _) = mlkem768::generate_key_pair(*self.seed).into_parts();
        let ss = mlkem768::decapsulate(&sk, &mlkem768::MlKem768Ciphertext::from(ct));
        wipe_private(sk);
        Zeroizing::new(ss)
    }
}

/// Best-effort wipe of a libcrux private key, which does not zeroize itself.
fn wipe_private(sk: mlkem768::MlKem768PrivateKey) {
    let mut bytes: [u8; 2400] = sk.into();
    bytes.zeroize();
}

/// The encapsulation-key check of FIPS 203 §7.2 (every coefficient reduced mod q).
pub(crate) fn check_kem_ek(ek: &[u8; KEM_EK_LEN]) -> Result<(), SessionError> {
    if mlkem768::validate_public_key(&mlkem768::MlKem768PublicKey::from(ek)) {
        Ok(())
    } else {
        Err(SessionError::BadKemKey)
    }
}

/// A secret of 32 bytes, wiped on drop.
pub(crate) type Secret = Zeroizing<[u8; KEY_LEN]>;

/// ML-KEM-768 encapsulation to a checked `ek` with 32 random bytes `m`.
pub(crate) fn encapsulate(
    ek: &[u8; KEM_EK_LEN],
    rng: &mut impl CryptoRngCore,
) -> Result<(Box<[u8; KEM_CT_LEN]>, Secret), SessionError> {
    check_kem_ek(ek)?;
    let mut m = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(m.as_mut());
    let (ct, ss) = mlkem768::encapsulate(&mlkem768::MlKem768PublicKey::from(ek), *m);
    Ok((Box::new(*ct.as_slice()), Zeroizing::new(ss)))
}

/// `HKDF-SHA-256(salt, ikm, info)` expanded to `N` bytes.
pub(crate) fn hkdf<const N: usize>(
    salt: &[u8],
    ikm: &[&[u8]],
    info: &[u8],
) -> Result<Zeroizing<[u8; N]>, SessionError> {
    let mut input = Zeroizing::new(Vec::with_capacity(ikm.iter().map(|p| p.len()).sum()));
    for part in ikm {
        input.extend_from_slice(part);
    }
    let mut out = Zeroizing::new([0u8; N]);
    Hkdf::<Sha256>::new(Some(salt), &input)
        .expand(info, out.as_mut())
        .map_err(|_| SessionError::Kdf)?;
    Ok(out)
}

/// `HMAC-SHA-256(key, label)`.
fn hmac(key: &[u8; KEY_LEN], label: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, SessionError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| SessionError::Kdf)?;
    mac.update(label);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

/// `SHA-256` of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `KDF_RK`: `RK', CK = HKDF(salt = RK, IKM = DH_out || KEM_ss, info = "…/root")`.
pub(crate) fn kdf_rk(
    root: &[u8; KEY_LEN],
    dh_out: &[u8; KEY_LEN],
    kem_ss: &[u8; KEY_LEN],
) -> Result<(Zeroizing<[u8; KEY_LEN]>, ChainKey), SessionError> {
    let out = hkdf::<64>(root, &[dh_out, kem_ss], labels::ROOT)?;
    let mut rk = Zeroizing::new([0u8; KEY_LEN]);
    let mut ck = Zeroizing::new([0u8; KEY_LEN]);
    rk.copy_from_slice(&out[..KEY_LEN]);
    ck.copy_from_slice(&out[KEY_LEN..]);
    Ok((rk, ChainKey(ck)))
}

/// A symmetric chain key. `KDF_CK` turns it into a message key and the next chain key.
#[derive(Clone)]
pub(crate) struct ChainKey(pub(crate) Zeroizing<[u8; KEY_LEN]>);

impl ChainKey {
    /// `MK = HMAC(CK, "…/message-key")`, `CK' = HMAC(CK, "…/chain-key")`.
    pub(crate) fn step(&self) -> Result<(ChainKey, MessageKey), SessionError> {
        let mk = hmac(&self.0, labels::MESSAGE_KEY)?;
        let next = hmac(&self.0, labels::CHAIN_KEY)?;
        Ok((ChainKey(next), MessageKey(mk)))
    }
}

/// A message key. `encrypt` and `decrypt` take it by value, so one key can never seal two
/// messages or open one twice.
#[derive(Clone)]
pub(crate) struct MessageKey(pub(crate) Zeroizing<[u8; KEY_LEN]>);

impl MessageKey {
    /// `key || nonce = HKDF(salt = 0^32, IKM = MK, info = "…/aead")`, 32 + 12 bytes.
    fn aead(&self) -> Result<(Aes256Gcm, Nonce12), SessionError> {
        let out = hkdf::<44>(&[0u8; 32], &[self.0.as_ref()], labels::AEAD)?;
        let cipher = Aes256Gcm::new_from_slice(&out[..KEY_LEN]).map_err(|_| SessionError::Kdf)?;
        Ok((cipher, *Nonce::from_slice(&out[KEY_LEN..])))
    }

    /// `C || tag = AES-256-GCM(key, nonce, ad, plaintext)`.
    pub(crate) fn encrypt(self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let (cipher, nonce) = self.aead()?;
        seal_with(&cipher, &nonce, ad, plaintext)
    }

    /// Opens `C || tag`; any change to it or to `ad` is [`SessionError::Decrypt`].
    pub(crate) fn decrypt(
        self,
        ad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let (cipher, nonce) = self.aead()?;
        open_with(&cipher, &nonce, ad, ciphertext)
    }
}

type Nonce12 = Nonce<aes_gcm::aead::consts::U12>;

fn seal_with(
    cipher: &Aes256Gcm,
    nonce: &Nonce12,
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(nonce, ad, &mut out)
        .map_err(|_| SessionError::TooLarge)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open_with(
    cipher: &Aes256Gcm,
    nonce: &Nonce12,
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SessionError> {
    let Some(body_len) = ciphertext.len().checked_sub(TAG_LEN) else {
        return Err(SessionError::Decrypt);
    };
    let mut out = Zeroizing::new(ciphertext[..body_len].to_vec());
    cipher
        .decrypt_in_place_detached(
            nonce,
            ad,
            &mut out,
            Tag::from_slice(&ciphertext[body_len..]),
        )
        .map_err(|_| SessionError::Decrypt)?;
    Ok(out)
}

/// `C || tag = AES-256-GCM(key, nonce, ad, plaintext)` under a key the caller uses once per
/// nonce (group keys, whose nonces are derived or drawn as `whitepaper/groups.md` says).
pub(crate) fn aead_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; 12],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SessionError::Kdf)?;
    seal_with(&cipher, Nonce::from_slice(nonce), ad, plaintext)
}

/// Opens [`aead_seal`]'s output; any change is [`SessionError::Decrypt`].
pub(crate) fn aead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; 12],
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SessionError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SessionError::Kdf)?;
    open_with(&cipher, Nonce::from_slice(nonce), ad, ciphertext)
}

/// Constant-time equality of two byte strings of public length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;

    #[test]
    fn x25519_agrees_with_curve25519_dalek() {
        use x25519_dalek::{PublicKey, StaticSecret};
        let mut rng = ChaCha20Rng::seed_from_u64(25519);
        for i in 0..64 {
            let mut secret = [0u8; 32];
            let mut u = [0u8; 32];
            rng.fill_bytes(&mut secret);
            rng.fill_bytes(&mut u);
            // Top bit set, and u at or above p, every other round: both must be taken mod p.
            if i % 2 == 1 {
                u[31] |= 0x80;
            }
            let theirs = StaticSecret::from(secret);
            assert_eq!(
                dh_public(&secret),
                PublicKey::from(&theirs).to_bytes(),
                "public key, round {i}"
            );
            let ours = dh(&secret, &u).map(|s| *s);
            let shared = theirs.diffie_hellman(&PublicKey::from(u));
            let expected = if shared.was_contributory() {
                Ok(shared.to_bytes())
            } else {
                Err(SessionError::NonContributory)
            };
            assert_eq!(ours, expected, "agreement, round {i}");
        }
        // RFC 7748 §5.2's first vector.
        let k = hex::decode("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
            .unwrap_or_default();
        let u = hex::decode("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
            .unwrap_or_default();
        let (mut kk, mut uu) = ([0u8; 32], [0u8; 32]);
        kk.copy_from_slice(&k);
        uu.copy_from_slice(&u);
        assert_eq!(
            dh(&kk, &uu).map(|s| hex::encode(*s)),
            Ok("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552".to_string())
        );
    }

    #[test]
    fn small_order_and_non_canonical_x25519_keys_are_refused() {
        // 0, 1, a point of order 8, p − 1, p, p + 1, and a key with the top bit set.
        let mut order8 = [0u8; 32];
        order8.copy_from_slice(
            &hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap_or_default(),
        );
        let mut p_minus_1 = [0xff; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let mut p = p_minus_1;
        p[0] = 0xed;
        let mut p_plus_1 = p_minus_1;
        p_plus_1[0] = 0xee;
        let mut high = dh_public(&[7; 32]);
        high[31] |= 0x80;
        for bad in [
            [0u8; 32],
            {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            },
            order8,
            p_minus_1,
            p,
            p_plus_1,
            high,
        ] {
            assert_eq!(
                check_x25519_public(&bad),
                Err(SessionError::WeakKey),
                "{}",
                hex::encode(bad)
            );
        }
        assert_eq!(check_x25519_public(&dh_public(&[7; 32])), Ok(()));
        assert_eq!(
            dh(&[7; 32], &[0; 32]).err(),
            Some(SessionError::NonContributory)
        );
    }

    #[test]
    fn kem_round_trip_and_implicit_rejection() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let kp = KemKeyPair::generate(&mut rng);
        let (ct, ss) = encapsulate(kp.ek(), &mut rng).unwrap_or_else(|_| unreachable!());
        assert_eq!(*kp.decapsulate(&ct), *ss);
        let mut other = ct.clone();
        other[0] ^= 1;
        assert_ne!(*kp.decapsulate(&other), *ss);
        // A seed restores the same key pair.
        let again = KemKeyPair::from_seed(Zeroizing::new(*kp.seed()));
        assert_eq!(again.ek(), kp.ek());
        let mut bad_ek = *kp.ek();
        bad_ek[..2].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(check_kem_ek(&bad_ek), Err(SessionError::BadKemKey));
        assert_eq!(format!("{kp:?}"), "KemKeyPair(<redacted>)");
    }

    #[test]
    fn chain_and_message_keys() {
        let ck = ChainKey(Zeroizing::new([3; 32]));
        let (next, mk) = ck.step().unwrap_or_else(|_| unreachable!());
        let (_, mk_again) = ck.step().unwrap_or_else(|_| unreachable!());
        assert_ne!(*next.0, *mk.0);
        let sealed = mk.encrypt(b"ad", b"text").unwrap_or_default();
        assert_eq!(sealed.len(), 4 + TAG_LEN);
        assert_eq!(
            mk_again.clone().decrypt(b"ad", &sealed).map(|p| p.to_vec()),
            Ok(b"text".to_vec())
        );
        assert_eq!(
            mk_again.clone().decrypt(b"AD", &sealed).err(),
            Some(SessionError::Decrypt)
        );
        assert_eq!(
            mk_again.decrypt(b"ad", &sealed[..10]).err(),
            Some(SessionError::Decrypt)
        );
    }

    #[test]
    fn labels_are_distinct() {
        use super::super::labels::*;
        let all = [
            DEVICE_CERT,
            PREKEY_BUNDLE,
            PQXDH,
            SESSION_ID,
            ROOT,
            MESSAGE_KEY,
            CHAIN_KEY,
            AEAD,
            MESSAGE,
            ENVELOPE_KEY,
            ENVELOPE,
            SAFETY_NUMBER,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.starts_with(b"allium/v1/session/"));
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
