//! The network file: the name of a network, its directory authorities and its parameters —
//! everything a client or a node needs to join (whitepaper `roster.md` §2).
//!
//! ```toml
//! name = "allium-devnet"
//! [[authority]]
//! identity = "<64 hex chars>"
//! address = "127.0.0.1:4433"
//! [params]
//! swarm_size = 3
//! min_ttl_secs = 10
//! max_ttl_secs = 1209600
//! epoch_secs = 3600
//! allow_same_subnet = false
//! roster_threshold = 1
//! ```

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use allium_onion::{IdentityPublicKey, KeyError, NodeId};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use serde::Deserialize;
use thiserror::Error;

use crate::cbor::Encoder;

/// Longest network name.
pub const MAX_NAME_LEN: usize = 64;
/// Most directory authorities a network file may list (and signatures a roster may carry).
pub const MAX_AUTHORITIES: usize = 16;
/// Largest target swarm size.
pub const MAX_SWARM_SIZE: u64 = 32;
/// Largest network file read from disk.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Domain string of the network fingerprint.
pub const FINGERPRINT_DOMAIN: &[u8] = b"allium/v1/network";

/// Why a network file was refused. Each variant names the key at fault.
#[derive(Debug, Error)]
pub enum NetworkError {
    /// The file could not be read.
    #[error("cannot read network file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("network file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not TOML, a missing or unknown key, or a value of the wrong type (the parser's message
    /// names the key and the line).
    #[error("network file: {0}")]
    Syntax(String),
    /// `name` is not 1 to 64 characters of `a-z`, `0-9` and `-`.
    #[error("network file: `name` must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and '-'")]
    BadName,
    /// No `[[authority]]` table.
    #[error("network file: at least one [[authority]] is required")]
    NoAuthority,
    /// More than [`MAX_AUTHORITIES`] authorities.
    #[error("network file: at most {MAX_AUTHORITIES} [[authority]] tables are allowed")]
    TooManyAuthorities,
    /// An `identity` that is not 64 hex characters encoding an Ed25519 public key.
    #[error(
        "network file: authority {index}: `identity` must be 64 hex characters of an Ed25519 key"
    )]
    BadAuthorityKey {
        /// Position of the authority in the file, from 0.
        index: usize,
    },
    /// An `address` that is not `ip:port` (IPv6 in brackets), or has port 0 or an unspecified IP.
    #[error("network file: authority {index}: `address` {value:?} is not ip:port")]
    BadAuthorityAddress {
        /// Position of the authority in the file, from 0.
        index: usize,
        /// The value given.
        value: String,
    },
    /// An `identity` that decodes to a point but one no authority can sign with: of small
    /// order, or a non-canonical spelling of its key.
    #[error("network file: authority {index}: `identity` is {source}")]
    UnusableAuthorityKey {
        /// Position of the authority in the file, from 0.
        index: usize,
        /// What is wrong with the key.
        source: KeyError,
    },
    /// The same authority key listed twice.
    #[error("network file: authority {index}: `identity` listed twice")]
    DuplicateAuthority {
        /// Position of the second listing, from 0.
        index: usize,
    },
    /// A parameter outside its range.
    #[error("network file: `params.{key}` = {value} is outside {min}..={max}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
}

/// A directory authority: the key that signs rosters and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// Its Ed25519 identity key.
    pub identity: IdentityPublicKey,
    /// Its QUIC address.
    pub address: SocketAddr,
}

/// The parameters of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkParams {
    /// Target members per swarm, 1..=32.
    pub swarm_size: usize,
    /// Smallest message TTL, seconds (≥ 1).
    pub min_ttl_secs: u64,
    /// Largest message TTL, seconds (≥ `min_ttl_secs`).
    pub max_ttl_secs: u64,
    /// Onion-key epoch length, seconds (≥ 1).
    pub epoch_secs: u64,
    /// Whether two nodes of one /16 (IPv4) or /32 (IPv6) may share a path.
    pub allow_same_subnet: bool,
    /// Valid signatures by distinct listed authorities a roster needs, 1..=authorities.
    pub roster_threshold: u64,
}

/// A parsed and validated network file.
///
/// [`NetworkFile::new`] and [`NetworkFile::from_toml`] validate; the fields are public for
/// reading, and code that changes them takes over the validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFile {
    /// The network name.
    pub name: String,
    /// The directory authorities, in file order.
    pub authorities: Vec<Authority>,
    /// The parameters.
    pub params: NetworkParams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    #[serde(default)]
    authority: Vec<RawAuthority>,
    params: RawParams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthority {
    identity: String,
    address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    swarm_size: u64,
    min_ttl_secs: u64,
    max_ttl_secs: u64,
    epoch_secs: u64,
    allow_same_subnet: bool,
    roster_threshold: u64,
}

/// Whether `name` is a valid network name.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses a socket address written as `ip:port` in its canonical form, refusing port 0, the
/// unspecified address and multicast addresses. Shared by the network file and the roster.
pub(crate) fn parse_address(text: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = text.parse().ok()?;
    let ip = addr.ip();
    let usable = addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast();
    (usable && addr.to_string() == text).then_some(addr)
}

fn range(key: &'static str, value: u64, min: u64, max: u64) -> Result<u64, NetworkError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(NetworkError::OutOfRange {
            key,
            value,
            min,
            max,
        })
    }
}

/// Lower-case hex of a digest.
fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl NetworkFile {
    /// Builds and validates a network file from its parts.
    pub fn new(
        name: &str,
        authorities: Vec<Authority>,
        params: NetworkParams,
    ) -> Result<Self, NetworkError> {
        if !valid_name(name) {
            return Err(NetworkError::BadName);
        }
        if authorities.is_empty() {
            return Err(NetworkError::NoAuthority);
        }
        if authorities.len() > MAX_AUTHORITIES {
            return Err(NetworkError::TooManyAuthorities);
        }
        for (index, a) in authorities.iter().enumerate() {
            if let Err(source) = IdentityPublicKey::from_canonical_bytes(a.identity.as_bytes()) {
                return Err(NetworkError::UnusableAuthorityKey { index, source });
            }
            if authorities[..index]
                .iter()
                .any(|b| b.identity == a.identity)
            {
                return Err(NetworkError::DuplicateAuthority { index });
            }
            if parse_address(&a.address.to_string()).is_none() {
                return Err(NetworkError::BadAuthorityAddress {
                    index,
                    value: a.address.to_string(),
                });
            }
        }
        range("swarm_size", params.swarm_size as u64, 1, MAX_SWARM_SIZE)?;
        range("min_ttl_secs", params.min_ttl_secs, 1, u64::MAX)?;
        range(
            "max_ttl_secs",
            params.max_ttl_secs,
            params.min_ttl_secs,
            u64::MAX,
        )?;
        range("epoch_secs", params.epoch_secs, 1, u64::from(u32::MAX))?;
        range(
            "roster_threshold",
            params.roster_threshold,
            1,
            authorities.len() as u64,
        )?;
        Ok(NetworkFile {
            name: name.to_owned(),
            authorities,
            params,
        })
    }

    /// Parses and validates the TOML text of a network file.
    pub fn from_toml(text: &str) -> Result<Self, NetworkError> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| NetworkError::Syntax(e.to_string().trim_end().to_owned()))?;
        if !valid_name(&raw.name) {
            return Err(NetworkError::BadName);
        }
        let mut authorities = Vec::with_capacity(raw.authority.len().min(MAX_AUTHORITIES));
        for (index, a) in raw.authority.iter().enumerate() {
            if index >= MAX_AUTHORITIES {
                return Err(NetworkError::TooManyAuthorities);
            }
            let bytes = NodeId::from_hex(&a.identity)
                .ok_or(NetworkError::BadAuthorityKey { index })?
                .to_bytes();
            let identity =
                IdentityPublicKey::from_canonical_bytes(&bytes).map_err(|e| match e {
                    KeyError::SmallOrderIdentityKey | KeyError::NonCanonicalIdentityKey => {
                        NetworkError::UnusableAuthorityKey { index, source: e }
                    }
                    _ => NetworkError::BadAuthorityKey { index },
                })?;
            let address =
                parse_address(&a.address).ok_or_else(|| NetworkError::BadAuthorityAddress {
                    index,
                    value: a.address.clone(),
                })?;
            authorities.push(Authority { identity, address });
        }
        let p = raw.params;
        range("swarm_size", p.swarm_size, 1, MAX_SWARM_SIZE)?;
        let params = NetworkParams {
            swarm_size: p.swarm_size as usize,
            min_ttl_secs: p.min_ttl_secs,
            max_ttl_secs: p.max_ttl_secs,
            epoch_secs: p.epoch_secs,
            allow_same_subnet: p.allow_same_subnet,
            roster_threshold: p.roster_threshold,
        };
        Self::new(&raw.name, authorities, params)
    }

    /// Reads, parses and validates a network file.
    pub fn load(path: &Path) -> Result<Self, NetworkError> {
        let io = |source| NetworkError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_FILE_BYTES {
            return Err(NetworkError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_toml(&text)
    }

    /// The file as TOML, in the key order of the example; [`Self::from_toml`] reads it back to
    /// an equal value.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "name = \"{}\"", self.name);
        for a in &self.authorities {
            let _ = writeln!(s, "\n[[authority]]");
            let _ = writeln!(s, "identity = \"{}\"", a.identity);
            let _ = writeln!(s, "address = \"{}\"", a.address);
        }
        let p = &self.params;
        let _ = writeln!(s, "\n[params]");
        let _ = writeln!(s, "swarm_size = {}", p.swarm_size);
        let _ = writeln!(s, "min_ttl_secs = {}", p.min_ttl_secs);
        let _ = writeln!(s, "max_ttl_secs = {}", p.max_ttl_secs);
        let _ = writeln!(s, "epoch_secs = {}", p.epoch_secs);
        let _ = writeln!(s, "allow_same_subnet = {}", p.allow_same_subnet);
        let _ = writeln!(s, "roster_threshold = {}", p.roster_threshold);
        s
    }

    /// The canonical encoding the fingerprint is computed over (whitepaper `roster.md` §2.2):
    /// a CBOR map of the name, the authorities sorted by key, and the parameters.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut auths: Vec<&Authority> = self.authorities.iter().collect();
        auths.sort_by(|a, b| a.identity.as_bytes().cmp(b.identity.as_bytes()));
        let mut e = Encoder::default();
        e.map(3).uint(0).text(&self.name).uint(1).array(auths.len());
        for a in auths {
            e.map(2)
                .uint(0)
                .bytes(a.identity.as_bytes())
                .uint(1)
                .text(&a.address.to_string());
        }
        let p = &self.params;
        e.uint(2).map(6);
        e.uint(0)
            .uint(p.swarm_size as u64)
            .uint(1)
            .uint(p.min_ttl_secs)
            .uint(2)
            .uint(p.max_ttl_secs);
        e.uint(3)
            .uint(p.epoch_secs)
            .uint(4)
            .bool(p.allow_same_subnet);
        e.uint(5).uint(p.roster_threshold);
        e.buf
    }

    /// BLAKE2b-256 of `"allium/v1/network" || canonical_bytes()`: equal for two files that
    /// describe the same network, whatever their layout, comments or authority order.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Blake2b::<U32>::new();
        h.update(FINGERPRINT_DOMAIN);
        h.update(self.canonical_bytes());
        h.finalize().into()
    }

    /// [`Self::fingerprint`] in lower-case hex, for operators to compare.
    pub fn fingerprint_hex(&self) -> String {
        to_hex(&self.fingerprint())
    }

    /// The network name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory authorities, in file order.
    pub fn authorities(&self) -> &[Authority] {
        &self.authorities
    }

    /// The authority with this key, if listed.
    pub fn authority(&self, identity: &IdentityPublicKey) -> Option<&Authority> {
        self.authorities.iter().find(|a| a.identity == *identity)
    }

    /// The parameters.
    pub fn params(&self) -> &NetworkParams {
        &self.params
    }
}

impl fmt::Display for NetworkFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.fingerprint_hex())
    }
}
