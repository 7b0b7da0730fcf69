//! Shared helpers of the integration tests: fixture paths and comparisons.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use lynx_model::oracle::LoadedModel;

/// Root of the tiny fixture copied from the official code's outputs.
pub fn tiny() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tiny"))
}

pub fn model_dir() -> PathBuf {
    tiny().join("model")
}

pub fn refs() -> PathBuf {
    tiny().join("refs")
}

/// `ref.json`.
pub fn ref_json() -> &'static serde_json::Value {
    static REF: OnceLock<serde_json::Value> = OnceLock::new();
    REF.get_or_init(|| {
        let p = refs().join("ref.json");
        let text =
            std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()));
        serde_json::from_slice(&text).unwrap()
    })
}

/// Tensors of `ref_<case>.safetensors`.
pub fn case_tensors(case: &str) -> HashMap<String, Tensor> {
    let p = refs().join(format!("ref_{case}.safetensors"));
    assert!(p.is_file(), "fixture {} missing", p.display());
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

/// The release-layout tiny model, loaded once per test binary.
pub fn release_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| LoadedModel::load(&model_dir(), None).expect("load the tiny release fixture"))
}

/// `max|a - b| / max|b|` over the whole tensors.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-30);
    diff / scale
}

/// `max|a - b|` of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// I64 tensor -> rows of u32.
pub fn id_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect()
}

/// Id lists of `ref.json[case][key]`.
pub fn ref_ids(case: &str, key: &str) -> Vec<Vec<u32>> {
    let v = &ref_json()[case][key];
    assert!(v.is_array(), "ref.json has no {case}.{key}");
    serde_json::from_value(v.clone()).unwrap()
}

pub const IMAGE_CASES: [&str; 5] = [
    "image0",
    "image1",
    "image2",
    "image3",
    "image_batch_1_2_leftpad",
];
pub const VIDEO_CASES: [&str; 2] = ["video0", "video1"];
pub const GREEDY_KEY: &str = "greedy_ids(min_len2,no_repeat2,max_new16)";
pub const PLAIN_GREEDY_KEY: &str = "greedy_plain_ids(max_new16)";
pub const BEAM_KEY: &str = "beam5_ids(len_pen-2,min_len2,no_repeat2,max_new16)";

use lynx_model::oracle::pipeline::{run_batch, GenerateRequest, VisionInput};
use lynx_worker::generation::{DecodingMode, GenerationParams};
use lynx_worker::vision::{self, PreprocessConfig, VisionLimits};

/// One line of the fixture's jsonl case lists.
#[derive(serde::Deserialize)]
struct CaseLine {
    question: String,
    image: Option<String>,
    video: Option<String>,
}

fn case_lines(file: &str) -> Vec<CaseLine> {
    let p = tiny().join("inputs").join(file);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The requests of a fixture case, built from the input files (our decoding, preprocessing and
/// prompt construction).
pub fn case_requests(m: &LoadedModel, case: &str) -> Vec<GenerateRequest> {
    let pre = PreprocessConfig {
        image_res: m.config.vision.image_res,
        mean: m.config.image_norm.mean,
        std: m.config.image_norm.std,
    };
    let limits = VisionLimits::default();
    let request = |line: &CaseLine| {
        // Paths in the jsonl resolve against the model dir, as in the official layout.
        let vision = if let Some(img) = &line.image {
            let bytes = std::fs::read(model_dir().join(img)).unwrap();
            VisionInput::Image(vision::preprocess(
                &vision::decode_image(&bytes, &limits).unwrap(),
                &pre,
            ))
        } else {
            let bytes = std::fs::read(model_dir().join(line.video.as_ref().unwrap())).unwrap();
            VisionInput::Video(
                vision::load_video_frames(&bytes, &limits, &pre, m.config.num_frames).unwrap(),
            )
        };
        GenerateRequest {
            vision,
            question: line.question.clone(),
        }
    };
    let images = case_lines("tiny_images.jsonl");
    let videos = case_lines("tiny_videos.jsonl");
    match case {
        "image_batch_1_2_leftpad" => vec![request(&images[1]), request(&images[2])],
        c if c.starts_with("image") => vec![request(&images[c[5..].parse::<usize>().unwrap()])],
        c => vec![request(&videos[c[5..].parse::<usize>().unwrap()])],
    }
}

/// Greedy (release processors) and beam-5 parameters with 16 new tokens, as in the fixtures.
pub fn fixture_params(m: &LoadedModel, mode: DecodingMode) -> GenerationParams {
    let mut p = GenerationParams::from_defaults(&m.config.generation, mode);
    p.max_new_tokens = 16;
    p
}

/// Full output sequences (BOS placeholder included) of `reqs`.
pub fn run_sequences(
    m: &LoadedModel,
    reqs: &[GenerateRequest],
    p: &GenerationParams,
) -> Vec<Vec<u32>> {
    let (results, _) = run_batch(m, reqs, p).unwrap();
    results.into_iter().map(|r| r.generated.sequence).collect()
}

/// The folder of the project's Python packages (`scripts/install-python-clients`, or
/// `LYNX_PYTHON_CLIENTS`) when `python3` can import every module of `imports` from it; `None`
/// (with the reason printed) when it cannot and `LYNX_REQUIRE_PYTHON_CLIENTS` is not set, which
/// makes the missing packages a failure.
pub fn python_packages(imports: &[&str]) -> Option<PathBuf> {
    let dir = std::env::var_os("LYNX_PYTHON_CLIENTS").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.tools/python-clients"
            ))
        },
        PathBuf::from,
    );
    let found = std::process::Command::new("python3")
        .env("PYTHONPATH", &dir)
        .args(["-c", &format!("import {}", imports.join(", "))])
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(dir);
    }
    assert!(
        std::env::var_os("LYNX_REQUIRE_PYTHON_CLIENTS").is_none(),
        "LYNX_REQUIRE_PYTHON_CLIENTS is set but {imports:?} cannot be imported from {}",
        dir.display()
    );
    eprintln!("skipped: {imports:?} not installed (scripts/install-python-clients)");
    None
}
