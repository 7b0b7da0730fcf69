//! The CPU serving kernels: f32 arithmetic as PyTorch's CPU backend does it, in loops the compiler
//! vectorises (independent accumulators, no fused multiply-add calls) and spread over the
//! machine's cores. They compute what
//! the f64 references of [`crate::ops`] and [`crate::cpu`] compute, to f32 rounding.
//!
//! - [`gemm`]: `nn.Linear` (`y = x W^T + b`, optionally added to `y`): the `gemm` crate's
//!   packed kernels for many rows, a weight-streaming kernel for the few rows of a decode step;
//! - [`attention`]: dense attention with Lynx's pad gap and decode over the paged KV cache;
//! - [`elementwise`]: norms, GELU, SiLU, RoPE, the fused-QKV split, scaled adds;
//! - [`math`]: vectorisable `exp`, GELU and SiLU.

pub mod attention;
pub mod elementwise;
pub mod gemm;
pub mod math;

use crate::KernelError;

/// Runs `op` compiled for the best instruction set the CPU has (AVX-512, AVX2 + FMA, or the
/// baseline). Only code inlined into `op`'s `with_simd` gets it: a plain function marked
/// `#[inline(always)]` does, a closure's body does not.
#[inline(always)]
pub(crate) fn dispatch<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    pulp::Arch::new().dispatch(op)
}

/// `Ok` when a buffer holds at least `want` elements.
pub(crate) fn need(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got < want {
        return Err(KernelError::Invalid(format!(
            "{what}: {got} elements, needs {want}"
        )));
    }
    Ok(())
}

/// Rows per parallel task so that each task has about `work` elements (at least one row).
pub(crate) fn rows_per_task(rows: usize, cols: usize, work: usize) -> usize {
    (work / cols.max(1)).clamp(1, rows.max(1))
}

/// `len` test values spread over `[-scale / 2, scale / 2)`, a different sequence per `seed`.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let u = ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32;
            (u - 0.5) * scale
        })
        .collect()
}
