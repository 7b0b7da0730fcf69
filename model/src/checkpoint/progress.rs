//! Load progress in the log: tensors and bytes, at most one line per second plus a summary, so that
//! loading a 7B-sized model (tens of GB) visibly advances.

use std::time::{Duration, Instant};

use candle_core::Tensor;

/// Counts tensors and bytes as they are read.
pub struct LoadProgress {
    what: &'static str,
    tensors: usize,
    bytes: u64,
    start: Instant,
    last_log: Instant,
}

impl LoadProgress {
    /// Starts counting for `what` (shown in every line).
    pub fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Self {
            what,
            tensors: 0,
            bytes: 0,
            start: now,
            last_log: now,
        }
    }

    /// Records one tensor read.
    pub fn tensor(&mut self, name: &str, t: &Tensor) {
        self.add(name, (t.elem_count() * t.dtype().size_in_bytes()) as u64);
    }

    /// Records `bytes` read for tensor `name`.
    pub fn add(&mut self, name: &str, bytes: u64) {
        self.tensors += 1;
        self.bytes += bytes;
        if self.last_log.elapsed() >= Duration::from_secs(1) {
            self.last_log = Instant::now();
            tracing::info!(
                what = self.what,
                tensors = self.tensors,
                mib = self.bytes / (1 << 20),
                last = name,
                "loading weights"
            );
        }
    }

    /// Logs the summary line.
    pub fn finish(&self) {
        tracing::info!(
            what = self.what,
            tensors = self.tensors,
            mib = self.bytes / (1 << 20),
            secs = format!("{:.2}", self.start.elapsed().as_secs_f64()),
            "weights loaded"
        );
    }
}
