//! The forward program (the kernel-call sequence every backend runs) on the host, with both of
//! its arithmetics (the CPU serving kernels of `--device cpu` and the f64 mirror of
//! `--device mirror`), against the official outputs of the tiny fixture: vision prefix,
//! first-step logits and greedy / beam token ids on every case, and the paged KV cache's
//! bookkeeping (blocks all returned, beams copied).

#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;
use lynx_worker::checkpoint::release::load_release;
use lynx_worker::config::LynxConfig;
use lynx_worker::forward::e2e::argmax;
use lynx_worker::forward::host::HostOps;
use lynx_worker::forward::ops::Ops;
use lynx_worker::forward::vision::Pixels;
use lynx_worker::forward::weights::Source;
use lynx_worker::forward::{DeviceLynx, ForwardError};
use lynx_worker::generation::{generate, DecodeIds, DecodingMode, GenerationParams, Next, Want};

const KV_BLOCKS: usize = 512;
const BLOCK: usize = 8;

/// A mirror model of its own per test (tests run in parallel and count the cache's free blocks).
fn model() -> DeviceLynx<HostOps> {
    model_on(HostOps::mirror())
}

/// The fixture model on `ops`.
fn model_on(ops: HostOps) -> DeviceLynx<HostOps> {
    let merged = load_release(&model_dir(), None).unwrap();
    let cfg: LynxConfig = merged.config.clone();
    let vb = VarBuilder::from_tensors(merged.tensors, DType::F32, &Device::Cpu);
    DeviceLynx::load(ops, Source::Checkpoint(vb), &cfg, KV_BLOCKS, BLOCK).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    d / b.iter().map(|y| y.abs()).fold(1e-30, f32::max)
}

/// Left-padded ids and their pad counts from the fixture's `input_ids` / `input_atts`.
fn text(t: &std::collections::HashMap<String, Tensor>) -> (Vec<u32>, Vec<usize>, usize) {
    let ids = id_rows(&t["input_ids"]);
    let atts = id_rows(&t["input_atts"]);
    let pads = atts
        .iter()
        .map(|row| {
            let p = row.iter().take_while(|&&a| a == 0).count();
            assert!(row[p..].iter().all(|&a| a == 1), "not left-padded");
            p
        })
        .collect();
    let rows = ids.len();
    (ids.concat(), pads, rows)
}

fn check_case(case: &str) {
    for ops in [HostOps::cpu(), HostOps::mirror()] {
        check_case_on(case, ops);
    }
}

fn check_case_on(case: &str, ops: HostOps) {
    let m = &model_on(ops);
    let label = format!("{case} on {}", m.ops().describe());
    let cfg = m.config();
    let t = case_tensors(case);
    let px = &t["pixel_values"];
    let (seqs, frames) = match px.dims().len() {
        5 => (px.dims()[0], px.dims()[1]),
        _ => (px.dims()[0], 1),
    };
    let prefix = m
        .encode_vision(Pixels {
            values: &flat(px),
            sequences: seqs,
            frames,
        })
        .unwrap();
    let r = rel(&prefix, &flat(&t["bridge_out"]));
    eprintln!("{label}: bridge_out rel {r:.1e}");
    assert!(r <= 1e-5, "{label} bridge_out rel {r:e}");

    let (ids, pads, rows) = text(&t);
    let free = m.free_blocks().unwrap();
    {
        let (_, first) = m.start_session(Some(&prefix), &ids, &pads, 1).unwrap();
        // The reference logits of each row's last position.
        let reference = &t["prefill_logits"];
        let (_, s, v) = reference.dims3().unwrap();
        let all = flat(reference);
        for (row, got) in first.iter().enumerate() {
            let want = &all[(row * s + s - 1) * v..][..v];
            let r = rel(got, want);
            assert!(r <= 1e-5, "{label} row {row} first logits rel {r:e}");
        }
    }
    assert_eq!(
        m.free_blocks().unwrap(),
        free,
        "a dropped session returns its blocks"
    );

    let special = DecodeIds {
        bos: cfg.tokens.bos,
        eos: cfg.tokens.eos,
        pad: cfg.tokens.pad,
    };
    let run = |p: &GenerationParams| -> Vec<Vec<u32>> {
        let (mut session, first) = m
            .start_session(Some(&prefix), &ids, &pads, p.rows_per_request())
            .unwrap();
        generate(&mut session, first, rows, p, special)
            .unwrap()
            .into_iter()
            .map(|g| g.sequence)
            .collect()
    };
    let mut greedy = GenerationParams::from_defaults(&cfg.generation, DecodingMode::Greedy);
    greedy.max_new_tokens = 16;
    assert_eq!(run(&greedy), ref_ids(case, GREEDY_KEY), "{label} greedy");
    let mut beam = GenerationParams::from_defaults(&cfg.generation, DecodingMode::Beam);
    beam.max_new_tokens = 16;
    assert_eq!(run(&beam), ref_ids(case, BEAM_KEY), "{label} beam-5");
    assert_eq!(m.free_blocks().unwrap(), free, "beam copies are returned");
}

#[test]
fn image0_matches_the_official_outputs() {
    check_case("image0");
}

#[test]
fn image3_matches_the_official_outputs() {
    check_case("image3");
}

#[test]
fn left_padded_batch_matches_the_official_outputs() {
    check_case("image_batch_1_2_leftpad");
}

#[test]
fn video0_matches_the_official_outputs() {
    check_case("video0");
}

#[test]
fn text_only_greedy_matches() {
    for ops in [HostOps::cpu(), HostOps::mirror()] {
        text_only_greedy_on(ops);
    }
}

fn text_only_greedy_on(ops: HostOps) {
    let m = &model_on(ops);
    let case = &ref_json()["text_only_greedy"];
    let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    let cfg = m.config();
    let mut p = GenerationParams::from_defaults(&cfg.generation, DecodingMode::Greedy);
    p.max_new_tokens = 8;
    p.min_length = 0;
    p.no_repeat_ngram_size = 0;
    let (mut session, first) = m.start_session(None, &ids, &[0], 1).unwrap();
    let special = DecodeIds {
        bos: cfg.tokens.bos,
        eos: cfg.tokens.eos,
        pad: cfg.tokens.pad,
    };
    let out = generate(&mut session, first, 1, &p, special).unwrap();
    let expected: Vec<Vec<u32>> = serde_json::from_value(case["output_ids"].clone()).unwrap();
    assert_eq!(vec![out[0].sequence.clone()], expected);
}

#[test]
fn a_full_cache_is_an_error_and_loses_nothing() {
    let merged = load_release(&model_dir(), None).unwrap();
    let cfg = merged.config.clone();
    let vb = VarBuilder::from_tensors(merged.tensors, DType::F32, &Device::Cpu);
    // 2 usable blocks of 4 tokens: 8 tokens fit.
    let m = DeviceLynx::load(HostOps::default(), Source::Checkpoint(vb), &cfg, 2, 4).unwrap();
    let ids: Vec<u32> = vec![1, 5, 6, 7, 8, 9, 10, 11, 12];
    match m.start_session(None, &ids, &[0], 1) {
        Err(ForwardError::OutOfBlocks) => {}
        Err(other) => panic!("expected OutOfBlocks, got {other}"),
        Ok(_) => panic!("9 tokens fitted in 8 slots"),
    }
    assert_eq!(
        m.free_blocks().unwrap(),
        2,
        "a failed prefill returns its blocks"
    );
    let (mut s, _) = m.start_session(None, &ids[..8], &[0], 1).unwrap();
    assert!(matches!(
        s.step_tokens(&[3]),
        Err(ForwardError::OutOfBlocks)
    ));
}

/// A greedy row answers with the argmax of the logits the same step computes, once its banned
/// tokens are excluded; the other rows get exactly a plain step's logits, whatever the mix.
#[test]
fn picked_rows_get_the_argmax_and_the_others_their_logits() {
    for ops in [HostOps::cpu(), HostOps::mirror()] {
        let m = model_on(ops);
        let ids: Vec<u32> = vec![1, 20, 30, 40, 1, 21, 31, 41, 1, 22, 32, 42];
        let (mut plain, first) = m.start_session(None, &ids, &[0, 0, 0], 1).unwrap();
        let (mut picking, _) = m.start_session(None, &ids, &[0, 0, 0], 1).unwrap();
        let mut next: Vec<u32> = first.iter().map(|r| argmax(r)).collect();
        for pick in [
            [true, false, true],
            [false, false, false],
            [true, true, true],
        ] {
            let full = plain.step_tokens(&next).unwrap();
            // Each picked row bans its own best token (and one far outside the vocabulary).
            let wants: Vec<Want> = full
                .iter()
                .zip(pick)
                .map(|(row, p)| match p {
                    true => Want::Argmax {
                        banned: vec![argmax(row), u32::MAX],
                    },
                    false => Want::Logits,
                })
                .collect();
            let got = picking.step_picking(&next, &wants).unwrap();
            let want: Vec<Next> = full
                .iter()
                .zip(pick)
                .map(|(row, p)| match p {
                    true => {
                        let mut row = row.clone();
                        let best = argmax(&row) as usize;
                        row[best] = f32::NEG_INFINITY;
                        Next::Token(argmax(&row))
                    }
                    false => Next::Logits(row.clone()),
                })
                .collect();
            assert_eq!(got, want, "{pick:?}");
            assert!(got
                .iter()
                .zip(&full)
                .all(|(g, row)| *g != Next::Token(argmax(row))));
            next = full.iter().map(|r| argmax(r)).collect();
        }
        assert!(matches!(
            picking.step_picking(&next, &[Want::Logits]),
            Err(ForwardError::Shape(_))
        ));
    }
}

/// A prefill that puts K/V into the cache through the rows' block table, at the positions the
/// GPU's in-pass fill uses (pad gap dropped), decodes exactly as the slot writes do: the same
/// logits, bit for bit, on a batch of two images with a padded row (a gap after the prefix) and
/// rows of different block counts.
#[test]
fn filling_the_cache_by_block_table_decodes_as_the_slot_writes() {
    let (by_slot, by_table) = (model_on(HostOps::cpu()), model_on(HostOps::cpu()));
    assert!(by_table.ops().set_prefill_fill(true));
    let cases = lynx_worker::verify::synthetic_cases(by_slot.config(), 3);
    let case = cases
        .iter()
        .find(|c| c.name == "random-padded-batch")
        .unwrap();
    assert!(case.pads.iter().any(|&p| p > 0), "a padded row");
    let run = |m: &DeviceLynx<HostOps>| {
        let pixels = Pixels {
            values: &case.pixels,
            sequences: case.sequences,
            frames: case.frames,
        };
        let prefix = m.encode_vision(pixels).unwrap();
        let (mut session, first) = m
            .start_session(Some(&prefix), &case.ids, &case.pads, 1)
            .unwrap();
        let mut all = first.clone();
        let mut next: Vec<u32> = first.iter().map(|r| argmax(r)).collect();
        for _ in 0..6 {
            let logits = session.step_tokens(&next).unwrap();
            next = logits.iter().map(|r| argmax(r)).collect();
            all.extend(logits);
        }
        all
    };
    assert_eq!(run(&by_table), run(&by_slot));
}

#[test]
fn random_weights_run_and_are_reproducible() {
    let merged = load_release(&model_dir(), None).unwrap();
    let cfg = merged.config.clone();
    let load = || DeviceLynx::load(HostOps::default(), Source::Random(7), &cfg, 64, 8).unwrap();
    let (a, b) = (load(), load());
    let res = cfg.vision.image_res as usize;
    let px: Vec<f32> = (0..3 * res * res)
        .map(|i| (i % 17) as f32 / 17.0 - 0.5)
        .collect();
    let pixels = Pixels {
        values: &px,
        sequences: 1,
        frames: 1,
    };
    let (pa, pb) = (
        a.encode_vision(pixels).unwrap(),
        b.encode_vision(pixels).unwrap(),
    );
    assert_eq!(pa, pb);
    assert!(pa.iter().all(|x| x.is_finite()));
    let (_, la) = a.start_session(Some(&pa), &[1, 20, 30], &[0], 1).unwrap();
    let (_, lb) = b.start_session(Some(&pb), &[1, 20, 30], &[0], 1).unwrap();
    assert_eq!(la, lb);
    assert!(la[0].iter().all(|x| x.is_finite()));
    let spread = la[0].iter().cloned().fold(f32::MIN, f32::max)
        - la[0].iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 0.0, "random logits are all equal");
}

/// The `gpu-check-model` harness, run with the host mirror on both sides: every fixture case is
/// read, compared, and matches itself and the official outputs.
#[test]
fn the_model_check_harness_reads_every_case_and_compares() {
    use lynx_worker::verify::{compare, fixture_cases};
    let cases = fixture_cases(&tiny()).unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for want in IMAGE_CASES.iter().chain(&VIDEO_CASES) {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    let (a, b) = (model(), model());
    let reports = compare(&a, &b, &cases).unwrap();
    assert_eq!(reports.len(), cases.len());
    for r in &reports {
        assert_eq!(
            (r.prefix_rel_err, r.logits_rel_err),
            (0.0, 0.0),
            "{}",
            r.case
        );
        assert_eq!(
            (r.greedy_agreement, r.beam_agreement),
            (1.0, 1.0),
            "{}",
            r.case
        );
        assert_eq!(r.greedy_official, Some(true), "{}", r.case);
        assert_eq!(r.beam_official, Some(true), "{}", r.case);
    }
}

/// `gpu-check-model --random-weights`' harness on the host: the CPU kernels against the mirror
/// on a seeded random architecture (the same weights on both sides) and made-up inputs.
#[test]
fn the_model_check_runs_on_a_random_architecture() {
    use lynx_worker::cli::device::{random_architecture, RANDOM_WEIGHTS_SEED};
    use lynx_worker::config::presets::Preset;
    use lynx_worker::verify::{compare, synthetic_cases};
    let (cfg, _) = random_architecture(Preset::Tiny).unwrap();
    let load =
        |ops| DeviceLynx::load(ops, Source::Random(RANDOM_WEIGHTS_SEED), &cfg, 256, 8).unwrap();
    let cases = synthetic_cases(&cfg, 7);
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["random-image", "random-padded-batch", "random-video"]
    );
    let reports = compare(&load(HostOps::cpu()), &load(HostOps::mirror()), &cases).unwrap();
    assert_eq!(reports.len(), cases.len());
    for r in &reports {
        assert!(
            r.prefix_rel_err <= 1e-4 && r.logits_rel_err <= 1e-4,
            "{r:?}"
        );
        assert_eq!((r.greedy_agreement, r.beam_agreement), (1.0, 1.0), "{r:?}");
        assert_eq!((r.greedy_official, r.beam_official), (None, None));
    }
}

/// `gpu-bench --e2e`'s measurements, run on the host with the tiny random architecture: every
/// row is produced with a positive finite rate, and decode rows carry the weight-streaming limit.
#[test]
fn the_e2e_bench_measures_every_stage() {
    use lynx_worker::config::presets::Preset;
    use lynx_worker::forward::e2e::{llm_step_bytes, run, E2eOptions};
    let tok = lynx_worker::tokenizer::toy::toy_tokenizer().unwrap();
    let cfg = Preset::Tiny.config(&tok);
    let m = DeviceLynx::load(HostOps::default(), Source::Random(1), &cfg, 256, 8).unwrap();
    let opts = E2eOptions {
        image_batches: vec![1, 2],
        videos: 1,
        decode_batches: vec![1, 3],
        decode_steps: 3,
        prompt_tokens: 6,
        iters: 1,
    };
    let rows = run(&m, &opts, Some(10.0)).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "vision-b1",
            "vision-b2",
            "vision-frames5",
            "ttft-image",
            "ttft-image-fill-in-pass",
            "decode-b1",
            "step-host-logits-b1",
            "decode-b3",
            "step-host-logits-b3"
        ]
    );
    for r in &rows {
        assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
    }
    let limit = llm_step_bytes(&m) / 10e6;
    let decode = |r: &&lynx_worker::forward::e2e::E2eRow| {
        r.id.starts_with("decode") || r.id.starts_with("step-host-logits")
    };
    for r in rows.iter().filter(decode) {
        assert_eq!(r.limit_ms, Some(limit));
        let pct = r.pct_of_limit.unwrap();
        assert!((pct - 100.0 * limit / r.ms).abs() < 1e-9);
    }
    assert_eq!(
        m.free_blocks().unwrap(),
        256,
        "every session returned its blocks (all it was loaded with: the scratch block is extra)"
    );
}
