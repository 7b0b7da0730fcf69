//! Which worker gets a request: round robin, least load, or least load with image affinity.
//!
//! Pure and synchronous: the serving code gives [`Picker::pick`] the ready workers with the load
//! it knows of each and the request's image keys, and forwards the request where it says. The
//! fleet simulation (`crate::sim`) drives the same `Picker`.
//!
//! # Image affinity
//! A worker keeps the vision encodings of the images it saw in its encoder cache, keyed by the
//! SHA-256 of the encoded bytes ([`image_key`]). Sending a request whose images a worker already
//! encoded skips the ViT there. The picker remembers, for each key, the worker it last sent the
//! key to (a bounded LRU table), and sends a request with images to the worker most of its keys
//! were last sent to, unless that worker is overloaded compared with the least-loaded one
//! ([`PickerConfig::overload_margin`]); then it falls back to least load.

mod lru;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::Hash;
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub use lru::Lru;

/// SHA-256 of an image's encoded bytes (also of a video frame); the worker's encoder cache keys
/// images the same way.
pub type ImageKey = [u8; 32];

/// The [`ImageKey`] of an image's (or video frame's) encoded bytes.
pub fn image_key(bytes: &[u8]) -> ImageKey {
    Sha256::digest(bytes).into()
}

/// A worker's load as the router knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Requests waiting for admission on the worker (its `lynx_queue_length` gauge).
    pub queue_length: f64,
    /// Sequences being decoded, beams included (`lynx_running_sequences`).
    pub running_sequences: f64,
    /// Fraction of KV-cache blocks in use, 0..1 (`lynx_kv_cache_usage`).
    pub kv_cache_usage: f64,
    /// Requests this router sent to the worker that the scraped gauges may not show yet
    /// (sent since the last scrape and not finished).
    pub unreported: f64,
}

/// Running sequences that weigh as much as one waiting request in [`score`].
pub const RUNNING_PER_WAITING: f64 = 8.0;

/// The score least load compares (lower is less loaded):
///
/// `queue_length + unreported + running_sequences / 8 + kv_cache_usage`
///
/// - A waiting request delays a new one by a whole admission (vision encoding and prefill run on
///   the model thread between decode steps), so each counts 1; so does each unreported request,
///   which the worker may already be admitting.
/// - A running sequence only slows each decode step by a fraction (continuous batching: a step's
///   cost is a fixed part plus a small part per sequence), so 8 of them count as one waiting
///   request ([`RUNNING_PER_WAITING`]).
/// - KV-cache usage (0..1) breaks ties between otherwise equal workers toward the one with more
///   room: a full cache blocks admission even below the batch size.
pub fn score(load: &Load) -> f64 {
    load.queue_length
        + load.unreported
        + load.running_sequences / RUNNING_PER_WAITING
        + load.kv_cache_usage
}

/// The routing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Each worker in turn, whatever its load.
    RoundRobin,
    /// The worker with the lowest [`score`].
    LeastLoad,
    /// The worker that last got the request's images, unless overloaded; else least load.
    LeastLoadAffinity,
}

impl Policy {
    /// Every policy, in the order of the names.
    pub const ALL: [Policy; 3] = [Self::RoundRobin, Self::LeastLoad, Self::LeastLoadAffinity];

    /// The policy's name (a command-line value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::LeastLoad => "least-load",
            Self::LeastLoadAffinity => "least-load-affinity",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}: expected round-robin, least-load or least-load-affinity")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// Why a worker was chosen: also the `reason` label of the router's decision counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Round robin's turn.
    RoundRobin,
    /// The least-loaded worker (no remembered worker for the request's images among the
    /// candidates, or no images, or the least-load policy).
    LeastLoad,
    /// The worker the request's images were last sent to.
    Affinity,
    /// The remembered worker was overloaded; the least-loaded one got it.
    AffinityOverloaded,
}

impl Reason {
    /// Every reason (the label values).
    pub const ALL: [Reason; 4] = [
        Self::RoundRobin,
        Self::LeastLoad,
        Self::Affinity,
        Self::AffinityOverloaded,
    ];

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastLoad => "least_load",
            Self::Affinity => "affinity",
            Self::AffinityOverloaded => "affinity_overloaded",
        }
    }
}

/// How the [`Picker`] decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickerConfig {
    /// The policy.
    pub policy: Policy,
    /// Image keys remembered (bounded; least recently used forgotten first).
    pub affinity_capacity: usize,
    /// A worker whose score exceeds the least-loaded worker's score by more than this is
    /// overloaded: affinity does not send work there (reason AffinityOverloaded -> least load).
    pub overload_margin: f64,
}

impl Default for PickerConfig {
    /// Least load with affinity; 65 536 keys (2 MiB of keys, more distinct images than a fleet
    /// of tens of workers caches: 256 MiB of encoder cache holds 512 to 1024 7B-sized
    /// encodings per worker); a margin of 2, i.e. affinity may queue a request behind two more
    /// requests than least load would. An encoder-cache hit saves one ViT run per image, about
    /// one admission's worth of waiting; more than two requests ahead costs more than it saves
    /// (`docs/perf/fleet.md` compares margins in the simulation).
    fn default() -> Self {
        Self {
            policy: Policy::LeastLoadAffinity,
            affinity_capacity: 65_536,
            overload_margin: 2.0,
        }
    }
}

/// Picks workers for requests; keeps the round-robin turn and the image-affinity table.
#[derive(Debug, Clone)]
pub struct Picker<W> {
    config: PickerConfig,
    turn: u64,
    affinity: Lru<ImageKey, W>,
}

impl<W: Clone + Eq + Hash> Picker<W> {
    /// A picker with an empty affinity table.
    pub fn new(config: PickerConfig) -> Self {
        Self {
            config,
            turn: 0,
            affinity: Lru::new(config.affinity_capacity),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PickerConfig {
        &self.config
    }

    /// Picks among `candidates` (ready workers with their load; `None` for an empty slice) for
    /// a request carrying `images` (its image / video-frame keys, possibly empty). With
    /// affinity, remembers the chosen worker for every key. Deterministic: ties are broken by
    /// order in `candidates` after a round-robin rotation, so that equal loads spread.
    pub fn pick(&mut self, candidates: &[(W, Load)], images: &[ImageKey]) -> Option<(W, Reason)> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = usize::try_from(self.turn % n as u64).unwrap_or(0);
        self.turn = self.turn.wrapping_add(1);
        let (index, reason) = match self.config.policy {
            Policy::RoundRobin => (start, Reason::RoundRobin),
            Policy::LeastLoad => (least_loaded(candidates, start), Reason::LeastLoad),
            Policy::LeastLoadAffinity => {
                let least = least_loaded(candidates, start);
                match self.remembered(candidates, images) {
                    Some(i)
                        if score(&candidates[i].1) - score(&candidates[least].1)
                            > self.config.overload_margin =>
                    {
                        (least, Reason::AffinityOverloaded)
                    }
                    Some(i) => (i, Reason::Affinity),
                    None => (least, Reason::LeastLoad),
                }
            }
        };
        let worker = candidates[index].0.clone();
        if self.config.policy == Policy::LeastLoadAffinity {
            for key in images {
                self.affinity.insert(*key, worker.clone());
            }
        }
        Some((worker, reason))
    }

    /// The candidate most of `images` were last sent to (ties: the one named by the earliest
    /// key); `None` when no key names a candidate.
    fn remembered(&mut self, candidates: &[(W, Load)], images: &[ImageKey]) -> Option<usize> {
        // (candidate index, votes) in order of first appearance; requests carry few images.
        let mut votes: Vec<(usize, usize)> = Vec::new();
        for key in images {
            let Some(worker) = self.affinity.get(key) else {
                continue;
            };
            let Some(i) = candidates.iter().position(|(w, _)| w == worker) else {
                continue;
            };
            match votes.iter_mut().find(|(j, _)| *j == i) {
                Some((_, v)) => *v += 1,
                None => votes.push((i, 1)),
            }
        }
        let best = votes.iter().map(|(_, v)| *v).max()?;
        votes.iter().find(|(_, v)| *v == best).map(|(i, _)| *i)
    }

    /// The worker left: forget its affinity entries.
    pub fn forget(&mut self, worker: &W) {
        self.affinity.retain(|_, w| w != worker);
    }

    /// Keys remembered now.
    pub fn affinity_len(&self) -> usize {
        self.affinity.len()
    }
}

/// The index of the lowest score, scanning from `start` around the slice (the first of equals
/// in that order wins).
fn least_loaded<W>(candidates: &[(W, Load)], start: usize) -> usize {
    let n = candidates.len();
    let mut best = start;
    let mut best_score = f64::INFINITY;
    for k in 0..n {
        let i = (start + k) % n;
        let s = score(&candidates[i].1);
        if s < best_score {
            best = i;
            best_score = s;
        }
    }
    best
}
