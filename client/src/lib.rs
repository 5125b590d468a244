#![doc = include_str!("../README.md")]

pub mod envelope;
pub mod identity;
pub mod onion;
pub mod state;
