/*
 * check_gpu — every CUDA layer against the CPU reference (kernels/layers.c), forward and
 * backward, and each phase of the MoE layer alone (the distributed step's pieces); then the
 * whole model's step, its exec-hook path (model_forward_exec_cuda / model_backward_exec_cuda
 * with a trivial local hook) against the CPU's, then 20 training steps; one line per
 * comparison:
 *
 *     name  max_abs  max_rel  tol  OK|FAIL
 *
 * max_abs = max |gpu - cpu| over the tensor; max_rel = max_abs / max |cpu| (the error on the
 * tensor's own scale, so elements near zero do not make it meaningless). A line passes when
 * max_rel <= tol; NaN (an element the GPU never wrote: outputs are poisoned with NaN first)
 * fails. For integer outputs (routing) max_abs is the number of differing entries and the
 * tolerance is 0. For scalars max_rel is |gpu - cpu| / |cpu|.
 *
 * Inputs are fresh random numbers (a counter hash, so runs repeat), never zeros. Each layer
 * gets identical inputs on both sides, the CPU's own outputs of the layer before, so a line
 * measures that layer alone.
 *
 * Exit status: 0 every line passed; 1 some comparison failed; 2 no GPU, or a CUDA error
 * (the error's file:line is printed).
 * Options: --quick  layers only (for compute-sanitizer), fp32 only
 *          --no-bf16  skip the bf16-mode sanity lines
 */
#include "gpu_common.h"

#include "../../kernels/cuda/layers_cuda.h"
#include "../../kernels/cuda/model_cuda.h"
#include "../../kernels/layers.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tolerances on max_rel (docs/gpu.md gives the reasoning):
 * TOL_SAME   the same float operations in the same order (elementwise kernels, the CPU's own
 *            loops; nvcc's FMA contraction is off for these files): expected exactly 0.
 * TOL_ORDER  the same sums in another order (tree reductions in double or float): ~1e-7.
 * TOL_GEMM   cuBLAS against OpenBLAS, fp32, inner dimensions up to 512: ~1e-6.
 * TOL_CHAIN  several products and reductions in a row, with cancellation (attention and MoE
 *            backward, gradients through the gates): ~1e-5.
 * TOL_MODEL  a whole forward and backward of two layers.
 * TOL_BF16   bf16 operands carry 8 significant bits (relative rounding 2^-9 = 2e-3 each):
 *            products land within ~1e-2 of fp32; these lines are sanity bounds, not parity. */
#define TOL_SAME 1e-6
#define TOL_ORDER 1e-5
#define TOL_GEMM 2e-5
#define TOL_CHAIN 1e-4
#define TOL_MODEL_FWD 1e-4
#define TOL_MODEL_GRAD 1e-3
#define TOL_LOSS 1e-5
#define TOL_TRAIN_FP32 1e-4
#define TOL_BF16 3e-2
#define TOL_BF16_CHAIN 6e-2
#define TOL_BF16_LOSS 1e-2
#define TOL_BF16_GRAD 1e-1
#define TOL_TRAIN_BF16 3e-2

static int failures;
static struct cuda_ctx *ctx;

/* ---- device helpers (all copies in the context's stream) ---- */

#define CK(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "check_gpu: %s:%d: %s: %s\n", __FILE__, __LINE__, #call,              \
                    cudaGetErrorString(e_));                                                      \
            exit(2);                                                                              \
        }                                                                                         \
    } while (0)

static void ctx_ok(const char *what) {
    const char *e = cuda_ctx_error(ctx);
    if (e) {
        fprintf(stderr, "check_gpu: %s: %s\n", what, e);
        exit(2);
    }
}

static void sync_ctx(const char *what) {
    cuda_ctx_sync(ctx);
    ctx_ok(what);
}

enum { MAX_ALLOCS = 512 };
static void *allocs[MAX_ALLOCS];
static int n_allocs;

/* device memory poisoned with 0xff bytes: NaN as float, -1 as int */
static void *dalloc(size_t bytes) {
    void *p;
    if (n_allocs == MAX_ALLOCS) {
        fprintf(stderr, "check_gpu: too many allocations\n");
        exit(2);
    }
    CK(cudaMalloc(&p, bytes ? bytes : 4));
    CK(cudaMemsetAsync(p, 0xff, bytes ? bytes : 4, cuda_ctx_stream(ctx)));
    allocs[n_allocs++] = p;
    return p;
}

static void dfree_all(void) {
    CK(cudaDeviceSynchronize());
    for (int i = 0; i < n_allocs; i++) CK(cudaFree(allocs[i]));
    n_allocs = 0;
}

static void up(void *d, const void *h, size_t bytes) {
    CK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, cuda_ctx_stream(ctx)));
    CK(cudaStreamSynchronize(cuda_ctx_stream(ctx)));
}

static void down(void *h, const void *d, size_t bytes) {
    sync_ctx("before a download");
    CK(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, cuda_ctx_stream(ctx)));
    CK(cudaStreamSynchronize(cuda_ctx_stream(ctx)));
}

static float *dfloats(const float *h, size_t n) {
    float *d = (float *)dalloc(sizeof(float) * n);
    if (h) up(d, h, sizeof(float) * n);
    return d;
}

static int *dints(const int *h, size_t n) {
    int *d = (int *)dalloc(sizeof(int) * n);
    if (h) up(d, h, sizeof(int) * n);
    return d;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "check_gpu: out of host memory\n");
        exit(2);
    }
    return p;
}

static float *hfloats(size_t n) { return (float *)xcalloc(n, sizeof(float)); }

static float *hrandom(size_t n, uint64_t seed, double scale) {
    float *x = hfloats(n);
    gpu_test_fill(x, n, seed, scale);
    return x;
}

/* ---- comparisons ---- */

static void report(const char *name, double max_abs, double max_rel, double tol) {
    int ok = max_rel <= tol; /* false for NaN */
    printf("%-44s %10.3e %10.3e %8.1e %s\n", name, max_abs, max_rel, tol, ok ? "OK" : "FAIL");
    fflush(stdout);
    if (!ok) failures++;
}

static void compare(const char *name, const float *gpu, const float *cpu, size_t n, double tol) {
    double max_abs = 0, max_ref = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(gpu[i]) || isnan(cpu[i])) nan = 1;
        double d = fabs((double)gpu[i] - cpu[i]);
        if (d > max_abs) max_abs = d;
        if (fabs(cpu[i]) > max_ref) max_ref = fabs(cpu[i]);
    }
    double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
    report(name, nan ? NAN : max_abs, nan ? NAN : rel, tol);
}

static void compare_dev(const char *name, const float *dev, const float *cpu, size_t n,
                        double tol) {
    float *h = hfloats(n);
    down(h, dev, sizeof(float) * n);
    compare(name, h, cpu, n, tol);
    free(h);
}

static void compare_ints(const char *name, const int *gpu, const int *cpu, size_t n) {
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += gpu[i] != cpu[i];
    report(name, (double)bad, bad ? 1.0 : 0.0, 0);
}

static void compare_ints_dev(const char *name, const int *dev, const int *cpu, size_t n) {
    int *h = (int *)xcalloc(n, sizeof(int));
    down(h, dev, sizeof(int) * n);
    compare_ints(name, h, cpu, n);
    free(h);
}

static void compare_scalar(const char *name, double gpu, double cpu, double tol) {
    double d = fabs(gpu - cpu);
    double rel = cpu != 0 ? d / fabs(cpu) : d;
    report(name, isnan(gpu) ? NAN : d, isnan(gpu) ? NAN : rel, tol);
}

/* ---- embedding, norm, linear, rotary ---- */

static void test_encoder(void) {
    const int N = 140, C = 64, V = 256;
    int tok[140];
    for (int n = 0; n < N; n++) tok[n] = (int)(mix64(n + 11) % 32); /* many repeats */
    float *wte = hrandom((size_t)V * C, 1, 1), *out = hfloats((size_t)N * C);
    encoder_forward(out, tok, wte, N, C);
    int *d_tok = dints(tok, N);
    float *d_wte = dfloats(wte, (size_t)V * C), *d_out = dfloats(NULL, (size_t)N * C);
    encoder_forward_cuda(d_out, d_tok, d_wte, N, C, ctx);
    compare_dev("encoder.forward", d_out, out, (size_t)N * C, TOL_SAME);

    float *dout = hrandom((size_t)N * C, 2, 1), *dwte = hrandom((size_t)V * C, 3, 1);
    float *d_dwte = dfloats(dwte, (size_t)V * C), *d_dout = dfloats(dout, (size_t)N * C);
    encoder_backward(dwte, dout, tok, N, C);
    encoder_backward_cuda(d_dwte, d_dout, d_tok, N, C, ctx);
    compare_dev("encoder.backward (adds, token order)", d_dwte, dwte, (size_t)V * C, TOL_SAME);
    free(wte), free(out), free(dout), free(dwte);
    dfree_all();
}

static void test_rmsnorm(int C) {
    const int N = 140;
    char name[96];
    size_t NC = (size_t)N * C;
    float *x = hrandom(NC, 10, 2), *w = hrandom(C, 11, 1), *out = hfloats(NC), *rstd = hfloats(N);
    rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    float *d_x = dfloats(x, NC), *d_w = dfloats(w, C), *d_out = dfloats(NULL, NC);
    float *d_rstd = dfloats(NULL, N);
    rmsnorm_forward_cuda(d_out, d_rstd, d_x, d_w, N, C, 1e-5f, ctx);
    snprintf(name, sizeof name, "rmsnorm.forward.C%d", C);
    compare_dev(name, d_out, out, NC, TOL_ORDER);
    snprintf(name, sizeof name, "rmsnorm.forward.rstd.C%d", C);
    compare_dev(name, d_rstd, rstd, N, TOL_ORDER);

    float *dy = hrandom(NC, 12, 1), *dx = hrandom(NC, 13, 1), *dw = hrandom(C, 14, 1);
    float *d_dy = dfloats(dy, NC), *d_dx = dfloats(dx, NC), *d_dw = dfloats(dw, C);
    rmsnorm_backward(dx, dw, dy, x, w, rstd, N, C);
    d_rstd = dfloats(rstd, N); /* the CPU's saved rstd: this line measures the backward alone */
    rmsnorm_backward_cuda(d_dx, d_dw, d_dy, d_x, d_w, d_rstd, N, C, ctx);
    snprintf(name, sizeof name, "rmsnorm.backward.dinp.C%d", C);
    compare_dev(name, d_dx, dx, NC, TOL_ORDER);
    snprintf(name, sizeof name, "rmsnorm.backward.dweight.C%d", C);
    compare_dev(name, d_dw, dw, C, TOL_ORDER);
    free(x), free(w), free(out), free(rstd), free(dy), free(dx), free(dw);
    dfree_all();
}

static void test_matmul(const char *mode, double tol) {
    const int N = 140, IN = 64, OUT = 96;
    char name[96];
    float *x = hrandom((size_t)N * IN, 20, 1), *w = hrandom((size_t)OUT * IN, 21, 0.2);
    float *out = hfloats((size_t)N * OUT);
    matmul_forward(out, x, w, N, IN, OUT);
    float *d_x = dfloats(x, (size_t)N * IN), *d_w = dfloats(w, (size_t)OUT * IN);
    float *d_out = dfloats(NULL, (size_t)N * OUT);
    matmul_forward_cuda(d_out, d_x, d_w, N, IN, OUT, ctx);
    snprintf(name, sizeof name, "%smatmul.forward", mode);
    compare_dev(name, d_out, out, (size_t)N * OUT, tol);
    for (int acc = 0; acc < 2; acc++) {
        float *dy = hrandom((size_t)N * OUT, 22, 1), *dx = hfloats((size_t)N * IN);
        float *dw = hrandom((size_t)OUT * IN, 23, 1); /* accumulate adds to this */
        float *d_dy = dfloats(dy, (size_t)N * OUT), *d_dx = dfloats(NULL, (size_t)N * IN);
        float *d_dw = dfloats(acc ? dw : NULL, (size_t)OUT * IN);
        matmul_backward(dx, dw, dy, x, w, N, IN, OUT, acc);
        matmul_backward_cuda(d_dx, d_dw, d_dy, d_x, d_w, N, IN, OUT, acc, ctx);
        snprintf(name, sizeof name, "%smatmul.backward.dinp.acc%d", mode, acc);
        compare_dev(name, d_dx, dx, (size_t)N * IN, tol);
        snprintf(name, sizeof name, "%smatmul.backward.dweight.acc%d", mode, acc);
        compare_dev(name, d_dw, dw, (size_t)OUT * IN, tol);
        free(dy), free(dx), free(dw);
    }
    free(x), free(w), free(out);
    dfree_all();
}

/* the rotary table as model_alloc computes it */
static float *rope_table(int T, int HD) {
    float *f = hfloats((size_t)T * HD);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < HD / 2; i++) {
            double ang = t * pow(10000.0, -2.0 * i / HD);
            f[(size_t)t * HD + 2 * i] = (float)cos(ang);
            f[(size_t)t * HD + 2 * i + 1] = (float)sin(ang);
        }
    return f;
}

static void test_rope(void) {
    const int B = 2, T = 70, C = 64, NH = 4, HD = C / NH;
    size_t n = (size_t)B * T * 3 * C;
    float *qkv = hrandom(n, 30, 1), *freqs = rope_table(T, HD);
    float *d_qkv = dfloats(qkv, n), *d_f = dfloats(freqs, (size_t)T * HD);
    rope_forward(qkv, freqs, B, T, C, NH);
    rope_forward_cuda(d_qkv, d_f, B, T, C, NH, ctx);
    compare_dev("rope.forward", d_qkv, qkv, n, TOL_SAME);
    float *dq = hrandom(n, 31, 1), *d_dq = dfloats(dq, n);
    rope_backward(dq, freqs, B, T, C, NH);
    rope_backward_cuda(d_dq, d_f, B, T, C, NH, ctx);
    compare_dev("rope.backward", d_dq, dq, n, TOL_SAME);
    free(qkv), free(freqs), free(dq);
    dfree_all();
}

/* ---- attention ---- */

static void test_attention(const char *mode, enum cuda_attention impl, int HD, double tol_fwd,
                           double tol_bwd) {
    const int B = 2, T = 70, NH = 2, C = NH * HD;
    char name[96], tag[48];
    snprintf(tag, sizeof tag, "%s%s.hd%d", mode, impl == CUDA_ATTN_FUSED ? "fused" : "gemm", HD);
    cuda_ctx_set_attention(ctx, impl);
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C, natt = (size_t)B * NH * T * T;
    float *qkv = hrandom(nqkv, 40 + HD, 1), *out = hfloats(nout), *att = hfloats(natt);
    attention_forward(out, att, qkv, B, T, C, NH);
    float *d_qkv = dfloats(qkv, nqkv), *d_out = dfloats(NULL, nout);
    float *d_lse = dfloats(NULL, (size_t)B * NH * T);
    attention_forward_cuda(d_out, d_lse, d_qkv, B, T, C, NH, ctx);
    snprintf(name, sizeof name, "attention.%s.forward", tag);
    compare_dev(name, d_out, out, nout, tol_fwd);

    /* the saved statistics against logsumexp in double from q and k directly */
    float *lse = hfloats((size_t)B * NH * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * HD;
                double mx = -INFINITY, s[70];
                for (int j = 0; j <= t; j++) {
                    const float *k = qkv + ((size_t)b * T + j) * 3 * C + C + h * HD;
                    double dot = 0;
                    for (int d = 0; d < HD; d++) dot += (double)q[d] * k[d];
                    s[j] = dot / sqrt((double)HD);
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int j = 0; j <= t; j++) sum += exp(s[j] - mx);
                lse[((size_t)b * NH + h) * T + t] = (float)(mx + log(sum));
            }
    snprintf(name, sizeof name, "attention.%s.forward.lse", tag);
    compare_dev(name, d_lse, lse, (size_t)B * NH * T, tol_fwd);

    float *dout = hrandom(nout, 50 + HD, 1), *dqkv = hfloats(nqkv), *scratch = hfloats(natt);
    attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH);
    float *d_dout = dfloats(dout, nout), *d_dqkv = dfloats(NULL, nqkv);
    float *d_scr = dfloats(NULL, (size_t)B * NH * T);
    attention_backward_cuda(d_dqkv, d_scr, d_dout, d_qkv, d_lse, B, T, C, NH, ctx);
    snprintf(name, sizeof name, "attention.%s.backward", tag);
    compare_dev(name, d_dqkv, dqkv, nqkv, tol_bwd);
    free(qkv), free(out), free(att), free(lse), free(dout), free(dqkv), free(scratch);
    dfree_all();
}

/* ---- cross-entropy ---- */

static void test_crossentropy(void) {
    const int N = 140, V = 256;
    size_t n = (size_t)N * V;
    int tgt[140];
    for (int i = 0; i < N; i++) tgt[i] = (int)(mix64(i + 99) % V);
    float *logits = hrandom(n, 60, 3), *probs = hfloats(n);
    double loss = crossentropy_forward(probs, logits, tgt, N, V);
    float *d_logits = dfloats(logits, n), *d_probs = dfloats(NULL, n);
    int *d_tgt = dints(tgt, N);
    double g_loss = crossentropy_forward_cuda(d_probs, d_logits, d_tgt, N, V, ctx);
    ctx_ok("crossentropy_forward_cuda");
    compare_dev("crossentropy.forward.probs", d_probs, probs, n, TOL_ORDER);
    compare_scalar("crossentropy.forward.loss_sum", g_loss, loss, 1e-10);
    /* backward on the CPU's probs, in place as the model runs it */
    float *d = hfloats(n);
    crossentropy_backward(d, probs, tgt, N, V, 1.0 / N);
    float *d_p = dfloats(probs, n);
    crossentropy_backward_cuda(d_p, d_p, d_tgt, N, V, 1.0 / N, ctx);
    compare_dev("crossentropy.backward (in place)", d_p, d, n, TOL_SAME);
    free(logits), free(probs), free(d);
    dfree_all();
}

/* ---- mixture of experts ---- */

struct moe_case {
    const char *name;
    int B, T, C, E, K, F, capacity; /* capacity T*K: dropless */
    int bias;
};

static void host_acts_alloc(struct moe_acts *a, const struct moe_layer_cfg *c) {
    size_t N = (size_t)c->B * c->T, NK = N * c->K;
    a->logits = hfloats(N * c->E);
    a->probs = hfloats(N * c->E);
    a->lse = hfloats(N);
    a->topk = (int *)xcalloc(NK, sizeof(int));
    a->gates = hfloats(NK);
    a->row_of = (int *)xcalloc(NK, sizeof(int));
    a->expert_off = (int *)xcalloc(c->E + 1, sizeof(int));
    a->row_token = (int *)xcalloc(NK, sizeof(int));
    a->xe = hfloats(NK * c->C);
    a->h1 = hfloats(NK * c->F);
    a->h2 = hfloats(NK * c->F);
    a->ha = hfloats(NK * c->F);
    a->ye = hfloats(NK * c->C);
}

static void host_acts_free(struct moe_acts *a) {
    free(a->logits), free(a->probs), free(a->lse), free(a->topk), free(a->gates);
    free(a->row_of), free(a->expert_off), free(a->row_token), free(a->xe), free(a->h1);
    free(a->h2), free(a->ha), free(a->ye);
}

/* device activations; copy = 1 fills them with the CPU's (routing and saved values) */
static void dev_acts(struct moe_acts_cuda *d, const struct moe_acts *h,
                     const struct moe_layer_cfg *c, int copy) {
    size_t N = (size_t)c->B * c->T, NK = N * c->K;
    d->logits = dfloats(copy ? h->logits : NULL, N * c->E);
    d->probs = dfloats(copy ? h->probs : NULL, N * c->E);
    d->lse = dfloats(copy ? h->lse : NULL, N);
    d->topk = dints(copy ? h->topk : NULL, NK);
    d->gates = dfloats(copy ? h->gates : NULL, NK);
    d->row_of = dints(copy ? h->row_of : NULL, NK);
    d->expert_off = dints(copy ? h->expert_off : NULL, c->E + 1);
    d->row_token = dints(copy ? h->row_token : NULL, NK);
    d->xe = dfloats(copy ? h->xe : NULL, NK * c->C);
    d->h1 = dfloats(copy ? h->h1 : NULL, NK * c->F);
    d->h2 = dfloats(copy ? h->h2 : NULL, NK * c->F);
    d->ha = dfloats(copy ? h->ha : NULL, NK * c->F);
    d->ye = dfloats(copy ? h->ye : NULL, NK * c->C);
    d->expert_off_host = (int *)xcalloc(c->E + 1, sizeof(int));
    if (copy) memcpy(d->expert_off_host, h->expert_off, sizeof(int) * (c->E + 1));
}

/* Explains a top-k mismatch: near-ties (scores within 1e-5) are legitimate rounding flips. */
static void explain_topk(const struct moe_acts *a, const int *gpu_topk, const float *bias,
                         const struct moe_layer_cfg *c) {
    size_t N = (size_t)c->B * c->T;
    int shown = 0;
    for (size_t n = 0; n < N && shown < 5; n++)
        for (int k = 0; k < c->K; k++) {
            size_t nk = n * c->K + k;
            if (gpu_topk[nk] == a->topk[nk]) continue;
            const float *p = a->probs + n * c->E;
            int e1 = a->topk[nk], e2 = gpu_topk[nk];
            double s1 = p[e1] + (bias ? bias[e1] : 0), s2 = p[e2] + (bias ? bias[e2] : 0);
            printf("    token %zu choice %d: cpu expert %d (score %.9g), gpu expert %d (score "
                   "%.9g): %s\n",
                   n, k, e1, s1, e2, s2, fabs(s1 - s2) < 1e-5 ? "a near-tie" : "NOT a tie");
            shown++;
            break;
        }
}

/* The layer configuration of a case. */
static struct moe_layer_cfg case_cfg(const struct moe_case *t) {
    struct moe_layer_cfg c;
    memset(&c, 0, sizeof c);
    c.B = t->B, c.T = t->T, c.C = t->C, c.E = t->E, c.K = t->K, c.F = t->F;
    c.capacity = t->capacity;
    c.aux_coef = 0.1;
    c.z_coef = 0.01;
    return c;
}

static void test_moe(const struct moe_case *mc_) {
    const struct moe_case *t = mc_;
    struct moe_layer_cfg c = case_cfg(t);
    const int N = c.B * c.T, C = c.C, E = c.E, K = c.K, F = c.F;
    const size_t NK = (size_t)N * K;
    char name[96];

    float *inp = hrandom((size_t)N * C, 70, 1), *rw = hrandom((size_t)E * C, 71, 0.3);
    float *bias = t->bias ? hrandom(E, 72, 0.05) : NULL;
    float *wg = hrandom((size_t)E * F * C, 73, 0.1), *wu = hrandom((size_t)E * F * C, 74, 0.1);
    float *wd = hrandom((size_t)E * C * F, 75, 0.1);
    float *d_inp = dfloats(inp, (size_t)N * C), *d_rw = dfloats(rw, (size_t)E * C);
    float *d_bias = bias ? dfloats(bias, E) : NULL;
    float *d_wg = dfloats(wg, (size_t)E * F * C), *d_wu = dfloats(wu, (size_t)E * F * C);
    float *d_wd = dfloats(wd, (size_t)E * C * F);

    /* router */
    struct moe_acts a;
    host_acts_alloc(&a, &c);
    long load_c[4096] = {0}, load_g[4096] = {0};
    long dropped_c = router_forward(&a, load_c, inp, rw, bias, &c);
    struct moe_acts_cuda g;
    dev_acts(&g, &a, &c, 0);
    long dropped_g = router_forward_cuda(&g, load_g, d_inp, d_rw, d_bias, &c, ctx);
    ctx_ok("router_forward_cuda");
#define LINE(what) (snprintf(name, sizeof name, "moe.%s.%s", t->name, what), name)
    compare_dev(LINE("router.logits"), g.logits, a.logits, (size_t)N * E, TOL_GEMM);
    compare_dev(LINE("router.probs"), g.probs, a.probs, (size_t)N * E, TOL_ORDER);
    compare_dev(LINE("router.lse"), g.lse, a.lse, N, TOL_ORDER);
    int *gt = (int *)xcalloc(NK, sizeof(int));
    down(gt, g.topk, sizeof(int) * NK);
    compare_ints(LINE("router.topk"), gt, a.topk, NK);
    if (memcmp(gt, a.topk, sizeof(int) * NK)) explain_topk(&a, gt, bias, &c);
    free(gt);
    compare_dev(LINE("router.gates"), g.gates, a.gates, NK, TOL_ORDER);
    compare_ints_dev(LINE("router.row_of (capacity, layout)"), g.row_of, a.row_of, NK);
    compare_ints_dev(LINE("router.expert_off"), g.expert_off, a.expert_off, E + 1);
    compare_ints(LINE("router.expert_off_host"), g.expert_off_host, a.expert_off, E + 1);
    compare_ints_dev(LINE("router.row_token"), g.row_token, a.row_token, a.expert_off[E]);
    long bad = 0;
    for (int e = 0; e < E; e++) bad += load_c[e] != load_g[e];
    report(LINE("router.load"), (double)bad, bad ? 1 : 0, 0);
    compare_scalar(LINE("router.dropped"), (double)dropped_g, (double)dropped_c, 0);

    /* losses, on the CPU's routing */
    struct moe_acts_cuda h;
    dev_acts(&h, &a, &c, 1);
    double aux_c, z_c, aux_g, z_g;
    router_losses(&aux_c, &z_c, &a, &c);
    router_losses_cuda(&aux_g, &z_g, &h, &c, ctx);
    ctx_ok("router_losses_cuda");
    compare_scalar(LINE("losses.aux"), aux_g, aux_c, 1e-12);
    compare_scalar(LINE("losses.z"), z_g, z_c, 1e-12);

    /* experts and combine, on the CPU's routing */
    float *out = hfloats((size_t)N * C), *d_out = dfloats(NULL, (size_t)N * C);
    experts_forward(out, &a, inp, wg, wu, wd, &c);
    experts_forward_cuda(d_out, &h, d_inp, d_wg, d_wu, d_wd, &c, ctx);
    size_t rows = (size_t)a.expert_off[E];
    compare_dev(LINE("experts.dispatch.xe"), h.xe, a.xe, rows * C, TOL_SAME);
    compare_dev(LINE("experts.h1"), h.h1, a.h1, rows * F, TOL_GEMM);
    compare_dev(LINE("experts.h2"), h.h2, a.h2, rows * F, TOL_GEMM);
    compare_dev(LINE("experts.ha (swiglu)"), h.ha, a.ha, rows * F, TOL_GEMM);
    compare_dev(LINE("experts.ye"), h.ye, a.ye, rows * C, TOL_GEMM);
    compare_dev(LINE("experts.combine.out"), d_out, out, (size_t)N * C, TOL_GEMM);

    /* backward from the CPU's saved activations; then again accumulating */
    for (int acc = 0; acc < 2; acc++) {
        c.accumulate = acc;
        struct moe_acts_cuda s;
        dev_acts(&s, &a, &c, 1);
        float *dout = hrandom((size_t)N * C, 80 + acc, 1), *dinp = hfloats((size_t)N * C);
        size_t nrw = (size_t)E * C, nw = (size_t)E * F * C;
        float *drw = hrandom(nrw, 81, 1), *dwg = hrandom(nw, 82, 1), *dwu = hrandom(nw, 83, 1);
        float *dwd = hrandom(nw, 84, 1);
        float *d_drw = dfloats(acc ? drw : NULL, nrw), *d_dwg = dfloats(acc ? dwg : NULL, nw);
        float *d_dwu = dfloats(acc ? dwu : NULL, nw), *d_dwd = dfloats(acc ? dwd : NULL, nw);
        float *scratch = hfloats(moe_backward_scratch_size(&c));
        float *d_scratch = dfloats(NULL, moe_backward_scratch_size(&c));
        float *d_dout = dfloats(dout, (size_t)N * C), *d_dinp = dfloats(NULL, (size_t)N * C);
        moe_backward(dinp, drw, dwg, dwu, dwd, scratch, dout, &a, inp, rw, wg, wu, wd, &c);
        moe_backward_cuda(d_dinp, d_drw, d_dwg, d_dwu, d_dwd, d_scratch, d_dout, &s, d_inp, d_rw,
                          d_wg, d_wu, d_wd, &c, ctx);
        const char *sfx = acc ? ".acc" : "";
        char what[64];
#define BWD(x) (snprintf(what, sizeof what, "backward.%s%s", x, sfx), LINE(what))
        compare_dev(BWD("dinp"), d_dinp, dinp, (size_t)N * C, TOL_CHAIN);
        compare_dev(BWD("drouter_w"), d_drw, drw, nrw, TOL_CHAIN);
        compare_dev(BWD("dw_gate"), d_dwg, dwg, nw, TOL_CHAIN);
        compare_dev(BWD("dw_up"), d_dwu, dwu, nw, TOL_CHAIN);
        compare_dev(BWD("dw_down"), d_dwd, dwd, nw, TOL_CHAIN);
#undef BWD
        free(dout), free(dinp), free(drw), free(dwg), free(dwu), free(dwd), free(scratch);
        free(s.expert_off_host);
    }
#undef LINE
    host_acts_free(&a);
    free(g.expert_off_host), free(h.expert_off_host);
    free(inp), free(rw), free(bias), free(wg), free(wu), free(wd), free(out);
    dfree_all();
}

/* The phases one at a time (the distributed step's pieces), each on the CPU's own inputs so
 * that a line measures that phase alone: moe_gather, expert_ffn_forward for every expert,
 * moe_combine, moe_combine_backward, expert_ffn_backward (writing and accumulating; idle
 * experts write zeros or add nothing), moe_router_backward (writing and accumulating). */
static void test_moe_phases(const struct moe_case *t) {
    struct moe_layer_cfg c = case_cfg(t);
    const int N = c.B * c.T, C = c.C, E = c.E, K = c.K, F = c.F;
    const size_t NK = (size_t)N * K, FC = (size_t)F * C, nw = (size_t)E * FC;
    char name[96];
#define LINE(what) (snprintf(name, sizeof name, "phase.%s.%s", t->name, what), name)

    float *inp = hrandom((size_t)N * C, 70, 1), *rw = hrandom((size_t)E * C, 71, 0.3);
    float *bias = t->bias ? hrandom(E, 72, 0.05) : NULL;
    float *wg = hrandom(nw, 73, 0.1), *wu = hrandom(nw, 74, 0.1), *wd = hrandom(nw, 75, 0.1);
    struct moe_acts a;
    host_acts_alloc(&a, &c);
    long load[4096] = {0};
    router_forward(&a, load, inp, rw, bias, &c);
    const int *off = a.expert_off;
    const size_t rows = (size_t)off[E];
    struct moe_acts_cuda d; /* the CPU's routing; the float outputs stay poisoned */
    dev_acts(&d, &a, &c, 0);
    up(d.topk, a.topk, sizeof(int) * NK);
    up(d.row_of, a.row_of, sizeof(int) * NK);
    up(d.row_token, a.row_token, sizeof(int) * NK);
    up(d.gates, a.gates, sizeof(float) * NK);
    float *d_inp = dfloats(inp, (size_t)N * C), *d_rw = dfloats(rw, (size_t)E * C);
    float *d_wg = dfloats(wg, nw), *d_wu = dfloats(wu, nw), *d_wd = dfloats(wd, nw);

    /* forward phases */
    moe_gather(a.xe, inp, a.row_token, (int)rows, C);
    moe_gather_cuda(d.xe, d_inp, d.row_token, (int)rows, C, ctx);
    compare_dev(LINE("moe_gather.xe"), d.xe, a.xe, rows * C, TOL_SAME);

    up(d.xe, a.xe, sizeof(float) * rows * C);
    for (int e = 0; e < E; e++) {
        size_t r0 = (size_t)off[e];
        int m = off[e + 1] - off[e];
        expert_ffn_forward(a.ye + r0 * C, a.h1 + r0 * F, a.h2 + r0 * F, a.ha + r0 * F,
                           a.xe + r0 * C, wg + e * FC, wu + e * FC, wd + e * FC, m, C, F);
        expert_ffn_forward_cuda(d.ye + r0 * C, d.h1 + r0 * F, d.h2 + r0 * F, d.ha + r0 * F,
                                d.xe + r0 * C, d_wg + e * FC, d_wu + e * FC, d_wd + e * FC, m, C,
                                F, ctx);
    }
    compare_dev(LINE("expert_ffn_forward.h1"), d.h1, a.h1, rows * F, TOL_GEMM);
    compare_dev(LINE("expert_ffn_forward.h2"), d.h2, a.h2, rows * F, TOL_GEMM);
    compare_dev(LINE("expert_ffn_forward.ha"), d.ha, a.ha, rows * F, TOL_GEMM);
    compare_dev(LINE("expert_ffn_forward.ye"), d.ye, a.ye, rows * C, TOL_GEMM);

    up(d.ye, a.ye, sizeof(float) * rows * C);
    float *out = hfloats((size_t)N * C), *d_out = dfloats(NULL, (size_t)N * C);
    moe_combine(out, a.ye, a.row_of, a.gates, N, K, C);
    moe_combine_cuda(d_out, d.ye, d.row_of, d.gates, N, K, C, ctx);
    compare_dev(LINE("moe_combine.out"), d_out, out, (size_t)N * C, TOL_SAME);

    /* the router's saved values, which the router backward reads */
    up(d.probs, a.probs, sizeof(float) * N * E);
    up(d.lse, a.lse, sizeof(float) * N);
    float *dout = hrandom((size_t)N * C, 85, 1), *d_dout = dfloats(dout, (size_t)N * C);
    for (int acc = 0; acc < 2; acc++) {
        c.accumulate = acc;
        const char *sfx = acc ? ".acc" : "";
        char what[64];
#define PH(x) (snprintf(what, sizeof what, "%s%s", x, sfx), LINE(what))
        size_t n_scr = moe_backward_scratch_size(&c);
        float *scratch = hfloats(n_scr), *d_scratch = dfloats(NULL, n_scr);
        struct moe_scratch s, ds;
        moe_backward_scratch(&s, scratch, &c);
        moe_backward_scratch(&ds, d_scratch, &c); /* the CPU's carving, on device memory */

        moe_combine_backward(s.dye, s.dgates, dout, a.ye, a.row_of, a.gates, N, K, C);
        moe_combine_backward_cuda(ds.dye, ds.dgates, d_dout, d.ye, d.row_of, d.gates, N, K, C,
                                  ctx);
        compare_dev(PH("moe_combine_backward.dye"), ds.dye, s.dye, rows * C, TOL_SAME);
        compare_dev(PH("moe_combine_backward.dgates"), ds.dgates, s.dgates, NK, TOL_ORDER);

        /* the experts on the CPU's dye, saved activations and (when accumulating) gradients */
        up(ds.dye, s.dye, sizeof(float) * rows * C);
        up(d.h1, a.h1, sizeof(float) * rows * F);
        up(d.h2, a.h2, sizeof(float) * rows * F);
        up(d.ha, a.ha, sizeof(float) * rows * F);
        float *dwg = hrandom(nw, 86, 1), *dwu = hrandom(nw, 87, 1), *dwd = hrandom(nw, 88, 1);
        float *d_dwg = dfloats(acc ? dwg : NULL, nw), *d_dwu = dfloats(acc ? dwu : NULL, nw);
        float *d_dwd = dfloats(acc ? dwd : NULL, nw);
        for (int e = 0; e < E; e++) {
            size_t r0 = (size_t)off[e];
            int m = off[e + 1] - off[e];
            expert_ffn_backward(s.dxe + r0 * C, dwg + e * FC, dwu + e * FC, dwd + e * FC,
                                s.dh1 + r0 * F, s.dh2 + r0 * F, s.dye + r0 * C, a.xe + r0 * C,
                                a.h1 + r0 * F, a.h2 + r0 * F, a.ha + r0 * F, wg + e * FC,
                                wu + e * FC, wd + e * FC, m, C, F, acc);
            expert_ffn_backward_cuda(ds.dxe + r0 * C, d_dwg + e * FC, d_dwu + e * FC,
                                     d_dwd + e * FC, ds.dh1 + r0 * F, ds.dh2 + r0 * F,
                                     ds.dye + r0 * C, d.xe + r0 * C, d.h1 + r0 * F,
                                     d.h2 + r0 * F, d.ha + r0 * F, d_wg + e * FC, d_wu + e * FC,
                                     d_wd + e * FC, m, C, F, acc, ctx);
        }
        compare_dev(PH("expert_ffn_backward.dxe"), ds.dxe, s.dxe, rows * C, TOL_CHAIN);
        compare_dev(PH("expert_ffn_backward.dw_gate"), d_dwg, dwg, nw, TOL_CHAIN);
        compare_dev(PH("expert_ffn_backward.dw_up"), d_dwu, dwu, nw, TOL_CHAIN);
        compare_dev(PH("expert_ffn_backward.dw_down"), d_dwd, dwd, nw, TOL_CHAIN);

        /* the router on the CPU's dgates and dxe */
        up(ds.dgates, s.dgates, sizeof(float) * NK);
        up(ds.dxe, s.dxe, sizeof(float) * rows * C);
        float *dinp = hfloats((size_t)N * C), *drw = hrandom((size_t)E * C, 89, 1);
        float *d_dinp = dfloats(NULL, (size_t)N * C);
        float *d_drw = dfloats(acc ? drw : NULL, (size_t)E * C);
        moe_router_backward(dinp, drw, &s, &a, inp, rw, &c);
        moe_router_backward_cuda(d_dinp, d_drw, &ds, &d, d_inp, d_rw, &c, ctx);
        compare_dev(PH("moe_router_backward.dprobs"), ds.dprobs, s.dprobs, (size_t)N * E,
                    TOL_SAME);
        compare_dev(PH("moe_router_backward.dlogits"), ds.dlogits, s.dlogits, (size_t)N * E,
                    TOL_ORDER);
        compare_dev(PH("moe_router_backward.dinp"), d_dinp, dinp, (size_t)N * C, TOL_CHAIN);
        compare_dev(PH("moe_router_backward.drouter_w"), d_drw, drw, (size_t)E * C, TOL_CHAIN);
#undef PH
        free(scratch), free(dwg), free(dwu), free(dwd), free(dinp), free(drw);
    }
#undef LINE
    host_acts_free(&a);
    free(d.expert_off_host);
    free(inp), free(rw), free(bias), free(wg), free(wu), free(wd), free(out), free(dout);
    dfree_all();
}

/* bf16 mode: the experts and the MoE backward against the fp32 CPU, as sanity bounds */
static void test_moe_bf16(void) {
    struct moe_layer_cfg c;
    memset(&c, 0, sizeof c);
    c.B = 2, c.T = 64, c.C = 128, c.E = 8, c.K = 2, c.F = 256, c.capacity = 64 * 2;
    c.aux_coef = 0.1, c.z_coef = 0.01;
    const int N = c.B * c.T, C = c.C, E = c.E, F = c.F;
    float *inp = hrandom((size_t)N * C, 90, 1), *rw = hrandom((size_t)E * C, 91, 0.3);
    size_t nw = (size_t)E * F * C;
    float *wg = hrandom(nw, 92, 0.1), *wu = hrandom(nw, 93, 0.1), *wd = hrandom(nw, 94, 0.1);
    struct moe_acts a;
    host_acts_alloc(&a, &c);
    long load[8] = {0};
    router_forward(&a, load, inp, rw, NULL, &c);
    float *out = hfloats((size_t)N * C);
    experts_forward(out, &a, inp, wg, wu, wd, &c);
    struct moe_acts_cuda h;
    dev_acts(&h, &a, &c, 1);
    float *d_inp = dfloats(inp, (size_t)N * C), *d_rw = dfloats(rw, (size_t)E * C);
    float *d_wg = dfloats(wg, nw), *d_wu = dfloats(wu, nw), *d_wd = dfloats(wd, nw);
    float *d_out = dfloats(NULL, (size_t)N * C);
    experts_forward_cuda(d_out, &h, d_inp, d_wg, d_wu, d_wd, &c, ctx);
    compare_dev("bf16.moe.experts.combine.out", d_out, out, (size_t)N * C, TOL_BF16);

    struct moe_acts_cuda s;
    dev_acts(&s, &a, &c, 1); /* the CPU's fp32 saved activations */
    float *dout = hrandom((size_t)N * C, 95, 1), *dinp = hfloats((size_t)N * C);
    float *drw = hfloats((size_t)E * C), *dwg = hfloats(nw), *dwu = hfloats(nw), *dwd = hfloats(nw);
    float *scratch = hfloats(moe_backward_scratch_size(&c));
    moe_backward(dinp, drw, dwg, dwu, dwd, scratch, dout, &a, inp, rw, wg, wu, wd, &c);
    float *d_dout = dfloats(dout, (size_t)N * C), *d_dinp = dfloats(NULL, (size_t)N * C);
    float *d_drw = dfloats(NULL, (size_t)E * C), *d_dwg = dfloats(NULL, nw);
    float *d_dwu = dfloats(NULL, nw), *d_dwd = dfloats(NULL, nw);
    float *d_scr = dfloats(NULL, moe_backward_scratch_size(&c));
    moe_backward_cuda(d_dinp, d_drw, d_dwg, d_dwu, d_dwd, d_scr, d_dout, &s, d_inp, d_rw, d_wg,
                      d_wu, d_wd, &c, ctx);
    compare_dev("bf16.moe.backward.dinp", d_dinp, dinp, (size_t)N * C, TOL_BF16_CHAIN);
    compare_dev("bf16.moe.backward.drouter_w", d_drw, drw, (size_t)E * C, TOL_BF16_CHAIN);
    compare_dev("bf16.moe.backward.dw_gate", d_dwg, dwg, nw, TOL_BF16_CHAIN);
    compare_dev("bf16.moe.backward.dw_up", d_dwu, dwu, nw, TOL_BF16_CHAIN);
    compare_dev("bf16.moe.backward.dw_down", d_dwd, dwd, nw, TOL_BF16_CHAIN);
    host_acts_free(&a);
    free(h.expert_off_host), free(s.expert_off_host);
    free(inp), free(rw), free(wg), free(wu), free(wd), free(out), free(dout), free(dinp);
    free(drw), free(dwg), free(dwu), free(dwd), free(scratch);
    dfree_all();
}

/* ---- optimizer ---- */

static void test_adamw(void) {
    const size_t n = 3001, n_decay = 2000;
    float *p = hrandom(n, 100, 0.1), *gr = hrandom(n, 101, 0.01), *m = hrandom(n, 102, 0.001);
    float *v = hrandom(n, 103, 1e-4);
    for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i]; /* second moments are non-negative */
    float *d_p = dfloats(p, n), *d_g = dfloats(gr, n), *d_m = dfloats(m, n), *d_v = dfloats(v, n);
    adamw_update(p, gr, m, v, n, n_decay, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, 3);
    adamw_update_cuda(d_p, d_g, d_m, d_v, n, n_decay, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, 3,
                      ctx);
    compare_dev("adamw.params", d_p, p, n, TOL_SAME);
    compare_dev("adamw.m", d_m, m, n, TOL_SAME);
    compare_dev("adamw.v", d_v, v, n, TOL_SAME);

    /* the out-of-place form: the state written into a second arena, the inputs left alone */
    float *p0 = hrandom(n, 105, 0.1), *g0 = hrandom(n, 106, 0.01), *m0 = hrandom(n, 107, 0.001);
    float *v0 = hrandom(n, 108, 1e-4);
    for (size_t i = 0; i < n; i++) v0[i] = v0[i] * v0[i];
    float *po = hfloats(n), *mo = hfloats(n), *vo = hfloats(n);
    float *d_p0 = dfloats(p0, n), *d_g0 = dfloats(g0, n), *d_m0 = dfloats(m0, n);
    float *d_v0 = dfloats(v0, n);
    float *d_po = dfloats(NULL, n), *d_mo = dfloats(NULL, n), *d_vo = dfloats(NULL, n);
    adamw_update_into(po, mo, vo, p0, g0, m0, v0, n, n_decay, 2e-3f, 0.9f, 0.95f, 1e-8f, 0.1f,
                      1.0f, 5);
    adamw_update_into_cuda(d_po, d_mo, d_vo, d_p0, d_g0, d_m0, d_v0, n, n_decay, 2e-3f, 0.9f,
                           0.95f, 1e-8f, 0.1f, 1.0f, 5, ctx);
    compare_dev("adamw_into.params_out", d_po, po, n, TOL_SAME);
    compare_dev("adamw_into.m_out", d_mo, mo, n, TOL_SAME);
    compare_dev("adamw_into.v_out", d_vo, vo, n, TOL_SAME);
    compare_dev("adamw_into.params_in (unchanged)", d_p0, p0, n, 0);
    compare_dev("adamw_into.m_in (unchanged)", d_m0, m0, n, 0);
    compare_dev("adamw_into.v_in (unchanged)", d_v0, v0, n, 0);
    free(p0), free(g0), free(m0), free(v0), free(po), free(mo), free(vo);
    /* the gradient norm's sum of squares: fixed chunks of 65536, added in order */
    const size_t big = 200003;
    float *x = hrandom(big, 104, 1);
    double ref = 0;
    for (size_t c0 = 0; c0 < big; c0 += 65536) {
        double s = 0;
        for (size_t i = c0; i < big && i < c0 + 65536; i++) s += (double)x[i] * x[i];
        ref += s;
    }
    float *d_x = dfloats(x, big);
    double got = sum_squares_cuda(d_x, big, ctx);
    ctx_ok("sum_squares_cuda");
    compare_scalar("adamw.sum_squares (grad norm)", got, ref, 1e-12);
    free(p), free(gr), free(m), free(v), free(x);
    dfree_all();
}

/* ---- the whole model ---- */

static const char *tensor_name(const struct model_config *cfg, int i) {
    struct model_tensor_info ti;
    model_tensor_info(cfg, i, &ti);
    return ti.name;
}

static void compare_arena(const char *prefix, const struct model *cpu, const real *gpu_mem,
                          const real *cpu_mem, double tol) {
    size_t off = 0;
    char name[96];
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        snprintf(name, sizeof name, "%s.%s", prefix, tensor_name(&cpu->cfg, i));
        compare(name, gpu_mem + off, cpu_mem + off, cpu->tensor_sizes[i], tol);
        off += cpu->tensor_sizes[i];
    }
}

static void alloc_pair(struct model *cpu, struct model *mirror, struct model_cuda *gpu,
                       const struct model_config *cfg, int B) {
    char why[256];
    if (model_alloc(cpu, cfg, B) != 0 || (mirror && model_alloc(mirror, cfg, B) != 0)) {
        fprintf(stderr, "check_gpu: out of host memory\n");
        exit(2);
    }
    if (model_alloc_cuda(gpu, cfg, B, ctx, why, sizeof why) != 0) {
        fprintf(stderr, "check_gpu: model_alloc_cuda: %s\n", why);
        exit(2);
    }
}

static void test_model_init(void) {
    struct model_config cfg = gpu_test_model();
    struct model cpu, mirror;
    struct model_cuda gpu;
    alloc_pair(&cpu, &mirror, &gpu, &cfg, 1);
    model_init(&cpu, 77);
    model_init_cuda(&gpu, 77);
    model_download_cuda(&mirror, &gpu);
    ctx_ok("model_init_cuda");
    compare_arena("model.init", &cpu, mirror.param_mem, cpu.param_mem, TOL_SAME);
    model_free_cuda(&gpu);
    model_free(&cpu), model_free(&mirror);
}

/* forward, backward, update (from identical gradients) and a second forward; then the same
 * batch as two micro-batches */
static void test_model_step(const char *mode, double tol_fwd, double tol_grad, double tol_loss,
                            int exact_routing) {
    struct model_config cfg = gpu_test_model();
    cfg.bias_balancing = 1; /* exercises the bias update too */
    const int B = GPU_TEST_B, T = cfg.seq_len, N = B * T;
    struct model cpu, mirror;
    struct model_cuda gpu;
    char name[96];
    alloc_pair(&cpu, &mirror, &gpu, &cfg, B);
    gpu_test_init(&cpu);
    for (size_t i = 0; i < cpu.n_buffers; i++) cpu.buffer_mem[i] = 0.01f * (float)((i % 3) - 1.0);
    model_upload_cuda(&gpu, &cpu);
    ctx_ok("model_upload_cuda");
    int *tok = (int *)xcalloc(N, sizeof(int)), *tgt = (int *)xcalloc(N, sizeof(int));
    gpu_test_batch(tok, tgt, B, T, 0, GPU_TEST_SEED);

#define LINE(what) (snprintf(name, sizeof name, "%smodel.%s", mode, what), name)
    double lc = model_forward(&cpu, tok, tgt, B, T);
    double lg = model_forward_cuda(&gpu, tok, tgt, B, T);
    ctx_ok("model_forward_cuda");
    compare_scalar(LINE("forward.loss"), lg, lc, tol_loss);
    compare_scalar(LINE("forward.ce"), gpu.stats.ce, cpu.stats.ce, tol_loss);
    compare_scalar(LINE("forward.aux"), gpu.stats.aux, cpu.stats.aux, tol_loss);
    compare_scalar(LINE("forward.z"), gpu.stats.z, cpu.stats.z, tol_loss * 10);
    compare_dev(LINE("forward.logits"), model_logits_cuda(&gpu), model_logits(&cpu),
                (size_t)N * cfg.vocab, tol_fwd);
    /* routing: the int arenas share a layout; topk and row_of of every layer come first */
    int *ints = (int *)xcalloc(gpu.n_int, sizeof(int));
    down(ints, gpu.int_mem, sizeof(int) * gpu.n_int);
    size_t NKL = (size_t)cfg.n_layers * N * cfg.top_k;
    if (exact_routing) {
        compare_ints(LINE("forward.routing.topk"), ints, cpu.int_mem, NKL);
        compare_ints(LINE("forward.routing.row_of"), ints + NKL, cpu.int_mem + NKL, NKL);
        compare_scalar(LINE("forward.dropped"), (double)gpu.stats.dropped,
                       (double)cpu.stats.dropped, 0);
    } else { /* bf16 activations move router inputs by ~1e-2: close choices may flip */
        long flips = 0;
        for (size_t i = 0; i < NKL; i++) flips += ints[i] != cpu.int_mem[i];
        printf("  %sforward: %ld of %zu top-k choices differ from the fp32 CPU (not a check)\n",
               mode, flips, NKL);
    }
    free(ints);

    model_backward(&cpu, tok, tgt, B, T, 1.0, 0);
    model_backward_cuda(&gpu, tok, tgt, B, T, 1.0, 0);
    model_download_cuda(&mirror, &gpu);
    ctx_ok("model_backward_cuda");
    snprintf(name, sizeof name, "%smodel.grad", mode);
    compare_arena(name, &cpu, mirror.grad_mem, cpu.grad_mem, tol_grad);

    /* the update from the CPU's gradients, so this line measures the optimizer alone */
    struct adamw_config opt = gpu_test_adamw();
    CK(cudaMemcpyAsync(gpu.grad_mem, cpu.grad_mem, sizeof(float) * cpu.n_params,
                       cudaMemcpyHostToDevice, cuda_ctx_stream(ctx)));
    double nc = model_update(&cpu, &opt);
    double ng = model_update_cuda(&gpu, &opt);
    ctx_ok("model_update_cuda");
    compare_scalar(LINE("update.grad_norm"), ng, nc, 1e-10);
    model_download_cuda(&mirror, &gpu);
    snprintf(name, sizeof name, "%smodel.update", mode);
    compare_arena(name, &cpu, mirror.param_mem, cpu.param_mem, TOL_SAME);
    if (exact_routing) /* the bias update counts the routing's choices */
        compare(LINE("update.expert_bias"), mirror.buffer_mem, cpu.buffer_mem, cpu.n_buffers, 0);

    /* a second forward on the updated weights (the bf16 copy refreshed by the optimizer) */
    model_upload_cuda(&gpu, &cpu); /* identical weights: the line measures the forward */
    gpu_test_batch(tok, tgt, B, T, 1, GPU_TEST_SEED);
    lc = model_forward(&cpu, tok, tgt, B, T);
    lg = model_forward_cuda(&gpu, tok, tgt, B, T);
    ctx_ok("model_forward_cuda");
    compare_scalar(LINE("forward_after_update.loss"), lg, lc, tol_loss);

    /* micro-batches: 2 + 2 sequences, loss_scale 1/2, the second accumulating */
    for (int part = 0; part < 2; part++) {
        const int *pt = tok + (size_t)part * 2 * T, *pg = tgt + (size_t)part * 2 * T;
        model_forward(&cpu, pt, pg, 2, T);
        model_backward(&cpu, pt, pg, 2, T, 0.5, part);
        model_forward_cuda(&gpu, pt, pg, 2, T);
        model_backward_cuda(&gpu, pt, pg, 2, T, 0.5, part);
    }
    model_download_cuda(&mirror, &gpu);
    ctx_ok("micro-batches");
    snprintf(name, sizeof name, "%smodel.microbatch.grad", mode);
    compare_arena(name, &cpu, mirror.grad_mem, cpu.grad_mem, tol_grad);
#undef LINE
    free(tok), free(tgt);
    model_free_cuda(&gpu);
    model_free(&cpu), model_free(&mirror);
}

/* ---- the hooks for where experts run ---- */

/* A trivial local hook: the experts of this very model, run by the hook (the distributed
 * step's hooks move the rows to other slots in between). fail_layer >= 0 makes the expert
 * hooks abandon the pass there; done[] records layer_done's calls in order. */
struct local_hooks {
    struct model *cpu;      // one of the two is set
    struct model_cuda *gpu;
    int fail_layer;
    int done[16], n_done;
};

static int cpu_experts_forward(void *hctx, int l, struct moe_acts *a,
                               const struct moe_layer_cfg *c) {
    struct local_hooks *h = (struct local_hooks *)hctx;
    if (l == h->fail_layer) return -1;
    const struct model_params *p = &h->cpu->params;
    int C = c->C, F = c->F;
    size_t FC = (size_t)F * C, w = (size_t)l * c->E * FC;
    for (int e = 0; e < c->E; e++) {
        size_t r0 = (size_t)a->expert_off[e], o = w + e * FC;
        expert_ffn_forward(a->ye + r0 * C, a->h1 + r0 * F, a->h2 + r0 * F, a->ha + r0 * F,
                           a->xe + r0 * C, p->w_gate + o, p->w_up + o, p->w_down + o,
                           a->expert_off[e + 1] - a->expert_off[e], C, F);
    }
    return 0;
}

static int cpu_experts_backward(void *hctx, int l, const struct moe_acts *a, struct moe_scratch *s,
                                const struct moe_layer_cfg *c) {
    struct local_hooks *h = (struct local_hooks *)hctx;
    if (l == h->fail_layer) return -1;
    const struct model_params *p = &h->cpu->params, *g = &h->cpu->grads;
    int C = c->C, F = c->F;
    size_t FC = (size_t)F * C, w = (size_t)l * c->E * FC;
    for (int e = 0; e < c->E; e++) {
        size_t r0 = (size_t)a->expert_off[e], o = w + e * FC;
        expert_ffn_backward(s->dxe + r0 * C, g->w_gate + o, g->w_up + o, g->w_down + o,
                            s->dh1 + r0 * F, s->dh2 + r0 * F, s->dye + r0 * C, a->xe + r0 * C,
                            a->h1 + r0 * F, a->h2 + r0 * F, a->ha + r0 * F, p->w_gate + o,
                            p->w_up + o, p->w_down + o, a->expert_off[e + 1] - a->expert_off[e],
                            C, F, c->accumulate);
    }
    return 0;
}

static int gpu_experts_forward(void *hctx, int l, struct moe_acts_cuda *a,
                               const struct moe_layer_cfg *c) {
    struct local_hooks *h = (struct local_hooks *)hctx;
    if (l == h->fail_layer) return -1;
    const struct model_params *p = &h->gpu->params;
    const int *off = a->expert_off_host;
    int C = c->C, F = c->F;
    size_t FC = (size_t)F * C, w = (size_t)l * c->E * FC;
    for (int e = 0; e < c->E; e++) {
        size_t r0 = (size_t)off[e], o = w + e * FC;
        expert_ffn_forward_cuda(a->ye + r0 * C, a->h1 + r0 * F, a->h2 + r0 * F, a->ha + r0 * F,
                                a->xe + r0 * C, p->w_gate + o, p->w_up + o, p->w_down + o,
                                off[e + 1] - off[e], C, F, h->gpu->ctx);
    }
    return 0;
}

static int gpu_experts_backward(void *hctx, int l, const struct moe_acts_cuda *a,
                                struct moe_scratch *s, const struct moe_layer_cfg *c) {
    struct local_hooks *h = (struct local_hooks *)hctx;
    if (l == h->fail_layer) return -1;
    const struct model_params *p = &h->gpu->params, *g = &h->gpu->grads;
    const int *off = a->expert_off_host;
    int C = c->C, F = c->F;
    size_t FC = (size_t)F * C, w = (size_t)l * c->E * FC;
    for (int e = 0; e < c->E; e++) {
        size_t r0 = (size_t)off[e], o = w + e * FC;
        expert_ffn_backward_cuda(s->dxe + r0 * C, g->w_gate + o, g->w_up + o, g->w_down + o,
                                 s->dh1 + r0 * F, s->dh2 + r0 * F, s->dye + r0 * C,
                                 a->xe + r0 * C, a->h1 + r0 * F, a->h2 + r0 * F, a->ha + r0 * F,
                                 p->w_gate + o, p->w_up + o, p->w_down + o, off[e + 1] - off[e],
                                 C, F, c->accumulate, h->gpu->ctx);
    }
    return 0;
}

static int record_layer_done(void *hctx, int l) {
    struct local_hooks *h = (struct local_hooks *)hctx;
    if (h->n_done < 16) h->done[h->n_done] = l;
    h->n_done++;
    return 0;
}

/* layer_done's calls of one backward: L - 1 down to 0, once each; counts the wrong ones */
static long layer_done_errors(const struct local_hooks *h, int L) {
    long bad = h->n_done != L;
    for (int i = 0; i < h->n_done && i < 16; i++) bad += h->done[i] != L - 1 - i;
    return bad;
}

/* model_forward_exec_cuda / model_backward_exec_cuda with the trivial local hooks: equal to the
 * GPU's plain path bit for bit (the same kernels in the same order), and to the CPU's
 * exec-hook path within the whole-model tolerances; micro-batches accumulate through the
 * hooks; a hook's failure abandons the pass without a context error. */
static void test_model_exec(void) {
    struct model_config cfg = gpu_test_model();
    const int B = GPU_TEST_B, T = cfg.seq_len, N = B * T, L = cfg.n_layers;
    struct model cpu, mirror;
    struct model_cuda gpu;
    alloc_pair(&cpu, &mirror, &gpu, &cfg, B);
    gpu_test_init(&cpu);
    model_upload_cuda(&gpu, &cpu);
    ctx_ok("model_upload_cuda");
    int *tok = (int *)xcalloc(N, sizeof(int)), *tgt = (int *)xcalloc(N, sizeof(int));
    gpu_test_batch(tok, tgt, B, T, 2, GPU_TEST_SEED);
    size_t n_logits = (size_t)N * cfg.vocab;
    float *logits_plain = hfloats(n_logits), *grads_plain = hfloats(cpu.n_params);

    struct local_hooks hc = {.cpu = &cpu, .fail_layer = -1};
    struct local_hooks hg = {.gpu = &gpu, .fail_layer = -1};
    struct model_exec xc = {&hc, cpu_experts_forward, cpu_experts_backward, record_layer_done,
                            NULL};
    struct model_exec_cuda xg = {&hg, gpu_experts_forward, gpu_experts_backward,
                                 record_layer_done};

    /* the CPU's hook path is its plain path (so the hook is a fair stand-in) */
    double lc_plain = model_forward(&cpu, tok, tgt, B, T);
    model_backward(&cpu, tok, tgt, B, T, 1.0, 0);
    memcpy(grads_plain, cpu.grad_mem, sizeof(float) * cpu.n_params);
    double lc;
    int rc_f = model_forward_exec(&cpu, tok, tgt, B, T, &xc, &lc);
    int rc_b = model_backward_exec(&cpu, tok, tgt, B, T, 1.0, 0, &xc);
    report("exec.cpu.return_codes", rc_f != 0 || rc_b != 0, rc_f != 0 || rc_b != 0, 0);
    compare_scalar("exec.cpu.hooks_vs_plain.loss", lc, lc_plain, 0);
    compare("exec.cpu.hooks_vs_plain.grad", cpu.grad_mem, grads_plain, cpu.n_params, 0);

    /* the GPU's hook path is its plain path, bit for bit */
    double lg_plain = model_forward_cuda(&gpu, tok, tgt, B, T);
    model_backward_cuda(&gpu, tok, tgt, B, T, 1.0, 0);
    down(logits_plain, model_logits_cuda(&gpu), sizeof(float) * n_logits);
    model_download_cuda(&mirror, &gpu);
    ctx_ok("plain forward and backward");
    memcpy(grads_plain, mirror.grad_mem, sizeof(float) * cpu.n_params);
    double lg;
    rc_f = model_forward_exec_cuda(&gpu, tok, tgt, B, T, &xg, &lg);
    rc_b = model_backward_exec_cuda(&gpu, tok, tgt, B, T, 1.0, 0, &xg);
    ctx_ok("model_forward_exec_cuda / model_backward_exec_cuda");
    report("exec.gpu.return_codes", rc_f != 0 || rc_b != 0, rc_f != 0 || rc_b != 0, 0);
    compare_scalar("exec.gpu.hooks_vs_plain.loss", lg, lg_plain, 0);
    compare_dev("exec.gpu.hooks_vs_plain.logits", model_logits_cuda(&gpu), logits_plain,
                n_logits, 0);
    model_download_cuda(&mirror, &gpu);
    compare("exec.gpu.hooks_vs_plain.grad", mirror.grad_mem, grads_plain, cpu.n_params, 0);

    /* the GPU's hook path against the CPU's */
    compare_scalar("exec.loss", lg, lc, TOL_LOSS);
    compare_dev("exec.logits", model_logits_cuda(&gpu), model_logits(&cpu), n_logits,
                TOL_MODEL_FWD);
    compare_arena("exec.grad", &cpu, mirror.grad_mem, cpu.grad_mem, TOL_MODEL_GRAD);
    long bad = layer_done_errors(&hc, L) + layer_done_errors(&hg, L);
    report("exec.layer_done (L-1 .. 0, once each)", (double)bad, bad ? 1 : 0, 0);

    /* layer_done alone (a pod of one slot): the experts run here, the plain path's numbers */
    struct local_hooks hd = {.gpu = &gpu, .fail_layer = -1};
    struct model_exec_cuda xd = {&hd, NULL, NULL, record_layer_done};
    rc_f = model_forward_exec_cuda(&gpu, tok, tgt, B, T, &xd, &lg);
    rc_b = model_backward_exec_cuda(&gpu, tok, tgt, B, T, 1.0, 0, &xd);
    model_download_cuda(&mirror, &gpu);
    ctx_ok("layer_done alone");
    bad = (rc_f != 0 || rc_b != 0) + layer_done_errors(&hd, L);
    report("exec.layer_done_only (return codes, order)", (double)bad, bad ? 1 : 0, 0);
    compare("exec.layer_done_only.grad", mirror.grad_mem, grads_plain, cpu.n_params, 0);

    /* micro-batches 2 + 2, loss_scale 1/2, the second accumulating through the hooks */
    for (int part = 0; part < 2; part++) {
        const int *pt = tok + (size_t)part * 2 * T, *pg = tgt + (size_t)part * 2 * T;
        rc_f = model_forward_exec(&cpu, pt, pg, 2, T, &xc, &lc);
        rc_b = model_backward_exec(&cpu, pt, pg, 2, T, 0.5, part, &xc);
        rc_f |= model_forward_exec_cuda(&gpu, pt, pg, 2, T, &xg, &lg);
        rc_b |= model_backward_exec_cuda(&gpu, pt, pg, 2, T, 0.5, part, &xg);
    }
    model_download_cuda(&mirror, &gpu);
    ctx_ok("exec micro-batches");
    report("exec.microbatch.return_codes", rc_f != 0 || rc_b != 0, rc_f != 0 || rc_b != 0, 0);
    compare_arena("exec.microbatch.grad", &cpu, mirror.grad_mem, cpu.grad_mem, TOL_MODEL_GRAD);

    /* a failing hook abandons the pass (-1, loss NaN) and leaves the context usable */
    hg.fail_layer = L - 1;
    bad = 0;
    bad += model_forward_exec_cuda(&gpu, tok, tgt, B, T, &xg, &lg) != -1 || !isnan(lg);
    bad += cuda_ctx_error(ctx) != NULL;
    hg.fail_layer = -1;
    bad += model_forward_exec_cuda(&gpu, tok, tgt, B, T, &xg, &lg) != 0;
    hg.fail_layer = 0;
    bad += model_backward_exec_cuda(&gpu, tok, tgt, B, T, 1.0, 0, &xg) != -1;
    bad += cuda_ctx_error(ctx) != NULL;
    report("exec.failing_hook (abandons, no ctx error)", (double)bad, bad ? 1 : 0, 0);
    hg.fail_layer = -1;
    lg = model_forward_cuda(&gpu, tok, tgt, B, T);
    ctx_ok("forward after a failed hook");
    compare_scalar("exec.forward_after_failed_hook.loss", lg, lg_plain, 0);

    free(tok), free(tgt), free(logits_plain), free(grads_plain);
    model_free_cuda(&gpu);
    model_free(&cpu), model_free(&mirror);
}

/* 20 training steps from the same start on the same batches; the loss curves must agree */
static void test_train(const char *mode, double tol) {
    struct model_config cfg = gpu_test_model();
    struct adamw_config opt = gpu_test_adamw();
    const int B = GPU_TEST_B, T = cfg.seq_len, N = B * T;
    struct model cpu;
    struct model_cuda gpu;
    alloc_pair(&cpu, NULL, &gpu, &cfg, B);
    gpu_test_init(&cpu);
    model_upload_cuda(&gpu, &cpu);
    int *tok = (int *)xcalloc(N, sizeof(int)), *tgt = (int *)xcalloc(N, sizeof(int));
    double max_abs = 0, max_rel = 0;
    printf("  %straining %d steps, B %d T %d:   step  loss(cpu)     loss(gpu)     rel diff   "
           "dropped cpu/gpu\n",
           mode, GPU_TEST_STEPS, B, T);
    for (long s = 0; s < GPU_TEST_STEPS; s++) {
        gpu_test_batch(tok, tgt, B, T, s, GPU_TEST_SEED);
        double lc = model_forward(&cpu, tok, tgt, B, T);
        double lg = model_forward_cuda(&gpu, tok, tgt, B, T);
        model_backward(&cpu, tok, tgt, B, T, 1.0, 0);
        model_backward_cuda(&gpu, tok, tgt, B, T, 1.0, 0);
        model_update(&cpu, &opt);
        model_update_cuda(&gpu, &opt);
        ctx_ok("training step");
        double d = fabs(lg - lc), r = d / fabs(lc);
        if (!(d <= max_abs)) max_abs = d; /* NaN sticks */
        if (!(r <= max_rel)) max_rel = r;
        printf("  %40s %4ld  %.9f  %.9f  %.3e  %ld/%ld\n", "", s, lc, lg, r, cpu.stats.dropped,
               gpu.stats.dropped);
    }
    char name[96];
    snprintf(name, sizeof name, "%strain%d.loss_curve", mode, GPU_TEST_STEPS);
    report(name, max_abs, max_rel, tol);
    free(tok), free(tgt);
    model_free_cuda(&gpu);
    model_free(&cpu);
}

/* ---- driver ---- */

static void use_ctx(enum cuda_precision prec) {
    char why[512];
    if (ctx) cuda_ctx_destroy(ctx);
    ctx = cuda_ctx_create(prec, why, sizeof why);
    if (!ctx) {
        fprintf(stderr, "check_gpu: %s\n", why);
        exit(2);
    }
}

int main(int argc, char **argv) {
    int quick = 0, bf16 = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--no-bf16")) bf16 = 0;
        else {
            fprintf(stderr, "usage: check_gpu [--quick] [--no-bf16]\n");
            return 2;
        }
    }
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        fprintf(stderr, "check_gpu: no CUDA device (%s)\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "count 0");
        return 2;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# device: %s, %d SMs, compute capability %d.%d\n", prop.name,
           prop.multiProcessorCount, prop.major, prop.minor);
    printf("%-44s %10s %10s %8s %s\n", "name", "max_abs", "max_rel", "tol", "result");

    use_ctx(CUDA_FP32);
    test_encoder();
    test_rmsnorm(96);
    test_rmsnorm(1000);
    test_matmul("", TOL_GEMM);
    test_rope();
    static const int hds[] = {16, 64, 128, 256};
    for (int i = 0; i < 4; i++) {
        test_attention("", CUDA_ATTN_FUSED, hds[i], TOL_GEMM, TOL_CHAIN);
        test_attention("", CUDA_ATTN_GEMM, hds[i], TOL_GEMM, TOL_CHAIN);
    }
    test_crossentropy();
    static const struct moe_case cases[] = {
        {"dropping", 3, 40, 64, 8, 2, 96, 10, 0},      /* capacity ceil(1.0 * 40 * 2 / 8) */
        {"dropping_bias", 3, 40, 64, 8, 2, 96, 10, 1}, /* expert bias in the selection */
        {"dropless", 3, 40, 64, 8, 2, 96, 80, 0},
        {"sparse", 1, 8, 64, 16, 2, 32, 16, 0}, /* 16 assignments over 16 experts: some idle */
        {"top1", 2, 33, 64, 4, 1, 64, 9, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_moe(&cases[i]);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_moe_phases(&cases[i]);
    test_adamw();
    if (!quick) {
        test_model_init();
        cuda_ctx_set_attention(ctx, CUDA_ATTN_FUSED); /* fp32's default */
        test_model_step("", TOL_MODEL_FWD, TOL_MODEL_GRAD, TOL_LOSS, 1);
        test_model_exec();
        test_train("fp32.", TOL_TRAIN_FP32);
        cuda_ctx_set_attention(ctx, CUDA_ATTN_GEMM);
        test_model_step("attn_gemm.", TOL_MODEL_FWD, TOL_MODEL_GRAD, TOL_LOSS, 1);
    }
    if (bf16 && !quick) {
        use_ctx(CUDA_BF16);
        test_matmul("bf16.", TOL_BF16);
        for (int i = 0; i < 4; i++)
            test_attention("bf16.", CUDA_ATTN_GEMM, hds[i], TOL_BF16, TOL_BF16_CHAIN);
        test_moe_bf16();
        test_model_step("bf16.", TOL_BF16, TOL_BF16_GRAD, TOL_BF16_LOSS, 0);
        test_train("bf16.", TOL_TRAIN_BF16);
    }
    cuda_ctx_destroy(ctx);
    printf("# %s: %d comparison(s) failed\n", failures ? "FAIL" : "OK", failures);
    return failures ? 1 : 0;
}
