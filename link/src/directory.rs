//! Directory requests over the link: asking a list of sources (guards, authorities) in turn, and
//! fetching a newer roster into whatever holds it — as a delta from the version held when there
//! is one (whitepaper roster.md §6.3). Nodes and clients use this same code.

use std::net::SocketAddr;
use std::time::Duration;

use allium_onion::IdentityPublicKey;
use allium_proto::roster::{
    DeltaError, DirectoryRequest, DirectoryResponse, Offered, RosterError, RosterHolder,
};

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
    /// The delta that came back did not rebuild a roster the authorities signed, and the whole
    /// roster asked for next did not come.
    #[error("{addr}: delta refused: {source}")]
    DeltaRefused {
        /// The source's address.
        addr: SocketAddr,
        /// Why.
        source: DeltaError,
    },
}

/// Whatever holds the roster a refresh updates: a [`RosterHolder`], or a wrapper that also
/// caches what it takes.
pub trait RosterSink {
    /// The version held.
    fn held_version(&self) -> Option<u64>;
    /// Verifies a whole signed roster and takes it if newer.
    fn offer(&self, signed: &[u8]) -> Result<Offered, RosterError>;
    /// Applies an encoded delta to the roster held and takes the result if it verifies.
    fn apply_delta(&self, delta: &[u8]) -> Result<Offered, DeltaError>;
}

impl RosterSink for RosterHolder {
    fn held_version(&self) -> Option<u64> {
        self.version()
    }
    fn offer(&self, signed: &[u8]) -> Result<Offered, RosterError> {
        RosterHolder::offer(self, signed)
    }
    fn apply_delta(&self, delta: &[u8]) -> Result<Offered, DeltaError> {
        RosterHolder::apply_delta(self, delta)
    }
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

/// Asks `sources` in turn for a roster newer than the one `sink` holds and gives what comes to
/// `sink`: a delta from the version held (roster.md §6.3) when it holds one, the whole roster
/// otherwise. A source whose delta is refused, or that does not know delta requests, is asked
/// for the whole roster; a source whose roster is refused is skipped: the next may have a good
/// one.
pub async fn refresh_roster(
    pool: &Pool,
    sources: &[Source],
    timeout: Duration,
    sink: &impl RosterSink,
) -> Result<Refreshed, DirectoryError> {
    let mut last = DirectoryError::NoSource;
    for source in sources {
        last = match refresh_from(pool, source, timeout, sink).await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        tracing::debug!(error = %last, "directory source gave no roster");
    }
    Err(last)
}

async fn refresh_from(
    pool: &Pool,
    source: &Source,
    timeout: Duration,
    sink: &impl RosterSink,
) -> Result<Refreshed, DirectoryError> {
    let addr = source.addr;
    let have_version = sink.held_version();
    let full = DirectoryRequest::GetRoster { have_version }.encode();
    let answer = match have_version {
        Some(from) => {
            let request = DirectoryRequest::GetDelta { from }.encode();
            match ask_one(pool, source, &request, timeout).await {
                Ok(DirectoryResponse::Delta(bytes)) => match sink.apply_delta(&bytes) {
                    Ok(o) => return Ok(Refreshed::Offered(o)),
                    Err(e) => {
                        tracing::debug!(error = %e, "delta refused; asking for the whole roster");
                        match ask_one(pool, source, &full, timeout).await {
                            Ok(DirectoryResponse::Roster(r)) => Ok(DirectoryResponse::Roster(r)),
                            Ok(DirectoryResponse::NotModified) => {
                                return Err(DirectoryError::DeltaRefused { addr, source: e });
                            }
                            other => other,
                        }
                    }
                },
                // A source that does not know delta requests yet.
                Err(DirectoryError::Refused(_)) => ask_one(pool, source, &full, timeout).await,
                other => other,
            }
        }
        None => ask_one(pool, source, &full, timeout).await,
    };
    match answer? {
        DirectoryResponse::Roster(bytes) => match sink.offer(&bytes) {
            Ok(o) => Ok(Refreshed::Offered(o)),
            Err(source) => Err(DirectoryError::RosterRefused { addr, source }),
        },
        DirectoryResponse::NotModified if have_version.is_some() => Ok(Refreshed::NotModified),
        answer => Err(DirectoryError::Unexpected { addr, answer }),
    }
}
