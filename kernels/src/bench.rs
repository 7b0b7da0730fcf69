//! `gpu-bench`: the anchor attention and projection shapes of Lynx, timed with CUDA events (median of many
//! runs on random inputs, rotated when one set would sit in L2), plus the device-to-device copy
//! bandwidth measured in the same run as the memory ceiling.

use crate::cuda::{
    CudaAttention, DecodeOptions, DecodeTables, DenseInputs, DenseOptions, GpuTensor,
};
use crate::problem::{DType, DecodeAttention, DenseAttention, Strides};
use crate::projection::{FoldedProjection, ProjectionWeights, VisionProjection};
use crate::source::{DECODE_UNROLLS, FWD_VARIANTS};
use crate::KernelError;

/// One timed shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// Stable id (the PyTorch comparison script matches on it).
    pub id: String,
    /// Human-readable shape.
    pub shape: String,
    /// `TFLOP/s` (compute-bound shapes) or `GB/s` (memory-bound ones).
    pub unit: &'static str,
    /// Median milliseconds per call.
    pub ms: f64,
    /// The rate in `unit`.
    pub value: f64,
    /// Output elements that came back NaN on a checked run (must be 0).
    pub nan: usize,
    /// The attention problem, for peers to rebuild it (absent for other rows).
    pub problem: Option<ShapeParams>,
    /// The projection problem (projection rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection: Option<ProjectionShape>,
}

/// The dimensions of a timed vision-token projection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionShape {
    /// Vision tokens.
    pub rows: usize,
    /// Vision width.
    pub k_dim: usize,
    /// GEMM output width (K and V).
    pub n_dim: usize,
    /// Frames per video (0: images).
    pub frames: usize,
    /// Tokens per frame.
    pub tokens_per_frame: usize,
}

/// The projection anchors: `(id, problem)` at Lynx's real widths (EVA 1408 -> 2 x 8 x 64).
pub fn projection_anchors() -> Vec<(&'static str, VisionProjection)> {
    let shape = |rows, frames| VisionProjection {
        rows,
        k_dim: 1408,
        inner: 512,
        frames,
        tokens_per_frame: 901,
        eps: 1e-5,
    };
    vec![
        ("proj-img8", shape(8 * 901, 0)),
        ("proj-vid40", shape(40 * 901, 5)),
    ]
}

/// Times the fused projection on random tokens and weights.
fn projection_rows(
    gpu: &CudaAttention,
    dtype: DType,
    iters: usize,
) -> Result<Vec<BenchRow>, KernelError> {
    let mut rows = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut gen = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                offset + scale * (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    };
    for (id, p) in projection_anchors() {
        let (k, n) = (p.k_dim, p.n_dim());
        let w = gen(n * k, 1.0 / (k as f32).sqrt(), 0.0);
        let (gamma, beta) = (gen(k, 0.2, 1.0), gen(k, 0.1, 0.0));
        let embed = gen(p.frames.max(1) * k, 0.5, 0.0);
        let weights = ProjectionWeights {
            w: &w,
            gamma: &gamma,
            beta: &beta,
            frame_embed: (p.frames > 0).then_some(&embed[..]),
        };
        let dev =
            gpu.upload_projection(&p, &FoldedProjection::fold(&p, &weights, dtype)?, dtype)?;
        let x = gpu.random(dtype, p.rows * k, 7)?;
        let mut ok = gpu.poisoned(dtype, p.rows * p.inner)?;
        let mut ov = gpu.poisoned(dtype, p.rows * p.inner)?;
        let ms = median(gpu.time_ms(3, iters, || {
            gpu.projection_launch(&p, &dev, &x.data, k, &mut ok.data, &mut ov.data)
        })?);
        rows.push(BenchRow {
            id: id.into(),
            shape: format!(
                "LN+to_kv {} tokens {k}->{n}{}",
                p.rows,
                if p.frames > 0 {
                    format!(" ({} frames, frame embedding)", p.frames)
                } else {
                    String::new()
                }
            ),
            unit: "TFLOP/s",
            ms,
            value: p.flops() / ms / 1e9,
            nan: count_nan(gpu, &ok)? + count_nan(gpu, &ov)?,
            problem: None,
            projection: Some(ProjectionShape {
                rows: p.rows,
                k_dim: k,
                n_dim: n,
                frames: p.frames,
                tokens_per_frame: p.tokens_per_frame,
            }),
        });
    }
    Ok(rows)
}

/// The dimensions of a timed attention problem.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShapeParams {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Query tokens per sequence (1 for decode).
    pub seq_q: usize,
    /// Key tokens per sequence.
    pub seq_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Causal mask.
    pub causal: bool,
    /// Decode over the paged cache.
    pub decode: bool,
}

/// The anchor shapes: `(id, problem)`; the ids are shared with `gpu/sdpa_bench.py`.
pub fn dense_anchors() -> Vec<(&'static str, DenseAttention)> {
    vec![
        ("vit", DenseAttention::new(40, 16, 901, 901, 88)),
        (
            "prefill544",
            DenseAttention::new(8, 32, 544, 544, 128).causal(),
        ),
        (
            "prefill2080",
            DenseAttention::new(4, 32, 2080, 2080, 128).causal(),
        ),
        (
            "prefill544_gap",
            DenseAttention::new(8, 32, 544, 544, 128)
                .causal()
                .with_gaps((0..8).map(|b| (32, 32 + 40 * b)).collect()),
        ),
        ("cross_video", DenseAttention::new(8, 8, 32, 4505, 64)),
        ("cross_image", DenseAttention::new(64, 8, 32, 901, 64)),
    ]
}

/// Every `(id, problem, options)` timed: each anchor with its default variant, and the
/// compute-bound anchors also with every other compiled variant of their head dim (`id@label`).
pub fn dense_runs() -> Vec<(String, DenseAttention, DenseOptions)> {
    let mut runs = Vec::new();
    for (id, p) in dense_anchors() {
        runs.push((id.to_string(), p.clone(), DenseOptions::default()));
        if p.seq_q > 32 && p.kv_gaps.is_empty() {
            let default = CudaAttention::default_variant(&p);
            for v in FWD_VARIANTS
                .iter()
                .filter(|v| v.head_dim == p.head_dim && **v != default)
            {
                let options = DenseOptions {
                    variant: Some(*v),
                    splits: None,
                };
                runs.push((format!("{id}@{}", v.label()), p.clone(), options));
            }
        }
    }
    runs
}

/// Decode anchors: `(id, batch, heads, kv tokens per sequence, head dim)`.
pub const DECODE_ANCHORS: [(&str, usize, usize, usize, usize); 3] = [
    ("decode", 64, 32, 1024, 128),
    ("decode_b8", 8, 32, 1024, 128),
    ("decode_b1_4k", 1, 32, 4096, 128),
];

/// Bytes a memory-bound dense call must move: Q, K, V read once, O written once (16-bit).
fn dense_bytes(p: &DenseAttention) -> f64 {
    2.0 * (2 * p.q_len() + 2 * p.kv_len()) as f64
}

fn median(mut xs: Vec<f32>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f32::NAN) as f64
}

fn count_nan(gpu: &CudaAttention, t: &GpuTensor) -> Result<usize, KernelError> {
    Ok(gpu.download(t)?.iter().filter(|x| x.is_nan()).count())
}

/// How many input sets to rotate so that one pass does not fit in a 60 MB L2.
fn sets_for(bytes: f64) -> usize {
    (256e6 / bytes).ceil().clamp(1.0, 4.0) as usize
}

/// Times every anchor with `iters` timed calls each.
pub fn run(gpu: &CudaAttention, dtype: DType, iters: usize) -> Result<Vec<BenchRow>, KernelError> {
    let mut rows = Vec::new();
    let mut seed = 1u64;
    let mut next_seed = || {
        seed += 1;
        seed
    };

    // Memory ceiling: a 2 GiB device-to-device copy, counting bytes read plus written.
    let copy_bytes = 2usize << 30;
    let (src, mut dst) = gpu.copy_buffers(copy_bytes)?;
    let ms = median(gpu.time_ms(2, iters, || gpu.copy(&src, &mut dst))?);
    rows.push(BenchRow {
        id: "copy".into(),
        shape: "device copy 2 GiB".into(),
        unit: "GB/s",
        ms,
        value: 2.0 * copy_bytes as f64 / ms / 1e6,
        nan: 0,
        problem: None,
        projection: None,
    });
    drop((src, dst));
    rows.extend(projection_rows(gpu, dtype, iters)?);

    for (id, p, options) in dense_runs() {
        if options
            .variant
            .is_some_and(|v| !gpu.has_kernel(&v.kernel(dtype)))
        {
            continue; // left out on this device (too much shared memory)
        }
        let memory_bound = p.seq_q <= 32;
        let sets = if memory_bound {
            sets_for(dense_bytes(&p))
        } else {
            1
        };
        let mut inputs = Vec::new();
        for _ in 0..sets {
            inputs.push((
                gpu.random(dtype, p.q_len(), next_seed())?,
                gpu.random(dtype, p.kv_len(), next_seed())?,
                gpu.random(dtype, p.kv_len(), next_seed())?,
            ));
        }
        let gaps = gpu.upload_gaps(&p)?;
        let mut out = gpu.poisoned(dtype, p.q_len())?;
        let sq = Strides::contiguous(p.seq_q, p.heads, p.head_dim);
        let mut turn = 0usize;
        let times = gpu.time_ms(3, iters, || {
            let (q, k, v) = &inputs[turn % sets];
            turn += 1;
            let args = DenseInputs::contiguous(&p, &q.data, &k.data, &v.data, gaps.as_ref());
            gpu.dense_launch(&p, dtype, &args, &mut out.data, sq, None, options)
        })?;
        let ms = median(times);
        let (unit, value) = if memory_bound {
            ("GB/s", dense_bytes(&p) / ms / 1e6)
        } else {
            ("TFLOP/s", p.flops() / ms / 1e9)
        };
        let mut shape = format!(
            "B{} H{} q{} kv{} D{}{}",
            p.batch,
            p.heads,
            p.seq_q,
            p.seq_kv,
            p.head_dim,
            if p.causal { " causal" } else { "" }
        );
        if let Some(v) = options.variant {
            shape.push_str(&format!(" ({})", v.label()));
        }
        if !p.kv_gaps.is_empty() {
            shape.push_str(" (Lynx pad gaps)");
        }
        rows.push(BenchRow {
            id,
            shape,
            unit,
            ms,
            value,
            nan: count_nan(gpu, &out)?,
            problem: Some(ShapeParams {
                batch: p.batch,
                heads: p.heads,
                seq_q: p.seq_q,
                seq_kv: p.seq_kv,
                head_dim: p.head_dim,
                causal: p.causal,
                decode: false,
            }),
            projection: None,
        });
    }

    // Each anchor with the default unroll, then with every compiled one (`id@u<n>`).
    let decode_runs = DECODE_ANCHORS.iter().flat_map(|&anchor| {
        std::iter::once((anchor, None))
            .chain(DECODE_UNROLLS.iter().map(move |&u| (anchor, Some(u))))
    });
    for ((id, batch, heads, len, head_dim), unroll) in decode_runs {
        let options = DecodeOptions {
            splits: None,
            unroll,
        };
        let id = match unroll {
            None => id.to_string(),
            Some(u) => format!("{id}@u{u}"),
        };
        let block_size = 16;
        let max_blocks = len.div_ceil(block_size);
        let num_blocks = batch * max_blocks;
        // A scrambled block table, as after allocator churn (a fixed permutation).
        let table: Vec<u32> = (0..num_blocks as u64)
            .map(|i| ((i * 2_654_435_761) % num_blocks as u64) as u32)
            .collect();
        let p = DecodeAttention {
            batch,
            heads,
            head_dim,
            block_size,
            num_blocks,
            max_blocks,
            scale: 1.0 / (head_dim as f32).sqrt(),
            seq_lens: vec![len as u32; batch],
            block_table: table,
        };
        let bytes = p.bytes();
        let sets = sets_for(bytes);
        let mut caches = Vec::new();
        for _ in 0..sets {
            caches.push((
                gpu.random(dtype, p.cache_len(), next_seed())?,
                gpu.random(dtype, p.cache_len(), next_seed())?,
            ));
        }
        let q = gpu.random(dtype, batch * heads * head_dim, next_seed())?;
        let mut out = gpu.poisoned(dtype, batch * heads * head_dim)?;
        let lens = gpu.upload_i32(&p.seq_lens.iter().map(|&l| l as i32).collect::<Vec<_>>())?;
        let table = gpu.upload_i32(&p.block_table.iter().map(|&b| b as i32).collect::<Vec<_>>())?;
        let mut turn = 0usize;
        let times = gpu.time_ms(3, iters, || {
            let (kc, vc) = &caches[turn % sets];
            turn += 1;
            let tables = DecodeTables {
                seq_lens: &lens,
                block_table: &table,
            };
            gpu.decode_launch(
                &p,
                dtype,
                &q.data,
                &kc.data,
                &vc.data,
                tables,
                &mut out.data,
                options,
            )
        })?;
        let ms = median(times);
        rows.push(BenchRow {
            id,
            shape: format!(
                "decode B{batch} H{heads} kv{len} D{head_dim} paged/16{}",
                unroll.map(|u| format!(" (u{u})")).unwrap_or_default()
            ),
            unit: "GB/s",
            ms,
            value: bytes / ms / 1e6,
            nan: count_nan(gpu, &out)?,
            problem: Some(ShapeParams {
                batch,
                heads,
                seq_q: 1,
                seq_kv: len,
                head_dim,
                causal: false,
                decode: true,
            }),
            projection: None,
        });
    }
    Ok(rows)
}
