//! The chunk format of `whitepaper/attachments.md` §2–§3: keys derived from the attachment key,
//! deterministic AES-256-GCM per chunk, addresses, leaves and the root.

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use allium_proto::crypto::content_hash;
use allium_proto::storage::{BLOB, BLOB_PREFIX_LEN, MAX_DATA_BYTES, Mailbox, MessageHash};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::AttachError;

type Blake2b256 = Blake2b<U32>;

/// File bytes per chunk.
pub const CHUNK: usize = MAX_DATA_BYTES - BLOB_PREFIX_LEN - TAG;
/// Stored bytes per chunk.
pub const CHUNK_DATA: usize = MAX_DATA_BYTES;
/// Largest file (1 GiB).
pub const MAX_FILE: u64 = 1 << 30;
/// Chunks of the largest file.
pub const MAX_CHUNKS: u32 = MAX_FILE.div_ceil(CHUNK as u64) as u32;
const TAG: usize = 16;

const DOMAIN_BLOB_ID: &[u8] = b"allium/v1/attach/blob-id";
const DOMAIN_CHUNK_KEY: &[u8] = b"allium/v1/attach/chunk-key";
const DOMAIN_LEAF: &[u8] = b"allium/v1/attach/leaf";
const DOMAIN_ROOT: &[u8] = b"allium/v1/attach/root";

fn blake2b256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2b256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Number of chunks of a file of `size` bytes: at least one, so an empty file has a blob too.
pub fn chunk_count(size: u64) -> u32 {
    u32::try_from(size.div_ceil(CHUNK as u64).max(1)).unwrap_or(u32::MAX)
}

/// The keys of one attachment, derived from its attachment key.
#[derive(Clone)]
pub struct BlobKeys {
    key: Zeroizing<[u8; 32]>,
    chunk_key: Zeroizing<[u8; 32]>,
    /// `BLAKE2b-256("allium/v1/attach/blob-id" || K)`: names the blob on the nodes.
    pub blob_id: [u8; 32],
}

impl fmt::Debug for BlobKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobKeys")
            .field("blob_id", &hex::encode(self.blob_id))
            .finish_non_exhaustive()
    }
}

impl BlobKeys {
    /// The keys of attachment key `key`.
    pub fn new(key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        let chunk_key = Zeroizing::new(blake2b256(&[DOMAIN_CHUNK_KEY, key.as_ref()]));
        let blob_id = blake2b256(&[DOMAIN_BLOB_ID, key.as_ref()]);
        BlobKeys {
            key,
            chunk_key,
            blob_id,
        }
    }

    /// The attachment key itself (carried in the file message and the progress file).
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The chunk key (published in the vectors; never sent).
    pub fn chunk_key(&self) -> &[u8; 32] {
        &self.chunk_key
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.chunk_key).into())
    }

    fn ad(&self, index: u32, n: u32) -> [u8; 40] {
        let mut ad = [0u8; 40];
        ad[..32].copy_from_slice(&self.blob_id);
        ad[32..36].copy_from_slice(&index.to_be_bytes());
        ad[36..].copy_from_slice(&n.to_be_bytes());
        ad
    }

    /// The stored data of chunk `index` of `n`, from its file bytes (at most [`CHUNK`]; the rest
    /// is zero padding).
    pub fn seal(&self, index: u32, n: u32, bytes: &[u8]) -> Result<Vec<u8>, AttachError> {
        if bytes.len() > CHUNK || index >= n {
            return Err(AttachError::Internal("chunk out of range"));
        }
        let mut out = Vec::with_capacity(CHUNK_DATA);
        out.extend_from_slice(&self.blob_id);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(bytes);
        out.resize(BLOB_PREFIX_LEN + CHUNK, 0);
        let tag = self
            .cipher()
            .encrypt_in_place_detached(
                &nonce(index),
                &self.ad(index, n),
                &mut out[BLOB_PREFIX_LEN..],
            )
            .map_err(|_| AttachError::Internal("chunk encryption"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Checks and opens the stored data of chunk `index` of `n` of a file of `size` bytes;
    /// returns its file bytes (without the padding).
    pub fn open(
        &self,
        index: u32,
        n: u32,
        size: u64,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AttachError> {
        let bad = || AttachError::BadChunk(index);
        if data.len() != CHUNK_DATA
            || index >= n
            || !bool::from(data[..32].ct_eq(&self.blob_id))
            || data[32..36] != index.to_be_bytes()
        {
            return Err(bad());
        }
        let body_end = CHUNK_DATA - TAG;
        let mut plain = Zeroizing::new(data[BLOB_PREFIX_LEN..body_end].to_vec());
        self.cipher()
            .decrypt_in_place_detached(
                &nonce(index),
                &self.ad(index, n),
                &mut plain,
                Tag::from_slice(&data[body_end..]),
            )
            .map_err(|_| bad())?;
        let start = u64::from(index) * CHUNK as u64;
        let len = usize::try_from(size.saturating_sub(start).min(CHUNK as u64)).unwrap_or(CHUNK);
        if plain[len..].iter().any(|&b| b != 0) {
            return Err(bad());
        }
        plain.truncate(len);
        Ok(plain)
    }

    /// The address (namespace-4 content hash) of chunk `index` in `mailbox`.
    pub fn address(&self, mailbox: &Mailbox, index: u32) -> MessageHash {
        let mut prefix = [0u8; BLOB_PREFIX_LEN];
        prefix[..32].copy_from_slice(&self.blob_id);
        prefix[32..].copy_from_slice(&index.to_be_bytes());
        content_hash(mailbox, BLOB, &prefix)
    }
}

fn nonce(index: u32) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&index.to_be_bytes());
    n.into()
}

/// `BLAKE2b-256("allium/v1/attach/leaf" || data)` of one stored chunk.
pub fn leaf(data: &[u8]) -> [u8; 32] {
    blake2b256(&[DOMAIN_LEAF, data])
}

/// The root over a file's size, chunk count and leaves, in index order.
pub fn root(size: u64, leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Blake2b256::new();
    h.update(DOMAIN_ROOT);
    h.update(size.to_be_bytes());
    h.update(
        u32::try_from(leaves.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for l in leaves {
        h.update(l);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(size: usize) -> Vec<u8> {
        (0..size).map(|j| (j % 251) as u8).collect()
    }

    #[test]
    fn sizes_match_the_chapter() {
        assert_eq!(CHUNK, 61_388);
        assert_eq!(MAX_CHUNKS, 17_492);
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(CHUNK as u64), 1);
        assert_eq!(chunk_count(CHUNK as u64 + 1), 2);
    }

    #[test]
    fn round_trip_and_every_change_refused() {
        let keys = BlobKeys::new([3; 32]);
        let size = CHUNK + 10;
        let f = file(size);
        let n = chunk_count(size as u64);
        let c1 = keys.seal(1, n, &f[CHUNK..]).unwrap();
        assert_eq!(c1.len(), CHUNK_DATA);
        assert_eq!(&*keys.open(1, n, size as u64, &c1).unwrap(), &f[CHUNK..]);
        // Deterministic: a re-upload is byte for byte the same.
        assert_eq!(keys.seal(1, n, &f[CHUNK..]).unwrap(), c1);
        for i in (0..CHUNK_DATA)
            .step_by(997)
            .chain([0, 35, 36, CHUNK_DATA - 1])
        {
            let mut bad = c1.clone();
            bad[i] ^= 1;
            assert!(keys.open(1, n, size as u64, &bad).is_err(), "byte {i}");
        }
        // Moved to another index, another count, another key, cut short: refused.
        let c0 = keys.seal(0, n, &f[..CHUNK]).unwrap();
        assert!(keys.open(1, n, size as u64, &c0).is_err());
        assert!(keys.open(1, n + 1, size as u64, &c1).is_err());
        assert!(BlobKeys::new([4; 32]).open(1, n, size as u64, &c1).is_err());
        assert!(keys.open(1, n, size as u64, &c1[..100]).is_err());
        // A size claiming fewer bytes in the last chunk: its "padding" is not zero.
        assert!(keys.open(1, n, size as u64 - 1, &c1).is_err());
    }

    #[test]
    fn address_covers_the_name_only() {
        let keys = BlobKeys::new([3; 32]);
        let mb = Mailbox::from_bytes([9; 32]);
        let data = keys.seal(0, 1, b"x").unwrap();
        assert_eq!(keys.address(&mb, 0), content_hash(&mb, BLOB, &data));
        assert_ne!(keys.address(&mb, 0), keys.address(&mb, 1));
    }

    #[test]
    fn debug_hides_the_key() {
        let s = format!("{:?}", BlobKeys::new([0xab; 32]));
        assert!(!s.contains("abab"), "{s}");
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            index in 0u32..4, n in 0u32..4, size in any::<u64>(),
        ) {
            let _ = BlobKeys::new([1; 32]).open(index, n, size, &data);
        }
    }
}
