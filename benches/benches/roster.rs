//! Roster verification and path choice (issue #21), at 2,000 and 10,000 nodes: a fresh roster
//! verified (roster.md §4.2) and, beside it in the same run, the check the previous rule made
//! (every onion-key certificate verified too); its phases apart (the envelope, the authority's
//! signature, the identity points, the certificates, the body, the verified digest); and the
//! choice of a path of three relays and a destination with the path index and by listing every
//! fitting node as before it. Each roster is built with the project's types: nodes with two
//! certified onion keys each, assigned to swarms of 5, signed by a test authority.
//!
//! `cargo bench -p allium-bench --bench roster`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed setup ends the bench

use std::collections::BTreeMap;
use std::time::Duration;

use std::collections::HashSet;

use allium_client::path::{PathIndex, PathRules, choose_by_scan};
use allium_onion::{Epoch, IdentityKeypair, IdentityPublicKey, OnionKeyCert, OnionSecretKey};
use allium_proto::assign::assign;
use allium_proto::network::NetworkFile;
use allium_proto::roster::verified_digest;
use allium_proto::roster::{Descriptor, NodeEntry, Roster, RosterHolder, SignedRoster};
use allium_proto::{Mailbox, NodeId};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const SIZES: [usize; 2] = [2_000, 10_000];
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

fn verification(c: &mut Criterion) {
    let mut g = c.benchmark_group("roster");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for n in SIZES {
        let (network, signed) = signed_roster(n);
        eprintln!("roster of {n} nodes: {} bytes signed", signed.len());
        let holder = RosterHolder::new(network.clone());
        holder.offer(&signed).unwrap();
        let held = holder.current().unwrap();
        let digest = held.verified_digest();
        let roster = held.roster();
        let envelope = SignedRoster::decode(&signed).unwrap();
        let body = roster.encode();
        let identities: Vec<[u8; 32]> = roster
            .nodes()
            .iter()
            .map(|e| e.identity.to_bytes())
            .collect();
        let certs: Vec<[u8; OnionKeyCert::LEN]> = roster
            .nodes()
            .iter()
            .flat_map(|e| e.onion_keys.iter().map(OnionKeyCert::to_bytes))
            .collect();

        g.bench_function(BenchmarkId::new("fresh_verification", n), |b| {
            b.iter(|| RosterHolder::new(network.clone()).offer(&signed).unwrap());
        });
        // What `offer` did before roster.md §4.2 left the certificates to the authorities'
        // signatures: the same steps with every certificate verified (the body decoded as an
        // authority checks it), and the verified digest recorded.
        g.bench_function(
            BenchmarkId::new("previous_rule_with_certificates", n),
            |b| {
                b.iter(|| {
                    let s = SignedRoster::decode(&signed).unwrap();
                    s.verify_signatures(&network).unwrap();
                    let r = Roster::decode(&body).unwrap();
                    assert_eq!(r.network(), network.name());
                    (r, verified_digest(&network, &signed))
                });
            },
        );
        g.bench_function(BenchmarkId::new("cached_with_verified_digest", n), |b| {
            b.iter(|| {
                RosterHolder::new(network.clone())
                    .offer_cached(&signed, Some(&digest))
                    .unwrap()
            });
        });
        g.bench_function(BenchmarkId::new("phase_envelope_decode", n), |b| {
            b.iter(|| SignedRoster::decode(&signed).unwrap());
        });
        g.bench_function(BenchmarkId::new("phase_authority_signature", n), |b| {
            b.iter(|| envelope.verify_signatures(&network).unwrap());
        });
        g.bench_function(
            BenchmarkId::new("phase_body_decode_with_certificates", n),
            |b| {
                b.iter(|| Roster::decode(&body).unwrap());
            },
        );
        g.bench_function(BenchmarkId::new("phase_identity_points", n), |b| {
            b.iter(|| {
                for i in &identities {
                    IdentityPublicKey::from_bytes(i).unwrap();
                }
            });
        });
        g.bench_function(BenchmarkId::new("phase_certificate_signatures", n), |b| {
            b.iter(|| {
                for c in &certs {
                    OnionKeyCert::from_bytes(c).unwrap();
                }
            });
        });
        g.bench_function(BenchmarkId::new("phase_verified_digest", n), |b| {
            b.iter(|| verified_digest(&network, &signed));
        });
    }
    g.finish();
}

fn path_choice(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for n in SIZES {
        let (network, signed) = signed_roster(n);
        let holder = RosterHolder::new(network);
        holder.offer(&signed).unwrap();
        let held = holder.current().unwrap();
        let roster = held.roster();
        let mailbox = Mailbox::from_bytes([7; 32]);
        let destination = roster.members_for(&mailbox)[0];
        let guards: Vec<NodeId> = roster.nodes()[..3]
            .iter()
            .map(|e| e.identity.node_id())
            .collect();
        let avoid = HashSet::new();
        let rules = PathRules {
            guards: &guards,
            avoid: &avoid,
            same_subnet_ok: false,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let index = PathIndex::new(held.clone());
        g.bench_function(BenchmarkId::new("indexed", n), |b| {
            b.iter(|| index.choose(destination, &rules, &mut rng).unwrap());
        });
        g.bench_function(BenchmarkId::new("previous_by_scan", n), |b| {
            b.iter(|| choose_by_scan(roster, destination, &rules, &mut rng).unwrap());
        });
        g.bench_function(BenchmarkId::new("build_index", n), |b| {
            b.iter(|| PathIndex::new(held.clone()));
        });
        // With every guard avoided, the guard too is drawn from the whole roster.
        let avoided: HashSet<NodeId> = guards.iter().copied().collect();
        let no_guard = PathRules {
            avoid: &avoided,
            ..rules
        };
        g.bench_function(BenchmarkId::new("indexed_guards_down", n), |b| {
            b.iter(|| index.choose(destination, &no_guard, &mut rng).unwrap());
        });
        g.bench_function(BenchmarkId::new("previous_by_scan_guards_down", n), |b| {
            b.iter(|| choose_by_scan(roster, destination, &no_guard, &mut rng).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, verification, path_choice);
criterion_main!(benches);
