//! Tests that fail when a property of the onion packet breaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use allium_onion::packet::SLOT_LEN;
use allium_onion::{
    Epoch, EpochSchedule, ErrorCode, IdentityKeypair, NodeId, OnionKeyRing, OnionSecretKey,
    PathHop, PeelError, Peeled, ReplayWindow, Reply, SizeClass, build_packet, peel,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const EPOCH: Epoch = Epoch(4242);
const ROUTING: std::ops::Range<usize> = 53..885;

struct Node {
    id: NodeId,
    onion: OnionSecretKey,
}

fn nodes(rng: &mut ChaCha20Rng, n: usize) -> Vec<Node> {
    (0..n)
        .map(|_| Node {
            id: NodeId::from(&IdentityKeypair::generate(rng).public()),
            onion: OnionSecretKey::generate(EPOCH, rng),
        })
        .collect()
}

fn path(nodes: &[Node]) -> Vec<PathHop> {
    nodes
        .iter()
        .map(|n| PathHop {
            node: n.id,
            epoch: EPOCH,
            onion_key: *n.onion.public(),
        })
        .collect()
}

fn always_fresh(_: Epoch, _: &allium_onion::ReplayTag) -> bool {
    true
}

/// Peels `packet` through `nodes`; returns the bytes each hop received and the request delivered.
fn route(nodes: &[Node], mut packet: Vec<u8>) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut seen = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        seen.push(packet.clone());
        let len = packet.len();
        match peel(&node.onion, &mut packet, always_fresh).unwrap() {
            Peeled::Forward { next, .. } => {
                assert!(i + 1 < nodes.len(), "last hop was told to forward");
                assert_eq!(next, nodes[i + 1].id);
            }
            Peeled::Deliver { request, .. } => {
                assert_eq!(i + 1, nodes.len(), "hop {i} delivered early");
                let request = request.to_vec();
                return (seen, request);
            }
        }
        assert_eq!(packet.len(), len, "relay output length differs from input");
    }
    panic!("no hop delivered");
}

#[test]
fn every_path_length_and_class_delivers_the_request_and_the_response() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for class in SizeClass::ALL {
        for reply_class in SizeClass::ALL {
            for hops in 1..=allium_onion::MAX_HOPS {
                let ns = nodes(&mut rng, hops);
                let request = vec![0xa5; class.max_request()];
                let built =
                    build_packet(&mut rng, &path(&ns), &request, class, reply_class).unwrap();
                assert_eq!(built.packet.len(), class.size());
                let (seen, delivered) = route(&ns, built.packet);
                assert_eq!(delivered, request);
                assert!(seen.iter().all(|p| p.len() == class.size()));

                // Response back along the same hops.
                let mut packet = seen.last().unwrap().clone();
                let Peeled::Deliver { reply, .. } =
                    peel(&ns[hops - 1].onion, &mut packet, always_fresh).unwrap()
                else {
                    panic!("expected delivery")
                };
                let body = vec![0x5a; reply.max_body()];
                let mut answer = reply.seal(&body).unwrap();
                for i in (0..hops - 1).rev() {
                    let mut p = seen[i].clone();
                    let Peeled::Forward { reply, .. } =
                        peel(&ns[i].onion, &mut p, always_fresh).unwrap()
                    else {
                        panic!("expected forward")
                    };
                    reply.wrap(&mut answer).unwrap();
                    assert_eq!(answer.len(), reply_class.size());
                }
                assert_eq!(
                    built.reply.open(&mut answer).unwrap(),
                    Reply::Response(&body)
                );
            }
        }
    }
}

#[test]
fn oversized_request_is_refused_with_a_clear_error() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let ns = nodes(&mut rng, 3);
    for class in SizeClass::ALL {
        let too_big = vec![0u8; class.max_request() + 1];
        let err = build_packet(&mut rng, &path(&ns), &too_big, class, class).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
    assert_eq!(
        SizeClass::for_request(SizeClass::Large.max_request() + 1),
        None
    );
    assert!(build_packet(&mut rng, &[], b"x", SizeClass::Small, SizeClass::Small).is_err());
    let nine = path(&nodes(&mut rng, 9));
    assert!(build_packet(&mut rng, &nine, b"x", SizeClass::Small, SizeClass::Small).is_err());
}

/// Flips one bit in every byte of the packet as it arrives at `hop` and checks the hop rejects it.
fn assert_every_flip_rejected(ns: &[Node], seen: &[Vec<u8>], hop: usize, rng: &mut ChaCha20Rng) {
    let original = &seen[hop];
    for pos in 0..original.len() {
        let mut bad = original.clone();
        bad[pos] ^= 1 << (rng.next_u32() % 8);
        let result = peel(&ns[hop].onion, &mut bad, always_fresh);
        assert!(result.is_err(), "flip at byte {pos} accepted by hop {hop}");
    }
}

#[test]
fn flipping_any_bit_makes_the_next_hop_reject_the_packet() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let ns = nodes(&mut rng, 4);
    let built = build_packet(
        &mut rng,
        &path(&ns),
        b"store",
        SizeClass::Small,
        SizeClass::Small,
    )
    .unwrap();
    let (seen, _) = route(&ns, built.packet);
    // The first hop, a middle hop (input produced by a relay) and the destination.
    for hop in [0, 2, 3] {
        assert_every_flip_rejected(&ns, &seen, hop, &mut rng);
    }
}

#[test]
fn a_replayed_packet_is_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let ns = nodes(&mut rng, 3);
    let schedule = EpochSchedule::new(3600).unwrap();
    let now = schedule.start_of(EPOCH) + 5;
    let mut ring = OnionKeyRing::new(schedule);
    ring.insert(
        OnionSecretKey::from_bytes(EPOCH, &ns[0].onion.to_bytes()),
        now,
    )
    .unwrap();
    let mut window = ReplayWindow::new(1000);
    let built = build_packet(
        &mut rng,
        &path(&ns),
        b"x",
        SizeClass::Small,
        SizeClass::Small,
    )
    .unwrap();
    let mut first = built.packet.clone();
    assert!(ring.peel(now, &mut first, &mut window).is_ok());
    let mut again = built.packet.clone();
    assert_eq!(
        ring.peel(now, &mut again, &mut window).unwrap_err(),
        PeelError::Replay
    );
    assert_eq!(window.replays(), 1);
}

#[test]
fn a_packet_for_another_key_or_an_expired_epoch_is_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let ns = nodes(&mut rng, 2);
    let stranger = OnionSecretKey::generate(EPOCH, &mut rng);
    let built = build_packet(
        &mut rng,
        &path(&ns),
        b"x",
        SizeClass::Small,
        SizeClass::Small,
    )
    .unwrap();
    // Another node's key for the same epoch.
    let mut p = built.packet.clone();
    assert_eq!(
        peel(&stranger, &mut p, always_fresh).unwrap_err(),
        PeelError::HeaderAuth
    );
    // The right node, but the packet names an epoch it holds no key for any more.
    let schedule = EpochSchedule::new(3600).unwrap();
    let mut ring = OnionKeyRing::new(schedule);
    let key_now = schedule.start_of(EPOCH);
    ring.insert(
        OnionSecretKey::from_bytes(EPOCH, &ns[0].onion.to_bytes()),
        key_now,
    )
    .unwrap();
    let mut window = ReplayWindow::new(10);
    let later = schedule.delete_at(EPOCH);
    assert_eq!(ring.prune(later), vec![EPOCH]);
    let mut p = built.packet.clone();
    assert_eq!(
        ring.peel(later, &mut p, &mut window).unwrap_err(),
        PeelError::UnknownEpoch(EPOCH)
    );
    // A key of the right node but another epoch.
    let other_epoch = OnionSecretKey::from_bytes(Epoch(EPOCH.0 + 1), &ns[0].onion.to_bytes());
    let mut p = built.packet.clone();
    assert_eq!(
        peel(&other_epoch, &mut p, always_fresh).unwrap_err(),
        PeelError::UnknownEpoch(EPOCH)
    );
}

#[test]
fn low_order_ephemeral_keys_are_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let ns = nodes(&mut rng, 2);
    let built = build_packet(
        &mut rng,
        &path(&ns),
        b"x",
        SizeClass::Small,
        SizeClass::Small,
    )
    .unwrap();
    let order8 =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap();
    let mut one = [0u8; 32];
    one[0] = 1;
    for point in [vec![0u8; 32], one.to_vec(), order8] {
        let mut p = built.packet.clone();
        p[5..37].copy_from_slice(&point);
        assert_eq!(
            peel(&ns[0].onion, &mut p, always_fresh).unwrap_err(),
            PeelError::NonContributory
        );
    }
}

#[test]
fn reply_bytes_differ_on_every_link_and_errors_name_their_hop() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let hops = 4;
    let ns = nodes(&mut rng, hops);
    for origin in 0..hops {
        let built = build_packet(
            &mut rng,
            &path(&ns),
            b"q",
            SizeClass::Small,
            SizeClass::Small,
        )
        .unwrap();
        let (seen, _) = route(&ns, built.packet);
        let mut buffers = seen.clone();
        let mut layers: Vec<Peeled<'_>> = buffers
            .iter_mut()
            .zip(&ns)
            .map(|(p, node)| peel(&node.onion, p, always_fresh).unwrap())
            .collect();
        // `origin` makes the reply; the hops before it wrap it.
        let mut reply = match layers.remove(origin) {
            Peeled::Forward { reply, .. } => reply.error(ErrorCode::NextHopTimeout),
            Peeled::Deliver { reply, .. } => reply.seal(b"ok").unwrap(),
        };
        let mut on_links = vec![reply.clone()];
        for layer in layers.into_iter().take(origin).rev() {
            let Peeled::Forward { reply: wrap, .. } = layer else {
                panic!("only the destination delivers")
            };
            wrap.wrap(&mut reply).unwrap();
            on_links.push(reply.clone());
        }
        for a in 0..on_links.len() {
            for b in a + 1..on_links.len() {
                assert_ne!(
                    on_links[a], on_links[b],
                    "links {a} and {b} carry the same reply"
                );
            }
        }
        let opened = built.reply.open(&mut reply).unwrap();
        if origin == hops - 1 {
            assert_eq!(opened, Reply::Response(b"ok"));
        } else {
            assert_eq!(
                opened,
                Reply::Error {
                    hop: origin,
                    code: ErrorCode::NextHopTimeout
                }
            );
        }
    }
}

#[test]
fn a_tampered_reply_is_not_accepted() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let ns = nodes(&mut rng, 2);
    let built = build_packet(
        &mut rng,
        &path(&ns),
        b"q",
        SizeClass::Small,
        SizeClass::Small,
    )
    .unwrap();
    let (seen, _) = route(&ns, built.packet);
    let mut p1 = seen[1].clone();
    let Peeled::Deliver { reply, .. } = peel(&ns[1].onion, &mut p1, always_fresh).unwrap() else {
        panic!()
    };
    let mut answer = reply.seal(b"hello").unwrap();
    let mut p0 = seen[0].clone();
    let Peeled::Forward { reply: wrap, .. } = peel(&ns[0].onion, &mut p0, always_fresh).unwrap()
    else {
        panic!()
    };
    wrap.wrap(&mut answer).unwrap();
    answer[100] ^= 0x80;
    assert_eq!(
        built.reply.open(&mut answer).unwrap_err(),
        allium_onion::ReplyError::Unauthenticated
    );
}

/// What a hop decrypts beyond its own slot must look the same — uniformly random — whatever its
/// position. Checked here by collecting, for every (path length, position) pair, the plaintext
/// routing bytes after the hop's slot over many packets, and testing that (a) no byte position is
/// constant across packets (zero padding, lengths or counters would be) and (b) the byte values
/// pass a chi-square test for uniformity. A relay's view is read from its output (its decrypted
/// routing shifted left by one slot); the destination's from the buffer it decrypted in place.
#[test]
fn what_a_hop_decrypts_does_not_depend_on_its_position() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let samples = 24;
    let view_len = ROUTING.len() - SLOT_LEN;
    for hops in 1..=allium_onion::MAX_HOPS {
        let ns = nodes(&mut rng, hops);
        let mut views: Vec<Vec<Vec<u8>>> = vec![Vec::new(); hops];
        for _ in 0..samples {
            let built = build_packet(
                &mut rng,
                &path(&ns),
                b"x",
                SizeClass::Small,
                SizeClass::Small,
            )
            .unwrap();
            let mut packet = built.packet;
            for (pos, node) in ns.iter().enumerate() {
                let is_last = matches!(
                    peel(&node.onion, &mut packet, always_fresh).unwrap(),
                    Peeled::Deliver { .. }
                );
                let start = if is_last {
                    ROUTING.start + SLOT_LEN
                } else {
                    ROUTING.start
                };
                views[pos].push(packet[start..start + view_len].to_vec());
            }
        }
        for (pos, v) in views.iter().enumerate() {
            for byte in 0..view_len {
                let first = v[0][byte];
                assert!(
                    v.iter().any(|s| s[byte] != first),
                    "hop {pos} of {hops}: decrypted byte {byte} is constant"
                );
            }
            let mut counts = [0u64; 256];
            v.iter().flatten().for_each(|&b| counts[b as usize] += 1);
            let n = (samples * view_len) as f64;
            let expected = n / 256.0;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum();
            // 255 degrees of freedom: p = 1e-6 at about 375.
            assert!(chi2 < 375.0, "hop {pos} of {hops}: chi-square {chi2}");
        }
    }
}
