//! The event loop: arrivals, worker iterations, scrapes, autoscaler polls, holds.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use super::{FleetConfig, Request};
use crate::policy::{ImageKey, Load, Lru, Picker, Reason};

/// What happened to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutcome {
    /// The worker it was sent to (None: refused while held).
    pub worker: Option<usize>,
    /// Why the picker chose that worker.
    pub reason: Option<Reason>,
    /// When the router sent it to a worker (later than arrival when held).
    pub dispatched_s: Option<f64>,
    /// When its first token was out.
    pub first_token_s: Option<f64>,
    /// When its last token was out.
    pub finish_s: Option<f64>,
    /// Refused by the router: the hold was full or timed out (or the request could never fit
    /// a worker's KV cache).
    pub refused: bool,
    /// Held at the router for want of a ready worker.
    pub held: bool,
}

/// The result of one simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Per request, in the order of the input.
    pub requests: Vec<RequestOutcome>,
    /// Encoder-cache lookups that hit, over the fleet.
    pub cache_hits: u64,
    /// Encoder-cache lookups that missed (each one a vision encoding).
    pub cache_misses: u64,
    /// Seconds workers spent computing (admissions and decode steps), summed over workers.
    pub busy_s: f64,
    /// Seconds workers were alive (from start, model loading included, to stop), summed.
    pub alive_s: f64,
    /// When the last event happened.
    pub end_s: f64,
    /// Workers started (those ready at time 0 included).
    pub workers_started: usize,
    /// Most workers alive at once.
    pub max_alive: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Arrival(usize),
    Iteration(usize),
    Scrape,
    Poll,
    Ready(usize),
    /// Held requests go to the ready workers (after every worker ready at the same instant).
    Release,
    HoldTimeout(usize),
}

#[derive(Debug, Clone, Copy)]
struct Event {
    t: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    /// Reversed: the earliest event (then the first scheduled) is the heap's maximum.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Booting,
    Ready,
    Draining,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    req: usize,
    left: u32,
    kv: usize,
}

#[derive(Debug)]
struct Worker {
    state: State,
    queue: VecDeque<usize>,
    running: Vec<Running>,
    admitting: Vec<Running>,
    kv_used: usize,
    cache: Lru<ImageKey, ()>,
    busy: bool,
    started_s: f64,
    stopped_s: Option<f64>,
    busy_s: f64,
    snapshot: Load,
    unreported: f64,
    last_scrape_s: f64,
}

impl Worker {
    fn new(state: State, now: f64, cache_entries: usize) -> Self {
        Self {
            state,
            queue: VecDeque::new(),
            running: Vec::new(),
            admitting: Vec::new(),
            kv_used: 0,
            cache: Lru::new(cache_entries),
            busy: false,
            started_s: now,
            stopped_s: None,
            busy_s: 0.0,
            snapshot: Load::default(),
            unreported: 0.0,
            last_scrape_s: now,
        }
    }

    fn gauges(&self, kv_tokens: usize) -> Load {
        Load {
            queue_length: self.queue.len() as f64,
            running_sequences: (self.running.len() + self.admitting.len()) as f64,
            kv_cache_usage: self.kv_used as f64 / kv_tokens.max(1) as f64,
            unreported: 0.0,
        }
    }

    fn work(&self) -> usize {
        self.queue.len() + self.running.len() + self.admitting.len()
    }
}

struct Sim<'a> {
    cfg: &'a FleetConfig,
    reqs: &'a [Request],
    picker: Picker<usize>,
    events: BinaryHeap<Event>,
    seq: u64,
    workers: Vec<Worker>,
    held: VecDeque<usize>,
    out: Vec<RequestOutcome>,
    resolved: usize,
    hits: u64,
    misses: u64,
    /// Last poll at which the autoscaler did not want fewer workers than it had.
    not_lower_since: f64,
    max_alive: usize,
    now: f64,
}

/// Runs `requests` (in arrival order) through the fleet `cfg` until every request is answered
/// or refused (and, with an autoscaler, the fleet is back at its minimum).
pub fn simulate(cfg: &FleetConfig, requests: &[Request]) -> Outcome {
    let initial = match cfg.autoscale {
        Some(a) => cfg.workers.clamp(a.min, a.max),
        None => cfg.workers,
    };
    let mut sim = Sim {
        cfg,
        reqs: requests,
        picker: Picker::new(cfg.router.picker),
        events: BinaryHeap::new(),
        seq: 0,
        workers: (0..initial)
            .map(|_| Worker::new(State::Ready, 0.0, cfg.worker.encoder_cache_entries))
            .collect(),
        held: VecDeque::new(),
        out: vec![
            RequestOutcome {
                worker: None,
                reason: None,
                dispatched_s: None,
                first_token_s: None,
                finish_s: None,
                refused: false,
                held: false,
            };
            requests.len()
        ],
        resolved: 0,
        hits: 0,
        misses: 0,
        not_lower_since: 0.0,
        max_alive: initial,
        now: 0.0,
    };
    for (i, r) in requests.iter().enumerate() {
        sim.schedule(r.arrival_s, Kind::Arrival(i));
    }
    if cfg.router.scrape_interval_s > 0.0 {
        sim.schedule(cfg.router.scrape_interval_s, Kind::Scrape);
    }
    if let Some(a) = cfg.autoscale {
        sim.schedule(a.poll_s, Kind::Poll);
    }
    while let Some(ev) = sim.events.pop() {
        sim.now = ev.t;
        match ev.kind {
            Kind::Arrival(r) => sim.arrive(r),
            Kind::Iteration(w) => sim.end_iteration(w),
            Kind::Scrape => sim.scrape(),
            Kind::Poll => sim.poll(),
            Kind::Ready(w) => sim.ready(w),
            Kind::Release => sim.release(),
            Kind::HoldTimeout(r) => sim.hold_timeout(r),
        }
    }
    let end = sim.now;
    Outcome {
        cache_hits: sim.hits,
        cache_misses: sim.misses,
        busy_s: sim.workers.iter().map(|w| w.busy_s).sum(),
        alive_s: sim
            .workers
            .iter()
            .map(|w| w.stopped_s.unwrap_or(end) - w.started_s)
            .sum(),
        end_s: end,
        workers_started: sim.workers.len(),
        max_alive: sim.max_alive,
        requests: sim.out,
    }
}

impl Sim<'_> {
    fn schedule(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Event {
            t,
            seq: self.seq,
            kind,
        });
    }

    /// Nothing left to simulate but periodic events.
    fn finished(&self) -> bool {
        self.resolved == self.reqs.len()
            && self.cfg.autoscale.is_none_or(|a| {
                self.workers
                    .iter()
                    .filter(|w| w.state != State::Stopped)
                    .count()
                    <= a.min
            })
    }

    fn view(&self, w: usize) -> Load {
        let wk = &self.workers[w];
        if self.cfg.router.scrape_interval_s > 0.0 {
            Load {
                unreported: wk.unreported,
                ..wk.snapshot
            }
        } else {
            wk.gauges(self.cfg.worker.kv_tokens)
        }
    }

    fn arrive(&mut self, r: usize) {
        if self.workers.iter().any(|w| w.state == State::Ready) {
            self.dispatch(r);
        } else if self.held.len() < self.cfg.router.hold_max {
            self.held.push_back(r);
            self.out[r].held = true;
            self.schedule(
                self.now + self.cfg.router.hold_timeout_s,
                Kind::HoldTimeout(r),
            );
        } else {
            self.refuse(r);
        }
    }

    fn refuse(&mut self, r: usize) {
        self.out[r].refused = true;
        self.resolved += 1;
    }

    fn hold_timeout(&mut self, r: usize) {
        if let Some(i) = self.held.iter().position(|h| *h == r) {
            self.held.remove(i);
            self.refuse(r);
        }
    }

    fn dispatch(&mut self, r: usize) {
        if self.kv_need(r) > self.cfg.worker.kv_tokens {
            // The worker refuses it at enqueue (INVALID_ARGUMENT): it could never run.
            self.refuse(r);
            return;
        }
        let candidates: Vec<(usize, Load)> = (0..self.workers.len())
            .filter(|w| self.workers[*w].state == State::Ready)
            .map(|w| (w, self.view(w)))
            .collect();
        let Some((w, reason)) = self.picker.pick(&candidates, &self.reqs[r].images) else {
            return;
        };
        let o = &mut self.out[r];
        (o.worker, o.reason, o.dispatched_s) = (Some(w), Some(reason), Some(self.now));
        let wk = &mut self.workers[w];
        wk.queue.push_back(r);
        wk.unreported += 1.0;
        if !wk.busy {
            self.start_iteration(w);
        }
    }

    fn kv_need(&self, r: usize) -> usize {
        let q = &self.reqs[r];
        let vision = q.images.len() * self.cfg.costs.vision_tokens as usize;
        q.prompt_tokens as usize + vision + q.output_tokens as usize
    }

    /// One loop iteration of an idle worker: admission (vision + prefill), then a decode step.
    fn start_iteration(&mut self, w: usize) {
        let (cfg, now) = (self.cfg, self.now);
        let mut admitted = Vec::new();
        {
            let wk = &self.workers[w];
            let mut kv = wk.kv_used;
            for &r in &wk.queue {
                let need = self.kv_need(r);
                if wk.running.len() + admitted.len() >= cfg.worker.max_batch
                    || kv + need > cfg.worker.kv_tokens
                {
                    break;
                }
                kv += need;
                admitted.push((r, need));
            }
        }
        let wk = &mut self.workers[w];
        if admitted.is_empty() && wk.running.is_empty() {
            wk.busy = false;
            return;
        }
        let (mut misses, mut tokens) = (0u32, 0u32);
        for &(r, need) in &admitted {
            wk.queue.pop_front();
            wk.kv_used += need;
            let q = &self.reqs[r];
            for key in &q.images {
                if wk.cache.get(key).is_some() {
                    self.hits += 1;
                } else {
                    self.misses += 1;
                    misses += 1;
                    wk.cache.insert(*key, ());
                }
            }
            tokens += q.prompt_tokens + q.images.len() as u32 * cfg.costs.vision_tokens;
        }
        let admit_s = if admitted.is_empty() {
            0.0
        } else {
            f64::from(misses) * cfg.costs.vision_s
                + cfg.costs.prefill_fixed_s
                + cfg.costs.prefill_per_token_s * f64::from(tokens)
        };
        for &(r, kv) in &admitted {
            self.out[r].first_token_s = Some(now + admit_s);
            let left = self.reqs[r].output_tokens.saturating_sub(1);
            if left == 0 {
                self.out[r].finish_s = Some(now + admit_s);
            }
            wk.admitting.push(Running { req: r, left, kv });
        }
        let batch = wk.running.len() + wk.admitting.iter().filter(|a| a.left > 0).count();
        let step_s = if batch > 0 {
            cfg.costs.step_s(batch)
        } else {
            0.0
        };
        wk.busy = true;
        wk.busy_s += admit_s + step_s;
        self.schedule(now + admit_s + step_s, Kind::Iteration(w));
    }

    fn end_iteration(&mut self, w: usize) {
        let now = self.now;
        let wk = &mut self.workers[w];
        let admitted = std::mem::take(&mut wk.admitting);
        let mut done = Vec::new();
        for a in admitted {
            if a.left == 0 {
                done.push(a);
            } else {
                wk.running.push(a);
            }
        }
        for r in &mut wk.running {
            r.left -= 1;
        }
        let mut i = 0;
        while i < wk.running.len() {
            if wk.running[i].left == 0 {
                let r = wk.running.remove(i);
                self.out[r.req].finish_s = Some(now);
                done.push(r);
            } else {
                i += 1;
            }
        }
        for d in done {
            wk.kv_used -= d.kv;
            let sent = self.out[d.req].dispatched_s.unwrap_or(0.0);
            if sent >= wk.last_scrape_s && wk.unreported > 0.0 {
                wk.unreported -= 1.0;
            }
            self.resolved += 1;
        }
        wk.busy = false;
        if wk.state == State::Draining && wk.work() == 0 {
            wk.state = State::Stopped;
            wk.stopped_s = Some(now);
            return;
        }
        self.start_iteration(w);
    }

    fn scrape(&mut self) {
        let kv = self.cfg.worker.kv_tokens;
        for wk in &mut self.workers {
            if matches!(wk.state, State::Ready | State::Draining) {
                wk.snapshot = wk.gauges(kv);
                wk.unreported = 0.0;
                wk.last_scrape_s = self.now;
            }
        }
        if !self.finished() {
            self.schedule(self.now + self.cfg.router.scrape_interval_s, Kind::Scrape);
        }
    }

    fn ready(&mut self, w: usize) {
        if self.workers[w].state != State::Booting {
            return;
        }
        self.workers[w].state = State::Ready;
        self.workers[w].last_scrape_s = self.now;
        self.schedule(self.now, Kind::Release);
    }

    fn release(&mut self) {
        if !self.workers.iter().any(|w| w.state == State::Ready) {
            return;
        }
        while let Some(r) = self.held.pop_front() {
            self.dispatch(r);
        }
    }

    fn poll(&mut self) {
        let Some(a) = self.cfg.autoscale else {
            return;
        };
        let now = self.now;
        let metric: usize = self.held.len() + self.workers.iter().map(Worker::work).sum::<usize>();
        let wanted = if metric == 0 {
            0
        } else {
            (metric as f64 / a.target.max(f64::MIN_POSITIVE)).ceil() as usize
        }
        .clamp(a.min, a.max);
        let current: Vec<usize> = (0..self.workers.len())
            .filter(|w| matches!(self.workers[*w].state, State::Booting | State::Ready))
            .collect();
        if wanted >= current.len() {
            self.not_lower_since = now;
            for _ in current.len()..wanted {
                let w = self.workers.len();
                let cache = self.cfg.worker.encoder_cache_entries;
                self.workers.push(Worker::new(State::Booting, now, cache));
                self.schedule(now + a.start_delay_s, Kind::Ready(w));
            }
        } else if now - self.not_lower_since >= a.cooldown_s {
            // Stop the surplus: booting workers first, then the least busy, newest first.
            let mut order = current;
            order.sort_by_key(|w| {
                let wk = &self.workers[*w];
                (wk.state != State::Booting, wk.work(), std::cmp::Reverse(*w))
            });
            let surplus = order.len() - wanted;
            for w in order.into_iter().take(surplus) {
                self.picker.forget(&w);
                let wk = &mut self.workers[w];
                if wk.state == State::Booting || (wk.work() == 0 && !wk.busy) {
                    wk.state = State::Stopped;
                    wk.stopped_s = Some(now);
                } else {
                    wk.state = State::Draining;
                }
            }
            self.not_lower_since = now;
        }
        let alive = self
            .workers
            .iter()
            .filter(|w| w.state != State::Stopped)
            .count();
        self.max_alive = self.max_alive.max(alive);
        if !self.finished() {
            self.schedule(now + a.poll_s, Kind::Poll);
        }
    }
}
