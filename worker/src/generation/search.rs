//! The decoding loops: greedy / sample (one row per request) and beam search / beam sampling
//! (`num_beams` adjacent rows per request), with `BeamSearchScorer` semantics of transformers
//! 4.28 (hypotheses scored `sum_logprobs / len ** length_penalty`, `early_stopping = False`).

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::processors::{
    log_softmax, min_length, no_repeat_ngram, softmax, temperature, top_k, top_p,
};
use super::{DecodeIds, DecodingMode, FinishReason, Generated, GenerationParams, StepModel};

/// Errors of a decoding run.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The model failed during a step.
    #[error("model step failed: {0}")]
    Model(#[from] candle_core::Error),
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
    if params.max_new_tokens == 0 {
        return Err(GenerationError::InvalidParams(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    let rows = batch * params.rows_per_request();
    if first_logits.len() != rows {
        return Err(GenerationError::InvalidParams(format!(
            "{} logit rows for {batch} requests x {} rows",
            first_logits.len(),
            params.rows_per_request()
        )));
    }
    match params.mode {
        DecodingMode::Greedy | DecodingMode::Sample => single(model, first_logits, params, ids),
        DecodingMode::Beam | DecodingMode::Lynx => beams(model, first_logits, batch, params, ids),
    }
}

fn apply_processors(seq: &[u32], scores: &mut [f32], p: &GenerationParams, eos: u32) {
    no_repeat_ngram(seq, p.no_repeat_ngram_size, scores);
    min_length(seq.len(), p.min_length, eos, scores);
}

fn apply_warpers(scores: &mut [f32], p: &GenerationParams, min_keep: usize) {
    temperature(p.temperature as f32, scores);
    top_k(p.top_k, min_keep, scores);
    top_p(p.top_p as f32, min_keep, scores);
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn uniform(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Draws `n` distinct indices with probability proportional to `probs` (multinomial without
/// replacement); fewer when fewer entries are non-zero.
fn draw_without_replacement(probs: &[f32], n: usize, rng: &mut ChaCha20Rng) -> Vec<usize> {
    let mut weights: Vec<f64> = probs.iter().map(|p| f64::from(p.max(0.0))).collect();
    let mut total: f64 = weights.iter().sum();
    let mut out = Vec::with_capacity(n);
    while out.len() < n && total > 0.0 {
        let target = uniform(rng) * total;
        let mut acc = 0.0;
        let mut chosen = None;
        for (i, w) in weights.iter().enumerate() {
            if *w > 0.0 {
                acc += w;
                chosen = Some(i);
                if acc > target {
                    break;
                }
            }
        }
        let Some(i) = chosen else { break };
        total -= weights[i];
        weights[i] = 0.0;
        out.push(i);
    }
    out
}

fn finish(sequence: Vec<u32>, eos: u32) -> Generated {
    let new = &sequence[1.min(sequence.len())..];
    let (token_ids, finish_reason) = match new.iter().position(|&t| t == eos) {
        Some(i) => (new[..i].to_vec(), FinishReason::Eos),
        None => (new.to_vec(), FinishReason::Length),
    };
    Generated {
        sequence,
        token_ids,
        finish_reason,
    }
}

/// Greedy and multinomial sampling (`greedy_search` / `sample`).
fn single(
    model: &mut impl StepModel,
    mut logits: Vec<Vec<f32>>,
    p: &GenerationParams,
    ids: DecodeIds,
) -> Result<Vec<Generated>, GenerationError> {
    let b = logits.len();
    let max_len = p.max_new_tokens + 1;
    let mut seqs = vec![vec![ids.bos]; b];
    let mut done = vec![false; b];
    let mut rng = ChaCha20Rng::seed_from_u64(p.seed);
    loop {
        let mut next = vec![ids.pad; b];
        for (r, row) in logits.iter_mut().enumerate() {
            apply_processors(&seqs[r], row, p, ids.eos);
            let tok = if p.mode == DecodingMode::Sample {
                apply_warpers(row, p, 1);
                let probs = softmax(row);
                draw_without_replacement(&probs, 1, &mut rng)
                    .first()
                    .map_or_else(|| argmax(row), |&i| i as u32)
            } else {
                argmax(row)
            };
            if !done[r] {
                next[r] = tok;
            }
        }
        for (r, &t) in next.iter().enumerate() {
            seqs[r].push(t);
            done[r] |= t == ids.eos;
        }
        if done.iter().all(|d| *d) || seqs[0].len() >= max_len {
            break;
        }
        logits = model.step(&next)?;
    }
    Ok(seqs.into_iter().map(|s| finish(s, ids.eos)).collect())
}

/// Finished hypotheses of one request (`BeamHypotheses`).
struct Hypotheses {
    beams: Vec<(f64, Vec<u32>, bool)>,
    worst: f64,
    size: usize,
    length_penalty: f64,
}

impl Hypotheses {
    fn new(size: usize, length_penalty: f64) -> Self {
        Self {
            beams: Vec::new(),
            worst: 1e9,
            size,
            length_penalty,
        }
    }

    fn add(&mut self, seq: Vec<u32>, sum_logprobs: f64, by_eos: bool) {
        let score = sum_logprobs / (seq.len() as f64).powf(self.length_penalty);
        if self.beams.len() < self.size || score > self.worst {
            self.beams.push((score, seq, by_eos));
            if self.beams.len() > self.size {
                let mut order: Vec<(f64, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (b.0, i))
                    .collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                self.beams.remove(order[0].1);
                self.worst = order[1].0;
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    fn is_done(&self, best_sum_logprobs: f64, cur_len: usize) -> bool {
        self.beams.len() >= self.size
            && self.worst >= best_sum_logprobs / (cur_len as f64).powf(self.length_penalty)
    }

    /// Highest score; among equal scores the one added last (Python's stable sort + pop).
    fn best(&self) -> Option<&(f64, Vec<u32>, bool)> {
        let mut best: Option<&(f64, Vec<u32>, bool)> = None;
        for b in &self.beams {
            if best.is_none_or(|x| b.0 >= x.0) {
                best = Some(b);
            }
        }
        best
    }
}

/// Top `n` of `flat` by score, descending; ties keep the lower index first.
fn top_candidates(flat: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..flat.len()).collect();
    let n = n.min(idx.len());
    let cmp = |a: &usize, b: &usize| flat[*b].total_cmp(&flat[*a]).then(a.cmp(b));
    if n < idx.len() {
        idx.select_nth_unstable_by(n, cmp);
        idx.truncate(n);
    }
    idx.sort_by(cmp);
    idx
}

/// Beam search (`beam_search`) and beam sampling (`beam_sample`).
fn beams(
    model: &mut impl StepModel,
    mut logits: Vec<Vec<f32>>,
    batch: usize,
    p: &GenerationParams,
    ids: DecodeIds,
) -> Result<Vec<Generated>, GenerationError> {
    let k = p.num_beams.max(1);
    let sampling = p.mode == DecodingMode::Lynx;
    let max_len = p.max_new_tokens + 1;
    let rows = batch * k;
    let mut seqs = vec![vec![ids.bos]; rows];
    // beam_search starts with only beam 0 alive; beam_sample starts all beams at 0.
    let mut beam_scores: Vec<f32> = (0..rows)
        .map(|r| if sampling || r % k == 0 { 0.0 } else { -1e9 })
        .collect();
    let mut hyps: Vec<Hypotheses> = (0..batch)
        .map(|_| Hypotheses::new(k, p.length_penalty))
        .collect();
    let mut done = vec![false; batch];
    let mut rng = ChaCha20Rng::seed_from_u64(p.seed);
    loop {
        let vocab = logits.first().map_or(0, Vec::len);
        let mut scores: Vec<Vec<f32>> = Vec::with_capacity(rows);
        for (r, row) in logits.iter().enumerate() {
            let mut lp = log_softmax(row);
            apply_processors(&seqs[r], &mut lp, p, ids.eos);
            lp.iter_mut().for_each(|v| *v += beam_scores[r]);
            if sampling {
                apply_warpers(&mut lp, p, 2);
            }
            scores.push(lp);
        }
        let mut next_scores = vec![0f32; rows];
        let mut next_tokens = vec![ids.pad; rows];
        let mut next_rows = vec![0u32; rows];
        let cur_len = seqs[0].len() + 1;
        for bi in 0..batch {
            if done[bi] {
                continue;
            }
            let flat: Vec<f32> = scores[bi * k..(bi + 1) * k].concat();
            let mut cand: Vec<(f32, usize)> = if sampling {
                let probs = softmax(&flat);
                let mut c: Vec<(f32, usize)> = draw_without_replacement(&probs, 2 * k, &mut rng)
                    .into_iter()
                    .map(|i| (flat[i], i))
                    .collect();
                c.sort_by(|a, b| b.0.total_cmp(&a.0));
                c
            } else {
                top_candidates(&flat, 2 * k)
                    .into_iter()
                    .map(|i| (flat[i], i))
                    .collect()
            };
            if cand.is_empty() {
                cand.push((f32::NEG_INFINITY, 0));
            }
            let mut filled = 0;
            for (rank, &(score, c)) in cand.iter().enumerate() {
                let (src, tok) = (c / vocab.max(1), (c % vocab.max(1)) as u32);
                let row = bi * k + src;
                if tok == ids.eos {
                    if rank >= k {
                        continue;
                    }
                    hyps[bi].add(seqs[row].clone(), f64::from(score), true);
                } else {
                    let slot = bi * k + filled;
                    next_scores[slot] = score;
                    next_tokens[slot] = tok;
                    next_rows[slot] = row as u32;
                    filled += 1;
                }
                if filled == k {
                    break;
                }
            }
            // Fewer candidates than beams (degenerate sampling parameters): keep the rows alive
            // with the weakest candidate so that every beam slot is defined.
            while filled < k {
                let slot = bi * k + filled;
                let from = if filled > 0 { slot - 1 } else { bi * k };
                next_scores[slot] = f32::NEG_INFINITY;
                next_tokens[slot] = if filled > 0 {
                    next_tokens[from]
                } else {
                    ids.pad
                };
                next_rows[slot] = if filled > 0 {
                    next_rows[from]
                } else {
                    (bi * k) as u32
                };
                filled += 1;
            }
            let best = cand.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
            done[bi] = done[bi] || hyps[bi].is_done(f64::from(best), cur_len);
        }
        seqs = next_rows
            .iter()
            .zip(&next_tokens)
            .map(|(&r, &t)| {
                let mut s = seqs[r as usize].clone();
                s.push(t);
                s
            })
            .collect();
        beam_scores = next_scores;
        if done.iter().all(|d| *d) || seqs[0].len() >= max_len {
            break;
        }
        model.select_rows(&next_rows)?;
        logits = model.step(&next_tokens)?;
    }
    for (bi, h) in hyps.iter_mut().enumerate() {
        if done[bi] {
            continue;
        }
        for r in bi * k..(bi + 1) * k {
            h.add(seqs[r].clone(), f64::from(beam_scores[r]), false);
        }
    }
    let best: Vec<(Vec<u32>, bool)> = hyps
        .iter()
        .map(|h| {
            h.best()
                .map_or((vec![ids.bos], false), |b| (b.1.clone(), b.2))
        })
        .collect();
    let width = (best.iter().map(|b| b.0.len()).max().unwrap_or(1) + 1).min(max_len);
    Ok(best
        .into_iter()
        .map(|(seq, by_eos)| {
            let token_ids = seq[1.min(seq.len())..].to_vec();
            let mut sequence = seq;
            if sequence.len() < width {
                sequence.push(ids.eos);
            }
            sequence.resize(width.max(sequence.len()), ids.pad);
            Generated {
                sequence,
                token_ids,
                finish_reason: if by_eos {
                    FinishReason::Eos
                } else {
                    FinishReason::Length
                },
            }
        })
        .collect())
}
