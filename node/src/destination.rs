//! The destination: executes a storage request delivered by an onion packet against this node's
//! mailbox store, including long-poll waits, and answers `get_swarm`, `roster` and `roster_page`
//! from the roster.
//!
//! Only work that touches the disk runs on the runtime's blocking threads (decoding and checking
//! a request with its reads, and re-running a long-poll's query). Waiting holds no thread: a
//! store awaits its synced write and a parked long-poll awaits its wake-up on the async runtime,
//! so many listeners never starve stores (whitepaper storage §4.2, BAD_INPUTS 29).

use std::sync::Arc;
use std::time::Instant;

use allium_proto::storage::{
    GetSwarmResponse, RetrieveResponse, RosterPageResponse, RosterResponse,
};
use allium_proto::{Body, Clock, Response, ResponseBody, Status, UnixMillis};
use allium_swarm::{Handled, Service, stage};
use tokio_util::sync::CancellationToken;

use crate::clock::NodeClock;
use crate::directory::RosterState;
use crate::metrics::{Metrics, StorageMethod, StorageResult};
use crate::onion_service::Destination;
use crate::replication::Replicator;

/// Executes storage requests on this node.
#[derive(Debug)]
pub struct StoreDestination {
    service: Arc<Service>,
    replicator: Arc<Replicator>,
    roster: Arc<RosterState>,
    metrics: Metrics,
    /// Fires when the node begins to stop: parked long-polls are answered at once.
    stopping: CancellationToken,
}

impl StoreDestination {
    /// A destination over `service` whose writes reach the swarm through `replicator`,
    /// answering swarm questions from `roster`. Once `stopping` fires, every long-poll parked
    /// here (and any that would park) is answered at once with no message.
    pub fn new(
        service: Arc<Service>,
        replicator: Arc<Replicator>,
        roster: Arc<RosterState>,
        metrics: Metrics,
        stopping: CancellationToken,
    ) -> Self {
        StoreDestination {
            service,
            replicator,
            roster,
            metrics,
            stopping,
        }
    }

    fn answer_locally(&self, body: Body, now: UnixMillis) -> Response {
        let held = self.roster.current();
        let result = match (body, held) {
            (Body::GetSwarm(r), Some(h)) => match h.roster().swarm_for(&r.mailbox) {
                Some(swarm_id) => Ok(ResponseBody::GetSwarm(GetSwarmResponse {
                    swarm_id,
                    members: h
                        .roster()
                        .members_for(&r.mailbox)
                        .iter()
                        .map(|n| n.identity.node_id())
                        .collect(),
                })),
                None => Err(Status::Busy),
            },
            (Body::Roster(r), Some(h)) => {
                let version = h.roster().version();
                let newer = r.known_version.is_none_or(|k| k < version);
                Ok(ResponseBody::Roster(RosterResponse {
                    version,
                    roster: (newer && h.signed().len() <= allium_proto::storage::MAX_ROSTER_BYTES)
                        .then(|| h.signed().to_vec()),
                }))
            }
            // One page copied out of the held bytes, which this request shares (an `Arc`): the
            // answer is one page whatever the roster's size (storage §4.6).
            (Body::RosterPage(r), Some(h)) => Ok(ResponseBody::RosterPage(
                RosterPageResponse::answer(h.roster().version(), h.signed(), &r),
            )),
            (_, None) => Err(Status::Busy),
            (_, Some(_)) => Err(Status::Unsupported),
        };
        match result {
            Ok(body) => Response::ok(now, body),
            Err(status) => Response::error(now, status),
        }
    }
}

fn method_of(response: &Response) -> StorageMethod {
    match &response.result {
        Ok(body) => StorageMethod::from(body.method()),
        Err(_) => StorageMethod::Unknown,
    }
}

impl Destination for StoreDestination {
    async fn execute(&self, request: Vec<u8>, max_response: usize) -> Option<Vec<u8>> {
        let started = Instant::now();
        let service = self.service.clone();
        // Reads, signature checks and queueing for the writer may block: off the async workers.
        let handled =
            tokio::task::spawn_blocking(move || service.handle(&request, NodeClock.now()))
                .await
                .ok()?;
        let mut parked = false;
        let response = match handled {
            Handled::Respond(r) => r,
            Handled::Replicate { response, items } => {
                self.replicator.spread(items);
                response
            }
            Handled::Store(pending) => {
                stage::mark("store.queued");
                self.replicator.acknowledge_store(pending).await
            }
            Handled::Wait(pending) => {
                parked = true;
                let stopped = {
                    let _parked = self.metrics.longpoll_parked();
                    // Woken by a store or ended by the timer; either way the query runs again.
                    tokio::select! {
                        _ = tokio::time::timeout(pending.wait, pending.watch.changed()) => false,
                        () = self.stopping.cancelled() => true,
                    }
                };
                if stopped {
                    // The node is stopping: answer now, empty, as a poll whose wait ran out
                    // may be (storage §4.2), rather than hold the drain for up to a minute —
                    // or run one more read per parked poll while it stops. The client's cursor
                    // is unchanged, so it misses nothing when it polls again.
                    Response::ok(
                        self.service.node_time(NodeClock.now()),
                        ResponseBody::Retrieve(RetrieveResponse {
                            messages: Vec::new(),
                            more: false,
                        }),
                    )
                } else {
                    stage::mark("poll.woken");
                    let service = self.service.clone();
                    let answer = tokio::task::spawn_blocking(move || {
                        service.resume(pending, NodeClock.now())
                    })
                    .await
                    .ok()?;
                    stage::mark("poll.read");
                    answer
                }
            }
            Handled::Forward(body) => {
                self.answer_locally(body, self.service.node_time(NodeClock.now()))
            }
        };
        let result = match &response.result {
            Ok(_) => StorageResult::Ok,
            Err(status) => StorageResult::from(*status),
        };
        self.metrics
            .storage_request(method_of(&response), result, started.elapsed());
        // A retrieve page is cut to the reply class the client chose (fewer messages, `more`);
        // any other answer too long for it is refused, and the client retries with a larger one.
        let encoded = response.encode_within(max_response);
        if parked {
            stage::mark("poll.answered");
        }
        encoded
    }
}
