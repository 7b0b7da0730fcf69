//! Small layers shared by the three Lynx sub-models, computed in f32 with the same operation order
//! as the PyTorch modules they mirror (two-pass LayerNorm, fp32 RMSNorm, max-subtracted softmax).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::checkpoint::keys::{Key, LinearKeys, NormKeys};

/// The tensor `key` names, at its shape, from the root of the key namespace.
pub fn get(vb: &VarBuilder, key: &Key) -> Result<Tensor> {
    vb.get(key.shape.as_slice(), &key.name)
}

/// `nn.Linear`: `y = x W^T (+ b)`, weight `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads the layer's weight (and bias) from the root of the key namespace.
    pub fn load(vb: &VarBuilder, keys: &LinearKeys) -> Result<Self> {
        Ok(Self {
            weight: get(vb, &keys.weight)?,
            bias: keys.bias.as_ref().map(|k| get(vb, k)).transpose()?,
        })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// `nn.LayerNorm` over the last dimension, with affine weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads the norm's weight and bias from the root of the key namespace.
    pub fn load(vb: &VarBuilder, keys: &NormKeys, eps: f64) -> Result<Self> {
        let Some(bias) = &keys.bias else {
            candle_core::bail!("{}: a LayerNorm needs a bias", keys.weight.name)
        };
        Ok(Self {
            weight: get(vb, &keys.weight)?,
            bias: get(vb, bias)?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        xc.broadcast_mul(&inv)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// LLaMA RMSNorm: `x * rsqrt(mean(x^2) + eps) * weight`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads the norm's weight from the root of the key namespace.
    pub fn load(vb: &VarBuilder, keys: &NormKeys, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: get(vb, &keys.weight)?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
    }
}

/// Softmax over the last dimension (max-subtracted, f32).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax_last_dim(x)
}

/// Scaled dot-product attention on `[B, H, Tq, D]` x `[B, H, Tk, D]`, with an optional additive mask
/// broadcastable to `[B, H, Tq, Tk]`. `q` must already carry the scale.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let scores = q.contiguous()?.matmul(&k.contiguous()?.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    softmax_last_dim(&scores)?.matmul(&v.contiguous()?)
}

/// Splits `[B, T, H*D]` into heads `[B, H, T, D]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, w) = x.dims3()?;
    x.reshape((b, t, heads, w / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Merges heads `[B, H, T, D]` into `[B, T, H*D]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}

/// Checks that a tensor is f32 (the CPU reference computes in f32 only).
pub fn ensure_f32(x: &Tensor) -> Result<()> {
    if x.dtype() != DType::F32 {
        candle_core::bail!("expected f32 input, got {:?}", x.dtype())
    }
    Ok(())
}
