//! Launches of the selection kernels: greedy pick (at any precision) and top-k log-probabilities
//! (f32).
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::elem::{elem, flat_cfg, need, rows_cfg, DeviceIndices, Elem, ROW_THREADS};
use super::{driver, CudaAttention};
use crate::problem::Precision;
use crate::{source, KernelError};

impl CudaAttention {
    /// Sets the flat positions `at` of `x` to -inf (tokens a greedy row may not pick).
    pub fn ban<S: Elem>(
        &self,
        precision: Precision,
        x: &mut CudaSlice<S>,
        at: &DeviceIndices,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        need("banned logits", x.len(), at.bound())?;
        if at.is_empty() {
            return Ok(());
        }
        let f = self.function(&source::op_kernel("ban", precision))?;
        let n = at.len() as i32;
        let mut launch = self.stream.launch_builder(f);
        launch.arg(x).arg(at.data()).arg(&n);
        // SAFETY: (x, at, n) as in ops.cu; every entry of `at` is below its bound <= x's length.
        unsafe { launch.launch(flat_cfg(at.len())) }.map_err(driver("ban launch"))?;
        Ok(())
    }

    /// Greedy pick per row of logits `[rows][cols]` stored at `precision` into `out` (`[rows]`):
    /// the first index of the maximum, as `torch.argmax` (NaN never wins).
    pub fn argmax<S: Elem>(
        &self,
        precision: Precision,
        logits: &CudaSlice<S>,
        rows: usize,
        cols: usize,
        out: &mut CudaSlice<i32>,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        need("logits", logits.len(), rows * cols)?;
        need("argmax output", out.len(), rows)?;
        let cfg = rows_cfg(rows, ROW_THREADS)?;
        let f = self.function(&source::op_kernel("argmax", precision))?;
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
