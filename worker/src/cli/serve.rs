//! `lynx-worker serve`: flags (each `--long` with an env var; the operator passes these names),
//! and the process around [`crate::serve::Server`]: tokio runtime, SIGTERM / Ctrl-C -> drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{CliError, ModelArgs, StoreDtype};
use crate::checkpoint::converted::is_converted;
use crate::engine::SchedulerConfig;
use crate::runner::RunnerConfig;
use crate::serve::auth::Tokens;
use crate::serve::limits::Limits;
use crate::serve::prepare::PrepareConfig;
use crate::serve::priority;
use crate::serve::{ServeConfig, Server, TlsFiles};

/// Which layout `--model` must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// Detect it (converted when `lynx.json` is present).
    Auto,
    /// The release layout (YAML + checkpoints).
    Release,
    /// The converted layout (`lynx-worker convert`).
    Converted,
}

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    /// Model selection.
    pub model: ModelArgs,
    /// Expected layout of --model; a mismatch is an error at start.
    #[arg(long, env = "LYNX_LAYOUT", value_enum, default_value_t = LayoutArg::Auto)]
    pub layout: LayoutArg,
    /// Compute dtype. The CPU model computes in f32 (f16/bf16 weights are widened); on
    /// `--device cuda` it is the weights' and activations' type (bf16 recommended; f32 is the
    /// exact mode).
    #[arg(long, env = "LYNX_DTYPE", value_enum, default_value_t = StoreDtype::F32)]
    pub dtype: StoreDtype,
    /// Compute backend (`--device`) and random-weight architectures (`--random-weights`).
    #[command(flatten)]
    pub device: super::device::DeviceFlags,

    /// gRPC listen address (lynx.v1.Lynx, grpc.health.v1, reflection).
    #[arg(
        long,
        env = "LYNX_GRPC_ADDR",
        default_value = "0.0.0.0:50051",
        help_heading = "Listeners"
    )]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "LYNX_HTTP_ADDR",
        default_value = "0.0.0.0:9090",
        help_heading = "Listeners"
    )]
    pub http_addr: SocketAddr,

    /// Requests decoded together at most.
    #[arg(long, env = "LYNX_MAX_BATCH_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Batching")]
    pub max_batch_size: u64,
    /// How long the first request waits for others when the worker is idle (dynamic batching).
    #[arg(
        long,
        env = "LYNX_MAX_BATCH_DELAY_MS",
        default_value_t = 5,
        help_heading = "Batching"
    )]
    pub max_batch_delay_ms: u64,
    /// Token budget of the running batch: prompt + vision + max new tokens, times beams, summed
    /// over the running requests.
    #[arg(
        long,
        env = "LYNX_MAX_BATCH_TOTAL_TOKENS",
        default_value_t = 65_536,
        help_heading = "Batching"
    )]
    pub max_batch_total_tokens: u64,
    /// Waiting requests at most; beyond it RESOURCE_EXHAUSTED at once.
    #[arg(
        long,
        env = "LYNX_MAX_QUEUE",
        default_value_t = 256,
        help_heading = "Batching"
    )]
    pub max_queue: u64,
    /// Positions per KV-cache block.
    #[arg(long, env = "LYNX_KV_BLOCK_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Batching")]
    pub kv_block_size: u64,
    /// KV-cache blocks (default: enough for the whole token budget).
    #[arg(long, env = "LYNX_KV_CACHE_BLOCKS", help_heading = "Batching")]
    pub kv_cache_blocks: Option<u64>,
    /// Waiting time worth one priority level (no starvation of low priorities).
    #[arg(
        long,
        env = "LYNX_PRIORITY_AGEING_MS",
        default_value_t = 10_000,
        help_heading = "Batching"
    )]
    pub priority_ageing_ms: u64,
    /// Capacity of the encoder-output cache (vision encodings by image hash), in MiB.
    #[arg(
        long,
        env = "LYNX_ENCODER_CACHE_MIB",
        default_value_t = 256,
        help_heading = "Batching"
    )]
    pub encoder_cache_mib: u64,

    /// Largest encoded image or video frame, in bytes.
    #[arg(long, env = "LYNX_MAX_IMAGE_BYTES", default_value_t = 20 * 1024 * 1024, help_heading = "Limits")]
    pub max_image_bytes: u64,
    /// Largest width x height of an image or frame, read from the header before decoding.
    #[arg(
        long,
        env = "LYNX_MAX_IMAGE_PIXELS",
        default_value_t = 40_000_000,
        help_heading = "Limits"
    )]
    pub max_image_pixels: u64,
    /// Images per request.
    #[arg(
        long,
        env = "LYNX_MAX_IMAGES_PER_REQUEST",
        default_value_t = 8,
        help_heading = "Limits"
    )]
    pub max_images_per_request: u64,
    /// Frames per video (as sent, before frame sampling).
    #[arg(
        long,
        env = "LYNX_MAX_VIDEO_FRAMES",
        default_value_t = 512,
        help_heading = "Limits"
    )]
    pub max_video_frames: u64,
    /// Prompt tokens (BOS + the formatted instruction, before the model's own truncation).
    #[arg(
        long,
        env = "LYNX_MAX_PROMPT_TOKENS",
        default_value_t = 2048,
        help_heading = "Limits"
    )]
    pub max_prompt_tokens: u64,
    /// UTF-8 bytes of the instruction, checked before it is tokenized.
    #[arg(long, env = "LYNX_MAX_PROMPT_BYTES", default_value_t = crate::serve::limits::DEFAULT_MAX_PROMPT_BYTES as u64, help_heading = "Limits")]
    pub max_prompt_bytes: u64,
    /// A whole request message on the wire (default: max images per request x max image
    /// bytes + max prompt bytes + max stop strings x 256 + 64 KiB); larger ones are refused
    /// with RESOURCE_EXHAUSTED before their body is buffered.
    #[arg(long, env = "LYNX_MAX_REQUEST_BYTES", help_heading = "Limits")]
    pub max_request_bytes: Option<u64>,
    /// New tokens per request (also caps the model's default).
    #[arg(long, env = "LYNX_MAX_NEW_TOKENS", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits")]
    pub max_new_tokens: u64,
    /// Stop strings per request.
    #[arg(
        long,
        env = "LYNX_MAX_STOP_STRINGS",
        default_value_t = 8,
        help_heading = "Limits"
    )]
    pub max_stop_strings: u64,

    /// Requests decoded and tokenized at once (default: the number of CPUs).
    #[arg(long, env = "LYNX_PREPARE_THREADS", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Preparation")]
    pub prepare_threads: Option<u64>,
    /// Memory that image decoding may hold at once over all requests, in MiB; each image's
    /// share is read from its header before it is decoded.
    #[arg(long, env = "LYNX_PREPARE_MEMORY_MIB", default_value_t = crate::serve::prepare::DEFAULT_PREPARE_MEMORY_MIB, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Preparation")]
    pub prepare_memory_mib: u64,
    /// Requests between arrival and the queue at once: being received, checked or prepared
    /// (more are refused with RESOURCE_EXHAUSTED from their headers). Bounds the memory of the
    /// request messages in flight.
    #[arg(long, env = "LYNX_MAX_INCOMING_REQUESTS", default_value_t = crate::serve::prepare::DEFAULT_MAX_INCOMING_REQUESTS as u64, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Preparation")]
    pub max_incoming_requests: u64,
    /// Niceness added to the serving threads (gRPC, HTTP, refusals, decoding, tokenizing) over
    /// the model's threads (0-19; 0: equal priority, the default). Above 0 the batch being
    /// generated gets the CPU first, but preparing the next requests can starve: measured on 2
    /// cores, the tiny model then drops to a third of its throughput for seconds at a time.
    /// Linux only.
    #[arg(long, env = "LYNX_SERVING_NICENESS", default_value_t = DEFAULT_SERVING_NICENESS, value_parser = clap::value_parser!(i32).range(0..=19), help_heading = "Preparation")]
    pub serving_niceness: i32,

    /// TLS certificate chain (PEM) of the gRPC listener; with --tls-key, gRPC is served over TLS.
    #[arg(
        long,
        env = "LYNX_TLS_CERT",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the gRPC listener.
    #[arg(
        long,
        env = "LYNX_TLS_KEY",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_key: Option<PathBuf>,
    /// File of bearer tokens (one per line, # comments) that lynx.v1.Lynx requires in
    /// `authorization: Bearer <token>`; health, reflection and HTTP stay open.
    #[arg(long, env = "LYNX_AUTH_TOKENS_FILE", help_heading = "Security")]
    pub auth_tokens_file: Option<PathBuf>,
    /// One bearer token (in addition to the file's).
    #[arg(
        long,
        env = "LYNX_AUTH_TOKEN",
        hide_env_values = true,
        help_heading = "Security"
    )]
    pub auth_token: Option<String>,
    /// Hosts (names or addresses, comma-separated) whose http(s) image URLs the OpenAI API
    /// fetches, within the image byte limit, a 10 s timeout and redirects within the host only;
    /// none by default (data: URIs only).
    #[arg(
        long,
        env = "LYNX_IMAGE_URL_HOSTS",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub image_url_hosts: Vec<String>,

    /// gRPC connections older than this are asked to close (HTTP/2 GOAWAY; their requests
    /// finish), so that long-lived clients connect again and reach workers added since; 0: never.
    /// Behind a Service or a `dns:///` name this is what spreads clients over new workers.
    #[arg(
        long,
        env = "LYNX_MAX_CONNECTION_AGE_SECONDS",
        default_value_t = 0,
        help_heading = "Lifecycle"
    )]
    pub max_connection_age_seconds: u64,
    /// How long the requests of a connection closed for its age may still take before it is cut;
    /// longer than the longest generation.
    #[arg(
        long,
        env = "LYNX_MAX_CONNECTION_AGE_GRACE_SECONDS",
        default_value_t = 600,
        help_heading = "Lifecycle"
    )]
    pub max_connection_age_grace_seconds: u64,

    /// After SIGTERM: how long admitted requests may take to finish before the worker exits.
    #[arg(
        long,
        env = "LYNX_DRAIN_TIMEOUT_SECONDS",
        default_value_t = 30,
        help_heading = "Lifecycle"
    )]
    pub drain_timeout_seconds: u64,
}

/// Default of `--serving-niceness`.
pub const DEFAULT_SERVING_NICENESS: i32 = 0;

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl ServeArgs {
    /// The server configuration these flags describe (reads the tokens file).
    pub fn config(&self) -> Result<ServeConfig, CliError> {
        let mut auth_tokens = Vec::new();
        if let Some(path) = &self.auth_tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
            auth_tokens = Tokens::parse_file(&text);
            if auth_tokens.is_empty() {
                return Err(CliError(format!("{} holds no token", path.display())));
            }
        }
        auth_tokens.extend(self.auth_token.iter().map(|t| t.trim().to_owned()));
        if auth_tokens.iter().any(String::is_empty) {
            return Err(CliError("--auth-token is empty".into()));
        }
        let mut limits = Limits {
            max_image_bytes: usize_of(self.max_image_bytes),
            max_image_pixels: self.max_image_pixels,
            max_images_per_request: usize_of(self.max_images_per_request),
            max_video_frames: usize_of(self.max_video_frames),
            max_prompt_tokens: usize_of(self.max_prompt_tokens),
            max_prompt_bytes: usize_of(self.max_prompt_bytes),
            max_request_bytes: 0,
            max_new_tokens: usize_of(self.max_new_tokens),
            max_stop_strings: usize_of(self.max_stop_strings),
        };
        limits.max_request_bytes = self
            .max_request_bytes
            .map_or_else(|| limits.request_bytes_for(), usize_of);
        let block = usize_of(self.kv_block_size).max(1);
        let budget = usize_of(self.max_batch_total_tokens);
        let batch = usize_of(self.max_batch_size).max(1);
        // Every sequence rounds up to whole blocks: one spare block per possible sequence.
        let default_blocks = budget.div_ceil(block).saturating_add(batch);
        Ok(ServeConfig {
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            runner: RunnerConfig {
                scheduler: SchedulerConfig {
                    max_batch_size: batch,
                    max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
                    max_batch_total_tokens: budget,
                    max_queue: usize_of(self.max_queue),
                    kv_block_size: block,
                    kv_blocks: self.kv_cache_blocks.map_or(default_blocks, usize_of),
                    ageing: Duration::from_millis(self.priority_ageing_ms),
                },
                encoder_cache_bytes: usize_of(self.encoder_cache_mib.saturating_mul(1 << 20)),
            },
            limits,
            prepare: PrepareConfig {
                threads: self
                    .prepare_threads
                    .map_or_else(|| PrepareConfig::default().threads, usize_of),
                memory_bytes: self.prepare_memory_mib.saturating_mul(1 << 20),
                max_incoming: usize_of(self.max_incoming_requests),
            },
            drain_timeout: Duration::from_secs(self.drain_timeout_seconds),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            auth_tokens,
            image_url_hosts: self.image_url_hosts.clone(),
            max_connection_age: (self.max_connection_age_seconds > 0)
                .then(|| Duration::from_secs(self.max_connection_age_seconds)),
            max_connection_age_grace: Duration::from_secs(self.max_connection_age_grace_seconds),
        })
    }
}

/// Resolves when the process gets SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
                tokio::signal::ctrl_c().await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok();
    }
    tracing::info!("shutdown signal received");
}

/// Runs `serve` until SIGTERM, then drains and returns.
pub fn serve(args: &ServeArgs) -> Result<(), CliError> {
    if let (Some(dir), LayoutArg::Release | LayoutArg::Converted) = (&args.model.model, args.layout)
    {
        let converted = is_converted(dir);
        if converted != (args.layout == LayoutArg::Converted) {
            let wanted = if converted { "release" } else { "converted" };
            return Err(CliError(format!(
                "--layout {wanted} does not match {} ({} layout)",
                dir.display(),
                if converted { "converted" } else { "release" }
            )));
        }
    }
    if args.dtype != StoreDtype::F32 && args.device.device == super::device::DeviceArg::Cpu {
        tracing::info!(dtype = ?args.dtype, "the CPU model computes in f32");
    }
    let cfg = args.config()?;
    let model_args = args.model.clone();
    let device = args.device.clone();
    let dtype = args.dtype;
    let (kv_blocks, kv_block_size) = (
        cfg.runner.scheduler.kv_blocks,
        cfg.runner.scheduler.kv_block_size,
    );
    // The compute pool and (from `block_on`'s future, on this thread) the model thread keep
    // this thread's priority; the runtime's threads lower theirs as they start.
    priority::start_compute_pool(0).map_err(|e| CliError(e.to_string()))?;
    let niceness = args.serving_niceness;
    let warned = Arc::new(Once::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lynx-serving")
        .on_thread_start(move || {
            if let Err(e) = priority::lower_current_thread_priority(niceness) {
                warned.call_once(
                    || tracing::warn!(error = %e, "serving threads keep the model's priority"),
                );
            }
        })
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let server = Server::bind(cfg)
            .await
            .map_err(|e| CliError(e.to_string()))?;
        tracing::info!(grpc_addr = %server.grpc_addr(), http_addr = %server.http_addr(), "bound");
        let load = move || {
            super::device::load_served(&model_args, &device, dtype, kv_blocks, kv_block_size)
                .map_err(|e| e.0)
        };
        server
            .run(load, shutdown_signal())
            .await
            .map_err(|e| CliError(e.to_string()))
    });
    // Blocking tasks (a model load cut short by the signal) do not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("lynx-worker").chain(args.iter().copied()))?;
        match cli.command {
            Command::Serve(a) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Every flag the operator passes (`operator/src/desired/deployment.rs`, `worker_args`).
    #[test]
    fn accepts_the_operator_arguments() {
        let args = parse(&[
            "serve",
            "--model",
            "/models",
            "--layout",
            "release",
            "--dtype",
            "bf16",
            "--device",
            "cuda",
            "--grpc-addr",
            "0.0.0.0:50051",
            "--http-addr",
            "0.0.0.0:9090",
            "--max-batch-size",
            "8",
            "--max-batch-delay-ms",
            "7",
            "--max-batch-total-tokens",
            "4096",
            "--max-queue",
            "64",
            "--max-image-bytes",
            "1000",
            "--max-image-pixels",
            "2000",
            "--max-images-per-request",
            "3",
            "--max-video-frames",
            "9",
            "--max-prompt-tokens",
            "100",
            "--max-new-tokens",
            "50",
            "--drain-timeout-seconds",
            "12",
            "--tls-cert",
            "/etc/lynx/tls/tls.crt",
            "--tls-key",
            "/etc/lynx/tls/tls.key",
        ])
        .expect("the operator's arguments parse");
        let cfg = args.config().expect("config");
        let s = &cfg.runner.scheduler;
        assert_eq!(
            (
                s.max_batch_size,
                s.max_batch_delay,
                s.max_batch_total_tokens,
                s.max_queue
            ),
            (8, Duration::from_millis(7), 4096, 64)
        );
        let l = &cfg.limits;
        assert_eq!(
            (
                l.max_image_bytes,
                l.max_image_pixels,
                l.max_images_per_request
            ),
            (1000, 2000, 3)
        );
        assert_eq!(
            (l.max_video_frames, l.max_prompt_tokens, l.max_new_tokens),
            (9, 100, 50)
        );
        assert_eq!(cfg.drain_timeout, Duration::from_secs(12));
        assert_eq!(args.layout, LayoutArg::Release);
        assert_eq!(args.device.device, crate::cli::device::DeviceArg::Cuda(0));
        assert_eq!(cfg.grpc_addr.port(), 50051);
        assert!(cfg.tls.is_some());
    }

    #[test]
    fn tls_needs_both_files_and_limits_reject_zero() {
        assert!(parse(&["serve", "--tls-cert", "a.crt"]).is_err());
        assert!(parse(&["serve", "--max-batch-size", "0"]).is_err());
        assert!(parse(&["serve", "--max-new-tokens", "0"]).is_err());
    }

    #[test]
    fn tokens_come_from_the_file_and_the_flag() {
        let dir = std::env::temp_dir().join(format!("lynx-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("tokens");
        std::fs::write(&file, "# comment\na\n\nb\n").expect("write");
        let path = file.to_str().expect("utf-8 path");
        let args =
            parse(&["serve", "--auth-tokens-file", path, "--auth-token", "c"]).expect("parse");
        assert_eq!(args.config().expect("config").auth_tokens, ["a", "b", "c"]);
        std::fs::write(&file, "# only a comment\n").expect("write");
        let args = parse(&["serve", "--auth-tokens-file", path]).expect("parse");
        assert!(
            args.config().is_err(),
            "a tokens file without tokens is an error"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
