//! Image and video input pipeline of the Lynx model.
//!
//! Reproduces the official Python preprocessing (Pillow 11.3 + torchvision 0.16.2, SPEC §2.1-2.3)
//! bit-exactly on PNG input, and on the fixture JPEGs too (libjpeg-turbo based JPEG decoder):
//!
//! 1. [`decode`](mod@decode): bytes -> 8-bit RGB like `PIL.Image.open(..).convert("RGB")`, with
//!    size limits checked from the header before decoding ([`VisionLimits`]). JPEG goes through
//!    mozjpeg (libjpeg-turbo) so that JPEG input matches Pillow (measurements in [`decode`]).
//! 2. [`resize`]: Pillow's antialiased bicubic convolution in 8-bit fixed point.
//! 3. [`preprocess`](mod@preprocess): shorter side to `image_res`, centre crop, `/255`, CLIP
//!    mean/std, CHW `f32`.
//! 4. [`video`]: the official JSON list of base64 frames, deterministic frame sampling
//!    (`training=False`) and per-frame preprocessing.
//!
//! All entry points return [`VisionError`] on bad input; nothing panics on untrusted bytes.

pub mod decode;
pub mod preprocess;
pub mod resize;
pub mod video;

pub use decode::{
    decode_image, decode_with_header, read_header, ImageHeader, VisionError, VisionLimits,
};
pub use preprocess::{
    preprocess, resize_and_crop, PreprocessConfig, LYNX_IMAGE_RES, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
};
pub use resize::{resize_bicubic_pillow, resize_bicubic_pillow_region, Region};
pub use video::{
    decode_video_frames, load_video_frames, parse_video_json, parse_video_json_with_limits,
    sample_frame_ids, LYNX_NUM_FRAMES,
};

/// Fixture helpers shared by the unit tests of this module.
#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// Path of a file under `tests/data/tiny/` of the repository.
    pub fn fixture_path(rel: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tiny/")).join(rel)
    }

    /// Read a fixture file; a missing fixture fails the test (never skipped).
    pub fn read_fixture(rel: &str) -> Vec<u8> {
        let path = fixture_path(rel);
        match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => panic!("missing fixture {}: {e}", path.display()),
        }
    }

    /// `pixel_values` of `refs/ref_<case>.safetensors`: shape and little-endian f32 data.
    pub fn ref_pixel_values(case: &str) -> (Vec<usize>, Vec<f32>) {
        let bytes = read_fixture(&format!("refs/ref_{case}.safetensors"));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let t = st.tensor("pixel_values").expect("pixel_values tensor");
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape().to_vec(), data)
    }

    /// Max abs difference of two equally long slices.
    pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "length mismatch");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// `refs/ref.json` parsed.
    pub fn ref_json() -> serde_json::Value {
        serde_json::from_slice(&read_fixture("refs/ref.json")).expect("valid ref.json")
    }
}
