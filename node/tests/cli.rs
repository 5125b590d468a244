//! The `allium-node` command line as a user meets it: help, completions, and a devnet started,
//! stopped with SIGTERM and started again.

// Helpers outside #[test] functions fail the test by panicking, as the tests do.
#![allow(clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_allium-node");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running allium-node {args:?}: {e}"))
}

fn stdout_of(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "allium-node {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_of_every_subcommand_lists_its_options() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "init",
                "identity",
                "run",
                "status",
                "devnet",
                "completions",
                "check-network",
                "Examples",
            ],
        ),
        (&["init", "--help"], &["--data-dir", "Examples"]),
        (&["identity", "--help"], &["--data-dir", "Examples"]),
        (
            &["run", "--help"],
            &[
                "--config",
                "--data-dir",
                "--listen",
                "--public-addr",
                "--metrics-listen",
                "--network",
                "--authority",
                "--log",
                "--log-json",
                "ALLIUM_NODE_CONFIG",
                "Examples",
            ],
        ),
        (&["status", "--help"], &["--metrics", "Examples"]),
        (
            &["devnet", "--help"],
            &[
                "--dir",
                "--nodes",
                "--swarm-size",
                "--epoch-secs",
                "--log",
                "--ready-timeout",
                "network.toml",
                "Examples",
            ],
        ),
        (
            &["check-network", "--help"],
            &["FILE", "fingerprint", "Examples"],
        ),
        (
            &["completions", "--help"],
            &["bash", "zsh", "fish", "Examples"],
        ),
    ];
    for (args, needles) in cases {
        let help = stdout_of(args);
        for needle in *needles {
            assert!(
                help.contains(needle),
                "`allium-node {}` does not mention {needle}:\n{help}",
                args.join(" ")
            );
        }
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("allium-node"));
    assert!(bash.contains("devnet"));
    for shell in ["zsh", "fish"] {
        assert!(stdout_of(&["completions", shell]).contains("allium-node"));
    }
    assert!(!run(&["completions", "tcsh"]).status.success());
}

/// A running `allium-node devnet` whose stdout lines arrive on a channel. Dropping it kills the
/// devnet and its nodes, so a failed test leaves no processes behind.
struct RunningDevnet {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    dir: PathBuf,
}

impl RunningDevnet {
    fn start(dir: &Path) -> RunningDevnet {
        let mut child = Command::new(BIN)
            .args(["devnet", "--nodes", "3", "--log", "warn", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the devnet: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        RunningDevnet {
            child,
            lines,
            seen: Vec::new(),
            dir: dir.to_path_buf(),
        }
    }

    /// Reads output until a line contains `needle`; returns that line.
    fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} ({e:?}); output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                // Whatever it printed while stopping, for the assertions and for failures.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "the devnet did not exit in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningDevnet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Only a failed test leaves nodes behind; after a clean stop their pids may be reused.
        if std::thread::panicking() {
            for pid in node_pids(&self.dir) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

const NAMES: [&str; 4] = ["authority", "node-1", "node-2", "node-3"];

fn run_json(dir: &Path, name: &str) -> serde_json::Value {
    let path = dir.join(name).join("run.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn node_pids(dir: &Path) -> Vec<u32> {
    NAMES
        .iter()
        .filter(|n| dir.join(n).join("run.json").exists())
        .filter_map(|n| run_json(dir, n)["pid"].as_u64())
        .filter_map(|p| u32::try_from(p).ok())
        .collect()
}

fn identities(dir: &Path) -> Vec<String> {
    NAMES
        .iter()
        .map(|n| {
            run_json(dir, n)["identity"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn authority_key(network_file: &Path) -> String {
    let text = std::fs::read_to_string(network_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", network_file.display()));
    let network = allium_proto::network::NetworkFile::from_toml(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", network_file.display()));
    hex::encode(network.authorities()[0].identity.as_bytes())
}

/// Starts the devnet, waits for "ready", stops it with SIGTERM and checks every node is gone;
/// returns the network file it announced.
fn start_and_stop(dir: &Path) -> (PathBuf, Vec<String>) {
    let mut devnet = RunningDevnet::start(dir);
    let line = devnet.wait_for_line("Network file:", Duration::from_secs(90));
    let network_file = PathBuf::from(
        line.split_once("Network file:")
            .map(|(_, p)| p.trim())
            .unwrap_or_default(),
    );
    assert_eq!(network_file, dir.join("network.toml"));
    assert!(network_file.exists());
    devnet.wait_for_line("ready", Duration::from_secs(120));
    devnet.wait_for_line("Ctrl-C", Duration::from_secs(10));

    let pids = node_pids(dir);
    assert_eq!(pids.len(), NAMES.len(), "a run.json per node");
    let ids = identities(dir);
    let status = devnet.terminate();
    assert!(
        status.success(),
        "devnet exited with {status}:\n{}",
        devnet.seen.join("\n")
    );
    let stopped = devnet
        .seen
        .iter()
        .filter(|l| l.contains("stopped cleanly"))
        .count();
    assert_eq!(stopped, NAMES.len(), "{}", devnet.seen.join("\n"));
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "node pid {pid} is still alive after the devnet exited"
        );
    }
    (network_file, ids)
}

#[test]
fn devnet_starts_stops_on_sigterm_and_keeps_its_identities() {
    let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // canonicalize: the devnet prints absolute, resolved paths.
    let dir = temp
        .path()
        .canonicalize()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("net");

    let (network_file, first_ids) = start_and_stop(&dir);
    let first_key = authority_key(&network_file);
    assert_eq!(first_key, first_ids[0]);
    assert!(dir.join("authority.log").exists());
    assert!(!dir.join("devnet.pid").exists());

    let (network_file, second_ids) = start_and_stop(&dir);
    assert_eq!(authority_key(&network_file), first_key);
    assert_eq!(second_ids, first_ids, "the nodes kept their identities");
}

#[test]
fn devnet_refuses_bad_options() {
    for args in [
        &["devnet", "--nodes", "0"][..],
        &["devnet", "--swarm-size", "33"],
        &["devnet", "--epoch-secs", "0"],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

#[test]
fn devnet_names_the_log_of_a_node_that_dies_at_start() {
    let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = temp.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
    // A node whose config names a network file that does not exist: it exits at once.
    std::fs::write(
        dir.join("node-1.toml"),
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             network_file = \"{}\"\n",
            dir.join("node-1").display(),
            dir.join("missing.toml").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(BIN)
        .args(["devnet", "--nodes", "1", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let log = dir.join("node-1.log");
    assert!(
        stderr.contains("node-1 exited during start-up")
            && stderr.contains(&log.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("missing.toml"),
        "the log's last lines: {stderr}"
    );
    // The authority, already up, was stopped.
    for pid in node_pids(&dir) {
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}

#[test]
fn check_network_prints_the_fingerprint_or_the_fault() {
    let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = temp.path().join("network.toml");
    // The example of doc/network-file.md.
    let text = "name = \"example-net\"\n[[authority]]\n\
        identity = \"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\"\n\
        address = \"203.0.113.10:4433\"\n[params]\nswarm_size = 3\nmin_ttl_secs = 10\n\
        max_ttl_secs = 1209600\nepoch_secs = 3600\nallow_same_subnet = false\n\
        roster_threshold = 1\n";
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    let path = file.to_string_lossy().into_owned();
    let out = stdout_of(&["check-network", &path]);
    let expected = allium_proto::network::NetworkFile::from_toml(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .fingerprint_hex();
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("example-net"));

    std::fs::write(&file, text.replace("swarm_size = 3", "swarm_size = 33"))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["check-network", &path]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("swarm_size"));

    // An authority key of small order (the neutral point) is refused, not fingerprinted.
    let small_order = format!("01{}", "00".repeat(31));
    let key = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    std::fs::write(&file, text.replace(key, &small_order)).unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["check-network", &path]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("small order"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
