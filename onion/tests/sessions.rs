//! Path sessions (onion.md §12): properties that fail when one breaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use allium_onion::{
    Epoch, ErrorCode, IdentityKeypair, NodeId, OnionSecretKey, PathHop, PathSession, PeelError,
    Peeled, Reply, SessionRole, SessionTable, SizeClass, peel, peel_session, prepare_path,
};
use std::cell::RefCell;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const EPOCH: Epoch = Epoch(77);
/// The hops' clock, Unix seconds.
const NOW: u64 = 1000;

struct Hop {
    id: NodeId,
    onion: OnionSecretKey,
    table: RefCell<SessionTable>,
}

fn hops(rng: &mut ChaCha20Rng, n: usize) -> Vec<Hop> {
    (0..n)
        .map(|_| Hop {
            id: NodeId::from(&IdentityKeypair::generate(rng).public()),
            onion: OnionSecretKey::generate(EPOCH, rng),
            table: RefCell::new(SessionTable::new(16)),
        })
        .collect()
}

fn path(hops: &[Hop]) -> Vec<PathHop> {
    hops.iter()
        .map(|h| PathHop {
            node: h.id,
            epoch: EPOCH,
            onion_key: *h.onion.public(),
        })
        .collect()
}

/// Sends an opening packet through `hops`, each keeping the session as a node does.
fn open(rng: &mut ChaCha20Rng, hops: &mut [Hop], class: SizeClass) -> PathSession {
    let (built, session) = prepare_path(rng, &path(hops))
        .unwrap()
        .build_opening(b"opening request", class, class)
        .unwrap();
    let mut packet = built.packet;
    let n = hops.len();
    for (i, hop) in hops.iter_mut().enumerate() {
        let (role, opened) = match peel(&hop.onion, &mut packet, |_, _| true).unwrap() {
            Peeled::Forward { next, opened, .. } => (SessionRole::Relay { next }, opened),
            Peeled::Deliver {
                request, opened, ..
            } => {
                assert_eq!(i, n - 1);
                assert_eq!(request, b"opening request");
                (SessionRole::Deliver, opened)
            }
        };
        hop.table
            .borrow_mut()
            .open(opened.expect("asked to keep a session"), role, EPOCH, NOW)
            .unwrap();
    }
    session
}

/// The bytes of `session`'s next packet carrying `request`, small both ways.
fn small(session: &mut PathSession, rng: &mut ChaCha20Rng, request: &[u8]) -> Vec<u8> {
    session
        .build(rng, request, SizeClass::Small, SizeClass::Small)
        .unwrap()
        .packet
}

/// Peels a session packet as a node does: look the session up, then check its window.
fn peel_at<'a>(hop: &Hop, packet: &'a mut [u8]) -> Result<Peeled<'a>, PeelError> {
    peel_session(
        packet,
        |sid| hop.table.borrow().get(sid, NOW + 1),
        |sid, seq| hop.table.borrow_mut().accept(sid, seq),
    )
}

/// Routes a session packet through every hop; returns the request the destination got, and the
/// reply the client opens.
fn route(hops: &[Hop], mut packet: Vec<u8>, response: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let n = hops.len();
    let mut wrappers = Vec::new();
    for (i, hop) in hops.iter().enumerate() {
        let len = packet.len();
        match peel_at(hop, &mut packet).unwrap() {
            Peeled::Forward {
                next,
                reply,
                opened,
            } => {
                assert!(opened.is_none(), "a session packet opens nothing");
                assert_eq!(
                    next,
                    hops[i + 1].id,
                    "relayed to the hop the session was opened to"
                );
                wrappers.push(reply);
            }
            Peeled::Deliver { request, reply, .. } => {
                assert_eq!(i, n - 1);
                let request = request.to_vec();
                let mut back = reply.seal(response).unwrap();
                for w in wrappers.into_iter().rev() {
                    w.wrap(&mut back).unwrap();
                }
                return (request, back);
            }
        }
        assert_eq!(packet.len(), len, "constant size");
    }
    panic!("no hop delivered")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn session_packets_deliver_and_their_replies_open(
        seed in any::<u64>(),
        n in 1usize..=8,
        packets in 1usize..4,
        large in any::<bool>(),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let class = if large { SizeClass::Large } else { SizeClass::Small };
        let mut hops = hops(&mut rng, n);
        let mut session = open(&mut rng, &mut hops, class);
        for k in 0..packets {
            let request = format!("request {k}").into_bytes();
            let built = session.build(&mut rng, &request, class, class).unwrap();
            prop_assert_eq!(built.packet[0], 2);
            prop_assert_eq!(built.packet.len(), class.size());
            let (got, mut reply) = route(&hops, built.packet, b"answer");
            prop_assert_eq!(got, request);
            match built.reply.open(&mut reply).unwrap() {
                Reply::Response(body) => prop_assert_eq!(body, b"answer"),
                Reply::Error { .. } => prop_assert!(false, "an error"),
            }
        }
        prop_assert_eq!(session.sent() as usize, packets);
    }

    #[test]
    fn flipping_any_bit_makes_the_hop_drop_a_session_packet(seed in any::<u64>(), at in 0usize..4096, bit in 0u8..8) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut hops = hops(&mut rng, 3);
        let mut session = open(&mut rng, &mut hops, SizeClass::Small);
        let mut packet = small(&mut session, &mut rng, b"x");
        packet[at] ^= 1 << bit;
        prop_assert!(peel_at(&hops[0], &mut packet).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_session_peel(bytes in proptest::collection::vec(any::<u8>(), 0..5000), known in any::<bool>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut hops = hops(&mut rng, 1);
        let _session = open(&mut rng, &mut hops, SizeClass::Small);
        let mut b = bytes;
        if known && b.len() >= 21 {
            // Aim at a kept session: the rest is still garbage and must be refused.
            b[0] = 2;
            b[1..5].fill(0);
        }
        let _ = peel_at(&hops[0], &mut b);
    }
}

#[test]
fn a_replayed_session_packet_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut hops = hops(&mut rng, 2);
    let mut session = open(&mut rng, &mut hops, SizeClass::Small);
    let packet = small(&mut session, &mut rng, b"x");
    assert!(peel_at(&hops[0], &mut packet.clone()).is_ok());
    assert_eq!(
        peel_at(&hops[0], &mut packet.clone()).unwrap_err(),
        PeelError::Replay
    );
    // Later packets still pass, and one that fell 64 behind is refused.
    for _ in 0..64 {
        let mut p = small(&mut session, &mut rng, b"y");
        assert!(peel_at(&hops[0], &mut p).is_ok());
    }
    let mut late = small(&mut session, &mut rng, b"z");
    for _ in 0..64 {
        let mut p = small(&mut session, &mut rng, b"y");
        assert!(peel_at(&hops[0], &mut p).is_ok());
    }
    assert_eq!(peel_at(&hops[0], &mut late).unwrap_err(), PeelError::Replay);
}

#[test]
fn a_hop_without_the_session_drops_its_packets() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut hops = hops(&mut rng, 2);
    let mut session = open(&mut rng, &mut hops, SizeClass::Small);
    let mut packet = small(&mut session, &mut rng, b"x");
    // Sent to the wrong hop: the destination keeps no session under the first hop's id.
    assert_eq!(
        peel_at(&hops[1], &mut packet.clone()).unwrap_err(),
        PeelError::UnknownSession
    );
    // Expired: 600 s after it was opened.
    let table = hops[0].table.borrow();
    assert_eq!(
        peel_session(
            &mut packet.clone(),
            |s| table.get(s, NOW + 600),
            |_, _| true
        )
        .unwrap_err(),
        PeelError::UnknownSession
    );
    drop(table);
    // Forgotten (a restart, or its epoch's key deleted).
    hops[0].table.borrow_mut().retain_epochs(|_| false);
    assert_eq!(
        peel_at(&hops[0], &mut packet).unwrap_err(),
        PeelError::UnknownSession
    );
}

#[test]
fn an_error_from_a_relay_names_it() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut hops = hops(&mut rng, 3);
    let mut session = open(&mut rng, &mut hops, SizeClass::Small);
    let built = session
        .build(&mut rng, b"x", SizeClass::Small, SizeClass::Small)
        .unwrap();
    let mut packet = built.packet;
    let Peeled::Forward { reply: first, .. } = peel_at(&hops[0], &mut packet).unwrap() else {
        panic!("relays")
    };
    let Peeled::Forward { reply: second, .. } = peel_at(&hops[1], &mut packet).unwrap() else {
        panic!("relays")
    };
    let mut back = second.error(ErrorCode::NextHopTimeout);
    first.wrap(&mut back).unwrap();
    match built.reply.open(&mut back).unwrap() {
        Reply::Error { hop, code } => {
            assert_eq!(hop, 1);
            assert_eq!(code, ErrorCode::NextHopTimeout);
        }
        Reply::Response(_) => panic!("an error was sent"),
    }
}

#[test]
fn session_packets_on_one_link_share_only_the_session_id() {
    // On the link into hop 1 every packet of the session carries hop 1's id, and that id is
    // not hop 0's: the ids of one session differ per link.
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut hops = hops(&mut rng, 3);
    let mut session = open(&mut rng, &mut hops, SizeClass::Small);
    let mut first_ids = Vec::new();
    let mut second_ids = Vec::new();
    let mut nonces = Vec::new();
    for _ in 0..4 {
        let mut packet = small(&mut session, &mut rng, b"x");
        first_ids.push(packet[5..21].to_vec());
        nonces.push(packet[21..37].to_vec());
        peel_at(&hops[0], &mut packet).unwrap();
        second_ids.push(packet[5..21].to_vec());
        nonces.push(packet[21..37].to_vec());
    }
    assert!(first_ids.windows(2).all(|w| w[0] == w[1]));
    assert!(second_ids.windows(2).all(|w| w[0] == w[1]));
    assert_ne!(first_ids[0], second_ids[0]);
    nonces.sort();
    nonces.dedup();
    assert_eq!(
        nonces.len(),
        8,
        "every layer of every packet has its own nonce"
    );
}
