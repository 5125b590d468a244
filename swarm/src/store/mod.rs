//! The RocksDB mailbox store (whitepaper §5–§6).
//!
//! Reads run on the caller's thread against the database. Every write goes through one writer
//! thread, which drains the queue, applies each operation to an overlay over the database (so a
//! group sees its own effects), writes the group as one atomic `WriteBatch` with a synced WAL, and
//! only then answers the callers: group commit, one fsync for many stores.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode,
    Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use allium_proto::crypto;
pub mod error;

use allium_proto::storage::{
    CursorKey, MAX_DATA_BYTES, Mailbox, MessageHash, Namespace, StoreResponse, StoredMessage,
};
use allium_proto::sync::{
    Digests, ENTRY_KEY_LEN, Entry, EntryKey, EntryState, Item, ItemMessage, Plan,
};
use allium_proto::time::{Clock, UnixMillis};
use error::StoreError;

/// Bytes charged against quota and cap per message on top of its data (keys, indexes, value
/// header), so that many tiny messages cannot evade the byte limits.
pub const MESSAGE_OVERHEAD: u64 = 128;
/// Longest a writer waits to fill a group as large as the previous one (see `Writer::run`).
const GATHER: Duration = Duration::from_micros(200);
/// Schema version written to `meta/schema`.
pub const SCHEMA_VERSION: u32 = 2;

const CF_MSG: &str = "msg";
const CF_HASH: &str = "hash";
const CF_EXP: &str = "exp";
const CF_USAGE: &str = "usage";
const CF_META: &str = "meta";
const META_SCHEMA: &[u8] = b"schema";
const META_TOTAL: &[u8] = b"total";
const META_CLOCK: &[u8] = b"clock";
const CF_TOMB: &str = "tomb";
const VALUE_VERSION: u8 = 2;

/// Store limits and tuning.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Shortest TTL accepted (default 10 s).
    pub ttl_min_ms: u64,
    /// Longest TTL accepted, and longest `expire` extension (default 14 days).
    pub ttl_max_ms: u64,
    /// Bytes one mailbox may hold, all namespaces together (data + [`MESSAGE_OVERHEAD`] each).
    pub mailbox_quota_bytes: u64,
    /// Bytes the node holds in total before answering "full".
    pub node_cap_bytes: u64,
    /// Most operations written in one synced batch.
    pub max_group: usize,
    /// Operations queued for the writer before callers block.
    pub queue_len: usize,
    /// Long-poll waiters allowed at once.
    pub max_waiters: usize,
    /// The cursor overlap D + S (whitepaper §8): replication bound plus clock-skew bound. A
    /// replica arriving more than this after its timestamp is filed at `now - overlap` instead,
    /// so that clients polling this member still see it.
    pub overlap_ms: u64,
    /// Free space the file system must keep: below it new messages are refused with "full",
    /// so that RocksDB never runs out of space and deletes, expiries and its own compactions
    /// (which free space) still work.
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            ttl_min_ms: 10_000,
            ttl_max_ms: 14 * 24 * 3_600_000,
            mailbox_quota_bytes: 16 << 20,
            node_cap_bytes: 4 << 30,
            max_group: 256,
            queue_len: 4_096,
            max_waiters: 4_096,
            overlap_ms: 30_000,
            min_free_bytes: 64 << 20,
        }
    }
}

/// A message to deposit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Recipient mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
    /// Time to live, ms.
    pub ttl_ms: u64,
    /// Message bytes.
    pub data: Vec<u8>,
}

/// What to read.
#[derive(Debug, Clone)]
pub struct RetrieveQuery {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
    /// Exclusive lower bound.
    pub after: Option<CursorKey>,
    /// Most messages.
    pub max_count: usize,
    /// Most encoded message bytes ([`StoredMessage::encoded_len`]); at least one message is
    /// always returned if one is there.
    pub max_bytes: usize,
}

/// A page of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrievePage {
    /// Live messages after the cursor, ascending.
    pub messages: Vec<StoredMessage>,
    /// A limit stopped the page before the last live message.
    pub more: bool,
}

/// Bytes and messages held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Charged bytes (data + [`MESSAGE_OVERHEAD`] per message).
    pub bytes: u64,
    /// Messages held, expired-but-not-yet-swept ones included.
    pub count: u64,
}

impl Usage {
    fn decode(v: Option<Vec<u8>>) -> Result<Self, StoreError> {
        let Some(v) = v else {
            return Ok(Self::default());
        };
        if v.len() != 16 {
            return Err(corrupt("usage value"));
        }
        Ok(Self {
            bytes: be64(&v[..8]),
            count: be64(&v[8..]),
        })
    }
    fn encode(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.bytes.to_be_bytes());
        v.extend_from_slice(&self.count.to_be_bytes());
        v
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("bad {what}"))
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps inconsistent (every update is one statement).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- key and value layouts (whitepaper §6) -------------------------------------------------

/// `mailbox (32) || namespace (u16 BE)`.
fn prefix(mailbox: &Mailbox, ns: Namespace) -> [u8; 34] {
    let mut k = [0u8; 34];
    k[..32].copy_from_slice(mailbox.as_bytes());
    k[32..].copy_from_slice(&ns.to_be_bytes());
    k
}

/// msg key: `prefix || timestamp (u64 BE) || hash (32)`.
fn msg_key(mailbox: &Mailbox, ns: Namespace, ts: UnixMillis, hash: &MessageHash) -> Vec<u8> {
    let mut k = Vec::with_capacity(74);
    k.extend_from_slice(&prefix(mailbox, ns));
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&hash.0);
    k
}

/// exp key: `expiry (u64 BE) || msg key`; value empty.
fn exp_key(expiry: UnixMillis, msg_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + msg_key.len());
    k.extend_from_slice(&expiry.to_be_bytes());
    k.extend_from_slice(msg_key);
    k
}

/// tomb exp key: `until (u64 BE) || entry key`; 74 bytes, where a message's is 82.
fn tomb_exp_key(until: UnixMillis, key: &[u8; ENTRY_KEY_LEN]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + ENTRY_KEY_LEN);
    k.extend_from_slice(&until.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// msg value: `2 || expiry (u64 BE) || set_at (u64 BE) || data`.
fn msg_value(expiry: UnixMillis, set_at: UnixMillis, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + data.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&expiry.to_be_bytes());
    v.extend_from_slice(&set_at.to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// (expiry, set_at, data). Version-1 values (`1 || expiry || data`, schema 1) read with
/// `set_at = 0`: any later setting wins over them.
fn parse_msg_value(v: &[u8]) -> Result<(UnixMillis, UnixMillis, &[u8]), StoreError> {
    match v.first() {
        Some(1) if v.len() >= 9 => Ok((be64(&v[1..9]), 0, &v[9..])),
        Some(2) if v.len() >= 17 => Ok((be64(&v[1..9]), be64(&v[9..17]), &v[17..])),
        _ => Err(corrupt("message value")),
    }
}

/// Splits a msg key into (mailbox, namespace, timestamp, hash).
fn parse_msg_key(k: &[u8]) -> Result<(Mailbox, Namespace, UnixMillis, MessageHash), StoreError> {
    if k.len() != 74 {
        return Err(corrupt("message key"));
    }
    let mut m = [0u8; 32];
    m.copy_from_slice(&k[..32]);
    let ns = u16::from_be_bytes([k[32], k[33]]);
    let mut h = [0u8; 32];
    h.copy_from_slice(&k[42..]);
    Ok((Mailbox::from_bytes(m), ns, be64(&k[34..42]), MessageHash(h)))
}

fn charge(data_len: usize) -> u64 {
    data_len as u64 + MESSAGE_OVERHEAD
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cf {
    Msg,
    Hash,
    Exp,
    Usage,
    Meta,
    Tomb,
}

impl Cf {
    fn name(self) -> &'static str {
        match self {
            Cf::Msg => CF_MSG,
            Cf::Hash => CF_HASH,
            Cf::Exp => CF_EXP,
            Cf::Usage => CF_USAGE,
            Cf::Meta => CF_META,
            Cf::Tomb => CF_TOMB,
        }
    }
}

fn handle(db: &DB, cf: Cf) -> Result<&ColumnFamily, StoreError> {
    db.cf_handle(cf.name())
        .ok_or_else(|| StoreError::Corrupt(format!("missing column family {}", cf.name())))
}

// ---- long-poll waiters --------------------------------------------------------------------

#[derive(Debug, Default)]
struct Slot {
    generation: Mutex<u64>,
    cv: Condvar,
    waiters: AtomicU64,
}

/// Slots by (mailbox, namespace), and the number of registered watches.
type SlotMap = (HashMap<(Mailbox, Namespace), Arc<Slot>>, usize);

#[derive(Debug, Default)]
struct Waiters {
    slots: Mutex<SlotMap>,
    max: usize,
}

impl Waiters {
    fn notify(&self, keys: &HashSet<(Mailbox, Namespace)>) {
        let slots = lock(&self.slots);
        for k in keys {
            if let Some(slot) = slots.0.get(k) {
                *lock(&slot.generation) += 1;
                slot.cv.notify_all();
            }
        }
    }
}

/// A registration for "a new message arrived in this mailbox namespace". Register before reading,
/// then wait: a message stored in between is not missed. Dropping it unregisters.
pub struct Watch {
    waiters: Arc<Waiters>,
    key: (Mailbox, Namespace),
    slot: Arc<Slot>,
    seen: u64,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("namespace", &self.key.1)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// True once a message was stored since the watch was registered.
    pub fn is_notified(&self) -> bool {
        *lock(&self.slot.generation) != self.seen
    }

    /// Blocks until a message is stored or `timeout` passes; true if one was stored.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let g = lock(&self.slot.generation);
        let (g, _) = self
            .slot
            .cv
            .wait_timeout_while(g, timeout, |g| *g == self.seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g != self.seen
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut slots = lock(&self.waiters.slots);
        slots.1 = slots.1.saturating_sub(1);
        if self.slot.waiters.fetch_sub(1, Ordering::SeqCst) == 1 {
            slots.0.remove(&self.key);
        }
    }
}

// ---- writer -------------------------------------------------------------------------------

enum Op {
    // The content hash is computed on the caller's thread, off the writer's critical path.
    Store(NewMessage, MessageHash),
    Replica(ItemMessage, MessageHash),
    Tombstone(EntryKey, UnixMillis),
    SetExpiry {
        key: EntryKey,
        expiry: UnixMillis,
        set_at: UnixMillis,
    },
    Delete {
        mailbox: Mailbox,
        namespace: Namespace,
        hashes: Vec<MessageHash>,
    },
    DeleteAll {
        mailbox: Mailbox,
        namespace: Namespace,
    },
    Expire {
        mailbox: Mailbox,
        namespace: Namespace,
        hashes: Vec<MessageHash>,
        expiry: UnixMillis,
    },
    Forget(Mailbox),
    Sweep {
        limit: usize,
    },
    Shutdown,
}

impl Op {
    /// Operations that iterate the database run on an empty overlay (see `Writer::process`).
    fn iterates(&self) -> bool {
        matches!(
            self,
            Op::DeleteAll { .. } | Op::Sweep { .. } | Op::Forget(_)
        )
    }
}

enum Outcome {
    /// The store result.
    Stored(StoreResponse),
    Deleted(Vec<MessageHash>),
    Count(u64),
    /// Updated (hash, expiry) pairs and the time they were set.
    Expired(Vec<(MessageHash, UnixMillis)>, UnixMillis),
    /// `delete_all`: live messages deleted, and every key buried with its keep-until time.
    DeletedAll(u64, Vec<(EntryKey, UnixMillis)>),
    /// A replication item applied (or already superseded).
    Applied,
}

type Reply = SyncSender<Result<Outcome, StoreError>>;
type KeyValue = (Box<[u8]>, Box<[u8]>);

struct Job {
    op: Op,
    now: UnixMillis,
    reply: Option<Reply>,
}

/// Pending writes of one group, read through before the database, and the change they make to
/// the anti-entropy digests (applied only once the group is durable).
#[derive(Default)]
struct Overlay {
    map: HashMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    /// (bucket, entry digest) to XOR into the digests: a few per operation.
    digests: Vec<(u8, [u8; 32])>,
}

impl Overlay {
    fn get(&self, db: &DB, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.map.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(db.get_cf(handle(db, cf)?, key)?)
    }
    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.map.insert((cf, key), Some(value));
    }
    fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.map.insert((cf, key), None);
    }
    fn toggle(&mut self, key: EntryKey, state: EntryState) {
        self.digests
            .push((key.bucket(), Entry { key, state }.digest()));
    }
}

/// A live message as found by hash.
#[derive(Debug, Clone, Copy)]
struct Held {
    ts: UnixMillis,
    expiry: UnixMillis,
    set_at: UnixMillis,
    len: usize,
}

struct Writer {
    db: Arc<DB>,
    path: PathBuf,
    /// Whether the file system had less than `min_free_bytes` free when last looked at.
    low_space: std::cell::Cell<bool>,
    cfg: StoreConfig,
    high_water: Arc<AtomicU64>,
    waiters: Arc<Waiters>,
    digests: Arc<Mutex<Digests>>,
}

impl Writer {
    fn run(self, rx: Receiver<Job>) {
        let mut group = Vec::with_capacity(self.cfg.max_group);
        let mut last_len = 0;
        loop {
            let Ok(first) = rx.recv() else { return };
            group.push(first);
            while group.len() < self.cfg.max_group {
                match rx.try_recv() {
                    Ok(j) => group.push(j),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // Writers answered by the last sync come back a few microseconds apart; waiting a
            // moment for as many as were in the last group keeps groups from splitting into a
            // large one and a run of tiny ones, each paying a whole sync.
            let want = last_len.min(self.cfg.max_group);
            let deadline = Instant::now() + GATHER;
            while group.len() < want {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(j) => group.push(j),
                    Err(_) => break,
                }
            }
            last_len = group.len();
            if self.process(&mut group) {
                return;
            }
        }
    }

    /// Looks at the file system's free space once per group that adds messages.
    fn check_space(&self, group: &[Job]) {
        if !group
            .iter()
            .any(|j| matches!(j.op, Op::Store(..) | Op::Replica(..)))
        {
            return;
        }
        let free = rustix::fs::statvfs(&self.path)
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
            .unwrap_or(u64::MAX);
        self.low_space.set(free < self.cfg.min_free_bytes);
    }

    /// Applies and commits one group; returns true on shutdown.
    fn process(&self, group: &mut Vec<Job>) -> bool {
        self.check_space(group);
        let mut ov = Overlay::default();
        let mut done: Vec<(Option<Reply>, Outcome)> = Vec::with_capacity(group.len());
        let mut stored = HashSet::new();
        let mut stop = false;
        for job in group.drain(..) {
            if matches!(job.op, Op::Shutdown) {
                stop = true;
                continue;
            }
            if job.op.iterates() && !ov.map.is_empty() {
                self.commit(std::mem::take(&mut ov), &mut done, &mut stored);
            }
            match self.apply(&mut ov, job.op, job.now, &mut stored) {
                Ok(outcome) => done.push((job.reply, outcome)),
                Err(e @ (StoreError::Db(_) | StoreError::Corrupt(_))) => {
                    // A read failed part-way: nothing of this group is written.
                    let msg = e.to_string();
                    for (reply, _) in done.drain(..) {
                        send(reply, Err(StoreError::Corrupt(msg.clone())));
                    }
                    send(job.reply, Err(e));
                    ov = Overlay::default();
                    stored.clear();
                }
                Err(e) => send(job.reply, Err(e)),
            }
        }
        self.commit(ov, &mut done, &mut stored);
        stop
    }

    /// Writes the overlay as one synced batch, then answers and wakes waiters.
    fn commit(
        &self,
        mut ov: Overlay,
        done: &mut Vec<(Option<Reply>, Outcome)>,
        stored: &mut HashSet<(Mailbox, Namespace)>,
    ) {
        let delta = std::mem::take(&mut ov.digests);
        let result = if ov.map.is_empty() {
            Ok(())
        } else {
            self.write(ov)
        };
        match result {
            Ok(()) => {
                if !delta.is_empty() {
                    let mut digests = lock(&self.digests);
                    for (bucket, d) in &delta {
                        digests.xor(*bucket, d);
                    }
                }
                self.waiters.notify(stored);
                for (reply, outcome) in done.drain(..) {
                    send(reply, Ok(outcome));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (reply, _) in done.drain(..) {
                    let err = if msg.contains("No space left") {
                        StoreError::NodeFull
                    } else {
                        StoreError::Corrupt(format!("write failed: {msg}"))
                    };
                    send(reply, Err(err));
                }
            }
        }
        stored.clear();
    }

    fn write(&self, ov: Overlay) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for ((cf, key), value) in ov.map {
            let h = handle(&self.db, cf)?;
            match value {
                Some(v) => batch.put_cf(h, key, v),
                None => batch.delete_cf(h, key),
            }
        }
        let mut wo = WriteOptions::default();
        // The acknowledgement promise: the WAL is fsynced before any caller hears "stored".
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    fn check_expiry(&self, expiry: UnixMillis, now: UnixMillis) -> Result<(), StoreError> {
        if expiry <= now || expiry > now.saturating_add(self.cfg.ttl_max_ms) {
            return Err(StoreError::ExpiryOutOfRange);
        }
        Ok(())
    }

    fn apply(
        &self,
        ov: &mut Overlay,
        op: Op,
        now: UnixMillis,
        stored: &mut HashSet<(Mailbox, Namespace)>,
    ) -> Result<Outcome, StoreError> {
        // Node time never runs backwards for the store (timestamps feed cursors, §7).
        let prev = self.high_water.fetch_max(now, Ordering::SeqCst);
        let now = now.max(prev);
        if now > prev {
            ov.put(Cf::Meta, META_CLOCK.to_vec(), now.to_be_bytes().to_vec());
        }
        match op {
            Op::Store(m, hash) => {
                let (min, max) = (self.cfg.ttl_min_ms, self.cfg.ttl_max_ms);
                if m.ttl_ms < min || m.ttl_ms > max {
                    return Err(StoreError::TtlOutOfRange {
                        ttl_ms: m.ttl_ms,
                        min_ms: min,
                        max_ms: max,
                    });
                }
                let key = EntryKey {
                    mailbox: m.mailbox,
                    namespace: m.namespace,
                    hash,
                };
                let expiry = now.saturating_add(m.ttl_ms);
                if let Some(until) = self.live_tombstone(ov, &key, now)? {
                    // Deleted by its owner: a retried store must not bring it back.
                    return Ok(Outcome::Stored(StoreResponse {
                        hash,
                        timestamp: now,
                        expiry: until,
                        duplicate: true,
                        holders: Vec::new(),
                    }));
                }
                if let Some(old) = self.find(ov, &key)? {
                    if old.expiry > now {
                        // Dedupe: same content is one message; a later expiry wins.
                        let expiry = if expiry > old.expiry {
                            self.set_expiry(ov, &key, old, expiry, now)?;
                            expiry
                        } else {
                            old.expiry
                        };
                        return Ok(Outcome::Stored(StoreResponse {
                            hash,
                            timestamp: old.ts,
                            expiry,
                            duplicate: true,
                            holders: Vec::new(),
                        }));
                    }
                    // Expired but not yet swept: remove it and store afresh.
                    self.remove(ov, &key, old)?;
                }
                self.insert(ov, key, m.data, now, expiry, now, stored)
                    .map(Outcome::Stored)
            }
            Op::Replica(m, hash) => {
                self.check_expiry(m.expiry, now)?;
                let key = EntryKey {
                    mailbox: m.mailbox,
                    namespace: m.namespace,
                    hash,
                };
                if self.live_tombstone(ov, &key, now)?.is_some() {
                    return Ok(Outcome::Applied);
                }
                if let Some(old) = self.find(ov, &key)? {
                    if old.expiry > now {
                        // A copy of a held message only extends it, as a repeated store does
                        // (§5.1); expiry changes travel as expiry items (§9.3).
                        if m.expiry > old.expiry {
                            self.set_expiry(ov, &key, old, m.expiry, m.set_at)?;
                        }
                        return Ok(Outcome::Applied);
                    }
                    self.remove(ov, &key, old)?;
                }
                // A replica arriving late is filed no earlier than `now - overlap`, so that
                // clients whose cursor passed its timestamp still see it (§8).
                let ts = m.timestamp.max(now.saturating_sub(self.cfg.overlap_ms));
                self.insert(ov, key, m.data, ts, m.expiry, m.set_at, stored)?;
                Ok(Outcome::Applied)
            }
            Op::Tombstone(key, until) => {
                if until <= now {
                    return Ok(Outcome::Applied);
                }
                let until = until.min(now.saturating_add(self.cfg.ttl_max_ms));
                self.bury(ov, key, until)?;
                Ok(Outcome::Applied)
            }
            Op::SetExpiry {
                key,
                expiry,
                set_at,
            } => {
                self.check_expiry(expiry, now)?;
                if let Some(old) = self.find(ov, &key)? {
                    let mine = EntryState::Live {
                        expiry: old.expiry,
                        set_at: old.set_at,
                    };
                    if old.expiry > now && mine.superseded_by(EntryState::Live { expiry, set_at }) {
                        self.set_expiry(ov, &key, old, expiry, set_at)?;
                    }
                }
                Ok(Outcome::Applied)
            }
            Op::Delete {
                mailbox,
                namespace,
                hashes,
            } => {
                let mut deleted = Vec::new();
                for key in distinct_keys(mailbox, namespace, hashes) {
                    // A tombstone even for a message not (yet) held here: its replica may
                    // still be on the way, and must not land after the delete.
                    let held = self.bury(ov, key, now.saturating_add(self.cfg.ttl_max_ms))?;
                    if held.is_some_and(|h| h.expiry > now) {
                        deleted.push(key.hash);
                    }
                }
                Ok(Outcome::Deleted(deleted))
            }
            Op::DeleteAll { mailbox, namespace } => {
                let mut count = 0;
                let mut buried = Vec::new();
                for (k, value) in self.scan_prefix(&prefix(&mailbox, namespace))? {
                    let (_, _, _, hash) = parse_msg_key(&k)?;
                    let (exp, _, _) = parse_msg_value(&value)?;
                    let key = EntryKey {
                        mailbox,
                        namespace,
                        hash,
                    };
                    self.bury(ov, key, exp)?;
                    buried.push((key, exp));
                    count += u64::from(exp > now);
                }
                Ok(Outcome::DeletedAll(count, buried))
            }
            Op::Expire {
                mailbox,
                namespace,
                hashes,
                expiry,
            } => {
                self.check_expiry(expiry, now)?;
                let mut updated = Vec::new();
                for key in distinct_keys(mailbox, namespace, hashes) {
                    if let Some(old) = self.find(ov, &key)? {
                        if old.expiry > now {
                            self.set_expiry(ov, &key, old, expiry, now)?;
                            updated.push((key.hash, expiry));
                        }
                    }
                }
                Ok(Outcome::Expired(updated, now))
            }
            Op::Forget(mailbox) => self.forget(ov, &mailbox).map(Outcome::Count),
            Op::Sweep { limit } => self.sweep(ov, now, limit).map(Outcome::Count),
            Op::Shutdown => Ok(Outcome::Count(0)),
        }
    }

    /// Inserts a message the caller has checked is neither held nor deleted.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        ov: &mut Overlay,
        key: EntryKey,
        data: Vec<u8>,
        ts: UnixMillis,
        expiry: UnixMillis,
        set_at: UnixMillis,
        stored: &mut HashSet<(Mailbox, Namespace)>,
    ) -> Result<StoreResponse, StoreError> {
        if data.len() > MAX_DATA_BYTES {
            return Err(StoreError::DataTooLarge);
        }
        if self.low_space.get() {
            return Err(StoreError::NodeFull);
        }
        let EntryKey {
            mailbox,
            namespace,
            hash,
        } = key;
        let c = charge(data.len());
        let mut usage = Usage::decode(ov.get(&self.db, Cf::Usage, mailbox.as_bytes())?)?;
        if usage.bytes.saturating_add(c) > self.cfg.mailbox_quota_bytes {
            return Err(StoreError::QuotaExceeded);
        }
        let mut total = Usage::decode(ov.get(&self.db, Cf::Meta, META_TOTAL)?)?;
        if total.bytes.saturating_add(c) > self.cfg.node_cap_bytes {
            return Err(StoreError::NodeFull);
        }
        usage.bytes += c;
        usage.count += 1;
        total.bytes += c;
        total.count += 1;
        let mk = msg_key(&mailbox, namespace, ts, &hash);
        ov.put(Cf::Exp, exp_key(expiry, &mk), Vec::new());
        ov.put(Cf::Msg, mk, msg_value(expiry, set_at, &data));
        ov.put(Cf::Hash, key.to_bytes().to_vec(), ts.to_be_bytes().to_vec());
        ov.put(Cf::Usage, mailbox.as_bytes().to_vec(), usage.encode());
        ov.put(Cf::Meta, META_TOTAL.to_vec(), total.encode());
        ov.toggle(key, EntryState::Live { expiry, set_at });
        stored.insert((mailbox, namespace));
        Ok(StoreResponse {
            hash,
            timestamp: ts,
            expiry,
            duplicate: false,
            holders: Vec::new(),
        })
    }

    /// Looks a message up by hash.
    fn find(&self, ov: &Overlay, key: &EntryKey) -> Result<Option<Held>, StoreError> {
        let Some(ts) = ov.get(&self.db, Cf::Hash, &key.to_bytes())? else {
            return Ok(None);
        };
        if ts.len() != 8 {
            return Err(corrupt("hash index value"));
        }
        let ts = be64(&ts);
        let value = ov
            .get(
                &self.db,
                Cf::Msg,
                &msg_key(&key.mailbox, key.namespace, ts, &key.hash),
            )?
            .ok_or_else(|| corrupt("hash index entry without message"))?;
        let (expiry, set_at, data) = parse_msg_value(&value)?;
        Ok(Some(Held {
            ts,
            expiry,
            set_at,
            len: data.len(),
        }))
    }

    /// The keep-until time of a tombstone for `key`, if one is held.
    fn tombstone(&self, ov: &Overlay, key: &EntryKey) -> Result<Option<UnixMillis>, StoreError> {
        match ov.get(&self.db, Cf::Tomb, &key.to_bytes())? {
            None => Ok(None),
            Some(v) if v.len() == 8 => Ok(Some(be64(&v))),
            Some(_) => Err(corrupt("tombstone")),
        }
    }

    /// A tombstone still in force at `now`; an expired one not yet swept is removed here, so
    /// that the message it named may be stored afresh.
    fn live_tombstone(
        &self,
        ov: &mut Overlay,
        key: &EntryKey,
        now: UnixMillis,
    ) -> Result<Option<UnixMillis>, StoreError> {
        match self.tombstone(ov, key)? {
            Some(until) if until > now => Ok(Some(until)),
            Some(until) => {
                self.unbury(ov, key, until);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn set_expiry(
        &self,
        ov: &mut Overlay,
        key: &EntryKey,
        old: Held,
        expiry: UnixMillis,
        set_at: UnixMillis,
    ) -> Result<(), StoreError> {
        if old.expiry == expiry && old.set_at == set_at {
            return Ok(());
        }
        let mk = msg_key(&key.mailbox, key.namespace, old.ts, &key.hash);
        let value = ov
            .get(&self.db, Cf::Msg, &mk)?
            .ok_or_else(|| corrupt("message"))?;
        let (_, _, data) = parse_msg_value(&value)?;
        let value = msg_value(expiry, set_at, data);
        ov.delete(Cf::Exp, exp_key(old.expiry, &mk));
        ov.put(Cf::Exp, exp_key(expiry, &mk), Vec::new());
        ov.put(Cf::Msg, mk, value);
        ov.toggle(
            *key,
            EntryState::Live {
                expiry: old.expiry,
                set_at: old.set_at,
            },
        );
        ov.toggle(*key, EntryState::Live { expiry, set_at });
        Ok(())
    }

    /// Removes a held message (no tombstone: see [`Self::bury`]).
    fn remove(&self, ov: &mut Overlay, key: &EntryKey, held: Held) -> Result<(), StoreError> {
        let mk = msg_key(&key.mailbox, key.namespace, held.ts, &key.hash);
        ov.delete(Cf::Exp, exp_key(held.expiry, &mk));
        ov.delete(Cf::Msg, mk);
        ov.delete(Cf::Hash, key.to_bytes().to_vec());
        ov.toggle(
            *key,
            EntryState::Live {
                expiry: held.expiry,
                set_at: held.set_at,
            },
        );
        let c = charge(held.len);
        let mailbox = &key.mailbox;
        let mut usage = Usage::decode(ov.get(&self.db, Cf::Usage, mailbox.as_bytes())?)?;
        usage.bytes = usage.bytes.saturating_sub(c);
        usage.count = usage.count.saturating_sub(1);
        if usage.count == 0 {
            ov.delete(Cf::Usage, mailbox.as_bytes().to_vec());
        } else {
            ov.put(Cf::Usage, mailbox.as_bytes().to_vec(), usage.encode());
        }
        let mut total = Usage::decode(ov.get(&self.db, Cf::Meta, META_TOTAL)?)?;
        total.bytes = total.bytes.saturating_sub(c);
        total.count = total.count.saturating_sub(1);
        ov.put(Cf::Meta, META_TOTAL.to_vec(), total.encode());
        Ok(())
    }

    /// Deletes `key` for good: removes the message if held and keeps a tombstone until at
    /// least `until` (and at least the message's own expiry), so no replica brings it back.
    /// Returns the message that was held, if any.
    fn bury(
        &self,
        ov: &mut Overlay,
        key: EntryKey,
        until: UnixMillis,
    ) -> Result<Option<Held>, StoreError> {
        let mut until = until;
        let held = self.find(ov, &key)?;
        if let Some(held) = held {
            until = until.max(held.expiry);
            self.remove(ov, &key, held)?;
        }
        let kb = key.to_bytes();
        match self.tombstone(ov, &key)? {
            Some(old) if old >= until => return Ok(held),
            Some(old) => ov.delete(Cf::Exp, tomb_exp_key(old, &kb)),
            None => ov.toggle(key, EntryState::Deleted { until }),
        }
        ov.put(Cf::Tomb, kb.to_vec(), until.to_be_bytes().to_vec());
        ov.put(Cf::Exp, tomb_exp_key(until, &kb), Vec::new());
        Ok(held)
    }

    /// Drops everything held for a mailbox, tombstones included, leaving no tombstone: the
    /// mailbox moved to another swarm, which now holds it (hand-off, §9.4).
    fn forget(&self, ov: &mut Overlay, mailbox: &Mailbox) -> Result<u64, StoreError> {
        let mut n = 0;
        for (k, _) in self.scan(Cf::Hash, mailbox.as_bytes())? {
            let key = EntryKey::from_bytes(&k).ok_or_else(|| corrupt("hash index key"))?;
            if let Some(held) = self.find(ov, &key)? {
                self.remove(ov, &key, held)?;
                n += 1;
            }
        }
        for (k, v) in self.scan(Cf::Tomb, mailbox.as_bytes())? {
            let key = EntryKey::from_bytes(&k).ok_or_else(|| corrupt("tombstone key"))?;
            if v.len() != 8 {
                return Err(corrupt("tombstone"));
            }
            self.unbury(ov, &key, be64(&v));
            n += 1;
        }
        Ok(n)
    }

    fn unbury(&self, ov: &mut Overlay, key: &EntryKey, until: UnixMillis) {
        let kb = key.to_bytes();
        ov.delete(Cf::Tomb, kb.to_vec());
        ov.delete(Cf::Exp, tomb_exp_key(until, &kb));
        ov.toggle(*key, EntryState::Deleted { until });
    }

    fn scan_prefix(&self, p: &[u8; 34]) -> Result<Vec<KeyValue>, StoreError> {
        self.scan(Cf::Msg, p)
    }

    fn scan(&self, cf: Cf, p: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let h = handle(&self.db, cf)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(p, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(p) {
                break;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    /// Removes up to `limit` expired messages and tombstones.
    fn sweep(&self, ov: &mut Overlay, now: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        let cf = handle(&self.db, Cf::Exp)?;
        let mut n = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item?;
            if n >= limit as u64 || k.len() < 8 || be64(&k[..8]) > now {
                break;
            }
            n += 1;
            if k.len() == 8 + ENTRY_KEY_LEN {
                // A tombstone's keep-until time.
                let key = EntryKey::from_bytes(&k[8..]).ok_or_else(|| corrupt("tombstone key"))?;
                match self.tombstone(ov, &key)? {
                    Some(until) if until == be64(&k[..8]) => self.unbury(ov, &key, until),
                    _ => ov.delete(Cf::Exp, k.to_vec()),
                }
                continue;
            }
            let (mailbox, ns, ts, hash) = parse_msg_key(&k[8..])?;
            match ov.get(&self.db, Cf::Msg, &k[8..])? {
                Some(v) => {
                    let (expiry, set_at, data) = parse_msg_value(&v)?;
                    let key = EntryKey {
                        mailbox,
                        namespace: ns,
                        hash,
                    };
                    let held = Held {
                        ts,
                        expiry,
                        set_at,
                        len: data.len(),
                    };
                    self.remove(ov, &key, held)?;
                }
                // An index entry without its message: drop the entry.
                None => ov.delete(Cf::Exp, k.to_vec()),
            }
        }
        Ok(n)
    }
}

/// The keys of `hashes` in (mailbox, namespace), each once, in request order.
fn distinct_keys(
    mailbox: Mailbox,
    namespace: Namespace,
    hashes: Vec<MessageHash>,
) -> impl Iterator<Item = EntryKey> {
    let mut seen = HashSet::new();
    hashes
        .into_iter()
        .filter(move |h| seen.insert(*h))
        .map(move |hash| EntryKey {
            mailbox,
            namespace,
            hash,
        })
}

fn send(reply: Option<Reply>, r: Result<Outcome, StoreError>) {
    if let Some(reply) = reply {
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(r);
    }
}

// ---- the store ----------------------------------------------------------------------------

/// The mailbox store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    db: Arc<DB>,
    jobs: SyncSender<Job>,
    writer: Option<JoinHandle<()>>,
    cfg: StoreConfig,
    high_water: Arc<AtomicU64>,
    waiters: Arc<Waiters>,
    digests: Arc<Mutex<Digests>>,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("config", &self.cfg)
            .finish()
    }
}

/// An acknowledgement to come: [`Ticket::wait`] returns once the store is durable.
#[derive(Debug)]
pub struct Ticket(Receiver<Result<Outcome, StoreError>>);

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Outcome")
    }
}

impl Ticket {
    /// Blocks until the writer answers.
    pub fn wait(self) -> Result<StoreResponse, StoreError> {
        match self.0.recv() {
            Ok(Ok(Outcome::Stored(r))) => Ok(r),
            Ok(Ok(_)) => Err(StoreError::Corrupt(
                "writer answered another operation".into(),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Refuse to open (and to serve) a database whose files fail their checks.
    o.set_paranoid_checks(true);
    // After a crash, replay the WAL up to the first incomplete record: everything synced is kept.
    o.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // Messages are ciphertext and do not compress.
    o.set_compression_type(DBCompressionType::None);
    o.set_max_background_jobs(2);
    o.set_keep_log_file_num(4);
    o
}

impl Store {
    /// Opens (creating if needed) the store at `path`. After a crash this replays the WAL:
    /// every acknowledged write is there, nothing half-written is (batches are atomic).
    pub fn open(path: impl AsRef<Path>, cfg: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut point = Options::default();
        point.set_compression_type(DBCompressionType::None);
        let mut bb = BlockBasedOptions::default();
        bb.set_bloom_filter(10.0, false);
        point.set_block_based_table_factory(&bb);
        let cfs = [CF_MSG, CF_HASH, CF_EXP, CF_USAGE, CF_META, CF_TOMB].map(|name| {
            let o = if name == CF_HASH || name == CF_TOMB {
                point.clone()
            } else {
                Options::default()
            };
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = Arc::new(DB::open_cf_descriptors(&db_options(), &path, cfs)?);
        let meta = handle(&db, Cf::Meta)?;
        match db.get_cf(meta, META_SCHEMA)? {
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes(), &wo)?;
            }
            Some(v) if v == SCHEMA_VERSION.to_be_bytes() => {}
            // Schema 1 lacks only the tombstone family (created above) and `set_at` in values
            // (read as 0).
            Some(v) if v == 1u32.to_be_bytes() => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes(), &wo)?;
            }
            Some(v) => {
                let v: [u8; 4] = v.try_into().map_err(|_| corrupt("schema version"))?;
                return Err(StoreError::Schema(u32::from_be_bytes(v)));
            }
        }
        let hw = match db.get_cf(meta, META_CLOCK)? {
            Some(v) if v.len() == 8 => be64(&v),
            Some(_) => return Err(corrupt("clock")),
            None => 0,
        };
        let high_water = Arc::new(AtomicU64::new(hw));
        let waiters = Arc::new(Waiters {
            slots: Mutex::default(),
            max: cfg.max_waiters,
        });
        let digests = Arc::new(Mutex::new(initial_digests(&db)?));
        let (jobs, rx) = mpsc::sync_channel(cfg.queue_len.max(1));
        let writer = Writer {
            db: Arc::clone(&db),
            path: path.clone(),
            low_space: std::cell::Cell::new(false),
            cfg: StoreConfig {
                max_group: cfg.max_group.max(1),
                ..cfg.clone()
            },
            high_water: Arc::clone(&high_water),
            waiters: Arc::clone(&waiters),
            digests: Arc::clone(&digests),
        };
        let writer = std::thread::Builder::new()
            .name("allium-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Corrupt(format!("cannot start writer: {e}")))?;
        Ok(Self {
            db,
            jobs,
            writer: Some(writer),
            cfg,
            high_water,
            waiters,
            digests,
            path,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The highest node time the store has seen (persisted): a floor for the node's clock.
    pub fn high_water(&self) -> UnixMillis {
        self.high_water.load(Ordering::SeqCst)
    }

    fn submit(
        &self,
        op: Op,
        now: UnixMillis,
    ) -> Result<Receiver<Result<Outcome, StoreError>>, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Job {
                op,
                now,
                reply: Some(tx),
            })
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    fn call(&self, op: Op, now: UnixMillis) -> Result<Outcome, StoreError> {
        self.submit(op, now)?
            .recv()
            .map_err(|_| StoreError::Closed)?
    }

    /// Queues a store; the ticket resolves once it is durable (or refused).
    pub fn submit_store(&self, msg: NewMessage, now: UnixMillis) -> Result<Ticket, StoreError> {
        let hash = crypto::content_hash(&msg.mailbox, msg.namespace, &msg.data);
        self.submit(Op::Store(msg, hash), now).map(Ticket)
    }

    /// Stores a message and returns once it is durable on disk (WAL synced).
    pub fn store(&self, msg: NewMessage, now: UnixMillis) -> Result<StoreResponse, StoreError> {
        self.submit_store(msg, now)?.wait()
    }

    /// Applies replication items from another member (whitepaper §9.3) and returns, per item,
    /// whether it is now durably reflected here. All items share group commits. A message's
    /// expiry must lie in (now, now + max TTL]; its content hash is recomputed here.
    pub fn apply_items(&self, items: Vec<Item>, now: UnixMillis) -> Vec<Result<(), StoreError>> {
        let pending: Vec<_> = items
            .into_iter()
            .map(|item| {
                let op = match item {
                    Item::Message(m) => {
                        let hash = crypto::content_hash(&m.mailbox, m.namespace, &m.data);
                        Op::Replica(m, hash)
                    }
                    Item::Tombstone { key, until } => Op::Tombstone(key, until),
                    Item::Expiry {
                        key,
                        expiry,
                        set_at,
                    } => Op::SetExpiry {
                        key,
                        expiry,
                        set_at,
                    },
                };
                self.submit(op, now)
            })
            .collect();
        pending
            .into_iter()
            .map(|rx| match rx?.recv() {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(StoreError::Closed),
            })
            .collect()
    }

    /// Drops everything held for `mailbox` without leaving tombstones (after handing it off to
    /// the swarm that now owns it). Returns the number of entries dropped.
    pub fn forget(&self, mailbox: Mailbox, now: UnixMillis) -> Result<u64, StoreError> {
        match self.call(Op::Forget(mailbox), now)? {
            Outcome::Count(n) => Ok(n),
            _ => Err(StoreError::Corrupt(
                "writer answered another operation".into(),
            )),
        }
    }

    /// Deletes messages by hash; returns the hashes that were live.
    pub fn delete(
        &self,
        mailbox: Mailbox,
        namespace: Namespace,
        hashes: Vec<MessageHash>,
        now: UnixMillis,
    ) -> Result<Vec<MessageHash>, StoreError> {
        match self.call(
            Op::Delete {
                mailbox,
                namespace,
                hashes,
            },
            now,
        )? {
            Outcome::Deleted(d) => Ok(d),
            _ => Err(StoreError::Corrupt(
                "writer answered another operation".into(),
            )),
        }
    }

    /// Deletes every message of a namespace; returns how many were live.
    pub fn delete_all(
        &self,
        mailbox: Mailbox,
        namespace: Namespace,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.delete_all_full(mailbox, namespace, now)
            .map(|(n, _)| n)
    }

    /// [`Self::delete_all`], also returning every key now buried and its keep-until time (what
    /// the other members must bury too).
    #[allow(clippy::type_complexity)]
    pub fn delete_all_full(
        &self,
        mailbox: Mailbox,
        namespace: Namespace,
        now: UnixMillis,
    ) -> Result<(u64, Vec<(EntryKey, UnixMillis)>), StoreError> {
        match self.call(Op::DeleteAll { mailbox, namespace }, now)? {
            Outcome::DeletedAll(n, buried) => Ok((n, buried)),
            _ => Err(StoreError::Corrupt(
                "writer answered another operation".into(),
            )),
        }
    }

    /// Sets the expiry of live messages; `expiry` must lie in (now, now + max TTL].
    pub fn expire(
        &self,
        mailbox: Mailbox,
        namespace: Namespace,
        hashes: Vec<MessageHash>,
        expiry: UnixMillis,
        now: UnixMillis,
    ) -> Result<Vec<(MessageHash, UnixMillis)>, StoreError> {
        self.expire_full(mailbox, namespace, hashes, expiry, now)
            .map(|(u, _)| u)
    }

    /// [`Self::expire`], also returning the time the expiry was set (what replicas carry).
    #[allow(clippy::type_complexity)]
    pub fn expire_full(
        &self,
        mailbox: Mailbox,
        namespace: Namespace,
        hashes: Vec<MessageHash>,
        expiry: UnixMillis,
        now: UnixMillis,
    ) -> Result<(Vec<(MessageHash, UnixMillis)>, UnixMillis), StoreError> {
        match self.call(
            Op::Expire {
                mailbox,
                namespace,
                hashes,
                expiry,
            },
            now,
        )? {
            Outcome::Expired(u, set_at) => Ok((u, set_at)),
            _ => Err(StoreError::Corrupt(
                "writer answered another operation".into(),
            )),
        }
    }

    /// Removes up to `limit` messages expired at `now` from disk; returns how many.
    pub fn sweep_expired(&self, now: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        match self.call(Op::Sweep { limit }, now)? {
            Outcome::Count(n) => Ok(n),
            _ => Err(StoreError::Corrupt(
                "writer answered another operation".into(),
            )),
        }
    }

    /// Live messages after `q.after`, ascending by (timestamp, hash), within the limits.
    pub fn retrieve(&self, q: &RetrieveQuery, now: UnixMillis) -> Result<RetrievePage, StoreError> {
        let p = prefix(&q.mailbox, q.namespace);
        let start = match q.after {
            Some(a) => {
                let mut s = p.to_vec();
                s.extend_from_slice(&a.to_bytes());
                s
            }
            None => p.to_vec(),
        };
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(true);
        if let Some(upper) = successor(&p) {
            ro.set_iterate_upper_bound(upper);
        }
        let cf = handle(&self.db, Cf::Msg)?;
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for item in self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&p) {
                break;
            }
            if q.after.is_some() && *k == *start {
                continue;
            }
            let (_, _, ts, hash) = parse_msg_key(&k)?;
            let (expiry, _, data) = parse_msg_value(&v)?;
            if expiry <= now {
                continue;
            }
            let len = StoredMessage::encoded_len_of(ts, expiry, data.len());
            if messages.len() >= q.max_count || (!messages.is_empty() && bytes + len > q.max_bytes)
            {
                more = true;
                break;
            }
            bytes += len;
            messages.push(StoredMessage {
                hash,
                timestamp: ts,
                expiry,
                data: data.to_vec(),
            });
        }
        Ok(RetrievePage { messages, more })
    }

    /// Usage of one mailbox (all namespaces).
    pub fn usage(&self, mailbox: &Mailbox) -> Result<Usage, StoreError> {
        Usage::decode(
            self.db
                .get_cf(handle(&self.db, Cf::Usage)?, mailbox.as_bytes())?,
        )
    }

    /// Usage of the whole node.
    pub fn total(&self) -> Result<Usage, StoreError> {
        Usage::decode(self.db.get_cf(handle(&self.db, Cf::Meta)?, META_TOTAL)?)
    }

    /// Registers interest in new messages for a mailbox namespace (long-poll). Bounded by
    /// `max_waiters`.
    pub fn watch(&self, mailbox: Mailbox, namespace: Namespace) -> Result<Watch, StoreError> {
        let key = (mailbox, namespace);
        let mut slots = lock(&self.waiters.slots);
        if slots.1 >= self.waiters.max {
            return Err(StoreError::TooManyWaiters);
        }
        slots.1 += 1;
        let slot = Arc::clone(slots.0.entry(key).or_default());
        slot.waiters.fetch_add(1, Ordering::SeqCst);
        let seen = *lock(&slot.generation);
        Ok(Watch {
            waiters: Arc::clone(&self.waiters),
            key,
            slot,
            seen,
        })
    }

    /// Starts a thread that removes expired messages every `every`, in batches of `batch`,
    /// reading time from `clock`. Stops when the returned handle is dropped.
    pub fn spawn_sweeper(
        &self,
        clock: Arc<dyn Clock>,
        every: Duration,
        batch: usize,
    ) -> Result<Sweeper, StoreError> {
        let (stop, stopped) = mpsc::sync_channel::<()>(0);
        let jobs = self.jobs.clone();
        let batch = batch.max(1);
        let handle = std::thread::Builder::new()
            .name("allium-store-sweeper".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    loop {
                        let (tx, rx) = mpsc::sync_channel(1);
                        let job = Job {
                            op: Op::Sweep { limit: batch },
                            now: clock.now(),
                            reply: Some(tx),
                        };
                        if jobs.send(job).is_err() {
                            return;
                        }
                        match rx.recv() {
                            Ok(Ok(Outcome::Count(n))) if n as usize >= batch => continue,
                            Ok(_) => break,
                            Err(_) => return,
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start sweeper: {e}")))?;
        Ok(Sweeper {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

// ---- anti-entropy reads (whitepaper §9) ----------------------------------------------------

/// Computes the bucket digests from what is on disk (once, at open).
fn initial_digests(db: &DB) -> Result<Digests, StoreError> {
    let mut d = Digests::default();
    for item in db.iterator_cf(handle(db, Cf::Msg)?, IteratorMode::Start) {
        let (k, v) = item?;
        let (mailbox, namespace, _, hash) = parse_msg_key(&k)?;
        let (expiry, set_at, _) = parse_msg_value(&v)?;
        let key = EntryKey {
            mailbox,
            namespace,
            hash,
        };
        d.toggle(&Entry {
            key,
            state: EntryState::Live { expiry, set_at },
        });
    }
    for item in db.iterator_cf(handle(db, Cf::Tomb)?, IteratorMode::Start) {
        let (k, v) = item?;
        let key = EntryKey::from_bytes(&k).ok_or_else(|| corrupt("tombstone key"))?;
        if v.len() != 8 {
            return Err(corrupt("tombstone"));
        }
        d.toggle(&Entry {
            key,
            state: EntryState::Deleted { until: be64(&v) },
        });
    }
    Ok(d)
}

impl Store {
    /// The anti-entropy digests of everything held (durable writes only).
    pub fn digests(&self) -> Digests {
        lock(&self.digests).clone()
    }

    /// What is held under `key`, expired or not.
    pub fn entry(&self, key: &EntryKey) -> Result<Option<EntryState>, StoreError> {
        let kb = key.to_bytes();
        if let Some(v) = self.db.get_cf(handle(&self.db, Cf::Tomb)?, kb)? {
            if v.len() != 8 {
                return Err(corrupt("tombstone"));
            }
            return Ok(Some(EntryState::Deleted { until: be64(&v) }));
        }
        Ok(self
            .held(key)?
            .map(|(_, expiry, set_at, _)| EntryState::Live { expiry, set_at }))
    }

    /// (timestamp, expiry, set_at, data) of a held message.
    #[allow(clippy::type_complexity)]
    fn held(
        &self,
        key: &EntryKey,
    ) -> Result<Option<(UnixMillis, UnixMillis, UnixMillis, Vec<u8>)>, StoreError> {
        let Some(ts) = self
            .db
            .get_cf(handle(&self.db, Cf::Hash)?, key.to_bytes())?
        else {
            return Ok(None);
        };
        if ts.len() != 8 {
            return Err(corrupt("hash index value"));
        }
        let ts = be64(&ts);
        let mk = msg_key(&key.mailbox, key.namespace, ts, &key.hash);
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(true);
        // Deleted between the two reads: treat as not held.
        let Some(v) = self.db.get_cf_opt(handle(&self.db, Cf::Msg)?, mk, &ro)? else {
            return Ok(None);
        };
        let (expiry, set_at, data) = parse_msg_value(&v)?;
        Ok(Some((ts, expiry, set_at, data.to_vec())))
    }

    /// Up to `limit` entries of `bucket` after `after`, in key order, and whether more follow.
    /// Messages and tombstones are listed together (one key is never both).
    pub fn entries(
        &self,
        bucket: u8,
        after: Option<&EntryKey>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), StoreError> {
        let start: Vec<u8> = match after {
            Some(k) => k.to_bytes().to_vec(),
            None => vec![bucket],
        };
        let upper = successor(&[bucket]);
        let read = |cf: Cf| -> Result<Vec<(EntryKey, u64)>, StoreError> {
            let mut ro = ReadOptions::default();
            if let Some(u) = &upper {
                ro.set_iterate_upper_bound(u.clone());
            }
            let mut out = Vec::new();
            for item in self.db.iterator_cf_opt(
                handle(&self.db, cf)?,
                ro,
                IteratorMode::From(&start, Direction::Forward),
            ) {
                let (k, v) = item?;
                if k.first() != Some(&bucket) || out.len() > limit {
                    break;
                }
                if *k == *start {
                    continue;
                }
                let key = EntryKey::from_bytes(&k).ok_or_else(|| corrupt("index key"))?;
                if v.len() != 8 {
                    return Err(corrupt("index value"));
                }
                out.push((key, be64(&v)));
            }
            Ok(out)
        };
        let live = read(Cf::Hash)?;
        let dead = read(Cf::Tomb)?;
        let mut merged: Vec<(EntryKey, Option<u64>, Option<u64>)> = live
            .into_iter()
            .map(|(k, ts)| (k, Some(ts), None))
            .chain(dead.into_iter().map(|(k, until)| (k, None, Some(until))))
            .collect();
        merged.sort_by_key(|m| m.0);
        let more = merged.len() > limit;
        merged.truncate(limit);
        let mut entries = Vec::with_capacity(merged.len());
        for (key, ts, until) in merged {
            let state = match (ts, until) {
                (_, Some(until)) => EntryState::Deleted { until },
                (Some(ts), None) => {
                    let mk = msg_key(&key.mailbox, key.namespace, ts, &key.hash);
                    let Some(v) = self.db.get_cf(handle(&self.db, Cf::Msg)?, mk)? else {
                        continue;
                    };
                    let (expiry, set_at, _) = parse_msg_value(&v)?;
                    EntryState::Live { expiry, set_at }
                }
                (None, None) => continue,
            };
            entries.push(Entry { key, state });
        }
        Ok((entries, more))
    }

    /// The replication items held under `keys` (messages in full, tombstones), leaving out
    /// keys not held, and stopping before `max_bytes` of message data.
    pub fn fetch(&self, keys: &[EntryKey], max_bytes: usize) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for key in keys {
            match self.entry(key)? {
                Some(EntryState::Deleted { until }) => {
                    items.push(Item::Tombstone { key: *key, until })
                }
                Some(EntryState::Live { .. }) => {
                    let Some((timestamp, expiry, set_at, data)) = self.held(key)? else {
                        continue;
                    };
                    if !items.is_empty() && bytes + data.len() > max_bytes {
                        break;
                    }
                    bytes += data.len();
                    items.push(Item::Message(ItemMessage {
                        mailbox: key.mailbox,
                        namespace: key.namespace,
                        timestamp,
                        expiry,
                        set_at,
                        data,
                    }));
                }
                None => {}
            }
        }
        Ok(items)
    }

    /// Compares a page of a peer's entries with what is held here and says what to do to
    /// converge ([`Plan::add`], the merge rule of whitepaper §9.3): items to apply as they are
    /// (tombstones, later expiries) and keys whose message must be fetched. Entries expired at
    /// `now`, and those `wanted` refuses (mailboxes outside this node's swarm), are skipped.
    pub fn reconcile(
        &self,
        theirs: &[Entry],
        now: UnixMillis,
        wanted: impl Fn(&Mailbox) -> bool,
    ) -> Result<Plan, StoreError> {
        let mut plan = Plan::default();
        for e in theirs.iter().filter(|e| wanted(&e.key.mailbox)) {
            plan.add(self.entry(&e.key)?, e, now);
        }
        Ok(plan)
    }

    /// The first mailbox after `after` that has messages or tombstones here.
    pub fn next_mailbox(&self, after: Option<&Mailbox>) -> Result<Option<Mailbox>, StoreError> {
        let start = match after {
            Some(m) => match successor(m.as_bytes()) {
                Some(s) => s,
                None => return Ok(None),
            },
            None => Vec::new(),
        };
        let mut best: Option<Mailbox> = None;
        for cf in [Cf::Hash, Cf::Tomb] {
            let mut it = self.db.iterator_cf(
                handle(&self.db, cf)?,
                IteratorMode::From(&start, Direction::Forward),
            );
            if let Some(item) = it.next() {
                let (k, _) = item?;
                let key = EntryKey::from_bytes(&k).ok_or_else(|| corrupt("index key"))?;
                if best.is_none_or(|b| key.mailbox < b) {
                    best = Some(key.mailbox);
                }
            }
        }
        Ok(best)
    }

    /// Every key held for `mailbox` (messages and tombstones, all namespaces).
    pub fn mailbox_keys(&self, mailbox: &Mailbox) -> Result<Vec<EntryKey>, StoreError> {
        let mut keys = Vec::new();
        for cf in [Cf::Hash, Cf::Tomb] {
            for item in self.db.iterator_cf(
                handle(&self.db, cf)?,
                IteratorMode::From(mailbox.as_bytes(), Direction::Forward),
            ) {
                let (k, _) = item?;
                if !k.starts_with(mailbox.as_bytes()) {
                    break;
                }
                keys.push(EntryKey::from_bytes(&k).ok_or_else(|| corrupt("index key"))?);
            }
        }
        Ok(keys)
    }
}

/// The smallest byte string greater than every string starting with `p`, if any.
fn successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut s = p.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

impl Drop for Store {
    fn drop(&mut self) {
        // Shutdown is a job rather than a closed channel: sweepers may still hold senders.
        let _ = self.jobs.send(Job {
            op: Op::Shutdown,
            now: 0,
            reply: None,
        });
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The background expiry thread; dropping it stops the thread.
#[derive(Debug)]
pub struct Sweeper {
    stop: Option<SyncSender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
