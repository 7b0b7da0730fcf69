//! Figures of one simulation: latency percentiles, goodput, cache hit rate, GPU time.

use super::{Costs, Outcome, Request, WorkerConfig, Workload};
use crate::policy::Reason;

/// The `p`-th percentile (0..=100, nearest rank) of `values`; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Requests per second one worker sustains at a full batch when every image misses the
/// encoder cache: the inverse of a request's admission (vision + prefill, the fixed part
/// counted per request) plus its share of the decode steps at `max_batch`. The loads of the
/// fleet tables are fractions of `workers x` this.
pub fn capacity_per_worker(costs: &Costs, worker: &WorkerConfig, w: &Workload) -> f64 {
    let mean = |(lo, hi): (u32, u32)| (f64::from(lo) + f64::from(hi)) / 2.0;
    let images = w.mean_images();
    let admission = images * costs.vision_s
        + costs.prefill_fixed_s
        + costs.prefill_per_token_s
            * (mean(w.prompt_tokens) + images * f64::from(costs.vision_tokens));
    let batch = worker.max_batch.max(1);
    let decode = (mean(w.output_tokens) - 1.0).max(0.0) * costs.step_s(batch) / batch as f64;
    1.0 / (admission + decode)
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Requests offered.
    pub requests: usize,
    /// Requests answered.
    pub answered: usize,
    /// Requests refused by the router (hold full or timed out, or too large).
    pub refused: usize,
    /// Latency (arrival to last token) percentiles, seconds: p50, p99.
    pub latency_s: (f64, f64),
    /// Time to first token percentiles, seconds: p50, p99.
    pub ttft_s: (f64, f64),
    /// Requests answered within `slo_factor` x their unloaded latency, per second of the
    /// workload.
    pub goodput: f64,
    /// Encoder-cache hits over lookups.
    pub hit_rate: f64,
    /// Worker busy seconds (summed).
    pub busy_s: f64,
    /// Worker alive seconds (summed).
    pub alive_s: f64,
    /// How long the first request waited for a worker (held at the router), seconds.
    pub first_wait_s: Option<f64>,
    /// Decisions per [`Reason`], in the order of `Reason::ALL`.
    pub reasons: [usize; 4],
}

impl Summary {
    /// Summarises `outcome` of `requests` run on workers costing `costs`; a request is good
    /// when answered within `slo_factor` times its unloaded latency; goodput is per
    /// `window_s`.
    pub fn new(
        requests: &[Request],
        outcome: &Outcome,
        costs: &Costs,
        slo_factor: f64,
        window_s: f64,
    ) -> Self {
        let mut latency = Vec::new();
        let mut ttft = Vec::new();
        let mut good = 0usize;
        let mut reasons = [0usize; 4];
        for (q, o) in requests.iter().zip(&outcome.requests) {
            if let Some(r) = o.reason {
                if let Some(i) = Reason::ALL.iter().position(|x| *x == r) {
                    reasons[i] += 1;
                }
            }
            let Some(finish) = o.finish_s else {
                continue;
            };
            let l = finish - q.arrival_s;
            latency.push(l);
            if let Some(f) = o.first_token_s {
                ttft.push(f - q.arrival_s);
            }
            let slo = slo_factor
                * costs.unloaded_latency_s(q.images.len(), q.prompt_tokens, q.output_tokens);
            if l <= slo {
                good += 1;
            }
        }
        let lookups = outcome.cache_hits + outcome.cache_misses;
        Self {
            requests: requests.len(),
            answered: latency.len(),
            refused: outcome.requests.iter().filter(|o| o.refused).count(),
            latency_s: (percentile(&latency, 50.0), percentile(&latency, 99.0)),
            ttft_s: (percentile(&ttft, 50.0), percentile(&ttft, 99.0)),
            goodput: good as f64 / window_s.max(f64::MIN_POSITIVE),
            hit_rate: if lookups == 0 {
                0.0
            } else {
                outcome.cache_hits as f64 / lookups as f64
            },
            busy_s: outcome.busy_s,
            alive_s: outcome.alive_s,
            first_wait_s: requests
                .first()
                .zip(outcome.requests.first())
                .and_then(|(q, o)| o.dispatched_s.map(|d| d - q.arrival_s)),
            reasons,
        }
    }
}
