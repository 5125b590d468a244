//! The random generator of the vector scripts: ChaCha20 from a seed given as an input, recording
//! every draw so that the vectors can publish it.

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use serde_json::Value;

/// A ChaCha20 generator that remembers what it handed out.
pub struct Recorder {
    inner: ChaCha20Rng,
    draws: Vec<Value>,
}

impl Recorder {
    pub fn new(seed: [u8; 32]) -> Self {
        Recorder {
            inner: ChaCha20Rng::from_seed(seed),
            draws: Vec::new(),
        }
    }

    /// The draws since the last call, as hex strings.
    pub fn take(&mut self) -> Value {
        Value::Array(std::mem::take(&mut self.draws))
    }
}

impl RngCore for Recorder {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        self.draws.push(Value::String(hex::encode(&*dest)));
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Recorder {}
