//! Which worker a request goes to, and holding requests while no worker is ready.
//!
//! # Guarantees
//! - With a ready worker, [`Routing::choose`] answers at once with the [`Picker`]'s choice.
//! - With none, the request is held (at most `max_held` at once, each at most `hold_timeout` and
//!   never past its deadline) and released as soon as a worker becomes ready; while held it
//!   counts in `lynx_router_pending_requests`. A full hold is RESOURCE_EXHAUSTED, a hold that
//!   times out UNAVAILABLE, both saying which limit was reached.
//! - A retry (some workers excluded) is never held: with no other ready worker it gets `None`
//!   and the caller answers with the first worker's status.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::Status;

use crate::fleet::{Fleet, Sent, Worker};
use crate::metrics::Metrics;
use crate::policy::{ImageKey, Picker, PickerConfig};

/// Bounds of holding requests at zero ready workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldConfig {
    /// Requests held at once; more are refused.
    pub max_held: usize,
    /// How long one request is held at most.
    pub timeout: Duration,
}

/// The fleet, the picker and the hold.
#[derive(Debug)]
pub struct Routing {
    fleet: Arc<Fleet>,
    picker: Mutex<Picker<SocketAddr>>,
    hold: HoldConfig,
    held: AtomicUsize,
    metrics: Metrics,
}

/// A held request's place: released (and its hold time observed) when dropped.
struct Held<'a> {
    routing: &'a Routing,
    since: Instant,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.routing.held.fetch_sub(1, Ordering::AcqRel);
        self.routing.metrics.pending_requests.dec();
        self.routing
            .metrics
            .hold_seconds
            .observe(self.since.elapsed().as_secs_f64());
    }
}

impl Routing {
    /// Routing over `fleet` with `picker`'s policy and `hold`'s bounds.
    pub fn new(
        fleet: Arc<Fleet>,
        picker: PickerConfig,
        hold: HoldConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            fleet,
            picker: Mutex::new(Picker::new(picker)),
            hold,
            held: AtomicUsize::new(0),
            metrics,
        }
    }

    /// A ready worker for a request carrying `images`, not one of `exclude` (the workers that
    /// already refused it); see the module's guarantees.
    pub async fn choose(
        &self,
        images: &[ImageKey],
        deadline: Option<Instant>,
        exclude: &[SocketAddr],
    ) -> Result<Option<Sent>, Status> {
        let mut ready = self.fleet.ready();
        let mut held: Option<Held<'_>> = None;
        loop {
            ready.borrow_and_update();
            let candidates: Vec<_> = self
                .fleet
                .candidates()
                .into_iter()
                .filter(|(w, _)| !exclude.contains(&w.addr))
                .collect();
            if !candidates.is_empty() {
                return Ok(Some(self.pick(&candidates, images)));
            }
            if !exclude.is_empty() {
                return Ok(None);
            }
            let since = match &held {
                Some(h) => h.since,
                None => {
                    let h = self.take_place()?;
                    let since = h.since;
                    held = Some(h);
                    since
                }
            };
            let hold_end = since + self.hold.timeout;
            let until = deadline.map_or(hold_end, |d| d.min(hold_end));
            let woke = tokio::time::timeout_at(until.into(), ready.changed()).await;
            match woke {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("the router is shutting down")),
                Err(_) if deadline.is_some_and(|d| d <= hold_end) => {
                    return Err(Status::deadline_exceeded(
                        "the deadline passed while the request was held: no worker became ready",
                    ))
                }
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "no worker became ready within hold_timeout_seconds ({} s); the fleet \
                         may still be starting",
                        self.hold.timeout.as_secs_f64()
                    )))
                }
            }
        }
    }

    fn take_place(&self) -> Result<Held<'_>, Status> {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        if before >= self.hold.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "no worker is ready and max_held_requests ({}) requests are already held",
                self.hold.max_held
            )));
        }
        self.metrics.pending_requests.inc();
        Ok(Held {
            routing: self,
            since: Instant::now(),
        })
    }

    fn pick(&self, candidates: &[(Arc<Worker>, crate::policy::Load)], images: &[ImageKey]) -> Sent {
        let by_addr: Vec<_> = candidates.iter().map(|(w, l)| (w.addr, *l)).collect();
        let picked = self
            .picker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pick(&by_addr, images);
        let (addr, reason) =
            picked.unwrap_or((candidates[0].0.addr, crate::policy::Reason::LeastLoad));
        self.metrics
            .decisions
            .with_label_values(&[reason.as_str()])
            .inc();
        let worker = candidates
            .iter()
            .find(|(w, _)| w.addr == addr)
            .map_or_else(|| Arc::clone(&candidates[0].0), |(w, _)| Arc::clone(w));
        worker.sent()
    }
}
