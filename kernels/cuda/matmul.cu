/* matmul.cu — linear layers: out = inp @ weight^T and its two gradients, through cuBLAS. */
#include "common.cuh"

void matmul_forward_cuda(float *out, const float *inp, const float *weight, int N, int IN,
                         int OUT, struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    enum cuda_precision p = ctx->prec;
    const void *x = operand(ctx, p, inp, (size_t)N * IN, WS_OP0);
    const void *w = operand(ctx, p, weight, (size_t)OUT * IN, WS_OP1);
    if (ctx->failed) return;
    gemm(ctx, p, false, true, N, OUT, IN, 1.0f, x, IN, 0, w, IN, 0, 0.0f, out, OUT, 0, 1);
}

void matmul_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                          const float *weight, int N, int IN, int OUT, int accumulate,
                          struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    enum cuda_precision p = ctx->prec;
    const void *d = operand(ctx, p, dout, (size_t)N * OUT, WS_OP0); /* rounded once, used twice */
    if (dinp) {
        const void *w = operand(ctx, p, weight, (size_t)OUT * IN, WS_OP1);
        if (ctx->failed) return;
        gemm(ctx, p, false, false, N, IN, OUT, 1.0f, d, OUT, 0, w, IN, 0, 0.0f, dinp, IN, 0, 1);
    }
    const void *x = operand(ctx, p, inp, (size_t)N * IN, WS_OP2);
    if (ctx->failed) return;
    gemm(ctx, p, true, false, OUT, IN, N, 1.0f, d, OUT, 0, x, IN, 0, accumulate ? 1.0f : 0.0f,
         dweight, IN, 0, 1);
}
