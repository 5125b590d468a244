//! Sealed-sender envelopes: seal and open for each body bucket.
//!
//! `cargo bench -p allium-bench --bench envelope`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed setup ends the bench

use std::hint::black_box;
use std::time::Duration;

use allium_client::envelope::{self, BUCKETS, KIND_TEXT, OVERHEAD};
use allium_client::identity::Identity;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn envelopes(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let alice = Identity::generate_with(&mut rng);
    let bob = Identity::generate_with(&mut rng);
    let to = bob.address();
    let mut g = c.benchmark_group("envelope");
    for bucket in BUCKETS {
        // The largest body that still fits the bucket: the whole bucket is sealed either way.
        let body = vec![0x42u8; bucket.saturating_sub(OVERHEAD).max(1)];
        let body = if envelope::bucket_for(body.len()) == Some(bucket) {
            body
        } else {
            vec![0x42u8; 1]
        };
        g.throughput(Throughput::Bytes(bucket as u64));
        g.bench_function(format!("seal/{bucket}"), |b| {
            b.iter(|| {
                envelope::seal(&alice, &to, KIND_TEXT, black_box(&body), 1, &mut rng).unwrap()
            })
        });
        let sealed = envelope::seal(&alice, &to, KIND_TEXT, &body, 1, &mut rng)
            .unwrap()
            .bytes;
        g.bench_function(format!("open/{bucket}"), |b| {
            b.iter(|| envelope::open(&bob, black_box(&sealed)).unwrap())
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = envelopes
}
criterion_main!(benches);
