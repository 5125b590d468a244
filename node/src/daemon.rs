//! The node daemon: key store, onion keys, mailbox store, link, onion service, directory and
//! metrics, wired together, running until shut down.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use allium_onion::{
    EpochSchedule, IdentityKeypair, IdentityPublicKey, OnionKeyCert, OnionKeyRing, ReplayWindow,
};
use allium_proto::network::NetworkFile;
use allium_proto::roster::{DirectoryRequest, DirectoryResponse};
use allium_swarm::{Service, ServiceConfig, Store};
use tokio_util::sync::CancellationToken;

use crate::authority::{Authority, AuthorityConfig};
use crate::config::NodeConfig;
use crate::destination::StoreDestination;
use crate::directory::{RosterState, SelfDescription, authorities, descriptor, refresh_roster};
use crate::http::{self, HealthReport, HealthStatus};
use crate::keystore::KeyStore;
use crate::metrics::{Asker, DropReason, Metrics};
use crate::onion_service::{OnionConfig, OnionService, unix_now};
use crate::ratelimit::RateLimiter;
use crate::replication::{Membership, Replicator};
use crate::shutdown::ShutdownSignal;
use allium_link::{
    Deadlines, Handler, Kind, Link, LinkLimits, Peer, Pool, Refusal, Role, Status, TlsIdentity,
};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The network file is missing or invalid.
    #[error("network file {path}: {source}")]
    Network {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: allium_proto::network::NetworkError,
    },
    /// The key store could not be opened.
    #[error(transparent)]
    Keys(#[from] crate::keystore::KeyStoreError),
    /// The mailbox store could not be opened.
    #[error("mailbox store: {0}")]
    Store(#[from] allium_swarm::StoreError),
    /// The link could not be set up.
    #[error(transparent)]
    Link(#[from] allium_link::LinkError),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
}

type NodeOnion = OnionService<RosterState, StoreDestination>;

struct NodeHandler {
    metrics: Metrics,
    client_limit: RateLimiter,
    onion: Arc<NodeOnion>,
    replicator: Arc<Replicator>,
    roster: Arc<RosterState>,
    authority: Option<Arc<Authority>>,
}

impl Handler for NodeHandler {
    type ConnectionGuard = crate::metrics::ConnectionGuard;

    /// A peer is a node of the roster held; a certificate with any other key is a client's.
    fn is_peer(&self, identity: &IdentityPublicKey) -> bool {
        self.roster.lists(identity)
    }

    fn may_be_peer(&self, ip: IpAddr) -> bool {
        self.roster.has_node_at(ip)
    }

    fn connected(&self, peer: &Peer) -> Self::ConnectionGuard {
        match peer.role {
            Role::Peer => self.metrics.peer_connected(),
            Role::Client => self.metrics.client_connected(),
        }
    }

    fn refused(&self, _addr: SocketAddr, why: Refusal) {
        self.metrics.link_refused(why.into());
    }

    async fn handle(&self, peer: &Peer, kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        // The roster may have changed since the handshake: a node that left it is a client now.
        let is_peer = peer.identity.as_ref().is_some_and(|id| self.is_peer(id));
        if !is_peer && !self.client_limit.allow(peer.addr.ip(), Instant::now()) {
            tracing::debug!(kind = ?kind, "request dropped: client over its rate");
            self.metrics.dropped(DropReason::RateLimited);
            return (Status::Rejected, Vec::new());
        }
        if matches!(kind, Kind::Directory) {
            let from = if is_peer { Asker::Peer } else { Asker::Client };
            self.metrics.directory_request(from);
        }
        match kind {
            Kind::Onion => self.onion.handle(body).await,
            Kind::Directory => match DirectoryRequest::decode(&body) {
                Ok(DirectoryRequest::GetRoster { have_version }) => {
                    (Status::Ok, self.roster.answer(have_version).encode())
                }
                Ok(DirectoryRequest::Probe) => (Status::Ok, self.roster.answer_probe().encode()),
                Ok(DirectoryRequest::GetDelta { from }) => {
                    (Status::Ok, self.roster.answer_delta(from).encode())
                }
                Ok(DirectoryRequest::Register(descriptor)) => {
                    let answer = match &self.authority {
                        Some(a) => a.register(&descriptor, peer.addr.ip()),
                        None => DirectoryResponse::Refused("this node is not an authority".into()),
                    };
                    (Status::Ok, answer.encode())
                }
                Err(e) => {
                    tracing::debug!(error = %e, "malformed directory request");
                    (Status::Rejected, Vec::new())
                }
            },
            Kind::Peer => self.replicator.serve(peer, body).await,
        }
    }
}

fn link_limits(config: &NodeConfig) -> LinkLimits {
    let l = &config.limits;
    LinkLimits {
        max_connections: l.max_connections as usize,
        max_connections_per_ip: l.max_connections_per_ip as usize,
        max_streams_per_connection: l.max_streams_per_connection,
        max_streams_per_peer_connection: l.max_streams_per_peer_connection,
        stream_receive_window: u32::try_from(l.stream_receive_window).unwrap_or(u32::MAX),
        connection_receive_window: u32::try_from(l.connection_receive_window).unwrap_or(u32::MAX),
        idle_timeout: l.idle_timeout(),
        keep_alive: l.keep_alive(),
        request_read_timeout: l.request_read_timeout(),
        client_read_buffer: usize::try_from(l.client_read_buffer_bytes).unwrap_or(usize::MAX),
        peer_read_buffer: usize::try_from(l.peer_read_buffer_bytes).unwrap_or(usize::MAX),
    }
}

/// Replay filters whose first generation holds the configured packets per epoch and which grow
/// up to what this node can peel while one key is accepted (three epochs), so an attacker
/// cannot fill them past their false-positive target (onion.md §7).
fn replay_window(config: &NodeConfig, epoch_secs: u64) -> ReplayWindow {
    let rate = crate::onion_service::measure_peel_rate(16);
    let design = config.replay.packets_per_epoch;
    let lifetime = epoch_secs.saturating_mul(allium_onion::replay::MAX_EPOCHS as u64);
    let ceiling = ((rate * lifetime as f64) as u64).max(design);
    let window = ReplayWindow::with_ceiling(design, ceiling);
    tracing::info!(
        peels_per_sec = rate as u64,
        design_packets_per_epoch = design,
        ceiling_packets_per_epoch = ceiling,
        ceiling_bytes_per_epoch = window.ceiling_bytes(),
        "replay filters sized from this node's measured peel rate"
    );
    window
}

/// Makes the onion keys due, stores them before they are published, and deletes expired ones
/// from memory and disk. Returns whether a key was made.
fn rotate_keys(ring: &RwLock<OnionKeyRing>, keys: &KeyStore, onion: &NodeOnion) -> bool {
    let now = unix_now();
    let mut rng = rand_core::OsRng;
    let (made, expired, schedule) = {
        let mut r = ring.write().unwrap_or_else(|p| p.into_inner());
        let made = r.ensure(now, &mut rng);
        let expired = r.prune(now);
        (made, expired, *r.schedule())
    };
    {
        let r = ring.read().unwrap_or_else(|p| p.into_inner());
        for epoch in &made {
            if let Some(key) = r.keys().find(|k| k.epoch() == *epoch) {
                if let Err(e) = keys.save_onion(key) {
                    tracing::error!(error = %e, epoch = epoch.0, "could not store an onion key");
                }
            }
        }
    }
    for epoch in expired {
        match keys.delete_onion(epoch) {
            Ok(_) => tracing::info!(epoch = epoch.0, "onion key deleted after its grace period"),
            Err(e) => tracing::error!(error = %e, epoch = epoch.0, "could not delete an onion key"),
        }
    }
    onion.forget_epochs(|e| schedule.accepts(e, now));
    !made.is_empty()
}

fn current_certs(ring: &RwLock<OnionKeyRing>, identity: &IdentityKeypair) -> Vec<OnionKeyCert> {
    let now = unix_now();
    let r = ring.read().unwrap_or_else(|p| p.into_inner());
    r.schedule()
        .epochs_to_publish(now)
        .into_iter()
        .filter_map(|e| r.get(e, now))
        .map(|k| OnionKeyCert::sign(identity, k))
        .collect()
}

async fn register(
    pool: &Pool,
    network: &NetworkFile,
    identity: &IdentityKeypair,
    me: &SelfDescription,
    ring: &RwLock<OnionKeyRing>,
    timeout: Duration,
) {
    let signed = match descriptor(identity, me, current_certs(ring, identity)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not sign this node's descriptor");
            return;
        }
    };
    let request = DirectoryRequest::Register(signed);
    match allium_link::directory::ask(pool, &authorities(network), &request, timeout).await {
        Ok((DirectoryResponse::Registered { .. }, _)) => {
            tracing::debug!("registered with the authority")
        }
        Ok((DirectoryResponse::Refused(why), _)) => tracing::warn!(%why, "registration refused"),
        Ok((other, _)) => tracing::debug!(answer = ?other, "unexpected registration answer"),
        Err(e) => tracing::warn!(error = %e, "no authority reachable for registration"),
    }
}

/// Longest a stopping node waits for requests in flight. A relay cannot tell a long-poll it
/// carries from a store (both are onion packets), and a long-poll may wait a minute; so the wait
/// is bounded, and the node stops within 5 s of SIGTERM whatever it carries. A request cut off
/// is one its client retries (a store is deduplicated by its hash).
const MAX_DRAIN: Duration = Duration::from_secs(3);

/// The drain period: long enough for a request accepted just before the stop to be forwarded
/// and answered (the forward time-out plus 1 s), at most [`MAX_DRAIN`].
fn drain_period(forward_timeout: Duration) -> Duration {
    (forward_timeout + Duration::from_secs(1)).min(MAX_DRAIN)
}

/// Runs `body` every `period` until `stop` fires.
fn every<F, Fut>(tracker: &ShutdownSignal, stop: CancellationToken, period: Duration, mut body: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => body().await,
                () = stop.cancelled() => return,
            }
        }
    });
}

/// Opens the mailbox store. A store that fails its checks is never served: it is moved aside
/// (kept for inspection) and the node starts empty, pulling its swarm's messages from the other
/// members before it answers retrieves (whitepaper storage §9.5).
fn open_store(data_dir: &Path, cfg: allium_swarm::StoreConfig) -> Result<Store, DaemonError> {
    let path = data_dir.join("store");
    match Store::open(&path, cfg.clone()) {
        Err(e) if e.is_corruption() => {
            let aside = data_dir.join(format!("store.corrupt-{}", unix_now()));
            tracing::error!(error = %e, moved_to = %aside.display(),
                "the mailbox store is corrupt; it is moved aside and the node re-syncs from its swarm");
            std::fs::rename(&path, &aside).map_err(|io| {
                DaemonError::Config(format!(
                    "the mailbox store {} is corrupt ({e}) and could not be moved aside: {io}",
                    path.display()
                ))
            })?;
            Ok(Store::open(&path, cfg)?)
        }
        other => Ok(other?),
    }
}

fn public_address(config: &NodeConfig, bound: SocketAddr) -> Result<SocketAddr, DaemonError> {
    match config.public_addr {
        Some(a) => Ok(a),
        None if !bound.ip().is_unspecified() => Ok(bound),
        None => Err(DaemonError::Config(format!(
            "listening on {bound}: set public_addr to the address other nodes reach this node at"
        ))),
    }
}

/// Writes where the node listens, for operators and tools (`allium-node status`, devnet).
fn write_run_file(dir: &Path, listen: SocketAddr, metrics: SocketAddr, identity: &str) {
    let body = serde_json::json!({
        "pid": std::process::id(),
        "listen": listen.to_string(),
        "metrics": metrics.to_string(),
        "identity": identity,
    });
    if let Err(e) = std::fs::write(dir.join("run.json"), body.to_string()) {
        tracing::warn!(error = %e, "could not write run.json");
    }
}

/// Runs the node until `shutdown` fires, then stops accepting, lets requests in flight finish,
/// and closes the store.
pub async fn run(config: NodeConfig, shutdown: ShutdownSignal) -> Result<(), DaemonError> {
    let network =
        NetworkFile::load(&config.network_file).map_err(|source| DaemonError::Network {
            path: config.network_file.clone(),
            source,
        })?;
    crate::clock::set_offset(config.fault.clock_offset_ms);
    if config.fault.clock_offset_ms != 0 {
        tracing::warn!(
            offset_ms = config.fault.clock_offset_ms,
            "fault injected: this node's clock is shifted"
        );
    }
    let keys = Arc::new(KeyStore::open(&config.data_dir)?);
    let identity = IdentityKeypair::from_seed(&keys.identity().seed());
    let identity_hex: String = identity
        .public()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let schedule = EpochSchedule::new(network.params.epoch_secs)
        .ok_or_else(|| DaemonError::Config("epoch_secs must be positive".into()))?;

    // Onion keys of an earlier run are never used again: its replay filters are gone (they are
    // not written per packet), so a packet it peeled would peel again. They are deleted and
    // fresh keys made for the epochs due, which reach the roster with the next registration
    // (whitepaper onion.md §8).
    let ring = OnionKeyRing::new(schedule);
    let loaded = keys.load_onion_keys()?;
    for bad in loaded.rejected {
        tracing::warn!(error = %bad, "onion key file ignored");
    }
    let mut retired = 0usize;
    for key in loaded.keys {
        match keys.delete_onion(key.epoch()) {
            Ok(_) => retired += 1,
            Err(e) => tracing::error!(error = %e, epoch = key.epoch().0,
                "could not delete an onion key of the previous run"),
        }
    }
    if retired > 0 {
        tracing::info!(
            keys = retired,
            "onion keys of the previous run deleted; new keys are published for this run"
        );
    }
    let ring = Arc::new(RwLock::new(ring));
    // Signed requests of an earlier run are refused for the same reason (storage.md §3).
    let started_ms = allium_proto::Clock::now(&allium_proto::SystemClock);

    let metrics = Metrics::new();
    let params = &network.params;
    let store_config = allium_swarm::StoreConfig {
        ttl_min_ms: params.min_ttl_secs.saturating_mul(1000),
        ttl_max_ms: params.max_ttl_secs.saturating_mul(1000),
        mailbox_quota_bytes: config.store.mailbox_quota_bytes,
        node_cap_bytes: config.store.max_bytes,
        blob_quota_bytes: config.store.blob_quota_bytes,
        blob_cap_bytes: config.store.blob_max_bytes,
        min_free_bytes: config.store.min_free_bytes,
        max_waiters: config.limits.max_parked_polls as usize,
        ..allium_swarm::StoreConfig::default()
    };
    let store = Arc::new(open_store(&config.data_dir, store_config)?);

    let link = Arc::new(Link::bind_node(
        config.listen,
        Arc::new(TlsIdentity::new(&identity)?),
        link_limits(&config),
    )?);
    let bound = link.local_addr()?;
    let me = SelfDescription {
        addresses: vec![public_address(&config, bound)?],
        software: concat!("allium-node/", env!("CARGO_PKG_VERSION")).to_string(),
    };
    let forward_timeout = config.limits.forward_timeout();
    let pool = Arc::new(Pool::new(link.clone(), forward_timeout));
    let roster = Arc::new(RosterState::new(
        network.clone(),
        Some(config.data_dir.join("roster.cbor")),
        metrics.clone(),
    ));
    roster.load_cache();
    let membership = Arc::new(Membership::new(
        identity.public().node_id(),
        roster.clone(),
        metrics.clone(),
    ));
    let service = Arc::new(Service::with_placement(
        store.clone(),
        ServiceConfig {
            not_before: started_ms,
            ..ServiceConfig::new(identity.public().node_id())
        },
        membership.clone(),
    ));
    let replicator = Arc::new(Replicator::new(
        membership.clone(),
        service.clone(),
        pool.clone(),
        metrics.clone(),
        config.replication.clone(),
        Deadlines::uniform(forward_timeout),
    ));
    let destination = Arc::new(StoreDestination::new(
        service,
        replicator.clone(),
        roster.clone(),
        metrics.clone(),
        shutdown.token().clone(),
    ));
    let onion = Arc::new(OnionService::new(
        ring.clone(),
        replay_window(&config, schedule.length_secs()),
        pool.clone(),
        roster.clone(),
        destination,
        metrics.clone(),
        &OnionConfig {
            forward_timeout,
            reply_timeout: config.limits.reply_timeout(),
            forward_queue: config.limits.forward_queue as usize,
            max_path_sessions: config.limits.max_path_sessions as usize,
        },
    ));
    rotate_keys(&ring, &keys, &onion);
    let dir = &config.directory;
    let authority = config.authority.then(|| {
        Arc::new(Authority::new(
            IdentityKeypair::from_seed(&identity.seed()),
            roster.clone(),
            pool.clone(),
            AuthorityConfig {
                publish_interval: Duration::from_millis(dir.publish_interval_ms),
                descriptor_ttl: Duration::from_millis(dir.descriptor_ttl_ms),
                probe_timeout: forward_timeout,
                new_per_address_burst: dir.new_nodes_per_address_burst,
            },
        ))
    });
    if authority.is_some()
        && !network
            .authorities()
            .iter()
            .any(|a| a.identity == identity.public())
    {
        return Err(DaemonError::Config(format!(
            "authority role requested, but the network file does not list this node's identity {identity_hex}"
        )));
    }

    // Metrics and health stay up while the node drains, so they stop on their own signal.
    let started = Instant::now();
    let http_stop = ShutdownSignal::new();
    let health: http::HealthFn = {
        let metrics = metrics.clone();
        let roster = roster.clone();
        let shutdown = shutdown.clone();
        Arc::new(move || {
            let status = if shutdown.is_triggered() {
                HealthStatus::Stopping
            } else if roster.version().is_none() {
                HealthStatus::Starting
            } else {
                HealthStatus::Ok
            };
            let clock = membership.clock();
            HealthReport {
                syncing: membership.syncing(),
                clock_offset_ms: clock.offset(),
                clock_far: clock.is_far(),
                ..HealthReport::from_metrics(status, started, &metrics)
            }
        })
    };
    let (metrics_addr, http_task) = http::serve(
        config.metrics_listen,
        metrics.clone(),
        health,
        http_stop.clone(),
    )
    .await?;
    write_run_file(&config.data_dir, bound, metrics_addr, &identity_hex);
    tracing::info!(listen = %bound, metrics = %metrics_addr, identity = %identity_hex,
        authority = config.authority, "node running");

    // Background work, all stopped by the shutdown signal.
    let stop = shutdown.token().clone();
    let identity = Arc::new(identity);
    {
        let (pool, network, identity, ring, me) = (
            pool.clone(),
            network.clone(),
            identity.clone(),
            ring.clone(),
            me.clone(),
        );
        let period = Duration::from_millis(dir.register_interval_ms);
        every(&shutdown, stop.clone(), period, move || {
            let (pool, network, identity, ring, me) = (
                pool.clone(),
                network.clone(),
                identity.clone(),
                ring.clone(),
                me.clone(),
            );
            async move { register(&pool, &network, &identity, &me, &ring, forward_timeout).await }
        });
    }
    {
        let (pool, roster) = (pool.clone(), roster.clone());
        let period = Duration::from_millis(dir.roster_refresh_ms);
        every(&shutdown, stop.clone(), period, move || {
            let (pool, roster) = (pool.clone(), roster.clone());
            async move { refresh_roster(&pool, &roster, forward_timeout).await }
        });
    }
    {
        let (ring, keys, onion, pool, network, identity, me) = (
            ring.clone(),
            keys.clone(),
            onion.clone(),
            pool.clone(),
            network.clone(),
            identity.clone(),
            me.clone(),
        );
        let period = Duration::from_secs((schedule.length_secs() / 8).clamp(1, 60));
        every(&shutdown, stop.clone(), period, move || {
            let (ring, keys, onion, pool, network, identity, me) = (
                ring.clone(),
                keys.clone(),
                onion.clone(),
                pool.clone(),
                network.clone(),
                identity.clone(),
                me.clone(),
            );
            async move {
                // A new key must reach the roster before clients need it.
                if rotate_keys(&ring, &keys, &onion) {
                    register(&pool, &network, &identity, &me, &ring, forward_timeout).await;
                }
            }
        });
    }
    {
        let (store, metrics) = (store.clone(), metrics.clone());
        every(
            &shutdown,
            stop.clone(),
            Duration::from_secs(10),
            move || {
                let (store, metrics) = (store.clone(), metrics.clone());
                async move {
                    if let Ok(Ok(usage)) = tokio::task::spawn_blocking(move || store.total()).await
                    {
                        metrics.set_db_size(usage.bytes);
                    }
                }
            },
        );
    }
    // Expired messages leave the disk in the background; reads never return them meanwhile.
    let sweeper = store.spawn_sweeper(
        Arc::new(crate::clock::NodeClock),
        Duration::from_secs(5),
        10_000,
    )?;
    if let Some(authority) = &authority {
        shutdown.spawn(authority.clone().run(stop.clone()));
    }
    shutdown.spawn(replicator.clone().run(stop.clone()));

    let handler = Arc::new(NodeHandler {
        metrics: metrics.clone(),
        client_limit: RateLimiter::new(
            config.limits.client_requests_per_sec,
            config.limits.client_request_burst,
            config.limits.max_connections as usize * 4,
        ),
        onion,
        replicator,
        roster,
        authority,
    });
    link.serve(handler, shutdown.triggered(), drain_period(forward_timeout))
        .await;
    tracing::info!("stopped accepting; finishing background work");
    if let Err(e) = shutdown.wait_for_tasks(Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "background work still running at exit");
    }
    http_stop.trigger();
    let _ = http_task.await;
    drop(sweeper);
    drop(pool);
    // Every acknowledged store was synced before it was acknowledged; closing flushes the rest.
    drop(store);
    tracing::info!("node stopped cleanly");
    Ok(())
}
