/*
 * moe.cu — the mixture-of-experts layer: routing, capacity, the row layout, the losses, the
 * router's backward, and the whole layer (experts_forward_cuda, moe_backward_cuda) as the
 * composition of experts.cu's phases, exactly as kernels/layers.c composes the CPU's.
 *
 * Routing decisions are exact integer logic and must match the CPU bit for bit given the same
 * probabilities: softmax and top-k run one thread per token with the CPU's loop; capacity is
 * admitted per sequence in k-major order by one block per sequence in which each expert's
 * counter is owned by one thread (a sequential scan per expert); the row layout (experts in
 * order, tokens ascending inside an expert) is a stable radix sort of the kept assignments by
 * expert. The expert GEMMs need each expert's row count on the host, so router_forward_cuda
 * copies the offsets back and synchronises once per layer.
 */
#include "common.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <limits.h>

static size_t align256(size_t x) { return (x + 255) / 256 * 256; }

/* ---- router ---- */

/* one thread per token: softmax, logsumexp, top-k of probs + bias (ties to the lower index),
 * gates; the CPU's loop and arithmetic */
__global__ void router_softmax_topk_kernel(float *probs, float *lse, int *topk, float *gates,
                                           const float *logits, const float *bias, int N, int E,
                                           int K) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *z = logits + (size_t)n * E;
    float *p = probs + (size_t)n * E;
    float mx = z[0];
    for (int e = 1; e < E; e++) mx = z[e] > mx ? z[e] : mx;
    double sum = 0;
    for (int e = 0; e < E; e++) {
        p[e] = (float)exp((double)(z[e] - mx));
        sum += p[e];
    }
    float inv = (float)(1.0 / sum);
    for (int e = 0; e < E; e++) p[e] *= inv;
    lse[n] = (float)(mx + log(sum));
    int *idx = topk + (size_t)n * K;
    for (int k = 0; k < K; k++) {
        int best = -1;
        float best_s = 0;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int j = 0; j < k; j++) taken |= idx[j] == e;
            if (taken) continue;
            float s = p[e] + (bias ? bias[e] : 0.0f);
            if (best < 0 || s > best_s) best = e, best_s = s;
        }
        idx[k] = best;
    }
    double gs = 0;
    for (int k = 0; k < K; k++) gs += p[idx[k]];
    for (int k = 0; k < K; k++) gates[(size_t)n * K + k] = (float)(p[idx[k]] / gs);
}

/* selections per expert before capacity: integer atomics, so the counts are exact */
__global__ void load_count_kernel(int *counts, const int *topk, size_t NK) {
    GRID_STRIDE(i, NK) atomicAdd(&counts[topk[i]], 1);
}

enum { CAP_CHUNK = 2048 };

/* One block per sequence. Assignments in k-major order (every token's first choice, then
 * every second choice, ...) are staged in shared memory a chunk at a time; expert e's counter
 * belongs to thread e % blockDim.x alone, which walks the chunk in order, so each expert
 * admits its assignments sequentially, exactly as the CPU. row_of gets 1 (kept) or -1. */
__global__ void capacity_kernel(int *row_of, const int *topk, int T, int K, int E, int cap) {
    extern __shared__ int shi[];
    int *used = shi, *buf = shi + E;
    const int b = blockIdx.x, TK = T * K;
    for (int e = threadIdx.x; e < E; e += blockDim.x) used[e] = 0;
    for (int base = 0; base < TK; base += CAP_CHUNK) {
        int cnt = TK - base < CAP_CHUNK ? TK - base : CAP_CHUNK;
        __syncthreads(); /* used[] initialised / the previous chunk consumed */
        for (int j = threadIdx.x; j < cnt; j += blockDim.x) {
            int jj = base + j, k = jj / T, t = jj % T;
            buf[j] = topk[((size_t)b * T + t) * K + k];
        }
        __syncthreads();
        for (int j = 0; j < cnt; j++) {
            int e = buf[j];
            if (e % (int)blockDim.x != (int)threadIdx.x) continue;
            int jj = base + j, k = jj / T, t = jj % T;
            size_t nk = ((size_t)b * T + t) * K + k;
            if (used[e] < cap) {
                used[e]++;
                row_of[nk] = 1;
            } else {
                row_of[nk] = -1;
            }
        }
    }
}

/* sort keys: the expert of a kept assignment, E for a dropped one (sorts last) */
__global__ void route_keys_kernel(unsigned *keys, int *vals, const int *row_of, const int *topk,
                                  int E, size_t NK) {
    GRID_STRIDE(i, NK) {
        keys[i] = row_of[i] > 0 ? (unsigned)topk[i] : (unsigned)E;
        vals[i] = (int)i;
    }
}

/* sorted position i is row i: the stable sort kept (token, k) order inside each expert */
__global__ void route_rows_kernel(int *row_of, int *row_token, const unsigned *keys,
                                  const int *vals, int E, int K, size_t NK) {
    GRID_STRIDE(i, NK) {
        int nk = vals[i];
        if (keys[i] < (unsigned)E) {
            row_of[nk] = (int)i;
            row_token[i] = nk / K;
        } else {
            row_of[nk] = -1;
        }
    }
}

/* expert_off[e] = first sorted position with key >= e, e in [0, E] */
__global__ void expert_offsets_kernel(int *expert_off, const unsigned *keys, int E, int NK) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e > E) return;
    int lo = 0, hi = NK;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (keys[mid] < (unsigned)e) lo = mid + 1;
        else hi = mid;
    }
    expert_off[e] = lo;
}

static int key_bits(unsigned max_key) {
    int bits = 1;
    while (bits < 32 && (1u << bits) <= max_key) bits++;
    return bits;
}

long router_forward_cuda(struct moe_acts_cuda *a, long *load, const float *inp,
                         const float *router_w, const float *expert_bias,
                         const struct moe_layer_cfg *c, struct cuda_ctx *ctx) {
    if (ctx->failed) return 0;
    const int B = c->B, T = c->T, E = c->E, K = c->K, N = B * T;
    const size_t NK = (size_t)N * K;
    if (N <= 0) return 0;
    if (NK >= (size_t)INT_MAX || E > 4096 || K > E) {
        CTX_FAIL(ctx, "router_forward_cuda: N*K = %zu, E = %d, K = %d out of range", NK, E, K);
        return 0;
    }
    /* the router's product stays fp32 in both modes: it decides the routing */
    if (!gemm(ctx, CUDA_FP32, false, true, N, E, c->C, 1.0f, inp, c->C, 0, router_w, c->C, 0, 0.0f,
              a->logits, E, 0, 1))
        return 0;
    router_softmax_topk_kernel<<<(N + 127) / 128, 128, 0, ctx->stream>>>(
        a->probs, a->lse, a->topk, a->gates, a->logits, expert_bias, N, E, K);
    if (!LAUNCH_OK(ctx, "router_softmax_topk_kernel")) return 0;

    size_t temp = 0;
    if (!CUDA_OK(ctx, cub::DeviceRadixSort::SortPairs(nullptr, temp, (const unsigned *)nullptr,
                                                      (unsigned *)nullptr, (const int *)nullptr,
                                                      (int *)nullptr, (int)NK, 0, key_bits(E),
                                                      ctx->stream)))
        return 0;
    size_t arr = align256(sizeof(int) * NK), cnt_bytes = align256(sizeof(int) * E);
    char *w = (char *)ws_get(ctx, WS_SORT, cnt_bytes + 4 * arr + temp);
    if (!w) return 0;
    int *counts = (int *)w;
    unsigned *keys_in = (unsigned *)(w + cnt_bytes), *keys_out = (unsigned *)(w + cnt_bytes + arr);
    int *vals_in = (int *)(w + cnt_bytes + 2 * arr), *vals_out = (int *)(w + cnt_bytes + 3 * arr);
    void *tmp = w + cnt_bytes + 4 * arr;

    if (!CUDA_OK(ctx, cudaMemsetAsync(counts, 0, sizeof(int) * E, ctx->stream))) return 0;
    load_count_kernel<<<grid_for(NK, THREADS), THREADS, 0, ctx->stream>>>(counts, a->topk, NK);
    if (!LAUNCH_OK(ctx, "load_count_kernel")) return 0;
    size_t cap_smem = sizeof(int) * ((size_t)E + CAP_CHUNK);
    capacity_kernel<<<B, THREADS, cap_smem, ctx->stream>>>(a->row_of, a->topk, T, K, E,
                                                           c->capacity);
    if (!LAUNCH_OK(ctx, "capacity_kernel")) return 0;
    route_keys_kernel<<<grid_for(NK, THREADS), THREADS, 0, ctx->stream>>>(
        keys_in, vals_in, a->row_of, a->topk, E, NK);
    if (!LAUNCH_OK(ctx, "route_keys_kernel")) return 0;
    if (!CUDA_OK(ctx, cub::DeviceRadixSort::SortPairs(tmp, temp, keys_in, keys_out, vals_in,
                                                      vals_out, (int)NK, 0, key_bits(E),
                                                      ctx->stream)))
        return 0;
    route_rows_kernel<<<grid_for(NK, THREADS), THREADS, 0, ctx->stream>>>(
        a->row_of, a->row_token, keys_out, vals_out, E, K, NK);
    if (!LAUNCH_OK(ctx, "route_rows_kernel")) return 0;
    expert_offsets_kernel<<<(E + 1 + 127) / 128, 128, 0, ctx->stream>>>(a->expert_off, keys_out, E,
                                                                         (int)NK);
    if (!LAUNCH_OK(ctx, "expert_offsets_kernel")) return 0;

    /* the one synchronisation: offsets and counts back to the host */
    int *h = (int *)host_stage(ctx, sizeof(int) * (2 * (size_t)E + 1));
    if (!h ||
        !CUDA_OK(ctx, cudaMemcpyAsync(h, a->expert_off, sizeof(int) * (E + 1),
                                      cudaMemcpyDeviceToHost, ctx->stream)) ||
        !CUDA_OK(ctx, cudaMemcpyAsync(h + E + 1, counts, sizeof(int) * E, cudaMemcpyDeviceToHost,
                                      ctx->stream)) ||
        !CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream)))
        return 0;
    for (int e = 0; e <= E; e++) a->expert_off_host[e] = h[e];
    for (int e = 0; e < E; e++) load[e] += h[E + 1 + e];
    return (long)NK - h[E];
}

/* ---- the losses ---- */

/* cnt[e] = how many of sequence b's (token, choice) pairs chose expert e; the whole block
 * counts (integer atomics: exact), and every thread sees the counts when it returns. */
static __device__ void count_choices(int *cnt, const int *topk, int b, int T, int E, int K) {
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    const int *tk = topk + (size_t)b * T * K;
    for (int i = threadIdx.x; i < T * K; i += blockDim.x) atomicAdd(&cnt[tk[i]], 1);
    __syncthreads();
}

/* One block per sequence: f by integer counts, P_e by a sum over t in token order (one thread
 * per expert, the CPU's order), and thread 0 adds the experts' terms in expert order. */
__global__ void aux_per_sequence_kernel(double *aux_b, const int *topk, const float *probs, int T,
                                        int E, int K) {
    extern __shared__ double shd[];
    double *term = shd;
    int *cnt = (int *)(shd + E);
    const int b = blockIdx.x;
    count_choices(cnt, topk, b, T, E, K);
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double P = 0;
        for (int t = 0; t < T; t++) P += probs[((size_t)b * T + t) * E + e];
        term[e] = ((double)cnt[e] / ((double)T * K)) * (P / T);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int e = 0; e < E; e++) s += term[e];
        aux_b[b] = E * s;
    }
}

/* out[0] = mean over sequences of aux_b (in order), out[1] = mean of lse^2 (fixed tree) */
__global__ void router_losses_final_kernel(double *out, const double *aux_b, const float *lse,
                                           int B, size_t N) {
    double z = 0;
    for (size_t n = threadIdx.x; n < N; n += blockDim.x) z += (double)lse[n] * lse[n];
    z = block_sum(z);
    if (threadIdx.x == 0) {
        double s = 0;
        for (int b = 0; b < B; b++) s += aux_b[b];
        out[0] = s / B;
        out[1] = z / (double)N;
    }
}

void router_losses_cuda(double *aux, double *z, const struct moe_acts_cuda *a,
                        const struct moe_layer_cfg *c, struct cuda_ctx *ctx) {
    *aux = *z = 0;
    if (ctx->failed || c->B <= 0 || c->T <= 0) return;
    const int B = c->B, T = c->T, E = c->E, K = c->K;
    double *part = (double *)ws_get(ctx, WS_PARTIAL, sizeof(double) * ((size_t)B + 2));
    if (!part) return;
    size_t smem = (sizeof(double) + sizeof(int)) * (size_t)E;
    aux_per_sequence_kernel<<<B, THREADS, smem, ctx->stream>>>(part, a->topk, a->probs, T, E, K);
    if (!LAUNCH_OK(ctx, "aux_per_sequence_kernel")) return;
    router_losses_final_kernel<<<1, 1024, 0, ctx->stream>>>(part + B, part, a->lse, B,
                                                            (size_t)B * T);
    if (!LAUNCH_OK(ctx, "router_losses_final_kernel")) return;
    double *h = (double *)host_stage(ctx, 2 * sizeof(double));
    if (!h ||
        !CUDA_OK(ctx, cudaMemcpyAsync(h, part + B, 2 * sizeof(double), cudaMemcpyDeviceToHost,
                                      ctx->stream)) ||
        !CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream)))
        return;
    *aux = h[0];
    *z = h[1];
}

/* ---- the experts (the phases are experts.cu's) ---- */

void experts_forward_cuda(float *out, struct moe_acts_cuda *a, const float *inp,
                          const float *w_gate, const float *w_up, const float *w_down,
                          const struct moe_layer_cfg *c, struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    const int N = c->B * c->T, C = c->C, E = c->E, K = c->K, F = c->F;
    const int *off = a->expert_off_host;
    const size_t FC = (size_t)F * C;
    moe_gather_cuda(a->xe, inp, a->row_token, off[E], C, ctx);
    for (int e = 0; e < E; e++) {
        size_t r0 = (size_t)off[e];
        expert_ffn_forward_cuda(a->ye + r0 * C, a->h1 + r0 * F, a->h2 + r0 * F, a->ha + r0 * F,
                                a->xe + r0 * C, w_gate + e * FC, w_up + e * FC, w_down + e * FC,
                                off[e + 1] - off[e], C, F, ctx);
    }
    moe_combine_cuda(out, a->ye, a->row_of, a->gates, N, K, C, ctx);
}

/* ---- backward ---- */

/* aux-loss gradient per (sequence, expert): alpha E f_be / (T K) / (B T), rounded to float */
__global__ void aux_grad_kernel(float *faux, const int *topk, int B, int T, int E, int K,
                                double aux_coef) {
    extern __shared__ int cnt[];
    const int b = blockIdx.x;
    count_choices(cnt, topk, b, T, E, K);
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        faux[(size_t)b * E + e] =
            (float)(aux_coef * E * ((double)cnt[e] / ((double)T * K)) / ((double)B * T));
}

/* One block per token: d probs through the gate renormalisation (thread 0, in k order), plus
 * the aux term, then the softmax backward with the z-loss term, as the CPU. */
__global__ void router_backward_kernel(float *dlogits, float *dprobs, const float *probs,
                                       const float *lse, const int *topk, const float *gates,
                                       const float *dgates, const float *faux, int T, int E,
                                       int K, double zscale) {
    const size_t n = blockIdx.x;
    const float *p = probs + n * E;
    float *dp = dprobs + n * E;
    float *dz = dlogits + n * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) dp[e] = 0;
    __syncthreads();
    if (threadIdx.x == 0) {
        const int *idx = topk + n * K;
        double S = 0, gd = 0;
        for (int k = 0; k < K; k++) {
            S += p[idx[k]];
            gd += (double)dgates[n * K + k] * gates[n * K + k];
        }
        for (int k = 0; k < K; k++) dp[idx[k]] += (float)((dgates[n * K + k] - gd) / S);
    }
    __syncthreads();
    if (faux) {
        const float *f = faux + (n / T) * E;
        for (int e = threadIdx.x; e < E; e += blockDim.x) dp[e] += f[e];
    }
    double dot = 0;
    for (int e = threadIdx.x; e < E; e += blockDim.x) dot += (double)p[e] * dp[e];
    dot = block_sum(dot);
    const float zl = (float)(zscale * lse[n]);
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        dz[e] = p[e] * (dp[e] - (float)dot) + zl * p[e];
}

/* gather backward: dinp[n] += dxe[row] for each kept k, in k order */
__global__ void scatter_add_rows_kernel(float *dinp, const float *dxe, const int *row_of, int C,
                                        int K, size_t total) {
    GRID_STRIDE(i, total) {
        size_t n = i / C;
        int c = (int)(i % C);
        float d = dinp[i];
        for (int k = 0; k < K; k++) {
            int row = row_of[n * K + k];
            if (row < 0) continue;
            d += dxe[(size_t)row * C + c];
        }
        dinp[i] = d;
    }
}

void moe_router_backward_cuda(float *dinp, float *drouter_w, const struct moe_scratch *s,
                              const struct moe_acts_cuda *a, const float *inp,
                              const float *router_w, const struct moe_layer_cfg *c,
                              struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    const int B = c->B, T = c->T, N = B * T, C = c->C, E = c->E, K = c->K;
    if (N <= 0) return;
    /* gates through the renormalisation, plus the two losses */
    float *faux = NULL;
    if (c->aux_coef != 0) {
        faux = (float *)ws_get(ctx, WS_PARTIAL, sizeof(float) * (size_t)B * E);
        if (!faux) return;
        aux_grad_kernel<<<B, THREADS, sizeof(int) * E, ctx->stream>>>(faux, a->topk, B, T, E, K,
                                                                      c->aux_coef);
        if (!LAUNCH_OK(ctx, "aux_grad_kernel")) return;
    }
    router_backward_kernel<<<N, row_threads(E) < THREADS ? row_threads(E) : THREADS, 0,
                             ctx->stream>>>(s->dlogits, s->dprobs, a->probs, a->lse, a->topk,
                                            a->gates, s->dgates, faux, T, E, K,
                                            2.0 * c->z_coef / N);
    if (!LAUNCH_OK(ctx, "router_backward_kernel")) return;
    /* the router's products in fp32, as its forward */
    if (!gemm(ctx, CUDA_FP32, false, false, N, C, E, 1.0f, s->dlogits, E, 0, router_w, C, 0, 0.0f,
              dinp, C, 0, 1) ||
        !gemm(ctx, CUDA_FP32, true, false, E, C, N, 1.0f, s->dlogits, E, 0, inp, C, 0,
              c->accumulate ? 1.0f : 0.0f, drouter_w, C, 0, 1))
        return;
    size_t total = (size_t)N * C;
    scatter_add_rows_kernel<<<grid_for(total, THREADS), THREADS, 0, ctx->stream>>>(
        dinp, s->dxe, a->row_of, C, K, total);
    LAUNCH_OK(ctx, "scatter_add_rows_kernel");
}

void moe_backward_cuda(float *dinp, float *drouter_w, float *dw_gate, float *dw_up,
                       float *dw_down, float *scratch, const float *dout,
                       const struct moe_acts_cuda *a, const float *inp, const float *router_w,
                       const float *w_gate, const float *w_up, const float *w_down,
                       const struct moe_layer_cfg *c, struct cuda_ctx *ctx) {
    if (ctx->failed) return;
    const int N = c->B * c->T, C = c->C, E = c->E, K = c->K, F = c->F;
    const int *off = a->expert_off_host;
    const size_t FC = (size_t)F * C;
    struct moe_scratch s;
    moe_backward_scratch(&s, scratch, c);
    moe_combine_backward_cuda(s.dye, s.dgates, dout, a->ye, a->row_of, a->gates, N, K, C, ctx);
    for (int e = 0; e < E; e++) {
        size_t r0 = (size_t)off[e];
        expert_ffn_backward_cuda(s.dxe + r0 * C, dw_gate + e * FC, dw_up + e * FC,
                                 dw_down + e * FC, s.dh1 + r0 * F, s.dh2 + r0 * F,
                                 s.dye + r0 * C, a->xe + r0 * C, a->h1 + r0 * F, a->h2 + r0 * F,
                                 a->ha + r0 * F, w_gate + e * FC, w_up + e * FC, w_down + e * FC,
                                 off[e + 1] - off[e], C, F, c->accumulate, ctx);
    }
    moe_router_backward_cuda(dinp, drouter_w, &s, a, inp, router_w, c, ctx);
}
