/*
 * common.cuh — what the kernels/cuda sources share and C callers never see: the context's
 * insides, the check macros, launch and reduction helpers, workspaces, the row-major GEMM on
 * cuBLAS and bf16 operands.
 *
 * Owns: the one place a CUDA or cuBLAS status becomes a context failure (file:line kept), and
 * the one place row-major products are mapped onto column-major cuBLAS.
 * Never: exported (layers_cuda.h is the interface), prints, or exits.
 */
#ifndef MOE_CUDA_COMMON_CUH
#define MOE_CUDA_COMMON_CUH

#include "layers_cuda.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

/* Workspaces: device buffers that grow on first use and are then reused, one per role, so
 * that buffers live at the same time never share a slot. A slot's contents live from the
 * function that fills it to that function's return (in stream order). */
enum ws_slot {
    WS_OP0, WS_OP1, WS_OP2, WS_OP3, // bf16 GEMM operands: up to eight live in expert_ffn_backward
    WS_OP4, WS_OP5, WS_OP6, WS_OP7,
    WS_ATT_P,   // attention GEMM path: one sequence's (NH, T, T) probabilities
    WS_ATT_DS,  // ... and their gradients
    WS_SORT,    // keys, values and CUB's temporary storage of a stable radix sort
    WS_PARTIAL, // partial sums of multi-block reductions
    WS_COUNT
};

struct cuda_ctx {
    cudaStream_t stream;
    cublasHandle_t blas;
    enum cuda_precision prec;
    enum cuda_attention attn;
    const float *arena; // registered fp32 parameter arena, NULL if none
    size_t arena_n;
    bf16 *arena_bf16;   // its bf16 copy (bf16 mode only)
    void *ws[WS_COUNT];
    size_t ws_bytes[WS_COUNT];
    void *host; // pinned staging for small device-to-host results
    size_t host_bytes;
    int failed;
    char err[512];
};

/* Records the first failure; later ones are dropped (they are usually its consequences). */
void ctx_fail(struct cuda_ctx *ctx, const char *file, int line, const char *what,
              const char *msg);
void ctx_failf(struct cuda_ctx *ctx, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static inline bool cuda_ok_(struct cuda_ctx *ctx, cudaError_t e, const char *file, int line,
                            const char *what) {
    if (e == cudaSuccess) return true;
    ctx_fail(ctx, file, line, what, cudaGetErrorString(e));
    return false;
}
bool cublas_ok_(struct cuda_ctx *ctx, cublasStatus_t s, const char *file, int line,
                const char *what);

/* `if (!CUDA_OK(ctx, cudaMemsetAsync(...))) return;` — false after recording the failure */
#define CUDA_OK(ctx, call) cuda_ok_((ctx), (call), __FILE__, __LINE__, #call)
#define CUBLAS_OK(ctx, call) cublas_ok_((ctx), (call), __FILE__, __LINE__, #call)
/* after every kernel launch: a bad configuration shows up here, not later */
#define LAUNCH_OK(ctx, name) cuda_ok_((ctx), cudaGetLastError(), __FILE__, __LINE__, name)
#define CTX_FAIL(ctx, ...) ctx_failf((ctx), __FILE__, __LINE__, __VA_ARGS__)

/* ---- launches ---- */

enum { THREADS = 256, MAX_GRID = 1 << 20 };

/* Blocks for a grid-stride loop over n items (n > 0); the loop covers any n. */
static inline unsigned grid_for(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads, cap = MAX_GRID;
    return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

#define GRID_STRIDE(i, n)                                                                     \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);           \
         i += (size_t)gridDim.x * blockDim.x)

/* Threads for a kernel with one block per row of `cols` items and a block reduction: a
 * multiple of 32 (every lane of every warp takes part in the shuffles), at most 1024. */
static inline int row_threads(int cols) {
    int t = (cols + 31) / 32 * 32;
    return t < 32 ? 32 : t > 1024 ? 1024 : t;
}

/* ---- deterministic reductions (fixed tree; blockDim.x a multiple of 32) ---- */

/* Butterfly: at every level a lane adds its partner's partial to its own; a + b == b + a
 * exactly, so every lane ends with the same bits. */
template <typename Tv> __device__ __forceinline__ Tv warp_sum(Tv v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block; every thread gets the result. Safe to call repeatedly. */
template <typename Tv> __device__ Tv block_sum(Tv v) {
    __shared__ Tv part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // a previous call may still be reading part[]
    if (lane == 0) part[warp] = v;
    __syncthreads();
    Tv s = lane < nw ? part[lane] : Tv(0);
    return warp_sum(s);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float s = lane < nw ? part[lane] : -INFINITY;
    return warp_max(s);
}

/* ---- workspaces and staging ---- */

/* At least `bytes` of device memory in slot s (contents undefined); NULL on failure. Growing
 * waits for the stream first, so no queued kernel still uses the old buffer. */
void *ws_get(struct cuda_ctx *ctx, enum ws_slot s, size_t bytes);
/* At least `bytes` of pinned host memory; NULL on failure. */
void *host_stage(struct cuda_ctx *ctx, size_t bytes);

/* ---- GEMM ---- */

/* Row-major, batched with strides (in elements): C[b] (M, N) = alpha op(A[b]) (M, K)
 * op(B[b]) (K, N) + beta C[b], fp32 C. A and B are already in prec's element type (float for
 * CUDA_FP32, bf16 for CUDA_BF16); fp32 accumulation either way. K == 0 with beta == 0 zeroes
 * C, as the CPU's gemm does. Returns false (failure recorded) on error. */
bool gemm(struct cuda_ctx *ctx, enum cuda_precision prec, bool tA, bool tB, int M, int N, int K,
          float alpha, const void *A, int lda, long long sA, const void *B, int ldb, long long sB,
          float beta, float *C, int ldc, long long sC, int batch);

/* The fp32 array x[0 .. n) as a GEMM operand in precision prec: x itself in fp32; in bf16 its
 * slice of the parameter arena's bf16 copy if it lies in the registered arena, else a bf16
 * copy made in workspace slot s. NULL on failure. */
const void *operand(struct cuda_ctx *ctx, enum cuda_precision prec, const float *x, size_t n,
                    enum ws_slot s);

/* A bf16 buffer of n elements in slot s for a kernel to write a GEMM operand into directly
 * (bf16 mode); NULL in fp32 mode, and on failure (then ctx->failed is set). */
bf16 *bf16_out(struct cuda_ctx *ctx, enum cuda_precision prec, size_t n, enum ws_slot s);

/* base + elems elements of prec's element type */
static inline const void *elem_offset(enum cuda_precision prec, const void *base, size_t elems) {
    return (const char *)base + elems * (prec == CUDA_BF16 ? sizeof(bf16) : sizeof(float));
}

/* out = bf16(in), round to nearest even */
bool convert_to_bf16(struct cuda_ctx *ctx, bf16 *out, const float *in, size_t n);

#endif
