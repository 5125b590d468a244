//! Group commit (whitepaper §7): one writer thread drains the queue, applies each operation to
//! an overlay over the database (so a group sees its own effects), writes the group as one atomic
//! `WriteBatch` with a synced WAL, and only then answers the callers and wakes long-poll waiters.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use allium_proto::storage::{
    BLOB, MAX_DATA_BYTES, Mailbox, MessageHash, Namespace, REQUESTS, StoreResponse,
};
use allium_proto::sync::{Digests, ENTRY_KEY_LEN, Entry, EntryKey, EntryState, ItemMessage};
use allium_proto::time::UnixMillis;

use super::error::{Corruption, StoreError};
use super::schema::{
    Cf, META_CLOCK, be64, charge, counter_keys, exp_key, handle, msg_key, msg_value, parse_msg_key,
    parse_msg_value, prefix, tomb_exp_key,
};
use super::waiters::Waiters;
use super::{NewMessage, StoreConfig, Usage, lock};

/// Longest a writer waits to fill a group as large as the previous one (see `Writer::run`).
const GATHER: Duration = Duration::from_micros(200);

pub(super) enum Op {
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

pub(super) enum Outcome {
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

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Outcome")
    }
}

pub(super) type Reply = oneshot::Sender<Result<Outcome, StoreError>>;
type KeyValue = (Box<[u8]>, Box<[u8]>);

pub(super) struct Job {
    pub(super) op: Op,
    pub(super) now: UnixMillis,
    pub(super) reply: Option<Reply>,
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

pub(super) struct Writer {
    pub(super) db: Arc<DB>,
    pub(super) path: PathBuf,
    /// Whether the file system had less than `min_free_bytes` free when last looked at.
    pub(super) low_space: std::cell::Cell<bool>,
    pub(super) cfg: StoreConfig,
    pub(super) high_water: Arc<AtomicU64>,
    pub(super) waiters: Arc<Waiters>,
    pub(super) digests: Arc<Mutex<Digests>>,
}

impl Writer {
    pub(super) fn run(self, rx: Receiver<Job>) {
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
        let free = self.free_bytes().unwrap_or(u64::MAX);
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
                    for (reply, _) in done.drain(..) {
                        send(reply, Err(e.clone()));
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
        let wrote = !ov.map.is_empty();
        let result = if wrote { self.write(ov) } else { Ok(()) };
        match result {
            Ok(()) => {
                if wrote {
                    // A client's stores and the rest (replicas, deletions) apart: the breakdown
                    // tells the destination's write from a peer's copy by them.
                    tracing::trace!(
                        target: crate::stage::TARGET,
                        at_us = crate::stage::now_us(),
                        stage = "writer.durable",
                        stores = done
                            .iter()
                            .filter(|(_, o)| matches!(o, Outcome::Stored(_)))
                            .count(),
                        messages = stored.len(),
                    );
                }
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
                let e = self.full_or(e);
                for (reply, _) in done.drain(..) {
                    send(reply, Err(e.clone()));
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
        self.db
            .write_opt(batch, &wo)
            .map_err(StoreError::WriteFailed)
    }

    /// A failed write is "full" when it failed for I/O and the file system has less than
    /// `min_free_bytes` (or nothing) left: told by the error's kind and the free space, not by
    /// the wording of the message.
    fn full_or(&self, e: StoreError) -> StoreError {
        match &e {
            StoreError::WriteFailed(d) if d.kind() == rocksdb::ErrorKind::IOError => {
                let low = self
                    .free_bytes()
                    .is_some_and(|free| free < self.cfg.min_free_bytes.max(1));
                if low { StoreError::NodeFull } else { e }
            }
            _ => e,
        }
    }

    /// Bytes of the store's file system free for unprivileged use, if they can be read.
    fn free_bytes(&self) -> Option<u64> {
        rustix::fs::statvfs(&self.path)
            .ok()
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
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
        let (usage_key, total_key) = counter_keys(&mailbox, namespace);
        let (quota, cap) = if namespace == BLOB {
            (self.cfg.blob_quota_bytes, self.cfg.blob_cap_bytes)
        } else {
            (self.cfg.mailbox_quota_bytes, self.cfg.node_cap_bytes)
        };
        let mut usage = Usage::decode(ov.get(&self.db, Cf::Usage, &usage_key)?)?;
        if usage.bytes.saturating_add(c) > quota {
            return Err(StoreError::QuotaExceeded);
        }
        // The blob namespace's mailbox counter is already its own (storage §6).
        let nk = (namespace != BLOB).then(|| prefix(&mailbox, namespace));
        let mut ns_usage = match &nk {
            Some(k) => Usage::decode(ov.get(&self.db, Cf::Usage, &k[..])?)?,
            None => Usage::default(),
        };
        // Strangers' share (storage.md §4.5): replicas are held to it as well, so every member
        // refuses the same stores.
        if namespace == REQUESTS
            && (ns_usage.bytes.saturating_add(c) > self.cfg.requests_quota_bytes
                || ns_usage.count >= self.cfg.requests_quota_count)
        {
            return Err(StoreError::QuotaExceeded);
        }
        let mut total = Usage::decode(ov.get(&self.db, Cf::Meta, total_key)?)?;
        if total.bytes.saturating_add(c) > cap {
            return Err(StoreError::NodeFull);
        }
        usage.bytes += c;
        usage.count += 1;
        ns_usage.bytes += c;
        ns_usage.count += 1;
        total.bytes += c;
        total.count += 1;
        let mk = msg_key(&mailbox, namespace, ts, &hash);
        ov.put(Cf::Exp, exp_key(expiry, &mk), Vec::new());
        ov.put(Cf::Msg, mk, msg_value(expiry, set_at, &data));
        ov.put(Cf::Hash, key.to_bytes().to_vec(), ts.to_be_bytes().to_vec());
        ov.put(Cf::Usage, usage_key, usage.encode());
        if let Some(k) = nk {
            ov.put(Cf::Usage, k.to_vec(), ns_usage.encode());
        }
        ov.put(Cf::Meta, total_key.to_vec(), total.encode());
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
            return Err(Corruption::HashIndexValue.into());
        }
        let ts = be64(&ts);
        let value = ov
            .get(
                &self.db,
                Cf::Msg,
                &msg_key(&key.mailbox, key.namespace, ts, &key.hash),
            )?
            .ok_or(Corruption::HashIndexOrphan)?;
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
            Some(_) => Err(Corruption::TombstoneValue.into()),
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
            .ok_or(Corruption::HashIndexOrphan)?;
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
        let (usage_key, total_key) = counter_keys(&key.mailbox, key.namespace);
        let mut usage = Usage::decode(ov.get(&self.db, Cf::Usage, &usage_key)?)?;
        usage.bytes = usage.bytes.saturating_sub(c);
        usage.count = usage.count.saturating_sub(1);
        if usage.count == 0 {
            ov.delete(Cf::Usage, usage_key);
        } else {
            ov.put(Cf::Usage, usage_key, usage.encode());
        }
        if key.namespace != BLOB {
            let nk = prefix(&key.mailbox, key.namespace);
            let mut ns_usage = Usage::decode(ov.get(&self.db, Cf::Usage, &nk[..])?)?;
            ns_usage.bytes = ns_usage.bytes.saturating_sub(c);
            ns_usage.count = ns_usage.count.saturating_sub(1);
            if ns_usage.count == 0 {
                ov.delete(Cf::Usage, nk.to_vec());
            } else {
                ov.put(Cf::Usage, nk.to_vec(), ns_usage.encode());
            }
        }
        let mut total = Usage::decode(ov.get(&self.db, Cf::Meta, total_key)?)?;
        total.bytes = total.bytes.saturating_sub(c);
        total.count = total.count.saturating_sub(1);
        ov.put(Cf::Meta, total_key.to_vec(), total.encode());
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
            let key = EntryKey::from_bytes(&k).ok_or(Corruption::HashIndexKey)?;
            if let Some(held) = self.find(ov, &key)? {
                self.remove(ov, &key, held)?;
                n += 1;
            }
        }
        for (k, v) in self.scan(Cf::Tomb, mailbox.as_bytes())? {
            let key = EntryKey::from_bytes(&k).ok_or(Corruption::TombstoneKey)?;
            if v.len() != 8 {
                return Err(Corruption::TombstoneValue.into());
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
                let key = EntryKey::from_bytes(&k[8..]).ok_or(Corruption::TombstoneKey)?;
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
