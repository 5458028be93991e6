/* model_cuda.cu — the whole model on the GPU, step for step as kernels/model.c. */
#include "model_cuda.h"

#include "common.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../acts.h"
#include "../mix64.h"

/* ---- activations: model.c's layout, with (B, NH, T) attention statistics ---- */

static struct acts_layout layout_of(const struct model_config *c, int B) {
    struct acts_layout l = acts_layout_sizes(c, B);
    size_t T = c->seq_len;
    l.att = (size_t)B * c->n_heads * T; /* logsumexp per query row */
    struct moe_layer_cfg mc = model_moe_cfg(c, B, (int)T);
    size_t moe_scratch = moe_backward_scratch_size(&mc);
    size_t attn_scratch = (size_t)B * c->n_heads * T; /* D per query row (fused backward) */
    /* backward scratch: dresid, dln, datty (NC each), dqkv (3NC), then the larger layer scratch */
    l.scratch = 3 * l.NC + 3 * l.NC + (moe_scratch > attn_scratch ? moe_scratch : attn_scratch);
    return l;
}

static size_t acts_carve(struct acts *a, float *mem, int *imem, const struct model_config *c,
                         int B, size_t *n_int) {
    struct acts_layout l = layout_of(c, B);
    return acts_carve_layout(a, mem, imem, c, &l, n_int);
}

static void moe_acts_of(struct moe_acts_cuda *m, const struct acts *a, const struct model_cuda *g,
                        int l) {
    const struct model_config *c = &g->cfg;
    struct acts_layout s = layout_of(c, g->B_max);
    ACTS_MOE_LAYER(m, a, s, l, c->n_experts);
    m->expert_off_host = g->expert_off_host + (size_t)l * (c->n_experts + 1);
}

static void carve(struct acts *a, const struct model_cuda *m) {
    size_t n_int;
    acts_carve(a, m->act_mem, m->int_mem, &m->cfg, m->B_max, &n_int);
}

static void point_into(struct model_params *p, float *mem, const size_t *sizes) {
    float **slots = (float **)p;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        slots[i] = mem;
        mem += sizes[i];
    }
}

/* ---- allocation ---- */

int model_alloc_cuda(struct model_cuda *m, const struct model_config *cfg, int B_max,
                     struct cuda_ctx *ctx, char *why, size_t why_len) {
    memset(m, 0, sizeof *m);
    if (model_config_check(cfg, why, why_len) != 0) return -1;
    if (B_max < 1) {
        snprintf(why, why_len, "model_alloc_cuda: B_max = %d", B_max);
        return -1;
    }
    if (ctx->failed) {
        snprintf(why, why_len, "%s", ctx->err);
        return -1;
    }
    m->cfg = *cfg;
    m->ctx = ctx;
    m->B_max = B_max;
    size_t L = cfg->n_layers, E = cfg->n_experts, T = cfg->seq_len;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(cfg, i, &ti);
        size_t n = (size_t)ti.dims[0] * ti.dims[1] * ti.dims[2] * (ti.per_layer ? L : 1);
        m->tensor_sizes[i] = n;
        m->n_params += n;
        if (ti.ndim >= 2) m->n_decay += n;
    }
    m->n_buffers = L * E;
    struct acts a;
    m->act_size = acts_carve(&a, NULL, NULL, cfg, B_max, &m->n_int);

    m->bias_host = (float *)calloc(m->n_buffers, sizeof(float));
    m->expert_off_host = (int *)calloc(L * (E + 1), sizeof(int));
    m->stats.load = (long *)calloc(L * E, sizeof(long));
    size_t HD = cfg->d_model / cfg->n_heads;
    float *freqs = (float *)malloc(sizeof(float) * T * HD);
    if (!m->bias_host || !m->expert_off_host || !m->stats.load || !freqs) {
        snprintf(why, why_len, "model_alloc_cuda: out of host memory");
        free(freqs);
        model_free_cuda(m);
        return -1;
    }
    size_t NT = (size_t)B_max * T;
    bool ok = CUDA_OK(ctx, cudaMalloc(&m->param_mem, sizeof(float) * m->n_params)) &&
              CUDA_OK(ctx, cudaMalloc(&m->grad_mem, sizeof(float) * m->n_params)) &&
              CUDA_OK(ctx, cudaMalloc(&m->m_mem, sizeof(float) * m->n_params)) &&
              CUDA_OK(ctx, cudaMalloc(&m->v_mem, sizeof(float) * m->n_params)) &&
              CUDA_OK(ctx, cudaMalloc(&m->buffer_mem, sizeof(float) * m->n_buffers)) &&
              CUDA_OK(ctx, cudaMalloc(&m->act_mem, sizeof(float) * m->act_size)) &&
              CUDA_OK(ctx, cudaMalloc(&m->int_mem, sizeof(int) * m->n_int)) &&
              CUDA_OK(ctx, cudaMalloc(&m->tokens, sizeof(int) * NT)) &&
              CUDA_OK(ctx, cudaMalloc(&m->targets, sizeof(int) * NT));
    if (ok) {
        point_into(&m->params, m->param_mem, m->tensor_sizes);
        point_into(&m->grads, m->grad_mem, m->tensor_sizes);
        point_into(&m->m, m->m_mem, m->tensor_sizes);
        point_into(&m->v, m->v_mem, m->tensor_sizes);
        m->buffers.expert_bias = m->buffer_mem;
        /* the rotary table exactly as model_alloc computes it, then uploaded */
        for (size_t t = 0; t < T; t++)
            for (size_t i = 0; i < HD / 2; i++) {
                double ang = t * pow((double)cfg->rope_base, -2.0 * i / HD);
                freqs[t * HD + 2 * i] = (float)cos(ang);
                freqs[t * HD + 2 * i + 1] = (float)sin(ang);
            }
        carve(&a, m);
        ok = CUDA_OK(ctx, cudaMemcpyAsync(a.freqs, freqs, sizeof(float) * T * HD,
                                          cudaMemcpyHostToDevice, ctx->stream)) &&
             CUDA_OK(ctx, cudaStreamSynchronize(ctx->stream)) &&
             cuda_ctx_set_param_arena(ctx, m->param_mem, m->n_params) == 0;
    }
    free(freqs);
    if (!ok) {
        snprintf(why, why_len, "%s", ctx->err);
        model_free_cuda(m);
        return -1;
    }
    return 0;
}

void model_free_cuda(struct model_cuda *m) {
    if (m->ctx && m->ctx->arena == m->param_mem && m->param_mem)
        cuda_ctx_set_param_arena(m->ctx, NULL, 0); /* no dangling arena in the context */
    if (m->ctx) cudaStreamSynchronize(m->ctx->stream);
    cudaFree(m->param_mem);
    cudaFree(m->grad_mem);
    cudaFree(m->m_mem);
    cudaFree(m->v_mem);
    cudaFree(m->buffer_mem);
    cudaFree(m->act_mem);
    cudaFree(m->int_mem);
    cudaFree(m->tokens);
    cudaFree(m->targets);
    free(m->bias_host);
    free(m->expert_off_host);
    free(m->stats.load);
    memset(m, 0, sizeof *m);
}

/* ---- initialisation ---- */

#define INIT_DOMAIN 0x6d6f65642d696e69ULL /* "moed-ini", as model.c */

__device__ __forceinline__ uint64_t mix64_dev(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__global__ void init_normal_kernel(float *p, size_t n, uint64_t ti_h, double std) {
    const double two_pi = 2.0 * 3.14159265358979323846;
    GRID_STRIDE(j, n) {
        uint64_t h = mix64_dev(ti_h ^ (uint64_t)j);
        double u1 = ((double)(h >> 11) + 1.0) * 0x1.0p-53;
        double u2 = (double)(mix64_dev(h) >> 11) * 0x1.0p-53;
        p[j] = (float)(std * sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
    }
}

__global__ void fill_kernel(float *p, size_t n, float v) {
    GRID_STRIDE(i, n) p[i] = v;
}

void init_normal_cuda(float *x, size_t n, uint64_t seed, uint64_t tensor, double std,
                      struct cuda_ctx *ctx) {
    if (ctx->failed || n == 0) return;
    uint64_t ti_h = mix64(mix64(seed ^ INIT_DOMAIN) ^ tensor);
    init_normal_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(x, n, ti_h, std);
    LAUNCH_OK(ctx, "init_normal_kernel");
}

void model_init_cuda(struct model_cuda *m, uint64_t seed) {
    struct cuda_ctx *ctx = m->ctx;
    const struct model_config *c = &m->cfg;
    if (ctx->failed) return;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(c, i, &ti);
        float *p = model_tensor(&m->params, i);
        size_t n = m->tensor_sizes[i];
        if (ti.ndim == 1) { /* norm weights */
            fill_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(p, n, 1.0f);
            if (!LAUNCH_OK(ctx, "fill_kernel")) return;
            continue;
        }
        double std = c->init_std;
        if (p == m->params.attn_out || p == m->params.w_down) std /= sqrt(2.0 * c->n_layers);
        init_normal_cuda(p, n, seed, (uint64_t)i, std, ctx);
    }
    size_t bytes = sizeof(float) * m->n_params;
    if (!CUDA_OK(ctx, cudaMemsetAsync(m->m_mem, 0, bytes, ctx->stream)) ||
        !CUDA_OK(ctx, cudaMemsetAsync(m->v_mem, 0, bytes, ctx->stream)) ||
        !CUDA_OK(ctx, cudaMemsetAsync(m->grad_mem, 0, bytes, ctx->stream)) ||
        !CUDA_OK(ctx, cudaMemsetAsync(m->buffer_mem, 0, sizeof(float) * m->n_buffers, ctx->stream)))
        return;
    memset(m->bias_host, 0, sizeof(float) * m->n_buffers);
    m->step = 0;
    cuda_ctx_refresh_params(ctx);
}

/* ---- moving state ---- */

static bool same_model(const struct model_cuda *g, const struct model *cpu) {
    return memcmp(&g->cfg, &cpu->cfg, sizeof g->cfg) == 0 && g->n_params == cpu->n_params &&
           g->n_buffers == cpu->n_buffers;
}

/* Copies in ctx's stream (it does not synchronise with the legacy default stream), then
 * waits: the host buffers may change as soon as this returns. */
static bool copy_in_stream(struct cuda_ctx *ctx, void *dst, const void *src, size_t bytes,
                           cudaMemcpyKind kind) {
    return CUDA_OK(ctx, cudaMemcpyAsync(dst, src, bytes, kind, ctx->stream));
}

int model_upload_cuda(struct model_cuda *g, const struct model *cpu) {
    struct cuda_ctx *ctx = g->ctx;
    if (ctx->failed) return -1;
    if (!same_model(g, cpu)) {
        CTX_FAIL(ctx, "model_upload_cuda: the CPU model has another configuration");
        return -1;
    }
    size_t bytes = sizeof(float) * g->n_params;
    cudaMemcpyKind h2d = cudaMemcpyHostToDevice;
    if (!copy_in_stream(ctx, g->param_mem, cpu->param_mem, bytes, h2d) ||
        !copy_in_stream(ctx, g->grad_mem, cpu->grad_mem, bytes, h2d) ||
        !copy_in_stream(ctx, g->m_mem, cpu->m_mem, bytes, h2d) ||
        !copy_in_stream(ctx, g->v_mem, cpu->v_mem, bytes, h2d) ||
        !copy_in_stream(ctx, g->buffer_mem, cpu->buffer_mem, sizeof(float) * g->n_buffers, h2d))
        return -1;
    memcpy(g->bias_host, cpu->buffer_mem, sizeof(float) * g->n_buffers);
    g->step = cpu->step;
    cuda_ctx_refresh_params(ctx);
    return cuda_ctx_sync(ctx);
}

int model_download_cuda(struct model *cpu, const struct model_cuda *g) {
    struct cuda_ctx *ctx = g->ctx;
    if (ctx->failed) return -1;
    if (!same_model(g, cpu)) {
        CTX_FAIL(ctx, "model_download_cuda: the CPU model has another configuration");
        return -1;
    }
    size_t bytes = sizeof(float) * g->n_params;
    cudaMemcpyKind d2h = cudaMemcpyDeviceToHost;
    if (!copy_in_stream(ctx, cpu->param_mem, g->param_mem, bytes, d2h) ||
        !copy_in_stream(ctx, cpu->grad_mem, g->grad_mem, bytes, d2h) ||
        !copy_in_stream(ctx, cpu->m_mem, g->m_mem, bytes, d2h) ||
        !copy_in_stream(ctx, cpu->v_mem, g->v_mem, bytes, d2h) ||
        !copy_in_stream(ctx, cpu->buffer_mem, g->buffer_mem, sizeof(float) * g->n_buffers, d2h))
        return -1;
    cpu->step = g->step;
    return cuda_ctx_sync(ctx);
}

/* ---- forward ---- */

__global__ void add_inplace_kernel(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}

__global__ void add_into_kernel(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

static void add_inplace(struct cuda_ctx *ctx, float *y, const float *x, size_t n) {
    if (ctx->failed || n == 0) return;
    add_inplace_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(y, x, n);
    LAUNCH_OK(ctx, "add_inplace_kernel");
}

static void add_into(struct cuda_ctx *ctx, float *out, const float *a, const float *b, size_t n) {
    if (ctx->failed || n == 0) return;
    add_into_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(out, a, b, n);
    LAUNCH_OK(ctx, "add_into_kernel");
}

/* Checks a batch's shape and ids, and uploads tokens and targets (targets may be NULL). */
static bool upload_batch(struct model_cuda *m, const int *tokens, const int *targets, int B,
                         int T) {
    struct cuda_ctx *ctx = m->ctx;
    if (B < 1 || B > m->B_max || T < 1 || T > m->cfg.seq_len) {
        CTX_FAIL(ctx, "batch (%d, %d) exceeds the model's (%d, %d)", B, T, m->B_max,
                 m->cfg.seq_len);
        return false;
    }
    size_t N = (size_t)B * T;
    for (size_t n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= m->cfg.vocab ||
            (targets && (targets[n] < 0 || targets[n] >= m->cfg.vocab))) {
            CTX_FAIL(ctx, "token %zu of the batch is outside [0, %d)", n, m->cfg.vocab);
            return false;
        }
    /* pageable host memory: the copies complete before they return */
    return CUDA_OK(ctx, cudaMemcpyAsync(m->tokens, tokens, sizeof(int) * N,
                                        cudaMemcpyHostToDevice, ctx->stream)) &&
           (!targets || CUDA_OK(ctx, cudaMemcpyAsync(m->targets, targets, sizeof(int) * N,
                                                     cudaMemcpyHostToDevice, ctx->stream)));
}

double model_forward_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                          int T) {
    double loss;
    model_forward_exec_cuda(m, tokens, targets, B, T, NULL, &loss);
    return loss;
}

int model_forward_exec_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                            int T, const struct model_exec_cuda *x, double *loss) {
    struct cuda_ctx *ctx = m->ctx;
    const struct model_config *c = &m->cfg;
    *loss = NAN;
    if (ctx->failed || !upload_batch(m, tokens, targets, B, T)) return -1;
    int C = c->d_model, NH = c->n_heads, L = c->n_layers, V = c->vocab, E = c->n_experts;
    int N = B * T;
    struct acts a;
    carve(&a, m);
    struct acts_layout s = layout_of(c, m->B_max);
    struct moe_layer_cfg mc = model_moe_cfg(c, B, T);
    struct model_params *p = &m->params;

    memset(m->stats.load, 0, sizeof(long) * L * E);
    m->stats.dropped = 0;
    double aux_total = 0, z_total = 0;

    encoder_forward_cuda(a.resid, m->tokens, p->wte, N, C, ctx);
    for (int l = 0; l < L; l++) {
        float *xin = a.resid + l * s.NC, *xmid = a.resid_mid + l * s.NC;
        float *ln1 = a.ln1 + l * s.NC, *qkv = a.qkv + l * 3 * s.NC, *att = a.att + l * s.att;
        float *atty = a.atty + l * s.NC, *ln2 = a.ln2 + l * s.NC;
        float *xout = a.resid + (l + 1) * s.NC;

        rmsnorm_forward_cuda(ln1, a.ln1_rstd + l * s.N, xin, p->ln1_w + l * C, N, C,
                             c->norm_eps, ctx);
        matmul_forward_cuda(qkv, ln1, p->qkv_w + (size_t)l * 3 * C * C, N, C, 3 * C, ctx);
        rope_forward_cuda(qkv, a.freqs, B, T, C, NH, ctx);
        attention_forward_cuda(atty, att, qkv, B, T, C, NH, ctx);
        matmul_forward_cuda(xmid, atty, p->attn_out + (size_t)l * C * C, N, C, C, ctx);
        add_inplace(ctx, xmid, xin, (size_t)N * C);

        rmsnorm_forward_cuda(ln2, a.ln2_rstd + l * s.N, xmid, p->ln2_w + l * C, N, C, c->norm_eps,
                             ctx);
        struct moe_acts_cuda ma;
        moe_acts_of(&ma, &a, m, l);
        const float *bias = c->bias_balancing ? m->buffers.expert_bias + (size_t)l * E : NULL;
        m->stats.dropped += router_forward_cuda(&ma, m->stats.load + (size_t)l * E, ln2,
                                                p->router_w + (size_t)l * E * C, bias, &mc, ctx);
        double aux, z;
        router_losses_cuda(&aux, &z, &ma, &mc, ctx);
        aux_total += aux;
        z_total += z;
        if (x && x->experts_forward) {
            moe_gather_cuda(ma.xe, ln2, ma.row_token, ma.expert_off_host[E], C, ctx);
            if (ctx->failed || x->experts_forward(x->ctx, l, &ma, &mc) != 0) return -1;
            moe_combine_cuda(a.moe_out, ma.ye, ma.row_of, ma.gates, N, c->top_k, C, ctx);
        } else {
            size_t FC = (size_t)c->d_ff * C;
            experts_forward_cuda(a.moe_out, &ma, ln2, p->w_gate + l * E * FC,
                                 p->w_up + l * E * FC, p->w_down + l * E * FC, &mc, ctx);
        }
        add_into(ctx, xout, xmid, a.moe_out, (size_t)N * C);
    }
    rmsnorm_forward_cuda(a.lnf, a.lnf_rstd, a.resid + L * s.NC, p->lnf_w, N, C, c->norm_eps, ctx);
    matmul_forward_cuda(a.logits, a.lnf, p->wte, N, C, V, ctx);
    double ce_sum = crossentropy_forward_cuda(a.probs, a.logits, targets ? m->targets : NULL, N, V,
                                              ctx);
    if (!targets) cuda_ctx_sync(ctx); /* logits ready when this returns, with or without loss */

    m->stats.ce = targets ? ce_sum / N : 0;
    m->stats.aux = aux_total;
    m->stats.z = z_total;
    m->stats.loss = m->stats.ce + c->aux_loss_coef * aux_total + c->z_loss_coef * z_total;
    if (ctx->failed) return -1;
    *loss = m->stats.loss;
    return 0;
}

const float *model_logits_cuda(const struct model_cuda *m) {
    struct acts a;
    carve(&a, m);
    return a.logits;
}

/* ---- backward ---- */

void model_backward_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                         int T, double loss_scale, int accumulate) {
    model_backward_exec_cuda(m, tokens, targets, B, T, loss_scale, accumulate, NULL);
}

int model_backward_exec_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                             int T, double loss_scale, int accumulate,
                             const struct model_exec_cuda *x) {
    struct cuda_ctx *ctx = m->ctx;
    const struct model_config *c = &m->cfg;
    if (ctx->failed) return -1;
    if (!targets) {
        CTX_FAIL(ctx, "model_backward_cuda: no targets");
        return -1;
    }
    if (!upload_batch(m, tokens, targets, B, T)) return -1;
    int C = c->d_model, NH = c->n_heads, L = c->n_layers, V = c->vocab, E = c->n_experts;
    int N = B * T;
    struct acts a;
    carve(&a, m);
    struct acts_layout s = layout_of(c, m->B_max);
    struct moe_layer_cfg mc = model_moe_cfg(c, B, T);
    mc.aux_coef *= loss_scale;
    mc.z_coef *= loss_scale;
    mc.accumulate = accumulate;
    struct model_params *p = &m->params, *g = &m->grads;

    /* matrix gradients are written by their GEMMs; only the norm weights accumulate */
    if (!accumulate &&
        !CUDA_OK(ctx, cudaMemsetAsync(m->grad_mem + m->n_decay, 0,
                                      sizeof(float) * (m->n_params - m->n_decay), ctx->stream)))
        return -1;
    float *dresid = a.scratch, *dln = dresid + s.NC, *datty = dln + s.NC;
    float *dqkv = datty + s.NC, *lscratch = dqkv + 3 * s.NC;

    crossentropy_backward_cuda(a.probs, a.probs, m->targets, N, V, loss_scale / N, ctx);
    matmul_backward_cuda(dln, g->wte, a.probs, a.lnf, p->wte, N, C, V, accumulate, ctx);
    if (!CUDA_OK(ctx, cudaMemsetAsync(dresid, 0, sizeof(float) * (size_t)N * C, ctx->stream)))
        return -1;
    rmsnorm_backward_cuda(dresid, g->lnf_w, dln, a.resid + L * s.NC, p->lnf_w, a.lnf_rstd, N, C,
                          ctx);

    for (int l = L - 1; l >= 0; l--) {
        float *xin = a.resid + l * s.NC, *xmid = a.resid_mid + l * s.NC;
        float *ln1 = a.ln1 + l * s.NC, *qkv = a.qkv + l * 3 * s.NC, *att = a.att + l * s.att;
        float *atty = a.atty + l * s.NC, *ln2 = a.ln2 + l * s.NC;
        size_t FC = (size_t)c->d_ff * C;

        /* MoE block: dresid holds d(xout) = d(xmid) through the skip; add the MoE path */
        struct moe_acts_cuda ma;
        moe_acts_of(&ma, &a, m, l);
        if (x && x->experts_backward) {
            struct moe_scratch ms;
            moe_backward_scratch(&ms, lscratch, &mc);
            moe_combine_backward_cuda(ms.dye, ms.dgates, dresid, ma.ye, ma.row_of, ma.gates, N,
                                      c->top_k, C, ctx);
            if (ctx->failed || x->experts_backward(x->ctx, l, &ma, &ms, &mc) != 0) return -1;
            moe_router_backward_cuda(dln, g->router_w + (size_t)l * E * C, &ms, &ma, ln2,
                                     p->router_w + (size_t)l * E * C, &mc, ctx);
        } else {
            moe_backward_cuda(dln, g->router_w + (size_t)l * E * C, g->w_gate + l * E * FC,
                              g->w_up + l * E * FC, g->w_down + l * E * FC, lscratch, dresid,
                              &ma, ln2, p->router_w + (size_t)l * E * C, p->w_gate + l * E * FC,
                              p->w_up + l * E * FC, p->w_down + l * E * FC, &mc, ctx);
        }
        rmsnorm_backward_cuda(dresid, g->ln2_w + l * C, dln, xmid, p->ln2_w + l * C,
                              a.ln2_rstd + l * s.N, N, C, ctx);

        matmul_backward_cuda(datty, g->attn_out + (size_t)l * C * C, dresid, atty,
                             p->attn_out + (size_t)l * C * C, N, C, C, accumulate, ctx);
        attention_backward_cuda(dqkv, lscratch, datty, qkv, att, B, T, C, NH, ctx);
        rope_backward_cuda(dqkv, a.freqs, B, T, C, NH, ctx);
        matmul_backward_cuda(dln, g->qkv_w + (size_t)l * 3 * C * C, dqkv, ln1,
                             p->qkv_w + (size_t)l * 3 * C * C, N, C, 3 * C, accumulate, ctx);
        rmsnorm_backward_cuda(dresid, g->ln1_w + l * C, dln, xin, p->ln1_w + l * C,
                              a.ln1_rstd + l * s.N, N, C, ctx);
        if (x && x->layer_done && (ctx->failed || x->layer_done(x->ctx, l) != 0)) return -1;
    }
    encoder_backward_cuda(g->wte, dresid, m->tokens, N, C, ctx);
    return ctx->failed ? -1 : 0;
}

/* ---- optimizer ---- */

double model_update_cuda(struct model_cuda *m, const struct adamw_config *o) {
    struct cuda_ctx *ctx = m->ctx;
    if (ctx->failed) return NAN;
    double norm = sqrt(sum_squares_cuda(m->grad_mem, m->n_params, ctx));
    if (ctx->failed) return NAN;
    float scale = 1.0f;
    if (o->grad_clip > 0 && norm > o->grad_clip) scale = (float)(o->grad_clip / norm);
    float lr = (float)adamw_lr(o, m->step);
    adamw_update_cuda(m->param_mem, m->grad_mem, m->m_mem, m->v_mem, m->n_params, m->n_decay, lr,
                      o->beta1, o->beta2, o->eps, o->weight_decay, scale, m->step + 1, ctx);

    const struct model_config *c = &m->cfg;
    if (c->bias_balancing) {
        /* as model_update: integer counts, so the update is exact; the host copy is the truth */
        int E = c->n_experts;
        for (int l = 0; l < c->n_layers; l++) {
            long total = 0;
            for (int e = 0; e < E; e++) total += m->stats.load[l * E + e];
            for (int e = 0; e < E; e++) {
                long diff = total - (long)E * m->stats.load[l * E + e];
                float sgn = (float)((diff > 0) - (diff < 0));
                m->bias_host[l * E + e] += c->bias_update_rate * sgn;
            }
        }
        if (!CUDA_OK(ctx, cudaMemcpyAsync(m->buffer_mem, m->bias_host,
                                          sizeof(float) * m->n_buffers, cudaMemcpyHostToDevice,
                                          ctx->stream)))
            return NAN;
    }
    m->step++;
    return cuda_ctx_sync(ctx) == 0 ? norm : NAN;
}
