//! The body of a file message (`whitepaper/attachments.md` §4) and the safe local name of a
//! received file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use allium_proto::storage::Mailbox;
use zeroize::Zeroizing;

use super::AttachError;
use super::chunk::{BlobKeys, MAX_FILE, chunk_count};

/// Version byte of the file body.
pub const FILE_VERSION: u8 = 1;
/// Longest name in a file message, bytes.
pub const MAX_NAME: usize = 255;
/// Longest media type, bytes.
pub const MAX_MEDIA: usize = 127;
/// Longest local name a reader gives a received file, bytes.
pub const MAX_LOCAL_NAME: usize = 200;

/// What a file message says about one file.
#[derive(Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The mailbox whose namespace 4 holds the chunks.
    pub mailbox: Mailbox,
    /// The attachment key.
    pub key: Zeroizing<[u8; 32]>,
    /// The root over the chunks.
    pub root: [u8; 32],
    /// File bytes.
    pub size: u64,
    /// When the chunks expire (Unix ms).
    pub expiry: u64,
    /// The sender's name for it (never used as a path as is).
    pub name: String,
    /// Media type, empty when unknown.
    pub media: String,
}

impl fmt::Debug for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRef")
            .field("size", &self.size)
            .field("name", &self.name)
            .field("media", &self.media)
            .finish_non_exhaustive()
    }
}

impl FileRef {
    /// The keys derived from the attachment key.
    pub fn keys(&self) -> BlobKeys {
        BlobKeys::new(*self.key)
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        chunk_count(self.size)
    }

    /// The body bytes of the file message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 96 + 16 + 2 + self.name.len() + self.media.len());
        out.push(FILE_VERSION);
        out.extend_from_slice(self.mailbox.as_bytes());
        out.extend_from_slice(self.key.as_ref());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.expiry.to_be_bytes());
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        out.push(self.media.len() as u8);
        out.extend_from_slice(self.media.as_bytes());
        out
    }

    /// Decodes [`Self::encode`], refusing anything §4 refuses.
    pub fn decode(b: &[u8]) -> Result<Self, AttachError> {
        let bad = |why: &'static str| AttachError::BadMessage(why);
        let mut r = b;
        let mut take = |n: usize| -> Result<&[u8], AttachError> {
            if r.len() < n {
                return Err(bad("truncated"));
            }
            let (head, rest) = r.split_at(n);
            r = rest;
            Ok(head)
        };
        if take(1)?[0] != FILE_VERSION {
            return Err(bad("unknown version"));
        }
        let arr = |s: &[u8]| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(s);
            a
        };
        let mailbox = Mailbox::from_bytes(arr(take(32)?));
        let key = Zeroizing::new(arr(take(32)?));
        let root = arr(take(32)?);
        let size = u64::from_be_bytes(take(8)?.try_into().map_err(|_| bad("truncated"))?);
        let expiry = u64::from_be_bytes(take(8)?.try_into().map_err(|_| bad("truncated"))?);
        let name_len = usize::from(take(1)?[0]);
        let name = std::str::from_utf8(take(name_len)?)
            .map_err(|_| bad("name is not UTF-8"))?
            .to_owned();
        let media_len = usize::from(take(1)?[0]);
        let media = take(media_len)?;
        if !r.is_empty() {
            return Err(bad("bytes after the media type"));
        }
        if size > MAX_FILE {
            return Err(bad("larger than 1 GiB"));
        }
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if media.len() > MAX_MEDIA || media.iter().any(|&c| !(0x21..=0x7e).contains(&c)) {
            return Err(bad("media type"));
        }
        Ok(FileRef {
            mailbox,
            key,
            root,
            size,
            expiry,
            name,
            media: String::from_utf8_lossy(media).into_owned(),
        })
    }
}

/// The name a sender gives a local path: its last component, cut to [`MAX_NAME`] bytes on a
/// character boundary.
pub fn name_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    cut(&name, MAX_NAME)
}

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A name safe to create in a folder: only its last path component, no control or separator
/// characters, no leading dot (no hidden or `..` files), at most [`MAX_LOCAL_NAME`] bytes, never
/// empty.
pub fn sanitize(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    let mut out: String = last
        .chars()
        .map(|c| {
            if c.is_control()
                || matches!(c, '/' | '\\' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            {
                '_'
            } else {
                c
            }
        })
        .collect();
    while out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    let out = cut(&out, MAX_LOCAL_NAME);
    if out.is_empty() {
        "file".to_owned()
    } else {
        out
    }
}

/// Gives the finished file `from` its final name in `dir` without ever replacing a file: `name`,
/// then `stem (1).ext`, `stem (2).ext`, … (a hard link fails if the name exists), and removes
/// `from`. Returns the final path.
pub fn link_unique(dir: &Path, name: &str, from: &Path) -> Result<PathBuf, AttachError> {
    let name = sanitize(name);
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name.as_str(), ""),
    };
    for i in 0..10_000u32 {
        let candidate = if i == 0 {
            name.clone()
        } else {
            format!("{stem} ({i}){ext}")
        };
        let path = dir.join(&candidate);
        match std::fs::hard_link(from, &path) {
            Ok(()) => {
                std::fs::remove_file(from).map_err(|e| AttachError::io(from, e))?;
                allium_fsutil::sync_dir(dir).map_err(|e| AttachError::io(dir, e))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(AttachError::io(&path, e)),
        }
    }
    Err(AttachError::io(dir, io::Error::other("no free name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> FileRef {
        FileRef {
            mailbox: Mailbox::from_bytes([1; 32]),
            key: Zeroizing::new([2; 32]),
            root: [3; 32],
            size: 12345,
            expiry: 1_700_000_000_000,
            name: "report ✓.pdf".into(),
            media: "application/pdf".into(),
        }
    }

    #[test]
    fn round_trips_and_refuses() {
        let f = sample();
        let b = f.encode();
        assert_eq!(FileRef::decode(&b).unwrap(), f);
        assert!(FileRef::decode(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(FileRef::decode(&extra).is_err());
        let mut big = f.clone();
        big.size = MAX_FILE + 1;
        assert!(FileRef::decode(&big.encode()).is_err());
        let mut media = f.clone();
        media.media = "a b".into();
        assert!(FileRef::decode(&media.encode()).is_err());
        let mut v = b;
        v[0] = 2;
        assert!(FileRef::decode(&v).is_err());
        assert!(!format!("{f:?}").contains("0202"));
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize("../../etc/passwd"), "passwd");
        assert_eq!(sanitize("..\\..\\win.ini"), "win.ini");
        assert_eq!(sanitize(".."), "_.");
        assert_eq!(sanitize(".bashrc"), "_bashrc");
        assert_eq!(sanitize("a\u{1b}[31mb\n.txt"), "a_[31mb_.txt");
        assert_eq!(sanitize("evil\u{202e}fdp.exe"), "evil_fdp.exe");
        assert_eq!(sanitize(""), "file");
        assert_eq!(sanitize("/"), "file");
        assert!(sanitize(&"é".repeat(300)).len() <= MAX_LOCAL_NAME);
    }

    #[test]
    fn never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), b"mine").unwrap();
        std::fs::write(d.join("p1"), b"one").unwrap();
        std::fs::write(d.join("p2"), b"two").unwrap();
        let p1 = link_unique(d, "a.txt", &d.join("p1")).unwrap();
        let p2 = link_unique(d, "../a.txt", &d.join("p2")).unwrap();
        assert_eq!(p1, d.join("a (1).txt"));
        assert_eq!(p2, d.join("a (2).txt"));
        assert_eq!(std::fs::read(d.join("a.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read(p2).unwrap(), b"two");
        assert!(!d.join("p1").exists());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FileRef::decode(&bytes);
        }

        #[test]
        fn sanitised_names_stay_in_their_folder(name in ".{0,80}") {
            let s = sanitize(&name);
            prop_assert!(!s.is_empty() && !s.contains('/') && !s.contains('\\'));
            prop_assert!(!s.starts_with('.'));
            prop_assert!(!s.chars().any(char::is_control));
        }
    }
}
