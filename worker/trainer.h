/*
 * trainer.h — the training loop as a library: one process, step by step.
 *
 * Owns: a job's model (parameters, gradients, AdamW moments, expert biases), its dataset,
 * the batch buffers, and the sequence "batch(seed, step) -> forward -> backward -> update".
 * The worker daemon (a later issue) drives exactly these calls for the slots it plays;
 * `moectl train` drives them in-process.
 * Never: prints progress or parses command lines (callers do), and never writes to disk
 * except through the explicit save calls.
 */
#ifndef MOE_TRAINER_H
#define MOE_TRAINER_H

#include "../common/spec.h"
#include "../common/status.h"
#include "../kernels/model.h"
#include "data.h"

struct trainer {
    struct job_spec spec;
    struct model model;
    struct dataset data;
    int *tokens, *targets; // (M, T): one micro-batch
    int B, M, T;           // sequences per step, per micro-batch (M divides B), length
    long *load_sum;        // (L, E) expert loads summed over the step's micro-batches
    double unigram_bits;   // entropy of the training data, the bar a model must beat
};

struct step_report {
    long step;          // the step just completed (1-based count of updates)
    double loss, ce, aux, z;
    double grad_norm, lr;
    long dropped;       // assignments dropped by capacity this step
    long assignments;   // (token, expert) assignments routed this step, all layers
    double load_max_over_mean; // busiest expert's load / mean load, worst layer (1.0 = balanced)
    double seconds;     // wall time of the step: data + forward + backward + update
    double t_forward, t_backward, t_update; // its parts (the rest is reading the batch)
    long tokens;        // tokens processed this step
};

/* Validates the spec, loads the data, allocates and initialises the model from run.seed. */
moe_status trainer_open(struct trainer *t, const struct job_spec *spec);
void trainer_close(struct trainer *t);

/* One optimizer step on the batch of step t->model.step. */
moe_status trainer_step(struct trainer *t, struct step_report *r);

/* Mean cross-entropy (nats per byte) over run.eval_batches batches of held-out windows spread
 * evenly over the held-out data; MOE_EINVAL if the spec holds nothing out. */
moe_status trainer_eval(struct trainer *t, double *loss, long *windows);

/* The trained model: `path` (.safetensors) plus `path` with .json for .safetensors (the job
 * spec and the step). Both are written atomically. */
moe_status trainer_save_model(const struct trainer *t, const char *path);

/* The full training state (parameters, moments, expert biases, step) for an exact replay. */
moe_status trainer_save_state(const struct trainer *t, const char *path);
moe_status trainer_load_state(struct trainer *t, const char *path);

#endif
