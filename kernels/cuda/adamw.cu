/* adamw.cu — the optimizer step and the gradient norm's sum of squares. */
#include "common.cuh"

#include <math.h>

/* The outputs may be the inputs: each element is read before it is written, by one thread. */
__global__ void adamw_kernel(float *params_out, float *m_out, float *v_out, const float *params,
                             const float *grads, const float *m, const float *v, size_t n,
                             size_t n_decay, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float grad_scale, float inv_bc1, float inv_bc2,
                             bf16 *shadow) {
    GRID_STRIDE(i, n) {
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1 - beta1) * g;
        float vi = beta2 * v[i] + (1 - beta2) * g * g;
        float p = params[i];
        m_out[i] = mi;
        v_out[i] = vi;
        float wd = i < n_decay ? weight_decay : 0.0f;
        float q = p - lr * ((mi * inv_bc1) / (sqrtf(vi * inv_bc2) + eps) + wd * p);
        params_out[i] = q;
        if (shadow) shadow[i] = __float2bfloat16_rn(q);
    }
}

void adamw_update_into_cuda(float *params_out, float *m_out, float *v_out, const float *params,
                            const float *grads, const float *m, const float *v, size_t n,
                            size_t n_decay, float lr, float beta1, float beta2, float eps,
                            float weight_decay, float grad_scale, long t, struct cuda_ctx *ctx) {
    if (ctx->failed || n == 0) return;
    /* the bias corrections exactly as the CPU computes them (double, then rounded) */
    float inv_bc1 = (float)(1.0 / (1.0 - pow(beta1, (double)t)));
    float inv_bc2 = (float)(1.0 / (1.0 - pow(beta2, (double)t)));
    /* the bf16 copy follows the registered arena: only an update written into it changes it */
    bf16 *shadow = NULL;
    if (ctx->arena_bf16) {
        uintptr_t p = (uintptr_t)params_out, lo = (uintptr_t)ctx->arena;
        uintptr_t hi = lo + ctx->arena_n * sizeof(float);
        if (p >= lo && p < hi && n <= (hi - p) / sizeof(float))
            shadow = ctx->arena_bf16 + (p - lo) / sizeof(float);
    }
    adamw_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(
        params_out, m_out, v_out, params, grads, m, v, n, n_decay, lr, beta1, beta2, eps,
        weight_decay, grad_scale, inv_bc1, inv_bc2, shadow);
    LAUNCH_OK(ctx, "adamw_kernel");
}

void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n,
                       size_t n_decay, float lr, float beta1, float beta2, float eps,
                       float weight_decay, float grad_scale, long t, struct cuda_ctx *ctx) {
    adamw_update_into_cuda(params, m, v, params, grads, m, v, n, n_decay, lr, beta1, beta2, eps,
                           weight_decay, grad_scale, t, ctx);
}

enum { SQ_CHUNK = 1 << 16 }; /* the CPU's chunk */

__global__ void chunk_squares_kernel(double *part, const float *x, size_t n) {
    size_t c0 = (size_t)blockIdx.x * SQ_CHUNK;
    size_t c1 = c0 + SQ_CHUNK < n ? c0 + SQ_CHUNK : n;
    double s = 0;
    for (size_t i = c0 + threadIdx.x; i < c1; i += blockDim.x) s += (double)x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* the chunk sums in chunk order, one thread: the CPU's order across chunks */
__global__ void sum_in_order_kernel(double *out, const double *part, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += part[i];
    *out = s;
}

double sum_squares_cuda(const float *x, size_t n, struct cuda_ctx *ctx) {
    if (ctx->failed) return NAN;
    if (n == 0) return 0;
    size_t chunks = (n + SQ_CHUNK - 1) / SQ_CHUNK;
    if (chunks > 0x7fffffffu) {
        CTX_FAIL(ctx, "sum_squares_cuda: %zu elements", n);
        return NAN;
    }
    double *part = (double *)ws_get(ctx, WS_PARTIAL, sizeof(double) * (chunks + 1));
    if (!part) return NAN;
    chunk_squares_kernel<<<(unsigned)chunks, THREADS, 0, ctx->stream>>>(part, x, n);
    if (!LAUNCH_OK(ctx, "chunk_squares_kernel")) return NAN;
    sum_in_order_kernel<<<1, 1, 0, ctx->stream>>>(part + chunks, part, chunks);
    if (!LAUNCH_OK(ctx, "sum_in_order_kernel")) return NAN;
    double *h = (double *)host_stage(ctx, sizeof(double));
    if (!h || !CUDA_OK(ctx, cudaMemcpyAsync(h, part + chunks, sizeof(double),
                                            cudaMemcpyDeviceToHost, ctx->stream)) ||
        !CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream)))
        return NAN;
    return *h;
}
