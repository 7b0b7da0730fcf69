//! `lynx-worker`: the Lynx worker: the model of the `lynx-model` crate (re-exported here:
//! [`config`], [`checkpoint`], [`tokenizer`], [`vision`], [`prompt`], [`forward`],
//! [`generation`], [`embedded`], [`verify`], [`loader`]) served to many clients. (The candle test
//! oracle, `lynx_model::oracle`, is built for tests only.)
//!
//! The engine of the `lynx-engine` crate is re-exported too: [`backend`] (the
//! [`backend::Backend`] trait), [`scheduler`], [`runner`] (the model thread), [`metrics`].
//!
//! The worker's own layers:
//! - [`serve`]: the gRPC, OpenAI and HTTP servers, limits, request preparation, graceful drain;
//! - [`cli`]: the `lynx-worker` command line, its GPU selftest / bench / model check in
//!   [`cli::gpu`] (kernels in the `lynx-kernels` crate; the `lynx` client is the crate
//!   `lynx-client`).

pub use lynx_model::{
    checkpoint, config, embedded, forward, generation, loader, prompt, tokenizer, verify, vision,
};

pub use lynx_engine::{backend, metrics, runner, scheduler, with_backend};

pub mod cli;
pub mod fuzz;
pub mod serve;
