//! Admission of a scheduler batch: one vision-encoder run over every image and video of the
//! admitted requests that the encoder cache does not hold, then one prefill per group of requests
//! with the same vision-prefix length and rows per request, joined to the running session.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::batch_loop::{Active, Engine};
use super::text::TextStream;
use super::{ContentKey, Job, Pixels, RequestError, StageTimings};
use crate::backend::{Backend, BackendSession};
use crate::forward::ForwardError;
use crate::generation::{Next, RequestDecoder};
use crate::scheduler::Entry;

type Result<T> = std::result::Result<T, ForwardError>;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl<'m, B: Backend> Engine<'m, B> {
    /// Starts `entries` (just admitted by the scheduler) and joins them to the running batch.
    pub(super) fn admit(&mut self, entries: Vec<Entry<Job>>, now: Instant) {
        for e in &entries {
            let queued = now.saturating_duration_since(e.payload.received);
            self.metrics.queue_duration.observe(queued.as_secs_f64());
            self.metrics
                .prompt_tokens
                .inc_by(e.cost.prompt_tokens as u64);
            self.metrics
                .vision_tokens
                .inc_by(e.cost.vision_tokens as u64);
        }
        let t_vision = Instant::now();
        let encoded = match self.encode_vision(&entries) {
            Ok(encoded) => encoded,
            Err(err) => {
                tracing::error!(error = %err, "vision encoder failed");
                for e in entries {
                    let why = RequestError::Internal(format!("vision encoder: {err}"));
                    self.fail(e.id, &e.payload.events, why);
                }
                return;
            }
        };
        let vision_ms = ms(t_vision);
        let mut groups: BTreeMap<(usize, usize), Vec<Entry<Job>>> = BTreeMap::new();
        for e in entries {
            let key = (e.payload.vision.len(), e.payload.params.rows_per_request());
            groups.entry(key).or_default().push(e);
        }
        for ((_, rows), group) in groups {
            let t_prefill = Instant::now();
            let started = self.prefill(&group, &encoded, rows);
            let prefill_ms = ms(t_prefill);
            let (session, first) = match started {
                Ok(s) => s,
                Err(err) => {
                    for e in group {
                        let why = RequestError::Internal(format!("prefill: {err}"));
                        self.fail(e.id, &e.payload.events, why);
                    }
                    continue;
                }
            };
            match self.session.as_mut() {
                None => self.session = Some(session),
                Some(running) => running.join(session),
            }
            self.logits.extend(first.into_iter().map(Next::Logits));
            let decode_started = Instant::now();
            for e in group {
                let queue_ms = now
                    .saturating_duration_since(e.payload.received)
                    .as_secs_f64()
                    * 1e3;
                let decoder = match RequestDecoder::new(&e.payload.params, self.ids) {
                    Ok(d) => d,
                    Err(msg) => {
                        // Validated before submission; unreachable in practice. The rows stay
                        // in the session, so the whole batch must be restarted.
                        self.fail(e.id, &e.payload.events, RequestError::InvalidArgument(msg));
                        self.fail_all("a request with invalid parameters reached the model");
                        return;
                    }
                };
                self.active.push(Active {
                    id: e.id,
                    rows,
                    vision_tokens: e.cost.vision_tokens,
                    decoder,
                    text: TextStream::default(),
                    timings: StageTimings {
                        queue_ms,
                        vision_ms,
                        prefill_ms,
                        decode_ms: 0.0,
                    },
                    decode_started,
                    last_token: None,
                    job: e.payload,
                });
            }
        }
    }

    /// Encodings of every vision input of `entries`, from the cache or from one encoder run
    /// per kind (images, videos) over all the missing ones.
    fn encode_vision(&mut self, entries: &[Entry<Job>]) -> Result<HashMap<ContentKey, B::Prefix>> {
        let mut out: HashMap<ContentKey, B::Prefix> = HashMap::new();
        let mut images: Vec<(ContentKey, &Vec<f32>)> = Vec::new();
        let mut videos: Vec<(ContentKey, &Vec<Vec<f32>>)> = Vec::new();
        for item in entries.iter().flat_map(|e| &e.payload.vision) {
            let pending = images.iter().any(|(k, _)| *k == item.key)
                || videos.iter().any(|(k, _)| *k == item.key);
            if out.contains_key(&item.key) || pending {
                self.metrics.encoder_cache_hits.inc();
                continue;
            }
            match self.cache.get(&item.key) {
                Some(t) => {
                    self.metrics.encoder_cache_hits.inc();
                    out.insert(item.key, t);
                }
                None => {
                    self.metrics.encoder_cache_misses.inc();
                    match &item.pixels {
                        Pixels::Image(px) => images.push((item.key, px)),
                        Pixels::Video(frames) => videos.push((item.key, frames)),
                    }
                }
            }
        }
        if images.is_empty() && videos.is_empty() {
            return Ok(out);
        }
        let started = Instant::now();
        let mut encoded: Vec<(ContentKey, B::Prefix)> = Vec::new();
        if !images.is_empty() {
            let data: Vec<f32> = images
                .iter()
                .flat_map(|(_, px)| px.iter().copied())
                .collect();
            let enc = self.encode_batch(data, images.len(), 1)?;
            encoded.extend(images.iter().map(|(k, _)| *k).zip(enc));
        }
        if !videos.is_empty() {
            let frames = self.m.config.num_frames;
            let data: Vec<f32> = videos
                .iter()
                .flat_map(|(_, fs)| fs.iter().flat_map(|f| f.iter().copied()))
                .collect();
            let enc = self.encode_batch(data, videos.len(), frames)?;
            encoded.extend(videos.iter().map(|(k, _)| *k).zip(enc));
        }
        self.metrics
            .vision_encode
            .observe(started.elapsed().as_secs_f64());
        for (key, t) in encoded {
            let bytes = self.backend.prefix_bytes(&t);
            self.cache.insert(key, t.clone(), bytes);
            out.insert(key, t);
        }
        Ok(out)
    }

    /// One encoder run over `sequences` images (`frames` = 1) or videos: one encoding each.
    fn encode_batch(
        &self,
        data: Vec<f32>,
        sequences: usize,
        frames: usize,
    ) -> Result<Vec<B::Prefix>> {
        self.backend.encode(&data, sequences, frames)
    }

    /// Prefills one group (same prefix length, same rows per request) as one left-padded batch.
    fn prefill(
        &self,
        group: &[Entry<Job>],
        encoded: &HashMap<ContentKey, B::Prefix>,
        rows: usize,
    ) -> Result<(B::Session<'m>, Vec<Vec<f32>>)> {
        let parts: Vec<Vec<&B::Prefix>> = group
            .iter()
            .map(|e| {
                e.payload
                    .vision
                    .iter()
                    .map(|v| {
                        encoded
                            .get(&v.key)
                            .ok_or_else(|| ForwardError::Shape("vision encoding missing".into()))
                    })
                    .collect::<Result<Vec<&B::Prefix>>>()
            })
            .collect::<Result<_>>()?;
        let prompts: Vec<Vec<u32>> = group.iter().map(|e| e.payload.prompt_ids.clone()).collect();
        self.backend.start(&parts, &prompts, rows)
    }
}
