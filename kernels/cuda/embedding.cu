/* embedding.cu — token embedding lookup and its gradient. */
#include "common.cuh"

#include <cub/device/device_radix_sort.cuh>

__global__ void encoder_forward_kernel(float *out, const int *tokens, const float *wte, int C,
                                       size_t total) {
    GRID_STRIDE(i, total) {
        size_t n = i / C;
        out[i] = wte[(size_t)tokens[n] * C + i % C];
    }
}

void encoder_forward_cuda(float *out, const int *tokens, const float *wte, int N, int C,
                          struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    size_t total = (size_t)N * C;
    if (total == 0) return;
    encoder_forward_kernel<<<grid_for(total, THREADS), THREADS, 0, ctx->stream>>>(out, tokens, wte,
                                                                                  C, total);
    LAUNCH_OK(ctx, "encoder_forward_kernel");
}

__global__ void iota_kernel(int *x, int n) {
    GRID_STRIDE(i, n) x[i] = (int)i;
}

/* Block (i, y) starts at sorted position i if a run of equal tokens begins there, and adds
 * the run's rows, which the stable sort left in token order, to its columns. */
__global__ void encoder_backward_kernel(float *dwte, const float *dout, const unsigned *keys,
                                        const int *idx, int N, int C) {
    int i = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    unsigned v = keys[i];
    if (i > 0 && keys[i - 1] == v) return;
    float acc = dwte[(size_t)v * C + c];
    for (int j = i; j < N && keys[j] == v; j++) acc += dout[(size_t)idx[j] * C + c];
    dwte[(size_t)v * C + c] = acc;
}

static size_t align256(size_t x) { return (x + 255) / 256 * 256; }

/* The CPU adds dout rows into dwte in token order. Sorting the token ids (stable) groups the
 * rows of each vocabulary entry while keeping token order inside the group, so one block per
 * group and column slice adds them in exactly the CPU's order: no atomics, same bits. */
void encoder_backward_cuda(float *dwte, const float *dout, const int *tokens, int N, int C,
                           struct cuda_ctx *ctx) {
    if (ctx->failed || N <= 0 || C <= 0) return;
    if ((C + THREADS - 1) / THREADS > 65535) {
        CTX_FAIL(ctx, "encoder_backward_cuda: C = %d too large", C);
        return;
    }
    size_t temp = 0;
    if (!CUDA_OK(ctx, cub::DeviceRadixSort::SortPairs(
                          nullptr, temp, (const unsigned *)nullptr, (unsigned *)nullptr,
                          (const int *)nullptr, (int *)nullptr, N, 0, 32, ctx->stream)))
        return;
    size_t arr = align256(sizeof(int) * (size_t)N);
    char *w = (char *)ws_get(ctx, WS_SORT, 3 * arr + temp);
    if (!w) return;
    unsigned *keys_out = (unsigned *)w;
    int *vals_in = (int *)(w + arr), *vals_out = (int *)(w + 2 * arr);
    void *tmp = w + 3 * arr;
    iota_kernel<<<grid_for(N, THREADS), THREADS, 0, ctx->stream>>>(vals_in, N);
    if (!LAUNCH_OK(ctx, "iota_kernel")) return;
    /* token ids are non-negative: as unsigned keys they sort the same; all 32 bits, since the
     * vocabulary size is not an argument here */
    if (!CUDA_OK(ctx, cub::DeviceRadixSort::SortPairs(tmp, temp, (const unsigned *)tokens,
                                                      keys_out, vals_in, vals_out, N, 0, 32,
                                                      ctx->stream)))
        return;
    dim3 grid(N, (C + THREADS - 1) / THREADS);
    encoder_backward_kernel<<<grid, THREADS, 0, ctx->stream>>>(dwte, dout, keys_out, vals_out, N,
                                                               C);
    LAUNCH_OK(ctx, "encoder_backward_kernel");
}
