//! A swarm member with a wrong clock (whitepaper storage §8.3, BAD_INPUTS 24 and 33): one member
//! of the recipient's swarm runs a minute ahead, and is then restarted with the right clock,
//! while one person writes to another through the real `allium` command. The member must serve
//! no mailbox while its clock is far from its peers', and the recipient's `allium inbox` must
//! show every acknowledged message: none is skipped by its cursor.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use allium_client::identity::Address;
use allium_client::onion::OnionClient;
use allium_node::devnet::Devnet;
use allium_proto::Mailbox;
use allium_proto::network::NetworkFile;
use allium_tests::people::{Person, T, World};
use allium_tests::wait_for_roster;
use serde_json::Value;

/// How far ahead the member's clock runs: twice the cursor overlap (30 s), so a node that
/// served with it would move cursors past messages the others are still filing.
const AHEAD_MS: i64 = 60_000;

/// Node `i`'s health report.
async fn health(net: &Devnet, i: usize) -> Option<Value> {
    let (_, body) = allium_node::http::get(net.nodes[i].metrics, "/health")
        .await
        .ok()?;
    serde_json::from_str(&body).ok()
}

/// Waits until node `i`'s health report satisfies `ok`.
async fn health_until(net: &Devnet, i: usize, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T * 4;
    loop {
        if let Some(h) = health(net, i).await {
            if ok(&h) {
                return h;
            }
        }
        assert!(Instant::now() < deadline, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts node `i` with its clock shifted by `offset_ms` (0: the right clock).
fn restart_with_clock(net: &mut Devnet, i: usize, offset_ms: i64) {
    assert!(net.stop_node(i).unwrap(), "clean stop");
    let config = net.nodes[i].config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    let base = text.split("\n[fault]").next().unwrap().to_owned();
    let text = if offset_ms == 0 {
        base
    } else {
        format!("{base}\n[fault]\nclock_offset_ms = {offset_ms}\n")
    };
    std::fs::write(&config, text).unwrap();
    net.start_node(i).unwrap();
}

/// Alice sends `n` numbered messages to Bob, and Bob runs `allium inbox` after each; returns
/// the texts acknowledged.
fn exchange(
    alice: &Person,
    bob: &str,
    bob_p: &Person,
    shown: &mut Vec<String>,
    tag: &str,
    n: usize,
) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..n {
        let text = format!("{tag}{i}");
        alice.send(bob, &text);
        sent.push(text);
        shown.extend(bob_p.inbox().into_iter().map(|(_, t)| t));
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_wrong_clock_serves_nothing_and_no_message_is_skipped() {
    let mut w = World::start().await;
    let (alice, bob) = (w.person("alice"), w.person("bob"));
    alice.init();
    let (bob_addr, _) = bob.init();
    let key = Address::from_str(&bob_addr).unwrap().public_key();
    let mailbox = Mailbox::from_bytes(*key.as_bytes());
    let network = NetworkFile::load(&w.net.network_file).unwrap();
    let c = OnionClient::new("127.0.0.1:0".parse().unwrap()).unwrap();
    let roster = wait_for_roster(c.pool(), &network, 1, T).await.unwrap();
    let members: Vec<usize> = roster
        .members_for(&mailbox)
        .iter()
        .map(|n| {
            w.net
                .nodes
                .iter()
                .position(|d| d.identity == n.identity)
                .unwrap()
        })
        .collect();
    assert!(members.len() >= 3, "a swarm of {}", members.len());
    // Not the authority: it publishes the roster.
    let victim = *members.iter().find(|&&i| i != 0).unwrap();

    let mut shown = Vec::new();
    let mut sent = exchange(&alice, &bob_addr, &bob, &mut shown, "before ", 3);

    // A minute ahead: its peers' `root` answers tell it so, and it stops serving.
    restart_with_clock(&mut w.net, victim, AHEAD_MS);
    let h = health_until(&w.net, victim, "the member finds its clock far", |h| {
        h["clock_far"] == true
    })
    .await;
    assert_eq!(h["syncing"], true, "{h}");
    let offset = h["clock_offset_ms"].as_i64().unwrap();
    assert!(offset > AHEAD_MS / 2, "measured {offset} ms ahead");
    sent.extend(exchange(&alice, &bob_addr, &bob, &mut shown, "ahead ", 8));

    // The right clock again. Node time never runs backwards, so the member stays far (and
    // serves nothing) until its clock has caught up with the time it had reached.
    restart_with_clock(&mut w.net, victim, 0);
    sent.extend(exchange(
        &alice,
        &bob_addr,
        &bob,
        &mut shown,
        "corrected ",
        4,
    ));
    health_until(
        &w.net,
        victim,
        "the member's clock agrees and it serves again",
        |h| h["clock_far"] == false && h["syncing"] == false,
    )
    .await;
    sent.extend(exchange(&alice, &bob_addr, &bob, &mut shown, "after ", 4));

    // Every acknowledged message reaches every member in time; Bob reads until each has been
    // shown, and a message his cursor skipped never would be.
    let deadline = Instant::now() + T * 2;
    loop {
        let seen: BTreeSet<&String> = shown.iter().collect();
        let never: Vec<&String> = sent.iter().filter(|t| !seen.contains(t)).collect();
        if never.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never shown by `allium inbox`: {never:?}",
            never.len()
        );
        shown.extend(bob.inbox().into_iter().map(|(_, t)| t));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let distinct: BTreeSet<&String> = shown.iter().collect();
    assert_eq!(distinct.len(), shown.len(), "a message shown twice");
    eprintln!(
        "a member {} s ahead, then corrected: {} messages acknowledged, all shown once, 0 never \
         shown",
        AHEAD_MS / 1000,
        sent.len()
    );
}
