//! `gpu-bench --e2e`: the whole model timed end to end on a backend: vision stage throughput
//! (images and video frames), time to first token for one image, and decode throughput at
//! several batch sizes against the weight-streaming limit (LLM weight bytes read per step over
//! the copy bandwidth measured in the same run), with the token picked on the device as the
//! server does and, side by side, with the logits copied to the host.

use std::time::Instant;

use super::ops::Ops;
use super::vision::Pixels;
use super::{DeviceLynx, DeviceSession, ForwardError};
use crate::generation::{Next, Want};

/// What to time.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// Image batch sizes of the vision stage.
    pub image_batches: Vec<usize>,
    /// Videos in the video batch (x the model's frames each).
    pub videos: usize,
    /// Decode batch sizes.
    pub decode_batches: Vec<usize>,
    /// Timed decode steps per batch size.
    pub decode_steps: usize,
    /// Text tokens of each prompt (after the vision prefix).
    pub prompt_tokens: usize,
    /// Timed repetitions of the vision and TTFT measurements (the median is reported).
    pub iters: usize,
}

impl Default for E2eOptions {
    fn default() -> Self {
        Self {
            image_batches: vec![1, 8],
            videos: 8,
            decode_batches: vec![1, 8, 32, 64],
            decode_steps: 32,
            prompt_tokens: 24,
            iters: 5,
        }
    }
}

/// One measured row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct E2eRow {
    /// Stable id (the peer script matches on it).
    pub id: String,
    /// What was measured.
    pub shape: String,
    /// Unit of `value`.
    pub unit: &'static str,
    /// The rate or time.
    pub value: f64,
    /// Median milliseconds of one call (one decode step for decode rows).
    pub ms: f64,
    /// Batch size.
    pub batch: usize,
    /// Decode rows: the weight-streaming limit of one step, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_ms: Option<f64>,
    /// Decode rows: the limit as a share of the measured step time, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pct_of_limit: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed<F: FnMut() -> Result<(), ForwardError>>(
    iters: usize,
    mut f: F,
) -> Result<f64, ForwardError> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Bytes of LLM weights one decode step reads (every layer, the adapters, the final norm and
/// the LM head; the embedding table only by rows) at the backend's element size.
pub fn llm_step_bytes(m: &DeviceLynx<impl Ops>) -> f64 {
    let elem_bytes = m.ops().elem_bytes();
    let l = &m.config().llm;
    let per_layer = 4 * l.hidden * l.hidden + 3 * l.hidden * l.intermediate + 2 * l.hidden;
    let adapters = l.adapter_layers.len() * (2 * l.hidden * l.adapter_dim + 3 * l.hidden);
    ((l.layers * per_layer + adapters + l.hidden + l.vocab_size * l.hidden) * elem_bytes) as f64
}

/// Runs every measurement. `copy_gb_s` (device copy bandwidth, read + write) turns decode steps
/// into a share of the weight-streaming limit.
pub fn run<O: Ops>(
    m: &DeviceLynx<O>,
    opts: &E2eOptions,
    copy_gb_s: Option<f64>,
) -> Result<Vec<E2eRow>, ForwardError> {
    let cfg = m.config();
    let ops = m.ops();
    let res = cfg.vision.image_res as usize;
    let image_len = 3 * res * res;
    let pixels = |n: usize| -> Vec<f32> {
        (0..n * image_len)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let mut rows = Vec::new();
    let row = |id: String, shape: String, unit, value, ms, batch| E2eRow {
        id,
        shape,
        unit,
        value,
        ms,
        batch,
        limit_ms: None,
        pct_of_limit: None,
    };

    for &b in &opts.image_batches {
        let px = pixels(b);
        let ms = timed(opts.iters, || {
            m.encode_vision(Pixels {
                values: &px,
                sequences: b,
                frames: 1,
            })?;
            ops.synchronize()
        })?;
        rows.push(row(
            format!("vision-b{b}"),
            format!("ViT + resampler, {b} image(s) of {res} px"),
            "images/s",
            b as f64 / ms * 1e3,
            ms,
            b,
        ));
    }
    if opts.videos > 0 {
        let (v, f) = (opts.videos, cfg.num_frames);
        let px = pixels(v * f);
        let ms = timed(opts.iters, || {
            m.encode_vision(Pixels {
                values: &px,
                sequences: v,
                frames: f,
            })?;
            ops.synchronize()
        })?;
        rows.push(row(
            format!("vision-frames{}", v * f),
            format!("ViT + resampler, {v} videos x {f} frames"),
            "frames/s",
            (v * f) as f64 / ms * 1e3,
            ms,
            v * f,
        ));
    }

    // Prompts: BOS + ids cycling through the vocabulary (no pads).
    let vocab = cfg.llm.vocab_size as u32;
    let prompt = |rows: usize, len: usize| -> Vec<u32> {
        (0..rows)
            .flat_map(|r| {
                (0..len).map(move |t| {
                    if t == 0 {
                        cfg.tokens.bos
                    } else {
                        3 + ((r * 31 + t * 17) as u32 % (vocab - 3))
                    }
                })
            })
            .collect()
    };
    let one = pixels(1);
    let ids = prompt(1, opts.prompt_tokens);
    let ttft = || {
        timed(opts.iters, || {
            let prefix = m.encode_vision(Pixels {
                values: &one,
                sequences: 1,
                frames: 1,
            })?;
            let (_session, logits) = m.start_session(Some(&prefix), &ids, &[0], 1)?;
            if logits.len() != 1 {
                return Err(ForwardError::Shape("one row of logits expected".into()));
            }
            Ok(())
        })
    };
    let ms = ttft()?;
    let shape = format!(
        "1 image + {} prompt tokens -> first token logits",
        opts.prompt_tokens
    );
    rows.push(row("ttft-image".into(), shape.clone(), "ms", ms, ms, 1));
    // The same with the prefill filling the cache inside its attention pass, where the backend
    // can (side by side with the separate write above).
    if ops.set_prefill_fill(true) {
        let filled = ttft();
        ops.set_prefill_fill(false);
        let ms = filled?;
        let shape = format!("{shape}, cache filled in the attention pass");
        rows.push(row(
            "ttft-image-fill-in-pass".into(),
            shape,
            "ms",
            ms,
            ms,
            1,
        ));
    }

    let limit_ms = copy_gb_s.map(|bw| llm_step_bytes(m) / (bw * 1e6));
    // Text-only prompts as long as an image prompt (latents + text), so the cache is the same.
    let long = cfg.bridge.num_latents + opts.prompt_tokens;
    for &b in &opts.decode_batches {
        let ids = prompt(b, long);
        // As the server decodes greedy rows: the token picked on the device, only ids copied out;
        // then, on the same session, the full logits to the host and the pick there.
        let (mut session, first) = m.start_session(None, &ids, &vec![0; b], 1)?;
        let mut next: Vec<u32> = first.iter().map(|r| argmax(r)).collect();
        let wants = vec![Want::Argmax { banned: Vec::new() }; b];
        let steps = opts.decode_steps.max(1);
        let picked_step = |session: &mut DeviceSession<'_, O>, next: &[u32]| {
            let out = session.step_picking(next, &wants)?;
            Ok::<_, ForwardError>(
                out.iter()
                    .map(|n| match n {
                        Next::Token(t) => *t,
                        Next::Logits(row) => argmax(row),
                    })
                    .collect::<Vec<u32>>(),
            )
        };
        for _ in 0..2 {
            next = picked_step(&mut session, &next)?;
        }
        ops.synchronize()?;
        let t = Instant::now();
        for _ in 0..steps {
            next = picked_step(&mut session, &next)?;
        }
        ops.synchronize()?;
        let step_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let t = Instant::now();
        for _ in 0..steps {
            next = session
                .step_tokens(&next)?
                .iter()
                .map(|r| argmax(r))
                .collect();
        }
        ops.synchronize()?;
        let host_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let decode_row = |id: String, shape: String, ms: f64| {
            let mut r = row(id, shape, "tokens/s", b as f64 / ms * 1e3, ms, b);
            r.limit_ms = limit_ms;
            r.pct_of_limit = limit_ms.map(|l| 100.0 * l / ms);
            r
        };
        rows.push(decode_row(
            format!("decode-b{b}"),
            format!("decode, batch {b}, {long}-token context, token picked on the device"),
            step_ms,
        ));
        rows.push(decode_row(
            format!("step-host-logits-b{b}"),
            "the same decode with every row's logits copied to the host and picked there".into(),
            host_ms,
        ));
    }
    Ok(rows)
}

/// The first index of the row's maximum.
pub fn argmax(row: &[f32]) -> u32 {
    lynx_kernels::ops::argmax(row, row.len().max(1))
        .first()
        .copied()
        .unwrap_or(0)
}
