//! The HTTP listener: the OpenAI-compatible API forwarded to the workers (`POST
//! /v1/chat/completions`, whole or as server-sent events, and `GET /v1/models`), and the router's
//! own `/metrics`, `/healthz` and `/readyz` (503 while draining).
//!
//! A chat request is routed like a gRPC one: its `data:` image URLs are hashed for affinity, it
//! is held while no worker is ready (never past the deadline its `x-request-timeout` header sets:
//! then 504), and it goes to another worker only when the first refused it before starting (503,
//! 429, or no connection). Its answer counts in `lynx_router_requests_total` by the gRPC code of
//! its HTTP status.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{json, Value};
use tonic::Code;

use crate::auth::Tokens;
use crate::metrics::Metrics;
use crate::policy::{image_key, ImageKey};
use crate::route::Routing;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Where requests go.
    pub routing: Arc<Routing>,
    /// The router's metrics.
    pub metrics: Metrics,
    /// Accepted tokens.
    pub tokens: Tokens,
    /// Set once the router drains.
    pub draining: Arc<AtomicBool>,
    /// Workers tried per request at most.
    pub max_attempts: usize,
    /// The client that forwards to the workers.
    pub client: reqwest::Client,
}

/// The routes.
pub fn router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/health", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<HttpState>) -> StatusCode {
    if s.draining.load(Ordering::Acquire) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// OpenAI's error object.
fn error(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
        StatusCode::BAD_REQUEST => "invalid_request_error",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn http_status(code: Code) -> StatusCode {
    match code {
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The keys of a chat request's `data:` image URLs (other URLs are fetched by the worker and
/// have no key here).
pub fn chat_image_keys(body: &Value) -> Vec<ImageKey> {
    let urls = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter_map(|part| part["image_url"]["url"].as_str());
    urls.filter_map(|url| {
        let (_, data) = url.strip_prefix("data:")?.split_once(";base64,")?;
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()
            .map(|bytes| image_key(&bytes))
    })
    .collect()
}

/// Headers forwarded to the worker as they came.
const FORWARDED: [&str; 4] = [
    "authorization",
    "content-type",
    "x-request-timeout",
    "x-stainless-read-timeout",
];

async fn chat(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = forward(&s, &headers, "/v1/chat/completions", Some(body)).await;
    let code = lynx_proto::code_of_http_status(answer.status().as_u16());
    s.metrics
        .requests
        .with_label_values(&[lynx_proto::code_name(code)])
        .inc();
    answer
}

/// The deadline the `x-request-timeout` header (seconds, as the worker reads it) sets.
fn deadline_of(headers: &HeaderMap, received: Instant) -> Option<Instant> {
    let seconds: f64 = headers
        .get("x-request-timeout")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (seconds.is_finite() && seconds > 0.0)
        .then(|| received + Duration::from_secs_f64(seconds.min(1e9)))
}

async fn models(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    forward(&s, &headers, "/v1/models", None).await
}

async fn forward(s: &HttpState, headers: &HeaderMap, path: &str, body: Option<Bytes>) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !s.tokens.accepts(auth) {
        return error(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <key>` is required",
        );
    }
    let keys = body
        .as_ref()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .map(|v| chat_image_keys(&v))
        .unwrap_or_default();
    let deadline = deadline_of(headers, Instant::now());
    let mut refused: Vec<SocketAddr> = Vec::new();
    let mut last: Option<Response> = None;
    loop {
        let worker = match s.routing.choose(&keys, deadline, &refused).await {
            Ok(Some(w)) => w,
            Ok(None) => {
                return last.unwrap_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "no worker"))
            }
            Err(status) => return error(http_status(status.code()), status.message()),
        };
        let url = format!("http://{}{path}", worker.http);
        let mut req = match &body {
            Some(b) => s.client.post(url).body(b.clone()),
            None => s.client.get(url),
        };
        for name in FORWARDED {
            if let Some(v) = headers.get(name) {
                req = req.header(name, v);
            }
        }
        let retry_left = refused.len() + 1 < s.max_attempts;
        match req.send().await {
            Ok(resp)
                if retry_left
                    && matches!(
                        resp.status().as_u16(),
                        429 | 503 // a full queue or a draining worker: never started
                    ) =>
            {
                s.metrics.retries.inc();
                refused.push(worker.addr);
                last = Some(relay(resp, None));
            }
            Ok(resp) => return relay(resp, Some(worker)),
            Err(e) if retry_left && e.is_connect() => {
                s.metrics.retries.inc();
                refused.push(worker.addr);
                last = Some(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot reach worker {}: {e}", worker.addr),
                ));
            }
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("worker {} failed: {e}", worker.addr),
                )
            }
        }
    }
}

/// The worker's answer, its body streamed as it arrives (`sent` counts as the worker's load
/// until the body ends).
fn relay(resp: reqwest::Response, sent: Option<crate::fleet::Sent>) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let body = tokio_stream::StreamExt::map(resp.bytes_stream(), move |chunk| {
        let _ = &sent;
        chunk
    });
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    if let Some(ct) = content_type.and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok())
    {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeouts_become_deadlines() {
        let now = Instant::now();
        let mut h = HeaderMap::new();
        assert_eq!(deadline_of(&h, now), None);
        h.insert("x-request-timeout", "1.5".parse().expect("value"));
        assert_eq!(
            deadline_of(&h, now),
            Some(now + Duration::from_millis(1500))
        );
        for bad in ["0", "-2", "soon", "NaN"] {
            h.insert("x-request-timeout", bad.parse().expect("value"));
            assert_eq!(deadline_of(&h, now), None, "{bad}");
        }
    }

    #[test]
    fn data_urls_are_keyed_by_their_decoded_bytes() {
        let png = b"\x89PNG fake bytes";
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}},
            {"type": "image_url", "image_url": {"url": "https://images.example/cat.png"}},
        ]}]});
        assert_eq!(chat_image_keys(&body), vec![image_key(png)]);
        assert!(chat_image_keys(&json!({"messages": "no"})).is_empty());
    }
}
