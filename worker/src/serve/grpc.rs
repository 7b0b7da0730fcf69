//! The `lynx.v1.Lynx` gRPC service: the front door of a request, then its events relayed as one
//! response or as a stream.
//!
//! The front door, cheapest first, so that a request that will be refused costs microseconds:
//! authentication, draining or a full queue from the headers alone, and the message size (in
//! front of this service: [`super::door`], [`super::decode_errors`]); then here
//! draining again, the cheap checks ([`check`]: counts and byte lengths), a place in the queue
//! ([`EngineHandle::reserve`]: RESOURCE_EXHAUSTED at once when full), and only then the bounded,
//! budgeted preparation ([`Preparer`]: decoding, tokenizing).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lynx_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::lifecycle::Lifecycle;
use super::limits::{check, Limits};
use super::prepare::{Delivery, Incoming, Preparer};
use super::status::{status_of, RequestGuard};
use crate::backend::ServedModel;
use crate::metrics::Metrics;
use crate::runner::{EngineHandle, Event, Finish, Finished, RequestError};

/// The worker answers this long before the client's `grpc-timeout` runs out, so that the client
/// gets DEADLINE_EXCEEDED from the worker rather than a transport-level cancellation.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The served model (weights are also owned by the model thread).
    pub model: Arc<ServedModel>,
    /// Input limits.
    pub limits: Limits,
    /// The model thread.
    pub engine: EngineHandle,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness and drain state.
    pub lifecycle: Arc<Lifecycle>,
    /// Decoding and tokenizing, bounded.
    pub preparer: Preparer,
}

impl Shared {
    /// Why a new request cannot be taken now, if it cannot: the worker is draining
    /// (UNAVAILABLE) or the queue is full (RESOURCE_EXHAUSTED).
    fn refusal(&self) -> Option<RequestError> {
        if self.lifecycle.is_draining() {
            Some(DRAINING)
        } else if self.engine.is_full() {
            Some(RequestError::QueueFull {
                max_queue: self.engine.max_queue(),
            })
        } else {
            None
        }
    }

    /// What the door decides from a generation request's headers (both APIs): refused while
    /// draining, with the queue full or with `max_incoming_requests` requests already being
    /// received or prepared; else the request's incoming place.
    pub fn admit(&self) -> Result<Incoming, RequestError> {
        match self.refusal() {
            Some(error) => Err(error),
            None => self.preparer.admit(),
        }
    }

    /// Takes a request through the front door to the model thread (both APIs): draining, the
    /// cheap checks, a place in the queue, the preparation; returns its event receiver.
    /// `incoming`, the request's place from the door ([`super::door`]), is held until the
    /// request is queued or refused.
    pub async fn submit(
        &self,
        req: v1::GenerateRequest,
        incoming: Option<Incoming>,
        stream: bool,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<mpsc::Receiver<Event>, Status> {
        let _incoming = incoming;
        let shared = self;
        if shared.lifecycle.is_draining() {
            return Err(status_of(DRAINING));
        }
        let checked = check(&req, &shared.model.config, &shared.limits).map_err(status_of)?;
        let slot = shared.engine.reserve().map_err(status_of)?;
        // One delta per token plus the final event: sends from the model thread never block.
        let (tx, rx) = mpsc::channel(checked.params.max_new_tokens + 2);
        let delivery = Delivery {
            stream,
            received,
            deadline,
            events: tx,
        };
        let job = shared
            .preparer
            .prepare(req, checked, &shared.model, &shared.limits, delivery)
            .await
            .map_err(status_of)?;
        slot.submit(job).map_err(status_of)?;
        Ok(rx)
    }
}

/// The refusal of a request that arrives while the worker drains.
const DRAINING: RequestError = RequestError::Unavailable("the worker is draining");

/// The `lynx.v1.Lynx` service.
#[derive(Debug, Clone)]
pub struct LynxService {
    shared: Arc<Shared>,
}

impl LynxService {
    /// A service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn generate_unary(
        &self,
        req: v1::GenerateRequest,
        incoming: Option<Incoming>,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<Response<v1::GenerateResponse>, Status> {
        let client_request_id = req.client_request_id.clone();
        let mut rx = self
            .shared
            .submit(req, incoming, false, received, deadline)
            .await?;
        loop {
            match rx.recv().await {
                Some(Event::Done(result)) => {
                    let finished = result.map_err(status_of)?;
                    return Ok(Response::new(response(finished, client_request_id)));
                }
                Some(Event::Delta { .. }) => {}
                None => return Err(Status::internal("the model thread dropped the request")),
            }
        }
    }
}

/// Runs `work` until the request's deadline (DEADLINE_EXCEEDED) or until the drain timeout cuts
/// it off (UNAVAILABLE saying so), whichever comes first.
async fn bounded<T>(
    work: impl Future<Output = Result<T, Status>>,
    deadline: Option<Instant>,
    lifecycle: &Lifecycle,
) -> Result<T, Status> {
    let cut_off = lifecycle.cut_off_signal();
    let timed = async {
        match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), work)
                .await
                .unwrap_or_else(|_| {
                    Err(status_of(RequestError::DeadlineExceeded(
                        "before the answer was ready",
                    )))
                }),
            None => work.await,
        }
    };
    tokio::select! {
        result = timed => result,
        status = cut_off => Err(status),
    }
}

/// The worker's deadline for a request that arrived at `received`: [`DEADLINE_MARGIN`] before
/// the client's `grpc-timeout` runs out.
fn deadline_of(md: &MetadataMap, received: Instant) -> Option<Instant> {
    grpc_timeout(md).map(|t| received + t.saturating_sub(DEADLINE_MARGIN))
}

/// The `grpc-timeout` header of a request (`<digits><unit>`, unit one of H M S m u n).
pub fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let unit = v.chars().last()?;
    let n: u64 = v[..v.len() - unit.len_utf8()].parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n.saturating_mul(3600)),
        'M' => Duration::from_secs(n.saturating_mul(60)),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn response(f: Finished, client_request_id: String) -> v1::GenerateResponse {
    let u32_sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let finish_reason = match f.finish {
        Finish::Eos => v1::FinishReason::Eos,
        Finish::Length => v1::FinishReason::Length,
        Finish::Stop => v1::FinishReason::Stop,
    };
    v1::GenerateResponse {
        text: f.text,
        token_ids: f.token_ids,
        finish_reason: finish_reason as i32,
        usage: Some(v1::Usage {
            prompt_tokens: u32_sat(f.usage.prompt_tokens),
            vision_tokens: u32_sat(f.usage.vision_tokens),
            completion_tokens: u32_sat(f.usage.completion_tokens),
        }),
        timings: Some(v1::Timings {
            queue_ms: f.timings.queue_ms,
            vision_ms: f.timings.vision_ms,
            prefill_ms: f.timings.prefill_ms,
            decode_ms: f.timings.decode_ms,
        }),
        client_request_id,
    }
}

/// A streaming request's events as gRPC messages; ends after the final message or the error
/// (or the drain timeout's cut-off).
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    guard: RequestGuard,
    client_request_id: String,
    cut_off: Pin<Box<dyn Future<Output = Status> + Send>>,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("client_request_id", &self.client_request_id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = Result<v1::GenerateStreamResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use v1::generate_stream_response::Event as Out;
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(status) = self.cut_off.as_mut().poll(cx) {
            self.done = true;
            self.guard.record(status.code());
            return Poll::Ready(Some(Err(status)));
        }
        let item = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let out = match item {
            Some(Event::Delta { token_ids, text }) => {
                Ok(Out::Delta(v1::TokenDelta { token_ids, text }))
            }
            Some(Event::Done(Ok(f))) => {
                let id = std::mem::take(&mut self.client_request_id);
                Ok(Out::Final(response(f, id)))
            }
            Some(Event::Done(Err(e))) => Err(status_of(e)),
            None => Err(Status::internal("the model thread dropped the request")),
        };
        let last = !matches!(out, Ok(Out::Delta(_)));
        if last {
            self.done = true;
            let code = out.as_ref().map_or_else(Status::code, |_| Code::Ok);
            self.guard.record(code);
        }
        Poll::Ready(Some(
            out.map(|event| v1::GenerateStreamResponse { event: Some(event) }),
        ))
    }
}

#[tonic::async_trait]
impl v1::lynx_server::Lynx for LynxService {
    async fn generate(
        &self,
        mut request: Request<v1::GenerateRequest>,
    ) -> Result<Response<v1::GenerateResponse>, Status> {
        let received = Instant::now();
        let lifecycle = &self.shared.lifecycle;
        let mut guard =
            RequestGuard::new(self.shared.metrics.clone(), lifecycle.in_flight(), received);
        let deadline = deadline_of(request.metadata(), received);
        guard.set_deadline(deadline);
        let incoming = request.extensions_mut().remove::<Incoming>();
        let work = self.generate_unary(request.into_inner(), incoming, received, deadline);
        let result = bounded(work, deadline, lifecycle).await;
        guard.record(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        result
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        mut request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let received = Instant::now();
        let lifecycle = &self.shared.lifecycle;
        let mut guard =
            RequestGuard::new(self.shared.metrics.clone(), lifecycle.in_flight(), received);
        let deadline = deadline_of(request.metadata(), received);
        guard.set_deadline(deadline);
        let incoming = request.extensions_mut().remove::<Incoming>();
        let req = request.into_inner();
        let client_request_id = req.client_request_id.clone();
        let work = self.shared.submit(req, incoming, true, received, deadline);
        match bounded(work, deadline, lifecycle).await {
            Ok(rx) => Ok(Response::new(EventStream {
                rx,
                guard,
                client_request_id,
                cut_off: Box::pin(lifecycle.cut_off_signal()),
                done: false,
            })),
            Err(status) => {
                guard.record(status.code());
                Err(status)
            }
        }
    }

    async fn get_model_info(
        &self,
        _request: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let c = &self.shared.model.config;
        let u32_sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let g = &c.generation;
        Ok(Response::new(v1::ModelInfo {
            model_name: c.model_name.clone(),
            image_resolution: c.vision.image_res,
            frames_per_video: u32_sat(c.num_frames),
            vision_tokens: u32_sat(c.bridge.num_latents),
            vocab_size: u32_sat(c.llm.vocab_size),
            llm_layers: u32_sat(c.llm.layers),
            llm_hidden: u32_sat(c.llm.hidden),
            limits: Some(self.shared.limits.to_proto()),
            decoding_defaults: Some(v1::DecodingDefaults {
                max_new_tokens: u32_sat(g.max_new_tokens.min(self.shared.limits.max_new_tokens)),
                min_length: u32_sat(g.min_length),
                num_beams: u32_sat(g.num_beams),
                length_penalty: g.length_penalty as f32,
                temperature: g.temperature as f32,
                top_k: u32_sat(g.top_k),
                top_p: g.top_p as f32,
                no_repeat_ngram_size: u32_sat(g.no_repeat_ngram_size),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        let mut md = MetadataMap::new();
        let cases = [
            ("250m", Some(Duration::from_millis(250))),
            ("3S", Some(Duration::from_secs(3))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("12x", None),
            ("m", None),
        ];
        for (text, want) in cases {
            md.insert("grpc-timeout", text.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&md), want, "{text}");
        }
    }
}
