//! A deterministic discrete-event simulation of a fleet of Lynx workers behind the router,
//! driven by the router's own [`Picker`](crate::policy::Picker). `cargo bench -p lynx-router
//! --bench fleet` prints its tables; `docs/perf/fleet.md` records them and the cost profiles.
//!
//! # Model
//! - **Worker** (like `engine/src/runner/batch_loop.rs` with `scheduler::SchedulerState`): a FIFO
//!   queue, a running batch of at most `max_batch` requests, a KV budget in tokens (prompt +
//!   vision + output tokens reserved at admission, never preempted) and an entry-bounded LRU
//!   encoder cache keyed by [`ImageKey`] (every Lynx image encodes to the same 32 tokens, so
//!   the worker's byte bound is an entry bound). One loop iteration, when there is work:
//!   admit what fits from the queue; encode the admitted requests' images that miss the cache
//!   (`vision_s` each; an image shared by two admitted requests is encoded once); prefill them
//!   together (`prefill_fixed_s + prefill_per_token_s` x their prompt and vision tokens); their
//!   first token is out then; then one decode step over the whole batch
//!   (`step_fixed_s + step_per_seq_s` x sequences) gives every running request one more token.
//!   A request of `n` output tokens leaves after its first token and `n - 1` steps. Not
//!   modelled: the dynamic-batching delay (5 ms when idle), the queue bound, beams, videos,
//!   request preparation (image decoding runs on other threads).
//! - **Router**: picks among ready workers with the load it knows: each worker's gauges as of
//!   the last scrape (every `scrape_interval_s`; 0 = always current) plus its own `unreported`
//!   count of requests sent since that scrape and not finished, exactly what the serving code
//!   has. With no ready worker it holds requests (at most `hold_max`, each at most
//!   `hold_timeout_s`; beyond either the request is refused).
//! - **Autoscaler** (optional, KEDA-like): every `poll_s` reads the router's pending gauge plus
//!   every worker's queue length and running sequences, wants `ceil(metric / target)` workers
//!   (within `min..=max`), starts workers at once (ready after `start_delay_s`: pod start and
//!   model load; GPU time counts from the start), and stops idle ones only after the wanted
//!   count stayed lower for `cooldown_s`.
//! - **Workload**: Poisson arrivals in phases of constant rate, 0-2 images per request, a
//!   fraction of them drawn from a pool of repeated images (Zipf or uniform), the rest unique;
//!   prompt and output lengths uniform in ranges; everything from one seeded SplitMix64 generator.

mod engine;
mod report;
#[cfg(test)]
mod tests;
mod workload;

pub use engine::{simulate, Outcome, RequestOutcome};
pub use report::{capacity_per_worker, percentile, Summary};
pub use workload::{generate, Request, Workload};

#[cfg(doc)]
use crate::policy::ImageKey;
use crate::policy::PickerConfig;

/// Time costs of one worker's model, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Vision encoding (ViT + resampler) of one image that misses the encoder cache.
    pub vision_s: f64,
    /// Vision (prefix) tokens per image.
    pub vision_tokens: u32,
    /// Prefill: fixed part per admission.
    pub prefill_fixed_s: f64,
    /// Prefill: per prompt or vision token.
    pub prefill_per_token_s: f64,
    /// Decode step: fixed part.
    pub step_fixed_s: f64,
    /// Decode step: per running sequence.
    pub step_per_seq_s: f64,
}

impl Costs {
    /// One decode step over `batch` sequences.
    pub fn step_s(&self, batch: usize) -> f64 {
        self.step_fixed_s + self.step_per_seq_s * batch as f64
    }

    /// A request's latency alone on an idle worker with a cold encoder cache.
    pub fn unloaded_latency_s(&self, images: usize, prompt_tokens: u32, output_tokens: u32) -> f64 {
        self.unloaded_ttft_s(images, prompt_tokens)
            + f64::from(output_tokens.saturating_sub(1)) * self.step_s(1)
    }

    /// A request's time to first token alone on an idle worker with a cold encoder cache.
    pub fn unloaded_ttft_s(&self, images: usize, prompt_tokens: u32) -> f64 {
        let tokens = f64::from(prompt_tokens) + images as f64 * f64::from(self.vision_tokens);
        images as f64 * self.vision_s + self.prefill_fixed_s + self.prefill_per_token_s * tokens
    }
}

/// One worker's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerConfig {
    /// Requests in the running batch at most (`--max-batch-size`).
    pub max_batch: usize,
    /// KV-cache positions (prompt + vision + output tokens of the running requests).
    pub kv_tokens: usize,
    /// Vision encodings the encoder cache holds.
    pub encoder_cache_entries: usize,
}

/// What the router does and sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    /// The policy under test.
    pub picker: PickerConfig,
    /// Seconds between scrapes of the workers' gauges (0: the router sees the current state).
    pub scrape_interval_s: f64,
    /// Requests held at most while no worker is ready.
    pub hold_max: usize,
    /// Longest a request is held.
    pub hold_timeout_s: f64,
}

/// A KEDA-like autoscaler of the worker count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Autoscale {
    /// Fewest workers (0: scale to zero).
    pub min: usize,
    /// Most workers.
    pub max: usize,
    /// Seconds between polls (KEDA's `pollingInterval`).
    pub poll_s: f64,
    /// Pending + waiting + running requests per worker wanted (the trigger's target value).
    pub target: f64,
    /// Seconds from a worker's start to ready (pod start and model load).
    pub start_delay_s: f64,
    /// Seconds the wanted count must stay lower before workers stop (KEDA's `cooldownPeriod`).
    pub cooldown_s: f64,
}

/// The simulated fleet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetConfig {
    /// Workers ready at time 0 (with an autoscaler, clamped to its bounds).
    pub workers: usize,
    /// Each worker's limits.
    pub worker: WorkerConfig,
    /// Each worker's costs.
    pub costs: Costs,
    /// The router.
    pub router: RouterConfig,
    /// The autoscaler, if any.
    pub autoscale: Option<Autoscale>,
}
