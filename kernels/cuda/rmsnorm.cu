/* rmsnorm.cu — RMSNorm forward and backward, one block per token row. */
#include "common.cuh"

/* Tokens per partial sum of the weight gradient: the sum over tokens runs in these fixed
 * chunks (each in token order), and the chunk sums are added in chunk order. */
enum { NORM_TOKEN_CHUNK = 256 };

__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp,
                                       const float *weight, int C, float eps) {
    size_t n = blockIdx.x;
    const float *x = inp + n * C;
    float *y = out + n * C;
    double ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += (double)x[c] * x[c];
    ss = block_sum(ss);
    float r = (float)(1.0 / sqrt(ss / C + eps));
    for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = x[c] * r * weight[c];
    if (threadIdx.x == 0) rstd[n] = r;
}

void rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight, int N,
                          int C, float eps, struct cuda_ctx *ctx) {
    if (ctx->failed || N <= 0) return;
    int threads = row_threads(C) < THREADS ? row_threads(C) : THREADS;
    rmsnorm_forward_kernel<<<N, threads, 0, ctx->stream>>>(out, rstd, inp, weight, C, eps);
    LAUNCH_OK(ctx, "rmsnorm_forward_kernel");
}

/* dx_c += r w_c dy_c - x_c r^3/C sum_j w_j dy_j x_j */
__global__ void rmsnorm_backward_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                             const float *weight, const float *rstd, int C) {
    size_t n = blockIdx.x;
    const float *x = inp + n * C, *dy = dout + n * C;
    float *dx = dinp + n * C;
    float r = rstd[n];
    double dot = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += (double)weight[c] * dy[c] * x[c];
    dot = block_sum(dot);
    float k = (float)(dot * r * r * r / C);
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[c] += r * weight[c] * dy[c] - x[c] * k;
}

/* partial[chunk][c] = sum over the chunk's tokens, in token order, of dy x rstd */
__global__ void rmsnorm_dweight_partial_kernel(double *partial, const float *dout,
                                               const float *inp, const float *rstd, int N,
                                               int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = blockIdx.y * NORM_TOKEN_CHUNK;
    int n1 = n0 + NORM_TOKEN_CHUNK < N ? n0 + NORM_TOKEN_CHUNK : N;
    double s = 0;
    for (int n = n0; n < n1; n++) s += dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
    partial[(size_t)blockIdx.y * C + c] = s;
}

__global__ void rmsnorm_dweight_final_kernel(float *dweight, const double *partial, int chunks,
                                             int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0;
    for (int k = 0; k < chunks; k++) s += partial[(size_t)k * C + c];
    dweight[c] += (float)s;
}

void rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                           const float *weight, const float *rstd, int N, int C,
                           struct cuda_ctx *ctx) {
    if (ctx->failed || N <= 0) return;
    int threads = row_threads(C) < THREADS ? row_threads(C) : THREADS;
    rmsnorm_backward_dinp_kernel<<<N, threads, 0, ctx->stream>>>(dinp, dout, inp, weight, rstd, C);
    if (!LAUNCH_OK(ctx, "rmsnorm_backward_dinp_kernel")) return;
    int chunks = (N + NORM_TOKEN_CHUNK - 1) / NORM_TOKEN_CHUNK;
    if (chunks > 65535) {
        CTX_FAIL(ctx, "rmsnorm_backward_cuda: %d tokens exceed %d", N, 65535 * NORM_TOKEN_CHUNK);
        return;
    }
    double *partial = (double *)ws_get(ctx, WS_PARTIAL, sizeof(double) * (size_t)chunks * C);
    if (!partial) return;
    dim3 grid((C + THREADS - 1) / THREADS, chunks);
    rmsnorm_dweight_partial_kernel<<<grid, THREADS, 0, ctx->stream>>>(partial, dout, inp, rstd, N,
                                                                      C);
    if (!LAUNCH_OK(ctx, "rmsnorm_dweight_partial_kernel")) return;
    rmsnorm_dweight_final_kernel<<<(C + THREADS - 1) / THREADS, THREADS, 0, ctx->stream>>>(
        dweight, partial, chunks, C);
    LAUNCH_OK(ctx, "rmsnorm_dweight_final_kernel");
}
