//! Checkpoints: the release layout (torch pickles + HF dir + YAML, merged as the official code does)
//! and our converted layout (safetensors + `lynx.json` + `tokenizer.json`, memory-mapped).

pub mod converted;
pub mod interpolate;
pub mod progress;
pub mod release;
pub mod torch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::config::{ConfigError, LynxConfig};
use crate::tokenizer::TokenizerError;

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

/// Every weight the model reads, with its shape, for a configuration.
pub fn expected_weights(cfg: &LynxConfig) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |k: String, s: &[usize]| out.push((k, s.to_vec()));
    let v = &cfg.vision;
    let (w, p) = (v.width, v.patch_size);
    add(
        "absolute_frame_pos_embed".into(),
        &[1, cfg.num_frames, 1, w],
    );
    add("vision_encoder.cls_token".into(), &[1, 1, w]);
    add(
        "vision_encoder.pos_embed".into(),
        &[1, v.tokens_per_image(), w],
    );
    add(
        "vision_encoder.patch_embed.proj.weight".into(),
        &[w, 3, p, p],
    );
    add("vision_encoder.patch_embed.proj.bias".into(), &[w]);
    for i in 0..v.depth {
        let b = format!("vision_encoder.blocks.{i}");
        for n in ["norm1", "norm2"] {
            add(format!("{b}.{n}.weight"), &[w]);
            add(format!("{b}.{n}.bias"), &[w]);
        }
        for n in ["q_proj", "k_proj", "v_proj", "proj"] {
            add(format!("{b}.attn.{n}.weight"), &[w, w]);
        }
        for n in ["q_proj", "v_proj", "proj"] {
            add(format!("{b}.attn.{n}.bias"), &[w]);
        }
        add(format!("{b}.mlp.fc1.weight"), &[v.mlp_hidden, w]);
        add(format!("{b}.mlp.fc1.bias"), &[v.mlp_hidden]);
        add(format!("{b}.mlp.fc2.weight"), &[w, v.mlp_hidden]);
        add(format!("{b}.mlp.fc2.bias"), &[w]);
    }
    let br = &cfg.bridge;
    let t = cfg.llm.hidden;
    let inner = br.heads * br.dim_head;
    add("bridge.latents".into(), &[br.num_latents, t]);
    add("bridge.norm.weight".into(), &[t]);
    add("bridge.norm.bias".into(), &[t]);
    for i in 0..br.depth {
        let b = format!("bridge.layers.{i}");
        add(format!("{b}.0.norm_media.weight"), &[w]);
        add(format!("{b}.0.norm_media.bias"), &[w]);
        add(format!("{b}.0.norm_latents.weight"), &[t]);
        add(format!("{b}.0.norm_latents.bias"), &[t]);
        add(format!("{b}.0.to_q.weight"), &[inner, t]);
        add(format!("{b}.0.to_kv.weight"), &[2 * inner, w]);
        add(format!("{b}.0.to_out.weight"), &[t, inner]);
        add(format!("{b}.1.0.weight"), &[t]);
        add(format!("{b}.1.0.bias"), &[t]);
        add(format!("{b}.1.1.weight"), &[br.ff_hidden, t]);
        add(format!("{b}.1.3.weight"), &[t, br.ff_hidden]);
    }
    let l = &cfg.llm;
    add("LLM.model.embed_tokens.weight".into(), &[l.vocab_size, t]);
    add("LLM.model.norm.weight".into(), &[t]);
    add("LLM.lm_head.weight".into(), &[l.vocab_size, t]);
    for i in 0..l.layers {
        let b = format!("LLM.model.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            add(format!("{b}.self_attn.{n}.weight"), &[t, t]);
        }
        add(format!("{b}.mlp.gate_proj.weight"), &[l.intermediate, t]);
        add(format!("{b}.mlp.up_proj.weight"), &[l.intermediate, t]);
        add(format!("{b}.mlp.down_proj.weight"), &[t, l.intermediate]);
        add(format!("{b}.input_layernorm.weight"), &[t]);
        add(format!("{b}.post_attention_layernorm.weight"), &[t]);
        if l.adapter_layers.contains(&i) {
            let a = format!("{b}.output_adapter");
            add(format!("{a}.scaling"), &[1]);
            add(format!("{a}.adapter_norm_before.weight"), &[t]);
            add(format!("{a}.adapter_norm_before.bias"), &[t]);
            add(format!("{a}.adapter_down.weight"), &[l.adapter_dim, t]);
            add(format!("{a}.adapter_down.bias"), &[l.adapter_dim]);
            add(format!("{a}.adapter_up.weight"), &[t, l.adapter_dim]);
            add(format!("{a}.adapter_up.bias"), &[t]);
        }
    }
    out
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
