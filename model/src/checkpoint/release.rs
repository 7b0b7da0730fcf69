//! The release layout: `eva_vit_g.pth` + `vicuna-7b/` (HF LLaMA dir) + `finetune_lynx.pt` + the
//! official YAML, merged exactly as the official `LynxBase.__init__` does:
//!
//! 1. EVA raw keys -> `vision_encoder.*` (fused `qkv` split into q/k/v, `q_bias`/`v_bias` renamed,
//!    blocks beyond the used depth dropped), `pos_embed` interpolated to the image grid;
//! 2. Vicuna weights -> `LLM.*`;
//! 3. rows for added tokens (`[PAD]`) appended to `embed_tokens` and `lm_head` as the mean row;
//! 4. every tensor of the Lynx checkpoint (one leading `model.` stripped) overrides.
//!
//! Unlike the official code (which keeps random weights), a bridge, adapter or frame embedding that
//! is still missing after the merge is a hard error naming the keys.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::interpolate::bicubic_resize_grid;
use super::progress::LoadProgress;
use super::torch::TorchCheckpoint;
use super::CheckpointError;
use crate::config::{
    BridgeConfig, GenerationDefaults, HfLlamaConfig, ImageNorm, LlmConfig, LynxConfig, LynxYaml,
    PromptConfig, SpecialTokens, VisionConfig,
};
use crate::tokenizer::LynxTokenizer;

/// File name of the EVA ViT checkpoint inside the model dir.
pub const EVA_FILE: &str = "eva_vit_g.pth";
/// Default YAML name inside the model dir.
pub const YAML_FILE: &str = "LYNX.yaml";
/// EVA ViT-g patch size.
const PATCH_SIZE: usize = 14;
/// Official EVA ViT-g sizes, used when the YAML does not say otherwise.
const OFFICIAL_VIT_WIDTH: usize = 1408;
const OFFICIAL_VIT_DEPTH: usize = 39;
const OFFICIAL_VIT_HEADS: usize = 16;
/// The resampler's hard-coded attention shape in the official code.
const BRIDGE_HEADS: usize = 8;
const BRIDGE_DIM_HEAD: usize = 64;
const BRIDGE_FF_MULT: usize = 4;

/// A fully merged release checkpoint, ready to build the model from.
pub struct MergedCheckpoint {
    /// Validated configuration.
    pub config: LynxConfig,
    /// Every tensor in the LynxBase namespace, f32 on the CPU.
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer (with `[PAD]` added when the LLM dir defines no pad token).
    pub tokenizer: LynxTokenizer,
}

/// Finds the YAML: an explicit file, else `LYNX.yaml` in the model dir.
pub fn yaml_path(model_dir: &Path, config: Option<&Path>) -> PathBuf {
    config
        .map(Path::to_owned)
        .unwrap_or_else(|| model_dir.join(YAML_FILE))
}

/// Loads and merges the release layout found in `model_dir`.
pub fn load_release(
    model_dir: &Path,
    config: Option<&Path>,
) -> Result<MergedCheckpoint, CheckpointError> {
    merge(model_dir, config, true)
}

/// The weights the official model holds *before* the Lynx checkpoint is applied: converted EVA,
/// Vicuna and the `[PAD]` rows (bridge, adapters and frame embedding absent). For inspecting
/// and testing the conversion steps; the Lynx checkpoint must still exist (it decides the ViT
/// depth when the YAML does not).
pub fn load_base_weights(
    model_dir: &Path,
    config: Option<&Path>,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    Ok(merge(model_dir, config, false)?.tensors)
}

fn merge(
    model_dir: &Path,
    config: Option<&Path>,
    apply_lynx: bool,
) -> Result<MergedCheckpoint, CheckpointError> {
    let yaml_file = yaml_path(model_dir, config);
    if !yaml_file.is_file() {
        return Err(CheckpointError::MissingFile(yaml_file));
    }
    let yaml = LynxYaml::from_file(&yaml_file)?;
    check_supported(&yaml)?;
    let llm_dir = model_dir.join(&yaml.llm);
    let hf = HfLlamaConfig::from_file(&require_file(llm_dir.join("config.json"))?)?;
    let tokenizer = LynxTokenizer::from_sentencepiece_dir(&llm_dir)?;
    let lynx_path = yaml
        .checkpoint_candidates(model_dir)
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| CheckpointError::MissingFile(model_dir.join(&yaml.checkpoint)))?;

    let eva = TorchCheckpoint::open(&require_file(model_dir.join(EVA_FILE))?)?;
    let lynx = TorchCheckpoint::open(&lynx_path)?;
    let llm_files = llm_weight_files(&llm_dir)?;

    let vision = vision_config(&yaml, &eva, &lynx)?;
    let mut progress = LoadProgress::new("release checkpoint");
    let mut tensors: HashMap<String, Tensor> = HashMap::new();

    // Tensors the Lynx checkpoint provides are overridden anyway: not read from EVA / Vicuna
    // (with the full release checkpoint this halves load time and peak memory).
    let overridden: HashSet<String> = if apply_lynx {
        lynx.names()
            .iter()
            .map(|n| n.strip_prefix("model.").unwrap_or(n).to_owned())
            .collect()
    } else {
        HashSet::new()
    };

    // 1. EVA.
    let grid = vision.grid();
    for name in eva.names() {
        if let Some(block) = block_index(&name) {
            if block >= vision.depth {
                continue;
            }
        } else if !(name.starts_with("patch_embed.") || name == "cls_token" || name == "pos_embed")
        {
            continue;
        }
        let targets = eva_targets(&name);
        if targets.iter().all(|k| overridden.contains(k)) {
            continue;
        }
        let t = eva.read_f32(&name)?;
        progress.tensor(&name, &t);
        if targets.len() == 3 {
            // Fused qkv: rows [q; k; v].
            let rows = t.dim(0).map_err(|e| corrupt(eva.path(), &name, e))? / 3;
            for (i, key) in targets.into_iter().enumerate() {
                let w = t
                    .narrow(0, i * rows, rows)
                    .map_err(|e| corrupt(eva.path(), &name, e))?;
                tensors.insert(key, w);
            }
        } else if name == "pos_embed" {
            let t = interpolate_pos_embed(&t, grid).map_err(|e| corrupt(eva.path(), &name, e))?;
            tensors.insert("vision_encoder.pos_embed".into(), t);
        } else {
            for key in targets {
                tensors.insert(key, t.clone());
            }
        }
    }

    // 2. Vicuna.
    for file in &llm_files {
        let wanted = |name: &str| {
            !name.ends_with("rotary_emb.inv_freq") && !overridden.contains(&format!("LLM.{name}"))
        };
        for (name, t) in read_weight_file(file, wanted, &mut progress)? {
            tensors.insert(format!("LLM.{name}"), t);
        }
    }

    // 3. Rows for added tokens: the mean of the original rows.
    let vocab = tokenizer.len();
    for key in ["LLM.model.embed_tokens.weight", "LLM.lm_head.weight"] {
        if let Some(t) = tensors.get(key) {
            let t = add_mean_rows(t, vocab).map_err(|e| corrupt(&llm_dir, key, e))?;
            tensors.insert(key.into(), t);
        }
    }

    // 4. Lynx checkpoint overrides.
    let lynx_names = if apply_lynx { lynx.names() } else { Vec::new() };
    for name in lynx_names {
        let key = name.strip_prefix("model.").unwrap_or(&name).to_owned();
        if key.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        let t = lynx.read_f32(&name)?;
        progress.tensor(&name, &t);
        let t = if key == "vision_encoder.pos_embed" {
            interpolate_pos_embed(&t, grid).map_err(|e| corrupt(lynx.path(), &name, e))?
        } else {
            t
        };
        tensors.insert(key, t);
    }
    progress.finish();

    let config = build_config(&yaml, &hf, vision, &tensors, &tokenizer)?;
    if apply_lynx {
        super::check_required_keys(&config, &tensors)?;
    }
    Ok(MergedCheckpoint {
        config,
        tensors,
        tokenizer,
    })
}

fn check_supported(y: &LynxYaml) -> Result<(), CheckpointError> {
    let bad = |key: &'static str, message: String| {
        Err(crate::config::ConfigError::Invalid { key, message }.into())
    };
    if y.vision_encoder != "eva_vit_1b" {
        return bad(
            "vision_encoder",
            format!("unsupported `{}` (only eva_vit_1b)", y.vision_encoder),
        );
    }
    if y.bridge != "resampler" {
        return bad(
            "bridge",
            format!("unsupported `{}` (only resampler)", y.bridge),
        );
    }
    if y.video_encoding != "concate" || !y.add_frame_pos {
        return bad(
            "video_encoding",
            "only `concate` with add_frame_pos: True is supported".into(),
        );
    }
    if !y.use_left_pad {
        return bad("use_left_pad", "only left padding is supported".into());
    }
    if y.use_adapter && y.adapter_freq == 0 {
        return bad("adapter_freq", "must be at least 1".into());
    }
    Ok(())
}

fn require_file(p: PathBuf) -> Result<PathBuf, CheckpointError> {
    if p.is_file() {
        Ok(p)
    } else {
        Err(CheckpointError::MissingFile(p))
    }
}

fn corrupt(path: &Path, name: &str, e: candle_core::Error) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_owned(),
        message: format!("tensor {name}: {e}"),
    }
}

/// The model keys a raw EVA tensor becomes (three for the fused `qkv`).
fn eva_targets(name: &str) -> Vec<String> {
    if let Some(prefix) = name.strip_suffix(".attn.qkv.weight") {
        ["q_proj", "k_proj", "v_proj"]
            .iter()
            .map(|p| format!("vision_encoder.{prefix}.attn.{p}.weight"))
            .collect()
    } else if let Some(prefix) = name.strip_suffix(".attn.q_bias") {
        vec![format!("vision_encoder.{prefix}.attn.q_proj.bias")]
    } else if let Some(prefix) = name.strip_suffix(".attn.v_bias") {
        vec![format!("vision_encoder.{prefix}.attn.v_proj.bias")]
    } else {
        vec![format!("vision_encoder.{name}")]
    }
}

/// `blocks.{i}.…` -> `i`.
fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn vision_config(
    y: &LynxYaml,
    eva: &TorchCheckpoint,
    lynx: &TorchCheckpoint,
) -> Result<VisionConfig, CheckpointError> {
    let patch =
        eva.shape("patch_embed.proj.weight")
            .ok_or_else(|| CheckpointError::MissingKeys {
                path: eva.path().to_owned(),
                keys: vec!["patch_embed.proj.weight".into()],
            })?;
    let width = patch[0];
    if let Some(w) = y.vision_width {
        if w != width {
            return Err(crate::config::ConfigError::Invalid {
                key: "vision_width",
                message: format!(
                    "{w}, but {} holds a ViT of width {width}",
                    eva.path().display()
                ),
            }
            .into());
        }
    }
    let eva_blocks = eva
        .names()
        .iter()
        .filter_map(|n| block_index(n))
        .max()
        .map_or(0, |m| m + 1);
    let lynx_blocks = lynx
        .names()
        .iter()
        .filter_map(|n| {
            block_index(
                n.strip_prefix("model.")
                    .unwrap_or(n)
                    .strip_prefix("vision_encoder.")?,
            )
        })
        .max()
        .map(|m| m + 1);
    let depth = match (y.vision_depth, lynx_blocks) {
        (Some(d), _) => d,
        (None, Some(d)) => d,
        (None, None) if width == OFFICIAL_VIT_WIDTH => OFFICIAL_VIT_DEPTH,
        (None, None) => eva_blocks.saturating_sub(1),
    };
    if depth == 0 || depth > eva_blocks.max(lynx_blocks.unwrap_or(0)) {
        return Err(crate::config::ConfigError::Invalid {
            key: "vision_depth",
            message: format!("{depth}, but the checkpoints hold {eva_blocks} ViT blocks"),
        }
        .into());
    }
    let heads = y.vision_heads.unwrap_or(if width == OFFICIAL_VIT_WIDTH {
        OFFICIAL_VIT_HEADS
    } else {
        width / 88
    });
    let mlp_hidden = eva
        .shape("blocks.0.mlp.fc1.weight")
        .map(|s| s[0])
        .ok_or_else(|| CheckpointError::MissingKeys {
            path: eva.path().to_owned(),
            keys: vec!["blocks.0.mlp.fc1.weight".into()],
        })?;
    Ok(VisionConfig {
        image_res: y.image_res,
        patch_size: patch.get(2).copied().unwrap_or(PATCH_SIZE),
        width,
        depth,
        heads,
        mlp_hidden,
    })
}

/// Interpolates a `[1, 1 + g*g, D]` position embedding to the target grid (no-op if equal).
pub fn interpolate_pos_embed(t: &Tensor, grid: usize) -> candle_core::Result<Tensor> {
    let (_, n, d) = t.dims3()?;
    let old = ((n - 1) as f64).sqrt().round() as usize;
    if old * old + 1 != n {
        candle_core::bail!("pos_embed has {n} tokens, not 1 + a square grid");
    }
    if old == grid {
        return Ok(t.clone());
    }
    tracing::info!(
        from = old,
        to = grid,
        "interpolating ViT position embedding"
    );
    let cls = t.narrow(1, 0, 1)?;
    let flat: Vec<f32> = t.narrow(1, 1, n - 1)?.flatten_all()?.to_vec1()?;
    let out = bicubic_resize_grid(&flat, old, old, d, grid, grid);
    let grid_t = Tensor::from_vec(out, (1, grid * grid, d), &Device::Cpu)?;
    Tensor::cat(&[&cls, &grid_t], 1)
}

fn add_mean_rows(t: &Tensor, rows: usize) -> candle_core::Result<Tensor> {
    let (n, d) = t.dims2()?;
    if n >= rows {
        return Ok(t.clone());
    }
    let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let mut mean = vec![0f64; d];
    for row in data.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += f64::from(*v);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / n as f64) as f32).collect();
    let extra = Tensor::from_vec(mean, (1, d), &Device::Cpu)?.repeat((rows - n, 1))?;
    Tensor::cat(&[t, &extra], 0)
}

/// Weight files of an HF LLaMA dir: safetensors (single or indexed) or pickled `.bin` shards.
fn llm_weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    for index in [
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ] {
        let p = dir.join(index);
        if p.is_file() {
            return super::shard_files(&p);
        }
    }
    for single in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(single);
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    Err(CheckpointError::MissingFile(dir.join("pytorch_model.bin")))
}

fn read_weight_file(
    path: &Path,
    wanted: impl Fn(&str) -> bool,
    progress: &mut LoadProgress,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let mut out = Vec::new();
    if is_safetensors {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file = candle_core::safetensors::BufferedSafetensors::new(bytes).map_err(|e| {
            CheckpointError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            }
        })?;
        let mut names: Vec<String> = file.tensors().into_iter().map(|(n, _)| n).collect();
        names.sort();
        for name in names.into_iter().filter(|n| wanted(n)) {
            let t = file
                .load(&name, &Device::Cpu)
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .map_err(|e| corrupt(path, &name, e))?;
            progress.tensor(&name, &t);
            out.push((name, t));
        }
    } else {
        let ck = TorchCheckpoint::open(path)?;
        for name in ck.names().into_iter().filter(|n| wanted(n)) {
            let t = ck.read_f32(&name)?;
            progress.tensor(&name, &t);
            out.push((name, t));
        }
    }
    Ok(out)
}

fn build_config(
    y: &LynxYaml,
    hf: &HfLlamaConfig,
    vision: VisionConfig,
    tensors: &HashMap<String, Tensor>,
    tok: &LynxTokenizer,
) -> Result<LynxConfig, CheckpointError> {
    let dim0 = |key: &str| tensors.get(key).and_then(|t| t.dims().first().copied());
    let vocab_size = dim0("LLM.model.embed_tokens.weight").unwrap_or(tok.len());
    let adapter_layers: Vec<usize> = if y.use_adapter {
        (0..hf.num_hidden_layers)
            .step_by(y.adapter_freq.max(1))
            .collect()
    } else {
        Vec::new()
    };
    let adapter_dim = adapter_layers
        .first()
        .and_then(|l| {
            dim0(&format!(
                "LLM.model.layers.{l}.output_adapter.adapter_down.weight"
            ))
        })
        .unwrap_or(hf.hidden_size / 2);
    if hf.hidden_act != "silu" {
        return Err(crate::config::ConfigError::Invalid {
            key: "hidden_act",
            message: format!("unsupported `{}` (only silu)", hf.hidden_act),
        }
        .into());
    }
    let pad = tok
        .pad_id()
        .ok_or_else(|| crate::config::ConfigError::Invalid {
            key: "pad_token",
            message: "the tokenizer has no pad token".into(),
        })?;
    let config = LynxConfig {
        model_name: format!("lynx-{}", y.llm),
        vision,
        num_frames: y.data.as_ref().map_or(5, |d| d.num_frames),
        bridge: BridgeConfig {
            depth: y.bridge_depth,
            num_latents: y.num_bridge_tokens,
            heads: BRIDGE_HEADS,
            dim_head: BRIDGE_DIM_HEAD,
            ff_hidden: dim0("bridge.layers.0.1.1.weight")
                .unwrap_or(hf.hidden_size * BRIDGE_FF_MULT),
        },
        llm: LlmConfig {
            hidden: hf.hidden_size,
            intermediate: hf.intermediate_size,
            layers: hf.num_hidden_layers,
            heads: hf.num_attention_heads,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: 10000.0,
            max_position_embeddings: hf.max_position_embeddings,
            vocab_size,
            adapter_layers,
            adapter_dim,
        },
        prompt: PromptConfig {
            template: y.prompt.clone(),
            lower_text: y.lower_text,
            max_input_tokens: y.max_input_tokens,
        },
        generation: GenerationDefaults {
            max_new_tokens: y.max_new_tokens,
            min_length: y.min_length,
            num_beams: y.num_beams,
            length_penalty: y.length_penalty,
            top_p: y.top_p,
            top_k: y.top_k,
            temperature: y.temperature,
            no_repeat_ngram_size: y.no_repeat_ngram_size,
            do_sample: y.use_nucleus_sampling,
        },
        tokens: SpecialTokens {
            bos: tok.bos_id(),
            eos: tok.eos_id(),
            pad,
            unk: tok.unk_id(),
        },
        image_norm: ImageNorm {
            mean: y.image_mean,
            std: y.image_std,
        },
    };
    config.validate()?;
    Ok(config)
}
