//! `lynx-operator` entry point: a thin CLI over the library.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lynx_operator::run::RunArgs;

/// Kubernetes operator for Lynx model serving.
#[derive(Debug, Parser)]
#[command(name = "lynx-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print the LynxDeployment CustomResourceDefinition as YAML (the content of deploy/crd.yaml).
    Crd,
    /// Run the controller: reconcile LynxDeployments while holding the leader Lease.
    Run(RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print_crd(),
        Command::Run(args) => run(args),
    }
}

fn print_crd() -> ExitCode {
    match lynx_operator::crd_yaml() {
        Ok(yaml) => match std::io::stdout().lock().write_all(yaml.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("lynx-operator: cannot write the CRD: {err}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("lynx-operator: cannot render the CRD: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(err) = lynx_operator::telemetry::init(args.log_format) {
        eprintln!("lynx-operator: cannot set up logging: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lynx-operator: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(lynx_operator::run::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "lynx-operator stopped");
            ExitCode::FAILURE
        }
    }
}
