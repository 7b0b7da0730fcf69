//! The GPU implementation: compiles the kernel files for the device, holds the loaded
//! functions and launches them on one stream.
#![allow(unsafe_code)] // kernel launches (device buffers, the fill kernel).

mod backend;
mod decode;
mod dense;
mod elem;
mod gemm;
mod generic_attention;
mod ops;
mod params;
mod projection;
mod select;

pub use cudarc::driver::CudaSlice;
pub use elem::{DeviceIndices, Elem};
pub use gemm::ensure_cublas;
pub use projection::DeviceProjection;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::problem::{DType, DenseAttention, Strides};
use crate::{nvrtc, source, KernelError};

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
    /// Seconds the kernels took to be ready at start (read, or compiled in parallel).
    pub kernel_seconds: f64,
    /// Where each compilation unit came from, in [`source::ALL`]'s order.
    pub kernel_origins: Vec<nvrtc::Origin>,
    /// Dynamic shared memory a block may opt into, in bytes (kernels needing more are left out).
    pub max_shared_per_block: usize,
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

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// The GPU attention backend: one device, one stream, every kernel loaded.
#[derive(Debug)]
pub struct CudaAttention {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    info: DeviceInfo,
    scratch: Mutex<Option<CudaSlice<f32>>>,
    blas: std::sync::OnceLock<cudarc::cublas::CudaBlas>,
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
    /// Opens device `ordinal`, takes every kernel file for its architecture from `store`
    /// (prebuilt, cached, or compiled now, in parallel) and loads them.
    pub fn new(ordinal: usize, store: &nvrtc::KernelStore) -> Result<Self, KernelError> {
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
        let jobs: Vec<_> = source::ALL.iter().map(|f| (*f, arch.clone())).collect();
        let started = std::time::Instant::now();
        let obtained = nvrtc::obtain_all(&jobs, store)?;
        for o in &obtained {
            tracing::info!(unit = o.unit, arch = %o.arch, origin = ?o.origin, seconds = o.seconds, "kernels ready");
        }
        let kernel_seconds = started.elapsed().as_secs_f64();
        let kernel_origins: Vec<nvrtc::Origin> = obtained.iter().map(|o| o.origin).collect();
        for o in obtained {
            let module = ctx
                .load_module(Ptx::from_binary(o.cubin))
                .map_err(driver("cuModuleLoadData"))?;
            for name in source::all_kernels() {
                if let Ok(function) = module.load_function(&name) {
                    functions.insert(name, function);
                }
            }
        }
        // Kernels whose dynamic shared memory exceeds what a block may opt into on this device
        // (99 KB on sm_86/sm_89/sm_120, 163 KB on sm_80, 227 KB on sm_90) are left out: that
        // variant is then unavailable, every other one works.
        let max_shared = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver("device attribute"))? as usize;
        let mut sized: Vec<(String, usize)> = Vec::new();
        for dtype in [DType::Bf16, DType::F16] {
            sized.extend(
                source::FWD_VARIANTS
                    .iter()
                    .map(|v| (v.kernel(dtype), v.shared_bytes())),
            );
            sized.push((
                source::projection_kernel(dtype),
                source::PROJECTION_SHARED_BYTES,
            ));
        }
        for (name, bytes) in sized {
            if bytes > max_shared {
                if functions.remove(&name).is_some() {
                    tracing::info!(kernel = %name, bytes, max_shared, "kernel left out: too much shared memory for this device");
                }
            } else if let Some(f) = functions.get(&name) {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(driver("cuFuncSetAttribute"))?;
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
            kernel_seconds,
            kernel_origins,
            max_shared_per_block: max_shared,
        };
        Ok(CudaAttention {
            ctx,
            stream,
            functions,
            info,
            scratch: Mutex::new(None),
            blas: std::sync::OnceLock::new(),
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

    /// Whether the kernel `name` is loaded (a `flash_fwd` variant may be left out on a device
    /// with less shared memory per block than it needs).
    pub fn has_kernel(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    fn function(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.functions.get(name).ok_or_else(|| {
            KernelError::Invalid(format!(
                "kernel {name} is not loaded (not compiled, or it needs more shared memory per \
                 block than this device's {} bytes)",
                self.info.max_shared_per_block
            ))
        })
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

    /// Copies f32 values to the device.
    pub fn upload_f32(&self, values: &[f32]) -> Result<CudaSlice<f32>, KernelError> {
        self.stream.clone_htod(values).map_err(driver("upload"))
    }

    /// `len` zeroed device values of `T` (f32, i32, u16).
    pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream.alloc_zeros::<T>(len).map_err(driver("alloc"))
    }

    /// Copies device values of `T` back to the host.
    pub fn download_raw<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        data: &CudaSlice<T>,
    ) -> Result<Vec<T>, KernelError> {
        self.stream.clone_dtoh(data).map_err(driver("download"))
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
