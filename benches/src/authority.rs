//! `allium-bench authority`: what one publish round costs the directory authority, at a few
//! network sizes, with the real authority code over the real link (whitepaper performance.md,
//! "Authority rounds"; roster.md §6.1, §6.3).
//!
//! Thousands of node processes do not fit one small machine, so the nodes are in-process: each
//! has its own identity, its own QUIC endpoint on loopback and a registered descriptor, and
//! answers directory requests as a node does (a probe with the version it holds, *get roster*
//! with the whole signed roster). The authority (`allium_node::authority::Authority` with its
//! `RosterState`, pool and link, answering *get roster* and *get delta* with the functions the
//! daemon calls) runs alone on a thread of its own, so that thread's CPU time is the authority's
//! work. Its bytes are the UDP bytes of its connections, QUIC framing included.
//!
//! A measured round is what happens when one node changes its descriptor: the authority probes
//! every node and signs the next version, then every node refreshes. It is measured twice:
//! *before* (each probe fetches the whole roster, as `GetRoster { have_version: None }` did;
//! each node then fetches the whole new roster) and *after* (probes and deltas).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use allium_link::{Deadlines, Handler, Kind, Link, LinkLimits, Peer, Pool, Status, TlsIdentity};
use allium_node::authority::{Authority, AuthorityConfig};
use allium_node::directory::{RosterState, SelfDescription, descriptor};
use allium_node::metrics::Metrics;
use allium_node::onion_service::unix_now;
use allium_onion::{Epoch, IdentityKeypair, IdentityPublicKey, OnionKeyCert, OnionSecretKey};
use allium_proto::network::{Authority as NetAuthority, NetworkFile, NetworkParams};
use allium_proto::roster::{DirectoryRequest, DirectoryResponse, RosterHolder};
use rand_core::OsRng;
use tokio::sync::Semaphore;

/// Requests in flight at once when nodes refresh: as many as the authority probes at once.
const REFRESHES: usize = allium_node::authority::KNOWN_PROBES;
const TIMEOUT: Duration = Duration::from_secs(30);

/// One node as the bench simulates it.
struct FakeNode {
    identity: IdentityKeypair,
    addr: SocketAddr,
    pool: Pool,
}

/// What every simulated node holds: the version and the signed roster (shared, not copied).
#[derive(Default)]
struct Shared {
    version: AtomicU64,
    signed: RwLock<Arc<Vec<u8>>>,
}

struct NodeHandler(Arc<Shared>);

impl Handler for NodeHandler {
    type ConnectionGuard = ();
    fn is_peer(&self, _identity: &IdentityPublicKey) -> bool {
        true
    }
    fn may_be_peer(&self, _ip: IpAddr) -> bool {
        true
    }
    fn connected(&self, _peer: &Peer) {}
    async fn handle(&self, _peer: &Peer, kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        let answer = match (kind, DirectoryRequest::decode(&body)) {
            (Kind::Directory, Ok(DirectoryRequest::Probe)) => DirectoryResponse::Alive {
                roster_version: self.0.version.load(Ordering::Relaxed),
            },
            (Kind::Directory, Ok(DirectoryRequest::GetRoster { .. })) => {
                let signed = self.0.signed.read().map(|s| s.clone());
                match signed {
                    Ok(s) => DirectoryResponse::Roster(s.as_ref().clone()),
                    Err(_) => return (Status::Rejected, Vec::new()),
                }
            }
            _ => return (Status::Rejected, Vec::new()),
        };
        (Status::Ok, answer.encode())
    }
}

/// The authority's side of the link: directory answers from its roster state, as the daemon
/// gives them.
struct AuthorityHandler(Arc<RosterState>);

impl Handler for AuthorityHandler {
    type ConnectionGuard = ();
    fn is_peer(&self, identity: &IdentityPublicKey) -> bool {
        self.0.lists(identity)
    }
    fn may_be_peer(&self, _ip: IpAddr) -> bool {
        true
    }
    fn connected(&self, _peer: &Peer) {}
    async fn handle(&self, _peer: &Peer, kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        let answer = match (kind, DirectoryRequest::decode(&body)) {
            (Kind::Directory, Ok(DirectoryRequest::GetRoster { have_version })) => {
                self.0.answer(have_version)
            }
            (Kind::Directory, Ok(DirectoryRequest::GetDelta { from })) => self.0.answer_delta(from),
            (Kind::Directory, Ok(DirectoryRequest::Probe)) => self.0.answer_probe(),
            _ => return (Status::Rejected, Vec::new()),
        };
        (Status::Ok, answer.encode())
    }
}

fn limits(connections: usize) -> LinkLimits {
    LinkLimits {
        max_connections: connections,
        // Keep-alives keep every pooled connection up between rounds.
        idle_timeout: Duration::from_secs(120),
        ..LinkLimits::default()
    }
}

/// CPU time of one thread, nanoseconds (`/proc/<pid>/task/<tid>/schedstat`, first field).
fn thread_cpu_ns(task: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{task}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A thread running one current-thread runtime: everything spawned on it is the authority's.
struct AuthorityThread {
    handle: tokio::runtime::Handle,
    task: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuthorityThread {
    fn start() -> Result<Self, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let task = std::fs::read_link("/proc/thread-self")
                .map(|p| p.display().to_string())
                .map_err(|e| e.to_string());
            let _ = tx.send(task.map(|t| (rt.handle().clone(), t)));
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let (handle, task) = rx.recv().map_err(|e| e.to_string())??;
        Ok(AuthorityThread {
            handle,
            task,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn cpu_ns(&self) -> u64 {
        thread_cpu_ns(&self.task)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        self.handle.spawn(f).await.map_err(|e| e.to_string())
    }
}

impl Drop for AuthorityThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Cost of one phase: the authority thread's CPU and its UDP bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub cpu_s: f64,
    pub sent: u64,
    pub received: u64,
    pub wall_s: f64,
}

impl Cost {
    fn plus(self, o: Cost) -> Cost {
        Cost {
            cpu_s: self.cpu_s + o.cpu_s,
            sent: self.sent + o.sent,
            received: self.received + o.received,
            wall_s: self.wall_s + o.wall_s,
        }
    }
}

/// The results at one network size.
#[derive(Debug, Clone)]
pub struct SizeResult {
    pub nodes: usize,
    pub roster_bytes: usize,
    pub delta_bytes: usize,
    /// Per measured round: (probes before, probes after, refresh before, refresh after).
    pub rounds: Vec<[Cost; 4]>,
}

struct Bench {
    auth: AuthorityThread,
    authority: Arc<Authority>,
    state: Arc<RosterState>,
    auth_pool: Arc<Pool>,
    auth_identity: IdentityPublicKey,
    auth_addr: SocketAddr,
    nodes: Vec<Arc<FakeNode>>,
    shared: Arc<Shared>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

fn node_descriptor(
    id: &IdentityKeypair,
    addr: SocketAddr,
    software: &str,
) -> Result<Vec<u8>, String> {
    // The current and the next epoch's keys, as a node publishes them.
    let epoch = (unix_now() / 3600) as u32;
    let certs = [epoch, epoch + 1]
        .into_iter()
        .map(|e| OnionKeyCert::sign(id, &OnionSecretKey::generate(Epoch(e), &mut OsRng)))
        .collect();
    let me = SelfDescription {
        addresses: vec![addr],
        software: software.into(),
    };
    descriptor(id, &me, certs).map_err(|e| e.to_string())
}

impl Bench {
    async fn start(n: usize) -> Result<Self, String> {
        let auth = AuthorityThread::start()?;
        let me = IdentityKeypair::generate(&mut OsRng);
        let auth_identity = me.public();
        let tls = Arc::new(TlsIdentity::new(&me).map_err(|e| e.to_string())?);
        let loopback: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let cap = n + 64;
        // The authority's endpoint, pool and state live on its thread.
        let (state, authority, auth_pool, auth_addr) = auth
            .run(async move {
                let link = Arc::new(
                    Link::bind_node(loopback, tls, limits(cap)).map_err(|e| e.to_string())?,
                );
                let addr = link.local_addr().map_err(|e| e.to_string())?;
                let network = NetworkFile::new(
                    "bench-net",
                    vec![NetAuthority {
                        identity: auth_identity,
                        address: addr,
                    }],
                    NetworkParams {
                        swarm_size: 5,
                        min_ttl_secs: 10,
                        max_ttl_secs: 1_209_600,
                        epoch_secs: 3600,
                        allow_same_subnet: true,
                        roster_threshold: 1,
                    },
                )
                .map_err(|e| e.to_string())?;
                let state = Arc::new(RosterState::new(network, None, Metrics::new()));
                let pool = Arc::new(Pool::new(link.clone(), TIMEOUT));
                let authority = Arc::new(Authority::new(
                    me,
                    state.clone(),
                    pool.clone(),
                    AuthorityConfig {
                        // Rounds are started by the bench; nothing expires meanwhile.
                        publish_interval: Duration::from_secs(3600),
                        descriptor_ttl: Duration::from_secs(36_000),
                        probe_timeout: TIMEOUT,
                        new_per_address_burst: u32::try_from(cap).unwrap_or(u32::MAX),
                    },
                ));
                let handler = Arc::new(AuthorityHandler(state.clone()));
                tokio::spawn(async move {
                    link.serve(handler, std::future::pending(), Duration::ZERO)
                        .await;
                });
                Ok::<_, String>((state, authority, pool, addr))
            })
            .await??;

        let shared = Arc::new(Shared::default());
        let mut nodes = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for _ in 0..n {
            let identity = IdentityKeypair::generate(&mut OsRng);
            let tls = Arc::new(TlsIdentity::new(&identity).map_err(|e| e.to_string())?);
            let link =
                Arc::new(Link::bind_node(loopback, tls, limits(16)).map_err(|e| e.to_string())?);
            let addr = link.local_addr().map_err(|e| e.to_string())?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let handler = Arc::new(NodeHandler(shared.clone()));
            let serving = link.clone();
            tokio::spawn(async move {
                let stopped = async {
                    let _ = stopped.await;
                };
                serving.serve(handler, stopped, Duration::ZERO).await;
            });
            stops.push(stop);
            nodes.push(Arc::new(FakeNode {
                identity,
                addr,
                pool: Pool::new(link, TIMEOUT),
            }));
        }
        let bench = Bench {
            auth,
            authority,
            state,
            auth_pool,
            auth_identity,
            auth_addr,
            nodes,
            shared,
            stops,
        };
        bench.bootstrap().await?;
        Ok(bench)
    }

    /// Registers every node and publishes rounds until the roster lists them all; then every
    /// node fetches it whole and holds it.
    async fn bootstrap(&self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            let d = node_descriptor(&node.identity, node.addr, "bench")?;
            self.register(d, i).await?;
        }
        let started = Instant::now();
        loop {
            let a = self.authority.clone();
            self.auth.run(async move { a.publish_once().await }).await?;
            let listed = self.state.current().map_or(0, |h| h.roster().nodes().len());
            if listed == self.nodes.len() {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err(format!(
                    "only {listed} of {} nodes admitted",
                    self.nodes.len()
                ));
            }
            // New nodes are probed in the background between rounds.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.refresh(false).await?;
        Ok(())
    }

    async fn register(&self, d: Vec<u8>, i: usize) -> Result<(), String> {
        let a = self.authority.clone();
        let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
        match self.auth.run(async move { a.register(&d, source) }).await? {
            DirectoryResponse::Registered { .. } => Ok(()),
            other => Err(format!("registration refused: {other:?}")),
        }
    }

    /// The nodes now hold the authority's current roster.
    fn hold_current(&self) {
        if let Some(h) = self.state.current() {
            self.shared.version.store(h.version(), Ordering::Relaxed);
            if let Ok(mut s) = self.shared.signed.write() {
                *s = Arc::new(h.signed().to_vec());
            }
        }
    }

    /// Every node asks the authority for the version after the one it holds: the whole roster
    /// (`deltas` false) or a delta. Returns the bytes of the answers' bodies (one of each).
    async fn refresh(&self, deltas: bool) -> Result<usize, String> {
        let held = self.shared.version.load(Ordering::Relaxed);
        let request = if deltas && held > 0 {
            DirectoryRequest::GetDelta { from: held }
        } else {
            DirectoryRequest::GetRoster {
                have_version: (held > 0).then_some(held),
            }
        }
        .encode();
        // One node really takes the answer, as a node does; the others only decode it.
        let check = RosterHolder::new(self.state.network().clone());
        if let Some(signed) = self.shared.signed.read().ok().map(|s| s.clone()) {
            if !signed.is_empty() {
                check.offer(&signed).map_err(|e| e.to_string())?;
            }
        }
        let slots = Arc::new(Semaphore::new(REFRESHES));
        let mut tasks = tokio::task::JoinSet::new();
        for node in &self.nodes {
            let (node, slots, request) = (node.clone(), slots.clone(), request.clone());
            let (id, addr) = (self.auth_identity, self.auth_addr);
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await;
                // A node whose dial failed tries again, as its next refresh would.
                let mut tries = 0;
                loop {
                    let answer = node
                        .pool
                        .request(
                            &id,
                            addr,
                            Kind::Directory,
                            &request,
                            Deadlines::uniform(TIMEOUT),
                        )
                        .await;
                    tries += 1;
                    if answer.is_ok() || tries == 3 {
                        return answer;
                    }
                }
            });
        }
        let mut size = 0;
        let mut first = true;
        while let Some(done) = tasks.join_next().await {
            let (status, body) = done
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if status != Status::Ok {
                return Err("refresh refused".into());
            }
            size = body.len();
            if first {
                first = false;
                match DirectoryResponse::decode(&body).map_err(|e| e.to_string())? {
                    DirectoryResponse::Roster(r) => {
                        check.offer(&r).map_err(|e| e.to_string())?;
                    }
                    DirectoryResponse::Delta(d) => {
                        check.apply_delta(&d).map_err(|e| e.to_string())?;
                    }
                    other => return Err(format!("unexpected refresh answer {other:?}")),
                }
                let want = self.state.current().map(|h| h.signed().to_vec());
                if check.current().map(|h| h.signed().to_vec()) != want {
                    return Err("a refreshed node does not hold the authority's roster".into());
                }
            }
        }
        self.hold_current();
        Ok(size)
    }

    /// The old probe: every node of the roster asked for the whole roster, through the
    /// authority's pool, as many at once as a round probes.
    async fn legacy_probes(&self) -> Result<(), String> {
        let pool = self.auth_pool.clone();
        let targets: Vec<(IdentityPublicKey, SocketAddr)> = self
            .nodes
            .iter()
            .map(|n| (n.identity.public(), n.addr))
            .collect();
        self.auth
            .run(async move {
                let slots = Arc::new(Semaphore::new(allium_node::authority::KNOWN_PROBES));
                let probe = DirectoryRequest::GetRoster { have_version: None }.encode();
                let mut tasks = tokio::task::JoinSet::new();
                for (id, addr) in targets {
                    let (pool, slots, probe) = (pool.clone(), slots.clone(), probe.clone());
                    tasks.spawn(async move {
                        let _slot = slots.acquire_owned().await;
                        pool.request(
                            &id,
                            addr,
                            Kind::Directory,
                            &probe,
                            Deadlines::uniform(TIMEOUT),
                        )
                        .await
                        .map(|(s, _)| s == Status::Ok)
                    });
                }
                let mut ok = 0;
                while let Some(done) = tasks.join_next().await {
                    if matches!(done, Ok(Ok(true))) {
                        ok += 1;
                    }
                }
                ok
            })
            .await
            .and_then(|ok| {
                if ok == self.nodes.len() {
                    Ok(())
                } else {
                    Err(format!(
                        "{ok} of {} legacy probes answered",
                        self.nodes.len()
                    ))
                }
            })
    }

    /// Bytes of the authority's connections: its pool (probes) and the nodes' pools (what the
    /// nodes sent it and received from it).
    async fn authority_bytes(&self) -> (u64, u64) {
        let (mut sent, mut received) = self.auth_pool.traffic().await;
        for n in &self.nodes {
            let (to_auth, from_auth) = n.pool.traffic().await;
            sent += from_auth;
            received += to_auth;
        }
        (sent, received)
    }

    async fn measure<F, T>(&self, f: F) -> Result<(Cost, T), String>
    where
        F: Future<Output = Result<T, String>>,
    {
        let (s0, r0) = self.authority_bytes().await;
        let c0 = self.auth.cpu_ns();
        let t0 = Instant::now();
        let out = f.await?;
        let wall_s = t0.elapsed().as_secs_f64();
        let c1 = self.auth.cpu_ns();
        let (s1, r1) = self.authority_bytes().await;
        Ok((
            Cost {
                cpu_s: (c1.saturating_sub(c0)) as f64 / 1e9,
                sent: s1.saturating_sub(s0),
                received: r1.saturating_sub(r0),
                wall_s,
            },
            out,
        ))
    }

    /// One node publishes a new descriptor (a new software version), as a change of a round.
    async fn change(&self, round: usize) -> Result<(), String> {
        let i = round % self.nodes.len();
        let node = &self.nodes[i];
        let d = node_descriptor(&node.identity, node.addr, &format!("bench-{round}"))?;
        self.register(d, i).await
    }

    /// A round with a change, published by the real round: returns its cost and whether a new
    /// version came out.
    async fn round(&self) -> Result<Cost, String> {
        let before = self.state.version();
        let a = self.authority.clone();
        let auth = &self.auth;
        let (cost, ()) = self
            .measure(async move { auth.run(async move { a.publish_once().await }).await })
            .await?;
        if self.state.version() == before {
            return Err("the round published no new version".into());
        }
        Ok(cost)
    }

    fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
    }
}

/// Measures `rounds` rounds at each size.
pub async fn run(sizes: &[usize], rounds: usize) -> Result<Vec<SizeResult>, String> {
    let mut out = Vec::new();
    for &n in sizes {
        let bench = Bench::start(n).await?;
        let roster_bytes = bench.state.current().map_or(0, |h| h.signed().len());
        let mut result = SizeResult {
            nodes: n,
            roster_bytes,
            delta_bytes: 0,
            rounds: Vec::new(),
        };
        for r in 0..rounds {
            // Before: the old probes (whole roster each), the round, the whole roster to each.
            bench.change(2 * r).await?;
            let (legacy, ()) = bench.measure(bench.legacy_probes()).await?;
            let publish = bench.round().await?;
            let (full, _) = bench.measure(bench.refresh(false)).await?;
            // After: the round (probes), then a delta to each.
            bench.change(2 * r + 1).await?;
            let probes = bench.round().await?;
            let (delta, size) = bench.measure(bench.refresh(true)).await?;
            result.delta_bytes = size;
            result
                .rounds
                .push([legacy.plus(publish), probes, full, delta]);
        }
        println!("{}", result.line());
        out.push(result);
        bench.stop();
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

impl SizeResult {
    fn med(&self, phase: usize, f: impl Fn(&Cost) -> f64) -> f64 {
        median(self.rounds.iter().map(|r| f(&r[phase])).collect())
    }

    /// One line: per round (medians), before and after, CPU seconds and MB sent/received.
    pub fn line(&self) -> String {
        let mb = |x: f64| x / 1e6;
        let total = |a: usize, b: usize, f: &dyn Fn(&Cost) -> f64| self.med(a, f) + self.med(b, f);
        let cpu = |c: &Cost| c.cpu_s;
        let sent = |c: &Cost| c.sent as f64;
        let recv = |c: &Cost| c.received as f64;
        format!(
            "nodes {:>5}  roster {:>8} B  delta {:>6} B | before: probes {:.3} s cpu, {:.1} MB in; refresh {:.3} s cpu, {:.1} MB out; round {:.3} s cpu, {:.1} MB out, {:.1} MB in | after: probes {:.3} s cpu, {:.3} MB in, {:.3} MB out; refresh {:.3} s cpu, {:.3} MB out; round {:.3} s cpu, {:.3} MB out, {:.3} MB in",
            self.nodes,
            self.roster_bytes,
            self.delta_bytes,
            self.med(0, cpu),
            mb(self.med(0, recv)),
            self.med(2, cpu),
            mb(self.med(2, sent)),
            total(0, 2, &cpu),
            mb(total(0, 2, &sent)),
            mb(total(0, 2, &recv)),
            self.med(1, cpu),
            mb(self.med(1, recv)),
            mb(self.med(1, sent)),
            self.med(3, cpu),
            mb(self.med(3, sent)),
            total(1, 3, &cpu),
            mb(total(1, 3, &sent)),
            mb(total(1, 3, &recv)),
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        let phase = |i: usize| {
            serde_json::json!({
                "cpu_s": self.med(i, |c| c.cpu_s),
                "bytes_sent": self.med(i, |c| c.sent as f64),
                "bytes_received": self.med(i, |c| c.received as f64),
                "wall_s": self.med(i, |c| c.wall_s),
            })
        };
        serde_json::json!({
            "nodes": self.nodes,
            "roster_bytes": self.roster_bytes,
            "delta_bytes": self.delta_bytes,
            "rounds": self.rounds.len(),
            "before": { "probes_and_publish": phase(0), "refresh": phase(2) },
            "after": { "probes_and_publish": phase(1), "refresh": phase(3) },
        })
    }
}
