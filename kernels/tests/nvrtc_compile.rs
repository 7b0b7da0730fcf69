//! Every kernel compiles with NVRTC for Hopper (sm_90a) and the portable floor (sm_80), with no
//! register spills. Needs only NVRTC (no GPU): `scripts/install-nvrtc` provides it and
//! `scripts/test` puts it on `LD_LIBRARY_PATH` and sets `LYNX_REQUIRE_NVRTC=1`.

use lynx_kernels::cuda::{ensure_driver, CudaAttention};
use lynx_kernels::nvrtc::{compile, compile_cached, ensure_loaded, parse_ptxas_report};
use lynx_kernels::source::{all_kernels, ALL};
use lynx_kernels::KernelError;

fn nvrtc_available() -> bool {
    if ensure_loaded().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("LYNX_REQUIRE_NVRTC").is_none(),
        "LYNX_REQUIRE_NVRTC is set but libnvrtc.so.13 cannot be loaded (LD_LIBRARY_PATH?)"
    );
    eprintln!(
        "skipped: NVRTC not found (run scripts/install-nvrtc, add its folder to LD_LIBRARY_PATH)"
    );
    false
}

#[test]
fn every_kernel_compiles_for_sm90a_and_sm80_without_spills() {
    if !nvrtc_available() {
        return;
    }
    for arch in ["sm_90a", "sm_80"] {
        let mut seen = Vec::new();
        for file in ALL {
            let compiled = compile(&file, arch, true).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !compiled.cubin.is_empty(),
                "{} {arch}: empty CUBIN",
                file.name
            );
            assert!(
                !compiled.log.contains("warning"),
                "{} {arch} compiled with warnings:\n{}",
                file.name,
                compiled.log
            );
            for usage in parse_ptxas_report(&compiled.log) {
                assert_eq!(
                    (usage.spill_stores, usage.spill_loads, usage.stack_bytes),
                    (0, 0, 0),
                    "{arch} {}: {} registers, spills/stack {:?}",
                    usage.kernel,
                    usage.registers,
                    usage
                );
                eprintln!(
                    "{arch} {:<28} {:>3} registers",
                    usage.kernel, usage.registers
                );
                seen.push(usage.kernel);
            }
        }
        for name in all_kernels() {
            assert!(seen.contains(&name), "{arch}: no ptxas report for {name}");
        }
    }
}

#[test]
fn a_machine_without_the_driver_gets_an_error_not_a_panic() {
    if ensure_driver().is_ok() {
        eprintln!("skipped: a CUDA driver is installed here");
        return;
    }
    match CudaAttention::new(0, None) {
        Err(KernelError::LibraryMissing { library }) => assert_eq!(library, "cuda"),
        other => panic!("expected LibraryMissing, got {other:?}"),
    }
}

/// The kernel cache is written once and read back; one that cannot be written (a read-only root
/// file system in a pod without a cache volume) is not fatal.
#[test]
fn the_kernel_cache_is_reused_and_an_unwritable_one_is_not_fatal() {
    if !nvrtc_available() {
        return;
    }
    let file = &ALL[0];
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let first = compile_cached(file, "sm_80", Some(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .collect();
    assert_eq!(cached.len(), 1, "one CUBIN in the cache");
    assert_eq!(
        compile_cached(file, "sm_80", Some(dir.path())).unwrap_or_else(|e| panic!("{e}")),
        first
    );
    // A directory under a regular file cannot be created.
    let blocked = dir.path().join("cache-file");
    std::fs::write(&blocked, b"").unwrap_or_else(|e| panic!("{e}"));
    let unwritable = compile_cached(file, "sm_80", Some(&blocked.join("kernels")))
        .unwrap_or_else(|e| panic!("an unwritable cache failed the compilation: {e}"));
    assert_eq!(unwritable, first);
}
