//! `lynx-engine`: many requests over one model. No network, no command line: the worker's
//! servers and its `generate` command submit here.
//!
//! - [`backend`]: [`backend::ServedModel`] (what the server knows of the model) and the
//!   [`backend::Backend`] trait the model thread runs the forward program through, implemented
//!   for the `lynx-model` forward on every `Ops` backend; the one run-time choice, [`backend::Backends`];
//! - [`scheduler`]: the scheduler's state machine (waiting queue with priorities and deadlines,
//!   token-budget admission, KV-block accounting) and the encoder-output cache;
//! - [`runner`]: the model thread (dynamic + continuous batching, one decoder per request);
//! - [`metrics`]: the Prometheus registry the engine and the servers record into.

pub mod backend;
pub mod metrics;
pub mod runner;
pub mod scheduler;

// The model's modules, as the engine's code names them.
use lynx_model::{config, forward, generation, prompt, tokenizer};
