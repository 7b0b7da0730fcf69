// The small kernels of the Lynx forward: norms, activations, RoPE, residual and broadcast adds,
// row copies (embedding gather, concatenation, beam reordering), paged KV writes, a generic
// attention for head dims and types without a tensor-core kernel, weight initialisation and
// greedy / top-k selection over the logits. Arithmetic is f32; each kernel rounds to the storage
// type where the PyTorch modules it mirrors do (HF LLaMA's RMSNorm and SiLU-gate round their
// intermediate results to the model dtype). Every per-type kernel exists for bf16, f16 and f32.
#include "prelude.cuh"

#define GRID_STRIDE(i, n) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// LayerNorm over rows of `cols`: two passes (mean, then the centred variance), one block per row.
template <typename T>
__device__ __forceinline__ void layernorm(const typename T::S* x, const typename T::S* gamma,
                                          const typename T::S* beta, typename T::S* out, int cols, float eps) {
    __shared__ float red[32];
    const typename T::S* xr = x + (i64)blockIdx.x * cols;
    typename T::S* yr = out + (i64)blockIdx.x * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += T::to_float(xr[c]);
    const float mean = block_sum(s, red) / cols;
    float v = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = T::to_float(xr[c]) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(block_sum(v, red) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        yr[c] = T::from_float((T::to_float(xr[c]) - mean) * rstd * T::to_float(gamma[c]) + T::to_float(beta[c]));
}

// LLaMA RMSNorm as HF computes it: y = weight * round(x * rsqrt(mean(x^2) + eps)).
template <typename T>
__device__ __forceinline__ void rmsnorm(const typename T::S* x, const typename T::S* weight, typename T::S* out,
                                        int cols, float eps) {
    __shared__ float red[32];
    const typename T::S* xr = x + (i64)blockIdx.x * cols;
    typename T::S* yr = out + (i64)blockIdx.x * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = T::to_float(xr[c]);
        s += v * v;
    }
    const float inv = rsqrtf(block_sum(s, red) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float normed = T::to_float(T::from_float(T::to_float(xr[c]) * inv));
        yr[c] = T::from_float(normed * T::to_float(weight[c]));
    }
}

// Exact (erf) GELU in place, with an optional per-column bias added first (`cols` columns).
template <typename T>
__device__ __forceinline__ void bias_gelu(typename T::S* x, const typename T::S* bias, u64 n, int cols) {
    GRID_STRIDE(i, n) {
        float v = T::to_float(x[i]);
        if (bias) v = T::to_float(T::from_float(v + T::to_float(bias[i % cols])));
        x[i] = T::from_float(0.5f * v * (1.f + erff(v * 0.70710678118654752f)));
    }
}

// SiLU in place (the adapters' activation).
template <typename T>
__device__ __forceinline__ void silu(typename T::S* x, u64 n) {
    GRID_STRIDE(i, n) {
        const float v = T::to_float(x[i]);
        x[i] = T::from_float(v / (1.f + expf(-v)));
    }
}

// LLaMA's gated MLP activation: out[r][i] = round(silu(gu[r][i])) * gu[r][inter + i], where gu is
// the fused gate|up projection [rows][2 * inter].
template <typename T>
__device__ __forceinline__ void silu_mul(const typename T::S* gu, typename T::S* out, u64 rows, int inter) {
    GRID_STRIDE(i, rows * inter) {
        const u64 r = i / inter, c = i % inter;
        const float g = T::to_float(gu[r * 2 * inter + c]);
        const float u = T::to_float(gu[r * 2 * inter + inter + c]);
        const float act = T::to_float(T::from_float(g / (1.f + expf(-g))));
        out[i] = T::from_float(act * u);
    }
}

// Rotate-half RoPE in place on `heads` heads of `head_dim` per token, the token's row starting
// at x + token * row_stride; cos/sin come from a host-built f32 table [max_pos][head_dim / 2]
// (HF rounds cos/sin to the model dtype: so does this kernel). One block per token.
template <typename T>
__device__ __forceinline__ void rope(typename T::S* x, i64 row_stride, const int* positions, const float* cos_t,
                                     const float* sin_t, int heads, int head_dim) {
    const int half = head_dim / 2;
    const int pos = positions[blockIdx.x];
    typename T::S* row = x + (i64)blockIdx.x * row_stride;
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        const int h = i / half, d = i % half;
        typename T::S* v = row + h * head_dim;
        const float c = T::to_float(T::from_float(cos_t[(i64)pos * half + d]));
        const float s = T::to_float(T::from_float(sin_t[(i64)pos * half + d]));
        const float a = T::to_float(v[d]), b = T::to_float(v[d + half]);
        v[d] = T::from_float(a * c - b * s);
        v[d + half] = T::from_float(b * c + a * s);
    }
}

// Splits a fused QKV projection row [q | k | v] (heads x head_dim each) into contiguous q, k, v
// rows, applying rotate-half RoPE to q and k on the way when `positions` is set (the LLM; the
// ViT passes null). Same rounding as `rope`. One launch instead of two extra GEMM outputs and two
// RoPE passes. One block per token.
template <typename T>
__device__ __forceinline__ void qkv_rope_split(const typename T::S* qkv, typename T::S* q, typename T::S* k,
                                               typename T::S* v, const int* positions, const float* cos_t,
                                               const float* sin_t, int heads, int head_dim) {
    const int half = head_dim / 2, width = heads * head_dim;
    const typename T::S* row = qkv + (i64)blockIdx.x * 3 * width;
    const i64 out = (i64)blockIdx.x * width;
    if (positions) {
        const int pos = positions[blockIdx.x];
        for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
            const int h = i / half, d = i % half, at = h * head_dim + d;
            const float c = T::to_float(T::from_float(cos_t[(i64)pos * half + d]));
            const float s = T::to_float(T::from_float(sin_t[(i64)pos * half + d]));
            float a = T::to_float(row[at]), b = T::to_float(row[at + half]);
            q[out + at] = T::from_float(a * c - b * s);
            q[out + at + half] = T::from_float(b * c + a * s);
            a = T::to_float(row[width + at]);
            b = T::to_float(row[width + at + half]);
            k[out + at] = T::from_float(a * c - b * s);
            k[out + at + half] = T::from_float(b * c + a * s);
        }
    } else {
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            q[out + i] = row[i];
            k[out + i] = row[width + i];
        }
    }
    for (int i = threadIdx.x; i < width; i += blockDim.x) v[out + i] = row[2 * width + i];
}

// out = a + scale * b (residuals; the adapters' scaled add). `out` may be `a`.
template <typename T>
__device__ __forceinline__ void add_scaled(const typename T::S* a, const typename T::S* b, typename T::S* out, u64 n,
                                           float scale) {
    GRID_STRIDE(i, n) out[i] = T::from_float(T::to_float(a[i]) + scale * T::to_float(b[i]));
}

// Broadcast add of a small table: x[r][c] += t[(r / div) % period][c] (a bias: div = period = 1;
// position embeddings: period = tokens; frame embeddings: div = tokens per frame, period = frames).
template <typename T>
__device__ __forceinline__ void add_rows(typename T::S* x, const typename T::S* t, u64 rows, int cols, int div,
                                         int period) {
    GRID_STRIDE(i, rows * cols) {
        const u64 r = i / cols, c = i % cols;
        const u64 tr = (r / div) % period;
        x[i] = T::from_float(T::to_float(x[i]) + T::to_float(t[tr * cols + c]));
    }
}

// Pseudo-random initialisation: offset + scale * u, u uniform in [-1, 1) (splitmix64 of the
// index and seed, so weights of any size are made on the device without a host copy).
template <typename T>
__device__ __forceinline__ void fill_affine(typename T::S* out, u64 n, u64 seed, float scale, float offset) {
    GRID_STRIDE(i, n) {
        u64 z = i + seed * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        out[i] = T::from_float(offset + scale * ((float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f));
    }
}

// Row copies: dst[dst_rows[i]] = src[src_rows[i]] for i < n (a null index means i), rows of `cols`
// elements. Embedding gather, prefix + text concatenation, last-token selection, beam reordering
// of cache blocks. One block per row.
template <typename S>
__device__ __forceinline__ void copy_rows(const S* src, const int* src_rows, S* dst, const int* dst_rows, i64 cols) {
    const int i = blockIdx.x;
    const S* s = src + (i64)(src_rows ? src_rows[i] : i) * cols;
    S* d = dst + (i64)(dst_rows ? dst_rows[i] : i) * cols;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}

// Writes the K and V rows of n tokens into the paged caches [num_blocks][heads][2^block_shift]
// [head_dim] at flat slots (block * block_size + offset). Source rows: [n][heads][head_dim], row
// stride src_row. Grid: one block per token, y = 0 for K, 1 for V.
template <typename S>
__device__ __forceinline__ void kv_write(const S* k_src, const S* v_src, i64 src_row, const int* slots,
                                         S* k_cache, S* v_cache, int heads, int head_dim, int block_shift) {
    const int t = blockIdx.x;
    const S* src = blockIdx.y == 0 ? k_src : v_src;
    S* cache = blockIdx.y == 0 ? k_cache : v_cache;
    const int slot = slots[t];
    const i64 block = slot >> block_shift, off = slot & ((1 << block_shift) - 1);
    for (int i = threadIdx.x; i < heads * head_dim; i += blockDim.x) {
        const int h = i / head_dim, d = i % head_dim;
        cache[(((block * heads + h) << block_shift) + off) * head_dim + d] = src[t * src_row + i];
    }
}

// Generic attention, one warp per (sequence, query, head) row, keys one at a time with an online
// softmax in f32: for f32 mode and head dims without a tensor-core kernel (any even D <= 128).
// Keys come from dense [B][Skv][H][D] tensors (with Lynx's gap and the causal rule) or, when
// `block_table` is set, from a paged cache holding seq_lens[b] tokens of sequence b.
struct GenericAttnParams {
    u64 q, k, v, o;  // q, o: [B][Sq][H][D]
    u64 kv_gap;      // const int [B][2] or 0
    u64 block_table; // const int [B][max_blocks] or 0 (dense)
    u64 seq_lens;    // const int [B] (paged)
    int batch, heads, seq_q, seq_kv;
    int head_dim, causal, block_shift, max_blocks;
    float scale;
    int reserved;
};

template <typename T>
__device__ __forceinline__ void attn_generic(const GenericAttnParams& p) {
    typedef typename T::S S;
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (i64)p.batch * p.seq_q * p.heads) return;
    const int h = row % p.heads, i = (row / p.heads) % p.seq_q, b = row / ((i64)p.heads * p.seq_q);
    const int D = p.head_dim;
    const S* q = (const S*)p.q + row * D;
    float qv[4], acc[4];
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const int d = lane + 32 * c;
        qv[c] = d < D ? T::to_float(q[d]) * p.scale : 0.f;
        acc[c] = 0.f;
    }
    int lo = 0, hi = 0, n_keys = p.seq_kv;
    if (p.block_table) {
        n_keys = ((const int*)p.seq_lens)[b];
    } else if (p.kv_gap) {
        lo = ((const int*)p.kv_gap)[2 * b];
        hi = ((const int*)p.kv_gap)[2 * b + 1];
    }
    if (!p.block_table && p.causal) n_keys = min(n_keys, i + p.seq_kv - p.seq_q + 1);
    float m = NEG_INF, l = 0.f;
    for (int j = 0; j < n_keys; j++) {
        if (j >= lo && j < hi) continue;
        i64 at;
        if (p.block_table)
            at = paged_offset((const int*)p.block_table, p.max_blocks, b, j, p.block_shift, p.heads, h, D);
        else
            at = (((i64)b * p.seq_kv + j) * p.heads + h) * D;
        const S* k = (const S*)p.k + at;
        const S* v = (const S*)p.v + at;
        float s = 0.f;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int d = lane + 32 * c;
            if (d < D) s += qv[c] * T::to_float(k[d]);
        }
        s = warp_sum(s);
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new), w = expf(s - m_new);
        l = l * corr + w;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const int d = lane + 32 * c;
            acc[c] = acc[c] * corr + (d < D ? w * T::to_float(v[d]) : 0.f);
        }
        m = m_new;
    }
    S* o = (S*)p.o + row * D;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const int d = lane + 32 * c;
        if (d < D) o[d] = T::from_float(acc[c] * inv);
    }
}

// Selection over f32 logits [rows][cols], one block per row. Greedy: the first index of the
// maximum (torch.argmax); NaN never wins.
__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

__device__ __forceinline__ void block_argmax(float& v, int& i, float* rv, int* ri) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) {
        rv[warp] = v;
        ri[warp] = i;
    }
    __syncthreads();
    v = lane < warps ? rv[lane] : NEG_INF;
    i = lane < warps ? ri[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
}

// Sets the flat positions `at[0..n)` of x to -inf: the tokens a greedy row may not pick (the
// n-gram and min-length bans), before its argmax.
template <typename T>
__device__ __forceinline__ void ban(typename T::S* x, const int* at, int n) {
    GRID_STRIDE(i, (u64)n) x[at[i]] = T::from_float(NEG_INF);
}

// Greedy pick over logits stored in T (the LM head's output type: the exact conversion to f32
// keeps the order, so the pick is that of the f32 logits), one block per row.
template <typename T>
__device__ __forceinline__ void argmax(const typename T::S* logits, int cols, int* out) {
    __shared__ float rv[32];
    __shared__ int ri[32];
    const typename T::S* row = logits + (i64)blockIdx.x * cols;
    float v = NEG_INF;
    int i = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) better(v, i, T::to_float(row[c]), c);
    block_argmax(v, i, rv, ri);
    if (threadIdx.x == 0) out[blockIdx.x] = i == 0x7fffffff ? 0 : i;
}

// The k largest log-probabilities of each row (k <= 64; NaN logits ignored), in descending order
// with their indices: beam search and top-k / top-p sampling need no more than this on the host.
// k passes of a block arg-max, each excluding the indices already taken.
extern "C" __global__ void topk_logprobs_f32(const float* logits, int cols, int k, float* out_vals,
                                             int* out_idx) {
    __shared__ float rv[32];
    __shared__ int ri[32];
    __shared__ float red[32];
    __shared__ int taken[64];
    const float* row = logits + (i64)blockIdx.x * cols;
    float mx = NEG_INF;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, row[c]);
    {
        int dummy = 0;
        block_argmax(mx, dummy, rv, ri);
    }
    float s = 0.f;
    if (mx != NEG_INF)
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            if (row[c] == row[c]) s += __expf(row[c] - mx);
    const float lse = mx + __logf(block_sum(s, red));
    for (int j = 0; j < k; j++) {
        float v = NEG_INF;
        int i = 0x7fffffff;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            bool used = false;
            for (int t = 0; t < j; t++) used |= taken[t] == c;
            if (!used) better(v, i, row[c], c);
        }
        block_argmax(v, i, rv, ri);
        if (threadIdx.x == 0) {
            taken[j] = i;
            out_vals[(i64)blockIdx.x * k + j] = v - lse;
            out_idx[(i64)blockIdx.x * k + j] = i == 0x7fffffff ? -1 : i;
        }
        __syncthreads();
    }
}

#define OPS_KERNELS(T, TN)                                                                                     \
    typedef T::S S_##TN;                                                                                       \
    extern "C" __global__ void layernorm_##TN(const S_##TN* x, const S_##TN* g, const S_##TN* b, S_##TN* out,  \
                                              int cols, float eps) {                                           \
        layernorm<T>(x, g, b, out, cols, eps);                                                                 \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_##TN(const S_##TN* x, const S_##TN* w, S_##TN* out, int cols,           \
                                            float eps) {                                                       \
        rmsnorm<T>(x, w, out, cols, eps);                                                                      \
    }                                                                                                          \
    extern "C" __global__ void bias_gelu_##TN(S_##TN* x, const S_##TN* bias, u64 n, int cols) {                \
        bias_gelu<T>(x, bias, n, cols);                                                                        \
    }                                                                                                          \
    extern "C" __global__ void silu_##TN(S_##TN* x, u64 n) { silu<T>(x, n); }                                  \
    extern "C" __global__ void silu_mul_##TN(const S_##TN* gu, S_##TN* out, u64 rows, int inter) {             \
        silu_mul<T>(gu, out, rows, inter);                                                                     \
    }                                                                                                          \
    extern "C" __global__ void rope_##TN(S_##TN* x, i64 row_stride, const int* pos, const float* c,            \
                                         const float* s, int heads, int head_dim) {                            \
        rope<T>(x, row_stride, pos, c, s, heads, head_dim);                                                    \
    }                                                                                                          \
    extern "C" __global__ void qkv_rope_split_##TN(const S_##TN* qkv, S_##TN* q, S_##TN* k, S_##TN* v,       \
                                                   const int* pos, const float* c, const float* s, int heads,   \
                                                   int head_dim) {                                              \
        qkv_rope_split<T>(qkv, q, k, v, pos, c, s, heads, head_dim);                                           \
    }                                                                                                          \
    extern "C" __global__ void add_scaled_##TN(const S_##TN* a, const S_##TN* b, S_##TN* out, u64 n,           \
                                               float scale) {                                                  \
        add_scaled<T>(a, b, out, n, scale);                                                                    \
    }                                                                                                          \
    extern "C" __global__ void add_rows_##TN(S_##TN* x, const S_##TN* t, u64 rows, int cols, int div,          \
                                             int period) {                                                     \
        add_rows<T>(x, t, rows, cols, div, period);                                                            \
    }                                                                                                          \
    extern "C" __global__ void fill_affine_##TN(S_##TN* out, u64 n, u64 seed, float scale, float offset) {     \
        fill_affine<T>(out, n, seed, scale, offset);                                                           \
    }                                                                                                          \
    extern "C" __global__ void copy_rows_##TN(const S_##TN* src, const int* sr, S_##TN* dst, const int* dr,    \
                                              i64 cols) {                                                      \
        copy_rows<S_##TN>(src, sr, dst, dr, cols);                                                             \
    }                                                                                                          \
    extern "C" __global__ void kv_write_##TN(const S_##TN* ks, const S_##TN* vs, i64 src_row,                \
                                             const int* slots, S_##TN* kc, S_##TN* vc, int heads,              \
                                             int head_dim, int block_shift) {                                  \
        kv_write<S_##TN>(ks, vs, src_row, slots, kc, vc, heads, head_dim, block_shift);                        \
    }                                                                                                          \
    extern "C" __global__ void attn_generic_##TN(const GenericAttnParams p) { attn_generic<T>(p); }            \
    extern "C" __global__ void argmax_##TN(const S_##TN* logits, int cols, int* out) {                        \
        argmax<T>(logits, cols, out);                                                                          \
    }                                                                                                          \
    extern "C" __global__ void ban_##TN(S_##TN* x, const int* at, int n) { ban<T>(x, at, n); }

OPS_KERNELS(Bf16, bf16)
OPS_KERNELS(F16, f16)
OPS_KERNELS(F32, f32)
