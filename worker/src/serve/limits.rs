//! Input limits and the validation of a `lynx.v1.GenerateRequest` into a [`Job`]: decoding and
//! preprocessing of the images / frames, prompt tokenization, decoding parameters. Blocking CPU
//! work: handlers run it on the blocking pool. Every refusal is an INVALID_ARGUMENT whose message
//! names the limit or the field.

use std::time::Instant;

use lynx_proto::v1;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::generation::{DecodingMode, GenerationParams};
use crate::runner::{ContentKey, Event, Job, Pixels, RequestError, VisionItem};
use crate::served::ServedModel;
use crate::vision::{self, PreprocessConfig, VisionError, VisionLimits};

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
    /// `max_new_tokens` of a request (also caps the model's default).
    pub max_new_tokens: usize,
    /// Stop strings per request.
    pub max_stop_strings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_image_bytes: vision::decode::DEFAULT_MAX_IMAGE_BYTES,
            max_image_pixels: vision::decode::DEFAULT_MAX_PIXELS,
            max_images_per_request: 8,
            max_video_frames: vision::decode::DEFAULT_MAX_VIDEO_FRAMES,
            max_prompt_tokens: 2048,
            max_new_tokens: 512,
            max_stop_strings: 8,
        }
    }
}

impl Limits {
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
        }
    }
}

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::InvalidArgument(msg.into())
}

fn content_key(chunks: &[&[u8]]) -> ContentKey {
    let mut h = Sha256::new();
    for c in chunks {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c);
    }
    h.finalize().into()
}

/// Decodes and preprocesses one image or frame, checking the byte and pixel limits first.
fn pixels(
    what: &str,
    bytes: &[u8],
    limits: &Limits,
    pre: &PreprocessConfig,
) -> Result<Vec<f32>, RequestError> {
    if bytes.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if bytes.len() > limits.max_image_bytes {
        return Err(invalid(format!(
            "{what} is {} bytes, more than max_image_bytes = {}",
            bytes.len(),
            limits.max_image_bytes
        )));
    }
    let vl = VisionLimits {
        max_image_bytes: limits.max_image_bytes,
        max_pixels: limits.max_image_pixels,
        max_video_frames: limits.max_video_frames,
    };
    match vision::decode_image(bytes, &vl) {
        Ok(img) => Ok(vision::preprocess(&img, pre)),
        Err(e) => Err(invalid(match e.root() {
            VisionError::TooManyPixels {
                width,
                height,
                limit,
            } => format!("{what} is {width}x{height} pixels, more than max_image_pixels = {limit}"),
            _ => format!("{what} cannot be decoded: {e}"),
        })),
    }
}

/// The vision inputs of `req`.
fn vision_items(
    req: &v1::GenerateRequest,
    m: &ServedModel,
    limits: &Limits,
) -> Result<Vec<VisionItem>, RequestError> {
    let pre = PreprocessConfig {
        image_res: m.config.vision.image_res,
        mean: m.config.image_norm.mean,
        std: m.config.image_norm.std,
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
        if let Some((i, f)) = video
            .frames
            .iter()
            .enumerate()
            .find(|(_, f)| f.len() > limits.max_image_bytes)
        {
            return Err(invalid(format!(
                "video frame {i} is {} bytes, more than max_image_bytes = {}",
                f.len(),
                limits.max_image_bytes
            )));
        }
        let ids = vision::sample_frame_ids(n, m.config.num_frames);
        let mut frames = Vec::with_capacity(ids.len());
        let mut chosen: Vec<&[u8]> = Vec::with_capacity(ids.len());
        for i in ids {
            let bytes = &video.frames[i];
            frames.push(pixels(&format!("video frame {i}"), bytes, limits, &pre)?);
            chosen.push(bytes);
        }
        return Ok(vec![VisionItem {
            key: content_key(&chosen),
            pixels: Pixels::Video(frames),
        }]);
    }
    if req.images.len() > limits.max_images_per_request {
        return Err(invalid(format!(
            "request has {} images, more than max_images_per_request = {}",
            req.images.len(),
            limits.max_images_per_request
        )));
    }
    req.images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            Ok(VisionItem {
                pixels: Pixels::Image(pixels(&format!("image {i}"), &img.data, limits, &pre)?),
                key: content_key(&[&img.data]),
            })
        })
        .collect()
}

/// Resolved decoding parameters and stop strings of `req`.
fn decoding(
    p: Option<&v1::DecodingParameters>,
    m: &ServedModel,
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
    let mut g = GenerationParams::from_defaults(&m.config.generation, mode);
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

/// Where a validated request's answer goes, and its timing.
#[derive(Debug)]
pub struct Delivery {
    /// Whether deltas are wanted.
    pub stream: bool,
    /// Arrival.
    pub received: Instant,
    /// The client's deadline.
    pub deadline: Option<Instant>,
    /// The request's event channel.
    pub events: mpsc::Sender<Event>,
}

/// Validates `req` against `limits` and prepares it for the model.
pub fn prepare(
    req: &v1::GenerateRequest,
    m: &ServedModel,
    limits: &Limits,
    delivery: Delivery,
) -> Result<Job, RequestError> {
    if req.images.is_empty() && req.video.is_none() && req.instruction.trim().is_empty() {
        return Err(invalid(
            "empty request: no image, no video and no instruction",
        ));
    }
    let priority = priority(req.priority)?;
    let (params, stop) = decoding(req.parameters.as_ref(), m, limits)?;
    let text = m.config.format_prompt(&req.instruction);
    let tokens = m
        .tokenizer
        .encode(&text)
        .map_err(|e| invalid(format!("instruction cannot be tokenized: {e}")))?;
    let prompt_tokens = tokens.len() + 1;
    if prompt_tokens > limits.max_prompt_tokens {
        return Err(invalid(format!(
            "prompt has {prompt_tokens} tokens, more than max_prompt_tokens = {}",
            limits.max_prompt_tokens
        )));
    }
    // As the official code: BOS + tokens, the last `max_input_tokens` kept.
    let mut prompt_ids = Vec::with_capacity(prompt_tokens);
    prompt_ids.push(m.config.tokens.bos);
    prompt_ids.extend(tokens);
    let keep = m.config.prompt.max_input_tokens;
    if prompt_ids.len() > keep {
        prompt_ids.drain(..prompt_ids.len() - keep);
    }
    let vision = vision_items(req, m, limits)?;
    Ok(Job {
        prompt_ids,
        vision,
        params,
        stop,
        stream: delivery.stream,
        wait_for_batch: true,
        priority,
        deadline: delivery.deadline,
        received: delivery.received,
        events: delivery.events,
    })
}
