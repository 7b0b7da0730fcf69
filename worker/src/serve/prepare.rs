//! The expensive half of the front door: decoding and preprocessing the images / frames and
//! tokenizing the prompt of a request that passed [`super::limits::check`] and holds a place in
//! the queue. It runs on the blocking pool with bounded concurrency (`--prepare-threads`), one
//! vision input at a time per request, and every image's decoding memory, read from its header
//! ([`vision::ImageHeader::prepare_bytes`]), is reserved from a byte budget (`--prepare-memory-mib`)
//! before any pixel is decoded. So the memory preparation can take is at most the budget.
//!
//! Before all that, a request holds an [`Incoming`] place from its arrival (its headers, before
//! its message is read) until it is queued or refused: at most `--max-incoming-requests`
//! messages are received, decoded and prepared at once, which bounds their memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use lynx_proto::v1;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};

use super::limits::{Checked, Limits};
use crate::backend::ServedModel;
use crate::metrics::Metrics;
use crate::runner::{ContentKey, Event, Job, Pixels, RequestError, VisionItem};
use crate::vision::{self, PreprocessConfig, VisionError, VisionLimits};

/// Default `--prepare-memory-mib`: room for the largest image the default limits admit
/// (40 Mpx of 16-bit RGBA, 440 MB decoded) twice over.
pub const DEFAULT_PREPARE_MEMORY_MIB: u64 = lynx_serve_flags::DEFAULT_PREPARE_MEMORY_MIB;

/// Default `--max-incoming-requests`.
pub const DEFAULT_MAX_INCOMING_REQUESTS: usize =
    lynx_serve_flags::DEFAULT_MAX_INCOMING_REQUESTS as usize;

/// How much preparation may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareConfig {
    /// Requests prepared at once (blocking threads).
    pub threads: usize,
    /// Bytes that image decoding may hold at once, over all requests.
    pub memory_bytes: u64,
    /// Requests between arrival and the queue at once (being received, checked or prepared).
    pub max_incoming: usize,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, usize::from),
            memory_bytes: DEFAULT_PREPARE_MEMORY_MIB << 20,
            max_incoming: DEFAULT_MAX_INCOMING_REQUESTS,
        }
    }
}

/// A request's place among those between arrival and the queue ([`Preparer::admit`]); the
/// place is free again when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Incoming {
    _place: Arc<IncomingPlace>,
}

#[derive(Debug)]
struct IncomingPlace {
    count: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Drop for IncomingPlace {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.incoming_requests.dec();
    }
}

/// Where a validated request's answer goes, and its timing.
#[derive(Debug)]
pub struct Delivery {
    /// Whether deltas are wanted.
    pub stream: bool,
    /// Arrival.
    pub received: Instant,
    /// The client's deadline.
    pub deadline: Option<Instant>,
    /// The request's event channel.
    pub events: mpsc::Sender<Event>,
}

/// A byte budget that blocking threads reserve from, waiting while it is spent.
#[derive(Debug)]
struct MemoryBudget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes reserved from a [`MemoryBudget`], returned when dropped.
struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
    metrics: &'a Metrics,
}

impl MemoryBudget {
    fn reserve<'a>(
        &'a self,
        bytes: u64,
        deadline: Option<Instant>,
        metrics: &'a Metrics,
    ) -> Result<Reservation<'a>, RequestError> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used + bytes > self.total {
            used = match deadline {
                None => self.freed.wait(used).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RequestError::DeadlineExceeded(
                            "while waiting for image decoding memory",
                        ));
                    }
                    self.freed
                        .wait_timeout(used, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        *used += bytes;
        metrics.prepare_memory.set(*used as i64);
        Ok(Reservation {
            budget: self,
            bytes,
            metrics,
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.bytes;
        self.metrics.prepare_memory.set(*used as i64);
        self.budget.freed.notify_all();
    }
}

/// Prepares requests with bounded concurrency and decoding memory.
#[derive(Debug)]
pub struct Preparer {
    incoming: Arc<AtomicUsize>,
    max_incoming: usize,
    threads: Arc<Semaphore>,
    budget: Arc<MemoryBudget>,
    metrics: Metrics,
}

impl Preparer {
    /// A preparer with `cfg`'s bounds (at least one thread).
    pub fn new(cfg: PrepareConfig, metrics: Metrics) -> Self {
        Self {
            incoming: Arc::default(),
            max_incoming: cfg.max_incoming.max(1),
            threads: Arc::new(Semaphore::new(cfg.threads.max(1))),
            budget: Arc::new(MemoryBudget {
                total: cfg.memory_bytes,
                used: Mutex::new(0),
                freed: Condvar::new(),
            }),
            metrics,
        }
    }

    /// A place for a request that has just arrived; refused (RESOURCE_EXHAUSTED) while
    /// `max_incoming_requests` requests are being received, checked or prepared.
    pub fn admit(&self) -> Result<Incoming, RequestError> {
        self.incoming
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_incoming).then_some(n + 1)
            })
            .map_err(|_| RequestError::TooManyIncoming {
                max_incoming_requests: self.max_incoming,
            })
            .map(|_| self.metrics.incoming_requests.inc())?;
        Ok(Incoming {
            _place: Arc::new(IncomingPlace {
                count: Arc::clone(&self.incoming),
                metrics: self.metrics.clone(),
            }),
        })
    }

    /// Decodes, preprocesses and tokenizes `req` into a [`Job`]. Waits for a preparation thread
    /// and for decoding memory at most until the request's deadline.
    pub async fn prepare(
        &self,
        req: v1::GenerateRequest,
        checked: Checked,
        model: &Arc<ServedModel>,
        limits: &Limits,
        delivery: Delivery,
    ) -> Result<Job, RequestError> {
        let acquire = Arc::clone(&self.threads).acquire_owned();
        let permit = match delivery.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), acquire)
                .await
                .map_err(|_| {
                    RequestError::DeadlineExceeded("while waiting for a preparation thread")
                })?,
            None => acquire.await,
        }
        .map_err(|_| RequestError::Unavailable("the worker is shutting down"))?;
        let work = self.work(model, limits);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work.run(&req, checked, delivery)
        })
        .await
        .map_err(|e| RequestError::Internal(format!("request preparation failed: {e}")))?
    }

    /// What [`Preparer::prepare`] runs on its blocking thread, on the calling thread and without
    /// waiting for a preparation thread (the memory budget still applies): for fuzzing.
    pub fn prepare_here(
        &self,
        req: &v1::GenerateRequest,
        checked: Checked,
        model: &Arc<ServedModel>,
        limits: &Limits,
        delivery: Delivery,
    ) -> Result<Job, RequestError> {
        self.work(model, limits).run(req, checked, delivery)
    }

    fn work(&self, model: &Arc<ServedModel>, limits: &Limits) -> Work {
        Work {
            budget: Arc::clone(&self.budget),
            metrics: self.metrics.clone(),
            model: Arc::clone(model),
            limits: limits.clone(),
        }
    }
}

/// One request's preparation, on a blocking thread.
struct Work {
    budget: Arc<MemoryBudget>,
    metrics: Metrics,
    model: Arc<ServedModel>,
    limits: Limits,
}

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::InvalidArgument(msg.into())
}

fn content_key(chunks: &[&[u8]]) -> ContentKey {
    let mut h = Sha256::new();
    for c in chunks {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c);
    }
    h.finalize().into()
}

impl Work {
    fn run(
        &self,
        req: &v1::GenerateRequest,
        checked: Checked,
        delivery: Delivery,
    ) -> Result<Job, RequestError> {
        let m = &self.model;
        let text = m.config.format_prompt(&req.instruction);
        let tokens = m
            .tokenizer
            .encode(&text)
            .map_err(|e| invalid(format!("instruction cannot be tokenized: {e}")))?;
        let prompt_tokens = tokens.len() + 1;
        if prompt_tokens > self.limits.max_prompt_tokens {
            return Err(invalid(format!(
                "prompt has {prompt_tokens} tokens, more than max_prompt_tokens = {}",
                self.limits.max_prompt_tokens
            )));
        }
        // As the official code: BOS + tokens, the last `max_input_tokens` kept.
        let mut prompt_ids = Vec::with_capacity(prompt_tokens);
        prompt_ids.push(m.config.tokens.bos);
        prompt_ids.extend(tokens);
        let keep = m.config.prompt.max_input_tokens;
        if prompt_ids.len() > keep {
            prompt_ids.drain(..prompt_ids.len() - keep);
        }
        let vision = self.vision_items(req, delivery.deadline)?;
        Ok(Job {
            prompt_ids,
            vision,
            params: checked.params,
            stop: checked.stop,
            stream: delivery.stream,
            wait_for_batch: true,
            priority: checked.priority,
            deadline: delivery.deadline,
            received: delivery.received,
            events: delivery.events,
        })
    }

    /// The vision inputs of `req`, decoded one at a time.
    fn vision_items(
        &self,
        req: &v1::GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<Vec<VisionItem>, RequestError> {
        if let Some(video) = &req.video {
            let ids = vision::sample_frame_ids(video.frames.len(), self.model.config.num_frames);
            let mut frames = Vec::with_capacity(ids.len());
            let mut chosen: Vec<&[u8]> = Vec::with_capacity(ids.len());
            for i in ids {
                let bytes = &video.frames[i];
                frames.push(self.pixels(&format!("video frame {i}"), bytes, deadline)?);
                chosen.push(bytes);
            }
            return Ok(vec![VisionItem {
                key: content_key(&chosen),
                pixels: Pixels::Video(frames),
            }]);
        }
        req.images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                Ok(VisionItem {
                    pixels: Pixels::Image(self.pixels(
                        &format!("image {i}"),
                        &img.data,
                        deadline,
                    )?),
                    key: content_key(&[&img.data]),
                })
            })
            .collect()
    }

    /// Reads one image's header, reserves its decoding memory, decodes and preprocesses it.
    fn pixels(
        &self,
        what: &str,
        bytes: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, RequestError> {
        let config = &self.model.config;
        let vl = VisionLimits {
            max_image_bytes: self.limits.max_image_bytes,
            max_pixels: self.limits.max_image_pixels,
            max_video_frames: self.limits.max_video_frames,
        };
        let refused = |e: VisionError| {
            invalid(match e.root() {
                VisionError::TooManyPixels {
                    width,
                    height,
                    limit,
                } => format!(
                    "{what} is {width}x{height} pixels, more than max_image_pixels = {limit}"
                ),
                _ => format!("{what} cannot be decoded: {e}"),
            })
        };
        let header = vision::read_header(bytes, &vl).map_err(refused)?;
        let cost = header.prepare_bytes(config.vision.image_res);
        if cost > self.budget.total {
            return Err(invalid(format!(
                "{what} ({}x{} {:?}) needs {} MiB to decode, more than the preparation memory \
                 budget of {} MiB (prepare_memory_mib)",
                header.width,
                header.height,
                header.format,
                cost.div_ceil(1 << 20),
                self.budget.total >> 20
            )));
        }
        let _reserved = self.budget.reserve(cost, deadline, &self.metrics)?;
        self.metrics.vision_inputs_decoded.inc();
        let img = vision::decode_with_header(bytes, &header, &vl).map_err(refused)?;
        let pre = PreprocessConfig {
            image_res: config.vision.image_res,
            mean: config.image_norm.mean,
            std: config.image_norm.std,
        };
        Ok(vision::preprocess(&img, &pre))
    }
}
