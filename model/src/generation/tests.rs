//! Decoding over a scripted model: EOS paths, dropping finished requests from the batch, and
//! batch invariance of every mode.

use super::*;

const V: usize = 12;
const IDS: DecodeIds = DecodeIds {
    bos: 1,
    eos: 2,
    pad: 0,
};

/// A fake LLM: each row's logits are a deterministic function of its history; request `r`'s rows
/// favour EOS once they hold `3 + r` tokens.
struct Scripted {
    rows: Vec<Vec<u32>>,
    steps: Vec<usize>,
}

impl Scripted {
    fn new(requests: usize, k: usize) -> (Self, Vec<Vec<f32>>) {
        let rows: Vec<Vec<u32>> = (0..requests)
            .flat_map(|r| std::iter::repeat_n(vec![r as u32], k))
            .collect();
        let s = Self {
            rows,
            steps: Vec::new(),
        };
        let first = s.rows.iter().map(|h| logits_of(h)).collect();
        (s, first)
    }
}

fn logits_of(history: &[u32]) -> Vec<f32> {
    let req = history[0] as usize;
    let mut h: u64 = 1469598103934665603;
    for t in history {
        h = (h ^ u64::from(*t)).wrapping_mul(1099511628211);
    }
    let mut out: Vec<f32> = (0..V)
        .map(|i| {
            let x = h
                .wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .rotate_left(17);
            (x % 1000) as f32 / 250.0
        })
        .collect();
    out[IDS.eos as usize] = if history.len() >= 3 + req { 10.0 } else { -5.0 };
    out
}

impl StepModel for Scripted {
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, super::StepError> {
        assert_eq!(tokens.len(), self.rows.len());
        self.steps.push(tokens.len());
        for (h, t) in self.rows.iter_mut().zip(tokens) {
            h.push(*t);
        }
        Ok(self.rows.iter().map(|h| logits_of(h)).collect())
    }

    fn select_rows(&mut self, rows: &[u32]) -> Result<(), super::StepError> {
        self.rows = rows
            .iter()
            .map(|&r| self.rows[r as usize].clone())
            .collect();
        Ok(())
    }
}

fn params(mode: DecodingMode) -> GenerationParams {
    GenerationParams {
        mode,
        max_new_tokens: 8,
        min_length: 2,
        no_repeat_ngram_size: 0,
        num_beams: 3,
        length_penalty: 1.0,
        temperature: 1.0,
        top_k: 4,
        top_p: 0.95,
        seed: 5,
    }
}

fn run(requests: usize, p: &GenerationParams) -> (Vec<Generated>, Vec<usize>) {
    let (mut m, first) = Scripted::new(requests, p.rows_per_request());
    let out = generate(&mut m, first, requests, p, IDS).expect("generate");
    (out, m.steps)
}

#[test]
fn greedy_stops_at_eos_and_drops_finished_rows() {
    let (out, steps) = run(3, &params(DecodingMode::Greedy));
    for (r, g) in out.iter().enumerate() {
        assert_eq!(g.finish_reason, FinishReason::Eos, "request {r}");
        // History = [request id, tokens...]; EOS is favoured from 3 + r entries on.
        assert_eq!(g.token_ids.len(), 2 + r, "request {r}: {g:?}");
        assert!(!g.token_ids.contains(&IDS.eos));
    }
    // Rows leave the batch as their requests finish.
    assert_eq!(steps, vec![3, 3, 2, 1]);
    // HF padding: EOS then pads up to the longest row.
    assert_eq!(out[0].sequence.len(), out[2].sequence.len());
    assert_eq!(out[0].sequence[3], IDS.eos);
    assert_eq!(out[0].sequence[4..], [IDS.pad, IDS.pad]);
}

#[test]
fn min_length_bans_eos_at_the_first_step() {
    let mut p = params(DecodingMode::Greedy);
    p.min_length = 4;
    let (out, _) = run(1, &p);
    assert!(out[0].token_ids.len() >= 3, "{:?}", out[0]);
}

#[test]
fn beams_close_hypotheses_on_eos() {
    let (out, _) = run(2, &params(DecodingMode::Beam));
    for g in &out {
        assert_eq!(g.finish_reason, FinishReason::Eos, "{g:?}");
        assert!(!g.token_ids.contains(&IDS.eos));
        assert_eq!(g.sequence[g.token_ids.len() + 1], IDS.eos);
    }
}

#[test]
fn every_mode_is_batch_invariant() {
    for mode in [
        DecodingMode::Greedy,
        DecodingMode::Beam,
        DecodingMode::Sample,
        DecodingMode::Lynx,
    ] {
        let p = params(mode);
        let (batched, _) = run(3, &p);
        for (r, g) in batched.iter().enumerate() {
            // Request r alone: a scripted model whose only row has request id r.
            let k = p.rows_per_request();
            let mut m = Scripted {
                rows: vec![vec![r as u32]; k],
                steps: Vec::new(),
            };
            let first = m.rows.iter().map(|h| logits_of(h)).collect();
            let alone = generate(&mut m, first, 1, &p, IDS).expect("generate");
            assert_eq!(alone[0].token_ids, g.token_ids, "{mode} request {r}");
            assert_eq!(
                alone[0].finish_reason, g.finish_reason,
                "{mode} request {r}"
            );
        }
    }
}

#[test]
fn invalid_parameters_are_refused() {
    for tweak in [
        |p: &mut GenerationParams| p.max_new_tokens = 0,
        |p: &mut GenerationParams| p.temperature = 0.0,
        |p: &mut GenerationParams| p.top_p = 1.5,
        |p: &mut GenerationParams| p.num_beams = 0,
    ] {
        let mut p = params(DecodingMode::Beam);
        tweak(&mut p);
        let (mut m, first) = Scripted::new(1, p.rows_per_request().max(1));
        assert!(matches!(
            generate(&mut m, first, 1, &p, IDS),
            Err(GenerationError::InvalidParams(_))
        ));
    }
}

/// Decodes one request as the server does: rows whose decoder picks a plain argmax get only the
/// token from the model. Returns the result and how many steps were picked.
fn run_picking(p: &GenerationParams) -> (Generated, usize) {
    let (mut m, first) = Scripted::new(1, p.rows_per_request());
    let mut d = RequestDecoder::new(p, IDS).expect("decoder");
    let mut next: Vec<Next> = first.into_iter().map(Next::Logits).collect();
    let mut picked = 0;
    loop {
        picked += usize::from(matches!(next.as_slice(), [Next::Token(_)]));
        let step = d.advance_next(next).expect("answers of the wanted shape");
        match step {
            Step::Done(g) => return (g, picked),
            Step::Continue { tokens, reorder } => {
                if let Some(order) = reorder {
                    let rows: Vec<u32> = order.iter().map(|&r| r as u32).collect();
                    m.select_rows(&rows).expect("reorder");
                }
                let wants = vec![d.wants(); tokens.len()];
                next = m.step_picking(&tokens, &wants).expect("step");
            }
        }
    }
}

/// Decodes one request from the full logits of every step (no picking).
fn run_from_logits(p: &GenerationParams) -> Generated {
    let (mut m, mut logits) = Scripted::new(1, p.rows_per_request());
    let mut d = RequestDecoder::new(p, IDS).expect("decoder");
    loop {
        match d.advance(&mut logits) {
            Step::Done(g) => return g,
            Step::Continue { tokens, reorder } => {
                if let Some(order) = reorder {
                    let rows: Vec<u32> = order.iter().map(|&r| r as u32).collect();
                    m.select_rows(&rows).expect("reorder");
                }
                logits = m.step(&tokens).expect("step");
            }
        }
    }
}

#[test]
fn picked_greedy_decoding_matches_decoding_from_logits() {
    for mode in [
        DecodingMode::Greedy,
        DecodingMode::Sample,
        DecodingMode::Beam,
        DecodingMode::Lynx,
    ] {
        for (min_length, ngram) in [(2, 0), (4, 0), (2, 2)] {
            let mut p = params(mode);
            p.min_length = min_length;
            p.no_repeat_ngram_size = ngram;
            p.max_new_tokens = 6;
            let want = run_from_logits(&p);
            let (got, picked) = run_picking(&p);
            assert_eq!(got.token_ids, want.token_ids, "{mode} {min_length} {ngram}");
            // Greedy picks every step after the prefill's (its bans applied first); no other
            // mode ever does.
            let picks = mode == DecodingMode::Greedy;
            assert_eq!(picked > 0, picks, "{mode} {min_length} {ngram}: {picked}");
        }
    }
    let mut beams = RequestDecoder::new(&params(DecodingMode::Beam), IDS).expect("decoder");
    assert_eq!(beams.wants(), Want::Logits);
    assert_eq!(beams.advance_picked(3), None);
    // Answers of the wrong shape are errors, not panics.
    let rows = params(DecodingMode::Beam).num_beams;
    assert!(beams.advance_next(vec![Next::Token(3); rows]).is_err());
    assert!(beams
        .advance_next(vec![Next::Logits(vec![0.0; V])])
        .is_err());
    let mut greedy = RequestDecoder::new(&params(DecodingMode::Greedy), IDS).expect("decoder");
    assert!(greedy.advance_next(Vec::new()).is_err());
}

#[test]
fn greedy_wants_name_the_bans_the_processors_apply() {
    let mut p = params(DecodingMode::Greedy);
    p.min_length = 3;
    p.no_repeat_ngram_size = 2;
    let mut d = RequestDecoder::new(&p, IDS).expect("decoder");
    // [BOS] is shorter than min_length: EOS is banned, no bigram yet.
    assert_eq!(
        d.wants(),
        Want::Argmax {
            banned: vec![IDS.eos]
        }
    );
    for t in [5, 7, 5] {
        assert!(matches!(d.advance_picked(t), Some(Step::Continue { .. })));
    }
    // [BOS 5 7 5]: the bigram (5, 7) was seen, so 7 may not follow 5 again; min_length reached.
    assert_eq!(d.wants(), Want::Argmax { banned: vec![7] });
}
