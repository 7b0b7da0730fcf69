//! Decoding a batch of requests over a [`StepModel`]: one [`RequestDecoder`] per request, the
//! model rows of finished requests dropped at once, beams reordered as their decoders ask.
//! Outputs are padded across the batch exactly as transformers 4.28 pads a batched `generate`.

use super::decoder::{RequestDecoder, Step};
use super::{DecodeIds, DecodingMode, Generated, GenerationParams, Next, StepModel};

/// Errors of a decoding run.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The model failed during a step.
    #[error("model step failed: {0}")]
    Model(#[from] super::StepError),
    /// Parameters that cannot be decoded with.
    #[error("invalid generation parameters: {0}")]
    InvalidParams(String),
}

/// Runs decoding for `batch` requests whose prefill produced `first_logits`
/// (`batch * params.rows_per_request()` rows, beams of one request adjacent).
pub fn generate(
    model: &mut impl StepModel,
    first_logits: Vec<Vec<f32>>,
    batch: usize,
    params: &GenerationParams,
    ids: DecodeIds,
) -> Result<Vec<Generated>, GenerationError> {
    let k = params.rows_per_request();
    if first_logits.len() != batch * k {
        return Err(GenerationError::InvalidParams(format!(
            "{} logit rows for {batch} requests x {k} rows",
            first_logits.len()
        )));
    }
    let mut decoders = (0..batch)
        .map(|_| RequestDecoder::new(params, ids))
        .collect::<Result<Vec<_>, _>>()
        .map_err(GenerationError::InvalidParams)?;
    let mut results: Vec<Option<Generated>> = vec![None; batch];
    // Requests still decoding, in the order of their rows in the model.
    let mut active: Vec<usize> = (0..batch).collect();
    // What the model answered for each row: logits, or the token it picked for a greedy row
    // (as the server decodes).
    let mut answers: Vec<Next> = first_logits.into_iter().map(Next::Logits).collect();
    loop {
        let mut tokens = Vec::with_capacity(active.len() * k);
        let mut rows = Vec::with_capacity(active.len() * k);
        let mut wants = Vec::with_capacity(active.len() * k);
        let mut still = Vec::with_capacity(active.len());
        let fed_rows = answers.len();
        let mut answers_left = answers.into_iter();
        for (slot, &r) in active.iter().enumerate() {
            let mine: Vec<Next> = answers_left.by_ref().take(k).collect();
            let step = decoders[r]
                .advance_next(mine)
                .map_err(|e| GenerationError::Model(e.into()))?;
            match step {
                Step::Done(g) => results[r] = Some(g),
                Step::Continue { tokens: t, reorder } => {
                    let want = decoders[r].wants();
                    for (i, tok) in t.into_iter().enumerate() {
                        let local = reorder.as_ref().map_or(i, |ro| ro[i]);
                        rows.push((slot * k + local) as u32);
                        tokens.push(tok);
                        wants.push(want.clone());
                    }
                    still.push(r);
                }
            }
        }
        if still.is_empty() {
            break;
        }
        if rows.iter().enumerate().any(|(i, &r)| r as usize != i) || rows.len() != fed_rows {
            model.select_rows(&rows)?;
        }
        answers = model.step_picking(&tokens, &wants)?;
        active = still;
    }
    let results: Vec<Generated> = results.into_iter().flatten().collect();
    Ok(pad_like_hf(results, params, ids))
}

/// Pads every `sequence` to the batch's width as transformers does: greedy / sample rows go on
/// with pad after EOS up to the longest row; beam rows get EOS after the best hypothesis, then
/// pads, up to `min(longest hypothesis + 1, max_length)`.
fn pad_like_hf(
    mut results: Vec<Generated>,
    p: &GenerationParams,
    ids: DecodeIds,
) -> Vec<Generated> {
    let width = match p.mode {
        DecodingMode::Greedy | DecodingMode::Sample => {
            results.iter().map(|g| g.sequence.len()).max().unwrap_or(1)
        }
        DecodingMode::Beam | DecodingMode::Lynx => {
            let longest = results
                .iter()
                .map(|g| g.token_ids.len() + 1)
                .max()
                .unwrap_or(1);
            (longest + 1).min(p.max_new_tokens + 1)
        }
    };
    for g in &mut results {
        if matches!(p.mode, DecodingMode::Beam | DecodingMode::Lynx) {
            g.sequence.truncate(g.token_ids.len() + 1);
            if g.sequence.len() < width {
                g.sequence.push(ids.eos);
            }
        }
        g.sequence.resize(width.max(g.sequence.len()), ids.pad);
    }
    results
}
