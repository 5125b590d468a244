//! Errors: decoding, authentication, and the status codes that go on the wire with the retry
//! class a client reads from each.

use thiserror::Error;

/// Why a request or response could not be decoded. Never carries input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The whole message is larger than the protocol allows.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ends inside an item.
    #[error("truncated input")]
    Truncated,
    /// Bytes follow the top-level item.
    #[error("trailing bytes after the message")]
    TrailingBytes,
    /// An item of another type than the schema expects.
    #[error("expected {0}")]
    UnexpectedType(&'static str),
    /// A head not in shortest form.
    #[error("non-canonical integer or length encoding")]
    NonCanonical,
    /// An indefinite-length string, array or map.
    #[error("indefinite length")]
    IndefiniteLength,
    /// A string or container longer than its limit.
    #[error("length exceeds the limit of {max}")]
    TooLong {
        /// The limit for this field.
        max: usize,
    },
    /// A fixed-size byte string of another length.
    #[error("byte string must be {expected} bytes")]
    WrongLength {
        /// Required length.
        expected: usize,
    },
    /// Containers nested deeper than [`crate::cbor::MAX_DEPTH`].
    #[error("nesting too deep")]
    TooDeep,
    /// A map key the schema does not define.
    #[error("unknown map key {0}")]
    UnknownKey(u64),
    /// A map key not greater than the one before it (duplicate or out of order).
    #[error("map key {0} duplicated or out of order")]
    UnorderedKey(u64),
    /// A required map key is absent.
    #[error("missing required key {0}")]
    MissingKey(u64),
    /// A method id the protocol does not define.
    #[error("unknown method {0}")]
    UnknownMethod(u64),
    /// A status code the protocol does not define.
    #[error("unknown status {0}")]
    UnknownStatus(u64),
    /// Text that is not UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A well-formed value outside its allowed range.
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
}

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The method needs a signature and none was sent.
    #[error("signature required")]
    Missing,
    /// The method takes no signature and one was sent.
    #[error("signature not allowed for this method")]
    Unexpected,
    /// The signature does not verify for this mailbox, method, node and request (one error for
    /// all causes, so a refusal tells nothing about the mailbox).
    #[error("authentication failed")]
    BadSignature,
    /// The timestamp is outside the window around the node's clock.
    #[error("timestamp outside the accepted window")]
    ClockSkew,
    /// The same signed request was already executed inside the window.
    #[error("replayed request")]
    Replayed,
    /// The replay cache is full; the request cannot be checked, so it is refused.
    #[error("replay cache full")]
    CacheFull,
    /// A delegate's signature verified, but this node holds no live delegation record for it
    /// (yet: another member may; or no more: the device was removed).
    #[error("the signer holds no delegation for this mailbox here")]
    NotDelegated,
}

/// What a client does after a refusal (arti's `RetryTime`): the request loop reads this instead of
/// matching status codes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Retry at once through the same member: the refusal was about this attempt only (the
    /// signature's clock, now corrected from the answer's node time).
    Now,
    /// Retry at once through another member of the swarm (or the swarm the answer names): this
    /// member cannot serve the request now, another may.
    Elsewhere,
    /// Retry through another member after a pause: the node is short of a resource that frees
    /// up by itself.
    Later,
    /// Retry through each other member of the swarm once, and give up when every member has
    /// refused: one member may lack a record the others hold (a fresh delegation), but a
    /// refusal by all is final (the delegation is gone).
    EachMember,
    /// Do not retry: the same request would be refused again.
    Never,
}

/// Status codes carried in every response (whitepaper §4). `Ok` is 0; the rest are refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Executed; a body follows.
    Ok = 0,
    /// Not valid CBOR of the schema.
    Malformed = 1,
    /// Over the size limit.
    TooLarge = 2,
    /// Unknown method id.
    UnknownMethod = 3,
    /// Signature required but absent.
    AuthRequired = 4,
    /// Signature invalid (key, node, digest, method, mailbox, namespace or timestamp differ).
    Unauthorized = 5,
    /// Timestamp outside ±window; the response's node time lets the client resynchronise.
    ClockSkew = 6,
    /// Same signed request seen inside the window.
    Replayed = 7,
    /// TTL outside bounds.
    TtlOutOfRange = 8,
    /// New expiry outside bounds.
    ExpiryOutOfRange = 9,
    /// Mailbox quota reached.
    QuotaExceeded = 10,
    /// Node size cap reached or disk full.
    NodeFull = 11,
    /// Temporarily unable (queue or replay cache full); retry later.
    Busy = 12,
    /// Storage fault on the node.
    Internal = 13,
    /// The method is valid but this component does not serve it.
    Unsupported = 14,
    /// The mailbox belongs to another swarm; the response names it (`redirect`).
    WrongSwarm = 15,
    /// The node joined the mailbox's swarm and is still pulling its share; ask another member.
    Syncing = 16,
    /// Stored durably here, but fewer than a majority of the swarm confirmed it in time: not
    /// acknowledged. Retrying (through any member) is safe: stores are idempotent.
    NotReplicated = 17,
    /// A delegate signed, and this member holds no live delegation record for it (storage.md
    /// §3): ask the other members; refused by all, the delegation is gone.
    NotDelegated = 18,
}

impl Status {
    /// All statuses, in code order.
    pub const ALL: [Status; 19] = [
        Status::Ok,
        Status::Malformed,
        Status::TooLarge,
        Status::UnknownMethod,
        Status::AuthRequired,
        Status::Unauthorized,
        Status::ClockSkew,
        Status::Replayed,
        Status::TtlOutOfRange,
        Status::ExpiryOutOfRange,
        Status::QuotaExceeded,
        Status::NodeFull,
        Status::Busy,
        Status::Internal,
        Status::Unsupported,
        Status::WrongSwarm,
        Status::Syncing,
        Status::NotReplicated,
        Status::NotDelegated,
    ];

    /// What a client does after this answer ([`Retry::Never`] for `Ok`, which needs no retry).
    pub fn retry(self) -> Retry {
        match self {
            Status::ClockSkew => Retry::Now,
            Status::WrongSwarm | Status::Syncing | Status::NotReplicated | Status::Internal => {
                Retry::Elsewhere
            }
            Status::Busy => Retry::Later,
            Status::NotDelegated => Retry::EachMember,
            Status::Ok
            | Status::Malformed
            | Status::TooLarge
            | Status::UnknownMethod
            | Status::AuthRequired
            | Status::Unauthorized
            | Status::Replayed
            | Status::TtlOutOfRange
            | Status::ExpiryOutOfRange
            | Status::QuotaExceeded
            | Status::NodeFull
            | Status::Unsupported => Retry::Never,
        }
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Parses a wire code.
    pub fn from_code(c: u64) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|s| u64::from(s.code()) == c)
            .ok_or(DecodeError::UnknownStatus(c))
    }
}

impl From<DecodeError> for Status {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { .. } => Status::TooLarge,
            DecodeError::UnknownMethod(_) => Status::UnknownMethod,
            _ => Status::Malformed,
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Status::AuthRequired,
            AuthError::Unexpected => Status::Malformed,
            AuthError::BadSignature => Status::Unauthorized,
            AuthError::ClockSkew => Status::ClockSkew,
            AuthError::Replayed => Status::Replayed,
            AuthError::CacheFull => Status::Busy,
            AuthError::NotDelegated => Status::NotDelegated,
        }
    }
}
