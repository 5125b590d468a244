//! Helpers shared by the integration tests: real RocksDB stores in temporary directories.
#![allow(dead_code, clippy::unwrap_used)]

use allium_proto::storage::{Mailbox, NodeId};
use allium_swarm::{Store, StoreConfig};
use ed25519_dalek::SigningKey;

/// A fixed wall-clock start for tests (2023-11-14).
pub const T0: u64 = 1_700_000_000_000;

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn mailbox(k: &SigningKey) -> Mailbox {
    Mailbox::from_bytes(k.verifying_key().to_bytes())
}

pub fn node_id(seed: u8) -> NodeId {
    NodeId::from_bytes(key(seed).verifying_key().to_bytes())
}

pub fn open(cfg: StoreConfig) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), cfg).unwrap();
    (dir, store)
}
