//! Launches of the element-wise and row kernels of ops.cu (norms, activations, RoPE and the
//! fused-QKV split, adds, weight init, row copies). Each launcher checks buffer extents against
//! the shape it is given and that the buffer's element size matches the precision.
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use super::elem::{elem, flat_cfg, need, rows_cfg, DeviceIndices, Elem, ROW_THREADS};
use super::{driver, CudaAttention};
use crate::problem::Precision;
use crate::{source, KernelError};

impl CudaAttention {
    /// LayerNorm of `rows` rows of `cols` (`gamma`, `beta`: `[cols]`).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm<S: Elem>(
        &self,
        precision: Precision,
        x: &CudaSlice<S>,
        gamma: &CudaSlice<S>,
        beta: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        need("layernorm input", x.len(), rows * cols)?;
        need("layernorm output", out.len(), rows * cols)?;
        need("layernorm weight", gamma.len().min(beta.len()), cols)?;
        let cfg = rows_cfg(rows, ROW_THREADS)?;
        let f = self.function(&source::op_kernel("layernorm", precision))?;
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
    pub fn rmsnorm<S: Elem>(
        &self,
        precision: Precision,
        x: &CudaSlice<S>,
        weight: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        need("rmsnorm input", x.len(), rows * cols)?;
        need("rmsnorm output", out.len(), rows * cols)?;
        need("rmsnorm weight", weight.len(), cols)?;
        let cfg = rows_cfg(rows, ROW_THREADS)?;
        let f = self.function(&source::op_kernel("rmsnorm", precision))?;
        let (cols, mut launch) = (cols as i32, self.stream.launch_builder(f));
        launch.arg(x).arg(weight).arg(out).arg(&cols).arg(&eps);
        // SAFETY: (x, weight, out, cols, eps) as in ops.cu; extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("rmsnorm launch"))?;
        Ok(())
    }

    /// Exact GELU in place over `n` elements, after adding `bias` (`[cols]`) when given.
    pub fn bias_gelu<S: Elem>(
        &self,
        precision: Precision,
        x: &mut CudaSlice<S>,
        bias: Option<&CudaSlice<S>>,
        n: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
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
        let f = self.function(&source::op_kernel("bias_gelu", precision))?;
        let (n64, cols, bp) = (n as u64, cols as i32, bias_ptr.as_ref().map_or(0, |b| b.0));
        let mut launch = stream.launch_builder(f);
        launch.arg(&xp).arg(&bp).arg(&n64).arg(&cols);
        // SAFETY: (x, bias or null, n, cols) as in ops.cu; extents checked above.
        unsafe { launch.launch(flat_cfg(n)) }.map_err(driver("bias_gelu launch"))?;
        Ok(())
    }

    /// SiLU in place over `n` elements.
    pub fn silu<S: Elem>(
        &self,
        precision: Precision,
        x: &mut CudaSlice<S>,
        n: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        need("silu input", x.len(), n)?;
        let f = self.function(&source::op_kernel("silu", precision))?;
        let n64 = n as u64;
        let mut launch = self.stream.launch_builder(f);
        launch.arg(x).arg(&n64);
        // SAFETY: (x, n) as in ops.cu; extent checked above.
        unsafe { launch.launch(flat_cfg(n)) }.map_err(driver("silu launch"))?;
        Ok(())
    }

    /// `out = round(silu(gate)) * up` from the fused `[rows][2 * inter]` gate|up projection.
    pub fn silu_mul<S: Elem>(
        &self,
        precision: Precision,
        gate_up: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        rows: usize,
        inter: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        need("gate|up", gate_up.len(), rows * 2 * inter)?;
        need("silu output", out.len(), rows * inter)?;
        let f = self.function(&source::op_kernel("silu_mul", precision))?;
        let (r, i) = (rows as u64, inter as i32);
        let mut launch = self.stream.launch_builder(f);
        launch.arg(gate_up).arg(out).arg(&r).arg(&i);
        // SAFETY: (gu, out, rows, inter) as in ops.cu; extents checked above.
        unsafe { launch.launch(flat_cfg(rows * inter)) }.map_err(driver("silu_mul launch"))?;
        Ok(())
    }

    /// Rotate-half RoPE in place: token `t`'s `heads` heads of `head_dim` start at
    /// `x[t * row_stride]`; `cos`/`sin` are a [`crate::ops::rope_table`] with as many rows as
    /// `positions`' bound.
    #[allow(clippy::too_many_arguments)]
    pub fn rope<S: Elem>(
        &self,
        precision: Precision,
        x: &mut CudaSlice<S>,
        row_stride: usize,
        positions: &DeviceIndices,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
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
        let cfg = rows_cfg(tokens, 128)?;
        let f = self.function(&source::op_kernel("rope", precision))?;
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

    /// Splits fused QKV rows `[tokens][3 * heads * head_dim]` into contiguous `q`, `k`, `v`
    /// (`[tokens][heads * head_dim]` each), with rotate-half RoPE on `q` and `k` when `rope`
    /// gives `(positions, cos, sin)` (one token per position); `tokens` rows either way.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_split<S: Elem>(
        &self,
        precision: Precision,
        qkv: &CudaSlice<S>,
        tokens: usize,
        rope: Option<(&DeviceIndices, &CudaSlice<f32>, &CudaSlice<f32>)>,
        heads: usize,
        head_dim: usize,
        out: (&mut CudaSlice<S>, &mut CudaSlice<S>, &mut CudaSlice<S>),
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        if !head_dim.is_multiple_of(2) {
            return Err(KernelError::Invalid(format!("odd head dim {head_dim}")));
        }
        let width = heads * head_dim;
        need("fused qkv", qkv.len(), tokens * 3 * width)?;
        need("q", out.0.len(), tokens * width)?;
        need("k", out.1.len(), tokens * width)?;
        need("v", out.2.len(), tokens * width)?;
        if let Some((positions, cos, sin)) = rope {
            need("positions", positions.len(), tokens)?;
            need(
                "rope table",
                cos.len().min(sin.len()),
                positions.bound * head_dim / 2,
            )?;
        }
        let cfg = rows_cfg(tokens, 128)?;
        let stream = &self.stream;
        let ptrs = rope.map(|(p, c, s)| {
            (
                p.data.device_ptr(stream),
                c.device_ptr(stream),
                s.device_ptr(stream),
            )
        });
        let (pp, cp, sp) = ptrs.as_ref().map_or((0, 0, 0), |(p, c, s)| (p.0, c.0, s.0));
        let f = self.function(&source::op_kernel("qkv_rope_split", precision))?;
        let (h, d) = (heads as i32, head_dim as i32);
        let mut launch = stream.launch_builder(f);
        launch
            .arg(qkv)
            .arg(out.0)
            .arg(out.1)
            .arg(out.2)
            .arg(&pp)
            .arg(&cp)
            .arg(&sp)
            .arg(&h)
            .arg(&d);
        // SAFETY: (qkv, q, k, v, positions or null, cos, sin, heads, head_dim) as in ops.cu;
        // positions are below the table's rows (checked at upload), extents checked above.
        unsafe { launch.launch(cfg) }.map_err(driver("qkv_rope_split launch"))?;
        Ok(())
    }

    /// `acc += scale * b` over `n` elements (in place).
    pub fn accumulate<S: Elem>(
        &self,
        precision: Precision,
        acc: &mut CudaSlice<S>,
        b: &CudaSlice<S>,
        n: usize,
        scale: f32,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        need("accumulator", acc.len(), n)?;
        need("addend", b.len(), n)?;
        let f = self.function(&source::op_kernel("add_scaled", precision))?;
        let stream = &self.stream;
        let (ap, _g) = acc.device_ptr_mut(stream);
        let n64 = n as u64;
        let mut launch = stream.launch_builder(f);
        launch.arg(&ap).arg(b).arg(&ap).arg(&n64).arg(&scale);
        // SAFETY: (a, b, out = a, n, scale) as in ops.cu (element-wise, so out may alias a);
        // extents checked above.
        unsafe { launch.launch(flat_cfg(n)) }.map_err(driver("add_scaled launch"))?;
        Ok(())
    }

    /// `x[r] += table[(r / div) % period]` for `rows` rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rows<S: Elem>(
        &self,
        precision: Precision,
        x: &mut CudaSlice<S>,
        table: &CudaSlice<S>,
        rows: usize,
        cols: usize,
        div: usize,
        period: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        if div == 0 || period == 0 {
            return Err(KernelError::Invalid("add_rows: zero div or period".into()));
        }
        need("add_rows input", x.len(), rows * cols)?;
        need("add_rows table", table.len(), period * cols)?;
        let f = self.function(&source::op_kernel("add_rows", precision))?;
        let (r, c, d, p) = (rows as u64, cols as i32, div as i32, period as i32);
        let mut launch = self.stream.launch_builder(f);
        launch.arg(x).arg(table).arg(&r).arg(&c).arg(&d).arg(&p);
        // SAFETY: (x, t, rows, cols, div, period) as in ops.cu; extents checked above.
        unsafe { launch.launch(flat_cfg(rows * cols)) }.map_err(driver("add_rows launch"))?;
        Ok(())
    }

    /// `offset + scale * u`, `u` uniform in [-1, 1), into all of `out` (weight initialisation).
    pub fn fill_affine<S: Elem>(
        &self,
        precision: Precision,
        out: &mut CudaSlice<S>,
        seed: u64,
        scale: f32,
        offset: f32,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        let n = out.len();
        let f = self.function(&source::op_kernel("fill_affine", precision))?;
        let n64 = n as u64;
        let mut launch = self.stream.launch_builder(f);
        launch
            .arg(out)
            .arg(&n64)
            .arg(&seed)
            .arg(&scale)
            .arg(&offset);
        // SAFETY: (out, n, seed, scale, offset) as in ops.cu; n is out's length.
        unsafe { launch.launch(flat_cfg(n)) }.map_err(driver("fill_affine launch"))?;
        Ok(())
    }

    /// `dst[dst_rows[i]] = src[src_rows[i]]` for `n` rows of `cols` (`None`: `i`).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_rows<S: Elem>(
        &self,
        precision: Precision,
        src: &CudaSlice<S>,
        src_rows: Option<&DeviceIndices>,
        dst: &mut CudaSlice<S>,
        dst_rows: Option<&DeviceIndices>,
        n: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        let extent = |rows: Option<&DeviceIndices>| -> Result<usize, KernelError> {
            match rows {
                Some(r) if r.len() < n => Err(KernelError::Invalid(format!(
                    "{} row indices for {n} rows",
                    r.len()
                ))),
                Some(r) => Ok(r.bound),
                None => Ok(n),
            }
        };
        need("copy source", src.len(), extent(src_rows)? * cols)?;
        need("copy destination", dst.len(), extent(dst_rows)? * cols)?;
        let cfg = rows_cfg(n, ROW_THREADS)?;
        let stream = &self.stream;
        let sp = src_rows.map(|r| r.data.device_ptr(stream));
        let dp = dst_rows.map(|r| r.data.device_ptr(stream));
        let (s_idx, d_idx) = (
            sp.as_ref().map_or(0, |p| p.0),
            dp.as_ref().map_or(0, |p| p.0),
        );
        let f = self.function(&source::op_kernel("copy_rows", precision))?;
        let c = cols as i64;
        let mut launch = stream.launch_builder(f);
        launch.arg(src).arg(&s_idx).arg(dst).arg(&d_idx).arg(&c);
        // SAFETY: (src, src_rows or null, dst, dst_rows or null, cols) as in ops.cu; every index
        // is below its buffer's rows (checked at upload and above).
        unsafe { launch.launch(cfg) }.map_err(driver("copy_rows launch"))?;
        Ok(())
    }
}
