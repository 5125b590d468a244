//! Membership (`whitepaper/groups.md` §3): admin-signed, versioned lists chained by hash, and
//! the rule by which every member picks the same head when two admins change it at once.

use std::collections::BTreeMap;
use std::fmt;

use super::{
    FORK_WINDOW, GroupError, MAX_MEMBERS, MAX_PENDING, kind, labels, malformed, sign_device,
    verify_device,
};
use crate::session::codec::Reader;
use crate::session::crypto;
use crate::session::{CERT_LEN, DeviceCert, DeviceKeys, KEY_LEN, SIGNATURE_LEN};

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads and writes.
    Member,
    /// Also signs lists and rekeys.
    Admin,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Member => 1,
            Role::Admin => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, GroupError> {
        match b {
            1 => Ok(Role::Member),
            2 => Ok(Role::Admin),
            _ => Err(malformed("membership list (role)")),
        }
    }
}

/// One change an admin makes to a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds an account (an invitee who accepted) with a role; no change if it is a member.
    Add([u8; KEY_LEN], Role),
    /// Removes an account; no change if it is not a member.
    Remove([u8; KEY_LEN]),
    /// Changes a member's role; no change if it is not a member.
    SetRole([u8; KEY_LEN], Role),
}

/// Applies `changes` in order, each one a no-op where its target does not fit.
fn apply(
    members: &BTreeMap<[u8; KEY_LEN], Role>,
    changes: &[Change],
) -> BTreeMap<[u8; KEY_LEN], Role> {
    let mut out = members.clone();
    for c in changes {
        match *c {
            Change::Add(a, r) => {
                out.entry(a).or_insert(r);
            }
            Change::Remove(a) => {
                out.remove(&a);
            }
            Change::SetRole(a, r) => {
                if let Some(role) = out.get_mut(&a) {
                    *role = r;
                }
            }
        }
    }
    out
}

/// Fixed bytes before the members: kind, group, version, parent, issued_at, count.
const HEAD_LEN: usize = 1 + KEY_LEN + 8 + 32 + 8 + 2;
const MEMBER_LEN: usize = KEY_LEN + 1;

/// A signed membership list.
///
/// ```text
/// 0x01 || group (32) || u64be(version) || parent (32) || u64be(issued_at) || u16be(n)
///      || n × (account (32) || role (1)) || signer cert (173)
///      || Ed25519(signer device, "allium/v1/group/list-signature" || all the above)
/// ```
///
/// Accounts strictly ascending; role 1 member, 2 admin; 1 ≤ n ≤ 1000 with an admin; the
/// genesis (version 0) has parent `0^32` and is signed by one of its admins, every later list by
/// an admin of its parent.
#[derive(Clone, PartialEq, Eq)]
pub struct MembershipList {
    bytes: Vec<u8>,
    members: BTreeMap<[u8; KEY_LEN], Role>,
    signer: DeviceCert,
    hash: [u8; 32],
}

impl fmt::Debug for MembershipList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipList")
            .field("version", &self.version())
            .field("members", &self.members.len())
            .field("hash", &hex::encode(&self.hash[..8]))
            .finish_non_exhaustive()
    }
}

impl MembershipList {
    /// The first list of a group, signed by `signer`, whose account must be an admin in it.
    pub fn genesis(
        group: &[u8; KEY_LEN],
        members: &BTreeMap<[u8; KEY_LEN], Role>,
        signer: &DeviceKeys,
        now: u64,
    ) -> Result<Self, GroupError> {
        let list = Self::build(group, 0, &[0; 32], now, members, signer)?;
        if list.role(&signer.cert().account_key()) != Some(Role::Admin) {
            return Err(GroupError::NotAdmin);
        }
        Ok(list)
    }

    /// The list after `changes`, signed by `signer`, an admin of this one.
    pub fn next(
        &self,
        changes: &[Change],
        signer: &DeviceKeys,
        now: u64,
    ) -> Result<Self, GroupError> {
        if self.role(&signer.cert().account_key()) != Some(Role::Admin) {
            return Err(GroupError::NotAdmin);
        }
        let version = self
            .version()
            .checked_add(1)
            .ok_or(GroupError::CounterExhausted)?;
        Self::build(
            &self.group(),
            version,
            &self.hash,
            now,
            &apply(&self.members, changes),
            signer,
        )
    }

    /// Re-applies the changes that made `self` from `base` on top of `winner`, the head that
    /// beat `self`: the losing admin's part of the convergence rule (§3.3). `None` when they
    /// change nothing there; [`GroupError::NotAdmin`] when `signer` is no longer an admin.
    pub fn rebase(
        &self,
        base: &MembershipList,
        winner: &MembershipList,
        signer: &DeviceKeys,
        now: u64,
    ) -> Result<Option<Self>, GroupError> {
        let changes = self.changes_since(base);
        let members = apply(&winner.members, &changes);
        if members == winner.members {
            return Ok(None);
        }
        winner.next(&changes, signer, now).map(Some)
    }

    /// The changes that turn `base` into `self`: removals, role changes, then additions.
    pub fn changes_since(&self, base: &MembershipList) -> Vec<Change> {
        let mut out = Vec::new();
        for (a, r) in &base.members {
            match self.members.get(a) {
                None => out.push(Change::Remove(*a)),
                Some(now) if now != r => out.push(Change::SetRole(*a, *now)),
                Some(_) => {}
            }
        }
        for (a, r) in &self.members {
            if !base.members.contains_key(a) {
                out.push(Change::Add(*a, *r));
            }
        }
        out
    }

    fn build(
        group: &[u8; KEY_LEN],
        version: u64,
        parent: &[u8; 32],
        issued_at: u64,
        members: &BTreeMap<[u8; KEY_LEN], Role>,
        signer: &DeviceKeys,
    ) -> Result<Self, GroupError> {
        if members.is_empty()
            || members.len() > MAX_MEMBERS
            || !members.values().any(|r| *r == Role::Admin)
        {
            return Err(GroupError::BadMembers);
        }
        let n = u16::try_from(members.len()).map_err(|_| GroupError::BadMembers)?;
        let mut bytes =
            Vec::with_capacity(HEAD_LEN + members.len() * MEMBER_LEN + CERT_LEN + SIGNATURE_LEN);
        bytes.push(kind::LIST);
        bytes.extend_from_slice(group);
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(parent);
        bytes.extend_from_slice(&issued_at.to_be_bytes());
        bytes.extend_from_slice(&n.to_be_bytes());
        for (a, r) in members {
            bytes.extend_from_slice(a);
            bytes.push(r.byte());
        }
        bytes.extend_from_slice(signer.cert().as_bytes());
        let sig = sign_device(signer, &[labels::LIST, &bytes]);
        bytes.extend_from_slice(&sig);
        Self::decode(&bytes)
    }

    /// Decodes a list and checks its form and its signer's signature. Whether the signer may
    /// sign it is checked against the parent ([`Self::follows`]), or in it for a genesis.
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes, "membership list");
        r.version(kind::LIST)?;
        let _group = r.array::<KEY_LEN>()?;
        let version = r.u64()?;
        let parent = r.array::<32>()?;
        let _issued_at = r.u64()?;
        let n = usize::from(r.u16()?);
        if n == 0 || n > MAX_MEMBERS {
            return Err(GroupError::BadMembers);
        }
        if (version == 0) != (parent == [0; 32]) {
            return Err(malformed("membership list (parent of a genesis)"));
        }
        let mut members = BTreeMap::new();
        let mut last: Option<[u8; KEY_LEN]> = None;
        for _ in 0..n {
            let a = r.array::<KEY_LEN>()?;
            let role = Role::from_byte(r.u8()?)?;
            if last.is_some_and(|l| l >= a) {
                return Err(malformed("membership list (accounts out of order)"));
            }
            last = Some(a);
            members.insert(a, role);
        }
        if !members.values().any(|r| *r == Role::Admin) {
            return Err(GroupError::BadMembers);
        }
        let signer = DeviceCert::decode(r.take(CERT_LEN)?)?;
        let signed_len = bytes.len() - r.remaining();
        let sig = r.array::<SIGNATURE_LEN>()?;
        r.finish()?;
        verify_device(
            &signer.signing_key(),
            &[labels::LIST, &bytes[..signed_len]],
            &sig,
        )?;
        let list = MembershipList {
            hash: crypto::sha256(&[labels::LIST_HASH, bytes]),
            bytes: bytes.to_vec(),
            members,
            signer,
        };
        if version == 0 && list.role(&list.signer.account_key()) != Some(Role::Admin) {
            return Err(GroupError::NotAdmin);
        }
        Ok(list)
    }

    /// Checks that this list may follow `parent`: same group, next version, names its hash,
    /// signed by one of its admins.
    pub fn follows(&self, parent: &MembershipList) -> Result<(), GroupError> {
        if !crypto::ct_eq(&self.group(), &parent.group()) {
            return Err(GroupError::WrongGroup);
        }
        if Some(self.version()) != parent.version().checked_add(1) || self.parent() != parent.hash {
            return Err(GroupError::NotSuccessor);
        }
        if parent.role(&self.signer.account_key()) != Some(Role::Admin) {
            return Err(GroupError::NotAdmin);
        }
        Ok(())
    }

    /// Whether this list wins over `other` as head: the higher version, then the lower hash.
    pub fn beats(&self, other: &MembershipList) -> bool {
        (self.version(), std::cmp::Reverse(self.hash))
            > (other.version(), std::cmp::Reverse(other.hash))
    }

    fn field<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[at..at + N]);
        out
    }

    /// The group's public key.
    pub fn group(&self) -> [u8; KEY_LEN] {
        self.field(1)
    }

    /// The version: 0 for the genesis, one more than the parent's otherwise.
    pub fn version(&self) -> u64 {
        u64::from_be_bytes(self.field(1 + KEY_LEN))
    }

    /// The parent's hash (`0^32` for the genesis).
    pub fn parent(&self) -> [u8; 32] {
        self.field(1 + KEY_LEN + 8)
    }

    /// When the admin signed it (its clock, Unix ms).
    pub fn issued_at(&self) -> u64 {
        u64::from_be_bytes(self.field(1 + KEY_LEN + 8 + 32))
    }

    /// The members and their roles.
    pub fn members(&self) -> &BTreeMap<[u8; KEY_LEN], Role> {
        &self.members
    }

    /// The role of `account`, if a member.
    pub fn role(&self, account: &[u8; KEY_LEN]) -> Option<Role> {
        self.members.get(account).copied()
    }

    /// The certificate of the device that signed it.
    pub fn signer(&self) -> &DeviceCert {
        &self.signer
    }

    /// `SHA-256("allium/v1/group/list-hash" || encoding)`: the list's name.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The lists a member holds, from a trusted list (the genesis, or the list in the invitation it
/// accepted) on: each accepted only if it follows one already held, and the head chosen by
/// [`MembershipList::beats`], so that members that hold the same lists agree on the head
/// whatever order they arrived in.
#[derive(Clone, Debug)]
pub struct MembershipLog {
    lists: BTreeMap<[u8; 32], MembershipList>,
    pending: Vec<MembershipList>,
    head: MembershipList,
}

impl MembershipLog {
    /// A log that trusts `root`.
    pub fn new(root: MembershipList) -> Self {
        MembershipLog {
            lists: BTreeMap::from([(root.hash(), root.clone())]),
            pending: Vec::new(),
            head: root,
        }
    }

    /// The head: the list members act on.
    pub fn head(&self) -> &MembershipList {
        &self.head
    }

    /// A list held, by hash.
    pub fn get(&self, hash: &[u8; 32]) -> Option<&MembershipList> {
        self.lists.get(hash)
    }

    /// Every list held (not those waiting for their parent), lowest version first.
    pub fn lists(&self) -> Vec<&MembershipList> {
        let mut out: Vec<&MembershipList> = self.lists.values().collect();
        out.sort_by_key(|l| (l.version(), l.hash()));
        out
    }

    /// A log rebuilt from the lists [`Self::lists`] gave (read back from this device's own
    /// disk): the first is trusted as root, the others taken as if read from the mailbox.
    pub fn restore(lists: Vec<MembershipList>) -> Result<Self, GroupError> {
        let mut lists = lists.into_iter();
        let root = lists.next().ok_or(GroupError::BadMembers)?;
        let mut log = MembershipLog::new(root);
        for l in lists {
            log.insert(l)?;
        }
        Ok(log)
    }

    /// How many lists wait for their parent.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes a list read from the mailbox. `Ok(true)` when the head changed. A list whose
    /// parent has not arrived yet is kept (at most [`MAX_PENDING`], oldest dropped first) and
    /// taken when it does.
    pub fn insert(&mut self, list: MembershipList) -> Result<bool, GroupError> {
        let group = self.head().group();
        if !crypto::ct_eq(&list.group(), &group) {
            return Err(GroupError::WrongGroup);
        }
        if self.lists.contains_key(&list.hash()) || self.pending.contains(&list) {
            return Ok(false);
        }
        if list.version().saturating_add(FORK_WINDOW) < self.head.version() {
            return Err(GroupError::Stale);
        }
        let before = self.head.hash();
        match self.lists.get(&list.parent()) {
            Some(parent) => {
                list.follows(parent)?;
                self.accept(list);
            }
            None => {
                if self.pending.len() == MAX_PENDING {
                    self.pending.remove(0);
                }
                self.pending.push(list);
                return Ok(false);
            }
        }
        // Lists that waited for one just accepted.
        while let Some(i) = self
            .pending
            .iter()
            .position(|p| self.lists.contains_key(&p.parent()))
        {
            let p = self.pending.remove(i);
            if let Some(parent) = self.lists.get(&p.parent())
                && p.follows(parent).is_ok()
            {
                self.accept(p);
            }
        }
        self.prune();
        Ok(self.head.hash() != before)
    }

    fn accept(&mut self, list: MembershipList) {
        if list.beats(&self.head) {
            self.head = list.clone();
        }
        self.lists.insert(list.hash(), list);
    }

    fn prune(&mut self) {
        let floor = self.head.version().saturating_sub(FORK_WINDOW);
        let head = self.head.hash();
        self.lists.retain(|h, l| *h == head || l.version() >= floor);
        self.pending.retain(|l| l.version() >= floor);
    }
}
