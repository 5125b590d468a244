//! The primitives under the crate's key types against RFC 7748 (X25519) and RFC 8032 (Ed25519).
#![cfg(feature = "trace")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use allium_onion::trace::x25519;
use allium_onion::{Epoch, IdentityKeypair, IdentityPublicKey, OnionPublicKey, OnionSecretKey};

fn h32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn rfc7748_section_5_2_scalar_multiplication() {
    for (k, u, out) in [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ] {
        let got = x25519(&h32(k), &OnionPublicKey::from(h32(u))).unwrap();
        assert_eq!(hex::encode(got), out);
    }
}

#[test]
fn rfc7748_section_6_1_diffie_hellman() {
    let alice = h32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let bob = h32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let alice_pub = OnionSecretKey::from_bytes(Epoch(0), &alice);
    let bob_pub = OnionSecretKey::from_bytes(Epoch(0), &bob);
    assert_eq!(
        hex::encode(alice_pub.public().as_bytes()),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    assert_eq!(
        hex::encode(bob_pub.public().as_bytes()),
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    );
    let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    assert_eq!(
        hex::encode(x25519(&alice, bob_pub.public()).unwrap()),
        shared
    );
    assert_eq!(
        hex::encode(x25519(&bob, alice_pub.public()).unwrap()),
        shared
    );
}

#[test]
fn rfc8032_section_7_1_ed25519() {
    for (secret, public, message, signature) in [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ] {
        let key = IdentityKeypair::from_seed(&h32(secret));
        assert_eq!(hex::encode(key.public().as_bytes()), public);
        let message = hex::decode(message).unwrap();
        let sig = key.sign(&message);
        assert_eq!(hex::encode(sig), signature);
        let parsed = IdentityPublicKey::from_bytes(&hex::decode(public).unwrap()).unwrap();
        parsed.verify(&message, &sig).unwrap();
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(parsed.verify(&message, &bad).is_err());
    }
}

proptest::proptest! {
    /// The onion layers' X25519 (AWS-LC) is RFC 7748's function for every scalar and every
    /// u-coordinate a peer may send — points of the twist and non-canonical encodings included —
    /// the reference being curve25519-dalek's ladder; an all-zero result is refused, never used.
    #[test]
    fn x25519_equals_the_reference_ladder_for_any_input(
        k in proptest::array::uniform32(proptest::prelude::any::<u8>()),
        u in proptest::array::uniform32(proptest::prelude::any::<u8>()),
    ) {
        let want = x25519_dalek::x25519(k, u);
        match x25519(&k, &OnionPublicKey::from(u)) {
            Ok(got) => proptest::prop_assert_eq!(got, want),
            Err(_) => proptest::prop_assert_eq!(want, [0u8; 32]),
        }
    }
}
