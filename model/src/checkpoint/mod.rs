//! Checkpoints: the release layout (torch pickles + HF dir + YAML, merged as the official code does)
//! and our converted layout (safetensors + `lynx.json` + `tokenizer.json`, memory-mapped).

pub mod converted;
pub mod interpolate;
pub mod keys;
pub mod progress;
pub mod release;
pub mod torch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::config::{ConfigError, LynxConfig};
use crate::tokenizer::TokenizerError;
use keys::Keys;

/// Errors raised while finding, reading, merging or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A required file does not exist.
    #[error("missing file: {0}")]
    MissingFile(PathBuf),
    /// A file exists but cannot be parsed (truncated, corrupt, wrong format).
    #[error("corrupt or unreadable checkpoint {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Weights the model needs are absent after loading.
    #[error("{path}: missing {} weight(s): {}", keys.len(), summarize(keys))]
    MissingKeys {
        /// The model dir or file.
        path: PathBuf,
        /// The missing keys.
        keys: Vec<String>,
    },
    /// A weight has the wrong shape.
    #[error("weight {key} has shape {actual:?}, the config needs {expected:?}")]
    WrongShape {
        /// The key.
        key: String,
        /// Shape found.
        actual: Vec<usize>,
        /// Shape needed.
        expected: Vec<usize>,
    },
    /// I/O error on a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Tokenizer files are invalid.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The model could not be built from the weights.
    #[error("cannot build the model: {0}")]
    Model(#[from] candle_core::Error),
}

fn summarize(keys: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", ... and {} more", keys.len() - SHOWN));
    }
    s
}

/// The weight files an HF-style shard index (`*.index.json`, `{"weight_map": {tensor: file}}`)
/// names, in file-name order, each checked to exist in the index's directory.
pub fn shard_files(index: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    #[derive(serde::Deserialize)]
    struct ShardIndex {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read(index).map_err(|source| CheckpointError::Io {
        path: index.to_owned(),
        source,
    })?;
    let idx: ShardIndex = serde_json::from_slice(&text).map_err(|e| CheckpointError::Corrupt {
        path: index.to_owned(),
        message: e.to_string(),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: std::collections::BTreeSet<String> = idx.weight_map.into_values().collect();
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(CheckpointError::MissingFile(p))
            }
        })
        .collect()
}

/// Every weight the model reads, with its shape, for a configuration (from [`keys::LynxKeys`]).
pub fn expected_weights(cfg: &LynxConfig) -> Vec<(String, Vec<usize>)> {
    keys::LynxKeys::new(cfg)
        .all()
        .into_iter()
        .map(|k| (k.name.clone(), k.shape.clone()))
        .collect()
}

/// Fails with every missing key named (then the first wrong shape) when `tensors` does not hold
/// what `cfg` needs.
pub fn check_required_keys(
    cfg: &LynxConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), CheckpointError> {
    check_shapes(cfg, Path::new("merged checkpoint"), |k| {
        tensors.get(k).map(|t| t.dims().to_vec())
    })
}

/// As [`check_required_keys`], for any source of shapes.
pub fn check_shapes(
    cfg: &LynxConfig,
    source: &Path,
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<(), CheckpointError> {
    let expected = expected_weights(cfg);
    let missing: Vec<String> = expected
        .iter()
        .filter(|(k, _)| shape_of(k).is_none())
        .map(|(k, _)| k.clone())
        .collect();
    if !missing.is_empty() {
        return Err(CheckpointError::MissingKeys {
            path: source.to_owned(),
            keys: missing,
        });
    }
    for (k, s) in expected {
        let actual = shape_of(&k).unwrap_or_default();
        if actual != s {
            return Err(CheckpointError::WrongShape {
                key: k,
                actual,
                expected: s,
            });
        }
    }
    Ok(())
}
