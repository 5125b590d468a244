//! The attachment series (`whitepaper/attachments.md`): upload and download of files of a few
//! sizes through the client library (3-relay paths, `paths` chunks in flight), in MB/s, each
//! against a floor from the same run's primitives.
//!
//! Floor: a chunk is one store (upload) or one retrieve (download) through 3 relays, so with
//! `paths` in flight a file of `n` chunks takes at least `⌈n / paths⌉` times the 3-relay store
//! (retrieve) floor of [`Primitives`]. Those primitives are measured on small packets, so the
//! floor is below what a large packet can cost: the ratio overstates the distance to it.

use std::path::Path;
use std::time::{Duration, Instant};

use allium_client::attach::{self, Progress, TransferConfig, Transfers};
use allium_client::net::{Net, Timing};
use allium_proto::network::NetworkFile;
use allium_proto::storage::Mailbox;
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};

use crate::floor::Primitives;

/// One size measured.
#[derive(Debug, Clone)]
pub struct AttachResult {
    /// File bytes.
    pub bytes: u64,
    /// Chunks.
    pub chunks: u32,
    /// Upload time (every chunk held by a majority).
    pub upload: Duration,
    /// Download time (every chunk checked, root checked, file named).
    pub download: Duration,
    /// Upload floor.
    pub upload_floor: Duration,
    /// Download floor.
    pub download_floor: Duration,
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

impl AttachResult {
    pub fn to_json(&self) -> Value {
        json!({
            "bytes": self.bytes,
            "chunks": self.chunks,
            "upload_s": self.upload.as_secs_f64(),
            "upload_mb_per_s": mb_per_s(self.bytes, self.upload),
            "upload_floor_mb_per_s": mb_per_s(self.bytes, self.upload_floor),
            "upload_ratio": self.upload.as_secs_f64() / self.upload_floor.as_secs_f64(),
            "download_s": self.download.as_secs_f64(),
            "download_mb_per_s": mb_per_s(self.bytes, self.download),
            "download_floor_mb_per_s": mb_per_s(self.bytes, self.download_floor),
            "download_ratio": self.download.as_secs_f64() / self.download_floor.as_secs_f64(),
        })
    }

    pub fn print(&self) {
        println!(
            "{:>6.1} MB {:>6} chunks  upload {:>7.2} MB/s (floor {:>7.2}, ×{:.1})  download \
             {:>7.2} MB/s (floor {:>7.2}, ×{:.1})",
            self.bytes as f64 / 1e6,
            self.chunks,
            mb_per_s(self.bytes, self.upload),
            mb_per_s(self.bytes, self.upload_floor),
            self.upload.as_secs_f64() / self.upload_floor.as_secs_f64(),
            mb_per_s(self.bytes, self.download),
            mb_per_s(self.bytes, self.download_floor),
            self.download.as_secs_f64() / self.download_floor.as_secs_f64(),
        );
    }
}

/// Uploads and downloads a random file of each size in `sizes_mb` (10^6 bytes).
pub async fn series(
    network: &NetworkFile,
    dir: &Path,
    sizes_mb: &[u64],
    paths: usize,
    primitives: &Primitives,
) -> Result<Vec<AttachResult>, String> {
    let work = dir.join("attach");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let timing = Timing {
        attempt: Duration::from_secs(10),
        operation: Duration::from_secs(60),
    };
    let net = Net::new(network.clone(), None, None, &[], 0, timing).map_err(|e| e.to_string())?;
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let owner = SigningKey::from_bytes(&seed);
    let transfers = Transfers::open(&work).map_err(|e| e.to_string())?;
    let cfg = TransferConfig { paths };
    let mut out = Vec::new();
    for &mb in sizes_mb {
        let bytes = mb * 1_000_000;
        let mut data = vec![0u8; usize::try_from(bytes).map_err(|e| e.to_string())?];
        OsRng.fill_bytes(&mut data);
        let path = work.join(format!("file-{mb}MB.bin"));
        std::fs::write(&path, &data).map_err(|e| e.to_string())?;
        drop(data);
        eprintln!("attachment of {mb} MB: upload …");
        let started = Instant::now();
        let up = attach::upload(
            &net,
            &owner,
            Mailbox::from_bytes(owner.verifying_key().to_bytes()),
            &transfers,
            &[0; 32],
            &path,
            "",
            cfg,
            &mut |_: &Progress| {},
        )
        .await
        .map_err(|e| e.to_string())?;
        let upload = started.elapsed();
        up.finish(&transfers).map_err(|e| e.to_string())?;
        eprintln!("  download …");
        let into = work.join(format!("down-{mb}"));
        std::fs::create_dir_all(&into).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let (got, _) = attach::download(&net, &transfers, &up.file, &into, cfg, &mut |_| {})
            .await
            .map_err(|e| e.to_string())?;
        let download = started.elapsed();
        if std::fs::read(&got).map_err(|e| e.to_string())?
            != std::fs::read(&path).map_err(|e| e.to_string())?
        {
            return Err(format!("{mb} MB: the downloaded file differs"));
        }
        let _ = std::fs::remove_file(&got);
        let _ = std::fs::remove_file(&path);
        let rounds = up
            .file
            .chunks()
            .div_ceil(u32::try_from(paths.max(1)).unwrap_or(1));
        let r = AttachResult {
            bytes,
            chunks: up.file.chunks(),
            upload,
            download,
            upload_floor: primitives.store_floor(3) * rounds,
            download_floor: primitives.retrieve_floor(3) * rounds,
        };
        r.print();
        out.push(r);
    }
    Ok(out)
}
