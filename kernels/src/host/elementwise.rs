//! The small kernels of the forward in f32, row-parallel: LayerNorm, RMSNorm, GELU, SiLU, the
//! gated SiLU of LLaMA's MLP, the fused-QKV split with RoPE, and scaled adds. Same arithmetic as
//! PyTorch's f32 CPU kernels (mean and variance in f32, HF LLaMA's RMSNorm and RoPE forms).

use rayon::prelude::*;

use super::math::{gelu as gelu1, silu as silu1};
use super::{dispatch, need, rows_per_task};
use crate::KernelError;

/// Elements per parallel task.
const TASK_ELEMS: usize = 1 << 14;

/// Runs `f(row_in, row_out)` over `rows` rows of `cols`, in parallel tasks.
fn map_rows(
    x: &[f32],
    out: &mut [f32],
    rows: usize,
    cols: usize,
    out_cols: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) {
    let per = rows_per_task(rows, cols.max(out_cols), TASK_ELEMS);
    out[..rows * out_cols]
        .par_chunks_mut(per * out_cols)
        .zip(x[..rows * cols].par_chunks(per * cols))
        .for_each(|(o, i)| {
            for (orow, irow) in o.chunks_exact_mut(out_cols).zip(i.chunks_exact(cols)) {
                f(irow, orow);
            }
        });
}

/// `f` over a slice in place, `f` a function marked `#[inline(always)]` (so it is compiled for
/// the dispatched instruction set).
struct InPlace<'a, F>(&'a mut [f32], F);

impl<F: Fn(f32) -> f32> pulp::WithSimd for InPlace<'_, F> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for v in self.0.iter_mut() {
            *v = (self.1)(*v);
        }
    }
}

/// Applies `f` (a function item marked `#[inline(always)]`, not a closure) to the first `n` values of `x` in place, in parallel
/// tasks.
fn map_in_place<F: Fn(f32) -> f32 + Copy + Send + Sync>(x: &mut [f32], n: usize, f: F) {
    x[..n]
        .par_chunks_mut(TASK_ELEMS)
        .for_each(|c| dispatch(InPlace(c, f)));
}

/// `out = silu(gate) * up`, element-wise.
struct SiluMul<'a> {
    gate: &'a [f32],
    up: &'a [f32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for SiluMul<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for ((o, &g), &u) in self.out.iter_mut().zip(self.gate).zip(self.up) {
            *o = silu1(g) * u;
        }
    }
}

/// Sum of a row in f32 lanes (pairwise over the lanes).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let chunks = x.chunks_exact(L);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..L {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// LayerNorm of each `gamma.len()`-wide row.
pub fn layernorm(
    x: &[f32],
    rows: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let cols = gamma.len();
    need("layernorm input", x.len(), rows * cols)?;
    need("layernorm output", out.len(), rows * cols)?;
    need("layernorm bias", beta.len(), cols)?;
    map_rows(x, out, rows, cols, cols, |row, o| {
        let mean = lane_sum(row, |v| v) / cols as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / cols as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((o, &v), (&g, &b)) in o.iter_mut().zip(row).zip(gamma.iter().zip(beta)) {
            *o = (v - mean) * rstd * g + b;
        }
    });
    Ok(())
}

/// HF LLaMA RMSNorm: `weight * (x * rsqrt(mean(x^2) + eps))`.
pub fn rmsnorm(
    x: &[f32],
    rows: usize,
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let cols = weight.len();
    need("rmsnorm input", x.len(), rows * cols)?;
    need("rmsnorm output", out.len(), rows * cols)?;
    map_rows(x, out, rows, cols, cols, |row, o| {
        let inv = 1.0 / (lane_sum(row, |v| v * v) / cols as f32 + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = w * (v * inv);
        }
    });
    Ok(())
}

/// Exact GELU in place over the first `n` values.
pub fn gelu(x: &mut [f32], n: usize) -> Result<(), KernelError> {
    need("gelu input", x.len(), n)?;
    map_in_place(x, n, gelu1);
    Ok(())
}

/// SiLU in place over the first `n` values.
pub fn silu(x: &mut [f32], n: usize) -> Result<(), KernelError> {
    need("silu input", x.len(), n)?;
    map_in_place(x, n, silu1);
    Ok(())
}

/// `out[r] = silu(gu[r][..inter]) * gu[r][inter..]` over the fused gate|up rows.
pub fn silu_mul(gu: &[f32], rows: usize, inter: usize, out: &mut [f32]) -> Result<(), KernelError> {
    need("gate|up", gu.len(), rows * 2 * inter)?;
    need("silu output", out.len(), rows * inter)?;
    map_rows(gu, out, rows, 2 * inter, inter, |row, out| {
        let (gate, up) = row.split_at(inter);
        dispatch(SiluMul { gate, up, out });
    });
    Ok(())
}

/// `acc += scale * b` over the first `n` values.
pub fn add_scaled(acc: &mut [f32], b: &[f32], n: usize, scale: f32) -> Result<(), KernelError> {
    need("accumulator", acc.len(), n)?;
    need("addend", b.len(), n)?;
    acc[..n]
        .par_chunks_mut(TASK_ELEMS)
        .zip(b[..n].par_chunks(TASK_ELEMS))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a += scale * b;
            }
        });
    Ok(())
}

/// RoPE positions and their `(cos, sin)` table `[max_pos][head_dim / 2]`.
#[derive(Debug, Clone, Copy)]
pub struct Rope<'a> {
    /// One position per token.
    pub positions: &'a [u32],
    /// Cosines.
    pub cos: &'a [f32],
    /// Sines.
    pub sin: &'a [f32],
}

/// Shapes of a fused-QKV split.
#[derive(Debug, Clone, Copy)]
pub struct QkvShape {
    /// Tokens.
    pub tokens: usize,
    /// Heads.
    pub heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// Rotate-half RoPE of one `[heads][head_dim]` row at angle table rows `cos`/`sin`.
#[inline(always)]
fn rotate(row: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in row.chunks_exact_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            let (x, y) = (*a, *b);
            *a = x * c - y * s;
            *b = y * c + x * s;
        }
    }
}

/// Splits fused `[tokens][3 * heads * head_dim]` rows into `q`, `k`, `v`, with RoPE on `q` and
/// `k` when `rope` is given.
pub fn qkv_split(
    qkv: &[f32],
    shape: QkvShape,
    rope: Option<Rope<'_>>,
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
) -> Result<(), KernelError> {
    let (t, hd) = (shape.tokens, shape.head_dim);
    let w = shape.heads * hd;
    need("fused qkv", qkv.len(), 3 * t * w)?;
    for (what, b) in [("q", &*q), ("k", &*k), ("v", &*v)] {
        need(what, b.len(), t * w)?;
    }
    let half = hd / 2;
    if let Some(r) = rope {
        need("rope positions", r.positions.len(), t)?;
        let max = r.positions.iter().copied().max().unwrap_or(0) as usize;
        need("rope table", r.cos.len().min(r.sin.len()), (max + 1) * half)?;
    }
    let per = rows_per_task(t, 3 * w, TASK_ELEMS);
    q[..t * w]
        .par_chunks_mut(per * w)
        .zip(k[..t * w].par_chunks_mut(per * w))
        .zip(v[..t * w].par_chunks_mut(per * w))
        .enumerate()
        .for_each(|(task, ((qc, kc), vc))| {
            let rows = qc.chunks_exact_mut(w).zip(kc.chunks_exact_mut(w));
            for (i, ((qr, kr), vr)) in rows.zip(vc.chunks_exact_mut(w)).enumerate() {
                let token = task * per + i;
                let src = &qkv[token * 3 * w..(token + 1) * 3 * w];
                qr.copy_from_slice(&src[..w]);
                kr.copy_from_slice(&src[w..2 * w]);
                vr.copy_from_slice(&src[2 * w..]);
                if let Some(r) = rope {
                    let p = r.positions[token] as usize * half;
                    let (c, s) = (&r.cos[p..p + half], &r.sin[p..p + half]);
                    rotate(qr, hd, c, s);
                    rotate(kr, hd, c, s);
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops as reference;
    use crate::Precision;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::host::test_values(len, seed, 4.0)
    }

    fn close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 2e-6 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn every_kernel_matches_its_f64_reference() {
        let f = Precision::F32;
        let (rows, cols) = (37, 72);
        let x = values(rows * cols, 1);
        let (g, b) = (values(cols, 2), values(cols, 3));
        let mut out = vec![0f32; rows * cols];
        layernorm(&x, rows, &g, &b, 1e-6, &mut out).expect("fits");
        close(
            "layernorm",
            &out,
            &reference::layernorm(f, &x, &g, &b, 1e-6),
        );
        rmsnorm(&x, rows, &g, 1e-6, &mut out).expect("fits");
        close("rmsnorm", &out, &reference::rmsnorm(f, &x, &g, 1e-6));
        let mut y = x.clone();
        gelu(&mut y, x.len()).expect("fits");
        close("gelu", &y, &reference::bias_gelu(f, &x, None));
        let mut y = x.clone();
        silu(&mut y, x.len()).expect("fits");
        close("silu", &y, &reference::silu(f, &x));
        let mut m = vec![0f32; rows * cols / 2];
        silu_mul(&x, rows, cols / 2, &mut m).expect("fits");
        close("silu_mul", &m, &reference::silu_mul(f, &x, cols / 2));
        let mut acc = x.clone();
        add_scaled(&mut acc, &g.repeat(rows), x.len(), 0.5).expect("fits");
        close(
            "add_scaled",
            &acc,
            &reference::add_scaled(f, &x, &g.repeat(rows), 0.5),
        );
    }

    #[test]
    fn qkv_split_with_rope_matches_the_reference() {
        let (tokens, heads, hd) = (5, 3, 8);
        let qkv = values(tokens * 3 * heads * hd, 4);
        let table = reference::rope_table(16, hd, 10_000.0);
        let positions = [0u32, 1, 1, 7, 15];
        let n = tokens * heads * hd;
        let (mut q, mut k, mut v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let rope = Rope {
            positions: &positions,
            cos: &table.0,
            sin: &table.1,
        };
        let shape = QkvShape {
            tokens,
            heads,
            head_dim: hd,
        };
        qkv_split(&qkv, shape, Some(rope), &mut q, &mut k, &mut v).expect("fits");
        let pos: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        let (wq, wk, wv) = reference::qkv_rope_split(Precision::F32, &qkv, &pos, &table, heads, hd);
        close("q", &q, &wq);
        close("k", &k, &wk);
        close("v", &v, &wv);
        let bad = Rope {
            positions: &[0, 1, 1, 7, 16],
            ..rope
        };
        assert!(qkv_split(&qkv, shape, Some(bad), &mut q, &mut k, &mut v).is_err());
    }
}
