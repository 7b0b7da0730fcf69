//! `lynx-worker serve`: flags (each `--long` with an env var; the operator passes these names),
//! and the process around [`crate::serve::Server`]: tokio runtime, SIGTERM / Ctrl-C -> drain.

use std::sync::{Arc, Once};
use std::time::Duration;

use clap::Args;
pub use lynx_serve_flags::DEFAULT_SERVING_NICENESS;
use lynx_serve_flags::{Dtype, Layout, ServeFlags};

use super::device::{DeviceArg, DeviceFlags};
use super::{CliError, StoreDtype};
use crate::checkpoint::converted::is_converted;
use crate::config::presets::Preset;
use crate::runner::RunnerConfig;
use crate::scheduler::SchedulerConfig;
use crate::serve::limits::Limits;
use crate::serve::prepare::PrepareConfig;
use crate::serve::priority;
use crate::serve::{ServeConfig, Server, TlsFiles};

/// `serve` arguments: the server's flags, shared with the operator that renders them, and the
/// benchmark-only `--random-weights`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model, layout, dtype, device, listeners, batching, limits, security and lifecycle.
    #[command(flatten)]
    pub flags: ServeFlags,
    /// Serve a randomly initialised architecture (`lynx-7b`, `small`, `tiny`) made directly on
    /// the device instead of a model directory (benchmarks; the toy tokenizer is used).
    #[arg(long, env = "LYNX_RANDOM_WEIGHTS")]
    pub random_weights: Option<Preset>,
}

impl From<Dtype> for StoreDtype {
    fn from(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => Self::F32,
            Dtype::F16 => Self::F16,
            Dtype::Bf16 => Self::Bf16,
        }
    }
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl ServeArgs {
    /// The server configuration these flags describe (reads the tokens file).
    pub fn config(&self) -> Result<ServeConfig, CliError> {
        let f = &self.flags;
        let (b, l, p, s) = (&f.batching, &f.limits, &f.preparation, &f.security);
        let mut auth_tokens = Vec::new();
        if let Some(path) = &s.auth_tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
            auth_tokens = lynx_proto::tokens_file::parse(&text);
            if auth_tokens.is_empty() {
                return Err(CliError(format!("{} holds no token", path.display())));
            }
        }
        auth_tokens.extend(s.auth_token.iter().map(|t| t.trim().to_owned()));
        if auth_tokens.iter().any(String::is_empty) {
            return Err(CliError("--auth-token is empty".into()));
        }
        let mut limits = Limits {
            max_image_bytes: usize_of(l.max_image_bytes),
            max_image_pixels: l.max_image_pixels,
            max_images_per_request: usize_of(l.max_images_per_request),
            max_video_frames: usize_of(l.max_video_frames),
            max_prompt_tokens: usize_of(l.max_prompt_tokens),
            max_prompt_bytes: usize_of(l.max_prompt_bytes),
            max_request_bytes: 0,
            max_new_tokens: usize_of(l.max_new_tokens),
            max_stop_strings: usize_of(l.max_stop_strings),
        };
        limits.max_request_bytes = l
            .max_request_bytes
            .map_or_else(|| limits.request_bytes_for(), usize_of);
        let block = usize_of(b.kv_block_size).max(1);
        let budget = usize_of(b.max_batch_total_tokens);
        let batch = usize_of(b.max_batch_size).max(1);
        // Every sequence rounds up to whole blocks: one spare block per possible sequence.
        let default_blocks = budget.div_ceil(block).saturating_add(batch);
        Ok(ServeConfig {
            grpc_addr: f.listeners.grpc_addr,
            http_addr: f.listeners.http_addr,
            runner: RunnerConfig {
                scheduler: SchedulerConfig {
                    max_batch_size: batch,
                    max_batch_delay: Duration::from_millis(b.max_batch_delay_ms),
                    max_batch_total_tokens: budget,
                    max_queue: usize_of(b.max_queue),
                    kv_block_size: block,
                    kv_blocks: b.kv_cache_blocks.map_or(default_blocks, usize_of),
                    ageing: Duration::from_millis(b.priority_ageing_ms),
                },
                encoder_cache_bytes: usize_of(b.encoder_cache_mib.saturating_mul(1 << 20)),
            },
            limits,
            prepare: PrepareConfig {
                threads: p
                    .prepare_threads
                    .map_or_else(|| PrepareConfig::default().threads, usize_of),
                memory_bytes: p.prepare_memory_mib.saturating_mul(1 << 20),
                max_incoming: usize_of(p.max_incoming_requests),
            },
            drain_timeout: Duration::from_secs(f.lifecycle.drain_timeout_seconds),
            tls: match (&s.tls_cert, &s.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            auth_tokens,
            image_url_hosts: s.image_url_hosts.clone(),
            max_connection_age: (f.lifecycle.max_connection_age_seconds > 0)
                .then(|| Duration::from_secs(f.lifecycle.max_connection_age_seconds)),
            max_connection_age_grace: Duration::from_secs(
                f.lifecycle.max_connection_age_grace_seconds,
            ),
        })
    }
}

/// Resolves when the process gets SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
                tokio::signal::ctrl_c().await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok();
    }
    tracing::info!("shutdown signal received");
}

/// Runs `serve` until SIGTERM, then drains and returns.
pub fn serve(args: &ServeArgs) -> Result<(), CliError> {
    let flags = &args.flags;
    if let (Some(dir), Layout::Release | Layout::Converted) = (&flags.model.model, flags.layout) {
        let converted = is_converted(dir);
        if converted != (flags.layout == Layout::Converted) {
            let wanted = if converted { "release" } else { "converted" };
            return Err(CliError(format!(
                "--layout {wanted} does not match {} ({} layout)",
                dir.display(),
                if converted { "converted" } else { "release" }
            )));
        }
    }
    if flags.dtype != Dtype::F32 && flags.device == DeviceArg::Cpu {
        tracing::info!(dtype = ?flags.dtype, "the CPU model computes in f32");
    }
    let cfg = args.config()?;
    let model_args = flags.model.clone();
    let device = DeviceFlags {
        device: flags.device,
        random_weights: args.random_weights,
    };
    let dtype = StoreDtype::from(flags.dtype);
    let (kv_blocks, kv_block_size) = (
        cfg.runner.scheduler.kv_blocks,
        cfg.runner.scheduler.kv_block_size,
    );
    // The compute pool and (from `block_on`'s future, on this thread) the model thread keep
    // this thread's priority; the runtime's threads lower theirs as they start.
    priority::start_compute_pool(0).map_err(|e| CliError(e.to_string()))?;
    let niceness = flags.preparation.serving_niceness;
    let warned = Arc::new(Once::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lynx-serving")
        .on_thread_start(move || {
            if let Err(e) = priority::lower_current_thread_priority(niceness) {
                warned.call_once(
                    || tracing::warn!(error = %e, "serving threads keep the model's priority"),
                );
            }
        })
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let server = Server::bind(cfg)
            .await
            .map_err(|e| CliError(e.to_string()))?;
        tracing::info!(grpc_addr = %server.grpc_addr(), http_addr = %server.http_addr(), "bound");
        let load = move || {
            super::device::load_served(&model_args, &device, dtype, kv_blocks, kv_block_size)
                .map_err(|e| e.0)
        };
        server
            .run(load, shutdown_signal())
            .await
            .map_err(|e| CliError(e.to_string()))
    });
    // Blocking tasks (a model load cut short by the signal) do not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde::Deserialize;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("lynx-worker").chain(args.iter().copied()))?;
        match cli.command {
            Command::Serve(a) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Every flag the operator passes (`operator/src/desired/deployment.rs`, `worker_args`).
    #[test]
    fn accepts_the_operator_arguments() {
        let args = parse(&[
            "serve",
            "--model",
            "/models",
            "--layout",
            "release",
            "--dtype",
            "bf16",
            "--device",
            "cuda",
            "--grpc-addr",
            "0.0.0.0:50051",
            "--http-addr",
            "0.0.0.0:9090",
            "--max-batch-size",
            "8",
            "--max-batch-delay-ms",
            "7",
            "--max-batch-total-tokens",
            "4096",
            "--max-queue",
            "64",
            "--max-image-bytes",
            "1000",
            "--max-image-pixels",
            "2000",
            "--max-images-per-request",
            "3",
            "--max-video-frames",
            "9",
            "--max-prompt-tokens",
            "100",
            "--max-new-tokens",
            "50",
            "--drain-timeout-seconds",
            "12",
            "--tls-cert",
            "/etc/lynx/tls/tls.crt",
            "--tls-key",
            "/etc/lynx/tls/tls.key",
        ])
        .expect("the operator's arguments parse");
        let cfg = args.config().expect("config");
        let s = &cfg.runner.scheduler;
        assert_eq!(
            (
                s.max_batch_size,
                s.max_batch_delay,
                s.max_batch_total_tokens,
                s.max_queue
            ),
            (8, Duration::from_millis(7), 4096, 64)
        );
        let l = &cfg.limits;
        assert_eq!(
            (
                l.max_image_bytes,
                l.max_image_pixels,
                l.max_images_per_request
            ),
            (1000, 2000, 3)
        );
        assert_eq!(
            (l.max_video_frames, l.max_prompt_tokens, l.max_new_tokens),
            (9, 100, 50)
        );
        assert_eq!(cfg.drain_timeout, Duration::from_secs(12));
        assert_eq!(args.flags.layout, Layout::Release);
        assert_eq!(args.flags.device, DeviceArg::Cuda(0));
        assert_eq!(cfg.grpc_addr.port(), 50051);
        assert!(cfg.tls.is_some());
    }

    /// The `lynx-worker serve` args of each worker container in the operator's golden
    /// manifests (`operator/tests/golden`), by file.
    fn golden_worker_args() -> Vec<(String, Vec<String>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/tests/golden");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("golden manifests") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read golden");
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let doc = serde_yaml_ng::Value::deserialize(doc).expect("YAML");
                let containers = &doc["spec"]["template"]["spec"]["containers"];
                for c in containers.as_sequence().into_iter().flatten() {
                    let args: Vec<String> =
                        serde_yaml_ng::from_value(c["args"].clone()).unwrap_or_default();
                    if c["command"][0].as_str() == Some("lynx-worker")
                        && args.first().map(String::as_str) == Some("serve")
                    {
                        found.push((path.display().to_string(), args));
                    }
                }
            }
        }
        found
    }

    /// What the operator renders for its sample LynxDeployments, `serve` parses; rendered again
    /// from the parsed flags, it parses to the same flags.
    #[test]
    fn accepts_the_operators_golden_deployments() {
        let goldens = golden_worker_args();
        assert!(goldens.len() >= 5, "{goldens:?}");
        for (file, args) in goldens {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let parsed = parse(&refs).unwrap_or_else(|e| panic!("{file}: {e}"));
            let flags = &parsed.flags;
            let model = flags.model.model.as_ref().expect("--model");
            assert!(model.starts_with("/models"), "{file}");
            assert_eq!(flags.device, DeviceArg::Cuda(0), "{file}");
            assert_ne!(flags.layout, Layout::Auto, "{file}");
            assert_eq!(flags.listeners.grpc_addr.port(), 50051, "{file}");
            let mut again = vec!["serve".to_owned()];
            again.extend(flags.to_args());
            let refs: Vec<&str> = again.iter().map(String::as_str).collect();
            assert_eq!(
                &parse(&refs).expect("rendered again").flags,
                flags,
                "{file}"
            );
        }
    }

    #[test]
    fn tls_needs_both_files_and_limits_reject_zero() {
        assert!(parse(&["serve", "--tls-cert", "a.crt"]).is_err());
        assert!(parse(&["serve", "--max-batch-size", "0"]).is_err());
        assert!(parse(&["serve", "--max-new-tokens", "0"]).is_err());
    }

    #[test]
    fn tokens_come_from_the_file_and_the_flag() {
        let dir = std::env::temp_dir().join(format!("lynx-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("tokens");
        std::fs::write(&file, "# comment\na\n\nb\n").expect("write");
        let path = file.to_str().expect("utf-8 path");
        let args =
            parse(&["serve", "--auth-tokens-file", path, "--auth-token", "c"]).expect("parse");
        assert_eq!(args.config().expect("config").auth_tokens, ["a", "b", "c"]);
        std::fs::write(&file, "# only a comment\n").expect("write");
        let args = parse(&["serve", "--auth-tokens-file", path]).expect("parse");
        assert!(
            args.config().is_err(),
            "a tokens file without tokens is an error"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
