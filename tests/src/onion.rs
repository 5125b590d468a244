//! Onion paths built by hand, for tests that send their own requests through real nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use allium_client::onion::{Hop, OnionClient, epoch_at, resolve};
use allium_proto::network::NetworkFile;
use allium_proto::roster::{NodeEntry, Roster};
use allium_proto::{Mailbox, NodeId};

/// This machine's time, Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An onion client on a loopback port of its own.
pub fn client() -> OnionClient {
    OnionClient::new("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Three relays outside the mailbox's swarm (and not in `skip`), then a member of it as the
/// destination.
pub fn path_for<'r>(roster: &'r Roster, mailbox: &Mailbox, skip: &[NodeId]) -> Vec<&'r NodeEntry> {
    let members = roster.members_for(mailbox);
    let destination = members
        .iter()
        .find(|m| !skip.contains(&m.identity.node_id()))
        .copied()
        .expect("a live member of the swarm");
    let mut path: Vec<&NodeEntry> = roster
        .nodes()
        .iter()
        .filter(|n| n.identity != destination.identity && !skip.contains(&n.identity.node_id()))
        .take(3)
        .collect();
    assert_eq!(path.len(), 3, "not enough relays");
    path.push(destination);
    path
}

/// The hops of `path` with the onion keys of the current epoch.
pub fn hops(network: &NetworkFile, path: &[&NodeEntry]) -> Vec<Hop> {
    resolve(path, epoch_at(network.params.epoch_secs, now_ms() / 1000)).unwrap()
}
