//! `F.interpolate(mode="bicubic", align_corners=False)` on the ViT position grid, with torch's CPU
//! semantics: cubic convolution A = -0.75, half-pixel centres, border clamping, no antialiasing,
//! f32 arithmetic, rows interpolated along x first, then the four rows combined along y.

/// Cubic convolution weights for fractional offset `t` (torch `get_cubic_upsample_coefficients`).
fn cubic_coefficients(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index: the four clamped source indices and their weights.
fn axis_taps(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let base = real.floor();
            let t = real - base;
            let base = base as i64;
            let idx = [0, 1, 2, 3].map(|k| (base - 1 + k).clamp(0, in_size as i64 - 1) as usize);
            (idx, cubic_coefficients(t))
        })
        .collect()
}

/// Resizes a `[h, w, c]` row-major grid to `[out_h, out_w, c]`.
pub fn bicubic_resize_grid(
    grid: &[f32],
    h: usize,
    w: usize,
    c: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let ty = axis_taps(h, out_h);
    let tx = axis_taps(w, out_w);
    let mut out = vec![0f32; out_h * out_w * c];
    for (oy, (iy, wy)) in ty.iter().enumerate() {
        for (ox, (ix, wx)) in tx.iter().enumerate() {
            for ch in 0..c {
                let at = |y: usize, x: usize| grid[(y * w + x) * c + ch];
                let mut rows = [0f32; 4];
                for (r, &y) in iy.iter().enumerate() {
                    rows[r] = at(y, ix[0]) * wx[0]
                        + at(y, ix[1]) * wx[1]
                        + at(y, ix[2]) * wx[2]
                        + at(y, ix[3]) * wx[3];
                }
                out[(oy * out_w + ox) * c + ch] =
                    rows[0] * wy[0] + rows[1] * wy[1] + rows[2] * wy[2] + rows[3] * wy[3];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_keeps_values() {
        let g: Vec<f32> = (0..16 * 3).map(|v| v as f32 * 0.37 - 4.0).collect();
        let out = bicubic_resize_grid(&g, 4, 4, 3, 4, 4);
        for (a, b) in g.iter().zip(&out) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn constant_grid_stays_constant() {
        let g = vec![2.5f32; 16 * 16 * 2];
        let out = bicubic_resize_grid(&g, 16, 16, 2, 30, 30);
        assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-5));
    }
}
