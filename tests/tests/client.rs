//! The `allium` command against real node processes: people exchanging messages both ways,
//! offline recipients, a relay killed mid-conversation, and an identity restored from its
//! recovery phrase onto a new device. Every step runs the real binary with its own data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use allium_tests::people::{T, World, texts_within};

fn exists(p: &Path) -> bool {
    p.exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_talk_both_ways_offline_and_after_restoring_an_identity() {
    let w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    let (alice_addr, _) = alice.init();
    let (bob_addr, bob_phrase) = bob.init();
    assert!(exists(&bob.data.join("identity")));

    // Alice sends twice while Bob is offline (he has never fetched anything).
    alice.ok(&["contacts", "add", "bob", &bob_addr]);
    let sent = alice.send("bob", "hello bob");
    assert_eq!(
        sent["path"]["hops"].as_array().unwrap().len(),
        4,
        "three relays and a destination"
    );
    alice.send("bob", "are you there?");

    // Bob comes online: both arrive, from Alice, once.
    let got = bob.inbox();
    assert_eq!(
        got,
        vec![
            (alice_addr.clone(), "hello bob".to_owned()),
            (alice_addr.clone(), "are you there?".to_owned()),
        ]
    );
    assert!(bob.inbox().is_empty(), "nothing is shown twice");

    // A sender's control characters reach Bob's terminal as visible escapes, never as commands
    // (a title change, a cleared screen, a line posing as another message); --json stays exact.
    let hostile = "\u{1b}]0;owned\u{7}\u{1b}[2J\rbob: fake\nline";
    alice.send("bob", hostile);
    let (code, shown) = bob.run_human(&["inbox"]);
    assert_eq!(code, 0);
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}') && !shown.contains('\r'));
    assert!(
        shown.contains("\\e]0;owned\\a\\e[2J\\rbob: fake"),
        "{shown:?}"
    );
    assert!(
        shown.contains("\n  line"),
        "continuation lines are indented: {shown:?}"
    );

    // And answers by address.
    bob.send(&alice_addr, "hi alice");
    assert_eq!(
        alice.inbox(),
        vec![(bob_addr.clone(), "hi alice".to_owned())]
    );

    // Bob restores his identity elsewhere from the phrase: a new device of his account. Forward
    // secrecy means it reads nothing sealed before it existed; once it has written to Alice,
    // her next message goes to both of Bob's devices.
    let bob2 = w.person("bob-restored");
    let out = bob2.run_with_input(&["restore"], &format!("{bob_phrase}\n"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.lines[0]["address"].as_str(), Some(bob_addr.as_str()));
    assert!(
        bob2.inbox().is_empty(),
        "messages sealed to the old device stay unreadable"
    );
    bob2.send(&alice_addr, "new phone");
    assert_eq!(
        alice.inbox(),
        vec![(bob_addr.clone(), "new phone".to_owned())]
    );
    let sent = alice.send("bob", "for both of you");
    assert_eq!(sent["devices"].as_u64(), Some(2), "{sent}");
    assert_eq!(
        bob2.inbox(),
        vec![(alice_addr.clone(), "for both of you".to_owned())]
    );
    // Bob's first device also shows what his new one sent, as sent by his account
    // (devices.md §5.1), then Alice's answer.
    assert_eq!(
        bob.inbox(),
        vec![
            (bob_addr, "new phone".to_owned()),
            (alice_addr, "for both of you".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_conversation_costs_no_message() {
    let mut w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    alice.init();
    let (bob_addr, _) = bob.init();
    let (mut listener, rx) = bob.listen();

    let first = alice.send(&bob_addr, "one");
    // Kill a relay of the path just used (not the authority, which publishes the roster).
    let hops: Vec<String> = first["path"]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    let victim = hops[..3]
        .iter()
        .map(|h| w.index_of(h))
        .find(|&i| i != 0)
        .expect("a relay other than the authority");
    w.net.kill_node(victim).unwrap();

    for text in ["two", "three", "four"] {
        alice.send(&bob_addr, text);
    }
    let got = texts_within(&rx, 4, T * 2);
    listener.kill().unwrap();
    listener.wait().unwrap();
    assert_eq!(got, vec!["one", "two", "three", "four"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_get_clear_errors_and_exit_codes() {
    let w = World::start().await;
    let alice = w.person("alice");
    // No identity yet.
    assert_eq!(alice.run(&["whoami"]).code, 4);
    let (addr, _) = alice.init();
    assert_eq!(
        alice.run(&["init"]).code,
        4,
        "an identity is never replaced silently"
    );
    // A mistyped address, an unknown contact.
    let mut typo = addr.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'q' { b'p' } else { b'q' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(alice.run(&["send", &typo, "x"]).code, 3);
    assert_eq!(alice.run(&["contacts", "add", "x", &typo]).code, 3);
    assert_eq!(alice.run(&["send", "nobody", "x"]).code, 3);
    // Too large for any envelope.
    let big = "x".repeat(70_000);
    let out = alice.run_with_input(&["send", &addr, "-"], &big);
    assert_eq!(out.code, 6, "{}", out.stderr);
    // A missing network file.
    let mut lost = w.person("alice");
    lost.network = w.dir.path().join("no-such-network.toml");
    assert_eq!(lost.run(&["inbox"]).code, 5);
    // Status works and names the roster.
    let status = alice.ok(&["status"]);
    assert!(status[0]["roster_version"].as_u64().is_some(), "{status:?}");
    assert_eq!(status[0]["guards"].as_array().unwrap().len(), 3);
    // With every node down, a send gives up with the network-unreachable code.
    let mut w = w;
    w.net.stop();
    let out = alice.run(&["--timeout", "3", "send", &addr, "into the void"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(
        out.lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("could not be reached")
    );
}

/// Open client connections over the whole network, as the nodes' metrics count them.
async fn client_connections(w: &World) -> u64 {
    let mut sum = 0;
    for node in &w.net.nodes {
        let page = allium_node::http::get(node.metrics, "/metrics")
            .await
            .unwrap()
            .1;
        sum += page
            .lines()
            .find(|l| l.split(' ').next() == Some("allium_client_connections"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
    }
    sum
}

/// Waits until the network's open client connections satisfy `ok`; returns the last count
/// and how long it took, or `None` at `limit`.
async fn connections_until(
    w: &World,
    limit: std::time::Duration,
    ok: impl Fn(u64) -> bool,
) -> Option<(u64, std::time::Duration)> {
    let started = std::time::Instant::now();
    loop {
        let n = client_connections(w).await;
        if ok(n) {
            return Some((n, started.elapsed()));
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `allium` closes its QUIC connections when it exits, so the guards free them at once
/// instead of at their 30 s idle time-out (where, until then, they count against the
/// address's connection cap). The bound waited for is a third of that time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_close_their_connections_when_they_exit() {
    const WELL_BEFORE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
    let w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    let before = client_connections(&w).await;

    alice.init();
    let (bob_addr, _) = bob.init();
    alice.send(&bob_addr, "hello");
    assert_eq!(bob.inbox().len(), 1);
    let (n, took) = connections_until(&w, WELL_BEFORE_IDLE, |n| n <= before)
        .await
        .expect("connections of exited commands still open");
    eprintln!("after init, send and inbox: {n} client connections ({before} before) in {took:?}");

    // A listener holds its guard connection while it runs, and closes it when stopped.
    let idle = client_connections(&w).await;
    let (mut listener, _rx) = bob.listen();
    connections_until(&w, T, |n| n > idle)
        .await
        .expect("the listener connects");
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &listener.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(
        listener.wait().unwrap().success(),
        "SIGTERM stops listen cleanly"
    );
    let (n, took) = connections_until(&w, WELL_BEFORE_IDLE, |n| n <= idle)
        .await
        .expect("the stopped listener's connection still open");
    eprintln!("after listen stopped: {n} client connections in {took:?}");
}
