//! Load shedding at the door: a generation request that the worker cannot take now is refused
//! from its headers alone, before its message is read or decoded. Draining answers UNAVAILABLE,
//! a full queue RESOURCE_EXHAUSTED, with the handler's own words and counted the same way; so
//! does `--max-incoming-requests` requests already being received, checked or prepared (the
//! bound on the memory of messages in flight). An admitted request carries its
//! [`Incoming`](super::prepare::Incoming) place to the handler in its extensions.
//!
//! Under overload nearly every refusal is a full queue, and a closed-loop client sends its
//! refused request again at once; refusing here costs the headers only (no copy of the images,
//! no protobuf decoding), so refusals take as little as possible of the model's CPU. The handler
//! still checks both (the state can change while a message is read) and reserves the place.

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

use super::decode_errors::is_generation;
use super::grpc::Shared;

/// Wraps the generated `lynx.v1.Lynx` service (same name, same routes).
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> LoadShed<S> {
    /// `inner`, refusing generation requests from their headers while `shared`'s worker is
    /// draining, its queue is full or it has all the incoming requests it takes.
    pub fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: NamedService> NamedService for LoadShed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for LoadShed<S>
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
        if is_generation(req.uri().path()) {
            let admitted = match self.shared.refusal() {
                Some(error) => Err(error),
                None => self.shared.preparer.admit(),
            };
            match admitted {
                // The handler holds the place until the request is queued or refused.
                Ok(incoming) => {
                    req.extensions_mut().insert(incoming);
                }
                Err(error) => {
                    let status = Status::from(error);
                    self.shared
                        .metrics
                        .count_request(status.code(), Duration::ZERO);
                    // The unread message is dropped with the request (the stream is reset after
                    // the answer, as for a message over the size limit).
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}
