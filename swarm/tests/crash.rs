//! Crash test (BAD_INPUTS 15): a child process writes bursts of stores from several threads and
//! prints each message id once its store is acknowledged; the parent SIGKILLs it after reading N
//! acknowledgements, reopens the database and checks every acknowledged message is present and
//! byte-identical, and that nothing half-written is served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use allium_proto::crypto::content_hash;
use allium_proto::storage::{INBOX, MessageHash};
use allium_swarm::store::MESSAGE_OVERHEAD;
use allium_swarm::{NewMessage, RetrieveQuery, Store, StoreConfig};
use common::{T0, key, mailbox};

const CHILD_ENV: &str = "ALLIUM_SWARM_CRASH_CHILD";
const THREADS: u32 = 8;
const ROUNDS: u32 = 3;
const KILL_AFTER: usize = 400;

/// 1 KiB of bytes determined by (round, thread, i), so the parent can recompute them.
fn payload(round: u32, thread: u32, i: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(1024);
    let mut x = (u64::from(round) << 48) ^ (u64::from(thread) << 32) ^ u64::from(i) ^ 0x9e37_79b9;
    while d.len() < 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.extend_from_slice(&x.to_le_bytes());
    }
    d
}

/// Child mode: only runs when the parent sets the environment variable.
#[test]
#[ignore = "run by crash_kill9_loses_no_acknowledged_store as a child process"]
fn crash_child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, round) = spec.split_once('|').unwrap();
    let round: u32 = round.parse().unwrap();
    let store = Arc::new(Store::open(path, StoreConfig::default()).unwrap());
    let mb = mailbox(&key(1));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, out) = (Arc::clone(&store), Arc::clone(&out));
            std::thread::spawn(move || {
                // Bounded so a child that is never killed still ends.
                for i in 0..100_000 {
                    let m = NewMessage {
                        mailbox: mb,
                        namespace: INBOX,
                        ttl_ms: 86_400_000,
                        data: payload(round, t, i),
                    };
                    store.store(m, T0).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {round} {t} {i}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn crash_kill9_loses_no_acknowledged_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mb = mailbox(&key(1));
    let mut acked: BTreeMap<MessageHash, Vec<u8>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{round}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut n = 0;
        // libtest may print its own "test … " prefix on the first line: look for the marker.
        let mut record = |line: &str| {
            let Some(pos) = line.find("ACK ") else {
                return false;
            };
            let mut f = line[pos..]
                .split(' ')
                .skip(1)
                .map(|x| x.parse::<u32>().unwrap());
            let (r, t, i) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let d = payload(r, t, i);
            acked.insert(content_hash(&mb, INBOX, &d), d);
            true
        };
        for line in lines.by_ref() {
            if !record(&line.unwrap()) {
                continue;
            }
            n += 1;
            if n == KILL_AFTER {
                break;
            }
        }
        assert_eq!(
            n, KILL_AFTER,
            "child ended before {KILL_AFTER} acknowledgements"
        );
        // Child::kill sends SIGKILL on Unix: no destructor, no flush, writers mid-batch.
        child.kill().unwrap();
        // Acknowledgements already in the pipe were made before the kill: they count too.
        for line in lines {
            let Ok(line) = line else { break };
            record(&line);
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed, not finished");

        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let q = RetrieveQuery {
            mailbox: mb,
            namespace: INBOX,
            after: None,
            max_count: usize::MAX,
            max_bytes: usize::MAX,
        };
        let page = store.retrieve(&q, T0).unwrap();
        let mut held = HashSet::new();
        for m in &page.messages {
            // Nothing half-written: every message served is whole and matches its hash.
            assert_eq!(m.hash, content_hash(&mb, INBOX, &m.data));
            assert_eq!(m.data.len(), 1024);
            held.insert(m.hash);
        }
        let lost: Vec<_> = acked.keys().filter(|h| !held.contains(*h)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged stores lost",
            lost.len()
        );
        for m in &page.messages {
            if let Some(d) = acked.get(&m.hash) {
                assert_eq!(&m.data, d);
            }
        }
        // Counters were written in the same batches as the messages.
        let usage = store.usage(&mb).unwrap();
        assert_eq!(usage.count, page.messages.len() as u64);
        assert_eq!(
            usage.bytes,
            page.messages.len() as u64 * (1024 + MESSAGE_OVERHEAD)
        );
        eprintln!(
            "crash round {round}: {} acknowledged, {} held, 0 lost",
            acked.len(),
            held.len()
        );
    }
}
