//! Writes the group test vectors (`whitepaper/vectors/groups.json`) to standard output:
//!
//! ```text
//! cargo run -p allium-client --example group_vectors > whitepaper/vectors/groups.json
//! ```
//!
//! Every input, random generator seeds included, is in the file, so the output is the same on
//! every run; `tests/group_vectors.rs` recomputes it from the inputs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod script;

use allium_client::group;
use script::Inputs;
use serde_json::json;

fn main() {
    let doc = json!({
        "description": "Allium groups (whitepaper/groups.md): the group identity, member keys, \
            membership lists, rekeys, sender chains and messages, epoch states, a sealed item. \
            Byte strings are lowercase hex; times are u64 Unix milliseconds. Randomness: \
            rand_chacha 0.3 ChaCha20Rng::from_seed(rng seed), one generator per party; every \
            draw is listed in the step that made it (rng_draws), in order, so an implementation \
            can use the draws without the generator. The group seed is Alice's first draw.",
        "entries_per_part": group::ENTRIES_PER_PART,
        "pad": group::PAD,
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
            account_seeds: [pattern(1, 0), pattern(3, 0x80), pattern(5, 0x11)],
            rng_seeds: [pattern(7, 0x21), pattern(11, 0x42), pattern(13, 0x07)],
            now: 1_700_000_000_000,
            plaintexts: [
                b"Hello group, this is Alice.".to_vec(),
                Vec::new(),
                b"Hi Alice, Bob here.".to_vec(),
                (0u8..=255).collect(),
            ],
        },
        Inputs {
            account_seeds: [pattern(17, 0x99), pattern(1, 0), pattern(19, 0x33)],
            rng_seeds: [pattern(23, 0x01), pattern(29, 0x02), pattern(31, 0x03)],
            now: 1_712_345_678_901,
            plaintexts: [
                vec![0xff; 188],
                "Ünïcödé".as_bytes().to_vec(),
                vec![0x61; 1000],
                b"Carol".to_vec(),
            ],
        },
    ]
}
