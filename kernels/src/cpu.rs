//! The CPU reference: plain loops with f64 accumulation, the yardstick for the GPU kernels.

use crate::problem::{DecodeAttention, DenseAttention, KvCacheWrite};
use crate::{AttentionBackend, KernelError};

/// Reference attention on host `f32` tensors, parallel over (sequence, head) pairs.
#[derive(Debug, Clone)]
pub struct CpuAttention {
    threads: usize,
}

impl Default for CpuAttention {
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        CpuAttention { threads }
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got == want {
        Ok(())
    } else {
        Err(KernelError::Invalid(format!(
            "{what} has {got} elements, expected {want}"
        )))
    }
}

/// Softmax-weighted sum of the visible rows, in f64; zeros when nothing is visible.
fn attend_row(q: &[f32], keys: &[(&[f32], &[f32])], scale: f64, out: &mut [f32]) {
    if keys.is_empty() {
        out.fill(0.0);
        return;
    }
    let scores: Vec<f64> = keys
        .iter()
        .map(|(k, _)| {
            q.iter()
                .zip(*k)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    for (d, o) in out.iter_mut().enumerate() {
        let acc: f64 = weights
            .iter()
            .zip(keys)
            .map(|(w, (_, v))| w * v[d] as f64)
            .sum();
        *o = (acc / total) as f32;
    }
}

impl CpuAttention {
    /// Runs `work(pair)` for every (sequence, head) pair on the worker threads and collects
    /// each pair's output rows.
    fn per_pair<F>(&self, pairs: usize, work: F) -> Vec<Vec<f32>>
    where
        F: Fn(usize) -> Vec<f32> + Sync,
    {
        let threads = self.threads.clamp(1, pairs.max(1));
        let mut results: Vec<Vec<f32>> = vec![Vec::new(); pairs];
        std::thread::scope(|scope| {
            let work = &work;
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        (t..pairs)
                            .step_by(threads)
                            .map(|i| (i, work(i)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for handle in handles {
                if let Ok(done) = handle.join() {
                    for (i, rows) in done {
                        results[i] = rows;
                    }
                }
            }
        });
        results
    }
}

impl AttentionBackend for CpuAttention {
    type Tensor = Vec<f32>;

    fn dense(
        &self,
        p: &DenseAttention,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
        cache: Option<KvCacheWrite<'_, Vec<f32>>>,
    ) -> Result<(), KernelError> {
        p.validate()?;
        check_len("q", q.len(), p.q_len())?;
        check_len("k", k.len(), p.kv_len())?;
        check_len("v", v.len(), p.kv_len())?;
        check_len("out", out.len(), p.q_len())?;
        let (h_n, d_n) = (p.heads, p.head_dim);
        let q_at = |b: usize, i: usize, h: usize| ((b * p.seq_q + i) * h_n + h) * d_n;
        let kv_at = |b: usize, j: usize, h: usize| ((b * p.seq_kv + j) * h_n + h) * d_n;
        let results = self.per_pair(p.batch * h_n, |pair| {
            let (b, h) = (pair / h_n, pair % h_n);
            let mut rows = vec![0f32; p.seq_q * d_n];
            for i in 0..p.seq_q {
                let keys: Vec<(&[f32], &[f32])> = (0..p.seq_kv)
                    .filter(|&j| p.visible(b, i, j))
                    .map(|j| (&k[kv_at(b, j, h)..][..d_n], &v[kv_at(b, j, h)..][..d_n]))
                    .collect();
                attend_row(
                    &q[q_at(b, i, h)..][..d_n],
                    &keys,
                    p.scale as f64,
                    &mut rows[i * d_n..][..d_n],
                );
            }
            rows
        });
        for (pair, rows) in results.into_iter().enumerate() {
            let (b, h) = (pair / h_n, pair % h_n);
            for i in 0..p.seq_q {
                out[q_at(b, i, h)..][..d_n].copy_from_slice(&rows[i * d_n..][..d_n]);
            }
        }
        if let Some(cache) = cache {
            cache.validate(p)?;
            let cache_len = cache.num_blocks * h_n * cache.block_size * d_n;
            check_len("k cache", cache.k_cache.len(), cache_len)?;
            check_len("v cache", cache.v_cache.len(), cache_len)?;
            for b in 0..p.batch {
                for j in 0..p.seq_kv {
                    let Some(pos) = p.cache_position(b, j) else {
                        continue;
                    };
                    let block =
                        cache.block_table[b * cache.max_blocks + pos / cache.block_size] as usize;
                    for h in 0..h_n {
                        let dst =
                            ((block * h_n + h) * cache.block_size + pos % cache.block_size) * d_n;
                        cache.k_cache[dst..][..d_n].copy_from_slice(&k[kv_at(b, j, h)..][..d_n]);
                        cache.v_cache[dst..][..d_n].copy_from_slice(&v[kv_at(b, j, h)..][..d_n]);
                    }
                }
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        p: &DecodeAttention,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        p.validate()?;
        let rows = p.batch * p.heads * p.head_dim;
        check_len("q", q.len(), rows)?;
        check_len("out", out.len(), rows)?;
        check_len("k cache", k_cache.len(), p.cache_len())?;
        check_len("v cache", v_cache.len(), p.cache_len())?;
        let d_n = p.head_dim;
        let results = self.per_pair(p.batch * p.heads, |pair| {
            let (b, h) = (pair / p.heads, pair % p.heads);
            let keys: Vec<(&[f32], &[f32])> = (0..p.seq_lens[b] as usize)
                .map(|pos| {
                    let at = p.cache_offset(b, pos, h);
                    (&k_cache[at..][..d_n], &v_cache[at..][..d_n])
                })
                .collect();
            let mut row = vec![0f32; d_n];
            attend_row(&q[pair * d_n..][..d_n], &keys, p.scale as f64, &mut row);
            row
        });
        for (pair, row) in results.into_iter().enumerate() {
            out[pair * d_n..][..d_n].copy_from_slice(&row);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_visible_key_returns_its_value() {
        // Causal, query 0 sees only key 0; query 1 sees both.
        let p = DenseAttention::new(1, 1, 2, 2, 64).causal();
        let q = vec![0.1f32; 128];
        let k: Vec<f32> = (0..128).map(|i| (i % 7) as f32 * 0.1).collect();
        let v: Vec<f32> = (0..128).map(|i| i as f32).collect();
        let mut out = vec![0f32; 128];
        CpuAttention::default()
            .dense(&p, &q, &k, &v, &mut out, None)
            .expect("dense");
        assert_eq!(&out[..64], &v[..64]);
        // The second row is a strict convex mix of both values.
        for d in 0..64 {
            let (a, b, o) = (v[d], v[64 + d], out[64 + d]);
            assert!(a < o && o < b, "{a} < {o} < {b}");
        }
    }

    #[test]
    fn gap_keys_are_ignored_and_empty_rows_are_zero() {
        let p = DenseAttention::new(1, 1, 3, 3, 64)
            .causal()
            .with_gaps(vec![(0, 1)]);
        let q = vec![0.5f32; 192];
        let k = vec![0.5f32; 192];
        let mut v = vec![1f32; 192];
        v[..64].fill(100.0); // the gap token's value must not leak
        let mut out = vec![7f32; 192];
        CpuAttention::default()
            .dense(&p, &q, &k, &v, &mut out, None)
            .expect("dense");
        assert!(
            out[..64].iter().all(|&x| x == 0.0),
            "row 0 sees only the gap"
        );
        assert!(out[64..].iter().all(|&x| (x - 1.0).abs() < 1e-6));
    }

    #[test]
    fn decode_matches_dense_over_the_same_tokens() {
        let (heads, d, len, bs) = (2, 64, 37, 16);
        let dense = DenseAttention::new(1, heads, 1, len, d);
        let q: Vec<f32> = (0..heads * d)
            .map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5)
            .collect();
        let k: Vec<f32> = (0..len * heads * d)
            .map(|i| ((i * 13) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let v: Vec<f32> = (0..len * heads * d)
            .map(|i| ((i * 7) % 19) as f32 / 19.0)
            .collect();
        let mut want = vec![0f32; heads * d];
        let cpu = CpuAttention::default();
        cpu.dense(&dense, &q, &k, &v, &mut want, None)
            .expect("dense");
        // Scatter K/V into a paged cache with a shuffled block table.
        let p = DecodeAttention {
            batch: 1,
            heads,
            head_dim: d,
            block_size: bs,
            num_blocks: 5,
            max_blocks: 3,
            scale: dense.scale,
            seq_lens: vec![len as u32],
            block_table: vec![4, 0, 2],
        };
        let mut kc = vec![f32::NAN; p.cache_len()];
        let mut vc = vec![f32::NAN; p.cache_len()];
        for pos in 0..len {
            for h in 0..heads {
                let at = p.cache_offset(0, pos, h);
                kc[at..at + d].copy_from_slice(&k[(pos * heads + h) * d..][..d]);
                vc[at..at + d].copy_from_slice(&v[(pos * heads + h) * d..][..d]);
            }
        }
        let mut got = vec![0f32; heads * d];
        cpu.decode(&p, &q, &kc, &vc, &mut got).expect("decode");
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
