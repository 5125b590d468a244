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
//! the kind's limit before anything is allocated.

use quinn::{RecvStream, SendStream};

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

async fn read_head(recv: &mut RecvStream) -> Result<(u8, usize), LinkError> {
    let mut head = [0u8; 5];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| LinkError::Stream(format!("reading frame head: {e}")))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    Ok((head[0], len))
}

async fn read_body(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, LinkError> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| LinkError::Stream(format!("reading frame body: {e}")))?;
    Ok(body)
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

/// Reads a request, refusing unknown kinds and oversized lengths before allocating.
pub async fn read_request(recv: &mut RecvStream) -> Result<(Kind, Vec<u8>), LinkError> {
    let (code, len) = read_head(recv).await?;
    let kind = Kind::from_code(code).ok_or(LinkError::BadFrame("unknown request kind"))?;
    if len > kind.max_request() {
        return Err(LinkError::BadFrame("request longer than its kind allows"));
    }
    Ok((kind, read_body(recv, len).await?))
}

/// Writes a request and finishes the send side.
pub async fn write_request(
    send: &mut SendStream,
    kind: Kind,
    body: &[u8],
) -> Result<(), LinkError> {
    write_frame(send, kind.code(), body).await
}

/// Reads a response.
pub async fn read_response(recv: &mut RecvStream) -> Result<(Status, Vec<u8>), LinkError> {
    let (code, len) = read_head(recv).await?;
    let status = Status::from_code(code).ok_or(LinkError::BadFrame("unknown response status"))?;
    if len > MAX_RESPONSE {
        return Err(LinkError::BadFrame("response too long"));
    }
    Ok((status, read_body(recv, len).await?))
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
