//! The computation behind `whitepaper/vectors/devices.json`, shared by the example that writes
//! the file and the test that recomputes it. Every random byte comes from a ChaCha20 generator
//! seeded with an input, and every draw is published beside what it made.

use allium_client::devices::link::{
    self, DeviceRequest, Event, HistoryDirection, HistoryItem, Link, Welcome,
};
use allium_client::devices::list::DeviceList;
use allium_client::devices::sync::{self, Entry, SyncState};
use allium_client::devices::{container, sync_key};
use allium_client::identity::Identity;
use allium_client::messenger::payload::{AppMessage, Content, device_list_message};
use allium_client::session::DeviceCert;
use serde_json::{Value, json};
use zeroize::Zeroizing;

#[path = "../session_vectors/recorder.rs"]
mod recorder;
pub use recorder::Recorder;

/// Everything the vectors depend on.
pub struct Inputs {
    pub account_seed: [u8; 32],
    /// Per device: Ed25519 signing seed, X25519 identity secret, device id, created_at.
    pub devices: Vec<([u8; 32], [u8; 32], u32, u64)>,
    pub list_version: u64,
    pub now: u64,
    pub new_device_rng_seed: [u8; 32],
    pub primary_rng_seed: [u8; 32],
    pub device_name: String,
    pub peer: [u8; 32],
    pub msg_id: [u8; 16],
    pub text: String,
    pub record_r: [u8; 32],
}

pub fn inputs_json(i: &Inputs) -> Value {
    json!({
        "account_seed": hex::encode(i.account_seed),
        "devices": i.devices.iter().map(|(s, x, id, at)| json!({
            "signing_seed": hex::encode(s),
            "identity_secret": hex::encode(x),
            "device_id": id,
            "created_at": at,
        })).collect::<Vec<_>>(),
        "list_version": i.list_version,
        "now": i.now,
        "new_device_rng_seed": hex::encode(i.new_device_rng_seed),
        "primary_rng_seed": hex::encode(i.primary_rng_seed),
        "device_name": i.device_name,
        "peer": hex::encode(i.peer),
        "msg_id": hex::encode(i.msg_id),
        "text": i.text,
        "record_r": hex::encode(i.record_r),
    })
}

fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

/// An envelope-shaped byte string of a bucket's length: `0x02`, then `fill`.
fn fake_envelope(len: usize, fill: u8) -> Vec<u8> {
    let mut e = vec![fill; len];
    e[0] = 2;
    e
}

pub fn run(i: &Inputs) -> Result<Value, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let account = Identity::from_seed(&i.account_seed);
    let certs: Vec<DeviceCert> = i
        .devices
        .iter()
        .map(|(s, x, id, at)| {
            DeviceCert::issue(&account, &ed25519_public(s), &x25519_public(x), *id, *at)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| err(&e))?;
    // The last device is the one being linked: the list before it, and the one with it.
    let before = DeviceList::sign(&account, i.list_version, i.now, &certs[..certs.len() - 1])
        .map_err(|e| err(&e))?;
    let after =
        DeviceList::sign(&account, i.list_version + 1, i.now + 1, &certs).map_err(|e| err(&e))?;

    // Container: three envelopes of the small buckets.
    let envelopes = vec![
        fake_envelope(512, 0xa1),
        fake_envelope(512, 0xa2),
        fake_envelope(1024, 0xa3),
    ];
    let items = container::pack(&envelopes);

    // Application messages between devices.
    let message = AppMessage {
        msg_id: i.msg_id,
        sent_ms: i.now,
        content: Content::Text(i.text.clone()),
    };
    let copy = message.sent_copy(&i.peer);
    let list_message = device_list_message(i.msg_id, i.now, after.as_bytes());

    // Linking, both sides, the last device being linked.
    let (new_signing, new_identity, _, _) = i.devices[i.devices.len() - 1];
    let request = DeviceRequest {
        signing: ed25519_public(&new_signing),
        identity: x25519_public(&new_identity),
        name: i.device_name.clone(),
    };
    let mut new_rng = Recorder::new(i.new_device_rng_seed);
    let (mut new, code) = Link::new_device(request.clone(), &mut new_rng);
    let new_draws = new_rng.take();
    let mut primary_rng = Recorder::new(i.primary_rng_seed);
    let mut primary = Link::primary(&code, &mut primary_rng).map_err(|e| err(&e))?;
    let primary_draws = primary_rng.take();
    let hello = primary.poll_transmit().ok_or("no hello")?;
    new.handle(&hello.data);
    let sas = match new.poll_event() {
        Some(Event::Compare(s)) => s,
        e => return Err(format!("{e:?}")),
    };
    new.confirm(true);
    let keys = new.poll_transmit().ok_or("no keys")?;
    primary.confirm(true);
    primary.handle(&keys.data);
    let history = vec![
        HistoryItem {
            direction: HistoryDirection::Sent,
            peer: i.peer,
            timestamp_ms: i.now - 2000,
            msg_id: [0x11; 16],
            text: "see you at six".into(),
        },
        HistoryItem {
            direction: HistoryDirection::Received,
            peer: i.peer,
            timestamp_ms: i.now - 1000,
            msg_id: [0x22; 16],
            text: "ok".into(),
        },
    ];
    let chunks = link::history_chunks(&history);
    let sync = sync_key(&account).map_err(|e| err(&e))?;
    let welcome = Welcome {
        cert: certs[certs.len() - 1].clone(),
        sync_key: Zeroizing::new(*sync),
        list: after.clone(),
        history_chunks: 0,
    };
    primary.approve(welcome, &chunks);
    let from_primary: Vec<Value> = std::iter::from_fn(|| primary.poll_transmit())
        .map(|t| Value::String(hex::encode(t.data)))
        .collect();
    let th = link::transcript(
        &code,
        &hello.data[2..34].try_into().map_err(|e| err(&e))?,
        &hello.data[34..66].try_into().map_err(|e| err(&e))?,
    );

    // Sync: two devices' edits and the record carrying them.
    let contact = i.peer;
    let mut one = SyncState::new();
    one.set(
        sync::CONTACT_NAME,
        &contact,
        Some(b"bob".to_vec()),
        i.now,
        i.devices[0].2,
    )
    .map_err(|e| err(&e))?;
    one.mark_read(&contact, i.now - 1000, &[0x22; 16], i.now, i.devices[0].2)
        .map_err(|e| err(&e))?;
    let entries = one.pending();
    let record =
        sync::seal_record_with(&sync, false, &entries, &i.record_r).map_err(|e| err(&e))?;
    let rename = |name: &str, time: u64, device: u32| {
        (
            (sync::CONTACT_NAME, contact),
            Entry {
                time,
                device,
                value: Some(name.as_bytes().to_vec()),
            },
        )
    };
    let edits = vec![
        rename("robert", i.now + 10, i.devices[0].2),
        rename("bobby", i.now + 10, i.devices[1].2),
        rename("rob", i.now + 5, i.devices[1].2),
    ];
    let mut merged = SyncState::new();
    merged.merge_all(edits.clone());

    let entry_json = |(k, e): &((u8, [u8; 32]), Entry)| {
        json!({
            "kind": k.0,
            "key": hex::encode(k.1),
            "time": e.time,
            "device": e.device,
            "value": e.value.as_ref().map(hex::encode),
        })
    };
    Ok(json!({
        "inputs": inputs_json(i),
        "account_public": hex::encode(account.public().as_bytes()),
        "certs": certs.iter().map(|c| hex::encode(c.as_bytes())).collect::<Vec<_>>(),
        "device_list": {
            "before": hex::encode(before.as_bytes()),
            "after": hex::encode(after.as_bytes()),
            "record": hex::encode(after.record()),
        },
        "container": {
            "envelopes": envelopes.iter().map(hex::encode).collect::<Vec<_>>(),
            "items": items.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "messages": {
            "text": hex::encode(message.encode()),
            "sent_copy": hex::encode(&copy),
            "device_list": hex::encode(&list_message),
        },
        "link": {
            "new_device_rng_draws": new_draws,
            "primary_rng_draws": primary_draws,
            "code": code.to_string(),
            "hello": hex::encode(&hello.data),
            "transcript_hash": hex::encode(th),
            "sas": sas,
            "keys": hex::encode(&keys.data),
            "history_chunks": chunks.iter().map(hex::encode).collect::<Vec<_>>(),
            "from_primary": from_primary,
        },
        "sync": {
            "sync_key": hex::encode(*sync),
            "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
            "record": hex::encode(&record),
            "edits": edits.iter().map(entry_json).collect::<Vec<_>>(),
            "merged": merged.entries().map(|(k, e)| entry_json(&(*k, e.clone()))).collect::<Vec<_>>(),
        },
    }))
}
