#![doc = include_str!("../README.md")]
//! The QUIC link between clients and nodes and between nodes.
//!
//! TLS 1.3 over QUIC (quinn + rustls), ALPN [`ALPN`]. A node's TLS identity is its Ed25519
//! identity key ([`tls`]); whoever connects pins the key it expects and refuses any other. Clients
//! connect without a certificate; nodes present theirs. Each request is one bidirectional stream
//! ([`frame`]). Unvalidated addresses are sent a Retry before any work is done for them, and
//! connections per address, connections in all, streams per connection, bytes in flight and the
//! memory of bodies being read are capped (whitepaper `link.md` §3).
//!
//! A certificate proves a key, not a right: the [`Handler`] says which keys are peers (the
//! roster's nodes). Every other connection, with a certificate or without, is a client: it is
//! counted against the per-address cap, may not send peer frames, and reads its bodies from the
//! clients' budget.

pub mod directory;
pub mod frame;
pub mod pool;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_onion::IdentityPublicKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;

pub use frame::{FrameError, Kind, ReadBudget, Status};

pub use directory::Source;
pub use pool::Pool;
pub use tls::{ALPN, TlsIdentity, certificate_identity};

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// TLS configuration could not be built.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No connection could be made (refused, unreachable, wrong key, time-out).
    #[error("connection to {addr} failed: {why}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The connection failed before the peer accepted the request: it was not executed.
    #[error("connection lost before the request was accepted: {0}")]
    Lost(String),
    /// A stream failed after the peer accepted the request.
    #[error("stream: {0}")]
    Stream(String),
    /// A frame broke the format.
    #[error("bad frame: {0}")]
    BadFrame(&'static str),
    /// The peer did not answer in time.
    #[error("timed out")]
    Timeout,
}

/// Resource caps of an endpoint.
#[derive(Debug, Clone)]
pub struct LinkLimits {
    /// Connections accepted in all.
    pub max_connections: usize,
    /// Connections accepted from one IP address (one /64 for IPv6).
    pub max_connections_per_ip: usize,
    /// Concurrent bidirectional streams a client may open on one connection.
    pub max_streams_per_connection: u32,
    /// Concurrent bidirectional streams a roster node may open on one connection: a relay
    /// carries every request of its clients to this node over its one connection here, each
    /// long-poll among them holding its stream for up to a minute.
    pub max_streams_per_peer_connection: u32,
    /// Bytes a peer may have in flight on one stream.
    pub stream_receive_window: u32,
    /// Bytes a peer may have in flight on one connection.
    pub connection_receive_window: u32,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// The connecting side sends keep-alives this often, so idle pooled connections survive.
    pub keep_alive: Duration,
    /// A request must arrive whole within this time, or its stream is dropped (slow senders).
    pub request_read_timeout: Duration,
    /// Bytes that request bodies being read from clients may hold at once, in all.
    pub client_read_buffer: usize,
    /// Bytes that request bodies being read from peers may hold at once, in all.
    pub peer_read_buffer: usize,
}

impl Default for LinkLimits {
    fn default() -> Self {
        LinkLimits {
            max_connections: 4096,
            max_connections_per_ip: 16,
            max_streams_per_connection: 256,
            max_streams_per_peer_connection: 16_384,
            stream_receive_window: 256 * 1024,
            connection_receive_window: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            request_read_timeout: Duration::from_secs(5),
            client_read_buffer: 32 * 1024 * 1024,
            peer_read_buffer: 64 * 1024 * 1024,
        }
    }
}

/// The unit per-address limits count: an IPv4 address, or an IPv6 /64 (one host usually holds
/// a whole /64).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        },
        v4 => v4,
    }
}

/// What an accepted connection is, decided once its handshake completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A node of the roster: it proved a key the [`Handler`] calls a peer's.
    Peer,
    /// Anyone else, with a certificate or without.
    Client,
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its identity, if it presented one (nodes do; clients do not). A proved key, which alone
    /// grants nothing: see [`Peer::role`].
    pub identity: Option<IdentityPublicKey>,
    /// Whether it was a peer when it was admitted. Requests check again
    /// ([`Handler::is_peer`]), as the roster changes while a connection lives; a client
    /// connection whose key joins the roster is counted as a peer's from its next request on.
    pub role: Role,
}

/// Why the link refused a connection or a request before any handler saw it. Each is logged at
/// debug level by the link and reported to [`Handler::refused`] to be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A connection over the total cap, or a client's over its address's cap.
    ConnectionCap,
    /// A request frame broke the format: unknown kind, too long, ended early.
    BadFrame,
    /// Bytes after a request's declared body.
    TrailingBytes,
    /// A request not received whole within the read time-out.
    ReadTimeout,
    /// A kind only peers may send, from a connection that is not a peer's.
    NotAPeer,
    /// The memory for bodies being read was in use by other streams.
    BufferFull,
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TrailingBytes => Refusal::TrailingBytes,
            FrameError::BufferFull => Refusal::BufferFull,
            FrameError::UnknownKind | FrameError::TooLong | FrameError::Truncated => {
                Refusal::BadFrame
            }
        }
    }
}

/// Answers requests arriving on accepted streams.
pub trait Handler: Send + Sync + 'static {
    /// Held for as long as a connection is open (for example a gauge's guard).
    type ConnectionGuard: Send + 'static;

    /// Whether the key a connection proved is a peer's (a node of the current roster). Asked
    /// after each handshake and again at the head of each request of a kind only peers send.
    fn is_peer(&self, identity: &IdentityPublicKey) -> bool;

    /// Whether a peer may connect from `ip` (a roster node has an address there). A connection
    /// from such an address reaches its handshake even when the address's clients are at their
    /// cap, so that the cap, which peers are exempt from, is applied once the key is known.
    fn may_be_peer(&self, _ip: IpAddr) -> bool {
        false
    }

    /// Called once a connection's handshake completed and it was admitted.
    fn connected(&self, peer: &Peer) -> Self::ConnectionGuard;

    /// Called for each connection or request the link refused, to count it.
    fn refused(&self, _addr: SocketAddr, _why: Refusal) {}

    /// Answers one request.
    fn handle(
        &self,
        peer: &Peer,
        kind: Kind,
        body: Vec<u8>,
    ) -> impl Future<Output = (Status, Vec<u8>)> + Send;
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport(limits: &LinkLimits, keep_alive: bool) -> Result<quinn::TransportConfig, LinkError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|_| LinkError::Tls("idle time-out out of range".into()))?;
    t.max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(limits.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(limits.stream_receive_window.into())
        .receive_window(limits.connection_receive_window.into())
        .send_window(u64::from(limits.connection_receive_window))
        .datagram_receive_buffer_size(None);
    if keep_alive {
        t.keep_alive_interval(Some(limits.keep_alive));
    }
    Ok(t)
}

/// A QUIC endpoint: a node's (which accepts and dials) or an anonymous client's (which dials).
#[derive(Debug)]
pub struct Link {
    endpoint: quinn::Endpoint,
    identity: Option<Arc<TlsIdentity>>,
    limits: LinkLimits,
    connections: Arc<ConnectionCounter>,
}

impl Link {
    /// A node's endpoint on `addr`, presenting `identity`.
    pub fn bind_node(
        addr: SocketAddr,
        identity: Arc<TlsIdentity>,
        limits: LinkLimits,
    ) -> Result<Self, LinkError> {
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(tls::OptionalClientVerifier))
            .with_single_cert(identity.cert_chain(), identity.private_key())
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut tls = tls;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(Arc::new(transport(&limits, false)?))
            .max_incoming(limits.max_connections)
            .migration(false);
        let reset_key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &*identity.stateless_reset_key());
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| LinkError::Bind { addr, source })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| LinkError::Tls("no async runtime for the QUIC endpoint".into()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::new(Arc::new(reset_key)),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| LinkError::Bind { addr, source })?;
        Ok(Link {
            endpoint,
            identity: Some(identity),
            connections: Arc::new(ConnectionCounter::new(&limits)),
            limits,
        })
    }

    /// An anonymous client endpoint bound to `addr` (port 0 for any).
    pub fn bind_client(addr: SocketAddr, limits: LinkLimits) -> Result<Self, LinkError> {
        let endpoint =
            quinn::Endpoint::client(addr).map_err(|source| LinkError::Bind { addr, source })?;
        Ok(Link {
            endpoint,
            identity: None,
            connections: Arc::new(ConnectionCounter::new(&limits)),
            limits,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        self.endpoint
            .local_addr()
            .map_err(|source| LinkError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })
    }

    /// The identity this endpoint presents, if any.
    pub fn identity(&self) -> Option<&IdentityPublicKey> {
        self.identity.as_deref().map(TlsIdentity::public)
    }

    /// The limits this endpoint applies.
    pub fn limits(&self) -> &LinkLimits {
        &self.limits
    }

    fn client_config(
        &self,
        expected: &IdentityPublicKey,
    ) -> Result<quinn::ClientConfig, LinkError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(tls::PinnedServerVerifier::new(*expected));
        let mut tls = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.cert_chain(), id.private_key())
                .map_err(|e| LinkError::Tls(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport(&self.limits, true)?));
        Ok(config)
    }

    /// Connects to the node at `addr`, refusing it unless it proves it holds `expected`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: &IdentityPublicKey,
    ) -> Result<quinn::Connection, LinkError> {
        let fail = |why: String| LinkError::Connect { addr, why };
        let connecting = self
            .endpoint
            .connect_with(self.client_config(expected)?, addr, "allium")
            .map_err(|e| fail(e.to_string()))?;
        connecting.await.map_err(|e| fail(e.to_string()))
    }

    /// Accepts connections and answers their requests with `handler` until `shutdown` resolves;
    /// then stops accepting connections and streams, lets requests in flight finish (up to
    /// `drain`), and closes.
    pub async fn serve<H: Handler>(
        &self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) {
        // Connections and the requests on them; the drain waits for both, so an open but idle
        // connection must end when `stopping` fires, not when its peer closes it.
        let tasks = tokio_util::task::TaskTracker::new();
        let stopping = tokio_util::sync::CancellationToken::new();
        let budgets = Arc::new(Budgets {
            clients: ReadBudget::new(self.limits.client_read_buffer),
            peers: ReadBudget::new(self.limits.peer_read_buffer),
        });
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                () = &mut shutdown => None,
            };
            let Some(incoming) = incoming else { break };
            // Make an unvalidated address prove it receives our packets before any work.
            if !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
                continue;
            }
            let addr = incoming.remote_address();
            let Some(slot) = self
                .connections
                .admit(addr.ip(), handler.may_be_peer(addr.ip()))
            else {
                tracing::debug!("connection refused: per-address or total cap reached");
                handler.refused(addr, Refusal::ConnectionCap);
                incoming.refuse();
                continue;
            };
            let handler = handler.clone();
            let streams = StreamContext {
                read_timeout: self.limits.request_read_timeout,
                peer_streams: self.limits.max_streams_per_peer_connection,
                budgets: budgets.clone(),
                tasks: tasks.clone(),
                stopping: stopping.clone(),
            };
            tasks.spawn(async move {
                if let Err(e) = serve_connection(incoming, handler, slot, streams).await {
                    tracing::debug!(error = %e, "connection ended");
                }
            });
        }
        self.endpoint.set_server_config(None);
        stopping.cancel();
        tasks.close();
        if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
            tracing::warn!("requests still in flight after the drain period; closing");
        }
        // Tell every peer and client the connections are closed before the process exits, so
        // requests still waiting on them fail now instead of at their idle time-out.
        if !self.close_within(CLOSE_WAIT).await {
            tracing::debug!("connections still closing after {CLOSE_WAIT:?}");
        }
    }

    /// Closes every connection and waits until the peers were told.
    pub async fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        self.endpoint.wait_idle().await;
    }

    /// [`Link::shutdown`], waiting at most `limit`: a process about to exit tells its peers
    /// it is gone (so they free the connection now rather than at their idle time-out) but
    /// never hangs on a peer that does not answer. Returns whether every connection finished
    /// closing in time.
    pub async fn close_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.shutdown()).await.is_ok()
    }
}

/// The read buffers of one endpoint: clients cannot use up what peers need to replicate.
#[derive(Debug)]
struct Budgets {
    clients: ReadBudget,
    peers: ReadBudget,
}

/// What every stream task of an endpoint shares.
#[derive(Debug, Clone)]
struct StreamContext {
    read_timeout: Duration,
    /// Streams a peer's connection is granted once it is known to be a peer's.
    peer_streams: u32,
    budgets: Arc<Budgets>,
    tasks: tokio_util::task::TaskTracker,
    /// Fires when the endpoint stops: no new connection or request starts after it.
    stopping: tokio_util::sync::CancellationToken,
}

/// How long a stopping endpoint waits for its peers to learn that its connections are closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// QUIC application error code of a refused connection (its address has too many).
const CONNECTION_REFUSED: u32 = 2;
/// QUIC application error code of a refused stream (link.md §2).
const STREAM_REFUSED: u32 = 1;

/// An accepted connection as its stream tasks see it.
struct Accepted<H: Handler> {
    peer: Peer,
    conn: quinn::Connection,
    /// Still counted as a client of its address.
    client: AtomicBool,
    /// Its place in the connection counts and its handler's guard, replaced when a client's key
    /// joins the roster.
    standing: Mutex<(ConnectionSlot, Option<H::ConnectionGuard>)>,
}

impl<H: Handler> Accepted<H> {
    /// A connection made before its node was admitted to the roster (a node registering) turns
    /// into a peer's at its first request after: it stops counting against its address, so nodes
    /// sharing a host are not locked out by their own earlier connections.
    fn promote(&self, handler: &H, peer_streams: u32) {
        if !self.client.swap(false, Ordering::AcqRel) {
            return;
        }
        self.conn.set_max_concurrent_bi_streams(peer_streams.into());
        let mut standing = self.standing.lock().unwrap_or_else(|p| p.into_inner());
        standing.0.uncount_client();
        standing.1 = None;
        let peer = Peer {
            role: Role::Peer,
            ..self.peer.clone()
        };
        standing.1 = Some(handler.connected(&peer));
        tracing::debug!("a client connection's key is in the roster now: counted as a peer's");
    }
}

async fn serve_connection<H: Handler>(
    incoming: quinn::Incoming,
    handler: Arc<H>,
    mut slot: ConnectionSlot,
    context: StreamContext,
) -> Result<(), LinkError> {
    let handshake = incoming
        .accept()
        .map_err(|e| LinkError::Stream(e.to_string()))?;
    let conn = tokio::select! {
        conn = handshake => conn.map_err(|e| LinkError::Stream(e.to_string()))?,
        () = context.stopping.cancelled() => return Ok(()),
    };
    let identity = peer_identity(&conn);
    let role = match &identity {
        Some(id) if handler.is_peer(id) => Role::Peer,
        _ => Role::Client,
    };
    let addr = conn.remote_address();
    // Peers are exempt from the per-address cap (several nodes may share a host); a client is
    // counted only now that it is known not to be one.
    if role == Role::Client && !slot.count_as_client() {
        tracing::debug!("connection refused: the address has its clients' cap");
        handler.refused(addr, Refusal::ConnectionCap);
        conn.close(
            CONNECTION_REFUSED.into(),
            b"too many connections from this address",
        );
        return Ok(());
    }
    let peer = Peer {
        addr,
        identity,
        role,
    };
    if role == Role::Peer {
        // Granted after the handshake: the transport's initial limit is a client's.
        conn.set_max_concurrent_bi_streams(context.peer_streams.into());
    }
    let guard = handler.connected(&peer);
    let accepted = Arc::new(Accepted::<H> {
        peer,
        conn: conn.clone(),
        client: AtomicBool::new(role == Role::Client),
        standing: Mutex::new((slot, Some(guard))),
    });
    loop {
        // Once the node stops, no new request starts here; those in flight hold the connection
        // open (their streams keep it alive) until they have answered.
        let incoming = tokio::select! {
            incoming = conn.accept_bi() => incoming,
            () = context.stopping.cancelled() => return Ok(()),
        };
        let (send, recv) = match incoming {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(_))
            | Err(quinn::ConnectionError::LocallyClosed) => return Ok(()),
            Err(e) => return Err(LinkError::Stream(e.to_string())),
        };
        let (handler, accepted, context) = (handler.clone(), accepted.clone(), context.clone());
        context
            .tasks
            .clone()
            .spawn(serve_stream(send, recv, handler, accepted, context));
    }
}

/// Reads one request, refusing it at its head when the sender may not send its kind, and
/// answers it.
async fn serve_stream<H: Handler>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: Arc<H>,
    accepted: Arc<Accepted<H>>,
    context: StreamContext,
) {
    let peer = &accepted.peer;
    let read = async {
        let (kind, len) = frame::read_request_head(&mut recv).await?;
        // Asked again here rather than trusted from the handshake: the roster changes while a
        // connection lives.
        let is_peer = peer.identity.as_ref().is_some_and(|id| handler.is_peer(id));
        if is_peer {
            accepted.promote(&*handler, context.peer_streams);
        }
        if kind.peers_only() && !is_peer {
            return Err(Refusal::NotAPeer);
        }
        let budget = if is_peer {
            &context.budgets.peers
        } else {
            &context.budgets.clients
        };
        let body = frame::read_request_body(&mut recv, len, budget).await?;
        Ok((kind, body))
    };
    let request = match tokio::time::timeout(context.read_timeout, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => return refuse(&*handler, peer, &mut send, &mut recv, why),
        Err(_) => {
            return refuse(&*handler, peer, &mut send, &mut recv, Refusal::ReadTimeout);
        }
    };
    let (kind, body) = request;
    if let Err(e) = frame::write_accepted(&mut send).await {
        tracing::debug!(error = %e, "requester gone");
        return;
    }
    let (status, answer) = handler.handle(peer, kind, body).await;
    if let Err(e) = frame::write_response(&mut send, status, &answer).await {
        tracing::debug!(error = %e, "response not delivered");
        return;
    }
    // Done once the peer has the answer: a connection closed at shutdown right after the last
    // request would otherwise drop bytes not yet sent.
    let _ = tokio::time::timeout(context.read_timeout, send.stopped()).await;
}

/// Resets both directions of a refused stream (the sender stops sending, no answer comes) and
/// reports why.
fn refuse<H: Handler>(
    handler: &H,
    peer: &Peer,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    why: Refusal,
) {
    tracing::debug!(reason = ?why, "request dropped");
    handler.refused(peer.addr, why);
    let _ = recv.stop(STREAM_REFUSED.into());
    let _ = send.reset(STREAM_REFUSED.into());
}

/// The identity a connected peer proved, if it presented a certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Option<IdentityPublicKey> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().and_then(|c| certificate_identity(c).ok())
}

/// How long a request may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Until the peer says it received the whole request: short, so a dead peer is found fast.
    pub accept: Duration,
    /// Until the answer is complete: long enough for the slowest request (a long-poll).
    pub answer: Duration,
}

impl Deadlines {
    /// The same limit for both.
    pub fn uniform(limit: Duration) -> Self {
        Deadlines {
            accept: limit,
            answer: limit,
        }
    }
}

/// Sends one request on a new stream of `conn` and waits for the response within `deadlines`.
pub async fn request(
    conn: &quinn::Connection,
    kind: Kind,
    body: &[u8],
    deadlines: Deadlines,
) -> Result<(Status, Vec<u8>), LinkError> {
    request_held(conn, kind, &mut Some(body), deadlines).await
}

/// [`request`] with a body the caller gives up once the peer accepted it: `held` (the body and
/// whatever the caller keeps with it, such as a queue slot) is emptied then, so a request
/// waiting a minute for its answer (a long-poll carried by a relay) holds neither meanwhile. A
/// request that fails before it was accepted leaves `held` as it was, to be sent again.
pub async fn request_held<B: AsRef<[u8]>>(
    conn: &quinn::Connection,
    kind: Kind,
    held: &mut Option<B>,
    deadlines: Deadlines,
) -> Result<(Status, Vec<u8>), LinkError> {
    let lost = |e: LinkError| match e {
        LinkError::Stream(why) if conn.close_reason().is_some() => LinkError::Lost(why),
        other => other,
    };
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        let body = held
            .as_ref()
            .ok_or(LinkError::BadFrame("no request body"))?;
        frame::write_request(&mut send, kind, body.as_ref())
            .await
            .map_err(lost)?;
        tokio::time::timeout(deadlines.accept, frame::read_accepted(&mut recv))
            .await
            .map_err(|_| LinkError::Timeout)?
            .map_err(lost)?;
        *held = None;
        frame::read_response(&mut recv).await
    };
    tokio::time::timeout(deadlines.answer, exchange)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// Counts accepted connections in all, and client connections per address.
#[derive(Debug)]
struct ConnectionCounter {
    counts: Mutex<Counts>,
    max_per_ip: usize,
    max_total: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    clients: HashMap<IpAddr, usize>,
}

/// One accepted connection's place in the counts; released on drop.
#[derive(Debug)]
struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
    key: IpAddr,
    client: bool,
}

impl ConnectionCounter {
    fn new(limits: &LinkLimits) -> Self {
        ConnectionCounter {
            counts: Mutex::new(Counts::default()),
            max_per_ip: limits.max_connections_per_ip,
            max_total: limits.max_connections,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip` before its handshake, or `None` when the total cap is
    /// reached, or the address's clients are at their cap and no peer can be there.
    fn admit(self: &Arc<Self>, ip: IpAddr, may_be_peer: bool) -> Option<ConnectionSlot> {
        let key = ip_key(ip);
        let mut counts = self.lock();
        let clients = counts.clients.get(&key).copied().unwrap_or(0);
        if counts.total >= self.max_total || (clients >= self.max_per_ip && !may_be_peer) {
            return None;
        }
        counts.total += 1;
        Some(ConnectionSlot {
            counter: self.clone(),
            key,
            client: false,
        })
    }
}

impl ConnectionSlot {
    /// Stops counting the connection as a client of its address.
    fn uncount_client(&mut self) {
        if !self.client {
            return;
        }
        self.client = false;
        let mut counts = self.counter.lock();
        if let Some(n) = counts.clients.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.clients.remove(&self.key);
            }
        }
    }

    /// Counts the connection as a client of its address; false if the address is at its cap.
    fn count_as_client(&mut self) -> bool {
        let mut counts = self.counter.lock();
        let here = counts.clients.entry(self.key).or_insert(0);
        if *here >= self.counter.max_per_ip {
            if *here == 0 {
                counts.clients.remove(&self.key);
            }
            return false;
        }
        *here += 1;
        self.client = true;
        true
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.uncount_client();
        let mut counts = self.counter.lock();
        counts.total = counts.total.saturating_sub(1);
    }
}
