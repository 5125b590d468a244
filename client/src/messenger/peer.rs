//! What a client keeps about one peer account (`whitepaper/sessions.md` §14.2,
//! `whitepaper/devices.md` §5.3): its device list and the prekey bundles of its devices as last
//! fetched, the sessions with each device, and the stored items (envelopes or containers of
//! envelopes) sealed to them that the swarm has not acknowledged yet (the outbox).
//!
//! The sessions and the outbox live in one file, replaced atomically, so that advancing a
//! sending chain and keeping the envelope it produced are one step: a crash can neither lose an
//! envelope whose key was spent nor reuse a key for a second envelope.
//!
//! ```text
//! peer    = 0x02 || u64be(fetched_at) || u16be(l) || list (l bytes; l = 0: none)
//!                || u8(b) || b × bundle
//!                || u8(s) || s × (signing key (32) || u32be(len) || peer sessions)
//!                || u16be(o) || o × (msg_id (16) || u8(flags) || u32be(len) || item
//!                                    || u32be(len) || application message)
//! ```
//!
//! `flags` bit 0: the copy of this message for the account's other devices is not made yet.
//! Version 1 files (no list; one envelope per entry, with its device) are read as well.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::devices::DeviceError;
use crate::devices::list::{DeviceList, MAX_LIST_LEN};
use crate::session::{BUNDLE_LEN, PeerSessions, PrekeyBundle, SessionError};

/// Version byte of the encoding.
pub const VERSION: u8 = 2;
/// The version before device lists and containers, still read.
const VERSION_1: u8 = 1;
/// `flags` bit: the sent copy of this message is still to be made.
const COPY_PENDING: u8 = 1;
/// Devices an account may have (sessions.md §2): more bundles than this are not kept.
pub const MAX_DEVICES: usize = 8;
/// Sessions kept per peer account: its current devices and a few it has replaced.
pub const MAX_SESSION_DEVICES: usize = 16;
/// Envelopes waiting for the swarm, per peer.
pub const MAX_OUTBOX: usize = 1000;
/// Largest stored item: an envelope of the largest bucket, or a container (`MAX_DATA`).
pub const MAX_ENVELOPE: usize = 61_440;

/// A stored item (an envelope or a container of envelopes) sealed to devices of the peer, not
/// yet acknowledged by the peer's swarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The application message it carries.
    pub msg_id: [u8; 16],
    /// The item, stored as is until acknowledged (the swarm deduplicates it by hash).
    pub item: Vec<u8>,
    /// The application message it carries (`payload`), so the history can record the message
    /// from the outbox alone.
    pub message: Vec<u8>,
    /// The copy of the message for this account's other devices is still to be made.
    pub copy_pending: bool,
}

/// What a client keeps about one peer account.
#[derive(Clone, Debug, Default)]
pub struct PeerRecord {
    /// When the bundles were fetched (Unix ms, network time); 0 if never.
    pub fetched_at: u64,
    /// The newest device list seen; never replaced by an older one.
    pub list: Option<DeviceList>,
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
    /// The device list inside did not decode.
    #[error("peer record: {0}")]
    List(#[from] DeviceError),
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

    /// The devices a message to this account is sealed to: those with a bundle that are on
    /// the device list (every one with a bundle when the account publishes no list).
    pub fn recipients(&self) -> impl Iterator<Item = &PrekeyBundle> {
        self.bundles.iter().filter(|b| {
            self.list
                .as_ref()
                .is_none_or(|l| l.cert(&b.cert().signing_key()) == Some(b.cert()))
        })
    }

    /// Whether the list held names a device of this id (any id when there is none).
    pub fn listed_device(&self, device_id: u32) -> bool {
        self.list
            .as_ref()
            .is_none_or(|l| l.certs().iter().any(|c| c.device_id() == device_id))
    }

    /// Whether a device of this account may write: on the list, or any when there is none.
    pub fn listed(&self, signing_key: &[u8; 32]) -> bool {
        self.list.as_ref().is_none_or(|l| l.contains(signing_key))
    }

    /// Takes `list` if it is newer than the one held; then forgets the bundles and sessions of
    /// devices no longer on it (their sessions end). Returns whether the list was taken.
    pub fn adopt_list(&mut self, list: DeviceList) -> bool {
        if self
            .list
            .as_ref()
            .is_some_and(|held| !list.newer_than(held))
        {
            return false;
        }
        self.bundles
            .retain(|b| list.cert(&b.cert().signing_key()) == Some(b.cert()));
        self.sessions.retain(|device, _| list.contains(device));
        self.list = Some(list);
        true
    }

    /// The on-disk encoding. Wiped on drop: it holds session secrets.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        out.push(VERSION);
        out.extend_from_slice(&self.fetched_at.to_be_bytes());
        let list = self.list.as_ref().map_or(&[][..], DeviceList::as_bytes);
        out.extend_from_slice(&u16::try_from(list.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(list);
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
            out.push(if o.copy_pending { COPY_PENDING } else { 0 });
            out.extend_from_slice(&u32::try_from(o.item.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&o.item);
            out.extend_from_slice(&u32::try_from(o.message.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&o.message);
        }
        out
    }

    /// Decodes [`Self::encode`]. Bundles are decoded (signatures checked) but not checked for
    /// time: the caller refreshes expired ones.
    pub fn decode(bytes: &[u8]) -> Result<Self, PeerRecordError> {
        let mut r = Reader(bytes);
        let version = r.take(1, "version")?[0];
        if version != VERSION && version != VERSION_1 {
            return Err(PeerRecordError::Malformed("version"));
        }
        let fetched_at = u64::from_be_bytes(r.array("fetched_at")?);
        let list = if version == VERSION {
            let len = usize::from(u16::from_be_bytes(r.array("list length")?));
            if len > MAX_LIST_LEN {
                return Err(PeerRecordError::Malformed("list length"));
            }
            match len {
                0 => None,
                _ => Some(DeviceList::decode(r.take(len, "list")?)?),
            }
        } else {
            None
        };
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
            let copy_pending = if version == VERSION {
                match r.take(1, "outbox flags")?[0] {
                    0 => false,
                    COPY_PENDING => true,
                    _ => return Err(PeerRecordError::Malformed("outbox flags")),
                }
            } else {
                // Version 1 named the device of its one envelope; the envelope says it itself.
                r.take(32, "outbox device")?;
                false
            };
            let len = r.u32("outbox length")?;
            if len > MAX_ENVELOPE {
                return Err(PeerRecordError::Malformed("outbox envelope length"));
            }
            let item = r.take(len, "outbox envelope")?.to_vec();
            let len = r.u32("outbox message length")?;
            if len > MAX_ENVELOPE {
                return Err(PeerRecordError::Malformed("outbox message length"));
            }
            let message = r.take(len, "outbox message")?.to_vec();
            outbox.push(Outgoing {
                msg_id,
                item,
                message,
                copy_pending,
            });
        }
        if !r.0.is_empty() {
            return Err(PeerRecordError::Malformed("trailing bytes"));
        }
        Ok(PeerRecord {
            fetched_at,
            list,
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
            list: None,
            bundles: Vec::new(),
            sessions: BTreeMap::new(),
            outbox: vec![
                Outgoing {
                    msg_id: [1; 16],
                    item: vec![3; 512],
                    message: vec![4; 30],
                    copy_pending: true,
                },
                Outgoing {
                    msg_id: [5; 16],
                    item: vec![6; 3072 * 2 + 6],
                    message: vec![7; 3],
                    copy_pending: false,
                },
            ],
        };
        let back = PeerRecord::decode(&rec.encode()).unwrap();
        assert_eq!(back.fetched_at, 42);
        assert_eq!(back.outbox, rec.outbox);
        let enc = rec.encode();
        assert!(PeerRecord::decode(&enc[..enc.len() - 1]).is_err());
        let mut longer = enc.to_vec();
        longer.push(0);
        assert!(PeerRecord::decode(&longer).is_err());
        let mut flags = enc.to_vec();
        flags[1 + 8 + 2 + 1 + 1 + 2 + 16] = 2;
        assert!(PeerRecord::decode(&flags).is_err());
    }

    #[test]
    fn version_1_files_are_read() {
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&7u64.to_be_bytes());
        v1.extend_from_slice(&[0, 0, 0, 1]);
        v1.extend_from_slice(&[9; 16]);
        v1.extend_from_slice(&[8; 32]);
        v1.extend_from_slice(&512u32.to_be_bytes());
        v1.extend_from_slice(&[2; 512]);
        v1.extend_from_slice(&2u32.to_be_bytes());
        v1.extend_from_slice(&[1, 1]);
        let rec = PeerRecord::decode(&v1).unwrap();
        assert_eq!(rec.fetched_at, 7);
        assert_eq!(rec.outbox[0].item, vec![2; 512]);
        assert!(!rec.outbox[0].copy_pending);
        assert_eq!(rec.encode()[0], VERSION);
    }

    #[test]
    fn a_newer_list_ends_the_sessions_of_devices_it_leaves_out() {
        use crate::identity::Identity;
        use crate::session::DeviceKeys;
        use rand_chacha::ChaCha20Rng;
        use rand_core::SeedableRng;
        let account = Identity::from_seed(&[2; 32]);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = DeviceKeys::generate(&account, 1, 1, &mut rng);
        let b = DeviceKeys::generate(&account, 2, 1, &mut rng);
        let mut store = crate::session::PrekeyStore::new();
        let bundle_b = store.rotate(&b, 1, 100, &mut rng).unwrap();
        let both = DeviceList::sign(&account, 1, 1, &[a.cert().clone(), b.cert().clone()]);
        let only_a = DeviceList::sign(&account, 2, 2, &[a.cert().clone()]).unwrap();
        let mut rec = PeerRecord {
            bundles: vec![bundle_b],
            ..PeerRecord::default()
        };
        rec.sessions
            .insert(b.cert().signing_key(), PeerSessions::new());
        assert!(rec.adopt_list(both.unwrap()));
        assert_eq!(rec.recipients().count(), 1);
        assert!(rec.adopt_list(only_a.clone()));
        assert_eq!(rec.recipients().count(), 0);
        assert!(rec.sessions.is_empty() && !rec.listed(&b.cert().signing_key()));
        // An older list never comes back.
        let old = DeviceList::sign(&account, 1, 9, &[b.cert().clone()]).unwrap();
        assert!(!rec.adopt_list(old));
        let back = PeerRecord::decode(&rec.encode()).unwrap();
        assert_eq!(back.list, Some(only_a));
    }
}
