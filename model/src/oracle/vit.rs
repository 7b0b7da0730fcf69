//! EVA-01 ViT-g/14 as used by Lynx: patch embedding, CLS token, absolute position embedding, pre-norm
//! blocks with `StableAttention` (q/v biases, no k bias) and an exact-GELU MLP. No final norm: the
//! output of the last block is returned for every token, CLS included.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::nn::{attention, get, merge_heads, split_heads, LayerNorm, Linear};
use crate::checkpoint::keys::{VisionKeys, VitBlockKeys};
use crate::config::VisionConfig;

/// LayerNorm epsilon of the EVA blocks.
const VIT_LN_EPS: f64 = 1e-6;

/// `vision_encoder.blocks.{i}.attn`.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(vb: &VarBuilder, keys: &VitBlockKeys, cfg: &VisionConfig) -> Result<Self> {
        Ok(Self {
            q_proj: Linear::load(vb, &keys.q)?,
            k_proj: Linear::load(vb, &keys.k)?,
            v_proj: Linear::load(vb, &keys.v)?,
            proj: Linear::load(vb, &keys.proj)?,
            heads: cfg.heads,
            scale: ((cfg.width / cfg.heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let q = (split_heads(&self.q_proj.forward(x)?, self.heads)? * self.scale)?;
        let k = split_heads(&self.k_proj.forward(x)?, self.heads)?;
        let v = split_heads(&self.v_proj.forward(x)?, self.heads)?;
        self.proj
            .forward(&merge_heads(&attention(&q, &k, &v, None)?)?)
    }
}

/// `vision_encoder.blocks.{i}`.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn load(vb: &VarBuilder, keys: &VitBlockKeys, cfg: &VisionConfig) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::load(vb, &keys.norm1, VIT_LN_EPS)?,
            attn: Attention::load(vb, keys, cfg)?,
            norm2: LayerNorm::load(vb, &keys.norm2, VIT_LN_EPS)?,
            fc1: Linear::load(vb, &keys.fc1)?,
            fc2: Linear::load(vb, &keys.fc2)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        x + self.fc2.forward(&h)?
    }
}

/// `vision_encoder`: the EVA ViT.
#[derive(Debug, Clone)]
pub struct VisionEncoder {
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    cfg: VisionConfig,
}

impl VisionEncoder {
    /// Loads `vision_encoder.*` (`vb` at the root of the key namespace).
    pub fn load(vb: &VarBuilder, keys: &VisionKeys, cfg: &VisionConfig) -> Result<Self> {
        let blocks = keys
            .blocks
            .iter()
            .map(|b| Block::load(vb, b, cfg))
            .collect::<Result<Vec<_>>>()?;
        let patch = &keys.patch;
        let Some(patch_bias) = &patch.bias else {
            candle_core::bail!("{}: the patch embedding needs a bias", patch.weight.name)
        };
        Ok(Self {
            patch_weight: get(vb, &patch.weight)?.reshape((patch.out_dim(), patch.in_dim()))?,
            patch_bias: get(vb, patch_bias)?,
            cls_token: get(vb, &keys.cls)?,
            pos_embed: get(vb, &keys.pos)?,
            blocks,
            cfg: cfg.clone(),
        })
    }

    /// `[B, 3, R, R]` normalised pixels -> `[B, 1 + (R/14)^2, width]` tokens.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let res = self.cfg.image_res as usize;
        if c != 3 || h != res || w != res {
            candle_core::bail!(
                "ViT expects [B, 3, {res}, {res}] pixels, got {:?}",
                pixels.dims()
            );
        }
        let p = self.cfg.patch_size;
        let g = res / p;
        // Conv2d(kernel = stride = p) as a GEMM over flattened (c, ky, kx) patches, row-major (h, w).
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute(vec![0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let x = patches
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, g * g, self.cfg.width))?;
        let cls = self.cls_token.broadcast_as((b, 1, self.cfg.width))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }
}
