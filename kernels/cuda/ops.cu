// The small kernels of the Lynx forward: norms, activations, RoPE, residual adds, the embedding
// gather and greedy / top-k selection over the logits. Arithmetic is f32; each kernel rounds to
// the storage type where the PyTorch modules it mirrors do (HF LLaMA's RMSNorm and SiLU-gate
// round their intermediate results to the model dtype).
#include "prelude.cuh"

// LayerNorm over rows of `cols`: two passes (mean, then the centred variance), one block per row.
template <typename T>
__device__ __forceinline__ void layernorm(const u16* x, const u16* gamma, const u16* beta, u16* out, int cols,
                                          float eps) {
    __shared__ float red[32];
    const u16* xr = x + (i64)blockIdx.x * cols;
    u16* yr = out + (i64)blockIdx.x * cols;
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
__device__ __forceinline__ void rmsnorm(const u16* x, const u16* weight, u16* out, int cols, float eps) {
    __shared__ float red[32];
    const u16* xr = x + (i64)blockIdx.x * cols;
    u16* yr = out + (i64)blockIdx.x * cols;
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
__device__ __forceinline__ void bias_gelu(u16* x, const u16* bias, u64 n, int cols) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float v = T::to_float(x[i]);
        if (bias) v = T::to_float(T::from_float(v + T::to_float(bias[i % cols])));
        x[i] = T::from_float(0.5f * v * (1.f + erff(v * 0.70710678118654752f)));
    }
}

// LLaMA's gated MLP activation: out[r][i] = round(silu(gu[r][i])) * gu[r][inter + i], where gu is
// the fused gate|up projection [rows][2 * inter].
template <typename T>
__device__ __forceinline__ void silu_mul(const u16* gu, u16* out, u64 rows, int inter) {
    const u64 n = rows * inter;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 r = i / inter, c = i % inter;
        const float g = T::to_float(gu[r * 2 * inter + c]);
        const float u = T::to_float(gu[r * 2 * inter + inter + c]);
        const float act = T::to_float(T::from_float(g / (1.f + __expf(-g))));
        out[i] = T::from_float(act * u);
    }
}

// Rotate-half RoPE in place on `heads` heads of `head_dim` per token, the token's row starting
// at x + token * row_stride; cos/sin come from a host-built f32 table [max_pos][head_dim / 2]
// (HF rounds cos/sin to the model dtype: so does this kernel). One block per token.
template <typename T>
__device__ __forceinline__ void rope(u16* x, i64 row_stride, const int* positions, const float* cos_t,
                                     const float* sin_t, int heads, int head_dim) {
    const int half = head_dim / 2;
    const int pos = positions[blockIdx.x];
    u16* row = x + (i64)blockIdx.x * row_stride;
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        const int h = i / half, d = i % half;
        u16* v = row + h * head_dim;
        const float c = T::to_float(T::from_float(cos_t[(i64)pos * half + d]));
        const float s = T::to_float(T::from_float(sin_t[(i64)pos * half + d]));
        const float a = T::to_float(v[d]), b = T::to_float(v[d + half]);
        v[d] = T::from_float(a * c - b * s);
        v[d + half] = T::from_float(b * c + a * s);
    }
}

// out = a + scale * b (residuals; the adapters' scaled add).
template <typename T>
__device__ __forceinline__ void add_scaled(const u16* a, const u16* b, u16* out, u64 n, float scale) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = T::from_float(T::to_float(a[i]) + scale * T::to_float(b[i]));
}

// out[t] = table[ids[t]] (rows of `cols`); an id outside [0, vocab) yields a zero row and sets
// *bad (checked by the host). One block per token.
__device__ __forceinline__ void embed_gather(const u16* table, const int* ids, u16* out, int cols, int vocab,
                                             int* bad) {
    const int id = ids[blockIdx.x];
    const bool ok = id >= 0 && id < vocab;
    if (!ok && threadIdx.x == 0) atomicExch(bad, 1);
    const u16* src = table + (i64)(ok ? id : 0) * cols;
    u16* dst = out + (i64)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = ok ? src[c] : (u16)0;
}

extern "C" __global__ void embed_gather_u16(const u16* table, const int* ids, u16* out, int cols, int vocab,
                                            int* bad) {
    embed_gather(table, ids, out, cols, vocab, bad);
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

extern "C" __global__ void argmax_f32(const float* logits, int cols, int* out) {
    __shared__ float rv[32];
    __shared__ int ri[32];
    const float* row = logits + (i64)blockIdx.x * cols;
    float v = NEG_INF;
    int i = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) better(v, i, row[c], c);
    block_argmax(v, i, rv, ri);
    if (threadIdx.x == 0) out[blockIdx.x] = i == 0x7fffffff ? 0 : i;
}

// The k largest log-probabilities of each row (k <= 64), in descending order with their indices,
// plus the row's log-sum-exp: beam search and top-k / top-p sampling need no more than this on
// the host. k passes of a block arg-max, each excluding the indices already taken.
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
            if (row[c] == row[c]) s += __expf(row[c] - mx);  // NaN logits are ignored
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

#define OPS_KERNELS(T, TN)                                                                                   \
    extern "C" __global__ void layernorm_##TN(const u16* x, const u16* g, const u16* b, u16* out, int cols,  \
                                              float eps) {                                                   \
        layernorm<T>(x, g, b, out, cols, eps);                                                               \
    }                                                                                                        \
    extern "C" __global__ void rmsnorm_##TN(const u16* x, const u16* w, u16* out, int cols, float eps) {     \
        rmsnorm<T>(x, w, out, cols, eps);                                                                    \
    }                                                                                                        \
    extern "C" __global__ void bias_gelu_##TN(u16* x, const u16* bias, u64 n, int cols) {                    \
        bias_gelu<T>(x, bias, n, cols);                                                                      \
    }                                                                                                        \
    extern "C" __global__ void silu_mul_##TN(const u16* gu, u16* out, u64 rows, int inter) {                 \
        silu_mul<T>(gu, out, rows, inter);                                                                   \
    }                                                                                                        \
    extern "C" __global__ void rope_##TN(u16* x, i64 row_stride, const int* pos, const float* c,             \
                                         const float* s, int heads, int head_dim) {                          \
        rope<T>(x, row_stride, pos, c, s, heads, head_dim);                                                  \
    }                                                                                                        \
    extern "C" __global__ void add_scaled_##TN(const u16* a, const u16* b, u16* out, u64 n, float scale) {   \
        add_scaled<T>(a, b, out, n, scale);                                                                  \
    }

OPS_KERNELS(Bf16, bf16)
OPS_KERNELS(F16, f16)
