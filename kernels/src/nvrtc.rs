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

/// Compiles `file` for `arch`, reusing `cache_dir/<hash>.cubin` when present. The hash covers
/// the full source, the architecture, the options and the NVRTC version. A cache that cannot be
/// written (a read-only or full file system) costs the next start a compilation, nothing more:
/// it is logged, not an error.
pub fn compile_cached(
    file: &KernelFile,
    arch: &str,
    cache_dir: Option<&Path>,
) -> Result<Vec<u8>, KernelError> {
    let Some(dir) = cache_dir else {
        return Ok(compile(file, arch, false)?.cubin);
    };
    let (major, minor) = version()?;
    let mut hasher = Sha256::new();
    hasher.update(file.full_source().as_bytes());
    hasher.update(format!("\0{arch}\0{BASE_OPTIONS:?}\0nvrtc {major}.{minor}").as_bytes());
    let key: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(format!(
        "{}-{arch}-{}.cubin",
        file.name.trim_end_matches(".cu"),
        &key[..16]
    ));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(bytes);
    }
    let cubin = compile(file, arch, false)?.cubin;
    if let Err(e) = store(dir, &path, &cubin) {
        tracing::warn!(error = %e, "kernel cache not written; the next start compiles again");
    }
    Ok(cubin)
}

/// Writes `cubin` to `path` in `dir` (created if needed) through a temporary file.
fn store(dir: &Path, path: &Path, cubin: &[u8]) -> Result<(), KernelError> {
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
