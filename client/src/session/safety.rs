//! Safety numbers (`whitepaper/sessions.md` §10): 60 digits two people compare to check that
//! each holds the other's account key. Like Signal's: an iterated hash of each account key gives
//! 30 digits, and the two halves are joined in sorted order, so both see the same number.

use sha2::{Digest, Sha512};

use super::{KEY_LEN, labels};

/// SHA-512 iterations per account key: slows a search for a key with chosen digits.
pub const SAFETY_ITERATIONS: usize = 5200;

/// Digits of a safety number.
pub const SAFETY_DIGITS: usize = 60;

/// The 30 digits of one account key: `h = SHA-512(label || key)`, then 5199 times
/// `h = SHA-512(h || key)`; six 5-byte big-endian chunks of `h`, each mod 100000, as 5 digits.
pub fn fingerprint(account: &[u8; KEY_LEN]) -> String {
    let mut h: [u8; 64] = Sha512::new()
        .chain_update(labels::SAFETY_NUMBER)
        .chain_update(account)
        .finalize()
        .into();
    for _ in 1..SAFETY_ITERATIONS {
        h = Sha512::new()
            .chain_update(h)
            .chain_update(account)
            .finalize()
            .into();
    }
    let mut out = String::with_capacity(30);
    for chunk in h[..30].chunks_exact(5) {
        let v = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The safety number of two accounts: both fingerprints, the smaller (as text) first.
pub fn safety_number(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> String {
    let (fa, fb) = (fingerprint(a), fingerprint(b));
    if fa <= fb { fa + &fb } else { fb + &fa }
}

/// A safety number in twelve groups of five digits, as people read it aloud.
pub fn grouped(number: &str) -> String {
    let mut out = String::with_capacity(number.len() + number.len() / 5);
    for (i, c) in number.chars().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
