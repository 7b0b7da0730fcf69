// Vision-token projection of a resampler layer in one kernel: frame position embedding add,
// LayerNorm (`norm_media`), the `to_kv` GEMM on the tensor cores (mma.sync m16n8k16, f32
// accumulators) and the split into the K and V heads the attention kernel reads.
//
// LayerNorm and the frame embedding are folded into the GEMM. With W' = W diag(gamma) rounded
// to the storage type, c1 = W' 1, c2 = W beta and P[f] = e_f W'^T (all computed on the host once
// per layer, c1 and P from the rounded W'):
//
//   LN(x + e_f) W^T = rstd * (x W'^T + P[f] - mean * c1) + c2
//
// where mean and rstd are the statistics of x + e_f. So the main loop is a plain GEMM of the raw
// tokens with W'. The statistics come for free: the first column of warps holds every A fragment
// of its rows in registers anyway, and accumulates sum and sum of squares of x + e_f from them
// (the embedding's k-slice rides along in each pipeline stage).
//
// Rows are tokens ordered [sequence][frame][token]: row m belongs to frame
// (m / tokens_per_frame) % frames. Output column n < inner goes to K[m][n], the rest to
// V[m][n - inner], both [rows][inner] = [batch, seq, heads, head_dim] contiguous.
//
// Block: 8 warps as 2 (rows) x 4 (columns), tile 128 x 128, k-step 32, four cp.async stages.
#include "prelude.cuh"

struct ProjParams {
    u64 x;            // [rows][k_dim], row stride x_row
    u64 w;            // [n_dim][k_dim] folded weight W'
    u64 c1;           // float [n_dim]
    u64 c2;           // float [n_dim]
    u64 frame_embed;  // [frames][k_dim] or 0
    u64 frame_proj;   // float [frames][n_dim] or 0
    u64 out_k;        // [rows][inner]
    u64 out_v;        // [rows][inner]
    i64 x_row;
    int rows, k_dim, n_dim, inner;
    int frames, tokens_per_frame;
    float eps;
    int reserved;
};

namespace proj {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 4;
constexpr int WARPS_M = 2, WARPS_N = 4, THREADS = 32 * WARPS_M * WARPS_N;
constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // 64 x 32 per warp
constexpr int MT = WM / 16, NT = WN / 8;             // 4 m-tiles, 4 n-tiles
constexpr int SROW = BK + 8;                          // +16 B per row: conflict-free ldmatrix
constexpr int MAX_FRAMES = 16;
constexpr int CHUNKS = BK / 8;  // 16-byte chunks per tile row
constexpr int STAGE_ELEMS = (BM + BN + MAX_FRAMES) * SROW;
}  // namespace proj

template <typename T>
__device__ __forceinline__ void vision_projection(const ProjParams& p) {
    using namespace proj;
    extern __shared__ __align__(16) u16 smem[];  // [stage][A BM | B BN | E MAX_FRAMES][SROW]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int warp_m = warp % WARPS_M, warp_n = warp / WARPS_M;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const u16* x = (const u16*)p.x;
    const u16* w = (const u16*)p.w;
    const u16* e = (const u16*)p.frame_embed;
    const bool with_frames = p.frame_embed != 0 && p.frames > 0;
    const int k_tiles = (p.k_dim + BK - 1) / BK;

    // Stage loads: every row of A, B (and the embedding) in 16-byte chunks; rows past the
    // matrix and chunks past k_dim are zero-filled (they add nothing to the sums or the GEMM).
    auto load = [&](int stage, int kt) {
        u16* sa = smem + stage * STAGE_ELEMS;
        u16* sb = sa + BM * SROW;
        u16* se = sb + BN * SROW;
        const int k0 = kt * BK;
#pragma unroll
        for (int i = tid; i < BM * CHUNKS; i += THREADS) {
            const int r = i / CHUNKS, c = i % CHUNKS, k = k0 + c * 8;
            const bool ok = m0 + r < p.rows && k < p.k_dim;
            cp_async16(smem_addr(sa + r * SROW + c * 8), ok ? x + (i64)(m0 + r) * p.x_row + k : x, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = tid; i < BN * CHUNKS; i += THREADS) {
            const int r = i / CHUNKS, c = i % CHUNKS, k = k0 + c * 8;
            const bool ok = n0 + r < p.n_dim && k < p.k_dim;
            cp_async16(smem_addr(sb + r * SROW + c * 8), ok ? w + (i64)(n0 + r) * p.k_dim + k : w, ok ? 16 : 0);
        }
        if (with_frames && tid < p.frames * CHUNKS) {
            const int r = tid / CHUNKS, c = tid % CHUNKS, k = k0 + c * 8;
            const bool ok = k < p.k_dim;
            cp_async16(smem_addr(se + r * SROW + c * 8), ok ? e + (i64)r * p.k_dim + k : e, ok ? 16 : 0);
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][j][c] = 0.f;
    // Row statistics (first column of warps only): rows g and g + 8 of each m-tile.
    const bool stats = warp_n == 0;
    float s1[MT][2], s2[MT][2];
    int frame_off[MT][2];  // the row's embedding row in a stage, in elements (-1: none)
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            s1[i][r] = 0.f;
            s2[i][r] = 0.f;
            const int m = m0 + warp_m * WM + i * 16 + (lane >> 2) + 8 * r;
            frame_off[i][r] = with_frames ? ((m / p.tokens_per_frame) % p.frames) * SROW : -1;
        }

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < k_tiles) load(s, s);
        cp_async_commit();
    }
    // ldmatrix lane offsets: A x4 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
    // (rows 8-15, k 8-15); B x4 = two n8 tiles, each (k 0-7), (k 8-15).
    const u32 a_lane = ((warp_m * WM + (lane & 15)) * SROW + (lane >> 4) * 8) * 2;
    const u32 b_lane = ((BM + warp_n * WN + (lane & 7) + ((lane >> 4) << 3)) * SROW + ((lane >> 3) & 1) * 8) * 2;
    const u32 base = smem_addr(smem);

    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < k_tiles) load(next % STAGES, next);
        cp_async_commit();
        const int stage = kt % STAGES;
        const u32 st = base + stage * STAGE_ELEMS * 2;
        const u16* se = smem + stage * STAGE_ELEMS + (BM + BN) * SROW;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            u32 a[MT][4], b[NT][2];
#pragma unroll
            for (int i = 0; i < MT; i++) ldmatrix_x4(a[i], st + a_lane + (i * 16 * SROW + ks * 16) * 2);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                u32 r[4];
                ldmatrix_x4(r, st + b_lane + (j * 8 * SROW + ks * 16) * 2);
                b[j][0] = r[0];
                b[j][1] = r[1];
                b[j + 1][0] = r[2];
                b[j + 1][1] = r[3];
            }
            if (stats) {
                const int col = ks * 16 + 2 * (lane & 3);
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        // a[i][r]: row g + 8r, k = col, col + 1; a[i][r + 2]: k = col + 8, + 9.
                        float v[4] = {T::to_float((u16)(a[i][r] & 0xffff)), T::to_float((u16)(a[i][r] >> 16)),
                                      T::to_float((u16)(a[i][r + 2] & 0xffff)), T::to_float((u16)(a[i][r + 2] >> 16))};
                        if (frame_off[i][r] >= 0) {
                            const u16* er = se + frame_off[i][r] + col;
                            v[0] += T::to_float(er[0]);
                            v[1] += T::to_float(er[1]);
                            v[2] += T::to_float(er[8]);
                            v[3] += T::to_float(er[9]);
                        }
#pragma unroll
                        for (int c = 0; c < 4; c++) {
                            s1[i][r] += v[c];
                            s2[i][r] += v[c] * v[c];
                        }
                    }
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) T::mma(acc[i][j], a[i], b[j][0], b[j][1]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // Row statistics to shared memory: [BM] means, then [BM] reciprocal deviations.
    float* mean_s = (float*)smem;
    float* rstd_s = mean_s + BM;
    if (stats) {
        const float inv_k = 1.f / (float)p.k_dim;
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float a1 = s1[i][r], a2 = s2[i][r];
                a1 += __shfl_xor_sync(0xffffffffu, a1, 1);
                a1 += __shfl_xor_sync(0xffffffffu, a1, 2);
                a2 += __shfl_xor_sync(0xffffffffu, a2, 1);
                a2 += __shfl_xor_sync(0xffffffffu, a2, 2);
                if ((lane & 3) == 0) {
                    const int row = warp_m * WM + i * 16 + (lane >> 2) + 8 * r;
                    const float mean = a1 * inv_k;
                    const float var = fmaxf(a2 * inv_k - mean * mean, 0.f);
                    mean_s[row] = mean;
                    rstd_s[row] = rsqrtf(var + p.eps);
                }
            }
    }
    __syncthreads();

    // Epilogue: out = rstd * (acc + P[f] - mean * c1) + c2, columns split into K and V.
    const float* c1 = (const float*)p.c1;
    const float* c2 = (const float*)p.c2;
    const float* fp = (const float*)p.frame_proj;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int n = n0 + warp_n * WN + j * 8 + 2 * (lane & 3);
        if (n >= p.n_dim) continue;
        const float2 c1v = *(const float2*)(c1 + n);
        const float2 c2v = *(const float2*)(c2 + n);
        u16* out = n < p.inner ? (u16*)p.out_k + n : (u16*)p.out_v + (n - p.inner);
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int row = warp_m * WM + i * 16 + (lane >> 2) + 8 * r;
                const int m = m0 + row;
                if (m >= p.rows) continue;
                const float mean = mean_s[row], rstd = rstd_s[row];
                float v0 = acc[i][j][2 * r], v1 = acc[i][j][2 * r + 1];
                if (fp && p.frames > 0) {
                    const float2 pf = *(const float2*)(fp + (i64)((m / p.tokens_per_frame) % p.frames) * p.n_dim + n);
                    v0 += pf.x;
                    v1 += pf.y;
                }
                v0 = rstd * (v0 - mean * c1v.x) + c2v.x;
                v1 = rstd * (v1 - mean * c1v.y) + c2v.y;
                *(u32*)(out + (i64)m * p.inner) = T::pack2(v0, v1);
            }
    }
}

extern "C" __global__ void __launch_bounds__(proj::THREADS, 1) vision_projection_bf16(const ProjParams p) {
    vision_projection<Bf16>(p);
}
extern "C" __global__ void __launch_bounds__(proj::THREADS, 1) vision_projection_f16(const ProjParams p) {
    vision_projection<F16>(p);
}
