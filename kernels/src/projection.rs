//! The resampler's vision-token projection: `K | V = LayerNorm(x + e_frame) W^T`, split into the
//! K and V heads. The problem, the host-side folding of LayerNorm and the frame embedding into
//! the GEMM (what the fused kernel consumes) and the f64 reference.

use crate::problem::DType;
use crate::source::PROJECTION_MAX_FRAMES;
use crate::KernelError;

/// One projection call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisionProjection {
    /// Vision tokens (all sequences, all frames).
    pub rows: usize,
    /// Vision width (1408 for EVA ViT-g).
    pub k_dim: usize,
    /// Width of K (= of V): heads x head_dim (512 in Lynx).
    pub inner: usize,
    /// Frames per video (0: images, no frame embedding).
    pub frames: usize,
    /// Tokens per frame (rows are `[sequence][frame][token]`).
    pub tokens_per_frame: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

impl VisionProjection {
    /// Output width of the GEMM (K and V together).
    pub fn n_dim(&self) -> usize {
        2 * self.inner
    }

    /// Multiply-adds x 2.
    pub fn flops(&self) -> f64 {
        2.0 * self.rows as f64 * self.k_dim as f64 * self.n_dim() as f64
    }

    /// Checks what the kernel relies on.
    pub fn validate(&self) -> Result<(), KernelError> {
        let bad = |m: String| Err(KernelError::Invalid(m));
        if self.rows == 0 || self.k_dim == 0 || self.inner == 0 {
            return bad(format!("empty projection {self:?}"));
        }
        if !self.k_dim.is_multiple_of(8) {
            return bad(format!(
                "vision width {} is not a multiple of 8",
                self.k_dim
            ));
        }
        if !self.inner.is_multiple_of(2) {
            return bad(format!("K/V width {} is odd", self.inner));
        }
        if self.frames > PROJECTION_MAX_FRAMES {
            return bad(format!(
                "{} frames per video (the kernel folds at most {PROJECTION_MAX_FRAMES})",
                self.frames
            ));
        }
        if self.frames > 0 && self.tokens_per_frame == 0 {
            return bad("frames without tokens per frame".into());
        }
        if self.rows > i32::MAX as usize || self.n_dim() > i32::MAX as usize {
            return bad("projection too large".into());
        }
        Ok(())
    }

    /// The frame of row `m`.
    pub fn frame_of(&self, m: usize) -> usize {
        (m / self.tokens_per_frame.max(1)) % self.frames.max(1)
    }
}

/// The weights of one resampler layer's projection, as the checkpoint holds them (f32 values).
#[derive(Debug, Clone, Copy)]
pub struct ProjectionWeights<'a> {
    /// `to_kv.weight`, `[2 * inner][k_dim]`.
    pub w: &'a [f32],
    /// `norm_media.weight`, `[k_dim]`.
    pub gamma: &'a [f32],
    /// `norm_media.bias`, `[k_dim]`.
    pub beta: &'a [f32],
    /// `absolute_frame_pos_embed`, `[frames][k_dim]` (videos only).
    pub frame_embed: Option<&'a [f32]>,
}

/// LayerNorm and the frame embedding folded into the GEMM (see projection.cu), on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedProjection {
    /// `W diag(gamma)` in the storage type, `[n_dim][k_dim]` bits.
    pub w: Vec<u16>,
    /// Row sums of the rounded folded weight, `[n_dim]`.
    pub c1: Vec<f32>,
    /// `W beta`, `[n_dim]`.
    pub c2: Vec<f32>,
    /// The frame embedding in the storage type, `[frames][k_dim]` bits (empty for images).
    pub frame_embed: Vec<u16>,
    /// `e_f W'^T` of the rounded embedding and weight, `[frames][n_dim]`.
    pub frame_proj: Vec<f32>,
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got == want {
        Ok(())
    } else {
        Err(KernelError::Invalid(format!(
            "{what} has {got} values, expected {want}"
        )))
    }
}

impl FoldedProjection {
    /// Folds a layer's weights for `p` (`frames` of `p` picks how many embedding rows are used).
    pub fn fold(
        p: &VisionProjection,
        weights: &ProjectionWeights<'_>,
        dtype: DType,
    ) -> Result<Self, KernelError> {
        p.validate()?;
        let (n, k) = (p.n_dim(), p.k_dim);
        check_len("to_kv weight", weights.w.len(), n * k)?;
        check_len("norm weight", weights.gamma.len(), k)?;
        check_len("norm bias", weights.beta.len(), k)?;
        let mut w = Vec::with_capacity(n * k);
        let mut c1 = Vec::with_capacity(n);
        let mut c2 = Vec::with_capacity(n);
        for row in weights.w.chunks_exact(k) {
            let (mut s1, mut s2) = (0f64, 0f64);
            for ((&wv, &g), &b) in row.iter().zip(weights.gamma).zip(weights.beta) {
                let bits = dtype.encode(wv * g);
                s1 += dtype.decode(bits) as f64;
                s2 += wv as f64 * b as f64;
                w.push(bits);
            }
            c1.push(s1 as f32);
            c2.push(s2 as f32);
        }
        let (mut frame_embed, mut frame_proj) = (Vec::new(), Vec::new());
        if p.frames > 0 {
            let e = weights.frame_embed.ok_or_else(|| {
                KernelError::Invalid("video projection without a frame embedding".into())
            })?;
            if e.len() < p.frames * k {
                return Err(KernelError::Invalid(format!(
                    "frame embedding has {} values, need {} frames x {k}",
                    e.len(),
                    p.frames
                )));
            }
            frame_embed = e[..p.frames * k].iter().map(|&v| dtype.encode(v)).collect();
            for f in 0..p.frames {
                let ef = &frame_embed[f * k..(f + 1) * k];
                for row in w.chunks_exact(k) {
                    let dot: f64 = ef
                        .iter()
                        .zip(row)
                        .map(|(&a, &b)| dtype.decode(a) as f64 * dtype.decode(b) as f64)
                        .sum();
                    frame_proj.push(dot as f32);
                }
            }
        }
        Ok(Self {
            w,
            c1,
            c2,
            frame_embed,
            frame_proj,
        })
    }
}

/// The unfused projection in f64: `(K, V)`, each `[rows][inner]`.
pub fn reference(
    p: &VisionProjection,
    x: &[f32],
    weights: &ProjectionWeights<'_>,
) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    p.validate()?;
    let (k, n, inner) = (p.k_dim, p.n_dim(), p.inner);
    check_len("vision tokens", x.len(), p.rows * k)?;
    check_len("to_kv weight", weights.w.len(), n * k)?;
    let mut out_k = vec![0f32; p.rows * inner];
    let mut out_v = vec![0f32; p.rows * inner];
    let mut normed = vec![0f64; k];
    for (m, row) in x.chunks_exact(k).enumerate() {
        let embed = match (p.frames, weights.frame_embed) {
            (0, _) | (_, None) => None,
            (_, Some(e)) => Some(&e[p.frame_of(m) * k..][..k]),
        };
        for (c, v) in normed.iter_mut().enumerate() {
            *v = row[c] as f64 + embed.map_or(0.0, |e| e[c] as f64);
        }
        let mean = normed.iter().sum::<f64>() / k as f64;
        let var = normed.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / k as f64;
        let rstd = 1.0 / (var + p.eps as f64).sqrt();
        for (c, v) in normed.iter_mut().enumerate() {
            *v = (*v - mean) * rstd * weights.gamma[c] as f64 + weights.beta[c] as f64;
        }
        for (j, wrow) in weights.w.chunks_exact(k).enumerate() {
            let y: f64 = normed.iter().zip(wrow).map(|(&a, &b)| a * b as f64).sum();
            if j < inner {
                out_k[m * inner + j] = y as f32;
            } else {
                out_v[m * inner + j - inner] = y as f32;
            }
        }
    }
    Ok((out_k, out_v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Evaluates the folded form exactly as the kernel does (f32 statistics of x + e, f64 GEMM)
    /// and checks it against the unfused reference: the algebra of the fold, independent of any
    /// GPU.
    #[test]
    fn folded_form_equals_the_unfused_projection() {
        let p = VisionProjection {
            rows: 14,
            k_dim: 24,
            inner: 6,
            frames: 3,
            tokens_per_frame: 2,
            eps: 1e-5,
        };
        let mut seed = 7;
        let mut gen = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
            (0..n).map(|_| offset + scale * lcg(&mut seed)).collect()
        };
        let dtype = DType::Bf16;
        let round = |v: Vec<f32>| -> Vec<f32> {
            v.into_iter()
                .map(|x| dtype.decode(dtype.encode(x)))
                .collect()
        };
        let x = round(gen(p.rows * p.k_dim, 2.0, 3.0));
        let w = gen(p.n_dim() * p.k_dim, 0.5, 0.0);
        let gamma = gen(p.k_dim, 0.2, 1.0);
        let beta = gen(p.k_dim, 0.1, 0.0);
        let e = round(gen(p.frames * p.k_dim, 0.5, 0.0));
        let weights = ProjectionWeights {
            w: &w,
            gamma: &gamma,
            beta: &beta,
            frame_embed: Some(&e),
        };
        let folded = FoldedProjection::fold(&p, &weights, dtype).expect("fold");
        let (want_k, want_v) = reference(&p, &x, &weights).expect("reference");
        let (k, n) = (p.k_dim, p.n_dim());
        let mut max_rel = 0f64;
        for m in 0..p.rows {
            let f = p.frame_of(m);
            let row = &x[m * k..(m + 1) * k];
            let (mut s1, mut s2) = (0f32, 0f32);
            for (c, &v) in row.iter().enumerate() {
                let v = v + dtype.decode(folded.frame_embed[f * k + c]);
                s1 += v;
                s2 += v * v;
            }
            let mean = s1 / k as f32;
            let rstd = 1.0 / (s2 / k as f32 - mean * mean + p.eps).sqrt();
            for j in 0..n {
                let acc: f64 = row
                    .iter()
                    .zip(&folded.w[j * k..(j + 1) * k])
                    .map(|(&a, &b)| a as f64 * dtype.decode(b) as f64)
                    .sum();
                let got = rstd as f64
                    * (acc + folded.frame_proj[f * n + j] as f64
                        - mean as f64 * folded.c1[j] as f64)
                    + folded.c2[j] as f64;
                let want = if j < p.inner {
                    want_k[m * p.inner + j]
                } else {
                    want_v[m * p.inner + j - p.inner]
                } as f64;
                max_rel = max_rel.max((got - want).abs() / want.abs().max(1.0));
            }
        }
        // Only the weight rounding to bf16 separates the two (about 2^-9 relative per element).
        assert!(max_rel < 1e-2, "folded vs unfused: {max_rel}");
        assert!(max_rel > 0.0, "the comparison compared nothing");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ok = VisionProjection {
            rows: 4,
            k_dim: 16,
            inner: 4,
            frames: 0,
            tokens_per_frame: 0,
            eps: 1e-5,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            VisionProjection { k_dim: 12, ..ok },
            VisionProjection { inner: 3, ..ok },
            VisionProjection {
                frames: 17,
                tokens_per_frame: 1,
                ..ok
            },
            VisionProjection { frames: 2, ..ok },
            VisionProjection { rows: 0, ..ok },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let w = vec![0f32; 8 * 16];
        let ones = vec![1f32; 16];
        let video = VisionProjection {
            frames: 2,
            tokens_per_frame: 2,
            ..ok
        };
        let weights = ProjectionWeights {
            w: &w,
            gamma: &ones,
            beta: &ones,
            frame_embed: None,
        };
        assert!(FoldedProjection::fold(&video, &weights, DType::Bf16).is_err());
    }
}
