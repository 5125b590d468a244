//! What a node does with an onion packet: peel one layer, refuse replays, forward to the next hop
//! over the pooled link and carry the layered reply back — or, as the destination, execute the
//! request and seal the response.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use allium_onion::session::SESSION_VERSION;
use allium_onion::{
    Epoch, ErrorCode, IdentityPublicKey, NodeId, OnionKeyRing, OpenError, PeelError, Peeled,
    ReplayWindow, SessionGrant, SessionRole, SessionTable, packet_epoch, peel, peel_session,
};
use tokio::sync::Semaphore;

use crate::lock;
use crate::metrics::{DropReason, Metrics};
use allium_link::{Deadlines, Kind, LinkError, Pool, Status};
use allium_swarm::stage;

/// Finds where a node named in a routing slot can be reached.
pub trait Neighbours: Send + Sync + 'static {
    /// The identity key to pin and the address of `node`, if the roster lists it.
    fn lookup(&self, node: &NodeId) -> Option<(IdentityPublicKey, SocketAddr)>;
}

/// Executes a request delivered to this node.
pub trait Destination: Send + Sync + 'static {
    /// Answers `request` with a body of at most `max_response` bytes, or `None` to refuse it.
    fn execute(
        &self,
        request: Vec<u8>,
        max_response: usize,
    ) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// Tunables of the onion service.
#[derive(Debug, Clone)]
pub struct OnionConfig {
    /// How long a relay waits for the next hop to accept a packet (a dead hop is found this fast).
    pub forward_timeout: Duration,
    /// How long a relay waits for the next hop's whole reply (longer than any long-poll).
    pub reply_timeout: Duration,
    /// Packets that may wait for their next hop to accept them at once; beyond it packets are
    /// shed. A packet the next hop accepted no longer counts: a long-poll it carries waits
    /// there, up to a minute, without holding a place here.
    pub forward_queue: usize,
    /// Path sessions kept at once (onion.md §12).
    pub max_path_sessions: usize,
}

/// The onion service of one node.
#[derive(Debug)]
pub struct OnionService<N, D> {
    keys: Arc<RwLock<OnionKeyRing>>,
    replay: Mutex<ReplayWindow>,
    sessions: Mutex<SessionTable>,
    pool: Arc<Pool>,
    neighbours: Arc<N>,
    destination: Arc<D>,
    metrics: Metrics,
    deadlines: Deadlines,
    forward_slots: Semaphore,
}

fn drop_reason(e: &PeelError) -> DropReason {
    match e {
        PeelError::BadSize(_) => DropReason::BadSize,
        PeelError::BadVersion(_) => DropReason::BadVersion,
        PeelError::UnknownEpoch(_) => DropReason::UnknownEpoch,
        PeelError::NonContributory => DropReason::NonContributory,
        PeelError::HeaderAuth => DropReason::HeaderAuth,
        PeelError::PayloadAuth => DropReason::PayloadAuth,
        PeelError::Replay => DropReason::Replay,
        PeelError::UnknownSession => DropReason::UnknownSession,
        _ => DropReason::Malformed,
    }
}

/// A packet on its way to the next hop, with its place in the forward queue.
struct Forwarding<'a> {
    packet: Vec<u8>,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl AsRef<[u8]> for Forwarding<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.packet
    }
}

/// Peels this node can do per second on all its cores, measured by peeling `samples` packets
/// of the small class on one thread: the most tags an attacker can make it record.
pub fn measure_peel_rate(samples: u32) -> f64 {
    use allium_onion::{Epoch, OnionSecretKey, PathHop, SizeClass, build_packet};
    let mut rng = rand_core::OsRng;
    let key = OnionSecretKey::generate(Epoch(0), &mut rng);
    let hop = PathHop {
        node: NodeId::from_bytes([7; 32]),
        epoch: Epoch(0),
        onion_key: *key.public(),
    };
    let Ok(built) = build_packet(&mut rng, &[hop], b"", SizeClass::Small, SizeClass::Small) else {
        return 0.0;
    };
    let samples = samples.max(1);
    let started = Instant::now();
    for _ in 0..samples {
        let mut p = built.packet.clone();
        let _ = peel(&key, &mut p, |_, _| true);
    }
    let per_core = f64::from(samples) / started.elapsed().as_secs_f64().max(1e-9);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    per_core * cores as f64
}

/// Seconds since the Unix epoch by the node's clock (onion-key epochs are wall-clock based).
pub fn unix_now() -> u64 {
    crate::clock::now_secs()
}

impl<N: Neighbours, D: Destination> OnionService<N, D> {
    /// A service peeling with `keys`, remembering layers in `replay`.
    pub fn new(
        keys: Arc<RwLock<OnionKeyRing>>,
        replay: ReplayWindow,
        pool: Arc<Pool>,
        neighbours: Arc<N>,
        destination: Arc<D>,
        metrics: Metrics,
        config: &OnionConfig,
    ) -> Self {
        OnionService {
            keys,
            replay: Mutex::new(replay),
            sessions: Mutex::new(SessionTable::new(config.max_path_sessions)),
            pool,
            neighbours,
            destination,
            metrics,
            deadlines: Deadlines {
                accept: config.forward_timeout,
                answer: config.reply_timeout,
            },
            forward_slots: Semaphore::new(config.forward_queue),
        }
    }

    /// Drops the replay filters and path sessions of epochs whose keys were deleted, and the
    /// sessions that expired.
    pub fn forget_epochs(&self, mut keep: impl FnMut(Epoch) -> bool) {
        lock(&self.replay).retain(&mut keep);
        let mut sessions = lock(&self.sessions);
        sessions.retain_epochs(keep);
        sessions.expire(unix_now());
        self.metrics.set_path_sessions(sessions.len());
    }

    /// Peels an onion packet or, by its version byte, a path session's packet.
    fn peel_at<'a>(&self, now: u64, packet: &'a mut [u8]) -> Result<Peeled<'a>, PeelError> {
        if packet.first() == Some(&SESSION_VERSION) {
            return self.peel_session_at(now, packet);
        }
        let epoch = packet_epoch(packet)?;
        let peeled = self.peel_onion_at(now, epoch, packet)?;
        match &peeled {
            Peeled::Forward {
                next,
                opened: Some(grant),
                ..
            } => self.keep_session(grant, SessionRole::Relay { next: *next }, epoch, now),
            Peeled::Deliver {
                opened: Some(grant),
                ..
            } => self.keep_session(grant, SessionRole::Deliver, epoch, now),
            _ => {}
        }
        Ok(peeled)
    }

    /// Keeps the session a layer asked for; a full table only means its sender's later
    /// packets fall back to onion packets.
    fn keep_session(&self, grant: &SessionGrant, role: SessionRole, epoch: Epoch, now: u64) {
        let mut sessions = lock(&self.sessions);
        match sessions.open(grant.clone(), role, epoch, now) {
            Ok(()) => {}
            Err(OpenError::Full) => self.metrics.path_session_refused(),
            Err(e) => tracing::debug!(error = %e, "path session not kept"),
        }
        self.metrics.set_path_sessions(sessions.len());
    }

    fn peel_session_at<'a>(&self, now: u64, packet: &'a mut [u8]) -> Result<Peeled<'a>, PeelError> {
        // The lock is held for the look-up and the window update, not across the decryption.
        let sessions = || lock(&self.sessions);
        let peeled = peel_session(
            packet,
            |sid| sessions().get(sid, now),
            |sid, seq| sessions().accept(sid, seq),
        )?;
        self.metrics.path_session_packet();
        Ok(peeled)
    }

    fn peel_onion_at<'a>(
        &self,
        now: u64,
        epoch: Epoch,
        packet: &'a mut [u8],
    ) -> Result<Peeled<'a>, PeelError> {
        let ring = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = ring.get(epoch, now).ok_or(PeelError::UnknownEpoch(epoch))?;
        // The replay lock is taken only for the filter update, not across the key exchange.
        peel(key, packet, |e, tag| {
            let mut replay = lock(&self.replay);
            let recorded = replay.record(e, tag);
            if let (Some(load), Some(generations)) = (replay.load(e), replay.generations(e)) {
                self.metrics.set_replay_filter_load(load, generations);
            }
            if let Some(generations) = recorded.rolled {
                self.metrics.replay_filter_rolled();
                tracing::warn!(
                    epoch = e.0,
                    generations,
                    memory_bytes = replay.memory_bytes(),
                    "replay filter full: a new generation takes the inserts, the old ones are still looked up"
                );
            }
            if recorded.saturated {
                self.metrics.replay_filter_saturated();
                tracing::error!(
                    epoch = e.0,
                    "replay filter at its ceiling (more packets than this node was measured to peel in a key's lifetime): its false-positive rate rises"
                );
            }
            recorded.fresh
        })
    }

    /// Handles one onion packet; the answer goes back on the stream it came on.
    pub async fn handle(&self, mut packet: Vec<u8>) -> (Status, Vec<u8>) {
        let started = Instant::now();
        let peeled = self.peel_at(unix_now(), &mut packet);
        match peeled {
            Err(e) => {
                tracing::debug!(reason = %e, "packet dropped");
                self.metrics.dropped(drop_reason(&e));
                (Status::Rejected, Vec::new())
            }
            Ok(Peeled::Deliver { request, reply, .. }) => {
                stage::mark("dest.delivered");
                let request = request.to_vec();
                // The packet (up to 64 KiB) is not needed while the request runs, which for a
                // long-poll is up to a minute: only the request's own bytes are kept.
                drop(packet);
                self.metrics.delivered();
                let answer = self.destination.execute(request, reply.max_body()).await;
                match answer {
                    Some(body) if body.len() <= reply.max_body() => match reply.seal(&body) {
                        Ok(sealed) => (Status::Ok, sealed),
                        // Unreachable: the length was checked against the same limit.
                        Err(_) => (Status::Rejected, Vec::new()),
                    },
                    Some(body) => {
                        tracing::warn!(
                            len = body.len(),
                            "destination answer exceeds its reply class"
                        );
                        (Status::Ok, reply.error(ErrorCode::Rejected))
                    }
                    None => (Status::Ok, reply.error(ErrorCode::Rejected)),
                }
            }
            Ok(Peeled::Forward { next, reply, .. }) => {
                stage::mark("relay.peeled");
                let Some((key, addr)) = self.neighbours.lookup(&next) else {
                    self.metrics.dropped(DropReason::NextHopUnreachable);
                    return (Status::Ok, reply.error(ErrorCode::NextHopUnreachable));
                };
                let Ok(slot) = self.forward_slots.try_acquire() else {
                    self.metrics.dropped(DropReason::QueueFull);
                    return (Status::Ok, reply.error(ErrorCode::Overloaded));
                };
                // The packet and its place in the queue are given up once the next hop
                // accepted it; while its answer comes (a minute for a long-poll) this hop
                // keeps only the reply layer.
                let mut held = Some(Forwarding {
                    packet,
                    _slot: slot,
                });
                let outcome = self
                    .pool
                    .request_held(&key, addr, Kind::Onion, &mut held, self.deadlines)
                    .await;
                drop(held);
                let answer = match outcome {
                    Ok((Status::Ok, mut back)) => match reply.wrap(&mut back) {
                        Ok(()) => back,
                        Err(reply) => {
                            self.metrics.dropped(DropReason::NextHopRejected);
                            reply.error(ErrorCode::NextHopRejected)
                        }
                    },
                    Ok((Status::Rejected, _))
                    | Err(LinkError::Stream(_) | LinkError::BadFrame(_) | LinkError::Lost(_)) => {
                        self.metrics.dropped(DropReason::NextHopRejected);
                        reply.error(ErrorCode::NextHopRejected)
                    }
                    Err(LinkError::Timeout) => {
                        self.metrics.dropped(DropReason::NextHopTimeout);
                        reply.error(ErrorCode::NextHopTimeout)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "next hop unreachable");
                        self.metrics.dropped(DropReason::NextHopUnreachable);
                        reply.error(ErrorCode::NextHopUnreachable)
                    }
                };
                self.metrics.relayed(started.elapsed());
                (Status::Ok, answer)
            }
        }
    }
}
