//! `lynx-router` flags (each `--long` with an env var; the operator passes these names).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lynx_proto::target::Target;

use crate::fleet::FleetConfig;
use crate::policy::{PickerConfig, Policy};
use crate::route::HoldConfig;
use crate::server::RouterConfig;

/// One address in front of many Lynx workers: lynx.v1 gRPC and the OpenAI-compatible API,
/// routed by load and image affinity, held while no worker is ready.
#[derive(Debug, Parser)]
#[command(name = "lynx-router", version)]
pub struct RouterArgs {
    /// The workers: `dns:///host:port` (a headless Service: every ready pod), `ipv4:a:port,...`,
    /// or one `http://host:port`.
    #[arg(long, env = "LYNX_ROUTER_WORKERS")]
    pub workers: String,
    /// The workers' HTTP port (OpenAI API, /metrics, /readyz).
    #[arg(long, env = "LYNX_ROUTER_WORKER_HTTP_PORT", default_value_t = 9090)]
    pub worker_http_port: u16,
    /// gRPC listen address (lynx.v1.Lynx).
    #[arg(long, env = "LYNX_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (OpenAI API, /metrics, /healthz, /readyz).
    #[arg(long, env = "LYNX_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: SocketAddr,
    /// Routing policy: least-load-affinity, least-load or round-robin.
    #[arg(long, env = "LYNX_ROUTER_POLICY", default_value_t = Policy::LeastLoadAffinity)]
    pub policy: Policy,
    /// Image keys remembered for affinity (least recently used forgotten first).
    #[arg(long, env = "LYNX_ROUTER_AFFINITY_CAPACITY", default_value_t = PickerConfig::default().affinity_capacity)]
    pub affinity_capacity: usize,
    /// How much more loaded than the least-loaded worker (in waiting requests) the worker that
    /// has a request's images may be and still get it.
    #[arg(long, env = "LYNX_ROUTER_OVERLOAD_MARGIN", default_value_t = PickerConfig::default().overload_margin)]
    pub overload_margin: f64,
    /// How often each worker's /readyz and /metrics are read, in milliseconds.
    #[arg(long, env = "LYNX_ROUTER_SCRAPE_INTERVAL_MS", default_value_t = 250)]
    pub scrape_interval_ms: u64,
    /// How often --workers is resolved again, in seconds.
    #[arg(long, env = "LYNX_ROUTER_DNS_REFRESH_SECONDS", default_value_t = 2.0)]
    pub dns_refresh_seconds: f64,
    /// Requests held at once while no worker is ready; more are refused (RESOURCE_EXHAUSTED).
    #[arg(long, env = "LYNX_ROUTER_MAX_HELD_REQUESTS", default_value_t = 256)]
    pub max_held_requests: usize,
    /// How long a request is held at most while no worker is ready (then UNAVAILABLE); longer
    /// than a worker takes to start and load the model when the fleet scales from zero.
    #[arg(
        long,
        env = "LYNX_ROUTER_HOLD_TIMEOUT_SECONDS",
        default_value_t = 120.0
    )]
    pub hold_timeout_seconds: f64,
    /// Workers tried per request at most (another one only after a refusal before the start).
    #[arg(long, env = "LYNX_ROUTER_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: usize,
    /// After SIGTERM: how long forwarded and held requests may take before the router exits.
    #[arg(long, env = "LYNX_DRAIN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub drain_timeout_seconds: u64,
    /// File of bearer tokens (one per line, # comments) clients must present.
    #[arg(long, env = "LYNX_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// One bearer token (in addition to the file's).
    #[arg(long, env = "LYNX_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

impl RouterArgs {
    /// The configuration these flags describe (reads the tokens file).
    pub fn config(&self) -> Result<RouterConfig, String> {
        let target: Target = self
            .workers
            .parse()
            .map_err(|e| format!("--workers: {e}"))?;
        let mut tokens = Vec::new();
        if let Some(path) = &self.auth_tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            tokens = lynx_proto::tokens_file::parse(&text);
            if tokens.is_empty() {
                return Err(format!("{} holds no token", path.display()));
            }
        }
        tokens.extend(self.auth_token.iter().map(|t| t.trim().to_owned()));
        if tokens.iter().any(String::is_empty) {
            return Err("--auth-token is empty".into());
        }
        let seconds = |s: f64, flag: &str| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| format!("{flag} must be a number of seconds >= 0"))
        };
        Ok(RouterConfig {
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            fleet: FleetConfig {
                target,
                http_port: self.worker_http_port,
                resolve_every: seconds(self.dns_refresh_seconds, "--dns-refresh-seconds")?,
                scrape_every: Duration::from_millis(self.scrape_interval_ms.max(10)),
            },
            picker: PickerConfig {
                policy: self.policy,
                affinity_capacity: self.affinity_capacity,
                overload_margin: self.overload_margin,
            },
            hold: HoldConfig {
                max_held: self.max_held_requests,
                timeout: seconds(self.hold_timeout_seconds, "--hold-timeout-seconds")?,
            },
            max_attempts: self.max_attempts.max(1),
            drain_timeout: Duration::from_secs(self.drain_timeout_seconds),
            auth_tokens: tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_arguments_parse() {
        let dir = std::env::temp_dir().join(format!("lynx-router-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, "# clients\nt1\n").expect("write");
        let args = RouterArgs::try_parse_from([
            "lynx-router",
            "--workers",
            "dns:///chat-workers.ml.svc.cluster.local:50051",
            "--worker-http-port",
            "9090",
            "--grpc-addr",
            "0.0.0.0:50051",
            "--http-addr",
            "0.0.0.0:9090",
            "--max-held-requests",
            "256",
            "--hold-timeout-seconds",
            "120",
            "--drain-timeout-seconds",
            "30",
            "--auth-tokens-file",
            tokens.to_str().expect("utf-8"),
        ])
        .expect("parse");
        let cfg = args.config().expect("config");
        assert_eq!(cfg.hold.max_held, 256);
        assert_eq!(cfg.hold.timeout, Duration::from_secs(120));
        assert_eq!(cfg.auth_tokens, vec!["t1".to_owned()]);
        assert_eq!(cfg.picker.policy, Policy::LeastLoadAffinity);
        let bad = RouterArgs::try_parse_from(["lynx-router", "--workers", "workers:50051"])
            .expect("parse")
            .config()
            .expect_err("not a target");
        assert!(bad.contains("--workers"), "{bad}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
