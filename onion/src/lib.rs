#![doc = include_str!("../README.md")]

pub mod epoch;
pub mod error;
pub mod id;
mod kdf;
pub mod keyring;
pub mod keys;
pub mod packet;
pub mod replay;
pub mod reply;
pub mod session;
#[cfg(feature = "trace")]
pub mod trace;

pub use epoch::{Epoch, EpochSchedule};
pub use error::{BuildError, KeyError, PeelError, ReplyError, SealError};
pub use id::{Id, NodeId, NodeRole, Role};
pub use kdf::{ReplayTag, labels};
pub use keyring::OnionKeyRing;
pub use keys::{
    EphemeralSecret, IdentityKeypair, IdentityPublicKey, OnionKeyCert, OnionPublicKey,
    OnionSecretKey, SharedSecret,
};
pub use packet::{
    BuiltPacket, HEADER_LEN, MAX_HOPS, PathHop, Peeled, PreparedPath, SizeClass, build_packet,
    packet_epoch, peel, prepare_path,
};
pub use replay::{Recorded, ReplayFilter, ReplayWindow};
pub use reply::{ErrorCode, Reply, ReplyLayer, ReplyOpener, ReplySealer, max_response};
pub use session::{
    OpenError, PathSession, SessionGrant, SessionId, SessionRole, SessionTable, peel_session,
    session_packet_id,
};
