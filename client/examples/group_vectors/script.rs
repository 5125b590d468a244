//! The scripted group behind `whitepaper/vectors/groups.json`, shared by the example that writes
//! the file and the test that recomputes it. Every random byte comes from a ChaCha20 generator
//! seeded with an input, and every draw is published with the step that made it.

use std::collections::BTreeMap;

use allium_client::group::{
    Change, Epoch, GroupError, GroupSecret, MemberSecret, MembershipList, Role, rekey,
};
use allium_client::identity::Identity;
use allium_client::session::DeviceKeys;
use serde_json::{Value, json};

#[path = "../session_vectors/recorder.rs"]
mod recorder;
pub use recorder::Recorder;

/// Everything the script depends on.
pub struct Inputs {
    /// Account seeds of Alice (admin), Bob and Carol.
    pub account_seeds: [[u8; 32]; 3],
    /// Generator seeds of the three.
    pub rng_seeds: [[u8; 32]; 3],
    /// The time of the first step; each later step is 1 s later.
    pub now: u64,
    /// Alice's two messages in epoch 1, Bob's one, Carol's one in epoch 2.
    pub plaintexts: [Vec<u8>; 4],
}

/// Runs the script: Alice makes the group with Bob, rekeys, both write; Alice adds Carol and
/// rekeys; Carol writes; Bob reads. Returns the published case.
pub fn run(inputs: &Inputs) -> Result<Value, GroupError> {
    let mut t = inputs.now;
    let mut keys: Vec<DeviceKeys> = Vec::new();
    let mut secrets: Vec<MemberSecret> = Vec::new();
    let mut rngs: Vec<Recorder> = Vec::new();
    let mut devices = serde_json::Map::new();
    let mut alice_rng = Recorder::new(inputs.rng_seeds[0]);
    let group = GroupSecret::generate(&mut alice_rng)?;
    let group_draws = alice_rng.take();
    for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let mut rng = if i == 0 {
            std::mem::replace(&mut alice_rng, Recorder::new([0; 32]))
        } else {
            Recorder::new(inputs.rng_seeds[i])
        };
        let account = Identity::from_seed(&inputs.account_seeds[i]);
        let device = DeviceKeys::generate(&account, 1, t, &mut rng);
        let device_draws = rng.take();
        let secret = MemberSecret::generate(t, &mut rng);
        let secret_draws = rng.take();
        let public = secret.public(&group.public(), &device)?;
        devices.insert(
            name.into(),
            json!({
                "account": hex::encode(account.public().as_bytes()),
                "device_draws": device_draws,
                "device_keys": hex::encode(device.encode()),
                "member_secret_draws": secret_draws,
                "member_secret": hex::encode(secret.encode()),
                "member_key": hex::encode(public.as_bytes()),
            }),
        );
        keys.push(device);
        secrets.push(secret);
        rngs.push(rng);
    }
    let member_keys: Vec<_> = secrets
        .iter()
        .zip(&keys)
        .map(|(s, k)| s.public(&group.public(), k))
        .collect::<Result<_, _>>()?;
    let account: Vec<[u8; 32]> = keys.iter().map(|k| k.cert().account_key()).collect();

    // Genesis: Alice admin, Bob member; epoch 1.
    let members = BTreeMap::from([(account[0], Role::Admin), (account[1], Role::Member)]);
    let list0 = MembershipList::genesis(&group.public(), &members, &keys[0], t)?;
    t += 1000;
    let (parts1, mut alice1) = rekey(&list0, 1, &member_keys, &keys[0], t, &mut rngs[0])?;
    let rekey1_draws = rngs[0].take();
    let mut bob1 = Epoch::open(&parts1, &list0, &keys[1], std::slice::from_ref(&secrets[1]))?;
    let carol_not_in_1 = Epoch::open(&parts1, &list0, &keys[2], std::slice::from_ref(&secrets[2]))
        .err()
        .map(|e| e.to_string());

    let mut messages = Vec::new();
    for (k, plaintext) in inputs.plaintexts[..2].iter().enumerate() {
        let item = alice1.encrypt(&keys[0], plaintext, &mut rngs[0])?;
        let draws = rngs[0].take();
        let got = bob1.decrypt(&item)?;
        messages.push(json!({
            "epoch": 1, "writer": "alice", "reader": "bob", "counter": k,
            "plaintext": hex::encode(plaintext), "rng_draws": draws, "item": hex::encode(&item),
            "read": hex::encode(got.payload.as_slice()),
            "reader_state_after": hex::encode(bob1.encode()),
        }));
    }
    let item = bob1.encrypt(&keys[1], &inputs.plaintexts[2], &mut rngs[1])?;
    let draws = rngs[1].take();
    let got = alice1.decrypt(&item)?;
    messages.push(json!({
        "epoch": 1, "writer": "bob", "reader": "alice", "counter": 0,
        "plaintext": hex::encode(&inputs.plaintexts[2]), "rng_draws": draws,
        "item": hex::encode(&item), "read": hex::encode(got.payload.as_slice()),
        "reader_state_after": hex::encode(alice1.encode()),
    }));

    // Alice adds Carol; epoch 2.
    t += 1000;
    let list1 = list0.next(&[Change::Add(account[2], Role::Member)], &keys[0], t)?;
    t += 1000;
    let (parts2, alice2) = rekey(&list1, 2, &member_keys, &keys[0], t, &mut rngs[0])?;
    let rekey2_draws = rngs[0].take();
    let mut carol2 = Epoch::open(&parts2, &list1, &keys[2], std::slice::from_ref(&secrets[2]))?;
    let mut bob2 = Epoch::open(&parts2, &list1, &keys[1], std::slice::from_ref(&secrets[1]))?;
    let item = carol2.encrypt(&keys[2], &inputs.plaintexts[3], &mut rngs[2])?;
    let draws = rngs[2].take();
    let got = bob2.decrypt(&item)?;
    messages.push(json!({
        "epoch": 2, "writer": "carol", "reader": "bob", "counter": 0,
        "plaintext": hex::encode(&inputs.plaintexts[3]), "rng_draws": draws,
        "item": hex::encode(&item), "read": hex::encode(got.payload.as_slice()),
        "reader_state_after": hex::encode(bob2.encode()),
    }));
    // The last message as stored: sealed under the item key.
    let sealed = group.seal_item(&item, &mut rngs[2])?;
    let seal_draws = rngs[2].take();

    let names = ["alice", "bob", "carol"];
    Ok(json!({
        "inputs": {
            "account_seeds": inputs.account_seeds.iter().map(hex::encode).collect::<Vec<_>>(),
            "rng_seeds": inputs.rng_seeds.iter().map(hex::encode).collect::<Vec<_>>(),
            "now": inputs.now,
            "plaintexts": inputs.plaintexts.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "parties": names,
        "group": {
            "rng_draws": group_draws,
            "public": hex::encode(group.public()),
        },
        "devices": devices,
        "list0": { "bytes": hex::encode(list0.as_bytes()), "hash": hex::encode(list0.hash()) },
        "rekey1": {
            "epoch": 1,
            "rng_draws": rekey1_draws,
            "parts": parts1.iter().map(|p| hex::encode(p.as_bytes())).collect::<Vec<_>>(),
            "epoch_id": hex::encode(alice1.epoch_id()),
            "admin_state": hex::encode(Epoch::decode(&alice1.encode())?.encode()),
            "carol_opens": carol_not_in_1,
        },
        "list1": { "bytes": hex::encode(list1.as_bytes()), "hash": hex::encode(list1.hash()) },
        "rekey2": {
            "epoch": 2,
            "rng_draws": rekey2_draws,
            "parts": parts2.iter().map(|p| hex::encode(p.as_bytes())).collect::<Vec<_>>(),
            "epoch_id": hex::encode(alice2.epoch_id()),
            "admin_state": hex::encode(alice2.encode()),
        },
        "messages": messages,
        "sealed_item": {
            "rng_draws": seal_draws,
            "bytes": hex::encode(sealed),
        },
    }))
}
