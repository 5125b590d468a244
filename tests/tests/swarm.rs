//! Swarm durability with real processes (whitepaper storage §9): an authority and six nodes,
//! real RocksDB and QUIC on loopback. Members are killed, stopped, restarted and added while
//! messages are stored; every acknowledged message must end up on every live member of its
//! swarm, and a deleted one must not come back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_client::onion::{Hop, OnionClient, SendError, epoch_at, hop};
use allium_node::devnet::Devnet;
use allium_onion::{IdentityPublicKey, SizeClass};
use allium_proto::network::NetworkFile;
use allium_proto::roster::Roster;
use allium_proto::storage::{DeleteRequest, GetSwarmRequest, RetrieveRequest, StoreRequest};
use allium_proto::{Body, Mailbox, Method, NodeId, Request, Response, ResponseBody, Status};
use allium_tests::{serial, start_devnet, wait_for_roster};
use ed25519_dalek::SigningKey;

const T: Duration = Duration::from_secs(10);
const NODES: usize = 6;
/// How long convergence may take before a test fails (anti-entropy runs every second).
const CONVERGE: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn mailbox(k: &SigningKey) -> Mailbox {
    Mailbox::from_bytes(k.verifying_key().to_bytes())
}

struct Net {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    net: Devnet,
    network: NetworkFile,
    c: Arc<OnionClient>,
    // Last, so the processes stop before their folder goes.
    _dir: tempfile::TempDir,
}

impl Net {
    async fn start() -> Net {
        let serial = serial().await;
        let dir = tempfile::tempdir().unwrap();
        let mut net = start_devnet(dir.path(), NODES).unwrap();
        let network = NetworkFile::load(&net.network_file).unwrap();
        let c = Arc::new(OnionClient::new("127.0.0.1:0".parse().unwrap()).unwrap());
        let roster = wait_for_roster(c.pool(), &network, NODES + 1, T * 3)
            .await
            .expect("roster formed");
        assert!(net.wait_for_roster_version(roster.version(), T * 3).await);
        Net {
            _serial: serial,
            net,
            network,
            c,
            _dir: dir,
        }
    }

    /// The authority's current roster.
    async fn roster(&self) -> Roster {
        wait_for_roster(self.c.pool(), &self.network, 1, T)
            .await
            .expect("the authority serves a roster")
    }

    fn index(&self, id: &IdentityPublicKey) -> usize {
        self.net
            .nodes
            .iter()
            .position(|n| n.identity == *id)
            .expect("a devnet node")
    }

    /// Devnet indices of the members of `mb`'s swarm, authority excluded (it keeps publishing).
    fn members(&self, roster: &Roster, mb: &Mailbox) -> Vec<usize> {
        roster
            .members_for(mb)
            .iter()
            .map(|n| self.index(&n.identity))
            .collect()
    }

    /// The one-hop path to node `i`: the client talks to the destination directly.
    fn hop(&self, roster: &Roster, i: usize) -> Hop {
        let entry = roster
            .node(&self.net.nodes[i].identity.node_id())
            .expect("node in roster");
        hop(
            entry,
            epoch_at(self.network.params.epoch_secs, now_ms() / 1000),
        )
        .unwrap()
    }
}

async fn call(
    c: &OnionClient,
    to: &Hop,
    request: Vec<u8>,
    method: Method,
) -> Result<Response, SendError> {
    let body = c
        .send(std::slice::from_ref(to), &request, SizeClass::Large, T)
        .await?;
    Ok(Response::decode(&body, method).unwrap())
}

async fn store(c: &OnionClient, to: &Hop, mb: Mailbox, data: &[u8]) -> Result<Response, SendError> {
    let req = Request::unsigned(Body::Store(StoreRequest {
        mailbox: mb,
        namespace: 0,
        ttl_ms: 3_600_000,
        data: data.to_vec(),
    }));
    call(c, to, req.encode(), Method::Store).await
}

/// How many members `mb`'s swarm has in the roster node `to` holds (it answers `get_swarm` from
/// it): the swarm a store at `to` counts its majority in, which may be newer than the test's.
async fn swarm_size_at(c: &OnionClient, to: &Hop, mb: Mailbox) -> usize {
    let req = Request::unsigned(Body::GetSwarm(GetSwarmRequest { mailbox: mb }));
    match call(c, to, req.encode(), Method::GetSwarm).await {
        Ok(Response {
            result: Ok(ResponseBody::GetSwarm(s)),
            ..
        }) => s.members.len(),
        other => panic!("get_swarm at the destination: {other:?}"),
    }
}

/// Stores at `to`; returns the answer and the smallest size of the swarm in the rosters the
/// destination held just before and just after (the roster may change meanwhile: a stopped
/// member leaves it), which its acknowledgement is counted against.
async fn store_counted(
    c: &OnionClient,
    to: &Hop,
    mb: Mailbox,
    data: &[u8],
) -> (Result<Response, SendError>, usize) {
    let before = swarm_size_at(c, to, mb).await;
    let r = store(c, to, mb, data).await;
    let after = swarm_size_at(c, to, mb).await;
    (r, before.min(after))
}

/// Everything node `to` returns for the mailbox, or why it could not say.
async fn held(c: &OnionClient, to: &Hop, k: &SigningKey) -> Result<BTreeSet<Vec<u8>>, String> {
    let req = Request::signed(
        Body::Retrieve(RetrieveRequest {
            mailbox: mailbox(k),
            namespace: 0,
            after: None,
            limit: None,
            wait_ms: None,
        }),
        k,
        &to.identity.node_id(),
        now_ms(),
    );
    match call(c, to, req.encode(), Method::Retrieve).await {
        Ok(Response {
            result: Ok(ResponseBody::Retrieve(r)),
            ..
        }) => {
            assert!(!r.more, "tests keep a mailbox within one page");
            Ok(r.messages.into_iter().map(|m| m.data).collect())
        }
        Ok(other) => Err(format!("{:?}", other.result)),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether node `i`'s health report says it is syncing (`None` when it does not answer).
async fn health_syncing(net: &Net, i: usize) -> Option<bool> {
    let (_, body) = allium_node::http::get(net.net.nodes[i].metrics, "/health")
        .await
        .ok()?;
    serde_json::from_str::<serde_json::Value>(&body).ok()?["syncing"].as_bool()
}

/// A store acknowledged by a majority of a swarm of `swarm_size` members, as the response says.
fn acknowledged(r: &Result<Response, SendError>, swarm_size: usize) -> bool {
    match r {
        Ok(Response {
            result: Ok(ResponseBody::Store(s)),
            ..
        }) => {
            assert!(
                s.holders.len() > swarm_size / 2,
                "acknowledged by {} of {swarm_size}",
                s.holders.len()
            );
            let distinct: BTreeSet<_> = s.holders.iter().collect();
            assert_eq!(distinct.len(), s.holders.len(), "holders listed twice");
            true
        }
        _ => false,
    }
}

/// Whether a member must hold exactly the expected messages, or at least them (a store that
/// failed for its client may still have landed; only acknowledged ones are promised).
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Exactly,
    AtLeast,
}

/// Waits until every running member of each mailbox's current swarm returns the messages
/// expected of it. Returns the time it took.
async fn converged(
    net: &mut Net,
    want: &HashMap<u8, BTreeSet<Vec<u8>>>,
    expect: Expect,
) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE {
        let roster = net.roster().await;
        let mut all = true;
        for (seed, expected) in want {
            let k = key(*seed);
            for i in net.members(&roster, &mailbox(&k)) {
                if !net.net.nodes[i].is_running() {
                    continue;
                }
                let got = held(&net.c, &net.hop(&roster, i), &k).await;
                let ok = match (&got, expect) {
                    (Ok(g), Expect::Exactly) => g == expected,
                    (Ok(g), Expect::AtLeast) => g.is_superset(expected),
                    (Err(_), _) => false,
                };
                if !ok {
                    all = false;
                    last = format!(
                        "{} holds {:?} of {} for mailbox {seed}",
                        net.net.nodes[i].name,
                        got.map(|g| g.len()),
                        expected.len()
                    );
                }
            }
        }
        if all {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no convergence in {CONVERGE:?}: {last}");
}

/// Reads a counter from a node's metrics endpoint.
async fn counter(net: &Net, i: usize, name: &str) -> u64 {
    let (_, body) = allium_node::http::get(net.net.nodes[i].metrics, "/metrics")
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A member of `mb`'s swarm other than the authority.
fn victim(members: &[usize]) -> usize {
    *members
        .iter()
        .find(|&&i| i != 0)
        .expect("a non-authority member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_stores_survive_a_member_killed_mid_burst() {
    let mut net = Net::start().await;
    let k = key(11);
    let mb = mailbox(&k);
    let roster = net.roster().await;
    let members = net.members(&roster, &mb);
    let size = members.len();
    assert!(size >= 3, "swarm of {size}");
    let victim = victim(&members);
    let hops: Vec<Hop> = members.iter().map(|&i| net.hop(&roster, i)).collect();
    // Seconds after the kill the authority drops the dead member from the roster, and stores
    // are acknowledged by a majority of the swarm the roster then lists.
    let quorum_of = size - 1;

    // Eight writers, each storing in turn to every member, while one member is killed. Like a
    // client, a writer whose store fails retries it once at the next member (stores are
    // idempotent) and stops sending to a member that did not answer.
    let acked = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let dead = Arc::new(Mutex::new(BTreeSet::<usize>::new()));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8u8 {
        let (c, hops, acked, dead) = (net.c.clone(), hops.clone(), acked.clone(), dead.clone());
        writers.spawn(async move {
            for n in 0..20u8 {
                let data = vec![w, n, 0xa5];
                let first = usize::from(w + n);
                for attempt in 0..hops.len() {
                    let at = (first + attempt) % hops.len();
                    if dead.lock().unwrap().contains(&at) {
                        continue;
                    }
                    let r = store(&c, &hops[at], mb, &data).await;
                    if matches!(r, Err(SendError::Guard(_))) {
                        dead.lock().unwrap().insert(at);
                    }
                    if acknowledged(&r, quorum_of) {
                        acked.lock().unwrap().push(data.clone());
                        break;
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + T * 3;
    while acked.lock().unwrap().len() < 40 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    net.net.kill_node(victim).unwrap();
    let acked_at_kill = acked.lock().unwrap().len();
    while writers.join_next().await.is_some() {}
    let acked: BTreeSet<Vec<u8>> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() > acked_at_kill,
        "stores went on being acknowledged after the kill"
    );

    let took = converged(
        &mut net,
        &HashMap::from([(11, acked.clone())]),
        Expect::AtLeast,
    )
    .await;
    eprintln!(
        "{} stores acknowledged ({acked_at_kill} before the kill), 0 lost; survivors agreed after {took:?}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_was_down_converges_and_a_deleted_message_stays_deleted() {
    let mut net = Net::start().await;
    let k = key(12);
    let mb = mailbox(&k);
    let roster = net.roster().await;
    let members = net.members(&roster, &mb);
    let size = members.len();
    let victim = victim(&members);
    let alive = *members.iter().find(|&&i| i != victim).unwrap();
    let to = net.hop(&roster, alive);

    // Two messages every member holds; one will be deleted while the victim is down.
    let mut doomed_hash = None;
    for data in [b"doomed".as_slice(), b"kept"] {
        let (r, size) = store_counted(&net.c, &to, mb, data).await;
        assert!(acknowledged(&r, size), "{r:?}");
        if data == b"doomed" {
            if let Ok(Response {
                result: Ok(ResponseBody::Store(s)),
                ..
            }) = r
            {
                doomed_hash = Some(s.hash);
            }
        }
    }
    let mut want: BTreeSet<Vec<u8>> = [b"doomed".to_vec(), b"kept".to_vec()].into();
    converged(
        &mut net,
        &HashMap::from([(12, want.clone())]),
        Expect::Exactly,
    )
    .await;

    assert!(net.net.stop_node(victim).unwrap(), "clean stop");
    // While it is away: the delete, and new messages.
    let delete = Request::signed(
        Body::Delete(DeleteRequest {
            mailbox: mb,
            namespace: 0,
            hashes: vec![doomed_hash.unwrap()],
        }),
        &k,
        &to.identity.node_id(),
        now_ms(),
    );
    let r = call(&net.c, &to, delete.encode(), Method::Delete)
        .await
        .unwrap();
    assert!(
        matches!(r.result, Ok(ResponseBody::Delete(ref d)) if d.deleted.len() == 1),
        "{r:?}"
    );
    want.remove(b"doomed".as_slice());
    for n in 0..30u8 {
        let data = vec![b'n', n];
        let (r, size) = store_counted(&net.c, &to, mb, &data).await;
        assert!(acknowledged(&r, size), "{r:?}");
        want.insert(data);
    }

    net.net.start_node(victim).unwrap();
    let took = converged(
        &mut net,
        &HashMap::from([(12, want.clone())]),
        Expect::Exactly,
    )
    .await;
    eprintln!("a member back after missing 30 stores and a delete converged in {took:?}");

    // Several more rounds on every member: the deleted message stays gone, and idle rounds
    // exchange only root digests. A window of rounds is idle only once every member has caught
    // up (a peer still pulling from the victim has another root, and a busy machine may see
    // the roster drop and re-add a slow node): measure windows of three rounds until one is.
    let rounds = "allium_sync_rounds_total";
    let pulled = "allium_sync_bytes_total{direction=\"pull\"}";
    let deadline = Instant::now() + CONVERGE;
    let mut windows = Vec::new();
    loop {
        let before_rounds = counter(&net, victim, rounds).await;
        let before_bytes = counter(&net, victim, pulled).await;
        while counter(&net, victim, rounds).await < before_rounds + 3 {
            assert!(Instant::now() < deadline, "anti-entropy rounds stopped");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rounds_done = counter(&net, victim, rounds).await - before_rounds;
        let bytes = counter(&net, victim, pulled).await - before_bytes;
        let per_peer_round = bytes / rounds_done / (size as u64 - 1);
        windows.push(per_peer_round);
        if per_peer_round <= 64 {
            eprintln!(
                "idle anti-entropy: {per_peer_round} protocol bytes per peer per round \
                 (windows of 3 rounds measured: {windows:?})"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no idle window of rounds: bytes per peer per round {windows:?}"
        );
    }
    converged(&mut net, &HashMap::from([(12, want)]), Expect::Exactly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_a_swarm_ends_up_holding_its_messages() {
    let mut net = Net::start().await;
    let roster = net.roster().await;
    let mut want = HashMap::new();
    for seed in 20..28u8 {
        let mb = mailbox(&key(seed));
        let members = net.members(&roster, &mb);
        let mut msgs = BTreeSet::new();
        for n in 0..10u8 {
            let data = vec![seed, n];
            let to = net.hop(&roster, members[usize::from(n) % members.len()]);
            let (r, size) = store_counted(&net.c, &to, mb, &data).await;
            assert!(acknowledged(&r, size), "{r:?}");
            msgs.insert(data);
        }
        want.insert(seed, msgs);
    }

    let joiner = net.net.add_node().unwrap();
    let id = net.net.nodes[joiner].identity;
    let deadline = Instant::now() + CONVERGE;
    let roster = loop {
        let r = net.roster().await;
        if r.node(&id.node_id()).is_some() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the joiner never entered the roster"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        net.net
            .wait_for_roster_version(roster.version(), T * 3)
            .await
    );
    let joined: Vec<u8> = want
        .keys()
        .copied()
        .filter(|s| net.members(&roster, &mailbox(&key(*s))).contains(&joiner))
        .collect();
    assert!(
        !joined.is_empty(),
        "the joiner's swarm holds none of the test mailboxes"
    );
    let took = converged(&mut net, &want, Expect::Exactly).await;
    eprintln!(
        "joiner holds the {} mailboxes of its swarm ({} messages each) after {took:?}",
        joined.len(),
        10
    );
    // A member asked about a mailbox of another swarm names the right one.
    let foreign = want
        .keys()
        .copied()
        .find(|s| !joined.contains(s))
        .expect("a mailbox of another swarm");
    let mb = mailbox(&key(foreign));
    let r = store(&net.c, &net.hop(&roster, joiner), mb, b"misdirected")
        .await
        .unwrap();
    assert_eq!(r.result, Err(Status::WrongSwarm));
    let redirect = r.redirect.expect("a wrong-swarm answer names the swarm");
    assert_eq!(Some(redirect.swarm_id), roster.swarm_for(&mb));
    let named: BTreeSet<NodeId> = redirect.members.iter().copied().collect();
    let expected: BTreeSet<NodeId> = roster
        .members_for(&mb)
        .iter()
        .map(|n| n.identity.node_id())
        .collect();
    assert_eq!(named, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_corrupt_store_refuses_it_and_resyncs_from_its_swarm() {
    let mut net = Net::start().await;
    let k = key(13);
    let mb = mailbox(&k);
    let roster = net.roster().await;
    let members = net.members(&roster, &mb);
    let victim = victim(&members);
    let alive = *members.iter().find(|&&i| i != victim).unwrap();
    let to = net.hop(&roster, alive);
    let mut want = BTreeSet::new();
    for n in 0..20u8 {
        let data = vec![b'c', n];
        let (r, size) = store_counted(&net.c, &to, mb, &data).await;
        assert!(acknowledged(&r, size), "{r:?}");
        want.insert(data);
    }
    let want = HashMap::from([(13, want)]);
    converged(&mut net, &want, Expect::Exactly).await;

    assert!(net.net.stop_node(victim).unwrap());
    let data_dir = net.net.nodes[victim].data_dir.clone();
    std::fs::write(data_dir.join("store").join("CURRENT"), b"garbage\n").unwrap();
    net.net.start_node(victim).unwrap();
    let took = converged(&mut net, &want, Expect::Exactly).await;
    let aside = std::fs::read_dir(&data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.corrupt-")
        });
    assert!(aside, "the corrupt store is kept aside for inspection");
    eprintln!("a member whose store was corrupt re-synced its 20 messages in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_split_moves_mailboxes_to_the_swarm_that_now_owns_them() {
    let mut net = Net::start().await;
    let before = net.roster().await;
    let swarms_before = before.swarms().len();
    let mut want = HashMap::new();
    for seed in 40..52u8 {
        let mb = mailbox(&key(seed));
        let members = net.members(&before, &mb);
        let mut msgs = BTreeSet::new();
        for n in 0..5u8 {
            let data = vec![seed, n, 0x5a];
            let to = net.hop(&before, members[usize::from(n) % members.len()]);
            let (r, size) = store_counted(&net.c, &to, mb, &data).await;
            assert!(acknowledged(&r, size), "{r:?}");
            msgs.insert(data);
        }
        want.insert(seed, msgs);
    }

    // Two more nodes, plus a spare member of the largest swarm, make a new swarm: the ring
    // splits, and the mailboxes nearest the new swarm's id move to it.
    let joiners = [net.net.add_node().unwrap(), net.net.add_node().unwrap()];
    let ids: Vec<_> = joiners.iter().map(|&j| net.net.nodes[j].identity).collect();
    let deadline = Instant::now() + CONVERGE;
    let after = loop {
        let r = net.roster().await;
        if ids.iter().all(|id| r.node(&id.node_id()).is_some()) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the new nodes never entered the roster"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        net.net
            .wait_for_roster_version(after.version(), T * 3)
            .await
    );
    assert!(
        after.swarms().len() > swarms_before,
        "{} swarms before, {} after",
        swarms_before,
        after.swarms().len()
    );
    let moved: Vec<u8> = want
        .keys()
        .copied()
        .filter(|s| {
            let mb = mailbox(&key(*s));
            before.swarm_for(&mb) != after.swarm_for(&mb)
        })
        .collect();
    assert!(!moved.is_empty(), "no test mailbox changed swarm");
    let took = converged(&mut net, &want, Expect::Exactly).await;
    eprintln!(
        "after a split, {} of {} mailboxes moved swarm; every member of every swarm held exactly its mailboxes' messages {took:?} after the new roster reached every node",
        moved.len(),
        want.len()
    );
    // Their old swarm no longer serves them: it names the new one.
    let seed = moved[0];
    let mb = mailbox(&key(seed));
    let old_member = before
        .members_for(&mb)
        .iter()
        .map(|n| net.index(&n.identity))
        .find(|&i| !net.members(&after, &mb).contains(&i))
        .expect("a member of the old swarm outside the new one");
    let r = store(&net.c, &net.hop(&after, old_member), mb, b"late")
        .await
        .unwrap();
    assert_eq!(r.result, Err(Status::WrongSwarm));
    assert_eq!(r.redirect.map(|s| s.swarm_id), after.swarm_for(&mb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_answers_no_retrieve_before_it_holds_every_acknowledged_message() {
    let mut net = Net::start().await;
    let k = key(14);
    let mb = mailbox(&k);
    let roster = net.roster().await;
    let members = net.members(&roster, &mb);
    let victim = victim(&members);
    let others: Vec<Hop> = members
        .iter()
        .filter(|&&i| i != victim)
        .map(|&i| net.hop(&roster, i))
        .collect();

    // Half the messages while every member is up, half while the victim is stopped.
    let mut acked = BTreeSet::new();
    for n in 0..30u8 {
        let data = vec![b'r', n];
        let r = store(&net.c, &others[usize::from(n) % others.len()], mb, &data).await;
        assert!(matches!(r, Ok(Response { result: Ok(_), .. })), "{r:?}");
        acked.insert(data);
    }
    converged(
        &mut net,
        &HashMap::from([(14, acked.clone())]),
        Expect::Exactly,
    )
    .await;
    assert!(net.net.stop_node(victim).unwrap(), "clean stop");
    for n in 30..60u8 {
        let data = vec![b'r', n];
        let r = store(&net.c, &others[usize::from(n) % others.len()], mb, &data).await;
        assert!(matches!(r, Ok(Response { result: Ok(_), .. })), "{r:?}");
        acked.insert(data);
    }
    // The authority drops the stopped member; the restarted one then starts from a cached
    // roster that names its swarm, and soon fetches one that does not list it at all.
    let id = net.net.nodes[victim].identity.node_id();
    let deadline = Instant::now() + CONVERGE;
    while net.roster().await.node(&id).is_some() {
        assert!(
            Instant::now() < deadline,
            "the stopped member stayed in the roster"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    net.net.start_node(victim).unwrap();
    // A restarted node has new onion keys (onion.md §8): it is reached through the roster that
    // lists them, which it joins while it may still be syncing.
    let at_victim = loop {
        let fresh = net.roster().await;
        if fresh.node(&id).is_some() {
            break net.hop(&fresh, victim);
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member never rejoined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // From the moment it listens, ask it again and again: it may refuse (`syncing`), but an
    // answer `ok` must hold every acknowledged message.
    let (mut refused, mut served, mut health_ok) = (0, 0, 0);
    let deadline = Instant::now() + CONVERGE;
    while served < 3 {
        assert!(
            Instant::now() < deadline,
            "the restarted member never served ({refused} refusals)"
        );
        let before = health_syncing(&net, victim).await;
        let req = Request::signed(
            Body::Retrieve(RetrieveRequest {
                mailbox: mb,
                namespace: 0,
                after: None,
                limit: None,
                wait_ms: None,
            }),
            &k,
            &at_victim.identity.node_id(),
            now_ms(),
        );
        match call(&net.c, &at_victim, req.encode(), Method::Retrieve).await {
            Ok(Response {
                result: Ok(ResponseBody::Retrieve(page)),
                ..
            }) => {
                let got: BTreeSet<Vec<u8>> = page.messages.into_iter().map(|m| m.data).collect();
                assert!(
                    got.is_superset(&acked),
                    "the restarted member answered ok with {} of the {} acknowledged messages",
                    got.intersection(&acked).count(),
                    acked.len()
                );
                served += 1;
            }
            Ok(Response {
                result: Err(Status::Syncing),
                ..
            }) => {
                refused += 1;
                // A member whose health says it is not syncing serves retrieves, unless the
                // roster moved it meanwhile; count the reports that agree.
                if before == Some(true) {
                    health_ok += 1;
                }
            }
            // Not listening yet, or not in the roster its relays hold: ask again.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    eprintln!(
        "a restarted member refused {refused} retrieves with `syncing` ({health_ok} while its \
         health said so), then served all {} acknowledged messages",
        acked.len()
    );
    // And the swarm agrees.
    converged(&mut net, &HashMap::from([(14, acked)]), Expect::Exactly).await;
}
