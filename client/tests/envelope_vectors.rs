//! Recomputes the published identity and envelope vectors (`whitepaper/vectors/envelope.json`)
//! from their inputs and opens every envelope.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use allium_client::envelope::{self, BUCKETS, KEY_LABEL};
use allium_client::identity::{Address, Identity};
use blake2::Blake2bMac;
use blake2::digest::consts::U32;
use blake2::digest::{FixedOutput, KeyInit, Mac};
use serde_json::Value;

fn path() -> String {
    format!(
        "{}/../whitepaper/vectors/envelope.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn bytes(case: &Value, field: &str) -> Vec<u8> {
    hex::decode(
        case[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing")),
    )
    .unwrap()
}

fn array<const N: usize>(case: &Value, field: &str) -> [u8; N] {
    bytes(case, field).try_into().unwrap()
}

fn text<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field].as_str().unwrap()
}

#[test]
fn published_vectors_are_reproduced() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let buckets: Vec<usize> = doc["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(buckets, BUCKETS);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    let mut lengths = Vec::new();
    for case in cases {
        let name = text(case, "name");
        let sender = Identity::from_seed(&array(case, "sender_seed"));
        let recipient = Identity::from_seed(&array(case, "recipient_seed"));

        // Identity: phrase, keys, addresses.
        assert_eq!(
            sender.phrase().as_str(),
            text(case, "sender_phrase"),
            "{name}"
        );
        let restored = Identity::from_phrase(text(case, "sender_phrase")).unwrap();
        assert_eq!(*restored.seed(), array::<32>(case, "sender_seed"), "{name}");
        assert_eq!(sender.public().to_bytes(), array(case, "sender_public"));
        assert_eq!(
            recipient.public().to_bytes(),
            array(case, "recipient_public")
        );
        assert_eq!(sender.address().to_string(), text(case, "sender_address"));
        assert_eq!(
            recipient.address().to_string(),
            text(case, "recipient_address")
        );
        let parsed = Address::from_str(text(case, "recipient_address")).unwrap();
        assert_eq!(parsed, recipient.address());
        assert_eq!(
            *recipient.x25519_secret(),
            array(case, "recipient_x25519_secret"),
            "{name}"
        );
        assert_eq!(
            parsed.x25519_public(),
            array::<32>(case, "recipient_x25519_public")
        );

        // Key agreement and derivation, computed here from the primitives.
        let e_secret: [u8; 32] = array(case, "ephemeral_secret");
        let e = x25519_dalek::StaticSecret::from(e_secret);
        let e_pub = x25519_dalek::PublicKey::from(&e).to_bytes();
        assert_eq!(e_pub, array(case, "ephemeral_public"), "{name}");
        let r_x: [u8; 32] = array(case, "recipient_x25519_public");
        let shared = e
            .diffie_hellman(&x25519_dalek::PublicKey::from(r_x))
            .to_bytes();
        assert_eq!(shared, array(case, "shared_secret"), "{name}");
        // The recipient's side agrees.
        let r = x25519_dalek::StaticSecret::from(array::<32>(case, "recipient_x25519_secret"));
        assert_eq!(
            r.diffie_hellman(&x25519_dalek::PublicKey::from(e_pub))
                .to_bytes(),
            shared
        );
        let mut mac = <Blake2bMac<U32> as KeyInit>::new_from_slice(&shared).unwrap();
        Mac::update(&mut mac, &e_pub);
        Mac::update(&mut mac, &r_x);
        Mac::update(&mut mac, KEY_LABEL);
        assert_eq!(
            mac.finalize_fixed().as_slice(),
            bytes(case, "key").as_slice(),
            "{name}"
        );

        // The envelope.
        let kind = case["kind"].as_u64().unwrap() as u8;
        let timestamp = case["timestamp"].as_u64().unwrap();
        let msg_id: [u8; 16] = array(case, "msg_id");
        let body = bytes(case, "body");
        let sealed = envelope::seal_deterministic(
            &sender,
            &recipient.address(),
            kind,
            &body,
            &e_secret,
            msg_id,
            timestamp,
        )
        .unwrap();
        let published = bytes(case, "envelope");
        assert_eq!(hex::encode(&sealed), hex::encode(&published), "{name}");
        assert!(BUCKETS.contains(&published.len()));
        lengths.push(published.len());
        assert_eq!(published[0], envelope::VERSION);
        assert_eq!(&published[1..33], e_pub.as_slice());

        let plaintext = envelope::decrypt_plaintext(&recipient, &published).unwrap();
        assert_eq!(*plaintext, bytes(case, "plaintext"), "{name}");

        let opened = envelope::open(&recipient, &published).unwrap();
        assert_eq!(opened.sender, sender.address());
        assert_eq!(opened.kind, kind);
        assert_eq!(opened.msg_id, msg_id);
        assert_eq!(opened.timestamp, timestamp);
        assert_eq!(opened.body, body);
    }
    lengths.sort_unstable();
    lengths.dedup();
    assert!(lengths.len() >= 3, "vectors cover at least three buckets");
    let empty = cases
        .iter()
        .any(|c| c["body"].as_str().is_some_and(str::is_empty));
    assert!(empty, "vectors include an empty body");
}
