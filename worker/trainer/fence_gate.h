/*
 * fence_gate.h — the lock a slot's fence takes, shared by what may change the copies it lists.
 *
 * Owns: one mutex and the "fenced" flag it guards. The replica (replica.c) embeds the gate,
 * takes it for its own changes and closes it at the fence; the outer step of mesh.sync diloco
 * (outer.c), whose versions are the copies a diloco slot lists, passes through it without
 * knowing the replica (t->mesh.gate). After the fence nothing that passes through it changes.
 * Never: decides when to fence (the coordinator's FenceSlot does, through replica_fence).
 */
#ifndef MOE_FENCE_GATE_H
#define MOE_FENCE_GATE_H

#include "../../common/status.h"

#include <pthread.h>

struct fence_gate {
    pthread_mutex_t mu; // guards fenced, and whatever its holders change under it
    int fenced;         // the coordinator fenced the slot: no change may start
};

/* MOE_OK with the gate held (leave with fence_gate_leave), or MOE_EINTERNAL naming `what` and
 * the step when the slot is fenced (the gate is not held then). */
static inline moe_status fence_gate_enter(struct fence_gate *g, const char *what, long step) {
    pthread_mutex_lock(&g->mu);
    if (!g->fenced) return MOE_OK;
    pthread_mutex_unlock(&g->mu);
    return moe_fail(MOE_EINTERNAL, "fenced by the coordinator before %s of step %ld", what, step);
}

static inline void fence_gate_leave(struct fence_gate *g) { pthread_mutex_unlock(&g->mu); }

#endif
