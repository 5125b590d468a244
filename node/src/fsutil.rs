//! Crash-safe file writes, shared by the node's key store and roster cache and by the client's
//! local state: a crash leaves the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A failed write, with the path it concerned. `source.kind()` is `AlreadyExists` when a write
/// that must not replace found the file there.
#[derive(Debug)]
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
    sync_dir(dir).map_err(at(dir))
}

/// Makes a rename, removal or new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}
