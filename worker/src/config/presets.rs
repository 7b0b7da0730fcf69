//! The architectures of the models the project generates itself (`tiny`, `small`): their
//! configuration for a tokenizer.

use crate::config::{
    BridgeConfig, GenerationDefaults, ImageNorm, LlmConfig, LynxConfig, PromptConfig,
    SpecialTokens, VisionConfig,
};
use crate::tokenizer::LynxTokenizer;

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
