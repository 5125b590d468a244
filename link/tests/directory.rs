//! Roster refresh over the link (whitepaper roster.md §6, §6.3): a node holding a version gets a
//! delta, falls back to the whole roster when the delta is refused or the source does not know
//! delta requests, and asks for the whole roster when it holds none.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_link::directory::{Refreshed, refresh_roster};
use allium_link::{Handler, Kind, Link, LinkLimits, Peer, Pool, Source, Status, TlsIdentity};
use allium_onion::{Epoch, IdentityKeypair, IdentityPublicKey, OnionKeyCert, OnionSecretKey};
use allium_proto::network::{Authority, NetworkFile, NetworkParams};
use allium_proto::roster::{
    DirectoryRequest, DirectoryResponse, NodeEntry, Offered, Roster, RosterHolder,
};
use tokio::sync::oneshot;

/// How a test directory source misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Honest,
    /// Rejects probes and delta requests, as software before them did.
    Old,
    /// Flips a byte of every delta it sends.
    BadDelta,
}

struct Directory {
    holder: RosterHolder,
    mode: Mode,
    seen: Mutex<Vec<DirectoryRequest>>,
}

impl Handler for Directory {
    type ConnectionGuard = ();

    fn is_peer(&self, _identity: &IdentityPublicKey) -> bool {
        false
    }

    fn connected(&self, _peer: &Peer) {}

    async fn handle(&self, _peer: &Peer, kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        let Ok(request) = DirectoryRequest::decode(&body) else {
            return (Status::Rejected, Vec::new());
        };
        if kind != Kind::Directory {
            return (Status::Rejected, Vec::new());
        }
        self.seen.lock().unwrap().push(request.clone());
        let answer = match request {
            DirectoryRequest::GetRoster { have_version } => self.holder.answer(have_version),
            DirectoryRequest::Probe | DirectoryRequest::GetDelta { .. }
                if self.mode == Mode::Old =>
            {
                return (Status::Rejected, Vec::new());
            }
            DirectoryRequest::Probe => self.holder.answer_probe(),
            DirectoryRequest::GetDelta { from } => match self.holder.answer_delta(from) {
                DirectoryResponse::Delta(mut d) if self.mode == Mode::BadDelta => {
                    let last = d.len() - 1;
                    d[last] ^= 1;
                    DirectoryResponse::Delta(d)
                }
                other => other,
            },
            DirectoryRequest::Register(_) => DirectoryResponse::Refused("not here".into()),
        };
        (Status::Ok, answer.encode())
    }
}

fn kp(seed: u8) -> IdentityKeypair {
    IdentityKeypair::from_seed(&[seed; 32])
}

fn network(authority: &IdentityKeypair) -> NetworkFile {
    NetworkFile::new(
        "test-net",
        vec![Authority {
            identity: authority.public(),
            address: "127.0.0.1:4433".parse().unwrap(),
        }],
        NetworkParams {
            swarm_size: 3,
            min_ttl_secs: 10,
            max_ttl_secs: 1_209_600,
            epoch_secs: 3600,
            allow_same_subnet: true,
            roster_threshold: 1,
        },
    )
    .unwrap()
}

/// Version `version` of a roster of the nodes with seeds `seeds`, signed by `authority`.
fn signed(authority: &IdentityKeypair, version: u64, seeds: &[u8]) -> Vec<u8> {
    let nodes = seeds
        .iter()
        .map(|s| {
            let id = kp(*s);
            let onion = OnionSecretKey::from_bytes(Epoch(100), &[s ^ 0x55; 32]);
            NodeEntry {
                identity: id.public(),
                addresses: vec![format!("10.0.0.{s}:4433").parse().unwrap()],
                onion_keys: vec![OnionKeyCert::sign(&id, &onion)],
                swarm: 0,
                software: "test".into(),
            }
        })
        .collect();
    Roster::new("test-net", version, 1_700_000_000 + version, 3, nodes)
        .unwrap()
        .sign(&[authority])
        .unwrap()
        .encode()
}

struct Server {
    source: Source,
    directory: Arc<Directory>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn serve(directory: Directory) -> Server {
    let identity = kp(0x77);
    let tls = Arc::new(TlsIdentity::new(&identity).unwrap());
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let link = Link::bind_node(loopback, tls, LinkLimits::default()).unwrap();
    let addr = link.local_addr().unwrap();
    let directory = Arc::new(directory);
    let (stop, rx) = oneshot::channel::<()>();
    let handler = directory.clone();
    let task = tokio::spawn(async move {
        let stopped = async {
            let _ = rx.await;
        };
        link.serve(handler, stopped, Duration::from_secs(1)).await;
    });
    Server {
        source: Source {
            identity: identity.public(),
            addr,
        },
        directory,
        stop,
        task,
    }
}

fn pool() -> Pool {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let link = Link::bind_client(loopback, LinkLimits::default()).unwrap();
    Pool::new(Arc::new(link), Duration::from_secs(5))
}

/// A source holding v2 after v1 (v2: node 3 leaves, node 4 joins).
fn source(authority: &IdentityKeypair, mode: Mode) -> Server {
    let holder = RosterHolder::new(network(authority));
    holder.offer(&signed(authority, 1, &[1, 2, 3])).unwrap();
    holder.offer(&signed(authority, 2, &[1, 2, 4])).unwrap();
    serve(Directory {
        holder,
        mode,
        seen: Mutex::new(Vec::new()),
    })
}

async fn refresh_from(mode: Mode, held: Option<u64>) -> (Refreshed, Vec<DirectoryRequest>) {
    let authority = kp(0xa0);
    let server = source(&authority, mode);
    let node = RosterHolder::new(network(&authority));
    if let Some(v) = held {
        let seeds: &[u8] = if v == 1 { &[1, 2, 3] } else { &[1, 2, 4] };
        node.offer(&signed(&authority, v, seeds)).unwrap();
    }
    let pool = pool();
    let timeout = Duration::from_secs(10);
    let refreshed = refresh_roster(&pool, &[server.source], timeout, &node)
        .await
        .unwrap();
    // Whatever the path, the node ends with the source's signed roster, byte for byte.
    assert_eq!(
        node.current().unwrap().signed(),
        signed(&authority, 2, &[1, 2, 4]).as_slice()
    );
    let seen = server.directory.seen.lock().unwrap().clone();
    let _ = server.stop.send(());
    server.task.await.unwrap();
    (refreshed, seen)
}

#[tokio::test]
async fn a_node_holding_a_version_gets_a_delta() {
    let (refreshed, seen) = refresh_from(Mode::Honest, Some(1)).await;
    assert_eq!(refreshed, Refreshed::Offered(Offered::Updated));
    assert_eq!(seen, vec![DirectoryRequest::GetDelta { from: 1 }]);
}

#[tokio::test]
async fn a_node_holding_the_latest_version_hears_not_modified() {
    let (refreshed, seen) = refresh_from(Mode::Honest, Some(2)).await;
    assert_eq!(refreshed, Refreshed::NotModified);
    assert_eq!(seen, vec![DirectoryRequest::GetDelta { from: 2 }]);
}

#[tokio::test]
async fn a_node_holding_nothing_gets_the_whole_roster() {
    let (refreshed, seen) = refresh_from(Mode::Honest, None).await;
    assert_eq!(refreshed, Refreshed::Offered(Offered::Updated));
    assert_eq!(
        seen,
        vec![DirectoryRequest::GetRoster { have_version: None }]
    );
}

#[tokio::test]
async fn a_refused_delta_falls_back_to_the_whole_roster() {
    let (refreshed, seen) = refresh_from(Mode::BadDelta, Some(1)).await;
    assert_eq!(refreshed, Refreshed::Offered(Offered::Updated));
    assert_eq!(
        seen,
        vec![
            DirectoryRequest::GetDelta { from: 1 },
            DirectoryRequest::GetRoster {
                have_version: Some(1)
            }
        ]
    );
}

#[tokio::test]
async fn a_source_without_deltas_is_asked_for_the_whole_roster() {
    let (refreshed, seen) = refresh_from(Mode::Old, Some(1)).await;
    assert_eq!(refreshed, Refreshed::Offered(Offered::Updated));
    assert_eq!(
        seen,
        vec![
            DirectoryRequest::GetDelta { from: 1 },
            DirectoryRequest::GetRoster {
                have_version: Some(1)
            }
        ]
    );
}
