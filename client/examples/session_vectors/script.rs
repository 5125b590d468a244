//! The scripted exchange behind `whitepaper/vectors/sessions.json`, shared by the example that
//! writes the file and the test that recomputes it. Every random byte comes from a ChaCha20
//! generator seeded with an input, and every draw is published with the step that made it.

use allium_client::identity::Identity;
use allium_client::session::envelope;
use allium_client::session::{
    self, DeviceKeys, Payload, PrekeyBundle, PrekeyStore, Session, SessionError,
};
use serde_json::{Value, json};

#[path = "recorder.rs"]
mod recorder;
pub use recorder::Recorder;

/// Everything the exchange depends on.
pub struct Inputs {
    pub alice_account_seed: [u8; 32],
    pub bob_account_seed: [u8; 32],
    pub alice_rng_seed: [u8; 32],
    pub bob_rng_seed: [u8; 32],
    pub alice_device_id: u32,
    pub bob_device_id: u32,
    pub now: u64,
    pub prekey_lifetime: u64,
    /// Four plaintexts: Alice's two start messages, Bob's reply, Alice's answer.
    pub plaintexts: [Vec<u8>; 4],
}

pub fn inputs_json(i: &Inputs) -> Value {
    json!({
        "alice_account_seed": hex::encode(i.alice_account_seed),
        "bob_account_seed": hex::encode(i.bob_account_seed),
        "alice_rng_seed": hex::encode(i.alice_rng_seed),
        "bob_rng_seed": hex::encode(i.bob_rng_seed),
        "alice_device_id": i.alice_device_id,
        "bob_device_id": i.bob_device_id,
        "now": i.now,
        "prekey_lifetime": i.prekey_lifetime,
        "plaintexts": i.plaintexts.iter().map(hex::encode).collect::<Vec<_>>(),
    })
}

fn payload_hex(p: &Payload) -> String {
    match p {
        Payload::Start(s) => hex::encode(s.encode()),
        Payload::Ratchet(m) => hex::encode(m.encode()),
    }
}

fn step(
    action: &str,
    plaintext: &[u8],
    draws: Value,
    payload: &Payload,
    envelope: &[u8],
    state: &Session,
) -> Value {
    json!({
        "action": action,
        "plaintext": hex::encode(plaintext),
        "rng_draws": draws,
        "payload": payload_hex(payload),
        "envelope": hex::encode(envelope),
        "state_after": hex::encode(&*state.encode()),
    })
}

/// Runs the exchange and returns every output.
pub fn run(i: &Inputs) -> Result<Value, SessionError> {
    let mut ar = Recorder::new(i.alice_rng_seed);
    let mut br = Recorder::new(i.bob_rng_seed);
    let now = i.now;
    let alice_account = Identity::from_seed(&i.alice_account_seed);
    let bob_account = Identity::from_seed(&i.bob_account_seed);

    let alice = DeviceKeys::generate(&alice_account, i.alice_device_id, now, &mut ar);
    let alice_device_draws = ar.take();
    let mut alice_store = PrekeyStore::new();
    let alice_bundle = alice_store.rotate(&alice, now, i.prekey_lifetime, &mut ar)?;
    let alice_prekey_draws = ar.take();
    let bob = DeviceKeys::generate(&bob_account, i.bob_device_id, now, &mut br);
    let bob_device_draws = br.take();
    let mut bob_store = PrekeyStore::new();
    let bob_bundle = bob_store.rotate(&bob, now, i.prekey_lifetime, &mut br)?;
    let bob_prekey_draws = br.take();
    // What a sender does with a fetched bundle.
    let bob_bundle = PrekeyBundle::verify(bob_bundle.as_bytes(), &bob_account.address(), now)?;

    let (mut a, agreement) = Session::initiate_with_agreement(&alice, &bob_bundle, now, &mut ar)?;
    let initiate_draws = ar.take();
    let mut steps = Vec::new();

    // Alice sends two start messages; the second arrives first.
    let p0 = a.encrypt(&i.plaintexts[0])?;
    let e0 = envelope::seal(&alice, &bob_bundle, &p0, now, &mut ar)?;
    steps.push(step(
        "alice sends (start, n = 0)",
        &i.plaintexts[0],
        ar.take(),
        &p0,
        &e0,
        &a,
    ));
    let p1 = a.encrypt(&i.plaintexts[1])?;
    let e1 = envelope::seal(&alice, &bob_bundle, &p1, now, &mut ar)?;
    steps.push(step(
        "alice sends (start, n = 1)",
        &i.plaintexts[1],
        ar.take(),
        &p1,
        &e1,
        &a,
    ));

    let o1 = envelope::open(&bob_store, &e1, now)?;
    let Payload::Start(s1) = &o1.payload else {
        return Err(SessionError::WrongSession);
    };
    let (mut b, got1, bob_agreement) =
        Session::accept_with_agreement(&bob, &bob_store, &o1.sender, s1, now, &mut br)?;
    if got1.as_slice() != i.plaintexts[1].as_slice() || *bob_agreement.sk != *agreement.sk {
        return Err(SessionError::Decrypt);
    }
    steps.push(step(
        "bob accepts start n = 1 (KEM step)",
        &got1,
        br.take(),
        &p1,
        &e1,
        &b,
    ));
    let o0 = envelope::open(&bob_store, &e0, now)?;
    let got0 = b.decrypt(&o0.sender, &o0.payload, now, &mut br)?;
    steps.push(step(
        "bob decrypts start n = 0 (skipped key)",
        &got0,
        br.take(),
        &p0,
        &e0,
        &b,
    ));

    let p2 = b.encrypt(&i.plaintexts[2])?;
    let e2 = envelope::seal(&bob, &alice_bundle, &p2, now, &mut br)?;
    steps.push(step(
        "bob sends (ratchet)",
        &i.plaintexts[2],
        br.take(),
        &p2,
        &e2,
        &b,
    ));
    let o2 = envelope::open(&alice_store, &e2, now)?;
    let got2 = a.decrypt(&o2.sender, &o2.payload, now, &mut ar)?;
    steps.push(step(
        "alice decrypts (KEM step)",
        &got2,
        ar.take(),
        &p2,
        &e2,
        &a,
    ));

    let p3 = a.encrypt(&i.plaintexts[3])?;
    let e3 = envelope::seal(&alice, &bob_bundle, &p3, now, &mut ar)?;
    steps.push(step(
        "alice sends (ratchet)",
        &i.plaintexts[3],
        ar.take(),
        &p3,
        &e3,
        &a,
    ));
    let o3 = envelope::open(&bob_store, &e3, now)?;
    let got3 = b.decrypt(&o3.sender, &o3.payload, now, &mut br)?;
    steps.push(step(
        "bob decrypts (KEM step)",
        &got3,
        br.take(),
        &p3,
        &e3,
        &b,
    ));

    let (ka, kb) = (
        alice_account.public().to_bytes(),
        bob_account.public().to_bytes(),
    );
    Ok(json!({
        "inputs": inputs_json(i),
        "alice": {
            "account_public": hex::encode(ka),
            "device_rng_draws": alice_device_draws,
            "device_keys": hex::encode(&*alice.encode()),
            "device_cert": hex::encode(alice.cert().as_bytes()),
            "prekey_rng_draws": alice_prekey_draws,
            "prekey_store": hex::encode(&*alice_store.encode()),
            "prekey_bundle": hex::encode(alice_bundle.as_bytes()),
        },
        "bob": {
            "account_public": hex::encode(kb),
            "device_rng_draws": bob_device_draws,
            "device_keys": hex::encode(&*bob.encode()),
            "device_cert": hex::encode(bob.cert().as_bytes()),
            "prekey_rng_draws": bob_prekey_draws,
            "prekey_store": hex::encode(&*bob_store.encode()),
            "prekey_bundle": hex::encode(bob_bundle.as_bytes()),
        },
        "pqxdh": {
            "rng_draws": initiate_draws,
            "dh1": hex::encode(*agreement.dh1),
            "dh2": hex::encode(*agreement.dh2),
            "dh3": hex::encode(*agreement.dh3),
            "ss": hex::encode(*agreement.ss),
            "sk": hex::encode(*agreement.sk),
            "session_id": hex::encode(agreement.session_id),
        },
        "steps": steps,
        "safety_number": {
            "alice_fingerprint": session::fingerprint(&ka),
            "bob_fingerprint": session::fingerprint(&kb),
            "number": session::safety_number(&ka, &kb),
        },
    }))
}
