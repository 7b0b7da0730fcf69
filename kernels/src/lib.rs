//! Lynx Serve's GPU kernels and their CPU reference.
//!
//! The kernels are CUDA C files of their own (`kernels/cuda/*.cu`), embedded in the binary,
//! compiled at run time by NVRTC for the device's architecture (cached on disk by source hash,
//! architecture and NVRTC version) and launched through cudarc. The CUDA libraries are loaded
//! dynamically, so binaries build and start on machines without them; [`cuda::CudaAttention::new`]
//! reports a missing library as an error instead of failing at start.
//!
//! - [`problem`]: the attention calls Lynx makes (dense self/cross/causal attention with Lynx's
//!   masked pad gap, and decode over a paged KV cache), validated.
//! - [`cpu`]: the reference implementation (f64 accumulation), behind the same
//!   [`AttentionBackend`] interface as the GPU path.
//! - [`host`]: the CPU serving kernels (f32, SIMD, every core): what `--device cpu` runs.
//! - [`cuda`]: the GPU implementation.
//! - [`nvrtc`]: run-time compilation, the on-disk cache and the ptxas resource report.
//! - [`projection`]: the resampler's fused vision-token projection (problem, the host-side
//!   folding of LayerNorm and the frame embedding, f64 reference).
//! - [`ops`]: host references of the small kernels (norms, activations, RoPE, selection).
//! - [`source`]: the kernel sources and the kernel names each file defines.
//! - `selftest` and `bench` (feature `tools`): `lynx-worker gpu-selftest` and `gpu-bench`.

#[cfg(feature = "tools")]
pub mod bench;
pub mod cpu;
pub mod cuda;
mod error;
pub mod host;
pub mod nvrtc;
pub mod ops;
pub mod problem;
pub mod projection;
#[cfg(feature = "tools")]
pub mod selftest;
pub mod source;

pub use error::KernelError;
pub use problem::{DType, DecodeAttention, DenseAttention, KvCacheWrite, Precision, Strides};

/// One attention implementation (CPU reference or GPU) behind the interface the model calls.
///
/// Tensors are `[batch, seq, heads, head_dim]` (queries, keys, values, outputs; decode queries
/// and outputs have `seq` = 1) and the paged KV cache is `[num_blocks, heads, block_size,
/// head_dim]` for K and for V.
pub trait AttentionBackend {
    /// The backend's tensor type.
    type Tensor;

    /// Dense attention (vision self-attention, resampler cross-attention, causal LLM prefill).
    /// With `cache`, also writes the keys and values of every attended token into the paged
    /// cache (pad-gap tokens dropped).
    fn dense(
        &self,
        problem: &DenseAttention,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        out: &mut Self::Tensor,
        cache: Option<KvCacheWrite<'_, Self::Tensor>>,
    ) -> Result<(), KernelError>;

    /// One decode step: one query per sequence over the paged cache.
    fn decode(
        &self,
        problem: &DecodeAttention,
        q: &Self::Tensor,
        k_cache: &Self::Tensor,
        v_cache: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<(), KernelError>;
}
