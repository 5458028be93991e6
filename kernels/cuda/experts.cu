/*
 * experts.cu — the phases of the MoE layer between the router and the router's backward: the
 * dispatch's gather into expert-major rows, one expert's SwiGLU over its rows, the weighted
 * combine, and their backwards (kernels/layers.h's moe_gather, expert_ffn_forward,
 * moe_combine, moe_combine_backward, expert_ffn_backward).
 *
 * Owns: these phases on the GPU, each usable alone, so the experts of a layer can run where a
 * caller's hooks put them (model_cuda.h's struct model_exec_cuda) and the whole-layer
 * functions of moe.cu are their composition, as on the CPU.
 * Never: routes (moe.cu decides the rows), synchronises with the host, or uses floating-point
 * atomics: every output element has one writer, and the sums the CPU keeps in k order are
 * kept in k order.
 */
#include "common.cuh"

/* ---- forward ---- */

/* dispatch: xe[r] = inp[row_token[r]] */
__global__ void gather_rows_kernel(float *xe, const float *inp, const int *row_token, int C,
                                   size_t total) {
    GRID_STRIDE(i, total) {
        size_t r = i / C;
        xe[i] = inp[(size_t)row_token[r] * C + i % C];
    }
}

void moe_gather_cuda(float *xe, const float *inp, const int *row_token, int rows, int C,
                     struct cuda_ctx *ctx) {
    if (ctx->failed || rows <= 0 || C <= 0) return;
    size_t total = (size_t)rows * C;
    gather_rows_kernel<<<grid_for(total, THREADS), THREADS, 0, ctx->stream>>>(xe, inp, row_token,
                                                                              C, total);
    LAUNCH_OK(ctx, "gather_rows_kernel");
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1 / (1 + expf(-x)); }

/* ha = silu(h1) h2, the CPU's expression; in bf16 mode also ha16, the down product's operand */
__global__ void swiglu_forward_kernel(float *ha, bf16 *ha16, const float *h1, const float *h2,
                                      size_t total) {
    GRID_STRIDE(i, total) {
        float v = h1[i] * sigmoidf_(h1[i]) * h2[i];
        ha[i] = v;
        if (ha16) ha16[i] = __float2bfloat16_rn(v);
    }
}

void expert_ffn_forward_cuda(float *ye, float *h1, float *h2, float *ha, const float *xe,
                             const float *w_gate, const float *w_up, const float *w_down, int m,
                             int C, int F, struct cuda_ctx *ctx) {
    if (ctx->failed || m <= 0) return;
    const enum cuda_precision p = ctx->prec;
    const size_t FC = (size_t)F * C, mF = (size_t)m * F;
    /* bf16 operands: a slot per array, all live until the last product is queued */
    const void *x = operand(ctx, p, xe, (size_t)m * C, WS_OP0);
    const void *wg = operand(ctx, p, w_gate, FC, WS_OP1);
    const void *wu = operand(ctx, p, w_up, FC, WS_OP2);
    const void *wd = operand(ctx, p, w_down, FC, WS_OP3);
    bf16 *ha16 = bf16_out(ctx, p, mF, WS_OP4);
    if (ctx->failed) return;
    if (!gemm(ctx, p, false, true, m, F, C, 1.0f, x, C, 0, wg, C, 0, 0.0f, h1, F, 0, 1) ||
        !gemm(ctx, p, false, true, m, F, C, 1.0f, x, C, 0, wu, C, 0, 0.0f, h2, F, 0, 1))
        return;
    swiglu_forward_kernel<<<grid_for(mF, THREADS), THREADS, 0, ctx->stream>>>(ha, ha16, h1, h2,
                                                                              mF);
    if (!LAUNCH_OK(ctx, "swiglu_forward_kernel")) return;
    const void *hx = p == CUDA_BF16 ? (const void *)ha16 : (const void *)ha;
    gemm(ctx, p, false, true, m, C, F, 1.0f, hx, F, 0, wd, F, 0, 0.0f, ye, C, 0, 1);
}

/* combine: out[n] = sum over kept k, in k order, of gate * ye[row] */
__global__ void combine_kernel(float *out, const float *ye, const int *row_of, const float *gates,
                               int C, int K, size_t total) {
    GRID_STRIDE(i, total) {
        size_t n = i / C;
        int c = (int)(i % C);
        float y = 0;
        for (int k = 0; k < K; k++) {
            int row = row_of[n * K + k];
            if (row < 0) continue; /* dropped: the residual carries the token */
            y += gates[n * K + k] * ye[(size_t)row * C + c];
        }
        out[i] = y;
    }
}

void moe_combine_cuda(float *out, const float *ye, const int *row_of, const float *gates, int N,
                      int K, int C, struct cuda_ctx *ctx) {
    if (ctx->failed || N <= 0 || C <= 0) return;
    size_t total = (size_t)N * C;
    combine_kernel<<<grid_for(total, THREADS), THREADS, 0, ctx->stream>>>(out, ye, row_of, gates,
                                                                         C, K, total);
    LAUNCH_OK(ctx, "combine_kernel");
}

/* ---- backward ---- */

/* one block per token: dye[row] = g dy, dgates = <dy, ye[row]> (double, fixed tree) */
__global__ void combine_backward_kernel(float *dye, float *dgates, const float *dout,
                                        const float *ye, const int *row_of, const float *gates,
                                        int C, int K) {
    const size_t n = blockIdx.x;
    const float *dy = dout + n * C;
    for (int k = 0; k < K; k++) {
        const size_t nk = n * K + k;
        const int row = row_of[nk]; /* block-uniform */
        if (row < 0) {
            if (threadIdx.x == 0) dgates[nk] = 0;
            continue;
        }
        const float g = gates[nk];
        const float *y = ye + (size_t)row * C;
        float *d = dye + (size_t)row * C;
        double dot = 0;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            d[i] = g * dy[i];
            dot += (double)dy[i] * y[i];
        }
        dot = block_sum(dot);
        if (threadIdx.x == 0) dgates[nk] = (float)dot;
    }
}

void moe_combine_backward_cuda(float *dye, float *dgates, const float *dout, const float *ye,
                               const int *row_of, const float *gates, int N, int K, int C,
                               struct cuda_ctx *ctx) {
    if (ctx->failed || N <= 0) return;
    int threads = row_threads(C) < THREADS ? row_threads(C) : THREADS;
    combine_backward_kernel<<<N, threads, 0, ctx->stream>>>(dye, dgates, dout, ye, row_of, gates,
                                                           C, K);
    LAUNCH_OK(ctx, "combine_backward_kernel");
}

/* SwiGLU backward, in place as the CPU: g1 holds dha on entry, dh1 on exit; g2 gets dh2; in
 * bf16 mode also their bf16 copies, the next products' operands */
__global__ void swiglu_backward_kernel(float *g1, float *g2, bf16 *g1_16, bf16 *g2_16,
                                       const float *h1, const float *h2, size_t total) {
    GRID_STRIDE(i, total) {
        float s = sigmoidf_(h1[i]);
        float dha = g1[i];
        float d2 = dha * h1[i] * s;                       /* d h2 = dha silu(h1) */
        float d1 = dha * h2[i] * s * (1 + h1[i] * (1 - s)); /* silu'(x) = s (1 + x (1 - s)) */
        g2[i] = d2;
        g1[i] = d1;
        if (g1_16) {
            g1_16[i] = __float2bfloat16_rn(d1);
            g2_16[i] = __float2bfloat16_rn(d2);
        }
    }
}

void expert_ffn_backward_cuda(float *dxe, float *dw_gate, float *dw_up, float *dw_down,
                              float *dh1, float *dh2, const float *dye, const float *xe,
                              const float *h1, const float *h2, const float *ha,
                              const float *w_gate, const float *w_up, const float *w_down, int m,
                              int C, int F, int accumulate, struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    const size_t FC = (size_t)F * C;
    if (m <= 0) { /* an expert that received no token has zero gradients */
        if (accumulate) return;
        float *dw[3] = {dw_gate, dw_up, dw_down};
        for (int i = 0; i < 3; i++)
            if (!CUDA_OK(ctx, cudaMemsetAsync(dw[i], 0, sizeof(float) * FC, ctx->stream))) return;
        return;
    }
    const enum cuda_precision p = ctx->prec;
    const size_t mC = (size_t)m * C, mF = (size_t)m * F;
    const float beta = accumulate ? 1.0f : 0.0f;
    /* bf16 operands: a slot per array, all live until the last product is queued */
    const void *dy = operand(ctx, p, dye, mC, WS_OP0);
    const void *hx = operand(ctx, p, ha, mF, WS_OP1);
    const void *wd = operand(ctx, p, w_down, FC, WS_OP2);
    bf16 *g1_16 = bf16_out(ctx, p, mF, WS_OP3);
    bf16 *g2_16 = bf16_out(ctx, p, mF, WS_OP4);
    const void *x = operand(ctx, p, xe, mC, WS_OP5);
    const void *wg = operand(ctx, p, w_gate, FC, WS_OP6);
    const void *wu = operand(ctx, p, w_up, FC, WS_OP7);
    if (ctx->failed) return;

    if (!gemm(ctx, p, true, false, C, F, m, 1.0f, dy, C, 0, hx, F, 0, beta, dw_down, F, 0, 1) ||
        !gemm(ctx, p, false, false, m, F, C, 1.0f, dy, C, 0, wd, F, 0, 0.0f, dh1, F, 0,
              1)) /* dha, into dh1 */
        return;
    swiglu_backward_kernel<<<grid_for(mF, THREADS), THREADS, 0, ctx->stream>>>(dh1, dh2, g1_16,
                                                                               g2_16, h1, h2, mF);
    if (!LAUNCH_OK(ctx, "swiglu_backward_kernel")) return;
    const void *g1 = p == CUDA_BF16 ? (const void *)g1_16 : (const void *)dh1;
    const void *g2 = p == CUDA_BF16 ? (const void *)g2_16 : (const void *)dh2;
    /* after a failure each gemm returns at once */
    gemm(ctx, p, true, false, F, C, m, 1.0f, g1, F, 0, x, C, 0, beta, dw_gate, C, 0, 1);
    gemm(ctx, p, true, false, F, C, m, 1.0f, g2, F, 0, x, C, 0, beta, dw_up, C, 0, 1);
    gemm(ctx, p, false, false, m, C, F, 1.0f, g1, F, 0, wg, C, 0, 0.0f, dxe, C, 0, 1);
    gemm(ctx, p, false, false, m, C, F, 1.0f, g2, F, 0, wu, C, 0, 1.0f, dxe, C, 0, 1);
}
