//! Whole-network tests: an authority and six nodes as real processes, real RocksDB, real QUIC on
//! loopback; requests built with `allium-onion` travel client → guard → middle → exit →
//! destination.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use allium_client::onion::{Hop, OnionClient, SendError};
use allium_link::{Deadlines, Kind, Link, LinkLimits, Status};
use allium_node::devnet::Devnet;
use allium_onion::{ErrorCode, SizeClass};
use allium_proto::network::NetworkFile;
use allium_proto::roster::Roster;
use allium_proto::storage::{RetrieveRequest, StoreRequest};
use allium_proto::{Body, Mailbox, Method, NodeId, Request, Response, ResponseBody};
use allium_tests::onion::{client, hops, now_ms, path_for};
use allium_tests::{formed, serial, start_devnet};
use ed25519_dalek::SigningKey;

const T: Duration = Duration::from_secs(10);
const NODES: usize = 6;

async fn store(
    client: &OnionClient,
    path: &[Hop],
    mailbox: &Mailbox,
    data: &[u8],
) -> Result<Response, SendError> {
    let request = Request::unsigned(Body::Store(StoreRequest {
        mailbox: *mailbox,
        namespace: 0,
        ttl_ms: 3_600_000,
        data: data.to_vec(),
        token: None,
    }))
    .encode();
    let body = client.send(path, &request, SizeClass::Small, T).await?;
    Ok(Response::decode(&body, Method::Store).unwrap())
}

async fn retrieve(client: &OnionClient, path: &[Hop], key: &SigningKey) -> Vec<Vec<u8>> {
    let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());
    let destination = NodeId::from_bytes(path.last().unwrap().identity.to_bytes());
    let request = Request::signed(
        Body::Retrieve(RetrieveRequest {
            mailbox,
            namespace: 0,
            after: None,
            limit: None,
            wait_ms: None,
        }),
        key,
        &destination,
        now_ms(),
    )
    .encode();
    let body = client
        .send(path, &request, SizeClass::Large, T)
        .await
        .unwrap();
    match Response::decode(&body, Method::Retrieve).unwrap().result {
        Ok(ResponseBody::Retrieve(r)) => r.messages.into_iter().map(|m| m.data).collect(),
        other => panic!("retrieve failed: {other:?}"),
    }
}

/// A formed network (an authority and `NODES` nodes, every node holding the roster), a client,
/// and a mailbox. Bind `_serial` and `_dir` first when destructuring, so they are dropped last:
/// the node processes stop before their folder goes and before the next test starts.
struct Fixture {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    net: Devnet,
    network: NetworkFile,
    c: OnionClient,
    roster: Roster,
    key: SigningKey,
    mailbox: Mailbox,
}

async fn fixture(seed: u8) -> Fixture {
    let serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet(dir.path(), NODES).unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    let roster = formed(&mut net, c.pool(), &network, NODES + 1, T * 3).await;
    let key = mailbox_key(seed);
    let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());
    Fixture {
        _serial: serial,
        _dir: dir,
        net,
        network,
        c,
        roster,
        key,
        mailbox,
    }
}

fn mailbox_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_over_four_layers_is_retrieved_over_four_layers() {
    let Fixture {
        _serial,
        _dir,
        net: _net,
        network,
        c,
        roster,
        key,
        mailbox,
    } = fixture(1).await;
    assert!(
        roster.swarms().len() >= 2,
        "six nodes and an authority make at least two swarms"
    );

    let path = path_for(&roster, &mailbox, &[]);
    let stored = store(
        &c,
        &hops(&network, &path),
        &mailbox,
        b"hello through four layers",
    )
    .await
    .unwrap();
    assert!(
        matches!(stored.result, Ok(ResponseBody::Store(_))),
        "{stored:?}"
    );

    // Another path (the relays in reverse order), same destination.
    let mut second = path.clone();
    second[..3].reverse();
    let got = retrieve(&c, &hops(&network, &second), &key).await;
    assert_eq!(got, vec![b"hello through four layers".to_vec()]);
}

/// Onion §6.1, storage §1: a signed retrieve whose answer is too long for the small reply class
/// is answered with the messages that fit and `more = true`, and paging gets the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrieve_in_the_small_reply_class_pages_instead_of_failing() {
    let Fixture {
        _serial,
        _dir,
        net: _net,
        network,
        c,
        roster,
        key,
        mailbox,
    } = fixture(7).await;
    let path = hops(&network, &path_for(&roster, &mailbox, &[]));
    let sent: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 512]).collect();
    for data in &sent {
        let stored = store(&c, &path, &mailbox, data).await.unwrap();
        assert!(
            matches!(stored.result, Ok(ResponseBody::Store(_))),
            "{stored:?}"
        );
    }
    let destination = NodeId::from_bytes(path.last().unwrap().identity.to_bytes());
    let mut after = None;
    let mut got = Vec::new();
    let mut pages = Vec::new();
    loop {
        let request = Request::signed(
            Body::Retrieve(RetrieveRequest {
                mailbox,
                namespace: 0,
                after,
                limit: None,
                wait_ms: None,
            }),
            &key,
            &destination,
            now_ms(),
        )
        .encode();
        let body = c
            .send(&path, &request, SizeClass::Small, T)
            .await
            .expect("answered in the small class, not refused with error 5");
        let Ok(ResponseBody::Retrieve(page)) =
            Response::decode(&body, Method::Retrieve).unwrap().result
        else {
            panic!("retrieve refused");
        };
        pages.push(page.messages.len());
        after = page.messages.last().map(|m| m.key()).or(after);
        got.extend(page.messages.into_iter().map(|m| m.data));
        if !page.more {
            break;
        }
        assert!(pages.len() < 10, "pages {pages:?}");
    }
    assert_eq!(pages, [7, 3], "pages of a small reply");
    got.sort();
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_presenting_the_wrong_key_is_refused() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let net = start_devnet(dir.path(), 1).unwrap();
    let link = Link::bind_client("127.0.0.1:0".parse().unwrap(), LinkLimits::default()).unwrap();
    // Dial node-1's address expecting the authority's key.
    let err = link
        .connect(net.nodes[1].addr, &net.nodes[0].identity)
        .await
        .unwrap_err();
    assert!(
        matches!(err, allium_link::LinkError::Connect { .. }),
        "{err}"
    );
    // With the right key it works.
    link.connect(net.nodes[1].addr, &net.nodes[1].identity)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_is_reported_by_the_hop_before_it() {
    let Fixture {
        _serial,
        _dir,
        mut net,
        network,
        c,
        roster,
        key: _,
        mailbox,
    } = fixture(2).await;
    let path = path_for(&roster, &mailbox, &[]);
    let hops = hops(&network, &path);
    // Warm every link of the path, then kill the middle relay.
    store(&c, &hops, &mailbox, b"before").await.unwrap();
    let middle = net
        .nodes
        .iter()
        .position(|n| n.identity == path[1].identity)
        .unwrap();
    net.kill_node(middle).unwrap();

    let err = store(&c, &hops, &mailbox, b"after").await.unwrap_err();
    match err {
        SendError::Hop { hop: 0, code } => assert!(
            matches!(
                code,
                ErrorCode::NextHopUnreachable
                    | ErrorCode::NextHopTimeout
                    | ErrorCode::NextHopRejected
            ),
            "{code:?}"
        ),
        other => panic!("expected the guard to report its next hop, got {other}"),
    }
    assert_eq!(
        err_failed_hop(&store(&c, &hops, &mailbox, b"again").await),
        Some(1)
    );
}

fn err_failed_hop(r: &Result<Response, SendError>) -> Option<usize> {
    r.as_ref().err().and_then(SendError::failed_hop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_keys_its_messages_and_its_place() {
    let Fixture {
        _serial,
        _dir,
        mut net,
        network,
        c,
        roster,
        key,
        mailbox,
    } = fixture(3).await;
    let path = path_for(&roster, &mailbox, &[]);
    store(
        &c,
        &hops(&network, &path),
        &mailbox,
        b"kept across a restart",
    )
    .await
    .unwrap();

    let dest = path[3];
    let i = net
        .nodes
        .iter()
        .position(|n| n.identity == dest.identity)
        .unwrap();
    assert!(
        net.stop_node(i).unwrap(),
        "SIGTERM must end the node cleanly"
    );
    net.start_node(i).unwrap();

    // Same identity and swarm after the restart; new onion keys, as the replay filters of
    // the earlier run are gone (onion.md §8).
    let started = std::time::Instant::now();
    let (after, entry) = loop {
        let after = formed(&mut net, c.pool(), &network, NODES + 1, T * 3).await;
        let entry = after
            .node(&dest.identity.node_id())
            .expect("still in the roster")
            .clone();
        if entry.onion_keys != dest.onion_keys {
            break (after, entry);
        }
        assert!(
            started.elapsed() < T * 3,
            "no new onion keys were published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(entry.swarm, dest.swarm);
    // The message is still there.
    let got = retrieve(&c, &hops(&network, &path_for(&after, &mailbox, &[])), &key).await;
    assert_eq!(got, vec![b"kept across a restart".to_vec()]);
}

fn drop_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("allium_packets_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn replays(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("allium_replays_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_replayed_packets_are_dropped_and_counted() {
    let Fixture {
        _serial,
        _dir,
        net,
        network,
        c,
        roster,
        key: _,
        mailbox,
    } = fixture(4).await;
    let path = path_for(&roster, &mailbox, &[]);
    let hops = hops(&network, &path);
    let guard = net
        .nodes
        .iter()
        .find(|n| n.identity == path[0].identity)
        .unwrap();
    let before = allium_node::http::get(guard.metrics, "/metrics")
        .await
        .unwrap()
        .1;

    let link = Link::bind_client("127.0.0.1:0".parse().unwrap(), LinkLimits::default()).unwrap();
    let conn = link.connect(guard.addr, &guard.identity).await.unwrap();
    let mut garbage = vec![0u8; SizeClass::Small.size()];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut garbage);
    garbage[0] = 1;
    let (status, _) = allium_link::request(&conn, Kind::Onion, &garbage, Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!(status, Status::Rejected);
    let (status, _) =
        allium_link::request(&conn, Kind::Onion, &garbage[..100], Deadlines::uniform(T))
            .await
            .unwrap();
    assert_eq!(status, Status::Rejected);

    // A valid packet, then the same bytes again.
    let request = Request::unsigned(Body::Store(StoreRequest {
        mailbox,
        namespace: 0,
        ttl_ms: 60_000,
        data: b"once".to_vec(),
        token: None,
    }))
    .encode();
    let onion_hops: Vec<allium_onion::PathHop> = hops
        .iter()
        .map(|h| allium_onion::PathHop {
            node: h.identity.node_id(),
            epoch: h.epoch,
            onion_key: h.onion_key,
        })
        .collect();
    let built = allium_onion::build_packet(
        &mut rand_core::OsRng,
        &onion_hops,
        &request,
        SizeClass::Small,
        SizeClass::Small,
    )
    .unwrap();
    let (status, _) =
        allium_link::request(&conn, Kind::Onion, &built.packet, Deadlines::uniform(T))
            .await
            .unwrap();
    assert_eq!(status, Status::Ok);
    let (status, _) =
        allium_link::request(&conn, Kind::Onion, &built.packet, Deadlines::uniform(T))
            .await
            .unwrap();
    assert_eq!(status, Status::Rejected, "a replay must be dropped");

    let after = allium_node::http::get(guard.metrics, "/metrics")
        .await
        .unwrap()
        .1;
    assert_eq!(drop_count(&after) - drop_count(&before), 3);
    assert_eq!(replays(&after) - replays(&before), 1);
    // Our anonymous connection counts as a client; the authority's probes as a peer.
    assert!(gauge(&after, "allium_client_connections") >= 1, "{after}");
    assert!(gauge(&after, "allium_peers_connected") >= 1, "{after}");
    // The node keeps serving.
    store(&c, &hops, &mailbox, b"still serving").await.unwrap();
}

/// Stopping a formed network whose nodes are idle waits for no drain period: the long-lived
/// connections between nodes hold no request, so no node logs that requests were still in
/// flight after the drain, and every node exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_idle_nodes_waits_for_no_drain() {
    let Fixture {
        _serial,
        _dir,
        mut net,
        ..
    } = fixture(8).await;
    let started = std::time::Instant::now();
    let stopped = net.stop_all();
    let took = started.elapsed();
    for s in &stopped {
        assert!(s.clean, "{}: {}", s.name, s.outcome);
    }
    let waited: Vec<&str> = net
        .nodes
        .iter()
        .filter(|n| {
            std::fs::read_to_string(&n.log)
                .unwrap()
                .contains("requests still in flight after the drain period")
        })
        .map(|n| n.name.as_str())
        .collect();
    assert!(waited.is_empty(), "waited the whole drain: {waited:?}");
    eprintln!("{} idle nodes stopped in {took:?}", stopped.len());
}
