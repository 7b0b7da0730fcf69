//! `lynx-worker fetch`: `lynx_fetch`'s command, with this crate's converter for `--convert`.

use std::path::Path;

use clap::Args;

use super::{CliError, StoreDtype};
use crate::checkpoint::converted::{write_converted, SHARD_BYTES};
use crate::checkpoint::release::load_release;

/// `fetch` arguments.
#[derive(Debug, Args)]
pub struct FetchCommand {
    /// What to fetch and where to.
    #[command(flatten)]
    pub fetch: lynx_fetch::FetchArgs,
    /// With `--convert`: stored dtype of the converted weights.
    #[arg(long, value_enum, default_value_t = StoreDtype::F32)]
    pub convert_dtype: StoreDtype,
}

/// Fetches the model; the process exits non-zero with the reason on failure.
pub fn fetch(args: &FetchCommand) -> Result<(), CliError> {
    let dtype = args.convert_dtype;
    let convert = move |release: &Path, out: &Path| -> Result<(), String> {
        let merged = load_release(release, None).map_err(|e| e.to_string())?;
        write_converted(
            out,
            &merged.config,
            &merged.tensors,
            &merged.tokenizer,
            dtype.into(),
            SHARD_BYTES,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    runtime
        .block_on(lynx_fetch::run(&args.fetch, Some(&convert)))
        .map(|_| ())
        .map_err(|e| CliError(format!("{}: {e}", e.reason())))
}
