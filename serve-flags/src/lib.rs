//! The flags of `lynx-worker serve` as one type: the worker parses them with clap
//! ([`ServeFlags`] flattened into its `serve` command) and the operator renders them for the
//! worker's command line with [`ServeFlags::to_args`], so both sides share every flag's name.
//!
//! Each flag has a `--long` name and an env var; the names, env vars, defaults, help texts and
//! help headings are a contract with deployed operators and users.

mod render;
mod values;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

pub use render::Flag;
pub use values::{Device, Dtype, EmbeddedArg, Layout, ParseDeviceError};

/// Default of `--max-prompt-bytes`.
pub const DEFAULT_MAX_PROMPT_BYTES: u64 = 64 * 1024;
/// Default of `--prepare-memory-mib`.
pub const DEFAULT_PREPARE_MEMORY_MIB: u64 = 1024;
/// Default of `--max-incoming-requests`.
pub const DEFAULT_MAX_INCOMING_REQUESTS: u64 = 64;
/// Default of `--serving-niceness`.
pub const DEFAULT_SERVING_NICENESS: i32 = 0;

/// Where the model comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ModelArgs {
    /// Model directory (release or converted layout). Without it, the embedded tiny model.
    #[arg(long, env = "LYNX_MODEL")]
    pub model: Option<PathBuf>,
    /// Official YAML config (release layout; default: LYNX.yaml in the model dir).
    #[arg(long, env = "LYNX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Which generated model to use without --model: `tiny` (the default) or `small` (~150 M
    /// parameters, for benchmarks; generated on first use).
    #[arg(long, env = "LYNX_EMBEDDED", value_enum, default_value_t = EmbeddedArg::Tiny, conflicts_with = "model")]
    pub embedded: EmbeddedArg,
}

/// The flags of `lynx-worker serve` that configure the server (all but the worker's
/// benchmark-only `--random-weights`). [`Default`] is every flag at its default: what `serve`
/// parses from an empty command line and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ServeFlags {
    #[command(flatten)]
    /// Model selection.
    pub model: ModelArgs,
    /// Expected layout of --model; a mismatch is an error at start.
    #[arg(long, env = "LYNX_LAYOUT", value_enum, default_value_t = Layout::Auto)]
    pub layout: Layout,
    /// Compute dtype. The CPU model computes in f32 (f16/bf16 weights are widened); on
    /// `--device cuda` it is the weights' and activations' type (bf16 recommended; f32 is the
    /// exact mode).
    #[arg(long, env = "LYNX_DTYPE", value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Where the model computes: `cpu` (candle, f32), `cuda` / `cuda:N` (our kernels at
    /// `--dtype`), or `mirror` (the GPU program run on the host, f32).
    #[arg(long, env = "LYNX_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Listen addresses.
    #[command(flatten)]
    pub listeners: Listeners,
    /// Continuous batching and the KV cache.
    #[command(flatten)]
    pub batching: Batching,
    /// Per-request limits.
    #[command(flatten)]
    pub limits: Limits,
    /// Request preparation (decoding, tokenizing) and its threads.
    #[command(flatten)]
    pub preparation: Preparation,
    /// TLS, bearer tokens and fetched image hosts.
    #[command(flatten)]
    pub security: Security,
    /// Connection ages and the drain.
    #[command(flatten)]
    pub lifecycle: Lifecycle,
}

/// Listen addresses of `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Listeners {
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
}

/// Batching flags of `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Batching {
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
}

/// Request limit flags of `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Limits {
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
    #[arg(long, env = "LYNX_MAX_PROMPT_BYTES", default_value_t = DEFAULT_MAX_PROMPT_BYTES, help_heading = "Limits")]
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
}

/// Request preparation flags of `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Preparation {
    /// Requests decoded and tokenized at once (default: the number of CPUs).
    #[arg(long, env = "LYNX_PREPARE_THREADS", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Preparation")]
    pub prepare_threads: Option<u64>,
    /// Memory that image decoding may hold at once over all requests, in MiB; each image's
    /// share is read from its header before it is decoded.
    #[arg(long, env = "LYNX_PREPARE_MEMORY_MIB", default_value_t = DEFAULT_PREPARE_MEMORY_MIB, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Preparation")]
    pub prepare_memory_mib: u64,
    /// Requests between arrival and the queue at once: being received, checked or prepared
    /// (more are refused with RESOURCE_EXHAUSTED from their headers). Bounds the memory of the
    /// request messages in flight.
    #[arg(long, env = "LYNX_MAX_INCOMING_REQUESTS", default_value_t = DEFAULT_MAX_INCOMING_REQUESTS, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Preparation")]
    pub max_incoming_requests: u64,
    /// Niceness added to the serving threads (gRPC, HTTP, refusals, decoding, tokenizing) over
    /// the model's threads (0-19; 0: equal priority, the default). Above 0 the batch being
    /// generated gets the CPU first, but preparing the next requests can starve: measured on 2
    /// cores, the tiny model then drops to a third of its throughput for seconds at a time.
    /// Linux only.
    #[arg(long, env = "LYNX_SERVING_NICENESS", default_value_t = DEFAULT_SERVING_NICENESS, value_parser = clap::value_parser!(i32).range(0..=19), help_heading = "Preparation")]
    pub serving_niceness: i32,
}

/// Security flags of `serve`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Security {
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
}

/// Connection and shutdown flags of `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Lifecycle {
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

impl Default for Listeners {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 50051)),
            http_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9090)),
        }
    }
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_delay_ms: 5,
            max_batch_total_tokens: 65_536,
            max_queue: 256,
            kv_block_size: 16,
            kv_cache_blocks: None,
            priority_ageing_ms: 10_000,
            encoder_cache_mib: 256,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_image_bytes: 20 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            max_images_per_request: 8,
            max_video_frames: 512,
            max_prompt_tokens: 2048,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            max_request_bytes: None,
            max_new_tokens: 512,
            max_stop_strings: 8,
        }
    }
}

impl Default for Preparation {
    fn default() -> Self {
        Self {
            prepare_threads: None,
            prepare_memory_mib: DEFAULT_PREPARE_MEMORY_MIB,
            max_incoming_requests: DEFAULT_MAX_INCOMING_REQUESTS,
            serving_niceness: DEFAULT_SERVING_NICENESS,
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            max_connection_age_seconds: 0,
            max_connection_age_grace_seconds: 600,
            drain_timeout_seconds: 30,
        }
    }
}
