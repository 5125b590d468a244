//! One long-lived connection per neighbour, dialled on first use and re-dialled when it dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_onion::IdentityPublicKey;

use super::{Deadlines, Kind, Link, LinkError, Status, request_held};

type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Connections to other nodes, keyed by identity.
#[derive(Debug)]
pub struct Pool {
    link: Arc<Link>,
    slots: Mutex<HashMap<[u8; 32], Slot>>,
    connect_timeout: Duration,
}

impl Pool {
    /// A pool dialling from `link`, giving up on a dial after `connect_timeout`.
    pub fn new(link: Arc<Link>, connect_timeout: Duration) -> Self {
        Pool {
            link,
            slots: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// The link the pool dials from.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    fn slot(&self, node: &IdentityPublicKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(node.to_bytes()).or_default().clone()
    }

    /// A live connection to `node` at `addr`, dialling if there is none, and whether it was
    /// dialled just now. Concurrent callers for the same node share one dial.
    async fn connection(
        &self,
        node: &IdentityPublicKey,
        addr: SocketAddr,
    ) -> Result<(quinn::Connection, bool), LinkError> {
        let slot = self.slot(node);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() && conn.remote_address() == addr {
                return Ok((conn.clone(), false));
            }
        }
        let conn = tokio::time::timeout(self.connect_timeout, self.link.connect(addr, node))
            .await
            .map_err(|_| LinkError::Connect {
                addr,
                why: "timed out".into(),
            })??;
        *guard = Some(conn.clone());
        Ok((conn, true))
    }

    /// Drops `conn` from the pool (if it is still the pooled one), so the next request dials.
    async fn forget(&self, node: &IdentityPublicKey, conn: &quinn::Connection) {
        let slot = self.slot(node);
        let mut guard = slot.lock().await;
        if guard
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conn.close(0u32.into(), b"unresponsive");
            *guard = None;
        }
    }

    /// Sends a request to `node` and waits for the answer within `deadlines`.
    ///
    /// A pooled connection that turns out to be dead (the peer restarted: its stateless reset
    /// closes our side at once) is replaced by a fresh dial, once, when the request was provably
    /// not executed. A connection on which a request timed out is dropped, so the next request
    /// dials afresh.
    pub async fn request(
        &self,
        node: &IdentityPublicKey,
        addr: SocketAddr,
        kind: Kind,
        body: &[u8],
        deadlines: Deadlines,
    ) -> Result<(Status, Vec<u8>), LinkError> {
        self.request_held(node, addr, kind, &mut Some(body), deadlines)
            .await
    }

    /// [`Pool::request`] giving up `held` (the body and what the caller keeps with it) once
    /// the peer accepted the request, as [`crate::request_held`] does.
    pub async fn request_held<B: AsRef<[u8]>>(
        &self,
        node: &IdentityPublicKey,
        addr: SocketAddr,
        kind: Kind,
        held: &mut Option<B>,
        deadlines: Deadlines,
    ) -> Result<(Status, Vec<u8>), LinkError> {
        let (conn, fresh) = self.connection(node, addr).await?;
        match request_held(&conn, kind, held, deadlines).await {
            // Lost means not accepted: `held` still holds the body.
            Err(LinkError::Lost(_)) if !fresh => {
                self.forget(node, &conn).await;
                let (conn, _) = self.connection(node, addr).await?;
                let result = request_held(&conn, kind, held, deadlines).await;
                if result.is_err() && conn.close_reason().is_some() {
                    self.forget(node, &conn).await;
                }
                result
            }
            Err(e) => {
                if matches!(e, LinkError::Timeout | LinkError::Lost(_))
                    || conn.close_reason().is_some()
                {
                    self.forget(node, &conn).await;
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// UDP bytes sent and received, QUIC framing and all, over the connections pooled now (a
    /// connection replaced or closed takes its counts with it): for measurements.
    pub async fn traffic(&self) -> (u64, u64) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let (mut sent, mut received) = (0, 0);
        for slot in slots {
            if let Some(conn) = slot.lock().await.as_ref() {
                let stats = conn.stats();
                sent += stats.udp_tx.bytes;
                received += stats.udp_rx.bytes;
            }
        }
        (sent, received)
    }

    /// Number of live connections.
    pub fn live(&self) -> usize {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter(|s| {
                s.try_lock()
                    .map(|g| g.as_ref().is_some_and(|c| c.close_reason().is_none()))
                    .unwrap_or(true)
            })
            .count()
    }
}
