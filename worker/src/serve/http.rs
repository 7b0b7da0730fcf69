//! The HTTP listener: `/metrics` (Prometheus text), `/healthz` (liveness; also `/health`, the
//! path OpenAI-compatible tools probe), `/readyz` (ready only after the model is loaded and the
//! warm-up request ran, and not while draining). Never authenticated.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::lifecycle::Lifecycle;
use crate::metrics::Metrics;

#[derive(Clone)]
struct HttpState {
    lifecycle: Arc<Lifecycle>,
    metrics: Metrics,
}

/// The HTTP routes.
pub fn router(lifecycle: Arc<Lifecycle>, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { lifecycle, metrics })
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.lifecycle.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if s.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading\n")
    }
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    match s.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}
