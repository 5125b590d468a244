//! The QUIC link on loopback: key pinning, identities, framing limits, connection caps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allium_link::{
    Deadlines, Handler, Kind, Link, LinkError, LinkLimits, Peer, Pool, Refusal, Role, Status,
    TlsIdentity,
};
use allium_onion::{IdentityKeypair, IdentityPublicKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::oneshot;

/// Echoes the body, prefixed with the caller's identity (32 bytes) or 32 zero bytes. Its peers
/// are the keys in `peers`; it records what the link refused.
#[derive(Default)]
struct Echo {
    peers: Mutex<Vec<IdentityPublicKey>>,
    refused: Mutex<Vec<Refusal>>,
    roles: Mutex<Vec<Role>>,
}

impl Handler for Echo {
    type ConnectionGuard = ();

    fn is_peer(&self, identity: &IdentityPublicKey) -> bool {
        self.peers.lock().unwrap().contains(identity)
    }

    fn may_be_peer(&self, _ip: IpAddr) -> bool {
        !self.peers.lock().unwrap().is_empty()
    }

    fn connected(&self, peer: &Peer) {
        self.roles.lock().unwrap().push(peer.role);
    }

    fn refused(&self, _addr: SocketAddr, why: Refusal) {
        self.refused.lock().unwrap().push(why);
    }

    async fn handle(&self, peer: &Peer, kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        if kind == Kind::Peer {
            return (Status::Ok, b"peer".to_vec());
        }
        if kind != Kind::Directory {
            return (Status::Rejected, Vec::new());
        }
        let mut out = peer
            .identity
            .map(|i| i.to_bytes())
            .unwrap_or([0; 32])
            .to_vec();
        out.extend_from_slice(&body);
        (Status::Ok, out)
    }
}

struct Server<H = Echo> {
    addr: SocketAddr,
    identity: IdentityKeypair,
    echo: Arc<H>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl<H> Server<H> {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(seed: u64, limits: LinkLimits) -> Server {
    start_with(seed, limits, Echo::default())
}

fn start_with(seed: u64, limits: LinkLimits, echo: Echo) -> Server {
    serve_with(seed, limits, Arc::new(echo), Duration::from_secs(1))
}

fn serve_with<H: Handler>(
    seed: u64,
    limits: LinkLimits,
    echo: Arc<H>,
    drain: Duration,
) -> Server<H> {
    let identity = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed));
    let tls = Arc::new(TlsIdentity::new(&identity).unwrap());
    let link = Link::bind_node(loopback(), tls, limits).unwrap();
    let addr = link.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handler = echo.clone();
    let task = tokio::spawn(async move {
        link.serve(
            handler,
            async {
                let _ = rx.await;
            },
            drain,
        )
        .await;
    });
    Server {
        addr,
        identity,
        echo,
        stop: Some(tx),
        task,
    }
}

/// A node endpoint presenting `identity`, to connect from.
fn node_link(identity: &IdentityKeypair, limits: LinkLimits) -> Link {
    Link::bind_node(
        loopback(),
        Arc::new(TlsIdentity::new(identity).unwrap()),
        limits,
    )
    .unwrap()
}

fn client() -> Link {
    Link::bind_client(loopback(), LinkLimits::default()).unwrap()
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_client_reaches_the_node_whose_key_it_pinned_anonymously() {
    let server = start(1, LinkLimits::default());
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    let (status, body) =
        allium_link::request(&conn, Kind::Directory, b"hello", Deadlines::uniform(T))
            .await
            .unwrap();
    assert_eq!(status, Status::Ok);
    assert_eq!(
        &body[..32],
        &[0u8; 32],
        "an anonymous client must not be identified"
    );
    assert_eq!(&body[32..], b"hello");
    server.stop().await;
}

#[tokio::test]
async fn a_node_presenting_another_key_is_refused() {
    let server = start(2, LinkLimits::default());
    let impostor_expected = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(99)).public();
    let err = client()
        .connect(server.addr, &impostor_expected)
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Connect { .. }), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_connecting_node_is_identified_by_its_key() {
    let server = start(3, LinkLimits::default());
    let me = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(4));
    let link = Arc::new(
        Link::bind_node(
            loopback(),
            Arc::new(TlsIdentity::new(&me).unwrap()),
            LinkLimits::default(),
        )
        .unwrap(),
    );
    let pool = Pool::new(link, T);
    let (status, body) = pool
        .request(
            &server.identity.public(),
            server.addr,
            Kind::Directory,
            b"x",
            Deadlines::uniform(T),
        )
        .await
        .unwrap();
    assert_eq!(status, Status::Ok);
    assert_eq!(&body[..32], me.public().as_bytes());
    // The pool reuses its connection.
    pool.request(
        &server.identity.public(),
        server.addr,
        Kind::Directory,
        b"y",
        Deadlines::uniform(T),
    )
    .await
    .unwrap();
    assert_eq!(pool.live(), 1);
    server.stop().await;
}

#[tokio::test]
async fn oversized_and_unknown_frames_are_dropped_and_the_node_keeps_serving() {
    let server = start(5, LinkLimits::default());
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    // A length larger than the kind allows: the stream is reset before any body is read.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut head = vec![Kind::Directory.code()];
    head.extend_from_slice(&u32::MAX.to_be_bytes());
    send.write_all(&head).await.unwrap();
    assert!(allium_link::frame::read_response(&mut recv).await.is_err());
    // An unknown kind.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xee, 0, 0, 0, 1, 0]).await.unwrap();
    assert!(allium_link::frame::read_response(&mut recv).await.is_err());
    // A truncated request (the sender finishes early).
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[Kind::Directory.code(), 0, 0, 0, 9, 1, 2])
        .await
        .unwrap();
    send.finish().unwrap();
    assert!(allium_link::frame::read_response(&mut recv).await.is_err());
    // Still serving on the same connection.
    let (status, _) = allium_link::request(&conn, Kind::Directory, b"ok", Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!(status, Status::Ok);
    server.stop().await;
}

#[tokio::test]
async fn a_slow_sender_is_cut_off_after_the_read_time_out() {
    let limits = LinkLimits {
        request_read_timeout: Duration::from_millis(300),
        ..LinkLimits::default()
    };
    let server = start(6, limits);
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[Kind::Directory.code(), 0, 0])
        .await
        .unwrap();
    // The node resets the stream by itself; no answer ever comes.
    let outcome = tokio::time::timeout(T, allium_link::frame::read_response(&mut recv)).await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "the node kept a slow stream open"
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let limits = LinkLimits {
        max_connections_per_ip: 2,
        ..LinkLimits::default()
    };
    let server = start(7, limits);
    let key = server.identity.public();
    let clients: Vec<Link> = (0..3).map(|_| client()).collect();
    let a = clients[0].connect(server.addr, &key).await.unwrap();
    let b = clients[1].connect(server.addr, &key).await.unwrap();
    // Requests confirm both are established server-side.
    allium_link::request(&a, Kind::Directory, b"a", Deadlines::uniform(T))
        .await
        .unwrap();
    allium_link::request(&b, Kind::Directory, b"b", Deadlines::uniform(T))
        .await
        .unwrap();
    let third = clients[2].connect(server.addr, &key).await;
    assert!(
        third.is_err(),
        "a third connection from one address was accepted"
    );
    // Closing one frees its place.
    a.close(0u32.into(), b"bye");
    let mut accepted = false;
    for _ in 0..50 {
        if let Ok(c) = clients[2].connect(server.addr, &key).await {
            allium_link::request(&c, Kind::Directory, b"c", Deadlines::uniform(T))
                .await
                .unwrap();
            accepted = true;
            break;
        }
        // The server learns of the close asynchronously; retry on its own schedule.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "a freed place was not reused");
    server.stop().await;
}

#[tokio::test]
async fn bytes_after_the_declared_body_reset_the_stream() {
    let server = start(10, LinkLimits::default());
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Declares 2 bytes, sends 5.
    send.write_all(&[Kind::Directory.code(), 0, 0, 0, 2, b'o', b'k', 1, 2, 3])
        .await
        .unwrap();
    send.finish().unwrap();
    assert!(allium_link::frame::read_response(&mut recv).await.is_err());
    assert_eq!(
        *server.echo.refused.lock().unwrap(),
        vec![Refusal::TrailingBytes]
    );
    // The exact frame is answered.
    let (status, body) = allium_link::request(&conn, Kind::Directory, b"ok", Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!((status, &body[32..]), (Status::Ok, &b"ok"[..]));
    server.stop().await;
}

#[tokio::test]
async fn peer_frames_are_refused_at_the_head_unless_the_key_is_a_peer() {
    let peer = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(11));
    let stranger = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(12));
    let server = start_with(
        13,
        LinkLimits::default(),
        Echo {
            peers: Mutex::new(vec![peer.public()]),
            ..Echo::default()
        },
    );
    let key = server.identity.public();
    // An anonymous client declaring a 1 MiB peer body: refused before any of it is read, so
    // the sender learns at once that it may stop.
    let anon = client();
    let conn = anon.connect(server.addr, &key).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut head = vec![Kind::Peer.code()];
    head.extend_from_slice(&(1024u32 * 1024).to_be_bytes());
    send.write_all(&head).await.unwrap();
    assert!(allium_link::frame::read_response(&mut recv).await.is_err());
    assert!(
        tokio::time::timeout(T, send.stopped()).await.is_ok(),
        "the node did not tell the sender to stop"
    );
    // A certificate whose key is not a peer's is a client too.
    let conn = node_link(&stranger, LinkLimits::default())
        .connect(server.addr, &key)
        .await
        .unwrap();
    assert!(
        allium_link::request(&conn, Kind::Peer, b"x", Deadlines::uniform(T))
            .await
            .is_err()
    );
    // The peer's key is let through.
    let conn = node_link(&peer, LinkLimits::default())
        .connect(server.addr, &key)
        .await
        .unwrap();
    let (status, body) = allium_link::request(&conn, Kind::Peer, b"x", Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!((status, body), (Status::Ok, b"peer".to_vec()));
    assert_eq!(
        *server.echo.refused.lock().unwrap(),
        vec![Refusal::NotAPeer, Refusal::NotAPeer]
    );
    assert_eq!(
        *server.echo.roles.lock().unwrap(),
        vec![Role::Client, Role::Client, Role::Peer]
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_being_read_share_one_budget_taken_as_bytes_arrive() {
    let limits = LinkLimits {
        client_read_buffer: 128 * 1024,
        request_read_timeout: Duration::from_millis(1500),
        ..LinkLimits::default()
    };
    let server = start(14, limits);
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    let head = |len: u32| {
        let mut h = vec![Kind::Directory.code()];
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    // Declaring a length costs nothing: four streams each declare 64 KiB and send 100 bytes,
    // which take one growth step (16 KiB) each, not 64 KiB.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&head(65536)).await.unwrap();
        send.write_all(&[0u8; 100]).await.unwrap();
        idle.push((send, recv));
    }
    let (status, _) = allium_link::request(
        &conn,
        Kind::Directory,
        &[7u8; 50_000],
        Deadlines::uniform(T),
    )
    .await
    .unwrap();
    assert_eq!(status, Status::Ok, "declared lengths used up the budget");
    // Bytes that arrived do: one stream holding 60 KiB leaves no room for another 60 KiB.
    let (mut big, _big_recv) = conn.open_bi().await.unwrap();
    big.write_all(&head(65536)).await.unwrap();
    big.write_all(&[1u8; 60 * 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = allium_link::request(
        &conn,
        Kind::Directory,
        &[2u8; 60 * 1024],
        Deadlines::uniform(T),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        server
            .echo
            .refused
            .lock()
            .unwrap()
            .contains(&Refusal::BufferFull)
    );
    // Once the slow streams are cut off at their read time-out, the memory is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = allium_link::request(
        &conn,
        Kind::Directory,
        &[3u8; 60 * 1024],
        Deadlines::uniform(T),
    )
    .await
    .unwrap();
    assert_eq!(status, Status::Ok);
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn peers_are_exempt_from_the_per_address_cap_and_strangers_are_not() {
    let peer = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(15));
    let stranger = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(16));
    let limits = LinkLimits {
        max_connections_per_ip: 2,
        ..LinkLimits::default()
    };
    let server = start_with(
        17,
        limits,
        Echo {
            peers: Mutex::new(vec![peer.public()]),
            ..Echo::default()
        },
    );
    let key = server.identity.public();
    let clients: Vec<Link> = (0..2).map(|_| client()).collect();
    let mut held = Vec::new();
    for c in &clients {
        let conn = c.connect(server.addr, &key).await.unwrap();
        allium_link::request(&conn, Kind::Directory, b"c", Deadlines::uniform(T))
            .await
            .unwrap();
        held.push(conn);
    }
    // A certificate is no way past the cap: the stranger is refused once its key is seen.
    let refused = async {
        let conn = node_link(&stranger, LinkLimits::default())
            .connect(server.addr, &key)
            .await?;
        allium_link::request(&conn, Kind::Directory, b"s", Deadlines::uniform(T)).await
    };
    assert!(refused.await.is_err(), "a stranger got past the cap");
    // The roster's node is not counted against its address.
    for _ in 0..3 {
        let conn = node_link(&peer, LinkLimits::default())
            .connect(server.addr, &key)
            .await
            .unwrap();
        let (status, _) = allium_link::request(&conn, Kind::Peer, b"p", Deadlines::uniform(T))
            .await
            .unwrap();
        assert_eq!(status, Status::Ok);
        held.push(conn);
    }
    assert!(
        server
            .echo
            .refused
            .lock()
            .unwrap()
            .contains(&Refusal::ConnectionCap)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_connection_whose_key_joins_the_roster_stops_counting_against_its_address() {
    let node = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(18));
    let someone = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(19));
    let limits = LinkLimits {
        max_connections_per_ip: 1,
        ..LinkLimits::default()
    };
    // A roster that lists someone else, so this address may be a peer's.
    let server = start_with(
        20,
        limits,
        Echo {
            peers: Mutex::new(vec![someone.public()]),
            ..Echo::default()
        },
    );
    let key = server.identity.public();
    // The node connects before it is admitted: a client, holding the address's one place.
    let conn = node_link(&node, LinkLimits::default())
        .connect(server.addr, &key)
        .await
        .unwrap();
    allium_link::request(&conn, Kind::Directory, b"register", Deadlines::uniform(T))
        .await
        .unwrap();
    let anon = client();
    let refused = async {
        let c = anon.connect(server.addr, &key).await?;
        allium_link::request(&c, Kind::Directory, b"a", Deadlines::uniform(T)).await
    };
    assert!(refused.await.is_err(), "the cap of one was not held");
    // Admitted: its next request makes its connection a peer's, and the place is free again.
    server.echo.peers.lock().unwrap().push(node.public());
    let (status, _) = allium_link::request(&conn, Kind::Peer, b"p", Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!(status, Status::Ok);
    let c = anon.connect(server.addr, &key).await.unwrap();
    let (status, _) = allium_link::request(&c, Kind::Directory, b"a", Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!(status, Status::Ok);
    assert_eq!(
        *server.echo.roles.lock().unwrap(),
        vec![Role::Client, Role::Peer, Role::Client]
    );
    server.stop().await;
}

#[test]
fn certificate_identity_refuses_garbage() {
    assert!(allium_link::certificate_identity(&[]).is_err());
    assert!(allium_link::certificate_identity(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    let id = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(8));
    let tls = TlsIdentity::new(&id).unwrap();
    assert_eq!(tls.public(), &id.public());
    assert!(!format!("{tls:?}").contains(&hex_of(&id.seed()[..4])));
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Answers `Directory` requests once the test opens the gate; says when one has arrived.
struct Gate {
    arrived: tokio::sync::Notify,
    open: tokio::sync::Semaphore,
}

impl Handler for Gate {
    type ConnectionGuard = ();

    fn is_peer(&self, _identity: &IdentityPublicKey) -> bool {
        false
    }

    fn connected(&self, _peer: &Peer) {}

    async fn handle(&self, _peer: &Peer, _kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        self.arrived.notify_one();
        let _ = self.open.acquire().await;
        (Status::Ok, body)
    }
}

/// Far longer than any test waits: a stop that took it would fail the test's own deadline.
const LONG_DRAIN: Duration = Duration::from_secs(3600);

/// A stop waits for requests in flight, not for open connections that are idle: the peers'
/// long-lived connections must not hold every node for its whole drain period.
#[tokio::test]
async fn an_idle_connection_does_not_hold_the_stop() {
    let server = serve_with(
        11,
        LinkLimits::default(),
        Arc::new(Echo::default()),
        LONG_DRAIN,
    );
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    let (status, _) = allium_link::request(&conn, Kind::Directory, b"x", Deadlines::uniform(T))
        .await
        .unwrap();
    assert_eq!(status, Status::Ok);
    // The connection stays open and idle while the server stops.
    tokio::time::timeout(T * 6, server.stop())
        .await
        .expect("stopped without waiting the drain period");
    drop(conn);
}

/// A request that arrived before the stop is still answered, and the stop waits for it.
#[tokio::test]
async fn a_request_in_flight_at_the_stop_is_answered() {
    let gate = Arc::new(Gate {
        arrived: tokio::sync::Notify::new(),
        open: tokio::sync::Semaphore::new(0),
    });
    let mut server = serve_with(12, LinkLimits::default(), gate.clone(), LONG_DRAIN);
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    let asking = {
        let conn = conn.clone();
        tokio::spawn(async move {
            allium_link::request(&conn, Kind::Directory, b"late", Deadlines::uniform(T * 6)).await
        })
    };
    gate.arrived.notified().await;
    let _ = server.stop.take().unwrap().send(());
    gate.open.add_permits(1);
    let (status, body) = asking.await.unwrap().unwrap();
    assert_eq!((status, body.as_slice()), (Status::Ok, &b"late"[..]));
    tokio::time::timeout(T * 6, server.task)
        .await
        .expect("stopped once the request was answered")
        .unwrap();
}

/// Parks every request until the test opens the gate; counts arrivals. `peers` are its roster.
struct ParkAll {
    peers: Vec<IdentityPublicKey>,
    arrived: Mutex<usize>,
    arrival: tokio::sync::Notify,
    open: tokio::sync::Semaphore,
}

impl ParkAll {
    fn new(peers: Vec<IdentityPublicKey>) -> Self {
        ParkAll {
            peers,
            arrived: Mutex::new(0),
            arrival: tokio::sync::Notify::new(),
            open: tokio::sync::Semaphore::new(0),
        }
    }

    /// Waits until `n` requests have arrived in all.
    async fn until_arrived(&self, n: usize) {
        tokio::time::timeout(T, async {
            loop {
                let notified = self.arrival.notified();
                if *self.arrived.lock().unwrap() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} arrived", self.arrived.lock().unwrap()));
    }
}

impl Handler for ParkAll {
    type ConnectionGuard = ();

    fn is_peer(&self, identity: &IdentityPublicKey) -> bool {
        self.peers.contains(identity)
    }

    fn may_be_peer(&self, _ip: IpAddr) -> bool {
        true
    }

    fn connected(&self, _peer: &Peer) {}

    async fn handle(&self, _peer: &Peer, _kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        *self.arrived.lock().unwrap() += 1;
        self.arrival.notify_waiters();
        let _ = self.open.acquire().await;
        (Status::Ok, body)
    }
}

/// `Some(output)` if `f` is ready at its first poll.
fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// A relay carries every request of its clients to a node over one connection, long-polls that
/// wait a minute among them: a roster node's connection is granted more concurrent streams
/// than a client's, so those waiting requests do not hold up the rest.
#[tokio::test]
async fn a_peer_connection_carries_more_waiting_requests_than_a_clients() {
    let peer = IdentityKeypair::generate(&mut ChaCha20Rng::seed_from_u64(21));
    let limits = LinkLimits {
        max_streams_per_connection: 4,
        max_streams_per_peer_connection: 32,
        ..LinkLimits::default()
    };
    let server = serve_with(
        22,
        limits,
        Arc::new(ParkAll::new(vec![peer.public()])),
        Duration::from_secs(1),
    );
    let key = server.identity.public();
    let ask = |conn: &quinn::Connection, n: usize| {
        (0..n)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    allium_link::request(&conn, Kind::Directory, &[i as u8], Deadlines::uniform(T))
                        .await
                })
            })
            .collect::<Vec<_>>()
    };
    let peer_link = node_link(&peer, LinkLimits::default());
    let peer_conn = peer_link.connect(server.addr, &key).await.unwrap();
    let mut waiting = ask(&peer_conn, 20);
    server.echo.until_arrived(20).await;

    let c = client();
    let client_conn = c.connect(server.addr, &key).await.unwrap();
    waiting.extend(ask(&client_conn, 4));
    server.echo.until_arrived(24).await;
    // The client's four streams are all it may open; the peer has room left.
    assert!(ready_now(client_conn.open_bi()).is_none());
    assert!(ready_now(peer_conn.open_bi()).is_some());

    server.echo.open.add_permits(64);
    for w in waiting {
        let (status, _) = w.await.unwrap().unwrap();
        assert_eq!(status, Status::Ok);
    }
    server.stop().await;
}

/// Sets its flag when dropped.
struct Tracked(Vec<u8>, Arc<tokio::sync::Notify>);

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.notify_one();
    }
}

/// A request whose answer takes long (a long-poll) gives up its body, and what its sender keeps
/// with it, once the next hop accepted it, not when the answer comes.
#[tokio::test]
async fn a_held_body_is_given_up_once_the_request_is_accepted() {
    let server = serve_with(
        23,
        LinkLimits::default(),
        Arc::new(ParkAll::new(Vec::new())),
        Duration::from_secs(1),
    );
    let c = client();
    let conn = c
        .connect(server.addr, &server.identity.public())
        .await
        .unwrap();
    let dropped = Arc::new(tokio::sync::Notify::new());
    let asking = {
        let (conn, dropped) = (conn.clone(), dropped.clone());
        tokio::spawn(async move {
            let mut held = Some(Tracked(b"held".to_vec(), dropped));
            let r =
                allium_link::request_held(&conn, Kind::Directory, &mut held, Deadlines::uniform(T))
                    .await;
            (r, held.is_none())
        })
    };
    server.echo.until_arrived(1).await;
    // Dropped while the request still waits for its answer.
    tokio::time::timeout(T, dropped.notified())
        .await
        .expect("the body was held until the answer");
    assert!(!asking.is_finished());
    server.echo.open.add_permits(1);
    let (r, emptied) = asking.await.unwrap();
    assert_eq!(r.unwrap(), (Status::Ok, b"held".to_vec()));
    assert!(emptied);
    server.stop().await;
}
