//! Per-request decoding as a resumable state machine: feed it the logits of its rows, it answers
//! with the tokens to feed next (and how its beams were reordered) or with the finished result.
//! Requests therefore decode independently of each other, which is what continuous batching needs,
//! and a request's result never depends on its batch.
//!
//! Semantics are those of transformers 4.28 (`greedy_search`, `sample`, `beam_search`,
//! `beam_sample` with `BeamSearchScorer`, `early_stopping = False`).

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::processors::{
    log_softmax, min_length, ngram_bans, no_repeat_ngram, softmax, temperature, top_k, top_p,
};
use super::{DecodeIds, DecodingMode, FinishReason, Generated, GenerationParams, Next, Want};

/// What a decoder wants after one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Feed `tokens` (one per row) next. When `reorder` is set, new row `i` continues old row
    /// `reorder[i]` of this request (beam search): reorder the KV cache before feeding.
    Continue {
        /// Next token per row.
        tokens: Vec<u32>,
        /// Row reordering, local to the request.
        reorder: Option<Vec<usize>>,
    },
    /// Decoding is over.
    Done(Generated),
}

/// The decoding state of one request.
#[derive(Debug)]
pub struct RequestDecoder {
    p: GenerationParams,
    ids: DecodeIds,
    rows: usize,
    seqs: Vec<Vec<u32>>,
    beam_scores: Vec<f32>,
    hyps: Hypotheses,
    rng: ChaCha20Rng,
}

impl RequestDecoder {
    /// A decoder for `p` (validated).
    pub fn new(p: &GenerationParams, ids: DecodeIds) -> Result<Self, String> {
        p.validate()?;
        let rows = p.rows_per_request();
        let sampling = p.mode == DecodingMode::Lynx;
        Ok(Self {
            rows,
            seqs: vec![vec![ids.bos]; rows],
            // beam_search starts with only beam 0 alive; beam_sample starts all beams at 0.
            beam_scores: (0..rows)
                .map(|r| if sampling || r == 0 { 0.0 } else { -1e9 })
                .collect(),
            hyps: Hypotheses::new(rows, p.length_penalty),
            rng: ChaCha20Rng::seed_from_u64(p.seed),
            p: p.clone(),
            ids,
        })
    }

    /// Model rows this request occupies.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Tokens generated so far (the first row's, BOS placeholder excluded).
    pub fn generated(&self) -> &[u32] {
        &self.seqs[0][1..]
    }

    /// Consumes the next-token logits of this request's rows (modified in place).
    pub fn advance(&mut self, logits: &mut [Vec<f32>]) -> Step {
        match self.p.mode {
            DecodingMode::Greedy | DecodingMode::Sample => self.advance_single(&mut logits[0]),
            DecodingMode::Beam | DecodingMode::Lynx => self.advance_beams(logits),
        }
    }

    /// What the next step must answer for this request's rows: greedy requests need only the
    /// argmax once their bans (n-gram, min length) are applied, which the model may pick where
    /// the logits are and hand to [`Self::advance_picked`]; every other mode needs the logits.
    pub fn wants(&self) -> Want {
        if self.p.mode != DecodingMode::Greedy || self.rows != 1 {
            return Want::Logits;
        }
        let seq = &self.seqs[0];
        let mut banned = ngram_bans(seq, self.p.no_repeat_ngram_size);
        if seq.len() < self.p.min_length {
            banned.push(self.ids.eos);
        }
        Want::Argmax { banned }
    }

    /// Consumes the token the model picked as [`Self::wants`] asked; `None` for a request that
    /// needs its logits.
    pub fn advance_picked(&mut self, token: u32) -> Option<Step> {
        (self.p.mode == DecodingMode::Greedy && self.rows == 1).then(|| self.push_single(token))
    }

    /// Consumes what the model answered for this request's rows as [`Self::wants`] asked: the
    /// token it picked for a greedy row, or the logits. An answer of the wrong shape (a model bug)
    /// is an error, never a panic.
    pub fn advance_next(&mut self, rows: Vec<Next>) -> Result<Step, String> {
        if rows.len() != self.rows {
            return Err(format!(
                "the model answered {} rows for a request of {}",
                rows.len(),
                self.rows
            ));
        }
        if let [Next::Token(t)] = rows[..] {
            return self.advance_picked(t).ok_or_else(|| {
                "the model picked a token for a request that needs its logits".into()
            });
        }
        let mut logits = rows
            .into_iter()
            .map(|r| match r {
                Next::Logits(l) => Ok(l),
                Next::Token(_) => Err("the model picked a token for a beam row".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.advance(&mut logits))
    }

    fn advance_single(&mut self, row: &mut [f32]) -> Step {
        apply_processors(&self.seqs[0], row, &self.p, self.ids.eos);
        let tok = if self.p.mode == DecodingMode::Sample {
            apply_warpers(row, &self.p, 1);
            let probs = softmax(row);
            draw_without_replacement(&probs, 1, &mut self.rng)
                .first()
                .map_or_else(|| argmax(row), |&i| i as u32)
        } else {
            argmax(row)
        };
        self.push_single(tok)
    }

    fn push_single(&mut self, tok: u32) -> Step {
        let seq = &mut self.seqs[0];
        seq.push(tok);
        if tok == self.ids.eos || seq.len() > self.p.max_new_tokens {
            Step::Done(finish(seq.clone(), self.ids.eos))
        } else {
            Step::Continue {
                tokens: vec![tok],
                reorder: None,
            }
        }
    }

    fn advance_beams(&mut self, logits: &mut [Vec<f32>]) -> Step {
        let k = self.rows;
        let sampling = self.p.mode == DecodingMode::Lynx;
        let vocab = logits.first().map_or(1, Vec::len).max(1);
        let mut flat = Vec::with_capacity(k * vocab);
        for (r, row) in logits.iter().enumerate() {
            let mut lp = log_softmax(row);
            apply_processors(&self.seqs[r], &mut lp, &self.p, self.ids.eos);
            lp.iter_mut().for_each(|v| *v += self.beam_scores[r]);
            if sampling {
                apply_warpers(&mut lp, &self.p, 2);
            }
            flat.extend(lp);
        }
        let mut cand: Vec<(f32, usize)> = if sampling {
            let probs = softmax(&flat);
            let mut c: Vec<(f32, usize)> = draw_without_replacement(&probs, 2 * k, &mut self.rng)
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
        let mut next: Vec<(f32, u32, usize)> = Vec::with_capacity(k);
        for (rank, &(score, c)) in cand.iter().enumerate() {
            let (src, tok) = (c / vocab, (c % vocab) as u32);
            if tok == self.ids.eos {
                if rank < k {
                    self.hyps
                        .add(self.seqs[src].clone(), f64::from(score), true);
                }
            } else {
                next.push((score, tok, src));
            }
            if next.len() == k {
                break;
            }
        }
        // Fewer candidates than beams (degenerate sampling parameters): repeat the weakest one
        // with a -inf score so that every beam is defined.
        while next.len() < k {
            let last = next
                .last()
                .map_or((f32::NEG_INFINITY, self.ids.pad, 0), |n| {
                    (f32::NEG_INFINITY, n.1, n.2)
                });
            next.push(last);
        }
        let best = cand.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
        let cur_len = self.seqs[0].len() + 1;
        let done = self.hyps.is_done(f64::from(best), cur_len);
        self.seqs = next
            .iter()
            .map(|&(_, tok, src)| {
                let mut s = self.seqs[src].clone();
                s.push(tok);
                s
            })
            .collect();
        self.beam_scores = next.iter().map(|n| n.0).collect();
        let max_len = self.p.max_new_tokens + 1;
        if done || self.seqs[0].len() >= max_len {
            if !done {
                for (s, &score) in self.seqs.iter().zip(&self.beam_scores) {
                    self.hyps.add(s.clone(), f64::from(score), false);
                }
            }
            let (best, by_eos) = self
                .hyps
                .best()
                .map_or((vec![self.ids.bos], false), |b| (b.1.clone(), b.2));
            let token_ids = best[1.min(best.len())..].to_vec();
            let mut sequence = best;
            if sequence.len() < max_len {
                sequence.push(self.ids.eos);
            }
            return Step::Done(Generated {
                sequence,
                token_ids,
                finish_reason: if by_eos {
                    FinishReason::Eos
                } else {
                    FinishReason::Length
                },
            });
        }
        Step::Continue {
            tokens: next.iter().map(|n| n.1).collect(),
            reorder: Some(next.iter().map(|n| n.2).collect()),
        }
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

/// The argmax of `row` once the logits of `banned` are -inf (as the processors set them).
pub(super) fn pick(row: &mut [f32], banned: &[u32]) -> u32 {
    for &t in banned {
        if let Some(s) = row.get_mut(t as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
    argmax(row)
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

/// Finished hypotheses of one request (`BeamHypotheses`).
#[derive(Debug)]
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
