/*
 * attention.cu — causal multi-head attention, two ways (enum cuda_attention):
 *
 * FUSED: the flash-attention scheme on the CUDA cores in fp32. Forward: one block per (16
 *   query rows, head, sequence), keys in tiles of 32 staged in shared memory, an online
 *   softmax per row; only the output and each row's logsumexp reach memory. Backward: one
 *   kernel per 16 query rows for dq (a first pass over the keys computes the row's
 *   D = sum_j P dP, as the CPU does, a second accumulates dq) and one per 16 key rows for dk
 *   and dv, both recomputing P from the logsumexp. No atomics: every output row is owned by
 *   one warp. Head dimensions up to 256.
 * GEMM: the CPU's own algorithm, one sequence at a time: scores for all heads by one strided
 *   batched GEMM into a (NH, T, T) workspace, the CPU's causal softmax kernel, the mixing
 *   GEMM; backward the CPU's five products. Tensor cores in bf16 mode; any head dimension.
 *
 * Layout (both): a warp owns ROWS rows; lane l owns head dims l, l+32, ... (DPL of them, a
 * template parameter: 1, 2, 4 or 8), so register arrays are indexed by constants only.
 */
#include "common.cuh"

enum { WARPS = 4, ROWS = 4, BR = WARPS * ROWS, TILE = 32, MAX_HD = 256 };

static int dims_per_lane(int HD) { return HD <= 32 ? 1 : HD <= 64 ? 2 : HD <= 128 ? 4 : 8; }

template <int DPL>
__global__ void __launch_bounds__(WARPS * 32)
    attn_fwd_kernel(float *out, float *lse, const float *qkv, int T, int C, int NH, float scale) {
    extern __shared__ float sm[];
    const int HD = C / NH, ld = HD + 1; /* odd row stride: lanes reading rows hit distinct banks */
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *Qs = sm;               // (BR, HD)
    float *Ks = Qs + BR * HD;     // (TILE, ld)
    float *Vs = Ks + TILE * ld;   // (TILE, ld)
    const size_t row3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * row3 + (size_t)h * HD;

    for (int i = threadIdx.x; i < BR * HD; i += blockDim.x) {
        int r = i / HD, d = i % HD, t = q0 + r;
        Qs[i] = t < T ? base[t * row3 + d] : 0.0f;
    }
    float m[ROWS], l[ROWS], o[ROWS][DPL];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0;
#pragma unroll
        for (int dd = 0; dd < DPL; dd++) o[r][dd] = 0;
    }
    const int q_last = (q0 + BR < T ? q0 + BR : T) - 1;
    for (int k0 = 0; k0 <= q_last; k0 += TILE) {
        __syncthreads(); /* the previous tile is consumed (and Qs is loaded) */
        for (int i = threadIdx.x; i < TILE * HD; i += blockDim.x) {
            int j = i / HD, d = i % HD, t = k0 + j;
            Ks[j * ld + d] = t < T ? base[t * row3 + C + d] : 0.0f;
            Vs[j * ld + d] = t < T ? base[t * row3 + 2 * C + d] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const int qr = warp * ROWS + r, t = q0 + qr;
            if (t >= T || k0 > t) continue; /* warp-uniform */
            const int j = k0 + lane;
            float s = -INFINITY;
            if (j <= t) {
                const float *q = Qs + qr * HD, *k = Ks + lane * ld;
                float dot = 0;
                for (int d = 0; d < HD; d++) dot += q[d] * k[d];
                s = dot * scale;
            }
            const float mn = fmaxf(m[r], warp_max(s)); /* finite: key k0 <= t is in the tile */
            const float p = j <= t ? expf(s - mn) : 0.0f;
            const float corr = expf(m[r] - mn);        /* 0 on the first tile (m = -inf) */
            l[r] = l[r] * corr + warp_sum(p);
#pragma unroll
            for (int dd = 0; dd < DPL; dd++) o[r][dd] *= corr;
            const int jn = t - k0 + 1 < TILE ? t - k0 + 1 : TILE;
            for (int jj = 0; jj < jn; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
                const float *v = Vs + jj * ld;
#pragma unroll
                for (int dd = 0; dd < DPL; dd++) {
                    int d = lane + 32 * dd;
                    if (d < HD) o[r][dd] += pj * v[d];
                }
            }
            m[r] = mn;
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int t = q0 + warp * ROWS + r;
        if (t >= T) continue;
        float *y = out + ((size_t)b * T + t) * C + (size_t)h * HD;
#pragma unroll
        for (int dd = 0; dd < DPL; dd++) {
            int d = lane + 32 * dd;
            if (d < HD) y[d] = o[r][dd] / l[r];
        }
        if (lane == 0) lse[((size_t)b * NH + h) * T + t] = m[r] + logf(l[r]);
    }
}

/* dq for 16 query rows; also writes D = sum_j P dP of each row for the dk/dv kernel */
template <int DPL>
__global__ void __launch_bounds__(WARPS * 32)
    attn_bwd_dq_kernel(float *dqkv, float *Dbuf, const float *dout, const float *qkv,
                       const float *lse, int T, int C, int NH, float scale) {
    extern __shared__ float sm[];
    const int HD = C / NH, ld = HD + 1;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *Qs = sm;               // (BR, HD)
    float *dOs = Qs + BR * HD;    // (BR, HD)
    float *Ks = dOs + BR * HD;    // (TILE, ld)
    float *Vs = Ks + TILE * ld;   // (TILE, ld)
    const size_t row3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * row3 + (size_t)h * HD;
    const float *dbase = dout + (size_t)b * T * C + (size_t)h * HD;
    const float *lrow = lse + ((size_t)b * NH + h) * T;

    for (int i = threadIdx.x; i < BR * HD; i += blockDim.x) {
        int r = i / HD, d = i % HD, t = q0 + r;
        Qs[i] = t < T ? base[t * row3 + d] : 0.0f;
        dOs[i] = t < T ? dbase[(size_t)t * C + d] : 0.0f;
    }
    float L[ROWS], D[ROWS], dq[ROWS][DPL];
    double Dp[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        int t = q0 + warp * ROWS + r;
        L[r] = t < T ? lrow[t] : 0.0f;
        D[r] = 0;
        Dp[r] = 0;
#pragma unroll
        for (int dd = 0; dd < DPL; dd++) dq[r][dd] = 0;
    }
    const int q_last = (q0 + BR < T ? q0 + BR : T) - 1;
    for (int pass = 0; pass < 2; pass++) {
        for (int k0 = 0; k0 <= q_last; k0 += TILE) {
            __syncthreads();
            for (int i = threadIdx.x; i < TILE * HD; i += blockDim.x) {
                int j = i / HD, d = i % HD, t = k0 + j;
                Ks[j * ld + d] = t < T ? base[t * row3 + C + d] : 0.0f;
                Vs[j * ld + d] = t < T ? base[t * row3 + 2 * C + d] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const int qr = warp * ROWS + r, t = q0 + qr;
                if (t >= T || k0 > t) continue; /* warp-uniform */
                const int j = k0 + lane;
                float p = 0, dp = 0;
                if (j <= t) {
                    const float *q = Qs + qr * HD, *go = dOs + qr * HD;
                    const float *k = Ks + lane * ld, *v = Vs + lane * ld;
                    float s = 0;
                    for (int d = 0; d < HD; d++) s += q[d] * k[d];
                    for (int d = 0; d < HD; d++) dp += go[d] * v[d];
                    p = expf(s * scale - L[r]);
                }
                if (pass == 0) {
                    Dp[r] += (double)p * dp;
                    continue;
                }
                const float ds = p * (dp - D[r]); /* 0 above the diagonal: p = 0 there */
                const int jn = t - k0 + 1 < TILE ? t - k0 + 1 : TILE;
                for (int jj = 0; jj < jn; jj++) {
                    const float g = __shfl_sync(0xffffffffu, ds, jj);
                    const float *k = Ks + jj * ld;
#pragma unroll
                    for (int dd = 0; dd < DPL; dd++) {
                        int d = lane + 32 * dd;
                        if (d < HD) dq[r][dd] += g * k[d];
                    }
                }
            }
        }
        if (pass == 0) {
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                D[r] = (float)warp_sum(Dp[r]); /* the CPU rounds its double dot to float too */
                int t = q0 + warp * ROWS + r;
                if (lane == 0 && t < T) Dbuf[((size_t)b * NH + h) * T + t] = D[r];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int t = q0 + warp * ROWS + r;
        if (t >= T) continue;
        float *g = dqkv + ((size_t)b * T + t) * row3 + (size_t)h * HD;
#pragma unroll
        for (int dd = 0; dd < DPL; dd++) {
            int d = lane + 32 * dd;
            if (d < HD) g[d] = dq[r][dd] * scale;
        }
    }
}

/* dk and dv for 16 key rows: lanes run over the query rows i >= j of each tile */
template <int DPL>
__global__ void __launch_bounds__(WARPS * 32)
    attn_bwd_dkdv_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                         const float *Dbuf, int T, int C, int NH, float scale) {
    extern __shared__ float sm[];
    const int HD = C / NH, ld = HD + 1;
    const int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * BR;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *Kr = sm;               // (BR, HD) this block's key rows
    float *Vr = Kr + BR * HD;     // (BR, HD)
    float *Qs = Vr + BR * HD;     // (TILE, ld)
    float *dOs = Qs + TILE * ld;  // (TILE, ld)
    float *Ls = dOs + TILE * ld;  // (TILE)
    float *Ds = Ls + TILE;        // (TILE)
    const size_t row3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * row3 + (size_t)h * HD;
    const float *dbase = dout + (size_t)b * T * C + (size_t)h * HD;
    const float *lrow = lse + ((size_t)b * NH + h) * T, *drow = Dbuf + ((size_t)b * NH + h) * T;

    for (int i = threadIdx.x; i < BR * HD; i += blockDim.x) {
        int r = i / HD, d = i % HD, t = k0 + r;
        Kr[i] = t < T ? base[t * row3 + C + d] : 0.0f;
        Vr[i] = t < T ? base[t * row3 + 2 * C + d] : 0.0f;
    }
    float dk[ROWS][DPL], dv[ROWS][DPL];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int dd = 0; dd < DPL; dd++) dk[r][dd] = dv[r][dd] = 0;

    for (int i0 = k0 / TILE * TILE; i0 < T; i0 += TILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < TILE * HD; i += blockDim.x) {
            int ii = i / HD, d = i % HD, t = i0 + ii;
            Qs[ii * ld + d] = t < T ? base[t * row3 + d] : 0.0f;
            dOs[ii * ld + d] = t < T ? dbase[(size_t)t * C + d] : 0.0f;
        }
        for (int ii = threadIdx.x; ii < TILE; ii += blockDim.x) {
            int t = i0 + ii;
            Ls[ii] = t < T ? lrow[t] : 0.0f;
            Ds[ii] = t < T ? drow[t] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const int kr = warp * ROWS + r, j = k0 + kr;
            if (j >= T || i0 + TILE - 1 < j) continue; /* warp-uniform */
            const int i = i0 + lane;
            float p = 0, ds = 0;
            if (i >= j && i < T) {
                const float *q = Qs + lane * ld, *go = dOs + lane * ld;
                const float *k = Kr + kr * HD, *v = Vr + kr * HD;
                float s = 0, dp = 0;
                for (int d = 0; d < HD; d++) s += q[d] * k[d];
                for (int d = 0; d < HD; d++) dp += go[d] * v[d];
                p = expf(s * scale - Ls[lane]);
                ds = p * (dp - Ds[lane]);
            }
            for (int ii = 0; ii < TILE; ii++) {
                const float pb = __shfl_sync(0xffffffffu, p, ii);
                const float gb = __shfl_sync(0xffffffffu, ds, ii);
                const float *go = dOs + ii * ld, *q = Qs + ii * ld;
#pragma unroll
                for (int dd = 0; dd < DPL; dd++) {
                    int d = lane + 32 * dd;
                    if (d < HD) {
                        dv[r][dd] += pb * go[d];
                        dk[r][dd] += gb * q[d];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int j = k0 + warp * ROWS + r;
        if (j >= T) continue;
        float *g = dqkv + ((size_t)b * T + j) * row3 + (size_t)h * HD;
#pragma unroll
        for (int dd = 0; dd < DPL; dd++) {
            int d = lane + 32 * dd;
            if (d < HD) {
                g[C + d] = dk[r][dd] * scale;
                g[2 * C + d] = dv[r][dd];
            }
        }
    }
}

/* Launches kernel<DPL> for the head dimension with `smem` bytes of dynamic shared memory,
 * raising the kernel's limit first where it exceeds the default 48 KiB. */
#define LAUNCH_BY_DPL(ctx, KERNEL, grid, smem, ...)                                            \
    do {                                                                                      \
        switch (dims_per_lane(HD)) {                                                          \
        case 1: launch_attn(ctx, KERNEL<1>, #KERNEL, grid, smem, __VA_ARGS__); break;         \
        case 2: launch_attn(ctx, KERNEL<2>, #KERNEL, grid, smem, __VA_ARGS__); break;         \
        case 4: launch_attn(ctx, KERNEL<4>, #KERNEL, grid, smem, __VA_ARGS__); break;         \
        default: launch_attn(ctx, KERNEL<8>, #KERNEL, grid, smem, __VA_ARGS__); break;        \
        }                                                                                     \
    } while (0)

template <typename... KArgs, typename... Args>
static bool launch_attn(struct cuda_ctx *ctx, void (*kernel)(KArgs...), const char *name,
                        dim3 grid, size_t smem, Args... args) {
    if (ctx->failed) return false;
    if (smem > 48 * 1024 &&
        !CUDA_OK(ctx, cudaFuncSetAttribute((const void *)kernel,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)))
        return false;
    kernel<<<grid, WARPS * 32, smem, ctx->stream>>>(args...);
    return LAUNCH_OK(ctx, name);
}

static bool attn_args_ok(struct cuda_ctx *ctx, int B, int C, int NH, bool fused) {
    if (NH <= 0 || C % NH || (C / NH) % 2) {
        CTX_FAIL(ctx, "attention: C = %d, NH = %d: need an even head dimension", C, NH);
        return false;
    }
    if (B > 65535 || NH > 65535) {
        CTX_FAIL(ctx, "attention: B = %d, NH = %d: grid limit 65535", B, NH);
        return false;
    }
    if (fused && C / NH > MAX_HD) {
        CTX_FAIL(ctx, "attention: head dimension %d > %d for the fused kernel (MOE_CUDA_ATTN=gemm)",
                 C / NH, MAX_HD);
        return false;
    }
    return true;
}

/* ---- GEMM path: the CPU's causal softmax and its backward on one sequence's scores ---- */

/* one block per (head, query row): softmax over j <= t in place, zeros above the diagonal */
__global__ void causal_softmax_kernel(float *P, bf16 *P16, float *lse, int T) {
    const size_t row = blockIdx.x;
    const int t = (int)(row % T);
    float *s = P + row * T;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = block_max(mx);
    double sum = 0;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {
        float e = (float)exp((double)(s[j] - mx));
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    const float inv = (float)(1.0 / sum);
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        float v = j <= t ? s[j] * inv : 0.0f;
        s[j] = v;
        if (P16) P16[row * T + j] = __float2bfloat16_rn(v);
    }
    if (lse && threadIdx.x == 0) lse[row] = (float)(mx + log(sum));
}

/* dS = P (dP - sum_j P dP), in place over dP, zeros above the diagonal */
__global__ void causal_softmax_backward_kernel(float *dS, bf16 *dS16, const float *P, int T) {
    const size_t row = blockIdx.x;
    const int t = (int)(row % T);
    const float *p = P + row * T;
    float *d = dS + row * T;
    double dot = 0;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) dot += (double)p[j] * d[j];
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        float v = j <= t ? p[j] * (d[j] - (float)dot) : 0.0f;
        d[j] = v;
        if (dS16) dS16[row * T + j] = __float2bfloat16_rn(v);
    }
}

/* S = scale q k^T for every head of sequence b, then the softmax: P (fp32) in WS_ATT_P, and
 * in bf16 mode its bf16 copy in WS_OP1. Returns the GEMM operand for P (or NULL). */
static const void *gemm_path_probs(struct cuda_ctx *ctx, float **P_out, float *lse_b,
                                   const void *q, const void *k, int T, int C, int NH) {
    enum cuda_precision p = ctx->prec;
    int HD = C / NH;
    size_t TT = (size_t)T * T, n = (size_t)NH * TT;
    float *P = (float *)ws_get(ctx, WS_ATT_P, n * sizeof(float));
    bf16 *P16 = bf16_out(ctx, p, n, WS_OP1);
    if (ctx->failed) return NULL;
    float scale = (float)(1.0 / sqrt((double)HD));
    if (!gemm(ctx, p, false, true, T, T, HD, scale, q, 3 * C, HD, k, 3 * C, HD, 0.0f, P, T,
              (long long)TT, NH))
        return NULL;
    causal_softmax_kernel<<<(unsigned)(NH * T), row_threads(T) < THREADS ? row_threads(T) : THREADS,
                            0, ctx->stream>>>(P, P16, lse_b, T);
    if (!LAUNCH_OK(ctx, "causal_softmax_kernel")) return NULL;
    *P_out = P;
    return p == CUDA_BF16 ? (const void *)P16 : (const void *)P;
}

static void attention_forward_gemm(float *out, float *att, const float *qkv, int B, int T, int C,
                                   int NH, struct cuda_ctx *ctx) {
    enum cuda_precision p = ctx->prec;
    int HD = C / NH;
    size_t TT = (size_t)T * T;
    for (int b = 0; b < B; b++) {
        const void *x = operand(ctx, p, qkv + (size_t)b * T * 3 * C, (size_t)T * 3 * C, WS_OP0);
        if (!x) return;
        const void *q = x, *k = elem_offset(p, x, C), *v = elem_offset(p, x, 2 * (size_t)C);
        float *P;
        const void *Pop = gemm_path_probs(ctx, &P, att + (size_t)b * NH * T, q, k, T, C, NH);
        if (!Pop) return;
        if (!gemm(ctx, p, false, false, T, HD, T, 1.0f, Pop, T, (long long)TT, v, 3 * C, HD, 0.0f,
                  out + (size_t)b * T * C, C, HD, NH))
            return;
    }
}

static void attention_backward_gemm(float *dqkv, const float *dout, const float *qkv, int B,
                                    int T, int C, int NH, struct cuda_ctx *ctx) {
    enum cuda_precision p = ctx->prec;
    int HD = C / NH;
    size_t TT = (size_t)T * T, n = (size_t)NH * TT;
    float scale = (float)(1.0 / sqrt((double)HD));
    for (int b = 0; b < B; b++) {
        const void *x = operand(ctx, p, qkv + (size_t)b * T * 3 * C, (size_t)T * 3 * C, WS_OP0);
        const void *dO = operand(ctx, p, dout + (size_t)b * T * C, (size_t)T * C, WS_OP2);
        float *dS = (float *)ws_get(ctx, WS_ATT_DS, n * sizeof(float));
        bf16 *dS16 = bf16_out(ctx, p, n, WS_OP3);
        if (ctx->failed) return;
        const void *q = x, *k = elem_offset(p, x, C), *v = elem_offset(p, x, 2 * (size_t)C);
        float *P;
        /* recompute P exactly as the forward did (same kernels, same inputs) */
        const void *Pop = gemm_path_probs(ctx, &P, NULL, q, k, T, C, NH);
        if (!Pop) return;
        float *dq = dqkv + (size_t)b * T * 3 * C, *dk = dq + C, *dv = dq + 2 * C;
        if (!gemm(ctx, p, true, false, T, HD, T, 1.0f, Pop, T, (long long)TT, dO, C, HD, 0.0f, dv,
                  3 * C, HD, NH) ||
            !gemm(ctx, p, false, true, T, T, HD, 1.0f, dO, C, HD, v, 3 * C, HD, 0.0f, dS, T,
                  (long long)TT, NH))
            return;
        causal_softmax_backward_kernel<<<(unsigned)(NH * T),
                                         row_threads(T) < THREADS ? row_threads(T) : THREADS, 0,
                                         ctx->stream>>>(dS, dS16, P, T);
        if (!LAUNCH_OK(ctx, "causal_softmax_backward_kernel")) return;
        const void *dSop = p == CUDA_BF16 ? (const void *)dS16 : (const void *)dS;
        if (!gemm(ctx, p, false, false, T, HD, T, scale, dSop, T, (long long)TT, k, 3 * C, HD, 0.0f,
                  dq, 3 * C, HD, NH) ||
            !gemm(ctx, p, true, false, T, HD, T, scale, dSop, T, (long long)TT, q, 3 * C, HD, 0.0f,
                  dk, 3 * C, HD, NH))
            return;
    }
}

/* ---- entry points ---- */

void attention_forward_cuda(float *out, float *att, const float *qkv, int B, int T, int C,
                            int NH, struct cuda_ctx *ctx) {
    bool fused = ctx->attn == CUDA_ATTN_FUSED;
    if (ctx->failed || B <= 0 || T <= 0 || !attn_args_ok(ctx, B, C, NH, fused)) return;
    if (!fused) {
        attention_forward_gemm(out, att, qkv, B, T, C, NH, ctx);
        return;
    }
    int HD = C / NH;
    float scale = (float)(1.0 / sqrt((double)HD));
    dim3 grid((T + BR - 1) / BR, NH, B);
    size_t smem = sizeof(float) * ((size_t)BR * HD + 2 * (size_t)TILE * (HD + 1));
    LAUNCH_BY_DPL(ctx, attn_fwd_kernel, grid, smem, out, att, qkv, T, C, NH, scale);
}

void attention_backward_cuda(float *dqkv, float *scratch, const float *dout, const float *qkv,
                             const float *att, int B, int T, int C, int NH,
                             struct cuda_ctx *ctx) {
    bool fused = ctx->attn == CUDA_ATTN_FUSED;
    if (ctx->failed || B <= 0 || T <= 0 || !attn_args_ok(ctx, B, C, NH, fused)) return;
    if (!fused) {
        attention_backward_gemm(dqkv, dout, qkv, B, T, C, NH, ctx);
        return;
    }
    int HD = C / NH;
    float scale = (float)(1.0 / sqrt((double)HD));
    dim3 grid((T + BR - 1) / BR, NH, B);
    size_t smem_dq = sizeof(float) * (2 * (size_t)BR * HD + 2 * (size_t)TILE * (HD + 1));
    LAUNCH_BY_DPL(ctx, attn_bwd_dq_kernel, grid, smem_dq, dqkv, scratch, dout, qkv, att, T, C, NH,
                  scale);
    size_t smem_kv = sizeof(float) * (2 * (size_t)BR * HD + 2 * (size_t)TILE * (HD + 1) + 2 * TILE);
    LAUNCH_BY_DPL(ctx, attn_bwd_dkdv_kernel, grid, smem_kv, dqkv, dout, qkv, att,
                  (const float *)scratch, T, C, NH, scale);
}
