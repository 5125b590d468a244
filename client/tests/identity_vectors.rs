//! Recomputes the published identity vectors (`whitepaper/vectors/identity.json`: seed, public
//! key, recovery phrase, address, as client.md §1–§3 define them) and fails on any difference.
//! `ALLIUM_WRITE_VECTORS=1 cargo test -p allium-client --test identity_vectors` rewrites the file
//! (review the diff: a change is a format change).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use allium_client::identity::{Address, Identity};
use serde_json::{Value, json};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../whitepaper/vectors/identity.json"
);

/// The seeds: RFC 8032 test 1's secret, a sequence, and two more patterns.
const SEEDS: [&str; 4] = [
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "808386898c8f9295989b9ea1a4a7aaadb0b3b6b9bcbfc2c5c8cbced1d4d7dadd",
    "11161b20252a2f34393e43484d52575c61666b70757a7f84898e93989da2a7ac",
];

fn case(seed_hex: &str) -> Value {
    let seed: [u8; 32] = hex::decode(seed_hex).unwrap().try_into().unwrap();
    let id = Identity::from_seed(&seed);
    json!({
        "seed": seed_hex,
        "public": hex::encode(id.public().as_bytes()),
        "phrase": id.phrase().as_str(),
        "address": id.address().to_string(),
        "address_upper": id.address().to_uppercase(),
    })
}

fn vectors() -> Value {
    json!({
        "description": "Allium identities (whitepaper/client.md §1–§3): the 32-byte seed, its Ed25519 \
                        public key, its 24-word BIP39 recovery phrase (the seed is the entropy), and \
                        its bech32m address with prefix allium, in lower case and as a QR code \
                        encodes it. Byte strings are lowercase hex.",
        "cases": SEEDS.iter().map(|s| case(s)).collect::<Vec<_>>(),
    })
}

#[test]
fn published_identity_vectors_match() {
    let want = vectors();
    if std::env::var_os("ALLIUM_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&want).unwrap() + "\n";
        std::fs::write(PATH, text).unwrap();
    }
    let published: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(published, want, "identity.json differs from the code");
    // Every published value also reads back: the phrase restores the seed, the address (in
    // either case) parses to the public key.
    for c in published["cases"].as_array().unwrap() {
        let id = Identity::from_phrase(c["phrase"].as_str().unwrap()).unwrap();
        assert_eq!(hex::encode(*id.seed()), c["seed"].as_str().unwrap());
        for field in ["address", "address_upper"] {
            let a = Address::from_str(c[field].as_str().unwrap()).unwrap();
            assert_eq!(
                hex::encode(a.public_key().as_bytes()),
                c["public"].as_str().unwrap()
            );
        }
    }
}
