//! The operator's Prometheus metrics, served on `/metrics`.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Metrics of the reconcile loop and the leader election.
///
/// # Guarantees
/// Label values come from fixed sets of names (outcomes and error kinds), never from user input
/// or `Debug` output, so the series count is bounded.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `lynx_operator_reconciliations_total{outcome}`: reconciles by outcome.
    reconciliations: IntCounterVec,
    /// `lynx_operator_reconcile_duration_seconds{outcome}`: time one reconcile took.
    duration: HistogramVec,
    /// `lynx_operator_leader`: 1 while this replica holds the leader Lease.
    leader: IntGauge,
}

/// How one reconcile ended; the string form is the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every child was applied and the status written.
    Applied,
    /// The spec breaks a rule of the CRD; reported in the status, nothing applied.
    InvalidSpec,
    /// The object is being deleted: the garbage collector removes its children; nothing applied.
    Deleting,
    /// Failed; the label is [`crate::Error::metric_label`].
    Failed(&'static str),
}

impl Outcome {
    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::InvalidSpec => "invalid_spec",
            Self::Deleting => "deleting",
            Self::Failed(kind) => kind,
        }
    }
}

/// Why the metrics could not be registered (duplicate or malformed names, a programming error).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates the metrics in a fresh registry.
    ///
    /// # Errors
    /// Only if a metric definition is malformed.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "lynx_operator_reconciliations_total",
                "LynxDeployment reconciles by outcome",
            ),
            &["outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lynx_operator_reconcile_duration_seconds",
                "Duration of one LynxDeployment reconcile",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["outcome"],
        )?;
        let leader = IntGauge::new(
            "lynx_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciliations,
            duration,
            leader,
        })
    }

    /// Counts one reconcile that took `seconds`.
    pub fn record(&self, outcome: Outcome, seconds: f64) {
        let label = [outcome.as_str()];
        self.reconciliations.with_label_values(&label).inc();
        self.duration.with_label_values(&label).observe(seconds);
    }

    /// Reconciles counted with `outcome` so far.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.reconciliations
            .with_label_values(&[outcome.as_str()])
            .get()
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // The text encoder only fails on a writer error, and a Vec never fails.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_rendered_by_label() {
        let metrics = Metrics::new().expect("metrics");
        metrics.record(Outcome::Applied, 0.02);
        metrics.record(Outcome::Applied, 0.03);
        metrics.record(Outcome::Failed("api_error"), 0.5);
        assert_eq!(metrics.count(Outcome::Applied), 2);
        assert_eq!(metrics.count(Outcome::InvalidSpec), 0);
        let text = metrics.render();
        assert!(text.contains("lynx_operator_reconciliations_total{outcome=\"applied\"} 2"));
        assert!(text.contains("lynx_operator_reconciliations_total{outcome=\"api_error\"} 1"));
        assert!(
            text.contains("lynx_operator_reconcile_duration_seconds_count{outcome=\"applied\"} 2")
        );
    }
}
