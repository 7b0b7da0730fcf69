//! The operations the Lynx forward is written in, implemented by each backend: the host mirror
//! ([`super::host::HostOps`], f32) and the GPU ([`super::cuda::CudaOps`], our kernels + cuBLAS).
//! Buffers are flat; shapes travel as arguments. Index buffers (token ids, positions, rows,
//! cache slots) are checked against what they index when they are made.

use lynx_kernels::projection::VisionProjection;
use lynx_kernels::{DecodeAttention, DenseAttention};

use super::ForwardError;

/// `nn.Linear` on a backend: weight `[out][in]`, optional bias `[out]`.
#[derive(Debug)]
pub struct Linear<B> {
    /// The weight.
    pub w: B,
    /// The bias.
    pub b: Option<B>,
    /// Output features.
    pub out_dim: usize,
    /// Input features.
    pub in_dim: usize,
}

/// A LayerNorm (with bias) or RMSNorm (without) on a backend.
#[derive(Debug)]
pub struct Norm<B> {
    /// Scale `[dim]`.
    pub w: B,
    /// Shift `[dim]` (LayerNorm only).
    pub b: Option<B>,
    /// Width.
    pub dim: usize,
    /// Epsilon.
    pub eps: f32,
}

/// Host values of one resampler layer's vision-token projection (`norm_media` + `to_kv`).
#[derive(Debug, Clone, Copy)]
pub struct ProjectionValues<'a> {
    /// `to_kv.weight`, `[2 * inner][vision width]`.
    pub w_kv: &'a [f32],
    /// `norm_media.weight`.
    pub gamma: &'a [f32],
    /// `norm_media.bias`.
    pub beta: &'a [f32],
    /// The frame embedding `[frames][vision width]` (video models).
    pub frame_embed: Option<&'a [f32]>,
}

/// The operations of the forward (shared by the serving threads, hence `Send + Sync`).
pub trait Ops: Send + Sync {
    /// A flat buffer of model elements.
    type Buf: Send + Sync + 'static;
    /// Checked indices.
    type Idx: Send + Sync;
    /// A RoPE cos/sin table.
    type Rope: Send + Sync;
    /// One resampler layer's prepared projection.
    type Proj: Send + Sync;
    /// A decode step's sequence lengths and block table, made once per step for every layer.
    type Tables: Send + Sync;

    /// What runs the forward, e.g. `host f32` or `NVIDIA H200 bf16`.
    fn describe(&self) -> String;
    /// Bytes per stored element.
    fn elem_bytes(&self) -> usize;
    /// Waits for all queued work (timing); surfaces asynchronous errors.
    fn synchronize(&self) -> Result<(), ForwardError>;
    /// Copies host values in (rounded to the backend's element type).
    fn upload(&self, values: &[f32]) -> Result<Self::Buf, ForwardError>;
    /// `offset + scale * u`, `u` uniform in [-1, 1), made where the buffer lives.
    fn random(
        &self,
        len: usize,
        seed: u64,
        scale: f32,
        offset: f32,
    ) -> Result<Self::Buf, ForwardError>;
    /// Copies a buffer out as f32.
    fn download(&self, b: &Self::Buf) -> Result<Vec<f32>, ForwardError>;
    /// A buffer of `len` elements (contents unspecified until written).
    fn alloc(&self, len: usize) -> Result<Self::Buf, ForwardError>;
    /// Indices into something of `bound` entries; a value `>= bound` is an error.
    fn indices(&self, values: &[u32], bound: usize) -> Result<Self::Idx, ForwardError>;
    /// A RoPE table `[max_pos][head_dim / 2]` (see `lynx_kernels::ops::rope_table`).
    fn rope_table(&self, cos: &[f32], sin: &[f32]) -> Result<Self::Rope, ForwardError>;
    /// Prepares one projection (folding, fusing, or just uploading, as the backend prefers).
    fn projection(
        &self,
        p: &VisionProjection,
        values: &ProjectionValues<'_>,
    ) -> Result<Self::Proj, ForwardError>;

    /// `y[rows][out] = x[rows][in] W^T (+ b)`.
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Linear<Self::Buf>,
        y: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
    /// `y[rows][out] += x[rows][in] W^T (+ b)`: a linear layer and its residual add.
    fn linear_add(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Linear<Self::Buf>,
        y: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
    /// LayerNorm (`norm.b` set) or RMSNorm of `rows` rows.
    fn norm(
        &self,
        x: &Self::Buf,
        rows: usize,
        norm: &Norm<Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
    /// Exact GELU in place over `rows` rows of `cols`.
    fn gelu(&self, x: &mut Self::Buf, rows: usize, cols: usize) -> Result<(), ForwardError>;
    /// SiLU in place over `n` elements.
    fn silu(&self, x: &mut Self::Buf, n: usize) -> Result<(), ForwardError>;
    /// `out[r] = silu(gu[r][..inter]) * gu[r][inter..]`.
    fn silu_mul(
        &self,
        gate_up: &Self::Buf,
        rows: usize,
        inter: usize,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
    /// Splits fused QKV rows `[tokens][3 * heads * head_dim]` into `q`, `k`, `v`, with RoPE on
    /// `q` and `k` when `rope` gives the positions (one per token) and the table.
    #[allow(clippy::too_many_arguments)]
    fn qkv_split(
        &self,
        qkv: &Self::Buf,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        rope: Option<(&Self::Idx, &Self::Rope)>,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
    /// `acc += scale * b` over `n` elements.
    fn accumulate(
        &self,
        acc: &mut Self::Buf,
        b: &Self::Buf,
        n: usize,
        scale: f32,
    ) -> Result<(), ForwardError>;
    /// `x[r] += table[(r / div) % period]` over `rows` rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    fn add_rows(
        &self,
        x: &mut Self::Buf,
        table: &Self::Buf,
        rows: usize,
        cols: usize,
        div: usize,
        period: usize,
    ) -> Result<(), ForwardError>;
    /// `dst[dst_rows[i]] = src[src_rows[i]]` for `n` rows of `cols` (`None`: `i`).
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        src: &Self::Buf,
        src_rows: Option<&Self::Idx>,
        dst: &mut Self::Buf,
        dst_rows: Option<&Self::Idx>,
        n: usize,
        cols: usize,
    ) -> Result<(), ForwardError>;
    /// The first index of each row's maximum over `rows` rows of `cols`, once the flat positions
    /// `banned` (`row * cols + token`) are set to -inf in `logits` (greedy decoding picks where
    /// the logits are: only the ids leave the device).
    fn argmax(
        &self,
        logits: &mut Self::Buf,
        rows: usize,
        cols: usize,
        banned: &[u32],
    ) -> Result<Vec<u32>, ForwardError>;
    /// Dense attention over `[B][S][H][D]` tensors (no cache).
    fn attention(
        &self,
        p: &DenseAttention,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
    /// Dense attention of a prefill that also puts its keys and values into the paged cache. By
    /// default a separate [`Self::kv_write`], then [`Self::attention`]; a backend may fill the
    /// cache inside the attention pass instead ([`Self::set_prefill_fill`]).
    fn attention_filling(
        &self,
        p: &DenseAttention,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        fill: CacheFill<'_, Self>,
    ) -> Result<(), ForwardError>
    where
        Self: Sized,
    {
        write_then_attend(self, p, q, k, v, out, fill)
    }
    /// Whether prefills fill the cache inside the attention pass (`on`) or write it separately;
    /// returns whether this backend can (the default cannot, and ignores `on`).
    fn set_prefill_fill(&self, on: bool) -> bool {
        let _ = on;
        false
    }
    /// Writes token rows `[n][heads * head_dim]` of `k` and `v` into the paged caches at flat
    /// slots.
    #[allow(clippy::too_many_arguments)]
    fn kv_write(
        &self,
        k: &Self::Buf,
        v: &Self::Buf,
        slots: &Self::Idx,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        heads: usize,
        head_dim: usize,
        block_size: usize,
    ) -> Result<(), ForwardError>;
    /// The tables of a decode step (uploaded once, read by every layer).
    fn decode_tables(&self, p: &DecodeAttention) -> Result<Self::Tables, ForwardError>;
    /// One decode step over the paged cache (`q`, `out`: `[B][H][D]`).
    fn decode(
        &self,
        p: &DecodeAttention,
        tables: &Self::Tables,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
    /// The resampler's vision-token projection: `K | V = LN(media + e_frame) W_kv^T`
    /// (`media` without the frame embedding; `p.frames` says whether to add it).
    fn project(
        &self,
        media: &Self::Buf,
        p: &VisionProjection,
        proj: &Self::Proj,
        k: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<(), ForwardError>;
}

/// Where a prefill's keys and values go in the paged cache.
pub struct CacheFill<'a, O: Ops> {
    /// Key cache of the layer.
    pub k_cache: &'a mut O::Buf,
    /// Value cache of the layer.
    pub v_cache: &'a mut O::Buf,
    /// Each token's flat slot (gap tokens: the scratch block), for a separate write.
    pub slots: &'a O::Idx,
    /// `[rows][max_blocks]` block ids (unused columns 0), for a fill in the attention pass.
    pub table: &'a O::Idx,
    /// Columns of `table`.
    pub max_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Heads.
    pub heads: usize,
    /// Head dim.
    pub head_dim: usize,
}

/// A prefill's cache written by [`Ops::kv_write`], then [`Ops::attention`]: the default of
/// [`Ops::attention_filling`].
pub fn write_then_attend<O: Ops>(
    ops: &O,
    p: &DenseAttention,
    q: &O::Buf,
    k: &O::Buf,
    v: &O::Buf,
    out: &mut O::Buf,
    fill: CacheFill<'_, O>,
) -> Result<(), ForwardError> {
    let (h, d, b) = (fill.heads, fill.head_dim, fill.block_size);
    ops.kv_write(k, v, fill.slots, fill.k_cache, fill.v_cache, h, d, b)?;
    ops.attention(p, q, k, v, out)
}
