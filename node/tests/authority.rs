//! The authority's registration: valid descriptors are kept, bad ones refused, memory capped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use allium_link::{Link, LinkLimits, Pool};
use allium_node::authority::{Authority, AuthorityConfig, MAX_REGISTERED};
use allium_node::directory::{RosterState, SelfDescription, descriptor};
use allium_node::metrics::Metrics;
use allium_onion::{Epoch, IdentityKeypair, OnionKeyCert, OnionSecretKey};
use allium_proto::network::{Authority as NetAuthority, NetworkFile, NetworkParams};
use allium_proto::roster::DirectoryResponse;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A registration's source: one address per `i`, so the per-address rate does not apply.
fn from(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn authority(rng: &mut ChaCha20Rng) -> Authority {
    let me = IdentityKeypair::generate(rng);
    let network = NetworkFile::new(
        "test-net",
        vec![NetAuthority {
            identity: me.public(),
            address: "127.0.0.1:4433".parse().unwrap(),
        }],
        NetworkParams {
            swarm_size: 3,
            min_ttl_secs: 10,
            max_ttl_secs: 1_209_600,
            epoch_secs: 3600,
            allow_same_subnet: true,
            roster_threshold: 1,
        },
    )
    .unwrap();
    let link = Link::bind_client("127.0.0.1:0".parse().unwrap(), LinkLimits::default()).unwrap();
    Authority::new(
        me,
        Arc::new(RosterState::new(network, None, Metrics::new())),
        Arc::new(Pool::new(Arc::new(link), Duration::from_secs(1))),
        AuthorityConfig {
            publish_interval: Duration::from_secs(1),
            descriptor_ttl: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(1),
            new_per_address_burst: 32,
        },
    )
}

fn signed_descriptor(rng: &mut ChaCha20Rng) -> Vec<u8> {
    let node = IdentityKeypair::generate(rng);
    let epoch = Epoch(allium_node::onion_service::unix_now() as u32 / 3600);
    let onion = OnionSecretKey::generate(epoch, rng);
    let me = SelfDescription {
        addresses: vec!["127.0.0.1:5000".parse().unwrap()],
        software: "test".into(),
    };
    descriptor(&node, &me, vec![OnionKeyCert::sign(&node, &onion)]).unwrap()
}

#[tokio::test]
async fn valid_descriptors_are_kept_and_bad_ones_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let a = authority(&mut rng);
    let good = signed_descriptor(&mut rng);
    assert!(matches!(
        a.register(&good, from(0)),
        DirectoryResponse::Registered { .. }
    ));
    assert_eq!(a.registered(), 1);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        a.register(&bad, from(0)),
        DirectoryResponse::Refused(_)
    ));
    assert!(matches!(
        a.register(b"garbage", from(0)),
        DirectoryResponse::Refused(_)
    ));
    assert_eq!(a.registered(), 1);
}

#[tokio::test]
async fn the_registry_is_capped_and_known_nodes_may_still_re_register() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let a = authority(&mut rng);
    let first = signed_descriptor(&mut rng);
    assert!(matches!(
        a.register(&first, from(0)),
        DirectoryResponse::Registered { .. }
    ));
    for i in 1..MAX_REGISTERED as u32 {
        assert!(matches!(
            a.register(&signed_descriptor(&mut rng), from(i)),
            DirectoryResponse::Registered { .. }
        ));
    }
    assert_eq!(a.registered(), MAX_REGISTERED);
    match a.register(&signed_descriptor(&mut rng), from(u32::MAX >> 8)) {
        DirectoryResponse::Refused(why) => assert!(why.contains("full"), "{why}"),
        other => panic!("a registration past the cap was accepted: {other:?}"),
    }
    assert_eq!(a.registered(), MAX_REGISTERED);
    assert!(matches!(
        a.register(&first, from(0)),
        DirectoryResponse::Registered { .. }
    ));
}

#[tokio::test]
async fn new_nodes_are_rate_limited_per_source_address_and_known_ones_are_not() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let a = authority(&mut rng);
    let one = from(1);
    let first = signed_descriptor(&mut rng);
    assert!(matches!(
        a.register(&first, one),
        DirectoryResponse::Registered { .. }
    ));
    let mut refused = 0;
    for _ in 0..100 {
        if let DirectoryResponse::Refused(why) = a.register(&signed_descriptor(&mut rng), one) {
            assert!(why.contains("too many"), "{why}");
            refused += 1;
        }
    }
    // A burst of 32 new nodes at once, then about one per second.
    assert!((67..=69).contains(&refused), "{refused} refused");
    // A node already registered re-registers whatever its address's rate, and another address
    // is not affected.
    assert!(matches!(
        a.register(&first, one),
        DirectoryResponse::Registered { .. }
    ));
    assert!(matches!(
        a.register(&signed_descriptor(&mut rng), from(2)),
        DirectoryResponse::Registered { .. }
    ));
}
