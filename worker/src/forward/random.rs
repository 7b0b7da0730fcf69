//! Model architectures that can be instantiated with seeded random weights directly where they
//! run (`--random-weights`), so the full-size model is benchmarked without 17 GB of files.

use crate::config::presets::Preset;
use crate::config::{
    BridgeConfig, GenerationDefaults, ImageNorm, LlmConfig, LynxConfig, PromptConfig,
    SpecialTokens, VisionConfig,
};

/// A randomly initialised architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomModel {
    /// The released Lynx: EVA ViT-g/14 at 420 px (39 blocks), resampler (3 layers, 32
    /// latents), Vicuna-7B with 16 adapters, vocab 32001.
    Lynx7b,
    /// The embedded tiny model's architecture (tests and smoke runs).
    Tiny,
}

impl std::str::FromStr for RandomModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lynx-7b" => Ok(Self::Lynx7b),
            "tiny" => Ok(Self::Tiny),
            other => Err(format!(
                "unknown random architecture `{other}` (expected lynx-7b or tiny)"
            )),
        }
    }
}

impl RandomModel {
    /// The architecture's configuration (`tiny`: the embedded tiny model's, with its toy
    /// tokenizer's vocabulary).
    pub fn config(self) -> Result<LynxConfig, String> {
        let (vision, bridge, llm, name) = match self {
            Self::Lynx7b => (
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
            ),
            Self::Tiny => {
                let tok = crate::tokenizer::toy::toy_tokenizer().map_err(|e| e.to_string())?;
                let mut cfg = Preset::Tiny.config(&tok);
                cfg.model_name = "lynx-tiny-random".into();
                return Ok(cfg);
            }
        };
        Ok(LynxConfig {
            model_name: name.into(),
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
                max_new_tokens: 64,
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
                bos: 1,
                eos: 2,
                pad: 0,
                unk: 0,
            },
            image_norm: ImageNorm {
                mean: crate::vision::preprocess::OPENAI_CLIP_MEAN,
                std: crate::vision::preprocess::OPENAI_CLIP_STD,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lynx_7b_has_the_released_parameter_counts() {
        let cfg = RandomModel::Lynx7b.config().expect("lynx-7b");
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
