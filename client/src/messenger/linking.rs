//! The network side of an account's devices (`whitepaper/devices.md` §2.1, §3, §6, §7): the
//! primary's device file, delegation records, publishing the device list, linking a new device
//! over two temporary mailboxes, and removing one. The formats and the linking state machine are
//! [`crate::devices`]; this module only carries their messages and keeps their files.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use allium_proto::crypto::delegation_hash;
use allium_proto::cursor::{Cursor, DEFAULT_OVERLAP_MS};
use allium_proto::storage::{DEVICES, INBOX, PUBLIC, RetrieveResponse};
use allium_proto::{Mailbox, MessageHash};
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};

use super::{LinkedSecrets, Messenger, MessengerError, RECORD_BUNDLE, Role};
use crate::devices::link::{
    Event, HISTORY_ENTRY_OVERHEAD, HistoryDirection, HistoryItem, LINK_TTL_MS, Link, LinkCode,
    Welcome, history_chunks,
};
use crate::devices::list::{DeviceList, RECORD_LIST};
use crate::devices::{self, DeviceError, MAX_DEVICES};
use crate::identity::{Address, Identity};
use crate::net::Net;
use crate::session::codec::Reader;
use crate::session::{DeviceCert, DeviceSecrets, PrekeyBundle};
use crate::state::{DEVICES_FILE, DataDir, Direction, HistoryEntry};

/// The primary stores its delegation records and list again once the last time is this old
/// (§2.1): far inside the 14-day TTL, so a primary used every few days never lets them lapse.
pub const REFRESH_MS: u64 = 2 * 24 * 60 * 60 * 1000;
/// How long one wait on a temporary inbox lasts before the loop looks again.
const LINK_POLL: Duration = Duration::from_secs(5);
/// Sync entry kind of a device's name (§8.1).
const KIND_DEVICE_NAME: u8 = 4;
/// Largest `devices.bin`: a list and eight removals, with room to spare.
const MAX_DEVICES_FILE: u64 = 4096;

/// The primary's device file `devices.bin` (§9): the newest list it signed, whether that list
/// and the delegations are published and when they last were, and removals in progress.
///
/// ```text
/// devices = 0x01 || u16be(len) || list || u8(flags) || u64be(refreshed_at) || u8(n) || n × D_sig
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryDevices {
    /// The newest list this primary signed.
    pub list: DeviceList,
    /// Flag bit 0: the list and every delegation are stored as of `refreshed_at`.
    pub published: bool,
    /// When they were last stored (the primary's clock).
    pub refreshed_at: u64,
    /// Signing keys of devices being removed: their delegation and bundles are still to delete.
    pub removing: Vec<[u8; 32]>,
}

impl PrimaryDevices {
    /// The file's encoding.
    pub fn encode(&self) -> Vec<u8> {
        let list = self.list.as_bytes();
        let mut out = Vec::with_capacity(1 + 2 + list.len() + 1 + 8 + 1 + 32 * self.removing.len());
        out.push(1);
        // A list is at most MAX_LIST_LEN (1,527) bytes.
        out.extend_from_slice(&u16::try_from(list.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(list);
        out.push(u8::from(self.published));
        out.extend_from_slice(&self.refreshed_at.to_be_bytes());
        out.push(u8::try_from(self.removing.len()).unwrap_or(u8::MAX));
        for k in &self.removing {
            out.extend_from_slice(k);
        }
        out
    }

    /// Decodes [`Self::encode`], verifying the list (it must be `account`'s).
    pub fn decode(bytes: &[u8], account: &Address) -> Result<Self, DeviceError> {
        let mut r = Reader::new(bytes, "devices file");
        r.version(1)?;
        let len = usize::from(r.u16()?);
        let list = DeviceList::verify(r.take(len)?, account)?;
        let flags = r.u8()?;
        if flags > 1 {
            return Err(DeviceError::Malformed("devices file (flags)"));
        }
        let refreshed_at = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > MAX_DEVICES {
            return Err(DeviceError::TooManyDevices);
        }
        let mut removing = Vec::with_capacity(n);
        for _ in 0..n {
            removing.push(r.array::<32>()?);
        }
        r.finish()?;
        Ok(PrimaryDevices {
            list,
            published: flags == 1,
            refreshed_at,
            removing,
        })
    }
}

/// One device of the account, as `devices list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its id on the account.
    pub device_id: u32,
    /// Its signing key `D_sig`.
    pub signing_key: [u8; 32],
    /// When the account certified it.
    pub created_at: u64,
    /// The name it asked for, if this device knows it.
    pub name: Option<String>,
    /// Whether it is this device.
    pub this: bool,
}

/// The version a new list takes: later than the previous, and not behind the clock, so a
/// primary restored without its previous version still goes forward (§3).
fn next_version(previous: u64, now: u64) -> u64 {
    previous.saturating_add(1).max(now)
}

/// A signed retrieve of a temporary inbox, paged with the cursor of storage §8, the messages
/// not seen before.
struct TempInbox {
    key: SigningKey,
    cursor: Cursor,
    seen: HashSet<MessageHash>,
}

impl TempInbox {
    fn new(seed: &[u8; 32]) -> Self {
        TempInbox {
            key: SigningKey::from_bytes(seed),
            cursor: Cursor::resume(DEFAULT_OVERLAP_MS, None),
            seen: HashSet::new(),
        }
    }

    async fn poll(&mut self, net: &Net, wait: Duration) -> Result<Vec<Vec<u8>>, MessengerError> {
        let mut out = Vec::new();
        let mut wait = wait;
        loop {
            let page = net
                .fetch(&self.key, self.cursor.after(), wait, None)
                .await?;
            wait = Duration::ZERO;
            let more = page.more;
            let fresh = self.cursor.accept(
                page.node_now,
                &RetrieveResponse {
                    messages: page.messages,
                    more: page.more,
                },
            );
            for m in fresh {
                if self.seen.insert(m.hash) {
                    out.push(m.data);
                }
            }
            if !more {
                return Ok(out);
            }
        }
    }
}

/// Stores what the linking asks to send, each in the other side's temporary inbox.
async fn transmit(net: &Net, link: &mut Link) -> Result<(), MessengerError> {
    while let Some(t) = link.poll_transmit() {
        net.store_in(&Mailbox::from_bytes(t.to), INBOX, LINK_TTL_MS, t.data, None)
            .await?;
    }
    Ok(())
}

/// History lines read back at most, to pick what a new device gets.
const HISTORY_SCAN: usize = 100_000;

/// The newest messages of `entries` (oldest first, as the history file holds them) whose
/// entries (§6.2, type 4) fit in `max_bytes`, oldest first; each message once, sent ones with
/// the text of their first line (later lines only update delivery).
pub fn history_to_transfer(entries: &[HistoryEntry], max_bytes: u64) -> Vec<HistoryItem> {
    let mut seen: HashSet<(bool, [u8; 16])> = HashSet::new();
    let mut firsts: Vec<&HistoryEntry> = Vec::new();
    for e in entries {
        if seen.insert((matches!(e.direction, Direction::Sent), e.msg_id)) {
            firsts.push(e);
        }
    }
    let mut out = Vec::new();
    let mut used: u64 = 0;
    for e in firsts.iter().rev() {
        let Ok(peer) = Address::from_str(&e.peer) else {
            continue;
        };
        let len = (HISTORY_ENTRY_OVERHEAD + e.text.len()) as u64;
        if used.saturating_add(len) > max_bytes {
            break;
        }
        used += len;
        out.push(HistoryItem {
            direction: match e.direction {
                Direction::Sent => HistoryDirection::Sent,
                Direction::Received => HistoryDirection::Received,
            },
            peer: peer.public_key().to_bytes(),
            timestamp_ms: e.timestamp_ms,
            msg_id: e.msg_id,
            text: e.text.clone(),
        });
    }
    out.reverse();
    out
}

/// A linked device: the account, and how many messages of its history came along.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    /// The account's address.
    pub address: Address,
    /// Messages of the account's history the primary sent, now in this device's history.
    pub history: usize,
}

/// The new device's side of linking (§6), in a data directory that holds no account: shows the
/// code through `show_code`, asks the person to compare the SAS through `confirm`, and saves
/// the account file, then the device keys, once the account welcomed it, and then the history
/// the primary sent along. `name` is what `devices list` will call it.
pub async fn link_new_device(
    dir: &DataDir,
    net: &Net,
    name: &str,
    show_code: impl FnOnce(&LinkCode),
    mut confirm: impl FnMut(&str) -> bool,
) -> Result<Linked, MessengerError> {
    if dir.has_identity() || dir.read_device()?.is_some() {
        return Err(MessengerError::AlreadyLinked);
    }
    let secrets = DeviceSecrets::generate(&mut OsRng);
    let request = devices::link::DeviceRequest {
        signing: secrets.signing_public(),
        identity: secrets.identity_public(),
        name: name.to_owned(),
    };
    let (mut link, code) = Link::new_device(request, &mut OsRng);
    show_code(&code);
    let mut inbox = TempInbox::new(link.mailbox_seed());
    let deadline = Instant::now() + Duration::from_millis(LINK_TTL_MS);
    let mut welcomed: Option<Box<Welcome>> = None;
    let mut history: Vec<HistoryItem> = Vec::new();
    loop {
        transmit(net, &mut link).await?;
        while let Some(event) = link.poll_event() {
            match event {
                Event::Compare(sas) => {
                    let same = confirm(&sas);
                    link.confirm(same);
                }
                Event::Linked(w) => welcomed = Some(w),
                Event::Aborted(reason) => {
                    transmit(net, &mut link).await?;
                    return Err(MessengerError::LinkAborted(reason));
                }
                Event::History(items) => history.extend(items),
                Event::Approve(_) | Event::Done => {}
            }
        }
        transmit(net, &mut link).await?;
        if link.is_finished() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(MessengerError::LinkTimedOut);
        }
        for data in inbox.poll(net, LINK_POLL).await? {
            link.handle(&data);
        }
    }
    let welcome = welcomed.ok_or(MessengerError::LinkAborted(
        devices::link::AbortReason::Unexpected,
    ))?;
    let address = welcome
        .cert
        .account()
        .ok_or(MessengerError::Device(DeviceError::WrongAccount))?;
    // The account file first: a directory counts as linked only once the device keys are
    // saved (§6.6), so a crash between the two leaves an unlinked directory.
    let secrets_file = LinkedSecrets {
        sync_key: welcome.sync_key.clone(),
        joined_version: welcome.list.version(),
    };
    dir.remove_file(crate::state::REMOVED_FILE)?;
    dir.write_private(crate::state::ACCOUNT_FILE, &secrets_file.encode())?;
    let keys = secrets
        .certified(welcome.cert.clone())
        .map_err(|source| MessengerError::Keys {
            file: crate::state::DEVICE_FILE,
            source,
        })?;
    dir.write_device(&keys.encode(), false)?;
    // This account's own record starts from the list that added the device.
    let mut own = super::peer::PeerRecord::default();
    own.adopt_list(welcome.list.clone());
    dir.write_peer(&address.public_key().to_bytes(), &own.encode())?;
    // In the order they were sent. How far a sent one got is the primary's to know.
    history.sort_by_key(|h| h.timestamp_ms);
    for h in &history {
        let Ok(peer) = Address::from_key_bytes(&h.peer) else {
            continue;
        };
        let direction = match h.direction {
            HistoryDirection::Sent => Direction::Sent,
            HistoryDirection::Received => Direction::Received,
        };
        dir.append_history(&HistoryEntry {
            delivery: None,
            direction,
            peer: peer.to_string(),
            timestamp_ms: h.timestamp_ms,
            msg_id: h.msg_id,
            text: h.text.clone(),
        })?;
    }
    Ok(Linked {
        address,
        history: history.len(),
    })
}

impl Messenger {
    fn primary_identity(&self) -> Result<&Identity, MessengerError> {
        self.account.identity().ok_or(MessengerError::NotPrimary)
    }

    fn owner_key(&self) -> Result<SigningKey, MessengerError> {
        Ok(SigningKey::from_bytes(&self.primary_identity()?.seed()))
    }

    /// The primary's device file; made on first use with this device alone, unpublished.
    fn primary_devices(&self, now: u64) -> Result<PrimaryDevices, MessengerError> {
        let identity = self.primary_identity()?;
        if let Some(bytes) = self.dir.read_private(DEVICES_FILE, MAX_DEVICES_FILE)? {
            return PrimaryDevices::decode(&bytes, &self.account.address)
                .map_err(MessengerError::Device);
        }
        let list = DeviceList::sign(
            identity,
            next_version(0, now),
            now,
            &[self.account.device().cert().clone()],
        )
        .map_err(MessengerError::Device)?;
        Ok(PrimaryDevices {
            list,
            published: false,
            refreshed_at: 0,
            removing: Vec::new(),
        })
    }

    fn save_primary_devices(&self, d: &PrimaryDevices) -> Result<(), MessengerError> {
        Ok(self.dir.write_private(DEVICES_FILE, &d.encode())?)
    }

    /// On the primary, once it has linked a device: stores the list and every linked device's
    /// delegation record again when they are unpublished or older than [`REFRESH_MS`], and
    /// finishes removals in progress (§2.1, §7). Nothing on a linked device or a primary that
    /// never linked one. Returns whether it stored anything.
    pub async fn maintain_devices(&mut self, net: &Net) -> Result<bool, MessengerError> {
        if !matches!(self.account.role(), Role::Primary(_))
            || self
                .dir
                .read_private(DEVICES_FILE, MAX_DEVICES_FILE)?
                .is_none()
        {
            return Ok(false);
        }
        let now = net.now_ms();
        let mut d = self.primary_devices(now)?;
        let due = !d.published
            || !d.removing.is_empty()
            || now.saturating_sub(d.refreshed_at) >= REFRESH_MS;
        if !due {
            return Ok(false);
        }
        self.publish_devices(net, &mut d).await?;
        Ok(true)
    }

    /// Deletes what removed devices left (delegation, bundles), stores every other linked
    /// device's delegation and the list, then records them published.
    async fn publish_devices(
        &mut self,
        net: &Net,
        d: &mut PrimaryDevices,
    ) -> Result<(), MessengerError> {
        let key = self.owner_key()?;
        let mailbox = self.account.mailbox();
        let ttl_ms = net.network().params.max_ttl_secs.saturating_mul(1000);
        if !d.removing.is_empty() {
            // Delegations first: from then on nodes refuse the removed devices' requests.
            let hashes = d
                .removing
                .iter()
                .map(|k| delegation_hash(&mailbox, k))
                .collect();
            net.delete(&mailbox, DEVICES, hashes, &key).await?;
        }
        let me = self.account.device().cert().signing_key();
        for cert in d.list.certs() {
            let k = cert.signing_key();
            if k != me {
                net.store_in(&mailbox, DEVICES, ttl_ms, k.to_vec(), Some(&key))
                    .await?;
            }
        }
        net.store_in(&mailbox, PUBLIC, ttl_ms, d.list.record(), Some(&key))
            .await?;
        if !d.removing.is_empty() {
            let removing: HashSet<[u8; 32]> = d.removing.iter().copied().collect();
            let stale: Vec<MessageHash> = net
                .fetch_public(&mailbox)
                .await?
                .into_iter()
                .filter(|m| match m.data.split_first() {
                    Some((&RECORD_BUNDLE, b)) => PrekeyBundle::decode(b)
                        .is_ok_and(|b| removing.contains(&b.cert().signing_key())),
                    // Older lists: a reader never goes back to them, but they still name
                    // the removed device to whoever reads first.
                    Some((&RECORD_LIST, b)) => {
                        DeviceList::decode(b).is_ok_and(|l| d.list.newer_than(&l))
                    }
                    _ => false,
                })
                .map(|m| m.hash)
                .collect();
            for chunk in stale.chunks(256) {
                net.delete(&mailbox, PUBLIC, chunk.to_vec(), &key).await?;
            }
        }
        // This account's own record: copies go to the devices of the new list from now on.
        let me_addr = self.account.address;
        let mut own = self.load_peer(&me_addr)?;
        own.adopt_list(d.list.clone());
        own.fetched_at = 0;
        self.save_peer(&me_addr, &own)?;
        d.removing.clear();
        d.published = true;
        d.refreshed_at = net.now_ms();
        self.save_primary_devices(d)
    }

    /// The account's devices: from the primary's file on the primary, from the account's
    /// newest published list on a linked device.
    pub async fn devices(&mut self, net: &Net) -> Result<Vec<DeviceInfo>, MessengerError> {
        let list = match self.account.role() {
            Role::Primary(_) => self.primary_devices(net.now_ms())?.list,
            Role::Linked => {
                let me = self.account.address;
                let mut own = self.load_peer(&me)?;
                self.refresh_bundles(net, &me, &mut own).await?;
                self.save_peer(&me, &own)?;
                if self.left_out(&own) {
                    return Err(self.removed()?);
                }
                own.list
                    .ok_or(MessengerError::Device(DeviceError::Malformed(
                        "account (no device list published)",
                    )))?
            }
        };
        let names = self.load_sync()?;
        let me = self.account.device().cert().signing_key();
        Ok(list
            .certs()
            .iter()
            .map(|c| DeviceInfo {
                device_id: c.device_id(),
                signing_key: c.signing_key(),
                created_at: c.created_at(),
                name: names.device_name(&c.signing_key()),
                this: c.signing_key() == me,
            })
            .collect())
    }

    /// The primary's side of linking (§6) for the code the person entered: asks the person to
    /// compare the SAS through `confirm`; once both devices confirmed and the new device's keys
    /// came, certifies it, records it in the device file, stores its delegation and the new
    /// list, and welcomes it, sending along the newest messages of this device's history that
    /// fit in `history_bytes` (0: none). Returns the new device's certificate.
    pub async fn approve_device(
        &mut self,
        net: &Net,
        code: &LinkCode,
        history_bytes: u64,
        mut confirm: impl FnMut(&str) -> bool,
    ) -> Result<DeviceCert, MessengerError> {
        let now = net.now_ms();
        let mut d = self.primary_devices(now)?;
        if d.list.certs().len() >= MAX_DEVICES {
            return Err(MessengerError::Device(DeviceError::TooManyDevices));
        }
        // Finish what an earlier run left, so the list below builds on a published one.
        if !d.published || !d.removing.is_empty() {
            self.publish_devices(net, &mut d).await?;
        }
        let mut link = Link::primary(code, &mut OsRng).map_err(MessengerError::Device)?;
        let mut inbox = TempInbox::new(link.mailbox_seed());
        let deadline = Instant::now() + Duration::from_millis(LINK_TTL_MS);
        let mut added: Option<DeviceCert> = None;
        loop {
            transmit(net, &mut link).await?;
            while let Some(event) = link.poll_event() {
                match event {
                    Event::Compare(sas) => {
                        let same = confirm(&sas);
                        link.confirm(same);
                    }
                    Event::Approve(request) => {
                        let cert = self.certify(net, &mut d, &request).await?;
                        let welcome = Welcome {
                            cert: cert.clone(),
                            sync_key: zeroize::Zeroizing::new(*self.account.sync_key()),
                            list: d.list.clone(),
                            history_chunks: 0,
                        };
                        let chunks = if history_bytes == 0 {
                            Vec::new()
                        } else {
                            let entries = self.dir.history(HISTORY_SCAN)?;
                            history_chunks(&history_to_transfer(&entries, history_bytes))
                        };
                        link.approve(welcome, &chunks);
                        added = Some(cert);
                    }
                    Event::Aborted(reason) => {
                        transmit(net, &mut link).await?;
                        return Err(MessengerError::LinkAborted(reason));
                    }
                    Event::Linked(_) | Event::History(_) | Event::Done => {}
                }
            }
            transmit(net, &mut link).await?;
            if link.is_finished() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(MessengerError::LinkTimedOut);
            }
            for data in inbox.poll(net, LINK_POLL).await? {
                link.handle(&data);
            }
        }
        added.ok_or(MessengerError::LinkAborted(
            devices::link::AbortReason::Unexpected,
        ))
    }

    /// Certifies the device that asked with `request`, records it (one atomic write of the
    /// device file, with the list unpublished), then stores its delegation and the new list.
    async fn certify(
        &mut self,
        net: &Net,
        d: &mut PrimaryDevices,
        request: &devices::link::DeviceRequest,
    ) -> Result<DeviceCert, MessengerError> {
        let now = net.now_ms();
        let identity = self.primary_identity()?;
        let used: HashSet<u32> = d.list.certs().iter().map(DeviceCert::device_id).collect();
        let mut id = OsRng.next_u32();
        while used.contains(&id) {
            id = OsRng.next_u32();
        }
        let cert = DeviceCert::issue(identity, &request.signing, &request.identity, id, now)
            .map_err(|source| MessengerError::Device(DeviceError::Session(source)))?;
        let mut certs = d.list.certs().to_vec();
        certs.push(cert.clone());
        d.list = DeviceList::sign(identity, next_version(d.list.version(), now), now, &certs)
            .map_err(MessengerError::Device)?;
        d.published = false;
        self.save_primary_devices(d)?;
        if !request.name.is_empty() {
            let mut names = self.load_sync()?;
            let device_id = self.account.device().cert().device_id();
            if names
                .set(
                    KIND_DEVICE_NAME,
                    &request.signing,
                    Some(request.name.as_bytes().to_vec()),
                    now,
                    device_id,
                )
                .is_ok()
            {
                self.save_sync(&names)?;
            }
        }
        self.publish_devices(net, d).await?;
        Ok(cert)
    }

    /// Removes the device `device_id` from the account (§7), on the primary: records the new
    /// list and the removal in one write, then deletes the device's delegation (nodes refuse
    /// it from then on), publishes the list and deletes the device's bundles. A crash leaves
    /// the removal recorded; the next command that reaches the network finishes it.
    pub async fn remove_device(
        &mut self,
        net: &Net,
        device_id: u32,
    ) -> Result<DeviceCert, MessengerError> {
        let now = net.now_ms();
        let identity = self.primary_identity()?;
        let mut d = self.primary_devices(now)?;
        let me = self.account.device().cert().device_id();
        let Some(gone) = d
            .list
            .certs()
            .iter()
            .find(|c| c.device_id() == device_id && device_id != me)
            .cloned()
        else {
            return Err(MessengerError::NoSuchDevice(device_id));
        };
        let certs: Vec<DeviceCert> = d
            .list
            .certs()
            .iter()
            .filter(|c| c.device_id() != device_id)
            .cloned()
            .collect();
        d.list = DeviceList::sign(identity, next_version(d.list.version(), now), now, &certs)
            .map_err(MessengerError::Device)?;
        d.published = false;
        d.removing.push(gone.signing_key());
        self.save_primary_devices(&d)?;
        self.publish_devices(net, &mut d).await?;
        Ok(gone)
    }

    /// On a linked device whose requests every member refused as not delegated: reads its
    /// account's list; a list without this device means it was removed (§7), anything else
    /// that the delegation lapsed (a primary offline for 14 days, §2.1).
    pub(crate) async fn refused_delegate(&mut self, net: &Net) -> MessengerError {
        let me = self.account.address;
        let Ok(mut own) = self.load_peer(&me) else {
            return MessengerError::NotDelegated;
        };
        if self.refresh_bundles(net, &me, &mut own).await.is_ok() {
            let _ = self.save_peer(&me, &own);
        }
        if self.left_out(&own) {
            return self.removed().unwrap_or_else(|e| e);
        }
        MessengerError::NotDelegated
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::session::DeviceKeys;
    use proptest::prelude::*;

    fn file() -> (Address, PrimaryDevices) {
        let account = Identity::from_seed(&[5; 32]);
        let keys = DeviceKeys::generate(&account, 7, 1_000, &mut OsRng);
        let list = DeviceList::sign(&account, 3, 2_000, &[keys.cert().clone()]).unwrap();
        (
            account.address(),
            PrimaryDevices {
                list,
                published: true,
                refreshed_at: 9_000,
                removing: vec![[1; 32], [2; 32]],
            },
        )
    }

    #[test]
    fn devices_file_round_trips_and_refuses_another_account() {
        let (address, d) = file();
        let bytes = d.encode();
        assert_eq!(PrimaryDevices::decode(&bytes, &address).unwrap(), d);
        let other = Identity::from_seed(&[6; 32]).address();
        assert_eq!(
            PrimaryDevices::decode(&bytes, &other),
            Err(DeviceError::WrongAccount)
        );
        let mut flags = bytes.clone();
        let at = 3 + d.list.as_bytes().len();
        flags[at] = 2;
        assert!(PrimaryDevices::decode(&flags, &address).is_err());
        assert!(PrimaryDevices::decode(&[bytes.as_slice(), &[0]].concat(), &address).is_err());
    }

    #[test]
    fn history_transfer_takes_the_newest_that_fit_once_each() {
        let peer = Identity::from_seed(&[9; 32]).address();
        let entry = |direction, id: u8, text: &str| HistoryEntry {
            direction,
            peer: peer.to_string(),
            timestamp_ms: u64::from(id),
            msg_id: [id; 16],
            text: text.into(),
            delivery: None,
        };
        let entries = vec![
            entry(Direction::Received, 1, "oldest"),
            entry(Direction::Sent, 2, "sent"),
            // A later line of the same sent message (its delivery changed): not a new message.
            entry(Direction::Sent, 2, "sent"),
            entry(Direction::Received, 3, "newest"),
        ];
        let all = history_to_transfer(&entries, u64::MAX);
        let texts: Vec<&str> = all.iter().map(|h| h.text.as_str()).collect();
        assert_eq!(texts, ["oldest", "sent", "newest"]);
        let two = 2 * HISTORY_ENTRY_OVERHEAD as u64 + 10;
        let texts: Vec<String> = history_to_transfer(&entries, two)
            .into_iter()
            .map(|h| h.text)
            .collect();
        assert_eq!(texts, ["sent", "newest"]);
        assert!(history_to_transfer(&entries, 0).is_empty());
    }

    #[test]
    fn versions_go_forward_from_either_the_previous_or_the_clock() {
        assert_eq!(next_version(0, 5_000), 5_000);
        assert_eq!(next_version(9_000, 5_000), 9_001);
        assert_eq!(next_version(u64::MAX, 5), u64::MAX);
    }

    proptest! {
        /// A damaged devices file is an error, never a panic.
        #[test]
        fn damaged_devices_files_never_panic(
            cut in 0usize..2_000,
            flip in proptest::collection::vec((0usize..2_000, any::<u8>()), 0..4),
            junk in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let (address, d) = file();
            let mut bytes = d.encode();
            for (at, x) in flip {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= x;
                }
            }
            bytes.truncate(cut);
            let _ = PrimaryDevices::decode(&bytes, &address);
            let _ = PrimaryDevices::decode(&junk, &address);
        }
    }
}
