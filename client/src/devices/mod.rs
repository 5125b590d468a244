//! Several devices on one account (`whitepaper/devices.md`): the pure formats and state machines,
//! without I/O or clock (time is a parameter, randomness the caller's generator).
//!
//! * [`list`]: the device list the account signs and publishes (§3).
//! * [`container`]: one stored item carrying an envelope per device (§4).
//! * [`link`]: linking a new device to the account, confirmed by a short authentication string
//!   (§6), as a sans-I/O state machine.
//! * [`sync`]: contacts, their verification and read positions, shared by the account's devices
//!   through encrypted records in the owner namespace, merged without loss (§8).
//!
//! The messenger (`crate::messenger`) carries their messages over the network.

pub mod container;
pub mod link;
pub mod list;
pub mod sync;

use zeroize::Zeroizing;

use crate::identity::Identity;
use crate::session::{KEY_LEN, SessionError, crypto};

/// Devices one account certifies at most (sessions.md §2).
pub const MAX_DEVICES: usize = 8;

/// Every domain-separation string of this chapter (`whitepaper/devices.md` §10).
pub mod labels {
    /// Prefix of the account's signature on a device list.
    pub const DEVICE_LIST: &[u8] = b"allium/v1/devices/list";
    /// HKDF info deriving the sync key from the account seed.
    pub const SYNC_KEY: &[u8] = b"allium/v1/devices/sync-key";
    /// HKDF info of a sync record's key and nonce, and prefix of its associated data.
    pub const SYNC_RECORD: &[u8] = b"allium/v1/devices/sync-record";
    /// Prefix of the linking transcript hash.
    pub const LINK_TRANSCRIPT: &[u8] = b"allium/v1/link/transcript";
    /// HKDF info of the key from the new device to the primary.
    pub const LINK_NEW_TO_PRIMARY: &[u8] = b"allium/v1/link/new-to-primary";
    /// HKDF info of the key from the primary to the new device.
    pub const LINK_PRIMARY_TO_NEW: &[u8] = b"allium/v1/link/primary-to-new";
    /// HKDF info of the short authentication string.
    pub const LINK_SAS: &[u8] = b"allium/v1/link/sas";
    /// Prefix of a sealed linking message's associated data.
    pub const LINK_MESSAGE: &[u8] = b"allium/v1/link/message";
}

/// Why a device format did not decode or verify, or a linking step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// An encoding is truncated, too long, or holds a value its format forbids.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// An encoding of a version this client does not know.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// Which encoding.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// A certificate, key or signature inside failed its check.
    #[error(transparent)]
    Session(SessionError),
    /// The account's signature on a device list does not verify.
    #[error("the device list's signature does not verify")]
    BadListSignature,
    /// A device list, certificate or record of another account than expected.
    #[error("it belongs to another account")]
    WrongAccount,
    /// More devices than an account may have.
    #[error("an account has at most {MAX_DEVICES} devices")]
    TooManyDevices,
    /// A sync record that does not open under the sync key (another account's, or altered).
    #[error("the sync record does not open under this account's sync key")]
    SyncRecordKey,
    /// A linking code that does not parse (mistyped, or not a linking code).
    #[error("not a linking code: {0}")]
    BadCode(&'static str),
}

impl From<SessionError> for DeviceError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Malformed { what } => DeviceError::Malformed(what),
            SessionError::UnknownVersion { what, version } => {
                DeviceError::UnknownVersion { what, version }
            }
            e => DeviceError::Session(e),
        }
    }
}

/// The sync key of an account: `HKDF(salt = 0^32, ikm = seed, info = "allium/v1/devices/sync-key")`
/// (§8.1). Derived from the seed, so a restored account recovers it; a linked device receives it
/// when it is linked.
pub fn sync_key(account: &Identity) -> Result<Zeroizing<[u8; KEY_LEN]>, DeviceError> {
    let seed = account.seed();
    Ok(crypto::hkdf::<KEY_LEN>(
        &[0u8; 32],
        &[seed.as_ref()],
        labels::SYNC_KEY,
    )?)
}
