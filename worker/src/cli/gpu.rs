//! The GPU commands: `gpu-selftest` and `gpu-bench` (the kernels checked against the CPU
//! reference and timed on Lynx's anchor shapes), `gpu-check-model` (the whole forward against the
//! host mirror) and `gpu-info` (the device, and how its kernels became ready).

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use lynx_kernels::cuda::CudaAttention;
use lynx_kernels::{bench, selftest, DType};

use super::CliError;
use crate::embedded::kernel_store;
use crate::forward::ops::Ops as _;

/// Which GPU.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// CUDA device ordinal.
    #[arg(long, env = "LYNX_CUDA_DEVICE", default_value_t = 0)]
    pub device: usize,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `gpu-selftest` arguments.
#[derive(Debug, Clone, Args)]
pub struct SelftestArgs {
    /// The device and output format.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Seed of the random inputs (default: a new one each run, printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `gpu-bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The device and output format.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Element type of the timed tensors (bf16 | f16).
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Timed calls per shape (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    /// Time the whole model instead of the kernels: vision images/s, TTFT, decode tokens/s
    /// against the weight-streaming limit.
    #[arg(long)]
    pub e2e: bool,
    /// The architecture timed by `--e2e`, with seeded random weights made on the device.
    #[arg(long, default_value = "lynx-7b")]
    pub random_weights: String,
}

fn open(device: &DeviceArgs) -> Result<CudaAttention, CliError> {
    let gpu =
        CudaAttention::new(device.device, &kernel_store()).map_err(|e| CliError(e.to_string()))?;
    let info = gpu.info();
    tracing::info!(
        device = %info.name,
        arch = %info.arch,
        sms = info.sm_count,
        nvrtc = ?info.nvrtc,
        kernel_seconds = info.kernel_seconds,
        kernels = ?info.kernel_origins,
        "GPU ready"
    );
    Ok(gpu)
}

/// `gpu-info`: opens the device as a worker does (its kernels prebuilt, cached or compiled now)
/// and prints what it is and how long the kernels took to be ready.
pub fn run_info(args: &DeviceArgs) -> Result<(), CliError> {
    let gpu = open(args)?;
    let info = gpu.info();
    if args.json {
        println!("{}", json_line(info)?);
    } else {
        let origins: Vec<String> = info
            .kernel_origins
            .iter()
            .map(|o| format!("{o:?}").to_lowercase())
            .collect();
        println!(
            "{} ({}, {} SMs, {:.1} GiB), NVRTC {}.{}: kernels ready in {:.2} s ({})",
            info.name,
            info.arch,
            info.sm_count,
            info.memory_bytes as f64 / (1u64 << 30) as f64,
            info.nvrtc.0,
            info.nvrtc.1,
            info.kernel_seconds,
            origins.join(", ")
        );
    }
    Ok(())
}

fn json_line(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string(value).map_err(|e| CliError(e.to_string()))
}

/// Runs every kernel variant against the CPU reference; fails if any case fails.
pub fn run_selftest(args: &SelftestArgs) -> Result<(), CliError> {
    let gpu = open(&args.device)?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    tracing::info!(seed, "random inputs (replay with --seed)");
    let results = selftest::run(&gpu, seed).map_err(|e| CliError(e.to_string()))?;
    let failed = results.iter().filter(|r| !r.passed).count();
    if args.device.json {
        for r in &results {
            println!("{}", json_line(r)?);
        }
    } else {
        println!(
            "{:<70} {:>5} {:>10} {:>10} {:>5} {:>6}  ok",
            "case", "dtype", "rel err", "max abs", "NaN", "exact"
        );
        for r in &results {
            println!(
                "{:<70} {:>5} {:>10.2e} {:>10.2e} {:>5} {:>6}  {}",
                r.name,
                r.precision
                    .map_or_else(|| r.dtype.to_string(), |p| p.to_string()),
                r.rel_err,
                r.max_abs_err,
                r.nan,
                r.cache_mismatches + r.index_mismatches,
                if r.passed { "PASS" } else { "FAIL" }
            );
        }
    }
    println!(
        "gpu-selftest: {} passed, {failed} failed (seed {seed}, tolerance {:.0e}, {})",
        results.len() - failed,
        selftest::TOLERANCE,
        gpu.info().name
    );
    if failed > 0 {
        return Err(CliError(format!("{failed} GPU selftest case(s) failed")));
    }
    Ok(())
}

/// `gpu-bench --e2e`: the whole random-weight model on the device, in the bench's dtype.
fn run_e2e(args: &BenchArgs, dtype: DType) -> Result<(), CliError> {
    use crate::config::presets::Preset;
    use crate::forward::e2e::{run, E2eOptions};
    let err = |e: crate::forward::ForwardError| CliError(e.to_string());
    let arch: Preset = args.random_weights.parse().map_err(CliError)?;
    let tokenizer = crate::tokenizer::toy::toy_tokenizer().map_err(|e| CliError(e.to_string()))?;
    let cfg = arch.config(&tokenizer);
    let gpu = std::sync::Arc::new(open(&args.device)?);
    let copy_bytes = 1usize << 30;
    let (src, mut dst) = gpu.copy_buffers(copy_bytes).map_err(kernel_err)?;
    let times = gpu
        .time_ms(2, args.iters.max(1), || gpu.copy(&src, &mut dst))
        .map_err(kernel_err)?;
    drop((src, dst));
    let copy_ms = median_ms(times);
    let copy_gb_s = 2.0 * copy_bytes as f64 / copy_ms / 1e6;
    let opts = E2eOptions::default();
    let max_batch = opts.decode_batches.iter().copied().max().unwrap_or(1);
    let block = 16;
    let context = cfg.bridge.num_latents + opts.prompt_tokens + opts.decode_steps + 4;
    let kv_blocks = max_batch * context.div_ceil(block) + 64;
    let ops = crate::forward::cuda::CudaOps::<u16>::new(gpu.clone(), dtype.into()).map_err(err)?;
    let started = std::time::Instant::now();
    let model = crate::forward::DeviceLynx::load(
        ops,
        crate::forward::weights::Source::Random(0x4c79_6e78),
        &cfg,
        kv_blocks,
        block,
    )
    .map_err(err)?;
    gpu.synchronize().map_err(kernel_err)?;
    tracing::info!(model = %cfg.model_name, seconds = started.elapsed().as_secs_f64(), "random weights ready");
    let rows = run(&model, &opts, Some(copy_gb_s)).map_err(err)?;
    if args.device.json {
        println!("{}", json_line(gpu.info())?);
        println!(
            "{}",
            serde_json::json!({"id": "copy", "shape": "device copy 1 GiB", "unit": "GB/s", "value": copy_gb_s, "ms": copy_ms})
        );
        for r in &rows {
            println!("{}", json_line(r)?);
        }
    } else {
        println!(
            "{} ({}), {} {dtype}, copy {copy_gb_s:.0} GB/s",
            gpu.info().name,
            gpu.info().arch,
            cfg.model_name
        );
        println!(
            "{:<16} {:<52} {:>10} {:>12} {:>9}",
            "id", "what", "ms", "rate", "unit"
        );
        for r in &rows {
            println!(
                "{:<16} {:<52} {:>10.3} {:>12.1} {:>9}{}",
                r.id,
                r.shape,
                r.ms,
                r.value,
                r.unit,
                r.pct_of_limit
                    .map(|p| format!("  {p:.0}% of the weight-streaming limit"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn kernel_err(e: lynx_kernels::KernelError) -> CliError {
    CliError(e.to_string())
}

fn median_ms(mut times: Vec<f32>) -> f64 {
    times.sort_by(f32::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f32::NAN) as f64
}

/// Times the anchor shapes and prints a table (or JSON lines).
pub fn run_bench(args: &BenchArgs) -> Result<(), CliError> {
    let dtype: DType = args
        .dtype
        .parse()
        .map_err(|e: lynx_kernels::KernelError| CliError(e.to_string()))?;
    if args.e2e {
        return run_e2e(args, dtype);
    }
    let gpu = open(&args.device)?;
    let rows = bench::run(&gpu, dtype, args.iters.max(1)).map_err(|e| CliError(e.to_string()))?;
    if args.device.json {
        println!("{}", json_line(gpu.info())?);
        for r in &rows {
            println!("{}", json_line(r)?);
        }
    } else {
        println!(
            "{} ({}, {} SMs), {dtype}",
            gpu.info().name,
            gpu.info().arch,
            gpu.info().sm_count
        );
        println!(
            "{:<16} {:<48} {:>10} {:>10} {:>8}",
            "id", "shape", "ms", "rate", "unit"
        );
        for r in &rows {
            println!(
                "{:<16} {:<48} {:>10.4} {:>10.1} {:>8}{}",
                r.id,
                r.shape,
                r.ms,
                r.value,
                r.unit,
                if r.nan > 0 {
                    format!("  {} NaN!", r.nan)
                } else {
                    String::new()
                }
            );
        }
    }
    if rows.iter().any(|r| r.nan > 0) {
        return Err(CliError("a benchmarked kernel produced NaN".into()));
    }
    Ok(())
}

/// `gpu-check-model` arguments.
#[derive(Debug, Clone, Args)]
pub struct CheckModelArgs {
    /// The device and output format.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Fixture folder: the model in `model/`, the official outputs in `refs/`.
    #[arg(long, default_value = "tests/data/tiny")]
    pub fixture: std::path::PathBuf,
    /// Precisions to check, comma-separated (f32: token ids must equal the host mirror's;
    /// bf16/f16: first-step logits within 1e-2, token agreement reported).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub precision: Vec<String>,
    /// Check a seeded random architecture instead of the fixture (`small`: head dims of 64, so
    /// the tensor-core attention and projection kernels run, which the fixture's do not), on
    /// inputs drawn from a seed; the same weights on both sides, no official outputs.
    #[arg(long)]
    pub random_weights: Option<crate::embedded::Preset>,
}

/// What `gpu-check-model` compares: the fixture's model, or a random architecture.
enum CheckedModel {
    Fixture(Box<crate::checkpoint::release::MergedCheckpoint>),
    Random(Box<crate::config::LynxConfig>),
}

impl CheckedModel {
    fn load<O: crate::forward::ops::Ops>(
        &self,
        ops: O,
    ) -> Result<crate::forward::DeviceLynx<O>, CliError> {
        match self {
            Self::Fixture(merged) => fixture_model(ops, merged),
            Self::Random(config) => crate::forward::DeviceLynx::load(
                ops,
                crate::forward::weights::Source::Random(super::device::RANDOM_WEIGHTS_SEED),
                config,
                CHECK_KV_BLOCKS,
                CHECK_BLOCK_SIZE,
            )
            .map_err(|e| CliError(e.to_string())),
        }
    }
}

/// Largest relative error of the first-step logits a 16-bit run may have.
pub const HALF_LOGITS_TOLERANCE: f32 = 1e-2;
/// Largest relative error of the first-step logits in f32.
pub const F32_LOGITS_TOLERANCE: f32 = 1e-4;

/// The fixture's merged weights loaded onto `ops`.
fn fixture_model<O: crate::forward::ops::Ops>(
    ops: O,
    merged: &crate::checkpoint::release::MergedCheckpoint,
) -> Result<crate::forward::DeviceLynx<O>, CliError> {
    let vb = candle_nn::VarBuilder::from_tensors(
        merged.tensors.clone(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    );
    crate::forward::DeviceLynx::load(
        ops,
        crate::forward::weights::Source::Checkpoint(vb),
        &merged.config,
        CHECK_KV_BLOCKS,
        CHECK_BLOCK_SIZE,
    )
    .map_err(|e| CliError(e.to_string()))
}

fn device_model<S: lynx_kernels::cuda::Elem>(
    gpu: &std::sync::Arc<CudaAttention>,
    precision: lynx_kernels::Precision,
    checked: &CheckedModel,
) -> Result<crate::forward::DeviceLynx<crate::forward::cuda::CudaOps<S>>, CliError> {
    let ops = crate::forward::cuda::CudaOps::<S>::new(gpu.clone(), precision)
        .map_err(|e| CliError(e.to_string()))?;
    checked.load(ops)
}

const CHECK_KV_BLOCKS: usize = 1024;
/// The seed of `gpu-check-model --random-weights`' inputs.
const CHECK_INPUT_SEED: u64 = 7;
const CHECK_BLOCK_SIZE: usize = 16;

/// Runs the whole forward on the GPU at each precision and compares it with the host mirror
/// (and the official outputs) on every fixture case; fails when a case misses its bound.
pub fn run_check_model(args: &CheckModelArgs) -> Result<(), CliError> {
    use crate::verify::{compare, fixture_cases};
    use lynx_kernels::Precision;
    let err = |e: crate::forward::ForwardError| CliError(e.to_string());
    let gpu = std::sync::Arc::new(open(&args.device)?);
    let (checked, cases) = match args.random_weights {
        Some(arch) => {
            let (config, _) = super::device::random_architecture(arch)?;
            let cases = crate::verify::synthetic_cases(&config, CHECK_INPUT_SEED);
            (CheckedModel::Random(Box::new(config)), cases)
        }
        None => {
            let merged =
                crate::checkpoint::release::load_release(&args.fixture.join("model"), None)
                    .map_err(|e| CliError(e.to_string()))?;
            let cases = fixture_cases(&args.fixture).map_err(err)?;
            (CheckedModel::Fixture(Box::new(merged)), cases)
        }
    };
    let reference = checked.load(crate::forward::host::HostOps::default())?;
    let mut failed = 0;
    for name in &args.precision {
        let precision: Precision = name
            .parse()
            .map_err(|e: lynx_kernels::KernelError| CliError(e.to_string()))?;
        let reports = match precision {
            Precision::F32 => compare(
                &device_model::<f32>(&gpu, precision, &checked)?,
                &reference,
                &cases,
            )
            .map_err(err)?,
            _ => {
                // Twice: the prefill writing the cache separately (the default), then filling it
                // inside the attention pass, which the decode steps after it then read.
                let model = device_model::<u16>(&gpu, precision, &checked)?;
                let mut reports = compare(&model, &reference, &cases).map_err(err)?;
                if model.ops().set_prefill_fill(true) {
                    reports.extend(compare(&model, &reference, &cases).map_err(err)?);
                    model.ops().set_prefill_fill(false);
                }
                reports
            }
        };
        for r in &reports {
            let passed = match precision {
                Precision::F32 => {
                    r.logits_rel_err <= F32_LOGITS_TOLERANCE
                        && r.greedy_agreement == 1.0
                        && r.beam_agreement == 1.0
                }
                _ => r.logits_rel_err <= HALF_LOGITS_TOLERANCE,
            };
            failed += usize::from(!passed);
            if args.device.json {
                let mut v = serde_json::to_value(r).map_err(|e| CliError(e.to_string()))?;
                v["passed"] = passed.into();
                println!("{v}");
            } else {
                println!(
                    "{:<26} {:<28} prefix {:>8.1e} logits {:>8.1e} greedy {:>5.1}% beam {:>5.1}% official {}/{} {}",
                    r.case,
                    r.backend,
                    r.prefix_rel_err,
                    r.logits_rel_err,
                    100.0 * r.greedy_agreement,
                    100.0 * r.beam_agreement,
                    r.greedy_official.map_or("-", |b| if b { "yes" } else { "no" }),
                    r.beam_official.map_or("-", |b| if b { "yes" } else { "no" }),
                    if passed { "PASS" } else { "FAIL" }
                );
            }
        }
    }
    if failed > 0 {
        return Err(CliError(format!("{failed} model check case(s) failed")));
    }
    println!("gpu-check-model: every case within bounds");
    Ok(())
}
