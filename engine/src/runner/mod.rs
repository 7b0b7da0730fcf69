//! The model thread: one dedicated OS thread owns the model, the scheduler state, the running
//! decode session and the encoder-output cache, and serves every request. Async handlers talk to
//! it through channels only, so blocking CPU work never runs on the async runtime.
//!
//! Between two decode steps the thread takes new requests from its inbox into the
//! [`SchedulerState`](crate::scheduler::SchedulerState), lets it decide which waiting requests join
//! (dynamic batching when idle, continuous batching while running), encodes the vision inputs of
//! all admitted requests together (through the encoder cache), prefills them and joins their rows
//! to the running session; then it advances every request's decoder by one step and feeds the
//! next tokens. Finished, cancelled and expired requests leave at once.
//!
//! # Guarantees
//! - A request's tokens do not depend on the other requests in the batch (each request has its
//!   own decoder; joining left-pads with masked positions).
//! - Every request submitted gets exactly one [`Event::Done`], unless its client left first.
//! - A client that drops its event receiver is removed at the next step, its KV blocks freed.

mod admit;
mod batch_loop;
mod error;
pub mod text;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;

pub use error::RequestError;

use crate::backend::{Backend, Backends, ServedModel};
use crate::generation::GenerationParams;
use crate::metrics::Metrics;
use crate::scheduler::{Entry, RequestCost, SchedulerConfig};

/// Content hash of an encoded image or video (SHA-256): the encoder cache's key.
pub type ContentKey = [u8; 32];

/// Preprocessed pixels of one vision input.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// One image, `3 * R * R` normalised values.
    Image(Vec<f32>),
    /// One video: the model's frame count, `3 * R * R` values each.
    Video(Vec<Vec<f32>>),
}

/// One vision input of a request; its encoding becomes `num_latents` vision tokens.
#[derive(Debug, Clone)]
pub struct VisionItem {
    /// Hash of the encoded bytes.
    pub key: ContentKey,
    /// Preprocessed pixels.
    pub pixels: Pixels,
}

/// A validated request, ready for the model.
#[derive(Debug)]
pub struct Job {
    /// Prompt token ids (BOS included, truncated as the official code does).
    pub prompt_ids: Vec<u32>,
    /// Vision inputs, in order; their encodings are concatenated in front of the prompt.
    pub vision: Vec<VisionItem>,
    /// Decoding parameters.
    pub params: GenerationParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Whether token/text deltas are wanted.
    pub stream: bool,
    /// Whether the request may wait up to the batching delay for others (false: admitted at the
    /// next decision, e.g. the warm-up request).
    pub wait_for_batch: bool,
    /// Scheduling priority, higher first.
    pub priority: u8,
    /// When the client stops waiting.
    pub deadline: Option<Instant>,
    /// When the request arrived.
    pub received: Instant,
    /// Where the request's events go.
    pub events: mpsc::Sender<Event>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-sequence token.
    Eos,
    /// `max_new_tokens` reached.
    Length,
    /// A stop string appeared.
    Stop,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Text prompt tokens (BOS included).
    pub prompt_tokens: usize,
    /// Vision tokens in front of the prompt.
    pub vision_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// Time per stage of one request, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Arrival to admission.
    pub queue_ms: f64,
    /// The vision-encoder run of its admission batch.
    pub vision_ms: f64,
    /// The prefill of its admission group.
    pub prefill_ms: f64,
    /// Prefill end to the last token.
    pub decode_ms: f64,
}

/// A finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Generated token ids (without EOS).
    pub token_ids: Vec<u32>,
    /// The answer: decoded, cut before a stop string, stripped.
    pub text: String,
    /// Why generation ended.
    pub finish: Finish,
    /// Token counts.
    pub usage: Usage,
    /// Stage timings.
    pub timings: StageTimings,
}

/// What the model thread tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New tokens and the text they complete (streaming requests only).
    Delta {
        /// New token ids.
        token_ids: Vec<u32>,
        /// New text.
        text: String,
    },
    /// The request is over.
    Done(Result<Finished, RequestError>),
}

/// Configuration of the model thread.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The scheduler's limits.
    pub scheduler: SchedulerConfig,
    /// Capacity of the encoder-output cache, in bytes.
    pub encoder_cache_bytes: usize,
}

struct Submission(Entry<Job>);

/// The async side's handle on the model thread. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Submission>,
    waiting: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
    max_queue: usize,
    vision_tokens_per_item: usize,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

impl EngineHandle {
    /// Reserves a place in the waiting queue for a request that is still to be prepared.
    /// Refuses at once (RESOURCE_EXHAUSTED) when `max_queue` requests already wait or hold a
    /// reservation, so that a refused request costs no preparation.
    pub fn reserve(&self) -> Result<QueueSlot, RequestError> {
        if self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < self.max_queue).then_some(w + 1)
            })
            .is_err()
        {
            return Err(RequestError::QueueFull {
                max_queue: self.max_queue,
            });
        }
        Ok(QueueSlot {
            engine: self.clone(),
            held: true,
        })
    }

    /// Queues `job`: [`EngineHandle::reserve`] then [`QueueSlot::submit`].
    pub fn submit(&self, job: Job) -> Result<(), RequestError> {
        self.reserve()?.submit(job)
    }

    /// Requests submitted or reserved and not yet admitted.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether [`EngineHandle::reserve`] would refuse now (`max_queue` places taken).
    pub fn is_full(&self) -> bool {
        self.waiting() >= self.max_queue
    }

    /// The queue's capacity (`--max-queue`).
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }
}

/// A reserved place in the waiting queue ([`EngineHandle::reserve`]); released when dropped
/// without [`QueueSlot::submit`].
#[derive(Debug)]
pub struct QueueSlot {
    engine: EngineHandle,
    held: bool,
}

impl QueueSlot {
    /// Hands `job` to the model thread; the place becomes the job's until it is admitted.
    pub fn submit(mut self, job: Job) -> Result<(), RequestError> {
        let e = &self.engine;
        let cost = RequestCost {
            prompt_tokens: job.prompt_ids.len(),
            vision_tokens: job.vision.len() * e.vision_tokens_per_item,
            max_new_tokens: job.params.max_new_tokens,
            beams: job.params.rows_per_request(),
        };
        let entry = Entry {
            id: e.next_id.fetch_add(1, Ordering::Relaxed),
            priority: job.priority,
            arrived: job.received,
            deadline: job.deadline,
            cost,
            payload: job,
        };
        match e.tx.try_send(Submission(entry)) {
            Ok(()) => {
                // The model thread releases the place when it admits or drops the job.
                self.held = false;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(RequestError::QueueFull {
                max_queue: e.max_queue,
            }),
            Err(TrySendError::Disconnected(_)) => {
                Err(RequestError::Unavailable("the model thread has stopped"))
            }
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if self.held {
            self.engine.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Starts the model thread on `backend`. It runs until every [`EngineHandle`] is dropped and the
/// requests it holds are finished. The scheduler reserves from the backend's KV cache: its block
/// count and size replace the configured ones.
pub fn spawn<B: Backend>(
    model: Arc<ServedModel>,
    backend: B,
    mut cfg: RunnerConfig,
    metrics: Metrics,
) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
    (cfg.scheduler.kv_blocks, cfg.scheduler.kv_block_size) = backend.kv_blocks();
    let (tx, rx) = sync_channel(cfg.scheduler.max_queue.max(1));
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle {
        tx,
        waiting: Arc::clone(&waiting),
        next_id: Arc::new(AtomicU64::new(1)),
        max_queue: cfg.scheduler.max_queue,
        vision_tokens_per_item: model.config.bridge.num_latents,
    };
    let thread = std::thread::Builder::new()
        .name("lynx-model".into())
        .spawn(move || batch_loop::run(&model, &backend, cfg, rx, &waiting, &metrics))?;
    Ok((handle, thread))
}

/// [`spawn`] on whichever backend was loaded.
pub fn spawn_any(
    model: Arc<ServedModel>,
    backend: Backends,
    cfg: RunnerConfig,
    metrics: Metrics,
) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
    crate::with_backend!(backend, b => spawn(model, b, cfg, metrics))
}
