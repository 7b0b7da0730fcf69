//! Pillow-compatible bicubic resampling (`Image.resize(size, Image.BICUBIC)` on 8-bit RGB).
//!
//! The official preprocessing resizes with Pillow 11.3, whose convolution resampler works as
//! follows (re-implemented here from this description):
//!
//! - The resize is separable: a horizontal pass (only when the width changes) produces an 8-bit
//!   intermediate image, then a vertical pass (only when the height changes) produces the output.
//! - Kernel: bicubic with `a = -0.5`, support 2. When downscaling by a factor `s > 1` the kernel is
//!   stretched by `s` (antialiasing): support `2 s`, argument divided by `s`.
//! - Coefficients are computed in `f64` per output sample: `center = (x + 0.5) * scale`, window
//!   `[trunc(center - support + 0.5), trunc(center + support + 0.5))` clamped to the input, weights
//!   `kernel((i - center + 0.5) / s)` normalised by their sum.
//! - The weights are turned into fixed point with 22 fractional bits (rounded half away from zero),
//!   each sample is accumulated in integers starting at `1 << 21` and the result `>> 22` is clipped
//!   to `0..=255`.
//!
//! Every output sample only depends on its own coefficients, so a sub-rectangle of the resized
//! image can be computed alone ([`resize_bicubic_pillow_region`]) with exactly the same values.
//! The preprocessing uses this to compute only the centre crop, which keeps memory bounded even for
//! extreme aspect ratios (a 1 x 10 000 image would otherwise be upscaled to 420 x 4 200 000).

use image::RgbImage;

/// Fractional bits of the fixed-point coefficients (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 22;
/// Rounding bias the accumulators start from.
const HALF: i64 = 1 << (PRECISION_BITS - 1);
/// Support (radius) of the unscaled bicubic kernel.
const BICUBIC_SUPPORT: f64 = 2.0;
/// Bicubic kernel parameter used by Pillow.
const BICUBIC_A: f64 = -0.5;

/// Pillow's bicubic kernel (Keys cubic convolution with `a = -0.5`).
fn bicubic_kernel(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    } else {
        0.0
    }
}

/// Fixed-point filter taps of a range of output samples along one axis.
struct AxisTaps {
    /// Per output sample: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Row stride of `coeffs` (the largest possible number of taps).
    ksize: usize,
    /// `bounds.len() * ksize` fixed-point weights.
    coeffs: Vec<i32>,
}

impl AxisTaps {
    /// Taps of output samples `out_start .. out_start + out_len` when resizing an axis of
    /// `in_size` samples to `out_size` samples. Samples at or past `out_size` get no taps
    /// (they come out as 0).
    fn new(in_size: usize, out_size: u64, out_start: u64, out_len: usize) -> Self {
        let scale = if out_size == 0 {
            0.0
        } else {
            in_size as f64 / out_size as f64
        };
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        // Bounded by 4 * in_size + 3, so the conversion cannot overflow in practice.
        let ksize = (support.ceil() as usize)
            .saturating_mul(2)
            .saturating_add(1);
        let inv_filterscale = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(out_len);
        let mut coeffs = vec![0i32; out_len.saturating_mul(ksize)];
        let mut weights = vec![0f64; ksize];
        for (i, row) in coeffs
            .chunks_exact_mut(ksize.max(1))
            .enumerate()
            .take(out_len)
        {
            let xx = out_start + i as u64;
            if xx >= out_size {
                bounds.push((0, 0));
                continue;
            }
            let center = (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, like the C `(int)` cast.
            let lo = ((center - support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let n = hi.saturating_sub(lo).min(ksize);
            let mut sum = 0.0f64;
            for (k, w) in weights.iter_mut().enumerate().take(n) {
                *w = bicubic_kernel(((k + lo) as f64 - center + 0.5) * inv_filterscale);
                sum += *w;
            }
            for (k, c) in row.iter_mut().enumerate().take(n) {
                let w = if sum != 0.0 {
                    weights[k] / sum
                } else {
                    weights[k]
                };
                let f = w * f64::from(1u32 << PRECISION_BITS);
                // Round half away from zero, then truncate (C cast semantics).
                *c = if w < 0.0 {
                    (f - 0.5) as i32
                } else {
                    (f + 0.5) as i32
                };
            }
            bounds.push((lo, n));
        }
        Self {
            bounds,
            ksize,
            coeffs,
        }
    }

    /// Taps of output sample `i` (relative to `out_start`): first input index and weights.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (lo, n) = self.bounds[i];
        let start = i * self.ksize;
        (lo, &self.coeffs[start..start + n])
    }

    /// Smallest and one-past-largest input index used by any sample.
    fn input_range(&self) -> (usize, usize) {
        let lo = self
            .bounds
            .iter()
            .filter(|b| b.1 > 0)
            .map(|b| b.0)
            .min()
            .unwrap_or(0);
        let hi = self
            .bounds
            .iter()
            .filter(|b| b.1 > 0)
            .map(|b| b.0 + b.1)
            .max()
            .unwrap_or(0);
        (lo, hi.max(lo))
    }
}

/// Pillow's `clip8`: fixed-point accumulator to an 8-bit sample.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of the (virtual) resized image, in output pixel coordinates.
///
/// Coordinates are `u64` because the full resized image of an extreme aspect ratio can be wider
/// than `u32::MAX`; only the region itself is ever materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left edge (first column).
    pub left: u64,
    /// Top edge (first row).
    pub top: u64,
    /// Width of the region in pixels.
    pub width: u32,
    /// Height of the region in pixels.
    pub height: u32,
}

/// Resize `img` to `width` x `height` exactly like Pillow's `Image.resize((width, height),
/// Image.BICUBIC)` on an RGB image.
///
/// Same size returns a copy (Pillow does the same). A zero-sized input gives a black image of the
/// requested size; a zero target size gives an empty image (Pillow raises an error there).
pub fn resize_bicubic_pillow(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.dimensions() == (width, height) {
        return img.clone();
    }
    resize_bicubic_pillow_region(
        img,
        u64::from(width),
        u64::from(height),
        Region {
            left: 0,
            top: 0,
            width,
            height,
        },
    )
}

/// Compute only `region` of the image that [`resize_bicubic_pillow`] would produce at
/// `out_width` x `out_height`; the result is bit-identical to resizing fully and then cropping.
///
/// Pixels of `region` that lie outside the resized image are 0 (black), like Pillow's `crop`
/// outside the image bounds.
pub fn resize_bicubic_pillow_region(
    img: &RgbImage,
    out_width: u64,
    out_height: u64,
    region: Region,
) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (rw, rh) = (region.width as usize, region.height as usize);
    if rw == 0 || rh == 0 {
        return RgbImage::new(region.width, region.height);
    }
    let src = img.as_raw();

    // Vertical taps first: they decide which input rows the horizontal pass needs.
    let vtaps =
        (out_height != in_h as u64).then(|| AxisTaps::new(in_h, out_height, region.top, rh));
    let (row_lo, row_hi) = match &vtaps {
        Some(t) => t.input_range(),
        None => {
            let lo = (region.top.min(in_h as u64)) as usize;
            (lo, (lo + rh).min(in_h))
        }
    };

    // Horizontal pass over rows row_lo..row_hi into an 8-bit intermediate of width rw.
    let tmp_h = row_hi - row_lo;
    let mut tmp = vec![0u8; tmp_h * rw * 3];
    if out_width != in_w as u64 {
        let htaps = AxisTaps::new(in_w, out_width, region.left, rw);
        for (ty, trow) in tmp.chunks_exact_mut(rw * 3).enumerate() {
            let srow = &src[(row_lo + ty) * in_w * 3..(row_lo + ty + 1) * in_w * 3];
            for (x, px) in trow.chunks_exact_mut(3).enumerate() {
                let (lo, k) = htaps.taps(x);
                let mut acc = [HALF; 3];
                for (j, &c) in k.iter().enumerate() {
                    let s = &srow[(lo + j) * 3..(lo + j) * 3 + 3];
                    let c = i64::from(c);
                    acc[0] += i64::from(s[0]) * c;
                    acc[1] += i64::from(s[1]) * c;
                    acc[2] += i64::from(s[2]) * c;
                }
                px[0] = clip8(acc[0]);
                px[1] = clip8(acc[1]);
                px[2] = clip8(acc[2]);
            }
        }
    } else {
        // Width unchanged: copy the region's columns that exist.
        let x0 = region.left.min(in_w as u64) as usize;
        let x1 = (x0 + rw).min(in_w);
        let n = (x1 - x0) * 3;
        for (ty, trow) in tmp.chunks_exact_mut(rw * 3).enumerate() {
            let s = (row_lo + ty) * in_w * 3 + x0 * 3;
            trow[..n].copy_from_slice(&src[s..s + n]);
        }
    }

    // Vertical pass (or a copy of the rows when the height is unchanged).
    let mut out = vec![0u8; rw * rh * 3];
    match &vtaps {
        Some(t) => {
            for (y, orow) in out.chunks_exact_mut(rw * 3).enumerate() {
                let (lo, k) = t.taps(y);
                let base = lo.saturating_sub(row_lo);
                for (i, o) in orow.iter_mut().enumerate() {
                    let mut acc = HALF;
                    for (j, &c) in k.iter().enumerate() {
                        acc += i64::from(tmp[(base + j) * rw * 3 + i]) * i64::from(c);
                    }
                    *o = clip8(acc);
                }
            }
        }
        None => {
            let n = tmp.len().min(out.len());
            out[..n].copy_from_slice(&tmp[..n]);
        }
    }
    RgbImage::from_raw(region.width, region.height, out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test pattern (same formula as the Pillow script that produced the
    /// expectations below).
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = |c: u32| ((x * 37 + y * 91 + c * 53 + x * y * 13) % 256) as u8;
            image::Rgb([v(0), v(1), v(2)])
        })
    }

    /// `Image.fromarray(pattern).resize((ow, oh), Image.BICUBIC)` with Pillow 11.3.0:
    /// downscale + upscale, upscale + downscale, vertical only, extreme horizontal upscale.
    /// One case: input size, output size, expected RGB bytes.
    type PillowCase = ((u32, u32), (u32, u32), &'static [u8]);

    const PILLOW_CASES: &[PillowCase] = &[
        (
            (7, 5),
            (3, 9),
            &[
                18, 71, 130, 106, 177, 223, 204, 151, 82, 55, 112, 152, 128, 154, 179, 164, 150,
                126, 126, 183, 187, 164, 115, 102, 95, 145, 200, 169, 167, 145, 151, 129, 111, 113,
                124, 163, 182, 123, 87, 127, 156, 147, 160, 101, 99, 124, 122, 107, 153, 142, 125,
                163, 103, 133, 80, 139, 134, 169, 121, 108, 149, 108, 172, 111, 174, 131, 135, 106,
                132, 122, 109, 167, 131, 193, 129, 115, 99, 146, 108, 109, 163,
            ],
        ),
        (
            (9, 4),
            (20, 3),
            &[
                16, 65, 134, 21, 76, 143, 39, 102, 166, 61, 128, 177, 85, 151, 156, 110, 164, 139,
                133, 149, 150, 149, 127, 172, 141, 132, 202, 117, 154, 228, 115, 180, 208, 135,
                216, 122, 159, 208, 75, 196, 128, 98, 204, 64, 119, 135, 77, 101, 58, 104, 80, 56,
                93, 97, 85, 72, 127, 95, 63, 139, 140, 206, 109, 153, 188, 123, 187, 144, 155, 200,
                118, 170, 159, 148, 133, 122, 175, 99, 143, 147, 121, 176, 107, 154, 160, 117, 135,
                117, 154, 87, 113, 148, 80, 150, 99, 114, 158, 81, 150, 113, 115, 189, 83, 155,
                207, 109, 190, 178, 152, 210, 132, 183, 184, 90, 208, 140, 54, 219, 122, 38, 56,
                116, 84, 72, 114, 101, 109, 108, 144, 139, 115, 162, 134, 158, 109, 131, 185, 61,
                168, 144, 83, 205, 86, 127, 178, 94, 135, 116, 139, 126, 107, 161, 144, 150, 162,
                190, 178, 139, 196, 184, 74, 130, 168, 30, 83, 110, 52, 117, 54, 98, 168, 70, 142,
                176, 114, 183, 169, 131, 200, 167,
            ],
        ),
        (
            (11, 13),
            (11, 4),
            &[
                82, 135, 121, 139, 122, 168, 119, 172, 102, 172, 108, 161, 107, 159, 139, 158, 140,
                134, 145, 100, 153, 99, 147, 115, 146, 120, 106, 124, 106, 121, 67, 113, 177, 111,
                167, 129, 138, 165, 142, 85, 144, 147, 189, 108, 161, 154, 88, 127, 133, 156, 147,
                128, 97, 150, 139, 104, 162, 153, 136, 128, 135, 159, 166, 155, 133, 71, 129, 108,
                151, 166, 98, 156, 143, 101, 165, 140, 115, 168, 110, 123, 127, 162, 126, 91, 124,
                87, 146, 157, 144, 121, 106, 147, 139, 175, 83, 90, 101, 165, 162, 144, 105, 159,
                94, 113, 81, 158, 132, 120, 67, 127, 180, 107, 166, 95, 101, 87, 135, 121, 141,
                129, 128, 101, 147, 115, 169, 155, 77, 128, 143, 142, 45, 104,
            ],
        ),
        (
            (6, 6),
            (40, 1),
            &[
                96, 152, 119, 97, 152, 119, 98, 152, 120, 100, 152, 122, 104, 150, 125, 110, 148,
                129, 116, 145, 134, 123, 142, 139, 130, 139, 144, 134, 138, 146, 135, 139, 147,
                132, 143, 144, 126, 148, 139, 119, 155, 133, 114, 160, 128, 110, 164, 124, 110,
                164, 123, 116, 160, 125, 126, 151, 129, 140, 140, 136, 155, 128, 144, 168, 117,
                151, 177, 109, 156, 180, 105, 158, 176, 105, 157, 167, 107, 154, 156, 112, 149,
                143, 118, 143, 131, 124, 137, 124, 129, 134, 121, 132, 133, 123, 136, 132, 127,
                140, 133, 133, 143, 133, 138, 146, 134, 143, 148, 134, 147, 150, 135, 148, 151,
                135, 149, 151, 135, 150, 152, 135,
            ],
        ),
    ];

    #[test]
    fn matches_pillow_on_small_cases() {
        for &((w, h), (ow, oh), expected) in PILLOW_CASES {
            let out = resize_bicubic_pillow(&pattern(w, h), ow, oh);
            assert_eq!(out.dimensions(), (ow, oh));
            assert_eq!(out.as_raw().as_slice(), expected, "{w}x{h} -> {ow}x{oh}");
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = pattern(13, 7);
        assert_eq!(resize_bicubic_pillow(&img, 13, 7), img);
        // A region of an unchanged size is a plain crop.
        let r = Region {
            left: 2,
            top: 3,
            width: 5,
            height: 4,
        };
        let out = resize_bicubic_pillow_region(&img, 13, 7, r);
        assert_eq!(out, image::imageops::crop_imm(&img, 2, 3, 5, 4).to_image());
    }

    #[test]
    fn unit_scale_pass_is_identity() {
        // Width changes, height does not (and vice versa): the unchanged axis is untouched, and
        // a unit-scale kernel would be the identity anyway.
        let img = pattern(10, 6);
        let wide = resize_bicubic_pillow(&img, 17, 6);
        let tall = resize_bicubic_pillow(&img, 10, 11);
        assert_eq!(wide.dimensions(), (17, 6));
        assert_eq!(tall.dimensions(), (10, 11));
        let taps = AxisTaps::new(9, 9, 0, 9);
        for i in 0..9 {
            let (lo, k) = taps.taps(i);
            let one = 1 << PRECISION_BITS;
            assert_eq!(k[i - lo], one);
            assert_eq!(k.iter().map(|&c| i64::from(c)).sum::<i64>(), i64::from(one));
        }
    }

    #[test]
    fn region_equals_full_resize_then_crop() {
        for &((w, h), (ow, oh)) in &[
            ((31, 17), (12, 40)),
            ((8, 50), (23, 9)),
            ((40, 40), (40, 13)),
        ] {
            let img = pattern(w, h);
            let full = resize_bicubic_pillow(&img, ow, oh);
            for &(l, t, rw, rh) in &[
                (0, 0, ow, oh),
                (3, 2, 5, 4),
                (ow - 1, oh - 1, 1, 1),
                (1, 0, ow - 2, oh),
            ] {
                let r = Region {
                    left: u64::from(l),
                    top: u64::from(t),
                    width: rw,
                    height: rh,
                };
                let part = resize_bicubic_pillow_region(&img, u64::from(ow), u64::from(oh), r);
                let want = image::imageops::crop_imm(&full, l, t, rw, rh).to_image();
                assert_eq!(part, want, "{w}x{h} -> {ow}x{oh}, region {r:?}");
            }
        }
    }

    #[test]
    fn region_outside_the_output_is_black() {
        let img = pattern(6, 6);
        let r = Region {
            left: 8,
            top: 0,
            width: 4,
            height: 3,
        };
        let out = resize_bicubic_pillow_region(&img, 10, 5, r);
        let full = resize_bicubic_pillow(&img, 10, 5);
        for y in 0..3 {
            for x in 0..4 {
                let want = if x < 2 {
                    *full.get_pixel(8 + x, y)
                } else {
                    image::Rgb([0, 0, 0])
                };
                assert_eq!(*out.get_pixel(x, y), want);
            }
        }
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let img = pattern(5, 4);
        assert_eq!(resize_bicubic_pillow(&img, 0, 3).dimensions(), (0, 3));
        assert_eq!(resize_bicubic_pillow(&img, 3, 0).dimensions(), (3, 0));
        let empty = RgbImage::new(0, 0);
        let out = resize_bicubic_pillow(&empty, 3, 2);
        assert!(out.pixels().all(|p| p.0 == [0, 0, 0]));
        assert_eq!(resize_bicubic_pillow(&empty, 0, 0).dimensions(), (0, 0));
    }

    #[test]
    fn huge_virtual_output_only_materialises_the_region() {
        // 1 x 3 image "resized" to 420 x 1_260_000 rows; only a 4 x 4 window is computed.
        let img = pattern(1, 3);
        let r = Region {
            left: 208,
            top: 629_998,
            width: 4,
            height: 4,
        };
        let out = resize_bicubic_pillow_region(&img, 420, 1_260_000, r);
        assert_eq!(out.dimensions(), (4, 4));
    }
}
