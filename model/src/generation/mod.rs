//! Decoding with HF transformers 4.28 semantics over any [`StepModel`]: greedy, beam search, sampling
//! and the official release preset (beam sampling). Pure logic on host-side logits; the model side
//! only feeds tokens and reorders rows.
//!
//! Common to every mode: the sequence starts with the BOS placeholder (never fed to the model,
//! counted in all lengths), the YAML's `min_length` and `no_repeat_ngram_size` always apply, and
//! decoding stops on EOS or after `max_new_tokens`.

mod decoder;
pub mod processors;
mod search;
#[cfg(test)]
mod tests;

use std::str::FromStr;

pub use decoder::{RequestDecoder, Step};
pub use processors::ngram_bans;
pub use search::{generate, GenerationError};

use crate::config::GenerationDefaults;

/// A model step's failure, whatever computes it (the candle model, the forward program): decoding
/// only reports it.
pub type StepError = Box<dyn std::error::Error + Send + Sync>;

/// What a decode step answers for one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The next-token logits.
    Logits,
    /// Only the first index of their maximum once the logits of `banned` are -inf: a greedy row
    /// (its n-gram and min-length bans), picked where the logits are computed.
    Argmax {
        /// Token ids the row may not pick (repeats allowed).
        banned: Vec<u32>,
    },
}

/// One row's answer to a decode step.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The next-token logits.
    Logits(Vec<f32>),
    /// The picked token ([`Want::Argmax`]).
    Token(u32),
}

/// The model side of decoding.
pub trait StepModel {
    /// Feeds one token per row, returns the next-token logits per row.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, StepError>;
    /// Like [`Self::step`], but row `i` answers as `wants[i]` says ([`RequestDecoder::wants`]):
    /// a device model then copies only ids, not logits, to the host for greedy rows. By default
    /// the logits are computed and picked on the host.
    fn step_picking(&mut self, tokens: &[u32], wants: &[Want]) -> Result<Vec<Next>, StepError> {
        let logits = self.step(tokens)?;
        Ok(logits
            .into_iter()
            .zip(wants.iter().chain(std::iter::repeat(&Want::Logits)))
            .map(|(mut row, want)| match want {
                Want::Argmax { banned } => Next::Token(decoder::pick(&mut row, banned)),
                Want::Logits => Next::Logits(row),
            })
            .collect())
    }
    /// Reorders rows: new row `i` is old row `rows[i]`.
    fn select_rows(&mut self, rows: &[u32]) -> Result<(), StepError>;
}

/// Decoding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodingMode {
    /// Argmax at every step.
    Greedy,
    /// Deterministic beam search.
    Beam,
    /// Multinomial sampling (temperature, top-k, top-p), seeded.
    Sample,
    /// The official release preset: beam sampling with the YAML's beams, top-k, top-p.
    Lynx,
}

impl FromStr for DecodingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "greedy" => Ok(Self::Greedy),
            "beam" => Ok(Self::Beam),
            "sample" => Ok(Self::Sample),
            "lynx" => Ok(Self::Lynx),
            other => Err(format!(
                "unknown decoding mode `{other}` (expected greedy, beam, sample or lynx)"
            )),
        }
    }
}

impl std::fmt::Display for DecodingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Greedy => "greedy",
            Self::Beam => "beam",
            Self::Sample => "sample",
            Self::Lynx => "lynx",
        })
    }
}

/// Fully resolved decoding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Mode.
    pub mode: DecodingMode,
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// Minimum total length incl. the BOS placeholder (EOS banned before).
    pub min_length: usize,
    /// No-repeat n-gram size (0 = off).
    pub no_repeat_ngram_size: usize,
    /// Beams (1 for greedy and sample).
    pub num_beams: usize,
    /// Beam length penalty exponent.
    pub length_penalty: f64,
    /// Sampling temperature.
    pub temperature: f64,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Top-p (1 = off).
    pub top_p: f64,
    /// RNG seed for the sampling modes.
    pub seed: u64,
}

impl GenerationParams {
    /// Parameters of `mode` from the YAML defaults, as the official `generate` applies them.
    pub fn from_defaults(d: &GenerationDefaults, mode: DecodingMode) -> Self {
        let num_beams = match mode {
            DecodingMode::Greedy | DecodingMode::Sample => 1,
            DecodingMode::Beam | DecodingMode::Lynx => d.num_beams.max(1),
        };
        Self {
            mode,
            max_new_tokens: d.max_new_tokens,
            min_length: d.min_length,
            no_repeat_ngram_size: d.no_repeat_ngram_size,
            num_beams,
            length_penalty: d.length_penalty,
            temperature: d.temperature,
            top_k: d.top_k,
            top_p: d.top_p,
            seed: 0,
        }
    }

    /// Checks the values HF would reject (or that make no sense), naming the parameter.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".into());
        }
        if self.num_beams == 0 {
            return Err("num_beams must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("temperature must be > 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.length_penalty.is_finite() {
            return Err(format!(
                "length_penalty must be finite, got {}",
                self.length_penalty
            ));
        }
        Ok(())
    }

    /// Rows the model runs per request.
    pub fn rows_per_request(&self) -> usize {
        match self.mode {
            DecodingMode::Beam | DecodingMode::Lynx => self.num_beams.max(1),
            DecodingMode::Greedy | DecodingMode::Sample => 1,
        }
    }
}

/// Why generation of a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS was produced.
    Eos,
    /// `max_new_tokens` reached.
    Length,
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Eos => "eos",
            Self::Length => "length",
        })
    }
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Full HF output row: BOS placeholder, new tokens, then EOS/pads as transformers returns them.
    pub sequence: Vec<u32>,
    /// New tokens only: no placeholder, cut before the first EOS, no padding.
    pub token_ids: Vec<u32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// Special ids decoding needs.
#[derive(Debug, Clone, Copy)]
pub struct DecodeIds {
    /// BOS placeholder.
    pub bos: u32,
    /// EOS.
    pub eos: u32,
    /// Pad (finished rows).
    pub pad: u32,
}
