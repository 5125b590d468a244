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
//! * [`Messenger::send_text`]: fetches the recipient's device list and bundles when stale, seals
//!   one envelope per listed device (starting sessions where there are none), packs them into
//!   one stored item (a container, `whitepaper/devices.md` §4), keeps it in the peer's outbox
//!   together with the advanced sessions, makes the copy for this account's other devices, and
//!   stores both.
//! * [`Messenger::delivery_token`]: this device's delivery token, registered with the swarm and
//!   handed to each contact with the next message to it, so that contacts' stores enter the inbox
//!   while strangers' go to the capped requests share (`whitepaper/storage.md` §4.5).
//! * [`Messenger::receive`]: pages through the requests share and the inbox, opens the envelope meant for this device
//!   and decrypts what is new, records it in the history, and only then saves the advanced
//!   session and the cursor.

pub mod groups;
pub mod linking;
pub mod payload;
pub mod peer;
pub mod shared;
pub mod token;

use std::collections::{BTreeMap, HashSet};

use allium_proto::cursor::{Cursor, DEFAULT_OVERLAP_MS};
use allium_proto::storage::{
    CursorKey, INBOX, Namespace, PUBLIC, REQUESTS, RetrieveResponse, TOKENS,
};
use allium_proto::{Mailbox, MessageHash, NodeId};
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::devices::list::{DeviceList, RECORD_LIST};
use crate::devices::{self, DeviceError, container};
use crate::identity::{Address, Identity};
use crate::net::{Delegate, MailboxSigner, Net, NetError, PathReport};
use crate::session::{self, DeviceKeys, PrekeyBundle, PrekeyStore, SessionError, envelope};
use crate::state::{
    ClientState, DataDir, Delivery, Direction, HistoryEntry, SavedCursor, StateError,
};
use payload::{AppMessage, Content, Incoming};
use peer::{MAX_DEVICES, MAX_OUTBOX, Outgoing, PeerRecord, PeerRecordError};

/// Bundles fetched longer ago than this are fetched again before a send, so a sender soon finds
/// a peer's new device and new prekeys; a message from a device without a known bundle makes
/// them stale at once.
pub const BUNDLE_REFRESH_MS: u64 = 5 * 60 * 1000;
/// Record type of a prekey bundle in the public namespace (sessions.md §3.4).
pub const RECORD_BUNDLE: u8 = 1;
/// History entries read back to know which messages are recorded already.
const HISTORY_INDEX: usize = crate::state::MAX_SEEN;
/// Rounds of one fetch started again because their member stopped answering mid-round. Each
/// restart follows a page that was answered, so a fetch still ends; a busy swarm may need a few.
const MAX_ROUND_RESTARTS: usize = 8;

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
    /// Only the primary device (the one that holds the recovery phrase) can do this.
    #[error("only the account's primary device (the one with the recovery phrase) can do this")]
    NotPrimary,
    /// The account removed this device.
    #[error("{0}")]
    Removed(String),
    /// This device's copy of the shared state does not decode.
    #[error("{file} in the data directory is damaged ({source}); move it away to start afresh")]
    Shared {
        /// The file.
        file: &'static str,
        /// Why.
        source: DeviceError,
    },
    /// `devices link` in a data directory that already holds an account.
    #[error("this data directory already holds an account; link from an empty one")]
    AlreadyLinked,
    /// Linking stopped, and nothing was linked.
    #[error("linking stopped: {0}; nothing was linked")]
    LinkAborted(devices::link::AbortReason),
    /// Linking did not finish within the time its messages live.
    #[error("linking did not finish within 10 minutes; nothing was linked")]
    LinkTimedOut,
    /// No device of the account has this id (or it is this device).
    #[error("the account has no other device with id {0} (see `allium devices list`)")]
    NoSuchDevice(u32),
    /// Every member of the swarm refused this linked device's requests, and the account's list
    /// still names it: the delegation lapsed (the primary has been offline for 14 days).
    #[error(
        "the network no longer accepts this device for the account: open the primary device \
         to renew it"
    )]
    NotDelegated,
    /// A device format or linking step failed.
    #[error(transparent)]
    Device(DeviceError),
    /// A group command failed.
    #[error(transparent)]
    Group(#[from] groups::GroupFailure),
}

/// Which device of the account this is.
#[derive(Debug)]
pub enum Role {
    /// It holds the account seed (made by `init` or `restore`): it certifies devices and signs
    /// the device list.
    Primary(Box<Identity>),
    /// A device the primary linked: it never sees the seed, and acts on the account's mailbox
    /// as a delegate (`whitepaper/devices.md` §2).
    Linked,
}

/// A linked device's account secrets (`account.bin`): the sync key and the version of the
/// device list that added it.
///
/// ```text
/// account = 0x01 || sync key (32) || u64be(joined version)
/// ```
#[derive(Clone)]
pub struct LinkedSecrets {
    /// The account's sync key.
    pub sync_key: Zeroizing<[u8; 32]>,
    /// The version of the list that first held this device: a later list without it removed it.
    pub joined_version: u64,
}

impl std::fmt::Debug for LinkedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkedSecrets")
            .field("joined_version", &self.joined_version)
            .finish_non_exhaustive()
    }
}

impl LinkedSecrets {
    /// The file's encoding; wiped on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(41));
        out.push(1);
        out.extend_from_slice(self.sync_key.as_ref());
        out.extend_from_slice(&self.joined_version.to_be_bytes());
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() != 41 || bytes[0] != 1 {
            return Err(SessionError::Malformed {
                what: "account file",
            });
        }
        let mut sync_key = Zeroizing::new([0u8; 32]);
        sync_key.copy_from_slice(&bytes[1..33]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&bytes[33..]);
        Ok(LinkedSecrets {
            sync_key,
            joined_version: u64::from_be_bytes(v),
        })
    }
}

/// This device's account, device keys and prekey secrets.
#[derive(Debug)]
pub struct Account {
    role: Role,
    address: Address,
    device: DeviceKeys,
    prekeys: PrekeyStore,
    sync_key: Zeroizing<[u8; 32]>,
    joined_version: u64,
}

impl Account {
    /// Loads the device keys and prekeys of `identity` from `dir`, creating the device keys
    /// (a new device of the account) on first use: the primary device.
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
        let prekeys = Self::read_prekeys(dir)?;
        let sync_key = devices::sync_key(&identity).map_err(MessengerError::Device)?;
        Ok(Account {
            address: identity.address(),
            role: Role::Primary(Box::new(identity)),
            device,
            prekeys,
            sync_key,
            joined_version: 0,
        })
    }

    /// Loads this device's account, whichever device it is: the primary if the directory holds
    /// the seed, else a linked device (its keys, certificate and account file).
    pub fn load(dir: &DataDir, now: u64) -> Result<Account, MessengerError> {
        if let Some(reason) = dir.read_private(crate::state::REMOVED_FILE, 4096)? {
            return Err(MessengerError::Removed(
                String::from_utf8_lossy(&reason).into_owned(),
            ));
        }
        if dir.has_identity() {
            let identity = Identity::from_seed(&*dir.read_identity()?);
            return Self::open(dir, identity, now);
        }
        let keys_err = |file, source| MessengerError::Keys { file, source };
        let Some(bytes) = dir.read_device()? else {
            return Err(MessengerError::State(StateError::NoIdentity {
                path: dir.path().join(crate::state::IDENTITY_FILE),
            }));
        };
        let device =
            DeviceKeys::decode(&bytes).map_err(|e| keys_err(crate::state::DEVICE_FILE, e))?;
        let secrets = dir
            .read_private(crate::state::ACCOUNT_FILE, 4096)?
            .ok_or(keys_err(
                crate::state::ACCOUNT_FILE,
                SessionError::Malformed {
                    what: "account file (missing)",
                },
            ))?;
        let secrets =
            LinkedSecrets::decode(&secrets).map_err(|e| keys_err(crate::state::ACCOUNT_FILE, e))?;
        let address = device
            .cert()
            .account()
            .ok_or(keys_err(crate::state::DEVICE_FILE, SessionError::WeakKey))?;
        Ok(Account {
            role: Role::Linked,
            address,
            prekeys: Self::read_prekeys(dir)?,
            device,
            sync_key: secrets.sync_key,
            joined_version: secrets.joined_version,
        })
    }

    fn read_prekeys(dir: &DataDir) -> Result<PrekeyStore, MessengerError> {
        match dir.read_prekeys()? {
            Some(bytes) => PrekeyStore::decode(&bytes).map_err(|source| MessengerError::Keys {
                file: crate::state::PREKEYS_FILE,
                source,
            }),
            None => Ok(PrekeyStore::new()),
        }
    }

    /// The account seed's identity, on the primary device.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.role {
            Role::Primary(identity) => Some(identity),
            Role::Linked => None,
        }
    }

    /// Which device this is.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The account's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// This device's keys.
    pub fn device(&self) -> &DeviceKeys {
        &self.device
    }

    /// The account's sync key (`whitepaper/devices.md` §8.1).
    pub fn sync_key(&self) -> &[u8; 32] {
        &self.sync_key
    }

    fn mailbox(&self) -> Mailbox {
        Mailbox::from_bytes(self.address.public_key().to_bytes())
    }

    /// The account's mailbox and what signs for it on this device (attachments go into its
    /// blob namespace).
    pub fn mailbox_signer(&self) -> Result<(Mailbox, Box<dyn MailboxSigner>), MessengerError> {
        Ok((self.mailbox(), self.signing_key()?))
    }

    /// What signs requests to the account's mailbox: the account key on the primary, the
    /// device's own signing key as a delegate on a linked device (devices.md §2.1).
    fn signing_key(&self) -> Result<Box<dyn MailboxSigner>, MessengerError> {
        Ok(match &self.role {
            Role::Primary(identity) => Box::new(SigningKey::from_bytes(&identity.seed())),
            Role::Linked => Box::new(Delegate(self.device.signing_secret().clone())),
        })
    }
}

/// A message that was sent: acknowledged by the recipient's swarm.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The application message id.
    pub msg_id: [u8; 16],
    /// Devices of the recipient it was sealed to.
    pub devices: usize,
    /// Stored items it took (one, unless its envelopes do not fit one item together).
    pub items: usize,
    /// This account's other devices that get a copy.
    pub copies: usize,
    /// Members that acknowledged the last item.
    pub holders: usize,
    /// Members of the recipient's swarm.
    pub members: usize,
    /// The path of the last item stored.
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
    /// For a copy of a message another device of this account sent: to whom it was sent.
    pub copy_to: Option<Address>,
    /// When the swarm first accepted it (node time).
    pub stored_ms: u64,
    /// The stored item's content hash: what `delete` names (storage.md §5.1).
    pub stored_hash: MessageHash,
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
    /// A message from a device its account no longer lists (removed).
    Unlisted {
        /// The account.
        from: Address,
        /// The device id.
        device_id: u32,
    },
}

/// What one inbox item came to.
enum Outcome {
    Nothing,
    Shown(Box<Received>),
    /// The sending device is not on the list held for its account: fetch the list and retry.
    NotListed(Address, u32),
    /// The account's newest list leaves this device out.
    Removed,
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
    /// line gets one when it is flushed, and a sent copy from another device is recorded once.
    recorded_sent: HashSet<[u8; 16]>,
    /// How old the newest prekey set may get before [`Self::publish`] rotates.
    rotation_ms: u64,
    /// What happened to groups since the caller last asked (invitations, answers, removals).
    group_events: Vec<groups::GroupEvent>,
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
            rotation_ms: session::PREKEY_ROTATION_MS,
            group_events: Vec::new(),
        })
    }

    /// Reads again what another process on this data directory may have changed since this
    /// messenger was made (a `send` beside a `listen`): the account's keys and prekeys, and the
    /// messages the history records. The caller holds the data directory's lock, so nothing
    /// changes them until it lets go.
    pub fn reload(&mut self, now: u64) -> Result<(), MessengerError> {
        let account = Account::load(&self.dir, now)?;
        let rotation_ms = self.rotation_ms;
        *self = Messenger::new(self.dir.clone(), account)?;
        self.rotation_ms = rotation_ms;
        Ok(())
    }

    /// Rotates prekeys after `ms` instead of [`session::PREKEY_ROTATION_MS`]: a fault hook for
    /// tests of rotation races (`ALLIUM_FAULT_PREKEY_ROTATION_MS`), never set otherwise.
    pub fn set_rotation_ms(&mut self, ms: u64) {
        self.rotation_ms = ms;
    }

    /// The account.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The data directory.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// Rotates the prekeys when the newest is older than the rotation period (or there is
    /// none), saving the secrets before anything is published, then publishes the newest bundle
    /// if `state` does not record it as published, and registers this device's delivery token
    /// when due ([`Self::delivery_token`]). Returns whether it published the bundle.
    pub async fn publish(
        &mut self,
        net: &Net,
        state: &mut ClientState,
    ) -> Result<bool, MessengerError> {
        self.delivery_token(net).await?;
        let now = net.now_ms();
        let due = self
            .account
            .prekeys
            .current()
            .is_none_or(|c| now.saturating_sub(c.valid_from) >= self.rotation_ms);
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
        let key = self.account.signing_key()?;
        net.store_in(&self.account.mailbox(), PUBLIC, ttl_ms, record, Some(&*key))
            .await?;
        state.set_published_prekey(current.spk_id);
        Ok(true)
    }

    /// This device's delivery token, read from the data directory (made on first use).
    fn own_token(&self) -> Result<token::OwnToken, MessengerError> {
        let damaged = |_| MessengerError::Keys {
            file: crate::state::TOKEN_FILE,
            source: SessionError::Malformed {
                what: "delivery-token file",
            },
        };
        match self
            .dir
            .read_private(crate::state::TOKEN_FILE, token::FILE_LEN as u64)?
        {
            Some(bytes) => token::OwnToken::decode(&bytes).map_err(damaged),
            None => {
                let t = token::OwnToken::generate(&mut OsRng);
                self.dir
                    .write_private(crate::state::TOKEN_FILE, &t.encode())?;
                Ok(t)
            }
        }
    }

    /// Stores the verifier of `t` in the account's namespace 6 (storage.md §4.5) and records
    /// the registration time.
    async fn register_token(
        &self,
        net: &Net,
        mut t: token::OwnToken,
    ) -> Result<token::OwnToken, MessengerError> {
        let mailbox = self.account.mailbox();
        let key = self.account.signing_key()?;
        let ttl_ms = net.network().params.max_ttl_secs.saturating_mul(1000);
        let verifier = allium_proto::crypto::token_verifier(&mailbox, &t.token);
        let now = net.now_ms();
        net.store_in(&mailbox, TOKENS, ttl_ms, verifier.to_vec(), Some(&*key))
            .await?;
        t.registered_at = now.max(1);
        self.dir
            .write_private(crate::state::TOKEN_FILE, &t.encode())?;
        Ok(t)
    }

    /// This device's delivery token, its verifier registered (again, when a day has passed):
    /// from then on, stores into the account's inbox need a token.
    pub async fn delivery_token(&mut self, net: &Net) -> Result<[u8; 32], MessengerError> {
        let mut t = self.own_token()?;
        if t.due(net.now_ms()) {
            t = self.register_token(net, t).await?;
        }
        Ok(t.token)
    }

    /// Replaces this device's delivery token: the new one is registered before the old one's
    /// record is deleted, so the inbox never opens to tokenless stores in between. Contacts get
    /// the new token with the next message to them and use the requests share until then; a
    /// contact never written to again is cut off (how a person blocks one).
    pub async fn rotate_token(&mut self, net: &Net) -> Result<(), MessengerError> {
        let old = self.own_token()?;
        self.register_token(net, token::OwnToken::generate(&mut OsRng))
            .await?;
        let mailbox = self.account.mailbox();
        let key = self.account.signing_key()?;
        let record = allium_proto::crypto::token_record_hash(&mailbox, &old.token);
        net.delete(&mailbox, TOKENS, vec![record], &*key).await?;
        Ok(())
    }

    /// What the account's inbox and requests share hold, against their limits (one member's
    /// count).
    pub async fn usage(
        &self,
        net: &Net,
    ) -> Result<Vec<(Namespace, allium_proto::storage::UsageResponse)>, MessengerError> {
        let key = self.account.signing_key()?;
        let mailbox = self.account.mailbox();
        let mut out = Vec::new();
        for ns in [INBOX, REQUESTS] {
            out.push((ns, net.usage(&mailbox, ns, &*key).await?));
        }
        Ok(out)
    }

    /// Deletes every message of the account's `namespace` (the inbox or the requests share)
    /// from its swarm. Returns how many were live.
    pub async fn clear(&self, net: &Net, namespace: Namespace) -> Result<u64, MessengerError> {
        let key = self.account.signing_key()?;
        Ok(net
            .delete_all(&self.account.mailbox(), namespace, &*key)
            .await?)
    }

    /// Deletes the stored messages `hashes` from the account's inbox and requests share.
    /// Returns how many were live.
    pub async fn delete_stored(
        &self,
        net: &Net,
        hashes: Vec<MessageHash>,
    ) -> Result<usize, MessengerError> {
        let key = self.account.signing_key()?;
        let mailbox = self.account.mailbox();
        let mut n = 0;
        for ns in [INBOX, REQUESTS] {
            for chunk in hashes.chunks(allium_proto::storage::MAX_HASHES) {
                n += net.delete(&mailbox, ns, chunk.to_vec(), &*key).await?;
            }
        }
        Ok(n)
    }

    pub(crate) fn load_peer(&self, account: &Address) -> Result<PeerRecord, MessengerError> {
        let key = account.public_key().to_bytes();
        match self.dir.read_peer(&key)? {
            None => Ok(PeerRecord::default()),
            Some(bytes) => PeerRecord::decode(&bytes).map_err(|source| MessengerError::Peer {
                peer: account.to_string(),
                source,
            }),
        }
    }

    pub(crate) fn save_peer(
        &self,
        account: &Address,
        record: &PeerRecord,
    ) -> Result<(), MessengerError> {
        let key = account.public_key().to_bytes();
        Ok(self.dir.write_peer(&key, &record.encode())?)
    }

    /// Fetches `account`'s public records: takes its newest valid device list (never an older
    /// one than held), and keeps, per listed device, the newest valid bundle.
    pub(crate) async fn refresh_bundles(
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
        let mut lists: Vec<DeviceList> = Vec::new();
        for item in items {
            match item.data.split_first() {
                Some((&RECORD_BUNDLE, bytes)) => {
                    // A bundle that is not valid now is skipped.
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
                Some((&RECORD_LIST, bytes)) => {
                    if let Ok(list) = DeviceList::verify(bytes, account) {
                        lists.push(list);
                    }
                }
                // Anything else the owner published is for a later version.
                _ => {}
            }
        }
        let mut bundles: Vec<PrekeyBundle> = newest.into_values().collect();
        // An account certifies at most MAX_DEVICES devices; the most recently certified win.
        bundles.sort_by_key(|b| std::cmp::Reverse(b.cert().created_at()));
        bundles.truncate(MAX_DEVICES);
        record.bundles = bundles;
        // Only the newest list is adopted: adopting an older one on the way would drop the
        // bundles and sessions of devices linked since.
        let newest = lists
            .into_iter()
            .reduce(|a, b| if b.newer_than(&a) { b } else { a });
        if let Some(list) = newest {
            record.adopt_list(list);
        }
        if let Some(list) = record.list.clone() {
            // Re-apply the held list to the fresh bundles.
            record
                .bundles
                .retain(|b| list.cert(&b.cert().signing_key()) == Some(b.cert()));
        }
        record.fetched_at = now;
        Ok(())
    }

    /// Refreshes a peer record's bundles and list when they are older than
    /// [`BUNDLE_REFRESH_MS`] or one has expired.
    async fn refresh_if_stale(
        &self,
        net: &Net,
        account: &Address,
        record: &mut PeerRecord,
    ) -> Result<(), MessengerError> {
        let now = net.now_ms();
        let stale = now.saturating_sub(record.fetched_at) >= BUNDLE_REFRESH_MS
            || record.bundles.iter().any(|b| b.check_time(now).is_err());
        if record.bundles.is_empty() || stale {
            self.refresh_bundles(net, account, record).await?;
        }
        Ok(())
    }

    /// Refuses a text that no envelope can carry, before anything is sealed or sent. The copy
    /// for this account's other devices is the longer: it names the peer.
    pub fn check_size(text: &str) -> Result<(), MessengerError> {
        let largest = payload::HEADER_LEN
            + payload::SENT_COPY_OVERHEAD
            + text.len()
            + session::START_OVERHEAD
            + session::RATCHET_OVERHEAD;
        match envelope::bucket_for(largest) {
            Some(_) => Ok(()),
            None => Err(MessengerError::TooLarge(SessionError::TooLarge)),
        }
    }

    /// Seals `plaintext` to every device of `bundles` (this device excluded), starting
    /// sessions where there are none. The sessions advance in `record`; the caller saves it
    /// with the envelopes before any goes out.
    fn seal_all(
        &self,
        peer: &Address,
        record: &mut PeerRecord,
        plaintext: &[u8],
        now: u64,
    ) -> Result<Vec<Vec<u8>>, MessengerError> {
        let seal_err = |source| MessengerError::Seal {
            peer: peer.to_string(),
            source,
        };
        let me = self.account.device.cert().signing_key();
        let targets: Vec<PrekeyBundle> = record
            .recipients()
            .filter(|b| b.cert().signing_key() != me)
            .cloned()
            .collect();
        let mut sealed = Vec::with_capacity(targets.len());
        for bundle in &targets {
            let device = bundle.cert().signing_key();
            let sessions = record.sessions.entry(device).or_default();
            if sessions.active().is_none() {
                sessions
                    .initiate(&self.account.device, bundle, now, &mut OsRng)
                    .map_err(seal_err)?;
            }
            let payload = sessions.encrypt(plaintext).map_err(seal_err)?;
            let env = envelope::seal(&self.account.device, bundle, &payload, now, &mut OsRng)
                .map_err(|e| match e {
                    SessionError::TooLarge => MessengerError::TooLarge(e),
                    e => seal_err(e),
                })?;
            sealed.push(env);
        }
        Ok(sealed)
    }

    /// A fresh random message id.
    pub fn new_msg_id() -> [u8; 16] {
        let mut msg_id = [0u8; 16];
        OsRng.fill_bytes(&mut msg_id);
        msg_id
    }

    /// Sends `text` to every device of `to`, in one stored item when the envelopes fit, and a
    /// copy to this account's other devices. The items and the advanced sessions are saved
    /// together before anything goes out; an item stays in the outbox until the swarm
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
        self.send_plaintext(net, to, message.encode(), msg_id, true)
            .await
    }

    /// Seals `plaintext` (an application message, `msg_id` its id) to every device of `to`
    /// and stores it through the peer's outbox as [`Self::send_text_as`] does; with `copy`, a
    /// copy goes to this account's other devices.
    pub(crate) async fn send_plaintext(
        &mut self,
        net: &Net,
        to: &Address,
        plaintext: Vec<u8>,
        msg_id: [u8; 16],
        copy: bool,
    ) -> Result<Sent, MessengerError> {
        let now = net.now_ms();
        let mut record = self.load_peer(to)?;
        if record.outbox.len() >= MAX_OUTBOX {
            return Err(MessengerError::OutboxFull(record.outbox.len()));
        }
        self.refresh_if_stale(net, to, &mut record).await?;
        let me = self.account.device.cert().signing_key();
        if !record.recipients().any(|b| b.cert().signing_key() != me) {
            return Err(MessengerError::NoBundle(to.to_string()));
        }
        let to_self = *to == self.account.address;
        if !to_self {
            // The peer gets our delivery token before the first message that follows a change
            // of it, inside the session (storage.md §4.5): its replies then enter our inbox.
            let mine = self.delivery_token(net).await?;
            if record.sent_token != Some(mine) {
                let token_id = Self::new_msg_id();
                let message = payload::token_message(token_id, now, &mine);
                let envelopes = self.seal_all(to, &mut record, &message, now)?;
                record
                    .outbox
                    .extend(
                        container::pack(&envelopes)
                            .into_iter()
                            .map(|item| Outgoing {
                                msg_id: token_id,
                                item,
                                message: message.clone(),
                                copy_pending: false,
                            }),
                    );
                record.sent_token = Some(mine);
            }
        }
        let envelopes = self.seal_all(to, &mut record, &plaintext, now)?;
        let devices = envelopes.len();
        let items = container::pack(&envelopes);
        let n_items = items.len();
        record.outbox.extend(items.into_iter().map(|item| Outgoing {
            msg_id,
            item,
            message: plaintext.clone(),
            copy_pending: !to_self && copy,
        }));
        // One atomic write: the spent chain keys and the items they sealed.
        self.save_peer(to, &record)?;
        let copies = if to_self || !copy {
            0
        } else {
            // A failure here leaves the copy pending; the next command makes it.
            self.make_copies(net, to, &mut record)
                .await
                .ok()
                .unwrap_or(0)
        };
        let last = self.flush_peer(net, to, &mut record, Some(msg_id)).await?;
        if !to_self {
            let me_addr = self.account.address;
            let mut own = self.load_peer(&me_addr)?;
            self.flush_peer(net, &me_addr, &mut own, None).await?;
        }
        let Some((holders, members, path)) = last else {
            return Err(MessengerError::Net(NetError::NoSwarm));
        };
        Ok(Sent {
            msg_id,
            devices,
            items: n_items,
            copies,
            holders,
            members,
            path,
        })
    }

    /// Makes the copies of `to`'s outbox messages whose copy is pending, for this account's
    /// other devices: seals them into this account's own outbox, then clears the marks. Each
    /// step is one atomic write, and a copy already in the own outbox is not made twice, so a
    /// crash between them only repeats the clearing. Returns how many devices get each copy.
    async fn make_copies(
        &mut self,
        net: &Net,
        to: &Address,
        record: &mut PeerRecord,
    ) -> Result<usize, MessengerError> {
        let pending: Vec<Outgoing> = record
            .outbox
            .iter()
            .filter(|o| o.copy_pending)
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let me_addr = self.account.address;
        let mut own = self.load_peer(&me_addr)?;
        self.refresh_if_stale(net, &me_addr, &mut own).await?;
        let now = net.now_ms();
        let mut devices = 0;
        let mut done: HashSet<[u8; 16]> = HashSet::new();
        for out in &pending {
            if !done.insert(out.msg_id) || own.outbox.iter().any(|o| o.msg_id == out.msg_id) {
                continue;
            }
            let Ok(message) = AppMessage::decode(&out.message) else {
                continue;
            };
            let copy = message.sent_copy(&to.public_key().to_bytes());
            let envelopes = self.seal_all(&me_addr, &mut own, &copy, now)?;
            devices = envelopes.len();
            own.outbox.extend(
                container::pack(&envelopes)
                    .into_iter()
                    .map(|item| Outgoing {
                        msg_id: out.msg_id,
                        item,
                        message: copy.clone(),
                        copy_pending: false,
                    }),
            );
        }
        self.save_peer(&me_addr, &own)?;
        for o in record.outbox.iter_mut() {
            o.copy_pending = false;
        }
        self.save_peer(to, record)?;
        Ok(devices)
    }

    /// Records an outgoing message in the history (once) with its delivery. Copies and
    /// messages between this account's devices are not recorded (they are not messages the
    /// person sent).
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

    /// Stores the outbox of one peer, oldest first, removing each item once acknowledged.
    /// The history records each message as sending before its first item goes out (also a
    /// message a crash left in the outbox unrecorded) and as stored once its last one is
    /// acknowledged. Returns the acknowledgement of the last item of message `wanted`.
    pub(crate) async fn flush_peer(
        &mut self,
        net: &Net,
        to: &Address,
        record: &mut PeerRecord,
        wanted: Option<[u8; 16]>,
    ) -> Result<Option<(usize, usize, PathReport)>, MessengerError> {
        let mailbox = Mailbox::from_bytes(to.public_key().to_bytes());
        let mut last = None;
        while let Some(next) = record.outbox.first().cloned() {
            if next.copy_pending {
                // Its copy comes first (`flush` makes the copies before it stores anything).
                break;
            }
            if !self.recorded_sent.contains(&next.msg_id) {
                self.record_sent(to, &next, Delivery::Sending)?;
            }
            // Into the peer's inbox with its token; without one, or refused, into its requests
            // share. This account's own inbox takes this device's token.
            let own = *to == self.account.address;
            let token = if own {
                Some(self.own_token()?.token)
            } else {
                record.their_token
            };
            let (stored, refused) = net.deliver(&mailbox, next.item.clone(), token).await?;
            if refused && !own {
                record.their_token = None;
            }
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
    /// network), making the sent copies still pending first. Returns how many items went out.
    pub async fn flush(&mut self, net: &Net) -> Result<usize, MessengerError> {
        let peers: Vec<Address> = self
            .dir
            .peers()?
            .iter()
            .filter_map(|k| Address::from_key_bytes(k).ok())
            .collect();
        for to in &peers {
            let mut record = self.load_peer(to)?;
            if record.outbox.iter().any(|o| o.copy_pending) {
                self.make_copies(net, to, &mut record).await?;
            }
        }
        let mut sent = 0;
        for to in &peers {
            let mut record = self.load_peer(to)?;
            if record.outbox.is_empty() {
                continue;
            }
            let before = record.outbox.len();
            self.flush_peer(net, to, &mut record, None).await?;
            sent += before - record.outbox.len();
        }
        Ok(sent)
    }

    /// Fetches every page of new inbox messages once (the first waiting up to `wait`), and for
    /// each new message: decrypts it, records it in the history, calls `on_message`, then saves
    /// the advanced session. The cursor in `state` moves past what was handled; the caller saves
    /// `state`. `on_skip` hears about inbox items that could not be read; items that hold
    /// nothing for this device (envelopes for the account's other devices) are passed over
    /// without a word. Returns the number of messages received.
    ///
    /// The requests share (messages from senders without this account's delivery token,
    /// storage.md §4.5) is read first, without waiting; then the inbox, waiting.
    pub async fn receive(
        &mut self,
        net: &Net,
        state: &mut ClientState,
        wait: std::time::Duration,
        mut on_message: impl FnMut(&Received),
        mut on_skip: impl FnMut(&Skipped),
    ) -> Result<usize, MessengerError> {
        let requests = self
            .receive_namespace(
                net,
                state,
                REQUESTS,
                std::time::Duration::ZERO,
                &mut on_message,
                &mut on_skip,
            )
            .await?;
        let inbox = self
            .receive_namespace(net, state, INBOX, wait, &mut on_message, &mut on_skip)
            .await?;
        Ok(requests + inbox)
    }

    /// [`Self::receive`] for one namespace, with its own cursor.
    async fn receive_namespace(
        &mut self,
        net: &Net,
        state: &mut ClientState,
        namespace: Namespace,
        wait: std::time::Duration,
        mut on_message: impl FnMut(&Received),
        mut on_skip: impl FnMut(&Skipped),
    ) -> Result<usize, MessengerError> {
        let key = self.account.signing_key()?;
        let mailbox = self.account.address.public_key().to_bytes();
        let saved = if namespace == REQUESTS {
            state.requests_cursor()
        } else {
            state.cursor(&mailbox)
        };
        let safe = saved.map(|c| CursorKey {
            timestamp: c.timestamp,
            hash: MessageHash(c.hash),
        });
        let mut cursor = Cursor::resume(DEFAULT_OVERLAP_MS, safe);
        let mut received = 0;
        let mut wait = wait;
        // The member answering the round in progress: its later pages come from it alone.
        let mut round_at: Option<NodeId> = None;
        let mut restarts = 0;
        loop {
            let page = match net
                .fetch_namespace(
                    &Mailbox::from_bytes(mailbox),
                    namespace,
                    &*key,
                    cursor.after(),
                    wait,
                    round_at,
                )
                .await
            {
                Ok(page) => page,
                Err(NetError::MemberLost) if restarts < MAX_ROUND_RESTARTS => {
                    restarts += 1;
                    cursor.restart_round();
                    round_at = None;
                    continue;
                }
                Err(NetError::Refused(allium_proto::Status::NotDelegated)) => {
                    return Err(self.refused_delegate(net).await);
                }
                Err(e) => return Err(e.into()),
            };
            wait = std::time::Duration::ZERO;
            round_at = page.more.then(|| page.path.destination()).flatten();
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
                let mut refreshed = false;
                loop {
                    let now = net.now_ms();
                    match self.handle(
                        &m.data,
                        m.timestamp,
                        m.hash,
                        now,
                        &page.path,
                        &mut on_skip,
                    )? {
                        Outcome::Nothing => {}
                        Outcome::Shown(r) => {
                            on_message(&r);
                            received += 1;
                        }
                        Outcome::NotListed(from, device_id) if !refreshed => {
                            // A device the list held does not name: a new one, or removed.
                            refreshed = true;
                            let mut record = self.load_peer(&from)?;
                            self.refresh_bundles(net, &from, &mut record).await?;
                            self.save_peer(&from, &record)?;
                            if record.listed_device(device_id) {
                                continue;
                            }
                            on_skip(&Skipped::Unlisted { from, device_id });
                        }
                        Outcome::NotListed(from, device_id) => {
                            on_skip(&Skipped::Unlisted { from, device_id });
                        }
                        Outcome::Removed => return Err(self.removed()?),
                    }
                    break;
                }
                state.mark_seen_hash(&m.hash.0);
            }
            if let Some(safe) = cursor.safe() {
                let saved = SavedCursor {
                    timestamp: safe.timestamp,
                    hash: safe.hash.0,
                };
                if namespace == REQUESTS {
                    state.set_requests_cursor(saved);
                } else {
                    state.set_cursor(&mailbox, saved);
                }
            }
            if !page.more {
                return Ok(received);
            }
        }
    }

    /// This device learnt that its account removed it: it forgets its keys and sessions (its
    /// history and contacts stay) and says so from now on.
    fn removed(&mut self) -> Result<MessengerError, MessengerError> {
        let reason = format!(
            "this device was removed from the account {}; run `allium devices link` to link it \
             again",
            self.account.address
        );
        self.dir.reset_device()?;
        self.dir
            .write_private(crate::state::REMOVED_FILE, reason.as_bytes())?;
        Ok(MessengerError::Removed(reason))
    }

    /// One inbox item: open the envelope meant for this device, decrypt, record, save the
    /// session.
    fn handle(
        &mut self,
        data: &[u8],
        stored_ms: u64,
        stored_hash: MessageHash,
        now: u64,
        path: &PathReport,
        on_skip: &mut impl FnMut(&Skipped),
    ) -> Result<Outcome, MessengerError> {
        let envelopes = match container::unpack(data) {
            Ok(e) => e,
            Err(_) => {
                on_skip(&Skipped::Unreadable(SessionError::Malformed {
                    what: "stored item",
                }));
                return Ok(Outcome::Nothing);
            }
        };
        let mut opened = None;
        let mut failure = None;
        for e in envelopes {
            match envelope::open(&self.account.prekeys, e, now) {
                Ok(o) => {
                    opened = Some(o);
                    break;
                }
                // Sealed to another device of the account (or to nobody): not for us.
                Err(SessionError::Decrypt) => {}
                Err(e) => failure = Some(e),
            }
        }
        let Some(opened) = opened else {
            if let Some(e) = failure {
                on_skip(&Skipped::Unreadable(e));
            }
            return Ok(Outcome::Nothing);
        };
        let Some(from) = opened.sender.account() else {
            on_skip(&Skipped::Unreadable(SessionError::WeakKey));
            return Ok(Outcome::Nothing);
        };
        let mut record = self.load_peer(&from)?;
        let device = opened.sender.signing_key();
        if !record.listed(&device) {
            return Ok(Outcome::NotListed(from, opened.sender.device_id()));
        }
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
            Err(SessionError::Duplicate) => return Ok(Outcome::Nothing),
            Err(error) => {
                on_skip(&Skipped::Undecryptable {
                    from: Some(from),
                    error,
                });
                return Ok(Outcome::Nothing);
            }
        };
        record.sessions.insert(device, sessions);
        if record.bundle(&device).is_none() {
            // A device of theirs we have no bundle for: fetch theirs before the next send.
            record.fetched_at = 0;
        }
        let own = from == self.account.address;
        let mut outcome = Outcome::Nothing;
        match Incoming::decode(&plaintext) {
            Ok(Incoming::Message(message)) if !self.recorded.contains(&message.msg_id) => {
                // Recorded first: if the session save below does not happen, the message is
                // decrypted again next time and found here, never shown twice.
                self.record_incoming(&from, &from, Direction::Received, &message)?;
                self.recorded.insert(message.msg_id);
                outcome = Outcome::Shown(Box::new(Received {
                    from,
                    device_id: opened.sender.device_id(),
                    message,
                    copy_to: None,
                    stored_ms,
                    stored_hash,
                    path: path.clone(),
                }));
            }
            Ok(Incoming::SentCopy { peer, message }) if own => {
                let to = Address::from_key_bytes(&peer);
                if let (Ok(to), false) = (to, self.recorded_sent.contains(&message.msg_id)) {
                    // This account's own file: its other devices keep a copy too.
                    self.record_incoming(&from, &to, Direction::Sent, &message)?;
                    self.recorded_sent.insert(message.msg_id);
                    outcome = Outcome::Shown(Box::new(Received {
                        from,
                        device_id: opened.sender.device_id(),
                        message,
                        copy_to: Some(to),
                        stored_ms,
                        stored_hash,
                        path: path.clone(),
                    }));
                }
            }
            Ok(Incoming::Token(t)) if !own => record.their_token = Some(t),
            // Devices of this account use their own tokens.
            Ok(Incoming::Token(_)) => {}
            Ok(Incoming::DeviceList { list, .. }) if own => {
                if let Ok(list) = DeviceList::verify(&list, &from) {
                    record.adopt_list(list);
                    if self.left_out(&record) {
                        return Ok(Outcome::Removed);
                    }
                }
            }
            Ok(incoming @ (Incoming::GroupInvitation { .. } | Incoming::GroupAnswer { .. })) => {
                self.group_control(&from, incoming, now)?;
            }
            Ok(incoming @ Incoming::GroupInvitationCopy { .. }) if own => {
                self.group_control(&from, incoming, now)?;
            }
            // A group's own kind, out of place in a session.
            Ok(Incoming::GroupLeave { .. }) => {}
            // Copies and lists come only from the account's own devices.
            Ok(
                Incoming::SentCopy { .. }
                | Incoming::DeviceList { .. }
                | Incoming::GroupInvitationCopy { .. },
            ) => {
                on_skip(&Skipped::UnknownContent(payload::PayloadError::BadCopy));
            }
            Ok(Incoming::Message(_)) => {}
            Err(e) => on_skip(&Skipped::UnknownContent(e)),
        }
        self.save_peer(&from, &record)?;
        Ok(outcome)
    }

    /// Keeps a message read from a session in the history, `direction` as this account sees
    /// it and `peer` the other account. A file it announces is recorded for download first:
    /// once the history line is written the message is never handled again, and its file must
    /// not be lost with it.
    fn record_incoming(
        &self,
        from: &Address,
        peer: &Address,
        direction: Direction,
        message: &AppMessage,
    ) -> Result<(), MessengerError> {
        if let Content::File(file) = &message.content {
            crate::attach::Transfers::open(self.dir.path())?
                .register_download(file, &from.to_string())?;
        }
        self.dir.append_history(&HistoryEntry {
            direction,
            peer: peer.to_string(),
            timestamp_ms: message.sent_ms,
            msg_id: message.msg_id,
            text: message.content.summary(),
            delivery: None,
        })?;
        Ok(())
    }

    /// Whether the newest device list of this account held in `own` (this account's record)
    /// leaves this linked device out, being later than the list that added it. The primary is
    /// never removed: it holds the seed.
    fn left_out(&self, own: &PeerRecord) -> bool {
        let Some(list) = &own.list else {
            return false;
        };
        matches!(self.account.role, Role::Linked)
            && list.version() > self.account.joined_version
            && !list.contains(&self.account.device.cert().signing_key())
    }
}
