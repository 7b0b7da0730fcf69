//! `lynx-worker`: the Lynx multimodal LLM on CPU (candle), exact to the official implementation.
//!
//! Layers, bottom up:
//! - [`config`], [`checkpoint`], [`tokenizer`], [`vision`]: files and inputs in the released formats;
//! - [`model`]: the network (ViT, resampler, LLaMA with adapters), hot code with no orchestration;
//! - [`forward`]: the same network as kernel calls, on the GPU or its host mirror;
//! - [`generation`]: HF-4.28-exact decoding, one resumable decoder per request;
//! - [`engine`]: the scheduler's state machine (queue, token budget, KV blocks, encoder cache);
//! - [`loader`], [`pipeline`], [`prompt`]: one batch end to end;
//! - [`embedded`]: the generated tiny model used by default;
//! - [`verify`]: a backend's whole forward checked against the host mirror and the official
//!   outputs (above both [`forward`] and [`generation`]);
//! - [`served`]: the model as the server sees it (CPU model or the forward on a device);
//! - [`runner`]: the model thread that serves many requests (dynamic + continuous batching);
//! - [`serve`]: the gRPC and HTTP servers, limits, [`metrics`], graceful drain;
//! - [`cli`]: the `lynx-worker` command line, its GPU selftest / bench / model check in
//!   [`cli::gpu`] (kernels in the `lynx-kernels` crate; the `lynx` client is the crate
//!   `lynx-client`).

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod forward;
/// Fuzz targets over the untrusted inputs (images, videos, token ids, requests); see `fuzz/`.
pub mod fuzz;
pub mod generation;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod prompt;
pub mod runner;
pub mod serve;
pub mod served;
pub mod tokenizer;
pub mod verify;
pub mod vision;
