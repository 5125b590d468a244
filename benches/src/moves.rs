//! Mailbox moves when nodes join and leave, at network sizes beyond what the roster tests
//! recompute (whitepaper `roster.md` §5.4): the shipped assignment ([`assign`]) and ring lookup
//! ([`nearest_swarm`]) driven over a deterministic sequence of joins and leaves, counting after
//! each event the nodes that changed swarm and the mailboxes whose swarm changed.
//!
//! The node keys and mailboxes come from the generator of `roster.md` §5.4 ([`node_key`]); the
//! rules for which node joins and which leaves are on [`MovesConfig`].

use std::collections::{BTreeMap, BTreeSet};

use allium_proto::assign::{assign, fold_mailbox, moved, nearest_swarm};
use allium_proto::{Mailbox, NodeId};
use serde_json::{Value, json};

/// The key generator of `roster.md` §5.4: spread-out 32-byte keys without the cost of Ed25519
/// (the assignment sees only bytes).
pub fn node_key(i: u32) -> NodeId {
    let mut k = [0u8; 32];
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5151;
    for chunk in k.chunks_mut(8) {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    NodeId::from_bytes(k)
}

/// Mailbox `j` of a measurement: `node_key(1,000,000 + j)`, as in `roster.md` §5.4.
pub fn mailbox(j: u32) -> Mailbox {
    Mailbox::from_bytes(node_key(1_000_000 + j).to_bytes())
}

/// What is measured.
///
/// * **Grow:** `node_key(0)`, …, `node_key(nodes − 1)` join one at a time.
/// * **Shrink:** `churn` leaves in a row; **regrow:** `churn` joins in a row; **interleaved:**
///   `churn` times a leave then a join. The `k`-th leave of the run (`k = 0, 1, …`) removes the
///   node at index `u32be(node_key(2,000,000 + k)[0..4]) mod n` of the `n` nodes present, kept
///   in join order (a node that joins goes to the end); the `k`-th join after growing adds
///   `node_key(nodes + k)`.
/// * **Mailboxes:** `mailbox(0)`, …, `mailbox(mailboxes − 1)`.
#[derive(Debug, Clone)]
pub struct MovesConfig {
    /// Nodes that join in the grow phase.
    pub nodes: u32,
    /// Leave-and-join pairs of the churn phase.
    pub churn: u32,
    /// Mailboxes whose swarm is followed.
    pub mailboxes: u32,
    /// Swarm size `S` of the network file.
    pub swarm_size: usize,
}

/// One join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// `true` for a join.
    pub join: bool,
    /// Swarms before and after.
    pub swarms: (usize, usize),
    /// Nodes present before and after whose swarm changed.
    pub nodes_moved: usize,
    /// Mailboxes whose swarm changed (none has a swarm while the roster is empty).
    pub mailboxes_moved: usize,
}

impl Event {
    /// Fraction of the mailboxes that moved.
    pub fn fraction(&self, mailboxes: u32) -> f64 {
        self.mailboxes_moved as f64 / f64::from(mailboxes.max(1))
    }

    /// The fraction moved as a multiple of `1/k`, `k` the larger of the swarm counts before and
    /// after (a swarm that appears or disappears is one of those `k`).
    pub fn per_share(&self, mailboxes: u32) -> f64 {
        self.fraction(mailboxes) * self.swarms.0.max(self.swarms.1) as f64
    }
}

/// The events of one measurement, by phase.
#[derive(Debug, Clone, Default)]
pub struct Phases {
    /// `nodes` joins one at a time.
    pub grow: Vec<Event>,
    /// `churn` leaves in a row.
    pub shrink: Vec<Event>,
    /// `churn` joins in a row.
    pub regrow: Vec<Event>,
    /// `churn` leave-and-join pairs.
    pub interleaved: Vec<Event>,
}

/// The swarm of each mailbox, kept up to date as swarm ids come and go: only the mailboxes
/// between a changed id's ring neighbours can change swarm (`roster.md` §5.1), so only those
/// are looked up again.
struct Holders {
    /// (folded point, mailbox index), sorted by point.
    points: Vec<(u64, usize)>,
    held: Vec<Option<u64>>,
    ids: BTreeSet<u64>,
}

impl Holders {
    fn new(mailboxes: u32) -> Self {
        let mut points: Vec<(u64, usize)> = (0..mailboxes)
            .map(|j| (fold_mailbox(&mailbox(j)), j as usize))
            .collect();
        points.sort_unstable();
        Holders {
            held: vec![None; points.len()],
            points,
            ids: BTreeSet::new(),
        }
    }

    /// Moves to the id set `ids` and returns how many mailboxes changed swarm.
    fn update(&mut self, ids: BTreeSet<u64>) -> usize {
        if ids == self.ids {
            return 0;
        }
        let union: BTreeSet<u64> = self.ids.union(&ids).copied().collect();
        let changed: Vec<u64> = self.ids.symmetric_difference(&ids).copied().collect();
        let mut ranges: Vec<(u64, u64)> = vec![];
        for d in changed {
            // Every point whose nearest id may differ lies between d's neighbours in the union.
            let before = union.range(..d).next_back().or_else(|| union.last());
            let after = union.range(d + 1..).next().or_else(|| union.first());
            match (before, after) {
                (Some(b), Some(a)) if *b != d && *a != d => {
                    if b < a {
                        ranges.push((*b, *a));
                    } else {
                        ranges.push((*b, u64::MAX));
                        ranges.push((0, *a));
                    }
                }
                // d is the only id on one side: everything may change.
                _ => ranges.push((0, u64::MAX)),
            }
        }
        let mut n = 0;
        for (lo, hi) in ranges {
            let start = self.points.partition_point(|(p, _)| *p < lo);
            let end = self.points.partition_point(|(p, _)| *p <= hi);
            for (p, j) in &self.points[start..end] {
                let now = nearest_swarm(&ids, *p);
                if now != self.held[*j] {
                    self.held[*j] = now;
                    n += 1;
                }
            }
        }
        self.ids = ids;
        n
    }
}

/// Every event of the four phases.
pub fn measure(cfg: &MovesConfig) -> Phases {
    let mut holders = Holders::new(cfg.mailboxes);
    let mut present: Vec<NodeId> = vec![];
    let mut a: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut step = |present: &[NodeId], join: bool| -> Event {
        let b = assign(&a, present, cfg.swarm_size);
        let ids: BTreeSet<u64> = b.values().copied().collect();
        let before = holders.ids.len();
        let e = Event {
            join,
            swarms: (before, ids.len()),
            nodes_moved: moved(&a, &b),
            mailboxes_moved: holders.update(ids),
        };
        a = b;
        e
    };
    let mut leaves = 0u32;
    let mut joins = 0u32;
    let mut leave = |present: &mut Vec<NodeId>| {
        let word = node_key(2_000_000 + leaves).as_bytes()[..4]
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        leaves += 1;
        present.remove(word as usize % present.len());
    };
    let mut join = |present: &mut Vec<NodeId>| {
        present.push(node_key(cfg.nodes + joins));
        joins += 1;
    };
    let mut p = Phases::default();
    for i in 0..cfg.nodes {
        present.push(node_key(i));
        p.grow.push(step(&present, true));
    }
    for _ in 0..cfg.churn {
        if present.len() > 1 {
            leave(&mut present);
            p.shrink.push(step(&present, false));
        }
    }
    for _ in 0..cfg.churn {
        join(&mut present);
        p.regrow.push(step(&present, true));
    }
    for _ in 0..cfg.churn {
        if present.len() > 1 {
            leave(&mut present);
            p.interleaved.push(step(&present, false));
        }
        join(&mut present);
        p.interleaved.push(step(&present, true));
    }
    p
}

/// Sums over a list of events of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Events.
    pub events: usize,
    /// Events that moved at least one mailbox.
    pub moving: usize,
    /// Swarms created (joins) or dissolved (leaves).
    pub swarms_changed: usize,
    /// Nodes moved, summed, and the most in one event.
    pub nodes_moved: (usize, usize),
    /// Mailboxes moved, summed.
    pub mailboxes_moved: usize,
    /// Over the events that moved mailboxes: mean and largest fraction moved.
    pub fraction: (f64, f64),
    /// Largest fraction moved as a multiple of `1/k`.
    pub max_per_share: f64,
}

/// Summarises the joins (`join = true`) or the leaves of `events`.
pub fn summarise(events: &[Event], join: bool, mailboxes: u32) -> Summary {
    let mut s = Summary::default();
    let mut sum = 0.0;
    for e in events.iter().filter(|e| e.join == join) {
        s.events += 1;
        s.swarms_changed += e.swarms.0.abs_diff(e.swarms.1);
        s.nodes_moved.0 += e.nodes_moved;
        s.nodes_moved.1 = s.nodes_moved.1.max(e.nodes_moved);
        s.mailboxes_moved += e.mailboxes_moved;
        if e.mailboxes_moved > 0 {
            s.moving += 1;
            let f = e.fraction(mailboxes);
            sum += f;
            s.fraction.1 = s.fraction.1.max(f);
            s.max_per_share = s.max_per_share.max(e.per_share(mailboxes));
        }
    }
    if s.moving > 0 {
        s.fraction.0 = sum / s.moving as f64;
    }
    s
}

impl Summary {
    /// The summary as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "events": self.events,
            "events_moving_mailboxes": self.moving,
            "swarms_created_or_dissolved": self.swarms_changed,
            "nodes_moved": self.nodes_moved.0,
            "max_nodes_moved_per_event": self.nodes_moved.1,
            "mailboxes_moved": self.mailboxes_moved,
            "mean_fraction_moved": self.fraction.0,
            "max_fraction_moved": self.fraction.1,
            "max_fraction_times_k": self.max_per_share,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The incremental update gives what a lookup of every mailbox gives.
    #[test]
    fn holders_follow_the_ring() {
        let mut h = Holders::new(2_000);
        let mut ids = BTreeSet::new();
        let mut x = 7u64;
        for step in 0..300u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            if step % 3 == 2 && !ids.is_empty() {
                let gone = *ids.iter().nth((x >> 40) as usize % ids.len()).unwrap();
                ids.remove(&gone);
            } else {
                ids.insert(x);
            }
            let before = h.held.clone();
            let n = h.update(ids.clone());
            let full: Vec<Option<u64>> = (0..2_000u32)
                .map(|j| nearest_swarm(&ids, fold_mailbox(&mailbox(j))))
                .collect();
            assert_eq!(h.held, full, "step {step}");
            assert_eq!(n, before.iter().zip(&full).filter(|(a, b)| a != b).count());
        }
    }
}
