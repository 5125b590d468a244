//! Session messages: the first message of a session (PQXDH and a start message), a ratchet
//! message in an established chain, and a ratchet message that opens a new chain (the DH and
//! ML-KEM step), each sealed and opened, sender and receiver apart. A 100-byte text, as people
//! send.
//!
//! `cargo bench -p allium-bench --bench session`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // a bench: a failed setup ends it, and it prints

use std::hint::black_box;
use std::time::Duration;

use allium_client::identity::Identity;
use allium_client::session::{
    DeviceKeys, PREKEY_LIFETIME_MS, PrekeyBundle, PrekeyStore, Session, envelope,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_700_000_000_000;
const TEXT: &[u8] = &[0x61; 100];

struct Device {
    keys: DeviceKeys,
    prekeys: PrekeyStore,
    bundle: PrekeyBundle,
}

fn device(rng: &mut ChaCha20Rng, id: u32) -> Device {
    let account = Identity::generate_with(rng);
    let keys = DeviceKeys::generate(&account, id, NOW, rng);
    let mut prekeys = PrekeyStore::new();
    let bundle = prekeys.rotate(&keys, NOW, PREKEY_LIFETIME_MS, rng).unwrap();
    Device {
        keys,
        prekeys,
        bundle,
    }
}

fn sessions(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let alice = device(&mut rng, 1);
    let bob = device(&mut rng, 2);
    let mut g = c.benchmark_group("session");

    // First message: PQXDH, a start message, sealed to the prekey.
    g.bench_function("first message/seal", |b| {
        b.iter(|| {
            let mut s = Session::initiate(&alice.keys, &bob.bundle, NOW, &mut rng).unwrap();
            let p = s.encrypt(black_box(TEXT)).unwrap();
            envelope::seal(&alice.keys, &bob.bundle, &p, NOW, &mut rng).unwrap()
        })
    });
    let mut a_session = Session::initiate(&alice.keys, &bob.bundle, NOW, &mut rng).unwrap();
    let first = envelope::seal(
        &alice.keys,
        &bob.bundle,
        &a_session.encrypt(TEXT).unwrap(),
        NOW,
        &mut rng,
    )
    .unwrap();
    g.bench_function("first message/open", |b| {
        b.iter(|| {
            let opened = envelope::open(&bob.prekeys, black_box(&first), NOW).unwrap();
            let allium_client::session::Payload::Start(start) = &opened.payload else {
                panic!("a start message")
            };
            Session::accept(
                &bob.keys,
                &bob.prekeys,
                &opened.sender,
                start,
                NOW,
                &mut rng,
            )
            .unwrap()
        })
    });
    let opened = envelope::open(&bob.prekeys, &first, NOW).unwrap();
    let allium_client::session::Payload::Start(start) = &opened.payload else {
        panic!("a start message")
    };
    let (mut b_session, _) = Session::accept(
        &bob.keys,
        &bob.prekeys,
        &opened.sender,
        start,
        NOW,
        &mut rng,
    )
    .unwrap();

    // Bob's reply opens a new chain: his DH and ML-KEM step, then Alice's.
    let mut rng2 = ChaCha20Rng::seed_from_u64(16);
    g.bench_function("new chain (DH + ML-KEM step)/seal", |b| {
        b.iter_batched(
            || b_session.clone(),
            |mut s| {
                let p = s.encrypt(black_box(TEXT)).unwrap();
                envelope::seal(&bob.keys, &alice.bundle, &p, NOW, &mut rng2).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let reply = envelope::seal(
        &bob.keys,
        &alice.bundle,
        &b_session.encrypt(TEXT).unwrap(),
        NOW,
        &mut rng,
    )
    .unwrap();
    g.bench_function("new chain (DH + ML-KEM step)/open", |b| {
        b.iter_batched(
            || a_session.clone(),
            |mut s| {
                let o = envelope::open(&alice.prekeys, black_box(&reply), NOW).unwrap();
                s.decrypt(&o.sender, &o.payload, NOW, &mut rng2).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let o = envelope::open(&alice.prekeys, &reply, NOW).unwrap();
    a_session
        .decrypt(&o.sender, &o.payload, NOW, &mut rng)
        .unwrap();

    // Alice's next message opens her new chain (a step); Bob takes it; then Bob's chain goes on:
    // his later messages are plain ratchet messages.
    let m = envelope::seal(
        &alice.keys,
        &bob.bundle,
        &a_session.encrypt(TEXT).unwrap(),
        NOW,
        &mut rng,
    )
    .unwrap();
    let o = envelope::open(&bob.prekeys, &m, NOW).unwrap();
    b_session
        .decrypt(&o.sender, &o.payload, NOW, &mut rng)
        .unwrap();
    let _ = b_session.encrypt(TEXT).unwrap();
    g.bench_function("ratchet message/seal", |b| {
        b.iter_batched(
            || b_session.clone(),
            |mut s| {
                let p = s.encrypt(black_box(TEXT)).unwrap();
                envelope::seal(&bob.keys, &alice.bundle, &p, NOW, &mut rng2).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    // Alice holds Bob's chain open: his next message is one ratchet step along it.
    let chain_first = envelope::seal(
        &bob.keys,
        &alice.bundle,
        &b_session.encrypt(TEXT).unwrap(),
        NOW,
        &mut rng,
    )
    .unwrap();
    let next = envelope::seal(
        &bob.keys,
        &alice.bundle,
        &b_session.encrypt(TEXT).unwrap(),
        NOW,
        &mut rng,
    )
    .unwrap();
    let o = envelope::open(&alice.prekeys, &chain_first, NOW).unwrap();
    a_session
        .decrypt(&o.sender, &o.payload, NOW, &mut rng)
        .unwrap();
    g.bench_function("ratchet message/open", |b| {
        b.iter_batched(
            || a_session.clone(),
            |mut s| {
                let o = envelope::open(&alice.prekeys, black_box(&next), NOW).unwrap();
                s.decrypt(&o.sender, &o.payload, NOW, &mut rng2).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    println!(
        "sizes: first message {} B; ratchet message {} B; session state {} B",
        first.len(),
        next.len(),
        a_session.encode().len()
    );
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
    targets = sessions
}
criterion_main!(benches);
