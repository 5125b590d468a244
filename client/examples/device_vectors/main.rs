//! Writes the device test vectors (`whitepaper/vectors/devices.json`) to standard output:
//!
//! ```text
//! cargo run -p allium-client --example device_vectors > whitepaper/vectors/devices.json
//! ```
//!
//! Every input, random generator seeds included, is in the file, so the output is the same on
//! every run; `tests/device_vectors.rs` recomputes it from the inputs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod script;

use serde_json::json;

fn pattern(mul: u8, add: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(mul).wrapping_add(add);
    }
    out
}

fn main() {
    let inputs = script::Inputs {
        account_seed: pattern(1, 0),
        devices: vec![
            (pattern(3, 1), pattern(5, 2), 1, 1_700_000_000_000),
            (pattern(7, 3), pattern(11, 4), 2, 1_700_000_100_000),
            (pattern(13, 5), pattern(17, 6), 3, 1_700_000_200_000),
        ],
        list_version: 1_700_000_100_000,
        now: 1_700_000_200_000,
        new_device_rng_seed: pattern(19, 7),
        primary_rng_seed: pattern(23, 8),
        device_name: "laptop".into(),
        peer: allium_client::identity::Identity::from_seed(&pattern(29, 9))
            .public()
            .to_bytes(),
        msg_id: [0x5a; 16],
        text: "hello from my phone".into(),
        record_r: pattern(31, 10),
    };
    let doc = json!({
        "description": "Allium devices (whitepaper/devices.md): device lists, containers, \
            messages between an account's devices, linking (code, hello, keys, SAS, sealed \
            messages), the sync key, a sync record and the merge rule. Byte strings are \
            lowercase hex; times are u64 Unix milliseconds. Randomness: rand_chacha 0.3 \
            ChaCha20Rng::from_seed(rng seed); every draw is listed (rng_draws), in order.",
        "cases": [script::run(&inputs).unwrap()],
    });
    println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
}
