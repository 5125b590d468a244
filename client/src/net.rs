//! The client's view of the network: the verified roster, guards, paths of three relays and a
//! destination, and requests to a mailbox's swarm that survive dead relays, syncing members and
//! roster changes (whitepaper client.md §6).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_link::directory::{self, Source};
use allium_onion::{IdentityPublicKey, SizeClass};
use allium_proto::network::NetworkFile;
use allium_proto::roster::{DirectoryRequest, HeldRoster, NodeEntry, RosterHolder};
use allium_proto::storage::{
    CursorKey, DeleteAllRequest, DeleteRequest, DeliveryToken, INBOX, Namespace, PUBLIC, REQUESTS,
    RetrieveRequest, RosterPageRequest, StoreRequest, UsageRequest, UsageResponse,
};
use allium_proto::{
    Body, Mailbox, MessageHash, Method, NodeId, Request, Response, ResponseBody, Retry, Status,
    StoredMessage,
};
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};

use crate::flows::{Flow, Flows, Plan};
use crate::onion::{Hop, OnionClient, SendError, epoch_at, hop};
use crate::pages;
use crate::path::{PathIndex, PathRules, TooFewNodes};

/// Guards a client keeps.
pub const GUARDS: usize = 3;
/// How often a long-running client asks for a newer roster (and once at the start of each run).
const ROSTER_REFRESH: Duration = Duration::from_secs(300);
/// Failed attempts of one request after which a newer roster is asked for: the failing relays
/// may have restarted with onion keys that only a newer roster lists.
const ROSTER_RETRY_FAILURES: u32 = 4;
/// Least time between two such asks.
const ROSTER_RETRY_GAP: Duration = Duration::from_secs(1);
/// How long to wait before asking another member after a `busy` answer.
const LATER_PAUSE: Duration = Duration::from_millis(200);
/// How long `status` waits for a guard to answer.
const GUARD_PROBE: Duration = Duration::from_secs(5);
/// Nodes asked in turn for a newer roster through the onion before the held one is kept.
const ROSTER_FETCH_NODES: usize = 3;
/// How long a relay that failed is left out of new paths.
const AVOID_FOR: Duration = Duration::from_secs(120);
/// How long a write sent to every member waits for each one beyond a majority.
const MEMBER_AFTER_MAJORITY: Duration = Duration::from_secs(5);

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
    /// The one member a request had to go to (the one answering a polling round) did not
    /// execute it; the round starts again elsewhere.
    #[error("the member answering this round did not answer again")]
    MemberLost,
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

impl PathReport {
    /// The node that answered: the path's last hop.
    pub fn destination(&self) -> Option<NodeId> {
        self.hops.last().map(IdentityPublicKey::node_id)
    }
}

/// A guard and whether it answers.
#[derive(Debug, Clone)]
pub struct GuardHealth {
    /// The guard.
    pub identity: NodeId,
    /// Its address, if the roster lists it.
    pub addr: Option<SocketAddr>,
    /// The round trip of a directory request to it, if it answered.
    pub rtt: Option<Duration>,
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

/// What a client sent and received so far: storage requests (each attempt through a path
/// counts) and their encoded bytes, the onion layers around them not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests sent (attempts).
    pub requests: u64,
    /// Bytes of the requests sent.
    pub request_bytes: u64,
    /// Bytes of the answers received.
    pub response_bytes: u64,
}

/// Who signs requests for a mailbox (storage.md §3, §3.1): its owner's key, or a delegate's,
/// which nodes accept while the mailbox holds its delegation record.
pub trait MailboxSigner: Send + Sync {
    /// `body` signed for the node `node` at `now`.
    fn sign(&self, body: Body, node: &NodeId, now: u64) -> Request;
}

impl MailboxSigner for SigningKey {
    fn sign(&self, body: Body, node: &NodeId, now: u64) -> Request {
        Request::signed(body, self, node, now)
    }
}

/// A delegate's key: signs naming itself as the signer (a linked device, devices.md §2.1).
pub struct Delegate(pub SigningKey);

impl std::fmt::Debug for Delegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Delegate(<redacted>)")
    }
}

impl MailboxSigner for Delegate {
    fn sign(&self, body: Body, node: &NodeId, now: u64) -> Request {
        Request::signed_by_delegate(body, &self.0, node, now)
    }
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

/// Locks `m`, taking its data even if a thread panicked while it held the lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn local_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_index(n: usize) -> usize {
    (OsRng.next_u64() % n.max(1) as u64) as usize
}

/// A client's connection to one network.
#[derive(Debug)]
pub struct Net {
    onion: OnionClient,
    timing: Timing,
    roster: RosterHolder,
    guards: Mutex<Vec<NodeId>>,
    avoid: Mutex<HashMap<NodeId, Instant>>,
    /// The roster in use, indexed for paths when first used.
    paths: Mutex<Option<Arc<PathIndex>>>,
    /// When a directory last confirmed the roster held is the newest.
    refreshed: Mutex<Option<Instant>>,
    /// Node time minus local time, ms: signatures and envelopes use corrected time.
    offset_ms: AtomicI64,
    requests: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    /// Path sessions of the linkable flows (onion.md §12.5).
    flows: Flows,
}

impl Net {
    /// A client of `network`, starting from a cached roster (refused if bad) and the guards and
    /// clock offset kept from earlier runs. `cached_digest` is the roster's verified digest
    /// recorded with it; the roster is verified as a fresh one either way (whitepaper client.md
    /// §6).
    pub fn new(
        network: NetworkFile,
        cached_roster: Option<&[u8]>,
        cached_digest: Option<&[u8; 32]>,
        guards: &[NodeId],
        offset_ms: i64,
        timing: Timing,
    ) -> Result<Net, NetError> {
        let onion = OnionClient::new(bind_for(&network)).map_err(|e| NetError::Unreachable {
            secs: 0,
            attempts: 0,
            last: e.to_string(),
        })?;
        let roster = RosterHolder::new(network);
        if let Some(b) = cached_roster {
            // A damaged or foreign cache is as good as none: a fresh roster is fetched.
            let _ = roster.offer_cached(b, cached_digest);
        }
        let guards = guards.to_vec();
        Ok(Net {
            onion,
            timing,
            roster,
            guards: Mutex::new(guards),
            avoid: Mutex::new(HashMap::new()),
            paths: Mutex::new(None),
            refreshed: Mutex::new(None),
            offset_ms: AtomicI64::new(offset_ms),
            requests: AtomicU64::new(0),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            flows: Flows::default(),
        })
    }

    /// Requests and bytes exchanged with the swarms so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.requests.load(Ordering::Relaxed),
            request_bytes: self.request_bytes.load(Ordering::Relaxed),
            response_bytes: self.response_bytes.load(Ordering::Relaxed),
        }
    }

    /// The network file.
    pub fn network(&self) -> &NetworkFile {
        self.roster.network()
    }

    /// The onion client (for tools that build their own requests).
    pub fn onion(&self) -> &OnionClient {
        &self.onion
    }

    /// The roster held, with its signed bytes (to cache).
    pub fn roster(&self) -> Option<Arc<HeldRoster>> {
        self.roster.current()
    }

    /// The guards in use.
    pub fn guards(&self) -> Vec<NodeId> {
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

    /// Asks for a newer roster and verifies it whole; keeps the held one when nothing newer and
    /// valid comes. Returns the version held. A client holding a roster asks through the onion
    /// (`roster_page`, roster.md §4.4); only one without a usable roster (the first run, one
    /// that can build no path, or one through which no node answered) asks a guard or an
    /// authority directly (the bootstrap).
    pub async fn refresh_roster(&self) -> Result<u64, NetError> {
        if let Some(held) = self.roster() {
            let fetched =
                tokio::time::timeout(self.timing.operation, self.refresh_through_onion(&held))
                    .await;
            if let Ok(Ok(())) = fetched {
                *lock(&self.refreshed) = Some(Instant::now());
                self.choose_guards();
                return Ok(self.roster.version().unwrap_or(held.roster().version()));
            }
            // No path, or none through which a node answered in time: the roster held no longer
            // reaches the network (after every node restarted with new onion keys, say), so only
            // the directory can give the one that does.
        }
        self.bootstrap_roster().await
    }

    /// Fetches the roster through the onion from a node of `roster`, a few nodes in turn, and
    /// adopts it if it verifies and is newer. `TooFewNodes` when the roster can build no path.
    async fn refresh_through_onion(&self, held: &Arc<HeldRoster>) -> Result<(), NetError> {
        let roster = held.roster();
        let mut last = String::from("no attempt");
        for _ in 0..ROSTER_FETCH_NODES {
            let avoid = self.avoided();
            let candidates: Vec<&NodeEntry> = roster
                .nodes()
                .iter()
                .filter(|n| !n.addresses.is_empty() && !avoid.contains(&n.identity.node_id()))
                .collect();
            let Some(&destination) = candidates.get(random_index(candidates.len())) else {
                return Err(NetError::TooFewNodes(0));
            };
            // One path for every page: each page is its own onion packet with fresh keys, and
            // the destination sees the whole fetch anyway; more paths would show the burst to
            // more relays and hide nothing.
            let path = match self.path(held, destination) {
                Ok(p) => p,
                // Avoided relays may make paths impossible: forgive them once.
                Err(_) if !lock(&self.avoid).is_empty() => {
                    lock(&self.avoid).clear();
                    self.path(held, destination)?
                }
                Err(e) => return Err(e),
            };
            let ask = |request: RosterPageRequest| {
                let path = &path;
                async move {
                    let bytes = Request::unsigned(Body::RosterPage(request)).encode();
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    self.request_bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    let body = self
                        .onion
                        .send(path, &bytes, SizeClass::Large, self.timing.attempt)
                        .await
                        .inspect_err(|e| self.blame(path, e))
                        .map_err(|e| e.to_string())?;
                    self.response_bytes
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                    let response = Response::decode(&body, Method::RosterPage)
                        .map_err(|e| format!("undecodable answer: {e}"))?;
                    self.observe_node_time(response.now);
                    Ok::<_, String>(response)
                }
            };
            match pages::fetch_roster(Some(roster.version()), ask).await {
                Ok(None) => return Ok(()),
                Ok(Some(fetched)) => match self.roster.offer(&fetched.signed) {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        // Not the network's roster: that node is not asked again for a while.
                        self.avoid(destination.identity.node_id());
                        last = format!("roster refused: {e}");
                    }
                },
                Err(e) => last = e.to_string(),
            }
        }
        Err(NetError::NoRoster(last))
    }

    /// Fetches a roster over the link from the guards, then the authorities (the bootstrap of
    /// a client without a usable roster), and verifies it.
    async fn bootstrap_roster(&self) -> Result<u64, NetError> {
        let mut sources: Vec<Source> = Vec::new();
        if let Some(h) = self.roster() {
            for g in self.guards() {
                if let Some(n) = h.roster().node(&g) {
                    if let Some(addr) = n.addresses.first() {
                        sources.push(Source {
                            identity: n.identity,
                            addr: *addr,
                        });
                    }
                }
            }
        }
        sources.extend(self.network().authorities().iter().map(|a| Source {
            identity: a.identity,
            addr: a.address,
        }));
        let refreshed = directory::refresh_roster(
            self.onion.pool(),
            &sources,
            self.timing.attempt,
            &self.roster,
        )
        .await;
        match (refreshed, self.roster.version()) {
            (Ok(_), Some(version)) => {
                *lock(&self.refreshed) = Some(Instant::now());
                self.choose_guards();
                Ok(version)
            }
            (Err(_), Some(version)) => Ok(version),
            (Ok(_), None) => Err(NetError::NoRoster("no roster came".into())),
            (Err(e), None) => Err(NetError::NoRoster(e.to_string())),
        }
    }

    async fn ensure_roster(&self) -> Result<Arc<HeldRoster>, NetError> {
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
            .ok_or_else(|| NetError::NoRoster("none held".into()))
    }

    /// Each guard with its address and the round trip of a directory request to it (`None` when
    /// it did not answer within five seconds).
    pub async fn guard_health(&self) -> Vec<GuardHealth> {
        let Some(held) = self.roster() else {
            return Vec::new();
        };
        let request = DirectoryRequest::GetRoster {
            have_version: Some(held.version()),
        };
        let mut out = Vec::new();
        for g in self.guards() {
            let entry = held.roster().node(&g);
            let source = entry.and_then(|n| {
                Some(Source {
                    identity: n.identity,
                    addr: *n.addresses.first()?,
                })
            });
            let rtt = match &source {
                Some(source) => {
                    let started = Instant::now();
                    let sources = std::slice::from_ref(source);
                    let answer =
                        directory::ask(self.onion.pool(), sources, &request, GUARD_PROBE).await;
                    answer.ok().map(|_| started.elapsed())
                }
                None => None,
            };
            out.push(GuardHealth {
                identity: g,
                addr: source.map(|s| s.addr),
                rtt,
            });
        }
        out
    }

    /// Uses `guards` (kept by another run) instead of the current set, topped up as needed.
    pub fn adopt_guards(&self, guards: &[NodeId]) {
        if guards != self.guards() {
            *lock(&self.guards) = guards.to_vec();
            self.choose_guards();
        }
    }

    /// Keeps the guards still in the roster and fills up to [`GUARDS`] with random nodes.
    fn choose_guards(&self) {
        let Some(held) = self.roster() else {
            return;
        };
        let roster = held.roster();
        let mut guards = lock(&self.guards);
        guards.retain(|g| roster.node(g).is_some());
        let mut candidates: Vec<&NodeEntry> = roster
            .nodes()
            .iter()
            .filter(|n| !guards.contains(&n.identity.node_id()) && !n.addresses.is_empty())
            .collect();
        while guards.len() < GUARDS && !candidates.is_empty() {
            let n = candidates.swap_remove(random_index(candidates.len()));
            guards.push(n.identity.node_id());
        }
    }

    fn avoided(&self) -> HashSet<NodeId> {
        let mut avoid = lock(&self.avoid);
        avoid.retain(|_, since| since.elapsed() < AVOID_FOR);
        avoid.keys().copied().collect()
    }

    fn avoid(&self, node: NodeId) {
        lock(&self.avoid).insert(node, Instant::now());
    }

    /// Three relays (a guard, a middle, an exit) then `destination`, all distinct, avoiding
    /// recently failed relays and, unless the network allows it, two nodes of one subnet
    /// ([`PathIndex::choose`]). `destination` is a node of `held`.
    fn path(&self, held: &Arc<HeldRoster>, destination: &NodeEntry) -> Result<Vec<Hop>, NetError> {
        let index = self.path_index(held);
        let roster = index.roster();
        let avoid = self.avoided();
        let guards = self.guards();
        let rules = PathRules {
            guards: &guards,
            avoid: &avoid,
            same_subnet_ok: self.network().params.allow_same_subnet,
        };
        let chosen = index
            .choose(destination, &rules, &mut OsRng)
            .map_err(|TooFewNodes(n)| NetError::TooFewNodes(n))?;
        let epoch = epoch_at(self.network().params.epoch_secs, self.now_ms() / 1000);
        chosen
            .iter()
            .map(|n| hop(n, epoch).ok_or(NetError::TooFewNodes(roster.nodes().len())))
            .collect()
    }

    /// The path index of `held`: the one kept if it was built from that roster, else a new one
    /// (kept when `held` is the roster in use).
    fn path_index(&self, held: &Arc<HeldRoster>) -> Arc<PathIndex> {
        let mut kept = lock(&self.paths);
        if let Some(index) = kept.as_ref().filter(|i| Arc::ptr_eq(i.held(), held)) {
            return index.clone();
        }
        let index = Arc::new(PathIndex::new(held.clone()));
        if self.roster().is_some_and(|h| Arc::ptr_eq(&h, held)) {
            *kept = Some(index.clone());
        }
        index
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
        self.request_excluding(mailbox, method, wait, make, &HashSet::new())
            .await
    }

    /// [`Self::request`] to a member of the swarm not in `exclude` (a reader asking a majority
    /// asks each member once); [`NetError::NoSwarm`] when every member is excluded.
    pub async fn request_excluding(
        &self,
        mailbox: &Mailbox,
        method: Method,
        wait: Duration,
        make: impl Fn(&NodeId, u64) -> Vec<u8>,
        exclude: &HashSet<NodeId>,
    ) -> Result<(Response, PathReport), NetError> {
        self.request_among(mailbox, method, wait, make, Members::Except(exclude), None)
            .await
    }

    /// [`Self::request_excluding`] for a request of `flow`: on the flow's path session when it
    /// has one to an allowed member (onion.md §12.5), else opening one.
    pub async fn request_in_flow(
        &self,
        flow: Flow,
        mailbox: &Mailbox,
        method: Method,
        make: impl Fn(&NodeId, u64) -> Vec<u8>,
        exclude: &HashSet<NodeId>,
    ) -> Result<(Response, PathReport), NetError> {
        self.request_among(
            mailbox,
            method,
            Duration::ZERO,
            make,
            Members::Except(exclude),
            Some(flow),
        )
        .await
    }

    /// [`Self::request`] to the members `among` allows. With [`Members::Only`], a second refusal
    /// or failure of that member ends the request with [`NetError::MemberLost`] (failed relays
    /// are still replaced).
    async fn request_among(
        &self,
        mailbox: &Mailbox,
        method: Method,
        wait: Duration,
        make: impl Fn(&NodeId, u64) -> Vec<u8>,
        among: Members<'_>,
        flow: Option<Flow>,
    ) -> Result<(Response, PathReport), NetError> {
        let empty = HashSet::new();
        let (exclude, only) = match among {
            Members::Except(e) => (e, None),
            Members::Only(n) => (&empty, Some(n)),
        };
        let started = Instant::now();
        let deadline = started + self.timing.operation + wait;
        let mut attempts = 0;
        let mut last = String::from("no attempt");
        let mut tried: HashSet<NodeId> = HashSet::new();
        let mut redirect: Option<Vec<NodeId>> = None;
        let mut pinned_retried = false;
        let mut failures: u32 = 0;
        // Members that refused with retry class "each member": refused by all, it is final.
        let mut refused: HashSet<NodeId> = HashSet::new();
        let mut refusal = Status::NotDelegated;
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
                    .filter_map(|id| roster.roster().node(id))
                    .collect(),
                None => roster.roster().members_for(mailbox),
            };
            members.retain(|m| !exclude.contains(&m.identity.node_id()));
            if let Some(only) = only {
                members.retain(|m| m.identity.node_id() == only);
                if members.is_empty() || (tried.contains(&only) && pinned_retried) {
                    return Err(NetError::MemberLost);
                }
                // One more attempt at it first: on a busy machine or network a single time-out
                // says little, and starting the round again elsewhere repeats its pages.
                if tried.remove(&only) {
                    pinned_retried = true;
                }
            }
            if members.is_empty() {
                return Err(NetError::NoSwarm);
            }
            if !refused.is_empty()
                && members
                    .iter()
                    .all(|m| refused.contains(&m.identity.node_id()))
            {
                return Err(NetError::Refused(refusal));
            }
            members.retain(|m| !tried.contains(&m.identity.node_id()));
            if members.is_empty() {
                // Every member tried once: start over (a syncing member may be ready now).
                tried.clear();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let allowed: HashSet<NodeId> = members.iter().map(|m| m.identity.node_id()).collect();
            // A flow's live session decides the destination and the path.
            let session = flow.as_ref().and_then(|f| {
                self.flows
                    .live_path(f, |n| allowed.contains(n) && !tried.contains(n))
            });
            let (node, path) = match session {
                Some(live) => live,
                None => {
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
                    (destination.identity.node_id(), path)
                }
            };
            attempts += 1;
            let request = make(&node, self.now_ms());
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = (self.timing.attempt + wait).min(left);
            let sent = Instant::now();
            self.requests.fetch_add(1, Ordering::Relaxed);
            self.request_bytes
                .fetch_add(request.len() as u64, Ordering::Relaxed);
            let outcome = self
                .send_on(flow.as_ref(), node, &path, &request, budget)
                .await;
            let rtt = sent.elapsed();
            let body = match outcome {
                Ok(body) => {
                    self.response_bytes
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                    body
                }
                // The session is gone at some hop (it restarted, or forgot it): the request is
                // sent again at once as an onion packet, and no node is blamed.
                Err(Sent::Session(e)) => {
                    last = e.to_string();
                    continue;
                }
                Err(Sent::Onion(e)) => {
                    last = e.to_string();
                    self.blame(&path, &e);
                    if e.failed_hop() == Some(path.len() - 1) {
                        tried.insert(node);
                    }
                    failures += 1;
                    let recent =
                        lock(&self.refreshed).is_some_and(|t| t.elapsed() < ROSTER_RETRY_GAP);
                    if failures % ROSTER_RETRY_FAILURES == 0 && !recent {
                        let _ = self.refresh_roster().await;
                    }
                    continue;
                }
            };
            let response = match Response::decode(&body, method) {
                Ok(r) => r,
                Err(e) => {
                    last = format!("undecodable answer: {e}");
                    tried.insert(node);
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
            let status = match response.result {
                Ok(_) => return Ok((response, report)),
                Err(status) => status,
            };
            last = format!("{status:?}");
            if status == Status::WrongSwarm {
                redirect = response.redirect.map(|r| r.members);
                let _ = self.refresh_roster().await;
            }
            match status.retry() {
                // Signed with a clock the node refused: the offset is corrected now.
                Retry::Now => {}
                Retry::Elsewhere => {
                    tried.insert(node);
                }
                Retry::Later => {
                    tried.insert(node);
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(LATER_PAUSE.min(left)).await;
                }
                Retry::EachMember => {
                    tried.insert(node);
                    refused.insert(node);
                    refusal = status;
                }
                Retry::Never => return Err(NetError::Refused(status)),
            }
        }
        Err(NetError::Unreachable {
            secs: (self.timing.operation + wait).as_secs(),
            attempts,
            last,
        })
    }

    /// Sends `request` to `destination` on `path`: as an onion packet, or for a request of a
    /// flow, on the flow's path session (opening one when it has none on this path).
    async fn send_on(
        &self,
        flow: Option<&Flow>,
        destination: NodeId,
        path: &[Hop],
        request: &[u8],
        budget: Duration,
    ) -> Result<Vec<u8>, Sent> {
        let reply_class = SizeClass::Large;
        let plan = match flow {
            Some(f) => self
                .flows
                .plan(f, path, request, reply_class)
                .map_err(|e| Sent::Onion(e.into()))?,
            None => Plan::Plain,
        };
        match (plan, flow) {
            (Plan::Session(built), Some(f)) => {
                let guard = path.first().ok_or(Sent::Onion(SendError::GuardRejected))?;
                match self.onion.send_built(guard, built, budget).await {
                    Ok(body) => {
                        self.flows.answered(f);
                        Ok(body)
                    }
                    Err(e) => {
                        self.flows.failed(f);
                        Err(Sent::Session(e))
                    }
                }
            }
            (Plan::Open, Some(f)) => {
                let (body, session) = self
                    .onion
                    .send_opening(path, request, reply_class, budget)
                    .await
                    .map_err(Sent::Onion)?;
                let lifetime = self.session_lifetime(session.epochs());
                self.flows
                    .opened(*f, destination, path.to_vec(), session, lifetime);
                Ok(body)
            }
            _ => self
                .onion
                .send(path, request, reply_class, budget)
                .await
                .map_err(Sent::Onion),
        }
    }

    /// How long the hops keep a session opened now with onion keys of `epochs`: until the
    /// first of them is deleted (the start of epoch `e + 2`), at most the session lifetime.
    fn session_lifetime(&self, epochs: &[allium_onion::Epoch]) -> Duration {
        let epoch_secs = self.network().params.epoch_secs.max(1);
        let now = self.now_ms() / 1000;
        epochs
            .iter()
            .map(|e| {
                let deleted = (u64::from(e.0) + 2).saturating_mul(epoch_secs);
                Duration::from_secs(deleted.saturating_sub(now))
            })
            .min()
            .unwrap_or(Duration::ZERO)
            .min(crate::flows::SESSION_LIFETIME)
    }

    /// Leaves the node a failure names out of new paths: a relay, or the guard.
    fn blame(&self, path: &[Hop], error: &SendError) {
        if let Some(h) = error.failed_hop().and_then(|i| path.get(i)) {
            let id = h.identity.node_id();
            self.avoid(id);
            let mut guards = lock(&self.guards);
            if let Some(i) = guards.iter().position(|g| *g == id) {
                // A failed guard goes to the back; it stays a guard unless it leaves the roster.
                let g = guards.remove(i);
                guards.push(g);
            }
        }
    }

    /// Stores `data` in the inbox of `recipient` (an Ed25519 key), acknowledged only once a
    /// majority of the recipient's swarm holds it.
    pub async fn store(&self, recipient: &Mailbox, data: Vec<u8>) -> Result<Stored, NetError> {
        let ttl_ms = self.network().params.max_ttl_secs.saturating_mul(1000);
        self.store_in(recipient, INBOX, ttl_ms, data, None).await
    }

    /// Delivers `data` to `recipient`: into its inbox with its delivery token `token`, or, without
    /// one or when the swarm no longer admits it, into its requests share (storage.md §4.5).
    /// Returns the acknowledgement and whether the token was refused.
    pub async fn deliver(
        &self,
        recipient: &Mailbox,
        data: Vec<u8>,
        token: Option<[u8; 32]>,
    ) -> Result<(Stored, bool), NetError> {
        let ttl_ms = self.network().params.max_ttl_secs.saturating_mul(1000);
        if let Some(token) = token {
            match self
                .store_with(recipient, INBOX, ttl_ms, data.clone(), Some(token), None)
                .await
            {
                Err(NetError::Refused(Status::TokenRefused)) => {}
                other => return other.map(|s| (s, false)),
            }
        }
        let stored = self
            .store_in(recipient, REQUESTS, ttl_ms, data, None)
            .await?;
        Ok((stored, token.is_some()))
    }

    /// Stores `data` in `namespace` of `mailbox` for `ttl_ms`, signed with `owner` (the mailbox
    /// key) where the namespace needs it; acknowledged once a majority of the swarm holds it.
    pub async fn store_in(
        &self,
        mailbox: &Mailbox,
        namespace: Namespace,
        ttl_ms: u64,
        data: Vec<u8>,
        owner: Option<&dyn MailboxSigner>,
    ) -> Result<Stored, NetError> {
        self.store_with(mailbox, namespace, ttl_ms, data, None, owner)
            .await
    }

    /// [`Self::store_in`] with an inbox delivery token.
    async fn store_with(
        &self,
        mailbox: &Mailbox,
        namespace: Namespace,
        ttl_ms: u64,
        data: Vec<u8>,
        token: Option<[u8; 32]>,
        owner: Option<&dyn MailboxSigner>,
    ) -> Result<Stored, NetError> {
        let body = Body::Store(StoreRequest {
            mailbox: *mailbox,
            namespace,
            ttl_ms,
            data,
            token: token.map(DeliveryToken),
        });
        let unsigned = Request::unsigned(body.clone()).encode();
        let make = |node: &NodeId, now: u64| match owner {
            Some(key) => key.sign(body.clone(), node, now).encode(),
            None => unsigned.clone(),
        };
        let (response, path) = self
            .request(mailbox, Method::Store, Duration::ZERO, make)
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

    /// Every live message of `mailbox`'s public namespace (storage.md §4.3), read from a
    /// majority of its swarm and merged: any store a majority acknowledged is in it, even when
    /// one member has not received its copy yet. No signature; all pages.
    pub async fn fetch_public(&self, mailbox: &Mailbox) -> Result<Vec<StoredMessage>, NetError> {
        let members = self.swarm_size(mailbox).await?;
        let mut asked: HashSet<NodeId> = HashSet::new();
        let mut merged: HashMap<MessageHash, StoredMessage> = HashMap::new();
        while asked.len() < members / 2 + 1 {
            let (node, messages) = self.fetch_public_from(mailbox, &asked).await?;
            asked.insert(node);
            for m in messages {
                merged.insert(m.hash, m);
            }
        }
        let mut out: Vec<StoredMessage> = merged.into_values().collect();
        out.sort_by_key(|m| (m.timestamp, m.hash));
        Ok(out)
    }

    /// Every page of `mailbox`'s public namespace from one member not in `exclude`.
    async fn fetch_public_from(
        &self,
        mailbox: &Mailbox,
        exclude: &HashSet<NodeId>,
    ) -> Result<(NodeId, Vec<StoredMessage>), NetError> {
        let mut out = Vec::new();
        let mut after = None;
        let mut node: Option<NodeId> = None;
        loop {
            let body = Body::Retrieve(RetrieveRequest {
                mailbox: *mailbox,
                namespace: PUBLIC,
                after,
                limit: None,
                wait_ms: None,
            });
            let request = Request::unsigned(body).encode();
            // Later pages from the member that answered the first, so pages line up.
            let others: HashSet<NodeId>;
            let exclude = match node {
                None => exclude,
                Some(first) => {
                    let roster = self.ensure_roster().await?;
                    others = roster
                        .roster()
                        .members_for(mailbox)
                        .iter()
                        .map(|m| m.identity.node_id())
                        .filter(|id| *id != first)
                        .collect();
                    &others
                }
            };
            let (response, path) = self
                .request_excluding(
                    mailbox,
                    Method::Retrieve,
                    Duration::ZERO,
                    |_, _| request.clone(),
                    exclude,
                )
                .await?;
            let answered = path.destination().ok_or(NetError::NoSwarm)?;
            node.get_or_insert(answered);
            let Ok(ResponseBody::Retrieve(page)) = response.result else {
                return Err(NetError::Refused(Status::Internal));
            };
            after = page.messages.last().map(|m| CursorKey {
                timestamp: m.timestamp,
                hash: m.hash,
            });
            out.extend(page.messages);
            if !page.more || after.is_none() {
                return Ok((answered, out));
            }
        }
    }

    /// Every live message of `namespace` of `mailbox`, all pages from one member, signed with
    /// `key` (the namespaces other than the public one are read by their owner).
    pub async fn retrieve_all(
        &self,
        mailbox: &Mailbox,
        namespace: Namespace,
        key: &dyn MailboxSigner,
    ) -> Result<Vec<StoredMessage>, NetError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let make = |node: &NodeId, now: u64| {
                key.sign(
                    Body::Retrieve(RetrieveRequest {
                        mailbox: *mailbox,
                        namespace,
                        after,
                        limit: None,
                        wait_ms: None,
                    }),
                    node,
                    now,
                )
                .encode()
            };
            let (response, _) = self
                .request(mailbox, Method::Retrieve, Duration::ZERO, make)
                .await?;
            let Ok(ResponseBody::Retrieve(page)) = response.result else {
                return Err(NetError::Refused(Status::Internal));
            };
            after = page.messages.last().map(|m| CursorKey {
                timestamp: m.timestamp,
                hash: m.hash,
            });
            out.extend(page.messages);
            if !page.more || after.is_none() {
                return Ok(out);
            }
        }
    }

    /// `body`, signed by `key` for the member it goes to, sent as [`Self::request`] sends: the
    /// body of the answer it executed.
    pub(crate) async fn signed(
        &self,
        mailbox: &Mailbox,
        method: Method,
        body: Body,
        key: &dyn MailboxSigner,
    ) -> Result<ResponseBody, NetError> {
        self.signed_on(None, mailbox, method, body, key).await
    }

    /// [`Self::signed`] for a request of `flow`, on the flow's path session (onion.md §12.5).
    pub(crate) async fn signed_in_flow(
        &self,
        flow: Flow,
        mailbox: &Mailbox,
        method: Method,
        body: Body,
        key: &dyn MailboxSigner,
    ) -> Result<ResponseBody, NetError> {
        self.signed_on(Some(flow), mailbox, method, body, key).await
    }

    async fn signed_on(
        &self,
        flow: Option<Flow>,
        mailbox: &Mailbox,
        method: Method,
        body: Body,
        key: &dyn MailboxSigner,
    ) -> Result<ResponseBody, NetError> {
        let make = |node: &NodeId, now: u64| key.sign(body.clone(), node, now).encode();
        let anyone = HashSet::new();
        let (response, _) = self
            .request_among(
                mailbox,
                method,
                Duration::ZERO,
                make,
                Members::Except(&anyone),
                flow,
            )
            .await?;
        response
            .result
            .map_err(|_| NetError::Refused(Status::Internal))
    }

    /// Deletes the messages `hashes` (at most 256) of `namespace` of `mailbox`, signed with
    /// `key`. Returns how many were live.
    pub async fn delete(
        &self,
        mailbox: &Mailbox,
        namespace: Namespace,
        hashes: Vec<MessageHash>,
        key: &dyn MailboxSigner,
    ) -> Result<usize, NetError> {
        if hashes.is_empty() {
            return Ok(0);
        }
        let body = Body::Delete(DeleteRequest {
            mailbox: *mailbox,
            namespace,
            hashes,
        });
        match self.signed(mailbox, Method::Delete, body, key).await? {
            ResponseBody::Delete(d) => Ok(d.deleted.len()),
            _ => Err(NetError::Refused(Status::Internal)),
        }
    }

    /// How many members the roster names for `mailbox`'s swarm.
    async fn swarm_size(&self, mailbox: &Mailbox) -> Result<usize, NetError> {
        Ok(self
            .ensure_roster()
            .await?
            .roster()
            .members_for(mailbox)
            .len())
    }

    /// Deletes every message of `namespace` of `mailbox`, signed with `key`, at every member of
    /// its swarm that answers, a majority at least. Returns the most any member held live.
    ///
    /// A member's `delete_all` removes what that member holds (storage.md §5.2), and a store the
    /// rest of the swarm refused stays held where it landed (§7), so asking one member would
    /// leave such a message to spread again once the others have room.
    pub async fn delete_all(
        &self,
        mailbox: &Mailbox,
        namespace: Namespace,
        key: &dyn MailboxSigner,
    ) -> Result<u64, NetError> {
        let members = self.swarm_size(mailbox).await?;
        let body = Body::DeleteAll(DeleteAllRequest {
            mailbox: *mailbox,
            namespace,
        });
        let make = |node: &NodeId, now: u64| key.sign(body.clone(), node, now).encode();
        let mut asked: HashSet<NodeId> = HashSet::new();
        let mut live = 0;
        while asked.len() < members {
            let request =
                self.request_excluding(mailbox, Method::DeleteAll, Duration::ZERO, make, &asked);
            // Past a majority, a member that does not answer soon gets the tombstones from the
            // others (§9.3); it is not worth a whole operation's time.
            let answer = if asked.len() > members / 2 {
                match tokio::time::timeout(MEMBER_AFTER_MAJORITY, request).await {
                    Ok(answer) => answer,
                    Err(_) => break,
                }
            } else {
                request.await
            };
            let (response, path) = match answer {
                Ok(answer) => answer,
                Err(_) if asked.len() > members / 2 => break,
                Err(e) => return Err(e),
            };
            let node = path.destination().ok_or(NetError::NoSwarm)?;
            match response.result {
                Ok(ResponseBody::DeleteAll(d)) => live = live.max(d.count),
                _ => return Err(NetError::Refused(Status::Internal)),
            }
            asked.insert(node);
        }
        Ok(live)
    }

    /// What `namespace` of `mailbox` and the whole mailbox hold, against their limits, as one
    /// member counts it (storage.md §4.5), signed with `key`.
    pub async fn usage(
        &self,
        mailbox: &Mailbox,
        namespace: Namespace,
        key: &dyn MailboxSigner,
    ) -> Result<UsageResponse, NetError> {
        let body = Body::Usage(UsageRequest {
            mailbox: *mailbox,
            namespace,
        });
        match self.signed(mailbox, Method::Usage, body, key).await? {
            ResponseBody::Usage(u) => Ok(u),
            _ => Err(NetError::Refused(Status::Internal)),
        }
    }

    /// Fetches messages of `key`'s inbox after `after`, waiting up to `wait` for one to arrive,
    /// from any member of its swarm, or only from member `at` (the next page of a polling round,
    /// storage §8.1: [`NetError::MemberLost`] if it does not answer).
    pub async fn fetch(
        &self,
        key: &SigningKey,
        after: Option<CursorKey>,
        wait: Duration,
        at: Option<NodeId>,
    ) -> Result<Fetched, NetError> {
        let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());
        self.fetch_for(&mailbox, key, after, wait, at).await
    }

    /// Fetches messages of `mailbox`'s inbox after `after`, signed by `key` (the owner or a
    /// delegate), waiting up to `wait` for one to arrive, from any member or only from `at`.
    pub async fn fetch_for(
        &self,
        mailbox: &Mailbox,
        key: &dyn MailboxSigner,
        after: Option<CursorKey>,
        wait: Duration,
        at: Option<NodeId>,
    ) -> Result<Fetched, NetError> {
        self.fetch_namespace(mailbox, INBOX, key, after, wait, at)
            .await
    }

    /// [`Self::fetch_for`] in any namespace the key may read (the inbox, or the requests share).
    pub async fn fetch_namespace(
        &self,
        mailbox: &Mailbox,
        namespace: Namespace,
        key: &dyn MailboxSigner,
        after: Option<CursorKey>,
        wait: Duration,
        at: Option<NodeId>,
    ) -> Result<Fetched, NetError> {
        let mailbox = *mailbox;
        let wait_ms = u64::try_from(wait.as_millis())
            .unwrap_or(u64::MAX)
            .min(allium_proto::storage::MAX_WAIT_MS);
        let make = |node: &NodeId, now: u64| {
            key.sign(
                Body::Retrieve(RetrieveRequest {
                    mailbox,
                    namespace,
                    after,
                    limit: None,
                    wait_ms: (wait_ms > 0).then_some(wait_ms),
                }),
                node,
                now,
            )
            .encode()
        };
        let empty = HashSet::new();
        let among = match at {
            Some(node) => Members::Only(node),
            None => Members::Except(&empty),
        };
        let (response, path) = self
            .request_among(
                &mailbox,
                Method::Retrieve,
                Duration::from_millis(wait_ms),
                make,
                among,
                Some(Flow::Reads(mailbox, namespace)),
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

/// Why a request on a path failed: on a path session (which the hops may have forgotten, so
/// it says nothing about them) or as an onion packet.
#[derive(Debug)]
enum Sent {
    Session(SendError),
    Onion(SendError),
}

/// Which members of a mailbox's swarm a request may go to.
#[derive(Debug, Clone, Copy)]
enum Members<'a> {
    /// Any but these.
    Except(&'a HashSet<NodeId>),
    /// This one alone.
    Only(NodeId),
}

/// An unspecified local address of the family of the network's first authority.
fn bind_for(network: &NetworkFile) -> SocketAddr {
    match network.authorities().first().map(|a| a.address.ip()) {
        Some(IpAddr::V6(_)) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        _ => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
    }
}
