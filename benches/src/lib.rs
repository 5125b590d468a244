#![doc = include_str!("../README.md")]

pub mod moves;
pub mod sim;
