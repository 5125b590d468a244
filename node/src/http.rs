//! The operator's HTTP endpoint: `GET /metrics` (OpenMetrics text) and `GET /health` (JSON).
//! Meant for loopback (see `metrics_listen`); it still bounds what a client can make it hold:
//! small request headers, a header read time-out, no request bodies read, one request per
//! connection and a cap on concurrent connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::metrics::{self, Metrics};
use crate::shutdown::ShutdownSignal;

/// Concurrent connections served; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// Largest request head (request line and headers) accepted.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node says about itself on `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Overall state; only `ok` answers 200.
    pub status: HealthStatus,
    /// Version of the roster the node holds (0 before it has one).
    pub roster_version: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Open links to other nodes.
    pub peers: u64,
    /// The node is pulling its swarm's messages and refuses retrieves meanwhile.
    pub syncing: bool,
    /// This node's clock minus its swarm peers' (their median), ms, as last measured; `None`
    /// before any peer answered.
    pub clock_offset_ms: Option<i64>,
    /// The clock is too far from the peers' to serve: the node refuses every mailbox request.
    pub clock_far: bool,
}

/// The node's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Serving.
    Ok,
    /// Started but not serving yet (no roster, keys not published).
    Starting,
    /// Shutting down.
    Stopping,
}

impl HealthReport {
    /// A report with `status`, the uptime since `started` and the roster version and peer count
    /// from `metrics`.
    pub fn from_metrics(status: HealthStatus, started: Instant, metrics: &Metrics) -> HealthReport {
        HealthReport {
            status,
            roster_version: metrics.roster_version(),
            uptime_secs: started.elapsed().as_secs(),
            peers: metrics.peers_connected(),
            syncing: false,
            clock_offset_ms: None,
            clock_far: false,
        }
    }
}

/// Produces the current health report on each `/health` request.
pub type HealthFn = Arc<dyn Fn() -> HealthReport + Send + Sync>;

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listening socket could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds `addr` and serves until `shutdown` fires. Returns the bound address (so port 0 works)
/// and the server task, which ends after open connections have finished.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: HealthFn,
    shutdown: ShutdownSignal,
) -> Result<(SocketAddr, JoinHandle<()>), HttpError> {
    let bind_err = |source| HttpError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    tracing::info!(addr = %local, "metrics and health endpoint listening");
    let handle = tokio::spawn(accept_loop(listener, metrics, health, shutdown));
    Ok((local, handle))
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Metrics,
    health: HealthFn,
    shutdown: ShutdownSignal,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(false);
    loop {
        let permit = tokio::select! {
            () = shutdown.triggered() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let stream = tokio::select! {
            () = shutdown.triggered() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Per-connection failures (reset before accept, fd exhaustion); keep serving.
                    tracing::debug!(error = %e, "metrics endpoint accept failed");
                    continue;
                }
            },
        };
        let service = {
            let metrics = metrics.clone();
            let health = health.clone();
            service_fn(move |req| {
                let response = respond(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "metrics endpoint connection failed");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &HealthFn) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/health" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if path == "/metrics" {
        return with_type(StatusCode::OK, metrics.render(), metrics::CONTENT_TYPE);
    }
    let report = health();
    let status = match report.status {
        HealthStatus::Ok => StatusCode::OK,
        HealthStatus::Starting | HealthStatus::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    };
    match serde_json::to_string(&report) {
        Ok(mut body) => {
            body.push('\n');
            with_type(status, body, "application/json")
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode health report");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A minimal HTTP/1.1 `GET` of a node's local endpoint, for `allium-node status` and tools.
/// Returns the status code and the body (at most 1 MiB is read).
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}
