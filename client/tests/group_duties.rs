//! What a device of a group does by time (`whitepaper/groups.md` §3.2, §5, §5.4), with time as
//! an argument: an admin rekeys once the head's epoch is `REKEY_INTERVAL` old and stores the
//! head list again before its copies expire; an epoch is kept `RETENTION` after a newer one
//! reached the device, then erased.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use allium_client::group::{
    GroupSecret, MemberSecret, MemberSecrets, MembershipList, MembershipLog, REKEY_INTERVAL_MS,
    RETENTION_MS, Role, rekey,
};
use allium_client::identity::Identity;
use allium_client::messenger::groups::{GroupRecord, HeldEpoch, Status};
use allium_client::session::DeviceKeys;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_700_000_000_000;
const TTL: u64 = 14 * 24 * 3600 * 1000;

/// An admin's record of a group of one, with epoch 1 made at `T0` and opened at `T0`.
fn record() -> (GroupRecord, DeviceKeys, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let group = GroupSecret::generate(&mut rng).unwrap();
    let id = Identity::generate_with(&mut rng);
    let device = DeviceKeys::generate(&id, 1, T0, &mut rng);
    let secret = MemberSecret::generate(T0, &mut rng);
    let key = secret.public(&group.public(), &device).unwrap();
    let list = MembershipList::genesis(
        &group.public(),
        &BTreeMap::from([(*id.public().as_bytes(), Role::Admin)]),
        &device,
        T0,
    )
    .unwrap();
    let (_, epoch) = rekey(&list, 1, std::slice::from_ref(&key), &device, T0, &mut rng).unwrap();
    let rec = GroupRecord {
        status: Status::Member,
        name: "club".into(),
        secret: group,
        inviter: *id.public().as_bytes(),
        was_member: true,
        max_epoch: 1,
        log: MembershipLog::new(list.clone()),
        secrets: MemberSecrets::from_vec(vec![secret]),
        keys: vec![key],
        parts: vec![],
        epochs: vec![HeldEpoch {
            epoch,
            issued_at: T0,
            opened_at: T0,
        }],
        invited: vec![],
        accepted: vec![],
        leaving: vec![],
        mine: None,
        head_copy: Some((list.hash(), T0)),
        outbox: vec![],
    };
    (rec, device, rng)
}

#[test]
fn an_admin_rekeys_once_the_epoch_is_a_week_old() {
    let (rec, _, _) = record();
    assert!(!rec.rekey_due(T0));
    assert!(!rec.rekey_due(T0 + REKEY_INTERVAL_MS - 1));
    assert!(rec.rekey_due(T0 + REKEY_INTERVAL_MS));
}

#[test]
fn an_admin_stores_the_head_again_before_its_copies_expire() {
    let (mut rec, _, _) = record();
    assert!(!rec.list_restore_due(T0 + TTL / 2 - 1, TTL));
    assert!(rec.list_restore_due(T0 + TTL / 2, TTL));
    // A newer copy seen in the mailbox (by any admin) moves the time on.
    let head = rec.head().hash();
    rec.head_copy = Some((head, T0 + TTL / 2));
    assert!(!rec.list_restore_due(T0 + TTL / 2 + 1, TTL));
    // A copy of another list says nothing of the head: its signing time counts.
    rec.head_copy = Some(([7; 32], T0 + TTL));
    assert!(rec.list_restore_due(T0 + TTL / 2, TTL));
    // A shorter TTL in the network file brings it forward.
    assert!(rec.list_restore_due(T0 + 3_600_000, 2 * 3_600_000));
}

#[test]
fn an_epoch_is_kept_for_the_retention_time_after_a_newer_one_came() {
    let (mut rec, device, mut rng) = record();
    let list = rec.head().clone();
    let keys = rec.keys.clone();
    let opened = T0 + 3 * 24 * 3600 * 1000;
    let (_, two) = rekey(&list, 2, &keys, &device, opened, &mut rng).unwrap();
    rec.epochs.push(HeldEpoch {
        epoch: two,
        issued_at: opened,
        opened_at: opened,
    });
    // Nothing goes while the newer epoch is younger than RETENTION, however many there are.
    rec.retain_epochs(opened + RETENTION_MS - 1);
    assert_eq!(rec.epochs.len(), 2);
    rec.retain_epochs(opened + RETENTION_MS);
    let left: Vec<u64> = rec.epochs.iter().map(|e| e.epoch.epoch()).collect();
    assert_eq!(left, [2], "epoch 1 goes, the newest stays whatever its age");
    rec.retain_epochs(opened + 100 * RETENTION_MS);
    assert_eq!(rec.epochs.len(), 1);
    // The file keeps the times.
    let back = GroupRecord::decode(&rec.encode()).unwrap();
    assert_eq!(back.epochs[0].opened_at, opened);
    assert_eq!(back.head_copy, rec.head_copy);
}

#[test]
fn nine_epochs_are_all_kept_within_the_retention_time() {
    // The earlier rule kept the newest 8; time is what counts now.
    let (mut rec, device, mut rng) = record();
    let list = rec.head().clone();
    let keys = rec.keys.clone();
    for n in 2..=9 {
        let (_, e) = rekey(&list, n, &keys, &device, T0 + n, &mut rng).unwrap();
        rec.epochs.push(HeldEpoch {
            epoch: e,
            issued_at: T0 + n,
            opened_at: T0 + n,
        });
    }
    rec.retain_epochs(T0 + RETENTION_MS);
    assert_eq!(rec.epochs.len(), 9);
    rec.retain_epochs(T0 + 9 + RETENTION_MS);
    assert_eq!(rec.epochs.len(), 1);
}
