//! What a session message carries (`whitepaper/sessions.md` §15): the application message.
//!
//! ```text
//! message = 0x01 || u8(kind) || msg_id (16) || u64be(sent_ms) || body
//! ```
//!
//! `msg_id` names the message for the reader's deduplication and for later status updates;
//! `sent_ms` is the sender's claim of when it was written (shown, never trusted). The body's
//! meaning depends on `kind` (1 text, 2 file: `whitepaper/attachments.md` §4); a reader skips
//! kinds it does not know.

use thiserror::Error;

use crate::attach::FileRef;

/// Version byte of [`AppMessage`].
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 1 + 1 + 16 + 8;

/// A kind of application message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// UTF-8 text for a person to read.
    Text = 1,
    /// A file: its chunks' place, key and root (`whitepaper/attachments.md` §4).
    File = 2,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Text),
            2 => Some(Kind::File),
            _ => None,
        }
    }
}

/// Why a decrypted message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Shorter than its header.
    #[error("message shorter than its header")]
    Truncated,
    /// A version this client does not read.
    #[error("message version {0} unknown")]
    Version(u8),
    /// A kind this client does not know (sent by a newer client).
    #[error("message kind {0} unknown")]
    UnknownKind(u8),
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
    /// A file message that does not decode (attachments.md §4).
    #[error("unreadable file message")]
    BadFile,
}

/// One application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage {
    /// The message id, random per message.
    pub msg_id: [u8; 16],
    /// When the sender wrote it (its clock, Unix ms).
    pub sent_ms: u64,
    /// What it says.
    pub content: Content,
}

/// The body of an [`AppMessage`], by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text.
    Text(String),
    /// A file.
    File(FileRef),
}

impl Content {
    /// What the history and the terminal show for it: the text, or a line naming the file.
    pub fn summary(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::File(f) => format!("[file] {} ({} bytes)", f.name, f.size),
        }
    }
}

impl AppMessage {
    /// The encoding sealed into a session message.
    pub fn encode(&self) -> Vec<u8> {
        let file;
        let (kind, body) = match &self.content {
            Content::Text(t) => (Kind::Text, t.as_bytes()),
            Content::File(f) => {
                file = f.encode();
                (Kind::File, file.as_slice())
            }
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(VERSION);
        out.push(kind as u8);
        out.extend_from_slice(&self.msg_id);
        out.extend_from_slice(&self.sent_ms.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Decodes [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        if bytes.len() < HEADER_LEN {
            return Err(PayloadError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(PayloadError::Version(bytes[0]));
        }
        let kind = Kind::from_u8(bytes[1]).ok_or(PayloadError::UnknownKind(bytes[1]))?;
        let mut msg_id = [0u8; 16];
        msg_id.copy_from_slice(&bytes[2..18]);
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&bytes[18..26]);
        let body = &bytes[HEADER_LEN..];
        let content = match kind {
            Kind::Text => Content::Text(
                std::str::from_utf8(body)
                    .map_err(|_| PayloadError::NotUtf8)?
                    .to_owned(),
            ),
            Kind::File => Content::File(FileRef::decode(body).map_err(|_| PayloadError::BadFile)?),
        };
        Ok(AppMessage {
            msg_id,
            sent_ms: u64::from_be_bytes(sent),
            content,
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
            let _ = AppMessage::decode(&bytes);
        }

        #[test]
        fn text_round_trips(id in any::<[u8; 16]>(), t in any::<u64>(), text in ".{0,40}") {
            let m = AppMessage { msg_id: id, sent_ms: t, content: Content::Text(text) };
            prop_assert_eq!(AppMessage::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let m = AppMessage {
            msg_id: [7; 16],
            sent_ms: 1,
            content: Content::Text("hi".into()),
        };
        let mut b = m.encode();
        assert_eq!(AppMessage::decode(&b[..25]), Err(PayloadError::Truncated));
        b[1] = 9;
        assert_eq!(AppMessage::decode(&b), Err(PayloadError::UnknownKind(9)));
        b[1] = 1;
        b[0] = 2;
        assert_eq!(AppMessage::decode(&b), Err(PayloadError::Version(2)));
        let mut bad = m.encode();
        bad.push(0xff);
        assert_eq!(AppMessage::decode(&bad), Err(PayloadError::NotUtf8));
        let mut file = m.encode();
        file[1] = 2;
        assert_eq!(AppMessage::decode(&file), Err(PayloadError::BadFile));
    }
}
