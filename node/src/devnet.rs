//! A local network of real `allium-node` processes on loopback: one authority and any number of
//! nodes, each with its own data directory under one folder. Used by `allium-node devnet`, the
//! whole-network tests and `allium-bench`.
//!
//! Started again on the same folder, it reuses the identities, mailboxes and ports it had.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allium_onion::IdentityPublicKey;

/// Why the devnet could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A node did not come up.
    #[error("{0}")]
    Startup(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevnetError {
    let what = what.into();
    move |source| DevnetError::Io { what, source }
}

/// Timing of a devnet: short intervals, so a network forms in seconds.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Nodes besides the authority.
    pub nodes: usize,
    /// Members per swarm.
    pub swarm_size: usize,
    /// Onion-key epoch length.
    pub epoch_secs: u64,
    /// Relay forward time-out.
    pub forward_timeout_ms: u64,
    /// Log filter of the nodes.
    pub log: String,
    /// Anti-entropy interval of the nodes.
    pub sync_interval_ms: u64,
    /// Replay filter design load of each node (packets per epoch).
    pub replay_packets_per_epoch: u64,
    /// Requests per second one client address may send to a node.
    pub client_requests_per_sec: u32,
    /// Requests one client address may send at once above that rate.
    pub client_request_burst: u32,
    /// Client connections a node accepts from one address; `None`: enough for every process
    /// of the devnet and a few clients (see [`DevnetOptions::connections_per_ip`]).
    pub max_connections_per_ip: Option<u32>,
    /// The CPU core the last node is started on (util-linux `taskset -c`), as an operator pins
    /// a node: its async runtime then sizes itself for that one core.
    pub last_node_core: Option<usize>,
}

impl DevnetOptions {
    /// The per-address connection cap written into each node's config. Every process of a
    /// devnet dials from 127.0.0.1, and a node that has not yet been admitted to the roster
    /// (every node, while the first roster forms) counts as a client of that address: with the
    /// internet's cap of 16, the authority refuses most registrations of a large devnet until
    /// earlier ones are admitted. So the default leaves room for two connections per process
    /// and 64 for clients and tools.
    pub fn connections_per_ip(&self) -> u32 {
        self.max_connections_per_ip.unwrap_or_else(|| {
            let processes = u32::try_from(self.nodes + 1).unwrap_or(u32::MAX);
            processes.saturating_mul(2).saturating_add(64)
        })
    }
}

impl Default for DevnetOptions {
    fn default() -> Self {
        DevnetOptions {
            nodes: 9,
            swarm_size: 3,
            epoch_secs: 3600,
            forward_timeout_ms: 2000,
            log: "info".into(),
            sync_interval_ms: 1000,
            replay_packets_per_epoch: 100_000,
            // Every process of a devnet shares one address, so per-address limits are off.
            client_requests_per_sec: 1_000_000,
            client_request_burst: 1_000_000,
            max_connections_per_ip: None,
            last_node_core: None,
        }
    }
}

/// One node of the devnet.
#[derive(Debug)]
pub struct DevnetNode {
    /// Short name (`authority`, `node-1`, …).
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its metrics and health address.
    pub metrics: SocketAddr,
    /// Its identity key.
    pub identity: IdentityPublicKey,
    /// Where its standard error (its log) goes: `<dir>/<name>.log`.
    pub log: PathBuf,
    child: Option<Child>,
}

impl DevnetNode {
    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, if the process was started and has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// A running local network.
#[derive(Debug)]
pub struct Devnet {
    binary: PathBuf,
    dir: PathBuf,
    /// The network file clients and nodes use.
    pub network_file: PathBuf,
    /// The authority first, then the nodes.
    pub nodes: Vec<DevnetNode>,
    log: String,
    opts: DevnetOptions,
}

/// Whether a health report says its node holds roster `version` or newer.
fn holds(report: Option<&serde_json::Value>, version: u64) -> bool {
    report
        .and_then(|r| r["roster_version"].as_u64())
        .unwrap_or(0)
        >= version
}

/// Ports for the nodes of one devnet, on loopback. They are drawn at random below the system's
/// ephemeral range, where other processes' outgoing sockets and OS-assigned ports never land,
/// and each stays bound here until every node's config is written, so two nodes never get the
/// same one. Another process may still bind one between the release and the node's start;
/// drawing from outside the busy range makes that rare even on a loaded test machine.
#[derive(Default)]
struct Ports {
    udp: Vec<UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
}

impl Ports {
    /// Below this the system assigns no ephemeral ports (Linux's default range starts here).
    const EPHEMERAL_LOW: u16 = 32_768;
    /// The lowest port drawn: clear of the well-known and common service ports.
    const LOW: u16 = 10_000;

    fn ephemeral_low() -> u16 {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .filter(|&low: &u16| low > Self::LOW + 1_000)
            .unwrap_or(Self::EPHEMERAL_LOW)
    }

    /// A UDP port (QUIC) and a TCP port (metrics), both held until `self` is dropped.
    fn reserve(&mut self) -> Result<(u16, u16), DevnetError> {
        let udp = Self::draw(|p| UdpSocket::bind(("127.0.0.1", p)).map(|s| self.udp.push(s)))?;
        let tcp = Self::draw(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).map(|s| self.tcp.push(s))
        })?;
        Ok((udp, tcp))
    }

    fn draw(mut bind: impl FnMut(u16) -> std::io::Result<()>) -> Result<u16, DevnetError> {
        use rand_core::RngCore;
        let span = u32::from(Self::ephemeral_low() - Self::LOW);
        let mut last = None;
        for _ in 0..200 {
            let offset = u16::try_from(rand_core::OsRng.next_u32() % span).unwrap_or(0);
            let port = Self::LOW + offset;
            match bind(port) {
                Ok(()) => return Ok(port),
                Err(e) => last = Some(e),
            }
        }
        Err(DevnetError::Startup(format!(
            "no free port on loopback: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }
}

/// How often the nodes of a devnet talk to its directory: as fast as the machine allows, so
/// a network forms in seconds. Each roster version costs every node one verification of it,
/// which grows with the number of nodes: n versions a second cost about n² verifications of one
/// entry, so past a few dozen nodes the intervals grow with n, or a small machine spends all its
/// time verifying rosters that are replaced before they are used (at 128 nodes on two cores the
/// roster never settled at the 500 ms of a small devnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirectoryTiming {
    register_interval_ms: u64,
    roster_refresh_ms: u64,
    publish_interval_ms: u64,
    descriptor_ttl_ms: u64,
}

impl DirectoryTiming {
    fn for_nodes(processes: usize) -> Self {
        let publish = (16 * processes as u64).max(500);
        let register = (2 * publish).max(1000);
        DirectoryTiming {
            register_interval_ms: register,
            roster_refresh_ms: publish,
            publish_interval_ms: publish,
            // Several registrations long, as for any network (operator.md).
            descriptor_ttl_ms: 5 * register,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Devnet {
    /// Creates (or reuses) a devnet in `dir` and starts every node, using the `allium-node`
    /// executable at `binary`. Returns once every process is up; the roster forms shortly after
    /// (see [`Devnet::wait_for_roster`]).
    pub fn start(binary: &Path, dir: &Path, opts: &DevnetOptions) -> Result<Devnet, DevnetError> {
        Self::start_with_progress(binary, dir, opts, |_| true)
    }

    /// [`Devnet::start`], calling `progress` after each node is up. If `progress` returns false
    /// the start is abandoned: the nodes started so far are stopped and an error returned.
    pub fn start_with_progress(
        binary: &Path,
        dir: &Path,
        opts: &DevnetOptions,
        mut progress: impl FnMut(&DevnetNode) -> bool,
    ) -> Result<Devnet, DevnetError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let network_file = dir.join("network.toml");
        let names: Vec<String> = std::iter::once("authority".to_string())
            .chain((1..=opts.nodes).map(|i| format!("node-{i}")))
            .collect();
        let mut nodes = Vec::with_capacity(names.len());
        let mut ports = Ports::default();
        for name in &names {
            nodes.push(Self::prepare(
                binary,
                dir,
                name,
                &network_file,
                opts,
                &mut ports,
            )?);
        }
        drop(ports);
        if !network_file.exists() {
            let auth = &nodes[0];
            let file = format!(
                "# Local development network written by `allium-node devnet`.\n\
                 name = \"allium-devnet\"\n\n[[authority]]\nidentity = \"{}\"\naddress = \"{}\"\n\n\
                 [params]\nswarm_size = {}\nmin_ttl_secs = 10\nmax_ttl_secs = 1209600\n\
                 epoch_secs = {}\nallow_same_subnet = true\nroster_threshold = 1\n",
                hex(auth.identity.as_bytes()),
                auth.addr,
                opts.swarm_size,
                opts.epoch_secs
            );
            std::fs::write(&network_file, file).map_err(io("writing the network file"))?;
        }
        let mut net = Devnet {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            network_file,
            nodes,
            log: opts.log.clone(),
            opts: opts.clone(),
        };
        // The authority first, then the nodes a batch at a time: a node's start-up is mostly
        // waiting (exec, opening its store, binding), so a batch overlaps those waits, while
        // the batch size keeps a small machine from starting every process at once.
        let count = net.nodes.len();
        let batches = std::iter::once(0..1).chain(
            (1..count)
                .step_by(STARTING_AT_ONCE)
                .map(|b| b..(b + STARTING_AT_ONCE).min(count)),
        );
        for batch in batches {
            let mut started = Ok(());
            for i in batch.clone() {
                started = started.and_then(|()| net.spawn_node(i));
            }
            for i in batch {
                let outcome = match started.as_ref().map_err(ToString::to_string) {
                    Ok(()) => match net.wait_listening(i) {
                        Ok(()) if progress(&net.nodes[i]) => continue,
                        Ok(()) => DevnetError::Startup("start interrupted".into()),
                        Err(e) => e,
                    },
                    Err(e) => DevnetError::Startup(e),
                };
                // SIGTERM rather than the SIGKILL of `Drop`: the nodes already up keep their
                // data consistent and their logs end with a clean stop.
                net.stop();
                return Err(outcome);
            }
        }
        Ok(net)
    }

    fn prepare(
        binary: &Path,
        dir: &Path,
        name: &str,
        network_file: &Path,
        opts: &DevnetOptions,
        ports: &mut Ports,
    ) -> Result<DevnetNode, DevnetError> {
        let data_dir = dir.join(name);
        let config = dir.join(format!("{name}.toml"));
        if !data_dir.join("identity.key").exists() {
            let out = Command::new(binary)
                .args(["init", "--data-dir"])
                .arg(&data_dir)
                .output()
                .map_err(io(format!("running {} init", binary.display())))?;
            if !out.status.success() {
                return Err(DevnetError::Startup(format!(
                    "{name}: init failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        if !config.exists() {
            let (port, metrics_port) = ports.reserve()?;
            let timing = DirectoryTiming::for_nodes(opts.nodes + 1);
            let text = format!(
                "data_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
                 network_file = \"{}\"\nauthority = {}\n\n[limits]\nforward_timeout_ms = {}\n\
                 client_requests_per_sec = {}\nclient_request_burst = {}\nmax_connections_per_ip = {}\n\
                 idle_timeout_ms = 30000\nkeep_alive_ms = 5000\n\n[store]\nmax_bytes = 1073741824\n\n\
                 [replay]\npackets_per_epoch = {}\n\n[replication]\nsync_interval_ms = {}\n\n\
                 [directory]\nregister_interval_ms = {}\n\
                 roster_refresh_ms = {}\npublish_interval_ms = {}\ndescriptor_ttl_ms = {}\n\
                 new_nodes_per_address_burst = {}\n",
                data_dir.display(),
                port,
                metrics_port,
                network_file.display(),
                name == "authority",
                opts.forward_timeout_ms,
                opts.client_requests_per_sec,
                opts.client_request_burst,
                opts.connections_per_ip(),
                opts.replay_packets_per_epoch,
                opts.sync_interval_ms,
                timing.register_interval_ms,
                timing.roster_refresh_ms,
                timing.publish_interval_ms,
                timing.descriptor_ttl_ms,
                // Every node registers from 127.0.0.1 at once.
                (opts.nodes + 1).max(32),
            );
            std::fs::write(&config, text).map_err(io("writing a node config"))?;
        }
        let cfg = crate::config::NodeConfig::from_file(&config)
            .map_err(|e| DevnetError::Startup(format!("{name}: {e}")))?;
        let identity = crate::keystore::KeyStore::open(&data_dir)
            .map_err(|e| DevnetError::Startup(format!("{name}: {e}")))?
            .identity()
            .public();
        Ok(DevnetNode {
            name: name.to_string(),
            data_dir,
            config,
            addr: cfg.listen,
            metrics: cfg.metrics_listen,
            identity,
            log: dir.join(format!("{name}.log")),
            child: None,
        })
    }

    /// Adds a node (`node-<n>`) to the network and starts it; returns its index.
    pub fn add_node(&mut self) -> Result<usize, DevnetError> {
        let name = format!("node-{}", self.nodes.len());
        let node = Self::prepare(
            &self.binary,
            &self.dir,
            &name,
            &self.network_file,
            &self.opts,
            &mut Ports::default(),
        )?;
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.start_node(i)?;
        Ok(i)
    }

    /// The folder holding everything.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts node `i` (again), logging to `<name>.log`, and waits until it listens.
    pub fn start_node(&mut self, i: usize) -> Result<(), DevnetError> {
        self.spawn_node(i)?;
        self.wait_listening(i)
    }

    /// Starts node `i`'s process, logging to `<name>.log`.
    fn spawn_node(&mut self, i: usize) -> Result<(), DevnetError> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io(format!("opening {}", node.log.display())))?;
        let run_file = node.data_dir.join("run.json");
        let _ = std::fs::remove_file(&run_file);
        let last = i + 1 == self.nodes.len();
        let mut command = match self.opts.last_node_core.filter(|_| last) {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let node = &mut self.nodes[i];
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&node.config)
            .arg("--log")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!(
                "starting {} ({})",
                node.name,
                self.binary.display()
            )))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `i`, just spawned, listens: it writes run.json once it listens and
    /// serves metrics.
    fn wait_listening(&mut self, i: usize) -> Result<(), DevnetError> {
        let node = &mut self.nodes[i];
        let run_file = node.data_dir.join("run.json");
        let deadline = Instant::now() + START_TIMEOUT;
        while !run_file.exists() {
            if let Some(status) = node.exited() {
                return Err(DevnetError::Startup(format!(
                    "{} exited during start-up ({status}); see its log {}{}",
                    node.name,
                    node.log.display(),
                    log_tail(&node.log)
                )));
            }
            if Instant::now() > deadline {
                return Err(DevnetError::Startup(format!(
                    "{} did not start within {} s; see its log {}{}",
                    node.name,
                    START_TIMEOUT.as_secs(),
                    node.log.display(),
                    log_tail(&node.log)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Checks that every node started is still running. A node that exited is reported once
    /// (it is then no longer counted as started), with its exit status and its log file.
    pub fn check_running(&mut self) -> Result<(), DevnetError> {
        for node in &mut self.nodes {
            if let Some(status) = node.exited() {
                node.child = None;
                return Err(DevnetError::Startup(format!(
                    "{} exited ({status}); see its log {}{}",
                    node.name,
                    node.log.display(),
                    log_tail(&node.log)
                )));
            }
        }
        Ok(())
    }

    /// The health report of each running node (`None` for one that does not answer).
    async fn health(&mut self) -> Vec<Option<serde_json::Value>> {
        let mut reports = Vec::new();
        for node in &mut self.nodes {
            if !node.is_running() {
                continue;
            }
            reports.push(
                crate::http::get(node.metrics, "/health")
                    .await
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str(&body).ok()),
            );
        }
        reports
    }

    /// Asks each running node's health endpoint for the roster version it holds; returns how many
    /// hold `version` or newer, and how many are running.
    pub async fn nodes_holding(&mut self, version: u64) -> (usize, usize) {
        let reports = self.health().await;
        let holding = reports
            .iter()
            .filter(|r| holds(r.as_ref(), version))
            .count();
        (holding, reports.len())
    }

    /// Waits until every running node serves roster `version` or newer (each fetches it on its
    /// own schedule), as its health endpoint reports. Returns false if `deadline` passed first.
    /// It also waits until each has pulled its swarm's messages and serves retrieves (its
    /// health report says it is not syncing), so that a network is ready when this returns true.
    pub async fn wait_for_roster_version(&mut self, version: u64, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            let ready = self.health().await.iter().all(|r| {
                holds(r.as_ref(), version)
                    && r.as_ref().and_then(|r| r["syncing"].as_bool()) == Some(false)
            });
            if ready {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM to node `i` and waits for it to exit; returns whether it exited cleanly.
    pub fn stop_node(&mut self, i: usize) -> Result<bool, DevnetError> {
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok(true);
        };
        if child.try_wait().map_err(io("checking a node"))?.is_none() {
            signal(child.id(), "TERM")?;
        }
        let status = child.wait().map_err(io("waiting for a node"))?;
        Ok(status.success())
    }

    /// Kills node `i` with SIGKILL (no chance to clean up).
    pub fn kill_node(&mut self, i: usize) -> Result<(), DevnetError> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().map_err(io("killing a node"))?;
            child.wait().map_err(io("waiting for a node"))?;
        }
        Ok(())
    }

    /// Stops every node cleanly; returns the names of those that did not exit cleanly.
    pub fn stop(&mut self) -> Vec<String> {
        self.stop_all()
            .into_iter()
            .filter(|s| !s.clean)
            .map(|s| s.name)
            .collect()
    }

    /// Sends SIGTERM to every running node at once, then waits for each to exit; one still
    /// running after [`STOP_TIMEOUT`] is killed. Returns what became of each, in node order.
    pub fn stop_all(&mut self) -> Vec<NodeStopped> {
        // Signal all first: each node drains for a while, and stopping them one after the other
        // would add those waits up.
        let mut stopping = Vec::new();
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            let signalled = match child.try_wait() {
                // Already exited (a Ctrl-C in the terminal reaches the nodes too) and reaped:
                // its pid may belong to another process by now.
                Ok(Some(_)) => Ok(()),
                _ => signal(child.id(), "TERM"),
            };
            stopping.push((node.name.clone(), child, signalled));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        stopping
            .into_iter()
            .map(|(name, mut child, signalled)| {
                let pid = child.id();
                let (clean, outcome) = match wait_until(&mut child, deadline) {
                    Ok(Some(status)) if status.success() => (true, "stopped cleanly".to_string()),
                    Ok(Some(status)) => (false, format!("exited with {status}")),
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        (
                            false,
                            format!("still running after {} s; killed", STOP_TIMEOUT.as_secs()),
                        )
                    }
                    Err(e) => (false, e.to_string()),
                };
                let outcome = match signalled {
                    Err(e) if !clean => format!("{outcome} ({e})"),
                    _ => outcome,
                };
                NodeStopped {
                    name,
                    pid,
                    clean,
                    outcome,
                }
            })
            .collect()
    }
}

/// What became of one node when the devnet stopped.
#[derive(Debug, Clone)]
pub struct NodeStopped {
    /// The node's name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Whether it exited with status 0 after SIGTERM.
    pub clean: bool,
    /// In words: "stopped cleanly", "exited with …", "still running after 30 s; killed".
    pub outcome: String,
}

/// How long a node may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Nodes `devnet` starts at the same time.
const STARTING_AT_ONCE: usize = 16;
/// How long the nodes may take to drain and exit after SIGTERM before they are killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for `child` to exit until `deadline`; `None` if it is still running then.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> Result<Option<std::process::ExitStatus>, DevnetError> {
    loop {
        if let Some(status) = child.try_wait().map_err(io("waiting for a node"))? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a node's log, indented, to put under an error: usually they say why.
fn log_tail(log: &Path) -> String {
    const LINES: usize = 8;
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    let mut out = String::from("\n  last lines of the log:");
    for line in tail {
        out.push_str("\n    ");
        out.push_str(line);
    }
    out
}

/// Asks the authorities for the roster once; the verified roster, whatever it lists, or `None`
/// if no authority answered with a valid one.
pub async fn fetch_roster(
    pool: &allium_link::Pool,
    network: &allium_proto::network::NetworkFile,
) -> Option<allium_proto::roster::Roster> {
    use allium_proto::roster::{DirectoryRequest, DirectoryResponse, SignedRoster};
    let request = DirectoryRequest::GetRoster { have_version: None };
    let sources = crate::directory::authorities(network);
    match allium_link::directory::ask(pool, &sources, &request, Duration::from_secs(2)).await {
        Ok((DirectoryResponse::Roster(bytes), _)) => {
            SignedRoster::decode_and_verify(&bytes, network, None).ok()
        }
        _ => None,
    }
}

/// Asks the authorities for the roster until it lists at least `nodes` nodes; `None` if
/// `deadline` passes first.
pub async fn wait_for_roster(
    pool: &allium_link::Pool,
    network: &allium_proto::network::NetworkFile,
    nodes: usize,
    deadline: Duration,
) -> Option<allium_proto::roster::Roster> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(roster) = fetch_roster(pool, network).await {
            if roster.nodes().len() >= nodes {
                return Some(roster);
            }
        }
        if Instant::now() > until {
            return None;
        }
        // The authority publishes on its own schedule; ask again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(pid: u32, sig: &str) -> Result<(), DevnetError> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map_err(io("sending a signal"))?;
    if status.success() {
        Ok(())
    } else {
        Err(DevnetError::Startup(format!("kill -{sig} {pid} failed")))
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_devnet_gets_distinct_ports_outside_the_ephemeral_range() {
        let mut ports = Ports::default();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let (udp, tcp) = ports.reserve().unwrap();
            for p in [udp, tcp] {
                assert!((Ports::LOW..Ports::ephemeral_low()).contains(&p), "{p}");
            }
            // A port is held until the devnet's configs are written: never handed out twice.
            assert!(seen.insert((udp, 'u')) && seen.insert((tcp, 't')));
        }
    }
}
