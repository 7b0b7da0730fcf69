//! The one table of Lynx's weights in the LynxBase key namespace: every tensor the model reads,
//! with its key, shape and role, grouped as the network is (`vision_encoder.*`, `bridge.*`,
//! `LLM.*`). The forward program, the candle oracle, the checkpoint checks and the generated
//! models all read their keys from here, so a new weight is spelled in one place.

use crate::config::{BridgeConfig, LlmConfig, LynxConfig, VisionConfig};

/// What a tensor is for; decides how generated weights initialise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A weight matrix (an `nn.Linear`, the patch convolution); its fan-in is the product of the
    /// trailing dimensions.
    Matrix,
    /// A norm's scale.
    NormScale,
    /// A bias (of a linear layer or a LayerNorm).
    Bias,
    /// A learned embedding added to activations (CLS token, positions, frame positions).
    Embedding,
    /// A lookup table or learned queries (token embeddings, resampler latents).
    Table,
    /// The adapter's learned scalar.
    Scalar,
}

/// One tensor: its checkpoint key, shape and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key, e.g. `LLM.model.norm.weight`.
    pub name: String,
    /// The shape the model expects.
    pub shape: Vec<usize>,
    /// What the tensor is for.
    pub role: Role,
}

impl Key {
    fn new(name: String, shape: &[usize], role: Role) -> Self {
        Self {
            name,
            shape: shape.to_vec(),
            role,
        }
    }

    /// Values in the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the shape holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inputs per output of a matrix (the trailing dimensions); 1 for vectors.
    pub fn fan_in(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>().max(1)
    }
}

/// Something that holds keys, visited in the table's order.
pub trait Keys {
    /// Calls `f` on every key, in order.
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'a Key));

    /// Every key, in order.
    fn all(&self) -> Vec<&Key> {
        let mut out = Vec::new();
        self.each(&mut |k| out.push(k));
        out
    }
}

impl Keys for Key {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'a Key)) {
        f(self)
    }
}

impl<T: Keys> Keys for Option<T> {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'a Key)) {
        if let Some(k) = self {
            k.each(f)
        }
    }
}

impl<T: Keys> Keys for Vec<T> {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'a Key)) {
        for k in self {
            k.each(f)
        }
    }
}

/// Declares a group of keys and visits its fields in declaration order.
macro_rules! key_group {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl Keys for $name {
            fn each<'a>(&'a self, f: &mut dyn FnMut(&'a Key)) {
                $(self.$field.each(f);)*
            }
        }
    };
}

key_group! {
    /// `{prefix}.weight` `[out, in]` (+ `{prefix}.bias` `[out]`) of an `nn.Linear`.
    pub struct LinearKeys {
        /// The weight.
        pub weight: Key,
        /// The bias, when the layer has one.
        pub bias: Option<Key>,
    }
}

impl LinearKeys {
    fn new(prefix: &str, in_dim: usize, out_dim: usize, bias: bool) -> Self {
        Self {
            weight: Key::new(format!("{prefix}.weight"), &[out_dim, in_dim], Role::Matrix),
            bias: bias.then(|| Key::new(format!("{prefix}.bias"), &[out_dim], Role::Bias)),
        }
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.shape[0]
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.weight.fan_in()
    }
}

key_group! {
    /// A LayerNorm (`weight` + `bias`) or an RMSNorm (`weight` only).
    pub struct NormKeys {
        /// The scale.
        pub weight: Key,
        /// The shift (LayerNorm only).
        pub bias: Option<Key>,
    }
}

impl NormKeys {
    fn layer(prefix: &str, dim: usize) -> Self {
        Self {
            weight: Key::new(format!("{prefix}.weight"), &[dim], Role::NormScale),
            bias: Some(Key::new(format!("{prefix}.bias"), &[dim], Role::Bias)),
        }
    }

    fn rms(prefix: &str, dim: usize) -> Self {
        Self {
            weight: Key::new(format!("{prefix}.weight"), &[dim], Role::NormScale),
            bias: None,
        }
    }

    /// Features normalised.
    pub fn dim(&self) -> usize {
        self.weight.shape[0]
    }
}

key_group! {
    /// `vision_encoder.blocks.{i}`: a pre-norm EVA block (q/v biases, no k bias).
    pub struct VitBlockKeys {
        /// Before attention.
        pub norm1: NormKeys,
        /// Before the MLP.
        pub norm2: NormKeys,
        /// `attn.q_proj`.
        pub q: LinearKeys,
        /// `attn.k_proj` (no bias).
        pub k: LinearKeys,
        /// `attn.v_proj`.
        pub v: LinearKeys,
        /// `attn.proj`.
        pub proj: LinearKeys,
        /// `mlp.fc1`.
        pub fc1: LinearKeys,
        /// `mlp.fc2`.
        pub fc2: LinearKeys,
    }
}

key_group! {
    /// The EVA ViT (`vision_encoder.*`) and the video frame positions.
    pub struct VisionKeys {
        /// `absolute_frame_pos_embed` `[1, frames, 1, width]`.
        pub frame_pos: Key,
        /// `vision_encoder.cls_token` `[1, 1, width]`.
        pub cls: Key,
        /// `vision_encoder.pos_embed` `[1, tokens, width]`.
        pub pos: Key,
        /// `vision_encoder.patch_embed.proj`: weight `[width, 3, patch, patch]`.
        pub patch: LinearKeys,
        /// The blocks.
        pub blocks: Vec<VitBlockKeys>,
    }
}

impl VisionKeys {
    /// The keys of `cfg`'s ViT, with `num_frames` frame positions.
    pub fn new(v: &VisionConfig, num_frames: usize) -> Self {
        let (w, p) = (v.width, v.patch_size);
        let enc = "vision_encoder";
        let blocks = (0..v.depth)
            .map(|i| {
                let b = format!("{enc}.blocks.{i}");
                VitBlockKeys {
                    norm1: NormKeys::layer(&format!("{b}.norm1"), w),
                    norm2: NormKeys::layer(&format!("{b}.norm2"), w),
                    q: LinearKeys::new(&format!("{b}.attn.q_proj"), w, w, true),
                    k: LinearKeys::new(&format!("{b}.attn.k_proj"), w, w, false),
                    v: LinearKeys::new(&format!("{b}.attn.v_proj"), w, w, true),
                    proj: LinearKeys::new(&format!("{b}.attn.proj"), w, w, true),
                    fc1: LinearKeys::new(&format!("{b}.mlp.fc1"), w, v.mlp_hidden, true),
                    fc2: LinearKeys::new(&format!("{b}.mlp.fc2"), v.mlp_hidden, w, true),
                }
            })
            .collect();
        let patch = format!("{enc}.patch_embed.proj");
        Self {
            frame_pos: Key::new(
                "absolute_frame_pos_embed".into(),
                &[1, num_frames, 1, w],
                Role::Embedding,
            ),
            cls: Key::new(format!("{enc}.cls_token"), &[1, 1, w], Role::Embedding),
            pos: Key::new(
                format!("{enc}.pos_embed"),
                &[1, v.tokens_per_image(), w],
                Role::Embedding,
            ),
            patch: LinearKeys {
                weight: Key::new(format!("{patch}.weight"), &[w, 3, p, p], Role::Matrix),
                bias: Some(Key::new(format!("{patch}.bias"), &[w], Role::Bias)),
            },
            blocks,
        }
    }
}

key_group! {
    /// `bridge.layers.{i}`: Perceiver cross-attention (`.0`) and its feed-forward (`.1`).
    pub struct BridgeLayerKeys {
        /// `0.norm_media`, over the vision tokens.
        pub norm_media: NormKeys,
        /// `0.norm_latents`.
        pub norm_latents: NormKeys,
        /// `0.to_q`.
        pub to_q: LinearKeys,
        /// `0.to_kv`: the vision-token projection.
        pub to_kv: LinearKeys,
        /// `0.to_out`.
        pub to_out: LinearKeys,
        /// `1.0`: the feed-forward's LayerNorm.
        pub ff_norm: NormKeys,
        /// `1.1`.
        pub ff_in: LinearKeys,
        /// `1.3` (after the GELU at `1.2`).
        pub ff_out: LinearKeys,
    }
}

key_group! {
    /// The Perceiver resampler (`bridge.*`).
    pub struct BridgeKeys {
        /// `bridge.latents` `[latents, hidden]`.
        pub latents: Key,
        /// `bridge.norm`.
        pub norm: NormKeys,
        /// The layers.
        pub layers: Vec<BridgeLayerKeys>,
    }
}

impl BridgeKeys {
    /// The keys of a resampler from `vision_width` tokens to `hidden` latents.
    pub fn new(br: &BridgeConfig, vision_width: usize, hidden: usize) -> Self {
        let inner = br.heads * br.dim_head;
        let layers = (0..br.depth)
            .map(|i| {
                let (a, f) = (
                    format!("bridge.layers.{i}.0"),
                    format!("bridge.layers.{i}.1"),
                );
                BridgeLayerKeys {
                    norm_media: NormKeys::layer(&format!("{a}.norm_media"), vision_width),
                    norm_latents: NormKeys::layer(&format!("{a}.norm_latents"), hidden),
                    to_q: LinearKeys::new(&format!("{a}.to_q"), hidden, inner, false),
                    to_kv: LinearKeys::new(&format!("{a}.to_kv"), vision_width, 2 * inner, false),
                    to_out: LinearKeys::new(&format!("{a}.to_out"), inner, hidden, false),
                    ff_norm: NormKeys::layer(&format!("{f}.0"), hidden),
                    ff_in: LinearKeys::new(&format!("{f}.1"), hidden, br.ff_hidden, false),
                    ff_out: LinearKeys::new(&format!("{f}.3"), br.ff_hidden, hidden, false),
                }
            })
            .collect();
        Self {
            latents: Key::new(
                "bridge.latents".into(),
                &[br.num_latents, hidden],
                Role::Table,
            ),
            norm: NormKeys::layer("bridge.norm", hidden),
            layers,
        }
    }
}

key_group! {
    /// `LLM.model.layers.{i}.output_adapter`.
    pub struct AdapterKeys {
        /// `scaling` `[1]`.
        pub scaling: Key,
        /// `adapter_norm_before` (a LayerNorm).
        pub norm: NormKeys,
        /// `adapter_down`.
        pub down: LinearKeys,
        /// `adapter_up`.
        pub up: LinearKeys,
    }
}

key_group! {
    /// `LLM.model.layers.{i}`: a LLaMA decoder layer, with an adapter on some layers.
    pub struct LlmLayerKeys {
        /// `self_attn.q_proj`.
        pub q: LinearKeys,
        /// `self_attn.k_proj`.
        pub k: LinearKeys,
        /// `self_attn.v_proj`.
        pub v: LinearKeys,
        /// `self_attn.o_proj`.
        pub o: LinearKeys,
        /// `mlp.gate_proj`.
        pub gate: LinearKeys,
        /// `mlp.up_proj`.
        pub up: LinearKeys,
        /// `mlp.down_proj`.
        pub down: LinearKeys,
        /// `input_layernorm` (RMSNorm).
        pub input_norm: NormKeys,
        /// `post_attention_layernorm` (RMSNorm).
        pub post_norm: NormKeys,
        /// `output_adapter`, on the configured layers.
        pub adapter: Option<AdapterKeys>,
    }
}

key_group! {
    /// The LLM (`LLM.*`).
    pub struct LlmKeys {
        /// `LLM.model.embed_tokens.weight` `[vocab, hidden]`.
        pub embed: Key,
        /// `LLM.model.norm` (RMSNorm).
        pub norm: NormKeys,
        /// `LLM.lm_head`.
        pub lm_head: LinearKeys,
        /// The decoder layers.
        pub layers: Vec<LlmLayerKeys>,
    }
}

impl LlmKeys {
    /// The keys of `cfg`'s LLM.
    pub fn new(cfg: &LlmConfig) -> Self {
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let layers = (0..cfg.layers)
            .map(|n| {
                let p = format!("LLM.model.layers.{n}");
                let lin = |name: &str, i, o| LinearKeys::new(&format!("{p}.{name}"), i, o, false);
                let adapter = cfg.adapter_layers.contains(&n).then(|| {
                    let a = format!("{p}.output_adapter");
                    let d = cfg.adapter_dim;
                    AdapterKeys {
                        scaling: Key::new(format!("{a}.scaling"), &[1], Role::Scalar),
                        norm: NormKeys::layer(&format!("{a}.adapter_norm_before"), h),
                        down: LinearKeys::new(&format!("{a}.adapter_down"), h, d, true),
                        up: LinearKeys::new(&format!("{a}.adapter_up"), d, h, true),
                    }
                });
                LlmLayerKeys {
                    q: lin("self_attn.q_proj", h, h),
                    k: lin("self_attn.k_proj", h, h),
                    v: lin("self_attn.v_proj", h, h),
                    o: lin("self_attn.o_proj", h, h),
                    gate: lin("mlp.gate_proj", h, i),
                    up: lin("mlp.up_proj", h, i),
                    down: lin("mlp.down_proj", i, h),
                    input_norm: NormKeys::rms(&format!("{p}.input_layernorm"), h),
                    post_norm: NormKeys::rms(&format!("{p}.post_attention_layernorm"), h),
                    adapter,
                }
            })
            .collect();
        Self {
            embed: Key::new(
                "LLM.model.embed_tokens.weight".into(),
                &[cfg.vocab_size, h],
                Role::Table,
            ),
            norm: NormKeys::rms("LLM.model.norm", h),
            lm_head: LinearKeys::new("LLM.lm_head", h, cfg.vocab_size, false),
            layers,
        }
    }
}

key_group! {
    /// Every weight of a Lynx model.
    pub struct LynxKeys {
        /// The ViT and frame positions.
        pub vision: VisionKeys,
        /// The resampler.
        pub bridge: BridgeKeys,
        /// The LLM.
        pub llm: LlmKeys,
    }
}

impl LynxKeys {
    /// The keys of a model configured by `cfg`.
    pub fn new(cfg: &LynxConfig) -> Self {
        Self {
            vision: VisionKeys::new(&cfg.vision, cfg.num_frames),
            bridge: BridgeKeys::new(&cfg.bridge, cfg.vision.width, cfg.llm.hidden),
            llm: LlmKeys::new(&cfg.llm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::presets::Preset;
    use crate::tokenizer::toy::toy_tokenizer;

    #[test]
    fn every_key_is_unique_and_shaped_by_its_role() {
        let cfg = Preset::Tiny.config(&toy_tokenizer().expect("the toy tokenizer builds"));
        let keys = LynxKeys::new(&cfg);
        let all = keys.all();
        let names: std::collections::HashSet<&str> = all.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names.len(), all.len(), "a key is listed twice");
        for k in &all {
            let vector = k.shape.len() == 1;
            match k.role {
                Role::Matrix => assert!(k.shape.len() >= 2, "{}", k.name),
                Role::NormScale | Role::Bias => assert!(vector, "{}", k.name),
                Role::Scalar => assert_eq!(k.shape, [1], "{}", k.name),
                Role::Embedding | Role::Table => assert!(!vector, "{}", k.name),
            }
        }
        let adapters = cfg.llm.adapter_layers.len();
        let layer = |i: usize| {
            7 + 2
                + if cfg.llm.adapter_layers.contains(&i) {
                    7
                } else {
                    0
                }
        };
        let llm: usize = 3 + (0..cfg.llm.layers).map(layer).sum::<usize>();
        assert!(adapters > 0, "the tiny preset has adapters");
        let vit = 5 + 15 * cfg.vision.depth;
        let bridge = 3 + 11 * cfg.bridge.depth;
        assert_eq!(all.len(), vit + bridge + llm);
    }
}
