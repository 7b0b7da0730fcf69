//! Launches of the selection kernels over f32 logits: greedy pick and top-k log-probabilities.
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::elem::{need, rows_cfg, ROW_THREADS};
use super::{driver, CudaAttention};
use crate::KernelError;

impl CudaAttention {
    /// Greedy pick per row of f32 logits `[rows][cols]` into `out` (`[rows]`).
    pub fn argmax(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        out: &mut CudaSlice<i32>,
    ) -> Result<(), KernelError> {
        need("logits", logits.len(), rows * cols)?;
        need("argmax output", out.len(), rows)?;
        let cfg = rows_cfg(rows, ROW_THREADS)?;
        let f = self.function("argmax_f32")?;
        let c = cols as i32;
        let mut launch = self.stream.launch_builder(f);
        launch.arg(logits).arg(&c).arg(out);
        // SAFETY: (logits, cols, out) as in ops.cu; extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("argmax launch"))?;
        Ok(())
    }

    /// The `k` (<= 64) best log-probabilities per row and their indices, `[rows][k]` each.
    pub fn topk_logprobs(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        k: usize,
        values: &mut CudaSlice<f32>,
        indices: &mut CudaSlice<i32>,
    ) -> Result<(), KernelError> {
        if k == 0 || k > 64 || k > cols {
            return Err(KernelError::Invalid(format!("top-{k} of {cols} (1..=64)")));
        }
        need("logits", logits.len(), rows * cols)?;
        need("top-k values", values.len(), rows * k)?;
        need("top-k indices", indices.len(), rows * k)?;
        let cfg = rows_cfg(rows, ROW_THREADS)?;
        let f = self.function("topk_logprobs_f32")?;
        let (c, kk) = (cols as i32, k as i32);
        let mut launch = self.stream.launch_builder(f);
        launch.arg(logits).arg(&c).arg(&kk).arg(values).arg(indices);
        // SAFETY: (logits, cols, k, values, indices) as in ops.cu; k <= 64 (the kernel's
        // bound), extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("topk launch"))?;
        Ok(())
    }
}
