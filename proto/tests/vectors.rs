//! Recomputes the test vectors published in `whitepaper/vectors/storage.json` and fails on any
//! difference. `ALLIUM_WRITE_VECTORS=1 cargo test -p allium-proto --test vectors` rewrites the
//! file (review the diff: a change is a protocol change).
//!
//! Every case gives the value it encodes as JSON next to the encoding (field names as in the
//! whitepaper's schema). The test rebuilds each case from the inputs published in the file, so an
//! encoding is checked against the values given beside it, not only against this file's code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use allium_proto::crypto;
use allium_proto::error::Status;
use allium_proto::storage::*;
use allium_proto::sync::*;
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

// ---- Reading the JSON inputs ----

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(
        v.as_str()
            .unwrap_or_else(|| panic!("hex string expected: {v}")),
    )
    .unwrap()
}

fn b32(v: &Value) -> [u8; 32] {
    bytes(v).try_into().unwrap()
}

fn uint(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("unsigned integer expected: {v}"))
}

fn u16_of(v: &Value) -> u16 {
    u16::try_from(uint(v)).unwrap()
}

fn opt<T>(v: &Value, key: &str, f: impl Fn(&Value) -> T) -> Option<T> {
    v.get(key).map(f)
}

fn list<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<T> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn mailbox(v: &Value) -> Mailbox {
    Mailbox::from_bytes(b32(&v["mailbox"]))
}

fn namespace(v: &Value) -> Namespace {
    u16_of(&v["namespace"])
}

fn hash(v: &Value) -> MessageHash {
    MessageHash(b32(v))
}

fn node(v: &Value) -> NodeId {
    NodeId::from_bytes(b32(v))
}

fn status(v: &Value) -> Status {
    Status::from_code(uint(v)).unwrap()
}

/// A request body: `{"method": id, "body": {fields of that method's body map}}`.
fn body_of(v: &Value) -> Body {
    let b = &v["body"];
    match Method::from_id(uint(&v["method"])).unwrap() {
        Method::Store => Body::Store(StoreRequest {
            mailbox: mailbox(b),
            namespace: namespace(b),
            ttl_ms: uint(&b["ttl_ms"]),
            data: bytes(&b["data"]),
            token: opt(b, "token", |t| DeliveryToken(b32(t))),
        }),
        Method::Retrieve => Body::Retrieve(RetrieveRequest {
            mailbox: mailbox(b),
            namespace: namespace(b),
            after: opt(b, "after", |c| CursorKey {
                timestamp: uint(&c["timestamp"]),
                hash: hash(&c["hash"]),
            }),
            limit: opt(b, "limit", u16_of),
            wait_ms: opt(b, "wait_ms", uint),
        }),
        Method::Delete => Body::Delete(DeleteRequest {
            mailbox: mailbox(b),
            namespace: namespace(b),
            hashes: list(&b["hashes"], hash),
        }),
        Method::DeleteAll => Body::DeleteAll(DeleteAllRequest {
            mailbox: mailbox(b),
            namespace: namespace(b),
        }),
        Method::Expire => Body::Expire(ExpireRequest {
            mailbox: mailbox(b),
            namespace: namespace(b),
            hashes: list(&b["hashes"], hash),
            expiry: uint(&b["expiry"]),
        }),
        Method::Info => Body::Info,
        Method::GetSwarm => Body::GetSwarm(GetSwarmRequest {
            mailbox: mailbox(b),
        }),
        Method::Roster => Body::Roster(RosterRequest {
            known_version: opt(b, "known_version", uint),
        }),
        Method::Usage => Body::Usage(UsageRequest {
            mailbox: mailbox(b),
            namespace: namespace(b),
        }),
        Method::ReadBlob => Body::ReadBlob(ReadBlobRequest {
            mailbox: mailbox(b),
            hash: hash(&b["hash"]),
        }),
        Method::RosterPage => Body::RosterPage(RosterPageRequest {
            page: u32::try_from(uint(&b["page"])).unwrap(),
            of: match (opt(b, "version", uint), opt(b, "newer_than", uint)) {
                (None, None) => PageOf::Held,
                (Some(v), None) => PageOf::Version(v),
                (None, Some(v)) => PageOf::NewerThan(v),
                (Some(_), Some(_)) => panic!("two roster page conditions"),
            },
        }),
    }
}

fn swarm_of(v: &Value) -> GetSwarmResponse {
    GetSwarmResponse {
        swarm_id: uint(&v["swarm_id"]),
        members: list(&v["members"], node),
    }
}

/// A response: `{"now", "status", "result"?, "swarm"?}`; the result is read with the schema of
/// `method`.
fn response_of(method: Method, v: &Value) -> Response {
    let status = status(&v["status"]);
    let result = match status {
        Status::Ok => {
            let r = &v["result"];
            Ok(match method {
                Method::Store => ResponseBody::Store(StoreResponse {
                    hash: hash(&r["hash"]),
                    timestamp: uint(&r["timestamp"]),
                    expiry: uint(&r["expiry"]),
                    duplicate: r["duplicate"].as_bool().unwrap(),
                    holders: list(&r["holders"], node),
                }),
                Method::Retrieve => ResponseBody::Retrieve(RetrieveResponse {
                    messages: list(&r["messages"], |m| StoredMessage {
                        hash: hash(&m["hash"]),
                        timestamp: uint(&m["timestamp"]),
                        expiry: uint(&m["expiry"]),
                        data: bytes(&m["data"]),
                    }),
                    more: r["more"].as_bool().unwrap(),
                }),
                Method::Delete => ResponseBody::Delete(DeleteResponse {
                    deleted: list(&r["deleted"], hash),
                }),
                Method::DeleteAll => ResponseBody::DeleteAll(DeleteAllResponse {
                    count: uint(&r["count"]),
                }),
                Method::Expire => ResponseBody::Expire(ExpireResponse {
                    updated: list(&r["updated"], |u| (hash(&u["hash"]), uint(&u["expiry"]))),
                }),
                Method::Info => ResponseBody::Info(InfoResponse {
                    protocol: uint(&r["protocol"]),
                    software: r["software"].as_str().unwrap().to_string(),
                }),
                Method::GetSwarm => ResponseBody::GetSwarm(swarm_of(r)),
                Method::Roster => ResponseBody::Roster(RosterResponse {
                    version: uint(&r["version"]),
                    roster: opt(r, "roster", bytes),
                }),
                Method::Usage => ResponseBody::Usage(UsageResponse {
                    bytes: uint(&r["bytes"]),
                    count: uint(&r["count"]),
                    max_bytes: uint(&r["max_bytes"]),
                    max_count: opt(r, "max_count", uint),
                    mailbox_bytes: uint(&r["mailbox_bytes"]),
                    mailbox_count: uint(&r["mailbox_count"]),
                    mailbox_max_bytes: uint(&r["mailbox_max_bytes"]),
                }),
                Method::ReadBlob => ResponseBody::ReadBlob(ReadBlobResponse {
                    message: opt(r, "message", |m| StoredMessage {
                        hash: hash(&m["hash"]),
                        timestamp: uint(&m["timestamp"]),
                        expiry: uint(&m["expiry"]),
                        data: bytes(&m["data"]),
                    }),
                }),
                Method::RosterPage => ResponseBody::RosterPage(RosterPageResponse {
                    version: uint(&r["version"]),
                    total: uint(&r["total"]),
                    page: u32::try_from(uint(&r["page"])).unwrap(),
                    bytes: opt(r, "bytes", bytes),
                }),
            })
        }
        s => Err(s),
    };
    Response {
        now: uint(&v["now"]),
        result,
        redirect: opt(v, "swarm", swarm_of),
    }
}

/// An entry key: `{"mailbox", "namespace", "hash"}`.
fn key_of(v: &Value) -> EntryKey {
    EntryKey {
        mailbox: mailbox(v),
        namespace: namespace(v),
        hash: hash(&v["hash"]),
    }
}

/// An entry: `{"key", "expiry", "set_at"}` (live) or `{"key", "until"}` (deleted).
fn entry_of(v: &Value) -> Entry {
    let state = match v.get("until") {
        Some(u) => EntryState::Deleted { until: uint(u) },
        None => EntryState::Live {
            expiry: uint(&v["expiry"]),
            set_at: uint(&v["set_at"]),
        },
    };
    Entry {
        key: key_of(&v["key"]),
        state,
    }
}

/// An item: `{"kind": "message" | "tombstone" | "expiry", …}`.
fn item_of(v: &Value) -> Item {
    match v["kind"].as_str().unwrap() {
        "message" => Item::Message(ItemMessage {
            mailbox: mailbox(v),
            namespace: namespace(v),
            timestamp: uint(&v["timestamp"]),
            expiry: uint(&v["expiry"]),
            set_at: uint(&v["set_at"]),
            data: bytes(&v["data"]),
        }),
        "tombstone" => Item::Tombstone {
            key: key_of(&v["key"]),
            until: uint(&v["until"]),
        },
        "expiry" => Item::Expiry {
            key: key_of(&v["key"]),
            expiry: uint(&v["expiry"]),
            set_at: uint(&v["set_at"]),
        },
        k => panic!("unknown item kind {k}"),
    }
}

fn peer_method(id: u64) -> PeerMethod {
    [
        PeerMethod::Replicate,
        PeerMethod::Root,
        PeerMethod::Buckets,
        PeerMethod::Entries,
        PeerMethod::Fetch,
    ]
    .into_iter()
    .find(|m| *m as u64 == id)
    .unwrap()
}

/// A peer request: `{"method": id, …}`.
fn peer_request_of(v: &Value) -> PeerRequest {
    match peer_method(uint(&v["method"])) {
        PeerMethod::Replicate => PeerRequest::Replicate(list(&v["items"], item_of)),
        PeerMethod::Root => PeerRequest::Root,
        PeerMethod::Buckets => PeerRequest::Buckets,
        PeerMethod::Entries => PeerRequest::Entries {
            bucket: u8::try_from(uint(&v["bucket"])).unwrap(),
            after: opt(v, "after", key_of),
            limit: u16_of(&v["limit"]),
        },
        PeerMethod::Fetch => PeerRequest::Fetch(list(&v["keys"], key_of)),
    }
}

/// A peer answer to a request of `method`.
fn peer_response_of(method: PeerMethod, v: &Value) -> PeerResponse {
    match method {
        PeerMethod::Replicate => PeerResponse::Replicated(list(&v["statuses"], status)),
        PeerMethod::Root => PeerResponse::Root {
            root: b32(&v["root"]),
            now: uint(&v["now"]),
        },
        PeerMethod::Buckets => {
            PeerResponse::Buckets(list(&v["buckets"], |b| bytes(b).try_into().unwrap()))
        }
        PeerMethod::Entries => PeerResponse::Entries {
            entries: list(&v["entries"], entry_of),
            more: v["more"].as_bool().unwrap(),
        },
        PeerMethod::Fetch => PeerResponse::Fetched(list(&v["items"], item_of)),
    }
}

// ---- Cases: each is built from its inputs alone, so the test can rebuild it from the file ----

fn content_hash_case(input: &Value) -> Value {
    let h = crypto::content_hash(&mailbox(input), namespace(input), &bytes(&input["data"]));
    json!({
        "mailbox": input["mailbox"],
        "namespace": input["namespace"],
        "data": input["data"],
        "hash": hex::encode(h.0),
    })
}

/// A delivery token's verifier and the content hash of the record that holds it (§4.5).
fn token_case(input: &Value) -> Value {
    let mb = mailbox(input);
    let token = b32(&input["token"]);
    let verifier = crypto::token_verifier(&mb, &token);
    let record = crypto::token_record_hash(&mb, &token);
    assert_eq!(record, crypto::content_hash(&mb, TOKENS, &verifier));
    json!({
        "mailbox": input["mailbox"],
        "token": input["token"],
        "verifier": hex::encode(verifier),
        "record_hash": hex::encode(record.0),
    })
}

fn unsigned_case(name: &Value, request: &Value) -> Value {
    let req = Request::unsigned(body_of(request));
    let bytes = req.encode();
    assert_eq!(Request::decode(&bytes).unwrap().request, req);
    json!({ "name": name, "request": request, "request_cbor": hex::encode(bytes) })
}

/// A signed request: `key` signs for the node `node` at `timestamp_ms`.
fn signed_case(
    name: &Value,
    request: &Value,
    timestamp: u64,
    key: &SigningKey,
    node: &NodeId,
) -> Value {
    let body = body_of(request);
    let req = Request::signed(body.clone(), key, node, timestamp);
    let (mailbox, namespace) = body.auth_target().unwrap();
    let digest = body.digest();
    let signed = crypto::signed_data(
        body.method().id(),
        &mailbox,
        namespace,
        timestamp,
        node,
        &digest,
    );
    let sig = req.auth.as_ref().unwrap().signature;
    // The signature verifies with the plain RFC 8032 verifier as well.
    key.verifying_key()
        .verify(&signed, &Signature::from_bytes(&sig))
        .unwrap();
    let bytes = req.encode();
    let decoded = Request::decode(&bytes).unwrap();
    assert_eq!(decoded.digest, digest);
    assert_eq!(decoded.request, req);
    json!({
        "name": name,
        "request": request,
        "timestamp_ms": timestamp,
        "body_cbor": hex::encode(body.encode()),
        "digest": hex::encode(digest),
        "signed_data": hex::encode(signed),
        "signature": hex::encode(sig),
        "request_cbor": hex::encode(bytes),
    })
}

/// A request signed by a delegate `key` (storage.md §3.1): the signature is over the same
/// signed data, and `auth` names the signer.
fn delegated_case(
    name: &Value,
    request: &Value,
    timestamp: u64,
    key: &SigningKey,
    node: &NodeId,
) -> Value {
    let body = body_of(request);
    let req = Request::signed_by_delegate(body.clone(), key, node, timestamp);
    let (mailbox, namespace) = body.auth_target().unwrap();
    let digest = body.digest();
    let signed = crypto::signed_data(
        body.method().id(),
        &mailbox,
        namespace,
        timestamp,
        node,
        &digest,
    );
    let auth = req.auth.as_ref().unwrap();
    let signer = key.verifying_key().to_bytes();
    assert_eq!(auth.signer, Some(signer));
    key.verifying_key()
        .verify(&signed, &Signature::from_bytes(&auth.signature))
        .unwrap();
    let bytes = req.encode();
    let decoded = Request::decode(&bytes).unwrap();
    assert_eq!(decoded.request, req);
    let record = crypto::content_hash(&mailbox, DEVICES, &signer);
    assert_eq!(record, crypto::delegation_hash(&mailbox, &signer));
    json!({
        "name": name,
        "request": request,
        "timestamp_ms": timestamp,
        "signer": hex::encode(signer),
        "delegation_record_hash": hex::encode(record.0),
        "signed_data": hex::encode(signed),
        "signature": hex::encode(auth.signature),
        "request_cbor": hex::encode(bytes),
    })
}

fn response_case(name: &Value, method: &Value, response: &Value) -> Value {
    let m = Method::from_id(uint(method)).unwrap();
    let r = response_of(m, response);
    let bytes = r.encode();
    assert_eq!(Response::decode(&bytes, m).unwrap(), r);
    json!({ "name": name, "method": method, "response": response, "response_cbor": hex::encode(bytes) })
}

fn peer_request_case(name: &Value, request: &Value) -> Value {
    let r = peer_request_of(request);
    let bytes = r.encode();
    assert_eq!(PeerRequest::decode(&bytes).unwrap(), r);
    json!({ "name": name, "request": request, "cbor": hex::encode(bytes) })
}

fn peer_response_case(name: &Value, method: &Value, response: &Value) -> Value {
    let m = peer_method(uint(method));
    let r = peer_response_of(m, response);
    let bytes = r.encode();
    assert_eq!(PeerResponse::decode(&bytes, m).unwrap(), r);
    json!({ "name": name, "method": method, "response": response, "cbor": hex::encode(bytes) })
}

fn entry_case(entry: &Value) -> Value {
    let mut out = entry.clone();
    out["digest"] = json!(hex::encode(entry_of(entry).digest()));
    out
}

/// The root of digests holding exactly `entries`.
fn root_case(entries: &Value) -> Value {
    let mut digests = Digests::default();
    for e in entries.as_array().unwrap() {
        digests.toggle(&entry_of(e));
    }
    json!({ "entries": entries, "root": hex::encode(digests.root()) })
}

/// A refusal or acceptance at the nesting limit: the bytes are the input; `value` is what they
/// decode to when accepted.
fn depth_case(name: &str, method: Method, bytes: &[u8], value: Option<&Value>) -> Value {
    let decoded = Response::decode(bytes, method);
    match value {
        Some(v) => {
            assert_eq!(decoded.unwrap(), response_of(method, v));
            json!({ "name": name, "method": method.id(), "response_cbor": hex::encode(bytes),
                    "accepted": true, "response": v })
        }
        None => {
            let e = decoded.unwrap_err();
            json!({ "name": name, "method": method.id(), "response_cbor": hex::encode(bytes),
                    "accepted": false, "status": Status::from(e).code() })
        }
    }
}

// ---- The file ----

fn cases(pairs: &[(&str, Value)], f: impl Fn(&Value, &Value) -> Value) -> Vec<Value> {
    pairs.iter().map(|(n, v)| f(&json!(n), v)).collect()
}

fn vectors() -> Value {
    let key = SigningKey::from_bytes(&seq(0));
    let node_key = SigningKey::from_bytes(&seq(32));
    let mb = hex::encode(key.verifying_key().to_bytes());
    let node_id = NodeId::from_bytes(node_key.verifying_key().to_bytes());
    let node = hex::encode(node_id.as_bytes());
    let data = hex::encode(b"hello allium");
    let content = content_hash_case(&json!({ "mailbox": mb, "namespace": INBOX, "data": data }));
    let h = content["hash"].clone();
    let other = hex::encode(seq(64));
    let third = hex::encode(seq(96));
    let day = 86_400_000u64;
    let key_json = json!({ "mailbox": mb, "namespace": INBOX, "hash": h });
    let token = hex::encode(seq(160));
    let token_case = token_case(&json!({ "mailbox": mb, "token": token }));

    let unsigned = [
        (
            "store to inbox",
            json!({ "method": 1, "body": { "mailbox": mb, "namespace": INBOX, "ttl_ms": day, "data": data } }),
        ),
        (
            "retrieve from the public namespace",
            json!({ "method": 2, "body": { "mailbox": mb, "namespace": 2, "wait_ms": 10_000 } }),
        ),
        (
            "store to the inbox with a delivery token",
            json!({ "method": 1, "body": { "mailbox": mb, "namespace": INBOX, "ttl_ms": day, "data": data, "token": token } }),
        ),
        (
            "store to the requests namespace",
            json!({ "method": 1, "body": { "mailbox": mb, "namespace": REQUESTS, "ttl_ms": day, "data": data } }),
        ),
        ("info", json!({ "method": 6, "body": {} })),
        (
            "get_swarm",
            json!({ "method": 7, "body": { "mailbox": mb } }),
        ),
        ("roster, none held", json!({ "method": 8, "body": {} })),
        (
            "roster, version 41 held",
            json!({ "method": 8, "body": { "known_version": 41 } }),
        ),
        (
            "read_blob",
            json!({ "method": 9, "body": { "mailbox": mb, "hash": other } }),
        ),
        (
            "roster_page, first page if newer than version 41",
            json!({ "method": 11, "body": { "page": 0, "newer_than": 41 } }),
        ),
        (
            "roster_page, page 2 of version 42",
            json!({ "method": 11, "body": { "page": 2, "version": 42 } }),
        ),
        (
            "roster_page, page 0 of the roster held",
            json!({ "method": 11, "body": { "page": 0 } }),
        ),
    ];
    let signed = [
        (
            "retrieve with cursor, limit and wait",
            json!({ "method": 2, "body": {
                "mailbox": mb, "namespace": INBOX,
                "after": { "timestamp": TS - 30_000, "hash": h },
                "limit": 100, "wait_ms": 25_000 } }),
        ),
        (
            "retrieve from the start",
            json!({ "method": 2, "body": { "mailbox": mb, "namespace": INBOX } }),
        ),
        (
            "delete one hash",
            json!({ "method": 3, "body": { "mailbox": mb, "namespace": INBOX, "hashes": [h] } }),
        ),
        (
            "delete_all in namespace 5",
            json!({ "method": 4, "body": { "mailbox": mb, "namespace": 5 } }),
        ),
        (
            "expire in namespace 5",
            json!({ "method": 5, "body": {
                "mailbox": mb, "namespace": 5, "hashes": [h], "expiry": TS + 3_600_000 } }),
        ),
        (
            "store to the public namespace",
            json!({ "method": 1, "body": { "mailbox": mb, "namespace": 2, "ttl_ms": day, "data": data } }),
        ),
        (
            "store to namespace 7",
            json!({ "method": 1, "body": { "mailbox": mb, "namespace": 7, "ttl_ms": day, "data": data } }),
        ),
        (
            "register a delivery-token verifier",
            json!({ "method": 1, "body": { "mailbox": mb, "namespace": TOKENS, "ttl_ms": day, "data": token_case["verifier"] } }),
        ),
        (
            "usage of the requests namespace",
            json!({ "method": 10, "body": { "mailbox": mb, "namespace": REQUESTS } }),
        ),
    ];
    let delegate = SigningKey::from_bytes(&seq(128));
    let delegated = [
        (
            "retrieve from the inbox, signed by a delegate",
            json!({ "method": 2, "body": { "mailbox": mb, "namespace": INBOX, "wait_ms": 25_000 } }),
        ),
        (
            "store to the owner namespace, signed by a delegate",
            json!({ "method": 1, "body": { "mailbox": mb, "namespace": OWNER, "ttl_ms": day, "data": data } }),
        ),
    ];
    let message = json!({ "hash": h, "timestamp": TS, "expiry": TS + day, "data": data });
    let swarm = json!({ "swarm_id": 0x8000_0000_0000_0000u64, "members": [other, third] });
    let responses = [
        (
            "store ok",
            1,
            json!({ "now": TS, "status": 0, "result": {
                "hash": h, "timestamp": TS, "expiry": TS + day, "duplicate": false,
                "holders": [node, other] } }),
        ),
        (
            "retrieve one message",
            2,
            json!({ "now": TS + 1, "status": 0, "result": { "messages": [message], "more": false } }),
        ),
        (
            "delete one",
            3,
            json!({ "now": TS, "status": 0, "result": { "deleted": [h] } }),
        ),
        (
            "delete_all",
            4,
            json!({ "now": TS, "status": 0, "result": { "count": 3 } }),
        ),
        (
            "expire one",
            5,
            json!({ "now": TS, "status": 0, "result": {
                "updated": [{ "hash": h, "expiry": TS + 3_600_000 }] } }),
        ),
        (
            "info",
            6,
            json!({ "now": TS, "status": 0, "result": { "protocol": 1, "software": "allium-node 0.1.0" } }),
        ),
        (
            "get_swarm",
            7,
            json!({ "now": TS, "status": 0, "result": swarm }),
        ),
        (
            "roster, newer",
            8,
            json!({ "now": TS, "status": 0, "result": { "version": 42, "roster": hex::encode(b"roster bytes") } }),
        ),
        (
            "roster, not newer",
            8,
            json!({ "now": TS, "status": 0, "result": { "version": 41 } }),
        ),
        (
            "usage of the requests namespace",
            10,
            json!({ "now": TS, "status": 0, "result": {
                "bytes": 4_224, "count": 2, "max_bytes": 1_048_576, "max_count": 64,
                "mailbox_bytes": 9_000, "mailbox_count": 5, "mailbox_max_bytes": 16_777_216 } }),
        ),
        (
            "usage of the inbox",
            10,
            json!({ "now": TS, "status": 0, "result": {
                "bytes": 4_776, "count": 3, "max_bytes": 16_777_216,
                "mailbox_bytes": 9_000, "mailbox_count": 5, "mailbox_max_bytes": 16_777_216 } }),
        ),
        ("token refused", 1, json!({ "now": TS, "status": 19 })),
        (
            "read_blob, held",
            9,
            json!({ "now": TS, "status": 0, "result": { "message": {
                "hash": other, "timestamp": TS, "expiry": TS + day, "data": hex::encode([7u8; 40]) } } }),
        ),
        (
            "read_blob, not held",
            9,
            json!({ "now": TS, "status": 0, "result": {} }),
        ),
        (
            "roster_page, last page of a 3-page roster",
            11,
            json!({ "now": TS, "status": 0, "result": {
                "version": 42, "total": 2 * ROSTER_PAGE_BYTES + 5, "page": 2,
                "bytes": hex::encode(b"tail!") } }),
        ),
        (
            "roster_page, not modified or another version",
            11,
            json!({ "now": TS, "status": 0, "result": {
                "version": 42, "total": 2 * ROSTER_PAGE_BYTES + 5, "page": 0 } }),
        ),
        (
            "roster_page, no roster held yet",
            11,
            json!({ "now": TS, "status": 12 }),
        ),
        ("clock skew", 2, json!({ "now": TS, "status": 6 })),
        (
            "wrong swarm",
            1,
            json!({ "now": TS, "status": 15, "swarm": swarm }),
        ),
    ];

    // Nesting (storage §2 rule 6): an `expire` answer reaches depth 4; one more array is depth 5.
    let expire_ok = &responses[4].2;
    let at_limit = response_of(Method::Expire, expire_ok).encode();
    let pair_at = at_limit.len() - (1 + 2 + 32 + 9); // the pair: 0x82, hash (34 bytes), u64 (9)
    let mut over = at_limit[..pair_at].to_vec();
    over.push(0x81);
    over.extend_from_slice(&at_limit[pair_at..]);

    let live = json!({ "key": key_json, "expiry": TS + day, "set_at": TS });
    let tomb = json!({ "key": key_json, "until": TS + day });
    let item = json!({ "kind": "message", "mailbox": mb, "namespace": INBOX,
                       "timestamp": TS, "expiry": TS + day, "set_at": TS, "data": data });
    let root = root_case(&json!([live]));
    let peer_requests = [
        (
            "replicate one message",
            json!({ "method": 1, "items": [item] }),
        ),
        (
            "replicate a tombstone",
            json!({ "method": 1, "items": [{ "kind": "tombstone", "key": key_json, "until": TS + day }] }),
        ),
        (
            "replicate an expiry",
            json!({ "method": 1, "items": [{ "kind": "expiry", "key": key_json,
                                             "expiry": TS + 3_600_000, "set_at": TS + 1 }] }),
        ),
        ("root", json!({ "method": 2 })),
        ("buckets", json!({ "method": 3 })),
        (
            "entries from the start",
            json!({ "method": 4, "bucket": 0, "limit": 2048 }),
        ),
        (
            "entries after a key",
            json!({ "method": 4, "bucket": key.verifying_key().to_bytes()[0], "after": key_json, "limit": 1024 }),
        ),
        ("fetch", json!({ "method": 5, "keys": [key_json] })),
    ];
    let peer_responses = [
        ("replicated", 1, json!({ "statuses": [0, 15] })),
        ("root", 2, json!({ "root": root["root"], "now": TS + 1 })),
        (
            "entries",
            4,
            json!({ "entries": [live, tomb], "more": true }),
        ),
        ("fetched", 5, json!({ "items": [item] })),
    ];

    json!({
        "description": "Allium storage protocol v1 test vectors (whitepaper/storage.md, section 11). \
            Byte strings are hex; times are Unix ms, durations end in _ms. Each encoding is given with \
            the value it encodes, in the field names of the schema; an optional field that is absent \
            is left out.",
        "mailbox_seed": hex::encode(seq(0)),
        "mailbox": mb,
        "node_seed": hex::encode(seq(32)),
        "node": node,
        "content_hash": content,
        "delivery_token": token_case,
        "unsigned": unsigned.iter().map(|(n, r)| unsigned_case(&json!(n), r)).collect::<Vec<_>>(),
        "signed": signed.iter().map(|(n, r)| signed_case(&json!(n), r, TS, &key, &node_id)).collect::<Vec<_>>(),
        "delegate_seed": hex::encode(seq(128)),
        "delegated": delegated.iter().map(|(n, r)| delegated_case(&json!(n), r, TS, &delegate, &node_id)).collect::<Vec<_>>(),
        "responses": responses.iter().map(|(n, m, r)| response_case(&json!(n), &json!(m), r)).collect::<Vec<_>>(),
        "depth": [
            depth_case("expire answer, one pair at depth 4", Method::Expire, &at_limit, Some(expire_ok)),
            depth_case("the same pair inside one more array, depth 5", Method::Expire, &over, None),
        ],
        "sync": {
            "entry_live": entry_case(&live),
            "entry_tombstone": entry_case(&tomb),
            "root_with_live_entry": root,
            "root_empty": root_case(&json!([])),
            "peer_requests": cases(&peer_requests, peer_request_case),
            "peer_responses": peer_responses.iter().map(|(n, m, r)| peer_response_case(&json!(n), &json!(m), r)).collect::<Vec<_>>(),
        },
    })
}

/// Rebuilds every case from the inputs published beside it.
fn rebuild(published: &Value) -> Value {
    let p = published;
    let key = SigningKey::from_bytes(&b32(&p["mailbox_seed"]));
    let node_key = SigningKey::from_bytes(&b32(&p["node_seed"]));
    assert_eq!(bytes(&p["mailbox"]), key.verifying_key().to_bytes());
    assert_eq!(bytes(&p["node"]), node_key.verifying_key().to_bytes());
    let node_id = node(&p["node"]);
    let each = |k: &str, f: &dyn Fn(&Value) -> Value| -> Value {
        Value::Array(p[k].as_array().unwrap().iter().map(f).collect())
    };
    let s = &p["sync"];
    let mut out = p.clone();
    out["content_hash"] = content_hash_case(&p["content_hash"]);
    out["delivery_token"] = token_case(&p["delivery_token"]);
    out["unsigned"] = each("unsigned", &|c| unsigned_case(&c["name"], &c["request"]));
    out["signed"] = each("signed", &|c| {
        signed_case(
            &c["name"],
            &c["request"],
            uint(&c["timestamp_ms"]),
            &key,
            &node_id,
        )
    });
    let delegate = SigningKey::from_bytes(&b32(&p["delegate_seed"]));
    out["delegated"] = each("delegated", &|c| {
        delegated_case(
            &c["name"],
            &c["request"],
            uint(&c["timestamp_ms"]),
            &delegate,
            &node_id,
        )
    });
    out["responses"] = each("responses", &|c| {
        response_case(&c["name"], &c["method"], &c["response"])
    });
    out["depth"] = each("depth", &|c| {
        let m = Method::from_id(uint(&c["method"])).unwrap();
        let accepted = c["accepted"].as_bool().unwrap();
        depth_case(
            c["name"].as_str().unwrap(),
            m,
            &bytes(&c["response_cbor"]),
            accepted.then_some(&c["response"]),
        )
    });
    let entry = |e: &Value| {
        let mut input = e.clone();
        input.as_object_mut().unwrap().remove("digest");
        entry_case(&input)
    };
    out["sync"]["entry_live"] = entry(&s["entry_live"]);
    out["sync"]["entry_tombstone"] = entry(&s["entry_tombstone"]);
    out["sync"]["root_with_live_entry"] = root_case(&s["root_with_live_entry"]["entries"]);
    out["sync"]["root_empty"] = root_case(&s["root_empty"]["entries"]);
    out["sync"]["peer_requests"] = Value::Array(list(&s["peer_requests"], |c| {
        peer_request_case(&c["name"], &c["request"])
    }));
    out["sync"]["peer_responses"] = Value::Array(list(&s["peer_responses"], |c| {
        peer_response_case(&c["name"], &c["method"], &c["response"])
    }));
    out
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
    // Every encoding, digest and signature is what the inputs published beside it give.
    assert_eq!(
        rebuild(&published),
        published,
        "an encoding in whitepaper/vectors/storage.json is not recomputed from its inputs"
    );
    // Every published encoding decodes and re-encodes to itself.
    for v in published["signed"]
        .as_array()
        .unwrap()
        .iter()
        .chain(published["unsigned"].as_array().unwrap())
        .chain(published["delegated"].as_array().unwrap())
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
