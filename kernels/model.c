/* model.c — the whole model: arenas, initialisation, forward, backward, optimizer step. */
#include "model.h"
#include "acts.h"
#include "arena_pool.h"
#include "layers.h"
#include "mix64.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* The state's big arenas (parameters, gradients, moments, and a slot's previous version) are
 * anonymous mappings with transparent huge pages asked for: zeroed by the kernel and faulted
 * in 2 MiB at a time, so a recovery's new holder receives 1 GB of state into fresh memory at
 * memory speed instead of taking a quarter million page faults (and the steps use fewer TLB
 * entries). And a killed process's kernel frees all its memory before it closes its sockets,
 * so the peers see the death (docs/recovery.md, "Failure detection") only after that: 4 KiB
 * pages take several times longer to free than huge ones. Small arenas, and where mmap
 * fails, use calloc. */
#define ARENA_MMAP_MIN ARENA_MAPPED_MIN

real *model_arena_alloc(size_t n) {
    size_t bytes = n * sizeof(real);
    if (bytes < ARENA_MMAP_MIN) return calloc(n ? n : 1, sizeof(real));
    void *p = arena_pool_take(bytes); /* a spare's, faulted in before it was needed */
    if (p) return p;
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: without THP the pages are 4 KiB */
#endif
    return p;
}

void model_arena_free(real *p, size_t n) {
    if (!p) return;
    size_t bytes = n * sizeof(real);
    if (bytes < ARENA_MMAP_MIN) free(p);
    else munmap(p, bytes);
}

/* ---- configuration ---- */

int model_config_check(const struct model_config *c, char *why, size_t why_len) {
#define FAIL(...) return snprintf(why, why_len, __VA_ARGS__), -1
    if (c->vocab < 2) FAIL("model.vocab = %d: must be >= 2", c->vocab);
    if (c->d_model < 2) FAIL("model.d_model = %d: must be >= 2", c->d_model);
    if (c->n_layers < 1) FAIL("model.layers = %d: must be >= 1", c->n_layers);
    if (c->n_heads < 1 || c->d_model % c->n_heads)
        FAIL("model.heads = %d: must divide model.d_model = %d", c->n_heads, c->d_model);
    if ((c->d_model / c->n_heads) % 2)
        FAIL("model.heads = %d: head dimension d_model/heads = %d must be even (rotary pairs)",
             c->n_heads, c->d_model / c->n_heads);
    if (c->seq_len < 1) FAIL("model.seq_len = %d: must be >= 1", c->seq_len);
    if (c->n_experts < 1 || c->n_experts > 4096)
        FAIL("model.experts = %d: must be in [1, 4096]", c->n_experts);
    if (c->top_k < 1 || c->top_k > c->n_experts)
        FAIL("router.top_k = %d: must be in [1, model.experts = %d]", c->top_k, c->n_experts);
    if (c->d_ff < 1) FAIL("model.d_ff = %d: must be >= 1", c->d_ff);
    if (!c->dropless && !(c->capacity_factor > 0))
        FAIL("router.capacity_factor = %g: must be > 0 (or set router.dropless)",
             c->capacity_factor);
    if (c->aux_loss_coef < 0) FAIL("router.aux_loss_coef = %g: must be >= 0", c->aux_loss_coef);
    if (c->z_loss_coef < 0) FAIL("router.z_loss_coef = %g: must be >= 0", c->z_loss_coef);
    if (c->bias_update_rate < 0)
        FAIL("router.bias_update_rate = %g: must be >= 0", c->bias_update_rate);
    if (!(c->norm_eps > 0)) FAIL("model.norm_eps = %g: must be > 0", c->norm_eps);
    if (!(c->rope_base > 1)) FAIL("model.rope_base = %g: must be > 1", c->rope_base);
    if (!(c->init_std > 0)) FAIL("model.init_std = %g: must be > 0", c->init_std);
    return 0;
#undef FAIL
}

/* Per-sequence expert capacity: ceil(cf * T * K / E), or unlimited (T*K) when dropless. */
int model_expert_capacity(const struct model_config *c, int T) {
    if (c->dropless) return T * c->top_k;
    int cap = (int)ceil((double)c->capacity_factor * T * c->top_k / c->n_experts);
    return cap < T * c->top_k ? cap : T * c->top_k;
}

static const char *tensor_names[MODEL_NUM_TENSORS] = {
    "tok_embedding.weight", "attn.qkv.weight",   "attn.out.weight",    "moe.router.weight",
    "moe.experts.gate.weight", "moe.experts.up.weight", "moe.experts.down.weight",
    "attn_norm.weight",     "ffn_norm.weight",   "final_norm.weight",
};

void model_tensor_info(const struct model_config *cfg, int i, struct model_tensor_info *out) {
    int V = cfg->vocab, C = cfg->d_model, E = cfg->n_experts, F = cfg->d_ff;
    static const int per_layer[MODEL_NUM_TENSORS] = {0, 1, 1, 1, 1, 1, 1, 1, 1, 0};
    int shapes[MODEL_NUM_TENSORS][4] = {
        {2, V, C},    {2, 3 * C, C}, {2, C, C}, {2, E, C}, {3, E, F, C},
        {3, E, F, C}, {3, E, C, F},  {1, C},    {1, C},    {1, C},
    };
    out->name = tensor_names[i];
    out->per_layer = per_layer[i];
    out->ndim = shapes[i][0];
    for (int d = 0; d < 3; d++) out->dims[d] = d < out->ndim ? shapes[i][d + 1] : 1;
}

static void point_into(struct model_params *p, real *mem, const size_t *sizes) {
    real **slots = (real **)p;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        slots[i] = mem;
        mem += sizes[i];
    }
}

/* ---- activations (the arena's carve is kernels/acts.h, shared with the CUDA model) ---- */

static struct acts_layout layout_of(const struct model_config *c, int B) {
    struct acts_layout l = acts_layout_sizes(c, B);
    size_t T = c->seq_len;
    l.att = (size_t)B * c->n_heads * T * T;
    struct moe_layer_cfg mc = {.B = B, .T = (int)T, .C = c->d_model, .E = c->n_experts,
                               .K = c->top_k, .F = c->d_ff};
    size_t moe_scratch = moe_backward_scratch_size(&mc);
    size_t attn_scratch = (size_t)B * c->n_heads * T * T; /* one (T, T) block per head */
    /* backward scratch: dresid, dln, datty (NC each), dqkv (3NC), dlogits shares probs */
    l.scratch = 3 * l.NC + 3 * l.NC + (moe_scratch > attn_scratch ? moe_scratch : attn_scratch);
    return l;
}

static size_t acts_carve(struct acts *a, real *mem, int *imem, const struct model_config *c,
                         int B, size_t *n_int) {
    struct acts_layout l = layout_of(c, B);
    return acts_carve_layout(a, mem, imem, c, &l, n_int);
}

static void moe_acts_of(struct moe_acts *m, const struct acts *a, const struct model_config *c,
                        int B, int l) {
    struct acts_layout s = layout_of(c, B);
    ACTS_MOE_LAYER(m, a, s, l, c->n_experts);
}

/* ---- allocation and initialisation ---- */

double model_params_of(const struct model_config *cfg, int n_local) {
    double L = cfg->n_layers, params = 0;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(cfg, i, &ti);
        if (model_tensor_is_expert(i)) ti.dims[0] = n_local;
        params += (double)ti.dims[0] * ti.dims[1] * ti.dims[2] * (ti.per_layer ? L : 1);
    }
    return params;
}

double model_bytes_needed(const struct model_config *cfg, int B_max, int n_local) {
    double L = cfg->n_layers, params = model_params_of(cfg, n_local);
    /* the activations' largest terms, in doubles first: acts_carve counts in size_t */
    double N = (double)B_max * cfg->seq_len, C = cfg->d_model, K = cfg->top_k;
    double rough = L * N * (12 * C + 3 * K * (C + cfg->d_ff) + 4 * cfg->n_experts +
                            (double)cfg->n_heads * cfg->seq_len) + N * cfg->vocab;
    if (!(rough < 1e15)) return rough * sizeof(real);
    struct acts a;
    size_t n_int;
    size_t acts = acts_carve(&a, NULL, NULL, cfg, B_max, &n_int);
    return (4 * params + (double)acts) * sizeof(real) + (double)n_int * sizeof(int);
}

int model_alloc(struct model *m, const struct model_config *cfg, int B_max) {
    return model_alloc_experts(m, cfg, B_max, 0, cfg->n_experts);
}

int model_alloc_experts(struct model *m, const struct model_config *cfg, int B_max, int expert_lo,
                        int n_local) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->B_max = B_max;
    m->expert_lo = expert_lo;
    m->n_local_experts = n_local;
    size_t L = cfg->n_layers;
    m->n_params = 0;
    m->n_decay = 0;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(cfg, i, &ti);
        if (model_tensor_is_expert(i)) ti.dims[0] = n_local; /* (E, ., .) -> (n_local, ., .) */
        size_t n = (size_t)ti.dims[0] * ti.dims[1] * ti.dims[2] * (ti.per_layer ? L : 1);
        m->tensor_sizes[i] = n;
        m->n_params += n;
        if (ti.ndim >= 2) m->n_decay += n; /* matrices come first in arena order */
    }
    m->n_buffers = L * cfg->n_experts;
    struct acts a;
    size_t n_int;
    m->act_size = acts_carve(&a, NULL, NULL, cfg, B_max, &n_int);

    m->param_mem = model_arena_alloc(m->n_params);
    m->grad_mem = model_arena_alloc(m->n_params);
    m->m_mem = model_arena_alloc(m->n_params);
    m->v_mem = model_arena_alloc(m->n_params);
    m->buffer_mem = calloc(m->n_buffers, sizeof(real));
    m->act_mem = calloc(m->act_size, sizeof(real));
    m->n_int = n_int;
    m->int_mem = calloc(n_int, sizeof(int));
    m->stats.load = calloc(L * cfg->n_experts, sizeof(long));
    if (!m->param_mem || !m->grad_mem || !m->m_mem || !m->v_mem || !m->buffer_mem ||
        !m->act_mem || !m->int_mem || !m->stats.load) {
        model_free(m);
        return -1;
    }
    point_into(&m->params, m->param_mem, m->tensor_sizes);
    point_into(&m->grads, m->grad_mem, m->tensor_sizes);
    point_into(&m->m, m->m_mem, m->tensor_sizes);
    point_into(&m->v, m->v_mem, m->tensor_sizes);
    m->buffers.expert_bias = m->buffer_mem;

    /* rotary table: cos, sin of t * base^(-2i/HD), computed in double */
    acts_carve(&a, m->act_mem, m->int_mem, cfg, B_max, &n_int);
    int T = cfg->seq_len, HD = cfg->d_model / cfg->n_heads;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < HD / 2; i++) {
            double ang = t * pow((double)cfg->rope_base, -2.0 * i / HD);
            a.freqs[(size_t)t * HD + 2 * i] = (real)cos(ang);
            a.freqs[(size_t)t * HD + 2 * i + 1] = (real)sin(ang);
        }
    return 0;
}

real *model_swap_grad_arena(struct model *m, real *mem) {
    real *old = m->grad_mem;
    m->grad_mem = mem;
    point_into(&m->grads, mem, m->tensor_sizes);
    return old;
}

void model_forward_only(struct model *m) {
    model_arena_free(m->grad_mem, m->n_params);
    model_arena_free(m->m_mem, m->n_params);
    model_arena_free(m->v_mem, m->n_params);
    m->grad_mem = m->m_mem = m->v_mem = NULL;
    memset(&m->grads, 0, sizeof m->grads);
    memset(&m->m, 0, sizeof m->m);
    memset(&m->v, 0, sizeof m->v);
}

void model_free(struct model *m) {
    model_arena_free(m->param_mem, m->n_params);
    model_arena_free(m->grad_mem, m->n_params);
    model_arena_free(m->m_mem, m->n_params);
    model_arena_free(m->v_mem, m->n_params);
    free(m->buffer_mem);
    free(m->act_mem);
    free(m->int_mem);
    free(m->stats.load);
    memset(m, 0, sizeof *m);
}

/* Element j of tensor i: std * sqrt(-2 ln u1) cos(2 pi u2) with u1 in (0,1], u2 in [0,1) from
 * h = mix(mix(mix(seed ^ INIT_DOMAIN) ^ i) ^ j), u1 = ((h >> 11) + 1) 2^-53,
 * u2 = (mix(h) >> 11) 2^-53. Output projections get std / sqrt(2 L). */
#define INIT_DOMAIN 0x6d6f65642d696e69ULL /* "moed-ini" */
void model_init(struct model *m, uint64_t seed) {
    const struct model_config *c = &m->cfg;
    uint64_t base = mix64(seed ^ INIT_DOMAIN);
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(c, i, &ti);
        real *p = model_tensor(&m->params, i);
        size_t n = m->tensor_sizes[i];
        if (ti.ndim == 1) { /* norm weights */
            for (size_t j = 0; j < n; j++) p[j] = 1;
            continue;
        }
        double std = c->init_std;
        if (p == m->params.attn_out || p == m->params.w_down) std /= sqrt(2.0 * c->n_layers);
        uint64_t ti_h = mix64(base ^ (uint64_t)i);
        /* an expert tensor holding experts [lo, lo + n_local) of each layer: element j is
         * element (l, lo + e, r) of the whole tensor, and gets that element's value */
        size_t per_expert = ti.dims[1] * (size_t)ti.dims[2];
        size_t local_layer = (size_t)m->n_local_experts * per_expert;
        int expert = model_tensor_is_expert(i);
        for (size_t j = 0; j < n; j++) {
            size_t g = j;
            if (expert)
                g = ((j / local_layer) * c->n_experts + m->expert_lo) * per_expert + j % local_layer;
            uint64_t h = mix64(ti_h ^ (uint64_t)g);
            double u1 = ((double)(h >> 11) + 1.0) * 0x1.0p-53;
            double u2 = (double)(mix64(h) >> 11) * 0x1.0p-53;
            p[j] = (real)(std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
        }
    }
    memset(m->m_mem, 0, sizeof(real) * m->n_params);
    memset(m->v_mem, 0, sizeof(real) * m->n_params);
    memset(m->grad_mem, 0, sizeof(real) * m->n_params);
    memset(m->buffer_mem, 0, sizeof(real) * m->n_buffers);
    m->step = 0;
}

/* ---- forward ---- */

static void add_inplace(real *y, const real *x, size_t n) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static void add_into(real *out, const real *a, const real *b, size_t n) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

struct moe_layer_cfg model_moe_cfg(const struct model_config *c, int B, int T) {
    struct moe_layer_cfg mc = {.B = B, .T = T, .C = c->d_model, .E = c->n_experts,
                               .K = c->top_k, .F = c->d_ff, .capacity = model_expert_capacity(c, T),
                               .aux_coef = c->aux_loss_coef, .z_coef = c->z_loss_coef};
    return mc;
}

double model_forward(struct model *m, const int *tokens, const int *targets, int B, int T) {
    double loss = 0;
    model_forward_exec(m, tokens, targets, B, T, NULL, &loss);
    return loss;
}

static int go_on(const struct model_exec *x) { return !x || !x->between || !x->between(x->ctx); }

/* The local experts ask x->between too: an expert's compute is most of a layer's. */
static void interruptible(struct moe_layer_cfg *mc, const struct model_exec *x) {
    if (!x) return;
    mc->interrupt = x->between;
    mc->interrupt_ctx = x->ctx;
}

int model_forward_exec(struct model *m, const int *tokens, const int *targets, int B, int T,
                       const struct model_exec *x, double *loss) {
    const struct model_config *c = &m->cfg;
    int C = c->d_model, NH = c->n_heads, L = c->n_layers, V = c->vocab, E = c->n_experts;
    int N = B * T;
    struct acts a;
    size_t n_int;
    acts_carve(&a, m->act_mem, m->int_mem, c, m->B_max, &n_int);
    struct acts_layout s = layout_of(c, m->B_max);
    struct moe_layer_cfg mc = model_moe_cfg(c, B, T);
    interruptible(&mc, x);
    struct model_params *p = &m->params;

    memset(m->stats.load, 0, sizeof(long) * L * E);
    m->stats.dropped = 0;
    double aux_total = 0, z_total = 0;

    encoder_forward(a.resid, tokens, p->wte, N, C);
    for (int l = 0; l < L; l++) {
        real *xin = a.resid + l * s.NC, *xmid = a.resid_mid + l * s.NC;
        real *ln1 = a.ln1 + l * s.NC, *qkv = a.qkv + l * 3 * s.NC, *att = a.att + l * s.att;
        real *atty = a.atty + l * s.NC, *ln2 = a.ln2 + l * s.NC;
        real *xout = a.resid + (l + 1) * s.NC;

        rmsnorm_forward(ln1, a.ln1_rstd + l * s.N, xin, p->ln1_w + l * C, N, C, c->norm_eps);
        matmul_forward(qkv, ln1, p->qkv_w + (size_t)l * 3 * C * C, N, C, 3 * C);
        rope_forward(qkv, a.freqs, B, T, C, NH);
        attention_forward(atty, att, qkv, B, T, C, NH);
        matmul_forward(xmid, atty, p->attn_out + (size_t)l * C * C, N, C, C);
        add_inplace(xmid, xin, (size_t)N * C);
        if (!go_on(x)) return -1;

        rmsnorm_forward(ln2, a.ln2_rstd + l * s.N, xmid, p->ln2_w + l * C, N, C, c->norm_eps);
        struct moe_acts ma;
        moe_acts_of(&ma, &a, c, m->B_max, l);
        const real *bias = c->bias_balancing ? m->buffers.expert_bias + (size_t)l * E : NULL;
        m->stats.dropped += router_forward(&ma, m->stats.load + (size_t)l * E, ln2,
                                           p->router_w + (size_t)l * E * C, bias, &mc);
        double aux, z;
        router_losses(&aux, &z, &ma, &mc);
        aux_total += aux;
        z_total += z;
        if (x && x->experts_forward) {
            moe_gather(ma.xe, ln2, ma.row_token, ma.expert_off[E], C);
            if (x->experts_forward(x->ctx, l, &ma, &mc) != 0) return -1;
            moe_combine(a.moe_out, ma.ye, ma.row_of, ma.gates, N, c->top_k, C);
        } else {
            size_t FC = (size_t)c->d_ff * C;
            experts_forward(a.moe_out, &ma, ln2, p->w_gate + l * E * FC, p->w_up + l * E * FC,
                            p->w_down + l * E * FC, &mc);
        }
        add_into(xout, xmid, a.moe_out, (size_t)N * C);
        if (!go_on(x)) return -1;
    }
    rmsnorm_forward(a.lnf, a.lnf_rstd, a.resid + L * s.NC, p->lnf_w, N, C, c->norm_eps);
    matmul_forward(a.logits, a.lnf, p->wte, N, C, V);
    double ce_sum = crossentropy_forward(a.probs, a.logits, targets, N, V);

    m->stats.ce = targets ? ce_sum / N : 0;
    m->stats.aux = aux_total;
    m->stats.z = z_total;
    const struct model_distill *dt = &m->distill;
    int distilling = targets && dt->teacher_logits;
    m->stats.kl = distilling ? distill_forward(a.logits, dt->teacher_logits, N, V,
                                               dt->temperature) / N : 0;
    double task = m->stats.ce;
    if (distilling)
        task = (1 - (double)dt->alpha) * m->stats.ce +
               (double)dt->alpha * dt->temperature * dt->temperature * m->stats.kl;
    m->stats.loss = task + c->aux_loss_coef * aux_total + c->z_loss_coef * z_total;
    *loss = m->stats.loss;
    return 0;
}

const real *model_logits(const struct model *m) {
    struct acts a;
    size_t n_int;
    acts_carve(&a, m->act_mem, m->int_mem, &m->cfg, m->B_max, &n_int);
    return a.logits;
}

/* ---- backward ---- */

void model_backward(struct model *m, const int *tokens, const int *targets, int B, int T,
                    double loss_scale, int accumulate) {
    model_backward_exec(m, tokens, targets, B, T, loss_scale, accumulate, NULL);
}

int model_backward_exec(struct model *m, const int *tokens, const int *targets, int B, int T,
                        double loss_scale, int accumulate, const struct model_exec *x) {
    const struct model_config *c = &m->cfg;
    int C = c->d_model, NH = c->n_heads, L = c->n_layers, V = c->vocab, E = c->n_experts;
    int N = B * T;
    struct acts a;
    size_t n_int;
    acts_carve(&a, m->act_mem, m->int_mem, c, m->B_max, &n_int);
    struct acts_layout s = layout_of(c, m->B_max);
    struct moe_layer_cfg mc = model_moe_cfg(c, B, T);
    interruptible(&mc, x);
    mc.aux_coef *= loss_scale;
    mc.z_coef *= loss_scale;
    mc.accumulate = accumulate;
    struct model_params *p = &m->params, *g = &m->grads;

    /* matrix gradients are written by their GEMMs; only the norm weights (the arena's tail,
     * after the n_decay matrix elements) accumulate and need zeroing */
    if (!accumulate)
        memset(m->grad_mem + m->n_decay, 0, sizeof(real) * (m->n_params - m->n_decay));
    real *dresid = a.scratch, *dln = dresid + s.NC, *datty = dln + s.NC;
    real *dqkv = datty + s.NC, *lscratch = dqkv + 3 * s.NC;

    /* loss = mean over tokens of CE (weighted 1 - alpha when distilling, plus alpha T^2 times
     * the mean KL, whose logit gradient is alpha T (p_T - q_T) / N): dlogits overwrite probs */
    const struct model_distill *dt = &m->distill;
    double ce_w = dt->teacher_logits ? 1 - (double)dt->alpha : 1;
    crossentropy_backward(a.probs, a.probs, targets, N, V, ce_w * loss_scale / N);
    if (dt->teacher_logits)
        distill_backward(a.probs, a.logits, dt->teacher_logits, N, V, dt->temperature,
                         (double)dt->alpha * dt->temperature * loss_scale / N);
    matmul_backward(dln, g->wte, a.probs, a.lnf, p->wte, N, C, V, accumulate);
    memset(dresid, 0, sizeof(real) * (size_t)N * C);
    rmsnorm_backward(dresid, g->lnf_w, dln, a.resid + L * s.NC, p->lnf_w, a.lnf_rstd, N, C);

    for (int l = L - 1; l >= 0; l--) {
        real *xin = a.resid + l * s.NC, *xmid = a.resid_mid + l * s.NC;
        real *ln1 = a.ln1 + l * s.NC, *qkv = a.qkv + l * 3 * s.NC, *att = a.att + l * s.att;
        real *atty = a.atty + l * s.NC, *ln2 = a.ln2 + l * s.NC;
        size_t FC = (size_t)c->d_ff * C;

        /* MoE block: dresid holds d(xout) = d(xmid) through the skip; add the MoE path */
        struct moe_acts ma;
        moe_acts_of(&ma, &a, c, m->B_max, l);
        if (x && x->experts_backward) {
            struct moe_scratch ms;
            moe_backward_scratch(&ms, lscratch, &mc);
            moe_combine_backward(ms.dye, ms.dgates, dresid, ma.ye, ma.row_of, ma.gates, N,
                                 c->top_k, C);
            if (x->experts_backward(x->ctx, l, &ma, &ms, &mc) != 0) return -1;
            moe_router_backward(dln, g->router_w + (size_t)l * E * C, &ms, &ma, ln2,
                                p->router_w + (size_t)l * E * C, &mc);
        } else {
            moe_backward(dln, g->router_w + (size_t)l * E * C, g->w_gate + l * E * FC,
                         g->w_up + l * E * FC, g->w_down + l * E * FC, lscratch, dresid, &ma,
                         ln2, p->router_w + (size_t)l * E * C, p->w_gate + l * E * FC,
                         p->w_up + l * E * FC, p->w_down + l * E * FC, &mc);
        }
        rmsnorm_backward(dresid, g->ln2_w + l * C, dln, xmid, p->ln2_w + l * C,
                         a.ln2_rstd + l * s.N, N, C);
        if (!go_on(x)) return -1;

        /* attention block */
        matmul_backward(datty, g->attn_out + (size_t)l * C * C, dresid, atty,
                        p->attn_out + (size_t)l * C * C, N, C, C, accumulate);
        attention_backward(dqkv, lscratch, datty, qkv, att, B, T, C, NH);
        rope_backward(dqkv, a.freqs, B, T, C, NH);
        /* qkv was roped in place; the projection's input is ln1, its output gradient dqkv */
        matmul_backward(dln, g->qkv_w + (size_t)l * 3 * C * C, dqkv, ln1,
                        p->qkv_w + (size_t)l * 3 * C * C, N, C, 3 * C, accumulate);
        rmsnorm_backward(dresid, g->ln1_w + l * C, dln, xin, p->ln1_w + l * C,
                         a.ln1_rstd + l * s.N, N, C);
        if (x && x->layer_done && x->layer_done(x->ctx, l) != 0) return -1;
        if (!go_on(x)) return -1;
    }
    encoder_backward(g->wte, dresid, tokens, N, C);
    return 0;
}

/* ---- optimizer ---- */

double adamw_lr(const struct adamw_config *o, long step) {
    if (o->warmup_steps > 0 && step < o->warmup_steps)
        return o->lr * (double)(step + 1) / o->warmup_steps;
    long decay = o->total_steps - o->warmup_steps;
    if (decay <= 0) return o->lr;
    double frac = (double)(step - o->warmup_steps) / decay;
    if (frac > 1) frac = 1;
    return o->min_lr + 0.5 * (o->lr - o->min_lr) * (1 + cos(M_PI * frac));
}

/* Sum of squares in double over fixed chunks of 64Ki elements, the chunk sums added in chunk
 * order: the result is the same whatever the number of threads. */
enum { SQ_CHUNK = 1 << 16 };

static double chunk_squares(const real *x, size_t n, size_t c) {
    size_t end = (c + 1) * SQ_CHUNK < n ? (c + 1) * SQ_CHUNK : n;
    double s = 0;
    for (size_t i = c * SQ_CHUNK; i < end; i++) s += (double)x[i] * x[i];
    return s;
}

static double block_squares(const real *p, size_t n) {
    size_t n_chunks = (n + SQ_CHUNK - 1) / SQ_CHUNK;
    if (n_chunks <= 1) return n ? chunk_squares(p, n, 0) : 0;
    double part[n_chunks]; /* 8 bytes per 64Ki elements: small */
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (size_t c = 0; c < n_chunks; c++) part[c] = chunk_squares(p, n, c);
    double total = 0;
    for (size_t c = 0; c < n_chunks; c++) total += part[c];
    return total;
}

/* The blocks: tensor by tensor in arena order, each layer in turn, and each of this model's
 * experts in turn within an expert tensor's layer. out == NULL only counts them. */
static size_t norm_blocks_of(const struct model *m, double *out) {
    size_t k = 0, L = m->cfg.n_layers;
    for (int i = 0; i < MODEL_NUM_TENSORS; i++) {
        struct model_tensor_info ti;
        model_tensor_info(&m->cfg, i, &ti);
        size_t layers = ti.per_layer ? L : 1;
        size_t parts = model_tensor_is_expert(i) ? (size_t)m->n_local_experts : 1;
        size_t n = m->tensor_sizes[i] / (layers * parts);
        const real *p = model_tensor(&m->grads, i);
        for (size_t b = 0; b < layers * parts; b++, k++)
            if (out) out[k] = block_squares(p + b * n, n);
    }
    return k;
}

size_t model_n_norm_blocks(const struct model *m) { return norm_blocks_of(m, NULL); }

void model_norm_blocks(const struct model *m, double *out) { norm_blocks_of(m, out); }

double model_grad_norm(const struct model *m) {
    size_t n_blocks = model_n_norm_blocks(m);
    double *part = malloc(sizeof(double) * n_blocks);
    if (!part) return NAN; /* no memory for a few doubles: the update will say diverged */
    model_norm_blocks(m, part);
    double total = 0;
    for (size_t b = 0; b < n_blocks; b++) total += part[b];
    free(part);
    return sqrt(total);
}

double model_update(struct model *m, const struct adamw_config *o) {
    double norm = model_grad_norm(m);
    model_update_with_norm(m, o, norm);
    return norm;
}

/* The update from m's state into (p, mo, v, bias), which may be m's own arenas. */
static void update_to(struct model *m, real *p, real *mo, real *v, real *bias,
                      const struct adamw_config *o, double norm) {
    float scale = 1.0f;
    if (o->grad_clip > 0 && norm > o->grad_clip) scale = (float)(o->grad_clip / norm);
    float lr = (float)adamw_lr(o, m->step);
    adamw_update_into(p, mo, v, m->param_mem, m->grad_mem, m->m_mem, m->v_mem, m->n_params,
                      m->n_decay, lr, o->beta1, o->beta2, o->eps, o->weight_decay, scale,
                      m->step + 1);
    if (bias != m->buffer_mem) memcpy(bias, m->buffer_mem, sizeof(real) * m->n_buffers);

    const struct model_config *c = &m->cfg;
    if (c->bias_balancing) {
        /* DeepSeek-V3: nudge each expert's selection bias toward equal load (integer counts,
         * so the update is exact and independent of how the batch was split) */
        int E = c->n_experts;
        for (int l = 0; l < c->n_layers; l++) {
            long total = 0;
            for (int e = 0; e < E; e++) total += m->stats.load[l * E + e];
            for (int e = 0; e < E; e++) {
                long diff = total - (long)E * m->stats.load[l * E + e]; /* E * (mean - load) */
                real sgn = (real)((diff > 0) - (diff < 0));
                bias[l * E + e] += c->bias_update_rate * sgn;
            }
        }
    }
}

void model_update_with_norm(struct model *m, const struct adamw_config *o, double norm) {
    update_to(m, m->param_mem, m->m_mem, m->v_mem, m->buffer_mem, o, norm);
    m->step++;
}

void outer_nesterov(real *theta_out, real *u_out, const real *theta, const real *u,
                    const real *delta, size_t n, float lr, float mu) {
    /* elementwise, every output its own: the same bits on any number of threads */
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (size_t i = 0; i < n; i++) {
        real v = mu * u[i] + delta[i];
        u_out[i] = v;
        theta_out[i] = theta[i] - lr * (delta[i] + mu * v);
    }
}

int model_state_alloc(const struct model *m, struct model_state *s) {
    s->n_params = m->n_params;
    s->param_mem = model_arena_alloc(m->n_params);
    s->m_mem = model_arena_alloc(m->n_params);
    s->v_mem = model_arena_alloc(m->n_params);
    s->buffer_mem = malloc(sizeof(real) * (m->n_buffers ? m->n_buffers : 1));
    s->step = -1;
    if (s->param_mem && s->m_mem && s->v_mem && s->buffer_mem) return 0;
    model_state_free(s);
    return -1;
}

void model_state_free(struct model_state *s) {
    model_arena_free(s->param_mem, s->n_params);
    model_arena_free(s->m_mem, s->n_params);
    model_arena_free(s->v_mem, s->n_params);
    free(s->buffer_mem);
    memset(s, 0, sizeof *s);
}

void model_state_swap(struct model *m, struct model_state *s) {
    struct model_state mine = {m->param_mem, m->m_mem, m->v_mem, m->buffer_mem, m->step,
                               m->n_params};
    m->param_mem = s->param_mem;
    m->m_mem = s->m_mem;
    m->v_mem = s->v_mem;
    m->buffer_mem = s->buffer_mem;
    m->step = s->step;
    *s = mine;
    point_into(&m->params, m->param_mem, m->tensor_sizes);
    point_into(&m->m, m->m_mem, m->tensor_sizes);
    point_into(&m->v, m->v_mem, m->tensor_sizes);
    m->buffers.expert_bias = m->buffer_mem;
}

void model_update_into(struct model *m, struct model_state *s, const struct adamw_config *o,
                       double norm) {
    update_to(m, s->param_mem, s->m_mem, s->v_mem, s->buffer_mem, o, norm);
    s->step = m->step + 1;
    model_state_swap(m, s);
}
