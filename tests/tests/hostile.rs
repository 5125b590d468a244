//! Hostile inputs against real node processes: replays across a restart, certificates whose key
//! is not in the roster, peer frames and memory floods from clients, and a local process holding
//! the per-address connection cap. Each test prints what it measures (memory) and asserts
//! behaviour only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allium_client::onion::{SendError, epoch_at};
use allium_link::{Deadlines, Kind, Link, LinkLimits, Status, TlsIdentity};
use allium_node::devnet::{Devnet, DevnetNode};
use allium_onion::{IdentityKeypair, IdentityPublicKey, SizeClass};
use allium_proto::network::NetworkFile;
use allium_proto::roster::{DirectoryRequest, DirectoryResponse, NodeEntry};
use allium_proto::storage::{DeleteAllRequest, Method, Response, StoreRequest};
use allium_proto::{Body, Mailbox, Request};
use allium_tests::onion::{client, hops, now_ms, path_for};
use allium_tests::{DevnetOptions, formed, serial, start_devnet_with, test_options};
use ed25519_dalek::SigningKey;

const T: Duration = Duration::from_secs(10);

fn anonymous() -> Link {
    Link::bind_client("127.0.0.1:0".parse().unwrap(), LinkLimits::default()).unwrap()
}

fn index_of(net: &Devnet, id: &IdentityPublicKey) -> usize {
    net.nodes.iter().position(|n| n.identity == *id).unwrap()
}

async fn metrics(node: &DevnetNode) -> String {
    allium_node::http::get(node.metrics, "/metrics")
        .await
        .unwrap()
        .1
}

/// The sum of every sample whose name (with labels) starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Resident memory of a process, KiB: (VmRSS, RssAnon), from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn mailbox_of(key: &SigningKey) -> Mailbox {
    Mailbox::from_bytes(key.verifying_key().to_bytes())
}

fn store_request(mailbox: &Mailbox, data: &[u8]) -> Vec<u8> {
    Request::unsigned(Body::Store(StoreRequest {
        mailbox: *mailbox,
        namespace: 0,
        ttl_ms: 3_600_000,
        data: data.to_vec(),
        token: None,
    }))
    .encode()
}

fn status_of(response: &[u8], method: Method) -> allium_proto::Status {
    match Response::decode(response, method).unwrap().result {
        Ok(_) => allium_proto::Status::Ok,
        Err(s) => s,
    }
}

/// Item 1: what a node refused as a replay before SIGKILL, it refuses after its restart: a raw
/// onion packet, and a signed `delete_all` inside its time window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_refused_before_a_sigkill_are_refused_after_the_restart() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet_with(
        dir.path(),
        &DevnetOptions {
            nodes: 1,
            ..test_options()
        },
    )
    .unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    let roster = formed(&mut net, c.pool(), &network, 2, T * 6).await;
    let victim = 1;
    let id = net.nodes[victim].identity;
    let entry = roster.node(&id.node_id()).unwrap().clone();
    // The node is its own destination: one layer, sent straight to it.
    let path = hops(&network, &[&entry]);
    let key = SigningKey::from_bytes(&[31; 32]);
    let mailbox = mailbox_of(&key);
    let built = allium_onion::build_packet(
        &mut rand_core::OsRng,
        &[allium_onion::PathHop {
            node: id.node_id(),
            epoch: path[0].epoch,
            onion_key: path[0].onion_key,
        }],
        &store_request(&mailbox, b"once"),
        SizeClass::Small,
        SizeClass::Small,
    )
    .unwrap();
    let raw = |net: &Devnet| {
        let (addr, identity) = (net.nodes[victim].addr, net.nodes[victim].identity);
        let packet = built.packet.clone();
        async move {
            let link = anonymous();
            let conn = link.connect(addr, &identity).await.unwrap();
            allium_link::request(&conn, Kind::Onion, &packet, Deadlines::uniform(T))
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(raw(&net).await, Status::Ok);
    assert_eq!(raw(&net).await, Status::Rejected, "a replay in one run");
    let wipe = Request::signed(
        Body::DeleteAll(DeleteAllRequest {
            mailbox,
            namespace: 0,
        }),
        &key,
        &id.node_id(),
        now_ms(),
    )
    .encode();
    let answer = c.send(&path, &wipe, SizeClass::Small, T).await.unwrap();
    assert_eq!(
        status_of(&answer, Method::DeleteAll),
        allium_proto::Status::Ok
    );
    let answer = c.send(&path, &wipe, SizeClass::Small, T).await.unwrap();
    assert_eq!(
        status_of(&answer, Method::DeleteAll),
        allium_proto::Status::Replayed
    );

    net.kill_node(victim).unwrap();
    net.start_node(victim).unwrap();
    assert_eq!(
        raw(&net).await,
        Status::Rejected,
        "a packet refused as a replay before the restart peeled after it"
    );
    // The restarted node publishes new onion keys; through them, the signed request is refused
    // as signed before the node's start (its answer carries the node's time).
    let started = Instant::now();
    let fresh = loop {
        if let Some(r) = allium_node::devnet::fetch_roster(c.pool(), &network).await {
            if let Some(n) = r.node(&id.node_id()) {
                if n.onion_keys != entry.onion_keys {
                    break n.clone();
                }
            }
        }
        assert!(
            started.elapsed() < T * 3,
            "the restarted node published no new onion keys"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A new client: the old one's pooled connection went with the killed process.
    let answer = client()
        .send(&hops(&network, &[&fresh]), &wipe, SizeClass::Small, T)
        .await
        .unwrap();
    assert_eq!(
        status_of(&answer, Method::DeleteAll),
        allium_proto::Status::ClockSkew,
        "a signed delete_all refused before the restart ran after it"
    );
}

/// Item 2: header-valid packets with random payloads, ten times a node's replay filter design
/// load, then honest packets: none may be dropped as replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_past_the_replay_filter_design_load_does_not_drop_honest_packets() {
    const DESIGN: u64 = 300;
    const JUNK: usize = 3_000;
    const HONEST: usize = 200;
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet_with(
        dir.path(),
        &DevnetOptions {
            nodes: 1,
            replay_packets_per_epoch: DESIGN,
            ..test_options()
        },
    )
    .unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    let roster = formed(&mut net, c.pool(), &network, 2, T * 6).await;
    let node = &net.nodes[1];
    let entry = roster.node(&node.identity.node_id()).unwrap();
    let hop = &hops(&network, &[entry])[0];
    let path = [allium_onion::PathHop {
        node: node.identity.node_id(),
        epoch: hop.epoch,
        onion_key: hop.onion_key,
    }];
    let mailbox = mailbox_of(&SigningKey::from_bytes(&[33; 32]));
    // Packets are built first (each costs the sender one X25519, as it costs the node one).
    let build = |junk: bool, i: usize| {
        let mut built = allium_onion::build_packet(
            &mut rand_core::OsRng,
            &path,
            &store_request(&mailbox, format!("honest {i}").as_bytes()),
            SizeClass::Small,
            SizeClass::Small,
        )
        .unwrap()
        .packet;
        if junk {
            // The header stays valid; the payload's tag does not.
            let last = built.len() - 1;
            built[last] ^= 0x55;
        }
        built
    };
    let junk: Vec<Vec<u8>> = (0..JUNK).map(|i| build(true, i)).collect();
    let honest: Vec<Vec<u8>> = (0..HONEST).map(|i| build(false, i)).collect();
    let link = anonymous();
    let conn = link.connect(node.addr, &node.identity).await.unwrap();
    let send_all = |packets: Vec<Vec<u8>>| {
        let conn = conn.clone();
        async move {
            let mut ok = 0usize;
            for chunk in packets.chunks(16) {
                let mut tasks = tokio::task::JoinSet::new();
                for p in chunk {
                    let (conn, p) = (conn.clone(), p.clone());
                    tasks.spawn(async move {
                        allium_link::request(&conn, Kind::Onion, &p, Deadlines::uniform(T))
                            .await
                            .map(|(s, _)| s)
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    if matches!(r.unwrap(), Ok(Status::Ok)) {
                        ok += 1;
                    }
                }
            }
            ok
        }
    };
    let junk_ok = send_all(junk).await;
    assert_eq!(junk_ok, 0, "a packet with a broken payload was accepted");
    let honest_ok = send_all(honest).await;
    let m = metrics(node).await;
    println!(
        "{JUNK} junk packets against a filter designed for {DESIGN}: {} of {HONEST} honest \
         packets dropped as replays; replay drops {}, generations {}, rolls {}",
        HONEST - honest_ok,
        sample(&m, "allium_replays_total"),
        sample(&m, "allium_replay_filter_generations"),
        sample(&m, "allium_replay_filter_rolls_total"),
    );
    // The generations together keep false positives under 1 % (onion.md §7): about 2 of 200
    // expected. 12 or more happens with probability under 2e-6 (Poisson tail at mean 2), while
    // a saturated single filter drops nearly all 200.
    assert!(
        HONEST - honest_ok < 12,
        "{} honest packets dropped",
        HONEST - honest_ok
    );
}

/// Item 3: a connection with a self-signed certificate whose key is not in the roster is a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_in_the_roster_is_a_client_for_limits_metrics_and_kinds() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet_with(
        dir.path(),
        &DevnetOptions {
            nodes: 1,
            client_requests_per_sec: 2,
            client_request_burst: 10,
            ..test_options()
        },
    )
    .unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    formed(&mut net, c.pool(), &network, 2, T * 6).await;
    let node = &net.nodes[1];
    let before = metrics(node).await;

    let stranger = IdentityKeypair::generate(&mut rand_core::OsRng);
    let link = Link::bind_node(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(TlsIdentity::new(&stranger).unwrap()),
        LinkLimits::default(),
    )
    .unwrap();
    let conn = link.connect(node.addr, &node.identity).await.unwrap();
    let get = DirectoryRequest::GetRoster { have_version: None }.encode();
    let mut refused = 0;
    for _ in 0..40 {
        let (status, _) = allium_link::request(&conn, Kind::Directory, &get, Deadlines::uniform(T))
            .await
            .unwrap();
        if status == Status::Rejected {
            refused += 1;
        }
    }
    let during = metrics(node).await;
    println!(
        "40 requests at once from a stranger's certificate: {refused} refused by the rate limit; \
         peers {} -> {}, clients {} -> {}",
        sample(&before, "allium_peers_connected "),
        sample(&during, "allium_peers_connected "),
        sample(&before, "allium_client_connections "),
        sample(&during, "allium_client_connections "),
    );
    assert!(refused > 0, "the client rate limit did not apply");
    assert_eq!(
        sample(&during, "allium_peers_connected "),
        sample(&before, "allium_peers_connected "),
        "a stranger was counted as a peer"
    );
    assert!(
        sample(&during, "allium_client_connections ")
            > sample(&before, "allium_client_connections ")
    );
    // A peer frame is refused at its head: the stream is reset, no answer comes.
    let peer = allium_link::request(&conn, Kind::Peer, b"\xa0", Deadlines::uniform(T)).await;
    assert!(
        peer.is_err(),
        "a peer frame from a stranger was read: {peer:?}"
    );
}

/// Item 4: what one client address can make a node hold in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_large_frames_leaves_the_node_under_256_mib() {
    const FLOOD: Duration = Duration::from_secs(15);
    const LIMIT_KIB: u64 = 256 * 1024;
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet_with(
        dir.path(),
        &DevnetOptions {
            nodes: 1,
            ..test_options()
        },
    )
    .unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    formed(&mut net, c.pool(), &network, 2, T * 6).await;
    let node = &net.nodes[1];
    let pid = node.pid().unwrap();
    let (addr, identity) = (node.addr, node.identity);
    let before = rss_kib(pid);

    let link = anonymous();
    // As many connections as the node takes from this address, each with as many streams as it
    // grants, each declaring a large body and sending most of it, again and again.
    let mut conns = Vec::new();
    for _ in 0..32 {
        match tokio::time::timeout(T, link.connect(addr, &identity)).await {
            Ok(Ok(conn)) => conns.push(conn),
            _ => break,
        }
    }
    let until = Instant::now() + FLOOD;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (ci, conn) in conns.iter().enumerate() {
        for s in 0..256usize {
            let conn = conn.clone();
            let sent = sent.clone();
            tasks.spawn(async move {
                let chunk = vec![0x5au8; 16 * 1024];
                let mut round = 0usize;
                while Instant::now() < until {
                    round += 1;
                    let (kind, len) = match (ci + s + round) % 3 {
                        0 => (Kind::Peer, 1024 * 1024),
                        1 => (Kind::Onion, 65536),
                        _ => (Kind::Directory, 65536),
                    };
                    let Ok(Ok((mut tx, _rx))) =
                        tokio::time::timeout(Duration::from_secs(1), conn.open_bi()).await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let mut head = vec![kind.code()];
                    head.extend_from_slice(&(len as u32).to_be_bytes());
                    let mut written = 0;
                    let mut ok = matches!(
                        tokio::time::timeout(Duration::from_secs(1), tx.write_all(&head)).await,
                        Ok(Ok(()))
                    );
                    while ok && written + chunk.len() < len && Instant::now() < until {
                        ok = matches!(
                            tokio::time::timeout(Duration::from_secs(1), tx.write_all(&chunk))
                                .await,
                            Ok(Ok(()))
                        );
                        if ok {
                            written += chunk.len();
                            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    }
                    // Never finish: the node holds what it read until it gives up on the stream.
                    if ok {
                        let _ = tokio::time::timeout(
                            until.saturating_duration_since(Instant::now()),
                            tx.stopped(),
                        )
                        .await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    }
    let mut peak = before;
    while Instant::now() < until {
        let now = rss_kib(pid);
        if now.0 > peak.0 {
            peak = now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while tasks.join_next().await.is_some() {}
    for conn in &conns {
        conn.close(0u32.into(), b"done");
    }
    drop(conns);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = rss_kib(pid);
    println!(
        "node RSS (VmRSS / RssAnon, MiB): before {:.0} / {:.0}, peak {:.0} / {:.0}, \
         8 s after the connections closed {:.0} / {:.0}; client sent {:.0} MiB",
        before.0 as f64 / 1024.0,
        before.1 as f64 / 1024.0,
        peak.0 as f64 / 1024.0,
        peak.1 as f64 / 1024.0,
        after.0 as f64 / 1024.0,
        after.1 as f64 / 1024.0,
        sent.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
    );
    assert!(peak.0 < LIMIT_KIB, "peak RSS {} KiB", peak.0);
    assert!(after.0 < LIMIT_KIB, "RSS after the flood {} KiB", after.0);
    // The node still serves, and refuses a peer frame from a client at its head.
    let fresh = anonymous();
    let conn = fresh.connect(addr, &identity).await.unwrap();
    let get = DirectoryRequest::GetRoster { have_version: None }.encode();
    let (status, _) = allium_link::request(&conn, Kind::Directory, &get, Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!(status, Status::Ok);
    let peer = allium_link::request(&conn, Kind::Peer, b"\xa0", Deadlines::uniform(T)).await;
    assert!(
        peer.is_err(),
        "a peer frame from a client was read: {peer:?}"
    );
    // A frame with bytes after its declared body is refused, not answered.
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let mut frame = vec![Kind::Directory.code()];
    frame.extend_from_slice(&(get.len() as u32).to_be_bytes());
    frame.extend_from_slice(&get);
    frame.extend_from_slice(b"trailing");
    tx.write_all(&frame).await.unwrap();
    tx.finish().unwrap();
    let answer = tokio::time::timeout(T, async {
        allium_link::frame::read_accepted(&mut rx).await?;
        allium_link::frame::read_response(&mut rx).await
    })
    .await
    .unwrap();
    assert!(
        answer.is_err(),
        "a frame with trailing bytes was answered: {answer:?}"
    );
}

/// Item 8a: connections from other nodes do not count against the per-address client cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_process_holding_the_address_cap_does_not_lock_nodes_out() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet_with(
        dir.path(),
        &DevnetOptions {
            nodes: 4,
            max_connections_per_ip: Some(4),
            ..test_options()
        },
    )
    .unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    let roster = formed(&mut net, c.pool(), &network, 5, T * 6).await;
    let key = SigningKey::from_bytes(&[24; 32]);
    let mailbox = mailbox_of(&key);
    let authority = net.nodes[0].identity.node_id();
    let path = path_for(&roster, &mailbox, &[authority]);
    let path_ids: Vec<IdentityPublicKey> = path.iter().map(|n| n.identity).collect();
    // The middle relay restarts (its links are gone) and a local process takes every client
    // connection it allows from this address before the other nodes dial it again.
    let middle = index_of(&net, &path[1].identity);
    net.kill_node(middle).unwrap();
    net.start_node(middle).unwrap();
    let link = anonymous();
    let mut held = Vec::new();
    let get = DirectoryRequest::GetRoster { have_version: None }.encode();
    for _ in 0..8 {
        let admitted = async {
            let conn = link
                .connect(net.nodes[middle].addr, &net.nodes[middle].identity)
                .await
                .ok()?;
            // A handshake completes before a client over the cap is closed: only an answer
            // shows the connection was admitted.
            allium_link::request(&conn, Kind::Directory, &get, Deadlines::uniform(T))
                .await
                .ok()?;
            Some(conn)
        };
        if let Ok(Some(conn)) = tokio::time::timeout(Duration::from_secs(3), admitted).await {
            held.push(conn);
        }
    }
    println!("held {} client connections to the middle relay", held.len());
    assert!(held.len() <= 4, "the per-address cap did not hold");
    // The restarted relay has new onion keys (onion.md §8): the path is resolved again from
    // the roster that lists them.
    let middle_id = net.nodes[middle].identity.node_id();
    let old_keys = path[1].onion_keys.clone();
    let started = Instant::now();
    let fresh = loop {
        if let Some(r) = allium_node::devnet::fetch_roster(c.pool(), &network).await {
            if r.node(&middle_id).is_some_and(|n| n.onion_keys != old_keys) {
                break r;
            }
        }
        assert!(
            started.elapsed() < T * 3,
            "the restarted relay's new keys were not published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let nodes: Vec<&NodeEntry> = path_ids
        .iter()
        .map(|id| fresh.node(&id.node_id()).unwrap())
        .collect();
    let hops = hops(&network, &nodes);

    // The guard must still reach the middle relay; the authority must still probe it.
    let started = Instant::now();
    let mut outcome = None;
    while started.elapsed() < Duration::from_secs(30) {
        match c
            .send(
                &hops,
                &store_request(&mailbox, b"through"),
                SizeClass::Small,
                T,
            )
            .await
        {
            Ok(_) => {
                outcome = Some(Ok(()));
                break;
            }
            Err(e) => outcome = Some(Err(e)),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outcome: Option<Result<(), SendError>> = outcome;
    assert!(
        matches!(outcome, Some(Ok(()))),
        "no store passed the middle relay within 30 s: {outcome:?}"
    );
    drop(held);
}

/// Item 5: 300 validly signed descriptors of unreachable nodes, re-sent every 2 s, while a node
/// of the roster is killed: the authority must drop it as fast as without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_registrations_do_not_keep_a_dead_node_in_the_roster() {
    const FAKES: usize = 300;
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet_with(
        dir.path(),
        &DevnetOptions {
            nodes: 3,
            ..test_options()
        },
    )
    .unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    formed(&mut net, c.pool(), &network, 4, T * 6).await;
    // Every fake points at a socket that takes packets and never answers: each probe costs the
    // authority its whole time-out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = allium_node::directory::SelfDescription {
        addresses: vec![silent.local_addr().unwrap()],
        software: "fake".into(),
    };
    let fakes: Vec<IdentityKeypair> = (0..FAKES)
        .map(|_| IdentityKeypair::generate(&mut rand_core::OsRng))
        .collect();
    let authority = (net.nodes[0].addr, net.nodes[0].identity);
    let link = anonymous();
    let conn = link.connect(authority.0, &authority.1).await.unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let epoch_secs = network.params.epoch_secs;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (conn, accepted, stop) = (conn.clone(), accepted.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut now_accepted = 0;
                let epoch = epoch_at(epoch_secs, now_ms() / 1000);
                for fake in &fakes {
                    let onion =
                        allium_onion::OnionSecretKey::generate(epoch, &mut rand_core::OsRng);
                    let cert = allium_onion::OnionKeyCert::sign(fake, &onion);
                    let signed = allium_node::directory::descriptor(fake, &me, vec![cert]).unwrap();
                    let request = DirectoryRequest::Register(signed).encode();
                    if let Ok((Status::Ok, answer)) = allium_link::request(
                        &conn,
                        Kind::Directory,
                        &request,
                        Deadlines::uniform(T),
                    )
                    .await
                    {
                        if matches!(
                            DirectoryResponse::decode(&answer),
                            Ok(DirectoryResponse::Registered { .. })
                        ) {
                            now_accepted += 1;
                        }
                    }
                }
                accepted.store(now_accepted, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    // Two rounds of fakes in the registry, then a node of the roster dies.
    let started = Instant::now();
    while accepted.load(Ordering::Relaxed) == 0 {
        assert!(started.elapsed() < T * 3, "no fake descriptor was accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = 3;
    let gone = net.nodes[victim].identity.node_id();
    net.kill_node(victim).unwrap();
    let killed = Instant::now();
    let limit = Duration::from_secs(60);
    let mut dropped_after = None;
    while killed.elapsed() < limit {
        if let Some(r) = allium_node::devnet::fetch_roster(c.pool(), &network).await {
            if r.node(&gone).is_none() {
                dropped_after = Some(killed.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flood.await;
    println!(
        "{FAKES} fake descriptors re-sent every 2 s ({} accepted in the last pass): the killed \
         node left the roster after {}",
        accepted.load(Ordering::Relaxed),
        dropped_after.map_or(format!("more than {} s", limit.as_secs()), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        )),
    );
    let dropped_after = dropped_after.expect("the dead node stayed in the roster");
    // Without fakes: a descriptor lifetime (5 s) and a publish interval; at most a probe
    // time-out more.
    assert!(
        dropped_after < Duration::from_secs(15),
        "took {dropped_after:?}"
    );
}

/// Item 8: an authority stopped for longer than a descriptor's lifetime, then resumed, publishes
/// no roster that drops a live node (it used to publish three versions within a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_resumed_after_a_long_pause_drops_no_live_node() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet_with(
        dir.path(),
        &DevnetOptions {
            nodes: 3,
            ..test_options()
        },
    )
    .unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    let c = client();
    let before = formed(&mut net, c.pool(), &network, 4, T * 6).await;
    let pid = net.nodes[0].pid().unwrap().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    // Longer than a descriptor's lifetime (5 s), while the nodes keep trying to register.
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(8)).await;
    signal("-CONT");
    let resumed = Instant::now();
    let mut seen = std::collections::BTreeMap::new();
    while resumed.elapsed() < Duration::from_secs(6) {
        if let Some(r) = allium_node::devnet::fetch_roster(c.pool(), &network).await {
            seen.entry(r.version()).or_insert(r.nodes().len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = seen.keys().next_back().copied().unwrap_or(before.version());
    println!(
        "roster version {} before the pause; after it, versions seen with their node counts: \
         {seen:?}",
        before.version()
    );
    assert!(
        seen.values().all(|&n| n == before.nodes().len()),
        "a roster after the pause left out a live node: {seen:?}"
    );
    assert!(
        last <= before.version() + 1,
        "{} versions published after the pause",
        last - before.version()
    );
}
