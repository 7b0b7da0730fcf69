//! Reading PyTorch zip-pickle checkpoints (`torch.save` of a state dict: `.pth`, `.pt`, `.bin`).
//!
//! The archive's top folder is named after the file it was saved as (`eva_vit_g/`,
//! `pytorch_model/`, ...), never assumed to be `archive/`. A state dict wrapped in
//! `{"model": ...}` (or `module` / `state_dict`) is unwrapped. Tensors come back as f32 on the CPU:
//! the released files are fp16 and the official model runs in fp32.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::CheckpointError;

/// Wrapper keys under which a state dict may be nested, tried in this order after the flat layout.
const WRAPPER_KEYS: [&str; 3] = ["model", "module", "state_dict"];

/// A lazily read torch checkpoint: tensor names are known, data is read on demand.
pub struct TorchCheckpoint {
    inner: candle_core::pickle::PthTensors,
    path: std::path::PathBuf,
}

impl TorchCheckpoint {
    /// Opens a checkpoint and finds its state dict (flat, or under a wrapper key).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        if !path.is_file() {
            return Err(CheckpointError::MissingFile(path.to_owned()));
        }
        let err = |e: candle_core::Error| CheckpointError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let flat = candle_core::pickle::PthTensors::new(path, None).map_err(err)?;
        if !flat.tensor_infos().is_empty() {
            return Ok(Self {
                inner: flat,
                path: path.to_owned(),
            });
        }
        for key in WRAPPER_KEYS {
            if let Ok(t) = candle_core::pickle::PthTensors::new(path, Some(key)) {
                if !t.tensor_infos().is_empty() {
                    return Ok(Self {
                        inner: t,
                        path: path.to_owned(),
                    });
                }
            }
        }
        Err(CheckpointError::Corrupt {
            path: path.to_owned(),
            message: "no tensors found (expected a state dict, flat or under \"model\")".into(),
        })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.tensor_infos().keys().cloned().collect();
        names.sort();
        names
    }

    /// Shape of a tensor, without reading its data.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner
            .tensor_infos()
            .get(name)
            .map(|t| t.layout.dims().to_vec())
    }

    /// Reads one tensor as contiguous f32.
    pub fn read_f32(&self, name: &str) -> Result<Tensor, CheckpointError> {
        let err = |e: candle_core::Error| CheckpointError::Corrupt {
            path: self.path.clone(),
            message: format!("tensor {name}: {e}"),
        };
        let t = self
            .inner
            .get(name)
            .map_err(err)?
            .ok_or_else(|| CheckpointError::Corrupt {
                path: self.path.clone(),
                message: format!("tensor {name} is listed but cannot be read"),
            })?;
        t.to_dtype(DType::F32)
            .and_then(|t| t.to_device(&Device::Cpu))
            .and_then(|t| t.contiguous())
            .map_err(err)
    }

    /// The file this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
