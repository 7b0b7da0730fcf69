//! Every kernel compiles with NVRTC for Hopper (sm_90a), the portable floor (sm_80) and Blackwell
//! (sm_100, sm_120), with no register spills. Needs only NVRTC (no GPU): `scripts/install-nvrtc` provides it and
//! `scripts/test` puts it on `LD_LIBRARY_PATH` and sets `LYNX_REQUIRE_NVRTC=1`.

use lynx_kernels::cuda::{ensure_driver, CudaAttention};
use lynx_kernels::nvrtc::{
    compile, ensure_loaded, obtain, parse_ptxas_report, prebuild, KernelStore, Origin,
};
use lynx_kernels::source::{all_kernels, KernelFile, ALL};
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
fn every_kernel_compiles_for_hopper_ampere_and_blackwell_without_spills() {
    if !nvrtc_available() {
        return;
    }
    let archs = ["sm_90a", "sm_80", "sm_100", "sm_120"];
    // Every (arch, file) compiled in parallel, checked in order.
    let jobs: Vec<(&str, KernelFile)> = archs
        .iter()
        .flat_map(|a| ALL.iter().map(move |f| (*a, *f)))
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(arch, file)| s.spawn(move || compile(file, arch, true)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a compilation thread panicked"))
            })
            .collect()
    });
    let mut compiled_of = jobs.iter().zip(results);
    for arch in archs {
        let mut seen = Vec::new();
        for ((_, file), compiled) in compiled_of.by_ref().take(ALL.len()) {
            let compiled = compiled.unwrap_or_else(|e| panic!("{e}"));
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
    match CudaAttention::new(0, &KernelStore::default()) {
        Err(KernelError::LibraryMissing { library }) => assert_eq!(library, "cuda"),
        other => panic!("expected LibraryMissing, got {other:?}"),
    }
}

/// Prebuilt kernels (what the worker image carries) are found first and compile nothing; the
/// cache is written once and read back; a cache that cannot be written (a read-only root file
/// system in a pod without a cache volume) is not fatal.
#[test]
fn prebuilt_kernels_and_the_cache_are_reused_and_an_unwritable_cache_is_not_fatal() {
    if !nvrtc_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let prebuilt = dir.path().join("prebuilt");
    let built = prebuild(&prebuilt, &["sm_80".to_string()]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(built.len(), ALL.len());
    assert!(built
        .iter()
        .all(|o| o.origin == Origin::Compiled && o.arch == "sm_80"));
    let files = std::fs::read_dir(&prebuilt)
        .unwrap_or_else(|e| panic!("{e}"))
        .count();
    assert_eq!(files, ALL.len(), "one CUBIN per kernel file");

    // A worker with the prebuilt folder and an empty cache compiles nothing and writes nothing.
    let cache = dir.path().join("cache");
    let store = KernelStore {
        prebuilt: vec![dir.path().join("absent"), prebuilt.clone()],
        cache: Some(cache.clone()),
    };
    for (file, want) in ALL.iter().zip(&built) {
        let got = obtain(file, "sm_80", &store).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((got.origin, &got.cubin), (Origin::Prebuilt, &want.cubin));
    }
    assert!(!cache.exists(), "nothing compiled, nothing cached");

    // Without the prebuilt folder: compiled once into the cache, then read back.
    let smallest = ALL
        .iter()
        .min_by_key(|f| f.full_source().len())
        .unwrap_or_else(|| panic!("no kernel files"));
    let store = KernelStore::cache(Some(&cache));
    let first = obtain(smallest, "sm_80", &store).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.origin, Origin::Compiled);
    let again = obtain(smallest, "sm_80", &store).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((again.origin, &again.cubin), (Origin::Cached, &first.cubin));

    // A directory under a regular file cannot be created.
    let blocked = dir.path().join("cache-file");
    std::fs::write(&blocked, b"").unwrap_or_else(|e| panic!("{e}"));
    let unwritable = obtain(
        smallest,
        "sm_80",
        &KernelStore::cache(Some(&blocked.join("k"))),
    )
    .unwrap_or_else(|e| panic!("an unwritable cache failed the compilation: {e}"));
    assert_eq!(unwritable.cubin, first.cubin);
}
