//! Readiness and drain state shared by the gRPC handlers, the HTTP probes and the server task.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Where the worker is in its life: loading, ready, draining, cut off.
#[derive(Debug)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
    /// Set when the drain timeout ran out: with the timeout it ran out after.
    cut_off: watch::Sender<Option<Duration>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: Arc::default(),
            cut_off: watch::Sender::new(None),
        }
    }
}

/// The status of a request that the drain timeout cut off.
pub fn cut_off_status(drain_timeout: Duration) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "the worker shut down before this request finished: the drain timeout \
         (drain_timeout_seconds = {}) ran out; retry on another worker",
        drain_timeout.as_secs()
    ))
}

impl Lifecycle {
    /// Ends every request still in flight: their handlers answer [`cut_off_status`].
    pub fn cut_off(&self, drain_timeout: Duration) {
        self.cut_off.send_replace(Some(drain_timeout));
    }

    /// Resolves with the cut-off status once [`Lifecycle::cut_off`] was called.
    pub fn cut_off_signal(&self) -> impl Future<Output = tonic::Status> + Send + 'static {
        let mut rx = self.cut_off.subscribe();
        async move {
            let timeout = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .map(|v| v.unwrap_or_default());
            match timeout {
                Some(t) => cut_off_status(t),
                // The lifecycle is gone with the server: nothing will cut off.
                None => std::future::pending().await,
            }
        }
    }

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
