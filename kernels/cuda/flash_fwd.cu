// Fused attention forward (flash-attention 2 style) on the tensor cores with mma.sync m16n8k16.
//
// One block computes BM = 16 * MT * WARPS query rows of one (sequence, head) against a range of
// key/value tiles of BN rows, streamed through shared memory with cp.async (two stages). Each warp
// owns MT m-tiles of 16 query rows (with MT = 1 its Q fragments stay in registers; with MT = 2
// every K/V fragment read from shared memory feeds two m-tiles). S = QK^T and O += PV run on
// the tensor cores with f32 accumulators; softmax is online in f32 (base 2, scale folded in).
//
// Masking: keys in the per-sequence gap [gap_lo, gap_hi) are never attended (Lynx's layout is
// `[vision prefix][left pads][text]`, so the pads sit in a gap; plain left padding is a gap that
// starts at 0); with `causal`, query row i sees keys j <= i + (seq_kv - seq_q). A row that sees no
// key gets zeros. Splits (grid.z > 1) cut the key range: each split writes its normalised partial
// output and log-sum-exp to f32 scratch and `attn_combine` merges them.
//
// Paged KV cache: when `cache_k` is set, the blocks of the last query tile (which read every key
// tile) also store each K/V tile they load into the cache, gap tokens dropped, so the prefill
// fills the cache in the same pass.
#include "prelude.cuh"

struct FwdParams {
    u64 q, k, v, o;
    i64 q_batch, q_row, q_head;
    i64 k_batch, k_row, k_head;
    i64 v_batch, v_row, v_head;
    i64 o_batch, o_row, o_head;
    u64 kv_gap;       // const int [batch][2] or 0
    u64 partial_o;    // float [splits][batch * heads * seq_q][D]
    u64 partial_lse;  // float [splits][batch * heads * seq_q]
    u64 cache_k, cache_v, block_table;
    int batch, heads, seq_q, seq_kv;
    int causal, splits, cache_block_shift, cache_max_blocks;
    float scale_log2;
    int reserved;
};

template <typename T, int D, int WARPS, int MT, int BN>
__device__ __forceinline__ void flash_fwd(const FwdParams& p) {
    constexpr int DP = (D + 15) / 16 * 16;  // head dim padded to the mma k-step
    constexpr int SROW = DP + 8;            // smem row stride: +16 B breaks ldmatrix bank conflicts
    constexpr int WM = 16 * MT;             // query rows per warp
    constexpr int BM = WM * WARPS;
    constexpr int THREADS = 32 * WARPS;
    constexpr int CH = DP / 8;  // 16-byte chunks per smem row
    constexpr int CH_VALID = D / 8;
    constexpr bool Q_IN_REGS = MT == 1;  // else Q fragments are re-read from smem per tile
    // A head dim that is an odd multiple of 8 (EVA's 88) ends in a half k-step for QK^T (one
    // m16n8k8) and a lone d n-tile for PV: the padding columns are never multiplied.
    constexpr int KS_FULL = D / 16;
    constexpr bool HALF = D % 16 != 0;
    constexpr int NDT = D / 8;  // d n-tiles of the output
    constexpr float RESCALE_LOG2 = 8.f;
    extern __shared__ __align__(16) u16 smem[];
    u16* sq = smem;
    u16* skv = smem + BM * SROW;  // [stage][K | V][BN][SROW]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int num_q_tiles = gridDim.x;
    const int q_tile = num_q_tiles - 1 - blockIdx.x;  // longest (causal) tiles first
    const int b = blockIdx.y / p.heads, h = blockIdx.y % p.heads;
    const int split = blockIdx.z;
    const int m0 = q_tile * BM;
    const int off = p.seq_kv - p.seq_q;
    int gap_lo = 0, gap_hi = 0;
    if (p.kv_gap) {
        const int* g = (const int*)p.kv_gap;
        gap_lo = g[2 * b];
        gap_hi = g[2 * b + 1];
    }
    int kv_end = p.seq_kv;
    if (p.causal) kv_end = max(0, min(kv_end, m0 + BM + off));
    const int n_tiles = (kv_end + BN - 1) / BN;
    const int per_split = (n_tiles + p.splits - 1) / p.splits;
    const int t_begin = split * per_split;
    const int t_end = min(n_tiles, t_begin + per_split);
    const bool write_cache = p.cache_k != 0 && q_tile == num_q_tiles - 1;

    const u16* qg = (const u16*)p.q + b * p.q_batch + h * p.q_head;
    const u16* kg = (const u16*)p.k + b * p.k_batch + h * p.k_head;
    const u16* vg = (const u16*)p.v + b * p.v_batch + h * p.v_head;

    auto skip_gap = [&](int t) {
        while (t < t_end && t * BN >= gap_lo && (t + 1) * BN <= gap_hi) t++;
        return t;
    };
    // K/V tile loads: only the D/8 chunks that hold data (padding columns are never read); rows
    // past the sequence are zero-filled so that P = 0 never meets a NaN. When the chunks of a row
    // divide the block's threads, each thread keeps one column and strides over rows, so an
    // address is a base plus a compile-time step.
    auto load_kv = [&](int stage, int t) {
        u16* sk = skv + stage * 2 * BN * SROW;
        u16* sv = sk + BN * SROW;
        if constexpr (THREADS % CH_VALID == 0) {
            constexpr int RSTEP = THREADS / CH_VALID;
            const int c = tid % CH_VALID, r0 = tid / CH_VALID, key0 = t * BN + r0;
            const u32 ks_addr = smem_addr(sk + r0 * SROW + c * 8);
            const u32 vs_addr = smem_addr(sv + r0 * SROW + c * 8);
            const u16* kp = kg + key0 * p.k_row + c * 8;
            const u16* vp = vg + key0 * p.v_row + c * 8;
#pragma unroll
            for (int it = 0; it < BN / RSTEP; it++) {
                const bool ok = key0 + it * RSTEP < p.seq_kv;
                cp_async16(ks_addr + it * RSTEP * SROW * 2, ok ? kp + it * RSTEP * p.k_row : kg, ok ? 16 : 0);
                cp_async16(vs_addr + it * RSTEP * SROW * 2, ok ? vp + it * RSTEP * p.v_row : vg, ok ? 16 : 0);
            }
        } else {
            for (int i = tid; i < BN * CH_VALID; i += THREADS) {
                const int r = i / CH_VALID, c = i % CH_VALID, key = t * BN + r;
                const bool ok = key < p.seq_kv;
                const i64 ko = ok ? key * p.k_row + c * 8 : 0;
                const i64 vo = ok ? key * p.v_row + c * 8 : 0;
                cp_async16(smem_addr(sk + r * SROW + c * 8), kg + ko, ok ? 16 : 0);
                cp_async16(smem_addr(sv + r * SROW + c * 8), vg + vo, ok ? 16 : 0);
            }
        }
    };
    // ldmatrix addresses: one shared-window base per operand plus this lane's row/column offset;
    // every fragment is then base + a compile-time offset (folded into the instruction).
    constexpr u32 ROW_BYTES = SROW * 2;
    const u32 smem_base = smem_addr(smem);
    // x4 with matrices (rows 0-7, col 0), (rows 8-15, col 0), (rows 0-7, col 8), (rows 8-15, col 8):
    // A fragments of Q and the transposed B fragments of V.
    const u32 lane_a = ((lane & 7) + 8 * ((lane >> 3) & 1)) * ROW_BYTES + 16 * (lane >> 4);
    // x4 with matrices (rows 0-7, col 0), (rows 0-7, col 8), (rows 8-15, col 0), (rows 8-15, col 8):
    // B fragments of K for two n-tiles.
    const u32 lane_b = ((lane & 7) + 8 * (lane >> 4)) * ROW_BYTES + 16 * ((lane >> 3) & 1);
    // x2 with matrices (rows 0-7, col 0), (rows 8-15, col 0): the half k-step / lone d n-tile.
    const u32 lane_h = ((lane & 7) + 8 * ((lane >> 3) & 1)) * ROW_BYTES;
    const u32 q_addr = smem_base + warp * WM * ROW_BYTES + lane_a;
    // A fragment (16 rows x 16 of d) of this warp's m-tile `mt` at k-step `ks`.
    auto load_q = [&](u32* frag, int mt, int ks) { ldmatrix_x4(frag, q_addr + mt * 16 * ROW_BYTES + ks * 32); };

    float o[MT][NDT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < NDT; i++) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    float m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        m_run[mt][0] = m_run[mt][1] = NEG_INF;
        l_run[mt][0] = l_run[mt][1] = 0.f;
    }

    int t = skip_gap(t_begin);
    if (t < t_end) {
        for (int i = tid; i < BM * CH; i += THREADS) {
            const int r = i / CH, c = i % CH;
            const bool ok = m0 + r < p.seq_q && c < CH_VALID;
            const i64 qo = ok ? (m0 + r) * p.q_row + c * 8 : 0;
            cp_async16(smem_addr(sq + r * SROW + c * 8), qg + qo, ok ? 16 : 0);
        }
        load_kv(0, t);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
    }
    u32 qf[Q_IN_REGS ? DP / 16 : 1][4];
    if constexpr (Q_IN_REGS) {
#pragma unroll
        for (int ks = 0; ks < DP / 16; ks++)
            if (t < t_end) load_q(qf[ks], 0, ks);
    }

    int stage = 0;
    while (t < t_end) {
        const int t_next = skip_gap(t + 1);
        if (t_next < t_end) load_kv(stage ^ 1, t_next);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const u16* sk = skv + stage * 2 * BN * SROW;
        const u16* sv = sk + BN * SROW;
        const u32 k_base = smem_base + (BM + stage * 2 * BN) * ROW_BYTES;
        const u32 v_base = k_base + BN * ROW_BYTES;
        const int n0 = t * BN;

        if (write_cache) {
            const int gap = gap_hi - gap_lo;
            for (int i = tid; i < BN * CH_VALID; i += THREADS) {
                const int r = i / CH_VALID, c = i % CH_VALID, key = n0 + r;
                if (key >= p.seq_kv || (key >= gap_lo && key < gap_hi)) continue;
                const int pos = key < gap_lo ? key : key - gap;
                const i64 dst = paged_offset((const int*)p.block_table, p.cache_max_blocks, b, pos,
                                             p.cache_block_shift, p.heads, h, D) +
                                c * 8;
                *(u64*)((u16*)p.cache_k + dst) = *(const u64*)(sk + r * SROW + c * 8);
                *(u64*)((u16*)p.cache_k + dst + 4) = *(const u64*)(sk + r * SROW + c * 8 + 4);
                *(u64*)((u16*)p.cache_v + dst) = *(const u64*)(sv + r * SROW + c * 8);
                *(u64*)((u16*)p.cache_v + dst + 4) = *(const u64*)(sv + r * SROW + c * 8 + 4);
            }
        }

        // S = Q K^T for this warp's MT x 16 rows and BN keys; each K fragment feeds MT m-tiles.
        float s[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < BN / 8; i++) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS_FULL; ks++) {
            u32 qa[MT][4];
            if constexpr (Q_IN_REGS) {
#pragma unroll
                for (int i = 0; i < 4; i++) qa[0][i] = qf[ks][i];
            } else {
#pragma unroll
                for (int mt = 0; mt < MT; mt++) load_q(qa[mt], mt, ks);
            }
#pragma unroll
            for (int np = 0; np < BN / 16; np++) {
                u32 kb[4];
                ldmatrix_x4(kb, k_base + lane_b + np * 16 * ROW_BYTES + ks * 32);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    T::mma(s[mt][2 * np], qa[mt], kb[0], kb[1]);
                    T::mma(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
                }
            }
        }
        if constexpr (HALF) {
            u32 qa[MT][4];
            if constexpr (Q_IN_REGS) {
#pragma unroll
                for (int i = 0; i < 4; i++) qa[0][i] = qf[KS_FULL][i];
            } else {
#pragma unroll
                for (int mt = 0; mt < MT; mt++) load_q(qa[mt], mt, KS_FULL);
            }
#pragma unroll
            for (int np = 0; np < BN / 16; np++) {
                u32 kb[2];  // columns KS_FULL*16 .. +8 of keys np*16 .. +8 and np*16+8 .. +16
                ldmatrix_x2(kb, k_base + lane_h + np * 16 * ROW_BYTES + KS_FULL * 32);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    T::mma_k8(s[mt][2 * np], qa[mt], kb[0]);
                    T::mma_k8(s[mt][2 * np + 1], qa[mt], kb[1]);
                }
            }
        }

        const bool need_mask = n0 + BN > p.seq_kv || (n0 < gap_hi && n0 + BN > gap_lo) ||
                               (p.causal && n0 + BN - 1 > m0 + off);
        if (need_mask) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int row = m0 + warp * WM + mt * 16 + (lane >> 2) + 8 * (e >> 1);
                        const int key = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
                        const bool ok = key < p.seq_kv && !(key >= gap_lo && key < gap_hi) &&
                                        (!p.causal || key <= row + off);
                        if (!ok) s[mt][nt][e] = NEG_INF;
                    }
        }

        // Online softmax; a thread holds rows (lane/4) and (lane/4 + 8) of each m-tile. The
        // probabilities are packed to 16 bits as soon as they exist (half the registers).
        u32 pp[MT][BN / 8][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = NEG_INF;
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++)
                    mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // Lazy rescaling: the running max only moves (and O, l are rescaled) when some
                // row of the warp grew by more than 2^8; until then probabilities up to 256 are
                // summed against the stale max, exactly as the final normalisation divides.
                const float m_new = fmaxf(m_run[mt][r], mx * p.scale_log2);
                if (__any_sync(0xffffffffu, m_new > m_run[mt][r] + RESCALE_LOG2)) {
                    const float alpha = fast_exp2(m_run[mt][r] - (m_new == NEG_INF ? 0.f : m_new));
                    m_run[mt][r] = m_new;
                    l_run[mt][r] *= alpha;
#pragma unroll
                    for (int dt = 0; dt < NDT; dt++) {
                        o[mt][dt][2 * r] *= alpha;
                        o[mt][dt][2 * r + 1] *= alpha;
                    }
                }
                const float m_use = m_run[mt][r] == NEG_INF ? 0.f : m_run[mt][r];
                float rs = 0.f;
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++) {
                    const float p0 = fast_exp2(fmaf(s[mt][nt][2 * r], p.scale_log2, -m_use));
                    const float p1 = fast_exp2(fmaf(s[mt][nt][2 * r + 1], p.scale_log2, -m_use));
                    rs += p0 + p1;
                    pp[mt][nt][r] = T::pack2(p0, p1);
                }
                l_run[mt][r] += rs;
            }

        // O += P V: the probabilities of two key n-tiles form one A fragment; each V fragment
        // feeds MT m-tiles.
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            u32 pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = pp[mt][2 * kk][0];
                pa[mt][1] = pp[mt][2 * kk][1];
                pa[mt][2] = pp[mt][2 * kk + 1][0];
                pa[mt][3] = pp[mt][2 * kk + 1][1];
            }
#pragma unroll
            for (int dp = 0; dp < KS_FULL; dp++) {
                u32 vb[4];
                ldmatrix_x4_trans(vb, v_base + lane_a + kk * 16 * ROW_BYTES + dp * 32);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    T::mma(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
                    T::mma(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
                }
            }
            if constexpr (HALF) {
                u32 vb[2];  // keys kk*16 .. +16 of the lone last d n-tile
                ldmatrix_x2_trans(vb, v_base + lane_h + kk * 16 * ROW_BYTES + KS_FULL * 32);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) T::mma(o[mt][NDT - 1], pa[mt], vb[0], vb[1]);
            }
        }
        __syncthreads();
        stage ^= 1;
        t = t_next;
    }

    // Epilogue: normalise and store (or store the split's partial result).
    const i64 rows = (i64)p.batch * p.heads * p.seq_q;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = l_run[mt][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int row = m0 + warp * WM + mt * 16 + (lane >> 2) + 8 * r;
            if (row >= p.seq_q) continue;
            const float inv = l > 0.f ? 1.f / l : 0.f;
            if (p.splits == 1) {
                u16* out = (u16*)p.o + b * p.o_batch + row * p.o_row + h * p.o_head;
#pragma unroll
                for (int dt = 0; dt < NDT; dt++) {
                    const int d = dt * 8 + 2 * (lane & 3);
                    *(u32*)(out + d) = T::pack2(o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
                }
            } else {
                const i64 rowid = ((i64)(b * p.heads + h)) * p.seq_q + row;
                float* po = (float*)p.partial_o + ((i64)split * rows + rowid) * D;
#pragma unroll
                for (int dt = 0; dt < NDT; dt++) {
                    const int d = dt * 8 + 2 * (lane & 3);
                    po[d] = o[mt][dt][2 * r] * inv;
                    po[d + 1] = o[mt][dt][2 * r + 1] * inv;
                }
                if ((lane & 3) == 0)
                    ((float*)p.partial_lse)[split * rows + rowid] =
                        l > 0.f ? m_run[mt][r] + fast_log2(l) : NEG_INF;
            }
        }
}

// One kernel per variant: name flash_fwd_<dtype>_d<D>_w<warps>_m<m-tiles>_n<BN>_b<min blocks/SM>.
#define FWD_KERNEL(T, TN, D, WARPS, MT, BN, MINB)                                               \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, MINB)                                \
        flash_fwd_##TN##_d##D##_w##WARPS##_m##MT##_n##BN##_b##MINB(const FwdParams p) {           \
        flash_fwd<T, D, WARPS, MT, BN>(p);                                                        \
    }

// The compiled variants (keep in sync with FWD_VARIANTS in kernels/src/source.rs), per head dim.
#define FWD_VARIANTS_D64(T, TN)            \
    FWD_KERNEL(T, TN, 64, 2, 1, 64, 1)     \
    FWD_KERNEL(T, TN, 64, 4, 1, 64, 1)
#define FWD_VARIANTS_D88(T, TN)            \
    FWD_KERNEL(T, TN, 88, 4, 1, 64, 1)     \
    FWD_KERNEL(T, TN, 88, 4, 1, 32, 3)     \
    FWD_KERNEL(T, TN, 88, 4, 2, 32, 1)     \
    FWD_KERNEL(T, TN, 88, 4, 2, 64, 1)
#define FWD_VARIANTS_D128(T, TN)           \
    FWD_KERNEL(T, TN, 128, 4, 1, 64, 1)    \
    FWD_KERNEL(T, TN, 128, 8, 1, 64, 1)    \
    FWD_KERNEL(T, TN, 128, 4, 2, 32, 1)

// The file is compiled in parts, one element type and head dim each (FWD_UNIT, defined before
// the file by kernels/src/source.rs), so that the parts compile in parallel; without it, whole.
#ifdef FWD_UNIT
FWD_UNIT
#else
FWD_VARIANTS_D64(Bf16, bf16)
FWD_VARIANTS_D88(Bf16, bf16)
FWD_VARIANTS_D128(Bf16, bf16)
FWD_VARIANTS_D64(F16, f16)
FWD_VARIANTS_D88(F16, f16)
FWD_VARIANTS_D128(F16, f16)
#endif
