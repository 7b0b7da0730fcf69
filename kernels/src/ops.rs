//! Host references of the small kernels (ops.cu): the same arithmetic in f64 with the same
//! roundings to the storage type, on values already rounded to it. The RoPE table the GPU reads
//! is built here too.

use crate::problem::Precision;

/// `x` rounded to `precision` (f32: the nearest f32).
pub fn round(precision: Precision, x: f64) -> f32 {
    match precision.half() {
        Some(d) => d.decode(d.encode(x as f32)),
        None => x as f32,
    }
}

/// LayerNorm of each `cols`-wide row.
pub fn layernorm(dtype: Precision, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let cols = gamma.len();
    x.chunks_exact(cols)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(&v, (&g, &b))| {
                    round(dtype, (v as f64 - mean) * rstd * g as f64 + b as f64)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// HF LLaMA RMSNorm: `weight * round(x * rsqrt(mean(x^2) + eps))`.
pub fn rmsnorm(dtype: Precision, x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let cols = weight.len();
    x.chunks_exact(cols)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(weight)
                .map(move |(&v, &w)| round(dtype, round(dtype, v as f64 * inv) as f64 * w as f64))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, after an optional per-column bias.
pub fn bias_gelu(dtype: Precision, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = match bias {
                Some(b) => round(dtype, v as f64 + b[i % b.len()] as f64) as f64,
                None => v as f64,
            };
            round(
                dtype,
                0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)),
            )
        })
        .collect()
}

/// SiLU, `x / (1 + e^-x)`.
pub fn silu(dtype: Precision, x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| round(dtype, v as f64 / (1.0 + (-(v as f64)).exp())))
        .collect()
}

/// `round(silu(gate)) * up` over the fused `[rows][2 * inter]` gate|up projection.
pub fn silu_mul(dtype: Precision, gu: &[f32], inter: usize) -> Vec<f32> {
    gu.chunks_exact(2 * inter)
        .flat_map(|row| {
            let (gate, up) = row.split_at(inter);
            gate.iter()
                .zip(up)
                .map(|(&g, &u)| {
                    let g = g as f64;
                    round(
                        dtype,
                        round(dtype, g / (1.0 + (-g).exp())) as f64 * u as f64,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The RoPE table as HF LLaMA builds it (f32 `inv_freq`, f32 angles): `(cos, sin)`, each
/// `[max_pos][head_dim / 2]`.
pub fn rope_table(max_pos: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(max_pos * half);
    let mut sin = Vec::with_capacity(max_pos * half);
    for p in 0..max_pos {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// Rotate-half RoPE of `[tokens][heads][head_dim]` at `positions`, cos/sin rounded to the type.
pub fn rope(
    dtype: Precision,
    x: &[f32],
    positions: &[usize],
    table: &(Vec<f32>, Vec<f32>),
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for d in 0..half {
                let c = round(dtype, table.0[pos * half + d] as f64) as f64;
                let s = round(dtype, table.1[pos * half + d] as f64) as f64;
                let (a, b) = (x[base + d] as f64, x[base + d + half] as f64);
                out[base + d] = round(dtype, a * c - b * s);
                out[base + d + half] = round(dtype, b * c + a * s);
            }
        }
    }
    out
}

/// Fused QKV rows `[tokens][3 * heads * head_dim]` -> `(q, k, v)`, RoPE on `q` and `k`.
pub fn qkv_rope_split(
    dtype: Precision,
    qkv: &[f32],
    positions: &[usize],
    table: &(Vec<f32>, Vec<f32>),
    heads: usize,
    head_dim: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = heads * head_dim;
    let part = |i: usize| -> Vec<f32> {
        qkv.chunks_exact(3 * width)
            .flat_map(|r| r[i * width..(i + 1) * width].to_vec())
            .collect()
    };
    (
        rope(dtype, &part(0), positions, table, heads, head_dim),
        rope(dtype, &part(1), positions, table, heads, head_dim),
        part(2),
    )
}

/// `a + scale * b`.
pub fn add_scaled(dtype: Precision, a: &[f32], b: &[f32], scale: f32) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| round(dtype, x as f64 + scale as f64 * y as f64))
        .collect()
}

/// The first index of each row's maximum (NaN never wins).
pub fn argmax(logits: &[f32], cols: usize) -> Vec<u32> {
    logits
        .chunks_exact(cols)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] || row[best].is_nan() && !v.is_nan() {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// The `k` largest log-probabilities of each row (NaN logits ignored), descending (ties: lower
/// index first), with their indices: `(values, indices)`, each `[rows][k]`.
pub fn topk_logprobs(logits: &[f32], cols: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    let (mut vals, mut idx) = (Vec::new(), Vec::new());
    for row in logits.chunks_exact(cols) {
        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = mx
            + row
                .iter()
                .filter(|v| !v.is_nan())
                .map(|&v| (v as f64 - mx).exp())
                .sum::<f64>()
                .ln();
        let mut order: Vec<usize> = (0..cols).filter(|&i| !row[i].is_nan()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in order.iter().take(k) {
            vals.push((row[i] as f64 - lse) as f32);
            idx.push(i as u32);
        }
    }
    (vals, idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_breaks_ties_by_lower_index_and_skips_nan() {
        let logits = [1.0, 3.0, 3.0, f32::NAN, 2.0, f32::NAN, 0.0, 0.0];
        assert_eq!(argmax(&logits, 4), vec![1, 0]);
        let (vals, idx) = topk_logprobs(&logits, 4, 3);
        assert_eq!(idx, vec![1, 2, 0, 0, 2, 3]);
        assert!((vals[0] - vals[1]).abs() < 1e-7 && vals[0] < 0.0);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_norms_are_kept() {
        let table = rope_table(8, 4, 10_000.0);
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(rope(Precision::Bf16, &x, &[0], &table, 1, 4), x.to_vec());
        let y = rope(Precision::Bf16, &x, &[5], &table, 1, 4);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&y) - norm(&x)).abs() / norm(&x) < 2e-2);
        assert_ne!(y, x.to_vec());
    }
}
