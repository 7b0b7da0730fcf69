//! The worker's Prometheus metrics, one registry per server (no global statics).
//!
//! The three gauges an autoscaler reads keep vLLM's semantics (see the README for the mapping):
//! `lynx_queue_length` = requests waiting for admission (`num_requests_waiting`),
//! `lynx_running_sequences` = sequences being decoded, beams included (`num_requests_running`),
//! `lynx_kv_cache_usage` = fraction of KV-cache blocks in use, 0..1 (`kv_cache_usage_perc`).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of the worker.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Finished generation requests of both APIs by gRPC status code (`code` = `OK`,
    /// `INVALID_ARGUMENT`, ...; an OpenAI-API request counts with the gRPC code of its answer).
    pub requests: IntCounterVec,
    /// OpenAI-API chat completions by HTTP status (`status` = `200`, `400`, `429`, ...).
    pub openai_requests: IntCounterVec,
    /// Requests waiting for admission.
    pub queue_length: IntGauge,
    /// Sequences being decoded (beams included).
    pub running_sequences: IntGauge,
    /// Requests being decoded.
    pub running_requests: IntGauge,
    /// Fraction of KV-cache blocks in use, 0..1.
    pub kv_cache_usage: Gauge,
    /// Requests in the running batch at each decode step.
    pub batch_size: Histogram,
    /// Tokens fed to the model at each decode step (one per sequence).
    pub tokens_per_step: Histogram,
    /// Time from arrival to the first generated token.
    pub time_to_first_token: Histogram,
    /// Time between two tokens of one request.
    pub inter_token_latency: Histogram,
    /// Time from arrival to the response (every status).
    pub request_duration: Histogram,
    /// Time from arrival to admission.
    pub queue_duration: Histogram,
    /// Time of one vision-encoder run over all admitted images and videos together.
    pub vision_encode: Histogram,
    /// Text prompt tokens of admitted requests.
    pub prompt_tokens: IntCounter,
    /// Vision tokens of admitted requests.
    pub vision_tokens: IntCounter,
    /// Generated tokens.
    pub generated_tokens: IntCounter,
    /// Encoder-output cache lookups that found the encoding.
    pub encoder_cache_hits: IntCounter,
    /// Encoder-output cache lookups that did not.
    pub encoder_cache_misses: IntCounter,
    /// Scheduler decisions by reason (`admitted`, `token_budget`, ...).
    pub scheduler_decisions: IntCounterVec,
    /// Images and video frames whose decoding started.
    pub vision_inputs_decoded: IntCounter,
    /// Bytes of image-decoding memory reserved now (at most `--prepare-memory-mib`).
    pub prepare_memory: IntGauge,
    /// Requests being received, checked or prepared now (at most `--max-incoming-requests`).
    pub incoming_requests: IntGauge,
    /// gRPC connections accepted (a client that reconnects after `--max-connection-age-seconds`
    /// counts again).
    pub grpc_connections: IntCounter,
    /// The process's peak resident memory (Linux `VmHWM`), read at each scrape.
    pub peak_resident_memory: IntGauge,
    /// The process's CPU time, user + system, in seconds (Linux), read at each scrape.
    pub cpu_seconds: Gauge,
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const COUNT_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let int_gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> Result<Histogram, prometheus::Error> {
                let h =
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let requests = IntCounterVec::new(
            Opts::new(
                "lynx_requests_total",
                "Finished generation requests by gRPC status code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let openai_requests = IntCounterVec::new(
            Opts::new(
                "lynx_openai_requests_total",
                "OpenAI-API chat completions by HTTP status (also counted in lynx_requests_total).",
            ),
            &["status"],
        )?;
        registry.register(Box::new(openai_requests.clone()))?;
        let scheduler_decisions = IntCounterVec::new(
            Opts::new(
                "lynx_scheduler_decisions_total",
                "Scheduler decisions by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(scheduler_decisions.clone()))?;
        let kv_cache_usage = Gauge::new(
            "lynx_kv_cache_usage",
            "Fraction of KV-cache blocks in use, 0..1 (vLLM kv_cache_usage_perc).",
        )?;
        registry.register(Box::new(kv_cache_usage.clone()))?;
        Ok(Self {
            requests,
            openai_requests,
            queue_length: int_gauge(
                "lynx_queue_length",
                "Requests waiting for admission (vLLM num_requests_waiting).",
            )?,
            running_sequences: int_gauge(
                "lynx_running_sequences",
                "Sequences being decoded, beams included (vLLM num_requests_running).",
            )?,
            running_requests: int_gauge("lynx_running_requests", "Requests being decoded.")?,
            kv_cache_usage,
            batch_size: histogram(
                "lynx_batch_size",
                "Requests in the running batch per decode step.",
                &COUNT_BUCKETS,
            )?,
            tokens_per_step: histogram(
                "lynx_tokens_per_step",
                "Tokens fed to the model per decode step.",
                &COUNT_BUCKETS,
            )?,
            time_to_first_token: histogram(
                "lynx_time_to_first_token_seconds",
                "Time from arrival to the first generated token.",
                &LATENCY_BUCKETS,
            )?,
            inter_token_latency: histogram(
                "lynx_inter_token_latency_seconds",
                "Time between two generated tokens of one request.",
                &LATENCY_BUCKETS,
            )?,
            request_duration: histogram(
                "lynx_request_duration_seconds",
                "Time from arrival to the response.",
                &LATENCY_BUCKETS,
            )?,
            queue_duration: histogram(
                "lynx_queue_duration_seconds",
                "Time from arrival to admission.",
                &LATENCY_BUCKETS,
            )?,
            vision_encode: histogram(
                "lynx_vision_encode_seconds",
                "Time of one vision-encoder run over the admitted images and videos.",
                &LATENCY_BUCKETS,
            )?,
            prompt_tokens: counter("lynx_prompt_tokens_total", "Text prompt tokens admitted.")?,
            vision_tokens: counter("lynx_vision_tokens_total", "Vision tokens admitted.")?,
            generated_tokens: counter("lynx_generated_tokens_total", "Generated tokens.")?,
            encoder_cache_hits: counter(
                "lynx_encoder_cache_hits_total",
                "Encoder-output cache lookups that found the encoding.",
            )?,
            encoder_cache_misses: counter(
                "lynx_encoder_cache_misses_total",
                "Encoder-output cache lookups that ran the vision encoder.",
            )?,
            scheduler_decisions,
            vision_inputs_decoded: counter(
                "lynx_vision_inputs_decoded_total",
                "Images and video frames whose decoding started.",
            )?,
            prepare_memory: int_gauge(
                "lynx_prepare_memory_bytes",
                "Image-decoding memory reserved now (at most --prepare-memory-mib).",
            )?,
            incoming_requests: int_gauge(
                "lynx_incoming_requests",
                "Requests being received, checked or prepared now (at most --max-incoming-requests).",
            )?,
            grpc_connections: counter(
                "lynx_grpc_connections_total",
                "gRPC connections accepted.",
            )?,
            peak_resident_memory: int_gauge(
                "lynx_process_peak_resident_memory_bytes",
                "Peak resident memory of the process (VmHWM; 0 where unknown).",
            )?,
            cpu_seconds: {
                let g = Gauge::new(
                    "lynx_process_cpu_seconds",
                    "CPU time of the process, user + system, in seconds (0 where unknown).",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            registry,
        })
    }

    /// Counts one finished generation request with the gRPC status its client got.
    /// `code` is the status's canonical name (`OK`, `INVALID_ARGUMENT`, ...).
    pub fn count_request(&self, code: &str, duration: std::time::Duration) {
        self.requests.with_label_values(&[code]).inc();
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        if let Some(peak) = peak_resident_bytes() {
            self.peak_resident_memory.set(peak);
        }
        if let Some(cpu) = cpu_seconds() {
            self.cpu_seconds.set(cpu);
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// `VmHWM` of `/proc/self/status`, in bytes (Linux only).
fn peak_resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU time of the whole process from `/proc/self/stat` (Linux; clock ticks of
/// the fixed `USER_HZ` = 100).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), starting at field 3 (state).
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: f64 = rest.nth(11)?.parse().ok()?;
    let stime: f64 = rest.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
