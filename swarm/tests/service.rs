//! Every request path of the service against a real store: each bad request answered with its
//! documented status, the signature window and replay cache with an injected clock, TTL bounds
//! and expiry, quota and node cap, dedupe, long-poll.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use allium_proto::crypto;
use allium_proto::storage::*;
use allium_proto::{ManualClock, Status};
use allium_swarm::store::Usage;
use allium_swarm::{Handled, Service, ServiceConfig, StoreConfig};
use common::{T0, key, mailbox, node_id, open};

const NODE: u8 = 200;

fn service(cfg: StoreConfig) -> (tempfile::TempDir, Service) {
    let (dir, store) = open(cfg);
    (
        dir,
        Service::new(Arc::new(store), ServiceConfig::new(node_id(NODE))),
    )
}

fn call(s: &Service, req: &Request, now: u64) -> Response {
    call_raw(s, &req.encode(), req.body.method(), now)
}

fn call_raw(s: &Service, bytes: &[u8], method: Method, now: u64) -> Response {
    let clock = ManualClock::new(now);
    let out = s.handle_blocking(bytes, &clock);
    // Whatever the service answers must decode as the answer to this method.
    let decoded = Response::decode(&out.encode(), method).unwrap();
    assert_eq!(decoded, out);
    out
}

fn status(r: &Response) -> Status {
    match &r.result {
        Ok(_) => Status::Ok,
        Err(s) => *s,
    }
}

fn inbox_store(mb: Mailbox, data: &[u8], ttl_ms: u64) -> Request {
    Request::unsigned(Body::Store(StoreRequest {
        mailbox: mb,
        namespace: INBOX,
        ttl_ms,
        data: data.to_vec(),
    }))
}

fn retrieve_body(mb: Mailbox) -> Body {
    Body::Retrieve(RetrieveRequest {
        mailbox: mb,
        namespace: INBOX,
        after: None,
        limit: None,
        wait_ms: None,
    })
}

fn messages(r: &Response) -> Vec<StoredMessage> {
    match &r.result {
        Ok(ResponseBody::Retrieve(p)) => p.messages.clone(),
        other => panic!("not a retrieve answer: {other:?}"),
    }
}

#[test]
fn malformed_requests_get_their_documented_status() {
    let (_d, s) = service(StoreConfig::default());
    let mb = mailbox(&key(1));
    let good = inbox_store(mb, b"hello", 60_000).encode();

    let cases: Vec<(&str, Vec<u8>, Status)> = vec![
        ("empty", vec![], Status::Malformed),
        ("not a map", vec![0x01], Status::Malformed),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            Status::Malformed,
        ),
        (
            "trailing byte",
            [good.as_slice(), &[0]].concat(),
            Status::Malformed,
        ),
        (
            "over the size limit",
            vec![0xa0; MAX_REQUEST_BYTES + 1],
            Status::TooLarge,
        ),
        // {1: 99, 2: {}}
        (
            "unknown method",
            vec![0xa2, 0x01, 0x18, 0x63, 0x02, 0xa0],
            Status::UnknownMethod,
        ),
        // info with an unknown body key: {1: 6, 2: {1: 0}}
        (
            "unknown key",
            vec![0xa2, 0x01, 0x06, 0x02, 0xa1, 0x01, 0x00],
            Status::Malformed,
        ),
        // {1: 6, 2: {}} with key 2 before key 1
        (
            "keys out of order",
            vec![0xa2, 0x02, 0xa0, 0x01, 0x06],
            Status::Malformed,
        ),
        // indefinite-length map
        (
            "indefinite map",
            vec![0xbf, 0x01, 0x06, 0x02, 0xa0, 0xff],
            Status::Malformed,
        ),
        // method id 6 in a two-byte head
        (
            "non-shortest integer",
            vec![0xa2, 0x01, 0x18, 0x06, 0x02, 0xa0],
            Status::Malformed,
        ),
    ];
    for (name, bytes, want) in cases {
        let r = call_raw(&s, &bytes, Method::Store, T0);
        assert_eq!(status(&r), want, "{name}");
        assert_eq!(r.now, T0, "{name}: every answer carries node time");
    }
    // Deeply nested input: a store whose data field is 1000 nested arrays.
    let mut deep = vec![0xa2, 0x01, 0x01, 0x02, 0xa4, 0x01];
    deep.extend(std::iter::repeat_n(0x81, 1000));
    assert_eq!(
        status(&call_raw(&s, &deep, Method::Store, T0)),
        Status::Malformed
    );
}

#[test]
fn authentication_failures_are_refused() {
    let (_d, s) = service(StoreConfig::default());
    let k = key(1);
    let mb = mailbox(&k);
    let node = node_id(NODE);
    let now = T0;

    let unsigned = Request::unsigned(retrieve_body(mb));
    assert_eq!(status(&call(&s, &unsigned, now)), Status::AuthRequired);

    let by_other_key = Request::signed(retrieve_body(mb), &key(2), &node, now);
    assert_eq!(status(&call(&s, &by_other_key, now)), Status::Unauthorized);

    let for_other_node = Request::signed(retrieve_body(mb), &k, &node_id(NODE + 1), now);
    assert_eq!(
        status(&call(&s, &for_other_node, now)),
        Status::Unauthorized
    );

    // Signed for one body, sent with another: the digest no longer matches.
    let mut changed = Request::signed(retrieve_body(mb), &k, &node, now);
    changed.body = Body::Retrieve(RetrieveRequest {
        mailbox: mb,
        namespace: INBOX,
        after: None,
        limit: Some(1),
        wait_ms: None,
    });
    assert_eq!(status(&call(&s, &changed, now)), Status::Unauthorized);

    // Signed as a delete_all but sent as a retrieve of the same mailbox (method is signed).
    let other_method = Request::signed(
        Body::DeleteAll(DeleteAllRequest {
            mailbox: mb,
            namespace: INBOX,
        }),
        &k,
        &node,
        now,
    );
    let forged = Request {
        body: retrieve_body(mb),
        auth: other_method.auth.clone(),
    };
    assert_eq!(status(&call(&s, &forged, now)), Status::Unauthorized);

    // A flipped signature bit.
    let mut flipped = Request::signed(retrieve_body(mb), &k, &node, now);
    if let Some(a) = flipped.auth.as_mut() {
        a.signature[10] ^= 1;
    }
    assert_eq!(status(&call(&s, &flipped, now)), Status::Unauthorized);

    // A mailbox that is not a valid curve point.
    let bad_mb = Mailbox::from_bytes([0xff; 32]);
    let r = Request::signed(retrieve_body(bad_mb), &k, &node, now);
    let r = Request {
        body: retrieve_body(bad_mb),
        auth: r.auth,
    };
    assert_eq!(status(&call(&s, &r, now)), Status::Unauthorized);

    // A signature on a method that takes none.
    let mut info = Request::unsigned(Body::Info);
    info.auth = Request::signed(retrieve_body(mb), &k, &node, now).auth;
    assert_eq!(status(&call(&s, &info, now)), Status::Malformed);

    // Non-inbox namespaces need the owner's signature even to deposit.
    let private = Body::Store(StoreRequest {
        mailbox: mb,
        namespace: 5,
        ttl_ms: 60_000,
        data: b"note to self".to_vec(),
    });
    assert_eq!(
        status(&call(&s, &Request::unsigned(private.clone()), now)),
        Status::AuthRequired
    );
    assert_eq!(
        status(&call(&s, &Request::signed(private, &k, &node, now), now)),
        Status::Ok
    );
}

#[test]
fn signature_window_and_replay_cache() {
    let (_d, s) = service(StoreConfig::default());
    let k = key(1);
    let mb = mailbox(&k);
    let node = node_id(NODE);
    let now = T0 + 1_000_000;

    // Edges of the ±60 s window are inside; one ms beyond is outside, in both directions.
    for (ts, want) in [
        (now - 60_000, Status::Ok),
        (now + 60_000, Status::Ok),
        (now - 60_001, Status::ClockSkew),
        (now + 60_001, Status::ClockSkew),
    ] {
        let r = call(&s, &Request::signed(retrieve_body(mb), &k, &node, ts), now);
        assert_eq!(
            status(&r),
            want,
            "timestamp offset {}",
            ts as i64 - now as i64
        );
        assert_eq!(r.now, now, "the answer lets the client correct its clock");
    }

    // The same signed request twice inside the window: the second is refused…
    let req = Request::signed(retrieve_body(mb), &k, &node, now + 5);
    assert_eq!(status(&call(&s, &req, now)), Status::Ok);
    assert_eq!(status(&call(&s, &req, now + 30_000)), Status::Replayed);
    // …and after the window it is stale, not executed.
    assert_eq!(status(&call(&s, &req, now + 60_006)), Status::ClockSkew);
    // A fresh signature over the same body is a new request.
    let again = Request::signed(retrieve_body(mb), &k, &node, now + 60_006);
    assert_eq!(status(&call(&s, &again, now + 60_006)), Status::Ok);

    // A node clock stepped back does not let the replay in either.
    assert_eq!(status(&call(&s, &req, now)), Status::ClockSkew);
}

/// Whitepaper §3.1: a delegate signs for the mailbox exactly while the mailbox holds a live
/// delegation record for its key in namespace 3; the record is the owner's alone.
#[test]
fn delegates_act_while_their_record_is_live() {
    let (_d, s) = service(StoreConfig::default());
    let owner = key(1);
    let mb = mailbox(&owner);
    let device = key(2);
    let signer = device.verifying_key().to_bytes();
    let node = node_id(NODE);
    let mut now = T0 + 1_000_000;
    let mut tick = || {
        now += 1;
        now
    };
    let record = |ttl_ms| {
        Body::Store(StoreRequest {
            mailbox: mb,
            namespace: DEVICES,
            ttl_ms,
            data: signer.to_vec(),
        })
    };
    let by_device = |body, t| Request::signed_by_delegate(body, &device, &node, t);

    // No record yet: refused with the status that sends the client to the other members.
    let t = tick();
    let r = call(&s, &by_device(retrieve_body(mb), t), t);
    assert_eq!(status(&r), Status::NotDelegated);
    assert_eq!(
        Status::NotDelegated.retry(),
        allium_proto::Retry::EachMember
    );

    // The delegate cannot write its own record: namespace 3 is the owner's.
    let t = tick();
    let r = call(&s, &by_device(record(60_000), t), t);
    assert_eq!(status(&r), Status::Unauthorized);

    // The owner stores it: from now on the delegate reads the inbox and writes namespace 1.
    let t = tick();
    let stored = call(&s, &Request::signed(record(60_000), &owner, &node, t), t);
    assert_eq!(status(&stored), Status::Ok);
    let Ok(ResponseBody::Store(sr)) = &stored.result else {
        panic!("not a store answer")
    };
    assert_eq!(sr.hash, crypto::delegation_hash(&mb, &signer));
    let t = tick();
    s.handle_blocking(
        &inbox_store(mb, b"for every device", 60_000).encode(),
        &ManualClock::new(t),
    );
    let t = tick();
    let r = call(&s, &by_device(retrieve_body(mb), t), t);
    assert_eq!(messages(&r).len(), 1);
    let owner_ns = Body::Store(StoreRequest {
        mailbox: mb,
        namespace: OWNER,
        ttl_ms: 60_000,
        data: b"synced".to_vec(),
    });
    let t = tick();
    assert_eq!(status(&call(&s, &by_device(owner_ns, t), t)), Status::Ok);

    // Another key naming the same signer is a forgery, delegated or not.
    let mut forged = Request::signed(retrieve_body(mb), &key(3), &node, tick());
    forged.auth.as_mut().unwrap().signer = Some(signer);
    let t = tick();
    assert_eq!(status(&call(&s, &forged, t)), Status::Unauthorized);

    // Expired: refused again.
    let late = t + 60_001;
    let r = call(&s, &by_device(retrieve_body(mb), late), late);
    assert_eq!(status(&r), Status::NotDelegated);

    // Stored again, then deleted by the owner (a removal): refused from the delete on.
    let t = late + 1;
    let r = call(&s, &Request::signed(record(60_000), &owner, &node, t), t);
    assert_eq!(status(&r), Status::Ok);
    let t = t + 1;
    assert_eq!(
        status(&call(&s, &by_device(retrieve_body(mb), t), t)),
        Status::Ok
    );
    let del = Body::Delete(DeleteRequest {
        mailbox: mb,
        namespace: DEVICES,
        hashes: vec![crypto::delegation_hash(&mb, &signer)],
    });
    let t = t + 1;
    assert_eq!(
        status(&call(&s, &Request::signed(del, &owner, &node, t), t)),
        Status::Ok
    );
    let t = t + 1;
    let r = call(&s, &by_device(retrieve_body(mb), t), t);
    assert_eq!(status(&r), Status::NotDelegated);
}

#[test]
fn a_restarted_service_refuses_what_was_signed_before_its_start() {
    let (dir, store) = open(StoreConfig::default());
    let s = Service::new(Arc::new(store), ServiceConfig::new(node_id(NODE)));
    let k = key(2);
    let mb = mailbox(&k);
    let node = node_id(NODE);
    let now = T0 + 1_000_000;
    let wipe = Request::signed(
        Body::DeleteAll(DeleteAllRequest {
            mailbox: mb,
            namespace: INBOX,
        }),
        &k,
        &node,
        now,
    );
    assert_eq!(status(&call(&s, &wipe, now)), Status::Ok);
    assert_eq!(status(&call(&s, &wipe, now + 1_000)), Status::Replayed);

    // Killed 2 s later and started again 3 s later: well inside the request's window, but the
    // replay cache of the first run is gone.
    drop(s);
    let store = allium_swarm::Store::open(dir.path(), StoreConfig::default()).unwrap();
    let restarted = now + 5_000;
    let s = Service::new(
        Arc::new(store),
        ServiceConfig {
            not_before: restarted,
            ..ServiceConfig::new(node_id(NODE))
        },
    );
    let r = call(&s, &wipe, restarted + 1_000);
    assert_eq!(
        status(&r),
        Status::ClockSkew,
        "a replay ran after a restart"
    );
    assert_eq!(r.now, restarted + 1_000, "the answer carries the node time");
    // Signed again at the node's time, the same operation runs.
    let resigned = Request::signed(wipe.body.clone(), &k, &node, r.now);
    assert_eq!(status(&call(&s, &resigned, r.now)), Status::Ok);
}

#[test]
fn ttl_bounds_expiry_and_background_removal() {
    let cfg = StoreConfig::default();
    let (min, max) = (cfg.ttl_min_ms, cfg.ttl_max_ms);
    let (_d, s) = service(cfg);
    let k = key(1);
    let mb = mailbox(&k);
    let node = node_id(NODE);

    assert_eq!(
        status(&call(&s, &inbox_store(mb, b"a", min - 1), T0)),
        Status::TtlOutOfRange
    );
    assert_eq!(
        status(&call(&s, &inbox_store(mb, b"a", max + 1), T0)),
        Status::TtlOutOfRange
    );
    assert_eq!(
        status(&call(&s, &inbox_store(mb, b"max", max), T0)),
        Status::Ok
    );
    let r = call(&s, &inbox_store(mb, b"short", min), T0);
    let Ok(ResponseBody::Store(stored)) = r.result else {
        panic!("{r:?}")
    };
    assert_eq!(stored.expiry, T0 + min);
    assert_eq!(stored.timestamp, T0);

    let get = |now| {
        messages(&call(
            &s,
            &Request::signed(retrieve_body(mb), &k, &node, now),
            now,
        ))
    };
    assert_eq!(get(T0 + min - 1).len(), 2);
    // At its expiry the message is gone from answers, before any sweep.
    assert_eq!(get(T0 + min).len(), 1);

    // expire: in the past, or beyond now + max TTL, is refused; shortening works.
    let expire = |expiry, now| {
        Request::signed(
            Body::Expire(ExpireRequest {
                mailbox: mb,
                namespace: INBOX,
                hashes: vec![stored.hash, crypto::content_hash(&mb, INBOX, b"max")],
                expiry,
            }),
            &k,
            &node,
            now,
        )
    };
    let now = T0 + min + 1;
    assert_eq!(
        status(&call(&s, &expire(now, now), now)),
        Status::ExpiryOutOfRange
    );
    assert_eq!(
        status(&call(&s, &expire(now + max + 1, now), now)),
        Status::ExpiryOutOfRange
    );
    let r = call(&s, &expire(now + 20_000, now), now);
    let Ok(ResponseBody::Expire(e)) = r.result else {
        panic!("{r:?}")
    };
    // Only the live message is updated; the expired one is not resurrected.
    assert_eq!(
        e.updated,
        vec![(crypto::content_hash(&mb, INBOX, b"max"), now + 20_000)]
    );

    // Expired messages still occupy disk until the sweeper removes them.
    assert_eq!(s.store().usage(&mb).unwrap().count, 2);
    let clock = Arc::new(ManualClock::new(now + 20_000));
    let sweeper = s
        .store()
        .spawn_sweeper(clock, Duration::from_millis(10), 1)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.store().usage(&mb).unwrap() != Usage::default() {
        assert!(
            Instant::now() < deadline,
            "sweeper did not remove expired messages"
        );
        thread::sleep(Duration::from_millis(10));
    }
    drop(sweeper);
    assert_eq!(s.store().total().unwrap(), Usage::default());
}

#[test]
fn quota_and_node_cap_are_distinct_errors() {
    let cfg = StoreConfig {
        mailbox_quota_bytes: 3 * (1000 + 128),
        node_cap_bytes: 5 * (1000 + 128),
        ..StoreConfig::default()
    };
    let (_d, s) = service(cfg);
    let (a, b) = (mailbox(&key(1)), mailbox(&key(2)));
    let msg = |i: u8| vec![i; 1000];
    for i in 0..3 {
        assert_eq!(
            status(&call(&s, &inbox_store(a, &msg(i), 60_000), T0)),
            Status::Ok
        );
    }
    assert_eq!(
        status(&call(&s, &inbox_store(a, &msg(3), 60_000), T0)),
        Status::QuotaExceeded
    );
    // A duplicate of a held message costs nothing and is accepted at quota.
    let r = call(&s, &inbox_store(a, &msg(0), 60_000), T0);
    assert!(matches!(
        r.result,
        Ok(ResponseBody::Store(StoreResponse {
            duplicate: true,
            ..
        }))
    ));
    for i in 10..12 {
        assert_eq!(
            status(&call(&s, &inbox_store(b, &msg(i), 60_000), T0)),
            Status::Ok
        );
    }
    assert_eq!(
        status(&call(&s, &inbox_store(b, &msg(12), 60_000), T0)),
        Status::NodeFull
    );
    assert_eq!(s.store().total().unwrap().count, 5);

    // Reads and deletes still work when full, and deleting makes room.
    let kb = key(2);
    let del = Request::signed(
        Body::DeleteAll(DeleteAllRequest {
            mailbox: b,
            namespace: INBOX,
        }),
        &kb,
        &node_id(NODE),
        T0,
    );
    let r = call(&s, &del, T0);
    assert_eq!(
        r.result,
        Ok(ResponseBody::DeleteAll(DeleteAllResponse { count: 2 }))
    );
    assert_eq!(
        status(&call(&s, &inbox_store(b, &msg(12), 60_000), T0)),
        Status::Ok
    );
}

#[test]
fn dedupe_keeps_one_copy_and_the_later_expiry() {
    let (_d, s) = service(StoreConfig::default());
    let k = key(1);
    let mb = mailbox(&k);
    let r1 = call(&s, &inbox_store(mb, b"same", 20_000), T0);
    let r2 = call(&s, &inbox_store(mb, b"same", 60_000), T0 + 5);
    let r3 = call(&s, &inbox_store(mb, b"same", 10_000), T0 + 10);
    let (Ok(ResponseBody::Store(a)), Ok(ResponseBody::Store(b)), Ok(ResponseBody::Store(c))) =
        (r1.result, r2.result, r3.result)
    else {
        panic!("stores refused")
    };
    assert!(!a.duplicate && b.duplicate && c.duplicate);
    assert_eq!((a.hash, a.timestamp), (b.hash, b.timestamp));
    assert_eq!(b.expiry, T0 + 5 + 60_000);
    assert_eq!(
        c.expiry, b.expiry,
        "a shorter TTL never shortens a held message"
    );
    let got = messages(&call(
        &s,
        &Request::signed(retrieve_body(mb), &k, &node_id(NODE), T0),
        T0,
    ));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"same");
    assert_eq!(
        s.store().usage(&mb).unwrap(),
        Usage {
            bytes: 4 + 128,
            count: 1
        }
    );
}

#[test]
fn delete_and_delete_all_report_what_was_live() {
    let (_d, s) = service(StoreConfig::default());
    let k = key(1);
    let mb = mailbox(&k);
    let node = node_id(NODE);
    for d in [&b"one"[..], b"two", b"three"] {
        assert_eq!(
            status(&call(&s, &inbox_store(mb, d, 60_000), T0)),
            Status::Ok
        );
    }
    let h = |d: &[u8]| crypto::content_hash(&mb, INBOX, d);
    let del = Request::signed(
        Body::Delete(DeleteRequest {
            mailbox: mb,
            namespace: INBOX,
            hashes: vec![h(b"one"), h(b"one"), h(b"absent")],
        }),
        &k,
        &node,
        T0,
    );
    assert_eq!(
        call(&s, &del, T0).result,
        Ok(ResponseBody::Delete(DeleteResponse {
            deleted: vec![h(b"one")]
        }))
    );
    let all = Request::signed(
        Body::DeleteAll(DeleteAllRequest {
            mailbox: mb,
            namespace: INBOX,
        }),
        &k,
        &node,
        T0 + 1,
    );
    assert_eq!(
        call(&s, &all, T0 + 1).result,
        Ok(ResponseBody::DeleteAll(DeleteAllResponse { count: 2 }))
    );
    assert!(
        messages(&call(
            &s,
            &Request::signed(retrieve_body(mb), &k, &node, T0 + 2),
            T0 + 2
        ))
        .is_empty()
    );
    assert_eq!(s.store().usage(&mb).unwrap(), Usage::default());
}

#[test]
fn info_and_node_methods() {
    let (_d, s) = service(StoreConfig::default());
    let r = call(&s, &Request::unsigned(Body::Info), T0);
    let Ok(ResponseBody::Info(info)) = &r.result else {
        panic!("{r:?}")
    };
    assert_eq!(info.protocol, PROTOCOL_VERSION);
    assert!(info.software.starts_with("allium-swarm/"));
    assert_eq!(r.now, T0);
    let gs = Request::unsigned(Body::GetSwarm(GetSwarmRequest {
        mailbox: mailbox(&key(1)),
    }));
    assert!(matches!(
        s.handle(&gs.encode(), T0),
        Handled::Forward(Body::GetSwarm(_))
    ));
    assert_eq!(status(&call(&s, &gs, T0)), Status::Unsupported);
}

#[test]
fn long_poll_wakes_on_store_and_times_out_otherwise() {
    let (_d, s) = service(StoreConfig::default());
    let s = Arc::new(s);
    let k = key(1);
    let mb = mailbox(&k);
    let node = node_id(NODE);
    let waiting = |wait_ms, ts| {
        Request::signed(
            Body::Retrieve(RetrieveRequest {
                mailbox: mb,
                namespace: INBOX,
                after: None,
                limit: None,
                wait_ms: Some(wait_ms),
            }),
            &k,
            &node,
            ts,
        )
    };

    // Nothing arrives: the answer is empty after about the wait.
    let start = Instant::now();
    assert!(messages(&call(&s, &waiting(200, T0), T0)).is_empty());
    assert!(start.elapsed() >= Duration::from_millis(200));

    // A store from another thread wakes the waiter well before its 30 s wait.
    let Handled::Wait(pending) = s.handle(&waiting(30_000, T0 + 1).encode(), T0 + 1) else {
        panic!("expected the retrieve to wait")
    };
    let s2 = Arc::clone(&s);
    let writer = thread::spawn(move || call(&s2, &inbox_store(mb, b"wake up", 60_000), T0 + 2));
    let start = Instant::now();
    assert!(pending.watch.wait_timeout(pending.wait));
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(status(&writer.join().unwrap()), Status::Ok);
    let got = messages(&s.resume(pending, T0 + 3));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"wake up");
}

#[test]
fn concurrent_stores_are_all_acknowledged_and_present() {
    let (dir, store) = open(StoreConfig::default());
    let store = Arc::new(store);
    let mb = mailbox(&key(1));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..40u8 {
                    let m = allium_swarm::NewMessage {
                        mailbox: mb,
                        namespace: INBOX,
                        ttl_ms: 60_000,
                        data: vec![t, i, 7],
                    };
                    store.store(m, T0).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(store);
    // Reopened: the counters and the messages agree.
    let store = allium_swarm::Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(
        store.usage(&mb).unwrap(),
        Usage {
            bytes: 320 * (3 + 128),
            count: 320
        }
    );
    let q = allium_swarm::RetrieveQuery {
        mailbox: mb,
        namespace: INBOX,
        after: None,
        max_count: 1000,
        max_bytes: usize::MAX,
    };
    let page = store.retrieve(&q, T0).unwrap();
    assert_eq!(page.messages.len(), 320);
    assert!(!page.more);
    assert!(page.messages.windows(2).all(|w| w[0].key() < w[1].key()));
}

#[test]
fn node_time_never_runs_backwards() {
    let (dir, s) = service(StoreConfig::default());
    let k = key(1);
    let mb = mailbox(&k);
    let r = call(
        &s,
        &inbox_store(mb, b"before the step", 60_000),
        T0 + 10_000,
    );
    assert_eq!(r.now, T0 + 10_000);
    // The wall clock steps back 10 s: node time holds still instead.
    let r = call(&s, &inbox_store(mb, b"after the step", 60_000), T0);
    assert_eq!(r.now, T0 + 10_000);
    let Ok(ResponseBody::Store(after)) = r.result else {
        panic!("{r:?}")
    };
    assert_eq!(
        after.timestamp,
        T0 + 10_000,
        "timestamps (cursor positions) never go back"
    );
    // The floor survives a restart: it is persisted with the writes.
    drop(s);
    let store = allium_swarm::Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.high_water(), T0 + 10_000);
    let s = Service::new(Arc::new(store), ServiceConfig::new(node_id(NODE)));
    assert_eq!(
        call(&s, &Request::unsigned(Body::Info), T0).now,
        T0 + 10_000
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_async_long_poll_and_a_store_share_one_thread_and_no_wake_up_is_lost() {
    let (_d, s) = service(StoreConfig::default());
    let k = key(1);
    let mb = mailbox(&k);
    let node = node_id(NODE);
    let waiting = |ts| {
        Request::signed(
            Body::Retrieve(RetrieveRequest {
                mailbox: mb,
                namespace: INBOX,
                after: None,
                limit: None,
                wait_ms: Some(30_000),
            }),
            &k,
            &node,
            ts,
        )
    };
    let Handled::Wait(first) = s.handle(&waiting(T0).encode(), T0) else {
        panic!("expected the retrieve to wait")
    };
    let Handled::Wait(second) = s.handle(&waiting(T0 + 1).encode(), T0 + 1) else {
        panic!("expected the retrieve to wait")
    };

    // A store elsewhere wakes nobody here.
    let Handled::Store(other) = s.handle(
        &inbox_store(mailbox(&key(2)), b"elsewhere", 60_000).encode(),
        T0 + 2,
    ) else {
        panic!("expected a queued store")
    };
    assert_eq!(status(&other.finish().await), Status::Ok);
    assert!(!first.watch.is_notified());

    // On a single-threaded runtime the waiter and the store's acknowledgement both make
    // progress: neither holds the thread while it waits.
    let Handled::Store(mine) = s.handle(&inbox_store(mb, b"wake up", 60_000).encode(), T0 + 3)
    else {
        panic!("expected a queued store")
    };
    let (woken, stored) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(20), first.watch.changed()),
        mine.finish()
    );
    assert!(woken.is_ok(), "the store did not wake the long-poll");
    assert_eq!(status(&stored), Status::Ok);

    // The second watch was registered before the store and awaited only after it was durable:
    // it resolves at once rather than missing the wake-up.
    assert!(second.watch.is_notified());
    tokio::time::timeout(Duration::from_secs(20), second.watch.changed())
        .await
        .expect("a wake-up before the await is not lost");
    let got = messages(&s.resume(second, T0 + 4));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"wake up");
}
