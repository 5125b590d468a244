//! The directory authority role: admits nodes that register a valid descriptor and prove they are
//! reachable at the address they claim (under the key they claim), assigns swarms, and signs a new
//! roster version whenever the set of nodes or their keys changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allium_onion::{IdentityKeypair, NodeId};
use allium_proto::assign::assign;
use allium_proto::roster::{
    Descriptor, DirectoryRequest, DirectoryResponse, NodeEntry, Roster, SignedDescriptor,
};
use tokio_util::sync::CancellationToken;

use crate::directory::RosterState;
use crate::onion_service::unix_now;
use allium_link::{Deadlines, Kind, Pool, Status};

/// Most nodes the authority keeps descriptors of: as many as a roster may list.
pub const MAX_REGISTERED: usize = allium_proto::roster::MAX_NODES;

/// How far in the future a descriptor's timestamp may be.
const MAX_DESCRIPTOR_SKEW_SECS: u64 = 300;

/// Timing of the authority.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// How often the authority probes nodes and publishes a roster if anything changed.
    pub publish_interval: Duration,
    /// A node that has not re-registered for this long is dropped from the roster.
    pub descriptor_ttl: Duration,
    /// How long a reachability probe may take.
    pub probe_timeout: Duration,
}

#[derive(Debug)]
struct Registered {
    descriptor: Descriptor,
    received: Instant,
}

/// The authority's state.
#[derive(Debug)]
pub struct Authority {
    identity: IdentityKeypair,
    roster: Arc<RosterState>,
    pool: Arc<Pool>,
    registry: Mutex<HashMap<NodeId, Registered>>,
    config: AuthorityConfig,
    started: Instant,
}

impl Authority {
    /// An authority signing with `identity` (which the network file must list).
    pub fn new(
        identity: IdentityKeypair,
        roster: Arc<RosterState>,
        pool: Arc<Pool>,
        config: AuthorityConfig,
    ) -> Self {
        Authority {
            identity,
            roster,
            pool,
            registry: Mutex::new(HashMap::new()),
            config,
            started: Instant::now(),
        }
    }

    /// Handles a registration: a signed descriptor.
    pub fn register(&self, bytes: &[u8]) -> DirectoryResponse {
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
        if registry.len() >= MAX_REGISTERED && !registry.contains_key(&key) {
            return DirectoryResponse::Refused("registry full".into());
        }
        let newer = registry
            .get(&key)
            .is_none_or(|r| r.descriptor.published_at <= descriptor.published_at);
        if newer {
            registry.insert(
                key,
                Registered {
                    descriptor,
                    received: Instant::now(),
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

    /// Whether the node answers a roster request on its address under its key.
    async fn reachable(&self, d: &Descriptor) -> bool {
        let Some(addr) = d.addresses.first() else {
            return false;
        };
        let probe = DirectoryRequest::GetRoster { have_version: None }.encode();
        matches!(
            self.pool
                .request(
                    &d.identity,
                    *addr,
                    Kind::Directory,
                    &probe,
                    Deadlines::uniform(self.config.probe_timeout),
                )
                .await,
            Ok((Status::Ok, _))
        )
    }

    /// One round: forget silent nodes, probe the rest, publish if the roster would change.
    pub async fn publish_once(&self) {
        let candidates: Vec<Descriptor> = {
            let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            registry.retain(|_, r| r.received.elapsed() < self.config.descriptor_ttl);
            registry.values().map(|r| r.descriptor.clone()).collect()
        };
        // A restarted authority has heard from nobody yet: until every node of the roster it
        // held has registered again, or a descriptor's lifetime has passed, it does not publish
        // a roster that would drop them (and move their mailboxes) for being merely unheard.
        if self.started.elapsed() < self.config.descriptor_ttl {
            if let Some(held) = self.roster.current() {
                let heard: std::collections::HashSet<NodeId> =
                    candidates.iter().map(|d| d.identity.node_id()).collect();
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
        let mut admitted = Vec::with_capacity(candidates.len());
        for d in candidates {
            if self.reachable(&d).await {
                admitted.push(d);
            } else {
                tracing::info!(node = ?d.identity, "node not reachable at its address; left out");
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
