//! Launches of the small kernels (ops.cu). Each launcher checks buffer extents against the shape
//! it is given and that the buffer's element size matches the precision; values that index
//! memory (token ids, RoPE positions, rows, cache slots) are validated on the host when they are
//! uploaded ([`CudaAttention::upload_indices`]).
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::params::GenericAttnParams;
use super::{driver, CudaAttention};
use crate::problem::{DenseAttention, Precision};
use crate::{source, KernelError};

/// Threads per block of the row kernels.
const ROW_THREADS: u32 = 256;

/// A device element type: `u16` (bf16/f16 bits) or `f32`.
pub trait Elem:
    DeviceRepr + ValidAsZeroBits + Default + Clone + Copy + Unpin + Send + Sync + 'static
{
    /// Bytes per element.
    const BYTES: usize;
    /// `x` stored at `precision` (rounded to nearest even).
    fn store(x: f32, precision: Precision) -> Self;
    /// The value stored at `precision`.
    fn load(self, precision: Precision) -> f32;
}

impl Elem for u16 {
    const BYTES: usize = 2;
    fn store(x: f32, precision: Precision) -> Self {
        precision.half().map_or(0, |d| d.encode(x))
    }
    fn load(self, precision: Precision) -> f32 {
        precision.half().map_or(f32::NAN, |d| d.decode(self))
    }
}

impl Elem for f32 {
    const BYTES: usize = 4;
    fn store(x: f32, _: Precision) -> Self {
        x
    }
    fn load(self, _: Precision) -> f32 {
        self
    }
}

/// Indices on the device (positions, token ids, rows, cache slots), each checked against the
/// bound of what it indexes when uploaded.
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

    /// The exclusive upper bound every entry was checked against.
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// The device buffer.
    pub fn data(&self) -> &CudaSlice<i32> {
        &self.data
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

fn elem<S: Elem>(precision: Precision) -> Result<(), KernelError> {
    if S::BYTES != precision.elem_bytes() {
        return Err(KernelError::Invalid(format!(
            "{precision} kernel called on {}-byte elements",
            S::BYTES
        )));
    }
    Ok(())
}

fn rows_cfg(rows: usize, threads: u32) -> Result<LaunchConfig, KernelError> {
    if rows == 0 || rows > i32::MAX as usize {
        return Err(KernelError::Invalid(format!("{rows} rows")));
    }
    Ok(LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
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
    /// Copies host values to the device stored at `precision`.
    pub fn upload_as<S: Elem>(
        &self,
        precision: Precision,
        values: &[f32],
    ) -> Result<CudaSlice<S>, KernelError> {
        elem::<S>(precision)?;
        let stored: Vec<S> = values.iter().map(|&x| S::store(x, precision)).collect();
        self.stream.clone_htod(&stored).map_err(driver("upload"))
    }

    /// Copies device values stored at `precision` back to the host as f32.
    pub fn download_as<S: Elem>(
        &self,
        precision: Precision,
        data: &CudaSlice<S>,
    ) -> Result<Vec<f32>, KernelError> {
        elem::<S>(precision)?;
        let raw = self.stream.clone_dtoh(data).map_err(driver("download"))?;
        Ok(raw.into_iter().map(|x| x.load(precision)).collect())
    }

    /// `len` device elements whose contents are unspecified until written.
    pub fn alloc_as<S: Elem>(&self, len: usize) -> Result<CudaSlice<S>, KernelError> {
        self.stream.alloc_zeros::<S>(len).map_err(driver("alloc"))
    }

    /// Uploads values that index something of `bound` entries; any value `>= bound` is an error
    /// here, before it can reach a kernel.
    pub fn upload_indices(
        &self,
        values: &[u32],
        bound: usize,
    ) -> Result<DevicePositions, KernelError> {
        if let Some(bad) = values.iter().find(|&&v| v as usize >= bound) {
            return Err(KernelError::Invalid(format!(
                "index {bad} outside 0..{bound}"
            )));
        }
        if bound > i32::MAX as usize + 1 {
            return Err(KernelError::Invalid(format!("index bound {bound}")));
        }
        let ints: Vec<i32> = values.iter().map(|&v| v as i32).collect();
        Ok(DevicePositions {
            data: self.upload_i32(&ints)?,
            bound,
        })
    }

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
        positions: &DevicePositions,
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
        rope: Option<(&DevicePositions, &CudaSlice<f32>, &CudaSlice<f32>)>,
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
        src_rows: Option<&DevicePositions>,
        dst: &mut CudaSlice<S>,
        dst_rows: Option<&DevicePositions>,
        n: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        let extent = |rows: Option<&DevicePositions>| -> Result<usize, KernelError> {
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

    /// Writes `slots.len()` token rows of `src = (k, v)` (`[n][heads * head_dim]` each, row
    /// stride `src_row`) into the paged caches `cache = (k, v)`, `[num_blocks][heads]
    /// [block_size][head_dim]` each, at flat slots: one launch for both.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write<S: Elem>(
        &self,
        precision: Precision,
        src: (&CudaSlice<S>, &CudaSlice<S>),
        src_row: usize,
        slots: &DevicePositions,
        cache: (&mut CudaSlice<S>, &mut CudaSlice<S>),
        heads: usize,
        head_dim: usize,
        block_size: usize,
    ) -> Result<(), KernelError> {
        elem::<S>(precision)?;
        if !block_size.is_power_of_two() || src_row < heads * head_dim {
            return Err(KernelError::Invalid(format!(
                "kv_write: block size {block_size}, row stride {src_row}"
            )));
        }
        let n = slots.len();
        let src_len = (n.max(1) - 1) * src_row + heads * head_dim;
        need("k source", src.0.len(), src_len)?;
        need("v source", src.1.len(), src_len)?;
        need("k cache", cache.0.len(), slots.bound * heads * head_dim)?;
        need("v cache", cache.1.len(), slots.bound * heads * head_dim)?;
        let cfg = LaunchConfig {
            grid_dim: (rows_cfg(n, 128)?.grid_dim.0, 2, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.function(&source::op_kernel("kv_write", precision))?;
        let (row, h, d, shift) = (
            src_row as i64,
            heads as i32,
            head_dim as i32,
            block_size.trailing_zeros() as i32,
        );
        let mut launch = self.stream.launch_builder(f);
        launch
            .arg(src.0)
            .arg(src.1)
            .arg(&row)
            .arg(&slots.data)
            .arg(cache.0)
            .arg(cache.1)
            .arg(&h)
            .arg(&d)
            .arg(&shift);
        // SAFETY: (k_src, v_src, src_row, slots, k_cache, v_cache, heads, head_dim, block_shift)
        // as in ops.cu; slots are below the caches' slots (bound checked against both sizes).
        unsafe { launch.launch(cfg) }.map_err(driver("kv_write launch"))?;
        Ok(())
    }

    /// Generic attention (any even head dim up to 128, any precision): dense `[B][S][H][D]`
    /// queries, keys and values with `p`'s gaps and causal rule.
    pub fn attention_generic<S: Elem>(
        &self,
        precision: Precision,
        p: &DenseAttention,
        q: &CudaSlice<S>,
        k: &CudaSlice<S>,
        v: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
    ) -> Result<(), KernelError> {
        p.validate()?;
        elem::<S>(precision)?;
        need("q", q.len(), p.q_len())?;
        need("k", k.len(), p.kv_len())?;
        need("v", v.len(), p.kv_len())?;
        need("out", out.len(), p.q_len())?;
        let gaps = self.upload_gaps(p)?;
        let stream = &self.stream;
        let gp = gaps.as_ref().map(|g| g.device_ptr(stream));
        let params = GenericAttnParams {
            kv_gap: gp.as_ref().map_or(0, |g| g.0),
            batch: p.batch as i32,
            heads: p.heads as i32,
            seq_q: p.seq_q as i32,
            seq_kv: p.seq_kv as i32,
            head_dim: p.head_dim as i32,
            causal: p.causal as i32,
            scale: p.scale,
            ..Default::default()
        };
        self.launch_generic(precision, params, q, k, v, out, p.batch * p.seq_q * p.heads)
    }

    /// Generic decode (any even head dim up to 128, any precision): one query per sequence,
    /// `[B][H][D]`, over a paged cache holding `seq_lens[b]` tokens of sequence `b`.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_generic<S: Elem>(
        &self,
        precision: Precision,
        p: &crate::DecodeAttention,
        q: &CudaSlice<S>,
        k_cache: &CudaSlice<S>,
        v_cache: &CudaSlice<S>,
        tables: super::DecodeTables<'_>,
        out: &mut CudaSlice<S>,
    ) -> Result<(), KernelError> {
        p.validate()?;
        elem::<S>(precision)?;
        need("q", q.len(), p.batch * p.heads * p.head_dim)?;
        need("out", out.len(), p.batch * p.heads * p.head_dim)?;
        need("k cache", k_cache.len(), p.cache_len())?;
        need("v cache", v_cache.len(), p.cache_len())?;
        need("seq lens", tables.seq_lens.len(), p.batch)?;
        need(
            "block table",
            tables.block_table.len(),
            p.batch * p.max_blocks,
        )?;
        if !p.block_size.is_power_of_two() {
            return Err(KernelError::Invalid(format!(
                "cache block size {} is not a power of two",
                p.block_size
            )));
        }
        let stream = &self.stream;
        let (bt, _g1) = tables.block_table.device_ptr(stream);
        let (sl, _g2) = tables.seq_lens.device_ptr(stream);
        let params = GenericAttnParams {
            block_table: bt,
            seq_lens: sl,
            batch: p.batch as i32,
            heads: p.heads as i32,
            seq_q: 1,
            seq_kv: 0,
            head_dim: p.head_dim as i32,
            block_shift: p.block_size.trailing_zeros() as i32,
            max_blocks: p.max_blocks as i32,
            scale: p.scale,
            ..Default::default()
        };
        self.launch_generic(
            precision,
            params,
            q,
            k_cache,
            v_cache,
            out,
            p.batch * p.heads,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_generic<S: Elem>(
        &self,
        precision: Precision,
        mut params: GenericAttnParams,
        q: &CudaSlice<S>,
        k: &CudaSlice<S>,
        v: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        rows: usize,
    ) -> Result<(), KernelError> {
        let stream = &self.stream;
        let (qp, _g1) = q.device_ptr(stream);
        let (kp, _g2) = k.device_ptr(stream);
        let (vp, _g3) = v.device_ptr(stream);
        let (op, _g4) = out.device_ptr_mut(stream);
        params.q = qp;
        params.k = kp;
        params.v = vp;
        params.o = op;
        let blocks = rows.div_ceil(4);
        if blocks > i32::MAX as usize {
            return Err(KernelError::Invalid("attention too large".into()));
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.function(&source::op_kernel("attn_generic", precision))?;
        let mut launch = stream.launch_builder(f);
        launch.arg(&params);
        // SAFETY: `GenericAttnParams` mirrors the CUDA struct; the callers checked every extent
        // (dense tensors or the paged cache and its tables) against the problem.
        unsafe { launch.launch(cfg) }.map_err(driver("attn_generic launch"))?;
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
