//! A model directory loaded into the oracle: weights, tokenizer and validated config.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::Lynx;
use crate::checkpoint::release::MergedCheckpoint;
use crate::checkpoint::CheckpointError;
use crate::config::LynxConfig;
use crate::loader::{open_weights, Layout};
use crate::tokenizer::LynxTokenizer;

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

impl LoadedModel {
    /// Loads `dir` in either layout (see [`open_weights`]).
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
