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
