//! Building request inputs: files from the command line, or synthetic images and videos for the
//! benchmark.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};

use super::ClientError;

/// Reads a file.
pub fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError(format!("cannot read {}: {e}", path.display())))
}

/// A `w` x `h` PNG with a pattern that depends on `seed` (distinct seeds: distinct bytes).
pub fn synthetic_png(w: u32, h: u32, seed: u32) -> Result<Vec<u8>, ClientError> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(7)
            .wrapping_add(y.wrapping_mul(13))
            .wrapping_add(seed.wrapping_mul(101));
        Rgb([(v % 251) as u8, ((v / 3) % 241) as u8, (seed % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| ClientError(format!("cannot encode a PNG: {e}")))?;
    Ok(out.into_inner())
}
