//! `lynx-model`: the Lynx multimodal LLM, exact to the official implementation, with no serving
//! code (no async runtime, no gRPC, no command line).
//!
//! Layers, bottom up:
//! - [`config`], [`checkpoint`], [`tokenizer`], [`vision`]: files and inputs in the released
//!   formats; [`prompt`]: the official prompt template, BOS and truncation;
//! - [`forward`]: the network, written once as kernel calls over [`forward::ops::Ops`] and run by
//!   every backend (the CPU kernels, the f64 mirror, CUDA), with its paged KV cache;
//! - [`generation`]: HF-4.28-exact decoding, one resumable decoder per request, over the
//!   [`generation::StepModel`] trait;
//! - [`embedded`]: the generated models (`tiny` by default) in the converted layout;
//! - [`verify`]: a backend's whole forward checked against the host mirror and the official
//!   outputs (above both [`forward`] and [`generation`]);
//! - [`loader`]: a model directory in either layout opened as configuration, tokenizer and
//!   weights;
//! - `oracle` (feature `oracle`, enabled by the tests): the independent candle implementation, its
//!   one-batch pipeline and `LoadedModel`, kept as the test oracle (no serving path reaches it).

pub mod checkpoint;
pub mod config;
pub mod embedded;
pub mod forward;
pub mod generation;
pub mod loader;
#[cfg(feature = "oracle")]
pub mod oracle;
pub mod prompt;
pub mod tokenizer;
pub mod verify;
pub mod vision;
