//! The client's local state directory.
//!
//! ```text
//! <data_dir>/          0700  --data-dir, else $XDG_DATA_HOME/allium, else ~/.local/share/allium
//!   identity           0600  the 32-byte Ed25519 seed, raw bytes (as the node's identity.key)
//!   contacts.toml      0600  [contacts] name = "address"
//!   state.json         0600  cursors, seen message ids and hashes, guards, roster version and
//!                            verified digest (roster.md §4.3), clock
//!   roster.cbor        0600  the last verified roster, opaque here
//!   history.jsonl      0600  one JSON object per sent or received message, append-only
//!   read.json          0600  how far each conversation was read (`allium chat`)
//!   device.key         0600  this device's keys and certificate (sessions.md §2)
//!   prekeys.bin        0600  this device's prekey secrets (sessions.md §3.2)
//!   peers/             0700  one file per peer account: bundles, sessions, outbox
//!     <account>.bin    0600  (hex of the account key; messenger::peer)
//!   groups/            0700  one file per group: its seed, lists, member keys, epochs, outbox
//!     <group>.bin      0600  (hex of the group key; messenger::groups)
//!   account.bin        0600  a linked device's sync key and the list that added it (devices.md §9)
//!   devices.bin        0600  the primary's device list and removals in progress (devices.md §9)
//!   sync.bin           0600  the state the account's devices share (devices.md §8)
//!   removed            0600  set when the account removed this device: what it said, as text
//!   lock                     held (flock) by the allium process using the directory
//! ```
//!
//! Every file but the history is replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves the old file or the new one. Every file is created owner-only
//! from the start, because contacts and history say who talks to whom. The history is appended to
//! and synced per entry; a torn last line is skipped when read.
//!
//! Nothing here checks addresses, rosters or cursors against the protocol: callers convert them
//! to and from the plain types stored here, which keeps this module free of the rest of the client.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::Hash;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use allium_fsutil as fsutil;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Directory name under `$XDG_DATA_HOME` (or `~/.local/share`).
pub const APP_DIR: &str = "allium";
/// The identity seed.
pub const IDENTITY_FILE: &str = "identity";
/// The address book.
pub const CONTACTS_FILE: &str = "contacts.toml";
/// Cursors, seen sets, guards and the like.
pub const STATE_FILE: &str = "state.json";
/// The cached roster.
pub const ROSTER_FILE: &str = "roster.cbor";
/// The message log.
pub const HISTORY_FILE: &str = "history.jsonl";
/// How far each conversation was read.
pub const READ_FILE: &str = "read.json";
/// The advisory lock file.
pub const LOCK_FILE: &str = "lock";
/// This device's keys.
pub const DEVICE_FILE: &str = "device.key";
/// This device's prekey secrets.
pub const PREKEYS_FILE: &str = "prekeys.bin";
/// The folder of per-peer files.
pub const PEERS_DIR: &str = "peers";
/// Folder of the groups this device is in or invited into, one file per group.
pub const GROUPS_DIR: &str = "groups";
/// Largest group file read back.
pub const MAX_GROUP_BYTES: u64 = 64 << 20;
/// A linked device's account secrets.
pub const ACCOUNT_FILE: &str = "account.bin";
/// The primary device's registry of the account's devices.
pub const DEVICES_FILE: &str = "devices.bin";
/// The shared state of the account's devices.
pub const SYNC_FILE: &str = "sync.bin";
/// Present once this device was removed from its account.
pub const REMOVED_FILE: &str = "removed";
/// This device's delivery token and when its verifier was last registered (storage.md §4.5).
pub const TOKEN_FILE: &str = "delivery-token.bin";
/// Largest shared-state file read (100,000 entries of at most 80 bytes).
pub const MAX_SYNC_BYTES: u64 = 16 << 20;
/// Largest device or prekey file read (a full prekey store is about 4 KB).
pub const MAX_KEYS_BYTES: u64 = 64 << 10;
/// Largest peer file read: sixteen devices' sessions with their skipped keys and a full outbox
/// stay well below it.
pub const MAX_PEER_BYTES: u64 = 64 << 20;

/// Length of the identity seed.
pub const SEED_LEN: usize = 32;
/// How many message ids, and separately how many content hashes, `state.json` remembers. Enough
/// to cover the fetch overlap many times over while keeping each save small (about 0.5 MB).
pub const MAX_SEEN: usize = 4096;
/// Largest roster file read back; a bigger one is not ours.
pub const MAX_ROSTER_BYTES: u64 = 1 << 20;
/// Largest `contacts.toml` read.
pub const MAX_CONTACTS_BYTES: u64 = 1 << 20;
/// Largest `state.json` read (a full one is about 0.5 MB).
pub const MAX_STATE_BYTES: u64 = 4 << 20;
/// Longest history line written or read; longer lines on disk are skipped.
pub const MAX_HISTORY_LINE: usize = 1 << 20;
/// Longest contact name.
pub const MAX_CONTACT_NAME: usize = 32;
/// The `state.json` format this code writes and reads.
pub const STATE_VERSION: u32 = 1;
/// The `read.json` format this code writes and reads.
pub const READ_VERSION: u32 = 1;
/// Largest `read.json` read (a conversation's mark is about 120 bytes).
pub const MAX_READ_BYTES: u64 = 4 << 20;

/// Why the data directory could not be used. Each variant names the file and what the user can do,
/// so a CLI can print it as is and pick an exit code by variant.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No `--data-dir`, and neither `XDG_DATA_HOME` nor `HOME` is an absolute path.
    #[error(
        "cannot place the data directory: give --data-dir, or set XDG_DATA_HOME or HOME to an \
         absolute path"
    )]
    NoDataDir,
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "{} is in use by another allium process (it holds {}); stop that one first",
        dir.display(),
        path.display()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        path: PathBuf,
    },
    /// There is no identity yet.
    #[error("no identity at {}; create one first", path.display())]
    NoIdentity {
        /// Where it was expected.
        path: PathBuf,
    },
    /// Writing an identity would replace the existing one, and so the user's address.
    #[error(
        "{} already exists; refusing to replace your identity (and address) unless forced",
        path.display()
    )]
    IdentityExists {
        /// The existing identity file.
        path: PathBuf,
    },
    /// The identity file is readable by others, the directory writable by them, the identity is
    /// not a regular file, or not one seed long.
    #[error(transparent)]
    Private(#[from] fsutil::PrivateError),
    /// A path that must be a regular file is a symlink, directory or the like.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A file, or an entry to be written, is larger than this module accepts.
    #[error("{} is larger than {limit} bytes ({found}); it is not a file allium wrote", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
        /// The size found (at least).
        found: u64,
    },
    /// A file does not parse. The caller decides whether to start afresh.
    #[error("{} is damaged ({reason}); move it away to start it afresh", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `state.json` was written by a newer (or unknown) format version.
    #[error(
        "{} has format version {found}, this allium reads {STATE_VERSION}; upgrade allium",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in it.
        found: u32,
    },
    /// A contact name outside 1–32 characters of `A-Z a-z 0-9 _ . -`.
    #[error(
        "invalid contact name {name:?}: use 1 to {MAX_CONTACT_NAME} characters of A-Z a-z 0-9 _ . -"
    )]
    InvalidContactName {
        /// The name given.
        name: String,
    },
    /// `add` of a name already in the address book.
    #[error("a contact named {name:?} already exists; replace it explicitly")]
    DuplicateContact {
        /// The name.
        name: String,
    },
    /// `remove` of a name not in the address book.
    #[error("no contact named {name:?}")]
    NoSuchContact {
        /// The name.
        name: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl ToString) -> StateError {
    StateError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The default data directory from the process environment: `$XDG_DATA_HOME/allium`, else
/// `$HOME/.local/share/allium`.
pub fn default_data_dir() -> Result<PathBuf, StateError> {
    data_dir_from_env(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

/// [`default_data_dir`] for given values of `XDG_DATA_HOME` and `HOME` (testable without touching
/// the environment). Per the XDG spec, an empty or relative `XDG_DATA_HOME` is ignored; a
/// relative `HOME` is refused rather than silently resolved against the working directory.
pub fn data_dir_from_env(
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, StateError> {
    // No let-chains: the MSRV (1.85) predates them.
    if let Some(xdg) = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(xdg.join(APP_DIR));
    }
    match home.map(PathBuf::from) {
        Some(home) if home.is_absolute() => Ok(home.join(".local/share").join(APP_DIR)),
        _ => Err(StateError::NoDataDir),
    }
}

/// The client's data directory. Opening creates it (mode 0700); files are read and written on
/// demand, so a command touches only what it needs.
#[derive(Debug, Clone)]
pub struct DataDir {
    dir: PathBuf,
}

/// Holds the data directory's exclusive lock until dropped.
pub type DataDirLock = fsutil::DirLock;

impl DataDir {
    /// Opens `dir`, creating it and its parents with mode 0700 if needed. Refuses a directory that
    /// group or others can write: they could swap the identity file.
    pub fn open(dir: &Path) -> Result<DataDir, StateError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        check_dir(dir)?;
        Ok(DataDir {
            dir: dir.to_owned(),
        })
    }

    /// Opens `explicit` (from `--data-dir`) if given, else [`default_data_dir`].
    pub fn open_or_default(explicit: Option<&Path>) -> Result<DataDir, StateError> {
        match explicit {
            Some(dir) => DataDir::open(dir),
            None => DataDir::open(&default_data_dir()?),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive advisory lock on `lock`, without waiting, so that two `allium`
    /// processes never interleave writes to one directory. Released when the guard drops (or the
    /// process dies, so a crash leaves no stale lock).
    pub fn lock(&self) -> Result<DataDirLock, StateError> {
        fsutil::lock(&self.dir.join(LOCK_FILE)).map_err(|e| match e {
            fsutil::LockError::Held(path) => StateError::Locked {
                dir: self.dir.clone(),
                path,
            },
            fsutil::LockError::Io(e) => StateError::Io {
                path: e.path,
                source: e.source,
            },
        })
    }

    // ---- identity ----

    /// Stores the identity seed as 32 raw bytes, mode 0600 from creation. Without `force` an
    /// existing identity is never replaced, even by a racing writer: losing it loses the address.
    pub fn write_identity(
        &self,
        seed: &Zeroizing<[u8; SEED_LEN]>,
        force: bool,
    ) -> Result<(), StateError> {
        let path = self.dir.join(IDENTITY_FILE);
        if !force && fs::symlink_metadata(&path).is_ok() {
            return Err(StateError::IdentityExists { path });
        }
        write_atomic(&self.dir, IDENTITY_FILE, seed.as_ref(), force)
    }

    /// Reads the identity seed. Refuses a file that group or others can read (the seed is the
    /// user's whole identity), a non-regular file, and a file of the wrong length.
    pub fn read_identity(&self) -> Result<Zeroizing<[u8; SEED_LEN]>, StateError> {
        let path = self.dir.join(IDENTITY_FILE);
        fsutil::read_secret(&path).map_err(|e| {
            if e.is_not_found() {
                StateError::NoIdentity { path: path.clone() }
            } else {
                e.into()
            }
        })
    }

    // ---- contacts ----

    /// The address book; empty if there is no file yet.
    pub fn contacts(&self) -> Result<Contacts, StateError> {
        let path = self.dir.join(CONTACTS_FILE);
        match read_capped(&path, MAX_CONTACTS_BYTES)? {
            None => Ok(Contacts::default()),
            Some(bytes) => parse_contacts(&path, &bytes),
        }
    }

    /// Replaces the address book atomically.
    pub fn save_contacts(&self, contacts: &Contacts) -> Result<(), StateError> {
        let path = self.dir.join(CONTACTS_FILE);
        let body = toml::to_string(&ContactsFile {
            contacts: contacts.map.clone(),
            verified: contacts.verified.clone(),
        })
        .map_err(|e| io_err(&path)(io::Error::other(e)))?;
        let text = format!(
            "# Allium contacts: name = \"address\". Names are 1 to {MAX_CONTACT_NAME} characters of \
             A-Z a-z 0-9 _ . -\n{body}"
        );
        write_atomic(&self.dir, CONTACTS_FILE, text.as_bytes(), true)
    }

    // ---- state.json ----

    /// The saved state; the default if there is none yet. A damaged file is an error, not a
    /// silent reset: forgetting seen ids would show old messages again, and the caller may prefer
    /// to stop and tell the user.
    pub fn load_state(&self) -> Result<ClientState, StateError> {
        let path = self.dir.join(STATE_FILE);
        match read_capped(&path, MAX_STATE_BYTES)? {
            None => Ok(ClientState::default()),
            Some(bytes) => parse_state(&path, &bytes),
        }
    }

    /// Replaces the saved state atomically.
    pub fn save_state(&self, state: &ClientState) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let mut bytes = serde_json::to_vec_pretty(&state.to_file())
            .map_err(|e| io_err(&path)(io::Error::from(e)))?;
        bytes.push(b'\n');
        write_atomic(&self.dir, STATE_FILE, &bytes, true)
    }

    // ---- read.json ----

    /// How far each conversation was read, as versions before the shared read positions
    /// (`whitepaper/devices.md` §8) kept it; none if there is no file. Read only to move them
    /// into the shared state.
    pub fn read_marks(&self) -> Result<ReadMarks, StateError> {
        let path = self.dir.join(READ_FILE);
        match read_capped(&path, MAX_READ_BYTES)? {
            None => Ok(ReadMarks::default()),
            Some(bytes) => parse_read(&path, &bytes),
        }
    }

    /// Removes `read.json` once its marks are in the shared state.
    pub fn remove_read_marks(&self) -> Result<(), StateError> {
        let path = self.dir.join(READ_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Replaces the read marks atomically (the old format; tests of the migration write it).
    pub fn save_read_marks(&self, marks: &ReadMarks) -> Result<(), StateError> {
        let path = self.dir.join(READ_FILE);
        let file = ReadFile {
            version: READ_VERSION,
            read: marks.map.clone(),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| io_err(&path)(io::Error::from(e)))?;
        bytes.push(b'\n');
        write_atomic(&self.dir, READ_FILE, &bytes, true)
    }

    // ---- roster ----

    /// The cached roster bytes, if any. The caller verifies them before use.
    pub fn read_roster(&self) -> Result<Option<Vec<u8>>, StateError> {
        read_capped(&self.dir.join(ROSTER_FILE), MAX_ROSTER_BYTES)
    }

    /// Replaces the cached roster atomically.
    pub fn write_roster(&self, roster: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.dir, ROSTER_FILE, roster, true)
    }

    // ---- device keys, prekeys, peers ----

    /// This device's keys, if set up.
    pub fn read_device(&self) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        Ok(fsutil::read_private(
            &self.dir.join(DEVICE_FILE),
            MAX_KEYS_BYTES,
        )?)
    }

    /// Writes this device's keys; never replaces existing ones unless `replace`.
    pub fn write_device(&self, bytes: &[u8], replace: bool) -> Result<(), StateError> {
        write_atomic(&self.dir, DEVICE_FILE, bytes, replace)
    }

    /// This device's prekey secrets, if any.
    pub fn read_prekeys(&self) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        Ok(fsutil::read_private(
            &self.dir.join(PREKEYS_FILE),
            MAX_KEYS_BYTES,
        )?)
    }

    /// Replaces the prekey secrets atomically.
    pub fn write_prekeys(&self, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.dir, PREKEYS_FILE, bytes, true)
    }

    /// Whether this directory holds the account seed (a primary device).
    pub fn has_identity(&self) -> bool {
        fs::symlink_metadata(self.dir.join(IDENTITY_FILE)).is_ok()
    }

    /// Reads a private file written by [`Self::write_private`], if it exists.
    pub fn read_private(
        &self,
        name: &'static str,
        limit: u64,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        Ok(fsutil::read_private(&self.dir.join(name), limit)?)
    }

    /// Replaces a private file of the data directory atomically.
    pub fn write_private(&self, name: &'static str, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.dir, name, bytes, true)
    }

    /// Removes a file of the data directory, if it is there.
    pub fn remove_file(&self, name: &'static str) -> Result<(), StateError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Forgets this device's keys, prekeys and sessions, and what `state.json` says about them:
    /// after `init --force` or `restore` the device starts over as a new device of the new
    /// identity (forward secrecy means old sessions cannot be carried over anyway).
    pub fn reset_device(&self) -> Result<(), StateError> {
        for name in [DEVICE_FILE, PREKEYS_FILE, ACCOUNT_FILE, DEVICES_FILE] {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let peers = self.dir.join(PEERS_DIR);
        match fs::remove_dir_all(&peers) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&peers)(e)),
        }
        sync_dir(&self.dir)?;
        let mut state = self.load_state()?;
        state.published_prekey = None;
        state.devices_refreshed_at = None;
        self.save_state(&state)
    }

    fn peers_dir(&self) -> Result<PathBuf, StateError> {
        let dir = self.dir.join(PEERS_DIR);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        check_dir(&dir)?;
        Ok(dir)
    }

    /// The file of peer account `account` (its 32-byte key), if any.
    pub fn read_peer(&self, account: &[u8; 32]) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        let path = self
            .dir
            .join(PEERS_DIR)
            .join(format!("{}.bin", hex::encode(account)));
        Ok(fsutil::read_private(&path, MAX_PEER_BYTES)?)
    }

    /// Replaces the file of peer account `account` atomically.
    pub fn write_peer(&self, account: &[u8; 32], bytes: &[u8]) -> Result<(), StateError> {
        let dir = self.peers_dir()?;
        write_atomic(&dir, &format!("{}.bin", hex::encode(account)), bytes, true)
    }

    /// The accounts that have a peer file.
    pub fn peers(&self) -> Result<Vec<[u8; 32]>, StateError> {
        keyed_files(&self.dir.join(PEERS_DIR))
    }

    /// The file of group `group` (its 32-byte key), if any.
    pub fn read_group(&self, group: &[u8; 32]) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        let path = self
            .dir
            .join(GROUPS_DIR)
            .join(format!("{}.bin", hex::encode(group)));
        Ok(fsutil::read_private(&path, MAX_GROUP_BYTES)?)
    }

    /// Replaces the file of group `group` atomically.
    pub fn write_group(&self, group: &[u8; 32], bytes: &[u8]) -> Result<(), StateError> {
        let dir = self.private_subdir(GROUPS_DIR)?;
        write_atomic(&dir, &format!("{}.bin", hex::encode(group)), bytes, true)
    }

    /// Removes the file of group `group` (the device left it, was removed, or refused).
    pub fn remove_group(&self, group: &[u8; 32]) -> Result<(), StateError> {
        let dir = self.dir.join(GROUPS_DIR);
        let path = dir.join(format!("{}.bin", hex::encode(group)));
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The groups that have a file.
    pub fn groups(&self) -> Result<Vec<[u8; 32]>, StateError> {
        keyed_files(&self.dir.join(GROUPS_DIR))
    }

    fn private_subdir(&self, name: &str) -> Result<PathBuf, StateError> {
        let dir = self.dir.join(name);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        check_dir(&dir)?;
        Ok(dir)
    }

    // ---- history ----

    /// Appends one entry and syncs it, so an acknowledged send or a shown message is on disk.
    pub fn append_history(&self, entry: &HistoryEntry) -> Result<(), StateError> {
        self.append_history_line(entry)
    }

    /// Appends a group message's line ([`GroupHistoryEntry`]) to the history, as
    /// [`Self::append_history`] does.
    pub fn append_group_history(&self, entry: &GroupHistoryEntry) -> Result<(), StateError> {
        self.append_history_line(entry)
    }

    fn append_history_line(&self, entry: &impl Serialize) -> Result<(), StateError> {
        let path = self.dir.join(HISTORY_FILE);
        let line = serde_json::to_vec(entry).map_err(|e| io_err(&path)(io::Error::from(e)))?;
        if line.len() > MAX_HISTORY_LINE {
            return Err(StateError::TooLarge {
                path,
                limit: MAX_HISTORY_LINE as u64,
                found: line.len() as u64,
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let mut buf = Vec::with_capacity(line.len() + 2);
        // A crash mid-append leaves a line without its newline; start on a fresh line so the torn
        // one stays a single unparsable line instead of swallowing this entry.
        if len > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1)
                .map_err(io_err(&path))?;
            if last[0] != b'\n' {
                buf.push(b'\n');
            }
        }
        buf.extend_from_slice(&line);
        buf.push(b'\n');
        (&file).write_all(&buf).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        if len == 0 {
            // The file may be new: make its directory entry durable too.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The last `limit` entries, oldest first. Reads from the end of the file, so the cost does
    /// not grow with the log. Lines that do not parse (a torn last line after a crash, or
    /// anything else damaged) are skipped.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        self.history_as(limit)
    }

    /// The lines among the last `limit` lines of the history that read as a `T`: every line as
    /// a [`HistoryEntry`], only a group's as a [`GroupHistoryEntry`].
    pub fn history_as<T: serde::de::DeserializeOwned>(
        &self,
        limit: usize,
    ) -> Result<Vec<T>, StateError> {
        let path = self.dir.join(HISTORY_FILE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let mut entries = read_last_lines(&file, len, limit, |line| {
            serde_json::from_slice::<T>(line).ok()
        })
        .map_err(io_err(&path))?;
        entries.reverse();
        Ok(entries)
    }
}

/// Refuses a directory others can write to: they could replace our files.
/// The 32-byte keys named by the `HEX.bin` files of `dir` (none if it does not exist), sorted.
fn keyed_files(dir: &Path) -> Result<Vec<[u8; 32]>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".bin")) else {
            continue;
        };
        let mut key = [0u8; 32];
        if hex::decode_to_slice(stem, &mut key).is_ok() {
            out.push(key);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn check_dir(dir: &Path) -> Result<(), StateError> {
    Ok(fsutil::check_private_dir(dir)?)
}

/// Reads a whole regular file of at most `limit` bytes; `None` if it does not exist.
fn read_capped(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, StateError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(StateError::NotAFile {
            path: path.to_owned(),
        });
    }
    let too_large = |found| StateError::TooLarge {
        path: path.to_owned(),
        limit,
        found,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // `take` guards against a file that grows after the stat.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// [`fsutil::write_atomic`] with the state's errors. Concurrent writers are kept apart by
/// [`DataDir::lock`].
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], replace: bool) -> Result<(), StateError> {
    fsutil::write_atomic(dir, name, bytes, replace).map_err(|e| {
        if e.source.kind() == io::ErrorKind::AlreadyExists {
            StateError::IdentityExists { path: e.path }
        } else {
            StateError::Io {
                path: e.path,
                source: e.source,
            }
        }
    })
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    fsutil::sync_dir(dir).map_err(io_err(dir))
}

/// Parses up to `limit` lines from the end of `file` (of length `len`), newest first, reading
/// backwards in chunks. Lines `parse` rejects are skipped; lines over [`MAX_HISTORY_LINE`] are
/// skipped without being held in memory whole.
fn read_last_lines<T>(
    file: &File,
    len: u64,
    limit: usize,
    mut parse: impl FnMut(&[u8]) -> Option<T>,
) -> io::Result<Vec<T>> {
    const CHUNK: u64 = 64 * 1024;
    let mut out = Vec::new();
    let mut pos = len;
    // The bytes from `pos` up to the end of the line that starts before `pos`.
    let mut tail: Vec<u8> = Vec::new();
    // The line that starts before `pos` was too long and `tail` dropped it: skip it once found.
    let mut skip_tail = false;
    while out.len() < limit {
        if pos == 0 {
            if !skip_tail && !tail.is_empty() {
                out.extend(parse(&tail));
            }
            break;
        }
        let n = CHUNK.min(pos);
        pos -= n;
        let mut data = vec![0u8; usize::try_from(n).unwrap_or(0)];
        file.read_exact_at(&mut data, pos)?;
        data.extend_from_slice(&tail);
        if let Some(first_nl) = data.iter().position(|&b| b == b'\n') {
            // Everything after the first newline is whole lines; rsplit yields the last first,
            // and the first one yielded is the line that ended in the old `tail`.
            for (i, line) in data[first_nl + 1..].rsplit(|&b| b == b'\n').enumerate() {
                if out.len() >= limit {
                    break;
                }
                if (i == 0 && skip_tail) || line.is_empty() {
                    continue;
                }
                if let Some(v) = parse(line) {
                    out.push(v);
                }
            }
            skip_tail = false;
            data.truncate(first_nl);
        }
        tail = data;
        if tail.len() > MAX_HISTORY_LINE {
            tail = Vec::new();
            skip_tail = true;
        }
    }
    Ok(out)
}

// ---- contacts ----

/// The address book: contact name → address string, kept sorted by name. Addresses are stored as
/// given; the caller parses them with its address type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contacts {
    map: BTreeMap<String, String>,
    /// Contacts whose safety number the person confirmed, with that number.
    verified: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct ContactsFile {
    #[serde(default)]
    contacts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    verified: BTreeMap<String, String>,
}

/// Checks a contact name: 1–32 characters of `A-Z a-z 0-9 _ . -`, so names are easy to type on
/// the command line and never look like options or paths with separators.
pub fn validate_contact_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CONTACT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidContactName {
            name: name.to_owned(),
        })
    }
}

impl Contacts {
    /// An empty address book.
    pub fn new() -> Contacts {
        Contacts::default()
    }

    /// Adds a contact. Refuses an existing name: silently repointing a name at another address
    /// would send the next message to someone else.
    pub fn add(&mut self, name: &str, address: &str) -> Result<(), StateError> {
        validate_contact_name(name)?;
        if self.map.contains_key(name) {
            return Err(StateError::DuplicateContact {
                name: name.to_owned(),
            });
        }
        self.map.insert(name.to_owned(), address.to_owned());
        Ok(())
    }

    /// Adds or replaces a contact; returns the address it had before, if any. A new address is
    /// not verified.
    pub fn replace(&mut self, name: &str, address: &str) -> Result<Option<String>, StateError> {
        validate_contact_name(name)?;
        let old = self.map.insert(name.to_owned(), address.to_owned());
        if old.as_deref() != Some(address) {
            self.verified.remove(name);
        }
        Ok(old)
    }

    /// Removes a contact and returns its address.
    pub fn remove(&mut self, name: &str) -> Result<String, StateError> {
        self.verified.remove(name);
        self.map
            .remove(name)
            .ok_or_else(|| StateError::NoSuchContact {
                name: name.to_owned(),
            })
    }

    /// Records that the person compared `safety_number` with `name` and they matched.
    pub fn set_verified(&mut self, name: &str, safety_number: &str) -> Result<(), StateError> {
        if !self.map.contains_key(name) {
            return Err(StateError::NoSuchContact {
                name: name.to_owned(),
            });
        }
        self.verified
            .insert(name.to_owned(), safety_number.to_owned());
        Ok(())
    }

    /// The safety number recorded when `name` was verified, if it was.
    pub fn verified(&self, name: &str) -> Option<&str> {
        self.verified.get(name).map(String::as_str)
    }

    /// The address of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// All contacts as (name, address), sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(n, a)| (n.as_str(), a.as_str()))
    }

    /// The number of contacts.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn parse_contacts(path: &Path, bytes: &[u8]) -> Result<Contacts, StateError> {
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(path, e))?;
    let file: ContactsFile = toml::from_str(text).map_err(|e| corrupt(path, e.message()))?;
    for name in file.contacts.keys().chain(file.verified.keys()) {
        validate_contact_name(name).map_err(|e| corrupt(path, e))?;
    }
    let mut verified = file.verified;
    verified.retain(|name, _| file.contacts.contains_key(name));
    Ok(Contacts {
        map: file.contacts,
        verified,
    })
}

// ---- state.json ----

/// A retrieve cursor as stored: everything at or before (timestamp, hash) has been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCursor {
    /// The message timestamp (node time, ms since the Unix epoch).
    pub timestamp: u64,
    /// The content hash, hex in the file.
    #[serde(with = "hex_array")]
    pub hash: [u8; 32],
}

/// A guard node the client keeps using as its first hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// The node's Ed25519 identity key, hex in the file.
    #[serde(with = "hex_array")]
    pub identity: [u8; 32],
    /// When it was chosen (ms since the Unix epoch), so guards can be rotated.
    pub chosen_at_ms: u64,
}

/// A set that remembers at most `cap` keys and forgets the oldest first, so the seen sets stay
/// small however long the client runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fifo<K: Eq + Hash + Copy> {
    order: VecDeque<K>,
    set: HashSet<K>,
    cap: usize,
}

impl<K: Eq + Hash + Copy> Fifo<K> {
    fn new(cap: usize) -> Self {
        Fifo {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap,
        }
    }

    fn contains(&self, k: &K) -> bool {
        self.set.contains(k)
    }

    /// Inserts `k` as the newest; an existing key keeps its place. Returns whether it was new.
    fn insert(&mut self, k: K) -> bool {
        if !self.set.insert(k) {
            return false;
        }
        self.order.push_back(k);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// The client's mutable state, saved in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientState {
    cursors: BTreeMap<[u8; 32], SavedCursor>,
    requests_cursor: Option<SavedCursor>,
    seen_ids: Fifo<[u8; 16]>,
    seen_hashes: Fifo<[u8; 32]>,
    guards: Vec<Guard>,
    roster_version: Option<u64>,
    roster_digest: Option<[u8; 32]>,
    clock_offset_ms: i64,
    published_prekey: Option<u32>,
    devices_refreshed_at: Option<u64>,
}

impl Default for ClientState {
    fn default() -> Self {
        ClientState {
            cursors: BTreeMap::new(),
            requests_cursor: None,
            seen_ids: Fifo::new(MAX_SEEN),
            seen_hashes: Fifo::new(MAX_SEEN),
            guards: Vec::new(),
            roster_version: None,
            roster_digest: None,
            clock_offset_ms: 0,
            published_prekey: None,
            devices_refreshed_at: None,
        }
    }
}

impl ClientState {
    /// Whether a message with this id was already shown.
    pub fn seen_id(&self, id: &[u8; 16]) -> bool {
        self.seen_ids.contains(id)
    }

    /// Remembers a message id, forgetting the oldest beyond [`MAX_SEEN`]. Returns whether it was
    /// new; a repeat keeps its original place in the eviction order.
    pub fn mark_seen_id(&mut self, id: &[u8; 16]) -> bool {
        self.seen_ids.insert(*id)
    }

    /// The remembered message ids, oldest first.
    pub fn seen_ids(&self) -> impl ExactSizeIterator<Item = &[u8; 16]> {
        self.seen_ids.order.iter()
    }

    /// Whether a stored message with this content hash was already fetched.
    pub fn seen_hash(&self, hash: &[u8; 32]) -> bool {
        self.seen_hashes.contains(hash)
    }

    /// Remembers a content hash, as [`Self::mark_seen_id`].
    pub fn mark_seen_hash(&mut self, hash: &[u8; 32]) -> bool {
        self.seen_hashes.insert(*hash)
    }

    /// The remembered content hashes, oldest first.
    pub fn seen_hashes(&self) -> impl ExactSizeIterator<Item = &[u8; 32]> {
        self.seen_hashes.order.iter()
    }

    /// The retrieve cursor of a mailbox (its 32-byte key).
    pub fn cursor(&self, mailbox: &[u8; 32]) -> Option<SavedCursor> {
        self.cursors.get(mailbox).copied()
    }

    /// Sets the retrieve cursor of a mailbox.
    pub fn set_cursor(&mut self, mailbox: &[u8; 32], cursor: SavedCursor) {
        self.cursors.insert(*mailbox, cursor);
    }

    /// The retrieve cursor of the account's requests namespace (storage.md §4.5).
    pub fn requests_cursor(&self) -> Option<SavedCursor> {
        self.requests_cursor
    }

    /// Sets the retrieve cursor of the account's requests namespace.
    pub fn set_requests_cursor(&mut self, cursor: SavedCursor) {
        self.requests_cursor = Some(cursor);
    }

    /// The guards, in the order they were set.
    pub fn guards(&self) -> &[Guard] {
        &self.guards
    }

    /// Replaces the guards.
    pub fn set_guards(&mut self, guards: Vec<Guard>) {
        self.guards = guards;
    }

    /// The last roster version accepted, so an older roster is never accepted again.
    pub fn roster_version(&self) -> Option<u64> {
        self.roster_version
    }

    /// Records the roster version accepted. The caller checks it is not older.
    pub fn set_roster_version(&mut self, version: u64) {
        self.roster_version = Some(version);
    }

    /// The digest recorded when the cached roster's bytes were verified
    /// (`allium_proto::roster::verified_digest`). Kept so that data directories of every version
    /// load alike; a load checks the roster whole either way (whitepaper client.md §6).
    pub fn roster_digest(&self) -> Option<&[u8; 32]> {
        self.roster_digest.as_ref()
    }

    /// Records the verified digest of the roster cached.
    pub fn set_roster_digest(&mut self, digest: [u8; 32]) {
        self.roster_digest = Some(digest);
    }

    /// The estimated offset of network time from the local clock, in ms (network − local).
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms
    }

    /// Records the clock offset.
    pub fn set_clock_offset_ms(&mut self, offset_ms: i64) {
        self.clock_offset_ms = offset_ms;
    }

    /// The id of the newest prekey bundle the swarm acknowledged publishing.
    pub fn published_prekey(&self) -> Option<u32> {
        self.published_prekey
    }

    /// Records that the bundle of prekey `id` is published.
    pub fn set_published_prekey(&mut self, id: u32) {
        self.published_prekey = Some(id);
    }

    /// When the primary last refreshed the account's delegation and list records (network
    /// time, Unix ms).
    pub fn devices_refreshed_at(&self) -> Option<u64> {
        self.devices_refreshed_at
    }

    /// Records a refresh of the delegation and list records; `None` asks for one at once.
    pub fn set_devices_refreshed_at(&mut self, at: Option<u64>) {
        self.devices_refreshed_at = at;
    }

    fn to_file(&self) -> StateFile {
        StateFile {
            version: STATE_VERSION,
            cursors: self.cursors.iter().map(|(k, v)| (Hex(*k), *v)).collect(),
            requests_cursor: self.requests_cursor,
            seen_ids: self.seen_ids.order.iter().map(|k| Hex(*k)).collect(),
            seen_hashes: self.seen_hashes.order.iter().map(|k| Hex(*k)).collect(),
            guards: self.guards.clone(),
            roster_version: self.roster_version,
            roster_digest: self.roster_digest.map(Hex),
            clock_offset_ms: self.clock_offset_ms,
            published_prekey: self.published_prekey,
            devices_refreshed_at: self.devices_refreshed_at,
        }
    }
}

/// The on-disk form of [`ClientState`]. Unknown fields are ignored; `version` guards format
/// changes that old readers must not misread.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    cursors: BTreeMap<Hex<32>, SavedCursor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests_cursor: Option<SavedCursor>,
    #[serde(default)]
    seen_ids: Vec<Hex<16>>,
    #[serde(default)]
    seen_hashes: Vec<Hex<32>>,
    #[serde(default)]
    guards: Vec<Guard>,
    #[serde(default)]
    roster_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roster_digest: Option<Hex<32>>,
    #[serde(default)]
    clock_offset_ms: i64,
    #[serde(default)]
    published_prekey: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    devices_refreshed_at: Option<u64>,
}

fn parse_state(path: &Path, bytes: &[u8]) -> Result<ClientState, StateError> {
    let file: StateFile = serde_json::from_slice(bytes).map_err(|e| corrupt(path, e))?;
    if file.version != STATE_VERSION {
        return Err(StateError::UnsupportedVersion {
            path: path.to_owned(),
            found: file.version,
        });
    }
    let mut state = ClientState {
        cursors: file.cursors.into_iter().map(|(k, v)| (k.0, v)).collect(),
        requests_cursor: file.requests_cursor,
        guards: file.guards,
        roster_version: file.roster_version,
        roster_digest: file.roster_digest.map(|d| d.0),
        clock_offset_ms: file.clock_offset_ms,
        published_prekey: file.published_prekey,
        devices_refreshed_at: file.devices_refreshed_at,
        ..ClientState::default()
    };
    // Oldest first on disk; inserting in order keeps the newest MAX_SEEN if the file has more.
    for id in file.seen_ids {
        state.seen_ids.insert(id.0);
    }
    for hash in file.seen_hashes {
        state.seen_hashes.insert(hash.0);
    }
    Ok(state)
}

/// Fixed-size bytes as a hex string (a JSON map key too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Serialize for Hex<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        hex_array::serialize(&self.0, s)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Hex<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        hex_array::deserialize(d).map(Hex)
    }
}

/// `#[serde(with)]` helpers: `[u8; N]` as lower-case hex.
mod hex_array {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

// ---- history ----

/// Whether a message was sent or received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sent by this client.
    Sent,
    /// Received by this client.
    Received,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Sent or received.
    pub direction: Direction,
    /// The other party's address.
    pub peer: String,
    /// When it was sent (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The message id, hex in the file.
    #[serde(with = "hex_array")]
    pub msg_id: [u8; 16],
    /// The text.
    pub text: String,
    /// For a sent message, how far it got. A later line with the same `msg_id` and direction
    /// updates an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// A group message's line of `history.jsonl` (`whitepaper/groups.md` §13.5): a [`HistoryEntry`]
/// whose `peer` is the group's address (its key `G` in the address encoding, which names the
/// group mailbox), with two more fields: `group`, the group's name on this device, and `from`,
/// the writer's address (this account's for a message it wrote). A reader that knows only
/// [`HistoryEntry`] ignores the two and sees one conversation per group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHistoryEntry {
    /// The entry, its `peer` naming the group.
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// The group's local name.
    pub group: String,
    /// The writer's address.
    pub from: String,
}

/// How far a sent message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Sealed and kept in the outbox; not yet acknowledged by the recipient's swarm.
    Sending,
    /// Acknowledged: held by `holders` of the swarm's `members`.
    Stored {
        /// Members holding it.
        holders: u32,
        /// Members of the swarm.
        members: u32,
    },
}

/// Folds `entries` (oldest first, as [`DataDir::history`] returns them) into one entry per
/// message: a later line with the same `msg_id` and direction updates the delivery of the first,
/// which keeps its place. A delivery never goes back from stored to sending.
pub fn fold_history(entries: Vec<HistoryEntry>) -> Vec<HistoryEntry> {
    let mut at: std::collections::HashMap<([u8; 16], Direction), usize> =
        std::collections::HashMap::with_capacity(entries.len());
    let mut out: Vec<HistoryEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        match at.get(&(e.msg_id, e.direction)) {
            Some(&i) => {
                let first = &mut out[i];
                let stored = matches!(first.delivery, Some(Delivery::Stored { .. }));
                if e.delivery.is_some() && !(stored && e.delivery == Some(Delivery::Sending)) {
                    first.delivery = e.delivery;
                }
            }
            None => {
                at.insert((e.msg_id, e.direction), out.len());
                out.push(e);
            }
        }
    }
    out
}

// ---- read.json ----

/// The last message read in one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    /// Its message id, hex in the file.
    #[serde(with = "hex_array")]
    pub msg_id: [u8; 16],
    /// Its time, for when the message has left the part of the history read back.
    pub timestamp_ms: u64,
}

/// How far each conversation (by the other party's address) was read. Kept apart from
/// `state.json` so that a device can later sync them without touching cursors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadMarks {
    map: BTreeMap<String, ReadMark>,
}

impl ReadMarks {
    /// The mark of the conversation with `peer`.
    pub fn get(&self, peer: &str) -> Option<&ReadMark> {
        self.map.get(peer)
    }

    /// The marks, by the other party's address.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ReadMark)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Sets the mark of the conversation with `peer`; returns whether it changed.
    pub fn set(&mut self, peer: &str, mark: ReadMark) -> bool {
        self.map.insert(peer.to_owned(), mark) != Some(mark)
    }
}

#[derive(Serialize, Deserialize)]
struct ReadFile {
    version: u32,
    #[serde(default)]
    read: BTreeMap<String, ReadMark>,
}

fn parse_read(path: &Path, bytes: &[u8]) -> Result<ReadMarks, StateError> {
    let file: ReadFile = serde_json::from_slice(bytes).map_err(|e| corrupt(path, e))?;
    if file.version != READ_VERSION {
        return Err(StateError::UnsupportedVersion {
            path: path.to_owned(),
            found: file.version,
        });
    }
    Ok(ReadMarks { map: file.read })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn state_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_state(Path::new("state.json"), &bytes);
        }

        #[test]
        fn state_parser_never_panics_on_near_json(text in "[\\[\\]{}\":,0-9a-f ]{0,200}") {
            let _ = parse_state(Path::new("state.json"), text.as_bytes());
            let with_version = format!("{{\"version\":1,{text}");
            let _ = parse_state(Path::new("state.json"), with_version.as_bytes());
        }

        #[test]
        fn contacts_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_contacts(Path::new("contacts.toml"), &bytes);
        }

        #[test]
        fn contacts_parser_never_panics_on_near_toml(text in "[\\[\\]=\"'a-z0-9._\\- \n]{0,200}") {
            let _ = parse_contacts(Path::new("contacts.toml"), text.as_bytes());
        }
    }

    fn sent(id: u8, delivery: Delivery) -> HistoryEntry {
        HistoryEntry {
            direction: Direction::Sent,
            peer: "p".into(),
            timestamp_ms: u64::from(id),
            msg_id: [id; 16],
            text: format!("m{id}"),
            delivery: Some(delivery),
        }
    }

    #[test]
    fn folding_keeps_one_entry_per_message_at_its_first_place() {
        let stored = Delivery::Stored {
            holders: 2,
            members: 3,
        };
        let folded = fold_history(vec![
            sent(1, Delivery::Sending),
            sent(2, Delivery::Sending),
            sent(1, stored),
            // A late "sending" line (another process) never undoes "stored".
            sent(1, Delivery::Sending),
        ]);
        let got: Vec<_> = folded.iter().map(|e| (e.msg_id[0], e.delivery)).collect();
        assert_eq!(got, vec![(1, Some(stored)), (2, Some(Delivery::Sending))]);
    }

    #[test]
    fn read_marks_round_trip_and_refuse_other_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&tmp.path().join("d")).unwrap();
        assert_eq!(dir.read_marks().ok(), Some(ReadMarks::default()));
        let mut marks = ReadMarks::default();
        let mark = ReadMark {
            msg_id: [7; 16],
            timestamp_ms: 5,
        };
        assert!(marks.set("allium1x", mark));
        assert!(!marks.set("allium1x", mark));
        assert!(dir.save_read_marks(&marks).is_ok());
        assert_eq!(dir.read_marks().ok(), Some(marks));
        let newer = br#"{"version":2,"read":{}}"#;
        assert!(matches!(
            parse_read(Path::new("read.json"), newer),
            Err(StateError::UnsupportedVersion { found: 2, .. })
        ));
    }

    #[test]
    fn state_round_trips_through_the_file_form() {
        let mut state = ClientState::default();
        state.mark_seen_id(&[1; 16]);
        state.mark_seen_hash(&[2; 32]);
        state.set_cursor(
            &[3; 32],
            SavedCursor {
                timestamp: 7,
                hash: [4; 32],
            },
        );
        state.set_roster_version(9);
        state.set_roster_digest([5; 32]);
        state.set_clock_offset_ms(-12);
        let bytes = serde_json::to_vec(&state.to_file());
        assert!(bytes.is_ok());
        let parsed = parse_state(Path::new("s"), &bytes.unwrap_or_default());
        assert!(matches!(parsed, Ok(ref p) if *p == state), "{parsed:?}");
    }
}
