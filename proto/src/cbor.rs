//! The deterministic CBOR subset the storage protocol uses (whitepaper §2).
//!
//! Hand-written rather than a general CBOR library so that exactly one encoding of every value is
//! accepted: shortest-form heads, definite lengths, map keys as unsigned integers in strictly
//! ascending order, no tags, floats, negative integers or null. Request digests are computed over
//! the wire bytes, so a second encoding of the same value would be a second request.

use crate::error::DecodeError;

/// Deepest container nesting any message of the protocol uses (response → body → list → item).
pub const MAX_DEPTH: u8 = 4;

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_SIMPLE: u8 = 7;
const SIMPLE_FALSE: u8 = 20;
const SIMPLE_TRUE: u8 = 21;

/// Appends CBOR items to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    pub(crate) buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    fn head(&mut self, major: u8, v: u64) {
        let m = major << 5;
        if v < 24 {
            self.buf.push(m | v as u8);
        } else if v <= u64::from(u8::MAX) {
            self.buf.extend_from_slice(&[m | 24, v as u8]);
        } else if v <= u64::from(u16::MAX) {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= u64::from(u32::MAX) {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub(crate) fn uint(&mut self, v: u64) -> &mut Self {
        self.head(MAJOR_UINT, v);
        self
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.head(MAJOR_BYTES, b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }
    pub(crate) fn text(&mut self, s: &str) -> &mut Self {
        self.head(MAJOR_TEXT, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }
    pub(crate) fn array(&mut self, n: usize) -> &mut Self {
        self.head(MAJOR_ARRAY, n as u64);
        self
    }
    pub(crate) fn map(&mut self, n: usize) -> &mut Self {
        self.head(MAJOR_MAP, n as u64);
        self
    }
    pub(crate) fn bool(&mut self, b: bool) -> &mut Self {
        self.buf
            .push(MAJOR_SIMPLE << 5 | if b { SIMPLE_TRUE } else { SIMPLE_FALSE });
        self
    }
}

/// Number of bytes the head of an item with argument `v` takes.
pub(crate) const fn head_len(v: u64) -> usize {
    if v < 24 {
        1
    } else if v <= 0xff {
        2
    } else if v <= 0xffff {
        3
    } else if v <= 0xffff_ffff {
        5
    } else {
        9
    }
}

/// Reads CBOR items from a byte slice, enforcing the subset and the limits.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: u8,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            depth: 0,
        }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        self.buf.get(from..to).unwrap_or_default()
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        // Checked before slicing: `n` comes from the input and is never used to allocate.
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// Reads a head, returning (major type, argument). Rejects indefinite lengths, reserved
    /// additional-information values and non-shortest arguments.
    fn head(&mut self) -> Result<(u8, u64), DecodeError> {
        let ib = self.byte()?;
        let major = ib >> 5;
        let info = ib & 0x1f;
        if major == MAJOR_SIMPLE && info >= 24 {
            // Floats and multi-byte simple values are outside the subset.
            return Err(DecodeError::UnexpectedType("float or simple value"));
        }
        let v = match info {
            0..=23 => return Ok((major, u64::from(info))),
            24 => {
                let v = u64::from(self.byte()?);
                if v < 24 {
                    return Err(DecodeError::NonCanonical);
                }
                v
            }
            25 => {
                let s = self.take(2)?;
                let v = u64::from(u16::from_be_bytes([s[0], s[1]]));
                if v <= 0xff {
                    return Err(DecodeError::NonCanonical);
                }
                v
            }
            26 => {
                let s = self.take(4)?;
                let v = u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
                if v <= 0xffff {
                    return Err(DecodeError::NonCanonical);
                }
                v
            }
            27 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                let v = u64::from_be_bytes(a);
                if v <= 0xffff_ffff {
                    return Err(DecodeError::NonCanonical);
                }
                v
            }
            31 => return Err(DecodeError::IndefiniteLength),
            _ => return Err(DecodeError::UnexpectedType("reserved head")),
        };
        Ok((major, v))
    }

    fn expect(&mut self, major: u8, what: &'static str) -> Result<u64, DecodeError> {
        let (m, v) = self.head()?;
        if m == major {
            Ok(v)
        } else {
            Err(DecodeError::UnexpectedType(what))
        }
    }

    pub(crate) fn uint(&mut self) -> Result<u64, DecodeError> {
        self.expect(MAJOR_UINT, "unsigned integer")
    }

    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            b if b == MAJOR_SIMPLE << 5 | SIMPLE_FALSE => Ok(false),
            b if b == MAJOR_SIMPLE << 5 | SIMPLE_TRUE => Ok(true),
            _ => Err(DecodeError::UnexpectedType("bool")),
        }
    }

    /// A byte string of at most `max` bytes.
    pub(crate) fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.expect(MAJOR_BYTES, "byte string")?;
        let n = usize::try_from(n).map_err(|_| DecodeError::TooLong { max })?;
        if n > max {
            return Err(DecodeError::TooLong { max });
        }
        self.take(n)
    }

    /// A byte string of exactly `N` bytes.
    pub(crate) fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.bytes(N)?;
        s.try_into()
            .map_err(|_| DecodeError::WrongLength { expected: N })
    }

    /// A UTF-8 text string of at most `max` bytes.
    pub(crate) fn text(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        let n = self.expect(MAJOR_TEXT, "text string")?;
        let n = usize::try_from(n).map_err(|_| DecodeError::TooLong { max })?;
        if n > max {
            return Err(DecodeError::TooLong { max });
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::InvalidUtf8)
    }

    fn enter(&mut self) -> Result<(), DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        self.depth += 1;
        Ok(())
    }

    /// Leaves the innermost array or map.
    pub(crate) fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Enters an array of at most `max` items; returns its length. Pair with [`Self::leave`].
    pub(crate) fn array(&mut self, max: usize) -> Result<usize, DecodeError> {
        let n = self.expect(MAJOR_ARRAY, "array")?;
        self.container(n, max)
    }

    /// Enters a map of at most `max` entries; returns its length. Pair with [`Self::leave`].
    pub(crate) fn map(&mut self, max: usize) -> Result<usize, DecodeError> {
        let n = self.expect(MAJOR_MAP, "map")?;
        self.container(n, max)
    }

    fn container(&mut self, n: u64, max: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError::TooLong { max })?;
        if n > max {
            return Err(DecodeError::TooLong { max });
        }
        // Every item takes at least one byte: a length beyond what is left is truncated input,
        // caught here before any caller reserves capacity for `n` items.
        if n > self.buf.len().saturating_sub(self.pos) {
            return Err(DecodeError::Truncated);
        }
        self.enter()?;
        Ok(n)
    }

    /// Reads a map key: an unsigned integer strictly greater than `prev`.
    pub(crate) fn key(&mut self, prev: &mut Option<u64>) -> Result<u64, DecodeError> {
        let k = self.uint()?;
        if prev.is_some_and(|p| k <= p) {
            return Err(DecodeError::UnorderedKey(k));
        }
        *prev = Some(k);
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest_form_and_round_trip() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX.into(),
            u64::MAX,
        ] {
            let mut e = Encoder::default();
            e.uint(v);
            assert_eq!(e.buf.len(), head_len(v));
            let mut d = Decoder::new(&e.buf);
            assert_eq!(d.uint().unwrap(), v);
            d.finish().unwrap();
        }
    }

    #[test]
    fn non_canonical_forms_are_rejected() {
        // 5 encoded with a one-byte argument; 255 with a two-byte argument.
        assert_eq!(
            Decoder::new(&[0x18, 5]).uint(),
            Err(DecodeError::NonCanonical)
        );
        assert_eq!(
            Decoder::new(&[0x19, 0, 255]).uint(),
            Err(DecodeError::NonCanonical)
        );
        assert_eq!(
            Decoder::new(&[0x5f]).bytes(10),
            Err(DecodeError::IndefiniteLength)
        );
        assert_eq!(
            Decoder::new(&[0xf9, 0, 0]).uint(),
            Err(DecodeError::UnexpectedType("float or simple value"))
        );
        assert_eq!(
            Decoder::new(&[0x20]).uint(),
            Err(DecodeError::UnexpectedType("unsigned integer"))
        );
    }

    #[test]
    fn lengths_are_checked_before_use() {
        // A byte string claiming 2^63 bytes, and an array claiming more items than bytes left.
        let huge = [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            Decoder::new(&huge).bytes(100),
            Err(DecodeError::TooLong { .. })
        ));
        assert_eq!(
            Decoder::new(&[0x85, 1]).array(10),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Decoder::new(&[0x43, 1, 2]).bytes(10),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let buf = [0x81u8; 8];
        let mut d = Decoder::new(&buf);
        for _ in 0..MAX_DEPTH {
            d.array(1).unwrap();
        }
        assert_eq!(d.array(1), Err(DecodeError::TooDeep));
    }

    #[test]
    fn map_keys_must_ascend() {
        let mut d = Decoder::new(&[2, 1]);
        let mut prev = None;
        assert_eq!(d.key(&mut prev), Ok(2));
        assert_eq!(d.key(&mut prev), Err(DecodeError::UnorderedKey(1)));
    }
}
