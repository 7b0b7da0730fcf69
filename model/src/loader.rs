//! Loading a model directory in either layout into a ready [`LoadedModel`].

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::checkpoint::converted::{is_converted, ConvertedCheckpoint};
use crate::checkpoint::release::{load_release, MergedCheckpoint};
use crate::checkpoint::CheckpointError;
use crate::config::LynxConfig;
use crate::oracle::Lynx;
use crate::tokenizer::LynxTokenizer;

/// Which on-disk layout a model directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `eva_vit_g.pth` + `vicuna-7b/` + `finetune_lynx.pt` + YAML.
    Release,
    /// safetensors + `lynx.json` + `tokenizer.json`.
    Converted,
}

/// A model ready to run: weights, tokenizer and validated config.
pub struct LoadedModel {
    /// The network.
    pub model: Lynx,
    /// The tokenizer.
    pub tokenizer: LynxTokenizer,
    /// The configuration.
    pub config: LynxConfig,
    /// Layout it was loaded from.
    pub layout: Layout,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("model_name", &self.config.model_name)
            .field("layout", &self.layout)
            .finish()
    }
}

/// A model directory's configuration, tokenizer and weights (not yet built into a network).
pub struct OpenedWeights {
    /// The configuration.
    pub config: LynxConfig,
    /// The tokenizer.
    pub tokenizer: LynxTokenizer,
    /// The weights in the LynxBase key namespace.
    pub weights: VarBuilder<'static>,
    /// Layout they were read from.
    pub layout: Layout,
}

/// Opens `dir` in either layout (see [`LoadedModel::load`]) without building the CPU network:
/// the GPU path uploads the weights from here.
pub fn open_weights(dir: &Path, config: Option<&Path>) -> Result<OpenedWeights, CheckpointError> {
    if !dir.is_dir() {
        return Err(CheckpointError::MissingFile(dir.to_owned()));
    }
    if is_converted(dir) {
        let (config, tokenizer, weights) = ConvertedCheckpoint::open(dir)?.var_builder();
        Ok(OpenedWeights {
            config,
            tokenizer,
            weights,
            layout: Layout::Converted,
        })
    } else {
        let merged = load_release(dir, config)?;
        Ok(OpenedWeights {
            weights: VarBuilder::from_tensors(merged.tensors, DType::F32, &Device::Cpu),
            config: merged.config,
            tokenizer: merged.tokenizer,
            layout: Layout::Release,
        })
    }
}

impl LoadedModel {
    /// Loads `dir`: the converted layout when `lynx.json` is present, else the release layout with
    /// its YAML (`config`, or `LYNX.yaml` in `dir`).
    pub fn load(dir: &Path, config: Option<&Path>) -> Result<Self, CheckpointError> {
        let opened = open_weights(dir, config)?;
        Ok(Self {
            model: Lynx::load(opened.weights, &opened.config)?,
            tokenizer: opened.tokenizer,
            config: opened.config,
            layout: opened.layout,
        })
    }

    /// Builds the model from a merged release checkpoint.
    pub fn from_merged(merged: MergedCheckpoint) -> Result<Self, CheckpointError> {
        let vb = VarBuilder::from_tensors(merged.tensors, DType::F32, &Device::Cpu);
        let model = Lynx::load(vb, &merged.config)?;
        Ok(Self {
            model,
            tokenizer: merged.tokenizer,
            config: merged.config,
            layout: Layout::Release,
        })
    }
}
