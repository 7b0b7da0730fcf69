//! LLaMA (Vicuna) with Lynx's bottleneck adapters, as in the official patched transformers 4.28 copy:
//! pre-RMSNorm decoder layers with rotate-half RoPE, causal + padding additive mask, SiLU-gated MLP,
//! and after every `adapter_freq`-th layer `h = up(silu(down(LN(h)))) * scaling + h`.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::nn::{attention, get, merge_heads, split_heads, LayerNorm, Linear, RmsNorm};
use crate::checkpoint::keys::{AdapterKeys, LlmKeys, LlmLayerKeys};
use crate::config::LlmConfig;

/// LayerNorm epsilon inside the adapters.
const ADAPTER_LN_EPS: f64 = 1e-5;

/// Per-layer key/value cache, `[B, H, S, D]` per layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
        }
    }

    /// Cached positions per row.
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    /// Keeps rows `rows` (in that order, repeats allowed): beam reordering.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }

    /// Inserts `n` empty positions before every row's cached ones (left padding).
    pub fn pad_left(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let (b, h, _, d) = k.dims4()?;
            let zeros = Tensor::zeros((b, h, n, d), k.dtype(), k.device())?;
            *k = Tensor::cat(&[&zeros, &*k], 2)?;
            *v = Tensor::cat(&[&zeros, &*v], 2)?;
        }
        Ok(())
    }

    /// Appends `other`'s rows after this cache's rows; both must hold the same number of positions.
    pub fn append_rows(&mut self, other: KvCache) -> Result<()> {
        if self.layers.len() != other.layers.len() {
            candle_core::bail!(
                "caches of {} and {} layers",
                self.layers.len(),
                other.layers.len()
            );
        }
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            *mine = match (mine.take(), theirs) {
                (Some((k1, v1)), Some((k2, v2))) => {
                    Some((Tensor::cat(&[&k1, &k2], 0)?, Tensor::cat(&[&v1, &v2], 0)?))
                }
                (a, b) => a.or(b),
            };
        }
        Ok(())
    }

    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}

/// Rotary tables (`cos`, `sin`), `[max_pos, head_dim]`, computed in f32 as HF does.
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(head_dim: usize, max_pos: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0f32 / (theta as f32).powf(exponent)
            })
            .collect();
        let mut cos = Vec::with_capacity(max_pos * head_dim);
        let mut sin = Vec::with_capacity(max_pos * head_dim);
        for t in 0..max_pos {
            for _ in 0..2 {
                for f in &inv {
                    let a = t as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, head_dim), device)?,
            sin: Tensor::from_vec(sin, (max_pos, head_dim), device)?,
        })
    }

    /// Applies RoPE to `[B, H, T, D]` at `positions` `[B, T]` (u32).
    fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, _, t, d) = x.dims4()?;
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, 1, t, d))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, 1, t, d))?;
        let half = d / 2;
        let x1 = x.narrow(3, 0, half)?;
        let x2 = x.narrow(3, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

/// `LLM.model.layers.{i}.output_adapter`.
#[derive(Debug, Clone)]
struct Adapter {
    norm: LayerNorm,
    down: Linear,
    up: Linear,
    scaling: Tensor,
}

impl Adapter {
    fn load(vb: &VarBuilder, keys: &AdapterKeys) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::load(vb, &keys.norm, ADAPTER_LN_EPS)?,
            down: Linear::load(vb, &keys.down)?,
            up: Linear::load(vb, &keys.up)?,
            scaling: get(vb, &keys.scaling)?,
        })
    }

    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let a = self.down.forward(&self.norm.forward(h)?)?.silu()?;
        self.up.forward(&a)?.broadcast_mul(&self.scaling)? + h
    }
}

/// `LLM.model.layers.{i}`.
#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    adapter: Option<Adapter>,
    heads: usize,
    scale: f64,
}

impl DecoderLayer {
    fn load(vb: &VarBuilder, keys: &LlmLayerKeys, cfg: &LlmConfig) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::load(vb, &keys.input_norm, eps)?,
            q_proj: Linear::load(vb, &keys.q)?,
            k_proj: Linear::load(vb, &keys.k)?,
            v_proj: Linear::load(vb, &keys.v)?,
            o_proj: Linear::load(vb, &keys.o)?,
            post_attention_layernorm: RmsNorm::load(vb, &keys.post_norm, eps)?,
            gate_proj: Linear::load(vb, &keys.gate)?,
            up_proj: Linear::load(vb, &keys.up)?,
            down_proj: Linear::load(vb, &keys.down)?,
            adapter: keys
                .adapter
                .as_ref()
                .map(|a| Adapter::load(vb, a))
                .transpose()?,
            heads: cfg.heads,
            scale: (cfg.head_dim() as f64).powf(-0.5),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        positions: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let q = rotary.apply(
            &split_heads(&self.q_proj.forward(&h)?, self.heads)?,
            positions,
        )?;
        let k = rotary.apply(
            &split_heads(&self.k_proj.forward(&h)?, self.heads)?,
            positions,
        )?;
        let v = split_heads(&self.v_proj.forward(&h)?, self.heads)?;
        let (k, v) = cache.append(layer, k, v)?;
        let a = attention(&(q * self.scale)?, &k, &v, Some(mask))?;
        let x = (x + self.o_proj.forward(&merge_heads(&a)?)?)?;
        let h = self.post_attention_layernorm.forward(&x)?;
        let g = self.gate_proj.forward(&h)?.silu()?;
        let x = (&x + self.down_proj.forward(&(g * self.up_proj.forward(&h)?)?)?)?;
        match &self.adapter {
            Some(a) => a.forward(&x),
            None => Ok(x),
        }
    }
}

/// `LLM`: LLaMA for causal LM with adapters.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    cfg: LlmConfig,
}

impl LlamaModel {
    /// Loads `LLM.*` (`vb` at the root of the key namespace).
    pub fn load(vb: &VarBuilder, keys: &LlmKeys, cfg: &LlmConfig) -> Result<Self> {
        let layers = keys
            .layers
            .iter()
            .map(|l| DecoderLayer::load(vb, l, cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: get(vb, &keys.embed)?,
            layers,
            norm: RmsNorm::load(vb, &keys.norm, cfg.rms_norm_eps)?,
            lm_head: Linear::load(vb, &keys.lm_head)?,
            rotary: Rotary::new(
                cfg.head_dim(),
                cfg.max_position_embeddings,
                cfg.rope_theta,
                vb.device(),
            )?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    /// `embed_tokens(ids)`: `[B, T]` u32 -> `[B, T, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden))
    }

    /// One forward over `embeds` `[B, T, hidden]` appended after the cached positions.
    ///
    /// `positions` `[B, T]` (u32) are the RoPE positions; `attention_mask` `[B, S]` (f32 0/1) covers
    /// the cached and the new positions. Returns logits `[B, T, vocab]`, or `[B, 1, vocab]` for the
    /// last position only when `last_only`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.seq_len();
        let (mb, s) = attention_mask.dims2()?;
        if mb != b || s != past + t {
            candle_core::bail!(
                "attention mask {:?} does not cover {past} cached + {t} new positions for {b} rows",
                attention_mask.dims()
            );
        }
        let max_pos = positions.max_all()?.to_scalar::<u32>()? as usize;
        if max_pos >= self.cfg.max_position_embeddings {
            candle_core::bail!(
                "position {max_pos} exceeds the model's {} positions",
                self.cfg.max_position_embeddings
            );
        }
        let mask = additive_mask(attention_mask, t, past)?;
        let mut x = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &self.rotary, positions, &mask, cache, i)?;
        }
        if last_only {
            x = x.i((.., t - 1..t, ..))?;
        }
        self.lm_head.forward(&self.norm.forward(&x)?)
    }
}

/// HF 4.28 decoder mask: causal + padding, each `finfo(f32).min`, clamped, as `[B, 1, T, S]`.
fn additive_mask(attention_mask: &Tensor, t: usize, past: usize) -> Result<Tensor> {
    let (b, s) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut out = vec![0f32; b * t * s];
    for (row, keep_row) in keep.iter().enumerate() {
        for i in 0..t {
            for (j, &k) in keep_row.iter().enumerate() {
                if j > past + i || k == 0.0 {
                    out[(row * t + i) * s + j] = f32::MIN;
                }
            }
        }
    }
    Tensor::from_vec(out, (b, 1, t, s), attention_mask.device())
}
