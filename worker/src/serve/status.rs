//! Request errors as gRPC statuses (the one place that maps them), status-code metric labels,
//! and the accounting of every generation request (in-flight count, status, duration).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::metrics::Metrics;
use crate::runner::RequestError;

/// The gRPC status of a request error.
pub fn status_of(e: RequestError) -> Status {
    {
        let code = match &e {
            RequestError::InvalidArgument(_) => Code::InvalidArgument,
            RequestError::QueueFull { .. } | RequestError::TooManyIncoming { .. } => {
                Code::ResourceExhausted
            }
            RequestError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            RequestError::Unavailable(_) => Code::Unavailable,
            RequestError::Cancelled => Code::Cancelled,
            RequestError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// How close to its deadline a request whose client left counts as ended by the deadline.
pub const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// Accounts for one generation request from arrival to its status.
///
/// # Guarantees
/// - The request counts as in flight (for the drain) until the guard is dropped.
/// - Exactly one status is recorded per request: the first [`RequestGuard::record`], or, when
///   the guard is dropped without one (the client left), `DEADLINE_EXCEEDED` if the request's
///   deadline had passed or was close (within a fifth of its budget, at most
///   [`DEADLINE_SLACK`]: the client's own deadline ended it) and `CANCELLED` otherwise.
#[derive(Debug)]
pub struct RequestGuard {
    metrics: Metrics,
    in_flight: Arc<AtomicUsize>,
    received: Instant,
    deadline: Option<Instant>,
    recorded: bool,
}

impl RequestGuard {
    /// Starts accounting for a request that arrived at `received`.
    pub fn new(metrics: Metrics, in_flight: Arc<AtomicUsize>, received: Instant) -> Self {
        in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            metrics,
            in_flight,
            received,
            deadline: None,
            recorded: false,
        }
    }

    /// Sets the request's deadline (the worker's, a margin before the client's).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Records the request's status (only the first call counts).
    pub fn record(&mut self, code: Code) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        self.metrics
            .count_request(lynx_proto::code_name(code), self.received.elapsed());
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let expired = self.deadline.is_some_and(|d| {
            // The client's deadline counts from its send, so it can pass before the worker's
            // (counted from the handler's start): a request dropped close to its deadline was
            // ended by it. Close: a fifth of its time budget, at most DEADLINE_SLACK.
            let slack = d.saturating_duration_since(self.received) / 5;
            Instant::now() + slack.min(DEADLINE_SLACK) >= d
        });
        self.record(if expired {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        });
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
