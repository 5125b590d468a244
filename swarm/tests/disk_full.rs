//! A full disk (BAD_INPUTS 17): stores answer "full", reads and deletes still work, and stores
//! work again once space returns. Runs the real store on a small tmpfs; needs root to mount
//! one and is skipped with a message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use allium_proto::storage::INBOX;
use allium_swarm::{NewMessage, RetrieveQuery, Store, StoreConfig, StoreError};
use common::{T0, key, mailbox};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn put(store: &Store, n: usize, t: u64) -> Result<allium_proto::MessageHash, StoreError> {
    let mut data = vec![(n % 251) as u8; 16 * 1024];
    data[..8].copy_from_slice(&(n as u64).to_be_bytes());
    store
        .store(
            NewMessage {
                mailbox: mailbox(&key(1)),
                namespace: INBOX,
                ttl_ms: 3_600_000,
                data,
            },
            t,
        )
        .map(|r| r.hash)
}

#[test]
fn a_full_disk_answers_full_keeps_reads_and_deletes_and_recovers() {
    let fs = match Tmpfs::mount("32m") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs here ({e}); run as root");
            return;
        }
    };
    // Space taken by something else on the same file system, given back later.
    let ballast = fs.0.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 8 << 20]).unwrap();
    let cfg = StoreConfig {
        node_cap_bytes: 1 << 40,
        mailbox_quota_bytes: 1 << 40,
        min_free_bytes: 4 << 20,
        ..StoreConfig::default()
    };
    let store = Store::open(fs.0.path().join("store"), cfg).unwrap();
    let mb = mailbox(&key(1));
    let mut stored = Vec::new();
    let mut t = T0;
    let full = loop {
        t += 1;
        match put(&store, stored.len(), t) {
            Ok(h) => stored.push(h),
            Err(e) => break e,
        }
        assert!(stored.len() < 10_000, "the disk never filled");
    };
    assert!(matches!(full, StoreError::NodeFull), "{full:?}");
    assert!(stored.len() > 100, "{} stored", stored.len());
    // Reads and deletes go on.
    let q = RetrieveQuery {
        mailbox: mb,
        namespace: INBOX,
        after: None,
        max_count: 10,
        max_bytes: 1 << 20,
    };
    assert_eq!(store.retrieve(&q, t).unwrap().messages.len(), 10);
    let deleted = store
        .delete(mb, INBOX, stored[..20].to_vec(), t + 1)
        .unwrap();
    assert_eq!(deleted.len(), 20);
    assert!(matches!(
        put(&store, 1_000_000, t + 2),
        Err(StoreError::NodeFull)
    ));
    // Space returns: stores work again, and everything acknowledged is still there.
    std::fs::remove_file(&ballast).unwrap();
    put(&store, 1_000_001, t + 3).unwrap();
    let all = RetrieveQuery {
        max_count: 256,
        max_bytes: usize::MAX,
        ..q
    };
    let mut held = 0;
    let mut after = None;
    loop {
        let page = store
            .retrieve(
                &RetrieveQuery {
                    after,
                    ..all.clone()
                },
                t + 4,
            )
            .unwrap();
        held += page.messages.len();
        after = page.messages.last().map(|m| m.key());
        if !page.more {
            break;
        }
    }
    assert_eq!(held, stored.len() - 20 + 1);
}

#[test]
fn a_write_the_disk_refuses_answers_full_by_its_kind_and_the_free_space() {
    let fs = match Tmpfs::mount("32m") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs here ({e}); run as root");
            return;
        }
    };
    // No reserve: stores go on until RocksDB's own write fails for want of space.
    let cfg = StoreConfig {
        node_cap_bytes: 1 << 40,
        mailbox_quota_bytes: 1 << 40,
        min_free_bytes: 0,
        ..StoreConfig::default()
    };
    let store = Store::open(fs.0.path().join("store"), cfg).unwrap();
    let mut t = T0;
    let mut stored = 0;
    let full = loop {
        t += 1;
        match put(&store, stored, t) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10_000, "the disk never filled");
    };
    assert!(matches!(full, StoreError::NodeFull), "{full:?}");
    assert!(!full.is_corruption());
    let q = RetrieveQuery {
        mailbox: mailbox(&key(1)),
        namespace: INBOX,
        after: None,
        max_count: 10,
        max_bytes: 1 << 20,
    };
    assert_eq!(store.retrieve(&q, t).unwrap().messages.len(), 10);
}
