//! `allium-node`: the Allium service node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use allium_node::config::{CONFIG_FILE_ENV, ConfigOverrides, NodeConfig};
use allium_node::keystore::KeyStore;
use allium_node::shutdown::ShutdownSignal;
use allium_node::{daemon, logging};
use clap::{Args, Parser, Subcommand};

/// The Allium service node: relays onion packets, keeps mailboxes for its swarm, and (in the
/// authority role) publishes the signed roster.
#[derive(Debug, Parser)]
#[command(name = "allium-node", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory and a new node identity key in it.
    Init {
        /// Data directory (created with mode 0700).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Print the identity key of an initialised data directory.
    Identity {
        /// Data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Run the node until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Ask a running node for its health, through its local metrics endpoint.
    Status {
        /// The node's metrics address (`metrics_listen`).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        metrics: SocketAddr,
    },
}

/// Settings: built-in defaults, then the TOML file, then `ALLIUM_NODE_*` environment variables
/// (see `examples/node.toml`), then these flags.
#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file [env: ALLIUM_NODE_CONFIG].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory holding keys, mailboxes and the cached roster.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// QUIC listen address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address other nodes and clients reach this node at (published in the roster).
    #[arg(long, value_name = "ADDR")]
    public_addr: Option<SocketAddr>,
    /// Loopback address of the metrics and health endpoint.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The network file.
    #[arg(long = "network", value_name = "FILE")]
    network_file: Option<PathBuf>,
    /// Also run the directory-authority role (the network file must list this node's key).
    #[arg(long)]
    authority: bool,
    /// Log filter, e.g. `info` or `allium_node=debug`.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Init { data_dir } => match KeyStore::init(&data_dir, &mut rand_core::OsRng) {
            Ok(store) => {
                println!("{}", hex(store.identity().public().as_bytes()));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Identity { data_dir } => match KeyStore::open(&data_dir) {
            Ok(store) => {
                println!("{}", hex(store.identity().public().as_bytes()));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Status { metrics } => match tokio_runtime().and_then(|rt| {
            rt.block_on(allium_node::http::get(metrics, "/health"))
                .map_err(|e| e.to_string())
        }) {
            Ok((status, body)) => {
                println!("{body}");
                if status == 200 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                }
            }
            Err(e) => fail(&format!("no node answers at {metrics}: {e}")),
        },
        Command::Run(args) => run(args),
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run(args: RunArgs) -> ExitCode {
    let file = args
        .config
        .or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
    let overrides = ConfigOverrides {
        data_dir: args.data_dir,
        listen: args.listen,
        public_addr: args.public_addr,
        metrics_listen: args.metrics_listen,
        network_file: args.network_file,
        authority: args.authority.then_some(true),
        log: args.log,
        log_json: args.log_json.then_some(true),
    };
    let config = match NodeConfig::load(file.as_deref(), |k| std::env::var(k).ok(), overrides) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Err(e) = logging::init(&config.log, config.log_json) {
        return fail(&e);
    }
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    rt.block_on(async {
        let shutdown = ShutdownSignal::new();
        if let Err(e) = shutdown.listen_for_os_signals() {
            return fail(&format!("cannot install signal handlers: {e}"));
        }
        match daemon::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    })
}

#[allow(clippy::print_stderr)]
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("allium-node: {e}");
    ExitCode::FAILURE
}
