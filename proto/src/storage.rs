//! Storage requests and responses, and their encoding (whitepaper §2–§4).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use allium_onion::{Id, Role};
use ed25519_dalek::{Signer, SigningKey};

use crate::cbor::{Decoder, Encoder, head_len};
use crate::crypto;
use crate::error::{DecodeError, Status};
use crate::time::UnixMillis;

/// Version of this protocol, reported by `info`.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest encoded request a node decodes; a longer one is refused (`too_large`) before parsing.
/// This is the decoder's bound: an onion packet carries less (64,646 bytes of request in the large
/// class, 3,206 in the small; whitepaper onion §3).
pub const MAX_REQUEST_BYTES: usize = 65_536;
/// Largest encoded response a client decodes; a longer one is refused before parsing. This is the
/// decoder's bound: what a node can send is bounded by the reply it travels in,
/// [`allium_onion::max_response`] bytes (65,515 in the large class, 4,075 in the small), and
/// every response within this module's limits fits the large class (whitepaper storage §1).
pub const MAX_RESPONSE_BYTES: usize = 65_536;
/// Largest message data.
pub const MAX_DATA_BYTES: usize = 61_440;
/// Most hashes in one `delete` or `expire`, and most entries in their responses.
pub const MAX_HASHES: usize = 256;
/// Most messages in one `retrieve` response.
pub const MAX_RETRIEVE_COUNT: u16 = 256;
/// Budget for the encoded messages of one `retrieve` response (keeps the whole answer, at most
/// 21 bytes more, within a large reply's 65,515 bytes; one message of [`MAX_DATA_BYTES`] always
/// fits).
pub const RETRIEVE_BUDGET_BYTES: usize = 64_000;
/// Longest long-poll wait a `retrieve` may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Most members in a `get_swarm` response.
pub const MAX_SWARM_MEMBERS: usize = 64;
/// Largest roster in a `roster` response.
pub const MAX_ROSTER_BYTES: usize = 61_440;
/// Longest software string in an `info` response.
pub const MAX_SOFTWARE_LEN: usize = 64;
/// Bytes of the signed roster in one `roster_page` answer (the last page may be shorter): the
/// whole answer is at most [`ROSTER_PAGE_BYTES`] + 38 bytes, within a large reply's 65,515
/// (whitepaper storage §1, roster §4.4).
pub const ROSTER_PAGE_BYTES: usize = 61_440;
/// Most pages a signed roster of [`crate::roster::MAX_SIGNED_ROSTER_BYTES`] takes: page indices
/// are below it.
pub const MAX_ROSTER_PAGES: u32 =
    crate::roster::MAX_SIGNED_ROSTER_BYTES.div_ceil(ROSTER_PAGE_BYTES) as u32;

/// A mailbox namespace (storage.md §4.3): who may write and who may read depends on it.
pub type Namespace = u16;
/// The inbox: anyone deposits, the owner reads.
pub const INBOX: Namespace = 0;
/// Owner-only records (the owner's devices keep their shared state here).
pub const OWNER: Namespace = 1;
/// Published records: the owner writes, anyone reads (prekey bundles, device lists).
pub const PUBLIC: Namespace = 2;
/// Delegation records: written, read, deleted and expired with the mailbox key only, never by a
/// delegate. A live message here whose data is a key lets that key sign for the mailbox
/// (storage.md §3, devices.md §2.1).
pub const DEVICES: Namespace = 3;
/// Message requests: the inbox share of strangers (storage.md §4.5). Anyone deposits without a
/// token, the owner reads; a small share of its own caps what it holds.
pub const REQUESTS: Namespace = 5;
/// Delivery-token verifiers (storage.md §4.5): written, read and deleted by the owner (or a
/// delegate). A live message here whose data is [`crypto::token_verifier`] of a token lets a
/// store carrying that token into the inbox.
pub const TOKENS: Namespace = 6;
/// Length of a delivery token.
pub const TOKEN_LEN: usize = 32;
/// Blob namespace: the owner stores, anyone reads one message by its hash (`read_blob`);
/// charged against its own quota and cap (storage §4.3, §4.4).
pub const BLOB: Namespace = 4;
/// Shortest data stored in [`BLOB`], and the part of it the content hash covers.
pub const BLOB_PREFIX_LEN: usize = 36;

pub use allium_onion::NodeId;

/// The role of a key that names a mailbox: the owner's Ed25519 public key.
#[derive(Debug)]
pub enum MailboxRole {}

impl Role for MailboxRole {
    const NAME: &'static str = "Mailbox";
}

/// A mailbox: the owner's Ed25519 public key.
pub type Mailbox = Id<MailboxRole>;

/// A message's content hash ([`crypto::content_hash`]).
#[derive(Clone, Copy)]
pub struct MessageHash(pub [u8; 32]);

// Constant-time equality: a hash names a message a reader may not know (STYLE: arti `ct.rs`).
impl PartialEq for MessageHash {
    fn eq(&self, other: &Self) -> bool {
        crypto::ct_eq(&self.0, &other.0)
    }
}
impl Eq for MessageHash {}
impl Hash for MessageHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}
impl PartialOrd for MessageHash {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MessageHash {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}
impl fmt::Debug for MessageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageHash(")?;
        self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "…)")
    }
}

/// A position in a mailbox namespace: messages are ordered by (timestamp, hash). On the wire
/// `timestamp (u64 BE) || hash`, 40 bytes, which sorts bytewise in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CursorKey {
    /// The message timestamp (node time when first accepted).
    pub timestamp: UnixMillis,
    /// The content hash.
    pub hash: MessageHash,
}

impl CursorKey {
    /// The key just after every message with `timestamp <= t`.
    pub fn after_time(t: UnixMillis) -> Self {
        Self {
            timestamp: t,
            hash: MessageHash([0xff; 32]),
        }
    }
    /// The 40-byte wire form.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        b[8..].copy_from_slice(&self.hash.0);
        b
    }
    /// Parses the 40-byte wire form.
    pub fn from_bytes(b: &[u8; 40]) -> Self {
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[..8]);
        let mut h = [0u8; 32];
        h.copy_from_slice(&b[8..]);
        Self {
            timestamp: u64::from_be_bytes(t),
            hash: MessageHash(h),
        }
    }
}

/// Method ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Method {
    /// Deposit a message.
    Store = 1,
    /// Read messages after a cursor, optionally waiting.
    Retrieve = 2,
    /// Delete messages by hash.
    Delete = 3,
    /// Delete every message of a namespace.
    DeleteAll = 4,
    /// Set messages' expiry (shorten or extend).
    Expire = 5,
    /// Node time and version.
    Info = 6,
    /// The swarm holding a mailbox.
    GetSwarm = 7,
    /// The signed roster.
    Roster = 8,
    /// What a mailbox namespace holds, against its limits.
    Usage = 10,
    /// One message of the blob namespace by hash, unsigned.
    ReadBlob = 9,
    /// One page of the signed roster, unsigned.
    RosterPage = 11,
}

impl Method {
    /// All methods, in id order.
    pub const ALL: [Method; 11] = [
        Method::Store,
        Method::Retrieve,
        Method::Delete,
        Method::DeleteAll,
        Method::Expire,
        Method::Info,
        Method::GetSwarm,
        Method::Roster,
        Method::Usage,
        Method::ReadBlob,
        Method::RosterPage,
    ];
    /// The wire id.
    pub fn id(self) -> u8 {
        self as u8
    }
    /// Parses a wire id.
    pub fn from_id(id: u64) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|m| u64::from(m.id()) == id)
            .ok_or(DecodeError::UnknownMethod(id))
    }
}

/// `store`: deposit `data` for `ttl_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRequest {
    /// Recipient mailbox.
    pub mailbox: Mailbox,
    /// Namespace; anything but [`INBOX`] needs the mailbox's signature.
    pub namespace: Namespace,
    /// Time to live, milliseconds.
    pub ttl_ms: u64,
    /// Message bytes (opaque ciphertext), at most [`MAX_DATA_BYTES`].
    pub data: Vec<u8>,
    /// A delivery token the owner handed its contacts (storage.md §4.5): required for, and
    /// allowed only with, a store to [`INBOX`].
    pub token: Option<DeliveryToken>,
}

/// A delivery token: 32 random bytes a mailbox owner gives its contacts inside the end-to-end
/// encryption. The node knows only its verifier ([`crypto::token_verifier`]).
#[derive(Clone, Copy)]
pub struct DeliveryToken(pub [u8; TOKEN_LEN]);

// Constant-time equality: a token is a credential.
impl PartialEq for DeliveryToken {
    fn eq(&self, other: &Self) -> bool {
        crypto::ct_eq(&self.0, &other.0)
    }
}
impl Eq for DeliveryToken {}
impl fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeliveryToken(<redacted>)")
    }
}

/// `usage`: what a namespace of a mailbox holds, and the whole mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRequest {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
}

/// `retrieve`: messages strictly after `after`, in (timestamp, hash) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrieveRequest {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
    /// Exclusive lower bound; `None` = from the start.
    pub after: Option<CursorKey>,
    /// Most messages to return, 1..=[`MAX_RETRIEVE_COUNT`]; `None` = the maximum.
    pub limit: Option<u16>,
    /// Long-poll: if nothing is there, wait up to this long (1..=[`MAX_WAIT_MS`]) for a message.
    pub wait_ms: Option<u64>,
}

/// `delete`: remove messages by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
    /// 1..=[`MAX_HASHES`] content hashes.
    pub hashes: Vec<MessageHash>,
}

/// `delete_all`: remove every message of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteAllRequest {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
}

/// `expire`: set the expiry of messages (shorten or extend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireRequest {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Namespace.
    pub namespace: Namespace,
    /// 1..=[`MAX_HASHES`] content hashes.
    pub hashes: Vec<MessageHash>,
    /// New absolute expiry; must lie in (now, now + max TTL].
    pub expiry: UnixMillis,
}

/// `get_swarm`: which swarm holds `mailbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetSwarmRequest {
    /// Mailbox.
    pub mailbox: Mailbox,
}

/// `roster`: the node's roster, if newer than `known_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterRequest {
    /// The newest roster version the client holds.
    pub known_version: Option<u64>,
}

/// `read_blob`: the live message of `mailbox`'s blob namespace whose content hash is `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlobRequest {
    /// Mailbox.
    pub mailbox: Mailbox,
    /// Content hash in [`BLOB`] (an address, storage §5.1).
    pub hash: MessageHash,
}

/// Which roster a `roster_page` request wants a page of (storage §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOf {
    /// The roster the node holds, whatever its version.
    Held,
    /// Only this version: a node holding another answers without the page (the roster changed
    /// while the client fetched its pages).
    Version(u64),
    /// Only a version newer than this one, the version the client holds: a node holding no
    /// newer one answers without the page ("not modified").
    NewerThan(u64),
}

/// `roster_page`: one fixed-size slice of the node's signed roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterPageRequest {
    /// Page index, below [`MAX_ROSTER_PAGES`]: bytes `page × ROSTER_PAGE_BYTES` onwards.
    pub page: u32,
    /// The condition on the node's version.
    pub of: PageOf,
}

/// A request body, one variant per method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `store`.
    Store(StoreRequest),
    /// `retrieve`.
    Retrieve(RetrieveRequest),
    /// `delete`.
    Delete(DeleteRequest),
    /// `delete_all`.
    DeleteAll(DeleteAllRequest),
    /// `expire`.
    Expire(ExpireRequest),
    /// `info`.
    Info,
    /// `get_swarm`.
    GetSwarm(GetSwarmRequest),
    /// `roster`.
    Roster(RosterRequest),
    /// `usage`.
    Usage(UsageRequest),
    /// `read_blob`.
    ReadBlob(ReadBlobRequest),
    /// `roster_page`.
    RosterPage(RosterPageRequest),
}

/// The signature block of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Client's clock when signing, Unix ms.
    pub timestamp: UnixMillis,
    /// Ed25519 signature over [`crypto::signed_data`], by the mailbox key or by `signer`.
    pub signature: [u8; 64],
    /// A delegate's Ed25519 public key, when the mailbox key did not sign (storage.md §3): the
    /// node accepts it only while the mailbox holds a live delegation record for it.
    pub signer: Option<[u8; 32]>,
}

/// A request: a body and, where the method needs one, a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub body: Body,
    /// Signature by the mailbox key.
    pub auth: Option<Auth>,
}

/// A decoded request with the digest of its body bytes.
#[derive(Debug, Clone)]
pub struct DecodedRequest {
    /// The request.
    pub request: Request,
    /// [`crypto::request_digest`] of the body as received.
    pub digest: [u8; 32],
}

fn enc_target(e: &mut Encoder, n: usize, mailbox: &Mailbox, namespace: Namespace) {
    e.map(n)
        .uint(1)
        .bytes(mailbox.as_bytes())
        .uint(2)
        .uint(namespace.into());
}

fn enc_hashes(e: &mut Encoder, hashes: &[MessageHash]) {
    e.array(hashes.len());
    for h in hashes {
        e.bytes(&h.0);
    }
}

impl Body {
    /// This body's method.
    pub fn method(&self) -> Method {
        match self {
            Body::Store(_) => Method::Store,
            Body::Retrieve(_) => Method::Retrieve,
            Body::Delete(_) => Method::Delete,
            Body::DeleteAll(_) => Method::DeleteAll,
            Body::Expire(_) => Method::Expire,
            Body::Info => Method::Info,
            Body::GetSwarm(_) => Method::GetSwarm,
            Body::Roster(_) => Method::Roster,
            Body::Usage(_) => Method::Usage,
            Body::ReadBlob(_) => Method::ReadBlob,
            Body::RosterPage(_) => Method::RosterPage,
        }
    }

    /// The mailbox and namespace a signature must cover, for methods that need one.
    pub fn auth_target(&self) -> Option<(Mailbox, Namespace)> {
        match self {
            Body::Store(r) if r.namespace == INBOX || r.namespace == REQUESTS => None,
            Body::Store(r) => Some((r.mailbox, r.namespace)),
            Body::Retrieve(r) if r.namespace == PUBLIC => None,
            Body::Retrieve(r) => Some((r.mailbox, r.namespace)),
            Body::Delete(r) => Some((r.mailbox, r.namespace)),
            Body::DeleteAll(r) => Some((r.mailbox, r.namespace)),
            Body::Expire(r) => Some((r.mailbox, r.namespace)),
            Body::Usage(r) => Some((r.mailbox, r.namespace)),
            Body::Info
            | Body::GetSwarm(_)
            | Body::Roster(_)
            | Body::ReadBlob(_)
            | Body::RosterPage(_) => None,
        }
    }

    /// The mailbox a request stores to or reads from (every method but `info`, `get_swarm`,
    /// `roster` and `roster_page`): the node serves it only if the mailbox is in its swarm.
    pub fn mailbox(&self) -> Option<Mailbox> {
        match self {
            Body::Store(r) => Some(r.mailbox),
            Body::Retrieve(r) => Some(r.mailbox),
            Body::Delete(r) => Some(r.mailbox),
            Body::DeleteAll(r) => Some(r.mailbox),
            Body::Expire(r) => Some(r.mailbox),
            Body::Usage(r) => Some(r.mailbox),
            Body::ReadBlob(r) => Some(r.mailbox),
            Body::Info | Body::GetSwarm(_) | Body::Roster(_) | Body::RosterPage(_) => None,
        }
    }

    fn encode_into(&self, e: &mut Encoder) {
        match self {
            Body::Store(r) => {
                enc_target(
                    e,
                    4 + usize::from(r.token.is_some()),
                    &r.mailbox,
                    r.namespace,
                );
                e.uint(3).uint(r.ttl_ms).uint(4).bytes(&r.data);
                if let Some(t) = &r.token {
                    e.uint(5).bytes(&t.0);
                }
            }
            Body::Retrieve(r) => {
                let n = 2
                    + usize::from(r.after.is_some())
                    + usize::from(r.limit.is_some())
                    + usize::from(r.wait_ms.is_some());
                enc_target(e, n, &r.mailbox, r.namespace);
                if let Some(a) = r.after {
                    e.uint(3).bytes(&a.to_bytes());
                }
                if let Some(l) = r.limit {
                    e.uint(4).uint(l.into());
                }
                if let Some(w) = r.wait_ms {
                    e.uint(5).uint(w);
                }
            }
            Body::Delete(r) => {
                enc_target(e, 3, &r.mailbox, r.namespace);
                e.uint(3);
                enc_hashes(e, &r.hashes);
            }
            Body::DeleteAll(r) => enc_target(e, 2, &r.mailbox, r.namespace),
            Body::Usage(r) => enc_target(e, 2, &r.mailbox, r.namespace),
            Body::Expire(r) => {
                enc_target(e, 4, &r.mailbox, r.namespace);
                e.uint(3);
                enc_hashes(e, &r.hashes);
                e.uint(4).uint(r.expiry);
            }
            Body::Info => {
                e.map(0);
            }
            Body::GetSwarm(r) => {
                e.map(1).uint(1).bytes(r.mailbox.as_bytes());
            }
            Body::Roster(r) => match r.known_version {
                Some(v) => {
                    e.map(1).uint(1).uint(v);
                }
                None => {
                    e.map(0);
                }
            },
            Body::ReadBlob(r) => {
                e.map(2)
                    .uint(1)
                    .bytes(r.mailbox.as_bytes())
                    .uint(2)
                    .bytes(&r.hash.0);
            }
            Body::RosterPage(r) => {
                let n = if r.of == PageOf::Held { 1 } else { 2 };
                e.map(n).uint(1).uint(r.page.into());
                match r.of {
                    PageOf::Held => {}
                    PageOf::Version(v) => {
                        e.uint(2).uint(v);
                    }
                    PageOf::NewerThan(v) => {
                        e.uint(3).uint(v);
                    }
                }
            }
        }
    }

    /// The canonical CBOR bytes of this body.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        self.encode_into(&mut e);
        e.buf
    }

    /// [`crypto::request_digest`] of this body.
    pub fn digest(&self) -> [u8; 32] {
        crypto::request_digest(&self.encode())
    }

    fn decode(method: Method, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(match method {
            Method::Store => {
                let f = Fields::read(d, 5, |k, d, f| match k {
                    1 => f.mailbox(d),
                    2 => f.namespace(d),
                    3 => f.uint(d, 0),
                    4 => {
                        f.data = Some(d.bytes(MAX_DATA_BYTES)?.to_vec());
                        Ok(())
                    }
                    5 => {
                        f.token = Some(DeliveryToken(d.fixed()?));
                        Ok(())
                    }
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                let (namespace, data) = (need(f.namespace, 2)?, need(f.data, 4)?);
                // The blob namespace names a message by its first bytes (storage §5.1).
                if namespace == BLOB && data.len() < BLOB_PREFIX_LEN {
                    return Err(DecodeError::InvalidValue("data"));
                }
                // A token names the inbox's door: anywhere else it is a mistake, and an inbox
                // store without one is refused by the node, not by the decoder (its answer says
                // to use the requests share).
                if f.token.is_some() && namespace != INBOX {
                    return Err(DecodeError::InvalidValue("token outside the inbox"));
                }
                Body::Store(StoreRequest {
                    mailbox: need(f.mailbox, 1)?,
                    namespace,
                    ttl_ms: need(f.uints[0], 3)?,
                    data,
                    token: f.token,
                })
            }
            Method::Retrieve => {
                let f = Fields::read(d, 5, |k, d, f| match k {
                    1 => f.mailbox(d),
                    2 => f.namespace(d),
                    3 => {
                        f.after = Some(CursorKey::from_bytes(&d.fixed::<40>()?));
                        Ok(())
                    }
                    4 => f.uint(d, 0),
                    5 => f.uint(d, 1),
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                let limit = match f.uints[0] {
                    None => None,
                    Some(l) if (1..=u64::from(MAX_RETRIEVE_COUNT)).contains(&l) => Some(l as u16),
                    Some(_) => return Err(DecodeError::InvalidValue("limit")),
                };
                let wait_ms = match f.uints[1] {
                    None => None,
                    Some(w @ 1..=MAX_WAIT_MS) => Some(w),
                    Some(_) => return Err(DecodeError::InvalidValue("wait")),
                };
                Body::Retrieve(RetrieveRequest {
                    mailbox: need(f.mailbox, 1)?,
                    namespace: need(f.namespace, 2)?,
                    after: f.after,
                    limit,
                    wait_ms,
                })
            }
            Method::Delete | Method::Expire => {
                let n = if method == Method::Delete { 3 } else { 4 };
                let f = Fields::read(d, n, |k, d, f| match k {
                    1 => f.mailbox(d),
                    2 => f.namespace(d),
                    3 => f.hashes(d),
                    4 if n == 4 => f.uint(d, 0),
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                let (mailbox, namespace) = (need(f.mailbox, 1)?, need(f.namespace, 2)?);
                let hashes = need(f.hashes, 3)?;
                if hashes.is_empty() {
                    return Err(DecodeError::InvalidValue("hashes"));
                }
                if method == Method::Delete {
                    Body::Delete(DeleteRequest {
                        mailbox,
                        namespace,
                        hashes,
                    })
                } else {
                    let expiry = need(f.uints[0], 4)?;
                    Body::Expire(ExpireRequest {
                        mailbox,
                        namespace,
                        hashes,
                        expiry,
                    })
                }
            }
            Method::DeleteAll | Method::Usage => {
                let f = Fields::read(d, 2, |k, d, f| match k {
                    1 => f.mailbox(d),
                    2 => f.namespace(d),
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                let (mailbox, namespace) = (need(f.mailbox, 1)?, need(f.namespace, 2)?);
                if method == Method::DeleteAll {
                    Body::DeleteAll(DeleteAllRequest { mailbox, namespace })
                } else {
                    Body::Usage(UsageRequest { mailbox, namespace })
                }
            }
            Method::Info => {
                Fields::read(d, 0, |k, _, _| Err(DecodeError::UnknownKey(k)))?;
                Body::Info
            }
            Method::GetSwarm => {
                let f = Fields::read(d, 1, |k, d, f| match k {
                    1 => f.mailbox(d),
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                Body::GetSwarm(GetSwarmRequest {
                    mailbox: need(f.mailbox, 1)?,
                })
            }
            Method::Roster => {
                let f = Fields::read(d, 1, |k, d, f| match k {
                    1 => f.uint(d, 0),
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                Body::Roster(RosterRequest {
                    known_version: f.uints[0],
                })
            }
            Method::ReadBlob => {
                let f = Fields::read(d, 2, |k, d, f| match k {
                    1 => f.mailbox(d),
                    2 => {
                        f.hashes = Some(vec![MessageHash(d.fixed()?)]);
                        Ok(())
                    }
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                Body::ReadBlob(ReadBlobRequest {
                    mailbox: need(f.mailbox, 1)?,
                    hash: need(f.hashes.and_then(|h| h.first().copied()), 2)?,
                })
            }
            Method::RosterPage => {
                let f = Fields::read(d, 3, |k, d, f| match k {
                    1 => f.uint(d, 0),
                    2 | 3 if f.uints[1].is_some() => {
                        Err(DecodeError::InvalidValue("two roster page conditions"))
                    }
                    2 | 3 => {
                        f.uints[1] = Some(d.uint()?);
                        f.cond_key = k;
                        Ok(())
                    }
                    _ => Err(DecodeError::UnknownKey(k)),
                })?;
                let page = need(f.uints[0], 1)?;
                let page = u32::try_from(page)
                    .ok()
                    .filter(|p| *p < MAX_ROSTER_PAGES)
                    .ok_or(DecodeError::InvalidValue("roster page"))?;
                let of = match (f.uints[1], f.cond_key) {
                    (None, _) => PageOf::Held,
                    (Some(v), 2) => PageOf::Version(v),
                    (Some(v), _) => PageOf::NewerThan(v),
                };
                Body::RosterPage(RosterPageRequest { page, of })
            }
        })
    }
}

fn need<T>(v: Option<T>, key: u64) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::MissingKey(key))
}

/// Scratch space for the fields of one map being decoded.
#[derive(Default)]
struct Fields {
    mailbox: Option<Mailbox>,
    namespace: Option<Namespace>,
    after: Option<CursorKey>,
    hashes: Option<Vec<MessageHash>>,
    data: Option<Vec<u8>>,
    token: Option<DeliveryToken>,
    uints: [Option<u64>; 2],
    /// The key the second uint came under, where two keys share its slot.
    cond_key: u64,
}

impl Fields {
    /// Reads a map of at most `max` entries, handing each key to `f`.
    fn read(
        d: &mut Decoder<'_>,
        max: usize,
        mut f: impl FnMut(u64, &mut Decoder<'_>, &mut Fields) -> Result<(), DecodeError>,
    ) -> Result<Fields, DecodeError> {
        let n = d.map(max)?;
        let mut fields = Fields::default();
        let mut prev = None;
        for _ in 0..n {
            let k = d.key(&mut prev)?;
            f(k, d, &mut fields)?;
        }
        d.leave();
        Ok(fields)
    }
    fn mailbox(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        self.mailbox = Some(Mailbox::from_bytes(d.fixed()?));
        Ok(())
    }
    fn namespace(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        let v = d.uint()?;
        self.namespace =
            Some(Namespace::try_from(v).map_err(|_| DecodeError::InvalidValue("namespace"))?);
        Ok(())
    }
    fn uint(&mut self, d: &mut Decoder<'_>, slot: usize) -> Result<(), DecodeError> {
        self.uints[slot] = Some(d.uint()?);
        Ok(())
    }
    fn hashes(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        self.hashes = Some(decode_hashes(d)?);
        Ok(())
    }
}

fn decode_hashes(d: &mut Decoder<'_>) -> Result<Vec<MessageHash>, DecodeError> {
    let n = d.array(MAX_HASHES)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(MessageHash(d.fixed()?));
    }
    d.leave();
    Ok(v)
}

impl Request {
    /// A request without signature (inbox `store`, `info`, `get_swarm`, `roster`).
    pub fn unsigned(body: Body) -> Self {
        Self { body, auth: None }
    }

    /// Signs `body` with the mailbox key for the node `node` at client time `timestamp`.
    /// A body that needs no signature is returned unsigned.
    pub fn signed(body: Body, key: &SigningKey, node: &NodeId, timestamp: UnixMillis) -> Self {
        let Some((mailbox, namespace)) = body.auth_target() else {
            return Self::unsigned(body);
        };
        let signed = crypto::signed_data(
            body.method().id(),
            &mailbox,
            namespace,
            timestamp,
            node,
            &body.digest(),
        );
        let signature = key.sign(&signed).to_bytes();
        Self {
            body,
            auth: Some(Auth {
                timestamp,
                signature,
                signer: None,
            }),
        }
    }

    /// Signs `body` with a delegate's key `key` (not the mailbox key), naming it as `signer`
    /// (storage.md §3). A body that needs no signature is returned unsigned.
    pub fn signed_by_delegate(
        body: Body,
        key: &SigningKey,
        node: &NodeId,
        timestamp: UnixMillis,
    ) -> Self {
        let mut req = Self::signed(body, key, node, timestamp);
        if let Some(a) = req.auth.as_mut() {
            a.signer = Some(key.verifying_key().to_bytes());
        }
        req
    }

    /// Canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(128);
        e.map(if self.auth.is_some() { 3 } else { 2 });
        e.uint(1).uint(self.body.method().id().into()).uint(2);
        self.body.encode_into(&mut e);
        if let Some(a) = &self.auth {
            e.uint(3)
                .map(if a.signer.is_some() { 3 } else { 2 })
                .uint(1)
                .uint(a.timestamp)
                .uint(2)
                .bytes(&a.signature);
            if let Some(signer) = &a.signer {
                e.uint(3).bytes(signer);
            }
        }
        e.buf
    }

    /// Decodes a request, rejecting anything but the canonical encoding of a valid request.
    pub fn decode(bytes: &[u8]) -> Result<DecodedRequest, DecodeError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_REQUEST_BYTES,
            });
        }
        let mut d = Decoder::new(bytes);
        let n = d.map(3)?;
        if n < 2 {
            return Err(DecodeError::MissingKey(if n == 0 { 1 } else { 2 }));
        }
        let mut prev = None;
        if d.key(&mut prev)? != 1 {
            return Err(DecodeError::MissingKey(1));
        }
        let method = Method::from_id(d.uint()?)?;
        if d.key(&mut prev)? != 2 {
            return Err(DecodeError::MissingKey(2));
        }
        let start = d.position();
        let body = Body::decode(method, &mut d)?;
        let digest = crypto::request_digest(d.slice(start, d.position()));
        let auth = if n == 3 {
            match d.key(&mut prev)? {
                3 => Some(decode_auth(&mut d)?),
                k => return Err(DecodeError::UnknownKey(k)),
            }
        } else {
            None
        };
        d.leave();
        d.finish()?;
        Ok(DecodedRequest {
            request: Request { body, auth },
            digest,
        })
    }
}

fn decode_auth(d: &mut Decoder<'_>) -> Result<Auth, DecodeError> {
    let n = d.map(3)?;
    let mut prev = None;
    let (mut timestamp, mut signature, mut signer) = (None, None, None);
    for _ in 0..n {
        match d.key(&mut prev)? {
            1 => timestamp = Some(d.uint()?),
            2 => signature = Some(d.fixed::<64>()?),
            3 => signer = Some(d.fixed::<32>()?),
            k => return Err(DecodeError::UnknownKey(k)),
        }
    }
    d.leave();
    Ok(Auth {
        timestamp: need(timestamp, 1)?,
        signature: need(signature, 2)?,
        signer,
    })
}

/// A message as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Content hash.
    pub hash: MessageHash,
    /// Timestamp: the accepting node's time; with `hash`, the message's cursor position.
    pub timestamp: UnixMillis,
    /// Absolute expiry, Unix ms.
    pub expiry: UnixMillis,
    /// Message bytes.
    pub data: Vec<u8>,
}

impl StoredMessage {
    /// The message's position for cursors.
    pub fn key(&self) -> CursorKey {
        CursorKey {
            timestamp: self.timestamp,
            hash: self.hash,
        }
    }

    /// Length of this message's encoding inside a `retrieve` response.
    pub fn encoded_len(&self) -> usize {
        Self::encoded_len_of(self.timestamp, self.expiry, self.data.len())
    }

    /// [`Self::encoded_len`] from the parts.
    pub fn encoded_len_of(timestamp: UnixMillis, expiry: UnixMillis, data_len: usize) -> usize {
        // map head, 4 one-byte keys, bstr(32), two uints, bstr(data).
        1 + 4 + 34 + head_len(timestamp) + head_len(expiry) + head_len(data_len as u64) + data_len
    }

    fn encode_into(&self, e: &mut Encoder) {
        e.map(4)
            .uint(1)
            .bytes(&self.hash.0)
            .uint(2)
            .uint(self.timestamp);
        e.uint(3).uint(self.expiry).uint(4).bytes(&self.data);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let f = Fields::read(d, 4, |k, d, f| match k {
            1 => {
                f.hashes = Some(vec![MessageHash(d.fixed()?)]);
                Ok(())
            }
            2 => f.uint(d, 0),
            3 => f.uint(d, 1),
            4 => {
                f.data = Some(d.bytes(MAX_DATA_BYTES)?.to_vec());
                Ok(())
            }
            _ => Err(DecodeError::UnknownKey(k)),
        })?;
        let hash = need(f.hashes.and_then(|h| h.first().copied()), 1)?;
        Ok(Self {
            hash,
            timestamp: need(f.uints[0], 2)?,
            expiry: need(f.uints[1], 3)?,
            data: need(f.data, 4)?,
        })
    }
}

/// `store` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreResponse {
    /// Content hash.
    pub hash: MessageHash,
    /// The message's timestamp (its cursor position with `hash`).
    pub timestamp: UnixMillis,
    /// Expiry now in force.
    pub expiry: UnixMillis,
    /// The message was already held (its expiry may have been extended).
    pub duplicate: bool,
    /// Swarm members known to hold the message durably, the answering node first. A store is
    /// acknowledged only when these are a majority of the swarm (storage §9).
    pub holders: Vec<NodeId>,
}

/// `retrieve` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrieveResponse {
    /// Messages after the cursor, in (timestamp, hash) order.
    pub messages: Vec<StoredMessage>,
    /// A limit cut the page short: ask again after the last message.
    pub more: bool,
}

/// `delete` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteResponse {
    /// Hashes that were held and are now deleted.
    pub deleted: Vec<MessageHash>,
}

/// `delete_all` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteAllResponse {
    /// Number of messages deleted.
    pub count: u64,
}

/// `expire` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireResponse {
    /// Messages whose expiry was set, with the new expiry.
    pub updated: Vec<(MessageHash, UnixMillis)>,
}

/// `usage` result: what one namespace holds against its own limits, and what the whole mailbox
/// holds against the mailbox quota. Bytes are charged bytes (data plus a fixed overhead per
/// message, storage.md §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageResponse {
    /// Bytes held in the namespace.
    pub bytes: u64,
    /// Messages held in the namespace.
    pub count: u64,
    /// Most bytes the namespace may hold (the mailbox quota where it has no share of its own).
    pub max_bytes: u64,
    /// Most messages the namespace may hold, where it has such a limit.
    pub max_count: Option<u64>,
    /// Bytes held in the whole mailbox.
    pub mailbox_bytes: u64,
    /// Messages held in the whole mailbox.
    pub mailbox_count: u64,
    /// The mailbox quota, bytes.
    pub mailbox_max_bytes: u64,
}

/// `info` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoResponse {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u64,
    /// Node software and version, at most [`MAX_SOFTWARE_LEN`] bytes.
    pub software: String,
}

/// `get_swarm` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetSwarmResponse {
    /// Swarm id on the u64 ring.
    pub swarm_id: u64,
    /// Identity keys of the swarm's members.
    pub members: Vec<NodeId>,
}

impl GetSwarmResponse {
    fn encode_into(&self, e: &mut Encoder) {
        e.map(2).uint(1).uint(self.swarm_id).uint(2);
        enc_nodes(e, &self.members);
    }

    /// Keys 1 and 2 of a map already entered.
    fn decode_fields(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let mut prev = None;
        if d.key(&mut prev)? != 1 {
            return Err(DecodeError::MissingKey(1));
        }
        let swarm_id = d.uint()?;
        if d.key(&mut prev)? != 2 {
            return Err(DecodeError::MissingKey(2));
        }
        let members = decode_nodes(d)?;
        Ok(Self { swarm_id, members })
    }
}

fn enc_nodes(e: &mut Encoder, nodes: &[NodeId]) {
    e.array(nodes.len());
    for n in nodes {
        e.bytes(n.as_bytes());
    }
}

fn decode_nodes(d: &mut Decoder<'_>) -> Result<Vec<NodeId>, DecodeError> {
    let k = d.array(MAX_SWARM_MEMBERS)?;
    let mut nodes = Vec::with_capacity(k);
    for _ in 0..k {
        nodes.push(NodeId::from_bytes(d.fixed()?));
    }
    d.leave();
    Ok(nodes)
}

/// `roster` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterResponse {
    /// Version of the node's roster.
    pub version: u64,
    /// The signed roster, absent when not newer than the client's.
    pub roster: Option<Vec<u8>>,
}

/// `read_blob` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlobResponse {
    /// The message, if this node holds it live.
    pub message: Option<StoredMessage>,
}

/// `roster_page` result: what the node holds, and the page when the request's condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterPageResponse {
    /// Version of the node's roster.
    pub version: u64,
    /// Length of the node's signed roster, at most [`crate::roster::MAX_SIGNED_ROSTER_BYTES`].
    pub total: u64,
    /// The page index asked for.
    pub page: u32,
    /// The page's bytes, [`roster_page_len`] of them; absent when the condition did not hold
    /// or the page lies past the end.
    pub bytes: Option<Vec<u8>>,
}

impl RosterPageResponse {
    /// A node's answer to `request` from the signed roster it holds, `signed`, of `version`:
    /// the page is copied out of `signed`, nothing else (storage §4.6).
    pub fn answer(version: u64, signed: &[u8], request: &RosterPageRequest) -> Self {
        let total = signed.len() as u64;
        let wanted = match request.of {
            PageOf::Held => true,
            PageOf::Version(v) => v == version,
            PageOf::NewerThan(v) => version > v,
        };
        let bytes = roster_page_len(total, request.page)
            .filter(|_| wanted)
            .and_then(|len| {
                let start = request.page as usize * ROSTER_PAGE_BYTES;
                signed.get(start..start + len).map(<[u8]>::to_vec)
            });
        Self {
            version,
            total,
            page: request.page,
            bytes,
        }
    }
}

/// Length of page `page` of a signed roster of `total` bytes: [`ROSTER_PAGE_BYTES`], less for
/// the last page; `None` past the end.
pub fn roster_page_len(total: u64, page: u32) -> Option<usize> {
    let start = u64::from(page).checked_mul(ROSTER_PAGE_BYTES as u64)?;
    let left = total.checked_sub(start).filter(|l| *l > 0)?;
    usize::try_from(left.min(ROSTER_PAGE_BYTES as u64)).ok()
}

/// Number of pages of a signed roster of `total` bytes.
pub fn roster_pages(total: u64) -> u64 {
    total.div_ceil(ROSTER_PAGE_BYTES as u64)
}

/// A response body, one variant per method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// `store`.
    Store(StoreResponse),
    /// `retrieve`.
    Retrieve(RetrieveResponse),
    /// `delete`.
    Delete(DeleteResponse),
    /// `delete_all`.
    DeleteAll(DeleteAllResponse),
    /// `expire`.
    Expire(ExpireResponse),
    /// `info`.
    Info(InfoResponse),
    /// `get_swarm`.
    GetSwarm(GetSwarmResponse),
    /// `roster`.
    Roster(RosterResponse),
    /// `usage`.
    Usage(UsageResponse),
    /// `read_blob`.
    ReadBlob(ReadBlobResponse),
    /// `roster_page`.
    RosterPage(RosterPageResponse),
}

impl ResponseBody {
    /// The method this answers.
    pub fn method(&self) -> Method {
        match self {
            ResponseBody::Store(_) => Method::Store,
            ResponseBody::Retrieve(_) => Method::Retrieve,
            ResponseBody::Delete(_) => Method::Delete,
            ResponseBody::DeleteAll(_) => Method::DeleteAll,
            ResponseBody::Expire(_) => Method::Expire,
            ResponseBody::Info(_) => Method::Info,
            ResponseBody::GetSwarm(_) => Method::GetSwarm,
            ResponseBody::Roster(_) => Method::Roster,
            ResponseBody::Usage(_) => Method::Usage,
            ResponseBody::ReadBlob(_) => Method::ReadBlob,
            ResponseBody::RosterPage(_) => Method::RosterPage,
        }
    }

    fn encode_into(&self, e: &mut Encoder) {
        match self {
            ResponseBody::Store(r) => {
                e.map(5).uint(1).bytes(&r.hash.0).uint(2).uint(r.timestamp);
                e.uint(3).uint(r.expiry).uint(4).bool(r.duplicate).uint(5);
                enc_nodes(e, &r.holders);
            }
            ResponseBody::Retrieve(r) => {
                e.map(2).uint(1).array(r.messages.len());
                for m in &r.messages {
                    m.encode_into(e);
                }
                e.uint(2).bool(r.more);
            }
            ResponseBody::Delete(r) => {
                e.map(1).uint(1);
                enc_hashes(e, &r.deleted);
            }
            ResponseBody::DeleteAll(r) => {
                e.map(1).uint(1).uint(r.count);
            }
            ResponseBody::Expire(r) => {
                e.map(1).uint(1).array(r.updated.len());
                for (h, x) in &r.updated {
                    e.array(2).bytes(&h.0).uint(*x);
                }
            }
            ResponseBody::Info(r) => {
                e.map(2).uint(1).uint(r.protocol).uint(2).text(&r.software);
            }
            ResponseBody::GetSwarm(r) => r.encode_into(e),
            ResponseBody::Roster(r) => {
                e.map(if r.roster.is_some() { 2 } else { 1 })
                    .uint(1)
                    .uint(r.version);
                if let Some(b) = &r.roster {
                    e.uint(2).bytes(b);
                }
            }
            ResponseBody::Usage(r) => {
                e.map(6 + usize::from(r.max_count.is_some()));
                e.uint(1).uint(r.bytes).uint(2).uint(r.count);
                e.uint(3).uint(r.max_bytes);
                if let Some(c) = r.max_count {
                    e.uint(4).uint(c);
                }
                e.uint(5)
                    .uint(r.mailbox_bytes)
                    .uint(6)
                    .uint(r.mailbox_count);
                e.uint(7).uint(r.mailbox_max_bytes);
            }
            ResponseBody::ReadBlob(r) => match &r.message {
                Some(m) => {
                    e.map(1).uint(1);
                    m.encode_into(e);
                }
                None => {
                    e.map(0);
                }
            },
            ResponseBody::RosterPage(r) => {
                e.map(3 + usize::from(r.bytes.is_some()))
                    .uint(1)
                    .uint(r.version)
                    .uint(2)
                    .uint(r.total)
                    .uint(3)
                    .uint(r.page.into());
                if let Some(b) = &r.bytes {
                    e.uint(4).bytes(b);
                }
            }
        }
    }

    fn decode(method: Method, d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let n = d.map(7)?;
        let mut prev = None;
        let mut key = |d: &mut Decoder<'_>, want: u64| -> Result<(), DecodeError> {
            match d.key(&mut prev)? {
                k if k == want => Ok(()),
                k if k < want => Err(DecodeError::UnknownKey(k)),
                _ => Err(DecodeError::MissingKey(want)),
            }
        };
        let expect_len = |want: &[usize]| {
            if want.contains(&n) {
                Ok(())
            } else {
                Err(DecodeError::InvalidValue("map size"))
            }
        };
        let body = match method {
            Method::Store => {
                expect_len(&[5])?;
                key(d, 1)?;
                let hash = MessageHash(d.fixed()?);
                key(d, 2)?;
                let timestamp = d.uint()?;
                key(d, 3)?;
                let expiry = d.uint()?;
                key(d, 4)?;
                let duplicate = d.bool()?;
                key(d, 5)?;
                let holders = decode_nodes(d)?;
                ResponseBody::Store(StoreResponse {
                    hash,
                    timestamp,
                    expiry,
                    duplicate,
                    holders,
                })
            }
            Method::Retrieve => {
                expect_len(&[2])?;
                key(d, 1)?;
                let k = d.array(MAX_RETRIEVE_COUNT.into())?;
                let mut messages = Vec::with_capacity(k);
                for _ in 0..k {
                    messages.push(StoredMessage::decode(d)?);
                }
                d.leave();
                key(d, 2)?;
                ResponseBody::Retrieve(RetrieveResponse {
                    messages,
                    more: d.bool()?,
                })
            }
            Method::Delete => {
                expect_len(&[1])?;
                key(d, 1)?;
                ResponseBody::Delete(DeleteResponse {
                    deleted: decode_hashes(d)?,
                })
            }
            Method::DeleteAll => {
                expect_len(&[1])?;
                key(d, 1)?;
                ResponseBody::DeleteAll(DeleteAllResponse { count: d.uint()? })
            }
            Method::Expire => {
                expect_len(&[1])?;
                key(d, 1)?;
                let k = d.array(MAX_HASHES)?;
                let mut updated = Vec::with_capacity(k);
                for _ in 0..k {
                    if d.array(2)? != 2 {
                        return Err(DecodeError::InvalidValue("expire entry"));
                    }
                    updated.push((MessageHash(d.fixed()?), d.uint()?));
                    d.leave();
                }
                d.leave();
                ResponseBody::Expire(ExpireResponse { updated })
            }
            Method::Info => {
                expect_len(&[2])?;
                key(d, 1)?;
                let protocol = d.uint()?;
                key(d, 2)?;
                let software = d.text(MAX_SOFTWARE_LEN)?.to_owned();
                ResponseBody::Info(InfoResponse { protocol, software })
            }
            Method::GetSwarm => {
                expect_len(&[2])?;
                ResponseBody::GetSwarm(GetSwarmResponse::decode_fields(d)?)
            }
            Method::Roster => {
                expect_len(&[1, 2])?;
                key(d, 1)?;
                let version = d.uint()?;
                let roster = if n == 2 {
                    key(d, 2)?;
                    Some(d.bytes(MAX_ROSTER_BYTES)?.to_vec())
                } else {
                    None
                };
                ResponseBody::Roster(RosterResponse { version, roster })
            }
            Method::Usage => {
                expect_len(&[6, 7])?;
                key(d, 1)?;
                let bytes = d.uint()?;
                key(d, 2)?;
                let count = d.uint()?;
                key(d, 3)?;
                let max_bytes = d.uint()?;
                let max_count = if n == 7 {
                    key(d, 4)?;
                    Some(d.uint()?)
                } else {
                    None
                };
                key(d, 5)?;
                let mailbox_bytes = d.uint()?;
                key(d, 6)?;
                let mailbox_count = d.uint()?;
                key(d, 7)?;
                let mailbox_max_bytes = d.uint()?;
                ResponseBody::Usage(UsageResponse {
                    bytes,
                    count,
                    max_bytes,
                    max_count,
                    mailbox_bytes,
                    mailbox_count,
                    mailbox_max_bytes,
                })
            }
            Method::ReadBlob => {
                expect_len(&[0, 1])?;
                let message = if n == 1 {
                    key(d, 1)?;
                    Some(StoredMessage::decode(d)?)
                } else {
                    None
                };
                ResponseBody::ReadBlob(ReadBlobResponse { message })
            }
            Method::RosterPage => {
                expect_len(&[3, 4])?;
                key(d, 1)?;
                let version = d.uint()?;
                key(d, 2)?;
                let total = d.uint()?;
                if total == 0 || total > crate::roster::MAX_SIGNED_ROSTER_BYTES as u64 {
                    return Err(DecodeError::InvalidValue("roster length"));
                }
                key(d, 3)?;
                let page = u32::try_from(d.uint()?)
                    .ok()
                    .filter(|p| *p < MAX_ROSTER_PAGES)
                    .ok_or(DecodeError::InvalidValue("roster page"))?;
                let bytes = if n == 4 {
                    key(d, 4)?;
                    let b = d.bytes(ROSTER_PAGE_BYTES)?;
                    // A page is exactly its slice of the roster: nothing short, nothing past it.
                    if roster_page_len(total, page) != Some(b.len()) {
                        return Err(DecodeError::InvalidValue("roster page length"));
                    }
                    Some(b.to_vec())
                } else {
                    None
                };
                ResponseBody::RosterPage(RosterPageResponse {
                    version,
                    total,
                    page,
                    bytes,
                })
            }
        };
        d.leave();
        Ok(body)
    }
}

/// A response: the node's time always, then a status, and a body iff the status is `Ok`.
/// A `wrong_swarm` refusal names the mailbox's swarm instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The node's clock when it answered, so a client can correct its own.
    pub now: UnixMillis,
    /// The body, or the refusal.
    pub result: Result<ResponseBody, Status>,
    /// With [`Status::WrongSwarm`] only: the swarm the mailbox belongs to.
    pub redirect: Option<GetSwarmResponse>,
}

impl Response {
    /// An answer with a body.
    pub fn ok(now: UnixMillis, body: ResponseBody) -> Self {
        Self {
            now,
            result: Ok(body),
            redirect: None,
        }
    }

    /// A refusal. `Status::Ok` is not a refusal; it is mapped to `Internal`. A `WrongSwarm`
    /// refusal is made with [`Self::wrong_swarm`].
    pub fn error(now: UnixMillis, status: Status) -> Self {
        let status = match status {
            Status::Ok | Status::WrongSwarm => Status::Internal,
            s => s,
        };
        Self {
            now,
            result: Err(status),
            redirect: None,
        }
    }

    /// "This mailbox lives in `swarm`."
    pub fn wrong_swarm(now: UnixMillis, swarm: GetSwarmResponse) -> Self {
        Self {
            now,
            result: Err(Status::WrongSwarm),
            redirect: Some(swarm),
        }
    }

    /// Canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64);
        match (&self.result, &self.redirect) {
            (Ok(b), _) => {
                e.map(3).uint(1).uint(self.now).uint(2).uint(0).uint(3);
                b.encode_into(&mut e);
            }
            (Err(Status::WrongSwarm), Some(swarm)) => {
                e.map(3).uint(1).uint(self.now).uint(2);
                e.uint(Status::WrongSwarm.code().into()).uint(4);
                swarm.encode_into(&mut e);
            }
            (Err(s), _) => {
                e.map(2)
                    .uint(1)
                    .uint(self.now)
                    .uint(2)
                    .uint(s.code().into());
            }
        }
        e.buf
    }

    /// The encoding, fitted to a reply of at most `max` bytes (onion §6.1, storage §4.2): a
    /// response is never truncated; a `retrieve` page too long is cut to the longest prefix of
    /// its messages that fits, with `more = true` so the client asks again after the last one.
    /// `None` when nothing fits: a longer reply class is needed.
    pub fn encode_within(&self, max: usize) -> Option<Vec<u8>> {
        let whole = self.encode();
        if whole.len() <= max {
            return Some(whole);
        }
        let Ok(ResponseBody::Retrieve(page)) = &self.result else {
            return None;
        };
        let with = |count: usize| {
            Response::ok(
                self.now,
                ResponseBody::Retrieve(RetrieveResponse {
                    messages: page.messages[..count].to_vec(),
                    more: true,
                }),
            )
            .encode()
        };
        // The longest prefix that fits: encodings grow with the count, so search for it. The
        // whole page does not fit, so the answer is below its length.
        let (mut fits, mut over) = (0, page.messages.len());
        while over - fits > 1 {
            let mid = fits + (over - fits) / 2;
            if with(mid).len() <= max {
                fits = mid;
            } else {
                over = mid;
            }
        }
        // An empty page with `more` would send the client back to the same place for ever.
        (fits > 0).then(|| with(fits))
    }

    /// Decodes the response to a request of `method`.
    pub fn decode(bytes: &[u8], method: Method) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_RESPONSE_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_RESPONSE_BYTES,
            });
        }
        let mut d = Decoder::new(bytes);
        let n = d.map(3)?;
        let mut prev = None;
        if n < 2 || d.key(&mut prev)? != 1 {
            return Err(DecodeError::MissingKey(1));
        }
        let now = d.uint()?;
        if d.key(&mut prev)? != 2 {
            return Err(DecodeError::MissingKey(2));
        }
        let status = Status::from_code(d.uint()?)?;
        let mut redirect = None;
        let result = match (status, n) {
            (Status::Ok, 3) => {
                if d.key(&mut prev)? != 3 {
                    return Err(DecodeError::MissingKey(3));
                }
                Ok(ResponseBody::decode(method, &mut d)?)
            }
            (Status::Ok, _) => return Err(DecodeError::MissingKey(3)),
            (Status::WrongSwarm, 3) => {
                if d.key(&mut prev)? != 4 {
                    return Err(DecodeError::MissingKey(4));
                }
                if d.map(2)? != 2 {
                    return Err(DecodeError::InvalidValue("map size"));
                }
                redirect = Some(GetSwarmResponse::decode_fields(&mut d)?);
                d.leave();
                Err(Status::WrongSwarm)
            }
            (Status::WrongSwarm, _) => return Err(DecodeError::MissingKey(4)),
            (s, 2) => Err(s),
            (_, _) => return Err(DecodeError::InvalidValue("body with error status")),
        };
        d.leave();
        d.finish()?;
        Ok(Self {
            now,
            result,
            redirect,
        })
    }
}
