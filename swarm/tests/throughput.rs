//! A quick throughput report without criterion, for machines where the optimised bench build is
//! too slow to wait for: `cargo test -p allium-swarm --release --test throughput -- --ignored
//! --nocapture`. The numbers of record come from `benches/benches/store.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allium_proto::storage::{INBOX, Mailbox};
use allium_swarm::{NewMessage, RetrieveQuery, Store, StoreConfig};

const NOW: u64 = common::T0;

fn message(n: u64) -> NewMessage {
    let mut data = vec![0x5a; 1024];
    data[..8].copy_from_slice(&n.to_le_bytes());
    let mut mb = [7u8; 32];
    mb[..2].copy_from_slice(&((n % 1024) as u16).to_le_bytes());
    NewMessage {
        mailbox: Mailbox::from_bytes(mb),
        namespace: INBOX,
        ttl_ms: 86_400_000,
        data,
    }
}

fn report(line: String) {
    eprintln!("{line}");
}

#[test]
#[ignore = "measurement, not a check; run by hand"]
fn throughput_report() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        mailbox_quota_bytes: u64::MAX,
        node_cap_bytes: u64::MAX,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(dir.path(), cfg).unwrap());
    let counter = AtomicU64::new(0);
    for writers in [1usize, 8, 64] {
        let run_for = Duration::from_secs(3);
        let start = Instant::now();
        let done = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..writers {
                s.spawn(|| {
                    while start.elapsed() < run_for {
                        store
                            .store(message(counter.fetch_add(1, Ordering::Relaxed)), NOW)
                            .unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        report(format!(
            "synced store, {writers} writers: {rate:.0} stores/s"
        ));
    }
    let mb = Mailbox::from_bytes([9; 32]);
    for n in 0..100u64 {
        let mut m = message(n);
        m.mailbox = mb;
        store.store(m, NOW + n).unwrap();
    }
    let q = RetrieveQuery {
        mailbox: mb,
        namespace: INBOX,
        after: None,
        max_count: 100,
        max_bytes: usize::MAX,
    };
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(store.retrieve(&q, NOW).unwrap().messages.len(), 100);
        n += 1;
    }
    report(format!(
        "retrieve 100 x 1 KiB: {:.1} us",
        start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    ));
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, dir.path()).unwrap();
    let value = vec![0x5a; 1024];
    for sync in [false, true] {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            db.put_opt(
                counter.fetch_add(1, Ordering::Relaxed).to_be_bytes(),
                &value,
                &wo,
            )
            .unwrap();
            n += 1;
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        report(format!(
            "rocksdb put (sync = {sync}): {per:.2} us/put, {:.0} puts/s",
            1e6 / per
        ));
    }
}
