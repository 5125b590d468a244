//! Decoding never panics on arbitrary bytes, accepts exactly the canonical encodings, and
//! round-trips every request and response (BAD_INPUTS 1, 2, 14).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use allium_proto::storage::*;
use allium_proto::{DecodeError, Status};
use proptest::prelude::*;

fn key32() -> impl Strategy<Value = [u8; 32]> + Clone {
    any::<[u8; 32]>()
}

fn hashes() -> impl Strategy<Value = Vec<MessageHash>> {
    proptest::collection::vec(key32().prop_map(MessageHash), 1..5)
}

fn body() -> impl Strategy<Value = Body> {
    let mb = key32().prop_map(Mailbox::from_bytes);
    let ns = any::<u16>();
    let after = proptest::option::of((any::<u64>(), key32()).prop_map(|(t, h)| CursorKey {
        timestamp: t,
        hash: MessageHash(h),
    }));
    prop_oneof![
        (
            mb.clone(),
            prop_oneof![Just(INBOX), ns],
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::option::of(key32())
        )
            .prop_map(|(mailbox, namespace, ttl_ms, data, token)| Body::Store(
                StoreRequest {
                    mailbox,
                    namespace,
                    ttl_ms,
                    data,
                    // A token goes only with an inbox store (storage.md §4.5).
                    token: token.filter(|_| namespace == INBOX).map(DeliveryToken),
                }
            )),
        (
            mb.clone(),
            ns,
            after,
            proptest::option::of(1..=MAX_RETRIEVE_COUNT),
            proptest::option::of(1..=MAX_WAIT_MS)
        )
            .prop_map(
                |(mailbox, namespace, after, limit, wait_ms)| Body::Retrieve(RetrieveRequest {
                    mailbox,
                    namespace,
                    after,
                    limit,
                    wait_ms
                })
            ),
        (mb.clone(), ns, hashes()).prop_map(|(mailbox, namespace, hashes)| Body::Delete(
            DeleteRequest {
                mailbox,
                namespace,
                hashes
            }
        )),
        (mb.clone(), ns).prop_map(|(mailbox, namespace)| Body::DeleteAll(DeleteAllRequest {
            mailbox,
            namespace
        })),
        (mb.clone(), ns, hashes(), any::<u64>()).prop_map(
            |(mailbox, namespace, hashes, expiry)| Body::Expire(ExpireRequest {
                mailbox,
                namespace,
                hashes,
                expiry
            })
        ),
        (mb.clone(), ns)
            .prop_map(|(mailbox, namespace)| Body::Usage(UsageRequest { mailbox, namespace })),
        Just(Body::Info),
        mb.prop_map(|mailbox| Body::GetSwarm(GetSwarmRequest { mailbox })),
        proptest::option::of(any::<u64>())
            .prop_map(|known_version| Body::Roster(RosterRequest { known_version })),
        (
            0..MAX_ROSTER_PAGES,
            prop_oneof![
                Just(PageOf::Held),
                any::<u64>().prop_map(PageOf::Version),
                any::<u64>().prop_map(PageOf::NewerThan),
            ]
        )
            .prop_map(|(page, of)| Body::RosterPage(RosterPageRequest { page, of })),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        body(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        proptest::option::of(any::<[u8; 32]>()),
    )
        .prop_map(|(body, timestamp, s1, s2, signer)| {
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&s1);
            signature[32..].copy_from_slice(&s2);
            let auth = body.auth_target().map(|_| Auth {
                timestamp,
                signature,
                signer,
            });
            Request { body, auth }
        })
}

fn message() -> impl Strategy<Value = StoredMessage> {
    (
        key32(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(h, timestamp, expiry, data)| StoredMessage {
            hash: MessageHash(h),
            timestamp,
            expiry,
            data,
        })
}

fn response_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        (
            key32(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec(key32().prop_map(NodeId::from_bytes), 0..4)
        )
            .prop_map(|(h, timestamp, expiry, duplicate, holders)| {
                ResponseBody::Store(StoreResponse {
                    hash: MessageHash(h),
                    timestamp,
                    expiry,
                    duplicate,
                    holders,
                })
            }),
        (proptest::collection::vec(message(), 0..4), any::<bool>()).prop_map(|(messages, more)| {
            ResponseBody::Retrieve(RetrieveResponse { messages, more })
        }),
        proptest::collection::vec(key32().prop_map(MessageHash), 0..4)
            .prop_map(|deleted| ResponseBody::Delete(DeleteResponse { deleted })),
        any::<u64>().prop_map(|count| ResponseBody::DeleteAll(DeleteAllResponse { count })),
        proptest::collection::vec((key32().prop_map(MessageHash), any::<u64>()), 0..4)
            .prop_map(|updated| ResponseBody::Expire(ExpireResponse { updated })),
        (any::<u64>(), "[a-z0-9./-]{0,64}").prop_map(|(protocol, software)| ResponseBody::Info(
            InfoResponse { protocol, software }
        )),
        (
            any::<u64>(),
            proptest::collection::vec(key32().prop_map(NodeId::from_bytes), 0..4)
        )
            .prop_map(
                |(swarm_id, members)| ResponseBody::GetSwarm(GetSwarmResponse {
                    swarm_id,
                    members
                })
            ),
        (
            any::<u64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100))
        )
            .prop_map(|(version, roster)| ResponseBody::Roster(RosterResponse { version, roster })),
        (
            any::<u64>(),
            1..=3 * ROSTER_PAGE_BYTES as u64,
            any::<bool>(),
            any::<u8>()
        )
            .prop_map(|(version, total, with, fill)| {
                // The last page: its length follows from the total.
                let page = (roster_pages(total) - 1) as u32;
                let bytes = with.then(|| vec![fill; roster_page_len(total, page).unwrap()]);
                ResponseBody::RosterPage(RosterPageResponse {
                    version,
                    total,
                    page,
                    bytes,
                })
            }),
        (any::<[u64; 6]>(), proptest::option::of(any::<u64>())).prop_map(|(v, max_count)| {
            ResponseBody::Usage(UsageResponse {
                bytes: v[0],
                count: v[1],
                max_bytes: v[2],
                max_count,
                mailbox_bytes: v[3],
                mailbox_count: v[4],
                mailbox_max_bytes: v[5],
            })
        }),
    ]
}

fn response() -> impl Strategy<Value = (Method, Response)> {
    let ok =
        (any::<u64>(), response_body()).prop_map(|(now, b)| (b.method(), Response::ok(now, b)));
    let err = (any::<u64>(), 1..Status::ALL.len(), 0..Method::ALL.len()).prop_map(|(now, s, m)| {
        let status = Status::ALL[s];
        let response = if status == Status::WrongSwarm {
            Response::wrong_swarm(
                now,
                GetSwarmResponse {
                    swarm_id: now,
                    members: vec![NodeId::from_bytes([7; 32])],
                },
            )
        } else {
            Response::error(now, status)
        };
        (Method::ALL[m], response)
    });
    prop_oneof![ok, err]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Peer messages: arbitrary bytes give a typed error or a value that re-encodes to them.
    #[test]
    fn arbitrary_peer_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        use allium_proto::sync::{PeerMethod, PeerRequest, PeerResponse};
        if let Ok(r) = PeerRequest::decode(&bytes) {
            prop_assert_eq!(r.encode(), bytes.clone());
        }
        for m in [PeerMethod::Replicate, PeerMethod::Root, PeerMethod::Buckets, PeerMethod::Entries, PeerMethod::Fetch] {
            if let Ok(r) = PeerResponse::decode(&bytes, m) {
                prop_assert_eq!(r.encode(), bytes.clone());
            }
        }
    }

    /// Arbitrary bytes: a typed error or a request whose encoding is exactly those bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(d) = Request::decode(&bytes) {
            prop_assert_eq!(d.request.encode(), bytes.clone());
        }
        for m in Method::ALL {
            if let Ok(r) = Response::decode(&bytes, m) {
                prop_assert_eq!(r.encode(), bytes.clone());
            }
        }
    }

    /// Mutations of valid requests (flips, truncations, insertions) never panic, and whatever
    /// still decodes is canonical.
    #[test]
    fn mutated_requests_never_panic(r in request(), pos in any::<prop::sample::Index>(), byte in any::<u8>(), kind in 0..3u8) {
        let mut b = r.encode();
        let i = pos.index(b.len());
        match kind {
            0 => b[i] ^= byte | 1,
            1 => b.truncate(i),
            _ => b.insert(i, byte),
        }
        if let Ok(d) = Request::decode(&b) {
            prop_assert_eq!(d.request.encode(), b);
        }
    }

    #[test]
    fn requests_round_trip(r in request()) {
        let bytes = r.encode();
        let d = Request::decode(&bytes).unwrap();
        prop_assert_eq!(&d.request, &r);
        prop_assert_eq!(d.digest, r.body.digest());
        // Every strict prefix is refused.
        for cut in 0..bytes.len() {
            prop_assert!(Request::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn responses_round_trip((m, r) in response()) {
        let bytes = r.encode();
        prop_assert_eq!(Response::decode(&bytes, m).unwrap(), r);
        for cut in 0..bytes.len() {
            prop_assert!(Response::decode(&bytes[..cut], m).is_err());
        }
    }
}

#[test]
fn limits_are_enforced() {
    let mb = Mailbox::from_bytes([1; 32]);
    // Data one byte over the limit.
    let big = Request::unsigned(Body::Store(StoreRequest {
        mailbox: mb,
        namespace: 0,
        ttl_ms: 10_000,
        data: vec![0; MAX_DATA_BYTES + 1],
        token: None,
    }));
    assert_eq!(
        Request::decode(&big.encode()).unwrap_err(),
        DecodeError::TooLong {
            max: MAX_DATA_BYTES
        }
    );
    let max = Request::unsigned(Body::Store(StoreRequest {
        mailbox: mb,
        namespace: 0,
        ttl_ms: 10_000,
        data: vec![0; MAX_DATA_BYTES],
        token: None,
    }));
    assert!(max.encode().len() <= MAX_REQUEST_BYTES);
    Request::decode(&max.encode()).unwrap();
    // Too many hashes; zero hashes; limit and wait outside their ranges.
    let del = |n| {
        Request::unsigned(Body::Delete(DeleteRequest {
            mailbox: mb,
            namespace: 0,
            hashes: vec![MessageHash([0; 32]); n],
        }))
    };
    assert_eq!(
        Request::decode(&del(MAX_HASHES + 1).encode()).unwrap_err(),
        DecodeError::TooLong { max: MAX_HASHES }
    );
    assert_eq!(
        Request::decode(&del(0).encode()).unwrap_err(),
        DecodeError::InvalidValue("hashes")
    );
    let ret = |limit, wait_ms| {
        Request::unsigned(Body::Retrieve(RetrieveRequest {
            mailbox: mb,
            namespace: 0,
            after: None,
            limit,
            wait_ms,
        }))
    };
    assert_eq!(
        Request::decode(&ret(Some(0), None).encode()).unwrap_err(),
        DecodeError::InvalidValue("limit")
    );
    assert_eq!(
        Request::decode(&ret(Some(MAX_RETRIEVE_COUNT + 1), None).encode()).unwrap_err(),
        DecodeError::InvalidValue("limit")
    );
    assert_eq!(
        Request::decode(&ret(None, Some(0)).encode()).unwrap_err(),
        DecodeError::InvalidValue("wait")
    );
    assert_eq!(
        Request::decode(&ret(None, Some(MAX_WAIT_MS + 1)).encode()).unwrap_err(),
        DecodeError::InvalidValue("wait")
    );
    // The largest retrieve answer fits the response limit.
    let full = Response::ok(
        u64::MAX,
        ResponseBody::Retrieve(RetrieveResponse {
            messages: vec![StoredMessage {
                hash: MessageHash([0; 32]),
                timestamp: u64::MAX,
                expiry: u64::MAX,
                data: vec![0; MAX_DATA_BYTES],
            }],
            more: true,
        }),
    );
    assert!(full.encode().len() <= MAX_RESPONSE_BYTES);
    // The largest answers fit the body of a large reply (65,515 bytes), which is what bounds a
    // response on the wire (storage §1): a retrieve answer of 256 messages filling
    // RETRIEVE_BUDGET_BYTES exactly, and a roster answer carrying MAX_ROSTER_BYTES.
    let capacity = allium_onion::max_response(allium_onion::SizeClass::Large);
    assert_eq!(capacity, 65_515);
    let one = StoredMessage {
        hash: MessageHash([0; 32]),
        timestamp: u64::MAX,
        expiry: u64::MAX,
        data: vec![0; 191],
    };
    assert_eq!(one.encoded_len() * 256, RETRIEVE_BUDGET_BYTES);
    let budget_full = Response::ok(
        u64::MAX,
        ResponseBody::Retrieve(RetrieveResponse {
            messages: vec![one; 256],
            more: true,
        }),
    );
    assert_eq!(budget_full.encode().len(), RETRIEVE_BUDGET_BYTES + 21);
    assert!(budget_full.encode().len() <= capacity);
    let roster = Response::ok(
        u64::MAX,
        ResponseBody::Roster(RosterResponse {
            version: u64::MAX,
            roster: Some(vec![0; MAX_ROSTER_BYTES]),
        }),
    );
    assert_eq!(roster.encode().len(), MAX_ROSTER_BYTES + 29);
    assert!(roster.encode().len() <= capacity);
    // Oversized input is refused by length before parsing.
    assert!(matches!(
        Request::decode(&vec![0; MAX_REQUEST_BYTES + 1]),
        Err(DecodeError::TooLarge { .. })
    ));
}

fn stored(seed: u8, len: usize) -> StoredMessage {
    StoredMessage {
        hash: MessageHash([seed; 32]),
        timestamp: 1_700_000_000_000 + u64::from(seed),
        expiry: 1_700_086_400_000,
        data: vec![seed; len],
    }
}

fn page_of(messages: Vec<StoredMessage>, more: bool) -> Response {
    Response::ok(
        1_700_000_000_500,
        ResponseBody::Retrieve(RetrieveResponse { messages, more }),
    )
}

/// The body a small reply carries (onion §6.1: `size − 21`).
const SMALL_BODY: usize = 4_096 - 21;

/// Onion §6.1, storage §1: a signed retrieve over ten 512-byte messages in the small reply class
/// is answered with as many as fit and `more = true`, never refused nor cut mid-message.
#[test]
fn a_retrieve_page_is_fitted_to_the_reply_class() {
    let page = page_of((0..10).map(|i| stored(i, 512)).collect(), false);
    assert!(page.encode().len() > SMALL_BODY);
    let fitted = page.encode_within(SMALL_BODY).expect("some messages fit");
    assert!(fitted.len() <= SMALL_BODY);
    let back = Response::decode(&fitted, Method::Retrieve).unwrap();
    let Ok(ResponseBody::Retrieve(r)) = back.result else {
        panic!("{back:?}")
    };
    assert_eq!(r.messages.len(), 7);
    assert!(r.more);
    let Ok(ResponseBody::Retrieve(whole)) = &page.result else {
        unreachable!()
    };
    assert_eq!(r.messages, whole.messages[..7]);
    // A page that fits is sent as it is.
    assert_eq!(page.encode_within(usize::MAX), Some(page.encode()));
    // One message longer than the class: nothing to send but error 5.
    assert_eq!(
        page_of(vec![stored(1, 5_000)], false).encode_within(SMALL_BODY),
        None
    );
    // Other answers are never cut.
    let refusal = Response::error(1, Status::Syncing);
    assert_eq!(refusal.encode_within(2), None);
}

proptest! {
    /// A fitted page fits, is a prefix of the page, and says `more` whenever it was cut.
    #[test]
    fn fitted_pages_are_prefixes_that_fit(
        lens in proptest::collection::vec(0usize..2_000, 0..40),
        more in any::<bool>(),
        max in 0usize..70_000,
    ) {
        let messages: Vec<StoredMessage> =
            lens.iter().enumerate().map(|(i, &l)| stored(i as u8, l)).collect();
        let page = page_of(messages.clone(), more);
        match page.encode_within(max) {
            Some(bytes) => {
                prop_assert!(bytes.len() <= max);
                let back = Response::decode(&bytes, Method::Retrieve).unwrap();
                let Ok(ResponseBody::Retrieve(r)) = back.result else {
                    panic!("{back:?}")
                };
                prop_assert_eq!(&r.messages[..], &messages[..r.messages.len()]);
                if r.messages.len() < messages.len() {
                    prop_assert!(r.more && !r.messages.is_empty());
                    // The longest such prefix.
                    let one_more = page_of(messages[..=r.messages.len()].to_vec(), true);
                    prop_assert!(one_more.encode().len() > max);
                } else {
                    prop_assert_eq!(r.more, more);
                }
            }
            None => {
                prop_assert!(page.encode().len() > max);
                let first = page_of(messages.iter().take(1).cloned().collect(), true);
                prop_assert!(messages.is_empty() || first.encode().len() > max);
            }
        }
    }
}

/// `roster_page` (storage §4.6): the largest answer fits a large reply, the decoder refuses
/// pages past the bound, two conditions and page bytes that are not their slice, and a node's
/// answer follows its condition.
#[test]
fn roster_pages_are_bounded_and_follow_their_condition() {
    let capacity = allium_onion::max_response(allium_onion::SizeClass::Large);
    let largest = Response::ok(
        u64::MAX,
        ResponseBody::RosterPage(RosterPageResponse {
            version: u64::MAX,
            total: allium_proto::roster::MAX_SIGNED_ROSTER_BYTES as u64,
            // The widest page index with a full page: an upper bound on every answer.
            page: MAX_ROSTER_PAGES - 1,
            bytes: Some(vec![0; ROSTER_PAGE_BYTES]),
        }),
    );
    assert_eq!(largest.encode().len(), ROSTER_PAGE_BYTES + 38);
    assert!(largest.encode().len() <= capacity);
    assert_eq!(MAX_ROSTER_PAGES, 137);

    // Requests: page bound, and at most one condition (keys 2 and 3 both present).
    let page = |p: u64, extra: &[u8]| {
        let mut e = vec![0xa2, 0x01, 0x0b, 0x02];
        e.push(0xa1 + u8::from(!extra.is_empty()));
        e.extend_from_slice(&[0x01, 0x18, p as u8]);
        e.extend_from_slice(extra);
        e
    };
    let ok = Request::decode(&page(136, &[])).unwrap().request.body;
    assert_eq!(
        ok,
        Body::RosterPage(RosterPageRequest {
            page: 136,
            of: PageOf::Held
        })
    );
    assert!(matches!(
        Request::decode(&page(137, &[])),
        Err(DecodeError::InvalidValue("roster page"))
    ));
    let mut both = page(30, &[0x02, 0x05, 0x03, 0x05]);
    both[4] = 0xa3;
    assert!(matches!(
        Request::decode(&both),
        Err(DecodeError::InvalidValue("two roster page conditions"))
    ));

    // Responses: a page must be exactly its slice of `total`.
    let answer = |total: u64, page: u32, len: usize| {
        Response::ok(
            1,
            ResponseBody::RosterPage(RosterPageResponse {
                version: 7,
                total,
                page,
                bytes: Some(vec![1; len]),
            }),
        )
        .encode()
    };
    let total = ROSTER_PAGE_BYTES as u64 + 10;
    assert!(Response::decode(&answer(total, 1, 10), Method::RosterPage).is_ok());
    for (page, len) in [(1, 9), (1, 11), (0, 10), (2, 10)] {
        assert!(
            matches!(
                Response::decode(&answer(total, page, len), Method::RosterPage),
                Err(DecodeError::InvalidValue("roster page length"))
            ),
            "page {page} of {len} bytes"
        );
    }

    // A node's answer: the page of the version held when the condition holds; else none.
    let signed: Vec<u8> = (0..2 * ROSTER_PAGE_BYTES + 3).map(|i| i as u8).collect();
    let ask = |page, of| RosterPageResponse::answer(9, &signed, &RosterPageRequest { page, of });
    assert_eq!(
        ask(1, PageOf::Version(9)).bytes.unwrap(),
        &signed[ROSTER_PAGE_BYTES..2 * ROSTER_PAGE_BYTES]
    );
    assert_eq!(
        ask(2, PageOf::Held).bytes.unwrap(),
        &signed[2 * ROSTER_PAGE_BYTES..]
    );
    assert_eq!(
        ask(0, PageOf::NewerThan(8)).bytes.unwrap().len(),
        ROSTER_PAGE_BYTES
    );
    assert_eq!(ask(3, PageOf::Held).bytes, None, "past the end");
    assert_eq!(ask(0, PageOf::NewerThan(9)).bytes, None, "not modified");
    assert_eq!(
        ask(0, PageOf::NewerThan(10)).bytes,
        None,
        "the client is ahead"
    );
    let changed = ask(1, PageOf::Version(8));
    assert_eq!(
        (changed.version, &changed.bytes),
        (9, &None),
        "another version"
    );
    assert_eq!(changed.total, signed.len() as u64);
    // Every answer decodes as it was made.
    for r in [ask(2, PageOf::Held), changed] {
        let bytes = Response::ok(1, ResponseBody::RosterPage(r.clone())).encode();
        let back = Response::decode(&bytes, Method::RosterPage).unwrap();
        assert_eq!(back.result, Ok(ResponseBody::RosterPage(r)));
    }
}
