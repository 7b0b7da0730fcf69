//! Launches of the small kernels (ops.cu). Every launcher checks buffer extents against the
//! shape it is given; values that index memory (token ids, RoPE positions) are validated on the
//! host when they are uploaded.
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{driver, CudaAttention};
use crate::problem::DType;
use crate::{source, KernelError};

/// Threads per block of the row kernels.
const ROW_THREADS: u32 = 256;

/// RoPE positions or token ids on the device, checked against their bound at upload.
#[derive(Debug)]
pub struct DevicePositions {
    data: CudaSlice<i32>,
    bound: usize,
}

impl DevicePositions {
    /// Entries.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn need(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got < want {
        return Err(KernelError::Invalid(format!(
            "{what}: {got} elements, needs {want}"
        )));
    }
    Ok(())
}

fn rows_cfg(rows: usize) -> Result<LaunchConfig, KernelError> {
    if rows == 0 || rows > i32::MAX as usize {
        return Err(KernelError::Invalid(format!("{rows} rows")));
    }
    Ok(LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn flat_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaAttention {
    /// Uploads values that index a table of `bound` rows (positions, token ids); any value
    /// `>= bound` is an error here, before it can reach a kernel.
    pub fn upload_indices(
        &self,
        values: &[u32],
        bound: usize,
    ) -> Result<DevicePositions, KernelError> {
        if let Some(bad) = values.iter().find(|&&v| v as usize >= bound) {
            return Err(KernelError::Invalid(format!(
                "index {bad} outside a table of {bound} rows"
            )));
        }
        let ints: Vec<i32> = values.iter().map(|&v| v as i32).collect();
        Ok(DevicePositions {
            data: self.upload_i32(&ints)?,
            bound,
        })
    }

    /// LayerNorm of `rows` rows of `cols` (`gamma`, `beta`: `[cols]`).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        dtype: DType,
        x: &CudaSlice<u16>,
        gamma: &CudaSlice<u16>,
        beta: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        need("layernorm input", x.len(), rows * cols)?;
        need("layernorm output", out.len(), rows * cols)?;
        need("layernorm weight", gamma.len().min(beta.len()), cols)?;
        let cfg = rows_cfg(rows)?;
        let f = self.function(&source::op_kernel("layernorm", dtype))?;
        let (cols, mut launch) = (cols as i32, self.stream.launch_builder(f));
        launch
            .arg(x)
            .arg(gamma)
            .arg(beta)
            .arg(out)
            .arg(&cols)
            .arg(&eps);
        // SAFETY: (x, gamma, beta, out, cols, eps) as in ops.cu; extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("layernorm launch"))?;
        Ok(())
    }

    /// RMSNorm of `rows` rows of `cols` (`weight`: `[cols]`).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &self,
        dtype: DType,
        x: &CudaSlice<u16>,
        weight: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        need("rmsnorm input", x.len(), rows * cols)?;
        need("rmsnorm output", out.len(), rows * cols)?;
        need("rmsnorm weight", weight.len(), cols)?;
        let cfg = rows_cfg(rows)?;
        let f = self.function(&source::op_kernel("rmsnorm", dtype))?;
        let (cols, mut launch) = (cols as i32, self.stream.launch_builder(f));
        launch.arg(x).arg(weight).arg(out).arg(&cols).arg(&eps);
        // SAFETY: (x, weight, out, cols, eps) as in ops.cu; extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("rmsnorm launch"))?;
        Ok(())
    }

    /// Exact GELU in place over `n` elements, after adding `bias` (`[cols]`) when given.
    pub fn bias_gelu(
        &self,
        dtype: DType,
        x: &mut CudaSlice<u16>,
        bias: Option<&CudaSlice<u16>>,
        n: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        need("gelu input", x.len(), n)?;
        if cols == 0 || !n.is_multiple_of(cols) {
            return Err(KernelError::Invalid(format!(
                "{n} elements in rows of {cols}"
            )));
        }
        if let Some(b) = bias {
            need("gelu bias", b.len(), cols)?;
        }
        let stream = &self.stream;
        let bias_ptr = bias.map(|b| b.device_ptr(stream));
        let (xp, _g) = x.device_ptr_mut(stream);
        let f = self.function(&source::op_kernel("bias_gelu", dtype))?;
        let (n64, cols, bp) = (n as u64, cols as i32, bias_ptr.as_ref().map_or(0, |b| b.0));
        let mut launch = stream.launch_builder(f);
        launch.arg(&xp).arg(&bp).arg(&n64).arg(&cols);
        // SAFETY: (x, bias or null, n, cols) as in ops.cu; extents checked above.
        unsafe { launch.launch(flat_cfg(n)) }.map_err(driver("bias_gelu launch"))?;
        Ok(())
    }

    /// `out = round(silu(gate)) * up` from the fused `[rows][2 * inter]` gate|up projection.
    pub fn silu_mul(
        &self,
        dtype: DType,
        gate_up: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        rows: usize,
        inter: usize,
    ) -> Result<(), KernelError> {
        need("gate|up", gate_up.len(), rows * 2 * inter)?;
        need("silu output", out.len(), rows * inter)?;
        let f = self.function(&source::op_kernel("silu_mul", dtype))?;
        let (r, i) = (rows as u64, inter as i32);
        let mut launch = self.stream.launch_builder(f);
        launch.arg(gate_up).arg(out).arg(&r).arg(&i);
        // SAFETY: (gu, out, rows, inter) as in ops.cu; extents checked above.
        unsafe { launch.launch(flat_cfg(rows * inter)) }.map_err(driver("silu_mul launch"))?;
        Ok(())
    }

    /// Rotate-half RoPE in place: token `t`'s `heads` heads of `head_dim` start at
    /// `x[t * row_stride]`; `cos`/`sin` are a [`crate::ops::rope_table`] of
    /// `positions`' bound rows.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        dtype: DType,
        x: &mut CudaSlice<u16>,
        row_stride: usize,
        positions: &DevicePositions,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), KernelError> {
        let tokens = positions.len();
        if !head_dim.is_multiple_of(2) || row_stride < heads * head_dim {
            return Err(KernelError::Invalid(format!(
                "rope over {heads} x {head_dim} in rows of {row_stride}"
            )));
        }
        need(
            "rope input",
            x.len(),
            (tokens.max(1) - 1) * row_stride + heads * head_dim,
        )?;
        need(
            "rope table",
            cos.len().min(sin.len()),
            positions.bound * head_dim / 2,
        )?;
        let cfg = LaunchConfig {
            block_dim: (128, 1, 1),
            ..rows_cfg(tokens)?
        };
        let f = self.function(&source::op_kernel("rope", dtype))?;
        let (stride, h, d) = (row_stride as i64, heads as i32, head_dim as i32);
        let mut launch = self.stream.launch_builder(f);
        launch
            .arg(x)
            .arg(&stride)
            .arg(&positions.data)
            .arg(cos)
            .arg(sin)
            .arg(&h)
            .arg(&d);
        // SAFETY: (x, row_stride, positions, cos, sin, heads, head_dim) as in ops.cu; positions
        // are below the table's rows (checked at upload), extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("rope launch"))?;
        Ok(())
    }

    /// `out = a + scale * b` over `n` elements.
    pub fn add_scaled(
        &self,
        dtype: DType,
        a: &CudaSlice<u16>,
        b: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        n: usize,
        scale: f32,
    ) -> Result<(), KernelError> {
        need("add input", a.len().min(b.len()), n)?;
        need("add output", out.len(), n)?;
        let f = self.function(&source::op_kernel("add_scaled", dtype))?;
        let n64 = n as u64;
        let mut launch = self.stream.launch_builder(f);
        launch.arg(a).arg(b).arg(out).arg(&n64).arg(&scale);
        // SAFETY: (a, b, out, n, scale) as in ops.cu; extents checked above.
        unsafe { launch.launch(flat_cfg(n)) }.map_err(driver("add_scaled launch"))?;
        Ok(())
    }

    /// `out[t] = table[ids[t]]`, rows of `cols` (16-bit elements of any type).
    pub fn embed_gather(
        &self,
        table: &CudaSlice<u16>,
        ids: &DevicePositions,
        out: &mut CudaSlice<u16>,
        cols: usize,
    ) -> Result<(), KernelError> {
        need("embedding table", table.len(), ids.bound * cols)?;
        need("gather output", out.len(), ids.len() * cols)?;
        let cfg = rows_cfg(ids.len())?;
        let mut flag = self.stream.alloc_zeros::<i32>(1).map_err(driver("alloc"))?;
        let f = self.function("embed_gather_u16")?;
        let (c, vocab) = (cols as i32, ids.bound as i32);
        let mut launch = self.stream.launch_builder(f);
        launch
            .arg(table)
            .arg(&ids.data)
            .arg(out)
            .arg(&c)
            .arg(&vocab)
            .arg(&mut flag);
        // SAFETY: (table, ids, out, cols, vocab, flag) as in ops.cu; ids < vocab (checked at
        // upload), extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("embed_gather launch"))?;
        Ok(())
    }

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
        let cfg = rows_cfg(rows)?;
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
        let cfg = rows_cfg(rows)?;
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
