//! The oracle's one-batch pipeline: vision encoding, prompt assembly with left padding, prefill,
//! decoding and text decoding of one batch of requests on the candle model, as the official code
//! runs them. The stage-by-stage fixture tests call it; no serving path does.

use std::time::Instant;

use candle_core::{Device, Tensor};

use super::{LoadedModel, Lynx, Prefill, VisionBatch};
use crate::generation::{
    generate, DecodeIds, Generated, GenerationError, GenerationParams, StepError, StepModel,
};
use crate::prompt::{left_pad, prompt_token_ids};
use crate::tokenizer::{python_strip, TokenizerError};

/// The candle model's prefill of `prompts` (left-padded with `pad`) after the `vision` prefix
/// of the same rows (`None`: text only), on the model's device.
pub fn padded_prefill(
    model: &Lynx,
    vision: Option<&Tensor>,
    prompts: &[Vec<u32>],
    pad: u32,
) -> candle_core::Result<Prefill> {
    let padded = left_pad(prompts, pad);
    let shape = (padded.batch, padded.width);
    let ids = Tensor::from_vec(padded.ids, shape, model.device())?;
    let atts = Tensor::from_vec(padded.mask, shape, model.device())?;
    model.prefill_inputs(vision, &ids, &atts)
}

/// Vision part of a request, already preprocessed into normalised CHW pixels.
#[derive(Debug, Clone)]
pub enum VisionInput {
    /// Text only.
    None,
    /// One image: `3 * R * R` values.
    Image(Vec<f32>),
    /// One video: exactly the configured number of frames, `3 * R * R` values each.
    Video(Vec<Vec<f32>>),
}

/// One request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Vision input.
    pub vision: VisionInput,
    /// The question put into the prompt template.
    pub question: String,
}

/// One result.
#[derive(Debug, Clone)]
pub struct GenerateResult {
    /// The prompt as tokenized (BOS included, after truncation).
    pub prompt_token_ids: Vec<u32>,
    /// Decoding output.
    pub generated: Generated,
    /// `decode(token_ids, skip_special_tokens)`, stripped, as the official `generate.py`.
    pub text: String,
}

/// Wall-clock time per stage of a batch, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Vision encoder + resampler.
    pub vision_ms: f64,
    /// LLM prefill.
    pub prefill_ms: f64,
    /// Decoding steps.
    pub decode_ms: f64,
}

/// Errors of a batch run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The request cannot be run as given.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A tensor operation failed.
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    /// Decoding failed.
    #[error(transparent)]
    Generation(#[from] GenerationError),
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Stacks the batch's vision inputs into one tensor (all requests must be of the same kind).
fn vision_batch(
    m: &LoadedModel,
    reqs: &[GenerateRequest],
) -> Result<Option<VisionBatch>, PipelineError> {
    let res = m.config.vision.image_res as usize;
    let per_image = 3 * res * res;
    let frames = m.config.num_frames;
    let check = |px: &Vec<f32>| {
        if px.len() == per_image {
            Ok(())
        } else {
            Err(PipelineError::InvalidRequest(format!(
                "image has {} values, the model takes 3x{res}x{res}",
                px.len()
            )))
        }
    };
    match &reqs[0].vision {
        VisionInput::None => {
            if reqs.iter().all(|r| matches!(r.vision, VisionInput::None)) {
                Ok(None)
            } else {
                Err(PipelineError::InvalidRequest(
                    "a batch mixes text-only and vision requests".into(),
                ))
            }
        }
        VisionInput::Image(_) => {
            let mut data = Vec::with_capacity(reqs.len() * per_image);
            for r in reqs {
                let VisionInput::Image(px) = &r.vision else {
                    return Err(PipelineError::InvalidRequest(
                        "a batch mixes images with other inputs".into(),
                    ));
                };
                check(px)?;
                data.extend_from_slice(px);
            }
            let t = Tensor::from_vec(data, (reqs.len(), 3, res, res), &Device::Cpu)?;
            Ok(Some(VisionBatch::Images(t)))
        }
        VisionInput::Video(_) => {
            let mut data = Vec::with_capacity(reqs.len() * frames * per_image);
            for r in reqs {
                let VisionInput::Video(fs) = &r.vision else {
                    return Err(PipelineError::InvalidRequest(
                        "a batch mixes videos with other inputs".into(),
                    ));
                };
                if fs.len() != frames {
                    return Err(PipelineError::InvalidRequest(format!(
                        "video has {} frames, the model takes exactly {frames}",
                        fs.len()
                    )));
                }
                for f in fs {
                    check(f)?;
                    data.extend_from_slice(f);
                }
            }
            let t = Tensor::from_vec(data, (reqs.len(), frames, 3, res, res), &Device::Cpu)?;
            Ok(Some(VisionBatch::Videos(t)))
        }
    }
}

/// Tokenizes the requests' prompts, left-pads them and assembles the prefill after the vision
/// prefix (the bridge output of the same requests, or `None` for text only). Returns the prefill
/// and each request's prompt ids.
pub fn prefill_inputs(
    m: &LoadedModel,
    vision: Option<&Tensor>,
    reqs: &[GenerateRequest],
) -> Result<(Prefill, Vec<Vec<u32>>), PipelineError> {
    let prompts = reqs
        .iter()
        .map(|r| prompt_token_ids(&m.tokenizer, &m.config, &r.question))
        .collect::<Result<Vec<_>, _>>()?;
    let prefill = padded_prefill(&m.model, vision, &prompts, m.config.tokens.pad)?;
    Ok((prefill, prompts))
}

/// Encodes the requests' vision inputs (`None` when the batch is text only).
pub fn encode_vision(
    m: &LoadedModel,
    reqs: &[GenerateRequest],
) -> Result<Option<Tensor>, PipelineError> {
    Ok(vision_batch(m, reqs)?
        .map(|v| m.model.encode_vision(&v))
        .transpose()?)
}

/// Runs `reqs` as one batch with `params`.
pub fn run_batch(
    m: &LoadedModel,
    reqs: &[GenerateRequest],
    params: &GenerationParams,
) -> Result<(Vec<GenerateResult>, Timings), PipelineError> {
    if reqs.is_empty() {
        return Err(PipelineError::InvalidRequest("empty batch".into()));
    }
    let mut timings = Timings::default();
    let t0 = Instant::now();
    let vision = encode_vision(m, reqs)?;
    timings.vision_ms = ms(t0);

    let (prefill, prompts) = prefill_inputs(m, vision.as_ref(), reqs)?;

    let t1 = Instant::now();
    let (mut session, first) = m.model.start_session(&prefill, params.rows_per_request())?;
    timings.prefill_ms = ms(t1);

    let t2 = Instant::now();
    let special = DecodeIds {
        bos: m.config.tokens.bos,
        eos: m.config.tokens.eos,
        pad: m.config.tokens.pad,
    };
    let generated = generate(&mut session, first, reqs.len(), params, special)?;
    timings.decode_ms = ms(t2);

    let results = prompts
        .into_iter()
        .zip(generated)
        .map(|(prompt_token_ids, generated)| {
            let text = python_strip(&m.tokenizer.decode(&generated.token_ids, true)).to_owned();
            GenerateResult {
                prompt_token_ids,
                generated,
                text,
            }
        })
        .collect();
    Ok((results, timings))
}

/// The candle model's decoding session, for decoding (the CPU path of one batch).
impl StepModel for super::LlmSession<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, StepError> {
        Ok(super::LlmSession::step(self, tokens)?)
    }

    fn select_rows(&mut self, rows: &[u32]) -> Result<(), StepError> {
        Ok(super::LlmSession::select_rows(self, rows)?)
    }
}
