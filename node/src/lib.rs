#![doc = include_str!("../README.md")]

pub mod authority;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod destination;
pub mod devnet;
pub mod directory;
pub mod http;
pub mod keystore;
pub mod logging;
pub mod metrics;
pub mod onion_service;
pub mod ratelimit;
pub mod replication;
pub mod shutdown;

/// Locks `m`, taking its data even if a thread panicked while it held the lock.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
