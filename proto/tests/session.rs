//! The anti-entropy session (whitepaper storage §9.4) without a network: scripted peers check
//! the requests, their order, the budget and completeness rules and the errors; a property test
//! drives two in-memory members through sessions until their digests agree.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::BTreeMap;

use allium_proto::crypto::content_hash;
use allium_proto::storage::{INBOX, Mailbox, MessageHash};
use allium_proto::sync::{
    Action, Digests, Entry, EntryKey, EntryState, Item, ItemMessage, MAX_ENTRIES, MAX_FETCH,
    PeerMethod, PeerRequest, PeerResponse, Plan, Session, SessionError,
};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;
/// When the pulls in these tests run; every expiry is later.
const NOW: u64 = T0 + 100_000;
const EXPIRY: u64 = T0 + 10_000_000;

fn mailbox(bucket: u8, n: u8) -> Mailbox {
    let mut b = [0u8; 32];
    b[0] = bucket;
    b[1] = n;
    Mailbox::from_bytes(b)
}

fn key(bucket: u8, n: u16) -> EntryKey {
    let mut hash = [0u8; 32];
    hash[..2].copy_from_slice(&n.to_be_bytes());
    EntryKey {
        mailbox: mailbox(bucket, 0),
        namespace: INBOX,
        hash: MessageHash(hash),
    }
}

fn live(key: EntryKey) -> Entry {
    Entry {
        key,
        state: EntryState::Live {
            expiry: EXPIRY,
            set_at: T0,
        },
    }
}

fn message(key: &EntryKey, len: usize) -> Item {
    Item::Message(ItemMessage {
        mailbox: key.mailbox,
        namespace: key.namespace,
        timestamp: T0,
        expiry: EXPIRY,
        set_at: T0,
        data: vec![7; len],
    })
}

fn digests(entries: &[Entry]) -> Digests {
    let mut d = Digests::default();
    for e in entries {
        d.toggle(e);
    }
    d
}

fn entries_request(bucket: u8, after: Option<EntryKey>) -> Action {
    Action::Send(PeerRequest::Entries {
        bucket,
        after,
        limit: MAX_ENTRIES as u16,
    })
}

/// Expects `action` next and hands in `response`.
fn exchange(s: &mut Session, action: Action, response: PeerResponse) {
    assert_eq!(s.poll(), action);
    s.handle_response(response).unwrap();
}

/// Starts a pull whose peer holds `theirs` and this member nothing: `root` and `buckets`.
fn diverged(theirs: &[Entry], budget: usize) -> Session {
    let peer = digests(theirs);
    let mut s = Session::new(Digests::default(), budget);
    exchange(
        &mut s,
        Action::Send(PeerRequest::Root),
        PeerResponse::Root {
            root: peer.root(),
            now: 0,
        },
    );
    exchange(
        &mut s,
        Action::Send(PeerRequest::Buckets),
        PeerResponse::Buckets(peer.truncated()),
    );
    s
}

#[test]
fn equal_roots_cost_one_request() {
    let mine = digests(&[live(key(3, 1))]);
    let mut s = Session::new(mine.clone(), 1 << 20);
    exchange(
        &mut s,
        Action::Send(PeerRequest::Root),
        PeerResponse::Root {
            root: mine.root(),
            now: 0,
        },
    );
    assert_eq!(s.poll(), Action::Done { complete: true });
    // A finished session stays finished.
    assert_eq!(s.poll(), Action::Done { complete: true });
}

#[test]
fn differing_buckets_are_paged_reconciled_and_fetched_in_chunks() {
    let page1: Vec<Entry> = (0..2).map(|n| live(key(3, n))).collect();
    let page2 = vec![live(key(3, 2))];
    let page3 = vec![live(key(9, 0))];
    let all: Vec<Entry> = [&page1[..], &page2, &page3].concat();
    let mut s = diverged(&all, 1 << 20);

    exchange(
        &mut s,
        entries_request(3, None),
        PeerResponse::Entries {
            entries: page1.clone(),
            more: true,
        },
    );
    assert_eq!(s.poll(), Action::Reconcile(page1.clone()));
    // The plan's keys stand for a page of 2,048 entries: more than two fetches' worth.
    let missing: Vec<EntryKey> = (100..100 + 2 * MAX_FETCH as u16 + 44)
        .map(|n| key(3, n))
        .collect();
    let tombstone = Item::Tombstone {
        key: key(3, 1),
        until: EXPIRY,
    };
    s.handle_plan(Plan {
        apply: vec![tombstone.clone()],
        fetch: missing.clone(),
    })
    .unwrap();
    // The plan's own items first, then each fetch and its answer, in order.
    assert_eq!(s.poll(), Action::Apply(vec![tombstone]));
    for chunk in missing.chunks(MAX_FETCH) {
        let items: Vec<Item> = chunk.iter().map(|k| message(k, 10)).collect();
        exchange(
            &mut s,
            Action::Send(PeerRequest::Fetch(chunk.to_vec())),
            PeerResponse::Fetched(items.clone()),
        );
        assert_eq!(s.poll(), Action::Apply(items));
    }
    // The next page starts after the last entry of this one.
    exchange(
        &mut s,
        entries_request(3, Some(page1[1].key)),
        PeerResponse::Entries {
            entries: page2.clone(),
            more: false,
        },
    );
    assert_eq!(s.poll(), Action::Reconcile(page2));
    s.handle_plan(Plan::default()).unwrap();
    // Then the next differing bucket, from its start.
    exchange(
        &mut s,
        entries_request(9, None),
        PeerResponse::Entries {
            entries: page3.clone(),
            more: false,
        },
    );
    assert_eq!(s.poll(), Action::Reconcile(page3.clone()));
    s.handle_plan(Plan {
        apply: Vec::new(),
        fetch: vec![page3[0].key],
    })
    .unwrap();
    let item = message(&page3[0].key, 10);
    exchange(
        &mut s,
        Action::Send(PeerRequest::Fetch(vec![page3[0].key])),
        PeerResponse::Fetched(vec![item.clone()]),
    );
    assert_eq!(s.poll(), Action::Apply(vec![item]));
    assert_eq!(s.poll(), Action::Done { complete: true });
}

/// Runs a pull of one page whose plan fetches `keys`, the peer answering each fetch with
/// messages of `len` bytes; returns the fetches sent and how the pull ended.
fn fetch_all(budget: usize, keys: usize, len: usize) -> (usize, bool) {
    let page = vec![live(key(5, 0))];
    let mut s = diverged(&page, budget);
    exchange(
        &mut s,
        entries_request(5, None),
        PeerResponse::Entries {
            entries: page,
            more: false,
        },
    );
    assert!(matches!(s.poll(), Action::Reconcile(_)));
    let fetch: Vec<EntryKey> = (0..keys as u16).map(|n| key(5, n)).collect();
    s.handle_plan(Plan {
        apply: Vec::new(),
        fetch,
    })
    .unwrap();
    let mut sent = 0;
    loop {
        match s.poll() {
            Action::Send(PeerRequest::Fetch(k)) => {
                assert!(k.len() <= MAX_FETCH);
                sent += 1;
                let items = k.iter().map(|k| message(k, len)).collect();
                s.handle_response(PeerResponse::Fetched(items)).unwrap();
            }
            Action::Apply(_) => {}
            Action::Done { complete } => return (sent, complete),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_budget_stops_fetches_once_spent() {
    // 256 messages of 4 bytes spend a budget of 1,024 exactly: the second fetch is not sent.
    assert_eq!(fetch_all(1024, 600, 4), (1, false));
    // One byte left still allows a fetch, whose answer may overshoot.
    assert_eq!(fetch_all(1025, 600, 4), (2, false));
    assert_eq!(fetch_all(4 * 600, 600, 4), (3, true));
    // Tombstones and expiries cost nothing; a zero budget still reconciles but fetches nothing.
    assert_eq!(fetch_all(0, 600, 4), (0, false));
    assert_eq!(fetch_all(0, 0, 4), (0, true));
}

#[test]
fn a_short_fetch_answer_leaves_the_pull_incomplete_but_goes_on() {
    let page = vec![live(key(5, 0)), live(key(5, 1))];
    let other = vec![live(key(6, 0))];
    let mut s = diverged(&[&page[..], &other].concat(), 1 << 20);
    exchange(
        &mut s,
        entries_request(5, None),
        PeerResponse::Entries {
            entries: page.clone(),
            more: false,
        },
    );
    s.poll();
    let fetch = vec![page[0].key, page[1].key];
    s.handle_plan(Plan {
        apply: Vec::new(),
        fetch: fetch.clone(),
    })
    .unwrap();
    // The peer no longer holds one of the two.
    let item = message(&page[0].key, 3);
    exchange(
        &mut s,
        Action::Send(PeerRequest::Fetch(fetch)),
        PeerResponse::Fetched(vec![item.clone()]),
    );
    assert_eq!(s.poll(), Action::Apply(vec![item]));
    exchange(
        &mut s,
        entries_request(6, None),
        PeerResponse::Entries {
            entries: other,
            more: false,
        },
    );
    s.poll();
    s.handle_plan(Plan::default()).unwrap();
    assert_eq!(s.poll(), Action::Done { complete: false });
}

#[test]
fn an_empty_page_ends_its_bucket() {
    let mut s = diverged(&[live(key(5, 0))], 1 << 20);
    // `more` without entries gives no place to resume: the bucket is done, with no plan asked.
    exchange(
        &mut s,
        entries_request(5, None),
        PeerResponse::Entries {
            entries: Vec::new(),
            more: true,
        },
    );
    assert_eq!(s.poll(), Action::Done { complete: true });
}

#[test]
fn a_peer_answering_another_method_ends_the_session() {
    let mut s = Session::new(Digests::default(), 1 << 20);
    s.poll();
    let err = s
        .handle_response(PeerResponse::Buckets(Digests::default().truncated()))
        .unwrap_err();
    assert_eq!(
        err,
        SessionError::Mismatch {
            asked: PeerMethod::Root,
            answered: PeerMethod::Buckets,
        }
    );
    assert_eq!(s.poll(), Action::Done { complete: false });

    let mut s = diverged(&[live(key(5, 0))], 1 << 20);
    s.poll();
    let err = s
        .handle_response(PeerResponse::Fetched(Vec::new()))
        .unwrap_err();
    assert_eq!(
        err,
        SessionError::Mismatch {
            asked: PeerMethod::Entries,
            answered: PeerMethod::Fetch,
        }
    );
    assert_eq!(s.poll(), Action::Done { complete: false });
}

#[test]
fn out_of_turn_calls_are_refused_and_change_nothing() {
    let mut s = Session::new(Digests::default(), 1 << 20);
    assert!(matches!(
        s.handle_plan(Plan::default()),
        Err(SessionError::OutOfTurn(_))
    ));
    // Until answered, the request is given again (a caller may retry it).
    assert_eq!(s.poll(), Action::Send(PeerRequest::Root));
    assert_eq!(s.poll(), Action::Send(PeerRequest::Root));

    let page = vec![live(key(5, 0))];
    let mut s = diverged(&page, 1 << 20);
    exchange(
        &mut s,
        entries_request(5, None),
        PeerResponse::Entries {
            entries: page.clone(),
            more: false,
        },
    );
    assert!(matches!(
        s.handle_response(PeerResponse::Root {
            root: [0; 32],
            now: 0
        }),
        Err(SessionError::OutOfTurn(_))
    ));
    assert_eq!(s.poll(), Action::Reconcile(page.clone()));
    assert_eq!(s.poll(), Action::Reconcile(page));
}

// ---- two in-memory members ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Live {
        timestamp: u64,
        expiry: u64,
        set_at: u64,
        data: Vec<u8>,
    },
    Deleted {
        until: u64,
    },
}

impl Held {
    fn state(&self) -> EntryState {
        match self {
            Held::Live { expiry, set_at, .. } => EntryState::Live {
                expiry: *expiry,
                set_at: *set_at,
            },
            Held::Deleted { until } => EntryState::Deleted { until: *until },
        }
    }
}

/// A member's holdings as a map, following the merge rule of §9.3 for the items it applies.
#[derive(Debug, Default)]
struct Member {
    held: BTreeMap<EntryKey, Held>,
    digests: Digests,
}

/// How a peer answers and how much a pull may take.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Entries the answering peer puts in a page (a peer may send fewer than asked).
    page: usize,
    /// Message bytes in one fetch answer.
    fetch_bytes: usize,
    /// The pulling member's budget.
    budget: usize,
}

impl Member {
    fn set(&mut self, key: EntryKey, new: Held) {
        if let Some(old) = self.held.get(&key) {
            self.digests.toggle(&Entry {
                key,
                state: old.state(),
            });
        }
        self.digests.toggle(&Entry {
            key,
            state: new.state(),
        });
        self.held.insert(key, new);
    }

    fn store(&mut self, mailbox: Mailbox, data: Vec<u8>, at: u64, expiry: u64) {
        self.apply(
            Item::Message(ItemMessage {
                mailbox,
                namespace: INBOX,
                timestamp: at,
                expiry,
                set_at: at,
                data,
            }),
            at,
        );
    }

    fn live_keys(&self) -> Vec<EntryKey> {
        let is_live = |(k, h): (&EntryKey, &Held)| matches!(h, Held::Live { .. }).then_some(*k);
        self.held.iter().filter_map(is_live).collect()
    }

    fn apply(&mut self, item: Item, now: u64) {
        match item {
            Item::Message(m) => {
                if m.expiry <= now {
                    return;
                }
                let key = EntryKey {
                    mailbox: m.mailbox,
                    namespace: m.namespace,
                    hash: content_hash(&m.mailbox, m.namespace, &m.data),
                };
                match self.held.get(&key) {
                    Some(Held::Deleted { .. }) => {}
                    Some(Held::Live {
                        timestamp,
                        expiry,
                        data,
                        ..
                    }) => {
                        if m.expiry > *expiry {
                            let (timestamp, data) = (*timestamp, data.clone());
                            self.set(
                                key,
                                Held::Live {
                                    timestamp,
                                    expiry: m.expiry,
                                    set_at: m.set_at,
                                    data,
                                },
                            );
                        }
                    }
                    None => self.set(
                        key,
                        Held::Live {
                            timestamp: m.timestamp,
                            expiry: m.expiry,
                            set_at: m.set_at,
                            data: m.data,
                        },
                    ),
                }
            }
            Item::Tombstone { key, until } => {
                if until <= now {
                    return;
                }
                let until = match self.held.get(&key) {
                    Some(Held::Live { expiry, .. }) => until.max(*expiry),
                    Some(Held::Deleted { until: u }) => until.max(*u),
                    None => until,
                };
                self.set(key, Held::Deleted { until });
            }
            Item::Expiry {
                key,
                expiry,
                set_at,
            } => {
                if expiry <= now {
                    return;
                }
                if let Some(Held::Live {
                    timestamp,
                    expiry: e,
                    set_at: s,
                    data,
                }) = self.held.get(&key)
                {
                    if (set_at, expiry) > (*s, *e) {
                        let (timestamp, data) = (*timestamp, data.clone());
                        self.set(
                            key,
                            Held::Live {
                                timestamp,
                                expiry,
                                set_at,
                                data,
                            },
                        );
                    }
                }
            }
        }
    }

    fn answer(&self, request: &PeerRequest, limits: Limits) -> PeerResponse {
        match request {
            PeerRequest::Root => PeerResponse::Root {
                root: self.digests.root(),
                now: 0,
            },
            PeerRequest::Buckets => PeerResponse::Buckets(self.digests.truncated()),
            PeerRequest::Entries {
                bucket,
                after,
                limit,
            } => {
                let take = limits.page.min(usize::from(*limit));
                let mut entries: Vec<Entry> = self
                    .held
                    .iter()
                    .filter(|(k, _)| k.bucket() == *bucket && after.is_none_or(|a| **k > a))
                    .map(|(k, h)| Entry {
                        key: *k,
                        state: h.state(),
                    })
                    .take(take + 1)
                    .collect();
                let more = entries.len() > take;
                entries.truncate(take);
                PeerResponse::Entries { entries, more }
            }
            PeerRequest::Fetch(keys) => {
                let mut items = Vec::new();
                let mut bytes = 0;
                for key in keys {
                    let item = match self.held.get(key) {
                        Some(Held::Deleted { until }) => Item::Tombstone {
                            key: *key,
                            until: *until,
                        },
                        Some(Held::Live {
                            timestamp,
                            expiry,
                            set_at,
                            data,
                        }) => {
                            if !items.is_empty() && bytes + data.len() > limits.fetch_bytes {
                                break;
                            }
                            bytes += data.len();
                            Item::Message(ItemMessage {
                                mailbox: key.mailbox,
                                namespace: key.namespace,
                                timestamp: *timestamp,
                                expiry: *expiry,
                                set_at: *set_at,
                                data: data.clone(),
                            })
                        }
                        None => continue,
                    };
                    items.push(item);
                }
                PeerResponse::Fetched(items)
            }
            PeerRequest::Replicate(_) => panic!("a pull sends no replicate"),
        }
    }

    fn reconcile(&self, page: &[Entry], now: u64) -> Plan {
        let mut plan = Plan::default();
        for e in page {
            plan.add(self.held.get(&e.key).map(Held::state), e, now);
        }
        plan
    }
}

/// One pull of `into` from `from`, through the encoded peer messages. Returns whether it was
/// complete.
fn pull(from: &Member, into: &mut Member, limits: Limits) -> bool {
    let mut s = Session::new(into.digests.clone(), limits.budget);
    let mut fetched = 0;
    for _ in 0..100_000 {
        match s.poll() {
            Action::Send(request) => {
                if let PeerRequest::Fetch(keys) = &request {
                    assert!(!keys.is_empty() && keys.len() <= MAX_FETCH);
                    assert!(fetched < limits.budget, "a fetch sent past the budget");
                }
                let wire = request.encode();
                let request = PeerRequest::decode(&wire).unwrap();
                let answer = from.answer(&request, limits).encode();
                let answer = PeerResponse::decode(&answer, request.method()).unwrap();
                if let PeerResponse::Fetched(items) = &answer {
                    fetched += items.iter().map(Item::data_len).sum::<usize>();
                }
                s.handle_response(answer).unwrap();
            }
            Action::Reconcile(page) => s.handle_plan(into.reconcile(&page, NOW)).unwrap(),
            Action::Apply(items) => {
                for item in items {
                    into.apply(item, NOW);
                }
            }
            Action::Done { complete } => return complete,
        }
    }
    panic!("the session did not finish");
}

#[derive(Debug, Clone)]
enum Op {
    /// A client stores a message at one member.
    Store {
        on_a: bool,
        mailbox: (u8, u8),
        data: (u8, usize),
        ttl: u64,
    },
    /// A member deletes one of its live messages.
    Delete { on_a: bool, pick: usize },
    /// A member sets a new expiry on one of its live messages.
    Expire {
        on_a: bool,
        pick: usize,
        expiry: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Few buckets, mailboxes and contents, so members often hold the same keys differently.
    let bucket = prop::sample::select(vec![0u8, 1, 7, 200, 255]);
    prop_oneof![
        4 => (any::<bool>(), (bucket, 0u8..3), (0u8..4, 1usize..120), 1_000_000u64..5_000_000)
            .prop_map(|(on_a, mailbox, data, ttl)| Op::Store { on_a, mailbox, data, ttl }),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(on_a, pick)| Op::Delete { on_a, pick }),
        1 => (any::<bool>(), any::<usize>(), 1_000_000u64..5_000_000)
            .prop_map(|(on_a, pick, expiry)| Op::Expire { on_a, pick, expiry: T0 + expiry }),
    ]
}

fn run(ops: &[Op]) -> (Member, Member) {
    let (mut a, mut b) = (Member::default(), Member::default());
    for (i, op) in ops.iter().enumerate() {
        let at = T0 + i as u64;
        match op {
            Op::Store {
                on_a,
                mailbox: (bucket, n),
                data: (byte, len),
                ttl,
            } => {
                let m = if *on_a { &mut a } else { &mut b };
                m.store(mailbox(*bucket, *n), vec![*byte; *len], at, at + ttl);
            }
            Op::Delete { on_a, pick } => {
                let m = if *on_a { &mut a } else { &mut b };
                let keys = m.live_keys();
                if let Some(key) = keys.get(pick % keys.len().max(1)) {
                    // Kept until at least the message's expiry, as a delete's tombstone is.
                    m.apply(
                        Item::Tombstone {
                            key: *key,
                            until: at + 1,
                        },
                        at,
                    );
                }
            }
            Op::Expire { on_a, pick, expiry } => {
                let m = if *on_a { &mut a } else { &mut b };
                let keys = m.live_keys();
                if let Some(key) = keys.get(pick % keys.len().max(1)) {
                    m.apply(
                        Item::Expiry {
                            key: *key,
                            expiry: *expiry,
                            set_at: at,
                        },
                        at,
                    );
                }
            }
        }
    }
    (a, b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the histories, pages, fetch sizes and budgets, pulling each way round after
    /// round makes the members' digests and holdings agree; and with no limits one round does.
    #[test]
    fn sessions_make_two_members_converge(
        ops in prop::collection::vec(op(), 0..60),
        page in 1usize..6,
        fetch_bytes in 1usize..400,
        budget in 1usize..1_000,
    ) {
        let (mut a, mut b) = run(&ops);
        let limits = Limits { page, fetch_bytes, budget };
        let mut rounds = 0;
        loop {
            let ab = pull(&a, &mut b, limits);
            let ba = pull(&b, &mut a, limits);
            rounds += 1;
            if ab && ba {
                break;
            }
            prop_assert!(rounds < 200, "no convergence after {rounds} rounds");
        }
        prop_assert_eq!(&a.digests, &b.digests);
        // Where each member filed a message (its timestamp) is its own; the rest agrees.
        let live = |m: &Member| -> Vec<(EntryKey, EntryState, Vec<u8>)> {
            let live = |(k, h): (&EntryKey, &Held)| match h {
                Held::Live { data, .. } => Some((*k, h.state(), data.clone())),
                Held::Deleted { .. } => None,
            };
            m.held.iter().filter_map(live).collect()
        };
        prop_assert_eq!(live(&a), live(&b));
        let deleted = |m: &Member| -> Vec<EntryKey> {
            m.held.iter().filter(|(_, h)| matches!(h, Held::Deleted { .. })).map(|(k, _)| *k).collect()
        };
        prop_assert_eq!(deleted(&a), deleted(&b));

        // Without limits one pull each way is enough.
        let (mut a, mut b) = run(&ops);
        let open = Limits { page: MAX_ENTRIES, fetch_bytes: usize::MAX, budget: usize::MAX };
        prop_assert!(pull(&a, &mut b, open));
        prop_assert!(pull(&b, &mut a, open));
        prop_assert_eq!(&a.digests, &b.digests);
    }
}
