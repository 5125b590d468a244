//! The onion packet: building it at the client and peeling one layer at a node.
//!
//! ```text
//! packet  = version (1) || epoch (4, big-endian) || ephemeral (32) || header_tag (16)
//!        || routing (832 = 8 slots of 104) || payload (class length − 885)
//! slot    = command (1) || reserved (3, zero) || next_epoch (4) || next_node (32)
//!        || next_ephemeral (32) || next_header_tag (16) || payload_tag (16)
//! ```
//!
//! A node decrypts and authenticates the routing header with its header key, reads the first slot,
//! shifts the rest left by one slot and appends 104 bytes of its filler keystream (which the sender
//! predicted), then decrypts its payload layer with the tag from its slot. The output has exactly
//! the input's length, and nothing in it or in what the node decrypted tells the node how far it is
//! from either end. The whitepaper (`whitepaper/onion.md`) is the normative description.

use rand_core::CryptoRngCore;

use crate::epoch::Epoch;
use crate::error::{BuildError, PeelError};
use crate::id::NodeId;
use crate::kdf::{Derivation, LayerKeys, ReplayTag};
use crate::keys::{EphemeralSecret, KEY_LEN, OnionPublicKey, OnionSecretKey};
use crate::reply::{ReplyLayer, ReplyOpener, ReplySealer};
use crate::session::{PathSession, SessionGrant};

/// The packet format version this crate speaks.
pub const VERSION: u8 = 1;
/// Most layers a packet can have.
pub const MAX_HOPS: usize = 8;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of one routing slot.
pub const SLOT_LEN: usize = 104;
/// Length of the routing header: one slot per possible hop, whatever the path's length.
pub const ROUTING_LEN: usize = MAX_HOPS * SLOT_LEN;
/// Length of the header: version, epoch, ephemeral key, tag and routing.
pub const HEADER_LEN: usize = OFF_ROUTING + ROUTING_LEN;
/// Bytes of the payload plaintext before the request: reply class (1) and request length (4).
pub const REQUEST_PREFIX_LEN: usize = 5;

const OFF_EPOCH: usize = 1;
const OFF_EPHEMERAL: usize = 5;
pub(crate) const OFF_TAG: usize = OFF_EPHEMERAL + KEY_LEN;
const OFF_ROUTING: usize = OFF_TAG + TAG_LEN;
/// The header bytes authenticated as associated data: version, epoch, ephemeral key (or, in a
/// path session's packet, its version, zeros, session id and nonce).
pub(crate) const AAD_LEN: usize = OFF_TAG;

pub(crate) const CMD_RELAY: u8 = 0x01;
pub(crate) const CMD_DELIVER: u8 = 0x02;
/// Slot flag: the hop keeps a path session for this layer (onion.md §12.1).
const FLAG_OPEN_SESSION: u8 = 0x01;

/// The fixed sizes every packet and every reply on a link has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeClass {
    /// 4096 bytes: stores of ordinary messages, most requests and replies.
    Small,
    /// 65536 bytes: attachments and batches of retrieved messages.
    Large,
}

impl std::fmt::Display for SizeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SizeClass::Small => "small",
            SizeClass::Large => "large",
        })
    }
}

impl SizeClass {
    /// Every class, smallest first.
    pub const ALL: [SizeClass; 2] = [SizeClass::Small, SizeClass::Large];

    /// Length in bytes of a packet or reply of this class.
    pub const fn size(self) -> usize {
        match self {
            SizeClass::Small => 4096,
            SizeClass::Large => 65536,
        }
    }

    /// The class whose length is `len`, if any.
    pub fn from_len(len: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.size() == len)
    }

    /// Wire code of the class (the reply class byte of a request).
    pub const fn code(self) -> u8 {
        match self {
            SizeClass::Small => 0,
            SizeClass::Large => 1,
        }
    }

    /// The class of a wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Length of the payload of a packet of this class.
    pub const fn payload_len(self) -> usize {
        self.size() - HEADER_LEN
    }

    /// Largest request a packet of this class carries.
    pub const fn max_request(self) -> usize {
        self.payload_len() - REQUEST_PREFIX_LEN
    }

    /// The smallest class that carries a request of `len` bytes.
    pub fn for_request(len: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.max_request() >= len)
    }
}

/// One hop of a path as the sender knows it from the roster.
#[derive(Debug, Clone)]
pub struct PathHop {
    /// The node's identity.
    pub node: NodeId,
    /// The epoch of the onion key used.
    pub epoch: Epoch,
    /// The node's onion key for that epoch.
    pub onion_key: OnionPublicKey,
}

/// The decoded routing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    Relay {
        next_epoch: Epoch,
        next_node: NodeId,
        next_ephemeral: [u8; KEY_LEN],
        next_header_tag: [u8; TAG_LEN],
        payload_tag: [u8; TAG_LEN],
        open_session: bool,
    },
    Deliver {
        payload_tag: [u8; TAG_LEN],
        open_session: bool,
    },
}

impl Slot {
    pub(crate) fn encode(&self) -> [u8; SLOT_LEN] {
        let mut s = [0u8; SLOT_LEN];
        match self {
            Slot::Relay {
                next_epoch,
                next_node,
                next_ephemeral,
                next_header_tag,
                payload_tag,
                open_session,
            } => {
                s[0] = CMD_RELAY;
                s[1] = u8::from(*open_session) * FLAG_OPEN_SESSION;
                s[4..8].copy_from_slice(&next_epoch.0.to_be_bytes());
                s[8..40].copy_from_slice(next_node.as_bytes());
                s[40..72].copy_from_slice(next_ephemeral);
                s[72..88].copy_from_slice(next_header_tag);
                s[88..104].copy_from_slice(payload_tag);
            }
            Slot::Deliver {
                payload_tag,
                open_session,
            } => {
                s[0] = CMD_DELIVER;
                s[1] = u8::from(*open_session) * FLAG_OPEN_SESSION;
                s[88..104].copy_from_slice(payload_tag);
            }
        }
        s
    }

    fn decode(s: &[u8; SLOT_LEN]) -> Result<Self, PeelError> {
        let arr = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 32];
            a[..r.len()].copy_from_slice(&s[r]);
            a
        };
        let tag = |r: std::ops::Range<usize>| {
            let mut a = [0u8; TAG_LEN];
            a.copy_from_slice(&s[r]);
            a
        };
        if s[1] & !FLAG_OPEN_SESSION != 0 || s[2..4] != [0, 0] {
            return Err(PeelError::Malformed("reserved slot bytes are not zero"));
        }
        let open_session = s[1] == FLAG_OPEN_SESSION;
        match s[0] {
            CMD_RELAY => Ok(Slot::Relay {
                next_epoch: Epoch(u32::from_be_bytes([s[4], s[5], s[6], s[7]])),
                next_node: NodeId::from_bytes(arr(8..40)),
                next_ephemeral: arr(40..72),
                next_header_tag: tag(72..88),
                payload_tag: tag(88..104),
                open_session,
            }),
            CMD_DELIVER if s[4..88].iter().all(|&b| b == 0) => Ok(Slot::Deliver {
                payload_tag: tag(88..104),
                open_session,
            }),
            CMD_DELIVER => Err(PeelError::Malformed(
                "deliver slot with non-zero routing fields",
            )),
            _ => Err(PeelError::Malformed("unknown slot command")),
        }
    }
}

/// What the sender supplies besides the path: one ephemeral key per layer and the random bytes
/// that fill the unused part of the last hop's routing header.
pub(crate) struct BuildRandomness {
    pub(crate) ephemerals: Vec<EphemeralSecret>,
    pub(crate) padding: Vec<u8>,
}

impl BuildRandomness {
    pub(crate) fn generate(hops: usize, rng: &mut impl CryptoRngCore) -> Self {
        let ephemerals = (0..hops).map(|_| EphemeralSecret::generate(rng)).collect();
        let mut padding = vec![0u8; padding_len(hops)];
        rng.fill_bytes(&mut padding);
        BuildRandomness {
            ephemerals,
            padding,
        }
    }
}

/// Length of the random padding after the last hop's slot, for a path of `hops` layers.
pub(crate) fn padding_len(hops: usize) -> usize {
    ROUTING_LEN.saturating_sub(hops * SLOT_LEN)
}

/// A built packet and what the sender needs to open its reply.
#[derive(Debug)]
pub struct BuiltPacket {
    /// The bytes to send to the first hop; exactly `class.size()` long.
    pub packet: Vec<u8>,
    /// Opens the reply that comes back on the same stream. Single use.
    pub reply: ReplyOpener,
}

/// Builds a packet that carries `request` along `path` (first hop first; the last hop is the
/// destination that executes the request) in a packet of `class`, asking for a reply of
/// `reply_class`.
pub fn build_packet(
    rng: &mut impl CryptoRngCore,
    path: &[PathHop],
    request: &[u8],
    class: SizeClass,
    reply_class: SizeClass,
) -> Result<BuiltPacket, BuildError> {
    prepare_path(rng, path)?.build(request, class, reply_class)
}

/// The key agreements of one packet with every hop of `path`, made before the request is known:
/// the public-key work of [`build_packet`] (one ephemeral key pair and one X25519 per hop), so
/// that a client can do it ahead of time and leave only symmetric work on the request's path.
pub fn prepare_path(
    rng: &mut impl CryptoRngCore,
    path: &[PathHop],
) -> Result<PreparedPath, BuildError> {
    check_path(path)?;
    PreparedPath::new(path, BuildRandomness::generate(path.len(), rng))
}

/// A path's key agreements for exactly one packet. It is not `Clone`, and building consumes it:
/// its keys encrypt under a fixed nonce, so they must never seal two packets.
pub struct PreparedPath {
    path: Vec<PathHop>,
    publics: Vec<[u8; KEY_LEN]>,
    keys: Vec<LayerKeys>,
    /// What each hop keeps if the packet opens a path session (onion.md §12.1).
    sessions: Vec<SessionGrant>,
    padding: Vec<u8>,
}

impl std::fmt::Debug for PreparedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedPath")
            .field("hops", &self.path.len())
            .finish_non_exhaustive()
    }
}

impl PreparedPath {
    fn new(path: &[PathHop], randomness: BuildRandomness) -> Result<Self, BuildError> {
        check_path(path)?;
        let n = path.len();
        if randomness.ephemerals.len() != n || randomness.padding.len() != padding_len(n) {
            return Err(BuildError::BadPathLength {
                max: MAX_HOPS,
                got: n,
            });
        }
        let mut publics = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        for (i, (hop, eph)) in path.iter().zip(randomness.ephemerals).enumerate() {
            let public = *eph.public();
            let shared = eph
                .diffie_hellman(&hop.onion_key)
                .map_err(|_| BuildError::NonContributory { hop: i })?;
            let derivation = Derivation::onion(&shared, &public, hop.onion_key.as_bytes());
            keys.push(derivation.layer_keys());
            sessions.push(SessionGrant::derive(&derivation));
            publics.push(public);
        }
        Ok(PreparedPath {
            path: path.to_vec(),
            publics,
            keys,
            sessions,
            padding: randomness.padding,
        })
    }

    /// The hops this packet will take.
    pub fn hops(&self) -> &[PathHop] {
        &self.path
    }

    /// Builds the packet carrying `request` (see [`build_packet`]).
    pub fn build(
        self,
        request: &[u8],
        class: SizeClass,
        reply_class: SizeClass,
    ) -> Result<BuiltPacket, BuildError> {
        self.build_observed(request, class, reply_class, false, &mut |_, _, _| {})
            .map(|(built, _)| built)
    }

    /// Builds the packet carrying `request` and asks every hop to keep a path session for it
    /// (onion.md §12): later requests on this path can go as [`PathSession`] packets, which
    /// each hop peels without a key agreement.
    pub fn build_opening(
        self,
        request: &[u8],
        class: SizeClass,
        reply_class: SizeClass,
    ) -> Result<(BuiltPacket, PathSession), BuildError> {
        self.build_observed(request, class, reply_class, true, &mut |_, _, _| {})
    }
}

fn check_path(path: &[PathHop]) -> Result<(), BuildError> {
    if path.is_empty() || path.len() > MAX_HOPS {
        return Err(BuildError::BadPathLength {
            max: MAX_HOPS,
            got: path.len(),
        });
    }
    Ok(())
}

/// Observer of each layer's derived keys and slot during construction (test vectors).
pub(crate) type LayerObserver<'a> = dyn FnMut(usize, &LayerKeys, &[u8; SLOT_LEN]) + 'a;

#[cfg(feature = "trace")]
pub(crate) fn build_with(
    path: &[PathHop],
    randomness: BuildRandomness,
    request: &[u8],
    class: SizeClass,
    reply_class: SizeClass,
    open_session: bool,
    observe: &mut LayerObserver<'_>,
) -> Result<(BuiltPacket, PathSession), BuildError> {
    PreparedPath::new(path, randomness)?.build_observed(
        request,
        class,
        reply_class,
        open_session,
        observe,
    )
}

impl PreparedPath {
    fn build_observed(
        self,
        request: &[u8],
        class: SizeClass,
        reply_class: SizeClass,
        open_session: bool,
        observe: &mut LayerObserver<'_>,
    ) -> Result<(BuiltPacket, PathSession), BuildError> {
        let PreparedPath {
            path,
            publics,
            keys,
            sessions,
            padding,
        } = self;
        let n = path.len();
        let prefixes: Vec<[u8; AAD_LEN]> = path
            .iter()
            .zip(&publics)
            .map(|(hop, public)| aad(hop.epoch, public))
            .collect();
        let packet = assemble(
            &keys,
            &prefixes,
            &padding,
            request,
            class,
            reply_class,
            &mut |i, next_header_tag, payload_tag| {
                let slot = match next_header_tag {
                    Some(next_header_tag) if i + 1 < n => Slot::Relay {
                        next_epoch: path[i + 1].epoch,
                        next_node: path[i + 1].node,
                        next_ephemeral: publics[i + 1],
                        next_header_tag,
                        payload_tag,
                        open_session,
                    },
                    _ => Slot::Deliver {
                        payload_tag,
                        open_session,
                    },
                }
                .encode();
                observe(i, &keys[i], &slot);
                slot
            },
        )?;
        let session = PathSession::new(
            path.iter().map(|h| h.node).zip(sessions).collect(),
            path.iter().map(|h| h.epoch).collect(),
        );
        let reply = ReplyOpener::new(keys.into_iter().map(|k| (k.reply, k.reply_wrap)).collect());
        Ok((BuiltPacket { packet, reply }, session))
    }
}

/// Lays out a packet from each layer's keys and the 37 bytes that open its header: the payload
/// sealed from the inside out, the filler the hops will append, then the routing header from
/// the last hop back to the first. `slot(i, next_header_tag, payload_tag)` gives layer `i`'s
/// slot plaintext (`next_header_tag` is `None` for the last layer). Shared by onion packets
/// (§4) and path sessions' packets (§12.3), which differ only in their keys, prefixes and slots.
pub(crate) fn assemble(
    keys: &[LayerKeys],
    prefixes: &[[u8; AAD_LEN]],
    padding: &[u8],
    request: &[u8],
    class: SizeClass,
    reply_class: SizeClass,
    slot: &mut dyn FnMut(usize, Option<[u8; TAG_LEN]>, [u8; TAG_LEN]) -> [u8; SLOT_LEN],
) -> Result<Vec<u8>, BuildError> {
    let n = keys.len();
    if n == 0 || n > MAX_HOPS || prefixes.len() != n || padding.len() != padding_len(n) {
        return Err(BuildError::BadPathLength {
            max: MAX_HOPS,
            got: n,
        });
    }
    if request.len() > class.max_request() {
        return Err(BuildError::RequestTooLarge {
            len: request.len(),
            max: class.max_request(),
            class,
        });
    }

    let mut packet = vec![0u8; class.size()];
    let (header, payload) = packet.split_at_mut(HEADER_LEN);

    // Payload: the request, then one GCM layer per hop from the inside out.
    payload[0] = reply_class.code();
    payload[1..5].copy_from_slice(&(request.len() as u32).to_be_bytes());
    payload[REQUEST_PREFIX_LEN..REQUEST_PREFIX_LEN + request.len()].copy_from_slice(request);
    let mut payload_tags = vec![[0u8; TAG_LEN]; n];
    for i in (0..n).rev() {
        payload_tags[i] = keys[i].payload.seal(&[], payload);
    }

    // Filler: the bytes that hops 0..n-2 append, as they will look after each later decryption.
    // After hop j shifts, the last (j+1) slots of the routing header are this filler.
    let mut filler = Vec::with_capacity(ROUTING_LEN);
    let mut keystream = [0u8; ROUTING_LEN];
    for key in keys.iter().take(n - 1) {
        keystream.fill(0);
        key.header.gcm_keystream_xor(&mut keystream);
        let start = ROUTING_LEN - filler.len();
        for (f, k) in filler.iter_mut().zip(&keystream[start..]) {
            *f ^= k;
        }
        let mut appended = [0u8; SLOT_LEN];
        key.filler.ctr_xor(&mut appended);
        filler.extend_from_slice(&appended);
    }

    // Routing header, from the last hop back to the first.
    let routing = &mut header[OFF_ROUTING..];
    let last = n - 1;
    let last_slot = slot(last, None, payload_tags[last]);
    routing[..SLOT_LEN].copy_from_slice(&last_slot);
    routing[SLOT_LEN..SLOT_LEN + padding.len()].copy_from_slice(padding);
    // The tail is chosen so that it encrypts to exactly the filler the earlier hops append.
    let tail = ROUTING_LEN - filler.len();
    keystream.fill(0);
    keys[last].header.gcm_keystream_xor(&mut keystream);
    for ((r, f), k) in routing[tail..]
        .iter_mut()
        .zip(&filler)
        .zip(&keystream[tail..])
    {
        *r = f ^ k;
    }
    let mut tag = keys[last].header.seal(&prefixes[last], routing);

    for i in (0..last).rev() {
        let slot = slot(i, Some(tag), payload_tags[i]);
        routing.copy_within(..ROUTING_LEN - SLOT_LEN, SLOT_LEN);
        routing[..SLOT_LEN].copy_from_slice(&slot);
        tag = keys[i].header.seal(&prefixes[i], routing);
    }

    header[..AAD_LEN].copy_from_slice(&prefixes[0]);
    header[OFF_TAG..OFF_ROUTING].copy_from_slice(&tag);
    Ok(packet)
}

fn aad(epoch: Epoch, ephemeral: &[u8; KEY_LEN]) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[0] = VERSION;
    a[OFF_EPOCH..OFF_EPHEMERAL].copy_from_slice(&epoch.0.to_be_bytes());
    a[OFF_EPHEMERAL..].copy_from_slice(ephemeral);
    a
}

/// Checks the length and version of `packet` and returns the epoch whose onion key opens it.
/// Cheap: a node calls it before any key work to pick (or refuse) the key.
pub fn packet_epoch(packet: &[u8]) -> Result<Epoch, PeelError> {
    if SizeClass::from_len(packet.len()).is_none() {
        return Err(PeelError::BadSize(packet.len()));
    }
    if packet[0] != VERSION {
        return Err(PeelError::BadVersion(packet[0]));
    }
    Ok(Epoch(u32::from_be_bytes([
        packet[1], packet[2], packet[3], packet[4],
    ])))
}

/// The outcome of peeling one layer.
#[derive(Debug)]
pub enum Peeled<'a> {
    /// Send the buffer, now holding the next layer, to `next`; wrap what comes back with `reply`.
    Forward {
        /// The next node.
        next: NodeId,
        /// Wraps the next hop's reply, or makes this hop's own error reply. Single use.
        reply: ReplyLayer,
        /// The path session the sender asked this hop to keep (onion.md §12.1), if any.
        opened: Option<SessionGrant>,
    },
    /// This node is the destination: execute `request` and answer with `reply`.
    Deliver {
        /// The request bytes, borrowed from the packet buffer.
        request: &'a [u8],
        /// Seals the response in the reply class the sender asked for. Single use.
        reply: ReplySealer,
        /// The path session the sender asked this hop to keep (onion.md §12.1), if any.
        opened: Option<SessionGrant>,
    },
}

/// Peels one layer of `packet` in place with `key`.
///
/// `fresh` is the replay check: it is called once with the layer's epoch and replay tag after the
/// header authenticated, and must return `true` only if the tag was not seen before (recording it).
/// On `Forward`, `packet` holds the next layer, of the same length. On any error the packet must be
/// dropped; its buffer holds nothing meaningful.
pub fn peel<'a>(
    key: &OnionSecretKey,
    packet: &'a mut [u8],
    fresh: impl FnOnce(Epoch, &ReplayTag) -> bool,
) -> Result<Peeled<'a>, PeelError> {
    let epoch = packet_epoch(packet)?;
    if epoch != key.epoch() {
        return Err(PeelError::UnknownEpoch(epoch));
    }
    let mut ephemeral = [0u8; KEY_LEN];
    ephemeral.copy_from_slice(&packet[OFF_EPHEMERAL..OFF_TAG]);

    let shared = key
        .diffie_hellman(&ephemeral)
        .map_err(|_| PeelError::NonContributory)?;
    let derivation = Derivation::onion(&shared, &ephemeral, key.public().as_bytes());
    drop(shared);
    let keys = derivation.layer_keys();

    let slot = Slot::decode(&open_header(&keys, packet)?)?;
    if !fresh(epoch, &derivation.replay_tag()) {
        return Err(PeelError::Replay);
    }
    match slot {
        Slot::Relay {
            next_epoch,
            next_node,
            next_ephemeral,
            next_header_tag,
            payload_tag,
            open_session,
        } => {
            let mut prefix = [0u8; AAD_LEN];
            prefix[0] = VERSION;
            prefix[OFF_EPOCH..OFF_EPHEMERAL].copy_from_slice(&next_epoch.0.to_be_bytes());
            prefix[OFF_EPHEMERAL..].copy_from_slice(&next_ephemeral);
            let reply = relay(keys, packet, &payload_tag, &prefix, &next_header_tag)?;
            Ok(Peeled::Forward {
                next: next_node,
                reply,
                opened: open_session.then(|| SessionGrant::derive(&derivation)),
            })
        }
        Slot::Deliver {
            payload_tag,
            open_session,
        } => {
            let opened = open_session.then(|| SessionGrant::derive(&derivation));
            let (request, reply) = deliver(keys, packet, &payload_tag)?;
            Ok(Peeled::Deliver {
                request,
                reply,
                opened,
            })
        }
    }
}

/// Authenticates and decrypts the routing header in place (§5 step 5) and returns its first slot.
pub(crate) fn open_header(
    keys: &LayerKeys,
    packet: &mut [u8],
) -> Result<[u8; SLOT_LEN], PeelError> {
    let len = packet.len();
    let header = packet
        .get_mut(..HEADER_LEN)
        .ok_or(PeelError::BadSize(len))?;
    let mut header_tag = [0u8; TAG_LEN];
    header_tag.copy_from_slice(&header[OFF_TAG..OFF_ROUTING]);
    let (aad, rest) = header.split_at_mut(OFF_TAG);
    let routing = &mut rest[TAG_LEN..];
    keys.header
        .open(aad, routing, &header_tag)
        .map_err(|_| PeelError::HeaderAuth)?;
    let mut slot = [0u8; SLOT_LEN];
    slot.copy_from_slice(&routing[..SLOT_LEN]);
    Ok(slot)
}

/// Opens this layer of the payload and turns the packet into the next hop's (§5 steps 8–9):
/// the routing header shifted by one slot and refilled with the filler, behind `prefix` (the
/// next layer's first 37 bytes) and its header tag.
pub(crate) fn relay(
    keys: LayerKeys,
    packet: &mut [u8],
    payload_tag: &[u8; TAG_LEN],
    prefix: &[u8; AAD_LEN],
    next_header_tag: &[u8; TAG_LEN],
) -> Result<ReplyLayer, PeelError> {
    let (header, payload) = packet.split_at_mut(HEADER_LEN);
    keys.payload
        .open(&[], payload, payload_tag)
        .map_err(|_| PeelError::PayloadAuth)?;
    let routing = &mut header[OFF_ROUTING..];
    routing.copy_within(SLOT_LEN.., 0);
    let tail = &mut routing[ROUTING_LEN - SLOT_LEN..];
    tail.fill(0);
    keys.filler.ctr_xor(tail);
    header[..AAD_LEN].copy_from_slice(prefix);
    header[OFF_TAG..OFF_ROUTING].copy_from_slice(next_header_tag);
    Ok(ReplyLayer::new(keys.reply, keys.reply_wrap))
}

/// Opens the destination's layer of the payload and checks the request's framing (§5 steps 8
/// and 10).
pub(crate) fn deliver<'a>(
    keys: LayerKeys,
    packet: &'a mut [u8],
    payload_tag: &[u8; TAG_LEN],
) -> Result<(&'a [u8], ReplySealer), PeelError> {
    let class = SizeClass::from_len(packet.len()).ok_or(PeelError::BadSize(packet.len()))?;
    let payload = &mut packet[HEADER_LEN..];
    keys.payload
        .open(&[], payload, payload_tag)
        .map_err(|_| PeelError::PayloadAuth)?;
    let reply_class =
        SizeClass::from_code(payload[0]).ok_or(PeelError::Malformed("unknown reply class"))?;
    let len = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]) as usize;
    if len > class.max_request() {
        return Err(PeelError::Malformed("request length exceeds the payload"));
    }
    let end = REQUEST_PREFIX_LEN + len;
    if payload[end..].iter().any(|&b| b != 0) {
        return Err(PeelError::Malformed("non-zero payload padding"));
    }
    Ok((
        &payload[REQUEST_PREFIX_LEN..end],
        ReplySealer::new(keys.reply, reply_class),
    ))
}
