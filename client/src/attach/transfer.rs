//! Upload and download (`whitepaper/attachments.md` §5): up to `paths` chunks in flight, each
//! request on its own onion path to a random member of the swarm, retried around failed hops by
//! [`Net::request`]; a progress file in the data directory's `transfers/` folder, replaced
//! atomically, from which a transfer resumes after a crash.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use allium_proto::storage::{
    BLOB, Body, Mailbox, Method, NodeId, ReadBlobRequest, Request, ResponseBody, StoreRequest,
};
use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AttachError;
use super::chunk::{BlobKeys, CHUNK, MAX_FILE, chunk_count, leaf, root};
use super::file::{FileRef, link_unique, name_of, sanitize};
use crate::flows::Flow;
use crate::net::{MailboxSigner, Net, NetError};

/// Chunks in flight at once by default, each on its own path.
pub const DEFAULT_PATHS: usize = 4;
/// Folder of progress files in the data directory.
pub const TRANSFERS_DIR: &str = "transfers";
/// Longest a progress file may be (a bitmap of 17,492 chunks and a few names).
const MAX_PROGRESS_BYTES: u64 = 64 << 10;
/// How often the progress file is rewritten while chunks complete: each rewrite is a synced
/// write, and whatever completed since the last one is sent again after a crash.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
const STATE_VERSION: u32 = 1;

/// How a transfer runs.
#[derive(Debug, Clone, Copy)]
pub struct TransferConfig {
    /// Chunks in flight at once.
    pub paths: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            paths: DEFAULT_PATHS,
        }
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Chunks done (acknowledged by a majority, or fetched and checked).
    pub done: u32,
    /// Chunks in all.
    pub total: u32,
    /// File bytes done.
    pub bytes: u64,
    /// File bytes in all.
    pub size: u64,
    /// Chunks already done when this run started (kept from an interrupted run).
    pub resumed: u32,
    /// Chunks this run sent or fetched.
    pub transferred: u32,
    /// Uploads answered "already held": chunks that went out twice.
    pub duplicates: u32,
    /// Chunks refused by their check and fetched again elsewhere.
    pub refused: u32,
}

/// The `transfers/` folder of a data directory.
#[derive(Debug, Clone)]
pub struct Transfers {
    dir: PathBuf,
}

impl Transfers {
    /// The folder under `data_dir`, created (mode 0700) if missing.
    pub fn open(data_dir: &Path) -> Result<Transfers, AttachError> {
        let dir = data_dir.join(TRANSFERS_DIR);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                allium_fsutil::sync_dir(data_dir).map_err(|e| AttachError::io(data_dir, e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(AttachError::io(&dir, e)),
        }
        Ok(Transfers { dir })
    }

    fn read<T: for<'a> Deserialize<'a>>(&self, name: &str) -> Result<Option<T>, AttachError> {
        let path = self.dir.join(name);
        let bytes = match allium_fsutil::read_private(&path, MAX_PROGRESS_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(AttachError::Progress(
                    path.display().to_string(),
                    e.to_string(),
                ));
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AttachError::Progress(path.display().to_string(), e.to_string()))
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), AttachError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(value).map_err(|_| AttachError::Internal("progress encoding"))?,
        );
        allium_fsutil::write_atomic(&self.dir, name, &bytes, true)
            .map_err(|e| AttachError::Progress(name.to_owned(), e.to_string()))
    }

    fn remove(&self, name: &str) -> Result<(), AttachError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => allium_fsutil::sync_dir(&self.dir).map_err(|e| AttachError::io(&self.dir, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AttachError::io(&path, e)),
        }
    }

    fn names(&self, prefix: &str) -> Result<Vec<String>, AttachError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| AttachError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| AttachError::io(&self.dir, e))?;
            if let Some(n) = entry.file_name().to_str() {
                if n.starts_with(prefix) && n.ends_with(".json") {
                    out.push(n.to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Records a received file message as a pending download, before the message is recorded
    /// as received: a crash in between loses no file. Recording it again changes nothing.
    pub fn register_download(&self, file: &FileRef, from: &str) -> Result<(), AttachError> {
        let name = download_name(&file.keys());
        if self.read::<DownloadState>(&name)?.is_some() {
            return Ok(());
        }
        let state = DownloadState {
            version: STATE_VERSION,
            from: from.to_owned(),
            file: hex::encode(file.encode()),
            dir: None,
            part: None,
            done: hex::encode(vec![0u8; bitmap_len(file.chunks())]),
        };
        self.write(&name, &state)
    }

    /// The downloads recorded and not finished, oldest name first.
    pub fn pending_downloads(&self) -> Result<Vec<Download>, AttachError> {
        let mut out = Vec::new();
        for name in self.names("down-")? {
            let Some(state) = self.read::<DownloadState>(&name)? else {
                continue;
            };
            let file = state.file_ref(&name)?;
            out.push(Download {
                from: state.from,
                file,
                started: state.part.is_some(),
            });
        }
        Ok(out)
    }

    /// Forgets a pending download (the person declined it).
    pub fn drop_download(&self, file: &FileRef) -> Result<(), AttachError> {
        let name = download_name(&file.keys());
        if let Some(state) = self.read::<DownloadState>(&name)? {
            if let Some(part) = state.part {
                let _ = fs::remove_file(part);
            }
        }
        self.remove(&name)
    }
}

/// A download waiting or under way.
#[derive(Debug, Clone)]
pub struct Download {
    /// Who sent it (an address).
    pub from: String,
    /// The file.
    pub file: FileRef,
    /// Chunks were fetched before (it resumes).
    pub started: bool,
}

fn bitmap_len(n: u32) -> usize {
    (n as usize).div_ceil(8)
}

fn get_bit(map: &[u8], i: u32) -> bool {
    map.get(i as usize / 8)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(map: &mut [u8], i: u32) {
    if let Some(b) = map.get_mut(i as usize / 8) {
        *b |= 1 << (i % 8);
    }
}

fn decode_bitmap(hex_map: &str, n: u32, name: &str) -> Result<Vec<u8>, AttachError> {
    let map = hex::decode(hex_map)
        .map_err(|_| AttachError::Progress(name.to_owned(), "bad chunk map".into()))?;
    if map.len() != bitmap_len(n) {
        return Err(AttachError::Progress(
            name.to_owned(),
            "chunk map of the wrong size".into(),
        ));
    }
    Ok(map)
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Blake2b::<U16>::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn download_name(keys: &BlobKeys) -> String {
    format!("down-{}.json", short_hash(&[&keys.blob_id]))
}

/// Progress of an upload, on disk.
#[derive(Serialize, Deserialize)]
struct UploadState {
    version: u32,
    path: PathBuf,
    size: u64,
    key: String,
    root: String,
    msg_id: String,
    /// The expiry the first acknowledged chunk reported.
    expiry: Option<u64>,
    done: String,
}

/// Progress of a download, on disk.
#[derive(Serialize, Deserialize)]
struct DownloadState {
    version: u32,
    from: String,
    /// The file message body.
    file: String,
    /// The folder the file goes to, fixed when the download starts.
    dir: Option<PathBuf>,
    /// The temporary file the chunks go to.
    part: Option<PathBuf>,
    done: String,
}

impl DownloadState {
    fn file_ref(&self, name: &str) -> Result<FileRef, AttachError> {
        let bytes = hex::decode(&self.file)
            .map_err(|_| AttachError::Progress(name.to_owned(), "bad file message".into()))?;
        FileRef::decode(&bytes)
    }
}

/// A finished upload: what the file message carries, and under which message id.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The file reference for the message.
    pub file: FileRef,
    /// The message id to send it under (kept across restarts, so a resumed upload announces
    /// the file once).
    pub msg_id: [u8; 16],
    /// The progress at the end.
    pub progress: Progress,
    /// The progress file, removed by [`Self::finish`] once the message is on its way.
    state: String,
}

impl Upload {
    /// Forgets the upload's progress file: call once the file message is in the outbox.
    pub fn finish(&self, transfers: &Transfers) -> Result<(), AttachError> {
        transfers.remove(&self.state)
    }
}

fn read_chunk(file: &File, path: &Path, size: u64, i: u32) -> Result<Vec<u8>, AttachError> {
    let start = u64::from(i) * CHUNK as u64;
    let len = usize::try_from(size.saturating_sub(start).min(CHUNK as u64)).unwrap_or(CHUNK);
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, start)
        .map_err(|e| AttachError::io(path, e))?;
    Ok(buf)
}

/// The root of the file at `path` under `keys`: one pass that seals every chunk.
fn root_of(keys: &BlobKeys, file: &File, path: &Path, size: u64) -> Result<[u8; 32], AttachError> {
    let n = chunk_count(size);
    let mut leaves = Vec::with_capacity(n as usize);
    for i in 0..n {
        let plain = read_chunk(file, path, size, i)?;
        leaves.push(leaf(&keys.seal(i, n, &plain)?));
    }
    Ok(root(size, &leaves))
}

fn hex32(s: &str, name: &str) -> Result<[u8; 32], AttachError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| AttachError::Progress(name.to_owned(), "bad hex".into()))?;
    Ok(out)
}

/// Stores one sealed chunk in `lane`; returns its expiry and whether the node already held it.
async fn store_chunk(
    net: &Net,
    owner: &dyn MailboxSigner,
    mailbox: Mailbox,
    lane: u8,
    ttl_ms: u64,
    data: Vec<u8>,
) -> Result<(u64, bool), NetError> {
    let body = Body::Store(StoreRequest {
        mailbox,
        namespace: BLOB,
        ttl_ms,
        data,
        token: None,
    });
    // The member links the chunks by the key that signs them: a lane is a flow (onion.md §12.5).
    let flow = Flow::Chunks(mailbox, lane);
    match net
        .signed_in_flow(flow, &mailbox, Method::Store, body, owner)
        .await?
    {
        ResponseBody::Store(s) => Ok((s.expiry, s.duplicate)),
        _ => Err(NetError::Refused(allium_proto::Status::Internal)),
    }
}

/// Uploads the file at `path` to the blob namespace of `mailbox` (signed by `owner`: the
/// account key, or a linked device's delegate key) for a message to `recipient`,
/// resuming an interrupted upload of the same file to the same recipient. Returns once every
/// chunk is acknowledged by a majority of the swarm.
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    net: &Net,
    owner: &dyn MailboxSigner,
    mailbox: Mailbox,
    transfers: &Transfers,
    recipient: &[u8; 32],
    path: &Path,
    media: &str,
    cfg: TransferConfig,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Upload, AttachError> {
    let path = fs::canonicalize(path).map_err(|e| AttachError::io(path, e))?;
    let file = File::open(&path).map_err(|e| AttachError::io(&path, e))?;
    let size = file
        .metadata()
        .map_err(|e| AttachError::io(&path, e))?
        .len();
    if size > MAX_FILE {
        return Err(AttachError::TooLarge(size));
    }
    let n = chunk_count(size);
    let state_name = format!(
        "up-{}.json",
        short_hash(&[
            recipient,
            path.as_os_str().as_encoded_bytes(),
            &size.to_be_bytes()
        ])
    );
    let mut state = match transfers.read::<UploadState>(&state_name)? {
        Some(s) if s.version == STATE_VERSION && s.size == size => {
            let keys = BlobKeys::new(hex32(&s.key, &state_name)?);
            // Sealing is deterministic: the same key over the same bytes gives the same root.
            if root_of(&keys, &file, &path, size)? != hex32(&s.root, &state_name)? {
                transfers.remove(&state_name)?;
                return Err(AttachError::Changed(path.display().to_string()));
            }
            s
        }
        _ => {
            let mut key = [0u8; 32];
            OsRng.fill_bytes(&mut key);
            let keys = BlobKeys::new(key);
            let mut msg_id = [0u8; 16];
            OsRng.fill_bytes(&mut msg_id);
            let s = UploadState {
                version: STATE_VERSION,
                path: path.clone(),
                size,
                key: hex::encode(key),
                root: hex::encode(root_of(&keys, &file, &path, size)?),
                msg_id: hex::encode(msg_id),
                expiry: None,
                done: hex::encode(vec![0u8; bitmap_len(n)]),
            };
            transfers.write(&state_name, &s)?;
            s
        }
    };
    let keys = BlobKeys::new(hex32(&state.key, &state_name)?);
    let mut done = decode_bitmap(&state.done, n, &state_name)?;
    let mut progress = Progress {
        total: n,
        size,
        ..Progress::default()
    };
    for i in (0..n).filter(|&i| get_bit(&done, i)) {
        progress.done += 1;
        progress.resumed += 1;
        progress.bytes += chunk_len(size, i);
    }
    on_progress(&progress);
    let ttl_ms = net.network().params.max_ttl_secs.saturating_mul(1000);
    let mut todo = (0..n)
        .filter(|&i| !get_bit(&done, i))
        .collect::<Vec<_>>()
        .into_iter();
    let mut flight = FuturesUnordered::new();
    let mut last_save = Instant::now();
    let mut dirty = false;
    let paths = cfg.paths.max(1);
    loop {
        while flight.len() < paths {
            let Some(i) = todo.next() else { break };
            let data = keys.seal(i, n, &read_chunk(&file, &path, size, i)?)?;
            let lane = u8::try_from(i as usize % paths).unwrap_or(u8::MAX);
            flight.push(async move {
                let stored = store_chunk(net, owner, mailbox, lane, ttl_ms, data).await;
                (i, stored)
            });
        }
        let Some((i, result)) = flight.next().await else {
            break;
        };
        let (expiry, duplicate) = match result {
            Ok(r) => r,
            Err(e) => {
                // What is done so far stays done.
                if dirty {
                    state.done = hex::encode(&done);
                    transfers.write(&state_name, &state)?;
                }
                return Err(e.into());
            }
        };
        set_bit(&mut done, i);
        dirty = true;
        state.expiry.get_or_insert(expiry);
        progress.done += 1;
        progress.transferred += 1;
        progress.duplicates += u32::from(duplicate);
        progress.bytes += chunk_len(size, i);
        on_progress(&progress);
        if last_save.elapsed() >= CHECKPOINT_EVERY {
            state.done = hex::encode(&done);
            transfers.write(&state_name, &state)?;
            last_save = Instant::now();
            dirty = false;
        }
    }
    state.done = hex::encode(&done);
    transfers.write(&state_name, &state)?;
    let mut msg_id = [0u8; 16];
    hex::decode_to_slice(&state.msg_id, &mut msg_id)
        .map_err(|_| AttachError::Progress(state_name.clone(), "bad message id".into()))?;
    Ok(Upload {
        file: FileRef {
            mailbox,
            key: Zeroizing::new(*keys.key()),
            root: hex32(&state.root, &state_name)?,
            size,
            expiry: state.expiry.unwrap_or(0),
            name: name_of(&path),
            media: media.to_owned(),
        },
        msg_id,
        progress,
        state: state_name,
    })
}

fn chunk_len(size: u64, i: u32) -> u64 {
    size.saturating_sub(u64::from(i) * CHUNK as u64)
        .min(CHUNK as u64)
}

/// Fetches and checks chunk `i` from some member of the swarm: a member that holds none or
/// sends one that fails its check is left out and another asked. Returns the file bytes and
/// the number of refused copies.
async fn fetch_chunk(
    net: &Net,
    file: &FileRef,
    keys: &BlobKeys,
    i: u32,
    lane: usize,
) -> Result<(Zeroizing<Vec<u8>>, u32), AttachError> {
    let n = file.chunks();
    let request = Request::unsigned(Body::ReadBlob(ReadBlobRequest {
        mailbox: file.mailbox,
        hash: keys.address(&file.mailbox, i),
    }))
    .encode();
    let mut exclude: HashSet<NodeId> = HashSet::new();
    let mut refused = 0;
    let mut bad_seen = false;
    loop {
        // The chunks of one file are linked at their member anyway: each lane of chunks in
        // flight keeps one path session (onion.md §12.5).
        let answer = net
            .request_in_flow(
                Flow::Chunks(file.mailbox, u8::try_from(lane).unwrap_or(u8::MAX)),
                &file.mailbox,
                Method::ReadBlob,
                |_, _| request.clone(),
                &exclude,
            )
            .await;
        let (response, path) = match answer {
            Ok(a) => a,
            // Every member asked: none holds a good copy.
            Err(NetError::NoSwarm) if bad_seen => return Err(AttachError::BadChunk(i)),
            Err(NetError::NoSwarm) => return Err(AttachError::Missing(i)),
            Err(e) => return Err(e.into()),
        };
        let member = path
            .hops
            .last()
            .map(|h| h.node_id())
            .ok_or(AttachError::Internal("empty path"))?;
        exclude.insert(member);
        let Ok(ResponseBody::ReadBlob(r)) = response.result else {
            continue;
        };
        let Some(m) = r.message else { continue };
        match keys.open(i, n, file.size, &m.data) {
            Ok(plain) => return Ok((plain, refused)),
            Err(_) => {
                refused += 1;
                bad_seen = true;
            }
        }
    }
}

/// Downloads a registered file into `dir` (or the folder an interrupted run chose), checking
/// every chunk and then the root before the file gets its final name; resumes from the chunks
/// an earlier run fetched. Returns the final path.
pub async fn download(
    net: &Net,
    transfers: &Transfers,
    file: &FileRef,
    dir: &Path,
    cfg: TransferConfig,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<(PathBuf, Progress), AttachError> {
    let keys = file.keys();
    let name = download_name(&keys);
    let mut state = match transfers.read::<DownloadState>(&name)? {
        Some(s) => s,
        None => {
            transfers.register_download(file, "")?;
            transfers
                .read::<DownloadState>(&name)?
                .ok_or(AttachError::Internal("download state"))?
        }
    };
    let n = file.chunks();
    let size = file.size;
    if size > MAX_FILE {
        return Err(AttachError::TooLarge(size));
    }
    let mut done = decode_bitmap(&state.done, n, &name)?;
    let (dir, part) = match (&state.dir, &state.part) {
        (Some(d), Some(p)) if p.exists() => (d.clone(), p.clone()),
        _ => {
            // Fresh start (or the temporary file is gone): nothing fetched counts.
            done = vec![0u8; bitmap_len(n)];
            let part = dir.join(format!(
                ".{}.{}.part",
                sanitize(&file.name),
                &short_hash(&[&keys.blob_id])[..8]
            ));
            state.dir = Some(dir.to_path_buf());
            state.part = Some(part.clone());
            state.done = hex::encode(&done);
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&part)
                .map_err(|e| AttachError::io(&part, e))?;
            transfers.write(&name, &state)?;
            (dir.to_path_buf(), part)
        }
    };
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part)
        .map_err(|e| AttachError::io(&part, e))?;
    out.set_len(size).map_err(|e| AttachError::io(&part, e))?;
    let mut progress = Progress {
        total: n,
        size,
        ..Progress::default()
    };
    for i in (0..n).filter(|&i| get_bit(&done, i)) {
        progress.done += 1;
        progress.resumed += 1;
        progress.bytes += chunk_len(size, i);
    }
    on_progress(&progress);
    let mut todo = (0..n)
        .filter(|&i| !get_bit(&done, i))
        .collect::<Vec<_>>()
        .into_iter();
    let mut flight = FuturesUnordered::new();
    let mut last_save = Instant::now();
    let paths = cfg.paths.max(1);
    let checkpoint = |state: &mut DownloadState, done: &[u8]| -> Result<(), AttachError> {
        // The chunks are on disk before the map that names them.
        out.sync_data().map_err(|e| AttachError::io(&part, e))?;
        state.done = hex::encode(done);
        transfers.write(&name, state)
    };
    loop {
        while flight.len() < paths {
            let Some(i) = todo.next() else { break };
            let keys = &keys;
            let lane = i as usize % paths;
            flight.push(async move { (i, fetch_chunk(net, file, keys, i, lane).await) });
        }
        let Some((i, result)) = flight.next().await else {
            break;
        };
        let (plain, refused) = match result {
            Ok(r) => r,
            Err(e) => {
                checkpoint(&mut state, &done)?;
                return Err(e);
            }
        };
        out.write_all_at(&plain, u64::from(i) * CHUNK as u64)
            .map_err(|e| AttachError::io(&part, e))?;
        set_bit(&mut done, i);
        progress.done += 1;
        progress.transferred += 1;
        progress.refused += refused;
        progress.bytes += chunk_len(size, i);
        on_progress(&progress);
        if last_save.elapsed() >= CHECKPOINT_EVERY {
            checkpoint(&mut state, &done)?;
            last_save = Instant::now();
        }
    }
    checkpoint(&mut state, &done)?;
    // The whole file as it is on disk, against the root the message carries.
    let got = root_of(&keys, &out, &part, size)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], &file.root[..])) {
        drop(out);
        let _ = fs::remove_file(&part);
        transfers.remove(&name)?;
        return Err(AttachError::BadRoot);
    }
    drop(out);
    let path = link_unique(&dir, &file.name, &part)?;
    transfers.remove(&name)?;
    Ok((path, progress))
}
