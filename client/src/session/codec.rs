//! Reading the fixed-layout encodings of this module: every read is bounds-checked and returns a
//! typed error, so a decoder never panics on hostile bytes.

use super::SessionError;

/// A cursor over bytes being decoded.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `bytes`, naming `what` in errors.
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn short(&self) -> SessionError {
        SessionError::Malformed { what: self.what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SessionError> {
        if self.bytes.len() < n {
            return Err(self.short());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], SessionError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, SessionError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, SessionError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SessionError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, SessionError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// The version byte, which must be `expected`.
    pub(crate) fn version(&mut self, expected: u8) -> Result<(), SessionError> {
        let v = self.u8()?;
        if v != expected {
            return Err(SessionError::UnknownVersion {
                what: self.what,
                version: v,
            });
        }
        Ok(())
    }

    /// How many bytes are not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Fails unless every byte was read: an encoding has exactly one valid length.
    pub(crate) fn finish(self) -> Result<(), SessionError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.short())
        }
    }
}
