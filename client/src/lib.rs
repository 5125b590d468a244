#![doc = include_str!("../README.md")]

pub mod app;
pub mod attach;
pub mod chat;
pub mod cli;
pub mod devices;
pub mod display;
pub mod flows;
pub mod group;
pub mod identity;
pub mod messenger;
pub mod net;
pub mod onion;
pub mod pages;
pub mod path;
pub mod session;
pub mod state;
