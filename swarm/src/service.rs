//! Executing storage requests on the destination node: decode, authenticate, run against the
//! store, encode the answer (whitepaper §4). Time is a parameter; no I/O besides the store.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::{NewMessage, RetrieveQuery, Store, Watch};
use allium_proto::auth::{self, ReplayCache};
use allium_proto::crypto;
use allium_proto::error::Status;
use allium_proto::storage::{
    BLOB, Body, DEVICES, DeleteAllResponse, DeleteResponse, ExpireResponse, INBOX, InfoResponse,
    MAX_RETRIEVE_COUNT, Mailbox, Method, NodeId, PROTOCOL_VERSION, REQUESTS, RETRIEVE_BUDGET_BYTES,
    ReadBlobResponse, Request, Response, ResponseBody, RetrieveResponse, StoreRequest,
    StoreResponse, TOKENS, UsageResponse,
};
use allium_proto::sync::{EntryKey, Item, ItemMessage};
use allium_proto::time::{Clock, MonotoneFloor, UnixMillis};

/// Expired verifier records skipped when asking whether a mailbox registered any token: past
/// them the inbox counts as closed to tokenless stores (the safe side).
const MAX_TOKEN_SCAN: usize = 64;

/// Who the node is and how strict it is.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This node's identity key: signed requests must name it.
    pub node: NodeId,
    /// Signature window, ± ms (default [`auth::SIGNATURE_WINDOW_MS`]).
    pub window_ms: u64,
    /// Replay cache capacity.
    pub replay_capacity: usize,
    /// Reported by `info`, at most [`allium_proto::storage::MAX_SOFTWARE_LEN`] bytes.
    pub software: String,
    /// Signed requests timestamped before this are refused as outside the window: the node's
    /// start, as the replay cache of an earlier run is gone (0: none refused).
    pub not_before: UnixMillis,
}

impl ServiceConfig {
    /// Defaults for `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            window_ms: auth::SIGNATURE_WINDOW_MS,
            replay_capacity: auth::DEFAULT_REPLAY_CAPACITY,
            software: concat!("allium-swarm/", env!("CARGO_PKG_VERSION")).to_owned(),
            not_before: 0,
        }
    }
}

/// Which mailboxes this node serves: the swarm layer's answer to "is this mine?".
pub trait Placement: Send + Sync {
    /// `None` to serve a request of `method` for `mailbox`; otherwise the refusal to send
    /// (`wrong_swarm` with the right swarm, or `syncing`).
    fn check(&self, mailbox: &Mailbox, method: Method, now: UnixMillis) -> Option<Response>;
}

/// Serves every mailbox (a node outside any network, and tests of this crate).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeAll;

impl Placement for ServeAll {
    fn check(&self, _: &Mailbox, _: Method, _: UnixMillis) -> Option<Response> {
        None
    }
}

/// What became of a request.
#[derive(Debug)]
pub enum Handled {
    /// Answer now.
    Respond(Response),
    /// A store queued for the local write; its copy goes to the other members at the same
    /// time (see [`PendingStore`]).
    Store(PendingStore),
    /// A delete or expiry executed here: send `response` now, and `items` to the other swarm
    /// members in the background (anti-entropy converges them in any case).
    Replicate {
        /// The answer.
        response: Response,
        /// What the other members must apply.
        items: Vec<Item>,
    },
    /// A long-poll found nothing: await [`Watch::changed`] on [`PendingRetrieve::watch`] for at
    /// most [`PendingRetrieve::wait`] (it holds no thread), then call [`Service::resume`].
    Wait(PendingRetrieve),
    /// A valid, authenticated request the node itself answers (`get_swarm`, `roster`,
    /// `roster_page`).
    Forward(Body),
}

/// A store whose local, synced write is queued. The caller sends `item` to the other members
/// of the swarm while it awaits [`Self::finish`]: the write and the replication overlap, and
/// neither holds a thread while it waits.
#[derive(Debug)]
pub struct PendingStore {
    ticket: crate::store::Ticket,
    /// The message as the other members must hold it.
    pub item: Item,
    now: UnixMillis,
    node: NodeId,
}

impl PendingStore {
    /// Waits for the local write; the answer lists this node as the first holder.
    pub async fn finish(self) -> Response {
        let (now, node) = (self.now, self.node);
        answer(self.ticket.finish().await, now, node)
    }

    /// [`Self::finish`], blocking: for synchronous callers (tests, the model). Async code
    /// awaits `finish` (tokio panics on a blocking wait inside its runtime).
    pub fn wait(self) -> Response {
        let (now, node) = (self.now, self.node);
        answer(self.ticket.wait(), now, node)
    }
}

fn answer(
    written: Result<StoreResponse, crate::StoreError>,
    now: UnixMillis,
    node: NodeId,
) -> Response {
    match written {
        Ok(mut stored) => {
            stored.holders = vec![node];
            Response::ok(now, ResponseBody::Store(stored))
        }
        Err(e) => Response::error(now, Status::from(&e)),
    }
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
    placement: Arc<dyn Placement>,
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
        Self::with_placement(store, cfg, Arc::new(ServeAll))
    }

    /// A service over `store` that serves only the mailboxes `placement` accepts.
    pub fn with_placement(
        store: Arc<Store>,
        cfg: ServiceConfig,
        placement: Arc<dyn Placement>,
    ) -> Self {
        let floor = MonotoneFloor::new(store.high_water());
        let mut replay = ReplayCache::new(cfg.window_ms, cfg.replay_capacity);
        replay.refuse_before(cfg.not_before);
        let replay = Mutex::new(replay);
        Self {
            store,
            placement,
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
            // A delegate's request is accepted while its delegation record is live here
            // (whitepaper §3.1): one point read, made only after its signature verified.
            let mut fault = None;
            let verdict =
                auth::authenticate_with(&decoded, &self.cfg.node, now, &mut replay, |m, signer| {
                    let key = EntryKey {
                        mailbox: *m,
                        namespace: DEVICES,
                        hash: crypto::delegation_hash(m, signer),
                    };
                    self.store.holds_live(&key, now).unwrap_or_else(|e| {
                        fault = Some(e);
                        false
                    })
                });
            if let Some(e) = fault {
                return Handled::Respond(Response::error(now, Status::from(&e)));
            }
            if let Err(e) = verdict {
                return Handled::Respond(Response::error(now, e.into()));
            }
        }
        if let Some(mailbox) = decoded.request.body.mailbox() {
            if let Some(refusal) =
                self.placement
                    .check(&mailbox, decoded.request.body.method(), now)
            {
                return Handled::Respond(refusal);
            }
        }
        if let Body::Store(r) = &decoded.request.body {
            if r.namespace == INBOX {
                match self.admits(r, now) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Handled::Respond(Response::error(now, Status::TokenRefused));
                    }
                    Err(e) => return Handled::Respond(Response::error(now, Status::from(&e))),
                }
            }
        }
        self.execute(decoded.request.body, now)
    }

    /// Whether an inbox store gets in (storage.md §4.5): with a token whose verifier record is
    /// live here; without one, only while the mailbox has registered no token at all (its
    /// owner has not opted in, and its inbox stays open as before).
    fn admits(&self, r: &StoreRequest, now: UnixMillis) -> Result<bool, crate::StoreError> {
        match &r.token {
            Some(token) => {
                let key = EntryKey {
                    mailbox: r.mailbox,
                    namespace: TOKENS,
                    hash: crypto::token_record_hash(&r.mailbox, &token.0),
                };
                self.store.holds_live(&key, now)
            }
            None => Ok(!self
                .store
                .any_live(&r.mailbox, TOKENS, now, MAX_TOKEN_SCAN)?),
        }
    }

    fn execute(&self, body: Body, now: UnixMillis) -> Handled {
        let s = &self.store;
        let result = match body {
            Body::Store(r) => {
                let m = NewMessage {
                    mailbox: r.mailbox,
                    namespace: r.namespace,
                    ttl_ms: r.ttl_ms,
                    data: r.data.clone(),
                };
                // Checked here as well as by the store: the copy for the other members leaves
                // before the local write is done, and must not carry a TTL the store refuses.
                let cfg = s.config();
                if r.ttl_ms < cfg.ttl_min_ms || r.ttl_ms > cfg.ttl_max_ms {
                    return Handled::Respond(Response::error(now, Status::TtlOutOfRange));
                }
                let expiry = now.saturating_add(r.ttl_ms);
                return match s.submit_store(m, now) {
                    Ok(ticket) => Handled::Store(PendingStore {
                        ticket,
                        item: Item::Message(ItemMessage {
                            mailbox: r.mailbox,
                            namespace: r.namespace,
                            timestamp: now,
                            expiry,
                            set_at: now,
                            data: r.data,
                        }),
                        now,
                        node: self.cfg.node,
                    }),
                    Err(e) => Handled::Respond(Response::error(now, Status::from(&e))),
                };
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
            Body::Delete(r) => {
                let until = now.saturating_add(s.config().ttl_max_ms);
                let items = r
                    .hashes
                    .iter()
                    .map(|&hash| Item::Tombstone {
                        key: EntryKey {
                            mailbox: r.mailbox,
                            namespace: r.namespace,
                            hash,
                        },
                        until,
                    })
                    .collect();
                return background(
                    now,
                    s.delete(r.mailbox, r.namespace, r.hashes, now)
                        .map(|deleted| ResponseBody::Delete(DeleteResponse { deleted })),
                    items,
                );
            }
            Body::DeleteAll(r) => {
                return match s.delete_all_full(r.mailbox, r.namespace, now) {
                    Ok((count, buried)) => background(
                        now,
                        Ok(ResponseBody::DeleteAll(DeleteAllResponse { count })),
                        buried
                            .into_iter()
                            .map(|(key, until)| Item::Tombstone { key, until })
                            .collect(),
                    ),
                    Err(e) => Handled::Respond(Response::error(now, Status::from(&e))),
                };
            }
            Body::Expire(r) => {
                return match s.expire_full(r.mailbox, r.namespace, r.hashes, r.expiry, now) {
                    Ok((updated, set_at)) => {
                        let items = updated
                            .iter()
                            .map(|&(hash, expiry)| Item::Expiry {
                                key: EntryKey {
                                    mailbox: r.mailbox,
                                    namespace: r.namespace,
                                    hash,
                                },
                                expiry,
                                set_at,
                            })
                            .collect();
                        background(
                            now,
                            Ok(ResponseBody::Expire(ExpireResponse { updated })),
                            items,
                        )
                    }
                    Err(e) => Handled::Respond(Response::error(now, Status::from(&e))),
                };
            }
            Body::Info => Ok(ResponseBody::Info(InfoResponse {
                protocol: PROTOCOL_VERSION,
                software: self.cfg.software.clone(),
            })),
            Body::Usage(r) => {
                let cfg = s.config();
                s.namespace_usage(&r.mailbox, r.namespace).and_then(|ns| {
                    let all = s.usage(&r.mailbox)?;
                    let requests = r.namespace == REQUESTS;
                    Ok(ResponseBody::Usage(UsageResponse {
                        bytes: ns.bytes,
                        count: ns.count,
                        max_bytes: if requests {
                            cfg.requests_quota_bytes
                        } else if r.namespace == BLOB {
                            cfg.blob_quota_bytes
                        } else {
                            cfg.mailbox_quota_bytes
                        },
                        max_count: requests.then_some(cfg.requests_quota_count),
                        mailbox_bytes: all.bytes,
                        mailbox_count: all.count,
                        mailbox_max_bytes: cfg.mailbox_quota_bytes,
                    }))
                })
            }
            Body::ReadBlob(r) => s
                .read_blob(&r.mailbox, &r.hash, now)
                .map(|message| ResponseBody::ReadBlob(ReadBlobResponse { message })),
            b @ (Body::GetSwarm(_) | Body::Roster(_) | Body::RosterPage(_)) => {
                return Handled::Forward(b);
            }
        };
        Handled::Respond(match result {
            Ok(body) => Response::ok(now, body),
            Err(e) => Response::error(now, Status::from(&e)),
        })
    }

    /// Applies replication items from a swarm peer, each checked like a client's write
    /// (mailbox placement, size, expiry bounds, content hash recomputed). One status per item.
    pub fn apply_peer_items(&self, items: Vec<Item>, now: UnixMillis) -> Vec<Status> {
        let now = self.node_time(now);
        let mut statuses = vec![Status::Ok; items.len()];
        let mut accepted = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if let Some(refusal) = self.placement.check(item.mailbox(), Method::Store, now) {
                // A member still syncing may hold what it is sent; anything else is refused.
                match refusal.result {
                    Err(Status::Syncing) => {}
                    Err(s) => {
                        statuses[i] = s;
                        continue;
                    }
                    Ok(_) => {}
                }
            }
            accepted.push(item);
            slots.push(i);
        }
        for (i, r) in slots.into_iter().zip(self.store.apply_items(accepted, now)) {
            if let Err(e) = r {
                statuses[i] = Status::from(&e);
            }
        }
        statuses
    }

    /// Re-runs a waiting retrieve at time `now` (after its watch fired or its wait ran out).
    pub fn resume(&self, pending: PendingRetrieve, now: UnixMillis) -> Response {
        let now = self.node_time(now);
        match self.store.retrieve(&pending.query, now) {
            Ok(page) => Response::ok(
                now,
                ResponseBody::Retrieve(RetrieveResponse {
                    messages: page.messages,
                    more: page.more,
                }),
            ),
            Err(e) => Response::error(now, Status::from(&e)),
        }
    }

    /// Handles a request to completion on this thread, blocking through a long-poll wait.
    /// Requests the node answers itself get `Unsupported`.
    pub fn handle_blocking(&self, bytes: &[u8], clock: &dyn Clock) -> Response {
        match self.handle(bytes, clock.now()) {
            Handled::Respond(r) | Handled::Replicate { response: r, .. } => r,
            Handled::Store(p) => p.wait(),
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

/// A write answered now and pushed to the other members afterwards.
fn background(
    now: UnixMillis,
    result: Result<ResponseBody, crate::StoreError>,
    items: Vec<Item>,
) -> Handled {
    match result {
        Ok(body) => Handled::Replicate {
            response: Response::ok(now, body),
            items,
        },
        Err(e) => Handled::Respond(Response::error(now, Status::from(&e))),
    }
}
