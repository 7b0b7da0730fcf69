//! `gpu-selftest`: every kernel variant against the CPU reference on fresh random inputs
//! (attention here, the projection and the small kernels in `layers`).
//!
//! Inputs are drawn from a seed that changes every run (printed, so a failure can be replayed),
//! rounded to the tensor dtype, and the reference runs in f64 on exactly those rounded values.
//! Outputs (and paged caches) are poisoned with NaN first, so an element a kernel fails to write
//! shows up as a NaN. A case passes when no NaN appears and `|out - ref| / |ref| <= 1e-2`
//! (Frobenius norms).

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::cpu::CpuAttention;
use crate::cuda::{
    CudaAttention, DecodeOptions, DecodeTables, DenseInputs, DenseOptions, DeviceCache,
};
use crate::problem::{DType, DecodeAttention, DenseAttention, Strides};
use crate::source::{DECODE_UNROLLS, FWD_VARIANTS};
use crate::{AttentionBackend, KernelError};

mod layers;

/// Relative error bound for 16-bit inputs with f32 accumulation.
pub const TOLERANCE: f64 = 1e-2;

/// One checked case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// Shape class and shape.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// `|out - ref| / |ref|`.
    pub rel_err: f64,
    /// Largest element error.
    pub max_abs_err: f64,
    /// Output elements left NaN (unwritten or broken).
    pub nan: usize,
    /// Paged-cache elements that differ from the keys/values they should hold (prefill cases).
    pub cache_mismatches: usize,
    /// Selected indices (token ids) that differ from the reference's (selection cases).
    #[serde(default)]
    pub index_mismatches: usize,
    /// Element type of the case when it is not `dtype` (f32 cases of the small kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::Precision>,
    /// Whether the case passed.
    pub passed: bool,
}

/// A dense case: the problem plus forced tuning (to cover every compiled variant).
struct DenseCase {
    class: &'static str,
    problem: DenseAttention,
    options: DenseOptions,
    cache_block: Option<usize>,
    /// Keys grow along the sequence (x1 to x5), so the running max rises by far more than the
    /// kernel's lazy-rescale threshold: exercises the rescaling path.
    rising_keys: bool,
}

fn dense_cases() -> Vec<DenseCase> {
    let case = |class, problem, splits, cache_block| DenseCase {
        class,
        problem,
        options: DenseOptions {
            variant: None,
            splits,
        },
        cache_block,
        rising_keys: false,
    };
    // Every compiled variant, on a problem of its head dim with ragged tiles.
    let mut cases: Vec<DenseCase> = FWD_VARIANTS
        .iter()
        .map(|&v| {
            let problem = match v.head_dim {
                64 => DenseAttention::new(2, 2, 200, 77, 64),
                88 => DenseAttention::new(1, 2, 333, 333, 88),
                _ => DenseAttention::new(2, 2, 333, 333, 128)
                    .causal()
                    .with_gaps(vec![(32, 100), (32, 33)]),
            };
            DenseCase {
                class: "variant",
                problem,
                options: DenseOptions {
                    variant: Some(v),
                    splits: Some(1),
                },
                cache_block: (v.head_dim == 128).then_some(16),
                rising_keys: false,
            }
        })
        .collect();
    // Rising scores, with the default variants.
    for problem in [
        DenseAttention::new(1, 2, 333, 333, 88),
        DenseAttention::new(2, 2, 400, 400, 128).causal(),
        DenseAttention::new(2, 2, 32, 700, 64),
    ] {
        cases.push(DenseCase {
            rising_keys: true,
            ..case("rising-scores", problem, Some(1), None)
        });
    }
    // The shape classes with the default variant.
    cases.extend([
        case(
            "vit",
            DenseAttention::new(2, 3, 901, 901, 88),
            Some(1),
            None,
        ),
        case(
            "vit-split",
            DenseAttention::new(1, 2, 130, 130, 88),
            Some(3),
            None,
        ),
        case(
            "resampler",
            DenseAttention::new(3, 2, 32, 933, 64),
            Some(1),
            None,
        ),
        case(
            "resampler-split",
            DenseAttention::new(2, 8, 32, 4505, 64),
            None,
            None,
        ),
        case(
            "prefill-lynx-gap",
            DenseAttention::new(3, 2, 160, 160, 128)
                .causal()
                .with_gaps(vec![(32, 32), (32, 49), (32, 96)]),
            None,
            Some(16),
        ),
        case(
            "prefill-left-pad",
            DenseAttention::new(2, 2, 300, 300, 128)
                .causal()
                .with_gaps(vec![(0, 0), (0, 45)]),
            None,
            Some(32),
        ),
        case(
            "prefill-chunk",
            DenseAttention::new(1, 2, 48, 130, 128).causal(),
            Some(2),
            None,
        ),
        case(
            "prefill-chunk",
            DenseAttention::new(1, 2, 100, 290, 128).causal(),
            Some(3),
            None,
        ),
        case(
            "left-pad-d64",
            DenseAttention::new(2, 2, 70, 70, 64)
                .causal()
                .with_gaps(vec![(0, 0), (0, 23)]),
            Some(1),
            None,
        ),
    ]);
    cases
}

/// Values uniform in `±amplitude`, rounded to `precision`.
fn random_values(
    rng: &mut ChaCha20Rng,
    precision: impl Into<crate::Precision>,
    len: usize,
    amplitude: f32,
) -> Vec<f32> {
    let precision = precision.into();
    (0..len)
        .map(|_| {
            let unit = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
            crate::ops::round(precision, ((2.0 * unit - 1.0) * amplitude) as f64)
        })
        .collect()
}

/// `(rel_err, max_abs_err, nan count)` of `got` against `want`.
pub fn compare(got: &[f32], want: &[f32]) -> (f64, f64, usize) {
    let (mut diff2, mut ref2, mut max_abs, mut nan) = (0f64, 0f64, 0f64, 0usize);
    for (&g, &w) in got.iter().zip(want) {
        if g.is_nan() {
            nan += 1;
            continue;
        }
        let d = (g as f64 - w as f64).abs();
        diff2 += d * d;
        ref2 += (w as f64) * (w as f64);
        max_abs = max_abs.max(d);
    }
    let rel = if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else {
        diff2.sqrt()
    };
    (rel, max_abs, nan)
}

fn verdict(
    name: String,
    dtype: DType,
    got: &[f32],
    want: &[f32],
    cache_mismatches: usize,
) -> CaseResult {
    let (rel_err, max_abs_err, nan) = compare(got, want);
    CaseResult {
        name,
        dtype,
        rel_err,
        max_abs_err,
        nan,
        cache_mismatches,
        index_mismatches: 0,
        precision: None,
        passed: nan == 0
            && rel_err <= TOLERANCE
            && cache_mismatches == 0
            && got.len() == want.len(),
    }
}

fn describe(p: &DenseAttention) -> String {
    format!(
        "B{} H{} q{} kv{} D{}{}{}",
        p.batch,
        p.heads,
        p.seq_q,
        p.seq_kv,
        p.head_dim,
        if p.causal { " causal" } else { "" },
        if p.kv_gaps.iter().any(|(lo, hi)| hi > lo) {
            " gaps"
        } else {
            ""
        }
    )
}

fn run_dense(
    gpu: &CudaAttention,
    cpu: &CpuAttention,
    case: &DenseCase,
    dtype: DType,
    rng: &mut ChaCha20Rng,
) -> Result<CaseResult, KernelError> {
    let p = &case.problem;
    let q = random_values(rng, dtype, p.q_len(), 2.0);
    let mut k = random_values(rng, dtype, p.kv_len(), 2.0);
    if case.rising_keys {
        let row = p.heads * p.head_dim;
        for (i, x) in k.iter_mut().enumerate() {
            let j = (i / row) % p.seq_kv;
            *x = dtype.decode(dtype.encode(*x * (1.0 + 4.0 * j as f32 / p.seq_kv as f32)));
        }
    }
    let v = random_values(rng, dtype, p.kv_len(), 1.0);
    let mut want = vec![0f32; p.q_len()];
    cpu.dense(p, &q, &k, &v, &mut want, None)?;

    let (qd, kd, vd) = (
        gpu.upload(dtype, &q)?,
        gpu.upload(dtype, &k)?,
        gpu.upload(dtype, &v)?,
    );
    let mut out = gpu.poisoned(dtype, p.q_len())?;
    let gaps = gpu.upload_gaps(p)?;
    let strides_q = Strides::contiguous(p.seq_q, p.heads, p.head_dim);
    let inputs = DenseInputs::contiguous(p, &qd.data, &kd.data, &vd.data, gaps.as_ref());
    let mut cache_mismatches = 0;
    let mut name = format!("{}: {}", case.class, describe(p));
    match case.cache_block {
        None => gpu.dense_launch(
            p,
            dtype,
            &inputs,
            &mut out.data,
            strides_q,
            None,
            case.options,
        )?,
        Some(block_size) => {
            name.push_str(&format!(" +paged cache (block {block_size})"));
            let max_blocks = p.seq_kv.div_ceil(block_size);
            let num_blocks = p.batch * max_blocks + 3;
            // Blocks handed out in a scrambled order, as an allocator would after churn.
            let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.next_u32() as usize % (i + 1));
            }
            let table: Vec<u32> = ids[..p.batch * max_blocks].to_vec();
            let cache_len = num_blocks * p.heads * block_size * p.head_dim;
            let mut kc = gpu.poisoned(dtype, cache_len)?;
            let mut vc = gpu.poisoned(dtype, cache_len)?;
            let table_dev = gpu.upload_i32(&table.iter().map(|&b| b as i32).collect::<Vec<_>>())?;
            let cache = DeviceCache {
                k: &mut kc.data,
                v: &mut vc.data,
                block_table: &table_dev,
                block_size,
                max_blocks,
            };
            gpu.dense_launch(
                p,
                dtype,
                &inputs,
                &mut out.data,
                strides_q,
                Some(cache),
                case.options,
            )?;
            let (kc, vc) = (gpu.download(&kc)?, gpu.download(&vc)?);
            let d = p.head_dim;
            for b in 0..p.batch {
                for j in 0..p.seq_kv {
                    let Some(pos) = p.cache_position(b, j) else {
                        continue;
                    };
                    let block = table[b * max_blocks + pos / block_size] as usize;
                    for h in 0..p.heads {
                        let at = ((block * p.heads + h) * block_size + pos % block_size) * d;
                        let src = ((b * p.seq_kv + j) * p.heads + h) * d;
                        cache_mismatches += (0..d)
                            .filter(|&x| kc[at + x].to_bits() != k[src + x].to_bits())
                            .count();
                        cache_mismatches += (0..d)
                            .filter(|&x| vc[at + x].to_bits() != v[src + x].to_bits())
                            .count();
                    }
                }
            }
        }
    }
    gpu.synchronize()?;
    let got = gpu.download(&out)?;
    if let Some(v) = case.options.variant {
        name.push_str(&format!(" {}", v.label()));
    }
    if let Some(s) = case.options.splits {
        name.push_str(&format!(" splits{s}"));
    }
    Ok(verdict(name, dtype, &got, &want, cache_mismatches))
}

fn run_decode(
    gpu: &CudaAttention,
    cpu: &CpuAttention,
    head_dim: usize,
    options: DecodeOptions,
    dtype: DType,
    rng: &mut ChaCha20Rng,
) -> Result<CaseResult, KernelError> {
    let (heads, block_size) = (3, 16);
    let seq_lens: Vec<u32> = vec![1, 17, 300, 64, 0, 129];
    let batch = seq_lens.len();
    let max_blocks = 300usize.div_ceil(block_size);
    let num_blocks = batch * max_blocks + 5;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.next_u32() as usize % (i + 1));
    }
    let p = DecodeAttention {
        batch,
        heads,
        head_dim,
        block_size,
        num_blocks,
        max_blocks,
        scale: 1.0 / (head_dim as f32).sqrt(),
        seq_lens,
        block_table: ids[..batch * max_blocks].to_vec(),
    };
    let q = random_values(rng, dtype, batch * heads * head_dim, 2.0);
    let kc = random_values(rng, dtype, p.cache_len(), 2.0);
    let vc = random_values(rng, dtype, p.cache_len(), 1.0);
    let mut want = vec![0f32; q.len()];
    cpu.decode(&p, &q, &kc, &vc, &mut want)?;
    let (qd, kd, vd) = (
        gpu.upload(dtype, &q)?,
        gpu.upload(dtype, &kc)?,
        gpu.upload(dtype, &vc)?,
    );
    let mut out = gpu.poisoned(dtype, q.len())?;
    let lens = gpu.upload_i32(&p.seq_lens.iter().map(|&l| l as i32).collect::<Vec<_>>())?;
    let table = gpu.upload_i32(&p.block_table.iter().map(|&b| b as i32).collect::<Vec<_>>())?;
    let tables = DecodeTables {
        seq_lens: &lens,
        block_table: &table,
    };
    gpu.decode_launch(
        &p,
        dtype,
        &qd.data,
        &kd.data,
        &vd.data,
        tables,
        &mut out.data,
        options,
    )?;
    gpu.synchronize()?;
    let got = gpu.download(&out)?;
    let name = format!(
        "decode: B{batch} H{heads} D{head_dim} lens {:?} block {block_size} u{} splits{}",
        p.seq_lens,
        options.unroll.unwrap_or(4),
        options.splits.unwrap_or(0)
    );
    Ok(verdict(name, dtype, &got, &want, 0))
}

/// Runs every case for both dtypes; `seed` picks the random inputs.
pub fn run(gpu: &CudaAttention, seed: u64) -> Result<Vec<CaseResult>, KernelError> {
    let cpu = CpuAttention::default();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut results = Vec::new();
    for dtype in [DType::Bf16, DType::F16] {
        for case in dense_cases() {
            // A variant left out on this device (too much shared memory) is not a failure.
            if case
                .options
                .variant
                .is_some_and(|v| !gpu.has_kernel(&v.kernel(dtype)))
            {
                continue;
            }
            results.push(run_dense(gpu, &cpu, &case, dtype, &mut rng)?);
        }
        for head_dim in crate::problem::HEAD_DIMS {
            for unroll in DECODE_UNROLLS {
                for splits in [1, 4] {
                    let options = DecodeOptions {
                        splits: Some(splits),
                        unroll: Some(unroll),
                    };
                    results.push(run_decode(gpu, &cpu, head_dim, options, dtype, &mut rng)?);
                }
            }
        }
        results.extend(layers::run(gpu, dtype, &mut rng)?);
    }
    results.extend(layers::run_f32(gpu, &mut rng)?);
    Ok(results)
}
