//! Linking a new device to an account (`whitepaper/devices.md` §6), as a state machine without
//! I/O: the caller feeds it what arrives in its temporary mailbox ([`Link::handle`]) and the
//! person's answers ([`Link::confirm`]), and carries out what it asks ([`Link::poll_transmit`],
//! [`Link::poll_event`]).
//!
//! ```text
//! new device N                                              primary P (holds the account seed)
//!   T_N, e_N; shows code = (T_N, E_N)  ──── person types or scans it ────▶
//!                         ◀── hello (T_P, E_P) into T_N's inbox ───  T_P, e_P
//!   both: ss = X25519(e, E_peer); keys and a 6-digit code (SAS) from ss and the transcript
//!   the person compares the two SAS and confirms on both devices
//!   keys (D_sig, IK, name) ── sealed, into T_P's inbox ──▶
//!                         ◀── welcome (cert, sync key, list, history count), history chunks ──
//! ```
//!
//! The code holds only public keys. P learns `E_N` from the person, so what N seals can come only
//! from N; N learns `E_P` from an unauthenticated hello, which the SAS authenticates. A second
//! hello, a message that does not open, or "the codes differ" on either side stops both devices,
//! and nothing is linked.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::list::DeviceList;
use super::{DeviceError, labels};
use crate::session::codec::Reader;
use crate::session::{CERT_LEN, DeviceCert, KEY_LEN, TAG_LEN, check_ed25519, crypto};

/// Version byte of the code and of every linking message.
pub const VERSION: u8 = 1;
/// Human-readable part of a linking code.
pub const CODE_HRP: &str = "alliumlink";
/// How long linking messages wait in a temporary mailbox (ms): long enough for a person to
/// compare two codes, short enough that nothing lingers.
pub const LINK_TTL_MS: u64 = 10 * 60 * 1000;
/// Digits of the short authentication string.
pub const SAS_DIGITS: usize = 6;
/// Longest device name.
pub const MAX_NAME: usize = 32;
/// Largest stored item (storage.md §1, `MAX_DATA`): every linking message fits one.
const MAX_ITEM: usize = 61_440;
/// Bytes of a sealed message besides its plaintext: version, type, sequence number, tag.
const SEALED_OVERHEAD: usize = 1 + 1 + 4 + TAG_LEN;
/// Largest body of one history chunk.
pub const MAX_CHUNK_BODY: usize = MAX_ITEM - SEALED_OVERHEAD;

/// Message types.
const HELLO: u8 = 1;
const KEYS: u8 = 2;
const WELCOME: u8 = 3;
const HISTORY: u8 = 4;
const ABORT: u8 = 5;

/// What the new device shows: its temporary mailbox and its ephemeral X25519 key, both public.
///
/// Text: bech32m with the prefix `alliumlink` of `0x01 || T_N (32) || E_N (32)`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LinkCode {
    /// The new device's temporary mailbox (an Ed25519 public key).
    pub mailbox: [u8; KEY_LEN],
    /// The new device's ephemeral X25519 public key.
    pub ephemeral: [u8; KEY_LEN],
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkCode({self})")
    }
}

impl fmt::Display for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hrp = Hrp::parse(CODE_HRP).map_err(|_| fmt::Error)?;
        let data = [&[VERSION], self.mailbox.as_slice(), &self.ephemeral].concat();
        bech32::encode_lower_to_fmt::<Bech32m, _>(f, hrp, &data).map_err(|_| fmt::Error)
    }
}

impl FromStr for LinkCode {
    type Err = DeviceError;

    /// Parses a code (either case), checking the checksum and both keys: a mistyped code is
    /// refused here rather than answered.
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let s = s.trim();
        let checked = CheckedHrpstring::new::<Bech32m>(s)
            .map_err(|_| DeviceError::BadCode("checksum or characters"))?;
        if !checked.hrp().as_str().eq_ignore_ascii_case(CODE_HRP) {
            return Err(DeviceError::BadCode("prefix"));
        }
        let bytes: Vec<u8> = checked.byte_iter().collect();
        let mut r = Reader::new(&bytes, "linking code");
        r.version(VERSION)
            .map_err(|_| DeviceError::BadCode("version"))?;
        let mailbox: [u8; KEY_LEN] = r.array().map_err(|_| DeviceError::BadCode("length"))?;
        let ephemeral: [u8; KEY_LEN] = r.array().map_err(|_| DeviceError::BadCode("length"))?;
        r.finish().map_err(|_| DeviceError::BadCode("length"))?;
        check_ed25519(&mailbox).map_err(|_| DeviceError::BadCode("mailbox key"))?;
        crypto::check_x25519_public(&ephemeral).map_err(|_| DeviceError::BadCode("key"))?;
        Ok(LinkCode { mailbox, ephemeral })
    }
}

impl LinkCode {
    /// The code as a terminal QR code (uppercase, for the alphanumeric mode).
    pub fn qr_terminal(&self) -> String {
        use qrcode::render::unicode::Dense1x2;
        let text = self.to_string().to_ascii_uppercase();
        match qrcode::QrCode::with_error_correction_level(&text, qrcode::EcLevel::M) {
            Ok(code) => code
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build(),
            Err(_) => text,
        }
    }
}

/// The public keys and name a new device asks the account to certify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Its Ed25519 signing key `D_sig`.
    pub signing: [u8; KEY_LEN],
    /// Its X25519 identity key `IK`.
    pub identity: [u8; KEY_LEN],
    /// A name for people (`devices list`), 0–32 of `A-Z a-z 0-9 _ . -`; empty if none.
    pub name: String,
}

/// Checks a device name: 1–32 of `A-Z a-z 0-9 _ . -` (the contact name rule).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl DeviceRequest {
    fn encode(&self) -> Vec<u8> {
        let name = if valid_name(&self.name) {
            self.name.as_bytes()
        } else {
            &[]
        };
        let mut out = Vec::with_capacity(2 * KEY_LEN + 1 + name.len());
        out.extend_from_slice(&self.signing);
        out.extend_from_slice(&self.identity);
        // At most MAX_NAME bytes.
        out.push(u8::try_from(name.len()).unwrap_or(0));
        out.extend_from_slice(name);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, DeviceError> {
        let mut r = Reader::new(bytes, "linking keys");
        let signing: [u8; KEY_LEN] = r.array()?;
        let identity: [u8; KEY_LEN] = r.array()?;
        let len = usize::from(r.u8()?);
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DeviceError::Malformed("linking keys (name)"))?
            .to_owned();
        r.finish()?;
        if !(name.is_empty() || valid_name(&name)) {
            return Err(DeviceError::Malformed("linking keys (name)"));
        }
        check_ed25519(&signing)?;
        crypto::check_x25519_public(&identity)?;
        Ok(DeviceRequest {
            signing,
            identity,
            name,
        })
    }
}

/// What the account sends a device it accepted.
#[derive(Clone)]
pub struct Welcome {
    /// The device's certificate.
    pub cert: DeviceCert,
    /// The account's sync key (§8.1).
    pub sync_key: Zeroizing<[u8; KEY_LEN]>,
    /// The device list that holds it.
    pub list: DeviceList,
    /// History chunks that follow.
    pub history_chunks: u32,
}

impl fmt::Debug for Welcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Welcome")
            .field("cert", &self.cert)
            .field("list", &self.list)
            .field("history_chunks", &self.history_chunks)
            .finish_non_exhaustive()
    }
}

impl Welcome {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let list = self.list.as_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(CERT_LEN + KEY_LEN + 2 + list.len() + 4));
        out.extend_from_slice(self.cert.as_bytes());
        out.extend_from_slice(self.sync_key.as_ref());
        // A list is at most MAX_LIST_LEN (1,527) bytes.
        out.extend_from_slice(&u16::try_from(list.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(list);
        out.extend_from_slice(&self.history_chunks.to_be_bytes());
        out
    }

    /// Decodes and checks a welcome for the device that asked with `request`: the certificate
    /// names its keys, the list is the certificate's account's and holds the certificate.
    fn decode(bytes: &[u8], request: &DeviceRequest) -> Result<Self, DeviceError> {
        let mut r = Reader::new(bytes, "welcome");
        let cert = DeviceCert::decode(r.take(CERT_LEN)?)?;
        let sync_key = Zeroizing::new(r.array::<KEY_LEN>()?);
        let len = usize::from(r.u16()?);
        let list = DeviceList::decode(r.take(len)?)?;
        let history_chunks = r.u32()?;
        r.finish()?;
        let mine = cert.signing_key() == request.signing && cert.identity_key() == request.identity;
        if !mine {
            return Err(DeviceError::Malformed(
                "welcome (certificate of other keys)",
            ));
        }
        if list.account_key() != cert.account_key() {
            return Err(DeviceError::WrongAccount);
        }
        if list.cert(&cert.signing_key()) != Some(&cert) {
            return Err(DeviceError::Malformed("welcome (device not on the list)"));
        }
        Ok(Welcome {
            cert,
            sync_key,
            list,
            history_chunks,
        })
    }
}

/// Which way a history entry went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryDirection {
    /// Sent by the account.
    Sent = 0,
    /// Received by the account.
    Received = 1,
}

/// One message of the history handed to a new device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    /// Sent or received.
    pub direction: HistoryDirection,
    /// The other account.
    pub peer: [u8; KEY_LEN],
    /// When it was sent (the sender's clock, Unix ms).
    pub timestamp_ms: u64,
    /// The application message id.
    pub msg_id: [u8; 16],
    /// The text.
    pub text: String,
}

/// Bytes of a history entry besides its text.
pub const HISTORY_ENTRY_OVERHEAD: usize = 1 + KEY_LEN + 8 + 16 + 4;

impl HistoryItem {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.direction as u8);
        out.extend_from_slice(&self.peer);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.msg_id);
        out.extend_from_slice(&u32::try_from(self.text.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(self.text.as_bytes());
    }

    fn decode_chunk(bytes: &[u8]) -> Result<Vec<HistoryItem>, DeviceError> {
        let mut r = Reader::new(bytes, "history chunk");
        let n = usize::from(r.u16()?);
        let mut out = Vec::with_capacity(n.min(bytes.len() / HISTORY_ENTRY_OVERHEAD));
        for _ in 0..n {
            let direction = match r.u8()? {
                0 => HistoryDirection::Sent,
                1 => HistoryDirection::Received,
                _ => return Err(DeviceError::Malformed("history chunk (direction)")),
            };
            let peer = r.array()?;
            let timestamp_ms = r.u64()?;
            let msg_id = r.array()?;
            let len =
                usize::try_from(r.u32()?).map_err(|_| DeviceError::Malformed("history chunk"))?;
            let text = std::str::from_utf8(r.take(len)?)
                .map_err(|_| DeviceError::Malformed("history chunk (text)"))?
                .to_owned();
            out.push(HistoryItem {
                direction,
                peer,
                timestamp_ms,
                msg_id,
                text,
            });
        }
        r.finish()?;
        Ok(out)
    }
}

/// Groups history entries, in order, into chunk bodies of at most [`MAX_CHUNK_BODY`] bytes:
/// `u16be(n) || n × entry`. An entry too long for any chunk is left out.
pub fn history_chunks(items: &[HistoryItem]) -> Vec<Vec<u8>> {
    let mut chunks: Vec<(u16, Vec<u8>)> = Vec::new();
    for item in items {
        let len = HISTORY_ENTRY_OVERHEAD + item.text.len();
        if 2 + len > MAX_CHUNK_BODY {
            continue;
        }
        let fits = chunks
            .last()
            .is_some_and(|(n, c)| *n < u16::MAX && c.len() + len <= MAX_CHUNK_BODY);
        if !fits {
            chunks.push((0, vec![0, 0]));
        }
        if let Some((n, c)) = chunks.last_mut() {
            item.encode_into(c);
            *n += 1;
            c[..2].copy_from_slice(&n.to_be_bytes());
        }
    }
    chunks.into_iter().map(|(_, c)| c).collect()
}

/// Why linking stopped. Nothing is linked after any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AbortReason {
    /// The person said the two codes differ.
    #[error("the codes on the two devices differ")]
    Mismatch,
    /// A second answer came to the new device: someone else answered its code.
    #[error("a second device answered the linking code (someone else may have seen it)")]
    SecondAnswer,
    /// A message that does not open under the linking keys, or comes out of turn.
    #[error("an unexpected message came (altered, or from someone else)")]
    Unexpected,
    /// The other device stopped, for the reason it gives.
    #[error("the other device stopped: {0}")]
    Peer(PeerReason),
}

/// The reason the other device gave when it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerReason {
    /// Its person said the codes differ.
    #[error("the codes differ")]
    Mismatch,
    /// It received a second answer.
    #[error("a second device answered")]
    SecondAnswer,
    /// It received a message it could not accept.
    #[error("it received an unexpected message")]
    Unexpected,
}

impl AbortReason {
    fn wire(self) -> u8 {
        match self {
            AbortReason::Mismatch | AbortReason::Peer(PeerReason::Mismatch) => 1,
            AbortReason::SecondAnswer | AbortReason::Peer(PeerReason::SecondAnswer) => 2,
            AbortReason::Unexpected | AbortReason::Peer(PeerReason::Unexpected) => 3,
        }
    }
}

/// Something the caller must do or show.
#[derive(Clone, Debug)]
pub enum Event {
    /// Show this code and ask the person whether the other device shows the same.
    Compare(String),
    /// (primary) The person confirmed and the new device's keys came: certify them, then call
    /// [`Link::approve`].
    Approve(DeviceRequest),
    /// (new device) The account accepted this device.
    Linked(Box<Welcome>),
    /// (new device) Messages of the account's history.
    History(Vec<HistoryItem>),
    /// Linking is complete: nothing more will come or go.
    Done,
    /// Linking stopped, and nothing is linked.
    Aborted(AbortReason),
}

/// A message to store in a temporary mailbox's inbox (unsigned, [`LINK_TTL_MS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The mailbox.
    pub to: [u8; KEY_LEN],
    /// The message.
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    New,
    Primary,
}

#[derive(Debug)]
enum State {
    /// New device: waiting for the primary's hello.
    AwaitHello,
    /// Both: the SAS is shown; waiting for the person (and, on the primary, the keys).
    Compare {
        confirmed: bool,
        keys: Option<DeviceRequest>,
    },
    /// New device: keys sent, waiting for the welcome.
    AwaitWelcome,
    /// New device: welcome read, `got` of `expected` history chunks read.
    History {
        expected: u32,
        got: BTreeSet<u32>,
    },
    /// Primary: waiting for [`Link::approve`].
    Approving,
    Done,
    Aborted(AbortReason),
}

/// The linking keys both devices derive once they know each other's ephemeral key.
struct Keys {
    hello: [u8; 2 * KEY_LEN + 2],
    send: Aes256Gcm,
    receive: Aes256Gcm,
    sas: String,
}

/// One side of a linking (§6).
pub struct Link {
    side: Side,
    state: State,
    /// Our temporary mailbox's seed (Ed25519) and public key.
    mailbox_seed: Zeroizing<[u8; KEY_LEN]>,
    mailbox: [u8; KEY_LEN],
    ephemeral: Zeroizing<[u8; KEY_LEN]>,
    /// The other side's temporary mailbox, once known.
    peer_mailbox: Option<[u8; KEY_LEN]>,
    /// The new device's code (both sides know it).
    code: LinkCode,
    request: Option<DeviceRequest>,
    keys: Option<Keys>,
    next_seq: u32,
    seen_seq: BTreeSet<u32>,
    /// History chunks that came before the welcome (the swarm orders by the accepting member's
    /// clock, which may differ between members): read once the welcome is in.
    early: Vec<Vec<u8>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

/// History chunks kept while the welcome has not come.
const MAX_EARLY: usize = 1024;

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("side", &self.side)
            .field("state", &self.state)
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

fn ed25519_public(seed: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

/// The transcript hash: `SHA-256("allium/v1/link/transcript" || T_N || E_N || T_P || E_P)`.
pub fn transcript(code: &LinkCode, primary_mailbox: &[u8; 32], primary_eph: &[u8; 32]) -> [u8; 32] {
    crypto::sha256(&[
        labels::LINK_TRANSCRIPT,
        &code.mailbox,
        &code.ephemeral,
        primary_mailbox,
        primary_eph,
    ])
}

/// `k_np`, `k_pn` and the SAS.
type Derived = (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>, String);

/// The values both sides derive (§6.3): the two directions' keys and the SAS.
#[doc(hidden)]
pub fn derive(ss: &[u8; KEY_LEN], th: &[u8; 32]) -> Result<Derived, DeviceError> {
    let k_np = crypto::hkdf::<32>(th, &[ss], labels::LINK_NEW_TO_PRIMARY)?;
    let k_pn = crypto::hkdf::<32>(th, &[ss], labels::LINK_PRIMARY_TO_NEW)?;
    let sas = crypto::hkdf::<8>(th, &[ss], labels::LINK_SAS)?;
    let n = u64::from_be_bytes(*sas) % 1_000_000;
    Ok((k_np, k_pn, format!("{:03} {:03}", n / 1000, n % 1000)))
}

fn cipher(k: &[u8; 32]) -> Result<Aes256Gcm, DeviceError> {
    Aes256Gcm::new_from_slice(k)
        .map_err(|_| DeviceError::Session(crate::session::SessionError::Kdf))
}

fn nonce(seq: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn header(kind: u8, seq: u32) -> [u8; 6] {
    let s = seq.to_be_bytes();
    [VERSION, kind, s[0], s[1], s[2], s[3]]
}

fn ad(kind: u8, seq: u32) -> Vec<u8> {
    [labels::LINK_MESSAGE, &header(kind, seq)].concat()
}

/// `0x01 || type || u32be(seq) || AES-256-GCM(k, 0^8 || u32be(seq), ad, body)`.
#[doc(hidden)]
pub fn seal_with(key: &Aes256Gcm, kind: u8, seq: u32, body: &[u8]) -> Result<Vec<u8>, DeviceError> {
    let mut buf = Zeroizing::new(body.to_vec());
    let tag = key
        .encrypt_in_place_detached(&Nonce::from(nonce(seq)), &ad(kind, seq), buf.as_mut_slice())
        .map_err(|_| DeviceError::Malformed("linking message (too long)"))?;
    let mut out = Vec::with_capacity(SEALED_OVERHEAD + body.len());
    out.extend_from_slice(&header(kind, seq));
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open_with(key: &Aes256Gcm, data: &[u8]) -> Option<(u8, u32, Zeroizing<Vec<u8>>)> {
    if data.len() < SEALED_OVERHEAD || data.len() > MAX_ITEM || data[0] != VERSION {
        return None;
    }
    let kind = data[1];
    let seq = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
    let (body, tag) = data[6..].split_at(data.len() - 6 - TAG_LEN);
    let mut buf = Zeroizing::new(body.to_vec());
    key.decrypt_in_place_detached(
        &Nonce::from(nonce(seq)),
        &ad(kind, seq),
        buf.as_mut_slice(),
        Tag::from_slice(tag),
    )
    .ok()?;
    Some((kind, seq, buf))
}

impl Link {
    /// The new device's side: draws its temporary mailbox seed, then its ephemeral secret, and
    /// returns the code to show. `request` holds the device keys it will ask to certify.
    pub fn new_device(request: DeviceRequest, rng: &mut impl CryptoRngCore) -> (Link, LinkCode) {
        let mailbox_seed = crypto::random_secret(rng);
        let ephemeral = crypto::random_secret(rng);
        let code = LinkCode {
            mailbox: ed25519_public(&mailbox_seed),
            ephemeral: crypto::dh_public(&ephemeral),
        };
        let link = Link {
            side: Side::New,
            state: State::AwaitHello,
            mailbox: code.mailbox,
            mailbox_seed,
            ephemeral,
            peer_mailbox: None,
            code,
            request: Some(request),
            keys: None,
            next_seq: 0,
            seen_seq: BTreeSet::new(),
            early: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        (link, code)
    }

    /// The primary's side, for the code the person entered: draws its temporary mailbox seed,
    /// then its ephemeral secret, queues the hello and the SAS to show.
    pub fn primary(code: &LinkCode, rng: &mut impl CryptoRngCore) -> Result<Link, DeviceError> {
        let mailbox_seed = crypto::random_secret(rng);
        let ephemeral = crypto::random_secret(rng);
        let mut link = Link {
            side: Side::Primary,
            state: State::Compare {
                confirmed: false,
                keys: None,
            },
            mailbox: ed25519_public(&mailbox_seed),
            mailbox_seed,
            ephemeral,
            peer_mailbox: Some(code.mailbox),
            code: *code,
            request: None,
            keys: None,
            next_seq: 0,
            seen_seq: BTreeSet::new(),
            early: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        let e_pub = crypto::dh_public(&link.ephemeral);
        let t_p = link.mailbox;
        let keys = link.keys_for(&t_p, &e_pub, &code.ephemeral)?;
        link.transmits.push_back(Transmit {
            to: code.mailbox,
            data: keys.hello.to_vec(),
        });
        link.events.push_back(Event::Compare(keys.sas.clone()));
        link.keys = Some(keys);
        Ok(link)
    }

    /// Derives the keys with the primary's `(t_p, e_p)` and the other side's ephemeral key.
    fn keys_for(
        &self,
        t_p: &[u8; KEY_LEN],
        e_p: &[u8; KEY_LEN],
        peer_eph: &[u8; KEY_LEN],
    ) -> Result<Keys, DeviceError> {
        let ss = crypto::dh(&self.ephemeral, peer_eph)?;
        let th = transcript(&self.code, t_p, e_p);
        let (k_np, k_pn, sas) = derive(&ss, &th)?;
        let (send, receive) = match self.side {
            Side::New => (k_np, k_pn),
            Side::Primary => (k_pn, k_np),
        };
        let mut hello = [0u8; 2 * KEY_LEN + 2];
        hello[0] = VERSION;
        hello[1] = HELLO;
        hello[2..2 + KEY_LEN].copy_from_slice(t_p);
        hello[2 + KEY_LEN..].copy_from_slice(e_p);
        Ok(Keys {
            hello,
            send: cipher(&send)?,
            receive: cipher(&receive)?,
            sas,
        })
    }

    /// This side's temporary mailbox (its inbox receives the other side's messages).
    pub fn mailbox(&self) -> [u8; KEY_LEN] {
        self.mailbox
    }

    /// The seed of this side's temporary mailbox key, to sign the retrieves of its inbox.
    pub fn mailbox_seed(&self) -> &Zeroizing<[u8; KEY_LEN]> {
        &self.mailbox_seed
    }

    /// Why linking stopped, if it did.
    pub fn aborted(&self) -> Option<AbortReason> {
        match self.state {
            State::Aborted(r) => Some(r),
            _ => None,
        }
    }

    /// Whether linking ended, completed or not.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Aborted(_))
    }

    /// The next message to store, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to show or do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn seal(&mut self, kind: u8, body: &[u8]) {
        let (Some(keys), Some(to)) = (&self.keys, self.peer_mailbox) else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        if let Ok(data) = seal_with(&keys.send, kind, seq, body) {
            self.transmits.push_back(Transmit { to, data });
        }
    }

    fn abort(&mut self, reason: AbortReason) {
        if self.is_finished() {
            return;
        }
        // Tell the other side, if there is a channel yet; a reason it gave is not echoed.
        if !matches!(reason, AbortReason::Peer(_)) {
            self.seal(ABORT, &[reason.wire()]);
        }
        self.state = State::Aborted(reason);
        self.events.push_back(Event::Aborted(reason));
    }

    /// The person's answer to [`Event::Compare`]: whether both devices show the same code.
    pub fn confirm(&mut self, same: bool) {
        let State::Compare { keys, .. } = &mut self.state else {
            return;
        };
        let keys = keys.take();
        if !same {
            self.abort(AbortReason::Mismatch);
            return;
        }
        match (self.side, keys) {
            (Side::New, _) => {
                let body = self.request.as_ref().map(DeviceRequest::encode);
                self.state = State::AwaitWelcome;
                if let Some(body) = body {
                    self.seal(KEYS, &body);
                }
            }
            (Side::Primary, Some(k)) => {
                self.state = State::Approving;
                self.events.push_back(Event::Approve(k));
            }
            (Side::Primary, None) => {
                self.state = State::Compare {
                    confirmed: true,
                    keys: None,
                };
            }
        }
    }

    /// (primary) After [`Event::Approve`]: sends the welcome (its `history_chunks` is set here)
    /// and the history chunks made by [`history_chunks`], and finishes.
    pub fn approve(&mut self, mut welcome: Welcome, chunks: &[Vec<u8>]) {
        if !matches!(self.state, State::Approving) {
            return;
        }
        welcome.history_chunks = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        self.seal(WELCOME, &welcome.encode());
        for c in chunks {
            self.seal(HISTORY, c);
        }
        self.state = State::Done;
        self.events.push_back(Event::Done);
    }

    /// (primary) Gives up before approving (the account cannot take the device): tells the new
    /// device, and nothing is linked.
    pub fn refuse(&mut self) {
        self.abort(AbortReason::Unexpected);
    }

    /// A message from this side's temporary inbox. Anything out of place stops the linking.
    pub fn handle(&mut self, data: &[u8]) {
        if self.is_finished() {
            return;
        }
        if data.len() == 2 + 2 * KEY_LEN && data[..2] == [VERSION, HELLO] {
            self.handle_hello(data);
            return;
        }
        let Some(keys) = &self.keys else {
            self.abort(AbortReason::Unexpected);
            return;
        };
        let Some((kind, seq, body)) = open_with(&keys.receive, data) else {
            self.abort(AbortReason::Unexpected);
            return;
        };
        if kind == HISTORY && matches!(self.state, State::AwaitWelcome) {
            if self.early.len() >= MAX_EARLY {
                self.abort(AbortReason::Unexpected);
            } else if !self.early.iter().any(|e| e[..] == data[..]) {
                self.early.push(data.to_vec());
            }
            return;
        }
        if !self.seen_seq.insert(seq) {
            // The same message again (the swarm answered it twice): nothing new.
            return;
        }
        match (kind, self.side) {
            (ABORT, _) => {
                let reason = match body.first() {
                    Some(1) => PeerReason::Mismatch,
                    Some(2) => PeerReason::SecondAnswer,
                    _ => PeerReason::Unexpected,
                };
                self.abort(AbortReason::Peer(reason));
            }
            (KEYS, Side::Primary) if seq == 0 => self.handle_keys(&body),
            (WELCOME, Side::New) if seq == 0 => self.handle_welcome(&body),
            (HISTORY, Side::New) => self.handle_history(seq, &body),
            _ => self.abort(AbortReason::Unexpected),
        }
    }

    fn handle_hello(&mut self, data: &[u8]) {
        if self.side == Side::Primary {
            self.abort(AbortReason::Unexpected);
            return;
        }
        if let Some(keys) = &self.keys {
            if keys.hello[..] != data[..] {
                self.abort(AbortReason::SecondAnswer);
            }
            return;
        }
        let mut t_p = [0u8; KEY_LEN];
        let mut e_p = [0u8; KEY_LEN];
        t_p.copy_from_slice(&data[2..2 + KEY_LEN]);
        e_p.copy_from_slice(&data[2 + KEY_LEN..]);
        let valid = check_ed25519(&t_p).is_ok() && crypto::check_x25519_public(&e_p).is_ok();
        let keys = if valid {
            self.keys_for(&t_p, &e_p, &e_p).ok()
        } else {
            None
        };
        let Some(keys) = keys else {
            self.abort(AbortReason::Unexpected);
            return;
        };
        self.peer_mailbox = Some(t_p);
        self.events.push_back(Event::Compare(keys.sas.clone()));
        self.keys = Some(keys);
        self.state = State::Compare {
            confirmed: false,
            keys: None,
        };
    }

    fn handle_keys(&mut self, body: &[u8]) {
        let request = match DeviceRequest::decode(body) {
            Ok(r) => r,
            Err(_) => {
                self.abort(AbortReason::Unexpected);
                return;
            }
        };
        match &mut self.state {
            State::Compare {
                confirmed: true, ..
            } => {
                self.state = State::Approving;
                self.events.push_back(Event::Approve(request));
            }
            State::Compare { keys, .. } if keys.is_none() => *keys = Some(request),
            _ => self.abort(AbortReason::Unexpected),
        }
    }

    fn handle_welcome(&mut self, body: &[u8]) {
        let welcome = match (&self.state, &self.request) {
            (State::AwaitWelcome, Some(request)) => Welcome::decode(body, request).ok(),
            _ => None,
        };
        let Some(welcome) = welcome else {
            self.abort(AbortReason::Unexpected);
            return;
        };
        let expected = welcome.history_chunks;
        self.events.push_back(Event::Linked(Box::new(welcome)));
        self.state = State::History {
            expected,
            got: BTreeSet::new(),
        };
        self.finish_history();
        for data in std::mem::take(&mut self.early) {
            self.handle(&data);
        }
    }

    fn handle_history(&mut self, seq: u32, body: &[u8]) {
        let items = match &self.state {
            State::History { expected, .. } if (1..=*expected).contains(&seq) => {
                HistoryItem::decode_chunk(body).ok()
            }
            _ => None,
        };
        let Some(items) = items else {
            self.abort(AbortReason::Unexpected);
            return;
        };
        if let State::History { got, .. } = &mut self.state {
            got.insert(seq);
        }
        self.events.push_back(Event::History(items));
        self.finish_history();
    }

    fn finish_history(&mut self) {
        if let State::History { expected, got } = &self.state {
            if u32::try_from(got.len()).unwrap_or(u32::MAX) >= *expected {
                self.state = State::Done;
                self.events.push_back(Event::Done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::identity::Identity;
    use crate::session::{DeviceKeys, DeviceSecrets};

    struct Pair {
        new: Link,
        primary: Link,
        secrets: DeviceSecrets,
        code: LinkCode,
    }

    fn start(seed: u64) -> Pair {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let secrets = DeviceSecrets::generate(&mut rng);
        let request = DeviceRequest {
            signing: secrets.signing_public(),
            identity: secrets.identity_public(),
            name: "laptop".into(),
        };
        let (new, code) = Link::new_device(request, &mut rng);
        let parsed: LinkCode = code.to_string().parse().unwrap();
        let primary = Link::primary(&parsed, &mut rng).unwrap();
        Pair {
            new,
            primary,
            secrets,
            code,
        }
    }

    /// Delivers every queued message to the side whose mailbox it names.
    fn deliver(a: &mut Link, b: &mut Link) -> usize {
        let mut n = 0;
        loop {
            let mut moved = false;
            while let Some(t) = a.poll_transmit() {
                assert_eq!(t.to, b.mailbox());
                b.handle(&t.data);
                moved = true;
                n += 1;
            }
            while let Some(t) = b.poll_transmit() {
                assert_eq!(t.to, a.mailbox());
                a.handle(&t.data);
                moved = true;
                n += 1;
            }
            if !moved {
                return n;
            }
        }
    }

    fn events(l: &mut Link) -> Vec<Event> {
        std::iter::from_fn(|| l.poll_event()).collect()
    }

    fn sas(evs: &[Event]) -> Option<String> {
        evs.iter().find_map(|e| match e {
            Event::Compare(s) => Some(s.clone()),
            _ => None,
        })
    }

    fn welcome_for(request: &DeviceRequest) -> (Identity, Welcome) {
        let account = Identity::from_seed(&[5; 32]);
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let me = DeviceKeys::generate(&account, 1, 1, &mut rng);
        let cert = DeviceCert::issue(&account, &request.signing, &request.identity, 2, 10).unwrap();
        let list = DeviceList::sign(&account, 2, 10, &[me.cert().clone(), cert.clone()]).unwrap();
        let welcome = Welcome {
            cert,
            sync_key: Zeroizing::new([4; 32]),
            list,
            history_chunks: 0,
        };
        (account, welcome)
    }

    fn item(i: u32, len: usize) -> HistoryItem {
        HistoryItem {
            direction: if i % 2 == 0 {
                HistoryDirection::Sent
            } else {
                HistoryDirection::Received
            },
            peer: [i as u8; 32],
            timestamp_ms: u64::from(i),
            msg_id: [i as u8; 16],
            text: "x".repeat(len),
        }
    }

    #[test]
    fn both_sides_show_one_code_and_the_device_is_linked_with_its_history() {
        let Pair {
            mut new,
            mut primary,
            secrets,
            ..
        } = start(1);
        deliver(&mut primary, &mut new);
        let (pe, ne) = (events(&mut primary), events(&mut new));
        assert_eq!(sas(&pe), sas(&ne));
        assert_eq!(sas(&pe).map(|s| s.len()), Some(7));
        new.confirm(true);
        deliver(&mut primary, &mut new);
        assert!(
            events(&mut primary).is_empty(),
            "nothing before its person confirms"
        );
        primary.confirm(true);
        let request = match events(&mut primary).as_slice() {
            [Event::Approve(r)] => r.clone(),
            e => panic!("{e:?}"),
        };
        assert_eq!(request.signing, secrets.signing_public());
        assert_eq!(request.name, "laptop");
        let (_, welcome) = welcome_for(&request);
        let history: Vec<HistoryItem> = (0..40).map(|i| item(i, 3000)).collect();
        let chunks = history_chunks(&history);
        assert!(chunks.len() > 1);
        primary.approve(welcome.clone(), &chunks);
        assert!(matches!(events(&mut primary).as_slice(), [Event::Done]));
        deliver(&mut primary, &mut new);
        let got = events(&mut new);
        let linked = got.iter().find_map(|e| match e {
            Event::Linked(w) => Some(w.clone()),
            _ => None,
        });
        let linked = linked.unwrap();
        assert_eq!(linked.cert, welcome.cert);
        assert_eq!(*linked.sync_key, [4; 32]);
        let keys = secrets.certified(linked.cert.clone()).unwrap();
        assert_eq!(keys.cert().device_id(), 2);
        let read: Vec<HistoryItem> = got
            .iter()
            .filter_map(|e| match e {
                Event::History(h) => Some(h.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(read, history);
        assert!(matches!(got.last(), Some(Event::Done)));
        assert!(new.is_finished() && primary.is_finished());
    }

    #[test]
    fn codes_that_differ_stop_both_sides() {
        for side_says_no in [0, 1] {
            let Pair {
                mut new,
                mut primary,
                ..
            } = start(2);
            deliver(&mut primary, &mut new);
            if side_says_no == 0 {
                new.confirm(false);
                primary.confirm(true);
            } else {
                primary.confirm(false);
                new.confirm(true);
            }
            deliver(&mut primary, &mut new);
            let (pe, ne) = (events(&mut primary), events(&mut new));
            assert!(!pe.iter().any(|e| matches!(e, Event::Approve(_))));
            assert!(pe.iter().any(|e| matches!(e, Event::Aborted(_))), "{pe:?}");
            assert!(ne.iter().any(|e| matches!(e, Event::Aborted(_))), "{ne:?}");
            assert!(!ne.iter().any(|e| matches!(e, Event::Linked(_))));
        }
    }

    #[test]
    fn a_second_answer_stops_the_new_device() {
        let Pair {
            mut new,
            mut primary,
            code,
            ..
        } = start(3);
        // An onlooker who saw the code answers it too.
        let mut eve = Link::primary(&code, &mut ChaCha20Rng::seed_from_u64(9)).unwrap();
        let eve_hello = eve.poll_transmit().unwrap();
        let hello = primary.poll_transmit().unwrap();
        new.handle(&hello.data);
        new.handle(&hello.data);
        assert_eq!(new.aborted(), None, "the same answer twice is one answer");
        new.handle(&eve_hello.data);
        assert_eq!(new.aborted(), Some(AbortReason::SecondAnswer));
        // The new device tells the first primary, which stops without approving.
        deliver(&mut primary, &mut new);
        primary.confirm(true);
        assert_eq!(
            primary.aborted(),
            Some(AbortReason::Peer(PeerReason::SecondAnswer))
        );
    }

    #[test]
    fn an_onlookers_answer_shows_another_code() {
        let Pair { mut new, code, .. } = start(4);
        let mut primary = Link::primary(&code, &mut ChaCha20Rng::seed_from_u64(10)).unwrap();
        let mut eve = Link::primary(&code, &mut ChaCha20Rng::seed_from_u64(11)).unwrap();
        let eve_hello = eve.poll_transmit().unwrap();
        new.handle(&eve_hello.data);
        let (ne, pe) = (events(&mut new), events(&mut primary));
        assert_ne!(sas(&ne), sas(&pe));
    }

    #[test]
    fn junk_in_either_inbox_stops_linking() {
        let Pair {
            mut new,
            mut primary,
            ..
        } = start(5);
        primary.handle(&[
            1, 2, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
        ]);
        assert_eq!(primary.aborted(), Some(AbortReason::Unexpected));
        new.handle(b"not a hello");
        assert_eq!(new.aborted(), Some(AbortReason::Unexpected));
    }

    #[test]
    fn history_that_overtakes_its_welcome_is_read_after_it() {
        let Pair {
            mut new,
            mut primary,
            ..
        } = start(6);
        deliver(&mut primary, &mut new);
        new.confirm(true);
        deliver(&mut primary, &mut new);
        primary.confirm(true);
        let request = match events(&mut primary).pop() {
            Some(Event::Approve(r)) => r,
            e => panic!("{e:?}"),
        };
        let (_, welcome) = welcome_for(&request);
        let history: Vec<HistoryItem> = (0..30).map(|i| item(i, 5000)).collect();
        primary.approve(welcome, &history_chunks(&history));
        let mut out: Vec<Transmit> = std::iter::from_fn(|| primary.poll_transmit()).collect();
        out.reverse();
        for t in &out {
            new.handle(&t.data);
        }
        new.handle(&out[0].data);
        let got = events(&mut new);
        let read: Vec<HistoryItem> = got
            .iter()
            .filter_map(|e| match e {
                Event::History(h) => Some(h.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(read.len(), history.len());
        assert!(matches!(got.last(), Some(Event::Done)), "{got:?}");
    }

    #[test]
    fn a_welcome_for_other_keys_is_refused() {
        let Pair {
            mut new,
            mut primary,
            ..
        } = start(7);
        deliver(&mut primary, &mut new);
        new.confirm(true);
        deliver(&mut primary, &mut new);
        primary.confirm(true);
        let _ = events(&mut primary);
        let other = DeviceSecrets::generate(&mut ChaCha20Rng::seed_from_u64(3));
        let (_, welcome) = welcome_for(&DeviceRequest {
            signing: other.signing_public(),
            identity: other.identity_public(),
            name: String::new(),
        });
        primary.approve(welcome, &[]);
        deliver(&mut primary, &mut new);
        assert_eq!(new.aborted(), Some(AbortReason::Unexpected));
    }

    #[test]
    fn codes_parse_in_either_case_and_refuse_typos() {
        let Pair { code, .. } = start(8);
        let text = code.to_string();
        assert!(text.starts_with("alliumlink1"));
        assert_eq!(text.parse::<LinkCode>().unwrap(), code);
        assert_eq!(text.to_uppercase().parse::<LinkCode>().unwrap(), code);
        let mut typo = text.clone().into_bytes();
        let at = typo.len() - 10;
        typo[at] = if typo[at] == b'q' { b'p' } else { b'q' };
        assert!(
            String::from_utf8(typo)
                .unwrap()
                .parse::<LinkCode>()
                .is_err()
        );
        let address = Identity::from_seed(&[1; 32]).address().to_string();
        assert!(address.parse::<LinkCode>().is_err());
        assert!(!code.qr_terminal().is_empty());
    }

    proptest! {
        #[test]
        fn no_input_in_any_state_panics(
            steps in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(any::<u8>(), 0..200)), 0..12),
            seed in any::<u64>(),
        ) {
            let Pair { mut new, mut primary, .. } = start(seed);
            for (what, bytes) in steps {
                match what {
                    0 => { new.handle(&bytes); primary.handle(&bytes); }
                    1 => { deliver(&mut primary, &mut new); }
                    2 => { new.confirm(bytes.first().is_some_and(|b| b % 2 == 0)); }
                    _ => { primary.confirm(bytes.first().is_some_and(|b| b % 2 == 0)); }
                }
                let _ = events(&mut new);
                let _ = events(&mut primary);
            }
        }

        #[test]
        fn codes_never_panic_to_parse(s in "\\PC{0,130}") {
            let _ = s.parse::<LinkCode>();
        }

        #[test]
        fn history_chunks_never_panic_to_decode(
            bytes in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            let _ = HistoryItem::decode_chunk(&bytes);
            let _ = DeviceRequest::decode(&bytes);
        }
    }
}
