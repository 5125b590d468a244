//! Attachments through the real `allium` command and real nodes (`whitepaper/attachments.md`):
//! a file sent and received intact while a relay is killed and both the sender's and the
//! recipient's processes are SIGKILLed mid-transfer and restarted (they resume; the chunks sent
//! twice are counted and printed); a chunk altered under its address is refused and the file
//! not saved; the blob quota and a full disk are reported as such, and the upload completes
//! once space returns.
//!
//! Size: `ALLIUM_ATTACH_TEST_MB` (default 8 MB, 137 chunks) — sized for a 2-core machine
//! running a debug build beside other builds. The 50 MB run is
//! `ALLIUM_ATTACH_TEST_MB=50 ALLIUM_BIN_DIR=… cargo test -p allium-tests --test attachments
//! -- --nocapture intact`; its figures are in the commit that added this test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use allium_client::attach::BlobKeys;
use allium_client::state::DataDir;
use allium_proto::network::NetworkFile;
use allium_proto::storage::{BLOB, Mailbox};
use allium_tests::people::{Person, T, World};
use ed25519_dalek::SigningKey;
use serde_json::Value;

const CHUNK: u64 = 61_388;

fn test_mb() -> u64 {
    std::env::var("ALLIUM_ATTACH_TEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// A file of `size` bytes that no two chunks share a pattern of.
fn make_file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Runs `allium args` with its JSON lines on a channel.
fn spawn(p: &Person, args: &[&str]) -> (Child, mpsc::Receiver<Value>) {
    let mut child = p
        .command(args)
        .stdin(Stdio::null())
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

/// Waits for a progress line with at least `done` chunks done; returns it.
fn progress_reaching(rx: &mpsc::Receiver<Value>, done: u64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no progress to {done} chunks in {limit:?}"));
        if v.get("progress").is_some() && v["done"].as_u64().unwrap() >= done {
            return v;
        }
    }
}

/// The last progress line already received, and every other line.
fn drain(rx: &mpsc::Receiver<Value>) -> (Option<Value>, Vec<Value>) {
    let (mut last, mut other) = (None, Vec::new());
    while let Ok(v) = rx.try_recv() {
        if v.get("progress").is_some() {
            last = Some(v);
        } else {
            other.push(v);
        }
    }
    (last, other)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intact_through_a_killed_relay_and_killed_processes() {
    let mut w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    alice.init();
    let (bob_addr, _) = bob.init();
    let size = test_mb() * 1_000_000 + 1234;
    let chunks = size.div_ceil(CHUNK);
    let file = make_file(w.dir.path(), "big file.bin", size);
    let file_arg = file.to_str().unwrap();

    // Upload, SIGKILLed halfway, then run again: it resumes.
    let started = Instant::now();
    let (mut child, rx) = spawn(&alice, &["send", &bob_addr, "--file", file_arg]);
    let at_kill = progress_reaching(&rx, chunks / 2, T * 10);
    child.kill().unwrap();
    child.wait().unwrap();
    let (last, _) = drain(&rx);
    let up1 = last.unwrap_or(at_kill)["done"].as_u64().unwrap();
    let out = alice.ok(&["send", &bob_addr, "--file", file_arg]);
    let upload_secs = started.elapsed().as_secs_f64();
    let sent = out.iter().find(|l| l.get("sent").is_some()).unwrap();
    assert_eq!(sent["chunks"].as_u64().unwrap(), chunks);
    let (resumed, again, dup) = (
        sent["resumed"].as_u64().unwrap(),
        sent["transferred"].as_u64().unwrap(),
        sent["duplicates"].as_u64().unwrap(),
    );
    assert!(resumed > 0, "the second run resumed nothing: {sent}");
    assert_eq!(resumed + again, chunks);
    println!(
        "upload: {chunks} chunks, killed after {up1} reported; the rerun resumed {resumed}, sent \
         {again}, of which {dup} the swarm already held (sent twice); {upload_secs:.1} s in all"
    );

    // Download: a relay killed at a third, the recipient SIGKILLed at a half, then restarted.
    let down = w.dir.path().join("bob-downloads");
    let down_arg = down.to_str().unwrap();
    let big = (size * 2).to_string();
    let args = ["inbox", "--download-dir", down_arg, "--max-download", &big];
    let started = Instant::now();
    let (mut child, rx) = spawn(&bob, &args);
    progress_reaching(&rx, chunks / 3, T * 10);
    // Any node but the authority: it is a relay on some paths and may be a member too.
    let victim = w
        .net
        .nodes
        .iter()
        .position(|n| n.name != "authority")
        .unwrap();
    w.net.kill_node(victim).unwrap();
    let at_kill = progress_reaching(&rx, chunks / 2, T * 10);
    child.kill().unwrap();
    child.wait().unwrap();
    let (last, _) = drain(&rx);
    let down1 = last.unwrap_or(at_kill)["done"].as_u64().unwrap();
    assert!(
        files_in(&down).iter().all(|f| f.starts_with('.')),
        "{:?}",
        files_in(&down)
    );
    let out = bob.ok(&args);
    let download_secs = started.elapsed().as_secs_f64();
    let saved = out
        .iter()
        .find(|l| l.get("saved").is_some())
        .unwrap_or_else(|| panic!("nothing saved: {out:?}"));
    let (resumed, fetched) = (
        saved["resumed"].as_u64().unwrap(),
        saved["transferred"].as_u64().unwrap(),
    );
    assert!(resumed > 0 && resumed + fetched == chunks, "{saved}");
    let twice = down1.saturating_sub(resumed);
    println!(
        "download: {chunks} chunks, relay killed at a third, recipient killed after {down1} \
         reported; the rerun resumed {resumed} and fetched {fetched}: {twice} fetched twice; \
         {download_secs:.1} s in all"
    );
    let path = PathBuf::from(saved["saved"].as_str().unwrap());
    assert_eq!(path, down.join("big file.bin"));
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&file).unwrap());
    assert_eq!(files_in(&down), vec!["big file.bin".to_owned()]);

    // Another file of the same name never replaces the first.
    let other_dir = w.dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let small = make_file(&other_dir, "big file.bin", 1000);
    alice.ok(&["send", &bob_addr, "--file", small.to_str().unwrap()]);
    let out = bob.ok(&args);
    assert!(out.iter().any(|l| l.get("saved").is_some()));
    assert_eq!(
        files_in(&down),
        vec!["big file (1).bin".to_owned(), "big file.bin".to_owned()]
    );
    assert_eq!(
        std::fs::read(down.join("big file (1).bin")).unwrap(),
        std::fs::read(&small).unwrap()
    );
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&file).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_altered_under_its_address_is_refused() {
    let w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    alice.init();
    let (bob_addr, _) = bob.init();
    let size = 20 * CHUNK;
    let file = make_file(w.dir.path(), "doc.bin", size);
    let file_arg = file.to_str().unwrap();

    // Start the upload one chunk at a time and stop it as soon as its key is on disk.
    let (mut child, _rx) = spawn(
        &alice,
        &["send", &bob_addr, "--file", file_arg, "--paths", "1"],
    );
    let transfers = alice.data.join("transfers");
    let deadline = Instant::now() + T;
    let state: Value = loop {
        let found = std::fs::read_dir(&transfers).ok().and_then(|d| {
            d.filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().starts_with("up-"))
                .and_then(|e| std::fs::read(e.path()).ok())
                .and_then(|b| serde_json::from_slice(&b).ok())
        });
        if let Some(s) = found {
            break s;
        }
        assert!(Instant::now() < deadline, "no upload progress file");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();

    // Someone holding the owner's key (or a member replicating a forged copy) puts other
    // bytes under the last chunk's address: same 36-byte name, altered ciphertext.
    let mut key = [0u8; 32];
    hex::decode_to_slice(state["key"].as_str().unwrap(), &mut key).unwrap();
    let keys = BlobKeys::new(key);
    let n = size.div_ceil(CHUNK) as u32;
    let mut forged = keys.seal(n - 1, n, &[0u8; 100]).unwrap();
    forged[1000] ^= 1;
    let dir = DataDir::open(&alice.data).unwrap();
    let owner = SigningKey::from_bytes(&dir.read_identity().unwrap());
    let mailbox = Mailbox::from_bytes(owner.verifying_key().to_bytes());
    let net = allium_client::app::open_net(
        &dir,
        NetworkFile::load(&alice.network).unwrap(),
        &dir.load_state().unwrap(),
        allium_client::net::Timing::default(),
    )
    .unwrap();
    let stored = net
        .store_in(&mailbox, BLOB, 3_600_000, forged, Some(&owner))
        .await
        .unwrap();
    assert_eq!(stored.hash, keys.address(&mailbox, n - 1));

    // The upload resumes; the real last chunk is answered "already held".
    let out = alice.ok(&["send", &bob_addr, "--file", file_arg]);
    let sent = out.iter().find(|l| l.get("sent").is_some()).unwrap();
    assert!(sent["duplicates"].as_u64().unwrap() >= 1, "{sent}");

    let down = w.dir.path().join("bob-downloads");
    let out = bob.run(&["inbox", "--download-dir", down.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let warning = out
        .lines
        .iter()
        .filter_map(|l| l.get("warning").and_then(Value::as_str))
        .find(|w| w.contains("doc.bin"))
        .unwrap_or_else(|| panic!("no warning: {:?}", out.lines));
    assert!(
        warning.contains(&format!("chunk {} failed its integrity check", n - 1)),
        "{warning}"
    );
    assert!(out.lines.iter().all(|l| l.get("saved").is_none()));
    assert!(files_in(&down).is_empty(), "{:?}", files_in(&down));
    println!("altered chunk: {warning}");
}

/// Rewrites the `[store]` section of every node but the authority and restarts them.
fn restart_nodes_with(w: &mut World, store: &str) {
    for i in 0..w.net.nodes.len() {
        if w.net.nodes[i].name == "authority" {
            continue;
        }
        w.net.stop_node(i).unwrap();
        let path = w.net.nodes[i].config.clone();
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("[store]\n").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        let text = format!("{}[store]\n{store}{}", &text[..start], &text[end..]);
        std::fs::write(&path, text).unwrap();
        w.net.start_node(i).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_full_disk_are_clear_messages() {
    let mut w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    alice.init();
    let (bob_addr, _) = bob.init();
    let charge = 61_440 + 128;

    restart_nodes_with(
        &mut w,
        &format!("max_bytes = 1073741824\nblob_quota_bytes = {}", 2 * charge),
    );
    let three = make_file(w.dir.path(), "three.bin", 3 * CHUNK);
    let out = alice.run(&[
        "send",
        &bob_addr,
        "--file",
        three.to_str().unwrap(),
        "--paths",
        "1",
    ]);
    let err = out.lines.iter().find(|l| l.get("error").is_some()).unwrap();
    assert_eq!(out.code, 8, "{err}");
    let text = err["error"].as_str().unwrap();
    assert!(
        text.contains("attachment space of your mailbox is full")
            && text.contains("quota_exceeded"),
        "{text}"
    );
    println!("quota: {text}");

    // A full disk: the nodes want more free space than any disk has (storage §5.1 step 4).
    restart_nodes_with(
        &mut w,
        "max_bytes = 1073741824\nmin_free_bytes = 1152921504606846976",
    );
    let five = make_file(w.dir.path(), "five.bin", 5 * CHUNK);
    let out = alice.run(&[
        "send",
        &bob_addr,
        "--file",
        five.to_str().unwrap(),
        "--paths",
        "1",
    ]);
    let err = out.lines.iter().find(|l| l.get("error").is_some()).unwrap();
    assert_eq!(out.code, 8, "{err}");
    let text = err["error"].as_str().unwrap();
    assert!(
        text.contains("out of space for attachments") && text.contains("node_full"),
        "{text}"
    );
    println!("full: {text}");
    // Space returns: the same command resumes and completes.
    restart_nodes_with(&mut w, "max_bytes = 1073741824");
    let out = alice.ok(&["send", &bob_addr, "--file", five.to_str().unwrap()]);
    assert!(out.iter().any(|l| l.get("sent").is_some()), "{out:?}");
}
