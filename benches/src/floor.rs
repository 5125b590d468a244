//! The floor: the primitives a request cannot avoid, measured in the same run as the network,
//! and the least time a request can take when it does nothing but them.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pair::Pair;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use allium_link::{Deadlines, Handler, Kind, Link, LinkLimits, Peer, Status, TlsIdentity};
use allium_onion::{
    Epoch, IdentityKeypair, IdentityPublicKey, NodeId, OnionSecretKey, PathHop, SizeClass,
    build_packet, peel,
};
use rand_core::OsRng;
use serde_json::{Value, json};

use crate::stats::median;

/// Bytes of a small onion packet, and of the small reply class.
pub const PACKET: usize = SizeClass::Small.size();

/// Median cost of each primitive, and of the onion operations built from them (for reference).
#[derive(Debug, Clone, Copy)]
pub struct Primitives {
    /// One X25519 scalar multiplication.
    pub x25519: Duration,
    /// AES-256-GCM over one small packet (4096 B), key set-up included (every layer has its
    /// own key).
    pub aead: Duration,
    /// One request-response over a warm loopback QUIC connection, 4096 B each way.
    pub rtt: Duration,
    /// One 1 KiB RocksDB put with `sync = true`, on the disk the nodes use.
    pub synced_write: Duration,
    /// CPU time (both ends) of one such round trip, 16 in flight: what the link costs a hop
    /// to receive a packet and send it on, and the same for its reply.
    pub link_cpu: Duration,
    /// Building a 4-layer small packet (reference, not part of the floor).
    pub build4: Duration,
    /// Peeling one layer of a small packet (reference).
    pub peel: Duration,
    /// Opening a sealed envelope (reference, part of the delivery floor).
    pub envelope_open: Duration,
    /// Samples behind each median.
    pub samples: [usize; 7],
}

impl Primitives {
    /// The least time a store through `relays` relays (`relays + 1` layers) can take:
    ///
    /// client build `L·(X + A)` + one peel per hop `L·(X + A)` + one reply layer sealed or
    /// wrapped per hop and opened by the client `2L·A` + one link round trip per hop `L·R` +
    /// the quorum `R + W`.
    ///
    /// The quorum term: the destination starts its own synced write and the copy to a peer at
    /// the same moment; a majority of a 3-member swarm is the destination and one peer, so the
    /// acknowledgement waits for `max(W, R + W) = R + W`.
    pub fn store_floor(&self, relays: usize) -> Duration {
        self.request_floor(relays) + self.rtt + self.synced_write
    }

    /// The least time a retrieve can take: the onion path alone (the read is in memory, and
    /// taken as free).
    pub fn retrieve_floor(&self, relays: usize) -> Duration {
        self.request_floor(relays)
    }

    /// The least CPU time, summed over every process, an acknowledged store through `relays`
    /// relays needs: the layers' crypto as in [`Primitives::store_floor`], and the link's work
    /// for each hop and for the copy to the one peer a majority needs, `(L + 1)·Lcpu`. The
    /// synced writes wait for the disk rather than use the CPU, and are not counted.
    pub fn store_cpu_floor(&self, relays: usize) -> Duration {
        let l = (relays + 1) as u32;
        (self.x25519 + self.aead) * 2 * l + self.aead * 2 * l + self.link_cpu * (l + 1)
    }

    fn request_floor(&self, relays: usize) -> Duration {
        let l = (relays + 1) as u32;
        (self.x25519 + self.aead) * 2 * l + self.aead * 2 * l + self.rtt * l
    }

    /// The least time from A's send to B's opened envelope, both on 3-relay paths, B's
    /// long-poll parked at the member A stores to: A's packet travels four one-way hops
    /// (`2R`), the member writes (`W`, B is woken by the local write, not the quorum), the
    /// reply travels four one-way hops back to B (`2R`), plus all layers' crypto on both
    /// packets and the envelope's open.
    pub fn delivery_floor(&self) -> Duration {
        let l = 4u32;
        (self.x25519 + self.aead) * 2 * l
            + self.aead * 2 * l
            + self.rtt * l
            + self.synced_write
            + self.envelope_open
    }

    pub fn to_json(self) -> Value {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        json!({
            "x25519_us": us(self.x25519),
            "aes256gcm_4096B_us": us(self.aead),
            "quic_loopback_rtt_4096B_us": us(self.rtt),
            "rocksdb_synced_put_1KiB_us": us(self.synced_write),
            "quic_loopback_round_trip_cpu_4096B_us": us(self.link_cpu),
            "reference": {
                "build_packet_4_layers_small_us": us(self.build4),
                "peel_one_layer_small_us": us(self.peel),
                "envelope_open_us": us(self.envelope_open),
            },
            "samples": {
                "x25519": self.samples[0],
                "aead": self.samples[1],
                "rtt": self.samples[2],
                "synced_write": self.samples[3],
                "build4": self.samples[4],
                "peel": self.samples[5],
                "envelope_open": self.samples[6],
            },
            "model": {
                "store_floor": "L·(X+A) build + L·(X+A) peels + 2L·A reply layers + L·R hops + R + W quorum (own write in parallel with the copy to one peer), L = relays + 1",
                "retrieve_floor": "L·(X+A) + L·(X+A) + 2L·A + L·R",
                "delivery_floor": "both packets' layers (8·(X+A) + 8·A) + 2R out + W + 2R back + envelope open",
            },
        })
    }
}

/// Median per-operation time of `op` over `rounds` rounds of `per` calls, and the calls timed.
fn timed(rounds: usize, per: u32, mut op: impl FnMut()) -> (Duration, usize) {
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..per {
        op();
    }
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per {
            op();
        }
        v.push(t.elapsed() / per);
    }
    (median(&mut v), rounds * per as usize)
}

/// Answers every request with a packet-sized body, as a relay answers with a reply.
#[derive(Debug)]
struct Echo;

impl Handler for Echo {
    type ConnectionGuard = ();

    fn is_peer(&self, _identity: &IdentityPublicKey) -> bool {
        false
    }

    fn connected(&self, _peer: &Peer) {}

    async fn handle(&self, _peer: &Peer, _kind: Kind, body: Vec<u8>) -> (Status, Vec<u8>) {
        (Status::Ok, body)
    }
}

/// Runs `f` on a warm client connection to an echo server on loopback (both in this process,
/// with the node's own link code), then closes both.
async fn with_echo<T, F, Fut>(f: F) -> Result<T, String>
where
    F: FnOnce(Arc<quinn::Connection>) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let e = |e: allium_link::LinkError| e.to_string();
    let keys = IdentityKeypair::generate(&mut OsRng);
    let public = keys.public();
    let tls = Arc::new(TlsIdentity::new(&keys).map_err(e)?);
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = Arc::new(Link::bind_node(loopback, tls, LinkLimits::default()).map_err(e)?);
    let addr = server.local_addr().map_err(e)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .serve(
                    Arc::new(Echo),
                    async {
                        let _ = stopped.await;
                    },
                    Duration::from_millis(100),
                )
                .await;
        })
    };
    let client = Link::bind_client(loopback, LinkLimits::default()).map_err(e)?;
    let conn = Arc::new(client.connect(addr, &public).await.map_err(e)?);
    let out = f(conn.clone()).await;
    conn.close(0u32.into(), b"done");
    client.shutdown().await;
    let _ = stop.send(());
    let _ = serving.await;
    out
}

/// One packet-sized request and its packet-sized answer on `conn`.
async fn echo_round_trip(conn: &quinn::Connection) -> Result<(), String> {
    let body = vec![0x5a; PACKET];
    let deadlines = Deadlines::uniform(Duration::from_secs(5));
    let (status, answer) = allium_link::request(conn, Kind::Onion, &body, deadlines)
        .await
        .map_err(|e| e.to_string())?;
    if status != Status::Ok || answer.len() != PACKET {
        return Err("the echo server answered wrongly".into());
    }
    Ok(())
}

async fn quic_rtt(samples: usize) -> Result<(Duration, usize), String> {
    with_echo(|conn| async move {
        let mut v = Vec::with_capacity(samples);
        for i in 0..samples + samples / 5 {
            let t = Instant::now();
            echo_round_trip(&conn).await?;
            // The first fifth warms the connection's congestion window and the caches.
            if i >= samples / 5 {
                v.push(t.elapsed());
            }
        }
        Ok((median(&mut v), samples))
    })
    .await
}

/// CPU time this process spends per packet-sized round trip over a warm loopback connection,
/// `in_flight` at once: a send and a receive on each side, as a relay receives a packet and
/// sends it on, then receives the reply and sends it back. Read from the process's CPU clock,
/// so it counts the link's tasks, wake-ups and system calls, not the waiting.
pub async fn quic_round_trip_cpu(round_trips: usize, in_flight: usize) -> Result<Duration, String> {
    with_echo(|conn| async move {
        let run = |n: usize| {
            let tasks: Vec<_> = (0..in_flight)
                .map(|_| {
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        for _ in 0..n / in_flight.max(1) {
                            echo_round_trip(&conn).await?;
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            async move {
                for t in tasks {
                    t.await.map_err(|e| e.to_string())??;
                }
                Ok::<(), String>(())
            }
        };
        run(round_trips / 5).await?;
        let before = cpu_time(std::process::id()).ok_or("no CPU time for this process")?;
        run(round_trips).await?;
        let used = cpu_time(std::process::id()).ok_or("no CPU time for this process")? - before;
        let done = (round_trips / in_flight.max(1) * in_flight.max(1)).max(1);
        Ok(used / u32::try_from(done).unwrap_or(u32::MAX))
    })
    .await
}

/// User and system CPU time of process `pid` so far, all its threads included (`/proc/PID/stat`,
/// in clock ticks of 10 ms: callers measure over seconds).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, field 2, is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / clock_ticks()))
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on Linux in practice).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

fn synced_write(dir: &Path, samples: usize) -> Result<(Duration, usize), String> {
    let tmp =
        tempfile::tempdir_in(dir).map_err(|e| format!("temp dir in {}: {e}", dir.display()))?;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let db = rocksdb::DB::open(&opts, tmp.path()).map_err(|e| e.to_string())?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let value = vec![0x5a; 1024];
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples + samples / 5 {
        let t = Instant::now();
        db.put_opt((i as u64).to_be_bytes(), &value, &wo)
            .map_err(|e| e.to_string())?;
        if i >= samples / 5 {
            v.push(t.elapsed());
        }
    }
    Ok((median(&mut v), samples))
}

/// The floor's crypto primitives, medians with their sample counts: the X25519 a relay makes to
/// peel a layer (its onion key with a sender's ephemeral key, on the backend the onion crate
/// uses), and AES-256-GCM over one small packet with its key set-up.
pub fn crypto() -> ((Duration, usize), (Duration, usize)) {
    let mut rng = OsRng;
    let onion_key = OnionSecretKey::generate(Epoch(1), &mut rng);
    let ephemeral = *allium_onion::EphemeralSecret::generate(&mut rng).public();
    let x25519 = timed(200, 50, || {
        let shared = allium_onion::trace::onion_key_agreement(black_box(&onion_key), &ephemeral);
        black_box(shared.is_ok());
    });
    let mut buf = vec![0u8; PACKET];
    let key = [7u8; 32];
    let aead = timed(200, 20, || {
        let cipher = Aes256Gcm::new(black_box(&key).into());
        let tag =
            cipher.encrypt_in_place_detached(&Nonce::default(), b"", black_box(buf.as_mut_slice()));
        black_box(tag.is_ok());
    });
    (x25519, aead)
}

/// Measures every primitive. `dir` is on the disk the nodes write to.
pub async fn measure(dir: &Path) -> Result<Primitives, String> {
    let mut rng = OsRng;
    let ((x25519, nx), (aead, na)) = crypto();
    let (synced_write, nw) = synced_write(dir, 500)?;
    let (rtt, nr) = quic_rtt(2000).await?;
    let link_cpu = quic_round_trip_cpu(20_000, 16).await?;

    // Reference: the onion operations themselves, to see how far they are from their parts.
    let epoch = Epoch(1);
    let secrets: Vec<OnionSecretKey> = (0..4)
        .map(|_| OnionSecretKey::generate(epoch, &mut rng))
        .collect();
    let path: Vec<PathHop> = secrets
        .iter()
        .map(|s| PathHop {
            node: NodeId::from(&IdentityKeypair::generate(&mut rng).public()),
            epoch,
            onion_key: *s.public(),
        })
        .collect();
    let request = vec![7u8; 1100];
    let (build4, nb) = timed(100, 5, || {
        black_box(
            build_packet(
                &mut rng,
                &path,
                &request,
                SizeClass::Small,
                SizeClass::Small,
            )
            .is_ok(),
        );
    });
    let packets: Vec<Vec<u8>> = (0..600)
        .filter_map(|_| {
            build_packet(
                &mut rng,
                &path,
                &request,
                SizeClass::Small,
                SizeClass::Small,
            )
            .ok()
            .map(|b| b.packet)
        })
        .collect();
    let mut peels = Vec::with_capacity(packets.len());
    for mut p in packets {
        let t = Instant::now();
        black_box(peel(&secrets[0], &mut p, |_, _| true).is_ok());
        peels.push(t.elapsed());
    }
    let np = peels.len();
    let peel = median(&mut peels);

    // A ratchet message of an established session, opened and decrypted: each round opens a
    // fresh one (a message key opens once), sealed outside the timing.
    let mut pair = Pair::new(1).map_err(|e| e.to_string())?;
    let mut opens = Vec::with_capacity(100);
    for _ in 0..105 {
        let sealed = pair.seal(&[1u8; 256], 1).map_err(|e| e.to_string())?;
        let t = Instant::now();
        black_box(pair.open(&sealed, 1).is_ok());
        opens.push(t.elapsed());
    }
    let ne = opens.len();
    let envelope_open = median(&mut opens);

    Ok(Primitives {
        x25519,
        aead,
        rtt,
        synced_write,
        link_cpu,
        build4,
        peel,
        envelope_open,
        samples: [nx, na, nr, nw, nb, np, ne],
    })
}
