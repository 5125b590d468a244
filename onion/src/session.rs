//! Path sessions (onion.md §12): after one onion packet that asks each hop to keep a session,
//! further packets on the same path are peeled with symmetric cryptography only.
//!
//! ```text
//! packet = version 0x02 (1) || zero (4) || session_id (16) || nonce (16) || header_tag (16)
//!       || routing (832 = 8 slots of 104) || payload (class length − 885)
//! slot   = command (1) || zero (3) || seq (4) || zero (32) || next_session_id (16)
//!       || next_nonce (16) || next_header_tag (16) || payload_tag (16)
//! ```
//!
//! The layout, the filler and the replies are those of an onion packet; only the source of each
//! layer's keys differs: `K(label) = BLAKE2b(key = session_key, session_id || nonce || label)`
//! with a fresh random nonce per layer and packet, instead of an X25519 exchange. A hop keeps,
//! per session, the key, its role (relay to a fixed next node, or destination) and a window of
//! the sequence numbers it accepted; nothing else. Only requests that their destination links
//! anyway use sessions (a mailbox's long-poll renewals, one attachment's chunks).

use std::collections::{HashMap, VecDeque};

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::epoch::Epoch;
use crate::error::{BuildError, PeelError};
use crate::id::NodeId;
use crate::kdf::{Derivation, labels};
use crate::keys::KEY_LEN;
use crate::packet::{
    AAD_LEN, BuiltPacket, CMD_DELIVER, CMD_RELAY, MAX_HOPS, Peeled, SLOT_LEN, SizeClass, TAG_LEN,
    assemble, deliver, open_header, padding_len, relay,
};
use crate::reply::ReplyOpener;

/// The version byte of a path session's packet.
pub const SESSION_VERSION: u8 = 2;
/// Length of a session id and of a nonce.
pub const SESSION_ID_LEN: usize = 16;
/// How long a hop keeps a session after the packet that opened it, in seconds. A hop also
/// forgets it with the onion key of the epoch that opened it, whichever comes first.
pub const SESSION_LIFETIME_SECS: u64 = 600;
/// Sequence numbers a hop accepts below the highest it accepted (packets of one session may
/// overtake each other on parallel streams).
pub const SEQ_WINDOW: u32 = 64;

const OFF_ID: usize = 5;
const OFF_NONCE: usize = OFF_ID + SESSION_ID_LEN;

/// The identifier under which a hop keeps a session: a PRF output, different at every hop.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionId({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A session's secret key at one hop, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SessionKey([u8; KEY_LEN]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// What one layer of an opening packet gives its hop (and its sender): the session's id and key.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    id: SessionId,
    key: SessionKey,
}

impl SessionGrant {
    pub(crate) fn derive(derivation: &Derivation) -> Self {
        let mut id = [0u8; SESSION_ID_LEN];
        id.copy_from_slice(&derivation.value(labels::SESSION_ID)[..SESSION_ID_LEN]);
        SessionGrant {
            id: SessionId(id),
            key: SessionKey(derivation.value(labels::SESSION_KEY)),
        }
    }

    /// The session's id at this hop.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The key bytes (test vectors and tools).
    #[cfg(feature = "trace")]
    pub fn key_bytes(&self) -> [u8; KEY_LEN] {
        self.key.0
    }
}

/// What a hop does with a session's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRole {
    /// Relays them to this node, the next hop of the packet that opened the session.
    Relay {
        /// The next hop.
        next: NodeId,
    },
    /// Executes them: this hop is the destination.
    Deliver,
}

/// The routing slot of a session packet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SessionSlot {
    Relay {
        seq: u32,
        next_id: SessionId,
        next_nonce: [u8; SESSION_ID_LEN],
        next_header_tag: [u8; TAG_LEN],
        payload_tag: [u8; TAG_LEN],
    },
    Deliver {
        seq: u32,
        payload_tag: [u8; TAG_LEN],
    },
}

impl SessionSlot {
    fn encode(&self) -> [u8; SLOT_LEN] {
        let mut s = [0u8; SLOT_LEN];
        match self {
            SessionSlot::Relay {
                seq,
                next_id,
                next_nonce,
                next_header_tag,
                payload_tag,
            } => {
                s[0] = CMD_RELAY;
                s[4..8].copy_from_slice(&seq.to_be_bytes());
                s[40..56].copy_from_slice(&next_id.0);
                s[56..72].copy_from_slice(next_nonce);
                s[72..88].copy_from_slice(next_header_tag);
                s[88..104].copy_from_slice(payload_tag);
            }
            SessionSlot::Deliver { seq, payload_tag } => {
                s[0] = CMD_DELIVER;
                s[4..8].copy_from_slice(&seq.to_be_bytes());
                s[88..104].copy_from_slice(payload_tag);
            }
        }
        s
    }

    fn decode(s: &[u8; SLOT_LEN]) -> Result<Self, PeelError> {
        let field = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&s[r]);
            a
        };
        if s[1..4] != [0, 0, 0] || s[8..40].iter().any(|&b| b != 0) {
            return Err(PeelError::Malformed("reserved slot bytes are not zero"));
        }
        let seq = u32::from_be_bytes([s[4], s[5], s[6], s[7]]);
        match s[0] {
            CMD_RELAY => Ok(SessionSlot::Relay {
                seq,
                next_id: SessionId(field(40..56)),
                next_nonce: field(56..72),
                next_header_tag: field(72..88),
                payload_tag: field(88..104),
            }),
            CMD_DELIVER if s[40..88].iter().all(|&b| b == 0) => Ok(SessionSlot::Deliver {
                seq,
                payload_tag: field(88..104),
            }),
            CMD_DELIVER => Err(PeelError::Malformed(
                "deliver slot with non-zero routing fields",
            )),
            _ => Err(PeelError::Malformed("unknown slot command")),
        }
    }
}

fn prefix(id: &SessionId, nonce: &[u8; SESSION_ID_LEN]) -> [u8; AAD_LEN] {
    let mut p = [0u8; AAD_LEN];
    p[0] = SESSION_VERSION;
    p[OFF_ID..OFF_NONCE].copy_from_slice(&id.0);
    p[OFF_NONCE..].copy_from_slice(nonce);
    p
}

/// A sender's path session: the id and key every hop keeps, and the next sequence number.
/// Not `Clone`: two copies would number two packets alike, and the hops refuse the second.
#[derive(Debug)]
pub struct PathSession {
    hops: Vec<(NodeId, SessionGrant)>,
    epochs: Vec<Epoch>,
    next_seq: u32,
}

impl PathSession {
    pub(crate) fn new(hops: Vec<(NodeId, SessionGrant)>, epochs: Vec<Epoch>) -> Self {
        PathSession {
            hops,
            epochs,
            next_seq: 0,
        }
    }

    /// The nodes of the path, first hop first.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.hops.iter().map(|(n, _)| n)
    }

    /// The onion-key epoch each hop's session was opened under; a hop forgets the session when
    /// it deletes that key (the start of epoch `e + 2`), if not before.
    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    /// Packets built so far.
    pub fn sent(&self) -> u32 {
        self.next_seq
    }

    /// Builds the next packet of the session carrying `request` (onion.md §12.3).
    pub fn build(
        &mut self,
        rng: &mut impl CryptoRngCore,
        request: &[u8],
        class: SizeClass,
        reply_class: SizeClass,
    ) -> Result<BuiltPacket, BuildError> {
        let n = self.hops.len();
        let mut nonces = vec![[0u8; SESSION_ID_LEN]; n];
        for nonce in &mut nonces {
            rng.fill_bytes(nonce);
        }
        let mut padding = vec![0u8; padding_len(n)];
        rng.fill_bytes(&mut padding);
        self.build_with(&nonces, &padding, request, class, reply_class)
    }

    /// [`Self::build`] from explicit randomness: one nonce per hop and the padding after the last
    /// slot. Each nonce MUST be fresh: it is what makes the layer's keys single-use.
    pub(crate) fn build_with(
        &mut self,
        nonces: &[[u8; SESSION_ID_LEN]],
        padding: &[u8],
        request: &[u8],
        class: SizeClass,
        reply_class: SizeClass,
    ) -> Result<BuiltPacket, BuildError> {
        let n = self.hops.len();
        if n == 0 || n > MAX_HOPS || nonces.len() != n {
            return Err(BuildError::BadPathLength {
                max: MAX_HOPS,
                got: n,
            });
        }
        let seq = self.next_seq;
        let following = seq.checked_add(1).ok_or(BuildError::SessionExhausted)?;
        let keys: Vec<_> = self
            .hops
            .iter()
            .zip(nonces)
            .map(|((_, g), nonce)| Derivation::new(&g.key.0, &[&g.id.0, nonce]).layer_keys())
            .collect();
        let prefixes: Vec<_> = self
            .hops
            .iter()
            .zip(nonces)
            .map(|((_, g), nonce)| prefix(&g.id, nonce))
            .collect();
        let hops = &self.hops;
        let packet = assemble(
            &keys,
            &prefixes,
            padding,
            request,
            class,
            reply_class,
            &mut |i, next_header_tag, payload_tag| {
                match next_header_tag {
                    Some(next_header_tag) if i + 1 < n => SessionSlot::Relay {
                        seq,
                        next_id: hops[i + 1].1.id,
                        next_nonce: nonces[i + 1],
                        next_header_tag,
                        payload_tag,
                    },
                    _ => SessionSlot::Deliver { seq, payload_tag },
                }
                .encode()
            },
        )?;
        self.next_seq = following;
        let reply = ReplyOpener::new(keys.into_iter().map(|k| (k.reply, k.reply_wrap)).collect());
        Ok(BuiltPacket { packet, reply })
    }
}

/// The session id a session packet names, after checking its length, version and reserved
/// bytes. Cheap: a node calls it before any other work.
pub fn session_packet_id(packet: &[u8]) -> Result<SessionId, PeelError> {
    if SizeClass::from_len(packet.len()).is_none() {
        return Err(PeelError::BadSize(packet.len()));
    }
    if packet[0] != SESSION_VERSION {
        return Err(PeelError::BadVersion(packet[0]));
    }
    if packet[1..OFF_ID] != [0, 0, 0, 0] {
        return Err(PeelError::Malformed("reserved header bytes are not zero"));
    }
    let mut id = [0u8; SESSION_ID_LEN];
    id.copy_from_slice(&packet[OFF_ID..OFF_NONCE]);
    Ok(SessionId(id))
}

/// Peels one layer of a session packet in place (onion.md §12.4).
///
/// `lookup` finds the session's key and role by its id (`None`: unknown or expired); `fresh` is
/// the replay check, called once with the id and the sequence number after the header
/// authenticated, and must return `true` only if the session has not accepted it before
/// (recording it).
pub fn peel_session<'a>(
    packet: &'a mut [u8],
    lookup: impl FnOnce(&SessionId) -> Option<(SessionKey, SessionRole)>,
    fresh: impl FnOnce(&SessionId, u32) -> bool,
) -> Result<Peeled<'a>, PeelError> {
    let id = session_packet_id(packet)?;
    let (key, role) = lookup(&id).ok_or(PeelError::UnknownSession)?;
    let mut nonce = [0u8; SESSION_ID_LEN];
    nonce.copy_from_slice(&packet[OFF_NONCE..AAD_LEN]);
    let keys = Derivation::new(&key.0, &[&id.0, &nonce]).layer_keys();
    drop(key);

    let slot = SessionSlot::decode(&open_header(&keys, packet)?)?;
    let seq = match (&slot, role) {
        (SessionSlot::Relay { seq, .. }, SessionRole::Relay { .. })
        | (SessionSlot::Deliver { seq, .. }, SessionRole::Deliver) => *seq,
        _ => {
            return Err(PeelError::Malformed(
                "slot command does not match the session",
            ));
        }
    };
    if !fresh(&id, seq) {
        return Err(PeelError::Replay);
    }
    match (slot, role) {
        (
            SessionSlot::Relay {
                next_id,
                next_nonce,
                next_header_tag,
                payload_tag,
                ..
            },
            SessionRole::Relay { next },
        ) => {
            let reply = relay(
                keys,
                packet,
                &payload_tag,
                &prefix(&next_id, &next_nonce),
                &next_header_tag,
            )?;
            Ok(Peeled::Forward {
                next,
                reply,
                opened: None,
            })
        }
        (SessionSlot::Deliver { payload_tag, .. }, _) => {
            let (request, reply) = deliver(keys, packet, &payload_tag)?;
            Ok(Peeled::Deliver {
                request,
                reply,
                opened: None,
            })
        }
        _ => Err(PeelError::Malformed(
            "slot command does not match the session",
        )),
    }
}

/// The sequence numbers one session accepted: the highest, and which of the [`SEQ_WINDOW`]
/// below it (RFC 6479's sliding window, in one word).
#[derive(Debug, Clone, Copy, Default)]
struct SeqWindow {
    top: Option<u32>,
    /// Bit `d` set: `top − d` was accepted.
    seen: u64,
}

impl SeqWindow {
    fn accept(&mut self, seq: u32) -> bool {
        let Some(top) = self.top else {
            self.top = Some(seq);
            self.seen = 1;
            return true;
        };
        if seq > top {
            let shift = seq - top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift } | 1;
            self.top = Some(seq);
            return true;
        }
        let behind = top - seq;
        if behind >= SEQ_WINDOW || self.seen & (1u64 << behind) != 0 {
            return false;
        }
        self.seen |= 1u64 << behind;
        true
    }
}

#[derive(Debug)]
struct Entry {
    key: SessionKey,
    role: SessionRole,
    epoch: Epoch,
    expires: u64,
    window: SeqWindow,
}

/// Why a hop did not keep a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The table holds its capacity of live sessions.
    #[error("the session table is full")]
    Full,
    /// A live session has this id (a replayed opening is refused before this; two layers with
    /// one id would need a 128-bit collision).
    #[error("a session with this id exists")]
    Exists,
}

/// The sessions a node keeps: bounded in number, each forgotten [`SESSION_LIFETIME_SECS`] after
/// it was opened or with its epoch's onion key, whichever is first.
#[derive(Debug)]
pub struct SessionTable {
    entries: HashMap<SessionId, Entry>,
    /// Ids in the order they were opened, which is the order they expire in.
    order: VecDeque<(u64, SessionId)>,
    capacity: usize,
}

impl SessionTable {
    /// A table that keeps at most `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        SessionTable {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Live sessions held (expired ones are dropped as time passes).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps the session `grant` opened at `now` (Unix seconds) by a layer of `epoch`.
    pub fn open(
        &mut self,
        grant: SessionGrant,
        role: SessionRole,
        epoch: Epoch,
        now: u64,
    ) -> Result<(), OpenError> {
        self.expire(now);
        if self.entries.len() >= self.capacity {
            return Err(OpenError::Full);
        }
        if self.entries.contains_key(&grant.id) {
            return Err(OpenError::Exists);
        }
        let expires = now.saturating_add(SESSION_LIFETIME_SECS);
        self.order.push_back((expires, grant.id));
        self.entries.insert(
            grant.id,
            Entry {
                key: grant.key,
                role,
                epoch,
                expires,
                window: SeqWindow::default(),
            },
        );
        Ok(())
    }

    /// The key and role of the live session `id`.
    pub fn get(&self, id: &SessionId, now: u64) -> Option<(SessionKey, SessionRole)> {
        self.entries
            .get(id)
            .filter(|e| e.expires > now)
            .map(|e| (e.key.clone(), e.role))
    }

    /// Records `seq` for session `id`; `false` if the session accepted it before, if it is too
    /// far behind the highest accepted, or if the session is gone.
    pub fn accept(&mut self, id: &SessionId, seq: u32) -> bool {
        self.entries
            .get_mut(id)
            .is_some_and(|e| e.window.accept(seq))
    }

    /// Forgets the sessions of epochs whose onion keys were deleted.
    pub fn retain_epochs(&mut self, mut keep: impl FnMut(Epoch) -> bool) {
        self.entries.retain(|_, e| keep(e.epoch));
        let entries = &self.entries;
        self.order.retain(|(_, id)| entries.contains_key(id));
    }

    /// Forgets the sessions expired at `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(expires, id)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&id).is_some_and(|e| e.expires == expires) {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_accepts_each_number_once_and_not_too_far_behind() {
        let mut w = SeqWindow::default();
        assert!(w.accept(5));
        assert!(!w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(100));
        assert!(!w.accept(36), "64 or more behind the highest is refused");
        assert!(w.accept(37));
        assert!(!w.accept(37));
        assert!(w.accept(99));
        assert!(w.accept(1000));
        assert!(!w.accept(100));
        assert!(w.accept(u32::MAX));
        assert!(!w.accept(u32::MAX));
    }

    fn grant(b: u8) -> SessionGrant {
        SessionGrant {
            id: SessionId([b; SESSION_ID_LEN]),
            key: SessionKey([b; KEY_LEN]),
        }
    }

    #[test]
    fn a_table_keeps_its_capacity_and_forgets_by_age_and_epoch() {
        let mut t = SessionTable::new(2);
        t.open(grant(1), SessionRole::Deliver, Epoch(7), 1000)
            .unwrap();
        assert_eq!(
            t.open(grant(1), SessionRole::Deliver, Epoch(7), 1001),
            Err(OpenError::Exists)
        );
        t.open(grant(2), SessionRole::Deliver, Epoch(8), 1100)
            .unwrap();
        assert_eq!(
            t.open(grant(3), SessionRole::Deliver, Epoch(8), 1200),
            Err(OpenError::Full)
        );
        assert!(t.get(&SessionId([1; 16]), 1599).is_some());
        assert!(t.get(&SessionId([1; 16]), 1600).is_none(), "expired");
        // The first has expired by now, which makes room.
        t.open(grant(3), SessionRole::Deliver, Epoch(8), 1650)
            .unwrap();
        assert_eq!(t.len(), 2);
        t.retain_epochs(|e| e != Epoch(8));
        assert!(t.is_empty());
        assert!(!t.accept(&SessionId([2; 16]), 0), "forgotten");
    }
}
