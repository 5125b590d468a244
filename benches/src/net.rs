//! The measurements through a running network: sequential round trips per path length,
//! delivery from one client to another, and acknowledged stores per second under concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pair::Pair;
use allium_client::identity::Identity;
use allium_client::onion::{Hop, OnionClient, hop};
use allium_onion::{Epoch, SizeClass};
use allium_proto::roster::{NodeEntry, Roster};
use allium_proto::storage::{CursorKey, INBOX, RetrieveRequest, StoreRequest};
use allium_proto::{Body, Mailbox, Method, Request, Response, ResponseBody, Status};
use allium_swarm::stage::now_us;
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};

use crate::floor::cpu_time;
use crate::stats::Latencies;

/// Bound on one request's round trip; a long-poll adds its wait.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Stored messages live this long: past the run, short enough not to pile up on a kept devnet.
const TTL_MS: u64 = 600_000;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Strictly increasing signing timestamps: two signed requests in the same millisecond would
/// otherwise be byte-identical, and the node would refuse the second as a replay.
#[derive(Debug, Default)]
pub struct Stamp(AtomicU64);

impl Stamp {
    pub fn next(&self) -> u64 {
        let now = now_ms();
        let prev = self.0.fetch_max(now, Ordering::Relaxed);
        if prev >= now {
            self.0.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            now
        }
    }
}

/// The roster with every node resolved to a hop at the current epoch.
#[derive(Debug)]
pub struct Net {
    pub roster: Roster,
    hops: Vec<Hop>,
}

impl Net {
    pub fn new(roster: Roster, epoch: Epoch) -> Result<Net, String> {
        let hops = roster
            .nodes()
            .iter()
            .map(|n| hop(n, epoch).ok_or_else(|| "a node has no onion key for this epoch".into()))
            .collect::<Result<Vec<_>, String>>()?;
        if hops.len() < 4 {
            return Err(format!(
                "the network has {} nodes; a 3-relay path needs 4",
                hops.len()
            ));
        }
        Ok(Net { roster, hops })
    }

    fn hop_of(&self, node: &NodeEntry) -> Option<Hop> {
        self.hops
            .iter()
            .find(|h| h.identity == node.identity)
            .cloned()
    }

    /// The members of `mailbox`'s swarm.
    pub fn members(&self, mailbox: &Mailbox) -> Vec<Hop> {
        self.roster
            .members_for(mailbox)
            .into_iter()
            .filter_map(|n| self.hop_of(n))
            .collect()
    }

    /// `relays` relays taken in roster order starting at `offset`, none of them `dest`,
    /// followed by `dest`.
    pub fn path(&self, relays: usize, offset: usize, dest: &Hop) -> Vec<Hop> {
        let others: Vec<&Hop> = self
            .hops
            .iter()
            .filter(|h| h.identity != dest.identity)
            .collect();
        let mut path: Vec<Hop> = (0..relays)
            .filter_map(|i| {
                others
                    .get((offset + i) % others.len().max(1))
                    .copied()
                    .cloned()
            })
            .collect();
        path.push(dest.clone());
        path
    }

    /// A random 3-relay path ending at a member of `mailbox`'s swarm (chosen by `pick`).
    fn random_path(&self, mailbox: &Mailbox, pick: u32) -> Option<Vec<Hop>> {
        let members = self.members(mailbox);
        let dest = members.get(pick as usize % members.len().max(1))?.clone();
        let mut others: Vec<&Hop> = self
            .hops
            .iter()
            .filter(|h| h.identity != dest.identity)
            .collect();
        let mut path = Vec::with_capacity(4);
        for _ in 0..3 {
            if others.is_empty() {
                return None;
            }
            let i = OsRng.next_u32() as usize % others.len();
            path.push(others.swap_remove(i).clone());
        }
        path.push(dest);
        Some(path)
    }
}

/// Sends `request` along `path` and decodes the destination's answer.
pub async fn call(
    client: &OnionClient,
    path: &[Hop],
    request: &[u8],
    method: Method,
    reply: SizeClass,
    timeout: Duration,
) -> Result<Response, String> {
    let body = client
        .send(path, request, reply, timeout)
        .await
        .map_err(|e| e.to_string())?;
    Response::decode(&body, method).map_err(|e| format!("undecodable response: {e}"))
}

pub fn store_request(mailbox: Mailbox, data: Vec<u8>) -> Vec<u8> {
    Request::unsigned(Body::Store(StoreRequest {
        mailbox,
        namespace: INBOX,
        ttl_ms: TTL_MS,
        data,
        token: None,
    }))
    .encode()
}

/// Whether `r` acknowledges a store held by a majority of a swarm of `swarm` members.
pub fn acknowledged(r: Result<Response, String>, swarm: usize) -> Result<(), String> {
    match r?.result {
        Ok(ResponseBody::Store(s)) if s.holders.len() > swarm / 2 => Ok(()),
        Ok(ResponseBody::Store(s)) => Err(format!(
            "acknowledged by {} of {swarm} members only",
            s.holders.len()
        )),
        Ok(other) => Err(format!("unexpected answer {:?}", other.method())),
        Err(status) => Err(format!("status {status:?}")),
    }
}

/// Distinct contents, so every store is a new message rather than a deduplicated one.
pub fn message(size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size.max(16)];
    OsRng.fill_bytes(&mut data[..16]);
    data
}

/// A timed series of sequential requests.
#[derive(Debug)]
pub struct Series {
    pub latencies: Latencies,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Runs `op` `warmup` times untimed (errors tolerated: nodes may still be syncing), then `n`
/// times timed. A failed timed request is counted, not timed.
async fn series(
    label: &str,
    template: &Latencies,
    warmup: usize,
    n: usize,
    mut op: impl AsyncFnMut() -> Result<(), String>,
) -> Result<Series, String> {
    let mut warm_errors = 0;
    let mut warmed = 0;
    while warmed < warmup {
        match op().await {
            Ok(()) => warmed += 1,
            Err(e) => {
                warm_errors += 1;
                if warm_errors > 100 + warmup {
                    return Err(format!("{label}: warm-up keeps failing: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut s = Series {
        latencies: template.fresh(),
        errors: 0,
        first_error: None,
    };
    let step = (n / 20).max(1);
    for i in 0..n {
        let t = Instant::now();
        match op().await {
            Ok(()) => s.latencies.record(t.elapsed()),
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert(e);
            }
        }
        if i % step == 0 || i + 1 == n {
            eprint!(
                "\r  {label:<28} {:>6}/{n}  p50 {:>7.3} ms",
                i + 1,
                s.latencies.ms(0.5)
            );
        }
    }
    eprintln!();
    if s.errors * 10 > n as u64 {
        return Err(format!(
            "{label}: {} of {n} requests failed, first: {}",
            s.errors,
            s.first_error.as_deref().unwrap_or("?")
        ));
    }
    Ok(s)
}

/// Sequential stores through `relays` relays to a member of `who`'s swarm.
#[allow(clippy::too_many_arguments)]
pub async fn store_series(
    net: &Net,
    client: &OnionClient,
    who: &Identity,
    relays: usize,
    size: usize,
    warmup: usize,
    n: usize,
    template: &Latencies,
) -> Result<Series, String> {
    let mailbox = Mailbox::from_bytes(who.public().to_bytes());
    let members = net.members(&mailbox);
    let dest = members.first().ok_or("no swarm for the mailbox")?;
    let path = net.path(relays, 0, dest);
    let swarm = members.len();
    let label = format!("store, {relays} relay(s)");
    series(&label, template, warmup, n, async || {
        let r = call(
            client,
            &path,
            &store_request(mailbox, message(size)),
            Method::Store,
            SizeClass::Small,
            TIMEOUT,
        )
        .await;
        acknowledged(r, swarm)
    })
    .await
}

pub fn retrieve_request(
    key: &SigningKey,
    dest: &Hop,
    stamp: &Stamp,
    after: Option<CursorKey>,
    limit: u16,
    wait_ms: Option<u64>,
) -> Vec<u8> {
    Request::signed(
        Body::Retrieve(RetrieveRequest {
            mailbox: Mailbox::from_bytes(key.verifying_key().to_bytes()),
            namespace: INBOX,
            after,
            limit: Some(limit),
            wait_ms,
        }),
        key,
        &dest.identity.node_id(),
        stamp.next(),
    )
    .encode()
}

/// Sequential signed retrieves of one message (the mailbox's oldest) through `relays` relays.
#[allow(clippy::too_many_arguments)]
pub async fn retrieve_series(
    net: &Net,
    client: &OnionClient,
    who: &Identity,
    relays: usize,
    warmup: usize,
    n: usize,
    template: &Latencies,
    stamp: &Stamp,
) -> Result<Series, String> {
    let key = SigningKey::from_bytes(&who.seed());
    let mailbox = Mailbox::from_bytes(key.verifying_key().to_bytes());
    let dest = net
        .members(&mailbox)
        .first()
        .cloned()
        .ok_or("no swarm for the mailbox")?;
    let path = net.path(relays, 0, &dest);
    let label = format!("retrieve, {relays} relay(s)");
    series(&label, template, warmup, n, async || {
        let request = retrieve_request(&key, &dest, stamp, None, 1, None);
        let r = call(
            client,
            &path,
            &request,
            Method::Retrieve,
            SizeClass::Small,
            TIMEOUT,
        )
        .await?;
        match r.result {
            Ok(ResponseBody::Retrieve(m)) if !m.messages.is_empty() => Ok(()),
            Ok(_) => Err("the mailbox is empty".into()),
            Err(Status::Syncing) => Err("the member is still syncing".into()),
            Err(s) => Err(format!("status {s:?}")),
        }
    })
    .await
}

/// Delivery: B long-polls its mailbox at a member of its swarm through 3 relays; A seals an
/// envelope to B and stores it at the same member through 3 other-ordered relays. Timed from
/// A starting to seal to B having opened it.
#[derive(Debug)]
pub struct Delivery {
    pub latency: Series,
    /// A's acknowledged send alone (seal and quorum store), in the same iterations.
    pub send: Latencies,
    /// Polls that came back empty (their wait ran out) and were re-issued.
    pub repolls: u64,
    /// This process's steps of each timed delivery, for the stage breakdown.
    pub marks: Vec<Marks>,
}

/// Wall-clock microseconds (the clock of the nodes' stage marks, `allium_swarm::stage`) of one
/// timed delivery's steps in this process.
#[derive(Debug, Clone, Copy)]
pub struct Marks {
    /// A starts to seal.
    pub start: u64,
    /// A's envelope is sealed; its packet is built next.
    pub sealed: u64,
    /// A holds the acknowledgement (the swarm's quorum).
    pub acked: u64,
    /// B holds the answer of the poll that carried the envelope (layers opened, decoded).
    pub received: u64,
    /// B has opened and decrypted the envelope.
    pub opened: u64,
}

/// How long B's poll waits: below the relays' forward time-out (2 s on a devnet), so a poll
/// that sees nothing comes back empty instead of as a time-out.
const POLL_WAIT_MS: u64 = 1_500;
/// Time for B's poll to reach the member and park before A sends; not part of the latency.
const PARK: Duration = Duration::from_millis(15);

pub async fn delivery(
    net: &Net,
    a: &OnionClient,
    b: &OnionClient,
    warmup: usize,
    n: usize,
    template: &Latencies,
    stamp: &Stamp,
) -> Result<Delivery, String> {
    let pair = Pair::new(now_ms()).map_err(|e| e.to_string())?;
    let bob_key = SigningKey::from_bytes(&pair.bob.account.seed());
    let bob_mailbox = Mailbox::from_bytes(pair.bob.account.public().to_bytes());
    let members = net.members(&bob_mailbox);
    let member = members.first().cloned().ok_or("no swarm for B's mailbox")?;
    let swarm = members.len();
    let path_b = net.path(3, 0, &member);
    // A's relays start elsewhere in the roster, so the two paths share as little as it allows.
    let path_a = net.path(3, 3, &member);

    let mut out = Delivery {
        latency: Series {
            latencies: template.fresh(),
            errors: 0,
            first_error: None,
        },
        send: template.fresh(),
        repolls: 0,
        marks: Vec::with_capacity(n),
    };
    // Alice seals while Bob's poll opens: one lock, held only for each step, never across an
    // await.
    let pair = std::sync::Mutex::new(pair);
    let (sealer, opener) = (&pair, &pair);
    let mut cursor: Option<CursorKey> = None;
    let step = (n / 20).max(1);
    let mut failures = 0u64;
    let mut i = 0usize;
    while i < warmup + n {
        let mut marker = [0u8; 16];
        OsRng.fill_bytes(&mut marker);
        let mut body = vec![0u8; 256];
        body[..16].copy_from_slice(&marker);

        let poll = async {
            let deadline = Instant::now() + TIMEOUT;
            let mut repolls = 0u64;
            let mut after = cursor;
            loop {
                if Instant::now() > deadline {
                    return Err("B never received the envelope".to_string());
                }
                let request =
                    retrieve_request(&bob_key, &member, stamp, after, 4, Some(POLL_WAIT_MS));
                let r = call(
                    b,
                    &path_b,
                    &request,
                    Method::Retrieve,
                    SizeClass::Small,
                    TIMEOUT + Duration::from_millis(POLL_WAIT_MS),
                )
                .await?;
                let page = match r.result {
                    Ok(ResponseBody::Retrieve(page)) => page,
                    Err(Status::Syncing) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(s) => return Err(format!("B's poll: status {s:?}")),
                    Ok(_) => return Err("B's poll: unexpected answer".into()),
                };
                let received = now_us();
                let mut found = None;
                for m in &page.messages {
                    after = Some(m.key());
                    if let Ok(text) = opener.lock().map_err(|_| "lock")?.open(&m.data, now_ms()) {
                        if text.get(..16) == Some(&marker[..]) {
                            found = Some((Instant::now(), received, now_us()));
                        }
                    }
                }
                match found {
                    Some(t) => return Ok((t, after, repolls)),
                    None => repolls += 1,
                }
            }
        };
        let send = async {
            tokio::time::sleep(PARK).await;
            let t0 = Instant::now();
            let start = now_us();
            let sealed = sealer
                .lock()
                .map_err(|_| "lock")?
                .seal(&body, now_ms())
                .map_err(|e| e.to_string())?;
            let sealed_at = now_us();
            let r = call(
                a,
                &path_a,
                &store_request(bob_mailbox, sealed),
                Method::Store,
                SizeClass::Small,
                TIMEOUT,
            )
            .await;
            acknowledged(r, swarm)?;
            Ok::<_, String>((t0, t0.elapsed(), start, sealed_at, now_us()))
        };
        let (received, sent) = tokio::join!(poll, send);
        match (received, sent) {
            (
                Ok(((t_open, received, opened), after, repolls)),
                Ok((t0, ack, start, sealed, acked)),
            ) => {
                cursor = after;
                if i >= warmup {
                    out.latency
                        .latencies
                        .record(t_open.saturating_duration_since(t0));
                    out.send.record(ack);
                    out.repolls += repolls;
                    out.marks.push(Marks {
                        start,
                        sealed,
                        acked,
                        received,
                        opened,
                    });
                }
                i += 1;
            }
            (r, s) => {
                let e = r.err().or(s.err()).unwrap_or_default();
                failures += 1;
                if i >= warmup {
                    out.latency.errors += 1;
                    out.latency.first_error.get_or_insert(e.clone());
                    i += 1;
                }
                if failures > 20 + (n as u64) / 10 {
                    return Err(format!("delivery keeps failing: {e}"));
                }
                // Skip whatever is in the mailbox now: a late envelope must not match later.
                cursor = Some(CursorKey::after_time(now_ms()));
            }
        }
        if i > warmup && ((i - warmup) % step == 0 || i == warmup + n) {
            eprint!(
                "\r  {:<28} {:>6}/{n}  p50 {:>7.3} ms",
                "delivery, 3 + 3 relays",
                i - warmup,
                out.latency.latencies.ms(0.5)
            );
        }
    }
    eprintln!();
    Ok(out)
}

/// Acknowledged stores per second at one concurrency.
#[derive(Debug)]
pub struct Throughput {
    pub concurrency: usize,
    pub seconds: f64,
    pub acknowledged: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies: Latencies,
    /// CPU time of every process of the run (the nodes and this one) over the window.
    pub cpu: Option<Duration>,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.acknowledged as f64 / self.seconds.max(1e-9)
    }

    /// CPU time, all processes together, per acknowledged store.
    pub fn cpu_per_store(&self) -> Option<Duration> {
        let n = u32::try_from(self.acknowledged).ok().filter(|&n| n > 0)?;
        Some(self.cpu? / n)
    }
}

/// `concurrency` tasks, each storing distinct messages to random mailboxes back to back
/// through random 3-relay paths, sharing `clients` round-robin. Counts the stores acknowledged
/// inside the measuring window (after `warmup`, for `duration`), and the CPU time `processes`
/// (with this one) used in it.
#[allow(clippy::too_many_arguments)]
pub async fn throughput(
    net: &Arc<Net>,
    clients: &[Arc<OnionClient>],
    concurrency: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    template: &Latencies,
    processes: &[u32],
) -> Result<Throughput, String> {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let client = clients
            .get(t % clients.len().max(1))
            .cloned()
            .ok_or("no client")?;
        let net = net.clone();
        let mut hist = template.fresh();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut k = t as u32;
            while Instant::now() < end {
                let mut mb = [0u8; 32];
                OsRng.fill_bytes(&mut mb);
                let mailbox = Mailbox::from_bytes(mb);
                k = k.wrapping_add(1);
                let Some(path) = net.random_path(&mailbox, k) else {
                    return (hist, ok, errors + 1, Some("no path".to_string()));
                };
                let swarm = net.members(&mailbox).len();
                let request = store_request(mailbox, message(size));
                let sent = Instant::now();
                let r = call(
                    &client,
                    &path,
                    &request,
                    Method::Store,
                    SizeClass::Small,
                    TIMEOUT,
                )
                .await;
                let done = Instant::now();
                let r = acknowledged(r, swarm);
                if done < start || done > end {
                    continue;
                }
                match r {
                    Ok(()) => {
                        ok += 1;
                        hist.record(done - sent);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, ok, errors, first_error)
        }));
    }
    let mut out = Throughput {
        concurrency,
        seconds: duration.as_secs_f64(),
        acknowledged: 0,
        errors: 0,
        first_error: None,
        latencies: template.fresh(),
        cpu: None,
    };
    let label = format!("throughput, concurrency {concurrency}");
    let pids: Vec<u32> = processes
        .iter()
        .copied()
        .chain([std::process::id()])
        .collect();
    let cpu = || -> Option<Duration> { pids.iter().map(|&p| cpu_time(p)).sum() };
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = cpu();
    while Instant::now() < end {
        // Never past the window's end: its CPU time is read there.
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_millis(250).min(left)).await;
        let phase = if Instant::now() < start {
            "warm-up"
        } else {
            "measuring"
        };
        eprint!(
            "\r  {label:<28} {phase:<9} {:>4.1} s left",
            end.saturating_duration_since(Instant::now()).as_secs_f64()
        );
    }
    out.cpu = cpu().zip(cpu_start).map(|(b, a)| b.saturating_sub(a));
    for task in tasks {
        let (hist, ok, errors, first) = task.await.map_err(|e| e.to_string())?;
        out.latencies.add(&hist);
        out.acknowledged += ok;
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first;
        }
    }
    eprintln!(
        "\r  {label:<28} {:>8.0} stores/s, p50 {:.3} ms, {} errors",
        out.per_second(),
        out.latencies.ms(0.5),
        out.errors
    );
    Ok(out)
}
