//! Request messages the generated service refuses before a handler runs, made honest:
//! - one that cannot be decoded (malformed protobuf, a string field that is not UTF-8) is the
//!   client's error: tonic answers it INTERNAL, this wrapper makes it INVALID_ARGUMENT with the
//!   same message;
//! - one over the receive limit (refused after its 5-byte length prefix, before its body is
//!   buffered): tonic's generic OUT_OF_RANGE becomes RESOURCE_EXHAUSTED naming
//!   `max_request_bytes` (gRPC's code for a message over the limit).
//!
//! Both are counted in `lynx_requests_total` (generation methods only) with the code the client
//! gets, since no handler counts them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::metrics::Metrics;

/// Prefix of tonic's status message for a request that prost could not decode.
const DECODE_FAILURE: &str = "failed to decode Protobuf message";
/// Start of tonic's status message for a request over the receive limit.
const TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Whether `path` is one of the generation methods that `lynx_requests_total` counts.
pub fn is_generation(path: &str) -> bool {
    matches!(
        path,
        "/lynx.v1.Lynx/Generate" | "/lynx.v1.Lynx/GenerateStream"
    )
}

/// Wraps a generated gRPC service (same name, same routes).
#[derive(Debug, Clone)]
pub struct DecodeErrors<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> DecodeErrors<S> {
    /// Wraps `inner`, counting what it rewrites in `metrics`.
    pub fn new(inner: S, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S: NamedService> NamedService for DecodeErrors<S> {
    const NAME: &'static str = S::NAME;
}

/// The client's status for tonic's refusal `status` of an undecodable or oversize message;
/// `None` for any other status.
fn honest(status: &Status) -> Option<Status> {
    let msg = status.message();
    if status.code() == Code::Internal && msg.starts_with(DECODE_FAILURE) {
        return Some(Status::invalid_argument(msg.to_owned()));
    }
    if status.code() == Code::OutOfRange {
        let rest = msg.strip_prefix(TOO_LARGE)?;
        let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
        let limit = rest.strip_suffix(" bytes")?;
        return Some(Status::resource_exhausted(format!(
            "request message is {found} bytes, more than max_request_bytes = {limit}"
        )));
    }
    None
}

/// Rewrites a trailers-only refusal in `headers`; returns the code the client gets if it did.
fn rewrite(headers: &mut HeaderMap) -> Option<Code> {
    let fixed = honest(&Status::from_header_map(headers)?)?;
    // Only fails on a message that cannot be a header value: keep tonic's answer then.
    fixed.add_header(headers).ok()?;
    Some(fixed.code())
}

impl<S> Service<Request<Body>> for DecodeErrors<S>
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
        let received = Instant::now();
        let counted = is_generation(req.uri().path()).then(|| self.metrics.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let (Some(code), Some(metrics)) = (rewrite(resp.headers_mut()), counted) {
                metrics.count_request(lynx_proto::code_name(code), received.elapsed());
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_messages_name_the_limit() {
        let tonic_says = Status::out_of_range(
            "Error, decoded message length too large: found 5242893 bytes, the limit is: 4194304 bytes",
        );
        let s = honest(&tonic_says).map(|s| (s.code(), s.message().to_owned()));
        assert_eq!(
            s,
            Some((
                Code::ResourceExhausted,
                "request message is 5242893 bytes, more than max_request_bytes = 4194304".into()
            ))
        );
        assert!(honest(&Status::out_of_range("something else")).is_none());
    }

    #[test]
    fn only_decode_failures_become_invalid_argument() {
        let mut h = HeaderMap::new();
        Status::internal(format!(
            "{DECODE_FAILURE}: invalid string value: data is not UTF-8"
        ))
        .add_header(&mut h)
        .ok();
        assert_eq!(rewrite(&mut h), Some(Code::InvalidArgument));
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
        assert_eq!(rewrite(&mut h), None);
        assert_eq!(
            Status::from_header_map(&h).map(|s| s.code()),
            Some(Code::Internal)
        );
    }
}
