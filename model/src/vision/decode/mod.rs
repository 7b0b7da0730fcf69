//! Image decoding: bytes -> 8-bit RGB, like `PIL.Image.open(f).convert("RGB")` (Pillow 11.3).
//!
//! # Limits
//! [`VisionLimits`] bounds the encoded size and the pixel count. The pixel count is read from the
//! header before any pixel data is decoded, so decompression bombs are rejected cheaply.
//!
//! # Formats
//! Everything the `image` crate 0.25 decodes with the features `png`, `jpeg`, `gif`, `webp`,
//! `bmp`, `tiff`. The format is sniffed from the content (never from a file name). The conversion
//! to RGB follows Pillow's `convert("RGB")`:
//! - gray is replicated to R = G = B, alpha channels are dropped (no compositing), palettes are
//!   expanded to their colours (PNG `tRNS` ignored);
//! - 16-bit RGB / RGBA / gray+alpha keep the high byte (Pillow's `;16B` raw modes);
//! - 16-bit gray without alpha is clipped to 255 (Pillow opens it as `I;16` and `I;16 -> RGB`
//!   clips, it does not rescale);
//! - other sample types (float TIFF, ...) use the `image` crate's conversion (not checked against
//!   Pillow).
//!
//! Checked against Pillow 11.3 on 1/2/4/8/16-bit gray, gray+alpha, RGB, RGBA and palette PNGs.
//!
//! # JPEG
//! Pillow decodes JPEG with libjpeg-turbo 3.1 (ISLOW integer IDCT, fancy chroma upsampling). The
//! decoders below were measured against the Pillow-decoded pixels of the fixture JPEGs
//! (`img_portrait.jpg`, 50x90 4:2:0 q95; the 7 frames of `video7.json`, 96x72 4:2:0 q90), as the
//! max abs difference of the raw decoded 8-bit RGB and of the final normalised tensors after the
//! whole pipeline (`pixel_values` of `ref_image1`, `ref_video0`, `ref_video1`):
//!
//! Columns: **P** = `img_portrait.jpg` decoded, max abs difference in grey levels (number of
//! differing samples out of 13 500); **V** = the 7 `video7.json` frames decoded, same (out of
//! 145 152); **i1 / v0 / v1** = max abs difference of the final `pixel_values` tensors of
//! `ref_image1`, `ref_video0`, `ref_video1`.
//!
//! | decoder | P | V | i1 | v0 | v1 |
//! |---|---|---|---|---|---|
//! | `image` 0.25.10 default (zune-jpeg 0.5.15) | 3 (3831) | 4 (40 335) | 4.38e-2 | 4.38e-2 | 4.38e-2 |
//! | zune-jpeg 0.5.15 direct, default options (SIMD) | 3 (3831) | 4 (40 335) | 4.38e-2 | 4.38e-2 | 4.38e-2 |
//! | zune-jpeg 0.5.15 direct, `set_use_unsafe(false)` | 3 (3831) | 4 (40 335) | 4.38e-2 | 4.38e-2 | 4.38e-2 |
//! | jpeg-decoder 0.3.2 | 3 (1287) | 3 (14 117) | 4.38e-2 | 4.38e-2 | 4.38e-2 |
//! | **mozjpeg 0.10.13** (mozjpeg-sys 2.2.3, C, no SIMD) | **0** (0) | **0** (0) | **0** | **0** | **0** |
//!
//! (A tensor difference of 4.38e-2 is 3 grey levels: `3 / 255 / 0.2686`.) mozjpeg was also exact
//! (0 on every sample) on 60 further JPEGs written and decoded by Pillow 11.3: sizes 300x200,
//! 37x23, 17x101, 9x8 and 1x1; subsampling 4:4:4, 4:2:2, 4:2:0; baseline and progressive; with and
//! without restart markers; quality 50 and 95; and 5 grayscale JPEGs. On the same set the `image`
//! crate differs by up to 7 levels.
//!
//! JPEG is therefore decoded with **mozjpeg** (a libjpeg-turbo fork; the C library is built from
//! source by `mozjpeg-sys`, without SIMD) with libjpeg's defaults, ISLOW IDCT and fancy
//! upsampling, like Pillow. Limitations:
//! - CMYK/YCCK JPEGs (rare) go through the `image` crate instead; they differ from Pillow by at
//!   most 1 level on the Pillow-written CMYK JPEGs tried.
//! - Arithmetic-coded JPEGs are not supported (mozjpeg-sys is built without `arith_dec`); they
//!   fail with [`VisionError::CorruptImage`].
//! - A JPEG whose marker structure ends before the EOI marker is rejected as truncated (Pillow
//!   raises "image file is truncated"; libjpeg alone would pad the missing rows with grey).
//! - libjpeg reports fatal errors by unwinding (mozjpeg's error manager); they are caught with
//!   `catch_unwind`, which needs the default `panic = "unwind"` strategy.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};

/// Default [`VisionLimits::max_image_bytes`]: 20 MiB per encoded image (or video frame).
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// Default [`VisionLimits::max_pixels`]: 40 megapixels per image (or video frame).
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
/// Default [`VisionLimits::max_video_frames`]: frames listed in one video JSON.
pub const DEFAULT_MAX_VIDEO_FRAMES: usize = 512;

/// Resource limits applied to untrusted image and video input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionLimits {
    /// Largest accepted encoded image (or decoded base64 video frame), in bytes.
    pub max_image_bytes: usize,
    /// Largest accepted `width * height`, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest accepted number of frames in a video JSON (frames in the file, not the 5 sampled).
    pub max_video_frames: usize,
}

impl Default for VisionLimits {
    /// 20 MiB, 40 Mpx, 512 frames.
    fn default() -> Self {
        Self {
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_video_frames: DEFAULT_MAX_VIDEO_FRAMES,
        }
    }
}

/// Errors of the vision input pipeline.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// The encoded image is larger than [`VisionLimits::max_image_bytes`].
    #[error("image is {size} bytes, more than the limit max_image_bytes = {limit}")]
    TooManyBytes {
        /// Size of the encoded image in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The header announces more pixels than [`VisionLimits::max_pixels`].
    #[error("image is {width}x{height} pixels, more than the limit max_pixels = {limit}")]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The configured limit.
        limit: u64,
    },
    /// The video lists more frames than [`VisionLimits::max_video_frames`].
    #[error("video has {frames} frames, more than the limit max_video_frames = {limit}")]
    TooManyFrames {
        /// Number of frames in the JSON list.
        frames: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The bytes are not in a recognised or supported image format.
    #[error("unsupported or unknown image format: {0}")]
    UnsupportedFormat(String),
    /// The image data is corrupt or truncated.
    #[error("corrupt or truncated image: {0}")]
    CorruptImage(String),
    /// The image has a zero width or height.
    #[error("image has an empty size {width}x{height}")]
    EmptyImage {
        /// Width of the image.
        width: u32,
        /// Height of the image.
        height: u32,
    },
    /// A video frame is not valid base64.
    #[error("video frame {frame}: invalid base64: {source}")]
    BadBase64 {
        /// Index of the frame in the JSON list.
        frame: usize,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
    /// The video is not a JSON list of base64 strings.
    #[error("video is not a JSON list of base64 frame strings: {0}")]
    BadVideoJson(String),
    /// The video JSON list is empty.
    #[error("video has no frames")]
    EmptyVideo,
    /// A video frame failed to decode.
    #[error("video frame {frame}: {source}")]
    VideoFrame {
        /// Index of the frame in the JSON list.
        frame: usize,
        /// Why the frame was rejected.
        #[source]
        source: Box<VisionError>,
    },
    /// A pipeline parameter is unusable (`n_segments == 0`).
    #[error("invalid vision configuration: {0}")]
    InvalidConfig(String),
}

impl VisionError {
    /// The innermost error: unwraps [`VisionError::VideoFrame`].
    pub fn root(&self) -> &VisionError {
        match self {
            VisionError::VideoFrame { source, .. } => source.root(),
            other => other,
        }
    }
}

/// Map an `image` crate error to ours.
fn map_image_error(e: image::ImageError) -> VisionError {
    use image::ImageError as E;
    match e {
        E::Unsupported(u) => VisionError::UnsupportedFormat(u.to_string()),
        E::Limits(l) => VisionError::CorruptImage(format!("decoder limit exceeded: {l}")),
        other => VisionError::CorruptImage(other.to_string()),
    }
}

/// Reject images over the byte or pixel limits (or with an empty size).
fn check_size(width: u32, height: u32, limits: &VisionLimits) -> Result<(), VisionError> {
    if width == 0 || height == 0 {
        return Err(VisionError::EmptyImage { width, height });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(VisionError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// How [`decode_with_header`] decodes an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// mozjpeg straight to RGB.
    Libjpeg,
    /// A non-interlaced 16-bit PNG, reduced to 8-bit RGB row by row as it decodes.
    Png16Rows,
    /// The `image` crate's decoder, then the conversion to RGB.
    Image,
}

/// What an encoded image's header says, read without decoding any pixel data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// The format sniffed from the content.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes the decoder holds at its peak: the decoded samples (width x height x channels x
    /// bytes per sample) plus the 8-bit RGB copy when the samples are not already 8-bit RGB.
    /// 16-bit PNGs are reduced to 8 bits row by row, so they cost only the RGB copy.
    pub decode_bytes: u64,
    plan: Plan,
}

impl ImageHeader {
    /// Peak bytes of decoding and preprocessing this image to `res` x `res`: the decoder's
    /// [`ImageHeader::decode_bytes`], the resize's intermediate (`height x res x 3`), the crop
    /// and its normalised `f32` copy (`res x res x 3 x 5`).
    pub fn prepare_bytes(&self, res: u32) -> u64 {
        let res = u64::from(res);
        let tall = u64::from(self.width.max(self.height));
        self.decode_bytes + tall * res * 3 + res * res * 15
    }
}

/// Reads the header of an encoded image: the byte limit first, then the format, the size and
/// the sample layout; the pixel limit is checked here, before anything is decoded.
pub fn read_header(bytes: &[u8], limits: &VisionLimits) -> Result<ImageHeader, VisionError> {
    if bytes.len() > limits.max_image_bytes {
        return Err(VisionError::TooManyBytes {
            size: bytes.len(),
            limit: limits.max_image_bytes,
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| VisionError::CorruptImage(e.to_string()))?;
    let format = reader.format().ok_or_else(|| {
        VisionError::UnsupportedFormat("content does not match any known image signature".into())
    })?;
    let rgb_bytes = |w: u32, h: u32| u64::from(w) * u64::from(h) * 3;
    // Decoders that produce 8-bit RGB directly hold only the result.
    let direct = match format {
        ImageFormat::Jpeg => libjpeg_rgb_header(bytes)?.map(|size| (size, Plan::Libjpeg)),
        ImageFormat::Png => png16::header(bytes)?.map(|size| (size, Plan::Png16Rows)),
        _ => None,
    };
    if let Some(((width, height), plan)) = direct {
        check_size(width, height, limits)?;
        return Ok(ImageHeader {
            format,
            width,
            height,
            decode_bytes: rgb_bytes(width, height),
            plan,
        });
    }
    let decoder = catch_unwind(AssertUnwindSafe(|| reader.into_decoder()))
        .map_err(|_| VisionError::CorruptImage("image decoder panicked".into()))?
        .map_err(map_image_error)?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    check_size(width, height, limits)?;
    let color = image::ImageDecoder::color_type(&decoder);
    let samples = u64::from(width) * u64::from(height) * u64::from(color.bytes_per_pixel());
    let copy = if color == image::ColorType::Rgb8 {
        0
    } else {
        rgb_bytes(width, height)
    };
    Ok(ImageHeader {
        format,
        width,
        height,
        decode_bytes: samples + copy,
        plan: Plan::Image,
    })
}

/// Decode an encoded image (any supported format) to 8-bit RGB, like Pillow's
/// `Image.open(BytesIO(bytes)).convert("RGB")`.
///
/// The byte limit is checked first, then the pixel limit from the header, then the data is
/// decoded. JPEG uses a libjpeg-turbo compatible decoder (see the module docs).
pub fn decode_image(bytes: &[u8], limits: &VisionLimits) -> Result<RgbImage, VisionError> {
    let header = read_header(bytes, limits)?;
    decode_with_header(bytes, &header, limits)
}

/// Decodes an image whose header [`read_header`] already read (and whose cost the caller may
/// have reserved from [`ImageHeader::decode_bytes`]).
pub fn decode_with_header(
    bytes: &[u8],
    header: &ImageHeader,
    limits: &VisionLimits,
) -> Result<RgbImage, VisionError> {
    let img = match header.plan {
        Plan::Libjpeg => decode_jpeg_libjpeg(bytes, limits)?.ok_or_else(|| {
            VisionError::CorruptImage("JPEG colour space changed between header and data".into())
        })?,
        Plan::Png16Rows => png16::decode(bytes)?,
        Plan::Image => {
            let mut reader = ImageReader::with_format(Cursor::new(bytes), header.format);
            let mut image_limits = image::Limits::default();
            image_limits.max_image_width = Some(header.width);
            image_limits.max_image_height = Some(header.height);
            reader.limits(image_limits);
            // The decoders are not supposed to panic on bad data; contain it if one does anyway.
            let img = catch_unwind(AssertUnwindSafe(|| reader.decode()))
                .map_err(|_| VisionError::CorruptImage("image decoder panicked".into()))?
                .map_err(map_image_error)?;
            to_rgb_like_pillow(img)
        }
    };
    if (img.width(), img.height()) != (header.width, header.height) {
        return Err(VisionError::CorruptImage(format!(
            "decoded {}x{} pixels, the header said {}x{}",
            img.width(),
            img.height(),
            header.width,
            header.height
        )));
    }
    Ok(img)
}

/// Convert a decoded image to RGB with Pillow's `convert("RGB")` rules (see the module docs).
fn to_rgb_like_pillow(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_vec = |v: Vec<u8>| RgbImage::from_raw(w, h, v).unwrap_or_else(|| RgbImage::new(w, h));
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma16(i) => from_vec(
            i.as_raw()
                .iter()
                .flat_map(|&v| [v.min(255) as u8; 3])
                .collect(),
        ),
        DynamicImage::ImageLumaA16(i) => from_vec(
            i.as_raw()
                .chunks_exact(2)
                .flat_map(|p| [(p[0] >> 8) as u8; 3])
                .collect(),
        ),
        DynamicImage::ImageRgb16(i) => {
            from_vec(i.as_raw().iter().map(|&v| (v >> 8) as u8).collect())
        }
        DynamicImage::ImageRgba16(i) => from_vec(
            i.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
        ),
        // 8-bit gray / gray+alpha / RGBA: replicate gray, drop alpha (the crate's conversion
        // does exactly that for 8-bit samples); float images: the crate's conversion.
        other => other.to_rgb8(),
    }
}

/// Whether a JPEG stream's marker structure reaches the EOI marker before the data ends.
///
/// Walks the segments from SOI: length-prefixed marker segments are skipped, entropy-coded data
/// after SOS is scanned for the next marker (`FF 00` stuffing, `FF D0-D7` restarts and `FF FF`
/// fill bytes are part of the data).
fn jpeg_reaches_eoi(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return false;
    }
    let mut i = 2usize;
    loop {
        // Find the next marker (skip fill bytes).
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => continue,
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i), bytes.get(i + 1)) else {
            return false;
        };
        let len = usize::from(hi) << 8 | usize::from(lo);
        if len < 2 {
            return false;
        }
        i += len;
        if i > bytes.len() {
            return false;
        }
        if marker == 0xDA {
            // Entropy-coded segment: runs until a marker other than stuffing/restart.
            loop {
                while i < bytes.len() && bytes[i] != 0xFF {
                    i += 1;
                }
                let mut j = i;
                while j < bytes.len() && bytes[j] == 0xFF {
                    j += 1;
                }
                match bytes.get(j) {
                    None => return false,
                    Some(0x00) | Some(0xD0..=0xD7) => i = j + 1,
                    Some(_) => {
                        i = j - 1;
                        break;
                    }
                }
            }
        }
    }
}

/// Runs `f` over libjpeg, turning its fatal errors (unwinding out of the C code through
/// mozjpeg's error manager, without the panic hook) into [`VisionError::CorruptImage`].
fn with_libjpeg<T>(f: impl FnOnce() -> Result<T, VisionError>) -> Result<T, VisionError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "libjpeg fatal error".into());
            Err(VisionError::CorruptImage(msg))
        }
    }
}

fn libjpeg_corrupt(e: std::io::Error) -> VisionError {
    VisionError::CorruptImage(format!("JPEG: {e}"))
}

/// The size of a JPEG that libjpeg decodes to RGB itself; `None` for the colour spaces it
/// cannot convert (CMYK, YCCK), which go through the `image` crate.
fn libjpeg_rgb_header(bytes: &[u8]) -> Result<Option<(u32, u32)>, VisionError> {
    if !jpeg_reaches_eoi(bytes) {
        return Err(VisionError::CorruptImage(
            "truncated JPEG: data ends before the EOI marker".into(),
        ));
    }
    with_libjpeg(|| {
        let d = mozjpeg::Decompress::new_mem(bytes).map_err(libjpeg_corrupt)?;
        use mozjpeg::ColorSpace as C;
        if !matches!(
            d.color_space(),
            C::JCS_GRAYSCALE | C::JCS_YCbCr | C::JCS_RGB
        ) {
            return Ok(None);
        }
        let (w, h) = d.size();
        let side = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Some((side(w), side(h))))
    })
}

/// Decode a JPEG with mozjpeg (libjpeg-turbo: ISLOW IDCT, fancy upsampling, like Pillow).
///
/// Returns `Ok(None)` for colour spaces libjpeg cannot convert to RGB (CMYK, YCCK); the caller
/// then falls back to the `image` crate.
fn decode_jpeg_libjpeg(
    bytes: &[u8],
    limits: &VisionLimits,
) -> Result<Option<RgbImage>, VisionError> {
    if !jpeg_reaches_eoi(bytes) {
        return Err(VisionError::CorruptImage(
            "truncated JPEG: data ends before the EOI marker".into(),
        ));
    }
    with_libjpeg(|| {
        let d = mozjpeg::Decompress::new_mem(bytes).map_err(libjpeg_corrupt)?;
        let (w, h) = d.size();
        let (w, h) = (
            u32::try_from(w).unwrap_or(u32::MAX),
            u32::try_from(h).unwrap_or(u32::MAX),
        );
        check_size(w, h, limits)?;
        use mozjpeg::ColorSpace as C;
        match d.color_space() {
            C::JCS_GRAYSCALE | C::JCS_YCbCr | C::JCS_RGB => {}
            _ => return Ok(None),
        }
        let mut started = d.rgb().map_err(libjpeg_corrupt)?;
        let pixels: Vec<u8> = started.read_scanlines().map_err(libjpeg_corrupt)?;
        started.finish().map_err(libjpeg_corrupt)?;
        RgbImage::from_raw(w, h, pixels)
            .map(Some)
            .ok_or_else(|| VisionError::CorruptImage("JPEG: short pixel buffer".into()))
    })
}

mod png16;
#[cfg(test)]
mod tests;
