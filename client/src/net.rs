//! The client's view of the network: the verified roster, guards, paths of three relays and a
//! destination, and requests to a mailbox's swarm that survive dead relays, syncing members and
//! roster changes (whitepaper client.md §6).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_node::link::{Deadlines, Kind, Status as LinkStatus};
use allium_onion::{IdentityPublicKey, SizeClass};
use allium_swarm::network::NetworkFile;
use allium_swarm::proto::{CursorKey, RetrieveRequest, StoreRequest};
use allium_swarm::roster::{DirectoryRequest, DirectoryResponse, NodeEntry, Roster, SignedRoster};
use allium_swarm::{
    Body, Mailbox, MessageHash, Method, NodeId, Request, Response, ResponseBody, Status,
    StoredMessage,
};
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};

use crate::onion::{Hop, OnionClient, SendError, epoch_at, hop};

/// Guards a client keeps.
pub const GUARDS: usize = 3;
/// How often a long-running client asks for a newer roster (and once at the start of each run).
const ROSTER_REFRESH: Duration = Duration::from_secs(300);
/// How long a relay that failed is left out of new paths.
const AVOID_FOR: Duration = Duration::from_secs(120);

/// Timing of network operations.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Longest one attempt through one path may take (plus the long-poll wait).
    pub attempt: Duration,
    /// Longest a whole operation may take, attempts and roster fetches included: past it the
    /// client reports the network unreachable.
    pub operation: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            attempt: Duration::from_secs(10),
            operation: Duration::from_secs(45),
        }
    }
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No roster could be obtained from any authority or node.
    #[error("no roster: no directory authority or node answered ({0})")]
    NoRoster(String),
    /// The roster has too few nodes for a path of three relays and a destination.
    #[error("the network has {0} usable nodes; a path needs at least 4")]
    TooFewNodes(usize),
    /// The roster names no swarm for the mailbox.
    #[error("the roster has no swarm")]
    NoSwarm,
    /// Every attempt failed before the operation's deadline.
    #[error("the network could not be reached within {secs} s ({attempts} attempts; last: {last})")]
    Unreachable {
        /// The operation's time limit.
        secs: u64,
        /// Attempts made.
        attempts: usize,
        /// The last failure.
        last: String,
    },
    /// The swarm refused the request for a reason retrying does not fix.
    #[error("the swarm refused the request: {0:?}")]
    Refused(Status),
}

/// The path a request took: relays then destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReport {
    /// Identity keys of the hops, the destination last.
    pub hops: Vec<IdentityPublicKey>,
    /// Their addresses.
    pub addrs: Vec<SocketAddr>,
    /// How long the successful attempt took.
    pub rtt: Duration,
    /// Attempts made (1 when the first path worked).
    pub attempts: usize,
}

/// An acknowledged store.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The content hash.
    pub hash: MessageHash,
    /// Members holding it durably (a majority of the swarm).
    pub holders: Vec<NodeId>,
    /// The path used.
    pub path: PathReport,
}

/// A page of messages and the node time it was answered at.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The messages, in cursor order.
    pub messages: Vec<StoredMessage>,
    /// More follow after the last.
    pub more: bool,
    /// Node time of the answer (for the cursor).
    pub node_now: u64,
    /// The path used.
    pub path: PathReport,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn local_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The network prefix two path nodes must not share unless the network allows it: /16 for
/// IPv4, /32 for IPv6.
fn subnet(addr: &SocketAddr) -> Vec<u8> {
    match addr.ip() {
        IpAddr::V4(a) => a.octets()[..2].to_vec(),
        IpAddr::V6(a) => a.octets()[..4].to_vec(),
    }
}

fn random_index(n: usize) -> usize {
    (OsRng.next_u64() % n.max(1) as u64) as usize
}

/// A client's connection to one network.
#[derive(Debug)]
pub struct Net {
    network: NetworkFile,
    onion: OnionClient,
    timing: Timing,
    roster: Mutex<Option<(Roster, Vec<u8>)>>,
    guards: Mutex<Vec<IdentityPublicKey>>,
    avoid: Mutex<HashMap<[u8; 32], Instant>>,
    /// When a directory last confirmed the roster held is the newest.
    refreshed: Mutex<Option<Instant>>,
    /// Node time minus local time, ms: signatures and envelopes use corrected time.
    offset_ms: AtomicI64,
}

impl Net {
    /// A client of `network`, starting from a cached roster (verified again here; refused if
    /// bad) and the guards and clock offset kept from earlier runs.
    pub fn new(
        network: NetworkFile,
        cached_roster: Option<&[u8]>,
        guards: &[[u8; 32]],
        offset_ms: i64,
        timing: Timing,
    ) -> Result<Net, NetError> {
        let onion = OnionClient::new(bind_for(&network)).map_err(|e| NetError::Unreachable {
            secs: 0,
            attempts: 0,
            last: e.to_string(),
        })?;
        let roster = cached_roster.and_then(|b| {
            SignedRoster::decode_and_verify(b, &network, None)
                .ok()
                .map(|r| (r, b.to_vec()))
        });
        let guards = guards
            .iter()
            .filter_map(|g| IdentityPublicKey::from_bytes(g).ok())
            .collect();
        Ok(Net {
            network,
            onion,
            timing,
            roster: Mutex::new(roster),
            guards: Mutex::new(guards),
            avoid: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(None),
            offset_ms: AtomicI64::new(offset_ms),
        })
    }

    /// The network file.
    pub fn network(&self) -> &NetworkFile {
        &self.network
    }

    /// The onion client (for tools that build their own requests).
    pub fn onion(&self) -> &OnionClient {
        &self.onion
    }

    /// The roster held, and its signed bytes (to cache).
    pub fn roster(&self) -> Option<(Roster, Vec<u8>)> {
        lock(&self.roster).clone()
    }

    /// The guards in use.
    pub fn guards(&self) -> Vec<IdentityPublicKey> {
        lock(&self.guards).clone()
    }

    /// Node time minus local time, as last seen.
    pub fn clock_offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Local time corrected to the nodes' time.
    pub fn now_ms(&self) -> u64 {
        local_ms().saturating_add_signed(self.clock_offset_ms())
    }

    fn observe_node_time(&self, node_now: u64) {
        let offset = i64::try_from(node_now).unwrap_or(i64::MAX)
            - i64::try_from(local_ms()).unwrap_or(i64::MAX);
        self.offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Fetches a newer roster from a guard or an authority and verifies it; keeps the held one
    /// when nothing newer and valid comes. Returns the version held.
    pub async fn refresh_roster(&self) -> Result<u64, NetError> {
        let held = self.roster().map(|(r, _)| r.version());
        let request = DirectoryRequest::GetRoster { have_version: held }.encode();
        let mut sources: Vec<(IdentityPublicKey, SocketAddr)> = Vec::new();
        if let Some((roster, _)) = self.roster() {
            for g in self.guards() {
                if let Some(a) = roster.node(&g).and_then(|n| n.addresses.first()) {
                    sources.push((g, *a));
                }
            }
        }
        sources.extend(
            self.network
                .authorities()
                .iter()
                .map(|a| (a.identity, a.address)),
        );
        let mut last = String::from("no source");
        for (identity, addr) in sources {
            let answer = self
                .onion
                .pool()
                .request(
                    &identity,
                    addr,
                    Kind::Directory,
                    &request,
                    Deadlines::uniform(self.timing.attempt),
                )
                .await;
            let bytes = match answer {
                Ok((LinkStatus::Ok, body)) => match DirectoryResponse::decode(&body) {
                    Ok(DirectoryResponse::Roster(b)) => b,
                    Ok(DirectoryResponse::NotModified) => {
                        if let Some(v) = held {
                            *lock(&self.refreshed) = Some(Instant::now());
                            return Ok(v);
                        }
                        continue;
                    }
                    Ok(other) => {
                        last = format!("unexpected answer {other:?}");
                        continue;
                    }
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                },
                Ok((LinkStatus::Rejected, _)) => {
                    last = "refused".into();
                    continue;
                }
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            match SignedRoster::decode_and_verify(&bytes, &self.network, held) {
                Ok(roster) => {
                    let version = roster.version();
                    *lock(&self.refreshed) = Some(Instant::now());
                    *lock(&self.roster) = Some((roster, bytes));
                    self.choose_guards();
                    return Ok(version);
                }
                Err(e) => last = format!("roster refused: {e}"),
            }
        }
        match held {
            Some(v) => Ok(v),
            None => Err(NetError::NoRoster(last)),
        }
    }

    async fn ensure_roster(&self) -> Result<Roster, NetError> {
        let stale = lock(&self.refreshed).is_none_or(|t| t.elapsed() >= ROSTER_REFRESH);
        if self.roster().is_none() {
            self.refresh_roster().await?;
        } else if stale {
            // A cached roster may lack the onion keys of the current epoch or list nodes that
            // left: ask for a newer one, and keep the held one if nobody answers.
            let _ = self.refresh_roster().await;
        }
        self.choose_guards();
        self.roster()
            .map(|(r, _)| r)
            .ok_or_else(|| NetError::NoRoster("none held".into()))
    }

    /// Uses `guards` (kept by another run) instead of the current set, topped up as needed.
    pub fn adopt_guards(&self, guards: &[[u8; 32]]) {
        let ids: Vec<IdentityPublicKey> = guards
            .iter()
            .filter_map(|g| IdentityPublicKey::from_bytes(g).ok())
            .collect();
        if ids != self.guards() {
            *lock(&self.guards) = ids;
            self.choose_guards();
        }
    }

    /// Keeps the guards still in the roster and fills up to [`GUARDS`] with random nodes.
    fn choose_guards(&self) {
        let Some((roster, _)) = self.roster() else {
            return;
        };
        let mut guards = lock(&self.guards);
        guards.retain(|g| roster.node(g).is_some());
        let mut candidates: Vec<&NodeEntry> = roster
            .nodes()
            .iter()
            .filter(|n| !guards.contains(&n.identity) && !n.addresses.is_empty())
            .collect();
        while guards.len() < GUARDS && !candidates.is_empty() {
            let n = candidates.swap_remove(random_index(candidates.len()));
            guards.push(n.identity);
        }
    }

    fn avoided(&self) -> HashSet<[u8; 32]> {
        let mut avoid = lock(&self.avoid);
        avoid.retain(|_, since| since.elapsed() < AVOID_FOR);
        avoid.keys().copied().collect()
    }

    fn avoid(&self, node: &IdentityPublicKey) {
        lock(&self.avoid).insert(node.to_bytes(), Instant::now());
    }

    /// Three relays (a guard, a middle, an exit) then `destination`, all distinct, avoiding
    /// recently failed relays and, unless the network allows it, two nodes of one subnet.
    fn path(&self, roster: &Roster, destination: &NodeEntry) -> Result<Vec<Hop>, NetError> {
        let avoid = self.avoided();
        let same_subnet_ok = self.network.params.allow_same_subnet;
        let fits = |n: &NodeEntry, chosen: &[&NodeEntry]| {
            !n.addresses.is_empty()
                && n.identity != destination.identity
                && !avoid.contains(&n.identity.to_bytes())
                && chosen.iter().all(|c| c.identity != n.identity)
                && (same_subnet_ok
                    || chosen.iter().chain(std::iter::once(&destination)).all(|c| {
                        match (c.addresses.first(), n.addresses.first()) {
                            (Some(a), Some(b)) => subnet(a) != subnet(b),
                            _ => true,
                        }
                    }))
        };
        let mut chosen: Vec<&NodeEntry> = Vec::with_capacity(3);
        let guard = self
            .guards()
            .iter()
            .filter_map(|g| roster.node(g))
            .find(|g| fits(g, &chosen));
        // With every guard down or excluded, any fitting node serves as guard for now.
        let guard = match guard {
            Some(g) => g,
            None => {
                let pool: Vec<&NodeEntry> =
                    roster.nodes().iter().filter(|n| fits(n, &chosen)).collect();
                *pool
                    .get(random_index(pool.len()))
                    .ok_or(NetError::TooFewNodes(roster.nodes().len()))?
            }
        };
        chosen.push(guard);
        for _ in 0..2 {
            let pool: Vec<&NodeEntry> =
                roster.nodes().iter().filter(|n| fits(n, &chosen)).collect();
            let n = *pool
                .get(random_index(pool.len()))
                .ok_or(NetError::TooFewNodes(roster.nodes().len()))?;
            chosen.push(n);
        }
        chosen.push(destination);
        let epoch = epoch_at(self.network.params.epoch_secs, self.now_ms() / 1000);
        chosen
            .iter()
            .map(|n| hop(n, epoch).ok_or(NetError::TooFewNodes(roster.nodes().len())))
            .collect()
    }

    /// Sends a request for `mailbox` to a member of its swarm through a fresh path, and retries
    /// — other paths, other members, a newer roster — until a member executes it or the
    /// operation's time runs out. `make` builds the request for a destination node at a time
    /// (signed requests name both). Stores are idempotent, so a retry never duplicates one.
    pub async fn request(
        &self,
        mailbox: &Mailbox,
        method: Method,
        wait: Duration,
        make: impl Fn(&NodeId, u64) -> Vec<u8>,
    ) -> Result<(Response, PathReport), NetError> {
        let started = Instant::now();
        let deadline = started + self.timing.operation + wait;
        let mut attempts = 0;
        let mut last = String::from("no attempt");
        let mut tried: HashSet<[u8; 32]> = HashSet::new();
        let mut redirect: Option<Vec<NodeId>> = None;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let roster = match tokio::time::timeout(left, self.ensure_roster()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(_) => {
                    last = "no directory answered in time".into();
                    continue;
                }
            };
            let mut members: Vec<&NodeEntry> = match &redirect {
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| IdentityPublicKey::from_bytes(&id.0).ok())
                    .filter_map(|id| roster.node(&id))
                    .collect(),
                None => roster.members_for(&mailbox.0),
            };
            if members.is_empty() {
                return Err(NetError::NoSwarm);
            }
            members.retain(|m| !tried.contains(&m.identity.to_bytes()));
            if members.is_empty() {
                // Every member tried once: start over (a syncing member may be ready now).
                tried.clear();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let destination = members[random_index(members.len())];
            let path = match self.path(&roster, destination) {
                Ok(p) => p,
                // Avoided relays may make paths impossible: forgive them once.
                Err(_) if !lock(&self.avoid).is_empty() => {
                    lock(&self.avoid).clear();
                    self.path(&roster, destination)?
                }
                Err(e) => return Err(e),
            };
            attempts += 1;
            let node = NodeId(destination.identity.to_bytes());
            let request = make(&node, self.now_ms());
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = (self.timing.attempt + wait).min(left);
            let sent = Instant::now();
            let outcome = self
                .onion
                .send(&path, &request, SizeClass::Large, budget)
                .await;
            let rtt = sent.elapsed();
            let body = match outcome {
                Ok(body) => body,
                Err(e) => {
                    last = e.to_string();
                    self.blame(&path, &e);
                    if e.failed_hop() == Some(path.len() - 1) {
                        tried.insert(node.0);
                    }
                    continue;
                }
            };
            let response = match Response::decode(&body, method) {
                Ok(r) => r,
                Err(e) => {
                    last = format!("undecodable answer: {e}");
                    tried.insert(node.0);
                    continue;
                }
            };
            self.observe_node_time(response.now);
            let report = PathReport {
                hops: path.iter().map(|h| h.identity).collect(),
                addrs: path.iter().map(|h| h.addr).collect(),
                rtt,
                attempts,
            };
            match response.result {
                Ok(_) => return Ok((response, report)),
                // Signed with a clock the node refused: the offset is corrected now.
                Err(Status::ClockSkew) => last = "clock skew corrected".into(),
                Err(Status::WrongSwarm) => {
                    last = "wrong swarm".into();
                    redirect = response.redirect.map(|r| r.members);
                    let _ = self.refresh_roster().await;
                }
                Err(
                    s @ (Status::Syncing | Status::NotReplicated | Status::Busy | Status::Internal),
                ) => {
                    last = format!("{s:?}");
                    tried.insert(node.0);
                }
                Err(s) => return Err(NetError::Refused(s)),
            }
        }
        Err(NetError::Unreachable {
            secs: (self.timing.operation + wait).as_secs(),
            attempts,
            last,
        })
    }

    /// Leaves the node a failure names out of new paths: a relay, or the guard.
    fn blame(&self, path: &[Hop], error: &SendError) {
        if let Some(h) = error.failed_hop().and_then(|i| path.get(i)) {
            self.avoid(&h.identity);
            let mut guards = lock(&self.guards);
            if let Some(i) = guards.iter().position(|g| *g == h.identity) {
                // A failed guard goes to the back; it stays a guard unless it leaves the roster.
                let g = guards.remove(i);
                guards.push(g);
            }
        }
    }

    /// Stores `data` in the inbox of `recipient` (an Ed25519 key), acknowledged only once a
    /// majority of the recipient's swarm holds it.
    pub async fn store(&self, recipient: &Mailbox, data: Vec<u8>) -> Result<Stored, NetError> {
        let ttl_ms = self.network.params.max_ttl_secs.saturating_mul(1000);
        let request = Request::unsigned(Body::Store(StoreRequest {
            mailbox: *recipient,
            namespace: 0,
            ttl_ms,
            data,
        }))
        .encode();
        let (response, path) = self
            .request(recipient, Method::Store, Duration::ZERO, |_, _| {
                request.clone()
            })
            .await?;
        match response.result {
            Ok(ResponseBody::Store(s)) => Ok(Stored {
                hash: s.hash,
                holders: s.holders,
                path,
            }),
            _ => Err(NetError::Refused(Status::Internal)),
        }
    }

    /// Fetches messages of `key`'s inbox after `after`, waiting up to `wait` for one to arrive.
    pub async fn fetch(
        &self,
        key: &SigningKey,
        after: Option<CursorKey>,
        wait: Duration,
    ) -> Result<Fetched, NetError> {
        let mailbox = Mailbox(key.verifying_key().to_bytes());
        let wait_ms = u64::try_from(wait.as_millis())
            .unwrap_or(u64::MAX)
            .min(allium_swarm::proto::MAX_WAIT_MS);
        let make = |node: &NodeId, now: u64| {
            Request::signed(
                Body::Retrieve(RetrieveRequest {
                    mailbox,
                    namespace: 0,
                    after,
                    limit: None,
                    wait_ms: (wait_ms > 0).then_some(wait_ms),
                }),
                key,
                node,
                now,
            )
            .encode()
        };
        let (response, path) = self
            .request(
                &mailbox,
                Method::Retrieve,
                Duration::from_millis(wait_ms),
                make,
            )
            .await?;
        match response.result {
            Ok(ResponseBody::Retrieve(r)) => Ok(Fetched {
                messages: r.messages,
                more: r.more,
                node_now: response.now,
                path,
            }),
            _ => Err(NetError::Refused(Status::Internal)),
        }
    }
}

/// An unspecified local address of the family of the network's first authority.
fn bind_for(network: &NetworkFile) -> SocketAddr {
    match network.authorities().first().map(|a| a.address.ip()) {
        Some(IpAddr::V6(_)) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        _ => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
    }
}
