//! Why a request did not get its answer; each variant is one gRPC status (mapped in
//! `serve::status`).

/// A request's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Bad input or a limit exceeded; the message names the limit (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The waiting queue is full (RESOURCE_EXHAUSTED).
    #[error("queue full: {max_queue} requests are waiting (max_queue)")]
    QueueFull {
        /// The configured capacity.
        max_queue: usize,
    },
    /// `max_incoming_requests` requests are already being received, checked or prepared
    /// (RESOURCE_EXHAUSTED).
    #[error(
        "too many requests arriving: {max_incoming_requests} are already being received or \
         prepared (max_incoming_requests)"
    )]
    TooManyIncoming {
        /// The configured bound.
        max_incoming_requests: usize,
    },
    /// The client's deadline passed (DEADLINE_EXCEEDED).
    #[error("deadline exceeded {0}")]
    DeadlineExceeded(&'static str),
    /// The worker does not take requests now (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The client went away (CANCELLED).
    #[error("cancelled by the client")]
    Cancelled,
    /// A failure of the worker itself (INTERNAL).
    #[error("internal error: {0}")]
    Internal(String),
}
