//! Selftest cases of the fused vision-token projection and the small kernels, each against its
//! host reference on fresh random inputs rounded to the storage type.

use rand_chacha::rand_core::Rng;
use rand_chacha::ChaCha20Rng;

use super::{random_values, verdict, CaseResult};
use crate::cuda::CudaAttention;
use crate::problem::DType;
use crate::projection::{self, FoldedProjection, ProjectionWeights, VisionProjection};
use crate::{ops, KernelError};

/// Values uniform in `offset ± amplitude`, rounded to `dtype`.
fn shifted(
    rng: &mut ChaCha20Rng,
    dtype: DType,
    len: usize,
    amplitude: f32,
    offset: f32,
) -> Vec<f32> {
    random_values(rng, dtype, len, amplitude)
        .into_iter()
        .map(|v| dtype.decode(dtype.encode(v + offset)))
        .collect()
}

fn projection_case(
    gpu: &CudaAttention,
    dtype: DType,
    rng: &mut ChaCha20Rng,
    p: VisionProjection,
) -> Result<CaseResult, KernelError> {
    let (k, n) = (p.k_dim, p.n_dim());
    // Vision tokens with a mean offset (as ViT outputs have), so the folded mean term matters.
    let x = shifted(rng, dtype, p.rows * k, 2.0, 1.5);
    let w = random_values(rng, DType::Bf16, n * k, 1.0 / (k as f32).sqrt());
    let gamma = shifted(rng, dtype, k, 0.3, 1.0);
    let beta = random_values(rng, dtype, k, 0.2);
    let embed = random_values(rng, dtype, p.frames.max(1) * k, 0.5);
    let weights = ProjectionWeights {
        w: &w,
        gamma: &gamma,
        beta: &beta,
        frame_embed: (p.frames > 0).then_some(&embed[..]),
    };
    let (want_k, want_v) = projection::reference(&p, &x, &weights)?;
    let folded = FoldedProjection::fold(&p, &weights, dtype)?;
    let dev = gpu.upload_projection(&p, &folded, dtype)?;
    let xd = gpu.upload(dtype, &x)?;
    let mut ok = gpu.poisoned(dtype, p.rows * p.inner)?;
    let mut ov = gpu.poisoned(dtype, p.rows * p.inner)?;
    gpu.projection_launch(&p, &dev, &xd.data, k, &mut ok.data, &mut ov.data)?;
    gpu.synchronize()?;
    let mut got = gpu.download(&ok)?;
    got.extend(gpu.download(&ov)?);
    let mut want = want_k;
    want.extend(want_v);
    let name = format!(
        "projection: rows {} K {k} N {n}{}",
        p.rows,
        if p.frames > 0 {
            format!(" frames {}x{}", p.frames, p.tokens_per_frame)
        } else {
            String::new()
        }
    );
    Ok(verdict(name, dtype, &got, &want, 0))
}

fn projection_cases() -> Vec<VisionProjection> {
    let image = |rows, k_dim, inner| VisionProjection {
        rows,
        k_dim,
        inner,
        frames: 0,
        tokens_per_frame: 0,
        eps: 1e-5,
    };
    vec![
        // The real widths (EVA 1408 -> 8 x 64 heads for K and V), ragged row tiles.
        image(300, 1408, 512),
        // Videos: frame embedding folded in, tiles straddling frames and the K/V boundary, a
        // k_dim that is not a multiple of the k-step.
        VisionProjection {
            frames: 5,
            tokens_per_frame: 37,
            ..image(2 * 5 * 37, 264, 96)
        },
        image(7, 16, 4),
    ]
}

fn elementwise(name: &str, dtype: DType, got: &[f32], want: &[f32]) -> CaseResult {
    verdict(format!("op: {name}"), dtype, got, want, 0)
}

fn op_cases(
    gpu: &CudaAttention,
    dtype: DType,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    let mut out = Vec::new();
    let up = |v: &[f32]| gpu.upload(dtype, v);

    let (rows, cols) = (5, 1408);
    let x = shifted(rng, dtype, rows * cols, 3.0, 0.7);
    let g = shifted(rng, dtype, cols, 0.5, 1.0);
    let b = random_values(rng, dtype, cols, 0.5);
    let mut y = gpu.poisoned(dtype, rows * cols)?;
    let (xd, gd, bd) = (up(&x)?, up(&g)?, up(&b)?);
    gpu.layernorm(
        dtype,
        &xd.data,
        &gd.data,
        &bd.data,
        &mut y.data,
        rows,
        cols,
        1e-6,
    )?;
    let want = ops::layernorm(dtype, &x, &g, &b, 1e-6);
    out.push(elementwise(
        "layernorm 5x1408",
        dtype,
        &gpu.download(&y)?,
        &want,
    ));

    let (rows, cols) = (3, 4096);
    let x = random_values(rng, dtype, rows * cols, 4.0);
    let w = shifted(rng, dtype, cols, 0.5, 1.0);
    let mut y = gpu.poisoned(dtype, rows * cols)?;
    let (xd, wd) = (up(&x)?, up(&w)?);
    gpu.rmsnorm(dtype, &xd.data, &wd.data, &mut y.data, rows, cols, 1e-6)?;
    let want = ops::rmsnorm(dtype, &x, &w, 1e-6);
    out.push(elementwise(
        "rmsnorm 3x4096",
        dtype,
        &gpu.download(&y)?,
        &want,
    ));

    let (rows, cols) = (4, 1000);
    let x = random_values(rng, dtype, rows * cols, 4.0);
    let bias = random_values(rng, dtype, cols, 1.0);
    let mut xd = up(&x)?;
    let bd = up(&bias)?;
    gpu.bias_gelu(dtype, &mut xd.data, Some(&bd.data), rows * cols, cols)?;
    let want = ops::bias_gelu(dtype, &x, Some(&bias));
    out.push(elementwise(
        "bias+gelu 4x1000",
        dtype,
        &gpu.download(&xd)?,
        &want,
    ));

    let (rows, inter) = (3, 1000);
    let gu = random_values(rng, dtype, rows * 2 * inter, 5.0);
    let mut y = gpu.poisoned(dtype, rows * inter)?;
    gpu.silu_mul(dtype, &up(&gu)?.data, &mut y.data, rows, inter)?;
    let want = ops::silu_mul(dtype, &gu, inter);
    out.push(elementwise(
        "silu*up 3x1000",
        dtype,
        &gpu.download(&y)?,
        &want,
    ));

    // RoPE on the q part of a packed [tokens][q | k | v] row, at scattered positions.
    let (tokens, heads, hd, max_pos) = (7, 4, 128, 2048);
    let stride = 3 * heads * hd;
    let x = random_values(rng, dtype, tokens * stride, 2.0);
    let positions: Vec<u32> = (0..tokens)
        .map(|_| rng.next_u32() % max_pos as u32)
        .collect();
    let table = ops::rope_table(max_pos, hd, 10_000.0);
    let (cos, sin) = (gpu.upload_f32(&table.0)?, gpu.upload_f32(&table.1)?);
    let pos = gpu.upload_indices(&positions, max_pos)?;
    let mut xd = up(&x)?;
    gpu.rope(dtype, &mut xd.data, stride, &pos, &cos, &sin, heads, hd)?;
    let got = gpu.download(&xd)?;
    let q_of = |v: &[f32]| -> Vec<f32> {
        v.chunks_exact(stride)
            .flat_map(|r| r[..heads * hd].to_vec())
            .collect()
    };
    let positions: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
    let want = ops::rope(dtype, &q_of(&x), &positions, &table, heads, hd);
    let mut case = elementwise(
        "rope 7 tokens 4x128 (packed qkv)",
        dtype,
        &q_of(&got),
        &want,
    );
    // The k and v parts of the rows must be untouched.
    let untouched = |v: &[f32]| -> Vec<u32> {
        v.chunks_exact(stride)
            .flat_map(|r| {
                r[heads * hd..]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    case.index_mismatches = untouched(&got)
        .iter()
        .zip(untouched(&x))
        .filter(|(a, b)| **a != *b)
        .count();
    case.passed &= case.index_mismatches == 0;
    out.push(case);

    let n = 5000;
    let (a, b) = (
        random_values(rng, dtype, n, 3.0),
        random_values(rng, dtype, n, 3.0),
    );
    let mut y = gpu.poisoned(dtype, n)?;
    gpu.add_scaled(dtype, &up(&a)?.data, &up(&b)?.data, &mut y.data, n, 0.25)?;
    let want = ops::add_scaled(dtype, &a, &b, 0.25);
    out.push(elementwise(
        "add (scale 0.25) 5000",
        dtype,
        &gpu.download(&y)?,
        &want,
    ));

    let (vocab, cols) = (100, 64);
    let table = random_values(rng, dtype, vocab * cols, 1.0);
    let ids: Vec<u32> = (0..9).map(|_| rng.next_u32() % vocab as u32).collect();
    let idd = gpu.upload_indices(&ids, vocab)?;
    let mut y = gpu.poisoned(dtype, ids.len() * cols)?;
    gpu.embed_gather(&up(&table)?.data, &idd, &mut y.data, cols)?;
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * cols..(i as usize + 1) * cols].to_vec())
        .collect();
    out.push(elementwise(
        "embedding gather 9 of 100x64",
        dtype,
        &gpu.download(&y)?,
        &want,
    ));
    out.extend(selection_cases(gpu, dtype, rng)?);
    Ok(out)
}

/// Greedy and top-k selection over f32 logits with planted ties (first index must win).
fn selection_cases(
    gpu: &CudaAttention,
    dtype: DType,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    let (rows, cols, k) = (4, 32_000, 8);
    let mut logits = random_values(rng, DType::Bf16, rows * cols, 8.0);
    for r in 0..rows {
        let top = (rng.next_u32() % cols as u32) as usize;
        let twin = (top + 1 + (rng.next_u32() % 1000) as usize) % cols;
        logits[r * cols + top] = 12.0;
        logits[r * cols + twin] = 12.0;
    }
    let ld = gpu.upload_f32(&logits)?;
    let mut idx = gpu.zeros::<i32>(rows)?;
    gpu.argmax(&ld, rows, cols, &mut idx)?;
    let mut vals = gpu.zeros::<f32>(rows * k)?;
    let mut tidx = gpu.zeros::<i32>(rows * k)?;
    gpu.topk_logprobs(&ld, rows, cols, k, &mut vals, &mut tidx)?;
    gpu.synchronize()?;
    let count = |got: Vec<i32>, want: Vec<u32>| -> usize {
        got.len().abs_diff(want.len())
            + got
                .iter()
                .zip(&want)
                .filter(|(g, w)| **g as i64 != **w as i64)
                .count()
    };
    let mut greedy = verdict("select: argmax 4x32000 (ties)".into(), dtype, &[], &[], 0);
    greedy.index_mismatches = count(gpu.download_raw(&idx)?, ops::argmax(&logits, cols));
    greedy.passed = greedy.index_mismatches == 0;
    let (want_vals, want_idx) = ops::topk_logprobs(&logits, cols, k);
    let mut topk = verdict(
        format!("select: top-{k} log-probs 4x32000 (ties)"),
        dtype,
        &gpu.download_raw(&vals)?,
        &want_vals,
        0,
    );
    topk.index_mismatches = count(gpu.download_raw(&tidx)?, want_idx);
    topk.passed &= topk.index_mismatches == 0;
    Ok(vec![greedy, topk])
}

/// Every projection and small-kernel case for one dtype.
pub(super) fn run(
    gpu: &CudaAttention,
    dtype: DType,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    let mut results = Vec::new();
    for p in projection_cases() {
        results.push(projection_case(gpu, dtype, rng, p)?);
    }
    results.extend(op_cases(gpu, dtype, rng)?);
    Ok(results)
}
