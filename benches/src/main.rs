//! `allium-bench`: onion path latency and throughput on a network of real `allium-node`
//! processes, reported against the floor of the same machine measured in the same run.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod attach;
mod authority;
mod breakdown;
mod floor;
mod longpoll;
mod machine;
mod net;
mod pair;
mod relay;
mod stats;
mod svg;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_client::identity::Identity;
use allium_client::onion::{OnionClient, epoch_at};
use allium_node::devnet::{Devnet, DevnetOptions, wait_for_roster};
use allium_proto::network::NetworkFile;
use allium_proto::roster::Roster;
use clap::Parser;
use serde_json::{Value, json};

use crate::floor::Primitives;
use crate::machine::Machine;
use crate::net::{Delivery, Net, Series, Stamp, Throughput};
use crate::stats::{Latencies, Summary};

/// Measures store and retrieve round trips through 0 to 3 relays, delivery from one client to
/// another, and acknowledged stores per second under concurrency, on a local network of real
/// `allium-node` processes it starts itself (or an existing one, `--network`), and reports
/// each against the floor of this machine measured in the same run. `allium-bench longpoll`
/// measures what parked long-polls cost the node they wait at instead.
#[derive(Debug, Parser)]
#[command(name = "allium-bench", version)]
struct Cli {
    /// A series other than the default run.
    #[command(subcommand)]
    command: Option<Command>,
    /// Use the running network of this network file instead of starting one.
    #[arg(long, value_name = "FILE")]
    network: Option<PathBuf>,
    /// Nodes besides the authority, when starting a network.
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Keep the started network's folder here instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Where the JSON and the plots go [default: `--dir` if given, else `allium-bench/` in the
    /// build's target folder when run from there, else the current folder].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The JSON report [default: OUT/allium-bench.json].
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Timed sequential requests per path length and operation.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Untimed requests first, so every connection on a path is warm.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Timed deliveries from one client to another.
    #[arg(long, default_value_t = 300)]
    deliveries: usize,
    /// Concurrency levels of the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    concurrency: Vec<usize>,
    /// Seconds each throughput level is measured (after its warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of untimed load before each throughput level's measurement.
    #[arg(long, default_value_t = 1.0)]
    throughput_warmup: f64,
    /// Onion clients (QUIC endpoints) the throughput tasks share.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Stored message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Log filter of the started nodes (their logs are `<dir>/<node>.log`).
    #[arg(long, default_value = "warn")]
    node_log: String,
    /// Also report where the delivery's time goes, stage by stage, from marks the started
    /// nodes log (`allium_stage=trace` is added to their filter; each mark is a log line, so
    /// the figures of such a run are a little slower than without).
    #[arg(long)]
    breakdown: bool,
    /// Print a shell completion script (bash, zsh, fish, …) and exit.
    #[arg(long, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Store latency through 0 relays with none and with `--parked` long-poll retrieves waiting
    /// at the destination, in the same run, and the destination's memory and threads in both
    /// states. Needs a network started here (it reads the node's /proc).
    Longpoll(LongpollArgs),
    /// Attachments: upload and download MB/s for a few file sizes through 3-relay paths, each
    /// against a floor from the same run's primitives (`whitepaper/attachments.md`).
    Attach(AttachArgs),
    /// Relay capacity per core: one node relays every request, pinned to core 1, while the
    /// clients and every other node, pinned to core 0, load it; its CPU per packet against the
    /// floor of a relayed packet from the same run. Needs a network started here on a machine
    /// of at least two cores, and `taskset`.
    Relay(RelayArgs),
    /// Mailbox moves at a network size beyond the roster tests: the shipped assignment grows
    /// to `--grow` nodes one join at a time, then `--churn` nodes leave, `--churn` join, and
    /// `--churn` leave-and-join pairs follow; every event's moved mailboxes are reported
    /// against `1/k` (`whitepaper/roster.md` §5.4). Pure computation, no network.
    Moves(MovesArgs),
    /// A simulated network with churn, in one process on a simulated clock: the shipped swarm
    /// assignment and ring lookup, the nodes' replication and the clients' retries modelled
    /// after their code (`whitepaper/performance.md` §11). Deterministic from `--seed`.
    Sim(SimArgs),
    /// The directory authority's CPU and bytes per publish round, before and after probes and
    /// deltas, with in-process nodes on loopback QUIC (`whitepaper/performance.md`, "Authority
    /// rounds"). Starts no network; needs a file-descriptor limit above the largest size.
    Authority(AuthorityArgs),
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds measured, after one second of untimed load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Each task opens a path session (onion.md §12) and sends session packets, which the
    /// relay peels without a key agreement; the floor then has no X25519.
    #[arg(long)]
    sessions: bool,
    /// Start the relay on every core and pin it once it runs: its runtime keeps one worker per
    /// core of the machine, now sharing one (the setting before relays were started pinned).
    #[arg(long)]
    pin_after_start: bool,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes at the start.
    #[arg(long = "sim-nodes", default_value_t = 1000)]
    sim_nodes: u32,
    /// Clients, each listening on its own mailbox and sending.
    #[arg(long, default_value_t = 10_000)]
    clients: u32,
    /// Simulated minutes.
    #[arg(long, default_value_t = 60)]
    minutes: u32,
    /// Last minutes without new messages (so the last ones can arrive).
    #[arg(long, default_value_t = 5)]
    quiet_minutes: u32,
    /// Nodes joining each minute.
    #[arg(long, default_value_t = 5)]
    joins_per_minute: u32,
    /// Nodes leaving each minute (abruptly, store lost).
    #[arg(long, default_value_t = 5)]
    leaves_per_minute: u32,
    /// Swarm size `S`.
    #[arg(long, default_value_t = 5)]
    swarm_size: usize,
    /// Mean seconds between two messages of one client.
    #[arg(long, default_value_t = 300.0)]
    send_mean_s: f64,
    /// Median one-way WAN delay of a hop, ms (log-normal).
    #[arg(long, default_value_t = 25.0)]
    wan_median_ms: f64,
    /// Sigma of the log-normal WAN delay.
    #[arg(long, default_value_t = 0.5)]
    wan_sigma: f64,
}

#[derive(Debug, clap::Args)]
struct MovesArgs {
    /// Nodes that join one at a time.
    #[arg(long, default_value_t = 2000)]
    grow: u32,
    /// Length of each churn phase after growing.
    #[arg(long, default_value_t = 200)]
    churn: u32,
    /// Mailboxes whose swarm is followed.
    #[arg(long, default_value_t = 100_000)]
    mailboxes: u32,
    /// Swarm sizes `S`.
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    sizes: Vec<usize>,
}

#[derive(Debug, clap::Args)]
struct AuthorityArgs {
    /// Network sizes, nodes.
    #[arg(long, value_delimiter = ',', default_value = "250,1000,2000")]
    sizes: Vec<usize>,
    /// Measured rounds at each size (the medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, clap::Args)]
struct AttachArgs {
    /// File sizes, MB (10^6 bytes).
    #[arg(long = "sizes-mb", value_delimiter = ',', default_value = "1,16,256")]
    sizes_mb: Vec<u64>,
    /// Chunks in flight at once, each on its own path.
    #[arg(long, default_value_t = 4)]
    paths: usize,
}

#[derive(Debug, clap::Args)]
struct LongpollArgs {
    /// Long-poll retrieves parked at the destination for the second series.
    #[arg(long, default_value_t = 2000)]
    parked: usize,
    /// Timed sequential stores in each series.
    #[arg(long, default_value_t = 200)]
    stores: usize,
    /// Stores to parked mailboxes, one at a time, each timed until that mailbox's long-poll
    /// answers with it.
    #[arg(long, default_value_t = 200)]
    wakes: usize,
    /// Relays in front of the destination on every path, the stores' and the long-polls'; the
    /// long-polls' paths start at every other node in turn, so each is some polls' exit.
    #[arg(long, default_value_t = 0)]
    relays: usize,
}

fn node_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("allium-node")))
        .unwrap_or_else(|| PathBuf::from("allium-node"))
}

/// `allium-bench/` beside the build's profile folders when the binary runs from a target
/// folder (so results of `scripts/bench` stay out of the work tree), else the current folder.
fn default_out() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let target = exe.as_deref().and_then(Path::parent).and_then(|profile| {
        let name = profile.file_name()?.to_str()?;
        matches!(name, "release" | "debug" | "bench")
            .then(|| profile.parent())
            .flatten()
    });
    match target {
        Some(t) => t.join("allium-bench"),
        None => PathBuf::from("."),
    }
}

fn client() -> Result<OnionClient, String> {
    OnionClient::new(([127, 0, 0, 1], 0).into()).map_err(|e| e.to_string())
}

/// The network the bench talks to: started here (and stopped at the end) or given.
struct Network {
    devnet: Option<Devnet>,
    file: NetworkFile,
    dir: PathBuf,
    temporary: bool,
    expected_nodes: usize,
}

/// Starts the network of the run (or loads `--network`); `last_node_core` pins the last node
/// from its start.
fn start_network(cli: &Cli, last_node_core: Option<usize>) -> Result<Network, String> {
    if let Some(file) = &cli.network {
        if cli.breakdown {
            return Err("--breakdown reads the logs of a network started here".into());
        }
        let network = NetworkFile::load(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let dir = cli.out.clone().unwrap_or_else(default_out);
        return Ok(Network {
            devnet: None,
            file: network,
            dir,
            temporary: false,
            expected_nodes: 4,
        });
    }
    let (dir, temporary) = match &cli.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("allium-bench-{}", std::process::id())),
            true,
        ),
    };
    eprintln!(
        "starting an authority and {} nodes in {} …",
        cli.nodes,
        dir.display()
    );
    let log = if cli.breakdown {
        format!("{},{}=trace", cli.node_log, allium_swarm::stage::TARGET)
    } else {
        cli.node_log.clone()
    };
    let devnet = Devnet::start(
        &node_binary(),
        &dir,
        &DevnetOptions {
            nodes: cli.nodes,
            log,
            last_node_core,
            ..DevnetOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let file = NetworkFile::load(&devnet.network_file).map_err(|e| e.to_string())?;
    Ok(Network {
        devnet: Some(devnet),
        file,
        dir,
        temporary,
        expected_nodes: cli.nodes + 1,
    })
}

impl Network {
    /// Stops a network started here and removes its folder if it was temporary; the nodes that
    /// did not stop cleanly.
    fn stop(&mut self) -> Vec<String> {
        let unclean = match &mut self.devnet {
            Some(devnet) => {
                eprintln!("stopping the network …");
                devnet.stop()
            }
            None => Vec::new(),
        };
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        unclean
    }
}

/// Where the JSON and the plots go: `--out`, else `--dir`, else [`default_out`].
fn out_dir(cli: &Cli) -> PathBuf {
    cli.out
        .clone()
        .or_else(|| cli.dir.clone())
        .unwrap_or_else(default_out)
}

/// Everything measured.
struct Results {
    primitives: Primitives,
    stores: Vec<(usize, Series)>,
    retrieves: Vec<(usize, Series)>,
    delivery: Delivery,
    breakdown: Option<breakdown::Breakdown>,
    throughput: Vec<Throughput>,
    nodes: usize,
    elapsed: Duration,
}

/// Waits until the roster lists every node and, on a network started here, every node holds it
/// and is done syncing.
async fn formed(network: &mut Network, a: &OnionClient) -> Result<Roster, String> {
    eprintln!("waiting for the roster …");
    let roster = wait_for_roster(
        a.pool(),
        &network.file,
        network.expected_nodes,
        Duration::from_secs(60),
    )
    .await
    .ok_or("the roster did not form within 60 s")?;
    if let Some(devnet) = &mut network.devnet {
        if !devnet
            .wait_for_roster_version(roster.version(), Duration::from_secs(60))
            .await
        {
            return Err("the nodes did not fetch the roster within 60 s".into());
        }
    }
    Ok(roster)
}

async fn measure(cli: &Cli, network: &mut Network) -> Result<Results, String> {
    let started = Instant::now();
    let a = client()?;
    let roster = formed(network, &a).await?;
    let nodes = roster.nodes().len();
    let epoch = epoch_at(network.file.params.epoch_secs, net::now_ms() / 1000);
    let net = Arc::new(Net::new(roster, epoch)?);

    eprintln!("measuring the floor (X25519, AES-256-GCM, loopback QUIC, synced RocksDB write) …");
    std::fs::create_dir_all(&network.dir).map_err(|e| e.to_string())?;
    let primitives = floor::measure(&network.dir).await?;
    eprintln!(
        "  3-relay store floor {:.3} ms",
        primitives.store_floor(3).as_secs_f64() * 1e3
    );

    let template = Latencies::new()?;
    let stamp = Stamp::default();
    let owner = Identity::generate();
    eprintln!(
        "sequential round trips ({} timed after {} warm-up each) …",
        cli.requests, cli.warmup
    );
    let mut stores = Vec::new();
    let mut retrieves = Vec::new();
    for relays in 0..=3 {
        let s = net::store_series(
            &net,
            &a,
            &owner,
            relays,
            cli.size,
            cli.warmup,
            cli.requests,
            &template,
        )
        .await?;
        stores.push((relays, s));
        let r = net::retrieve_series(
            &net,
            &a,
            &owner,
            relays,
            cli.warmup,
            cli.requests,
            &template,
            &stamp,
        )
        .await?;
        retrieves.push((relays, r));
    }

    eprintln!(
        "delivery from client A to client B ({} timed) …",
        cli.deliveries
    );
    let b = client()?;
    let delivery = net::delivery(
        &net,
        &a,
        &b,
        cli.warmup.min(20),
        cli.deliveries,
        &template,
        &stamp,
    )
    .await?;
    let breakdown = if cli.breakdown {
        Some(breakdown::Breakdown::from_logs(
            &network.dir,
            &delivery.marks,
        )?)
    } else {
        None
    };

    eprintln!(
        "throughput ({:.1} s per level after {:.1} s warm-up, {} clients) …",
        cli.duration, cli.throughput_warmup, cli.clients
    );
    let clients = (0..cli.clients.max(1))
        .map(|_| client().map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    // Every process of a network started here, for the CPU time per store.
    let processes: Vec<u32> = network
        .devnet
        .as_ref()
        .map(|d| d.nodes.iter().filter_map(|n| n.pid()).collect())
        .unwrap_or_default();
    let mut throughput = Vec::new();
    for &c in &cli.concurrency {
        throughput.push(
            net::throughput(
                &net,
                &clients,
                c.max(1),
                cli.size,
                Duration::from_secs_f64(cli.throughput_warmup.max(0.0)),
                Duration::from_secs_f64(cli.duration.max(0.1)),
                &template,
                &processes,
            )
            .await?,
        );
    }
    Ok(Results {
        primitives,
        stores,
        retrieves,
        delivery,
        breakdown,
        throughput,
        nodes,
        elapsed: started.elapsed(),
    })
}

/// Writes a series' JSON report to `path` and says where.
fn write_report(path: &Path, report: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A goal, its figure and whether it is met.
struct Goal {
    name: &'static str,
    target: String,
    measured: String,
    met: bool,
}

fn goals(r: &Results) -> Vec<Goal> {
    let floor = ms(r.primitives.store_floor(3));
    let store3 = r
        .stores
        .iter()
        .find(|(n, _)| *n == 3)
        .map(|(_, s)| s.latencies.summary())
        .unwrap_or_default();
    let c64 = r.throughput.iter().find(|t| t.concurrency == 64);
    let delivery = r.delivery.latency.latencies.summary();
    let mut g = vec![
        Goal {
            name: "3-relay store p50",
            target: format!("≤ 1.3 × floor = {:.3} ms", 1.3 * floor),
            measured: format!("{:.3} ms = {:.2} × floor", store3.p50, store3.p50 / floor),
            met: store3.p50 <= 1.3 * floor,
        },
        Goal {
            name: "3-relay store p99",
            target: format!("≤ 3 × floor = {:.3} ms", 3.0 * floor),
            measured: format!("{:.3} ms = {:.2} × floor", store3.p99, store3.p99 / floor),
            met: store3.p99 <= 3.0 * floor,
        },
    ];
    if let Some(t) = c64 {
        g.push(Goal {
            name: "stores/s at concurrency 64",
            target: "≥ 3,000".into(),
            measured: format!("{:.0}", t.per_second()),
            met: t.per_second() >= 3000.0,
        });
        if let Some(cpu) = t.cpu_per_store() {
            let floor = r.primitives.store_cpu_floor(3);
            g.push(Goal {
                name: "CPU per store at concurrency 64",
                target: format!("≤ 1.5 × CPU floor = {:.0} µs", 1.5 * us(floor)),
                measured: format!("{:.0} µs = {:.2} × CPU floor", us(cpu), us(cpu) / us(floor)),
                met: us(cpu) <= 1.5 * us(floor),
            });
        }
    }
    g.push(Goal {
        name: "delivery p50",
        target: "≤ 2 ms".into(),
        measured: format!("{:.3} ms", delivery.p50),
        met: delivery.p50 <= 2.0,
    });
    g
}

fn row(op: &str, path: &str, s: &Summary, errors: u64, floor: f64, own: Option<f64>) {
    println!(
        "{op:<10} {path:<14} {:>7} {errors:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7.2} {:>7.2} {:>9}",
        s.count,
        s.p50,
        s.p90,
        s.p99,
        s.p999,
        s.max,
        s.p50 / floor,
        s.p99 / floor,
        own.map(|o| format!("{:.2}", s.p50 / o))
            .unwrap_or_else(|| "-".into()),
    );
}

fn print_table(cli: &Cli, r: &Results, machine: &Machine) {
    let p = &r.primitives;
    let floor = ms(p.store_floor(3));
    println!();
    println!("allium-bench — {}", machine.line());
    println!(
        "{} roster nodes, every process on this machine; {} B messages; swarm quorum acknowledged stores",
        r.nodes, cli.size
    );
    println!();
    println!(
        "floor primitives (medians): X25519 {:.1} µs · AES-256-GCM over 4096 B {:.1} µs · loopback QUIC round trip (4096 B each way) {:.1} µs · synced RocksDB put {:.1} µs",
        p.x25519.as_secs_f64() * 1e6,
        p.aead.as_secs_f64() * 1e6,
        p.rtt.as_secs_f64() * 1e6,
        p.synced_write.as_secs_f64() * 1e6
    );
    println!(
        "reference: build 4-layer packet {:.1} µs · peel one layer {:.1} µs · open envelope {:.1} µs",
        p.build4.as_secs_f64() * 1e6,
        p.peel.as_secs_f64() * 1e6,
        p.envelope_open.as_secs_f64() * 1e6
    );
    println!(
        "floor F of a 3-relay store = 8·X25519 + 16·AEAD + 5·RTT + synced write = {floor:.3} ms"
    );
    println!();
    println!(
        "{:<10} {:<14} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9}",
        "operation",
        "path",
        "samples",
        "errors",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "p50/F",
        "p99/F",
        "p50/own"
    );
    for (relays, s) in &r.stores {
        row(
            "store",
            &format!("{relays} relays"),
            &s.latencies.summary(),
            s.errors,
            floor,
            Some(ms(p.store_floor(*relays))),
        );
    }
    for (relays, s) in &r.retrieves {
        row(
            "retrieve",
            &format!("{relays} relays"),
            &s.latencies.summary(),
            s.errors,
            floor,
            Some(ms(p.retrieve_floor(*relays))),
        );
    }
    row(
        "delivery",
        "3 + 3 relays",
        &r.delivery.latency.latencies.summary(),
        r.delivery.latency.errors,
        floor,
        Some(ms(p.delivery_floor())),
    );
    row(
        "send (A)",
        "3 relays",
        &r.delivery.send.summary(),
        0,
        floor,
        Some(ms(p.store_floor(3))),
    );
    println!("(p50/own: against the floor of that operation and path length, same model)");
    println!();
    if let Some(b) = &r.breakdown {
        b.print();
        println!();
    }
    println!(
        "{:<12} {:>10} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>12} {:>8}",
        "concurrency",
        "stores/s",
        "samples",
        "errors",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "p50/F",
        "CPU µs/store",
        "/ floor"
    );
    let cpu_floor = us(p.store_cpu_floor(3));
    for t in &r.throughput {
        let s = t.latencies.summary();
        let cpu = t.cpu_per_store().map(us);
        println!(
            "{:<12} {:>10.0} {:>8} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7.2} {:>12} {:>8}",
            t.concurrency,
            t.per_second(),
            s.count,
            t.errors,
            s.p50,
            s.p90,
            s.p99,
            s.p999,
            s.max,
            s.p50 / floor,
            cpu.map(|c| format!("{c:.0}")).unwrap_or_else(|| "-".into()),
            cpu.map(|c| format!("{:.2}", c / cpu_floor))
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "(CPU per store: every process of the run over the window; its floor = 8·X25519 + 16·AEAD + 5·link CPU per round trip = {cpu_floor:.0} µs, link CPU {:.1} µs)",
        us(p.link_cpu)
    );
    println!();
    println!("goals (issue #8):");
    for g in goals(r) {
        println!(
            "  {:<28} {:<26} measured {:<26} {}",
            g.name,
            g.target,
            g.measured,
            if g.met { "met" } else { "NOT met" }
        );
    }
}

fn series_json(op: &str, relays: usize, s: &Series, floor: f64, own: f64) -> Value {
    let sum = s.latencies.summary();
    json!({
        "operation": op,
        "relays": relays,
        "layers": relays + 1,
        "latency": sum.to_json(),
        "errors": s.errors,
        "first_error": s.first_error,
        "floor_ms": own,
        "p50_over_store3_floor": sum.p50 / floor,
        "p99_over_store3_floor": sum.p99 / floor,
        "p50_over_own_floor": sum.p50 / own,
    })
}

fn report_json(cli: &Cli, r: &Results, machine: &Machine) -> Value {
    let p = &r.primitives;
    let floor = ms(p.store_floor(3));
    let mut latency = Vec::new();
    for (relays, s) in &r.stores {
        latency.push(series_json(
            "store",
            *relays,
            s,
            floor,
            ms(p.store_floor(*relays)),
        ));
    }
    for (relays, s) in &r.retrieves {
        latency.push(series_json(
            "retrieve",
            *relays,
            s,
            floor,
            ms(p.retrieve_floor(*relays)),
        ));
    }
    let d = r.delivery.latency.latencies.summary();
    json!({
        "tool": "allium-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "machine": machine.to_json(),
        "setup": {
            "network": if cli.network.is_some() { "existing (--network)" } else { "started by allium-bench: authority + nodes as separate processes on loopback" },
            "roster_nodes": r.nodes,
            "all_processes_on_one_machine": cli.network.is_none(),
            "message_bytes": cli.size,
            "requests_per_series": cli.requests,
            "warmup_per_series": cli.warmup,
            "deliveries": cli.deliveries,
            "throughput_seconds": cli.duration,
            "throughput_warmup_seconds": cli.throughput_warmup,
            "throughput_clients": cli.clients,
            "elapsed_seconds": r.elapsed.as_secs_f64(),
        },
        "floor": {
            "primitives": p.to_json(),
            "store_floor_ms": (0..=3).map(|n| ms(p.store_floor(n))).collect::<Vec<_>>(),
            "retrieve_floor_ms": (0..=3).map(|n| ms(p.retrieve_floor(n))).collect::<Vec<_>>(),
            "delivery_floor_ms": ms(p.delivery_floor()),
            "store3_floor_ms": floor,
        },
        "latency": latency,
        "delivery": {
            "latency": d.to_json(),
            "errors": r.delivery.latency.errors,
            "first_error": r.delivery.latency.first_error,
            "repolls": r.delivery.repolls,
            "sender_ack": r.delivery.send.summary().to_json(),
            "floor_ms": ms(p.delivery_floor()),
            "p50_over_own_floor": d.p50 / ms(p.delivery_floor()),
            "p50_over_store3_floor": d.p50 / floor,
            "breakdown": r.breakdown.as_ref().map(breakdown::Breakdown::to_json),
        },
        "throughput": r.throughput.iter().map(|t| json!({
            "concurrency": t.concurrency,
            "stores_per_second": t.per_second(),
            "acknowledged": t.acknowledged,
            "errors": t.errors,
            "first_error": t.first_error,
            "seconds": t.seconds,
            "latency": t.latencies.summary().to_json(),
            "p50_over_store3_floor": t.latencies.ms(0.5) / floor,
            "cpu_us_per_store": t.cpu_per_store().map(us),
            "cpu_floor_us_per_store": us(p.store_cpu_floor(3)),
        })).collect::<Vec<_>>(),
        "goals": goals(r).iter().map(|g| json!({
            "goal": g.name, "target": g.target, "measured": g.measured, "met": g.met,
        })).collect::<Vec<_>>(),
    })
}

fn write_outputs(cli: &Cli, r: &Results, machine: &Machine, out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json_path = cli
        .json
        .clone()
        .unwrap_or_else(|| out.join("allium-bench.json"));
    let text =
        serde_json::to_string_pretty(&report_json(cli, r, machine)).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;

    let mut lines = Vec::new();
    for (relays, s) in &r.stores {
        lines.push(svg::Line {
            label: format!("store, {relays} relays"),
            points: s.latencies.percentile_curve(),
            dashed: false,
        });
    }
    for (relays, s) in &r.retrieves {
        lines.push(svg::Line {
            label: format!("retrieve, {relays} relays"),
            points: s.latencies.percentile_curve(),
            dashed: true,
        });
    }
    let latency = svg::latency(
        &format!(
            "Round trip by path length (floor of a 3-relay store: {:.2} ms)",
            ms(r.primitives.store_floor(3))
        ),
        &lines,
    );
    let latency_path = out.join("latency.svg");
    std::fs::write(&latency_path, latency).map_err(|e| e.to_string())?;
    let points: Vec<(usize, f64)> = r
        .throughput
        .iter()
        .map(|t| (t.concurrency, t.per_second()))
        .collect();
    let tp = svg::throughput("Acknowledged 3-relay stores per second", &points);
    let tp_path = out.join("throughput.svg");
    std::fs::write(&tp_path, tp).map_err(|e| e.to_string())?;
    println!();
    for p in [&json_path, &latency_path, &tp_path] {
        println!("wrote {}", p.display());
    }
    Ok(())
}

async fn measure_longpoll(
    cli: &Cli,
    args: &LongpollArgs,
    network: &mut Network,
) -> Result<longpoll::Longpoll, String> {
    let roster = formed(network, &client()?).await?;
    let epoch = epoch_at(network.file.params.epoch_secs, net::now_ms() / 1000);
    let devnet = network.devnet.as_ref().ok_or("no network started here")?;
    let target_of = |id: &allium_onion::IdentityPublicKey| {
        let node = devnet.nodes.iter().find(|n| n.identity == *id)?;
        Some(longpoll::Target {
            pid: node.pid()?,
            metrics: node.metrics,
        })
    };
    eprintln!(
        "stores with none and with {} long-polls parked ({} timed after {} warm-up) …",
        args.parked, args.stores, cli.warmup
    );
    longpoll::run(
        &roster,
        epoch,
        target_of,
        longpoll::Plan {
            parked: args.parked,
            stores: args.stores,
            wakes: args.wakes,
            relays: args.relays,
            warmup: cli.warmup,
            size: cli.size,
        },
        &Latencies::new()?,
    )
    .await
}

async fn bench_longpoll(cli: &Cli, args: &LongpollArgs) -> Result<(), String> {
    if cli.network.is_some() {
        return Err("longpoll reads the destination's /proc: run it on a network it starts".into());
    }
    let machine = Machine::describe();
    let mut network = start_network(cli, None)?;
    let out = out_dir(cli);
    let measured = measure_longpoll(cli, args, &mut network).await;
    let unclean = network.stop();
    let r = measured?;
    r.print(&format!("allium-bench longpoll — {}", machine.line()));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = cli
        .json
        .clone()
        .unwrap_or_else(|| out.join("longpoll.json"));
    let report = json!({
        "tool": "allium-bench longpoll",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "machine": machine.to_json(),
        "setup": {
            "roster_nodes": cli.nodes + 1,
            "relays": args.relays,
            "message_bytes": cli.size,
            "stores_per_series": args.stores,
            "warmup": cli.warmup,
            "parked": args.parked,
            "parked_per_mailbox": 1,
            "wakes": args.wakes,
            "long_poll_wait_ms": allium_proto::storage::MAX_WAIT_MS,
        },
        "results": r.to_json(),
    });
    println!();
    write_report(&path, &report)?;
    if !unclean.is_empty() {
        return Err(format!("nodes that did not stop cleanly: {unclean:?}"));
    }
    Ok(())
}

async fn bench_relay(cli: &Cli, args: &RelayArgs) -> Result<(), String> {
    if cli.network.is_some() {
        return Err("relay pins the node processes: run it on a network it starts".into());
    }
    let machine = Machine::describe();
    // The relay is the last node, started on its core as an operator pins one, unless asked to
    // be pinned only once running (its runtime then keeps a worker per core of the machine).
    let core = (!args.pin_after_start).then_some(relay::RELAY_CORE);
    let mut network = start_network(cli, core)?;
    let measured = measure_relay(args, &mut network).await;
    let unclean = network.stop();
    let r = measured?;
    r.print(&format!("allium-bench relay — {}", machine.line()));
    let out = out_dir(cli);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = cli.json.clone().unwrap_or_else(|| out.join("relay.json"));
    let report = json!({
        "tool": "allium-bench relay",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "machine": machine.to_json(),
        "setup": {
            "roster_nodes": cli.nodes + 1,
            "path": "[relay, destination]: one relay, info requests, small class",
            "packets": if args.sessions { "path session packets (onion.md §12)" } else { "onion packets" },
            "relay_core": relay::RELAY_CORE,
            "relay_started_pinned": !args.pin_after_start,
            "everything_else_core": 0,
        },
        "results": r.to_json(),
    });
    println!();
    write_report(&path, &report)?;
    if !unclean.is_empty() {
        return Err(format!("nodes that did not stop cleanly: {unclean:?}"));
    }
    Ok(())
}

async fn measure_relay(args: &RelayArgs, network: &mut Network) -> Result<relay::RelayRun, String> {
    let roster = formed(network, &client()?).await?;
    let epoch = epoch_at(network.file.params.epoch_secs, net::now_ms() / 1000);
    let devnet = network.devnet.as_ref().ok_or("no network started here")?;
    let processes: Vec<relay::Process> = devnet
        .nodes
        .iter()
        .filter_map(|n| {
            Some(relay::Process {
                identity: Some(n.identity),
                pid: n.pid()?,
            })
        })
        .collect();
    // The relay: the last node started, never the authority.
    let relay = devnet
        .nodes
        .last()
        .filter(|n| n.name != "authority")
        .map(|n| n.identity)
        .ok_or("the network has no node besides the authority")?;
    eprintln!(
        "relaying {} requests at once for {} s through one pinned relay …",
        args.concurrency, args.seconds
    );
    relay::run(
        &roster,
        epoch,
        relay,
        &processes,
        args.concurrency,
        args.sessions,
        Duration::from_secs(1),
        Duration::from_secs(args.seconds),
        &Latencies::new()?,
    )
    .await
}

async fn bench_attach(cli: &Cli, args: &AttachArgs) -> Result<(), String> {
    let machine = Machine::describe();
    let mut network = start_network(cli, None)?;
    let out = out_dir(cli);
    let measured = async {
        formed(&mut network, &client()?).await?;
        std::fs::create_dir_all(&network.dir).map_err(|e| e.to_string())?;
        eprintln!(
            "measuring the floor (X25519, AES-256-GCM, loopback QUIC, synced RocksDB write) …"
        );
        let primitives = floor::measure(&network.dir).await?;
        let results = attach::series(
            &network.file,
            &network.dir,
            &args.sizes_mb,
            args.paths,
            &primitives,
        )
        .await?;
        Ok::<_, String>((primitives, results))
    }
    .await;
    let unclean = network.stop();
    let (primitives, results) = measured?;
    println!("allium-bench attach — {}", machine.line());
    for r in &results {
        r.print();
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = cli.json.clone().unwrap_or_else(|| out.join("attach.json"));
    let report = json!({
        "tool": "allium-bench attach",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "machine": machine.to_json(),
        "setup": { "roster_nodes": cli.nodes + 1, "relays": 3, "paths": args.paths },
        "primitives": primitives.to_json(),
        "results": results.iter().map(attach::AttachResult::to_json).collect::<Vec<_>>(),
    });
    write_report(&path, &report)?;
    if !unclean.is_empty() {
        return Err(format!("nodes that did not stop cleanly: {unclean:?}"));
    }
    Ok(())
}

fn bench_sim(cli: &Cli, args: &SimArgs) -> Result<(), String> {
    use allium_bench::sim::{SimConfig, run};
    let mut cfg = SimConfig::standard(args.seed);
    cfg.nodes = args.sim_nodes;
    cfg.clients = args.clients;
    cfg.minutes = args.minutes;
    cfg.quiet_minutes = args.quiet_minutes.min(args.minutes);
    cfg.joins_per_minute = args.joins_per_minute;
    cfg.leaves_per_minute = args.leaves_per_minute;
    cfg.swarm_size = args.swarm_size;
    cfg.send_mean = (args.send_mean_s * 1e6) as u64;
    cfg.wan_median = (args.wan_median_ms * 1e3) as u64;
    cfg.wan_sigma = args.wan_sigma;
    let started = Instant::now();
    let report = run(&cfg);
    let took = started.elapsed().as_secs_f64();
    let j = report.to_json();
    println!(
        "simulated {} min: {} nodes at the start, {} joins and {} leaves a minute, {} clients, S = {}, seed {}",
        cfg.minutes,
        cfg.nodes,
        cfg.joins_per_minute,
        cfg.leaves_per_minute,
        cfg.clients,
        cfg.swarm_size,
        cfg.seed
    );
    println!("real code: {}", j["real_code"].as_str().unwrap_or_default());
    println!("modelled: {}", j["modelled"].as_str().unwrap_or_default());
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "messages": j["messages"], "latency_ms": j["latency_ms"],
            "network_end": j["network_end"], "counters": j["counters"],
        }))
        .map_err(|e| e.to_string())?
    );
    eprintln!("{} events in {took:.1} s", report.events);
    let out = out_dir(cli);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.join("sim.json");
    let mut full = j;
    full["command"] = json!(std::env::args().collect::<Vec<_>>());
    full["version"] = json!(env!("CARGO_PKG_VERSION"));
    full["seconds"] = json!(took);
    let text = serde_json::to_string_pretty(&full).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn bench_moves(cli: &Cli, args: &MovesArgs) -> Result<(), String> {
    use allium_bench::moves::{MovesConfig, measure, summarise};
    let started = Instant::now();
    let mut results = Vec::new();
    println!(
        "{} nodes join; then {} leave, {} join, and {} leave-and-join pairs follow; {} mailboxes",
        args.grow, args.churn, args.churn, args.churn, args.mailboxes
    );
    println!(
        "| S | phase | events | swarms created/dissolved | nodes moved (max per event) | events moving mailboxes | mailbox moves | mean fraction | max fraction | max fraction × k | swarms after |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &size in &args.sizes {
        let cfg = MovesConfig {
            nodes: args.grow,
            churn: args.churn,
            mailboxes: args.mailboxes,
            swarm_size: size,
        };
        let phases_run = measure(&cfg);
        let mut phases = serde_json::Map::new();
        for (name, events, join) in [
            ("grow: joins", &phases_run.grow, true),
            ("shrink: leaves", &phases_run.shrink, false),
            ("regrow: joins", &phases_run.regrow, true),
            ("interleaved: leaves", &phases_run.interleaved, false),
            ("interleaved: joins", &phases_run.interleaved, true),
        ] {
            let s = summarise(events, join, args.mailboxes);
            let after = events
                .iter()
                .rev()
                .find(|e| e.join == join)
                .map_or(0, |e| e.swarms.1);
            println!(
                "| {size} | {name} | {} | {} | {} ({}) | {} | {} | {:.5} | {:.5} | {:.2} | {after} |",
                s.events,
                s.swarms_changed,
                s.nodes_moved.0,
                s.nodes_moved.1,
                s.moving,
                s.mailboxes_moved,
                s.fraction.0,
                s.fraction.1,
                s.max_per_share,
            );
            phases.insert(name.to_string(), s.to_json());
        }
        let per_event = |events: &[allium_bench::moves::Event]| -> Vec<Value> {
            events
                .iter()
                .map(|e| {
                    json!([
                        if e.join { "join" } else { "leave" },
                        e.swarms.0,
                        e.swarms.1,
                        e.nodes_moved,
                        e.mailboxes_moved
                    ])
                })
                .collect()
        };
        results.push(json!({
            "swarm_size": size,
            "summary": phases,
            "shrink_events": per_event(&phases_run.shrink),
            "regrow_events": per_event(&phases_run.regrow),
            "interleaved_events": per_event(&phases_run.interleaved),
        }));
    }
    eprintln!("computed in {:.1} s", started.elapsed().as_secs_f64());
    let out = out_dir(cli);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.join("moves.json");
    let report = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "inputs": {
            "grow": args.grow, "churn": args.churn, "mailboxes": args.mailboxes,
            "rules": "roster.md §5.4 generator; grow: node_key(0..grow) join; shrink: churn \
                leaves; regrow: churn joins; interleaved: churn leave-then-join pairs; the k-th \
                leave removes index u32be(node_key(2000000 + k)[0..4]) mod n of the n nodes \
                present in join order, the k-th later join adds node_key(grow + k)",
            "events_columns": ["kind", "swarms_before", "swarms_after", "nodes_moved",
                "mailboxes_moved"],
        },
        "results": results,
    });
    write_report(&path, &report)?;
    Ok(())
}

async fn bench_authority(cli: &Cli, args: &AuthorityArgs) -> Result<(), String> {
    let machine = Machine::describe();
    println!("allium-bench authority — {}", machine.line());
    let results = authority::run(&args.sizes, args.rounds.max(1)).await?;
    let out = out_dir(cli);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = cli
        .json
        .clone()
        .unwrap_or_else(|| out.join("authority.json"));
    let report = json!({
        "tool": "allium-bench authority",
        "version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "machine": machine.to_json(),
        "results": results.iter().map(authority::SizeResult::to_json).collect::<Vec<_>>(),
    });
    write_report(&path, &report)?;
    Ok(())
}

async fn bench(cli: Cli) -> Result<(), String> {
    if let Some(Command::Authority(args)) = &cli.command {
        return bench_authority(&cli, args).await;
    }
    if let Some(Command::Longpoll(args)) = &cli.command {
        return bench_longpoll(&cli, args).await;
    }
    if let Some(Command::Attach(args)) = &cli.command {
        return bench_attach(&cli, args).await;
    }
    if let Some(Command::Relay(args)) = &cli.command {
        return bench_relay(&cli, args).await;
    }
    if let Some(Command::Moves(args)) = &cli.command {
        return bench_moves(&cli, args);
    }
    if let Some(Command::Sim(args)) = &cli.command {
        return bench_sim(&cli, args);
    }
    let machine = Machine::describe();
    let mut network = start_network(&cli, None)?;
    let out = out_dir(&cli);
    let measured = measure(&cli, &mut network).await;
    let unclean = network.stop();
    let results = measured?;
    print_table(&cli, &results, &machine);
    write_outputs(&cli, &results, &machine, &out)?;
    if !unclean.is_empty() {
        return Err(format!("nodes that did not stop cleanly: {unclean:?}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(shell) = cli.completions {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "allium-bench",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("allium-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allium-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
