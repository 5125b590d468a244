#![doc = include_str!("../README.md")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use allium_node::devnet::{Devnet, DevnetError, DevnetOptions};
use allium_node::directory::ask_authorities;
use allium_node::link::Pool;
use allium_swarm::network::NetworkFile;
use allium_swarm::roster::{DirectoryRequest, DirectoryResponse, Roster, SignedRoster};

/// The `allium-node` executable that `cargo test --workspace` built next to the test binaries.
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/allium-node
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    dir.join("allium-node")
}

/// Whole-network tests start several processes each; running them one at a time keeps a
/// two-core machine responsive and their timings meaningful.
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// Starts a devnet of `nodes` nodes plus an authority in `dir`.
pub fn start_devnet(dir: &std::path::Path, nodes: usize) -> Result<Devnet, DevnetError> {
    let binary = node_binary();
    if !binary.exists() {
        return Err(DevnetError::Startup(format!(
            "{} not found: build it with `cargo build -p allium-node` (cargo test --workspace does)",
            binary.display()
        )));
    }
    Devnet::start(
        &binary,
        dir,
        &DevnetOptions {
            nodes,
            forward_timeout_ms: 1500,
            ..DevnetOptions::default()
        },
    )
}

/// Fetches the roster from the authority until it lists `nodes` nodes (or `deadline` passes).
pub async fn wait_for_roster(
    pool: &Pool,
    network: &NetworkFile,
    nodes: usize,
    deadline: Duration,
) -> Option<Roster> {
    let until = Instant::now() + deadline;
    loop {
        let request = DirectoryRequest::GetRoster { have_version: None };
        if let Some(DirectoryResponse::Roster(bytes)) =
            ask_authorities(pool, network, &request, Duration::from_secs(2)).await
        {
            if let Ok(roster) = SignedRoster::decode_and_verify(&bytes, network, None) {
                if roster.nodes().len() >= nodes {
                    return Some(roster);
                }
            }
        }
        if Instant::now() > until {
            return None;
        }
        // The authority publishes on its own schedule; ask again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
