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
 * Overlapped (mesh.outer_overlap): the pods' mean of a period's delta crosses on a thread of
 * its own during the next period and is applied at the outer step after it, one outer step
 * late (docs/model.md, "Overlapped outer steps"); the pods still start every period from the
 * same bytes. A version is a copy only once the mean it applies next has arrived (it is part
 * of its carry): up to three versions are kept, of which the two newest complete are listed.
 *
 * Owns: the state at the last outer steps (parameters = theta_outer, moments, biases,
 * step, and with each its "carry": the outer momentum, and overlapped the mean to apply
 * next): the only versions of a diloco slot that another pod can stand in for, so they are
 * what its fence lists, what a restore sends and what a recovery returns to (replica.c asks
 * here). Inner steps are replayed from them. Also the overlapped exchange's thread.
 * Never: decides when a copy may be overwritten after a fence (replica.c's lock does), or
 * talks to the coordinator.
 * Threads: the training thread, except outer_version and outer_copies, which replica.c calls
 * under its lock from any thread. The overlapped exchange's thread touches only the buffer
 * that crosses; it never outlives its epoch's comm (outer_abandon).
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
/* The newest outer step known complete on every slot (the older of the two newest complete
 * versions; 0 before that). */
long outer_committed(const struct trainer *t);
/* Overlapped: the exchange in flight ends (its comm aborted) and is dropped; its version stays
 * incomplete. Called after a failure, before the epoch's comm closes. */
void outer_abandon(struct trainer *t);

/* The complete outer versions held, newest first: their steps into steps[0..], returns how
 * many (at most 2). */
int outer_copies(const struct trainer *t, long steps[2]);
/* The floats of a version's carry: the outer momentum (n_params), and overlapped the mean
 * the next outer step applies (n_params + n_buffers). */
size_t outer_carried(const struct trainer *t);
/* The arenas (parameters, moments, biases) and carry of the complete version at `step`:
 * 1, or 0 when none is held. */
int outer_version(const struct trainer *t, long step, real *arena[4], real **carry);
/* The live state becomes the version at `step` (step 0: made from the seed), the other
 * version is dropped: MOE_OK, or MOE_EINVAL when it is not held. */
moe_status outer_return(struct trainer *t, long step);
/* Where a restore receives the carry, and the live state just received (with it) becomes
 * the only version. */
real *outer_incoming_momentum(struct trainer *t);
void outer_adopt(struct trainer *t);

#endif
