/*
 * slot.h — the distributed step: one slot of a pods x slots mesh, between trainer.c and the
 * data plane.
 *
 * Owns: what a slot does beyond the local model: dispatching its tokens' rows to the slots
 * that hold their experts and combining the answers (all-to-all inside the pod), running its
 * own experts on the rows the pod's slots sent it, adding gradients across shards in the
 * mesh's fixed order (dense: reduce-scatter in the pod, all-reduce over pods, all-gather in
 * the pod; experts: tree over the pod's sources here, then all-reduce over pods) in buckets of
 * layers (mesh.bucket_kb) that each cross the pods as one all-reduce, overlapping those
 * reductions with the rest of the backward on a second channel and thread, the global
 * gradient norm and statistics, and gathering the whole model on rank 0 at the end.
 * Never: changes the math. Every number it produces is the one the local trainer (which
 * plays every shard in one process) produces, bit for bit; tests/test_mesh.c holds it to that.
 * Internal to worker/trainer: trainer.c calls these, nothing else does; slot.c calls only
 * below it (step.c, replica.c, model_io.c, the data plane), never back into trainer.c.
 */
#ifndef MOE_SLOT_H
#define MOE_SLOT_H

#include "trainer.h"

moe_status slot_exec_open(struct trainer *t);
void slot_exec_close(struct trainer *t);
/* trainer_step for a slot: collective over the mesh */
moe_status slot_step(struct trainer *t, struct step_report *r);
/* a forward of B sequences in t->tokens / t->targets with the experts where they live */
moe_status slot_forward(struct trainer *t, int B);
/* *sum = the shards' values added in shard order (collective) */
moe_status slot_sum_over_shards(struct trainer *t, double v, double *sum);
/* trainer_save_model for a slot: collective; rank 0 writes */
moe_status slot_save_model(const struct trainer *t, const char *path);

#endif
