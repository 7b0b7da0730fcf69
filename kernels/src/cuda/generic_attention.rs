//! Launches of the paged KV writer and the generic attention of ops.cu (any even head dim up to
//! 128, any precision: the f32 exact mode and the head dims without a tensor-core kernel).
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::elem::{elem, need, rows_cfg, DeviceIndices, Elem};
use super::params::GenericAttnParams;
use super::{driver, CudaAttention};
use crate::problem::{DenseAttention, Precision};
use crate::{source, KernelError};

impl CudaAttention {
    /// Writes `slots.len()` token rows of `src = (k, v)` (`[n][heads * head_dim]` each, row
    /// stride `src_row`) into the paged caches `cache = (k, v)`, `[num_blocks][heads]
    /// [block_size][head_dim]` each, at flat slots: one launch for both.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write<S: Elem>(
        &self,
        precision: Precision,
        src: (&CudaSlice<S>, &CudaSlice<S>),
        src_row: usize,
        slots: &DeviceIndices,
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
}
