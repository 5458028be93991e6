/*
 * step.h — the parts of one optimizer step that both ways of playing the mesh share: the local
 * trainer (trainer.c, every shard in turn) and one slot of a distributed job (slot.c).
 *
 * Owns: one data shard's forward and backward passes (its micro-batches in sequence order) with
 * the losses and expert loads they add up, and the step report's bookkeeping around them: what
 * is cleared before a step, the load-balance figure, and the fields and the divergence check
 * that close it. Below trainer.c and slot.c; calls neither.
 * Never: adds gradients across shards, updates the model or talks to the data plane (the
 * callers do, each its own way).
 */
#ifndef MOE_STEP_H
#define MOE_STEP_H

#include "trainer.h"

/* The losses of one shard's passes: each term a share-weighted sum, so that the shards' parts
 * add up to the whole batch's means. */
struct shard_losses {
    double loss, ce, aux, z, kl;
    long dropped;
};

/* A step begins: the report and the step's summed expert loads are cleared. */
void step_begin(struct trainer *t, struct step_report *r);

/* One shard's passes of `step` into the model's current gradient arena, with the experts where
 * `ex` says (NULL: here). Adds the shard's losses to *part, its loads to t->load_sum and the
 * passes' times to r. -1 when a hook failed (its status is the hook's to keep). */
int step_shard_passes(struct trainer *t, int shard, long step, struct shard_losses *part,
                      struct step_report *r, const struct model_exec *ex);

/* Busiest expert's share against an even split, worst layer: 1.0 is perfect balance. */
double step_load_imbalance(const struct model *m);

/* The step is done: the report gets its step, tokens, assignments and wall time since t0.
 * MOE_EINVAL when the loss is NaN: the run diverged, and training on would be training on
 * garbage. */
moe_status step_end(struct trainer *t, struct step_report *r, double t0);

#endif
