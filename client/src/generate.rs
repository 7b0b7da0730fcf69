//! `lynx generate`: one request, the answer streamed to stdout as it is decoded.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use lynx_proto::v1::{self, generate_stream_response::Event};
use lynx_proto::video::VideoLimits;

use super::{connect, inputs, ClientError, ConnectArgs};

/// Decoding modes as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Argmax.
    Greedy,
    /// Beam search.
    Beam,
    /// Seeded sampling.
    Sample,
    /// The model's release preset.
    Lynx,
}

impl From<Mode> for v1::DecodingMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Greedy => Self::Greedy,
            Mode::Beam => Self::Beam,
            Mode::Sample => Self::Sample,
            Mode::Lynx => Self::Lynx,
        }
    }
}

/// Priorities as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    /// Served after the others.
    Low,
    /// The default.
    Normal,
    /// Served first.
    High,
}

/// `generate` arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    /// The worker.
    pub connect: ConnectArgs,
    /// Image file(s), in order.
    #[arg(long, num_args = 1.., conflicts_with_all = ["video", "frames"])]
    pub image: Vec<PathBuf>,
    /// Video as the official JSON list of base64-encoded frames.
    #[arg(long, conflicts_with = "frames")]
    pub video: Option<PathBuf>,
    /// Video as frame image files, in order.
    #[arg(long, num_args = 1..)]
    pub frames: Vec<PathBuf>,
    /// The instruction.
    #[arg(long)]
    pub prompt: String,
    /// Decoding mode.
    #[arg(long, value_enum, default_value_t = Mode::Lynx)]
    pub decoding: Mode,
    /// New tokens at most (default: the model's).
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    /// Beams (beam and lynx modes).
    #[arg(long)]
    pub num_beams: Option<u32>,
    /// Sampling temperature.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sampling top-k.
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Sampling top-p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Scheduling priority.
    #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
    pub priority: PriorityArg,
    /// Deadline in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print the whole response as one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// The `lynx.v1` request `args` describe.
pub fn build_request(args: &GenerateArgs) -> Result<v1::GenerateRequest, ClientError> {
    let images = args
        .image
        .iter()
        .map(|p| {
            Ok(v1::Image {
                data: inputs::read(p)?,
            })
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    let video = if let Some(v) = &args.video {
        let frames = lynx_proto::video::frames_from_json(&inputs::read(v)?, &VideoLimits::NONE)
            .map_err(|e| ClientError(format!("{}: {e}", v.display())))?;
        Some(v1::Video { frames })
    } else if !args.frames.is_empty() {
        let frames = args
            .frames
            .iter()
            .map(|p| inputs::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        Some(v1::Video { frames })
    } else {
        None
    };
    let priority = match args.priority {
        PriorityArg::Low => v1::Priority::Low,
        PriorityArg::Normal => v1::Priority::Normal,
        PriorityArg::High => v1::Priority::High,
    };
    Ok(v1::GenerateRequest {
        images,
        video,
        instruction: args.prompt.clone(),
        parameters: Some(v1::DecodingParameters {
            mode: v1::DecodingMode::from(args.decoding) as i32,
            max_new_tokens: args.max_new_tokens,
            num_beams: args.num_beams,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
            stop: args.stop.clone(),
        }),
        priority: priority as i32,
        client_request_id: String::new(),
    })
}

fn finish_name(r: i32) -> &'static str {
    match v1::FinishReason::try_from(r) {
        Ok(v1::FinishReason::Eos) => "eos",
        Ok(v1::FinishReason::Length) => "length",
        Ok(v1::FinishReason::Stop) => "stop",
        _ => "unspecified",
    }
}

fn json(r: &v1::GenerateResponse) -> serde_json::Value {
    let usage = r.usage.unwrap_or_default();
    let t = r.timings.unwrap_or_default();
    serde_json::json!({
        "text": r.text,
        "token_ids": r.token_ids,
        "finish_reason": finish_name(r.finish_reason),
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "vision_tokens": usage.vision_tokens,
            "completion_tokens": usage.completion_tokens,
        },
        "timings": {
            "queue_ms": t.queue_ms,
            "vision_ms": t.vision_ms,
            "prefill_ms": t.prefill_ms,
            "decode_ms": t.decode_ms,
        },
    })
}

/// Runs `generate`.
pub async fn run(args: &GenerateArgs) -> Result<(), ClientError> {
    let req = build_request(args)?;
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let client = connect::client(&args.connect).await?;
    let out_err = |e: std::io::Error| ClientError(format!("cannot write: {e}"));
    let mut out = std::io::stdout().lock();
    let request = || connect::request(req.clone(), &args.connect, timeout);
    if args.json {
        let r = connect::send(|| {
            let (mut client, req) = (client.clone(), request()?);
            Ok(async move { client.generate(req).await })
        })
        .await??
        .into_inner();
        writeln!(out, "{}", json(&r)).map_err(out_err)?;
        return Ok(());
    }
    let mut stream = connect::send(|| {
        let (mut client, req) = (client.clone(), request()?);
        Ok(async move { client.generate_stream(req).await })
    })
    .await??
    .into_inner();
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(Event::Delta(d)) => {
                write!(out, "{}", d.text).map_err(out_err)?;
                out.flush().map_err(out_err)?;
            }
            Some(Event::Final(f)) => {
                writeln!(out).map_err(out_err)?;
                let u = f.usage.unwrap_or_default();
                eprintln!(
                    "[{}; {} prompt + {} vision tokens in, {} out]",
                    finish_name(f.finish_reason),
                    u.prompt_tokens,
                    u.vision_tokens,
                    u.completion_tokens
                );
            }
            None => {}
        }
    }
    Ok(())
}
