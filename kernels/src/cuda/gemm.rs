//! `y = x W^T (+ b)` through cuBLAS (`cublasGemmEx` with f32 accumulation for bf16/f16, plain
//! `sgemm` for f32 so the exact mode is not silently TF32), bias added by our row kernel.
#![allow(unsafe_code)] // cuBLAS calls.

use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;

use super::elem::Elem;
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

/// `y[rows][n] (= | +=) x[rows][k] W[n][k]^T`.
#[derive(Debug, Clone, Copy)]
struct GemmDims {
    rows: usize,
    n: usize,
    k: usize,
}

/// One cuBLAS GEMM on buffers reinterpreted as `T` (whose size the caller checked).
fn gemm_as<T, S: Elem>(
    blas: &CudaBlas,
    d: GemmDims,
    x: &CudaSlice<S>,
    w: &CudaSlice<S>,
    y: &mut CudaSlice<S>,
    alpha: T,
    beta: T,
) -> Result<(), KernelError>
where
    CudaBlas: Gemm<T>,
{
    // SAFETY: `S` and `T` have the same size and the bits of `S` are a `T` at this precision
    // (checked by the caller); the views cover the extents checked by the caller.
    let (xv, wv, mut yv) = unsafe {
        (
            x.transmute::<T>(d.rows * d.k),
            w.transmute::<T>(d.n * d.k),
            y.transmute_mut::<T>(d.rows * d.n),
        )
    };
    let (Some(xv), Some(wv), Some(yv)) = (xv, wv, yv.as_mut()) else {
        return Err(KernelError::Invalid("GEMM views".into()));
    };
    // Row-major y = x W^T is column-major y^T = W x^T: A = W (stored k x n column-major,
    // transposed), B = x^T (k x rows column-major), C = y^T (n x rows).
    let (m, n, k) = (d.n as i32, d.rows as i32, d.k as i32);
    let cfg = GemmConfig {
        transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
        transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
        m,
        n,
        k,
        alpha,
        lda: k,
        ldb: k,
        beta,
        ldc: m,
    };
    // SAFETY: the layouts address exactly the views' extents.
    unsafe { blas.gemm(cfg, &wv, &xv, yv) }.map_err(blas_err("cublas gemm"))
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

    /// `y[rows][n] = x[rows][k] W[n][k]^T (+ bias[n])`, all row-major, stored at `precision`;
    /// with `accumulate`, `y +=` instead (a residual add folded into the GEMM: one launch, one
    /// rounding).
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
        let dims = GemmDims { rows, n, k };
        let blas = self.blas()?;
        match precision {
            Precision::F32 => gemm_as(blas, dims, x, w, y, 1.0f32, beta),
            Precision::Bf16 => gemm_as(
                blas,
                dims,
                x,
                w,
                y,
                half::bf16::ONE,
                half::bf16::from_f32(beta),
            ),
            Precision::F16 => gemm_as(
                blas,
                dims,
                x,
                w,
                y,
                half::f16::ONE,
                half::f16::from_f32(beta),
            ),
        }?;
        if let Some(b) = bias {
            self.add_rows(precision, y, b, rows, n, 1, 1)?;
        }
        Ok(())
    }
}
