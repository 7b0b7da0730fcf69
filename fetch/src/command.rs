//! `lynx-worker fetch`: the flags, and the run that reports its outcome on stdout and in the
//! termination log.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::error::FetchError;
use crate::fetch::{fetch, wait, Converter, Outcome, Request};

/// Fetch a model into a folder (`s3://`, `gs://`, `http(s)://`, `hf://` or a local path),
/// verified, resumable, once for all concurrent fetchers.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Source: `s3://bucket/key-or-prefix`, `gs://bucket/key-or-prefix`, `http(s)://…` (a
    /// `.tar`, `.tar.gz` or `.tgz` archive is unpacked; any other file is stored under its name),
    /// `hf://org/repo[@revision]`, or an absolute local path.
    #[arg(long, env = "LYNX_MODEL_URI")]
    pub uri: String,
    /// Model folder to fill (created if absent). It also holds the marker `.lynx-model.json`,
    /// the lock `.lynx-fetch.lock` and, while fetching, `.lynx-partial/`.
    #[arg(long)]
    pub out: PathBuf,
    /// Pinned sha256 (64 hex digits, `sha256:` prefix allowed): of the archive or file, or, for
    /// a folder source, of its manifest (`sha256sum` lines of every file, sorted by path).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Endpoint of an S3-compatible store (plain `http://` allowed when given so) or of a
    /// Hugging Face hub mirror; default `AWS_ENDPOINT_URL` / `HF_ENDPOINT`, else the public one.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Convert the fetched release layout to the converted layout (memory-mapped, faster
    /// starts); the folder then holds the converted model itself.
    #[arg(long)]
    pub convert: bool,
    /// With `--convert`: the model folder inside the fetched tree (default: its root).
    #[arg(long, default_value = "")]
    pub model_path: String,
    /// Download nothing: wait until the folder holds this fetch (written by another process,
    /// such as the fetch Job). Works on a read-only mount.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up after this many seconds (0: wait forever).
    #[arg(long, default_value_t = 0)]
    pub wait_timeout_seconds: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 1.0)]
    pub progress_interval_seconds: f64,
    /// Also write the outcome as one JSON object to this file (Kubernetes reads
    /// `/dev/termination-log` into the container's terminated state).
    #[arg(long)]
    pub termination_log: Option<PathBuf>,
}

impl FetchArgs {
    fn request(&self) -> Request {
        Request {
            uri: self.uri.clone(),
            out: self.out.clone(),
            sha256: self.sha256.clone(),
            endpoint: self.endpoint.clone(),
            convert: self.convert,
            model_path: self.model_path.clone(),
            progress_every: Duration::from_secs_f64(self.progress_interval_seconds.max(0.05)),
        }
    }
}

/// Runs the command: prints the outcome as one JSON line on stdout and writes it (or the
/// failure `{"reason", "message"}`) to the termination log.
pub async fn run(args: &FetchArgs, convert: Option<&Converter>) -> Result<Outcome, FetchError> {
    let request = args.request();
    let result = if args.wait {
        let timeout =
            (args.wait_timeout_seconds > 0).then(|| Duration::from_secs(args.wait_timeout_seconds));
        wait(&request, Duration::from_secs(2), timeout).await
    } else {
        fetch(&request, convert).await
    };
    let report = match &result {
        Ok(outcome) => serde_json::to_value(outcome).unwrap_or_default(),
        Err(e) => json!({ "reason": e.reason(), "message": e.to_string() }),
    };
    if let Ok(outcome) = &result {
        println!("{}", json!(outcome));
    }
    if let Some(path) = &args.termination_log {
        if let Err(e) = std::fs::write(path, report.to_string()) {
            tracing::warn!(target: "lynx_fetch", "cannot write {}: {e}", path.display());
        }
    }
    result
}
