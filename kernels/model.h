/*
 * model.h — the MoE transformer: configuration, parameter arenas, forward, backward, AdamW.
 *
 * Owns: the exact math of the model (docs/model.md is its specification), the layout of the
 * parameter / gradient / optimizer-moment arenas, and the activation arena of one batch.
 * Never: reads files, parses specs, talks to other processes or allocates inside a step. It
 * knows nothing of daemons or networks; the trainer and workers drive it step by step.
 *
 * Dimension letters used throughout (as in every kernel comment):
 *   B batch (sequences)   T sequence length   C d_model   NH heads   HD = C/NH head dim
 *   V vocabulary          L layers            E experts   K top-k    F expert hidden size
 *   N = B*T tokens        M <= N*K routed (token, expert) assignments kept after capacity
 *
 * Precision: `real` is float, or double when compiled with MOE_REAL_DOUBLE (the gradient check
 * builds a second copy of the kernels that way, so finite differences are meaningful).
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef MOE_REAL_DOUBLE
typedef double real;
#else
typedef float real;
#endif

struct model_config {
    int vocab;     // V, 256 for the byte-level vocabulary
    int d_model;   // C
    int n_layers;  // L
    int n_heads;   // NH, divides C, C/NH even (rotary pairs)
    int seq_len;   // T, the longest sequence the model is built for
    int n_experts; // E
    int top_k;     // K <= E
    int d_ff;      // F, hidden size of each SwiGLU expert
    float capacity_factor; // expert capacity = ceil(cf * T * K / E) per sequence (routing group)
    int dropless;          // 1: no capacity limit, no token is ever dropped
    float aux_loss_coef;   // alpha: Switch load-balancing loss weight
    float z_loss_coef;     // beta: router z-loss weight
    int bias_balancing;    // 1: DeepSeek-V3 auxiliary-loss-free expert bias (selection only)
    float bias_update_rate;// u: bias_e += u * sign(mean_load - load_e) after each step
    float rope_base;       // rotary base (10000)
    float norm_eps;        // RMSNorm epsilon (1e-5)
    float init_std;        // std of the normal initialisation (0.02)
};

struct adamw_config {
    float lr;           // peak learning rate
    float min_lr;       // floor of the cosine decay
    int warmup_steps;   // linear warm-up from lr/warmup to lr
    int total_steps;    // cosine decay ends here
    float beta1, beta2, eps;
    float weight_decay; // decoupled, applied to matrices only (not norm weights)
    float grad_clip;    // global L2 norm clip; <= 0 disables
};

/* Parameters, in arena order. Matrices first, norm weights last: AdamW decays exactly the
 * first `n_decay` floats of the arena, so the optimizer stays one flat loop. The same struct
 * type points into the gradient and the two moment arenas. */
#define MODEL_NUM_TENSORS 10
struct model_params {
    real *wte;      // (V, C)         token embedding, tied LM head
    real *qkv_w;    // (L, 3C, C)     attention q,k,v projections (rows: q heads, k heads, v heads)
    real *attn_out; // (L, C, C)      attention output projection
    real *router_w; // (L, E, C)      router
    real *w_gate;   // (L, E, F, C)   expert SwiGLU gate projection
    real *w_up;     // (L, E, F, C)   expert SwiGLU up projection
    real *w_down;   // (L, E, C, F)   expert down projection
    real *ln1_w;    // (L, C)         RMSNorm before attention
    real *ln2_w;    // (L, C)         RMSNorm before the MoE feed-forward
    real *lnf_w;    // (C)            final RMSNorm
};

/* Non-trained state that is still model state (replicated, saved): */
struct model_buffers {
    real *expert_bias; // (L, E) selection-only bias of auxiliary-loss-free balancing
};

/* Statistics of the last forward, for progress lines and the bias update. */
struct moe_stats {
    double loss;      // total objective: ce + alpha*sum_l aux_l + beta*sum_l z_l
    double ce;        // mean cross-entropy (nats/token)
    double aux;       // sum over layers of the load-balancing loss
    double z;         // sum over layers of the z-loss
    double kl;        // mean distillation KL(teacher_T || student_T) (nats/token); 0 without
    long dropped;     // (token, expert) assignments dropped by capacity, all layers
    long *load;       // (L, E) tokens selected per expert (before capacity), owned by the model
};

/* Distillation (docs/model.md, "Distillation"): while teacher_logits is set, a forward with
 * targets computes loss = (1 - alpha) ce + alpha temp^2 kl + the router terms, and the
 * backward differentiates that. The caller points it at the teacher's logits of the same
 * tokens (B, T, V) for the passes it trains, and clears it for evaluation. */
struct model_distill {
    const real *teacher_logits; // NULL: plain cross-entropy
    float alpha;                // weight of the KL term, in [0, 1]
    float temperature;          // > 0; both softmaxes are taken of logits / temperature
};

struct model {
    struct model_config cfg;
    /* The experts whose weights this model holds: [expert_lo, expert_lo + n_local_experts).
     * All E for a whole model; a slot of a distributed job holds its share (the expert tensors
     * are then (L, n_local_experts, ...), everything else is whole). */
    int expert_lo, n_local_experts;
    size_t n_params;              // floats in the parameter arena
    size_t n_decay;               // the first n_decay floats get weight decay
    size_t tensor_sizes[MODEL_NUM_TENSORS];
    struct model_params params;   // points into param_mem
    struct model_params grads;    // points into grad_mem (allocated by model_alloc_train)
    struct model_params m, v;     // AdamW moments
    struct model_buffers buffers;
    real *param_mem, *grad_mem, *m_mem, *v_mem, *buffer_mem;
    size_t n_buffers;
    /* activations for batches up to (B_max, T): see model.c */
    int B_max;
    real *act_mem;
    size_t act_size;
    int *int_mem;                 // routing decisions (top-k, rows) of the last forward
    size_t n_int;
    struct moe_stats stats;
    struct model_distill distill; // zero: no teacher
    long step; // optimizer steps taken
};

/* Reports (as moe_status failure via status.h conventions) what is wrong with a config. */
int model_config_check(const struct model_config *cfg, char *why, size_t why_len);

/* Per-sequence expert capacity for sequences of T tokens: ceil(cf * T * K / E), at most T * K
 * (and T * K when dropless). */
int model_expert_capacity(const struct model_config *c, int T);

/* Allocates parameters, gradients, moments and activations for batches up to B_max sequences.
 * Returns 0 or -1 (out of memory). */
int model_alloc(struct model *m, const struct model_config *cfg, int B_max);
/* The same holding only experts [expert_lo, expert_lo + n_local) of each layer. */
int model_alloc_experts(struct model *m, const struct model_config *cfg, int B_max, int expert_lo,
                        int n_local);

/* Bytes that model_alloc_experts would take for n_local experts and micro-batch B_max: the
 * parameter, gradient and two moment arenas and the activations. A double, so that an absurd
 * configuration reads as a huge number (or infinity) instead of wrapping around. */
double model_bytes_needed(const struct model_config *cfg, int B_max, int n_local);
/* The parameters (n_params: each arena's reals) of a model with n_local experts. */
double model_params_of(const struct model_config *cfg, int n_local);

/* Tensors 4..6 (gate, up, down) are the experts': (L, E, ...) with E the local count. */
static inline int model_tensor_is_expert(int i) { return i >= 4 && i <= 6; }

/* Points m->grads into another gradient arena of n_params reals; returns the previous one. The
 * mesh-emulating trainer gives each data shard its own arena this way. */
real *model_swap_grad_arena(struct model *m, real *mem);
void model_free(struct model *m);
/* Frees the gradient and moment arenas of a model that will only run forward (a teacher):
 * three quarters of its state. model_backward and the updates must not be called after. */
void model_forward_only(struct model *m);

/* Deterministic initialisation from seed (docs/model.md, "Initialisation"). Zeroes moments,
 * buffers and the step counter. */
void model_init(struct model *m, uint64_t seed);

/* Forward over tokens (B, T) with targets (B, T) (targets may be NULL: logits only, no loss).
 * T <= cfg.seq_len, B <= B_max. Returns the total objective; fills m->stats. */
double model_forward(struct model *m, const int *tokens, const int *targets, int B, int T);

/* Where the experts of a model that holds only some of them run (the distributed step). The
 * model routes, gathers, combines and back-propagates through the router itself; the hooks
 * move rows to the experts' holders and back. A hook returns 0, or -1 to abandon the pass
 * (it keeps its own error). */
struct moe_acts;
struct moe_layer_cfg;
struct moe_scratch;
struct model_exec {
    void *ctx;
    /* both expert hooks, or neither (NULL: the experts run here, all E must be local) */
    /* a->xe holds every kept row of layer l (all E experts): fill a->ye for every row */
    int (*experts_forward)(void *ctx, int l, struct moe_acts *a, const struct moe_layer_cfg *c);
    /* s->dye holds every row's output gradient: fill s->dxe for every row, and the gradients
     * of this model's own experts of layer l: written, or added when c->accumulate is set (a
     * micro-batch after the first), as model_backward's own experts are */
    int (*experts_backward)(void *ctx, int l, const struct moe_acts *a, struct moe_scratch *s,
                            const struct moe_layer_cfg *c);
    /* every gradient of layer l is final (called as the backward leaves it; may be NULL) */
    int (*layer_done)(void *ctx, int l);
    /* between two pieces of a pass (each layer's attention and MoE block, forward and
     * backward; may be NULL): non-zero abandons the pass, as a failed hook does */
    int (*between)(void *ctx);
};
/* model_forward / model_backward with the experts run by x (NULL: here, all E must be
 * local). Return 0, or -1 when a hook failed. */
int model_forward_exec(struct model *m, const int *tokens, const int *targets, int B, int T,
                       const struct model_exec *x, double *loss);
int model_backward_exec(struct model *m, const int *tokens, const int *targets, int B, int T,
                        double loss_scale, int accumulate, const struct model_exec *x);

/* Backward of the last forward (which must have had targets). loss_scale multiplies every
 * loss term's gradient: 1 for a whole batch, B / B_total for a micro-batch of B sequences of a
 * B_total batch, so that accumulated micro-batches give the whole batch's gradient.
 * accumulate = 0 overwrites m->grads; 1 adds to them. */
void model_backward(struct model *m, const int *tokens, const int *targets, int B, int T,
                    double loss_scale, int accumulate);

/* The squared gradient norm in blocks: one per (tensor, layer) and, for the expert tensors,
 * per (tensor, layer, expert), in arena order; each block's sum of squares in double over
 * fixed 64Ki-element chunks of the block. The global squared norm is the sum of every block
 * of the whole model in that order — the same number whichever slots hold which experts.
 * model_norm_blocks writes this model's model_n_norm_blocks() partial sums. */
size_t model_n_norm_blocks(const struct model *m);
void model_norm_blocks(const struct model *m, double *out);
/* sqrt of the blocks' sum, for a model holding every expert */
double model_grad_norm(const struct model *m);

/* One AdamW step with global-norm clipping and the learning-rate schedule at m->step;
 * then the expert-bias update (if enabled) from m->stats.load, which holds the last forward's
 * counts (a caller running micro-batches puts the whole batch's sums there first);
 * increments m->step.
 * Returns the gradient norm before clipping. */
double model_update(struct model *m, const struct adamw_config *opt);
/* The same with the global gradient norm given (a slot of a distributed job computes it with
 * the other slots) and the loads in m->stats.load already the whole batch's. */
void model_update_with_norm(struct model *m, const struct adamw_config *opt, double norm);

/* A state-sized arena of n reals, zeroed (big ones on transparent huge pages, and taken from
 * the prepared ones of kernels/arena_pool.h when one has exactly that size), and its free. */
real *model_arena_alloc(size_t n);
void model_arena_free(real *p, size_t n);

/* A second copy of a model's training state (parameters, moments, buffers, step), the same
 * shape: the previous version a slot keeps so that it can return one step (docs/recovery.md).
 * model_update_into writes the next state into it and swaps, so keeping it copies nothing. */
struct model_state {
    real *param_mem, *m_mem, *v_mem, *buffer_mem;
    long step;
    size_t n_params; // the arenas' length
};
int model_state_alloc(const struct model *m, struct model_state *s); // 0 or -1 (memory)
void model_state_free(struct model_state *s);
/* Exchanges m's state arenas and step with s's (pointers only). */
void model_state_swap(struct model *m, struct model_state *s);
/* model_update_with_norm, reading m's state and writing the result into s, then swapping:
 * afterwards m holds the new step and s the state m had (bit for bit the in-place result). */
void model_update_into(struct model *m, struct model_state *s, const struct adamw_config *opt,
                       double norm);

/* The outer step of mesh.sync: diloco (docs/model.md, "Outer steps"), over n floats, with
 * delta the pods' mean pseudo-gradient (theta - the inner parameters):
 *   u_out = mu * u + delta;  theta_out = theta - lr * (delta + mu * u_out)   (Nesterov)
 * Outputs may not alias inputs (the inputs are the previous version, kept). */
void outer_nesterov(real *theta_out, real *u_out, const real *theta, const real *u,
                    const real *delta, size_t n, float lr, float mu);

/* Learning rate at optimizer step `step` (0-based). */
double adamw_lr(const struct adamw_config *opt, long step);

/* Logits of the last forward: (B, T, V). */
const real *model_logits(const struct model *m);

/* Per-tensor naming for export: name of tensor i (0..MODEL_NUM_TENSORS-1) and its full shape
 * with the layer dimension leading where it has one. */
struct model_tensor_info {
    const char *name;  // e.g. "attn.qkv.weight"
    int per_layer;     // 1: leading dimension is L, exported as blocks.{l}.<name>
    int ndim;          // dims excluding the L dimension
    int dims[3];
};
void model_tensor_info(const struct model_config *cfg, int i, struct model_tensor_info *out);

/* Tensor i of a parameter-shaped struct (params, grads, m or v), in arena order. */
static inline real *model_tensor(const struct model_params *p, int i) {
    return ((real *const *)p)[i];
}

#endif
