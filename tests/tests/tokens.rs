//! Issue 13 item 6, rerun against real node processes: strangers filling a person's inbox
//! (storage.md §4.5). Before delivery tokens every mailbox was like one that registered none:
//! anonymous stores fill its 16 MiB quota and then every store to it is refused, a contact's too.
//! With a registered token, strangers are held to the requests share, a contact holding the token
//! still gets through, and the person sees usage and clears.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // test code: failing loudly is the point; the figures are printed

use std::sync::Arc;
use std::time::Instant;

use allium_client::net::{Net, NetError, Timing};
use allium_proto::Status;
use allium_proto::network::NetworkFile;
use allium_proto::storage::{INBOX, MAX_DATA_BYTES, Mailbox, REQUESTS};
use allium_tests::people::World;
use rand_core::{OsRng, RngCore};

const TTL_MS: u64 = 3_600_000;

/// Anonymous stores of `size` random bytes into `namespace` of `mailbox`, `workers` at a time,
/// until the swarm refuses one; returns (stores acknowledged, the refusal, seconds taken).
async fn flood(
    net: &Arc<Net>,
    mailbox: Mailbox,
    namespace: u16,
    size: usize,
    workers: usize,
) -> (u64, Status, f64) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let net = Arc::clone(net);
        tasks.spawn(async move {
            let mut stored = 0u64;
            loop {
                let mut data = vec![0u8; size];
                OsRng.fill_bytes(&mut data);
                match net.store_in(&mailbox, namespace, TTL_MS, data, None).await {
                    Ok(_) => stored += 1,
                    Err(NetError::Refused(s)) => return (stored, s),
                    Err(e) => panic!("stranger's store failed without a refusal: {e}"),
                }
            }
        });
    }
    let (mut stored, mut refusal) = (0, Status::Ok);
    while let Some(r) = tasks.join_next().await {
        let (n, s) = r.unwrap();
        stored += n;
        refusal = s;
    }
    (stored, refusal, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_fill_an_inbox_that_contacts_reach_with_a_token() {
    let w = World::start().await;
    let network = NetworkFile::load(&w.net.network_file).unwrap();
    let stranger = Arc::new(Net::new(network, None, None, &[], 0, Timing::default()).unwrap());

    // Before: a mailbox that registered no token (every mailbox, before this change). The
    // stranger fills it, and the swarm then refuses every store, a contact's included.
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let open = Mailbox::from_bytes(
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes(),
    );
    let (filled, refusal, secs) = flood(&stranger, open, INBOX, MAX_DATA_BYTES, 4).await;
    assert_eq!(refusal, Status::QuotaExceeded);
    // The last 30 KiB or so, in small stores, so that nothing fits any more.
    let (topped, refusal, more_secs) = flood(&stranger, open, INBOX, 512, 2).await;
    assert_eq!(refusal, Status::QuotaExceeded);
    println!(
        "before: {filled} anonymous stores of 60 KiB and {topped} of 512 bytes filled an open \
         inbox in {:.1} s",
        secs + more_secs
    );
    assert!(filled >= 250, "16 MiB takes about 270 stores, got {filled}");
    let contact = stranger
        .store_in(&open, INBOX, TTL_MS, b"hello from a friend".to_vec(), None)
        .await;
    assert!(matches!(
        contact,
        Err(NetError::Refused(Status::QuotaExceeded))
    ));

    // After: Alice's client registered a token at `init`; Alice and Bob have written to each
    // other, so each holds the other's token.
    let (alice, bob, carol) = (w.person("alice"), w.person("bob"), w.person("carol"));
    let (alice_addr, _) = alice.init();
    let (bob_addr, _) = bob.init();
    carol.init();
    alice.ok(&["contacts", "add", "bob", &bob_addr]);
    bob.ok(&["contacts", "add", "alice", &alice_addr]);
    alice.send("bob", "hi bob");
    assert_eq!(bob.inbox().len(), 1);
    bob.send("alice", "hi alice");
    assert_eq!(alice.inbox().len(), 1);

    let alice_mb = Mailbox::from_bytes(
        alice_addr
            .parse::<allium_client::identity::Address>()
            .unwrap()
            .public_key()
            .to_bytes(),
    );
    // The inbox itself is closed to tokenless stores...
    let refused = stranger
        .store_in(&alice_mb, INBOX, TTL_MS, vec![7; 1024], None)
        .await;
    assert!(
        matches!(refused, Err(NetError::Refused(Status::TokenRefused))),
        "{refused:?}"
    );
    // ...and the same flood stops at the requests share.
    let (capped, refusal, secs) = flood(&stranger, alice_mb, REQUESTS, MAX_DATA_BYTES, 4).await;
    assert_eq!(refusal, Status::QuotaExceeded);
    println!(
        "after: the stranger was refused after {capped} stores ({secs:.1} s) into the requests share"
    );
    // 1 MiB of 60 KiB stores is 16 of them (the 64-message cap binds for small ones).
    assert!(capped <= 17, "{capped} stores");

    // Bob, holding Alice's token, still gets through; Carol, a new contact without one, is
    // refused while the share is full.
    bob.send("alice", "still there?");
    let out = carol.run(&["send", &alice_addr, "hello, I am new"]);
    assert_eq!(out.code, 8, "{}", out.stderr);

    // Alice sees what fills her mailbox, clears the requests and reads Bob's message.
    let usage = &alice.ok(&["usage"])[0];
    assert_eq!(usage["requests"]["messages"].as_u64(), Some(capped));
    assert_eq!(usage["requests"]["max_bytes"].as_u64(), Some(1 << 20));
    assert!(usage["inbox"]["messages"].as_u64().unwrap() >= 1);
    let cleared = &alice.ok(&["clear"])[0];
    assert_eq!(cleared["deleted"].as_u64(), Some(capped));
    let got = alice.inbox();
    assert!(
        got.iter().any(|(_, t)| t == "still there?"),
        "Bob's message arrives: {got:?}"
    );
    // Once cleared, a new contact gets through the requests share: the refused send stayed in
    // Carol's outbox (her token, then the text) and goes out before the next one. Alice deletes
    // the two texts by the content hashes `inbox --json` shows, then clears the rest.
    carol.send(&alice_addr, "second try");
    let lines = alice.ok(&["inbox"]);
    let hashes: Vec<&str> = ["hello, I am new", "second try"]
        .iter()
        .map(|t| {
            let line = lines
                .iter()
                .find(|l| l["text"] == *t)
                .unwrap_or_else(|| panic!("{t} not in {lines:?}"));
            line["stored_hash"].as_str().unwrap()
        })
        .collect();
    let usage = &alice.ok(&["usage"])[0];
    assert_eq!(usage["requests"]["messages"].as_u64(), Some(3));
    let deleted = &alice.ok(&["delete", hashes[0], hashes[1]])[0];
    assert_eq!(deleted["deleted"].as_u64(), Some(2));
    let usage = &alice.ok(&["usage"])[0];
    assert_eq!(
        usage["requests"]["messages"].as_u64(),
        Some(1),
        "Carol's token item"
    );
    assert_eq!(alice.ok(&["clear"])[0]["deleted"].as_u64(), Some(1));
    assert!(
        alice.ok(&["clear", "--inbox"])[0]["deleted"]
            .as_u64()
            .unwrap()
            >= 1
    );
}
