//! Arbitrary bytes given to the peel and reply-open functions never panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use allium_onion::{
    Epoch, IdentityKeypair, NodeId, OnionSecretKey, PathHop, SizeClass, build_packet, peel,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn key() -> OnionSecretKey {
    OnionSecretKey::from_bytes(Epoch(1), &[7u8; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn peel_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let mut b = bytes;
        let _ = peel(&key(), &mut b, |_, _| true);
    }

    #[test]
    fn peel_of_class_sized_garbage_is_rejected(
        seed in any::<u64>(),
        version in prop_oneof![Just(1u8), any::<u8>()],
    ) {
        use rand_core::RngCore;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut b = vec![0u8; SizeClass::Small.size()];
        rng.fill_bytes(&mut b);
        b[0] = version;
        b[1..5].copy_from_slice(&1u32.to_be_bytes());
        prop_assert!(peel(&key(), &mut b, |_, _| true).is_err());
    }

    #[test]
    fn reply_open_of_arbitrary_bytes_never_panics(
        seed in any::<u64>(),
        len in prop_oneof![Just(4096usize), 0usize..5000],
        hops in 1usize..=8,
    ) {
        use rand_core::RngCore;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let path: Vec<PathHop> = (0..hops)
            .map(|_| PathHop {
                node: NodeId::from(&IdentityKeypair::generate(&mut rng).public()),
                epoch: Epoch(1),
                onion_key: *OnionSecretKey::generate(Epoch(1), &mut rng).public(),
            })
            .collect();
        let built = build_packet(&mut rng, &path, b"r", SizeClass::Small, SizeClass::Small).unwrap();
        let mut reply = vec![0u8; len];
        rng.fill_bytes(&mut reply);
        prop_assert!(built.reply.open(&mut reply).is_err());
    }
}
