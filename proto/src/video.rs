//! The official video input format: a JSON list of base64 strings, one encoded image per frame.
//! The worker reads it from files and the OpenAI API, the `lynx` client from files; both turn it
//! into the frames of a `lynx.v1.Video` here.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// Standard-alphabet base64, at least as lenient as Python's `base64.b64decode`: ASCII whitespace
/// is removed before decoding and non-zero trailing bits are accepted; missing padding is also
/// accepted (Python would reject it).
const FRAME_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Bounds checked before anything is decoded.
#[derive(Debug, Clone, Copy)]
pub struct VideoLimits {
    /// Most frames in the list.
    pub max_frames: usize,
    /// Most bytes of one decoded frame (estimated from the base64 length, within 2 bytes).
    pub max_frame_bytes: usize,
}

impl VideoLimits {
    /// No bounds (a client reading its own files).
    pub const NONE: Self = Self {
        max_frames: usize::MAX,
        max_frame_bytes: usize::MAX,
    };
}

/// Why a video JSON was refused.
#[derive(Debug, thiserror::Error)]
pub enum VideoJsonError {
    /// Not a JSON list of strings.
    #[error("video is not a JSON list of base64 frame strings: {0}")]
    NotJson(String),
    /// The list is empty.
    #[error("video has no frames")]
    Empty,
    /// More frames than [`VideoLimits::max_frames`].
    #[error("video has {frames} frames, more than the limit max_video_frames = {limit}")]
    TooManyFrames {
        /// Frames in the list.
        frames: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame larger than [`VideoLimits::max_frame_bytes`].
    #[error(
        "video frame {frame}: image is {size} bytes, more than the limit max_image_bytes = {limit}"
    )]
    FrameTooLarge {
        /// Index of the frame.
        frame: usize,
        /// Its decoded size (estimated).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame that is not valid base64.
    #[error("video frame {frame}: invalid base64: {source}")]
    BadBase64 {
        /// Index of the frame.
        frame: usize,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
}

/// The encoded frames of a video JSON, checked against `limits` before any base64 is decoded.
pub fn frames_from_json(
    bytes: &[u8],
    limits: &VideoLimits,
) -> Result<Vec<Vec<u8>>, VideoJsonError> {
    let frames: Vec<String> =
        serde_json::from_slice(bytes).map_err(|e| VideoJsonError::NotJson(e.to_string()))?;
    if frames.is_empty() {
        return Err(VideoJsonError::Empty);
    }
    if frames.len() > limits.max_frames {
        return Err(VideoJsonError::TooManyFrames {
            frames: frames.len(),
            limit: limits.max_frames,
        });
    }
    frames
        .iter()
        .enumerate()
        .map(|(frame, s)| {
            // Decoded size (within 2 bytes), checked before allocating.
            let size = s.bytes().filter(|b| !b.is_ascii_whitespace()).count() / 4 * 3;
            if size > limits.max_frame_bytes.saturating_add(3) {
                return Err(VideoJsonError::FrameTooLarge {
                    frame,
                    size,
                    limit: limits.max_frame_bytes,
                });
            }
            let decoded = if s.bytes().any(|b| b.is_ascii_whitespace()) {
                let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                FRAME_BASE64.decode(compact)
            } else {
                FRAME_BASE64.decode(s)
            };
            decoded.map_err(|source| VideoJsonError::BadBase64 { frame, source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decodes_lenient_base64_and_checks_limits_first() {
        let json = br#"["AAEC", "AA EC\n", "AAE"]"#;
        let frames = frames_from_json(json, &VideoLimits::NONE).unwrap();
        assert_eq!(frames, vec![vec![0, 1, 2], vec![0, 1, 2], vec![0, 1]]);
        let tight = VideoLimits {
            max_frames: 2,
            max_frame_bytes: 100,
        };
        assert!(matches!(
            frames_from_json(json, &tight),
            Err(VideoJsonError::TooManyFrames {
                frames: 3,
                limit: 2
            })
        ));
        assert!(matches!(
            frames_from_json(b"[]", &VideoLimits::NONE),
            Err(VideoJsonError::Empty)
        ));
        assert!(matches!(
            frames_from_json(br#"["!!!!"]"#, &VideoLimits::NONE),
            Err(VideoJsonError::BadBase64 { frame: 0, .. })
        ));
    }
}
