//! The attention calls Lynx makes, described independently of where they run.

use std::fmt;
use std::str::FromStr;

use crate::KernelError;

/// Head dimensions the kernels are built for (EVA ViT-g: 88, resampler: 64, LLaMA: 128).
pub const HEAD_DIMS: [usize; 3] = [64, 88, 128];

/// Largest head dimension of any attention path.
pub const MAX_HEAD_DIM: usize = 128;

/// Head dims the generic paths take: even, up to [`MAX_HEAD_DIM`] (the tensor-core kernels take
/// [`HEAD_DIMS`] only and say so).
fn check_head_dim(d: usize) -> Result<(), KernelError> {
    if d == 0 || d > MAX_HEAD_DIM || !d.is_multiple_of(2) {
        return Err(KernelError::Invalid(format!(
            "head dim {d} not supported (even, at most {MAX_HEAD_DIM})"
        )));
    }
    Ok(())
}

/// 16-bit element type of GPU tensors (accumulation and softmax are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl DType {
    /// The name used in kernel names and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// Rounds `x` to this type (round to nearest even) and returns its bits.
    pub fn encode(self, x: f32) -> u16 {
        match self {
            DType::Bf16 => half::bf16::from_f32(x).to_bits(),
            DType::F16 => half::f16::from_f32(x).to_bits(),
        }
    }

    /// The value of the bits `b` of this type.
    pub fn decode(self, b: u16) -> f32 {
        match self {
            DType::Bf16 => half::bf16::from_bits(b).to_f32(),
            DType::F16 => half::f16::from_bits(b).to_f32(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bf16" => Ok(DType::Bf16),
            "f16" => Ok(DType::F16),
            other => Err(KernelError::Invalid(format!(
                "unknown dtype {other:?} (bf16|f16)"
            ))),
        }
    }
}

/// Element type of the forward's GPU tensors: the two 16-bit types (tensor-core kernels) or f32
/// (the exact mode: small kernels, generic attention, f32 GEMMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Precision {
    /// bfloat16 storage.
    Bf16,
    /// IEEE half storage.
    F16,
    /// f32 storage.
    F32,
}

impl Precision {
    /// Kernel-name suffix and command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::F32 => "f32",
        }
    }

    /// Bytes per element.
    pub fn elem_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            _ => 2,
        }
    }

    /// The 16-bit type, if this is one.
    pub fn half(self) -> Option<DType> {
        match self {
            Precision::Bf16 => Some(DType::Bf16),
            Precision::F16 => Some(DType::F16),
            Precision::F32 => None,
        }
    }
}

impl From<DType> for Precision {
    fn from(d: DType) -> Self {
        match d {
            DType::Bf16 => Precision::Bf16,
            DType::F16 => Precision::F16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            other => other.parse::<DType>().map(Precision::from).map_err(|_| {
                KernelError::Invalid(format!("unknown precision {other:?} (bf16|f16|f32)"))
            }),
        }
    }
}

/// Element strides of a tensor addressed as `[batch, seq, heads, head_dim]`, the head dim
/// contiguous. Any permutation of the first three axes fits (e.g. a packed QKV projection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strides {
    /// Between sequences.
    pub batch: i64,
    /// Between tokens.
    pub row: i64,
    /// Between heads.
    pub head: i64,
}

impl Strides {
    /// The contiguous `[batch, seq, heads, head_dim]` layout.
    pub fn contiguous(seq: usize, heads: usize, head_dim: usize) -> Self {
        let (s, h, d) = (seq as i64, heads as i64, head_dim as i64);
        Strides {
            batch: s * h * d,
            row: h * d,
            head: d,
        }
    }
}

/// Dense attention: vision self-attention, the resampler's cross-attention (`seq_q != seq_kv`)
/// or causal LLM prefill with Lynx's masked pad gap.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseAttention {
    /// Sequences.
    pub batch: usize,
    /// Heads (queries and keys alike).
    pub heads: usize,
    /// Query tokens per sequence.
    pub seq_q: usize,
    /// Key/value tokens per sequence.
    pub seq_kv: usize,
    /// Head dimension (even, at most [`MAX_HEAD_DIM`]; the tensor-core kernels take [`HEAD_DIMS`]).
    pub head_dim: usize,
    /// Query `i` sees keys `j <= i + seq_kv - seq_q` only.
    pub causal: bool,
    /// Score scale (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Per sequence, a key range `[lo, hi)` that is never attended: left padding is `[0, pads)`,
    /// Lynx's `[prefix][pads][text]` layout is `[prefix, prefix + pads)`. Empty: no gaps.
    pub kv_gaps: Vec<(usize, usize)>,
}

impl DenseAttention {
    /// A non-causal problem with the usual `1/sqrt(head_dim)` scale and no gaps.
    pub fn new(batch: usize, heads: usize, seq_q: usize, seq_kv: usize, head_dim: usize) -> Self {
        DenseAttention {
            batch,
            heads,
            seq_q,
            seq_kv,
            head_dim,
            causal: false,
            scale: 1.0 / (head_dim as f32).sqrt(),
            kv_gaps: Vec::new(),
        }
    }

    /// The same problem, causal.
    pub fn causal(mut self) -> Self {
        self.causal = true;
        self
    }

    /// The same problem with one masked key gap per sequence.
    pub fn with_gaps(mut self, gaps: Vec<(usize, usize)>) -> Self {
        self.kv_gaps = gaps;
        self
    }

    /// Checks that the kernels support the problem.
    pub fn validate(&self) -> Result<(), KernelError> {
        if self.batch == 0 || self.heads == 0 || self.seq_q == 0 || self.seq_kv == 0 {
            return Err(KernelError::Invalid(format!(
                "empty attention problem {self:?}"
            )));
        }
        check_head_dim(self.head_dim)?;
        if !self.scale.is_finite() || self.scale <= 0.0 {
            return Err(KernelError::Invalid(format!(
                "scale must be positive, got {}",
                self.scale
            )));
        }
        if !self.kv_gaps.is_empty() {
            if self.kv_gaps.len() != self.batch {
                return Err(KernelError::Invalid(format!(
                    "{} key gaps for {} sequences",
                    self.kv_gaps.len(),
                    self.batch
                )));
            }
            if let Some((lo, hi)) = self
                .kv_gaps
                .iter()
                .find(|(lo, hi)| lo > hi || *hi > self.seq_kv)
            {
                return Err(KernelError::Invalid(format!(
                    "key gap [{lo}, {hi}) outside 0..{}",
                    self.seq_kv
                )));
            }
        }
        if self.q_len().max(self.kv_len()) > 1 << 40 {
            return Err(KernelError::Invalid("attention problem too large".into()));
        }
        Ok(())
    }

    /// The masked key range of sequence `b` (empty when there are no gaps).
    pub fn gap(&self, b: usize) -> (usize, usize) {
        self.kv_gaps.get(b).copied().unwrap_or((0, 0))
    }

    /// Whether query `i` of sequence `b` attends key `j`.
    pub fn visible(&self, b: usize, i: usize, j: usize) -> bool {
        let (lo, hi) = self.gap(b);
        j < self.seq_kv
            && !(lo <= j && j < hi)
            && (!self.causal || j + self.seq_q <= i + self.seq_kv)
    }

    /// Position of key `j` of sequence `b` in the paged cache (`None` for gap tokens).
    pub fn cache_position(&self, b: usize, j: usize) -> Option<usize> {
        let (lo, hi) = self.gap(b);
        if j < lo {
            Some(j)
        } else if j < hi {
            None
        } else {
            Some(j - (hi - lo))
        }
    }

    /// Elements of the query (and output) tensor.
    pub fn q_len(&self) -> usize {
        self.batch * self.seq_q * self.heads * self.head_dim
    }

    /// Elements of a key or value tensor.
    pub fn kv_len(&self) -> usize {
        self.batch * self.seq_kv * self.heads * self.head_dim
    }

    /// Floating-point operations by the usual convention: `4 * B * H * Sq * Skv * D`, halved
    /// when causal (masked gaps not deducted).
    pub fn flops(&self) -> f64 {
        let full =
            4.0 * (self.batch * self.heads * self.seq_q * self.seq_kv * self.head_dim) as f64;
        if self.causal {
            full / 2.0
        } else {
            full
        }
    }
}

/// One decode step: a single query per sequence over the paged KV cache.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeAttention {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Tokens per cache block (a power of two).
    pub block_size: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
    /// Score scale.
    pub scale: f32,
    /// Tokens cached per sequence (the new token's K/V included).
    pub seq_lens: Vec<u32>,
    /// `[batch][max_blocks]` block ids.
    pub block_table: Vec<u32>,
}

impl DecodeAttention {
    /// Checks shapes, lengths and block ids.
    pub fn validate(&self) -> Result<(), KernelError> {
        if self.batch == 0 || self.heads == 0 || self.block_size == 0 || self.max_blocks == 0 {
            return Err(KernelError::Invalid(format!(
                "empty decode problem {self:?}"
            )));
        }
        check_head_dim(self.head_dim)?;
        if self.seq_lens.len() != self.batch
            || self.block_table.len() != self.batch * self.max_blocks
        {
            return Err(KernelError::Invalid(
                "seq_lens / block_table do not match the batch".into(),
            ));
        }
        let capacity = self.block_size * self.max_blocks;
        for (b, &len) in self.seq_lens.iter().enumerate() {
            let len = len as usize;
            if len > capacity {
                return Err(KernelError::Invalid(format!(
                    "sequence {b}: {len} tokens > {capacity} slots"
                )));
            }
            let used = len.div_ceil(self.block_size);
            let row = &self.block_table[b * self.max_blocks..b * self.max_blocks + used];
            if let Some(bad) = row.iter().find(|&&id| id as usize >= self.num_blocks) {
                return Err(KernelError::Invalid(format!(
                    "sequence {b}: block {bad} >= {} blocks",
                    self.num_blocks
                )));
            }
        }
        if self.num_blocks * self.heads * self.block_size * self.head_dim > i64::MAX as usize / 2 {
            return Err(KernelError::Invalid("cache too large".into()));
        }
        Ok(())
    }

    /// Elements of one cache tensor (K or V).
    pub fn cache_len(&self) -> usize {
        self.num_blocks * self.heads * self.block_size * self.head_dim
    }

    /// Offset of token `pos` of sequence `b`, head `h` in a cache tensor.
    pub fn cache_offset(&self, b: usize, pos: usize, h: usize) -> usize {
        let block = self.block_table[b * self.max_blocks + pos / self.block_size] as usize;
        ((block * self.heads + h) * self.block_size + pos % self.block_size) * self.head_dim
    }

    /// Bytes the step must read at 16 bits per element: every cached key and value once, plus
    /// the queries and outputs.
    pub fn bytes(&self) -> f64 {
        let tokens: u64 = self.seq_lens.iter().map(|&l| l as u64).sum();
        let kv = 2 * tokens * (self.heads * self.head_dim) as u64;
        let qo = 2 * (self.batch * self.heads * self.head_dim) as u64;
        2.0 * (kv + qo) as f64
    }
}

/// A paged KV cache that a prefill fills as it runs (see [`crate::AttentionBackend::dense`]).
#[derive(Debug)]
pub struct KvCacheWrite<'a, T> {
    /// Key cache `[num_blocks, heads, block_size, head_dim]`.
    pub k_cache: &'a mut T,
    /// Value cache, same layout.
    pub v_cache: &'a mut T,
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Columns of `block_table`.
    pub max_blocks: usize,
    /// `[batch][max_blocks]` block ids.
    pub block_table: &'a [u32],
}

impl<T> KvCacheWrite<'_, T> {
    /// Checks that every cached token of `p` has a block.
    pub fn validate(&self, p: &DenseAttention) -> Result<(), KernelError> {
        if !self.block_size.is_power_of_two() || self.block_table.len() != p.batch * self.max_blocks
        {
            return Err(KernelError::Invalid(
                "block table does not match the batch".into(),
            ));
        }
        if p.seq_q != p.seq_kv {
            return Err(KernelError::Invalid(
                "the cache is filled by self-attention only".into(),
            ));
        }
        for b in 0..p.batch {
            let (lo, hi) = p.gap(b);
            let cached = p.seq_kv - (hi - lo);
            let used = cached.div_ceil(self.block_size);
            if used > self.max_blocks {
                return Err(KernelError::Invalid(format!(
                    "sequence {b} needs {used} blocks"
                )));
            }
            let row = &self.block_table[b * self.max_blocks..b * self.max_blocks + used];
            if row.iter().any(|&id| id as usize >= self.num_blocks) {
                return Err(KernelError::Invalid(format!(
                    "sequence {b}: block id out of range"
                )));
            }
        }
        Ok(())
    }
}
