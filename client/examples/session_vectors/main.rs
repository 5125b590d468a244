//! Writes the session test vectors (`whitepaper/vectors/sessions.json`) to standard output:
//!
//! ```text
//! cargo run -p allium-client --example session_vectors > whitepaper/vectors/sessions.json
//! ```
//!
//! Every input, random generator seeds included, is in the file, so the output is the same on
//! every run; `tests/session_vectors.rs` recomputes it from the inputs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod script;

use allium_client::session;
use allium_client::session::envelope::BUCKETS;
use script::Inputs;
use serde_json::json;

fn main() {
    let doc = json!({
        "description": "Allium per-device sessions (whitepaper/sessions.md): device certificates, \
            prekey bundles, PQXDH, ratchet messages with KEM steps, envelope v2, session states, \
            safety numbers. Byte strings are lowercase hex; times are u64 Unix milliseconds. \
            Randomness: rand_chacha 0.3 ChaCha20Rng::from_seed(rng seed); every draw is listed \
            in the step that made it (rng_draws), in order, so an implementation can use the \
            draws without the generator.",
        "buckets": BUCKETS,
        "cases": cases().iter().map(|c| script::run(c).unwrap()).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
}

fn pattern(mul: u8, add: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(mul).wrapping_add(add);
    }
    out
}

/// The published cases.
fn cases() -> Vec<Inputs> {
    vec![
        Inputs {
            alice_account_seed: pattern(1, 0),
            bob_account_seed: pattern(3, 0x80),
            alice_rng_seed: pattern(7, 0x21),
            bob_rng_seed: pattern(11, 0x42),
            alice_device_id: 1,
            bob_device_id: 1,
            now: 1_700_000_000_000,
            prekey_lifetime: session::PREKEY_LIFETIME_MS,
            plaintexts: [
                b"Hello Bob, this is Alice's first device.".to_vec(),
                b"A second message before any reply.".to_vec(),
                b"Hi Alice.".to_vec(),
                Vec::new(),
            ],
        },
        Inputs {
            alice_account_seed: pattern(5, 0x11),
            bob_account_seed: pattern(1, 0),
            alice_rng_seed: pattern(13, 0x07),
            bob_rng_seed: pattern(17, 0x99),
            alice_device_id: 0xdead_beef,
            bob_device_id: 2,
            now: 1_712_345_678_901,
            prekey_lifetime: 48 * 3600 * 1000,
            plaintexts: [
                Vec::new(),
                vec![0xff; 442],
                (0u8..=255).collect(),
                "Ünïcödé".as_bytes().to_vec(),
            ],
        },
    ]
}
