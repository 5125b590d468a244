//! Every decoder of group bytes (`whitepaper/groups.md`) on hostile input: random bytes and
//! valid encodings with one byte changed, cut or extended give a typed error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use allium_client::group::{
    Epoch, GroupSecret, MemberKey, MemberSecret, MembershipList, RekeyPart, Role, epoch_id_of,
    rekey,
};
use allium_client::identity::Identity;
use allium_client::session::DeviceKeys;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Fixture {
    group: GroupSecret,
    list: Vec<u8>,
    member_key: Vec<u8>,
    member_secret: Vec<u8>,
    part: Vec<u8>,
    epoch_state: Vec<u8>,
    message: Vec<u8>,
    sealed: Vec<u8>,
    bob: DeviceKeys,
    bob_secret: MemberSecret,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let group = GroupSecret::generate(&mut rng).unwrap();
        let a = Identity::generate_with(&mut rng);
        let b = Identity::generate_with(&mut rng);
        let alice = DeviceKeys::generate(&a, 1, 5, &mut rng);
        let bob = DeviceKeys::generate(&b, 1, 5, &mut rng);
        let a_secret = MemberSecret::generate(5, &mut rng);
        let bob_secret = MemberSecret::generate(5, &mut rng);
        let keys = [
            a_secret.public(&group.public(), &alice).unwrap(),
            bob_secret.public(&group.public(), &bob).unwrap(),
        ];
        let members = BTreeMap::from([
            (*a.public().as_bytes(), Role::Admin),
            (*b.public().as_bytes(), Role::Member),
        ]);
        let list = MembershipList::genesis(&group.public(), &members, &alice, 5).unwrap();
        let (parts, mut epoch) = rekey(&list, 1, &keys, &alice, 5, &mut rng).unwrap();
        let message = epoch.encrypt(&alice, b"hello", &mut rng).unwrap();
        let sealed = group.seal_item(&message, &mut rng).unwrap();
        Fixture {
            list: list.as_bytes().to_vec(),
            member_key: keys[1].as_bytes().to_vec(),
            member_secret: bob_secret.encode().to_vec(),
            part: parts[0].as_bytes().to_vec(),
            epoch_state: epoch.encode().to_vec(),
            group,
            message,
            sealed,
            bob,
            bob_secret,
        }
    })
}

/// Every decoder applied to `bytes`; each must return, and none may accept a change to a signed
/// or authenticated encoding.
fn decode_all(bytes: &[u8]) -> [bool; 8] {
    let f = fixture();
    let list = MembershipList::decode(&f.list).unwrap();
    let mut bob_epoch = RekeyPart::decode(&f.part)
        .and_then(|p| Epoch::open(&[p], &list, &f.bob, std::slice::from_ref(&f.bob_secret)))
        .unwrap();
    [
        MembershipList::decode(bytes).is_ok(),
        MemberKey::decode(bytes).is_ok(),
        MemberSecret::decode(bytes).is_ok(),
        RekeyPart::decode(bytes).is_ok(),
        Epoch::decode(bytes).is_ok(),
        bob_epoch.decrypt(bytes).is_ok(),
        f.group.open_item(bytes).is_ok(),
        epoch_id_of(bytes).is_ok(),
    ]
}

#[test]
fn the_fixtures_decode() {
    let f = fixture();
    assert!(MembershipList::decode(&f.list).is_ok());
    assert!(MemberKey::decode(&f.member_key).is_ok());
    assert!(MemberSecret::decode(&f.member_secret).is_ok());
    assert!(RekeyPart::decode(&f.part).is_ok());
    assert!(Epoch::decode(&f.epoch_state).is_ok());
    assert!(f.group.open_item(&f.sealed).is_ok());
    assert!(decode_all(&f.message)[5]);
}

fn signed_encodings() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let f = fixture();
    prop_oneof![
        Just((0, f.list.clone())),
        Just((1, f.member_key.clone())),
        Just((3, f.part.clone())),
        Just((5, f.message.clone())),
        Just((6, f.sealed.clone())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_all(&bytes);
    }

    #[test]
    fn a_changed_byte_is_refused((which, enc) in signed_encodings(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bad = enc.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        prop_assert!(!decode_all(&bad)[which]);
    }

    #[test]
    fn cut_or_extended_encodings_are_refused((which, enc) in signed_encodings(), cut in 1usize..64, extend in any::<bool>()) {
        let mut bad = enc.clone();
        if extend {
            bad.extend(std::iter::repeat_n(0u8, cut));
        } else {
            bad.truncate(enc.len().saturating_sub(cut));
        }
        prop_assert!(!decode_all(&bad)[which]);
    }

    #[test]
    fn state_encodings_with_a_changed_byte_never_panic(which in 0usize..2, at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let f = fixture();
        let mut bad = if which == 0 { f.epoch_state.clone() } else { f.member_secret.clone() };
        let i = at.index(bad.len());
        bad[i] ^= flip;
        let _ = decode_all(&bad);
    }
}

/// A group file (`groups/<G>.bin`) holding the fixture's list, keys, part and epoch, with an
/// item in its outbox.
fn group_file() -> &'static Vec<u8> {
    use allium_client::group::MembershipLog;
    use allium_client::messenger::groups::{GroupRecord, Status};
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| {
        let f = fixture();
        let list = MembershipList::decode(&f.list).unwrap();
        let rec = GroupRecord {
            status: Status::Member,
            name: "club".into(),
            secret: f.group.clone(),
            inviter: [9; 32],
            was_member: true,
            max_epoch: 1,
            log: MembershipLog::new(list),
            secrets: allium_client::group::MemberSecrets::from_vec(vec![
                MemberSecret::decode(&f.member_secret).unwrap(),
            ]),
            keys: vec![MemberKey::decode(&f.member_key).unwrap()],
            parts: vec![RekeyPart::decode(&f.part).unwrap()],
            epochs: vec![allium_client::messenger::groups::HeldEpoch {
                epoch: Epoch::decode(&f.epoch_state).unwrap(),
                issued_at: 5,
                opened_at: 6,
            }],
            invited: vec![[1; 32]],
            accepted: vec![[2; 32]],
            leaving: vec![],
            mine: Some(([3; 32], [4; 32])),
            head_copy: Some(([5; 32], 7)),
            outbox: vec![f.sealed.clone()],
        };
        let bytes = rec.encode().to_vec();
        let back = GroupRecord::decode(&bytes).unwrap();
        assert_eq!(back.encode().as_slice(), bytes.as_slice(), "round trip");
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn group_files_changed_cut_or_random_never_panic(at in any::<prop::sample::Index>(), flip in 1u8..=255,
                                                     cut in 0usize..4000, random in proptest::collection::vec(any::<u8>(), 0..600)) {
        use allium_client::messenger::groups::GroupRecord;
        let enc = group_file();
        let mut bad = enc.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        let _ = GroupRecord::decode(&bad);
        prop_assert!(GroupRecord::decode(&enc[..enc.len().saturating_sub(cut + 1)]).is_err());
        let _ = GroupRecord::decode(&random);
    }
}
