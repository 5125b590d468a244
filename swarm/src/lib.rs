#![doc = include_str!("../README.md")]

pub mod assign;
pub mod auth;
mod cbor;
pub mod crypto;
pub mod cursor;
pub mod error;
pub mod network;
pub mod proto;
pub mod roster;
pub mod service;
pub mod store;
pub mod sync;
pub mod time;

pub use cbor::MAX_DEPTH;
pub use cursor::Cursor;
pub use error::{AuthError, DecodeError, Status, StoreError};
pub use proto::{
    Body, CursorKey, Mailbox, MessageHash, Method, Namespace, NodeId, Request, Response,
    ResponseBody, StoredMessage,
};
pub use service::{Handled, PendingStore, Placement, ServeAll, Service, ServiceConfig};
pub use store::{NewMessage, RetrievePage, RetrieveQuery, Store, StoreConfig};
pub use time::{Clock, ManualClock, SystemClock, UnixMillis};
