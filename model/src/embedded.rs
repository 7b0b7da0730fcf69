//! Models the project generates itself, deterministically: the embedded `tiny` default (used when
//! no `--model` is given) and a `small` (~150 M parameter) model for benchmarks. Both use the real
//! architecture with random weights and a small SentencePiece tokenizer of our own, and are written
//! in the converted layout, so they load through exactly the same code as a converted checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::checkpoint::converted::{is_converted, write_converted, SHARD_BYTES};
use crate::checkpoint::keys::{Keys, LynxKeys, Role};
use crate::checkpoint::CheckpointError;
pub use crate::config::presets::Preset;
use crate::config::LynxConfig;
pub use crate::tokenizer::toy::toy_tokenizer;

/// Bumped whenever the generated content changes, so cached copies are regenerated.
pub const EMBEDDED_VERSION: u32 = 1;
/// Seed of the embedded weights.
const SEED: u64 = 0x4c79_6e78;

/// Standard normal samples (Box-Muller over ChaCha20).
struct Normal(ChaCha20Rng);

impl Normal {
    fn sample(&mut self) -> f32 {
        let u = |r: &mut ChaCha20Rng| ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let (a, b) = (u(&mut self.0), u(&mut self.0));
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    }
}

/// Random weights for every tensor `cfg` needs: norm scales and the adapter scaling at 1, biases
/// at 0, everything else N(0, 0.02). Deterministic in `seed`.
pub fn random_weights(cfg: &LynxConfig, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = Normal(ChaCha20Rng::seed_from_u64(seed));
    let mut out = HashMap::new();
    for key in LynxKeys::new(cfg).all() {
        let n = key.len();
        let data: Vec<f32> = match key.role {
            Role::NormScale | Role::Scalar => vec![1.0; n],
            Role::Bias => vec![0.0; n],
            Role::Matrix | Role::Embedding | Role::Table => {
                (0..n).map(|_| 0.02 * rng.sample()).collect()
            }
        };
        out.insert(
            key.name.clone(),
            Tensor::from_vec(data, key.shape.as_slice(), &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Writes a generated model in the converted layout into `dir`.
pub fn write_preset(preset: Preset, dir: &Path) -> Result<LynxConfig, CheckpointError> {
    let tok = toy_tokenizer()?;
    let cfg = preset.config(&tok);
    let weights = random_weights(&cfg, SEED)?;
    write_converted(dir, &cfg, &weights, &tok, DType::F32, SHARD_BYTES)?;
    Ok(cfg)
}

/// Directory holding generated models: `$LYNX_CACHE_DIR`, else `$XDG_CACHE_HOME/lynx-serve`,
/// else `$HOME/.cache/lynx-serve`, else the system temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LYNX_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("lynx-serve");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("lynx-serve");
    }
    std::env::temp_dir().join("lynx-serve")
}

/// Where the worker image keeps the GPU kernels `lynx-worker compile-kernels` built.
pub const PREBUILT_KERNELS: &str = "/usr/local/share/lynx-serve/kernels";

/// Where the GPU kernels are looked up: the prebuilt folder (`$LYNX_KERNEL_DIR`, default
/// [`PREBUILT_KERNELS`]), then the cache's `kernels` folder, where a compilation is kept.
pub fn kernel_store() -> lynx_kernels::nvrtc::KernelStore {
    lynx_kernels::nvrtc::KernelStore {
        prebuilt: vec![prebuilt_kernel_dir()],
        cache: Some(cache_dir().join("kernels")),
    }
}

/// The prebuilt kernels' folder: `$LYNX_KERNEL_DIR`, else [`PREBUILT_KERNELS`].
pub fn prebuilt_kernel_dir() -> PathBuf {
    std::env::var_os("LYNX_KERNEL_DIR")
        .map_or_else(|| PathBuf::from(PREBUILT_KERNELS), PathBuf::from)
}

/// Returns the directory of the generated `preset`, generating it first when absent. Generation
/// writes to a temporary sibling and renames it, so concurrent callers never see a partial model.
/// Meant for `tiny` and `small` (what `--embedded` offers); `lynx-7b` would be tens of GB.
pub fn ensure_preset(preset: Preset) -> Result<PathBuf, CheckpointError> {
    let root = cache_dir();
    let dir = root.join(format!("{}-v{EMBEDDED_VERSION}", preset.name()));
    if is_converted(&dir) {
        return Ok(dir);
    }
    let tmp = root.join(format!(
        ".{}-v{EMBEDDED_VERSION}.{}",
        preset.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    tracing::info!(preset = preset.name(), dir = %dir.display(), "generating model");
    write_preset(preset, &tmp)?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if is_converted(&dir) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(source) => Err(CheckpointError::Io { path: dir, source }),
    }
}
