//! Identity: seed, BIP39 phrase, bech32m address, QR code, and the X25519 key derived from the
//! Ed25519 key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use allium_client::identity::{
    ADDRESS_LEN, Address, AddressError, Identity, IdentityError, PHRASE_WORDS,
};
use bech32::{Bech32, Bech32m, Hrp};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const BECH32_CHARS: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn identity(n: u8) -> Identity {
    Identity::from_seed(&[n; 32])
}

#[test]
fn debug_is_redacted() {
    let id = identity(7);
    let s = format!("{id:?}");
    assert_eq!(s, "Identity(<redacted>)");
    assert!(!s.contains("07"));
}

#[test]
fn generated_seeds_differ_and_round_trip() {
    let a = Identity::generate();
    let b = Identity::generate();
    assert_ne!(*a.seed(), *b.seed());
    assert_eq!(*Identity::from_seed(&a.seed()).seed(), *a.seed());
}

#[test]
fn phrase_round_trip() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for _ in 0..50 {
        let id = Identity::generate_with(&mut rng);
        let phrase = id.phrase();
        assert_eq!(phrase.split(' ').count(), PHRASE_WORDS);
        let back = Identity::from_phrase(&phrase).unwrap();
        assert_eq!(*back.seed(), *id.seed());
        assert_eq!(back.address(), id.address());
    }
}

#[test]
fn phrase_tolerates_case_and_whitespace() {
    let id = identity(0x42);
    let phrase = id.phrase();
    let messy = format!(
        "  \t{}\n ",
        phrase
            .split(' ')
            .map(|w| w.to_uppercase())
            .collect::<Vec<_>>()
            .join("   \n")
    );
    assert_eq!(*Identity::from_phrase(&messy).unwrap().seed(), *id.seed());
}

/// The official BIP39 English vectors for 256-bit entropy (trezor/python-mnemonic vectors.json).
#[test]
fn bip39_official_vectors() {
    let abandon = format!("{}art", "abandon ".repeat(23));
    let cases: [(&str, &str); 4] = [
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            &abandon,
        ),
        (
            "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
            "legal winner thank year wave sausage worth useful legal winner thank year wave \
             sausage worth useful legal winner thank year wave sausage worth title",
        ),
        (
            "8080808080808080808080808080808080808080808080808080808080808080",
            "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd \
             amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless",
        ),
        (
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo \
             zoo zoo vote",
        ),
    ];
    for (entropy, words) in cases {
        let seed: [u8; 32] = hex::decode(entropy).unwrap().try_into().unwrap();
        let id = Identity::from_seed(&seed);
        assert_eq!(id.phrase().as_str(), words);
        assert_eq!(*Identity::from_phrase(words).unwrap().seed(), seed);
    }
}

#[test]
fn phrase_errors_are_typed() {
    let phrase = identity(3).phrase();
    let words: Vec<&str> = phrase.split(' ').collect();

    let short = words[..12].join(" ");
    assert_eq!(
        Identity::from_phrase(&short).unwrap_err(),
        IdentityError::WordCount { got: 12 }
    );
    assert_eq!(
        Identity::from_phrase("").unwrap_err(),
        IdentityError::WordCount { got: 0 }
    );
    let long = format!("{} abandon", phrase.as_str());
    assert_eq!(
        Identity::from_phrase(&long).unwrap_err(),
        IdentityError::WordCount { got: 25 }
    );

    let mut unknown = words.clone();
    unknown[4] = "allium";
    assert_eq!(
        Identity::from_phrase(&unknown.join(" ")).unwrap_err(),
        IdentityError::UnknownWord { position: 5 }
    );

    // Replacing the last word changes only checksum bits and 3 entropy bits; most replacements
    // break the checksum.
    let mut bad = 0;
    for replacement in ["abandon", "ability", "able", "about", "above", "absent"] {
        let mut w = words.clone();
        if w[23] == replacement {
            continue;
        }
        w[23] = replacement;
        match Identity::from_phrase(&w.join(" ")) {
            Err(IdentityError::BadChecksum) => bad += 1,
            Ok(_) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(bad >= 4);

    // Swapping two different words breaks the checksum.
    let mut swapped = words.clone();
    let (i, j) = (0..24)
        .flat_map(|i| (0..24).map(move |j| (i, j)))
        .find(|&(i, j)| words[i] != words[j])
        .unwrap();
    swapped.swap(i, j);
    assert_eq!(
        Identity::from_phrase(&swapped.join(" ")).unwrap_err(),
        IdentityError::BadChecksum
    );
}

#[test]
fn address_round_trip_and_form() {
    let id = identity(9);
    let addr = id.address();
    let s = addr.to_string();
    assert_eq!(s.len(), ADDRESS_LEN);
    assert!(s.starts_with("allium1"));
    assert_eq!(s, s.to_lowercase());
    assert_eq!(Address::from_str(&s).unwrap(), addr);
    assert_eq!(addr.public_key(), id.public());
    // Uppercase is the same address and prints lowercase.
    let upper = Address::from_str(&s.to_uppercase()).unwrap();
    assert_eq!(upper, addr);
    assert_eq!(upper.to_string(), s);
    assert_eq!(addr.to_uppercase(), s.to_uppercase());
}

#[test]
fn every_single_substitution_is_rejected() {
    let s = identity(11).address().to_string();
    let mut tried = 0;
    for pos in 0..s.len() {
        for c in BECH32_CHARS.chars() {
            if s.as_bytes()[pos] == c as u8 {
                continue;
            }
            let mut t = s.clone().into_bytes();
            t[pos] = c as u8;
            let t = String::from_utf8(t).unwrap();
            assert!(
                Address::from_str(&t).is_err(),
                "substitution at {pos} by {c} accepted"
            );
            tried += 1;
        }
    }
    assert!(tried > 60 * 31);
}

#[test]
fn mistyped_character_is_a_checksum_error() {
    let s = identity(12).address().to_string();
    let mut t = s.into_bytes();
    let i = 20;
    t[i] = if t[i] == b'q' { b'p' } else { b'q' };
    assert_eq!(
        Address::from_str(&String::from_utf8(t).unwrap()).unwrap_err(),
        AddressError::Checksum
    );
}

#[test]
fn address_errors_are_typed() {
    let id = identity(13);
    let key = id.public().to_bytes();
    let hrp = Hrp::parse("allium").unwrap();

    let bech32 = bech32::encode::<Bech32>(hrp, &key).unwrap();
    assert_eq!(
        Address::from_str(&bech32).unwrap_err(),
        AddressError::Bech32NotBech32m
    );

    let other = bech32::encode::<Bech32m>(Hrp::parse("alium").unwrap(), &key).unwrap();
    assert_eq!(
        Address::from_str(&other).unwrap_err(),
        AddressError::WrongHrp
    );

    let short = bech32::encode::<Bech32m>(hrp, &key[..31]).unwrap();
    assert!(matches!(
        Address::from_str(&short).unwrap_err(),
        AddressError::WrongLength { .. }
    ));
    let long = bech32::encode::<Bech32m>(hrp, &[key.as_slice(), &[0]].concat()).unwrap();
    assert!(matches!(
        Address::from_str(&long).unwrap_err(),
        AddressError::WrongLength { .. }
    ));
    let huge = bech32::encode::<Bech32m>(hrp, &[7u8; 200]).unwrap();
    let err = Address::from_str(&huge).unwrap_err();
    assert!(matches!(err, AddressError::WrongLength { .. }), "{err:?}");
    // Beyond bech32m's code length the checksum is not even computed.
    let too_long = bech32::encode::<bech32::NoChecksum>(hrp, &[7u8; 700]).unwrap();
    let err = Address::from_str(&too_long).unwrap_err();
    assert!(matches!(err, AddressError::WrongLength { .. }), "{err:?}");

    let s = id.address().to_string();
    let mixed = format!("{}{}", &s[..10].to_uppercase(), &s[10..]);
    assert_eq!(
        Address::from_str(&mixed).unwrap_err(),
        AddressError::MixedCase
    );
    let bad_char = format!("{}b{}", &s[..10], &s[11..]);
    assert_eq!(
        Address::from_str(&bad_char).unwrap_err(),
        AddressError::InvalidCharacter('b')
    );
    assert_eq!(
        Address::from_str("allium").unwrap_err(),
        AddressError::Malformed
    );
    assert_eq!(Address::from_str("").unwrap_err(), AddressError::Malformed);
}

#[test]
fn small_order_and_invalid_keys_are_rejected() {
    let hrp = Hrp::parse("allium").unwrap();
    // The identity point (order 1) and a point of order 8 (from libsodium's small-order list).
    let identity_point = {
        let mut k = [0u8; 32];
        k[0] = 1;
        k
    };
    let order8: [u8; 32] =
        hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
            .unwrap()
            .try_into()
            .unwrap();
    // y = 2 is not on the curve (x² would be a non-square).
    let not_on_curve = {
        let mut k = [0u8; 32];
        k[0] = 2;
        k
    };
    // y = p + 1 (non-canonical encoding of y = 1).
    let non_canonical: [u8; 32] =
        hex::decode("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
            .unwrap()
            .try_into()
            .unwrap();
    for key in [identity_point, order8, not_on_curve, non_canonical] {
        let s = bech32::encode::<Bech32m>(hrp, &key).unwrap();
        assert_eq!(
            Address::from_str(&s).unwrap_err(),
            AddressError::InvalidKey,
            "{s}"
        );
        assert!(Address::from_key_bytes(&key).is_err());
    }
}

#[test]
fn nonzero_padding_is_rejected() {
    let s = identity(14).address().to_string();
    // The 52nd data character carries the last key bit and 4 zero padding bits: flip its lowest
    // bit and recompute the checksum.
    let unchecked = bech32::primitives::decode::CheckedHrpstring::new::<Bech32m>(&s).unwrap();
    let data = unchecked.data_part_ascii_no_checksum();
    let mut fes: Vec<bech32::Fe32> = data
        .iter()
        .map(|&c| bech32::Fe32::from_char(c as char).unwrap())
        .collect();
    let last = fes.len() - 1;
    fes[last] = bech32::Fe32::try_from(fes[last].to_u8() ^ 1).unwrap();
    let hrp = Hrp::parse("allium").unwrap();
    let encoded: String =
        bech32::primitives::iter::Fe32IterExt::with_checksum::<Bech32m>(fes.into_iter(), &hrp)
            .chars()
            .collect();
    assert_eq!(
        Address::from_str(&encoded).unwrap_err(),
        AddressError::NonCanonical
    );
}

#[test]
fn qr_code_has_structure() {
    let qr = identity(15).address().qr_terminal();
    let lines: Vec<&str> = qr.lines().collect();
    assert!(lines.len() > 10, "{qr}");
    let width = lines[0].chars().count();
    assert!(width > 20);
    assert!(lines.iter().all(|l| l.chars().count() == width));
    assert!(
        qr.chars()
            .all(|c| matches!(c, ' ' | '█' | '▀' | '▄' | '\n'))
    );
    assert!(qr.contains('█') || qr.contains('▀'));
}

proptest! {
    #[test]
    fn address_parse_never_panics(s in "\\PC{0,120}") {
        let _ = Address::from_str(&s);
    }

    #[test]
    fn address_like_strings_never_panic(s in "(allium|ALLIUM|bc|a)1[qpzry9x8gf2tvdw0s3jn54khce6mua7lQPZ]{0,100}") {
        let _ = Address::from_str(&s);
    }

    #[test]
    fn phrase_parse_never_panics(s in "\\PC{0,300}") {
        let _ = Identity::from_phrase(&s);
    }

    #[test]
    fn phrase_of_real_words_never_panics(words in proptest::collection::vec(
        prop_oneof![Just("abandon"), Just("zoo"), Just("legal"), Just("art"), Just("vote"), Just("Ämter")], 0..30)) {
        let _ = Identity::from_phrase(&words.join(" "));
    }
}

/// The address of RFC 8032's first test key, as given in whitepaper/client.md §3.
#[test]
fn rfc8032_test_key_address() {
    let seed: [u8; 32] =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
    let id = Identity::from_seed(&seed);
    assert_eq!(
        hex::encode(id.public().as_bytes()),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    let s = "allium16adfsqvzky9t042tlmfujeq88g8wzuhnm2nzxfd0qgdx3ac82ydqwvsmx4";
    assert_eq!(id.address().to_string(), s);
    assert_eq!(Address::from_str(s).unwrap(), id.address());
}
