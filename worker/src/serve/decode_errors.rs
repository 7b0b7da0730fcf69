//! A request message that cannot be decoded (malformed protobuf, a string field that is not
//! UTF-8) is the client's error: tonic answers it INTERNAL, this wrapper makes it
//! INVALID_ARGUMENT with the same message.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Code, Status};

/// Prefix of tonic's status message for a request that prost could not decode.
const DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// Wraps a generated gRPC service (same name, same routes).
#[derive(Debug, Clone)]
pub struct DecodeErrorsAsInvalid<S> {
    inner: S,
}

impl<S> DecodeErrorsAsInvalid<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for DecodeErrorsAsInvalid<S> {
    const NAME: &'static str = S::NAME;
}

/// Rewrites a trailers-only INTERNAL decode failure in `headers` to INVALID_ARGUMENT.
fn rewrite(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::Internal && status.message().starts_with(DECODE_FAILURE) {
        let fixed = Status::invalid_argument(status.message().to_owned());
        // Only fails on a message that cannot be a header value: keep tonic's answer then.
        fixed.add_header(headers).ok();
    }
}

impl<S> Service<Request<Body>> for DecodeErrorsAsInvalid<S>
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite(resp.headers_mut());
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decode_failures_become_invalid_argument() {
        let mut h = HeaderMap::new();
        Status::internal(format!(
            "{DECODE_FAILURE}: invalid string value: data is not UTF-8"
        ))
        .add_header(&mut h)
        .ok();
        rewrite(&mut h);
        let s = Status::from_header_map(&h).map(|s| (s.code(), s.message().to_owned()));
        assert_eq!(
            s,
            Some((
                Code::InvalidArgument,
                format!("{DECODE_FAILURE}: invalid string value: data is not UTF-8")
            ))
        );
        let mut h = HeaderMap::new();
        Status::internal("internal error: model")
            .add_header(&mut h)
            .ok();
        rewrite(&mut h);
        assert_eq!(
            Status::from_header_map(&h).map(|s| s.code()),
            Some(Code::Internal)
        );
    }
}
