//! Latency samples in an HDR histogram and the summary the table, JSON and plots read.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latencies in nanoseconds, 3 significant digits (0.1 % resolution), from 1 µs to 100 s.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Result<Self, String> {
        let hist = Histogram::new_with_bounds(1_000, 100_000_000_000, 3)
            .map_err(|e| format!("histogram: {e}"))?;
        Ok(Latencies { hist })
    }

    /// An empty histogram of the same shape.
    pub fn fresh(&self) -> Self {
        let mut hist = self.hist.clone();
        hist.reset();
        Latencies { hist }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Saturating: a value past the top is counted at the top rather than lost.
        self.hist.saturating_record(ns.max(1_000));
    }

    pub fn add(&mut self, other: &Latencies) {
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1), in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }

    pub fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1e6
    }

    pub fn mean_ms(&self) -> f64 {
        self.hist.mean() / 1e6
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            p50: self.ms(0.5),
            p90: self.ms(0.9),
            p99: self.ms(0.99),
            p999: self.ms(0.999),
            max: self.max_ms(),
            mean: self.mean_ms(),
        }
    }

    /// (percentile, ms) points for a percentile plot: denser towards the tail, up to the
    /// largest percentile the sample count supports.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        let n = self.count().max(1) as f64;
        let mut out = Vec::new();
        for k in 0..=100 {
            // 1 / (1 - q) from 1 to 10^5 in steps of 10^0.05.
            let q = 1.0 - 10f64.powf(-(k as f64) / 20.0);
            if q > 1.0 - 1.0 / n {
                break;
            }
            out.push((q, self.ms(q)));
        }
        out.push((1.0 - 1.0 / n, self.max_ms()));
        out
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn to_json(self) -> Value {
        json!({
            "samples": self.count,
            "p50_ms": self.p50,
            "p90_ms": self.p90,
            "p99_ms": self.p99,
            "p99_9_ms": self.p999,
            "max_ms": self.max,
            "mean_ms": self.mean,
        })
    }
}

/// The median of `v` (sorted here).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
