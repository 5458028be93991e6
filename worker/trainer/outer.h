/*
 * outer.h — the outer step of mesh.sync: diloco (docs/crosspod.md, docs/model.md "Outer
 * steps"), for one slot of a distributed job.
 *
 * Between outer steps the pods train apart: the slot's inner steps reduce gradients inside its
 * pod only (slot.c). Every mesh.outer_every (H) steps, the outer step: the pseudo-gradient
 * delta = theta_outer - theta_inner of every parameter the slot holds, and the expert biases,
 * are averaged over the pods in pod order (fp32), the outer Nesterov step moves theta_outer,
 * and the inner state starts again from it, with zero AdamW moments. Afterwards slot s of
 * every pod holds the same bytes again.
 *
 * Owns: the state at the last two outer steps (parameters = theta_outer, moments, biases,
 * step, and the outer momentum with each): the only versions of a diloco slot that another
 * pod can stand in for, so they are what its fence lists, what a restore sends and what a
 * recovery returns to (replica.c asks here). Inner steps are replayed from them.
 * Never: decides when a copy may be overwritten after a fence (replica.c's lock does), or
 * talks to the coordinator.
 * Threads: the training thread, except outer_version and outer_copies, which replica.c calls
 * under its lock from any thread.
 */
#ifndef MOE_OUTER_H
#define MOE_OUTER_H

#include "trainer.h"

struct outer;

/* Slot mode with mesh.sync: diloco: t->mesh.outer, with the live state (if any) as the first
 * outer version. */
moe_status outer_open(struct trainer *t);
void outer_close(struct trainer *t);

/* Whether the step just completed (t->model.step) ends with an outer step. */
int outer_due(const struct trainer *t);
/* The outer step (collective over the mesh): see above. MOE_EINTERNAL if the slot was fenced
 * before it could keep the new version. */
moe_status outer_step(struct trainer *t);
/* The newest outer step known complete on every slot (the older version's; 0 before that). */
long outer_committed(const struct trainer *t);

/* The outer versions held: their steps into steps[0..], returns how many (at most 2). */
int outer_copies(const struct trainer *t, long steps[2]);
/* The arenas (parameters, moments, biases) and outer momentum of the version at `step`:
 * 1, or 0 when none is held. */
int outer_version(const struct trainer *t, long step, real *arena[4], real **mom);
/* The live state becomes the version at `step` (step 0: made from the seed), the other
 * version is dropped: MOE_OK, or MOE_EINVAL when it is not held. */
moe_status outer_return(struct trainer *t, long step);
/* Where a restore receives the outer momentum, and the live state just received (with it)
 * becomes the only version. */
real *outer_incoming_momentum(struct trainer *t);
void outer_adopt(struct trainer *t);

#endif
