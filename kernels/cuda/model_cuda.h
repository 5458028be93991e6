/*
 * model_cuda.h — the whole model on one GPU: kernels/model.h's forward, backward and AdamW
 * step over the layers of layers_cuda.h, and model.h's hooks for where the experts run.
 *
 * Owns: the device arenas (parameters, gradients, AdamW moments, expert biases) in exactly the
 * CPU's layout, so a state moves between struct model and struct model_cuda with one copy per
 * arena; the device activations of one batch (the CPU's, except attention keeps (B, NH, T)
 * logsumexps instead of (B, NH, T, T) probabilities); the routing integers in the CPU's int
 * arena layout.
 * Never: reads files, parses specs or talks to other processes; allocates during a step
 * (except the context's workspaces, on their first use); owns the context (the caller creates
 * and destroys it, and checks cuda_ctx_error after each call).
 *
 * Host/device: tokens and targets are HOST arrays (uploaded each call); stats, like the CPU's,
 * are host values; everything else named here is device memory.
 */
#ifndef MOE_MODEL_CUDA_H
#define MOE_MODEL_CUDA_H

#include "layers_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

struct model_cuda {
    struct model_config cfg;
    struct cuda_ctx *ctx; // not owned
    size_t n_params, n_decay; // as struct model
    size_t tensor_sizes[MODEL_NUM_TENSORS];
    struct model_params params, grads, m, v; // device pointers into the arenas below
    struct model_buffers buffers;            // device
    float *param_mem, *grad_mem, *m_mem, *v_mem, *buffer_mem; // device
    size_t n_buffers;
    float *bias_host; // (L, E) host copy of the expert biases: their update runs on the host
    int B_max;
    float *act_mem; // device activations for batches up to (B_max, seq_len)
    size_t act_size;
    int *int_mem; // device routing integers, the CPU's int_mem layout
    size_t n_int;
    int *expert_off_host; // (L, E + 1) host copy of each layer's row layout
    int *tokens, *targets; // device (B_max * seq_len)
    struct moe_stats stats; // host; stats.load (L, E) owned here
    long step;
};

/* Allocates everything for batches up to B_max sequences on ctx's device and registers the
 * parameter arena with ctx (its bf16 copy in bf16 mode). Returns 0, or -1 with the reason in
 * cuda_ctx_error(ctx) (or, for a bad config or host memory, in why). */
int model_alloc_cuda(struct model_cuda *m, const struct model_config *cfg, int B_max,
                     struct cuda_ctx *ctx, char *why, size_t why_len);
void model_free_cuda(struct model_cuda *m);

/* model_init's values (docs/model.md "Initialisation"), computed on the GPU. */
void model_init_cuda(struct model_cuda *m, uint64_t seed);

/* Copies the CPU model's parameters, moments, expert biases and step in (configs must match);
 * refreshes the bf16 parameter copy. Returns 0 or -1. */
int model_upload_cuda(struct model_cuda *g, const struct model *cpu);
/* Copies parameters, gradients, moments, expert biases and step out to the CPU model. */
int model_download_cuda(struct model *cpu, const struct model_cuda *g);

/* As model_forward / model_backward / model_update (tokens and targets on the host). */
double model_forward_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                          int T);
void model_backward_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                         int T, double loss_scale, int accumulate);

/* Where the experts run: kernels/model.h's struct model_exec for this model. The model routes,
 * gathers, combines and back-propagates through the router itself; the hooks move rows to the
 * experts' holders and back. The CPU's struct cannot serve as it is: its hooks see a struct
 * moe_acts, and a hook here needs the row layout on the host (expert_off_host) to size what
 * it sends. A hook returns 0, or -1 to abandon the pass (it keeps its own error).
 * Stream order: a hook is called once the work before it is queued on cuda_ctx_stream(ctx),
 * not necessarily done. It queues its own device work on that stream, or synchronises
 * (cuda_ctx_sync) before the host or another stream touches the rows, and its outputs must be
 * complete in that stream's order when it returns. No hook is called after a context error. */
struct model_exec_cuda {
    void *ctx;
    /* both expert hooks, or neither (NULL: the experts run here) */
    /* a->xe holds every kept row of layer l (all E experts): fill a->ye for every row */
    int (*experts_forward)(void *ctx, int l, struct moe_acts_cuda *a,
                           const struct moe_layer_cfg *c);
    /* s->dye holds every row's output gradient: fill s->dxe for every row, and write this
     * model's own experts' gradients of layer l (add to them when c->accumulate) */
    int (*experts_backward)(void *ctx, int l, const struct moe_acts_cuda *a,
                            struct moe_scratch *s, const struct moe_layer_cfg *c);
    /* every gradient of layer l is final in stream order (called as the backward leaves it;
     * may be NULL) */
    int (*layer_done)(void *ctx, int l);
};
/* model_forward_cuda / model_backward_cuda with the experts run by x (NULL: here). Return 0,
 * or -1 when a hook failed or the context holds an error (cuda_ctx_error says which); *loss
 * is NaN then. */
int model_forward_exec_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                            int T, const struct model_exec_cuda *x, double *loss);
int model_backward_exec_cuda(struct model_cuda *m, const int *tokens, const int *targets, int B,
                             int T, double loss_scale, int accumulate,
                             const struct model_exec_cuda *x);
double model_update_cuda(struct model_cuda *m, const struct adamw_config *opt);

/* Logits of the last forward: device (B, T, V). */
const float *model_logits_cuda(const struct model_cuda *m);

/* Normal(0, std) values from the initialisation's hash for (seed, tensor, element): the same
 * numbers model_init gives tensor `tensor`, for filling test and benchmark inputs. */
void init_normal_cuda(float *x, size_t n, uint64_t seed, uint64_t tensor, double std,
                      struct cuda_ctx *ctx);

#ifdef __cplusplus
}
#endif

#endif
