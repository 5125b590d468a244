//! The directory authority role: admits nodes that register a valid descriptor and prove they are
//! reachable at the address they claim (under the key they claim), assigns swarms, and signs a new
//! roster version whenever the set of nodes or their keys changes.
//!
//! Probes cost a time-out each when an address does not answer, and descriptors cost nothing to
//! mint, so the work is split (whitepaper roster.md §5): nodes of the roster held are probed
//! concurrently in each round, which waits for them only; new nodes are probed in the
//! background, a bounded number at once, and join the roster in the round after their probe
//! succeeded. New registrations are rate-limited per source address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use allium_onion::{IdentityKeypair, NodeId};
use allium_proto::assign::assign;
use allium_proto::roster::{
    Descriptor, DirectoryRequest, DirectoryResponse, NodeEntry, Roster, SignedDescriptor,
};
use tokio_util::sync::CancellationToken;

use crate::directory::RosterState;
use crate::onion_service::unix_now;
use crate::ratelimit::RateLimiter;
use allium_link::{Deadlines, Kind, Pool, Status};

/// Most nodes the authority keeps descriptors of: as many as a roster may list.
pub const MAX_REGISTERED: usize = allium_proto::roster::MAX_NODES;

/// How far in the future a descriptor's timestamp may be.
const MAX_DESCRIPTOR_SKEW_SECS: u64 = 300;

/// Probes of nodes of the roster that run at once in a round.
pub const KNOWN_PROBES: usize = 64;

/// Probes of new nodes that run at once, in the background.
pub const NEW_PROBES: usize = 16;

/// New nodes one source address may register per second on average, once its burst
/// ([`AuthorityConfig::new_per_address_burst`]) is spent.
const NEW_PER_SEC: u32 = 1;

/// A round that starts this many publish intervals after the previous one means the authority
/// was not running in between (stopped, or its host suspended).
const PAUSE_INTERVALS: u32 = 4;

/// Timing of the authority.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// How often the authority probes nodes and publishes a roster if anything changed.
    pub publish_interval: Duration,
    /// A node that has not re-registered for this long is dropped from the roster.
    pub descriptor_ttl: Duration,
    /// How long a reachability probe may take.
    pub probe_timeout: Duration,
    /// New nodes one source address may register at once (a whole test network on one host
    /// starts together: `devnet` sets it to its number of nodes).
    pub new_per_address_burst: u32,
}

#[derive(Debug)]
struct Registered {
    descriptor: Descriptor,
    received: Instant,
    /// For a node not in the roster: whether the probe of this descriptor's address answered,
    /// once one finished.
    probed: Option<Probed>,
}

#[derive(Debug, Clone, Copy)]
struct Probed {
    reachable: bool,
    at: Instant,
}

/// What the publishing rounds remember between rounds.
#[derive(Debug)]
struct Rounds {
    /// When the last round ended.
    last: Instant,
    /// Until when a roster that would drop unheard nodes is not published: after a start, or
    /// after a pause.
    grace_until: Instant,
    /// Nodes of the roster whose last probe failed: a second failure in a row drops them, so a
    /// stale connection after a pause does not.
    failed_once: HashSet<NodeId>,
}

/// The authority's state.
#[derive(Debug)]
pub struct Authority {
    identity: IdentityKeypair,
    roster: Arc<RosterState>,
    pool: Arc<Pool>,
    registry: Mutex<HashMap<NodeId, Registered>>,
    config: AuthorityConfig,
    rounds: Mutex<Rounds>,
    /// New nodes being probed now.
    probing: Mutex<HashSet<NodeId>>,
    new_probes: Arc<Semaphore>,
    new_by_source: RateLimiter,
}

impl Authority {
    /// An authority signing with `identity` (which the network file must list).
    pub fn new(
        identity: IdentityKeypair,
        roster: Arc<RosterState>,
        pool: Arc<Pool>,
        config: AuthorityConfig,
    ) -> Self {
        let now = Instant::now();
        let new_by_source = RateLimiter::new(NEW_PER_SEC, config.new_per_address_burst, 4096);
        Authority {
            identity,
            roster,
            pool,
            registry: Mutex::new(HashMap::new()),
            rounds: Mutex::new(Rounds {
                last: now,
                grace_until: now + config.descriptor_ttl,
                failed_once: HashSet::new(),
            }),
            config,
            probing: Mutex::new(HashSet::new()),
            new_probes: Arc::new(Semaphore::new(NEW_PROBES)),
            new_by_source,
        }
    }

    /// Handles a registration, a signed descriptor, sent from `source`.
    pub fn register(&self, bytes: &[u8], source: IpAddr) -> DirectoryResponse {
        let descriptor = match SignedDescriptor::decode_and_verify(
            bytes,
            unix_now(),
            MAX_DESCRIPTOR_SKEW_SECS,
        ) {
            Ok(d) => d,
            Err(e) => return DirectoryResponse::Refused(e.to_string()),
        };
        let key = descriptor.identity.node_id();
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Descriptors cost nothing to mint (any fresh key signs its own), so the registry is
        // capped at what a roster can hold; known nodes may always re-register.
        let known = registry.contains_key(&key);
        if registry.len() >= MAX_REGISTERED && !known {
            return DirectoryResponse::Refused("registry full".into());
        }
        if !known && !self.listed(&key) && !self.new_by_source.allow(source, Instant::now()) {
            tracing::debug!("registration of a new node refused: its address is over its rate");
            return DirectoryResponse::Refused("too many new nodes from this address".into());
        }
        let newer = registry
            .get(&key)
            .is_none_or(|r| r.descriptor.published_at <= descriptor.published_at);
        if newer {
            // A probe answers for an address under a key: a new address needs a new one.
            let probed = registry
                .get(&key)
                .filter(|r| r.descriptor.addresses == descriptor.addresses)
                .and_then(|r| r.probed);
            registry.insert(
                key,
                Registered {
                    descriptor,
                    received: Instant::now(),
                    probed,
                },
            );
        }
        DirectoryResponse::Registered {
            roster_version: self.roster.version().unwrap_or(0),
        }
    }

    /// Number of nodes registered (reachable or not).
    pub fn registered(&self) -> usize {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether the roster held lists `node`.
    fn listed(&self, node: &NodeId) -> bool {
        self.roster
            .current()
            .is_some_and(|h| h.roster().node(node).is_some())
    }

    /// Probes and publishes every `publish_interval` until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.publish_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.publish_once().await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// Whether the node answers a probe on its address under its key. A probe and its answer
    /// are a few bytes each (roster.md §6.1), so a round costs O(1) bytes a node.
    async fn reachable(&self, d: &Descriptor) -> bool {
        let Some(addr) = d.addresses.first() else {
            return false;
        };
        let probe = DirectoryRequest::Probe.encode();
        let answer = self
            .pool
            .request(
                &d.identity,
                *addr,
                Kind::Directory,
                &probe,
                Deadlines::uniform(self.config.probe_timeout),
            )
            .await;
        match answer {
            Ok((Status::Ok, body)) => matches!(
                DirectoryResponse::decode(&body),
                Ok(DirectoryResponse::Alive { .. })
            ),
            _ => false,
        }
    }

    /// Starts background probes of new nodes not probed yet (or whose probe failed longer than
    /// a descriptor lifetime ago), a bounded number at once. Never waits for them.
    fn probe_new(self: &Arc<Self>, new: Vec<Descriptor>) {
        let retry_after = self.config.descriptor_ttl;
        for d in new {
            let node = d.identity.node_id();
            let due = {
                let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
                registry.get(&node).is_some_and(|r| match r.probed {
                    None => true,
                    Some(p) => !p.reachable && p.at.elapsed() >= retry_after,
                })
            };
            if !due {
                continue;
            }
            let Ok(permit) = self.new_probes.clone().try_acquire_owned() else {
                // All slots busy: the rest wait for a later round.
                return;
            };
            if !self
                .probing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node)
            {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let reachable = me.reachable(&d).await;
                drop(permit);
                me.probing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&node);
                let mut registry = me.registry.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(r) = registry.get_mut(&node) {
                    if r.descriptor.addresses == d.addresses {
                        r.probed = Some(Probed {
                            reachable,
                            at: Instant::now(),
                        });
                    }
                }
                if !reachable {
                    tracing::info!(node = ?d.identity, "new node not reachable at its address; left out");
                }
            });
        }
    }

    /// Probes `known` (nodes of the roster) concurrently, at most [`KNOWN_PROBES`] at once,
    /// and returns those that answered.
    async fn probe_known(self: &Arc<Self>, known: Vec<Descriptor>) -> Vec<(Descriptor, bool)> {
        let slots = Arc::new(Semaphore::new(KNOWN_PROBES));
        let mut probes = tokio::task::JoinSet::new();
        for d in known {
            let (me, slots) = (self.clone(), slots.clone());
            probes.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let reachable = me.reachable(&d).await;
                (d, reachable)
            });
        }
        let mut out = Vec::new();
        while let Some(done) = probes.join_next().await {
            // A probe task only panics on a bug of ours; its node waits for the next round.
            if let Ok(r) = done {
                out.push(r);
            }
        }
        out
    }

    /// One round: forget silent nodes, probe the rest, publish if the roster would change.
    pub async fn publish_once(self: &Arc<Self>) {
        self.round().await;
        self.rounds.lock().unwrap_or_else(|p| p.into_inner()).last = Instant::now();
    }

    async fn round(self: &Arc<Self>) {
        let now = Instant::now();
        let in_grace = {
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            // Measured from the end of the last round, so a round slowed by probes is no pause.
            let gap = now.saturating_duration_since(rounds.last);
            if gap > self.config.publish_interval * PAUSE_INTERVALS {
                // The authority was not running: nodes could not be heard meanwhile, so the
                // pause does not count against their descriptors, and until they have all been
                // heard again no roster drops them (as after a start).
                let paused = gap.saturating_sub(self.config.publish_interval);
                tracing::warn!(
                    paused_ms = paused.as_millis() as u64,
                    "the authority was paused; waiting for nodes to re-register before publishing"
                );
                let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
                for r in registry.values_mut() {
                    r.received = (r.received + paused).min(now);
                }
                rounds.grace_until = now + self.config.descriptor_ttl;
                rounds.failed_once.clear();
            }
            now < rounds.grace_until
        };
        let candidates: Vec<Registered> = {
            let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            registry.retain(|_, r| r.received.elapsed() < self.config.descriptor_ttl);
            registry
                .values()
                .map(|r| Registered {
                    descriptor: r.descriptor.clone(),
                    received: r.received,
                    probed: r.probed,
                })
                .collect()
        };
        // A restarted (or resumed) authority has heard from nobody yet: until every node of the
        // roster it held has registered again, or a descriptor's lifetime has passed, it does
        // not publish a roster that would drop them (and move their mailboxes) for being merely
        // unheard.
        if in_grace {
            if let Some(held) = self.roster.current() {
                let heard: HashSet<NodeId> = candidates
                    .iter()
                    .map(|r| r.descriptor.identity.node_id())
                    .collect();
                if held
                    .roster()
                    .nodes()
                    .iter()
                    .any(|n| !heard.contains(&n.identity.node_id()))
                {
                    return;
                }
            }
        }
        let (known, new): (Vec<Registered>, Vec<Registered>) = candidates
            .into_iter()
            .partition(|r| self.listed(&r.descriptor.identity.node_id()));
        // New nodes whose probe already answered join now; the others are probed meanwhile.
        let mut admitted: Vec<Descriptor> = Vec::with_capacity(known.len() + new.len());
        let mut unprobed = Vec::new();
        for r in new {
            match r.probed {
                Some(p) if p.reachable => admitted.push(r.descriptor),
                _ => unprobed.push(r.descriptor),
            }
        }
        self.probe_new(unprobed);
        let probed = self
            .probe_known(known.into_iter().map(|r| r.descriptor).collect())
            .await;
        {
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            for (d, reachable) in probed {
                let node = d.identity.node_id();
                if reachable {
                    rounds.failed_once.remove(&node);
                    admitted.push(d);
                } else if rounds.failed_once.insert(node) {
                    tracing::info!(node = ?d.identity, "node did not answer a probe; kept until the next one");
                    admitted.push(d);
                } else {
                    tracing::info!(node = ?d.identity, "node not reachable at its address; left out");
                }
            }
        }
        admitted.sort_by_key(|d| d.identity.node_id());

        let current = self.roster.current();
        let unchanged = current.as_ref().is_some_and(|h| {
            let nodes = h.roster().nodes();
            nodes.len() == admitted.len()
                && nodes.iter().zip(&admitted).all(|(n, d)| {
                    n.identity == d.identity
                        && n.addresses == d.addresses
                        && n.onion_keys == d.onion_keys
                        && n.software == d.software
                })
        });
        if unchanged || (admitted.is_empty() && current.is_none()) {
            return;
        }

        let previous: BTreeMap<NodeId, u64> = current
            .as_ref()
            .map(|h| h.roster().assignment())
            .unwrap_or_default();
        let keys: Vec<NodeId> = admitted.iter().map(|d| d.identity.node_id()).collect();
        let network = self.roster.network();
        let swarms = assign(&previous, &keys, network.params.swarm_size);
        let nodes = admitted
            .into_iter()
            .filter_map(|d| {
                let swarm = *swarms.get(&d.identity.node_id())?;
                Some(NodeEntry::from_descriptor(d, swarm))
            })
            .collect();
        let version = current.as_ref().map_or(1, |h| h.roster().version() + 1);
        let signed = Roster::new(
            network.name.clone(),
            version,
            unix_now(),
            network.params.swarm_size,
            nodes,
        )
        .and_then(|roster| roster.sign(&[&self.identity]));
        let signed = match signed {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not build the roster");
                return;
            }
        };
        match self.roster.offer(&signed.encode()) {
            Ok(_) => tracing::info!(version, "roster published"),
            Err(e) => {
                tracing::error!(error = %e, "own roster refused: is this node an authority of the network file?")
            }
        }
    }
}
