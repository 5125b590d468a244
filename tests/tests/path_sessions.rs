//! Path sessions (whitepaper onion.md §12) against real node processes: a path opened by one
//! onion packet carries later requests as session packets, which every hop on it peels and
//! counts; a replayed session packet is refused; a hop that restarted has forgotten the
//! session and drops its packets, which the client sees as an error of the hop before it; a
//! client's long-polls of one mailbox go on one session, and the chunk uploads of one
//! attachment on one session per lane.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use allium_client::attach::{CHUNK, TransferConfig, Transfers, download, upload};
use allium_client::net::{Net, Timing};
use allium_client::onion::{Hop, OnionClient};
use allium_link::{Deadlines, Kind, Link, LinkLimits, Status};
use allium_node::devnet::{Devnet, DevnetNode};
use allium_onion::{BuiltPacket, ErrorCode, PathSession, SizeClass};
use allium_proto::network::NetworkFile;
use allium_proto::roster::Roster;
use allium_proto::storage::Mailbox;
use allium_proto::{Body, Method, Request, Response, ResponseBody};
use allium_tests::onion::{client, hops};
use allium_tests::{formed, serial, start_devnet};
use ed25519_dalek::SigningKey;

const T: Duration = Duration::from_secs(10);

/// The sum of every sample of node `node` whose name (with labels) starts with `prefix`.
async fn sample(node: &DevnetNode, prefix: &str) -> u64 {
    let page = allium_node::http::get(node.metrics, "/metrics")
        .await
        .unwrap()
        .1;
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn info_answered(body: &[u8]) {
    match Response::decode(body, Method::Info).unwrap().result {
        Ok(ResponseBody::Info(_)) => {}
        other => panic!("not an info answer: {other:?}"),
    }
}

/// A devnet of four nodes and an authority in `dir`, once formed: the network, its file, a
/// client and the roster.
async fn devnet(dir: &Path) -> (Devnet, NetworkFile, OnionClient, Roster) {
    let mut net = start_devnet(dir, 4).unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    let roster = formed(&mut net, c.pool(), &network, 5, T * 6).await;
    (net, network, c, roster)
}

/// The next packet of `session`, carrying `request` in the small class both ways.
fn next_packet(session: &mut PathSession, request: &[u8]) -> BuiltPacket {
    session
        .build(
            &mut rand_core::OsRng,
            request,
            SizeClass::Small,
            SizeClass::Small,
        )
        .unwrap()
}

/// Session packets peeled by all the nodes of `net` together.
async fn session_packets_peeled(net: &Devnet) -> u64 {
    let mut peeled = 0;
    for node in &net.nodes {
        peeled += sample(node, "allium_path_session_packets_total").await;
    }
    peeled
}

fn index_of(net: &Devnet, hop: &Hop) -> usize {
    net.nodes
        .iter()
        .position(|n| n.identity == hop.identity)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_session_carries_requests_refuses_replays_and_ends_at_a_restart() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut net, network, c, roster) = devnet(dir.path()).await;
    // Two relays and a destination, none of them the authority.
    let entries: Vec<_> = net
        .nodes
        .iter()
        .filter(|n| n.name != "authority")
        .take(3)
        .map(|n| roster.node(&n.identity.node_id()).unwrap())
        .collect();
    let path = hops(&network, &entries);
    let on_path: Vec<usize> = path.iter().map(|h| index_of(&net, h)).collect();
    let info = Request::unsigned(Body::Info).encode();

    let (body, mut session) = c
        .send_opening(&path, &info, SizeClass::Small, T)
        .await
        .unwrap();
    info_answered(&body);
    for &i in &on_path {
        assert_eq!(
            sample(&net.nodes[i], "allium_path_sessions ").await,
            1,
            "{} keeps the session",
            net.nodes[i].name
        );
    }
    const PACKETS: u64 = 3;
    for _ in 0..PACKETS {
        let built = next_packet(&mut session, &info);
        assert_eq!(built.packet[0], 2, "a session packet");
        info_answered(&c.send_built(&path[0], built, T).await.unwrap());
    }
    for &i in &on_path {
        assert_eq!(
            sample(&net.nodes[i], "allium_path_session_packets_total").await,
            PACKETS,
            "{} peeled every session packet",
            net.nodes[i].name
        );
    }

    // The same packet twice over a raw link: the guard's window refuses the second.
    let built = next_packet(&mut session, &info);
    let link = Link::bind_client("127.0.0.1:0".parse().unwrap(), LinkLimits::default()).unwrap();
    let conn = link.connect(path[0].addr, &path[0].identity).await.unwrap();
    let raw = || allium_link::request(&conn, Kind::Onion, &built.packet, Deadlines::uniform(T));
    assert_eq!(raw().await.unwrap().0, Status::Ok);
    assert_eq!(raw().await.unwrap().0, Status::Rejected, "a replay");
    let guard = &net.nodes[on_path[0]];
    assert_eq!(
        sample(guard, "allium_packets_dropped_total{reason=\"replay\"}").await,
        1
    );

    // The middle relay restarts: it has forgotten the session, and the guard reports that its
    // next hop rejected the packet.
    net.kill_node(on_path[1]).unwrap();
    net.start_node(on_path[1]).unwrap();
    let restarted = &net.nodes[on_path[1]];
    let started = Instant::now();
    while allium_node::http::get(restarted.metrics, "/metrics")
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < T * 3,
            "the restarted node serves no metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = loop {
        let built = next_packet(&mut session, &info);
        match c.send_built(&path[0], built, T).await {
            Err(allium_client::onion::SendError::Hop {
                hop: 0,
                code: ErrorCode::NextHopUnreachable | ErrorCode::NextHopTimeout,
            }) if started.elapsed() < T * 3 => {
                // The restarted node is not listening yet, or the guard's connection to the
                // killed process has not timed out yet.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other,
        }
    };
    match failed {
        Err(allium_client::onion::SendError::Hop { hop: 0, code }) => {
            assert_eq!(code, ErrorCode::NextHopRejected)
        }
        other => panic!("a forgotten session was not refused: {other:?}"),
    }
    // At least the refused packet (one the guard gave up on may have arrived too).
    assert!(
        sample(
            &net.nodes[on_path[1]],
            "allium_packets_dropped_total{reason=\"unknown_session\"}"
        )
        .await
            >= 1,
        "the restarted node counted no packet of a session it does not keep"
    );
    net.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_reads_of_one_mailbox_go_on_one_path_session() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut net, network, _, _) = devnet(dir.path()).await;
    let reader = Net::new(network.clone(), None, None, &[], 0, Timing::default()).unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());

    const READS: u64 = 4;
    for _ in 0..READS {
        let fetched = reader
            .fetch_for(&mailbox, &key, None, Duration::ZERO, None)
            .await
            .unwrap();
        assert!(fetched.messages.is_empty());
    }
    let peeled = session_packets_peeled(&net).await;
    // The first read opened the session (an onion packet, 4 layers); every later one went as a
    // session packet peeled at each of its 4 hops.
    assert_eq!(peeled, (READS - 1) * 4);
    net.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachments_chunk_uploads_go_on_a_path_session_per_lane() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut net, network, _, _) = devnet(&dir.path().join("net")).await;
    let sender = Net::new(network.clone(), None, None, &[], 0, Timing::default()).unwrap();
    let key = SigningKey::from_bytes(&[8; 32]);
    let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());

    const CHUNKS: u64 = 8;
    const LANES: u64 = 2;
    let bytes: Vec<u8> = (0..CHUNKS as usize * CHUNK - 100)
        .map(|i| (i % 251) as u8)
        .collect();
    let file = dir.path().join("file.bin");
    std::fs::write(&file, &bytes).unwrap();
    std::fs::create_dir(dir.path().join("sender")).unwrap();
    let transfers = Transfers::open(&dir.path().join("sender")).unwrap();
    let cfg = TransferConfig {
        paths: LANES as usize,
    };
    let up = upload(
        &sender,
        &key,
        mailbox,
        &transfers,
        &[1; 32],
        &file,
        "application/octet-stream",
        cfg,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(u64::from(up.progress.transferred), CHUNKS);
    let peeled = session_packets_peeled(&net).await;
    // Each lane's first chunk opened its session (a second chunk of the lane may have left
    // before that answer came and opened one too); the others went as session packets, peeled
    // at each of their 4 hops.
    assert_eq!(peeled % 4, 0, "{peeled}");
    let sessions = peeled / 4;
    assert!(
        (CHUNKS - 2 * LANES..=CHUNKS - LANES).contains(&sessions),
        "{sessions} of {CHUNKS} chunks went as session packets"
    );

    // And the chunks are the file's: a reader gets it back.
    let reader = Net::new(network, None, None, &[], 0, Timing::default()).unwrap();
    let inbox = dir.path().join("reader");
    std::fs::create_dir(&inbox).unwrap();
    let (got, _) = download(
        &reader,
        &Transfers::open(&inbox).unwrap(),
        &up.file,
        &inbox,
        TransferConfig::default(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(got).unwrap(), bytes);
    net.stop();
}
