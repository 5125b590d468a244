//! Request/response framing on a bidirectional QUIC stream.
//!
//! ```text
//! request  = kind (1) || u32be(length) || body               then the sender finishes its side
//! response = accepted (1 byte, 0x02) || status (1) || u32be(length) || body
//!                                                             then the responder finishes its side
//! ```
//!
//! The responder writes the accepted byte as soon as it has read the whole request, before any
//! work: the requester learns within a short time-out that the next hop is alive and working, and
//! then waits longer for the answer (a long-poll may take a minute). The length is checked against
//! the kind's limit before anything is allocated, and a body is held in memory only as its bytes
//! arrive, against a [`ReadBudget`] shared by every stream (whitepaper `link.md` §2, §3). A frame
//! must end where its length says: bytes after the body refuse it.

use quinn::{RecvStream, SendStream};
use tokio::sync::Semaphore;

use super::LinkError;

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An onion packet (body: exactly a packet size class).
    Onion,
    /// A directory request: descriptor registration, roster fetch.
    Directory,
    /// A request between members of a swarm (replication, anti-entropy).
    Peer,
}

impl Kind {
    /// Wire value.
    pub fn code(self) -> u8 {
        match self {
            Kind::Onion => 1,
            Kind::Directory => 2,
            Kind::Peer => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Kind::Onion),
            2 => Some(Kind::Directory),
            3 => Some(Kind::Peer),
            _ => None,
        }
    }

    /// Whether only a peer (a node of the roster) may send this kind.
    pub fn peers_only(self) -> bool {
        matches!(self, Kind::Peer)
    }

    /// Largest body a request of this kind may have.
    pub fn max_request(self) -> usize {
        match self {
            Kind::Onion => allium_onion::SizeClass::Large.size(),
            Kind::Directory => 64 * 1024,
            Kind::Peer => 1024 * 1024,
        }
    }
}

/// Largest response body: a roster of a large network.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The body is the answer.
    Ok,
    /// The request was refused; the body is empty. For onion packets this says only "dropped".
    Rejected,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Rejected => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Status::Ok),
            1 => Some(Status::Rejected),
            _ => None,
        }
    }
}

/// Why a received frame was refused. The receiver resets the stream and counts the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// An unknown kind or status byte.
    #[error("unknown kind")]
    UnknownKind,
    /// A length over the kind's limit.
    #[error("longer than its kind allows")]
    TooLong,
    /// The stream ended, or was reset, before the declared length arrived.
    #[error("stream ended before the declared length")]
    Truncated,
    /// Bytes after the declared body.
    #[error("bytes after the declared body")]
    TrailingBytes,
    /// The memory for bodies being read is in use by other streams.
    #[error("read buffers full")]
    BufferFull,
}

impl From<FrameError> for LinkError {
    fn from(e: FrameError) -> Self {
        LinkError::BadFrame(match e {
            FrameError::UnknownKind => "unknown kind",
            FrameError::TooLong => "longer than its kind allows",
            FrameError::Truncated => "stream ended before the declared length",
            FrameError::TrailingBytes => "bytes after the declared body",
            FrameError::BufferFull => "read buffers full",
        })
    }
}

/// Bytes that bodies being read may hold at once, shared by the streams it is given to. A body
/// takes its share as its bytes arrive (never by its declared length) and gives it back once
/// it is read whole or refused, so a sender that declares much and sends little holds little.
#[derive(Debug)]
pub struct ReadBudget(Semaphore);

/// Smallest allocation a body grows by: one QUIC packet carries about 1.2 KB, so growing by
/// less would reallocate on nearly every packet.
const GROW_STEP: usize = 16 * 1024;

impl ReadBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        ReadBudget(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS)))
    }

    /// Bytes not held by any stream now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

async fn read_head(recv: &mut RecvStream) -> Result<(u8, usize), FrameError> {
    let mut head = [0u8; 5];
    recv.read_exact(&mut head)
        .await
        .map_err(|_| FrameError::Truncated)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    Ok((head[0], len))
}

/// Reads a body of exactly `len` bytes and the end of the stream after it. Memory is taken from
/// `budget` before it is allocated, in steps as the bytes arrive.
async fn read_body(
    recv: &mut RecvStream,
    len: usize,
    budget: &ReadBudget,
) -> Result<Vec<u8>, FrameError> {
    let mut body: Vec<u8> = Vec::new();
    // Held until the body is read: the caller owns the bytes from then on.
    let mut held = None::<tokio::sync::SemaphorePermit<'_>>;
    while body.len() < len {
        let chunk = recv
            .read_chunk(len - body.len(), true)
            .await
            .map_err(|_| FrameError::Truncated)?
            .ok_or(FrameError::Truncated)?;
        let needed = body.len() + chunk.bytes.len();
        if needed > body.capacity() {
            let grown = needed.max(body.capacity() * 2).max(GROW_STEP).min(len);
            let extra = u32::try_from(grown - body.capacity()).map_err(|_| FrameError::TooLong)?;
            let permit = budget
                .0
                .try_acquire_many(extra)
                .map_err(|_| FrameError::BufferFull)?;
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            body.reserve_exact(grown - body.len());
        }
        body.extend_from_slice(&chunk.bytes);
    }
    match recv.read_chunk(1, true).await {
        Ok(None) => Ok(body),
        Ok(Some(_)) => Err(FrameError::TrailingBytes),
        Err(_) => Err(FrameError::Truncated),
    }
}

/// The byte a responder sends once it has read a whole request.
pub const ACCEPTED: u8 = 0x02;

/// Tells the requester the request arrived whole and is being worked on.
pub async fn write_accepted(send: &mut SendStream) -> Result<(), LinkError> {
    send.write_all(&[ACCEPTED])
        .await
        .map_err(|e| LinkError::Stream(format!("writing accepted: {e}")))
}

/// Waits for the accepted byte.
pub async fn read_accepted(recv: &mut RecvStream) -> Result<(), LinkError> {
    let mut b = [0u8; 1];
    recv.read_exact(&mut b)
        .await
        .map_err(|e| LinkError::Stream(format!("reading accepted: {e}")))?;
    if b[0] == ACCEPTED {
        Ok(())
    } else {
        Err(LinkError::BadFrame("expected the accepted byte"))
    }
}

/// Reads a request's head: its kind and length, checked against the kind's limit. Nothing is
/// allocated for the body yet.
pub async fn read_request_head(recv: &mut RecvStream) -> Result<(Kind, usize), FrameError> {
    let (code, len) = read_head(recv).await?;
    let kind = Kind::from_code(code).ok_or(FrameError::UnknownKind)?;
    if len > kind.max_request() {
        return Err(FrameError::TooLong);
    }
    Ok((kind, len))
}

/// Reads the body of a request whose head said `len`, and the end of its stream.
pub async fn read_request_body(
    recv: &mut RecvStream,
    len: usize,
    budget: &ReadBudget,
) -> Result<Vec<u8>, FrameError> {
    read_body(recv, len, budget).await
}

/// Writes a request and finishes the send side.
pub async fn write_request(
    send: &mut SendStream,
    kind: Kind,
    body: &[u8],
) -> Result<(), LinkError> {
    write_frame(send, kind.code(), body).await
}

/// Reads a response and the end of its stream. A requester reads one answer per stream it
/// opened itself, so the memory it takes is bounded by its own requests, not by a shared budget.
pub async fn read_response(recv: &mut RecvStream) -> Result<(Status, Vec<u8>), LinkError> {
    let (code, len) = read_head(recv).await?;
    let status = Status::from_code(code).ok_or(FrameError::UnknownKind)?;
    if len > MAX_RESPONSE {
        return Err(FrameError::TooLong.into());
    }
    let unbounded = ReadBudget::new(len);
    Ok((status, read_body(recv, len, &unbounded).await?))
}

/// Writes a response and finishes the send side.
pub async fn write_response(
    send: &mut SendStream,
    status: Status,
    body: &[u8],
) -> Result<(), LinkError> {
    write_frame(send, status.code(), body).await
}

async fn write_frame(send: &mut SendStream, code: u8, body: &[u8]) -> Result<(), LinkError> {
    let len = u32::try_from(body.len()).map_err(|_| LinkError::BadFrame("body too long"))?;
    let mut head = [0u8; 5];
    head[0] = code;
    head[1..].copy_from_slice(&len.to_be_bytes());
    send.write_all(&head)
        .await
        .map_err(|e| LinkError::Stream(format!("writing frame: {e}")))?;
    send.write_all(body)
        .await
        .map_err(|e| LinkError::Stream(format!("writing frame: {e}")))?;
    send.finish()
        .map_err(|e| LinkError::Stream(format!("finishing stream: {e}")))?;
    Ok(())
}
