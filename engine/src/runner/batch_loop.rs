//! The model thread's loop: inbox -> scheduler decision -> admission -> one decode step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::text::{cut_at_stop, TextStream};
use super::{
    ContentKey, Event, Finish, Finished, Job, RequestError, RunnerConfig, StageTimings, Submission,
    Usage,
};
use crate::backend::{Backend, ServedModel};
use crate::generation::StepModel;
use crate::generation::{DecodeIds, DecodingMode, FinishReason, Next, RequestDecoder, Step, Want};
use crate::metrics::Metrics;
use crate::scheduler::{EncoderCache, Entry, Reason, Rejection, RequestId, SchedulerState};
use crate::tokenizer::python_strip;

/// A request in the running batch; its rows are contiguous in the session, in `active` order.
pub(super) struct Active {
    pub(super) id: RequestId,
    pub(super) job: Job,
    pub(super) decoder: RequestDecoder,
    pub(super) rows: usize,
    pub(super) vision_tokens: usize,
    pub(super) text: TextStream,
    pub(super) timings: StageTimings,
    pub(super) decode_started: Instant,
    pub(super) last_token: Option<Instant>,
}

/// Everything the model thread owns.
pub(super) struct Engine<'m, B: Backend> {
    pub(super) m: &'m ServedModel,
    pub(super) backend: &'m B,
    pub(super) sched: SchedulerState<Job>,
    pub(super) cache: EncoderCache<ContentKey, B::Prefix>,
    pub(super) session: Option<B::Session<'m>>,
    pub(super) active: Vec<Active>,
    /// What the last step answered for each of the session's rows: logits, or the token the
    /// model picked for a greedy row.
    pub(super) logits: Vec<Next>,
    pub(super) metrics: &'m Metrics,
    waiting: &'m AtomicUsize,
    pub(super) ids: DecodeIds,
}

/// Longest sleep while requests wait: departed clients and deadlines in the queue are noticed
/// within this time even when the scheduler waits longer for a fuller batch.
const QUEUE_POLL: Duration = Duration::from_millis(10);

/// Sends `event`; false when the client is gone. Never blocks: each request's channel holds
/// more events than it can be sent (one delta per token plus the final one).
pub(super) fn send(tx: &mpsc::Sender<Event>, event: Event) -> bool {
    tx.try_send(event).is_ok()
}

/// Runs until the inbox is closed and nothing waits or runs.
pub(super) fn run<B: Backend>(
    m: &ServedModel,
    backend: &B,
    cfg: RunnerConfig,
    rx: Receiver<Submission>,
    waiting: &AtomicUsize,
    metrics: &Metrics,
) {
    let mut e = Engine {
        m,
        backend,
        sched: SchedulerState::new(cfg.scheduler),
        cache: EncoderCache::new(cfg.encoder_cache_bytes),
        session: None,
        active: Vec::new(),
        logits: Vec::new(),
        metrics,
        waiting,
        ids: DecodeIds {
            bos: m.config.tokens.bos,
            eos: m.config.tokens.eos,
            pad: m.config.tokens.pad,
        },
    };
    let mut open = true;
    let mut wake_in: Option<Duration> = None;
    loop {
        if e.active.is_empty() {
            if e.sched.waiting() == 0 {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(s) => e.enqueue(s.0),
                    Err(_) => open = false,
                }
            } else if let Some(wait) = wake_in {
                if open {
                    match rx.recv_timeout(wait.min(QUEUE_POLL)) {
                        Ok(s) => e.enqueue(s.0),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => open = false,
                    }
                } else {
                    std::thread::sleep(wait.min(QUEUE_POLL));
                }
            }
        }
        while open {
            match rx.try_recv() {
                Ok(s) => e.enqueue(s.0),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        e.drop_departed();
        wake_in = e.schedule(Instant::now());
        // Gauges show an admission before the request's first token is sent.
        e.publish();
        if !e.active.is_empty() {
            e.step();
        } else if wake_in.is_none() && e.sched.waiting() > 0 {
            // Nothing runs yet nothing was admitted: look again shortly instead of spinning.
            wake_in = Some(Duration::from_millis(1));
        }
        e.publish();
    }
}

impl<B: Backend> Engine<'_, B> {
    fn left_queue(&self, n: usize) {
        self.waiting.fetch_sub(n, Ordering::AcqRel);
    }

    fn enqueue(&mut self, entry: Entry<Job>) {
        let now = !entry.payload.wait_for_batch;
        let refused = match self.sched.enqueue(entry) {
            Ok(()) if now => {
                self.sched.skip_batch_delay();
                return;
            }
            Ok(()) => return,
            Err(Rejection::QueueFull(q)) => (
                q.entry,
                RequestError::QueueFull {
                    max_queue: q.capacity,
                },
            ),
            Err(Rejection::TooLarge {
                entry,
                needed,
                limit,
                what,
            }) => {
                let flag = if what == "tokens" {
                    "max_batch_total_tokens"
                } else {
                    "kv_cache_blocks"
                };
                let msg = format!("request needs {needed} {what}, more than {flag} = {limit}");
                (entry, RequestError::InvalidArgument(msg))
            }
        };
        self.left_queue(1);
        send(&refused.0.payload.events, Event::Done(Err(refused.1)));
    }

    /// Removes waiting requests whose clients left.
    fn drop_departed(&mut self) {
        let gone = self
            .sched
            .remove_waiting_where(|e| e.payload.events.is_closed());
        self.left_queue(gone.len());
    }

    /// One scheduler decision: answers expired requests, admits the chosen ones. Returns how long
    /// the scheduler wants to wait for a fuller batch.
    fn schedule(&mut self, now: Instant) -> Option<Duration> {
        let d = self.sched.next_batch(now);
        if d.reason != Reason::QueueEmpty {
            self.metrics
                .scheduler_decisions
                .with_label_values(&[d.reason.as_str()])
                .inc();
        }
        self.left_queue(d.expired.len());
        for x in d.expired {
            let err = RequestError::DeadlineExceeded("while waiting in the queue");
            send(&x.payload.events, Event::Done(Err(err)));
        }
        if !d.admitted.is_empty() {
            self.left_queue(d.admitted.len());
            self.admit(d.admitted, now);
        }
        d.wake_in
    }

    /// Answers `a` with `err` and frees its resources.
    pub(super) fn fail(&mut self, id: RequestId, events: &mpsc::Sender<Event>, err: RequestError) {
        self.sched.finish(id);
        send(events, Event::Done(Err(err)));
    }

    /// Fails every running request (the session is unusable) and drops the session.
    pub(super) fn fail_all(&mut self, why: &str) {
        tracing::error!(error = why, "decode session failed; failing its requests");
        for a in std::mem::take(&mut self.active) {
            self.fail(a.id, &a.job.events, RequestError::Internal(why.to_owned()));
        }
        self.session = None;
        self.logits.clear();
    }

    /// Advances every running request by one token and feeds the next tokens to the model.
    fn step(&mut self) {
        let now = Instant::now();
        self.metrics.batch_size.observe(self.active.len() as f64);
        let mut tokens = Vec::new();
        let mut rows: Vec<u32> = Vec::new();
        let mut wants: Vec<Want> = Vec::new();
        let mut still = Vec::with_capacity(self.active.len());
        let outputs = std::mem::take(&mut self.logits);
        let fed_rows = outputs.len();
        let mut outputs = outputs.into_iter();
        let mut base = 0;
        for mut a in std::mem::take(&mut self.active) {
            let my_rows = base..base + a.rows;
            base += a.rows;
            let mine: Vec<Next> = outputs.by_ref().take(a.rows).collect();
            if a.job.events.is_closed() {
                self.sched.finish(a.id);
                continue;
            }
            if a.job.deadline.is_some_and(|d| d <= now) {
                let err = RequestError::DeadlineExceeded("during generation");
                self.fail(a.id, &a.job.events, err);
                continue;
            }
            let step = match a.decoder.advance_next(mine) {
                Ok(step) => step,
                Err(why) => {
                    self.fail(a.id, &a.job.events, RequestError::Internal(why));
                    continue;
                }
            };
            let t = Instant::now();
            match a.last_token {
                None => self
                    .metrics
                    .time_to_first_token
                    .observe((t - a.job.received).as_secs_f64()),
                Some(prev) => self
                    .metrics
                    .inter_token_latency
                    .observe((t - prev).as_secs_f64()),
            }
            a.last_token = Some(t);
            match step {
                Step::Done(g) => {
                    let finish = match g.finish_reason {
                        FinishReason::Eos => Finish::Eos,
                        FinishReason::Length => Finish::Length,
                    };
                    self.complete(a, g.token_ids, finish);
                }
                Step::Continue {
                    tokens: next,
                    reorder,
                } => {
                    let single = matches!(
                        a.job.params.mode,
                        DecodingMode::Greedy | DecodingMode::Sample
                    );
                    if single && (a.job.stream || !a.job.stop.is_empty()) {
                        let generated = a.decoder.generated().to_vec();
                        let u = a
                            .text
                            .update(&self.m.tokenizer, &generated, &a.job.stop, false);
                        if a.job.stream && !(u.tokens.is_empty() && u.text.is_empty()) {
                            let delta = Event::Delta {
                                token_ids: u.tokens,
                                text: u.text,
                            };
                            send(&a.job.events, delta);
                        }
                        if u.stop_at.is_some() {
                            self.complete(a, generated, Finish::Stop);
                            continue;
                        }
                    }
                    let want = a.decoder.wants();
                    for (i, tok) in next.into_iter().enumerate() {
                        let local = reorder.as_ref().map_or(i, |r| r[i]);
                        rows.push((my_rows.start + local) as u32);
                        tokens.push(tok);
                        wants.push(want.clone());
                    }
                    still.push(a);
                }
            }
        }
        self.active = still;
        if self.active.is_empty() {
            self.session = None;
            return;
        }
        let Some(session) = self.session.as_mut() else {
            self.fail_all("no decode session for running requests");
            return;
        };
        let identity =
            rows.len() == fed_rows && rows.iter().enumerate().all(|(i, &r)| r as usize == i);
        self.metrics.tokens_per_step.observe(tokens.len() as f64);
        let fed = if identity {
            session.step_picking(&tokens, &wants)
        } else {
            session
                .select_rows(&rows)
                .and_then(|()| session.step_picking(&tokens, &wants))
        };
        match fed {
            Ok(next) => self.logits = next,
            Err(e) => self.fail_all(&e.to_string()),
        }
    }

    /// Answers a finished request and frees its resources.
    fn complete(&mut self, mut a: Active, token_ids: Vec<u32>, finish: Finish) {
        let full = self.m.tokenizer.decode(&token_ids, true);
        let (cut, stopped) = cut_at_stop(&full, &a.job.stop);
        let finish = if stopped { Finish::Stop } else { finish };
        if a.job.stream {
            let u = a
                .text
                .update(&self.m.tokenizer, &token_ids, &a.job.stop, true);
            if !(u.tokens.is_empty() && u.text.is_empty()) {
                let delta = Event::Delta {
                    token_ids: u.tokens,
                    text: u.text,
                };
                send(&a.job.events, delta);
            }
        }
        a.timings.decode_ms = a.decode_started.elapsed().as_secs_f64() * 1e3;
        self.metrics.generated_tokens.inc_by(token_ids.len() as u64);
        let done = Finished {
            text: python_strip(cut).to_owned(),
            usage: Usage {
                prompt_tokens: a.job.prompt_ids.len(),
                vision_tokens: a.vision_tokens,
                completion_tokens: token_ids.len(),
            },
            token_ids,
            finish,
            timings: a.timings,
        };
        self.sched.finish(a.id);
        send(&a.job.events, Event::Done(Ok(done)));
    }

    fn publish(&self) {
        let m = self.metrics;
        m.queue_length
            .set(self.waiting.load(Ordering::Acquire) as i64);
        m.running_sequences
            .set(self.sched.running_sequences() as i64);
        m.running_requests.set(self.sched.running_requests() as i64);
        m.kv_cache_usage.set(self.sched.kv_usage());
    }
}
