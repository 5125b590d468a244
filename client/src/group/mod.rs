//! Groups: the pure cryptographic core of group conversations, specified byte for byte in
//! `whitepaper/groups.md`.
//!
//! * A group is an identity of its own ([`GroupSecret`]): its Ed25519 key names the group's
//!   mailbox, and every item stored there is sealed under a key derived from its seed, so the
//!   swarm keeping it sees opaque items.
//! * Membership is a chain of admin-signed, versioned lists ([`MembershipList`]); concurrent
//!   lists converge by one rule ([`MembershipLog`], [`MembershipList::rebase`]).
//! * Each member device publishes a hybrid X25519 + ML-KEM-768 key for the group
//!   ([`MemberKey`]); an admin wraps a new epoch key for every member device in one rekey, split
//!   into parts of at most one storage item each ([`rekey`], [`RekeyPart`]).
//! * Inside an epoch every sender device has its own hash chain, ratcheted per message
//!   ([`Epoch`]); who wrote is inside the encryption and signed.
//!
//! No I/O and no clock: time is a parameter (Unix milliseconds) and randomness comes from the
//! caller's `CryptoRngCore`.

mod epoch;
mod member_key;
mod membership;
mod rekey;
mod secret;

pub use epoch::{Epoch, MAX_PAYLOAD, Received, epoch_id_of};
pub use member_key::{MEMBER_KEY_LEN, MEMBER_SECRET_LEN, MemberKey, MemberSecret, MemberSecrets};
pub use membership::{Change, MembershipList, MembershipLog, Role};
pub use rekey::{ENTRIES_PER_PART, ENTRY_LEN, Entry, RekeyPart, recipients_of, rekey};
pub use secret::{GroupSecret, ITEM_OVERHEAD, MAX_INNER_LEN};

use ed25519_dalek::{Signature, Signer};

use crate::session::keys::check_ed25519;
use crate::session::{DeviceKeys, KEY_LEN, SIGNATURE_LEN, SessionError};

/// The most members (accounts) of a group.
pub const MAX_MEMBERS: usize = 1000;

/// The most devices of one member that receive the epoch key.
pub const MAX_DEVICES_PER_MEMBER: usize = 8;

/// The most devices in one epoch.
pub const MAX_EPOCH_DEVICES: usize = MAX_MEMBERS * MAX_DEVICES_PER_MEMBER;

/// Largest stored item: one storage message.
pub const MAX_ITEM_LEN: usize = allium_proto::storage::MAX_DATA_BYTES;

/// How often an admin rekeys when membership does not change.
pub const REKEY_INTERVAL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The longest an item stays in a mailbox (the network's default maximum TTL): how long a
/// device keeps an epoch after a newer one came, and a member secret after a newer one.
pub const RETENTION_MS: u64 = 14 * 24 * 3600 * 1000;

/// The most message keys an epoch keeps for messages not received yet; the oldest go first.
pub const MAX_SKIPPED: usize = 2000;

/// How many versions behind the head a list is still kept, so that a late fork can be compared.
pub const FORK_WINDOW: u64 = 16;

/// The most lists a log holds whose parent it has not seen yet.
pub const MAX_PENDING: usize = 64;

/// Message plaintexts are padded to a multiple of this.
pub const PAD: usize = 256;

/// Length of an epoch id.
pub const EPOCH_ID_LEN: usize = 16;

/// Kind bytes: the first byte of every item inside the sealed layer.
pub mod kind {
    /// A membership list.
    pub const LIST: u8 = 0x01;
    /// A member device's key.
    pub const MEMBER_KEY: u8 = 0x02;
    /// A part of a rekey.
    pub const REKEY: u8 = 0x03;
    /// A message.
    pub const MESSAGE: u8 = 0x04;
}

/// Every domain-separation string (`whitepaper/groups.md` §9).
pub mod labels {
    /// HKDF info of the key sealing items in the group mailbox.
    pub const MAILBOX_KEY: &[u8] = b"allium/v1/group/mailbox-key";
    /// Prefix of the associated data of a sealed item.
    pub const ITEM: &[u8] = b"allium/v1/group/item";
    /// Prefix of an admin's signature on a membership list.
    pub const LIST: &[u8] = b"allium/v1/group/list-signature";
    /// Prefix of the hash naming a membership list.
    pub const LIST_HASH: &[u8] = b"allium/v1/group/list-hash";
    /// Prefix of a device's signature on its member key.
    pub const MEMBER_KEY: &[u8] = b"allium/v1/group/member-key";
    /// Prefix of an admin's signature on a rekey part.
    pub const REKEY: &[u8] = b"allium/v1/group/rekey";
    /// HKDF info (prefix) of a wrapping key; prefix of a wrapped key's associated data.
    pub const WRAP: &[u8] = b"allium/v1/group/wrap";
    /// HKDF info of an epoch id.
    pub const EPOCH_ID: &[u8] = b"allium/v1/group/epoch-id";
    /// HKDF info of an epoch's header key.
    pub const HEADER_KEY: &[u8] = b"allium/v1/group/header-key";
    /// HKDF info of a sender device's first chain key.
    pub const SENDER_CHAIN: &[u8] = b"allium/v1/group/sender-chain";
    /// Prefix of a message header's associated data.
    pub const HEADER: &[u8] = b"allium/v1/group/header-ad";
    /// Prefix of a message body's associated data.
    pub const MESSAGE: &[u8] = b"allium/v1/group/message";
    /// Prefix of a sender device's signature on a message.
    pub const SIGNED: &[u8] = b"allium/v1/group/signed";
}

/// Why a group operation failed. Every variant leaves the state as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// An encoding is truncated, too long, or has a field its format forbids; a key is weak.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// An item of a kind this client does not know.
    #[error("unknown group item kind {0}")]
    UnknownKind(u8),
    /// A signature does not verify.
    #[error("a signature does not verify")]
    BadSignature,
    /// An item of another group.
    #[error("item of another group")]
    WrongGroup,
    /// The signer is not an admin of the list it must be an admin of.
    #[error("signed by someone who is not an admin")]
    NotAdmin,
    /// A list without any admin, or with more than `MAX_MEMBERS` members.
    #[error("a membership list needs 1 to {max} members, at least one an admin", max = MAX_MEMBERS)]
    BadMembers,
    /// A list that does not follow the one it names as parent.
    #[error("the list does not follow its parent")]
    NotSuccessor,
    /// A list older than the lists kept.
    #[error("the list is older than the lists kept")]
    Stale,
    /// A rekey for another list than the one given.
    #[error("the rekey is for another membership list")]
    WrongList,
    /// Parts that do not make one rekey (differing headers, gaps or overlaps).
    #[error("the rekey parts are incomplete or inconsistent")]
    BadParts,
    /// The epoch key is not wrapped for this device.
    #[error("this device is not a recipient of the epoch key")]
    NotRecipient,
    /// No recipient devices.
    #[error("no member device to rekey for")]
    NoRecipients,
    /// A message of an epoch this device does not hold.
    #[error("message of another epoch")]
    WrongEpoch,
    /// A message naming a sender index outside the epoch.
    #[error("unknown sender")]
    UnknownSender,
    /// A message this device sent itself.
    #[error("a message of this device")]
    OwnMessage,
    /// No key for this message: it was decrypted already, or its skipped key was dropped.
    #[error("duplicate message (its key is gone)")]
    Duplicate,
    /// A message more than `MAX_SKIP` ahead in its chain.
    #[error("message {gap} ahead in its chain, more than the allowed gap")]
    TooFarAhead {
        /// How far ahead.
        gap: u32,
    },
    /// Authentication failed: altered, or not for this key.
    #[error("decryption failed (altered, or not for us)")]
    Decrypt,
    /// A payload larger than [`MAX_PAYLOAD`].
    #[error("message too large")]
    TooLarge,
    /// A chain's 2^32 messages are used up.
    #[error("counter exhausted")]
    CounterExhausted,
}

/// A decode error naming `what`.
fn malformed(what: &'static str) -> GroupError {
    GroupError::Session(SessionError::Malformed { what })
}

/// A device's Ed25519 signature over the concatenation of `parts`.
fn sign_device(device: &DeviceKeys, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
    device.signing().sign(&parts.concat()).to_bytes()
}

/// Strict verification of a device signature with the Ed25519 key `key` (a certificate's
/// signing key, checked when the certificate was decoded).
fn verify_device(
    key: &[u8; KEY_LEN],
    parts: &[&[u8]],
    sig: &[u8; SIGNATURE_LEN],
) -> Result<(), GroupError> {
    let key = check_ed25519(key).map_err(|_| GroupError::BadSignature)?;
    key.verify_strict(&parts.concat(), &Signature::from_bytes(sig))
        .map_err(|_| GroupError::BadSignature)
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_distinct() {
        use super::labels::*;
        let all = [
            MAILBOX_KEY,
            ITEM,
            LIST,
            LIST_HASH,
            MEMBER_KEY,
            REKEY,
            WRAP,
            EPOCH_ID,
            HEADER_KEY,
            SENDER_CHAIN,
            HEADER,
            MESSAGE,
            SIGNED,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.starts_with(b"allium/v1/group/"));
            for b in &all[i + 1..] {
                assert!(!a.starts_with(b) && !b.starts_with(a));
            }
        }
    }
}
