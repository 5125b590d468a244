//! Model-based property test: random sequences of store / retrieve / delete / delete_all /
//! expire / sweep / clock advances against a real RocksDB store, each result checked against a
//! small in-memory model of the rules (whitepaper §5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::{BTreeMap, HashSet};

use allium_proto::crypto::content_hash;
use allium_proto::storage::{CursorKey, INBOX, Mailbox, MessageHash, Namespace, StoredMessage};
use allium_swarm::store::{MESSAGE_OVERHEAD, Usage};
use allium_swarm::{NewMessage, RetrieveQuery, StoreConfig, StoreError};
use common::{T0, key, mailbox, open};
use proptest::prelude::*;

const TTL_MIN: u64 = 10_000;
const TTL_MAX: u64 = 100_000;
const QUOTA: u64 = 1_800;
const CAP: u64 = 3_000;
const SIZES: [usize; 6] = [1, 40, 200, 350, 600, 900];

#[derive(Debug, Clone)]
enum Op {
    Store {
        mb: usize,
        ns: Namespace,
        data: usize,
        ttl: u64,
    },
    Retrieve {
        mb: usize,
        ns: Namespace,
        after: Option<usize>,
        limit: usize,
    },
    Delete {
        mb: usize,
        ns: Namespace,
        data: Vec<usize>,
    },
    DeleteAll {
        mb: usize,
        ns: Namespace,
    },
    Expire {
        mb: usize,
        ns: Namespace,
        data: Vec<usize>,
        offset: i64,
    },
    Sweep,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let mb = 0..2usize;
    let ns = prop_oneof![Just(INBOX), Just(7u16)];
    let data = 0..SIZES.len();
    let ttl = prop_oneof![
        Just(TTL_MIN - 1),
        Just(TTL_MIN),
        Just(30_000u64),
        Just(TTL_MAX),
        Just(TTL_MAX + 1)
    ];
    let offset = prop_oneof![
        Just(-1_000i64),
        Just(0),
        Just(1),
        Just(15_000),
        Just(TTL_MAX as i64),
        Just(TTL_MAX as i64 + 1)
    ];
    prop_oneof![
        5 => (mb.clone(), ns.clone(), data.clone(), ttl).prop_map(|(mb, ns, data, ttl)| Op::Store { mb, ns, data, ttl }),
        3 => (mb.clone(), ns.clone(), proptest::option::of(0..8usize), 1..5usize)
            .prop_map(|(mb, ns, after, limit)| Op::Retrieve { mb, ns, after, limit }),
        1 => (mb.clone(), ns.clone(), proptest::collection::vec(data.clone(), 1..4))
            .prop_map(|(mb, ns, data)| Op::Delete { mb, ns, data }),
        1 => (mb.clone(), ns.clone()).prop_map(|(mb, ns)| Op::DeleteAll { mb, ns }),
        1 => (mb, ns, proptest::collection::vec(data, 1..4), offset)
            .prop_map(|(mb, ns, data, offset)| Op::Expire { mb, ns, data, offset }),
        1 => Just(Op::Sweep),
        2 => (0..40_000u64).prop_map(Op::Advance),
    ]
}

fn payload(i: usize) -> Vec<u8> {
    let mut d = vec![i as u8; SIZES[i]];
    d[0] = 0xa0 + i as u8;
    d
}

/// (mailbox, namespace, timestamp, hash) → (expiry, data).
type Messages = BTreeMap<(Mailbox, Namespace, u64, MessageHash), (u64, Vec<u8>)>;

/// The rules, as plainly as possible.
#[derive(Default)]
struct Model {
    msgs: Messages,
    /// Deleted (mailbox, namespace, hash) → keep-until: a store of it changes nothing.
    tombs: BTreeMap<(Mailbox, Namespace, MessageHash), u64>,
}

impl Model {
    fn find(
        &self,
        mb: Mailbox,
        ns: Namespace,
        h: MessageHash,
    ) -> Option<(u64, MessageHash, Namespace, Mailbox)> {
        self.msgs
            .keys()
            .find(|k| k.0 == mb && k.1 == ns && k.3 == h)
            .map(|k| (k.2, k.3, k.1, k.0))
    }
    fn bury(&mut self, k: (Mailbox, Namespace, MessageHash), until: u64) {
        let t = self.tombs.entry(k).or_insert(until);
        *t = (*t).max(until);
    }
    fn usage(&self, mb: Option<Mailbox>) -> Usage {
        let mut u = Usage::default();
        for (k, (_, d)) in &self.msgs {
            if mb.is_none_or(|m| m == k.0) {
                u.bytes += d.len() as u64 + MESSAGE_OVERHEAD;
                u.count += 1;
            }
        }
        u
    }
    fn live(&self, mb: Mailbox, ns: Namespace, now: u64) -> Vec<StoredMessage> {
        self.msgs
            .iter()
            .filter(|(k, (exp, _))| k.0 == mb && k.1 == ns && *exp > now)
            .map(|(k, (exp, d))| StoredMessage {
                hash: k.3,
                timestamp: k.2,
                expiry: *exp,
                data: d.clone(),
            })
            .collect()
    }
}

fn run(ops: Vec<Op>) {
    let cfg = StoreConfig {
        ttl_min_ms: TTL_MIN,
        ttl_max_ms: TTL_MAX,
        mailbox_quota_bytes: QUOTA,
        node_cap_bytes: CAP,
        ..StoreConfig::default()
    };
    let (_dir, store) = open(cfg);
    let mbs = [mailbox(&key(1)), mailbox(&key(2))];
    let mut model = Model::default();
    let mut now = T0;
    for op in ops {
        match op {
            Op::Store { mb, ns, data, ttl } => {
                let (mb, d) = (mbs[mb], payload(data));
                let h = content_hash(&mb, ns, &d);
                let got = store.store(
                    NewMessage {
                        mailbox: mb,
                        namespace: ns,
                        ttl_ms: ttl,
                        data: d.clone(),
                    },
                    now,
                );
                if !(TTL_MIN..=TTL_MAX).contains(&ttl) {
                    assert!(
                        matches!(got, Err(StoreError::TtlOutOfRange { .. })),
                        "{got:?}"
                    );
                    continue;
                }
                let expiry = now + ttl;
                match model.tombs.get(&(mb, ns, h)) {
                    Some(&until) if until > now => {
                        let r = got.unwrap();
                        assert!(r.duplicate);
                        assert_eq!((r.timestamp, r.expiry), (now, until));
                        continue;
                    }
                    Some(_) => {
                        model.tombs.remove(&(mb, ns, h));
                    }
                    None => {}
                }
                if let Some((ts, ..)) = model.find(mb, ns, h) {
                    let entry = model.msgs.get_mut(&(mb, ns, ts, h)).unwrap();
                    if entry.0 > now {
                        entry.0 = entry.0.max(expiry);
                        let r = got.unwrap();
                        assert!(r.duplicate);
                        assert_eq!((r.timestamp, r.expiry), (ts, entry.0));
                        continue;
                    }
                    model.msgs.remove(&(mb, ns, ts, h));
                }
                let c = d.len() as u64 + MESSAGE_OVERHEAD;
                if model.usage(Some(mb)).bytes + c > QUOTA {
                    assert!(matches!(got, Err(StoreError::QuotaExceeded)), "{got:?}");
                } else if model.usage(None).bytes + c > CAP {
                    assert!(matches!(got, Err(StoreError::NodeFull)), "{got:?}");
                } else {
                    let r = got.unwrap();
                    assert!(!r.duplicate);
                    assert_eq!((r.hash, r.timestamp, r.expiry), (h, now, expiry));
                    model.msgs.insert((mb, ns, now, h), (expiry, d));
                }
            }
            Op::Retrieve {
                mb,
                ns,
                after,
                limit,
            } => {
                let mb = mbs[mb];
                let live = model.live(mb, ns, now);
                // Cursors from live messages, and one past a message that may be gone.
                let after = after
                    .and_then(|i| live.get(i).map(StoredMessage::key))
                    .or_else(|| after.map(|i| CursorKey::after_time(T0 + i as u64 * 10_000)));
                let want: Vec<_> = live
                    .into_iter()
                    .filter(|m| after.is_none_or(|a| m.key() > a))
                    .collect();
                let q = RetrieveQuery {
                    mailbox: mb,
                    namespace: ns,
                    after,
                    max_count: limit,
                    max_bytes: usize::MAX,
                };
                let page = store.retrieve(&q, now).unwrap();
                assert_eq!(page.more, want.len() > limit);
                assert_eq!(
                    page.messages,
                    want.into_iter().take(limit).collect::<Vec<_>>()
                );
            }
            Op::Delete { mb, ns, data } => {
                let mb = mbs[mb];
                let hashes: Vec<_> = data
                    .iter()
                    .map(|&i| content_hash(&mb, ns, &payload(i)))
                    .collect();
                let mut want = Vec::new();
                let mut seen = HashSet::new();
                for &h in &hashes {
                    if !seen.insert(h) {
                        continue;
                    }
                    let mut until = now + TTL_MAX;
                    if let Some((ts, ..)) = model.find(mb, ns, h) {
                        let (exp, _) = model.msgs.remove(&(mb, ns, ts, h)).unwrap();
                        until = until.max(exp);
                        if exp > now {
                            want.push(h);
                        }
                    }
                    model.bury((mb, ns, h), until);
                }
                assert_eq!(store.delete(mb, ns, hashes, now).unwrap(), want);
            }
            Op::DeleteAll { mb, ns } => {
                let mb = mbs[mb];
                let want = model.live(mb, ns, now).len() as u64;
                let gone: Vec<_> = model
                    .msgs
                    .iter()
                    .filter(|(k, _)| k.0 == mb && k.1 == ns)
                    .map(|(k, (exp, _))| ((k.0, k.1, k.3), *exp))
                    .collect();
                for (k, exp) in gone {
                    model.bury(k, exp);
                }
                model.msgs.retain(|k, _| !(k.0 == mb && k.1 == ns));
                assert_eq!(store.delete_all(mb, ns, now).unwrap(), want);
            }
            Op::Expire {
                mb,
                ns,
                data,
                offset,
            } => {
                let mb = mbs[mb];
                let hashes: Vec<_> = data
                    .iter()
                    .map(|&i| content_hash(&mb, ns, &payload(i)))
                    .collect();
                let expiry = now.saturating_add_signed(offset);
                let got = store.expire(mb, ns, hashes.clone(), expiry, now);
                if expiry <= now || expiry > now + TTL_MAX {
                    assert!(matches!(got, Err(StoreError::ExpiryOutOfRange)), "{got:?}");
                    continue;
                }
                let mut want = Vec::new();
                let mut seen = HashSet::new();
                for h in hashes {
                    if !seen.insert(h) {
                        continue;
                    }
                    if let Some((ts, ..)) = model.find(mb, ns, h) {
                        let e = model.msgs.get_mut(&(mb, ns, ts, h)).unwrap();
                        if e.0 > now {
                            e.0 = expiry;
                            want.push((h, expiry));
                        }
                    }
                }
                assert_eq!(got.unwrap(), want);
            }
            Op::Sweep => {
                let before = model.msgs.len() + model.tombs.len();
                model.msgs.retain(|_, (exp, _)| *exp > now);
                model.tombs.retain(|_, until| *until > now);
                let want = (before - model.msgs.len() - model.tombs.len()) as u64;
                assert_eq!(store.sweep_expired(now, usize::MAX).unwrap(), want);
            }
            Op::Advance(ms) => now += ms,
        }
        for mb in mbs {
            assert_eq!(store.usage(&mb).unwrap(), model.usage(Some(mb)));
        }
        assert_eq!(store.total().unwrap(), model.usage(None));
    }
    // Never-returned-after-expiry holds for every namespace at the end as well.
    for mb in mbs {
        for ns in [INBOX, 7] {
            let q = RetrieveQuery {
                mailbox: mb,
                namespace: ns,
                after: None,
                max_count: 1000,
                max_bytes: usize::MAX,
            };
            let page = store.retrieve(&q, now).unwrap();
            assert_eq!(page.messages, model.live(mb, ns, now));
            assert!(page.messages.iter().all(|m| m.expiry > now));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..50)) {
        run(ops);
    }
}
