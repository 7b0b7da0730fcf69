//! The model-level comparison of a backend against the host mirror on the fixture's cases
//! (`lynx-worker gpu-check-model`): vision prefix and first-step logits (relative error), greedy
//! and beam-5 token ids (agreement rate, and whether they equal the official outputs). Generic
//! over the backend, so the harness itself is tested on the host.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::LynxConfig;
use crate::forward::host::HostOps;
use crate::forward::ops::Ops;
use crate::forward::vision::Pixels;
use crate::forward::{DeviceLynx, ForwardError};
use crate::generation::{generate, DecodeIds, DecodingMode, GenerationParams};

/// One fixture case: inputs plus the official token ids when known.
#[derive(Debug, Clone)]
pub struct Case {
    /// Case name (`image0`, `video1`, ...).
    pub name: String,
    /// Normalised pixels, sequence-major.
    pub pixels: Vec<f32>,
    /// Sequences.
    pub sequences: usize,
    /// Frames per sequence (1: images).
    pub frames: usize,
    /// Left-padded text ids, `[rows][text]`.
    pub ids: Vec<u32>,
    /// Leading pads per row.
    pub pads: Vec<usize>,
    /// Official greedy ids (min_length 2, no-repeat 2, 16 new tokens), when the fixture has them.
    pub official_greedy: Option<Vec<Vec<u32>>>,
    /// Official beam-5 ids, when the fixture has them.
    pub official_beam: Option<Vec<Vec<u32>>>,
}

/// The comparison of one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseReport {
    /// Case name.
    pub case: String,
    /// What ran the checked side.
    pub backend: String,
    /// Vision prefix, `max|a - b| / max|b|` against the host mirror.
    pub prefix_rel_err: f32,
    /// First-step logits of every row, same measure.
    pub logits_rel_err: f32,
    /// Share of greedy token positions equal to the host mirror's.
    pub greedy_agreement: f64,
    /// Share of beam-5 token positions equal to the host mirror's.
    pub beam_agreement: f64,
    /// Greedy ids equal the official outputs (`None`: not in the fixture).
    pub greedy_official: Option<bool>,
    /// Beam ids equal the official outputs.
    pub beam_official: Option<bool>,
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>, ForwardError> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(|e| ForwardError::Weights(e.to_string()))
}

/// Reads the cases of a fixture folder (`refs/ref_<case>.safetensors` + `refs/ref.json`).
pub fn fixture_cases(dir: &Path) -> Result<Vec<Case>, ForwardError> {
    let refs = dir.join("refs");
    let bad = |e: String| ForwardError::Weights(format!("fixture {}: {e}", refs.display()));
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(refs.join("ref.json")).map_err(|e| bad(e.to_string()))?,
    )
    .map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = std::fs::read_dir(&refs)
        .map_err(|e| bad(e.to_string()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("ref_")
                .and_then(|s| s.strip_suffix(".safetensors"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let ids_of = |case: &str, key: &str| -> Option<Vec<Vec<u32>>> {
        serde_json::from_value(json.get(case)?.get(key)?.clone()).ok()
    };
    let mut cases = Vec::new();
    for name in names {
        let t: HashMap<String, Tensor> = candle_core::safetensors::load(
            refs.join(format!("ref_{name}.safetensors")),
            &Device::Cpu,
        )
        .map_err(|e| bad(e.to_string()))?;
        let get = |k: &str| t.get(k).ok_or_else(|| bad(format!("{name} has no {k}")));
        let px = get("pixel_values")?;
        let (sequences, frames) = match px.dims() {
            [b, f, _, _, _] => (*b, *f),
            [b, _, _, _] => (*b, 1),
            d => return Err(bad(format!("{name}: pixel_values {d:?}"))),
        };
        let rows = |k: &str| -> Result<Vec<Vec<u32>>, ForwardError> {
            get(k)?
                .to_dtype(DType::I64)
                .and_then(|t| t.to_vec2::<i64>())
                .map(|r| {
                    r.into_iter()
                        .map(|r| r.into_iter().map(|v| v as u32).collect())
                        .collect()
                })
                .map_err(|e| bad(e.to_string()))
        };
        let (ids, atts) = (rows("input_ids")?, rows("input_atts")?);
        let pads = atts
            .iter()
            .map(|r| r.iter().take_while(|&&a| a == 0).count())
            .collect();
        cases.push(Case {
            official_greedy: ids_of(&name, "greedy_ids(min_len2,no_repeat2,max_new16)"),
            official_beam: ids_of(&name, "beam5_ids(len_pen-2,min_len2,no_repeat2,max_new16)"),
            name,
            pixels: to_vec(px)?,
            sequences,
            frames,
            ids: ids.concat(),
            pads,
        });
    }
    Ok(cases)
}

/// Cases made up for a model without a fixture (a generated architecture, whose head dims the
/// tensor-core kernels take): one image, a left-padded batch of two images, and a video when the
/// model takes frames; pixels and prompt ids drawn from `seed`; no official outputs.
pub fn synthetic_cases(cfg: &LynxConfig, seed: u64) -> Vec<Case> {
    use rand_chacha::rand_core::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let res = cfg.vision.image_res as usize;
    let mut pixels = |images: usize| -> Vec<f32> {
        (0..images * 3 * res * res)
            .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 3.0 - 1.5)
            .collect()
    };
    let t = &cfg.tokens;
    let special = [t.bos, t.eos, t.pad, t.unk];
    let vocab = cfg.llm.vocab_size as u32;
    let mut words = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let mut prompt = |len: usize, pads: usize| -> Vec<u32> {
        let mut row = vec![t.pad; pads];
        row.push(t.bos);
        while row.len() < pads + len {
            let id = words.next_u32() % vocab;
            if !special.contains(&id) {
                row.push(id);
            }
        }
        row
    };
    // (name, images, frames per image, rows of (prompt length, leading pads))
    let mut shapes = vec![
        ("random-image", 1, 1, vec![(12, 0)]),
        ("random-padded-batch", 2, 1, vec![(14, 0), (9, 5)]),
    ];
    if cfg.num_frames > 1 {
        shapes.push(("random-video", 1, cfg.num_frames, vec![(10, 0)]));
    }
    let mut cases = Vec::new();
    for (name, sequences, frames, rows) in shapes {
        cases.push(Case {
            name: name.to_string(),
            pixels: pixels(sequences * frames),
            sequences,
            frames,
            ids: rows
                .iter()
                .flat_map(|&(len, pads)| prompt(len, pads))
                .collect(),
            pads: rows.iter().map(|&(_, pads)| pads).collect(),
            official_greedy: None,
            official_beam: None,
        });
    }
    cases
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0f32, f32::max);
    d / b.iter().map(|y| y.abs()).fold(1e-30, f32::max)
}

fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> f64 {
    let (mut same, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        total += x.len().max(y.len());
        same += x.iter().zip(y).filter(|(p, q)| p == q).count();
    }
    if total == 0 {
        1.0
    } else {
        same as f64 / total as f64
    }
}

struct Outputs {
    prefix: Vec<f32>,
    logits: Vec<f32>,
    greedy: Vec<Vec<u32>>,
    beam: Vec<Vec<u32>>,
}

fn run<O: Ops>(m: &DeviceLynx<O>, case: &Case) -> Result<Outputs, ForwardError> {
    let cfg = m.config();
    let prefix = m.encode_vision(Pixels {
        values: &case.pixels,
        sequences: case.sequences,
        frames: case.frames,
    })?;
    let rows = case.pads.len();
    let special = DecodeIds {
        bos: cfg.tokens.bos,
        eos: cfg.tokens.eos,
        pad: cfg.tokens.pad,
    };
    let decode = |mode| -> Result<(Vec<Vec<u32>>, Vec<f32>), ForwardError> {
        let mut p = GenerationParams::from_defaults(&cfg.generation, mode);
        p.max_new_tokens = 16;
        let (mut session, first) =
            m.start_session(Some(&prefix), &case.ids, &case.pads, p.rows_per_request())?;
        let logits = first.concat();
        let out = generate(&mut session, first, rows, &p, special)
            .map_err(|e| ForwardError::Shape(e.to_string()))?;
        Ok((out.into_iter().map(|g| g.sequence).collect(), logits))
    };
    let (greedy, logits) = decode(DecodingMode::Greedy)?;
    let (beam, _) = decode(DecodingMode::Beam)?;
    Ok(Outputs {
        prefix: m.ops().download(&prefix)?,
        logits,
        greedy,
        beam,
    })
}

/// Runs every case on `device` and on the host mirror `reference`, and compares.
pub fn compare<O: Ops>(
    device: &DeviceLynx<O>,
    reference: &DeviceLynx<HostOps>,
    cases: &[Case],
) -> Result<Vec<CaseReport>, ForwardError> {
    let mut reports = Vec::new();
    for case in cases {
        let (d, r) = (run(device, case)?, run(reference, case)?);
        reports.push(CaseReport {
            case: case.name.clone(),
            backend: device.ops().describe(),
            prefix_rel_err: rel(&d.prefix, &r.prefix),
            logits_rel_err: rel(&d.logits, &r.logits),
            greedy_agreement: agreement(&d.greedy, &r.greedy),
            beam_agreement: agreement(&d.beam, &r.beam),
            greedy_official: case.official_greedy.as_ref().map(|o| *o == d.greedy),
            beam_official: case.official_beam.as_ref().map(|o| *o == d.beam),
        });
    }
    Ok(reports)
}
