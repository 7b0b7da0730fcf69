//! Attention on the CPU in f32, one task per (sequence, head) pair, with a max-subtracted softmax
//! and the vectorised `exp`. Dense attention (vision, resampler, prefill) computes `Q K^T` and
//! `P V` as two packed GEMMs read in place from the `[tokens][heads][head_dim]` tensors, the keys
//! a query cannot see (causal limit, Lynx's pad gap) weighted zero; decode reads the paged KV
//! cache in place with dot products four keys at a time.

use rayon::prelude::*;

use super::gemm::{dots, matmul, Strided};
use super::math::exp;
use super::{dispatch, need};
use crate::problem::{DecodeAttention, DenseAttention};
use crate::KernelError;

/// `out = softmax(scale * q . k_j) . v_j` over the `len` cached keys `key(j)` / values
/// `value(j)` (zeros when there are none). `scores` is scratch.
#[inline(always)]
fn attend_cached<'a>(
    q: &[f32],
    len: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    scores.clear();
    let mut j = 0;
    while j + 4 <= len {
        scores.extend(dots([key(j), key(j + 1), key(j + 2), key(j + 3)], q));
        j += 4;
    }
    for j in j..len {
        scores.push(dots([key(j)], q)[0]);
    }
    dispatch(Softmax {
        row: scores,
        visible: [0..0, 0..len],
        scale,
    });
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(value(j)) {
            *o += p * x;
        }
    }
}

/// `row = softmax(scale * row)` over the visible key ranges, zero elsewhere (all zeros when
/// nothing is visible, as the reference).
struct Softmax<'a> {
    row: &'a mut [f32],
    visible: [std::ops::Range<usize>; 2],
    scale: f32,
}

impl pulp::WithSimd for Softmax<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self {
            row,
            visible,
            scale,
        } = self;
        let mut max = f32::NEG_INFINITY;
        for r in &visible {
            for &s in &row[r.clone()] {
                max = max.max(s * scale);
            }
        }
        let mut total = 0f32;
        let mut from = 0;
        for r in &visible {
            row[from.min(r.start)..r.start].fill(0.0);
            for s in &mut row[r.clone()] {
                *s = exp(*s * scale - max);
                total += *s;
            }
            from = from.max(r.end);
        }
        row[from..].fill(0.0);
        let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
}

/// Dense attention over `[batch][seq][heads][head_dim]` tensors (see
/// [`crate::AttentionBackend::dense`]; no cache write). Per (sequence, head) pair: the scores
/// `Q K^T` and the output `P V` are two GEMMs read in place from the tensors; the keys a query
/// cannot see (causal limit, pad gap) get no weight.
pub fn dense(
    p: &DenseAttention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    p.validate()?;
    need("q", q.len(), p.q_len())?;
    need("k", k.len(), p.kv_len())?;
    need("v", v.len(), p.kv_len())?;
    need("attention output", out.len(), p.q_len())?;
    let (heads, d, sq, skv) = (p.heads, p.head_dim, p.seq_q, p.seq_kv);
    let width = heads * d;
    let pairs: Vec<Vec<f32>> = (0..p.batch * heads)
        .into_par_iter()
        .map(|pair| -> Result<Vec<f32>, KernelError> {
            let (b, h) = (pair / heads, pair % heads);
            let (lo, hi) = p.gap(b);
            let operand = |data, base: usize| Strided {
                data,
                offset: base * width + h * d,
                row: width,
                col: 1,
            };
            // Scores [sq][skv] = Q [sq][d] . K^T [d][skv].
            let mut scores = vec![0f32; sq * skv];
            let keys_t = Strided {
                row: 1,
                col: width,
                ..operand(k, b * skv)
            };
            matmul(sq, skv, d, operand(q, b * sq), keys_t, &mut scores)?;
            for (i, row) in scores.chunks_exact_mut(skv).enumerate() {
                let limit = if p.causal {
                    (i + skv + 1).saturating_sub(sq).min(skv)
                } else {
                    skv
                };
                dispatch(Softmax {
                    row,
                    visible: [0..lo.min(limit), hi.min(limit)..limit],
                    scale: p.scale,
                });
            }
            // Output [sq][d] = P [sq][skv] . V [skv][d].
            let mut o = vec![0f32; sq * d];
            let probs = Strided {
                data: &scores,
                offset: 0,
                row: skv,
                col: 1,
            };
            matmul(sq, d, skv, probs, operand(v, b * skv), &mut o)?;
            Ok(o)
        })
        .collect::<Result<_, _>>()?;
    for (pair, rows) in pairs.iter().enumerate() {
        let (b, h) = (pair / heads, pair % heads);
        for (i, row) in rows.chunks_exact(d).enumerate() {
            out[((b * sq + i) * heads + h) * d..][..d].copy_from_slice(row);
        }
    }
    Ok(())
}

/// One decode step over the paged cache (see [`crate::AttentionBackend::decode`]).
pub fn decode(
    p: &DecodeAttention,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    p.validate()?;
    let (heads, d) = (p.heads, p.head_dim);
    let n = p.batch * heads * d;
    need("q", q.len(), n)?;
    need("k cache", k_cache.len(), p.cache_len())?;
    need("v cache", v_cache.len(), p.cache_len())?;
    need("decode output", out.len(), n)?;
    out[..n]
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(pair, row)| {
            let (b, h) = (pair / heads, pair % heads);
            let len = p.seq_lens[b] as usize;
            let mut scores = Vec::with_capacity(len);
            attend_cached(
                &q[pair * d..][..d],
                len,
                |j| &k_cache[p.cache_offset(b, j, h)..][..d],
                |j| &v_cache[p.cache_offset(b, j, h)..][..d],
                p.scale,
                &mut scores,
                row,
            );
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuAttention;
    use crate::AttentionBackend;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::host::test_values(len, seed, 1.0)
    }

    fn close(a: &[f32], b: &[f32]) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 2e-6, "[{i}] {x} vs {y}");
        }
    }

    /// Bidirectional, causal (prefill with a cache offset) and causal with pad gaps, against the
    /// f64 reference.
    #[test]
    fn dense_matches_the_reference() {
        let problems = [
            DenseAttention::new(2, 3, 9, 9, 16),
            DenseAttention::new(1, 2, 5, 11, 32).causal(),
            DenseAttention::new(2, 2, 10, 10, 8)
                .causal()
                .with_gaps(vec![(3, 6), (3, 3)]),
        ];
        for p in problems {
            let (q, k, v) = (
                values(p.q_len(), 1),
                values(p.kv_len(), 2),
                values(p.kv_len(), 3),
            );
            let mut want = vec![0f32; p.q_len()];
            CpuAttention::default()
                .dense(&p, &q, &k, &v, &mut want, None)
                .expect("reference");
            let mut got = vec![1f32; p.q_len()];
            dense(&p, &q, &k, &v, &mut got).expect("fast");
            close(&got, &want);
        }
    }

    #[test]
    fn decode_matches_the_reference() {
        let p = DecodeAttention {
            batch: 2,
            heads: 3,
            head_dim: 16,
            block_size: 4,
            num_blocks: 6,
            max_blocks: 3,
            scale: 0.25,
            seq_lens: vec![9, 3],
            block_table: vec![5, 1, 3, 2, 0, 0],
        };
        let q = values(2 * 3 * 16, 7);
        let (kc, vc) = (values(p.cache_len(), 8), values(p.cache_len(), 9));
        let mut want = vec![0f32; q.len()];
        CpuAttention::default()
            .decode(&p, &q, &kc, &vc, &mut want)
            .expect("reference");
        let mut got = vec![0f32; q.len()];
        decode(&p, &q, &kc, &vc, &mut got).expect("fast");
        close(&got, &want);
    }
}
