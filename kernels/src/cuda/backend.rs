//! [`AttentionBackend`] on the GPU: contiguous tensors, tables uploaded per call.

use super::{
    CudaAttention, DecodeOptions, DecodeTables, DenseInputs, DenseOptions, DeviceCache, GpuTensor,
};
use crate::problem::{DecodeAttention, DenseAttention, KvCacheWrite, Strides};
use crate::{AttentionBackend, KernelError};

impl AttentionBackend for CudaAttention {
    type Tensor = GpuTensor;

    fn dense(
        &self,
        p: &DenseAttention,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        out: &mut GpuTensor,
        cache: Option<KvCacheWrite<'_, GpuTensor>>,
    ) -> Result<(), KernelError> {
        let dtype = q.dtype;
        if [k.dtype, v.dtype, out.dtype].iter().any(|&t| t != dtype) {
            return Err(KernelError::Invalid(
                "q, k, v and out must share a dtype".into(),
            ));
        }
        let gaps = self.upload_gaps(p)?;
        let strides_q = Strides::contiguous(p.seq_q, p.heads, p.head_dim);
        let inputs = DenseInputs::contiguous(p, &q.data, &k.data, &v.data, gaps.as_ref());
        let table;
        let device_cache = match cache {
            Some(c) => {
                c.validate(p)?;
                let cache_len = c.num_blocks * p.heads * c.block_size * p.head_dim;
                if c.k_cache.data.len() < cache_len || c.v_cache.data.len() < cache_len {
                    return Err(KernelError::Invalid(format!(
                        "caches need {cache_len} elements"
                    )));
                }
                table =
                    self.upload_i32(&c.block_table.iter().map(|&b| b as i32).collect::<Vec<_>>())?;
                Some(DeviceCache {
                    k: &mut c.k_cache.data,
                    v: &mut c.v_cache.data,
                    block_table: &table,
                    block_size: c.block_size,
                    max_blocks: c.max_blocks,
                })
            }
            None => None,
        };
        self.dense_launch(
            p,
            dtype,
            &inputs,
            &mut out.data,
            strides_q,
            device_cache,
            DenseOptions::default(),
        )
    }

    fn decode(
        &self,
        p: &DecodeAttention,
        q: &GpuTensor,
        k_cache: &GpuTensor,
        v_cache: &GpuTensor,
        out: &mut GpuTensor,
    ) -> Result<(), KernelError> {
        let lens = self.upload_i32(&p.seq_lens.iter().map(|&l| l as i32).collect::<Vec<_>>())?;
        let table =
            self.upload_i32(&p.block_table.iter().map(|&b| b as i32).collect::<Vec<_>>())?;
        let tables = DecodeTables {
            seq_lens: &lens,
            block_table: &table,
        };
        self.decode_launch(
            p,
            q.dtype,
            &q.data,
            &k_cache.data,
            &v_cache.data,
            tables,
            &mut out.data,
            DecodeOptions::default(),
        )
    }
}
