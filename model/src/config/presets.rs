//! The architectures the project makes with random weights: `tiny` (the embedded default),
//! `small` (benchmarks), both also written to disk by `crate::embedded`, and `lynx-7b` (the
//! released architecture, made directly on a device by `--random-weights`).

use crate::config::{
    BridgeConfig, GenerationDefaults, ImageNorm, LlmConfig, LynxConfig, PromptConfig,
    SpecialTokens, VisionConfig,
};
use crate::tokenizer::LynxTokenizer;

/// A generated architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// A few hundred thousand parameters: the embedded default, fast enough for every test.
    Tiny,
    /// About 150 M parameters (ViT-B-sized encoder, 8-layer LLM): benchmarks.
    Small,
    /// The released Lynx: EVA ViT-g/14 at 420 px (39 blocks), resampler (3 layers, 32
    /// latents), Vicuna-7B with 16 adapters, vocab 32001. Made on a device, never written out.
    Lynx7b,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Self::Tiny),
            "small" => Ok(Self::Small),
            "lynx-7b" => Ok(Self::Lynx7b),
            other => Err(format!(
                "unknown architecture `{other}` (expected tiny, small or lynx-7b)"
            )),
        }
    }
}

impl Preset {
    /// Name used in directory names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Lynx7b => "lynx-7b",
        }
    }

    /// The configuration: `tiny` and `small` for the toy tokenizer `tok` (its vocabulary, `[PAD]`
    /// included, and special ids); `lynx-7b` has the release's vocabulary and ids (`tok` unused).
    pub fn config(self, tok: &LynxTokenizer) -> LynxConfig {
        let (vision, bridge, llm) = match self {
            Self::Lynx7b => return lynx_7b(),
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
        let bridge = BridgeConfig {
            depth: bridge.0,
            num_latents: bridge.1,
            heads: 8,
            dim_head: 64,
            ff_hidden: bridge.2,
        };
        let llm = LlmConfig {
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
        };
        let tokens = SpecialTokens {
            bos: tok.bos_id(),
            eos: tok.eos_id(),
            pad: tok.pad_id().unwrap_or(tok.eos_id()),
            unk: tok.unk_id(),
        };
        let name = format!("lynx-{}-random", self.name());
        generated(name, vision, bridge, llm, 24, tokens)
    }
}

/// The released architecture, with the release's vocabulary and special ids.
fn lynx_7b() -> LynxConfig {
    let (vision, bridge, llm, name) = (
        VisionConfig {
            image_res: 420,
            patch_size: 14,
            width: 1408,
            depth: 39,
            heads: 16,
            mlp_hidden: 6144,
        },
        BridgeConfig {
            depth: 3,
            num_latents: 32,
            heads: 8,
            dim_head: 64,
            ff_hidden: 4 * 4096,
        },
        LlmConfig {
            hidden: 4096,
            intermediate: 11008,
            layers: 32,
            heads: 32,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 2048,
            vocab_size: 32001,
            adapter_layers: (0..32).step_by(2).collect(),
            adapter_dim: 2048,
        },
        "lynx-7b-random",
    );
    let tokens = SpecialTokens {
        bos: 1,
        eos: 2,
        pad: 0,
        unk: 0,
    };
    generated(name.into(), vision, bridge, llm, 64, tokens)
}

/// A generated architecture's configuration: 5 frames, the release's prompt template and
/// decoding preset (with `max_new_tokens`), CLIP image normalisation.
fn generated(
    model_name: String,
    vision: VisionConfig,
    bridge: BridgeConfig,
    llm: LlmConfig,
    max_new_tokens: usize,
    tokens: SpecialTokens,
) -> LynxConfig {
    LynxConfig {
        model_name,
        vision,
        num_frames: 5,
        bridge,
        llm,
        prompt: PromptConfig {
            template: "User: {question}\nBot:".into(),
            lower_text: true,
            max_input_tokens: 40,
        },
        generation: GenerationDefaults {
            max_new_tokens,
            min_length: 2,
            num_beams: 5,
            length_penalty: -2.0,
            top_p: 0.9,
            top_k: 3,
            temperature: 1.0,
            no_repeat_ngram_size: 2,
            do_sample: true,
        },
        tokens,
        image_norm: ImageNorm {
            mean: crate::vision::preprocess::OPENAI_CLIP_MEAN,
            std: crate::vision::preprocess::OPENAI_CLIP_STD,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lynx_7b_has_the_released_parameter_counts() {
        let cfg = lynx_7b();
        cfg.validate().expect("valid");
        let v = &cfg.vision;
        let vit = v.depth * (4 * v.width * v.width + 3 * v.width + 2 * v.width * v.mlp_hidden)
            + 3 * v.patch_size * v.patch_size * v.width;
        // EVA ViT-g, 39 blocks: 0.987 B (the spec's count; norms and biases are the rest).
        assert!((0.98e9..0.99e9).contains(&(vit as f64)), "{vit}");
        let l = &cfg.llm;
        let llm = l.layers * (4 * l.hidden * l.hidden + 3 * l.hidden * l.intermediate)
            + 2 * l.vocab_size * l.hidden
            + l.adapter_layers.len() * 2 * l.hidden * l.adapter_dim;
        // Vicuna-7B with adapters: 7.007 B.
        assert!((6.99e9..7.01e9).contains(&(llm as f64)), "{llm}");
    }
}
