//! Attachments (`whitepaper/attachments.md`): files of up to 1 GiB as encrypted chunks in the
//! sender's blob namespace, sent over several onion paths at once, resumable from progress
//! files after a crash, and checked chunk by chunk and as a whole before they get their name.

pub mod chunk;
pub mod file;
pub mod report;
pub mod transfer;

use std::io;
use std::path::Path;

use allium_proto::Status;
use thiserror::Error;

use crate::net::NetError;

pub use chunk::{BlobKeys, CHUNK, MAX_FILE, chunk_count};
pub use file::{FileRef, sanitize};
pub use transfer::{
    DEFAULT_PATHS, Download, Progress, TransferConfig, Transfers, Upload, download, upload,
};

/// Why an attachment could not be sent or received.
#[derive(Debug, Error)]
pub enum AttachError {
    /// A local file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// Over [`MAX_FILE`].
    #[error("{0} bytes is more than the largest attachment, 1 GiB")]
    TooLarge(u64),
    /// A chunk failed its check (altered or misplaced by a node): it is not written.
    #[error("chunk {0} failed its integrity check")]
    BadChunk(u32),
    /// Every chunk passed but the file does not match its root: nothing is saved.
    #[error("the received file does not match the hash its message carries; it was not saved")]
    BadRoot,
    /// A file message that does not decode.
    #[error("unreadable file message: {0}")]
    BadMessage(&'static str),
    /// The sender's blob quota is used up.
    #[error(
        "the attachment space of your mailbox is full (the swarm answered quota_exceeded): \
         wait for earlier attachments to expire, or send a smaller file"
    )]
    Quota,
    /// The swarm's nodes have no room for attachments.
    #[error(
        "the nodes of your swarm are out of space for attachments (node_full); try again later"
    )]
    Full,
    /// No member of the swarm holds a chunk.
    #[error("chunk {0} is held by no member of the swarm (expired, deleted or never stored)")]
    Missing(u32),
    /// The file being uploaded changed since the upload began.
    #[error("{0} changed since its upload began; run the command again to send it afresh")]
    Changed(String),
    /// A progress file that cannot be read.
    #[error("progress file {0}: {1}")]
    Progress(String, String),
    /// The network failed.
    #[error(transparent)]
    Net(NetError),
    /// A bug of this client.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl AttachError {
    pub(crate) fn io(path: &Path, e: io::Error) -> Self {
        AttachError::Io(path.display().to_string(), e)
    }
}

impl From<NetError> for AttachError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Refused(Status::QuotaExceeded) => AttachError::Quota,
            NetError::Refused(Status::NodeFull) => AttachError::Full,
            e => AttachError::Net(e),
        }
    }
}
