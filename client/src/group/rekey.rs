//! Rekeys (`whitepaper/groups.md` §5): a new epoch key wrapped for every member device with
//! X25519 and ML-KEM-768, in parts of at most one storage item, each signed by an admin.

use std::collections::BTreeMap;
use std::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::epoch::Epoch;
use super::{
    EPOCH_ID_LEN, GroupError, MAX_DEVICES_PER_MEMBER, MAX_EPOCH_DEVICES, MAX_INNER_LEN, MemberKey,
    MemberSecret, MembershipList, Role, kind, labels, sign_device, verify_device,
};
use crate::session::codec::Reader;
use crate::session::crypto::{self, Secret};
use crate::session::{
    CERT_LEN, DeviceCert, DeviceKeys, KEM_CT_LEN, KEY_LEN, SIGNATURE_LEN, TAG_LEN,
};

/// Length of one wrapped entry: account, device key, ML-KEM ciphertext, wrapped epoch key.
pub const ENTRY_LEN: usize = 2 * KEY_LEN + KEM_CT_LEN + KEY_LEN + TAG_LEN;

/// kind, group, list hash, epoch, epoch id, issued_at, E, total, first, n.
const HEAD_LEN: usize = 1 + KEY_LEN + 32 + 8 + EPOCH_ID_LEN + 8 + KEY_LEN + 2 + 2 + 2;
/// The bytes every part of one rekey repeats: group through total.
const SHARED: std::ops::Range<usize> = 1..HEAD_LEN - 4;
const TAIL_LEN: usize = CERT_LEN + SIGNATURE_LEN;

/// The most entries in one part, so that a sealed part fits one storage item.
pub const ENTRIES_PER_PART: usize = (MAX_INNER_LEN - HEAD_LEN - TAIL_LEN) / ENTRY_LEN;

/// Who an entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The member's account key.
    pub account: [u8; KEY_LEN],
    /// The device's Ed25519 signing key (from its certificate).
    pub device: [u8; KEY_LEN],
}

/// One part of a rekey.
///
/// ```text
/// 0x03 || group (32) || list hash (32) || u64be(epoch) || epoch id (16) || u64be(issued_at)
///      || E (32) || u16be(total) || u16be(first) || u16be(n)
///      || n × (account (32) || device (32) || ML-KEM ct (1088) || wrapped key (48))
///      || signer cert (173) || Ed25519(signer device, "allium/v1/group/rekey" || the above)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RekeyPart {
    bytes: Vec<u8>,
    signer: DeviceCert,
}

impl fmt::Debug for RekeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RekeyPart")
            .field("epoch", &self.epoch())
            .field("first", &self.first())
            .field("n", &self.len())
            .field("total", &self.total())
            .finish_non_exhaustive()
    }
}

impl RekeyPart {
    /// Decodes a part and checks its form and its signer's signature (whether the signer is an
    /// admin is checked against the list when the rekey is opened).
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes, "rekey part");
        r.version(kind::REKEY)?;
        r.take(KEY_LEN + 32 + 8 + EPOCH_ID_LEN + 8)?;
        let e = r.array::<KEY_LEN>()?;
        let total = usize::from(r.u16()?);
        let first = usize::from(r.u16()?);
        let n = usize::from(r.u16()?);
        if n == 0 || n > ENTRIES_PER_PART || total > MAX_EPOCH_DEVICES || first + n > total {
            return Err(super::malformed("rekey part (counts)"));
        }
        crypto::check_x25519_public(&e)?;
        let mut last: Option<Entry> = None;
        for _ in 0..n {
            let entry = Entry {
                account: r.array()?,
                device: r.array()?,
            };
            if last.is_some_and(|l| l >= entry) {
                return Err(super::malformed("rekey part (entries out of order)"));
            }
            last = Some(entry);
            r.take(KEM_CT_LEN + KEY_LEN + TAG_LEN)?;
        }
        let signer = DeviceCert::decode(r.take(CERT_LEN)?)?;
        let signed_len = bytes.len() - r.remaining();
        let sig = r.array::<SIGNATURE_LEN>()?;
        r.finish()?;
        verify_device(
            &signer.signing_key(),
            &[labels::REKEY, &bytes[..signed_len]],
            &sig,
        )?;
        Ok(RekeyPart {
            bytes: bytes.to_vec(),
            signer,
        })
    }

    fn field<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[at..at + N]);
        out
    }

    fn u16_at(&self, at: usize) -> usize {
        usize::from(u16::from_be_bytes(self.field(at)))
    }

    /// The group's public key.
    pub fn group(&self) -> [u8; KEY_LEN] {
        self.field(1)
    }

    /// The hash of the membership list it was made for.
    pub fn list_hash(&self) -> [u8; 32] {
        self.field(1 + KEY_LEN)
    }

    /// The epoch number.
    pub fn epoch(&self) -> u64 {
        u64::from_be_bytes(self.field(1 + KEY_LEN + 32))
    }

    /// The epoch id: what messages of the epoch name, and what parts of one rekey share.
    pub fn epoch_id(&self) -> [u8; EPOCH_ID_LEN] {
        self.field(1 + KEY_LEN + 32 + 8)
    }

    /// When the admin made it (its clock, Unix ms).
    pub fn issued_at(&self) -> u64 {
        u64::from_be_bytes(self.field(1 + KEY_LEN + 32 + 8 + EPOCH_ID_LEN))
    }

    fn ephemeral(&self) -> [u8; KEY_LEN] {
        self.field(HEAD_LEN - 6 - KEY_LEN)
    }

    /// How many devices the rekey has, over all its parts.
    pub fn total(&self) -> usize {
        self.u16_at(HEAD_LEN - 6)
    }

    /// Index of this part's first entry.
    pub fn first(&self) -> usize {
        self.u16_at(HEAD_LEN - 4)
    }

    /// How many entries this part has.
    pub fn len(&self) -> usize {
        self.u16_at(HEAD_LEN - 2)
    }

    /// Never: a part has at least one entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i` of this part (0-based within the part).
    pub fn entry(&self, i: usize) -> Option<Entry> {
        (i < self.len()).then(|| {
            let at = HEAD_LEN + i * ENTRY_LEN;
            Entry {
                account: self.field(at),
                device: self.field(at + KEY_LEN),
            }
        })
    }

    fn ct(&self, i: usize) -> [u8; KEM_CT_LEN] {
        self.field(HEAD_LEN + i * ENTRY_LEN + 2 * KEY_LEN)
    }

    fn wrapped(&self, i: usize) -> &[u8] {
        let at = HEAD_LEN + i * ENTRY_LEN + 2 * KEY_LEN + KEM_CT_LEN;
        &self.bytes[at..at + KEY_LEN + TAG_LEN]
    }

    /// The certificate of the admin device that signed it.
    pub fn signer(&self) -> &DeviceCert {
        &self.signer
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The key and nonce wrapping the epoch key for one device:
/// `HKDF(0^32, ss || dh || E || X, "…/wrap" || group || u64be(epoch) || list hash, 44)`.
fn wrap_key(
    ss: &[u8; KEY_LEN],
    dh: &[u8; KEY_LEN],
    e: &[u8; KEY_LEN],
    x: &[u8; KEY_LEN],
    group: &[u8; KEY_LEN],
    epoch: u64,
    list_hash: &[u8; 32],
) -> Result<Zeroizing<[u8; 44]>, GroupError> {
    let info = [labels::WRAP, group, &epoch.to_be_bytes(), list_hash].concat();
    Ok(crypto::hkdf::<44>(&[0u8; KEY_LEN], &[ss, dh, e, x], &info)?)
}

fn split(kn: &[u8; 44]) -> ([u8; KEY_LEN], [u8; 12]) {
    let mut k = [0u8; KEY_LEN];
    let mut n = [0u8; 12];
    k.copy_from_slice(&kn[..KEY_LEN]);
    n.copy_from_slice(&kn[KEY_LEN..]);
    (k, n)
}

fn wrap_ad(entry: &Entry) -> Vec<u8> {
    [labels::WRAP, &entry.account, &entry.device].concat()
}

/// The member keys an admin wraps for: those of `list`'s members and of `group`, the newest per
/// device, the newest [`MAX_DEVICES_PER_MEMBER`] devices per member, ordered by (account,
/// device key).
fn recipients<'a>(list: &MembershipList, keys: &'a [MemberKey]) -> Vec<(Entry, &'a MemberKey)> {
    let group = list.group();
    let mut newest: BTreeMap<Entry, &MemberKey> = BTreeMap::new();
    for k in keys {
        let entry = Entry {
            account: k.cert().account_key(),
            device: k.cert().signing_key(),
        };
        if k.group() != group || list.role(&entry.account).is_none() {
            continue;
        }
        let slot = newest.entry(entry).or_insert(k);
        if k.created_at() > slot.created_at() {
            *slot = k;
        }
    }
    let mut per_account: BTreeMap<[u8; KEY_LEN], Vec<(Entry, &MemberKey)>> = BTreeMap::new();
    for (e, k) in newest {
        per_account.entry(e.account).or_default().push((e, k));
    }
    let mut out = Vec::new();
    for (_, mut devices) in per_account {
        devices.sort_by_key(|(e, k)| (std::cmp::Reverse(k.created_at()), *e));
        devices.truncate(MAX_DEVICES_PER_MEMBER);
        devices.sort_by_key(|(e, _)| *e);
        out.extend(devices);
    }
    out
}

/// The devices a rekey for `list` made now from `keys` would wrap the epoch key for, in order
/// (`whitepaper/groups.md` §5.2): an admin compares them with an epoch's senders to know whether
/// a device joined or left since.
pub fn recipients_of(list: &MembershipList, keys: &[MemberKey]) -> Vec<Entry> {
    recipients(list, keys).into_iter().map(|(e, _)| e).collect()
}

/// Makes epoch `epoch` for `list`: draws the epoch key (32 bytes), the ephemeral X25519 secret
/// (32), then one ML-KEM `m` (32) per recipient in order; wraps the key for every member device
/// among `keys` (see `whitepaper/groups.md` §5.2 for which); and returns the signed parts and
/// the admin device's own epoch. `signer` must be an admin with a member key among `keys`.
pub fn rekey(
    list: &MembershipList,
    epoch: u64,
    keys: &[MemberKey],
    signer: &DeviceKeys,
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<(Vec<RekeyPart>, Epoch), GroupError> {
    let group = list.group();
    let me = Entry {
        account: signer.cert().account_key(),
        device: signer.cert().signing_key(),
    };
    if list.role(&me.account) != Some(Role::Admin) {
        return Err(GroupError::NotAdmin);
    }
    let to = recipients(list, keys);
    if to.is_empty() {
        return Err(GroupError::NoRecipients);
    }
    let my_index = to
        .iter()
        .position(|(e, _)| *e == me)
        .ok_or(GroupError::NotRecipient)?;
    let total = u16::try_from(to.len()).map_err(|_| GroupError::BadMembers)?;
    let epoch_key: Secret = crypto::random_secret(rng);
    let e = crypto::random_secret(rng);
    let e_pub = crypto::dh_public(&e);
    let list_hash = list.hash();
    let epoch_id = super::epoch::epoch_id(&epoch_key, &group, epoch)?;
    let mut entries = Vec::with_capacity(to.len() * ENTRY_LEN);
    for (entry, key) in &to {
        let (ct, ss) = crypto::encapsulate(key.ek(), rng)?;
        let dh = crypto::dh(&e, &key.x25519())?;
        let kn = wrap_key(&ss, &dh, &e_pub, &key.x25519(), &group, epoch, &list_hash)?;
        let (k, n) = split(&kn);
        let wrapped = crypto::aead_seal(&k, &n, &wrap_ad(entry), epoch_key.as_ref())?;
        entries.extend_from_slice(&entry.account);
        entries.extend_from_slice(&entry.device);
        entries.extend_from_slice(ct.as_slice());
        entries.extend_from_slice(&wrapped);
    }
    let mut parts = Vec::new();
    for (i, chunk) in entries.chunks(ENTRIES_PER_PART * ENTRY_LEN).enumerate() {
        let first = u16::try_from(i * ENTRIES_PER_PART).map_err(|_| GroupError::BadMembers)?;
        let n = u16::try_from(chunk.len() / ENTRY_LEN).map_err(|_| GroupError::BadMembers)?;
        let mut b = Vec::with_capacity(HEAD_LEN + chunk.len() + TAIL_LEN);
        b.push(kind::REKEY);
        b.extend_from_slice(&group);
        b.extend_from_slice(&list_hash);
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&epoch_id);
        b.extend_from_slice(&now.to_be_bytes());
        b.extend_from_slice(&e_pub);
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&first.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(chunk);
        b.extend_from_slice(signer.cert().as_bytes());
        let sig = sign_device(signer, &[labels::REKEY, &b]);
        b.extend_from_slice(&sig);
        parts.push(RekeyPart::decode(&b)?);
    }
    let senders: Vec<Entry> = to.iter().map(|(e, _)| *e).collect();
    let own = Epoch::from_key(&group, epoch, &list_hash, &epoch_key, senders, my_index)?;
    Ok((parts, own))
}

impl Epoch {
    /// Opens a rekey from all its parts (any order): checks that they make one rekey for
    /// `list`, each signed by an admin of it, finds this device's entry, unwraps the epoch key
    /// with one of `secrets` (the member keys this device still holds), checks it against the
    /// epoch id, and derives every sender chain; the epoch key itself is not kept.
    pub fn open(
        parts: &[RekeyPart],
        list: &MembershipList,
        me: &DeviceKeys,
        secrets: &[MemberSecret],
    ) -> Result<Epoch, GroupError> {
        Self::open_with(parts, list, me, secrets).map(|(epoch, _)| epoch)
    }

    /// [`Self::open`], also giving the index in `secrets` of the member secret that unwrapped
    /// the epoch key (§4.2: the secrets older than it can go).
    pub fn open_with(
        parts: &[RekeyPart],
        list: &MembershipList,
        me: &DeviceKeys,
        secrets: &[MemberSecret],
    ) -> Result<(Epoch, usize), GroupError> {
        let Some(head) = parts.first() else {
            return Err(GroupError::BadParts);
        };
        let group = head.group();
        if !crypto::ct_eq(&group, &list.group()) {
            return Err(GroupError::WrongGroup);
        }
        if head.list_hash() != list.hash() {
            return Err(GroupError::WrongList);
        }
        let mut sorted: Vec<&RekeyPart> = parts.iter().collect();
        sorted.sort_by_key(|p| p.first());
        let mut next = 0;
        let mut senders = Vec::with_capacity(head.total());
        for p in &sorted {
            if p.bytes[SHARED] != head.bytes[SHARED] || p.first() != next {
                return Err(GroupError::BadParts);
            }
            if list.role(&p.signer().account_key()) != Some(Role::Admin) {
                return Err(GroupError::NotAdmin);
            }
            for i in 0..p.len() {
                let entry = p.entry(i).ok_or(GroupError::BadParts)?;
                if senders.last().is_some_and(|l: &Entry| *l >= entry) {
                    return Err(GroupError::BadParts);
                }
                senders.push(entry);
            }
            next += p.len();
        }
        if next != head.total() {
            return Err(GroupError::BadParts);
        }
        let mine = Entry {
            account: me.cert().account_key(),
            device: me.cert().signing_key(),
        };
        let index = senders
            .iter()
            .position(|e| *e == mine)
            .ok_or(GroupError::NotRecipient)?;
        let (part, i) = sorted
            .iter()
            .find_map(|p| {
                let i = index.checked_sub(p.first())?;
                (i < p.len()).then_some((*p, i))
            })
            .ok_or(GroupError::BadParts)?;
        let e = part.ephemeral();
        let ct = part.ct(i);
        let epoch = part.epoch();
        let mut epoch_key = None;
        for (used, s) in secrets.iter().enumerate() {
            let x = crypto::dh_public(&s.x);
            let Ok(dh) = crypto::dh(&s.x, &e) else {
                continue;
            };
            let ss = s.kem.decapsulate(&ct);
            let kn = wrap_key(&ss, &dh, &e, &x, &group, epoch, &list.hash())?;
            let (k, n) = split(&kn);
            if let Ok(key) = crypto::aead_open(&k, &n, &wrap_ad(&mine), part.wrapped(i)) {
                epoch_key = Some((key, used));
                break;
            }
        }
        let (key, used) = epoch_key.ok_or(GroupError::Decrypt)?;
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        if key.len() != KEY_LEN {
            return Err(GroupError::Decrypt);
        }
        k.copy_from_slice(&key);
        if !crypto::ct_eq(
            &super::epoch::epoch_id(&k, &group, epoch)?,
            &head.epoch_id(),
        ) {
            return Err(GroupError::Decrypt);
        }
        Epoch::from_key(&group, epoch, &list.hash(), &k, senders, index).map(|e| (e, used))
    }
}
