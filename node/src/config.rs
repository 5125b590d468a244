//! Node configuration: built-in defaults, then a TOML file, then environment variables, then
//! command-line overrides, each layer replacing the keys it sets. Every key is documented in
//! `node/examples/node.toml`; the environment variable of each key is in [`ENV_VARS`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// The environment variable the CLI reads for the config file path (not a key of the file).
pub const CONFIG_FILE_ENV: &str = "ALLIUM_NODE_CONFIG";

/// One environment variable and the config key it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name.
    pub name: &'static str,
    /// The dotted config key it sets, as in the TOML file (`limits.max_connections`).
    pub key: &'static str,
}

const fn var(name: &'static str, key: &'static str) -> EnvVar {
    EnvVar { name, key }
}

/// Every environment variable the node reads, and the key it sets. The one place these names are
/// defined; each name is `ALLIUM_NODE_` and the key in upper case with `.` as `_`.
pub const ENV_VARS: &[EnvVar] = &[
    var("ALLIUM_NODE_DATA_DIR", "data_dir"),
    var("ALLIUM_NODE_LISTEN", "listen"),
    var("ALLIUM_NODE_PUBLIC_ADDR", "public_addr"),
    var("ALLIUM_NODE_METRICS_LISTEN", "metrics_listen"),
    var("ALLIUM_NODE_METRICS_ALLOW_PUBLIC", "metrics_allow_public"),
    var("ALLIUM_NODE_NETWORK_FILE", "network_file"),
    var("ALLIUM_NODE_AUTHORITY", "authority"),
    var("ALLIUM_NODE_LOG", "log"),
    var("ALLIUM_NODE_LOG_JSON", "log_json"),
    var(
        "ALLIUM_NODE_LIMITS_MAX_CONNECTIONS_PER_IP",
        "limits.max_connections_per_ip",
    ),
    var(
        "ALLIUM_NODE_LIMITS_MAX_CONNECTIONS",
        "limits.max_connections",
    ),
    var(
        "ALLIUM_NODE_LIMITS_MAX_STREAMS_PER_CONNECTION",
        "limits.max_streams_per_connection",
    ),
    var(
        "ALLIUM_NODE_LIMITS_MAX_STREAMS_PER_PEER_CONNECTION",
        "limits.max_streams_per_peer_connection",
    ),
    var(
        "ALLIUM_NODE_LIMITS_STREAM_RECEIVE_WINDOW",
        "limits.stream_receive_window",
    ),
    var(
        "ALLIUM_NODE_LIMITS_CONNECTION_RECEIVE_WINDOW",
        "limits.connection_receive_window",
    ),
    var(
        "ALLIUM_NODE_LIMITS_IDLE_TIMEOUT_MS",
        "limits.idle_timeout_ms",
    ),
    var("ALLIUM_NODE_LIMITS_KEEP_ALIVE_MS", "limits.keep_alive_ms"),
    var(
        "ALLIUM_NODE_LIMITS_FORWARD_TIMEOUT_MS",
        "limits.forward_timeout_ms",
    ),
    var(
        "ALLIUM_NODE_LIMITS_REQUEST_READ_TIMEOUT_MS",
        "limits.request_read_timeout_ms",
    ),
    var("ALLIUM_NODE_LIMITS_FORWARD_QUEUE", "limits.forward_queue"),
    var(
        "ALLIUM_NODE_LIMITS_REPLY_TIMEOUT_MS",
        "limits.reply_timeout_ms",
    ),
    var(
        "ALLIUM_NODE_LIMITS_CLIENT_REQUESTS_PER_SEC",
        "limits.client_requests_per_sec",
    ),
    var(
        "ALLIUM_NODE_LIMITS_CLIENT_REQUEST_BURST",
        "limits.client_request_burst",
    ),
    var(
        "ALLIUM_NODE_LIMITS_CLIENT_READ_BUFFER_BYTES",
        "limits.client_read_buffer_bytes",
    ),
    var(
        "ALLIUM_NODE_LIMITS_PEER_READ_BUFFER_BYTES",
        "limits.peer_read_buffer_bytes",
    ),
    var(
        "ALLIUM_NODE_LIMITS_MAX_PARKED_POLLS",
        "limits.max_parked_polls",
    ),
    var(
        "ALLIUM_NODE_LIMITS_MAX_PATH_SESSIONS",
        "limits.max_path_sessions",
    ),
    var("ALLIUM_NODE_STORE_MAX_BYTES", "store.max_bytes"),
    var("ALLIUM_NODE_STORE_MIN_FREE_BYTES", "store.min_free_bytes"),
    var(
        "ALLIUM_NODE_STORE_MAILBOX_QUOTA_BYTES",
        "store.mailbox_quota_bytes",
    ),
    var("ALLIUM_NODE_STORE_BLOB_MAX_BYTES", "store.blob_max_bytes"),
    var(
        "ALLIUM_NODE_STORE_BLOB_QUOTA_BYTES",
        "store.blob_quota_bytes",
    ),
    var(
        "ALLIUM_NODE_REPLAY_PACKETS_PER_EPOCH",
        "replay.packets_per_epoch",
    ),
    var(
        "ALLIUM_NODE_REPLICATION_SYNC_INTERVAL_MS",
        "replication.sync_interval_ms",
    ),
    var(
        "ALLIUM_NODE_REPLICATION_QUORUM_TIMEOUT_MS",
        "replication.quorum_timeout_ms",
    ),
    var(
        "ALLIUM_NODE_REPLICATION_MAX_PULL_BYTES",
        "replication.max_pull_bytes",
    ),
    var(
        "ALLIUM_NODE_DIRECTORY_REGISTER_INTERVAL_MS",
        "directory.register_interval_ms",
    ),
    var(
        "ALLIUM_NODE_DIRECTORY_ROSTER_REFRESH_MS",
        "directory.roster_refresh_ms",
    ),
    var(
        "ALLIUM_NODE_DIRECTORY_PUBLISH_INTERVAL_MS",
        "directory.publish_interval_ms",
    ),
    var(
        "ALLIUM_NODE_DIRECTORY_DESCRIPTOR_TTL_MS",
        "directory.descriptor_ttl_ms",
    ),
    var(
        "ALLIUM_NODE_DIRECTORY_NEW_NODES_PER_ADDRESS_BURST",
        "directory.new_nodes_per_address_burst",
    ),
    var("ALLIUM_NODE_FAULT_CLOCK_OFFSET_MS", "fault.clock_offset_ms"),
];

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The whole node configuration. Unknown keys in the file are errors, so a typo never silently
/// leaves a default in force.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Keys and the message store live here (created mode 0700).
    pub data_dir: PathBuf,
    /// UDP address the QUIC link listens on.
    pub listen: SocketAddr,
    /// The address published in the roster; `None` means the node cannot be published until set.
    pub public_addr: Option<SocketAddr>,
    /// HTTP address of `/metrics` and `/health`. Loopback unless `metrics_allow_public`.
    pub metrics_listen: SocketAddr,
    /// Allow `metrics_listen` on a non-loopback address (metrics reveal traffic volumes).
    pub metrics_allow_public: bool,
    /// The network file: network name, directory authority keys and addresses.
    pub network_file: PathBuf,
    /// Run the directory-authority role as well.
    pub authority: bool,
    /// Log filter, in `tracing-subscriber` `EnvFilter` syntax (`info`, `allium_node=debug,info`).
    pub log: String,
    /// Write logs as JSON lines instead of text.
    pub log_json: bool,
    /// Connection and stream limits.
    pub limits: Limits,
    /// Message store limits.
    pub store: StoreConfig,
    /// Replay filter sizing.
    pub replay: ReplayConfig,
    /// Replication between swarm members.
    pub replication: ReplicationConfig,
    /// Registration with the authorities and roster refresh.
    pub directory: DirectoryConfig,
    /// Faults injected on purpose, for tests; all off by default.
    pub fault: FaultConfig,
}

/// Faults a test injects into a node (BAD_INPUTS 24, 33). A real node leaves them at zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Added to every wall-clock reading of the node, ms (negative: behind): a node whose clock
    /// is wrong. Intervals and time-outs use monotonic time and are not shifted.
    pub clock_offset_ms: i64,
}

/// Replication between swarm members (whitepaper storage §9).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// How often the node compares its holdings with each swarm peer (one digest exchange per
    /// peer when nothing differs) and hands off mailboxes that left its swarm.
    pub sync_interval_ms: u64,
    /// How long a store waits for a majority of the swarm before it is answered `not_replicated`.
    pub quorum_timeout_ms: u64,
    /// Most message bytes pulled from one peer in one round, bounding repair bandwidth.
    pub max_pull_bytes: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            sync_interval_ms: 5_000,
            quorum_timeout_ms: 3_000,
            max_pull_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Connection, stream and queue limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open client connections from one IP address (an IPv6 /64); roster nodes are not counted.
    pub max_connections_per_ip: u32,
    /// Open connections in total.
    pub max_connections: u32,
    /// Concurrent bidirectional streams a client may open on one connection.
    pub max_streams_per_connection: u32,
    /// Concurrent bidirectional streams a roster node may open on one connection (a relay
    /// carries all its clients' long-polls to this node over one connection).
    pub max_streams_per_peer_connection: u32,
    /// QUIC per-stream receive window, bytes.
    pub stream_receive_window: u64,
    /// QUIC per-connection receive window, bytes.
    pub connection_receive_window: u64,
    /// Close a connection idle this long, milliseconds.
    pub idle_timeout_ms: u64,
    /// Send keep-alives this often on idle peer links, milliseconds (less than the idle timeout).
    pub keep_alive_ms: u64,
    /// Give up forwarding a packet to the next hop after this long, milliseconds.
    pub forward_timeout_ms: u64,
    /// Give up reading a request from a stream after this long, milliseconds.
    pub request_read_timeout_ms: u64,
    /// Packets waiting for their next hop to accept them before new ones are dropped
    /// (`queue_full`); one the next hop accepted (a long-poll waiting there) no longer counts.
    pub forward_queue: u32,
    /// How long a relay waits for the next hop's complete reply once it accepted the packet,
    /// ms; longer than the longest long-poll.
    pub reply_timeout_ms: u64,
    /// Requests per second one client address (IPv4 address or IPv6 /64) may send on average.
    pub client_requests_per_sec: u32,
    /// Requests one client address may send at once above the average.
    pub client_request_burst: u32,
    /// Bytes that request bodies being read from clients may hold at once, in all.
    pub client_read_buffer_bytes: u64,
    /// Bytes that request bodies being read from roster nodes may hold at once, in all.
    pub peer_read_buffer_bytes: u64,
    /// Long-poll retrieves parked at once (every listening client holds one); beyond it a
    /// retrieve is answered at once, as if its wait had run out.
    pub max_parked_polls: u32,
    /// Path sessions kept at once (onion.md §12; about 150 bytes each); beyond it a packet
    /// asking for one is peeled as usual and its sender's later packets fall back to onion
    /// packets.
    pub max_path_sessions: u32,
}

/// Message store limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Size cap of the whole store on this node, bytes.
    pub max_bytes: u64,
    /// Size cap of one mailbox, bytes.
    pub mailbox_quota_bytes: u64,
    /// Size cap of the blob namespace (attachments) on this node, all mailboxes, bytes.
    pub blob_max_bytes: u64,
    /// Size cap of one mailbox's blob namespace, bytes.
    pub blob_quota_bytes: u64,
    /// Free space the data directory's file system must keep: below it new messages are
    /// refused ("full") while reads and deletes go on.
    pub min_free_bytes: u64,
}

/// Replay filter sizing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Packets per epoch the filter is sized for; more raise its false-positive rate.
    pub packets_per_epoch: u64,
}

/// How often a node talks to the directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// How often a node re-sends its descriptor to the authorities (and after every key roll).
    pub register_interval_ms: u64,
    /// How often a node asks for a newer roster.
    pub roster_refresh_ms: u64,
    /// Authority only: how often it probes nodes and publishes a roster if anything changed.
    pub publish_interval_ms: u64,
    /// Authority only: a node silent for this long leaves the roster.
    pub descriptor_ttl_ms: u64,
    /// Authority only: new nodes one address may register at once; beyond it, one a second.
    pub new_nodes_per_address_burst: u32,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            register_interval_ms: 60_000,
            roster_refresh_ms: 30_000,
            publish_interval_ms: 10_000,
            descriptor_ttl_ms: 600_000,
            new_nodes_per_address_burst: 32,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("/var/lib/allium-node"),
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            public_addr: None,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            metrics_allow_public: false,
            network_file: PathBuf::from("/etc/allium/network.toml"),
            authority: false,
            log: "info".to_owned(),
            log_json: false,
            limits: Limits::default(),
            store: StoreConfig::default(),
            replay: ReplayConfig::default(),
            replication: ReplicationConfig::default(),
            directory: DirectoryConfig::default(),
            fault: FaultConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections_per_ip: 16,
            max_connections: 4096,
            max_streams_per_connection: 256,
            max_streams_per_peer_connection: 16_384,
            stream_receive_window: 256 * KIB,
            connection_receive_window: 4 * MIB,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 10_000,
            forward_timeout_ms: 5_000,
            request_read_timeout_ms: 5_000,
            forward_queue: 1024,
            reply_timeout_ms: 90_000,
            client_requests_per_sec: 200,
            client_request_burst: 400,
            client_read_buffer_bytes: 32 * MIB,
            peer_read_buffer_bytes: 64 * MIB,
            max_parked_polls: 16_384,
            max_path_sessions: 65_536,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: 10 * GIB,
            mailbox_quota_bytes: 16 * MIB,
            blob_max_bytes: 16 * GIB,
            blob_quota_bytes: 2 * GIB,
            min_free_bytes: 256 * MIB,
        }
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            packets_per_epoch: 1_000_000,
        }
    }
}

impl Limits {
    /// `reply_timeout_ms` as a duration.
    pub fn reply_timeout(&self) -> Duration {
        Duration::from_millis(self.reply_timeout_ms)
    }

    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// `keep_alive_ms` as a duration.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms)
    }
    /// `forward_timeout_ms` as a duration.
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }
    /// `request_read_timeout_ms` as a duration.
    pub fn request_read_timeout(&self) -> Duration {
        Duration::from_millis(self.request_read_timeout_ms)
    }
}

/// Values the command line sets; each `Some` replaces whatever the file and environment said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOverrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--public-addr`.
    pub public_addr: Option<SocketAddr>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--network-file`.
    pub network_file: Option<PathBuf>,
    /// `--authority`.
    pub authority: Option<bool>,
    /// `--log`.
    pub log: Option<String>,
    /// `--log-json`.
    pub log_json: Option<bool>,
}

/// Why the configuration could not be loaded. Each says where the bad value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("config file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending key or value.
        source: toml::de::Error,
    },
    /// An environment variable does not parse as its key's type.
    #[error("environment variable {var} (config key `{key}`) = {value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// The key it sets.
        key: &'static str,
        /// Its value.
        value: String,
        /// What was wrong.
        reason: String,
    },
    /// A value parsed but is not allowed.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// `metrics_listen` is not a loopback address and `metrics_allow_public` is not set.
    #[error(
        "config key `metrics_listen`: {addr} is not a loopback address; metrics reveal traffic \
         volumes, so set `metrics_allow_public = true` to serve them there anyway"
    )]
    MetricsNotLoopback {
        /// The refused address.
        addr: SocketAddr,
    },
}

impl NodeConfig {
    /// Defaults, then `file` (if any), then environment variables read through `env` (the names in
    /// [`ENV_VARS`]), then `overrides`; then checks the result.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: ConfigOverrides,
    ) -> Result<NodeConfig, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => NodeConfig::default(),
        };
        config.apply_env(env)?;
        config.apply_overrides(overrides);
        config.validate()?;
        Ok(config)
    }

    /// The defaults with the keys of the TOML file at `path` over them (not validated).
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The defaults with the keys of TOML `text` over them (not validated).
    pub fn from_toml(text: &str) -> Result<NodeConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Sets every key whose variable `env` returns.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for var in ENV_VARS {
            if let Some(value) = env(var.name) {
                self.set(var.key, &value)
                    .map_err(|reason| ConfigError::Env {
                        var: var.name,
                        key: var.key,
                        value,
                        reason,
                    })?;
            }
        }
        Ok(())
    }

    /// Replaces every key `overrides` sets.
    pub fn apply_overrides(&mut self, overrides: ConfigOverrides) {
        let ConfigOverrides {
            data_dir,
            listen,
            public_addr,
            metrics_listen,
            network_file,
            authority,
            log,
            log_json,
        } = overrides;
        replace(&mut self.data_dir, data_dir);
        replace(&mut self.listen, listen);
        if public_addr.is_some() {
            self.public_addr = public_addr;
        }
        replace(&mut self.metrics_listen, metrics_listen);
        replace(&mut self.network_file, network_file);
        replace(&mut self.authority, authority);
        replace(&mut self.log, log);
        replace(&mut self.log_json, log_json);
    }

    /// Sets the dotted `key` from its text form, as an environment variable gives it. The error
    /// says what was wrong with the text.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let l = &mut self.limits;
        match key {
            "data_dir" => self.data_dir = PathBuf::from(value),
            "listen" => self.listen = parse(value)?,
            // Empty unsets it, so an environment can clear a file's value.
            "public_addr" if value.is_empty() => self.public_addr = None,
            "public_addr" => self.public_addr = Some(parse(value)?),
            "metrics_listen" => self.metrics_listen = parse(value)?,
            "metrics_allow_public" => self.metrics_allow_public = parse_bool(value)?,
            "network_file" => self.network_file = PathBuf::from(value),
            "authority" => self.authority = parse_bool(value)?,
            "log" => self.log = value.to_owned(),
            "log_json" => self.log_json = parse_bool(value)?,
            "limits.max_connections_per_ip" => l.max_connections_per_ip = parse(value)?,
            "limits.max_connections" => l.max_connections = parse(value)?,
            "limits.max_streams_per_connection" => l.max_streams_per_connection = parse(value)?,
            "limits.max_streams_per_peer_connection" => {
                l.max_streams_per_peer_connection = parse(value)?;
            }
            "limits.stream_receive_window" => l.stream_receive_window = parse(value)?,
            "limits.connection_receive_window" => l.connection_receive_window = parse(value)?,
            "limits.idle_timeout_ms" => l.idle_timeout_ms = parse(value)?,
            "limits.keep_alive_ms" => l.keep_alive_ms = parse(value)?,
            "limits.forward_timeout_ms" => l.forward_timeout_ms = parse(value)?,
            "limits.request_read_timeout_ms" => l.request_read_timeout_ms = parse(value)?,
            "limits.forward_queue" => l.forward_queue = parse(value)?,
            "limits.reply_timeout_ms" => l.reply_timeout_ms = parse(value)?,
            "limits.client_requests_per_sec" => l.client_requests_per_sec = parse(value)?,
            "limits.client_request_burst" => l.client_request_burst = parse(value)?,
            "limits.client_read_buffer_bytes" => l.client_read_buffer_bytes = parse(value)?,
            "limits.peer_read_buffer_bytes" => l.peer_read_buffer_bytes = parse(value)?,
            "limits.max_parked_polls" => l.max_parked_polls = parse(value)?,
            "limits.max_path_sessions" => l.max_path_sessions = parse(value)?,
            "store.max_bytes" => self.store.max_bytes = parse(value)?,
            "store.mailbox_quota_bytes" => self.store.mailbox_quota_bytes = parse(value)?,
            "store.min_free_bytes" => self.store.min_free_bytes = parse(value)?,
            "store.blob_max_bytes" => self.store.blob_max_bytes = parse(value)?,
            "store.blob_quota_bytes" => self.store.blob_quota_bytes = parse(value)?,
            "replay.packets_per_epoch" => self.replay.packets_per_epoch = parse(value)?,
            "replication.sync_interval_ms" => self.replication.sync_interval_ms = parse(value)?,
            "replication.quorum_timeout_ms" => {
                self.replication.quorum_timeout_ms = parse(value)?;
            }
            "replication.max_pull_bytes" => self.replication.max_pull_bytes = parse(value)?,
            "directory.register_interval_ms" => {
                self.directory.register_interval_ms = parse(value)?;
            }
            "directory.roster_refresh_ms" => self.directory.roster_refresh_ms = parse(value)?,
            "directory.publish_interval_ms" => self.directory.publish_interval_ms = parse(value)?,
            "directory.descriptor_ttl_ms" => self.directory.descriptor_ttl_ms = parse(value)?,
            "directory.new_nodes_per_address_burst" => {
                self.directory.new_nodes_per_address_burst = parse(value)?;
            }
            "fault.clock_offset_ms" => self.fault.clock_offset_ms = parse(value)?,
            _ => return Err(format!("unknown config key `{key}`")),
        }
        Ok(())
    }

    /// Checks values that parse but cannot work. The first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.network_file.as_os_str().is_empty() {
            return Err(invalid("network_file", "must not be empty"));
        }
        if !self.metrics_listen.ip().is_loopback() && !self.metrics_allow_public {
            return Err(ConfigError::MetricsNotLoopback {
                addr: self.metrics_listen,
            });
        }
        if let Some(addr) = self.public_addr {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(invalid(
                    "public_addr",
                    format!("{addr} cannot be dialled; give the address peers reach this node at"),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(invalid("log", format!("bad filter {:?}: {e}", self.log)));
        }
        let l = &self.limits;
        for (key, value) in [
            (
                "limits.max_connections_per_ip",
                u64::from(l.max_connections_per_ip),
            ),
            ("limits.max_connections", u64::from(l.max_connections)),
            (
                "limits.max_streams_per_connection",
                u64::from(l.max_streams_per_connection),
            ),
            (
                "limits.max_streams_per_peer_connection",
                u64::from(l.max_streams_per_peer_connection),
            ),
            ("limits.stream_receive_window", l.stream_receive_window),
            (
                "limits.connection_receive_window",
                l.connection_receive_window,
            ),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.keep_alive_ms", l.keep_alive_ms),
            ("limits.forward_timeout_ms", l.forward_timeout_ms),
            ("limits.request_read_timeout_ms", l.request_read_timeout_ms),
            ("limits.forward_queue", u64::from(l.forward_queue)),
            ("limits.reply_timeout_ms", l.reply_timeout_ms),
            (
                "limits.client_requests_per_sec",
                u64::from(l.client_requests_per_sec),
            ),
            (
                "limits.client_request_burst",
                u64::from(l.client_request_burst),
            ),
            (
                "limits.client_read_buffer_bytes",
                l.client_read_buffer_bytes,
            ),
            ("limits.peer_read_buffer_bytes", l.peer_read_buffer_bytes),
            ("limits.max_parked_polls", u64::from(l.max_parked_polls)),
            ("limits.max_path_sessions", u64::from(l.max_path_sessions)),
            ("store.max_bytes", self.store.max_bytes),
            ("store.mailbox_quota_bytes", self.store.mailbox_quota_bytes),
            ("store.blob_max_bytes", self.store.blob_max_bytes),
            ("store.blob_quota_bytes", self.store.blob_quota_bytes),
            ("replay.packets_per_epoch", self.replay.packets_per_epoch),
            (
                "replication.sync_interval_ms",
                self.replication.sync_interval_ms,
            ),
            (
                "replication.quorum_timeout_ms",
                self.replication.quorum_timeout_ms,
            ),
            (
                "replication.max_pull_bytes",
                self.replication.max_pull_bytes,
            ),
            (
                "directory.register_interval_ms",
                self.directory.register_interval_ms,
            ),
            (
                "directory.roster_refresh_ms",
                self.directory.roster_refresh_ms,
            ),
            (
                "directory.publish_interval_ms",
                self.directory.publish_interval_ms,
            ),
            (
                "directory.descriptor_ttl_ms",
                self.directory.descriptor_ttl_ms,
            ),
            (
                "directory.new_nodes_per_address_burst",
                u64::from(self.directory.new_nodes_per_address_burst),
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if l.max_connections_per_ip > l.max_connections {
            return Err(invalid(
                "limits.max_connections_per_ip",
                format!(
                    "{} exceeds limits.max_connections ({})",
                    l.max_connections_per_ip, l.max_connections
                ),
            ));
        }
        if l.stream_receive_window > l.connection_receive_window {
            return Err(invalid(
                "limits.stream_receive_window",
                format!(
                    "{} exceeds limits.connection_receive_window ({})",
                    l.stream_receive_window, l.connection_receive_window
                ),
            ));
        }
        // QUIC varints end at 2^62; quinn refuses larger windows and timeouts.
        const VARINT_MAX: u64 = (1 << 62) - 1;
        if l.connection_receive_window > VARINT_MAX {
            return Err(invalid(
                "limits.connection_receive_window",
                "must be below 2^62",
            ));
        }
        if l.idle_timeout_ms > VARINT_MAX {
            return Err(invalid("limits.idle_timeout_ms", "must be below 2^62"));
        }
        // A keep-alive no shorter than the idle timeout arrives after the link has closed.
        if l.keep_alive_ms >= l.idle_timeout_ms {
            return Err(invalid(
                "limits.keep_alive_ms",
                format!(
                    "{} must be less than limits.idle_timeout_ms ({})",
                    l.keep_alive_ms, l.idle_timeout_ms
                ),
            ));
        }
        // A body that cannot fit the budget whole could never be read.
        let largest_client_body = allium_link::Kind::Directory
            .max_request()
            .max(allium_link::Kind::Onion.max_request()) as u64;
        if l.client_read_buffer_bytes < largest_client_body {
            return Err(invalid(
                "limits.client_read_buffer_bytes",
                format!("must hold at least one whole request ({largest_client_body} bytes)"),
            ));
        }
        let largest_peer_body = allium_link::Kind::Peer.max_request() as u64;
        if l.peer_read_buffer_bytes < largest_peer_body {
            return Err(invalid(
                "limits.peer_read_buffer_bytes",
                format!("must hold at least one whole request ({largest_peer_body} bytes)"),
            ));
        }
        if self.store.mailbox_quota_bytes > self.store.max_bytes {
            return Err(invalid(
                "store.mailbox_quota_bytes",
                format!(
                    "{} exceeds store.max_bytes ({})",
                    self.store.mailbox_quota_bytes, self.store.max_bytes
                ),
            ));
        }
        if self.store.blob_quota_bytes > self.store.blob_max_bytes {
            return Err(invalid(
                "store.blob_quota_bytes",
                format!(
                    "{} exceeds store.blob_max_bytes ({})",
                    self.store.blob_quota_bytes, self.store.blob_max_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn replace<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

fn parse<T: FromStr>(value: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| e.to_string())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_rule_and_every_key_is_settable() {
        let defaults = NodeConfig::default();
        for var in ENV_VARS {
            let expected = format!(
                "ALLIUM_NODE_{}",
                var.key.to_ascii_uppercase().replace('.', "_")
            );
            assert_eq!(var.name, expected);
            // Each key accepts some value of its type.
            let sample = match var.key {
                "data_dir" | "network_file" => "/x",
                "listen" | "public_addr" | "metrics_listen" => "127.0.0.1:1",
                "log" => "debug",
                k if k.ends_with("public") || k == "authority" || k == "log_json" => "true",
                _ => "7",
            };
            let mut c = defaults.clone();
            c.set(var.key, sample).unwrap();
            assert_ne!(c, defaults, "{} changed nothing", var.key);
        }
    }

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_key_is_refused() {
        let mut c = NodeConfig::default();
        assert!(
            c.set("limits.nope", "1")
                .unwrap_err()
                .contains("limits.nope")
        );
    }
}
