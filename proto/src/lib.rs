#![doc = include_str!("../README.md")]

pub mod assign;
pub mod auth;
pub mod cbor;
pub mod crypto;
pub mod cursor;
pub mod error;
pub mod network;
pub mod roster;
pub mod storage;
pub mod sync;
pub mod time;

pub use cbor::MAX_DEPTH;
pub use cursor::Cursor;
pub use error::{AuthError, DecodeError, Retry, Status};
pub use storage::{
    Body, CursorKey, Mailbox, MessageHash, Method, Namespace, NodeId, Request, Response,
    ResponseBody, StoredMessage,
};
pub use time::{Clock, ClockSample, ClockVerdict, ManualClock, SystemClock, UnixMillis};
