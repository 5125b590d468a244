//! `allium-bench longpoll`: what parked long-polls cost the node they wait at. Sequential stores
//! through 0 relays to one member of a swarm, timed first with nothing parked there, then with
//! `--parked` long-poll retrieves waiting at that member (one per mailbox, as listening users
//! hold them), in the same run; then stores to some of the parked mailboxes, each timed until
//! its long-poll answers; and the member's memory and threads (`/proc/<pid>/status`) throughout
//! (whitepaper storage §4.2, performance.md §10).
//!
//! The long-polls are onion packets of one layer sent straight to the member, 250 on each client
//! connection: the member peels, checks and parks each as it would one delivered by an exit
//! relay, while the clients stay cheap enough to share two cores with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allium_client::identity::Identity;
use allium_client::onion::{Hop, OnionClient, hop};
use allium_onion::SizeClass;
use allium_proto::roster::Roster;
use allium_proto::storage::MAX_WAIT_MS;
use allium_proto::{Mailbox, Method, ResponseBody};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::machine::proc_field;
use crate::net::{Stamp, acknowledged, call, message, retrieve_request, store_request};
use crate::stats::{Latencies, Summary};

/// Long-polls per client connection: under the link's 256 streams per connection.
const PER_CONNECTION: usize = 250;
/// Long-polls sent at once while parking.
const BATCH: usize = 1_000;
/// Bound on one store's round trip.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the long-polls have been parked when the node is looked at again: past the 10 s
/// after which tokio retires idle blocking threads, such as those the burst of arriving
/// requests used for their short reads.
const SETTLE: Duration = Duration::from_secs(15);

/// The node long-polls park at, as the bench reaches it.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub pid: u32,
    pub metrics: SocketAddr,
}

/// Memory and threads of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStatus {
    pub rss_kib: u64,
    /// The most resident memory the process has had so far (`VmHWM`).
    pub hwm_kib: u64,
    pub threads: u64,
}

impl ProcStatus {
    fn read(pid: u32) -> Option<ProcStatus> {
        let file = format!("/proc/{pid}/status");
        let number = |key| {
            proc_field(&file, key)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        };
        Some(ProcStatus {
            rss_kib: number("VmRSS")?,
            hwm_kib: number("VmHWM")?,
            threads: number("Threads")?,
        })
    }

    fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }

    fn to_json(self) -> Value {
        json!({ "rss_kib": self.rss_kib, "hwm_kib": self.hwm_kib, "threads": self.threads })
    }
}

/// Memory a node holding the long-polls may use (issue #21): 256 MiB.
pub const RSS_GOAL_KIB: u64 = 256 * 1024;

/// Everything the series measured.
#[derive(Debug)]
pub struct Longpoll {
    pub parked: usize,
    pub idle: Latencies,
    pub loaded: Latencies,
    /// A store to one of the parked mailboxes: from sending it to that mailbox's long-poll
    /// answering with it.
    pub wake: Latencies,
    /// The same wake-ups, from the store's acknowledgement to the answer (zero when the answer
    /// came first: the poll wakes once the message is durable here, the store's acknowledgement
    /// waits for a majority of the swarm as well).
    pub wake_after_ack: Latencies,
    /// Stores not acknowledged, with none and with the long-polls parked; wake-ups that failed.
    pub errors: [u64; 3],
    pub first_error: Option<String>,
    /// Seconds from sending the first long-poll to the node's gauge counting all of them.
    pub park_seconds: f64,
    pub idle_status: ProcStatus,
    /// Once every long-poll was parked, before the stores.
    pub parked_status: ProcStatus,
    /// Right after the stores with the long-polls parked.
    pub loaded_status: ProcStatus,
    /// After the long-polls had been parked for [`SETTLE`], and how many were parked then.
    pub settled_status: ProcStatus,
    pub settled_parked: u64,
    /// After the wake-ups, with the rest still parked.
    pub final_status: ProcStatus,
    /// Long-polls that came back empty (their wait ran out) and were sent again.
    pub reparked: u64,
    pub swarm: usize,
    /// Relays in front of the member on every path.
    pub relays: usize,
}

impl Longpoll {
    pub fn ratio_p99(&self) -> f64 {
        self.loaded.ms(0.99) / self.idle.ms(0.99).max(1e-9)
    }

    /// Wake-up p99 over the idle store p99.
    pub fn wake_ratio_p99(&self) -> f64 {
        self.wake.ms(0.99) / self.idle.ms(0.99).max(1e-9)
    }

    /// The most resident memory seen while the long-polls were parked.
    pub fn peak_rss_kib(&self) -> u64 {
        [
            self.parked_status,
            self.loaded_status,
            self.settled_status,
            self.final_status,
        ]
        .iter()
        .map(|s| s.rss_kib.max(s.hwm_kib))
        .max()
        .unwrap_or(0)
    }

    pub fn print(&self, header: &str) {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!();
        println!("{header}");
        println!(
            "stores through {} relays to one member of a swarm of {}, acknowledged by a majority; \
             {} long-polls parked at the same member through {} relays, one per mailbox{}",
            self.relays,
            self.swarm,
            self.parked,
            self.relays,
            if self.relays > 0 {
                ", their paths starting at every other node in turn"
            } else {
                ""
            }
        );
        println!();
        println!(
            "{:<22} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}",
            "series", "samples", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (label, l, errors) in [
            ("store, 0 parked".to_string(), &self.idle, self.errors[0]),
            (
                format!("store, {} parked", self.parked),
                &self.loaded,
                self.errors[1],
            ),
            (
                "wake: store → answer".to_string(),
                &self.wake,
                self.errors[2],
            ),
            ("wake: ack → answer".to_string(), &self.wake_after_ack, 0),
        ] {
            let s = l.summary();
            println!(
                "{label:<22} {:>7} {errors:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                s.count, s.p50, s.p90, s.p99, s.max
            );
        }
        println!();
        println!(
            "{:<34} {:>9} {:>9} {:>8}",
            "node", "RSS MiB", "peak MiB", "threads"
        );
        for (label, s) in [
            ("idle".to_string(), self.idle_status),
            (
                format!("all parked ({:.1} s to park)", self.park_seconds),
                self.parked_status,
            ),
            ("after the stores".to_string(), self.loaded_status),
            (
                format!(
                    "parked {} s ({} parked then)",
                    SETTLE.as_secs(),
                    self.settled_parked
                ),
                self.settled_status,
            ),
            ("after the wake-ups".to_string(), self.final_status),
        ] {
            println!(
                "{label:<34} {:>9.1} {:>9.1} {:>8}",
                ProcStatus::mib(s.rss_kib),
                ProcStatus::mib(s.hwm_kib),
                s.threads
            );
        }
        println!();
        let peak = self.peak_rss_kib();
        println!(
            "peak RSS with {} parked: {:.1} MiB (goal ≤ 256 MiB: {}); above idle: {:.1} KiB per parked long-poll",
            self.parked,
            ProcStatus::mib(peak),
            met(peak <= RSS_GOAL_KIB),
            self.settled_status
                .rss_kib
                .saturating_sub(self.idle_status.rss_kib) as f64
                / self.parked.max(1) as f64
        );
        println!(
            "store p99 with {} parked / with none = {:.2} (goal ≤ 2: {}); p50 ratio {:.2}",
            self.parked,
            self.ratio_p99(),
            met(self.ratio_p99() <= 2.0),
            self.loaded.ms(0.5) / self.idle.ms(0.5).max(1e-9),
        );
        println!(
            "wake-up p99 / idle store p99 = {:.2} (goal ≤ 2: {}); {} long-polls re-sent after their wait ran out",
            self.wake_ratio_p99(),
            met(self.wake_ratio_p99() <= 2.0),
            self.reparked
        );
    }

    pub fn to_json(&self) -> Value {
        let series = |parked: usize, s: Summary, errors: u64, status: ProcStatus| {
            json!({
                "parked": parked,
                "latency": s.to_json(),
                "errors": errors,
                "node": status.to_json(),
            })
        };
        json!({
            "series": [
                series(0, self.idle.summary(), self.errors[0], self.idle_status),
                series(self.parked, self.loaded.summary(), self.errors[1], self.loaded_status),
            ],
            "wake": {
                "store_to_answer": self.wake.summary().to_json(),
                "ack_to_answer": self.wake_after_ack.summary().to_json(),
                "errors": self.errors[2],
            },
            "park_seconds": self.park_seconds,
            "node_all_parked": self.parked_status.to_json(),
            "node_after_parked_seconds": {
                "seconds": SETTLE.as_secs(),
                "parked_then": self.settled_parked,
                "node": self.settled_status.to_json(),
            },
            "node_after_wakes": self.final_status.to_json(),
            "peak_rss_kib": self.peak_rss_kib(),
            "first_error": self.first_error,
            "reparked": self.reparked,
            "p99_ratio": self.ratio_p99(),
            "p50_ratio": self.loaded.ms(0.5) / self.idle.ms(0.5).max(1e-9),
            "wake_p99_over_idle_store_p99": self.wake_ratio_p99(),
            "goals": [
                { "target": "p99 with the long-polls parked ≤ 2 × p99 with none", "met": self.ratio_p99() <= 2.0 },
                { "target": "wake-up p99 ≤ 2 × idle store p99", "met": self.wake_ratio_p99() <= 2.0 },
                { "target": "node RSS ≤ 256 MiB with the long-polls parked", "met": self.peak_rss_kib() <= RSS_GOAL_KIB },
            ],
        })
    }
}

async fn parked_now(metrics: SocketAddr) -> Result<u64, String> {
    let page = allium_node::http::get(metrics, "/metrics")
        .await
        .map_err(|e| format!("reading the node's metrics: {e}"))?
        .1;
    Ok(page
        .lines()
        .find(|l| l.split(' ').next() == Some("allium_longpolls_parked"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Where the timed stores go.
struct Stores<'a> {
    client: &'a OnionClient,
    path: &'a [Hop],
    mailbox: Mailbox,
    swarm: usize,
    size: usize,
}

impl Stores<'_> {
    /// `n` sequential stores of distinct messages; the errors and the first of them.
    async fn run(&self, n: usize, out: &mut Latencies, label: &str) -> (u64, Option<String>) {
        let (mut errors, mut first) = (0, None);
        let step = (n / 20).max(1);
        for i in 0..n {
            let t = Instant::now();
            let r = call(
                self.client,
                self.path,
                &store_request(self.mailbox, message(self.size)),
                Method::Store,
                SizeClass::Small,
                TIMEOUT,
            )
            .await;
            match acknowledged(r, self.swarm) {
                Ok(()) => out.record(t.elapsed()),
                Err(e) => {
                    errors += 1;
                    first.get_or_insert(e);
                }
            }
            if i % step == 0 || i + 1 == n {
                eprint!(
                    "\r  {label:<28} {:>6}/{n}  p50 {:>7.3} ms",
                    i + 1,
                    out.ms(0.5)
                );
            }
        }
        eprintln!();
        (errors, first)
    }
}

/// A key whose mailbox `dest` is a member of the swarm of, so its long-poll parks there.
fn listener_at(roster: &Roster, dest: &allium_onion::IdentityPublicKey) -> SigningKey {
    loop {
        let key = SigningKey::from_bytes(&Identity::generate().seed());
        let mb = Mailbox::from_bytes(key.verifying_key().to_bytes());
        if roster.members_for(&mb).iter().any(|m| m.identity == *dest) {
            return key;
        }
    }
}

/// When a listener's long-poll was answered with a message, and that message's bytes.
type Answered = Result<(Instant, Vec<u8>), String>;

/// One listener's long-poll, sent again whenever its wait runs out, until it is answered with
/// a message: then when, and that message's bytes.
async fn listen(
    client: Arc<OnionClient>,
    path: Vec<Hop>,
    key: SigningKey,
    stamp: Arc<Stamp>,
    reparked: Arc<AtomicU64>,
) -> Answered {
    let dest = path.last().ok_or("empty path")?.clone();
    loop {
        let request = retrieve_request(&key, &dest, &stamp, None, 1, Some(MAX_WAIT_MS));
        let r = call(
            &client,
            &path,
            &request,
            Method::Retrieve,
            SizeClass::Small,
            Duration::from_millis(MAX_WAIT_MS) + TIMEOUT,
        )
        .await?;
        match r.result {
            Ok(ResponseBody::Retrieve(mut r)) => match r.messages.pop() {
                Some(m) => return Ok((Instant::now(), m.data)),
                None => {
                    reparked.fetch_add(1, Ordering::Relaxed);
                }
            },
            other => return Err(format!("long-poll answered {other:?}")),
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Long-polls to park, one per mailbox.
    pub parked: usize,
    /// Timed stores in each series.
    pub stores: usize,
    /// Stores to parked mailboxes, each timed until its long-poll answers.
    pub wakes: usize,
    /// Relays in front of the member on every path.
    pub relays: usize,
    pub warmup: usize,
    /// Message bytes.
    pub size: usize,
}

/// Runs the series against `roster`, parking at the member `target` names: `parked`
/// long-polls, one per mailbox, then `wakes` stores to some of those mailboxes.
pub async fn run(
    roster: &Roster,
    epoch: allium_onion::Epoch,
    target_of: impl Fn(&allium_onion::IdentityPublicKey) -> Option<Target>,
    plan: Plan,
    template: &Latencies,
) -> Result<Longpoll, String> {
    let Plan {
        parked,
        stores: n,
        wakes,
        relays,
        warmup,
        size,
    } = plan;
    let writer = Identity::generate();
    let mailbox = Mailbox::from_bytes(writer.public().to_bytes());
    let members = roster.members_for(&mailbox);
    let swarm = members.len();
    let dest = *members.first().ok_or("no swarm for the mailbox")?;
    let target = target_of(&dest.identity).ok_or("the destination is not a node started here")?;
    let dest_hop = hop(dest, epoch).ok_or("the destination has no onion key for this epoch")?;
    // Every other node relays; path `i` starts at the `i`-th, so the long-polls reach the
    // member through every one of them as exit, as a network's clients would.
    let others = roster
        .nodes()
        .iter()
        .filter(|m| m.identity != dest.identity)
        .map(|m| hop(m, epoch).ok_or("a node has no onion key for this epoch"))
        .collect::<Result<Vec<Hop>, _>>()?;
    if relays > others.len() {
        return Err(format!(
            "{relays} relays asked for, {} nodes besides the destination",
            others.len()
        ));
    }
    let path_at = |i: usize| -> Vec<Hop> {
        (0..relays)
            .map(|j| others[(i + j) % others.len()].clone())
            .chain([dest_hop.clone()])
            .collect()
    };
    let path = path_at(0);
    // Listeners are users of `dest`'s swarm: every one of their mailboxes is held there.
    let listeners: Vec<SigningKey> = (0..parked)
        .map(|_| listener_at(roster, &dest.identity))
        .collect();
    let listened: Vec<Mailbox> = listeners
        .iter()
        .map(|k| Mailbox::from_bytes(k.verifying_key().to_bytes()))
        .collect();

    let client = OnionClient::new(([127, 0, 0, 1], 0).into()).map_err(|e| e.to_string())?;
    let stores = Stores {
        client: &client,
        path: &path,
        mailbox,
        swarm,
        size,
    };
    let mut warm = template.fresh();
    let (errors, first) = stores.run(warmup, &mut warm, "warm-up").await;
    if errors * 2 > warmup as u64 {
        return Err(format!(
            "warm-up: {errors} of {warmup} stores failed, first: {}",
            first.unwrap_or_default()
        ));
    }
    let mut idle = template.fresh();
    let (e0, f0) = stores.run(n, &mut idle, "store, 0 parked").await;
    let idle_status = ProcStatus::read(target.pid).unwrap_or_default();

    eprintln!("  parking {parked} long-polls …");
    let reparked = Arc::new(AtomicU64::new(0));
    let stamp = Arc::new(Stamp::default());
    let clients = (0..parked.div_ceil(PER_CONNECTION))
        .map(|_| OnionClient::new(([127, 0, 0, 1], 0).into()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Listeners arrive a batch at a time, the next once the last is parked: ten thousand
    // packets in one instant would be a flood that guards answer with their accept time-out.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut listeners = listeners.into_iter().enumerate();
    let mut polls: Vec<Option<JoinHandle<Answered>>> = Vec::with_capacity(parked);
    let all_parked = loop {
        let sent = polls.len();
        let now = parked_now(target.metrics).await?;
        if now >= parked as u64 {
            break Instant::now();
        }
        if now >= sent as u64 {
            polls.extend(listeners.by_ref().take(BATCH).map(|(i, key)| {
                Some(tokio::spawn(listen(
                    clients[i / PER_CONNECTION].clone(),
                    path_at(i),
                    key,
                    stamp.clone(),
                    reparked.clone(),
                )))
            }));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {now} of {parked} long-polls parked within 120 s"
            ));
        }
        if let Some(p) = polls
            .iter_mut()
            .find(|p| p.as_ref().is_some_and(|p| p.is_finished()))
        {
            let why = match p.take() {
                Some(p) => match p.await {
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => "it was answered with a message".into(),
                    Err(e) => e.to_string(),
                },
                None => String::new(),
            };
            return Err(format!(
                "a long-poll ended before anything was stored: {why}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let park_seconds = (all_parked - started).as_secs_f64();
    let parked_status = ProcStatus::read(target.pid).unwrap_or_default();
    let mut loaded = template.fresh();
    let label = format!("store, {parked} parked");
    let (e1, f1) = stores.run(n, &mut loaded, &label).await;
    let loaded_status = ProcStatus::read(target.pid).unwrap_or_default();
    tokio::time::sleep_until((all_parked + SETTLE).into()).await;
    let settled_status = ProcStatus::read(target.pid).unwrap_or_default();
    let settled_parked = parked_now(target.metrics).await?;

    // Wake-ups: a store to one parked mailbox at a time, spread over them; the rest stay parked.
    let (mut wake, mut wake_after_ack) = (template.fresh(), template.fresh());
    let (mut e2, mut f2) = (0, None);
    let wakes = wakes.min(parked);
    for j in 0..wakes {
        let k = j * parked / wakes;
        let Some(poll) = polls[k].take() else {
            continue;
        };
        let data = message(size);
        let sent = Instant::now();
        let r = call(
            &client,
            &path,
            &store_request(listened[k], data.clone()),
            Method::Store,
            SizeClass::Small,
            TIMEOUT,
        )
        .await;
        let acked = Instant::now();
        let outcome = match acknowledged(r, swarm) {
            Err(e) => Err(format!("wake-up store: {e}")),
            Ok(()) => match tokio::time::timeout(TIMEOUT, poll).await {
                Ok(Ok(Ok((at, got)))) if got == data => Ok(at),
                Ok(Ok(Ok(_))) => Err("a long-poll was answered with another message".into()),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("a parked long-poll was not answered within 10 s".into()),
            },
        };
        match outcome {
            Ok(at) => {
                wake.record(at - sent);
                wake_after_ack.record(at.saturating_duration_since(acked));
            }
            Err(e) => {
                e2 += 1;
                f2.get_or_insert(e);
            }
        }
    }
    if wakes > 0 {
        eprintln!(
            "  {wakes} wake-ups: store → answer p50 {:.3} ms, p99 {:.3} ms",
            wake.ms(0.5),
            wake.ms(0.99)
        );
    }
    let final_status = ProcStatus::read(target.pid).unwrap_or_default();
    // The others are left parked: stopping the network answers them.
    for p in polls.into_iter().flatten() {
        p.abort();
    }
    Ok(Longpoll {
        parked,
        idle,
        loaded,
        wake,
        wake_after_ack,
        errors: [e0, e1, e2],
        first_error: f0.or(f1).or(f2),
        park_seconds,
        idle_status,
        parked_status,
        loaded_status,
        settled_status,
        settled_parked,
        final_status,
        reparked: reparked.load(Ordering::Relaxed),
        swarm,
        relays,
    })
}
