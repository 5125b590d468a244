//! Roster deltas (whitepaper `roster.md` §6.3): what changed between a version a node holds and
//! the next one, so that a refresh costs bytes in proportion to the change, not to the roster.
//!
//! A delta carries no new kind of trust: the receiver rebuilds the new roster's exact bytes `r'`
//! from the roster it holds and the delta, and accepts them only if the authorities' signatures
//! over `r'` verify by §4.2. Entries it already held were checked when it took them; only the
//! entries the delta brings are checked here, their certificates for their structure, as in a
//! whole roster (the signatures over `r'` vouch for them, §4.3).

use std::collections::VecDeque;

use thiserror::Error;

use super::{
    Certs, MAX_NODES, MAX_ROSTER_BYTES, MAX_SIGNED_ROSTER_BYTES, NodeEntry, Roster, RosterError,
    RosterSignature, SIG_LEN, SignedRoster, check_len, fixed_map, key,
};
use crate::cbor::{Decoder, Encoder};
use crate::error::DecodeError;
use crate::network::{MAX_AUTHORITIES, MAX_SWARM_SIZE, NetworkFile};
use crate::storage::NodeId;

/// Past versions a node keeps a summary of, to answer a delta from each
/// ([`RosterHolder::answer_delta`](super::RosterHolder::answer_delta)): a node refreshes every
/// 30 s and the authority publishes at most every 10 s, so an up-to-date node lags by at most
/// three versions; one further behind gets the whole roster.
pub const DELTA_HISTORY: usize = 8;

/// Why a delta was refused. The held roster stays in use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// A delta from another version than the one held.
    #[error("delta from version {base}, but version {held} is held")]
    WrongBase {
        /// The version held (0: none).
        held: u64,
        /// The delta's base.
        base: u64,
    },
    /// A delta whose version is not above its base.
    #[error("delta to version {version} is not newer than its base {base}")]
    NotNewer {
        /// The delta's base.
        base: u64,
        /// The version it builds.
        version: u64,
    },
    /// A removed identity that the base does not list.
    #[error("delta removes a node the base does not list")]
    RemovesAbsent,
    /// An identity both removed and added.
    #[error("delta removes and adds the same node")]
    RemovedAndAdded,
    /// An entry equal to the base's: a delta lists only what changed.
    #[error("delta lists an entry that did not change")]
    Unchanged,
    /// The rebuilt roster or its signatures are refused (§4.2), or the delta does not decode.
    #[error(transparent)]
    Roster(#[from] RosterError),
}

impl From<DecodeError> for DeltaError {
    fn from(e: DecodeError) -> Self {
        DeltaError::Roster(RosterError::Decode(e))
    }
}

/// The change from one roster version (the *base*) to a later one.
///
/// ```cddl
/// roster-delta = {
///   0 => uint,                          ; base: the version it applies to
///   1 => uint,                          ; version of the new roster
///   2 => uint,                          ; its published_at
///   3 => 1..32,                         ; its swarm size
///   4 => [0*10000 bstr .size 32],       ; identities removed, strictly ascending
///   5 => [0*10000 node-entry],          ; entries added or changed, strictly ascending
///   6 => [0*16 roster-signature],       ; the signatures over the new roster's bytes
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterDelta {
    base: u64,
    version: u64,
    published_at: u64,
    swarm_size: u64,
    removed: Vec<NodeId>,
    changed: Vec<NodeEntry>,
    signatures: Vec<RosterSignature>,
}

/// A roster version as a delta's server remembers it: each identity with the digest of its
/// entry's encoding, enough to tell what changed since, at 64 bytes a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterSummary {
    version: u64,
    entries: Vec<(NodeId, [u8; 32])>,
}

const ENTRY_DIGEST_DOMAIN: &[u8] = b"allium/v1/roster/entry";

fn entry_digest(n: &NodeEntry) -> [u8; 32] {
    let mut e = Encoder::with_capacity(512);
    n.encode_into(&mut e);
    crate::crypto::blake2b256_parts(&[ENTRY_DIGEST_DOMAIN, &e.buf])
}

impl RosterSummary {
    /// The summary of `roster`.
    pub fn of(roster: &Roster) -> Self {
        RosterSummary {
            version: roster.version(),
            entries: roster
                .nodes()
                .iter()
                .map(|n| (n.identity.node_id(), entry_digest(n)))
                .collect(),
        }
    }

    /// The version summarised.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl RosterDelta {
    /// The delta that turns the roster summarised by `base` into `new`, whose authorities'
    /// signatures (over `new`'s encoding) it carries.
    pub fn between(base: &RosterSummary, new: &SignedRoster) -> Result<Self, RosterError> {
        let roster = Roster::decode(&new.roster)?;
        Ok(Self::from_parts(base, &roster, new.signatures.clone()))
    }

    /// [`Self::between`] for a roster already decoded.
    pub fn from_parts(
        base: &RosterSummary,
        new: &Roster,
        signatures: Vec<RosterSignature>,
    ) -> Self {
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        let (old, new_nodes) = (&base.entries, new.nodes());
        let (mut i, mut j) = (0, 0);
        // Both lists ascend by identity: one merge pass.
        while i < old.len() || j < new_nodes.len() {
            let o = old.get(i);
            let n = new_nodes.get(j);
            match (o, n) {
                (Some((oid, odig)), Some(n)) => match oid.cmp(&n.identity.node_id()) {
                    std::cmp::Ordering::Less => {
                        removed.push(*oid);
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        changed.push(n.clone());
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if *odig != entry_digest(n) {
                            changed.push(n.clone());
                        }
                        i += 1;
                        j += 1;
                    }
                },
                (Some((oid, _)), None) => {
                    removed.push(*oid);
                    i += 1;
                }
                (None, Some(n)) => {
                    changed.push(n.clone());
                    j += 1;
                }
                (None, None) => break,
            }
        }
        RosterDelta {
            base: base.version,
            version: new.version(),
            published_at: new.published_at(),
            swarm_size: new.swarm_size,
            removed,
            changed,
            signatures,
        }
    }

    /// The version it applies to.
    pub fn base(&self) -> u64 {
        self.base
    }
    /// The version it builds.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// Identities removed, ascending.
    pub fn removed(&self) -> &[NodeId] {
        &self.removed
    }
    /// Entries added or changed, ascending by identity.
    pub fn changed(&self) -> &[NodeEntry] {
        &self.changed
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(
            64 + self.removed.len() * 34 + self.changed.len() * 512 + self.signatures.len() * 104,
        );
        e.map(7)
            .uint(0)
            .uint(self.base)
            .uint(1)
            .uint(self.version)
            .uint(2)
            .uint(self.published_at)
            .uint(3)
            .uint(self.swarm_size);
        e.uint(4).array(self.removed.len());
        for id in &self.removed {
            e.bytes(id.as_bytes());
        }
        e.uint(5).array(self.changed.len());
        for n in &self.changed {
            n.encode_into(&mut e);
        }
        e.uint(6);
        encode_signatures(&mut e, &self.signatures);
        e.buf
    }

    /// Decodes a delta: the canonical encoding within its limits, both lists strictly
    /// ascending, every entry valid (certificates checked for their structure: the signatures
    /// [`Self::apply`] checks over `r'` vouch for them, roster.md §4.3). Whether it fits a base is
    /// [`Self::apply`]'s question.
    pub fn decode(bytes: &[u8]) -> Result<Self, DeltaError> {
        check_len(bytes, MAX_SIGNED_ROSTER_BYTES)?;
        let mut d = Decoder::new(bytes);
        let mut prev = None;
        fixed_map(&mut d, 7)?;
        key(&mut d, &mut prev, 0)?;
        let base = d.uint()?;
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
        let mut removed: Vec<NodeId> = Vec::with_capacity(n);
        for _ in 0..n {
            let id = NodeId::from_bytes(d.fixed::<32>()?);
            ascending(removed.last(), &id)?;
            removed.push(id);
        }
        d.leave();
        key(&mut d, &mut prev, 5)?;
        let n = d.array(MAX_NODES)?;
        let mut changed: Vec<NodeEntry> = Vec::with_capacity(n);
        for _ in 0..n {
            let entry = NodeEntry::decode(&mut d, Certs::Vouched)?;
            ascending(
                changed.last().map(|e| e.identity.node_id()).as_ref(),
                &entry.identity.node_id(),
            )?;
            changed.push(entry);
        }
        d.leave();
        key(&mut d, &mut prev, 6)?;
        let signatures = signature_list(&mut d)?;
        d.leave();
        d.finish()?;
        Ok(RosterDelta {
            base,
            version,
            published_at,
            swarm_size,
            removed,
            changed,
            signatures,
        })
    }

    /// Rebuilds the new roster from `base` (a roster verified before) and checks it by
    /// roster.md §6.3: the delta's base is `base`'s version and its version is higher; every
    /// removed identity is listed by `base` and not re-added; every changed entry differs from
    /// `base`'s; the rebuilt roster keeps `base`'s network name, holds at most [`MAX_NODES`]
    /// nodes and encodes to at most [`MAX_ROSTER_BYTES`]; and the signatures over its encoding
    /// meet `network`'s threshold (§4.2 step 3). Returns the roster and its signed encoding.
    pub fn apply(
        &self,
        base: &Roster,
        network: &NetworkFile,
    ) -> Result<(Roster, Vec<u8>), DeltaError> {
        if self.base != base.version() {
            return Err(DeltaError::WrongBase {
                held: base.version(),
                base: self.base,
            });
        }
        if self.version <= self.base {
            return Err(DeltaError::NotNewer {
                base: self.base,
                version: self.version,
            });
        }
        let old = base.nodes();
        let mut nodes: Vec<NodeEntry> = Vec::with_capacity(old.len() + self.changed.len());
        let (mut rm, mut ch) = (
            self.removed.iter().peekable(),
            self.changed.iter().peekable(),
        );
        for entry in old {
            let id = entry.identity.node_id();
            // Changed entries that sort before this one are new nodes.
            while let Some(c) = ch.next_if(|c| c.identity.node_id() < id) {
                if rm.peek().is_some_and(|r| **r == c.identity.node_id()) {
                    return Err(DeltaError::RemovedAndAdded);
                }
                nodes.push(c.clone());
            }
            if rm.peek().is_some_and(|r| **r < id) {
                return Err(DeltaError::RemovesAbsent);
            }
            let removed = rm.next_if(|r| **r == id).is_some();
            match ch.next_if(|c| c.identity.node_id() == id) {
                Some(_) if removed => return Err(DeltaError::RemovedAndAdded),
                Some(c) if c == entry => return Err(DeltaError::Unchanged),
                Some(c) => nodes.push(c.clone()),
                None if removed => {}
                None => nodes.push(entry.clone()),
            }
        }
        if rm.next().is_some() {
            return Err(DeltaError::RemovesAbsent);
        }
        nodes.extend(ch.cloned());
        if nodes.len() > MAX_NODES {
            return Err(RosterError::Count("nodes").into());
        }
        let roster = Roster::indexed(
            base.network().to_owned(),
            self.version,
            self.published_at,
            self.swarm_size,
            nodes,
        );
        let signed = SignedRoster {
            roster: roster.encode(),
            signatures: self.signatures.clone(),
        };
        check_len(&signed.roster, MAX_ROSTER_BYTES)?;
        let bytes = signed.encode();
        check_len(&bytes, MAX_SIGNED_ROSTER_BYTES)?;
        signed.verify_signatures(network)?;
        Ok((roster, bytes))
    }
}

/// A `[0*16 roster-signature]` list, as in a signed roster.
pub(super) fn signature_list(d: &mut Decoder<'_>) -> Result<Vec<RosterSignature>, DecodeError> {
    let n = d.array(MAX_AUTHORITIES)?;
    let mut signatures = Vec::with_capacity(n);
    for _ in 0..n {
        let mut p = None;
        fixed_map(d, 2)?;
        key(d, &mut p, 0)?;
        let authority = NodeId::from_bytes(d.fixed::<32>()?);
        key(d, &mut p, 1)?;
        let signature = d.fixed::<SIG_LEN>()?;
        d.leave();
        signatures.push(RosterSignature {
            authority,
            signature,
        });
    }
    d.leave();
    Ok(signatures)
}

/// The signatures of a signed roster's envelope, without copying its body.
fn signatures_of(signed: &[u8]) -> Result<Vec<RosterSignature>, DecodeError> {
    let mut d = Decoder::new(signed);
    let mut prev = None;
    fixed_map(&mut d, 2)?;
    key(&mut d, &mut prev, 0)?;
    d.bytes(MAX_ROSTER_BYTES)?;
    key(&mut d, &mut prev, 1)?;
    let signatures = signature_list(&mut d)?;
    d.leave();
    d.finish()?;
    Ok(signatures)
}

fn ascending(last: Option<&NodeId>, next: &NodeId) -> Result<(), RosterError> {
    match last.map(|l| l.cmp(next)) {
        None | Some(std::cmp::Ordering::Less) => Ok(()),
        Some(std::cmp::Ordering::Equal) => Err(RosterError::DuplicateIdentity(
            next.as_bytes()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )),
        Some(std::cmp::Ordering::Greater) => Err(RosterError::Unsorted),
    }
}

/// The versions before the held one that a holder can answer a delta from, newest last, with
/// the deltas already encoded for the held version (many nodes ask for the same one).
#[derive(Debug, Default)]
pub(super) struct History {
    past: VecDeque<RosterSummary>,
    encoded: Vec<(u64, u64, std::sync::Arc<Vec<u8>>)>,
}

impl History {
    /// Remembers `old`, the roster just replaced, and forgets the deltas to it.
    pub(super) fn replaced(&mut self, old: &Roster) {
        if self.past.len() == DELTA_HISTORY {
            self.past.pop_front();
        }
        self.past.push_back(RosterSummary::of(old));
        self.encoded.clear();
    }

    /// The encoded delta from `from` to `held`, if `from` is remembered (and older).
    pub(super) fn delta(
        &mut self,
        from: u64,
        held: &Roster,
        signed: &[u8],
    ) -> Option<std::sync::Arc<Vec<u8>>> {
        // Keyed by both ends: a caller may still be answering from a roster just replaced.
        let to = held.version();
        if let Some((_, _, d)) = self.encoded.iter().find(|(f, t, _)| *f == from && *t == to) {
            return Some(d.clone());
        }
        let base = self.past.iter().find(|s| s.version == from && from < to)?;
        // The held bytes were verified when taken: only the signatures are needed from them.
        let signatures = signatures_of(signed).ok()?;
        let d = std::sync::Arc::new(RosterDelta::from_parts(base, held, signatures).encode());
        self.encoded.push((from, to, d.clone()));
        Some(d)
    }
}

/// Encodes `signatures` as a `[* roster-signature]` (roster.md §4.1).
pub(super) fn encode_signatures(e: &mut Encoder, signatures: &[RosterSignature]) {
    e.array(signatures.len());
    for s in signatures {
        e.map(2)
            .uint(0)
            .bytes(s.authority.as_bytes())
            .uint(1)
            .bytes(&s.signature);
    }
}
