//! What a client keeps about one peer account (`whitepaper/sessions.md` §14.2): the prekey
//! bundles of its devices as last fetched, the sessions with each device, and the envelopes
//! sealed to them that the swarm has not acknowledged yet (the outbox).
//!
//! The sessions and the outbox live in one file, replaced atomically, so that advancing a
//! sending chain and keeping the envelope it produced are one step: a crash can neither lose an
//! envelope whose key was spent nor reuse a key for a second envelope.
//!
//! ```text
//! peer    = 0x01 || u64be(fetched_at) || u8(b) || b × bundle
//!                || u8(s) || s × (signing key (32) || u32be(len) || peer sessions)
//!                || u16be(o) || o × (msg_id (16) || signing key (32) || u32be(len) || envelope
//!                                    || u32be(len) || application message)
//! ```

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::session::{BUNDLE_LEN, PeerSessions, PrekeyBundle, SessionError};

/// Version byte of the encoding.
pub const VERSION: u8 = 1;
/// Devices an account may have (sessions.md §2): more bundles than this are not kept.
pub const MAX_DEVICES: usize = 8;
/// Sessions kept per peer account: its current devices and a few it has replaced.
pub const MAX_SESSION_DEVICES: usize = 16;
/// Envelopes waiting for the swarm, per peer.
pub const MAX_OUTBOX: usize = 1000;
/// Largest envelope (the largest bucket).
pub const MAX_ENVELOPE: usize = 61_440;

/// An envelope sealed to one device of the peer, not yet acknowledged by the peer's swarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The application message it carries.
    pub msg_id: [u8; 16],
    /// The device it is sealed to (its signing key).
    pub device: [u8; 32],
    /// The envelope, resent as is until acknowledged (the swarm deduplicates it by hash).
    pub envelope: Vec<u8>,
    /// The application message it carries (`payload`), so the history can record the message
    /// from the outbox alone.
    pub message: Vec<u8>,
}

/// What a client keeps about one peer account.
#[derive(Clone, Debug, Default)]
pub struct PeerRecord {
    /// When the bundles were fetched (Unix ms, network time); 0 if never.
    pub fetched_at: u64,
    /// The newest valid bundle of each device, as last fetched.
    pub bundles: Vec<PrekeyBundle>,
    /// Sessions by device signing key.
    pub sessions: BTreeMap<[u8; 32], PeerSessions>,
    /// Envelopes not yet acknowledged, oldest first.
    pub outbox: Vec<Outgoing>,
}

/// Why a peer file did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerRecordError {
    /// Truncated, too long, a count over its limit, or a bad field.
    #[error("malformed peer record ({0})")]
    Malformed(&'static str),
    /// A session or bundle inside did not decode.
    #[error("peer record: {0}")]
    Session(#[from] SessionError),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PeerRecordError> {
        if self.0.len() < n {
            return Err(PeerRecordError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PeerRecordError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u32(&mut self, what: &'static str) -> Result<usize, PeerRecordError> {
        usize::try_from(u32::from_be_bytes(self.array(what)?))
            .map_err(|_| PeerRecordError::Malformed(what))
    }
}

impl PeerRecord {
    /// The bundle of a device, if fetched.
    pub fn bundle(&self, device: &[u8; 32]) -> Option<&PrekeyBundle> {
        self.bundles
            .iter()
            .find(|b| &b.cert().signing_key() == device)
    }

    /// Whether there is anything worth keeping on disk.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty() && self.sessions.is_empty() && self.outbox.is_empty()
    }

    /// The on-disk encoding. Wiped on drop: it holds session secrets.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        out.push(VERSION);
        out.extend_from_slice(&self.fetched_at.to_be_bytes());
        // Counts are capped where entries are added; `min` keeps the encoding in range anyway.
        let bundles = &self.bundles[..self.bundles.len().min(MAX_DEVICES)];
        out.push(u8::try_from(bundles.len()).unwrap_or(u8::MAX));
        for b in bundles {
            out.extend_from_slice(b.as_bytes());
        }
        let sessions: Vec<_> = self.sessions.iter().take(MAX_SESSION_DEVICES).collect();
        out.push(u8::try_from(sessions.len()).unwrap_or(u8::MAX));
        for (device, s) in sessions {
            let bytes = s.encode();
            out.extend_from_slice(device);
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        let outbox = &self.outbox[..self.outbox.len().min(MAX_OUTBOX)];
        out.extend_from_slice(&u16::try_from(outbox.len()).unwrap_or(0).to_be_bytes());
        for o in outbox {
            out.extend_from_slice(&o.msg_id);
            out.extend_from_slice(&o.device);
            out.extend_from_slice(&u32::try_from(o.envelope.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&o.envelope);
            out.extend_from_slice(&u32::try_from(o.message.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&o.message);
        }
        out
    }

    /// Decodes [`Self::encode`]. Bundles are decoded (signatures checked) but not checked for
    /// time: the caller refreshes expired ones.
    pub fn decode(bytes: &[u8]) -> Result<Self, PeerRecordError> {
        let mut r = Reader(bytes);
        if r.take(1, "version")? != [VERSION] {
            return Err(PeerRecordError::Malformed("version"));
        }
        let fetched_at = u64::from_be_bytes(r.array("fetched_at")?);
        let nb = usize::from(r.take(1, "bundle count")?[0]);
        if nb > MAX_DEVICES {
            return Err(PeerRecordError::Malformed("bundle count"));
        }
        let mut bundles = Vec::with_capacity(nb);
        for _ in 0..nb {
            bundles.push(PrekeyBundle::decode(r.take(BUNDLE_LEN, "bundle")?)?);
        }
        let ns = usize::from(r.take(1, "session count")?[0]);
        if ns > MAX_SESSION_DEVICES {
            return Err(PeerRecordError::Malformed("session count"));
        }
        let mut sessions = BTreeMap::new();
        for _ in 0..ns {
            let device: [u8; 32] = r.array("session device")?;
            let len = r.u32("session length")?;
            let s = PeerSessions::decode(r.take(len, "sessions")?)?;
            if sessions.insert(device, s).is_some() {
                return Err(PeerRecordError::Malformed("session device repeated"));
            }
        }
        let no = usize::from(u16::from_be_bytes(r.array("outbox count")?));
        if no > MAX_OUTBOX {
            return Err(PeerRecordError::Malformed("outbox count"));
        }
        let mut outbox = Vec::with_capacity(no);
        for _ in 0..no {
            let msg_id = r.array("outbox msg_id")?;
            let device = r.array("outbox device")?;
            let len = r.u32("outbox length")?;
            if len > MAX_ENVELOPE {
                return Err(PeerRecordError::Malformed("outbox envelope length"));
            }
            let envelope = r.take(len, "outbox envelope")?.to_vec();
            let len = r.u32("outbox message length")?;
            if len > MAX_ENVELOPE {
                return Err(PeerRecordError::Malformed("outbox message length"));
            }
            let message = r.take(len, "outbox message")?.to_vec();
            outbox.push(Outgoing {
                msg_id,
                device,
                envelope,
                message,
            });
        }
        if !r.0.is_empty() {
            return Err(PeerRecordError::Malformed("trailing bytes"));
        }
        Ok(PeerRecord {
            fetched_at,
            bundles,
            sessions,
            outbox,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = PeerRecord::decode(&bytes);
        }
    }

    #[test]
    fn an_outbox_round_trips() {
        let rec = PeerRecord {
            fetched_at: 42,
            bundles: Vec::new(),
            sessions: BTreeMap::new(),
            outbox: vec![Outgoing {
                msg_id: [1; 16],
                device: [2; 32],
                envelope: vec![3; 512],
                message: vec![4; 30],
            }],
        };
        let back = PeerRecord::decode(&rec.encode()).unwrap();
        assert_eq!(back.fetched_at, 42);
        assert_eq!(back.outbox, rec.outbox);
        let enc = rec.encode();
        assert!(PeerRecord::decode(&enc[..enc.len() - 1]).is_err());
        let mut longer = enc.to_vec();
        longer.push(0);
        assert!(PeerRecord::decode(&longer).is_err());
    }
}
