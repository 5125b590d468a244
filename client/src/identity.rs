//! A user's identity: a 32-byte Ed25519 seed, its 24-word BIP39 backup, and the address others
//! send to (bech32m, `allium1…`), printable as a terminal QR code.
//!
//! The seed is the only secret. Everything else (signing key, X25519 key for envelopes, address)
//! is derived from it, so the phrase alone restores an identity. Specified in
//! `whitepaper/client.md` §1–§3.

use std::fmt;
use std::str::FromStr;

use allium_onion::{IdentityKeypair, IdentityPublicKey};
use bech32::primitives::decode::{CharError, ChecksumError, UncheckedHrpstring};
use bech32::{Bech32, Bech32m, Hrp};
use bip39::{Language, Mnemonic};
use rand_core::{CryptoRngCore, OsRng};
use zeroize::Zeroizing;

/// Length of the seed, of an Ed25519 public key and of an X25519 key.
pub const KEY_LEN: usize = 32;

/// Words in a backup phrase: 256 bits of entropy plus an 8-bit checksum, 11 bits a word.
pub const PHRASE_WORDS: usize = 24;

/// The human-readable part of every address.
pub const ADDRESS_HRP: &str = "allium";

/// Characters in an address: `allium` + `1` + 52 data characters + 6 checksum characters.
pub const ADDRESS_LEN: usize = 65;

/// Data characters of an address: 256 bits in 5-bit groups, the last one padded with 4 zero bits.
const DATA_CHARS: usize = 52;

const HRP: Hrp = Hrp::parse_unchecked(ADDRESS_HRP);

/// Why a backup phrase was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A backup phrase has exactly 24 words.
    #[error("a backup phrase has {expected} words, got {got}", expected = PHRASE_WORDS)]
    WordCount {
        /// Words found.
        got: usize,
    },
    /// A word that is not in the BIP39 English list.
    #[error("word {position} is not in the BIP39 English word list")]
    UnknownWord {
        /// 1-based position of the word, as a person counts.
        position: usize,
    },
    /// All words are known but the checksum does not match: a word is wrong or two are swapped.
    #[error("the phrase's checksum does not match (a word is wrong or out of order)")]
    BadChecksum,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `1` separates the prefix from the data, or nothing follows it.
    #[error("not an address: missing the `1` separator or the data after it")]
    Malformed,
    /// A character outside the bech32 alphabet.
    #[error("character {0:?} cannot appear in an address")]
    InvalidCharacter(char),
    /// Upper and lower case mixed; an address is all one case.
    #[error("an address is all lowercase or all uppercase, not mixed")]
    MixedCase,
    /// The checksum does not match: a character was mistyped or lost.
    #[error("checksum mismatch: a character is mistyped")]
    Checksum,
    /// The string carries an original bech32 checksum, not bech32m.
    #[error("bech32 checksum where bech32m is required")]
    Bech32NotBech32m,
    /// The prefix is not `allium`.
    #[error("not an Allium address (prefix is not \"{ADDRESS_HRP}\")")]
    WrongHrp,
    /// The data is not 32 bytes (52 characters before the checksum).
    #[error("an address holds {expected} key bytes, got {got} characters", expected = KEY_LEN)]
    WrongLength {
        /// Data characters found (checksum excluded).
        got: usize,
    },
    /// The 4 padding bits after the key are not zero; refused so that a key has one address.
    #[error("non-canonical address (non-zero padding bits)")]
    NonCanonical,
    /// The data is not a usable Ed25519 public key (not a point, a non-canonical encoding, or a
    /// point of small order).
    #[error("the address does not hold a valid Ed25519 public key")]
    InvalidKey,
}

/// A user's long-term identity. Holds the seed's keypair; zeroized on drop, never printed.
pub struct Identity {
    keypair: IdentityKeypair,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity(<redacted>)")
    }
}

impl Identity {
    /// A new identity from the operating system's random generator.
    pub fn generate() -> Self {
        Self::generate_with(&mut OsRng)
    }

    /// A new identity from `rng` (a full 32-byte seed, no derivation from fewer bits).
    pub fn generate_with(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The identity of a 32-byte seed (the RFC 8032 secret key).
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        Identity {
            keypair: IdentityKeypair::from_seed(seed),
        }
    }

    /// The seed, for the identity file. Zeroized when dropped.
    pub fn seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.keypair.seed()
    }

    /// The 24-word BIP39 English phrase whose entropy is the seed.
    pub fn phrase(&self) -> Zeroizing<String> {
        let seed = self.seed();
        let mut out = Zeroizing::new(String::with_capacity(PHRASE_WORDS * 9));
        // 32 bytes is always a valid BIP39 entropy length, so this never fails.
        if let Ok(mnemonic) = Mnemonic::from_entropy_in(Language::English, seed.as_ref()) {
            for (i, word) in mnemonic.words().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(word);
            }
        }
        out
    }

    /// Restores an identity from its phrase. Case and extra whitespace are ignored.
    pub fn from_phrase(phrase: &str) -> Result<Self, IdentityError> {
        let words = phrase.split_whitespace().count();
        if words != PHRASE_WORDS {
            return Err(IdentityError::WordCount { got: words });
        }
        let mut normalized = Zeroizing::new(String::with_capacity(phrase.len()));
        for (i, word) in phrase.split_whitespace().enumerate() {
            if i > 0 {
                normalized.push(' ');
            }
            // ASCII only, as the word list is: a non-ASCII letter is never part of a word.
            for c in word.chars() {
                normalized.push(c.to_ascii_lowercase());
            }
        }
        let mnemonic =
            Mnemonic::parse_in_normalized(Language::English, &normalized).map_err(|e| match e {
                bip39::Error::UnknownWord(i) => IdentityError::UnknownWord { position: i + 1 },
                bip39::Error::BadWordCount(n) => IdentityError::WordCount { got: n },
                _ => IdentityError::BadChecksum,
            })?;
        let (entropy, len) = mnemonic.to_entropy_array();
        let entropy = Zeroizing::new(entropy);
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        match entropy.get(..len) {
            Some(bytes) if len == KEY_LEN => seed.copy_from_slice(bytes),
            _ => return Err(IdentityError::WordCount { got: words }),
        }
        Ok(Self::from_seed(&seed))
    }

    /// The Ed25519 public key.
    pub fn public(&self) -> IdentityPublicKey {
        self.keypair.public()
    }

    /// The address others send to.
    pub fn address(&self) -> Address {
        // The key of a seed is [a]B with B of prime order; it has small order only if a ≡ 0
        // (mod ℓ), which no seed reaches in practice, so the address checks are skipped.
        Address(self.keypair.public())
    }

    /// The keypair, for signing.
    pub fn keypair(&self) -> &IdentityKeypair {
        &self.keypair
    }
}

/// An Allium address: the bech32m encoding (prefix `allium`) of an Ed25519 public key.
///
/// Parsing accepts all-lowercase or all-uppercase; display is lowercase.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Address(IdentityPublicKey);

impl Address {
    /// The address of a 32-byte Ed25519 public key, with the same checks as parsing.
    pub fn from_key_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, AddressError> {
        let key = IdentityPublicKey::from_bytes(bytes).map_err(|_| AddressError::InvalidKey)?;
        let vk = key.verifying_key();
        // One key, one address: refuse the non-canonical encodings of a point (y ≥ p, or x = 0
        // with the sign bit set), which decode to the same point as the canonical one.
        if vk.to_edwards().compress().to_bytes() != *bytes {
            return Err(AddressError::InvalidKey);
        }
        // A small-order key lets anyone forge signatures for it and makes X25519 to it
        // non-contributory.
        if vk.is_weak() {
            return Err(AddressError::InvalidKey);
        }
        Ok(Address(key))
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> IdentityPublicKey {
        self.0
    }

    /// The uppercase form: same address, and QR codes encode it in the denser alphanumeric mode.
    pub fn to_uppercase(&self) -> String {
        self.to_string().to_ascii_uppercase()
    }

    /// The address as a QR code drawn with Unicode half blocks, two modules a character, for a
    /// terminal with a dark background (light modules are drawn, dark ones left blank). Encodes
    /// the uppercase form.
    pub fn qr_terminal(&self) -> String {
        use qrcode::render::unicode::Dense1x2;
        match qrcode::QrCode::with_error_correction_level(self.to_uppercase(), qrcode::EcLevel::M) {
            Ok(code) => code
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build(),
            // 65 alphanumeric characters fit a version-3 code; this cannot fail. Fall back to
            // the text rather than panic.
            Err(_) => self.to_string(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        bech32::encode_lower_to_fmt::<Bech32m, _>(f, HRP, self.0.as_bytes()).map_err(|_| fmt::Error)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        // Without a separator the parser would blame some character; say what is wrong instead.
        if !s.contains('1') {
            return Err(AddressError::Malformed);
        }
        let unchecked = UncheckedHrpstring::new(s).map_err(|e| {
            use bech32::primitives::decode::UncheckedHrpstringError as U;
            match e {
                U::Char(CharError::MixedCase) => AddressError::MixedCase,
                U::Char(CharError::InvalidChar(c)) => AddressError::InvalidCharacter(c),
                _ => AddressError::Malformed,
            }
        })?;
        match unchecked.validate_checksum::<Bech32m>() {
            Ok(()) => {}
            Err(ChecksumError::CodeLength(_)) | Err(ChecksumError::InvalidLength) => {
                return Err(AddressError::WrongLength {
                    got: unchecked.data_part_ascii().len().saturating_sub(6),
                });
            }
            Err(_) if unchecked.has_valid_checksum::<Bech32>() => {
                return Err(AddressError::Bech32NotBech32m);
            }
            Err(_) => return Err(AddressError::Checksum),
        }
        if !unchecked.hrp().as_str().eq_ignore_ascii_case(ADDRESS_HRP) {
            return Err(AddressError::WrongHrp);
        }
        let checked = unchecked.remove_checksum::<Bech32m>();
        let data = checked.data_part_ascii_no_checksum();
        if data.len() != DATA_CHARS {
            return Err(AddressError::WrongLength { got: data.len() });
        }
        if checked.validate_segwit_padding().is_err() {
            return Err(AddressError::NonCanonical);
        }
        let mut key = [0u8; KEY_LEN];
        let mut n = 0;
        for (slot, byte) in key.iter_mut().zip(checked.byte_iter()) {
            *slot = byte;
            n += 1;
        }
        if n != KEY_LEN {
            return Err(AddressError::WrongLength { got: data.len() });
        }
        Address::from_key_bytes(&key)
    }
}
