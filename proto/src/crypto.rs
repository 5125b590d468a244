//! The one place this crate hashes and verifies: BLAKE2b-256 under domain strings, Ed25519.

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ed25519_dalek::{Signature, VerifyingKey};
use subtle::ConstantTimeEq;

use crate::storage::{Mailbox, MessageHash, Namespace, NodeId};
use crate::time::UnixMillis;

type Blake2b256 = Blake2b<U32>;

/// Prefix of the content hash input.
pub const DOMAIN_MESSAGE: &[u8] = b"allium/v1/storage/message";
/// Prefix of the content hash input in the blob namespace ([`crate::storage::BLOB`]).
pub const DOMAIN_BLOB: &[u8] = b"allium/v1/storage/blob";
/// Prefix of the request-body digest input.
pub const DOMAIN_REQUEST: &[u8] = b"allium/v1/storage/request";
/// First bytes of the data a mailbox key signs.
pub const DOMAIN_AUTH: &[u8] = b"allium/v1/storage/auth";
/// Prefix of the replay-cache key input.
pub const DOMAIN_REPLAY: &[u8] = b"allium/v1/storage/replay";

/// Prefix of a delivery-token verifier.
pub const DOMAIN_TOKEN: &[u8] = b"allium/v1/storage/token";

/// Prefix of an anti-entropy entry digest.
pub const DOMAIN_SYNC_ENTRY: &[u8] = b"allium/v1/sync/entry";
/// Prefix of an anti-entropy root digest.
pub const DOMAIN_SYNC_ROOT: &[u8] = b"allium/v1/sync/root";

/// Length of [`signed_data`]'s output.
pub const SIGNED_DATA_LEN: usize = DOMAIN_AUTH.len() + 1 + 32 + 2 + 8 + 32 + 32;

/// BLAKE2b-256 of the concatenation of `parts` (each caller puts its domain string first).
pub(crate) fn blake2b256_parts(parts: &[&[u8]]) -> [u8; 32] {
    blake2b256(parts)
}

fn blake2b256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2b256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Content hash: the dedupe key and the message's name in delete/expire requests.
/// `BLAKE2b-256(DOMAIN_MESSAGE || mailbox || namespace (u16 BE) || data)`; in the blob
/// namespace `BLAKE2b-256(DOMAIN_BLOB || mailbox || namespace || data[..BLOB_PREFIX_LEN])`, an
/// address the owner chooses so that readers can name a chunk without holding it (storage §5.1).
pub fn content_hash(mailbox: &Mailbox, namespace: Namespace, data: &[u8]) -> MessageHash {
    if namespace == crate::storage::BLOB {
        let prefix = &data[..data.len().min(crate::storage::BLOB_PREFIX_LEN)];
        return MessageHash(blake2b256(&[
            DOMAIN_BLOB,
            mailbox.as_bytes(),
            &namespace.to_be_bytes(),
            prefix,
        ]));
    }
    MessageHash(blake2b256(&[
        DOMAIN_MESSAGE,
        mailbox.as_bytes(),
        &namespace.to_be_bytes(),
        data,
    ]))
}

/// The content hash of the delegation record that lets `signer` sign for `mailbox`: the message
/// of namespace 3 whose data is exactly the signer's key (storage.md §3.1).
pub fn delegation_hash(mailbox: &Mailbox, signer: &[u8; 32]) -> MessageHash {
    content_hash(mailbox, crate::storage::DEVICES, signer)
}

/// The verifier of a delivery token for `mailbox` (storage.md §4.5): what the owner stores in
/// namespace 6, so a node can check a token without being able to make one.
/// `BLAKE2b-256(DOMAIN_TOKEN || mailbox || token)`.
pub fn token_verifier(mailbox: &Mailbox, token: &[u8; 32]) -> [u8; 32] {
    blake2b256(&[DOMAIN_TOKEN, mailbox.as_bytes(), token])
}

/// The content hash of the verifier record that admits `token` to `mailbox`'s inbox: the
/// message of namespace 6 whose data is [`token_verifier`].
pub fn token_record_hash(mailbox: &Mailbox, token: &[u8; 32]) -> MessageHash {
    content_hash(
        mailbox,
        crate::storage::TOKENS,
        &token_verifier(mailbox, token),
    )
}

/// Digest of one anti-entropy entry: `BLAKE2b-256(DOMAIN_SYNC_ENTRY || mailbox || namespace
/// (u16 BE) || hash || state)`, `state` being `0x00 || expiry || set_at` (u64 BE each) for a live
/// message and `0x01` for a tombstone (whose keep-until time differs between members by design).
pub fn entry_digest(
    mailbox: &Mailbox,
    namespace: Namespace,
    hash: &MessageHash,
    live: Option<(UnixMillis, UnixMillis)>,
) -> [u8; 32] {
    let mut state = [0u8; 17];
    let state: &[u8] = match live {
        Some((expiry, set_at)) => {
            state[1..9].copy_from_slice(&expiry.to_be_bytes());
            state[9..].copy_from_slice(&set_at.to_be_bytes());
            &state
        }
        None => &[1],
    };
    blake2b256(&[
        DOMAIN_SYNC_ENTRY,
        mailbox.as_bytes(),
        &namespace.to_be_bytes(),
        &hash.0,
        state,
    ])
}

/// Root digest over the 256 bucket digests in bucket order.
pub fn sync_root(buckets: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Blake2b256::new();
    h.update(DOMAIN_SYNC_ROOT);
    for b in buckets {
        h.update(b);
    }
    h.finalize().into()
}

/// Request digest: `BLAKE2b-256(DOMAIN_REQUEST || body)`, `body` the CBOR bytes of the body map.
pub fn request_digest(body_cbor: &[u8]) -> [u8; 32] {
    blake2b256(&[DOMAIN_REQUEST, body_cbor])
}

/// The bytes a mailbox key signs (whitepaper §3.1):
/// `DOMAIN_AUTH || method (u8) || mailbox (32) || namespace (u16 BE) || timestamp (u64 BE, ms)
///  || node identity (32) || digest (32)`.
pub fn signed_data(
    method: u8,
    mailbox: &Mailbox,
    namespace: Namespace,
    timestamp: UnixMillis,
    node: &NodeId,
    digest: &[u8; 32],
) -> [u8; SIGNED_DATA_LEN] {
    let mut out = [0u8; SIGNED_DATA_LEN];
    let mut w = 0;
    let parts: [&[u8]; 7] = [
        DOMAIN_AUTH,
        &[method],
        mailbox.as_bytes(),
        &namespace.to_be_bytes(),
        &timestamp.to_be_bytes(),
        node.as_bytes(),
        digest,
    ];
    for part in parts {
        out[w..w + part.len()].copy_from_slice(part);
        w += part.len();
    }
    out
}

/// Replay-cache key of a signed request: `BLAKE2b-256(DOMAIN_REPLAY || signed data)`. Keyed on what
/// was signed rather than on the signature, so a second signature over the same request is the
/// same request.
pub fn replay_key(signed: &[u8]) -> [u8; 32] {
    blake2b256(&[DOMAIN_REPLAY, signed])
}

/// Verifies an Ed25519 signature by `mailbox` with `verify_strict` (rejects small-order keys and
/// non-canonical signatures). Every failure is the same `false`.
pub fn verify(mailbox: &Mailbox, signed: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(mailbox.as_bytes()) else {
        return false;
    };
    key.verify_strict(signed, &Signature::from_bytes(signature))
        .is_ok()
}

/// Constant-time equality for keys and digests.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}
