//! Groups for people (`whitepaper/groups.md` §13): a group's state on this device, invitations
//! over sessions, membership changes and rekeys stored once in the group mailbox, one stored item
//! per message, and reading the group mailboxes beside the inbox.
//!
//! Every item this device stores in a group mailbox first goes into the group's outbox, saved
//! in the same atomic write as the state it changes (a spent chain key, a new epoch, a list), so
//! a crash or an unreachable network loses nothing and reuses no key.

use std::collections::BTreeMap;

use allium_proto::cursor::{Cursor, DEFAULT_OVERLAP_MS};
use allium_proto::storage::{CursorKey, RetrieveResponse};
use allium_proto::{Mailbox, MessageHash, NodeId};
use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use zeroize::Zeroizing;

use super::payload::{self, AppMessage, Content, GroupInvitation, Incoming};
use super::{Messenger, MessengerError};
use crate::group::{
    Change, Epoch, GroupError, GroupSecret, MemberKey, MemberSecret, MemberSecrets, MembershipList,
    MembershipLog, REKEY_INTERVAL_MS, RETENTION_MS, RekeyPart, Role, epoch_id_of, kind,
    recipients_of, rekey,
};
use crate::identity::Address;
use crate::net::Net;
use crate::net::{NetError, PathReport};
use crate::session::codec::Reader;
use crate::state::{
    ClientState, Delivery, Direction, GroupHistoryEntry, HistoryEntry, SavedCursor,
    validate_contact_name,
};

/// An item read from a group mailbox: its hash, stored time, kind and what the sealed layer
/// held.
type Item = ([u8; 32], u64, u8, Zeroizing<Vec<u8>>);

/// The most epochs a device keeps, whatever their age (a bound on the file): the lowest
/// numbers go first. Epochs normally go by time (§5.4, [`GroupRecord::retain_epochs`]).
pub const MAX_EPOCHS_KEPT: usize = 32;
/// Member keys a group's file keeps (the newest per device).
pub const MAX_KEYS_KEPT: usize = 4096;
/// Rekey parts kept while their rekey is incomplete or its list has not arrived.
pub const MAX_PARTS_KEPT: usize = 512;
/// Items waiting in a group's outbox.
pub const MAX_GROUP_OUTBOX: usize = 256;

/// Why a group command failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupFailure {
    /// No group by that name on this device.
    #[error("no group named `{0}` (see `allium groups list`)")]
    NoSuchGroup(String),
    /// The name is taken by another group of this device.
    #[error("a group named `{0}` exists already")]
    Exists(String),
    /// Only an admin may change the membership.
    #[error("only an admin of {0} can change its members")]
    NotAdmin(String),
    /// The account is not a member of the group.
    #[error("{who} is not a member of {group}")]
    NotMember {
        /// Whom.
        who: String,
        /// The group.
        group: String,
    },
    /// The account is a member already.
    #[error("{who} is a member of {group} already")]
    AlreadyMember {
        /// Whom.
        who: String,
        /// The group.
        group: String,
    },
    /// The invitation has not been answered.
    #[error("you are invited into {0}: run `allium groups accept {0}` (or `refuse`) first")]
    Invited(String),
    /// This device is a member but has no epoch key yet.
    #[error(
        "this device has no key for {0} yet: an admin gives it one when it next runs `allium \
         inbox`"
    )]
    NoEpoch(String),
    /// The last admin cannot leave a group that has other members.
    #[error("you are the only admin of {0}: remove the other members first")]
    LastAdmin(String),
    /// There is no invitation to answer.
    #[error("there is no invitation into {0} to answer")]
    NotInvited(String),
    /// The group's file does not decode.
    #[error("the saved state of group {group} is damaged ({source}); move it away to start afresh")]
    Damaged {
        /// The group's key, in hex.
        group: String,
        /// Why.
        source: GroupError,
    },
    /// A group operation failed.
    #[error(transparent)]
    Crypto(#[from] GroupError),
}

/// Where this device stands in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Invited: the person has not answered yet.
    Invited = 1,
    /// Accepted (or created): this device's member key is published.
    Member = 2,
}

/// An epoch this device holds, with when its rekey was made (`issued_at`, the admin's clock)
/// and when it reached this device (this device's clock).
#[derive(Debug)]
pub struct HeldEpoch {
    /// The epoch's state.
    pub epoch: Epoch,
    /// The rekey's `issued_at`: the timed rekey counts from it.
    pub issued_at: u64,
    /// When this device opened (or made) it: an older epoch is kept `RETENTION` after this.
    pub opened_at: u64,
}

/// A group as this device keeps it (`groups/<G>.bin`, `whitepaper/groups.md` §13.3).
pub struct GroupRecord {
    /// Where this device stands.
    pub status: Status,
    /// The local name.
    pub name: String,
    /// The group's seed and key.
    pub secret: GroupSecret,
    /// The account that invited this one (this account for a group it created).
    pub inviter: [u8; 32],
    /// Whether the account was ever in the head list: a later head without it removed it.
    pub was_member: bool,
    /// The highest epoch number seen.
    pub max_epoch: u64,
    /// The lists held.
    pub log: MembershipLog,
    /// This device's member secrets, newest last.
    pub secrets: MemberSecrets,
    /// Member keys read from the mailbox, newest per device.
    pub keys: Vec<MemberKey>,
    /// Rekey parts not opened yet.
    pub parts: Vec<RekeyPart>,
    /// The epochs this device holds.
    pub epochs: Vec<HeldEpoch>,
    /// Accounts this device invited that have not answered.
    pub invited: Vec<[u8; 32]>,
    /// Invitees who accepted, to be added by the next list.
    pub accepted: Vec<[u8; 32]>,
    /// Members who said they leave, to be removed by the next list.
    pub leaving: Vec<[u8; 32]>,
    /// The last list this device signed and the list it followed, until the head descends
    /// from it (§3.3: a list that lost is re-applied).
    pub mine: Option<([u8; 32], [u8; 32])>,
    /// The hash of a list and the newest time (node time) a copy of it was seen stored in the
    /// mailbox: an admin stores the head again before its copies expire (§3.2).
    pub head_copy: Option<([u8; 32], u64)>,
    /// Sealed items not acknowledged by the group's swarm yet, oldest first.
    pub outbox: Vec<Vec<u8>>,
}

impl std::fmt::Debug for GroupRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRecord")
            .field("name", &self.name)
            .field("group", &hex::encode(self.secret.public()))
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_keys(out: &mut Vec<u8>, keys: &[[u8; 32]]) {
    put_count(out, keys.len());
    for k in keys {
        out.extend_from_slice(k);
    }
}

/// Most entries of any one list in the file: bounds what a damaged file makes the reader
/// allocate.
const MAX_FILE_ENTRIES: usize = 65_536;

fn count(r: &mut Reader<'_>) -> Result<usize, GroupError> {
    let n = r.u32()? as usize;
    if n > MAX_FILE_ENTRIES || n > r.remaining() {
        return Err(GroupError::Session(
            crate::session::SessionError::Malformed { what: "group file" },
        ));
    }
    Ok(n)
}

fn bytes<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], GroupError> {
    let n = r.u32()? as usize;
    Ok(r.take(n)?)
}

fn keys(r: &mut Reader<'_>) -> Result<Vec<[u8; 32]>, GroupError> {
    let n = count(r)?;
    (0..n).map(|_| Ok(r.array::<32>()?)).collect()
}

impl GroupRecord {
    /// The file's encoding (wiped on drop: it holds the seed and the keys):
    ///
    /// ```text
    /// 0x01 || u8(status) || bytes(name) || seed (32) || inviter (32) || u8(was_member)
    ///      || u64be(max_epoch) || n × bytes(list) || n × bytes(member secret)
    ///      || n × bytes(member key) || n × bytes(rekey part) || n × bytes(epoch state)
    ///      || n × invited (32) || n × accepted (32) || n × leaving (32)
    ///      || u8(0) or u8(1) || base (32) || mine (32) || n × bytes(sealed item)
    /// ```
    ///
    /// with `bytes(x) = u32be(len) || x` and each `n ×` preceded by `u32be(n)`.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        out.push(1);
        out.push(self.status as u8);
        put_bytes(&mut out, self.name.as_bytes());
        out.extend_from_slice(self.secret.seed().as_ref());
        out.extend_from_slice(&self.inviter);
        out.push(u8::from(self.was_member));
        out.extend_from_slice(&self.max_epoch.to_be_bytes());
        let lists = self.log.lists();
        put_count(&mut out, lists.len());
        for l in lists {
            put_bytes(&mut out, l.as_bytes());
        }
        put_count(&mut out, self.secrets.as_slice().len());
        for s in self.secrets.as_slice() {
            put_bytes(&mut out, &s.encode());
        }
        put_count(&mut out, self.keys.len());
        for k in &self.keys {
            put_bytes(&mut out, k.as_bytes());
        }
        put_count(&mut out, self.parts.len());
        for p in &self.parts {
            put_bytes(&mut out, p.as_bytes());
        }
        put_count(&mut out, self.epochs.len());
        for e in &self.epochs {
            out.extend_from_slice(&e.issued_at.to_be_bytes());
            out.extend_from_slice(&e.opened_at.to_be_bytes());
            put_bytes(&mut out, &e.epoch.encode());
        }
        put_keys(&mut out, &self.invited);
        put_keys(&mut out, &self.accepted);
        put_keys(&mut out, &self.leaving);
        match &self.mine {
            None => out.push(0),
            Some((base, mine)) => {
                out.push(1);
                out.extend_from_slice(base);
                out.extend_from_slice(mine);
            }
        }
        match &self.head_copy {
            None => out.push(0),
            Some((hash, at)) => {
                out.push(1);
                out.extend_from_slice(hash);
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
        put_count(&mut out, self.outbox.len());
        for item in &self.outbox {
            put_bytes(&mut out, item);
        }
        out
    }

    /// Decodes [`Self::encode`]; every list, key, part and epoch is checked as when it was
    /// read from the mailbox.
    pub fn decode(b: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(b, "group file");
        r.version(1)?;
        let status = match r.u8()? {
            1 => Status::Invited,
            2 => Status::Member,
            _ => return Err(GroupError::BadMembers),
        };
        let name = std::str::from_utf8(bytes(&mut r)?)
            .map_err(|_| GroupError::BadMembers)?
            .to_owned();
        let secret = GroupSecret::from_seed(&Zeroizing::new(r.array::<32>()?))?;
        let inviter = r.array::<32>()?;
        let was_member = r.u8()? == 1;
        let max_epoch = r.u64()?;
        let n = count(&mut r)?;
        let mut lists = Vec::with_capacity(n);
        for _ in 0..n {
            lists.push(MembershipList::decode(bytes(&mut r)?)?);
        }
        let log = MembershipLog::restore(lists)?;
        if log.head().group() != secret.public() {
            return Err(GroupError::WrongGroup);
        }
        let n = count(&mut r)?;
        let secrets = (0..n)
            .map(|_| MemberSecret::decode(bytes(&mut r)?))
            .collect::<Result<Vec<_>, _>>()?;
        let n = count(&mut r)?;
        let keys_read = (0..n)
            .map(|_| MemberKey::decode(bytes(&mut r)?))
            .collect::<Result<Vec<_>, _>>()?;
        let n = count(&mut r)?;
        let parts = (0..n)
            .map(|_| RekeyPart::decode(bytes(&mut r)?))
            .collect::<Result<Vec<_>, _>>()?;
        let n = count(&mut r)?;
        let epochs = (0..n)
            .map(|_| {
                let issued_at = r.u64()?;
                let opened_at = r.u64()?;
                Ok(HeldEpoch {
                    epoch: Epoch::decode(bytes(&mut r)?)?,
                    issued_at,
                    opened_at,
                })
            })
            .collect::<Result<Vec<_>, GroupError>>()?;
        let invited = keys(&mut r)?;
        let accepted = keys(&mut r)?;
        let leaving = keys(&mut r)?;
        let mine = match r.u8()? {
            0 => None,
            1 => Some((r.array::<32>()?, r.array::<32>()?)),
            _ => return Err(GroupError::BadMembers),
        };
        let head_copy = match r.u8()? {
            0 => None,
            1 => Some((r.array::<32>()?, r.u64()?)),
            _ => return Err(GroupError::BadMembers),
        };
        let n = count(&mut r)?;
        let outbox = (0..n)
            .map(|_| Ok(bytes(&mut r)?.to_vec()))
            .collect::<Result<Vec<_>, GroupError>>()?;
        r.finish()?;
        Ok(GroupRecord {
            status,
            name,
            secret,
            inviter,
            was_member,
            max_epoch,
            log,
            secrets: MemberSecrets::from_vec(secrets),
            keys: keys_read,
            parts,
            epochs,
            invited,
            accepted,
            leaving,
            mine,
            head_copy,
            outbox,
        })
    }

    /// The group's key (`G`).
    pub fn group(&self) -> [u8; 32] {
        self.secret.public()
    }

    /// The head membership list.
    pub fn head(&self) -> &MembershipList {
        self.log.head()
    }

    /// The epoch this device sends in (§5.4): made for the head, the highest number (then the
    /// lowest id); else the newest held.
    fn send_epoch(&mut self) -> Option<&mut Epoch> {
        let head = self.head().hash();
        let best = |e: &&mut Epoch| {
            (
                e.list_hash() == head,
                e.epoch(),
                std::cmp::Reverse(e.epoch_id()),
            )
        };
        self.epochs
            .iter_mut()
            .map(|h| &mut h.epoch)
            .max_by_key(|e| best(e))
    }

    /// The epoch made for the head list that a send would use, if any.
    pub fn head_epoch(&self) -> Option<&HeldEpoch> {
        let head = self.head().hash();
        self.epochs
            .iter()
            .filter(|e| e.epoch.list_hash() == head)
            .max_by_key(|e| (e.epoch.epoch(), std::cmp::Reverse(e.epoch.epoch_id())))
    }

    /// Whether an admin rekeys on the timer at `now` (§5): the head's epoch was made
    /// `REKEY_INTERVAL` ago or more. (A head without an epoch is rekeyed anyway.)
    pub fn rekey_due(&self, now: u64) -> bool {
        self.head_epoch()
            .is_some_and(|e| e.issued_at.saturating_add(REKEY_INTERVAL_MS) <= now)
    }

    /// Whether an admin stores the head list again at `now` (§3.2): the newest copy of it seen
    /// in the mailbox (or, with none seen, its signing time) is half of `ttl_ms` old, so a copy
    /// is always there for members who come later.
    pub fn list_restore_due(&self, now: u64, ttl_ms: u64) -> bool {
        let head = self.head();
        let stored = match self.head_copy {
            Some((hash, at)) if hash == head.hash() => at,
            _ => head.issued_at(),
        };
        stored.saturating_add(ttl_ms / 2) <= now
    }

    /// §5.4: erases each epoch `RETENTION` after a newer one reached this device (the messages
    /// written in it have left the mailbox by then), and the lowest numbers beyond
    /// [`MAX_EPOCHS_KEPT`]. Dropping an epoch wipes its keys.
    pub fn retain_epochs(&mut self, now: u64) {
        let replaced: Vec<Option<u64>> = self
            .epochs
            .iter()
            .map(|e| {
                self.epochs
                    .iter()
                    .filter(|n| n.epoch.epoch() > e.epoch.epoch())
                    .map(|n| n.opened_at)
                    .min()
            })
            .collect();
        let mut i = 0;
        self.epochs.retain(|_| {
            let keep = replaced[i].is_none_or(|at| at.saturating_add(RETENTION_MS) > now);
            i += 1;
            keep
        });
        while self.epochs.len() > MAX_EPOCHS_KEPT {
            if let Some(i) = (0..self.epochs.len()).min_by_key(|&i| self.epochs[i].epoch.epoch()) {
                self.epochs.remove(i);
            }
        }
    }

    fn add_key(&mut self, key: MemberKey) {
        let device = key.cert().signing_key();
        match self
            .keys
            .iter_mut()
            .find(|k| k.cert().signing_key() == device)
        {
            Some(k) if k.created_at() < key.created_at() => *k = key,
            Some(_) => {}
            None => {
                if self.keys.len() == MAX_KEYS_KEPT {
                    // The oldest key goes: it is the least likely to be wrapped to.
                    if let Some(i) = (0..self.keys.len()).min_by_key(|&i| self.keys[i].created_at())
                    {
                        self.keys.remove(i);
                    }
                }
                self.keys.push(key);
            }
        }
    }

    fn seal(&self, item: &[u8]) -> Result<Vec<u8>, GroupError> {
        self.secret.seal_item(item, &mut OsRng)
    }

    /// Makes this device's member key (its first, or the replacement of §4.2), keeps its
    /// secret, and queues the key for the mailbox.
    fn make_member_key(
        &mut self,
        device: &crate::session::DeviceKeys,
        now: u64,
    ) -> Result<(), GroupError> {
        let group = self.group();
        let key = self.secrets.replace(&group, device, now, &mut OsRng)?;
        self.outbox.push(self.seal(key.as_bytes())?);
        self.add_key(key);
        Ok(())
    }

    /// Takes a list this device signed: into the log, remembered as its own, queued.
    fn push_list(&mut self, list: MembershipList) -> Result<(), GroupError> {
        self.outbox.push(self.seal(list.as_bytes())?);
        self.mine = Some((list.parent(), list.hash()));
        self.log.insert(list)?;
        Ok(())
    }

    /// Opens every rekey whose parts are all here and whose list is held, lowest epoch number
    /// first; replaces this device's member key when one came through the newest (§4.2).
    fn open_rekeys(&mut self, device: &crate::session::DeviceKeys, now: u64) {
        let mut by_id: BTreeMap<(u64, [u8; 16]), Vec<RekeyPart>> = BTreeMap::new();
        for p in self.parts.drain(..) {
            by_id.entry((p.epoch(), p.epoch_id())).or_default().push(p);
        }
        let mut replace = false;
        for ((_, id), mut parts) in by_id {
            if self.epochs.iter().any(|e| e.epoch.epoch_id() == id) {
                continue;
            }
            parts.sort_by_key(RekeyPart::first);
            parts.dedup_by(|a, b| a.as_bytes() == b.as_bytes());
            let have: usize = parts.iter().map(RekeyPart::len).sum();
            let Some(list) = self.log.get(&parts[0].list_hash()).cloned() else {
                self.parts.extend(parts);
                continue;
            };
            if have < parts[0].total() {
                self.parts.extend(parts);
                continue;
            }
            // A rekey not for this device, or refused, is dropped; only an opened one is kept.
            if let Ok((epoch, newest)) = self.secrets.open(&parts, &list, device) {
                self.epochs.push(HeldEpoch {
                    epoch,
                    issued_at: parts[0].issued_at(),
                    opened_at: now,
                });
                replace |= newest;
            }
        }
        self.secrets.expire(now, RETENTION_MS);
        if replace {
            // Queued with the state it changes; a failure leaves the current key in use.
            let _ = self.make_member_key(device, now);
        }
        if self.parts.len() > MAX_PARTS_KEPT {
            let extra = self.parts.len() - MAX_PARTS_KEPT;
            self.parts.drain(..extra);
        }
        self.retain_epochs(now);
    }
}

/// A group message read and saved past.
#[derive(Debug, Clone)]
pub struct GroupMessage {
    /// The group's key.
    pub group: [u8; 32],
    /// The group's local name.
    pub name: String,
    /// The writer's account.
    pub from: Address,
    /// The writer's device (its Ed25519 key).
    pub device: [u8; 32],
    /// What it says.
    pub message: AppMessage,
    /// When the group's swarm first accepted it (node time).
    pub stored_ms: u64,
    /// The path of the fetch that brought it.
    pub path: PathReport,
}

/// Something about a group worth telling the person.
#[derive(Debug, Clone)]
pub enum GroupEvent {
    /// An invitation arrived.
    Invited {
        /// The local name given to the group.
        name: String,
        /// Who invites.
        from: Address,
    },
    /// Another device of this account accepted the invitation; this one joined too.
    Joined {
        /// The group.
        name: String,
    },
    /// An invitee answered.
    Answered {
        /// The group.
        name: String,
        /// Who.
        from: Address,
        /// Accepted or refused.
        accepted: bool,
    },
    /// A member left.
    Left {
        /// The group.
        name: String,
        /// Who.
        who: Address,
    },
    /// An admin removed this account; the group's state is gone from this device.
    Removed {
        /// The group.
        name: String,
    },
}

/// A message stored in a group mailbox.
#[derive(Debug, Clone)]
pub struct GroupSent {
    /// The message id.
    pub msg_id: [u8; 16],
    /// The epoch it was written in.
    pub epoch: u64,
    /// Bytes stored.
    pub bytes: usize,
    /// Members of the group's swarm that acknowledged it.
    pub holders: usize,
    /// Members of the group's swarm.
    pub members: usize,
    /// The path of the store.
    pub path: PathReport,
}

/// One group as `groups list` shows it.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    /// The local name.
    pub name: String,
    /// The group's key.
    pub group: [u8; 32],
    /// Invited or member.
    pub status: Status,
    /// This account's role in the head list, if it is in it.
    pub role: Option<Role>,
    /// Accounts in the head list.
    pub members: usize,
    /// The head list's version.
    pub version: u64,
    /// The epoch this device would send in.
    pub epoch: Option<u64>,
}

/// A name for a group the inviter called `wanted`: it if it is a valid name not used here,
/// else one made from the group key.
fn local_name(wanted: &str, group: &[u8; 32], taken: &[String]) -> String {
    if validate_contact_name(wanted).is_ok() && !taken.iter().any(|t| t == wanted) {
        return wanted.to_owned();
    }
    format!("group-{}", hex::encode(&group[..6]))
}

impl Messenger {
    fn group_damaged(group: &[u8; 32], source: GroupError) -> MessengerError {
        MessengerError::Group(GroupFailure::Damaged {
            group: hex::encode(group),
            source,
        })
    }

    /// The group `group`, if this device holds it.
    pub fn load_group(&self, group: &[u8; 32]) -> Result<Option<GroupRecord>, MessengerError> {
        match self.dir.read_group(group)? {
            None => Ok(None),
            Some(b) => GroupRecord::decode(&b)
                .map(Some)
                .map_err(|e| Self::group_damaged(group, e)),
        }
    }

    fn save_group(&self, rec: &GroupRecord) -> Result<(), MessengerError> {
        Ok(self.dir.write_group(&rec.group(), &rec.encode())?)
    }

    /// Every group this device holds.
    pub fn groups(&self) -> Result<Vec<GroupRecord>, MessengerError> {
        let mut out = Vec::new();
        for g in self.dir.groups()? {
            if let Some(rec) = self.load_group(&g)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Whether this device holds any group.
    pub fn has_groups(&self) -> bool {
        self.dir.groups().is_ok_and(|g| !g.is_empty())
    }

    /// The group named `name` on this device.
    pub fn group_named(&self, name: &str) -> Result<GroupRecord, MessengerError> {
        self.groups()?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| GroupFailure::NoSuchGroup(name.to_owned()).into())
    }

    /// What `groups list` shows.
    pub fn group_summaries(&self) -> Result<Vec<GroupSummary>, MessengerError> {
        let me = self.account.address.public_key().to_bytes();
        Ok(self
            .groups()?
            .into_iter()
            .map(|mut g| GroupSummary {
                name: g.name.clone(),
                group: g.group(),
                status: g.status,
                role: g.head().role(&me),
                members: g.head().members().len(),
                version: g.head().version(),
                epoch: g.send_epoch().map(|e| e.epoch()),
            })
            .collect())
    }

    /// Events of groups since the last call (invitations and answers read from the inbox,
    /// departures and removals read from group mailboxes).
    pub fn take_group_events(&mut self) -> Vec<GroupEvent> {
        std::mem::take(&mut self.group_events)
    }

    fn my_account(&self) -> [u8; 32] {
        self.account.address.public_key().to_bytes()
    }

    /// Creates a group named `name` with this account as its admin: its key, the first list,
    /// this device's member key and the first epoch go into its mailbox, and the account's
    /// other devices are invited.
    pub async fn create_group(
        &mut self,
        net: &Net,
        name: &str,
    ) -> Result<[u8; 32], MessengerError> {
        validate_contact_name(name)?;
        if self.groups()?.iter().any(|g| g.name == name) {
            return Err(GroupFailure::Exists(name.to_owned()).into());
        }
        let now = net.now_ms();
        let secret = GroupSecret::generate(&mut OsRng).map_err(GroupFailure::from)?;
        let me = self.my_account();
        let list = MembershipList::genesis(
            &secret.public(),
            &BTreeMap::from([(me, Role::Admin)]),
            &self.account.device,
            now,
        )
        .map_err(GroupFailure::from)?;
        let mut rec = GroupRecord {
            status: Status::Member,
            name: name.to_owned(),
            secret,
            inviter: me,
            was_member: true,
            max_epoch: 0,
            log: MembershipLog::new(list.clone()),
            secrets: MemberSecrets::default(),
            keys: Vec::new(),
            parts: Vec::new(),
            epochs: Vec::new(),
            invited: Vec::new(),
            accepted: Vec::new(),
            leaving: Vec::new(),
            mine: None,
            head_copy: None,
            outbox: Vec::new(),
        };
        rec.make_member_key(&self.account.device, now)
            .map_err(GroupFailure::from)?;
        let sealed = rec.seal(list.as_bytes()).map_err(GroupFailure::from)?;
        rec.outbox.push(sealed);
        let keys = rec.keys.clone();
        self.rekey_group(&mut rec, keys, now)?;
        self.save_group(&rec)?;
        self.flush_group(net, &mut rec).await?;
        // The account's other devices join at once; with none, there is nobody to tell.
        let own = self.account.address;
        match self.send_invitation(net, &rec, &own).await {
            Ok(()) | Err(MessengerError::NoBundle(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(rec.group())
    }

    async fn send_invitation(
        &mut self,
        net: &Net,
        rec: &GroupRecord,
        to: &Address,
    ) -> Result<(), MessengerError> {
        let invitation = GroupInvitation {
            seed: rec.secret.seed(),
            name: rec.name.clone(),
            list: rec.head().as_bytes().to_vec(),
        };
        let msg_id = Self::new_msg_id();
        let plaintext = payload::group_invitation_message(msg_id, net.now_ms(), &invitation)
            .map_err(|_| MessengerError::Group(GroupFailure::Crypto(GroupError::TooLarge)))?;
        self.send_plaintext(net, to, plaintext.to_vec(), msg_id, false)
            .await
            .map(|_| ())
    }

    fn admin_group(&self, name: &str) -> Result<GroupRecord, MessengerError> {
        let rec = self.group_named(name)?;
        if rec.status == Status::Invited {
            return Err(GroupFailure::Invited(name.to_owned()).into());
        }
        if rec.head().role(&self.my_account()) != Some(Role::Admin) {
            return Err(GroupFailure::NotAdmin(name.to_owned()).into());
        }
        Ok(rec)
    }

    /// Invites `who` into group `name` over their session: they are added (and get the epoch
    /// key) once they accept.
    pub async fn invite_to_group(
        &mut self,
        net: &Net,
        name: &str,
        who: &Address,
    ) -> Result<(), MessengerError> {
        let mut rec = self.admin_group(name)?;
        let account = who.public_key().to_bytes();
        if rec.head().role(&account).is_some() {
            return Err(GroupFailure::AlreadyMember {
                who: who.to_string(),
                group: name.to_owned(),
            }
            .into());
        }
        if !rec.invited.contains(&account) {
            rec.invited.push(account);
        }
        self.save_group(&rec)?;
        self.send_invitation(net, &rec, who).await?;
        // The account's other devices learn whom it invited, so whichever reads the answer
        // first adds the invitee (§13.2).
        let invitation = GroupInvitation {
            seed: rec.secret.seed(),
            name: rec.name.clone(),
            list: rec.head().as_bytes().to_vec(),
        };
        let msg_id = Self::new_msg_id();
        let copy = payload::group_invitation_copy(msg_id, net.now_ms(), &account, &invitation)
            .map_err(|_| MessengerError::Group(GroupFailure::Crypto(GroupError::TooLarge)))?;
        let own = self.account.address;
        match self
            .send_plaintext(net, &own, copy.to_vec(), msg_id, false)
            .await
        {
            // No other device: nobody to tell.
            Ok(_) | Err(MessengerError::NoBundle(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes member `who` of group `name` an admin: the next list (and, as after every list, a
    /// rekey).
    pub async fn make_admin(
        &mut self,
        net: &Net,
        name: &str,
        who: &Address,
    ) -> Result<(), MessengerError> {
        let mut rec = self.admin_group(name)?;
        let account = who.public_key().to_bytes();
        if rec.head().role(&account).is_none() {
            return Err(GroupFailure::NotMember {
                who: who.to_string(),
                group: name.to_owned(),
            }
            .into());
        }
        let list = rec
            .head()
            .next(
                &[Change::SetRole(account, Role::Admin)],
                &self.account.device,
                net.now_ms(),
            )
            .map_err(GroupFailure::from)?;
        rec.push_list(list).map_err(GroupFailure::from)?;
        self.save_group(&rec)?;
        self.maintain_group(net, &mut rec).await
    }

    /// Accepts or refuses the invitation into group `name`, and tells the inviter.
    pub async fn answer_invitation(
        &mut self,
        net: &Net,
        name: &str,
        accept: bool,
    ) -> Result<(), MessengerError> {
        let mut rec = self.group_named(name)?;
        if rec.status != Status::Invited {
            return Err(GroupFailure::NotInvited(name.to_owned()).into());
        }
        let group = rec.group();
        if accept {
            rec.make_member_key(&self.account.device, net.now_ms())
                .map_err(GroupFailure::from)?;
            rec.status = Status::Member;
            self.save_group(&rec)?;
            self.flush_group(net, &mut rec).await?;
        } else {
            self.dir.remove_group(&group)?;
        }
        let inviter = Address::from_key_bytes(&rec.inviter)
            .map_err(|_| GroupFailure::Crypto(GroupError::BadSignature))?;
        let msg_id = Self::new_msg_id();
        let answer = payload::group_answer_message(msg_id, net.now_ms(), &group, accept);
        self.send_plaintext(net, &inviter, answer, msg_id, false)
            .await
            .map(|_| ())
    }

    /// Removes `who` from group `name`: the next list, then a rekey that leaves its devices
    /// out.
    pub async fn remove_from_group(
        &mut self,
        net: &Net,
        name: &str,
        who: &Address,
    ) -> Result<(), MessengerError> {
        let mut rec = self.admin_group(name)?;
        let account = who.public_key().to_bytes();
        if rec.head().role(&account).is_none() {
            return Err(GroupFailure::NotMember {
                who: who.to_string(),
                group: name.to_owned(),
            }
            .into());
        }
        if account == self.my_account() {
            return self.leave_group(net, name).await;
        }
        let list = rec
            .head()
            .next(
                &[Change::Remove(account)],
                &self.account.device,
                net.now_ms(),
            )
            .map_err(GroupFailure::from)?;
        rec.push_list(list).map_err(GroupFailure::from)?;
        rec.invited.retain(|a| *a != account);
        rec.accepted.retain(|a| *a != account);
        self.save_group(&rec)?;
        self.maintain_group(net, &mut rec).await
    }

    /// Leaves group `name`: a last message saying so (an admin also signs the list without
    /// itself), then the group's state is deleted from this device. An invitation not answered
    /// is refused.
    pub async fn leave_group(&mut self, net: &Net, name: &str) -> Result<(), MessengerError> {
        let mut rec = self.group_named(name)?;
        if rec.status == Status::Invited {
            return self.answer_invitation(net, name, false).await;
        }
        let me = self.my_account();
        let head = rec.head().clone();
        if head.role(&me) == Some(Role::Admin) {
            let admins = head
                .members()
                .values()
                .filter(|r| **r == Role::Admin)
                .count();
            if admins == 1 && head.members().len() > 1 {
                return Err(GroupFailure::LastAdmin(name.to_owned()).into());
            }
            if head.members().len() > 1 {
                let list = head
                    .next(&[Change::Remove(me)], &self.account.device, net.now_ms())
                    .map_err(GroupFailure::from)?;
                rec.push_list(list).map_err(GroupFailure::from)?;
            }
        }
        let now = net.now_ms();
        if let Some(epoch) = rec.send_epoch() {
            let leave = payload::group_leave_message(Self::new_msg_id(), now);
            let item = epoch
                .encrypt(&self.account.device, &leave, &mut OsRng)
                .map_err(GroupFailure::from)?;
            let sealed = rec.seal(&item).map_err(GroupFailure::from)?;
            rec.outbox.push(sealed);
        }
        self.save_group(&rec)?;
        self.flush_group(net, &mut rec).await?;
        Ok(self.dir.remove_group(&rec.group())?)
    }

    /// Writes `text` in group `name`: one item in the group mailbox, whatever the group's size.
    pub async fn send_to_group(
        &mut self,
        net: &Net,
        state: &mut ClientState,
        name: &str,
        text: &str,
    ) -> Result<GroupSent, MessengerError> {
        self.send_to_group_as(net, state, name, text, Self::new_msg_id())
            .await
    }

    /// [`Self::send_to_group`] under a message id the caller chose, so it can follow the
    /// message before the send returns.
    pub async fn send_to_group_as(
        &mut self,
        net: &Net,
        state: &mut ClientState,
        name: &str,
        text: &str,
        msg_id: [u8; 16],
    ) -> Result<GroupSent, MessengerError> {
        let mut rec = self.group_named(name)?;
        if rec.status == Status::Invited {
            return Err(GroupFailure::Invited(name.to_owned()).into());
        }
        // Read the lists and rekeys first, so the newest epoch is used: a member removed a
        // moment ago must not get this message.
        if !self
            .sync_group(net, state, &mut rec, false, &mut |_| {})
            .await?
        {
            return Err(GroupFailure::NotMember {
                who: "this account".into(),
                group: name.to_owned(),
            }
            .into());
        }
        self.maintain_group(net, &mut rec).await?;
        let now = net.now_ms();
        let message = AppMessage {
            msg_id,
            sent_ms: now,
            content: Content::Text(text.to_owned()),
        };
        let device = self.account.device.clone();
        let Some(epoch) = rec.send_epoch() else {
            return Err(GroupFailure::NoEpoch(name.to_owned()).into());
        };
        let epoch_no = epoch.epoch();
        let item = epoch
            .encrypt(&device, &message.encode(), &mut OsRng)
            .map_err(GroupFailure::from)?;
        let sealed = rec.seal(&item).map_err(GroupFailure::from)?;
        let bytes = sealed.len();
        if rec.outbox.len() >= MAX_GROUP_OUTBOX {
            return Err(MessengerError::OutboxFull(rec.outbox.len()));
        }
        rec.outbox.push(sealed);
        // The spent chain key and the item it sealed, in one write, before it goes out.
        self.save_group(&rec)?;
        let me = self.account.address;
        self.record_group(
            &rec,
            &me,
            &message,
            Direction::Sent,
            Some(Delivery::Sending),
        )?;
        let Some((holders, members, path)) = self.flush_group(net, &mut rec).await? else {
            return Err(MessengerError::Net(NetError::NoSwarm));
        };
        let stored = Delivery::Stored {
            holders: u32::try_from(holders).unwrap_or(u32::MAX),
            members: u32::try_from(members).unwrap_or(u32::MAX),
        };
        self.record_group(&rec, &me, &message, Direction::Sent, Some(stored))?;
        Ok(GroupSent {
            msg_id,
            epoch: epoch_no,
            bytes,
            holders,
            members,
            path,
        })
    }

    /// Stores the group's outbox, oldest first, removing each item once acknowledged. Returns
    /// the acknowledgement of the last item.
    async fn flush_group(
        &mut self,
        net: &Net,
        rec: &mut GroupRecord,
    ) -> Result<Option<(usize, usize, PathReport)>, MessengerError> {
        let mailbox = Mailbox::from_bytes(rec.group());
        let mut last = None;
        while let Some(item) = rec.outbox.first().cloned() {
            let stored = net.store(&mailbox, item).await?;
            rec.outbox.remove(0);
            self.save_group(rec)?;
            let members = net
                .roster()
                .map_or(0, |h| h.roster().members_for(&mailbox).len());
            last = Some((stored.holders.len(), members, stored.path));
        }
        Ok(last)
    }

    /// Makes a new epoch for the head list from `keys`, keeps this device's, and queues the
    /// parts.
    fn rekey_group(
        &self,
        rec: &mut GroupRecord,
        keys: Vec<MemberKey>,
        now: u64,
    ) -> Result<(), MessengerError> {
        let head = rec.head().clone();
        let number = rec.max_epoch.saturating_add(1);
        let (parts, epoch) = rekey(&head, number, &keys, &self.account.device, now, &mut OsRng)
            .map_err(GroupFailure::from)?;
        for p in &parts {
            let sealed = rec.seal(p.as_bytes()).map_err(GroupFailure::from)?;
            rec.outbox.push(sealed);
        }
        rec.max_epoch = number;
        rec.epochs.push(HeldEpoch {
            epoch,
            issued_at: now,
            opened_at: now,
        });
        // The rekey wrapped this device's newest key of `keys`: as after opening one, older
        // secrets go and the key is replaced (§4.2).
        let own = self.account.device.cert().signing_key();
        let used = keys
            .iter()
            .filter(|k| k.cert().signing_key() == own)
            .map(MemberKey::created_at)
            .max();
        if let Some(used) = used
            && rec.secrets.retire_before(used)
        {
            rec.make_member_key(&self.account.device, now)
                .map_err(GroupFailure::from)?;
        }
        Ok(())
    }

    /// The member keys an admin may wrap to: of accounts in the head, and of devices their
    /// account's signed device list names (any certified device of an account without a
    /// list, `whitepaper/devices.md` §3).
    async fn eligible_keys(
        &self,
        net: &Net,
        rec: &GroupRecord,
    ) -> Result<Vec<MemberKey>, MessengerError> {
        let mut out = Vec::new();
        for account in rec.head().members().keys() {
            let Ok(addr) = Address::from_key_bytes(account) else {
                continue;
            };
            let mut peer = self.load_peer(&addr)?;
            self.refresh_if_stale(net, &addr, &mut peer).await?;
            self.save_peer(&addr, &peer)?;
            out.extend(
                rec.keys
                    .iter()
                    .filter(|k| k.cert().account_key() == *account)
                    .filter(|k| {
                        peer.list
                            .as_ref()
                            .is_none_or(|l| l.contains(&k.cert().signing_key()))
                    })
                    .cloned(),
            );
        }
        Ok(out)
    }

    /// An admin's duties after reading the mailbox (§3.3, §5): re-apply its list if another
    /// admin's won, add invitees who accepted and remove members who left, rekey when the head
    /// has no epoch or a member device joined or left; then store what is queued.
    async fn maintain_group(
        &mut self,
        net: &Net,
        rec: &mut GroupRecord,
    ) -> Result<(), MessengerError> {
        let me = self.my_account();
        let now = net.now_ms();
        if rec.status == Status::Member
            && rec
                .secrets
                .newest()
                .is_some_and(|n| n.saturating_add(REKEY_INTERVAL_MS) <= now)
        {
            // No rekey reached this device for a while: its key is replaced on the timer, so
            // the next rekey, whenever it comes, is wrapped to a fresh one (§4.2).
            rec.make_member_key(&self.account.device, now)
                .map_err(GroupFailure::from)?;
            self.save_group(rec)?;
        }
        if rec.status == Status::Member && rec.head().role(&me) == Some(Role::Admin) {
            self.rebase_group(rec, now)?;
            let head = rec.head().clone();
            let mut changes = Vec::new();
            for a in &rec.leaving {
                if head.role(a).is_some() && *a != me {
                    changes.push(Change::Remove(*a));
                }
            }
            for a in &rec.accepted {
                if head.role(a).is_none() {
                    changes.push(Change::Add(*a, Role::Member));
                }
            }
            rec.leaving.clear();
            rec.accepted.clear();
            if !changes.is_empty() {
                let list = head
                    .next(&changes, &self.account.device, now)
                    .map_err(GroupFailure::from)?;
                rec.push_list(list).map_err(GroupFailure::from)?;
            }
            if rec.head().role(&me) == Some(Role::Admin) {
                let held: Option<Vec<_>> = rec.head_epoch().map(|e| {
                    e.epoch
                        .senders()
                        .map(|(account, device)| crate::group::Entry { account, device })
                        .collect()
                });
                let all = recipients_of(rec.head(), &rec.keys);
                let timer = rec.rekey_due(now);
                if held.as_ref() != Some(&all) || timer {
                    let keys = self.eligible_keys(net, rec).await?;
                    let wanted = recipients_of(rec.head(), &keys);
                    let mine = crate::group::Entry {
                        account: me,
                        device: self.account.device.cert().signing_key(),
                    };
                    if (held.as_ref() != Some(&wanted) || timer) && wanted.contains(&mine) {
                        self.rekey_group(rec, keys, now)?;
                    }
                }
                let ttl = net.network().params.max_ttl_secs.saturating_mul(1000);
                if rec.list_restore_due(now, ttl) {
                    // A fresh nonce makes a new item: the swarm does not take it for the old.
                    let head = rec.head().clone();
                    let sealed = rec.seal(head.as_bytes()).map_err(GroupFailure::from)?;
                    rec.outbox.push(sealed);
                    rec.head_copy = Some((head.hash(), now));
                }
            }
            self.save_group(rec)?;
        }
        self.flush_group(net, rec).await?;
        Ok(())
    }

    /// §3.3: when the list this device signed lost to another admin's, re-applies its changes
    /// to the head as the next version (or drops them when they change nothing there or this
    /// account is no longer an admin).
    fn rebase_group(&self, rec: &mut GroupRecord, now: u64) -> Result<(), MessengerError> {
        let Some((base, mine)) = rec.mine else {
            return Ok(());
        };
        let head = rec.head().clone();
        let (Some(base_list), Some(my_list)) =
            (rec.log.get(&base).cloned(), rec.log.get(&mine).cloned())
        else {
            rec.mine = None;
            return Ok(());
        };
        // Does the head descend from this device's list? While it is the head itself, a list
        // of the same version may still come and beat it, so it is remembered.
        let mut at = Some(head.clone());
        while let Some(l) = at {
            if l.hash() == mine {
                if l.hash() != head.hash() {
                    rec.mine = None;
                }
                return Ok(());
            }
            if l.version() <= my_list.version() {
                break;
            }
            at = rec.log.get(&l.parent()).cloned();
        }
        rec.mine = None;
        match my_list.rebase(&base_list, &head, &self.account.device, now) {
            Ok(Some(list)) => rec.push_list(list).map_err(GroupFailure::from)?,
            Ok(None) | Err(GroupError::NotAdmin) => {}
            Err(e) => return Err(GroupFailure::from(e).into()),
        }
        Ok(())
    }

    /// Reads every group mailbox once (lists, member keys, rekeys, then messages), shows each
    /// message with `on_message` after its epoch is saved, and does an admin's duties. The
    /// cursors in `state` move past what was read. Returns the number of messages shown.
    pub async fn receive_groups(
        &mut self,
        net: &Net,
        state: &mut ClientState,
        mut on_message: impl FnMut(&GroupMessage) + Send,
    ) -> Result<usize, MessengerError> {
        let mut shown = 0;
        for g in self.dir.groups()? {
            let Some(mut rec) = self.load_group(&g)? else {
                continue;
            };
            let mut count = |m: &GroupMessage| {
                shown += 1;
                on_message(m);
            };
            if self
                .sync_group(net, state, &mut rec, true, &mut count)
                .await?
            {
                self.maintain_group(net, &mut rec).await?;
            }
        }
        Ok(shown)
    }

    /// Reads group `rec`'s mailbox from the saved cursor on. With `messages`, also reads the
    /// messages and moves the cursor; without, only lists, keys and rekeys (reading those again
    /// later changes nothing). Returns false when this account was removed (its state is then
    /// deleted).
    async fn sync_group(
        &mut self,
        net: &Net,
        state: &mut ClientState,
        rec: &mut GroupRecord,
        messages: bool,
        on_message: &mut (dyn FnMut(&GroupMessage) + Send),
    ) -> Result<bool, MessengerError> {
        let group = rec.group();
        let mailbox = Mailbox::from_bytes(group);
        let key = SigningKey::from_bytes(&rec.secret.seed());
        let safe = state.cursor(&group).map(|c| CursorKey {
            timestamp: c.timestamp,
            hash: MessageHash(c.hash),
        });
        let mut cursor = Cursor::resume(DEFAULT_OVERLAP_MS, safe);
        let mut round_at: Option<NodeId> = None;
        let mut restarts = 0;
        loop {
            let page = match net
                .fetch_for(
                    &mailbox,
                    &key,
                    cursor.after(),
                    std::time::Duration::ZERO,
                    round_at,
                )
                .await
            {
                Ok(page) => page,
                Err(NetError::MemberLost) if restarts < super::MAX_ROUND_RESTARTS => {
                    restarts += 1;
                    cursor.restart_round();
                    round_at = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            round_at = page.more.then(|| page.path.destination()).flatten();
            let fresh = cursor.accept(
                page.node_now,
                &RetrieveResponse {
                    messages: page.messages,
                    more: page.more,
                },
            );
            let mut items = Vec::new();
            for m in fresh {
                if messages && state.seen_hash(&m.hash.0) {
                    continue;
                }
                if let Ok((k, inner)) = rec.secret.open_item(&m.data) {
                    items.push((m.hash.0, m.timestamp, k, inner));
                } else if messages {
                    // Anyone may deposit: what does not open under the group key is not ours.
                    state.mark_seen_hash(&m.hash.0);
                }
            }
            self.take_items(rec, &items, net.now_ms());
            if !self.still_member(rec)? {
                return Ok(false);
            }
            if messages {
                for (hash, stored_ms, k, inner) in &items {
                    if *k == kind::MESSAGE {
                        self.read_message(rec, inner, *stored_ms, &page.path, on_message)?;
                    }
                    state.mark_seen_hash(hash);
                }
                if let Some(safe) = cursor.safe() {
                    state.set_cursor(
                        &group,
                        SavedCursor {
                            timestamp: safe.timestamp,
                            hash: safe.hash.0,
                        },
                    );
                }
            }
            self.save_group(rec)?;
            if !page.more {
                return Ok(true);
            }
        }
    }

    /// Lists, member keys and rekey parts of one page, then the rekeys they complete.
    fn take_items(&mut self, rec: &mut GroupRecord, items: &[Item], now: u64) {
        let group = rec.group();
        let me = self.my_account();
        for (_, stored_ms, k, inner) in items {
            match *k {
                kind::LIST => {
                    if let Ok(list) = MembershipList::decode(inner) {
                        let hash = list.hash();
                        // A list that does not follow one held, or is stale, is dropped.
                        let _ = rec.log.insert(list);
                        if rec.head().hash() == hash {
                            let at = match rec.head_copy {
                                Some((h, at)) if h == hash => at.max(*stored_ms),
                                _ => *stored_ms,
                            };
                            rec.head_copy = Some((hash, at));
                        }
                    }
                }
                kind::MEMBER_KEY => {
                    let Ok(key) = MemberKey::decode(inner) else {
                        continue;
                    };
                    if key.group() != group {
                        continue;
                    }
                    let own_other = key.cert().account_key() == me
                        && key.cert().signing_key() != self.account.device.cert().signing_key();
                    rec.add_key(key);
                    if own_other && rec.status == Status::Invited {
                        // Another device of this account accepted: this one joins too.
                        if rec.make_member_key(&self.account.device, now).is_ok() {
                            rec.status = Status::Member;
                            self.group_events.push(GroupEvent::Joined {
                                name: rec.name.clone(),
                            });
                        }
                    }
                }
                kind::REKEY => {
                    let Ok(part) = RekeyPart::decode(inner) else {
                        continue;
                    };
                    if part.group() != group {
                        continue;
                    }
                    rec.max_epoch = rec.max_epoch.max(part.epoch());
                    if !rec
                        .epochs
                        .iter()
                        .any(|e| e.epoch.epoch_id() == part.epoch_id())
                    {
                        rec.parts.push(part);
                    }
                }
                _ => {}
            }
        }
        if rec.status == Status::Member {
            rec.open_rekeys(&self.account.device, now);
        }
    }

    /// Whether this account is still in the group; deletes the group's state when a head
    /// without it follows one with it.
    fn still_member(&mut self, rec: &mut GroupRecord) -> Result<bool, MessengerError> {
        let me = self.my_account();
        if rec.head().role(&me).is_some() {
            rec.was_member = true;
            return Ok(true);
        }
        if !rec.was_member {
            return Ok(true);
        }
        self.dir.remove_group(&rec.group())?;
        self.group_events.push(GroupEvent::Removed {
            name: rec.name.clone(),
        });
        Ok(false)
    }

    /// One message: decrypt, save the epoch, then show.
    fn read_message(
        &mut self,
        rec: &mut GroupRecord,
        inner: &[u8],
        stored_ms: u64,
        path: &PathReport,
        on_message: &mut (dyn FnMut(&GroupMessage) + Send),
    ) -> Result<(), MessengerError> {
        let Ok(id) = epoch_id_of(inner) else {
            return Ok(());
        };
        let Some(epoch) = rec
            .epochs
            .iter_mut()
            .map(|h| &mut h.epoch)
            .find(|e| e.epoch_id() == id)
        else {
            // An epoch this device was not given (before it joined, or after it was removed).
            return Ok(());
        };
        // Its own, a duplicate, or a forgery: nothing to show, and nothing changed.
        let Ok(got) = epoch.decrypt(inner) else {
            return Ok(());
        };
        let Ok(from) = Address::from_key_bytes(&got.account) else {
            return self.save_group(rec);
        };
        match Incoming::decode(&got.payload) {
            Ok(Incoming::Message(message)) => {
                // Recorded before the epoch is saved: if the save does not happen, the message
                // is decrypted again next time and found recorded, never shown twice.
                let new = !self.recorded.contains(&message.msg_id);
                if new {
                    self.record_group(rec, &from, &message, Direction::Received, None)?;
                    self.recorded.insert(message.msg_id);
                }
                self.save_group(rec)?;
                if new {
                    on_message(&GroupMessage {
                        group: rec.group(),
                        name: rec.name.clone(),
                        from,
                        device: got.device,
                        message,
                        stored_ms,
                        path: path.clone(),
                    });
                }
            }
            Ok(Incoming::GroupLeave { .. }) => {
                if !rec.leaving.contains(&got.account) {
                    rec.leaving.push(got.account);
                }
                self.save_group(rec)?;
                self.group_events.push(GroupEvent::Left {
                    name: rec.name.clone(),
                    who: from,
                });
            }
            _ => self.save_group(rec)?,
        }
        Ok(())
    }

    /// A group message's line in the history (`GroupHistoryEntry`): the group as the peer, the
    /// writer beside it.
    fn record_group(
        &self,
        rec: &GroupRecord,
        from: &Address,
        message: &AppMessage,
        direction: Direction,
        delivery: Option<Delivery>,
    ) -> Result<(), MessengerError> {
        let group = Address::from_key_bytes(&rec.group())
            .map_err(|_| GroupFailure::Crypto(GroupError::WrongGroup))?;
        self.dir.append_group_history(&GroupHistoryEntry {
            entry: HistoryEntry {
                direction,
                peer: group.to_string(),
                timestamp_ms: message.sent_ms,
                msg_id: message.msg_id,
                text: message.content.summary(),
                delivery,
            },
            group: rec.name.clone(),
            from: from.to_string(),
        })?;
        Ok(())
    }

    /// An invitation or an answer read from the inbox (`handle`): kept in the group's file;
    /// the network part (a member key, a list, a rekey) follows in [`Self::receive_groups`].
    pub(crate) fn group_control(
        &mut self,
        from: &Address,
        incoming: Incoming,
        now: u64,
    ) -> Result<(), MessengerError> {
        let own = *from == self.account.address;
        match incoming {
            Incoming::GroupInvitation { invitation, .. } => {
                let Ok(secret) = GroupSecret::from_seed(&invitation.seed) else {
                    return Ok(());
                };
                let Ok(list) = MembershipList::decode(&invitation.list) else {
                    return Ok(());
                };
                // The inviter vouches for the list: it must be an admin in it.
                let inviter = from.public_key().to_bytes();
                if list.group() != secret.public() || list.role(&inviter) != Some(Role::Admin) {
                    return Ok(());
                }
                if self.dir.read_group(&secret.public())?.is_some() {
                    return Ok(());
                }
                let taken: Vec<String> = self.groups()?.into_iter().map(|g| g.name).collect();
                let name = local_name(&invitation.name, &secret.public(), &taken);
                let mut rec = GroupRecord {
                    status: Status::Invited,
                    name: name.clone(),
                    secret,
                    inviter,
                    was_member: false,
                    max_epoch: 0,
                    log: MembershipLog::new(list),
                    secrets: MemberSecrets::default(),
                    keys: Vec::new(),
                    parts: Vec::new(),
                    epochs: Vec::new(),
                    invited: Vec::new(),
                    accepted: Vec::new(),
                    leaving: Vec::new(),
                    mine: None,
                    head_copy: None,
                    outbox: Vec::new(),
                };
                if own {
                    // A group another device of this account made or joined: this one joins.
                    rec.make_member_key(&self.account.device, now)
                        .map_err(GroupFailure::from)?;
                    rec.status = Status::Member;
                } else {
                    self.group_events
                        .push(GroupEvent::Invited { name, from: *from });
                }
                self.save_group(&rec)
            }
            Incoming::GroupInvitationCopy {
                invitee,
                invitation,
                ..
            } if own => {
                let Ok(secret) = GroupSecret::from_seed(&invitation.seed) else {
                    return Ok(());
                };
                let Some(mut rec) = self.load_group(&secret.public())? else {
                    return Ok(());
                };
                if rec.head().role(&invitee).is_none() && !rec.invited.contains(&invitee) {
                    rec.invited.push(invitee);
                    self.save_group(&rec)?;
                }
                Ok(())
            }
            Incoming::GroupAnswer {
                group, accepted, ..
            } => {
                let Some(mut rec) = self.load_group(&group)? else {
                    return Ok(());
                };
                let who = from.public_key().to_bytes();
                // Only an answer to this device's own invitation counts: a former member
                // cannot let itself back in by answering.
                if !rec.invited.contains(&who) {
                    return Ok(());
                }
                rec.invited.retain(|a| *a != who);
                if accepted && !rec.accepted.contains(&who) {
                    rec.accepted.push(who);
                }
                self.group_events.push(GroupEvent::Answered {
                    name: rec.name.clone(),
                    from: *from,
                    accepted,
                });
                self.save_group(&rec)
            }
            _ => Ok(()),
        }
    }
}

/// One mailbox to long-poll: its key, a signer of its reads, and its saved safe position.
type Watched = (
    Mailbox,
    allium_proto::storage::Namespace,
    Box<dyn crate::net::MailboxSigner>,
    Option<CursorKey>,
);

impl Messenger {
    /// Long-polls the account's inbox, its requests share and every group mailbox this device
    /// holds at once — one `retrieve` each, from its saved position and waiting up to `wait` —
    /// and returns as soon as one answers: true when that answer holds an item not handled yet
    /// (the caller then reads every mailbox), false when the wait ran out. The other polls
    /// are dropped. An answer holding only items handled already (the cursor's overlap, storage
    /// §8) is asked again from after its last item, so the wait does not spin on them.
    pub async fn wait_for_mail(
        &self,
        net: &Net,
        state: &ClientState,
        wait: std::time::Duration,
    ) -> Result<bool, MessengerError> {
        let saved = |key: &[u8; 32]| {
            state.cursor(key).map(|c| CursorKey {
                timestamp: c.timestamp,
                hash: MessageHash(c.hash),
            })
        };
        let me = self.my_account();
        let requests = state.requests_cursor().map(|c| CursorKey {
            timestamp: c.timestamp,
            hash: MessageHash(c.hash),
        });
        // The account's inbox and its requests share (senders without its delivery token,
        // storage.md §4.5), then every group mailbox.
        let mut watched: Vec<Watched> = vec![
            (
                Mailbox::from_bytes(me),
                allium_proto::storage::INBOX,
                self.account.signing_key()?,
                saved(&me),
            ),
            (
                Mailbox::from_bytes(me),
                allium_proto::storage::REQUESTS,
                self.account.signing_key()?,
                requests,
            ),
        ];
        for g in self.dir.groups()? {
            if let Some(rec) = self.load_group(&g)? {
                let key = SigningKey::from_bytes(&rec.secret.seed());
                watched.push((
                    Mailbox::from_bytes(g),
                    allium_proto::storage::INBOX,
                    Box::new(key),
                    saved(&g),
                ));
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        let polls = watched.iter().map(|(mailbox, namespace, key, after)| {
            Box::pin(async move {
                let mut after = *after;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    let page = net
                        .fetch_namespace(mailbox, *namespace, key.as_ref(), after, left, None)
                        .await?;
                    if page.messages.iter().any(|m| !state.seen_hash(&m.hash.0)) {
                        return Ok::<bool, NetError>(true);
                    }
                    match page.messages.last() {
                        None => return Ok(false),
                        Some(m) => {
                            after = Some(CursorKey {
                                timestamp: m.timestamp,
                                hash: m.hash,
                            });
                        }
                    }
                }
            })
        });
        let (first, _, _rest) = futures_util::future::select_all(polls).await;
        Ok(first?)
    }
}
