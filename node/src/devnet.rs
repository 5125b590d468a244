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

/// A free UDP port on loopback. The socket is closed again, so another process could take the
/// port before the node binds it; on a test machine that race is rare, and a node that fails to
/// bind says so.
fn free_port() -> Result<u16, DevnetError> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(s.local_addr().map_err(io("finding a free port"))?.port())
}

fn free_tcp_port() -> Result<u16, DevnetError> {
    let s = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(s.local_addr().map_err(io("finding a free port"))?.port())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Devnet {
    /// Creates (or reuses) a devnet in `dir` and starts every node, using the `allium-node`
    /// executable at `binary`. Returns once every process is up; the roster forms shortly after
    /// (see [`Devnet::wait_for_roster`]).
    pub fn start(binary: &Path, dir: &Path, opts: &DevnetOptions) -> Result<Devnet, DevnetError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let network_file = dir.join("network.toml");
        let names: Vec<String> = std::iter::once("authority".to_string())
            .chain((1..=opts.nodes).map(|i| format!("node-{i}")))
            .collect();
        let mut nodes = Vec::with_capacity(names.len());
        for name in &names {
            nodes.push(Self::prepare(binary, dir, name, &network_file, opts)?);
        }
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
        for i in 0..net.nodes.len() {
            net.start_node(i)?;
        }
        Ok(net)
    }

    fn prepare(
        binary: &Path,
        dir: &Path,
        name: &str,
        network_file: &Path,
        opts: &DevnetOptions,
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
            let text = format!(
                "data_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
                 network_file = \"{}\"\nauthority = {}\n\n[limits]\nforward_timeout_ms = {}\n\
                 idle_timeout_ms = 30000\nkeep_alive_ms = 5000\n\n[store]\nmax_bytes = 1073741824\n\n\
                 [replay]\npackets_per_epoch = 100000\n\n[replication]\nsync_interval_ms = {}\n\n\
                 [directory]\nregister_interval_ms = 1000\n\
                 roster_refresh_ms = 500\npublish_interval_ms = 500\ndescriptor_ttl_ms = 5000\n",
                data_dir.display(),
                free_port()?,
                free_tcp_port()?,
                network_file.display(),
                name == "authority",
                opts.forward_timeout_ms,
                opts.sync_interval_ms,
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
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", node.name)))
            .map_err(io("opening a node log"))?;
        let run_file = node.data_dir.join("run.json");
        let _ = std::fs::remove_file(&run_file);
        let child = Command::new(&self.binary)
            .arg("run")
            .arg("--config")
            .arg(&node.config)
            .arg("--log")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {}", node.name)))?;
        node.child = Some(child);
        // The node writes run.json once it listens and serves metrics.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run_file.exists() {
            if !node.is_running() {
                return Err(DevnetError::Startup(format!(
                    "{} exited during start-up; see {}",
                    node.name,
                    self.dir.join(format!("{}.log", node.name)).display()
                )));
            }
            if Instant::now() > deadline {
                return Err(DevnetError::Startup(format!(
                    "{} did not start in 30 s",
                    node.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until every running node serves roster `version` or newer (each fetches it on its
    /// own schedule), as its health endpoint reports. Returns false if `deadline` passed first.
    pub async fn wait_for_roster_version(&mut self, version: u64, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            let mut behind = 0;
            for node in &mut self.nodes {
                if !node.is_running() {
                    continue;
                }
                let held = crate::http::get(node.metrics, "/health")
                    .await
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|v| v["roster_version"].as_u64())
                    .unwrap_or(0);
                if held < version {
                    behind += 1;
                }
            }
            if behind == 0 {
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
        signal(child.id(), "TERM")?;
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
        let mut unclean = Vec::new();
        for i in (0..self.nodes.len()).rev() {
            if !matches!(self.stop_node(i), Ok(true)) {
                unclean.push(self.nodes[i].name.clone());
            }
        }
        unclean
    }
}

/// Asks the authorities for the roster until it lists at least `nodes` nodes; `None` if
/// `deadline` passes first.
pub async fn wait_for_roster(
    pool: &crate::link::Pool,
    network: &allium_swarm::network::NetworkFile,
    nodes: usize,
    deadline: Duration,
) -> Option<allium_swarm::roster::Roster> {
    use allium_swarm::roster::{DirectoryRequest, DirectoryResponse, SignedRoster};
    let until = Instant::now() + deadline;
    loop {
        let request = DirectoryRequest::GetRoster { have_version: None };
        if let Some(DirectoryResponse::Roster(bytes)) =
            crate::directory::ask_authorities(pool, network, &request, Duration::from_secs(2)).await
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
