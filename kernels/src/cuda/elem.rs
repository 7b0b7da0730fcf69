//! Element types and index buffers of the small kernels: `Elem` (the storage of each precision),
//! host <-> device copies at a precision, indices checked against their bound at upload, and the
//! extent checks and launch shapes the launchers share.
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, ValidAsZeroBits};

use super::{driver, CudaAttention};
use crate::problem::Precision;
use crate::KernelError;

/// Threads per block of the row kernels.
pub(super) const ROW_THREADS: u32 = 256;

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
pub struct DeviceIndices {
    pub(super) data: CudaSlice<i32>,
    pub(super) bound: usize,
}

impl DeviceIndices {
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

pub(super) fn need(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got < want {
        return Err(KernelError::Invalid(format!(
            "{what}: {got} elements, needs {want}"
        )));
    }
    Ok(())
}

pub(super) fn elem<S: Elem>(precision: Precision) -> Result<(), KernelError> {
    if S::BYTES != precision.elem_bytes() {
        return Err(KernelError::Invalid(format!(
            "{precision} kernel called on {}-byte elements",
            S::BYTES
        )));
    }
    Ok(())
}

pub(super) fn rows_cfg(rows: usize, threads: u32) -> Result<LaunchConfig, KernelError> {
    if rows == 0 || rows > i32::MAX as usize {
        return Err(KernelError::Invalid(format!("{rows} rows")));
    }
    Ok(LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

pub(super) fn flat_cfg(n: usize) -> LaunchConfig {
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
    ) -> Result<DeviceIndices, KernelError> {
        if let Some(bad) = values.iter().find(|&&v| v as usize >= bound) {
            return Err(KernelError::Invalid(format!(
                "index {bad} outside 0..{bound}"
            )));
        }
        if bound > i32::MAX as usize + 1 {
            return Err(KernelError::Invalid(format!("index bound {bound}")));
        }
        let ints: Vec<i32> = values.iter().map(|&v| v as i32).collect();
        Ok(DeviceIndices {
            data: self.upload_i32(&ints)?,
            bound,
        })
    }
}
