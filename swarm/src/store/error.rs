//! Store failures, each with the status it answers on the wire.

use std::sync::Arc;

use allium_proto::Status;
use thiserror::Error;

/// Store failures. Rule violations first, then storage faults.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// TTL outside the configured bounds.
    #[error("ttl {ttl_ms} ms outside [{min_ms}, {max_ms}]")]
    TtlOutOfRange {
        /// Requested TTL.
        ttl_ms: u64,
        /// Lower bound.
        min_ms: u64,
        /// Upper bound.
        max_ms: u64,
    },
    /// New expiry in the past or beyond now + maximum TTL.
    #[error("expiry outside (now, now + max ttl]")]
    ExpiryOutOfRange,
    /// Message data longer than the protocol allows.
    #[error("message data too large")]
    DataTooLarge,
    /// The mailbox holds its quota.
    #[error("mailbox quota exceeded")]
    QuotaExceeded,
    /// The node holds its size cap, or its file system is (nearly) full.
    #[error("node storage full")]
    NodeFull,
    /// Too many long-poll waiters registered.
    #[error("too many waiters")]
    TooManyWaiters,
    /// The writer has shut down.
    #[error("store closed")]
    Closed,
    /// Stored data failed a check: the node must not serve it.
    #[error("corrupt store: {0}")]
    Corrupt(Corruption),
    /// The database was written by an unknown schema version.
    #[error("unsupported schema version {0}")]
    Schema(u32),
    /// Writing a group of operations failed, and not because the disk is full; nothing of the
    /// group was written.
    #[error("write failed: {0}")]
    WriteFailed(rocksdb::Error),
    /// RocksDB reported an error opening the database or reading from it.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A thread of the store could not be started.
    #[error("cannot start the store's {thread} thread: {source}")]
    Spawn {
        /// Which thread.
        thread: &'static str,
        /// Why (shared, so that the error stays `Clone`).
        source: Arc<std::io::Error>,
    },
    /// The writer answered an operation with the outcome of another kind: a bug.
    #[error("internal error: the writer answered another operation")]
    WrongOutcome,
}

/// The record that failed its check (the layouts are in whitepaper storage §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Corruption {
    /// A column family the schema needs is not there.
    #[error("column family {0} missing")]
    MissingColumnFamily(&'static str),
    /// `meta/schema` is not a 4-byte version.
    #[error("bad schema version")]
    SchemaVersion,
    /// `meta/clock` is not an 8-byte time.
    #[error("bad clock")]
    Clock,
    /// A `usage` value (per mailbox, or `meta/total`) is not 16 bytes.
    #[error("bad usage value")]
    UsageValue,
    /// A `msg` key is not `prefix || timestamp || hash`.
    #[error("bad message key")]
    MessageKey,
    /// A `msg` value has an unknown version or is too short.
    #[error("bad message value")]
    MessageValue,
    /// A `hash` index key is not an entry key.
    #[error("bad hash index key")]
    HashIndexKey,
    /// A `hash` index value is not an 8-byte timestamp.
    #[error("bad hash index value")]
    HashIndexValue,
    /// A `hash` index entry names a message that is not in `msg`.
    #[error("hash index entry without message")]
    HashIndexOrphan,
    /// A `tomb` key, or the entry key in a tombstone's `exp` key, is not an entry key.
    #[error("bad tombstone key")]
    TombstoneKey,
    /// A `tomb` value is not an 8-byte time.
    #[error("bad tombstone")]
    TombstoneValue,
}

impl From<Corruption> for StoreError {
    fn from(c: Corruption) -> Self {
        StoreError::Corrupt(c)
    }
}

impl StoreError {
    /// Whether the error says the stored data failed a check (rather than, say, the database
    /// being in use or the disk being full).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt(_) => true,
            StoreError::Db(e) | StoreError::WriteFailed(e) => {
                e.kind() == rocksdb::ErrorKind::Corruption
            }
            _ => false,
        }
    }
}

impl From<&StoreError> for Status {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::TtlOutOfRange { .. } => Status::TtlOutOfRange,
            StoreError::ExpiryOutOfRange => Status::ExpiryOutOfRange,
            StoreError::DataTooLarge => Status::TooLarge,
            StoreError::QuotaExceeded => Status::QuotaExceeded,
            StoreError::NodeFull => Status::NodeFull,
            StoreError::TooManyWaiters | StoreError::Closed => Status::Busy,
            StoreError::Corrupt(_)
            | StoreError::Schema(_)
            | StoreError::WriteFailed(_)
            | StoreError::Db(_)
            | StoreError::Spawn { .. }
            | StoreError::WrongOutcome => Status::Internal,
        }
    }
}
