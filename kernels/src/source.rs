//! The kernel sources (CUDA C, compiled by NVRTC) and the kernels each defines.

/// Helpers shared by every kernel file (included textually).
pub const PRELUDE: &str = include_str!("../cuda/prelude.cuh");

/// One CUDA C file of kernels.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// File name (for logs and compiler messages).
    pub name: &'static str,
    /// The source as written.
    pub source: &'static str,
}

/// Fused dense attention (ViT self-attention, resampler cross-attention, causal prefill).
pub const FLASH_FWD: KernelFile = KernelFile {
    name: "flash_fwd.cu",
    source: include_str!("../cuda/flash_fwd.cu"),
};

/// Paged decode attention and the split combiner.
pub const DECODE: KernelFile = KernelFile {
    name: "decode.cu",
    source: include_str!("../cuda/decode.cu"),
};

/// The compiled `flash_fwd` variants: (head dim, warps per block); a block computes 16 query rows
/// per warp against 64-key tiles.
pub const FWD_VARIANTS: [(usize, usize); 5] = [(64, 2), (64, 4), (88, 4), (128, 4), (128, 8)];

/// Keys per tile of every `flash_fwd` variant.
pub const FWD_BLOCK_N: usize = 64;

/// Name of the dense attention kernel for a dtype, head dim and warp count.
pub fn fwd_kernel(dtype: crate::DType, head_dim: usize, warps: usize) -> String {
    format!("flash_fwd_{dtype}_d{head_dim}_w{warps}")
}

/// Dynamic shared memory of a `flash_fwd` variant: the Q tile plus two stages of K and V tiles,
/// rows padded to the mma k-step plus 16 bytes.
pub fn fwd_shared_bytes(head_dim: usize, warps: usize) -> usize {
    let row = head_dim.div_ceil(16) * 16 + 8;
    (16 * warps + 4 * FWD_BLOCK_N) * row * 2
}

/// Name of the paged decode kernel for a dtype and head dim.
pub fn decode_kernel(dtype: crate::DType, head_dim: usize) -> String {
    format!("paged_decode_{dtype}_d{head_dim}")
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
        names.extend(FWD_VARIANTS.iter().map(|&(d, w)| fwd_kernel(dtype, d, w)));
        names.extend(
            crate::problem::HEAD_DIMS
                .iter()
                .map(|&d| decode_kernel(dtype, d)),
        );
        names.push(combine_kernel(dtype));
        names.push(fill_kernel(dtype));
    }
    names
}

/// Every kernel file.
pub const ALL: [KernelFile; 2] = [FLASH_FWD, DECODE];

impl KernelFile {
    /// The self-contained source handed to NVRTC (the prelude include resolved).
    pub fn full_source(&self) -> String {
        self.source.replace("#include \"prelude.cuh\"", PRELUDE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_kernel_is_defined_in_a_file() {
        for name in all_kernels() {
            let defined = ALL.iter().any(|f| {
                f.source.contains(&format!("({name},")) || f.source.contains(&format!(" {name}("))
            });
            assert!(defined, "{name} is not defined in any kernel file");
        }
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
