//! Anti-entropy on real stores (whitepaper storage §9): two members that diverged converge by
//! pulling from each other, deletes stay deleted, and the later expiry setting wins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use allium_proto::storage::{INBOX, Mailbox, MessageHash};
use allium_proto::sync::{Action, Item, PeerRequest, PeerResponse, Session};
use allium_swarm::{NewMessage, RetrieveQuery, Store, StoreConfig};
use common::{T0, key, mailbox, open};
use proptest::prelude::*;

const TTL: u64 = 3_600_000;

fn put(s: &Store, mb: Mailbox, data: &[u8], now: u64) -> MessageHash {
    s.store(
        NewMessage {
            mailbox: mb,
            namespace: INBOX,
            ttl_ms: TTL,
            data: data.to_vec(),
        },
        now,
    )
    .unwrap()
    .hash
}

fn live(s: &Store, mb: Mailbox, now: u64) -> Vec<(MessageHash, u64)> {
    let page = s
        .retrieve(
            &RetrieveQuery {
                mailbox: mb,
                namespace: INBOX,
                after: None,
                max_count: 1000,
                max_bytes: 1 << 24,
            },
            now,
        )
        .unwrap();
    let mut v: Vec<_> = page.messages.iter().map(|m| (m.hash, m.expiry)).collect();
    v.sort();
    v
}

/// One pull of `into` from `from` as a node runs it: a [`Session`] whose requests and answers
/// go through their encodings. Returns the peer-protocol bytes exchanged.
fn pull(from: &Store, into: &Store, now: u64) -> usize {
    let mut bytes = 0;
    let mut session = Session::new(into.digests(), usize::MAX);
    loop {
        match session.poll() {
            Action::Send(req) => {
                let r = req.encode();
                let req = PeerRequest::decode(&r).unwrap();
                let resp = match &req {
                    PeerRequest::Root => PeerResponse::Root {
                        root: from.digests().root(),
                        now: 0,
                    },
                    PeerRequest::Buckets => PeerResponse::Buckets(from.digests().truncated()),
                    // Smaller pages than asked for (a peer may send fewer), so paging is
                    // exercised.
                    PeerRequest::Entries { bucket, after, .. } => {
                        let (entries, more) = from.entries(*bucket, after.as_ref(), 3).unwrap();
                        PeerResponse::Entries { entries, more }
                    }
                    PeerRequest::Fetch(keys) => {
                        PeerResponse::Fetched(from.fetch(keys, 1 << 20).unwrap())
                    }
                    PeerRequest::Replicate(_) => unreachable!(),
                };
                let out = resp.encode();
                bytes += r.len() + out.len();
                let resp = PeerResponse::decode(&out, req.method()).unwrap();
                session.handle_response(resp).unwrap();
            }
            Action::Reconcile(page) => {
                let plan = into.reconcile(&page, now, |_| true).unwrap();
                session.handle_plan(plan).unwrap();
            }
            Action::Apply(items) => assert!(into.apply_items(items, now).iter().all(Result::is_ok)),
            Action::Done { complete } => {
                assert!(complete);
                return bytes;
            }
        }
    }
}

fn sync(a: &Store, b: &Store, now: u64) {
    pull(a, b, now);
    pull(b, a, now);
}

#[test]
fn diverged_members_converge() {
    let (_da, a) = open(StoreConfig::default());
    let (_db, b) = open(StoreConfig::default());
    let mb = mailbox(&key(1));
    let other = mailbox(&key(2));
    let on_a: Vec<_> = (0..5u8).map(|i| put(&a, mb, &[i], T0)).collect();
    let on_b: Vec<_> = (10..13u8).map(|i| put(&b, mb, &[i], T0 + 1)).collect();
    put(&b, other, b"x", T0 + 2);
    a.delete(mb, INBOX, vec![on_a[1]], T0 + 3).unwrap();
    a.expire(mb, INBOX, vec![on_a[2]], T0 + 60_000, T0 + 4)
        .unwrap();
    assert_ne!(a.digests(), b.digests());
    sync(&a, &b, T0 + 5);
    assert_eq!(a.digests(), b.digests());
    let held = live(&a, mb, T0 + 5);
    assert_eq!(held, live(&b, mb, T0 + 5));
    assert_eq!(held.len(), 4 + on_b.len());
    assert!(!held.iter().any(|(h, _)| *h == on_a[1]));
    assert!(held.contains(&(on_a[2], T0 + 60_000)));
    assert_eq!(live(&a, other, T0 + 5).len(), 1);
    // Once equal, a round costs one root exchange.
    let idle = pull(&a, &b, T0 + 6);
    assert!(idle < 100, "idle round used {idle} bytes");
}

#[test]
fn a_deleted_message_never_comes_back() {
    let (_da, a) = open(StoreConfig::default());
    let (_db, b) = open(StoreConfig::default());
    let mb = mailbox(&key(1));
    let h = put(&a, mb, b"secret", T0);
    sync(&a, &b, T0 + 1);
    assert_eq!(live(&b, mb, T0 + 1).len(), 1);
    // B deletes while A is away; A still holds the message.
    b.delete(mb, INBOX, vec![h], T0 + 2).unwrap();
    // B pulling from A must not resurrect it; A pulling from B must drop it.
    pull(&a, &b, T0 + 3);
    assert!(live(&b, mb, T0 + 3).is_empty());
    pull(&b, &a, T0 + 3);
    assert!(live(&a, mb, T0 + 3).is_empty());
    assert_eq!(a.digests(), b.digests());
    // A late replica or a retried client store of the same bytes changes nothing.
    let replica = a.fetch(&[], 0).unwrap();
    assert!(replica.is_empty());
    put(&b, mb, b"secret", T0 + 4);
    assert!(live(&b, mb, T0 + 4).is_empty());
}

#[test]
fn a_delete_arriving_before_its_message_wins() {
    let (_da, a) = open(StoreConfig::default());
    let (_db, b) = open(StoreConfig::default());
    let mb = mailbox(&key(1));
    let h = put(&a, mb, b"m", T0);
    // B hears of the delete before the message itself.
    b.delete(mb, INBOX, vec![h], T0 + 1).unwrap();
    let items = a
        .fetch(
            &[allium_proto::sync::EntryKey {
                mailbox: mb,
                namespace: INBOX,
                hash: h,
            }],
            1 << 20,
        )
        .unwrap();
    assert!(matches!(items[0], Item::Message(_)));
    assert!(b.apply_items(items, T0 + 2).iter().all(Result::is_ok));
    assert!(live(&b, mb, T0 + 2).is_empty());
}

#[test]
fn the_later_expiry_setting_wins_even_when_shorter() {
    let (_da, a) = open(StoreConfig::default());
    let (_db, b) = open(StoreConfig::default());
    let mb = mailbox(&key(1));
    let h = put(&a, mb, b"m", T0);
    sync(&a, &b, T0 + 1);
    b.expire(mb, INBOX, vec![h], T0 + 20_000, T0 + 10).unwrap();
    sync(&a, &b, T0 + 11);
    assert_eq!(live(&a, mb, T0 + 11), vec![(h, T0 + 20_000)]);
    assert_eq!(a.digests(), b.digests());
}

#[test]
fn digests_are_recomputed_exactly_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mb = mailbox(&key(1));
    let before = {
        let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let hs: Vec<_> = (0..20u8).map(|i| put(&s, mb, &[i], T0)).collect();
        s.delete(mb, INBOX, hs[..5].to_vec(), T0 + 1).unwrap();
        s.expire(mb, INBOX, hs[5..8].to_vec(), T0 + 50_000, T0 + 2)
            .unwrap();
        s.digests()
    };
    let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(s.digests(), before);
}

#[test]
fn forget_drops_a_mailbox_without_tombstones() {
    let (_d, s) = open(StoreConfig::default());
    let mb = mailbox(&key(1));
    let keep = mailbox(&key(2));
    let h = put(&s, mb, b"a", T0);
    put(&s, mb, b"b", T0);
    put(&s, keep, b"c", T0);
    s.delete(mb, INBOX, vec![h], T0 + 1).unwrap();
    assert_eq!(s.forget(mb, T0 + 2).unwrap(), 2);
    assert!(live(&s, mb, T0 + 2).is_empty());
    assert!(s.mailbox_keys(&mb).unwrap().is_empty());
    assert_eq!(live(&s, keep, T0 + 2).len(), 1);
    assert_eq!(s.usage(&mb).unwrap().count, 0);
    // The mailbox can be handed back later: nothing blocks its messages.
    put(&s, mb, b"a", T0 + 3);
    assert_eq!(live(&s, mb, T0 + 3).len(), 1);
    assert_eq!(s.next_mailbox(None).unwrap(), Some(mb.min(keep)));
}

#[test]
fn expired_tombstones_are_swept() {
    let (_d, s) = open(StoreConfig {
        ttl_min_ms: 1_000,
        ttl_max_ms: 10_000,
        ..StoreConfig::default()
    });
    let mb = mailbox(&key(1));
    let h = MessageHash([9; 32]);
    s.delete(mb, INBOX, vec![h], T0).unwrap();
    assert_eq!(s.mailbox_keys(&mb).unwrap().len(), 1);
    assert_eq!(s.sweep_expired(T0 + 10_001, 100).unwrap(), 1);
    assert!(s.mailbox_keys(&mb).unwrap().is_empty());
    assert_eq!(s.digests(), allium_proto::sync::Digests::default());
}

#[derive(Debug, Clone)]
enum Op {
    Store(bool, u8),
    Delete(bool, u8),
    Expire(bool, u8, u16),
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0..24u8).prop_map(|(m, d)| Op::Store(m, d)),
        2 => (any::<bool>(), 0..24u8).prop_map(|(m, d)| Op::Delete(m, d)),
        2 => (any::<bool>(), 0..24u8, 1..600u16).prop_map(|(m, d, s)| Op::Expire(m, d, s)),
        1 => Just(Op::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever two members did apart, after one pull each way they hold the same messages with
    /// the same expiries, and nothing either deleted.
    #[test]
    fn any_history_converges(ops in proptest::collection::vec(op(), 1..40)) {
        let (_da, a) = open(StoreConfig::default());
        let (_db, b) = open(StoreConfig::default());
        let mbs = [mailbox(&key(1)), mailbox(&key(2))];
        let mut deleted = std::collections::HashSet::new();
        let mut t = T0;
        for op in ops {
            t += 7;
            let pick = |x: bool| if x { &a } else { &b };
            match op {
                Op::Store(m, d) => { put(pick(m), mbs[usize::from(d % 2)], &[d], t); }
                Op::Delete(m, d) => {
                    let mb = mbs[usize::from(d % 2)];
                    let h = allium_proto::crypto::content_hash(&mb, INBOX, &[d]);
                    pick(m).delete(mb, INBOX, vec![h], t).unwrap();
                    deleted.insert(h);
                }
                Op::Expire(m, d, secs) => {
                    let mb = mbs[usize::from(d % 2)];
                    let h = allium_proto::crypto::content_hash(&mb, INBOX, &[d]);
                    pick(m).expire(mb, INBOX, vec![h], t + u64::from(secs) * 1000, t).unwrap();
                }
                Op::Sync => sync(&a, &b, t),
            }
        }
        t += 1;
        sync(&a, &b, t);
        prop_assert_eq!(a.digests(), b.digests());
        for mb in mbs {
            let held = live(&a, mb, t);
            prop_assert_eq!(&held, &live(&b, mb, t));
            prop_assert!(held.iter().all(|(h, _)| !deleted.contains(h)));
        }
    }
}
