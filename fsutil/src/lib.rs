//! Private, crash-safe files, shared by the node's key store and roster cache and by the client's
//! local state: a crash leaves the old file or the new one, never a torn one; secrets are read only
//! from files nobody else can read; one process at a time holds a directory's lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A failed file operation, with the path it concerned. `source.kind()` is `AlreadyExists` when a
/// write that must not replace found the file there.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    /// The file or folder the failing step touched.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_owned(),
        source,
    }
}

/// Writes `dir/name` atomically with mode 0600 (set at creation, so the bytes are never readable
/// by others, not even briefly): a temp file is written and synced, renamed into place, and the
/// folder synced. With `replace` false an existing file is never replaced, even by a racing
/// writer: the new file is hard-linked in, which fails if the name exists. The temp name is
/// fixed, so a temp file left by a crash is removed by the next write; callers keep concurrent
/// writers of one name apart.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], replace: bool) -> Result<(), WriteError> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // Writers of the same file in several processes (a `listen` beside a `send`) share the
    // temporary name: they take turns, or one would remove or rename the other's copy.
    let turn_path = dir.join(format!(".{name}.lock"));
    let turn = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&turn_path)
        .map_err(at(&turn_path))?;
    rustix::fs::flock(&turn, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| at(&turn_path)(e.into()))?;
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(&tmp)(e)),
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(at(&tmp))?;
        file.write_all(bytes).map_err(at(&tmp))?;
        file.sync_all().map_err(at(&tmp))?;
        drop(file);
        if replace {
            fs::rename(&tmp, &target).map_err(at(&target))
        } else {
            let linked = fs::hard_link(&tmp, &target);
            let removed = fs::remove_file(&tmp);
            linked.map_err(at(&target))?;
            removed.map_err(at(&tmp))
        }
    })();
    if result.is_err() {
        // Best effort: leave no copy of a secret or a half-written file behind.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    let synced = sync_dir(dir).map_err(at(dir));
    drop(turn);
    synced
}

/// Makes a rename, removal or new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Why a private file or folder (keys, an identity) is refused. Callers carry it as the `source`
/// of their own error; its message names the file and the command that fixes it.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// Inspecting or reading it failed; [`Self::is_not_found`] when it is absent.
    #[error(transparent)]
    Io(WriteError),
    /// A file path that is a symlink, a folder or the like.
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// Others could read the file, or write into the folder.
    #[error(
        "{} has mode {mode:04o}, which lets other users {}; run `chmod {:o} {}`",
        path.display(),
        if *dir { "replace the files in it" } else { "read it" },
        self.fix_mode().unwrap_or(0),
        path.display()
    )]
    Insecure {
        /// The file or folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Whether it is a folder.
        dir: bool,
    },
    /// A secret file of another length than the secret.
    #[error("{} is {found} bytes long, expected {expected}; the file is damaged", path.display())]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// The secret's length.
        expected: u64,
        /// The file's length.
        found: u64,
    },
    /// A private file longer than its limit: not one this program wrote.
    #[error("{} is larger than {max} bytes ({found}); it is not a file allium wrote", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
        /// The size found (at least).
        found: u64,
    },
}

impl PrivateError {
    /// Whether the file or folder does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PrivateError::Io(e) if e.source.kind() == io::ErrorKind::NotFound)
    }

    /// The mode that fixes an [`Insecure`](Self::Insecure) file (0600) or folder (0700).
    pub fn fix_mode(&self) -> Option<u32> {
        match self {
            PrivateError::Insecure { dir: true, .. } => Some(0o700),
            PrivateError::Insecure { dir: false, .. } => Some(0o600),
            _ => None,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PrivateError + '_ {
    move |source| PrivateError::Io(at(path)(source))
}

/// Refuses a folder that group or others can write to: they could swap the secrets in it.
pub fn check_private_dir(dir: &Path) -> Result<(), PrivateError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(dir).map_err(io_at(dir))?;
    if !meta.is_dir() {
        return Err(io_at(dir)(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PrivateError::Insecure {
            path: dir.to_owned(),
            mode,
            dir: true,
        });
    }
    Ok(())
}

/// Reads an `N`-byte secret: a regular file (not a symlink), without group or other permission
/// bits, exactly `N` bytes long.
pub fn read_secret<const N: usize>(
    path: &Path,
) -> Result<zeroize::Zeroizing<[u8; N]>, PrivateError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    // lstat first: a symlink could point a secret's path at a file we never meant to trust.
    let link_meta = fs::symlink_metadata(path).map_err(io_at(path))?;
    if !link_meta.is_file() {
        return Err(PrivateError::NotAFile(path.to_owned()));
    }
    let mut file = File::open(path).map_err(io_at(path))?;
    let meta = file.metadata().map_err(io_at(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateError::Insecure {
            path: path.to_owned(),
            mode,
            dir: false,
        });
    }
    let expected = N as u64;
    let wrong = |found| PrivateError::WrongLength {
        path: path.to_owned(),
        expected,
        found,
    };
    if meta.len() != expected {
        return Err(wrong(meta.len()));
    }
    let mut secret = zeroize::Zeroizing::new([0u8; N]);
    file.read_exact(secret.as_mut()).map_err(io_at(path))?;
    // The file may have grown since the stat; a longer file is still the wrong length.
    let mut extra = [0u8; 1];
    if file.read(&mut extra).map_err(io_at(path))? != 0 {
        return Err(wrong(expected + 1));
    }
    Ok(secret)
}

/// An exclusive advisory lock (`flock`) on a file, held until dropped. The kernel releases it
/// when the process dies, so a crash leaves no stale lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why [`lock`] did not take the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another handle in this one) holds it.
    #[error("{} is held by another process", .0.display())]
    Held(PathBuf),
    /// The lock file could not be opened or locked.
    #[error(transparent)]
    Io(WriteError),
}

/// Takes the exclusive lock on `path` (created 0600 if absent) without waiting.
pub fn lock(path: &Path) -> Result<DirLock, LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| LockError::Io(at(path)(e)))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DirLock {
            _file: file,
            path: path.to_owned(),
        }),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(LockError::Held(path.to_owned())),
        Err(e) => Err(LockError::Io(at(path)(e.into()))),
    }
}

/// Reads a private file of at most `max` bytes: a regular file (not a symlink) without group or
/// other permission bits. `None` when it does not exist. The bytes are wiped when dropped.
pub fn read_private(
    path: &Path,
    max: u64,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, PrivateError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let link_meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    if !link_meta.is_file() {
        return Err(PrivateError::NotAFile(path.to_owned()));
    }
    let file = File::open(path).map_err(io_at(path))?;
    let meta = file.metadata().map_err(io_at(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateError::Insecure {
            path: path.to_owned(),
            mode,
            dir: false,
        });
    }
    let too_long = |found| PrivateError::TooLarge {
        path: path.to_owned(),
        max,
        found,
    };
    if meta.len() > max {
        return Err(too_long(meta.len()));
    }
    let mut bytes =
        zeroize::Zeroizing::new(Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0)));
    // `take` guards against a file that grows after the stat.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(path))?;
    if bytes.len() as u64 > max {
        return Err(too_long(bytes.len() as u64));
    }
    Ok(Some(bytes))
}
