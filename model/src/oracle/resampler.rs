//! The Perceiver resampler (`bridge`): learned latents cross-attend to the vision tokens (keys and
//! values from the media only), then a GELU feed-forward, each with a residual; a final LayerNorm.
//! Its output already has the LLM's width: it is the projection of the vision tokens into the
//! LLM's embedding space.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::nn::{attention, get, merge_heads, split_heads, LayerNorm, Linear};
use crate::checkpoint::keys::{BridgeKeys, BridgeLayerKeys};
use crate::config::BridgeConfig;

/// LayerNorm epsilon in the resampler (`nn.LayerNorm` default).
const LN_EPS: f64 = 1e-5;

/// `bridge.layers.{i}.0`: cross-attention of the latents over the media tokens.
#[derive(Debug, Clone)]
struct PerceiverAttention {
    norm_media: LayerNorm,
    norm_latents: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    heads: usize,
    inner: usize,
    scale: f64,
}

impl PerceiverAttention {
    fn load(vb: &VarBuilder, keys: &BridgeLayerKeys, cfg: &BridgeConfig) -> Result<Self> {
        Ok(Self {
            norm_media: LayerNorm::load(vb, &keys.norm_media, LN_EPS)?,
            norm_latents: LayerNorm::load(vb, &keys.norm_latents, LN_EPS)?,
            to_q: Linear::load(vb, &keys.to_q)?,
            to_kv: Linear::load(vb, &keys.to_kv)?,
            to_out: Linear::load(vb, &keys.to_out)?,
            heads: cfg.heads,
            inner: cfg.heads * cfg.dim_head,
            scale: (cfg.dim_head as f64).powf(-0.5),
        })
    }

    fn forward(&self, media: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let xm = self.norm_media.forward(media)?;
        let l = self.norm_latents.forward(latents)?;
        let q = (split_heads(&self.to_q.forward(&l)?, self.heads)? * self.scale)?;
        let kv = self.to_kv.forward(&xm)?;
        let k = split_heads(&kv.narrow(2, 0, self.inner)?, self.heads)?;
        let v = split_heads(&kv.narrow(2, self.inner, self.inner)?, self.heads)?;
        self.to_out
            .forward(&merge_heads(&attention(&q, &k, &v, None)?)?)
    }
}

/// `bridge.layers.{i}.1`: `Sequential(LayerNorm, Linear, GELU, Linear)`.
#[derive(Debug, Clone)]
struct FeedForward {
    norm: LayerNorm,
    fc_in: Linear,
    fc_out: Linear,
}

impl FeedForward {
    fn load(vb: &VarBuilder, keys: &BridgeLayerKeys) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::load(vb, &keys.ff_norm, LN_EPS)?,
            fc_in: Linear::load(vb, &keys.ff_in)?,
            fc_out: Linear::load(vb, &keys.ff_out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc_out
            .forward(&self.fc_in.forward(&self.norm.forward(x)?)?.gelu_erf()?)
    }
}

/// `bridge`: the Perceiver resampler.
#[derive(Debug, Clone)]
pub struct Resampler {
    latents: Tensor,
    layers: Vec<(PerceiverAttention, FeedForward)>,
    norm: LayerNorm,
}

impl Resampler {
    /// Loads `bridge.*` (`vb` at the root of the key namespace).
    pub fn load(vb: &VarBuilder, keys: &BridgeKeys, cfg: &BridgeConfig) -> Result<Self> {
        let layers = keys
            .layers
            .iter()
            .map(|l| {
                Ok((
                    PerceiverAttention::load(vb, l, cfg)?,
                    FeedForward::load(vb, l)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            latents: get(vb, &keys.latents)?,
            layers,
            norm: LayerNorm::load(vb, &keys.norm, LN_EPS)?,
        })
    }

    /// `[B, N, vision_width]` vision tokens -> `[B, num_latents, text_width]`.
    pub fn forward(&self, media: &Tensor) -> Result<Tensor> {
        let b = media.dim(0)?;
        let (n, w) = self.latents.dims2()?;
        let mut latents = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((b, n, w))?
            .contiguous()?;
        for (attn, ff) in &self.layers {
            latents = (attn.forward(media, &latents)? + &latents)?;
            latents = (ff.forward(&latents)? + &latents)?;
        }
        self.norm.forward(&latents)
    }
}
