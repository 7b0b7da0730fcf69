//! The door of `lynx.v1.Lynx`: what is decided from a request's headers alone, before its message
//! is read or decoded.
//!
//! 1. Bearer tokens (every method; [`Tokens`]): UNAUTHENTICATED without one of them.
//! 2. Load shedding (generation methods): draining answers UNAVAILABLE, a full queue
//!    RESOURCE_EXHAUSTED (the handler's words), and so does `--max-incoming-requests` requests
//!    already being received, checked or prepared (the bound on the memory of messages in
//!    flight). An admitted request carries its [`Incoming`](super::prepare::Incoming) place to
//!    the handler in its extensions.
//!
//! Refused generation requests are counted in `lynx_requests_total` with their code. Under
//! overload nearly every refusal is a full queue, and a closed-loop client sends its refused
//! request again at once; refusing here costs the headers only (no copy of the images, no
//! protobuf decoding). The handler still checks draining and reserves the queue place (the state
//! can change while a message is read).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::Status;

use super::auth::Tokens;
use super::decode_errors::is_generation;
use super::grpc::Shared;
use super::status::status_of;

/// Wraps the generated `lynx.v1.Lynx` service (same name, same routes).
#[derive(Debug, Clone)]
pub struct Door<S> {
    inner: S,
    tokens: Tokens,
    shared: Arc<Shared>,
}

impl<S> Door<S> {
    /// `inner`, answering only requests that carry one of `tokens` (none: no authentication),
    /// and refusing generation requests from their headers while `shared`'s worker is draining,
    /// its queue is full or it has all the incoming requests it takes.
    pub fn new(inner: S, tokens: Tokens, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            tokens,
            shared,
        }
    }

    /// Why `req` is refused at the door, if it is; an admitted generation request gets its
    /// incoming place.
    fn admit(&self, req: &mut Request<Body>) -> Result<(), Status> {
        self.tokens.check(req.headers())?;
        if is_generation(req.uri().path()) {
            let incoming = self.shared.admit().map_err(status_of)?;
            // The handler holds the place until the request is queued or refused.
            req.extensions_mut().insert(incoming);
        }
        Ok(())
    }
}

impl<S: NamedService> NamedService for Door<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Door<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match self.admit(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                if is_generation(req.uri().path()) {
                    self.shared
                        .metrics
                        .count_request(lynx_proto::code_name(status.code()), Duration::ZERO);
                }
                // The unread message is dropped with the request (the stream is reset after the
                // answer, as for a message over the size limit).
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
