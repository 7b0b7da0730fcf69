// Decode attention (one query per sequence) over the paged KV cache, and the split combiner.
//
// The cache is `[num_blocks, heads, block_size = 2^block_shift, D]` per layer for K and for V; `block_table[seq]`
// lists a sequence's blocks in order and `seq_lens[seq]` its token count. One block of 4 warps
// handles one (sequence, head) and one split of its keys (flash-decoding: grid.y splits the key
// range when there are too few sequences to fill the GPU). Groups of LK lanes read one key row
// with 16-byte loads (8 elements per lane); each group keeps its own online-softmax state, and
// the block merges the groups at the end. Memory-bound: the work per byte is a few FMAs.
#include "prelude.cuh"

struct DecodeParams {
    u64 q;
    i64 q_batch, q_head;
    u64 o;
    i64 o_batch, o_head;
    u64 cache_k, cache_v, block_table, seq_lens, partial_o, partial_lse;
    int batch, heads, block_shift, max_blocks, splits, reserved0;
    float scale_log2;
    int reserved1;
};

struct alignas(16) V4 {
    u32 x, y, z, w;
};

__device__ __forceinline__ V4 ld_stream(const u16* p) {
    V4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

template <typename T>
__device__ __forceinline__ void unpack8(const V4& v, float* f) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = T::to_float((u16)(w[i] & 0xffffu));
        f[2 * i + 1] = T::to_float((u16)(w[i] >> 16));
    }
}

template <typename T, int D, int U>
__device__ __forceinline__ void paged_decode(const DecodeParams& p) {
    constexpr int WARPS = 4;
    constexpr int LK = D <= 64 ? 8 : 16;  // lanes per key row
    constexpr int KPW = 32 / LK;          // keys per warp per step
    // U: steps (keys) in flight per group
    constexpr int SLOTS = WARPS * KPW;
    __shared__ float sm_m[SLOTS], sm_l[SLOTS];
    __shared__ float sm_acc[SLOTS][D];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
    const int split = blockIdx.y;
    const int len = ((const int*)p.seq_lens)[b];
    const int chunk = (len + p.splits - 1) / p.splits;
    const int k_begin = split * chunk;
    const int k_end = min(len, k_begin + chunk);
    const int group = lane / LK, sub = lane % LK;
    const bool active = sub * 8 < D;
    const int* table = (const int*)p.block_table;

    float q[8];
    {
        V4 qv = {0u, 0u, 0u, 0u};
        if (active) qv = *(const V4*)((const u16*)p.q + b * p.q_batch + h * p.q_head + sub * 8);
        unpack8<T>(qv, q);
#pragma unroll
        for (int i = 0; i < 8; i++) q[i] *= p.scale_log2;
    }
    float m = NEG_INF, l = 0.f, acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.f;

    constexpr int STRIDE = SLOTS;  // keys between consecutive steps of one group
    for (int base = k_begin + warp * KPW; base < k_end; base += STRIDE * U) {
        V4 kv[U], vv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int key = base + group + u * STRIDE;
            kv[u] = vv[u] = V4{0u, 0u, 0u, 0u};
            if (key < k_end && active) {
                const i64 off = paged_offset(table, p.max_blocks, b, key, p.block_shift, p.heads, h, D) + sub * 8;
                kv[u] = ld_stream((const u16*)p.cache_k + off);
                vv[u] = ld_stream((const u16*)p.cache_v + off);
            }
        }
        float sc[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[8];
            unpack8<T>(kv[u], kf);
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < 8; i++) dot = fmaf(q[i], kf[i], dot);
#pragma unroll
            for (int o = LK / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            sc[u] = base + group + u * STRIDE < k_end ? dot : NEG_INF;
        }
        float mx = sc[0];
#pragma unroll
        for (int u = 1; u < U; u++) mx = fmaxf(mx, sc[u]);
        const float m_new = fmaxf(m, mx);
        const float m_use = m_new == NEG_INF ? 0.f : m_new;
        const float alpha = fast_exp2(m - m_use);
        m = m_new;
        l *= alpha;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] *= alpha;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float pu = fast_exp2(sc[u] - m_use);
            l += pu;
            float vf[8];
            unpack8<T>(vv[u], vf);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[i] = fmaf(pu, vf[i], acc[i]);
        }
    }

    const int slot = warp * KPW + group;
    if (sub == 0) {
        sm_m[slot] = m;
        sm_l[slot] = l;
    }
    if (active) {
#pragma unroll
        for (int i = 0; i < 8; i++) sm_acc[slot][sub * 8 + i] = acc[i];
    }
    __syncthreads();
    if (tid >= D) return;
    float mm = NEG_INF;
#pragma unroll
    for (int s = 0; s < SLOTS; s++) mm = fmaxf(mm, sm_m[s]);
    const float mu = mm == NEG_INF ? 0.f : mm;
    float lsum = 0.f, out = 0.f;
#pragma unroll
    for (int s = 0; s < SLOTS; s++) {
        const float w = fast_exp2(sm_m[s] - mu);
        lsum += w * sm_l[s];
        out += w * sm_acc[s][tid];
    }
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
    if (p.splits == 1) {
        ((u16*)p.o)[b * p.o_batch + h * p.o_head + tid] = T::from_float(out * inv);
    } else {
        const i64 rows = (i64)p.batch * p.heads;
        const i64 rowid = (i64)b * p.heads + h;
        ((float*)p.partial_o)[((i64)split * rows + rowid) * D + tid] = out * inv;
        if (tid == 0)
            ((float*)p.partial_lse)[split * rows + rowid] = lsum > 0.f ? mm + fast_log2(lsum) : NEG_INF;
    }
}

#define DECODE_KERNEL(T, TN, D, U)                                                            \
    extern "C" __global__ void __launch_bounds__(128) paged_decode_##TN##_d##D##_u##U(const DecodeParams p) { \
        paged_decode<T, D, U>(p);                                                                 \
    }

// The compiled variants (keep in sync with DECODE_UNROLLS in kernels/src/source.rs).
#define DECODE_VARIANTS(T, TN)  \
    DECODE_KERNEL(T, TN, 64, 4)  \
    DECODE_KERNEL(T, TN, 64, 8)  \
    DECODE_KERNEL(T, TN, 88, 4)  \
    DECODE_KERNEL(T, TN, 88, 8)  \
    DECODE_KERNEL(T, TN, 128, 4) \
    DECODE_KERNEL(T, TN, 128, 8)

DECODE_VARIANTS(Bf16, bf16)
DECODE_VARIANTS(F16, f16)

// Merges the splits of an attention: out = sum_s o_s 2^(lse_s - max) / sum_s 2^(lse_s - max).
// Row r = (seq * heads + head) * seq_q + i; one block of (D rounded up to 32) threads per row.
struct CombineParams {
    u64 partial_o, partial_lse, o;
    i64 o_batch, o_row, o_head;
    int rows, heads, seq_q, splits, head_dim, reserved;
};

template <typename T>
__device__ __forceinline__ void combine(const CombineParams& p) {
    const int row = blockIdx.x, d = threadIdx.x;
    if (d >= p.head_dim) return;
    const float* lse = (const float*)p.partial_lse;
    float mx = NEG_INF;
    for (int s = 0; s < p.splits; s++) mx = fmaxf(mx, lse[(i64)s * p.rows + row]);
    const float mu = mx == NEG_INF ? 0.f : mx;
    float acc = 0.f, wsum = 0.f;
    for (int s = 0; s < p.splits; s++) {
        const float w = fast_exp2(lse[(i64)s * p.rows + row] - mu);
        acc += w * ((const float*)p.partial_o)[((i64)s * p.rows + row) * p.head_dim + d];
        wsum += w;
    }
    const int i = row % p.seq_q, bh = row / p.seq_q;
    const int b = bh / p.heads, h = bh % p.heads;
    ((u16*)p.o)[b * p.o_batch + i * p.o_row + h * p.o_head + d] = T::from_float(wsum > 0.f ? acc / wsum : 0.f);
}

extern "C" __global__ void attn_combine_bf16(const CombineParams p) { combine<Bf16>(p); }
extern "C" __global__ void attn_combine_f16(const CombineParams p) { combine<F16>(p); }

// Fills a 16-bit buffer with pseudo-random values uniform in [-1, 1) (benchmark inputs; a
// splitmix64 hash of the index and seed, so no host upload is needed).
template <typename T>
__device__ __forceinline__ void fill_uniform(u16* out, u64 n, u64 seed) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 z = i + seed * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        out[i] = T::from_float((float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f);
    }
}

extern "C" __global__ void fill_uniform_bf16(u16* out, u64 n, u64 seed) { fill_uniform<Bf16>(out, n, seed); }
extern "C" __global__ void fill_uniform_f16(u16* out, u64 n, u64 seed) { fill_uniform<F16>(out, n, seed); }
