//! Roster verification (issue #21): what loading a cached 2,000-node roster costs each `allium`
//! command — a full verification (every onion-key certificate) against the check of a roster
//! whose verified digest was recorded with it (roster.md §4.3). The roster is built with the
//! project's types: 2,000 nodes with two certified onion keys each, assigned to swarms of 5,
//! signed by a test authority.
//!
//! `cargo bench -p allium-bench --bench roster`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed setup ends the bench

use std::collections::BTreeMap;
use std::time::Duration;

use allium_onion::{Epoch, IdentityKeypair, OnionKeyCert, OnionSecretKey};
use allium_proto::NodeId;
use allium_proto::assign::assign;
use allium_proto::network::NetworkFile;
use allium_proto::roster::{Descriptor, NodeEntry, Roster, RosterHolder};
use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NODES: usize = 2_000;
const NOW: u64 = 1_700_000_000;

fn network(authority: &IdentityKeypair) -> NetworkFile {
    let id: String = authority
        .public()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    NetworkFile::from_toml(&format!(
        "name = \"allium-bench\"\n[[authority]]\nidentity = \"{id}\"\naddress = \"127.0.0.1:4433\"\n\
         [params]\nswarm_size = 5\nmin_ttl_secs = 10\nmax_ttl_secs = 1209600\nepoch_secs = 3600\n\
         allow_same_subnet = false\nroster_threshold = 1\n"
    ))
    .unwrap()
}

/// A signed roster of `n` nodes and the network file of its authority.
fn signed_roster(n: usize) -> (NetworkFile, Vec<u8>) {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let authority = IdentityKeypair::generate(&mut rng);
    let descriptors: Vec<Descriptor> = (0..n)
        .map(|i| {
            let id = IdentityKeypair::generate(&mut rng);
            let onion_keys = (0..2)
                .map(|e| {
                    let key = OnionSecretKey::generate(Epoch(100 + e), &mut rng);
                    OnionKeyCert::sign(&id, &key)
                })
                .collect();
            Descriptor {
                identity: id.public(),
                addresses: vec![
                    format!("10.{}.{}.1:4433", i / 250, i % 250)
                        .parse()
                        .unwrap(),
                ],
                onion_keys,
                software: "allium-node/0.1.0".into(),
                published_at: NOW,
            }
        })
        .collect();
    let keys: Vec<NodeId> = descriptors.iter().map(|d| d.identity.node_id()).collect();
    let swarms = assign(&BTreeMap::new(), &keys, 5);
    let mut nodes: Vec<NodeEntry> = descriptors
        .into_iter()
        .map(|d| {
            let swarm = swarms[&d.identity.node_id()];
            NodeEntry::from_descriptor(d, swarm)
        })
        .collect();
    nodes.sort_by(|a, b| a.identity.as_bytes().cmp(b.identity.as_bytes()));
    let roster = Roster::new("allium-bench", 1, NOW, 5, nodes).unwrap();
    let signed = roster.sign(&[&authority]).unwrap().encode();
    (network(&authority), signed)
}

fn bench(c: &mut Criterion) {
    let (network, signed) = signed_roster(NODES);
    let digest = {
        let holder = RosterHolder::new(network.clone());
        holder.offer(&signed).unwrap();
        holder.current().unwrap().verified_digest()
    };
    let mut g = c.benchmark_group(format!("roster_{NODES}_nodes_{}_bytes", signed.len()));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("load_cached_full_verification", |b| {
        b.iter(|| {
            let holder = RosterHolder::new(network.clone());
            holder.offer_cached(&signed, None).unwrap()
        });
    });
    g.bench_function("load_cached_with_verified_digest", |b| {
        b.iter(|| {
            let holder = RosterHolder::new(network.clone());
            holder.offer_cached(&signed, Some(&digest)).unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
