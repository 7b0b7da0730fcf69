//! `y = x W^T (+ b)` through cuBLAS (`cublasGemmEx` with f32 accumulation for bf16/f16, plain
//! `sgemm` for f32 so the exact mode is not silently TF32), bias added by our row kernel.
#![allow(unsafe_code)] // cuBLAS calls.

use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;

use super::ops::Elem;
use super::CudaAttention;
use crate::problem::Precision;
use crate::KernelError;

fn blas_err(op: &'static str) -> impl Fn(cudarc::cublas::result::CublasError) -> KernelError {
    move |e| KernelError::cuda(op, e)
}

/// Fails unless the cuBLAS library can be loaded (cudarc panics on first use otherwise).
pub fn ensure_cublas() -> Result<(), KernelError> {
    // SAFETY: only tries to dlopen the library by its candidate names.
    if unsafe { blas_sys::is_culib_present() } {
        Ok(())
    } else {
        Err(KernelError::LibraryMissing { library: "cublas" })
    }
}

impl CudaAttention {
    fn blas(&self) -> Result<&CudaBlas, KernelError> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        ensure_cublas()?;
        let blas = CudaBlas::new(self.stream.clone()).map_err(blas_err("cublasCreate"))?;
        Ok(self.blas.get_or_init(|| blas))
    }

    /// `y[rows][n] = x[rows][k] W[n][k]^T (+ bias[n])`, all row-major, stored at `precision`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear<S: Elem>(
        &self,
        precision: Precision,
        x: &CudaSlice<S>,
        rows: usize,
        w: &CudaSlice<S>,
        bias: Option<&CudaSlice<S>>,
        n: usize,
        k: usize,
        y: &mut CudaSlice<S>,
    ) -> Result<(), KernelError> {
        self.gemm_into(precision, x, rows, w, bias, n, k, y, false)
    }

    /// `y += x W^T (+ bias)`: the residual add folded into the GEMM (one launch, one rounding).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_accumulate<S: Elem>(
        &self,
        precision: Precision,
        x: &CudaSlice<S>,
        rows: usize,
        w: &CudaSlice<S>,
        bias: Option<&CudaSlice<S>>,
        n: usize,
        k: usize,
        y: &mut CudaSlice<S>,
    ) -> Result<(), KernelError> {
        self.gemm_into(precision, x, rows, w, bias, n, k, y, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_into<S: Elem>(
        &self,
        precision: Precision,
        x: &CudaSlice<S>,
        rows: usize,
        w: &CudaSlice<S>,
        bias: Option<&CudaSlice<S>>,
        n: usize,
        k: usize,
        y: &mut CudaSlice<S>,
        accumulate: bool,
    ) -> Result<(), KernelError> {
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        if S::BYTES != precision.elem_bytes() {
            return Err(KernelError::Invalid(format!(
                "{precision} GEMM on {}-byte elements",
                S::BYTES
            )));
        }
        if rows == 0 || n == 0 || k == 0 {
            return Err(KernelError::Invalid(format!("empty GEMM {rows}x{k}x{n}")));
        }
        if [rows, n, k].iter().any(|&d| d > i32::MAX as usize) {
            return Err(KernelError::Invalid(format!(
                "GEMM {rows}x{k}x{n} too large"
            )));
        }
        for (what, got, want) in [
            ("x", x.len(), rows * k),
            ("weight", w.len(), n * k),
            ("y", y.len(), rows * n),
        ] {
            if got < want {
                return Err(KernelError::Invalid(format!(
                    "GEMM {what}: {got} elements, needs {want}"
                )));
            }
        }
        // Row-major y = x W^T is column-major y^T = W x^T: A = W (stored k x n column-major,
        // transposed), B = x^T (k x rows column-major), C = y^T (n x rows).
        let (m, nn, kk) = (n as i32, rows as i32, k as i32);
        let blas = self.blas()?;
        let op_t = blas_sys::cublasOperation_t::CUBLAS_OP_T;
        let op_n = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        match precision {
            Precision::F32 => {
                // SAFETY: f32 elements (checked above); extents checked above.
                let (xv, wv, mut yv) = unsafe {
                    (
                        x.transmute::<f32>(rows * k),
                        w.transmute::<f32>(n * k),
                        y.transmute_mut::<f32>(rows * n),
                    )
                };
                let (Some(xv), Some(wv), Some(yv)) = (xv, wv, yv.as_mut()) else {
                    return Err(KernelError::Invalid("GEMM views".into()));
                };
                let cfg = GemmConfig {
                    transa: op_t,
                    transb: op_n,
                    m,
                    n: nn,
                    k: kk,
                    alpha: 1.0f32,
                    lda: kk,
                    ldb: kk,
                    beta,
                    ldc: m,
                };
                // SAFETY: the layouts above address exactly the checked extents.
                unsafe { blas.gemm(cfg, &wv, &xv, yv) }.map_err(blas_err("sgemm"))?;
            }
            Precision::Bf16 => {
                // SAFETY: bf16 bits stored as u16 (checked above); extents checked above.
                let (xv, wv, mut yv) = unsafe {
                    (
                        x.transmute::<half::bf16>(rows * k),
                        w.transmute::<half::bf16>(n * k),
                        y.transmute_mut::<half::bf16>(rows * n),
                    )
                };
                let (Some(xv), Some(wv), Some(yv)) = (xv, wv, yv.as_mut()) else {
                    return Err(KernelError::Invalid("GEMM views".into()));
                };
                let cfg = GemmConfig {
                    transa: op_t,
                    transb: op_n,
                    m,
                    n: nn,
                    k: kk,
                    alpha: half::bf16::ONE,
                    lda: kk,
                    ldb: kk,
                    beta: half::bf16::from_f32(beta),
                    ldc: m,
                };
                // SAFETY: the layouts above address exactly the checked extents.
                unsafe { blas.gemm(cfg, &wv, &xv, yv) }.map_err(blas_err("gemm bf16"))?;
            }
            Precision::F16 => {
                // SAFETY: f16 bits stored as u16 (checked above); extents checked above.
                let (xv, wv, mut yv) = unsafe {
                    (
                        x.transmute::<half::f16>(rows * k),
                        w.transmute::<half::f16>(n * k),
                        y.transmute_mut::<half::f16>(rows * n),
                    )
                };
                let (Some(xv), Some(wv), Some(yv)) = (xv, wv, yv.as_mut()) else {
                    return Err(KernelError::Invalid("GEMM views".into()));
                };
                let cfg = GemmConfig {
                    transa: op_t,
                    transb: op_n,
                    m,
                    n: nn,
                    k: kk,
                    alpha: half::f16::ONE,
                    lda: kk,
                    ldb: kk,
                    beta: half::f16::from_f32(beta),
                    ldc: m,
                };
                // SAFETY: the layouts above address exactly the checked extents.
                unsafe { blas.gemm(cfg, &wv, &xv, yv) }.map_err(blas_err("gemm f16"))?;
            }
        }
        if let Some(b) = bias {
            self.add_rows(precision, y, b, rows, n, 1, 1)?;
        }
        Ok(())
    }
}
