//! The bounds of `roster.md` §5.3 on a measurement small enough for a test; `allium-bench
//! moves` runs the same code at 2,000 nodes (§5.4).

use allium_bench::moves::{Event, MovesConfig, measure};

#[test]
fn moves_stay_within_the_bounds() {
    for size in [3usize, 5] {
        let cfg = MovesConfig {
            nodes: 100,
            churn: 20,
            mailboxes: 5_000,
            swarm_size: size,
        };
        let p = measure(&cfg);
        let swarms = |e: &[Event]| e.last().map_or(0, |e| e.swarms.1);
        assert_eq!(swarms(&p.grow), 100 / size);
        let all: Vec<&Event> = p
            .grow
            .iter()
            .chain(&p.shrink)
            .chain(&p.regrow)
            .chain(&p.interleaved)
            .collect();
        for e in &all {
            if e.join {
                // A join moves no node unless it creates a swarm, and then at most S − 1.
                assert!(e.nodes_moved < size, "{e:?}");
                assert!(e.swarms.1 >= e.swarms.0);
                if e.swarms.1 == e.swarms.0 {
                    assert_eq!(e.nodes_moved, 0, "{e:?}");
                }
            } else {
                assert!(e.nodes_moved <= size, "{e:?}");
            }
            // Mailboxes move only when a swarm appears or disappears, and then about 1/k.
            if e.swarms.0 == e.swarms.1 {
                assert_eq!(e.mailboxes_moved, 0, "{e:?}");
            } else if e.swarms.0 > 0 {
                assert!(e.per_share(cfg.mailboxes) <= 2.5, "{e:?}");
            }
        }
        // Shrinking then growing by the same number dissolves and creates swarms; pairs of a
        // leave and a join keep the count.
        assert!(p.shrink.iter().any(|e| e.swarms.1 < e.swarms.0));
        assert_eq!(swarms(&p.regrow), 100 / size);
    }
}
