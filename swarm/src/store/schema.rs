//! The store on disk (whitepaper §6): column families, key and value encodings, the schema
//! version and the upgrade from version 1.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode,
    Options, WriteOptions,
};

use allium_proto::storage::{Mailbox, MessageHash, Namespace};
use allium_proto::sync::ENTRY_KEY_LEN;
use allium_proto::time::UnixMillis;

use super::error::{Corruption, StoreError};
use super::{MESSAGE_OVERHEAD, Usage};

/// Schema version written to `meta/schema`.
const SCHEMA_VERSION: u32 = 2;

const CF_MSG: &str = "msg";
const CF_HASH: &str = "hash";
const CF_EXP: &str = "exp";
const CF_USAGE: &str = "usage";
const CF_META: &str = "meta";
const META_SCHEMA: &[u8] = b"schema";
pub(super) const META_TOTAL: &[u8] = b"total";
/// Charged bytes and messages of the node in the blob namespace (storage §6).
pub(super) const META_BLOB_TOTAL: &[u8] = b"blob_total";

/// The `usage` key and the `meta` total key that count a message of `namespace`: the blob
/// namespace has its own quota and cap (storage §5.1), so its own counters.
pub(super) fn counter_keys(mailbox: &Mailbox, namespace: Namespace) -> (Vec<u8>, &'static [u8]) {
    if namespace == allium_proto::storage::BLOB {
        let mut k = mailbox.as_bytes().to_vec();
        k.extend_from_slice(&namespace.to_be_bytes());
        (k, META_BLOB_TOTAL)
    } else {
        (mailbox.as_bytes().to_vec(), META_TOTAL)
    }
}
pub(super) const META_CLOCK: &[u8] = b"clock";
const CF_TOMB: &str = "tomb";
const VALUE_VERSION: u8 = 2;

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

/// Opens (creating if needed) the database at `path` with every column family, checks the
/// schema version (upgrading version 1 in place) and returns it with the persisted clock floor.
pub(super) fn open_db(path: &Path) -> Result<(DB, UnixMillis), StoreError> {
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
    let db = DB::open_cf_descriptors(&db_options(), path, cfs)?;
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
            let v: [u8; 4] = v.try_into().map_err(|_| Corruption::SchemaVersion)?;
            return Err(StoreError::Schema(u32::from_be_bytes(v)));
        }
    }
    let hw = match db.get_cf(meta, META_CLOCK)? {
        Some(v) if v.len() == 8 => be64(&v),
        Some(_) => return Err(Corruption::Clock.into()),
        None => 0,
    };
    Ok((db, hw))
}

impl Usage {
    pub(super) fn decode(v: Option<Vec<u8>>) -> Result<Self, StoreError> {
        let Some(v) = v else {
            return Ok(Self::default());
        };
        if v.len() != 16 {
            return Err(Corruption::UsageValue.into());
        }
        Ok(Self {
            bytes: be64(&v[..8]),
            count: be64(&v[8..]),
        })
    }
    pub(super) fn encode(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.bytes.to_be_bytes());
        v.extend_from_slice(&self.count.to_be_bytes());
        v
    }
}

pub(super) fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// `mailbox (32) || namespace (u16 BE)`.
pub(super) fn prefix(mailbox: &Mailbox, ns: Namespace) -> [u8; 34] {
    let mut k = [0u8; 34];
    k[..32].copy_from_slice(mailbox.as_bytes());
    k[32..].copy_from_slice(&ns.to_be_bytes());
    k
}

/// msg key: `prefix || timestamp (u64 BE) || hash (32)`.
pub(super) fn msg_key(
    mailbox: &Mailbox,
    ns: Namespace,
    ts: UnixMillis,
    hash: &MessageHash,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(74);
    k.extend_from_slice(&prefix(mailbox, ns));
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&hash.0);
    k
}

/// exp key: `expiry (u64 BE) || msg key`; value empty.
pub(super) fn exp_key(expiry: UnixMillis, msg_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + msg_key.len());
    k.extend_from_slice(&expiry.to_be_bytes());
    k.extend_from_slice(msg_key);
    k
}

/// tomb exp key: `until (u64 BE) || entry key`; 74 bytes, where a message's is 82.
pub(super) fn tomb_exp_key(until: UnixMillis, key: &[u8; ENTRY_KEY_LEN]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + ENTRY_KEY_LEN);
    k.extend_from_slice(&until.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// msg value: `2 || expiry (u64 BE) || set_at (u64 BE) || data`.
pub(super) fn msg_value(expiry: UnixMillis, set_at: UnixMillis, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + data.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&expiry.to_be_bytes());
    v.extend_from_slice(&set_at.to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// (expiry, set_at, data). Version-1 values (`1 || expiry || data`, schema 1) read with
/// `set_at = 0`: any later setting wins over them.
pub(super) fn parse_msg_value(v: &[u8]) -> Result<(UnixMillis, UnixMillis, &[u8]), StoreError> {
    match v.first() {
        Some(1) if v.len() >= 9 => Ok((be64(&v[1..9]), 0, &v[9..])),
        Some(2) if v.len() >= 17 => Ok((be64(&v[1..9]), be64(&v[9..17]), &v[17..])),
        _ => Err(Corruption::MessageValue.into()),
    }
}

/// Splits a msg key into (mailbox, namespace, timestamp, hash).
pub(super) fn parse_msg_key(
    k: &[u8],
) -> Result<(Mailbox, Namespace, UnixMillis, MessageHash), StoreError> {
    if k.len() != 74 {
        return Err(Corruption::MessageKey.into());
    }
    let mut m = [0u8; 32];
    m.copy_from_slice(&k[..32]);
    let ns = u16::from_be_bytes([k[32], k[33]]);
    let mut h = [0u8; 32];
    h.copy_from_slice(&k[42..]);
    Ok((Mailbox::from_bytes(m), ns, be64(&k[34..42]), MessageHash(h)))
}

pub(super) fn charge(data_len: usize) -> u64 {
    data_len as u64 + MESSAGE_OVERHEAD
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Cf {
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

pub(super) fn handle(db: &DB, cf: Cf) -> Result<&ColumnFamily, StoreError> {
    db.cf_handle(cf.name())
        .ok_or(StoreError::Corrupt(Corruption::MissingColumnFamily(
            cf.name(),
        )))
}

/// The smallest byte string greater than every string starting with `p`, if any.
pub(super) fn successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut s = p.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}
