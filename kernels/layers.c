/* layers.c — CPU versions of every layer (see layers.h for the contract of each function). */
#include "layers.h"

#ifdef MOE_NO_BLAS /* the standalone GPU test build: no BLAS on that machine */
#include "noblas.h"
#else
#include <cblas.h>
#endif
#include <math.h>
#include <string.h>

#ifdef MOE_REAL_DOUBLE
#define GEMM cblas_dgemm
#define EXP exp
#define SQRT sqrt
#else
#define GEMM cblas_sgemm
#define EXP expf
#define SQRT sqrtf
#endif

/* Elementwise loops may run on several threads: each iteration writes only its own outputs
 * and no reduction crosses iterations, so the result does not depend on the thread count. */
#ifdef _OPENMP
#define PARALLEL_FOR _Pragma("omp parallel for schedule(static)")
#define PARALLEL_FOR2 _Pragma("omp parallel for collapse(2) schedule(static)")
#else
#define PARALLEL_FOR
#define PARALLEL_FOR2
#endif

/* Row-major C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, leading dims explicit. */
static void gemm(int transA, int transB, int M, int N, int K, real alpha, const real *A, int lda,
                 const real *B, int ldb, real beta, real *Cm, int ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) { /* BLAS would leave C alone when beta==1; make beta==0 mean "zero it" too */
        if (beta == 0)
            for (int i = 0; i < M; i++) memset(Cm + (size_t)i * ldc, 0, sizeof(real) * N);
        return;
    }
    GEMM(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M,
         N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
}

/* ---- embedding ---- */

void encoder_forward(real *out, const int *tokens, const real *wte, int N, int C) {
    PARALLEL_FOR
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, sizeof(real) * C);
}

void encoder_backward(real *dwte, const real *dout, const int *tokens, int N, int C) {
    for (int n = 0; n < N; n++) {
        real *d = dwte + (size_t)tokens[n] * C;
        const real *g = dout + (size_t)n * C;
        for (int c = 0; c < C; c++) d[c] += g[c];
    }
}

/* ---- RMSNorm ---- */

void rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight, int N, int C,
                     float eps) {
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        real *y = out + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        real r = (real)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) y[c] = x[c] * r * weight[c];
        rstd[n] = r;
    }
}

void rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp,
                      const real *weight, const real *rstd, int N, int C) {
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        const real *dy = dout + (size_t)n * C;
        real *dx = dinp + (size_t)n * C;
        real r = rstd[n];
        /* y_c = w_c x_c r, r = (mean(x^2)+eps)^-1/2 => dx_c = r w_c dy_c - x_c r^3/C sum_j w_j dy_j x_j */
        double dot = 0;
        for (int c = 0; c < C; c++) dot += (double)weight[c] * dy[c] * x[c];
        real k = (real)(dot * r * r * r / C);
        for (int c = 0; c < C; c++) dx[c] += r * weight[c] * dy[c] - x[c] * k;
    }
    /* the weight gradient sums over tokens: threads split the columns, tokens stay in order */
    enum { COLS = 16 };
    PARALLEL_FOR
    for (int c0 = 0; c0 < C; c0 += COLS) {
        int c1 = c0 + COLS < C ? c0 + COLS : C;
        for (int n = 0; n < N; n++) {
            const real *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) dweight[c] += dy[c] * x[c] * rstd[n];
        }
    }
}

/* ---- linear layers ---- */

void matmul_forward(real *out, const real *inp, const real *weight, int N, int IN, int OUT) {
    gemm(0, 1, N, OUT, IN, 1, inp, IN, weight, IN, 0, out, OUT);
}

void matmul_backward(real *dinp, real *dweight, const real *dout, const real *inp,
                     const real *weight, int N, int IN, int OUT, int accumulate) {
    if (dinp) gemm(0, 0, N, IN, OUT, 1, dout, OUT, weight, IN, 0, dinp, IN);
    gemm(1, 0, OUT, IN, N, 1, dout, OUT, inp, IN, accumulate ? 1 : 0, dweight, IN);
}

/* ---- rotary position embedding ---- */

static void rope_rotate(real *qkv, const real *freqs, int B, int T, int C, int NH, real sign) {
    int HD = C / NH;
    PARALLEL_FOR2
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            real *row = qkv + ((size_t)b * T + t) * 3 * C;
            const real *f = freqs + (size_t)t * HD; /* (HD/2) pairs of cos, sin */
            for (int part = 0; part < 2; part++) /* q, then k */
                for (int h = 0; h < NH; h++) {
                    real *x = row + part * C + h * HD;
                    for (int i = 0; i < HD / 2; i++) {
                        real cs = f[2 * i], sn = sign * f[2 * i + 1];
                        real x0 = x[2 * i], x1 = x[2 * i + 1];
                        x[2 * i] = x0 * cs - x1 * sn;
                        x[2 * i + 1] = x0 * sn + x1 * cs;
                    }
                }
        }
}

void rope_forward(real *qkv, const real *freqs, int B, int T, int C, int NH) {
    rope_rotate(qkv, freqs, B, T, C, NH, 1);
}

void rope_backward(real *dqkv, const real *freqs, int B, int T, int C, int NH) {
    /* a rotation's gradient is the inverse rotation */
    rope_rotate(dqkv, freqs, B, T, C, NH, -1);
}

/* ---- causal attention ---- */

void attention_forward(real *out, real *att, const real *qkv, int B, int T, int C, int NH) {
    int HD = C / NH;
    real scale = (real)(1.0 / sqrt((double)HD));
    /* heads in parallel; BLAS inside a parallel region runs on the calling thread */
    PARALLEL_FOR2
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const real *q = qkv + (size_t)b * T * 3 * C + h * HD;
            const real *k = q + C, *v = q + 2 * C;
            real *p = att + ((size_t)b * NH + h) * T * T;
            gemm(0, 1, T, T, HD, scale, q, 3 * C, k, 3 * C, 0, p, T);
            for (int t = 0; t < T; t++) {
                real *row = p + (size_t)t * T;
                real mx = row[0];
                for (int j = 1; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
                double sum = 0;
                for (int j = 0; j <= t; j++) {
                    row[j] = (real)exp((double)(row[j] - mx));
                    sum += row[j];
                }
                real inv = (real)(1.0 / sum);
                for (int j = 0; j <= t; j++) row[j] *= inv;
                for (int j = t + 1; j < T; j++) row[j] = 0;
            }
            gemm(0, 0, T, HD, T, 1, p, T, v, 3 * C, 0, out + (size_t)b * T * C + h * HD, C);
        }
}

void attention_backward(real *dqkv, real *scratch, const real *dout, const real *qkv,
                        const real *att, int B, int T, int C, int NH) {
    int HD = C / NH;
    real scale = (real)(1.0 / sqrt((double)HD));
    PARALLEL_FOR2
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const real *q = qkv + (size_t)b * T * 3 * C + h * HD;
            const real *k = q + C, *v = q + 2 * C;
            real *dq = dqkv + (size_t)b * T * 3 * C + h * HD;
            real *dk = dq + C, *dv = dq + 2 * C;
            const real *p = att + ((size_t)b * NH + h) * T * T;
            const real *dO = dout + (size_t)b * T * C + h * HD;
            real *ds = scratch + ((size_t)b * NH + h) * T * T; /* dP, then dS in place */
            gemm(1, 0, T, HD, T, 1, p, T, dO, C, 0, dv, 3 * C);
            gemm(0, 1, T, T, HD, 1, dO, C, v, 3 * C, 0, ds, T);
            for (int t = 0; t < T; t++) {
                const real *prow = p + (size_t)t * T;
                real *drow = ds + (size_t)t * T;
                double dot = 0;
                for (int j = 0; j <= t; j++) dot += (double)prow[j] * drow[j];
                for (int j = 0; j <= t; j++) drow[j] = prow[j] * (drow[j] - (real)dot);
                for (int j = t + 1; j < T; j++) drow[j] = 0;
            }
            gemm(0, 0, T, HD, T, scale, ds, T, k, 3 * C, 0, dq, 3 * C);
            gemm(1, 0, T, HD, T, scale, ds, T, q, 3 * C, 0, dk, 3 * C);
        }
}

/* ---- cross-entropy ---- */

/* p = softmax(z) over n entries, the max subtracted first; returns the log-sum-exp of z in
 * double. The loss and the router share it, so both round the same way. */
static double softmax_row(real *p, const real *z, int n) {
    real mx = z[0];
    for (int i = 1; i < n; i++) mx = z[i] > mx ? z[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        p[i] = (real)exp((double)(z[i] - mx));
        sum += p[i];
    }
    real inv = (real)(1.0 / sum);
    for (int i = 0; i < n; i++) p[i] *= inv;
    return (double)mx + log(sum);
}

double crossentropy_forward(real *probs, const real *logits, const int *targets, int N, int V) {
    double total = 0;
    for (int n = 0; n < N; n++) {
        const real *z = logits + (size_t)n * V;
        double lse = softmax_row(probs + (size_t)n * V, z, V);
        /* the loss from the logits directly: -log softmax = lse - z_target, no log(0) */
        if (targets) total += lse - (double)z[targets[n]];
    }
    return total;
}

void crossentropy_backward(real *dlogits, const real *probs, const int *targets, int N, int V,
                           double scale) {
    for (int n = 0; n < N; n++) {
        const real *p = probs + (size_t)n * V;
        real *d = dlogits + (size_t)n * V;
        for (int i = 0; i < V; i++) d[i] = (real)(p[i] * scale);
        d[targets[n]] -= (real)scale;
    }
}

/* ---- distillation ---- */

/* max and log-sum-exp of z / temp over n entries, in double */
static double scaled_lse(const real *z, int n, double temp, double *mx_out) {
    double mx = (double)z[0] / temp;
    for (int i = 1; i < n; i++) mx = fmax(mx, (double)z[i] / temp);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)z[i] / temp - mx);
    *mx_out = mx;
    return mx + log(sum);
}

double distill_forward(const real *logits, const real *teacher_logits, int N, int V, float temp) {
    double total = 0, mx;
    for (int n = 0; n < N; n++) {
        const real *z = logits + (size_t)n * V, *zt = teacher_logits + (size_t)n * V;
        double lse_s = scaled_lse(z, V, temp, &mx), lse_t = scaled_lse(zt, V, temp, &mx);
        double kl = 0;
        for (int i = 0; i < V; i++) {
            double log_q = (double)zt[i] / temp - lse_t, log_p = (double)z[i] / temp - lse_s;
            double q = exp(log_q);
            if (q > 0) kl += q * (log_q - log_p); /* 0 log 0 = 0 */
        }
        total += kl;
    }
    return total;
}

void distill_backward(real *dlogits, const real *logits, const real *teacher_logits, int N, int V,
                      float temp, double scale) {
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        const real *z = logits + (size_t)n * V, *zt = teacher_logits + (size_t)n * V;
        real *d = dlogits + (size_t)n * V;
        double mx, lse_s = scaled_lse(z, V, temp, &mx), lse_t = scaled_lse(zt, V, temp, &mx);
        for (int i = 0; i < V; i++) {
            double p = exp((double)z[i] / temp - lse_s), q = exp((double)zt[i] / temp - lse_t);
            d[i] += (real)(scale * (p - q));
        }
    }
}

/* ---- mixture of experts ---- */

long router_forward(struct moe_acts *a, long *load, const real *inp, const real *router_w,
                    const real *expert_bias, const struct moe_layer_cfg *c) {
    int B = c->B, T = c->T, E = c->E, K = c->K, N = B * T;
    matmul_forward(a->logits, inp, router_w, N, c->C, E);
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        real *p = a->probs + (size_t)n * E;
        a->lse[n] = (real)softmax_row(p, a->logits + (size_t)n * E, E);

        /* top-k of probs + bias, best first; ties go to the lower expert index */
        int *idx = a->topk + (size_t)n * K;
        for (int k = 0; k < K; k++) {
            int best = -1;
            real best_s = 0;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= idx[j] == e;
                if (taken) continue;
                real s = p[e] + (expert_bias ? expert_bias[e] : 0);
                if (best < 0 || s > best_s) best = e, best_s = s;
            }
            idx[k] = best;
        }
        double gs = 0;
        for (int k = 0; k < K; k++) gs += p[idx[k]];
        for (int k = 0; k < K; k++) a->gates[(size_t)n * K + k] = (real)(p[idx[k]] / gs);
    }

    for (size_t nk = 0; nk < (size_t)N * K; nk++) load[a->topk[nk]]++;

    /* capacity, per sequence, k-major priority; row_of temporarily holds 1 = kept, -1 = dropped */
    long dropped = 0;
    PARALLEL_FOR
    for (int b = 0; b < B; b++) {
        int used[E];
        memset(used, 0, sizeof used);
        for (int k = 0; k < K; k++)
            for (int t = 0; t < T; t++) {
                size_t nk = ((size_t)b * T + t) * K + k;
                int e = a->topk[nk];
                if (used[e] < c->capacity) {
                    used[e]++;
                    a->row_of[nk] = 1;
                } else {
                    a->row_of[nk] = -1;
                }
            }
    }
    for (size_t nk = 0; nk < (size_t)N * K; nk++) dropped += a->row_of[nk] < 0;
    /* rows grouped by expert, tokens ascending within an expert (a counting sort) */
    memset(a->expert_off, 0, sizeof(int) * (E + 1));
    for (size_t nk = 0; nk < (size_t)N * K; nk++)
        if (a->row_of[nk] > 0) a->expert_off[a->topk[nk] + 1]++;
    for (int e = 0; e < E; e++) a->expert_off[e + 1] += a->expert_off[e];
    int count[E]; /* E is bounded by the config check; VLA on the stack is small */
    memcpy(count, a->expert_off, sizeof(int) * E);
    for (size_t nk = 0; nk < (size_t)N * K; nk++) {
        if (a->row_of[nk] < 0) continue;
        int row = count[a->topk[nk]]++;
        a->row_of[nk] = row;
        a->row_token[row] = (int)(nk / K);
    }
    return dropped;
}

void router_losses(double *aux, double *z, const struct moe_acts *a,
                   const struct moe_layer_cfg *c) {
    int B = c->B, T = c->T, E = c->E, K = c->K;
    double aux_sum = 0;
    double f[E], P[E];
    for (int b = 0; b < B; b++) {
        memset(f, 0, sizeof f);
        memset(P, 0, sizeof P);
        for (int t = 0; t < T; t++) {
            size_t n = (size_t)b * T + t;
            for (int k = 0; k < K; k++) f[a->topk[n * K + k]] += 1;
            for (int e = 0; e < E; e++) P[e] += a->probs[n * E + e];
        }
        double s = 0;
        for (int e = 0; e < E; e++) s += (f[e] / ((double)T * K)) * (P[e] / T);
        aux_sum += E * s;
    }
    *aux = aux_sum / B;
    double zs = 0;
    for (size_t n = 0; n < (size_t)B * T; n++) zs += (double)a->lse[n] * a->lse[n];
    *z = zs / ((double)B * T);
}

static inline real sigmoid(real x) { return 1 / (1 + EXP(-x)); }

void moe_gather(real *xe, const real *inp, const int *row_token, int rows, int C) {
    PARALLEL_FOR
    for (int r = 0; r < rows; r++)
        memcpy(xe + (size_t)r * C, inp + (size_t)row_token[r] * C, sizeof(real) * C);
}

void expert_ffn_forward(real *ye, real *h1, real *h2, real *ha, const real *xe,
                        const real *w_gate, const real *w_up, const real *w_down, int m, int C,
                        int F) {
    if (m == 0) return;
    gemm(0, 1, m, F, C, 1, xe, C, w_gate, C, 0, h1, F);
    gemm(0, 1, m, F, C, 1, xe, C, w_up, C, 0, h2, F);
    PARALLEL_FOR
    for (size_t i = 0; i < (size_t)m * F; i++) ha[i] = h1[i] * sigmoid(h1[i]) * h2[i];
    gemm(0, 1, m, C, F, 1, ha, F, w_down, F, 0, ye, C);
}

void moe_combine(real *out, const real *ye, const int *row_of, const real *gates, int N, int K,
                 int C) {
    /* in k order: a dropped assignment contributes nothing, the residual carries it */
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        real *y = out + (size_t)n * C;
        memset(y, 0, sizeof(real) * C);
        for (int k = 0; k < K; k++) {
            int row = row_of[(size_t)n * K + k];
            if (row < 0) continue;
            real g = gates[(size_t)n * K + k];
            const real *yr = ye + (size_t)row * C;
            for (int i = 0; i < C; i++) y[i] += g * yr[i];
        }
    }
}

void experts_forward(real *out, struct moe_acts *a, const real *inp, const real *w_gate,
                     const real *w_up, const real *w_down, const struct moe_layer_cfg *c) {
    int N = c->B * c->T, C = c->C, E = c->E, K = c->K, F = c->F;
    moe_gather(a->xe, inp, a->row_token, a->expert_off[E], C);
    for (int e = 0; e < E; e++) {
        if (c->interrupt && c->interrupt(c->interrupt_ctx)) break;
        int r0 = a->expert_off[e], m = a->expert_off[e + 1] - r0;
        expert_ffn_forward(a->ye + (size_t)r0 * C, a->h1 + (size_t)r0 * F, a->h2 + (size_t)r0 * F,
                           a->ha + (size_t)r0 * F, a->xe + (size_t)r0 * C,
                           w_gate + (size_t)e * F * C, w_up + (size_t)e * F * C,
                           w_down + (size_t)e * C * F, m, C, F);
    }
    moe_combine(out, a->ye, a->row_of, a->gates, N, K, C);
}

size_t moe_backward_scratch_size(const struct moe_layer_cfg *c) {
    size_t NK = (size_t)c->B * c->T * c->K, N = (size_t)c->B * c->T;
    /* dye and dxe (NK, C), dh1 and dh2 (NK, F), dprobs and dlogits (N, E), dgates (N, K) */
    return 2 * NK * c->C + 2 * NK * c->F + 2 * N * c->E + N * c->K;
}

void moe_backward_scratch(struct moe_scratch *s, real *scratch, const struct moe_layer_cfg *c) {
    size_t N = (size_t)c->B * c->T, NK = N * c->K;
    s->dye = scratch;
    s->dxe = s->dye + NK * c->C;
    s->dh1 = s->dxe + NK * c->C;
    s->dh2 = s->dh1 + NK * c->F;
    s->dprobs = s->dh2 + NK * c->F;
    s->dlogits = s->dprobs + N * c->E;
    s->dgates = s->dlogits + N * c->E;
}

void moe_combine_backward(real *dye, real *dgates, const real *dout, const real *ye,
                          const int *row_of, const real *gates, int N, int K, int C) {
    /* y_n = sum_k g_nk ye_row  =>  dye_row = g_nk dy_n,  dg_nk = <dy_n, ye_row> */
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        const real *dy = dout + (size_t)n * C;
        for (int k = 0; k < K; k++) {
            size_t nk = (size_t)n * K + k;
            int row = row_of[nk];
            if (row < 0) {
                dgates[nk] = 0;
                continue;
            }
            const real *yr = ye + (size_t)row * C;
            real *d = dye + (size_t)row * C;
            real g = gates[nk];
            double dot = 0;
            for (int i = 0; i < C; i++) {
                d[i] = g * dy[i];
                dot += (double)dy[i] * yr[i];
            }
            dgates[nk] = (real)dot;
        }
    }
}

void expert_ffn_backward(real *dxe, real *dw_gate, real *dw_up, real *dw_down, real *dh1,
                         real *dh2, const real *dye, const real *xe, const real *h1,
                         const real *h2, const real *ha, const real *w_gate, const real *w_up,
                         const real *w_down, int m, int C, int F, int accumulate) {
    if (m == 0) { /* an expert that received no token has zero gradients */
        if (accumulate) return;
        memset(dw_gate, 0, sizeof(real) * F * C);
        memset(dw_up, 0, sizeof(real) * F * C);
        memset(dw_down, 0, sizeof(real) * C * F);
        return;
    }
    real beta = accumulate ? 1 : 0;
    gemm(1, 0, C, F, m, 1, dye, C, ha, F, beta, dw_down, F);
    gemm(0, 0, m, F, C, 1, dye, C, w_down, F, 0, dh1, F); /* dha, into dh1 */
    PARALLEL_FOR
    for (size_t i = 0; i < (size_t)m * F; i++) {
        real s = sigmoid(h1[i]);
        real dha = dh1[i];
        dh2[i] = dha * h1[i] * s;                          /* d h2 = dha * silu(h1) */
        dh1[i] = dha * h2[i] * s * (1 + h1[i] * (1 - s)); /* silu'(x) = s (1 + x (1 - s)) */
    }
    gemm(1, 0, F, C, m, 1, dh1, F, xe, C, beta, dw_gate, C);
    gemm(1, 0, F, C, m, 1, dh2, F, xe, C, beta, dw_up, C);
    gemm(0, 0, m, C, F, 1, dh1, F, w_gate, C, 0, dxe, C);
    gemm(0, 0, m, C, F, 1, dh2, F, w_up, C, 1, dxe, C);
}

void moe_router_backward(real *dinp, real *drouter_w, const struct moe_scratch *s,
                         const struct moe_acts *a, const real *inp, const real *router_w,
                         const struct moe_layer_cfg *c) {
    int B = c->B, T = c->T, N = B * T, C = c->C, E = c->E, K = c->K;
    real *dprobs = s->dprobs, *dlogits = s->dlogits;
    const real *dgates = s->dgates, *dxe = s->dxe;
    /* gates g_k = p_k / S through the renormalisation, plus the two losses */
    memset(dprobs, 0, sizeof(real) * (size_t)N * E);
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        const real *p = a->probs + (size_t)n * E;
        const int *idx = a->topk + (size_t)n * K;
        double S = 0, gd = 0;
        for (int k = 0; k < K; k++) {
            S += p[idx[k]];
            gd += (double)dgates[(size_t)n * K + k] * a->gates[(size_t)n * K + k];
        }
        for (int k = 0; k < K; k++)
            dprobs[(size_t)n * E + idx[k]] += (real)((dgates[(size_t)n * K + k] - gd) / S);
    }
    if (c->aux_coef != 0) {
        /* aux = (1/B) sum_b E sum_e f_be P_be, P_be = (1/T) sum_t p_bte  =>  d/dp_bte = E f_be / (B T) */
        PARALLEL_FOR
        for (int b = 0; b < B; b++) {
            double f[E];
            memset(f, 0, sizeof f);
            for (int t = 0; t < T; t++)
                for (int k = 0; k < K; k++) f[a->topk[((size_t)b * T + t) * K + k]] += 1;
            for (int e = 0; e < E; e++) f[e] = c->aux_coef * E * (f[e] / ((double)T * K)) / ((double)B * T);
            for (int t = 0; t < T; t++)
                for (int e = 0; e < E; e++) dprobs[((size_t)b * T + t) * E + e] += (real)f[e];
        }
    }
    double zscale = 2.0 * c->z_coef / N;
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        const real *p = a->probs + (size_t)n * E;
        const real *dp = dprobs + (size_t)n * E;
        real *dz = dlogits + (size_t)n * E;
        double dot = 0;
        for (int e = 0; e < E; e++) dot += (double)p[e] * dp[e];
        real zl = (real)(zscale * a->lse[n]);
        for (int e = 0; e < E; e++) dz[e] = p[e] * (dp[e] - (real)dot) + zl * p[e];
    }
    matmul_backward(dinp, drouter_w, dlogits, inp, router_w, N, C, E, c->accumulate);

    /* gather backward: each kept assignment returns its input gradient, in k order */
    PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        real *dx = dinp + (size_t)n * C;
        for (int k = 0; k < K; k++) {
            int row = a->row_of[(size_t)n * K + k];
            if (row < 0) continue;
            const real *g = dxe + (size_t)row * C;
            for (int i = 0; i < C; i++) dx[i] += g[i];
        }
    }
}

void moe_backward(real *dinp, real *drouter_w, real *dw_gate, real *dw_up, real *dw_down,
                  real *scratch, const real *dout, const struct moe_acts *a, const real *inp,
                  const real *router_w, const real *w_gate, const real *w_up,
                  const real *w_down, const struct moe_layer_cfg *c) {
    int N = c->B * c->T, C = c->C, E = c->E, K = c->K, F = c->F;
    struct moe_scratch s;
    moe_backward_scratch(&s, scratch, c);
    moe_combine_backward(s.dye, s.dgates, dout, a->ye, a->row_of, a->gates, N, K, C);
    for (int e = 0; e < E; e++) {
        if (c->interrupt && c->interrupt(c->interrupt_ctx)) break;
        int r0 = a->expert_off[e], m = a->expert_off[e + 1] - r0;
        expert_ffn_backward(s.dxe + (size_t)r0 * C, dw_gate + (size_t)e * F * C,
                            dw_up + (size_t)e * F * C, dw_down + (size_t)e * C * F,
                            s.dh1 + (size_t)r0 * F, s.dh2 + (size_t)r0 * F, s.dye + (size_t)r0 * C,
                            a->xe + (size_t)r0 * C, a->h1 + (size_t)r0 * F, a->h2 + (size_t)r0 * F,
                            a->ha + (size_t)r0 * F, w_gate + (size_t)e * F * C,
                            w_up + (size_t)e * F * C, w_down + (size_t)e * C * F, m, C, F,
                            c->accumulate);
    }
    moe_router_backward(dinp, drouter_w, &s, a, inp, router_w, c);
}

/* ---- optimizer ---- */

void adamw_update_into(real *params_out, real *m_out, real *v_out, const real *params,
                       const real *grads, const real *m, const real *v, size_t n, size_t n_decay,
                       float lr, float beta1, float beta2, float eps, float weight_decay,
                       float grad_scale, long t) {
    real inv_bc1 = (real)(1.0 / (1.0 - pow(beta1, (double)t)));
    real inv_bc2 = (real)(1.0 / (1.0 - pow(beta2, (double)t)));
    PARALLEL_FOR
    for (size_t i = 0; i < n; i++) {
        real g = grads[i] * grad_scale;
        real mi = beta1 * m[i] + (1 - beta1) * g;
        real vi = beta2 * v[i] + (1 - beta2) * g * g;
        real p = params[i];
        m_out[i] = mi;
        v_out[i] = vi;
        real wd = i < n_decay ? weight_decay : 0; /* a select, so the loop still vectorizes */
        params_out[i] = p - lr * ((mi * inv_bc1) / (SQRT(vi * inv_bc2) + eps) + wd * p);
    }
}

void adamw_update(real *params, const real *grads, real *m, real *v, size_t n, size_t n_decay,
                  float lr, float beta1, float beta2, float eps, float weight_decay,
                  float grad_scale, long t) {
    adamw_update_into(params, m, v, params, grads, m, v, n, n_decay, lr, beta1, beta2, eps,
                      weight_decay, grad_scale, t);
}
