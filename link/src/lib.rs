#![doc = include_str!("../README.md")]
//! The QUIC link between clients and nodes and between nodes.
//!
//! TLS 1.3 over QUIC (quinn + rustls), ALPN [`ALPN`]. A node's TLS identity is its Ed25519
//! identity key ([`tls`]); whoever connects pins the key it expects and refuses any other. Clients
//! connect without a certificate; nodes present theirs. Each request is one bidirectional stream
//! ([`frame`]). Unvalidated addresses are sent a Retry before any work is done for them, and
//! connections per address, connections in all, streams per connection and bytes in flight are
//! capped.

pub mod directory;
pub mod frame;
pub mod pool;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_onion::IdentityPublicKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;

pub use frame::{Kind, Status};

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
    /// Concurrent bidirectional streams a peer may open on one connection.
    pub max_streams_per_connection: u32,
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
}

impl Default for LinkLimits {
    fn default() -> Self {
        LinkLimits {
            max_connections: 4096,
            max_connections_per_ip: 16,
            max_streams_per_connection: 256,
            stream_receive_window: 256 * 1024,
            connection_receive_window: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            request_read_timeout: Duration::from_secs(5),
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

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its identity, if it presented one (nodes do; clients do not).
    pub identity: Option<IdentityPublicKey>,
}

/// Answers requests arriving on accepted streams.
pub trait Handler: Send + Sync + 'static {
    /// Held for as long as a connection is open (for example a gauge's guard).
    type ConnectionGuard: Send + 'static;

    /// Called once a connection's handshake completed.
    fn connected(&self, peer: &Peer) -> Self::ConnectionGuard;

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
            let Some(slot) = self.connections.acquire(incoming.remote_address().ip()) else {
                tracing::debug!("connection refused: per-address or total cap reached");
                incoming.refuse();
                continue;
            };
            let handler = handler.clone();
            let read_timeout = self.limits.request_read_timeout;
            let inner = tasks.clone();
            let stopping = stopping.clone();
            tasks.spawn(async move {
                let _slot = slot;
                let served = serve_connection(incoming, handler, read_timeout, inner, stopping);
                if let Err(e) = served.await {
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
        self.endpoint.close(0u32.into(), b"shutting down");
    }

    /// Closes every connection and waits until the peers were told.
    pub async fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        self.endpoint.wait_idle().await;
    }
}

async fn serve_connection<H: Handler>(
    incoming: quinn::Incoming,
    handler: Arc<H>,
    read_timeout: Duration,
    tasks: tokio_util::task::TaskTracker,
    stopping: tokio_util::sync::CancellationToken,
) -> Result<(), LinkError> {
    let handshake = incoming
        .accept()
        .map_err(|e| LinkError::Stream(e.to_string()))?;
    let conn = tokio::select! {
        conn = handshake => conn.map_err(|e| LinkError::Stream(e.to_string()))?,
        () = stopping.cancelled() => return Ok(()),
    };
    let peer = Arc::new(Peer {
        addr: conn.remote_address(),
        identity: peer_identity(&conn),
    });
    let _guard = handler.connected(&peer);
    loop {
        // Once the node stops, no new request starts here; those in flight hold the connection
        // open (their streams keep it alive) until they have answered.
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            () = stopping.cancelled() => return Ok(()),
        };
        let (mut send, mut recv) = match accepted {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(_))
            | Err(quinn::ConnectionError::LocallyClosed) => return Ok(()),
            Err(e) => return Err(LinkError::Stream(e.to_string())),
        };
        let handler = handler.clone();
        let peer = peer.clone();
        tasks.spawn(async move {
            let request = tokio::time::timeout(read_timeout, frame::read_request(&mut recv)).await;
            let (kind, body) = match request {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "request dropped");
                    let _ = send.reset(1u32.into());
                    return;
                }
                Err(_) => {
                    tracing::debug!("request dropped: not received within the read time-out");
                    let _ = send.reset(1u32.into());
                    return;
                }
            };
            if let Err(e) = frame::write_accepted(&mut send).await {
                tracing::debug!(error = %e, "requester gone");
                return;
            }
            let (status, answer) = handler.handle(&peer, kind, body).await;
            if let Err(e) = frame::write_response(&mut send, status, &answer).await {
                tracing::debug!(error = %e, "response not delivered");
                return;
            }
            // Done once the peer has the answer: a connection closed at shutdown right after
            // the last request would otherwise drop bytes not yet sent.
            let _ = tokio::time::timeout(read_timeout, send.stopped()).await;
        });
    }
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
    let lost = |e: LinkError| match e {
        LinkError::Stream(why) if conn.close_reason().is_some() => LinkError::Lost(why),
        other => other,
    };
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
        frame::write_request(&mut send, kind, body)
            .await
            .map_err(lost)?;
        tokio::time::timeout(deadlines.accept, frame::read_accepted(&mut recv))
            .await
            .map_err(|_| LinkError::Timeout)?
            .map_err(lost)?;
        frame::read_response(&mut recv).await
    };
    tokio::time::timeout(deadlines.answer, exchange)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// Counts accepted connections per address and in all.
#[derive(Debug)]
struct ConnectionCounter {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    max_total: usize,
}

/// One accepted connection's place in the count; released on drop.
#[derive(Debug)]
struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
    key: IpAddr,
}

impl ConnectionCounter {
    fn new(limits: &LinkLimits) -> Self {
        ConnectionCounter {
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: limits.max_connections_per_ip,
            max_total: limits.max_connections,
        }
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let key = ip_key(ip);
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = map.values().sum();
        let here = map.entry(key).or_insert(0);
        if *here >= self.max_per_ip || total >= self.max_total {
            if *here == 0 {
                map.remove(&key);
            }
            return None;
        }
        *here += 1;
        Some(ConnectionSlot {
            counter: self.clone(),
            key,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self
            .counter
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}
