#![doc = include_str!("../README.md")]

pub mod service;
pub mod stage;
pub mod store;

pub use service::{Handled, PendingStore, Placement, ServeAll, Service, ServiceConfig};
pub use store::error::{Corruption, StoreError};
pub use store::{NewMessage, RetrievePage, RetrieveQuery, Store, StoreConfig};
