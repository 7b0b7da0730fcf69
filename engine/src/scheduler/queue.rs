//! The bounded waiting queue: priority levels served highest first, FIFO within a level, with
//! ageing so that a waiting request climbs one level per `ageing` interval (no starvation).

use std::cmp::Reverse;
use std::time::{Duration, Instant};

/// Request identifier, unique per worker process.
pub type RequestId = u64;

/// What admitting a request costs, in positions of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCost {
    /// Text prompt tokens.
    pub prompt_tokens: usize,
    /// Vision tokens in front of the prompt.
    pub vision_tokens: usize,
    /// Generated tokens at most.
    pub max_new_tokens: usize,
    /// Sequences run for the request (beams).
    pub beams: usize,
}

impl RequestCost {
    /// Positions one sequence can reach.
    pub fn tokens_per_sequence(&self) -> usize {
        self.prompt_tokens + self.vision_tokens + self.max_new_tokens
    }

    /// Positions over all sequences: what the token budget counts.
    pub fn total_tokens(&self) -> usize {
        self.tokens_per_sequence() * self.beams.max(1)
    }
}

/// A waiting request.
#[derive(Debug)]
pub struct Entry<T> {
    /// Identifier.
    pub id: RequestId,
    /// Priority level, higher first.
    pub priority: u8,
    /// When it was queued.
    pub arrived: Instant,
    /// When the client stops waiting.
    pub deadline: Option<Instant>,
    /// Admission cost.
    pub cost: RequestCost,
    /// Whatever the server carries along (inputs, response channel).
    pub payload: T,
}

/// The queue is at capacity.
#[derive(Debug, thiserror::Error)]
#[error("queue full ({capacity} waiting requests)")]
pub struct QueueFull<T> {
    /// The configured capacity.
    pub capacity: usize,
    /// The rejected entry, handed back.
    pub entry: T,
}

/// Bounded priority queue.
#[derive(Debug)]
pub struct WaitQueue<T> {
    entries: Vec<Entry<T>>,
    capacity: usize,
    ageing: Duration,
}

impl<T> WaitQueue<T> {
    /// A queue of at most `capacity` entries; `ageing` = waiting time worth one priority level.
    pub fn new(capacity: usize, ageing: Duration) -> Self {
        Self {
            entries: Vec::new(),
            capacity,
            ageing,
        }
    }

    /// Waiting entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entry waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues `entry`, or hands it back when the queue is full.
    pub fn push(&mut self, entry: Entry<T>) -> Result<(), QueueFull<Entry<T>>> {
        if self.entries.len() >= self.capacity {
            return Err(QueueFull {
                capacity: self.capacity,
                entry,
            });
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Effective priority at `now`: the level plus one per `ageing` waited.
    fn effective(&self, e: &Entry<T>, now: Instant) -> u64 {
        let waited = now.saturating_duration_since(e.arrived);
        let bonus = if self.ageing.is_zero() {
            0
        } else {
            (waited.as_nanos() / self.ageing.as_nanos()) as u64
        };
        u64::from(e.priority) + bonus
    }

    /// Sorts entries into serving order at `now`: effective priority, then arrival, then id.
    fn order(&mut self, now: Instant) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by_cached_key(|e| (Reverse(self.effective(e, now)), e.arrived, e.id));
        self.entries = entries;
    }

    /// Entries in serving order at `now`.
    pub fn ordered(&mut self, now: Instant) -> &[Entry<T>] {
        self.order(now);
        &self.entries
    }

    /// Removes and returns the first `n` entries in serving order (call [`Self::ordered`] first).
    pub fn take_front(&mut self, n: usize) -> Vec<Entry<T>> {
        let n = n.min(self.entries.len());
        self.entries.drain(..n).collect()
    }

    /// Removes entries whose deadline has passed at `now`.
    pub fn remove_expired(&mut self, now: Instant) -> Vec<Entry<T>> {
        let (expired, keep): (Vec<_>, Vec<_>) = self
            .entries
            .drain(..)
            .partition(|e| e.deadline.is_some_and(|d| d <= now));
        self.entries = keep;
        expired
    }

    /// Removes one entry (client cancelled).
    pub fn remove(&mut self, id: RequestId) -> Option<Entry<T>> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        Some(self.entries.remove(i))
    }

    /// Removes every entry for which `gone` holds (clients that left while waiting).
    pub fn remove_where(&mut self, gone: impl Fn(&Entry<T>) -> bool) -> Vec<Entry<T>> {
        let (removed, keep): (Vec<_>, Vec<_>) = self.entries.drain(..).partition(|e| gone(e));
        self.entries = keep;
        removed
    }

    /// Arrival of the entry that has waited longest.
    pub fn oldest_arrival(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.arrived).min()
    }

    /// The effective priority of entry `id` at `now` (for tests and logs).
    pub fn effective_priority(&self, id: RequestId, now: Instant) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| self.effective(e, now))
    }
}
