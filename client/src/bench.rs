//! `lynx bench`: at each concurrency, `--requests` streamed requests from that many concurrent
//! clients, mixing one image, two images, a video and text only, and three prompt lengths.
//! Prints requests/s, generated tokens/s, time to first token and latency percentiles, with the
//! speed-up over concurrency 1 (or the first level), and writes an SVG plot of latency against
//! concurrency.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use lynx_proto::v1::{self, generate_stream_response::Event};

use super::plot::{svg, Series};
use super::{connect, inputs, ClientError, ConnectArgs};

/// `bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    /// The worker.
    pub connect: ConnectArgs,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// Requests per level.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// New tokens per request (greedy).
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: u32,
    /// Every request gets images never sent before (no encoder-cache hits); by default images
    /// come from a pool of 8, as repeated images do in production.
    #[arg(long)]
    pub unique_images: bool,
    /// Where to write the SVG plot of latency against concurrency.
    #[arg(long, default_value = "lynx-bench.svg")]
    pub svg: PathBuf,
    /// No progress bar on stderr (there is none when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Goodput mode: each level runs this many seconds of closed-loop unary requests (refused
    /// ones sent again at once) and the table counts every answer by status.
    #[arg(long)]
    pub goodput_seconds: Option<f64>,
    /// The worker's `/metrics` URL (`http://host:port/metrics`): goodput mode reports its CPU
    /// time per OK answer and its peak resident memory.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Goodput mode: every request carries this image file instead of the generated mix.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Goodput mode: every request's instruction is this file's text instead of the mix.
    #[arg(long)]
    pub instruction_file: Option<PathBuf>,
}

/// Results of one concurrency level.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests answered.
    pub requests: usize,
    /// Wall-clock time of the level.
    pub wall: Duration,
    /// Generated tokens.
    pub tokens: u64,
    /// Time to first token per request, seconds.
    pub ttft: Vec<f64>,
    /// Latency per request, seconds.
    pub latency: Vec<f64>,
    /// Requests answered by each worker (its address, or the URL), sorted by worker.
    pub per_worker: Vec<(String, usize)>,
}

/// The `q` quantile (0..1) of `v` (nearest rank).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

const PROMPTS: [&str; 3] = [
    "What is in the image?",
    "Describe the scene in detail: the objects, their colours, and what is happening.",
    "You are a careful assistant. Look at the input, list everything you can recognise, then \
     explain what the situation most likely is and why, in a few sentences.",
];

/// Request `i` of a level (`salt` makes unique images unique across levels).
fn request_for(
    i: usize,
    salt: usize,
    args: &BenchArgs,
) -> Result<v1::GenerateRequest, ClientError> {
    let seed = |k: usize| -> u32 {
        let n = if args.unique_images {
            salt * 100_000 + i * 10 + k
        } else {
            (i + k) % 8
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    };
    let image = |k: usize| -> Result<v1::Image, ClientError> {
        Ok(v1::Image {
            data: inputs::synthetic_png(96 + (i % 3) as u32 * 32, 80, seed(k))?,
        })
    };
    let (images, video) = match i % 4 {
        0 => (vec![image(0)?], None),
        1 => (vec![image(0)?, image(1)?], None),
        2 => {
            let frames = (0..5)
                .map(|k| inputs::synthetic_png(64, 48, seed(k + 2)))
                .collect::<Result<Vec<_>, _>>()?;
            (Vec::new(), Some(v1::Video { frames }))
        }
        _ => (Vec::new(), None),
    };
    Ok(v1::GenerateRequest {
        images,
        video,
        instruction: PROMPTS[i % PROMPTS.len()].to_owned(),
        parameters: Some(v1::DecodingParameters {
            mode: v1::DecodingMode::Greedy as i32,
            max_new_tokens: Some(args.max_new_tokens),
            ..Default::default()
        }),
        priority: v1::Priority::Normal as i32,
        client_request_id: format!("bench-{i}"),
    })
}

struct Sample {
    ttft: f64,
    latency: f64,
    tokens: u64,
    worker: Arc<str>,
}

async fn one(
    workers: &connect::Workers,
    req: v1::GenerateRequest,
    args: &ConnectArgs,
) -> Result<Sample, ClientError> {
    let t0 = Instant::now();
    let mut label = None;
    let mut stream = connect::send(|| {
        let connect::Worker {
            label: l,
            mut client,
        } = workers.next();
        label = Some(l);
        let req = connect::request(req.clone(), args, None)?;
        Ok(async move { client.generate_stream(req).await })
    })
    .await??
    .into_inner();
    let label = label.ok_or_else(|| ClientError("no worker was asked".into()))?;
    let mut ttft = None;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(Event::Delta(_)) => {
                ttft.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            }
            Some(Event::Final(f)) => {
                let latency = t0.elapsed().as_secs_f64();
                return Ok(Sample {
                    ttft: ttft.unwrap_or(latency),
                    latency,
                    tokens: u64::from(f.usage.unwrap_or_default().completion_tokens),
                    worker: label,
                });
            }
            None => {}
        }
    }
    Err(ClientError("stream ended without a final message".into()))
}

fn progress(level: usize, done: usize, total: usize) {
    let width = 30;
    let filled = done * width / total.max(1);
    eprint!(
        "\rconcurrency {level:>4} [{}{}] {done}/{total}",
        "=".repeat(filled),
        " ".repeat(width - filled)
    );
    std::io::stderr().flush().ok();
}

async fn run_level(
    args: &BenchArgs,
    workers: &Arc<connect::Workers>,
    concurrency: usize,
    salt: usize,
) -> Result<Level, ClientError> {
    let requests = (0..args.requests)
        .map(|i| request_for(i, salt, args))
        .collect::<Result<Vec<_>, _>>()?;
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let workers = Arc::clone(workers);
        let (requests, next, done) = (Arc::clone(&requests), Arc::clone(&next), Arc::clone(&done));
        let connect_args = args.connect.clone();
        let show = !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = requests.get(i) else { break };
                samples.push(one(&workers, req.clone(), &connect_args).await?);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if show {
                    progress(concurrency, d, requests.len());
                }
            }
            Ok::<_, ClientError>(samples)
        }));
    }
    let mut samples = Vec::new();
    for w in tasks {
        let got = w
            .await
            .map_err(|e| ClientError(format!("a client task failed: {e}")))??;
        samples.extend(got);
    }
    if !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    Ok(Level {
        concurrency,
        requests: samples.len(),
        wall: t0.elapsed(),
        tokens: samples.iter().map(|s| s.tokens).sum(),
        ttft: samples.iter().map(|s| s.ttft).collect(),
        latency: samples.iter().map(|s| s.latency).collect(),
        per_worker: per_worker(&samples),
    })
}

fn per_worker(samples: &[Sample]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for s in samples {
        *counts.entry(&s.worker).or_default() += 1;
    }
    counts.into_iter().map(|(w, n)| (w.to_owned(), n)).collect()
}

/// Requests answered by each worker at each level, as a Markdown table.
pub fn worker_table(levels: &[Level]) -> String {
    let mut s = String::from("| concurrency | worker | requests |\n|---|---|---|\n");
    for l in levels {
        for (worker, n) in &l.per_worker {
            s.push_str(&format!("| {} | {worker} | {n} |\n", l.concurrency));
        }
    }
    s
}

/// The results as a Markdown table.
pub fn table(levels: &[Level]) -> String {
    let rps = |l: &Level| l.requests as f64 / l.wall.as_secs_f64().max(1e-9);
    let base = levels.first().map_or(1.0, rps);
    let mut s = String::from(
        "| concurrency | requests | req/s | tokens/s | TTFT p50 ms | latency p50 ms | p90 ms | p99 ms | speed-up |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for l in levels {
        let ms = |v: &[f64], q: f64| quantile(v, q) * 1e3;
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x |\n",
            l.concurrency,
            l.requests,
            rps(l),
            l.tokens as f64 / l.wall.as_secs_f64().max(1e-9),
            ms(&l.ttft, 0.5),
            ms(&l.latency, 0.5),
            ms(&l.latency, 0.9),
            ms(&l.latency, 0.99),
            rps(l) / base,
        ));
    }
    s
}

/// The requests of goodput mode: the generated mix, or one request of the given image and/or
/// instruction.
fn goodput_pool(args: &BenchArgs) -> Result<Vec<v1::GenerateRequest>, ClientError> {
    if args.image.is_none() && args.instruction_file.is_none() {
        return (0..64).map(|i| request_for(i, 0, args)).collect();
    }
    let mut req = request_for(3, 0, args)?;
    if let Some(path) = &args.image {
        req.images = vec![v1::Image {
            data: inputs::read(path)?,
        }];
    }
    if let Some(path) = &args.instruction_file {
        req.instruction = String::from_utf8(inputs::read(path)?)
            .map_err(|_| ClientError(format!("{} is not UTF-8", path.display())))?;
    }
    Ok(vec![req])
}

/// Runs `bench`.
pub async fn run(args: &BenchArgs) -> Result<(), ClientError> {
    if args.concurrency.is_empty() || args.requests == 0 {
        return Err(ClientError(
            "nothing to run: --concurrency and --requests".into(),
        ));
    }
    if let Some(seconds) = args.goodput_seconds {
        return super::goodput::run(args, seconds, goodput_pool(args)?).await;
    }
    if args.image.is_some() || args.instruction_file.is_some() {
        return Err(ClientError(
            "--image and --instruction-file need --goodput-seconds".into(),
        ));
    }
    let workers = connect::workers(&args.connect).await?;
    // One unmeasured request per worker so that connection set-up does not count.
    for _ in 0..workers.len() {
        one(&workers, request_for(3, 0, args)?, &args.connect).await?;
    }
    let mut levels = Vec::new();
    for (salt, &c) in args.concurrency.iter().enumerate() {
        levels.push(run_level(args, &workers, c, salt + 1).await?);
    }
    println!("{}", table(&levels));
    println!("{}", worker_table(&levels));
    let series = |name, colour, q: f64| Series {
        name,
        colour,
        points: levels
            .iter()
            .map(|l| (l.concurrency as f64, quantile(&l.latency, q) * 1e3))
            .collect(),
    };
    let chart = svg(
        "lynx bench: latency against concurrency",
        "concurrent clients",
        "latency (ms)",
        &[
            series("p50", "#1f77b4", 0.5),
            series("p90", "#ff7f0e", 0.9),
            series("p99", "#d62728", 0.99),
        ],
    );
    std::fs::write(&args.svg, chart)
        .map_err(|e| ClientError(format!("cannot write {}: {e}", args.svg.display())))?;
    eprintln!("plot: {}", args.svg.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.9), 90.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_table_reports_the_speed_up_over_the_first_level() {
        let level = |c, wall_ms| Level {
            concurrency: c,
            requests: 10,
            wall: Duration::from_millis(wall_ms),
            tokens: 100,
            ttft: vec![0.01; 10],
            latency: vec![0.1; 10],
            per_worker: vec![("10.0.0.1:50051".into(), 6), ("10.0.0.2:50051".into(), 4)],
        };
        let t = table(&[level(1, 1000), level(4, 250)]);
        assert!(t.contains("| 1 | 10 | 10.0 | 100 |"), "{t}");
        assert!(t.contains("| 4 | 10 | 40.0 | 400 |"), "{t}");
        assert!(t.contains("4.00x"), "{t}");
        let w = worker_table(&[level(4, 250)]);
        assert!(w.contains("| 4 | 10.0.0.1:50051 | 6 |"), "{w}");
        assert!(w.contains("| 4 | 10.0.0.2:50051 | 4 |"), "{w}");
    }
}
