/*
 * retention.h — which ended jobs the coordinator forgets, and when (retention.c).
 *
 * Owns: the retention rule: an ended job (SUCCEEDED, FAILED, CANCELLED) is deleted once
 * --job-retention-s seconds have passed since it ended, and the oldest ended jobs (by
 * submission) beyond --max-finished-jobs are deleted whatever their age; every job's history
 * is kept to its newest --max-events-per-job events and --max-steps-per-job steps. Deletion itself
 * (store, model file, table) is state/transitions.c's job_delete.
 * Never: deletes a queued or running job, or more than RETENTION_BATCH jobs in one tick: a
 * backlog (a lowered limit, a coordinator that was down for a week) drains over several ticks
 * instead of stalling the loop that serves every other call.
 */
#ifndef MOE_COORD_RETENTION_H
#define MOE_COORD_RETENTION_H

#include "../state/transitions.h"

#define RETENTION_BATCH 64 // jobs deleted per monitor tick at most (one synced write)

/* The monitor's tick: deletes up to RETENTION_BATCH expired jobs; returns how many. */
int retention_tick(struct coordinator *co, int64_t now_ms);
/* The monitor's tick too: a job's stored events beyond its newest --max-events-per-job, and
 * its steps beyond its newest --max-steps-per-job, are deleted (a range deletion each, in one
 * unsynced batch), a tenth of the limit at a time. O(jobs) compares per tick. */
void retention_trim(struct coordinator *co);

#endif
