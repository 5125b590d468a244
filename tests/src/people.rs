//! People using the `allium` command against a devnet: a world of real node processes, and
//! persons each with a data directory, running the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: fail loudly

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use allium_node::devnet::Devnet;
use allium_onion::IdentityPublicKey;
use allium_proto::network::NetworkFile;
use serde_json::Value;

use crate::{client_binary, serial, start_devnet, wait_for_roster};

/// Nodes besides the authority.
pub const NODES: usize = 6;
/// A generous bound for one network step.
pub const T: Duration = Duration::from_secs(30);

/// A devnet, and a folder for the people using it.
#[derive(Debug)]
pub struct World {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    /// The network.
    pub net: Devnet,
    /// Where data directories go.
    pub dir: tempfile::TempDir,
}

impl World {
    /// Starts a devnet and waits for its roster.
    pub async fn start() -> World {
        let serial = serial().await;
        let dir = tempfile::tempdir().unwrap();
        let mut net = start_devnet(&dir.path().join("net"), NODES).unwrap();
        let network = NetworkFile::load(&net.network_file).unwrap();
        let c = allium_client::onion::OnionClient::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let roster = wait_for_roster(c.pool(), &network, NODES + 1, T)
            .await
            .expect("roster formed");
        assert!(net.wait_for_roster_version(roster.version(), T).await);
        // As `allium` does at exit: the guard frees the connection now, not at its idle time-out.
        c.pool().link().close_within(Duration::from_secs(1)).await;
        World {
            _serial: serial,
            net,
            dir,
        }
    }

    /// A person with a fresh data directory.
    pub fn person(&self, name: &str) -> Person {
        Person {
            data: self.dir.path().join(name),
            network: self.net.network_file.clone(),
        }
    }

    /// The devnet index of the node with this hex identity.
    pub fn index_of(&self, hex_identity: &str) -> usize {
        let id = IdentityPublicKey::from_bytes(&hex::decode(hex_identity).unwrap()).unwrap();
        self.net
            .nodes
            .iter()
            .position(|n| n.identity == id)
            .unwrap()
    }
}

/// One user: a data directory and the network file.
#[derive(Debug, Clone)]
pub struct Person {
    /// The data directory.
    pub data: PathBuf,
    /// The network file.
    pub network: PathBuf,
}

/// What a command printed.
#[derive(Debug)]
pub struct Output {
    /// The exit code.
    pub code: i32,
    /// Its JSON lines.
    pub lines: Vec<Value>,
    /// Its standard error.
    pub stderr: String,
}

impl Person {
    /// The command with this person's data directory and network, in JSON mode.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(client_binary());
        c.arg("--data-dir")
            .arg(&self.data)
            .arg("--network")
            .arg(&self.network)
            .arg("--json")
            .args(args)
            .env_remove("ALLIUM_NETWORK")
            .env_remove("ALLIUM_DATA_DIR");
        c
    }

    /// Runs a command in human-readable mode (no `--json`); returns its exit code and output.
    pub fn run_human(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(client_binary())
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--network")
            .arg(&self.network)
            .args(args)
            .env_remove("ALLIUM_NETWORK")
            .env_remove("ALLIUM_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Runs a command with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, "")
    }

    /// Runs a command that must succeed; returns its JSON lines.
    pub fn ok(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "allium {args:?} failed: {}{:?}",
            out.stderr, out.lines
        );
        out.lines
    }

    /// `init`: the address and the recovery phrase.
    pub fn init(&self) -> (String, String) {
        let l = self.ok(&["init"]);
        assert!(
            l.iter().all(|v| v.get("warning").is_none()),
            "init did not publish the keys: {l:?}"
        );
        (
            l[0]["address"].as_str().unwrap().to_owned(),
            l[0]["phrase"].as_str().unwrap().to_owned(),
        )
    }

    /// Texts of the new messages an `inbox` run shows, with their senders' addresses.
    pub fn inbox(&self) -> Vec<(String, String)> {
        self.ok(&["inbox"])
            .iter()
            .filter(|l| l.get("text").is_some())
            .map(|l| {
                (
                    l["address"].as_str().unwrap().to_owned(),
                    l["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// `send`, which must be acknowledged by a majority of the swarm.
    pub fn send(&self, to: &str, text: &str) -> Value {
        let l = self.ok(&["send", to, text]);
        // `swarm` is counted in the sender's roster; the destination counts its majority in
        // its own, which may already lack a member that died (the relay test kills one).
        let (holders, swarm) = (
            l[0]["holders"].as_u64().unwrap(),
            l[0]["swarm"].as_u64().unwrap(),
        );
        assert!(
            holders * 2 > swarm.saturating_sub(1),
            "{holders} of {swarm}"
        );
        l[0].clone()
    }

    /// `allium listen`, its JSON lines arriving on a channel.
    pub fn listen(&self) -> (Child, mpsc::Receiver<Value>) {
        let mut child = self
            .command(&["listen"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        (child, rx)
    }
}

/// The texts of the first `want` messages on `rx` within `limit`.
pub fn texts_within(rx: &mpsc::Receiver<Value>, want: usize, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => {
                if let Some(t) = v.get("text").and_then(Value::as_str) {
                    got.push(t.to_owned());
                }
            }
            Err(_) => break,
        }
    }
    got
}
