//! The GPU implementation: compiles the kernel files for the device, holds the loaded
//! functions and launches them on one stream.
#![allow(unsafe_code)] // kernel launches and the POD parameter blocks passed to them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::problem::{DType, DecodeAttention, DenseAttention, KvCacheWrite, Strides};
use crate::{nvrtc, source, AttentionBackend, KernelError};

/// A 16-bit tensor on the GPU.
#[derive(Debug)]
pub struct GpuTensor {
    /// The elements.
    pub data: CudaSlice<u16>,
    /// Their type.
    pub dtype: DType,
}

/// What the device is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// Marketing name, e.g. `NVIDIA H200`.
    pub name: String,
    /// The architecture the kernels were compiled for, e.g. `sm_90a`.
    pub arch: String,
    /// Multiprocessors.
    pub sm_count: usize,
    /// Global memory in bytes.
    pub memory_bytes: usize,
    /// NVRTC `(major, minor)`.
    pub nvrtc: (i32, i32),
}

/// Tuning of one dense call; `None` picks the default for the shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseOptions {
    /// Kernel variant: one of the compiled [`source::FWD_VARIANTS`] for the head dim.
    pub variant: Option<source::FwdVariant>,
    /// Splits of the key range (each merged by the combiner).
    pub splits: Option<usize>,
}

/// Tuning of one decode call; `None` picks the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeOptions {
    /// Splits of each sequence's keys (merged by the combiner).
    pub splits: Option<usize>,
    /// Keys in flight per lane group: one of [`source::DECODE_UNROLLS`].
    pub unroll: Option<usize>,
}

/// Device tensors of a dense call.
#[derive(Debug, Clone, Copy)]
pub struct DenseInputs<'a> {
    /// Queries.
    pub q: &'a CudaSlice<u16>,
    /// Keys.
    pub k: &'a CudaSlice<u16>,
    /// Values.
    pub v: &'a CudaSlice<u16>,
    /// Layout of `q`.
    pub q_strides: Strides,
    /// Layout of `k`.
    pub k_strides: Strides,
    /// Layout of `v`.
    pub v_strides: Strides,
    /// `[batch][2]` masked key gaps, when the problem has gaps.
    pub gaps: Option<&'a CudaSlice<i32>>,
}

impl<'a> DenseInputs<'a> {
    /// Contiguous `[batch, seq, heads, head_dim]` queries, keys and values of `p`.
    pub fn contiguous(
        p: &DenseAttention,
        q: &'a CudaSlice<u16>,
        k: &'a CudaSlice<u16>,
        v: &'a CudaSlice<u16>,
        gaps: Option<&'a CudaSlice<i32>>,
    ) -> Self {
        let kv = Strides::contiguous(p.seq_kv, p.heads, p.head_dim);
        DenseInputs {
            q,
            k,
            v,
            q_strides: Strides::contiguous(p.seq_q, p.heads, p.head_dim),
            k_strides: kv,
            v_strides: kv,
            gaps,
        }
    }
}

/// A device paged cache that a dense call fills.
#[derive(Debug)]
pub struct DeviceCache<'a> {
    /// Key cache `[num_blocks, heads, block_size, head_dim]`.
    pub k: &'a mut CudaSlice<u16>,
    /// Value cache.
    pub v: &'a mut CudaSlice<u16>,
    /// `[batch][max_blocks]` block ids.
    pub block_table: &'a CudaSlice<i32>,
    /// Tokens per block.
    pub block_size: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
}

/// Device buffers of a decode call besides the tensors.
#[derive(Debug, Clone, Copy)]
pub struct DecodeTables<'a> {
    /// `[batch]` cached tokens per sequence.
    pub seq_lens: &'a CudaSlice<i32>,
    /// `[batch][max_blocks]` block ids.
    pub block_table: &'a CudaSlice<i32>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FwdParams {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    q_batch: i64,
    q_row: i64,
    q_head: i64,
    k_batch: i64,
    k_row: i64,
    k_head: i64,
    v_batch: i64,
    v_row: i64,
    v_head: i64,
    o_batch: i64,
    o_row: i64,
    o_head: i64,
    kv_gap: u64,
    partial_o: u64,
    partial_lse: u64,
    cache_k: u64,
    cache_v: u64,
    block_table: u64,
    batch: i32,
    heads: i32,
    seq_q: i32,
    seq_kv: i32,
    causal: i32,
    splits: i32,
    cache_block_shift: i32,
    cache_max_blocks: i32,
    scale_log2: f32,
    reserved: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct DecodeParams {
    q: u64,
    q_batch: i64,
    q_head: i64,
    o: u64,
    o_batch: i64,
    o_head: i64,
    cache_k: u64,
    cache_v: u64,
    block_table: u64,
    seq_lens: u64,
    partial_o: u64,
    partial_lse: u64,
    batch: i32,
    heads: i32,
    block_shift: i32,
    max_blocks: i32,
    splits: i32,
    reserved0: i32,
    scale_log2: f32,
    reserved1: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct CombineParams {
    partial_o: u64,
    partial_lse: u64,
    o: u64,
    o_batch: i64,
    o_row: i64,
    o_head: i64,
    rows: i32,
    heads: i32,
    seq_q: i32,
    splits: i32,
    head_dim: i32,
    reserved: i32,
}

// SAFETY: plain `#[repr(C)]` structs of integers and floats whose layout matches the CUDA
// structs of the same names (8-byte fields first, then 4-byte fields, no padding).
unsafe impl DeviceRepr for FwdParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for DecodeParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for CombineParams {}

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// The GPU attention backend: one device, one stream, every kernel loaded.
#[derive(Debug)]
pub struct CudaAttention {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    info: DeviceInfo,
    scratch: Mutex<Option<CudaSlice<f32>>>,
}

fn driver(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> KernelError {
    move |e| KernelError::cuda(op, e)
}

/// Fails unless the driver library can be loaded (cudarc panics on first use otherwise).
pub fn ensure_driver() -> Result<(), KernelError> {
    // SAFETY: only tries to dlopen the library by its candidate names.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(KernelError::LibraryMissing { library: "cuda" })
    }
}

impl CudaAttention {
    /// Opens device `ordinal`, compiles (or loads from `cache_dir`) every kernel for its
    /// architecture and loads them.
    pub fn new(ordinal: usize, cache_dir: Option<&Path>) -> Result<Self, KernelError> {
        ensure_driver()?;
        nvrtc::ensure_loaded()?;
        let count = CudaContext::device_count().map_err(driver("cuDeviceGetCount"))? as usize;
        if ordinal >= count {
            return Err(KernelError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("cuCtxCreate"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("compute capability"))?;
        if major < 8 {
            return Err(KernelError::Unsupported { major, minor });
        }
        let arch = if (major, minor) == (9, 0) {
            "sm_90a".to_string()
        } else {
            format!("sm_{major}{minor}")
        };
        // SAFETY: every launch and copy of this backend goes to its one stream, in order.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let mut functions = HashMap::new();
        for file in source::ALL {
            let cubin = nvrtc::compile_cached(&file, &arch, cache_dir)?;
            let module = ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(driver("cuModuleLoadData"))?;
            for name in source::all_kernels() {
                if let Ok(function) = module.load_function(&name) {
                    functions.insert(name, function);
                }
            }
        }
        for v in source::FWD_VARIANTS {
            for dtype in [DType::Bf16, DType::F16] {
                if let Some(f) = functions.get(&v.kernel(dtype)) {
                    f.set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        v.shared_bytes() as i32,
                    )
                    .map_err(driver("cuFuncSetAttribute"))?;
                }
            }
        }
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("device attribute"))? as usize;
        let info = DeviceInfo {
            name: ctx.name().map_err(driver("device name"))?,
            arch,
            sm_count,
            memory_bytes: ctx.total_mem().map_err(driver("total memory"))?,
            nvrtc: nvrtc::version()?,
        };
        Ok(CudaAttention {
            ctx,
            stream,
            functions,
            info,
            scratch: Mutex::new(None),
        })
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The stream every call runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for all queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(driver("synchronize"))
    }

    fn function(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.functions
            .get(name)
            .ok_or_else(|| KernelError::Invalid(format!("kernel {name} is not loaded")))
    }

    /// Copies host values to the device, rounded to `dtype`.
    pub fn upload(&self, dtype: DType, values: &[f32]) -> Result<GpuTensor, KernelError> {
        let bits: Vec<u16> = values.iter().map(|&x| dtype.encode(x)).collect();
        let data = self.stream.clone_htod(&bits).map_err(driver("upload"))?;
        Ok(GpuTensor { data, dtype })
    }

    /// Copies integers to the device.
    pub fn upload_i32(&self, values: &[i32]) -> Result<CudaSlice<i32>, KernelError> {
        self.stream.clone_htod(values).map_err(driver("upload"))
    }

    /// Uploads the problem's key gaps as `[batch][2]` (`None` when it has none).
    pub fn upload_gaps(&self, p: &DenseAttention) -> Result<Option<CudaSlice<i32>>, KernelError> {
        if p.kv_gaps.is_empty() {
            return Ok(None);
        }
        let flat: Vec<i32> = p
            .kv_gaps
            .iter()
            .flat_map(|&(lo, hi)| [lo as i32, hi as i32])
            .collect();
        self.upload_i32(&flat).map(Some)
    }

    /// A tensor of `len` NaNs (to prove that a kernel writes every element it should).
    pub fn poisoned(&self, dtype: DType, len: usize) -> Result<GpuTensor, KernelError> {
        self.upload(dtype, &vec![f32::NAN; len])
    }

    /// A tensor of `len` pseudo-random values in [-1, 1), generated on the device.
    pub fn random(&self, dtype: DType, len: usize, seed: u64) -> Result<GpuTensor, KernelError> {
        // SAFETY: every element is written by the fill kernel below before any read.
        let mut data = unsafe { self.stream.alloc::<u16>(len) }.map_err(driver("alloc"))?;
        let f = self.function(&source::fill_kernel(dtype))?;
        let n = len as u64;
        let blocks = (len.div_ceil(256) as u32).clamp(1, 65_535);
        let mut launch = self.stream.launch_builder(f);
        launch.arg(&mut data).arg(&n).arg(&seed);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel takes (u16*, u64 n, u64 seed) and writes indices < n only.
        unsafe { launch.launch(cfg) }.map_err(driver("fill launch"))?;
        Ok(GpuTensor { data, dtype })
    }

    /// Copies a tensor back to the host as f32.
    pub fn download(&self, t: &GpuTensor) -> Result<Vec<f32>, KernelError> {
        let bits = self
            .stream
            .clone_dtoh(&t.data)
            .map_err(driver("download"))?;
        Ok(bits.into_iter().map(|b| t.dtype.decode(b)).collect())
    }

    /// Grows the split scratch to at least `len` floats and returns its device address.
    fn scratch_ptr(&self, len: usize) -> Result<u64, KernelError> {
        let mut guard = self
            .scratch
            .lock()
            .map_err(|_| KernelError::Invalid("scratch lock poisoned".into()))?;
        if guard.as_ref().is_none_or(|s| s.len() < len) {
            *guard = Some(
                self.stream
                    .alloc_zeros::<f32>(len)
                    .map_err(driver("alloc scratch"))?,
            );
        }
        let scratch = guard
            .as_ref()
            .ok_or_else(|| KernelError::Invalid("scratch".into()))?;
        let (ptr, _sync) = scratch.device_ptr(&self.stream);
        Ok(ptr)
    }

    /// The default kernel variant for a dense problem (picked by `gpu-bench` on an H200).
    pub fn default_variant(p: &DenseAttention) -> source::FwdVariant {
        let pick = |warps, m_tiles, block_n, min_blocks| source::FwdVariant {
            head_dim: p.head_dim,
            warps,
            m_tiles,
            block_n,
            min_blocks,
        };
        match p.head_dim {
            64 if p.seq_q <= 32 => pick(2, 1, 64, 1),
            88 => pick(4, 2, 64, 1),
            _ => pick(4, 1, 64, 1),
        }
    }

    /// The default number of key splits: enough blocks to keep every multiprocessor busy.
    fn default_splits(&self, blocks: usize, kv_tiles: usize) -> usize {
        let target = 4 * self.info.sm_count;
        if blocks >= target || kv_tiles < 4 {
            return 1;
        }
        target.div_ceil(blocks).min(kv_tiles / 2).clamp(1, 16)
    }

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

    fn combine(
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

    /// Times `run` with CUDA events: `warmup` untimed calls, then the per-call milliseconds of
    /// `iters` calls.
    pub fn time_ms<F>(
        &self,
        warmup: usize,
        iters: usize,
        mut run: F,
    ) -> Result<Vec<f32>, KernelError>
    where
        F: FnMut() -> Result<(), KernelError>,
    {
        for _ in 0..warmup {
            run()?;
        }
        self.synchronize()?;
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = self.ctx.new_event(flags).map_err(driver("event"))?;
            let stop = self.ctx.new_event(flags).map_err(driver("event"))?;
            start.record(&self.stream).map_err(driver("event record"))?;
            run()?;
            stop.record(&self.stream).map_err(driver("event record"))?;
            times.push(start.elapsed_ms(&stop).map_err(driver("event elapsed"))?);
        }
        Ok(times)
    }

    /// Device-to-device copy of `bytes`: returns the buffers for [`Self::copy`].
    pub fn copy_buffers(
        &self,
        bytes: usize,
    ) -> Result<(CudaSlice<u8>, CudaSlice<u8>), KernelError> {
        let src = self
            .stream
            .alloc_zeros::<u8>(bytes)
            .map_err(driver("alloc"))?;
        let dst = self
            .stream
            .alloc_zeros::<u8>(bytes)
            .map_err(driver("alloc"))?;
        Ok((src, dst))
    }

    /// Queues one device-to-device copy (the bandwidth yardstick).
    pub fn copy(&self, src: &CudaSlice<u8>, dst: &mut CudaSlice<u8>) -> Result<(), KernelError> {
        self.stream.memcpy_dtod(src, dst).map_err(driver("memcpy"))
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
