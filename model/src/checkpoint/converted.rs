//! Our converted layout: safetensors (sharded above [`SHARD_BYTES`]) + `lynx.json` (the validated
//! [`LynxConfig`]) + `tokenizer.json`. Loading memory-maps the safetensors files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::progress::LoadProgress;
use super::CheckpointError;
use crate::config::LynxConfig;
use crate::tokenizer::LynxTokenizer;

/// Config file of the converted layout.
pub const CONFIG_FILE: &str = "lynx.json";
/// Tokenizer file of the converted layout.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Weights file when a single shard suffices.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Shard index (HF format) when the weights are sharded.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Default largest shard.
pub const SHARD_BYTES: u64 = 4 << 30;

/// True when `dir` holds the converted layout.
pub fn is_converted(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// Writes `tensors` (converted to `dtype`), the config and the tokenizer into `out`, in shards of
/// at most `shard_bytes` (a larger tensor gets a shard of its own). Returns the files written.
pub fn write_converted(
    out: &Path,
    config: &LynxConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer: &LynxTokenizer,
    dtype: DType,
    shard_bytes: u64,
) -> Result<Vec<PathBuf>, CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CheckpointError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut size = 0u64;
    for name in names {
        let t = &tensors[name];
        let bytes = (t.elem_count() * dtype.size_in_bytes()) as u64;
        if size + bytes > shard_bytes && shards.last().is_some_and(|s| !s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(s) = shards.last_mut() {
            s.push(name);
        }
    }
    let n = shards.len();
    let mut written = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 {
            SINGLE_FILE.to_owned()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        let mut part: HashMap<String, Tensor> = HashMap::new();
        for name in shard {
            let t = tensors[*name].to_dtype(dtype)?.contiguous()?;
            total += (t.elem_count() * dtype.size_in_bytes()) as u64;
            weight_map.insert((*name).clone(), file.clone());
            part.insert((*name).clone(), t);
        }
        let path = out.join(&file);
        candle_core::safetensors::save(&part, &path)?;
        tracing::info!(file = %path.display(), tensors = part.len(), "wrote shard");
        written.push(path);
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let path = out.join(INDEX_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(&index).unwrap_or_default())
            .map_err(io(&path))?;
        written.push(path);
    }
    let cfg_path = out.join(CONFIG_FILE);
    let json = serde_json::to_vec_pretty(config).map_err(|e| CheckpointError::Corrupt {
        path: cfg_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&cfg_path, json).map_err(io(&cfg_path))?;
    written.push(cfg_path);
    let tok_path = out.join(TOKENIZER_FILE);
    tokenizer.save_json(&tok_path)?;
    written.push(tok_path);
    Ok(written)
}

/// Safetensors files of a converted dir, in shard order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return super::shard_files(&index);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        Ok(vec![single])
    } else {
        Err(CheckpointError::MissingFile(single))
    }
}

/// A converted checkpoint opened with memory maps.
pub struct ConvertedCheckpoint {
    /// Validated configuration.
    pub config: LynxConfig,
    /// Tokenizer.
    pub tokenizer: LynxTokenizer,
    /// Memory-mapped weights.
    pub weights: candle_core::safetensors::MmapedSafetensors,
}

impl ConvertedCheckpoint {
    /// Opens `dir` and checks that every weight the config needs is present with the right shape.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let config = LynxConfig::from_json_file(&dir.join(CONFIG_FILE))?;
        let tok_path = dir.join(TOKENIZER_FILE);
        if !tok_path.is_file() {
            return Err(CheckpointError::MissingFile(tok_path));
        }
        let tokenizer = LynxTokenizer::from_tokenizer_json(&tok_path)?;
        let files = weight_files(dir)?;
        // SAFETY: the files are mapped read-only; the worker never writes them, and the converted
        // layout is documented as immutable while a worker serves it.
        #[allow(unsafe_code)]
        let weights = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(|e| CheckpointError::Corrupt {
                path: dir.to_owned(),
                message: e.to_string(),
            })?;
        super::check_shapes(&config, dir, |k| {
            weights.get(k).ok().map(|v| v.shape().to_vec())
        })?;
        Ok(Self {
            config,
            tokenizer,
            weights,
        })
    }

    /// A var builder reading f32 tensors from the maps, logging progress.
    pub fn var_builder(self) -> (LynxConfig, LynxTokenizer, VarBuilder<'static>) {
        let backend = ProgressBackend {
            inner: Box::new(self.weights),
            progress: Mutex::new(LoadProgress::new("converted checkpoint")),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
        (self.config, self.tokenizer, vb)
    }
}

/// A var-builder backend that logs tensors and bytes as the model reads them.
struct ProgressBackend {
    inner: Box<dyn SimpleBackend>,
    progress: Mutex<LoadProgress>,
}

impl ProgressBackend {
    fn count(&self, name: &str, t: &Tensor) {
        if let Ok(mut p) = self.progress.lock() {
            p.tensor(name, t);
        }
    }
}

impl SimpleBackend for ProgressBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.count(name, &t);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked(name, dtype, dev)?;
        self.count(name, &t);
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

impl Drop for ProgressBackend {
    fn drop(&mut self) {
        if let Ok(p) = self.progress.lock() {
            p.finish();
        }
    }
}
