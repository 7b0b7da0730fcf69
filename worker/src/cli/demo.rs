//! `lynx-worker demo`: the whole serving path in one command. Starts `serve` on loopback ports
//! (embedded model unless `--model`), waits until it is ready, sends one multimodal request with
//! the `lynx` client (streamed answer on stdout), prints the worker's request counters from
//! `/metrics`, then drains and exits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser};
use lynx_proto::v1::lynx_client::LynxClient;
use lynx_proto::v1::GetModelInfoRequest;
use tokio::sync::oneshot;

use super::device::load_cpu;
use super::{CliError, ModelArgs};
use crate::serve::Server;
use lynx_client::{generate, ClientCli, ClientCommand};

/// `demo` arguments.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The model (default: the embedded tiny model).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image to ask about.
    #[arg(long, default_value = "worker/assets/example.png")]
    pub image: PathBuf,
    /// The instruction.
    #[arg(long, default_value = "What is in the image?")]
    pub prompt: String,
    /// Seconds to wait for the model to load.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout_seconds: u64,
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

/// Default `serve` settings on free loopback ports (clap's defaults, so the demo serves exactly
/// as `lynx-worker serve` would).
pub(super) fn serve_config() -> Result<crate::serve::ServeConfig, CliError> {
    let cli = super::Cli::try_parse_from([
        "lynx-worker",
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .map_err(err)?;
    match cli.command {
        super::Command::Serve(args) => args.config(),
        _ => Err(CliError("internal: demo serve arguments".into())),
    }
}

/// Waits until the gRPC service answers `GetModelInfo` (it does once the model is loaded and
/// warmed up).
async fn wait_ready(addr: &str, timeout: Duration) -> Result<String, CliError> {
    let start = Instant::now();
    loop {
        if let Ok(mut client) = LynxClient::connect(addr.to_string()).await {
            if let Ok(info) = client.get_model_info(GetModelInfoRequest {}).await {
                return Ok(info.into_inner().model_name);
            }
        }
        if start.elapsed() > timeout {
            return Err(CliError(format!(
                "the worker was not ready within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the demo.
pub fn demo(args: &DemoArgs) -> Result<(), CliError> {
    let cfg = serve_config()?;
    let (kv_blocks, kv_block_size) = (
        cfg.runner.scheduler.kv_blocks,
        cfg.runner.scheduler.kv_block_size,
    );
    let model_args = args.model.clone();
    let image = args.image.display().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let server = Server::bind(cfg).await.map_err(err)?;
        let (grpc, http) = (server.grpc_addr(), server.http_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let load = move || load_cpu(&model_args, kv_blocks, kv_block_size).map_err(|e| e.0);
        let serving = tokio::spawn(server.run(load, async {
            stopped.await.ok();
        }));
        let addr = format!("http://{grpc}");
        let model = wait_ready(&addr, Duration::from_secs(args.ready_timeout_seconds)).await?;
        eprintln!("worker ready: model {model}, gRPC {grpc}, HTTP {http}");
        let cli = ClientCli::try_parse_from([
            "lynx",
            "generate",
            "--addr",
            &addr,
            "--image",
            &image,
            "--prompt",
            &args.prompt,
        ])
        .map_err(err)?;
        let ClientCommand::Generate(request) = cli.command else {
            return Err(CliError("internal: demo client arguments".into()));
        };
        generate::run(&request).await.map_err(err)?;
        let metrics = lynx_client::http::get(&http.to_string(), "/metrics")
            .await
            .map_err(err)?;
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("lynx_requests_total"))
        {
            eprintln!("{line}");
        }
        stop.send(()).ok();
        serving.await.map_err(err)?.map_err(err)
    })
}
