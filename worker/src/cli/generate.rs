//! `lynx-worker generate`: one instruction about images, a video or nothing, from the shell. It
//! loads the model on the CPU serving backend and submits through the same in-process engine as
//! the server (the model thread of [`crate::runner`]): several images are several requests,
//! batched together by the scheduler, one result each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::device::load_cpu;
use super::{err, CliError, ModelArgs};
use crate::generation::{DecodingMode, GenerationParams};
use crate::metrics::Metrics;
use crate::prompt::prompt_token_ids;
use crate::runner::{self, Event, Finish, Finished, Job, Pixels, VisionItem};
use crate::vision::{self, PreprocessConfig, VisionLimits};

/// `generate` arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    /// Model selection.
    pub model: ModelArgs,
    /// Image file(s); several images run as one left-padded batch, one result each.
    #[arg(long, num_args = 1.., conflicts_with_all = ["video", "frames"])]
    pub image: Vec<PathBuf>,
    /// Video as the official JSON list of base64-encoded frames.
    #[arg(long, conflicts_with = "frames")]
    pub video: Option<PathBuf>,
    /// Video as frame image files, in order.
    #[arg(long, num_args = 1..)]
    pub frames: Vec<PathBuf>,
    /// The instruction (put into the YAML's prompt template).
    #[arg(long)]
    pub prompt: String,
    /// Decoding mode; `lynx` is the official release preset (beam sampling).
    #[arg(long, default_value = "lynx")]
    pub decoding: DecodingMode,
    /// Beams (beam and lynx modes; default: the YAML's).
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// New tokens at most (default: the YAML's).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Seed of the sampling modes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object per result instead of the text.
    #[arg(long)]
    pub json: bool,
}

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))
}

/// The vision inputs of the command line: one per image, or one video, or none.
fn vision_inputs(
    args: &GenerateArgs,
    pre: &PreprocessConfig,
    frames: usize,
) -> Result<Vec<Option<VisionItem>>, CliError> {
    let limits = VisionLimits::default();
    let with_path = |p: &Path, e: vision::VisionError| CliError(format!("{}: {e}", p.display()));
    let item = |bytes: &[u8], pixels: Pixels| VisionItem {
        key: Sha256::digest(bytes).into(),
        pixels,
    };
    if let Some(v) = &args.video {
        let bytes = read_file(v)?;
        let px =
            vision::load_video_frames(&bytes, &limits, pre, frames).map_err(|e| with_path(v, e))?;
        return Ok(vec![Some(item(&bytes, Pixels::Video(px)))]);
    }
    if !args.frames.is_empty() {
        let mut all = Vec::new();
        let mut px = Vec::new();
        for i in vision::sample_frame_ids(args.frames.len(), frames) {
            let p = &args.frames[i];
            let bytes = read_file(p)?;
            let img = vision::decode_image(&bytes, &limits).map_err(|e| with_path(p, e))?;
            px.push(vision::preprocess(&img, pre));
            all.extend_from_slice(&Sha256::digest(&bytes));
        }
        return Ok(vec![Some(item(&all, Pixels::Video(px)))]);
    }
    if args.image.is_empty() {
        return Ok(vec![None]);
    }
    args.image
        .iter()
        .map(|p| {
            let bytes = read_file(p)?;
            let img = vision::decode_image(&bytes, &limits).map_err(|e| with_path(p, e))?;
            Ok(Some(item(
                &bytes,
                Pixels::Image(vision::preprocess(&img, pre)),
            )))
        })
        .collect()
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos => "eos",
        Finish::Length => "length",
        Finish::Stop => "stop",
    }
}

/// Runs `generate`, writing the result(s) to `out`.
pub fn generate(args: &GenerateArgs, out: &mut impl Write) -> Result<(), CliError> {
    let serve = super::demo::serve_config()?;
    let sched = &serve.runner.scheduler;
    let t_load = Instant::now();
    let loaded = load_cpu(&args.model, sched.kv_blocks, sched.kv_block_size)?;
    let (model, backend) = (Arc::new(loaded.model), loaded.backend);
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let cfg = &model.config;
    let pre = PreprocessConfig {
        image_res: cfg.vision.image_res,
        mean: cfg.image_norm.mean,
        std: cfg.image_norm.std,
    };
    let inputs = vision_inputs(args, &pre, cfg.num_frames)?;
    let mut params = GenerationParams::from_defaults(&cfg.generation, args.decoding);
    if let Some(n) = args.max_new_tokens {
        params.max_new_tokens = n;
    }
    if let Some(n) = args.num_beams {
        if n == 0 {
            return Err(CliError("--num-beams must be at least 1".into()));
        }
        params.num_beams = n;
    }
    params.seed = args.seed;
    let prompt_ids = prompt_token_ids(&model.tokenizer, cfg, &args.prompt).map_err(err)?;
    let metrics = Metrics::new().map_err(err)?;
    let (engine, thread) =
        runner::spawn_any(Arc::clone(&model), backend, serve.runner.clone(), metrics)
            .map_err(err)?;
    let mut waiting = Vec::with_capacity(inputs.len());
    for vision in inputs {
        // Room for every event a request can send (no streaming: just the final one).
        let (tx, rx) = mpsc::channel(4);
        engine
            .submit(Job {
                prompt_ids: prompt_ids.clone(),
                vision: vision.into_iter().collect(),
                params: params.clone(),
                stop: Vec::new(),
                stream: false,
                wait_for_batch: true,
                priority: 0,
                deadline: None,
                received: Instant::now(),
                events: tx,
            })
            .map_err(err)?;
        waiting.push(rx);
    }
    drop(engine);
    let mut results: Vec<Finished> = Vec::with_capacity(waiting.len());
    for mut rx in waiting {
        loop {
            match rx.blocking_recv() {
                Some(Event::Done(done)) => {
                    results.push(done.map_err(err)?);
                    break;
                }
                Some(Event::Delta { .. }) => {}
                None => return Err(CliError("the model thread stopped".into())),
            }
        }
    }
    thread
        .join()
        .map_err(|_| CliError("the model thread panicked".into()))?;
    for r in results {
        if args.json {
            let t = r.timings;
            let obj = serde_json::json!({
                "model": cfg.model_name,
                "device": model.device,
                "decoding": args.decoding.to_string(),
                "prompt_token_ids": prompt_ids,
                "token_ids": r.token_ids,
                "text": r.text,
                "finish_reason": finish_reason(r.finish),
                "timings": {
                    "load_ms": load_ms,
                    "queue_ms": t.queue_ms,
                    "vision_ms": t.vision_ms,
                    "prefill_ms": t.prefill_ms,
                    "decode_ms": t.decode_ms,
                },
            });
            writeln!(out, "{obj}").map_err(err)?;
        } else {
            writeln!(out, "{}", r.text).map_err(err)?;
        }
    }
    Ok(())
}
