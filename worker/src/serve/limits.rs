//! Input limits and the cheap half of the front door: [`check`] looks at the counts and byte
//! lengths of every field and resolves the decoding parameters, without decoding an image or
//! tokenizing the prompt, so that a request that will be refused costs microseconds. Every
//! refusal is an INVALID_ARGUMENT whose message names the limit or the field. The expensive half
//! (decoding, tokenizing) is [`super::prepare`].

use lynx_proto::v1;

use crate::config::LynxConfig;
use crate::generation::{DecodingMode, GenerationParams};
use crate::runner::RequestError;
use crate::vision;

/// Longest accepted stop string, in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 256;

/// The limits the worker enforces on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded image or video frame, in bytes.
    pub max_image_bytes: usize,
    /// Largest `width * height` of an image or frame, read from the header before decoding.
    pub max_image_pixels: u64,
    /// Images per request.
    pub max_images_per_request: usize,
    /// Frames per video (frames sent, before the model's frame sampling).
    pub max_video_frames: usize,
    /// Prompt tokens (BOS + the formatted instruction, before the model's truncation).
    pub max_prompt_tokens: usize,
    /// UTF-8 bytes of the instruction, checked before it is tokenized.
    pub max_prompt_bytes: usize,
    /// A whole request message on the wire; larger ones are refused after their 5-byte gRPC
    /// prefix, before their body is buffered (RESOURCE_EXHAUSTED).
    pub max_request_bytes: usize,
    /// `max_new_tokens` of a request (also caps the model's default).
    pub max_new_tokens: usize,
    /// Stop strings per request.
    pub max_stop_strings: usize,
}

/// Default [`Limits::max_prompt_bytes`]: 64 KiB (32 bytes per token of the default 2048).
pub const DEFAULT_MAX_PROMPT_BYTES: usize = lynx_serve_flags::DEFAULT_MAX_PROMPT_BYTES as usize;

/// Room in [`Limits::request_bytes_for`] for everything but images and the instruction.
pub const REQUEST_SLACK_BYTES: usize = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        let mut limits = Self {
            max_image_bytes: vision::decode::DEFAULT_MAX_IMAGE_BYTES,
            max_image_pixels: vision::decode::DEFAULT_MAX_PIXELS,
            max_images_per_request: 8,
            max_video_frames: vision::decode::DEFAULT_MAX_VIDEO_FRAMES,
            max_prompt_tokens: 2048,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            max_request_bytes: 0,
            max_new_tokens: 512,
            max_stop_strings: 8,
        };
        limits.max_request_bytes = limits.request_bytes_for();
        limits
    }
}

impl Limits {
    /// The message size the other limits imply: `max_images_per_request x max_image_bytes +
    /// max_prompt_bytes + max_stop_strings x 256 + 64 KiB`. A video's frames together must fit
    /// in it as well.
    pub fn request_bytes_for(&self) -> usize {
        self.max_images_per_request
            .saturating_mul(self.max_image_bytes)
            .saturating_add(self.max_prompt_bytes)
            .saturating_add(self.max_stop_strings.saturating_mul(MAX_STOP_STRING_BYTES))
            .saturating_add(REQUEST_SLACK_BYTES)
    }

    /// As advertised by `GetModelInfo`.
    pub fn to_proto(&self) -> v1::Limits {
        let u32_sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        v1::Limits {
            max_image_bytes: self.max_image_bytes as u64,
            max_image_pixels: self.max_image_pixels,
            max_images_per_request: u32_sat(self.max_images_per_request),
            max_video_frames: u32_sat(self.max_video_frames),
            max_prompt_tokens: u32_sat(self.max_prompt_tokens),
            max_new_tokens: u32_sat(self.max_new_tokens),
            max_stop_strings: u32_sat(self.max_stop_strings),
            max_prompt_bytes: self.max_prompt_bytes as u64,
            max_request_bytes: self.max_request_bytes as u64,
        }
    }
}

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::InvalidArgument(msg.into())
}

/// Checks the counts and byte sizes of the images or the video of `req`.
fn check_vision(req: &v1::GenerateRequest, limits: &Limits) -> Result<(), RequestError> {
    let image_bytes = |what: String, len: usize| {
        if len == 0 {
            return Err(invalid(format!("{what} is empty")));
        }
        if len > limits.max_image_bytes {
            return Err(invalid(format!(
                "{what} is {len} bytes, more than max_image_bytes = {}",
                limits.max_image_bytes
            )));
        }
        Ok(())
    };
    if let Some(video) = &req.video {
        if !req.images.is_empty() {
            return Err(invalid("a request carries images or a video, not both"));
        }
        let n = video.frames.len();
        if n == 0 {
            return Err(invalid("video has no frames"));
        }
        if n > limits.max_video_frames {
            return Err(invalid(format!(
                "video has {n} frames, more than max_video_frames = {}",
                limits.max_video_frames
            )));
        }
        for (i, f) in video.frames.iter().enumerate() {
            image_bytes(format!("video frame {i}"), f.len())?;
        }
        return Ok(());
    }
    if req.images.len() > limits.max_images_per_request {
        return Err(invalid(format!(
            "request has {} images, more than max_images_per_request = {}",
            req.images.len(),
            limits.max_images_per_request
        )));
    }
    for (i, img) in req.images.iter().enumerate() {
        image_bytes(format!("image {i}"), img.data.len())?;
    }
    Ok(())
}

/// Resolved decoding parameters and stop strings of `req`.
fn decoding(
    p: Option<&v1::DecodingParameters>,
    config: &LynxConfig,
    limits: &Limits,
) -> Result<(GenerationParams, Vec<String>), RequestError> {
    let default = v1::DecodingParameters::default();
    let p = p.unwrap_or(&default);
    let mode = match v1::DecodingMode::try_from(p.mode) {
        Ok(v1::DecodingMode::Greedy) => DecodingMode::Greedy,
        Ok(v1::DecodingMode::Beam) => DecodingMode::Beam,
        Ok(v1::DecodingMode::Sample) => DecodingMode::Sample,
        Ok(v1::DecodingMode::Lynx | v1::DecodingMode::Unspecified) => DecodingMode::Lynx,
        Err(_) => return Err(invalid(format!("unknown decoding mode {}", p.mode))),
    };
    let mut g = GenerationParams::from_defaults(&config.generation, mode);
    g.max_new_tokens = match p.max_new_tokens {
        Some(n) if n as usize > limits.max_new_tokens => {
            return Err(invalid(format!(
                "max_new_tokens {n} is more than the limit max_new_tokens = {}",
                limits.max_new_tokens
            )))
        }
        Some(n) => n as usize,
        None => g.max_new_tokens.min(limits.max_new_tokens),
    };
    if let Some(b) = p.num_beams {
        if matches!(mode, DecodingMode::Beam | DecodingMode::Lynx) {
            g.num_beams = b as usize;
        }
    }
    if let Some(t) = p.temperature {
        g.temperature = f64::from(t);
    }
    if let Some(k) = p.top_k {
        g.top_k = k as usize;
    }
    if let Some(tp) = p.top_p {
        g.top_p = f64::from(tp);
    }
    g.seed = p.seed.unwrap_or(0);
    g.validate().map_err(invalid)?;
    if p.stop.len() > limits.max_stop_strings {
        return Err(invalid(format!(
            "request has {} stop strings, more than max_stop_strings = {}",
            p.stop.len(),
            limits.max_stop_strings
        )));
    }
    for s in &p.stop {
        if s.is_empty() {
            return Err(invalid("stop strings must not be empty"));
        }
        if s.len() > MAX_STOP_STRING_BYTES {
            return Err(invalid(format!(
                "a stop string is {} bytes, more than {MAX_STOP_STRING_BYTES}",
                s.len()
            )));
        }
    }
    Ok((g, p.stop.clone()))
}

/// The scheduling priority of `req` (higher first).
fn priority(p: i32) -> Result<u8, RequestError> {
    match v1::Priority::try_from(p) {
        Ok(v1::Priority::Low) => Ok(1),
        Ok(v1::Priority::Normal | v1::Priority::Unspecified) => Ok(2),
        Ok(v1::Priority::High) => Ok(3),
        Err(_) => Err(invalid(format!("unknown priority {p}"))),
    }
}

/// What [`check`] resolved: everything about a request but its pixels and tokens.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Decoding parameters.
    pub params: GenerationParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Scheduling priority, higher first.
    pub priority: u8,
}

/// The cheap checks of the front door, in order: an empty request, the vision counts and byte
/// sizes, the instruction's byte length, the priority, the decoding parameters and stop
/// strings. No image is decoded and nothing is tokenized.
pub fn check(
    req: &v1::GenerateRequest,
    config: &LynxConfig,
    limits: &Limits,
) -> Result<Checked, RequestError> {
    if req.images.is_empty() && req.video.is_none() && req.instruction.trim().is_empty() {
        return Err(invalid(
            "empty request: no image, no video and no instruction",
        ));
    }
    check_vision(req, limits)?;
    if req.instruction.len() > limits.max_prompt_bytes {
        return Err(invalid(format!(
            "instruction is {} bytes, more than max_prompt_bytes = {}",
            req.instruction.len(),
            limits.max_prompt_bytes
        )));
    }
    let priority = priority(req.priority)?;
    let (params, stop) = decoding(req.parameters.as_ref(), config, limits)?;
    Ok(Checked {
        params,
        stop,
        priority,
    })
}
