//! Sending a request through a path of nodes and reading the layered reply.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_link::{Deadlines, Kind, Link, LinkError, LinkLimits, Pool, Status};
use allium_onion::{
    BuildError, BuiltPacket, Epoch, ErrorCode, IdentityPublicKey, OnionPublicKey, PathHop,
    PathSession, PreparedPath, Reply, ReplyError, SizeClass, prepare_path,
};
use allium_proto::roster::NodeEntry;

/// One hop of a path, resolved from the roster.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The node's identity (pinned on the link, named in the previous slot).
    pub identity: IdentityPublicKey,
    /// Where the node listens.
    pub addr: SocketAddr,
    /// The epoch of the onion key used.
    pub epoch: Epoch,
    /// The node's onion key for that epoch.
    pub onion_key: OnionPublicKey,
}

impl Hop {
    /// The hop as a packet names it.
    pub fn path_hop(&self) -> PathHop {
        PathHop {
            node: self.identity.node_id(),
            epoch: self.epoch,
            onion_key: self.onion_key,
        }
    }
}

/// The size class a request travels in: the smallest that holds it (a request too large for
/// any is refused when the packet is built).
pub(crate) fn request_class(request: &[u8]) -> SizeClass {
    SizeClass::for_request(request.len()).unwrap_or(SizeClass::Large)
}

/// Why a request through the onion path failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request could not be built (too large, bad path).
    #[error("cannot build the packet: {0}")]
    Build(#[from] BuildError),
    /// The roster lists no onion key of a hop for an accepted epoch.
    #[error("the roster has no usable onion key for hop {hop}")]
    NoOnionKey {
        /// Index of the hop.
        hop: usize,
    },
    /// The first hop could not be reached or did not answer in time.
    #[error("the first hop is unreachable: {0}")]
    Guard(#[source] LinkError),
    /// The first hop dropped the packet.
    #[error("the first hop rejected the packet")]
    GuardRejected,
    /// A hop reported an error; the hop index counts from the first hop (0).
    #[error("hop {hop} reported {code:?}")]
    Hop {
        /// Which hop spoke.
        hop: usize,
        /// What it said.
        code: ErrorCode,
    },
    /// The reply could not be authenticated or parsed.
    #[error("unreadable reply: {0}")]
    Reply(#[from] ReplyError),
}

impl SendError {
    /// The index of the hop that failed, when the failure can be attributed: the hop after the
    /// one that reported "next hop …", the reporter itself otherwise.
    pub fn failed_hop(&self) -> Option<usize> {
        match self {
            SendError::Guard(_) | SendError::GuardRejected => Some(0),
            SendError::Hop { hop, code } => Some(match code {
                ErrorCode::NextHopUnreachable
                | ErrorCode::NextHopTimeout
                | ErrorCode::NextHopRejected => hop + 1,
                _ => *hop,
            }),
            _ => None,
        }
    }
}

/// The hop of `node` with its onion key for `epoch` (or the nearest accepted one the roster has).
pub fn hop(node: &NodeEntry, epoch: Epoch) -> Option<Hop> {
    let candidates = [epoch, epoch.next(), epoch.prev()];
    let cert = candidates
        .iter()
        .find_map(|e| node.onion_keys.iter().find(|c| c.epoch() == *e))?;
    Some(Hop {
        identity: node.identity,
        addr: *node.addresses.first()?,
        epoch: cert.epoch(),
        onion_key: *cert.onion_key(),
    })
}

/// Resolves a path of roster entries at `epoch`.
pub fn resolve(path: &[&NodeEntry], epoch: Epoch) -> Result<Vec<Hop>, SendError> {
    path.iter()
        .enumerate()
        .map(|(i, n)| hop(n, epoch).ok_or(SendError::NoOnionKey { hop: i }))
        .collect()
}

/// The onion-key epoch current at `unix_secs` under `roster`'s network.
pub fn epoch_at(epoch_secs: u64, unix_secs: u64) -> Epoch {
    allium_onion::EpochSchedule::new(epoch_secs)
        .unwrap_or_default()
        .epoch_at(unix_secs)
}

/// How long the guard may take to accept a packet before the client counts it as failed.
pub const GUARD_ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);

/// An anonymous client endpoint that sends onion requests over pooled connections to guards.
#[derive(Debug)]
pub struct OnionClient {
    pool: Pool,
    /// Key agreements made ahead for the path last used twice in a row, so that the next
    /// request on it carries only symmetric work.
    ahead: Mutex<Ahead>,
}

#[derive(Debug, Default)]
struct Ahead {
    last: Option<Vec<PathHop>>,
    ready: Option<PreparedPath>,
}

fn same_path(a: &[PathHop], b: &[PathHop]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.node == y.node
                && x.epoch == y.epoch
                && x.onion_key.as_bytes() == y.onion_key.as_bytes()
        })
}

impl OnionClient {
    /// A client bound to an ephemeral local port of the address family of `bind`.
    pub fn new(bind: SocketAddr) -> Result<Self, LinkError> {
        let link = Arc::new(Link::bind_client(bind, LinkLimits::default())?);
        Ok(OnionClient {
            pool: Pool::new(link, Duration::from_secs(5)),
            ahead: Mutex::new(Ahead::default()),
        })
    }

    /// The pool of guard connections.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Sends `request` along `path` (the last hop executes it) and returns the response body.
    /// `timeout` bounds the whole round trip.
    pub async fn send(
        &self,
        path: &[Hop],
        request: &[u8],
        reply_class: SizeClass,
        timeout: Duration,
    ) -> Result<Vec<u8>, SendError> {
        self.send_onion(path, request, reply_class, timeout, false)
            .await
            .map(|(body, _)| body)
    }

    /// [`Self::send`], asking every hop to keep a path session (onion.md §12.1): the returned
    /// session builds later packets on this path that the hops peel without a key agreement.
    pub async fn send_opening(
        &self,
        path: &[Hop],
        request: &[u8],
        reply_class: SizeClass,
        timeout: Duration,
    ) -> Result<(Vec<u8>, PathSession), SendError> {
        let (body, session) = self
            .send_onion(path, request, reply_class, timeout, true)
            .await?;
        let session = session.ok_or(BuildError::BadPathLength {
            max: allium_onion::MAX_HOPS,
            got: 0,
        })?;
        Ok((body, session))
    }

    /// Sends a packet built on a path session (`PathSession::build`) to the path's first hop
    /// and returns the response body.
    pub async fn send_built(
        &self,
        guard: &Hop,
        built: BuiltPacket,
        timeout: Duration,
    ) -> Result<Vec<u8>, SendError> {
        self.exchange(guard, built, timeout).await
    }

    async fn send_onion(
        &self,
        path: &[Hop],
        request: &[u8],
        reply_class: SizeClass,
        timeout: Duration,
        open_session: bool,
    ) -> Result<(Vec<u8>, Option<PathSession>), SendError> {
        let class = request_class(request);
        let hops: Vec<PathHop> = path.iter().map(Hop::path_hop).collect();
        let (prepared, repeat) = {
            let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            let ready = ahead.ready.take().filter(|p| same_path(p.hops(), &hops));
            let repeat = ahead.last.as_deref().is_some_and(|l| same_path(l, &hops));
            ahead.last = Some(hops.clone());
            (ready, repeat)
        };
        let prepared = match prepared {
            Some(p) => p,
            None => prepare_path(&mut rand_core::OsRng, &hops)?,
        };
        let (built, session) = if open_session {
            let (built, session) = prepared.build_opening(request, class, reply_class)?;
            (built, Some(session))
        } else {
            (prepared.build(request, class, reply_class)?, None)
        };
        // A path used twice in a row is likely used again: make the next packet's key
        // agreements while this one travels.
        let next = repeat.then(|| {
            tokio::task::spawn_blocking(move || prepare_path(&mut rand_core::OsRng, &hops).ok())
        });
        let guard = path.first().ok_or(BuildError::BadPathLength {
            max: allium_onion::MAX_HOPS,
            got: 0,
        })?;
        let answer = self.exchange(guard, built, timeout).await;
        if let Some(Ok(Some(p))) = match next {
            Some(task) => Some(task.await),
            None => None,
        } {
            let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            if ahead.ready.is_none() {
                ahead.ready = Some(p);
            }
        }
        Ok((answer?, session))
    }

    /// Sends a built packet to the guard and opens the layered reply.
    async fn exchange(
        &self,
        guard: &Hop,
        built: BuiltPacket,
        timeout: Duration,
    ) -> Result<Vec<u8>, SendError> {
        let (status, mut reply) = self
            .pool
            .request(
                &guard.identity,
                guard.addr,
                Kind::Onion,
                &built.packet,
                Deadlines {
                    accept: timeout.min(GUARD_ACCEPT_TIMEOUT),
                    answer: timeout,
                },
            )
            .await
            .map_err(SendError::Guard)?;
        if status == Status::Rejected {
            return Err(SendError::GuardRejected);
        }
        match built.reply.open(&mut reply)? {
            Reply::Response(body) => Ok(body.to_vec()),
            Reply::Error { hop, code } => Err(SendError::Hop { hop, code }),
        }
    }
}
