use thiserror::Error;

/// Errors of the kernel layer.
#[derive(Debug, Error)]
pub enum KernelError {
    /// A CUDA library could not be loaded.
    #[error(
        "CUDA library {library} not found: install the NVIDIA driver / CUDA 13 libraries or add \
         their folder to LD_LIBRARY_PATH"
    )]
    LibraryMissing {
        /// The library's base name (`cuda`, `nvrtc`).
        library: &'static str,
    },
    /// No CUDA device with this ordinal.
    #[error("no CUDA device {ordinal} (found {count})")]
    NoDevice {
        /// The requested ordinal.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },
    /// The device is older than the kernels need.
    #[error("GPU compute capability {major}.{minor} is not supported (need 8.0 or newer)")]
    Unsupported {
        /// Major version.
        major: i32,
        /// Minor version.
        minor: i32,
    },
    /// NVRTC rejected a kernel source.
    #[error("NVRTC failed to compile {file} for {arch}:\n{log}")]
    Compile {
        /// Source file name.
        file: String,
        /// Target architecture.
        arch: String,
        /// The compiler log.
        log: String,
    },
    /// A CUDA driver or NVRTC call failed.
    #[error("CUDA error in {op}: {message}")]
    Cuda {
        /// What was being done.
        op: &'static str,
        /// The driver's message.
        message: String,
    },
    /// The problem is not one the kernels support, or buffers do not match it.
    #[error("invalid attention problem: {0}")]
    Invalid(String),
    /// The kernel cache folder could not be used.
    #[error("kernel cache {path}: {source}")]
    Cache {
        /// The path.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl KernelError {
    pub(crate) fn cuda(op: &'static str, err: impl std::fmt::Debug) -> Self {
        Self::Cuda {
            op,
            message: format!("{err:?}"),
        }
    }
}
