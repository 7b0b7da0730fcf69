//! CPU model benchmark: vision stage (ViT + resampler) ms per image, prefill ms and decode
//! tokens/s at batch 1 and 8, for the tiny fixture model and the generated ~150 M `small` model.
//!
//! Run: `cargo bench -p lynx-worker --bench model` (prints a Markdown table).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lynx_model::oracle::LoadedModel;
use lynx_model::oracle::VisionBatch;
use lynx_worker::embedded::{ensure_preset, Preset};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn params(m: &LoadedModel) -> usize {
    lynx_worker::checkpoint::expected_weights(&m.config)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

fn bench(name: &str, m: &LoadedModel, repeats: usize, steps: usize) {
    let res = m.config.vision.image_res as usize;
    let mut row = format!("| {name} | {:.1} M |", params(m) as f64 / 1e6);
    for b in [1usize, 8] {
        let px = Tensor::randn(0f32, 1.0, (b, 3, res, res), &Device::Cpu).unwrap();
        let input = VisionBatch::Images(px);
        m.model.encode_vision(&input).unwrap(); // warm-up
        let times: Vec<f64> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                m.model.encode_vision(&input).unwrap();
                t.elapsed().as_secs_f64() * 1e3 / b as f64
            })
            .collect();
        row += &format!(" {:.2} |", median(times));
    }
    for b in [1usize, 8] {
        let px = Tensor::randn(0f32, 1.0, (b, 3, res, res), &Device::Cpu).unwrap();
        let vision = m.model.encode_vision(&VisionBatch::Images(px)).unwrap();
        let ids = Tensor::ones((b, 20), DType::U32, &Device::Cpu).unwrap();
        let atts = Tensor::ones((b, 20), DType::U32, &Device::Cpu).unwrap();
        let prefill = m.model.prefill_inputs(Some(&vision), &ids, &atts).unwrap();
        let t = Instant::now();
        let (mut session, mut logits) = m.model.start_session(&prefill, 1).unwrap();
        let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        for _ in 0..steps {
            let next: Vec<u32> = logits
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i as u32)
                })
                .collect();
            logits = session.step(&next).unwrap();
        }
        let tps = (b * steps) as f64 / t.elapsed().as_secs_f64();
        row += &format!(" {prefill_ms:.1} | {tps:.1} |");
    }
    println!("{row}");
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("CPU, {threads} threads, f32; vision = ViT + resampler; decode = greedy steps with KV cache\n");
    println!("| model | params | vision ms/img (b=1) | vision ms/img (b=8) | prefill ms (b=1) | decode tok/s (b=1) | prefill ms (b=8) | decode tok/s (b=8) |");
    println!("|---|---|---|---|---|---|---|---|");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tiny/model");
    let tiny = LoadedModel::load(std::path::Path::new(fixture), None).unwrap();
    bench("tiny fixture", &tiny, 20, 64);
    let small_dir = ensure_preset(Preset::Small).unwrap();
    let small = LoadedModel::load(&small_dir, None).unwrap();
    bench("small (random)", &small, 3, 16);
}
