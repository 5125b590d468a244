//! Groups through the real `allium` command and real nodes (`whitepaper/groups.md`): five people
//! on nine devices exchange messages, each stored once in the group mailbox and read once by
//! every other device; two admins change the membership concurrently (one removes Dave, the
//! other adds Erin) and every member converges on one list; Dave reads nothing written after;
//! and a device offline during every rekey of that catches up on its return.
//!
//! Every device but an account's first is made by restoring the account's phrase into its own
//! data directory, as in `devices.rs`.
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
        devices.push(p);
    }
    (address, devices)
}

/// What one `inbox` run printed about groups: (group message texts with their writers'
/// addresses, the other group lines).
fn inbox(p: &Person) -> (Vec<(String, String)>, Vec<Value>) {
    let lines = p.ok(&["inbox"]);
    let mut texts = Vec::new();
    let mut events = Vec::new();
    for l in lines {
        if l.get("group").is_some() && l.get("text").is_some() {
            texts.push((
                l["address"].as_str().unwrap().to_owned(),
                l["text"].as_str().unwrap().to_owned(),
            ));
        } else if l
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("group_"))
        {
            events.push(l);
        }
    }
    (texts, events)
}

fn counts(got: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for (_, t) in got {
        *c.entry(t.clone()).or_default() += 1;
    }
    c
}

/// (version, list hash, members' addresses) of the group's head as `p` holds it.
fn head(p: &Person) -> (u64, String, Vec<String>) {
    let lines = p.ok(&["groups", "members", "club"]);
    assert!(!lines.is_empty());
    (
        lines[0]["version"].as_u64().unwrap(),
        lines[0]["list"].as_str().unwrap().to_owned(),
        lines
            .iter()
            .map(|l| l["address"].as_str().unwrap().to_owned())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_people_on_nine_devices() {
    let world = World::start().await;
    let (alice, a) = account(&world, "alice", 3);
    let (bob, b) = account(&world, "bob", 2);
    let (carol, c) = account(&world, "carol", 2);
    let (dave, d) = account(&world, "dave", 1);
    let (erin, e) = account(&world, "erin", 1);

    // Alice creates the group; her other devices join by themselves.
    a[0].ok(&["groups", "create", "club"]);
    for p in &a[1..] {
        inbox(p);
    }
    for who in [&bob, &carol, &dave] {
        a[0].ok(&["groups", "add", "club", who.as_str()]);
    }
    // Each invitee's first device shows the invitation and accepts; nothing is added before.
    for p in [&b[0], &c[0], &d[0]] {
        let (_, events) = inbox(p);
        assert!(
            events
                .iter()
                .any(|e| e["group_invitation"] == "club" && e["address"] == alice.as_str()),
            "{events:?}"
        );
        p.ok(&["groups", "accept", "club"]);
    }
    // Alice reads the answers and adds them; their second devices follow the first.
    let (_, events) = inbox(&a[0]);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["group_answer"] == "club" && e["accepted"] == true)
            .count(),
        3,
        "{events:?}"
    );
    for p in [&b[1], &c[1]] {
        inbox(p);
    }
    // Alice's next read wraps a new epoch key for the devices that joined since.
    inbox(&a[0]);
    let members: Vec<&Person> = a.iter().chain(&b).chain(&c).chain(&d).collect();
    assert_eq!(members.len(), 8);
    for p in &members {
        inbox(p);
    }
    for p in &members {
        let (_, _, accounts) = head(p);
        assert_eq!(accounts.len(), 4, "{accounts:?}");
    }

    // Everyone's first device writes once; each message is one stored item.
    let writers = [
        (&a[0], "hello from alice"),
        (&b[0], "hello from bob"),
        (&c[0], "hello from carol"),
        (&d[0], "hello from dave"),
    ];
    for (p, text) in writers {
        let sent = p.ok(&["send", "club", text]);
        assert_eq!(sent[0]["items"], 1, "{sent:?}");
    }
    // Every device reads every message it did not write, once; a second read brings nothing.
    let mut read: Vec<Vec<(String, String)>> = Vec::new();
    for p in &members {
        read.push(inbox(p).0);
    }
    for (p, got) in members.iter().zip(&read) {
        let mut want: BTreeMap<String, usize> = writers
            .iter()
            .filter(|(w, _)| w.data != p.data)
            .map(|(_, t)| ((*t).to_owned(), 1))
            .collect();
        // What a device wrote itself is not shown back to it.
        want.retain(|_, n| *n > 0);
        assert_eq!(counts(got), want, "{}: {got:?}", p.data.display());
        assert!(inbox(p).0.is_empty(), "a message shown twice");
    }
    let author = |text: &str, got: &[(String, String)]| {
        got.iter().find(|(_, t)| t == text).map(|(a, _)| a.clone())
    };
    assert_eq!(
        author("hello from bob", &read[0]).as_deref(),
        Some(bob.as_str())
    );
    assert_eq!(
        author("hello from dave", &read[0]).as_deref(),
        Some(dave.as_str())
    );

    // Bob becomes an admin; everyone but Carol's second device reads from here on.
    a[0].ok(&["groups", "add", "club", bob.as_str(), "--admin"]);
    let online: Vec<&Person> = members
        .iter()
        .copied()
        .filter(|p| p.data != c[1].data)
        .collect();
    for p in &online {
        inbox(p);
    }
    // Bob invites Erin, who accepts; Bob adds her (list v, a rekey) and writes in that epoch.
    b[0].ok(&["groups", "add", "club", erin.as_str()]);
    let (_, events) = inbox(&e[0]);
    assert!(events.iter().any(|e| e["group_invitation"] == "club"));
    e[0].ok(&["groups", "accept", "club"]);
    inbox(&b[0]);
    b[0].ok(&["send", "club", "erin is in"]);
    // Meanwhile Alice, who has not read since, removes Dave from the list she holds: a second
    // list of the same version.
    let (v_alice, _, _) = head(&a[0]);
    let (v_bob, _, _) = head(&b[0]);
    assert_eq!(
        v_bob,
        v_alice + 1,
        "Bob's list is one ahead of what Alice holds"
    );
    a[0].ok(&["groups", "remove", "club", dave.as_str()]);
    let (v_fork, _, _) = head(&a[0]);
    assert_eq!(v_fork, v_bob, "two lists of one version");
    // Both admins read; the one whose list lost re-applies its change; both read again.
    for _ in 0..2 {
        inbox(&a[0]);
        inbox(&b[0]);
    }
    let (version, hash, accounts) = head(&a[0]);
    assert!(version > v_fork, "the loser's change is re-applied on top");
    assert!(
        accounts.contains(&erin) && !accounts.contains(&dave),
        "{accounts:?}"
    );
    // Dave learns he was removed.
    let (texts, events) = inbox(&d[0]);
    assert!(
        events.iter().any(|e| e["group_removed"] == "club"),
        "{events:?}"
    );
    assert!(!texts.iter().any(|(_, t)| t == "after dave"));

    a[0].ok(&["send", "club", "after dave"]);
    let everyone: Vec<&Person> = a.iter().chain(&b).chain(&c).chain(&e).collect();
    for p in &everyone {
        let (got, _) = inbox(p);
        if p.data != a[0].data {
            assert_eq!(
                counts(&got).get("after dave"),
                Some(&1),
                "{}: {got:?}",
                p.data.display()
            );
        }
        if p.data == c[1].data {
            // Offline through the promotion, Bob's add, Alice's removal and the re-applied
            // list: it still reads what was written in the epochs between.
            assert_eq!(counts(&got).get("erin is in"), Some(&1), "{got:?}");
        }
        if p.data == e[0].data {
            assert!(
                !got.iter().any(|(_, t)| t.starts_with("hello")),
                "Erin reads no earlier epoch"
            );
        }
    }
    // All converge on one list; Dave reads nothing written after his removal.
    for p in &everyone {
        let (v, h, _) = head(p);
        assert_eq!(
            (v, h.as_str()),
            (version, hash.as_str()),
            "{}",
            p.data.display()
        );
    }
    let (texts, _) = inbox(&d[0]);
    assert!(texts.is_empty(), "{texts:?}");
    let listed = d[0].ok(&["groups", "list"]);
    assert!(listed.is_empty(), "{listed:?}");
}

/// Long-polls parked at every node of the network.
async fn parked(world: &World) -> u64 {
    let mut sum = 0;
    for n in &world.net.nodes {
        let page = allium_node::http::get(n.metrics, "/metrics")
            .await
            .unwrap()
            .1;
        sum += page
            .lines()
            .find(|l| l.split(' ').next() == Some("allium_longpolls_parked"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
    }
    sum
}

/// Waits until `at_least` long-polls are parked in the network; false after `T`.
async fn parked_at_least(world: &World, at_least: u64) -> bool {
    let deadline = std::time::Instant::now() + allium_tests::people::T;
    while std::time::Instant::now() < deadline {
        if parked(world).await >= at_least {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    false
}

/// An admin's device that did not send an invitation adds the invitee who accepted. `listen` on a
/// device holding a group long-polls its inbox and the group mailbox at the same time (both
/// retrieves are parked at once), and a message to either is shown as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_waits_on_the_inbox_and_the_group_at_once() {
    let world = World::start().await;
    let (alice, a) = account(&world, "alice", 2);
    let (bob, b) = account(&world, "bob", 1);
    a[0].ok(&["groups", "create", "club"]);
    inbox(&a[1]);
    a[0].ok(&["groups", "add", "club", bob.as_str()]);
    inbox(&b[0]);
    b[0].ok(&["groups", "accept", "club"]);
    // Alice's other device, not the one that invited, reads the answer first and adds Bob: it
    // knows of the invitation from the copy the inviting device sent it.
    inbox(&a[1]);
    let (_, _, accounts) = head(&a[1]);
    assert!(accounts.contains(&bob), "{accounts:?}");
    inbox(&b[0]);
    assert_eq!(parked(&world).await, 0, "nobody listens yet");

    let (mut child, rx) = b[0].listen();
    assert!(
        parked_at_least(&world, 2).await,
        "the inbox and the group mailbox are both long-polled"
    );
    a[0].ok(&["send", "club", "to the group"]);
    assert_eq!(
        allium_tests::people::texts_within(&rx, 1, allium_tests::people::T),
        ["to the group"]
    );
    assert!(parked_at_least(&world, 2).await, "both polls again");
    a[0].send(&bob, "to bob");
    assert_eq!(
        allium_tests::people::texts_within(&rx, 1, allium_tests::people::T),
        ["to bob"]
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Both histories hold the group message as a conversation with the group (its address as
    // the peer), the writer beside it (groups.md §13.5).
    let key = a[0].ok(&["groups", "list"])[0]["group_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
    let group = allium_client::identity::Address::from_key_bytes(&key)
        .unwrap()
        .to_string();
    for (p, direction) in [(&a[0], "sent"), (&b[0], "received")] {
        let text = std::fs::read_to_string(p.data.join("history.jsonl")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &Value| l["group"] == "club")
            .collect();
        assert!(
            lines.iter().any(|l| l["peer"] == group.as_str()
                && l["from"] == alice.as_str()
                && l["text"] == "to the group"
                && l["direction"] == direction),
            "{lines:?}"
        );
    }
}
