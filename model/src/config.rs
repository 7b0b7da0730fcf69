//! Model configuration: the official Lynx YAML (`LYNX.yaml`), the HF LLaMA `config.json`, and the
//! validated [`LynxConfig`] that the model is built from (also stored as `lynx.json` in the converted
//! layout).
//!
//! Two layers, as in the checkpoint world: raw serde structs that mirror the files ([`LynxYaml`],
//! [`HfLlamaConfig`]), then one validated config whose sizes are checked against the weights.

pub mod presets;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors raised while reading or validating configuration files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A YAML key has the wrong type or the document is malformed.
    #[error("invalid YAML config {path}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A JSON config has the wrong shape.
    #[error("invalid JSON config {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A value is outside what the model supports.
    #[error("invalid config value `{key}`: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why it is rejected.
        message: String,
    },
}

/// `data:` section of the official YAML.
#[derive(Debug, Clone, Deserialize)]
pub struct DataSection {
    /// Frames per video fed to the model (the frame embedding has exactly this many rows).
    #[serde(default = "default_num_frames")]
    pub num_frames: usize,
}

fn default_num_frames() -> usize {
    5
}

/// The official Lynx YAML config (`configs/LYNX.yaml`), with the keys the worker uses.
///
/// Unknown keys (datasets, eval files, ...) are ignored; a known key with a wrong type is an error
/// naming that key. `vision_width`, `vision_depth` and `vision_heads` are our additions: the
/// official code hard-codes the EVA ViT-g sizes (1408 / 39 / 16), which stay the defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct LynxYaml {
    /// Prompt template, e.g. `"User: {question}\nBot:"`.
    pub prompt: String,
    /// `"image"` or `"video"` (which vision key the eval files use).
    #[serde(default)]
    pub vision_prompt_dict: Option<String>,
    /// Data options (frames per video).
    #[serde(default)]
    pub data: Option<DataSection>,
    /// Vision encoder family; only `eva_vit_1b` exists.
    #[serde(default = "default_vision_encoder")]
    pub vision_encoder: String,
    /// ViT width (ours; default 1408).
    #[serde(default)]
    pub vision_width: Option<usize>,
    /// ViT depth actually used (ours; default 39).
    #[serde(default)]
    pub vision_depth: Option<usize>,
    /// ViT attention heads (ours; default 16).
    #[serde(default)]
    pub vision_heads: Option<usize>,
    /// How video frames are combined; only `concate` exists.
    #[serde(default = "default_video_encoding")]
    pub video_encoding: String,
    /// Whether the frame position embedding is added (must be true).
    #[serde(default = "default_true")]
    pub add_frame_pos: bool,
    /// LLM directory name under the model dir (`vicuna-7b`).
    #[serde(rename = "LLM", default = "default_llm")]
    pub llm: String,
    /// Whether the LLM has adapters.
    #[serde(default = "default_true")]
    pub use_adapter: bool,
    /// An adapter after every `adapter_freq`-th decoder layer, starting at layer 0.
    #[serde(default = "default_adapter_freq")]
    pub adapter_freq: usize,
    /// Bridge type; only `resampler` exists.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Perceiver resampler depth.
    pub bridge_depth: usize,
    /// Number of resampler latents (vision tokens given to the LLM).
    pub num_bridge_tokens: usize,
    /// Left padding for batches (must be true).
    #[serde(default = "default_true")]
    pub use_left_pad: bool,
    /// Lower-case the prompt.
    #[serde(default = "default_true")]
    pub lower_text: bool,
    /// Square input resolution of the ViT.
    pub image_res: u32,
    /// Per-channel normalisation mean.
    pub image_mean: [f32; 3],
    /// Per-channel normalisation std.
    pub image_std: [f32; 3],
    /// Lynx checkpoint path (relative to the official repository root, or to the model dir).
    pub checkpoint: String,
    /// Keep only the last this-many prompt tokens (BOS included).
    pub max_input_tokens: usize,
    /// Default number of generated tokens.
    pub max_new_tokens: usize,
    /// Minimum total length (the BOS placeholder counts) before EOS is allowed.
    #[serde(default)]
    pub min_length: usize,
    /// Beams for the release decoding.
    #[serde(default = "default_one")]
    pub num_beams: usize,
    /// Beam length penalty exponent.
    #[serde(default = "default_length_penalty")]
    pub length_penalty: f64,
    /// Nucleus sampling threshold.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Top-k sampling.
    #[serde(default)]
    pub top_k: usize,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// No-repeat n-gram size (0 = off).
    #[serde(default)]
    pub no_repeat_ngram_size: usize,
    /// Beam sampling (`true`) or plain beam search (`false`) for the release preset.
    #[serde(default)]
    pub use_nucleus_sampling: bool,
}

fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_vision_encoder() -> String {
    "eva_vit_1b".into()
}
fn default_video_encoding() -> String {
    "concate".into()
}
fn default_llm() -> String {
    "vicuna-7b".into()
}
fn default_bridge() -> String {
    "resampler".into()
}
fn default_adapter_freq() -> usize {
    2
}
fn default_length_penalty() -> f64 {
    1.0
}
fn default_top_p() -> f64 {
    1.0
}
fn default_temperature() -> f64 {
    1.0
}

impl LynxYaml {
    /// Reads and parses a YAML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_at(&text, path)
    }

    /// Parses YAML text; `path` is only used in error messages.
    pub fn from_str_at(text: &str, path: &Path) -> Result<Self, ConfigError> {
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Resolves the `checkpoint` path. The released YAML says `./data/finetune_lynx.pt`, relative
    /// to the official repository root whose `data/` folder is `model_dir`; a path relative to
    /// `model_dir` itself is accepted too, as is an absolute path.
    pub fn checkpoint_candidates(&self, model_dir: &Path) -> Vec<PathBuf> {
        let p = Path::new(&self.checkpoint);
        if p.is_absolute() {
            return vec![p.to_owned()];
        }
        let mut out = vec![model_dir.join(p)];
        let stripped = p.strip_prefix("./").unwrap_or(p);
        if let Ok(rest) = stripped.strip_prefix("data") {
            out.push(model_dir.join(rest));
        }
        if let Some(name) = p.file_name() {
            out.push(model_dir.join(name));
        }
        out.dedup();
        out
    }
}

/// The HF `config.json` of the LLaMA/Vicuna directory (the fields the model uses).
#[derive(Debug, Clone, Deserialize)]
pub struct HfLlamaConfig {
    /// Hidden width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Vocabulary of the original LLaMA (without the added `[PAD]`).
    pub vocab_size: usize,
    /// Rotary tables are built for this many positions.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// BOS id.
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    /// EOS id.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}
fn default_bos() -> u32 {
    1
}
fn default_eos() -> u32 {
    2
}

impl HfLlamaConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })
    }
}

/// EVA ViT sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Square input resolution.
    pub image_res: u32,
    /// Patch size (14 for EVA ViT-g/14).
    pub patch_size: usize,
    /// Token width.
    pub width: usize,
    /// Blocks used.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp_hidden: usize,
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_res as usize / self.patch_size
    }
    /// Tokens per image: CLS + patches.
    pub fn tokens_per_image(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// Perceiver resampler sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeConfig {
    /// Layers.
    pub depth: usize,
    /// Latent queries (= vision tokens given to the LLM).
    pub num_latents: usize,
    /// Attention heads (8 in the official code).
    pub heads: usize,
    /// Head width (64 in the official code).
    pub dim_head: usize,
    /// Feed-forward hidden width.
    pub ff_hidden: usize,
}

/// LLaMA + adapters sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmConfig {
    /// Hidden width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Rotary table length.
    pub max_position_embeddings: usize,
    /// Rows of the embedding and lm_head (the `[PAD]` row included).
    pub vocab_size: usize,
    /// Layers followed by an adapter.
    pub adapter_layers: Vec<usize>,
    /// Adapter bottleneck width.
    pub adapter_dim: usize,
}

impl LlmConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// Prompt construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptConfig {
    /// Template with a `{question}` placeholder.
    pub template: String,
    /// Lower-case the formatted prompt.
    pub lower_text: bool,
    /// Keep only the last this-many tokens (BOS included).
    pub max_input_tokens: usize,
}

/// Decoding defaults from the YAML (the official `generate` call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    /// New tokens.
    pub max_new_tokens: usize,
    /// Minimum total length incl. the BOS placeholder.
    pub min_length: usize,
    /// Beams.
    pub num_beams: usize,
    /// Length penalty exponent.
    pub length_penalty: f64,
    /// Top-p.
    pub top_p: f64,
    /// Top-k.
    pub top_k: usize,
    /// Temperature.
    pub temperature: f64,
    /// No-repeat n-gram size.
    pub no_repeat_ngram_size: usize,
    /// Whether the release preset samples.
    pub do_sample: bool,
}

/// Special token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// `<s>`.
    pub bos: u32,
    /// `</s>`.
    pub eos: u32,
    /// `[PAD]` (the row added by the official code).
    pub pad: u32,
    /// `<unk>`.
    pub unk: u32,
}

/// Image normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageNorm {
    /// Mean per channel.
    pub mean: [f32; 3],
    /// Std per channel.
    pub std: [f32; 3],
}

/// The validated model configuration (`lynx.json` in the converted layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LynxConfig {
    /// Name shown in logs and model info.
    pub model_name: String,
    /// Vision encoder.
    pub vision: VisionConfig,
    /// Frames per video.
    pub num_frames: usize,
    /// Resampler.
    pub bridge: BridgeConfig,
    /// Language model.
    pub llm: LlmConfig,
    /// Prompt.
    pub prompt: PromptConfig,
    /// Decoding defaults.
    pub generation: GenerationDefaults,
    /// Special ids.
    pub tokens: SpecialTokens,
    /// Image normalisation.
    pub image_norm: ImageNorm,
}

impl LynxConfig {
    /// Reads `lynx.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Self = serde_json::from_slice(&text).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks internal consistency (sizes divisible, adapters inside the model, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.vision.patch_size == 0
            || !(self.vision.image_res as usize).is_multiple_of(self.vision.patch_size)
        {
            return bad(
                "image_res",
                format!(
                    "{} is not a multiple of the patch size {}",
                    self.vision.image_res, self.vision.patch_size
                ),
            );
        }
        if self.vision.heads == 0 || !self.vision.width.is_multiple_of(self.vision.heads) {
            return bad(
                "vision_heads",
                format!(
                    "ViT width {} is not divisible by {} heads",
                    self.vision.width, self.vision.heads
                ),
            );
        }
        if self.llm.heads == 0
            || !self.llm.hidden.is_multiple_of(self.llm.heads)
            || !self.llm.head_dim().is_multiple_of(2)
        {
            return bad(
                "num_attention_heads",
                format!(
                    "LLM width {} does not split into {} heads of even width",
                    self.llm.hidden, self.llm.heads
                ),
            );
        }
        if let Some(&l) = self
            .llm
            .adapter_layers
            .iter()
            .find(|&&l| l >= self.llm.layers)
        {
            return bad(
                "adapter_freq",
                format!(
                    "adapter after layer {l}, but the LLM has {} layers",
                    self.llm.layers
                ),
            );
        }
        if self.num_frames == 0 {
            return bad("num_frames", "must be at least 1".into());
        }
        if self.prompt.max_input_tokens == 0 {
            return bad("max_input_tokens", "must be at least 1".into());
        }
        if !self.prompt.template.contains("{question}") {
            return bad(
                "prompt",
                "the template has no {question} placeholder".into(),
            );
        }
        if self.generation.num_beams == 0 {
            return bad("num_beams", "must be at least 1".into());
        }
        Ok(())
    }

    /// Formats the prompt as the official dataset does: `template.format(question).strip()`, then
    /// lower-cased when `lower_text`.
    pub fn format_prompt(&self, question: &str) -> String {
        let text = self.prompt.template.replace("{question}", question);
        let text = crate::tokenizer::python_strip(&text);
        if self.prompt.lower_text {
            text.to_lowercase()
        } else {
            text.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY_YAML: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/tiny/model/LYNX.yaml"
    );

    #[test]
    fn reads_the_official_yaml_format() {
        let y = LynxYaml::from_file(Path::new(TINY_YAML)).expect("fixture yaml");
        assert_eq!(y.prompt, "User: {question}\nBot:");
        assert_eq!(y.image_res, 56);
        assert_eq!(y.bridge_depth, 2);
        assert_eq!(y.num_bridge_tokens, 8);
        assert_eq!(y.vision_heads, Some(4));
        assert_eq!(y.data.as_ref().map(|d| d.num_frames), Some(5));
        assert_eq!(y.length_penalty, -2.0);
        assert!(y.use_nucleus_sampling);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = std::fs::read_to_string(TINY_YAML)
            .expect("fixture yaml")
            .replace("image_res: 56", "image_res: \"large\"");
        let err = LynxYaml::from_str_at(&text, Path::new("x.yaml")).expect_err("must fail");
        assert!(err.to_string().contains("image_res"), "{err}");
    }

    #[test]
    fn released_checkpoint_path_resolves_inside_the_model_dir() {
        let text = std::fs::read_to_string(TINY_YAML)
            .expect("fixture yaml")
            .replace("./finetune_lynx.pt", "./data/finetune_lynx.pt");
        let y = LynxYaml::from_str_at(&text, Path::new("x.yaml")).expect("yaml");
        let c = y.checkpoint_candidates(Path::new("/m"));
        assert!(c.contains(&PathBuf::from("/m/finetune_lynx.pt")), "{c:?}");
    }
}
