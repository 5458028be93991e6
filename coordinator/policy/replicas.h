/*
 * replicas.h — what the slots' step reports say about the copies of the model state.
 *
 * Owns: the committed step — the minimum over the slots of the current epoch of their latest
 * replicated_step (every slot completed that step and its buddy copies are whole); it never
 * decreases, and a recovery raises it to T once every slot is back at T (recovery.c) — and
 * the replica hash check: slots of the same index in different pods must report the same
 * state hash at the same step. The first agreement is the event "replica_check", further ones
 * only count (job->replica_matches, logged at debug level); every disagreement is the event
 * "replica_mismatch".
 * A mismatch starts a repair, and every reported hash is shown to it (policy/repair.c).
 * Never: repairs a mismatch itself.
 */
#ifndef MOE_COORD_REPLICAS_H
#define MOE_COORD_REPLICAS_H

#include "../state/jobs.h"

/* Step metrics of the current epoch from slot k: its replicated step and its state hash. */
void replicas_step_reported(struct coordinator *co, struct job *j, int k,
                            const Moed__V1__StepMetrics *m);

#endif
