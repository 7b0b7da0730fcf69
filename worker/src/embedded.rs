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
use crate::checkpoint::{expected_weights, CheckpointError};
use crate::config::{
    BridgeConfig, GenerationDefaults, ImageNorm, LlmConfig, LynxConfig, PromptConfig,
    SpecialTokens, VisionConfig,
};
use crate::tokenizer::LynxTokenizer;

/// Bumped whenever the generated content changes, so cached copies are regenerated.
pub const EMBEDDED_VERSION: u32 = 1;
/// Seed of the embedded weights.
const SEED: u64 = 0x4c79_6e78;

/// A generated model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// A few hundred thousand parameters: the embedded default, fast enough for every test.
    Tiny,
    /// About 150 M parameters (ViT-B-sized encoder, 8-layer LLM): benchmarks.
    Small,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Self::Tiny),
            "small" => Ok(Self::Small),
            other => Err(format!("unknown preset `{other}` (expected tiny or small)")),
        }
    }
}

impl Preset {
    /// Name used in directory names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
        }
    }

    /// The configuration for a tokenizer of `vocab` entries (`[PAD]` included).
    pub fn config(self, tok: &LynxTokenizer) -> LynxConfig {
        let (vision, bridge, llm) = match self {
            Self::Tiny => (
                VisionConfig {
                    image_res: 56,
                    patch_size: 14,
                    width: 32,
                    depth: 2,
                    heads: 4,
                    mlp_hidden: 139,
                },
                (2, 8, 256),
                (64, 176, 4, 4, 32),
            ),
            Self::Small => (
                VisionConfig {
                    image_res: 224,
                    patch_size: 14,
                    width: 768,
                    depth: 16,
                    heads: 12,
                    mlp_hidden: 3072,
                },
                (2, 32, 2048),
                (512, 1376, 8, 8, 256),
            ),
        };
        let (hidden, intermediate, layers, heads, adapter_dim) = llm;
        LynxConfig {
            model_name: format!("lynx-{}-random", self.name()),
            vision,
            num_frames: 5,
            bridge: BridgeConfig {
                depth: bridge.0,
                num_latents: bridge.1,
                heads: 8,
                dim_head: 64,
                ff_hidden: bridge.2,
            },
            llm: LlmConfig {
                hidden,
                intermediate,
                layers,
                heads,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                max_position_embeddings: 2048,
                vocab_size: tok.len(),
                adapter_layers: (0..layers).step_by(2).collect(),
                adapter_dim,
            },
            prompt: PromptConfig {
                template: "User: {question}\nBot:".into(),
                lower_text: true,
                max_input_tokens: 40,
            },
            generation: GenerationDefaults {
                max_new_tokens: 24,
                min_length: 2,
                num_beams: 5,
                length_penalty: -2.0,
                top_p: 0.9,
                top_k: 3,
                temperature: 1.0,
                no_repeat_ngram_size: 2,
                do_sample: true,
            },
            tokens: SpecialTokens {
                bos: tok.bos_id(),
                eos: tok.eos_id(),
                pad: tok.pad_id().unwrap_or(tok.eos_id()),
                unk: tok.unk_id(),
            },
            image_norm: ImageNorm {
                mean: crate::vision::preprocess::OPENAI_CLIP_MEAN,
                std: crate::vision::preprocess::OPENAI_CLIP_STD,
            },
        }
    }
}

/// Standard normal samples (Box-Muller over ChaCha20).
struct Normal(ChaCha20Rng);

impl Normal {
    fn sample(&mut self) -> f32 {
        let u = |r: &mut ChaCha20Rng| ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let (a, b) = (u(&mut self.0), u(&mut self.0));
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    }
}

/// Random weights for every tensor `cfg` needs: norms at 1 / 0, adapter scaling 1, everything
/// else N(0, 0.02). Deterministic in `seed`.
pub fn random_weights(cfg: &LynxConfig, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = Normal(ChaCha20Rng::seed_from_u64(seed));
    let mut out = HashMap::new();
    for (name, shape) in expected_weights(cfg) {
        let n: usize = shape.iter().product();
        let is_norm_weight = shape.len() == 1 && name.ends_with(".weight");
        let data: Vec<f32> = if name.ends_with(".scaling") || is_norm_weight {
            vec![1.0; n]
        } else if shape.len() == 1 && name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| 0.02 * rng.sample()).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
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

/// Returns the directory of the generated `preset`, generating it first when absent. Generation
/// writes to a temporary sibling and renames it, so concurrent callers never see a partial model.
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

/// Words whose pieces the toy vocabulary holds (every prefix of `▁word`, so BPE can build them).
const TOY_WORDS: &[&str] = &[
    "user", "bot", "what", "is", "in", "the", "image", "this", "picture", "photo", "video",
    "describe", "how", "many", "there", "are", "color", "colors", "of", "a", "an", "and", "on",
    "with", "people", "person", "cat", "dog", "house", "sky", "sun", "red", "blue", "green",
    "yellow", "happens", "doing", "where", "who", "which", "answer", "briefly", "moving", "toy",
    "does", "do", "it", "you", "see", "tell", "me", "about", "scene", "hill", "grass", "tree",
    "car", "man", "woman",
];

/// The toy tokenizer of the generated models: a SentencePiece BPE model (byte fallback, dummy
/// prefix, LLaMA special ids) built in code, loaded through the same path as a real
/// `tokenizer.model`, with `[PAD]` added as the official code does.
pub fn toy_tokenizer() -> Result<LynxTokenizer, crate::tokenizer::TokenizerError> {
    use crate::tokenizer::sp_proto::{
        ModelProto, NormalizerSpec, SentencePiece, TrainerSpec, MODEL_BPE, TYPE_BYTE as BYTE,
        TYPE_CONTROL as CONTROL, TYPE_NORMAL as NORMAL, TYPE_UNKNOWN as UNKNOWN,
    };
    use prost::Message;
    let mut pieces: Vec<(String, i32)> = vec![
        ("<unk>".into(), UNKNOWN),
        ("<s>".into(), CONTROL),
        ("</s>".into(), CONTROL),
    ];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), BYTE)));
    let mut normal: Vec<String> = Vec::new();
    let mut push = |p: String| {
        if !normal.contains(&p) {
            normal.push(p);
        }
    };
    for w in TOY_WORDS {
        let word: Vec<char> = std::iter::once('\u{2581}').chain(w.chars()).collect();
        for end in 2..=word.len() {
            push(word[..end].iter().collect());
        }
    }
    for c in "\u{2581}abcdefghijklmnopqrstuvwxyz0123456789.,?!:;'-()".chars() {
        push(c.to_string());
    }
    pieces.extend(normal.into_iter().map(|p| (p, NORMAL)));
    let model = ModelProto {
        pieces: pieces
            .into_iter()
            .enumerate()
            .map(|(i, (piece, kind))| SentencePiece {
                piece: Some(piece),
                score: Some(if kind == NORMAL { -(i as f32) } else { 0.0 }),
                r#type: Some(kind),
            })
            .collect(),
        trainer_spec: Some(TrainerSpec {
            model_type: Some(MODEL_BPE),
            treat_whitespace_as_suffix: Some(false),
            byte_fallback: Some(true),
        }),
        normalizer_spec: Some(NormalizerSpec {
            name: Some("identity".into()),
            precompiled_charsmap: None,
            add_dummy_prefix: Some(true),
            remove_extra_whitespaces: Some(false),
            escape_whitespaces: Some(true),
            normalization_rule_tsv: None,
        }),
        denormalizer_spec: None,
    };
    LynxTokenizer::from_sentencepiece_bytes(&model.encode_to_vec(), Some("[PAD]"))
}
