//! The vision stage as kernel calls: EVA ViT (patch GEMM, CLS + position embedding, pre-norm
//! blocks with fused attention) and the Perceiver resampler (vision-token projection, latent
//! cross-attention, GELU feed-forward) -> the LLM prefix.

use lynx_kernels::projection::VisionProjection;
use lynx_kernels::DenseAttention;

use super::ops::{Linear, Norm, Ops, ProjectionValues};
use super::weights::Loader;
use super::ForwardError;
use crate::checkpoint::keys::{BridgeKeys, VisionKeys};
use crate::config::LynxConfig;

const VIT_LN_EPS: f32 = 1e-6;
const BRIDGE_LN_EPS: f32 = 1e-5;

struct VitBlock<B> {
    norm1: Norm<B>,
    /// `q_proj | k_proj | v_proj` fused into one GEMM (k has no bias: zeros).
    qkv: Linear<B>,
    proj: Linear<B>,
    norm2: Norm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

struct BridgeLayer<O: Ops> {
    proj: O::Proj,
    norm_latents: Norm<O::Buf>,
    to_q: Linear<O::Buf>,
    to_out: Linear<O::Buf>,
    ff_norm: Norm<O::Buf>,
    ff_in: Linear<O::Buf>,
    ff_out: Linear<O::Buf>,
}

/// ViT + resampler weights on a backend.
pub struct Vision<O: Ops> {
    patch: Linear<O::Buf>,
    cls: O::Buf,
    pos: O::Buf,
    blocks: Vec<VitBlock<O::Buf>>,
    latents: O::Buf,
    layers: Vec<BridgeLayer<O>>,
    norm: Norm<O::Buf>,
    cfg: LynxConfig,
}

/// A batch of preprocessed pixels: `images` x `3 x R x R` values, `frames` per sequence (1 for
/// images, the model's frame count for videos).
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    /// Normalised CHW pixels of every image / frame, sequence-major.
    pub values: &'a [f32],
    /// Sequences.
    pub sequences: usize,
    /// Frames per sequence (1: images).
    pub frames: usize,
}

impl<O: Ops> Vision<O> {
    /// Loads `vision_encoder.*`, `absolute_frame_pos_embed` and `bridge.*`.
    pub fn load(l: &Loader<'_, '_, O>, cfg: &LynxConfig) -> Result<Self, ForwardError> {
        let v = &cfg.vision;
        let keys = VisionKeys::new(v, cfg.num_frames);
        let blocks = keys
            .blocks
            .iter()
            .map(|b| {
                Ok(VitBlock {
                    norm1: l.norm(&b.norm1, VIT_LN_EPS)?,
                    qkv: l.fused_linear(&[&b.q, &b.k, &b.v])?,
                    proj: l.linear(&b.proj)?,
                    norm2: l.norm(&b.norm2, VIT_LN_EPS)?,
                    fc1: l.linear(&b.fc1)?,
                    fc2: l.linear(&b.fc2)?,
                })
            })
            .collect::<Result<Vec<_>, ForwardError>>()?;
        let bridge = BridgeKeys::new(&cfg.bridge, v.width, cfg.llm.hidden);
        let frame_embed = l.host(&keys.frame_pos)?;
        let shape = projection_shape(cfg, 1, 0);
        let layers = bridge
            .layers
            .iter()
            .map(|a| {
                let w_kv = l.host(&a.to_kv.weight)?;
                let media_norm = &a.norm_media;
                let gamma = l.host(&media_norm.weight)?;
                let beta = match &media_norm.bias {
                    Some(k) => l.host(k)?,
                    None => vec![0.0; media_norm.dim()],
                };
                let values = ProjectionValues {
                    w_kv: &w_kv,
                    gamma: &gamma,
                    beta: &beta,
                    frame_embed: Some(&frame_embed),
                };
                let video = VisionProjection {
                    frames: cfg.num_frames,
                    tokens_per_frame: v.tokens_per_image(),
                    ..shape
                };
                Ok(BridgeLayer {
                    proj: l.ops().projection(&video, &values)?,
                    norm_latents: l.norm(&a.norm_latents, BRIDGE_LN_EPS)?,
                    to_q: l.linear(&a.to_q)?,
                    to_out: l.linear(&a.to_out)?,
                    ff_norm: l.norm(&a.ff_norm, BRIDGE_LN_EPS)?,
                    ff_in: l.linear(&a.ff_in)?,
                    ff_out: l.linear(&a.ff_out)?,
                })
            })
            .collect::<Result<Vec<_>, ForwardError>>()?;
        Ok(Self {
            patch: l.linear(&keys.patch)?,
            cls: l.tensor(&keys.cls)?,
            pos: l.tensor(&keys.pos)?,
            blocks,
            latents: l.tensor(&bridge.latents)?,
            layers,
            norm: l.norm(&bridge.norm, BRIDGE_LN_EPS)?,
            cfg: cfg.clone(),
        })
    }

    /// ViT output `[images][tokens][width]` for `images` images of CHW pixels.
    pub fn vit(&self, ops: &O, pixels: &[f32], images: usize) -> Result<O::Buf, ForwardError> {
        let v = &self.cfg.vision;
        let (res, p, w) = (v.image_res as usize, v.patch_size, v.width);
        let (g, t) = (v.grid(), v.tokens_per_image());
        if pixels.len() != images * 3 * res * res || images == 0 {
            return Err(ForwardError::Shape(format!(
                "{} pixel values for {images} images of 3x{res}x{res}",
                pixels.len()
            )));
        }
        // Conv2d(kernel = stride = p) as a GEMM over (c, ky, kx) patches in (h, w) order.
        let cols = 3 * p * p;
        let mut patches = Vec::with_capacity(images * g * g * cols);
        for img in pixels.chunks_exact(3 * res * res) {
            for gy in 0..g {
                for gx in 0..g {
                    for c in 0..3 {
                        for ky in 0..p {
                            let row = (c * res + gy * p + ky) * res + gx * p;
                            patches.extend_from_slice(&img[row..row + p]);
                        }
                    }
                }
            }
        }
        let patches = ops.upload(&patches)?;
        let mut emb = ops.alloc(images * g * g * w)?;
        ops.linear(&patches, images * g * g, &self.patch, &mut emb)?;
        let rows = images * t;
        let mut x = ops.alloc(rows * w)?;
        let cls_dst: Vec<u32> = (0..images).map(|i| (i * t) as u32).collect();
        let zeros = vec![0u32; images];
        ops.copy_rows(
            &self.cls,
            Some(&ops.indices(&zeros, 1)?),
            &mut x,
            Some(&ops.indices(&cls_dst, rows)?),
            images,
            w,
        )?;
        let patch_dst: Vec<u32> = (0..images * g * g)
            .map(|i| ((i / (g * g)) * t + 1 + i % (g * g)) as u32)
            .collect();
        ops.copy_rows(
            &emb,
            None,
            &mut x,
            Some(&ops.indices(&patch_dst, rows)?),
            images * g * g,
            w,
        )?;
        ops.add_rows(&mut x, &self.pos, rows, w, 1, t)?;
        let hd = w / v.heads;
        let attn = DenseAttention::new(images, v.heads, t, t, hd);
        let mut h = ops.alloc(rows * w)?;
        let (mut q, mut k, mut vv, mut a) = (
            ops.alloc(rows * w)?,
            ops.alloc(rows * w)?,
            ops.alloc(rows * w)?,
            ops.alloc(rows * w)?,
        );
        let mut f = ops.alloc(rows * v.mlp_hidden)?;
        let mut qkv = ops.alloc(3 * rows * w)?;
        for b in &self.blocks {
            ops.norm(&x, rows, &b.norm1, &mut h)?;
            ops.linear(&h, rows, &b.qkv, &mut qkv)?;
            ops.qkv_split(&qkv, rows, v.heads, hd, None, &mut q, &mut k, &mut vv)?;
            ops.attention(&attn, &q, &k, &vv, &mut a)?;
            ops.linear_add(&a, rows, &b.proj, &mut x)?;
            ops.norm(&x, rows, &b.norm2, &mut h)?;
            ops.linear(&h, rows, &b.fc1, &mut f)?;
            ops.gelu(&mut f, rows, v.mlp_hidden)?;
            ops.linear_add(&f, rows, &b.fc2, &mut x)?;
        }
        Ok(x)
    }

    /// The LLM prefix `[sequences][latents][hidden]` of a pixel batch.
    pub fn encode(&self, ops: &O, px: Pixels<'_>) -> Result<O::Buf, ForwardError> {
        let cfg = &self.cfg;
        if px.frames != 1 && px.frames != cfg.num_frames {
            return Err(ForwardError::Shape(format!(
                "{} frames per video, the model takes {}",
                px.frames, cfg.num_frames
            )));
        }
        let media = self.vit(ops, px.values, px.sequences * px.frames)?;
        let frames = if px.frames > 1 { px.frames } else { 0 };
        self.resample(ops, &media, px.sequences, frames)
    }

    /// The resampler over `sequences` x (frames or 1) x tokens vision tokens.
    pub fn resample(
        &self,
        ops: &O,
        media: &O::Buf,
        sequences: usize,
        frames: usize,
    ) -> Result<O::Buf, ForwardError> {
        let cfg = &self.cfg;
        let br = &cfg.bridge;
        let (hidden, inner, l) = (cfg.llm.hidden, br.heads * br.dim_head, br.num_latents);
        let p = projection_shape(cfg, sequences, frames);
        let n = p.rows / sequences;
        let rows = sequences * l;
        let mut lat = ops.alloc(rows * hidden)?;
        let src: Vec<u32> = (0..rows).map(|i| (i % l) as u32).collect();
        ops.copy_rows(
            &self.latents,
            Some(&ops.indices(&src, l)?),
            &mut lat,
            None,
            rows,
            hidden,
        )?;
        let (mut k, mut v) = (ops.alloc(p.rows * inner)?, ops.alloc(p.rows * inner)?);
        let (mut h, mut q, mut a) = (
            ops.alloc(rows * hidden)?,
            ops.alloc(rows * inner)?,
            ops.alloc(rows * inner)?,
        );
        let mut f = ops.alloc(rows * br.ff_hidden)?;
        let attn = DenseAttention::new(sequences, br.heads, l, n, br.dim_head);
        for layer in &self.layers {
            ops.project(media, &p, &layer.proj, &mut k, &mut v)?;
            ops.norm(&lat, rows, &layer.norm_latents, &mut h)?;
            ops.linear(&h, rows, &layer.to_q, &mut q)?;
            ops.attention(&attn, &q, &k, &v, &mut a)?;
            ops.linear_add(&a, rows, &layer.to_out, &mut lat)?;
            ops.norm(&lat, rows, &layer.ff_norm, &mut h)?;
            ops.linear(&h, rows, &layer.ff_in, &mut f)?;
            ops.gelu(&mut f, rows, br.ff_hidden)?;
            ops.linear_add(&f, rows, &layer.ff_out, &mut lat)?;
        }
        let mut out = ops.alloc(rows * hidden)?;
        ops.norm(&lat, rows, &self.norm, &mut out)?;
        Ok(out)
    }
}

/// The projection problem of `sequences` sequences (`frames` = 0: images).
fn projection_shape(cfg: &LynxConfig, sequences: usize, frames: usize) -> VisionProjection {
    let t = cfg.vision.tokens_per_image();
    VisionProjection {
        rows: sequences * frames.max(1) * t,
        k_dim: cfg.vision.width,
        inner: cfg.bridge.heads * cfg.bridge.dim_head,
        frames,
        tokens_per_frame: t,
        eps: BRIDGE_LN_EPS,
    }
}
