//! Key derivation and the symmetric primitives built on the derived keys.
//!
//! Every layer's X25519 shared secret yields its values, each a keyed BLAKE2b-256 of
//! `ephemeral_public || onion_public || label` under the shared secret; a path session's packet
//! derives the same keys from the session key and `session_id || nonce`. Each key is used for
//! exactly one operation on one packet; that is what makes the fixed AES-GCM nonce safe.

use aes::Aes256;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use blake2::Blake2bMac;
use blake2::digest::consts::U32;
use blake2::digest::{FixedOutput, Mac};
use ctr::cipher::{KeyIvInit, StreamCipher};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::{KEY_LEN, SharedSecret};

/// Domain labels, appended to `ephemeral_public || onion_public` before hashing.
pub mod labels {
    /// AES-256-GCM key that authenticates and encrypts the routing header.
    pub const HEADER: &[u8] = b"allium/v1/onion/header-key";
    /// AES-256-GCM key of this layer of the payload.
    pub const PAYLOAD: &[u8] = b"allium/v1/onion/payload-key";
    /// AES-256-CTR key whose keystream refills the routing header after the shift.
    pub const FILLER: &[u8] = b"allium/v1/onion/filler-key";
    /// AES-256-GCM key with which this hop seals a reply it originates.
    pub const REPLY: &[u8] = b"allium/v1/onion/reply-key";
    /// AES-256-CTR key with which this hop wraps a reply coming back from the next hop.
    pub const REPLY_WRAP: &[u8] = b"allium/v1/onion/reply-wrap-key";
    /// The replay tag remembered by the node.
    pub const REPLAY: &[u8] = b"allium/v1/onion/replay-tag";
    /// The identifier under which a hop keeps a path session opened by this layer.
    pub const SESSION_ID: &[u8] = b"allium/v1/onion/session-id";
    /// The key of a path session opened by this layer.
    pub const SESSION_KEY: &[u8] = b"allium/v1/onion/session-key";
}

/// The all-zero 96-bit nonce. Safe because every key is used for one encryption only.
pub(crate) const NONCE: [u8; 12] = [0u8; 12];

/// A 256-bit symmetric key, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Key(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The replay tag of one layer: a PRF of the shared secret, so it identifies the layer without
/// revealing anything about it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReplayTag(pub(crate) [u8; KEY_LEN]);

impl ReplayTag {
    /// The 32 tag bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for ReplayTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplayTag(..)")
    }
}

/// All keys of one layer.
#[derive(Debug)]
pub(crate) struct LayerKeys {
    pub(crate) header: Key,
    pub(crate) payload: Key,
    pub(crate) filler: Key,
    pub(crate) reply: Key,
    pub(crate) reply_wrap: Key,
}

/// Keyed BLAKE2b-256 of `context || label` under one secret, with the context absorbed once:
/// each label then costs one compression.
#[derive(Clone)]
pub(crate) struct Derivation(Blake2bMac<U32>);

impl Derivation {
    /// `K(label) = BLAKE2b(key = secret, digest length = 32, message = context… || label)`.
    pub(crate) fn new(secret: &[u8; KEY_LEN], context: &[&[u8]]) -> Self {
        let mut mac = match <Blake2bMac<U32> as KeyInit>::new_from_slice(secret) {
            Ok(mac) => mac,
            // A 32-byte key is always within BLAKE2b's 64-byte key limit.
            Err(_) => unreachable_key_length(),
        };
        for part in context {
            Mac::update(&mut mac, part);
        }
        Derivation(mac)
    }

    /// The layer's values from an X25519 exchange: the context is `ephemeral || onion`, which
    /// binds every key to this exchange with this node's key.
    pub(crate) fn onion(
        shared: &SharedSecret,
        ephemeral: &[u8; KEY_LEN],
        onion: &[u8; KEY_LEN],
    ) -> Self {
        Self::new(shared.as_bytes(), &[ephemeral, onion])
    }

    pub(crate) fn value(&self, label: &[u8]) -> [u8; KEY_LEN] {
        let mut mac = self.0.clone();
        Mac::update(&mut mac, label);
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(&mac.finalize_fixed());
        out
    }

    /// The five symmetric keys of a layer.
    pub(crate) fn layer_keys(&self) -> LayerKeys {
        LayerKeys {
            header: Key(self.value(labels::HEADER)),
            payload: Key(self.value(labels::PAYLOAD)),
            filler: Key(self.value(labels::FILLER)),
            reply: Key(self.value(labels::REPLY)),
            reply_wrap: Key(self.value(labels::REPLY_WRAP)),
        }
    }

    /// The replay tag of an onion layer.
    pub(crate) fn replay_tag(&self) -> ReplayTag {
        ReplayTag(self.value(labels::REPLAY))
    }
}

#[cold]
fn unreachable_key_length() -> ! {
    // BLAKE2b accepts keys up to 64 bytes and ours are 32: this cannot happen.
    #[allow(clippy::panic)]
    {
        panic!("BLAKE2b refused a 32-byte key")
    }
}

impl Key {
    fn gcm(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }

    /// AES-256-GCM encryption in place with the zero nonce; returns the tag.
    pub(crate) fn seal(&self, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        match self
            .gcm()
            .encrypt_in_place_detached(Nonce::from_slice(&NONCE), aad, buf)
        {
            Ok(tag) => tag.into(),
            // aes-gcm refuses only buffers over 2^36 bytes; ours are at most 64 KiB.
            Err(_) => unreachable_gcm_length(),
        }
    }

    /// AES-256-GCM decryption in place; `buf` is untouched when the tag does not verify.
    pub(crate) fn open(&self, aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> Result<(), ()> {
        self.gcm()
            .decrypt_in_place_detached(Nonce::from_slice(&NONCE), aad, buf, Tag::from_slice(tag))
            .map_err(|_| ())
    }

    /// XORs `buf` with AES-256-CTR keystream: a 128-bit big-endian counter starting at zero.
    pub(crate) fn ctr_xor(&self, buf: &mut [u8]) {
        let mut c = ctr::Ctr128BE::<Aes256>::new(&self.0.into(), &[0u8; 16].into());
        c.apply_keystream(buf);
    }

    /// XORs `buf` with the keystream AES-256-GCM uses for the zero nonce (counter blocks
    /// `0^96 || 2`, `0^96 || 3`, …), i.e. what `seal` would XOR into it.
    pub(crate) fn gcm_keystream_xor(&self, buf: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[15] = 2;
        let mut c = ctr::Ctr32BE::<Aes256>::new(&self.0.into(), &iv.into());
        c.apply_keystream(buf);
    }
}

#[cold]
fn unreachable_gcm_length() -> ! {
    #[allow(clippy::panic)]
    {
        panic!("AES-GCM refused a buffer shorter than 64 KiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm_keystream_matches_gcm_encryption() {
        let key = Key([7u8; 32]);
        let mut zeros = vec![0u8; 1000];
        key.seal(b"aad", &mut zeros);
        let mut ks = vec![0u8; 1000];
        key.gcm_keystream_xor(&mut ks);
        assert_eq!(zeros, ks);
    }

    #[test]
    fn open_leaves_buffer_untouched_on_bad_tag() {
        let key = Key([9u8; 32]);
        let mut buf = b"hello world".to_vec();
        let tag = key.seal(b"", &mut buf);
        let sealed = buf.clone();
        let mut bad = tag;
        bad[0] ^= 1;
        assert!(key.open(b"", &mut buf, &bad).is_err());
        assert_eq!(buf, sealed);
        key.open(b"", &mut buf, &tag).unwrap();
        assert_eq!(buf, b"hello world");
    }
}
