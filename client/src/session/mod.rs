//! Per-device sessions: the pure cryptographic core of end-to-end encryption between devices,
//! specified byte for byte in `whitepaper/sessions.md`.
//!
//! * An account (the Ed25519 identity of `identity`) certifies each of its devices
//!   ([`DeviceCert`]); a device publishes signed prekeys ([`PrekeyBundle`]) and keeps their
//!   secrets ([`PrekeyStore`]).
//! * A session starts asynchronously with PQXDH (X25519 and ML-KEM-768) and continues with the
//!   Double Ratchet, every DH step of which is also an ML-KEM step ([`Session`]).
//! * Messages travel in envelope version 2, sealed to the recipient device's signed prekey with
//!   the sender inside ([`envelope`]).
//! * [`safety_number`] gives the digits two people compare.
//!
//! No I/O and no clock: time is a parameter (Unix milliseconds) and randomness comes from the
//! caller's `CryptoRngCore`, so tests and vectors are deterministic.

pub(crate) mod codec;
pub(crate) mod crypto;
pub mod envelope;
pub(crate) mod keys;
mod peer;
mod ratchet;
mod safety;

pub use keys::{
    BUNDLE_LEN, CERT_LEN, DEVICE_KEYS_LEN, DeviceCert, DeviceKeys, DeviceSecrets, PrekeyBundle,
    PrekeySecrets, PrekeyStore, check_ed25519,
};
pub use peer::{PeerSessions, accepted_wins};
pub use ratchet::{
    Agreement, FIXED_STATE_LEN, HEADER_LEN, Header, OLD_CHAIN_LEN, Payload, RATCHET_OVERHEAD,
    RatchetMessage, Role, SKIPPED_LEN, START_OVERHEAD, Session, StartMessage,
};
pub use safety::{SAFETY_DIGITS, SAFETY_ITERATIONS, fingerprint, grouped, safety_number};

/// Version byte of every encoding in this module except the envelope (version 2).
pub const VERSION: u8 = 1;

/// Length of X25519 keys, Ed25519 public keys, and symmetric keys.
pub const KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;

/// ML-KEM-768 encapsulation key.
pub const KEM_EK_LEN: usize = 1184;

/// ML-KEM-768 ciphertext.
pub const KEM_CT_LEN: usize = 1088;

/// ML-KEM-768 key-generation seed `d || z`, the form in which decapsulation keys are kept.
pub const KEM_SEED_LEN: usize = 64;

/// The largest gap in one receiving chain: a message more than this many ahead is refused.
pub const MAX_SKIP: u32 = 1000;

/// The most message keys a session keeps for messages not received yet; the oldest go first.
pub const MAX_SKIPPED: usize = 1000;

/// How many previous receiving chains a session remembers, to call a replay from one a
/// duplicate rather than a forgery.
pub const MAX_OLD_CHAINS: usize = 8;

/// The storage network's longest mailbox TTL: 14 days.
pub const MAX_MAILBOX_TTL_MS: u64 = 14 * 24 * 3600 * 1000;

/// Skipped message keys older than this are deleted: the message they wait for has left the
/// mailbox by then.
pub const SKIPPED_KEY_TTL_MS: u64 = MAX_MAILBOX_TTL_MS;

/// How far a bundle's `valid_from` may lie ahead of a sender's clock: two devices' clocks,
/// each corrected to the nodes' time, still differ by up to the storage signature window.
pub const CLOCK_SKEW_MS: u64 = 60_000;

/// How often a device makes new prekeys (the caller's schedule).
pub const PREKEY_ROTATION_MS: u64 = 48 * 3600 * 1000;

/// How long senders may use a bundle (`expires − valid_from`): a device offline longer cannot
/// be written to, as its mailbox would not keep the messages anyway.
pub const PREKEY_LIFETIME_MS: u64 = MAX_MAILBOX_TTL_MS;

/// Prekeys an envelope's outer layer is tried with: next, current, previous.
pub const LIVE_PREKEYS: usize = 3;

/// The most prekey sets a store keeps (with 48-hour rotation and 28 days of retention, 14 are
/// needed).
pub const MAX_PREKEY_SETS: usize = 32;

/// The most sessions kept with one peer device.
pub const MAX_PEER_SESSIONS: usize = 4;

/// Every domain-separation string (`whitepaper/sessions.md` §7).
pub mod labels {
    /// Prefix of the account's signature on a device certificate.
    pub const DEVICE_CERT: &[u8] = b"allium/v1/session/device-cert";
    /// Prefix of the device's signature on a prekey bundle.
    pub const PREKEY_BUNDLE: &[u8] = b"allium/v1/session/prekey-bundle";
    /// HKDF info of the PQXDH secret `SK`.
    pub const PQXDH: &[u8] = b"allium/v1/session/pqxdh";
    /// Prefix of the session id hash.
    pub const SESSION_ID: &[u8] = b"allium/v1/session/id";
    /// HKDF info of `KDF_RK`.
    pub const ROOT: &[u8] = b"allium/v1/session/root";
    /// HMAC input deriving a message key from a chain key.
    pub const MESSAGE_KEY: &[u8] = b"allium/v1/session/message-key";
    /// HMAC input deriving the next chain key.
    pub const CHAIN_KEY: &[u8] = b"allium/v1/session/chain-key";
    /// HKDF info of a message's AES key and nonce.
    pub const AEAD: &[u8] = b"allium/v1/session/aead";
    /// Prefix of a message's associated data.
    pub const MESSAGE: &[u8] = b"allium/v1/session/message";
    /// HKDF info of the envelope key.
    pub const ENVELOPE_KEY: &[u8] = b"allium/v1/session/envelope/key";
    /// Prefix of the envelope's associated data.
    pub const ENVELOPE: &[u8] = b"allium/v1/session/envelope";
    /// Prefix of the first safety-number hash.
    pub const SAFETY_NUMBER: &[u8] = b"allium/v1/session/safety-number";
}

/// Why a session operation failed. Every variant leaves the session, store or bundle as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// An encoding is truncated, too long, or holds a value its format forbids.
    #[error("malformed {what}")]
    Malformed {
        /// Which encoding.
        what: &'static str,
    },
    /// An encoding of a version this client does not know.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// Which encoding.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// A public key that is not canonical or has small order.
    #[error("a public key is non-canonical or of small order")]
    WeakKey,
    /// An ML-KEM encapsulation key that fails the FIPS 203 check.
    #[error("invalid ML-KEM-768 encapsulation key")]
    BadKemKey,
    /// The account's signature on a device certificate does not verify.
    #[error("the device certificate's signature does not verify")]
    BadCertSignature,
    /// The device's signature on a prekey bundle does not verify.
    #[error("the prekey bundle's signature does not verify")]
    BadBundleSignature,
    /// A bundle certified by another account than expected.
    #[error("the prekey bundle belongs to another account")]
    WrongAccount,
    /// A bundle whose `valid_from` is still ahead.
    #[error("the prekey bundle is not valid yet")]
    BundleNotYetValid,
    /// A bundle past its `expires`: fetch a newer one.
    #[error("the prekey bundle has expired")]
    BundleExpired,
    /// An X25519 exchange gave all zeros (a small-order key).
    #[error("non-contributory X25519 exchange")]
    NonContributory,
    /// A start message names prekeys this device never had.
    #[error("unknown prekey")]
    UnknownPrekey,
    /// A start message names prekeys deleted after their retention.
    #[error("the prekey of this start message has expired and was deleted")]
    PrekeyExpired,
    /// A message for another session, or a start message sent to its initiator.
    #[error("message for another session")]
    WrongSession,
    /// A ratchet message for a session this device does not have.
    #[error("no session for this message")]
    UnknownSession,
    /// No session to send with.
    #[error("no session with this device")]
    NoSession,
    /// The envelope's sender is not the session's peer.
    #[error("the sender is not this session's peer device")]
    WrongSender,
    /// No key for this message: it was decrypted already, or its skipped key was dropped.
    #[error("duplicate message (its key is gone)")]
    Duplicate,
    /// A message more than `MAX_SKIP` ahead in its chain.
    #[error("message {gap} ahead in its chain, more than the allowed gap")]
    TooFarAhead {
        /// How far ahead.
        gap: u32,
    },
    /// A later message of a chain repeats other KEM fields than its first.
    #[error("the chain's KEM fields differ from its first message")]
    HeaderMismatch,
    /// Authentication failed: not for this session or device, or altered.
    #[error("decryption failed (altered, or not for us)")]
    Decrypt,
    /// A chain's or a counter's 2^32 values are used up.
    #[error("counter exhausted")]
    CounterExhausted,
    /// A message too large for the largest envelope.
    #[error("message too large for an envelope")]
    TooLarge,
    /// An envelope whose length is not a bucket size.
    #[error("envelope length {len} is not a bucket size")]
    EnvelopeLength {
        /// Length received.
        len: usize,
    },
    /// Bytes after the body of an envelope are not zero.
    #[error("non-zero padding")]
    NonZeroPadding,
    /// A key derivation refused its input (never happens with the fixed lengths used).
    #[error("key derivation failed")]
    Kdf,
}
