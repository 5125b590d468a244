//! One long-lived connection per neighbour, dialled on first use and re-dialled when it dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_onion::IdentityPublicKey;

use super::{Kind, Link, LinkError, Status, request};

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

    /// A live connection to `node` at `addr`, dialling if there is none. Concurrent callers for
    /// the same node share one dial.
    pub async fn connection(
        &self,
        node: &IdentityPublicKey,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, LinkError> {
        let slot = self.slot(node);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() && conn.remote_address() == addr {
                return Ok(conn.clone());
            }
        }
        let conn = tokio::time::timeout(self.connect_timeout, self.link.connect(addr, node))
            .await
            .map_err(|_| LinkError::Connect {
                addr,
                why: "timed out".into(),
            })??;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Sends a request to `node` and waits up to `timeout` for the answer. A connection that
    /// fails is dropped from the pool, so the next request dials afresh.
    pub async fn request(
        &self,
        node: &IdentityPublicKey,
        addr: SocketAddr,
        kind: Kind,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(Status, Vec<u8>), LinkError> {
        let conn = self.connection(node, addr).await?;
        let result = request(&conn, kind, body, timeout).await;
        if result.is_err() && conn.close_reason().is_some() {
            let slot = self.slot(node);
            let mut guard = slot.lock().await;
            if guard
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                *guard = None;
            }
        }
        result
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
