//! Executing storage requests on the destination node: decode, authenticate, run against the
//! store, encode the answer (whitepaper §4). Time is a parameter; no I/O besides the store.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::{self, ReplayCache};
use crate::error::Status;
use crate::proto::{
    Body, DeleteAllResponse, DeleteResponse, ExpireResponse, InfoResponse, MAX_RETRIEVE_COUNT,
    NodeId, PROTOCOL_VERSION, RETRIEVE_BUDGET_BYTES, Request, Response, ResponseBody,
    RetrieveResponse,
};
use crate::store::{NewMessage, RetrieveQuery, Store, Watch};
use crate::time::{Clock, MonotoneFloor, UnixMillis};

/// Who the node is and how strict it is.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This node's identity key: signed requests must name it.
    pub node: NodeId,
    /// Signature window, ± ms (default [`auth::SIGNATURE_WINDOW_MS`]).
    pub window_ms: u64,
    /// Replay cache capacity.
    pub replay_capacity: usize,
    /// Reported by `info`, at most [`crate::proto::MAX_SOFTWARE_LEN`] bytes.
    pub software: String,
}

impl ServiceConfig {
    /// Defaults for `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            window_ms: auth::SIGNATURE_WINDOW_MS,
            replay_capacity: auth::DEFAULT_REPLAY_CAPACITY,
            software: concat!("allium-swarm/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// What became of a request.
#[derive(Debug)]
pub enum Handled {
    /// Answer now.
    Respond(Response),
    /// A long-poll found nothing: wait on [`PendingRetrieve::watch`] for at most
    /// [`PendingRetrieve::wait`], then call [`Service::resume`].
    Wait(PendingRetrieve),
    /// A valid, authenticated request the node itself answers (`get_swarm`, `roster`).
    Forward(Body),
}

/// An authenticated retrieve waiting for a message. Resuming does not re-check the signature
/// (the replay cache would refuse it); it re-runs the query.
#[derive(Debug)]
pub struct PendingRetrieve {
    query: RetrieveQuery,
    /// Fires when a message for the mailbox namespace is stored.
    pub watch: Watch,
    /// How long the client asked to wait.
    pub wait: Duration,
}

/// Executes storage requests against a store.
pub struct Service {
    store: Arc<Store>,
    cfg: ServiceConfig,
    replay: Mutex<ReplayCache>,
    floor: MonotoneFloor,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("node", &self.cfg.node)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over `store`.
    pub fn new(store: Arc<Store>, cfg: ServiceConfig) -> Self {
        let floor = MonotoneFloor::new(store.high_water());
        let replay = Mutex::new(ReplayCache::new(cfg.window_ms, cfg.replay_capacity));
        Self {
            store,
            cfg,
            replay,
            floor,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Node time as the service uses it: `now` clamped so it never runs backwards.
    pub fn node_time(&self, now: UnixMillis) -> UnixMillis {
        self.floor.clamp(now)
    }

    /// Handles one encoded request at wall-clock time `now`.
    pub fn handle(&self, bytes: &[u8], now: UnixMillis) -> Handled {
        let now = self.node_time(now);
        let decoded = match Request::decode(bytes) {
            Ok(d) => d,
            Err(e) => return Handled::Respond(Response::error(now, e.into())),
        };
        {
            let mut replay = self
                .replay
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = auth::authenticate(&decoded, &self.cfg.node, now, &mut replay) {
                return Handled::Respond(Response::error(now, e.into()));
            }
        }
        self.execute(decoded.request.body, now)
    }

    fn execute(&self, body: Body, now: UnixMillis) -> Handled {
        let s = &self.store;
        let result = match body {
            Body::Store(r) => {
                let m = NewMessage {
                    mailbox: r.mailbox,
                    namespace: r.namespace,
                    ttl_ms: r.ttl_ms,
                    data: r.data,
                };
                s.store(m, now).map(ResponseBody::Store)
            }
            Body::Retrieve(r) => {
                let query = RetrieveQuery {
                    mailbox: r.mailbox,
                    namespace: r.namespace,
                    after: r.after,
                    max_count: r.limit.unwrap_or(MAX_RETRIEVE_COUNT).into(),
                    max_bytes: RETRIEVE_BUDGET_BYTES,
                };
                // Register before reading so a store landing in between still wakes us. With
                // too many waiters already, answer at once (the client polls again).
                let watch = r.wait_ms.and_then(|_| s.watch(r.mailbox, r.namespace).ok());
                match s.retrieve(&query, now) {
                    Ok(page) if page.messages.is_empty() && watch.is_some() => {
                        if let (Some(watch), Some(w)) = (watch, r.wait_ms) {
                            let wait = Duration::from_millis(w);
                            return Handled::Wait(PendingRetrieve { query, watch, wait });
                        }
                        Ok(ResponseBody::Retrieve(RetrieveResponse {
                            messages: page.messages,
                            more: page.more,
                        }))
                    }
                    Ok(page) => Ok(ResponseBody::Retrieve(RetrieveResponse {
                        messages: page.messages,
                        more: page.more,
                    })),
                    Err(e) => Err(e),
                }
            }
            Body::Delete(r) => s
                .delete(r.mailbox, r.namespace, r.hashes, now)
                .map(|deleted| ResponseBody::Delete(DeleteResponse { deleted })),
            Body::DeleteAll(r) => s
                .delete_all(r.mailbox, r.namespace, now)
                .map(|count| ResponseBody::DeleteAll(DeleteAllResponse { count })),
            Body::Expire(r) => s
                .expire(r.mailbox, r.namespace, r.hashes, r.expiry, now)
                .map(|updated| ResponseBody::Expire(ExpireResponse { updated })),
            Body::Info => Ok(ResponseBody::Info(InfoResponse {
                protocol: PROTOCOL_VERSION,
                software: self.cfg.software.clone(),
            })),
            b @ (Body::GetSwarm(_) | Body::Roster(_)) => return Handled::Forward(b),
        };
        Handled::Respond(match result {
            Ok(body) => Response {
                now,
                result: Ok(body),
            },
            Err(e) => Response::error(now, Status::from(&e)),
        })
    }

    /// Re-runs a waiting retrieve at time `now` (after its watch fired or its wait ran out).
    pub fn resume(&self, pending: PendingRetrieve, now: UnixMillis) -> Response {
        let now = self.node_time(now);
        match self.store.retrieve(&pending.query, now) {
            Ok(page) => Response {
                now,
                result: Ok(ResponseBody::Retrieve(RetrieveResponse {
                    messages: page.messages,
                    more: page.more,
                })),
            },
            Err(e) => Response::error(now, Status::from(&e)),
        }
    }

    /// Handles a request to completion on this thread, blocking through a long-poll wait.
    /// Requests the node answers itself get `Unsupported`.
    pub fn handle_blocking(&self, bytes: &[u8], clock: &dyn Clock) -> Response {
        match self.handle(bytes, clock.now()) {
            Handled::Respond(r) => r,
            Handled::Wait(p) => {
                p.watch.wait_timeout(p.wait);
                self.resume(p, clock.now())
            }
            Handled::Forward(_) => {
                Response::error(self.node_time(clock.now()), Status::Unsupported)
            }
        }
    }
}
