//! The roster through the onion (roster.md §4.4, storage.md §4.6).
//!
//! * On a devnet of real node processes: a client holding a roster refreshes it through the
//!   onion after the network grows, and no node sees a directory request from a client.
//! * A client's paged fetch of a 2,000-node roster (12 pages) from a node's real destination
//!   (the shipping `StoreDestination` over a RocksDB store and the node's roster state), a roster
//!   that changes mid-fetch, and the serving node's memory while 32 clients fetch at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // test code; the measured figures are printed

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use allium_client::net::{Net, Timing};
use allium_client::pages::{self, Fetched};
use allium_link::{Deadlines, Link, LinkLimits, Pool};
use allium_node::config::ReplicationConfig;
use allium_node::destination::StoreDestination;
use allium_node::devnet::{Devnet, DevnetNode};
use allium_node::directory::RosterState;
use allium_node::metrics::Metrics;
use allium_node::onion_service::Destination;
use allium_node::replication::{Membership, Replicator};
use allium_node::shutdown::ShutdownSignal;
use allium_onion::{Epoch, IdentityKeypair, OnionKeyCert, OnionSecretKey, SizeClass};
use allium_proto::assign::assign;
use allium_proto::network::NetworkFile;
use allium_proto::roster::{Descriptor, NodeEntry, Roster, RosterHolder};
use allium_proto::storage::{PageOf, RosterPageRequest, roster_pages};
use allium_proto::{Body, Method, NodeId, Request, Response, ResponseBody};
use allium_swarm::{Service, ServiceConfig, Store, StoreConfig};
use allium_tests::onion::hops;
use allium_tests::{serial, start_devnet, wait_for_roster};
use futures_util::StreamExt;
use futures_util::future::join_all;
use rand_core::OsRng;

const T: Duration = Duration::from_secs(30);
const NODES: usize = 4;

async fn metrics(node: &DevnetNode) -> String {
    allium_node::http::get(node.metrics, "/metrics")
        .await
        .unwrap()
        .1
}

/// The sum over every running node of the samples whose name (with labels) starts with `prefix`.
async fn total(net: &mut Devnet, prefix: &str) -> f64 {
    let mut sum = 0.0;
    for i in 0..net.nodes.len() {
        if !net.nodes[i].is_running() {
            continue;
        }
        sum += metrics(&net.nodes[i])
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

const CLIENT_DIRECTORY: &str = "allium_directory_requests_total{from=\"client\"}";
const PAGES_SERVED: &str = "allium_storage_requests_total{method=\"roster_page\",result=\"ok\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_a_roster_refreshes_it_through_the_onion() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_devnet(&dir.path().join("net"), NODES).unwrap();
    let network = NetworkFile::load(&net.network_file).unwrap();
    {
        let c = allium_client::onion::OnionClient::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let roster = wait_for_roster(c.pool(), &network, NODES + 1, T)
            .await
            .expect("roster formed");
        assert!(net.wait_for_roster_version(roster.version(), T).await);
        c.pool().link().close_within(Duration::from_secs(1)).await;
    }

    // First run: no roster, so the bootstrap asks a directory directly.
    let before = total(&mut net, CLIENT_DIRECTORY).await;
    let first = Net::new(network.clone(), None, None, &[], 0, Timing::default()).unwrap();
    let v1 = first.refresh_roster().await.unwrap();
    let cached = first.roster().unwrap().signed().to_vec();
    assert!(
        total(&mut net, CLIENT_DIRECTORY).await > before,
        "the bootstrap is a directory request"
    );
    first
        .onion()
        .pool()
        .link()
        .close_within(Duration::from_secs(1))
        .await;

    // The network grows; every node adopts the new roster.
    net.add_node().unwrap();
    let until = Instant::now() + T * 2;
    loop {
        let (holding, running) = net.nodes_holding(v1 + 1).await;
        if holding == running {
            break;
        }
        assert!(Instant::now() < until, "the new roster did not spread");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let directory = total(&mut net, CLIENT_DIRECTORY).await;
    let served = total(&mut net, PAGES_SERVED).await;

    // A later run, from the cached roster: through the onion, and nowhere else.
    let later = Net::new(
        network.clone(),
        Some(&cached),
        None,
        &[],
        0,
        Timing::default(),
    )
    .unwrap();
    let started = Instant::now();
    let v2 = later.refresh_roster().await.unwrap();
    let changed = started.elapsed();
    assert!(v2 > v1, "a newer roster came: {v1} → {v2}");
    assert_eq!(later.roster().unwrap().roster().nodes().len(), NODES + 2);
    let started = Instant::now();
    assert_eq!(later.refresh_roster().await.unwrap(), v2, "not modified");
    let unchanged = started.elapsed();
    assert_eq!(
        total(&mut net, CLIENT_DIRECTORY).await,
        directory,
        "a client holding a roster asked no directory"
    );
    let pages = total(&mut net, PAGES_SERVED).await - served;
    assert!(pages >= 2.0, "{pages} roster pages served");
    println!(
        "roster_page through the onion on a {}-node devnet: newer roster (1 page) {:.1} ms, \
         not modified {:.1} ms",
        NODES + 2,
        changed.as_secs_f64() * 1e3,
        unchanged.as_secs_f64() * 1e3
    );

    // Measured: what the pages of a 2,000-node roster (12) cost on the wire, sent as the client
    // sends them: four at a time through one path. Replies are padded to the large class, so a
    // page of any roster costs what this one does.
    let held = later.roster().unwrap();
    let entries: Vec<&NodeEntry> = held.roster().nodes().iter().take(4).collect();
    let path = hops(&network, &entries);
    let request = Request::unsigned(Body::RosterPage(RosterPageRequest {
        page: 0,
        of: PageOf::Held,
    }))
    .encode();
    let (mut one, mut twelve) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let started = Instant::now();
        later
            .onion()
            .send(&path, &request, SizeClass::Large, T)
            .await
            .unwrap();
        one.push(started.elapsed());
        let started = Instant::now();
        let answers: Vec<_> = futures_util::stream::iter(0..12)
            .map(|_| later.onion().send(&path, &request, SizeClass::Large, T))
            .buffered(pages::PAGES_AT_ONCE)
            .collect()
            .await;
        assert!(answers.iter().all(Result::is_ok));
        twelve.push(started.elapsed());
    }
    one.sort();
    twelve.sort();
    println!(
        "through one onion path: one roster_page round trip, median of 7: {:.1} ms; 12 pages \
         four at a time: {:.1} ms",
        one[3].as_secs_f64() * 1e3,
        twelve[3].as_secs_f64() * 1e3
    );
    later
        .onion()
        .pool()
        .link()
        .close_within(Duration::from_secs(1))
        .await;
    net.stop();
}

// ---- A 2,000-node roster from a node's real destination ----

const NOW: u64 = 1_700_000_000;

fn network_of(authority: &IdentityKeypair) -> NetworkFile {
    let id = hex::encode(authority.public().as_bytes());
    NetworkFile::from_toml(&format!(
        "name = \"allium-pages\"\n[[authority]]\nidentity = \"{id}\"\naddress = \"127.0.0.1:4433\"\n\
         [params]\nswarm_size = 5\nmin_ttl_secs = 10\nmax_ttl_secs = 1209600\nepoch_secs = 3600\n\
         allow_same_subnet = false\nroster_threshold = 1\n"
    ))
    .unwrap()
}

/// `n` nodes with two certified onion keys each, in swarms of 5 (as the roster bench builds).
fn nodes(n: usize) -> Vec<NodeEntry> {
    let descriptors: Vec<Descriptor> = (0..n)
        .map(|i| {
            let id = IdentityKeypair::generate(&mut OsRng);
            let onion_keys = (0..2)
                .map(|e| {
                    OnionKeyCert::sign(&id, &OnionSecretKey::generate(Epoch(100 + e), &mut OsRng))
                })
                .collect();
            Descriptor {
                identity: id.public(),
                addresses: vec![
                    format!("10.{}.{}.1:4433", i / 250, i % 250)
                        .parse()
                        .unwrap(),
                ],
                onion_keys,
                software: "allium-node/0.1.0".into(),
                published_at: NOW,
            }
        })
        .collect();
    let keys: Vec<NodeId> = descriptors.iter().map(|d| d.identity.node_id()).collect();
    let swarms = assign(&BTreeMap::new(), &keys, 5);
    let mut nodes: Vec<NodeEntry> = descriptors
        .into_iter()
        .map(|d| {
            let swarm = swarms[&d.identity.node_id()];
            NodeEntry::from_descriptor(d, swarm)
        })
        .collect();
    nodes.sort_by(|a, b| a.identity.as_bytes().cmp(b.identity.as_bytes()));
    nodes
}

fn signed(authority: &IdentityKeypair, version: u64, nodes: Vec<NodeEntry>) -> Vec<u8> {
    let roster = Roster::new("allium-pages", version, NOW + version, 5, nodes).unwrap();
    roster.sign(&[authority]).unwrap().encode()
}

/// A node's destination as the daemon builds it, over a RocksDB store in `dir`, holding
/// `roster`.
fn destination(
    dir: &std::path::Path,
    network: NetworkFile,
    roster: &[u8],
) -> (StoreDestination, Arc<RosterState>) {
    let metrics = Metrics::new();
    let state = Arc::new(RosterState::new(network, None, metrics.clone()));
    state.offer(roster).unwrap();
    let me = NodeId::from_bytes([9; 32]);
    let store = Arc::new(Store::open(dir, StoreConfig::default()).unwrap());
    let membership = Arc::new(Membership::new(me, state.clone(), metrics.clone()));
    let service = Arc::new(Service::with_placement(
        store,
        ServiceConfig::new(me),
        membership.clone(),
    ));
    let link =
        Arc::new(Link::bind_client("127.0.0.1:0".parse().unwrap(), LinkLimits::default()).unwrap());
    let pool = Arc::new(Pool::new(link, Duration::from_secs(1)));
    let replicator = Arc::new(Replicator::new(
        membership,
        service.clone(),
        pool,
        metrics.clone(),
        ReplicationConfig::default(),
        Deadlines::uniform(Duration::from_secs(1)),
    ));
    let dest = StoreDestination::new(
        service,
        replicator,
        state.clone(),
        metrics,
        ShutdownSignal::new().token().clone(),
    );
    (dest, state)
}

/// One `roster_page` request as the destination receives it from the last relay, answered
/// within the large reply the client asks for.
async fn ask(dest: &StoreDestination, request: RosterPageRequest) -> Result<Response, String> {
    let bytes = Request::unsigned(Body::RosterPage(request)).encode();
    let max = allium_onion::max_response(SizeClass::Large);
    let answer = dest.execute(bytes, max).await.ok_or("refused")?;
    Response::decode(&answer, Method::RosterPage).map_err(|e| e.to_string())
}

/// Peak resident memory of this process so far, KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2000_node_roster_is_fetched_in_pages_from_a_node_and_verified() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let authority = IdentityKeypair::generate(&mut OsRng);
    let network = network_of(&authority);
    let all = nodes(2_000);
    let v1 = signed(&authority, 1, all[..1_990].to_vec());
    let v2 = signed(&authority, 2, all.clone());
    let v3 = signed(&authority, 3, all[10..].to_vec());
    let (dest, state) = destination(dir.path(), network.clone(), &v2);

    // The client holds version 1 (1,990 nodes) and fetches version 2 (2,000 nodes).
    let client = RosterHolder::new(network.clone());
    client.offer(&v1).unwrap();
    let started = Instant::now();
    let fetched: Fetched = pages::fetch_roster(Some(1), |r| ask(&dest, r))
        .await
        .unwrap()
        .expect("a newer roster");
    let fetch = started.elapsed();
    assert_eq!(fetched.signed, v2);
    assert_eq!(fetched.requests as u64, roster_pages(v2.len() as u64));
    assert_eq!(fetched.requests, 12, "{} bytes", v2.len());
    let started = Instant::now();
    client.offer(&fetched.signed).unwrap();
    let verify = started.elapsed();
    assert_eq!(client.version(), Some(2));
    assert_eq!(client.current().unwrap().roster().nodes().len(), 2_000);

    // Not modified: one answer without a page.
    assert_eq!(
        pages::fetch_roster(Some(2), |r| ask(&dest, r))
            .await
            .unwrap(),
        None
    );

    // The node adopts version 3 after serving page 2 of version 2: the client notices and
    // fetches version 3 whole.
    let asked = AtomicUsize::new(0);
    let fetched = pages::fetch_roster(Some(1), |r| {
        if asked.fetch_add(1, Ordering::SeqCst) == 2 {
            state.offer(&v3).unwrap();
        }
        ask(&dest, r)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!((fetched.version, &fetched.signed), (3, &v3));
    assert!(fetched.requests > 12, "{} requests", fetched.requests);

    // The serving node's memory with 32 clients' whole fetches in flight at once: 384 page
    // requests, every answer dropped as the onion reply carries it away. The roster is shared
    // by every request; what grows is one page per request in flight.
    let clients = 32u32;
    let pages_each = roster_pages(v3.len() as u64) as u32;
    let base = peak_rss_kib();
    let started = Instant::now();
    let dest = &dest;
    let answers = join_all((0..clients * pages_each).map(|i| async move {
        let request = RosterPageRequest {
            page: i % pages_each,
            of: PageOf::Version(3),
        };
        match ask(dest, request).await.unwrap().result {
            Ok(ResponseBody::RosterPage(r)) => r.bytes.map_or(0, |b| b.len()),
            other => panic!("{other:?}"),
        }
    }))
    .await;
    let served = started.elapsed();
    assert_eq!(
        answers.iter().sum::<usize>(),
        clients as usize * v3.len(),
        "every page of every fetch"
    );
    let grown = peak_rss_kib().saturating_sub(base);
    println!(
        "2,000-node roster: {} bytes, {} pages; fetch from a node's destination {:.1} ms, verify \
         {:.1} ms; {} page requests at once ({clients} clients × {pages_each} pages): {:.0} ms, \
         peak RSS +{grown} KiB (the roster is {} KiB)",
        v2.len(),
        roster_pages(v2.len() as u64),
        fetch.as_secs_f64() * 1e3,
        verify.as_secs_f64() * 1e3,
        clients * pages_each,
        served.as_secs_f64() * 1e3,
        v3.len() / 1024,
    );
    // Far below one copy of the roster per request (384 × 690 KiB = 259 MiB).
    assert!(
        grown < 128 * 1024,
        "serving grew the process by {grown} KiB"
    );
}
