/*
 * noblas.h — a plain C stand-in for the two CBLAS calls kernels/layers.c makes, for builds
 * that have no BLAS (MOE_NO_BLAS: the standalone GPU test build of tests/gpu/, on machines
 * with the CUDA toolkit but no OpenBLAS).
 *
 * Owns: cblas_sgemm and cblas_dgemm for row-major storage with either transpose on either
 * operand and any alpha and beta, which is exactly what layers.c's gemm() passes.
 * Never: used by the normal build (CMake links OpenBLAS), fast, or complete: column-major
 * order and conjugate transposes are not supported and abort.
 *
 * Semantics as BLAS: C = alpha op(A) op(B) + beta C, and C is not read when beta == 0 (so
 * NaN in an uninitialised C does not propagate). Each dot product accumulates in the element
 * type, in increasing k, like a reference BLAS; results differ from OpenBLAS only by rounding.
 */
#ifndef MOE_NOBLAS_H
#define MOE_NOBLAS_H

#include <stdio.h>
#include <stdlib.h>

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };

#define MOE_NOBLAS_GEMM(NAME, TYPE)                                                               \
    static inline void NAME(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta,                      \
                            enum CBLAS_TRANSPOSE tb, int M, int N, int K, TYPE alpha,             \
                            const TYPE *A, int lda, const TYPE *B, int ldb, TYPE beta, TYPE *C,    \
                            int ldc) {                                                            \
        if (order != CblasRowMajor || ta == CblasConjTrans || tb == CblasConjTrans) {             \
            fprintf(stderr, "noblas.h: " #NAME ": only row-major N/T is supported\n");           \
            abort();                                                                              \
        }                                                                                         \
        int at = ta == CblasTrans, bt = tb == CblasTrans;                                         \
        for (int i = 0; i < M; i++)                                                               \
            for (int j = 0; j < N; j++) {                                                         \
                TYPE s = 0;                                                                       \
                for (int k = 0; k < K; k++) {                                                     \
                    TYPE a = at ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];                \
                    TYPE b = bt ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];                \
                    s += a * b;                                                                   \
                }                                                                                 \
                TYPE *c = C + (size_t)i * ldc + j;                                                \
                *c = beta == 0 ? alpha * s : alpha * s + beta * *c;                               \
            }                                                                                     \
    }

MOE_NOBLAS_GEMM(cblas_sgemm, float)
MOE_NOBLAS_GEMM(cblas_dgemm, double)

#undef MOE_NOBLAS_GEMM

#endif
