/*
 * layers_cuda.h — every layer of the model on an NVIDIA GPU, mirroring kernels/layers.h.
 *
 * Owns: the CUDA versions of the per-layer math, and the context they run in (a stream, a
 * cuBLAS handle, the precision mode, growable workspaces, the first error).
 * Never: decides anything the CPU reference does not (same equations, same routing rules,
 * same k-major capacity, same order of every sum that the CPU keeps in a fixed order where it
 * is cheap to), keeps state between calls other than its workspaces, or prints.
 *
 * Naming convention: each function is the CPU function of the same name with a `_cuda`
 * suffix, the same arguments in the same order, every array argument a DEVICE pointer unless
 * its comment says "host", and one extra last argument, the context. Dimension letters as in
 * kernels/model.h (B, T, C, NH, HD, V, E, K, F, N = B*T).
 *
 * Two deliberate differences from the CPU signatures' meaning, both forced by memory:
 *  - attention_forward_cuda's `att` holds the softmax statistics, (B, NH, T) logsumexp of each
 *    query row's scaled scores, not the (B, NH, T, T) probabilities; backward recomputes them.
 *    attention_backward_cuda's `scratch` is (B, NH, T) floats.
 *  - the MoE activations carry one host array beside the device ones (expert_off_host): the
 *    expert GEMMs need each expert's row count on the host to launch, so router_forward_cuda
 *    copies the row layout back (one stream synchronisation per MoE layer).
 *
 * Precision (enum cuda_precision):
 *  CUDA_FP32  every product in fp32 (cuBLAS with CUBLAS_COMPUTE_32F, pedantic math: no TF32),
 *             every other loop the CPU's arithmetic; differs from the CPU only by summation
 *             order inside reductions and GEMMs. The mode tests compare against the CPU.
 *  CUDA_BF16  the matrix products (linear layers, experts, attention's GEMM path) take bf16
 *             operands with fp32 accumulation and fp32 outputs (cublasGemmEx, CUDA_R_16BF,
 *             CUBLAS_COMPUTE_32F); weights, activations, gradients and optimizer state stay
 *             fp32 (master weights). Operands are rounded to bf16 just before each product: a
 *             parameter from a bf16 shadow of the parameter arena that the optimizer keeps
 *             current (cuda_ctx_set_param_arena), an activation by a conversion into a
 *             workspace (or written directly in bf16 by the elementwise kernel producing it).
 *             The router's product and the fused attention kernel stay fp32 in both modes.
 *
 * Errors: every CUDA and cuBLAS call is checked; the first failure is kept in the context as
 * "file:line: call: message" and every later call on that context returns at once without
 * launching anything (functions returning a value return 0 or NaN). Check cuda_ctx_error()
 * after a step. A CUDA error from a kernel is sticky for the process: the caller must drop the
 * context (and its device memory) and report the failure; it must not go on with the device.
 *
 * Determinism: no floating-point atomics anywhere. Reductions run in a fixed tree order, so
 * the same inputs give the same bits on the same GPU and toolkit. Integer counts (expert load,
 * capacity) use integer atomics or sequential scans, which are exact. cuBLAS results are
 * reproducible on the same GPU model and toolkit version (its default atomics mode).
 */
#ifndef MOE_LAYERS_CUDA_H
#define MOE_LAYERS_CUDA_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef MOE_REAL_DOUBLE
#error "kernels/cuda is float-only: do not build it with MOE_REAL_DOUBLE"
#endif

/* kernels/layers.h and model.h are plain C headers without linkage blocks: the .cu files
 * (C++) see them through this one */
#ifdef __cplusplus
extern "C" {
#endif

#include "../layers.h"

enum cuda_precision {
    CUDA_FP32 = 0, // fp32 everywhere: the mode that is compared with the CPU reference
    CUDA_BF16 = 1, // bf16 matrix operands, fp32 accumulation, fp32 master weights
};

/* How attention runs. FUSED: one kernel per pass, online softmax, nothing (T, T) in memory,
 * fp32 on the CUDA cores. GEMM: the CPU's algorithm (scores, softmax, mixing) as strided
 * batched GEMMs through cuBLAS, one sequence at a time with its (NH, T, T) scores in a
 * workspace; runs on the tensor cores in bf16 mode. */
enum cuda_attention { CUDA_ATTN_FUSED = 0, CUDA_ATTN_GEMM = 1 };

/* The context runs everything on its own stream, created non-blocking: it does NOT
 * synchronise with the legacy default stream. A caller's copies into or out of buffers the
 * layers use go on cuda_ctx_stream() (or are followed by cudaDeviceSynchronize()). */
struct cuda_ctx;

/* Creates a context on the current device: its own stream and cuBLAS handle. The attention
 * implementation defaults to FUSED in fp32 mode and GEMM in bf16 mode; the environment
 * variable MOE_CUDA_ATTN=fused|gemm overrides it (the one tunable read from the environment,
 * here only). Returns NULL and fills why on failure. */
struct cuda_ctx *cuda_ctx_create(enum cuda_precision prec, char *why, size_t why_len);
void cuda_ctx_destroy(struct cuda_ctx *ctx);
/* NULL while everything succeeded; else the first failure, "file:line: call: message". */
const char *cuda_ctx_error(const struct cuda_ctx *ctx);
/* Waits for the context's stream; returns 0, or -1 (and the error is kept) on failure. */
int cuda_ctx_sync(struct cuda_ctx *ctx);
cudaStream_t cuda_ctx_stream(const struct cuda_ctx *ctx);
enum cuda_precision cuda_ctx_precision(const struct cuda_ctx *ctx);
enum cuda_attention cuda_ctx_attention(const struct cuda_ctx *ctx);
void cuda_ctx_set_attention(struct cuda_ctx *ctx, enum cuda_attention impl);

/* Registers the fp32 parameter arena [params, params + n): in bf16 mode the context keeps a
 * bf16 copy of it, and a GEMM operand inside the arena is read from that copy. The copy is
 * made now; adamw_update_cuda on (part of) the arena keeps it current; after any other write
 * to the parameters call cuda_ctx_refresh_params. In fp32 mode only the range is kept.
 * params = NULL unregisters (do so before freeing the arena). Returns 0 or -1. */
int cuda_ctx_set_param_arena(struct cuda_ctx *ctx, const float *params, size_t n);
void cuda_ctx_refresh_params(struct cuda_ctx *ctx);

/* ---- the layers: see kernels/layers.h for each contract ---- */

void encoder_forward_cuda(float *out, const int *tokens, const float *wte, int N, int C,
                          struct cuda_ctx *ctx);
/* adds, token by token in token order for each vocabulary row (as the CPU); tokens in [0, V) */
void encoder_backward_cuda(float *dwte, const float *dout, const int *tokens, int N, int C,
                           struct cuda_ctx *ctx);

void rmsnorm_forward_cuda(float *out, float *rstd, const float *inp, const float *weight, int N,
                          int C, float eps, struct cuda_ctx *ctx);
/* adds to dinp and dweight; dweight's sum over tokens runs in fixed chunks of tokens */
void rmsnorm_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                           const float *weight, const float *rstd, int N, int C,
                           struct cuda_ctx *ctx);

void matmul_forward_cuda(float *out, const float *inp, const float *weight, int N, int IN,
                         int OUT, struct cuda_ctx *ctx);
void matmul_backward_cuda(float *dinp, float *dweight, const float *dout, const float *inp,
                          const float *weight, int N, int IN, int OUT, int accumulate,
                          struct cuda_ctx *ctx);

/* freqs: device copy of the CPU's (T, HD/2, 2) table */
void rope_forward_cuda(float *qkv, const float *freqs, int B, int T, int C, int NH,
                       struct cuda_ctx *ctx);
void rope_backward_cuda(float *dqkv, const float *freqs, int B, int T, int C, int NH,
                        struct cuda_ctx *ctx);

/* att: (B, NH, T) logsumexp of each row's scaled causal scores (see above) */
void attention_forward_cuda(float *out, float *att, const float *qkv, int B, int T, int C,
                            int NH, struct cuda_ctx *ctx);
/* writes dqkv; scratch (B, NH, T) */
void attention_backward_cuda(float *dqkv, float *scratch, const float *dout, const float *qkv,
                             const float *att, int B, int T, int C, int NH,
                             struct cuda_ctx *ctx);

/* returns the sum over tokens of -log p(target) (host double; synchronises); 0 if targets is
 * NULL */
double crossentropy_forward_cuda(float *probs, const float *logits, const int *targets, int N,
                                 int V, struct cuda_ctx *ctx);
void crossentropy_backward_cuda(float *dlogits, const float *probs, const int *targets, int N,
                                int V, double scale, struct cuda_ctx *ctx);

/* ---- mixture of experts ---- */

/* struct moe_acts (kernels/layers.h) with device pointers, plus the host copy of the row
 * layout (written by router_forward_cuda; a caller that fills the device fields itself must
 * fill it too). */
struct moe_acts_cuda {
    float *logits;        // (N, E)
    float *probs;         // (N, E)
    float *lse;           // (N)
    int *topk;            // (N, K)
    float *gates;         // (N, K)
    int *row_of;          // (N, K) row of the assignment, -1 if dropped
    int *expert_off;      // (E + 1)
    int *row_token;       // (N*K)
    float *xe;            // (N*K, C)
    float *h1, *h2, *ha;  // (N*K, F)
    float *ye;            // (N*K, C)
    int *expert_off_host; // (E + 1) HOST memory: the same offsets, for the GEMM shapes
};

/* load: HOST array (E) of counts, added to. Returns the dropped count. Synchronises once. */
long router_forward_cuda(struct moe_acts_cuda *a, long *load, const float *inp,
                         const float *router_w, const float *expert_bias,
                         const struct moe_layer_cfg *c, struct cuda_ctx *ctx);
/* aux, z: HOST doubles. Synchronises. */
void router_losses_cuda(double *aux, double *z, const struct moe_acts_cuda *a,
                        const struct moe_layer_cfg *c, struct cuda_ctx *ctx);
/* The composition of moe_gather_cuda, expert_ffn_forward_cuda for each expert (row counts
 * from a->expert_off_host) and moe_combine_cuda, as on the CPU. */
void experts_forward_cuda(float *out, struct moe_acts_cuda *a, const float *inp,
                          const float *w_gate, const float *w_up, const float *w_down,
                          const struct moe_layer_cfg *c, struct cuda_ctx *ctx);
/* scratch: moe_backward_scratch_size(c) floats, as on the CPU. The composition of
 * moe_combine_backward_cuda, expert_ffn_backward_cuda for each expert and
 * moe_router_backward_cuda, as on the CPU. */
void moe_backward_cuda(float *dinp, float *drouter_w, float *dw_gate, float *dw_up,
                       float *dw_down, float *scratch, const float *dout,
                       const struct moe_acts_cuda *a, const float *inp, const float *router_w,
                       const float *w_gate, const float *w_up, const float *w_down,
                       const struct moe_layer_cfg *c, struct cuda_ctx *ctx);

/* The phases of the MoE layer (kernels/layers.h), for a caller that runs the experts
 * elsewhere. struct moe_scratch and moe_backward_scratch() / moe_backward_scratch_size() are
 * the CPU's, used as they are: they only carve pointers, so the views point into a device
 * scratch as well as a host one. A row count m is a host int. */

void moe_gather_cuda(float *xe, const float *inp, const int *row_token, int rows, int C,
                     struct cuda_ctx *ctx);
/* in bf16 mode xe and ha are rounded to bf16 for the products, the weights read from the
 * parameter arena's bf16 copy where they lie in it */
void expert_ffn_forward_cuda(float *ye, float *h1, float *h2, float *ha, const float *xe,
                             const float *w_gate, const float *w_up, const float *w_down, int m,
                             int C, int F, struct cuda_ctx *ctx);
void moe_combine_cuda(float *out, const float *ye, const int *row_of, const float *gates, int N,
                      int K, int C, struct cuda_ctx *ctx);
/* dgates' dot products in double, a fixed tree */
void moe_combine_backward_cuda(float *dye, float *dgates, const float *dout, const float *ye,
                               const int *row_of, const float *gates, int N, int K, int C,
                               struct cuda_ctx *ctx);
void expert_ffn_backward_cuda(float *dxe, float *dw_gate, float *dw_up, float *dw_down,
                              float *dh1, float *dh2, const float *dye, const float *xe,
                              const float *h1, const float *h2, const float *ha,
                              const float *w_gate, const float *w_up, const float *w_down, int m,
                              int C, int F, int accumulate, struct cuda_ctx *ctx);
/* s: device views (moe_backward_scratch on a device scratch) */
void moe_router_backward_cuda(float *dinp, float *drouter_w, const struct moe_scratch *s,
                              const struct moe_acts_cuda *a, const float *inp,
                              const float *router_w, const struct moe_layer_cfg *c,
                              struct cuda_ctx *ctx);

/* ---- optimizer ---- */

/* The CPU's AdamW, element for element, written into other arrays (which may be the inputs).
 * If [params_out, params_out + n) lies in the registered parameter arena, its bf16 copy is
 * updated in the same pass; an update into another arena leaves the registered one and its
 * copy as they were (register the new arena once the model points at it). */
void adamw_update_into_cuda(float *params_out, float *m_out, float *v_out, const float *params,
                            const float *grads, const float *m, const float *v, size_t n,
                            size_t n_decay, float lr, float beta1, float beta2, float eps,
                            float weight_decay, float grad_scale, long t, struct cuda_ctx *ctx);
void adamw_update_cuda(float *params, const float *grads, float *m, float *v, size_t n,
                       size_t n_decay, float lr, float beta1, float beta2, float eps,
                       float weight_decay, float grad_scale, long t, struct cuda_ctx *ctx);
/* Sum of squares in double over fixed chunks of 65536 elements, chunk sums added in chunk
 * order (the CPU's sum_squares). Host double; synchronises. */
double sum_squares_cuda(const float *x, size_t n, struct cuda_ctx *ctx);

#ifdef __cplusplus
}
#endif

#endif
