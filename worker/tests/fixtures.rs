//! Stage-by-stage comparison of the CPU model with the official implementation's outputs on the
//! tiny fixture: merged weights, ViT, frame embedding, bridge, embeddings, mask, positions,
//! prefill logits (fp32, relative error <= 1e-5) and greedy / beam token ids (exact).

#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use lynx_model::oracle::{positions_from_mask, VisionBatch};
use lynx_worker::checkpoint::release::load_release;
use lynx_worker::generation::{generate, DecodeIds, DecodingMode, GenerationParams};

const TOL: f32 = 1e-5;

#[test]
fn merged_weights_equal_the_official_merge() {
    let merged = load_release(&model_dir(), None).expect("merge");
    let official = candle_core::safetensors::load(
        refs().join("merged_state_dict_fp32.safetensors"),
        &Device::Cpu,
    )
    .expect("merged reference fixture");
    let mut compared = 0;
    for (k, v) in &official {
        if k.ends_with("rotary_emb.inv_freq") {
            continue; // dead buffers: recomputed from the formula, never read
        }
        let ours = merged
            .tensors
            .get(k)
            .unwrap_or_else(|| panic!("missing {k}"));
        assert_eq!(ours.dims(), v.dims(), "{k}");
        let d = (ours - v.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k} differs");
        compared += 1;
    }
    assert!(compared > 100, "only {compared} tensors compared");
}

fn vision_input(case: &str, t: &std::collections::HashMap<String, Tensor>) -> VisionBatch {
    let px = t["pixel_values"].clone();
    if case.starts_with("video") {
        VisionBatch::Videos(px)
    } else {
        VisionBatch::Images(px)
    }
}

fn check_case(case: &str) {
    let m = release_model();
    let t = case_tensors(case);
    let input = vision_input(case, &t);
    if let VisionBatch::Videos(px) = &input {
        let (b, f, c, h, w) = px.dims5().unwrap();
        let per_frame = m
            .model
            .vision_encoder()
            .forward(&px.reshape((b * f, c, h, w)).unwrap())
            .unwrap();
        let r = rel_err(&per_frame, &t["vit_out_per_frame"]);
        eprintln!("{case}: vit_out_per_frame rel {r:.1e}");
        assert!(r <= TOL, "{case} vit_out_per_frame rel {r:e}");
    }
    let vit = m.model.vision_tokens(&input).unwrap();
    let r = rel_err(&vit, &t["vit_out"]);
    eprintln!("{case}: vit_out rel {r:.1e}");
    assert!(r <= TOL, "{case} vit_out rel {r:e}");
    let bridge = m.model.bridge(&vit).unwrap();
    let r = rel_err(&bridge, &t["bridge_out"]);
    eprintln!("{case}: bridge_out rel {r:.1e}");
    assert!(r <= TOL, "{case} bridge_out rel {r:e}");

    let ids = t["input_ids"].to_dtype(DType::U32).unwrap();
    let atts = t["input_atts"].to_dtype(DType::U32).unwrap();
    let prefill = m.model.prefill_inputs(Some(&bridge), &ids, &atts).unwrap();
    let r = rel_err(&prefill.embeds, &t["inputs_embeds"]);
    eprintln!("{case}: inputs_embeds rel {r:.1e}");
    assert!(r <= TOL, "{case} inputs_embeds rel {r:e}");
    let mask = prefill.attention_mask.to_dtype(DType::I64).unwrap();
    assert_eq!(
        id_rows(&mask),
        id_rows(&t["attention_mask"]),
        "{case} attention_mask"
    );
    assert_eq!(
        id_rows(&prefill.positions),
        id_rows(&t["position_ids"]),
        "{case} position_ids"
    );

    // Prefill logits on the attended rows.
    let logits = m.model.prefill_logits(&prefill).unwrap();
    let reference = &t["prefill_logits"];
    let mask_rows = id_rows(&t["attention_mask"]);
    let (b, _, v) = logits.dims3().unwrap();
    let ours = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let theirs = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let attended = mask_rows.iter().flatten().map(|&m| m == 1);
    let (mut diff, mut scale) = (0f32, 0f32);
    for ((o, t), keep) in ours.chunks(v).zip(theirs.chunks(v)).zip(attended) {
        if keep {
            for (x, y) in o.iter().zip(t) {
                diff = diff.max((x - y).abs());
                scale = scale.max(y.abs());
            }
        }
    }
    let r = diff / scale;
    eprintln!("{case}: prefill_logits rel {r:.1e} (abs {diff:.1e})");
    assert!(r <= TOL, "{case} prefill_logits rel {r:e}");

    // Decoding from the reference prefix.
    let special = DecodeIds {
        bos: m.config.tokens.bos,
        eos: m.config.tokens.eos,
        pad: m.config.tokens.pad,
    };
    let mut greedy = GenerationParams::from_defaults(&m.config.generation, DecodingMode::Greedy);
    greedy.max_new_tokens = 16;
    let run = |p: &GenerationParams| -> Vec<Vec<u32>> {
        let (mut session, first) = m
            .model
            .start_session(&prefill, p.rows_per_request())
            .unwrap();
        generate(&mut session, first, b, p, special)
            .unwrap()
            .into_iter()
            .map(|g| g.sequence)
            .collect()
    };
    assert_eq!(run(&greedy), ref_ids(case, GREEDY_KEY), "{case} greedy");
    let mut plain = greedy.clone();
    plain.min_length = 0;
    plain.no_repeat_ngram_size = 0;
    assert_eq!(
        run(&plain),
        ref_ids(case, PLAIN_GREEDY_KEY),
        "{case} plain greedy"
    );
    let mut beam = GenerationParams::from_defaults(&m.config.generation, DecodingMode::Beam);
    beam.max_new_tokens = 16;
    assert_eq!(beam.num_beams, 5);
    assert_eq!(run(&beam), ref_ids(case, BEAM_KEY), "{case} beam-5");
}

#[test]
fn image0_every_stage() {
    check_case("image0");
}

#[test]
fn image1_every_stage() {
    check_case("image1");
}

#[test]
fn image2_every_stage() {
    check_case("image2");
}

#[test]
fn image3_every_stage() {
    check_case("image3");
}

#[test]
fn left_padded_batch_every_stage() {
    check_case("image_batch_1_2_leftpad");
}

#[test]
fn video0_every_stage() {
    check_case("video0");
}

#[test]
fn video1_every_stage() {
    check_case("video1");
}

#[test]
fn text_only_greedy() {
    let m = release_model();
    let case = &ref_json()["text_only_greedy"];
    let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let atts = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
    let prefill = m.model.prefill_inputs(None, &ids, &atts).unwrap();
    assert_eq!(
        id_rows(&prefill.positions)[0],
        (0..n as u32).collect::<Vec<_>>(),
        "positions of an unpadded text prompt"
    );
    let mut p = GenerationParams::from_defaults(&m.config.generation, DecodingMode::Greedy);
    p.max_new_tokens = 8;
    p.min_length = 0;
    p.no_repeat_ngram_size = 0;
    let (mut session, first) = m.model.start_session(&prefill, 1).unwrap();
    let special = DecodeIds {
        bos: m.config.tokens.bos,
        eos: m.config.tokens.eos,
        pad: m.config.tokens.pad,
    };
    let out = generate(&mut session, first, 1, &p, special).unwrap();
    let expected: Vec<Vec<u32>> = serde_json::from_value(case["output_ids"].clone()).unwrap();
    assert_eq!(vec![out[0].sequence.clone()], expected);
}

#[test]
fn positions_skip_left_padding() {
    let mask = Tensor::from_vec(vec![1f32, 1., 0., 0., 1., 1.], (1, 6), &Device::Cpu).unwrap();
    let pos = positions_from_mask(&mask).unwrap();
    assert_eq!(id_rows(&pos)[0], vec![0, 1, 1, 1, 2, 3]);
}
