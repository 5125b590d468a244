//! Strangers cannot fill an inbox (storage.md §4.5): once the owner registers a delivery token,
//! inbox stores need it; strangers' stores go to the requests namespace, capped by its share,
//! while contacts' stores with the token still succeed. The owner reads usage and clears.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::sync::Arc;

use allium_proto::storage::*;
use allium_proto::{ManualClock, Status, crypto};
use allium_swarm::{Service, ServiceConfig, StoreConfig};
use common::{T0, key, mailbox, node_id, open};

const NODE: u8 = 200;
const DAY: u64 = 86_400_000;

fn call(s: &Service, req: &Request, now: u64) -> Result<ResponseBody, Status> {
    let out = s.handle_blocking(&req.encode(), &ManualClock::new(now));
    assert_eq!(
        Response::decode(&out.encode(), req.body.method()).unwrap(),
        out
    );
    out.result
}

fn store(mb: Mailbox, namespace: Namespace, data: Vec<u8>, token: Option<[u8; 32]>) -> Request {
    Request::unsigned(Body::Store(StoreRequest {
        mailbox: mb,
        namespace,
        ttl_ms: DAY,
        data,
        token: token.map(DeliveryToken),
    }))
}

/// A stranger's store of `i`: distinct 4 KiB of data.
fn junk(i: u32) -> Vec<u8> {
    let mut d = vec![0xa5; 4096];
    d[..4].copy_from_slice(&i.to_be_bytes());
    d
}

#[test]
fn strangers_are_capped_at_their_share_and_contacts_still_get_through() {
    let cfg = StoreConfig {
        mailbox_quota_bytes: 1 << 20,
        requests_quota_bytes: 128 << 10,
        requests_quota_count: 16,
        ..StoreConfig::default()
    };
    let (_d, st) = open(cfg.clone());
    let s = Service::new(Arc::new(st), ServiceConfig::new(node_id(NODE)));
    let owner = key(1);
    let mb = mailbox(&owner);
    let node = node_id(NODE);
    let token = [7u8; 32];
    let now = std::cell::Cell::new(T0);
    let tick = || {
        now.set(now.get() + 1);
        now.get()
    };

    // Before the owner registers a token, the inbox is open: a stranger fills the quota and a
    // contact's store is refused (the attack of issue 13).
    let mut i = 0;
    let mut stranger_stored = 0;
    while call(&s, &store(mb, INBOX, junk(i), None), tick()).is_ok() {
        i += 1;
        stranger_stored += 1;
    }
    assert!(
        stranger_stored > 200,
        "{stranger_stored} stores filled 1 MiB"
    );
    assert_eq!(
        call(&s, &store(mb, INBOX, junk(u32::MAX), None), tick()),
        Err(Status::QuotaExceeded)
    );
    let clear = Request::signed(
        Body::DeleteAll(DeleteAllRequest {
            mailbox: mb,
            namespace: INBOX,
        }),
        &owner,
        &node,
        tick(),
    );
    assert!(matches!(
        call(&s, &clear, tick() - 1),
        Ok(ResponseBody::DeleteAll(DeleteAllResponse { count })) if count == stranger_stored
    ));

    // The owner registers the token's verifier (signed, owner-only).
    let verifier = crypto::token_verifier(&mb, &token);
    let unsigned_reg = store(mb, TOKENS, verifier.to_vec(), None);
    assert_eq!(call(&s, &unsigned_reg, tick()), Err(Status::AuthRequired));
    let t = tick();
    let reg = Request::signed(unsigned_reg.body.clone(), &owner, &node, t);
    assert!(call(&s, &reg, t).is_ok());

    // Now a tokenless inbox store, or one with a wrong token, is refused with its own status;
    // a token outside the inbox does not even decode.
    assert_eq!(
        call(&s, &store(mb, INBOX, junk(9_999), None), tick()),
        Err(Status::TokenRefused)
    );
    assert_eq!(
        call(&s, &store(mb, INBOX, junk(9_998), Some([8; 32])), tick()),
        Err(Status::TokenRefused)
    );
    assert_eq!(
        call(&s, &store(mb, REQUESTS, junk(9_997), Some(token)), tick()),
        Err(Status::Malformed)
    );

    // The same attack against the requests share stops at the share.
    let mut capped = 0;
    let refusal = loop {
        match call(
            &s,
            &store(mb, REQUESTS, junk(10_000 + capped), None),
            tick(),
        ) {
            Ok(_) => capped += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refusal, Status::QuotaExceeded);
    assert_eq!(u64::from(capped), cfg.requests_quota_count);

    // A contact with the token still gets through, many times over the share.
    for n in 0..32u32 {
        let mut data = b"hello from a contact ".to_vec();
        data.extend_from_slice(&n.to_be_bytes());
        assert!(call(&s, &store(mb, INBOX, data, Some(token)), tick()).is_ok());
    }

    // The owner sees the usage of each namespace against its limits.
    let usage = |ns| {
        let t = tick();
        let req = Request::signed(
            Body::Usage(UsageRequest {
                mailbox: mb,
                namespace: ns,
            }),
            &owner,
            &node,
            t,
        );
        match call(&s, &req, t) {
            Ok(ResponseBody::Usage(u)) => u,
            other => panic!("{other:?}"),
        }
    };
    let requests = usage(REQUESTS);
    assert_eq!(requests.count, cfg.requests_quota_count);
    assert_eq!(requests.max_count, Some(cfg.requests_quota_count));
    assert_eq!(requests.max_bytes, cfg.requests_quota_bytes);
    assert!(requests.bytes <= cfg.requests_quota_bytes);
    let inbox = usage(INBOX);
    assert_eq!(inbox.count, 32);
    assert_eq!(inbox.max_count, None);
    assert_eq!(inbox.mailbox_count, 32 + 16 + 1);
    assert_eq!(inbox.mailbox_max_bytes, cfg.mailbox_quota_bytes);
    let unsigned_usage = Request::unsigned(Body::Usage(UsageRequest {
        mailbox: mb,
        namespace: INBOX,
    }));
    assert_eq!(call(&s, &unsigned_usage, tick()), Err(Status::AuthRequired));

    // Clearing the requests share frees it for the next stranger.
    let t = tick();
    let clear = Request::signed(
        Body::DeleteAll(DeleteAllRequest {
            mailbox: mb,
            namespace: REQUESTS,
        }),
        &owner,
        &node,
        t,
    );
    assert!(call(&s, &clear, t).is_ok());
    assert_eq!(usage(REQUESTS).count, 0);
    assert!(call(&s, &store(mb, REQUESTS, junk(20_000), None), tick()).is_ok());

    // Revoking the token (deleting its verifier record) closes the inbox to it.
    let t = tick();
    let revoke = Request::signed(
        Body::Delete(DeleteRequest {
            mailbox: mb,
            namespace: TOKENS,
            hashes: vec![crypto::token_record_hash(&mb, &token)],
        }),
        &owner,
        &node,
        t,
    );
    assert!(call(&s, &revoke, t).is_ok());
    assert_eq!(
        call(
            &s,
            &store(mb, INBOX, b"after revocation".to_vec(), Some(token)),
            tick()
        ),
        Err(Status::TokenRefused)
    );
}

/// Per-namespace usage survives a restart and is rebuilt when a database of the previous
/// schema is opened (the counts were not kept before).
#[test]
fn namespace_usage_is_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mb = mailbox(&key(3));
    {
        let st = allium_swarm::Store::open(dir.path(), StoreConfig::default()).unwrap();
        for (ns, n) in [(INBOX, 3u32), (REQUESTS, 2)] {
            for i in 0..n {
                st.store(
                    allium_swarm::store::NewMessage {
                        mailbox: mb,
                        namespace: ns,
                        ttl_ms: DAY,
                        data: junk(i),
                    },
                    T0,
                )
                .unwrap();
            }
        }
        assert_eq!(st.namespace_usage(&mb, REQUESTS).unwrap().count, 2);
    }
    let st = allium_swarm::Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(st.namespace_usage(&mb, INBOX).unwrap().count, 3);
    assert_eq!(st.namespace_usage(&mb, REQUESTS).unwrap().count, 2);
    assert_eq!(st.usage(&mb).unwrap().count, 5);
}

/// A database of schema 2 (no usage per namespace) is counted once on open, and the requests
/// share then holds as it would have.
#[test]
fn a_schema_2_database_gets_its_namespace_usage_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mb = mailbox(&key(4));
    let cfg = StoreConfig {
        requests_quota_count: 3,
        ..StoreConfig::default()
    };
    let new = |ns, i| allium_swarm::store::NewMessage {
        mailbox: mb,
        namespace: ns,
        ttl_ms: DAY,
        data: junk(i),
    };
    {
        let st = allium_swarm::Store::open(dir.path(), cfg.clone()).unwrap();
        st.store(new(INBOX, 0), T0).unwrap();
        st.store(new(REQUESTS, 1), T0).unwrap();
        st.store(new(REQUESTS, 2), T0).unwrap();
    }
    {
        // Back to what schema 2 wrote: no 34-byte usage keys, `meta/schema` = 2.
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            ["msg", "hash", "exp", "usage", "meta", "tomb"],
        )
        .unwrap();
        let usage = db.cf_handle("usage").unwrap();
        let keys: Vec<Box<[u8]>> = db
            .iterator_cf(usage, rocksdb::IteratorMode::Start)
            .map(|kv| kv.unwrap().0)
            .filter(|k| k.len() == 34)
            .collect();
        assert_eq!(keys.len(), 2, "one per namespace used");
        for k in keys {
            db.delete_cf(usage, k).unwrap();
        }
        db.put_cf(db.cf_handle("meta").unwrap(), b"schema", 2u32.to_be_bytes())
            .unwrap();
    }
    let st = allium_swarm::Store::open(dir.path(), cfg).unwrap();
    assert_eq!(st.namespace_usage(&mb, REQUESTS).unwrap().count, 2);
    assert_eq!(st.namespace_usage(&mb, INBOX).unwrap().count, 1);
    st.store(new(REQUESTS, 3), T0).unwrap();
    assert!(matches!(
        st.store(new(REQUESTS, 4), T0),
        Err(allium_swarm::StoreError::QuotaExceeded)
    ));
}

/// Replicas are held to the requests share too, so every member refuses the same stores and
/// a peer cannot push past it.
#[test]
fn replicas_are_held_to_the_requests_share() {
    let cfg = StoreConfig {
        requests_quota_count: 2,
        ..StoreConfig::default()
    };
    let (_d, st) = open(cfg);
    let mb = mailbox(&key(5));
    let items = (0..3)
        .map(|i| {
            allium_proto::sync::Item::Message(allium_proto::sync::ItemMessage {
                mailbox: mb,
                namespace: REQUESTS,
                timestamp: T0,
                expiry: T0 + DAY,
                set_at: T0,
                data: junk(i),
            })
        })
        .collect();
    let results = st.apply_items(items, T0 + 1);
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(matches!(
        results[2],
        Err(allium_swarm::StoreError::QuotaExceeded)
    ));
}
