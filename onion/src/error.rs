//! Typed errors. None of them carries secret material or attacker-chosen bytes.

use crate::epoch::Epoch;

/// Why a key, certificate or shared secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Bytes of the wrong length for this kind of key.
    #[error("wrong length for a key: expected {expected} bytes, got {got}")]
    BadLength {
        /// Expected length.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// Bytes that are not a valid Ed25519 point.
    #[error("not a valid Ed25519 public key")]
    BadIdentityKey,
    /// An Ed25519 point of small order: no signature by it can verify under the strict rules,
    /// and with the cofactorless rules one signature would verify for many messages.
    #[error("an Ed25519 public key of small order")]
    SmallOrderIdentityKey,
    /// A second encoding of a point (the y coordinate not reduced mod p): the key has another,
    /// canonical, spelling, so two texts would name one key.
    #[error("a non-canonical encoding of an Ed25519 public key")]
    NonCanonicalIdentityKey,
    /// An Ed25519 signature that does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// An X25519 exchange whose result is all zero (low-order or zero point).
    #[error("non-contributory X25519 key (low-order point)")]
    NonContributory,
}

/// Why a packet could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Paths have 1 to [`MAX_HOPS`](crate::MAX_HOPS) layers.
    #[error("a path has 1 to {max} layers, got {got}")]
    BadPathLength {
        /// Maximum number of layers.
        max: usize,
        /// Layers requested.
        got: usize,
    },
    /// The request does not fit the chosen size class.
    #[error("request of {len} bytes exceeds the {max}-byte limit of the {class} class")]
    RequestTooLarge {
        /// Request length.
        len: usize,
        /// Largest request the class carries.
        max: usize,
        /// The class that was asked for.
        class: crate::SizeClass,
    },
    /// A hop's onion key is a low-order point.
    #[error("onion key of hop {hop} is non-contributory")]
    NonContributory {
        /// Index of the hop in the path.
        hop: usize,
    },
    /// A path session has numbered 2^32 packets; open another.
    #[error("the path session has numbered all its packets")]
    SessionExhausted,
}

/// Why a node refused to peel a packet.
///
/// Every variant means "drop the packet". The variants exist for counters and debug logs; none is
/// ever sent back to the previous hop, so they give no oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeelError {
    /// The length is not one of the packet size classes.
    #[error("packet length {0} is not a size class")]
    BadSize(usize),
    /// Unknown format version byte.
    #[error("unknown packet version {0}")]
    BadVersion(u8),
    /// The packet names an epoch this node holds no onion key for (expired, future, or another
    /// node's).
    #[error("no onion key for epoch {0}")]
    UnknownEpoch(Epoch),
    /// The ephemeral key gives an all-zero shared secret.
    #[error("non-contributory ephemeral key")]
    NonContributory,
    /// The header tag does not verify: tampered, or built for another key.
    #[error("header authentication failed")]
    HeaderAuth,
    /// The payload tag does not verify.
    #[error("payload authentication failed")]
    PayloadAuth,
    /// The layer was already seen in this epoch (or, in a path session, this sequence number).
    #[error("replayed packet")]
    Replay,
    /// A path session's packet for a session this node does not keep (expired, never opened,
    /// forgotten at a restart, or another node's).
    #[error("unknown path session")]
    UnknownSession,
    /// The authenticated routing slot or payload breaks the format (a buggy sender).
    #[error("malformed layer: {0}")]
    Malformed(&'static str),
}

/// Why a reply could not be opened by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The length is not one of the reply size classes.
    #[error("reply length {0} is not a size class")]
    BadSize(usize),
    /// No layer of the path authenticated the reply: it was corrupted or forged on the way.
    #[error("reply failed authentication at every layer")]
    Unauthenticated,
    /// An authenticated reply whose inner format is broken.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// Why a reply could not be sealed by a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The response body does not fit the reply class the client asked for.
    #[error("response of {len} bytes exceeds the {max}-byte limit of the reply class")]
    TooLarge {
        /// Body length.
        len: usize,
        /// Largest body the class carries.
        max: usize,
    },
}
