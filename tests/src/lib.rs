#![doc = include_str!("../README.md")]

pub mod onion;
pub mod people;

use std::path::PathBuf;

use tokio::sync::{Mutex, MutexGuard};

pub use allium_node::devnet::DevnetOptions;
pub use allium_node::devnet::wait_for_roster;
use allium_node::devnet::{Devnet, DevnetError};
use allium_proto::network::NetworkFile;
use allium_proto::roster::Roster;

/// The roster once it lists `nodes` nodes and every running node of `net` holds it, asked for
/// through `pool`; panics after `limit` for each.
#[allow(clippy::expect_used, clippy::panic)] // test support: a network that never forms fails the test
pub async fn formed(
    net: &mut Devnet,
    pool: &allium_link::Pool,
    network: &NetworkFile,
    nodes: usize,
    limit: std::time::Duration,
) -> Roster {
    let roster = wait_for_roster(pool, network, nodes, limit)
        .await
        .expect("roster formed");
    assert!(
        net.wait_for_roster_version(roster.version(), limit).await,
        "nodes did not fetch roster {}",
        roster.version()
    );
    roster
}

/// The `allium-node` executable that `cargo test --workspace` built next to the test binaries.
pub fn node_binary() -> PathBuf {
    binary("allium-node")
}

/// The `allium` client executable, built alongside.
pub fn client_binary() -> PathBuf {
    binary("allium")
}

/// `ALLIUM_BIN_DIR` names the folder of the binaries (as for `scripts/demo`); otherwise they are
/// the ones built next to the test.
fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ALLIUM_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    dir.join(name)
}

/// Whole-network tests start several processes each; running them one at a time keeps a
/// two-core machine responsive and their timings meaningful.
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// Starts a devnet of `nodes` nodes plus an authority in `dir`.
pub fn start_devnet(dir: &std::path::Path, nodes: usize) -> Result<Devnet, DevnetError> {
    start_devnet_with(
        dir,
        &DevnetOptions {
            nodes,
            ..test_options()
        },
    )
}

/// The options whole-network tests start devnets with: short time-outs.
pub fn test_options() -> DevnetOptions {
    DevnetOptions {
        forward_timeout_ms: 1500,
        ..DevnetOptions::default()
    }
}

/// Starts a devnet with `opts` in `dir`.
pub fn start_devnet_with(
    dir: &std::path::Path,
    opts: &DevnetOptions,
) -> Result<Devnet, DevnetError> {
    let binary = node_binary();
    if !binary.exists() {
        return Err(DevnetError::Startup(format!(
            "{} not found: build it with `cargo build -p allium-node` (cargo test --workspace does)",
            binary.display()
        )));
    }
    Devnet::start(&binary, dir, opts)
}
