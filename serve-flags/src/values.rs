//! The values of the `serve` flags that are not numbers, addresses or paths.

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;

/// A generated model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum EmbeddedArg {
    /// The embedded tiny model.
    #[default]
    Tiny,
    /// The ~150 M-parameter benchmark model.
    Small,
}

/// Which layout `--model` must have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// Detect it (converted when `lynx.json` is present).
    #[default]
    Auto,
    /// The release layout (YAML + checkpoints).
    Release,
    /// The converted layout (`lynx-worker convert`).
    Converted,
}

/// Compute dtype of `serve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// 32-bit float (exact).
    #[default]
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

/// Where the model computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    /// The candle model on the CPU (f32, the reference).
    #[default]
    Cpu,
    /// CUDA device N: our kernels and cuBLAS, at `--dtype`.
    Cuda(usize),
    /// The GPU's program on the host (f32): for checking the program without a GPU.
    Mirror,
}

/// A `--device` value that names no device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDeviceError(pub String);

impl fmt::Display for ParseDeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown device `{}` (expected cpu, cuda, cuda:N or mirror)",
            self.0
        )
    }
}

impl std::error::Error for ParseDeviceError {}

impl FromStr for Device {
    type Err = ParseDeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "mirror" => Ok(Self::Mirror),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| ParseDeviceError(other.to_owned())),
        }
    }
}

/// The `--device` spelling: `cpu`, `cuda` (device 0), `cuda:N` or `mirror`.
impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(0) => f.write_str("cuda"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Mirror => f.write_str("mirror"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert_eq!("mirror".parse::<Device>(), Ok(Device::Mirror));
        for bad in ["tpu", "cuda:", "cuda:x", ""] {
            assert_eq!(
                bad.parse::<Device>(),
                Err(ParseDeviceError(bad.to_owned())),
                "{bad}"
            );
        }
        for device in [
            Device::Cpu,
            Device::Cuda(0),
            Device::Cuda(7),
            Device::Mirror,
        ] {
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
        }
        assert_eq!(Device::Cuda(0).to_string(), "cuda");
    }
}
