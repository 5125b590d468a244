//! The RocksDB mailbox store (whitepaper §5–§7).
//!
//! Reads run on the caller's thread against the database. Every write goes through one writer
//! thread, which drains the queue, applies each operation to an overlay over the database (so a
//! group sees its own effects), writes the group as one atomic `WriteBatch` with a synced WAL, and
//! only then answers the callers: group commit, one fsync for many stores.
//!
//! This module is the store's public face; behind it, `schema` holds the layout on disk,
//! `writer` the group-commit thread, `waiters` the long-poll wake-ups, `reconcile` what
//! anti-entropy reads and writes, and [`error`] the failures.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rocksdb::{DB, Direction, IteratorMode, ReadOptions};
use tokio::sync::oneshot;

use allium_proto::crypto;
use allium_proto::storage::{
    BLOB, CursorKey, Mailbox, MessageHash, Namespace, StoreResponse, StoredMessage,
};
use allium_proto::sync::{Digests, EntryKey, Item};
use allium_proto::time::{Clock, UnixMillis};

pub mod error;
mod reconcile;
mod schema;
mod waiters;
mod writer;

use error::StoreError;
use schema::{
    Cf, META_TOTAL, counter_keys, handle, parse_msg_key, parse_msg_value, prefix, successor,
};
use waiters::Waiters;
pub use waiters::Watch;
use writer::{Job, Op, Outcome, Writer};

/// Bytes charged against quota and cap per message on top of its data (keys, indexes, value
/// header), so that many tiny messages cannot evade the byte limits.
pub const MESSAGE_OVERHEAD: u64 = 128;

/// Store limits and tuning.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Shortest TTL accepted (default 10 s).
    pub ttl_min_ms: u64,
    /// Longest TTL accepted, and longest `expire` extension (default 14 days).
    pub ttl_max_ms: u64,
    /// Bytes one mailbox may hold, all namespaces together (data + [`MESSAGE_OVERHEAD`] each).
    pub mailbox_quota_bytes: u64,
    /// Bytes the node holds in total before answering "full" (the blob namespace excepted).
    pub node_cap_bytes: u64,
    /// Bytes one mailbox may hold in the blob namespace (storage §5.1).
    pub blob_quota_bytes: u64,
    /// Bytes the node holds in the blob namespace, all mailboxes, before answering "full".
    pub blob_cap_bytes: u64,
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
            blob_quota_bytes: 2 << 30,
            blob_cap_bytes: 16 << 30,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps inconsistent (every update is one statement).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The mailbox store. Cheap to share behind an `Arc`; all methods take `&self`. Reads and
/// writes block the calling thread (a write until the writer answers), so async code calls them
/// from `spawn_blocking`; the waits that hold no thread are [`Ticket::finish`] and
/// [`Watch::changed`].
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

/// What the writer answers one operation with.
type Answer = oneshot::Receiver<Result<Outcome, StoreError>>;

/// An acknowledgement to come: [`Ticket::finish`] resolves once the store is durable (or
/// refused).
#[derive(Debug)]
pub struct Ticket(Answer);

impl Ticket {
    /// Waits for the writer's answer without holding a thread.
    pub async fn finish(self) -> Result<StoreResponse, StoreError> {
        stored(self.0.await)
    }

    /// Blocks until the writer answers: for synchronous callers. Async code awaits
    /// [`Self::finish`] (tokio panics on a blocking wait inside its runtime).
    pub fn wait(self) -> Result<StoreResponse, StoreError> {
        stored(self.0.blocking_recv())
    }
}

fn stored(
    answer: Result<Result<Outcome, StoreError>, oneshot::error::RecvError>,
) -> Result<StoreResponse, StoreError> {
    match answer {
        Ok(Ok(Outcome::Stored(r))) => Ok(r),
        Ok(Ok(_)) => Err(StoreError::WrongOutcome),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StoreError::Closed),
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`. After a crash this replays the WAL:
    /// every acknowledged write is there, nothing half-written is (batches are atomic).
    pub fn open(path: impl AsRef<Path>, cfg: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let (db, hw) = schema::open_db(&path)?;
        let db = Arc::new(db);
        let high_water = Arc::new(AtomicU64::new(hw));
        let waiters = Arc::new(Waiters::new(cfg.max_waiters));
        let digests = Arc::new(Mutex::new(reconcile::initial_digests(&db)?));
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
            .map_err(|e| StoreError::Spawn {
                thread: "writer",
                source: Arc::new(e),
            })?;
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

    fn submit(&self, op: Op, now: UnixMillis) -> Result<Answer, StoreError> {
        let (tx, rx) = oneshot::channel();
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
            .blocking_recv()
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
            .map(|rx| match rx?.blocking_recv() {
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
            _ => Err(StoreError::WrongOutcome),
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
            _ => Err(StoreError::WrongOutcome),
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
            _ => Err(StoreError::WrongOutcome),
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
            _ => Err(StoreError::WrongOutcome),
        }
    }

    /// Removes up to `limit` messages expired at `now` from disk; returns how many.
    pub fn sweep_expired(&self, now: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        match self.call(Op::Sweep { limit }, now)? {
            Outcome::Count(n) => Ok(n),
            _ => Err(StoreError::WrongOutcome),
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

    /// Usage of one mailbox in the blob namespace, and of the whole node there.
    pub fn blob_usage(&self, mailbox: &Mailbox) -> Result<(Usage, Usage), StoreError> {
        let (usage_key, total_key) = counter_keys(mailbox, BLOB);
        Ok((
            Usage::decode(self.db.get_cf(handle(&self.db, Cf::Usage)?, usage_key)?)?,
            Usage::decode(self.db.get_cf(handle(&self.db, Cf::Meta)?, total_key)?)?,
        ))
    }

    /// The live message of `mailbox`'s blob namespace named `hash`, if held (storage §4.4).
    pub fn read_blob(
        &self,
        mailbox: &Mailbox,
        hash: &MessageHash,
        now: UnixMillis,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let key = EntryKey {
            mailbox: *mailbox,
            namespace: BLOB,
            hash: *hash,
        };
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(true);
        let Some(ts) = self
            .db
            .get_cf_opt(handle(&self.db, Cf::Hash)?, key.to_bytes(), &ro)?
        else {
            return Ok(None);
        };
        if ts.len() != 8 {
            return Err(error::Corruption::HashIndexValue.into());
        }
        let timestamp =
            u64::from_be_bytes([ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]]);
        let mut mk = prefix(mailbox, BLOB).to_vec();
        mk.extend_from_slice(&timestamp.to_be_bytes());
        mk.extend_from_slice(&hash.0);
        // A hash entry written in the same batch as its message: between two reads the
        // message may have been removed, which is "not held", not corruption.
        let Some(v) = self.db.get_cf_opt(handle(&self.db, Cf::Msg)?, &mk, &ro)? else {
            return Ok(None);
        };
        let (expiry, _, data) = parse_msg_value(&v)?;
        if expiry <= now {
            return Ok(None);
        }
        Ok(Some(StoredMessage {
            hash: *hash,
            timestamp,
            expiry,
            data: data.to_vec(),
        }))
    }

    /// Registers interest in new messages for a mailbox namespace (long-poll). Bounded by
    /// `max_waiters`: beyond it [`StoreError::TooManyWaiters`], and the retrieve is answered at
    /// once instead of waiting.
    pub fn watch(&self, mailbox: Mailbox, namespace: Namespace) -> Result<Watch, StoreError> {
        self.waiters.watch((mailbox, namespace))
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
                        let (tx, rx) = oneshot::channel();
                        let job = Job {
                            op: Op::Sweep { limit: batch },
                            now: clock.now(),
                            reply: Some(tx),
                        };
                        if jobs.send(job).is_err() {
                            return;
                        }
                        match rx.blocking_recv() {
                            Ok(Ok(Outcome::Count(n))) if n as usize >= batch => continue,
                            Ok(_) => break,
                            Err(_) => return,
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Spawn {
                thread: "sweeper",
                source: Arc::new(e),
            })?;
        Ok(Sweeper {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
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
