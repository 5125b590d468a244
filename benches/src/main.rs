//! `allium-bench`: onion path latency against a local network of real node processes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allium_client::onion::{OnionClient, epoch_at, resolve};
use allium_node::devnet::{Devnet, DevnetOptions, wait_for_roster};
use allium_onion::SizeClass;
use allium_swarm::network::NetworkFile;
use allium_swarm::proto::StoreRequest;
use allium_swarm::roster::NodeEntry;
use allium_swarm::{Body, Mailbox, Request};
use clap::Parser;

/// Measures the round trip of acknowledged stores through a path of three relays and a
/// destination, on a local network of real `allium-node` processes that it starts itself.
#[derive(Debug, Parser)]
#[command(name = "allium-bench", version)]
struct Cli {
    /// Sequential requests to time (after the warm-up).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Requests sent first and not timed, so every connection on the path is warm.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Nodes besides the authority.
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Keep the network's folder here instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn node_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("allium-node")))
        .unwrap_or_else(|| PathBuf::from("allium-node"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

async fn bench(cli: Cli) -> Result<(), String> {
    let temp;
    let dir = match &cli.dir {
        Some(d) => d.clone(),
        None => {
            temp = std::env::temp_dir().join(format!("allium-bench-{}", std::process::id()));
            temp.clone()
        }
    };
    eprintln!(
        "starting an authority and {} nodes in {} …",
        cli.nodes,
        dir.display()
    );
    let mut net = Devnet::start(
        &node_binary(),
        &dir,
        &DevnetOptions {
            nodes: cli.nodes,
            log: "warn".into(),
            ..DevnetOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let network = NetworkFile::load(&net.network_file).map_err(|e| e.to_string())?;
    let client = OnionClient::new("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
        .map_err(|e| e.to_string())?;
    let roster = wait_for_roster(
        client.pool(),
        &network,
        cli.nodes + 1,
        Duration::from_secs(60),
    )
    .await
    .ok_or("the roster did not form within 60 s")?;
    if !net
        .wait_for_roster_version(roster.version(), Duration::from_secs(60))
        .await
    {
        return Err("the nodes did not fetch the roster within 60 s".into());
    }

    let mailbox = Mailbox([7u8; 32]);
    let members = roster.members_for(&mailbox.0);
    let destination = *members.first().ok_or("no swarm for the mailbox")?;
    let relays: Vec<&NodeEntry> = roster
        .nodes()
        .iter()
        .filter(|n| n.identity != destination.identity)
        .take(3)
        .collect();
    let mut path = relays.clone();
    path.push(destination);
    let hops = resolve(&path, epoch_at(network.params.epoch_secs, now_secs()))
        .map_err(|e| e.to_string())?;

    let mut samples = Vec::with_capacity(cli.requests);
    for i in 0..cli.warmup + cli.requests {
        // Distinct contents: every store is a new message, not a deduplicated one.
        let mut data = vec![0u8; cli.size];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let request = Request::unsigned(Body::Store(StoreRequest {
            mailbox,
            namespace: 0,
            ttl_ms: 600_000,
            data,
        }))
        .encode();
        let started = Instant::now();
        client
            .send(&hops, &request, SizeClass::Small, Duration::from_secs(10))
            .await
            .map_err(|e| format!("request {i}: {e}"))?;
        if i >= cli.warmup {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    println!(
        "4-layer store round trip ({} sequential requests, {} B messages, {} warm-up requests excluded):",
        samples.len(),
        cli.size,
        cli.warmup
    );
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "  {name:>4}  {:>9.3} ms",
            percentile(&samples, p).as_secs_f64() * 1e3
        );
    }
    let unclean = net.stop();
    if !unclean.is_empty() {
        return Err(format!("nodes that did not stop cleanly: {unclean:?}"));
    }
    if cli.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
