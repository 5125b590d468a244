//! Messages between people: the device's keys and prekeys, sessions with every device of a peer,
//! sending through an outbox that survives crashes, and receiving in an order that a crash at
//! any point can neither lose nor repeat (`whitepaper/sessions.md` §14).
//!
//! This is the library the `allium` command and `allium chat` are built on; it prints nothing.
//!
//! * [`Account`]: this device's account identity, device keys and prekey secrets, created on
//!   first use and kept in the data directory.
//! * [`Messenger::publish`]: rotates the prekeys when due and publishes the bundle in the
//!   account's public namespace.
//! * [`Messenger::send_text`]: fetches the recipient's bundles when stale, seals one envelope per
//!   device (starting sessions where there are none), keeps them in the peer's outbox together
//!   with the advanced sessions, and stores them in the recipient's inbox.
//! * [`Messenger::receive`]: pages through the inbox, opens and decrypts what is new, records it
//!   in the history, and only then saves the advanced session and the cursor.

pub mod payload;
pub mod peer;

use std::collections::{BTreeMap, HashSet};

use allium_proto::cursor::{Cursor, DEFAULT_OVERLAP_MS};
use allium_proto::storage::{CursorKey, PUBLIC, RetrieveResponse};
use allium_proto::{Mailbox, MessageHash};
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};

use crate::identity::{Address, Identity};
use crate::net::{Net, NetError, PathReport};
use crate::session::{
    self, DeviceKeys, PeerSessions, PrekeyBundle, PrekeyStore, SessionError, envelope,
};
use crate::state::{
    ClientState, DataDir, Delivery, Direction, HistoryEntry, SavedCursor, StateError,
};
use payload::{AppMessage, Content};
use peer::{MAX_DEVICES, MAX_OUTBOX, Outgoing, PeerRecord, PeerRecordError};

/// Bundles fetched longer ago than this are fetched again before a send, so a sender soon finds
/// a peer's new device and new prekeys; a message from a device without a known bundle makes
/// them stale at once.
pub const BUNDLE_REFRESH_MS: u64 = 5 * 60 * 1000;
/// Record type of a prekey bundle in the public namespace (sessions.md §3.4).
pub const RECORD_BUNDLE: u8 = 1;
/// History entries read back to know which messages are recorded already.
const HISTORY_INDEX: usize = crate::state::MAX_SEEN;

/// Why a messaging operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    /// The data directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// The network.
    #[error(transparent)]
    Net(#[from] NetError),
    /// An attachment could not be sent or recorded.
    #[error(transparent)]
    Attach(#[from] crate::attach::AttachError),
    /// A key file of this device does not decode.
    #[error("{file} in the data directory is damaged ({source}); move it away to start afresh")]
    Keys {
        /// The file.
        file: &'static str,
        /// Why.
        source: SessionError,
    },
    /// A peer file does not decode.
    #[error("the saved state for {peer} is damaged ({source})")]
    Peer {
        /// The peer's address.
        peer: String,
        /// Why.
        source: PeerRecordError,
    },
    /// The recipient has published no valid prekey bundle: it has never been online with this
    /// version, or not for longer than a bundle lives.
    #[error("{0} has published no keys to send to (it has not been online recently)")]
    NoBundle(String),
    /// The message does not fit the largest envelope.
    #[error("message too large: {0}")]
    TooLarge(SessionError),
    /// The outbox for this peer is full of unacknowledged envelopes.
    #[error("{0} envelopes to this person are still waiting for the network")]
    OutboxFull(usize),
    /// Sealing or starting a session failed.
    #[error("cannot encrypt to {peer}: {source}")]
    Seal {
        /// The peer.
        peer: String,
        /// Why.
        source: SessionError,
    },
}

/// This device's account identity, device keys and prekey secrets.
#[derive(Debug)]
pub struct Account {
    identity: Identity,
    device: DeviceKeys,
    prekeys: PrekeyStore,
}

impl Account {
    /// Loads the device keys and prekeys of `identity` from `dir`, creating the device keys
    /// (a new device of the account) on first use.
    pub fn open(dir: &DataDir, identity: Identity, now: u64) -> Result<Account, MessengerError> {
        let device = match dir.read_device()? {
            Some(bytes) => DeviceKeys::decode(&bytes).map_err(|source| MessengerError::Keys {
                file: crate::state::DEVICE_FILE,
                source,
            })?,
            None => {
                let d = DeviceKeys::generate(&identity, OsRng.next_u32(), now, &mut OsRng);
                dir.write_device(&d.encode(), false)?;
                d
            }
        };
        if device.cert().account_key() != identity.public().to_bytes() {
            // The identity was replaced (init --force, restore): this device starts over.
            return Err(MessengerError::Keys {
                file: crate::state::DEVICE_FILE,
                source: SessionError::WrongAccount,
            });
        }
        let prekeys = match dir.read_prekeys()? {
            Some(bytes) => PrekeyStore::decode(&bytes).map_err(|source| MessengerError::Keys {
                file: crate::state::PREKEYS_FILE,
                source,
            })?,
            None => PrekeyStore::new(),
        };
        Ok(Account {
            identity,
            device,
            prekeys,
        })
    }

    /// The account identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This device's keys.
    pub fn device(&self) -> &DeviceKeys {
        &self.device
    }

    fn mailbox(&self) -> Mailbox {
        Mailbox::from(self.identity.public())
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.identity.seed())
    }
}

/// A message that was sent: acknowledged by the recipient's swarm.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The application message id.
    pub msg_id: [u8; 16],
    /// Devices of the recipient it was sealed to.
    pub devices: usize,
    /// Members that acknowledged the last envelope.
    pub holders: usize,
    /// Members of the recipient's swarm.
    pub members: usize,
    /// The path of the last envelope stored.
    pub path: PathReport,
}

/// A message received, decrypted and recorded.
#[derive(Debug, Clone)]
pub struct Received {
    /// The sender's account.
    pub from: Address,
    /// The sending device's id.
    pub device_id: u32,
    /// The application message.
    pub message: AppMessage,
    /// When the swarm first accepted it (node time).
    pub stored_ms: u64,
    /// The path of the fetch that brought it.
    pub path: PathReport,
}

/// Something a receive round skipped, worth telling the person about.
#[derive(Debug, Clone)]
pub enum Skipped {
    /// An inbox item that is not an envelope to this device (anyone may deposit).
    Unreadable(SessionError),
    /// An envelope that opened but whose session message did not decrypt.
    Undecryptable {
        /// The claimed sender.
        from: Option<Address>,
        /// Why.
        error: SessionError,
    },
    /// A message of a kind this version does not read.
    UnknownContent(payload::PayloadError),
}

/// Sends and receives for one account on this device.
#[derive(Debug)]
pub struct Messenger {
    dir: DataDir,
    account: Account,
    /// Received message ids recorded in the history (the recent ones): a message decrypted
    /// twice after a crash is recorded once.
    recorded: HashSet<[u8; 16]>,
    /// Sent message ids the history records: an outbox entry left by a crash before its history
    /// line gets one when it is flushed.
    recorded_sent: HashSet<[u8; 16]>,
}

impl Messenger {
    /// The messenger of `account` over `dir`.
    pub fn new(dir: DataDir, account: Account) -> Result<Messenger, MessengerError> {
        let mut recorded = HashSet::new();
        let mut recorded_sent = HashSet::new();
        for e in dir.history(HISTORY_INDEX)? {
            match e.direction {
                Direction::Received => recorded.insert(e.msg_id),
                Direction::Sent => recorded_sent.insert(e.msg_id),
            };
        }
        Ok(Messenger {
            dir,
            account,
            recorded,
            recorded_sent,
        })
    }

    /// The account.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Rotates the prekeys when the newest is older than the rotation period (or there is
    /// none), saving the secrets before anything is published, then publishes the newest bundle
    /// if `state` does not record it as published. Returns whether it published.
    pub async fn publish(
        &mut self,
        net: &Net,
        state: &mut ClientState,
    ) -> Result<bool, MessengerError> {
        let now = net.now_ms();
        let due = self
            .account
            .prekeys
            .current()
            .is_none_or(|c| now.saturating_sub(c.valid_from) >= session::PREKEY_ROTATION_MS);
        if due {
            self.account
                .prekeys
                .rotate(
                    &self.account.device,
                    now,
                    session::PREKEY_LIFETIME_MS,
                    &mut OsRng,
                )
                .map_err(|source| MessengerError::Keys {
                    file: crate::state::PREKEYS_FILE,
                    source,
                })?;
        } else {
            self.account.prekeys.prune(now);
        }
        self.dir.write_prekeys(&self.account.prekeys.encode())?;
        let Some(current) = self.account.prekeys.current() else {
            return Ok(false);
        };
        if state.published_prekey() == Some(current.spk_id) {
            return Ok(false);
        }
        let bundle = current.bundle(&self.account.device);
        let ttl_ms = bundle.expires().saturating_sub(now).max(1);
        let mut record = Vec::with_capacity(1 + bundle.as_bytes().len());
        record.push(RECORD_BUNDLE);
        record.extend_from_slice(bundle.as_bytes());
        let key = self.account.signing_key();
        net.store_in(&self.account.mailbox(), PUBLIC, ttl_ms, record, Some(&key))
            .await?;
        state.set_published_prekey(current.spk_id);
        Ok(true)
    }

    fn load_peer(&self, account: &Address) -> Result<PeerRecord, MessengerError> {
        let key = account.public_key().to_bytes();
        match self.dir.read_peer(&key)? {
            None => Ok(PeerRecord::default()),
            Some(bytes) => PeerRecord::decode(&bytes).map_err(|source| MessengerError::Peer {
                peer: account.to_string(),
                source,
            }),
        }
    }

    fn save_peer(&self, account: &Address, record: &PeerRecord) -> Result<(), MessengerError> {
        let key = account.public_key().to_bytes();
        Ok(self.dir.write_peer(&key, &record.encode())?)
    }

    /// Fetches `account`'s published bundles and keeps, per device, the newest valid one.
    async fn refresh_bundles(
        &self,
        net: &Net,
        account: &Address,
        record: &mut PeerRecord,
    ) -> Result<(), MessengerError> {
        let now = net.now_ms();
        let items = net
            .fetch_public(&Mailbox::from_bytes(account.public_key().to_bytes()))
            .await?;
        let mut newest: BTreeMap<[u8; 32], PrekeyBundle> = BTreeMap::new();
        for item in items {
            let Some((&RECORD_BUNDLE, bytes)) = item.data.split_first() else {
                continue;
            };
            // Anything else the owner published, or a bundle that is not valid now, is skipped.
            let Ok(bundle) = PrekeyBundle::verify(bytes, account, now) else {
                continue;
            };
            let device = bundle.cert().signing_key();
            let newer = newest
                .get(&device)
                .is_none_or(|b| b.valid_from() < bundle.valid_from());
            if newer {
                newest.insert(device, bundle);
            }
        }
        let mut bundles: Vec<PrekeyBundle> = newest.into_values().collect();
        // An account certifies at most MAX_DEVICES devices; the most recently certified win.
        bundles.sort_by_key(|b| std::cmp::Reverse(b.cert().created_at()));
        bundles.truncate(MAX_DEVICES);
        record.bundles = bundles;
        record.fetched_at = now;
        Ok(())
    }

    /// Refuses a text that no envelope can carry, before anything is sealed or sent.
    pub fn check_size(text: &str) -> Result<(), MessengerError> {
        let largest =
            payload::HEADER_LEN + text.len() + session::START_OVERHEAD + session::RATCHET_OVERHEAD;
        match envelope::bucket_for(largest) {
            Some(_) => Ok(()),
            None => Err(MessengerError::TooLarge(SessionError::TooLarge)),
        }
    }

    /// A fresh random message id.
    pub fn new_msg_id() -> [u8; 16] {
        let mut msg_id = [0u8; 16];
        OsRng.fill_bytes(&mut msg_id);
        msg_id
    }

    /// Sends `text` to every device of `to`. The envelopes and the advanced sessions are saved
    /// together before anything goes out; an envelope stays in the outbox until the swarm
    /// acknowledges it, so a crash or an unreachable network loses nothing (the next
    /// [`Self::flush`] sends it, byte for byte).
    pub async fn send_text(
        &mut self,
        net: &Net,
        to: &Address,
        text: &str,
    ) -> Result<Sent, MessengerError> {
        self.send_text_as(net, to, text, Self::new_msg_id()).await
    }

    /// [`Self::send_text`] under a message id the caller chose ([`Self::new_msg_id`]), so it
    /// can follow the message before the send returns. A retry of a send that failed before
    /// the message entered the outbox may reuse the id: recipients record a message id once.
    pub async fn send_text_as(
        &mut self,
        net: &Net,
        to: &Address,
        text: &str,
        msg_id: [u8; 16],
    ) -> Result<Sent, MessengerError> {
        Self::check_size(text)?;
        self.send_content_as(net, to, Content::Text(text.to_owned()), msg_id)
            .await
    }

    /// Announces an uploaded file to every device of `to` (attachments.md §4), under the
    /// message id the upload kept, so a resumed upload announces it once.
    pub async fn send_file(
        &mut self,
        net: &Net,
        to: &Address,
        upload: &crate::attach::Upload,
    ) -> Result<Sent, MessengerError> {
        self.send_content_as(net, to, Content::File(upload.file.clone()), upload.msg_id)
            .await
    }

    async fn send_content_as(
        &mut self,
        net: &Net,
        to: &Address,
        content: Content,
        msg_id: [u8; 16],
    ) -> Result<Sent, MessengerError> {
        let now = net.now_ms();
        let message = AppMessage {
            msg_id,
            sent_ms: now,
            content,
        };
        let plaintext = message.encode();
        let mut record = self.load_peer(to)?;
        if record.outbox.len() >= MAX_OUTBOX {
            return Err(MessengerError::OutboxFull(record.outbox.len()));
        }
        let stale = now.saturating_sub(record.fetched_at) >= BUNDLE_REFRESH_MS
            || record.bundles.iter().any(|b| b.check_time(now).is_err());
        if record.bundles.is_empty() || stale {
            self.refresh_bundles(net, to, &mut record).await?;
        }
        if record.bundles.is_empty() {
            return Err(MessengerError::NoBundle(to.to_string()));
        }
        let seal_err = |source| MessengerError::Seal {
            peer: to.to_string(),
            source,
        };
        // Never to this device itself: a note to one's own account goes to one's other devices.
        let me = self.account.device.cert().signing_key();
        if record.bundles.iter().all(|b| b.cert().signing_key() == me) {
            return Err(MessengerError::NoBundle(to.to_string()));
        }
        let mut sealed = Vec::with_capacity(record.bundles.len());
        for bundle in record
            .bundles
            .iter()
            .filter(|b| b.cert().signing_key() != me)
        {
            let device = bundle.cert().signing_key();
            let sessions = record
                .sessions
                .entry(device)
                .or_insert_with(PeerSessions::new);
            if sessions.active().is_none() {
                sessions
                    .initiate(&self.account.device, bundle, now, &mut OsRng)
                    .map_err(seal_err)?;
            }
            let payload = sessions.encrypt(&plaintext).map_err(seal_err)?;
            let env = envelope::seal(&self.account.device, bundle, &payload, now, &mut OsRng)
                .map_err(|e| match e {
                    SessionError::TooLarge => MessengerError::TooLarge(e),
                    e => seal_err(e),
                })?;
            sealed.push(Outgoing {
                msg_id,
                device,
                envelope: env,
                message: plaintext.clone(),
            });
        }
        let devices = sealed.len();
        record.outbox.extend(sealed);
        // One atomic write: the spent chain keys and the envelopes they sealed.
        self.save_peer(to, &record)?;
        let last = self.flush_peer(net, to, &mut record, Some(msg_id)).await?;
        let Some((holders, members, path)) = last else {
            return Err(MessengerError::Net(NetError::NoSwarm));
        };
        Ok(Sent {
            msg_id,
            devices,
            holders,
            members,
            path,
        })
    }

    /// Records an outgoing message in the history (once) with its delivery.
    fn record_sent(
        &mut self,
        to: &Address,
        out: &Outgoing,
        delivery: Delivery,
    ) -> Result<(), MessengerError> {
        let Ok(message) = AppMessage::decode(&out.message) else {
            return Ok(());
        };
        let text = message.content.summary();
        self.dir.append_history(&HistoryEntry {
            direction: Direction::Sent,
            peer: to.to_string(),
            timestamp_ms: message.sent_ms,
            msg_id: out.msg_id,
            text,
            delivery: Some(delivery),
        })?;
        self.recorded_sent.insert(out.msg_id);
        Ok(())
    }

    /// Stores the outbox of one peer, oldest first, removing each envelope once acknowledged.
    /// The history records each message as sending before its first envelope goes out (also a
    /// message a crash left in the outbox unrecorded) and as stored once its last one is
    /// acknowledged. Returns the acknowledgement of the last envelope of message `wanted`.
    async fn flush_peer(
        &mut self,
        net: &Net,
        to: &Address,
        record: &mut PeerRecord,
        wanted: Option<[u8; 16]>,
    ) -> Result<Option<(usize, usize, PathReport)>, MessengerError> {
        let mailbox = Mailbox::from_bytes(to.public_key().to_bytes());
        let mut last = None;
        while let Some(next) = record.outbox.first().cloned() {
            if !self.recorded_sent.contains(&next.msg_id) {
                self.record_sent(to, &next, Delivery::Sending)?;
            }
            let stored = net.store(&mailbox, next.envelope.clone()).await?;
            record.outbox.remove(0);
            self.save_peer(to, record)?;
            let members = net
                .roster()
                .map_or(0, |h| h.roster().members_for(&mailbox).len());
            if Some(next.msg_id) == wanted {
                last = Some((stored.holders.len(), members, stored.path));
            }
            if !record.outbox.iter().any(|o| o.msg_id == next.msg_id) {
                let delivery = Delivery::Stored {
                    holders: u32::try_from(stored.holders.len()).unwrap_or(u32::MAX),
                    members: u32::try_from(members).unwrap_or(u32::MAX),
                };
                self.record_sent(to, &next, delivery)?;
            }
        }
        Ok(last)
    }

    /// Sends whatever earlier runs left in the outboxes (after a crash or an unreachable
    /// network). Returns how many envelopes went out.
    pub async fn flush(&mut self, net: &Net) -> Result<usize, MessengerError> {
        let mut sent = 0;
        for key in self.dir.peers()? {
            let Ok(to) = Address::from_key_bytes(&key) else {
                continue;
            };
            let mut record = self.load_peer(&to)?;
            if record.outbox.is_empty() {
                continue;
            }
            let before = record.outbox.len();
            self.flush_peer(net, &to, &mut record, None).await?;
            sent += before - record.outbox.len();
        }
        Ok(sent)
    }

    /// Fetches every page of new inbox messages once (the first waiting up to `wait`), and for
    /// each new message: decrypts it, records it in the history, calls `on_message`, then saves
    /// the advanced session. The cursor in `state` moves past what was handled; the caller saves
    /// `state`. `on_skip` hears about inbox items that could not be read. Returns the number of
    /// messages received.
    pub async fn receive(
        &mut self,
        net: &Net,
        state: &mut ClientState,
        wait: std::time::Duration,
        mut on_message: impl FnMut(&Received),
        mut on_skip: impl FnMut(&Skipped),
    ) -> Result<usize, MessengerError> {
        let key = self.account.signing_key();
        let mailbox = key.verifying_key().to_bytes();
        let safe = state.cursor(&mailbox).map(|c| CursorKey {
            timestamp: c.timestamp,
            hash: MessageHash(c.hash),
        });
        let mut cursor = Cursor::resume(DEFAULT_OVERLAP_MS, safe);
        let mut received = 0;
        let mut wait = wait;
        loop {
            let page = net.fetch(&key, cursor.after(), wait).await?;
            wait = std::time::Duration::ZERO;
            let fresh = cursor.accept(
                page.node_now,
                &RetrieveResponse {
                    messages: page.messages,
                    more: page.more,
                },
            );
            for m in fresh {
                if state.seen_hash(&m.hash.0) {
                    continue;
                }
                let now = net.now_ms();
                if let Some(r) = self.handle(&m.data, m.timestamp, now, &page.path, &mut on_skip)? {
                    on_message(&r);
                    received += 1;
                }
                state.mark_seen_hash(&m.hash.0);
            }
            if let Some(safe) = cursor.safe() {
                state.set_cursor(
                    &mailbox,
                    SavedCursor {
                        timestamp: safe.timestamp,
                        hash: safe.hash.0,
                    },
                );
            }
            if !page.more {
                return Ok(received);
            }
        }
    }

    /// One inbox item: open, decrypt, record, save the session. `Ok(None)` when there is
    /// nothing new to show.
    fn handle(
        &mut self,
        data: &[u8],
        stored_ms: u64,
        now: u64,
        path: &PathReport,
        on_skip: &mut impl FnMut(&Skipped),
    ) -> Result<Option<Received>, MessengerError> {
        let opened = match envelope::open(&self.account.prekeys, data, now) {
            Ok(o) => o,
            Err(e) => {
                on_skip(&Skipped::Unreadable(e));
                return Ok(None);
            }
        };
        let Some(from) = opened.sender.account() else {
            on_skip(&Skipped::Unreadable(SessionError::WeakKey));
            return Ok(None);
        };
        let mut record = self.load_peer(&from)?;
        let device = opened.sender.signing_key();
        let mut sessions = record.sessions.get(&device).cloned().unwrap_or_default();
        let plaintext = match sessions.decrypt(
            &self.account.device,
            &self.account.prekeys,
            &opened,
            now,
            &mut OsRng,
        ) {
            Ok(p) => p,
            // Its key is gone: this message was handled before a crash cut the round short.
            Err(SessionError::Duplicate) => return Ok(None),
            Err(error) => {
                on_skip(&Skipped::Undecryptable {
                    from: Some(from),
                    error,
                });
                return Ok(None);
            }
        };
        let message = AppMessage::decode(&plaintext);
        record.sessions.insert(device, sessions);
        if record.bundle(&device).is_none() {
            // A device of theirs we have no bundle for: fetch theirs before the next send.
            record.fetched_at = 0;
        }
        let out = match message {
            Ok(message) if !self.recorded.contains(&message.msg_id) => {
                let text = message.content.summary();
                if let Content::File(file) = &message.content {
                    // Before the history line: once that is written this message is never
                    // handled again, and its file must not be lost with it.
                    crate::attach::Transfers::open(self.dir.path())?
                        .register_download(file, &from.to_string())?;
                }
                // Recorded first: if the session save below does not happen, the message is
                // decrypted again next time and found here, never shown twice.
                self.dir.append_history(&HistoryEntry {
                    direction: Direction::Received,
                    peer: from.to_string(),
                    timestamp_ms: message.sent_ms,
                    msg_id: message.msg_id,
                    text,
                    delivery: None,
                })?;
                self.recorded.insert(message.msg_id);
                Some(Received {
                    from,
                    device_id: opened.sender.device_id(),
                    message,
                    stored_ms,
                    path: path.clone(),
                })
            }
            Ok(_) => None,
            Err(e) => {
                on_skip(&Skipped::UnknownContent(e));
                None
            }
        };
        self.save_peer(&from, &record)?;
        Ok(out)
    }
}
