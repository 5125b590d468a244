//! State the account's devices share (`whitepaper/devices.md` §8): contact names, their
//! verification and read positions, and device names, as entries merged without loss, carried
//! in records encrypted with the account's sync key in the owner namespace (1).
//!
//! ```text
//! entry  = u8(kind) || key (32) || u64be(time) || u32be(device_id) || u8(present)
//!          || [u8(len) || value]                                   value only when present
//! P      = u8(flags) || u16be(n) || n × entry || 0^pad             |P| a multiple of 256
//! record = 0x01 || r (32) || AES-256-GCM(k, nonce, "allium/v1/devices/sync-record" || 0x01, P)
//! k || nonce = HKDF(salt = r, ikm = sync key, info = "allium/v1/devices/sync-record", 44)
//! ```
//!
//! Every entry is a register merged by taking the larger under a total order: contact names,
//! verification and device names by their stamp `(time, device_id)` (last writer wins), read
//! positions by the position itself (they only move forward). Taking a maximum is commutative,
//! associative and idempotent, so devices that have seen the same records hold the same state,
//! whatever the order they saw them in.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::DeviceError;
use super::labels;
use super::link::valid_name;
use crate::session::codec::Reader;
use crate::session::{KEY_LEN, TAG_LEN, crypto};

/// Version byte of a record and of the local state file.
pub const VERSION: u8 = 1;
/// A contact's name: key = the contact's account key; absent = not a contact.
pub const CONTACT_NAME: u8 = 1;
/// A contact's verification: key = the contact's account key; value = the 60-digit safety
/// number the person confirmed; absent = not verified.
pub const CONTACT_VERIFIED: u8 = 2;
/// How far the person has read a conversation: key = the peer's account key; value =
/// `u64be(sent_ms) || msg_id (16)` of the last message read.
pub const READ_POSITION: u8 = 3;
/// A device's name: key = the device's signing key.
pub const DEVICE_NAME: u8 = 4;
/// `flags` bit of a record that holds a whole snapshot (alone or with the other parts of it).
pub const SNAPSHOT: u8 = 1;
/// Records are padded to a multiple of this, so their length tells little of what changed.
pub const PAD: usize = 256;
/// Largest stored item (storage.md §1).
const MAX_ITEM: usize = 61_440;
/// Bytes of a record besides `P`.
const RECORD_OVERHEAD: usize = 1 + 32 + TAG_LEN;
/// Largest `P`.
const MAX_PLAINTEXT: usize = (MAX_ITEM - RECORD_OVERHEAD) / PAD * PAD;
/// Entries the local state keeps at most.
pub const MAX_ENTRIES: usize = 100_000;

/// An entry's identity: its kind and key.
pub type EntryKey = (u8, [u8; KEY_LEN]);

/// One register's value and the stamp of the write that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The writer's time (Unix ms), raised above every stamp it had seen for this entry.
    pub time: u64,
    /// The writer's device id.
    pub device: u32,
    /// The value; `None` when removed.
    pub value: Option<Vec<u8>>,
}

impl Entry {
    fn encoded_len(&self) -> usize {
        1 + KEY_LEN + 8 + 4 + 1 + self.value.as_ref().map_or(0, |v| 1 + v.len())
    }

    fn encode_into(&self, key: &EntryKey, out: &mut Vec<u8>) {
        out.push(key.0);
        out.extend_from_slice(&key.1);
        out.extend_from_slice(&self.time.to_be_bytes());
        out.extend_from_slice(&self.device.to_be_bytes());
        match &self.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                // Values are at most 255 bytes (checked where they are made and decoded).
                out.push(u8::try_from(v.len()).unwrap_or(0));
                out.extend_from_slice(v);
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<(EntryKey, Entry), DeviceError> {
        let kind = r.u8()?;
        let key: [u8; KEY_LEN] = r.array()?;
        let time = r.u64()?;
        let device = r.u32()?;
        let value = match r.u8()? {
            0 => None,
            1 => {
                let len = usize::from(r.u8()?);
                Some(r.take(len)?.to_vec())
            }
            _ => return Err(DeviceError::Malformed("sync entry (present)")),
        };
        if let Some(v) = &value {
            if !valid_value(kind, v) {
                return Err(DeviceError::Malformed("sync entry (value)"));
            }
        }
        Ok((
            (kind, key),
            Entry {
                time,
                device,
                value,
            },
        ))
    }
}

/// Whether `value` is a value entries of `kind` may hold. Unknown kinds (from a newer client)
/// hold anything and are kept and passed on.
pub fn valid_value(kind: u8, value: &[u8]) -> bool {
    match kind {
        CONTACT_NAME | DEVICE_NAME => std::str::from_utf8(value).is_ok_and(valid_name),
        CONTACT_VERIFIED => value.len() == 60 && value.iter().all(u8::is_ascii_digit),
        READ_POSITION => value.len() == 8 + 16,
        _ => value.len() <= usize::from(u8::MAX),
    }
}

/// The merge order of two entries of one kind: the larger wins (§8.2).
pub fn order(kind: u8, a: &Entry, b: &Entry) -> Ordering {
    let stamp = |e: &Entry| (e.time, e.device);
    let value = |e: &Entry| (e.value.is_some(), e.value.clone());
    if kind == READ_POSITION {
        value(a)
            .cmp(&value(b))
            .then_with(|| stamp(a).cmp(&stamp(b)))
    } else {
        stamp(a)
            .cmp(&stamp(b))
            .then_with(|| value(a).cmp(&value(b)))
    }
}

/// A contact as the merged state names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The name, unique among contacts.
    pub name: String,
    /// The contact's account key.
    pub account: [u8; KEY_LEN],
    /// The safety number the person confirmed, if any.
    pub verified: Option<String>,
}

/// The shared state as this device holds it, with the entries it changed and has not published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    entries: BTreeMap<EntryKey, Entry>,
    pending: BTreeSet<EntryKey>,
    last_time: u64,
}

impl SyncState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of `(kind, key)`.
    pub fn get(&self, kind: u8, key: &[u8; KEY_LEN]) -> Option<&Entry> {
        self.entries.get(&(kind, *key))
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&EntryKey, &Entry)> {
        self.entries.iter()
    }

    /// Entries this device set and has not published.
    pub fn pending(&self) -> Vec<(EntryKey, Entry)> {
        self.pending
            .iter()
            .filter_map(|k| self.entries.get(k).map(|e| (*k, e.clone())))
            .collect()
    }

    /// Whether anything waits to be published.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Marks `published` as published (entries changed since keep their mark).
    pub fn published(&mut self, published: &[(EntryKey, Entry)]) {
        for (k, e) in published {
            if self.entries.get(k) == Some(e) {
                self.pending.remove(k);
            }
        }
    }

    /// Sets `(kind, key)` to `value` as this device (`device`) at `now`, with a stamp above
    /// every stamp seen for it, so a change made after seeing another device's wins over it
    /// even when that device's clock runs ahead. Returns whether anything changed.
    pub fn set(
        &mut self,
        kind: u8,
        key: &[u8; KEY_LEN],
        value: Option<Vec<u8>>,
        now: u64,
        device: u32,
    ) -> Result<bool, DeviceError> {
        if let Some(v) = &value {
            if !valid_value(kind, v) {
                return Err(DeviceError::Malformed("sync entry (value)"));
            }
        }
        let held = self.entries.get(&(kind, *key));
        if held.map(|e| &e.value) == Some(&value) || (held.is_none() && value.is_none()) {
            return Ok(false);
        }
        if kind == READ_POSITION && held.is_some_and(|e| e.value >= value) {
            return Ok(false);
        }
        if held.is_none() && self.entries.len() >= MAX_ENTRIES {
            return Err(DeviceError::Malformed("sync state (too many entries)"));
        }
        let floor = held.map_or(0, |e| e.time.saturating_add(1));
        let time = now.max(self.last_time.saturating_add(1)).max(floor);
        self.last_time = time;
        self.entries.insert(
            (kind, *key),
            Entry {
                time,
                device,
                value,
            },
        );
        self.pending.insert((kind, *key));
        Ok(true)
    }

    /// Merges an entry from another device's record. Returns whether it changed the state.
    pub fn merge(&mut self, key: EntryKey, entry: Entry) -> bool {
        self.last_time = self.last_time.max(entry.time);
        match self.entries.get(&key) {
            Some(held) if order(key.0, &entry, held) != Ordering::Greater => false,
            None if self.entries.len() >= MAX_ENTRIES => false,
            _ => {
                self.entries.insert(key, entry);
                // What another device published needs no publishing from here.
                self.pending.remove(&key);
                true
            }
        }
    }

    /// Merges every entry of a record; returns how many changed the state.
    pub fn merge_all(&mut self, entries: Vec<(EntryKey, Entry)>) -> usize {
        entries
            .into_iter()
            .filter(|(k, e)| valid_value_entry(k.0, e))
            .map(|(k, e)| self.merge(k, e))
            .filter(|&changed| changed)
            .count()
    }

    /// The contacts: entries of kind 1 that are present, with their verification. Two
    /// contacts named alike (set on two devices at once) keep the name for the later stamp;
    /// the other gets `-2` (`-3`, …) appended, the same on every device.
    pub fn contacts(&self) -> Vec<Contact> {
        let mut named: Vec<(&[u8; KEY_LEN], &Entry, String)> = self
            .entries
            .iter()
            .filter(|((kind, _), _)| *kind == CONTACT_NAME)
            .filter_map(|((_, key), e)| {
                let name = std::str::from_utf8(e.value.as_deref()?).ok()?;
                Some((key, e, name.to_owned()))
            })
            .collect();
        // Later stamps first, so they keep the plain name.
        named.sort_by(|a, b| order(CONTACT_NAME, b.1, a.1).then(a.0.cmp(b.0)));
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::with_capacity(named.len());
        for (key, _, name) in named {
            let mut unique = name.clone();
            let mut n = 2u32;
            while taken.contains(&unique) {
                let suffix = format!("-{n}");
                let keep = super::link::MAX_NAME
                    .saturating_sub(suffix.len())
                    .min(name.len());
                unique = format!("{}{suffix}", &name[..keep]);
                n += 1;
            }
            taken.insert(unique.clone());
            let verified = self
                .get(CONTACT_VERIFIED, key)
                .and_then(|e| e.value.as_ref())
                .and_then(|v| String::from_utf8(v.clone()).ok());
            out.push(Contact {
                name: unique,
                account: *key,
                verified,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Records the contacts as the person now has them (from the address book, which other
    /// programs may have changed): every difference from [`Self::contacts`] becomes an edit of
    /// this device at `now`. Returns how many entries changed.
    pub fn absorb_contacts(
        &mut self,
        contacts: &[Contact],
        now: u64,
        device: u32,
    ) -> Result<usize, DeviceError> {
        let current = self.contacts();
        let mut changed = 0;
        for c in contacts {
            let before = current.iter().find(|o| o.account == c.account);
            if before.map(|b| &b.name) != Some(&c.name) {
                changed += usize::from(self.set(
                    CONTACT_NAME,
                    &c.account,
                    Some(c.name.clone().into_bytes()),
                    now,
                    device,
                )?);
            }
            if before.map(|b| &b.verified) != Some(&c.verified) {
                let v = c.verified.clone().map(String::into_bytes);
                changed += usize::from(self.set(CONTACT_VERIFIED, &c.account, v, now, device)?);
            }
        }
        for gone in current
            .iter()
            .filter(|o| !contacts.iter().any(|c| c.account == o.account))
        {
            changed += usize::from(self.set(CONTACT_NAME, &gone.account, None, now, device)?);
            changed += usize::from(self.set(CONTACT_VERIFIED, &gone.account, None, now, device)?);
        }
        Ok(changed)
    }

    /// The read position of a conversation: `(sent_ms, msg_id)` of the last message read.
    pub fn read_position(&self, peer: &[u8; KEY_LEN]) -> Option<(u64, [u8; 16])> {
        let v = self.get(READ_POSITION, peer)?.value.as_ref()?;
        let mut t = [0u8; 8];
        t.copy_from_slice(v.get(..8)?);
        let mut id = [0u8; 16];
        id.copy_from_slice(v.get(8..24)?);
        Some((u64::from_be_bytes(t), id))
    }

    /// Moves the read position of a conversation forward (never back).
    pub fn mark_read(
        &mut self,
        peer: &[u8; KEY_LEN],
        sent_ms: u64,
        msg_id: &[u8; 16],
        now: u64,
        device: u32,
    ) -> Result<bool, DeviceError> {
        let value = [sent_ms.to_be_bytes().as_slice(), msg_id].concat();
        self.set(READ_POSITION, peer, Some(value), now, device)
    }

    /// A device's name.
    pub fn device_name(&self, signing_key: &[u8; KEY_LEN]) -> Option<String> {
        let v = self.get(DEVICE_NAME, signing_key)?.value.as_ref()?;
        String::from_utf8(v.clone()).ok()
    }

    /// The local file: `0x01 || u64be(last_time) || u32be(n) || n × (entry || u8(pending))`,
    /// in ascending key order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.entries.len() * 80);
        out.push(VERSION);
        out.extend_from_slice(&self.last_time.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(self.entries.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (k, e) in &self.entries {
            e.encode_into(k, &mut out);
            out.push(u8::from(self.pending.contains(k)));
        }
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DeviceError> {
        let mut r = Reader::new(bytes, "sync state");
        r.version(VERSION)?;
        let last_time = r.u64()?;
        let n = usize::try_from(r.u32()?).map_err(|_| DeviceError::Malformed("sync state"))?;
        if n > MAX_ENTRIES {
            return Err(DeviceError::Malformed("sync state (too many entries)"));
        }
        let mut state = SyncState {
            last_time,
            ..SyncState::default()
        };
        let mut prev: Option<EntryKey> = None;
        for _ in 0..n {
            let (k, e) = Entry::decode_from(&mut r)?;
            if prev.is_some_and(|p| p >= k) {
                return Err(DeviceError::Malformed("sync state (order)"));
            }
            prev = Some(k);
            match r.u8()? {
                0 => {}
                1 => {
                    state.pending.insert(k);
                }
                _ => return Err(DeviceError::Malformed("sync state (pending)")),
            }
            state.entries.insert(k, e);
        }
        r.finish()?;
        Ok(state)
    }
}

fn valid_value_entry(kind: u8, e: &Entry) -> bool {
    e.value.as_ref().is_none_or(|v| valid_value(kind, v))
}

/// The record key and nonce for the random `r`.
fn record_cipher(
    sync_key: &[u8; KEY_LEN],
    r: &[u8; 32],
) -> Result<(Aes256Gcm, [u8; 12]), DeviceError> {
    let okm = crypto::hkdf::<44>(r, &[sync_key], labels::SYNC_RECORD)?;
    let cipher = Aes256Gcm::new_from_slice(&okm[..32])
        .map_err(|_| DeviceError::Session(crate::session::SessionError::Kdf))?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm[32..]);
    Ok((cipher, nonce))
}

fn record_ad() -> Vec<u8> {
    [labels::SYNC_RECORD, &[VERSION]].concat()
}

/// Seals `entries` into records (as many as they need, each at most one stored item), each with
/// a fresh `r` drawn from `rng`. `snapshot` marks records that together hold the whole state.
pub fn seal_records(
    sync_key: &[u8; KEY_LEN],
    snapshot: bool,
    entries: &[(EntryKey, Entry)],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<Vec<u8>>, DeviceError> {
    let mut groups: Vec<&[(EntryKey, Entry)]> = Vec::new();
    let mut start = 0;
    let mut size = 3;
    for (i, (_, e)) in entries.iter().enumerate() {
        let len = e.encoded_len();
        if size + len > MAX_PLAINTEXT || i - start >= usize::from(u16::MAX) {
            groups.push(&entries[start..i]);
            start = i;
            size = 3;
        }
        size += len;
    }
    groups.push(&entries[start..]);
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let mut r = [0u8; 32];
        rng.fill_bytes(&mut r);
        out.push(seal_record_with(sync_key, snapshot, g, &r)?);
    }
    Ok(out)
}

/// One record with the given `r`, for the vectors.
#[doc(hidden)]
pub fn seal_record_with(
    sync_key: &[u8; KEY_LEN],
    snapshot: bool,
    entries: &[(EntryKey, Entry)],
    r: &[u8; 32],
) -> Result<Vec<u8>, DeviceError> {
    let mut sorted: Vec<&(EntryKey, Entry)> = entries.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    sorted.dedup_by_key(|(k, _)| *k);
    let mut p = Zeroizing::new(Vec::with_capacity(PAD));
    p.push(if snapshot { SNAPSHOT } else { 0 });
    let n = u16::try_from(sorted.len()).map_err(|_| DeviceError::Malformed("sync record"))?;
    p.extend_from_slice(&n.to_be_bytes());
    for (k, e) in sorted {
        e.encode_into(k, &mut p);
    }
    let padded = p.len().div_ceil(PAD) * PAD;
    if padded > MAX_PLAINTEXT {
        return Err(DeviceError::Malformed("sync record (too long)"));
    }
    p.resize(padded, 0);
    let (cipher, nonce) = record_cipher(sync_key, r)?;
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(nonce), &record_ad(), p.as_mut_slice())
        .map_err(|_| DeviceError::Malformed("sync record (too long)"))?;
    let mut out = Vec::with_capacity(RECORD_OVERHEAD + p.len());
    out.push(VERSION);
    out.extend_from_slice(r);
    out.extend_from_slice(&p);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// An opened record: whether it is (part of) a snapshot, and its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Part of a snapshot.
    pub snapshot: bool,
    /// Its entries, in key order.
    pub entries: Vec<(EntryKey, Entry)>,
}

/// Opens a record with the sync key and decodes it.
pub fn open_record(sync_key: &[u8; KEY_LEN], data: &[u8]) -> Result<Record, DeviceError> {
    if data.len() < RECORD_OVERHEAD + PAD || data.len() > MAX_ITEM {
        return Err(DeviceError::Malformed("sync record (length)"));
    }
    if data[0] != VERSION {
        return Err(DeviceError::UnknownVersion {
            what: "sync record",
            version: data[0],
        });
    }
    let mut r = [0u8; 32];
    r.copy_from_slice(&data[1..33]);
    let (body, tag) = data[33..].split_at(data.len() - 33 - TAG_LEN);
    if body.len() % PAD != 0 {
        return Err(DeviceError::Malformed("sync record (padding)"));
    }
    let (cipher, nonce) = record_cipher(sync_key, &r)?;
    let mut p = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_in_place_detached(
            &Nonce::from(nonce),
            &record_ad(),
            p.as_mut_slice(),
            Tag::from_slice(tag),
        )
        .map_err(|_| DeviceError::SyncRecordKey)?;
    let mut rd = Reader::new(&p, "sync record");
    let flags = rd.u8()?;
    if flags & !SNAPSHOT != 0 {
        return Err(DeviceError::Malformed("sync record (flags)"));
    }
    let n = usize::from(rd.u16()?);
    let mut entries = Vec::with_capacity(n.min(p.len() / 46));
    let mut prev: Option<EntryKey> = None;
    for _ in 0..n {
        let (k, e) = Entry::decode_from(&mut rd)?;
        if prev.is_some_and(|p| p >= k) {
            return Err(DeviceError::Malformed("sync record (order)"));
        }
        prev = Some(k);
        entries.push((k, e));
    }
    if rd.rest().iter().any(|&b| b != 0) {
        return Err(DeviceError::Malformed("sync record (padding)"));
    }
    Ok(Record {
        snapshot: flags & SNAPSHOT != 0,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;

    fn name(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn concurrent_renames_converge_on_the_later_stamp() {
        let bob = [7u8; 32];
        let mut one = SyncState::new();
        one.set(CONTACT_NAME, &bob, name("bob"), 100, 1).unwrap();
        let mut two = one.clone();
        two.merge_all(one.pending());
        // Both rename at once; device 2's clock is behind but its id breaks a tie.
        one.set(CONTACT_NAME, &bob, name("robert"), 200, 1).unwrap();
        two.set(CONTACT_NAME, &bob, name("bobby"), 200, 2).unwrap();
        let (p1, p2) = (one.pending(), two.pending());
        one.merge_all(p2);
        two.merge_all(p1);
        assert_eq!(one.contacts(), two.contacts());
        assert_eq!(one.contacts()[0].name, "bobby");
    }

    #[test]
    fn an_edit_after_seeing_another_wins_even_against_a_fast_clock() {
        let bob = [7u8; 32];
        let mut fast = SyncState::new();
        fast.set(CONTACT_NAME, &bob, name("bob"), 10_000, 1)
            .unwrap();
        let mut slow = SyncState::new();
        slow.merge_all(fast.pending());
        slow.set(CONTACT_NAME, &bob, name("robert"), 50, 2).unwrap();
        fast.merge_all(slow.pending());
        assert_eq!(fast.contacts()[0].name, "robert");
    }

    #[test]
    fn read_positions_only_move_forward() {
        let peer = [1u8; 32];
        let mut a = SyncState::new();
        let mut b = SyncState::new();
        a.mark_read(&peer, 500, &[1; 16], 1000, 1).unwrap();
        b.mark_read(&peer, 300, &[2; 16], 2000, 2).unwrap();
        let (pa, pb) = (a.pending(), b.pending());
        a.merge_all(pb);
        b.merge_all(pa);
        assert_eq!(a.read_position(&peer), Some((500, [1; 16])));
        assert_eq!(b.read_position(&peer), a.read_position(&peer));
        assert!(!a.mark_read(&peer, 400, &[3; 16], 3000, 1).unwrap());
    }

    #[test]
    fn names_taken_twice_are_told_apart_the_same_everywhere() {
        let mut s = SyncState::new();
        s.set(CONTACT_NAME, &[1; 32], name("bob"), 10, 1).unwrap();
        s.set(CONTACT_NAME, &[2; 32], name("bob"), 20, 2).unwrap();
        s.set(CONTACT_VERIFIED, &[1; 32], Some(vec![b'1'; 60]), 30, 1)
            .unwrap();
        let c = s.contacts();
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].name.as_str(), c[0].account), ("bob", [2; 32]));
        assert_eq!((c[1].name.as_str(), c[1].account), ("bob-2", [1; 32]));
        assert!(c[1].verified.is_some());
        // Absorbing what was shown changes nothing: the suffix is not an edit.
        let shown = s.contacts();
        assert_eq!(s.absorb_contacts(&shown, 40, 1).unwrap(), 0);
    }

    #[test]
    fn absorbing_the_address_book_records_adds_renames_and_removals() {
        let mut s = SyncState::new();
        let c = |n: &str, a: u8| Contact {
            name: n.into(),
            account: [a; 32],
            verified: None,
        };
        assert_eq!(s.absorb_contacts(&[c("a", 1), c("b", 2)], 1, 1).unwrap(), 2);
        // A rename, and a removal (nothing to unverify).
        assert_eq!(s.absorb_contacts(&[c("z", 1)], 2, 1).unwrap(), 2);
        assert_eq!(s.contacts(), vec![c("z", 1)]);
        assert!(s.get(CONTACT_NAME, &[2; 32]).unwrap().value.is_none());
        assert_eq!(s.pending().len(), 2);
    }

    #[test]
    fn records_round_trip_padded_and_split() {
        let key = [9u8; 32];
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut s = SyncState::new();
        for i in 0..2000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            s.set(CONTACT_NAME, &k, name(&format!("c{i}")), 1, 1)
                .unwrap();
        }
        let all = s.pending();
        let records = seal_records(&key, true, &all, &mut rng).unwrap();
        assert!(records.len() > 1);
        let mut back = SyncState::new();
        for r in &records {
            assert!(r.len() <= MAX_ITEM);
            assert_eq!((r.len() - RECORD_OVERHEAD) % PAD, 0);
            let opened = open_record(&key, r).unwrap();
            assert!(opened.snapshot);
            back.merge_all(opened.entries);
        }
        assert_eq!(back.contacts(), s.contacts());
        assert_eq!(
            open_record(&[8; 32], &records[0]).err(),
            Some(DeviceError::SyncRecordKey)
        );
        let mut bad = records[0].clone();
        bad[40] ^= 1;
        assert!(open_record(&key, &bad).is_err());
    }

    #[test]
    fn the_state_file_round_trips() {
        let mut s = SyncState::new();
        s.set(CONTACT_NAME, &[1; 32], name("bob"), 10, 1).unwrap();
        s.merge(
            (DEVICE_NAME, [2; 32]),
            Entry {
                time: 5,
                device: 2,
                value: name("laptop"),
            },
        );
        let back = SyncState::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        let enc = s.encode();
        assert!(SyncState::decode(&enc[..enc.len() - 1]).is_err());
    }

    fn arb_entry() -> impl Strategy<Value = (EntryKey, Entry)> {
        (
            prop_oneof![Just(CONTACT_NAME), Just(READ_POSITION), Just(9u8)],
            0u8..3,
            0u64..5,
            0u32..3,
            proptest::option::of(0u8..3),
        )
            .prop_map(|(kind, key, time, device, v)| {
                let value = v.map(|v| match kind {
                    READ_POSITION => vec![v; 24],
                    _ => format!("n{v}").into_bytes(),
                });
                (
                    (kind, [key; 32]),
                    Entry {
                        time,
                        device,
                        value,
                    },
                )
            })
    }

    proptest! {
        #[test]
        fn merging_in_any_order_gives_one_state(
            entries in proptest::collection::vec(arb_entry(), 0..40),
            seed in any::<u64>(),
        ) {
            let mut forward = SyncState::new();
            forward.merge_all(entries.clone());
            let mut shuffled = entries.clone();
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            for i in (1..shuffled.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let mut other = SyncState::new();
            other.merge_all(shuffled.clone());
            other.merge_all(shuffled);
            prop_assert_eq!(
                forward.entries().collect::<Vec<_>>(),
                other.entries().collect::<Vec<_>>()
            );
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = SyncState::decode(&bytes);
            let _ = open_record(&[0; 32], &bytes);
        }
    }
}
