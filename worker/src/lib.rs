//! `lynx-worker`: the Lynx worker: the model of the `lynx-model` crate (re-exported here:
//! [`config`], [`checkpoint`], [`tokenizer`], [`vision`], [`prompt`], [`forward`],
//! [`generation`], [`embedded`], [`verify`], and the test oracle [`oracle`], [`loader`],
//! [`pipeline`]) served to many clients.
//!
//! Orchestration layers, bottom up:
//! - [`engine`]: the scheduler's state machine (queue, token budget, KV blocks, encoder cache);
//! - [`served`]: the model as the server sees it, and the [`served::Backend`] trait the model
//!   thread runs the forward through;
//! - [`runner`]: the model thread that serves many requests (dynamic + continuous batching);
//! - [`serve`]: the gRPC and HTTP servers, limits, [`metrics`], graceful drain;
//! - [`cli`]: the `lynx-worker` command line, its GPU selftest / bench / model check in
//!   [`cli::gpu`] (kernels in the `lynx-kernels` crate; the `lynx` client is the crate
//!   `lynx-client`).

pub use lynx_model::{
    checkpoint, config, embedded, forward, generation, loader, oracle, pipeline, prompt,
    tokenizer, verify, vision,
};

pub mod cli;
pub mod engine;
/// Fuzz targets over the untrusted inputs (images, videos, token ids, requests); see `fuzz/`.
pub mod fuzz;
pub mod metrics;
pub mod runner;
pub mod serve;
pub mod served;
