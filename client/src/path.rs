//! Choosing a path: a guard, a middle relay, an exit relay, then the destination (whitepaper
//! client.md §6). Pure: the caller gives the roster, its guards, the relays to avoid and the
//! randomness, so the rules are testable and measurable without a network.
//!
//! A roster is indexed once when it is taken ([`PathIndex`]): the nodes a path may use and each
//! one's subnet. A relay is then drawn at random from that list and redrawn while it does not
//! fit, which picks uniformly among the nodes that fit — the same distribution as listing them
//! all and drawing one, which is what happens when a few draws all miss (a small or
//! mostly-excluded roster), so the answer never depends on luck.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use allium_proto::NodeId;
use allium_proto::roster::{HeldRoster, NodeEntry, Roster};
use rand_core::RngCore;

/// Draws of a relay before listing every node that fits: with at most three nodes chosen
/// already and subnets spread, nearly every draw fits, and 32 misses in a row mean most nodes
/// do not.
const DRAWS: usize = 32;

/// What a path must respect besides the roster.
#[derive(Debug, Clone, Copy)]
pub struct PathRules<'a> {
    /// The client's guards, in order of preference.
    pub guards: &'a [NodeId],
    /// Relays that failed recently: not used.
    pub avoid: &'a HashSet<NodeId>,
    /// Whether two nodes of one subnet may share a path (the network file's
    /// `allow_same_subnet`).
    pub same_subnet_ok: bool,
}

/// Not enough nodes fit: the roster's node count, for the error the caller reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TooFewNodes(pub usize);

/// The network prefix two path nodes must not share unless the network allows it: /16 for
/// IPv4, /32 for IPv6 (never equal to each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subnet {
    V4([u8; 2]),
    V6([u8; 4]),
}

impl Subnet {
    /// The subnet of a node's first address (the one paths use), if it has one.
    fn of(node: &NodeEntry) -> Option<Subnet> {
        node.addresses.first().map(|a| match a.ip() {
            IpAddr::V4(ip) => {
                let o = ip.octets();
                Subnet::V4([o[0], o[1]])
            }
            IpAddr::V6(ip) => {
                let o = ip.octets();
                Subnet::V6([o[0], o[1], o[2], o[3]])
            }
        })
    }
}

fn random_index(rng: &mut impl RngCore, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// A held roster indexed for choosing paths: built once per roster taken, then shared by every
/// path drawn from it.
#[derive(Debug)]
pub struct PathIndex {
    held: Arc<HeldRoster>,
    /// Per node, in roster order: the subnet of its first address.
    subnets: Vec<Option<Subnet>>,
    /// The nodes with an address, the only ones a path can use: the draw pool.
    usable: Vec<usize>,
}

/// A node considered for a path, with its subnet.
#[derive(Clone, Copy)]
struct Candidate<'r> {
    node: &'r NodeEntry,
    subnet: Option<Subnet>,
}

impl PathIndex {
    /// Indexes `held`.
    pub fn new(held: Arc<HeldRoster>) -> Self {
        let nodes = held.roster().nodes();
        let subnets: Vec<Option<Subnet>> = nodes.iter().map(Subnet::of).collect();
        let usable = (0..nodes.len())
            .filter(|i| subnets.get(*i).is_some_and(Option::is_some))
            .collect();
        PathIndex {
            held,
            subnets,
            usable,
        }
    }

    /// The held roster this index was built from.
    pub fn held(&self) -> &Arc<HeldRoster> {
        &self.held
    }

    /// The roster.
    pub fn roster(&self) -> &Roster {
        self.held.roster()
    }

    /// Three relays, then `destination` (a node of this roster): the first of `rules.guards`
    /// that fits, else any fitting node; then two nodes drawn uniformly among those that fit.
    /// A node fits when it has an address, is not the destination, is not avoided, is not
    /// already chosen and, unless the network allows it, shares no subnet with a chosen node
    /// or the destination.
    pub fn choose<'r>(
        &'r self,
        destination: &'r NodeEntry,
        rules: &PathRules<'_>,
        rng: &mut impl RngCore,
    ) -> Result<[&'r NodeEntry; 4], TooFewNodes> {
        let roster = self.roster();
        let too_few = TooFewNodes(roster.nodes().len());
        let dest = Candidate {
            node: destination,
            subnet: Subnet::of(destination),
        };
        let fits = |n: Candidate<'_>, chosen: &[Candidate<'_>]| {
            n.subnet.is_some()
                && n.node.identity != destination.identity
                && !rules.avoid.contains(&n.node.identity.node_id())
                && chosen.iter().all(|c| c.node.identity != n.node.identity)
                && (rules.same_subnet_ok
                    || chosen.iter().chain(std::iter::once(&dest)).all(|c| {
                        match (c.subnet, n.subnet) {
                            (Some(a), Some(b)) => a != b,
                            _ => true,
                        }
                    }))
        };
        let mut chosen: Vec<Candidate<'r>> = Vec::with_capacity(3);
        let guard = rules
            .guards
            .iter()
            .filter_map(|g| roster.node(g))
            .map(|node| Candidate {
                node,
                subnet: Subnet::of(node),
            })
            .find(|g| fits(*g, &chosen));
        // With every guard down or excluded, any fitting node serves as guard for now.
        let guard = match guard {
            Some(g) => g,
            None => self.draw(rng, |c| fits(c, &chosen)).ok_or(too_few)?,
        };
        chosen.push(guard);
        for _ in 0..2 {
            let n = self.draw(rng, |c| fits(c, &chosen)).ok_or(too_few)?;
            chosen.push(n);
        }
        Ok([chosen[0].node, chosen[1].node, chosen[2].node, destination])
    }

    fn candidate(&self, i: usize) -> Option<Candidate<'_>> {
        Some(Candidate {
            node: self.roster().nodes().get(i)?,
            subnet: *self.subnets.get(i)?,
        })
    }

    /// A node drawn uniformly among the usable ones that fit, or `None` if none does.
    fn draw(
        &self,
        rng: &mut impl RngCore,
        fits: impl Fn(Candidate<'_>) -> bool,
    ) -> Option<Candidate<'_>> {
        if self.usable.is_empty() {
            return None;
        }
        for _ in 0..DRAWS {
            let i = self.usable[random_index(rng, self.usable.len())];
            if let Some(c) = self.candidate(i).filter(|c| fits(*c)) {
                return Some(c);
            }
        }
        let pool: Vec<Candidate<'_>> = self
            .usable
            .iter()
            .filter_map(|i| self.candidate(*i))
            .filter(|c| fits(*c))
            .collect();
        pool.get(random_index(rng, pool.len())).copied()
    }
}

/// The subnet rule as the client first wrote it, on addresses.
#[cfg(any(test, feature = "bench"))]
fn subnet_bytes(addr: &std::net::SocketAddr) -> Vec<u8> {
    match addr.ip() {
        IpAddr::V4(a) => a.octets()[..2].to_vec(),
        IpAddr::V6(a) => a.octets()[..4].to_vec(),
    }
}

/// [`PathIndex::choose`] as it was before the index: every relay picked by listing all the
/// nodes that fit. Kept as the reference the index is tested against and measured beside.
#[cfg(any(test, feature = "bench"))]
pub fn choose_by_scan<'r>(
    roster: &'r Roster,
    destination: &'r NodeEntry,
    rules: &PathRules<'_>,
    rng: &mut impl RngCore,
) -> Result<[&'r NodeEntry; 4], TooFewNodes> {
    let too_few = TooFewNodes(roster.nodes().len());
    let fits = |n: &NodeEntry, chosen: &[&NodeEntry]| {
        !n.addresses.is_empty()
            && n.identity != destination.identity
            && !rules.avoid.contains(&n.identity.node_id())
            && chosen.iter().all(|c| c.identity != n.identity)
            && (rules.same_subnet_ok
                || chosen.iter().chain(std::iter::once(&destination)).all(|c| {
                    match (c.addresses.first(), n.addresses.first()) {
                        (Some(a), Some(b)) => subnet_bytes(a) != subnet_bytes(b),
                        _ => true,
                    }
                }))
    };
    let mut chosen: Vec<&NodeEntry> = Vec::with_capacity(3);
    let guard = rules
        .guards
        .iter()
        .filter_map(|g| roster.node(g))
        .find(|g| fits(g, &chosen));
    let guard = match guard {
        Some(g) => g,
        None => {
            let pool: Vec<&NodeEntry> =
                roster.nodes().iter().filter(|n| fits(n, &chosen)).collect();
            *pool.get(random_index(rng, pool.len())).ok_or(too_few)?
        }
    };
    chosen.push(guard);
    for _ in 0..2 {
        let pool: Vec<&NodeEntry> = roster.nodes().iter().filter(|n| fits(n, &chosen)).collect();
        let n = *pool.get(random_index(rng, pool.len())).ok_or(too_few)?;
        chosen.push(n);
    }
    Ok([chosen[0], chosen[1], chosen[2], destination])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use allium_onion::{Epoch, IdentityKeypair, OnionKeyCert, OnionSecretKey};
    use allium_proto::network::NetworkFile;
    use allium_proto::roster::{NodeEntry, Roster, RosterHolder};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    /// A held roster of nodes at `addresses` (one node each), signed by a test authority.
    fn held(addresses: &[&str]) -> Arc<HeldRoster> {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let authority = IdentityKeypair::generate(&mut rng);
        let nodes: Vec<NodeEntry> = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = IdentityKeypair::generate(&mut rng);
                let onion = OnionSecretKey::generate(Epoch(1), &mut rng);
                NodeEntry {
                    identity: id.public(),
                    addresses: vec![a.parse().unwrap()],
                    onion_keys: vec![OnionKeyCert::sign(&id, &onion)],
                    swarm: i as u64 % 3,
                    software: String::new(),
                }
            })
            .collect();
        let roster = Roster::new("path-test", 1, 0, 3, nodes).unwrap();
        let signed = roster.sign(&[&authority]).unwrap().encode();
        let id: String = authority
            .public()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let network = NetworkFile::from_toml(&format!(
            "name = \"path-test\"\n[[authority]]\nidentity = \"{id}\"\naddress = \"127.0.0.1:1\"\n\
             [params]\nswarm_size = 3\nmin_ttl_secs = 10\nmax_ttl_secs = 100\nepoch_secs = 3600\n\
             allow_same_subnet = false\nroster_threshold = 1\n"
        ))
        .unwrap();
        let holder = RosterHolder::new(network);
        holder.offer(&signed).unwrap();
        holder.current().unwrap()
    }

    type Path = [NodeId; 4];

    fn ids(p: [&NodeEntry; 4]) -> Path {
        p.map(|n| n.identity.node_id())
    }

    /// How often each path comes out of `draws` choices by `choose`.
    fn frequencies(
        draws: usize,
        seed: u64,
        mut choose: impl FnMut(&mut ChaCha20Rng) -> Result<Path, TooFewNodes>,
    ) -> HashMap<Result<Path, TooFewNodes>, f64> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut out = HashMap::new();
        for _ in 0..draws {
            *out.entry(choose(&mut rng)).or_insert(0.0) += 1.0 / draws as f64;
        }
        out
    }

    /// The index yields the same paths as listing every fitting node, each about as often,
    /// under every combination of rules: guards that fit or not, avoided relays, the subnet
    /// rule on or off, IPv4 and IPv6 nodes, and rosters where no path exists.
    #[test]
    fn the_index_draws_the_paths_listing_draws_with_the_same_frequencies() {
        let addresses = [
            "10.0.0.1:1",
            "10.0.0.2:1",
            "10.1.0.1:1",
            "10.1.0.2:1",
            "10.2.0.1:1",
            "10.3.0.1:1",
            "[2001:db8::1]:1",
            "[2001:db8:1::1]:1",
            "[2001:db8::2]:1",
        ];
        let held = held(&addresses);
        let index = PathIndex::new(held.clone());
        let nodes = held.roster().nodes();
        let id = |i: usize| nodes[i].identity.node_id();
        let cases: Vec<(Vec<NodeId>, Vec<NodeId>, bool)> = vec![
            (vec![], vec![], false),
            (vec![], vec![], true),
            (vec![id(0), id(1)], vec![], false),
            (vec![id(3)], vec![id(3), id(5)], false),
            (vec![id(2)], vec![id(0), id(1), id(4)], true),
            (vec![], (0..9).filter(|i| *i != 4).map(id).collect(), true),
        ];
        let draws = 8_000;
        for (k, (guards, avoid, same_subnet_ok)) in cases.iter().enumerate() {
            let avoid: HashSet<NodeId> = avoid.iter().copied().collect();
            let rules = PathRules {
                guards,
                avoid: &avoid,
                same_subnet_ok: *same_subnet_ok,
            };
            for d in [0, 6, 8] {
                let dest = &nodes[d];
                let by_index =
                    frequencies(draws, 1, |rng| index.choose(dest, &rules, rng).map(ids));
                let by_scan = frequencies(draws, 2, |rng| {
                    choose_by_scan(held.roster(), dest, &rules, rng).map(ids)
                });
                let keys: HashSet<_> = by_index.keys().chain(by_scan.keys()).collect();
                for p in keys {
                    let (a, b) = (
                        by_index.get(p).copied().unwrap_or(0.0),
                        by_scan.get(p).copied().unwrap_or(0.0),
                    );
                    assert_eq!(a == 0.0, b == 0.0, "case {k}, destination {d}: {p:?}");
                    assert!(
                        (a - b).abs() < 0.012,
                        "case {k}, destination {d}: {a} against {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_roster_with_too_few_fitting_nodes_gives_too_few_nodes() {
        // One subnet: without the subnet rule a path exists, with it none does.
        let held = held(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1"]);
        let index = PathIndex::new(held.clone());
        let dest = &held.roster().nodes()[0];
        let avoid = HashSet::new();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut rules = PathRules {
            guards: &[],
            avoid: &avoid,
            same_subnet_ok: false,
        };
        assert_eq!(
            index.choose(dest, &rules, &mut rng).map(ids),
            Err(TooFewNodes(4))
        );
        rules.same_subnet_ok = true;
        let p = index.choose(dest, &rules, &mut rng).unwrap();
        let distinct: HashSet<NodeId> = p.iter().map(|n| n.identity.node_id()).collect();
        assert_eq!(distinct.len(), 4);
        assert_eq!(p[3].identity, dest.identity);
    }
}
