//! Beyond one host: the authority, every node and each client in its own network namespace with
//! its own address in its own /16, joined by a bridge in a hub namespace. The network file
//! forbids two nodes of one subnet in a path, so nothing may rely on loopback or a shared
//! address. Needs root (CAP_NET_ADMIN) and `ip`; skipped with a message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use allium_tests::{client_binary, node_binary, serial};
use serde_json::Value;

const NODES: usize = 5;
const PORT: u16 = 7100;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces and processes, torn down on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A hub namespace with a bridge; fails (for the caller to skip) without the rights.
    fn new() -> Result<Lab, String> {
        let prefix = format!("al{}", std::process::id());
        let mut lab = Lab {
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub])?;
        lab.namespaces.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// A namespace `name` whose `eth0` is on the hub's bridge with address `10.<net>.0.2/16`,
    /// reaching every other `10.x` address on the link.
    fn host(&mut self, name: &str, net: u8) -> Result<(String, String), String> {
        let ns = format!("{}-{name}", self.prefix);
        let hub = format!("{}-hub", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        // Interface names have at most 15 bytes.
        let outer = format!("av{}x{net}", std::process::id() % 100_000);
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &outer, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"])?;
        let addr = format!("10.{net}.0.2");
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        // Every other host is on the same link, in another /16.
        ip(&["-n", &ns, "route", "add", "10.0.0.0/8", "dev", "eth0"])?;
        Ok((ns, addr))
    }

    fn spawn(&mut self, ns: &str, program: &Path, args: &[&str], log: &Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn node_config(dir: &Path, name: &str, addr: &str, network: &Path, authority: bool) -> PathBuf {
    let data = dir.join(name);
    let out = Command::new(node_binary())
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"{addr}:{PORT}\"\nmetrics_listen = \"127.0.0.1:9464\"\n\
             network_file = \"{}\"\nauthority = {authority}\n\n[limits]\nforward_timeout_ms = 2000\n\n\
             [replication]\nsync_interval_ms = 1000\n\n[directory]\nregister_interval_ms = 1000\n\
             roster_refresh_ms = 500\npublish_interval_ms = 500\ndescriptor_ttl_ms = 10000\n",
            data.display(),
            network.display()
        ),
    )
    .unwrap();
    config
}

fn identity_hex(dir: &Path, name: &str) -> String {
    let out = Command::new(node_binary())
        .args(["identity", "--data-dir"])
        .arg(dir.join(name))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn allium(ns: &str, data: &Path, network: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(client_binary())
        .arg("--data-dir")
        .arg(data)
        .arg("--network")
        .arg(network)
        .arg("--json")
        .args(args)
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_network_namespaces() {
    let _serial = serial().await;
    let mut lab = match Lab::new() {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "skipped: cannot create network namespaces here ({e}); run as root with `ip`"
            );
            return;
        }
    };
    let dir = lab.dir.path().to_path_buf();
    let network = dir.join("network.toml");
    let mut hosts = Vec::new();
    for i in 0..=NODES {
        let name = if i == 0 {
            "authority".to_owned()
        } else {
            format!("node-{i}")
        };
        let (ns, addr) = lab.host(&name, 1 + i as u8).unwrap();
        hosts.push((name, ns, addr));
    }
    let configs: Vec<PathBuf> = hosts
        .iter()
        .map(|(name, _, addr)| node_config(&dir, name, addr, &network, name == "authority"))
        .collect();
    std::fs::write(
        &network,
        format!(
            "name = \"allium-netns\"\n\n[[authority]]\nidentity = \"{}\"\naddress = \"{}:{PORT}\"\n\n\
             [params]\nswarm_size = 3\nmin_ttl_secs = 10\nmax_ttl_secs = 1209600\nepoch_secs = 3600\n\
             allow_same_subnet = false\nroster_threshold = 1\n",
            identity_hex(&dir, "authority"),
            hosts[0].2
        ),
    )
    .unwrap();
    for ((name, ns, _), config) in hosts.iter().zip(&configs) {
        let log = dir.join(format!("{name}.log"));
        let child = lab.spawn(
            ns,
            &node_binary(),
            &["run", "--config", config.to_str().unwrap()],
            &log,
        );
        lab.children.push(child);
    }
    let (alice_ns, _) = lab.host("alice", 101).unwrap();
    let (bob_ns, _) = lab.host("bob", 102).unwrap();
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    assert!(
        allium(&alice_ns, &alice, &network, &["init"])
            .status
            .success()
    );
    let out = allium(&bob_ns, &bob, &network, &["init"]);
    let bob_addr = json_lines(&out)[0]["address"].as_str().unwrap().to_owned();

    // The roster forms with every node at its own namespace address.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = json_lines(&allium(&alice_ns, &alice, &network, &["status"]));
        if status
            .first()
            .and_then(|s| s["nodes"].as_u64())
            .is_some_and(|n| n as usize == NODES + 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no full roster; node logs in {}: {status:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let out = allium(
        &alice_ns,
        &alice,
        &network,
        &["send", &bob_addr, "across namespaces"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = &json_lines(&out)[0];
    let addrs: Vec<&str> = sent["path"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(addrs.len(), 4);
    let subnets: std::collections::BTreeSet<&str> =
        addrs.iter().map(|a| a.split('.').nth(1).unwrap()).collect();
    assert_eq!(subnets.len(), 4, "one node per /16 on the path: {addrs:?}");
    assert!(addrs.iter().all(|a| a.starts_with("10.")), "{addrs:?}");

    let got = json_lines(&allium(&bob_ns, &bob, &network, &["inbox"]));
    let texts: Vec<&str> = got.iter().filter_map(|l| l["text"].as_str()).collect();
    assert_eq!(texts, vec!["across namespaces"]);
}
