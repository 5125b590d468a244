//! The onion hot path: build a 4-layer packet, peel one layer, wrap and open a reply, for each
//! size class, beside one X25519 operation for reference.
//!
//! `cargo bench -p allium-bench --bench onion`. After the criterion groups it prints the ratio of
//! one relay peel to one X25519 operation, measured interleaved in the same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use allium_onion::{
    Epoch, IdentityKeypair, NodeId, OnionSecretKey, PathHop, Peeled, SessionRole, SessionTable,
    SizeClass, build_packet, peel, peel_session, prepare_path,
};
use criterion::{BatchSize, Criterion, criterion_group};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const EPOCH: Epoch = Epoch(1);

fn network(rng: &mut ChaCha20Rng, hops: usize) -> (Vec<OnionSecretKey>, Vec<PathHop>) {
    let keys: Vec<_> = (0..hops)
        .map(|_| OnionSecretKey::generate(EPOCH, rng))
        .collect();
    let path = keys
        .iter()
        .map(|k| PathHop {
            node: NodeId::from(&IdentityKeypair::generate(rng).public()),
            epoch: EPOCH,
            onion_key: *k.public(),
        })
        .collect();
    (keys, path)
}

fn x25519_op(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut k = [0u8; 32];
    let mut u = [0u8; 32];
    rng.fill_bytes(&mut k);
    rng.fill_bytes(&mut u);
    let onion_key = OnionSecretKey::from_bytes(EPOCH, &k);
    c.bench_function("x25519/one-operation", |b| {
        b.iter(|| allium_onion::trace::onion_key_agreement(black_box(&onion_key), black_box(&u)))
    });
}

fn packet(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (keys, path) = network(&mut rng, 4);
    for class in SizeClass::ALL {
        let request = vec![7u8; 1024];
        c.bench_function(&format!("build/4-layers/{class}"), |b| {
            b.iter(|| build_packet(&mut rng, &path, &request, class, class).unwrap())
        });
        let built = build_packet(&mut rng, &path, &request, class, class).unwrap();
        c.bench_function(&format!("peel/relay/{class}"), |b| {
            b.iter_batched_ref(
                || built.packet.clone(),
                |p| match peel(&keys[0], p, |_, _| true).unwrap() {
                    Peeled::Forward { next, .. } => next,
                    Peeled::Deliver { .. } => unreachable!(),
                },
                BatchSize::SmallInput,
            )
        });
    }
}

/// Replies: the destination seals, three relays wrap, the client opens.
fn reply(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (keys, path) = network(&mut rng, 4);
    for class in SizeClass::ALL {
        let fresh = |rng: &mut ChaCha20Rng| {
            let built = build_packet(rng, &path, b"q", SizeClass::Small, class).unwrap();
            let mut p = built.packet;
            let mut layers = Vec::new();
            for k in &keys {
                layers.push(match peel(k, &mut p, |_, _| true).unwrap() {
                    Peeled::Forward { reply, .. } => Ok(reply),
                    Peeled::Deliver { reply, .. } => Err(reply),
                });
            }
            (built.reply, layers)
        };
        let body = vec![1u8; allium_onion::max_response(class)];
        c.bench_function(&format!("reply/wrap-one-layer/{class}"), |b| {
            b.iter_batched(
                || {
                    let (_, mut layers) = fresh(&mut rng);
                    let Ok(wrap) = layers.remove(0) else {
                        unreachable!()
                    };
                    (wrap, vec![0u8; class.size()])
                },
                |(wrap, mut r)| {
                    wrap.wrap(&mut r).unwrap();
                    r
                },
                BatchSize::SmallInput,
            )
        });
        c.bench_function(&format!("reply/open-4-layers/{class}"), |b| {
            b.iter_batched(
                || {
                    let (opener, layers) = fresh(&mut rng);
                    let mut r = Vec::new();
                    for layer in layers.into_iter().rev() {
                        match layer {
                            Err(seal) => r = seal.seal(&body).unwrap(),
                            Ok(wrap) => wrap.wrap(&mut r).unwrap(),
                        }
                    }
                    (opener, r)
                },
                |(opener, mut r)| opener.open(&mut r).map(|_| ()).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
}

/// Median over rounds of (time of `n` relay peels) / (time of `n` X25519 operations), the two
/// interleaved so machine noise hits both alike.
fn peel_to_x25519_ratio(class: SizeClass) -> (f64, Duration, Duration) {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (keys, path) = network(&mut rng, 4);
    let n = 300;
    let packets: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            build_packet(&mut rng, &path, b"r", class, class)
                .unwrap()
                .packet
        })
        .collect();
    let u = *keys[1].public().as_bytes();
    let mut ratios = Vec::new();
    let mut peels = Vec::new();
    let mut dhs = Vec::new();
    for _ in 0..21 {
        let mut batch = packets.clone();
        let t = Instant::now();
        for _ in 0..n {
            black_box(allium_onion::trace::onion_key_agreement(
                black_box(&keys[0]),
                black_box(&u),
            ))
            .ok();
        }
        let dh = t.elapsed();
        let t = Instant::now();
        for p in &mut batch {
            black_box(peel(&keys[0], p, |_, _| true).is_ok());
        }
        let pe = t.elapsed();
        ratios.push(pe.as_secs_f64() / dh.as_secs_f64());
        peels.push(pe / n);
        dhs.push(dh / n);
    }
    ratios.sort_by(f64::total_cmp);
    peels.sort();
    dhs.sort();
    (
        ratios[ratios.len() / 2],
        peels[peels.len() / 2],
        dhs[dhs.len() / 2],
    )
}

/// A relay's peel of a path session's packet (onion.md §12) against its peel of an onion packet,
/// interleaved in rounds of `n` packets each on the first hop of a 4-layer path: medians of the
/// per-round ratio and of each time per packet.
fn session_to_onion_ratio(class: SizeClass) -> (f64, Duration, Duration) {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (keys, path) = network(&mut rng, 4);
    let n = 300;
    let (opening, mut session) = prepare_path(&mut rng, &path)
        .unwrap()
        .build_opening(b"open", class, class)
        .unwrap();
    let mut table = SessionTable::new(1);
    let mut p = opening.packet;
    match peel(&keys[0], &mut p, |_, _| true).unwrap() {
        Peeled::Forward {
            next,
            opened: Some(grant),
            ..
        } => table
            .open(grant, SessionRole::Relay { next }, EPOCH, 0)
            .unwrap(),
        _ => panic!("the first hop relays and keeps the session"),
    }
    let onion: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            build_packet(&mut rng, &path, &[7u8; 512], class, class)
                .unwrap()
                .packet
        })
        .collect();
    let sessions: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            session
                .build(&mut rng, &[7u8; 512], class, class)
                .unwrap()
                .packet
        })
        .collect();
    let (mut ratios, mut per_session, mut per_onion) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..21 {
        let mut batch = onion.clone();
        let t = Instant::now();
        for p in &mut batch {
            black_box(peel(&keys[0], p, |_, _| true).is_ok());
        }
        let on = t.elapsed();
        // The window is not consulted (every round peels the same sequence numbers again); the
        // table look-up is.
        let mut batch = sessions.clone();
        let t = Instant::now();
        for p in &mut batch {
            black_box(peel_session(p, |id| table.get(id, 0), |_, _| true).is_ok());
        }
        let se = t.elapsed();
        ratios.push(se.as_secs_f64() / on.as_secs_f64());
        per_session.push(se / n);
        per_onion.push(on / n);
    }
    ratios.sort_by(f64::total_cmp);
    per_session.sort();
    per_onion.sort();
    (ratios[10], per_session[10], per_onion[10])
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = x25519_op, packet, reply
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    for class in SizeClass::ALL {
        let (ratio, peel, dh) = peel_to_x25519_ratio(class);
        println!(
            "ratio peel/x25519 ({class}): median {ratio:.3} (peel {peel:?}, x25519 {dh:?}, interleaved, 21 rounds of 300)"
        );
    }
    for class in SizeClass::ALL {
        let (ratio, session, onion) = session_to_onion_ratio(class);
        println!(
            "ratio session peel/onion peel ({class}): median {ratio:.3} (session {session:?}, onion {onion:?}, interleaved, 21 rounds of 300)"
        );
    }
}
