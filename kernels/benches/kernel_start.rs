//! What a GPU worker's start spends on its kernels, on this machine's CPU (NVRTC needs no GPU):
//! every compilation unit for one architecture compiled one after another (and the slowest unit,
//! which bounds a parallel start given a core per unit), compiled in parallel (what
//! a worker without prebuilt kernels does), read back from the cache (a restarted pod with a
//! cache volume) and from a prebuilt folder (the worker image, `lynx-worker compile-kernels`).
//! Loading the CUBINs into a GPU context is not included.
//!
//! `cargo bench -p lynx-kernels --bench kernel_start [-- ARCH]` (default `sm_90a`), with NVRTC on
//! `LD_LIBRARY_PATH` (`scripts/install-nvrtc` prints its folder).

use std::time::Instant;

use lynx_kernels::nvrtc::{ensure_loaded, obtain, obtain_all, prebuild, KernelStore, Obtained};
use lynx_kernels::source::ALL;
use lynx_kernels::KernelError;

fn main() -> Result<(), KernelError> {
    if ensure_loaded().is_err() {
        eprintln!("skipped: NVRTC not found (run scripts/install-nvrtc, add its folder to LD_LIBRARY_PATH)");
        return Ok(());
    }
    let arch = std::env::args()
        .skip(1)
        .find(|a| a.starts_with("sm_"))
        .unwrap_or_else(|| "sm_90a".to_string());
    let dir = std::env::temp_dir().join(format!("lynx-kernel-start-{}", std::process::id()));
    let jobs: Vec<_> = ALL.iter().map(|f| (*f, arch.clone())).collect();
    let timed = |f: &dyn Fn() -> Result<Vec<Obtained>, KernelError>| {
        let t = Instant::now();
        let units = f()?;
        Ok::<_, KernelError>((t.elapsed().as_secs_f64(), units))
    };
    let none = KernelStore::default();
    let cache = KernelStore::cache(Some(&dir.join("cache")));
    let prebuilt = KernelStore {
        prebuilt: vec![dir.join("prebuilt")],
        cache: Some(dir.join("empty-cache")),
    };
    let serial = timed(&|| jobs.iter().map(|(f, a)| obtain(f, a, &none)).collect())?;
    let parallel = timed(&|| obtain_all(&jobs, &cache))?;
    let cached = timed(&|| obtain_all(&jobs, &cache))?;
    prebuild(&dir.join("prebuilt"), std::slice::from_ref(&arch))?;
    let from_image = timed(&|| obtain_all(&jobs, &prebuilt))?;
    std::fs::remove_dir_all(&dir).ok();

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "compilation units for {arch}: {} ({threads} CPU threads)",
        ALL.len()
    );
    let (slowest, slowest_s) = serial
        .1
        .iter()
        .map(|o| (o.unit, o.seconds))
        .fold(("-", 0.0), |a, b| if b.1 > a.1 { b } else { a });
    println!(
        "slowest unit: {slowest} ({slowest_s:.3} s): a parallel start's bound with a core per unit"
    );
    println!("| start | origins | seconds | vs one after another |");
    println!("|---|---|---|---|");
    for (name, (s, units)) in [
        ("compiled one after another", &serial),
        ("compiled in parallel (no prebuilt kernels)", &parallel),
        ("read from the cache", &cached),
        ("read from the prebuilt folder", &from_image),
    ] {
        let mut kinds: Vec<String> = units
            .iter()
            .map(|o| format!("{:?}", o.origin).to_lowercase())
            .collect();
        kinds.dedup();
        println!(
            "| {name} | {} | {s:.3} | {:.1}x |",
            kinds.join(", "),
            serial.0 / s.max(1e-9)
        );
    }
    Ok(())
}
