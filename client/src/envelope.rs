//! The sealed-sender envelope: what one user stores in another's mailbox.
//!
//! The envelope is encrypted to the recipient's X25519 key (the Montgomery form of the Ed25519 key
//! in their address) under a fresh ephemeral key. The sender's identity and their signature are
//! inside the ciphertext, so the swarm that stores it sees only a recipient mailbox, a bucket
//! size and random-looking bytes. The signature covers the recipient's key and the ephemeral key,
//! so a recipient cannot re-seal a message to someone else as if it had been sent to them.
//! Specified byte for byte in `whitepaper/client.md` §4–§6.
//!
//! ```text
//! envelope  = 0x01 || E_pub (32) || C || tag (16)          length ∈ BUCKETS
//! P         = header (62) || signature (64) || body || 0^pad
//! header    = 0x01 || kind || msg_id (16) || u64be(timestamp_ms) || sender (32) || u32be(|body|)
//! signature = Ed25519(sender, "allium/v1/envelope/sign" || R_ed || E_pub || header || body)
//! k         = BLAKE2b-256(key = X25519(e, R_x), E_pub || R_x || "allium/v1/envelope/key")
//! C, tag    = AES-256-GCM(k, nonce = 0^12, aad = "allium/v1/envelope" || 0x01, P)
//! ```

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use blake2::Blake2bMac;
use blake2::digest::consts::U32;
use blake2::digest::{FixedOutput, Mac};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::identity::{Address, Identity, KEY_LEN};

/// Envelope format version: the first byte of the envelope and of its plaintext.
pub const VERSION: u8 = 1;

/// Message kind of a UTF-8 text message.
pub const KIND_TEXT: u8 = 0;

/// The allowed total envelope lengths. 3072 leaves room for a store request around the envelope in
/// a 4096-byte onion packet; 61440 is the storage protocol's largest message.
pub const BUCKETS: [usize; 5] = [512, 1024, 3072, 16384, 61440];

/// Signature domain, prefixed to the signed message.
pub const SIGN_DOMAIN: &[u8] = b"allium/v1/envelope/sign";

/// KDF label, appended to `E_pub || R_x`.
pub const KEY_LABEL: &[u8] = b"allium/v1/envelope/key";

/// AEAD associated data, followed by the version byte.
pub const AAD_PREFIX: &[u8] = b"allium/v1/envelope";

/// Length of a message id.
pub const MSG_ID_LEN: usize = 16;

/// Plaintext header: version, kind, message id, timestamp, sender key, body length.
pub const HEADER_LEN: usize = 1 + 1 + MSG_ID_LEN + 8 + KEY_LEN + 4;

/// Length of the Ed25519 signature that follows the header.
pub const SIGNATURE_LEN: usize = 64;

const TAG_LEN: usize = 16;

/// Bytes outside the plaintext: version, ephemeral key, tag.
const OUTER_LEN: usize = 1 + KEY_LEN + TAG_LEN;

/// Bytes an envelope adds to its body.
pub const OVERHEAD: usize = OUTER_LEN + HEADER_LEN + SIGNATURE_LEN;

const BODY_OFFSET: usize = HEADER_LEN + SIGNATURE_LEN;

/// The largest body an envelope carries (in the largest bucket).
pub const fn max_body_len() -> usize {
    BUCKETS[BUCKETS.len() - 1] - OVERHEAD
}

/// The envelope length for a body of `body_len` bytes: the smallest bucket it fits.
pub fn bucket_for(body_len: usize) -> Option<usize> {
    let needed = body_len.checked_add(OVERHEAD)?;
    BUCKETS.iter().copied().find(|&b| b >= needed)
}

/// Why an envelope could not be sealed or opened. On open, every variant means "discard".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The body does not fit the largest bucket.
    #[error("body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Body length.
        len: usize,
        /// Largest body.
        max: usize,
    },
    /// A plaintext handed to the low-level encryption has no bucket length.
    #[error("plaintext of {len} bytes does not fill a bucket")]
    BadPlaintextLength {
        /// Plaintext length.
        len: usize,
    },
    /// The X25519 exchange gave all zeros: the recipient key has small order.
    #[error("non-contributory X25519 exchange with the recipient key")]
    NonContributory,
    /// The envelope's length is not one of [`BUCKETS`].
    #[error("envelope length {len} is not a bucket size")]
    BadLength {
        /// Length received.
        len: usize,
    },
    /// An envelope version this client does not know.
    #[error("unknown envelope version {0}")]
    BadVersion(u8),
    /// The ephemeral key has small order (the shared secret would be all zero).
    #[error("low-order ephemeral key")]
    LowOrderEphemeral,
    /// Authentication failed: not for this recipient, or altered.
    #[error("envelope does not decrypt (not for us, or altered)")]
    Decrypt,
    /// The plaintext carries an unknown version.
    #[error("unknown plaintext version {0}")]
    UnknownPlaintextVersion(u8),
    /// The body length field exceeds the plaintext.
    #[error("body length field exceeds the plaintext")]
    BadBodyLength,
    /// Bytes after the body are not zero.
    #[error("non-zero padding")]
    NonZeroPadding,
    /// The sender field is not a valid address key.
    #[error("the sender key is not a valid Ed25519 public key")]
    BadSender,
    /// The sender's signature does not verify for this recipient and envelope.
    #[error("the sender's signature does not verify")]
    BadSignature,
}

/// An opened envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// Who sent it (authenticated by the signature).
    pub sender: Address,
    /// Message kind ([`KIND_TEXT`] = 0).
    pub kind: u8,
    /// The sender's random message id; the recipient drops ids it has seen.
    pub msg_id: [u8; MSG_ID_LEN],
    /// The sender's clock at sealing, in milliseconds since the Unix epoch (not verified).
    pub timestamp: u64,
    /// The message.
    pub body: Vec<u8>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Message contents never reach logs.
        f.debug_struct("Opened")
            .field("sender", &self.sender)
            .field("kind", &self.kind)
            .field("timestamp", &self.timestamp)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Seals `body` from `sender` to `recipient` with a random ephemeral key and message id, stamped
/// with `timestamp` (Unix ms; the client's clock corrected by the nodes' time).
pub fn seal(
    sender: &Identity,
    recipient: &Address,
    kind: u8,
    body: &[u8],
    timestamp: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Sealed, EnvelopeError> {
    let mut ephemeral = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(ephemeral.as_mut());
    let mut msg_id = [0u8; MSG_ID_LEN];
    rng.fill_bytes(&mut msg_id);
    let bytes = seal_deterministic(sender, recipient, kind, body, &ephemeral, msg_id, timestamp)?;
    Ok(Sealed { bytes, msg_id })
}

/// A sealed envelope and the message id inside it (the sender keeps it to recognise the
/// message in its own history).
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The envelope, ready to store.
    pub bytes: Vec<u8>,
    /// The message id sealed inside.
    pub msg_id: [u8; MSG_ID_LEN],
}

/// [`seal`] with every random or time-dependent input given: for test vectors only. Reusing an
/// ephemeral secret reuses the AES-GCM key and nonce.
#[doc(hidden)]
pub fn seal_deterministic(
    sender: &Identity,
    recipient: &Address,
    kind: u8,
    body: &[u8],
    ephemeral_secret: &[u8; KEY_LEN],
    msg_id: [u8; MSG_ID_LEN],
    timestamp: u64,
) -> Result<Vec<u8>, EnvelopeError> {
    let max = max_body_len();
    let too_large = EnvelopeError::TooLarge {
        len: body.len(),
        max,
    };
    let bucket = bucket_for(body.len()).ok_or(too_large)?;
    let body_len = u32::try_from(body.len()).map_err(|_| too_large)?;
    let e = StaticSecret::from(*ephemeral_secret);
    let e_pub = PublicKey::from(&e).to_bytes();

    let mut plaintext = Zeroizing::new(vec![0u8; bucket - OUTER_LEN]);
    let header = &mut plaintext[..HEADER_LEN];
    header[0] = VERSION;
    header[1] = kind;
    header[2..18].copy_from_slice(&msg_id);
    header[18..26].copy_from_slice(&timestamp.to_be_bytes());
    header[26..58].copy_from_slice(sender.public().as_bytes());
    header[58..62].copy_from_slice(&body_len.to_be_bytes());
    plaintext[BODY_OFFSET..BODY_OFFSET + body.len()].copy_from_slice(body);

    let signed = signed_message(
        recipient.public_key().as_bytes(),
        &e_pub,
        &plaintext[..HEADER_LEN],
        body,
    );
    let signature = sender.keypair().sign(&signed);
    plaintext[HEADER_LEN..BODY_OFFSET].copy_from_slice(&signature);

    encrypt_with(recipient, e, &e_pub, plaintext)
}

/// Encrypts a complete plaintext `P` (bucket length − 49 bytes) to `recipient`, without looking
/// inside it. For tests that build envelopes a sender would not, such as a re-sealed message.
#[doc(hidden)]
pub fn encrypt_plaintext(
    recipient: &Address,
    ephemeral_secret: &[u8; KEY_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if !BUCKETS.contains(&(plaintext.len() + OUTER_LEN)) {
        return Err(EnvelopeError::BadPlaintextLength {
            len: plaintext.len(),
        });
    }
    let e = StaticSecret::from(*ephemeral_secret);
    let e_pub = PublicKey::from(&e).to_bytes();
    encrypt_with(recipient, e, &e_pub, Zeroizing::new(plaintext.to_vec()))
}

fn encrypt_with(
    recipient: &Address,
    e: StaticSecret,
    e_pub: &[u8; KEY_LEN],
    mut plaintext: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, EnvelopeError> {
    let r_x = recipient.x25519_public();
    let shared = e.diffie_hellman(&PublicKey::from(r_x));
    if !shared.was_contributory() {
        return Err(EnvelopeError::NonContributory);
    }
    let key = derive_key(shared.as_bytes(), e_pub, &r_x).ok_or(EnvelopeError::NonContributory)?;
    let tag = gcm(&key)
        .encrypt_in_place_detached(&Nonce::default(), &aad(), plaintext.as_mut_slice())
        .map_err(|_| EnvelopeError::BadPlaintextLength {
            len: plaintext.len(),
        })?;
    let mut out = Vec::with_capacity(OUTER_LEN + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(e_pub);
    out.extend_from_slice(&plaintext);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts an envelope to its plaintext `P` without parsing it; the first half of [`open`].
#[doc(hidden)]
pub fn decrypt_plaintext(
    recipient: &Identity,
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let len = envelope.len();
    if !BUCKETS.contains(&len) {
        return Err(EnvelopeError::BadLength { len });
    }
    if envelope[0] != VERSION {
        return Err(EnvelopeError::BadVersion(envelope[0]));
    }
    let mut e_pub = [0u8; KEY_LEN];
    e_pub.copy_from_slice(&envelope[1..1 + KEY_LEN]);
    let secret = StaticSecret::from(*recipient.x25519_secret());
    let shared = secret.diffie_hellman(&PublicKey::from(e_pub));
    if !shared.was_contributory() {
        return Err(EnvelopeError::LowOrderEphemeral);
    }
    let r_x = recipient.x25519_public();
    let key = derive_key(shared.as_bytes(), &e_pub, &r_x).ok_or(EnvelopeError::Decrypt)?;
    let mut plaintext = Zeroizing::new(envelope[1 + KEY_LEN..len - TAG_LEN].to_vec());
    let tag = Tag::from_slice(&envelope[len - TAG_LEN..]);
    gcm(&key)
        .decrypt_in_place_detached(&Nonce::default(), &aad(), plaintext.as_mut_slice(), tag)
        .map_err(|_| EnvelopeError::Decrypt)?;
    Ok(plaintext)
}

/// Opens an envelope addressed to `recipient`, checking everything before returning anything.
pub fn open(recipient: &Identity, envelope: &[u8]) -> Result<Opened, EnvelopeError> {
    let plaintext = decrypt_plaintext(recipient, envelope)?;
    let p: &[u8] = &plaintext;
    if p[0] != VERSION {
        return Err(EnvelopeError::UnknownPlaintextVersion(p[0]));
    }
    let kind = p[1];
    let mut msg_id = [0u8; MSG_ID_LEN];
    msg_id.copy_from_slice(&p[2..18]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&p[18..26]);
    let timestamp = u64::from_be_bytes(ts);
    let mut sender_key = [0u8; KEY_LEN];
    sender_key.copy_from_slice(&p[26..58]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&p[58..62]);
    let body_len =
        usize::try_from(u32::from_be_bytes(len)).map_err(|_| EnvelopeError::BadBodyLength)?;
    if body_len > p.len() - BODY_OFFSET {
        return Err(EnvelopeError::BadBodyLength);
    }
    let body_end = BODY_OFFSET + body_len;
    let body = &p[BODY_OFFSET..body_end];
    // Padding is fixed so that an envelope has one valid plaintext for its content.
    let nonzero = p[body_end..].iter().fold(0u8, |acc, b| acc | b);
    if !bool::from(nonzero.ct_eq(&0)) {
        return Err(EnvelopeError::NonZeroPadding);
    }
    let sender = Address::from_key_bytes(&sender_key).map_err(|_| EnvelopeError::BadSender)?;
    let e_pub = &envelope[1..1 + KEY_LEN];
    let signed = signed_message(recipient.public().as_bytes(), e_pub, &p[..HEADER_LEN], body);
    sender
        .public_key()
        .verify(&signed, &p[HEADER_LEN..BODY_OFFSET])
        .map_err(|_| EnvelopeError::BadSignature)?;
    Ok(Opened {
        sender,
        kind,
        msg_id,
        timestamp,
        body: body.to_vec(),
    })
}

/// `"allium/v1/envelope/sign" || R_ed || E_pub || header || body`.
fn signed_message(r_ed: &[u8], e_pub: &[u8], header: &[u8], body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut m = Zeroizing::new(Vec::with_capacity(
        SIGN_DOMAIN.len() + 2 * KEY_LEN + HEADER_LEN + body.len(),
    ));
    m.extend_from_slice(SIGN_DOMAIN);
    m.extend_from_slice(r_ed);
    m.extend_from_slice(e_pub);
    m.extend_from_slice(header);
    m.extend_from_slice(body);
    m
}

/// `BLAKE2b-256(key = ss, E_pub || R_x || "allium/v1/envelope/key")`: binds the key to this
/// exchange, as the onion layers' keys are. `None` only if BLAKE2b refused a 32-byte key, which it
/// never does (it takes up to 64).
fn derive_key(
    shared: &[u8; KEY_LEN],
    e_pub: &[u8; KEY_LEN],
    r_x: &[u8; KEY_LEN],
) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut mac = <Blake2bMac<U32> as KeyInit>::new_from_slice(shared).ok()?;
    Mac::update(&mut mac, e_pub);
    Mac::update(&mut mac, r_x);
    Mac::update(&mut mac, KEY_LABEL);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&mac.finalize_fixed());
    Some(key)
}

fn gcm(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

/// `"allium/v1/envelope" || version`.
fn aad() -> [u8; 19] {
    let mut a = [0u8; 19];
    a[..18].copy_from_slice(AAD_PREFIX);
    a[18] = VERSION;
    a
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn id(n: u8) -> Identity {
        Identity::from_seed(&[n; KEY_LEN])
    }

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn constants() {
        assert_eq!(HEADER_LEN, 62);
        assert_eq!(OVERHEAD, 175);
        assert_eq!(max_body_len(), 61_440 - 175);
        assert_eq!(aad().as_slice(), b"allium/v1/envelope\x01");
        assert_eq!(bucket_for(0), Some(512));
        assert_eq!(bucket_for(337), Some(512));
        assert_eq!(bucket_for(338), Some(1024));
        assert_eq!(bucket_for(max_body_len()), Some(61_440));
        assert_eq!(bucket_for(max_body_len() + 1), None);
        assert_eq!(bucket_for(usize::MAX), None);
    }

    #[test]
    fn round_trip_at_every_bucket_boundary() {
        let (alice, bob) = (id(1), id(2));
        let mut rng = rng();
        let mut sizes = vec![0, 1, 100];
        for b in BUCKETS {
            sizes.extend([b - OVERHEAD - 1, b - OVERHEAD, b - OVERHEAD + 1]);
        }
        for len in sizes {
            let body: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            if len > max_body_len() {
                assert_eq!(
                    seal(
                        &alice,
                        &bob.address(),
                        KIND_TEXT,
                        &body,
                        1_700_000_000_000,
                        &mut rng
                    )
                    .map(|s| s.bytes),
                    Err(EnvelopeError::TooLarge {
                        len,
                        max: max_body_len()
                    })
                );
                continue;
            }
            let env = seal(
                &alice,
                &bob.address(),
                5,
                &body,
                1_700_000_000_000,
                &mut rng,
            )
            .unwrap()
            .bytes;
            assert_eq!(Some(env.len()), bucket_for(len), "len {len}");
            assert!(BUCKETS.contains(&env.len()));
            let opened = open(&bob, &env).unwrap();
            assert_eq!(opened.sender, alice.address());
            assert_eq!(opened.kind, 5);
            assert_eq!(opened.body, body);
            assert!(opened.timestamp > 1_600_000_000_000);
        }
    }

    #[test]
    fn deterministic_fields_survive() {
        let (alice, bob) = (id(1), id(2));
        let env =
            seal_deterministic(&alice, &bob.address(), 9, b"hi", &[3; 32], [4; 16], 1234).unwrap();
        let o = open(&bob, &env).unwrap();
        assert_eq!((o.kind, o.msg_id, o.timestamp), (9, [4; 16], 1234));
        assert_eq!(o.body, b"hi");
        let dbg = format!("{o:?}");
        assert!(dbg.contains("body_len: 2") && !dbg.contains("104"));
    }

    #[test]
    fn tampering_any_sampled_byte_fails() {
        let (alice, bob) = (id(1), id(2));
        let env = seal(
            &alice,
            &bob.address(),
            KIND_TEXT,
            b"tamper",
            1_700_000_000_000,
            &mut rng(),
        )
        .unwrap()
        .bytes;
        let n = env.len();
        let mut positions = vec![0, 1, 16, 32, 33, 34, 100, 300, n - 17, n - 16, n - 8, n - 1];
        positions.extend((0..n).step_by(13));
        for pos in positions {
            for flip in [1u8, 0x80, 0xff] {
                let mut bad = env.clone();
                bad[pos] ^= flip;
                assert!(
                    open(&bob, &bad).is_err(),
                    "flip {flip:#x} at {pos} accepted"
                );
            }
        }
        assert_eq!(
            open(&bob, &[&[2u8], &env[1..]].concat()),
            Err(EnvelopeError::BadVersion(2))
        );
        assert_eq!(
            open(&bob, &env[..n - 1]),
            Err(EnvelopeError::BadLength { len: n - 1 })
        );
        assert_eq!(
            open(&bob, &[env.as_slice(), &[0]].concat()),
            Err(EnvelopeError::BadLength { len: n + 1 })
        );
    }

    #[test]
    fn another_recipient_cannot_open() {
        let (alice, bob, carol) = (id(1), id(2), id(3));
        let env = seal(
            &alice,
            &bob.address(),
            KIND_TEXT,
            b"for bob",
            1_700_000_000_000,
            &mut rng(),
        )
        .unwrap()
        .bytes;
        assert_eq!(open(&carol, &env), Err(EnvelopeError::Decrypt));
        assert_eq!(open(&alice, &env), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let bob = id(2);
        let env = seal(
            &id(1),
            &bob.address(),
            KIND_TEXT,
            b"x",
            1_700_000_000_000,
            &mut rng(),
        )
        .unwrap()
        .bytes;
        // u = 0 and u = 1 have small order on Curve25519.
        for u in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let mut bad = env.clone();
            bad[1..33].copy_from_slice(&u);
            assert_eq!(open(&bob, &bad), Err(EnvelopeError::LowOrderEphemeral));
        }
    }

    #[test]
    fn resealing_to_another_recipient_fails_the_signature() {
        // Bob receives a message from Alice and re-encrypts the very same plaintext (Alice's
        // header, signature and body) to Carol, hoping Carol believes Alice wrote to her.
        let (alice, bob, carol) = (id(1), id(2), id(3));
        let env = seal(
            &alice,
            &bob.address(),
            KIND_TEXT,
            b"I owe you 5",
            1_700_000_000_000,
            &mut rng(),
        )
        .unwrap()
        .bytes;
        let p = decrypt_plaintext(&bob, &env).unwrap();
        let forged = encrypt_plaintext(&carol.address(), &[9; 32], &p).unwrap();
        assert_eq!(open(&carol, &forged), Err(EnvelopeError::BadSignature));
        // Re-encrypting to Bob himself under a new ephemeral key fails too: E_pub is signed.
        let again = encrypt_plaintext(&bob.address(), &[9; 32], &p).unwrap();
        assert_eq!(open(&bob, &again), Err(EnvelopeError::BadSignature));
        // The re-encryption itself is sound: the same plaintext under its own key opens.
        let e = StaticSecret::from([9u8; 32]);
        assert_ne!(PublicKey::from(&e).to_bytes().as_slice(), &env[1..33]);
    }

    #[test]
    fn plaintext_checks_are_typed() {
        let (alice, bob) = (id(1), id(2));
        let env =
            seal_deterministic(&alice, &bob.address(), 0, b"abc", &[5; 32], [1; 16], 7).unwrap();
        let p = decrypt_plaintext(&bob, &env).unwrap();
        let reseal = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut q = p.to_vec();
            edit(&mut q);
            let e = encrypt_plaintext(&bob.address(), &[6; 32], &q).unwrap();
            open(&bob, &e)
        };
        assert_eq!(
            reseal(&|q| q[0] = 2),
            Err(EnvelopeError::UnknownPlaintextVersion(2))
        );
        assert_eq!(
            reseal(&|q| q[58..62].copy_from_slice(&u32::MAX.to_be_bytes())),
            Err(EnvelopeError::BadBodyLength)
        );
        let room = (512 - OVERHEAD + 1) as u32;
        assert_eq!(
            reseal(&|q| q[58..62].copy_from_slice(&room.to_be_bytes())),
            Err(EnvelopeError::BadBodyLength)
        );
        assert_eq!(
            reseal(&|q| {
                let last = q.len() - 1;
                q[last] = 1;
            }),
            Err(EnvelopeError::NonZeroPadding)
        );
        assert_eq!(
            reseal(&|q| q[26..58].copy_from_slice(&[0; 32])),
            Err(EnvelopeError::BadSender)
        );
        // Unchanged plaintext under a different ephemeral key: the signature binds E_pub.
        assert_eq!(reseal(&|_| {}), Err(EnvelopeError::BadSignature));
        assert_eq!(
            encrypt_plaintext(&bob.address(), &[6; 32], &p[1..]),
            Err(EnvelopeError::BadPlaintextLength { len: p.len() - 1 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = open(&id(2), &bytes);
        }

        #[test]
        fn open_bucket_sized_garbage_never_panics(
            bucket in 0usize..3,
            fill in proptest::collection::vec(any::<u8>(), 64),
        ) {
            let len = BUCKETS[bucket];
            let mut bytes: Vec<u8> = fill.iter().copied().cycle().take(len).collect();
            bytes[0] = VERSION;
            prop_assert!(open(&id(2), &bytes).is_err());
        }

        #[test]
        fn round_trip_any_body(body in proptest::collection::vec(any::<u8>(), 0..1200), kind: u8) {
            let env = seal(&id(1), &id(2).address(), kind, &body, 1_700_000_000_000, &mut rng()).unwrap().bytes;
            let o = open(&id(2), &env).unwrap();
            prop_assert_eq!(o.body, body);
            prop_assert_eq!(o.kind, kind);
        }
    }
}
