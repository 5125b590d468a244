//! `allium-bench longpoll`: what parked long-polls cost the node they wait at. Sequential stores
//! through 0 relays to one member of a swarm, timed first with nothing parked there, then with
//! `--parked` long-poll retrieves waiting at that member, in the same run; and the member's
//! memory and threads (`/proc/<pid>/status`) in both states (whitepaper storage §4.2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
            threads: number("Threads")?,
        })
    }

    fn to_json(self) -> Value {
        json!({ "rss_kib": self.rss_kib, "threads": self.threads })
    }
}

/// Everything the series measured.
#[derive(Debug)]
pub struct Longpoll {
    pub parked: usize,
    pub idle: Latencies,
    pub loaded: Latencies,
    /// Stores not acknowledged, with none and with the long-polls parked.
    pub errors: [u64; 2],
    pub first_error: Option<String>,
    pub idle_status: ProcStatus,
    /// Right after the stores with the long-polls parked.
    pub loaded_status: ProcStatus,
    /// After the long-polls had been parked for [`SETTLE`], and how many were parked then.
    pub settled_status: ProcStatus,
    pub settled_parked: u64,
    /// Long-polls that came back while the stores ran (their wait ran out) and were sent again.
    pub reparked: u64,
    pub swarm: usize,
}

impl Longpoll {
    pub fn ratio_p99(&self) -> f64 {
        self.loaded.ms(0.99) / self.idle.ms(0.99).max(1e-9)
    }

    pub fn print(&self, header: &str) {
        println!();
        println!("{header}");
        println!(
            "stores through 0 relays to one member of a swarm of {}, acknowledged by a majority; \
             long-polls parked at the same member",
            self.swarm
        );
        println!();
        println!(
            "{:<8} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
            "parked",
            "samples",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "RSS MiB",
            "threads"
        );
        for (parked, l, status, errors) in [
            (0, &self.idle, self.idle_status, self.errors[0]),
            (
                self.parked,
                &self.loaded,
                self.loaded_status,
                self.errors[1],
            ),
        ] {
            let s = l.summary();
            println!(
                "{parked:<8} {:>7} {errors:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>10.1} {:>8}",
                s.count,
                s.p50,
                s.p90,
                s.p99,
                s.max,
                status.rss_kib as f64 / 1024.0,
                status.threads
            );
        }
        println!(
            "{} parked for {} s ({} parked at that moment): RSS {:.1} MiB, {} threads",
            self.parked,
            SETTLE.as_secs(),
            self.settled_parked,
            self.settled_status.rss_kib as f64 / 1024.0,
            self.settled_status.threads
        );
        println!();
        println!(
            "p99 with {} parked / p99 with none = {:.2} (goal ≤ 2: {}); p50 ratio {:.2}; {} long-polls re-sent after their wait ran out",
            self.parked,
            self.ratio_p99(),
            if self.ratio_p99() <= 2.0 {
                "met"
            } else {
                "NOT met"
            },
            self.loaded.ms(0.5) / self.idle.ms(0.5).max(1e-9),
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
            "node_after_parked_seconds": {
                "seconds": SETTLE.as_secs(),
                "parked_then": self.settled_parked,
                "node": self.settled_status.to_json(),
            },
            "first_error": self.first_error,
            "reparked": self.reparked,
            "p99_ratio": self.ratio_p99(),
            "p50_ratio": self.loaded.ms(0.5) / self.idle.ms(0.5).max(1e-9),
            "goal": { "target": "p99 with the long-polls parked ≤ 2 × p99 with none", "met": self.ratio_p99() <= 2.0 },
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

/// Runs the series against `roster`, parking at the member `target` names.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    roster: &Roster,
    epoch: allium_onion::Epoch,
    target_of: impl Fn(&allium_onion::IdentityPublicKey) -> Option<Target>,
    parked: usize,
    n: usize,
    warmup: usize,
    size: usize,
    template: &Latencies,
) -> Result<Longpoll, String> {
    let writer = Identity::generate();
    let mailbox = Mailbox::from_bytes(writer.public().to_bytes());
    let members = roster.members_for(&mailbox);
    let swarm = members.len();
    let dest = *members.first().ok_or("no swarm for the mailbox")?;
    let target = target_of(&dest.identity).ok_or("the destination is not a node started here")?;
    let dest_hop = hop(dest, epoch).ok_or("the destination has no onion key for this epoch")?;
    let path = vec![dest_hop.clone()];
    // A mailbox of the same swarm for the listeners, so their long-polls park at `dest`.
    let listener = loop {
        let key = SigningKey::from_bytes(&Identity::generate().seed());
        let mb = Mailbox::from_bytes(key.verifying_key().to_bytes());
        if roster
            .members_for(&mb)
            .iter()
            .any(|m| m.identity == dest.identity)
        {
            break key;
        }
    };
    let listened = Mailbox::from_bytes(listener.verifying_key().to_bytes());

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
    let stop = Arc::new(AtomicBool::new(false));
    let reparked = Arc::new(AtomicU64::new(0));
    let stamp = Arc::new(Stamp::default());
    let listener = Arc::new(listener);
    let clients = (0..parked.div_ceil(PER_CONNECTION))
        .map(|_| OnionClient::new(([127, 0, 0, 1], 0).into()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let polls: Vec<JoinHandle<Result<(), String>>> = (0..parked)
        .map(|i| {
            let client = clients[i / PER_CONNECTION].clone();
            let (path, dest_hop) = (path.clone(), dest_hop.clone());
            let (stop, reparked) = (stop.clone(), reparked.clone());
            let (stamp, listener) = (stamp.clone(), listener.clone());
            tokio::spawn(async move {
                loop {
                    let request =
                        retrieve_request(&listener, &dest_hop, &stamp, None, 1, Some(MAX_WAIT_MS));
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
                        Ok(ResponseBody::Retrieve(_)) if stop.load(Ordering::Relaxed) => {
                            return Ok(());
                        }
                        Ok(ResponseBody::Retrieve(_)) => {
                            reparked.fetch_add(1, Ordering::Relaxed);
                        }
                        other => return Err(format!("long-poll answered {other:?}")),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let all_parked = loop {
        let now = parked_now(target.metrics).await?;
        if now >= parked as u64 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {now} of {parked} long-polls parked within 60 s"
            ));
        }
        if polls.iter().any(|p| p.is_finished()) {
            return Err("a long-poll ended before anything was stored".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut loaded = template.fresh();
    let label = format!("store, {parked} parked");
    let (e1, f1) = stores.run(n, &mut loaded, &label).await;
    let loaded_status = ProcStatus::read(target.pid).unwrap_or_default();
    tokio::time::sleep_until((all_parked + SETTLE).into()).await;
    let settled_status = ProcStatus::read(target.pid).unwrap_or_default();
    let settled_parked = parked_now(target.metrics).await?;

    // One message for the listened mailbox answers every long-poll.
    stop.store(true, Ordering::Relaxed);
    let r = call(
        &client,
        &path,
        &store_request(listened, message(size)),
        Method::Store,
        SizeClass::Small,
        TIMEOUT,
    )
    .await;
    acknowledged(r, swarm)?;
    for p in polls {
        match tokio::time::timeout(Duration::from_millis(MAX_WAIT_MS) + TIMEOUT, p).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("a long-poll was never answered".into()),
        }
    }
    Ok(Longpoll {
        parked,
        idle,
        loaded,
        errors: [e0, e1],
        first_error: f0.or(f1),
        idle_status,
        loaded_status,
        settled_status,
        settled_parked,
        reparked: reparked.load(Ordering::Relaxed),
        swarm,
    })
}
