//! `lynx`: a command-line client of a running worker. `generate` sends one request and streams
//! the answer to the terminal; `bench` measures throughput and latency at several concurrencies
//! with a mix of images, videos and prompt lengths, prints a table and writes an SVG plot; with
//! `--goodput-seconds` it measures goodput and refusals under overload instead.

pub mod bench;
pub mod connect;
pub mod generate;
pub mod goodput;
pub mod http;
mod inputs;
mod plot;

use clap::{Args, Parser, Subcommand};

/// Client of the Lynx worker (lynx.v1 over gRPC).
#[derive(Debug, Parser)]
#[command(name = "lynx", version)]
pub struct ClientCli {
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Send one request and stream the answer.
    Generate(generate::GenerateArgs),
    /// Measure throughput and latency at several concurrencies.
    Bench(bench::BenchArgs),
}

/// How to reach the worker.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Worker address: `http(s)://host:port` (one connection), or every worker a name resolves
    /// to, round robin: `dns:///host:port` (e.g. the LynxDeployment's `status.workersEndpoint`),
    /// `dns://dns-server:port/host:port`, `ipv4:a:port,b:port` (TLS with `--ca-cert`).
    #[arg(long, env = "LYNX_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// How often a `dns:` address is resolved again (workers that appear are used, those that
    /// disappear are dropped).
    #[arg(long, env = "LYNX_DNS_REFRESH_SECONDS", default_value_t = 5.0)]
    pub dns_refresh_seconds: f64,
    /// Bearer token.
    #[arg(long, env = "LYNX_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for `https://` (default: the system roots are not used;
    /// give the CA that signed the worker's certificate).
    #[arg(long, env = "LYNX_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// TLS server name (default: the host of --addr).
    #[arg(long)]
    pub tls_domain: Option<String>,
}

/// A client failure: one line for the user, non-zero exit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Runs the parsed command line.
pub fn run(cli: ClientCli) -> Result<(), ClientError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        match cli.command {
            ClientCommand::Generate(a) => generate::run(&a).await,
            ClientCommand::Bench(a) => bench::run(&a).await,
        }
    })
}
