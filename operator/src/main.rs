//! `lynx-operator` entry point: a thin CLI over the library.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match lynx_operator::crd_yaml() {
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
        },
    }
}
