//! `--device` and `--random-weights` of `serve`: which compute backend serves, and how its model
//! is built (a model directory's weights uploaded, or a seeded random architecture made on the
//! device).

use std::sync::Arc;

use super::{CliError, ModelArgs, StoreDtype};
use crate::backend::{Backends, Loaded, ServedModel};
use crate::config::LynxConfig;
use crate::embedded::{ensure_preset, kernel_store, toy_tokenizer, Preset};
use crate::forward::cuda::CudaOps;
use crate::forward::host::HostOps;
use crate::forward::ops::Ops;
use crate::forward::weights::Source;
use crate::forward::DeviceLynx;
use crate::loader::open_weights;
use crate::tokenizer::LynxTokenizer;

/// Where the model computes (`--device`).
pub use lynx_serve_flags::Device as DeviceArg;

/// The compute backend of `serve` and how its model is built.
#[derive(Debug, Clone)]
pub struct DeviceFlags {
    /// Where the model computes (`--device`).
    pub device: DeviceArg,
    /// A randomly initialised architecture instead of a model directory (`--random-weights`).
    pub random_weights: Option<Preset>,
}

/// The seed of `--random-weights` models (the same weights on every backend).
pub const RANDOM_WEIGHTS_SEED: u64 = 0x4c79_6e78;

/// A `--random-weights` architecture with the toy tokenizer's vocabulary and special ids.
pub fn random_architecture(arch: Preset) -> Result<(LynxConfig, LynxTokenizer), CliError> {
    let tokenizer = toy_tokenizer().map_err(|e| CliError(e.to_string()))?;
    let mut config = arch.config(&tokenizer);
    config.llm.vocab_size = config.llm.vocab_size.max(tokenizer.len());
    config.tokens.bos = tokenizer.bos_id();
    config.tokens.eos = tokenizer.eos_id();
    config.tokens.pad = tokenizer.pad_id().unwrap_or(tokenizer.eos_id());
    config.tokens.unk = tokenizer.unk_id();
    Ok((config, tokenizer))
}

/// Builds the served model: the forward program on the chosen backend.
pub fn load_served(
    model: &ModelArgs,
    flags: &DeviceFlags,
    dtype: StoreDtype,
    kv_blocks: usize,
    kv_block_size: usize,
) -> Result<Loaded, CliError> {
    let err = |e: &dyn std::fmt::Display| CliError(e.to_string());
    if !kv_block_size.is_power_of_two() {
        return Err(CliError(format!(
            "--kv-block-size {kv_block_size} must be a power of two on --device {:?}",
            flags.device
        )));
    }
    let (config, tokenizer, source) = match flags.random_weights {
        Some(arch) => {
            let (config, tokenizer) = random_architecture(arch)?;
            (config, tokenizer, Source::Random(RANDOM_WEIGHTS_SEED))
        }
        None => {
            let dir = match &model.model {
                Some(d) => d.clone(),
                None => ensure_preset(match model.embedded {
                    super::EmbeddedArg::Tiny => Preset::Tiny,
                    super::EmbeddedArg::Small => Preset::Small,
                })
                .map_err(|e| err(&e))?,
            };
            let opened = open_weights(&dir, model.config.as_deref()).map_err(|e| err(&e))?;
            (
                opened.config,
                opened.tokenizer,
                Source::Checkpoint(opened.weights),
            )
        }
    };
    fn on<O: Ops + 'static>(
        ops: O,
        source: Source<'_>,
        config: &crate::config::LynxConfig,
        kv: (usize, usize),
    ) -> Result<DeviceLynx<O>, CliError> {
        DeviceLynx::load(ops, source, config, kv.0, kv.1).map_err(|e| CliError(e.to_string()))
    }
    let kv = (kv_blocks, kv_block_size);
    let backend = match flags.device {
        DeviceArg::Cpu => Backends::Host(on(HostOps::cpu(), source, &config, kv)?),
        DeviceArg::Mirror => Backends::Host(on(HostOps::mirror(), source, &config, kv)?),
        DeviceArg::Cuda(ordinal) => {
            let gpu = lynx_kernels::cuda::CudaAttention::new(ordinal, &kernel_store())
                .map_err(|e| err(&e))?;
            let gpu = Arc::new(gpu);
            let precision = match dtype {
                StoreDtype::F32 => lynx_kernels::Precision::F32,
                StoreDtype::Bf16 => lynx_kernels::Precision::Bf16,
                StoreDtype::F16 => lynx_kernels::Precision::F16,
            };
            if precision == lynx_kernels::Precision::F32 {
                let ops = CudaOps::<f32>::new(gpu, precision).map_err(|e| err(&e))?;
                Backends::CudaF32(on(ops, source, &config, kv)?)
            } else {
                let ops = CudaOps::<u16>::new(gpu, precision).map_err(|e| err(&e))?;
                Backends::CudaHalf(on(ops, source, &config, kv)?)
            }
        }
    };
    Ok(Loaded {
        model: ServedModel {
            config,
            tokenizer,
            device: backend.describe(),
        },
        backend,
    })
}

/// The model named by `model` on the CPU serving backend (f32), with a KV cache of `kv_blocks`
/// usable blocks of `kv_block_size` tokens: what `serve` and `demo` load by default.
pub fn load_cpu(
    model: &ModelArgs,
    kv_blocks: usize,
    kv_block_size: usize,
) -> Result<Loaded, CliError> {
    let flags = DeviceFlags {
        device: DeviceArg::Cpu,
        random_weights: None,
    };
    load_served(model, &flags, StoreDtype::F32, kv_blocks, kv_block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::EmbeddedArg;

    #[test]
    fn every_backend_takes_random_weights_and_blocks_a_power_of_two() {
        let model = ModelArgs {
            model: None,
            config: None,
            embedded: EmbeddedArg::Tiny,
        };
        let cpu = DeviceFlags {
            device: DeviceArg::Cpu,
            random_weights: Some(Preset::Tiny),
        };
        let served = load_served(&model, &cpu, StoreDtype::F32, 64, 16).expect("tiny random");
        assert!(
            served.model.device.starts_with("cpu f32"),
            "{}",
            served.model.device
        );
        let e = load_served(&model, &cpu, StoreDtype::F32, 64, 12).expect_err("refused");
        assert!(e.0.contains("power of two"), "{e}");
        let mirror = DeviceFlags {
            device: DeviceArg::Mirror,
            random_weights: Some(Preset::Tiny),
        };
        let e = load_served(&model, &mirror, StoreDtype::F32, 64, 12).expect_err("refused");
        assert!(e.0.contains("power of two"), "{e}");
        let served = load_served(&model, &mirror, StoreDtype::F32, 64, 16).expect("tiny random");
        assert_eq!(served.model.device, "host f32");
        assert_eq!(served.model.config.model_name, "lynx-tiny-random");
    }
}
