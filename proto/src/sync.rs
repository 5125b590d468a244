//! Replication between swarm members (whitepaper storage §9): the items members exchange, the
//! anti-entropy digests, the CBOR peer protocol, and [`Session`], one anti-entropy pull as a
//! state machine. Pure: no I/O, no clock.

mod session;

pub use session::{Action, Session, SessionError};

use crate::cbor::{Decoder, Encoder};
use crate::crypto;
use crate::error::{DecodeError, Status};
use crate::storage::{MAX_DATA_BYTES, Mailbox, MessageHash, Namespace};
use crate::time::UnixMillis;

/// Anti-entropy buckets: a mailbox falls in bucket `mailbox[0]`.
pub const BUCKETS: usize = 256;
/// Bytes of a bucket digest sent on the wire (a prefix of the 32-byte digest).
pub const BUCKET_DIGEST_LEN: usize = 16;
/// Most items in one `replicate` request or `fetch` answer.
pub const MAX_ITEMS: usize = 256;
/// Most entries in one `entries` page.
pub const MAX_ENTRIES: usize = 2048;
/// Most hashes in one `fetch` request.
pub const MAX_FETCH: usize = 256;
/// Largest peer request or response body.
pub const MAX_PEER_BYTES: usize = 1024 * 1024;
/// Bytes of an entry key: `mailbox || namespace (u16 BE) || hash`.
pub const ENTRY_KEY_LEN: usize = 66;

/// Where an entry sorts: `mailbox || namespace (u16 BE) || hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
    /// Content hash.
    pub hash: MessageHash,
}

impl EntryKey {
    /// The 66 key bytes (also the store's index key).
    pub fn to_bytes(&self) -> [u8; ENTRY_KEY_LEN] {
        let mut k = [0u8; ENTRY_KEY_LEN];
        k[..32].copy_from_slice(self.mailbox.as_bytes());
        k[32..34].copy_from_slice(&self.namespace.to_be_bytes());
        k[34..].copy_from_slice(&self.hash.0);
        k
    }

    /// Parses 66 key bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != ENTRY_KEY_LEN {
            return None;
        }
        let mut mailbox = [0u8; 32];
        mailbox.copy_from_slice(&b[..32]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[34..]);
        Some(Self {
            mailbox: Mailbox::from_bytes(mailbox),
            namespace: u16::from_be_bytes([b[32], b[33]]),
            hash: MessageHash(hash),
        })
    }

    /// The anti-entropy bucket.
    pub fn bucket(&self) -> u8 {
        self.mailbox.as_bytes()[0]
    }
}

/// What a member holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// A live message with its expiry and the time that expiry was set.
    Live {
        /// Absolute expiry.
        expiry: UnixMillis,
        /// When the expiry was last set (the later setting wins).
        set_at: UnixMillis,
    },
    /// Deleted; the tombstone is kept until `until`, after which the message cannot come back
    /// because it would have expired.
    Deleted {
        /// Keep-until time.
        until: UnixMillis,
    },
}

impl EntryState {
    fn live(self) -> Option<(UnixMillis, UnixMillis)> {
        match self {
            EntryState::Live { expiry, set_at } => Some((expiry, set_at)),
            EntryState::Deleted { .. } => None,
        }
    }

    /// Whether `theirs` should replace `self` (the merge rule of whitepaper storage §9.3):
    /// a tombstone beats a live message; between live ones the later `(set_at, expiry)` wins.
    pub fn superseded_by(self, theirs: EntryState) -> bool {
        match (self, theirs) {
            (EntryState::Deleted { .. }, _) => false,
            (EntryState::Live { .. }, EntryState::Deleted { .. }) => true,
            (
                EntryState::Live { expiry, set_at },
                EntryState::Live {
                    expiry: e,
                    set_at: s,
                },
            ) => (s, e) > (set_at, expiry),
        }
    }
}

/// One entry of a member's holdings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Where it sorts.
    pub key: EntryKey,
    /// What is held.
    pub state: EntryState,
}

impl Entry {
    /// The entry's digest; a bucket's digest is the XOR of its entries' digests.
    pub fn digest(&self) -> [u8; 32] {
        crypto::entry_digest(
            &self.key.mailbox,
            self.key.namespace,
            &self.key.hash,
            self.state.live(),
        )
    }
}

/// The XOR digests of the 256 buckets, maintained incrementally by the store.
#[derive(Clone, PartialEq, Eq)]
pub struct Digests(Box<[[u8; 32]; BUCKETS]>);

impl Default for Digests {
    fn default() -> Self {
        Digests(Box::new([[0u8; 32]; BUCKETS]))
    }
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digests({:02x?})", &self.root()[..8])
    }
}

impl Digests {
    /// Adds or removes (XOR is its own inverse) an entry.
    pub fn toggle(&mut self, entry: &Entry) {
        self.xor(entry.key.bucket(), &entry.digest());
    }

    /// XORs `d` into bucket `b`.
    pub fn xor(&mut self, b: u8, d: &[u8; 32]) {
        for (x, y) in self.0[usize::from(b)].iter_mut().zip(d) {
            *x ^= y;
        }
    }

    /// The root digest over all buckets.
    pub fn root(&self) -> [u8; 32] {
        crypto::sync_root(&self.0[..])
    }

    /// The truncated digest of every bucket, as sent on the wire.
    pub fn truncated(&self) -> Vec<[u8; BUCKET_DIGEST_LEN]> {
        self.0
            .iter()
            .map(|d| {
                let mut t = [0u8; BUCKET_DIGEST_LEN];
                t.copy_from_slice(&d[..BUCKET_DIGEST_LEN]);
                t
            })
            .collect()
    }
}

/// A message as replicated: everything a member needs to hold it exactly as the sender does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemMessage {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
    /// Timestamp the accepting member gave it.
    pub timestamp: UnixMillis,
    /// Absolute expiry.
    pub expiry: UnixMillis,
    /// When the expiry was set.
    pub set_at: UnixMillis,
    /// Message bytes; the receiver recomputes the content hash from them.
    pub data: Vec<u8>,
}

/// One unit of replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Hold this message.
    Message(ItemMessage),
    /// This message is deleted; keep its tombstone until `until`.
    Tombstone {
        /// Which message.
        key: EntryKey,
        /// Keep-until time.
        until: UnixMillis,
    },
    /// This message's expiry was set.
    Expiry {
        /// Which message.
        key: EntryKey,
        /// The new expiry.
        expiry: UnixMillis,
        /// When it was set.
        set_at: UnixMillis,
    },
}

impl Item {
    /// Bytes of message data the item carries (none for tombstones and expiries): what the
    /// fetch and pull budgets count.
    pub fn data_len(&self) -> usize {
        match self {
            Item::Message(m) => m.data.len(),
            Item::Tombstone { .. } | Item::Expiry { .. } => 0,
        }
    }

    /// The mailbox the item concerns.
    pub fn mailbox(&self) -> &Mailbox {
        match self {
            Item::Message(m) => &m.mailbox,
            Item::Tombstone { key, .. } | Item::Expiry { key, .. } => &key.mailbox,
        }
    }

    fn encode_into(&self, e: &mut Encoder) {
        match self {
            Item::Message(m) => {
                e.array(7)
                    .uint(0)
                    .bytes(m.mailbox.as_bytes())
                    .uint(m.namespace.into());
                e.uint(m.timestamp)
                    .uint(m.expiry)
                    .uint(m.set_at)
                    .bytes(&m.data);
            }
            Item::Tombstone { key, until } => {
                e.array(5).uint(1).bytes(key.mailbox.as_bytes());
                e.uint(key.namespace.into()).bytes(&key.hash.0).uint(*until);
            }
            Item::Expiry {
                key,
                expiry,
                set_at,
            } => {
                e.array(6).uint(2).bytes(key.mailbox.as_bytes());
                e.uint(key.namespace.into()).bytes(&key.hash.0);
                e.uint(*expiry).uint(*set_at);
            }
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let n = d.array(7)?;
        let kind = d.uint()?;
        let mailbox = Mailbox::from_bytes(d.fixed()?);
        let namespace = namespace(d)?;
        let item = match (kind, n) {
            (0, 7) => Item::Message(ItemMessage {
                mailbox,
                namespace,
                timestamp: d.uint()?,
                expiry: d.uint()?,
                set_at: d.uint()?,
                data: d.bytes(MAX_DATA_BYTES)?.to_vec(),
            }),
            (1, 5) => Item::Tombstone {
                key: EntryKey {
                    mailbox,
                    namespace,
                    hash: MessageHash(d.fixed()?),
                },
                until: d.uint()?,
            },
            (2, 6) => Item::Expiry {
                key: EntryKey {
                    mailbox,
                    namespace,
                    hash: MessageHash(d.fixed()?),
                },
                expiry: d.uint()?,
                set_at: d.uint()?,
            },
            _ => return Err(DecodeError::InvalidValue("replication item")),
        };
        d.leave();
        Ok(item)
    }
}

/// What a member does about a page of a peer's entries to converge (whitepaper storage §9.4 step
/// 3): items to apply as they are, and keys whose message it must fetch from the peer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Items to apply here as they are (tombstones, later expiry settings).
    pub apply: Vec<Item>,
    /// Keys whose message must be fetched from the peer.
    pub fetch: Vec<EntryKey>,
}

impl Plan {
    /// Adds what to do about the peer's entry `theirs`, given what is held here under its key
    /// (`mine`) at `now`, by the merge rule of §9.3: a tombstone not held here is applied, a live
    /// message not held is fetched, a later expiry setting is applied; entries expired at `now`
    /// change nothing.
    pub fn add(&mut self, mine: Option<EntryState>, theirs: &Entry, now: UnixMillis) {
        let key = theirs.key;
        match (mine, theirs.state) {
            (_, EntryState::Deleted { until }) if until > now => {
                if !matches!(mine, Some(EntryState::Deleted { .. })) {
                    self.apply.push(Item::Tombstone { key, until });
                }
            }
            (_, EntryState::Deleted { .. }) => {}
            (_, EntryState::Live { expiry, .. }) if expiry <= now => {}
            (None, EntryState::Live { .. }) => self.fetch.push(key),
            (Some(m @ EntryState::Live { .. }), t @ EntryState::Live { expiry, set_at }) => {
                if m.superseded_by(t) {
                    self.apply.push(Item::Expiry {
                        key,
                        expiry,
                        set_at,
                    });
                }
            }
            // A tombstone here beats the peer's live copy; the peer pulls it in its turn.
            (Some(EntryState::Deleted { .. }), EntryState::Live { .. }) => {}
        }
    }
}

fn namespace(d: &mut Decoder<'_>) -> Result<Namespace, DecodeError> {
    Namespace::try_from(d.uint()?).map_err(|_| DecodeError::InvalidValue("namespace"))
}

/// A request from one swarm member to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRequest {
    /// Hold these items (a fresh store, delete or expiry, or a hand-off).
    Replicate(Vec<Item>),
    /// Your root digest.
    Root,
    /// Your 256 bucket digests.
    Buckets,
    /// Your entries in `bucket`, after `after`, at most `limit`.
    Entries {
        /// The bucket.
        bucket: u8,
        /// Resume after this key.
        after: Option<EntryKey>,
        /// Most entries to return.
        limit: u16,
    },
    /// The messages (or tombstones) you hold under these keys.
    Fetch(Vec<EntryKey>),
}

/// The peer request kinds, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMethod {
    /// `replicate`.
    Replicate = 1,
    /// `root`.
    Root = 2,
    /// `buckets`.
    Buckets = 3,
    /// `entries`.
    Entries = 4,
    /// `fetch`.
    Fetch = 5,
}

impl PeerRequest {
    /// The method.
    pub fn method(&self) -> PeerMethod {
        match self {
            PeerRequest::Replicate(_) => PeerMethod::Replicate,
            PeerRequest::Root => PeerMethod::Root,
            PeerRequest::Buckets => PeerMethod::Buckets,
            PeerRequest::Entries { .. } => PeerMethod::Entries,
            PeerRequest::Fetch(_) => PeerMethod::Fetch,
        }
    }

    /// Canonical CBOR: `[method, args...]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64);
        match self {
            PeerRequest::Replicate(items) => {
                e.array(2).uint(1).array(items.len());
                for i in items {
                    i.encode_into(&mut e);
                }
            }
            PeerRequest::Root => {
                e.array(1).uint(2);
            }
            PeerRequest::Buckets => {
                e.array(1).uint(3);
            }
            PeerRequest::Entries {
                bucket,
                after,
                limit,
            } => {
                e.array(4).uint(4).uint((*bucket).into());
                match after {
                    Some(k) => e.bytes(&k.to_bytes()),
                    None => e.bytes(&[]),
                };
                e.uint((*limit).into());
            }
            PeerRequest::Fetch(keys) => {
                e.array(2).uint(5).array(keys.len());
                for k in keys {
                    e.bytes(&k.to_bytes());
                }
            }
        }
        e.buf
    }

    /// Decodes a request, refusing anything outside the limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_PEER_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_PEER_BYTES,
            });
        }
        let mut d = Decoder::new(bytes);
        let n = d.array(4)?;
        let req = match (d.uint()?, n) {
            (1, 2) => {
                let k = d.array(MAX_ITEMS)?;
                let mut items = Vec::with_capacity(k);
                for _ in 0..k {
                    items.push(Item::decode(&mut d)?);
                }
                d.leave();
                PeerRequest::Replicate(items)
            }
            (2, 1) => PeerRequest::Root,
            (3, 1) => PeerRequest::Buckets,
            (4, 4) => {
                let bucket =
                    u8::try_from(d.uint()?).map_err(|_| DecodeError::InvalidValue("bucket"))?;
                let after = match d.bytes(ENTRY_KEY_LEN)? {
                    [] => None,
                    b => Some(EntryKey::from_bytes(b).ok_or(DecodeError::InvalidValue("key"))?),
                };
                let limit = u16::try_from(d.uint()?)
                    .ok()
                    .filter(|l| (1..=MAX_ENTRIES).contains(&usize::from(*l)))
                    .ok_or(DecodeError::InvalidValue("limit"))?;
                PeerRequest::Entries {
                    bucket,
                    after,
                    limit,
                }
            }
            (5, 2) => PeerRequest::Fetch(decode_keys(&mut d, MAX_FETCH)?),
            (m, _) => return Err(DecodeError::UnknownMethod(m)),
        };
        d.leave();
        d.finish()?;
        Ok(req)
    }
}

fn decode_keys(d: &mut Decoder<'_>, max: usize) -> Result<Vec<EntryKey>, DecodeError> {
    let k = d.array(max)?;
    let mut keys = Vec::with_capacity(k);
    for _ in 0..k {
        let b = d.bytes(ENTRY_KEY_LEN)?;
        keys.push(EntryKey::from_bytes(b).ok_or(DecodeError::InvalidValue("key"))?);
    }
    d.leave();
    Ok(keys)
}

/// An answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerResponse {
    /// `replicate`: one status per item (`ok` when the item is now held).
    Replicated(Vec<Status>),
    /// `root`: the root digest, and the node time when the peer answered (storage §9.4; the
    /// asking member compares its clock with it, §8.3).
    Root {
        /// The root digest.
        root: [u8; 32],
        /// The answering member's node time.
        now: UnixMillis,
    },
    /// `buckets`: 256 truncated digests.
    Buckets(Vec<[u8; BUCKET_DIGEST_LEN]>),
    /// `entries`: a page, and whether more follow.
    Entries {
        /// The page, in key order.
        entries: Vec<Entry>,
        /// More entries follow the last one.
        more: bool,
    },
    /// `fetch`: the items held under the keys asked for (missing keys are left out).
    Fetched(Vec<Item>),
}

impl PeerResponse {
    /// The method this answers.
    pub fn method(&self) -> PeerMethod {
        match self {
            PeerResponse::Replicated(_) => PeerMethod::Replicate,
            PeerResponse::Root { .. } => PeerMethod::Root,
            PeerResponse::Buckets(_) => PeerMethod::Buckets,
            PeerResponse::Entries { .. } => PeerMethod::Entries,
            PeerResponse::Fetched(_) => PeerMethod::Fetch,
        }
    }

    /// Canonical CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64);
        match self {
            PeerResponse::Replicated(statuses) => {
                e.array(statuses.len());
                for s in statuses {
                    e.uint(s.code().into());
                }
            }
            PeerResponse::Root { root, now } => {
                e.array(2).bytes(root).uint(*now);
            }
            PeerResponse::Buckets(b) => {
                e.array(b.len());
                for d in b {
                    e.bytes(d);
                }
            }
            PeerResponse::Entries { entries, more } => {
                e.array(2).array(entries.len());
                for en in entries {
                    match en.state {
                        EntryState::Live { expiry, set_at } => {
                            e.array(3)
                                .bytes(&en.key.to_bytes())
                                .uint(expiry)
                                .uint(set_at);
                        }
                        EntryState::Deleted { until } => {
                            e.array(2).bytes(&en.key.to_bytes()).uint(until);
                        }
                    }
                }
                e.bool(*more);
            }
            PeerResponse::Fetched(items) => {
                e.array(items.len());
                for i in items {
                    i.encode_into(&mut e);
                }
            }
        }
        e.buf
    }

    /// Decodes the answer to a request of `method`.
    pub fn decode(bytes: &[u8], method: PeerMethod) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_PEER_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_PEER_BYTES,
            });
        }
        let mut d = Decoder::new(bytes);
        let resp = match method {
            PeerMethod::Replicate => {
                let k = d.array(MAX_ITEMS)?;
                let mut statuses = Vec::with_capacity(k);
                for _ in 0..k {
                    statuses.push(Status::from_code(d.uint()?)?);
                }
                d.leave();
                PeerResponse::Replicated(statuses)
            }
            PeerMethod::Root => {
                if d.array(2)? != 2 {
                    return Err(DecodeError::InvalidValue("root"));
                }
                let root = d.fixed()?;
                let now = d.uint()?;
                d.leave();
                PeerResponse::Root { root, now }
            }
            PeerMethod::Buckets => {
                if d.array(BUCKETS)? != BUCKETS {
                    return Err(DecodeError::InvalidValue("bucket count"));
                }
                let mut b = Vec::with_capacity(BUCKETS);
                for _ in 0..BUCKETS {
                    b.push(d.fixed()?);
                }
                d.leave();
                PeerResponse::Buckets(b)
            }
            PeerMethod::Entries => {
                if d.array(2)? != 2 {
                    return Err(DecodeError::InvalidValue("entries"));
                }
                let k = d.array(MAX_ENTRIES)?;
                let mut entries = Vec::with_capacity(k);
                for _ in 0..k {
                    let n = d.array(3)?;
                    let key = EntryKey::from_bytes(d.bytes(ENTRY_KEY_LEN)?)
                        .ok_or(DecodeError::InvalidValue("key"))?;
                    let state = match n {
                        3 => EntryState::Live {
                            expiry: d.uint()?,
                            set_at: d.uint()?,
                        },
                        2 => EntryState::Deleted { until: d.uint()? },
                        _ => return Err(DecodeError::InvalidValue("entry")),
                    };
                    d.leave();
                    entries.push(Entry { key, state });
                }
                d.leave();
                let more = d.bool()?;
                d.leave();
                PeerResponse::Entries { entries, more }
            }
            PeerMethod::Fetch => {
                let k = d.array(MAX_ITEMS)?;
                let mut items = Vec::with_capacity(k);
                for _ in 0..k {
                    items.push(Item::decode(&mut d)?);
                }
                d.leave();
                PeerResponse::Fetched(items)
            }
        };
        d.finish()?;
        Ok(resp)
    }
}
