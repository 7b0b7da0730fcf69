//! The `lynx-worker` command line: `serve` (the gRPC worker), `demo` (serve + one client request),
//! `generate` (one multimodal request,
//! or a batch of images, from the shell) `convert` (release layout -> converted layout) and `fetch` (a model from a store, the hub or HTTP into a folder).

pub mod demo;
pub mod device;
pub mod fetch;
pub mod generate;
pub mod gpu;
pub mod kernels;
pub mod serve;

use std::path::PathBuf;

use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::checkpoint::converted::{write_converted, SHARD_BYTES};
use crate::checkpoint::release::load_release;
pub use generate::GenerateArgs;

/// Lynx multimodal LLM worker.
#[derive(Debug, Parser)]
#[command(name = "lynx-worker", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LYNX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    Pretty,
    /// One JSON object per line on stderr.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model over gRPC (lynx.v1), with health, reflection and an HTTP listener for
    /// /metrics, /healthz and /readyz.
    Serve(Box<serve::ServeArgs>),
    /// Start `serve` on loopback ports, send it one multimodal request with the `lynx` client,
    /// print the answer and the request counters, then drain and exit.
    Demo(demo::DemoArgs),
    /// Answer one instruction about images or a video (or text only).
    Generate(GenerateArgs),
    /// Convert a release-layout model dir into the converted (safetensors) layout.
    Convert(ConvertArgs),
    /// Fetch a model into a folder from s3://, gs://, http(s)://, hf:// or a local path:
    /// verified, resumable, once for all concurrent fetchers (the pods' init containers).
    Fetch(Box<fetch::FetchCommand>),
    /// Check every GPU attention kernel against the CPU reference on fresh random inputs.
    GpuSelftest(gpu::SelftestArgs),
    /// Time the GPU attention kernels on Lynx's anchor shapes (CUDA events, median).
    GpuBench(gpu::BenchArgs),
    /// Run the whole forward on the GPU (f32 and bf16) against the host mirror and the official
    /// outputs on the fixture's cases.
    GpuCheckModel(gpu::CheckModelArgs),
    /// Open the GPU as a worker does and print what it is and how long its kernels took to be
    /// ready (prebuilt, cached or compiled).
    GpuInfo(gpu::DeviceArgs),
    /// Compile every GPU kernel ahead of time (NVRTC only, no GPU) into the folder workers
    /// search first, so their start compiles nothing (the worker image does this at build time).
    CompileKernels(kernels::CompileKernelsArgs),
}

pub use lynx_serve_flags::{EmbeddedArg, ModelArgs};

/// `convert` arguments.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Release-layout model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Official YAML config (default: LYNX.yaml in the model dir).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Stored dtype of the weights.
    #[arg(long, value_enum, default_value_t = StoreDtype::F32)]
    pub dtype: StoreDtype,
}

/// Dtype of converted weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreDtype {
    /// 32-bit float (exact).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<StoreDtype> for DType {
    fn from(d: StoreDtype) -> Self {
        match d {
            StoreDtype::F32 => DType::F32,
            StoreDtype::F16 => DType::F16,
            StoreDtype::Bf16 => DType::BF16,
        }
    }
}

/// A CLI failure: one line for the user, non-zero exit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

/// Runs `convert`.
pub fn convert(args: &ConvertArgs) -> Result<(), CliError> {
    let merged = load_release(&args.model, args.config.as_deref()).map_err(err)?;
    let files = write_converted(
        &args.out,
        &merged.config,
        &merged.tensors,
        &merged.tokenizer,
        args.dtype.into(),
        SHARD_BYTES,
    )
    .map_err(err)?;
    tracing::info!(out = %args.out.display(), files = files.len(), "converted");
    Ok(())
}

/// Initialises logging on stderr (`RUST_LOG` filters, default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    init_logging(cli.log_format);
    match &cli.command {
        Command::Serve(a) => serve::serve(a),
        Command::Demo(a) => demo::demo(a),
        Command::Generate(a) => generate::generate(a, &mut std::io::stdout().lock()),
        Command::Convert(a) => convert(a),
        Command::Fetch(a) => fetch::fetch(a),
        Command::GpuSelftest(a) => gpu::run_selftest(a),
        Command::GpuBench(a) => gpu::run_bench(a),
        Command::GpuCheckModel(a) => gpu::run_check_model(a),
        Command::GpuInfo(a) => gpu::run_info(a),
        Command::CompileKernels(a) => kernels::compile_kernels(a),
    }
}
