//! Envelope version 2 (`whitepaper/sessions.md` §9): the sealed-sender outer layer of session
//! messages, encrypted to the recipient device's current signed prekey.
//!
//! ```text
//! envelope = 0x02 || E_pub (32) || C || tag (16)                      length ∈ BUCKETS
//! P        = 0x02 || type || sender cert (173) || u32be(L) || body (L) || 0^pad
//! k        = HKDF-SHA-256(salt = E_pub || SPK, IKM = X25519(e, SPK), "allium/v1/session/envelope/key")
//! C, tag   = AES-256-GCM(k, 0^12, "allium/v1/session/envelope" || 0x02, P)
//! ```
//!
//! The sender is inside: the swarm sees a mailbox, a bucket and uniform bytes. No prekey id is
//! in clear, so the recipient tries its live prekeys (at most three).

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::codec::Reader;
use super::crypto;
use super::keys::{CERT_LEN, DeviceCert, DeviceKeys, PrekeyBundle, PrekeyStore};
use super::ratchet::{Payload, RatchetMessage, StartMessage};
use super::{KEY_LEN, SessionError, TAG_LEN, labels};

/// The lengths an envelope may have: a message is padded to the smallest that holds it, so its
/// length tells at most which of five sizes it is.
pub const BUCKETS: [usize; 5] = [512, 1024, 3072, 16384, 61440];

/// Envelope version 2: the first byte of the envelope and of its plaintext.
pub const ENVELOPE_VERSION: u8 = 2;

/// `type` of a plaintext carrying a start message.
pub const TYPE_START: u8 = 0;

/// `type` of a plaintext carrying a ratchet message.
pub const TYPE_RATCHET: u8 = 1;

/// Bytes outside the plaintext: version, ephemeral key, tag.
const OUTER_LEN: usize = 1 + KEY_LEN + TAG_LEN;

/// Plaintext bytes before the body: version, type, sender certificate, body length.
const INNER_LEN: usize = 1 + 1 + CERT_LEN + 4;

/// Bytes an envelope adds to its body (the encoded start or ratchet message).
pub const ENVELOPE_OVERHEAD: usize = OUTER_LEN + INNER_LEN;

/// The envelope length for a body of `len` bytes: the smallest bucket it fits.
pub fn bucket_for(len: usize) -> Option<usize> {
    let needed = len.checked_add(ENVELOPE_OVERHEAD)?;
    BUCKETS.iter().copied().find(|&b| b >= needed)
}

/// An opened envelope: the sender device (its certificate verified) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The sending device; authenticated only once its message decrypts in a session.
    pub sender: DeviceCert,
    /// The start or ratchet message.
    pub payload: Payload,
}

/// `k = HKDF(salt = E_pub || SPK, IKM = ss, info = "…/envelope/key")`.
fn envelope_key(
    ss: &[u8; KEY_LEN],
    e_pub: &[u8; KEY_LEN],
    spk: &[u8; KEY_LEN],
) -> Result<Aes256Gcm, SessionError> {
    let k = crypto::hkdf::<32>(
        &[e_pub.as_slice(), spk].concat(),
        &[ss],
        labels::ENVELOPE_KEY,
    )?;
    Aes256Gcm::new_from_slice(k.as_ref()).map_err(|_| SessionError::Kdf)
}

fn aad() -> Vec<u8> {
    [labels::ENVELOPE, &[ENVELOPE_VERSION]].concat()
}

/// Seals `payload` from `sender` to the device of `recipient` (its current bundle, valid at
/// `now`). Draws the 32-byte ephemeral secret.
pub fn seal(
    sender: &DeviceKeys,
    recipient: &PrekeyBundle,
    payload: &Payload,
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, SessionError> {
    recipient.check_time(now)?;
    let e = crypto::random_secret(rng);
    seal_with(sender.cert(), recipient, payload, &e)
}

/// [`seal`] with the ephemeral secret given, for the test vectors.
#[doc(hidden)]
pub fn seal_with(
    sender: &DeviceCert,
    recipient: &PrekeyBundle,
    payload: &Payload,
    e: &[u8; KEY_LEN],
) -> Result<Vec<u8>, SessionError> {
    let (kind, body) = match payload {
        Payload::Start(s) => (TYPE_START, s.encode()),
        Payload::Ratchet(m) => (TYPE_RATCHET, m.encode()),
    };
    let bucket = bucket_for(body.len()).ok_or(SessionError::TooLarge)?;
    let body_len = u32::try_from(body.len()).map_err(|_| SessionError::TooLarge)?;
    let mut p = Zeroizing::new(Vec::with_capacity(bucket - OUTER_LEN));
    p.push(ENVELOPE_VERSION);
    p.push(kind);
    p.extend_from_slice(sender.as_bytes());
    p.extend_from_slice(&body_len.to_be_bytes());
    p.extend_from_slice(&body);
    p.resize(bucket - OUTER_LEN, 0);

    let spk = recipient.spk();
    let e_pub = crypto::dh_public(e);
    let ss = crypto::dh(e, &spk)?;
    let tag = envelope_key(&ss, &e_pub, &spk)?
        .encrypt_in_place_detached(&Nonce::default(), &aad(), p.as_mut_slice())
        .map_err(|_| SessionError::TooLarge)?;
    let mut out = Vec::with_capacity(bucket);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&e_pub);
    out.extend_from_slice(&p);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Removes the outer layer with the live prekeys of `prekeys` (newest first, at most three)
/// and returns the plaintext `P`; the first half of [`open`].
#[doc(hidden)]
pub fn decrypt_plaintext(
    prekeys: &PrekeyStore,
    envelope: &[u8],
    now: u64,
) -> Result<Zeroizing<Vec<u8>>, SessionError> {
    let len = envelope.len();
    if !BUCKETS.contains(&len) {
        return Err(SessionError::EnvelopeLength { len });
    }
    if envelope[0] != ENVELOPE_VERSION {
        return Err(SessionError::UnknownVersion {
            what: "envelope",
            version: envelope[0],
        });
    }
    let mut e_pub = [0u8; KEY_LEN];
    e_pub.copy_from_slice(&envelope[1..1 + KEY_LEN]);
    let body = &envelope[1 + KEY_LEN..len - TAG_LEN];
    let tag = Tag::from_slice(&envelope[len - TAG_LEN..]);
    for set in prekeys.live(now) {
        // A small-order E_pub gives zero with every prekey: refuse it at the first.
        let ss = crypto::dh(&set.spk, &e_pub)?;
        let mut p = Zeroizing::new(body.to_vec());
        let opened = envelope_key(&ss, &e_pub, &set.spk_pub)?
            .decrypt_in_place_detached(&Nonce::default(), &aad(), p.as_mut_slice(), tag)
            .is_ok();
        if opened {
            return Ok(p);
        }
    }
    Err(SessionError::Decrypt)
}

/// Opens an envelope with the device's prekeys at `now`: outer layer, plaintext checks, the
/// sender certificate (verified), and the message, decoded but not yet decrypted.
pub fn open(prekeys: &PrekeyStore, envelope: &[u8], now: u64) -> Result<Opened, SessionError> {
    let p = decrypt_plaintext(prekeys, envelope, now)?;
    let mut r = Reader::new(&p, "envelope plaintext");
    r.version(ENVELOPE_VERSION)?;
    let kind = r.u8()?;
    let sender = DeviceCert::decode(r.take(CERT_LEN)?)?;
    let len = usize::try_from(r.u32()?).map_err(|_| SessionError::Malformed {
        what: "envelope plaintext",
    })?;
    let body = r.take(len)?;
    let padding = r.rest();
    // Padding is fixed so that a plaintext has one encoding and carries no covert channel.
    let nonzero = padding.iter().fold(0u8, |acc, b| acc | b);
    if !bool::from(nonzero.ct_eq(&0)) {
        return Err(SessionError::NonZeroPadding);
    }
    let payload = match kind {
        TYPE_START => Payload::Start(StartMessage::decode(body)?),
        TYPE_RATCHET => Payload::Ratchet(RatchetMessage::decode(body)?),
        _ => {
            return Err(SessionError::Malformed {
                what: "envelope plaintext (type)",
            });
        }
    };
    Ok(Opened { sender, payload })
}
