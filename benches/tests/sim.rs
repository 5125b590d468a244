//! A small instance of `allium-bench sim` (whitepaper `performance.md` §11): 100 nodes, 500
//! clients, five simulated minutes with churn, checked against what the model promises.

use allium_bench::sim::{SimConfig, SimReport, run};

fn small(seed: u64, joins: u32, leaves: u32) -> SimConfig {
    let mut cfg = SimConfig::standard(seed);
    cfg.nodes = 100;
    cfg.clients = 500;
    cfg.minutes = 5;
    cfg.quiet_minutes = 1;
    cfg.joins_per_minute = joins;
    cfg.leaves_per_minute = leaves;
    // Enough messages for every client to send a few.
    cfg.send_mean = 60_000_000;
    cfg
}

/// Every acknowledged message is delivered unless every node that held it left; none is
/// delivered twice; every acknowledgement had its majority.
fn check(r: &SimReport) {
    assert!(r.sent > 1_000, "{}", r.sent);
    assert_eq!(r.delivered_twice, 0);
    assert_eq!(r.acked_below_quorum, 0);
    assert_eq!(r.undelivered_held_in_swarm, 0, "{:#}", r.to_json());
    assert_eq!(r.undelivered_held_elsewhere, 0, "{:#}", r.to_json());
    assert_eq!(r.acked_delivered + r.lost_all_holders_left, r.acked);
    assert!(r.latencies.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn growing_network_moves_mailboxes_and_delivers() {
    let r = run(&small(1, 10, 2));
    check(&r);
    // Swarms were created, so mailboxes changed swarm under senders and recipients.
    assert!(r.counters.handoffs > 0, "{:#}", r.to_json());
    assert!(r.counters.wrong_swarm > 0, "{:#}", r.to_json());
    assert!(r.swarms_end > 20);
}

#[test]
fn shrinking_network_dissolves_swarms_and_delivers() {
    let r = run(&small(2, 1, 10));
    check(&r);
    assert!(r.counters.handoffs > 0, "{:#}", r.to_json());
    assert!(r.swarms_end < 20);
}

#[test]
fn same_seed_same_run() {
    let cfg = small(3, 5, 5);
    assert_eq!(run(&cfg).to_json(), run(&cfg).to_json());
}
