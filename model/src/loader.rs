//! Opening a model directory in either layout: its configuration, tokenizer and weights.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::checkpoint::converted::{is_converted, ConvertedCheckpoint};
use crate::checkpoint::release::load_release;
use crate::checkpoint::CheckpointError;
use crate::config::LynxConfig;
use crate::tokenizer::LynxTokenizer;

/// Which on-disk layout a model directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `eva_vit_g.pth` + `vicuna-7b/` + `finetune_lynx.pt` + YAML.
    Release,
    /// safetensors + `lynx.json` + `tokenizer.json`.
    Converted,
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

/// Opens `dir`: the converted layout when `lynx.json` is present, else the release layout with
/// its YAML (`config`, or `LYNX.yaml` in `dir`). Every backend uploads its weights from here.
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
