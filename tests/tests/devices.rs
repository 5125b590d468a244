//! Several devices on one account through the real `allium` command and real nodes
//! (`whitepaper/devices.md`): one message to an account reaches each of its devices once, a
//! message sent from one device appears on the account's others as sent, a device that was
//! offline gets everything on its return, and what one message to a 4-device account from a
//! 3-device account costs (§4, "Efficiency").
//!
//! Each device here is made by restoring the account's phrase into its own data directory: every
//! device then holds the seed and publishes its own bundle, and senders seal to every device
//! with a valid bundle (§3, an account without a list). The stored items, their sizes and the
//! requests are those of linked devices; only the device list record is absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use allium_tests::people::{Person, World};
use serde_json::Value;

/// An account on `n` devices: the first made by `init`, the others by `restore`.
fn account(world: &World, name: &str, n: usize) -> (String, Vec<Person>) {
    let first = world.person(&format!("{name}0"));
    let (address, phrase) = first.init();
    let mut devices = vec![first];
    for i in 1..n {
        let p = world.person(&format!("{name}{i}"));
        let out = p.run_with_input(&["restore"], &format!("{phrase}\n"));
        assert_eq!(out.code, 0, "restore: {}", out.stderr);
        assert_eq!(out.lines[0]["address"].as_str().unwrap(), address);
        devices.push(p);
    }
    (address, devices)
}

/// What one `inbox` run brought: (from address, text, sent_to address if a sent copy).
fn inbox(p: &Person) -> Vec<(String, String, Option<String>)> {
    p.ok(&["inbox"])
        .iter()
        .filter(|l| l.get("text").is_some())
        .map(|l| {
            (
                l["address"].as_str().unwrap().to_owned(),
                l["text"].as_str().unwrap().to_owned(),
                l.get("sent_to_address")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )
        })
        .collect()
}

/// Counts of each text in `got`.
fn counts(got: &[(String, String, Option<String>)]) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for (_, t, _) in got {
        *c.entry(t.clone()).or_default() += 1;
    }
    c
}

/// The cost line of one `send`.
fn cost(sent: &Value) -> String {
    format!(
        "devices {} items {} copies {} requests {} request_bytes {} response_bytes {}",
        sent["devices"],
        sent["items"],
        sent["copies"],
        sent["requests"],
        sent["request_bytes"],
        sent["response_bytes"]
    )
}

/// A 3-device account and a 4-device account talk: every message once on every device of the
/// recipient, every message sent from one device once, as sent, on the sender's others,
/// including a device that stayed offline throughout; and the cost of each send is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_once_on_every_device() {
    let world = World::start().await;
    let (alice, a) = account(&world, "alice", 3);
    let (bob, b) = account(&world, "bob", 4);

    // Cold: the sender fetches the recipient's records (and its own) first.
    let first = a[0].send(&bob, "one");
    eprintln!(
        "first send, 3-device sender to 4-device recipient: {}",
        cost(&first)
    );
    assert_eq!(first["devices"], 4, "sealed to each of bob's devices");
    assert_eq!(first["copies"], 2, "and to alice's two others");
    assert_eq!(first["items"], 1, "one container in bob's inbox");
    // Warm: records fresh, sessions started.
    let second = a[0].send(&bob, "two");
    eprintln!("second send, same pair: {}", cost(&second));
    assert_eq!(
        (second["devices"].as_u64(), second["copies"].as_u64()),
        (Some(4), Some(2))
    );

    // Bob's devices 0–2 read; device 3 stays offline.
    for d in &b[..3] {
        let got = inbox(d);
        assert_eq!(
            counts(&got),
            BTreeMap::from([("one".into(), 1), ("two".into(), 1)]),
            "{got:?}"
        );
        assert!(
            got.iter()
                .all(|(from, _, copy)| *from == alice && copy.is_none())
        );
    }
    // Alice's other devices show what device 0 sent, as sent to bob, once.
    for d in &a[1..] {
        let got = inbox(d);
        assert_eq!(
            counts(&got),
            BTreeMap::from([("one".into(), 1), ("two".into(), 1)]),
            "{got:?}"
        );
        assert!(
            got.iter()
                .all(|(_, _, copy)| copy.as_deref() == Some(bob.as_str()))
        );
    }

    // Bob answers from device 1: every alice device gets it once, bob's others as sent.
    let reply = b[1].send(&alice, "three");
    eprintln!(
        "reply, 4-device sender to 3-device recipient: {}",
        cost(&reply)
    );
    assert_eq!(
        (reply["devices"].as_u64(), reply["copies"].as_u64()),
        (Some(3), Some(3))
    );
    for d in &a {
        assert_eq!(counts(&inbox(d)), BTreeMap::from([("three".into(), 1)]));
    }
    for d in [&b[0], &b[2]] {
        let got = inbox(d);
        assert_eq!(counts(&got), BTreeMap::from([("three".into(), 1)]));
        assert_eq!(got[0].2.as_deref(), Some(alice.as_str()));
    }
    // Nothing comes twice.
    for d in a.iter().chain(&b[..3]) {
        assert!(inbox(d).is_empty());
    }

    // The device that was offline gets everything once on its return.
    let got = inbox(&b[3]);
    assert_eq!(
        counts(&got),
        BTreeMap::from([("one".into(), 1), ("two".into(), 1), ("three".into(), 1)]),
        "{got:?}"
    );
    assert!(inbox(&b[3]).is_empty());
}
