//! Recomputes the test vectors published in `whitepaper/vectors/storage.json` and fails on any
//! difference. `ALLIUM_WRITE_VECTORS=1 cargo test -p allium-proto --test vectors` rewrites the
//! file (review the diff: a change is a protocol change).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use allium_proto::crypto;
use allium_proto::error::Status;
use allium_proto::storage::*;
use ed25519_dalek::{Signature, SigningKey, Verifier};
use serde_json::{Value, json};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../whitepaper/vectors/storage.json"
);
const TS: u64 = 1_700_000_000_000;

fn seq(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start + i as u8)
}

fn signed_vector(name: &str, body: Body, key: &SigningKey, node: &NodeId) -> Value {
    let req = Request::signed(body.clone(), key, node, TS);
    let (mailbox, namespace) = body.auth_target().unwrap();
    let digest = body.digest();
    let signed = crypto::signed_data(body.method().id(), &mailbox, namespace, TS, node, &digest);
    let sig = req.auth.as_ref().unwrap().signature;
    // The signature verifies with the plain RFC 8032 verifier as well.
    key.verifying_key()
        .verify(&signed, &Signature::from_bytes(&sig))
        .unwrap();
    let bytes = req.encode();
    let decoded = Request::decode(&bytes).unwrap();
    assert_eq!(decoded.digest, digest);
    json!({
        "name": name,
        "method": body.method().id(),
        "timestamp_ms": TS,
        "body_cbor": hex::encode(body.encode()),
        "digest": hex::encode(digest),
        "signed_data": hex::encode(signed),
        "signature": hex::encode(sig),
        "request_cbor": hex::encode(bytes),
    })
}

fn vectors() -> Value {
    let key = SigningKey::from_bytes(&seq(0));
    let node_key = SigningKey::from_bytes(&seq(32));
    let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());
    let node = NodeId::from_bytes(node_key.verifying_key().to_bytes());
    let data = b"hello allium".to_vec();
    let hash = crypto::content_hash(&mailbox, INBOX, &data);

    let store = Request::unsigned(Body::Store(StoreRequest {
        mailbox,
        namespace: INBOX,
        ttl_ms: 86_400_000,
        data: data.clone(),
    }));
    let store_resp = Response {
        now: TS,
        result: Ok(ResponseBody::Store(StoreResponse {
            hash,
            timestamp: TS,
            expiry: TS + 86_400_000,
            duplicate: false,
            holders: vec![node, NodeId::from_bytes(seq(64))],
        })),
        redirect: None,
    };
    let wrong_swarm = Response::wrong_swarm(
        TS,
        GetSwarmResponse {
            swarm_id: 0x8000_0000_0000_0000,
            members: vec![NodeId::from_bytes(seq(64)), NodeId::from_bytes(seq(96))],
        },
    );
    let retrieve = Body::Retrieve(RetrieveRequest {
        mailbox,
        namespace: INBOX,
        after: Some(CursorKey {
            timestamp: TS - 30_000,
            hash,
        }),
        limit: Some(100),
        wait_ms: Some(25_000),
    });
    let retrieve_resp = Response {
        now: TS + 1,
        result: Ok(ResponseBody::Retrieve(RetrieveResponse {
            messages: vec![StoredMessage {
                hash,
                timestamp: TS,
                expiry: TS + 86_400_000,
                data: data.clone(),
            }],
            more: false,
        })),
        redirect: None,
    };
    let delete = Body::Delete(DeleteRequest {
        mailbox,
        namespace: INBOX,
        hashes: vec![hash],
    });
    let expire = Body::Expire(ExpireRequest {
        mailbox,
        namespace: 5,
        hashes: vec![hash],
        expiry: TS + 3_600_000,
    });
    json!({
        "description": "Allium storage protocol v1 test vectors (whitepaper/storage.md). Hex strings; integers are Unix ms.",
        "mailbox_seed": hex::encode(seq(0)),
        "mailbox": hex::encode(mailbox.as_bytes()),
        "node_seed": hex::encode(seq(32)),
        "node": hex::encode(node.as_bytes()),
        "content_hash": {
            "mailbox": hex::encode(mailbox.as_bytes()),
            "namespace": INBOX,
            "data": hex::encode(&data),
            "hash": hex::encode(hash.0),
        },
        "unsigned": [
            { "name": "store to inbox", "request_cbor": hex::encode(store.encode()) },
            { "name": "info", "request_cbor": hex::encode(Request::unsigned(Body::Info).encode()) },
        ],
        "signed": [
            signed_vector("retrieve with cursor, limit and wait", retrieve, &key, &node),
            signed_vector("delete one hash", delete, &key, &node),
            signed_vector("expire in namespace 5", expire, &key, &node),
        ],
        "responses": [
            { "name": "store ok", "method": Method::Store.id(), "response_cbor": hex::encode(store_resp.encode()) },
            { "name": "retrieve one message", "method": Method::Retrieve.id(), "response_cbor": hex::encode(retrieve_resp.encode()) },
            { "name": "clock skew", "method": Method::Retrieve.id(), "response_cbor": hex::encode(Response::error(TS, Status::ClockSkew).encode()) },
            { "name": "wrong swarm", "method": Method::Store.id(), "response_cbor": hex::encode(wrong_swarm.encode()) },
        ],
        "sync": sync_vectors(mailbox, hash, &data),
    })
}

/// Anti-entropy digests and peer messages (storage §9).
fn sync_vectors(mailbox: Mailbox, hash: MessageHash, data: &[u8]) -> Value {
    use allium_proto::sync::*;
    let key = EntryKey {
        mailbox,
        namespace: INBOX,
        hash,
    };
    let live = Entry {
        key,
        state: EntryState::Live {
            expiry: TS + 86_400_000,
            set_at: TS,
        },
    };
    let tomb = Entry {
        key,
        state: EntryState::Deleted {
            until: TS + 86_400_000,
        },
    };
    let mut digests = Digests::default();
    digests.toggle(&live);
    let item = Item::Message(ItemMessage {
        mailbox,
        namespace: INBOX,
        timestamp: TS,
        expiry: TS + 86_400_000,
        set_at: TS,
        data: data.to_vec(),
    });
    let requests = [
        (
            "replicate one message",
            PeerRequest::Replicate(vec![item.clone()]),
        ),
        (
            "replicate a tombstone",
            PeerRequest::Replicate(vec![Item::Tombstone {
                key,
                until: TS + 86_400_000,
            }]),
        ),
        (
            "replicate an expiry",
            PeerRequest::Replicate(vec![Item::Expiry {
                key,
                expiry: TS + 3_600_000,
                set_at: TS + 1,
            }]),
        ),
        ("root", PeerRequest::Root),
        ("buckets", PeerRequest::Buckets),
        (
            "entries after a key",
            PeerRequest::Entries {
                bucket: mailbox.as_bytes()[0],
                after: Some(key),
                limit: 1024,
            },
        ),
        ("fetch", PeerRequest::Fetch(vec![key])),
    ];
    let responses = [
        (
            "replicated",
            PeerMethod::Replicate,
            PeerResponse::Replicated(vec![Status::Ok, Status::WrongSwarm]),
        ),
        ("root", PeerMethod::Root, PeerResponse::Root(digests.root())),
        (
            "entries",
            PeerMethod::Entries,
            PeerResponse::Entries {
                entries: vec![live, tomb],
                more: true,
            },
        ),
        (
            "fetched",
            PeerMethod::Fetch,
            PeerResponse::Fetched(vec![item]),
        ),
    ];
    for (_, r) in &requests {
        assert_eq!(&PeerRequest::decode(&r.encode()).unwrap(), r);
    }
    for (_, m, r) in &responses {
        assert_eq!(&PeerResponse::decode(&r.encode(), *m).unwrap(), r);
    }
    json!({
        "entry_live": { "expiry": TS + 86_400_000, "set_at": TS, "digest": hex::encode(live.digest()) },
        "entry_tombstone": { "digest": hex::encode(tomb.digest()) },
        "root_with_live_entry": hex::encode(digests.root()),
        "root_empty": hex::encode(Digests::default().root()),
        "peer_requests": requests.iter().map(|(n, r)| json!({ "name": n, "cbor": hex::encode(r.encode()) })).collect::<Vec<_>>(),
        "peer_responses": responses.iter().map(|(n, m, r)| json!({ "name": n, "method": *m as u8, "cbor": hex::encode(r.encode()) })).collect::<Vec<_>>(),
    })
}

#[test]
fn published_vectors_match() {
    let computed = vectors();
    if std::env::var_os("ALLIUM_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
        std::fs::write(PATH, text).unwrap();
    }
    let published: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(
        published, computed,
        "whitepaper/vectors/storage.json differs from the code"
    );
    // Every published encoding decodes and re-encodes to itself.
    for v in published["signed"]
        .as_array()
        .unwrap()
        .iter()
        .chain(published["unsigned"].as_array().unwrap())
    {
        let bytes = hex::decode(v["request_cbor"].as_str().unwrap()).unwrap();
        assert_eq!(Request::decode(&bytes).unwrap().request.encode(), bytes);
    }
    for v in published["responses"].as_array().unwrap() {
        let bytes = hex::decode(v["response_cbor"].as_str().unwrap()).unwrap();
        let m = Method::from_id(v["method"].as_u64().unwrap()).unwrap();
        assert_eq!(Response::decode(&bytes, m).unwrap().encode(), bytes);
    }
}
