//! Writes the onion test vectors (`whitepaper/vectors/onion.json`) to standard output:
//!
//! ```text
//! cargo run -p allium-onion --features trace --example onion_vectors > whitepaper/vectors/onion.json
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

#[path = "../tests/support/vectors.rs"]
#[allow(dead_code)]
mod vectors;

fn main() {
    println!(
        "{}",
        serde_json::to_string_pretty(&vectors::document()).expect("JSON")
    );
}
