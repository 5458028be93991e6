/*
 * layers.h — every layer of the model as a forward/backward pair of plain functions.
 *
 * Owns: the per-layer math, CPU version (C + BLAS). kernels/cuda/ mirrors these names and
 * argument orders so a test can hold one against the other layer by layer.
 * Conventions (as in llm.c): outputs first, then saved activations, then inputs and weights,
 * then dimensions. Gradients are d-prefixed. Each function states whether it "writes" or
 * "adds" to each gradient: matrix gradients are written by their one GEMM per step (so the
 * step never zeroes the 4-bytes-per-parameter gradient arena), the small norm-weight and
 * embedding gradients are added to.
 * Never: allocates, or keeps state between calls. Every loop runs in a fixed order, so results
 * are bit-identical from run to run (no atomics, no thread-count-dependent reductions).
 */
#ifndef MOE_LAYERS_H
#define MOE_LAYERS_H

#include "model.h"

/* out[n] = wte[tokens[n]] */
void encoder_forward(real *out, const int *tokens, const real *wte, int N, int C);
/* dwte[tokens[n]] += dout[n], in token order */
void encoder_backward(real *dwte, const real *dout, const int *tokens, int N, int C);

/* out = w * x / sqrt(mean(x^2) + eps); saves rstd (N) */
void rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight, int N, int C,
                     float eps);
/* adds to dinp, adds to dweight */
void rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp,
                      const real *weight, const real *rstd, int N, int C);

/* out (N, OUT) = inp (N, IN) @ weight(OUT, IN)^T */
void matmul_forward(real *out, const real *inp, const real *weight, int N, int IN, int OUT);
/* writes dinp (if not NULL); writes dweight, or adds to it when accumulate */
void matmul_backward(real *dinp, real *dweight, const real *dout, const real *inp,
                     const real *weight, int N, int IN, int OUT, int accumulate);

/* Rotary embedding on the q and k parts of qkv (B, T, 3C), in place; freqs (T, HD/2, 2) holds
 * cos, sin of t * base^(-2i/HD). Pairs are (2i, 2i+1) within each head. */
void rope_forward(real *qkv, const real *freqs, int B, int T, int C, int NH);
/* the inverse rotation, on dqkv in place */
void rope_backward(real *dqkv, const real *freqs, int B, int T, int C, int NH);

/* Causal multi-head attention. qkv (B, T, 3C) after rope; att (B, NH, T, T) saved softmax
 * probabilities (zero above the diagonal); out (B, T, C). */
void attention_forward(real *out, real *att, const real *qkv, int B, int T, int C, int NH);
/* writes dqkv; scratch (T, T) */
void attention_backward(real *dqkv, real *scratch, const real *dout, const real *qkv,
                        const real *att, int B, int T, int C, int NH);

/* Cross-entropy over logits (N, V): probs (N, V) saved; returns the sum over tokens of
 * -log p(target), accumulated in double in token order. */
double crossentropy_forward(real *probs, const real *logits, const int *targets, int N, int V);
/* dlogits = (probs - onehot(target)) * scale, written over probs' storage allowed */
void crossentropy_backward(real *dlogits, const real *probs, const int *targets, int N, int V,
                           double scale);

/* Distillation (docs/model.md, "Distillation"): with u = z / temp and w = zt / temp row by row
 * (in double), returns the sum over tokens of KL(softmax(w) || softmax(u)), each row's terms
 * added in index order and the rows in token order. Reads only. */
double distill_forward(const real *logits, const real *teacher_logits, int N, int V, float temp);
/* adds scale * (softmax(u) - softmax(w)) to dlogits, row by row (the caller's scale carries
 * alpha * temp / N: d(temp^2 KL)/dz = temp (softmax(u) - softmax(w))) */
void distill_backward(real *dlogits, const real *logits, const real *teacher_logits, int N, int V,
                      float temp, double scale);

/* ---- Mixture of experts ---- */

/* Saved activations of one MoE layer. Rows are (token, expert) assignments kept after the
 * capacity limit, grouped by expert (expert-major, tokens ascending within an expert). */
struct moe_acts {
    real *logits;    // (N, E) router logits
    real *probs;     // (N, E) softmax of the logits
    real *lse;       // (N) logsumexp of the logits (z-loss)
    int *topk;       // (N, K) chosen experts, best first
    real *gates;     // (N, K) renormalised weights probs[topk] / sum_k probs[topk]
    int *row_of;     // (N, K) row of the assignment, -1 if dropped by capacity
    int *expert_off; // (E + 1) first row of each expert
    int *row_token;  // (N*K) token of each row
    real *xe;        // (N*K, C) gathered inputs
    real *h1;        // (N*K, F) gate projection
    real *h2;        // (N*K, F) up projection
    real *ha;        // (N*K, F) silu(h1) * h2
    real *ye;        // (N*K, C) expert outputs
};

struct moe_layer_cfg {
    int B, T, C, E, K, F;
    int capacity;        // per expert per sequence; >= T*K means dropless
    double aux_coef, z_coef; // loss weights, already scaled for a micro-batch's share
    int accumulate;      // backward adds to the weight gradients instead of writing them
    int (*interrupt)(void *ctx); // NULL, or asked before each expert's forward and backward:
    void *interrupt_ctx;         // non-zero skips the layer's other experts (the caller, told
                                 // the same by its own ask, abandons the pass)
};

/* Routing: logits, softmax, top-k on probs + bias, gates, capacity per sequence (k-major
 * priority: every token's first choice before any token's second), the row layout.
 * Counts the selected tokens per expert into load (E) (adds). Returns the dropped count. */
long router_forward(struct moe_acts *a, long *load, const real *inp, const real *router_w,
                    const real *expert_bias, const struct moe_layer_cfg *c);

/* Load-balancing loss (mean over sequences of E * sum_e f_e P_e) and z-loss (mean over tokens
 * of lse^2), unweighted. */
void router_losses(double *aux, double *z, const struct moe_acts *a, const struct moe_layer_cfg *c);

/* The experts and the weighted combine: out (N, C) = sum_k gates * expert(inp) (writes).
 * The composition of moe_gather, expert_ffn_forward for each expert, and moe_combine. */
void experts_forward(real *out, struct moe_acts *a, const real *inp, const real *w_gate,
                     const real *w_up, const real *w_down, const struct moe_layer_cfg *c);

/* Backward of the whole MoE layer: writes dinp (N, C); writes the four weight gradients, or
 * adds to them when c->accumulate. The composition of moe_combine_backward,
 * expert_ffn_backward for each expert, and moe_router_backward.
 * scratch needs moe_backward_scratch_size() reals. */
size_t moe_backward_scratch_size(const struct moe_layer_cfg *c);
void moe_backward(real *dinp, real *drouter_w, real *dw_gate, real *dw_up, real *dw_down,
                  real *scratch, const real *dout, const struct moe_acts *a, const real *inp,
                  const real *router_w, const real *w_gate, const real *w_up,
                  const real *w_down, const struct moe_layer_cfg *c);

/* The phases of the MoE layer, separately: the distributed step runs the experts of a slot on
 * rows that other slots dispatched to it, between the phases that stay with the tokens.
 * Rows are laid out as in struct moe_acts. Every phase does exactly what the composed
 * functions above do, so a row's result does not depend on where its expert ran. */

/* xe (rows, C) = inp[row_token[r]]: the dispatch's packing */
void moe_gather(real *xe, const real *inp, const int *row_token, int rows, int C);
/* One expert over m rows: h1 = xe wg^T, h2 = xe wu^T, ha = silu(h1) h2, ye = ha wd^T. */
void expert_ffn_forward(real *ye, real *h1, real *h2, real *ha, const real *xe,
                        const real *w_gate, const real *w_up, const real *w_down, int m, int C,
                        int F);
/* out (N, C) = sum_k gates[n, k] * ye[row_of[n, k]] in k order (writes) */
void moe_combine(real *out, const real *ye, const int *row_of, const real *gates, int N, int K,
                 int C);

/* Views of the backward scratch (moe_backward_scratch_size reals) */
struct moe_scratch {
    real *dye, *dxe; // (N*K, C)
    real *dh1, *dh2; // (N*K, F)
    real *dprobs, *dlogits; // (N, E)
    real *dgates;    // (N, K)
};
void moe_backward_scratch(struct moe_scratch *s, real *scratch, const struct moe_layer_cfg *c);
/* dye (rows, C) = g * dy of each kept assignment (writes); dgates (N, K) = <dy, ye> */
void moe_combine_backward(real *dye, real *dgates, const real *dout, const real *ye,
                          const int *row_of, const real *gates, int N, int K, int C);
/* One expert over m rows: writes dxe (m, C); writes its three weight gradients, or adds to
 * them when accumulate; m == 0 writes zeros (or adds nothing). dh1, dh2 (m, F) scratch. */
void expert_ffn_backward(real *dxe, real *dw_gate, real *dw_up, real *dw_down, real *dh1,
                         real *dh2, const real *dye, const real *xe, const real *h1,
                         const real *h2, const real *ha, const real *w_gate, const real *w_up,
                         const real *w_down, int m, int C, int F, int accumulate);
/* The router through the gates and both losses, then the gather: writes dinp (N, C) from
 * s->dgates and s->dxe; writes drouter_w (or adds when c->accumulate). */
void moe_router_backward(real *dinp, real *drouter_w, const struct moe_scratch *s,
                         const struct moe_acts *a, const real *inp, const real *router_w,
                         const struct moe_layer_cfg *c);

/* AdamW over a flat arena; the first n_decay elements get decoupled weight decay. */
/* The same update written into other arrays (which may be the inputs): the out-of-place form
 * keeps the previous version of the state (worker/trainer/replica.c); the bits are the same. */
void adamw_update_into(real *params_out, real *m_out, real *v_out, const real *params,
                       const real *grads, const real *m, const real *v, size_t n, size_t n_decay,
                       float lr, float beta1, float beta2, float eps, float weight_decay,
                       float grad_scale, long t);
void adamw_update(real *params, const real *grads, real *m, real *v, size_t n, size_t n_decay,
                  float lr, float beta1, float beta2, float eps, float weight_decay,
                  float grad_scale, long t);

#endif
