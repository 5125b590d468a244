//! The sessions with one peer device and the rule that picks the one to send with
//! (`whitepaper/sessions.md` §6.6), so that two starts that cross lose no message.

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::codec::Reader;
use super::envelope::Opened;
use super::keys::{DeviceKeys, PrekeyBundle, PrekeyStore};
use super::ratchet::{Payload, Session};
use super::{MAX_PEER_SESSIONS, SessionError, VERSION};

/// The sessions with one peer device: the first sends, all decrypt.
///
/// Encoding: `0x01 || u8(n) || n × (u32be(len) || session)`, the active session first.
#[derive(Clone, Debug, Default)]
pub struct PeerSessions {
    sessions: Vec<Session>,
}

/// Whether `candidate` replaces `active` as the session to send with, when `candidate` was just
/// accepted from the peer's start message. A pending `active` means both sides started at once:
/// both keep the session with the smaller id, so they agree. Otherwise the peer started anew
/// (lost its state, or a new install) and its session wins.
pub fn accepted_wins(active: &Session, candidate: &Session) -> bool {
    !active.is_pending() || candidate.id() < active.id()
}

impl PeerSessions {
    /// No session yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The session used to send, if any.
    pub fn active(&self) -> Option<&Session> {
        self.sessions.first()
    }

    /// All sessions, the active one first.
    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    /// Starts a session from the peer's bundle and makes it the active one.
    pub fn initiate(
        &mut self,
        device: &DeviceKeys,
        bundle: &PrekeyBundle,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SessionError> {
        let session = Session::initiate(device, bundle, now, rng)?;
        self.sessions.insert(0, session);
        self.sessions.truncate(MAX_PEER_SESSIONS);
        Ok(())
    }

    /// Encrypts with the active session.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Payload, SessionError> {
        self.sessions
            .first_mut()
            .ok_or(SessionError::NoSession)?
            .encrypt(plaintext)
    }

    /// Decrypts an opened envelope from this peer with the session it names, accepting a start
    /// message for a new session. Applies the rule of [`accepted_wins`], and makes a session of
    /// ours active when the peer answers it (the peer chose it).
    pub fn decrypt(
        &mut self,
        device: &DeviceKeys,
        prekeys: &PrekeyStore,
        opened: &Opened,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let id = *opened.payload.session_id();
        if let Some(at) = self.sessions.iter().position(|s| s.id() == &id) {
            let session = &mut self.sessions[at];
            let was_pending = session.is_pending();
            let plaintext = session.decrypt(&opened.sender, &opened.payload, now, rng)?;
            if was_pending && !session.is_pending() && at > 0 {
                let s = self.sessions.remove(at);
                self.sessions.insert(0, s);
            }
            return Ok(plaintext);
        }
        if self
            .sessions
            .first()
            .is_some_and(|active| active.peer() != &opened.sender)
        {
            return Err(SessionError::WrongSender);
        }
        let Payload::Start(start) = &opened.payload else {
            return Err(SessionError::UnknownSession);
        };
        let (session, plaintext) =
            Session::accept(device, prekeys, &opened.sender, start, now, rng)?;
        let wins = self
            .sessions
            .first()
            .is_none_or(|a| accepted_wins(a, &session));
        let at = if wins { 0 } else { 1 };
        self.sessions.insert(at, session);
        self.sessions.truncate(MAX_PEER_SESSIONS);
        Ok(plaintext)
    }

    /// The on-disk encoding.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![VERSION]);
        // At most MAX_PEER_SESSIONS (4), enforced by every insertion and by decode.
        out.push(u8::try_from(self.sessions.len()).unwrap_or(u8::MAX));
        for s in &self.sessions {
            let bytes = s.encode();
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let mut r = Reader::new(bytes, "peer sessions");
        r.version(VERSION)?;
        let n = usize::from(r.u8()?);
        if n > MAX_PEER_SESSIONS {
            return Err(SessionError::Malformed {
                what: "peer sessions (count)",
            });
        }
        let mut sessions: Vec<Session> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::try_from(r.u32()?).map_err(|_| SessionError::Malformed {
                what: "peer sessions (length)",
            })?;
            let s = Session::decode(r.take(len)?)?;
            let same_peer = sessions.first().is_none_or(|f| f.peer() == s.peer());
            if !same_peer || sessions.iter().any(|o| o.id() == s.id()) {
                return Err(SessionError::Malformed {
                    what: "peer sessions (mixed peers or repeated session)",
                });
            }
            sessions.push(s);
        }
        r.finish()?;
        Ok(PeerSessions { sessions })
    }
}
