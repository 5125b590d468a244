//! Groups with the library (`whitepaper/groups.md`): removed members, members offline over
//! rekeys, concurrent admins, forward secrecy within an epoch.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // tests; the ignored measurement prints its figures

use std::collections::BTreeMap;

use allium_client::group::{
    Change, Epoch, GroupError, GroupSecret, MemberKey, MemberSecret, MemberSecrets, MembershipList,
    MembershipLog, RekeyPart, Role, epoch_id_of, kind, rekey,
};
use allium_client::identity::Identity;
use allium_client::session::DeviceKeys;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_700_000_000_000;

struct Device {
    keys: DeviceKeys,
    secret: MemberSecret,
    public: MemberKey,
}

struct Person {
    account: [u8; 32],
    devices: Vec<Device>,
}

fn person(group: &GroupSecret, devices: u32, rng: &mut ChaCha20Rng) -> Person {
    let id = Identity::generate_with(rng);
    let devices = (1..=devices)
        .map(|d| {
            let keys = DeviceKeys::generate(&id, d, T0, rng);
            let secret = MemberSecret::generate(T0, rng);
            let public = secret.public(&group.public(), &keys).unwrap();
            Device {
                keys,
                secret,
                public,
            }
        })
        .collect();
    Person {
        account: *id.public().as_bytes(),
        devices,
    }
}

fn keys(people: &[&Person]) -> Vec<MemberKey> {
    people
        .iter()
        .flat_map(|p| p.devices.iter().map(|d| d.public.clone()))
        .collect()
}

/// Every item goes through the sealed mailbox layer, as it would in the group mailbox.
fn through_mailbox(g: &GroupSecret, item: &[u8], rng: &mut ChaCha20Rng) -> Vec<u8> {
    let sealed = g.seal_item(item, rng).unwrap();
    g.open_item(&sealed).unwrap().1.to_vec()
}

fn parts_via(g: &GroupSecret, parts: &[RekeyPart], rng: &mut ChaCha20Rng) -> Vec<RekeyPart> {
    parts
        .iter()
        .map(|p| RekeyPart::decode(&through_mailbox(g, p.as_bytes(), rng)).unwrap())
        .collect()
}

fn open(parts: &[RekeyPart], list: &MembershipList, d: &Device) -> Result<Epoch, GroupError> {
    Epoch::open(parts, list, &d.keys, std::slice::from_ref(&d.secret))
}

struct World {
    rng: ChaCha20Rng,
    group: GroupSecret,
    alice: Person,
    bob: Person,
    carol: Person,
    dave: Person,
}

fn world(seed: u64) -> World {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let group = GroupSecret::generate(&mut rng).unwrap();
    let alice = person(&group, 2, &mut rng);
    let bob = person(&group, 1, &mut rng);
    let carol = person(&group, 2, &mut rng);
    let dave = person(&group, 1, &mut rng);
    World {
        rng,
        group,
        alice,
        bob,
        carol,
        dave,
    }
}

fn genesis(w: &World, admins: &[&Person], members: &[&Person]) -> MembershipList {
    let mut m = BTreeMap::new();
    for p in members {
        m.insert(p.account, Role::Member);
    }
    for p in admins {
        m.insert(p.account, Role::Admin);
    }
    MembershipList::genesis(&w.group.public(), &m, &admins[0].devices[0].keys, T0).unwrap()
}

#[test]
fn members_exchange_messages_and_see_who_wrote() {
    let mut w = world(1);
    let list = genesis(&w, &[&w.alice], &[&w.bob, &w.carol]);
    let all = keys(&[&w.alice, &w.bob, &w.carol]);
    let (parts, mut a0) = rekey(&list, 1, &all, &w.alice.devices[0].keys, T0, &mut w.rng).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].total(), 5);
    let parts = parts_via(&w.group, &parts, &mut w.rng);
    let mut epochs: Vec<Epoch> = [
        &w.alice.devices[1],
        &w.bob.devices[0],
        &w.carol.devices[0],
        &w.carol.devices[1],
    ]
    .iter()
    .map(|d| open(&parts, &list, d).unwrap())
    .collect();
    for e in &epochs {
        assert_eq!(e.epoch_id(), a0.epoch_id());
    }
    // Alice's first device writes three; Carol's second reads them out of order.
    let msgs: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let m = a0
                .encrypt(
                    &w.alice.devices[0].keys,
                    format!("hello {i}").as_bytes(),
                    &mut w.rng,
                )
                .unwrap();
            through_mailbox(&w.group, &m, &mut w.rng)
        })
        .collect();
    assert_eq!(epoch_id_of(&msgs[0]).unwrap(), a0.epoch_id());
    let carol2 = &mut epochs[3];
    for i in [2, 0, 1] {
        let got = carol2.decrypt(&msgs[i]).unwrap();
        assert_eq!(got.payload.as_slice(), format!("hello {i}").as_bytes());
        assert_eq!(got.account, w.alice.account);
        assert_eq!(got.device, w.alice.devices[0].keys.cert().signing_key());
        assert_eq!(got.counter, i as u32);
    }
    assert_eq!(carol2.skipped(), 0);
    assert_eq!(carol2.decrypt(&msgs[1]).err(), Some(GroupError::Duplicate));
    // Bob answers; Alice reads; her own message comes back as her own.
    let reply = epochs[1]
        .encrypt(&w.bob.devices[0].keys, b"hi", &mut w.rng)
        .unwrap();
    assert_eq!(a0.decrypt(&reply).unwrap().account, w.bob.account);
    assert_eq!(a0.decrypt(&msgs[0]).err(), Some(GroupError::OwnMessage));
    // A member cannot write as another: Bob's device signing as Alice's slot is refused.
    assert_eq!(
        epochs[1]
            .encrypt(&w.alice.devices[0].keys, b"x", &mut w.rng)
            .err(),
        Some(GroupError::NotRecipient)
    );
    // A flipped byte anywhere is refused and uses up nothing.
    let fresh = a0
        .encrypt(&w.alice.devices[0].keys, b"later", &mut w.rng)
        .unwrap();
    for at in [20, 40, fresh.len() - 1] {
        let mut bad = fresh.clone();
        bad[at] ^= 1;
        assert!(epochs[2].decrypt(&bad).is_err());
    }
    assert_eq!(
        epochs[2].decrypt(&fresh).unwrap().payload.as_slice(),
        b"later"
    );
    // Sizes: a 100-byte text is one 352-byte stored item.
    let text = a0
        .encrypt(&w.alice.devices[0].keys, &[0x61; 100], &mut w.rng)
        .unwrap();
    assert_eq!(w.group.seal_item(&text, &mut w.rng).unwrap().len(), 352);
}

#[test]
fn a_removed_member_reads_nothing_of_later_epochs() {
    let mut w = world(2);
    let l0 = genesis(&w, &[&w.alice], &[&w.bob, &w.dave]);
    let (p1, _a1) = rekey(
        &l0,
        1,
        &keys(&[&w.alice, &w.bob, &w.dave]),
        &w.alice.devices[0].keys,
        T0,
        &mut w.rng,
    )
    .unwrap();
    let mut dave1 = open(&p1, &l0, &w.dave.devices[0]).unwrap();
    // Dave is removed; Alice rekeys for the new list with every key she has seen, Dave's too.
    let l1 = l0
        .next(
            &[Change::Remove(w.dave.account)],
            &w.alice.devices[0].keys,
            T0 + 1,
        )
        .unwrap();
    let all = keys(&[&w.alice, &w.bob, &w.dave]);
    let (p2, mut a2) = rekey(&l1, 2, &all, &w.alice.devices[0].keys, T0 + 1, &mut w.rng).unwrap();
    assert_eq!(p2[0].total(), 3);
    assert!((0..p2[0].len()).all(|i| p2[0].entry(i).unwrap().account != w.dave.account));
    assert_eq!(
        open(&p2, &l1, &w.dave.devices[0]).err(),
        Some(GroupError::NotRecipient)
    );
    // Neither his old epoch nor a forged entry opens the new one.
    let m = a2
        .encrypt(&w.alice.devices[0].keys, b"after removal", &mut w.rng)
        .unwrap();
    assert_eq!(dave1.decrypt(&m).err(), Some(GroupError::WrongEpoch));
    let mut bob2 = open(&p2, &l1, &w.bob.devices[0]).unwrap();
    assert_eq!(
        bob2.decrypt(&m).unwrap().payload.as_slice(),
        b"after removal"
    );
    // Dave's member secret does not open another device's entry either.
    let bob_as_dave = Epoch::open(
        &p2,
        &l1,
        &w.bob.devices[0].keys,
        std::slice::from_ref(&w.dave.devices[0].secret),
    );
    assert_eq!(bob_as_dave.err(), Some(GroupError::Decrypt));
    // Nor can he (or any non-admin) make a rekey, or open parts against a list they were not
    // made for.
    let dave = &w.dave.devices[0].keys;
    assert_eq!(
        rekey(&l0, 3, &all, dave, T0 + 2, &mut w.rng).err(),
        Some(GroupError::NotAdmin)
    );
    assert_eq!(
        open(&p2, &l0, &w.bob.devices[0]).err(),
        Some(GroupError::WrongList)
    );
}

#[test]
fn a_member_offline_over_two_rekeys_catches_up() {
    let mut w = world(3);
    let l0 = genesis(&w, &[&w.alice], &[&w.bob]);
    let alice = &w.alice.devices[0].keys;
    let (p1, mut a1) = rekey(&l0, 1, &keys(&[&w.alice, &w.bob]), alice, T0, &mut w.rng).unwrap();
    let mut bob_log = MembershipLog::new(l0.clone());
    let bob1 = open(&p1, &l0, &w.bob.devices[0]).unwrap();
    drop(bob1);
    // Bob goes offline. Carol joins (rekey 2), Dave joins (rekey 3); messages in each epoch.
    let m1 = a1.encrypt(alice, b"epoch 1", &mut w.rng).unwrap();
    let l1 = l0
        .next(
            &[Change::Add(w.carol.account, Role::Member)],
            alice,
            T0 + 10,
        )
        .unwrap();
    let (p2, mut a2) = rekey(
        &l1,
        2,
        &keys(&[&w.alice, &w.bob, &w.carol]),
        alice,
        T0 + 10,
        &mut w.rng,
    )
    .unwrap();
    let m2 = a2.encrypt(alice, b"epoch 2", &mut w.rng).unwrap();
    let l2 = l1
        .next(&[Change::Add(w.dave.account, Role::Member)], alice, T0 + 20)
        .unwrap();
    let (p3, mut a3) = rekey(
        &l2,
        3,
        &keys(&[&w.alice, &w.bob, &w.carol, &w.dave]),
        alice,
        T0 + 20,
        &mut w.rng,
    )
    .unwrap();
    let m3 = a3.encrypt(alice, b"epoch 3", &mut w.rng).unwrap();
    // Back online, Bob reads the mailbox in whatever order it comes: the newer list first.
    assert!(
        !bob_log
            .insert(MembershipList::decode(l2.as_bytes()).unwrap())
            .unwrap()
    );
    assert_eq!(bob_log.pending(), 1);
    assert!(
        bob_log
            .insert(MembershipList::decode(l1.as_bytes()).unwrap())
            .unwrap()
    );
    assert_eq!(bob_log.head().hash(), l2.hash());
    assert_eq!(bob_log.pending(), 0);
    let mut e2 = open(
        &p2,
        bob_log.get(&p2[0].list_hash()).unwrap(),
        &w.bob.devices[0],
    )
    .unwrap();
    let mut e3 = open(
        &p3,
        bob_log.get(&p3[0].list_hash()).unwrap(),
        &w.bob.devices[0],
    )
    .unwrap();
    assert_eq!(e2.decrypt(&m2).unwrap().payload.as_slice(), b"epoch 2");
    assert_eq!(e3.decrypt(&m3).unwrap().payload.as_slice(), b"epoch 3");
    // The epoch-1 message needs the epoch-1 state Bob kept (here: reopened from the rekey).
    let mut e1 = open(&p1, &l0, &w.bob.devices[0]).unwrap();
    assert_eq!(e1.decrypt(&m1).unwrap().payload.as_slice(), b"epoch 1");
}

#[test]
fn concurrent_changes_by_two_admins_converge() {
    let w = world(4);
    let l0 = genesis(&w, &[&w.alice, &w.bob], &[&w.carol]);
    let alice = &w.alice.devices[0].keys;
    let bob = &w.bob.devices[0].keys;
    // At the same time Alice adds Dave and Bob removes Carol, both from version 0.
    let la = l0
        .next(&[Change::Add(w.dave.account, Role::Member)], alice, T0 + 5)
        .unwrap();
    let lb = l0
        .next(&[Change::Remove(w.carol.account)], bob, T0 + 5)
        .unwrap();
    assert_eq!(la.version(), lb.version());
    // Every member, whatever order it sees them in, picks the same head.
    let mut one = MembershipLog::new(l0.clone());
    let mut two = MembershipLog::new(l0.clone());
    one.insert(la.clone()).unwrap();
    one.insert(lb.clone()).unwrap();
    two.insert(lb.clone()).unwrap();
    two.insert(la.clone()).unwrap();
    assert_eq!(one.head().hash(), two.head().hash());
    let (winner, loser, loser_signer) = if la.beats(&lb) {
        (&la, &lb, alice)
    } else {
        (&lb, &la, bob)
    };
    assert_eq!(one.head().hash(), winner.hash());
    // The losing admin re-applies its change on the winner; everyone ends with both changes.
    let merged = loser
        .rebase(&l0, winner, loser_signer, T0 + 6)
        .unwrap()
        .unwrap();
    for log in [&mut one, &mut two] {
        assert!(log.insert(merged.clone()).unwrap());
        let head = log.head();
        assert_eq!(head.version(), 2);
        assert_eq!(head.role(&w.dave.account), Some(Role::Member));
        assert_eq!(head.role(&w.carol.account), None);
    }
    // A rebase that changes nothing more makes no list.
    assert!(
        winner
            .rebase(&l0, &merged, alice, T0 + 7)
            .unwrap()
            .is_none()
    );
    // Two admins removing each other: the loser is no longer an admin and cannot rebase.
    let x = l0
        .next(&[Change::Remove(w.bob.account)], alice, T0 + 8)
        .unwrap();
    let y = l0
        .next(&[Change::Remove(w.alice.account)], bob, T0 + 8)
        .unwrap();
    let (win, lose, signer) = if x.beats(&y) {
        (&x, &y, bob)
    } else {
        (&y, &x, alice)
    };
    assert_eq!(
        lose.rebase(&l0, win, signer, T0 + 9).err(),
        Some(GroupError::NotAdmin)
    );
    // A list signed by a non-admin is refused.
    let carol = &w.carol.devices[0].keys;
    assert_eq!(l0.next(&[], carol, T0).err(), Some(GroupError::NotAdmin));
    let mut log = MembershipLog::new(l0.clone());
    let forged = MembershipList::genesis(
        &w.group.public(),
        &BTreeMap::from([(w.carol.account, Role::Admin)]),
        carol,
        T0,
    )
    .unwrap();
    let forged_next = forged
        .next(&[Change::Add(w.dave.account, Role::Admin)], carol, T0)
        .unwrap();
    assert!(!log.insert(forged_next).unwrap()); // its parent never comes
    assert_eq!(log.head().hash(), l0.hash());
    let _ = kind::LIST;
}

#[test]
fn forward_secrecy_within_an_epoch() {
    let mut w = world(5);
    let l0 = genesis(&w, &[&w.alice], &[&w.bob]);
    let alice = &w.alice.devices[0].keys;
    let (parts, mut a) = rekey(&l0, 1, &keys(&[&w.alice, &w.bob]), alice, T0, &mut w.rng).unwrap();
    let mut bob = open(&parts, &l0, &w.bob.devices[0]).unwrap();
    let sent: Vec<Vec<u8>> = (0..5)
        .map(|i| a.encrypt(alice, &[i; 10], &mut w.rng).unwrap())
        .collect();
    // Bob reads 0, 1, 3 (2 is late), then his device is copied by a thief.
    for i in [0, 1, 3] {
        bob.decrypt(&sent[i]).unwrap();
    }
    let stolen = bob.encode();
    assert!(!format!("{bob:?}").contains(&hex::encode(&stolen[1 + 32 + 8 + 16 + 32..][..32])));
    let mut thief = Epoch::decode(&stolen).unwrap();
    // Messages read before the theft stay closed to the thief; the late one (its key still
    // kept) and later ones do not: the limit of a symmetric chain, healed at the next rekey.
    for i in [0, 1, 3] {
        assert_eq!(thief.decrypt(&sent[i]).err(), Some(GroupError::Duplicate));
    }
    assert!(thief.decrypt(&sent[2]).is_ok());
    assert!(thief.decrypt(&sent[4]).is_ok());
    // The state that was stolen is all a device keeps of the epoch: it round-trips.
    assert_eq!(Epoch::decode(&bob.encode()).unwrap().encode(), bob.encode());
    // A fresh open of the rekey (what a thief of the member key could do) does read everything:
    // the member key is why devices replace it after each rekey (§4.2).
    let mut again = open(&parts, &l0, &w.bob.devices[0]).unwrap();
    assert!(again.decrypt(&sent[0]).is_ok());
}

#[test]
fn gaps_are_bounded_and_skipped_keys_are_consumed() {
    let mut w = world(6);
    let l0 = genesis(&w, &[&w.alice], &[&w.bob]);
    let alice = &w.alice.devices[0].keys;
    let (parts, mut a) = rekey(&l0, 1, &keys(&[&w.alice, &w.bob]), alice, T0, &mut w.rng).unwrap();
    let mut bob = open(&parts, &l0, &w.bob.devices[0]).unwrap();
    let sent: Vec<Vec<u8>> = (0..1002)
        .map(|_| a.encrypt(alice, b"n", &mut w.rng).unwrap())
        .collect();
    assert_eq!(
        bob.decrypt(&sent[1001]).err(),
        Some(GroupError::TooFarAhead { gap: 1001 })
    );
    assert_eq!(bob.skipped(), 0);
    assert!(bob.decrypt(&sent[0]).is_ok());
    assert!(bob.decrypt(&sent[1001]).is_ok());
    assert_eq!(bob.skipped(), 1000);
    assert!(bob.decrypt(&sent[500]).is_ok());
    assert_eq!(bob.skipped(), 999);
    assert_eq!(bob.decrypt(&sent[500]).err(), Some(GroupError::Duplicate));
    // The state keeps the skipped keys across a restart, oldest first.
    let restored = Epoch::decode(&bob.encode()).unwrap();
    assert_eq!(restored.skipped(), 999);
}

/// The figures of `whitepaper/groups.md` §11.1: a group of 1,000 members with one device each,
/// built with the library. Prints sizes and the smallest time of several runs.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn thousand_members() {
    use std::time::{Duration, Instant};

    fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
        let mut best = Duration::MAX;
        let mut out = None;
        for _ in 0..runs {
            let t = Instant::now();
            let v = f();
            best = best.min(t.elapsed());
            out = Some(v);
        }
        (best, out.unwrap())
    }

    let mut rng = ChaCha20Rng::seed_from_u64(1000);
    let group = GroupSecret::generate(&mut rng).unwrap();
    let people: Vec<Person> = (0..1000).map(|_| person(&group, 1, &mut rng)).collect();
    let admin = &people[0].devices[0];
    let reader = &people[999].devices[0];
    let mut members = BTreeMap::new();
    for p in &people {
        members.insert(p.account, Role::Member);
    }
    members.insert(people[0].account, Role::Admin);
    let (t_list, list) = best(5, || {
        MembershipList::genesis(&group.public(), &members, &admin.keys, T0).unwrap()
    });
    let list_sealed = group.seal_item(list.as_bytes(), &mut rng).unwrap().len();
    let all: Vec<MemberKey> = people
        .iter()
        .map(|p| {
            let sealed = group
                .seal_item(p.devices[0].public.as_bytes(), &mut rng)
                .unwrap();
            MemberKey::decode(&group.open_item(&sealed).unwrap().1).unwrap()
        })
        .collect();
    let key_sealed = group.seal_item(all[0].as_bytes(), &mut rng).unwrap().len();

    // One rekey: wrap for 1,000 devices, sign the parts, seal them for the mailbox.
    let (t_rekey, (parts, mut sender, sealed_parts)) = best(3, || {
        let (parts, own) = rekey(&list, 1, &all, &admin.keys, T0, &mut rng).unwrap();
        let sealed: Vec<Vec<u8>> = parts
            .iter()
            .map(|p| group.seal_item(p.as_bytes(), &mut rng).unwrap())
            .collect();
        (parts, own, sealed)
    });
    let rekey_bytes: usize = sealed_parts.iter().map(Vec::len).sum();
    // One device opening it: unseal and check every part, unwrap, derive 1,000 chains.
    let (t_open_rekey, mut epoch) = best(5, || {
        let parts: Vec<RekeyPart> = sealed_parts
            .iter()
            .map(|s| RekeyPart::decode(&group.open_item(s).unwrap().1).unwrap())
            .collect();
        open(&parts, &list, reader).unwrap()
    });
    assert_eq!(parts.len(), 20);
    let checked: Vec<RekeyPart> = sealed_parts
        .iter()
        .map(|s| RekeyPart::decode(&group.open_item(s).unwrap().1).unwrap())
        .collect();
    let (t_unwrap, _) = best(5, || open(&checked, &list, reader).unwrap());
    let (t_unseal_part, inner) = best(5, || group.open_item(&sealed_parts[0]).unwrap().1);
    let (t_check_part, _) = best(5, || RekeyPart::decode(&inner).unwrap());
    let (t_seal_part, _) = best(5, || group.seal_item(&inner, &mut rng).unwrap());
    let state_bytes = epoch.encode().len();

    // One message: encrypt and seal; then unseal and decrypt.
    let text = [0x61u8; 100];
    let mut sealed = Vec::new();
    let (t_send, _) = best(200, || {
        let m = sender.encrypt(&admin.keys, &text, &mut rng).unwrap();
        let s = group.seal_item(&m, &mut rng).unwrap();
        sealed.push(s);
    });
    let mut i = 0;
    let (t_read, _) = best(200, || {
        let (_, item) = group.open_item(&sealed[i]).unwrap();
        let got = epoch.decrypt(&item).unwrap();
        i += 1;
        got
    });
    println!("1,000 members, one device each:");
    println!("  list: {} bytes sealed, signed in {t_list:?}", list_sealed);
    println!(
        "  member key: {key_sealed} bytes sealed; 1,000 of them {} bytes",
        key_sealed * 1000
    );
    println!(
        "  rekey: {} parts, {rekey_bytes} bytes sealed, made in {t_rekey:?}",
        sealed_parts.len()
    );
    println!("  rekey opened by one device (20 parts checked): {t_open_rekey:?}");
    println!(
        "  of which per part: unseal {t_unseal_part:?} (sealing: {t_seal_part:?}), check {t_check_part:?}"
    );
    println!("  of which unwrapping and deriving the 1,000 chains: {t_unwrap:?}");
    println!("  epoch state of one device: {state_bytes} bytes");
    println!(
        "  100-byte text: {} bytes stored, sent (encrypt + seal) in {t_send:?}",
        sealed[0].len()
    );
    println!("  opened (unseal + decrypt + verify) in {t_read:?}");
}

/// A member holds every sender's chain key, so it can encrypt as anyone; the signature is what
/// stops it, and the forgery uses up nothing (`whitepaper/groups.md` §10.6).
#[test]
fn a_member_forging_another_sender_is_refused_and_changes_nothing() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};
    use allium_client::group::labels;
    use ed25519_dalek::{Signer, SigningKey};
    use hkdf::Hkdf;
    use hmac::{Hmac, Mac};
    use rand_core::RngCore;
    use sha2::Sha256;

    fn hkdf<const N: usize>(salt: &[u8], ikm: &[&[u8]], info: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        Hkdf::<Sha256>::new(Some(salt), &ikm.concat())
            .expand(info, &mut out)
            .unwrap();
        out
    }
    fn seal(key: &[u8], nonce: &[u8], ad: &[u8], msg: &[u8]) -> Vec<u8> {
        Aes256Gcm::new_from_slice(key)
            .unwrap()
            .encrypt(Nonce::from_slice(nonce), Payload { msg, aad: ad })
            .unwrap()
    }

    let mut w = world(7);
    let l0 = genesis(&w, &[&w.alice], &[&w.bob, &w.carol]);
    let alice = &w.alice.devices[0].keys;
    // The epoch key is the rekey's first draw: what Bob, a member, effectively holds.
    let mut k = [0u8; 32];
    w.rng.clone().fill_bytes(&mut k);
    let all = keys(&[&w.alice, &w.bob, &w.carol]);
    let (parts, mut a) = rekey(&l0, 1, &all, alice, T0, &mut w.rng).unwrap();
    let mut carol = open(&parts, &l0, &w.carol.devices[0]).unwrap();
    let g = w.group.public();
    let id = a.epoch_id();
    let j = a
        .senders()
        .position(|(_, d)| d == alice.cert().signing_key())
        .unwrap();
    let (acct, dev) = a.senders().nth(j).unwrap();
    // Message 0 of Alice's chain, encrypted correctly but signed by Bob's device.
    let hk: [u8; 32] = hkdf(&k, &[&g], labels::HEADER_KEY);
    let ck: [u8; 32] = hkdf(&k, &[&acct, &dev], labels::SENDER_CHAIN);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&ck).unwrap();
    mac.update(b"allium/v1/session/message-key");
    let mk = mac.finalize().into_bytes();
    let kn: [u8; 44] = hkdf(&[0; 32], &[&mk], b"allium/v1/session/aead");
    let index = u16::try_from(j).unwrap().to_be_bytes();
    let counter = 0u32.to_be_bytes();
    let payload = b"I, Alice, resign";
    let bob_signing =
        SigningKey::from_bytes(&w.bob.devices[0].keys.encode()[1..33].try_into().unwrap());
    let sig = bob_signing.sign(&[labels::SIGNED, &g, &id, &index, &counter, payload].concat());
    let mut plain = sig.to_bytes().to_vec();
    plain.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    plain.extend_from_slice(payload);
    plain.resize(256, 0);
    let nonce = [7u8; 12];
    let header = seal(
        &hk,
        &nonce,
        &[labels::HEADER, &g, &id].concat(),
        &[index.as_slice(), &counter].concat(),
    );
    let body = seal(
        &kn[..32],
        &kn[32..],
        &[labels::MESSAGE, &g, &id, &index, &counter].concat(),
        &plain,
    );
    let forged = [&[4u8][..], &id, &nonce, &header, &body].concat();
    assert_eq!(carol.decrypt(&forged).err(), Some(GroupError::BadSignature));
    // Nothing moved: Alice's genuine message 0 opens, and the forgery then finds its key gone.
    let real = a.encrypt(alice, b"genuine", &mut w.rng).unwrap();
    let got = carol.decrypt(&real).unwrap();
    assert_eq!((got.payload.as_slice(), got.counter), (&b"genuine"[..], 0));
    assert_eq!(carol.decrypt(&forged).err(), Some(GroupError::Duplicate));
}

/// §4.2 and §10.3: a thief who copies a device's whole group state at time t reads the epoch of
/// the next membership change (the rekey for it is wrapped to a key the copy holds), and nothing
/// of the epoch after: the device replaced its key when that epoch reached it, the next rekey
/// is wrapped to the replacement, and the secrets the copy holds are erased on the device.
#[test]
fn a_stolen_group_state_opens_nothing_after_the_next_change_and_key_replacement() {
    let mut w = world(9);
    let g = w.group.public();
    let alice = w.alice.devices[0].keys.clone();
    let bob = w.bob.devices[0].keys.clone();
    let mut bob_secrets = MemberSecrets::from_vec(vec![w.bob.devices[0].secret.clone()]);
    // The mailbox as the admin reads it: the newest key of each device wins.
    let mut announced = keys(&[&w.alice, &w.bob, &w.carol]);
    let l0 = genesis(&w, &[&w.alice], &[&w.bob]);
    let (p1, _) = rekey(&l0, 1, &announced, &alice, T0, &mut w.rng).unwrap();
    let (e1, due) = bob_secrets.open(&p1, &l0, &bob).unwrap();
    assert!(due, "the epoch came through Bob's newest key");
    announced.push(bob_secrets.replace(&g, &bob, T0 + 1, &mut w.rng).unwrap());

    // Time t: the thief copies Bob's whole group state.
    let mut stolen_secrets = bob_secrets.clone();
    let stolen_epoch = Epoch::decode(&e1.encode()).unwrap();

    // Next membership change: Carol joins. The rekey is wrapped to Bob's newest key, which the
    // copy holds too: the thief reads this epoch.
    let l1 = l0
        .next(
            &[Change::Add(w.carol.account, Role::Member)],
            &alice,
            T0 + 10,
        )
        .unwrap();
    let (p2, mut a2) = rekey(&l1, 2, &announced, &alice, T0 + 10, &mut w.rng).unwrap();
    let (mut thief2, _) = stolen_secrets.clone().open(&p2, &l1, &bob).unwrap();
    let m2 = a2.encrypt(&alice, b"epoch 2", &mut w.rng).unwrap();
    assert_eq!(thief2.decrypt(&m2).unwrap().payload.as_slice(), b"epoch 2");
    // Bob opens it, erases the secret before it, and replaces his key.
    let before = bob_secrets.as_slice().len();
    let (_, due) = bob_secrets.open(&p2, &l1, &bob).unwrap();
    assert!(due);
    assert_eq!(
        bob_secrets.as_slice().len(),
        before - 1,
        "the older secret is erased"
    );
    announced.push(bob_secrets.replace(&g, &bob, T0 + 11, &mut w.rng).unwrap());

    // The change after (Carol removed, or the timed rekey): wrapped to the replacement.
    let l2 = l1
        .next(&[Change::Remove(w.carol.account)], &alice, T0 + 20)
        .unwrap();
    let (p3, mut a3) = rekey(&l2, 3, &announced, &alice, T0 + 20, &mut w.rng).unwrap();
    let m3 = a3.encrypt(&alice, b"epoch 3", &mut w.rng).unwrap();
    assert_eq!(
        stolen_secrets.open(&p3, &l2, &bob).err(),
        Some(GroupError::Decrypt),
        "the copy holds no secret the new epoch key is wrapped to"
    );
    let mut stolen_epoch = stolen_epoch;
    assert_eq!(
        stolen_epoch.decrypt(&m3).err(),
        Some(GroupError::WrongEpoch)
    );
    assert_eq!(thief2.decrypt(&m3).err(), Some(GroupError::WrongEpoch));
    // Bob reads it.
    let (mut bob3, _) = bob_secrets.open(&p3, &l2, &bob).unwrap();
    assert_eq!(bob3.decrypt(&m3).unwrap().payload.as_slice(), b"epoch 3");
    // And Bob's state now opens no earlier rekey either: a later theft learns no past epoch key.
    assert_eq!(
        bob_secrets.clone().open(&p2, &l1, &bob).err(),
        Some(GroupError::Decrypt)
    );
}
