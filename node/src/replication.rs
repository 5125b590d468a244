//! Swarm replication on a node (whitepaper storage §9): which mailboxes this node serves, the
//! quorum a store waits for, the peer protocol it answers, anti-entropy rounds against its swarm
//! peers (each pull an [`allium_proto::sync::Session`] driven over the link), and hand-off of
//! mailboxes that moved to another swarm. Each round also compares this node's clock with its
//! peers' (their `root` answers carry their node time); a node whose clock is far from theirs
//! serves no mailbox until it agrees again (storage §8.3).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allium_onion::IdentityPublicKey;
use allium_proto::storage::GetSwarmResponse;
use allium_proto::sync::{
    Action, EntryKey, Item, MAX_FETCH, MAX_ITEMS, PeerRequest, PeerResponse, Session, SessionError,
};
use allium_proto::time::{FAR_MS, judge};
use allium_proto::{
    Clock, ClockSample, ClockVerdict, DecodeError, Mailbox, Method, NodeId, Response, ResponseBody,
    Status, UnixMillis,
};
use allium_swarm::{PendingStore, Placement, Service, Store, StoreError, stage};
use tokio_util::sync::CancellationToken;

use crate::clock::NodeClock;
use crate::config::ReplicationConfig;
use crate::directory::RosterState;
use crate::lock;
use crate::metrics::{Metrics, ReplicationResult, SyncDirection};
use allium_link::{Deadlines, Kind, LinkError, Peer, Pool};

/// Message bytes one `fetch` answer carries at most.
const FETCH_BUDGET: usize = 512 * 1024;
/// Mailboxes handed off per round at most.
const HANDOFF_PER_ROUND: usize = 64;

/// A swarm member as the link reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its identity (pinned on the link).
    pub identity: IdentityPublicKey,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

/// This node's place in the roster: its swarm, its peers, and whether it has pulled its share.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    roster: Arc<RosterState>,
    /// The swarm for which a complete anti-entropy round has finished.
    synced: Mutex<Option<u64>>,
    /// This node's clock against its swarm peers', as the last round that reached one found.
    clock: Mutex<ClockVerdict>,
    metrics: Metrics,
}

fn members(nodes: &[&allium_proto::roster::NodeEntry]) -> Vec<Member> {
    nodes
        .iter()
        .filter_map(|n| {
            Some(Member {
                identity: n.identity,
                addr: *n.addresses.first()?,
            })
        })
        .collect()
}

impl Membership {
    /// The membership of node `me` as `roster` says.
    pub fn new(me: NodeId, roster: Arc<RosterState>, metrics: Metrics) -> Self {
        metrics.set_syncing(true);
        Membership {
            me,
            roster,
            synced: Mutex::new(None),
            clock: Mutex::new(ClockVerdict::Unknown),
            metrics,
        }
    }

    /// This node's clock against its swarm peers', as last measured.
    pub fn clock(&self) -> ClockVerdict {
        *lock(&self.clock)
    }

    fn clock_far(&self) -> bool {
        self.clock().is_far()
    }

    /// Whether the clock allows serving mailboxes: measured and not far, or nothing to measure
    /// it against (a swarm of one, or no swarm). Until a peer has answered, a member of a
    /// larger swarm does not know.
    fn clock_ok(&self) -> bool {
        match self.clock() {
            ClockVerdict::Agrees { .. } => true,
            ClockVerdict::Far { .. } => false,
            ClockVerdict::Unknown => self.my_swarm().is_none_or(|(_, peers)| peers.is_empty()),
        }
    }

    /// Takes a round's verdict on the clock. A round in which no peer answered says nothing
    /// and leaves the last verdict in force.
    fn set_clock(&self, verdict: ClockVerdict) {
        let Some(offset) = verdict.offset() else {
            return;
        };
        let was = std::mem::replace(&mut *lock(&self.clock), verdict);
        self.metrics.set_clock(offset, verdict.is_far());
        match (was.is_far(), verdict.is_far()) {
            (false, true) => tracing::warn!(
                offset_ms = offset,
                limit_ms = FAR_MS,
                "this node's clock is far from its swarm peers'; it serves no mailbox until \
                 they agree (check NTP)"
            ),
            (true, false) => tracing::info!(
                offset_ms = offset,
                "this node's clock agrees with its swarm peers' again"
            ),
            _ => {}
        }
    }

    /// This node's swarm and the other members of it, if the roster lists this node.
    pub fn my_swarm(&self) -> Option<(u64, Vec<Member>)> {
        let held = self.roster.current()?;
        let swarm = held.roster().node(&self.me)?.swarm;
        let mut nodes = held.roster().members_of(swarm);
        nodes.retain(|n| n.identity.node_id() != self.me);
        Some((swarm, members(&nodes)))
    }

    /// This node's swarm id, if the roster lists this node.
    fn my_swarm_id(&self) -> Option<u64> {
        Some(self.roster.current()?.roster().node(&self.me)?.swarm)
    }

    /// The swarm a mailbox belongs to and all its members.
    pub fn swarm_of(&self, mailbox: &Mailbox) -> Option<(u64, Vec<Member>)> {
        let held = self.roster.current()?;
        let swarm = held.roster().swarm_for(mailbox)?;
        Some((swarm, members(&held.roster().members_for(mailbox))))
    }

    /// Whether this node's swarm holds `mailbox`.
    pub fn owns(&self, mailbox: &Mailbox) -> bool {
        let Some(held) = self.roster.current() else {
            return false;
        };
        let mine = held.roster().node(&self.me).map(|n| n.swarm);
        mine.is_some() && held.roster().swarm_for(mailbox) == mine
    }

    /// Whether `node` is a member of this node's swarm.
    fn is_swarm_peer(&self, node: &NodeId) -> bool {
        let Some(held) = self.roster.current() else {
            return false;
        };
        let swarm = |id| held.roster().node(id).map(|n| n.swarm);
        *node != self.me && swarm(node).is_some() && swarm(node) == swarm(&self.me)
    }

    /// True until a complete anti-entropy round for the node's current swarm has finished:
    /// from the moment the node starts (before any roster, and whatever a cached roster says),
    /// while the roster it holds names no swarm for it, and again after its swarm changed
    /// (storage §9.5). Leaving the swarm, even briefly, forgets the round: the members stopped
    /// sending it copies meanwhile. So does a clock found far from the peers' (§8.3).
    pub fn syncing(&self) -> bool {
        let current = self.my_swarm_id();
        // A node serving no mailbox for its clock pulls again once it agrees.
        let clock_ok = self.clock_ok();
        let mut synced = lock(&self.synced);
        if clock_ok && current.is_some() && *synced == current {
            return false;
        }
        *synced = None;
        true
    }

    fn mark_synced(&self, swarm: u64) {
        // A round that started before the swarm changed pulled for the old one.
        if self.my_swarm_id() != Some(swarm) || !self.clock_ok() {
            return;
        }
        let was = lock(&self.synced).replace(swarm);
        if was != Some(swarm) {
            tracing::info!(
                swarm = format_args!("{swarm:016x}"),
                "swarm share pulled; serving retrieves"
            );
        }
        self.metrics.set_syncing(false);
    }
}

impl Placement for Membership {
    fn check(&self, mailbox: &Mailbox, method: Method, now: UnixMillis) -> Option<Response> {
        if let Some(refusal) = self.wrong_swarm(mailbox, now) {
            return Some(refusal);
        }
        // A wrong clock would file messages and answer cursors at wrong times (§8.3).
        if !self.clock_ok() {
            self.metrics.set_syncing(true);
            return Some(Response::error(now, Status::Syncing));
        }
        // Without a roster, or outside it, the node cannot say where a mailbox lives: it takes
        // writes, but answers no retrieve until it has pulled from a swarm it belongs to.
        if method == Method::Retrieve && self.syncing() {
            self.metrics.set_syncing(true);
            return Some(Response::error(now, Status::Syncing));
        }
        None
    }
}

impl Membership {
    /// The `wrong_swarm` answer for a mailbox the roster places in another swarm than this
    /// node's; `None` when it is this node's, or when the node has no swarm.
    fn wrong_swarm(&self, mailbox: &Mailbox, now: UnixMillis) -> Option<Response> {
        let held = self.roster.current()?;
        let mine = held.roster().node(&self.me)?.swarm;
        let owner = held.roster().swarm_for(mailbox)?;
        if owner != mine {
            let members = held
                .roster()
                .members_for(mailbox)
                .iter()
                .map(|n| n.identity.node_id())
                .collect();
            return Some(Response::wrong_swarm(
                now,
                GetSwarmResponse {
                    swarm_id: owner,
                    members,
                },
            ));
        }
        None
    }
}

/// Why an exchange with a peer failed.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the peer refused the request")]
    Refused,
    #[error("undecodable answer: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    #[error("local task failed")]
    Task,
}

/// Replication between this node and its swarm.
#[derive(Debug)]
pub struct Replicator {
    membership: Arc<Membership>,
    service: Arc<Service>,
    pool: Arc<Pool>,
    metrics: Metrics,
    cfg: ReplicationConfig,
    deadlines: Deadlines,
    /// The roster version whose hand-off scan completed.
    handed_off_for: Mutex<Option<u64>>,
}

impl Replicator {
    /// Replication for `service`'s store, reaching peers through `pool` within `deadlines`.
    pub fn new(
        membership: Arc<Membership>,
        service: Arc<Service>,
        pool: Arc<Pool>,
        metrics: Metrics,
        cfg: ReplicationConfig,
        deadlines: Deadlines,
    ) -> Self {
        Replicator {
            membership,
            service,
            pool,
            metrics,
            cfg,
            deadlines,
            handed_off_for: Mutex::new(None),
        }
    }

    fn store(&self) -> &Arc<Store> {
        self.service.store()
    }

    fn now(&self) -> UnixMillis {
        self.service.node_time(NodeClock.now())
    }

    /// Sends `items` to every other member of their mailbox's swarm, each in its own detached
    /// task, and returns the swarm's size and a channel saying, per peer, whether it holds them
    /// all. `None` when the roster names no swarm for the mailbox.
    fn send_to_swarm(
        &self,
        items: &[Item],
    ) -> Option<(
        usize,
        tokio::sync::mpsc::Receiver<(IdentityPublicKey, bool)>,
    )> {
        let mailbox = *items.first()?.mailbox();
        let (_, members) = self.membership.swarm_of(&mailbox)?;
        let size = members.len();
        let peers: Vec<Member> = members
            .into_iter()
            .filter(|m| m.identity.node_id() != self.membership.me)
            .collect();
        let chunks = Arc::new(chunked(items));
        let (tx, rx) = tokio::sync::mpsc::channel(peers.len().max(1));
        for peer in peers {
            let (pool, chunks, tx, metrics) = (
                self.pool.clone(),
                chunks.clone(),
                tx.clone(),
                self.metrics.clone(),
            );
            let deadlines = self.deadlines;
            // Detached: members beyond the majority still get the items after the answer.
            tokio::spawn(async move {
                let held = send_items(&pool, &peer, &chunks, deadlines, &metrics).await;
                let _ = tx.send((peer.identity, held)).await;
            });
        }
        Some((size, rx))
    }

    /// Sends a delete's or expiry's items to the rest of the swarm in the background.
    pub fn spread(&self, items: Vec<Item>) {
        let _ = self.send_to_swarm(&items);
    }

    /// Completes a store: the local synced write and the copies to the other members run at the
    /// same time, and the store is acknowledged once a majority of the swarm, this node
    /// included, holds it — else it is answered `not_replicated`.
    pub async fn acknowledge_store(&self, pending: PendingStore) -> Response {
        let sent = self.send_to_swarm(std::slice::from_ref(&pending.item));
        let local = async {
            let response = pending.finish().await;
            stage::mark("store.local");
            response
        };
        let peers = async {
            let Some((size, mut rx)) = sent else {
                return (Vec::new(), 1);
            };
            let need = size / 2 + 1;
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(self.cfg.quorum_timeout_ms);
            let mut got = Vec::new();
            // This node is the first holder once its own write succeeds.
            while got.len() + 1 < need {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((id, true))) => {
                        got.push(id.node_id());
                        if got.len() + 1 >= need {
                            stage::mark("store.peers");
                        }
                    }
                    Ok(Some((_, false))) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            (got, need)
        };
        let (mut response, (got, need)) = tokio::join!(local, peers);
        if let Ok(ResponseBody::Store(s)) = &mut response.result {
            if got.len() + 1 < need {
                tracing::debug!(
                    holders = got.len() + 1,
                    need,
                    "store not confirmed by a majority of its swarm"
                );
                return Response::error(response.now, Status::NotReplicated);
            }
            s.holders.extend(got);
        }
        response
    }

    /// Answers a peer request arriving on the link.
    pub async fn serve(&self, peer: &Peer, body: Vec<u8>) -> (allium_link::Status, Vec<u8>) {
        let Some(identity) = peer.identity.map(|k| k.node_id()) else {
            return (allium_link::Status::Rejected, Vec::new());
        };
        let in_roster = self
            .membership
            .roster
            .current()
            .is_some_and(|h| h.roster().node(&identity).is_some());
        if !in_roster {
            tracing::debug!(peer = %peer.addr, "peer request from a node outside the roster");
            return (allium_link::Status::Rejected, Vec::new());
        }
        let request = match PeerRequest::decode(&body) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %peer.addr, error = %e, "malformed peer request");
                return (allium_link::Status::Rejected, Vec::new());
            }
        };
        let syncs = !matches!(request, PeerRequest::Replicate(_));
        if !syncs {
            stage::mark("replica.received");
        }
        // What a member holds is for its swarm peers only; any roster node may hand items in
        // (they are checked like a client's writes).
        if syncs && !self.membership.is_swarm_peer(&identity) {
            return (allium_link::Status::Rejected, Vec::new());
        }
        let in_len = body.len();
        let answer = match self.answer(request).await {
            Some(a) => a.encode(),
            None => return (allium_link::Status::Rejected, Vec::new()),
        };
        if syncs {
            self.metrics
                .sync_bytes(SyncDirection::Serve, in_len + answer.len());
        }
        (allium_link::Status::Ok, answer)
    }

    async fn answer(&self, request: PeerRequest) -> Option<PeerResponse> {
        let store = self.store().clone();
        Some(match request {
            // Filed by a wrong clock, copies would sit at wrong positions: the sender counts
            // another holder, and this node pulls them once its clock agrees.
            PeerRequest::Replicate(items) if self.membership.clock_far() => {
                PeerResponse::Replicated(vec![Status::Syncing; items.len()])
            }
            PeerRequest::Replicate(items) => {
                let (service, now) = (self.service.clone(), self.now());
                let statuses =
                    tokio::task::spawn_blocking(move || service.apply_peer_items(items, now))
                        .await
                        .ok()?;
                PeerResponse::Replicated(statuses)
            }
            PeerRequest::Root => PeerResponse::Root {
                root: store.digests().root(),
                now: self.now(),
            },
            PeerRequest::Buckets => PeerResponse::Buckets(store.digests().truncated()),
            PeerRequest::Entries {
                bucket,
                after,
                limit,
            } => {
                let (entries, more) = tokio::task::spawn_blocking(move || {
                    store.entries(bucket, after.as_ref(), usize::from(limit))
                })
                .await
                .ok()?
                .ok()?;
                PeerResponse::Entries { entries, more }
            }
            PeerRequest::Fetch(keys) => PeerResponse::Fetched(
                tokio::task::spawn_blocking(move || store.fetch(&keys, FETCH_BUDGET))
                    .await
                    .ok()?
                    .ok()?,
            ),
        })
    }

    async fn call(&self, peer: &Member, request: PeerRequest) -> Result<PeerResponse, PeerError> {
        let bytes = request.encode();
        let (status, body) = self
            .pool
            .request(
                &peer.identity,
                peer.addr,
                Kind::Peer,
                &bytes,
                self.deadlines,
            )
            .await?;
        self.metrics
            .sync_bytes(SyncDirection::Pull, bytes.len() + body.len());
        if status != allium_link::Status::Ok {
            return Err(PeerError::Refused);
        }
        Ok(PeerResponse::decode(&body, request.method())?)
    }

    /// Pulls from `peer` what this node lacks (a tombstone, a later expiry or a whole
    /// message) for mailboxes of its swarm. Returns whether everything was pulled; the byte
    /// budget may leave the rest for the next round. The protocol is the [`Session`]'s; this
    /// only carries its requests and runs the store calls it asks for. The peer's `root` answer
    /// gives a reading of its clock, added to `clocks`; while this node's clock is far (as the
    /// last round found) it pulls nothing more.
    async fn pull_from(
        &self,
        peer: &Member,
        clocks: &mut Vec<ClockSample>,
    ) -> Result<bool, PeerError> {
        let budget = usize::try_from(self.cfg.max_pull_bytes).unwrap_or(usize::MAX);
        let mut session = Session::new(self.store().digests(), budget);
        loop {
            match session.poll() {
                Action::Send(request) => {
                    let sent = self.now();
                    let answer = self.call(peer, request).await?;
                    if let PeerResponse::Root { now: peer_now, .. } = answer {
                        clocks.push(ClockSample {
                            sent,
                            peer: peer_now,
                            received: self.now(),
                        });
                        if self.membership.clock_far() {
                            return Ok(false);
                        }
                    }
                    session.handle_response(answer)?;
                }
                Action::Reconcile(page) => {
                    let (store, membership, now) =
                        (self.store().clone(), self.membership.clone(), self.now());
                    let plan = tokio::task::spawn_blocking(move || {
                        store.reconcile(&page, now, |m| membership.owns(m))
                    })
                    .await
                    .map_err(|_| PeerError::Task)??;
                    session.handle_plan(plan)?;
                }
                Action::Apply(items) => self.apply(items).await?,
                Action::Done { complete } => return Ok(complete),
            }
        }
    }

    /// Applies items pulled from a peer, checked as any peer's items are.
    async fn apply(&self, items: Vec<Item>) -> Result<(), PeerError> {
        if items.is_empty() {
            return Ok(());
        }
        let n = items.len();
        let (service, now) = (self.service.clone(), self.now());
        let statuses = tokio::task::spawn_blocking(move || service.apply_peer_items(items, now))
            .await
            .map_err(|_| PeerError::Task)?;
        let refused = statuses.iter().filter(|s| **s != Status::Ok).count();
        if refused > 0 {
            tracing::debug!(refused, "pulled items not applied");
        }
        self.metrics.sync_pulled(n - refused);
        Ok(())
    }

    /// One anti-entropy round: pull from every other member of this node's swarm. The node has
    /// its share, and serves retrieves, when no member refused or was left half pulled, and
    /// those pulled completely meet every majority that could hold a message without this node
    /// (storage §9.5).
    pub async fn sync_round(&self) {
        // The gauge follows the roster: a node newly placed in a swarm is syncing until this
        // round (or a later one) completes.
        self.metrics.set_syncing(self.membership.syncing());
        let Some((swarm, peers)) = self.membership.my_swarm() else {
            return;
        };
        let mut complete = true;
        let mut pulled = 0;
        let mut clocks = Vec::with_capacity(peers.len());
        for peer in &peers {
            match self.pull_from(peer, &mut clocks).await {
                Ok(done) => {
                    complete &= done;
                    pulled += usize::from(done);
                }
                // A member that is down gives nothing now and pulls from us when back; the
                // members that answered must then make up the count below.
                Err(PeerError::Link(e)) => {
                    tracing::debug!(peer = %peer.addr, error = %e, "swarm peer unreachable for anti-entropy");
                }
                Err(e) => {
                    complete = false;
                    tracing::debug!(peer = %peer.addr, error = %e, "anti-entropy with a swarm peer failed");
                }
            }
        }
        self.membership.set_clock(judge(&clocks, FAR_MS));
        if complete && pulled >= pulls_needed(peers.len() + 1) {
            self.membership.mark_synced(swarm);
            self.metrics.sync_round();
        }
    }

    /// Hands mailboxes that no longer belong to this node's swarm to the swarm that owns them,
    /// and drops them here once a majority of that swarm holds every item.
    pub async fn handoff_round(&self) {
        let Some(version) = self.membership.roster.version() else {
            return;
        };
        if self.membership.my_swarm().is_none() || *lock(&self.handed_off_for) == Some(version) {
            return;
        }
        let mut after: Option<Mailbox> = None;
        let mut moved = 0;
        let mut finished = true;
        loop {
            let store = self.store().clone();
            let next = tokio::task::spawn_blocking(move || store.next_mailbox(after.as_ref()))
                .await
                .ok()
                .and_then(Result::ok);
            let Some(mailbox) = next.flatten() else { break };
            after = Some(mailbox);
            if self.membership.owns(&mailbox) {
                continue;
            }
            if moved >= HANDOFF_PER_ROUND {
                finished = false;
                break;
            }
            moved += 1;
            if !self.hand_off(mailbox).await {
                finished = false;
            }
        }
        if finished {
            *lock(&self.handed_off_for) = Some(version);
        }
    }

    async fn hand_off(&self, mailbox: Mailbox) -> bool {
        let Some((_, owners)) = self.membership.swarm_of(&mailbox) else {
            return false;
        };
        let store = self.store().clone();
        let items = tokio::task::spawn_blocking(move || -> Result<Vec<Item>, StoreError> {
            let keys: Vec<EntryKey> = store.mailbox_keys(&mailbox)?;
            let mut items = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(MAX_FETCH) {
                items.extend(store.fetch(chunk, usize::MAX)?);
            }
            Ok(items)
        })
        .await;
        let Ok(Ok(items)) = items else { return false };
        let chunks = chunked(&items);
        let mut holders = 0;
        for owner in &owners {
            if send_items(&self.pool, owner, &chunks, self.deadlines, &self.metrics).await {
                holders += 1;
            }
        }
        if holders < owners.len() / 2 + 1 {
            return false;
        }
        let (store, now) = (self.store().clone(), self.now());
        match tokio::task::spawn_blocking(move || store.forget(mailbox, now)).await {
            Ok(Ok(_)) => {
                self.metrics.handed_off();
                tracing::debug!(holders, "mailbox handed off to its new swarm");
                true
            }
            _ => false,
        }
    }

    /// Runs anti-entropy and hand-off every `sync_interval_ms`, and at once when the roster
    /// changes, until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let interval = Duration::from_millis(self.cfg.sync_interval_ms);
        let mut last_round: Option<Instant> = None;
        let mut last_version = None;
        loop {
            let version = self.membership.roster.version();
            let due = last_round.is_none_or(|t| t.elapsed() >= interval);
            if due || version != last_version {
                last_version = version;
                last_round = Some(Instant::now());
                tokio::select! {
                    () = async {
                        self.sync_round().await;
                        self.handoff_round().await;
                    } => {}
                    () = stop.cancelled() => return,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(interval.min(Duration::from_millis(250))) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// How many other members of a swarm of `n` a member must pull completely to hold every message
/// a majority acknowledged: one it missed is held by `n / 2 + 1` of the others, so any
/// `n - (n / 2 + 1)` of them include a holder.
fn pulls_needed(n: usize) -> usize {
    n - (n / 2 + 1)
}

/// Items as encoded `replicate` requests of at most [`MAX_ITEMS`] items and about 512 KiB.
fn chunked(items: &[Item]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for item in items {
        let len = item.data_len();
        if !batch.is_empty() && (batch.len() == MAX_ITEMS || bytes + len > FETCH_BUDGET) {
            out.push(PeerRequest::Replicate(std::mem::take(&mut batch)).encode());
            bytes = 0;
        }
        bytes += len;
        batch.push(item.clone());
    }
    if !batch.is_empty() {
        out.push(PeerRequest::Replicate(batch).encode());
    }
    out
}

/// Sends encoded `replicate` requests to one peer; true when it holds every item.
async fn send_items(
    pool: &Pool,
    peer: &Member,
    chunks: &[Vec<u8>],
    deadlines: Deadlines,
    metrics: &Metrics,
) -> bool {
    for chunk in chunks {
        let answer = pool
            .request(&peer.identity, peer.addr, Kind::Peer, chunk, deadlines)
            .await;
        let statuses = match answer {
            Ok((allium_link::Status::Ok, body)) => {
                match PeerResponse::decode(&body, allium_proto::sync::PeerMethod::Replicate) {
                    Ok(PeerResponse::Replicated(s)) => s,
                    _ => {
                        metrics.replicated(ReplicationResult::Refused, 1);
                        return false;
                    }
                }
            }
            Ok((allium_link::Status::Rejected, _)) => {
                metrics.replicated(ReplicationResult::Refused, 1);
                return false;
            }
            Err(e) => {
                tracing::debug!(peer = %peer.addr, error = %e, "replication to a swarm peer failed");
                metrics.replicated(ReplicationResult::Unreachable, 1);
                return false;
            }
        };
        let ok = statuses.iter().filter(|s| **s == Status::Ok).count();
        metrics.replicated(ReplicationResult::Ok, ok);
        if ok != statuses.len() {
            metrics.replicated(ReplicationResult::Refused, statuses.len() - ok);
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use allium_onion::{Epoch, IdentityKeypair, OnionKeyCert, OnionSecretKey};
    use allium_proto::network::{Authority, NetworkFile, NetworkParams};
    use allium_proto::roster::{NodeEntry, Roster};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    struct World {
        authority: IdentityKeypair,
        network: NetworkFile,
        nodes: Vec<IdentityKeypair>,
        rng: ChaCha20Rng,
    }

    impl World {
        fn new(nodes: usize) -> World {
            let mut rng = ChaCha20Rng::seed_from_u64(7);
            let authority = IdentityKeypair::generate(&mut rng);
            let network = NetworkFile::new(
                "test-net",
                vec![Authority {
                    identity: authority.public(),
                    address: "127.0.0.1:4433".parse().unwrap(),
                }],
                NetworkParams {
                    swarm_size: 2,
                    min_ttl_secs: 10,
                    max_ttl_secs: 1_209_600,
                    epoch_secs: 3600,
                    allow_same_subnet: true,
                    roster_threshold: 1,
                },
            )
            .unwrap();
            let nodes = (0..nodes)
                .map(|_| IdentityKeypair::generate(&mut rng))
                .collect();
            World {
                authority,
                network,
                nodes,
                rng,
            }
        }

        /// A signed roster at `version` listing `nodes[i]` in swarm `swarms[i]` (`None`: left out).
        fn roster(&mut self, version: u64, swarms: &[Option<u64>]) -> Vec<u8> {
            let mut entries = Vec::new();
            for (i, swarm) in swarms.iter().enumerate() {
                let Some(swarm) = swarm else { continue };
                let node = &self.nodes[i];
                let onion = OnionSecretKey::generate(Epoch(1), &mut self.rng);
                entries.push(NodeEntry {
                    identity: node.public(),
                    addresses: vec![format!("127.0.0.1:{}", 5000 + i).parse().unwrap()],
                    onion_keys: vec![OnionKeyCert::sign(node, &onion)],
                    swarm: *swarm,
                    software: "test".into(),
                });
            }
            Roster::new("test-net", version, 1, 2, entries)
                .unwrap()
                .sign(&[&self.authority])
                .unwrap()
                .encode()
        }
    }

    fn membership(w: &World, me: usize) -> (Arc<RosterState>, Membership) {
        let roster = Arc::new(RosterState::new(w.network.clone(), None, Metrics::new()));
        let m = Membership::new(
            w.nodes[me].public().node_id(),
            roster.clone(),
            Metrics::new(),
        );
        (roster, m)
    }

    #[test]
    fn the_members_a_node_must_pull_meet_every_majority_that_excludes_it() {
        // Every way of choosing the pulled members and the holders among the n - 1 others.
        for n in 1..=9usize {
            let others = n - 1;
            let need = pulls_needed(n);
            let mut covered = true;
            let mut one_fewer_covers = need > 0;
            for pulled in 0u32..1 << others {
                for holders in 0u32..1 << others {
                    if holders.count_ones() as usize > n / 2 && pulled & holders == 0 {
                        match pulled.count_ones() as usize {
                            k if k == need => covered = false,
                            k if k + 1 == need => one_fewer_covers = false,
                            _ => {}
                        }
                    }
                }
            }
            assert!(covered, "{need} pulls miss a majority of {n}");
            assert!(!one_fewer_covers, "{} pulls would do for {n}", need - 1);
        }
    }

    #[test]
    fn a_node_is_syncing_from_its_first_moment_until_it_has_pulled_its_swarm() {
        let mut w = World::new(3);
        let (roster, m) = membership(&w, 0);
        let mailbox = Mailbox::from_bytes([9; 32]);
        // No roster yet: a retrieve is refused, a store is taken.
        assert!(m.syncing());
        let refusal = m.check(&mailbox, Method::Retrieve, 1).unwrap();
        assert_eq!(refusal.result, Err(Status::Syncing));
        assert!(m.check(&mailbox, Method::Store, 1).is_none());
        // A roster naming its swarm (as a cached one does at start): still syncing.
        roster
            .offer(&w.roster(1, &[Some(1), Some(1), Some(2)]))
            .unwrap();
        assert!(m.syncing());
        m.set_clock(ClockVerdict::Agrees { offset: 0 });
        m.mark_synced(1);
        assert!(!m.syncing());
        assert!(m.check(&mailbox, Method::Retrieve, 1).is_none());
    }

    #[test]
    fn leaving_the_roster_even_briefly_forgets_the_pull() {
        let mut w = World::new(3);
        let (roster, m) = membership(&w, 0);
        roster
            .offer(&w.roster(1, &[Some(1), Some(1), Some(2)]))
            .unwrap();
        m.set_clock(ClockVerdict::Agrees { offset: 0 });
        m.mark_synced(1);
        assert!(!m.syncing());
        // Dropped from the roster (its descriptor timed out): it has no swarm, and answers no
        // retrieve, since its peers stopped sending it copies.
        roster
            .offer(&w.roster(2, &[None, Some(1), Some(2)]))
            .unwrap();
        assert!(m.syncing());
        // Back in the same swarm: it must pull again before it serves retrieves.
        roster
            .offer(&w.roster(3, &[Some(1), Some(1), Some(2)]))
            .unwrap();
        assert!(m.syncing());
        m.mark_synced(1);
        assert!(!m.syncing());
        // Moved to another swarm: a round of the old one does not count.
        roster
            .offer(&w.roster(4, &[Some(2), Some(1), Some(2)]))
            .unwrap();
        m.mark_synced(1);
        assert!(m.syncing());
        m.mark_synced(2);
        assert!(!m.syncing());
    }

    #[test]
    fn a_far_clock_serves_no_mailbox_until_it_agrees_and_has_pulled_again() {
        let mut w = World::new(3);
        let (roster, m) = membership(&w, 0);
        roster
            .offer(&w.roster(1, &[Some(1), Some(1), Some(2)]))
            .unwrap();
        // Only a mailbox of its own swarm is served; find one.
        let mine = (0..=255u8)
            .map(|b| Mailbox::from_bytes([b; 32]))
            .find(|mb| m.owns(mb))
            .unwrap();
        // Before any peer has answered, its clock is unchecked: nothing is served.
        assert_eq!(
            m.check(&mine, Method::Store, 1).unwrap().result,
            Err(Status::Syncing)
        );
        m.mark_synced(1);
        assert!(m.syncing());
        m.set_clock(ClockVerdict::Agrees { offset: 0 });
        m.mark_synced(1);
        assert!(m.check(&mine, Method::Store, 1).is_none());
        m.set_clock(ClockVerdict::Far { offset: 200_000 });
        assert!(m.syncing());
        for method in [
            Method::Store,
            Method::Retrieve,
            Method::Delete,
            Method::DeleteAll,
            Method::Expire,
        ] {
            let refusal = m.check(&mine, method, 1).unwrap();
            assert_eq!(refusal.result, Err(Status::Syncing), "{method:?}");
        }
        // A round in which no peer answered changes nothing; one that pulled while far does
        // not count.
        m.set_clock(ClockVerdict::Unknown);
        assert!(m.clock().is_far());
        m.mark_synced(1);
        assert!(m.syncing());
        // Agreeing again, it takes writes at once and retrieves after its next complete round.
        m.set_clock(ClockVerdict::Agrees { offset: 3 });
        assert!(m.check(&mine, Method::Store, 1).is_none());
        assert_eq!(
            m.check(&mine, Method::Retrieve, 1).unwrap().result,
            Err(Status::Syncing)
        );
        m.mark_synced(1);
        assert!(m.check(&mine, Method::Retrieve, 1).is_none());
    }
}
