//! The blob namespace (storage §4.3, §4.4, §5.1) against a real store: only the owner stores,
//! anyone reads one message by its address, listing stays the owner's, short data is refused,
//! its own quota and cap answer `quota_exceeded` and `node_full` while the message quota is
//! untouched, and removing a chunk frees its charge.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::sync::Arc;

use allium_proto::crypto;
use allium_proto::storage::*;
use allium_proto::{ManualClock, Status};
use allium_swarm::{Service, ServiceConfig, StoreConfig};
use common::{T0, key, mailbox, node_id, open};

const NODE: u8 = 200;
const TTL: u64 = 60_000;

fn service(cfg: StoreConfig) -> (tempfile::TempDir, Service) {
    let (dir, store) = open(cfg);
    (
        dir,
        Service::new(Arc::new(store), ServiceConfig::new(node_id(NODE))),
    )
}

fn call(s: &Service, req: &Request, now: u64) -> Response {
    let clock = ManualClock::new(now);
    let out = s.handle_blocking(&req.encode(), &clock);
    assert_eq!(
        Response::decode(&out.encode(), req.body.method()).unwrap(),
        out
    );
    out
}

fn status(r: &Response) -> Status {
    r.result.as_ref().err().copied().unwrap_or(Status::Ok)
}

/// A chunk-shaped datum: a 36-byte name, then `len - 36` bytes of `fill`.
fn chunk(name: u8, len: usize, fill: u8) -> Vec<u8> {
    let mut d = vec![name; BLOB_PREFIX_LEN];
    d.resize(len, fill);
    d
}

fn store_body(mb: Mailbox, data: Vec<u8>) -> Body {
    Body::Store(StoreRequest {
        mailbox: mb,
        namespace: BLOB,
        ttl_ms: TTL,
        data,
    })
}

fn read(mb: Mailbox, hash: MessageHash) -> Request {
    Request::unsigned(Body::ReadBlob(ReadBlobRequest { mailbox: mb, hash }))
}

fn read_result(r: &Response) -> Option<StoredMessage> {
    match &r.result {
        Ok(ResponseBody::ReadBlob(b)) => b.message.clone(),
        other => panic!("not a read_blob answer: {other:?}"),
    }
}

#[test]
fn owner_stores_anyone_reads_by_address_nobody_lists() {
    let (_d, s) = service(StoreConfig::default());
    let owner = key(1);
    let mb = mailbox(&owner);
    let node = node_id(NODE);
    let data = chunk(7, 1000, 0xaa);
    let addr = crypto::content_hash(&mb, BLOB, &data);

    // Unsigned, or signed by someone else: refused.
    let unsigned = Request::unsigned(store_body(mb, data.clone()));
    assert_eq!(status(&call(&s, &unsigned, T0)), Status::AuthRequired);
    let forged = Request::signed(store_body(mb, data.clone()), &key(2), &node, T0);
    assert_eq!(status(&call(&s, &forged, T0)), Status::Unauthorized);
    assert_eq!(read_result(&call(&s, &read(mb, addr), T0)), None);

    let signed = Request::signed(store_body(mb, data.clone()), &owner, &node, T0);
    let stored = call(&s, &signed, T0);
    let Ok(ResponseBody::Store(st)) = &stored.result else {
        panic!("{stored:?}")
    };
    assert_eq!(st.hash, addr);

    // The address covers the first 36 bytes only: a second store under the same name is a
    // duplicate and does not replace the bytes held.
    let other = chunk(7, 1000, 0xbb);
    assert_eq!(crypto::content_hash(&mb, BLOB, &other), addr);
    let again = Request::signed(store_body(mb, other), &owner, &node, T0 + 1);
    let Ok(ResponseBody::Store(dup)) = call(&s, &again, T0 + 1).result else {
        panic!()
    };
    assert!(dup.duplicate);

    let got = read_result(&call(&s, &read(mb, addr), T0 + 2)).unwrap();
    assert_eq!(got.data, data);
    assert_eq!(got.hash, addr);
    // Another mailbox, another address, an expired chunk: nothing.
    assert_eq!(
        read_result(&call(&s, &read(mailbox(&key(2)), addr), T0 + 2)),
        None
    );
    assert_eq!(
        read_result(&call(&s, &read(mb, MessageHash([9; 32])), T0 + 2)),
        None
    );
    // The duplicate extended the expiry to T0 + 1 + TTL.
    assert_eq!(read_result(&call(&s, &read(mb, addr), T0 + 1 + TTL)), None);

    // Listing the namespace needs the owner's signature.
    let list = Request::unsigned(Body::Retrieve(RetrieveRequest {
        mailbox: mb,
        namespace: BLOB,
        after: None,
        limit: None,
        wait_ms: None,
    }));
    assert_eq!(status(&call(&s, &list, T0 + 3)), Status::AuthRequired);
    // A signature on read_blob is refused: the method takes none.
    let signed_read = Request::signed(
        Body::ReadBlob(ReadBlobRequest {
            mailbox: mb,
            hash: addr,
        }),
        &owner,
        &node,
        T0,
    );
    assert!(signed_read.auth.is_none());
}

#[test]
fn short_data_is_malformed() {
    let (_d, s) = service(StoreConfig::default());
    let owner = key(1);
    let mb = mailbox(&owner);
    let req = Request::signed(
        store_body(mb, vec![1; BLOB_PREFIX_LEN - 1]),
        &owner,
        &node_id(NODE),
        T0,
    );
    assert_eq!(status(&call(&s, &req, T0)), Status::Malformed);
    let ok = Request::signed(
        store_body(mb, vec![1; BLOB_PREFIX_LEN]),
        &owner,
        &node_id(NODE),
        T0,
    );
    assert_eq!(status(&call(&s, &ok, T0)), Status::Ok);
}

#[test]
fn own_quota_and_cap_leave_messages_alone() {
    let charge = 1000 + 128;
    let cfg = StoreConfig {
        blob_quota_bytes: 3 * charge,
        blob_cap_bytes: 4 * charge,
        mailbox_quota_bytes: 2 * charge,
        node_cap_bytes: 100 * charge,
        ..StoreConfig::default()
    };
    let (_d, s) = service(cfg);
    let node = node_id(NODE);
    let (a, b) = (key(1), key(2));
    let put = |k: &ed25519_dalek::SigningKey, name: u8, t: u64| {
        let req = Request::signed(store_body(mailbox(k), chunk(name, 1000, 0)), k, &node, t);
        status(&call(&s, &req, t))
    };
    for i in 0..3 {
        assert_eq!(put(&a, i, T0 + u64::from(i)), Status::Ok);
    }
    // A's blob quota is full; its message quota is untouched.
    assert_eq!(put(&a, 3, T0 + 10), Status::QuotaExceeded);
    let (usage, total) = s.store().blob_usage(&mailbox(&a)).unwrap();
    assert_eq!((usage.bytes, usage.count), (3 * charge, 3));
    assert_eq!(total.bytes, 3 * charge);
    assert_eq!(s.store().usage(&mailbox(&a)).unwrap().bytes, 0);
    assert_eq!(s.store().total().unwrap().bytes, 0);
    let inbox = Request::unsigned(Body::Store(StoreRequest {
        mailbox: mailbox(&a),
        namespace: INBOX,
        ttl_ms: TTL,
        data: vec![5; 1000],
    }));
    assert_eq!(status(&call(&s, &inbox, T0 + 11)), Status::Ok);

    // The node's blob cap: B fits one chunk, then the node is full for blobs.
    assert_eq!(put(&b, 0, T0 + 12), Status::Ok);
    assert_eq!(put(&b, 1, T0 + 13), Status::NodeFull);

    // Deleting a chunk frees its charge in the blob counters.
    let addr = crypto::content_hash(&mailbox(&a), BLOB, &chunk(0, 1000, 0));
    let del = Request::signed(
        Body::Delete(DeleteRequest {
            mailbox: mailbox(&a),
            namespace: BLOB,
            hashes: vec![addr],
        }),
        &a,
        &node,
        T0 + 14,
    );
    assert_eq!(status(&call(&s, &del, T0 + 14)), Status::Ok);
    let (usage, total) = s.store().blob_usage(&mailbox(&a)).unwrap();
    assert_eq!((usage.bytes, usage.count), (2 * charge, 2));
    assert_eq!(total.bytes, 3 * charge);
    assert_eq!(s.store().usage(&mailbox(&a)).unwrap().count, 1);
    assert_eq!(put(&b, 1, T0 + 15), Status::Ok);
}
