//! The router's Prometheus metrics, one registry per router.
//!
//! `lynx_router_pending_requests` is the signal that wakes a fleet at zero: the operator's KEDA
//! trigger adds it to the workers' queue length.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::policy::Reason;

/// Every metric of the router.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests held because no worker is ready.
    pub pending_requests: IntGauge,
    /// Requests being forwarded (held ones not included).
    pub in_flight_requests: IntGauge,
    /// Workers whose last scrape found them ready.
    pub ready_workers: IntGauge,
    /// Picks by reason (`round_robin`, `least_load`, `affinity`, `affinity_overloaded`): the
    /// `affinity` count is the affinity hits.
    pub decisions: IntCounterVec,
    /// Requests sent again to another worker because the first one never started them.
    pub retries: IntCounter,
    /// Answers by gRPC code (OpenAI-API answers by the code of their HTTP status).
    pub requests: IntCounterVec,
    /// Time requests were held waiting for a ready worker.
    pub hold_seconds: Histogram,
    /// Age of the scraped load at each pick.
    pub load_age: Histogram,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
                let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let retries = IntCounter::new(
            "lynx_router_retries_total",
            "Requests sent again to another worker because the first one never started them.",
        )?;
        registry.register(Box::new(retries.clone()))?;
        let decisions = counter_vec(
            "lynx_router_decisions_total",
            "Worker picks by reason (affinity = image-affinity hits).",
            "reason",
        )?;
        for reason in Reason::ALL {
            decisions.with_label_values(&[reason.as_str()]);
        }
        Ok(Self {
            pending_requests: gauge(
                "lynx_router_pending_requests",
                "Requests held because no worker is ready.",
            )?,
            in_flight_requests: gauge(
                "lynx_router_in_flight_requests",
                "Requests being forwarded to a worker.",
            )?,
            ready_workers: gauge(
                "lynx_router_ready_workers",
                "Workers whose last scrape found them ready.",
            )?,
            decisions,
            retries,
            requests: counter_vec(
                "lynx_router_requests_total",
                "Answered requests by gRPC code.",
                "code",
            )?,
            hold_seconds: histogram(
                "lynx_router_hold_seconds",
                "Time requests were held waiting for a ready worker.",
                vec![
                    0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                ],
            )?,
            load_age: histogram(
                "lynx_router_load_age_seconds",
                "Age of the scraped worker load at each pick.",
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )?,
            registry,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
