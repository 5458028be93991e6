/* context.cu — the context: stream, cuBLAS handle, errors, workspaces, GEMM, bf16 operands. */
#include "common.cuh"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors ---- */

void ctx_fail(struct cuda_ctx *ctx, const char *file, int line, const char *what,
              const char *msg) {
    if (ctx->failed) return;
    ctx->failed = 1;
    const char *base = strrchr(file, '/');
    snprintf(ctx->err, sizeof ctx->err, "%s:%d: %s: %s", base ? base + 1 : file, line, what, msg);
}

void ctx_failf(struct cuda_ctx *ctx, const char *file, int line, const char *fmt, ...) {
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ctx_fail(ctx, file, line, "invalid argument", msg);
}

static const char *cublas_status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

bool cublas_ok_(struct cuda_ctx *ctx, cublasStatus_t s, const char *file, int line,
                const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return true;
    ctx_fail(ctx, file, line, what, cublas_status_name(s));
    return false;
}

/* ---- lifetime ---- */

struct cuda_ctx *cuda_ctx_create(enum cuda_precision prec, char *why, size_t why_len) {
    struct cuda_ctx *ctx = (struct cuda_ctx *)calloc(1, sizeof *ctx);
    if (!ctx) {
        snprintf(why, why_len, "cuda_ctx_create: out of host memory");
        return NULL;
    }
    ctx->prec = prec;
    ctx->attn = prec == CUDA_BF16 ? CUDA_ATTN_GEMM : CUDA_ATTN_FUSED;
    const char *env = getenv("MOE_CUDA_ATTN");
    if (env && strcmp(env, "fused") == 0) ctx->attn = CUDA_ATTN_FUSED;
    else if (env && strcmp(env, "gemm") == 0) ctx->attn = CUDA_ATTN_GEMM;
    else if (env && *env) {
        snprintf(why, why_len, "MOE_CUDA_ATTN=%s: expected fused or gemm", env);
        free(ctx);
        return NULL;
    }
    bool ok = CUDA_OK(ctx, cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) &&
              CUBLAS_OK(ctx, cublasCreate(&ctx->blas)) &&
              CUBLAS_OK(ctx, cublasSetStream(ctx->blas, ctx->stream)) &&
              /* fp32 mode is the comparison mode: forbid TF32 and any other reduced precision */
              CUBLAS_OK(ctx, cublasSetMathMode(ctx->blas, prec == CUDA_FP32
                                                              ? CUBLAS_PEDANTIC_MATH
                                                              : CUBLAS_DEFAULT_MATH));
    if (!ok) {
        snprintf(why, why_len, "%s", ctx->err);
        cuda_ctx_destroy(ctx);
        return NULL;
    }
    return ctx;
}

void cuda_ctx_destroy(struct cuda_ctx *ctx) {
    if (!ctx) return;
    /* teardown after a failure: nothing useful to do with further errors */
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    for (int s = 0; s < WS_COUNT; s++) cudaFree(ctx->ws[s]);
    cudaFree(ctx->arena_bf16);
    cudaFreeHost(ctx->host);
    if (ctx->blas) cublasDestroy(ctx->blas);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    free(ctx);
}

const char *cuda_ctx_error(const struct cuda_ctx *ctx) { return ctx->failed ? ctx->err : NULL; }

int cuda_ctx_sync(struct cuda_ctx *ctx) {
    if (ctx->failed) return -1;
    return CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream)) ? 0 : -1;
}

cudaStream_t cuda_ctx_stream(const struct cuda_ctx *ctx) { return ctx->stream; }
enum cuda_precision cuda_ctx_precision(const struct cuda_ctx *ctx) { return ctx->prec; }
enum cuda_attention cuda_ctx_attention(const struct cuda_ctx *ctx) { return ctx->attn; }
void cuda_ctx_set_attention(struct cuda_ctx *ctx, enum cuda_attention impl) { ctx->attn = impl; }

/* ---- workspaces ---- */

void *ws_get(struct cuda_ctx *ctx, enum ws_slot s, size_t bytes) {
    if (ctx->failed) return NULL;
    if (bytes <= ctx->ws_bytes[s] && ctx->ws[s]) return ctx->ws[s];
    if (!CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream))) return NULL;
    cudaFree(ctx->ws[s]);
    ctx->ws[s] = NULL;
    ctx->ws_bytes[s] = 0;
    size_t want = (bytes + 255) / 256 * 256;
    if (!CUDA_OK(ctx, cudaMalloc(&ctx->ws[s], want ? want : 256))) return NULL;
    ctx->ws_bytes[s] = want;
    return ctx->ws[s];
}

void *host_stage(struct cuda_ctx *ctx, size_t bytes) {
    if (ctx->failed) return NULL;
    if (bytes <= ctx->host_bytes && ctx->host) return ctx->host;
    if (!CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream))) return NULL;
    cudaFreeHost(ctx->host);
    ctx->host = NULL;
    ctx->host_bytes = 0;
    size_t want = bytes < 4096 ? 4096 : bytes;
    if (!CUDA_OK(ctx, cudaHostAlloc(&ctx->host, want, cudaHostAllocDefault))) return NULL;
    ctx->host_bytes = want;
    return ctx->host;
}

/* ---- bf16 ---- */

__global__ void to_bf16_kernel(bf16 *out, const float *in, size_t n) {
    GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(in[i]);
}

bool convert_to_bf16(struct cuda_ctx *ctx, bf16 *out, const float *in, size_t n) {
    if (ctx->failed) return false;
    if (n == 0) return true;
    to_bf16_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(out, in, n);
    return LAUNCH_OK(ctx, "to_bf16_kernel");
}

int cuda_ctx_set_param_arena(struct cuda_ctx *ctx, const float *params, size_t n) {
    if (!params) { /* unregister, also after a failure: nothing may point at a freed arena */
        if (ctx->stream) cudaStreamSynchronize(ctx->stream);
        cudaFree(ctx->arena_bf16);
        ctx->arena_bf16 = NULL;
        ctx->arena = NULL;
        ctx->arena_n = 0;
        return ctx->failed ? -1 : 0;
    }
    if (ctx->failed) return -1;
    if (ctx->arena_bf16) { /* drop the old copy once no queued kernel reads it */
        if (!CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream))) return -1;
        cudaFree(ctx->arena_bf16);
        ctx->arena_bf16 = NULL;
    }
    ctx->arena = params;
    ctx->arena_n = n;
    if (ctx->prec != CUDA_BF16 || n == 0) return 0;
    if (!CUDA_OK(ctx, cudaMalloc(&ctx->arena_bf16, n * sizeof(bf16)))) return -1;
    cuda_ctx_refresh_params(ctx);
    return ctx->failed ? -1 : 0;
}

void cuda_ctx_refresh_params(struct cuda_ctx *ctx) {
    if (ctx->failed || !ctx->arena_bf16) return;
    convert_to_bf16(ctx, ctx->arena_bf16, ctx->arena, ctx->arena_n);
}

const void *operand(struct cuda_ctx *ctx, enum cuda_precision prec, const float *x, size_t n,
                    enum ws_slot s) {
    if (ctx->failed) return NULL;
    if (prec == CUDA_FP32) return x;
    if (ctx->arena_bf16) {
        uintptr_t p = (uintptr_t)x, lo = (uintptr_t)ctx->arena;
        uintptr_t hi = lo + ctx->arena_n * sizeof(float);
        if (p >= lo && p < hi && n <= (hi - p) / sizeof(float) && (p - lo) % sizeof(float) == 0)
            return ctx->arena_bf16 + (p - lo) / sizeof(float);
    }
    bf16 *w = (bf16 *)ws_get(ctx, s, n * sizeof(bf16));
    if (!w || !convert_to_bf16(ctx, w, x, n)) return NULL;
    return w;
}

bf16 *bf16_out(struct cuda_ctx *ctx, enum cuda_precision prec, size_t n, enum ws_slot s) {
    if (ctx->failed || prec != CUDA_BF16) return NULL;
    return (bf16 *)ws_get(ctx, s, n * sizeof(bf16));
}

/* ---- GEMM ---- */

/* cuBLAS is column-major. A row-major (M, N) matrix with leading dimension ld is the same
 * memory as a column-major (N, M) one, so C = op(A) op(B) row-major is
 * C^T = op(B)^T op(A)^T column-major: swap the operands and the dimensions M and N, keep each
 * operand's own transpose flag. */
bool gemm(struct cuda_ctx *ctx, enum cuda_precision prec, bool tA, bool tB, int M, int N, int K,
          float alpha, const void *A, int lda, long long sA, const void *B, int ldb, long long sB,
          float beta, float *C, int ldc, long long sC, int batch) {
    if (ctx->failed) return false;
    if (M <= 0 || N <= 0 || batch <= 0) return true;
    if (K <= 0) { /* nothing to multiply: C = beta C, handled for beta 0 (zero) and 1 (keep) */
        if (beta != 0.0f) return true;
        for (int b = 0; b < batch; b++)
            if (!CUDA_OK(ctx, cudaMemset2DAsync(C + b * sC, (size_t)ldc * sizeof(float), 0,
                                                (size_t)N * sizeof(float), M, ctx->stream)))
                return false;
        return true;
    }
    if (!A || !B || !C) {
        CTX_FAIL(ctx, "gemm: NULL operand (M %d N %d K %d)", M, N, K);
        return false;
    }
    cudaDataType_t t = prec == CUDA_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasOperation_t opA = tA ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1)
        return CUBLAS_OK(ctx, cublasGemmEx(ctx->blas, opB, opA, N, M, K, &alpha, B, t, ldb, A, t,
                                           lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
    return CUBLAS_OK(ctx, cublasGemmStridedBatchedEx(ctx->blas, opB, opA, N, M, K, &alpha, B, t,
                                                     ldb, sB, A, t, lda, sA, &beta, C, CUDA_R_32F,
                                                     ldc, sC, batch, CUBLAS_COMPUTE_32F,
                                                     CUBLAS_GEMM_DEFAULT));
}
