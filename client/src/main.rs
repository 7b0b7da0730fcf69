//! `lynx` entry point: the client of a running worker.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lynx_client::ClientCli::parse();
    match lynx_client::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
