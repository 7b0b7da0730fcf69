//! The Lynx test transform: shorter side to `image_res` (Pillow bicubic), centre crop, `/255`,
//! CLIP mean/std normalisation, CHW `f32` (SPEC §2.2).
//!
//! Official pipeline (torchvision 0.16.2 on a PIL image):
//! `Resize(res, BICUBIC)`, `CenterCrop((res, res))`, `ToTensor()`, `Normalize(mean, std)`.
//!
//! - Resize: `short, long = min(w, h), max(w, h)`; new short side `res`, new long side
//!   `int(res * long / short)` (Python true division, then truncation). Nothing happens when the
//!   size is unchanged; otherwise Pillow bicubic ([`super::resize`]). Smaller images are upscaled.
//! - Centre crop: `top = round((H - res) / 2.0)`, `left = round((W - res) / 2.0)` with Python's
//!   round-half-to-even.
//! - `x / 255` in `f32`, then `(x - mean) / std` in `f32` (torchvision's operation order).
//!
//! Only the cropped window of the resized image is computed
//! ([`super::resize::resize_bicubic_pillow_region`]); the values are identical to resizing the
//! whole image first.

use image::RgbImage;

use super::resize::{resize_bicubic_pillow_region, Region};

/// Input resolution of the Lynx release config (`image_res: 420` in `configs/LYNX.yaml`).
pub const LYNX_IMAGE_RES: u32 = 420;

/// OpenAI-CLIP channel means used by the Lynx transform (`image_mean` in `configs/LYNX.yaml`).
///
/// Written as `f64 as f32` on purpose: Python parses the YAML/list literal as a double and torch
/// converts that double to `float32`, so the `f32` value is the double rounded to `f32`.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [
    0.481_454_66_f64 as f32,
    0.457_827_5_f64 as f32,
    0.408_210_73_f64 as f32,
];

/// OpenAI-CLIP channel standard deviations used by the Lynx transform (`image_std`), converted
/// like [`OPENAI_CLIP_MEAN`].
pub const OPENAI_CLIP_STD: [f32; 3] = [
    0.268_629_54_f64 as f32,
    0.261_302_58_f64 as f32,
    0.275_777_11_f64 as f32,
];

/// Parameters of the test transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// Side of the square model input (420 for the release model, 56 for the tiny fixtures).
    pub image_res: u32,
    /// Per-channel mean (R, G, B) subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) divided by after the mean subtraction.
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// The release configuration: 420 x 420 with the OpenAI-CLIP statistics.
    fn default() -> Self {
        Self {
            image_res: LYNX_IMAGE_RES,
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
        }
    }
}

impl PreprocessConfig {
    /// The release statistics at another resolution (e.g. 56 for the tiny fixtures).
    pub fn with_res(image_res: u32) -> Self {
        Self {
            image_res,
            ..Self::default()
        }
    }

    /// Number of `f32` values [`preprocess`] returns: `3 * image_res * image_res`.
    pub fn output_len(&self) -> usize {
        let r = self.image_res as usize;
        3 * r * r
    }
}

/// Size after torchvision's `Resize(res)` (shorter side to `res`): `(width, height)`.
///
/// The long side is `int(res * long / short)` computed as Python does: exact integer product,
/// correctly rounded `f64` division, truncation. (For `long >= short` this always equals the
/// integer floor division, but the float form is kept to mirror the reference.) `u64` because
/// extreme aspect ratios exceed `u32`. Returns `None` for a zero-sized image.
pub fn resized_size(width: u32, height: u32, res: u32) -> Option<(u64, u64)> {
    let (short, long) = (width.min(height), width.max(height));
    if short == 0 {
        return None;
    }
    // For res * long < 2^53 (any realistic res) both operands are exact in f64 and the IEEE
    // division is correctly rounded, exactly like Python's int / int true division.
    let new_long = ((u64::from(res) * u64::from(long)) as f64 / f64::from(short)) as u64;
    let new_short = u64::from(res);
    Some(if width <= height {
        (new_short, new_long)
    } else {
        (new_long, new_short)
    })
}

/// Offset of a centred crop of `crop` pixels in a side of `size` pixels:
/// `int(round((size - crop) / 2.0))` with Python's round-half-to-even. Returns 0 when
/// `size <= crop` (never the case after [`resized_size`], whose short side equals the crop).
pub fn center_crop_offset(size: u64, crop: u64) -> u64 {
    let d = size.saturating_sub(crop);
    let q = d / 2;
    // d odd: exact half; round to the even neighbour.
    if d % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// Resize (shorter side to `res`) and centre-crop to a `res` x `res` RGB image, bit-exactly like
/// the official torchvision/Pillow transform.
///
/// Total on any input: a zero-sized image gives a black `res` x `res` image (what cropping
/// outside an image gives in Pillow; [`super::decode_image`] never returns such an image), and
/// `res == 0` gives an empty image.
pub fn resize_and_crop(img: &RgbImage, res: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let Some((nw, nh)) = resized_size(w, h, res) else {
        return RgbImage::new(res, res);
    };
    let region = Region {
        left: center_crop_offset(nw, u64::from(res)),
        top: center_crop_offset(nh, u64::from(res)),
        width: res,
        height: res,
    };
    if (nw, nh) == (u64::from(w), u64::from(h)) {
        // No resize (the short side already is `res`): a plain crop, inside the image.
        let (l, t) = (region.left as u32, region.top as u32);
        return image::imageops::crop_imm(img, l, t, res, res).to_image();
    }
    resize_bicubic_pillow_region(img, nw, nh, region)
}

/// Full test transform: [`resize_and_crop`] to `cfg.image_res`, then `x / 255` and
/// `(x - mean) / std` in `f32`. Returns [`PreprocessConfig::output_len`] values in CHW order
/// (R plane, G plane, B plane, each row-major), i.e. one `[3, res, res]` tensor.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    normalize_chw(&resize_and_crop(img, cfg.image_res), cfg)
}

/// `ToTensor` + `Normalize` of an already cropped image: CHW `f32`, `(v / 255 - mean) / std`.
pub fn normalize_chw(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let x = f32::from(px.0[c]) / 255.0f32;
            out[c * plane + i] = (x - cfg.mean[c]) / cfg.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::decode::{decode_image, VisionLimits};
    use crate::vision::test_util::{max_abs_diff, read_fixture, ref_pixel_values};

    /// `image_res` of the tiny fixtures.
    const TINY_RES: u32 = 56;

    /// Max abs difference between our tensor for an input file and the official one.
    fn fixture_diff(file: &str, case: &str) -> f32 {
        let img = decode_image(&read_fixture(file), &VisionLimits::default()).expect("decode");
        let ours = preprocess(&img, &PreprocessConfig::with_res(TINY_RES));
        let (shape, want) = ref_pixel_values(case);
        assert_eq!(shape, vec![1, 3, 56, 56]);
        max_abs_diff(&ours, &want)
    }

    #[test]
    fn png_fixtures_are_bit_exact() {
        for (file, case) in [
            ("inputs/img_landscape.png", "image0"),
            ("inputs/img_gray.png", "image2"),
            ("inputs/img_big.png", "image3"),
        ] {
            let img = decode_image(&read_fixture(file), &VisionLimits::default()).expect("decode");
            let ours = preprocess(&img, &PreprocessConfig::with_res(TINY_RES));
            let (_, want) = ref_pixel_values(case);
            // Bit-exact, not merely close.
            let ours_bits: Vec<u32> = ours.iter().map(|v| v.to_bits()).collect();
            let want_bits: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert!(
                ours_bits == want_bits,
                "{case}: max abs diff {}",
                max_abs_diff(&ours, &want)
            );
        }
    }

    #[test]
    fn jpeg_fixture_matches_pillow() {
        // Measured with the libjpeg-turbo based decoder: 0 (see decode.rs).
        let d = fixture_diff("inputs/img_portrait.jpg", "image1");
        println!("image1 (JPEG) max abs diff vs official pixel_values: {d:e}");
        assert!(d <= 0.0, "image1 max abs diff {d:e}");
    }

    #[test]
    fn batch_fixture_rows_match_single_images() {
        let (shape, want) = ref_pixel_values("image_batch_1_2_leftpad");
        assert_eq!(shape, vec![2, 3, 56, 56]);
        let n = 3 * 56 * 56;
        let cfg = PreprocessConfig::with_res(TINY_RES);
        for (row, file) in [(0, "inputs/img_portrait.jpg"), (1, "inputs/img_gray.png")] {
            let img = decode_image(&read_fixture(file), &VisionLimits::default()).expect("decode");
            let ours = preprocess(&img, &cfg);
            assert_eq!(
                max_abs_diff(&ours, &want[row * n..(row + 1) * n]),
                0.0,
                "row {row}"
            );
        }
    }

    #[test]
    fn resized_size_follows_python() {
        assert_eq!(resized_size(80, 60, 56), Some((74, 56)));
        assert_eq!(resized_size(50, 90, 56), Some((56, 100)));
        assert_eq!(resized_size(64, 64, 56), Some((56, 56)));
        assert_eq!(resized_size(300, 200, 56), Some((84, 56)));
        assert_eq!(resized_size(640, 480, 420), Some((560, 420)));
        // int(420 * 1000 / 3) = 140000, int(420 * 10 / 3) = int(1400.0), int(56 * 5 / 3) = 93
        assert_eq!(resized_size(3, 1000, 420), Some((420, 140_000)));
        assert_eq!(resized_size(10, 3, 420), Some((1400, 420)));
        assert_eq!(resized_size(3, 5, 56), Some((56, 93)));
        assert_eq!(resized_size(0, 10, 420), None);
        // Extreme aspect ratio: wider than u32.
        assert_eq!(
            resized_size(u32::MAX, 1, 420),
            Some((420 * u64::from(u32::MAX), 420))
        );
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        // (size - crop) / 2.0 -> Python round()
        assert_eq!(center_crop_offset(56, 56), 0);
        assert_eq!(center_crop_offset(57, 56), 0); // 0.5 -> 0
        assert_eq!(center_crop_offset(58, 56), 1);
        assert_eq!(center_crop_offset(59, 56), 2); // 1.5 -> 2
        assert_eq!(center_crop_offset(61, 56), 2); // 2.5 -> 2
        assert_eq!(center_crop_offset(63, 56), 4); // 3.5 -> 4
        assert_eq!(center_crop_offset(74, 56), 9);
        assert_eq!(center_crop_offset(100, 56), 22);
        assert_eq!(center_crop_offset(10, 56), 0);
    }

    #[test]
    fn normalisation_uses_f32_torchvision_order() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 255, 128, 7]));
        let cfg = PreprocessConfig::with_res(2);
        let out = normalize_chw(&img, &cfg);
        assert_eq!(out.len(), 6);
        for c in 0..3 {
            for x in 0..2usize {
                let v = f32::from(img.get_pixel(x as u32, 0).0[c]);
                let want = (v / 255.0f32 - cfg.mean[c]) / cfg.std[c];
                assert_eq!(out[c * 2 + x].to_bits(), want.to_bits());
            }
        }
        // The constants are the Python doubles rounded to f32.
        assert_eq!(OPENAI_CLIP_MEAN[0], 0.481_454_66_f64 as f32);
        assert_eq!(OPENAI_CLIP_STD[2], 0.275_777_11_f64 as f32);
    }

    #[test]
    fn unchanged_size_is_only_cropped() {
        // 56 x 70 at res 56: short side already 56, int(56 * 70 / 56) = 70 -> no resize.
        let img = RgbImage::from_fn(56, 70, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let out = resize_and_crop(&img, 56);
        assert_eq!(
            out,
            image::imageops::crop_imm(&img, 0, 7, 56, 56).to_image()
        );
    }

    #[test]
    fn output_shape_and_extreme_aspect_ratios() {
        let cfg = PreprocessConfig::with_res(16);
        for (w, h) in [(1, 1), (1, 5000), (5000, 1), (3, 2), (17, 16)] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x % 251) as u8, (y % 241) as u8, 3])
            });
            let out = preprocess(&img, &cfg);
            assert_eq!(out.len(), cfg.output_len(), "{w}x{h}");
            assert!(out.iter().all(|v| v.is_finite()));
        }
        assert_eq!(PreprocessConfig::default().output_len(), 3 * 420 * 420);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let cfg = PreprocessConfig::with_res(4);
        // res 0: empty output.
        assert!(preprocess(&RgbImage::new(4, 4), &PreprocessConfig::with_res(0)).is_empty());
        // Zero-sized image: the tensor of a black image.
        let black = preprocess(&RgbImage::new(4, 4), &cfg);
        for (w, h) in [(0, 3), (3, 0), (0, 0)] {
            assert_eq!(preprocess(&RgbImage::new(w, h), &cfg), black, "{w}x{h}");
        }
    }
}
