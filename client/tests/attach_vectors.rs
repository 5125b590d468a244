//! Recomputes the attachment vectors (`whitepaper/vectors/attachments.json`) from the inputs
//! published in the file and fails on any difference. `ALLIUM_WRITE_VECTORS=1 cargo test -p
//! allium-client --test attach_vectors` rewrites the file (review the diff: a change is a
//! protocol change).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use allium_client::attach::chunk::{BlobKeys, CHUNK, chunk_count, leaf, root};
use allium_client::attach::file::FileRef;
use allium_client::messenger::payload::{AppMessage, Content};
use allium_proto::storage::{
    Body, Mailbox, ReadBlobRequest, ReadBlobResponse, Request, Response, ResponseBody,
    StoredMessage,
};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../whitepaper/vectors/attachments.json"
);
const TS: u64 = 1_700_000_000_000;

fn b2(data: &[u8]) -> String {
    hex::encode(Blake2b::<U32>::digest(data))
}

fn b32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn file_bytes(size: usize) -> Vec<u8> {
    (0..size).map(|j| (j % 251) as u8).collect()
}

/// Everything the vectors say, computed from `inputs`.
fn compute(inputs: &Value) -> Value {
    let key = b32(&inputs["key"]);
    let seed = b32(&inputs["mailbox_seed"]);
    let mailbox = Mailbox::from_bytes(SigningKey::from_bytes(&seed).verifying_key().to_bytes());
    let keys = BlobKeys::new(key);
    let sizes: Vec<u64> = inputs["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mut cases = Vec::new();
    let mut last_root = [0u8; 32];
    let mut chunk0 = Vec::new();
    for &size in &sizes {
        let file = file_bytes(size as usize);
        let n = chunk_count(size);
        let mut chunks = Vec::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let start = i as usize * CHUNK;
            let end = (start + CHUNK).min(file.len());
            let data = keys.seal(i, n, &file[start.min(end)..end]).unwrap();
            // What is sealed opens to the file's bytes.
            assert_eq!(
                &*keys.open(i, n, size, &data).unwrap(),
                &file[start.min(end)..end]
            );
            leaves.push(leaf(&data));
            chunks.push(json!({
                "index": i,
                "address": hex::encode(keys.address(&mailbox, i).0),
                "leaf": hex::encode(leaf(&data)),
                "data_len": data.len(),
                "data_head": hex::encode(&data[..32]),
                "data_tail": hex::encode(&data[data.len() - 32..]),
                "data_blake2b": b2(&data),
            }));
            if i == 0 {
                chunk0 = data;
            }
        }
        last_root = root(size, &leaves);
        cases.push(json!({
            "size": size,
            "n": n,
            "chunks": chunks,
            "root": hex::encode(last_root),
        }));
    }
    let m = &inputs["message"];
    let file = FileRef {
        mailbox,
        key: Zeroizing::new(key),
        root: last_root,
        size: *sizes.last().unwrap(),
        expiry: m["expiry"].as_u64().unwrap(),
        name: m["name"].as_str().unwrap().to_owned(),
        media: m["media"].as_str().unwrap().to_owned(),
    };
    let body = file.encode();
    assert_eq!(FileRef::decode(&body).unwrap(), file);
    let mut msg_id = [0u8; 16];
    hex::decode_to_slice(m["msg_id"].as_str().unwrap(), &mut msg_id).unwrap();
    let app = AppMessage {
        msg_id,
        sent_ms: m["sent_ms"].as_u64().unwrap(),
        content: Content::File(file.clone()),
    }
    .encode();
    let request = Request::unsigned(Body::ReadBlob(ReadBlobRequest {
        mailbox,
        hash: keys.address(&mailbox, 0),
    }))
    .encode();
    let response = Response::ok(
        TS,
        ResponseBody::ReadBlob(ReadBlobResponse {
            message: Some(StoredMessage {
                hash: keys.address(&mailbox, 0),
                timestamp: TS,
                expiry: TS + 14 * 86_400_000,
                data: chunk0,
            }),
        }),
    )
    .encode();
    json!({
        "inputs": inputs,
        "mailbox": hex::encode(mailbox.as_bytes()),
        "blob_id": hex::encode(keys.blob_id),
        "chunk_key": hex::encode(keys.chunk_key()),
        "cases": cases,
        "message": {
            "body": hex::encode(&body),
            "app_message": hex::encode(&app),
        },
        "read_blob": {
            "request_cbor": hex::encode(&request),
            "response_len": response.len(),
            "response_head": hex::encode(&response[..64]),
            "response_blake2b": b2(&response),
        },
    })
}

fn default_inputs() -> Value {
    json!({
        "key": hex::encode((0x40u8..0x60).collect::<Vec<_>>()),
        "mailbox_seed": hex::encode((0u8..32).collect::<Vec<_>>()),
        "file": "byte j of a file of size s is j mod 251",
        "sizes": [0, 1, CHUNK, CHUNK + 1],
        "message": {
            "name": "report ✓.pdf",
            "media": "application/pdf",
            "expiry": TS,
            "msg_id": hex::encode([0x77u8; 16]),
            "sent_ms": TS,
        },
    })
}

#[test]
fn vectors_match() {
    if std::env::var_os("ALLIUM_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&compute(&default_inputs())).unwrap() + "\n";
        std::fs::write(PATH, text).unwrap();
    }
    let published: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(
        compute(&published["inputs"]),
        published,
        "whitepaper/vectors/attachments.json is not what its inputs give"
    );
    // The published file is the one this code writes.
    assert_eq!(published["inputs"], default_inputs());
}
