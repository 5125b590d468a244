//! Layered replies.
//!
//! A reply travels back along the streams the request came on and always has a class size. The
//! node that originates it — the destination with a response, or any hop with an error — seals it
//! with AES-256-GCM under its reply key; every hop between it and the sender XORs the reply with
//! its own wrap keystream, so no two links carry the same bytes. The sender removes the wraps one
//! by one and, before removing hop `j`'s, tries hop `j`'s reply key: the first key that verifies
//! names the hop that spoke.
//!
//! ```text
//! reply plaintext = kind (1) || kind-specific fields || zero padding   (class length − 16)
//!   response: kind 0x00 || body length (4, big-endian) || body
//!   error:    kind 0x01 || error code (1)
//! reply       = AES-256-GCM(reply key, zero nonce, no AAD, plaintext) || tag (16)
//! ```

use crate::error::{ReplyError, SealError};
use crate::kdf::Key;
use crate::packet::{SizeClass, TAG_LEN};

const KIND_RESPONSE: u8 = 0x00;
const KIND_ERROR: u8 = 0x01;
/// Bytes of a response plaintext before the body: kind (1) and length (4).
pub const RESPONSE_PREFIX_LEN: usize = 5;

/// The class of the error replies that relays originate: they do not know the class the sender
/// asked the destination for.
pub const ERROR_REPLY_CLASS: SizeClass = SizeClass::Small;

/// Largest response body a reply of `class` carries.
pub const fn max_response(class: SizeClass) -> usize {
    class.size() - TAG_LEN - RESPONSE_PREFIX_LEN
}

/// Why a hop answered with an error instead of forwarding a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The hop could not reach the next hop (no address, refused, or the key did not match).
    NextHopUnreachable,
    /// The next hop did not answer within the hop's forward time-out.
    NextHopTimeout,
    /// The next hop refused the packet (it failed to peel it there).
    NextHopRejected,
    /// The hop is over capacity and shed the request.
    Overloaded,
    /// The destination refused to execute the request.
    Rejected,
    /// A code this version does not know, authenticated by the hop that sent it.
    Unknown(u8),
}

impl ErrorCode {
    /// Wire value.
    pub fn code(self) -> u8 {
        match self {
            ErrorCode::NextHopUnreachable => 1,
            ErrorCode::NextHopTimeout => 2,
            ErrorCode::NextHopRejected => 3,
            ErrorCode::Overloaded => 4,
            ErrorCode::Rejected => 5,
            ErrorCode::Unknown(c) => c,
        }
    }

    /// The code of a wire value.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => ErrorCode::NextHopUnreachable,
            2 => ErrorCode::NextHopTimeout,
            3 => ErrorCode::NextHopRejected,
            4 => ErrorCode::Overloaded,
            5 => ErrorCode::Rejected,
            c => ErrorCode::Unknown(c),
        }
    }
}

fn seal_error(key: &Key, code: ErrorCode) -> Vec<u8> {
    let class = ERROR_REPLY_CLASS;
    let mut out = vec![0u8; class.size()];
    let (body, tag) = out.split_at_mut(class.size() - TAG_LEN);
    body[0] = KIND_ERROR;
    body[1] = code.code();
    tag.copy_from_slice(&key.seal(&[], body));
    out
}

/// A relay's part of the reply: wrap the next hop's reply, or originate an error. Consumed by
/// either, so the keys serve one reply only.
#[derive(Debug)]
pub struct ReplyLayer {
    reply: Key,
    wrap: Key,
}

impl ReplyLayer {
    pub(crate) fn new(reply: Key, wrap: Key) -> Self {
        ReplyLayer { reply, wrap }
    }

    /// Adds this hop's layer to the reply that came back from the next hop, in place. A reply
    /// whose length is not a class size is refused; the hop should then answer with
    /// [`ErrorCode::NextHopRejected`] — through [`Self::error`], which a refused wrap leaves
    /// available by returning `self`.
    pub fn wrap(self, reply: &mut [u8]) -> Result<(), ReplyLayer> {
        if SizeClass::from_len(reply.len()).is_none() {
            return Err(self);
        }
        self.wrap.ctr_xor(reply);
        Ok(())
    }

    /// This hop's own error reply (small class), sealed with its reply key.
    pub fn error(self, code: ErrorCode) -> Vec<u8> {
        seal_error(&self.reply, code)
    }
}

/// The destination's part of the reply. Consumed by sealing, so the key serves one reply only.
#[derive(Debug)]
pub struct ReplySealer {
    reply: Key,
    class: SizeClass,
}

impl ReplySealer {
    pub(crate) fn new(reply: Key, class: SizeClass) -> Self {
        ReplySealer { reply, class }
    }

    /// The reply class the sender asked for.
    pub fn class(&self) -> SizeClass {
        self.class
    }

    /// Largest body [`Self::seal`] accepts.
    pub fn max_body(&self) -> usize {
        max_response(self.class)
    }

    /// Seals a response body into a reply of the class the sender asked for.
    pub fn seal(self, body: &[u8]) -> Result<Vec<u8>, SealError> {
        if body.len() > self.max_body() {
            return Err(SealError::TooLarge {
                len: body.len(),
                max: self.max_body(),
            });
        }
        let len = self.class.size();
        let mut out = vec![0u8; len];
        let (plain, tag) = out.split_at_mut(len - TAG_LEN);
        plain[0] = KIND_RESPONSE;
        plain[1..5].copy_from_slice(&(body.len() as u32).to_be_bytes());
        plain[RESPONSE_PREFIX_LEN..RESPONSE_PREFIX_LEN + body.len()].copy_from_slice(body);
        tag.copy_from_slice(&self.reply.seal(&[], plain));
        Ok(out)
    }

    /// The destination's own error reply (small class).
    pub fn error(self, code: ErrorCode) -> Vec<u8> {
        seal_error(&self.reply, code)
    }
}

/// What the sender learns from a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The destination's response body, borrowed from the reply buffer.
    Response(&'a [u8]),
    /// Hop `hop` (0 = first hop) reported `code`.
    Error {
        /// Index in the path of the hop that originated the error.
        hop: usize,
        /// What it reported.
        code: ErrorCode,
    },
}

/// The sender's keys for opening the reply to one packet. Consumed by [`Self::open`].
#[derive(Debug)]
pub struct ReplyOpener {
    layers: Vec<(Key, Key)>,
}

impl ReplyOpener {
    pub(crate) fn new(layers: Vec<(Key, Key)>) -> Self {
        ReplyOpener { layers }
    }

    /// Number of layers (hops, destination included) in the path.
    pub fn hops(&self) -> usize {
        self.layers.len()
    }

    /// Opens `reply` in place.
    pub fn open(self, reply: &mut [u8]) -> Result<Reply<'_>, ReplyError> {
        if SizeClass::from_len(reply.len()).is_none() {
            return Err(ReplyError::BadSize(reply.len()));
        }
        let last = self.layers.len().saturating_sub(1);
        let body_len = reply.len() - TAG_LEN;
        let mut speaker = None;
        for (hop, (reply_key, wrap_key)) in self.layers.iter().enumerate() {
            let (body, tag_bytes) = reply.split_at_mut(body_len);
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(tag_bytes);
            if reply_key.open(&[], body, &tag).is_ok() {
                speaker = Some(hop);
                break;
            }
            // Not this hop's reply: remove its wrap (over body and tag) and try the next.
            wrap_key.ctr_xor(reply);
        }
        let hop = speaker.ok_or(ReplyError::Unauthenticated)?;
        parse(&reply[..body_len], hop, hop == last)
    }
}

fn parse(plain: &[u8], hop: usize, is_destination: bool) -> Result<Reply<'_>, ReplyError> {
    match plain.first() {
        Some(&KIND_RESPONSE) if is_destination => {
            let len = u32::from_be_bytes([plain[1], plain[2], plain[3], plain[4]]) as usize;
            let end = RESPONSE_PREFIX_LEN
                .checked_add(len)
                .filter(|&e| e <= plain.len())
                .ok_or(ReplyError::Malformed("response length exceeds the reply"))?;
            if plain[end..].iter().any(|&b| b != 0) {
                return Err(ReplyError::Malformed("non-zero reply padding"));
            }
            Ok(Reply::Response(&plain[RESPONSE_PREFIX_LEN..end]))
        }
        Some(&KIND_RESPONSE) => Err(ReplyError::Malformed("response from a relay")),
        Some(&KIND_ERROR) => {
            if plain[2..].iter().any(|&b| b != 0) {
                return Err(ReplyError::Malformed("non-zero reply padding"));
            }
            Ok(Reply::Error {
                hop,
                code: ErrorCode::from_code(plain[1]),
            })
        }
        _ => Err(ReplyError::Malformed("unknown reply kind")),
    }
}
