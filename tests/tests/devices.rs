//! Several devices on one account through the real `allium` command and real nodes
//! (`whitepaper/devices.md`): one message to an account reaches each of its devices once, a
//! message sent from one device appears on the account's others as sent, a device that was
//! offline gets everything on its return, and what one message to a 4-device account from a
//! 3-device account costs (§4). The others link devices (§6): a removed device stops receiving
//! (§7), a wrong code links nothing, and SIGKILL during linking leaves both devices usable.
//!
//! In the first test each device is made by restoring the account's phrase into its own data directory: every
//! device then holds the seed and publishes its own bundle, and senders seal to every device
//! with a valid bundle (§3, an account without a list). The stored items, their sizes and the
//! requests are those of linked devices; only the device list record is absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use allium_tests::people::{Person, T, World};
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

/// A running `allium devices link` or `devices approve`: its JSON lines on a channel, its
/// standard input to answer the question about the six digits.
struct Linking {
    child: Child,
    input: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Linking {
    fn start(p: &Person, args: &[&str]) -> Linking {
        let mut child = p
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Linking {
            child,
            input,
            lines,
        }
    }

    /// The next line that has `key`.
    fn next(&self, key: &str) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{key}` line within {T:?}"));
            if v.get(key).is_some() {
                return v;
            }
            assert!(v.get("error").is_none(), "failed: {v}");
        }
    }

    fn answer(&mut self, same: bool) {
        let _ = writeln!(self.input, "{}", if same { "yes" } else { "no" });
    }

    /// Waits for the process to end; its exit code and every line left.
    fn finish(mut self) -> (i32, Vec<Value>) {
        let deadline = Instant::now() + T;
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "still running after {T:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        (code, self.lines.try_iter().collect())
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both sides up to the six digits, which must match: (new device, primary).
fn start_linking(primary: &Person, new: &Person, name: &str) -> (Linking, Linking, String) {
    start_linking_with(primary, new, name, &[])
}

/// [`start_linking`] with more arguments for `devices approve`.
fn start_linking_with(
    primary: &Person,
    new: &Person,
    name: &str,
    approve: &[&str],
) -> (Linking, Linking, String) {
    let n = Linking::start(new, &["devices", "link", "--name", name]);
    let code = n.next("code")["code"].as_str().unwrap().to_owned();
    let p = Linking::start(
        primary,
        &[&["devices", "approve", code.as_str()], approve].concat(),
    );
    let sas_p = p.next("sas")["sas"].clone();
    let sas_n = n.next("sas")["sas"].clone();
    assert_eq!(sas_p, sas_n, "both devices show the same six digits");
    (n, p, code)
}

/// Links `new` to the account of `primary`; returns the new device's id.
fn link(primary: &Person, new: &Person, name: &str) -> u64 {
    link_with(primary, new, name, &[]).0
}

/// [`link`] with more arguments for `devices approve`; also returns how many messages of
/// history the new device says it received.
fn link_with(primary: &Person, new: &Person, name: &str, approve: &[&str]) -> (u64, u64) {
    let (mut n, mut p, _) = start_linking_with(primary, new, name, approve);
    n.answer(true);
    p.answer(true);
    let (code_p, lines_p) = p.finish();
    let (code_n, lines_n) = n.finish();
    assert_eq!(code_p, 0, "approve: {lines_p:?}");
    assert_eq!(code_n, 0, "link: {lines_n:?}");
    let id = lines_n.iter().find_map(|l| l["device"].as_u64()).unwrap();
    assert!(lines_p.iter().any(|l| l["approved"].as_u64() == Some(id)));
    let history = lines_n.iter().find_map(|l| l["history"].as_u64()).unwrap();
    (id, history)
}

fn device_ids(p: &Person) -> Vec<u64> {
    p.ok(&["devices", "list"])
        .iter()
        .filter_map(|l| l["device"].as_u64())
        .collect()
}

/// A 2-device and a 3-device account made by linking talk: every message once on every device,
/// copies on the sender's others, a device offline meanwhile included; a device removed
/// mid-conversation is refused by the network, told it was removed, and gets nothing sent after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_devices_receive_and_a_removed_one_stops() {
    let world = World::start().await;
    let a = [world.person("alice0"), world.person("alice1")];
    let b = [
        world.person("bob0"),
        world.person("bob1"),
        world.person("bob2"),
    ];
    let (alice, _) = a[0].init();
    let (bob, _) = b[0].init();
    link(&a[0], &a[1], "laptop");
    let bob1 = link(&b[0], &b[1], "phone");
    let bob2 = link(&b[0], &b[2], "tablet");
    assert_eq!(device_ids(&b[0]).len(), 3);
    let mut on_linked = device_ids(&b[1]);
    on_linked.sort_unstable();
    let mut on_primary = device_ids(&b[0]);
    on_primary.sort_unstable();
    assert_eq!(on_linked, on_primary, "a linked device reads the same list");
    assert!(on_primary.contains(&bob1) && on_primary.contains(&bob2));

    let sent = a[1].send(&bob, "from alice's laptop");
    assert_eq!(
        (sent["devices"].as_u64(), sent["copies"].as_u64()),
        (Some(3), Some(1))
    );
    // Bob's phone (b[1]) stays offline until after the removal.
    for d in [&b[0], &b[2]] {
        let got = inbox(d);
        assert_eq!(
            counts(&got),
            BTreeMap::from([("from alice's laptop".into(), 1)])
        );
        assert_eq!(got[0].0, alice);
    }
    let got = inbox(&a[0]);
    assert_eq!(
        counts(&got),
        BTreeMap::from([("from alice's laptop".into(), 1)])
    );
    assert_eq!(got[0].2.as_deref(), Some(bob.as_str()), "a sent copy");

    let sent = b[2].send(&alice, "from bob's tablet");
    assert_eq!(
        (sent["devices"].as_u64(), sent["copies"].as_u64()),
        (Some(2), Some(2))
    );
    for d in &a {
        assert_eq!(
            counts(&inbox(d)),
            BTreeMap::from([("from bob's tablet".into(), 1)])
        );
    }
    assert_eq!(
        counts(&inbox(&b[0])),
        BTreeMap::from([("from bob's tablet".into(), 1)])
    );

    // Bob removes the tablet mid-conversation.
    let out = b[0].ok(&["devices", "remove", &bob2.to_string()]);
    assert_eq!(out[0]["removed"].as_u64(), Some(bob2));
    assert!(!device_ids(&b[0]).contains(&bob2));
    let sent = a[0].send(&bob, "after the removal");
    assert_eq!(
        sent["devices"].as_u64(),
        Some(2),
        "the removed device is left out"
    );
    assert_eq!(
        counts(&inbox(&b[0])),
        BTreeMap::from([("after the removal".into(), 1)])
    );
    // The phone comes back: everything once, with the copy the tablet made before its removal
    // (the phone's list still names the tablet: §3 re-reads the list only for a device it does
    // not name).
    let got = inbox(&b[1]);
    assert_eq!(
        counts(&got),
        BTreeMap::from([
            ("from alice's laptop".into(), 1),
            ("from bob's tablet".into(), 1),
            ("after the removal".into(), 1),
        ]),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|(_, t, to)| t == "from bob's tablet" && to.as_deref() == Some(alice.as_str()))
    );
    assert_eq!(
        counts(&inbox(&a[1])),
        BTreeMap::from([("after the removal".into(), 1)]),
        "the sender's other device has its copy"
    );
    // The tablet is refused by every member, learns it was removed, and reads nothing.
    let out = b[2].run(&["inbox"]);
    assert_ne!(out.code, 0);
    let said = format!("{:?}{}", out.lines, out.stderr);
    assert!(said.contains("removed"), "{said}");
    assert!(!said.contains("after the removal"));
    let again = b[2].run(&["inbox"]);
    assert_ne!(again.code, 0, "it stays removed");
    // Bob's remaining devices still talk.
    b[1].send(&alice, "still here");
    for d in &a {
        assert_eq!(
            counts(&inbox(d)),
            BTreeMap::from([("still here".into(), 1)])
        );
    }
}

/// A mistyped code is refused before anything is sent; codes that differ on the two devices
/// stop both and link nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_links_nothing() {
    let world = World::start().await;
    let primary = world.person("primary");
    let new = world.person("new");
    primary.init();

    let n = Linking::start(&new, &["devices", "link"]);
    let code = n.next("code")["code"].as_str().unwrap().to_owned();
    // One character changed: the checksum fails.
    let mut typo: Vec<char> = code.chars().collect();
    let i = typo.len() - 5;
    typo[i] = if typo[i] == 'q' { 'p' } else { 'q' };
    let typo: String = typo.into_iter().collect();
    let out = primary.run(&["devices", "approve", &typo]);
    assert_ne!(out.code, 0);
    assert!(
        format!("{:?}", out.lines).contains("linking code"),
        "{:?}",
        out.lines
    );
    n.kill();

    // The person says the numbers differ on the primary: both stop.
    let (mut n, mut p, _) = start_linking(&primary, &new, "phone");
    p.answer(false);
    let (code_p, _) = p.finish();
    assert_ne!(code_p, 0);
    n.answer(true);
    let (code_n, lines_n) = n.finish();
    assert_ne!(code_n, 0, "{lines_n:?}");
    assert_eq!(device_ids(&primary).len(), 1, "nothing linked");
    assert!(!new.data.join("device.key").exists());

    // And on the new device.
    let (mut n, mut p, _) = start_linking(&primary, &new, "phone");
    n.answer(false);
    let (code_n, _) = n.finish();
    assert_ne!(code_n, 0);
    p.answer(true);
    let (code_p, _) = p.finish();
    assert_ne!(code_p, 0);
    assert_eq!(device_ids(&primary).len(), 1, "nothing linked");
    assert!(!new.data.join("device.key").exists());

    // The same two devices link once the numbers match.
    link(&primary, &new, "phone");
    assert_eq!(device_ids(&primary).len(), 2);
}

/// SIGKILL on either side in the middle of linking leaves both devices usable: the primary
/// sends and receives, and the new device links on the next try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_linking_leaves_both_usable() {
    let world = World::start().await;
    let primary = world.person("primary");
    let new = world.person("new");
    let friend = world.person("friend");
    let (account, _) = primary.init();
    let (friend_addr, _) = friend.init();

    // Killed while the person compares the numbers.
    let (n, p, _) = start_linking(&primary, &new, "phone");
    p.kill();
    n.kill();
    // Killed right after confirming on both sides, wherever the exchange had got to.
    let (mut n, mut p, _) = start_linking(&primary, &new, "phone");
    n.answer(true);
    p.answer(true);
    p.kill();
    n.kill();

    // The primary still sends and receives.
    primary.send(&friend_addr, "still working");
    assert_eq!(
        counts(&inbox(&friend)),
        BTreeMap::from([("still working".into(), 1)])
    );
    friend.send(&account, "good");
    assert_eq!(
        counts(&inbox(&primary)),
        BTreeMap::from([("good".into(), 1)])
    );

    // The new device links on the next try, unless the killed run had finished linking it.
    if !new.data.join("device.key").exists() {
        link(&primary, &new, "phone");
    }
    // It sends (publishing its keys first); the primary shows the copy.
    new.send(&friend_addr, "from the new device");
    assert_eq!(
        counts(&inbox(&friend)),
        BTreeMap::from([("from the new device".into(), 1)])
    );
    let got = inbox(&primary);
    assert_eq!(
        counts(&got),
        BTreeMap::from([("from the new device".into(), 1)])
    );
    assert_eq!(got[0].2.as_deref(), Some(friend_addr.as_str()));
    let _ = account;
}

/// The address book as a device shows it: (name, address, verified).
fn book(p: &Person) -> Vec<(String, String, bool)> {
    p.ok(&["contacts", "list"])
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["address"].as_str().unwrap().to_owned(),
                l["verified"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Contacts follow the account (§8): a contact added on one device appears on the other, two
/// devices that rename the same contact without seeing each other's edit end with the same name,
/// a verification made on one shows on the other, and restoring from the phrase brings the
/// contacts back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_converge_and_restore_recovers_them() {
    let world = World::start().await;
    let p = world.person("primary");
    let l = world.person("laptop");
    let (_, phrase) = p.init();
    let (carol, _) = world.person("carol").init();
    link(&p, &l, "laptop");

    p.ok(&["contacts", "add", "carol", &carol]);
    p.ok(&["inbox"]);
    l.ok(&["inbox"]);
    assert_eq!(book(&l), vec![("carol".into(), carol.clone(), false)]);

    // Both rename carol before either has seen the other's edit.
    p.ok(&["contacts", "remove", "carol"]);
    p.ok(&["contacts", "add", "caro", &carol]);
    l.ok(&["contacts", "remove", "carol"]);
    l.ok(&["contacts", "add", "carrie", &carol]);
    p.ok(&["inbox"]);
    l.ok(&["inbox"]);
    p.ok(&["inbox"]);
    let (on_p, on_l) = (book(&p), book(&l));
    assert_eq!(on_p, on_l, "both devices hold the same name");
    assert_eq!(on_p.len(), 1);
    assert!(["caro", "carrie"].contains(&on_p[0].0.as_str()), "{on_p:?}");

    // A verification made on the laptop shows on the primary.
    let name = on_p[0].0.clone();
    l.ok(&["contacts", "verify", &name, "--confirm"]);
    l.ok(&["inbox"]);
    p.ok(&["inbox"]);
    assert_eq!(book(&p), vec![(name.clone(), carol.clone(), true)]);

    // Every device lost: the phrase brings the contacts back.
    let restored = world.person("restored");
    let out = restored.run_with_input(&["restore"], &format!("{phrase}\n"));
    assert_eq!(out.code, 0, "restore: {}", out.stderr);
    assert_eq!(book(&restored), vec![(name, carol, true)]);
}

/// The texts of a device's history, each message once, with their direction.
fn history_texts(p: &Person) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(p.data.join("history.jsonl")) else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| seen.insert((e["direction"].to_string(), e["msg_id"].to_string())))
        .map(|e| {
            (
                e["direction"].as_str().unwrap().to_owned(),
                e["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Linking carries the newest history that fits the size the person picked, and nothing when
/// they pick none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_moves_to_a_new_device_within_the_size_picked() {
    let world = World::start().await;
    let p = world.person("primary");
    let friend = world.person("friend");
    let (account, _) = p.init();
    let (friend_addr, _) = friend.init();
    // Five messages of 300 bytes (four received, one sent): with 61 bytes of entry each, two
    // fit in 1 KiB and three do not.
    let texts: Vec<String> = ["a", "b", "c", "d"].iter().map(|c| c.repeat(300)).collect();
    for t in &texts {
        friend.send(&account, t);
    }
    assert_eq!(inbox(&p).len(), 4);
    let answer = "e".repeat(300);
    p.send(&friend_addr, &answer);

    let with = world.person("with-history");
    let (_, n) = link_with(&p, &with, "laptop", &["--history", "1"]);
    assert_eq!(n, 2);
    assert_eq!(
        history_texts(&with),
        vec![
            ("received".into(), texts[3].clone()),
            ("sent".into(), answer.clone()),
        ]
    );

    let without = world.person("without-history");
    let (_, n) = link_with(&p, &without, "phone", &[]);
    assert_eq!(n, 0);
    assert!(history_texts(&without).is_empty());

    // All of it when the size allows.
    let all = world.person("all-history");
    let (_, n) = link_with(&p, &all, "tablet", &["--history", "64"]);
    assert_eq!(n, 5);
    let got: Vec<String> = history_texts(&all).into_iter().map(|(_, t)| t).collect();
    let mut want = texts.clone();
    want.push(answer);
    assert_eq!(got, want);
}
