//! Recomputes the published group vectors (`whitepaper/vectors/groups.json`) from their inputs,
//! and checks the epoch id, header key, sender chains, one wrapped key and a sealed item against
//! the primitives directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/group_vectors/script.rs"]
mod script;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use allium_client::group::labels;
use hkdf::Hkdf;
use libcrux_ml_kem::mlkem768;
use serde_json::Value;
use sha2::Sha256;

fn path() -> String {
    format!(
        "{}/../whitepaper/vectors/groups.json",
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
    let three =
        |p: &str| -> [[u8; 32]; 3] { [0, 1, 2].map(|i| arr(case, &format!("/inputs/{p}/{i}"))) };
    let plaintexts: Vec<Vec<u8>> = (0..4)
        .map(|i| hex_at(case, &format!("/inputs/plaintexts/{i}")))
        .collect();
    script::Inputs {
        account_seeds: three("account_seeds"),
        rng_seeds: three("rng_seeds"),
        now: case.pointer("/inputs/now").and_then(Value::as_u64).unwrap(),
        plaintexts: plaintexts.try_into().unwrap(),
    }
}

fn hkdf<const N: usize>(salt: &[u8], ikm: &[&[u8]], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    Hkdf::<Sha256>::new(Some(salt), &ikm.concat())
        .expand(info, &mut out)
        .unwrap();
    out
}

fn aes_open(key: &[u8], nonce: &[u8], ad: &[u8], ct: &[u8]) -> Vec<u8> {
    Aes256Gcm::new_from_slice(key)
        .unwrap()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: ad })
        .unwrap()
}

#[test]
fn published_vectors_are_reproduced() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for (i, case) in cases.iter().enumerate() {
        let computed = script::run(&inputs(case)).unwrap();
        if let Some(d) = diff(&format!("case {i}"), case, &computed) {
            panic!("vectors differ at {d}; rerun the group_vectors example");
        }
        check_primitives(case);
    }
}

/// Epoch 2 from Alice's draws and Carol's secrets, without the group module.
fn check_primitives(case: &Value) {
    // The group key is the Ed25519 key of Alice's first draw.
    let seed: [u8; 32] = arr(case, "/group/rng_draws/0");
    let g = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    assert_eq!(g, arr::<32>(case, "/group/public"));
    // Rekey 2: K is the first draw, e the second.
    let k: [u8; 32] = arr(case, "/rekey2/rng_draws/0");
    let e: [u8; 32] = arr(case, "/rekey2/rng_draws/1");
    let epoch = 2u64.to_be_bytes();
    let epoch_id: [u8; 16] = hkdf(&k, &[&g, &epoch], labels::EPOCH_ID);
    assert_eq!(epoch_id, arr::<16>(case, "/rekey2/epoch_id"));
    let state = hex_at(case, "/rekey2/admin_state");
    let hk: [u8; 32] = hkdf(&k, &[&g], labels::HEADER_KEY);
    let at = 1 + 32 + 8 + 16 + 32;
    assert_eq!(state[at..at + 32], hk);
    let total = usize::from(u16::from_be_bytes([state[at + 34], state[at + 35]]));
    assert_eq!(total, 3);
    for j in 0..total {
        let s = at + 36 + j * 100;
        let ck: [u8; 32] = hkdf(&k, &[&state[s..s + 64]], labels::SENDER_CHAIN);
        assert_eq!(state[s + 64..s + 96], ck);
    }
    // Carol's entry: X25519 and ML-KEM with her member secret, the wrap key, the epoch key.
    let part = hex_at(case, "/rekey2/parts/0");
    let secret = hex_at(case, "/devices/carol/member_secret");
    let x: [u8; 32] = secret[1..33].try_into().unwrap();
    let kem_seed: [u8; 64] = secret[33..97].try_into().unwrap();
    let x_pub = x25519_dalek::x25519(x, x25519_dalek::X25519_BASEPOINT_BYTES);
    let e_pub = x25519_dalek::x25519(e, x25519_dalek::X25519_BASEPOINT_BYTES);
    let head = 1 + 32 + 32 + 8 + 16 + 8;
    assert_eq!(part[head..head + 32], e_pub);
    let list_hash = &part[33..65];
    let carol_account = hex_at(case, "/devices/carol/account");
    let entries = head + 32 + 6;
    let entry = (0..total)
        .map(|j| entries + j * 1200)
        .find(|s| part[*s..*s + 32] == carol_account[..])
        .unwrap();
    let ct: [u8; 1088] = part[entry + 64..entry + 64 + 1088].try_into().unwrap();
    let (dk, _) = mlkem768::generate_key_pair(kem_seed).into_parts();
    let ss = mlkem768::decapsulate(&dk, &mlkem768::MlKem768Ciphertext::from(&ct));
    let dh = x25519_dalek::x25519(x, e_pub);
    let info = [labels::WRAP, &g, &epoch, list_hash].concat();
    let kn: [u8; 44] = hkdf(&[0; 32], &[&ss, &dh, &e_pub, &x_pub], &info);
    let ad = [labels::WRAP, &part[entry..entry + 64]].concat();
    let wrapped = &part[entry + 64 + 1088..entry + 1200];
    assert_eq!(aes_open(&kn[..32], &kn[32..], &ad, wrapped), k);
    // The sealed item opens under the item key of the group seed.
    let item_key: [u8; 32] = hkdf(&[0; 32], &[&seed], labels::MAILBOX_KEY);
    let sealed = hex_at(case, "/sealed_item/bytes");
    assert_eq!(sealed[0], 1);
    let ad = [labels::ITEM, &g].concat();
    let item = aes_open(&item_key, &sealed[1..13], &ad, &sealed[13..]);
    assert_eq!(item, hex_at(case, "/messages/3/item"));
}
