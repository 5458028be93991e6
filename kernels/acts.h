/*
 * acts.h — the activation arena of one forward pass, as kernels/model.c and
 * kernels/cuda/model_cuda.cu both lay it out: which activation sits where in one allocation
 * of reals (and one of ints), given the sizes each side computes (struct acts_layout: the
 * CPU keeps (B, NH, T, T) attention probabilities, the GPU (B, NH, T) statistics), and the
 * MoE layer configuration of a model configuration. One carve, so that a state or an
 * activation moves between the two with the same offsets.
 * Never: allocates (the models do), or holds a value.
 */
#ifndef MOE_KERNELS_ACTS_H
#define MOE_KERNELS_ACTS_H

#include "layers.h"
#include "model.h"

#include <stddef.h>

#ifdef __cplusplus // kernels/cuda/model_cuda.cu (C++) includes it too
extern "C" {
#endif

/* Per-layer activations live at fixed strides computed from (B_max, seq_len), so a shorter
 * batch reuses the same arena. */
struct acts_layout {
    size_t NC, N, NE, NK, NKC, NKF, att, scratch;
};

/* Offsets of every activation, in reals, from act_mem; ints separately in int_mem. */
struct acts {
    real *resid;     // (L+1, N, C) block inputs; resid[L] is the last block's output
    real *resid_mid; // (L, N, C) after the attention residual
    real *ln1, *ln1_rstd, *qkv, *att, *atty, *ln2, *ln2_rstd; // (L, ...)
    real *r_logits, *r_probs, *r_lse, *gates, *xe, *h1, *h2, *ha, *ye;
    real *moe_out;           // (N, C) scratch for one layer's MoE output
    real *lnf, *lnf_rstd;    // (N, C), (N)
    real *logits, *probs;    // (N, V)
    real *freqs;             // (T, HD/2, 2)
    real *scratch;
    int *topk, *row_of, *expert_off, *row_token; // (L, ...)
};

/* The sizes both layouts share; each side adds att and scratch. */
static inline struct acts_layout acts_layout_sizes(const struct model_config *c, int B) {
    struct acts_layout l;
    size_t T = c->seq_len, N = (size_t)B * T, C = c->d_model;
    l.att = l.scratch = 0;
    l.N = N;
    l.NC = N * C;
    l.NE = N * c->n_experts;
    l.NK = N * c->top_k;
    l.NKC = l.NK * C;
    l.NKF = l.NK * c->d_ff;
    return l;
}

/* Points a's members into mem and imem (NULL: only counts) and returns the reals needed;
 * *n_int gets the ints. */
static inline size_t acts_carve_layout(struct acts *a, real *mem, int *imem,
                                       const struct model_config *c, const struct acts_layout *lp,
                                       size_t *n_int) {
    const struct acts_layout l = *lp;
    size_t L = c->n_layers, V = c->vocab, T = c->seq_len, HD = c->d_model / c->n_heads;
    size_t off = 0;
#define CARVE(field, count) (a->field = mem ? mem + off : NULL, off += (count))
    CARVE(resid, (L + 1) * l.NC);
    CARVE(resid_mid, L * l.NC);
    CARVE(ln1, L * l.NC);
    CARVE(ln1_rstd, L * l.N);
    CARVE(qkv, L * 3 * l.NC);
    CARVE(att, L * l.att);
    CARVE(atty, L * l.NC);
    CARVE(ln2, L * l.NC);
    CARVE(ln2_rstd, L * l.N);
    CARVE(r_logits, L * l.NE);
    CARVE(r_probs, L * l.NE);
    CARVE(r_lse, L * l.N);
    CARVE(gates, L * l.NK);
    CARVE(xe, L * l.NKC);
    CARVE(h1, L * l.NKF);
    CARVE(h2, L * l.NKF);
    CARVE(ha, L * l.NKF);
    CARVE(ye, L * l.NKC);
    CARVE(moe_out, l.NC);
    CARVE(lnf, l.NC);
    CARVE(lnf_rstd, l.N);
    CARVE(logits, l.N * V);
    CARVE(probs, l.N * V);
    CARVE(freqs, T * HD);
    CARVE(scratch, l.scratch);
#undef CARVE
    size_t ioff = 0;
#define ICARVE(field, count) (a->field = imem ? imem + ioff : NULL, ioff += (count))
    ICARVE(topk, L * l.NK);
    ICARVE(row_of, L * l.NK);
    ICARVE(expert_off, L * (c->n_experts + 1));
    ICARVE(row_token, L * l.NK);
#undef ICARVE
    *n_int = ioff;
    return off;
}

/* Layer l's slices of the MoE activations into *m: a struct moe_acts, or the CUDA model's
 * struct moe_acts_cuda (the same member names); s is the arena's layout, E the experts. */
#define ACTS_MOE_LAYER(m, a, s, l, E)                                                             \
    do {                                                                                          \
        (m)->logits = (a)->r_logits + (l) * (s).NE;                                               \
        (m)->probs = (a)->r_probs + (l) * (s).NE;                                                 \
        (m)->lse = (a)->r_lse + (l) * (s).N;                                                      \
        (m)->topk = (a)->topk + (l) * (s).NK;                                                     \
        (m)->gates = (a)->gates + (l) * (s).NK;                                                   \
        (m)->row_of = (a)->row_of + (l) * (s).NK;                                                 \
        (m)->expert_off = (a)->expert_off + (size_t)(l) * ((E) + 1);                              \
        (m)->row_token = (a)->row_token + (l) * (s).NK;                                           \
        (m)->xe = (a)->xe + (l) * (s).NKC;                                                        \
        (m)->h1 = (a)->h1 + (l) * (s).NKF;                                                        \
        (m)->h2 = (a)->h2 + (l) * (s).NKF;                                                        \
        (m)->ha = (a)->ha + (l) * (s).NKF;                                                        \
        (m)->ye = (a)->ye + (l) * (s).NKC;                                                        \
    } while (0)

/* The MoE layer configuration of a model for batches of B sequences of T tokens. */
struct moe_layer_cfg model_moe_cfg(const struct model_config *c, int B, int T);

#ifdef __cplusplus
}
#endif

#endif
