//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (liveness) and
//! `/readyz` (readiness).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Clone)]
pub struct Health {
    /// The metrics `/metrics` renders.
    pub metrics: Metrics,
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Not ready until [`Self::set_ready`].
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the process ready (connected to the API server, discovery done) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// The router of the three endpoints, without a socket (tests drive it directly).
///
/// # Guarantees
/// `/healthz` answers 200 while the process runs; `/readyz` answers 503 until
/// [`Health::set_ready`] and 200 after, on the leader and on standby replicas alike (a standby is
/// ready to take over); `/metrics` answers the Prometheus text format.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        health.metrics.render(),
    )
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::metrics::Outcome;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = router.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readyz_turns_ready_and_healthz_is_always_ok() {
        let health = Health::new(Metrics::new().expect("metrics"));
        let router = router(health.clone());
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&router, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_serves_the_reconcile_counters() {
        let health = Health::new(Metrics::new().expect("metrics"));
        health.metrics.record(Outcome::InvalidSpec, 0.1);
        let (status, body) = get(&router(health), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("lynx_operator_reconciliations_total{outcome=\"invalid_spec\"} 1"));
    }
}
