//! `lynx-worker compile-kernels`: every GPU kernel file compiled ahead of time by NVRTC (no GPU
//! needed) into the folder a worker searches first, so that its start compiles nothing: what the
//! worker image does at build time.

use std::path::PathBuf;

use clap::Args;
use lynx_kernels::nvrtc::{self, Obtained};

use super::CliError;
use crate::embedded::prebuilt_kernel_dir;

/// The architectures built by default: A100 (sm_80); A10, A40 and RTX 30 (sm_86); L4, L40S and
/// RTX 40 (sm_89); H100 and H200 (sm_90a); B200 (sm_100); RTX 50 and RTX PRO Blackwell (sm_120).
pub const DEFAULT_ARCHS: [&str; 6] = ["sm_80", "sm_86", "sm_89", "sm_90a", "sm_100", "sm_120"];

/// `compile-kernels` arguments.
#[derive(Debug, Clone, Args)]
pub struct CompileKernelsArgs {
    /// Architectures to build for, comma-separated or repeated (`sm_<major><minor>`, `a` for the
    /// architecture-specific Hopper features a worker on an H100/H200 uses).
    #[arg(long = "arch", value_delimiter = ',', default_values_t = DEFAULT_ARCHS.map(String::from))]
    pub archs: Vec<String>,
    /// Output folder (default: `$LYNX_KERNEL_DIR`, else `/usr/local/share/lynx-serve/kernels`,
    /// where workers look first).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object per compilation unit instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Whether `arch` names a GPU architecture NVRTC takes (`sm_80`, `sm_90a`, ...).
fn valid_arch(arch: &str) -> bool {
    arch.strip_prefix("sm_")
        .map(|v| v.strip_suffix('a').unwrap_or(v))
        .is_some_and(|v| v.len() >= 2 && v.bytes().all(|b| b.is_ascii_digit()))
}

/// Runs `compile-kernels`.
pub fn compile_kernels(args: &CompileKernelsArgs) -> Result<(), CliError> {
    if let Some(bad) = args.archs.iter().find(|a| !valid_arch(a)) {
        return Err(CliError(format!(
            "--arch {bad}: expected sm_<major><minor>, e.g. sm_80 or sm_90a"
        )));
    }
    let out = args.out.clone().unwrap_or_else(prebuilt_kernel_dir);
    let started = std::time::Instant::now();
    let built = nvrtc::prebuild(&out, &args.archs).map_err(|e| CliError(e.to_string()))?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        for o in &built {
            println!("{}", row_json(o));
        }
    } else {
        println!(
            "{:<8} {:<20} {:<9} {:>8} {:>8}",
            "arch", "unit", "origin", "seconds", "KiB"
        );
        for o in &built {
            let origin = format!("{:?}", o.origin).to_lowercase();
            println!(
                "{:<8} {:<20} {:<9} {:>8.2} {:>8}",
                o.arch,
                o.unit,
                origin,
                o.seconds,
                o.cubin.len() / 1024
            );
        }
    }
    let compiled = built
        .iter()
        .filter(|o| o.origin == nvrtc::Origin::Compiled)
        .count();
    eprintln!(
        "{} kernel units for {} in {} ({compiled} compiled, in parallel: {seconds:.1} s)",
        built.len(),
        args.archs.join(", "),
        out.display()
    );
    Ok(())
}

fn row_json(o: &Obtained) -> serde_json::Value {
    serde_json::json!({
        "arch": o.arch,
        "unit": o.unit,
        "origin": o.origin,
        "seconds": o.seconds,
        "bytes": o.cubin.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_are_checked_before_compiling() {
        for ok in ["sm_80", "sm_86", "sm_90a", "sm_100", "sm_120a"] {
            assert!(valid_arch(ok), "{ok}");
        }
        for bad in ["sm80", "compute_90", "sm_", "sm_9", "sm_90b", "sm_x0", ""] {
            assert!(!valid_arch(bad), "{bad}");
        }
    }
}
