//! Selftest cases of the fused vision-token projection and the small kernels, each against its
//! host reference on fresh random inputs rounded to the storage type.

use rand_chacha::rand_core::Rng;
use rand_chacha::ChaCha20Rng;

use cudarc::driver::CudaSlice;

use super::{random_values, verdict, CaseResult};
use crate::cpu::CpuAttention;
use crate::cuda::{CudaAttention, DecodeTables, Elem};
use crate::problem::{DType, DecodeAttention, DenseAttention, Precision};
use crate::projection::{self, FoldedProjection, ProjectionWeights, VisionProjection};
use crate::AttentionBackend;
use crate::{ops, KernelError};

/// Values uniform in `offset ± amplitude`, rounded to `precision`.
fn shifted(
    rng: &mut ChaCha20Rng,
    precision: impl Into<Precision>,
    len: usize,
    amplitude: f32,
    offset: f32,
) -> Vec<f32> {
    let precision = precision.into();
    random_values(rng, precision, len, amplitude)
        .into_iter()
        .map(|v| ops::round(precision, (v + offset) as f64))
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

fn elementwise(name: &str, precision: Precision, got: &[f32], want: &[f32]) -> CaseResult {
    let mut case = verdict(format!("op: {name}"), DType::Bf16, got, want, 0);
    case.precision = Some(precision);
    case
}

fn op_cases<S: Elem>(
    gpu: &CudaAttention,
    pr: Precision,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    let mut out = Vec::new();
    let up = |v: &[f32]| gpu.upload_as::<S>(pr, v);
    let down = |v: &CudaSlice<S>| gpu.download_as::<S>(pr, v);
    let poisoned = |n: usize| up(&vec![f32::NAN; n]);
    let (rows, cols) = (5, 1408);
    let x = shifted(rng, pr, rows * cols, 3.0, 0.7);
    let g = shifted(rng, pr, cols, 0.5, 1.0);
    let b = random_values(rng, pr, cols, 0.5);
    let mut y = poisoned(rows * cols)?;
    gpu.layernorm(pr, &up(&x)?, &up(&g)?, &up(&b)?, &mut y, rows, cols, 1e-6)?;
    let want = ops::layernorm(pr, &x, &g, &b, 1e-6);
    out.push(elementwise("layernorm 5x1408", pr, &down(&y)?, &want));

    let (rows, cols) = (3, 4096);
    let x = random_values(rng, pr, rows * cols, 4.0);
    let w = shifted(rng, pr, cols, 0.5, 1.0);
    let mut y = poisoned(rows * cols)?;
    gpu.rmsnorm(pr, &up(&x)?, &up(&w)?, &mut y, rows, cols, 1e-6)?;
    let want = ops::rmsnorm(pr, &x, &w, 1e-6);
    out.push(elementwise("rmsnorm 3x4096", pr, &down(&y)?, &want));

    let (rows, cols) = (4, 1000);
    let x = random_values(rng, pr, rows * cols, 4.0);
    let bias = random_values(rng, pr, cols, 1.0);
    let mut xd = up(&x)?;
    gpu.bias_gelu(pr, &mut xd, Some(&up(&bias)?), rows * cols, cols)?;
    let want = ops::bias_gelu(pr, &x, Some(&bias));
    out.push(elementwise("bias+gelu 4x1000", pr, &down(&xd)?, &want));

    let x = random_values(rng, pr, 3000, 6.0);
    let mut xd = up(&x)?;
    gpu.silu(pr, &mut xd, x.len())?;
    out.push(elementwise(
        "silu 3000",
        pr,
        &down(&xd)?,
        &ops::silu(pr, &x),
    ));

    let (rows, inter) = (3, 1000);
    let gu = random_values(rng, pr, rows * 2 * inter, 5.0);
    let mut y = poisoned(rows * inter)?;
    gpu.silu_mul(pr, &up(&gu)?, &mut y, rows, inter)?;
    let want = ops::silu_mul(pr, &gu, inter);
    out.push(elementwise("silu*up 3x1000", pr, &down(&y)?, &want));

    // RoPE on the q part of a packed [tokens][q | k | v] row, at scattered positions.
    let (tokens, heads, hd, max_pos) = (7, 4, 128, 2048);
    let stride = 3 * heads * hd;
    let x = random_values(rng, pr, tokens * stride, 2.0);
    let positions: Vec<u32> = (0..tokens)
        .map(|_| rng.next_u32() % max_pos as u32)
        .collect();
    let table = ops::rope_table(max_pos, hd, 10_000.0);
    let (cos, sin) = (gpu.upload_f32(&table.0)?, gpu.upload_f32(&table.1)?);
    let pos = gpu.upload_indices(&positions, max_pos)?;
    let mut xd = up(&x)?;
    gpu.rope(pr, &mut xd, stride, &pos, &cos, &sin, heads, hd)?;
    let got = down(&xd)?;
    let q_of = |v: &[f32]| -> Vec<f32> {
        v.chunks_exact(stride)
            .flat_map(|r| r[..heads * hd].to_vec())
            .collect()
    };
    let positions: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
    let want = ops::rope(pr, &q_of(&x), &positions, &table, heads, hd);
    let mut case = elementwise("rope 7 tokens 4x128 (packed qkv)", pr, &q_of(&got), &want);
    // The k and v parts of the rows must be untouched.
    let rest = |v: &[f32]| -> Vec<u32> {
        v.chunks_exact(stride)
            .flat_map(|r| {
                r[heads * hd..]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    case.index_mismatches = rest(&got)
        .iter()
        .zip(rest(&x))
        .filter(|(a, b)| **a != *b)
        .count();
    case.passed &= case.index_mismatches == 0;
    out.push(case);

    // Fused QKV split with RoPE on q and k.
    let qkv = random_values(rng, pr, tokens * stride, 2.0);
    let pos = gpu.upload_indices(
        &positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
        max_pos,
    )?;
    let width = heads * hd;
    let (mut qd, mut kd, mut vd) = (
        poisoned(tokens * width)?,
        poisoned(tokens * width)?,
        poisoned(tokens * width)?,
    );
    gpu.qkv_rope_split(
        pr,
        &up(&qkv)?,
        tokens,
        Some((&pos, &cos, &sin)),
        heads,
        hd,
        (&mut qd, &mut kd, &mut vd),
    )?;
    let (wq, wk, wv) = ops::qkv_rope_split(pr, &qkv, &positions, &table, heads, hd);
    let mut got = down(&qd)?;
    got.extend(down(&kd)?);
    got.extend(down(&vd)?);
    let want = [wq, wk, wv].concat();
    out.push(elementwise(
        "qkv split + rope 7 tokens 4x128",
        pr,
        &got,
        &want,
    ));

    let n = 5000;
    let (a, b) = (
        random_values(rng, pr, n, 3.0),
        random_values(rng, pr, n, 3.0),
    );
    let mut acc = up(&a)?;
    gpu.accumulate(pr, &mut acc, &up(&b)?, n, 0.25)?;
    let want = ops::add_scaled(pr, &a, &b, 0.25);
    out.push(elementwise(
        "accumulate (scale 0.25) 5000",
        pr,
        &down(&acc)?,
        &want,
    ));

    // Frame-embedding style broadcast: row r gets table[(r / 3) % 4].
    let (rows, cols, div, period) = (30, 40, 3, 4);
    let x = random_values(rng, pr, rows * cols, 2.0);
    let t = random_values(rng, pr, period * cols, 2.0);
    let mut xd = up(&x)?;
    gpu.add_rows(pr, &mut xd, &up(&t)?, rows, cols, div, period)?;
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (r, c) = (i / cols, i % cols);
            ops::round(pr, v as f64 + t[((r / div) % period) * cols + c] as f64)
        })
        .collect();
    out.push(elementwise("add_rows 30x40 /3 %4", pr, &down(&xd)?, &want));

    // Row gather and scatter: dst[dr[i]] = src[sr[i]]; untouched rows stay NaN-free zeros.
    let (src_rows, dst_rows, cols) = (100, 12, 64);
    let src = random_values(rng, pr, src_rows * cols, 1.0);
    let sr: Vec<u32> = (0..9).map(|_| rng.next_u32() % src_rows as u32).collect();
    let dr: Vec<u32> = vec![11, 0, 3, 4, 5, 6, 7, 8, 1];
    let mut dst = up(&vec![0.0; dst_rows * cols])?;
    let (sri, dri) = (
        gpu.upload_indices(&sr, src_rows)?,
        gpu.upload_indices(&dr, dst_rows)?,
    );
    gpu.copy_rows(
        pr,
        &up(&src)?,
        Some(&sri),
        &mut dst,
        Some(&dri),
        sr.len(),
        cols,
    )?;
    let mut want = vec![0f32; dst_rows * cols];
    for (s, d) in sr.iter().zip(&dr) {
        want[*d as usize * cols..][..cols].copy_from_slice(&src[*s as usize * cols..][..cols]);
    }
    out.push(elementwise(
        "copy_rows 9 of 100x64 -> scattered",
        pr,
        &down(&dst)?,
        &want,
    ));
    out.extend(generic_attention_cases::<S>(gpu, pr, rng)?);
    Ok(out)
}

/// The generic attention (any head dim, any precision) and the paged KV writer against the CPU
/// reference: Lynx's gap + causal prefill at the tiny model's head dim, cross-attention at 88,
/// and decode over a paged cache filled by `kv_write`.
fn generic_attention_cases<S: Elem>(
    gpu: &CudaAttention,
    pr: Precision,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    let cpu = CpuAttention::default();
    let mut out = Vec::new();
    let up = |v: &[f32]| gpu.upload_as::<S>(pr, v);
    for p in [
        DenseAttention::new(3, 2, 50, 50, 16)
            .causal()
            .with_gaps(vec![(8, 8), (8, 20), (0, 5)]),
        DenseAttention::new(2, 3, 8, 70, 88),
        DenseAttention::new(1, 2, 33, 33, 128).causal(),
    ] {
        let q = random_values(rng, pr, p.q_len(), 2.0);
        let k = random_values(rng, pr, p.kv_len(), 2.0);
        let v = random_values(rng, pr, p.kv_len(), 1.0);
        let mut want = vec![0f32; p.q_len()];
        cpu.dense(&p, &q, &k, &v, &mut want, None)?;
        let mut o = up(&vec![f32::NAN; p.q_len()])?;
        gpu.attention_generic(pr, &p, &up(&q)?, &up(&k)?, &up(&v)?, &mut o)?;
        let name = format!(
            "generic attention B{} H{} q{} kv{} D{}{}",
            p.batch,
            p.heads,
            p.seq_q,
            p.seq_kv,
            p.head_dim,
            if p.causal { " causal+gaps" } else { "" }
        );
        out.push(elementwise(&name, pr, &gpu.download_as(pr, &o)?, &want));
    }

    // Decode: fill a paged cache token by token with kv_write, then attend.
    let (heads, hd, block_size) = (2, 16, 4);
    let lens = [5u32, 1, 9];
    let max_blocks = 3;
    let num_blocks = lens.len() * max_blocks + 2;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.next_u32() as usize % (i + 1));
    }
    let p = DecodeAttention {
        batch: lens.len(),
        heads,
        head_dim: hd,
        block_size,
        num_blocks,
        max_blocks,
        scale: 0.25,
        seq_lens: lens.to_vec(),
        block_table: ids[..lens.len() * max_blocks].to_vec(),
    };
    let row = heads * hd;
    let mut slots = Vec::new();
    for (b, &len) in lens.iter().enumerate() {
        for pos in 0..len as usize {
            let block = p.block_table[b * max_blocks + pos / block_size] as usize;
            slots.push((block * block_size + pos % block_size) as u32);
        }
    }
    let k_rows = random_values(rng, pr, slots.len() * row, 2.0);
    let v_rows = random_values(rng, pr, slots.len() * row, 1.0);
    let mut kc = up(&vec![0.0; p.cache_len()])?;
    let mut vc = up(&vec![0.0; p.cache_len()])?;
    let slot_dev = gpu.upload_indices(&slots, num_blocks * block_size)?;
    gpu.kv_write(
        pr,
        (&up(&k_rows)?, &up(&v_rows)?),
        row,
        &slot_dev,
        (&mut kc, &mut vc),
        heads,
        hd,
        block_size,
    )?;
    // The same cache on the host.
    let (mut kh, mut vh) = (vec![0f32; p.cache_len()], vec![0f32; p.cache_len()]);
    for (t, &slot) in slots.iter().enumerate() {
        let (block, off) = (slot as usize / block_size, slot as usize % block_size);
        for h in 0..heads {
            let at = ((block * heads + h) * block_size + off) * hd;
            kh[at..][..hd].copy_from_slice(&k_rows[t * row + h * hd..][..hd]);
            vh[at..][..hd].copy_from_slice(&v_rows[t * row + h * hd..][..hd]);
        }
    }
    let q = random_values(rng, pr, lens.len() * row, 2.0);
    let mut want = vec![0f32; q.len()];
    cpu.decode(&p, &q, &kh, &vh, &mut want)?;
    let lens_dev = gpu.upload_i32(&lens.iter().map(|&l| l as i32).collect::<Vec<_>>())?;
    let table_dev = gpu.upload_i32(&p.block_table.iter().map(|&b| b as i32).collect::<Vec<_>>())?;
    let mut o = up(&vec![f32::NAN; q.len()])?;
    let tables = DecodeTables {
        seq_lens: &lens_dev,
        block_table: &table_dev,
    };
    gpu.decode_generic(pr, &p, &up(&q)?, &kc, &vc, tables, &mut o)?;
    let mut case = elementwise(
        "generic decode D16 lens [5, 1, 9] block 4 (kv_write)",
        pr,
        &gpu.download_as(pr, &o)?,
        &want,
    );
    let cache_bits = |dev: &CudaSlice<S>, host: &[f32]| -> Result<usize, KernelError> {
        Ok(gpu
            .download_as(pr, dev)?
            .iter()
            .zip(host)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count())
    };
    case.cache_mismatches = cache_bits(&kc, &kh)? + cache_bits(&vc, &vh)?;
    case.passed &= case.cache_mismatches == 0;
    out.push(case);
    Ok(out)
}

/// Greedy and top-k selection over f32 logits with planted ties (first index must win).
fn selection_cases(
    gpu: &CudaAttention,
    dtype: DType,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    let (rows, cols, k) = (4, 32_000, 8);
    let mut logits = random_values(rng, dtype, rows * cols, 8.0);
    for r in 0..rows {
        let top = (rng.next_u32() % cols as u32) as usize;
        let twin = (top + 1 + (rng.next_u32() % 1000) as usize) % cols;
        logits[r * cols + top] = 12.0;
        logits[r * cols + twin] = 12.0;
    }
    let ld = gpu.upload_f32(&logits)?;
    let mut idx = gpu.zeros::<i32>(rows)?;
    gpu.argmax(Precision::F32, &ld, rows, cols, &mut idx)?;
    // The same logits as the LM head stores them in this type: the pick must not change.
    let lh = gpu.upload_as::<u16>(dtype.into(), &logits)?;
    let mut hidx = gpu.zeros::<i32>(rows)?;
    gpu.argmax(dtype.into(), &lh, rows, cols, &mut hidx)?;
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
    let mut stored = verdict(
        format!("select: argmax 4x32000 (ties), {dtype} logits"),
        dtype,
        &[],
        &[],
        0,
    );
    stored.index_mismatches = count(gpu.download_raw(&hidx)?, ops::argmax(&logits, cols));
    stored.passed = stored.index_mismatches == 0;
    // Banning each row's maximum (both of its twins) and a few others leaves the next best.
    let mut lh = lh;
    let mut banned_logits = logits.clone();
    let mut at: Vec<u32> = Vec::new();
    for (r, row) in logits.chunks_exact(cols).enumerate() {
        let top = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut own: Vec<usize> = (0..cols).filter(|&c| row[c] == top).collect();
        own.extend([r, cols - 1 - r]);
        for c in own {
            at.push((r * cols + c) as u32);
            banned_logits[r * cols + c] = f32::NEG_INFINITY;
        }
    }
    gpu.ban(
        dtype.into(),
        &mut lh,
        &gpu.upload_indices(&at, rows * cols)?,
    )?;
    gpu.argmax(dtype.into(), &lh, rows, cols, &mut hidx)?;
    let mut ban = verdict(
        format!("select: ban + argmax 4x32000, {dtype} logits"),
        dtype,
        &[],
        &[],
        0,
    );
    ban.index_mismatches = count(gpu.download_raw(&hidx)?, ops::argmax(&banned_logits, cols));
    ban.passed = ban.index_mismatches == 0;
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
    Ok(vec![greedy, stored, ban, topk])
}

/// Every projection and small-kernel case for one 16-bit type.
pub(super) fn run(
    gpu: &CudaAttention,
    dtype: DType,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    let mut results = Vec::new();
    for p in projection_cases() {
        results.push(projection_case(gpu, dtype, rng, p)?);
    }
    results.extend(op_cases::<u16>(gpu, dtype.into(), rng)?);
    results.extend(selection_cases(gpu, dtype, rng)?);
    Ok(results)
}

/// The small-kernel and generic-attention cases in f32 (the exact mode).
pub(super) fn run_f32(
    gpu: &CudaAttention,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<CaseResult>, KernelError> {
    op_cases::<f32>(gpu, Precision::F32, rng)
}
