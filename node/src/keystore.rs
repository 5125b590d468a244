//! The node's keys in its data directory:
//!
//! ```text
//! <data_dir>/            0700
//!   identity.key         0600  the 32-byte Ed25519 seed
//!   onion/               0700
//!     <epoch>.key        0600  the 32-byte X25519 secret of that epoch
//! ```
//!
//! Files are written atomically (temp file, fsync, rename, fsync of the directory), so a crash
//! leaves either the old file or the new one. Key files readable by anyone but the owner are
//! refused, and nothing here prints a secret: secrets pass through [`Zeroizing`] buffers only.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use allium_onion::{Epoch, IdentityKeypair, OnionSecretKey, keys::KEY_LEN};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use allium_fsutil as fsutil;

/// File name of the identity key in the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// Directory of the onion keys in the data directory.
pub const ONION_DIR: &str = "onion";

/// Why a key could not be stored or loaded. Each names the file and what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `init` found an identity already there; replacing it would change the node's identity.
    #[error(
        "{} already exists; refusing to replace this node's identity (move it away first if that \
         is really what you want)",
        path.display()
    )]
    IdentityExists {
        /// The existing identity file.
        path: PathBuf,
    },
    /// `open` found no identity.
    #[error("no identity key at {}; initialise the data directory first", path.display())]
    NoIdentity {
        /// Where it was expected.
        path: PathBuf,
    },
    /// A key file that others can read, a key folder others can write, a key path that is not a
    /// regular file, or a key file of the wrong length.
    #[error(transparent)]
    Private(#[from] fsutil::PrivateError),
    /// A file in the onion key directory whose name is not `<epoch>.key`.
    #[error("{} is not named <epoch>.key; remove or rename it", path.display())]
    BadFileName {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The onion keys found on disk, and the files that were refused (the node logs those and makes
/// new keys rather than refusing to start).
#[derive(Debug, Default)]
pub struct OnionKeyLoad {
    /// Keys that loaded, in epoch order.
    pub keys: Vec<OnionSecretKey>,
    /// One error per refused file.
    pub rejected: Vec<KeyStoreError>,
}

/// The data directory with the node's identity loaded.
pub struct KeyStore {
    dir: PathBuf,
    identity: IdentityKeypair,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The public key only; `IdentityKeypair`'s own Debug is redacted too.
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("identity", &self.identity.public())
            .finish()
    }
}

impl KeyStore {
    /// Creates `data_dir` (mode 0700) if needed and a new identity in it. Refuses if an identity
    /// is already there.
    pub fn init(data_dir: &Path, rng: &mut impl CryptoRngCore) -> Result<KeyStore, KeyStoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(IDENTITY_FILE);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(KeyStoreError::IdentityExists { path });
        }
        let identity = IdentityKeypair::generate(rng);
        write_atomic(data_dir, IDENTITY_FILE, identity.seed().as_ref(), false)?;
        create_private_dir(&data_dir.join(ONION_DIR))?;
        Ok(KeyStore {
            dir: data_dir.to_owned(),
            identity,
        })
    }

    /// Loads the identity from `data_dir`.
    pub fn open(data_dir: &Path) -> Result<KeyStore, KeyStoreError> {
        let path = data_dir.join(IDENTITY_FILE);
        match check_dir(data_dir) {
            Err(e) if e.is_not_found() => return Err(KeyStoreError::NoIdentity { path }),
            other => other?,
        }
        let seed = match read_key(&path) {
            Err(e) if e.is_not_found() => return Err(KeyStoreError::NoIdentity { path }),
            other => other?,
        };
        let identity = IdentityKeypair::from_seed(&seed);
        create_private_dir(&data_dir.join(ONION_DIR))?;
        Ok(KeyStore {
            dir: data_dir.to_owned(),
            identity,
        })
    }

    /// The node's long-term identity.
    pub fn identity(&self) -> &IdentityKeypair {
        &self.identity
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the onion key of `epoch`.
    pub fn onion_path(&self, epoch: Epoch) -> PathBuf {
        self.dir.join(ONION_DIR).join(onion_file_name(epoch))
    }

    /// Stores `key` as the onion key of its epoch, replacing any earlier file of that epoch.
    pub fn save_onion(&self, key: &OnionSecretKey) -> Result<(), KeyStoreError> {
        let dir = self.dir.join(ONION_DIR);
        create_private_dir(&dir)?;
        write_atomic(
            &dir,
            &onion_file_name(key.epoch()),
            key.to_bytes().as_ref(),
            true,
        )
    }

    /// Every onion key on disk. Files that are not keys are reported in `rejected`, not fatal; an
    /// unreadable directory is.
    pub fn load_onion_keys(&self) -> Result<OnionKeyLoad, KeyStoreError> {
        let dir = self.dir.join(ONION_DIR);
        let mut load = OnionKeyLoad::default();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(load),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                load.rejected.push(KeyStoreError::BadFileName { path });
                continue;
            };
            // Dot files are our temp files from an interrupted write.
            if name.starts_with('.') {
                continue;
            }
            let Some(epoch) = parse_onion_file_name(name) else {
                load.rejected.push(KeyStoreError::BadFileName { path });
                continue;
            };
            match read_key(&path) {
                Ok(bytes) => load.keys.push(OnionSecretKey::from_bytes(epoch, &bytes)),
                Err(e) => load.rejected.push(e.into()),
            }
        }
        load.keys.sort_by_key(|k| k.epoch());
        Ok(load)
    }

    /// Destroys the onion key of `epoch`: overwrites the file with zeros, syncs, removes it and
    /// syncs the directory. Returns whether there was a file. The overwrite is best effort (a
    /// copy-on-write or journaling file system may keep old blocks); it narrows the window in which
    /// the key can be recovered from disk.
    pub fn delete_onion(&self, epoch: Epoch) -> Result<bool, KeyStoreError> {
        let dir = self.dir.join(ONION_DIR);
        let path = dir.join(onion_file_name(epoch));
        let mut file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(KEY_LEN).min(1 << 20)];
        file.write_all(&zeros).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        drop(file);
        fs::remove_file(&path).map_err(io_err(&path))?;
        sync_dir(&dir)?;
        Ok(true)
    }
}

fn onion_file_name(epoch: Epoch) -> String {
    format!("{}.key", epoch.0)
}

/// The epoch of a canonical `<epoch>.key` name (`007.key` is refused, so one epoch has one name).
fn parse_onion_file_name(name: &str) -> Option<Epoch> {
    let number = name.strip_suffix(".key")?;
    let epoch: u32 = number.parse().ok()?;
    (onion_file_name(Epoch(epoch)) == name).then_some(Epoch(epoch))
}

/// Creates `dir` (and parents) mode 0700, or checks an existing one.
fn create_private_dir(dir: &Path) -> Result<(), KeyStoreError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(check_dir(dir)?),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Refuses a directory others can write to: they could swap our key files.
fn check_dir(dir: &Path) -> Result<(), fsutil::PrivateError> {
    fsutil::check_private_dir(dir)
}

/// Reads a key file: a regular file, mode without group/other bits, exactly one key long.
fn read_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, fsutil::PrivateError> {
    fsutil::read_secret(path)
}

/// [`fsutil::write_atomic`] with the key store's errors.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], replace: bool) -> Result<(), KeyStoreError> {
    fsutil::write_atomic(dir, name, bytes, replace).map_err(|e| {
        if e.source.kind() == io::ErrorKind::AlreadyExists {
            KeyStoreError::IdentityExists { path: e.path }
        } else {
            KeyStoreError::Io {
                path: e.path,
                source: e.source,
            }
        }
    })
}

fn sync_dir(dir: &Path) -> Result<(), KeyStoreError> {
    fsutil::sync_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onion_file_names_are_canonical() {
        assert_eq!(parse_onion_file_name("7.key"), Some(Epoch(7)));
        assert_eq!(
            parse_onion_file_name("4294967295.key"),
            Some(Epoch(u32::MAX))
        );
        for bad in [
            "007.key",
            "+7.key",
            "7.key.bak",
            "x.key",
            ".key",
            "7",
            "4294967296.key",
        ] {
            assert_eq!(parse_onion_file_name(bad), None, "{bad}");
        }
    }
}
