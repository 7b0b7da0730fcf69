//! End to end from the input files: our image/video decoding, preprocessing, tokenizer and prompt
//! construction, then the model and decoding, must give the official token ids; batching must not
//! change results.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lynx_worker::generation::DecodingMode;
use lynx_worker::pipeline::run_batch;
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
