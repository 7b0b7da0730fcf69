//! Orchestration of many requests over one model: the scheduler's state machine (waiting queue
//! with priorities and deadlines, token-budget admission, paged KV-cache accounting) and the
//! encoder-output cache. No model types, no I/O: the serving task drives them.

pub mod encoder_cache;
pub mod kv_blocks;
pub mod queue;
pub mod state;
#[cfg(test)]
mod tests;

pub use encoder_cache::EncoderCache;
pub use kv_blocks::{BlockAllocator, OutOfBlocks, SeqId};
pub use queue::{Entry, QueueFull, RequestCost, RequestId, WaitQueue};
pub use state::{Decision, Reason, Rejection, SchedulerConfig, SchedulerState};
