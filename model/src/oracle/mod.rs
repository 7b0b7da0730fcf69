//! The Lynx model on candle (CPU, f32): the reference implementation. Each layer is a `load` /
//! `forward` pair; `load` reads the tensors its group of [`crate::checkpoint::keys`] names.

pub mod llama;
pub mod loaded;
pub mod lynx;
pub mod nn;
pub mod pipeline;
pub mod resampler;
pub mod vit;

pub use llama::{KvCache, LlamaModel};
pub use loaded::LoadedModel;
pub use lynx::{positions_from_mask, LlmSession, Lynx, Prefill, VisionBatch};
