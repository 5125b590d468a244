//! Storage benchmarks (issue #3): acknowledged (WAL-synced) store throughput with 1, 8 and 64
//! concurrent writers, a retrieve of 100 messages, for 1 KiB messages; beside RocksDB's own raw
//! put and synced put measured in the same run on the same disk.
//!
//! `cargo bench -p allium-bench --bench store`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed setup ends the bench

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allium_proto::storage::{INBOX, Mailbox};
use allium_swarm::{NewMessage, RetrieveQuery, Store, StoreConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MSG: usize = 1024;
const NOW: u64 = 1_700_000_000_000;

fn message(n: u64) -> NewMessage {
    let mut data = vec![0x5a; MSG];
    data[..8].copy_from_slice(&n.to_le_bytes());
    // Spread over many mailboxes, as on a real node.
    let mut mb = [7u8; 32];
    mb[..2].copy_from_slice(&((n % 1024) as u16).to_le_bytes());
    NewMessage {
        mailbox: Mailbox::from_bytes(mb),
        namespace: INBOX,
        ttl_ms: 86_400_000,
        data,
    }
}

fn bench_config() -> StoreConfig {
    StoreConfig {
        mailbox_quota_bytes: u64::MAX,
        node_cap_bytes: u64::MAX,
        ..StoreConfig::default()
    }
}

fn synced_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), bench_config()).unwrap());
    let counter = Arc::new(AtomicU64::new(0));
    let mut g = c.benchmark_group("store_synced_1KiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for writers in [1usize, 8, 64] {
        // One burst: every writer stores `per` messages back to back, each waiting for its ack.
        // Bursts are long enough that thread start and the tail of the burst, where fewer
        // writers remain, are a small part of the time.
        let per = match writers {
            1 => 32,
            8 => 64,
            _ => 32,
        };
        g.throughput(Throughput::Elements((writers * per) as u64));
        g.bench_function(format!("writers_{writers}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    std::thread::scope(|s| {
                        for _ in 0..writers {
                            s.spawn(|| {
                                for _ in 0..per {
                                    let n = counter.fetch_add(1, Ordering::Relaxed);
                                    store.store(message(n), NOW).unwrap();
                                }
                            });
                        }
                    });
                }
                start.elapsed()
            });
        });
    }
    g.finish();
}

fn retrieve_100(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), bench_config()).unwrap();
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
    assert_eq!(store.retrieve(&q, NOW).unwrap().messages.len(), 100);
    let mut g = c.benchmark_group("retrieve_1KiB");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(100));
    g.bench_function("messages_100", |b| {
        b.iter(|| store.retrieve(&q, NOW).unwrap())
    });
    g.finish();
}

fn rocksdb_baseline(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let db = Arc::new(rocksdb::DB::open(&opts, dir.path()).unwrap());
    let value = vec![0x5a; MSG];
    let counter = AtomicU64::new(0);
    let mut g = c.benchmark_group("rocksdb_put_1KiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for (name, sync) in [("raw", false), ("synced", true)] {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        g.bench_function(name, |b| {
            b.iter(|| {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                db.put_opt(n.to_be_bytes(), &value, &wo).unwrap();
            })
        });
    }
    // RocksDB's own write grouping: 64 threads each doing synced puts (same burst shape).
    let per = 32usize;
    g.throughput(Throughput::Elements((64 * per) as u64));
    g.bench_function("synced_64_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                std::thread::scope(|s| {
                    for _ in 0..64 {
                        s.spawn(|| {
                            let mut wo = rocksdb::WriteOptions::default();
                            wo.set_sync(true);
                            for _ in 0..per {
                                let n = counter.fetch_add(1, Ordering::Relaxed);
                                db.put_opt(n.to_be_bytes(), &value, &wo).unwrap();
                            }
                        });
                    }
                });
            }
            start.elapsed()
        });
    });
    g.finish();
}

criterion_group!(benches, synced_store, retrieve_100, rocksdb_baseline);
criterion_main!(benches);
