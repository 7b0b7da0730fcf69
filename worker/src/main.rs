//! `lynx-worker` entry point.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lynx_worker::cli::Cli::parse();
    match lynx_worker::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
