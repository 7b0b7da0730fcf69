//! Paged decode launches (`paged_decode`).
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::params::{DecodeParams, FwdParams};
use super::{driver, CudaAttention, DecodeOptions, DecodeTables, LOG2_E};
use crate::problem::{DType, DecodeAttention};
use crate::{source, KernelError};

impl CudaAttention {
    /// One decode step over a device paged cache; `q` and `out` are `[batch, heads, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_launch(
        &self,
        p: &DecodeAttention,
        dtype: DType,
        q: &CudaSlice<u16>,
        k_cache: &CudaSlice<u16>,
        v_cache: &CudaSlice<u16>,
        tables: DecodeTables<'_>,
        out: &mut CudaSlice<u16>,
        options: DecodeOptions,
    ) -> Result<(), KernelError> {
        p.validate()?;
        if !crate::problem::HEAD_DIMS.contains(&p.head_dim) {
            return Err(KernelError::Invalid(format!(
                "no paged decode kernel for head dim {}",
                p.head_dim
            )));
        }
        let (d, rows) = (p.head_dim, p.batch * p.heads);
        let want = rows * d;
        if q.len() < want || out.len() < want {
            return Err(KernelError::Invalid(format!(
                "decode q/out need {want} elements"
            )));
        }
        if k_cache.len() < p.cache_len() || v_cache.len() < p.cache_len() {
            return Err(KernelError::Invalid(format!(
                "caches need {} elements",
                p.cache_len()
            )));
        }
        if tables.seq_lens.len() < p.batch || tables.block_table.len() < p.batch * p.max_blocks {
            return Err(KernelError::Invalid(
                "decode tables smaller than the batch".into(),
            ));
        }
        let max_len = p.seq_lens.iter().copied().max().unwrap_or(0) as usize;
        let splits = options.splits.unwrap_or_else(|| {
            let target = 4 * self.info.sm_count;
            if rows >= target {
                1
            } else {
                target
                    .div_ceil(rows)
                    .min(max_len.div_ceil(256))
                    .clamp(1, 32)
            }
        });
        if rows > u32::MAX as usize || splits > 65_535 {
            return Err(KernelError::Invalid("grid too large".into()));
        }
        let scratch = if splits > 1 {
            self.scratch_ptr(splits * rows * (d + 1))?
        } else {
            0
        };
        let stream = &self.stream;
        let (qp, _g1) = q.device_ptr(stream);
        let (kp, _g2) = k_cache.device_ptr(stream);
        let (vp, _g3) = v_cache.device_ptr(stream);
        let (bt, _g4) = tables.block_table.device_ptr(stream);
        let (sl, _g5) = tables.seq_lens.device_ptr(stream);
        let (op, _g6) = out.device_ptr_mut(stream);
        let (hd, h) = ((p.heads * d) as i64, d as i64);
        let params = DecodeParams {
            q: qp,
            q_batch: hd,
            q_head: h,
            o: op,
            o_batch: hd,
            o_head: h,
            cache_k: kp,
            cache_v: vp,
            block_table: bt,
            seq_lens: sl,
            partial_o: scratch,
            partial_lse: scratch + (splits * rows * d * 4) as u64,
            batch: p.batch as i32,
            heads: p.heads as i32,
            block_shift: p.block_size.trailing_zeros() as i32,
            max_blocks: p.max_blocks as i32,
            splits: splits as i32,
            reserved0: 0,
            scale_log2: p.scale * LOG2_E,
            reserved1: 0,
        };
        // 8 keys in flight per lane group when the sequences alone fill the GPU (measured on an
        // H200: 1.05x the 4-key version at 64 x 32 heads), 4 when the keys are split.
        let unroll = options.unroll.unwrap_or(if splits == 1 { 8 } else { 4 });
        if !source::DECODE_UNROLLS.contains(&unroll) {
            return Err(KernelError::Invalid(format!(
                "no decode kernel with unroll {unroll}"
            )));
        }
        let f = self.function(&source::decode_kernel(dtype, d, unroll))?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, splits as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(f);
        launch.arg(&params);
        // SAFETY: matches `DecodeParams` in decode.cu; sizes of every buffer were checked above
        // and the block ids of every cached token were validated against `num_blocks`.
        unsafe { launch.launch(cfg) }.map_err(driver("paged_decode launch"))?;
        if splits > 1 {
            let fwd = FwdParams {
                partial_o: params.partial_o,
                partial_lse: params.partial_lse,
                o: op,
                o_batch: hd,
                o_row: 0,
                o_head: h,
                heads: p.heads as i32,
                seq_q: 1,
                ..Default::default()
            };
            self.combine(dtype, &fwd, rows, d, splits)?;
        }
        Ok(())
    }
}
