//! The kernel sources (CUDA C, compiled by NVRTC) and the kernels each defines.

/// Helpers shared by every kernel file (included textually).
pub const PRELUDE: &str = include_str!("../cuda/prelude.cuh");

/// One compilation unit: a CUDA C file of kernels, or a part of one selected by a define.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// File name (for compiler messages).
    pub name: &'static str,
    /// Unit name (for logs and cached CUBINs): the file's stem, plus the part it compiles.
    pub unit: &'static str,
    /// The source as written.
    pub source: &'static str,
    /// Lines put before the source (the part of the file this unit compiles).
    pub defines: &'static str,
}

const fn file(name: &'static str, unit: &'static str, source: &'static str) -> KernelFile {
    KernelFile {
        name,
        unit,
        source,
        defines: "",
    }
}

const FLASH_FWD_SOURCE: &str = include_str!("../cuda/flash_fwd.cu");

/// Fused dense attention (ViT self-attention, resampler cross-attention, causal prefill), one
/// unit per element type and head dim: the largest file, compiled as six parallel parts.
const fn flash_fwd(unit: &'static str, defines: &'static str) -> KernelFile {
    KernelFile {
        name: "flash_fwd.cu",
        unit,
        source: FLASH_FWD_SOURCE,
        defines,
    }
}

/// Paged decode attention and the split combiner.
pub const DECODE: KernelFile = file("decode.cu", "decode", include_str!("../cuda/decode.cu"));

/// The fused vision-token projection of the resampler (frame embedding + LayerNorm + `to_kv`
/// GEMM + K/V head split).
pub const PROJECTION: KernelFile = file(
    "projection.cu",
    "projection",
    include_str!("../cuda/projection.cu"),
);

/// The small kernels of the forward (norms, activations, RoPE, adds, gather, selection).
pub const OPS: KernelFile = file("ops.cu", "ops", include_str!("../cuda/ops.cu"));

/// Dynamic shared memory of the projection kernel: four stages of the A and B tiles and the
/// frame-embedding slice, `(128 + 128 + 16)` rows of `32 + 8` elements each.
pub const PROJECTION_SHARED_BYTES: usize = 4 * (128 + 128 + 16) * 40 * 2;

/// Most frames per video the projection kernel folds the frame embedding for.
pub const PROJECTION_MAX_FRAMES: usize = 16;

/// Name of the projection kernel for a dtype.
pub fn projection_kernel(dtype: crate::DType) -> String {
    format!("vision_projection_{dtype}")
}

/// The per-precision small kernels of ops.cu (`{name}_{bf16|f16|f32}`).
pub const OPS_PER_PRECISION: [&str; 15] = [
    "layernorm",
    "rmsnorm",
    "bias_gelu",
    "silu",
    "silu_mul",
    "rope",
    "qkv_rope_split",
    "add_scaled",
    "add_rows",
    "fill_affine",
    "copy_rows",
    "kv_write",
    "attn_generic",
    "argmax",
    "ban",
];

/// The precision-independent kernels of ops.cu.
pub const OPS_UNTYPED: [&str; 1] = ["topk_logprobs_f32"];

/// Name of a per-precision small kernel.
pub fn op_kernel(op: &str, precision: crate::Precision) -> String {
    format!("{op}_{precision}")
}

/// One compiled `flash_fwd` variant: a block of `warps` warps, each owning `m_tiles` x 16 query
/// rows, streams `block_n`-key tiles; registers are capped so that `min_blocks` blocks fit on a
/// multiprocessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct FwdVariant {
    /// Head dimension.
    pub head_dim: usize,
    /// Warps per block.
    pub warps: usize,
    /// 16-row m-tiles per warp (2: each K/V fragment read from shared memory feeds two).
    pub m_tiles: usize,
    /// Keys per tile.
    pub block_n: usize,
    /// Blocks per multiprocessor the register allocation is capped for (`__launch_bounds__`).
    pub min_blocks: usize,
}

const fn variant(
    head_dim: usize,
    warps: usize,
    m_tiles: usize,
    block_n: usize,
    min_blocks: usize,
) -> FwdVariant {
    FwdVariant {
        head_dim,
        warps,
        m_tiles,
        block_n,
        min_blocks,
    }
}

/// The compiled `flash_fwd` variants (the `FWD_VARIANTS` list of flash_fwd.cu).
pub const FWD_VARIANTS: [FwdVariant; 9] = [
    variant(64, 2, 1, 64, 1),
    variant(64, 4, 1, 64, 1),
    variant(88, 4, 1, 64, 1),
    variant(88, 4, 1, 32, 3),
    variant(88, 4, 2, 32, 1),
    variant(88, 4, 2, 64, 1),
    variant(128, 4, 1, 64, 1),
    variant(128, 8, 1, 64, 1),
    variant(128, 4, 2, 32, 1),
];

impl FwdVariant {
    /// Query rows per block.
    pub fn block_m(&self) -> usize {
        16 * self.m_tiles * self.warps
    }

    /// Kernel name for a dtype.
    pub fn kernel(&self, dtype: crate::DType) -> String {
        format!(
            "flash_fwd_{dtype}_d{}_w{}_m{}_n{}_b{}",
            self.head_dim, self.warps, self.m_tiles, self.block_n, self.min_blocks
        )
    }

    /// Dynamic shared memory: the Q tile plus two stages of K and V tiles, rows padded to the
    /// mma k-step plus 16 bytes.
    pub fn shared_bytes(&self) -> usize {
        let row = self.head_dim.div_ceil(16) * 16 + 8;
        (self.block_m() + 4 * self.block_n) * row * 2
    }

    /// Short label, e.g. `w4m2n32b1`.
    pub fn label(&self) -> String {
        format!(
            "w{}m{}n{}b{}",
            self.warps, self.m_tiles, self.block_n, self.min_blocks
        )
    }
}

/// Keys in flight per lane group of the compiled paged decode kernels.
pub const DECODE_UNROLLS: [usize; 2] = [4, 8];

/// Name of the paged decode kernel for a dtype, head dim and unroll.
pub fn decode_kernel(dtype: crate::DType, head_dim: usize, unroll: usize) -> String {
    format!("paged_decode_{dtype}_d{head_dim}_u{unroll}")
}

/// Name of the split combiner for a dtype.
pub fn combine_kernel(dtype: crate::DType) -> String {
    format!("attn_combine_{dtype}")
}

/// Name of the uniform fill kernel for a dtype.
pub fn fill_kernel(dtype: crate::DType) -> String {
    format!("fill_uniform_{dtype}")
}

/// Every kernel of every file, by name.
pub fn all_kernels() -> Vec<String> {
    let mut names = Vec::new();
    for dtype in [crate::DType::Bf16, crate::DType::F16] {
        names.extend(FWD_VARIANTS.iter().map(|v| v.kernel(dtype)));
        for d in crate::problem::HEAD_DIMS {
            names.extend(DECODE_UNROLLS.iter().map(|&u| decode_kernel(dtype, d, u)));
        }
        names.push(combine_kernel(dtype));
        names.push(fill_kernel(dtype));
        names.push(projection_kernel(dtype));
    }
    for precision in [
        crate::Precision::Bf16,
        crate::Precision::F16,
        crate::Precision::F32,
    ] {
        names.extend(OPS_PER_PRECISION.iter().map(|op| op_kernel(op, precision)));
    }
    names.extend(OPS_UNTYPED.iter().map(|s| s.to_string()));
    names
}

/// Every compilation unit.
pub const ALL: [KernelFile; 9] = [
    flash_fwd(
        "flash_fwd_bf16_d64",
        "#define FWD_UNIT FWD_VARIANTS_D64(Bf16, bf16)\n",
    ),
    flash_fwd(
        "flash_fwd_bf16_d88",
        "#define FWD_UNIT FWD_VARIANTS_D88(Bf16, bf16)\n",
    ),
    flash_fwd(
        "flash_fwd_bf16_d128",
        "#define FWD_UNIT FWD_VARIANTS_D128(Bf16, bf16)\n",
    ),
    flash_fwd(
        "flash_fwd_f16_d64",
        "#define FWD_UNIT FWD_VARIANTS_D64(F16, f16)\n",
    ),
    flash_fwd(
        "flash_fwd_f16_d88",
        "#define FWD_UNIT FWD_VARIANTS_D88(F16, f16)\n",
    ),
    flash_fwd(
        "flash_fwd_f16_d128",
        "#define FWD_UNIT FWD_VARIANTS_D128(F16, f16)\n",
    ),
    DECODE,
    PROJECTION,
    OPS,
];

impl KernelFile {
    /// The self-contained source handed to NVRTC (the unit's defines first, the prelude include
    /// resolved).
    pub fn full_source(&self) -> String {
        let source = self.source.replace("#include \"prelude.cuh\"", PRELUDE);
        format!("{}{source}", self.defines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    /// The text that defines kernel `name` in its file (a macro instantiation or a signature).
    fn definition(name: &str) -> String {
        for dtype in [DType::Bf16, DType::F16] {
            if let Some(v) = FWD_VARIANTS.iter().find(|v| v.kernel(dtype) == name) {
                return format!(
                    "FWD_KERNEL(T, TN, {}, {}, {}, {}, {})",
                    v.head_dim, v.warps, v.m_tiles, v.block_n, v.min_blocks
                );
            }
            for d in crate::problem::HEAD_DIMS {
                for u in DECODE_UNROLLS {
                    if decode_kernel(dtype, d, u) == name {
                        return format!("DECODE_KERNEL(T, TN, {d}, {u})");
                    }
                }
            }
        }
        for precision in [
            crate::Precision::Bf16,
            crate::Precision::F16,
            crate::Precision::F32,
        ] {
            for op in OPS_PER_PRECISION {
                if op_kernel(op, precision) == name {
                    return format!("void {op}_##TN(");
                }
            }
        }
        format!(" {name}(")
    }

    #[test]
    fn every_named_kernel_is_defined_in_a_file() {
        for name in all_kernels() {
            let text = definition(&name);
            assert!(
                ALL.iter().any(|f| f.source.contains(&text)),
                "{name} ({text}) is not defined in any kernel file"
            );
        }
    }

    /// Dynamic shared memory a block may opt into on the smallest parts a worker supports
    /// (sm_86, sm_89, sm_120: 99 KB).
    const SMALLEST_SHARED_OPTIN: usize = 101_376;

    /// Variants that need more are left out on such a device; the defaults and the projection
    /// must fit, or those GPUs could not serve.
    #[test]
    fn default_variants_and_the_projection_fit_the_smallest_supported_gpus() {
        for d in crate::problem::HEAD_DIMS {
            for seq_q in [1, 16, 32, 33, 257, 2048] {
                let p = crate::DenseAttention::new(1, 1, seq_q, seq_q.max(64), d);
                let v = crate::cuda::CudaAttention::default_variant(&p);
                assert!(
                    v.shared_bytes() <= SMALLEST_SHARED_OPTIN,
                    "{v:?}: {} bytes",
                    v.shared_bytes()
                );
            }
        }
        const { assert!(PROJECTION_SHARED_BYTES <= SMALLEST_SHARED_OPTIN) };
        // Some compiled variant does not fit there: the device check at start is needed.
        assert!(FWD_VARIANTS
            .iter()
            .any(|v| v.shared_bytes() > SMALLEST_SHARED_OPTIN));
    }

    #[test]
    fn prelude_is_inlined() {
        for file in ALL {
            let full = file.full_source();
            assert!(!full.contains("#include"), "{}", file.name);
            assert!(full.contains("struct Bf16"), "{}", file.name);
        }
    }
}
