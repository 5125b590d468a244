//! Sessions between devices (`whitepaper/sessions.md`): the start, the ratchet, envelope v2,
//! and what an attacker holding a copy of a device's state can and cannot read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use allium_client::identity::Identity;
use allium_client::session::envelope::{self, BUCKETS, Opened};
use allium_client::session::{
    self, DeviceKeys, FIXED_STATE_LEN, MAX_MAILBOX_TTL_MS, MAX_SKIP, MAX_SKIPPED,
    PREKEY_LIFETIME_MS, PREKEY_ROTATION_MS, Payload, PeerSessions, PrekeyBundle, PrekeyStore,
    SKIPPED_LEN, Session, SessionError,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_700_000_000_000;

struct Device {
    account: Identity,
    keys: DeviceKeys,
    prekeys: PrekeyStore,
    bundle: PrekeyBundle,
    rng: ChaCha20Rng,
}

impl Device {
    fn new(seed: u8) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(u64::from(seed));
        let account = Identity::from_seed(&[seed; 32]);
        let keys = DeviceKeys::generate(&account, u32::from(seed), T0, &mut rng);
        let mut prekeys = PrekeyStore::new();
        let bundle = prekeys
            .rotate(&keys, T0, PREKEY_LIFETIME_MS, &mut rng)
            .unwrap();
        Device {
            account,
            keys,
            prekeys,
            bundle,
            rng,
        }
    }

    /// Seals `payload` to `to` through envelope v2, as it would travel.
    fn seal(&mut self, to: &Device, payload: &Payload) -> Vec<u8> {
        envelope::seal(&self.keys, &to.bundle, payload, T0, &mut self.rng).unwrap()
    }

    fn open(&self, env: &[u8]) -> Opened {
        envelope::open(&self.prekeys, env, T0).unwrap()
    }

    fn accept(&mut self, opened: &Opened) -> (Session, Vec<u8>) {
        let Payload::Start(start) = &opened.payload else {
            panic!("not a start message");
        };
        let (s, p) = Session::accept(
            &self.keys,
            &self.prekeys,
            &opened.sender,
            start,
            T0,
            &mut self.rng,
        )
        .unwrap();
        (s, p.to_vec())
    }
}

fn decrypt(
    s: &mut Session,
    from: &Device,
    p: &Payload,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<u8>, SessionError> {
    s.decrypt(from.keys.cert(), p, T0, rng).map(|p| p.to_vec())
}

/// Alice and Bob with an established session (Bob has answered).
fn established() -> (Device, Device, Session, Session) {
    let mut alice = Device::new(1);
    let mut bob = Device::new(2);
    let mut a = Session::initiate(&alice.keys, &bob.bundle, T0, &mut alice.rng).unwrap();
    let start = a.encrypt(b"hello bob").unwrap();
    let env = alice.seal(&bob, &start);
    let opened = bob.open(&env);
    assert_eq!(&opened.sender, alice.keys.cert());
    let (mut b, first) = bob.accept(&opened);
    assert_eq!(first, b"hello bob");
    let reply = b.encrypt(b"hello alice").unwrap();
    assert!(matches!(reply, Payload::Ratchet(_)));
    assert_eq!(
        decrypt(&mut a, &bob, &reply, &mut alice.rng).unwrap(),
        b"hello alice"
    );
    assert!(!a.is_pending());
    (alice, bob, a, b)
}

#[test]
fn start_reply_and_conversation_through_envelopes() {
    let (mut alice, mut bob, mut a, mut b) = established();
    for round in 0..5u8 {
        for i in 0..3u8 {
            let m = vec![round, i, 0xaa];
            let p = a.encrypt(&m).unwrap();
            let env = alice.seal(&bob, &p);
            let o = bob.open(&env);
            assert_eq!(
                decrypt(&mut b, &alice, &o.payload, &mut bob.rng).unwrap(),
                m
            );
        }
        let p = b.encrypt(&[round]).unwrap();
        let env = bob.seal(&alice, &p);
        let o = alice.open(&env);
        assert_eq!(
            decrypt(&mut a, &bob, &o.payload, &mut alice.rng).unwrap(),
            [round]
        );
    }
    assert_eq!(a.id(), b.id());
    assert_eq!(b.skipped_keys(), 0);
}

#[test]
fn initiator_repeats_the_start_until_answered() {
    let mut alice = Device::new(1);
    let mut bob = Device::new(2);
    let mut a = Session::initiate(&alice.keys, &bob.bundle, T0, &mut alice.rng).unwrap();
    let p1 = a.encrypt(b"one").unwrap();
    let p2 = a.encrypt(b"two").unwrap();
    let p3 = a.encrypt(b"three").unwrap();
    assert!(matches!(p3, Payload::Start(_)));
    // The first start is lost: the second still sets up the session, the third decrypts in it.
    let (mut b, m2) = bob.accept(&bob.open(&alice.seal(&bob, &p2)));
    assert_eq!(m2, b"two");
    assert_eq!(
        decrypt(&mut b, &alice, &p3, &mut bob.rng).unwrap(),
        b"three"
    );
    assert_eq!(decrypt(&mut b, &alice, &p1, &mut bob.rng).unwrap(), b"one");
    assert_eq!(
        decrypt(&mut b, &alice, &p1, &mut bob.rng),
        Err(SessionError::Duplicate)
    );
}

#[test]
fn forward_secrecy_a_copy_after_message_k_opens_none_of_1_to_k() {
    let (mut alice, mut bob, mut a, mut b) = established();
    let mut recorded = Vec::new();
    // Several chains: Bob answers every third message, so keys of earlier chains are gone too.
    for i in 0..12u8 {
        let p = a.encrypt(&[i]).unwrap();
        assert_eq!(decrypt(&mut b, &alice, &p, &mut bob.rng).unwrap(), [i]);
        recorded.push(p);
        if i % 3 == 2 {
            let r = b.encrypt(b"ack").unwrap();
            decrypt(&mut a, &bob, &r, &mut alice.rng).unwrap();
        }
    }
    let stolen = b.encode();
    let mut thief = Session::decode(&stolen).unwrap();
    let mut thief_rng = ChaCha20Rng::seed_from_u64(666);
    for p in &recorded {
        let r = thief.decrypt(alice.keys.cert(), p, T0, &mut thief_rng);
        assert_eq!(
            r,
            Err(SessionError::Duplicate),
            "a stolen state opened an old message"
        );
    }
    // Nor does the start: the thief also holds Bob's device and prekey secrets, but Alice's
    // first chain key came from SK, which Bob's state no longer holds; PQXDH would give the
    // session again only to someone who keeps the prekey (§11.2).
}

#[test]
fn post_compromise_full_copy_heals_after_one_round_trip() {
    let (mut alice, mut bob, mut a, mut b) = established();
    let mut thief = Session::decode(&b.encode()).unwrap();
    let mut thief_rng = ChaCha20Rng::seed_from_u64(666);

    // Bob answers on the chain the thief knows; Alice's next chain still uses Bob's stolen
    // ratchet and KEM keys, so the thief reads it.
    let b1 = b.encrypt(b"b1").unwrap();
    decrypt(&mut a, &bob, &b1, &mut alice.rng).unwrap();
    let a2 = a.encrypt(b"a2").unwrap();
    assert_eq!(decrypt(&mut b, &alice, &a2, &mut bob.rng).unwrap(), b"a2");
    assert_eq!(
        thief
            .decrypt(alice.keys.cert(), &a2, T0, &mut thief_rng)
            .unwrap()
            .to_vec(),
        b"a2"
    );

    // Bob's answer comes from fresh keys; once Alice has it, the thief is locked out.
    let b2 = b.encrypt(b"b2").unwrap();
    decrypt(&mut a, &bob, &b2, &mut alice.rng).unwrap();
    for i in 0..3u8 {
        let a3 = a.encrypt(&[i]).unwrap();
        assert_eq!(decrypt(&mut b, &alice, &a3, &mut bob.rng).unwrap(), [i]);
        assert_eq!(
            thief.decrypt(alice.keys.cert(), &a3, T0, &mut thief_rng),
            Err(SessionError::Decrypt),
            "the stolen state read a message sent after a round trip"
        );
    }
}

#[test]
fn post_compromise_classical_secrets_alone_fail_at_the_first_kem_step() {
    let (mut alice, mut bob, mut a, mut b) = established();
    // A quantum attacker who recorded everything can compute every X25519 output, so it holds
    // Bob's classical state (root, chain and ratchet keys) — but not the ML-KEM secrets.
    let mut state = b.encode().to_vec();
    let kem_at = kem_seed_offset(&state);
    for byte in &mut state[kem_at..kem_at + 64] {
        *byte ^= 0x5a;
    }
    let mut classical = Session::decode(&state).unwrap();
    let mut full = Session::decode(&b.encode()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(666);

    let b1 = b.encrypt(b"b1").unwrap();
    decrypt(&mut a, &bob, &b1, &mut alice.rng).unwrap();
    let a2 = a.encrypt(b"a2").unwrap();
    assert_eq!(decrypt(&mut b, &alice, &a2, &mut bob.rng).unwrap(), b"a2");
    // The full copy reads Alice's new chain (the DH and KEM steps use stolen keys) ...
    assert!(full.decrypt(alice.keys.cert(), &a2, T0, &mut rng).is_ok());
    // ... the classical secrets alone do not: the root key now depends on the KEM secret.
    assert_eq!(
        classical.decrypt(alice.keys.cert(), &a2, T0, &mut rng),
        Err(SessionError::Decrypt)
    );
}

/// Offset of the ML-KEM seed in a session encoding (§8): after version, id, role, peer
/// certificate, start flag (and start fields), root key and ratchet secret.
fn kem_seed_offset(state: &[u8]) -> usize {
    let at = 1 + 32 + 1 + session::CERT_LEN;
    let start = if state[at] == 1 { 40 } else { 0 };
    at + 1 + start + 32 + 32
}

#[test]
fn out_of_order_lost_and_duplicate_messages() {
    let (mut alice, mut bob, mut a, mut b) = established();
    let sent: Vec<Payload> = (0..10u8).map(|i| a.encrypt(&[i]).unwrap()).collect();
    // Lost: 3 and 7 never arrive. The rest arrive in a shuffled order.
    for i in [9usize, 0, 5, 2, 8, 1, 6, 4] {
        assert_eq!(
            decrypt(&mut b, &alice, &sent[i], &mut bob.rng).unwrap(),
            [i as u8]
        );
    }
    assert_eq!(b.skipped_keys(), 2);
    for i in [9usize, 0, 5] {
        assert_eq!(
            decrypt(&mut b, &alice, &sent[i], &mut bob.rng),
            Err(SessionError::Duplicate)
        );
    }
    // A new chain, then a late message of the old one, then a replay from the old chain.
    let r = b.encrypt(b"r").unwrap();
    decrypt(&mut a, &bob, &r, &mut alice.rng).unwrap();
    let next = a.encrypt(b"next").unwrap();
    assert_eq!(
        decrypt(&mut b, &alice, &next, &mut bob.rng).unwrap(),
        b"next"
    );
    assert_eq!(
        decrypt(&mut b, &alice, &sent[3], &mut bob.rng).unwrap(),
        [3]
    );
    assert_eq!(
        decrypt(&mut b, &alice, &sent[4], &mut bob.rng),
        Err(SessionError::Duplicate)
    );
    assert_eq!(
        decrypt(&mut b, &alice, &next, &mut bob.rng),
        Err(SessionError::Duplicate)
    );
    assert_eq!(b.skipped_keys(), 1);
}

#[test]
fn gaps_up_to_the_bound_and_refused_beyond() {
    let (alice, mut bob, mut a, mut b) = established();
    let sent: Vec<Payload> = (0..=MAX_SKIP + 1)
        .map(|i| a.encrypt(&i.to_be_bytes()).unwrap())
        .collect();
    let before = b.encode();
    let beyond = &sent[MAX_SKIP as usize + 1];
    assert_eq!(
        decrypt(&mut b, &alice, beyond, &mut bob.rng),
        Err(SessionError::TooFarAhead { gap: MAX_SKIP + 1 })
    );
    assert_eq!(*b.encode(), *before, "a refused message changed the state");
    let last = &sent[MAX_SKIP as usize];
    assert!(decrypt(&mut b, &alice, last, &mut bob.rng).is_ok());
    assert_eq!(b.skipped_keys(), MAX_SKIP as usize);
    assert!(decrypt(&mut b, &alice, beyond, &mut bob.rng).is_ok());
    // Every skipped message still opens, once.
    assert_eq!(
        decrypt(&mut b, &alice, &sent[17], &mut bob.rng).unwrap(),
        17u32.to_be_bytes()
    );
    assert_eq!(
        decrypt(&mut b, &alice, &sent[17], &mut bob.rng),
        Err(SessionError::Duplicate)
    );
}

#[test]
fn skipped_keys_are_bounded_oldest_first_and_expire() {
    let (mut alice, mut bob, mut a, mut b) = established();
    let first: Vec<Payload> = (0..=600u32)
        .map(|i| a.encrypt(&i.to_be_bytes()).unwrap())
        .collect();
    decrypt(&mut b, &alice, &first[600], &mut bob.rng).unwrap();
    let r = b.encrypt(b"r").unwrap();
    decrypt(&mut a, &bob, &r, &mut alice.rng).unwrap();
    let second: Vec<Payload> = (0..=600u32)
        .map(|i| a.encrypt(&i.to_be_bytes()).unwrap())
        .collect();
    decrypt(&mut b, &alice, &second[600], &mut bob.rng).unwrap();
    assert_eq!(b.skipped_keys(), MAX_SKIPPED);
    // 1200 keys were skipped: the 200 oldest were dropped.
    assert_eq!(
        decrypt(&mut b, &alice, &first[0], &mut bob.rng),
        Err(SessionError::Duplicate)
    );
    assert_eq!(
        decrypt(&mut b, &alice, &first[199], &mut bob.rng),
        Err(SessionError::Duplicate)
    );
    assert!(decrypt(&mut b, &alice, &first[200], &mut bob.rng).is_ok());
    // Past the time limit every skipped key goes.
    let late = T0 + session::SKIPPED_KEY_TTL_MS;
    assert_eq!(
        b.decrypt(alice.keys.cert(), &second[5], late, &mut bob.rng),
        Err(SessionError::Duplicate)
    );
    b.expire(late);
    assert_eq!(b.skipped_keys(), 0);
}

#[test]
fn tampered_messages_leave_the_state_unchanged() {
    let (alice, mut bob, mut a, mut b) = established();
    let _ = a.encrypt(b"lost").unwrap();
    let genuine = a.encrypt(b"genuine").unwrap();
    let Payload::Ratchet(m) = &genuine else {
        panic!()
    };
    let bytes = m.encode();
    let before = b.encode();
    // One flipped bit anywhere: session id, header fields, KEM fields, ciphertext, tag.
    for at in [
        0usize,
        1,
        40,
        33 + 35,
        33 + 39,
        33 + 41,
        33 + 1200,
        33 + 2300,
        bytes.len() - 20,
        bytes.len() - 1,
    ] {
        let mut t = bytes.clone();
        t[at] ^= 0x04;
        let Ok(forged) = session::RatchetMessage::decode(&t) else {
            continue;
        };
        let r = decrypt(&mut b, &alice, &Payload::Ratchet(forged), &mut bob.rng);
        assert!(r.is_err(), "tampered byte {at} accepted");
        assert_eq!(*b.encode(), *before, "tampered byte {at} changed the state");
    }
    // A forged new chain: random ratchet key and KEM fields.
    let mut forged = m.clone();
    forged.header.dh = [9; 32];
    forged.header.n = 0;
    assert_eq!(
        decrypt(&mut b, &alice, &Payload::Ratchet(forged), &mut bob.rng),
        Err(SessionError::Decrypt)
    );
    assert_eq!(*b.encode(), *before);
    assert_eq!(
        decrypt(&mut b, &alice, &genuine, &mut bob.rng).unwrap(),
        b"genuine"
    );
    // Another device's certificate is refused before any work.
    let carol = Device::new(3);
    assert_eq!(
        b.decrypt(carol.keys.cert(), &genuine, T0, &mut bob.rng),
        Err(SessionError::WrongSender)
    );
}

#[test]
fn chain_repeats_its_kem_fields_and_checks_them() {
    let (alice, mut bob, mut a, mut b) = established();
    let r = b.encrypt(b"r").unwrap();
    let mut arng = ChaCha20Rng::seed_from_u64(5);
    decrypt(&mut a, &bob, &r, &mut arng).unwrap();
    let m1 = a.encrypt(b"1").unwrap();
    let m2 = a.encrypt(b"2").unwrap();
    assert_eq!(m1.message().header.ct, m2.message().header.ct);
    assert_eq!(m1.message().header.ek, m2.message().header.ek);
    decrypt(&mut b, &alice, &m1, &mut bob.rng).unwrap();
    let mut odd = m2.message().clone();
    odd.header.ek[0] ^= 1;
    assert_eq!(
        decrypt(&mut b, &alice, &Payload::Ratchet(odd), &mut bob.rng),
        Err(SessionError::HeaderMismatch)
    );
    assert_eq!(decrypt(&mut b, &alice, &m2, &mut bob.rng).unwrap(), b"2");
}

#[test]
fn crossing_starts_agree_on_one_session_and_lose_nothing() {
    let mut alice = Device::new(1);
    let mut bob = Device::new(2);
    let mut at_alice = PeerSessions::new();
    let mut at_bob = PeerSessions::new();
    at_alice
        .initiate(&alice.keys, &bob.bundle, T0, &mut alice.rng)
        .unwrap();
    at_bob
        .initiate(&bob.keys, &alice.bundle, T0, &mut bob.rng)
        .unwrap();
    let a1 = at_alice.encrypt(b"a1").unwrap();
    let b1 = at_bob.encrypt(b"b1").unwrap();
    let b2 = at_bob.encrypt(b"b2").unwrap();
    let ea1 = alice.seal(&bob, &a1);
    let eb1 = bob.seal(&alice, &b1);
    let eb2 = bob.seal(&alice, &b2);

    // The starts cross.
    let got = at_bob
        .decrypt(&bob.keys, &bob.prekeys, &bob.open(&ea1), T0, &mut bob.rng)
        .unwrap();
    assert_eq!(&*got, b"a1");
    let got = at_alice
        .decrypt(
            &alice.keys,
            &alice.prekeys,
            &alice.open(&eb1),
            T0,
            &mut alice.rng,
        )
        .unwrap();
    assert_eq!(&*got, b"b1");
    assert_eq!(
        at_alice.active().unwrap().id(),
        at_bob.active().unwrap().id()
    );
    let winner = *at_alice.active().unwrap().id();
    assert_eq!(
        winner,
        *[a1.session_id(), b1.session_id()]
            .into_iter()
            .min()
            .unwrap()
    );

    // Bob's second start still opens at Alice, in the session it set up.
    let got = at_alice
        .decrypt(
            &alice.keys,
            &alice.prekeys,
            &alice.open(&eb2),
            T0,
            &mut alice.rng,
        )
        .unwrap();
    assert_eq!(&*got, b"b2");

    // Both now send with the same session, and everything opens.
    for i in 0..3u8 {
        let p = at_alice.encrypt(&[i]).unwrap();
        assert_eq!(p.session_id(), &winner);
        let e = alice.seal(&bob, &p);
        assert_eq!(
            *at_bob
                .decrypt(&bob.keys, &bob.prekeys, &bob.open(&e), T0, &mut bob.rng)
                .unwrap(),
            [i]
        );
        let q = at_bob.encrypt(&[i, i]).unwrap();
        assert_eq!(q.session_id(), &winner);
        let e = bob.seal(&alice, &q);
        assert_eq!(
            *at_alice
                .decrypt(
                    &alice.keys,
                    &alice.prekeys,
                    &alice.open(&e),
                    T0,
                    &mut alice.rng
                )
                .unwrap(),
            [i, i]
        );
    }
    assert_eq!(
        at_alice.active().unwrap().id(),
        at_bob.active().unwrap().id()
    );
    assert!(!at_alice.active().unwrap().is_pending());

    // The pair survives the disk.
    let restored = PeerSessions::decode(&at_bob.encode()).unwrap();
    assert_eq!(*restored.encode(), *at_bob.encode());
}

#[test]
fn a_peer_that_starts_over_becomes_the_active_session() {
    let mut alice = Device::new(1);
    let mut bob = Device::new(2);
    let mut at_bob = PeerSessions::new();
    let mut a = Session::initiate(&alice.keys, &bob.bundle, T0, &mut alice.rng).unwrap();
    let s1 = alice.seal(&bob, &a.encrypt(b"1").unwrap());
    at_bob
        .decrypt(&bob.keys, &bob.prekeys, &bob.open(&s1), T0, &mut bob.rng)
        .unwrap();
    // Alice lost her state and starts again.
    let mut a2 = Session::initiate(&alice.keys, &bob.bundle, T0, &mut alice.rng).unwrap();
    let s2 = alice.seal(&bob, &a2.encrypt(b"2").unwrap());
    at_bob
        .decrypt(&bob.keys, &bob.prekeys, &bob.open(&s2), T0, &mut bob.rng)
        .unwrap();
    assert_eq!(at_bob.active().unwrap().id(), a2.id());
    let reply = at_bob.encrypt(b"r").unwrap();
    assert_eq!(
        decrypt(&mut a2, &bob, &reply, &mut alice.rng).unwrap(),
        b"r"
    );
}

#[test]
fn prekey_rotated_while_a_start_is_in_flight_then_expired() {
    let mut alice = Device::new(1);
    let mut bob = Device::new(2);
    let old_bundle = bob.bundle.clone();
    let mut a = Session::initiate(&alice.keys, &old_bundle, T0, &mut alice.rng).unwrap();
    let start = a.encrypt(b"in flight").unwrap();
    // Bob rotates three times before the start arrives.
    let mut now = T0;
    for _ in 0..3 {
        now += PREKEY_ROTATION_MS;
        bob.bundle = bob
            .prekeys
            .rotate(&bob.keys, now, PREKEY_LIFETIME_MS, &mut bob.rng)
            .unwrap();
    }
    // Alice refreshed Bob's bundle for the envelope; the start still names the old prekeys.
    let env = envelope::seal(&alice.keys, &bob.bundle, &start, now, &mut alice.rng).unwrap();
    let opened = envelope::open(&bob.prekeys, &env, now).unwrap();
    let Payload::Start(s) = &opened.payload else {
        panic!()
    };
    let (_, got) = Session::accept(
        &bob.keys,
        &bob.prekeys,
        &opened.sender,
        s,
        now,
        &mut bob.rng,
    )
    .unwrap();
    assert_eq!(&*got, b"in flight");

    // Kept until expires + the mailbox TTL, refused after, with or without pruning.
    let gone = old_bundle.expires() + MAX_MAILBOX_TTL_MS;
    let r = Session::accept(
        &bob.keys,
        &bob.prekeys,
        &opened.sender,
        s,
        gone - 1,
        &mut bob.rng,
    );
    assert!(r.is_ok());
    let r = Session::accept(
        &bob.keys,
        &bob.prekeys,
        &opened.sender,
        s,
        gone,
        &mut bob.rng,
    );
    assert_eq!(r.err(), Some(SessionError::PrekeyExpired));
    bob.prekeys.prune(gone);
    let r = Session::accept(
        &bob.keys,
        &bob.prekeys,
        &opened.sender,
        s,
        gone,
        &mut bob.rng,
    );
    assert_eq!(r.err(), Some(SessionError::PrekeyExpired));
    // An envelope sealed to the old prekey no longer opens once it is not live.
    let env_old = envelope::seal(&alice.keys, &old_bundle, &start, T0, &mut alice.rng).unwrap();
    assert_eq!(
        envelope::open(&bob.prekeys, &env_old, gone).err(),
        Some(SessionError::Decrypt)
    );
    // Senders refuse expired bundles.
    assert_eq!(
        Session::initiate(
            &alice.keys,
            &old_bundle,
            old_bundle.expires(),
            &mut alice.rng
        )
        .err(),
        Some(SessionError::BundleExpired)
    );
    assert_eq!(
        PrekeyBundle::verify(
            old_bundle.as_bytes(),
            &bob.account.address(),
            old_bundle.expires()
        )
        .err(),
        Some(SessionError::BundleExpired)
    );
}

#[test]
fn bundle_checks() {
    let alice = Device::new(1);
    let bob = Device::new(2);
    let ok = PrekeyBundle::verify(bob.bundle.as_bytes(), &bob.account.address(), T0).unwrap();
    assert_eq!(ok, bob.bundle);
    assert_eq!(
        PrekeyBundle::verify(bob.bundle.as_bytes(), &alice.account.address(), T0).err(),
        Some(SessionError::WrongAccount)
    );
    assert_eq!(
        PrekeyBundle::verify(bob.bundle.as_bytes(), &bob.account.address(), T0 - 1).err(),
        None,
        "a sender's clock a little behind the publisher's is within the skew"
    );
    assert_eq!(
        PrekeyBundle::verify(
            bob.bundle.as_bytes(),
            &bob.account.address(),
            T0 - session::CLOCK_SKEW_MS - 1
        )
        .err(),
        Some(SessionError::BundleNotYetValid)
    );
    let mut bad = bob.bundle.as_bytes().to_vec();
    let last = bad.len() - 70;
    bad[last] ^= 1;
    assert_eq!(
        PrekeyBundle::decode(&bad).err(),
        Some(SessionError::BadBundleSignature)
    );
    let mut bad = bob.bundle.as_bytes().to_vec();
    bad[50] ^= 1;
    assert!(PrekeyBundle::decode(&bad).is_err());
    let mut cert = bob.keys.cert().as_bytes().to_vec();
    cert[100] ^= 1;
    assert_eq!(
        session::DeviceCert::decode(&cert).err(),
        Some(SessionError::BadCertSignature)
    );
    // Keys round-trip, and a device's key file names its own certificate.
    let k = DeviceKeys::decode(&bob.keys.encode()).unwrap();
    assert_eq!(k.cert(), bob.keys.cert());
    let mut store = bob.prekeys.encode().to_vec();
    assert_eq!(*PrekeyStore::decode(&store).unwrap().encode(), store);
    store[1] = 0;
    store[4] = 0;
    assert!(PrekeyStore::decode(&store).is_err());
}

#[test]
fn state_encoding_round_trips_and_its_size() {
    let (alice, mut bob, mut a, mut b) = established();
    assert_eq!(b.encode().len(), FIXED_STATE_LEN);
    let sent: Vec<Payload> = (0..5u8).map(|i| a.encrypt(&[i]).unwrap()).collect();
    decrypt(&mut b, &alice, &sent[4], &mut bob.rng).unwrap();
    let enc = b.encode();
    // Four skipped keys, and the chain Bob moved past when Alice answered his reply.
    assert_eq!(
        enc.len(),
        FIXED_STATE_LEN + 4 * SKIPPED_LEN + session::OLD_CHAIN_LEN
    );
    let mut restored = Session::decode(&enc).unwrap();
    assert_eq!(*restored.encode(), *enc);
    assert_eq!(
        decrypt(&mut restored, &alice, &sent[1], &mut bob.rng).unwrap(),
        [1]
    );
    // The initiator before a reply carries its start fields too.
    let mut carol = Device::new(3);
    let pending = Session::initiate(&carol.keys, &bob.bundle, T0, &mut carol.rng).unwrap();
    assert_eq!(pending.encode().len(), FIXED_STATE_LEN + 40 - (32 + 4 + 32));
    eprintln!(
        "state: established {} bytes, +{} per skipped key, pending initiator {} bytes",
        FIXED_STATE_LEN,
        SKIPPED_LEN,
        pending.encode().len()
    );
    assert!(format!("{b:?}").len() < 400);
    // The responder's root key follows version, id, role, certificate and the pending flag.
    let root = 1 + 32 + 1 + session::CERT_LEN + 1;
    let shown = format!("{b:?}");
    assert!(!shown.contains(&hex::encode(&enc[root..root + 32])));
    assert!(!shown.contains(&format!("{:?}", &enc[root..root + 8])));
}

#[test]
fn sizes_and_buckets() {
    let (mut alice, bob, mut a, mut b) = established();
    let mut carol = Device::new(3);
    let mut c = Session::initiate(&carol.keys, &bob.bundle, T0, &mut carol.rng).unwrap();
    let start = c.encrypt(b"").unwrap().message().encode().len();
    let ratchet = a.encrypt(b"").unwrap().message().encode().len();
    assert_eq!(ratchet, session::RATCHET_OVERHEAD);
    assert_eq!(start, session::RATCHET_OVERHEAD);
    let s = c.encrypt(&[]).unwrap();
    let Payload::Start(sm) = &s else { panic!() };
    assert_eq!(
        sm.encode().len(),
        session::START_OVERHEAD + session::RATCHET_OVERHEAD
    );
    assert_eq!(envelope::bucket_for(session::RATCHET_OVERHEAD), Some(3072));
    let room = 3072 - envelope::ENVELOPE_OVERHEAD - session::RATCHET_OVERHEAD;
    let fits = a.encrypt(&vec![7; room]).unwrap();
    assert_eq!(alice.seal(&bob, &fits).len(), 3072);
    let spills = a.encrypt(&vec![7; room + 1]).unwrap();
    assert_eq!(alice.seal(&bob, &spills).len(), 16384);
    eprintln!(
        "per message {} bytes (+{} for a start, +{} envelope); a 3072-byte envelope holds {} bytes of ratchet plaintext, {} of start plaintext",
        session::RATCHET_OVERHEAD,
        session::START_OVERHEAD,
        envelope::ENVELOPE_OVERHEAD,
        room,
        room - session::START_OVERHEAD
    );
    let _ = &mut b;
}

#[test]
fn envelope_checks() {
    let (mut alice, bob, mut a, _) = established();
    let p = a.encrypt(b"x").unwrap();
    let env = alice.seal(&bob, &p);
    let carol = Device::new(3);
    assert_eq!(
        envelope::open(&carol.prekeys, &env, T0).err(),
        Some(SessionError::Decrypt)
    );
    let mut bad = env.clone();
    bad[100] ^= 1;
    assert_eq!(
        envelope::open(&bob.prekeys, &bad, T0).err(),
        Some(SessionError::Decrypt)
    );
    assert_eq!(
        envelope::open(&bob.prekeys, &env[..env.len() - 1], T0).err(),
        Some(SessionError::EnvelopeLength { len: env.len() - 1 })
    );
    let mut v1 = env.clone();
    v1[0] = 1;
    assert!(matches!(
        envelope::open(&bob.prekeys, &v1, T0),
        Err(SessionError::UnknownVersion { .. })
    ));
    let mut low = env;
    low[1..33].copy_from_slice(&[0; 32]);
    assert_eq!(
        envelope::open(&bob.prekeys, &low, T0).err(),
        Some(SessionError::NonContributory)
    );
}

#[test]
fn safety_numbers_agree_and_differ() {
    let a = Identity::from_seed(&[1; 32]).public().to_bytes();
    let b = Identity::from_seed(&[2; 32]).public().to_bytes();
    let c = Identity::from_seed(&[3; 32]).public().to_bytes();
    let ab = session::safety_number(&a, &b);
    assert_eq!(ab, session::safety_number(&b, &a));
    assert_eq!(ab.len(), session::SAFETY_DIGITS);
    assert!(ab.bytes().all(|d| d.is_ascii_digit()));
    assert_ne!(ab, session::safety_number(&a, &c));
    assert_eq!(session::grouped(&ab).split(' ').count(), 12);
}

/// Decoders of everything a peer or the disk hands over never panic.
mod decoders {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = session::DeviceCert::decode(&bytes);
            let _ = DeviceKeys::decode(&bytes);
            let _ = PrekeyBundle::decode(&bytes);
            let _ = PrekeyStore::decode(&bytes);
            let _ = session::StartMessage::decode(&bytes);
            let _ = session::RatchetMessage::decode(&bytes);
            let _ = Session::decode(&bytes);
            let _ = PeerSessions::decode(&bytes);
        }

        #[test]
        fn envelopes_of_garbage(fill in proptest::collection::vec(any::<u8>(), 1..64), bucket in 0usize..3) {
            let store = STORE.with(|s| s.clone());
            let len = BUCKETS[bucket];
            let mut bytes: Vec<u8> = fill.iter().copied().cycle().take(len).collect();
            prop_assert!(envelope::open(&store, &bytes, T0).is_err());
            bytes[0] = envelope::ENVELOPE_VERSION;
            prop_assert!(envelope::open(&store, &bytes, T0).is_err());
            prop_assert!(envelope::open(&store, &bytes[..len - 1], T0).is_err());
        }

        #[test]
        fn mutated_encodings(at in any::<prop::sample::Index>(), xor in 1u8..=255, cut in any::<prop::sample::Index>()) {
            let (_, _, a, b) = fixture();
            for enc in [a.encode().to_vec(), b.encode().to_vec()] {
                let mut m = enc.clone();
                let i = at.index(m.len());
                m[i] ^= xor;
                let _ = Session::decode(&m);
                let _ = Session::decode(&enc[..cut.index(enc.len())]);
            }
        }
    }

    thread_local! {
        static STORE: PrekeyStore = Device::new(2).prekeys;
    }

    fn fixture() -> (Device, Device, Session, Session) {
        established()
    }
}

/// Two parties send, deliver, drop and reorder at random; every delivered message decrypts
/// exactly once, and a second delivery is a duplicate.
mod interleavings {
    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Send(bool),
        Deliver(bool, prop::sample::Index),
        Drop(bool, prop::sample::Index),
        Replay(bool, prop::sample::Index),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<bool>().prop_map(Op::Send),
            3 => (any::<bool>(), any::<prop::sample::Index>()).prop_map(|(s, i)| Op::Deliver(s, i)),
            1 => (any::<bool>(), any::<prop::sample::Index>()).prop_map(|(s, i)| Op::Drop(s, i)),
            1 => (any::<bool>(), any::<prop::sample::Index>()).prop_map(|(s, i)| Op::Replay(s, i)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_delivered_message_decrypts_exactly_once(ops in proptest::collection::vec(op(), 1..60)) {
            let (alice, bob, a, b) = established();
            let mut sides = [(a, alice), (b, bob)];
            // In flight from side i to the other: (plaintext, payload); delivered, for replays.
            let mut flight: [Vec<(Vec<u8>, Payload)>; 2] = [Vec::new(), Vec::new()];
            let mut delivered: [Vec<Payload>; 2] = [Vec::new(), Vec::new()];
            let mut counter = 0u32;
            for op in ops {
                match op {
                    Op::Send(from_bob) => {
                        let i = usize::from(from_bob);
                        counter += 1;
                        let m = counter.to_be_bytes().to_vec();
                        let p = sides[i].0.encrypt(&m).unwrap();
                        flight[i].push((m, p));
                    }
                    Op::Deliver(from_bob, at) | Op::Drop(from_bob, at) | Op::Replay(from_bob, at)
                        if flight[usize::from(from_bob)].is_empty() && !matches!(op, Op::Replay(..)) => {
                        let _ = at;
                    }
                    Op::Deliver(from_bob, at) => {
                        let i = usize::from(from_bob);
                        let (m, p) = flight[i].remove(at.index(flight[i].len()));
                        let [x, y] = &mut sides;
                        let (to, from) = if i == 0 { (y, x) } else { (x, y) };
                        let cert = from.1.keys.cert().clone();
                        let got = to.0.decrypt(&cert, &p, T0, &mut to.1.rng);
                        prop_assert_eq!(got.map(|g| g.to_vec()), Ok(m));
                        delivered[i].push(p);
                    }
                    Op::Drop(from_bob, at) => {
                        let i = usize::from(from_bob);
                        flight[i].remove(at.index(flight[i].len()));
                    }
                    Op::Replay(from_bob, at) => {
                        let i = usize::from(from_bob);
                        if delivered[i].is_empty() {
                            continue;
                        }
                        let p = delivered[i][at.index(delivered[i].len())].clone();
                        let [x, y] = &mut sides;
                        let (to, from) = if i == 0 { (y, x) } else { (x, y) };
                        let cert = from.1.keys.cert().clone();
                        let before = to.0.encode();
                        let got = to.0.decrypt(&cert, &p, T0, &mut to.1.rng);
                        prop_assert_eq!(got.map(|g| g.to_vec()), Err(SessionError::Duplicate));
                        prop_assert_eq!(&*to.0.encode(), &*before);
                    }
                }
            }
        }
    }
}

/// Rough costs, for the whitepaper: `cargo test --release -p allium-client --test sessions --
/// --ignored costs --nocapture`.
#[test]
#[ignore]
fn costs() {
    use std::time::Instant;
    const N: u32 = 200;
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    let mut alice = Device::new(1);
    let mut bob = Device::new(2);

    let t = Instant::now();
    let mut starts = Vec::new();
    for _ in 0..N {
        let mut a = Session::initiate(&alice.keys, &bob.bundle, T0, &mut alice.rng).unwrap();
        let p = a.encrypt(b"hello").unwrap();
        starts.push(alice.seal(&bob, &p));
    }
    let seal_start = per(t);
    let t = Instant::now();
    for e in &starts {
        let o = bob.open(e);
        let _ = bob.accept(&o);
    }
    let open_start = per(t);

    let (mut alice, mut bob, mut a, mut b) = established();
    let t = Instant::now();
    let mut msgs = Vec::new();
    for _ in 0..N {
        let p = a.encrypt(b"hello").unwrap();
        msgs.push(alice.seal(&bob, &p));
    }
    let seal_ratchet = per(t);
    let t = Instant::now();
    for e in &msgs {
        let o = bob.open(e);
        decrypt(&mut b, &alice, &o.payload, &mut bob.rng).unwrap();
    }
    let open_ratchet = per(t);

    // Ping-pong: every message opens a new chain, so every decryption is a KEM step.
    let t = Instant::now();
    for _ in 0..N / 2 {
        let p = a.encrypt(b"ping").unwrap();
        decrypt(&mut b, &alice, &p, &mut bob.rng).unwrap();
        let q = b.encrypt(b"pong").unwrap();
        decrypt(&mut a, &bob, &q, &mut alice.rng).unwrap();
    }
    let kem_step = per(t);
    let t = Instant::now();
    for _ in 0..N {
        let p = a.encrypt(b"same chain").unwrap();
        decrypt(&mut b, &alice, &p, &mut bob.rng).unwrap();
    }
    let same_chain = per(t);

    // The outer layer tried with three prekeys, the right one last.
    let env = alice.seal(&bob, &a.encrypt(b"x").unwrap());
    for _ in 1..3 {
        bob.bundle = bob
            .prekeys
            .rotate(&bob.keys, T0, PREKEY_LIFETIME_MS, &mut bob.rng)
            .unwrap();
    }
    let t = Instant::now();
    for _ in 0..N {
        bob.open(&env);
    }
    let open_third = per(t);
    let fresh = alice.seal(&bob, &a.encrypt(b"x").unwrap());
    let t = Instant::now();
    for _ in 0..N {
        bob.open(&fresh);
    }
    let open_first = per(t);

    let enc = b.encode();
    let t = Instant::now();
    for _ in 0..N {
        let _ = Session::decode(&enc).unwrap();
    }
    let decode = per(t);
    let t = Instant::now();
    let _ = session::safety_number(&[1; 32], &[2; 32]);
    let safety = t.elapsed().as_secs_f64() * 1e6;
    eprintln!(
        "µs: start seal {seal_start:.0} open+accept {open_start:.0}; ratchet seal {seal_ratchet:.0} \
         open+decrypt {open_ratchet:.0}; message pair with KEM steps (encrypt + decrypt) {kem_step:.0}, \
         same chain {same_chain:.0}; envelope open with the first prekey {open_first:.0}, the third \
         {open_third:.0}; state decode {decode:.0}; safety number {safety:.0}"
    );
}
