//! Prometheus metrics of the node. Call sites use typed methods (`metrics.dropped(DropReason::Replay)`),
//! so every label value comes from a fixed enum and a typo cannot create a new series.
//!
//! Labels never carry a mailbox, a client address or anything else that identifies a user: the
//! metrics page is readable by whoever can reach it.

use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// Why a packet was dropped.
    DropReason {
        /// Not the fixed packet size.
        BadSize => "bad_size",
        /// Unknown format version.
        BadVersion => "bad_version",
        /// Sealed to an epoch this node holds no key for.
        UnknownEpoch => "unknown_epoch",
        /// The key exchange gave an all-zero secret.
        NonContributory => "non_contributory",
        /// The header failed authentication.
        HeaderAuth => "header_auth",
        /// The payload failed authentication.
        PayloadAuth => "payload_auth",
        /// Seen before in this epoch (or this sequence number in its path session).
        Replay => "replay",
        /// A path session's packet for a session this node does not keep.
        UnknownSession => "unknown_session",
        /// Peeled but the routing information does not parse.
        Malformed => "malformed",
        /// The next hop's forward queue was full.
        QueueFull => "queue_full",
        /// The next hop could not be reached.
        NextHopUnreachable => "next_hop_unreachable",
        /// The next hop did not answer in time.
        NextHopTimeout => "next_hop_timeout",
        /// The next hop refused the packet.
        NextHopRejected => "next_hop_rejected",
        /// The sender exceeded a rate limit.
        RateLimited => "rate_limited",
    }
}

label_enum! {
    /// Why the link refused a connection or a request before it was handled (`link.md` §2, §3).
    LinkRefusal {
        /// A connection over the total cap, or a client's over its address's cap.
        ConnectionCap => "connection_cap",
        /// A frame with an unknown kind, a length over its kind's limit, or ended early.
        BadFrame => "bad_frame",
        /// Bytes after a request's declared body.
        TrailingBytes => "trailing_bytes",
        /// A request not received whole within the read time-out.
        ReadTimeout => "read_timeout",
        /// A peer frame from a connection whose key is not in the roster.
        NotAPeer => "not_a_peer",
        /// The memory for request bodies being read was in use.
        BufferFull => "buffer_full",
    }
}

impl From<allium_link::Refusal> for LinkRefusal {
    fn from(r: allium_link::Refusal) -> Self {
        use allium_link::Refusal as R;
        match r {
            R::ConnectionCap => LinkRefusal::ConnectionCap,
            R::BadFrame => LinkRefusal::BadFrame,
            R::TrailingBytes => LinkRefusal::TrailingBytes,
            R::ReadTimeout => LinkRefusal::ReadTimeout,
            R::NotAPeer => LinkRefusal::NotAPeer,
            R::BufferFull => LinkRefusal::BufferFull,
        }
    }
}

label_enum! {
    /// A storage request method (the swarm RPC methods).
    StorageMethod {
        /// Deposit a message.
        Store => "store",
        /// Read messages.
        Retrieve => "retrieve",
        /// Delete messages by hash.
        Delete => "delete",
        /// Delete a namespace.
        DeleteAll => "delete_all",
        /// Change expiries.
        Expire => "expire",
        /// Node time and version.
        Info => "info",
        /// The swarm of a mailbox.
        GetSwarm => "get_swarm",
        /// The roster.
        Roster => "roster",
        /// Namespace and mailbox usage.
        Usage => "usage",
        /// One blob chunk by address.
        ReadBlob => "read_blob",
        /// One page of the roster.
        RosterPage => "roster_page",
        /// A method id this node does not know.
        Unknown => "unknown",
    }
}

label_enum! {
    /// How a storage request ended (the swarm response statuses).
    StorageResult {
        /// Executed.
        Ok => "ok",
        /// Not valid for the schema.
        Malformed => "malformed",
        /// Over the size limit.
        TooLarge => "too_large",
        /// Unknown method.
        UnknownMethod => "unknown_method",
        /// Signature required but absent.
        AuthRequired => "auth_required",
        /// Signature invalid.
        Unauthorized => "unauthorized",
        /// Timestamp outside the window.
        ClockSkew => "clock_skew",
        /// Signed request seen before.
        Replayed => "replayed",
        /// TTL outside bounds.
        TtlOutOfRange => "ttl_out_of_range",
        /// Expiry outside bounds.
        ExpiryOutOfRange => "expiry_out_of_range",
        /// Mailbox quota reached.
        QuotaExceeded => "quota_exceeded",
        /// Node size cap reached.
        NodeFull => "node_full",
        /// Temporarily unable.
        Busy => "busy",
        /// Storage fault.
        Internal => "internal",
        /// Not served by this node.
        Unsupported => "unsupported",
        /// The mailbox belongs to another swarm.
        WrongSwarm => "wrong_swarm",
        /// The node is still pulling its swarm's messages.
        Syncing => "syncing",
        /// Held here, but a majority of the swarm did not confirm in time.
        NotReplicated => "not_replicated",
        /// Signed by a delegate this member holds no live delegation for.
        NotDelegated => "not_delegated",
        /// An inbox store without an admitted delivery token.
        TokenRefused => "token_refused",
    }
}

label_enum! {
    /// Who sent a directory request.
    Asker {
        /// A node of the roster held.
        Peer => "peer",
        /// Anyone else.
        Client => "client",
    }
}

label_enum! {
    /// Which way anti-entropy bytes went.
    SyncDirection {
        /// Requests this node sent and answers it received, pulling from peers.
        Pull => "pull",
        /// Requests from peers and this node's answers.
        Serve => "serve",
    }
}

label_enum! {
    /// What became of a replication item sent to a peer.
    ReplicationResult {
        /// The peer holds it.
        Ok => "ok",
        /// The peer refused it.
        Refused => "refused",
        /// The peer could not be reached or did not answer.
        Unreachable => "unreachable",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SyncLabels {
    direction: SyncDirection,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReplicationLabels {
    result: ReplicationResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: DropReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LinkLabels {
    reason: LinkRefusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectoryLabels {
    from: Asker,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StorageLabels {
    method: StorageMethod,
    result: StorageResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: StorageMethod,
}

/// 0.5 ms to about 8 s: a forward is a QUIC round trip to a peer; a storage request a few disk
/// operations or a long poll.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    relayed: Counter,
    delivered: Counter,
    dropped: Family<DropLabels, Counter>,
    link_refused: Family<LinkLabels, Counter>,
    directory_requests: Family<DirectoryLabels, Counter>,
    replays: Counter,
    storage_requests: Family<StorageLabels, Counter>,
    forward_seconds: Histogram,
    storage_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    db_size: Gauge,
    roster_version: Gauge,
    peers: Gauge,
    clients: Gauge,
    longpolls: Gauge,
    replay_load: Gauge<f64, AtomicU64>,
    replay_generations: Gauge,
    replay_rolls: Counter,
    replay_saturated: Counter,
    sessions: Gauge,
    session_packets: Counter,
    sessions_refused: Counter,
    sync_bytes: Family<SyncLabels, Counter>,
    sync_pulled: Counter,
    sync_rounds: Counter,
    replicated: Family<ReplicationLabels, Counter>,
    handed_off: Counter,
    syncing: Gauge,
    clock_offset: Gauge,
    clock_far: Gauge,
}

/// The node's metrics. Clones share the same values.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let relayed = Counter::default();
        let delivered = Counter::default();
        let dropped = Family::<DropLabels, Counter>::default();
        let link_refused = Family::<LinkLabels, Counter>::default();
        let directory_requests = Family::<DirectoryLabels, Counter>::default();
        let replays = Counter::default();
        let storage_requests = Family::<StorageLabels, Counter>::default();
        let forward_seconds = latency_histogram();
        let storage_seconds: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let db_size = Gauge::default();
        let roster_version = Gauge::default();
        let peers = Gauge::default();
        let clients = Gauge::default();
        let longpolls = Gauge::default();
        let replay_load = Gauge::<f64, AtomicU64>::default();
        let replay_generations = Gauge::default();
        let replay_rolls = Counter::default();
        let replay_saturated = Counter::default();
        let sessions = Gauge::default();
        let session_packets = Counter::default();
        let sessions_refused = Counter::default();
        let sync_bytes = Family::<SyncLabels, Counter>::default();
        let sync_pulled = Counter::default();
        let sync_rounds = Counter::default();
        let replicated = Family::<ReplicationLabels, Counter>::default();
        let handed_off = Counter::default();
        let syncing = Gauge::default();
        let clock_offset = Gauge::default();
        let clock_far = Gauge::default();
        registry.register(
            "allium_sync_bytes",
            "Anti-entropy protocol bytes (requests and answers), by direction",
            sync_bytes.clone(),
        );
        registry.register(
            "allium_sync_items_pulled",
            "Messages, tombstones and expiries pulled from swarm peers by anti-entropy",
            sync_pulled.clone(),
        );
        registry.register(
            "allium_sync_rounds",
            "Anti-entropy rounds completed with every reachable swarm peer",
            sync_rounds.clone(),
        );
        registry.register(
            "allium_replication_items",
            "Replication items sent to swarm peers, by result",
            replicated.clone(),
        );
        registry.register(
            "allium_handed_off_mailboxes",
            "Mailboxes handed to the swarm that now owns them and dropped here",
            handed_off.clone(),
        );
        registry.register(
            "allium_syncing",
            "1 while the node is pulling its swarm's messages and refuses retrieves",
            syncing.clone(),
        );
        registry.register(
            "allium_clock_offset_ms",
            "This node's clock minus its swarm peers' (their median), as last measured",
            clock_offset.clone(),
        );
        registry.register(
            "allium_clock_far",
            "1 while this node's clock is too far from its swarm peers' to serve",
            clock_far.clone(),
        );

        // Counter names go in without `_total`: the encoder appends it.
        registry.register(
            "allium_packets_relayed",
            "Packets peeled and forwarded to a next hop",
            relayed.clone(),
        );
        registry.register(
            "allium_packets_delivered",
            "Packets peeled at their destination and handed to the storage service",
            delivered.clone(),
        );
        registry.register(
            "allium_packets_dropped",
            "Packets dropped, by reason",
            dropped.clone(),
        );
        registry.register(
            "allium_directory_requests",
            "Directory requests handled, by who asked (a roster node, or a client: a client \
             holding a roster asks through the onion, so these are bootstraps)",
            directory_requests.clone(),
        );
        registry.register(
            "allium_link_refused",
            "Connections and requests the link refused before handling them, by reason",
            link_refused.clone(),
        );
        registry.register(
            "allium_replays",
            "Packets dropped as replays (also counted in allium_packets_dropped{reason=\"replay\"})",
            replays.clone(),
        );
        registry.register(
            "allium_storage_requests",
            "Storage requests executed, by method and result",
            storage_requests.clone(),
        );
        registry.register(
            "allium_relay_forward_seconds",
            "Time from receiving a packet to the next hop accepting it",
            forward_seconds.clone(),
        );
        registry.register(
            "allium_storage_request_seconds",
            "Time to execute a storage request, by method",
            storage_seconds.clone(),
        );
        registry.register(
            "allium_db_size_bytes",
            "Size of the message store on disk",
            db_size.clone(),
        );
        registry.register(
            "allium_roster_version",
            "Version of the roster this node holds",
            roster_version.clone(),
        );
        registry.register(
            "allium_peers_connected",
            "Open connections from nodes of the roster",
            peers.clone(),
        );
        registry.register(
            "allium_client_connections",
            "Open connections from anyone else (clients, and keys not in the roster)",
            clients.clone(),
        );
        registry.register(
            "allium_longpolls_parked",
            "Long-poll retrieves waiting here for a message (each holds no thread)",
            longpolls.clone(),
        );
        registry.register(
            "allium_replay_filter_load",
            "Tags in the replay filters of the epoch last used, as a share of replay.packets_per_epoch",
            replay_load.clone(),
        );
        registry.register(
            "allium_replay_filter_generations",
            "Generations of the replay filters of the epoch last used (1 up to the design load)",
            replay_generations.clone(),
        );
        registry.register(
            "allium_replay_filter_rolls",
            "Replay filter generations added because one was full (more packets than the design load)",
            replay_rolls.clone(),
        );
        registry.register(
            "allium_replay_filter_saturated",
            "Epochs whose replay filters reached their ceiling: false positives rising",
            replay_saturated.clone(),
        );
        registry.register(
            "allium_path_sessions",
            "Path sessions kept (onion.md §12): each lets one path's later packets skip the key agreement",
            sessions.clone(),
        );
        registry.register(
            "allium_path_session_packets",
            "Path session packets peeled",
            session_packets.clone(),
        );
        registry.register(
            "allium_path_sessions_refused",
            "Path sessions not kept because the table held limits.max_path_sessions",
            sessions_refused.clone(),
        );

        Metrics(Arc::new(Inner {
            registry,
            relayed,
            delivered,
            dropped,
            link_refused,
            directory_requests,
            replays,
            storage_requests,
            forward_seconds,
            storage_seconds,
            db_size,
            roster_version,
            peers,
            clients,
            longpolls,
            replay_load,
            replay_generations,
            replay_rolls,
            replay_saturated,
            sessions,
            session_packets,
            sessions_refused,
            sync_bytes,
            sync_pulled,
            sync_rounds,
            replicated,
            handed_off,
            syncing,
            clock_offset,
            clock_far,
        }))
    }

    /// Anti-entropy bytes moved.
    pub fn sync_bytes(&self, direction: SyncDirection, bytes: usize) {
        self.0
            .sync_bytes
            .get_or_create(&SyncLabels { direction })
            .inc_by(bytes as u64);
    }

    /// Items pulled from a peer and applied.
    pub fn sync_pulled(&self, n: usize) {
        self.0.sync_pulled.inc_by(n as u64);
    }

    /// A full anti-entropy round finished.
    pub fn sync_round(&self) {
        self.0.sync_rounds.inc();
    }

    /// A replication item's fate at one peer.
    pub fn replicated(&self, result: ReplicationResult, n: usize) {
        self.0
            .replicated
            .get_or_create(&ReplicationLabels { result })
            .inc_by(n as u64);
    }

    /// A mailbox was handed off.
    pub fn handed_off(&self) {
        self.0.handed_off.inc();
    }

    /// Whether the node is syncing.
    pub fn set_syncing(&self, syncing: bool) {
        self.0.syncing.set(i64::from(syncing));
    }

    /// The last measurement of this node's clock against its swarm peers'.
    pub fn set_clock(&self, offset_ms: i64, far: bool) {
        self.0.clock_offset.set(offset_ms);
        self.0.clock_far.set(i64::from(far));
    }

    /// A packet was forwarded; `elapsed` from receipt to the next hop accepting it.
    pub fn relayed(&self, elapsed: Duration) {
        self.0.relayed.inc();
        self.0.forward_seconds.observe(elapsed.as_secs_f64());
    }

    /// A packet reached its destination here.
    pub fn delivered(&self) {
        self.0.delivered.inc();
    }

    /// A packet was dropped. A replay also counts in `allium_replays_total`.
    pub fn dropped(&self, reason: DropReason) {
        self.0.dropped.get_or_create(&DropLabels { reason }).inc();
        if reason == DropReason::Replay {
            self.0.replays.inc();
        }
    }

    /// The link refused a connection or a request.
    pub fn link_refused(&self, reason: LinkRefusal) {
        self.0
            .link_refused
            .get_or_create(&LinkLabels { reason })
            .inc();
    }

    /// A directory request from `from` was read.
    pub fn directory_request(&self, from: Asker) {
        self.0
            .directory_requests
            .get_or_create(&DirectoryLabels { from })
            .inc();
    }

    /// A storage request finished with `result` after `elapsed`.
    pub fn storage_request(&self, method: StorageMethod, result: StorageResult, elapsed: Duration) {
        self.0
            .storage_requests
            .get_or_create(&StorageLabels { method, result })
            .inc();
        self.0
            .storage_seconds
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    /// The store's size on disk.
    pub fn set_db_size(&self, bytes: u64) {
        self.0.db_size.set(saturating_i64(bytes));
    }

    /// The roster version now held.
    pub fn set_roster_version(&self, version: u64) {
        self.0.roster_version.set(saturating_i64(version));
    }

    /// The roster version last set.
    pub fn roster_version(&self) -> u64 {
        u64::try_from(self.0.roster_version.get()).unwrap_or(0)
    }

    /// The fill of the replay filters of the epoch last used, as a share of the design load,
    /// and their generations.
    pub fn set_replay_filter_load(&self, load: f64, generations: usize) {
        self.0.replay_load.set(load);
        self.0
            .replay_generations
            .set(i64::try_from(generations).unwrap_or(i64::MAX));
    }

    /// Path sessions now kept.
    pub fn set_path_sessions(&self, n: usize) {
        self.0.sessions.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A path session packet was peeled.
    pub fn path_session_packet(&self) {
        self.0.session_packets.inc();
    }

    /// A path session was not kept: the table is full.
    pub fn path_session_refused(&self) {
        self.0.sessions_refused.inc();
    }

    /// A replay filter generation was added.
    pub fn replay_filter_rolled(&self) {
        self.0.replay_rolls.inc();
    }

    /// An epoch's replay filters reached their ceiling.
    pub fn replay_filter_saturated(&self) {
        self.0.replay_saturated.inc();
    }

    /// Counts an open peer link until the returned guard is dropped.
    pub fn peer_connected(&self) -> ConnectionGuard {
        ConnectionGuard::new(self.0.peers.clone())
    }

    /// Open peer links.
    pub fn peers_connected(&self) -> u64 {
        u64::try_from(self.0.peers.get()).unwrap_or(0)
    }

    /// Counts an open client connection until the returned guard is dropped.
    pub fn client_connected(&self) -> ConnectionGuard {
        ConnectionGuard::new(self.0.clients.clone())
    }

    /// Counts a parked long-poll until the returned guard is dropped.
    pub fn longpoll_parked(&self) -> ConnectionGuard {
        ConnectionGuard::new(self.0.longpolls.clone())
    }

    /// Every metric in OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label encoder,
        // and the partial page is still the most useful thing to return.
        if prometheus_client::encoding::text::encode(&mut out, &self.0.registry).is_err() {
            tracing::error!("metrics encoding failed; the page is incomplete");
        }
        out
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Holds one count on a gauge of things open (connections, parked long-polls); dropping it takes
/// the count back, so a task that ends by any path (error, panic, cancellation) leaves the gauge
/// right.
#[derive(Debug)]
#[must_use = "the count lasts only while the guard lives"]
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        ConnectionGuard(gauge)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl From<allium_proto::Method> for StorageMethod {
    fn from(m: allium_proto::Method) -> Self {
        use allium_proto::Method as M;
        match m {
            M::Store => StorageMethod::Store,
            M::Retrieve => StorageMethod::Retrieve,
            M::Delete => StorageMethod::Delete,
            M::DeleteAll => StorageMethod::DeleteAll,
            M::Expire => StorageMethod::Expire,
            M::Info => StorageMethod::Info,
            M::GetSwarm => StorageMethod::GetSwarm,
            M::Roster => StorageMethod::Roster,
            M::Usage => StorageMethod::Usage,
            M::ReadBlob => StorageMethod::ReadBlob,
            M::RosterPage => StorageMethod::RosterPage,
        }
    }
}

impl From<allium_proto::Status> for StorageResult {
    fn from(s: allium_proto::Status) -> Self {
        use allium_proto::Status as S;
        match s {
            S::Ok => StorageResult::Ok,
            S::Malformed => StorageResult::Malformed,
            S::TooLarge => StorageResult::TooLarge,
            S::UnknownMethod => StorageResult::UnknownMethod,
            S::AuthRequired => StorageResult::AuthRequired,
            S::Unauthorized => StorageResult::Unauthorized,
            S::ClockSkew => StorageResult::ClockSkew,
            S::Replayed => StorageResult::Replayed,
            S::TtlOutOfRange => StorageResult::TtlOutOfRange,
            S::ExpiryOutOfRange => StorageResult::ExpiryOutOfRange,
            S::QuotaExceeded => StorageResult::QuotaExceeded,
            S::NodeFull => StorageResult::NodeFull,
            S::Busy => StorageResult::Busy,
            S::Internal => StorageResult::Internal,
            S::Unsupported => StorageResult::Unsupported,
            S::WrongSwarm => StorageResult::WrongSwarm,
            S::Syncing => StorageResult::Syncing,
            S::NotReplicated => StorageResult::NotReplicated,
            S::NotDelegated => StorageResult::NotDelegated,
            S::TokenRefused => StorageResult::TokenRefused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_snake_case_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert!(
                r.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
            assert!(seen.insert(r.as_str()));
        }
        assert_eq!(DropReason::ALL.len(), 14);
    }

    #[test]
    fn guards_count_connections() {
        let m = Metrics::new();
        let a = m.peer_connected();
        let b = m.peer_connected();
        assert_eq!(m.peers_connected(), 2);
        drop(a);
        assert_eq!(m.peers_connected(), 1);
        drop(b);
        assert_eq!(m.peers_connected(), 0);
    }
}
