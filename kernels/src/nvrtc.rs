//! Run-time compilation of the kernel files with NVRTC, the on-disk CUBIN cache and the ptxas
//! resource report (registers, stack, spills).
#![allow(unsafe_code)] // NVRTC's C API (program handles, CUBIN retrieval).

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

use crate::source::KernelFile;
use crate::KernelError;

/// Options every compilation uses (besides the architecture).
const BASE_OPTIONS: [&str; 1] = ["--std=c++17"];

/// Fails with [`KernelError::LibraryMissing`] unless `libnvrtc` can be loaded (cudarc would
/// panic on first use otherwise).
pub fn ensure_loaded() -> Result<(), KernelError> {
    // SAFETY: only tries to dlopen the library by its candidate names.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(KernelError::LibraryMissing { library: "nvrtc" })
    }
}

/// The NVRTC version `(major, minor)`.
pub fn version() -> Result<(i32, i32), KernelError> {
    ensure_loaded()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| KernelError::cuda("nvrtcVersion", e))?;
    Ok((major, minor))
}

/// A compiled kernel file.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The CUBIN for the requested architecture.
    pub cubin: Vec<u8>,
    /// The compiler log (ptxas report included when asked for).
    pub log: String,
}

/// Compiles `file` for `arch` (e.g. `sm_90a`, `sm_80`) to CUBIN. With `ptxas_verbose` the log
/// carries ptxas' per-kernel resource report (see [`parse_ptxas_report`]).
pub fn compile(
    file: &KernelFile,
    arch: &str,
    ptxas_verbose: bool,
) -> Result<Compiled, KernelError> {
    ensure_loaded()?;
    let source = CString::new(file.full_source())
        .map_err(|_| KernelError::Invalid(format!("{} contains a NUL byte", file.name)))?;
    let name =
        CString::new(file.name).map_err(|_| KernelError::Invalid("kernel file name".into()))?;
    let mut options: Vec<String> = BASE_OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    if ptxas_verbose {
        options.push("--ptxas-options=-v".into());
    }
    let program = result::create_program(&source, Some(&name))
        .map_err(|e| KernelError::cuda("nvrtcCreateProgram", e))?;
    // SAFETY: `program` is a live handle until destroyed below; the options outlive the call.
    let compiled = unsafe { result::compile_program(program, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program) }
        .map(|chars| log_to_string(&chars))
        .unwrap_or_default();
    let outcome = compiled
        .map_err(|_| KernelError::Compile {
            file: file.name.to_string(),
            arch: arch.to_string(),
            log: log.clone(),
        })
        .and_then(|()| {
            // SAFETY: the program compiled; the buffer has the size NVRTC reported.
            unsafe { cubin(program) }
        });
    // SAFETY: destroyed once, after its last use.
    let _ = unsafe { result::destroy_program(program) };
    Ok(Compiled {
        cubin: outcome?,
        log,
    })
}

/// # Safety
/// `program` must be a live, successfully compiled NVRTC program.
unsafe fn cubin(program: sys::nvrtcProgram) -> Result<Vec<u8>, KernelError> {
    let mut size = 0usize;
    unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }
        .result()
        .map_err(|e| KernelError::cuda("nvrtcGetCUBINSize", e))?;
    let mut buf = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(program, buf.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| KernelError::cuda("nvrtcGetCUBIN", e))?;
    Ok(buf)
}

fn log_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Where compiled kernels are looked up, and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelStore {
    /// Read-only folders of prebuilt CUBINs (written by [`prebuild`], e.g. into the worker image
    /// at build time), searched first; a folder that does not exist is skipped.
    pub prebuilt: Vec<PathBuf>,
    /// The writable cache: searched next, and where a fresh compilation is kept.
    pub cache: Option<PathBuf>,
}

impl KernelStore {
    /// Only a writable cache (or none).
    pub fn cache(dir: Option<&Path>) -> Self {
        Self {
            prebuilt: Vec::new(),
            cache: dir.map(Path::to_owned),
        }
    }
}

/// Where a kernel file's CUBIN came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A prebuilt folder.
    Prebuilt,
    /// The writable cache.
    Cached,
    /// Compiled now.
    Compiled,
}

/// One kernel file made ready: its CUBIN, where it came from and how long that took.
#[derive(Debug, Clone)]
pub struct Obtained {
    /// The compilation unit ([`KernelFile::unit`]).
    pub unit: &'static str,
    /// The architecture.
    pub arch: String,
    /// The CUBIN.
    pub cubin: Vec<u8>,
    /// Where it came from.
    pub origin: Origin,
    /// Seconds spent (reading or compiling).
    pub seconds: f64,
}

/// The file name a CUBIN of `file` for `arch` has in a store: the hash covers the full source,
/// the architecture, the options and the NVRTC version, so a stale or foreign CUBIN is never
/// found.
pub fn cubin_name(file: &KernelFile, arch: &str) -> Result<String, KernelError> {
    let (major, minor) = version()?;
    let mut hasher = Sha256::new();
    hasher.update(file.full_source().as_bytes());
    hasher.update(format!("\0{arch}\0{BASE_OPTIONS:?}\0nvrtc {major}.{minor}").as_bytes());
    let key: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{}-{arch}-{}.cubin", file.unit, &key[..16]))
}

/// `file` for `arch` from `store`: a prebuilt folder, else the cache, else compiled now and kept
/// in the cache. A cache that cannot be written (a read-only or full file system) costs the next
/// start a compilation, nothing more: it is logged, not an error.
pub fn obtain(file: &KernelFile, arch: &str, store: &KernelStore) -> Result<Obtained, KernelError> {
    let started = std::time::Instant::now();
    let done = |cubin: Vec<u8>, origin: Origin| Obtained {
        unit: file.unit,
        arch: arch.to_string(),
        cubin,
        origin,
        seconds: started.elapsed().as_secs_f64(),
    };
    let name = match (store.prebuilt.is_empty(), &store.cache) {
        (true, None) => return Ok(done(compile(file, arch, false)?.cubin, Origin::Compiled)),
        _ => cubin_name(file, arch)?,
    };
    for dir in &store.prebuilt {
        if let Ok(bytes) = std::fs::read(dir.join(&name)) {
            return Ok(done(bytes, Origin::Prebuilt));
        }
    }
    if let Some(dir) = &store.cache {
        if let Ok(bytes) = std::fs::read(dir.join(&name)) {
            return Ok(done(bytes, Origin::Cached));
        }
    }
    let cubin = compile(file, arch, false)?.cubin;
    if let Some(dir) = &store.cache {
        if let Err(e) = store_cubin(dir, &dir.join(&name), &cubin) {
            tracing::warn!(error = %e, "kernel cache not written; the next start compiles again");
        }
    }
    Ok(done(cubin, Origin::Compiled))
}

/// Every `(file, arch)` pair from `store`, the compilations in parallel (NVRTC compiles one
/// program per thread); in the order given.
pub fn obtain_all(
    jobs: &[(KernelFile, String)],
    store: &KernelStore,
) -> Result<Vec<Obtained>, KernelError> {
    use rayon::prelude::*;
    jobs.par_iter()
        .map(|(file, arch)| obtain(file, arch, store))
        .collect()
}

/// Compiles every kernel file for every architecture in `archs` into `dir` (in parallel), so that
/// a worker given `dir` as a prebuilt folder compiles nothing at start: what the worker image
/// does at build time (`lynx-worker compile-kernels`), no GPU needed.
pub fn prebuild(dir: &Path, archs: &[String]) -> Result<Vec<Obtained>, KernelError> {
    let jobs: Vec<(KernelFile, String)> = archs
        .iter()
        .flat_map(|a| crate::source::ALL.iter().map(move |f| (*f, a.clone())))
        .collect();
    let store = KernelStore::cache(Some(dir));
    let out = obtain_all(&jobs, &store)?;
    // A folder that could not be written is an error here, not a warning.
    for ((file, arch), o) in jobs.iter().zip(&out) {
        let path = dir.join(cubin_name(file, arch)?);
        if !path.is_file() {
            store_cubin(dir, &path, &o.cubin)?;
        }
    }
    Ok(out)
}

/// Writes `cubin` to `path` in `dir` (created if needed) through a temporary file.
fn store_cubin(dir: &Path, path: &Path, cubin: &[u8]) -> Result<(), KernelError> {
    let cache_err = |source| KernelError::Cache {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(cache_err)?;
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, cubin).map_err(cache_err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        cache_err(e)
    })
}

/// ptxas' resources for one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResourceUsage {
    /// Kernel (entry function) name.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Stack frame bytes per thread.
    pub stack_bytes: u32,
    /// Bytes of register spill stores.
    pub spill_stores: u32,
    /// Bytes of register spill loads.
    pub spill_loads: u32,
}

/// Parses the `--ptxas-options=-v` report in an NVRTC log, one entry per kernel.
pub fn parse_ptxas_report(log: &str) -> Vec<ResourceUsage> {
    let mut out = Vec::new();
    let mut current: Option<ResourceUsage> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            if let Some(done) = current.take() {
                out.push(done);
            }
            current = Some(ResourceUsage {
                kernel: rest.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(usage) = current.as_mut() {
            if line.contains("bytes stack frame") {
                usage.stack_bytes = number_before(line, "bytes stack frame");
                usage.spill_stores = number_before(line, "bytes spill stores");
                usage.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used ") && line.contains(" registers") {
                usage.registers = number_before(line, "registers");
                if let Some(done) = current.take() {
                    out.push(done);
                }
            }
        }
    }
    out.extend(current);
    out
}

/// The integer right before `marker` in `line` (0 if absent).
fn number_before(line: &str, marker: &str) -> u32 {
    line.split(marker)
        .next()
        .filter(|head| head.len() < line.len())
        .and_then(|head| {
            head.split(|c: char| !c.is_ascii_digit())
                .rfind(|s| !s.is_empty())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_parsed_per_kernel() {
        let log = "ptxas info    : Compiling entry function 'a' for 'sm_90a'\n\
ptxas info    : Function properties for a\n\
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 212 registers, used 1 barriers\n\
ptxas info    : Function properties for b\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 70 registers, used 1 barriers, 4160 bytes smem\n";
        let report = parse_ptxas_report(log);
        assert_eq!(
            report,
            vec![
                ResourceUsage {
                    kernel: "a".into(),
                    registers: 212,
                    stack_bytes: 8,
                    spill_stores: 4,
                    spill_loads: 12
                },
                ResourceUsage {
                    kernel: "b".into(),
                    registers: 70,
                    ..Default::default()
                },
            ]
        );
    }
}
