//! Store failures, each with the status it answers on the wire.

use allium_proto::Status;
use thiserror::Error;

/// Store failures. Rule violations first, then storage faults.
#[derive(Debug, Error)]
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
    /// The node holds its size cap (or the disk is full).
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
    Corrupt(String),
    /// The database was written by an unknown schema version.
    #[error("unsupported schema version {0}")]
    Schema(u32),
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
}

impl StoreError {
    /// Whether the error says the stored data failed a check (rather than, say, the database
    /// being in use or the disk being full).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt(_) => true,
            StoreError::Db(e) => e.kind() == rocksdb::ErrorKind::Corruption,
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
            StoreError::Corrupt(_) | StoreError::Schema(_) | StoreError::Db(_) => Status::Internal,
        }
    }
}
