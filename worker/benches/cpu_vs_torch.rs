//! Side-by-side CPU benchmark: our worker's model against PyTorch eager on the same weights,
//! shapes and inputs, with the same number of threads (2 by default), printed as a Markdown table.
//!
//! Run: `scripts/bench-cpu` (installs PyTorch into `.tools/torch`, validates the PyTorch port
//! against the official fixture outputs, then runs this), or by hand
//! `cargo bench -p lynx-worker --bench cpu_vs_torch`. Environment:
//! - `LYNX_BENCH_MODEL`: `small` (default; the generated ~148 M-parameter model), `tiny` (the
//!   generated tiny model, seconds), or the path of any model folder in the converted layout;
//! - `LYNX_BENCH_DEVICE`: our backend, as `serve --device` takes it: `cpu` (default), `mirror`
//!   (the slow host reference of the device program: tiny only), `cuda[:N]`;
//! - `LYNX_BENCH_THREADS` (default 2): rayon's pool on our side, `torch.set_num_threads` on theirs;
//! - `LYNX_BENCH_REPEATS` (default 5): timed repeats after one warm-up; each metric is a median;
//! - `LYNX_BENCH_ROUNDS` (default 1): the two sides run alternately this many times (fresh
//!   processes each), and each metric is the median over the rounds: on a shared machine, other
//!   work then skews both columns alike rather than whichever side it overlapped.
//!
//! Protocol, the same on both sides (PyTorch's in `worker/benches/torch_lynx.py`, run as
//! `python3 torch_lynx.py --model DIR --threads T --repeats N --json` with `PYTHONPATH=.tools/torch`):
//! - inputs: image `b` (b = 0..7) is already normalised, `[3][res][res]`, pixel at flat index `i` =
//!   `sin(0.001 * i + b)` computed in f64 (the C library's `sin`), then rounded to f32; the prompt
//!   is `[bos] + [min(5 + j, vocab - 1) for j in 0..20]`, the same on every row;
//! - a batch-1 request: vision (ViT + resampler, whose output is the projection into the LLM),
//!   prefill, then greedy decoding to 32 new tokens (the first from the prefill logits, then 31
//!   decode steps; argmax, lowest index on ties, no EOS stop); a batch-8 request: 8 images as one
//!   batch, 8 rows of 32 new tokens;
//! - metrics: vision ms per image at b=1 and b=8, prefill ms (b=1), decode ms per token (b=1, the
//!   31 steps' time / 31), the whole b=1 request (s), the whole batch of 8 (s), load time
//!   (reading the weights to ready, in-process) and peak RSS (each side runs in a fresh process:
//!   ours is this bench re-executed as a child, which reads its own `VmHWM` from
//!   `/proc/self/status` at the end; PyTorch's is `ru_maxrss` at the end, which includes what
//!   `import torch` maps, shown separately);
//! - the greedy ids of both sides at b=1 and b=8 are compared.
//!
//! Our side loads the model with `lynx_worker::cli::device::load_served` and drives it through the
//! [`Backend`] trait (`encode`, `start`, then `StepModel::step` on the session), the interface
//! the model thread uses on every backend. Without PyTorch (`scripts/install-torch`) the
//! table has our column only.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lynx_worker::backend::Backend;
use lynx_worker::cli::device::{load_served, DeviceArg, DeviceFlags};
use lynx_worker::cli::{EmbeddedArg, ModelArgs, StoreDtype};
use lynx_worker::config::LynxConfig;
use lynx_worker::embedded::{ensure_preset, Preset};
use lynx_worker::generation::StepModel;
use serde_json::{json, Value};

const NEW_TOKENS: usize = 32;
const PROMPT_LEN: u32 = 20;
const BATCH: usize = 8;
const KV_BLOCK: usize = 16;
/// The table's rows: label, JSON key (both sides), decimals.
const METRICS: [(&str, &str, usize); 8] = [
    (
        "vision ms/image, b=1 (ViT + resampler)",
        "vision_ms_per_image_b1",
        2,
    ),
    ("vision ms/image, b=8", "vision_ms_per_image_b8", 2),
    ("prefill ms, b=1", "prefill_ms_b1", 2),
    ("decode ms/token, b=1", "decode_ms_per_token_b1", 2),
    (
        "one request s (vision + prefill + 32 tokens), b=1",
        "one_request_s",
        3,
    ),
    ("batch of 8 images s (32 tokens each)", "batch8_s", 3),
    ("load s (weights read to ready, in-process)", "load_s", 3),
    ("peak RSS MiB (whole run)", "peak_rss_mib", 0),
];

/// Set in the child that runs our side.
const CHILD_ENV: &str = "LYNX_BENCH_CHILD";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_usize(name: &str, default: usize) -> usize {
    env_or(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a number"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Images `0..n`, each `[3][res][res]`: pixel `i` of image `b` = f32(sin(0.001 * i + b)).
fn bench_pixels(n: usize, res: usize) -> Vec<f32> {
    let per = 3 * res * res;
    (0..n)
        .flat_map(|b| (0..per).map(move |i| (0.001 * i as f64 + b as f64).sin() as f32))
        .collect()
}

/// `[bos] + [min(5 + j, vocab - 1) for j in 0..20]`.
fn bench_prompt(cfg: &LynxConfig) -> Vec<u32> {
    let last = cfg.llm.vocab_size.saturating_sub(1) as u32;
    std::iter::once(cfg.tokens.bos)
        .chain((0..PROMPT_LEN).map(|j| (5 + j).min(last)))
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One request of `rows` images: the greedy ids per row and the seconds of vision, prefill,
/// decode and the whole.
fn run_request<B: Backend>(
    d: &B,
    pixels: &[f32],
    rows: usize,
    prompt: &[u32],
) -> (Vec<Vec<u32>>, [f64; 4]) {
    let t0 = Instant::now();
    let prefixes = d.encode(pixels, rows, 1).expect("encode");
    let t1 = Instant::now();
    let parts: Vec<Vec<_>> = prefixes.iter().map(|p| vec![p]).collect();
    let prompts = vec![prompt.to_vec(); rows];
    let (mut session, logits) = d.start(&parts, &prompts, 1).expect("prefill");
    let mut next: Vec<u32> = logits.iter().map(|r| argmax(r)).collect();
    let t2 = Instant::now();
    let mut ids: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    for _ in 1..NEW_TOKENS {
        let logits = session.step(&next).expect("decode step");
        next = logits.iter().map(|r| argmax(r)).collect();
        for (row, &t) in ids.iter_mut().zip(&next) {
            row.push(t);
        }
    }
    let t3 = Instant::now();
    drop(session);
    let s = |a: Instant, b: Instant| (b - a).as_secs_f64();
    (ids, [s(t0, t1), s(t1, t2), s(t2, t3), s(t0, t3)])
}

/// `VmHWM` (peak resident set) of this process, MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Timed runs of the protocol: one warm-up of each, then `repeats` of the batch-1 request and
/// `repeats` of the batch-8 one. The medians and the last run's ids, as JSON fields.
fn protocol<B: Backend>(d: &B, cfg: &LynxConfig, repeats: usize) -> Value {
    let res = cfg.vision.image_res as usize;
    let prompt = bench_prompt(cfg);
    let (px1, px8) = (bench_pixels(1, res), bench_pixels(BATCH, res));
    run_request(d, &px1, 1, &prompt);
    run_request(d, &px8, BATCH, &prompt);
    let r1: Vec<_> = (0..repeats)
        .map(|_| run_request(d, &px1, 1, &prompt))
        .collect();
    let r8: Vec<_> = (0..repeats)
        .map(|_| run_request(d, &px8, BATCH, &prompt))
        .collect();
    let med = |runs: &[(Vec<Vec<u32>>, [f64; 4])], phase: usize| {
        median(runs.iter().map(|(_, t)| t[phase]).collect())
    };
    json!({
        "vision_ms_per_image_b1": med(&r1, 0) * 1e3,
        "vision_ms_per_image_b8": med(&r8, 0) * 1e3 / BATCH as f64,
        "prefill_ms_b1": med(&r1, 1) * 1e3,
        "decode_ms_per_token_b1": med(&r1, 2) * 1e3 / (NEW_TOKENS - 1) as f64,
        "one_request_s": med(&r1, 3),
        "batch8_s": med(&r8, 3),
        "ids_b1": r1.last().map(|r| r.0[0].clone()),
        "ids_b8": r8.last().map(|r| r.0.clone()),
    })
}

/// Our side, in the child process: loads `dir` on `device` with `load_served` (what `serve`
/// does), runs the protocol, returns one JSON object.
fn ours(dir: &Path, device: &str, threads: usize, repeats: usize) -> Value {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let rss_start = peak_rss_mib();
    let device_arg: DeviceArg = device.parse().expect("LYNX_BENCH_DEVICE");
    let cfg = LynxConfig::from_json_file(&dir.join("lynx.json")).expect("lynx.json");
    let tokens = cfg.bridge.num_latents + PROMPT_LEN as usize + 1 + NEW_TOKENS;
    let blocks = BATCH * tokens.div_ceil(KV_BLOCK);
    let model = ModelArgs {
        model: Some(dir.to_owned()),
        config: None,
        embedded: EmbeddedArg::Tiny,
    };
    let flags = DeviceFlags {
        device: device_arg,
        random_weights: None,
    };
    let t = Instant::now();
    let loaded = load_served(&model, &flags, StoreDtype::F32, blocks, KV_BLOCK).expect("load");
    let load_s = t.elapsed().as_secs_f64();
    let mut v = lynx_worker::with_backend!(&loaded.backend, b => protocol(b, &cfg, repeats));
    let extra = json!({
        "device": loaded.model.device,
        "threads": threads,
        "load_s": load_s,
        "rss_start_mib": rss_start,
        "peak_rss_mib": peak_rss_mib(),
    });
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    v
}

/// Runs this executable again as the child that measures our side; its JSON, or why not.
fn run_ours(dir: &Path, device: &str) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .env(CHILD_ENV, dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "our side (--device {device}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("our side's output: {e}"))
}

/// PyTorch's side, or why it did not run.
fn run_torch(dir: &Path, threads: usize, repeats: usize) -> Result<Value, String> {
    let root = repo_root();
    let site = root.join(".tools/torch");
    let missing = format!(
        "PyTorch is not installed: run `scripts/install-torch` (it installs into {}), or \
         `scripts/bench-cpu` for everything",
        site.display()
    );
    let probe = Command::new("python3")
        .env("PYTHONPATH", &site)
        .args(["-c", "import torch, safetensors"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return Err(missing);
    }
    let out = Command::new("python3")
        .env("PYTHONPATH", &site)
        .arg(root.join("worker/benches/torch_lynx.py"))
        .arg("--model")
        .arg(dir)
        .args(["--threads", &threads.to_string()])
        .args(["--repeats", &repeats.to_string(), "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "torch_lynx.py failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("torch_lynx.py output: {e}"))
}

/// The 1-minute load average (other work on the machine skews both columns).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The rounds of one side as one result: each metric the median over the rounds, everything else
/// (ids, device, versions) from the last round.
fn combine(runs: &[Value]) -> Option<Value> {
    let mut out = runs.last()?.clone();
    if let Some(obj) = out.as_object_mut() {
        for key in METRICS.iter().map(|(_, k, _)| *k) {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.get(key)?.as_f64()).collect();
            if !values.is_empty() {
                obj.insert(key.to_owned(), json!(median(values)));
            }
        }
    }
    Some(out)
}

fn num(v: Option<&Value>, key: &str) -> Option<f64> {
    v?.get(key)?.as_f64()
}

/// First row/token where the two greedy id sets differ, or None when identical.
fn first_difference(a: &Value, b: &Value) -> Option<String> {
    let rows = |v: &Value| -> Vec<Vec<u64>> {
        match v.as_array() {
            Some(a) if a.first().is_some_and(Value::is_array) => a
                .iter()
                .map(|r| {
                    r.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_u64)
                        .collect()
                })
                .collect(),
            Some(a) => vec![a.iter().filter_map(Value::as_u64).collect()],
            None => Vec::new(),
        }
    };
    let (a, b) = (rows(a), rows(b));
    if a == b {
        return None;
    }
    if a.len() != b.len() {
        return Some(format!("{} rows vs {}", a.len(), b.len()));
    }
    for (r, (x, y)) in a.iter().zip(&b).enumerate() {
        if let Some(t) = (0..x.len().max(y.len())).find(|&t| x.get(t) != y.get(t)) {
            return Some(format!("row {r}, from new token {t}"));
        }
    }
    None
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let v = ours(
            Path::new(&dir),
            &env_or("LYNX_BENCH_DEVICE", "cpu"),
            env_usize("LYNX_BENCH_THREADS", 2),
            env_usize("LYNX_BENCH_REPEATS", 5),
        );
        println!("{v}");
        return;
    }
    let which = env_or("LYNX_BENCH_MODEL", "small");
    let device = env_or("LYNX_BENCH_DEVICE", "cpu");
    let threads = env_usize("LYNX_BENCH_THREADS", 2);
    let repeats = env_usize("LYNX_BENCH_REPEATS", 5).max(1);
    let rounds = env_usize("LYNX_BENCH_ROUNDS", 1).max(1);
    let dir = match which.as_str() {
        "tiny" => ensure_preset(Preset::Tiny).expect("tiny preset"),
        "small" => ensure_preset(Preset::Small).expect("small preset"),
        path => PathBuf::from(path),
    };
    let cfg = LynxConfig::from_json_file(&dir.join("lynx.json")).expect("a converted model folder");
    let params: usize = lynx_worker::checkpoint::expected_weights(&cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let mut notes = Vec::new();
    let load_before = load_average();
    let mut ours_ok = if device == "mirror" && which != "tiny" {
        notes.push(format!(
            "--device mirror is the slow host reference: our side runs it on LYNX_BENCH_MODEL=tiny \
             only, not on {which}"
        ));
        false
    } else {
        true
    };
    let mut torch_ok = true;
    let (mut ours_runs, mut torch_runs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        if ours_ok {
            eprintln!(
                "round {round}/{rounds}: our side (--device {device}) on {}",
                dir.display()
            );
            match run_ours(&dir, &device) {
                Ok(v) => ours_runs.push(v),
                Err(e) => {
                    ours_ok = false;
                    notes.push(e);
                }
            }
        }
        if torch_ok {
            eprintln!("round {round}/{rounds}: PyTorch on {}", dir.display());
            match run_torch(&dir, threads, repeats) {
                Ok(v) => torch_runs.push(v),
                Err(e) => {
                    torch_ok = false;
                    notes.push(e);
                }
            }
        }
    }
    let (ours, torch) = (combine(&ours_runs), combine(&torch_runs));

    let load_after = load_average();
    let (o, t) = (ours.as_ref(), torch.as_ref());
    let ours_name = o
        .and_then(|v| v.get("device")?.as_str().map(|d| format!("ours ({d})")))
        .unwrap_or_else(|| format!("ours (--device {device})"));
    let torch_name = t
        .and_then(|v| {
            v.get("torch")?
                .as_str()
                .map(|v| format!("PyTorch {v} eager"))
        })
        .unwrap_or_else(|| "PyTorch eager".into());
    println!(
        "\n{} ({:.1} M parameters, f32, {}x{} px, {} latents), {threads} threads each, \
         median of {repeats} after one warm-up{}; prompt 21 ids, {NEW_TOKENS} greedy new tokens, \
         no EOS stop\n",
        cfg.model_name,
        params as f64 / 1e6,
        cfg.vision.image_res,
        cfg.vision.image_res,
        cfg.bridge.num_latents,
        if rounds > 1 {
            format!(", then the median of {rounds} alternating rounds")
        } else {
            String::new()
        },
    );
    println!("| metric | {torch_name} | {ours_name} | ours faster by |");
    println!("|---|---|---|---|");
    for (label, key, prec) in METRICS {
        let (tv, ov) = (num(t, key), num(o, key));
        let cell = |v: Option<f64>| v.map_or("—".to_owned(), |x| format!("{x:.prec$}"));
        let ratio = match (tv, ov) {
            (Some(a), Some(b)) if b > 0.0 => {
                let unit = if key == "peak_rss_mib" { " less" } else { "" };
                format!("{:.2}x{unit}", a / b)
            }
            _ => "—".into(),
        };
        println!("| {label} | {} | {} | {ratio} |", cell(tv), cell(ov));
    }
    println!();
    if let (Some(o), Some(t)) = (o, t) {
        for (b, key) in [(1, "ids_b1"), (8, "ids_b8")] {
            match (o.get(key), t.get(key)) {
                (Some(x), Some(y)) => match first_difference(x, y) {
                    None => println!("greedy ids at b={b}: identical"),
                    Some(d) => println!("greedy ids at b={b}: DIFFERENT ({d})"),
                },
                _ => println!("greedy ids at b={b}: missing"),
            }
        }
    }
    if let Some(t) = t {
        println!(
            "PyTorch: `import torch` took {:.1} s and {:.0} MiB of the peak RSS (the wheel's \
             libraries), before the weights; ru_maxrss of its process at the end.",
            num(Some(t), "import_s").unwrap_or(f64::NAN),
            num(Some(t), "rss_after_import_mib").unwrap_or(f64::NAN),
        );
    }
    if let Some(o) = o {
        println!(
            "Ours: VmHWM of a fresh process of this bench at the end ({:.0} MiB before loading).",
            num(Some(o), "rss_start_mib").unwrap_or(f64::NAN),
        );
    }
    println!(
        "Machine: {} CPUs, 1-minute load average {load_before} before and {load_after} after \
         (anything else running skews the timings).",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for n in notes {
        println!("note: {n}");
    }
}
