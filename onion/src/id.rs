//! The one public-identity type: the 32-byte encoding of an Ed25519 public key as it names a
//! node, a mailbox or an authority, with a role type parameter where the role matters.
//!
//! An [`Id`] is a name, not a checked key: it is compared, hashed, sorted and printed, and turned
//! into an [`IdentityPublicKey`] (which checks the encoding is a curve point) only where a
//! signature is verified. Equality and ordering run in constant time, so a lookup or a sorted
//! insert never leaks through timing how much of a key matched (arti's `CtByteArray`).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use subtle::{Choice, ConstantTimeEq, ConstantTimeGreater};

use crate::error::KeyError;
use crate::keys::{IdentityPublicKey, KEY_LEN};

/// What an [`Id`] names. Only the name in `Debug` output differs between roles.
pub trait Role: 'static {
    /// The type's name in `Debug` output.
    const NAME: &'static str;
}

/// The role of a node's identity: in routing slots, on the link, in the roster.
#[derive(Debug)]
pub enum NodeRole {}

impl Role for NodeRole {
    const NAME: &'static str = "NodeId";
}

/// A node's identity key as a name.
pub type NodeId = Id<NodeRole>;

/// The 32-byte encoding of an Ed25519 public key, in role `R`.
pub struct Id<R: Role>([u8; KEY_LEN], PhantomData<fn() -> R>);

impl<R: Role> Id<R> {
    /// The id of these 32 bytes (not checked to be a curve point).
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Id(bytes, PhantomData)
    }

    /// Parses a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::BadLength {
            expected: KEY_LEN,
            got: bytes.len(),
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 2 * KEY_LEN {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16);
        let mut out = [0u8; KEY_LEN];
        for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Self::from_bytes(out))
    }

    /// Borrows the 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The 32 bytes.
    pub const fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    /// The same key in another role (a user's key names both the user and their mailbox).
    pub const fn cast<S: Role>(self) -> Id<S> {
        Id(self.0, PhantomData)
    }

    /// The key this id names, checked to be a point on the curve.
    pub fn public_key(&self) -> Result<IdentityPublicKey, KeyError> {
        IdentityPublicKey::from_bytes(&self.0)
    }
}

impl<R: Role> From<&IdentityPublicKey> for Id<R> {
    fn from(key: &IdentityPublicKey) -> Self {
        Id::from_bytes(key.to_bytes())
    }
}

impl<R: Role> From<IdentityPublicKey> for Id<R> {
    fn from(key: IdentityPublicKey) -> Self {
        Id::from(&key)
    }
}

impl<R: Role> Clone for Id<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: Role> Copy for Id<R> {}

impl<R: Role> ConstantTimeEq for Id<R> {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl<R: Role> PartialEq for Id<R> {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}
impl<R: Role> Eq for Id<R> {}

/// Lexicographic order over every byte, whatever the first difference.
fn ct_cmp(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> Ordering {
    let mut greater = Choice::from(0);
    let mut less = Choice::from(0);
    for (x, y) in a.iter().zip(b) {
        let undecided = !(greater | less);
        greater |= undecided & x.ct_gt(y);
        less |= undecided & y.ct_gt(x);
    }
    match (bool::from(greater), bool::from(less)) {
        (true, _) => Ordering::Greater,
        (_, true) => Ordering::Less,
        _ => Ordering::Equal,
    }
}

impl<R: Role> PartialOrd for Id<R> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<R: Role> Ord for Id<R> {
    fn cmp(&self, other: &Self) -> Ordering {
        ct_cmp(&self.0, &other.0)
    }
}

impl<R: Role> Hash for Id<R> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// The whole key as 64 lowercase hex digits: the one text form of an id.
impl<R: Role> fmt::Display for Id<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The role and the first four bytes: enough to tell keys apart in a log.
impl<R: Role> fmt::Debug for Id<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", R::NAME)?;
        self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str("…)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn order_is_lexicographic() {
        let ids: Vec<[u8; 32]> = vec![
            [0; 32],
            [1; 32],
            [0xff; 32],
            {
                let mut b = [0; 32];
                b[31] = 1;
                b
            },
            {
                let mut b = [1; 32];
                b[0] = 0;
                b
            },
        ];
        for a in &ids {
            for b in &ids {
                assert_eq!(
                    NodeId::from_bytes(*a).cmp(&NodeId::from_bytes(*b)),
                    a.cmp(b),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn hex_round_trips_and_debug_is_short() {
        let id = NodeId::from_bytes(std::array::from_fn(|i| i as u8 * 7));
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(NodeId::from_hex(&hex), Some(id));
        assert_eq!(NodeId::from_hex(&hex.to_uppercase()), Some(id));
        assert_eq!(NodeId::from_hex(&hex[1..]), None);
        assert_eq!(NodeId::from_hex(&format!("{}g", &hex[1..])), None);
        assert_eq!(format!("{id:?}"), "NodeId(00070e15…)");
    }
}
