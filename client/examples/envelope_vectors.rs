//! Writes the identity and envelope test vectors (`whitepaper/vectors/envelope.json`) to
//! standard output:
//!
//! ```text
//! cargo run -p allium-client --example envelope_vectors > whitepaper/vectors/envelope.json
//! ```
//!
//! Every input is fixed, so the output is the same on every run; `tests/envelope_vectors.rs`
//! recomputes it from the inputs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use allium_client::envelope::{self, BUCKETS, KEY_LABEL};
use allium_client::identity::Identity;
use blake2::Blake2bMac;
use blake2::digest::consts::U32;
use blake2::digest::{FixedOutput, KeyInit, Mac};
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    sender_seed: [u8; 32],
    recipient_seed: [u8; 32],
    ephemeral_secret: [u8; 32],
    msg_id: [u8; 16],
    timestamp: u64,
    kind: u8,
    body: Vec<u8>,
}

fn pattern<const N: usize>(mul: u8, add: u8) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(mul).wrapping_add(add);
    }
    out
}

fn binary(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn cases() -> Vec<Case> {
    let alice = pattern::<32>(1, 0);
    let bob = pattern::<32>(3, 0x80);
    let carol = pattern::<32>(5, 0x11);
    vec![
        Case {
            name: "empty body, 512-byte bucket",
            sender_seed: alice,
            recipient_seed: bob,
            ephemeral_secret: pattern(7, 0x21),
            msg_id: pattern(1, 0xa0),
            timestamp: 1_700_000_000_000,
            kind: envelope::KIND_TEXT,
            body: Vec::new(),
        },
        Case {
            name: "short text, 512-byte bucket",
            sender_seed: alice,
            recipient_seed: bob,
            ephemeral_secret: pattern(11, 0x42),
            msg_id: pattern(3, 0x05),
            timestamp: 1_700_000_123_456,
            kind: envelope::KIND_TEXT,
            body: "Hello from Allium. Ünïcödé is fine.".as_bytes().to_vec(),
        },
        Case {
            name: "largest body of the 512-byte bucket (337 bytes)",
            sender_seed: bob,
            recipient_seed: alice,
            ephemeral_secret: pattern(13, 0x07),
            msg_id: pattern(5, 0x33),
            timestamp: 1_712_345_678_901,
            kind: 1,
            body: binary(512 - envelope::OVERHEAD, 1),
        },
        Case {
            name: "one byte more (338 bytes), 1024-byte bucket",
            sender_seed: carol,
            recipient_seed: alice,
            ephemeral_secret: pattern(17, 0x99),
            msg_id: pattern(7, 0x10),
            timestamp: 0,
            kind: 1,
            body: binary(512 - envelope::OVERHEAD + 1, 2),
        },
        Case {
            name: "2000-byte body, 3072-byte bucket",
            sender_seed: alice,
            recipient_seed: carol,
            ephemeral_secret: pattern(19, 0x3c),
            msg_id: pattern(9, 0xee),
            timestamp: u64::MAX,
            kind: 0xff,
            body: binary(2000, 3),
        },
    ]
}

fn compute(c: &Case) -> Value {
    let sender = Identity::from_seed(&c.sender_seed);
    let recipient = Identity::from_seed(&c.recipient_seed);
    let envelope = envelope::seal_deterministic(
        &sender,
        &recipient.address(),
        c.kind,
        &c.body,
        &c.ephemeral_secret,
        c.msg_id,
        c.timestamp,
    )
    .unwrap();
    let plaintext = envelope::decrypt_plaintext(&recipient, &envelope).unwrap();
    let e = x25519_dalek::StaticSecret::from(c.ephemeral_secret);
    let e_pub = x25519_dalek::PublicKey::from(&e).to_bytes();
    let r_x = recipient.x25519_public();
    let shared = e
        .diffie_hellman(&x25519_dalek::PublicKey::from(r_x))
        .to_bytes();
    let mut mac = <Blake2bMac<U32> as KeyInit>::new_from_slice(&shared).unwrap();
    Mac::update(&mut mac, &e_pub);
    Mac::update(&mut mac, &r_x);
    Mac::update(&mut mac, KEY_LABEL);
    let key = mac.finalize_fixed();
    json!({
        "name": c.name,
        "sender_seed": hex::encode(c.sender_seed),
        "sender_phrase": sender.phrase().as_str(),
        "sender_public": hex::encode(sender.public().as_bytes()),
        "sender_address": sender.address().to_string(),
        "recipient_seed": hex::encode(c.recipient_seed),
        "recipient_public": hex::encode(recipient.public().as_bytes()),
        "recipient_address": recipient.address().to_string(),
        "recipient_x25519_secret": hex::encode(*recipient.x25519_secret()),
        "recipient_x25519_public": hex::encode(r_x),
        "ephemeral_secret": hex::encode(c.ephemeral_secret),
        "ephemeral_public": hex::encode(e_pub),
        "shared_secret": hex::encode(shared),
        "key": hex::encode(key),
        "msg_id": hex::encode(c.msg_id),
        "timestamp": c.timestamp,
        "kind": c.kind,
        "body": hex::encode(&c.body),
        "plaintext": hex::encode(&*plaintext),
        "envelope": hex::encode(&envelope),
    })
}

fn main() {
    let doc = json!({
        "description": "Allium identities and sealed-sender envelopes (whitepaper/client.md). \
            All byte strings are lowercase hex; timestamp is u64 milliseconds.",
        "buckets": BUCKETS,
        "cases": cases().iter().map(compute).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
}
