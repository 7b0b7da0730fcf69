//! The simulated requests: Poisson arrivals in phases, images from a pool or unique, lengths
//! from ranges; one seeded RNG, so a seed names a workload.

use crate::policy::{image_key, ImageKey};

/// SplitMix64 (Steele, Lea, Flood 2014): a seeded 64-bit generator of good statistical quality,
/// enough for a simulation's arrivals and draws, written out so that the crate needs no RNG
/// dependency.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A workload's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// RNG seed.
    pub seed: u64,
    /// Phases of Poisson arrivals: (seconds, requests per second); a rate of 0 is a quiet gap.
    pub phases: Vec<(f64, f64)>,
    /// Probabilities of 0, 1 and 2 images per request (normalised).
    pub images_weights: [f64; 3],
    /// Fraction of images drawn from the pool of repeated images (the rest are unique).
    pub repeated_fraction: f64,
    /// Images in the pool.
    pub pool_size: usize,
    /// Zipf exponent of the pool's popularity (0: uniform).
    pub zipf_s: f64,
    /// Text prompt tokens, inclusive range.
    pub prompt_tokens: (u32, u32),
    /// Output tokens, inclusive range.
    pub output_tokens: (u32, u32),
}

impl Workload {
    /// The default mix at a constant `rate` for `seconds`: 0/1/2 images with weights
    /// 0.3/0.5/0.2, 70% of images from a uniform pool of 4096, prompts of 10-40 text tokens
    /// (Lynx keeps the last `max_input_tokens` = 40), answers of 8-128 tokens.
    pub fn steady(seed: u64, rate: f64, seconds: f64) -> Self {
        Self {
            seed,
            phases: vec![(seconds, rate)],
            images_weights: [0.3, 0.5, 0.2],
            repeated_fraction: 0.7,
            pool_size: 4096,
            zipf_s: 0.0,
            prompt_tokens: (10, 40),
            output_tokens: (8, 128),
        }
    }

    /// Mean images per request.
    pub fn mean_images(&self) -> f64 {
        let w = self.images_weights;
        let total: f64 = w.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        (w[1] + 2.0 * w[2]) / total
    }

    /// Seconds the phases last.
    pub fn duration_s(&self) -> f64 {
        self.phases.iter().map(|(d, _)| d).sum()
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Arrival time, seconds from the start.
    pub arrival_s: f64,
    /// Its images' keys.
    pub images: Vec<ImageKey>,
    /// Text prompt tokens.
    pub prompt_tokens: u32,
    /// Tokens it generates.
    pub output_tokens: u32,
}

fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn in_range(rng: &mut SplitMix64, (lo, hi): (u32, u32)) -> u32 {
    let span = u64::from(hi.saturating_sub(lo)) + 1;
    lo + u32::try_from(rng.next_u64() % span).unwrap_or(0)
}

/// The requests of `w`, in arrival order.
pub fn generate(w: &Workload) -> Vec<Request> {
    let mut rng = SplitMix64(w.seed);
    let pool: Vec<ImageKey> = (0..w.pool_size)
        .map(|i| image_key(format!("pool image {i}").as_bytes()))
        .collect();
    // Cumulative popularity of the pool's images (Zipf with exponent zipf_s).
    let mut cdf: Vec<f64> = Vec::with_capacity(pool.len());
    let mut acc = 0.0;
    for rank in 1..=pool.len() {
        acc += 1.0 / (rank as f64).powf(w.zipf_s);
        cdf.push(acc);
    }
    let weights_total: f64 = w.images_weights.iter().sum();
    let mut unique = 0u64;
    let mut out = Vec::new();
    let mut start = 0.0;
    for &(seconds, rate) in &w.phases {
        let end = start + seconds;
        let mut t = start;
        loop {
            if rate <= 0.0 {
                break;
            }
            t += -(1.0 - unit(&mut rng)).ln() / rate;
            if t >= end {
                break;
            }
            let u = unit(&mut rng) * weights_total;
            let n_images = if u < w.images_weights[0] {
                0
            } else if u < w.images_weights[0] + w.images_weights[1] {
                1
            } else {
                2
            };
            let images = (0..n_images)
                .map(|_| {
                    if !pool.is_empty() && unit(&mut rng) < w.repeated_fraction {
                        let x = unit(&mut rng) * acc;
                        let i = cdf.partition_point(|c| *c <= x).min(pool.len() - 1);
                        pool[i]
                    } else {
                        unique += 1;
                        image_key(format!("unique image {unique}").as_bytes())
                    }
                })
                .collect();
            out.push(Request {
                arrival_s: t,
                images,
                prompt_tokens: in_range(&mut rng, w.prompt_tokens),
                output_tokens: in_range(&mut rng, w.output_tokens).max(1),
            });
        }
        start = end;
    }
    out
}
