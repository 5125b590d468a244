//! Node descriptors, the signed roster and the directory messages (whitepaper `roster.md`).
//!
//! A node signs a [`Descriptor`] (its identity, addresses and onion-key certificates) and sends it
//! to a directory authority in a [`DirectoryRequest::Register`]. The authority assigns swarms
//! ([`crate::assign`]) and signs a versioned [`Roster`]. Clients and nodes accept a roster only
//! through [`SignedRoster::decode_and_verify`], which checks it against the [`NetworkFile`].
//!
//! Every encoding is the deterministic CBOR subset of `storage.md` §2, with map keys from 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use allium_onion::{Epoch, IdentityKeypair, IdentityPublicKey, OnionKeyCert, OnionPublicKey};
use thiserror::Error;

use crate::assign::{fold_mailbox, nearest_swarm_key};
use crate::cbor::{Decoder, Encoder};
use crate::error::DecodeError;
use crate::network::{MAX_AUTHORITIES, MAX_NAME_LEN, MAX_SWARM_SIZE, NetworkFile, parse_address};
use crate::storage::{Mailbox, NodeId};

mod delta;
pub use delta::{DELTA_HISTORY, DeltaError, RosterDelta, RosterSummary};

/// Domain string of a descriptor signature.
pub const DESCRIPTOR_DOMAIN: &[u8] = b"allium/v1/descriptor";
/// Domain string of a roster signature.
pub const ROSTER_DOMAIN: &[u8] = b"allium/v1/roster";

/// Most addresses a node publishes.
pub const MAX_ADDRESSES: usize = 4;
/// Most onion-key certificates a node publishes.
pub const MAX_CERTS: usize = 4;
/// Longest address text (`[v6%scope]:port` fits).
pub const MAX_ADDRESS_LEN: usize = 64;
/// Longest software version string.
pub const MAX_SOFTWARE_LEN: usize = 64;
/// Largest encoded signed descriptor.
pub const MAX_SIGNED_DESCRIPTOR_BYTES: usize = 2048;
/// Most nodes in a roster.
pub const MAX_NODES: usize = 10_000;
/// Largest encoded directory response (the link's response limit).
pub const MAX_DIRECTORY_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Largest encoded directory request (the link's limit for kind `directory`).
pub const MAX_DIRECTORY_REQUEST_BYTES: usize = 64 * 1024;
/// Largest encoded signed roster: fits a directory response.
pub const MAX_SIGNED_ROSTER_BYTES: usize = MAX_DIRECTORY_RESPONSE_BYTES - 64;
/// Largest encoded roster: leaves room for [`MAX_AUTHORITIES`] signatures.
pub const MAX_ROSTER_BYTES: usize = MAX_SIGNED_ROSTER_BYTES - 4096;
/// Longest reason in [`DirectoryResponse::Refused`].
pub const MAX_REFUSAL_LEN: usize = 256;

const SIG_LEN: usize = 64;

/// Why a descriptor or roster was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RosterError {
    /// Not the canonical encoding, or a field outside its limits.
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    /// A roster with no signature at all.
    #[error("roster is unsigned")]
    Unsigned,
    /// A descriptor signature that does not verify; or, for a roster below its threshold, a
    /// signature by a listed authority that does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A roster signed only by keys the network file does not list.
    #[error("roster is not signed by any authority of the network")]
    UnknownAuthority,
    /// Fewer valid signatures by distinct listed authorities than the threshold.
    #[error("roster has {valid} valid authority signatures, {needed} needed")]
    BelowThreshold {
        /// Valid signatures by distinct listed authorities.
        valid: usize,
        /// The network's `roster_threshold`.
        needed: usize,
    },
    /// A roster of another network.
    #[error("roster is for network {got:?}, expected {expected:?}")]
    WrongNetwork {
        /// The network file's name.
        expected: String,
        /// The roster's.
        got: String,
    },
    /// A roster older than the one held.
    #[error("roster version {got} is older than the held version {held}")]
    Outdated {
        /// Version held.
        held: u64,
        /// Version received.
        got: u64,
    },
    /// A node listed twice.
    #[error("node {0} listed twice")]
    DuplicateIdentity(String),
    /// Nodes not in ascending order of identity.
    #[error("nodes not sorted by identity")]
    Unsorted,
    /// 32 bytes that are not an Ed25519 public key.
    #[error("invalid identity key")]
    BadIdentity,
    /// An onion-key certificate that does not parse or verify.
    #[error("onion-key certificate does not verify")]
    BadCert,
    /// An onion-key certificate by another identity than the node's.
    #[error("onion-key certificate names another identity")]
    CertIdentityMismatch,
    /// Certificates not in strictly ascending epoch order (or two for one epoch).
    #[error("onion-key certificates not in strictly ascending epoch order")]
    CertOrder,
    /// An address that is not canonical `ip:port`, has port 0, or an unusable IP, or is listed
    /// twice.
    #[error("invalid or duplicated address")]
    BadAddress,
    /// No addresses or no certificates, or more than allowed.
    #[error("{0}: wrong number of entries")]
    Count(&'static str),
    /// A descriptor published further in the future than the allowed skew.
    #[error("descriptor published at {published_at}, more than the allowed skew after {now}")]
    FromFuture {
        /// The descriptor's time.
        published_at: u64,
        /// The receiver's time.
        now: u64,
    },
    /// The key signing a descriptor is not the descriptor's identity.
    #[error("signing key is not the descriptor's identity")]
    WrongSigner,
    /// Signing a roster with no key, or with more than [`MAX_AUTHORITIES`].
    #[error("a roster needs 1 to {MAX_AUTHORITIES} signatures")]
    SignatureCount,
    /// A value outside its range (named).
    #[error("invalid value for {0}")]
    Invalid(&'static str),
}

fn short_hex(id: &IdentityPublicKey) -> String {
    id.as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers.

/// Enters a map that must hold exactly the keys `0..n` in order.
fn fixed_map(d: &mut Decoder<'_>, n: usize) -> Result<(), DecodeError> {
    let len = d.map(n)?;
    if len < n {
        return Err(DecodeError::MissingKey(len as u64));
    }
    Ok(())
}

/// Reads map key `k`, the next key of a map with keys `0..n`.
fn key(d: &mut Decoder<'_>, prev: &mut Option<u64>, k: u64) -> Result<(), DecodeError> {
    let got = d.key(prev)?;
    match got.cmp(&k) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(DecodeError::MissingKey(k)),
        std::cmp::Ordering::Less => Err(DecodeError::UnknownKey(got)),
    }
}

fn check_len(bytes: &[u8], max: usize) -> Result<(), DecodeError> {
    if bytes.len() > max {
        Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        })
    } else {
        Ok(())
    }
}

fn identity(bytes: [u8; 32]) -> Result<IdentityPublicKey, RosterError> {
    IdentityPublicKey::from_bytes(&bytes).map_err(|_| RosterError::BadIdentity)
}

fn encode_addresses(e: &mut Encoder, addresses: &[SocketAddr]) {
    e.array(addresses.len());
    for a in addresses {
        e.text(&a.to_string());
    }
}

fn decode_addresses(d: &mut Decoder<'_>) -> Result<Vec<SocketAddr>, RosterError> {
    let n = d.array(MAX_ADDRESSES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let text = d.text(MAX_ADDRESS_LEN)?;
        out.push(parse_address(text).ok_or(RosterError::BadAddress)?);
    }
    d.leave();
    check_addresses(&out)?;
    Ok(out)
}

fn check_addresses(addresses: &[SocketAddr]) -> Result<(), RosterError> {
    if addresses.is_empty() || addresses.len() > MAX_ADDRESSES {
        return Err(RosterError::Count("addresses"));
    }
    for (i, a) in addresses.iter().enumerate() {
        let text = a.to_string();
        if text.len() > MAX_ADDRESS_LEN
            || parse_address(&text).is_none()
            || addresses[..i].contains(a)
        {
            return Err(RosterError::BadAddress);
        }
    }
    Ok(())
}

fn encode_certs(e: &mut Encoder, certs: &[OnionKeyCert]) {
    e.array(certs.len());
    for c in certs {
        e.bytes(&c.to_bytes());
    }
}

/// Whether decoding verifies the signatures of onion-key certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Certs {
    /// Verify each one: a descriptor (roster.md §3 step 4), or a roster body an authority checks
    /// before it signs it.
    Verify,
    /// Certificates inside a roster whose authorities' signatures were verified: those
    /// signatures cover every certificate byte and vouch for what the authorities checked, so
    /// only the structure is checked (roster.md §4.2 step 4).
    Vouched,
}

fn decode_certs(
    d: &mut Decoder<'_>,
    owner: &IdentityPublicKey,
    check: Certs,
) -> Result<Vec<OnionKeyCert>, RosterError> {
    let n = d.array(MAX_CERTS)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let bytes = d.fixed::<{ OnionKeyCert::LEN }>()?;
        let cert = match check {
            Certs::Verify => OnionKeyCert::from_bytes(&bytes).map_err(|_| RosterError::BadCert)?,
            Certs::Vouched => {
                // A certificate naming another node is reported as in a full check.
                if bytes[..32] != owner.as_bytes()[..] {
                    return Err(RosterError::CertIdentityMismatch);
                }
                OnionKeyCert::from_bytes_vouched(&bytes, owner).map_err(|_| RosterError::BadCert)?
            }
        };
        out.push(cert);
    }
    d.leave();
    check_certs(&out, owner)?;
    Ok(out)
}

fn check_certs(certs: &[OnionKeyCert], owner: &IdentityPublicKey) -> Result<(), RosterError> {
    if certs.is_empty() || certs.len() > MAX_CERTS {
        return Err(RosterError::Count("onion keys"));
    }
    for (i, c) in certs.iter().enumerate() {
        if c.identity() != owner {
            return Err(RosterError::CertIdentityMismatch);
        }
        if i > 0 && certs[i - 1].epoch() >= c.epoch() {
            return Err(RosterError::CertOrder);
        }
    }
    Ok(())
}

fn check_software(s: &str) -> Result<(), RosterError> {
    if s.len() > MAX_SOFTWARE_LEN {
        Err(RosterError::Invalid("software"))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptor.

/// What a node tells the directory authority about itself.
///
/// ```cddl
/// descriptor = { 0 => bstr .size 32, 1 => [1*4 address], 2 => [1*4 bstr .size 132],
///                3 => tstr .size (0..64), 4 => uint }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The node's Ed25519 identity.
    pub identity: IdentityPublicKey,
    /// Where to reach it: 1 to 4 distinct addresses.
    pub addresses: Vec<SocketAddr>,
    /// Onion-key certificates by `identity`, 1 to 4, in strictly ascending epoch order.
    pub onion_keys: Vec<OnionKeyCert>,
    /// Software name and version, at most 64 bytes.
    pub software: String,
    /// When the node made this descriptor, Unix seconds.
    pub published_at: u64,
}

impl Descriptor {
    /// Checks the rules an encoded descriptor must meet.
    pub fn validate(&self) -> Result<(), RosterError> {
        check_addresses(&self.addresses)?;
        check_certs(&self.onion_keys, &self.identity)?;
        check_software(&self.software)
    }

    /// The canonical encoding (not checked; see [`Self::validate`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(256 + self.onion_keys.len() * 136);
        e.map(5).uint(0).bytes(self.identity.as_bytes()).uint(1);
        encode_addresses(&mut e, &self.addresses);
        e.uint(2);
        encode_certs(&mut e, &self.onion_keys);
        e.uint(3)
            .text(&self.software)
            .uint(4)
            .uint(self.published_at);
        e.buf
    }

    /// Decodes and validates a descriptor (the signature is checked by
    /// [`SignedDescriptor::decode_and_verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, RosterError> {
        check_len(bytes, MAX_SIGNED_DESCRIPTOR_BYTES)?;
        let mut d = Decoder::new(bytes);
        let mut prev = None;
        fixed_map(&mut d, 5)?;
        key(&mut d, &mut prev, 0)?;
        let identity = identity(d.fixed::<32>()?)?;
        key(&mut d, &mut prev, 1)?;
        let addresses = decode_addresses(&mut d)?;
        key(&mut d, &mut prev, 2)?;
        let onion_keys = decode_certs(&mut d, &identity, Certs::Verify)?;
        key(&mut d, &mut prev, 3)?;
        let software = d.text(MAX_SOFTWARE_LEN)?.to_owned();
        key(&mut d, &mut prev, 4)?;
        let published_at = d.uint()?;
        d.leave();
        d.finish()?;
        Ok(Descriptor {
            identity,
            addresses,
            onion_keys,
            software,
            published_at,
        })
    }
}

/// A descriptor with its identity's signature.
///
/// ```cddl
/// signed-descriptor = { 0 => bstr,            ; the descriptor's encoding
///                       1 => bstr .size 64 }  ; Ed25519 over "allium/v1/descriptor" || field 0
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDescriptor {
    descriptor: Vec<u8>,
    signature: [u8; SIG_LEN],
}

fn signed_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + body.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(body);
    m
}

impl SignedDescriptor {
    /// Validates `descriptor` and signs it with `key`, which must be its identity.
    pub fn sign(key: &IdentityKeypair, descriptor: &Descriptor) -> Result<Self, RosterError> {
        if key.public() != descriptor.identity {
            return Err(RosterError::WrongSigner);
        }
        descriptor.validate()?;
        let bytes = descriptor.encode();
        let signature = key.sign(&signed_message(DESCRIPTOR_DOMAIN, &bytes));
        let signed = SignedDescriptor {
            descriptor: bytes,
            signature,
        };
        check_len(&signed.encode(), MAX_SIGNED_DESCRIPTOR_BYTES)?;
        Ok(signed)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(self.descriptor.len() + 80);
        e.map(2)
            .uint(0)
            .bytes(&self.descriptor)
            .uint(1)
            .bytes(&self.signature);
        e.buf
    }

    /// The encoded descriptor that was signed.
    pub fn descriptor_bytes(&self) -> &[u8] {
        &self.descriptor
    }

    /// Decodes a signed descriptor and checks, in order: the encoding and its limits, the
    /// descriptor's rules (each certificate verifies and names the identity), the signature by
    /// the identity, and that it was published at most `max_skew_secs` after `now`.
    pub fn decode_and_verify(
        bytes: &[u8],
        now: u64,
        max_skew_secs: u64,
    ) -> Result<Descriptor, RosterError> {
        check_len(bytes, MAX_SIGNED_DESCRIPTOR_BYTES)?;
        let mut d = Decoder::new(bytes);
        let mut prev = None;
        fixed_map(&mut d, 2)?;
        key(&mut d, &mut prev, 0)?;
        let body = d.bytes(MAX_SIGNED_DESCRIPTOR_BYTES)?;
        key(&mut d, &mut prev, 1)?;
        let signature = d.fixed::<SIG_LEN>()?;
        d.leave();
        d.finish()?;
        let descriptor = Descriptor::decode(body)?;
        descriptor
            .identity
            .verify(&signed_message(DESCRIPTOR_DOMAIN, body), &signature)
            .map_err(|_| RosterError::BadSignature)?;
        if descriptor.published_at > now.saturating_add(max_skew_secs) {
            return Err(RosterError::FromFuture {
                published_at: descriptor.published_at,
                now,
            });
        }
        Ok(descriptor)
    }
}

// ---------------------------------------------------------------------------------------------
// Roster.

/// One node as the roster lists it.
///
/// ```cddl
/// node-entry = { 0 => bstr .size 32, 1 => [1*4 address], 2 => [1*4 bstr .size 132],
///                3 => uint,                    ; swarm id
///                4 => tstr .size (0..64) }     ; software
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's identity (the key the link pins).
    pub identity: IdentityPublicKey,
    /// Its addresses.
    pub addresses: Vec<SocketAddr>,
    /// Its onion-key certificates, ascending by epoch.
    pub onion_keys: Vec<OnionKeyCert>,
    /// The swarm it belongs to.
    pub swarm: u64,
    /// Its software version.
    pub software: String,
}

impl NodeEntry {
    /// The entry for a registered node placed in swarm `swarm`.
    pub fn from_descriptor(descriptor: Descriptor, swarm: u64) -> Self {
        NodeEntry {
            identity: descriptor.identity,
            addresses: descriptor.addresses,
            onion_keys: descriptor.onion_keys,
            swarm,
            software: descriptor.software,
        }
    }

    fn validate(&self) -> Result<(), RosterError> {
        check_addresses(&self.addresses)?;
        check_certs(&self.onion_keys, &self.identity)?;
        check_software(&self.software)
    }

    fn encode_into(&self, e: &mut Encoder) {
        e.map(5).uint(0).bytes(self.identity.as_bytes()).uint(1);
        encode_addresses(e, &self.addresses);
        e.uint(2);
        encode_certs(e, &self.onion_keys);
        e.uint(3).uint(self.swarm).uint(4).text(&self.software);
    }

    fn decode(d: &mut Decoder<'_>, certs: Certs) -> Result<Self, RosterError> {
        let mut prev = None;
        fixed_map(d, 5)?;
        key(d, &mut prev, 0)?;
        let identity = identity(d.fixed::<32>()?)?;
        key(d, &mut prev, 1)?;
        let addresses = decode_addresses(d)?;
        key(d, &mut prev, 2)?;
        let onion_keys = decode_certs(d, &identity, certs)?;
        key(d, &mut prev, 3)?;
        let swarm = d.uint()?;
        key(d, &mut prev, 4)?;
        let software = d.text(MAX_SOFTWARE_LEN)?.to_owned();
        d.leave();
        Ok(NodeEntry {
            identity,
            addresses,
            onion_keys,
            swarm,
            software,
        })
    }

    /// Verifies the signature of each of the node's onion-key certificates: the audit that
    /// roster verification leaves to the authorities' signatures (roster.md §4.3).
    pub fn verify_certificates(&self) -> Result<(), RosterError> {
        self.onion_keys
            .iter()
            .try_for_each(|c| c.verify().map_err(|_| RosterError::BadCert))
    }

    /// The certified onion key for `epoch`, if the node published one.
    pub fn onion_key(&self, epoch: Epoch) -> Option<OnionPublicKey> {
        self.onion_keys
            .iter()
            .find(|c| c.epoch() == epoch)
            .map(|c| *c.onion_key())
    }
}

/// The list of nodes of a network at one version, with their swarms.
///
/// ```cddl
/// roster = { 0 => tstr .size (1..64),          ; network name
///            1 => uint,                        ; version
///            2 => uint,                        ; published at, Unix seconds
///            3 => 1..32,                       ; swarm size
///            4 => [0*10000 node-entry] }       ; strictly ascending by identity
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    network: String,
    version: u64,
    published_at: u64,
    swarm_size: u64,
    nodes: Vec<NodeEntry>,
    /// Swarm id → indices into `nodes`.
    swarms: BTreeMap<u64, Vec<usize>>,
}

impl Roster {
    /// A roster of `nodes` (sorted here by identity), refusing duplicates, invalid entries, more
    /// than [`MAX_NODES`] nodes, and an encoding longer than [`MAX_ROSTER_BYTES`].
    pub fn new(
        network: impl Into<String>,
        version: u64,
        published_at: u64,
        swarm_size: usize,
        mut nodes: Vec<NodeEntry>,
    ) -> Result<Self, RosterError> {
        let network = network.into();
        if !crate::network::valid_name(&network) {
            return Err(RosterError::Invalid("network name"));
        }
        let swarm_size = swarm_size as u64;
        if !(1..=MAX_SWARM_SIZE).contains(&swarm_size) {
            return Err(RosterError::Invalid("swarm size"));
        }
        if nodes.len() > MAX_NODES {
            return Err(RosterError::Count("nodes"));
        }
        nodes.sort_by(|a, b| a.identity.as_bytes().cmp(b.identity.as_bytes()));
        for (i, n) in nodes.iter().enumerate() {
            if i > 0 && nodes[i - 1].identity == n.identity {
                return Err(RosterError::DuplicateIdentity(short_hex(&n.identity)));
            }
            n.validate()?;
        }
        let roster = Self::indexed(network, version, published_at, swarm_size, nodes);
        check_len(&roster.encode(), MAX_ROSTER_BYTES)?;
        Ok(roster)
    }

    fn indexed(
        network: String,
        version: u64,
        published_at: u64,
        swarm_size: u64,
        nodes: Vec<NodeEntry>,
    ) -> Self {
        let mut swarms: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            swarms.entry(n.swarm).or_default().push(i);
        }
        Roster {
            network,
            version,
            published_at,
            swarm_size,
            nodes,
            swarms,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64 + self.nodes.len() * 512);
        e.map(5)
            .uint(0)
            .text(&self.network)
            .uint(1)
            .uint(self.version);
        e.uint(2)
            .uint(self.published_at)
            .uint(3)
            .uint(self.swarm_size);
        e.uint(4).array(self.nodes.len());
        for n in &self.nodes {
            n.encode_into(&mut e);
        }
        e.buf
    }

    /// Decodes a roster body and verifies every onion-key certificate in it: what an authority
    /// does before it signs or co-signs a body (roster.md §4.1), and what an audit of a roster
    /// does (§4.3). Clients and nodes taking a roster use [`SignedRoster::decode_and_verify`],
    /// which relies on the authorities' signatures for the certificates.
    pub fn decode(bytes: &[u8]) -> Result<Self, RosterError> {
        Self::decode_with(bytes, Certs::Verify)
    }

    fn decode_with(bytes: &[u8], certs: Certs) -> Result<Self, RosterError> {
        check_len(bytes, MAX_ROSTER_BYTES)?;
        let mut d = Decoder::new(bytes);
        let mut prev = None;
        fixed_map(&mut d, 5)?;
        key(&mut d, &mut prev, 0)?;
        let network = d.text(MAX_NAME_LEN)?.to_owned();
        if !crate::network::valid_name(&network) {
            return Err(DecodeError::InvalidValue("network name").into());
        }
        key(&mut d, &mut prev, 1)?;
        let version = d.uint()?;
        key(&mut d, &mut prev, 2)?;
        let published_at = d.uint()?;
        key(&mut d, &mut prev, 3)?;
        let swarm_size = d.uint()?;
        if !(1..=MAX_SWARM_SIZE).contains(&swarm_size) {
            return Err(DecodeError::InvalidValue("swarm size").into());
        }
        key(&mut d, &mut prev, 4)?;
        let n = d.array(MAX_NODES)?;
        let mut nodes: Vec<NodeEntry> = Vec::with_capacity(n);
        for _ in 0..n {
            let entry = NodeEntry::decode(&mut d, certs)?;
            if let Some(last) = nodes.last() {
                match last.identity.as_bytes().cmp(entry.identity.as_bytes()) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(RosterError::DuplicateIdentity(short_hex(&entry.identity)));
                    }
                    std::cmp::Ordering::Greater => return Err(RosterError::Unsorted),
                }
            }
            nodes.push(entry);
        }
        d.leave();
        d.leave();
        d.finish()?;
        Ok(Self::indexed(
            network,
            version,
            published_at,
            swarm_size,
            nodes,
        ))
    }

    /// Signs the roster with each of `authorities` (1 to [`MAX_AUTHORITIES`] keys; a key given
    /// twice signs once).
    pub fn sign(&self, authorities: &[&IdentityKeypair]) -> Result<SignedRoster, RosterError> {
        if authorities.is_empty() || authorities.len() > MAX_AUTHORITIES {
            return Err(RosterError::SignatureCount);
        }
        let mut signed = SignedRoster {
            roster: self.encode(),
            signatures: Vec::new(),
        };
        for a in authorities {
            signed.add_signature(a)?;
        }
        Ok(signed)
    }

    /// The network name.
    pub fn network(&self) -> &str {
        &self.network
    }
    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// When the authority made it, Unix seconds.
    pub fn published_at(&self) -> u64 {
        self.published_at
    }
    /// The target swarm size it was assigned with (1..=32).
    pub fn swarm_size(&self) -> usize {
        self.swarm_size as usize
    }
    /// All nodes, ascending by identity.
    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    /// The entry of `identity`, if listed.
    pub fn node(&self, identity: &NodeId) -> Option<&NodeEntry> {
        self.nodes
            .binary_search_by(|n| n.identity.node_id().cmp(identity))
            .ok()
            .and_then(|i| self.nodes.get(i))
    }

    /// Members of every swarm, by swarm id; members ascending by identity.
    pub fn swarms(&self) -> BTreeMap<u64, Vec<&NodeEntry>> {
        self.swarms
            .iter()
            .map(|(id, idx)| (*id, idx.iter().filter_map(|i| self.nodes.get(*i)).collect()))
            .collect()
    }

    /// The id of the swarm that holds `mailbox`: the nearest on the ring to its folded key.
    /// `None` for an empty roster.
    pub fn swarm_for(&self, mailbox: &Mailbox) -> Option<u64> {
        nearest_swarm_key(&self.swarms, fold_mailbox(mailbox))
    }

    /// The members of the swarm that holds `mailbox` (empty for an empty roster).
    pub fn members_for(&self, mailbox: &Mailbox) -> Vec<&NodeEntry> {
        self.swarm_for(mailbox)
            .map(|id| self.members_of(id))
            .unwrap_or_default()
    }

    /// The members of swarm `id`, ascending by identity (empty for an unknown id).
    pub fn members_of(&self, id: u64) -> Vec<&NodeEntry> {
        self.swarms
            .get(&id)
            .map(|idx| idx.iter().filter_map(|i| self.nodes.get(*i)).collect())
            .unwrap_or_default()
    }

    /// The onion key `node` certified for `epoch`, if it is listed and published one.
    pub fn onion_key(&self, node: &NodeId, epoch: Epoch) -> Option<OnionPublicKey> {
        self.node(node)?.onion_key(epoch)
    }

    /// Audits the roster: the nodes (ascending by identity) with an onion-key certificate whose
    /// signature does not verify. Roster verification does not need this (roster.md §4.2);
    /// a non-empty answer proves that the authorities that signed the roster listed a key its
    /// node never certified (§4.3).
    pub fn audit(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.verify_certificates().is_err())
            .map(|n| n.identity.node_id())
            .collect()
    }

    /// The assignment this roster records, as [`crate::assign::assign`] takes it.
    pub fn assignment(&self) -> BTreeMap<NodeId, u64> {
        self.nodes
            .iter()
            .map(|n| (n.identity.node_id(), n.swarm))
            .collect()
    }
}

/// One authority's signature on a roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterSignature {
    /// The signing authority's identity.
    pub authority: NodeId,
    /// Ed25519 over `"allium/v1/roster" || roster bytes`.
    pub signature: [u8; SIG_LEN],
}

/// An encoded roster and its authority signatures.
///
/// ```cddl
/// signed-roster = { 0 => bstr,                                   ; the roster's encoding
///                   1 => [0*16 { 0 => bstr .size 32,            ; authority identity
///                                1 => bstr .size 64 }] }         ; signature
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRoster {
    roster: Vec<u8>,
    signatures: Vec<RosterSignature>,
}

impl SignedRoster {
    /// Adds `authority`'s signature (replacing an earlier one by the same key). Fails when
    /// [`MAX_AUTHORITIES`] other keys have signed already.
    pub fn add_signature(&mut self, authority: &IdentityKeypair) -> Result<(), RosterError> {
        let id = authority.public().node_id();
        let signature = authority.sign(&signed_message(ROSTER_DOMAIN, &self.roster));
        if let Some(s) = self.signatures.iter_mut().find(|s| s.authority == id) {
            s.signature = signature;
            return Ok(());
        }
        if self.signatures.len() >= MAX_AUTHORITIES {
            return Err(RosterError::SignatureCount);
        }
        self.signatures.push(RosterSignature {
            authority: id,
            signature,
        });
        Ok(())
    }

    /// The signatures, in the order they were added.
    pub fn signatures(&self) -> &[RosterSignature] {
        &self.signatures
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(self.roster.len() + 16 + self.signatures.len() * 104);
        e.map(2).uint(0).bytes(&self.roster).uint(1);
        delta::encode_signatures(&mut e, &self.signatures);
        e.buf
    }

    /// Decodes the envelope only, verifying nothing: for an authority adding its signature to
    /// another's roster. Clients and nodes use [`Self::decode_and_verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RosterError> {
        check_len(bytes, MAX_SIGNED_ROSTER_BYTES)?;
        let mut d = Decoder::new(bytes);
        let mut prev = None;
        fixed_map(&mut d, 2)?;
        key(&mut d, &mut prev, 0)?;
        let roster = d.bytes(MAX_ROSTER_BYTES)?.to_vec();
        key(&mut d, &mut prev, 1)?;
        let signatures = delta::signature_list(&mut d)?;
        d.leave();
        d.finish()?;
        Ok(SignedRoster { roster, signatures })
    }

    /// Checks the signatures against `network` (whitepaper `roster.md` §4.2: valid signatures
    /// by distinct listed authorities must reach `roster_threshold`; signatures by unlisted
    /// keys are ignored).
    pub fn verify_signatures(&self, network: &NetworkFile) -> Result<(), RosterError> {
        if self.signatures.is_empty() {
            return Err(RosterError::Unsigned);
        }
        let message = signed_message(ROSTER_DOMAIN, &self.roster);
        let mut valid: Vec<NodeId> = Vec::new();
        let (mut listed, mut failed) = (false, false);
        for s in &self.signatures {
            let Some(a) = network
                .authorities()
                .iter()
                .find(|a| a.identity.node_id() == s.authority)
            else {
                continue;
            };
            listed = true;
            if valid.contains(&s.authority) {
                continue;
            }
            if a.identity.verify(&message, &s.signature).is_ok() {
                valid.push(s.authority);
            } else {
                failed = true;
            }
        }
        let needed = usize::try_from(network.params().roster_threshold).unwrap_or(usize::MAX);
        if valid.len() >= needed {
            Ok(())
        } else if failed {
            Err(RosterError::BadSignature)
        } else if !listed {
            Err(RosterError::UnknownAuthority)
        } else {
            Err(RosterError::BelowThreshold {
                valid: valid.len(),
                needed,
            })
        }
    }

    /// Decodes and verifies a signed roster (roster.md §4.2). Refuses, in this order: input over
    /// [`MAX_SIGNED_ROSTER_BYTES`] or not canonical; no signature; too few valid signatures by
    /// distinct authorities of `network`; a malformed roster body (including a node listed twice,
    /// or a certificate that is malformed, names another node or breaks the epoch order);
    /// another network's name; a version older than `held_version` (an equal version is
    /// accepted: the same roster). The certificates' own signatures are not verified: the
    /// authorities' signatures cover them, and the authorities verified them at registration
    /// (§4.2 says why that loses nothing); [`Roster::audit`] checks them when wanted.
    pub fn decode_and_verify(
        bytes: &[u8],
        network: &NetworkFile,
        held_version: Option<u64>,
    ) -> Result<Roster, RosterError> {
        let signed = Self::decode(bytes)?;
        signed.verify_signatures(network)?;
        let roster = Roster::decode_with(&signed.roster, Certs::Vouched)?;
        if roster.network != network.name() {
            return Err(RosterError::WrongNetwork {
                expected: network.name().to_owned(),
                got: roster.network,
            });
        }
        if let Some(held) = held_version.filter(|h| roster.version < *h) {
            return Err(RosterError::Outdated {
                held,
                got: roster.version,
            });
        }
        Ok(roster)
    }
}

// ---------------------------------------------------------------------------------------------
// Directory messages.

/// A request to a directory authority (link kind `directory`).
///
/// ```cddl
/// directory-request = { 0 => 0, 1 => bstr .size (1..2048) }   ; register: a signed descriptor
///                   / { 0 => 1, ? 1 => uint }                 ; get roster: version held
///                   / { 0 => 2 }                              ; probe
///                   / { 0 => 3, 1 => uint }                   ; get delta from a version
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryRequest {
    /// Register (or refresh) a node: the encoded [`SignedDescriptor`].
    Register(Vec<u8>),
    /// Ask for the latest roster; `have_version` is the version the asker holds.
    GetRoster {
        /// The version held, if any.
        have_version: Option<u64>,
    },
    /// Are you there, and which roster version do you hold? Answered
    /// [`DirectoryResponse::Alive`]: a probe costs a few bytes whatever the roster's size.
    Probe,
    /// Ask for what changed since version `from`, held by the asker: answered
    /// [`DirectoryResponse::Delta`], or the whole roster when `from` is too old or unknown.
    GetDelta {
        /// The version held.
        from: u64,
    },
}

impl DirectoryRequest {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        match self {
            DirectoryRequest::Register(d) => {
                e.map(2).uint(0).uint(0).uint(1).bytes(d);
            }
            DirectoryRequest::GetRoster { have_version: None } => {
                e.map(1).uint(0).uint(1);
            }
            DirectoryRequest::GetRoster {
                have_version: Some(v),
            } => {
                e.map(2).uint(0).uint(1).uint(1).uint(*v);
            }
            DirectoryRequest::Probe => {
                e.map(1).uint(0).uint(2);
            }
            DirectoryRequest::GetDelta { from } => {
                e.map(2).uint(0).uint(3).uint(1).uint(*from);
            }
        }
        e.buf
    }

    /// Decodes a request, refusing anything but a canonical encoding within the limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_len(bytes, MAX_DIRECTORY_REQUEST_BYTES)?;
        let mut d = Decoder::new(bytes);
        let mut prev = None;
        let n = d.map(2)?;
        if n == 0 {
            return Err(DecodeError::MissingKey(0));
        }
        key(&mut d, &mut prev, 0)?;
        let request = match (d.uint()?, n) {
            (0, 2) => {
                key(&mut d, &mut prev, 1)?;
                let body = d.bytes(MAX_SIGNED_DESCRIPTOR_BYTES)?;
                if body.is_empty() {
                    return Err(DecodeError::InvalidValue("descriptor"));
                }
                DirectoryRequest::Register(body.to_vec())
            }
            (0, _) => return Err(DecodeError::MissingKey(1)),
            (1, 1) => DirectoryRequest::GetRoster { have_version: None },
            (1, _) => {
                key(&mut d, &mut prev, 1)?;
                DirectoryRequest::GetRoster {
                    have_version: Some(d.uint()?),
                }
            }
            (2, 1) => DirectoryRequest::Probe,
            (2, _) => return Err(DecodeError::UnknownKey(1)),
            (3, 2) => {
                key(&mut d, &mut prev, 1)?;
                DirectoryRequest::GetDelta { from: d.uint()? }
            }
            (3, _) => return Err(DecodeError::MissingKey(1)),
            _ => return Err(DecodeError::InvalidValue("directory request type")),
        };
        d.leave();
        d.finish()?;
        Ok(request)
    }
}

/// An authority's answer.
///
/// ```cddl
/// directory-response = { 0 => 0, 1 => uint }                     ; registered: current version
///                    / { 0 => 1, 1 => bstr }                     ; roster: a signed roster
///                    / { 0 => 2 }                                ; not modified
///                    / { 0 => 3, 1 => tstr .size (0..256) }      ; refused: reason
///                    / { 0 => 4, 1 => uint }                     ; alive: version held, 0 if none
///                    / { 0 => 5, 1 => bstr }                     ; delta: a roster-delta
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryResponse {
    /// The descriptor was accepted; `roster_version` is the current roster's version (the node
    /// appears in a later one, once found reachable).
    Registered {
        /// Version of the roster now served.
        roster_version: u64,
    },
    /// The latest encoded [`SignedRoster`].
    Roster(Vec<u8>),
    /// The asker holds the latest version.
    NotModified,
    /// The request was refused; a human-readable reason (at most 256 bytes, cut on encoding).
    Refused(String),
    /// The answer to a probe: the version of the roster the node holds (0 if none).
    Alive {
        /// Version held.
        roster_version: u64,
    },
    /// An encoded [`RosterDelta`] from the version the asker holds.
    Delta(Vec<u8>),
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl DirectoryResponse {
    /// The canonical encoding. A refusal reason longer than [`MAX_REFUSAL_LEN`] bytes is cut at
    /// a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        match self {
            DirectoryResponse::Registered { roster_version } => {
                e.map(2).uint(0).uint(0).uint(1).uint(*roster_version);
            }
            DirectoryResponse::Roster(r) => {
                e = Encoder::with_capacity(r.len() + 16);
                e.map(2).uint(0).uint(1).uint(1).bytes(r);
            }
            DirectoryResponse::NotModified => {
                e.map(1).uint(0).uint(2);
            }
            DirectoryResponse::Refused(reason) => {
                e.map(2)
                    .uint(0)
                    .uint(3)
                    .uint(1)
                    .text(truncate_utf8(reason, MAX_REFUSAL_LEN));
            }
            DirectoryResponse::Alive { roster_version } => {
                e.map(2).uint(0).uint(4).uint(1).uint(*roster_version);
            }
            DirectoryResponse::Delta(d) => {
                e = Encoder::with_capacity(d.len() + 16);
                e.map(2).uint(0).uint(5).uint(1).bytes(d);
            }
        }
        e.buf
    }

    /// Decodes a response, refusing anything but a canonical encoding within the limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_len(bytes, MAX_DIRECTORY_RESPONSE_BYTES)?;
        let mut d = Decoder::new(bytes);
        let mut prev = None;
        let n = d.map(2)?;
        if n == 0 {
            return Err(DecodeError::MissingKey(0));
        }
        key(&mut d, &mut prev, 0)?;
        let kind = d.uint()?;
        let response = match (kind, n) {
            (2, 1) => DirectoryResponse::NotModified,
            (2, _) => return Err(DecodeError::UnknownKey(1)),
            (0 | 1 | 3 | 4 | 5, 1) => return Err(DecodeError::MissingKey(1)),
            (0, _) => {
                key(&mut d, &mut prev, 1)?;
                DirectoryResponse::Registered {
                    roster_version: d.uint()?,
                }
            }
            (1, _) => {
                key(&mut d, &mut prev, 1)?;
                DirectoryResponse::Roster(d.bytes(MAX_SIGNED_ROSTER_BYTES)?.to_vec())
            }
            (3, _) => {
                key(&mut d, &mut prev, 1)?;
                DirectoryResponse::Refused(d.text(MAX_REFUSAL_LEN)?.to_owned())
            }
            (4, _) => {
                key(&mut d, &mut prev, 1)?;
                DirectoryResponse::Alive {
                    roster_version: d.uint()?,
                }
            }
            (5, _) => {
                key(&mut d, &mut prev, 1)?;
                DirectoryResponse::Delta(d.bytes(MAX_SIGNED_ROSTER_BYTES)?.to_vec())
            }
            _ => return Err(DecodeError::InvalidValue("directory response type")),
        };
        d.leave();
        d.finish()?;
        Ok(response)
    }
}

// ---------------------------------------------------------------------------------------------
// The roster a client or node holds.

/// A verified roster and the signed bytes it came in, served to others as they are.
#[derive(Debug)]
pub struct HeldRoster {
    roster: Roster,
    signed: Vec<u8>,
    digest: [u8; 32],
}

impl HeldRoster {
    /// The roster.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Its signed encoding.
    pub fn signed(&self) -> &[u8] {
        &self.signed
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.roster.version()
    }

    /// [`verified_digest`] of its signed encoding, recorded beside a cache of it (roster.md
    /// §4.3).
    pub fn verified_digest(&self) -> [u8; 32] {
        self.digest
    }
}

/// Prefix of [`verified_digest`]'s input.
pub const VERIFIED_ROSTER_DOMAIN: &[u8] = b"allium/v1/roster/verified";

/// `BLAKE2b-256(VERIFIED_ROSTER_DOMAIN || network fingerprint || signed roster)`: names the
/// exact bytes of a signed roster that were verified whole against one network file (roster.md
/// §4.3). It is not a secret and proves nothing to anyone else: it only tells the process that
/// recorded it that these bytes already passed every check.
pub fn verified_digest(network: &NetworkFile, signed: &[u8]) -> [u8; 32] {
    crate::crypto::blake2b256_parts(&[VERIFIED_ROSTER_DOMAIN, &network.fingerprint(), signed])
}

/// What [`RosterHolder::offer`] did with a roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// A newer version replaced the held one.
    Updated,
    /// Not newer than the one held (the same version, or an older one that another thread's
    /// newer one overtook); nothing changed.
    Same,
}

/// The last good roster of one network, shared by every task of a node or a client, and the
/// rule for replacing it: a roster is taken only if [`SignedRoster::decode_and_verify`] accepts
/// it against the version held; on any refusal the held roster stays in use (BAD_INPUTS row 25).
/// It never goes back to an older version.
#[derive(Debug)]
pub struct RosterHolder {
    network: NetworkFile,
    held: RwLock<Option<Arc<HeldRoster>>>,
    /// Summaries of the versions held before, to answer deltas from them (§6.3).
    history: std::sync::Mutex<delta::History>,
}

impl RosterHolder {
    /// Holds no roster yet.
    pub fn new(network: NetworkFile) -> Self {
        RosterHolder {
            network,
            held: RwLock::new(None),
            history: std::sync::Mutex::default(),
        }
    }

    /// The network file rosters are checked against.
    pub fn network(&self) -> &NetworkFile {
        &self.network
    }

    /// The roster in use.
    pub fn current(&self) -> Option<Arc<HeldRoster>> {
        self.held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The version in use.
    pub fn version(&self) -> Option<u64> {
        self.current().map(|h| h.version())
    }

    /// Verifies `signed` and takes it if it is newer than the roster held. On error the held
    /// roster is unchanged.
    pub fn offer(&self, signed: &[u8]) -> Result<Offered, RosterError> {
        let held = self.version();
        let roster = SignedRoster::decode_and_verify(signed, &self.network, held)?;
        if held == Some(roster.version()) {
            return Ok(Offered::Same);
        }
        let new = Arc::new(HeldRoster {
            roster,
            signed: signed.to_vec(),
            digest: verified_digest(&self.network, signed),
        });
        Ok(self.replace(new))
    }

    /// Takes `new` unless a newer roster is held, remembering the one it replaces.
    fn replace(&self, new: Arc<HeldRoster>) -> Offered {
        let mut slot = self
            .held
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another task may have taken a newer one meanwhile.
        if slot.as_ref().is_some_and(|h| h.version() >= new.version()) {
            return Offered::Same;
        }
        if let Some(old) = slot.replace(new) {
            self.history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .replaced(old.roster());
        }
        Offered::Updated
    }

    /// Applies an encoded [`RosterDelta`] to the roster held (roster.md §6.3): the new roster is
    /// rebuilt from it and taken only if the authorities' signatures over its bytes verify. On
    /// error the held roster is unchanged.
    pub fn apply_delta(&self, delta: &[u8]) -> Result<Offered, DeltaError> {
        let delta = RosterDelta::decode(delta)?;
        let Some(base) = self.current() else {
            return Err(DeltaError::WrongBase {
                held: 0,
                base: delta.base(),
            });
        };
        let (roster, signed) = delta.apply(base.roster(), &self.network)?;
        let digest = verified_digest(&self.network, &signed);
        Ok(self.replace(Arc::new(HeldRoster {
            roster,
            signed,
            digest,
        })))
    }

    /// [`Self::offer`] for a cached roster and the [`verified_digest`] recorded beside it. The
    /// digest once let a load skip the certificate checks; roster verification no longer makes
    /// them (roster.md §4.2), so a cached roster is checked exactly as a fresh one whatever the
    /// digest, and a cache written with or without one loads alike (§4.3).
    pub fn offer_cached(
        &self,
        signed: &[u8],
        _digest: Option<&[u8; 32]>,
    ) -> Result<Offered, RosterError> {
        self.offer(signed)
    }

    /// The answer to a directory `get_roster` from someone who holds `have_version`.
    pub fn answer(&self, have_version: Option<u64>) -> DirectoryResponse {
        match self.current() {
            Some(h) if Some(h.version()) == have_version => DirectoryResponse::NotModified,
            Some(h) => DirectoryResponse::Roster(h.signed.clone()),
            None => DirectoryResponse::Refused("no roster yet".into()),
        }
    }

    /// The answer to a directory *probe*: the version held, 0 if none.
    pub fn answer_probe(&self) -> DirectoryResponse {
        DirectoryResponse::Alive {
            roster_version: self.version().unwrap_or(0),
        }
    }

    /// The answer to a directory *get delta* from someone who holds `from` (§6.2): *not
    /// modified* for the version held, a delta from one of the [`DELTA_HISTORY`] versions held
    /// before it, otherwise the whole roster.
    pub fn answer_delta(&self, from: u64) -> DirectoryResponse {
        let Some(h) = self.current() else {
            return DirectoryResponse::Refused("no roster yet".into());
        };
        if h.version() == from {
            return DirectoryResponse::NotModified;
        }
        let delta = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .delta(from, h.roster(), &h.signed);
        match delta {
            Some(d) => DirectoryResponse::Delta(d.as_ref().clone()),
            None => DirectoryResponse::Roster(h.signed.clone()),
        }
    }
}
