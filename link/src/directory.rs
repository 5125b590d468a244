//! Directory requests over the link: asking a list of sources (guards, authorities) in turn, and
//! fetching a newer roster into whatever holds it. Nodes and clients use this same code.

use std::net::SocketAddr;
use std::time::Duration;

use allium_onion::IdentityPublicKey;
use allium_proto::roster::{DirectoryRequest, DirectoryResponse, Offered, RosterError};

use crate::{Deadlines, Kind, LinkError, Pool, Status};

/// A node that answers directory requests, as the link reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Its identity, pinned on the link.
    pub identity: IdentityPublicKey,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Why no source gave an answer, from the last one tried.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// There was nobody to ask.
    #[error("no directory source")]
    NoSource,
    /// The link to the source failed.
    #[error("{addr}: {source}")]
    Link {
        /// The source's address.
        addr: SocketAddr,
        /// What failed.
        source: LinkError,
    },
    /// The source refused the request at the link.
    #[error("{0}: refused")]
    Refused(SocketAddr),
    /// The answer was not a directory response.
    #[error("{addr}: malformed answer: {source}")]
    Malformed {
        /// The source's address.
        addr: SocketAddr,
        /// Why it did not decode.
        source: allium_proto::DecodeError,
    },
    /// The source answered something other than what was asked for (a refusal, or "not
    /// modified" to a requester that holds no roster).
    #[error("{addr}: unexpected answer {answer:?}")]
    Unexpected {
        /// The source's address.
        addr: SocketAddr,
        /// The answer.
        answer: DirectoryResponse,
    },
    /// The roster that came back failed verification.
    #[error("{addr}: roster refused: {source}")]
    RosterRefused {
        /// The source's address.
        addr: SocketAddr,
        /// Why.
        source: RosterError,
    },
}

/// Sends `request` to each source in turn until one answers with a directory response, and
/// returns it with the source; the error says why the last one failed.
pub async fn ask(
    pool: &Pool,
    sources: &[Source],
    request: &DirectoryRequest,
    timeout: Duration,
) -> Result<(DirectoryResponse, Source), DirectoryError> {
    let bytes = request.encode();
    let mut last = DirectoryError::NoSource;
    for source in sources {
        last = match ask_one(pool, source, &bytes, timeout).await {
            Ok(r) => return Ok((r, *source)),
            Err(e) => e,
        };
    }
    Err(last)
}

async fn ask_one(
    pool: &Pool,
    source: &Source,
    request: &[u8],
    timeout: Duration,
) -> Result<DirectoryResponse, DirectoryError> {
    let addr = source.addr;
    let deadlines = Deadlines::uniform(timeout);
    match pool
        .request(&source.identity, addr, Kind::Directory, request, deadlines)
        .await
    {
        Ok((Status::Ok, body)) => DirectoryResponse::decode(&body)
            .map_err(|source| DirectoryError::Malformed { addr, source }),
        Ok((Status::Rejected, _)) => Err(DirectoryError::Refused(addr)),
        Err(source) => Err(DirectoryError::Link { addr, source }),
    }
}

/// What a roster refresh found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// A source sent a roster and the holder took it, or already held that version.
    Offered(Offered),
    /// A source confirmed the version held is the newest.
    NotModified,
}

/// Asks `sources` in turn for a roster newer than `have_version` and offers what comes to
/// `offer` (a holder's [`RosterHolder::offer`](allium_proto::roster::RosterHolder::offer), or a
/// wrapper that also caches it). A source whose roster is refused is skipped: the next may have
/// a good one.
pub async fn refresh_roster(
    pool: &Pool,
    sources: &[Source],
    have_version: Option<u64>,
    timeout: Duration,
    mut offer: impl FnMut(&[u8]) -> Result<Offered, RosterError>,
) -> Result<Refreshed, DirectoryError> {
    let request = DirectoryRequest::GetRoster { have_version }.encode();
    let mut last = DirectoryError::NoSource;
    for source in sources {
        let addr = source.addr;
        last = match ask_one(pool, source, &request, timeout).await {
            Ok(DirectoryResponse::Roster(bytes)) => match offer(&bytes) {
                Ok(o) => return Ok(Refreshed::Offered(o)),
                Err(source) => DirectoryError::RosterRefused { addr, source },
            },
            Ok(DirectoryResponse::NotModified) if have_version.is_some() => {
                return Ok(Refreshed::NotModified);
            }
            Ok(answer) => DirectoryError::Unexpected { addr, answer },
            Err(e) => e,
        };
        tracing::debug!(error = %last, "directory source gave no roster");
    }
    Err(last)
}
