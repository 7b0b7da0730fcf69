//! End to end from the input files: our image/video decoding, preprocessing, tokenizer and prompt
//! construction, then the model and decoding, must give the official token ids; batching must not
//! change results.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lynx_model::oracle::pipeline::run_batch;
use lynx_worker::generation::DecodingMode;
use lynx_worker::tokenizer::python_strip;

const ALL_CASES: [&str; 7] = [
    "image0",
    "image1",
    "image2",
    "image3",
    "image_batch_1_2_leftpad",
    "video0",
    "video1",
];

#[test]
fn every_case_from_the_input_files() {
    let m = release_model();
    for case in ALL_CASES {
        let reqs = case_requests(m, case);
        let greedy = fixture_params(m, DecodingMode::Greedy);
        let (results, _) = run_batch(m, &reqs, &greedy).unwrap();
        // Prompt ids as tokenized (the fixture rows are left-padded with [PAD]).
        let expected_prompts = ref_ids(case, "input_ids");
        for (r, exp) in results.iter().zip(&expected_prompts) {
            let unpadded: Vec<u32> = exp
                .iter()
                .copied()
                .filter(|&t| t != m.config.tokens.pad)
                .collect();
            assert_eq!(r.prompt_token_ids, unpadded, "{case} prompt ids");
        }
        let seqs: Vec<Vec<u32>> = results
            .iter()
            .map(|r| r.generated.sequence.clone())
            .collect();
        assert_eq!(seqs, ref_ids(case, GREEDY_KEY), "{case} greedy from files");
        let beam = fixture_params(m, DecodingMode::Beam);
        assert_eq!(
            run_sequences(m, &reqs, &beam),
            ref_ids(case, BEAM_KEY),
            "{case} beam-5 from files"
        );
        // Text as the official generate.py returns it: decode skipping specials, then strip.
        for (r, text) in results
            .iter()
            .zip(ref_json()[case]["greedy_text"].as_array().unwrap())
        {
            assert_eq!(r.text, python_strip(text.as_str().unwrap()), "{case} text");
        }
    }
}

#[test]
fn batching_does_not_change_results() {
    let m = release_model();
    let singles: Vec<_> = ["image0", "image1", "image2", "image3"]
        .iter()
        .flat_map(|c| case_requests(m, c))
        .collect();
    for mode in [DecodingMode::Greedy, DecodingMode::Beam] {
        let p = fixture_params(m, mode);
        let alone: Vec<Vec<u32>> = singles
            .iter()
            .flat_map(|r| run_sequences(m, std::slice::from_ref(r), &p))
            .collect();
        let batched = run_sequences(m, &singles, &p);
        // A batch pads every output row to the longest; compare the generated ids.
        for (a, b) in alone.iter().zip(&batched) {
            assert_eq!(a[..], b[..a.len()], "{mode}: alone vs batch of 4");
        }
        let reversed: Vec<_> = singles.iter().rev().cloned().collect();
        let batched_rev = run_sequences(m, &reversed, &p);
        for (a, b) in alone.iter().rev().zip(&batched_rev) {
            assert_eq!(a[..], b[..a.len()], "{mode}: alone vs reversed batch");
        }
    }
}

#[test]
fn sampling_is_seeded_and_respects_the_release_processors() {
    let m = release_model();
    let reqs = case_requests(m, "image0");
    for mode in [DecodingMode::Sample, DecodingMode::Lynx] {
        let mut p = fixture_params(m, mode);
        p.seed = 42;
        let a = run_sequences(m, &reqs, &p);
        let b = run_sequences(m, &reqs, &p);
        assert_eq!(a, b, "{mode}: same seed, same output");
        let seq = &a[0];
        assert_eq!(seq[0], m.config.tokens.bos);
        assert!(seq.len() <= 17, "{mode}: at most 16 new tokens");
        // no_repeat_ngram_size 2: no bigram occurs twice.
        let bigrams: Vec<_> = seq.windows(2).collect();
        for (i, w) in bigrams.iter().enumerate() {
            assert!(
                !bigrams[i + 1..].contains(w),
                "{mode}: bigram {w:?} repeated in {seq:?}"
            );
        }
        // Different seeds explore different outputs.
        let outputs: std::collections::HashSet<Vec<Vec<u32>>> = (0..6)
            .map(|s| {
                p.seed = s;
                run_sequences(m, &reqs, &p)
            })
            .collect();
        assert!(outputs.len() > 1, "{mode}: six seeds gave one output");
    }
}

#[test]
fn sampling_with_top_k_1_is_greedy() {
    let m = release_model();
    for case in ["image0", "image_batch_1_2_leftpad", "video1"] {
        let reqs = case_requests(m, case);
        let mut p = fixture_params(m, DecodingMode::Sample);
        p.top_k = 1;
        for seed in [0, 7] {
            p.seed = seed;
            assert_eq!(
                run_sequences(m, &reqs, &p),
                ref_ids(case, GREEDY_KEY),
                "{case} seed {seed}"
            );
        }
    }
}

/// Continuous batching: requests prefilled on their own join a running decode session at step
/// boundaries and leave it when done; every request must still get its official tokens.
#[test]
fn requests_joining_and_leaving_a_running_batch_get_their_own_tokens() {
    use lynx_model::oracle::pipeline::{encode_vision, prefill_inputs};
    use lynx_worker::generation::{DecodeIds, RequestDecoder, Step};

    let m = release_model();
    let ids = DecodeIds {
        bos: m.config.tokens.bos,
        eos: m.config.tokens.eos,
        pad: m.config.tokens.pad,
    };
    for mode in [DecodingMode::Greedy, DecodingMode::Beam] {
        let p = fixture_params(m, mode);
        let k = p.rows_per_request();
        // (case, step at which it joins)
        let plan = [("image0", 0usize), ("image3", 2), ("image1", 5)];
        let mut session = None;
        // Running requests in row order: (case, decoder), and the logits of their rows.
        let mut running: Vec<(&str, RequestDecoder)> = Vec::new();
        let mut logits: Vec<Vec<f32>> = Vec::new();
        let mut done = Vec::new();
        for step in 0.. {
            for &(case, at) in &plan {
                if at == step {
                    let reqs = case_requests(m, case);
                    let vision = encode_vision(m, &reqs).unwrap();
                    let (prefill, _) = prefill_inputs(m, vision.as_ref(), &reqs).unwrap();
                    let (s, first) = m.model.start_session(&prefill, k).unwrap();
                    match session.as_mut() {
                        None => session = Some(s),
                        Some(running_session) => running_session.join(s).unwrap(),
                    }
                    logits.extend(first);
                    running.push((case, RequestDecoder::new(&p, ids).unwrap()));
                }
            }
            if running.is_empty() {
                break;
            }
            let (mut tokens, mut rows, mut still) = (Vec::new(), Vec::new(), Vec::new());
            for (slot, (case, mut dec)) in running.drain(..).enumerate() {
                match dec.advance(&mut logits[slot * k..(slot + 1) * k]) {
                    Step::Done(g) => done.push((case, g)),
                    Step::Continue { tokens: t, reorder } => {
                        for (i, tok) in t.into_iter().enumerate() {
                            rows.push((slot * k + reorder.as_ref().map_or(i, |r| r[i])) as u32);
                            tokens.push(tok);
                        }
                        still.push((case, dec));
                    }
                }
            }
            running = still;
            if running.is_empty() && plan.iter().all(|&(_, at)| at <= step) {
                break;
            }
            let s = session.as_mut().unwrap();
            if !running.is_empty() {
                s.select_rows(&rows).unwrap();
                logits = s.step(&tokens).unwrap();
            } else {
                session = None;
                logits.clear();
            }
        }
        assert_eq!(done.len(), plan.len(), "{mode}");
        let key = if mode == DecodingMode::Greedy {
            GREEDY_KEY
        } else {
            BEAM_KEY
        };
        for (case, g) in done {
            assert_eq!(
                vec![g.sequence.clone()],
                ref_ids(case, key),
                "{mode} {case}"
            );
        }
    }
}
