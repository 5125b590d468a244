//! The asynchronous start (PQXDH) and the Double Ratchet with a KEM step in every DH step
//! (`whitepaper/sessions.md` §4–§6), and the session's on-disk encoding (§8).
//!
//! Every decryption runs on a copy of the session that replaces it only once the message has
//! authenticated, so a forged, corrupted or replayed message leaves the session as it was.

use std::collections::VecDeque;
use std::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::codec::Reader;
use super::crypto::{self, ChainKey, DhSecret, KemKeyPair, MessageKey};
use super::keys::{CERT_LEN, DeviceCert, DeviceKeys, PrekeyBundle, PrekeyStore};
use super::{
    KEM_CT_LEN, KEM_EK_LEN, KEM_SEED_LEN, KEY_LEN, MAX_OLD_CHAINS, MAX_SKIP, MAX_SKIPPED,
    SKIPPED_KEY_TTL_MS, SessionError, TAG_LEN, VERSION, labels,
};

/// Length of a ratchet header: `DH (32) || u32be(PN) || u32be(N) || KEM ct (1088) || ek (1184)`.
pub const HEADER_LEN: usize = KEY_LEN + 4 + 4 + KEM_CT_LEN + KEM_EK_LEN;

/// Bytes a ratchet message adds to its plaintext: version, session id, header, tag.
pub const RATCHET_OVERHEAD: usize = 1 + KEY_LEN + HEADER_LEN + TAG_LEN;

/// Bytes a start message adds to its ratchet message: version, `EK_A`, the two prekey ids.
pub const START_OVERHEAD: usize = 1 + KEY_LEN + 4 + 4;

/// A ratchet header. The KEM fields are the same in every message of a chain.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// The sender's ratchet public key.
    pub dh: [u8; KEY_LEN],
    /// Number of messages in the sender's previous sending chain.
    pub pn: u32,
    /// This message's number in its chain.
    pub n: u32,
    /// ML-KEM-768 ciphertext to the receiver's latest encapsulation key.
    pub ct: Box<[u8; KEM_CT_LEN]>,
    /// The sender's new ML-KEM-768 encapsulation key.
    pub ek: Box<[u8; KEM_EK_LEN]>,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("dh", &hex::encode(&self.dh[..8]))
            .field("pn", &self.pn)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl Header {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dh);
        out.extend_from_slice(&self.pn.to_be_bytes());
        out.extend_from_slice(&self.n.to_be_bytes());
        out.extend_from_slice(self.ct.as_slice());
        out.extend_from_slice(self.ek.as_slice());
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, SessionError> {
        let dh = r.array()?;
        let pn = r.u32()?;
        let n = r.u32()?;
        let mut ct = Box::new([0u8; KEM_CT_LEN]);
        ct.copy_from_slice(r.take(KEM_CT_LEN)?);
        let mut ek = Box::new([0u8; KEM_EK_LEN]);
        ek.copy_from_slice(r.take(KEM_EK_LEN)?);
        Ok(Header { dh, pn, n, ct, ek })
    }

    /// `SHA-256(ct || ek)`: what a receiver remembers of a chain's KEM fields.
    fn kem_hash(&self) -> [u8; 32] {
        crypto::sha256(&[self.ct.as_slice(), self.ek.as_slice()])
    }
}

/// A ratchet message: `0x01 || session_id (32) || header (2312) || AES-256-GCM ciphertext`.
#[derive(Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    /// The session it belongs to.
    pub session_id: [u8; 32],
    /// The ratchet header.
    pub header: Header,
    /// `C || tag`.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for RatchetMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RatchetMessage")
            .field("session_id", &hex::encode(&self.session_id[..8]))
            .field("header", &self.header)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl RatchetMessage {
    /// The bytes before the ciphertext: `0x01 || session_id || header`.
    fn prefix(session_id: &[u8; 32], header: &Header) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + KEY_LEN + HEADER_LEN);
        out.push(VERSION);
        out.extend_from_slice(session_id);
        header.encode_into(&mut out);
        out
    }

    /// The AEAD's associated data: `"allium/v1/session/message" || 0x01 || session_id || header`.
    fn ad(session_id: &[u8; 32], header: &Header) -> Vec<u8> {
        [labels::MESSAGE, &Self::prefix(session_id, header)].concat()
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Self::prefix(&self.session_id, &self.header);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Decodes a ratchet message (the ciphertext is everything after the header).
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let mut r = Reader::new(bytes, "ratchet message");
        r.version(VERSION)?;
        let session_id = r.array()?;
        let header = Header::decode_from(&mut r)?;
        let ciphertext = r.rest().to_vec();
        if ciphertext.len() < TAG_LEN {
            return Err(SessionError::Malformed {
                what: "ratchet message",
            });
        }
        Ok(RatchetMessage {
            session_id,
            header,
            ciphertext,
        })
    }
}

/// A start message: what the responder needs to run PQXDH, and a ratchet message of the
/// initiator's first chain (whose header carries the PQXDH ciphertext `CT`). The initiator's
/// device certificate travels beside it, in the envelope.
///
/// `0x01 || EK_A (32) || u32be(spk_id) || u32be(pqspk_id) || ratchet message`.
#[derive(Clone, PartialEq, Eq)]
pub struct StartMessage {
    /// The initiator's ephemeral X25519 key `EK_A`.
    pub ephemeral: [u8; KEY_LEN],
    /// Id of the responder's X25519 prekey used.
    pub spk_id: u32,
    /// Id of the responder's ML-KEM prekey used.
    pub pqspk_id: u32,
    /// The first-chain message.
    pub message: RatchetMessage,
}

impl fmt::Debug for StartMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartMessage")
            .field("spk_id", &self.spk_id)
            .field("pqspk_id", &self.pqspk_id)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl StartMessage {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(START_OVERHEAD + RATCHET_OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.spk_id.to_be_bytes());
        out.extend_from_slice(&self.pqspk_id.to_be_bytes());
        out.extend_from_slice(&self.message.encode());
        out
    }

    /// Decodes a start message.
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let mut r = Reader::new(bytes, "start message");
        r.version(VERSION)?;
        let ephemeral = r.array()?;
        let spk_id = r.u32()?;
        let pqspk_id = r.u32()?;
        let message = RatchetMessage::decode(r.rest())?;
        Ok(StartMessage {
            ephemeral,
            spk_id,
            pqspk_id,
            message,
        })
    }
}

/// What a session sends or receives: a start message until the initiator has heard back, then
/// ratchet messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The first chain of a session, with what the responder needs to set it up.
    Start(StartMessage),
    /// Any other message.
    Ratchet(RatchetMessage),
}

impl Payload {
    /// The session the message belongs to.
    pub fn session_id(&self) -> &[u8; 32] {
        match self {
            Payload::Start(s) => &s.message.session_id,
            Payload::Ratchet(m) => &m.session_id,
        }
    }

    /// The ratchet message inside.
    pub fn message(&self) -> &RatchetMessage {
        match self {
            Payload::Start(s) => &s.message,
            Payload::Ratchet(m) => m,
        }
    }
}

/// Which side of PQXDH a session was on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Started it from the peer's prekey bundle.
    Initiator,
    /// Accepted the peer's start message.
    Responder,
}

/// What the initiator repeats in every message until the first reply.
#[derive(Clone)]
struct PendingStart {
    ephemeral: [u8; KEY_LEN],
    spk_id: u32,
    pqspk_id: u32,
}

#[derive(Clone)]
struct SendChain {
    key: ChainKey,
    n: u32,
}

#[derive(Clone)]
struct RecvChain {
    key: ChainKey,
    n: u32,
    kem_hash: [u8; 32],
}

/// A message key kept for a message not received yet.
#[derive(Clone)]
struct SkippedKey {
    dh: [u8; KEY_LEN],
    n: u32,
    key: MessageKey,
    stored_at: u64,
}

/// One end of a session between two devices.
///
/// Zeroized on drop (every secret field wipes itself); `Debug` shows no secret.
#[derive(Clone)]
pub struct Session {
    id: [u8; 32],
    role: Role,
    peer: DeviceCert,
    start: Option<PendingStart>,
    root: Zeroizing<[u8; KEY_LEN]>,
    ratchet: DhSecret,
    ratchet_pub: [u8; KEY_LEN],
    kem: KemKeyPair,
    peer_ratchet: [u8; KEY_LEN],
    send_ct: Box<[u8; KEM_CT_LEN]>,
    send: SendChain,
    pn: u32,
    recv: Option<RecvChain>,
    old_chains: VecDeque<[u8; KEY_LEN]>,
    skipped: VecDeque<SkippedKey>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &hex::encode(&self.id[..8]))
            .field("role", &self.role)
            .field("peer", &self.peer)
            .field("pending_start", &self.start.is_some())
            .field("sent", &self.send.n)
            .field("received", &self.recv.as_ref().map(|r| r.n))
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// The PQXDH values both sides compute; exposed for the test vectors.
#[doc(hidden)]
#[derive(Debug)]
pub struct Agreement {
    /// `DH1 || DH2 || DH3 || SS`.
    pub dh1: DhSecret,
    /// `X25519(EK_A, IK_B)`.
    pub dh2: DhSecret,
    /// `X25519(EK_A, SPK_B)`.
    pub dh3: DhSecret,
    /// The ML-KEM shared secret.
    pub ss: Zeroizing<[u8; KEY_LEN]>,
    /// `SK`.
    pub sk: Zeroizing<[u8; KEY_LEN]>,
    /// The session id.
    pub session_id: [u8; 32],
}

/// `SK = HKDF(salt = 0^32, IKM = 0xFF^32 || DH1 || DH2 || DH3 || SS, info = "…/pqxdh")`.
fn pqxdh_sk(
    dh1: &[u8; KEY_LEN],
    dh2: &[u8; KEY_LEN],
    dh3: &[u8; KEY_LEN],
    ss: &[u8; KEY_LEN],
) -> Result<Zeroizing<[u8; KEY_LEN]>, SessionError> {
    crypto::hkdf::<32>(&[0u8; 32], &[&[0xff; 32], dh1, dh2, dh3, ss], labels::PQXDH)
}

/// `SHA-256("…/id" || cert_A || cert_B || SPK_B || PQSPK_B || EK_A || CT)`: names the session
/// and binds every message of it to both devices and to the exact keys of the start.
fn session_id(
    cert_a: &DeviceCert,
    cert_b: &DeviceCert,
    spk_b: &[u8; KEY_LEN],
    pqspk_b: &[u8; KEM_EK_LEN],
    ek_a: &[u8; KEY_LEN],
    ct: &[u8; KEM_CT_LEN],
) -> [u8; 32] {
    crypto::sha256(&[
        labels::SESSION_ID,
        cert_a.as_bytes(),
        cert_b.as_bytes(),
        spk_b,
        pqspk_b,
        ek_a,
        ct,
    ])
}

impl Session {
    /// Starts a session with the device of `bundle` (decoded and checked by the caller against
    /// the account it expects, [`PrekeyBundle::verify`]). Draws `EK_A`, the encapsulation
    /// randomness, the first ratchet secret and the first ML-KEM seed, in this order.
    pub fn initiate(
        device: &DeviceKeys,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, SessionError> {
        Ok(Self::initiate_with_agreement(device, bundle, now, rng)?.0)
    }

    /// [`Self::initiate`], also returning the PQXDH values, for the test vectors.
    #[doc(hidden)]
    pub fn initiate_with_agreement(
        device: &DeviceKeys,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Agreement), SessionError> {
        bundle.check_time(now)?;
        let peer = bundle.cert().clone();
        let spk = bundle.spk();
        let ek_secret = crypto::random_secret(rng);
        let ek_pub = crypto::dh_public(&ek_secret);
        let dh1 = crypto::dh(device.identity_secret(), &spk)?;
        let dh2 = crypto::dh(&ek_secret, &peer.identity_key())?;
        let dh3 = crypto::dh(&ek_secret, &spk)?;
        let (ct, ss) = crypto::encapsulate(bundle.pqspk(), rng)?;
        let sk = pqxdh_sk(&dh1, &dh2, &dh3, &ss)?;
        let id = session_id(device.cert(), &peer, &spk, bundle.pqspk(), &ek_pub, &ct);

        // The first chain: a fresh ratchet key against SPK_B, and the PQXDH encapsulation as
        // its KEM step (the responder's first KEM key is PQSPK_B, as its first ratchet key is
        // SPK_B).
        let ratchet = crypto::random_secret(rng);
        let kem = KemKeyPair::generate(rng);
        let (root, send) = crypto::kdf_rk(&sk, &*crypto::dh(&ratchet, &spk)?, &ss)?;
        let session = Session {
            id,
            role: Role::Initiator,
            peer,
            start: Some(PendingStart {
                ephemeral: ek_pub,
                spk_id: bundle.spk_id(),
                pqspk_id: bundle.pqspk_id(),
            }),
            root,
            ratchet_pub: crypto::dh_public(&ratchet),
            ratchet,
            kem,
            peer_ratchet: spk,
            send_ct: ct,
            send: SendChain { key: send, n: 0 },
            pn: 0,
            recv: None,
            old_chains: VecDeque::new(),
            skipped: VecDeque::new(),
        };
        let agreement = Agreement {
            dh1,
            dh2,
            dh3,
            ss,
            sk,
            session_id: id,
        };
        Ok((session, agreement))
    }

    /// Accepts a start message from the device of `sender` (its certificate, verified when the
    /// envelope was opened) with the prekeys it names, and decrypts the message it carries.
    /// Refused with [`SessionError::PrekeyExpired`] once those prekeys are past retention.
    pub fn accept(
        device: &DeviceKeys,
        prekeys: &PrekeyStore,
        sender: &DeviceCert,
        start: &StartMessage,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Zeroizing<Vec<u8>>), SessionError> {
        let (session, plaintext, _) =
            Self::accept_with_agreement(device, prekeys, sender, start, now, rng)?;
        Ok((session, plaintext))
    }

    /// [`Self::accept`], also returning the PQXDH values, for the test vectors.
    #[doc(hidden)]
    pub fn accept_with_agreement(
        device: &DeviceKeys,
        prekeys: &PrekeyStore,
        sender: &DeviceCert,
        start: &StartMessage,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Zeroizing<Vec<u8>>, Agreement), SessionError> {
        let set = prekeys.find(start.spk_id, start.pqspk_id, now)?;
        let ct = &start.message.header.ct;
        let dh1 = crypto::dh(&set.spk, &sender.identity_key())?;
        let dh2 = crypto::dh(device.identity_secret(), &start.ephemeral)?;
        let dh3 = crypto::dh(&set.spk, &start.ephemeral)?;
        let ss = set.pqspk.decapsulate(ct);
        let sk = pqxdh_sk(&dh1, &dh2, &dh3, &ss)?;
        let spk_pub = set.spk_pub;
        let id = session_id(
            sender,
            device.cert(),
            &spk_pub,
            set.pqspk.ek(),
            &start.ephemeral,
            ct,
        );
        if !crypto::ct_eq(&id, &start.message.session_id) {
            return Err(SessionError::WrongSession);
        }
        // Until its first message is read, the responder's ratchet key is SPK_B and its KEM key
        // PQSPK_B; reading it performs the first step, replacing both (and the placeholder
        // sending chain) before the session is returned.
        let mut session = Session {
            id,
            role: Role::Responder,
            peer: sender.clone(),
            start: None,
            root: sk.clone(),
            ratchet: set.spk.clone(),
            ratchet_pub: spk_pub,
            kem: set.pqspk.clone(),
            peer_ratchet: [0; KEY_LEN],
            send_ct: Box::new([0; KEM_CT_LEN]),
            send: SendChain {
                key: ChainKey(Zeroizing::new([0; KEY_LEN])),
                n: 0,
            },
            pn: 0,
            recv: None,
            old_chains: VecDeque::new(),
            skipped: VecDeque::new(),
        };
        let plaintext = session.receive(&start.message, now, rng)?;
        let agreement = Agreement {
            dh1,
            dh2,
            dh3,
            ss,
            sk,
            session_id: id,
        };
        Ok((session, plaintext, agreement))
    }

    /// The session id: `SHA-256` over both certificates and the start (§5.3).
    pub fn id(&self) -> &[u8; 32] {
        &self.id
    }

    /// Whether this device started the session or accepted it.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer device.
    pub fn peer(&self) -> &DeviceCert {
        &self.peer
    }

    /// An initiator that has not yet read a reply: it sends start messages.
    pub fn is_pending(&self) -> bool {
        self.start.is_some()
    }

    /// How many message keys are kept for messages not received yet.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts `plaintext` as the next message of the sending chain: a start message while the
    /// session is pending, a ratchet message after.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Payload, SessionError> {
        let n = self.send.n;
        let next_n = n.checked_add(1).ok_or(SessionError::CounterExhausted)?;
        let (next, mk) = self.send.key.step()?;
        let header = Header {
            dh: self.ratchet_pub,
            pn: self.pn,
            n,
            ct: self.send_ct.clone(),
            ek: Box::new(*self.kem.ek()),
        };
        let ciphertext = mk.encrypt(&RatchetMessage::ad(&self.id, &header), plaintext)?;
        self.send = SendChain {
            key: next,
            n: next_n,
        };
        let message = RatchetMessage {
            session_id: self.id,
            header,
            ciphertext,
        };
        Ok(match &self.start {
            Some(s) => Payload::Start(StartMessage {
                ephemeral: s.ephemeral,
                spk_id: s.spk_id,
                pqspk_id: s.pqspk_id,
                message,
            }),
            None => Payload::Ratchet(message),
        })
    }

    /// Decrypts a message of this session from `sender` received at `now` (Unix ms). Draws a
    /// ratchet secret, an ML-KEM seed and the encapsulation randomness when the message opens a
    /// new chain. On any error the session is unchanged.
    pub fn decrypt(
        &mut self,
        sender: &DeviceCert,
        payload: &Payload,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        if !crypto::ct_eq(sender.as_bytes(), self.peer.as_bytes()) {
            return Err(SessionError::WrongSender);
        }
        // Only the initiator sends start messages; the responder accepted them already.
        if matches!(payload, Payload::Start(_)) && self.role != Role::Responder {
            return Err(SessionError::WrongSession);
        }
        let message = payload.message();
        if !crypto::ct_eq(&message.session_id, &self.id) {
            return Err(SessionError::WrongSession);
        }
        let mut next = self.clone();
        let plaintext = next.receive(message, now, rng)?;
        *self = next;
        Ok(plaintext)
    }

    /// Drops the skipped keys stored `SKIPPED_KEY_TTL_MS` or longer before `now`.
    pub fn expire(&mut self, now: u64) {
        self.skipped
            .retain(|k| now.saturating_sub(k.stored_at) < SKIPPED_KEY_TTL_MS);
    }

    /// The receiving state machine of the Double Ratchet spec §3.5, with the KEM step. Mutates
    /// `self` freely: [`Self::decrypt`] runs it on a copy.
    fn receive(
        &mut self,
        m: &RatchetMessage,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        self.expire(now);
        let h = &m.header;
        let ad = RatchetMessage::ad(&m.session_id, h);
        let current = crypto::ct_eq(&h.dh, &self.peer_ratchet);
        let repeats_other_kem = self
            .recv
            .as_ref()
            .is_some_and(|recv| current && !crypto::ct_eq(&h.kem_hash(), &recv.kem_hash));
        if repeats_other_kem {
            return Err(SessionError::HeaderMismatch);
        }
        if let Some(at) = self
            .skipped
            .iter()
            .position(|k| k.n == h.n && crypto::ct_eq(&k.dh, &h.dh))
        {
            let key = self.skipped.remove(at).map(|k| k.key);
            return key
                .ok_or(SessionError::Duplicate)?
                .decrypt(&ad, &m.ciphertext);
        }
        if self.recv.is_some() && current {
            let mk = self.advance_recv(h.n, now)?;
            return mk.decrypt(&ad, &m.ciphertext);
        }
        // A chain we moved past: its keys were used or kept as skipped, and neither holds this.
        if self.old_chains.iter().any(|d| crypto::ct_eq(d, &h.dh)) {
            return Err(SessionError::Duplicate);
        }
        if let Some(recv) = &self.recv {
            // Keep the keys of the current chain's messages still in flight.
            if h.pn > recv.n {
                self.skip_until(h.pn, now)?;
            }
            self.old_chains.push_back(self.peer_ratchet);
            if self.old_chains.len() > MAX_OLD_CHAINS {
                self.old_chains.pop_front();
            }
        }
        self.step(h, rng)?;
        let mk = self.advance_recv(h.n, now)?;
        mk.decrypt(&ad, &m.ciphertext)
    }

    /// Keeps the keys of the receiving chain's messages before `until` (for messages still in
    /// flight). A gap over `MAX_SKIP` is refused; beyond `MAX_SKIPPED` the oldest keys go.
    fn skip_until(&mut self, until: u32, now: u64) -> Result<(), SessionError> {
        let dh = self.peer_ratchet;
        let recv = self.recv.as_mut().ok_or(SessionError::WrongSession)?;
        if until < recv.n {
            return Err(SessionError::Duplicate);
        }
        if until - recv.n > MAX_SKIP {
            return Err(SessionError::TooFarAhead {
                gap: until - recv.n,
            });
        }
        while recv.n < until {
            let (next, key) = recv.key.step()?;
            self.skipped.push_back(SkippedKey {
                dh,
                n: recv.n,
                key,
                stored_at: now,
            });
            recv.key = next;
            recv.n += 1;
        }
        while self.skipped.len() > MAX_SKIPPED {
            self.skipped.pop_front();
        }
        Ok(())
    }

    /// Moves the receiving chain past message `n` and returns its key.
    fn advance_recv(&mut self, n: u32, now: u64) -> Result<MessageKey, SessionError> {
        self.skip_until(n, now)?;
        let recv = self.recv.as_mut().ok_or(SessionError::WrongSession)?;
        let (next, key) = recv.key.step()?;
        recv.key = next;
        recv.n = n.checked_add(1).ok_or(SessionError::CounterExhausted)?;
        Ok(key)
    }

    /// The DH and KEM ratchet step on a new chain from the peer: a receiving step with our
    /// current keys, then a sending step with fresh ones (draws ratchet secret, ML-KEM seed,
    /// encapsulation randomness).
    fn step(&mut self, h: &Header, rng: &mut impl CryptoRngCore) -> Result<(), SessionError> {
        let ss_recv = self.kem.decapsulate(&h.ct);
        let dh_recv = crypto::dh(&self.ratchet, &h.dh)?;
        let (root, recv) = crypto::kdf_rk(&self.root, &dh_recv, &ss_recv)?;
        let ratchet = crypto::random_secret(rng);
        let kem = KemKeyPair::generate(rng);
        let (ct, ss_send) = crypto::encapsulate(&h.ek, rng)?;
        let (root, send) = crypto::kdf_rk(&root, &*crypto::dh(&ratchet, &h.dh)?, &ss_send)?;
        self.root = root;
        self.peer_ratchet = h.dh;
        self.recv = Some(RecvChain {
            key: recv,
            n: 0,
            kem_hash: h.kem_hash(),
        });
        self.pn = self.send.n;
        self.send = SendChain { key: send, n: 0 };
        self.ratchet_pub = crypto::dh_public(&ratchet);
        self.ratchet = ratchet;
        self.kem = kem;
        self.send_ct = ct;
        // The peer has read our start: from now on, plain ratchet messages.
        self.start = None;
        Ok(())
    }

    /// The on-disk encoding (§8). Deterministic: equal states encode to equal bytes.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            FIXED_STATE_LEN + self.skipped.len() * SKIPPED_LEN,
        ));
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.push(match self.role {
            Role::Initiator => 0,
            Role::Responder => 1,
        });
        out.extend_from_slice(self.peer.as_bytes());
        match &self.start {
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.ephemeral);
                out.extend_from_slice(&s.spk_id.to_be_bytes());
                out.extend_from_slice(&s.pqspk_id.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.root.as_ref());
        out.extend_from_slice(self.ratchet.as_ref());
        out.extend_from_slice(self.kem.seed());
        out.extend_from_slice(&self.peer_ratchet);
        out.extend_from_slice(self.send_ct.as_slice());
        out.extend_from_slice(self.send.key.0.as_ref());
        out.extend_from_slice(&self.send.n.to_be_bytes());
        out.extend_from_slice(&self.pn.to_be_bytes());
        match &self.recv {
            Some(r) => {
                out.push(1);
                out.extend_from_slice(r.key.0.as_ref());
                out.extend_from_slice(&r.n.to_be_bytes());
                out.extend_from_slice(&r.kem_hash);
            }
            None => out.push(0),
        }
        // Both counts are bounded (MAX_OLD_CHAINS, MAX_SKIPPED) far below the field widths.
        out.push(u8::try_from(self.old_chains.len()).unwrap_or(u8::MAX));
        for d in &self.old_chains {
            out.extend_from_slice(d);
        }
        out.extend_from_slice(
            &u16::try_from(self.skipped.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for k in &self.skipped {
            out.extend_from_slice(&k.dh);
            out.extend_from_slice(&k.n.to_be_bytes());
            out.extend_from_slice(k.key.0.as_ref());
            out.extend_from_slice(&k.stored_at.to_be_bytes());
        }
        out
    }

    /// Decodes [`Self::encode`], refusing any encoding it would not produce.
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let bad = |what| SessionError::Malformed { what };
        let mut r = Reader::new(bytes, "session state");
        r.version(VERSION)?;
        let id = r.array()?;
        let role = match r.u8()? {
            0 => Role::Initiator,
            1 => Role::Responder,
            _ => return Err(bad("session state (role)")),
        };
        let peer = DeviceCert::decode(r.take(CERT_LEN)?)?;
        let start = match r.u8()? {
            0 => None,
            1 => Some(PendingStart {
                ephemeral: r.array()?,
                spk_id: r.u32()?,
                pqspk_id: r.u32()?,
            }),
            _ => return Err(bad("session state (start flag)")),
        };
        let root = Zeroizing::new(r.array()?);
        let ratchet: DhSecret = Zeroizing::new(r.array()?);
        let kem = KemKeyPair::from_seed(Zeroizing::new(r.array::<KEM_SEED_LEN>()?));
        let peer_ratchet = r.array()?;
        let mut send_ct = Box::new([0u8; KEM_CT_LEN]);
        send_ct.copy_from_slice(r.take(KEM_CT_LEN)?);
        let send = SendChain {
            key: ChainKey(Zeroizing::new(r.array()?)),
            n: r.u32()?,
        };
        let pn = r.u32()?;
        let recv = match r.u8()? {
            0 => None,
            1 => Some(RecvChain {
                key: ChainKey(Zeroizing::new(r.array()?)),
                n: r.u32()?,
                kem_hash: r.array()?,
            }),
            _ => return Err(bad("session state (receiving flag)")),
        };
        // An initiator is pending exactly until it has a receiving chain; a responder always has one.
        let consistent = match role {
            Role::Initiator => start.is_some() != recv.is_some(),
            Role::Responder => start.is_none() && recv.is_some(),
        };
        if !consistent {
            return Err(bad("session state (inconsistent role)"));
        }
        let n_old = usize::from(r.u8()?);
        if n_old > MAX_OLD_CHAINS {
            return Err(bad("session state (old chains)"));
        }
        let mut old_chains = VecDeque::with_capacity(n_old);
        for _ in 0..n_old {
            old_chains.push_back(r.array()?);
        }
        let n_skipped = usize::from(r.u16()?);
        if n_skipped > MAX_SKIPPED {
            return Err(bad("session state (skipped keys)"));
        }
        let mut skipped: VecDeque<SkippedKey> = VecDeque::with_capacity(n_skipped);
        for _ in 0..n_skipped {
            let k = SkippedKey {
                dh: r.array()?,
                n: r.u32()?,
                key: MessageKey(Zeroizing::new(r.array()?)),
                stored_at: r.u64()?,
            };
            if skipped.iter().any(|s| s.n == k.n && s.dh == k.dh) {
                return Err(bad("session state (skipped key twice)"));
            }
            skipped.push_back(k);
        }
        r.finish()?;
        Ok(Session {
            id,
            role,
            peer,
            start,
            root,
            ratchet_pub: crypto::dh_public(&ratchet),
            ratchet,
            kem,
            peer_ratchet,
            send_ct,
            send,
            pn,
            recv,
            old_chains,
            skipped,
        })
    }
}

/// Bytes of a session's encoding with no skipped key, no old chain, pending (initiator) start
/// absent but receiving chain present: the size of an established session.
pub const FIXED_STATE_LEN: usize = 1
    + 32
    + 1
    + CERT_LEN
    + 1
    + 32
    + 32
    + KEM_SEED_LEN
    + 32
    + KEM_CT_LEN
    + 32
    + 4
    + 4
    + 1
    + (32 + 4 + 32)
    + 1
    + 2;

/// Bytes each skipped key adds to the encoding.
pub const SKIPPED_LEN: usize = 32 + 4 + 32 + 8;

/// Bytes each remembered old chain adds to the encoding.
pub const OLD_CHAIN_LEN: usize = 32;
