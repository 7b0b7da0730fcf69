//! Launches of the fused vision-token projection (`vision_projection`).
#![allow(unsafe_code)] // kernel launches.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::params::ProjParams;
use super::{driver, CudaAttention};
use crate::problem::DType;
use crate::projection::{FoldedProjection, VisionProjection};
use crate::{source, KernelError};

/// One resampler layer's folded projection weights on the device.
#[derive(Debug)]
pub struct DeviceProjection {
    dtype: DType,
    k_dim: usize,
    inner: usize,
    frames: usize,
    w: CudaSlice<u16>,
    c1: CudaSlice<f32>,
    c2: CudaSlice<f32>,
    frame_embed: Option<CudaSlice<u16>>,
    frame_proj: Option<CudaSlice<f32>>,
}

/// Rows and columns of one output tile of the kernel.
const TILE: usize = 128;

impl CudaAttention {
    /// Uploads folded weights (see [`FoldedProjection::fold`]) for problems shaped like `p`.
    pub fn upload_projection(
        &self,
        p: &VisionProjection,
        folded: &FoldedProjection,
        dtype: DType,
    ) -> Result<DeviceProjection, KernelError> {
        p.validate()?;
        let (n, k) = (p.n_dim(), p.k_dim);
        if folded.w.len() != n * k || folded.c1.len() != n || folded.c2.len() != n {
            return Err(KernelError::Invalid(format!(
                "folded weights do not match a {n} x {k} projection"
            )));
        }
        let stream = &self.stream;
        let up16 = |v: &[u16]| stream.clone_htod(v).map_err(driver("upload"));
        let up32 = |v: &[f32]| stream.clone_htod(v).map_err(driver("upload"));
        let (frame_embed, frame_proj) = if p.frames > 0 {
            if folded.frame_embed.len() != p.frames * k || folded.frame_proj.len() != p.frames * n {
                return Err(KernelError::Invalid(format!(
                    "folded frame embedding does not match {} frames",
                    p.frames
                )));
            }
            (
                Some(up16(&folded.frame_embed)?),
                Some(up32(&folded.frame_proj)?),
            )
        } else {
            (None, None)
        };
        Ok(DeviceProjection {
            dtype,
            k_dim: k,
            inner: p.inner,
            frames: p.frames,
            w: up16(&folded.w)?,
            c1: up32(&folded.c1)?,
            c2: up32(&folded.c2)?,
            frame_embed,
            frame_proj,
        })
    }

    /// `K | V = LayerNorm(x + e_frame) W^T` for `p.rows` vision tokens of `x` (row stride
    /// `x_row` elements, a multiple of 8), into `out_k` and `out_v` (`[rows][inner]` each).
    pub fn projection_launch(
        &self,
        p: &VisionProjection,
        weights: &DeviceProjection,
        x: &CudaSlice<u16>,
        x_row: usize,
        out_k: &mut CudaSlice<u16>,
        out_v: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        p.validate()?;
        if (p.k_dim, p.inner) != (weights.k_dim, weights.inner) {
            return Err(KernelError::Invalid(format!(
                "projection {}x{} called with weights for {}x{}",
                p.k_dim, p.inner, weights.k_dim, weights.inner
            )));
        }
        if p.frames != 0 && p.frames != weights.frames {
            return Err(KernelError::Invalid(format!(
                "{} frames per video, weights folded for {}",
                p.frames, weights.frames
            )));
        }
        if x_row < p.k_dim || !x_row.is_multiple_of(8) {
            return Err(KernelError::Invalid(format!(
                "row stride {x_row} (needs >= {} and a multiple of 8)",
                p.k_dim
            )));
        }
        if x.len() < (p.rows - 1) * x_row + p.k_dim {
            return Err(KernelError::Invalid(format!(
                "vision tokens: {} elements for {} rows of stride {x_row}",
                x.len(),
                p.rows
            )));
        }
        let out_len = p.rows * p.inner;
        if out_k.len() < out_len || out_v.len() < out_len {
            return Err(KernelError::Invalid(format!(
                "K/V outputs need {out_len} elements"
            )));
        }
        let row_tiles = p.rows.div_ceil(TILE);
        if row_tiles > 65_535 {
            return Err(KernelError::Invalid(format!(
                "{} vision tokens in one call (at most {})",
                p.rows,
                65_535 * TILE
            )));
        }
        let stream = &self.stream;
        let (xp, _g1) = x.device_ptr(stream);
        let (wp, _g2) = weights.w.device_ptr(stream);
        let (c1, _g3) = weights.c1.device_ptr(stream);
        let (c2, _g4) = weights.c2.device_ptr(stream);
        let with_frames = p.frames > 0;
        let fe = match (&weights.frame_embed, with_frames) {
            (Some(e), true) => Some(e.device_ptr(stream)),
            _ => None,
        };
        let fp = match (&weights.frame_proj, with_frames) {
            (Some(e), true) => Some(e.device_ptr(stream)),
            _ => None,
        };
        let (ok, _g5) = out_k.device_ptr_mut(stream);
        let (ov, _g6) = out_v.device_ptr_mut(stream);
        let params = ProjParams {
            x: xp,
            w: wp,
            c1,
            c2,
            frame_embed: fe.as_ref().map_or(0, |e| e.0),
            frame_proj: fp.as_ref().map_or(0, |e| e.0),
            out_k: ok,
            out_v: ov,
            x_row: x_row as i64,
            rows: p.rows as i32,
            k_dim: p.k_dim as i32,
            n_dim: p.n_dim() as i32,
            inner: p.inner as i32,
            frames: if fe.is_some() { p.frames as i32 } else { 0 },
            tokens_per_frame: p.tokens_per_frame.max(1) as i32,
            eps: p.eps,
            reserved: 0,
        };
        let f = self.function(&source::projection_kernel(weights.dtype))?;
        let cfg = LaunchConfig {
            grid_dim: (p.n_dim().div_ceil(TILE) as u32, row_tiles as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: source::PROJECTION_SHARED_BYTES as u32,
        };
        let mut launch = stream.launch_builder(f);
        launch.arg(&params);
        // SAFETY: `ProjParams` mirrors the CUDA struct; x holds `rows` rows of stride x_row
        // (checked), the weights match k_dim x 2 * inner (checked at upload and above), the
        // outputs hold rows x inner, and the frame tables hold `frames` rows.
        unsafe { launch.launch(cfg) }.map_err(driver("vision_projection launch"))?;
        Ok(())
    }
}
