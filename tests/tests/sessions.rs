//! Sessions through the real `allium` command and real nodes: processes killed with SIGKILL
//! while they send and while they receive lose no message and show none twice
//! (`whitepaper/sessions.md` §14.1), and two people exchange a hundred messages each way while
//! one of them is offline for part of the time and the whole network is killed and restarted;
//! and a `listen` beside `send`s of one data directory undoes none of their changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use allium_tests::people::{NODES, Person, T, World};
use serde_json::Value;

/// Every line of a person's history, parsed (a line torn by a kill does not parse and is left
/// out, as the client itself skips it).
fn history(p: &Person) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(p.data.join("history.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Received messages in history order, as (sender address, text), each line once.
fn received(p: &Person) -> Vec<(String, String)> {
    history(p)
        .iter()
        .filter(|e| e["direction"] == "received")
        .map(|e| {
            (
                e["peer"].as_str().unwrap().to_owned(),
                e["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The texts of the messages a person's history records as sent (accepted into the outbox),
/// by msg_id.
fn accepted(p: &Person) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in history(p) {
        if e["direction"] == "sent" && !e["text"].as_str().unwrap_or("").is_empty() {
            out.insert(
                e["msg_id"].as_str().unwrap().to_owned(),
                e["text"].as_str().unwrap().to_owned(),
            );
        }
    }
    out
}

/// Runs `allium args` and kills it with SIGKILL after `after`, unless it finished first.
/// Returns whether it ran to the end.
fn run_killed_after(p: &Person, args: &[&str], after: Duration) -> bool {
    let mut child = p
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let finished = child.try_wait().unwrap().is_some();
    if !finished {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_send_and_receive_loses_and_repeats_nothing() {
    let w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    let (alice_addr, _) = alice.init();
    let (bob_addr, _) = bob.init();
    // A first exchange, so both directions have established sessions and kills also land in
    // the ratchet steps, not only in session starts.
    alice.send(&bob_addr, "warm-up a");
    assert_eq!(bob.inbox().len(), 1);
    bob.send(&alice_addr, "warm-up b");
    assert_eq!(alice.inbox().len(), 1);

    // Sends killed at every stage: loading, sealing, saving, storing, after the store.
    let rounds = 24;
    for i in 0..rounds {
        let text = format!("killed send {i}");
        let after = Duration::from_millis(15 * i);
        run_killed_after(&alice, &["send", &bob_addr, &text], after);
        // Receives killed at every stage too, while messages wait.
        run_killed_after(&bob, &["inbox"], Duration::from_millis(10 * (rounds - i)));
    }
    // Whatever a killed send left in the outbox goes out with the next command.
    alice.send(&bob_addr, "the last one");
    bob.inbox();

    let sent = accepted(&alice);
    let got = received(&bob);
    let from_alice: Vec<&String> = got
        .iter()
        .filter(|(from, _)| *from == alice_addr)
        .map(|(_, t)| t)
        .collect();
    let distinct: BTreeSet<&String> = from_alice.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        from_alice.len(),
        "a message shown twice: {from_alice:?}"
    );
    let lost: Vec<&String> = sent.values().filter(|t| !distinct.contains(t)).collect();
    assert!(lost.is_empty(), "accepted but never received: {lost:?}");
    // Everything received was sent: nothing made up, nothing from a torn state.
    assert!(
        distinct.iter().all(|t| sent.values().any(|s| s == *t)),
        "{distinct:?}"
    );
    eprintln!(
        "killed {rounds} sends and {rounds} receives: {} of {} sends were accepted, all \
         received once",
        sent.len() - 2,
        rounds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_messages_each_way_with_one_side_offline_for_a_while() {
    let mut w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    let (alice_addr, _) = alice.init();
    let (bob_addr, _) = bob.init();
    let mut alice_got = Vec::new();
    let mut bob_got = Vec::new();
    for round in 0..10 {
        if round == 6 {
            // The whole network dies at once (SIGKILL, no clean shutdown) and comes back: what
            // the nodes acknowledged and the sessions both sides saved carry on.
            for i in 0..NODES + 1 {
                w.net.kill_node(i).unwrap();
            }
            for i in 0..NODES + 1 {
                w.net.start_node(i).unwrap();
            }
            assert!(
                w.net.wait_for_roster_version(1, T).await,
                "the restarted network serves a roster again"
            );
        }
        for i in 0..10 {
            alice.send(&bob_addr, &format!("a{}", round * 10 + i));
            bob.send(&alice_addr, &format!("b{}", round * 10 + i));
        }
        // Bob is offline for the first four rounds: he only sends (from another session of
        // the command each time) and reads nothing until round four.
        if round >= 4 {
            bob_got.extend(bob.inbox().into_iter().map(|(_, t)| t));
        }
        alice_got.extend(alice.inbox().into_iter().map(|(_, t)| t));
    }
    let want_a: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
    let want_b: Vec<String> = (0..100).map(|i| format!("b{i}")).collect();
    assert_eq!(
        bob_got, want_a,
        "Bob reads Alice's hundred, in order, once each"
    );
    assert_eq!(
        alice_got, want_b,
        "Alice reads Bob's hundred, in order, once each"
    );
    assert!(alice.inbox().is_empty() && bob.inbox().is_empty());
}

/// A `listen` runs while `send`s from the same data directory rotate the prekeys (the fault hook
/// rotates them at every publish) and publish the new bundle. Each time, someone new fetches
/// that newest bundle and writes: the listen must read it, as its rounds work on the prekeys on
/// disk under the lock rather than on the copy it loaded at start (whitepaper client.md §6, *One
/// data directory*). Nothing is skipped or shown twice, and `inbox` finds nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_beside_sends_of_its_data_directory_keeps_every_prekey_they_publish() {
    const FAULT: &str = "ALLIUM_FAULT_PREKEY_ROTATION_MS";
    let w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    let (alice_addr, _) = alice.init();
    let (bob_addr, _) = bob.init();
    bob.ok(&["contacts", "add", "alice", &alice_addr]);

    let mut listen = bob
        .command(&["listen"])
        .env(FAULT, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = listen.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    // The next line the listen prints: a message's text, or a warning (a message skipped).
    let next = |what: &str| -> Value {
        rx.recv_timeout(T * 2)
            .unwrap_or_else(|_| panic!("the listen never showed {what}"))
    };
    alice.send(&bob_addr, "warm-up");
    assert_eq!(next("the warm-up")["text"], "warm-up");

    let mut expected = vec![(alice_addr.clone(), "warm-up".to_owned())];
    for i in 0..3 {
        let out = bob
            .command(&["send", "alice", &format!("from bob {i}")])
            .env(FAULT, "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "send beside the listen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let someone = w.person(&format!("new{i}"));
        let (addr, _) = someone.init();
        let text = format!("hello {i} from someone new");
        someone.send(&bob_addr, &text);
        let shown = next(&text);
        assert_eq!(shown["text"], text.as_str(), "{shown}");
        expected.push((addr, text));
    }
    listen.kill().unwrap();
    listen.wait().unwrap();
    let rest: Vec<Value> = rx.try_iter().collect();
    assert!(
        rest.iter()
            .all(|v| v.get("warning").is_none() && v.get("text").is_none()),
        "nothing skipped or shown twice: {rest:?}"
    );
    assert_eq!(received(&bob), expected);
    assert!(bob.inbox().is_empty(), "the listen saved its position");
    let at_alice: Vec<String> = alice.inbox().into_iter().map(|(_, t)| t).collect();
    assert_eq!(at_alice, vec!["from bob 0", "from bob 1", "from bob 2"]);
}
