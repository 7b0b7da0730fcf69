//! Checkpoint loading: position-embedding interpolation, the converted layout (identical outputs,
//! sharding) and clear errors for broken model directories.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lynx_worker::checkpoint::release::interpolate_pos_embed;
use lynx_worker::checkpoint::torch::TorchCheckpoint;

#[test]
fn pos_embed_interpolation_matches_torch() {
    let eva = TorchCheckpoint::open(&model_dir().join("eva_vit_g.pth")).unwrap();
    let raw = eva.read_f32("pos_embed").unwrap();
    assert_eq!(raw.dims(), &[1, 257, 32]);
    let ours = interpolate_pos_embed(&raw, 4).unwrap();
    // The fixture's Lynx checkpoint holds the official model's pos_embed, which torch
    // interpolated from this very EVA file.
    let lynx = TorchCheckpoint::open(&model_dir().join("finetune_lynx.pt")).unwrap();
    let official = lynx.read_f32("model.vision_encoder.pos_embed").unwrap();
    let d = max_abs_diff(&ours, &official);
    eprintln!("pos_embed 16x16 -> 4x4: max|diff| = {d:e}");
    assert!(d < 1e-6, "max|diff| {d}");
}

use std::path::Path;

use candle_core::DType;
use lynx_model::oracle::LoadedModel;
use lynx_worker::checkpoint::converted::{write_converted, INDEX_FILE, SHARD_BYTES};
use lynx_worker::checkpoint::release::load_release;
use lynx_worker::checkpoint::CheckpointError;
use lynx_worker::generation::DecodingMode;
use lynx_worker::loader::Layout;

const CASES: [&str; 4] = ["image1", "image_batch_1_2_leftpad", "video0", "video1"];

fn convert_into(dir: &Path, dtype: DType, shard_bytes: u64) -> Vec<std::path::PathBuf> {
    let merged = load_release(&model_dir(), None).unwrap();
    write_converted(
        dir,
        &merged.config,
        &merged.tensors,
        &merged.tokenizer,
        dtype,
        shard_bytes,
    )
    .unwrap()
}

#[test]
fn converted_layout_gives_identical_token_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let files = convert_into(tmp.path(), DType::F32, SHARD_BYTES);
    assert!(
        files.iter().any(|f| f.ends_with("model.safetensors")),
        "{files:?}"
    );
    let converted = LoadedModel::load(tmp.path(), None).unwrap();
    assert_eq!(converted.layout, Layout::Converted);
    let release = release_model();
    assert_eq!(converted.config, release.config);
    for case in CASES {
        for mode in [DecodingMode::Greedy, DecodingMode::Beam] {
            let p = fixture_params(release, mode);
            let a = run_sequences(release, &case_requests(release, case), &p);
            let b = run_sequences(&converted, &case_requests(&converted, case), &p);
            assert_eq!(a, b, "{case} {mode}: release vs converted");
        }
    }
}

#[test]
fn sharded_converted_layout_loads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let files = convert_into(tmp.path(), DType::F32, 256 * 1024);
    let shards = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
        .count();
    assert!(shards > 3, "expected several shards, got {files:?}");
    assert!(tmp.path().join(INDEX_FILE).is_file());
    let sharded = LoadedModel::load(tmp.path(), None).unwrap();
    let release = release_model();
    let p = fixture_params(release, DecodingMode::Greedy);
    for case in CASES {
        assert_eq!(
            run_sequences(release, &case_requests(release, case), &p),
            run_sequences(&sharded, &case_requests(&sharded, case), &p),
            "{case}"
        );
    }
}

#[test]
fn half_precision_conversion_loads_and_runs() {
    for dtype in [DType::F16, DType::BF16] {
        let tmp = tempfile::tempdir().unwrap();
        convert_into(tmp.path(), dtype, SHARD_BYTES);
        let bytes = std::fs::metadata(tmp.path().join("model.safetensors"))
            .unwrap()
            .len();
        let m = LoadedModel::load(tmp.path(), None).unwrap();
        let p = fixture_params(&m, DecodingMode::Greedy);
        let out = run_sequences(&m, &case_requests(&m, "image0"), &p);
        assert_eq!(out[0].len(), 17, "{dtype:?}");
        assert!(
            bytes < 1_300_000,
            "{dtype:?} file is {bytes} bytes, not half of f32"
        );
    }
}

/// A copy of the fixture model dir that a test may break.
fn model_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = model_dir();
    for entry in ["LYNX.yaml", "eva_vit_g.pth", "finetune_lynx.pt"] {
        std::fs::copy(src.join(entry), tmp.path().join(entry)).unwrap();
    }
    let llm = tmp.path().join("vicuna-7b");
    std::fs::create_dir(&llm).unwrap();
    for f in std::fs::read_dir(src.join("vicuna-7b")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, llm.join(f.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> CheckpointError {
    match LoadedModel::load(dir, None) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn the_copied_model_dir_loads() {
    let dir = model_copy();
    LoadedModel::load(dir.path(), None).unwrap();
}

#[test]
fn missing_files_are_named() {
    for (file, what) in [
        ("eva_vit_g.pth", "eva_vit_g.pth"),
        ("finetune_lynx.pt", "finetune_lynx.pt"),
        ("vicuna-7b/pytorch_model.bin", "pytorch_model.bin"),
        ("vicuna-7b/config.json", "config.json"),
        ("LYNX.yaml", "LYNX.yaml"),
    ] {
        let dir = model_copy();
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, CheckpointError::MissingFile(_)), "{file}: {e}");
        assert!(e.to_string().contains(what), "{file}: {e}");
    }
}

#[test]
fn truncated_checkpoints_are_corrupt() {
    for file in [
        "finetune_lynx.pt",
        "eva_vit_g.pth",
        "vicuna-7b/pytorch_model.bin",
    ] {
        let dir = model_copy();
        let p = dir.path().join(file);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{file}: {e}");
        assert!(
            e.to_string().contains(file.rsplit('/').next().unwrap()),
            "{file}: {e}"
        );
    }
    let dir = model_copy();
    std::fs::write(dir.path().join("finetune_lynx.pt"), b"not a checkpoint").unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
}

#[test]
fn missing_bridge_adapters_and_frame_embedding_are_named() {
    // A "Lynx checkpoint" that holds only LLM weights: the official loader would silently keep
    // random bridge, adapters and frame embedding; we refuse and name them.
    let dir = model_copy();
    std::fs::copy(
        dir.path().join("vicuna-7b/pytorch_model.bin"),
        dir.path().join("finetune_lynx.pt"),
    )
    .unwrap();
    let e = load_err(dir.path());
    let CheckpointError::MissingKeys { keys, .. } = &e else {
        panic!("expected missing keys, got {e}");
    };
    assert!(
        keys.contains(&"absolute_frame_pos_embed".to_owned()),
        "{keys:?}"
    );
    assert!(keys.contains(&"bridge.latents".to_owned()), "{keys:?}");
    assert!(
        keys.contains(&"LLM.model.layers.0.output_adapter.adapter_down.weight".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.iter().all(|k| k.starts_with("bridge.")
            || k.contains("output_adapter")
            || k == "absolute_frame_pos_embed"),
        "{keys:?}"
    );
    assert!(e.to_string().contains("absolute_frame_pos_embed"), "{e}");
}

#[test]
fn released_yaml_paths_and_bad_values() {
    // The released YAML's checkpoint path is relative to the official repo root (data/ = DIR).
    let dir = model_copy();
    let yaml = dir.path().join("LYNX.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        text.replace("./finetune_lynx.pt", "./data/finetune_lynx.pt"),
    )
    .unwrap();
    LoadedModel::load(dir.path(), None).unwrap();
    // A key with a wrong type is named.
    std::fs::write(&yaml, text.replace("bridge_depth: 2", "bridge_depth: deep")).unwrap();
    let e = load_err(dir.path());
    assert!(e.to_string().contains("bridge_depth"), "{e}");
    // A ViT width that contradicts the weights.
    std::fs::write(
        &yaml,
        text.replace("vision_width: 32", "vision_width: 1408"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.to_string().contains("vision_width"), "{e}");
    // Unknown keys are ignored.
    std::fs::write(&yaml, format!("{text}\nsome_future_key: [1, 2]\n")).unwrap();
    LoadedModel::load(dir.path(), None).unwrap();
}

#[test]
fn converted_dir_with_a_missing_tensor_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut merged = load_release(&model_dir(), None).unwrap();
    merged.tensors.remove("bridge.layers.1.0.to_kv.weight");
    write_converted(
        tmp.path(),
        &merged.config,
        &merged.tensors,
        &merged.tokenizer,
        DType::F32,
        SHARD_BYTES,
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.to_string().contains("bridge.layers.1.0.to_kv.weight"),
        "{e}"
    );
}

#[test]
fn eva_and_vicuna_conversion_matches_the_official_merge() {
    // Without the Lynx checkpoint's overrides: the fixture's Lynx checkpoint was saved from the
    // official model after it loaded these very EVA and Vicuna files, so the converted values
    // (qkv split, q/v biases, dropped block, fp16 upcast, [PAD] mean rows) must agree with it.
    use lynx_worker::checkpoint::release::load_base_weights;
    let base = load_base_weights(&model_dir(), None).unwrap();
    let official = candle_core::safetensors::load(
        refs().join("merged_state_dict_fp32.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(!base
        .keys()
        .any(|k| k.starts_with("bridge.") || k.contains("output_adapter")));
    assert!(
        !base.contains_key("vision_encoder.blocks.2.norm1.weight"),
        "EVA's extra block is dropped"
    );
    let mut compared = 0;
    for (k, ours) in &base {
        let theirs = official
            .get(k)
            .unwrap_or_else(|| panic!("{k} not in the official model"));
        let d = max_abs_diff(ours, theirs);
        let tol = match k.as_str() {
            "vision_encoder.pos_embed" => 1e-6, // torch bicubic, last-ulp differences
            k if k.ends_with("embed_tokens.weight") || k.ends_with("lm_head.weight") => 1e-6, // [PAD] mean row
            _ => 0.0,
        };
        assert!(d <= tol, "{k}: max|diff| {d}");
        compared += 1;
    }
    assert!(compared >= 60, "compared {compared} tensors");
    for k in [
        "vision_encoder.blocks.0.attn.q_proj.weight",
        "vision_encoder.blocks.1.attn.k_proj.weight",
        "vision_encoder.blocks.1.attn.v_proj.bias",
    ] {
        assert!(base.contains_key(k), "{k}");
    }
}
