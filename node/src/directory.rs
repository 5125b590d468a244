//! The roster as a node holds it, the directory requests every node answers, and the loops that
//! keep a node registered with the authorities and its roster fresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use allium_onion::{IdentityKeypair, IdentityPublicKey, NodeId, OnionKeyCert};
use allium_swarm::network::NetworkFile;
use allium_swarm::roster::{
    Descriptor, DirectoryRequest, DirectoryResponse, Roster, RosterError, SignedDescriptor,
    SignedRoster,
};

use crate::link::{Deadlines, Kind, Pool, Status};
use crate::metrics::Metrics;
use crate::onion_service::{Neighbours, unix_now};

/// A verified roster with the bytes it came in and a lookup index.
#[derive(Debug)]
pub struct HeldRoster {
    /// The roster.
    pub roster: Roster,
    /// Its signed encoding, served as is.
    pub signed: Vec<u8>,
    index: HashMap<[u8; 32], (IdentityPublicKey, SocketAddr)>,
}

impl HeldRoster {
    fn new(roster: Roster, signed: Vec<u8>) -> Self {
        let index = roster
            .nodes()
            .iter()
            .filter_map(|n| Some((n.identity.to_bytes(), (n.identity, *n.addresses.first()?))))
            .collect();
        HeldRoster {
            roster,
            signed,
            index,
        }
    }
}

/// The latest roster this node accepted. Never goes back to an older version; a refused roster
/// leaves the last good one in use.
#[derive(Debug)]
pub struct RosterState {
    network: NetworkFile,
    held: RwLock<Option<Arc<HeldRoster>>>,
    cache: Option<PathBuf>,
    metrics: Metrics,
}

impl RosterState {
    /// An empty state for `network`; accepted rosters are written to `cache` (and read back from
    /// it by [`Self::load_cache`]) so a restarted node serves its last roster at once.
    pub fn new(network: NetworkFile, cache: Option<PathBuf>, metrics: Metrics) -> Self {
        RosterState {
            network,
            held: RwLock::new(None),
            cache,
            metrics,
        }
    }

    /// The network this node belongs to.
    pub fn network(&self) -> &NetworkFile {
        &self.network
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
        self.held.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Version of the roster in use.
    pub fn version(&self) -> Option<u64> {
        self.current().map(|h| h.roster.version())
    }

    /// Verifies `signed` and adopts it if it is newer than the roster held. Returns whether it
    /// was adopted.
    pub fn offer(&self, signed: &[u8]) -> Result<bool, RosterError> {
        let held_version = self.version();
        let roster = SignedRoster::decode_and_verify(signed, &self.network, held_version)?;
        if Some(roster.version()) == held_version {
            return Ok(false);
        }
        let version = roster.version();
        let held = Arc::new(HeldRoster::new(roster, signed.to_vec()));
        {
            let mut slot = self.held.write().unwrap_or_else(|p| p.into_inner());
            // Another task may have adopted a newer one meanwhile.
            if slot.as_ref().is_some_and(|h| h.roster.version() >= version) {
                return Ok(false);
            }
            *slot = Some(held);
        }
        self.metrics.set_roster_version(version);
        if let Some(path) = &self.cache {
            let (dir, name) = (path.parent(), path.file_name().and_then(|n| n.to_str()));
            if let (Some(dir), Some(name)) = (dir, name) {
                if let Err(e) = crate::fsutil::write_atomic(dir, name, signed, true) {
                    tracing::warn!(path = %e.path.display(), error = %e.source, "could not cache the roster");
                }
            }
        }
        tracing::info!(version, "roster adopted");
        Ok(true)
    }
}

impl Neighbours for RosterState {
    fn lookup(&self, node: &NodeId) -> Option<(IdentityPublicKey, SocketAddr)> {
        self.current()?.index.get(&node.0).copied()
    }
}

/// Answers the directory requests every node serves: a roster fetch. Registration is the
/// authority's (see [`crate::authority`]).
pub fn answer_get_roster(state: &RosterState, have_version: Option<u64>) -> DirectoryResponse {
    match state.current() {
        Some(h) if Some(h.roster.version()) == have_version => DirectoryResponse::NotModified,
        Some(h) => DirectoryResponse::Roster(h.signed.clone()),
        None => DirectoryResponse::Refused("no roster yet".into()),
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

/// Sends `request` to the authorities in turn until one answers.
pub async fn ask_authorities(
    pool: &Pool,
    network: &NetworkFile,
    request: &DirectoryRequest,
    timeout: Duration,
) -> Option<DirectoryResponse> {
    let bytes = request.encode();
    for authority in network.authorities() {
        match pool
            .request(
                &authority.identity,
                authority.address,
                Kind::Directory,
                &bytes,
                Deadlines::uniform(timeout),
            )
            .await
        {
            Ok((Status::Ok, body)) => match DirectoryResponse::decode(&body) {
                Ok(r) => return Some(r),
                Err(e) => tracing::debug!(error = %e, "authority answer malformed"),
            },
            Ok((Status::Rejected, _)) => tracing::debug!("authority refused the request"),
            Err(e) => tracing::debug!(error = %e, "authority unreachable"),
        }
    }
    None
}

/// Fetches a newer roster from the authorities, if there is one.
pub async fn refresh_roster(pool: &Pool, state: &RosterState, timeout: Duration) {
    let request = DirectoryRequest::GetRoster {
        have_version: state.version(),
    };
    match ask_authorities(pool, state.network(), &request, timeout).await {
        Some(DirectoryResponse::Roster(bytes)) => {
            if let Err(e) = state.offer(&bytes) {
                tracing::warn!(error = %e, "roster from the authority refused; keeping the last good one");
            }
        }
        Some(DirectoryResponse::NotModified) => {}
        Some(other) => tracing::debug!(answer = ?other, "unexpected roster answer"),
        None => tracing::debug!("no authority answered the roster request"),
    }
}
