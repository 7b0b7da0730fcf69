//! Dense attention launches (`flash_fwd`) and the split combiner.
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::params::{CombineParams, FwdParams};
use super::{driver, CudaAttention, DenseInputs, DenseOptions, DeviceCache, LOG2_E};
use crate::problem::{DType, DenseAttention, Strides};
use crate::{source, KernelError};

impl CudaAttention {
    /// Dense attention over strided device tensors, output in `out` with `out_strides`.
    #[allow(clippy::too_many_arguments)]
    pub fn dense_launch(
        &self,
        p: &DenseAttention,
        dtype: DType,
        inputs: &DenseInputs<'_>,
        out: &mut CudaSlice<u16>,
        out_strides: Strides,
        cache: Option<DeviceCache<'_>>,
        options: DenseOptions,
    ) -> Result<(), KernelError> {
        p.validate()?;
        let d = p.head_dim;
        check_strided(
            "q",
            inputs.q.len(),
            inputs.q_strides,
            p.batch,
            p.seq_q,
            p.heads,
            d,
        )?;
        check_strided(
            "k",
            inputs.k.len(),
            inputs.k_strides,
            p.batch,
            p.seq_kv,
            p.heads,
            d,
        )?;
        check_strided(
            "v",
            inputs.v.len(),
            inputs.v_strides,
            p.batch,
            p.seq_kv,
            p.heads,
            d,
        )?;
        check_strided("out", out.len(), out_strides, p.batch, p.seq_q, p.heads, d)?;
        if !p.kv_gaps.is_empty() && inputs.gaps.is_none_or(|g| g.len() < 2 * p.batch) {
            return Err(KernelError::Invalid(
                "problem has key gaps but no gap buffer".into(),
            ));
        }
        let variant = options.variant.unwrap_or_else(|| Self::default_variant(p));
        if variant.head_dim != d || !source::FWD_VARIANTS.contains(&variant) {
            return Err(KernelError::Invalid(format!(
                "no kernel variant {variant:?} for head dim {d}"
            )));
        }
        let q_tiles = p.seq_q.div_ceil(variant.block_m());
        let kv_tiles = p.seq_kv.div_ceil(variant.block_n);
        let blocks = q_tiles * p.batch * p.heads;
        let splits = match (&cache, options.splits) {
            (Some(_), _) => 1,
            (None, Some(s)) => s.clamp(1, kv_tiles.max(1)),
            (None, None) => self.default_splits(blocks, kv_tiles),
        };
        if q_tiles > u32::MAX as usize || p.batch * p.heads > 65_535 || splits > 65_535 {
            return Err(KernelError::Invalid("grid too large".into()));
        }
        let rows = p.batch * p.heads * p.seq_q;
        let scratch = if splits > 1 {
            self.scratch_ptr(splits * rows * (d + 1))?
        } else {
            0
        };
        let stream = &self.stream;
        let (q, _g1) = inputs.q.device_ptr(stream);
        let (k, _g2) = inputs.k.device_ptr(stream);
        let (v, _g3) = inputs.v.device_ptr(stream);
        let gap_ptr = match inputs.gaps {
            Some(g) if !p.kv_gaps.is_empty() => g.device_ptr(stream).0,
            _ => 0,
        };
        let mut params = FwdParams {
            q,
            k,
            v,
            q_batch: inputs.q_strides.batch,
            q_row: inputs.q_strides.row,
            q_head: inputs.q_strides.head,
            k_batch: inputs.k_strides.batch,
            k_row: inputs.k_strides.row,
            k_head: inputs.k_strides.head,
            v_batch: inputs.v_strides.batch,
            v_row: inputs.v_strides.row,
            v_head: inputs.v_strides.head,
            o_batch: out_strides.batch,
            o_row: out_strides.row,
            o_head: out_strides.head,
            kv_gap: gap_ptr,
            partial_o: scratch,
            partial_lse: scratch + (splits * rows * d * 4) as u64,
            batch: p.batch as i32,
            heads: p.heads as i32,
            seq_q: p.seq_q as i32,
            seq_kv: p.seq_kv as i32,
            causal: p.causal as i32,
            splits: splits as i32,
            scale_log2: p.scale * LOG2_E,
            ..Default::default()
        };
        let mut cache_guards = None;
        if let Some(cache) = cache {
            let (ck, gk) = cache.k.device_ptr_mut(stream);
            let (cv, gv) = cache.v.device_ptr_mut(stream);
            let (bt, gb) = cache.block_table.device_ptr(stream);
            params.cache_k = ck;
            params.cache_v = cv;
            params.block_table = bt;
            if !cache.block_size.is_power_of_two() {
                return Err(KernelError::Invalid(format!(
                    "cache block size {} is not a power of two",
                    cache.block_size
                )));
            }
            params.cache_block_shift = cache.block_size.trailing_zeros() as i32;
            params.cache_max_blocks = cache.max_blocks as i32;
            cache_guards = Some((gk, gv, gb));
        }
        let (o, _g4) = out.device_ptr_mut(stream);
        params.o = o;
        let f = self.function(&variant.kernel(dtype))?;
        let cfg = LaunchConfig {
            grid_dim: (q_tiles as u32, (p.batch * p.heads) as u32, splits as u32),
            block_dim: (32 * variant.warps as u32, 1, 1),
            shared_mem_bytes: variant.shared_bytes() as u32,
        };
        let mut launch = stream.launch_builder(f);
        launch.arg(&params);
        // SAFETY: the parameter block matches `FwdParams` in flash_fwd.cu; every tensor's extent
        // was checked against the problem and its strides above, the gap and block-table
        // buffers against the batch, and the scratch holds `splits * rows * (D + 1)` floats.
        unsafe { launch.launch(cfg) }.map_err(driver("flash_fwd launch"))?;
        drop(cache_guards);
        if splits > 1 {
            self.combine(dtype, &params, rows, d, splits)?;
        }
        Ok(())
    }

    pub(super) fn combine(
        &self,
        dtype: DType,
        fwd: &FwdParams,
        rows: usize,
        head_dim: usize,
        splits: usize,
    ) -> Result<(), KernelError> {
        let params = CombineParams {
            partial_o: fwd.partial_o,
            partial_lse: fwd.partial_lse,
            o: fwd.o,
            o_batch: fwd.o_batch,
            o_row: fwd.o_row,
            o_head: fwd.o_head,
            rows: rows as i32,
            heads: fwd.heads,
            seq_q: fwd.seq_q,
            splits: splits as i32,
            head_dim: head_dim as i32,
            reserved: 0,
        };
        let f = self.function(&source::combine_kernel(dtype))?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (head_dim.div_ceil(32) as u32 * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(f);
        launch.arg(&params);
        // SAFETY: matches `CombineParams` in decode.cu; the partial buffers were sized for
        // `splits * rows` rows of `head_dim` by the caller and the output was bounds-checked.
        unsafe { launch.launch(cfg) }.map_err(driver("combine launch"))?;
        Ok(())
    }
}

/// Checks that a `[batch, seq, heads, head_dim]` view with `strides` fits in `len` elements and
/// keeps every row 16-byte aligned.
fn check_strided(
    what: &str,
    len: usize,
    s: Strides,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), KernelError> {
    if [s.batch, s.row, s.head]
        .iter()
        .any(|&x| x < 0 || x % 8 != 0)
    {
        return Err(KernelError::Invalid(format!(
            "{what}: strides must be non-negative multiples of 8, got {s:?}"
        )));
    }
    let last =
        (batch as i64 - 1) * s.batch + (seq as i64 - 1) * s.row + (heads as i64 - 1) * s.head;
    if last + head_dim as i64 > len as i64 {
        return Err(KernelError::Invalid(format!(
            "{what}: view [{batch}, {seq}, {heads}, {head_dim}] with {s:?} exceeds {len} elements"
        )));
    }
    Ok(())
}
