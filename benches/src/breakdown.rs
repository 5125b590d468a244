//! Where a delivery's time goes (`allium-bench --breakdown`): the nodes of a network started
//! here log a stage mark (`allium_swarm::stage`) at each step of a request, with the wall-clock
//! time; this process marked its own steps of every timed delivery (`net::Marks`). Each
//! delivery's window is matched with the marks that fall in it, and the gap between
//! consecutive steps is one stage. All processes run on this machine, so one clock serves.

use std::path::Path;

use serde_json::{Value, json};

use crate::net::Marks;

/// One node's stage mark.
#[derive(Debug, Clone)]
struct Mark {
    at: u64,
    stage: String,
    /// `writer.durable` only: client stores in the write group.
    stores: Option<u64>,
    /// `writer.durable` only: mailbox namespaces that got a new message.
    messages: Option<u64>,
}

/// The value of `key=` in a log line of the text format, quotes removed.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!(" {key}=");
    let at = line.find(&pattern)? + pattern.len();
    let rest = &line[at..];
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"')?]
    } else {
        rest.split_whitespace().next()?
    };
    Some(value)
}

fn parse(line: &str) -> Option<Mark> {
    if !line.contains(allium_swarm::stage::TARGET) {
        return None;
    }
    Some(Mark {
        at: field(line, "at_us")?.parse().ok()?,
        stage: field(line, "stage")?.to_string(),
        stores: field(line, "stores").and_then(|v| v.parse().ok()),
        messages: field(line, "messages").and_then(|v| v.parse().ok()),
    })
}

/// Every stage mark in the `*.log` files of `dir`, oldest first.
fn read_marks(dir: &Path) -> Result<Vec<Mark>, String> {
    let mut marks = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        marks.extend(text.lines().filter_map(parse));
    }
    marks.sort_by_key(|m| m.at);
    Ok(marks)
}

/// The first mark at or after `from` that `pick` accepts.
fn first(marks: &[Mark], from: u64, pick: impl Fn(&Mark) -> bool) -> Option<u64> {
    let i = marks.partition_point(|m| m.at < from);
    marks[i..].iter().find(|m| pick(m)).map(|m| m.at)
}

fn named(stage: &'static str) -> impl Fn(&Mark) -> bool {
    move |m: &Mark| m.stage == stage
}

/// The stages of the delivery's path, in order; then the sender's acknowledgement, beside it.
const PATH: [&str; 13] = [
    "A: seal the envelope (session message)",
    "A: build the packet, link to the guard, guard peels",
    "link guard → middle, middle peels",
    "link middle → exit, exit peels",
    "link exit → member, member peels",
    "member: decode, check, queue the store",
    "member: writer group and synced write",
    "member: B's parked poll woken",
    "member: mailbox read again",
    "member: answer encoded",
    "reply: member seals, 3 relays, B opens 4 layers",
    "B: open and decrypt the envelope",
    "delivery: A starts to seal → B has opened",
];
const SIDE: [&str; 5] = [
    "member: own write done, store's task told",
    "peer: copy received (from queued)",
    "peer: copy durable (from queued)",
    "member: a majority of peers answered (from queued)",
    "A: acknowledgement back (from A's start)",
];

/// Per-stage samples of the deliveries whose every mark was found.
#[derive(Debug, Default)]
pub struct Breakdown {
    path: Vec<Vec<u64>>,
    side: Vec<Vec<u64>>,
    /// Deliveries left out: a mark missing (a poll that was not parked, a relay not seen).
    pub skipped: usize,
}

/// One delivery's stage durations, µs, if every mark of its window was found.
fn stages(m: &Marks, marks: &[Mark]) -> Option<([u64; 13], [u64; 5])> {
    let delivered = first(marks, m.sealed, named("dest.delivered"))?;
    let from = marks.partition_point(|x| x.at < m.sealed);
    let upto = marks.partition_point(|x| x.at <= delivered);
    let relays: Vec<u64> = marks[from..upto]
        .iter()
        .filter(|x| x.stage == "relay.peeled")
        .map(|x| x.at)
        .collect();
    let [r1, r2, r3] = relays[..] else {
        return None;
    };
    let queued = first(marks, delivered, named("store.queued"))?;
    let durable = first(marks, queued, |x| {
        x.stage == "writer.durable" && x.stores.is_some_and(|s| s > 0)
    })?;
    let woken = first(marks, durable, named("poll.woken"))?;
    let read = first(marks, woken, named("poll.read"))?;
    let answered = first(marks, read, named("poll.answered"))?;
    let local = first(marks, queued, named("store.local"))?;
    let copy = first(marks, queued, named("replica.received"))?;
    let copied = first(marks, queued, |x| {
        x.stage == "writer.durable" && x.stores == Some(0) && x.messages.is_some_and(|n| n > 0)
    })?;
    let peers = first(marks, queued, named("store.peers"))?;
    let steps = [
        m.start, m.sealed, r1, r2, r3, delivered, queued, durable, woken, read, answered,
        m.received, m.opened,
    ];
    if steps.windows(2).any(|w| w[1] < w[0]) || answered > m.received {
        return None;
    }
    let mut path = [0u64; 13];
    for (i, w) in steps.windows(2).enumerate() {
        path[i] = w[1] - w[0];
    }
    path[12] = m.opened - m.start;
    let side = [
        local.saturating_sub(queued),
        copy.saturating_sub(queued),
        copied.saturating_sub(queued),
        peers.saturating_sub(queued),
        m.acked.saturating_sub(m.start),
    ];
    Some((path, side))
}

impl Breakdown {
    /// Matches `deliveries` with the stage marks in the logs of `dir`.
    pub fn from_logs(dir: &Path, deliveries: &[Marks]) -> Result<Breakdown, String> {
        let marks = read_marks(dir)?;
        if marks.is_empty() {
            return Err(format!(
                "no stage marks in the logs of {} (the nodes need the allium_stage=trace filter)",
                dir.display()
            ));
        }
        let mut b = Breakdown {
            path: vec![Vec::new(); PATH.len()],
            side: vec![Vec::new(); SIDE.len()],
            skipped: 0,
        };
        for d in deliveries {
            match stages(d, &marks) {
                Some((path, side)) => {
                    for (v, s) in b.path.iter_mut().zip(path) {
                        v.push(s);
                    }
                    for (v, s) in b.side.iter_mut().zip(side) {
                        v.push(s);
                    }
                }
                None => b.skipped += 1,
            }
        }
        if b.samples() == 0 {
            return Err("no delivery had all its stage marks".into());
        }
        Ok(b)
    }

    pub fn samples(&self) -> usize {
        self.path.first().map_or(0, Vec::len)
    }

    fn rows(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        PATH.iter()
            .zip(&self.path)
            .chain(SIDE.iter().zip(&self.side))
            .map(|(name, v)| (*name, quantile(v, 0.5), quantile(v, 0.9)))
    }

    pub fn print(&self) {
        println!(
            "delivery stages ({} deliveries, {} left out; µs; p50 of each stage on its own):",
            self.samples(),
            self.skipped
        );
        println!("{:<54} {:>8} {:>8}", "stage", "p50", "p90");
        for (i, (name, p50, p90)) in self.rows().enumerate() {
            if i == PATH.len() - 1 || i == PATH.len() {
                println!();
            }
            println!("{name:<54} {p50:>8} {p90:>8}");
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "samples": self.samples(),
            "skipped": self.skipped,
            "stages_us": self.rows().map(|(name, p50, p90)| json!({
                "stage": name, "p50": p50, "p90": p90,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The `q` quantile of `v` (nearest rank).
fn quantile(v: &[u64], q: f64) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len().max(1));
    s.get(rank - 1).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let line = "2026-12-02T12:00:00.000001Z TRACE allium_stage: at_us=1764676800000001 \
                    stage=\"writer.durable\" stores=1 messages=1";
        let m = parse(line).unwrap();
        assert_eq!(m.at, 1_764_676_800_000_001);
        assert_eq!(m.stage, "writer.durable");
        assert_eq!((m.stores, m.messages), (Some(1), Some(1)));
        assert!(parse("2026-12-02T12:00:00Z WARN allium_node: at_us=1 stage=\"x\"").is_none());
    }

    fn mark(at: u64, stage: &str, stores: Option<u64>) -> Mark {
        Mark {
            at,
            stage: stage.into(),
            stores,
            messages: stores.map(|_| 1),
        }
    }

    #[test]
    fn one_delivery_splits_into_its_stages() {
        let marks = vec![
            mark(110, "relay.peeled", None),
            mark(120, "relay.peeled", None),
            mark(130, "relay.peeled", None),
            mark(140, "dest.delivered", None),
            mark(150, "store.queued", None),
            mark(170, "writer.durable", Some(1)),
            mark(175, "poll.woken", None),
            mark(176, "store.local", None),
            mark(180, "replica.received", None),
            mark(185, "poll.read", None),
            mark(190, "poll.answered", None),
            mark(200, "writer.durable", Some(0)),
            mark(210, "store.peers", None),
        ];
        let d = Marks {
            start: 100,
            sealed: 105,
            acked: 260,
            received: 230,
            opened: 240,
        };
        let (path, side) = stages(&d, &marks).unwrap();
        assert_eq!(path, [5, 5, 10, 10, 10, 10, 20, 5, 10, 5, 40, 10, 140]);
        assert_eq!(side, [26, 30, 50, 60, 160]);
        // A relay not seen: the delivery is left out rather than misattributed.
        let fewer: Vec<Mark> = marks.iter().skip(1).cloned().collect();
        assert!(stages(&d, &fewer).is_none());
    }

    #[test]
    fn nearest_rank_quantiles() {
        assert_eq!(quantile(&[5, 1, 3], 0.5), 3);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), 2);
        assert_eq!(quantile(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9), 9);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
