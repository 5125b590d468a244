//! The roster as a node holds it, the directory requests every node answers, and the loops that
//! keep a node registered with the authorities and its roster fresh.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use allium_link::directory::{self, DirectoryError, RosterSink, Source};
use allium_link::{Pool, ip_key};
use allium_onion::{IdentityKeypair, IdentityPublicKey, NodeId, OnionKeyCert};
use allium_proto::network::NetworkFile;
use allium_proto::roster::{
    DeltaError, Descriptor, DirectoryResponse, HeldRoster, Offered, RosterError, RosterHolder,
    SignedDescriptor,
};

use crate::metrics::Metrics;
use crate::onion_service::{Neighbours, unix_now};

/// The roster this node holds ([`RosterHolder`]), written to a cache file when it changes so a
/// restarted node serves its last roster at once, with its version in the metrics.
#[derive(Debug)]
pub struct RosterState {
    holder: RosterHolder,
    cache: Option<PathBuf>,
    metrics: Metrics,
    /// The addresses of the roster's nodes as per-address limits count them (an IPv6 /64), so
    /// that the link asks in O(1) whether a connecting address may be a peer's.
    node_ips: RwLock<HashSet<IpAddr>>,
}

impl RosterState {
    /// An empty state for `network`; accepted rosters are written to `cache` (and read back from
    /// it by [`Self::load_cache`]).
    pub fn new(network: NetworkFile, cache: Option<PathBuf>, metrics: Metrics) -> Self {
        RosterState {
            holder: RosterHolder::new(network),
            cache,
            metrics,
            node_ips: RwLock::new(HashSet::new()),
        }
    }

    /// The network this node belongs to.
    pub fn network(&self) -> &NetworkFile {
        self.holder.network()
    }

    /// Loads the cached roster, if there is a valid one.
    pub fn load_cache(&self) {
        let Some(path) = &self.cache else { return };
        match std::fs::read(path) {
            Ok(bytes) => match self.offer(&bytes) {
                Ok(_) => tracing::info!(version = self.version(), "cached roster loaded"),
                Err(e) => tracing::warn!(error = %e, "cached roster refused"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "cached roster unreadable"),
        }
    }

    /// The roster in use.
    pub fn current(&self) -> Option<Arc<HeldRoster>> {
        self.holder.current()
    }

    /// Version of the roster in use.
    pub fn version(&self) -> Option<u64> {
        self.holder.version()
    }

    /// The answer to a directory `get_roster`.
    pub fn answer(&self, have_version: Option<u64>) -> DirectoryResponse {
        self.holder.answer(have_version)
    }

    /// The answer to a directory `probe`.
    pub fn answer_probe(&self) -> DirectoryResponse {
        self.holder.answer_probe()
    }

    /// The answer to a directory `get_delta` from `from`.
    pub fn answer_delta(&self, from: u64) -> DirectoryResponse {
        self.holder.answer_delta(from)
    }

    /// Verifies `signed` and adopts it if it is newer than the roster held.
    pub fn offer(&self, signed: &[u8]) -> Result<Offered, RosterError> {
        let offered = self.holder.offer(signed)?;
        self.adopted(offered);
        Ok(offered)
    }

    /// Applies a roster delta (roster.md §6.3) and adopts the result if it verifies.
    pub fn apply_delta(&self, delta: &[u8]) -> Result<Offered, DeltaError> {
        let offered = self.holder.apply_delta(delta)?;
        self.adopted(offered);
        Ok(offered)
    }

    /// After a roster was taken: the peer addresses, the metric and the cache follow it.
    fn adopted(&self, offered: Offered) {
        if offered != Offered::Updated {
            return;
        }
        let Some(held) = self.current() else { return };
        let ips = held
            .roster()
            .nodes()
            .iter()
            .flat_map(|n| n.addresses.iter().map(|a| ip_key(a.ip())))
            .collect();
        *self.node_ips.write().unwrap_or_else(|p| p.into_inner()) = ips;
        let version = held.version();
        self.metrics.set_roster_version(version);
        if let Some(path) = &self.cache {
            let (dir, name) = (path.parent(), path.file_name().and_then(|n| n.to_str()));
            if let (Some(dir), Some(name)) = (dir, name) {
                if let Err(e) = allium_fsutil::write_atomic(dir, name, held.signed(), true) {
                    tracing::warn!(path = %e.path.display(), error = %e.source, "could not cache the roster");
                }
            }
        }
        tracing::info!(version, "roster adopted");
    }
}

impl RosterSink for RosterState {
    fn held_version(&self) -> Option<u64> {
        self.version()
    }
    fn offer(&self, signed: &[u8]) -> Result<Offered, RosterError> {
        RosterState::offer(self, signed)
    }
    fn apply_delta(&self, delta: &[u8]) -> Result<Offered, DeltaError> {
        RosterState::apply_delta(self, delta)
    }
}

impl RosterState {
    /// Whether the roster held lists `identity`: only such a key makes a connection a peer's.
    pub fn lists(&self, identity: &IdentityPublicKey) -> bool {
        self.current()
            .is_some_and(|h| h.roster().node(&identity.node_id()).is_some())
    }

    /// Whether a node of the roster held has an address at `ip` (its /64 for IPv6).
    pub fn has_node_at(&self, ip: IpAddr) -> bool {
        self.node_ips
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&ip_key(ip))
    }
}

impl Neighbours for RosterState {
    fn lookup(&self, node: &NodeId) -> Option<(IdentityPublicKey, SocketAddr)> {
        let held = self.current()?;
        let entry = held.roster().node(node)?;
        Some((entry.identity, *entry.addresses.first()?))
    }
}

/// What a node publishes about itself.
#[derive(Debug, Clone)]
pub struct SelfDescription {
    /// Addresses others reach it at.
    pub addresses: Vec<SocketAddr>,
    /// Software version string.
    pub software: String,
}

/// Signs this node's descriptor with its current onion-key certificates.
pub fn descriptor(
    identity: &IdentityKeypair,
    me: &SelfDescription,
    certs: Vec<OnionKeyCert>,
) -> Result<Vec<u8>, RosterError> {
    let d = Descriptor {
        identity: identity.public(),
        addresses: me.addresses.clone(),
        onion_keys: certs,
        software: me.software.clone(),
        published_at: unix_now(),
    };
    Ok(SignedDescriptor::sign(identity, &d)?.encode())
}

/// The network's authorities as directory sources.
pub fn authorities(network: &NetworkFile) -> Vec<Source> {
    network
        .authorities()
        .iter()
        .map(|a| Source {
            identity: a.identity,
            addr: a.address,
        })
        .collect()
}

/// Fetches a newer roster from the authorities, if there is one: a delta from the version held.
pub async fn refresh_roster(pool: &Pool, state: &RosterState, timeout: Duration) {
    let sources = authorities(state.network());
    match directory::refresh_roster(pool, &sources, timeout, state).await {
        Ok(_) => {}
        Err(e @ (DirectoryError::RosterRefused { .. } | DirectoryError::DeltaRefused { .. })) => {
            tracing::warn!(error = %e, "roster from the authority refused; keeping the last good one");
        }
        Err(e) => tracing::debug!(error = %e, "no authority gave a roster"),
    }
}
