//! `allium-bench relay`: what one relay costs per packet, on a core of its own. One node of the
//! devnet relays every request (`[relay, destination]` paths); it is started on one core, as an
//! operator pins a node (so its runtime has one worker), and every other process of the run —
//! the bench's clients, the destinations, the authority — is pinned to the other, which makes
//! the load. Measured in one run: packets relayed per second, the relay's CPU
//! time per packet (from `/proc`), and the floor of a relayed packet from the same run's
//! primitives (whitepaper performance.md, "Relay capacity per core").

use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_client::onion::{Hop, OnionClient, hop};
use allium_onion::{Epoch, IdentityPublicKey, SizeClass};
use allium_proto::roster::Roster;
use allium_proto::{Body, Method, Request, ResponseBody};
use serde_json::{Value, json};

use crate::floor::{cpu_time, quic_round_trip_cpu};
use crate::stats::Latencies;

/// Bound on one request's round trip.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Round trips of the link-cost measurement, and how many at once.
const LINK_ROUND_TRIPS: usize = 20_000;
const LINK_IN_FLIGHT: usize = 16;

/// What the relay costs, and its floor.
#[derive(Debug)]
pub struct RelayRun {
    pub concurrency: usize,
    /// Path session packets (no key agreement at the relay) rather than onion packets.
    pub sessions: bool,
    pub seconds: f64,
    pub packets: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub relay_cpu: Duration,
    /// CPU time of every other process of the run (the other core's load), for the record.
    pub others_cpu: Duration,
    pub latencies: Latencies,
    pub x25519: Duration,
    pub aead: Duration,
    pub link_cpu: Duration,
}

impl RelayRun {
    pub fn packets_per_second(&self) -> f64 {
        self.packets as f64 / self.seconds.max(1e-9)
    }

    /// The relay's CPU time per relayed packet, µs.
    pub fn cpu_us_per_packet(&self) -> f64 {
        self.relay_cpu.as_secs_f64() * 1e6 / (self.packets.max(1) as f64)
    }

    /// Share of its core the relay used.
    pub fn busy(&self) -> f64 {
        self.relay_cpu.as_secs_f64() / self.seconds.max(1e-9)
    }

    /// The least CPU a relayed packet needs: peeling its layer (one X25519 — none for a path
    /// session's packet — and one AEAD over the packet), wrapping the reply (one AEAD), and the
    /// link's receive and send of both.
    pub fn floor_us(&self) -> f64 {
        let x25519 = if self.sessions {
            Duration::ZERO
        } else {
            self.x25519
        };
        (x25519 + self.aead * 2 + self.link_cpu).as_secs_f64() * 1e6
    }

    /// Floor over measured CPU per packet: the capacity of one core against the floor's.
    pub fn ratio(&self) -> f64 {
        self.floor_us() / self.cpu_us_per_packet().max(1e-9)
    }

    pub fn print(&self, header: &str) {
        println!("{header}");
        println!();
        println!(
            "packets: {}",
            if self.sessions {
                "path session packets (no X25519 at the relay; the floor has none)"
            } else {
                "onion packets"
            }
        );
        println!();
        println!(
            "| in flight | packets/s | relay CPU µs/packet | relay core busy | capacity per core (1/CPU) | floor µs/packet | floor capacity | capacity / floor |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {} | {:.0} | {:.1} | {:.0} % | {:.0}/s | {:.1} | {:.0}/s | {:.2} |",
            self.concurrency,
            self.packets_per_second(),
            self.cpu_us_per_packet(),
            self.busy() * 100.0,
            1e6 / self.cpu_us_per_packet().max(1e-9),
            self.floor_us(),
            1e6 / self.floor_us().max(1e-9),
            self.ratio()
        );
        println!();
        println!(
            "floor parts (medians): X25519 {:.1} µs, AES-256-GCM over 4096 B {:.1} µs, link CPU per \
             round trip {:.1} µs ({LINK_IN_FLIGHT} in flight); {} packets in {:.1} s, {} errors{}; \
             latency p50 {:.3} ms; the other core's processes used {:.0} % of it",
            self.x25519.as_secs_f64() * 1e6,
            self.aead.as_secs_f64() * 1e6,
            self.link_cpu.as_secs_f64() * 1e6,
            self.packets,
            self.seconds,
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            self.latencies.ms(0.5),
            self.others_cpu.as_secs_f64() * 100.0 / self.seconds.max(1e-9),
        );
    }

    pub fn to_json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "sessions": self.sessions,
            "seconds": self.seconds,
            "packets": self.packets,
            "errors": self.errors,
            "first_error": self.first_error,
            "packets_per_second": self.packets_per_second(),
            "relay_cpu_us_per_packet": self.cpu_us_per_packet(),
            "relay_core_busy": self.busy(),
            "capacity_per_core": 1e6 / self.cpu_us_per_packet().max(1e-9),
            "floor_us_per_packet": self.floor_us(),
            "floor_capacity_per_core": 1e6 / self.floor_us().max(1e-9),
            "capacity_over_floor": self.ratio(),
            "floor_parts_us": {
                "x25519": self.x25519.as_secs_f64() * 1e6,
                "aead_4096": self.aead.as_secs_f64() * 1e6,
                "link_cpu_round_trip": self.link_cpu.as_secs_f64() * 1e6,
            },
            "latency_ms": {"p50": self.latencies.ms(0.5), "p99": self.latencies.ms(0.99)},
        })
    }
}

/// The core the relay runs on; everything else runs on core 0.
pub const RELAY_CORE: usize = 1;

/// Pins every thread of process `pid` to CPU `core` (util-linux `taskset`); threads it starts
/// later inherit the mask.
pub fn pin(pid: u32, core: usize) -> Result<(), String> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e} (util-linux's taskset pins the processes)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -a -p -c {core} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A process of the run: its identity if it is a node, and its pid.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub identity: Option<IdentityPublicKey>,
    pub pid: u32,
}

/// Measures the relay: `relay` and `destinations` are nodes of `roster`; `processes` every
/// process of the devnet. Pins the relay to core 1 and everything else to core 0, then sends
/// `info` requests through `[relay, destination]` paths from `concurrency` tasks for `duration`
/// after `warmup`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    roster: &Roster,
    epoch: Epoch,
    relay: IdentityPublicKey,
    processes: &[Process],
    concurrency: usize,
    sessions: bool,
    warmup: Duration,
    duration: Duration,
    template: &Latencies,
) -> Result<RelayRun, String> {
    let hops: Vec<Hop> = roster
        .nodes()
        .iter()
        .filter_map(|n| hop(n, epoch))
        .collect();
    let relay_hop = hops
        .iter()
        .find(|h| h.identity == relay)
        .cloned()
        .ok_or("the relay has no onion key for this epoch")?;
    let destinations: Vec<Hop> = hops.into_iter().filter(|h| h.identity != relay).collect();
    if destinations.is_empty() {
        return Err("no destination besides the relay".into());
    }
    let relay_pid = processes
        .iter()
        .find(|p| p.identity == Some(relay))
        .map(|p| p.pid)
        .ok_or("the relay is not a process started here")?;
    pin(relay_pid, RELAY_CORE)?;
    for p in processes.iter().filter(|p| p.pid != relay_pid) {
        pin(p.pid, 0)?;
    }
    pin(std::process::id(), 0)?;

    eprintln!("  floor primitives on core 0 …");
    let ((x25519, _), (aead, _)) = crate::floor::crypto();
    let link_cpu = quic_round_trip_cpu(LINK_ROUND_TRIPS, LINK_IN_FLIGHT).await?;

    let clients = (0..4)
        .map(|_| OnionClient::new(([127, 0, 0, 1], 0).into()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let request = Request::unsigned(Body::Info).encode();
    let start = Instant::now() + warmup;
    let end = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let client = clients[t % clients.len()].clone();
            let path = vec![
                relay_hop.clone(),
                destinations[t % destinations.len()].clone(),
            ];
            let request = request.clone();
            let mut hist = template.fresh();
            tokio::spawn(async move {
                let (mut ok, mut errors, mut first) = (0u64, 0u64, None::<String>);
                // Opened in the untimed warm-up, like the connections.
                let mut session = None;
                if sessions {
                    match client
                        .send_opening(&path, &request, SizeClass::Small, TIMEOUT)
                        .await
                    {
                        Ok((_, s)) => session = Some(s),
                        Err(e) => {
                            first = Some(format!("no session opened: {e}"));
                            return (hist, ok, errors + 1, first);
                        }
                    }
                }
                while Instant::now() < end {
                    let sent = Instant::now();
                    let answer = match session.as_mut() {
                        Some(s) => match s.build(
                            &mut rand_core::OsRng,
                            &request,
                            SizeClass::Small,
                            SizeClass::Small,
                        ) {
                            Ok(built) => client.send_built(&path[0], built, TIMEOUT).await,
                            Err(e) => Err(e.into()),
                        },
                        None => {
                            client
                                .send(&path, &request, SizeClass::Small, TIMEOUT)
                                .await
                        }
                    };
                    let r = answer.map_err(|e| e.to_string()).and_then(|b| {
                        allium_proto::Response::decode(&b, Method::Info).map_err(|e| e.to_string())
                    });
                    let done = Instant::now();
                    if done < start || done > end {
                        continue;
                    }
                    match r.map(|r| r.result) {
                        Ok(Ok(ResponseBody::Info(_))) => {
                            ok += 1;
                            hist.record(done - sent);
                        }
                        Ok(other) => {
                            errors += 1;
                            first.get_or_insert(format!("unexpected answer {other:?}"));
                        }
                        Err(e) => {
                            errors += 1;
                            first.get_or_insert(e);
                        }
                    }
                }
                (hist, ok, errors, first)
            })
        })
        .collect();
    // The window's CPU times, read at its edges while the load runs.
    let others: Vec<u32> = processes
        .iter()
        .map(|p| p.pid)
        .filter(|&p| p != relay_pid)
        .chain([std::process::id()])
        .collect();
    let cpu_of = |pids: &[u32]| -> Duration { pids.iter().filter_map(|&p| cpu_time(p)).sum() };
    tokio::time::sleep_until(start.into()).await;
    let (relay0, others0) = (cpu_time(relay_pid), cpu_of(&others));
    let window = Instant::now();
    tokio::time::sleep_until(end.into()).await;
    let (relay1, others1) = (cpu_time(relay_pid), cpu_of(&others));
    let seconds = window.elapsed().as_secs_f64();
    let relay_cpu = relay1
        .zip(relay0)
        .map(|(b, a)| b.saturating_sub(a))
        .ok_or("no CPU time for the relay")?;
    let mut out = RelayRun {
        concurrency,
        sessions,
        seconds,
        packets: 0,
        errors: 0,
        first_error: None,
        relay_cpu,
        others_cpu: others1.saturating_sub(others0),
        latencies: template.fresh(),
        x25519,
        aead,
        link_cpu,
    };
    for t in tasks {
        let (hist, ok, errors, first) = t.await.map_err(|e| e.to_string())?;
        out.latencies.add(&hist);
        out.packets += ok;
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first;
        }
    }
    Ok(out)
}
