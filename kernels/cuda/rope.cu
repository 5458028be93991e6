/* rope.cu — rotary embedding on the q and k parts of qkv, and its inverse for the gradient. */
#include "common.cuh"

/* one thread per rotated pair: (b, t, part q|k, head, i) */
__global__ void rope_kernel(float *qkv, const float *freqs, int T, int C, int NH, float sign,
                            size_t pairs) {
    int HD = C / NH, half = HD / 2;
    GRID_STRIDE(idx, pairs) {
        size_t rest = idx;
        int i = (int)(rest % half);
        rest /= half;
        int h = (int)(rest % NH);
        rest /= NH;
        int part = (int)(rest % 2);
        size_t bt = rest / 2;
        int t = (int)(bt % T);
        float *x = qkv + bt * 3 * C + (size_t)part * C + (size_t)h * HD;
        const float *f = freqs + (size_t)t * HD;
        float cs = f[2 * i], sn = sign * f[2 * i + 1];
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * cs - x1 * sn;
        x[2 * i + 1] = x0 * sn + x1 * cs;
    }
}

static void rope_rotate_cuda(float *qkv, const float *freqs, int B, int T, int C, int NH,
                             float sign, struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    size_t pairs = (size_t)B * T * 2 * NH * (C / NH / 2);
    if (pairs == 0) return;
    rope_kernel<<<grid_for(pairs, THREADS), THREADS, 0, ctx->stream>>>(qkv, freqs, T, C, NH, sign,
                                                                       pairs);
    LAUNCH_OK(ctx, "rope_kernel");
}

void rope_forward_cuda(float *qkv, const float *freqs, int B, int T, int C, int NH,
                       struct cuda_ctx *ctx) {
    rope_rotate_cuda(qkv, freqs, B, T, C, NH, 1.0f, ctx);
}

void rope_backward_cuda(float *dqkv, const float *freqs, int B, int T, int C, int NH,
                        struct cuda_ctx *ctx) {
    rope_rotate_cuda(dqkv, freqs, B, T, C, NH, -1.0f, ctx); /* the inverse rotation */
}
