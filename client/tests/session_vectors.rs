//! Recomputes the published session vectors (`whitepaper/vectors/sessions.json`) from their
//! inputs, and checks the PQXDH values and the safety number against the primitives directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/session_vectors/script.rs"]
mod script;

use allium_client::session::envelope::BUCKETS;
use allium_client::session::labels;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

fn path() -> String {
    format!(
        "{}/../whitepaper/vectors/sessions.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn hex_at(v: &Value, ptr: &str) -> Vec<u8> {
    hex::decode(
        v.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{ptr} missing")),
    )
    .unwrap()
}

fn arr<const N: usize>(v: &Value, ptr: &str) -> [u8; N] {
    hex_at(v, ptr).try_into().unwrap()
}

fn num(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap()
}

/// The first place where two JSON values differ.
fn diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: fields differ"));
            }
            x.iter().find_map(|(k, va)| match y.get(k) {
                Some(vb) => diff(&format!("{path}/{k}"), va, vb),
                None => Some(format!("{path}/{k}: missing")),
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: lengths differ"));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (va, vb))| diff(&format!("{path}/{i}"), va, vb))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

fn inputs(case: &Value) -> script::Inputs {
    let plaintexts: Vec<Vec<u8>> = (0..4)
        .map(|i| hex_at(case, &format!("/inputs/plaintexts/{i}")))
        .collect();
    script::Inputs {
        alice_account_seed: arr(case, "/inputs/alice_account_seed"),
        bob_account_seed: arr(case, "/inputs/bob_account_seed"),
        alice_rng_seed: arr(case, "/inputs/alice_rng_seed"),
        bob_rng_seed: arr(case, "/inputs/bob_rng_seed"),
        alice_device_id: num(case, "/inputs/alice_device_id") as u32,
        bob_device_id: num(case, "/inputs/bob_device_id") as u32,
        now: num(case, "/inputs/now"),
        prekey_lifetime: num(case, "/inputs/prekey_lifetime"),
        plaintexts: plaintexts.try_into().unwrap(),
    }
}

fn x25519(secret: [u8; 32], public: [u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(secret, public)
}

fn base(secret: [u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

#[test]
fn published_vectors_are_reproduced() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    assert_eq!(doc["buckets"], serde_json::json!(BUCKETS));
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for case in cases {
        let computed = script::run(&inputs(case)).unwrap();
        if let Some(d) = diff("", &computed, case) {
            panic!("vector differs at {d}");
        }
        check_primitives(case);
    }
}

/// PQXDH and the safety number from the primitives, without the session module.
fn check_primitives(case: &Value) {
    let ik_a = arr::<32>(case, "/alice/device_rng_draws/1");
    let ik_b = arr::<32>(case, "/bob/device_rng_draws/1");
    let spk_b = arr::<32>(case, "/bob/prekey_rng_draws/0");
    let pq_seed = arr::<64>(case, "/bob/prekey_rng_draws/1");
    let ek_a = arr::<32>(case, "/pqxdh/rng_draws/0");
    let m = arr::<32>(case, "/pqxdh/rng_draws/1");

    let cert_a = hex_at(case, "/alice/device_cert");
    let cert_b = hex_at(case, "/bob/device_cert");
    assert_eq!(cert_a[65..97], base(ik_a));
    assert_eq!(cert_b[65..97], base(ik_b));

    let dh1 = x25519(ik_a, base(spk_b));
    let dh2 = x25519(ek_a, base(ik_b));
    let dh3 = x25519(ek_a, base(spk_b));
    assert_eq!(dh1, arr::<32>(case, "/pqxdh/dh1"));
    assert_eq!(dh2, arr::<32>(case, "/pqxdh/dh2"));
    assert_eq!(dh3, arr::<32>(case, "/pqxdh/dh3"));

    use libcrux_ml_kem::mlkem768;
    let kp = mlkem768::generate_key_pair(pq_seed);
    let bundle = hex_at(case, "/bob/prekey_bundle");
    let pq_at = 1 + 173 + 4 + 32 + 4;
    assert_eq!(&bundle[pq_at..pq_at + 1184], kp.pk().as_slice());
    let (ct, ss) = mlkem768::encapsulate(kp.public_key(), m);
    assert_eq!(ss, arr::<32>(case, "/pqxdh/ss"));

    let mut ikm = vec![0xff; 32];
    for part in [dh1, dh2, dh3, ss] {
        ikm.extend_from_slice(&part);
    }
    let mut sk = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm)
        .expand(labels::PQXDH, &mut sk)
        .unwrap();
    assert_eq!(sk, arr::<32>(case, "/pqxdh/sk"));

    // The start message: 0x01 || EK_A || ids || ratchet message (0x01 || id || header …).
    let start = hex_at(case, "/steps/0/payload");
    assert_eq!(start[1..33], base(ek_a));
    let msg = &start[41..];
    let header = &msg[33..];
    assert_eq!(&header[40..40 + 1088], ct.as_slice());
    let id: [u8; 32] = Sha256::new()
        .chain_update(labels::SESSION_ID)
        .chain_update(&cert_a)
        .chain_update(&cert_b)
        .chain_update(base(spk_b))
        .chain_update(kp.pk())
        .chain_update(base(ek_a))
        .chain_update(ct.as_slice())
        .finalize()
        .into();
    assert_eq!(id, arr::<32>(case, "/pqxdh/session_id"));
    assert_eq!(msg[1..33], id);

    // Safety number: 5200 SHA-512, six 5-digit chunks per account, sorted.
    let fp = |key: [u8; 32]| {
        let mut h: [u8; 64] = Sha512::new()
            .chain_update(labels::SAFETY_NUMBER)
            .chain_update(key)
            .finalize()
            .into();
        for _ in 1..5200 {
            h = Sha512::new()
                .chain_update(h)
                .chain_update(key)
                .finalize()
                .into();
        }
        (0..6)
            .map(|c| {
                let v = h[5 * c..5 * c + 5]
                    .iter()
                    .fold(0u64, |a, &b| (a << 8) | u64::from(b));
                format!("{:05}", v % 100_000)
            })
            .collect::<String>()
    };
    let a = fp(arr(case, "/alice/account_public"));
    let b = fp(arr(case, "/bob/account_public"));
    assert_eq!(
        a,
        case["safety_number"]["alice_fingerprint"].as_str().unwrap()
    );
    let number = if a <= b { a + &b } else { b + &a };
    assert_eq!(number, case["safety_number"]["number"].as_str().unwrap());
}
