//! `nn.Linear` on the CPU: `y[rows][n] = x[rows][k] W^T + b` with `W` stored `[n][k]` as the
//! checkpoints store it, optionally added to `y` (a layer and its residual add in one pass).
//!
//! Few rows (a decode step) are bound by reading the weights, so they stream: each weight row is
//! read once, multiplied with every input row, and the output features are split over the cores.
//! More rows (prefill, the vision stage) are bound by arithmetic and go to the `gemm` crate's
//! packed, cache-blocked kernels, parallel over the cores.
#![allow(unsafe_code)] // the `gemm` crate's entry point takes raw pointers.

use rayon::prelude::*;

use super::need;
use crate::KernelError;

/// Input rows up to which the weights stream instead of going to the packed kernels.
const STREAM_ROWS: usize = 12;
/// Output features per streaming task.
const STREAM_COLS: usize = 32;
/// SIMD lanes the dot products accumulate in (two AVX-512 or four AVX2 registers per row).
const LANES: usize = 16;

/// One linear layer's operands.
#[derive(Debug, Clone, Copy)]
pub struct LinearArgs<'a> {
    /// Input `[rows][k]`.
    pub x: &'a [f32],
    /// Weight `[n][k]`.
    pub w: &'a [f32],
    /// Bias `[n]`.
    pub bias: Option<&'a [f32]>,
    /// Input rows.
    pub rows: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
}

/// `y = x W^T + b`, or `y += x W^T + b` with `accumulate`.
pub fn linear(a: &LinearArgs<'_>, y: &mut [f32], accumulate: bool) -> Result<(), KernelError> {
    let (rows, k, n) = (a.rows, a.k, a.n);
    need("linear input", a.x.len(), rows * k)?;
    need("linear weight", a.w.len(), n * k)?;
    need("linear output", y.len(), rows * n)?;
    if let Some(b) = a.bias {
        need("linear bias", b.len(), n)?;
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let y = &mut y[..rows * n];
    if rows <= STREAM_ROWS {
        stream(a, y, accumulate);
    } else {
        packed(a, y, accumulate);
    }
    Ok(())
}

/// The packed kernels, then the bias.
fn packed(a: &LinearArgs<'_>, y: &mut [f32], accumulate: bool) {
    let (rows, k, n) = (a.rows, a.k, a.n);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the lengths were checked by `linear`: `x` holds `rows * k` values read with row
    // stride `k`, `w` holds `n * k` values read as the `k x n` matrix `W^T` (column stride `k`),
    // and `y` holds exactly `rows * n` values written with row stride `n`; `y` is borrowed
    // mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.x.as_ptr(),
            1,
            k as isize,
            a.w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    if let Some(b) = a.bias {
        y.par_chunks_mut(n).for_each(|row| {
            for (o, &bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        });
    }
}

/// One strided operand of [`matmul`]: element `(r, c)` at `offset + r * row + c * col`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    /// The buffer.
    pub data: &'a [f32],
    /// Index of element `(0, 0)`.
    pub offset: usize,
    /// Row stride.
    pub row: usize,
    /// Column stride.
    pub col: usize,
}

impl Strided<'_> {
    /// Whether every element of a `rows x cols` matrix lies in the buffer.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || self.offset + (rows - 1) * self.row + (cols - 1) * self.col < self.data.len()
    }
}

/// `dst[m][n] = a[m][k] b[k][n]` on one thread (the caller parallelises), operands strided, the
/// destination contiguous: e.g. one attention head's scores `Q K^T` read in place from
/// `[tokens][heads][head_dim]` tensors.
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
    dst: &mut [f32],
) -> Result<(), KernelError> {
    if !a.fits(m, k) || !b.fits(k, n) {
        return Err(KernelError::Invalid(format!(
            "matmul {m}x{k}x{n}: an operand lies outside its buffer"
        )));
    }
    need("matmul output", dst.len(), m * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return Ok(());
    }
    // SAFETY: `fits` checked that every element the strides address lies inside `a.data` and
    // `b.data`; `dst` holds at least `m * n` values written with row stride `n`, and being
    // borrowed mutably it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr().add(a.offset),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr().add(b.offset),
            b.col as isize,
            b.row as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// Dot products of `R` input rows with one weight row.
#[inline(always)]
pub(crate) fn dots<const R: usize>(xs: [&[f32]; R], w: &[f32]) -> [f32; R] {
    let k = w.len();
    let mut acc = [[0f32; LANES]; R];
    let full = k / LANES * LANES;
    for c in (0..full).step_by(LANES) {
        let wl: &[f32; LANES] = w[c..c + LANES].try_into().unwrap_or(&[0.0; LANES]);
        for (x, acc) in xs.iter().zip(acc.iter_mut()) {
            let xl: &[f32; LANES] = x[c..c + LANES].try_into().unwrap_or(&[0.0; LANES]);
            for l in 0..LANES {
                acc[l] += xl[l] * wl[l];
            }
        }
    }
    let mut out = [0f32; R];
    for ((o, x), acc) in out.iter_mut().zip(xs).zip(acc) {
        // Pairwise lane sum, then the tail.
        let mut lanes = acc;
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for l in 0..width {
                lanes[l] += lanes[l + width];
            }
        }
        let mut s = lanes[0];
        for (&xv, &wv) in x[full..k].iter().zip(&w[full..k]) {
            s += xv * wv;
        }
        *o = s;
    }
    out
}

/// Every input row times weight row `j`, into `out[r]`.
#[inline(always)]
fn weight_row(x: &[f32], rows: usize, k: usize, wj: &[f32], out: &mut [f32]) {
    let row = |r: usize| &x[r * k..(r + 1) * k];
    let mut r = 0;
    while r + 4 <= rows {
        out[r..r + 4].copy_from_slice(&dots([row(r), row(r + 1), row(r + 2), row(r + 3)], wj));
        r += 4;
    }
    match rows - r {
        3 => out[r..].copy_from_slice(&dots([row(r), row(r + 1), row(r + 2)], wj)),
        2 => out[r..].copy_from_slice(&dots([row(r), row(r + 1)], wj)),
        1 => out[r] = dots([row(r)], wj)[0],
        _ => {}
    }
}

/// The weight-streaming kernel: output features in tasks of [`STREAM_COLS`], each task reading
/// its weight rows once.
fn stream(a: &LinearArgs<'_>, y: &mut [f32], accumulate: bool) {
    let (rows, k, n) = (a.rows, a.k, a.n);
    // Results feature-major (`[n][rows]`), so each task writes one contiguous piece.
    let mut t = vec![0f32; n * rows];
    t.par_chunks_mut(STREAM_COLS * rows)
        .enumerate()
        .for_each(|(task, out)| {
            for (i, o) in out.chunks_exact_mut(rows).enumerate() {
                let j = task * STREAM_COLS + i;
                weight_row(a.x, rows, k, &a.w[j * k..(j + 1) * k], o);
            }
        });
    {
        for (r, yr) in y.chunks_exact_mut(n).enumerate() {
            for (j, o) in yr.iter_mut().enumerate() {
                let v = t[j * rows + r] + a.bias.map_or(0.0, |b| b[j]);
                *o = if accumulate { *o + v } else { v };
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::host::test_values(len, seed, 1.0)
    }

    /// Both kernels (streaming and packed), with and without bias and accumulation, against
    /// f64 dot products.
    #[test]
    fn linear_matches_f64_on_both_kernels() {
        for (rows, k, n) in [
            (1, 37, 70),
            (3, 64, 33),
            (12, 100, 5),
            (13, 48, 96),
            (40, 130, 17),
        ] {
            let (x, w, b) = (values(rows * k, 1), values(n * k, 2), values(n, 3));
            for bias in [None, Some(b.as_slice())] {
                for accumulate in [false, true] {
                    let start = values(rows * n, 4);
                    let mut y = start.clone();
                    let args = LinearArgs {
                        x: &x,
                        w: &w,
                        bias,
                        rows,
                        k,
                        n,
                    };
                    linear(&args, &mut y, accumulate).expect("shapes fit");
                    for r in 0..rows {
                        for j in 0..n {
                            let dot: f64 = (0..k)
                                .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                                .sum();
                            let want = dot
                                + bias.map_or(0.0, |b| b[j] as f64)
                                + if accumulate {
                                    start[r * n + j] as f64
                                } else {
                                    0.0
                                };
                            let got = y[r * n + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-5,
                                "{rows}x{k}x{n} bias={} acc={accumulate} [{r}][{j}]: {got} vs {want}",
                                bias.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn short_buffers_are_errors() {
        let args = LinearArgs {
            x: &[0.0; 3],
            w: &[0.0; 8],
            bias: None,
            rows: 1,
            k: 4,
            n: 2,
        };
        assert!(linear(&args, &mut [0.0; 2], false).is_err());
    }
}
