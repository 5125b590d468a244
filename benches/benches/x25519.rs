//! X25519 backends on this machine, measured interleaved so that their ratios hold whatever
//! else the machine is doing (whitepaper performance.md, "X25519 backends").
//!
//! `cargo bench -p allium-bench --bench x25519`. Each round times a batch of every backend in
//! turn; the table gives each backend's median over the rounds and its median ratio to the
//! curve25519-dalek Montgomery ladder (what `x25519-dalek` runs) within the same round. Before
//! timing, every backend is checked against RFC 7748's vector and against the ladder on random
//! inputs, so the table never compares a backend that computes something else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::hint::black_box;
use std::time::Instant;

use aws_lc_rs::agreement;
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const ROUNDS: usize = 60;
const BATCH: usize = 100;

/// One X25519 function of a backend: (scalar, u-coordinate) → shared u-coordinate.
type Backend = (&'static str, fn(&[u8; 32], &[u8; 32]) -> [u8; 32]);

/// curve25519-dalek's Montgomery ladder (serial field arithmetic; no SIMD path).
fn ladder(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*k, *u)
}

/// The same function through the Edwards form: u → Edwards point, clamped variable-base
/// multiplication (curve25519-dalek's backend chosen at run time: AVX2 here), back to u. Refuses
/// the twist (no Edwards point), which the ladder would multiply.
fn edwards(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint(*u)
        .to_edwards(0)
        .map(|p| p.mul_clamped(*k).to_montgomery().0)
        .unwrap_or([0; 32])
}

/// aws-lc-rs (AWS-LC: s2n-bignum's x86-64 assembly with ADX/BMI2 where the CPU has them), with
/// the private key parsed for each operation, as a single-use layer key is.
fn aws_lc(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let private = agreement::PrivateKey::from_private_key(&agreement::X25519, k).unwrap();
    aws_lc_agree(&private, u)
}

fn aws_lc_agree(private: &agreement::PrivateKey, u: &[u8; 32]) -> [u8; 32] {
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, u);
    agreement::agree(private, peer, (), |s| Ok(<[u8; 32]>::try_from(s).unwrap())).unwrap()
}

/// A layer key's public half: curve25519-dalek's fixed-base multiplication (what
/// `x25519_dalek::PublicKey::from` runs).
fn dalek_public(k: &[u8; 32], _: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*k)).to_bytes()
}

/// A layer key's public half with aws-lc-rs.
fn aws_lc_public(k: &[u8; 32], _: &[u8; 32]) -> [u8; 32] {
    let private = agreement::PrivateKey::from_private_key(&agreement::X25519, k).unwrap();
    <[u8; 32]>::try_from(private.compute_public_key().unwrap().as_ref()).unwrap()
}

fn check(backends: &[Backend], rng: &mut ChaCha20Rng) {
    // RFC 7748 §5.2, first vector.
    let k = hex32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
    let u = hex32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
    let want = hex32("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
    let base = x25519_dalek::X25519_BASEPOINT_BYTES;
    for (name, f) in backends {
        let u = if name.starts_with("public") { base } else { u };
        assert_eq!(f(&k, &u), ladder(&k, &u), "{name}: RFC 7748 vector");
    }
    assert_eq!(ladder(&k, &u), want, "the ladder: RFC 7748 vector");
    for _ in 0..200 {
        let (k, u) = (random(rng), public(rng));
        for (name, f) in backends {
            let u = if name.starts_with("public") { base } else { u };
            assert_eq!(f(&k, &u), ladder(&k, &u), "{name} differs from the ladder");
        }
    }
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn random(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut b = [0; 32];
    rng.fill_bytes(&mut b);
    b
}

/// A public key as a peer sends it (a point of the curve, not of the twist).
fn public(rng: &mut ChaCha20Rng) -> [u8; 32] {
    x25519_dalek::x25519(random(rng), x25519_dalek::X25519_BASEPOINT_BYTES)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // Criterion-style filters and flags (`--bench`) are passed by `cargo bench`; this harness
    // runs everything.
    let mut rng = ChaCha20Rng::seed_from_u64(7748);
    let static_key = random(&mut rng);
    let aws_static =
        agreement::PrivateKey::from_private_key(&agreement::X25519, &static_key).unwrap();
    let backends: Vec<Backend> = vec![
        ("curve25519-dalek Montgomery ladder (x25519-dalek)", ladder),
        ("curve25519-dalek Edwards form, AVX2 backend", edwards),
        ("aws-lc-rs, key parsed per operation", aws_lc),
        ("public key: curve25519-dalek fixed base", dalek_public),
        ("public key: aws-lc-rs", aws_lc_public),
    ];
    check(&backends, &mut rng);
    let inputs: Vec<([u8; 32], [u8; 32])> = (0..BATCH)
        .map(|_| (random(&mut rng), public(&mut rng)))
        .collect();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b.0)
        .chain(["aws-lc-rs, static key parsed once (a node's onion key)"])
        .collect();
    let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut ratio: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..ROUNDS {
        let mut round = Vec::with_capacity(names.len());
        for (_, f) in &backends {
            let t = Instant::now();
            for (k, u) in &inputs {
                black_box(f(black_box(k), black_box(u)));
            }
            round.push(t.elapsed().as_secs_f64() * 1e6 / BATCH as f64);
        }
        let t = Instant::now();
        for (_, u) in &inputs {
            black_box(aws_lc_agree(black_box(&aws_static), black_box(u)));
        }
        round.push(t.elapsed().as_secs_f64() * 1e6 / BATCH as f64);
        for (i, us) in round.iter().enumerate() {
            per_op[i].push(*us);
            ratio[i].push(us / round[0]);
        }
    }
    println!("X25519, {ROUNDS} interleaved rounds of {BATCH} operations each:");
    println!("| backend | µs per operation (median) | ratio to the ladder (median) |");
    println!("| --- | ---: | ---: |");
    for (i, name) in names.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {:.2} |",
            median(&mut per_op[i]),
            median(&mut ratio[i])
        );
    }
}
