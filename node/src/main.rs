//! `allium-node`: the Allium service node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_link::{Link, LinkLimits, Pool};
use allium_node::config::{CONFIG_FILE_ENV, ConfigOverrides, NodeConfig};
use allium_node::devnet::{self, Devnet, DevnetOptions};
use allium_node::keystore::KeyStore;
use allium_node::shutdown::ShutdownSignal;
use allium_node::{daemon, logging};
use allium_proto::network::NetworkFile;
use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

/// The Allium service node: relays onion packets, keeps mailboxes for its swarm, and (in the
/// authority role) publishes the signed roster.
#[derive(Debug, Parser)]
#[command(
    name = "allium-node",
    version,
    propagate_version = true,
    long_about = "The Allium service node: relays onion packets between clients and other nodes, \
keeps the mailboxes of its swarm in RocksDB, replicates them to its swarm peers, and (in the \
authority role) tests nodes and publishes the signed roster.

A node needs a data directory with its identity key (`init`), a network file naming the network's \
authorities, and a configuration (file, environment variables, flags; see `run --help`).",
    after_long_help = "Examples:
  # A whole local network (authority and 9 nodes) for trying Allium out:
  allium-node devnet

  # One node on a real host:
  allium-node init --data-dir /var/lib/allium-node
  allium-node run --config /etc/allium/node.toml
  allium-node status
  allium-node check-network /etc/allium/network.toml

  # Shell completions:
  allium-node completions bash > /etc/bash_completion.d/allium-node

Operator documentation: doc/operator.md, doc/network-file.md and doc/metrics.md in the source tree."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory and a new node identity key in it.
    #[command(
        long_about = "Create the data directory (mode 0700) and a new Ed25519 identity key in it \
(`identity.key`, mode 0600), and print the identity's public key as 64 hex digits.

The identity key is the node: it names the node in the roster and on every link. Back it up; \
`init` refuses to replace an existing one.",
        after_long_help = "Examples:
  allium-node init --data-dir /var/lib/allium-node
  allium-node init --data-dir ./node-a"
    )]
    Init {
        /// Data directory (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Print the identity key of an initialised data directory.
    #[command(
        long_about = "Print the public identity key of an initialised data directory as 64 hex \
digits: what goes into the network file's `[[authority]] identity` for an authority, and what \
the roster lists for any node. Prints nothing secret.",
        after_long_help = "Examples:
  allium-node identity --data-dir /var/lib/allium-node"
    )]
    Identity {
        /// Data directory holding `identity.key`.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Run the node until SIGINT or SIGTERM.
    #[command(
        long_about = "Run the node in the foreground until SIGINT or SIGTERM, then stop \
accepting, finish the requests in flight and close the store (nothing acknowledged is lost).

Settings come from built-in defaults, then the TOML file (--config or ALLIUM_NODE_CONFIG), then \
ALLIUM_NODE_* environment variables, then these flags; each layer replaces only the keys it sets. \
node/examples/node.toml lists every key with its default and its environment variable. Unknown \
keys and values that cannot work are refused with an error naming the key.

The node listens for QUIC on UDP `listen` and serves /metrics and /health over HTTP on \
`metrics_listen` (loopback by default). Once it listens it writes `<data_dir>/run.json` (pid, \
addresses, identity). Logs go to standard error.",
        after_long_help = "Examples:
  allium-node run --config /etc/allium/node.toml
  allium-node run --data-dir ./node-a --network ./network.toml \\
      --listen 0.0.0.0:4433 --public-addr 203.0.113.7:4433
  ALLIUM_NODE_LOG=allium_node=debug,info allium-node run --config node.toml
  allium-node run --config node.toml --authority    # the network file must list this identity"
    )]
    Run(RunArgs),
    /// Ask a running node for its health, through its local metrics endpoint.
    #[command(
        long_about = "Ask a running node for its health through its metrics endpoint \
(GET /health) and print the JSON answer: status (ok, starting, stopping), the roster version it \
holds, its uptime and its open peer links.

Exit status: 0 when the node is ok, 3 when it answers but is not ok (starting or stopping), 1 \
when nothing answers.",
        after_long_help = "Examples:
  allium-node status
  allium-node status --metrics 127.0.0.1:9465"
    )]
    Status {
        /// The node's metrics address (`metrics_listen`).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        metrics: SocketAddr,
    },
    /// Run a local network: an authority and N nodes on loopback, until Ctrl-C.
    #[command(
        long_about = "Run a whole Allium network on this machine: an authority and --nodes nodes, \
each a separate `allium-node run` process on loopback with its own data directory, config and \
log under --dir. Writes the network file clients need (<dir>/network.toml), waits until the \
authority has signed a roster listing every node and every node holds it, prints how to use the \
network, and stays in the foreground.

Ctrl-C or SIGTERM stops every node with SIGTERM and reports each. Started again with the same \
--dir, the network keeps its identities, ports, roster and mailboxes; --swarm-size and \
--epoch-secs only apply when the network file is first written.

Layout of --dir:
  network.toml          the network file (give it to clients: allium --network ...)
  <name>.toml           each node's config (authority, node-1, ...)
  <name>/               each node's data directory (keys, store, roster cache, run.json)
  <name>.log            each node's log",
        after_long_help = "Examples:
  allium-node devnet
  allium-node devnet --nodes 3 --dir /tmp/allium-devnet
  allium-node devnet --log allium_node=debug,info --epoch-secs 600

Then, in another terminal:
  export ALLIUM_NETWORK=$PWD/allium-devnet/network.toml
  allium init
  allium status"
    )]
    Devnet(DevnetArgs),
    /// Check a network file and print its fingerprint.
    #[command(
        long_about = "Read and validate a network file exactly as a node or client would, and \
print its name, authorities, parameters and fingerprint. The fingerprint (64 hex digits) is equal \
for two files that describe the same network, whatever their comments or layout: publish it with \
the file so operators and users can check they hold the right one.

Exit status 0 if the file is valid, 1 with the reason (naming the key) if not.",
        after_long_help = "Examples:
  allium-node check-network /etc/allium/network.toml
  allium-node check-network ./allium-devnet/network.toml"
    )]
    CheckNetwork {
        /// The network file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a shell completion script.
    #[command(
        long_about = "Print the completion script for a shell on standard output.",
        after_long_help = "Examples:
  allium-node completions bash > /etc/bash_completion.d/allium-node
  allium-node completions zsh > \"${fpath[1]}/_allium-node\"
  allium-node completions fish > ~/.config/fish/completions/allium-node.fish"
    )]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: Shell,
    },
}

/// Settings: built-in defaults, then the TOML file, then `ALLIUM_NODE_*` environment variables
/// (see `examples/node.toml`), then these flags.
#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file [env: ALLIUM_NODE_CONFIG].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory holding keys, mailboxes and the cached roster [key: data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address the QUIC link listens on [key: listen].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address other nodes and clients reach this node at, published in the roster; required
    /// when `listen` is a wildcard address [key: public_addr].
    #[arg(long, value_name = "ADDR")]
    public_addr: Option<SocketAddr>,
    /// Address of the metrics and health endpoint, loopback unless the config allows otherwise
    /// [key: metrics_listen].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The network file [key: network_file].
    #[arg(long = "network", value_name = "FILE")]
    network_file: Option<PathBuf>,
    /// Also run the directory-authority role; the network file must list this node's identity
    /// [key: authority].
    #[arg(long)]
    authority: bool,
    /// Log filter, e.g. `info` or `allium_node=debug,info` [key: log].
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Log as JSON lines [key: log_json].
    #[arg(long)]
    log_json: bool,
}

#[derive(Debug, Args)]
struct DevnetArgs {
    /// Folder holding the network file and every node's config, data and log.
    #[arg(long, value_name = "DIR", default_value = "./allium-devnet")]
    dir: PathBuf,
    /// Nodes besides the authority, which is a node too (9 make ten nodes: with --swarm-size 3,
    /// three swarms of 4, 3 and 3 members).
    #[arg(long, value_name = "N", default_value_t = 9,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    nodes: u16,
    /// Target members per swarm, written into a new network file.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    swarm_size: u16,
    /// Onion-key epoch length in seconds, written into a new network file.
    #[arg(long, value_name = "SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    epoch_secs: u64,
    /// Log filter of the nodes (their logs are <dir>/<name>.log).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
    /// Give up if the network has not formed within this many seconds (default: 120, or one
    /// per node for larger devnets, which take longer to form on a small machine).
    #[arg(long, value_name = "SECS")]
    ready_timeout: Option<u64>,
}

impl DevnetArgs {
    fn ready_timeout(&self) -> u64 {
        self.ready_timeout
            .unwrap_or_else(|| u64::from(self.nodes).max(120))
    }
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
        Command::Devnet(args) => run_devnet(args),
        Command::CheckNetwork { file } => match NetworkFile::load(&file) {
            Ok(network) => {
                print!("{}", describe_network(&network));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "allium-node",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

fn describe_network(network: &NetworkFile) -> String {
    use std::fmt::Write as _;
    let p = network.params();
    let mut out = String::new();
    let _ = writeln!(out, "name:              {}", network.name());
    for a in network.authorities() {
        let _ = writeln!(
            out,
            "authority:         {} at {}",
            hex(a.identity.as_bytes()),
            a.address
        );
    }
    let _ = writeln!(out, "swarm_size:        {}", p.swarm_size);
    let _ = writeln!(
        out,
        "ttl:               {} s to {} s",
        p.min_ttl_secs, p.max_ttl_secs
    );
    let _ = writeln!(out, "epoch_secs:        {}", p.epoch_secs);
    let _ = writeln!(out, "allow_same_subnet: {}", p.allow_same_subnet);
    let _ = writeln!(out, "roster_threshold:  {}", p.roster_threshold);
    let _ = writeln!(out, "fingerprint:       {}", network.fingerprint_hex());
    out
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

/// The pid file that keeps two devnets off one folder (they would fight over its ports).
const DEVNET_PID_FILE: &str = "devnet.pid";

fn run_devnet(args: DevnetArgs) -> ExitCode {
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => return fail(&format!("cannot find the allium-node executable: {e}")),
    };
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        return fail(&format!("cannot create {}: {e}", args.dir.display()));
    }
    // Absolute, so the node configs and the instructions printed work from any folder.
    let dir = match args.dir.canonicalize() {
        Ok(d) => d,
        Err(e) => return fail(&format!("{}: {e}", args.dir.display())),
    };
    if let Some(pid) = running_devnet(&dir) {
        return fail(&format!(
            "another devnet (pid {pid}) is running in {}; stop it first",
            dir.display()
        ));
    }
    let pid_file = dir.join(DEVNET_PID_FILE);
    if let Err(e) = std::fs::write(&pid_file, std::process::id().to_string()) {
        return fail(&format!("cannot write {}: {e}", pid_file.display()));
    }
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let code = rt.block_on(devnet_main(binary, dir, args));
    let _ = std::fs::remove_file(&pid_file);
    code
}

/// The pid in `<dir>/devnet.pid`, if that process is still a running devnet.
fn running_devnet(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(DEVNET_PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A stale file from a killed devnet may name a pid reused by something else since.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (pid != std::process::id() && cmdline.contains("allium-node") && cmdline.contains("devnet"))
        .then_some(pid)
}

#[allow(clippy::print_stdout)]
async fn devnet_main(binary: PathBuf, dir: PathBuf, args: DevnetArgs) -> ExitCode {
    let shutdown = ShutdownSignal::new();
    if let Err(e) = shutdown.listen_for_os_signals() {
        return fail(&format!("cannot install signal handlers: {e}"));
    }
    let total = usize::from(args.nodes) + 1;
    println!(
        "Starting an Allium devnet in {}: an authority and {} nodes",
        dir.display(),
        args.nodes
    );
    let opts = DevnetOptions {
        nodes: usize::from(args.nodes),
        swarm_size: usize::from(args.swarm_size),
        epoch_secs: args.epoch_secs,
        log: args.log.clone(),
        ..DevnetOptions::default()
    };
    // Starting is blocking work (spawning processes, waiting for each to listen); a signal
    // meanwhile is noticed between two nodes.
    let started = {
        let (dir, stop) = (dir.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            Devnet::start_with_progress(&binary, &dir, &opts, |node| {
                n += 1;
                println!(
                    "  [{n:>3}/{total}] started {:<10} pid {:<7} quic {}  log {}",
                    node.name,
                    node.pid().unwrap_or(0),
                    node.addr,
                    node.log.display()
                );
                !stop.is_triggered()
            })
        })
        .await
    };
    let mut net = match started {
        Ok(Ok(net)) => net,
        Ok(Err(_)) if shutdown.is_triggered() => {
            println!("Interrupted while starting; the nodes started so far were stopped.");
            return ExitCode::SUCCESS;
        }
        Ok(Err(e)) => {
            return fail(&format!(
                "the devnet did not start (the nodes already running were stopped): {e}"
            ));
        }
        Err(e) => return fail(&format!("the devnet did not start: {e}")),
    };
    let network = match NetworkFile::load(&net.network_file) {
        Ok(n) => n,
        Err(e) => return stop_devnet(&mut net, Some(&e.to_string())),
    };
    let params = network.params();
    if params.swarm_size != usize::from(args.swarm_size) || params.epoch_secs != args.epoch_secs {
        println!(
            "  note: keeping the existing network file (swarm_size = {}, epoch_secs = {}); \
             remove {} to start a new network with other parameters",
            params.swarm_size,
            params.epoch_secs,
            dir.display()
        );
    }
    println!("Network file: {}", net.network_file.display());
    println!("  fingerprint {}", network.fingerprint_hex());

    match form_network(&mut net, &network, total, &args, &shutdown).await {
        Ok(Formed::Ready { version, swarms }) => {
            print_ready(&net, &network, total, version, &swarms);
        }
        Ok(Formed::Interrupted) => return stop_devnet(&mut net, None),
        Err(e) => return stop_devnet(&mut net, Some(&e)),
    }

    // Serve until told to stop; a node that dies meanwhile is reported, the rest keep running.
    let mut crashed = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.triggered() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                while let Err(e) = net.check_running() {
                    eprintln_warning(&e.to_string());
                    crashed.push(e.to_string());
                }
            }
        }
    }
    let code = stop_devnet(&mut net, None);
    if crashed.is_empty() {
        code
    } else {
        fail(&format!(
            "{} node(s) had exited before the devnet stopped",
            crashed.len()
        ))
    }
}

enum Formed {
    /// The roster lists every node; `swarms` holds each swarm's number of members, largest first.
    Ready {
        version: u64,
        swarms: Vec<usize>,
    },
    Interrupted,
}

/// Waits until the authority's roster lists every process and every node holds it, printing
/// each step; fails if a node exits or the network does not form in time.
#[allow(clippy::print_stdout)]
async fn form_network(
    net: &mut Devnet,
    network: &NetworkFile,
    total: usize,
    args: &DevnetArgs,
    shutdown: &ShutdownSignal,
) -> Result<Formed, String> {
    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout());
    let late = format!(
        "the network did not form within {} s; the node logs are <name>.log in {}",
        args.ready_timeout(),
        net.dir().display()
    );
    // An anonymous endpoint, as a client would use: the roster is public.
    let link = Link::bind_client(([127, 0, 0, 1], 0).into(), LinkLimits::default())
        .map_err(|e| format!("cannot open a client endpoint: {e}"))?;
    let pool = Pool::new(Arc::new(link), Duration::from_secs(2));
    println!("Waiting for the authority to sign a roster listing all {total} processes…");
    let mut shown = None;
    let roster = loop {
        net.check_running().map_err(|e| e.to_string())?;
        let fetched = tokio::select! {
            r = devnet::fetch_roster(&pool, network) => r,
            () = shutdown.triggered() => return Ok(Formed::Interrupted),
        };
        if let Some(roster) = fetched {
            let now = (roster.version(), roster.nodes().len());
            if shown != Some(now) {
                println!(
                    "  roster version {}: {}/{total} listed",
                    now.0,
                    now.1.min(total)
                );
                shown = Some(now);
            }
            if roster.nodes().len() >= total {
                break roster;
            }
        }
        if Instant::now() > deadline {
            return Err(late);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = shutdown.triggered() => return Ok(Formed::Interrupted),
        }
    };
    let version = roster.version();
    println!("Waiting for every node to fetch roster version {version}…");
    let mut shown = None;
    loop {
        net.check_running().map_err(|e| e.to_string())?;
        let (holding, running) = tokio::select! {
            r = net.nodes_holding(version) => r,
            () = shutdown.triggered() => return Ok(Formed::Interrupted),
        };
        if shown != Some(holding) {
            println!("  {holding}/{running} hold it");
            shown = Some(holding);
        }
        if holding == running {
            break;
        }
        if Instant::now() > deadline {
            return Err(late);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = shutdown.triggered() => return Ok(Formed::Interrupted),
        }
    }
    let mut swarms: Vec<usize> = roster.swarms().values().map(Vec::len).collect();
    swarms.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Formed::Ready { version, swarms })
}

#[allow(clippy::print_stdout)]
fn print_ready(net: &Devnet, network: &NetworkFile, total: usize, version: u64, swarms: &[usize]) {
    let file = net.network_file.display();
    let count = swarms.len();
    let plural = if count == 1 { "" } else { "s" };
    let sizes = match swarms.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!(
            "{} and {last}",
            rest.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => swarms.iter().map(ToString::to_string).collect(),
    };
    println!(
        "Devnet ready: {total} nodes (the authority and {} more), {count} swarm{plural} of \
         {sizes} members (target {}), roster version {version}.",
        total - 1,
        network.params().swarm_size
    );
    println!();
    println!(
        "  {:<10} {:<8} {:<22} {:<22} log",
        "name", "pid", "quic", "metrics"
    );
    for node in &net.nodes {
        println!(
            "  {:<10} {:<8} {:<22} {:<22} {}",
            node.name,
            node.pid().map(|p| p.to_string()).unwrap_or_default(),
            node.addr.to_string(),
            node.metrics.to_string(),
            node.log.display()
        );
    }
    println!();
    println!("Network file for clients: {file}");
    println!("Try it from another terminal:");
    println!("  export ALLIUM_NETWORK={file}");
    println!(
        "  allium --data-dir ./alice init          # prints Alice's address and recovery phrase"
    );
    println!("  allium --data-dir ./bob init");
    println!("  allium --data-dir ./alice contacts add bob <Bob's address>");
    println!("  allium --data-dir ./alice send bob \"hello\"");
    println!("  allium --data-dir ./bob inbox");
    println!("  allium --data-dir ./alice status        # the roster and the path in use");
    println!(
        "Node health: allium-node status --metrics {}",
        net.nodes
            .first()
            .map(|n| n.metrics.to_string())
            .unwrap_or_default()
    );
    println!(
        "Data stays in {}; Ctrl-C stops the network, the same command resumes it.",
        net.dir().display()
    );
}

/// Stops every node with SIGTERM, reports each, and returns the exit status: failure if
/// `error` is set or a node did not stop cleanly.
#[allow(clippy::print_stdout)]
fn stop_devnet(net: &mut Devnet, error: Option<&str>) -> ExitCode {
    let running = net.nodes.iter().filter(|n| n.pid().is_some()).count();
    println!("Stopping {running} processes…");
    let stopped = net.stop_all();
    let mut unclean = 0;
    for s in &stopped {
        println!("  {:<10} pid {:<7} {}", s.name, s.pid, s.outcome);
        if !s.clean {
            unclean += 1;
        }
    }
    if let Some(e) = error {
        return fail(&format!("the devnet did not start: {e}"));
    }
    if unclean > 0 {
        return fail(&format!(
            "{unclean} node(s) did not stop cleanly; see their logs in {}",
            net.dir().display()
        ));
    }
    println!(
        "Devnet stopped. Data kept in {}; run the same command to resume.",
        net.dir().display()
    );
    ExitCode::SUCCESS
}

#[allow(clippy::print_stderr)]
fn eprintln_warning(e: &str) {
    eprintln!("allium-node devnet: {e}");
}

#[allow(clippy::print_stderr)]
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("allium-node: {e}");
    ExitCode::FAILURE
}
