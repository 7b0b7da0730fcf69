//! The OpenAI-compatible API on the HTTP listener: `GET /v1/models` and
//! `POST /v1/chat/completions` (whole answers, or server-sent events with `stream: true`).
//!
//! One engine behind both APIs: a chat request is converted ([`convert`]) into the worker's own
//! request and taken through the same door ([`Shared::admit`]), checks,
//! queue, preparation and model thread as a gRPC request ([`Shared::submit`]); the same bearer
//! tokens; every request counted in `lynx_requests_total` with the gRPC code of its answer (and
//! in the in-flight count the drain waits for) and in `lynx_openai_requests_total{status}`.
//! Errors are OpenAI's JSON object with the HTTP status of the matching gRPC status.

pub mod convert;
pub mod error;
pub mod fetch;
pub mod wire;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::auth::Tokens;
use super::grpc::{Shared, DEADLINE_MARGIN};
use super::lifecycle::Lifecycle;
use super::status::{status_of, RequestGuard};
use crate::metrics::Metrics;
use crate::runner::{Event, Finish, Finished};
use error::ApiError;
use wire::{
    AssistantMessage, ChatRequest, ChatResponse, Choice, Chunk, ChunkChoice, Delta, ModelCard,
    ModelList, Usage,
};

/// What the OpenAI routes share; the model's part is set once it is loaded and released at
/// shutdown (it holds the model thread's handle).
#[derive(Clone)]
pub struct OpenAiState {
    served: Arc<RwLock<Option<Arc<Shared>>>>,
    tokens: Tokens,
    metrics: Metrics,
    lifecycle: Arc<Lifecycle>,
    fetcher: fetch::ImageFetcher,
    started: u64,
    next_id: Arc<AtomicU64>,
}

impl OpenAiState {
    /// The state of a worker whose model is not loaded yet (the routes answer 503 until
    /// [`OpenAiState::serve`]); images by URL come through `fetcher`.
    pub fn new(
        tokens: Tokens,
        metrics: Metrics,
        lifecycle: Arc<Lifecycle>,
        fetcher: fetch::ImageFetcher,
    ) -> Self {
        Self {
            served: Arc::default(),
            tokens,
            metrics,
            lifecycle,
            fetcher,
            started: unix_now(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Serves `shared`'s model from now on.
    pub fn serve(&self, shared: Arc<Shared>) {
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = Some(shared);
    }

    /// Lets go of the model (at shutdown, so that the model thread can end); requests are then
    /// answered 503.
    pub fn release(&self) {
        self.served
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn shared(&self) -> Result<Arc<Shared>, ApiError> {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ApiError::from_status(&Status::unavailable("the model is not loaded")))
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.tokens
            .check(headers)
            .map_err(|status| ApiError::from_status(&status))
    }
}

/// The routes (with their state).
pub fn routes(state: OpenAiState) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_response<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => ApiError::from_status(&Status::internal(e.to_string())).into_response(),
    }
}

async fn models(State(s): State<OpenAiState>, headers: HeaderMap) -> Response {
    let listed = s.authorize(&headers).and_then(|()| s.shared());
    match listed {
        Ok(shared) => json_response(&ModelList {
            object: "list",
            data: vec![ModelCard {
                id: shared.model.config.model_name.clone(),
                object: "model",
                created: s.started,
                owned_by: "lynx-serve",
            }],
        }),
        Err(e) => e.into_response(),
    }
}

/// A request past the door, submitted to the model thread.
struct Submitted {
    events: mpsc::Receiver<Event>,
    stream: bool,
    include_usage: bool,
    id: String,
    model: String,
}

async fn chat_completions(
    State(s): State<OpenAiState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    let mut guard = RequestGuard::new(s.metrics.clone(), s.lifecycle.in_flight(), received);
    let deadline = deadline_of(&headers, received);
    guard.set_deadline(deadline);
    match submit(&s, &headers, body, received, deadline).await {
        Ok(submitted) if submitted.stream => {
            count(&s.metrics, StatusCode::OK);
            stream_answer(submitted, guard)
        }
        Ok(submitted) => match whole_answer(submitted).await {
            Ok(answer) => {
                guard.record(Code::Ok);
                count(&s.metrics, StatusCode::OK);
                json_response(&answer)
            }
            Err(e) => refuse(&s.metrics, &mut guard, e),
        },
        Err(e) => refuse(&s.metrics, &mut guard, e),
    }
}

fn count(metrics: &Metrics, status: StatusCode) {
    metrics
        .openai_requests
        .with_label_values(&[status.as_str()])
        .inc();
}

fn refuse(metrics: &Metrics, guard: &mut RequestGuard, e: ApiError) -> Response {
    guard.record(e.grpc_code());
    count(metrics, e.status);
    e.into_response()
}

/// Authentication, the door, the body (bounded), the conversion, then the shared front door.
async fn submit(
    s: &OpenAiState,
    headers: &HeaderMap,
    body: Body,
    received: Instant,
    deadline: Option<Instant>,
) -> Result<Submitted, ApiError> {
    s.authorize(headers)?;
    let shared = s.shared()?;
    let shared = &shared;
    let incoming = shared
        .admit()
        .map_err(|e| ApiError::from_status(&status_of(e)))?;
    // Base64 makes the images a third larger than on gRPC.
    let limit = shared.limits.max_request_bytes.saturating_mul(4) / 3;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is more than {limit} bytes (max_request_bytes = {}, base64 \
                 counted as 4/3)",
                shared.limits.max_request_bytes
            ),
            "invalid_request_error",
            None,
            Some("request_too_large"),
        )
    })?;
    let chat: ChatRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(format!("the request is not a chat completion: {e}"), None)
    })?;
    let model = shared.model.config.model_name.clone();
    let mut converted = convert::convert(chat, &model, &shared.limits)?;
    for (index, url, part) in std::mem::take(&mut converted.to_fetch) {
        let data = s
            .fetcher
            .fetch(&url, part, shared.limits.max_image_bytes)
            .await?;
        converted.request.images[index].data = data;
    }
    // The OpenAI SDKs' read timeout bounds a whole answer, not a stream (it is per read there).
    let deadline = deadline.or_else(|| {
        (!converted.stream)
            .then(|| seconds_header(headers, SDK_READ_TIMEOUT))
            .flatten()
            .map(|t| received + t.saturating_sub(DEADLINE_MARGIN))
    });
    let events = shared
        .submit(
            converted.request,
            Some(incoming),
            converted.stream,
            received,
            deadline,
        )
        .await
        .map_err(|status| ApiError::from_status(&status))?;
    Ok(Submitted {
        events,
        stream: converted.stream,
        include_usage: converted.include_usage,
        id: format!("chatcmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed)),
        model,
    })
}

/// The request's own time budget in seconds (a decimal number).
pub const REQUEST_TIMEOUT: &str = "x-request-timeout";
/// The read timeout the official OpenAI SDKs send (seconds): a whole answer's deadline.
pub const SDK_READ_TIMEOUT: &str = "x-stainless-read-timeout";

/// A header holding seconds as a decimal number.
fn seconds_header(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let seconds: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9)))
}

/// The worker's deadline from [`REQUEST_TIMEOUT`]: [`DEADLINE_MARGIN`] before it runs out.
fn deadline_of(headers: &HeaderMap, received: Instant) -> Option<Instant> {
    seconds_header(headers, REQUEST_TIMEOUT).map(|t| received + t.saturating_sub(DEADLINE_MARGIN))
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn usage(f: &Finished) -> Usage {
    let prompt = (f.usage.prompt_tokens + f.usage.vision_tokens) as u64;
    let completion = f.usage.completion_tokens as u64;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

async fn whole_answer(mut submitted: Submitted) -> Result<ChatResponse, ApiError> {
    loop {
        match submitted.events.recv().await {
            Some(Event::Done(Ok(f))) => {
                return Ok(ChatResponse {
                    id: submitted.id,
                    object: "chat.completion",
                    created: unix_now(),
                    model: submitted.model,
                    usage: usage(&f),
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: f.text,
                        },
                        finish_reason: finish_reason(f.finish),
                    }],
                })
            }
            Some(Event::Done(Err(e))) => return Err(ApiError::from_status(&status_of(e))),
            Some(Event::Delta { .. }) => {}
            None => {
                return Err(ApiError::from_status(&Status::internal(
                    "the model thread dropped the request",
                )))
            }
        }
    }
}

/// One server-sent event.
fn sse<T: serde::Serialize>(value: &T) -> Bytes {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("data: {json}\n\n"))
}

/// The answer as server-sent events: a first chunk with the role, one chunk per text delta, a
/// last chunk with the finish reason, the usage chunk when asked for, then `data: [DONE]`. An
/// error after the first chunk is sent as an error event. A client that goes away cancels the
/// request (its place and KV blocks are freed at the next step).
fn stream_answer(submitted: Submitted, mut guard: RequestGuard) -> Response {
    let (out, body) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let Submitted {
        mut events,
        include_usage,
        id,
        model,
        ..
    } = submitted;
    tokio::spawn(async move {
        let created = unix_now();
        let chunk = |delta: Delta, finish: Option<&'static str>| Chunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created,
            model: model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
            }],
            usage: None,
        };
        let first = chunk(
            Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            None,
        );
        if out.send(Ok(sse(&first))).await.is_err() {
            return;
        }
        while let Some(event) = events.recv().await {
            let sent = match event {
                Event::Delta { text, .. } if text.is_empty() => true,
                Event::Delta { text, .. } => {
                    let delta = Delta {
                        role: None,
                        content: Some(text),
                    };
                    out.send(Ok(sse(&chunk(delta, None)))).await.is_ok()
                }
                Event::Done(Ok(f)) => {
                    guard.record(Code::Ok);
                    let mut last =
                        vec![sse(&chunk(Delta::default(), Some(finish_reason(f.finish))))];
                    if include_usage {
                        last.push(sse(&Chunk {
                            id: id.clone(),
                            object: "chat.completion.chunk",
                            created,
                            model: model.clone(),
                            choices: Vec::new(),
                            usage: Some(usage(&f)),
                        }));
                    }
                    last.push(Bytes::from_static(b"data: [DONE]\n\n"));
                    for bytes in last {
                        if out.send(Ok(bytes)).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                Event::Done(Err(e)) => {
                    let error = ApiError::from_status(&status_of(e));
                    guard.record(error.grpc_code());
                    let event = format!("data: {}\n\n", error.body());
                    out.send(Ok(Bytes::from(event))).await.ok();
                    return;
                }
            };
            if !sent {
                // The client left: dropping the events cancels the request.
                return;
            }
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body)),
    )
        .into_response()
}
