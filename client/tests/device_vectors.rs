//! Recomputes the published device vectors (`whitepaper/vectors/devices.json`) from their
//! inputs, and checks the linking keys, the SAS, the sync key, a sync record and a device list
//! against the primitives directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/device_vectors/script.rs"]
mod script;

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use allium_client::devices::labels;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn path() -> String {
    format!(
        "{}/../whitepaper/vectors/devices.json",
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

fn text(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).and_then(Value::as_str).unwrap().to_owned()
}

fn inputs(case: &Value) -> script::Inputs {
    let devices = case["inputs"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                arr(d, "/signing_seed"),
                arr(d, "/identity_secret"),
                num(d, "/device_id") as u32,
                num(d, "/created_at"),
            )
        })
        .collect();
    script::Inputs {
        account_seed: arr(case, "/inputs/account_seed"),
        devices,
        list_version: num(case, "/inputs/list_version"),
        now: num(case, "/inputs/now"),
        new_device_rng_seed: arr(case, "/inputs/new_device_rng_seed"),
        primary_rng_seed: arr(case, "/inputs/primary_rng_seed"),
        device_name: text(case, "/inputs/device_name"),
        peer: arr(case, "/inputs/peer"),
        msg_id: arr(case, "/inputs/msg_id"),
        text: text(case, "/inputs/text"),
        record_r: arr(case, "/inputs/record_r"),
    }
}

fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .unwrap();
    out
}

fn base(secret: [u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

#[test]
fn published_vectors_are_reproduced() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let computed = script::run(&inputs(case)).unwrap();
        assert!(
            computed == *case,
            "the published vector differs from a recomputation"
        );
        check_primitives(case);
    }
}

fn check_primitives(case: &Value) {
    // The device list: account key, version, time, certificates, the account's signature.
    let account: [u8; 32] = arr(case, "/account_public");
    let list = hex_at(case, "/device_list/after");
    assert_eq!(list[0], 1);
    assert_eq!(list[1..33], account);
    assert_eq!(
        u64::from_be_bytes(list[33..41].try_into().unwrap()),
        num(case, "/inputs/list_version") + 1
    );
    assert_eq!(usize::from(list[49]), 3);
    let (signed, sig) = list.split_at(list.len() - 64);
    VerifyingKey::from_bytes(&account)
        .unwrap()
        .verify_strict(
            &[labels::DEVICE_LIST, signed].concat(),
            &Signature::from_bytes(&sig.try_into().unwrap()),
        )
        .unwrap();
    assert_eq!(
        hex_at(case, "/device_list/record"),
        [&[2u8], &list[..]].concat()
    );

    // The container: 0x03 || n || (u16be(len) || envelope)*.
    let envs: Vec<Vec<u8>> = (0..3)
        .map(|i| hex_at(case, &format!("/container/envelopes/{i}")))
        .collect();
    let mut want = vec![3u8, 3];
    for e in &envs {
        want.extend_from_slice(&(e.len() as u16).to_be_bytes());
        want.extend_from_slice(e);
    }
    assert_eq!(hex_at(case, "/container/items/0"), want);

    // A sent copy: the message's header with kind 2, then peer, kind 1, text.
    let text_msg = hex_at(case, "/messages/text");
    let copy = hex_at(case, "/messages/sent_copy");
    assert_eq!(copy[0], 1);
    assert_eq!(copy[1], 2);
    assert_eq!(copy[2..26], text_msg[2..26]);
    assert_eq!(copy[26..58], arr::<32>(case, "/inputs/peer"));
    assert_eq!(copy[58], 1);
    assert_eq!(copy[59..], text_msg[26..]);

    // Linking: the code, the hello, the transcript, the shared secret, keys and SAS.
    let t_n = arr::<32>(case, "/link/new_device_rng_draws/0");
    let e_n = arr::<32>(case, "/link/new_device_rng_draws/1");
    let t_p = arr::<32>(case, "/link/primary_rng_draws/0");
    let e_p = arr::<32>(case, "/link/primary_rng_draws/1");
    let pub_ed = |s: [u8; 32]| {
        ed25519_dalek::SigningKey::from_bytes(&s)
            .verifying_key()
            .to_bytes()
    };
    let code_bytes = [&[1u8][..], &pub_ed(t_n), &base(e_n)].concat();
    let hrp = bech32::Hrp::parse("alliumlink").unwrap();
    assert_eq!(
        bech32::encode::<bech32::Bech32m>(hrp, &code_bytes).unwrap(),
        text(case, "/link/code")
    );
    let hello = hex_at(case, "/link/hello");
    assert_eq!(hello, [&[1u8, 1][..], &pub_ed(t_p), &base(e_p)].concat());
    let th: [u8; 32] = Sha256::new()
        .chain_update(labels::LINK_TRANSCRIPT)
        .chain_update(pub_ed(t_n))
        .chain_update(base(e_n))
        .chain_update(pub_ed(t_p))
        .chain_update(base(e_p))
        .finalize()
        .into();
    assert_eq!(th, arr::<32>(case, "/link/transcript_hash"));
    let ss = x25519_dalek::x25519(e_n, base(e_p));
    assert_eq!(ss, x25519_dalek::x25519(e_p, base(e_n)));
    let sas = u64::from_be_bytes(hkdf::<8>(&th, &ss, labels::LINK_SAS)) % 1_000_000;
    assert_eq!(
        format!("{:03} {:03}", sas / 1000, sas % 1000),
        text(case, "/link/sas")
    );
    let open = |key: [u8; 32], msg: &[u8]| {
        let (head, ct) = msg.split_at(6);
        let mut nonce = [0u8; 12];
        nonce[8..].copy_from_slice(&head[2..6]);
        Aes256Gcm::new_from_slice(&key)
            .unwrap()
            .decrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: ct,
                    aad: &[labels::LINK_MESSAGE, head].concat(),
                },
            )
            .unwrap()
    };
    let k_np = hkdf::<32>(&th, &ss, labels::LINK_NEW_TO_PRIMARY);
    let k_pn = hkdf::<32>(&th, &ss, labels::LINK_PRIMARY_TO_NEW);
    let keys = hex_at(case, "/link/keys");
    assert_eq!(keys[..6], [1, 2, 0, 0, 0, 0]);
    let body = open(k_np, &keys);
    let (signing, identity, ..) = inputs(case).devices[2];
    assert_eq!(body[..32], pub_ed(signing));
    assert_eq!(body[32..64], base(identity));
    assert_eq!(body[64..], [&[6u8][..], b"laptop"].concat());
    let welcome = hex_at(case, "/link/from_primary/0");
    assert_eq!(welcome[..6], [1, 3, 0, 0, 0, 0]);
    let body = open(k_pn, &welcome);
    assert_eq!(body[..173], hex_at(case, "/certs/2"));
    assert_eq!(body[173..205], arr::<32>(case, "/sync/sync_key"));
    assert_eq!(
        u32::from_be_bytes(body[body.len() - 4..].try_into().unwrap()),
        1
    );
    let chunk = hex_at(case, "/link/from_primary/1");
    assert_eq!(chunk[..6], [1, 4, 0, 0, 0, 1]);
    assert_eq!(open(k_pn, &chunk), hex_at(case, "/link/history_chunks/0"));

    // The sync key, and a record opened with it.
    let seed = arr::<32>(case, "/inputs/account_seed");
    let sync_key = hkdf::<32>(&[0u8; 32], &seed, labels::SYNC_KEY);
    assert_eq!(sync_key, arr::<32>(case, "/sync/sync_key"));
    let record = hex_at(case, "/sync/record");
    let r = &record[1..33];
    assert_eq!(r, arr::<32>(case, "/inputs/record_r"));
    let okm = hkdf::<44>(r, &sync_key, labels::SYNC_RECORD);
    let p = Aes256Gcm::new_from_slice(&okm[..32])
        .unwrap()
        .decrypt(
            Nonce::from_slice(&okm[32..]),
            aes_gcm::aead::Payload {
                msg: &record[33..],
                aad: &[labels::SYNC_RECORD, &[1u8]].concat(),
            },
        )
        .unwrap();
    assert_eq!(p.len() % 256, 0);
    assert_eq!(p[..3], [0, 0, 2]);
    assert_eq!(p[3], 1);
    assert_eq!(p[4..36], arr::<32>(case, "/inputs/peer"));
}
