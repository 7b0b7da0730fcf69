//! The scheduler's decisions: which waiting requests join the running batch, and when. A plain
//! state machine without a model, clock or channels, so that every decision is unit-tested; the
//! serving task owns one and calls [`SchedulerState::next_batch`] between decode steps.
//!
//! # Guarantees
//! - Admission reserves KV blocks for every sequence's whole budget (prompt + vision tokens +
//!   `max_new_tokens`), so an admitted request never runs out of cache and is never preempted.
//! - The token budget (`max_batch_total_tokens`) counts the same positions, vision tokens
//!   included, over all beams of all running requests.
//! - Requests are considered in serving order only (priority with ageing, then arrival): a request
//!   that does not fit blocks the ones behind it until capacity frees, so large requests are not
//!   starved by small ones, and low priorities climb with waiting time.
//! - A request that could never fit is rejected at enqueue time instead of waiting forever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::kv_blocks::{BlockAllocator, SeqId};
use super::queue::{Entry, QueueFull, RequestCost, RequestId, WaitQueue};

/// Scheduler limits (mirroring the worker's flags).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Requests in the running batch at most.
    pub max_batch_size: usize,
    /// How long the first waiting request may wait for others when nothing runs.
    pub max_batch_delay: Duration,
    /// Token budget of the running batch (prompt + vision + new tokens, all beams).
    pub max_batch_total_tokens: usize,
    /// Waiting requests at most; beyond it requests are rejected at once.
    pub max_queue: usize,
    /// Positions per KV-cache block.
    pub kv_block_size: usize,
    /// KV-cache blocks.
    pub kv_blocks: usize,
    /// Waiting time worth one priority level.
    pub ageing: Duration,
}

/// Why the last decision admitted what it did (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// At least one request was admitted.
    Admitted,
    /// Nothing waits.
    QueueEmpty,
    /// Nothing runs and the first request may still wait for others (dynamic batching).
    WaitingForBatch,
    /// The running batch has `max_batch_size` requests.
    BatchFull,
    /// The next request exceeds the remaining token budget.
    TokenBudget,
    /// The next request's KV blocks are not free.
    KvCacheFull,
}

impl Reason {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::QueueEmpty => "queue_empty",
            Self::WaitingForBatch => "waiting_for_batch",
            Self::BatchFull => "batch_full",
            Self::TokenBudget => "token_budget",
            Self::KvCacheFull => "kv_cache_full",
        }
    }
}

/// One scheduling decision.
#[derive(Debug)]
pub struct Decision<T> {
    /// Requests that join the running batch now, in serving order.
    pub admitted: Vec<Entry<T>>,
    /// Requests whose deadline passed while waiting (to be answered DEADLINE_EXCEEDED).
    pub expired: Vec<Entry<T>>,
    /// Why.
    pub reason: Reason,
    /// When waiting for a batch: how long until the delay is over.
    pub wake_in: Option<Duration>,
}

/// Why a request was refused at enqueue time.
#[derive(Debug, thiserror::Error)]
pub enum Rejection<T> {
    /// The queue is full (RESOURCE_EXHAUSTED).
    #[error(transparent)]
    QueueFull(#[from] QueueFull<Entry<T>>),
    /// The request alone exceeds a limit it could never fit in (INVALID_ARGUMENT).
    #[error("request needs {needed} {what}, the worker's limit is {limit}")]
    TooLarge {
        /// The request, handed back.
        entry: Entry<T>,
        /// What it needs.
        needed: usize,
        /// The limit.
        limit: usize,
        /// `tokens` or `KV-cache blocks`.
        what: &'static str,
    },
}

/// A running request's bookkeeping.
#[derive(Debug, Clone)]
struct Running {
    cost: RequestCost,
    seqs: Vec<SeqId>,
}

/// The scheduler state: waiting queue, running requests, KV blocks.
#[derive(Debug)]
pub struct SchedulerState<T> {
    cfg: SchedulerConfig,
    queue: WaitQueue<T>,
    kv: BlockAllocator,
    running: HashMap<RequestId, Running>,
    running_tokens: usize,
    next_seq: SeqId,
    skip_delay: bool,
}

impl<T> SchedulerState<T> {
    /// An empty scheduler.
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            queue: WaitQueue::new(cfg.max_queue, cfg.ageing),
            kv: BlockAllocator::new(cfg.kv_blocks, cfg.kv_block_size),
            running: HashMap::new(),
            running_tokens: 0,
            next_seq: 0,
            skip_delay: false,
            cfg,
        }
    }

    fn blocks_needed(&self, cost: &RequestCost) -> usize {
        self.kv.blocks_for(cost.tokens_per_sequence()) * cost.beams.max(1)
    }

    /// Queues a request, or refuses it (queue full, or larger than the worker could ever run).
    pub fn enqueue(&mut self, entry: Entry<T>) -> Result<(), Rejection<T>> {
        let tokens = entry.cost.total_tokens();
        if tokens > self.cfg.max_batch_total_tokens {
            return Err(Rejection::TooLarge {
                entry,
                needed: tokens,
                limit: self.cfg.max_batch_total_tokens,
                what: "tokens",
            });
        }
        let blocks = self.blocks_needed(&entry.cost);
        if blocks > self.kv.total_blocks() {
            return Err(Rejection::TooLarge {
                entry,
                needed: blocks,
                limit: self.kv.total_blocks(),
                what: "KV-cache blocks",
            });
        }
        self.queue.push(entry)?;
        Ok(())
    }

    /// The next decision admits what waits without the dynamic-batching delay (for a request
    /// that must not wait for company, such as the warm-up request).
    pub fn skip_batch_delay(&mut self) {
        self.skip_delay = true;
    }

    /// Decides which waiting requests join the running batch at `now`.
    pub fn next_batch(&mut self, now: Instant) -> Decision<T> {
        let expired = self.queue.remove_expired(now);
        let decision = |admitted, reason, wake_in| Decision {
            admitted,
            expired,
            reason,
            wake_in,
        };
        if self.queue.is_empty() {
            return decision(Vec::new(), Reason::QueueEmpty, None);
        }
        if self.running.is_empty() && self.queue.len() < self.cfg.max_batch_size && !self.skip_delay
        {
            let waited = self
                .queue
                .oldest_arrival()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if waited < self.cfg.max_batch_delay {
                let wake = self.cfg.max_batch_delay - waited;
                return decision(Vec::new(), Reason::WaitingForBatch, Some(wake));
            }
        }
        let mut tokens = self.running_tokens;
        let mut free_blocks = self.kv.free_blocks();
        let mut count = 0;
        let mut blocked = Reason::Admitted;
        let kv_blocks_for =
            |c: &RequestCost| self.kv.blocks_for(c.tokens_per_sequence()) * c.beams.max(1);
        for e in self.queue.ordered(now) {
            if self.running.len() + count >= self.cfg.max_batch_size {
                blocked = Reason::BatchFull;
                break;
            }
            if tokens + e.cost.total_tokens() > self.cfg.max_batch_total_tokens {
                blocked = Reason::TokenBudget;
                break;
            }
            let blocks = kv_blocks_for(&e.cost);
            if blocks > free_blocks {
                blocked = Reason::KvCacheFull;
                break;
            }
            tokens += e.cost.total_tokens();
            free_blocks -= blocks;
            count += 1;
        }
        let admitted = self.queue.take_front(count);
        for e in &admitted {
            let mut seqs = Vec::with_capacity(e.cost.beams.max(1));
            for _ in 0..e.cost.beams.max(1) {
                let seq = self.next_seq;
                self.next_seq += 1;
                // Cannot fail: the loop above counted these blocks as free.
                if self.kv.reserve(seq, e.cost.tokens_per_sequence()).is_ok() {
                    seqs.push(seq);
                }
            }
            self.running_tokens += e.cost.total_tokens();
            self.running.insert(e.id, Running { cost: e.cost, seqs });
        }
        let reason = if admitted.is_empty() {
            blocked
        } else {
            self.skip_delay = false;
            Reason::Admitted
        };
        decision(admitted, reason, None)
    }

    /// Removes a finished (or failed, or cancelled) running request and frees its blocks.
    /// Returns whether it was running.
    pub fn finish(&mut self, id: RequestId) -> bool {
        let Some(r) = self.running.remove(&id) else {
            return false;
        };
        for s in r.seqs {
            self.kv.release(s);
        }
        self.running_tokens -= r.cost.total_tokens();
        true
    }

    /// Cancels a request wherever it is: removed from the queue (returned) or finished.
    pub fn cancel(&mut self, id: RequestId) -> Option<Entry<T>> {
        let waiting = self.queue.remove(id);
        if waiting.is_none() {
            self.finish(id);
        }
        waiting
    }

    /// Removes the waiting requests for which `gone` holds (their clients left) and returns them.
    pub fn remove_waiting_where(&mut self, gone: impl Fn(&Entry<T>) -> bool) -> Vec<Entry<T>> {
        self.queue.remove_where(gone)
    }

    /// KV block tables of a running request's sequences (one per beam).
    pub fn block_tables(&self, id: RequestId) -> Vec<&[u32]> {
        self.running
            .get(&id)
            .map(|r| r.seqs.iter().filter_map(|s| self.kv.table(*s)).collect())
            .unwrap_or_default()
    }

    /// Waiting requests (the `queue length` gauge).
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Running requests.
    pub fn running_requests(&self) -> usize {
        self.running.len()
    }

    /// Running sequences (beams included): the `running` gauge.
    pub fn running_sequences(&self) -> usize {
        self.running.values().map(|r| r.seqs.len()).sum()
    }

    /// KV-cache usage, 0..1.
    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }

    /// Tokens reserved by the running batch.
    pub fn running_tokens(&self) -> usize {
        self.running_tokens
    }
}
