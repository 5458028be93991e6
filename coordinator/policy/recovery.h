/*
 * recovery.h — a recoverable mesh's recovery of lost slots, and moves of doubled slots
 * (recovery.c; docs/recovery.md).
 */
#ifndef MOE_COORD_RECOVERY_H
#define MOE_COORD_RECOVERY_H

#include "../state/jobs.h"
#include "../state/workers.h"

/* What a fault signal says about the worker of the slot it names. */
enum fault_kind {
    FAULT_REPORTED, // the worker reported a data-plane fault: it is alive and holds its state
    FAULT_DEAD,     // the worker is gone (heartbeats, fence, RunSlot unreachable)
    FAULT_ENDED,    // the worker is alive but its slot ended with an error: its state is gone
    FAULT_HOLDING,  // the worker holds a frozen state no recovery of ours will pick up
};

/* A fault signal for slot k of recoverable job j (k < 0: none in particular): starts a
 * recovery, notes the signal in the one in progress, or restarts it (a new fault of the
 * recovery's own epoch). `what` says what was seen, for the event "failure". */
void recovery_signal(struct coordinator *co, struct job *j, int k, enum fault_kind kind,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The data-parallel replicas differ (policy/repair.c says where, in `what`): event
 * "repairing", then a recovery whose fence asks for every copy's hash and whose plan counts
 * only copies with an agreed hash (a recovery in progress becomes one). */
void recovery_repair(struct coordinator *co, struct job *j, int k, const char *what);
/* ReportFault of the current epoch, from the worker bound to slot k. */
void recovery_fault_report(struct coordinator *co, struct job *j, int k,
                           const Moed__V1__FaultReport *r);
/* ReportRestored of the current epoch, from the worker bound to slot k. */
void recovery_restored(struct coordinator *co, struct job *j, int k,
                       const Moed__V1__RestoredReport *r);
/* A worker bound to slot k of j's current epoch says (heartbeat, registration) that it runs
 * `epoch` of j, holding a fenced state or not. Returns 1 when it keeps its slot (a recovery may
 * have been started for it: it holds, or missed its new epoch while no recovery of this
 * process will reach it), 0 when it must be told to stop. */
int recovery_worker_state(struct coordinator *co, struct job *j, int k, struct worker *w,
                          uint64_t epoch, int holding, const char *how);
/* Whether the recovery in progress has given up on w (it did not answer its fence, or held
 * nothing) while w is still in the binding it fenced: w must stop and become a spare. */
int recovery_dropped(const struct job *j, const struct worker *w);

/* Re-plans recoveries waiting for a spare, and fails those that waited mesh.spare_wait_s. */
void recovery_poll(struct coordinator *co);
/* Moves a slot that plays on a worker's second listener (a recovery without a spare doubled it
 * up) onto an idle worker, once one is there: fence, plan, restore as in a recovery, with the
 * events "rebalance", "moving" and "moved". Called by every schedule pass. */
void recovery_rebalance(struct coordinator *co);
/* Recoveries the store says were in progress when the previous coordinator stopped: fenced
 * again (coordinator_start). */
void recovery_resume(struct coordinator *co);

#endif
