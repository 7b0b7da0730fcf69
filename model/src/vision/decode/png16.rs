//! 16-bit PNGs reduced to 8-bit RGB row by row as they decode, so that the 16-bit samples never
//! exist as a whole (a 6300 x 6300 RGB PNG holds 238 MB of 16-bit samples, 119 MB as 8-bit RGB).
//! The reduction follows Pillow's `convert("RGB")` (see the module docs of `decode`): the high
//! byte of each sample, except 16-bit gray without alpha, which is clipped to 255.

use std::io::Cursor;

use image::RgbImage;
use png::{BitDepth, ColorType, Decoder, Transformations};

use super::VisionError;

fn corrupt(e: png::DecodingError) -> VisionError {
    VisionError::CorruptImage(format!("PNG: {e}"))
}

fn decoder(bytes: &[u8]) -> Decoder<Cursor<&[u8]>> {
    let mut d = Decoder::new(Cursor::new(bytes));
    // Samples as stored: no expansion of tRNS into alpha (Pillow's RGB ignores it anyway).
    d.set_transformations(Transformations::IDENTITY);
    d.set_ignore_text_chunk(true);
    d.set_ignore_iccp_chunk(true);
    d
}

/// The size of a PNG that [`decode`] handles (16-bit, not interlaced); `None` for any other PNG.
pub(super) fn header(bytes: &[u8]) -> Result<Option<(u32, u32)>, VisionError> {
    let reader = decoder(bytes).read_info().map_err(corrupt)?;
    let info = reader.info();
    let streamable = info.bit_depth == BitDepth::Sixteen && !info.interlaced;
    Ok(streamable.then_some((info.width, info.height)))
}

/// Decodes a 16-bit, non-interlaced PNG to 8-bit RGB, one row at a time.
pub(super) fn decode(bytes: &[u8]) -> Result<RgbImage, VisionError> {
    let mut reader = decoder(bytes).read_info().map_err(corrupt)?;
    let (width, height, color) = {
        let info = reader.info();
        (info.width, info.height, info.color_type)
    };
    let channels: usize = match color {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => {
            return Err(VisionError::CorruptImage(
                "PNG: 16-bit palette images do not exist".into(),
            ))
        }
    };
    let len = u64::from(width) * u64::from(height) * 3;
    let len = usize::try_from(len)
        .map_err(|_| VisionError::CorruptImage("PNG: image does not fit in memory".into()))?;
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| VisionError::CorruptImage("PNG: image does not fit in memory".into()))?;
    while let Some(row) = reader.next_row().map_err(corrupt)? {
        // Big-endian samples; the high byte is the first of each pair.
        let samples = row.data().chunks_exact(2 * channels);
        match color {
            ColorType::Grayscale => out.extend(samples.flat_map(|s| {
                let v = u16::from_be_bytes([s[0], s[1]]).min(255) as u8;
                [v; 3]
            })),
            ColorType::GrayscaleAlpha => out.extend(samples.flat_map(|s| [s[0]; 3])),
            _ => out.extend(samples.flat_map(|s| [s[0], s[2], s[4]])),
        }
        if out.len() > len {
            return Err(VisionError::CorruptImage(
                "PNG: rows longer than the header".into(),
            ));
        }
    }
    if out.len() != len {
        return Err(VisionError::CorruptImage(
            "PNG: fewer rows than the header says".into(),
        ));
    }
    RgbImage::from_raw(width, height, out)
        .ok_or_else(|| VisionError::CorruptImage("PNG: short pixel buffer".into()))
}
