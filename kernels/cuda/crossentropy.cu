/* crossentropy.cu — softmax cross-entropy over the logits, one block per token. */
#include "common.cuh"

__global__ void crossentropy_forward_kernel(float *probs, double *row_loss, const float *logits,
                                            const int *targets, int V) {
    size_t n = blockIdx.x;
    const float *z = logits + n * V;
    float *p = probs + n * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, z[i]);
    mx = block_max(mx);
    double sum = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float e = (float)exp((double)(z[i] - mx));
        p[i] = e;
        sum += e;
    }
    sum = block_sum(sum);
    float inv = (float)(1.0 / sum);
    for (int i = threadIdx.x; i < V; i += blockDim.x) p[i] *= inv;
    /* the loss from the logits directly, as the CPU: lse - z_target, no log(0) */
    if (targets && threadIdx.x == 0) row_loss[n] = (double)mx + log(sum) - (double)z[targets[n]];
}

/* one block: a fixed tree over the per-token losses */
__global__ void sum_doubles_kernel(double *out, const double *x, size_t n) {
    double s = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

double crossentropy_forward_cuda(float *probs, const float *logits, const int *targets, int N,
                                 int V, struct cuda_ctx *ctx) {
    if (ctx->failed || N <= 0) return 0;
    double *row_loss = (double *)ws_get(ctx, WS_PARTIAL, sizeof(double) * ((size_t)N + 1));
    if (!row_loss) return 0;
    int threads = row_threads(V) < THREADS ? row_threads(V) : THREADS;
    crossentropy_forward_kernel<<<N, threads, 0, ctx->stream>>>(probs, row_loss, logits, targets,
                                                                 V);
    if (!LAUNCH_OK(ctx, "crossentropy_forward_kernel") || !targets) return 0;
    sum_doubles_kernel<<<1, 1024, 0, ctx->stream>>>(row_loss + N, row_loss, N);
    if (!LAUNCH_OK(ctx, "sum_doubles_kernel")) return 0;
    double *h = (double *)host_stage(ctx, sizeof(double));
    if (!h || !CUDA_OK(ctx, cudaMemcpyAsync(h, row_loss + N, sizeof(double),
                                            cudaMemcpyDeviceToHost, ctx->stream)) ||
        !CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream)))
        return 0;
    return *h;
}

__global__ void crossentropy_backward_kernel(float *dlogits, const float *probs,
                                             const int *targets, int V, double scale,
                                             size_t total) {
    GRID_STRIDE(i, total) {
        size_t n = i / V;
        float d = (float)(probs[i] * scale);
        if ((int)(i % V) == targets[n]) d -= (float)scale;
        dlogits[i] = d;
    }
}

void crossentropy_backward_cuda(float *dlogits, const float *probs, const int *targets, int N,
                                int V, double scale, struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    size_t total = (size_t)N * V;
    if (total == 0) return;
    crossentropy_backward_kernel<<<grid_for(total, THREADS), THREADS, 0, ctx->stream>>>(
        dlogits, probs, targets, V, scale, total);
    LAUNCH_OK(ctx, "crossentropy_backward_kernel");
}
