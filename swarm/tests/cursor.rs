//! The retrieve cursor (whitepaper §7) against two real stores that receive the same messages
//! at different times and in different orders: a client polling either member, in any order,
//! never misses a message, and repeats are dropped by hash.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use allium_proto::cursor::Cursor;
use allium_proto::storage::{INBOX, Mailbox, MessageHash, RetrieveResponse};
use allium_proto::sync::{Item, ItemMessage};
use allium_swarm::{NewMessage, RetrieveQuery, Store, StoreConfig};
use common::{T0, key, mailbox, open};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

const D: u64 = 2_000; // replication bound
const S: u64 = 500; // clock skew bound
const TTL: u64 = 3_600_000;

struct Member {
    store: Store,
    skew: i64,
}

impl Member {
    fn clock(&self, t: u64) -> u64 {
        t.saturating_add_signed(self.skew)
    }
}

/// One polling round at `m` at true time `t`, paging with `limit`; feeds the cursor.
fn poll(
    m: &Member,
    mb: Mailbox,
    cursor: &mut Cursor,
    t: u64,
    limit: usize,
    seen: &mut Vec<MessageHash>,
) -> usize {
    let mut repeats = 0;
    loop {
        let now = m.clock(t);
        let q = RetrieveQuery {
            mailbox: mb,
            namespace: INBOX,
            after: cursor.after(),
            max_count: limit,
            max_bytes: usize::MAX,
        };
        let page = m.store.retrieve(&q, now).unwrap();
        let n = page.messages.len();
        let fresh = cursor.accept(
            now,
            &RetrieveResponse {
                messages: page.messages,
                more: page.more,
            },
        );
        repeats += n - fresh.len();
        seen.extend(fresh.iter().map(|m| m.hash));
        if !page.more {
            return repeats;
        }
    }
}

#[derive(Debug, Clone)]
enum Event {
    /// A client stores message `id` at member `at`; it reaches the other member `delay` later.
    Store { at: usize, delay: u64 },
    /// The owner polls member `at` with page size `limit`.
    Poll { at: usize, limit: usize },
}

fn event() -> impl Strategy<Value = (u64, Event)> {
    let gap = 0..1_500u64;
    prop_oneof![
        (gap.clone(), 0..2usize, 0..=D).prop_map(|(g, at, delay)| (g, Event::Store { at, delay })),
        (gap, 0..2usize, 1..4usize).prop_map(|(g, at, limit)| (g, Event::Poll { at, limit })),
    ]
}

fn simulate(skew_b: i64, events: Vec<(u64, Event)>, overlap: u64) -> (usize, usize, usize) {
    let (_da, a) = open(StoreConfig {
        overlap_ms: D + S,
        ..StoreConfig::default()
    });
    let (_db, b) = open(StoreConfig {
        overlap_ms: D + S,
        ..StoreConfig::default()
    });
    let members = [
        Member { store: a, skew: 0 },
        Member {
            store: b,
            skew: skew_b,
        },
    ];
    let mb = mailbox(&key(1));
    let mut cursor = Cursor::new(overlap);
    let mut seen = Vec::new();
    let mut repeats = 0;
    let mut all = HashSet::new();
    // Pending replications, by true delivery time.
    let mut pending: BTreeMap<(u64, u64), (usize, ItemMessage)> = BTreeMap::new();
    let mut t = T0;
    let mut id = 0u64;
    let deliver = |until: u64, pending: &mut BTreeMap<(u64, u64), (usize, ItemMessage)>| {
        while let Some((&(when, _), _)) = pending.first_key_value() {
            if when > until {
                break;
            }
            let ((when, _), (to, msg)) = pending.pop_first().unwrap();
            let m = &members[to];
            for r in m.store.apply_items(vec![Item::Message(msg)], m.clock(when)) {
                r.unwrap();
            }
        }
    };
    for (gap, ev) in events {
        t += gap;
        deliver(t, &mut pending);
        match ev {
            Event::Store { at, delay } => {
                let data = id.to_be_bytes().to_vec();
                id += 1;
                let m = &members[at];
                let r = m
                    .store
                    .store(
                        NewMessage {
                            mailbox: mb,
                            namespace: INBOX,
                            ttl_ms: TTL,
                            data: data.clone(),
                        },
                        m.clock(t),
                    )
                    .unwrap();
                all.insert(r.hash);
                let replica = ItemMessage {
                    mailbox: mb,
                    namespace: INBOX,
                    timestamp: r.timestamp,
                    expiry: r.expiry,
                    set_at: r.timestamp,
                    data,
                };
                pending.insert((t + delay, id), (1 - at, replica));
            }
            Event::Poll { at, limit } => {
                repeats += poll(&members[at], mb, &mut cursor, t, limit, &mut seen)
            }
        }
    }
    // Let replication finish, then one more poll at each member, in a fixed order.
    t += D + 1;
    deliver(u64::MAX, &mut pending);
    repeats += poll(&members[0], mb, &mut cursor, t, 2, &mut seen);
    repeats += poll(&members[1], mb, &mut cursor, t + 1, 2, &mut seen);
    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "the cursor handed a message out twice"
    );
    let missed = all.difference(&unique).count();
    (missed, repeats, all.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    /// With overlap = D + S, no message is ever missed, whatever the order of polls and
    /// deliveries; the final polls at either member return nothing new that was missed earlier.
    #[test]
    fn no_message_is_missed(skew in -(S as i64)..=(S as i64), events in proptest::collection::vec(event(), 1..40)) {
        let (missed, _repeats, _total) = simulate(skew, events, D + S);
        prop_assert_eq!(missed, 0);
    }
}

/// The overlap is what makes it work: the same schedule with no overlap loses a message that
/// reached the polled member late (the test can fail).
#[test]
fn without_overlap_a_late_replica_is_missed() {
    let schedule = vec![
        (
            0,
            Event::Store {
                at: 0,
                delay: 1_500,
            },
        ), // at A at t0, reaches B at t0 + 1.5 s
        (1_000, Event::Poll { at: 1, limit: 10 }), // B polled before the replica arrives
    ];
    // Polling B moves a zero-overlap cursor past the message's timestamp; the final polls at A
    // and B then start after it.
    let (missed, _, _) = simulate(0, schedule.clone(), 0);
    assert_eq!(missed, 1);
    let (missed, _, _) = simulate(0, schedule, D + S);
    assert_eq!(missed, 0);
}

/// A replica that arrives later than D + S is filed at `now - (D + S)` at that member, so a client that
/// polls only that member still sees it.
#[test]
fn late_replica_is_refiled_and_seen() {
    let (_d, b) = open(StoreConfig {
        overlap_ms: D + S,
        ..StoreConfig::default()
    });
    let mb = mailbox(&key(1));
    let member = Member { store: b, skew: 0 };
    let mut cursor = Cursor::new(D + S);
    let mut seen = Vec::new();
    poll(&member, mb, &mut cursor, T0 + 10_000, 5, &mut seen);
    // Accepted elsewhere at T0, arrives here at T0 + 20 s: ten times the bound late.
    let replica = ItemMessage {
        mailbox: mb,
        namespace: INBOX,
        timestamp: T0,
        expiry: T0 + TTL,
        set_at: T0,
        data: b"late".to_vec(),
    };
    let applied = member
        .store
        .apply_items(vec![Item::Message(replica)], T0 + 20_000);
    assert!(applied.iter().all(Result::is_ok));
    poll(&member, mb, &mut cursor, T0 + 20_001, 5, &mut seen);
    assert_eq!(seen.len(), 1);
    let page = member
        .store
        .retrieve(
            &RetrieveQuery {
                mailbox: mb,
                namespace: INBOX,
                after: None,
                max_count: 10,
                max_bytes: 1 << 20,
            },
            T0 + 20_001,
        )
        .unwrap();
    assert_eq!(page.messages[0].timestamp, T0 + 20_000 - (D + S));
}

/// Repeats are bounded: polling the same member again and again, with no new messages, returns
/// each message at most until the cursor passes it, i.e. within `overlap` of node time.
#[test]
fn repeats_stop_after_the_overlap() {
    let (_d, a) = open(StoreConfig::default());
    let mb = mailbox(&key(1));
    let member = Member { store: a, skew: 0 };
    for i in 0..5u8 {
        member
            .store
            .store(
                NewMessage {
                    mailbox: mb,
                    namespace: INBOX,
                    ttl_ms: TTL,
                    data: vec![i],
                },
                T0 + u64::from(i),
            )
            .unwrap();
    }
    let mut cursor = Cursor::new(D + S);
    let mut seen = Vec::new();
    assert_eq!(poll(&member, mb, &mut cursor, T0 + 10, 2, &mut seen), 0);
    assert_eq!(seen.len(), 5);
    // Within the overlap the messages come back (and are dropped as repeats)…
    assert_eq!(poll(&member, mb, &mut cursor, T0 + 100, 2, &mut seen), 5);
    // …once a round starts after their timestamp + overlap, the next one no longer returns them.
    poll(&member, mb, &mut cursor, T0 + 10 + D + S, 2, &mut seen);
    assert_eq!(
        poll(&member, mb, &mut cursor, T0 + 20 + D + S, 2, &mut seen),
        0
    );
    assert_eq!(seen.len(), 5);
    assert!(cursor.remembered() <= 5);
}

/// Positions differ between members once a replica arrives late (§8.3): a round that took one
/// page from each member could fall between them and still move the cursor past the message.
/// A round whose pages all come from the member that answered the first sees it.
#[test]
fn a_round_keeps_to_one_member_when_positions_differ() {
    let mb = mailbox(&key(1));
    let overlap = D + S;
    let setup = || {
        let (da, a) = open(StoreConfig {
            overlap_ms: overlap,
            ..StoreConfig::default()
        });
        let (db, b) = open(StoreConfig {
            overlap_ms: overlap,
            ..StoreConfig::default()
        });
        let item = |data: &[u8], at: u64| ItemMessage {
            mailbox: mb,
            namespace: INBOX,
            timestamp: at,
            expiry: at + TTL,
            set_at: at,
            data: data.to_vec(),
        };
        // `m` accepted by A at T0; `q` by B at T0 + 5 D, reaching A on time. `m` reaches B ten
        // times D late, and B files it at `now - overlap`, after `q`.
        let m = a
            .store(
                NewMessage {
                    mailbox: mb,
                    namespace: INBOX,
                    ttl_ms: TTL,
                    data: b"m".to_vec(),
                },
                T0,
            )
            .unwrap();
        let q = item(b"q", T0 + 5 * D);
        for r in b.apply_items(vec![Item::Message(q.clone())], T0 + 5 * D) {
            r.unwrap();
        }
        for r in a.apply_items(vec![Item::Message(q)], T0 + 5 * D + 1) {
            r.unwrap();
        }
        for r in b.apply_items(vec![Item::Message(item(b"m", T0))], T0 + 10 * D) {
            r.unwrap();
        }
        ((da, a), (db, b), m.hash)
    };
    let page = |store: &Store, cursor: &Cursor, now: u64| {
        let p = store
            .retrieve(
                &RetrieveQuery {
                    mailbox: mb,
                    namespace: INBOX,
                    after: cursor.after(),
                    max_count: 1,
                    max_bytes: usize::MAX,
                },
                now,
            )
            .unwrap();
        RetrieveResponse {
            messages: p.messages,
            more: p.more,
        }
    };
    let now = T0 + 10 * D + 1;

    // First page from B (it holds `q` first), the next from A (after `q`, where A holds
    // nothing): `m` is in neither, and the round ends past both its positions.
    let ((_da, a), (_db, b), m) = setup();
    let mut cursor = Cursor::new(overlap);
    let mut seen: Vec<MessageHash> = Vec::new();
    let first = page(&b, &cursor, now);
    assert!(first.more);
    seen.extend(cursor.accept(now, &first).iter().map(|x| x.hash));
    let second = page(&a, &cursor, now);
    assert!(!second.more);
    seen.extend(cursor.accept(now, &second).iter().map(|x| x.hash));
    let mut later = Vec::new();
    poll(
        &Member { store: a, skew: 0 },
        mb,
        &mut cursor,
        now + 1,
        5,
        &mut later,
    );
    poll(
        &Member { store: b, skew: 0 },
        mb,
        &mut cursor,
        now + 2,
        5,
        &mut later,
    );
    seen.extend(later);
    assert!(!seen.contains(&m), "mixing members lost nothing this time?");

    // The same round kept at B returns `m` on its second page.
    let ((_da, _a), (_db, b), m) = setup();
    let mut cursor = Cursor::new(overlap);
    let mut seen = Vec::new();
    poll(
        &Member { store: b, skew: 0 },
        mb,
        &mut cursor,
        now,
        1,
        &mut seen,
    );
    assert!(seen.contains(&m));
}
