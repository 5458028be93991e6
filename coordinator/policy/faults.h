/*
 * faults.h — a slot of a running job is lost: recovered, or the job fails. The one place that
 * decides which.
 */
#ifndef MOE_COORD_FAULTS_H
#define MOE_COORD_FAULTS_H

#include "../state/jobs.h"
#include "../state/workers.h"
#include "recovery.h"

/* The monitor found w silent for silent_ms: it is DEAD, and the slot it played is lost. */
void fault_worker_dead(struct coordinator *co, struct worker *w, int64_t silent_ms);
/* Another worker, `by`, registered at w's address: w's process is gone (two processes cannot
 * listen on one address), so w is DEAD now, not a heartbeat timeout later, and its slot lost. */
void fault_worker_superseded(struct coordinator *co, struct worker *w, const struct worker *by);
/* w ended slot k of j with an error at `step` (ReportJobEnd, ok = 0). `stopped`: it stopped
 * because the coordinator told it to (another slot failed): an answer, not a cause.
 * `unrecoverable`: it could not load the job's data or spec: the job fails at once. */
void fault_slot_ended(struct coordinator *co, struct job *j, int k, const struct worker *w,
                      long step, const char *error, int stopped, int unrecoverable);
/* The worker of slot k reported a data-plane fault of the current epoch (ReportFault). */
void fault_reported(struct coordinator *co, struct job *j, int k, const Moed__V1__FaultReport *r);
/* w re-registered without slot k of j: idle, or running another job or epoch (w->job_id, the
 * job `runs` when it is known here): the slot is lost. */
void fault_slot_abandoned(struct coordinator *co, struct job *j, int k, const struct worker *w,
                          const struct job *runs);
/* w accepted slot k of j's current epoch, yet its heartbeats say it runs nothing (its job's
 * end never reached us, or a stop meant for another epoch ended it): the slot is lost. */
void fault_slot_forgotten(struct coordinator *co, struct job *j, int k, const struct worker *w);
/* The worker of slot k refused the scheduler's RunSlot after the job's first step. */
void fault_not_started(struct coordinator *co, struct job *j, int k, const char *worker_id,
                       const struct rpc_result *res);
/* The monitor's tick: a mesh whose failure window has passed fails now. */
void faults_tick(struct coordinator *co, int64_t now);

#endif
