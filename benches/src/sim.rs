//! A simulated network with churn (whitepaper `performance.md` §11): many nodes and clients,
//! nodes joining and leaving every minute, messages sent and received, driven in one process
//! by a discrete-event loop on a simulated clock, deterministic from a seed.
//!
//! **Real code.** The authority's swarm assignment ([`assign`], `roster.md` §5.2) computed each
//! publish round from the previous one, and the ring lookup ([`nearest_swarm_key`] over
//! [`fold_mailbox`], §5.1) every node and client uses to find a mailbox's swarm.
//!
//! **Modelled**, after the code it names (storage chapter §9, client chapter §6):
//! * the authority (`node/src/authority.rs`): a publish round every `publish_interval`; a node
//!   of the roster is dropped after two failed probes in a row, a new one admitted in the
//!   second round after it starts (probed in the background, listed in the round after);
//! * a node (`node/src/replication.rs`): `Membership::check` (`wrong_swarm` first, then
//!   `syncing` while the clock is unknown — no peer answered yet — and, for retrieves, until a
//!   complete anti-entropy round of its current swarm); `Replicator::acknowledge_store` (local
//!   write and copies to every other member at once, acknowledged when a majority of the swarm
//!   its roster names holds it, `not_replicated` after the quorum time-out); `apply_peer_items`
//!   (items for another swarm refused, a syncing member keeps them); `sync_round` every
//!   `sync_interval` and at once on a new roster (pull from every member what this node lacks
//!   for mailboxes it owns, a member that is down skipped, one that refuses leaving the round
//!   incomplete, equal roots skipped); `handoff_round` (after a roster change, every mailbox of
//!   another swarm sent to every member of its swarm, at most 64 a round, dropped once a majority
//!   holds it; nothing when the node is not in its roster); the roster refreshed every
//!   `node_refresh`;
//! * a client (`client/src/net.rs`): the roster refreshed every `client_refresh`, on
//!   `wrong_swarm` and after every fourth failed attempt (at most once a second); each attempt a
//!   fresh 3-relay path to a member not yet asked in the round; a dead hop fails the attempt
//!   (the guard after the attempt time-out, a later hop after the forward time-out, and the
//!   hop is avoided for two minutes); `wrong_swarm` redirects to the named swarm, `syncing` and
//!   `not_replicated` ask another member; a send gives up after the operation time-out and the
//!   messenger's outbox sends the same bytes again a minute later. A listening recipient
//!   long-polls a random member of its swarm with a 25 s wait, and on an arrival fetches again
//!   (one more round trip) before the message counts as delivered;
//! * a retrieve returns every message the member holds that the recipient has not received yet
//!   (what the cursor of storage §8 guarantees, late replicas included); messages are small and
//!   never expire within the run; stores are deduplicated by message (the content hash);
//! * churn: nodes leave abruptly and for good, losing their store; they are chosen at random
//!   among the live nodes; joining nodes start empty;
//! * latency: each one-way hop costs a fixed processing time plus a log-normal WAN delay; round
//!   effects (anti-entropy, hand-off) apply at the time the round starts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use allium_proto::NodeId;
use allium_proto::assign::{assign, fold_mailbox, nearest_swarm_key};
use serde_json::{Value, json};

use crate::moves::{mailbox, node_key};

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;
/// Mailboxes a node hands off per round (`node/src/replication.rs` `HANDOFF_PER_ROUND`).
const HANDOFF_PER_ROUND: usize = 64;
/// How long a relay a failure was attributed to is left out of new paths.
const AVOID: u64 = 120 * SEC;

/// What is simulated. Times are in microseconds of simulated time.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Nodes at the start (all in the first roster, synced).
    pub nodes: u32,
    /// Clients, each with its own mailbox, all listening throughout.
    pub clients: u32,
    /// Simulated minutes.
    pub minutes: u32,
    /// Last minutes in which no new message is sent (churn goes on), so that messages sent
    /// near the end have time to arrive.
    pub quiet_minutes: u32,
    /// Nodes that join each minute, at uniformly random times in it.
    pub joins_per_minute: u32,
    /// Nodes that leave each minute (abruptly, store lost), at uniformly random times.
    pub leaves_per_minute: u32,
    /// Swarm size `S`.
    pub swarm_size: usize,
    /// Mean time between two messages a client sends (exponential).
    pub send_mean: u64,
    /// Authority publish interval (`directory.publish_interval_ms`).
    pub publish_interval: u64,
    /// Node roster refresh (`directory.roster_refresh_ms`).
    pub node_refresh: u64,
    /// Client roster refresh (client chapter §6).
    pub client_refresh: u64,
    /// Anti-entropy and hand-off interval (`replication.sync_interval_ms`).
    pub sync_interval: u64,
    /// Store quorum time-out (`replication.quorum_timeout_ms`).
    pub quorum_timeout: u64,
    /// One attempt's time-out at the client.
    pub attempt_timeout: u64,
    /// A relay's time-out for its next hop (`limits.forward_timeout_ms`).
    pub forward_timeout: u64,
    /// A send's whole time (client chapter §6).
    pub op_timeout: u64,
    /// When the outbox sends a failed message again.
    pub outbox_retry: u64,
    /// Long-poll wait.
    pub longpoll: u64,
    /// Fixed cost of one one-way hop (processing, the loopback share).
    pub hop_fixed: u64,
    /// Median of the log-normal WAN delay of one one-way hop.
    pub wan_median: u64,
    /// Sigma of that log-normal.
    pub wan_sigma: f64,
}

impl SimConfig {
    /// The defaults: 1,000 nodes, 10,000 clients, one hour, 5 joins and 5 leaves a minute,
    /// `S = 5`, the shipped intervals.
    pub fn standard(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 1_000,
            clients: 10_000,
            minutes: 60,
            quiet_minutes: 5,
            joins_per_minute: 5,
            leaves_per_minute: 5,
            swarm_size: 5,
            send_mean: 300 * SEC,
            publish_interval: 10 * SEC,
            node_refresh: 30 * SEC,
            client_refresh: 300 * SEC,
            sync_interval: 5 * SEC,
            quorum_timeout: 3 * SEC,
            attempt_timeout: 10 * SEC,
            forward_timeout: 5 * SEC,
            op_timeout: 45 * SEC,
            outbox_retry: 60 * SEC,
            longpoll: 25 * SEC,
            // performance.md §4: a 3-relay store p50 of 3.768 ms against 1.845 ms with no relay:
            // 0.64 ms per relay round trip, so 0.32 ms per one-way hop.
            hop_fixed: 320,
            wan_median: 25 * MS,
            wan_sigma: 0.5,
        }
    }

    /// The configuration as JSON.
    pub fn to_json(&self) -> Value {
        let s = |us: u64| us as f64 / SEC as f64;
        json!({
            "seed": self.seed, "nodes": self.nodes, "clients": self.clients,
            "minutes": self.minutes, "quiet_minutes": self.quiet_minutes,
            "joins_per_minute": self.joins_per_minute,
            "leaves_per_minute": self.leaves_per_minute, "swarm_size": self.swarm_size,
            "send_mean_s": s(self.send_mean), "publish_interval_s": s(self.publish_interval),
            "node_refresh_s": s(self.node_refresh), "client_refresh_s": s(self.client_refresh),
            "sync_interval_s": s(self.sync_interval), "quorum_timeout_s": s(self.quorum_timeout),
            "attempt_timeout_s": s(self.attempt_timeout),
            "forward_timeout_s": s(self.forward_timeout), "op_timeout_s": s(self.op_timeout),
            "outbox_retry_s": s(self.outbox_retry), "longpoll_s": s(self.longpoll),
            "hop_fixed_ms": self.hop_fixed as f64 / MS as f64,
            "wan_median_ms": self.wan_median as f64 / MS as f64, "wan_sigma": self.wan_sigma,
        })
    }
}

/// xoshiro256** seeded through SplitMix64: the simulation's only source of randomness.
#[derive(Debug, Clone)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn exp(&mut self, mean: u64) -> u64 {
        (-self.unit().ln() * mean as f64) as u64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One published roster: the assignment and what nodes and clients look up in it.
#[derive(Debug)]
struct Snap {
    version: u32,
    assignment: BTreeMap<NodeId, u64>,
    /// Swarm id → members (node indices, ascending).
    swarms: BTreeMap<u64, Vec<u32>>,
    swarm_of: HashMap<u32, u64>,
    nodes: Vec<u32>,
}

impl Snap {
    fn owner(&self, point: u64) -> Option<u64> {
        nearest_swarm_key(&self.swarms, point)
    }

    fn members(&self, swarm: u64) -> &[u32] {
        self.swarms.get(&swarm).map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug, Default)]
struct Node {
    alive: bool,
    /// Index of the roster held (`None` before the first fetch).
    roster: Option<usize>,
    /// Mailbox (client index) → messages held.
    held: BTreeMap<u32, BTreeSet<u32>>,
    /// XOR of a hash of every (mailbox, message) held: the root compare of anti-entropy.
    digest: u64,
    synced: Option<u64>,
    clock_known: bool,
    handed_off_for: Option<u32>,
    /// Mailbox → long-polls parked here (client, poll sequence).
    waiters: BTreeMap<u32, Vec<(u32, u32)>>,
    /// Consecutive failed probes, and the round the node may first be listed in.
    failed_probes: u32,
    admit_at: u64,
}

/// A request a client is making: a store of a message, or a poll of its own mailbox.
#[derive(Debug, Clone, Default)]
struct Req {
    client: u32,
    started: u64,
    /// Members asked in this round.
    asked: Vec<u32>,
    /// Members named by a `wrong_swarm` answer, asked instead of the roster's.
    target: Option<Vec<u32>>,
    fails: u32,
}

#[derive(Debug, Default)]
struct Client {
    point: u64,
    roster: usize,
    last_refresh: u64,
    avoid: Vec<(u32, u64)>,
    poll: Req,
    poll_seq: u32,
}

#[derive(Debug, Default, Clone)]
struct Msg {
    from: u32,
    to: u32,
    /// The send in progress.
    op: Req,
    /// Holders counted when it was acknowledged, and the majority needed.
    quorum: (usize, usize),
    created: u64,
    acked: Option<u64>,
    delivered: Option<u64>,
    /// Times handed to the recipient in all (repeats are dropped by the recipient).
    returned: u32,
    /// Times the recipient took it as new.
    taken: u32,
    outbox_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Store(u32),
    Poll(u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Ok,
    WrongSwarm(Vec<u32>),
    Elsewhere,
    Failed(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Publish,
    NodeRefresh(u32),
    NodeRound(u32),
    Join,
    Leave,
    Send(u32),
    ClientRefresh(u32),
    Attempt(Target),
    AtDest(Target, u32),
    Answer(Target, Answer),
    Replica(u32, u32, u32),
    PollStart(u32),
    PollExpire(u32, u32, u32),
    Outbox(u32),
}

/// Counts of what happened, for the report.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Store attempts (each a path).
    pub store_attempts: u64,
    /// Retrieve attempts (polls reaching for a member).
    pub poll_attempts: u64,
    /// Attempts that failed on a dead hop.
    pub path_failures: u64,
    /// `wrong_swarm` answers.
    pub wrong_swarm: u64,
    /// `syncing` answers (a retrieve before the member pulled its share, or any request
    /// before a peer answered it).
    pub syncing: u64,
    /// `not_replicated` answers.
    pub not_replicated: u64,
    /// Sends that ran out of time and went back to the outbox.
    pub sends_timed_out: u64,
    /// Mailboxes handed off.
    pub handoffs: u64,
    /// Items pulled by anti-entropy.
    pub pulled: u64,
    /// Rosters published.
    pub rosters: u64,
    /// Nodes that joined and left.
    pub joined: u64,
    /// Nodes that left.
    pub left: u64,
    /// Copies of a message the recipient had already received (dropped by it).
    pub repeats: u64,
}

/// What a run found.
#[derive(Debug)]
pub struct SimReport {
    /// The configuration.
    pub config: SimConfig,
    /// Messages sent.
    pub sent: u64,
    /// Messages acknowledged to their sender.
    pub acked: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Acknowledged and delivered.
    pub acked_delivered: u64,
    /// Delivery latencies (from the sender starting to send), microseconds, sorted.
    pub latencies: Vec<u64>,
    /// Acknowledged, not delivered, no live node holds it: every holder left.
    pub lost_all_holders_left: u64,
    /// Acknowledged, not delivered, held by a live member of the mailbox's swarm.
    pub undelivered_held_in_swarm: u64,
    /// Acknowledged, not delivered, held only by live nodes outside the mailbox's swarm.
    pub undelivered_held_elsewhere: u64,
    /// Not acknowledged and not delivered.
    pub unacked_undelivered: u64,
    /// Messages delivered more than once to the application (must be 0).
    pub delivered_twice: u64,
    /// Acknowledged with fewer holders than a majority of the swarm the accepting node knew.
    pub acked_below_quorum: u64,
    /// Nodes and swarms at the end.
    pub nodes_end: usize,
    /// Swarms at the end.
    pub swarms_end: usize,
    /// Counters.
    pub counters: Counters,
    /// Events processed.
    pub events: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

impl SimReport {
    /// Latency percentile `p` (0–100), microseconds.
    pub fn percentile(&self, p: f64) -> u64 {
        pct(&self.latencies, p)
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let ms = |us: u64| us as f64 / MS as f64;
        let c = &self.counters;
        json!({
            "config": self.config.to_json(),
            "real_code": "allium_proto::assign::assign (the authority's assignment each \
                round), nearest_swarm_key and fold_mailbox (every swarm lookup)",
            "modelled": "authority rounds, node check/quorum/anti-entropy/hand-off and client \
                retries after node/src/replication.rs, node/src/authority.rs and client.md §6; \
                latency; churn (abrupt leaves, store lost)",
            "messages": {
                "sent": self.sent, "acknowledged": self.acked, "delivered": self.delivered,
                "acknowledged_and_delivered": self.acked_delivered,
                "fraction_delivered": self.delivered as f64 / self.sent.max(1) as f64,
                "fraction_of_acknowledged_delivered":
                    self.acked_delivered as f64 / self.acked.max(1) as f64,
                "lost_every_holder_left": self.lost_all_holders_left,
                "undelivered_held_in_swarm": self.undelivered_held_in_swarm,
                "undelivered_held_outside_swarm": self.undelivered_held_elsewhere,
                "unacknowledged_undelivered": self.unacked_undelivered,
                "delivered_twice": self.delivered_twice,
                "acknowledged_below_quorum": self.acked_below_quorum,
            },
            "latency_ms": {
                "p50": ms(self.percentile(50.0)), "p90": ms(self.percentile(90.0)),
                "p99": ms(self.percentile(99.0)), "p99.9": ms(self.percentile(99.9)),
                "max": ms(self.latencies.last().copied().unwrap_or(0)),
                "samples": self.latencies.len(),
            },
            "network_end": { "nodes": self.nodes_end, "swarms": self.swarms_end },
            "counters": {
                "store_attempts": c.store_attempts, "poll_attempts": c.poll_attempts,
                "path_failures": c.path_failures, "wrong_swarm": c.wrong_swarm,
                "syncing": c.syncing, "not_replicated": c.not_replicated,
                "sends_timed_out": c.sends_timed_out, "handoffs": c.handoffs,
                "pulled": c.pulled, "rosters": c.rosters, "joined": c.joined, "left": c.left,
                "repeats_dropped": c.repeats,
            },
            "events": self.events,
        })
    }
}

fn item_hash(mb: u32, msg: u32) -> u64 {
    let mut z = (u64::from(mb) << 32 | u64::from(msg)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug)]
struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    rosters: Vec<Snap>,
    nodes: Vec<Node>,
    keys: BTreeMap<NodeId, u32>,
    clients: Vec<Client>,
    msgs: Vec<Msg>,
    c: Counters,
    events: u64,
}

/// Runs the simulation and reports what it found.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut sim = Sim::new(cfg.clone());
    sim.run();
    sim.report()
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rosters: vec![],
            nodes: vec![],
            keys: BTreeMap::new(),
            clients: vec![],
            msgs: vec![],
            c: Counters::default(),
            events: 0,
            cfg,
        };
        for _ in 0..sim.cfg.nodes {
            let i = sim.add_node();
            sim.nodes[i as usize].roster = Some(0);
        }
        let all: Vec<u32> = (0..sim.cfg.nodes).collect();
        sim.publish_from(&BTreeMap::new(), &all);
        for i in 0..sim.cfg.nodes {
            let n = &mut sim.nodes[i as usize];
            n.roster = Some(0);
            n.clock_known = true;
            n.synced = sim.rosters[0].swarm_of.get(&i).copied();
            n.handed_off_for = Some(0);
            let phase = sim.rng.below(sim.cfg.node_refresh);
            sim.at(phase, Ev::NodeRefresh(i));
            let phase = sim.rng.below(sim.cfg.sync_interval);
            sim.at(phase, Ev::NodeRound(i));
        }
        for j in 0..sim.cfg.clients {
            sim.clients.push(Client {
                point: fold_mailbox(&mailbox(j)),
                ..Client::default()
            });
            let (r, s, p) = (
                sim.rng.below(sim.cfg.client_refresh),
                sim.rng.exp(sim.cfg.send_mean),
                sim.rng.below(SEC),
            );
            sim.at(r, Ev::ClientRefresh(j));
            sim.at(s, Ev::Send(j));
            sim.at(p, Ev::PollStart(j));
        }
        sim.at(sim.cfg.publish_interval, Ev::Publish);
        for m in 0..sim.cfg.minutes {
            let base = u64::from(m) * 60 * SEC;
            for _ in 0..sim.cfg.joins_per_minute {
                let t = base + sim.rng.below(60 * SEC);
                sim.at(t, Ev::Join);
            }
            for _ in 0..sim.cfg.leaves_per_minute {
                let t = base + sim.rng.below(60 * SEC);
                sim.at(t, Ev::Leave);
            }
        }
        sim
    }

    fn end(&self) -> u64 {
        u64::from(self.cfg.minutes) * 60 * SEC
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn add_node(&mut self) -> u32 {
        let i = self.nodes.len() as u32;
        self.nodes.push(Node {
            alive: true,
            ..Node::default()
        });
        self.keys.insert(node_key(i), i);
        i
    }

    fn latest(&self) -> usize {
        self.rosters.len() - 1
    }

    /// One one-way hop.
    fn hop(&mut self) -> u64 {
        let wan = self.cfg.wan_median as f64 * (self.cfg.wan_sigma * self.rng.normal()).exp();
        self.cfg.hop_fixed + wan as u64
    }

    fn hops(&mut self, n: usize) -> u64 {
        (0..n).map(|_| self.hop()).sum()
    }

    fn run(&mut self) {
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > self.end() {
                break;
            }
            self.now = t;
            self.events += 1;
            self.handle(ev);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Publish => {
                self.publish();
                let t = self.now + self.cfg.publish_interval;
                self.at(t, Ev::Publish);
            }
            Ev::NodeRefresh(i) => {
                if !self.nodes[i as usize].alive {
                    return;
                }
                let latest = self.latest();
                if self.nodes[i as usize].roster != Some(latest) {
                    self.nodes[i as usize].roster = Some(latest);
                    // The replication loop runs a round at once when the roster changes.
                    self.node_round(i);
                }
                let t = self.now + self.cfg.node_refresh;
                self.at(t, Ev::NodeRefresh(i));
            }
            Ev::NodeRound(i) => {
                if !self.nodes[i as usize].alive {
                    return;
                }
                self.node_round(i);
                let t = self.now + self.cfg.sync_interval;
                self.at(t, Ev::NodeRound(i));
            }
            Ev::Join => {
                let i = self.add_node();
                self.c.joined += 1;
                // Admitted in the second publish round after it registers.
                let p = self.cfg.publish_interval;
                self.nodes[i as usize].admit_at = (self.now / p + 2) * p;
                // It fetches a roster as it starts.
                self.nodes[i as usize].roster = Some(self.latest());
                let t = self.now + self.cfg.node_refresh;
                self.at(t, Ev::NodeRefresh(i));
                let t = self.now + self.rng.below(self.cfg.sync_interval);
                self.at(t, Ev::NodeRound(i));
            }
            Ev::Leave => {
                let alive: Vec<u32> = (0..self.nodes.len() as u32)
                    .filter(|i| self.nodes[*i as usize].alive)
                    .collect();
                if alive.len() > self.cfg.swarm_size {
                    let i = alive[self.rng.below(alive.len() as u64) as usize];
                    let n = &mut self.nodes[i as usize];
                    n.alive = false;
                    // The store is gone with the node.
                    n.held.clear();
                    n.digest = 0;
                    self.c.left += 1;
                }
            }
            Ev::Send(j) => {
                if self.now < self.end() - u64::from(self.cfg.quiet_minutes) * 60 * SEC {
                    let mut to = self.rng.below(u64::from(self.cfg.clients)) as u32;
                    if to == j {
                        to = (to + 1) % self.cfg.clients;
                    }
                    let m = self.msgs.len() as u32;
                    self.msgs.push(Msg {
                        from: j,
                        to,
                        created: self.now,
                        ..Msg::default()
                    });
                    self.start_send(m);
                    let t = self.now + self.rng.exp(self.cfg.send_mean);
                    self.at(t, Ev::Send(j));
                }
            }
            Ev::Outbox(m) => {
                self.msgs[m as usize].outbox_retries += 1;
                self.start_send(m);
            }
            Ev::ClientRefresh(j) => {
                self.refresh_client(j, true);
                let t = self.now + self.cfg.client_refresh;
                self.at(t, Ev::ClientRefresh(j));
            }
            Ev::Attempt(target) => self.attempt(target),
            Ev::AtDest(target, dest) => self.at_dest(target, dest),
            Ev::Answer(target, answer) => self.answer(target, answer),
            Ev::Replica(node, mb, msg) => {
                if self.nodes[node as usize].alive {
                    self.insert(node, mb, msg);
                }
            }
            Ev::PollStart(j) => self.poll_start(j),
            Ev::PollExpire(j, seq, node) => self.poll_expire(j, seq, node),
        }
    }

    // ---- the authority ----------------------------------------------------------------------

    fn publish_from(&mut self, previous: &BTreeMap<NodeId, u64>, eligible: &[u32]) {
        let ids: Vec<NodeId> = eligible.iter().map(|i| node_key(*i)).collect();
        let assignment = assign(previous, &ids, self.cfg.swarm_size);
        let mut swarms: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut swarm_of = HashMap::new();
        for (k, s) in &assignment {
            if let Some(i) = self.keys.get(k) {
                swarms.entry(*s).or_default().push(*i);
                swarm_of.insert(*i, *s);
            }
        }
        for m in swarms.values_mut() {
            m.sort_unstable();
        }
        let mut nodes: Vec<u32> = swarm_of.keys().copied().collect();
        nodes.sort_unstable();
        self.rosters.push(Snap {
            version: self.rosters.len() as u32,
            assignment,
            swarms,
            swarm_of,
            nodes,
        });
        self.c.rosters += 1;
    }

    /// A publish round: probes the listed nodes (two failures in a row drop one), admits new
    /// nodes whose time has come, and publishes a new roster if the set changed.
    fn publish(&mut self) {
        let latest = self.latest();
        let listed = self.rosters[latest].nodes.clone();
        let mut eligible = Vec::with_capacity(listed.len());
        for i in &listed {
            let n = &mut self.nodes[*i as usize];
            if n.alive {
                n.failed_probes = 0;
            } else {
                n.failed_probes += 1;
            }
            if n.failed_probes < 2 {
                eligible.push(*i);
            }
        }
        for i in 0..self.nodes.len() as u32 {
            let n = &self.nodes[i as usize];
            let new = !self.rosters[latest].swarm_of.contains_key(&i);
            if new && n.alive && n.admit_at > 0 && n.admit_at <= self.now {
                eligible.push(i);
            }
        }
        eligible.sort_unstable();
        if eligible != listed {
            let previous = self.rosters[latest].assignment.clone();
            self.publish_from(&previous, &eligible);
        }
    }

    // ---- a node -----------------------------------------------------------------------------

    fn snap(&self, node: u32) -> Option<&Snap> {
        self.nodes[node as usize].roster.map(|r| &self.rosters[r])
    }

    fn my_swarm(&self, node: u32) -> Option<u64> {
        self.snap(node)?.swarm_of.get(&node).copied()
    }

    fn owner_at(&self, node: u32, mb: u32) -> Option<u64> {
        self.snap(node)?.owner(self.clients[mb as usize].point)
    }

    fn owns(&self, node: u32, mb: u32) -> bool {
        let mine = self.my_swarm(node);
        mine.is_some() && self.owner_at(node, mb) == mine
    }

    fn peers(&self, node: u32) -> Vec<u32> {
        match (self.snap(node), self.my_swarm(node)) {
            (Some(s), Some(id)) => s
                .members(id)
                .iter()
                .copied()
                .filter(|n| *n != node)
                .collect(),
            _ => vec![],
        }
    }

    fn clock_ok(&self, node: u32) -> bool {
        self.nodes[node as usize].clock_known || self.peers(node).is_empty()
    }

    /// `Membership::syncing`.
    fn syncing(&mut self, node: u32) -> bool {
        let current = self.my_swarm(node);
        let ok = self.clock_ok(node);
        let n = &mut self.nodes[node as usize];
        if ok && current.is_some() && n.synced == current {
            return false;
        }
        n.synced = None;
        true
    }

    /// `Membership::check`: `None` when the request is served.
    fn check(&mut self, node: u32, mb: u32, retrieve: bool) -> Option<Answer> {
        if let (Some(mine), Some(owner)) = (self.my_swarm(node), self.owner_at(node, mb))
            && mine != owner
        {
            let members = self
                .snap(node)
                .map(|s| s.members(owner).to_vec())
                .unwrap_or_default();
            return Some(Answer::WrongSwarm(members));
        }
        if !self.clock_ok(node) || (retrieve && self.syncing(node)) {
            return Some(Answer::Elsewhere);
        }
        None
    }

    /// `Service::apply_peer_items` for one item: whether the node holds it afterwards.
    fn accepts(&mut self, node: u32, mb: u32) -> bool {
        self.nodes[node as usize].alive
            && !matches!(self.check(node, mb, false), Some(Answer::WrongSwarm(_)))
    }

    /// A durable write of `msg` into mailbox `mb` at `node`, waking the long-polls parked there.
    fn insert(&mut self, node: u32, mb: u32, msg: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.held.entry(mb).or_default().insert(msg) {
            return;
        }
        n.digest ^= item_hash(mb, msg);
        if let Some(waiting) = n.waiters.remove(&mb) {
            for (j, seq) in waiting {
                if self.clients[j as usize].poll_seq == seq {
                    self.answer_poll(j, node);
                }
            }
        }
    }

    fn forget(&mut self, node: u32, mb: u32) {
        let n = &mut self.nodes[node as usize];
        if let Some(msgs) = n.held.remove(&mb) {
            for m in msgs {
                n.digest ^= item_hash(mb, m);
            }
        }
    }

    fn node_round(&mut self, node: u32) {
        self.sync_round(node);
        self.handoff_round(node);
    }

    /// `Replicator::sync_round`.
    fn sync_round(&mut self, node: u32) {
        self.syncing(node);
        let Some(swarm) = self.my_swarm(node) else {
            return;
        };
        let mut complete = true;
        for p in self.peers(node) {
            if !self.nodes[p as usize].alive {
                continue;
            }
            // A peer answers sync requests only from a member of its own swarm, as its own
            // roster says (`Membership::is_swarm_peer`).
            let theirs = self.my_swarm(p);
            let me_there = self.snap(p).and_then(|s| s.swarm_of.get(&node).copied());
            if theirs.is_none() || me_there != theirs {
                complete = false;
                continue;
            }
            self.nodes[node as usize].clock_known = true;
            if self.nodes[p as usize].digest == self.nodes[node as usize].digest {
                continue;
            }
            let mut lacking = vec![];
            for (mb, msgs) in &self.nodes[p as usize].held {
                if !self.owns(node, *mb) {
                    continue;
                }
                let mine = self.nodes[node as usize].held.get(mb);
                for m in msgs {
                    if mine.is_none_or(|h| !h.contains(m)) {
                        lacking.push((*mb, *m));
                    }
                }
            }
            for (mb, m) in lacking {
                if self.accepts(node, mb) {
                    self.insert(node, mb, m);
                    self.c.pulled += 1;
                }
            }
        }
        if complete && self.my_swarm(node) == Some(swarm) && self.clock_ok(node) {
            self.nodes[node as usize].synced = Some(swarm);
        }
    }

    /// `Replicator::handoff_round`.
    fn handoff_round(&mut self, node: u32) {
        let Some(version) = self.snap(node).map(|s| s.version) else {
            return;
        };
        if self.my_swarm(node).is_none()
            || self.nodes[node as usize].handed_off_for == Some(version)
        {
            return;
        }
        let held: Vec<u32> = self.nodes[node as usize].held.keys().copied().collect();
        let (mut moved, mut finished) = (0, true);
        for mb in held {
            if self.owns(node, mb) {
                continue;
            }
            if moved >= HANDOFF_PER_ROUND {
                finished = false;
                break;
            }
            moved += 1;
            let owners = self
                .owner_at(node, mb)
                .and_then(|o| self.snap(node).map(|s| s.members(o).to_vec()))
                .unwrap_or_default();
            if owners.is_empty() {
                finished = false;
                continue;
            }
            let items: Vec<u32> = self.nodes[node as usize].held[&mb]
                .iter()
                .copied()
                .collect();
            let mut holders = 0;
            for o in &owners {
                if self.accepts(*o, mb) {
                    for m in &items {
                        self.insert(*o, mb, *m);
                    }
                    holders += 1;
                }
            }
            let majority = owners.len() / 2 + 1;
            if holders >= majority {
                self.forget(node, mb);
                self.c.handoffs += 1;
            } else {
                finished = false;
            }
        }
        if finished {
            self.nodes[node as usize].handed_off_for = Some(version);
        }
    }

    // ---- a client ---------------------------------------------------------------------------

    fn refresh_client(&mut self, j: u32, periodic: bool) {
        let c = &mut self.clients[j as usize];
        if periodic || self.now >= c.last_refresh + SEC {
            c.roster = self.rosters.len() - 1;
            c.last_refresh = self.now;
        }
    }

    fn start_send(&mut self, m: u32) {
        let op = Req {
            client: self.msgs[m as usize].from,
            started: self.now,
            ..Req::default()
        };
        self.msgs[m as usize].op = op;
        self.attempt(Target::Store(m));
    }

    fn req(&mut self, target: Target) -> &mut Req {
        match target {
            Target::Store(m) => &mut self.msgs[m as usize].op,
            Target::Poll(j, _) => &mut self.clients[j as usize].poll,
        }
    }

    /// Whether an event for `target` still belongs to the request in progress.
    fn current(&self, target: Target) -> bool {
        match target {
            Target::Store(m) => self.msgs[m as usize].acked.is_none(),
            Target::Poll(j, seq) => self.clients[j as usize].poll_seq == seq,
        }
    }

    fn mailbox_of(&self, target: Target) -> u32 {
        match target {
            Target::Store(m) => self.msgs[m as usize].to,
            Target::Poll(j, _) => j,
        }
    }

    /// One attempt: a fresh path to a member of the mailbox's swarm not asked yet this round.
    fn attempt(&mut self, target: Target) {
        if !self.current(target) {
            return;
        }
        let now = self.now;
        let (op_timeout, outbox) = (self.cfg.op_timeout, self.cfg.outbox_retry);
        let req = self.req(target).clone();
        let j = req.client;
        if let Target::Store(m) = target
            && now >= req.started + op_timeout
        {
            self.c.sends_timed_out += 1;
            self.at(now + outbox, Ev::Outbox(m));
            return;
        }
        let mb = self.mailbox_of(target);
        let client = &self.clients[j as usize];
        let roster = &self.rosters[client.roster];
        let members: Vec<u32> = match &req.target {
            Some(t) => t.clone(),
            None => roster
                .owner(self.clients[mb as usize].point)
                .map(|o| roster.members(o).to_vec())
                .unwrap_or_default(),
        };
        let avoid: Vec<u32> = client
            .avoid
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(a, _)| *a)
            .collect();
        let avoided = |n: &u32| avoid.contains(n);
        let mut candidates: Vec<u32> = members
            .iter()
            .copied()
            .filter(|n| !req.asked.contains(n) && !avoided(n))
            .collect();
        if candidates.is_empty() {
            // Every member was asked: the round starts again.
            self.req(target).asked.clear();
            candidates = members.iter().copied().filter(|n| !avoided(n)).collect();
            if candidates.is_empty() {
                candidates = members.clone();
            }
        }
        if candidates.is_empty() {
            self.at(now + SEC, Ev::Attempt(target));
            return;
        }
        match target {
            Target::Store(_) => self.c.store_attempts += 1,
            Target::Poll(..) => self.c.poll_attempts += 1,
        }
        let dest = candidates[self.rng.below(candidates.len() as u64) as usize];
        self.req(target).asked.push(dest);
        // Three relays at random from the client's roster, distinct, not the destination.
        let pool = &self.rosters[self.clients[j as usize].roster].nodes;
        let mut path: Vec<u32> = Vec::with_capacity(4);
        let mut tries = 0;
        while path.len() < 3 && tries < 64 && pool.len() > 4 {
            tries += 1;
            let n = pool[self.rng.below(pool.len() as u64) as usize];
            let client = &self.clients[j as usize];
            let avoid = client
                .avoid
                .iter()
                .any(|(a, until)| *a == n && *until > now);
            if n != dest && !path.contains(&n) && !avoid {
                path.push(n);
            }
        }
        path.push(dest);
        let out: Vec<u64> = (0..path.len()).map(|_| self.hop()).collect();
        if let Some(k) = path.iter().position(|n| !self.nodes[*n as usize].alive) {
            self.c.path_failures += 1;
            let dead = path[k];
            let failed_at = if k == 0 {
                now + self.cfg.attempt_timeout
            } else {
                let back = self.hops(k);
                now + out[..k].iter().sum::<u64>() + self.cfg.forward_timeout + back
            };
            self.at(failed_at, Ev::Answer(target, Answer::Failed(dead)));
            return;
        }
        self.at(now + out.iter().sum::<u64>(), Ev::AtDest(target, dest));
    }

    fn at_dest(&mut self, target: Target, dest: u32) {
        if !self.current(target) {
            return;
        }
        let mb = self.mailbox_of(target);
        let back = self.hops(4);
        if let Some(refusal) = self.check(dest, mb, matches!(target, Target::Poll(..))) {
            if refusal == Answer::Elsewhere {
                self.c.syncing += 1;
            }
            self.at(self.now + back, Ev::Answer(target, refusal));
            return;
        }
        match target {
            Target::Store(m) => self.store_at(m, dest, back),
            Target::Poll(j, seq) => {
                let waiting = self.nodes[dest as usize]
                    .held
                    .get(&mb)
                    .is_some_and(|h| h.iter().any(|m| self.msgs[*m as usize].delivered.is_none()));
                if waiting {
                    self.answer_poll(j, dest);
                } else {
                    self.nodes[dest as usize]
                        .waiters
                        .entry(mb)
                        .or_default()
                        .push((j, seq));
                    let t = self.now + self.cfg.longpoll;
                    self.at(t, Ev::PollExpire(j, seq, dest));
                }
            }
        }
    }

    /// `Replicator::acknowledge_store` at `dest`: the local write and a copy to every other
    /// member at once; acknowledged when a majority of the swarm `dest`'s roster names holds it.
    fn store_at(&mut self, m: u32, dest: u32, back: u64) {
        let mb = self.msgs[m as usize].to;
        self.insert(dest, mb, m);
        let members = self
            .owner_at(dest, mb)
            .and_then(|o| self.snap(dest).map(|s| s.members(o).to_vec()));
        let Some(members) = members else {
            // No swarm for it in the roster held: the local write is the answer.
            self.msgs[m as usize].quorum = (1, 1);
            self.at(self.now + back, Ev::Answer(Target::Store(m), Answer::Ok));
            return;
        };
        let need = members.len() / 2 + 1;
        let mut confirmations = vec![];
        for p in members.into_iter().filter(|p| *p != dest) {
            if !self.accepts(p, mb) {
                continue;
            }
            let (there, reply) = (self.hop(), self.hop());
            self.at(self.now + there, Ev::Replica(p, mb, m));
            confirmations.push(there + reply);
        }
        confirmations.sort_unstable();
        let enough = need - 1;
        let quorum_at = if enough == 0 {
            Some(0)
        } else {
            confirmations.get(enough - 1).copied()
        };
        match quorum_at.filter(|t| *t <= self.cfg.quorum_timeout) {
            Some(t) => {
                self.msgs[m as usize].quorum = (1 + confirmations.len().min(enough), need);
                self.at(
                    self.now + t + back,
                    Ev::Answer(Target::Store(m), Answer::Ok),
                );
            }
            None => {
                self.c.not_replicated += 1;
                let t = self.now + self.cfg.quorum_timeout + back;
                self.at(t, Ev::Answer(Target::Store(m), Answer::Elsewhere));
            }
        }
    }

    fn answer(&mut self, target: Target, answer: Answer) {
        if !self.current(target) {
            return;
        }
        let j = self.req(target).client;
        match answer {
            Answer::Ok => {
                if let Target::Store(m) = target {
                    self.msgs[m as usize].acked = Some(self.now);
                }
                return;
            }
            Answer::WrongSwarm(members) => {
                self.c.wrong_swarm += 1;
                self.refresh_client(j, false);
                let r = self.req(target);
                r.target = Some(members);
                r.asked.clear();
            }
            Answer::Elsewhere => {}
            Answer::Failed(node) => {
                let until = self.now + AVOID;
                self.clients[j as usize]
                    .avoid
                    .retain(|(_, u)| *u > self.now);
                self.clients[j as usize].avoid.push((node, until));
                let r = self.req(target);
                r.fails += 1;
                if r.fails % 4 == 0 {
                    self.refresh_client(j, false);
                }
            }
        }
        self.attempt(target);
    }

    // ---- a listening recipient ----------------------------------------------------------------

    fn poll_start(&mut self, j: u32) {
        let c = &mut self.clients[j as usize];
        c.poll_seq += 1;
        c.poll = Req {
            client: j,
            started: self.now,
            ..Req::default()
        };
        let seq = c.poll_seq;
        self.attempt(Target::Poll(j, seq));
    }

    /// The long-poll's answer from `node` now: every message held there that the recipient has
    /// not received. The client fetches again (one more round trip) before it has them, then
    /// polls again.
    fn answer_poll(&mut self, j: u32, node: u32) {
        let rtt = self.hops(8);
        let back = self.hops(4);
        let at = self.now + back + rtt;
        // The cursor (storage §8) has moved past what the recipient already holds; a message
        // on its way to it in another answer comes back again and is dropped as a repeat.
        let now = self.now;
        let held: Vec<u32> = self.nodes[node as usize]
            .held
            .get(&j)
            .map(|h| {
                h.iter()
                    .copied()
                    .filter(|m| self.msgs[*m as usize].delivered.is_none_or(|d| d > now))
                    .collect()
            })
            .unwrap_or_default();
        for m in held {
            let msg = &mut self.msgs[m as usize];
            msg.returned += 1;
            match msg.delivered {
                None => {
                    msg.taken += 1;
                    msg.delivered = Some(at);
                }
                Some(d) => {
                    self.c.repeats += 1;
                    msg.delivered = Some(d.min(at));
                }
            }
        }
        self.clients[j as usize].poll_seq += 1;
        self.at(at, Ev::PollStart(j));
    }

    fn poll_expire(&mut self, j: u32, seq: u32, node: u32) {
        if self.clients[j as usize].poll_seq != seq {
            return;
        }
        if let Some(w) = self.nodes[node as usize].waiters.get_mut(&j) {
            w.retain(|(c, s)| !(*c == j && *s == seq));
        }
        if !self.nodes[node as usize].alive {
            // The wait never ends: the client gives up after the attempt time-out on top.
            self.clients[j as usize].poll_seq += 1;
            let t = self.now + self.cfg.attempt_timeout;
            self.at(t, Ev::PollStart(j));
            return;
        }
        self.answer_poll(j, node);
    }

    // ---- the report ---------------------------------------------------------------------------

    fn report(self) -> SimReport {
        let latest = &self.rosters[self.rosters.len() - 1];
        let mut holders: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            for msgs in n.held.values() {
                for m in msgs {
                    holders.entry(*m).or_default().push(i as u32);
                }
            }
        }
        let mut r = SimReport {
            config: self.cfg.clone(),
            sent: self.msgs.len() as u64,
            acked: 0,
            delivered: 0,
            acked_delivered: 0,
            latencies: vec![],
            lost_all_holders_left: 0,
            undelivered_held_in_swarm: 0,
            undelivered_held_elsewhere: 0,
            unacked_undelivered: 0,
            delivered_twice: 0,
            acked_below_quorum: 0,
            nodes_end: latest.nodes.len(),
            swarms_end: latest.swarms.len(),
            counters: self.c.clone(),
            events: self.events,
        };
        let end = self.end();
        for (i, m) in self.msgs.iter().enumerate() {
            let delivered = m.delivered.filter(|d| *d <= end);
            if m.taken > 1 {
                r.delivered_twice += 1;
            }
            if m.acked.is_some() {
                r.acked += 1;
                if m.quorum.0 < m.quorum.1 {
                    r.acked_below_quorum += 1;
                }
            }
            if let Some(d) = delivered {
                r.delivered += 1;
                r.latencies.push(d - m.created);
                if m.acked.is_some() {
                    r.acked_delivered += 1;
                }
                continue;
            }
            if m.acked.is_none() {
                r.unacked_undelivered += 1;
                continue;
            }
            let owner = latest.owner(self.clients[m.to as usize].point);
            match holders.get(&(i as u32)) {
                None => r.lost_all_holders_left += 1,
                Some(h) if h.iter().any(|n| latest.swarm_of.get(n).copied() == owner) => {
                    r.undelivered_held_in_swarm += 1;
                }
                Some(_) => r.undelivered_held_elsewhere += 1,
            }
        }
        r.latencies.sort_unstable();
        r
    }
}
