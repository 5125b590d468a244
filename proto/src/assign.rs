//! Swarm assignment on the u64 ring (whitepaper `roster.md` §5).
//!
//! Swarm ids are points on the ring of u64 values. A mailbox key folds to a point
//! ([`fold_mailbox`]); the swarm whose id is nearest on the ring holds it ([`nearest_swarm`]).
//! [`assign`] places nodes into swarms so that as few nodes as possible change swarm when nodes
//! come and go. Everything here is pure and deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::storage::{Mailbox, NodeId};

/// Folds a mailbox key to a point on the ring: the XOR of its four 8-byte big-endian words.
pub fn fold_mailbox(mailbox: &Mailbox) -> u64 {
    mailbox.as_bytes().chunks_exact(8).fold(0u64, |acc, w| {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        acc ^ u64::from_be_bytes(word)
    })
}

/// Distance between two points on the ring (the shorter way round).
pub fn ring_distance(a: u64, b: u64) -> u64 {
    a.wrapping_sub(b).min(b.wrapping_sub(a))
}

/// The id in `ids` nearest to `point` on the ring; on a tie, the numerically smaller id.
/// `None` when `ids` is empty.
pub fn nearest_swarm(ids: &BTreeSet<u64>, point: u64) -> Option<u64> {
    // Only the nearest id at or after `point` and the nearest before it (both wrapping) can win.
    let after = ids.range(point..).next().or_else(|| ids.first())?;
    let before = ids.range(..point).next_back().or_else(|| ids.last())?;
    Some(closer(point, *after, *before))
}

/// [`nearest_swarm`] over the keys of a map by swarm id, without collecting them.
pub fn nearest_swarm_key<V>(swarms: &BTreeMap<u64, V>, point: u64) -> Option<u64> {
    let after = swarms
        .range(point..)
        .next()
        .or_else(|| swarms.first_key_value())?;
    let before = swarms
        .range(..point)
        .next_back()
        .or_else(|| swarms.last_key_value())?;
    Some(closer(point, *after.0, *before.0))
}

/// The nearer of two ids to `point`; on a tie, the numerically smaller.
fn closer(point: u64, after: u64, before: u64) -> u64 {
    let (da, db) = (ring_distance(after, point), ring_distance(before, point));
    if da < db || (da == db && after < before) {
        after
    } else {
        before
    }
}

/// The smallest number of members a swarm keeps when it is not the only one:
/// `ceil(swarm_size / 2)`.
pub fn min_members(swarm_size: usize) -> usize {
    swarm_size.max(1).div_ceil(2)
}

/// Assigns each of `nodes` to a swarm, starting from the `previous` assignment.
///
/// The rules, in order (whitepaper `roster.md` §5.2):
/// 1. nodes in `previous` that are still in `nodes` keep their swarm;
/// 2. swarms below `swarm_size` are filled from the unassigned nodes, fewest members first;
/// 3. while some node is unassigned and the unassigned nodes plus the spare nodes (members
///    beyond `swarm_size`, over all swarms) number at least `swarm_size`, a new swarm of
///    `swarm_size` nodes is created: unassigned nodes first, then spare nodes taken one at a time
///    from the largest swarm. Its id is the midpoint of the largest gap between ids on the ring
///    (the first swarm has id 0). If no swarm exists at all, the unassigned nodes form one;
/// 4. the remaining unassigned nodes join the smallest swarms one by one;
/// 5. a swarm with fewer than [`min_members`] takes nodes from the largest swarms while they have
///    more than `swarm_size`, up to `swarm_size`; if the spare nodes cannot bring it to
///    [`min_members`] and it is not the only swarm, it dissolves and its members join the
///    smallest remaining swarms.
///
/// Unassigned nodes are taken in ascending key order, a swarm gives up its smallest key first,
/// and every tie between swarms is broken by the smaller swarm id.
///
/// So a join moves no existing node unless it creates a swarm, and then at most
/// `swarm_size - 1`; a leave moves at most `swarm_size` nodes (whitepaper `roster.md` §5.3).
/// A `swarm_size` of 0 is treated as 1. Duplicates in `nodes`
/// count once.
pub fn assign(
    previous: &BTreeMap<NodeId, u64>,
    nodes: &[NodeId],
    swarm_size: usize,
) -> BTreeMap<NodeId, u64> {
    let size = swarm_size.max(1);
    let alive: BTreeSet<NodeId> = nodes.iter().copied().collect();

    // Rule 1.
    let mut swarms: BTreeMap<u64, BTreeSet<NodeId>> = BTreeMap::new();
    for (node, id) in previous {
        if alive.contains(node) {
            swarms.entry(*id).or_default().insert(*node);
        }
    }
    let mut unassigned: Vec<NodeId> = alive
        .iter()
        .filter(|n| !previous.contains_key(*n))
        .copied()
        .collect();
    // Taken from the front in ascending key order.
    unassigned.reverse();

    // Rule 2.
    while !unassigned.is_empty() {
        let Some(id) = smallest(&swarms).filter(|id| len(&swarms, *id) < size) else {
            break;
        };
        if let Some(node) = unassigned.pop() {
            swarms.entry(id).or_default().insert(node);
        }
    }

    // Rule 3: new swarms, made of unassigned nodes first, then of spare nodes (members beyond
    // `size`) taken from the largest swarms. Only a join makes a swarm.
    while !unassigned.is_empty()
        && (unassigned.len() + spare(&swarms, size) >= size || swarms.is_empty())
    {
        let Some(id) = new_swarm_id(&swarms) else {
            break;
        };
        let take = size.min(unassigned.len());
        let mut members: BTreeSet<NodeId> = unassigned
            .split_off(unassigned.len() - take)
            .into_iter()
            .collect();
        while members.len() < size {
            let Some(donor) = largest(&swarms).filter(|d| len(&swarms, *d) > size) else {
                break;
            };
            if let Some(node) = swarms.get_mut(&donor).and_then(|m| m.pop_first()) {
                members.insert(node);
            }
        }
        swarms.insert(id, members);
    }

    // Rule 4.
    while let Some(node) = unassigned.pop() {
        if let Some(id) = smallest(&swarms) {
            swarms.entry(id).or_default().insert(node);
        }
    }

    // Rule 5, smallest swarm first, until no swarm is undersized (or one swarm is left).
    let min = min_members(size);
    loop {
        if swarms.len() <= 1 {
            break;
        }
        let Some(id) = smallest(&swarms).filter(|id| len(&swarms, *id) < min) else {
            break;
        };
        let have = len(&swarms, id);
        if have + spare(&swarms, size) >= min {
            // Steal one node at a time from the largest swarm while it has a spare node.
            while len(&swarms, id) < size {
                let Some(donor) = largest(&swarms).filter(|d| len(&swarms, *d) > size) else {
                    break;
                };
                let node = swarms.get_mut(&donor).and_then(|m| m.pop_first());
                if let Some(node) = node {
                    swarms.entry(id).or_default().insert(node);
                }
            }
        } else {
            let members = swarms.remove(&id).unwrap_or_default();
            for node in members {
                if let Some(to) = smallest(&swarms) {
                    swarms.entry(to).or_default().insert(node);
                }
            }
        }
    }

    swarms
        .into_iter()
        .flat_map(|(id, members)| members.into_iter().map(move |n| (n, id)))
        .collect()
}

/// Members beyond `size`, summed over all swarms.
fn spare(swarms: &BTreeMap<u64, BTreeSet<NodeId>>, size: usize) -> usize {
    swarms.values().map(|m| m.len().saturating_sub(size)).sum()
}

fn len(swarms: &BTreeMap<u64, BTreeSet<NodeId>>, id: u64) -> usize {
    swarms.get(&id).map_or(0, BTreeSet::len)
}

/// The swarm with the fewest members (tie: smaller id).
fn smallest(swarms: &BTreeMap<u64, BTreeSet<NodeId>>) -> Option<u64> {
    swarms
        .iter()
        .min_by_key(|(id, m)| (m.len(), **id))
        .map(|(id, _)| *id)
}

/// The swarm with the most members (tie: smaller id).
fn largest(swarms: &BTreeMap<u64, BTreeSet<NodeId>>) -> Option<u64> {
    swarms
        .iter()
        .min_by_key(|(id, m)| (std::cmp::Reverse(m.len()), **id))
        .map(|(id, _)| *id)
}

/// The id of a new swarm: 0 for the first; otherwise the midpoint of the largest gap between
/// consecutive ids on the ring (tie: the gap that starts at the smaller id). `None` if no gap
/// has room.
fn new_swarm_id(swarms: &BTreeMap<u64, BTreeSet<NodeId>>) -> Option<u64> {
    let ids: Vec<u64> = swarms.keys().copied().collect();
    let (first, last) = match (ids.first(), ids.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => return Some(0),
    };
    // (start, length) of each gap, the wrapping one last.
    let mut best: Option<(u64, u128)> = None;
    let wrap = (last, (1u128 << 64) - u128::from(last) + u128::from(first));
    for (start, gap) in ids
        .windows(2)
        .map(|w| (w[0], u128::from(w[1] - w[0])))
        .chain([wrap])
    {
        let better = match best {
            None => true,
            Some((s, g)) => gap > g || (gap == g && start < s),
        };
        if better {
            best = Some((start, gap));
        }
    }
    let (start, gap) = best?;
    if gap < 2 {
        return None;
    }
    // `gap / 2 < 2^63`, so it fits a u64.
    Some(start.wrapping_add((gap / 2) as u64))
}

/// Number of nodes present in both assignments whose swarm differs.
pub fn moved(before: &BTreeMap<NodeId, u64>, after: &BTreeMap<NodeId, u64>) -> usize {
    before
        .iter()
        .filter(|(n, id)| after.get(*n).is_some_and(|a| a != *id))
        .count()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gaps_split_evenly() {
        let mut swarms: BTreeMap<u64, BTreeSet<NodeId>> = BTreeMap::new();
        let mut ids = vec![];
        for _ in 0..4 {
            let id = new_swarm_id(&swarms).unwrap();
            ids.push(id);
            swarms.insert(id, BTreeSet::new());
        }
        assert_eq!(ids, vec![0, 1 << 63, 1 << 62, 3 << 62]);
    }

    #[test]
    fn fold_xors_words() {
        let mut m = [0u8; 32];
        m[7] = 1;
        m[15] = 2;
        m[31] = 4;
        m[0] = 0x80;
        assert_eq!(fold_mailbox(&Mailbox::from_bytes(m)), 0x8000_0000_0000_0007);
    }
}
