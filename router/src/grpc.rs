//! `lynx.v1.Lynx` in front of the workers.
//!
//! Every generation goes to its worker as `GenerateStream` (a unary `Generate` is answered with
//! the stream's final message), because a stream's response headers say that the worker has
//! queued the request: a refusal before them (draining, full queue, connection failure) means the
//! worker never started it, and only then is it sent to another worker. After them, a failure
//! reaches the client with the worker's address, and the request is not sent again.
//!
//! The client's deadline (`grpc-timeout`) and bearer token travel with the request; a client that
//! goes away cancels the worker's request (dropping the forwarded call resets its stream).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lynx_proto::v1::{self, generate_stream_response::Event};
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::fleet::Sent;
use crate::metrics::Metrics;
use crate::policy::{image_key, ImageKey};
use crate::route::Routing;

/// The service.
#[derive(Debug, Clone)]
pub struct RouterService {
    routing: Arc<Routing>,
    metrics: Metrics,
    max_attempts: usize,
}

impl RouterService {
    /// Forwards over `routing`, trying at most `max_attempts` workers per request.
    pub fn new(routing: Arc<Routing>, metrics: Metrics, max_attempts: usize) -> Self {
        Self {
            routing,
            metrics,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Sends `req` to a worker until one starts it.
    async fn start(
        &self,
        req: &v1::GenerateRequest,
        meta: &MetadataMap,
    ) -> Result<(Sent, Streaming<v1::GenerateStreamResponse>), Status> {
        let deadline = deadline_of(meta);
        let keys = keys_of(req);
        let mut refused: Vec<SocketAddr> = Vec::new();
        let mut last: Option<Status> = None;
        loop {
            let chosen = self.routing.choose(&keys, deadline, &refused).await?;
            let Some(worker) = chosen else {
                return Err(last.unwrap_or_else(|| Status::unavailable("no worker")));
            };
            let forwarded = forward(req.clone(), meta, deadline)?;
            match worker.client.clone().generate_stream(forwarded).await {
                Ok(stream) => return Ok((worker, stream.into_inner())),
                Err(status) if never_started(&status) && refused.len() + 1 < self.max_attempts => {
                    tracing::debug!(worker = %worker.addr, %status, "not started; trying another worker");
                    self.metrics.retries.inc();
                    refused.push(worker.addr);
                    last = Some(status);
                }
                Err(status) => return Err(status),
            }
        }
    }

    fn count(&self, code: Code) {
        self.metrics
            .requests
            .with_label_values(&[lynx_proto::code_name(code)])
            .inc();
    }
}

/// Whether a worker's refusal came before it started the request.
fn never_started(status: &Status) -> bool {
    match status.code() {
        // Draining, or the connection could not be made.
        Code::Unavailable => true,
        // The connection closed before the request was sent (a worker's GOAWAY for its
        // connection age crossed it): this router's own call was cancelled, not the client's.
        Code::Cancelled => true,
        // A full queue or all incoming places taken; not an oversize message, which every
        // worker refuses alike.
        Code::ResourceExhausted => !status.message().contains("max_request_bytes"),
        // The worker's GOAWAY refused the call unprocessed (tonic says INTERNAL).
        _ => lynx_proto::retry::never_reached_the_server(status),
    }
}

/// A worker's failure after it started the request, for the client.
fn after_start(worker: SocketAddr, messages: usize, status: &Status) -> Status {
    let code = match status.code() {
        // A reset stream or a lost connection (tonic calls those Unknown or Internal).
        Code::Unknown | Code::Internal => Code::Unavailable,
        code => code,
    };
    Status::new(
        code,
        format!(
            "worker {worker} failed after it had started the request ({messages} messages \
             sent), so it was not retried: {}",
            status.message()
        ),
    )
}

/// The keys of a request's images and video frames.
pub fn keys_of(req: &v1::GenerateRequest) -> Vec<ImageKey> {
    let images = req.images.iter().map(|i| image_key(&i.data));
    let frames = req
        .video
        .iter()
        .flat_map(|v| v.frames.iter().map(|f| image_key(f)));
    images.chain(frames).collect()
}

/// `msg` with the client's token and the rest of its deadline.
fn forward<T>(msg: T, meta: &MetadataMap, deadline: Option<Instant>) -> Result<Request<T>, Status> {
    let mut r = Request::new(msg);
    if let Some(auth) = meta.get("authorization") {
        r.metadata_mut().insert("authorization", auth.clone());
    }
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Status::deadline_exceeded(
                "the deadline passed before a worker was reached",
            ));
        }
        r.set_timeout(left);
    }
    Ok(r)
}

/// The deadline a `grpc-timeout` header sets (`<digits><H|M|S|m|u|n>`).
pub fn deadline_of(meta: &MetadataMap) -> Option<Instant> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

/// One forwarded request in flight: counted in the in-flight gauge, and by its code at the end
/// (a client that leaves first counts as CANCELLED).
struct InFlight {
    service: RouterService,
    code: Option<Code>,
}

impl InFlight {
    fn new(service: &RouterService) -> Self {
        service.metrics.in_flight_requests.inc();
        Self {
            service: service.clone(),
            code: None,
        }
    }

    fn end(&mut self, code: Code) {
        self.code.get_or_insert(code);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.service.metrics.in_flight_requests.dec();
        self.service.count(self.code.unwrap_or(Code::Cancelled));
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl v1::lynx_server::Lynx for RouterService {
    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<v1::GenerateResponse>, Status> {
        let mut flight = InFlight::new(self);
        let (meta, _, req) = request.into_parts();
        let result = async {
            let (sent, mut stream) = self.start(&req, &meta).await?;
            let worker = sent.addr;
            let mut messages = 0;
            loop {
                match stream.message().await {
                    Ok(Some(v1::GenerateStreamResponse {
                        event: Some(Event::Final(done)),
                    })) => return Ok(Response::new(done)),
                    Ok(Some(_)) => messages += 1,
                    Ok(None) => {
                        return Err(after_start(
                            worker,
                            messages,
                            &Status::unavailable("the stream ended without a final message"),
                        ))
                    }
                    Err(status) => return Err(after_start(worker, messages, &status)),
                }
            }
        }
        .await;
        flight.end(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        result
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut flight = InFlight::new(self);
        let (meta, _, req) = request.into_parts();
        let (sent, stream) = match self.start(&req, &meta).await {
            Ok(started) => started,
            Err(status) => {
                flight.end(status.code());
                return Err(status);
            }
        };
        let mut messages = 0usize;
        let worker = sent.addr;
        // `sent` counts as the worker's load for as long as the stream is relayed.
        let relayed = tokio_stream::StreamExt::map(stream, move |item| match (item, &sent) {
            (Ok(msg), _) => {
                messages += 1;
                if matches!(msg.event, Some(Event::Final(_))) {
                    flight.end(Code::Ok);
                }
                Ok(msg)
            }
            (Err(status), _) => {
                let status = after_start(worker, messages, &status);
                flight.end(status.code());
                Err(status)
            }
        });
        Ok(Response::new(Box::pin(relayed)))
    }

    async fn get_model_info(
        &self,
        request: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let (meta, _, req) = request.into_parts();
        let deadline = deadline_of(&meta);
        let worker: Sent = self
            .routing
            .choose(&[], deadline, &[])
            .await?
            .ok_or_else(|| Status::unavailable("no worker"))?;
        worker
            .client
            .clone()
            .get_model_info(forward(req, &meta, deadline)?)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_become_deadlines() {
        let mut meta = MetadataMap::new();
        meta.insert("grpc-timeout", "1500m".parse().expect("value"));
        let d = deadline_of(&meta).expect("deadline");
        let left = d.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(1400) && left <= Duration::from_millis(1500));
        meta.insert("grpc-timeout", "2x".parse().expect("value"));
        assert_eq!(deadline_of(&meta), None);
    }

    #[test]
    fn only_refusals_before_the_start_are_retried() {
        assert!(never_started(&Status::unavailable(
            "the worker is draining"
        )));
        assert!(never_started(&Status::resource_exhausted(
            "queue full: 256 requests waiting"
        )));
        assert!(!never_started(&Status::resource_exhausted(
            "message over max_request_bytes"
        )));
        assert!(!never_started(&Status::invalid_argument("bad image")));
        assert!(never_started(&Status::cancelled("connection closed")));
        let s = after_start(
            "10.0.0.7:50051".parse().expect("addr"),
            3,
            &Status::unknown("h2 reset"),
        );
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().contains("worker 10.0.0.7:50051") && s.message().contains("not retried")
        );
    }
}
