//! The `lynx-worker` command line: `serve` (the gRPC worker), `demo` (serve + one client request),
//! `generate` (one multimodal request,
//! or a batch of images, from the shell) `convert` (release layout -> converted layout) and `fetch` (a model from a store, the hub or HTTP into a folder).

pub mod demo;
pub mod device;
pub mod fetch;
pub mod gpu;
pub mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::checkpoint::converted::{write_converted, SHARD_BYTES};
use crate::checkpoint::release::load_release;
use crate::embedded::{ensure_preset, Preset};
use crate::generation::{DecodingMode, GenerationParams};
use crate::loader::LoadedModel;
use crate::pipeline::{run_batch, GenerateRequest, VisionInput};
use crate::vision::{self, PreprocessConfig, VisionLimits};

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
}

pub use lynx_serve_flags::{EmbeddedArg, ModelArgs};

/// `generate` arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    /// Model selection.
    pub model: ModelArgs,
    /// Image file(s); several images run as one left-padded batch, one result each.
    #[arg(long, num_args = 1.., conflicts_with_all = ["video", "frames"])]
    pub image: Vec<PathBuf>,
    /// Video as the official JSON list of base64-encoded frames.
    #[arg(long, conflicts_with = "frames")]
    pub video: Option<PathBuf>,
    /// Video as frame image files, in order.
    #[arg(long, num_args = 1..)]
    pub frames: Vec<PathBuf>,
    /// The instruction (put into the YAML's prompt template).
    #[arg(long)]
    pub prompt: String,
    /// Decoding mode; `lynx` is the official release preset (beam sampling).
    #[arg(long, default_value = "lynx")]
    pub decoding: DecodingMode,
    /// Beams (beam and lynx modes; default: the YAML's).
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// New tokens at most (default: the YAML's).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Seed of the sampling modes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object per result instead of the text.
    #[arg(long)]
    pub json: bool,
}

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

/// Loads the model named by `args`, or the embedded tiny model.
pub fn load_model(args: &ModelArgs) -> Result<LoadedModel, CliError> {
    let dir = match &args.model {
        Some(d) => d.clone(),
        None => ensure_preset(match args.embedded {
            EmbeddedArg::Tiny => Preset::Tiny,
            EmbeddedArg::Small => Preset::Small,
        })
        .map_err(err)?,
    };
    LoadedModel::load(&dir, args.config.as_deref()).map_err(err)
}

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))
}

/// Runs `generate`, writing the result(s) to `out`.
pub fn generate(args: &GenerateArgs, out: &mut impl Write) -> Result<(), CliError> {
    let t_load = Instant::now();
    let m = load_model(&args.model)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let pre = PreprocessConfig {
        image_res: m.config.vision.image_res,
        mean: m.config.image_norm.mean,
        std: m.config.image_norm.std,
    };
    let limits = VisionLimits::default();
    let with_path = |p: &Path, e: vision::VisionError| CliError(format!("{}: {e}", p.display()));
    let mut reqs = Vec::new();
    if let Some(v) = &args.video {
        let bytes = read_file(v)?;
        let frames = vision::load_video_frames(&bytes, &limits, &pre, m.config.num_frames)
            .map_err(|e| with_path(v, e))?;
        reqs.push(VisionInput::Video(frames));
    } else if !args.frames.is_empty() {
        let ids = vision::sample_frame_ids(args.frames.len(), m.config.num_frames);
        let mut frames = Vec::with_capacity(ids.len());
        for i in ids {
            let p = &args.frames[i];
            let img = vision::decode_image(&read_file(p)?, &limits).map_err(|e| with_path(p, e))?;
            frames.push(vision::preprocess(&img, &pre));
        }
        reqs.push(VisionInput::Video(frames));
    } else if !args.image.is_empty() {
        for p in &args.image {
            let img = vision::decode_image(&read_file(p)?, &limits).map_err(|e| with_path(p, e))?;
            reqs.push(VisionInput::Image(vision::preprocess(&img, &pre)));
        }
    } else {
        reqs.push(VisionInput::None);
    }
    let reqs: Vec<GenerateRequest> = reqs
        .into_iter()
        .map(|vision| GenerateRequest {
            vision,
            question: args.prompt.clone(),
        })
        .collect();
    let mut params = GenerationParams::from_defaults(&m.config.generation, args.decoding);
    if let Some(n) = args.max_new_tokens {
        params.max_new_tokens = n;
    }
    if let Some(n) = args.num_beams {
        if n == 0 {
            return Err(CliError("--num-beams must be at least 1".into()));
        }
        params.num_beams = n;
    }
    params.seed = args.seed;
    let (results, t) = run_batch(&m, &reqs, &params).map_err(err)?;
    for r in results {
        if args.json {
            let obj = serde_json::json!({
                "model": m.config.model_name,
                "decoding": args.decoding.to_string(),
                "prompt_token_ids": r.prompt_token_ids,
                "token_ids": r.generated.token_ids,
                "text": r.text,
                "finish_reason": r.generated.finish_reason.to_string(),
                "timings": {
                    "load_ms": load_ms,
                    "vision_ms": t.vision_ms,
                    "prefill_ms": t.prefill_ms,
                    "decode_ms": t.decode_ms,
                },
            });
            writeln!(out, "{obj}").map_err(err)?;
        } else {
            writeln!(out, "{}", r.text).map_err(err)?;
        }
    }
    Ok(())
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
        Command::Generate(a) => generate(a, &mut std::io::stdout().lock()),
        Command::Convert(a) => convert(a),
        Command::Fetch(a) => fetch::fetch(a),
        Command::GpuSelftest(a) => gpu::run_selftest(a),
        Command::GpuBench(a) => gpu::run_bench(a),
        Command::GpuCheckModel(a) => gpu::run_check_model(a),
    }
}
