//! The GPU backend of the forward: our kernels (`lynx-kernels`) and cuBLAS on one stream.
//! bf16/f16 (`CudaOps<u16>`) use the tensor-core attention kernels where the head dim has one
//! and the fused vision-token projection; f32 (`CudaOps<f32>`, the exact mode) uses plain
//! `sgemm`, the generic attention and the unfused projection.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lynx_kernels::cuda::{
    CudaAttention, CudaSlice, DecodeOptions, DecodeTables, DenseInputs, DenseOptions, DeviceCache,
    DeviceIndices, DeviceProjection, Elem,
};
use lynx_kernels::problem::HEAD_DIMS;
use lynx_kernels::projection::{FoldedProjection, ProjectionWeights, VisionProjection};
use lynx_kernels::{DecodeAttention, DenseAttention, Precision, Strides};

use super::ops::{CacheFill, Linear, Norm, Ops, ProjectionValues};
use super::ForwardError;

/// The GPU operations at one precision (`S` = `u16` for bf16/f16, `f32` for f32).
pub struct CudaOps<S: Elem> {
    gpu: Arc<CudaAttention>,
    precision: Precision,
    /// Prefills fill the paged cache inside the tensor-core attention pass instead of a separate
    /// write (off until measured on a GPU: the fill runs the prefill unsplit).
    fill_in_pass: AtomicBool,
    _elem: PhantomData<S>,
}

impl<S: Elem> CudaOps<S> {
    /// Operations on `gpu` at `precision` (whose element size must be `S`'s).
    pub fn new(gpu: Arc<CudaAttention>, precision: Precision) -> Result<Self, ForwardError> {
        if precision.elem_bytes() != S::BYTES {
            return Err(ForwardError::Shape(format!(
                "{precision} needs {}-byte elements",
                precision.elem_bytes()
            )));
        }
        lynx_kernels::cuda::ensure_cublas()?;
        Ok(Self {
            gpu,
            precision,
            fill_in_pass: AtomicBool::new(false),
            _elem: PhantomData,
        })
    }

    /// Whether dense attention `p` runs on the tensor-core kernel (16-bit, a head dim it has).
    fn takes_flash(&self, p: &DenseAttention) -> bool {
        self.precision.half().is_some() && HEAD_DIMS.contains(&p.head_dim)
    }

    /// Dense attention on the tensor-core kernel, filling `cache` in the same pass when given.
    fn flash(
        &self,
        p: &DenseAttention,
        q: &CudaSlice<S>,
        k: &CudaSlice<S>,
        v: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        cache: Option<DeviceCache<'_>>,
    ) -> Result<(), ForwardError> {
        let dtype = self.precision.half().ok_or_else(not_half)?;
        let (q, k, v) = (
            as_u16(q).ok_or_else(not_half)?,
            as_u16(k).ok_or_else(not_half)?,
            as_u16(v).ok_or_else(not_half)?,
        );
        let gaps = self.gpu.upload_gaps(p)?;
        let inputs = DenseInputs::contiguous(p, q, k, v, gaps.as_ref());
        self.gpu.dense_launch(
            p,
            dtype,
            &inputs,
            as_u16_mut(out).ok_or_else(not_half)?,
            Strides::contiguous(p.seq_q, p.heads, p.head_dim),
            cache,
            DenseOptions::default(),
        )?;
        Ok(())
    }

    /// The device.
    pub fn gpu(&self) -> &CudaAttention {
        &self.gpu
    }

    fn gemm(
        &self,
        x: &CudaSlice<S>,
        rows: usize,
        w: &Linear<CudaSlice<S>>,
        y: &mut CudaSlice<S>,
        accumulate: bool,
    ) -> Result<(), ForwardError> {
        let (n, k) = (w.out_dim, w.in_dim);
        let b = w.b.as_ref();
        Ok(self
            .gpu
            .linear(self.precision, x, rows, &w.w, b, n, k, y, accumulate)?)
    }
}

/// A prepared projection: fused (16-bit) or LayerNorm + two GEMMs (f32).
pub enum CudaProjection<S: Elem> {
    /// The fused kernel's folded weights.
    Fused(DeviceProjection),
    /// The unfused form.
    Unfused {
        /// `norm_media`.
        norm: Norm<CudaSlice<S>>,
        /// The K half of `to_kv`.
        k: Linear<CudaSlice<S>>,
        /// The V half of `to_kv`.
        v: Linear<CudaSlice<S>>,
        /// The frame embedding `[frames][width]`.
        frame_embed: Option<CudaSlice<S>>,
    },
}

fn not_half() -> ForwardError {
    ForwardError::Shape("16-bit tensors expected".into())
}

fn as_u16<S: Elem>(b: &CudaSlice<S>) -> Option<&CudaSlice<u16>> {
    (b as &dyn Any).downcast_ref::<CudaSlice<u16>>()
}

fn as_u16_mut<S: Elem>(b: &mut CudaSlice<S>) -> Option<&mut CudaSlice<u16>> {
    (b as &mut dyn Any).downcast_mut::<CudaSlice<u16>>()
}

impl<S: Elem> Ops for CudaOps<S> {
    type Buf = CudaSlice<S>;
    type Idx = DeviceIndices;
    type Rope = (CudaSlice<f32>, CudaSlice<f32>);
    type Proj = CudaProjection<S>;
    type Tables = (CudaSlice<i32>, CudaSlice<i32>);

    fn describe(&self) -> String {
        let fill = match self.fill_in_pass.load(Ordering::Relaxed) {
            true => " (prefill fills the cache in the attention pass)",
            false => "",
        };
        format!("{} {}{fill}", self.gpu.info().name, self.precision)
    }

    fn elem_bytes(&self) -> usize {
        self.precision.elem_bytes()
    }

    fn synchronize(&self) -> Result<(), ForwardError> {
        Ok(self.gpu.synchronize()?)
    }

    fn upload(&self, values: &[f32]) -> Result<Self::Buf, ForwardError> {
        Ok(self.gpu.upload_as::<S>(self.precision, values)?)
    }

    fn random(
        &self,
        len: usize,
        seed: u64,
        scale: f32,
        offset: f32,
    ) -> Result<Self::Buf, ForwardError> {
        let mut b = self.gpu.alloc_as::<S>(len)?;
        self.gpu
            .fill_affine(self.precision, &mut b, seed, scale, offset)?;
        Ok(b)
    }

    fn download(&self, b: &Self::Buf) -> Result<Vec<f32>, ForwardError> {
        Ok(self.gpu.download_as(self.precision, b)?)
    }

    fn alloc(&self, len: usize) -> Result<Self::Buf, ForwardError> {
        Ok(self.gpu.alloc_as::<S>(len)?)
    }

    fn indices(&self, values: &[u32], bound: usize) -> Result<DeviceIndices, ForwardError> {
        Ok(self.gpu.upload_indices(values, bound)?)
    }

    fn rope_table(&self, cos: &[f32], sin: &[f32]) -> Result<Self::Rope, ForwardError> {
        Ok((self.gpu.upload_f32(cos)?, self.gpu.upload_f32(sin)?))
    }

    fn projection(
        &self,
        p: &VisionProjection,
        values: &ProjectionValues<'_>,
    ) -> Result<Self::Proj, ForwardError> {
        if let Some(dtype) = self.precision.half() {
            let weights = ProjectionWeights {
                w: values.w_kv,
                gamma: values.gamma,
                beta: values.beta,
                frame_embed: values.frame_embed,
            };
            let folded = FoldedProjection::fold(p, &weights, dtype)?;
            return Ok(CudaProjection::Fused(
                self.gpu.upload_projection(p, &folded, dtype)?,
            ));
        }
        let (k_dim, inner) = (p.k_dim, p.inner);
        let half = inner * k_dim;
        let linear = |w: &[f32]| -> Result<Linear<CudaSlice<S>>, ForwardError> {
            Ok(Linear {
                w: self.upload(w)?,
                b: None,
                out_dim: inner,
                in_dim: k_dim,
            })
        };
        Ok(CudaProjection::Unfused {
            norm: Norm {
                w: self.upload(values.gamma)?,
                b: Some(self.upload(values.beta)?),
                dim: k_dim,
                eps: p.eps,
            },
            k: linear(&values.w_kv[..half])?,
            v: linear(&values.w_kv[half..2 * half])?,
            frame_embed: values
                .frame_embed
                .map(|e| self.upload(&e[..p.frames * k_dim]))
                .transpose()?,
        })
    }

    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Linear<Self::Buf>,
        y: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        self.gemm(x, rows, w, y, false)
    }

    fn linear_add(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Linear<Self::Buf>,
        y: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        self.gemm(x, rows, w, y, true)
    }

    fn norm(
        &self,
        x: &Self::Buf,
        rows: usize,
        norm: &Norm<Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        match &norm.b {
            Some(b) => {
                self.gpu
                    .layernorm(self.precision, x, &norm.w, b, out, rows, norm.dim, norm.eps)?
            }
            None => self
                .gpu
                .rmsnorm(self.precision, x, &norm.w, out, rows, norm.dim, norm.eps)?,
        }
        Ok(())
    }

    fn gelu(&self, x: &mut Self::Buf, rows: usize, cols: usize) -> Result<(), ForwardError> {
        Ok(self
            .gpu
            .bias_gelu(self.precision, x, None, rows * cols, cols)?)
    }

    fn silu(&self, x: &mut Self::Buf, n: usize) -> Result<(), ForwardError> {
        Ok(self.gpu.silu(self.precision, x, n)?)
    }

    fn silu_mul(
        &self,
        gate_up: &Self::Buf,
        rows: usize,
        inter: usize,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        Ok(self
            .gpu
            .silu_mul(self.precision, gate_up, out, rows, inter)?)
    }

    fn qkv_split(
        &self,
        qkv: &Self::Buf,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        rope: Option<(&DeviceIndices, &Self::Rope)>,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        Ok(self.gpu.qkv_rope_split(
            self.precision,
            qkv,
            tokens,
            rope.map(|(p, t)| (p, &t.0, &t.1)),
            heads,
            head_dim,
            (q, k, v),
        )?)
    }

    fn accumulate(
        &self,
        acc: &mut Self::Buf,
        b: &Self::Buf,
        n: usize,
        scale: f32,
    ) -> Result<(), ForwardError> {
        Ok(self.gpu.accumulate(self.precision, acc, b, n, scale)?)
    }

    fn add_rows(
        &self,
        x: &mut Self::Buf,
        table: &Self::Buf,
        rows: usize,
        cols: usize,
        div: usize,
        period: usize,
    ) -> Result<(), ForwardError> {
        Ok(self
            .gpu
            .add_rows(self.precision, x, table, rows, cols, div, period)?)
    }

    fn copy_rows(
        &self,
        src: &Self::Buf,
        src_rows: Option<&DeviceIndices>,
        dst: &mut Self::Buf,
        dst_rows: Option<&DeviceIndices>,
        n: usize,
        cols: usize,
    ) -> Result<(), ForwardError> {
        Ok(self
            .gpu
            .copy_rows(self.precision, src, src_rows, dst, dst_rows, n, cols)?)
    }

    fn argmax(
        &self,
        logits: &mut Self::Buf,
        rows: usize,
        cols: usize,
        banned: &[u32],
    ) -> Result<Vec<u32>, ForwardError> {
        if !banned.is_empty() {
            let at = self.gpu.upload_indices(banned, rows * cols)?;
            self.gpu.ban(self.precision, logits, &at)?;
        }
        let mut out = self.gpu.zeros::<i32>(rows)?;
        self.gpu
            .argmax(self.precision, logits, rows, cols, &mut out)?;
        let ids = self.gpu.download_raw(&out)?;
        Ok(ids.into_iter().map(|i| i.max(0) as u32).collect())
    }

    fn attention(
        &self,
        p: &DenseAttention,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        if self.takes_flash(p) {
            return self.flash(p, q, k, v, out, None);
        }
        Ok(self
            .gpu
            .attention_generic(self.precision, p, q, k, v, out)?)
    }

    fn attention_filling(
        &self,
        p: &DenseAttention,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        fill: CacheFill<'_, Self>,
    ) -> Result<(), ForwardError> {
        if !(self.fill_in_pass.load(Ordering::Relaxed) && self.takes_flash(p)) {
            return super::ops::write_then_attend(self, p, q, k, v, out, fill);
        }
        let cache = DeviceCache {
            k: as_u16_mut(fill.k_cache).ok_or_else(not_half)?,
            v: as_u16_mut(fill.v_cache).ok_or_else(not_half)?,
            block_table: fill.table.data(),
            block_size: fill.block_size,
            max_blocks: fill.max_blocks,
        };
        self.flash(p, q, k, v, out, Some(cache))
    }

    fn set_prefill_fill(&self, on: bool) -> bool {
        let able = self.precision.half().is_some();
        self.fill_in_pass.store(on && able, Ordering::Relaxed);
        able
    }

    fn kv_write(
        &self,
        k: &Self::Buf,
        v: &Self::Buf,
        slots: &DeviceIndices,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        heads: usize,
        head_dim: usize,
        block_size: usize,
    ) -> Result<(), ForwardError> {
        Ok(self.gpu.kv_write(
            self.precision,
            (k, v),
            heads * head_dim,
            slots,
            (k_cache, v_cache),
            heads,
            head_dim,
            block_size,
        )?)
    }

    fn decode_tables(&self, p: &DecodeAttention) -> Result<Self::Tables, ForwardError> {
        p.validate()?;
        let lens: Vec<i32> = p.seq_lens.iter().map(|&l| l as i32).collect();
        let table: Vec<i32> = p.block_table.iter().map(|&b| b as i32).collect();
        Ok((self.gpu.upload_i32(&lens)?, self.gpu.upload_i32(&table)?))
    }

    fn decode(
        &self,
        p: &DecodeAttention,
        tables: &Self::Tables,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        let tables = DecodeTables {
            seq_lens: &tables.0,
            block_table: &tables.1,
        };
        if let (Some(dtype), true) = (self.precision.half(), HEAD_DIMS.contains(&p.head_dim)) {
            if let (Some(q), Some(kc), Some(vc)) = (as_u16(q), as_u16(k_cache), as_u16(v_cache)) {
                let out = as_u16_mut(out)
                    .ok_or_else(|| ForwardError::Shape("16-bit output expected".into()))?;
                self.gpu.decode_launch(
                    p,
                    dtype,
                    q,
                    kc,
                    vc,
                    tables,
                    out,
                    DecodeOptions::default(),
                )?;
                return Ok(());
            }
        }
        Ok(self
            .gpu
            .decode_generic(self.precision, p, q, k_cache, v_cache, tables, out)?)
    }

    fn project(
        &self,
        media: &Self::Buf,
        p: &VisionProjection,
        proj: &Self::Proj,
        k: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<(), ForwardError> {
        match proj {
            CudaProjection::Fused(weights) => {
                let need16 =
                    || ForwardError::Shape("the fused projection takes 16-bit buffers".into());
                let x = as_u16(media).ok_or_else(need16)?;
                let k = as_u16_mut(k).ok_or_else(need16)?;
                let v = as_u16_mut(v).ok_or_else(need16)?;
                self.gpu.projection_launch(p, weights, x, p.k_dim, k, v)?;
                Ok(())
            }
            CudaProjection::Unfused {
                norm,
                k: wk,
                v: wv,
                frame_embed,
            } => {
                let n = p.rows * p.k_dim;
                let mut x = self.alloc(n)?;
                self.copy_rows(media, None, &mut x, None, p.rows, p.k_dim)?;
                if let (Some(e), true) = (frame_embed, p.frames > 0) {
                    self.add_rows(&mut x, e, p.rows, p.k_dim, p.tokens_per_frame, p.frames)?;
                }
                let mut h = self.alloc(n)?;
                self.norm(&x, p.rows, norm, &mut h)?;
                self.linear(&h, p.rows, wk, k)?;
                self.linear(&h, p.rows, wv, v)
            }
        }
    }
}
