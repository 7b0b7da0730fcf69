//! Fuzz targets: the worker's untrusted-input surfaces as pure functions of a byte string.
//!
//! Each target takes any bytes, runs them through the real worker code with small limits (so one
//! execution takes milliseconds) and returns nothing. None may panic, hang or allocate without a
//! bound on any input; the few assertions below check invariants of the worker's results, so a
//! failing one is a worker bug too. The AFL harnesses in `fuzz/` call them (see
//! `fuzz/README.md`), and `tests/fuzz_corpus.rs` replays the seed corpus and every recorded
//! regression through them without AFL.
//!
//! | target | input | worker code |
//! |---|---|---|
//! | [`image()`] | an encoded image, any format | [`vision::decode_image`], [`vision::preprocess()`] |
//! | [`video`] | a video JSON (list of base64 frames) | [`vision::load_video_frames`] |
//! | [`tokenizer_decode`] | little-endian `u32` token ids; the same bytes as text | [`LynxTokenizer::decode`], [`LynxTokenizer::encode`] |
//! | [`request`] | a protobuf `lynx.v1.GenerateRequest` | [`crate::serve::limits::check`], then [`Preparer::prepare_here`] (decoding, preprocessing, tokenizing) |
//!
//! The tokenizer and the served model are built once per process ([`init`]); an AFL harness
//! calls [`init`] before its fork server starts so that every forked child inherits them.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prost::Message as _;

use crate::backend::ServedModel;
use crate::cli::device::load_cpu;
use crate::cli::{EmbeddedArg, ModelArgs};
use crate::embedded::{ensure_preset, toy_tokenizer, Preset};
use crate::metrics::Metrics;
use crate::runner::Pixels;
use crate::serve::limits::Limits;
use crate::serve::prepare::{Delivery, PrepareConfig, Preparer};
use crate::tokenizer::LynxTokenizer;
use crate::vision::{self, PreprocessConfig, VisionLimits, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};

/// Limits of the [`image()`] target: 1 MiB encoded, 1 Mpx.
pub const IMAGE_LIMITS: VisionLimits = VisionLimits {
    max_image_bytes: 1 << 20,
    max_pixels: 1 << 20,
    max_video_frames: 16,
};

/// Limits of the [`video`] target: 16 frames of at most 64 KiB and 256 Kpx each (5 of them are
/// decoded).
pub const VIDEO_LIMITS: VisionLimits = VisionLimits {
    max_image_bytes: 64 << 10,
    max_pixels: 1 << 18,
    max_video_frames: 16,
};

/// Preprocessing of the [`image()`] and [`video`] targets: 32 x 32 with the CLIP statistics.
pub const PREPROCESS: PreprocessConfig = PreprocessConfig {
    image_res: 32,
    mean: OPENAI_CLIP_MEAN,
    std: OPENAI_CLIP_STD,
};

/// Most token ids [`tokenizer_decode`] decodes (4 KiB of input).
pub const MAX_DECODE_IDS: usize = 1024;

/// Most input bytes [`tokenizer_decode`] encodes as text.
pub const MAX_ENCODE_BYTES: usize = 4096;

/// Limits of the [`request`] target: 2 images of 64 KiB, 1 Mpx, 8 video frames, 256 prompt
/// tokens; the rest are the worker's defaults.
pub fn request_limits() -> Limits {
    Limits {
        max_image_bytes: 64 << 10,
        max_image_pixels: 1 << 20,
        max_images_per_request: 2,
        max_video_frames: 8,
        max_prompt_tokens: 256,
        ..Limits::default()
    }
}

/// Decoding memory budget of the [`request`] target: 64 MiB.
pub const REQUEST_PREPARE_MEMORY: u64 = 64 << 20;

/// The toy tokenizer of the embedded models, built once.
fn tokenizer() -> Result<&'static LynxTokenizer, String> {
    static TOKENIZER: OnceLock<Result<LynxTokenizer, String>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| toy_tokenizer().map_err(|e| format!("toy tokenizer: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// The embedded tiny model (generated under `$LYNX_CACHE_DIR` when absent), loaded once, and
/// the [`request`] target's preparer.
fn served_model() -> Result<&'static (Arc<ServedModel>, Preparer), String> {
    static MODEL: OnceLock<Result<(Arc<ServedModel>, Preparer), String>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = ensure_preset(Preset::Tiny).map_err(|e| format!("tiny model: {e}"))?;
            let args = ModelArgs {
                model: Some(dir.clone()),
                config: None,
                embedded: EmbeddedArg::Tiny,
            };
            let served = load_cpu(&args, 64, 16)
                .map_err(|e| format!("tiny model {}: {e}", dir.display()))?;
            let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
            let preparer = Preparer::new(
                PrepareConfig {
                    threads: 1,
                    memory_bytes: REQUEST_PREPARE_MEMORY,
                    max_incoming: 1,
                },
                metrics,
            );
            Ok((Arc::new(served.model), preparer))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Builds what the targets share (the toy tokenizer and the embedded tiny model). The targets
/// call it themselves; a harness calls it first to fail fast and to build them only once.
pub fn init() -> Result<(), String> {
    tokenizer()?;
    served_model()?;
    Ok(())
}

/// Like [`init`], but a failure is a panic: a target without its tokenizer or model would test
/// nothing, so it must not pass silently.
fn shared<T: ?Sized>(r: Result<&'static T, String>) -> &'static T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("fuzz target setup failed: {e}"),
    }
}

/// Checks a preprocessed image: `3 x res x res` finite values.
fn check_pixels(values: &[f32]) {
    assert_eq!(values.len(), PREPROCESS.output_len(), "preprocessed length");
    assert!(
        values.iter().all(|v| v.is_finite()),
        "non-finite pixel value"
    );
}

/// Image target: sniff, decode ([`IMAGE_LIMITS`]) and preprocess ([`PREPROCESS`]) one encoded
/// image. A decoded image must respect the pixel limit.
pub fn image(data: &[u8]) {
    if let Ok(img) = vision::decode_image(data, &IMAGE_LIMITS) {
        let pixels = u64::from(img.width()) * u64::from(img.height());
        assert!(
            pixels > 0 && pixels <= IMAGE_LIMITS.max_pixels,
            "decoded size"
        );
        check_pixels(&vision::preprocess(&img, &PREPROCESS));
    }
}

/// Video target: parse a video JSON, sample [`vision::LYNX_NUM_FRAMES`] frames, decode and
/// preprocess them ([`VIDEO_LIMITS`], [`PREPROCESS`]).
pub fn video(data: &[u8]) {
    let frames =
        vision::load_video_frames(data, &VIDEO_LIMITS, &PREPROCESS, vision::LYNX_NUM_FRAMES);
    if let Ok(frames) = frames {
        assert_eq!(frames.len(), vision::LYNX_NUM_FRAMES, "sampled frames");
        frames.iter().for_each(|f| check_pixels(f));
    }
}

/// Tokenizer target, on the toy tokenizer of the embedded models.
///
/// Decode: the bytes after the first are little-endian `u32` token ids (at most
/// [`MAX_DECODE_IDS`]); bit 0 of the first byte is `skip_special_tokens`, and unless bit 1 is
/// set the ids are reduced modulo the vocabulary size + 8 (so most are in the vocabulary and a
/// few just past it). Encode: the first [`MAX_ENCODE_BYTES`] bytes as lossy UTF-8 text; every id
/// must be in the vocabulary.
pub fn tokenizer_decode(data: &[u8]) {
    let tok = shared(tokenizer());
    let vocab = u32::try_from(tok.len()).unwrap_or(u32::MAX);
    if let Some((&flags, rest)) = data.split_first() {
        let ids: Vec<u32> = rest
            .chunks_exact(4)
            .take(MAX_DECODE_IDS)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .map(|id| {
                if flags & 2 == 0 {
                    id % vocab.saturating_add(8)
                } else {
                    id
                }
            })
            .collect();
        let _text = tok.decode(&ids, flags & 1 == 1);
    }
    let text = String::from_utf8_lossy(&data[..data.len().min(MAX_ENCODE_BYTES)]);
    if let Ok(ids) = tok.encode(&text) {
        assert!(ids.iter().all(|&id| id < vocab), "encoded id out of range");
    }
}

/// Request target: a protobuf `lynx.v1.GenerateRequest` through the worker's front door for the
/// embedded tiny model: checked against [`request_limits`], then, if it passes, prepared
/// (decoded, preprocessed, tokenized) within [`REQUEST_PREPARE_MEMORY`]. Bytes that are not a
/// valid message are skipped, as the gRPC layer refuses them before any worker code runs. A
/// prepared job must hold the prompt within the limits and one pixel array of the model's
/// resolution per image (the model's frame count for a video).
pub fn request(data: &[u8]) {
    let (model, preparer) = shared(served_model());
    let Ok(req) = lynx_proto::v1::GenerateRequest::decode(data) else {
        return;
    };
    let limits = request_limits();
    let Ok(checked) = crate::serve::limits::check(&req, &model.config, &limits) else {
        return;
    };
    let (events, _answers) = tokio::sync::mpsc::channel(1);
    let delivery = Delivery {
        stream: false,
        received: Instant::now(),
        deadline: None,
        events,
    };
    let Ok(job) = preparer.prepare_here(&req, checked, model, &limits, delivery) else {
        return;
    };
    let prompt = job.prompt_ids.len();
    assert!(
        prompt > 0 && prompt <= limits.max_prompt_tokens,
        "prompt length {prompt}"
    );
    let res = model.config.vision.image_res as usize;
    let one = 3 * res * res;
    let wanted = if req.video.is_some() {
        1
    } else {
        req.images.len()
    };
    assert_eq!(job.vision.len(), wanted, "vision items");
    for item in &job.vision {
        match &item.pixels {
            Pixels::Image(p) => assert_eq!(p.len(), one, "image pixels"),
            Pixels::Video(frames) => {
                assert_eq!(frames.len(), model.config.num_frames, "video frames");
                assert!(frames.iter().all(|f| f.len() == one), "frame pixels");
            }
        }
    }
}
