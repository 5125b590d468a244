//! This device's delivery token (`whitepaper/storage.md` §4.5): 32 random bytes whose verifier
//! the device registers in the account's namespace 6, handed to each contact inside the session
//! so that its stores enter the inbox while strangers' go to the capped requests share.
//!
//! ```text
//! token file = 0x01 || token (32) || u64be(registered_at)
//! ```
//!
//! `registered_at` is the network time of the last registration (0: not yet); the verifier is
//! stored again once a day, which extends its expiry (a repeated store, storage.md §5.1).

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroize;

/// Version byte of the token file.
const VERSION: u8 = 1;
/// Length of the token file.
pub const FILE_LEN: usize = 1 + 32 + 8;
/// How often the verifier is stored again: well inside `TTL_MAX`, so a device used weekly keeps
/// its contacts' stores in the inbox.
pub const REFRESH_MS: u64 = 24 * 3_600_000;

/// A delivery token and when its verifier was last registered.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnToken {
    /// The token.
    pub token: [u8; 32],
    /// Network time of the last registration; 0: never.
    pub registered_at: u64,
}

impl Drop for OwnToken {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

impl std::fmt::Debug for OwnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnToken")
            .field("token", &"<redacted>")
            .field("registered_at", &self.registered_at)
            .finish()
    }
}

/// Why a token file did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed delivery-token file")]
pub struct TokenFileError;

impl OwnToken {
    /// A fresh, unregistered token.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut token = [0u8; 32];
        rng.fill_bytes(&mut token);
        Self {
            token,
            registered_at: 0,
        }
    }

    /// Whether the verifier must be stored (again) at network time `now`.
    pub fn due(&self, now: u64) -> bool {
        self.registered_at == 0 || now.saturating_sub(self.registered_at) >= REFRESH_MS
    }

    /// The file encoding.
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(FILE_LEN));
        out.push(VERSION);
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&self.registered_at.to_be_bytes());
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenFileError> {
        if bytes.len() != FILE_LEN || bytes[0] != VERSION {
            return Err(TokenFileError);
        }
        let mut token = [0u8; 32];
        token.copy_from_slice(&bytes[1..33]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[33..]);
        Ok(Self {
            token,
            registered_at: u64::from_be_bytes(at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(t) = OwnToken::decode(&bytes) {
                prop_assert_eq!(&t.encode()[..], &bytes[..]);
            }
        }

        #[test]
        fn round_trips(token in any::<[u8; 32]>(), at in any::<u64>()) {
            let t = OwnToken { token, registered_at: at };
            prop_assert_eq!(OwnToken::decode(&t.encode()), Ok(t));
        }
    }

    #[test]
    fn refresh_is_due_daily_and_the_debug_form_hides_the_token() {
        let mut t = OwnToken::generate(&mut rand_core::OsRng);
        assert!(t.due(5));
        t.registered_at = 1_000;
        assert!(!t.due(1_000 + REFRESH_MS - 1));
        assert!(t.due(1_000 + REFRESH_MS));
        assert!(format!("{t:?}").contains("<redacted>"));
    }
}
