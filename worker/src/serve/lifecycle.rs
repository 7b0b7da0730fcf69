//! Readiness and drain state shared by the gRPC handlers, the HTTP probes and the server task.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Where the worker is in its life: loading, ready, draining.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
}

impl Lifecycle {
    /// The model is loaded and the warm-up request ran.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether `/readyz` answers 200: ready and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Stops taking requests (readiness false at once).
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether new requests are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Counter of generation requests in flight (accepted by a handler, not yet answered).
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }

    /// Generation requests in flight.
    pub fn in_flight_now(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}
