//! What anti-entropy (whitepaper §9.3–§9.4) reads from and writes to the store: the bucket
//! digests, the entries of a bucket, the items to fetch, the merge rule, and the keys of a mailbox
//! to hand off.

use rocksdb::{DB, Direction, IteratorMode, ReadOptions};

use allium_proto::storage::Mailbox;
use allium_proto::sync::{Digests, Entry, EntryKey, EntryState, Item, ItemMessage, Plan};
use allium_proto::time::UnixMillis;

use super::error::{Corruption, StoreError};
use super::schema::{Cf, be64, handle, msg_key, parse_msg_key, parse_msg_value, successor};
use super::{Store, lock};

/// Computes the bucket digests from what is on disk (once, at open).
pub(super) fn initial_digests(db: &DB) -> Result<Digests, StoreError> {
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
        let key = EntryKey::from_bytes(&k).ok_or(Corruption::TombstoneKey)?;
        if v.len() != 8 {
            return Err(Corruption::TombstoneValue.into());
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

    /// Whether a message is held under `key` and still live at `now`: the delegation check
    /// (whitepaper §3.1) reads one point through the hash index's bloom filter.
    pub fn holds_live(&self, key: &EntryKey, now: UnixMillis) -> Result<bool, StoreError> {
        Ok(self
            .held(key)?
            .is_some_and(|(_, expiry, _, _)| expiry > now))
    }

    /// What is held under `key`, expired or not.
    fn entry(&self, key: &EntryKey) -> Result<Option<EntryState>, StoreError> {
        let kb = key.to_bytes();
        if let Some(v) = self.db.get_cf(handle(&self.db, Cf::Tomb)?, kb)? {
            if v.len() != 8 {
                return Err(Corruption::TombstoneValue.into());
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
            return Err(Corruption::HashIndexValue.into());
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
                let (bad_key, bad_value) = index_corruption(cf);
                let key = EntryKey::from_bytes(&k).ok_or(bad_key)?;
                if v.len() != 8 {
                    return Err(bad_value.into());
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
                let key = EntryKey::from_bytes(&k).ok_or(index_corruption(cf).0)?;
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
                keys.push(EntryKey::from_bytes(&k).ok_or(index_corruption(cf).0)?);
            }
        }
        Ok(keys)
    }
}

/// How a malformed key and value of an index keyed by entry key (`hash` or `tomb`) are reported.
fn index_corruption(cf: Cf) -> (Corruption, Corruption) {
    match cf {
        Cf::Tomb => (Corruption::TombstoneKey, Corruption::TombstoneValue),
        _ => (Corruption::HashIndexKey, Corruption::HashIndexValue),
    }
}
